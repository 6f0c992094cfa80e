package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// closedPort is a loopback address nobody listens on: a connection to it is refused.
func closedPort(t testing.TB) netip.AddrPort {
	l := listen(t, "127.0.0.1:0")
	a := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	return a
}

// connectRetries is upstream_connect_retry_total of cluster.
func connectRetries(t testing.TB, sc *sidecar, cluster string) float64 {
	return metricValue(t, sc.reg, "upstream_connect_retry_total", map[string]string{"cluster": cluster})
}

// TestConnectFailureRetriedOnAnotherEndpoint: with one of two endpoints a closed port and no retry
// policy on the route, every request succeeds — over the lean HTTP/1.1 path, the fast path's
// forwarder, the HTTP/2 forwarder (h2c GETs), the explicit proxy (the issue's case), HTTP/1.1 with a
// body (sized and chunked), gRPC and opaque TCP — each connection refused being tried again on the
// other endpoint and counted.
func TestConnectFailureRetriedOnAnotherEndpoint(t *testing.T) {
	const n = 40
	dead := closedPort(t)
	b := startBackend(t, "live", "127.0.0.1:0")
	httpSvc := newService(t, echoFQDN, "127.0.0.120", dead, b.addr)
	httpSvc.lb = clusterv3.Cluster_ROUND_ROBIN // every other pick is the dead endpoint
	grpcSvc := newService(t, "grpc.shop.svc.cluster.local", "127.0.0.121", dead, startGRPCBackend(t))
	grpcSvc.lb = clusterv3.Cluster_ROUND_ROBIN
	tcpSvc := newService(t, "tcp.shop.svc.cluster.local", "127.0.0.122", dead, startTCPEcho(t, ""))
	tcpSvc.lb = clusterv3.Cluster_ROUND_ROBIN
	tcpSvc.tcp = true
	_, sc := mesh(t, httpSvc, grpcSvc, tcpSvc)
	c := clientFor(httpSvc)
	url := "http://" + httpSvc.authority() + "/x"

	check := func(t *testing.T, cluster string, send func(i int) error) {
		t.Helper()
		before := connectRetries(t, sc, cluster)
		failed := 0
		for i := range n {
			if err := send(i); err != nil {
				failed++
				t.Errorf("request %d: %v", i, err)
			}
		}
		retries := connectRetries(t, sc, cluster) - before
		t.Logf("%d requests, %d failed, %v connect retries", n, failed, retries)
		if retries < n/4 { // round robin puts about half of the first tries on the dead endpoint
			t.Errorf("upstream_connect_retry_total grew by %v over %d requests; want about %d", retries, n, n/2)
		}
	}
	getOK := func(c *http.Client) func(int) error {
		return func(int) error {
			resp, err := c.Get(url)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "live ") {
				return fmt.Errorf("%d %q weft-error=%q", resp.StatusCode, body, resp.Header.Get("Weft-Error"))
			}
			return nil
		}
	}
	t.Run("http1-lean", func(t *testing.T) { check(t, httpSvc.cluster(), getOK(c)) })
	t.Run("http1-forwarder", func(t *testing.T) {
		proxy.SetLeanOff(true)
		defer proxy.SetLeanOff(false)
		check(t, httpSvc.cluster(), getOK(c))
	})
	t.Run("http2-forwarder", func(t *testing.T) { // h2c GETs: the HTTP/2 forwarder (h2forward.go)
		h2 := &http.Transport{Protocols: new(http.Protocols)}
		h2.Protocols.SetUnencryptedHTTP2(true)
		check(t, httpSvc.cluster(), getOK(&http.Client{Transport: resolve(h2, httpSvc), Timeout: 10 * time.Second}))
	})
	t.Run("explicit-proxy", func(t *testing.T) { check(t, httpSvc.cluster(), getOK(sc.proxyClient())) })
	t.Run("http1-body", func(t *testing.T) {
		payload := strings.Repeat("x", 1024)
		check(t, httpSvc.cluster(), func(i int) error {
			var body io.Reader = strings.NewReader(payload)
			if i%2 == 1 {
				body = io.MultiReader(body) // no length: sent chunked
			}
			resp, err := c.Post(url, "text/plain", body)
			if err != nil {
				return err
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(got) != "live got 1024 bytes" {
				return fmt.Errorf("%d %q weft-error=%q", resp.StatusCode, got, resp.Header.Get("Weft-Error"))
			}
			return nil
		})
	})
	t.Run("grpc", func(t *testing.T) {
		client := testpb.NewTestServiceClient(grpcClient(t, grpcSvc.authority(), grpcSvc.lis.Addr().String()))
		req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: bytes.Repeat([]byte("g"), 512)}}
		check(t, grpcSvc.cluster(), func(int) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := client.UnaryCall(ctx, req)
			if err != nil {
				return err
			}
			if !bytes.Equal(resp.GetPayload().GetBody(), req.Payload.Body) {
				return fmt.Errorf("echo of %d bytes came back as %d", len(req.Payload.Body), len(resp.GetPayload().GetBody()))
			}
			return nil
		})
	})
	t.Run("tcp", func(t *testing.T) {
		check(t, tcpSvc.cluster(), func(i int) error {
			conn, err := net.Dial("tcp", tcpSvc.lis.Addr().String())
			if err != nil {
				return err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			msg := fmt.Sprintf("hello %d", i)
			if _, err := io.WriteString(conn, msg); err != nil {
				return err
			}
			_ = conn.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(conn)
			if err != nil || string(got) != msg {
				return fmt.Errorf("echo %q, %v", got, err)
			}
			return nil
		})
	})
}

