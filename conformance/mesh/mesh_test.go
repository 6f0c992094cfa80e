// Package mesh is the mesh end to end, as root: pods are network namespaces on one bridge (conformance/netns),
// Kubernetes is a real etcd and kube-apiserver (conformance/kubeenv) holding the Services, Pods and
// EndpointSlices, and the real binaries run: weft-control watching the apiserver with its identity CA on,
// and in every meshed pod `weft-proxy init` (iptables) then `weft-proxy run` as uid 2102 with a
// ServiceAccount token from TokenRequest. Apps are plain HTTP servers and clients that know nothing of the
// mesh: the client calls a Service ClusterIP that no host owns, and only the sidecars make it work.
package mesh

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/conformance/prereq"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/xds"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

const (
	proxyUID    = 2102
	svcName     = "echo"
	appPort     = 8080 // HTTP, Service port 80
	tcpAppPort  = 7070 // opaque TCP, Service port 7000
	skippedPort = 9090 // skipped inbound on the servers, skipped outbound on the client
	trustDomain = "cluster.local"
)

// TestMeshEndToEnd runs the whole mesh once and checks, in order, what a user would: calls to the
// Service's ClusterIP (HTTP and opaque TCP) reach every endpoint over mTLS, with the client's SPIFFE
// identity seen by the server side; skipped inbound and outbound ports bypass the sidecars; a caller
// without a sidecar is refused by a strict pod (the default with identity on) and served without identity
// by a pod annotated permissive; every certificate is an Event; an endpoint taken out of the
// EndpointSlice stops getting traffic, and gets it again when put back.
func TestMeshEndToEnd(t *testing.T) {
	prereq.Root(t) // before the apiserver starts for nothing
	t0 := time.Now()
	env := kubeenv.Get(t)
	t1 := time.Now()
	proxyBin := netns.GoBuild(t, "./cmd/weft-proxy")
	controlBin := netns.GoBuild(t, "./cmd/weft-control")
	start := time.Now()
	t.Logf("apiserver up in %v, binaries built in %v", t1.Sub(t0).Round(time.Millisecond), start.Sub(t1).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	n := netns.New(t)
	client, serverA, serverB, plain := n.AddPod("client-0"), n.AddPod("server-a"), n.AddPod("server-b"), n.AddPod("plain")

	// Kubernetes: the ServiceAccounts, the Service, the Pods (each with a weft-proxy container, so the
	// control plane knows they are meshed) and the EndpointSlice a controller-manager would write.
	// A namespace of its own per run: without a controller-manager a deleted namespace never goes away.
	ns := fmt.Sprintf("mesh-e2e-%d", time.Now().UnixNano()%1e9)
	fqdn := svcName + "." + ns + ".svc.cluster.local"
	clientID := "spiffe://" + trustDomain + "/ns/" + ns + "/sa/client"
	serverID := "spiffe://" + trustDomain + "/ns/" + ns + "/sa/server"
	kc := env.Client
	k := kube{t: t, ctx: ctx, client: kc, ns: ns}
	mustCreate(t, func() error {
		_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	t.Cleanup(func() {
		_ = kc.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	for _, sa := range []string{"client", "server"} {
		mustCreate(t, func() error {
			_, err := kc.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			return err
		})
	}
	svc, err := kc.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: svcName},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": svcName},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intOrPort(appPort), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("http")},
				{Name: "tcp", Port: 7000, TargetPort: intOrPort(tcpAppPort), Protocol: corev1.ProtocolTCP, AppProtocol: ptr("tcp")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service: %v", err)
	}
	clusterIP := svc.Spec.ClusterIP
	t.Logf("Service %s has ClusterIP %s", fqdn, clusterIP)
	k.createPod(client, "client", nil, nil, nil)
	k.createPod(serverA, "server", map[string]string{"app": svcName}, nil, []int32{appPort, tcpAppPort})
	k.createPod(serverB, "server", map[string]string{"app": svcName}, map[string]string{xds.InboundPolicyAnnotation: "permissive"}, []int32{appPort, tcpAppPort})
	k.setEndpoints(serverA, serverB)

	// weft-control in the bridge namespace (every pod reaches 10.44.0.1), watching the apiserver through
	// a forwarder (the apiserver listens on the host's loopback), with the identity CA on.
	apiAddr := forwardToAPIServer(t, n, env.Config.Host)
	kubeconfig := writeKubeconfig(t, env, "https://"+apiAddr)
	idDir := t.TempDir()
	if err := identity.Bootstrap(idDir, identity.BootstrapOptions{TrustDomain: trustDomain}); err != nil {
		t.Fatalf("identity bootstrap: %v", err)
	}
	mtlsAddr := n.Bridge.Addr(15012)
	n.Bridge.Start(t, exec.Command(controlBin, "--kubeconfig", kubeconfig,
		"--xds-addr", "127.0.0.1:15010", "--admin-addr", n.Bridge.Addr(15014),
		"--identity-dir", idDir, "--identity-addr", mtlsAddr, "--log-level", "warn"))
	waitFor(t, "weft-control ready", 30*time.Second, func() error {
		_, err := get(n.Bridge, "http://"+n.Bridge.Addr(15014)+"/ready")
		return err
	})

	// What a pod's volumes would hold, readable by the proxy's uid: the trust bundle and a token.
	share, err := os.MkdirTemp(worldDir(t), "mesh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(share) })
	if err := os.Chmod(share, 0o755); err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join(idDir, identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	bundleFile := filepath.Join(share, "ca.crt")
	if err := os.WriteFile(bundleFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}

	// The apps: the servers answer with their pod name and the address the request came from.
	for _, p := range []*netns.Pod{serverA, serverB} {
		for _, port := range []int{appPort, skippedPort} {
			serveApp(t, p, port)
		}
		serveLine(t, p, tcpAppPort)
	}
	outside := map[int]bool{5432: true, 5433: false} // a host outside the mesh: port → skipped outbound
	for port := range outside {
		serveApp(t, n.Bridge, port)
	}

	// The sidecars: init (iptables) as root, then the proxy as uid 2102.
	sidecar := func(p *netns.Pod, sa string, initArgs ...string) {
		t.Helper()
		if out, err := p.Output(exec.Command(proxyBin, append([]string{"init"}, initArgs...)...)); err != nil {
			t.Fatalf("weft-proxy init in %s: %v\n%s", p.Name, err, out)
		}
		tokenFile := filepath.Join(share, p.Name+".token")
		if err := os.WriteFile(tokenFile, []byte(k.requestToken(sa)), 0o644); err != nil {
			t.Fatal(err)
		}
		p.Start(t, netns.AsUser(exec.Command(proxyBin, "run",
			"--xds-addr", mtlsAddr, "--xds-tls", "--identity-addr", mtlsAddr,
			"--token-file", tokenFile, "--trust-bundle-file", bundleFile,
			"--pod-name", p.Name, "--namespace", ns, "--pod-ip", p.IP.String(), "--service-account", sa,
			"--log-level", "warn"), proxyUID, proxyUID))
	}
	sidecar(serverA, "server", "--skip-inbound-ports", fmt.Sprint(skippedPort))
	sidecar(serverB, "server", "--skip-inbound-ports", fmt.Sprint(skippedPort))
	sidecar(client, "client", "--skip-outbound-ports", "5432")
	for _, p := range []*netns.Pod{serverA, serverB, client} {
		waitFor(t, p.Name+"'s proxy ready", 30*time.Second, func() error {
			body, err := get(p, "http://127.0.0.1:15000/ready")
			if err == nil && strings.TrimSpace(body) != "ready" {
				err = fmt.Errorf("/ready said %q", body)
			}
			return err
		})
	}
	t.Logf("mesh up in %v", time.Since(start).Round(time.Millisecond))

	callService := func() (pod, remote string, err error) {
		body, err := get(client, "http://"+fqdn+"/", clusterIP+":80")
		if err != nil {
			return "", "", err
		}
		pod, remote, _ = strings.Cut(body, " ")
		return pod, remote, nil
	}

	t.Run("responses arrive from every endpoint", func(t *testing.T) {
		seen := map[string]int{}
		waitFor(t, "answers from server-a and server-b through "+clusterIP+":80", 30*time.Second, func() error {
			pod, remote, err := callService()
			if err != nil {
				return err
			}
			if remote != "127.0.0.1" {
				return fmt.Errorf("%s saw the request come from %s, not from its sidecar on 127.0.0.1", pod, remote)
			}
			seen[pod]++
			if seen[serverA.Name] == 0 || seen[serverB.Name] == 0 {
				return fmt.Errorf("answers so far: %v", seen)
			}
			return nil
		})
		t.Logf("answers: %v", seen)
	})

	t.Run("the sidecar's /config_dump shows its listeners, routes, clusters and endpoints", func(t *testing.T) {
		// The real binary links only weft-proxy's slim Envoy messages (not go-control-plane's), so this
		// is where rendering the dump with Envoy's type URLs is proven.
		body, err := get(client, "http://127.0.0.1:15000/config_dump")
		if err != nil {
			t.Fatal(err)
		}
		var cd struct {
			Configs []map[string]any `json:"configs"`
		}
		if err := json.Unmarshal([]byte(body), &cd); err != nil || len(cd.Configs) != 4 {
			t.Fatalf("/config_dump: %v, %d configs; body:\n%.2000s", err, len(cd.Configs), body)
		}
		for _, s := range []string{`"name": "outbound"`, "type.googleapis.com/envoy.config.listener.v3.Listener",
			"type.googleapis.com/envoy.config.cluster.v3.Cluster", `"outbound|80||` + fqdn + `"`, "ListenersConfigDump", "EndpointsConfigDump"} {
			if !strings.Contains(body, s) {
				t.Errorf("/config_dump lacks %s", s)
			}
		}
	})

	t.Run("the hop is mTLS and the server side saw the client's SPIFFE identity", func(t *testing.T) {
		for _, p := range []*netns.Pod{serverA, serverB} {
			m := metrics(t, p)
			want := map[string]string{"direction": "inbound", "tls": "true", "client_id": clientID, "server_id": serverID,
				"target_cluster": fmt.Sprintf("inbound|%d||", appPort), "status_code": "200"}
			if got := m.sum("response_total", want); got < 1 {
				t.Errorf("%s's sidecar counted no response_total%v; its response_total series:\n%s", p.Name, want, m.lines("response_total"))
			}
		}
		want := map[string]string{"direction": "outbound", "tls": "true", "client_id": clientID, "server_id": serverID,
			"target_cluster": "outbound|80||" + fqdn, "status_code": "200"}
		m := metrics(t, client)
		if got := m.sum("response_total", want); got < 2 {
			t.Errorf("the client's sidecar counted %v response_total%v, want at least 2; its series:\n%s", got, want, m.lines("response_total"))
		}
	})

	t.Run("an opaque TCP port of the Service crosses over mTLS to every endpoint", func(t *testing.T) {
		addr := clusterIP + ":7000"
		seen := map[string]int{}
		waitFor(t, "lines from server-a and server-b through "+addr, 30*time.Second, func() error {
			line, err := readLine(client, addr)
			if err != nil {
				return err
			}
			pod, remote, _ := strings.Cut(line, " ")
			if remote != "127.0.0.1" {
				return fmt.Errorf("%s saw the connection come from %s, not from its sidecar on 127.0.0.1", pod, remote)
			}
			seen[pod]++
			if seen[serverA.Name] == 0 || seen[serverB.Name] == 0 {
				return fmt.Errorf("lines so far: %v", seen)
			}
			return nil
		})
		for _, p := range []*netns.Pod{serverA, serverB} {
			want := map[string]string{"direction": "inbound", "tls": "true", "client_id": clientID, "server_id": serverID,
				"target_cluster": fmt.Sprintf("inbound|%d||", tcpAppPort)}
			// The sidecar counts the connection as it opens; the app's line may arrive first.
			var m promText
			if err := poll(5*time.Second, func() error {
				if m = metrics(t, p); m.sum("tcp_open_total", want) < 1 {
					return errors.New("not counted")
				}
				return nil
			}); err != nil {
				t.Errorf("%s's sidecar counted no tcp_open_total%v; its tcp_open_total series:\n%s", p.Name, want, m.lines("tcp_open_total"))
			}
		}
	})

	t.Run("a skipped inbound port bypasses the server's sidecar", func(t *testing.T) {
		// From a pod without a sidecar, straight to the server pod's IP: the app sees the caller's own
		// address (through the sidecar it would see 127.0.0.1, or its own pod IP for passthrough).
		body, err := get(plain, "http://"+serverA.Addr(skippedPort)+"/")
		if err != nil {
			t.Fatalf("plain → %s: %v", serverA.Addr(skippedPort), err)
		}
		if want := serverA.Name + " " + plain.IP.String(); body != want {
			t.Errorf("plain → %s answered %q, want %q", serverA.Addr(skippedPort), body, want)
		}
	})

	t.Run("a skipped outbound port bypasses the client's sidecar", func(t *testing.T) {
		passthrough := map[string]string{"direction": "outbound", "target_cluster": "passthrough"}
		for _, port := range []int{5433, 5432} { // the unskipped one first: it shows the count does move
			before := metrics(t, client).sum("tcp_open_total", passthrough)
			addr := n.Bridge.Addr(uint16(port))
			body, err := get(client, "http://"+addr+"/")
			if err != nil {
				t.Fatalf("client → %s: %v", addr, err)
			}
			if want := "bridge " + client.IP.String(); body != want {
				t.Errorf("client → %s answered %q, want %q", addr, body, want)
			}
			var after float64
			// The sidecar counts a connection when it opens; poll, its metrics may lag the response.
			err = poll(5*time.Second, func() error {
				after = metrics(t, client).sum("tcp_open_total", passthrough)
				if !outside[port] && after == before {
					return errors.New("no passthrough connection counted yet")
				}
				return nil
			})
			switch {
			case outside[port] && after != before:
				t.Errorf("client → %s (skipped outbound port) went through the sidecar: passthrough tcp_open_total %v → %v", addr, before, after)
			case !outside[port] && err != nil:
				t.Errorf("client → %s (not skipped) was not counted by the sidecar's passthrough (tcp_open_total stays %v): the check cannot tell a bypass", addr, before)
			}
		}
	})

	t.Run("strict mode refuses a caller without a sidecar", func(t *testing.T) {
		// Identity is on, so server-a's inbound is strict: plaintext on a meshed port never reaches the app.
		if body, err := get(plain, "http://"+serverA.Addr(appPort)+"/"); err == nil {
			t.Errorf("plain → %s (strict) answered %q, want the connection refused", serverA.Addr(appPort), body)
		}
	})

	t.Run("a permissive pod serves a caller without a sidecar, with no identity", func(t *testing.T) {
		// server-b is annotated config.weft.io/inbound-policy: permissive; such a caller is served but
		// never taken for a mesh identity.
		before := metrics(t, serverB).sum("response_total", map[string]string{"direction": "inbound", "tls": "false", "client_id": ""})
		body, err := get(plain, "http://"+serverB.Addr(appPort)+"/")
		if err != nil {
			t.Fatalf("plain → %s: %v", serverB.Addr(appPort), err)
		}
		if want := serverB.Name + " 127.0.0.1"; body != want {
			t.Errorf("plain → %s answered %q, want %q (through the sidecar)", serverB.Addr(appPort), body, want)
		}
		m := metrics(t, serverB)
		if after := m.sum("response_total", map[string]string{"direction": "inbound", "tls": "false", "client_id": ""}); after != before+1 {
			t.Errorf("server-b's sidecar counted %v → %v plaintext inbound responses without identity, want one more; its series:\n%s", before, after, m.lines("response_total"))
		}
	})

	t.Run("weft-control recorded each issued certificate as an Event on the ServiceAccount", func(t *testing.T) {
		waitFor(t, "CertificateIssued Events for both ServiceAccounts", 20*time.Second, func() error {
			evs, err := kc.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			count := map[string]int32{}
			for _, e := range evs.Items {
				if e.Reason == "CertificateIssued" && e.InvolvedObject.Kind == "ServiceAccount" {
					count[e.InvolvedObject.Name] += max(e.Count, 1)
				}
			}
			if count["client"] < 1 || count["server"] < 2 {
				return fmt.Errorf("CertificateIssued Events by ServiceAccount: %v; want client ≥ 1, server ≥ 2", count)
			}
			return nil
		})
	})

	t.Run("an endpoint removed from the EndpointSlice stops getting traffic", func(t *testing.T) {
		k.setEndpoints(serverA)
		const inARow = 20
		streak := 0
		waitFor(t, fmt.Sprintf("%d answers in a row from server-a only", inARow), 30*time.Second, func() error {
			pod, _, err := callService()
			if err != nil {
				streak = 0
				return err
			}
			if pod != serverA.Name {
				streak = 0
				return fmt.Errorf("%s still answers", pod)
			}
			if streak++; streak < inARow {
				return fmt.Errorf("%d in a row so far", streak)
			}
			return nil
		})
	})
	t.Run("an endpoint added back gets traffic again", func(t *testing.T) {
		k.setEndpoints(serverA, serverB)
		waitFor(t, "an answer from server-b again", 30*time.Second, func() error {
			pod, _, err := callService()
			if err != nil {
				return err
			}
			if pod != serverB.Name {
				return fmt.Errorf("%s answered", pod)
			}
			return nil
		})
	})
	t.Logf("whole test (after binaries were built) took %v", time.Since(start).Round(time.Millisecond))
}

// kube writes the test's objects into its namespace of the apiserver.
type kube struct {
	t      *testing.T
	ctx    context.Context
	client kubernetes.Interface
	ns     string
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatalf("creating a Kubernetes object: %v", err)
	}
}

// createPod writes a Pod with an app container (ports) and a weft-proxy container, then its status
// with the namespace's IP, as a kubelet would.
func (k kube) createPod(p *netns.Pod, sa string, labels, annotations map[string]string, ports []int32) {
	t, ctx, kc, ns := k.t, k.ctx, k.client, k.ns
	t.Helper()
	app := corev1.Container{Name: "app", Image: "app"}
	for _, port := range ports {
		app.Ports = append(app.Ports, corev1.ContainerPort{ContainerPort: port, Protocol: corev1.ProtocolTCP})
	}
	pod, err := kc.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			Containers:         []corev1.Container{app, {Name: "weft-proxy", Image: "weft-proxy"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Pod %s: %v", p.Name, err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = p.IP.String()
	pod.Status.PodIPs = []corev1.PodIP{{IP: p.IP.String()}}
	if _, err := kc.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting Pod %s's IP: %v", p.Name, err)
	}
}

// setEndpoints creates or replaces the Service's EndpointSlice with the given pods, ready.
func (k kube) setEndpoints(pods ...*netns.Pod) {
	t, ctx, kc, ns := k.t, k.ctx, k.client, k.ns
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svcName + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr("http"), Port: ptr(int32(appPort)), Protocol: ptr(corev1.ProtocolTCP)},
			{Name: ptr("tcp"), Port: ptr(int32(tcpAppPort)), Protocol: ptr(corev1.ProtocolTCP)},
		},
	}
	for _, p := range pods {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
		})
	}
	slices := kc.DiscoveryV1().EndpointSlices(ns)
	cur, err := slices.Get(ctx, es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = cur.ResourceVersion
		_, err = slices.Update(ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = slices.Create(ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("writing the EndpointSlice: %v", err)
	}
}

// requestToken mints a ServiceAccount token for weft-control's Certify (audience identity.weft.io).
func (k kube) requestToken(sa string) string {
	t, ctx, kc, ns := k.t, k.ctx, k.client, k.ns
	t.Helper()
	tr, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{identity.Audience}, ExpirationSeconds: ptr(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, sa, err)
	}
	return tr.Status.Token
}

// forwardToAPIServer listens on the bridge namespace's loopback (the apiserver's certificate is for
// 127.0.0.1) and relays each connection to the apiserver in the host namespace; it returns host:port.
func forwardToAPIServer(t *testing.T, n *netns.Network, apiURL string) string {
	t.Helper()
	target := strings.TrimPrefix(apiURL, "https://")
	ln := n.Bridge.Listen(t, "tcp", "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 10*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

func writeKubeconfig(t *testing.T, env *kubeenv.Env, server string) string {
	t.Helper()
	tc := env.Config.TLSClientConfig
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: tc.CAFile, CertificateAuthorityData: tc.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: tc.CertFile, ClientKey: tc.KeyFile,
		ClientCertificateData: tc.CertData, ClientKeyData: tc.KeyData}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("writing the kubeconfig: %v", err)
	}
	return path
}

// serveApp runs an HTTP app in the pod on :port (in the test process, its socket in the pod's
// namespace) that answers "<pod name> <caller's IP>".
func serveApp(t *testing.T, p *netns.Pod, port int) {
	t.Helper()
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "%s %s", p.Name, host)
	})}
	ln := p.Listen(t, "tcp", fmt.Sprintf(":%d", port))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

