package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/conformance/prereq"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/xds"
)

const (
	authzHTTPPort = 8080
	authzTCPPort  = 7070
	authzGRPCPort = 9090
)

// TestAuthorization is issue 16's authorization test in network namespaces, with the real apiserver,
// weft-control and weft-proxy: an AuthorizationPolicy lets the frontend identity call the api pod
// (HTTP, opaque TCP, gRPC) and a DENY policy closes /admin/ to everyone. An identity that is not
// allowed gets a 403 with a weft-error (HTTP), a closed connection (TCP) and PermissionDenied (gRPC);
// a pod without a proxy gets a 403 too (the api pod is permissive, so plaintext reaches the policy);
// a pod in a namespace annotated default-inbound-policy: deny refuses even the frontend. The api
// sidecar counts its decisions in inbound_authz_total.
func TestAuthorization(t *testing.T) {
	prereq.Root(t)
	env := kubeenv.Get(t)
	proxyBin := netns.GoBuild(t, "./cmd/weft-proxy")
	controlBin := netns.GoBuild(t, "./cmd/weft-control")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	crd, err := os.ReadFile("../../deploy/charts/weft/templates/authorizationpolicy-crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := env.Kubectl(ctx, strings.NewReader(string(crd)), "apply", "-f", "-"); err != nil {
		t.Fatalf("installing the CRD: %v\n%s", err, out)
	}
	if out, err := env.Kubectl(ctx, nil, "wait", "--for=condition=Established", "--timeout=30s", "crd/authorizationpolicies.policy.weft.io"); err != nil {
		t.Fatalf("CRD not established: %v\n%s", err, out)
	}

	n := netns.New(t)
	allowed, denied, plain, api, locked := n.AddPod("frontend-0"), n.AddPod("other-0"), n.AddPod("plain-0"), n.AddPod("api-0"), n.AddPod("locked-0")
	suffix := time.Now().UnixNano() % 1e9
	ns, lockedNS := fmt.Sprintf("authz-%d", suffix), fmt.Sprintf("authz-locked-%d", suffix)
	kc := env.Client
	k := kube{t: t, ctx: ctx, client: kc, ns: ns}
	kl := kube{t: t, ctx: ctx, client: kc, ns: lockedNS}
	for name, ann := range map[string]map[string]string{ns: nil, lockedNS: {xds.DefaultInboundPolicyAnnotation: "deny"}} {
		mustCreate(t, func() error {
			_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}, metav1.CreateOptions{})
			return err
		})
		t.Cleanup(func() { _ = kc.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	for _, sa := range []struct{ ns, name string }{{ns, "frontend"}, {ns, "other"}, {ns, "api"}, {lockedNS, "locked"}} {
		mustCreate(t, func() error {
			_, err := kc.CoreV1().ServiceAccounts(sa.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.name}}, metav1.CreateOptions{})
			return err
		})
	}
	apiIP := authzService(t, k, "api", api, map[string]int{"http": authzHTTPPort, "tcp": authzTCPPort, "grpc": authzGRPCPort})
	lockedIP := authzService(t, kl, "locked", locked, map[string]int{"http": authzHTTPPort})
	k.createPod(allowed, "frontend", nil, nil, nil)
	k.createPod(denied, "other", nil, nil, nil)
	k.createPod(api, "api", map[string]string{"app": "api"}, map[string]string{xds.InboundPolicyAnnotation: "permissive"},
		[]int32{authzHTTPPort, authzTCPPort, authzGRPCPort})
	kl.createPod(locked, "locked", nil, nil, []int32{authzHTTPPort})

	frontendID := "spiffe://" + trustDomain + "/ns/" + ns + "/sa/frontend"
	policies := fmt.Sprintf(`apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: %[1]s}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [%[2]s]}}]
    to: [{operation: {ports: ["%[3]d", "%[4]d", "%[5]d"]}}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: %[1]s}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["%[3]d"], paths: ["/admin/*"]}}]
`, ns, frontendID, authzHTTPPort, authzTCPPort, authzGRPCPort)
	if out, err := env.Kubectl(ctx, strings.NewReader(policies), "apply", "-f", "-"); err != nil {
		t.Fatalf("applying the policies: %v\n%s", err, out)
	}

	// weft-control, as TestMeshEndToEnd runs it.
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
	share, err := os.MkdirTemp(worldDir(t), "authz-")
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

	// The apps.
	for _, p := range []*netns.Pod{api, locked} {
		serveApp(t, p, authzHTTPPort)
	}
	serveLine(t, api, authzTCPPort)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	gln := api.Listen(t, "tcp", fmt.Sprintf(":%d", authzGRPCPort))
	go func() { _ = gs.Serve(gln) }()
	t.Cleanup(gs.Stop)

	sidecar := func(p *netns.Pod, k kube, sa string) {
		t.Helper()
		if out, err := p.Output(exec.Command(proxyBin, "init")); err != nil {
			t.Fatalf("weft-proxy init in %s: %v\n%s", p.Name, err, out)
		}
		tokenFile := filepath.Join(share, p.Name+".token")
		if err := os.WriteFile(tokenFile, []byte(k.requestToken(sa)), 0o644); err != nil {
			t.Fatal(err)
		}
		p.Start(t, netns.AsUser(exec.Command(proxyBin, "run",
			"--xds-addr", mtlsAddr, "--xds-tls", "--identity-addr", mtlsAddr,
			"--token-file", tokenFile, "--trust-bundle-file", bundleFile,
			"--pod-name", p.Name, "--namespace", k.ns, "--pod-ip", p.IP.String(), "--service-account", sa,
			"--log-level", "warn"), proxyUID, proxyUID))
	}
	sidecar(allowed, k, "frontend")
	sidecar(denied, k, "other")
	sidecar(api, k, "api")
	sidecar(locked, kl, "locked")
	for _, p := range []*netns.Pod{allowed, denied, api, locked} {
		waitFor(t, p.Name+"'s proxy ready", 30*time.Second, func() error {
			body, err := get(p, "http://127.0.0.1:15000/ready")
			if err == nil && strings.TrimSpace(body) != "ready" {
				err = fmt.Errorf("/ready said %q", body)
			}
			return err
		})
	}
	apiHost := "api." + ns + ".svc.cluster.local"

	t.Run("an allowed identity passes (HTTP, TCP, gRPC)", func(t *testing.T) {
		waitFor(t, "frontend → api over HTTP", 30*time.Second, func() error {
			body, err := get(allowed, "http://"+apiHost+"/", apiIP+":80")
			if err == nil && !strings.HasPrefix(body, api.Name+" ") {
				err = fmt.Errorf("answered %q", body)
			}
			return err
		})
		if line, err := readLine(allowed, apiIP+":7000"); err != nil || !strings.HasPrefix(line, api.Name+" ") {
			t.Errorf("frontend → api over TCP: %q, %v", line, err)
		}
		if code := healthCheck(t, allowed, apiHost, apiIP+":9000"); code != codes.OK {
			t.Errorf("frontend → api over gRPC: %v, want OK", code)
		}
	})

	t.Run("an identity that is not allowed is refused", func(t *testing.T) {
		status, weftErr := getStatus(t, denied, "http://"+apiHost+"/", apiIP+":80")
		if status != http.StatusForbidden || !strings.Contains(weftErr, "authorization policy denied") {
			t.Errorf("other → api over HTTP: %d, weft-error %q; want 403 with the reason", status, weftErr)
		}
		if line, err := readLine(denied, apiIP+":7000"); err == nil {
			t.Errorf("other → api over TCP got %q, want the connection closed", line)
		}
		if code := healthCheck(t, denied, apiHost, apiIP+":9000"); code != codes.PermissionDenied {
			t.Errorf("other → api over gRPC: %v, want PermissionDenied", code)
		}
	})

	t.Run("a pod without a proxy is refused", func(t *testing.T) {
		status, weftErr := getStatus(t, plain, "http://"+api.Addr(authzHTTPPort)+"/")
		if status != http.StatusForbidden || !strings.Contains(weftErr, "without a mesh identity") {
			t.Errorf("plain → api: %d, weft-error %q; want 403 naming the missing identity", status, weftErr)
		}
	})

	t.Run("a DENY policy wins over an ALLOW", func(t *testing.T) {
		status, weftErr := getStatus(t, allowed, "http://"+apiHost+"/admin/users", apiIP+":80")
		if status != http.StatusForbidden || !strings.Contains(weftErr, ns+"/deny-admin") {
			t.Errorf("frontend → api /admin/users: %d, weft-error %q; want 403 naming deny-admin", status, weftErr)
		}
	})

	t.Run("a default-deny namespace refuses everyone", func(t *testing.T) {
		status, weftErr := getStatus(t, allowed, "http://locked."+lockedNS+".svc.cluster.local/", lockedIP+":80")
		if status != http.StatusForbidden {
			t.Errorf("frontend → locked: %d, weft-error %q; want 403", status, weftErr)
		}
	})

	t.Run("a policy applied while the mesh runs takes effect, and so does its removal", func(t *testing.T) {
		deny := fmt.Sprintf(`apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-frontend-tcp, namespace: %s}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [%s]}}]
    to: [{operation: {ports: ["%d"]}}]
`, ns, frontendID, authzTCPPort)
		if out, err := env.Kubectl(ctx, strings.NewReader(deny), "apply", "-f", "-"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		waitFor(t, "frontend → api over TCP refused", 30*time.Second, func() error {
			if line, err := readLine(allowed, apiIP+":7000"); err == nil {
				return fmt.Errorf("still answered %q", line)
			}
			return nil
		})
		if out, err := env.Kubectl(ctx, nil, "delete", "-n", ns, "authorizationpolicy", "deny-frontend-tcp"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		waitFor(t, "frontend → api over TCP allowed again", 30*time.Second, func() error {
			_, err := readLine(allowed, apiIP+":7000")
			return err
		})
	})

	t.Run("the decisions are in the api sidecar's metrics", func(t *testing.T) {
		m := metrics(t, api)
		for _, want := range []map[string]string{
			{"decision": "allow", "transport": "http", "client_id": frontendID},
			{"decision": "deny", "transport": "http", "client_id": "spiffe://" + trustDomain + "/ns/" + ns + "/sa/other"},
			{"decision": "deny", "transport": "http", "policy": ns + "/deny-admin"},
			{"decision": "deny", "transport": "tcp"},
			{"decision": "allow", "transport": "tcp", "policy": ns + "/allow-frontend"},
		} {
			if m.sum("inbound_authz_total", want) < 1 {
				t.Errorf("no inbound_authz_total%v; the series:\n%s", want, m.lines("inbound_authz_total"))
			}
		}
	})
}

// authzService creates a Service with the given named ports (appProtocol from the name; Service port
// 80 for http, 7000 for tcp, 9000 for grpc) backed by pod, and returns its ClusterIP.
func authzService(t *testing.T, k kube, name string, pod *netns.Pod, ports map[string]int) string {
	t.Helper()
	svcPort := map[string]int32{"http": 80, "tcp": 7000, "grpc": 9000}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{pod.IP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: k.ns, Name: pod.Name}}},
	}
	for pname, port := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: pname, Port: svcPort[pname], TargetPort: intOrPort(port), Protocol: corev1.ProtocolTCP, AppProtocol: ptr(pname)})
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(pname), Port: ptr(int32(port)), Protocol: ptr(corev1.ProtocolTCP)})
	}
	created, err := k.client.CoreV1().Services(k.ns).Create(k.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s: %v", name, err)
	}
	if _, err := k.client.DiscoveryV1().EndpointSlices(k.ns).Create(k.ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the EndpointSlice of %s: %v", name, err)
	}
	return created.Spec.ClusterIP
}

// getStatus makes one GET from the pod and returns the status and the weft-error header.
func getStatus(t *testing.T, p *netns.Pod, url string, dialAddr ...string) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if len(dialAddr) > 0 {
			addr = dialAddr[0]
		}
		return p.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, p.Name, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Weft-Error")
}

// healthCheck calls grpc.health.v1.Health/Check from the pod through its sidecar (dialing addr, the
// Service's ClusterIP) and returns the status code.
func healthCheck(t *testing.T, p *netns.Pod, authority, addr string) codes.Code {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+authority,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(authority+":9000"),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return p.Dial(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	var se interface{ GRPCStatus() *status.Status }
	if err != nil && !errors.As(err, &se) {
		t.Logf("gRPC error without a status: %v", err)
	}
	return status.Code(err)
}