// TestConnectFailureAllEndpointsDown: when no endpoint accepts, the request fails with the last
// failure named, after trying each endpoint once.
func TestConnectFailureAllEndpointsDown(t *testing.T) {
	dead1, dead2 := closedPort(t), closedPort(t)
	svc := newService(t, "dead.shop.svc.cluster.local", "127.0.0.123", dead1, dead2)
	_, sc := mesh(t, svc)
	for _, lean := range []bool{true, false} {
		proxy.SetLeanOff(!lean)
		before := connectRetries(t, sc, svc.cluster())
		resp, body := get(t, clientFor(svc), "http://"+svc.authority()+"/")
		proxy.SetLeanOff(false)
		msg := resp.Header.Get("Weft-Error")
		if resp.StatusCode != 502 || (msg != "connection to "+dead1.String()+" refused" && msg != "connection to "+dead2.String()+" refused") ||
			strings.TrimSpace(body) != msg {
			t.Errorf("lean=%v: got %d weft-error=%q body=%q; want 502 naming a refused endpoint", lean, resp.StatusCode, msg, body)
		}
		if got := connectRetries(t, sc, svc.cluster()) - before; got != 1 {
			t.Errorf("lean=%v: %v connect retries, want 1 (two endpoints, each tried once)", lean, got)
		}
	}
}

// TestConnectFailureRetriedOverMTLS: an endpoint that accepts TCP but fails the TLS handshake (it
// closes at once) is a connection never established too: the request goes to the other endpoint.
func TestConnectFailureRetriedOverMTLS(t *testing.T) {
	app := startBackend(t, "app", "127.0.0.1:0")
	bad := listen(t, "127.0.0.1:0")
	serveEach(bad, func(c net.Conn) { c.Close() })
	badAddr := netip.MustParseAddrPort(bad.Addr().String())

	ca := testpki.NewCA("mesh")
	podAddr := netip.MustParseAddrPort("127.0.0.124:" + fmt.Sprint(app.addr.Port()))
	cp, _ := startServerSidecar(t, podAddr, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	svc := newService(t, echoFQDN, "127.0.0.125", badAddr, podAddr)
	svc.lb = clusterv3.Cluster_ROUND_ROBIN
	msgs := resources(svc)
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == svc.cluster() {
			fx.WithMTLS(c, echoID)
		}
	}
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecar(t, cp.addr, clientNode, testpki.Identity{Leaf: ca.Issue(clientID), CA: ca})
	client.outboundAt(svc.lis)
	client.waitReady(t)
	c := clientFor(svc)
	const n = 20
	for i := range n {
		resp, body := get(t, c, "http://"+svc.authority()+"/m")
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "app ") {
			t.Fatalf("request %d: %d %q weft-error=%q", i, resp.StatusCode, body, resp.Header.Get("Weft-Error"))
		}
	}
	if got := connectRetries(t, client, svc.cluster()); got < 1 {
		t.Errorf("upstream_connect_retry_total = %v after %d requests over a failing handshake, want > 0", got, n)
	}
}
