// Package h2 proves weft-proxy's HTTP/2 and gRPC forwarding against real peers, at the sockets: h2spec
// against its outbound h2c listener and its inbound mTLS HTTP/2 listener, grpc-go clients and servers
// through one and two sidecars (unary, the three streaming kinds, cancellation, deadlines, 4 MB
// messages, 100 concurrent streams, metadata and statuses with details), and bad input (a malformed
// frame, a header block over the limit, rapid reset, a CONTINUATION flood) on both listeners. The real
// binaries run in local mode (weft-control --discovery-file with its CA, one weft-proxy per pod on
// loopback addresses, as `weft demo` runs them); nothing here looks inside the proxy, so the tests hold
// for any forwarding implementation.
package h2

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/identity"
)

const (
	namespace   = "h2"
	trustDomain = "cluster.local"
	grpcPort    = 9090
	webPort     = 8080
	proxyPort   = 4140 // the explicit outbound proxy of each pod
	adminPort   = 15000
	maxMsg      = 16 << 20 // gRPC message limit on both ends (the 4 MB cases need more than grpc-go's 4 MiB default)
)

// binaries are weft-control and weft-proxy (prebuilt.MeshBinaries), built at most once per test binary.
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
	os.Exit(code)
}

// mesh is one local-mode mesh on loopback block 127.<block>.0.0/16:
//
//	weft-control  127.B.0.1 (xDS 15010, Certify and xDS over mTLS 15012, admin 15014)
//	client-0      127.B.0.2  a weft-proxy (explicit proxy :4140) and no app: the tests are its app
//	server-0      127.B.0.3  a weft-proxy (inbound mTLS on :9090 and :8080), apps on 127.B.1.3
//	plain-0       127.B.0.4  no sidecar: apps on 127.B.0.4 itself
//
// Services: grpc (→ server-0:9090, gRPC) and web (→ server-0:8080, h2c) are meshed; grpc-plain
// (→ plain-0:9090) and web-plain (→ plain-0:8080) are not. web-plain's ClusterIP is client-0's explicit
// proxy address itself, port 4140: a client that addresses the proxy by its own host:port (h2spec, which
// takes :authority from where it connects) is routed to the web-plain app.
type mesh struct {
	block        byte
	dir          string
	client       *proxyProc
	server       *proxyProc
	serverApp    *apps // behind server-0's sidecar
	plainApp     *apps // plain-0, no sidecar
	clientTLS    *tls.Config
	grpcMeshed   string // :authority of the meshed gRPC Service (B2)
	grpcPlain    string // :authority of the plain gRPC Service (B1)
	plainGRPC    string // plain-0's gRPC app itself (B0: the tests' control, no proxy)
	webPlain     string // :authority (and the explicit proxy's address) for web-plain
	inboundGRPC  string // server-0's inbound listener for the gRPC port
	inboundWeb   string // server-0's inbound listener for the web port
	controlAdmin string
}

type proxyProc struct {
	name      string
	cmd       *exec.Cmd
	admin     string
	httpProxy string
	log       string
	exited    chan struct{}
}

func (b block) ip(third, last byte) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(b), third, last})
}

type block byte

