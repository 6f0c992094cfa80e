package check

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/conformance/prereq"
	"github.com/weftmesh/weft/deploy/charts"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/xds"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

const (
	testVersion = "v0.0.0-check"
	testTD      = "cluster.local"
	cpNS        = "weft"
	appNS       = "app"
)

// outcomes runs checks once and indexes them by id; the text output goes to the test log.
func outcomes(t *testing.T, checks []Check) (Report, map[string]Outcome) {
	t.Helper()
	var text strings.Builder
	p := &TextPrinter{W: &text}
	r := Runner{Progress: p.Print, Timeout: 20 * time.Second}
	rep := r.Run(context.Background(), checks)
	p.Summary(rep)
	t.Logf("weft check:\n%s", text.String())
	byID := map[string]Outcome{}
	for _, o := range rep.Outcomes {
		byID[o.ID] = o
	}
	return rep, byID
}

// expect asserts the status of check id and that its message says says.
func expect(t *testing.T, got map[string]Outcome, id string, want Status, says string) {
	t.Helper()
	o, ok := got[id]
	if !ok {
		t.Errorf("no check %s", id)
		return
	}
	if o.Status != want {
		t.Errorf("%s (%s) = %s (%s), want %s", id, o.Description, o.Status, o.Message, want)
		return
	}
	if !strings.Contains(o.Message, says) {
		t.Errorf("%s message %q does not say %q", id, o.Message, says)
	}
	if want != Pass && want != Skip && o.Hint == "" && !strings.HasPrefix(id, "pre-namespace") {
		t.Errorf("%s is %s without a hint: %q", id, want, o.Message)
	}
}

// expectAllPass asserts every check passed.
func expectAllPass(t *testing.T, rep Report) {
	t.Helper()
	for _, bad := range notPassed(rep) {
		t.Error(bad)
	}
}

