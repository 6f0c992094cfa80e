// Package gamma checks the Gateway API routes (HTTPRoute, docs/design.md "Routes") end to end with real
// traffic: the routes are written in weft-control's discovery file (local mode), translated by the real
// weft-control, sent over xDS to real weft-proxy sidecars, and a client sends HTTP requests through its
// sidecar to real HTTP servers behind their own sidecars. Nothing here looks inside a proxy: what a
// request does (which version answered, its status, how many attempts a server saw) is what a user sees.
package gamma

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/identity"
)

const (
	namespace   = "gamma"
	trustDomain = "cluster.local"
	appPort     = 8080 // the HTTP Services' port and the apps' HTTP port
	grpcPort    = 9090 // the gRPC Services' port and the apps' gRPC port
	proxyPort   = 4140 // client-0's explicit HTTP proxy
	adminPort   = 15000
)

var binaries = sync.OnceValues(func() ([2]string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return [2]string{}, err
	}
	control, proxy, tmp, err := prebuilt.MeshBinaries(root)
	buildDir = tmp
	return [2]string{control, proxy}, err
})

var buildDir string // removed by TestMain

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	if weftBuildDir != "" {
		os.RemoveAll(weftBuildDir)
	}
	os.Exit(code)
}

type block byte

func (b block) ip(third, last byte) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(b), third, last})
}

// mesh is one local-mode mesh on loopback block 127.<B>.0.0/16:
//
//	weft-control  127.B.0.1 (xDS 15010, Certify and xDS over mTLS 15012, admin 15014)
//	client-0      127.B.0.2  a weft-proxy (explicit HTTP proxy :4140); the test is its app
//	echo-v1-0     127.B.0.3  a weft-proxy (inbound mTLS :8080, :9090), its apps on 127.B.1.3 (HTTP :8080, gRPC :9090)
//	echo-v2-0     127.B.0.4  a weft-proxy (inbound mTLS :8080, :9090), its apps on 127.B.1.4
//
// Services, all on port 8080 (appProtocol http): echo (both pods), echo-v1, echo-v2 (one pod each),
// lonely (echo-v1-0: a Service whose route names a missing backend); on port 9090 (appProtocol grpc):
// grpc-echo (both pods), grpc-echo-v1, grpc-echo-v2, with the GRPCRoute grpcRoute.
type mesh struct {
	block     block
	dir       string
	file      string // the discovery file
	control   *proc
	client    *http.Client // through client-0's sidecar
	proxyAddr string       // client-0's explicit proxy
	v1, v2    *echoApp
	pods      []meshPod
}

// meshPod is one pod with a sidecar, as Prometheus is told to scrape it.
type meshPod struct{ name, deployment, admin string }

type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func startMesh(t *testing.T) *mesh {
	t.Helper()
	bins, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{dir: t.TempDir(), block: pickBlock(t)}
	b := m.block
	addr := func(ip netip.Addr, port int) string { return netip.AddrPortFrom(ip, uint16(port)).String() }
	m.v1 = startEcho(t, "echo-v1", addr(b.ip(1, 3), appPort))
	m.v2 = startEcho(t, "echo-v2", addr(b.ip(1, 4), appPort))
	startGRPCEcho(t, "echo-v1", addr(b.ip(1, 3), grpcPort))
	startGRPCEcho(t, "echo-v2", addr(b.ip(1, 4), grpcPort))

	caDir := filepath.Join(m.dir, "ca")
	if err := identity.Bootstrap(caDir, identity.BootstrapOptions{TrustDomain: trustDomain}); err != nil {
		t.Fatal(err)
	}
	var tokens strings.Builder
	for _, sa := range []string{"client", "echo"} {
		tok := "gamma-token-" + sa
		fmt.Fprintf(&tokens, "%s,%s,%s\n", tok, namespace, sa)
		writeFile(t, filepath.Join(m.dir, sa+".token"), tok+"\n")
	}
	writeFile(t, filepath.Join(m.dir, "tokens"), tokens.String())
	m.file = filepath.Join(m.dir, "mesh.yaml")
	writeFile(t, m.file, m.manifests(0, ""))

	control, idAddr, controlAdmin := b.ip(0, 1), addr(b.ip(0, 1), 15012), addr(b.ip(0, 1), 15014)
	m.control = startProc(t, m.dir, "weft-control", bins[0], "--discovery-file", m.file,
		"--xds-addr", addr(control, 15010), "--admin-addr", controlAdmin,
		"--identity-addr", idAddr, "--identity-dir", caDir, "--identity-tokens", filepath.Join(m.dir, "tokens"),
		"--debounce", "20ms", "--log-level", "warn")
	waitFor(t, "weft-control /ready", 60*time.Second, func() error { return httpOK("http://" + controlAdmin + "/ready") })

	sidecar := func(name, sa string, pod, app netip.Addr) {
		admin := addr(pod, adminPort)
		m.pods = append(m.pods, meshPod{name: name, deployment: strings.TrimSuffix(name, "-0"), admin: admin})
		startProc(t, m.dir, "weft-proxy-"+name, bins[1], "run",
			"--xds-addr", idAddr, "--xds-tls",
			"--pod-name", name, "--namespace", namespace, "--pod-ip", pod.String(), "--service-account", sa,
			"--identity-addr", idAddr, "--token-file", filepath.Join(m.dir, sa+".token"),
			"--trust-bundle-file", filepath.Join(caDir, identity.BundleFile),
			"--admin-addr", admin, "--http-proxy-addr", addr(pod, proxyPort),
			"--outbound-addr", "", "--inbound-addr", "",
			"--inbound-bind-pod-ip", "--app-ip", app.String(),
			"--drain-timeout", "1s", "--log-level", "warn")
	}
	sidecar("client-0", "client", b.ip(0, 2), b.ip(1, 2))
	sidecar("echo-v1-0", "echo", b.ip(0, 3), b.ip(1, 3))
	sidecar("echo-v2-0", "echo", b.ip(0, 4), b.ip(1, 4))
	for _, p := range m.pods {
		waitFor(t, p.name+" /ready", 60*time.Second, func() error { return httpOK("http://" + p.admin + "/ready") })
	}
	m.proxyAddr = addr(b.ip(0, 2), proxyPort)
	proxyURL := &url.URL{Scheme: "http", Host: m.proxyAddr}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	m.client = &http.Client{Timeout: 10 * time.Second, Transport: tr}
	// Every Service answers through the sidecars before any case starts.
	for _, svc := range []string{"echo", "echo-v1", "echo-v2", "lonely"} {
		waitFor(t, "GET "+svc+" through client-0's sidecar", 30*time.Second, func() error {
			r, err := m.get(http.MethodGet, svc, "/", nil)
			if err == nil && r.status != http.StatusOK {
				err = fmt.Errorf("status %d: %s", r.status, r.body)
			}
			return err
		})
	}
	return m
}