// startMesh runs the mesh and waits until every proxy is ready and the inbound ports are bound.
func startMesh(t *testing.T) *mesh {
	t.Helper()
	bins, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{dir: t.TempDir()}
	m.block = pickBlock(t)
	b := block(m.block)
	addr := func(third, last byte, port int) string {
		return netip.AddrPortFrom(b.ip(third, last), uint16(port)).String()
	}
	m.grpcMeshed = fmt.Sprintf("grpc.%s.svc.cluster.local:%d", namespace, grpcPort)
	m.grpcPlain = fmt.Sprintf("grpc-plain.%s.svc.cluster.local:%d", namespace, grpcPort)
	m.webPlain = addr(0, 2, proxyPort)
	m.inboundGRPC, m.inboundWeb = addr(0, 3, grpcPort), addr(0, 3, webPort)
	m.plainGRPC = addr(0, 4, grpcPort)
	m.controlAdmin = addr(0, 1, 15014)

	// The apps first: a proxy's inbound side may see traffic as soon as it is ready.
	m.serverApp = startApps(t, b.ip(1, 3))
	m.plainApp = startApps(t, b.ip(0, 4))

	caDir := filepath.Join(m.dir, "ca")
	if err := identity.Bootstrap(caDir, identity.BootstrapOptions{TrustDomain: trustDomain}); err != nil {
		t.Fatal(err)
	}
	var tokens strings.Builder
	for _, sa := range []string{"client", "server"} {
		tok := "h2-token-" + sa
		fmt.Fprintf(&tokens, "%s,%s,%s\n", tok, namespace, sa)
		writeFile(t, filepath.Join(m.dir, sa+".token"), tok+"\n")
	}
	writeFile(t, filepath.Join(m.dir, "tokens"), tokens.String())
	writeFile(t, filepath.Join(m.dir, "mesh.yaml"), manifests(b))

	idAddr := addr(0, 1, 15012)
	startProc(t, m.dir, "weft-control", bins[0], "--discovery-file", filepath.Join(m.dir, "mesh.yaml"),
		"--xds-addr", addr(0, 1, 15010), "--admin-addr", m.controlAdmin,
		"--identity-addr", idAddr, "--identity-dir", caDir, "--identity-tokens", filepath.Join(m.dir, "tokens"),
		"--debounce", "20ms", "--log-level", "warn")
	waitFor(t, "weft-control /ready", 60*time.Second, func() error { return httpOK("http://" + m.controlAdmin + "/ready") })

	proxy := func(name, sa string, pod, app netip.Addr) *proxyProc {
		p := startProc(t, m.dir, "weft-proxy-"+name, bins[1], "run",
			"--xds-addr", idAddr, "--xds-tls",
			"--pod-name", name, "--namespace", namespace, "--pod-ip", pod.String(), "--service-account", sa,
			"--identity-addr", idAddr, "--token-file", filepath.Join(m.dir, sa+".token"),
			"--trust-bundle-file", filepath.Join(caDir, identity.BundleFile),
			"--admin-addr", netip.AddrPortFrom(pod, adminPort).String(),
			"--http-proxy-addr", netip.AddrPortFrom(pod, proxyPort).String(),
			"--outbound-addr", "", "--inbound-addr", "",
			"--inbound-bind-pod-ip", "--app-ip", app.String(),
			"--drain-timeout", "1s", "--log-level", "warn")
		p.admin = netip.AddrPortFrom(pod, adminPort).String()
		p.httpProxy = netip.AddrPortFrom(pod, proxyPort).String()
		return p
	}
	m.client = proxy("client-0", "client", b.ip(0, 2), b.ip(1, 2))
	m.server = proxy("server-0", "server", b.ip(0, 3), b.ip(1, 3))
	for _, p := range []*proxyProc{m.client, m.server} {
		waitFor(t, p.name+" /ready", 60*time.Second, func() error { return httpOK("http://" + p.admin + "/ready") })
	}
	for _, a := range []string{m.inboundGRPC, m.inboundWeb} {
		waitFor(t, "inbound "+a+" bound", 20*time.Second, func() error {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	m.clientTLS = meshClientTLS(t, caDir, "client")
	// The routes: a call through each path answers.
	for _, a := range []string{m.grpcMeshed, m.grpcPlain} {
		cc := m.dialGRPC(t, a)
		waitFor(t, "a gRPC call to "+a, 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, err := testgrpc.NewTestServiceClient(cc).EmptyCall(ctx, &testgrpc.Empty{})
			return err
		})
	}
	return m
}

// dialGRPC is a grpc-go client of the Service at authority through client-0's explicit proxy (h2c),
// one connection.
func (m *mesh) dialGRPC(t testing.TB, authority string) *grpc.ClientConn {
	t.Helper()
	return dialVia(t, m.client.httpProxy, authority)
}

// dialVia is a grpc-go client of authority through addr (a proxy, or the app itself), one connection.
func dialVia(t testing.TB, addr, authority string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(authority),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// manifests is the mesh's discovery file.
func manifests(b block) string {
	var s strings.Builder
	svc := func(name, clusterIP, proto string, port, target int, endpoint netip.Addr, pod string) {
		fmt.Fprintf(&s, `---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  clusterIP: %[3]s
  ports: [{name: %[4]s, port: %[5]d, targetPort: %[6]d, appProtocol: %[7]s}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-1, namespace: %[2]s, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: %[4]s, port: %[6]d, protocol: TCP}]
endpoints:
- addresses: ["%[8]s"]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: %[9]s, namespace: %[2]s}
`, name, namespace, clusterIP, "p"+strconv.Itoa(port), port, target, proto, endpoint, pod)
	}
	pod := func(name, sa string, ip netip.Addr, sidecar bool) {
		containers := fmt.Sprintf("[{name: app, image: app, ports: [{containerPort: %d}, {containerPort: %d}]}", grpcPort, webPort)
		if sidecar {
			containers += ", {name: weft-proxy, image: weft/proxy}"
		}
		containers += "]"
		fmt.Fprintf(&s, `---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  serviceAccountName: %s
  containers: %s
status: {podIP: %s}
`, name, namespace, sa, sa, containers, ip)
	}
	server, plain := b.ip(0, 3), b.ip(0, 4)
	svc("grpc", fmt.Sprintf("10.96.%d.3", b), "grpc", grpcPort, grpcPort, server, "server-0")
	svc("web", fmt.Sprintf("10.96.%d.5", b), "kubernetes.io/h2c", webPort, webPort, server, "server-0")
	svc("grpc-plain", fmt.Sprintf("10.96.%d.4", b), "grpc", grpcPort, grpcPort, plain, "plain-0")
	svc("web-plain", b.ip(0, 2).String(), "kubernetes.io/h2c", proxyPort, webPort, plain, "plain-0")
	pod("client-0", "client", b.ip(0, 2), true)
	pod("server-0", "server", server, true)
	pod("plain-0", "plain", plain, false)
	return s.String()
}

// pickBlock finds a loopback block whose fixed addresses are free (tests of other packages may run
// meshes of their own at the same time).
func pickBlock(t *testing.T) byte {
	t.Helper()
	seed := time.Now().UnixNano()
	for i := range 40 {
		b := block(100 + (seed+int64(i)*37)%150)
		free := true
		for _, a := range []string{
			netip.AddrPortFrom(b.ip(0, 1), 15010).String(), netip.AddrPortFrom(b.ip(0, 1), 15012).String(),
			netip.AddrPortFrom(b.ip(0, 1), 15014).String(),
			netip.AddrPortFrom(b.ip(0, 2), adminPort).String(), netip.AddrPortFrom(b.ip(0, 2), proxyPort).String(),
			netip.AddrPortFrom(b.ip(0, 2), grpcPort).String(), netip.AddrPortFrom(b.ip(0, 2), webPort).String(),
			netip.AddrPortFrom(b.ip(0, 3), adminPort).String(), netip.AddrPortFrom(b.ip(0, 3), proxyPort).String(),
			netip.AddrPortFrom(b.ip(0, 3), grpcPort).String(), netip.AddrPortFrom(b.ip(0, 3), webPort).String(),
			netip.AddrPortFrom(b.ip(1, 3), grpcPort).String(), netip.AddrPortFrom(b.ip(1, 3), webPort).String(),
			netip.AddrPortFrom(b.ip(0, 4), grpcPort).String(), netip.AddrPortFrom(b.ip(0, 4), webPort).String(),
		} {
			l, err := net.Listen("tcp", a)
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return byte(b)
		}
	}
	t.Fatal("no free loopback block 127.100-249.x.x for the mesh")
	return 0
}

// meshClientTLS is a TLS client config with a workload certificate of sa signed by the mesh's CA, as a
// peer sidecar presents it; the server's certificate is not checked (these tests attack the server).
func meshClientTLS(t *testing.T, caDir, sa string) *tls.Config {
	t.Helper()
	mat, err := identity.LoadDir(caDir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Load(mat); err != nil {
		t.Fatal(err)
	}
	id, err := identity.NewID(trustDomain, namespace, sa)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Sign(&key.PublicKey, id)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: append([][]byte{leaf.Certificate.Raw}, leaf.Intermediates...), PrivateKey: key}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // #nosec G402 -- a test client of the proxy under test
	}
}

// selfSignedTLS is a throwaway server certificate (the h2spec-facing side of the mTLS shim).
func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "h2spec shim"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{"h2"},
	}
}

