package proxy_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/dataplane/proxy"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// withCluster applies f to the cluster named name among msgs.
func withCluster(msgs []proto.Message, name string, f func(*clusterv3.Cluster)) []proto.Message {
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == name {
			f(c)
		}
	}
	return msgs
}

func meshWith(t testing.TB, msgs []proto.Message, svcs ...*service) *sidecar {
	t.Helper()
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, clientNode.ID(), "v1", msgs...)
	sc := startSidecar(t, cp.addr, clientNode, nil)
	for _, s := range svcs {
		sc.outboundAt(s.lis)
	}
	sc.waitReady(t)
	return sc
}

func endpointStatus(sc *sidecar, cluster, addr string) proxy.EndpointStatus {
	for _, c := range sc.p.Clusters() {
		if c.Name == cluster {
			for _, e := range c.Endpoints {
				if e.Address == addr {
					return e
				}
			}
		}
	}
	return proxy.EndpointStatus{}
}

func TestOutlierEjectionAndReturn(t *testing.T) {
	good1 := startBackend(t, "good1", "127.0.0.1:0")
	good2 := startBackend(t, "good2", "127.0.0.1:0")
	bad := startBackend(t, "bad", "127.0.0.1:0")
	bad.fails.Store(1 << 30)
	svc := newService(t, echoFQDN, "127.0.0.40", good1.addr, good2.addr, bad.addr)
	svc.lb = clusterv3.Cluster_ROUND_ROBIN
	msgs := withCluster(resources(svc), svc.cluster(), func(c *clusterv3.Cluster) { fx.WithOutlier(c, 3, 2*time.Second, 50) })
	sc := meshWith(t, msgs, svc)
	c := clientFor(svc)
	waitFor(t, "the failing endpoint ejected", func() bool {
		resp, _ := get(t, c, "http://"+svc.authority()+"/")
		_ = resp
		return endpointStatus(sc, svc.cluster(), bad.addr.String()).Ejected
	})
	if h := bad.hits.Load(); h != 3 {
		t.Errorf("the bad endpoint got %d requests before ejection, want 3 (consecutive_5xx)", h)
	}
	// While ejected, every request succeeds.
	for range 20 {
		if resp, body := get(t, c, "http://"+svc.authority()+"/"); resp.StatusCode != 200 {
			t.Fatalf("while ejected: %d %q", resp.StatusCode, body)
		}
	}
	// It heals; after the ejection time it gets traffic again.
	bad.fails.Store(0)
	before := bad.hits.Load()
	waitFor(t, "the endpoint returns", func() bool {
		get(t, c, "http://"+svc.authority()+"/")
		return bad.hits.Load() > before
	})
	if e := endpointStatus(sc, svc.cluster(), bad.addr.String()); e.Ejected || e.Ejections != 1 {
		t.Fatalf("after return: %+v", e)
	}
}

// A consecutive_5xx of 2^31 or more (a uint32 in xDS) is a threshold never reached, not a negative
// one that ejects a host on its first failure.
func TestOutlierHugeThresholdDoesNotEject(t *testing.T) {
	good := startBackend(t, "good", "127.0.0.1:0")
	bad := startBackend(t, "bad", "127.0.0.1:0")
	bad.fails.Store(1 << 30)
	svc := newService(t, echoFQDN, "127.0.0.42", good.addr, bad.addr)
	svc.lb = clusterv3.Cluster_ROUND_ROBIN
	msgs := withCluster(resources(svc), svc.cluster(), func(c *clusterv3.Cluster) { fx.WithOutlier(c, 1<<31, 2*time.Second, 100) })
	sc := meshWith(t, msgs, svc)
	c := clientFor(svc)
	for i := 0; i < 200 && bad.hits.Load() < 5; i++ {
		get(t, c, "http://"+svc.authority()+"/")
	}
	if e := endpointStatus(sc, svc.cluster(), bad.addr.String()); e.Ejected || e.Ejections != 0 {
		t.Fatalf("after %d failures with consecutive_5xx 2^31: %+v", bad.hits.Load(), e)
	}
}