// reply is what the client saw of one request.
type reply struct {
	status int
	body   string // the app's name (echo-v1, echo-v2) for a request an app answered
	header http.Header
}

// get sends one request to svc's port 8080 through client-0's sidecar.
func (m *mesh) get(method, svc, pathQuery string, header map[string]string) (reply, error) {
	req, err := http.NewRequest(method, fmt.Sprintf("http://%s.%s.svc.cluster.local:%d%s", svc, namespace, appPort, pathQuery), nil)
	if err != nil {
		return reply{}, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, body: strings.TrimSpace(string(body)), header: resp.Header}, nil
}

// must is get that fails the test on a transport error.
func (m *mesh) must(t *testing.T, method, svc, pathQuery string, header map[string]string) reply {
	t.Helper()
	r, err := m.get(method, svc, pathQuery, header)
	if err != nil {
		t.Fatalf("%s %s%s %v through client-0's sidecar: %v", method, svc, pathQuery, header, err)
	}
	return r
}

// echoApp is one version's HTTP server (behind its pod's sidecar). It answers its name, except:
//
//	/slow        holds the request until the client goes away (or 10 s)
//	/flaky?id=X&fail=N  answers 503 to the first N requests of each X (1 without fail), then 200;
//	                    attempts counts them
type echoApp struct {
	name     string
	mu       sync.Mutex
	attempts map[string]int
	served   atomic.Int64
}

