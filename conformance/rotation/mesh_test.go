package rotation

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
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
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/identity"
)

// The mesh of these tests, on loopback block 127.<block>.0.0/16, as `weft demo` lays it out: weft-control
// on .0.1; the client pod on .0.2 and the server pod on .0.3, each with its weft-proxy binding the pod's
// address; the server's app on .1.3 (its "localhost").
const (
	namespace   = "rot"
	serverPort  = 8080
	serverReply = "hello from server-0"
	trustDomain = "cluster.local"
)

// binaries builds weft-control and weft-proxy once per test binary (or reuses bin/ when it is newer than
// every source, as right after `make build`).
var binaries = sync.OnceValues(func() (bins [2]string, err error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return bins, err
	}
	control, proxy := filepath.Join(root, "bin", "weft-control"), filepath.Join(root, "bin", "weft-proxy")
	if prebuilt.Fresh(root, control, proxy) {
		return [2]string{control, proxy}, nil
	}
	dir, err := os.MkdirTemp("", "weft-rotation-bin-")
	if err != nil {
		return bins, err
	}
	buildDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/weftmesh/weft/cmd/weft-control", "github.com/weftmesh/weft/cmd/weft-proxy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return bins, fmt.Errorf("building the binaries: %v\n%s", err, out)
	}
	return [2]string{filepath.Join(dir, "weft-control"), filepath.Join(dir, "weft-proxy")}, nil
})

// buildDir is where binaries built them, removed by TestMain.
var buildDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// proc is one real process of the mesh: its own process group, its output in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid after done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail is the end of the process's log, for failure messages.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return p.name + " (" + p.log + "):\n" + strings.Join(lines, "\n")
}

// count is how many lines of the process's log contain s.
func (p *proc) count(s string) int {
	f, err := os.Open(p.log)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// kill stops the process group with sig and waits for the process to be reaped.
func (p *proc) kill(t *testing.T, sig syscall.Signal) {
	t.Helper()
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// mesh is weft-control (local mode, identity CA on) and two weft-proxies: client-0 and server-0.
type mesh struct {
	t                    *testing.T
	dir                  string
	block                byte
	controlBin, proxyBin string
	leaf                 time.Duration

	control        *proc
	client, server *proc
	roots          *x509.CertPool
}

func (m *mesh) ip(third, last byte) netip.Addr {
	return netip.AddrFrom4([4]byte{127, m.block, third, last})
}
func (m *mesh) at(ip netip.Addr, port uint16) string {
	return netip.AddrPortFrom(ip, port).String()
}
func (m *mesh) controlAdmin() string  { return m.at(m.ip(0, 1), 15014) }
func (m *mesh) identityAddr() string  { return m.at(m.ip(0, 1), 15012) }
func (m *mesh) xdsAddr() string       { return m.at(m.ip(0, 1), 15010) }
func (m *mesh) clientAdmin() string   { return m.at(m.ip(0, 2), 15000) }
func (m *mesh) clientHTTP() string    { return m.at(m.ip(0, 2), 4140) }
func (m *mesh) serverAdmin() string   { return m.at(m.ip(0, 3), 15000) }
func (m *mesh) serverInbound() string { return m.at(m.ip(0, 3), serverPort) }
func (m *mesh) serverApp() string     { return m.at(m.ip(1, 3), serverPort) }
func (m *mesh) serverURL() string {
	return fmt.Sprintf("http://server.%s.svc.cluster.local:%d/", namespace, serverPort)
}

// startMesh writes the manifests, a CA (identity bootstrap) and the static tokens, starts the server's
// app, weft-control with the given leaf lifetime and both proxies, and waits until a request goes
// through. Everything stops at the end of the test.
func startMesh(t *testing.T, leaf time.Duration) *mesh {
	t.Helper()
	bins, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, dir: t.TempDir(), controlBin: bins[0], proxyBin: bins[1], leaf: leaf}
	m.block = freeBlock(t)
	t.Logf("loopback block 127.%d.0.0/16, files in %s", m.block, m.dir)

	if err := identity.Bootstrap(filepath.Join(m.dir, "ca"), identity.BootstrapOptions{TrustDomain: trustDomain}); err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(filepath.Join(m.dir, "ca", identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	m.roots = x509.NewCertPool()
	if !m.roots.AppendCertsFromPEM(bundle) {
		t.Fatal("no certificate in the bootstrapped trust bundle")
	}
	write := func(name, content string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(m.dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("mesh.yaml", m.manifests(), 0o644)
	write("tokens", fmt.Sprintf("rot-token-client,%s,client\nrot-token-server,%s,server\n", namespace, namespace), 0o600)
	write("client.token", "rot-token-client\n", 0o600)
	write("server.token", "rot-token-server\n", 0o600)

	// The server's app: a plain HTTP server on the pod's "localhost".
	lis, err := net.Listen("tcp", m.serverApp())
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, serverReply) //nolint:errcheck
	})}
	go app.Serve(lis) //nolint:errcheck
	t.Cleanup(func() { app.Close() })

	m.startControl()
	m.client = m.startProxy("client-0", "client", m.ip(0, 2), m.clientAdmin())
	m.server = m.startProxy("server-0", "server", m.ip(0, 3), m.serverAdmin())
	t.Cleanup(func() {
		for _, p := range []*proc{m.client, m.server, m.control} {
			if p != nil && !p.exited() {
				p.kill(t, syscall.SIGTERM)
			}
		}
		if t.Failed() {
			for _, p := range []*proc{m.control, m.client, m.server} {
				t.Log(p.tail(20))
			}
		}
	})
	m.waitReady("the weft-proxy of client-0", m.clientAdmin())
	m.waitReady("the weft-proxy of server-0", m.serverAdmin())
	// Ready means a config and a certificate; a first request through both proxies says the routes are in.
	c := newTrafficClient(m.clientHTTP())
	m.poll("a first request through both proxies", 30*time.Second, func() error { return c.get(context.Background(), m.serverURL()) })
	c.close()
	return m
}

// freeBlock picks a random loopback block whose addresses are all free.
func freeBlock(t *testing.T) byte {
	t.Helper()
	var last error
	for range 20 {
		b := byte(10 + rand.IntN(90))
		m := &mesh{block: b}
		last = nil
		for _, a := range []string{m.xdsAddr(), m.controlAdmin(), m.identityAddr(), m.clientAdmin(), m.clientHTTP(), m.serverAdmin(), m.serverInbound(), m.serverApp(), m.at(m.ip(0, 3), 4140)} {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				last = err
				break
			}
			ln.Close()
		}
		if last == nil {
			return b
		}
	}
	t.Fatalf("no free loopback block: %v", last)
	return 0
}