func TestCircuitBreakerMaxRequests(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	l := listen(t, "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	svc := newService(t, echoFQDN, "127.0.0.41", netip.MustParseAddrPort(l.Addr().String()))
	msgs := withCluster(resources(svc), svc.cluster(), func(c *clusterv3.Cluster) { fx.WithBreakers(c, 0, 1, 0) })
	meshWith(t, msgs, svc)
	c := clientFor(svc)
	first := make(chan int, 1)
	go func() {
		resp, err := c.Get("http://" + svc.authority() + "/")
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-entered
	resp, body := get(t, c, "http://"+svc.authority()+"/")
	want := "circuit open for " + svc.cluster()
	if resp.StatusCode != 503 || resp.Header.Get("Weft-Error") != want || strings.TrimSpace(body) != want {
		t.Fatalf("second request: %d %q %q", resp.StatusCode, resp.Header.Get("Weft-Error"), body)
	}
	close(release)
	if code := <-first; code != 200 {
		t.Fatalf("first request: %d", code)
	}
	// With the request done the circuit closes again.
	waitFor(t, "circuit closed", func() bool {
		go func() { <-entered }()
		resp, _ := get(t, c, "http://"+svc.authority()+"/")
		return resp.StatusCode == 200
	})
}

func TestCircuitBreakerMaxConnections(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	l := listen(t, "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	svc := newService(t, echoFQDN, "127.0.0.39", netip.MustParseAddrPort(l.Addr().String()))
	msgs := withCluster(resources(svc), svc.cluster(), func(c *clusterv3.Cluster) { fx.WithBreakers(c, 1, 0, 0) })
	meshWith(t, msgs, svc)
	c := clientFor(svc)
	first := make(chan int, 1)
	go func() {
		resp, err := c.Get("http://" + svc.authority() + "/")
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-entered
	// The one upstream HTTP/1.1 connection is busy: a second request needs a second connection.
	resp, _ := get(t, c, "http://"+svc.authority()+"/")
	if want := "circuit open for " + svc.cluster(); resp.StatusCode != 503 || resp.Header.Get("Weft-Error") != want {
		t.Fatalf("second request: %d %q", resp.StatusCode, resp.Header.Get("Weft-Error"))
	}
	close(release)
	if code := <-first; code != 200 {
		t.Fatalf("first request: %d", code)
	}
	// The connection is free again (once the pool has it back): it is reused.
	waitFor(t, "the connection reused", func() bool {
		resp, body := get(t, c, "http://"+svc.authority()+"/")
		return resp.StatusCode == 200 && body == "done"
	})
}

func TestLocalityWeights(t *testing.T) {
	a := startBackend(t, "zone-a", "127.0.0.1:0")
	b := startBackend(t, "zone-b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.42")
	msgs := resources(svc)
	for i, m := range msgs {
		if _, ok := m.(interface{ GetClusterName() string }); ok {
			msgs[i] = fx.CLALocalities(svc.cluster(), fx.Locality{Zone: "a", Weight: 9, Addrs: []netip.AddrPort{a.addr}}, fx.Locality{Zone: "b", Weight: 1, Addrs: []netip.AddrPort{b.addr}})
		}
	}
	meshWith(t, msgs, svc)
	c := clientFor(svc)
	const n = 200
	for range n {
		get(t, c, "http://"+svc.authority()+"/")
	}
	// 9:1 expected (180:20); allow generous statistical slack.
	if ha, hb := a.hits.Load(), b.hits.Load(); ha < 150 || hb < 5 || ha+hb != n {
		t.Fatalf("locality weights 9:1 gave %d:%d", ha, hb)
	}
}

func TestRingHashIsSticky(t *testing.T) {
	var addrs []netip.AddrPort
	for i := range 4 {
		addrs = append(addrs, startBackend(t, "b"+strconv.Itoa(i), "127.0.0.1:0").addr)
	}
	svc := newService(t, echoFQDN, "127.0.0.43", addrs...)
	svc.lb = clusterv3.Cluster_RING_HASH
	meshWith(t, resources(svc), svc)
	// Each client address maps to one endpoint.
	for _, src := range []string{"127.0.0.50", "127.0.0.51", "127.0.0.52"} {
		tr := resolve(&http.Transport{}, svc)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, svc.lis.Addr().String())
		}
		tr.DisableKeepAlives = true
		c := &http.Client{Transport: tr}
		seen := map[string]bool{}
		for range 10 {
			resp, body := get(t, c, "http://"+svc.authority()+"/")
			if resp.StatusCode != 200 {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			seen[resp.Header.Get("X-Backend")] = true
		}
		if len(seen) != 1 {
			t.Fatalf("client %s spread over %v with ring hash", src, seen)
		}
	}
}

func TestProtocolDetection(t *testing.T) {
	web := startBackend(t, "web", "127.0.0.1:0")
	echo := startTCPEcho(t, "")
	banner := startTCPEcho(t, "220 ready\r\n")
	svc := newService(t, echoFQDN, "127.0.0.44", web.addr)
	mysql := newService(t, "db.shop.svc.cluster.local", "127.0.0.45", banner)
	httpCl, tcpCl, bannerCl := svc.cluster(), "outbound|"+strconv.Itoa(svc.port)+"||tcp", mysql.cluster()
	port := uint32(svc.port)
	msgs := []proto.Message{
		fx.EDSCluster(httpCl, clusterv3.Cluster_ROUND_ROBIN), fx.CLA(httpCl, web.addr),
		fx.EDSCluster(tcpCl, clusterv3.Cluster_ROUND_ROBIN), fx.CLA(tcpCl, echo),
		fx.EDSCluster(bannerCl, clusterv3.Cluster_ROUND_ROBIN), fx.CLA(bannerCl, banner),
		fx.RouteConfig(strconv.Itoa(svc.port), fx.VirtualHost{Name: "web", Domains: []string{"*"}, Routes: []fx.Route{{Cluster: httpCl}}}),
		// An undeclared port: HTTP if the first bytes say so, else opaque TCP.
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), nil,
			fx.Chain{Name: "http", IP: svc.ip, Port: port, Route: strconv.Itoa(svc.port), AppProtocols: []string{"http/1.1", "h2c"}},
			fx.Chain{Name: "tcp", IP: svc.ip, Port: port, Cluster: tcpCl},
			fx.Chain{Name: "db", IP: mysql.ip, Port: uint32(mysql.port), Cluster: bannerCl, AppProtocols: nil},
			fx.Chain{Name: "db-http", IP: mysql.ip, Port: uint32(mysql.port), Cluster: bannerCl, AppProtocols: []string{"http/1.1"}},
		),
	}
	sc := meshWith(t, msgs, svc, mysql)

	resp, body := get(t, clientFor(svc), "http://"+svc.authority()+"/detected")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "web HTTP/1.1") {
		t.Fatalf("HTTP on a detected port: %d %q", resp.StatusCode, body)
	}
	if v := metricValue(t, sc.reg, "request_total", map[string]string{"target_cluster": httpCl}); v != 1 {
		t.Errorf("request_total for the detected HTTP = %v", v)
	}
	// Non-HTTP bytes go to the TCP chain.
	c, err := net.Dial("tcp", svc.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("\x00\x01binary protocol\xff")
	c.Write(msg)
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	c.Close()
	if !bytes.Equal(got, msg) {
		t.Fatalf("opaque bytes on a detected port: %q", got)
	}
	// A server-speaks-first protocol on a detected port still works: detection gives up after its
	// bounded wait and the connection is forwarded as TCP.
	c, err = net.Dial("tcp", mysql.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 32)
	n, err := io.ReadAtLeast(c, buf, len("220 ready\r\n"))
	if err != nil || string(buf[:n]) != "220 ready\r\n" {
		t.Fatalf("banner after detection timeout: %q %v", buf[:n], err)
	}
}

func TestDrainFinishesInFlight(t *testing.T) {
	slow := startBackend(t, "slow", "127.0.0.1:0")
	slow.delay.Store(int64(300 * time.Millisecond))
	svc := newService(t, echoFQDN, "127.0.0.46", slow.addr)
	_, sc := mesh(t, svc)
	c := clientFor(svc)
	res := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://" + svc.authority() + "/")
		if err != nil {
			res <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- resp.Status + " " + string(b)
	}()
	waitFor(t, "request in flight", func() bool { return slow.hits.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sc.p.Shutdown(ctx); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if r := <-res; !strings.HasPrefix(r, "200 OK slow") {
		t.Fatalf("in-flight request during drain: %s", r)
	}
	if ok, why := sc.p.Ready(); ok || why != "draining" {
		t.Fatalf("ready while draining: %v %s", ok, why)
	}
	if _, err := net.DialTimeout("tcp", svc.lis.Addr().String(), time.Second); err == nil {
		t.Fatal("still accepting after drain")
	}
}