func startEcho(t *testing.T, name, addr string) *echoApp {
	t.Helper()
	a := &echoApp{name: name, attempts: map[string]int{}}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s app on %s: %v", name, addr, err)
	}
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *echoApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.served.Add(1)
	switch r.URL.Path {
	case "/slow":
		select {
		case <-r.Context().Done():
			return
		case <-time.After(10 * time.Second):
		}
	case "/flaky":
		a.mu.Lock()
		id := r.URL.Query().Get("id")
		a.attempts[id]++
		n := a.attempts[id]
		a.mu.Unlock()
		fail, err := strconv.Atoi(r.URL.Query().Get("fail"))
		if err != nil {
			fail = 1
		}
		if n <= fail {
			http.Error(w, a.name+" fails the first try", http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, a.name)
}

// attemptsOf is how many requests of /flaky?id=id the app saw.
func (a *echoApp) attemptsOf(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.attempts[id]
}

// manifests is the discovery file: the Pods, Services and EndpointSlices, then the routes (HTTPRoute
// documents) of the case. Every version of the file also has the route "generation" on Service
// echo-v1 whose first rule sets the response header x-generation: gen (its second sends the rest to
// echo-v1, as the default route would), so that a test knows when the client's
// sidecar has the routes of the version it wrote (all the Services share port 8080, hence one route
// configuration, sent whole).
func (m *mesh) manifests(gen int, routes string) string {
	b := m.block
	var s strings.Builder
	pod := func(name, sa, app string, ip netip.Addr) {
		fmt.Fprintf(&s, `---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  serviceAccountName: %s
  containers: [{name: app, image: app, ports: [{containerPort: %d}, {containerPort: %d}]}, {name: weft-proxy, image: weft/proxy}]
status: {podIP: %s}
`, name, namespace, app, sa, appPort, grpcPort, ip)
	}
	svc := func(name string, last byte, port int, proto string, pods ...string) {
		fmt.Fprintf(&s, `---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  clusterIP: 10.96.%[3]d.%[4]d
  ports: [{name: %[6]s, port: %[5]d, targetPort: %[5]d, appProtocol: %[6]s}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-1, namespace: %[2]s, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: %[6]s, port: %[5]d, protocol: TCP}]
endpoints:
`, name, namespace, b, last, port, proto)
		for _, p := range pods {
			ip := b.ip(0, 3)
			if p == "echo-v2-0" {
				ip = b.ip(0, 4)
			}
			fmt.Fprintf(&s, "- {addresses: [\"%s\"], conditions: {ready: true}, targetRef: {kind: Pod, name: %s, namespace: %s}}\n", ip, p, namespace)
		}
	}
	pod("client-0", "client", "client", b.ip(0, 2))
	pod("echo-v1-0", "echo", "echo-v1", b.ip(0, 3))
	pod("echo-v2-0", "echo", "echo-v2", b.ip(0, 4))
	svc("echo", 10, appPort, "http", "echo-v1-0", "echo-v2-0")
	svc("echo-v1", 11, appPort, "http", "echo-v1-0")
	svc("echo-v2", 12, appPort, "http", "echo-v2-0")
	svc("lonely", 13, appPort, "http", "echo-v1-0")
	svc("grpc-echo", 20, grpcPort, "grpc", "echo-v1-0", "echo-v2-0")
	svc("grpc-echo-v1", 21, grpcPort, "grpc", "echo-v1-0")
	svc("grpc-echo-v2", 22, grpcPort, "grpc", "echo-v2-0")
	s.WriteString(grpcRoute)
	fmt.Fprintf(&s, `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: generation, namespace: %s}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: %d}]
  rules:
  - matches: [{path: {type: Exact, value: /generation}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-generation, value: "%d"}]}}]
    backendRefs: [{name: echo-v1, port: %[4]d}]
  - backendRefs: [{name: echo-v1, port: %[4]d}]
`, namespace, appPort, gen, appPort)
	s.WriteString(routes)
	return s.String()
}

// apply writes the discovery file with routes (as a new generation, by renaming a complete file into
// place, as kubectl-less users and ConfigMap mounts do) and waits until client-0's sidecar routes by it.
func (m *mesh) apply(t *testing.T, routes string) {
	t.Helper()
	gen := int(generation.Add(1))
	tmp := m.file + ".new"
	writeFile(t, tmp, m.manifests(gen, routes))
	if err := os.Rename(tmp, m.file); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(gen)
	waitFor(t, "client-0's sidecar to route by generation "+want+" of the discovery file", 20*time.Second, func() error {
		r, err := m.get(http.MethodGet, "echo-v1", "/generation", nil)
		if err != nil {
			return err
		}
		if got := r.header.Get("x-generation"); got != want {
			return fmt.Errorf("x-generation %q (status %d)", got, r.status)
		}
		return nil
	})
}

var generation atomic.Int64

// pickBlock finds a loopback block whose fixed addresses are free (other packages' meshes may run at the
// same time).
func pickBlock(t *testing.T) block {
	t.Helper()
	seed := time.Now().UnixNano()
	for i := range 40 {
		b := block(100 + (seed+int64(i)*37)%150)
		free := true
		for _, a := range []netip.AddrPort{
			netip.AddrPortFrom(b.ip(0, 1), 15010), netip.AddrPortFrom(b.ip(0, 1), 15012), netip.AddrPortFrom(b.ip(0, 1), 15014),
			netip.AddrPortFrom(b.ip(0, 1), promPort),
			netip.AddrPortFrom(b.ip(0, 2), adminPort), netip.AddrPortFrom(b.ip(0, 2), proxyPort),
			netip.AddrPortFrom(b.ip(0, 3), adminPort), netip.AddrPortFrom(b.ip(0, 3), appPort),
			netip.AddrPortFrom(b.ip(0, 4), adminPort), netip.AddrPortFrom(b.ip(0, 4), appPort),
			netip.AddrPortFrom(b.ip(1, 3), appPort), netip.AddrPortFrom(b.ip(1, 4), appPort),
			netip.AddrPortFrom(b.ip(0, 3), grpcPort), netip.AddrPortFrom(b.ip(0, 4), grpcPort),
			netip.AddrPortFrom(b.ip(1, 3), grpcPort), netip.AddrPortFrom(b.ip(1, 4), grpcPort),
		} {
			l, err := net.Listen("tcp", a.String())
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return b
		}
	}
	t.Fatal("no free loopback block 127.100-249.x.x for the mesh")
	return 0
}

func startProc(t *testing.T, dir, name, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil && len(b) > 0 {
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("%s's log:\n%s", name, b)
			}
		}
	})
	return p
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func httpOK(url string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitFor polls f until it succeeds or the deadline passes.
func waitFor(t testing.TB, what string, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