func (m *mesh) manifests() string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: v1
kind: Service
metadata: {name: server, namespace: %[1]s}
spec:
  clusterIP: 10.96.%[2]d.3
  ports: [{name: http, port: %[3]d, appProtocol: http, targetPort: %[3]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: server-1
  namespace: %[1]s
  labels: {kubernetes.io/service-name: server}
addressType: IPv4
ports: [{name: http, port: %[3]d, protocol: TCP}]
endpoints:
- addresses: ["%[4]s"]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: server-0, namespace: %[1]s}
`, namespace, m.block, serverPort, m.ip(0, 3))
	for _, p := range []struct {
		name, sa string
		ip       netip.Addr
	}{{"client-0", "client", m.ip(0, 2)}, {"server-0", "server", m.ip(0, 3)}} {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec:
  serviceAccountName: %s
  containers:
  - {name: %s, image: weft/test-%s, ports: [{name: http, containerPort: %d}]}
  - {name: weft-proxy, image: weft/proxy}
status: {podIP: %s}
`, p.name, namespace, p.sa, p.sa, p.sa, p.sa, serverPort, p.ip)
	}
	return b.String()
}

func (m *mesh) start(name, bin string, args ...string) *proc {
	m.t.Helper()
	logPath := filepath.Join(m.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		m.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		m.t.Fatalf("starting %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	return p
}

// startControl starts weft-control (again, after a stop: same CA directory, same ports) and waits for
// /ready.
func (m *mesh) startControl() {
	m.t.Helper()
	m.control = m.start("weft-control", m.controlBin,
		"--discovery-file", filepath.Join(m.dir, "mesh.yaml"),
		"--xds-addr", m.xdsAddr(), "--admin-addr", m.controlAdmin(),
		"--identity-addr", m.identityAddr(), "--identity-dir", filepath.Join(m.dir, "ca"),
		"--identity-tokens", filepath.Join(m.dir, "tokens"),
		"--identity-leaf-lifetime", m.leaf.String(), "--debounce", "20ms", "--log-level", "warn")
	m.waitReady("weft-control", m.controlAdmin())
}

func (m *mesh) startProxy(pod, sa string, ip netip.Addr, admin string) *proc {
	m.t.Helper()
	return m.start("weft-proxy-"+pod, m.proxyBin, "run",
		"--xds-addr", m.identityAddr(), "--xds-tls",
		"--pod-name", pod, "--namespace", namespace, "--pod-ip", ip.String(), "--service-account", sa,
		"--identity-addr", m.identityAddr(), "--token-file", filepath.Join(m.dir, sa+".token"),
		"--trust-bundle-file", filepath.Join(m.dir, "ca", identity.BundleFile),
		"--admin-addr", admin, "--http-proxy-addr", m.at(ip, 4140),
		"--outbound-addr", "", "--inbound-addr", "",
		"--inbound-bind-pod-ip", "--app-ip", m.ip(1, ip.As4()[3]).String(),
		"--drain-timeout", "2s", "--log-level", "info")
}

// poll calls check every 50 ms until it succeeds; it fails the test after timeout or when a process
// of the mesh exits.
func (m *mesh) poll(what string, timeout time.Duration, check func() error) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if p := m.exitedProc(); p != nil {
			m.t.Fatalf("waiting for %s: %s exited (%v)", what, p.name, p.err)
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *mesh) exitedProc() *proc {
	for _, p := range []*proc{m.control, m.client, m.server} {
		if p != nil && p.exited() {
			return p
		}
	}
	return nil
}

func (m *mesh) waitReady(what, admin string) {
	m.t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	m.poll(what+" /ready", 30*time.Second, func() error {
		resp, err := hc.Get("http://" + admin + "/ready")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/ready: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil
	})
}

// certified is weft-control's count of successful Certify calls (weft_identity_certify_total{code="OK"})
// since it started.
func (m *mesh) certified() (int, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + m.controlAdmin() + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, `weft_identity_certify_total{code="OK"} `); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return int(v), err
		}
	}
	return 0, sc.Err()
}

