package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/dataplane/xdsclient"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

var clientNode = xdsclient.Node{PodName: "client-1", Namespace: "shop", PodIP: "127.0.0.2", ServiceAccount: "client"}

const echoFQDN = "echo.shop.svc.cluster.local"

// service is one Service of the test mesh: a ClusterIP:port listener of the client sidecar, and its
// backends.
type service struct {
	fqdn     string
	ip       string
	port     int
	lis      net.Listener
	backends []netip.AddrPort
	lb       clusterv3.Cluster_LbPolicy
	route    fx.Route
	tcp      bool
}

func newService(t testing.TB, fqdn, ip string, backends ...netip.AddrPort) *service {
	l := listen(t, ip+":0")
	return &service{fqdn: fqdn, ip: ip, port: l.Addr().(*net.TCPAddr).Port, lis: l, backends: backends}
}

func (s *service) cluster() string   { return fx.ClusterName(s.port, s.fqdn) }
func (s *service) authority() string { return s.fqdn + ":" + strconv.Itoa(s.port) }

// resources is the outbound config weft-control would send for these services.
//
// Route configurations are named by port, as weft-control names them: services that happen to share a
// port (their listeners are on different loopback addresses) share one, with a virtual host each.
func resources(svcs ...*service) []proto.Message {
	msgs := []proto.Message{fx.Passthrough()}
	var chains []fx.Chain
	var ports []string
	vhosts := map[string][]fx.VirtualHost{}
	for _, s := range svcs {
		c := fx.EDSCluster(s.cluster(), s.lb)
		msgs = append(msgs, c, fx.CLA(s.cluster(), s.backends...))
		port := strconv.Itoa(s.port)
		if s.tcp {
			chains = append(chains, fx.Chain{Name: s.fqdn, IP: s.ip, Port: uint32(s.port), Cluster: s.cluster()})
			continue
		}
		chains = append(chains, fx.Chain{Name: s.fqdn, IP: s.ip, Port: uint32(s.port), Route: port})
		r := s.route
		r.Cluster = s.cluster()
		if vhosts[port] == nil {
			ports = append(ports, port)
		}
		vhosts[port] = append(vhosts[port], fx.VirtualHost{Name: s.fqdn,
			Domains: []string{s.fqdn, s.authority(), s.ip, s.ip + ":" + port}, Routes: []fx.Route{r}})
	}
	for _, port := range ports {
		msgs = append(msgs, fx.RouteConfig(port, vhosts[port]...))
	}
	msgs = append(msgs, fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), &fx.Chain{Name: "passthrough", Cluster: "passthrough"}, chains...))
	return msgs
}

// mesh starts a control plane and a client sidecar serving the services' outbound listeners.
func mesh(t testing.TB, svcs ...*service) (*testCP, *sidecar) {
	t.Helper()
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, clientNode.ID(), "v1", resources(svcs...)...)
	sc := startSidecar(t, cp.addr, clientNode, nil)
	for _, s := range svcs {
		sc.outboundAt(s.lis)
	}
	sc.waitReady(t)
	return cp, sc
}