func startProc(t *testing.T, dir, name, bin string, args ...string) *proxyProc {
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
	p := &proxyProc{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil && len(b) > 0 {
				t.Logf("%s's log:\n%s", name, tail(b, 4000))
			}
		}
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// alive fails the test when the process has exited (crashed under attack, say).
func (p *proxyProc) alive(t testing.TB) {
	t.Helper()
	select {
	case <-p.exited:
		b, _ := os.ReadFile(p.log)
		t.Fatalf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, tail(b, 4000))
	default:
	}
}

// rssKB is the process's VmRSS in KiB.
func (p *proxyProc) rssKB(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("reading %s's memory: %v", p.name, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatalf("%s's /proc status has no VmRSS", p.name)
	return 0
}

// clientID is client-0's SPIFFE identity.
var clientID = "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/client"

// inboundMTLSRequests sums the proxy's request_total series of direction inbound, over TLS, from
// client-0's identity (its /metrics, as Prometheus reads it).
func (p *proxyProc) inboundMTLSRequests(t testing.TB) float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatalf("%s's /metrics: %v", p.name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for line := range strings.SplitSeq(string(body), "\n") {
		if !strings.HasPrefix(line, "request_total{") || !strings.Contains(line, `direction="inbound"`) ||
			!strings.Contains(line, `tls="true"`) || !strings.Contains(line, `client_id="`+clientID+`"`) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				t.Fatalf("%s's /metrics: %q: %v", p.name, line, err)
			}
			sum += v
		}
	}
	return sum
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