// serveLine runs a TCP app in the pod on :port that writes "<pod name> <caller's IP>\n" and closes.
func serveLine(t *testing.T, p *netns.Pod, port int) {
	t.Helper()
	ln := p.Listen(t, "tcp", fmt.Sprintf(":%d", port))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = fmt.Fprintf(c, "%s %s\n", p.Name, host)
			_ = c.Close()
		}
	}()
}

// readLine connects from the pod as root and returns the first line the other side sends.
func readLine(p *netns.Pod, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading from %s in %s: %w", addr, p.Name, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// get makes one GET from inside the pod as root (so interception applies), on a new connection;
// dialAddr overrides where it connects (a ClusterIP for a Service name). A non-200 is an error.
func get(p *netns.Pod, url string, dialAddr ...string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if len(dialAddr) > 0 {
			addr = dialAddr[0]
		}
		return p.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s from %s: %s (weft-error %q): %s", url, p.Name, resp.Status, resp.Header.Get("Weft-Error"), b)
	}
	return string(b), nil
}

// poll calls fn until it returns nil or the deadline passes; it returns fn's last error.
func poll(d time.Duration, fn func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond) // poll interval, not a wait for an event
	}
}

func waitFor(t *testing.T, what string, d time.Duration, fn func() error) {
	t.Helper()
	if err := poll(d, fn); err != nil {
		t.Fatalf("%s: not after %v: %v", what, d, err)
	}
}

func worldDir(t *testing.T) string {
	t.Helper()
	d, err := netns.WorldDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func ptr[T any](v T) *T { return &v }