// notPassed lists the checks that did not pass.
func notPassed(rep Report) []string {
	var bad []string
	for _, o := range rep.Outcomes {
		if o.Status == Pass {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s (%s) = %s: %s (hint: %s)", o.ID, o.Description, o.Status, o.Message, o.Hint))
	}
	return bad
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %s: %s", timeout, what, state)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func target(t *testing.T, env *kubeenv.Env) *Target {
	return &Target{
		Namespace: cpNS, ProbeNamespace: "default",
		Connect: func() (kubernetes.Interface, ServerClock, error) {
			cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
			if err != nil {
				return nil, nil, err
			}
			c, err := kubernetes.NewForConfig(cfg)
			return c, DateClock{Config: cfg}, err
		},
	}
}

// testCA is an anchor (with its key, to sign more issuers) and the material of an issuer.
type testCA struct {
	anchor   identity.KeyPair
	material identity.Material
}

func newTestCA(t *testing.T, issuerAt time.Time, issuerLife time.Duration) testCA {
	t.Helper()
	anchor, err := identity.NewAnchor(testTD, time.Now().Add(-400*day), 10*365*day)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{anchor: anchor, material: issue(t, anchor, issuerAt, issuerLife)}
}

func issue(t *testing.T, anchor identity.KeyPair, at time.Time, life time.Duration) identity.Material {
	t.Helper()
	iss, err := identity.NewIssuer(testTD, anchor, at, life)
	if err != nil {
		t.Fatal(err)
	}
	key, err := iss.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	return identity.Material{Bundle: anchor.CertPEM(), IssuerCert: iss.CertPEM(), IssuerKey: key}
}

// install renders the chart as weft install does (one replica, the given CA) and applies it server-side.
func install(t *testing.T, env *kubeenv.Env, m identity.Material) {
	t.Helper()
	ch, err := charts.Load(testVersion)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := charts.Render(ch, cpNS, map[string]any{
		"controlPlane": map[string]any{"replicas": 1},
		"identity": map[string]any{
			"trustAnchorsPEM": string(m.Bundle), "issuerCertPEM": string(m.IssuerCert), "issuerKeyPEM": string(m.IssuerKey),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := env.Kubectl(ctx, strings.NewReader(charts.YAML(ms)), "apply", "--server-side", "--force-conflicts", "-f", "-"); err != nil {
		t.Fatalf("applying the manifests: %v\n%s", err, out)
	}
}

// podNet is a network namespace reachable from the host (where the apiserver runs) at the given
// addresses: a veth pair, the addresses on the namespace's end, a host route to each (/32) through it.
// It plays a node's network: the address is a kwok Pod's IP; a Service's ClusterIP is routed to it
// too, where a nat rule plays kube-proxy (the harness has none; the apiserver calls webhooks at their
// Service's ClusterIP).
type podNet struct {
	t    *testing.T
	name string
	host string
	pod  *netns.Pod
}

const hostSide = "169.254.77.1"

func newPodNet(t *testing.T, addrs ...netip.Addr) *podNet {
	t.Helper()
	prereq.Root(t)
	prereq.Binary(t, "ip")
	name := fmt.Sprintf("wchk%d", os.Getpid())
	n := &podNet{t: t, name: name, host: fmt.Sprintf("wchk%dh", os.Getpid()%100000)}
	n.ip("netns", "add", name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", n.host).Run()
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	n.ip("link", "add", n.host, "type", "veth", "peer", "name", "eth0", "netns", name)
	n.ip("addr", "add", hostSide+"/32", "dev", n.host)
	n.ip("link", "set", n.host, "up")
	n.ip("-n", name, "link", "set", "lo", "up")
	n.ip("-n", name, "link", "set", "eth0", "up")
	n.ip("-n", name, "route", "add", hostSide+"/32", "dev", "eth0")
	n.pod = &netns.Pod{Name: "weft-control", NS: name}
	for _, a := range addrs {
		n.add(a)
	}
	return n
}

func (n *podNet) add(a netip.Addr) {
	n.t.Helper()
	n.ip("-n", n.name, "addr", "add", a.String()+"/32", "dev", "eth0")
	n.ip("route", "replace", a.String()+"/32", "dev", n.host, "src", hostSide)
}

// serviceRule plays kube-proxy for one port of a Service: the host routes the ClusterIP to the
// namespace (through the Pod's IP: the ClusterIP is no one's address, so no one answers ARP for it),
// where a nat rule sends it to the Pod's port (DNAT in PREROUTING, where packets from the host arrive;
// real iptables, as kube-proxy's). It returns a function that removes the rule, as kube-proxy does
// when the Service is deleted.
func (n *podNet) serviceRule(t *testing.T, clusterIP netip.Addr, port uint16, to netip.AddrPort) (remove func() error) {
	t.Helper()
	prereq.Binary(t, "iptables")
	n.ip("route", "replace", clusterIP.String()+"/32", "via", to.Addr().String(), "dev", n.host, "src", hostSide)
	rule := func(op string) error {
		cmd := exec.Command("iptables", "-w", "-t", "nat", op, "PREROUTING", "-d", clusterIP.String()+"/32", "-p", "tcp", "--dport", fmt.Sprint(port),
			"-m", "comment", "--comment", "weft check test: Service port", "-j", "DNAT", "--to-destination", to.String())
		out, err := n.pod.Output(cmd)
		if err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, out)
		}
		return nil
	}
	if err := rule("-A"); err != nil {
		t.Fatal(err)
	}
	return func() error { return rule("-D") }
}

func (n *podNet) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// runControl runs the weft-control binary inside the namespace as the chart's Deployment runs it in
// its Pod, serving on ip: admin 15014, xDS 15010, xDS and identity over mTLS 15012, the injector
// 15017 (its certificate for weft-injector.<ns>.svc and ip); the CA in --identity-dir; the injector's
// --injector-config the config.yaml of the weft-config ConfigMap (the Pod's mounted volume), read from
// the cluster now; its namespace in POD_NAMESPACE (the Pod's ServiceAccount volume says it). The
// apiserver listens on the host's loopback, out of the namespace's reach: a forwarder on the host side
// of the veth stands in for the node's route to it. It returns once the process listens, with a
// function that stops it. The process lives as long as the namespace (stopped at its cleanup); t
// (which may be a subtest) is only told of errors.
func (n *podNet) runControl(t *testing.T, env *kubeenv.Env, m identity.Material, ip netip.Addr) (stop func()) {
	t.Helper()
	bin := netns.GoBuild(t, "./cmd/weft-control")
	dir := n.t.TempDir()
	cm, err := env.Client.CoreV1().ConfigMaps(cpNS).Get(context.Background(), ConfigName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		identity.BundleFile: m.Bundle, identity.IssuerCertFile: m.IssuerCert, identity.IssuerKeyFile: m.IssuerKey,
		"config.yaml": []byte(cm.Data["config.yaml"]),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	apiserver := strings.TrimPrefix(env.Config.Host, "https://")
	fwd, err := net.Listen("tcp", hostSide+":0")
	if err != nil {
		t.Fatal(err)
	}
	n.t.Cleanup(func() { fwd.Close() })
	go func() {
		for {
			in, err := fwd.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				out, err := net.Dial("tcp", apiserver)
				if err != nil {
					return
				}
				defer out.Close()
				go func() { _, _ = io.Copy(out, in) }()
				_, _ = io.Copy(in, out)
			}()
		}
	}()
	kc, err := clientcmd.LoadFromFile(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.Server, cl.TLSServerName = "https://"+fwd.Addr().String(), "localhost"
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}

	logPath := filepath.Join(dir, "weft-control.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	injector := netip.AddrPortFrom(ip, 15017)
	cmd := exec.Command(bin, "--kubeconfig="+kubeconfig,
		"--xds-addr="+netip.AddrPortFrom(ip, 15010).String(),
		"--admin-addr="+netip.AddrPortFrom(ip, 15014).String(),
		"--identity-addr="+netip.AddrPortFrom(ip, 15012).String(),
		"--identity-dir="+dir, "--trust-domain="+testTD,
		"--injector-addr="+injector.String(),
		"--injector-config="+filepath.Join(dir, "config.yaml"),
		"--injector-cert-dns="+InjectorName+"."+cpNS+".svc")
	cmd.Env = append(os.Environ(), "POD_NAMESPACE="+cpNS)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := n.pod.Do(cmd.Start); err != nil {
		t.Fatalf("starting weft-control: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(done) }()
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	n.t.Cleanup(func() {
		stop()
		if n.t.Failed() {
			b, _ := os.ReadFile(logPath)
			n.t.Logf("weft-control's log (%s):\n%s", cmd.Args, b)
		}
	})
	eventually(t, "weft-control listens on "+injector.String(), 30*time.Second, func() (bool, string) {
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("weft-control exited:\n%s", b)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := n.pod.Dial(ctx, "tcp", injector.String())
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
	return stop
}

// proxyStream is a meshed Pod's proxy connected to weft-control's xDS over mTLS (port 15012) as node
// <pod>.<ns> with its workload certificate.
func proxyStream(t *testing.T, addr string, ca *identity.CA, bundle *identity.Issuer, pod, ns string) context.CancelFunc {
	t.Helper()
	cert, err := ca.ServingCertificate(identity.ID{TrustDomain: testTD, Namespace: ns, ServiceAccount: "default"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}, RootCAs: bundle.TrustBundle(),
	})))
	if err != nil {
		t.Fatal(err)
	}
	md, err := structpb.NewStruct(map[string]any{"NAMESPACE": ns, "POD_NAME": pod, "SERVICE_ACCOUNT": "default", "CLIENT_KIND": "weft"})
	if err != nil {
		t.Fatal(err)
	}
	// weft-control answers Unavailable until its discovery has synced with the apiserver (its
	// injector serves before that): a proxy retries, and so does this one, with a deadline.
	var cancel context.CancelFunc
	eventually(t, "the proxy's xDS stream answered", 30*time.Second, func() (bool, string) {
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		s, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err == nil {
			err = s.Send(&discoverypb.DiscoveryRequest{Node: &core.Node{Id: pod + "." + ns, Metadata: md}, TypeUrl: xds.ClusterType})
		}
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil {
			cancel()
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("the proxy's xDS stream: %v", err)
			}
			return false, err.Error()
		}
		return true, ""
	})
	t.Cleanup(func() { cancel(); conn.Close() })
	return func() { cancel(); conn.Close() }
}

func podIP(t *testing.T, c kubernetes.Interface, ns, selector string) (string, netip.Addr) {
	t.Helper()
	var name string
	var ip netip.Addr
	eventually(t, "a Running Pod "+selector+" with an IP", 90*time.Second, func() (bool, string) {
		pods, err := c.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err.Error()
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				name, ip = p.Name, netip.MustParseAddr(p.Status.PodIP)
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d Pods", len(pods.Items))
	})
	return name, ip
}

func serviceIP(t *testing.T, c kubernetes.Interface, ns, name string) netip.Addr {
	t.Helper()
	svc, err := c.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddr(svc.Spec.ClusterIP)
}

// configVersion is the version in the weft-config ConfigMap's config.yaml.
func configVersion(t *testing.T, c kubernetes.Interface) string {
	t.Helper()
	cm, err := c.CoreV1().ConfigMaps(cpNS).Get(context.Background(), ConfigName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cfg proxyConfig
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil || cfg.Version == "" {
		t.Fatalf("%s: config.yaml names no version (%v):\n%s", ConfigName, err, cm.Data["config.yaml"])
	}
	return cfg.Version
}

func setSecret(t *testing.T, c kubernetes.Interface, m identity.Material) {
	t.Helper()
	ctx := context.Background()
	s, err := c.CoreV1().Secrets(cpNS).Get(ctx, IdentitySecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data = map[string][]byte{identity.BundleFile: m.Bundle, identity.IssuerCertFile: m.IssuerCert, identity.IssuerKeyFile: m.IssuerKey}
	if _, err := c.CoreV1().Secrets(cpNS).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPreChecks: on a cluster without Weft every pre check passes for an admin; a user without rights
// fails each RBAC check with its hint.
func TestPreChecks(t *testing.T) {
	env := kubeenv.GetCluster(t)
	if _, err := env.Client.CoreV1().Namespaces().Get(context.Background(), cpNS, metav1.GetOptions{}); err == nil {
		t.Skip("Weft is installed on this package's cluster already (TestChecksOnACluster ran first)")
	}
	tg := target(t, env)
	rep, _ := outcomes(t, append(KubernetesChecks(tg), PreChecks(tg)...))
	expectAllPass(t, rep)

	// A ServiceAccount with no rights.
	ctx := context.Background()
	if _, err := env.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	tok, err := env.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "nobody", &authTokenRequest, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: env.Config.Host, BearerToken: tok.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: env.CAFile}}
	nobody, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	weak := &Target{Namespace: cpNS, Client: nobody, Clock: DateClock{Config: cfg}}
	rep, got := outcomes(t, append(KubernetesChecks(weak), PreChecks(weak)...))
	if rep.Success() {
		t.Error("a user without rights passed the pre checks")
	}
	for _, id := range []string{"pre-rbac-namespaces", "pre-rbac-clusterroles", "pre-rbac-mutatingwebhookconfigurations", "pre-rbac-secrets", "pre-rbac-deployments"} {
		expect(t, got, id, Fail, "you may not create")
	}
	expect(t, got, "k8s-api-reachable", Pass, "")
	expect(t, got, "pre-namespace", Warn, "cannot tell")
	// It may not create a dry-run Pod: the apiserver's version tells.
	expect(t, got, "pre-native-sidecars", Pass, "")
}

var authTokenRequest = authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}

func ptr[T any](v T) *T { return &v }

// TestChecksOnACluster installs Weft on the harness's cluster (the chart, applied server-side), puts
// the weft-control Pod's IP on a network namespace where the real weft-control binary runs as in its
// Pod (the install's CA and proxy configuration, its injector on :15017), with the injector Service's
// ClusterIP sent there by a kube-proxy-like nat rule; meshes a Pod through the webhook and connects its
// "proxy" to weft-control over mTLS. Every check passes, through the real paths (the apiserver's
// service and pod proxies to the Pod IP, the webhook at its ClusterIP). Then it makes each fault and
// watches its check fail with a hint: a proxy not connected, an issuer expiring (warning) and expired,
// a wrong webhook caBundle, the webhook Service deleted, weft-control not serving, the control plane
// scaled to 0; and --wait waits for it to come back.
func TestChecksOnACluster(t *testing.T) {
	env := kubeenv.GetCluster(t)
	prereq.Root(t)
	prereq.Binary(t, "ip")
	c := env.Client
	ctx := context.Background()

	good := newTestCA(t, time.Now().Add(-time.Hour), 365*day)
	install(t, env, good.material)
	issuer, err := identity.ParseMaterial(good.material, testTD, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(testTD)
	if err != nil {
		t.Fatal(err)
	}
	ca.SetIssuer(issuer)

	// weft-control at its Pod's IP: the real binary, run in a network namespace that holds the IP, with
	// the CA in --identity-dir and its injector on :15017; the injector Service's ClusterIP:443 goes
	// there through a nat rule, as kube-proxy's.
	cpPod, cpIP := podIP(t, c, cpNS, ControlPlaneLabel)
	injectorIP := serviceIP(t, c, cpNS, InjectorName)
	net1 := newPodNet(t, cpIP)
	stopControl := net1.runControl(t, env, good.material, cpIP)
	removeServiceRule := net1.serviceRule(t, injectorIP, 443, netip.AddrPortFrom(cpIP, 15017))
	t.Logf("weft-control Pod %s at %s, Service %s at %s: served in network namespace %s", cpPod, cpIP, InjectorName, injectorIP, net1.name)

	// A meshed Pod, injected by the webhook through the real apiserver.
	env.CreateNamespace(t, appNS, nil)
	app := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: appNS, Labels: map[string]string{"app": "web"}, Annotations: map[string]string{InjectAnnotation: "enabled"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web:1"}}},
	}
	var created *corev1.Pod
	eventually(t, "the app Pod created with a proxy", 30*time.Second, func() (bool, string) {
		_ = c.CoreV1().Pods(appNS).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
		p, err := c.CoreV1().Pods(appNS).Create(ctx, app, metav1.CreateOptions{})
		if err != nil {
			return false, err.Error()
		}
		created = p
		return hasProxy(p), "created without " + ProxyContainer
	})
	// The injector's shape (deploy/inject): weft-init, then weft-proxy as a native sidecar; the
	// config's version on the Pod.
	var inits []string
	for _, ic := range created.Spec.InitContainers {
		name := ic.Name
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			name += " (sidecar)"
		}
		inits = append(inits, name)
	}
	if want := []string{"weft-init", ProxyContainer + " (sidecar)"}; !slices.Equal(inits, want) {
		t.Errorf("the injected Pod's init containers: %q, want %q", inits, want)
	}
	if v, want := created.Annotations[ProxyVersionAnnotation], configVersion(t, c); v != want {
		t.Errorf("the injected Pod's %s = %q, want the version of %s, %q", ProxyVersionAnnotation, v, ConfigName, want)
	}
	podIP(t, c, appNS, "app=web")
	disconnect := proxyStream(t, netip.AddrPortFrom(cpIP, 15012).String(), ca, issuer, "web", appNS)

	tg := target(t, env)
	tg.ProxyNamespace = appNS
	all := func() []Check {
		return append(append(KubernetesChecks(tg), ControlPlaneChecks(tg)...), DataPlaneChecks(tg)...)
	}

	t.Run("good install", func(t *testing.T) {
		var rep Report
		eventually(t, "every check passes", 60*time.Second, func() (bool, string) {
			rep = Runner{Timeout: 20 * time.Second}.Run(ctx, all())
			bad := notPassed(rep)
			return len(bad) == 0, strings.Join(bad, "; ")
		})
		var text strings.Builder
		p := &TextPrinter{W: &text}
		for _, o := range rep.Outcomes {
			p.Print(o)
		}
		p.Summary(rep)
		t.Logf("weft check --proxy on a good install:\n%s", text.String())
	})

	t.Run("the weft CLI", func(t *testing.T) {
		weft := netns.GoBuild(t, "./cmd/weft")
		run := func(args ...string) (string, int) {
			cmd := exec.Command(weft, append([]string{"check", "--kubeconfig", env.Kubeconfig, "--context", "weft-test"}, args...)...)
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			return string(out), code
		}
		out, code := run("--proxy", "--namespace", appNS, "-o", "json")
		var rep JSONReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 || !rep.Success {
			t.Errorf("weft check --proxy -o json: exit %d, success %v, %v:\n%s", code, rep.Success, err, out)
		}
		if n := len(rep.Sections); n == 0 || rep.Sections[n-1].Name != SectionDataPlane {
			t.Errorf("weft check --proxy: sections %+v", rep.Sections)
		}
		out, code = run("--probe-namespace", "nowhere")
		if code != 1 || !strings.Contains(out, "× the apiserver calls the webhook and it injects the proxy") || !strings.Contains(out, "hint: name an existing namespace with --probe-namespace") {
			t.Errorf("weft check --probe-namespace nowhere: exit %d:\n%s", code, out)
		}
		out, code = run("--context", "nonesuch")
		if code != 1 || !strings.Contains(out, "× can initialize the client") {
			t.Errorf("weft check --context nonesuch: exit %d:\n%s", code, out)
		}
	})

	t.Run("pre checks warn that weft is there", func(t *testing.T) {
		_, got := outcomes(t, append(KubernetesChecks(tg), PreChecks(tg)...))
		expect(t, got, "pre-namespace", Warn, "already exists")
	})

	t.Run("proxy not connected", func(t *testing.T) {
		disconnect()
		eventually(t, "proxy-connected fails", 30*time.Second, func() (bool, string) {
			_, got := outcomes(t, DataPlaneChecks(tg))
			o := got["proxy-connected"]
			return o.Status == Fail, o.Status.String() + ": " + o.Message
		})
		_, got := outcomes(t, DataPlaneChecks(tg))
		expect(t, got, "proxy-connected", Fail, appNS+"/web: its proxy is connected to no weft-control replica")
		expect(t, got, "proxy-pods-ready", Pass, "")
	})

	t.Run("issuer expiring", func(t *testing.T) {
		setSecret(t, c, issue(t, good.anchor, time.Now().Add(-300*day), 320*day))
		rep, got := outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "identity-issuer-60d", Warn, "expires in 19 days")
		expect(t, got, "identity-issuer-valid", Pass, "")
		expect(t, got, "identity-chain", Pass, "")
		if !rep.Success() {
			t.Error("an expiring issuer is a warning, not a failure")
		}
	})

	t.Run("issuer expired", func(t *testing.T) {
		setSecret(t, c, issue(t, good.anchor, time.Now().Add(-400*day), 365*day))
		rep, got := outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "identity-issuer-valid", Fail, "expired on")
		if rep.Success() {
			t.Error("an expired issuer passed")
		}
		setSecret(t, c, good.material)
	})

	t.Run("webhook caBundle of another CA", func(t *testing.T) {
		other := newTestCA(t, time.Now(), 365*day)
		patch, _ := json.Marshal([]map[string]any{{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": other.material.Bundle}})
		if _, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Patch(ctx, InjectorName, types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		_, got := outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "webhook-ca-bundle", Fail, "does not verify the issuer")
		expect(t, got, "webhook-injects", Fail, "came back without a weft-proxy container")
		install(t, env, good.material) // puts the caBundle back
		_, got = outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "webhook-injects", Pass, "")
	})

	t.Run("webhook Service deleted", func(t *testing.T) {
		if err := c.CoreV1().Services(cpNS).Delete(ctx, InjectorName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The apiserver keeps its connection to the injector open and goes on using it (as through
		// kube-proxy's conntrack on a real cluster): only a new connection finds the Service gone.
		// A restart of weft-control drops that connection.
		stopControl()
		stopControl = net1.runControl(t, env, good.material, cpIP)
		// Then kube-proxy removes the Service's rule. (The other way round, the connection's close
		// would not reach the apiserver, whose next call would hang until the webhook's timeout.)
		if err := removeServiceRule(); err != nil {
			t.Fatal(err)
		}
		rep, got := outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "webhook-service", Fail, "Service weft/weft-injector does not exist")
		expect(t, got, "webhook-injects", Fail, "came back without a weft-proxy container")
		if rep.Success() {
			t.Error("a deleted webhook Service passed")
		}
	})

	t.Run("weft-control not serving", func(t *testing.T) {
		stopControl() // the process (restarted above) is gone; kwok keeps its Pod Ready
		_, got := outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "cp-pods", Pass, "")
		expect(t, got, "xds-ready", Fail, "connection refused")
		expect(t, got, "xds-replicas-ready", Fail, cpPod+": ")
	})

	t.Run("control plane scaled to 0, then --wait", func(t *testing.T) {
		scale := func(n int32) {
			s, err := c.AppsV1().Deployments(cpNS).GetScale(ctx, ControlPlaneName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s.Spec.Replicas = n
			if _, err := c.AppsV1().Deployments(cpNS).UpdateScale(ctx, ControlPlaneName, s, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		scale(0)
		_, got := outcomes(t, ControlPlaneChecks(tg))
		expect(t, got, "cp-deployment", Fail, "scaled to 0 replicas")
		eventually(t, "the weft-control Pods gone", 60*time.Second, func() (bool, string) {
			_, got = outcomes(t, ControlPlaneChecks(tg))
			return got["cp-pods"].Status == Fail && got["xds-ready"].Status == Fail, got["cp-pods"].Message + " / " + got["xds-ready"].Message
		})
		expect(t, got, "cp-pods", Fail, "no weft-control Pod")
		expect(t, got, "xds-ready", Fail, "GET /ready")
		expect(t, got, "xds-replicas-ready", Fail, "no weft-control Pod")

		scale(1)
		cp := ControlPlaneChecks(tg)[:4] // the namespace, config, Deployment and Pods
		rep := Runner{Wait: 90 * time.Second, Interval: 500 * time.Millisecond}.Run(ctx, cp)
		expectAllPass(t, rep)
		t.Logf("--wait: cp-deployment passed after %d attempts", rep.Outcomes[2].Attempts)
	})
}