// resolve makes a transport dial each service's ClusterIP for its name (there is no cluster DNS here).
func resolve(tr *http.Transport, svcs ...*service) *http.Transport {
	names := map[string]string{}
	for _, s := range svcs {
		names[s.authority()] = s.ip + ":" + strconv.Itoa(s.port)
	}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if a, ok := names[addr]; ok {
			addr = a
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	return tr
}

func clientFor(svcs ...*service) *http.Client {
	return &http.Client{Transport: resolve(&http.Transport{}, svcs...), Timeout: 10 * time.Second}
}

func TestHTTP1SpreadAcrossEndpoints(t *testing.T) {
	var bs []*backend
	var addrs []netip.AddrPort
	for i := range 3 {
		b := startBackend(t, fmt.Sprintf("b%d", i), "127.0.0.1:0")
		bs = append(bs, b)
		addrs = append(addrs, b.addr)
	}
	for _, lb := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_LEAST_REQUEST, clusterv3.Cluster_ROUND_ROBIN} {
		t.Run(lb.String(), func(t *testing.T) {
			for _, b := range bs {
				b.hits.Store(0)
			}
			svc := newService(t, echoFQDN, "127.0.0.10", addrs...)
			svc.lb = lb
			_, sc := mesh(t, svc)
			c := clientFor(svc)
			const n = 90
			for range n {
				resp, body := get(t, c, "http://"+svc.authority()+"/hello")
				if resp.StatusCode != 200 || !strings.Contains(body, "HTTP/1.1 "+svc.authority()+" /hello") {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
			}
			for _, b := range bs {
				if h := b.hits.Load(); h < n/10 {
					t.Errorf("%s got %d of %d requests: load is not spread", b.name, h, n)
				}
			}
			if lb == clusterv3.Cluster_ROUND_ROBIN {
				for _, b := range bs {
					if h := b.hits.Load(); h != n/3 {
						t.Errorf("round robin: %s got %d, want %d", b.name, h, n/3)
					}
				}
			}
			labels := map[string]string{"direction": "outbound", "authority": svc.authority(), "target_cluster": svc.cluster(), "tls": "false"}
			if got := metricValue(t, sc.reg, "request_total", labels); got != n {
				t.Errorf("request_total = %v, want %d", got, n)
			}
			labels["status_code"], labels["classification"] = "200", "success"
			if got := metricValue(t, sc.reg, "response_total", labels); got != n {
				t.Errorf("response_total{200,success} = %v, want %d", got, n)
			}
			if got := metricValue(t, sc.reg, "response_latency_ms", labels); got != n {
				t.Errorf("response_latency_ms count = %v, want %d", got, n)
			}
		})
	}
}

func TestExplicitProxyAndH2C(t *testing.T) {
	b := startBackend(t, "b0", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.11", b.addr)
	_, sc := mesh(t, svc)

	// Absolute-form through the explicit proxy, routed by authority.
	resp, body := get(t, sc.proxyClient(), "http://"+svc.authority()+"/via-proxy")
	if resp.StatusCode != 200 || body != "b0 HTTP/1.1 "+svc.authority()+" /via-proxy" {
		t.Fatalf("explicit proxy: %d %q", resp.StatusCode, body)
	}
	// An authority no route knows gets a weft-error.
	resp, body = get(t, sc.proxyClient(), "http://unknown.shop.svc.cluster.local:"+strconv.Itoa(svc.port)+"/")
	if resp.StatusCode != 503 || resp.Header.Get("Weft-Error") != "no route for authority unknown.shop.svc.cluster.local:"+strconv.Itoa(svc.port) || !strings.Contains(body, "no route") {
		t.Fatalf("unknown authority: %d %q %q", resp.StatusCode, resp.Header.Get("Weft-Error"), body)
	}

	// HTTP/2 with prior knowledge (h2c) through the transparent listener reaches the backend as HTTP/2.
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	resp, body = get(t, &http.Client{Transport: resolve(h2, svc)}, "http://"+svc.authority()+"/h2")
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || body != "b0 HTTP/2.0 "+svc.authority()+" /h2" {
		t.Fatalf("h2c: %d %s %q", resp.StatusCode, resp.Proto, body)
	}

	// A large body both ways.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	r, err := clientFor(svc).Post("http://"+svc.authority()+"/upload", "application/octet-stream", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if want := fmt.Sprintf("b0 got %d bytes", len(big)); string(got) != want {
		t.Fatalf("large upload: %q, want %q", got, want)
	}
}

func TestConnectTunnel(t *testing.T) {
	b := startBackend(t, "b0", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.12", b.addr)
	_, sc := mesh(t, svc)
	c, err := net.Dial("tcp", sc.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", svc.authority(), svc.authority())
	br := make([]byte, 0, 512)
	buf := make([]byte, 512)
	for !bytes.Contains(br, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("reading CONNECT reply: %v (%q)", err, br)
		}
		br = append(br, buf[:n]...)
	}
	if !bytes.HasPrefix(br, []byte("HTTP/1.1 200")) {
		t.Fatalf("CONNECT reply %q", br)
	}
	// Speak HTTP through the tunnel.
	fmt.Fprintf(c, "GET /tunnelled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	rest, _ := io.ReadAll(c)
	if !strings.Contains(string(rest), "b0 HTTP/1.1 x /tunnelled") {
		t.Fatalf("through the tunnel: %q", rest)
	}
}

func TestWeftErrors(t *testing.T) {
	slow := startBackend(t, "slow", "127.0.0.1:0")
	slow.delay.Store(int64(5 * time.Second))
	// A port nobody listens on.
	dead := listen(t, "127.0.0.1:0")
	deadAddr := netip.MustParseAddrPort(dead.Addr().String())
	dead.Close()

	timeout := newService(t, "slow.shop.svc.cluster.local", "127.0.0.13", slow.addr)
	timeout.route = fx.Route{Timeout: 200 * time.Millisecond}
	refused := newService(t, "dead.shop.svc.cluster.local", "127.0.0.14", deadAddr)
	empty := newService(t, "empty.shop.svc.cluster.local", "127.0.0.15")
	_, sc := mesh(t, timeout, refused, empty)
	c := clientFor(timeout, refused, empty)
	for _, tc := range []struct {
		svc    *service
		status int
		err    string
	}{
		{timeout, 504, "upstream timeout after 200ms"},
		{refused, 502, "connection to " + deadAddr.String() + " refused"},
		{empty, 503, "cluster " + empty.cluster() + " has no ready endpoints"},
	} {
		resp, body := get(t, c, "http://"+tc.svc.authority()+"/")
		if resp.StatusCode != tc.status || resp.Header.Get("Weft-Error") != tc.err || strings.TrimSpace(body) != tc.err {
			t.Errorf("%s: got %d weft-error=%q body=%q; want %d %q", tc.svc.fqdn, resp.StatusCode, resp.Header.Get("Weft-Error"), body, tc.status, tc.err)
		}
		labels := map[string]string{"authority": tc.svc.authority(), "status_code": strconv.Itoa(tc.status), "classification": "failure"}
		if got := metricValue(t, sc.reg, "response_total", labels); got != 1 {
			t.Errorf("%s: response_total{failure} = %v, want 1", tc.svc.fqdn, got)
		}
	}
}

func TestRetriesAgainstFailingBackend(t *testing.T) {
	b := startBackend(t, "flaky", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.16", b.addr)
	svc.route = fx.Route{RetryOn: "5xx", NumRetries: 3}
	_, _ = mesh(t, svc)
	b.fails.Store(2)
	resp, body := get(t, clientFor(svc), "http://"+svc.authority()+"/")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "flaky") {
		t.Fatalf("after 2 failures and 3 retries: %d %q", resp.StatusCode, body)
	}
	if h := b.hits.Load(); h != 3 {
		t.Fatalf("backend saw %d requests, want 3 (2 failures + 1 success)", h)
	}
	// A request body is replayed on retry.
	b.hits.Store(0)
	b.fails.Store(1)
	r, err := clientFor(svc).Post("http://"+svc.authority()+"/", "text/plain", strings.NewReader(strings.Repeat("x", 1024)))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || string(got) != "flaky got 1024 bytes" || b.hits.Load() != 2 {
		t.Fatalf("POST retried: %d %q hits=%d", r.StatusCode, got, b.hits.Load())
	}
	// More failures than retries: the client sees the backend's last 503 (not a proxy error).
	b.hits.Store(0)
	b.fails.Store(10)
	resp, _ = get(t, clientFor(svc), "http://"+svc.authority()+"/")
	if resp.StatusCode != 503 || resp.Header.Get("Weft-Error") != "" || b.hits.Load() != 4 {
		t.Fatalf("exhausted retries: %d weft-error=%q hits=%d", resp.StatusCode, resp.Header.Get("Weft-Error"), b.hits.Load())
	}
	b.fails.Store(0)
}

// TestPerTryTimeoutRetries: a first attempt that hangs is abandoned after the per-try timeout and the
// retry answers, within the route timeout.
func TestPerTryTimeoutRetries(t *testing.T) {
	var n atomic.Int64
	l := listen(t, "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			<-r.Context().Done() // the first attempt hangs until the proxy gives up on it
			return
		}
		io.WriteString(w, "second try")
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	svc := newService(t, echoFQDN, "127.0.0.47", netip.MustParseAddrPort(l.Addr().String()))
	svc.route = fx.Route{Timeout: 10 * time.Second, RetryOn: "5xx", NumRetries: 2, PerTryTimeout: 200 * time.Millisecond}
	mesh(t, svc)
	resp, body := get(t, clientFor(svc), "http://"+svc.authority()+"/")
	if resp.StatusCode != 200 || body != "second try" || n.Load() != 2 {
		t.Fatalf("got %d %q after %d attempts", resp.StatusCode, body, n.Load())
	}
	// Every attempt hangs: 504 naming the per-try timeout.
	svc2 := newService(t, "hang.shop.svc.cluster.local", "127.0.0.48", startHanging(t))
	svc2.route = fx.Route{Timeout: 10 * time.Second, RetryOn: "5xx", NumRetries: 1, PerTryTimeout: 100 * time.Millisecond}
	mesh(t, svc2)
	resp, _ = get(t, clientFor(svc2), "http://"+svc2.authority()+"/")
	if resp.StatusCode != 504 || resp.Header.Get("Weft-Error") != "upstream timeout after 100ms (per try)" {
		t.Fatalf("all attempts time out: %d %q", resp.StatusCode, resp.Header.Get("Weft-Error"))
	}
}

func startHanging(t testing.TB) netip.AddrPort {
	l := listen(t, "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}
