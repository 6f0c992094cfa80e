package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftmesh/weft/dataplane"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/xdsclient"
)

// sidecar is one weft-proxy under test, fed by a test control plane.
type sidecar struct {
	p        *proxy.Proxy
	xds      *xdsclient.Client
	reg      *metrics.Set
	node     xdsclient.Node
	httpAddr string // explicit HTTP proxy
}

func startSidecar(t testing.TB, cpAddr string, node xdsclient.Node, id dataplane.Identity) *sidecar {
	t.Helper()
	return startSidecarWith(t, cpAddr, node, proxy.Options{Identity: id})
}

// startSidecarWith is startSidecar with the proxy's options (its identity, timeouts).
func startSidecarWith(t testing.TB, cpAddr string, node xdsclient.Node, o proxy.Options) *sidecar {
	t.Helper()
	reg := metrics.NewSet()
	o.Metrics, o.DetectTimeout = reg, time.Second
	// HTTP/2 clients go through the relay (h2relay.go), as weft-proxy's default; WEFT_TEST_H2_RELAY=0
	// runs the package through net/http's HTTP/2 server instead (--h2-relay=false).
	o.H2Relay = os.Getenv("WEFT_TEST_H2_RELAY") != "0"
	p := proxy.New(o)
	cc := xdsclient.Dial(cpAddr, nil)
	c := xdsclient.New(xdsclient.Options{Node: node, Conn: cc, OnUpdate: p.Update, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	hl := listen(t, "127.0.0.1:0")
	go func() { _ = p.ServeHTTPProxy(hl) }()
	s := &sidecar{p: p, xds: c, reg: reg, node: node, httpAddr: hl.Addr().String()}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = p.Shutdown(sctx)
		scancel()
		cancel()
		<-done
		if h, ok := cc.Client.(interface{ CloseIdleConnections() }); ok {
			h.CloseIdleConnections()
		}
	})
	return s
}

func (s *sidecar) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, "proxy ready", func() bool { ok, _ := s.p.Ready(); return ok })
}

// outboundAt serves the outbound listener on l (bound on a "ClusterIP:port" on loopback): with no
// iptables, the original destination of a connection is the listener's own address.
func (s *sidecar) outboundAt(l net.Listener) {
	go func() { _ = s.p.ServeOutbound(l) }()
}

func (s *sidecar) inboundAt(t testing.TB, addr string) {
	t.Helper()
	l := listen(t, addr)
	go func() { _ = s.p.ServeInbound(l) }()
}

// serveEach accepts l's connections until it closes, handling each in a goroutine of its own.
func serveEach(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// proxyClient sends requests through the explicit HTTP proxy.
func (s *sidecar) proxyClient() *http.Client {
	u, _ := url.Parse("http://" + s.httpAddr)
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u)}, Timeout: 20 * time.Second}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// backend is an HTTP server that names itself in its replies.
type backend struct {
	name  string
	addr  netip.AddrPort
	hits  atomic.Int64
	srv   *http.Server
	fails atomic.Int64 // fail (503) this many requests first
	delay atomic.Int64 // nanoseconds to wait before answering
}

func startBackend(t testing.TB, name, addr string) *backend {
	t.Helper()
	b := &backend{name: name}
	l := listen(t, addr)
	b.addr = netip.MustParseAddrPort(l.Addr().String())
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		if d := b.delay.Load(); d > 0 {
			select {
			case <-time.After(time.Duration(d)):
			case <-r.Context().Done():
				return
			}
		}
		if b.fails.Add(-1) >= 0 {
			http.Error(w, "failing on purpose", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("X-Backend", b.name)
		if r.Method == http.MethodPost {
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%s got %d bytes", b.name, n)
			return
		}
		fmt.Fprintf(w, "%s %s %s %s", b.name, r.Proto, r.Host, r.URL.Path)
	})}
	b.srv.Protocols = new(http.Protocols)
	b.srv.Protocols.SetHTTP1(true)
	b.srv.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = b.srv.Serve(l) }()
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func get(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", u, err)
	}
	return resp, string(b)
}

// scrapeMetrics parses the proxy's metrics as Prometheus would scrape them.
func scrapeMetrics(t testing.TB, reg *metrics.Set) map[string]*dto.MetricFamily {
	t.Helper()
	var b strings.Builder
	reg.WritePrometheus(&b)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("parse the metrics: %v\n%s", err, b.String())
	}
	return mfs
}

// metricValue parses the proxy's metrics as Prometheus would scrape them and sums the series of
// name whose labels include labels (a histogram counts its observations).
func metricValue(t testing.TB, reg *metrics.Set, name string, labels map[string]string) float64 {
	t.Helper()
	mfs := scrapeMetrics(t, reg)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}