// serverCert dials the server pod's inbound port, as a client proxy would, and returns the workload
// certificate server-0's proxy presents, after checking its chain against the trust bundle and
// its SPIFFE ID. The test holds no workload certificate, so the server refuses the connection right after
// the handshake (strict inbound); the certificate it presented is what this observes.
func (m *mesh) serverCert() (*x509.Certificate, error) {
	want := fmt.Sprintf("spiffe://%s/ns/%s/sa/server", trustDomain, namespace)
	var seen *x509.Certificate
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: true, // verified below, against the mesh's trust bundle and SPIFFE ID
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no server certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
				return fmt.Errorf("server certificate names %v, want %s", leaf.URIs, want)
			}
			seen = leaf
			return nil
		},
	}
	d := &net.Dialer{Timeout: 3 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", m.serverInbound(), conf)
	if conn != nil {
		conn.Close()
	}
	if seen != nil {
		return seen, nil // the server may refuse our certificate-less side after showing its own
	}
	if err == nil {
		err = errors.New("no server certificate seen")
	}
	return nil, err
}

// serial is a certificate's serial number in hex.
func serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// trafficClient is an app of the client pod: plain HTTP through its proxy's http_proxy.
type trafficClient struct {
	hc *http.Client
	tr *http.Transport
}

func newTrafficClient(httpProxy string) *trafficClient {
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: httpProxy}), MaxIdleConnsPerHost: 8}
	return &trafficClient{hc: &http.Client{Timeout: 10 * time.Second, Transport: tr}, tr: tr}
}

func (c *trafficClient) close() { c.tr.CloseIdleConnections() }

// get is one request: it succeeds only with 200 and the server app's own reply.
func (c *trafficClient) get(ctx context.Context, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != serverReply {
		return fmt.Errorf("%d %q", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// traffic is a steady stream of requests from the client app to the server Service.
type traffic struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	errs         []string // the first few failures, with their time
	done         chan struct{}
}

// startTraffic sends rate requests per second, half on kept-alive connections and half on a new
// connection each (to the client proxy), until ctx ends; requests are never cut short by ctx.
func (m *mesh) startTraffic(ctx context.Context, rate int) *traffic {
	tr := &traffic{done: make(chan struct{})}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 2 {
		c := newTrafficClient(m.clientHTTP())
		if w == 1 {
			c.tr.DisableKeepAlives = true
		}
		wg.Go(func() {
			defer c.close()
			tick := time.NewTicker(time.Second * 2 / time.Duration(rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				tr.sent.Add(1)
				if err := c.get(context.Background(), m.serverURL()); err != nil {
					tr.failed.Add(1)
					tr.mu.Lock()
					if len(tr.errs) < 10 {
						tr.errs = append(tr.errs, fmt.Sprintf("at %v: %v", time.Since(start).Round(time.Millisecond), err))
					}
					tr.mu.Unlock()
				}
			}
		})
	}
	go func() { wg.Wait(); close(tr.done) }()
	return tr
}

func (tr *traffic) errors() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return strings.Join(tr.errs, "\n")
}
