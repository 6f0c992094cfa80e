package proxy_test

import (
	"context"
	"crypto/tls"
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
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/dataplane"
	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/testpki"
	"github.com/weftmesh/weft/dataplane/xdsclient"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

const (
	clientID = "spiffe://cluster.local/ns/shop/sa/client"
	echoID   = "spiffe://cluster.local/ns/shop/sa/echo"
)

var serverNode = xdsclient.Node{PodName: "echo-1", Namespace: "shop", PodIP: "127.0.0.30", ServiceAccount: "echo"}

// inboundResources is the server pod's config as weft-control sends it: per app port an mTLS chain
// (transport "tls") and a plaintext one ("raw_buffer") for clients outside the mesh, both to the app
// on localhost.
func inboundResources(appPort int, tcp bool) []proto.Message {
	return inboundPorts(map[int]bool{appPort: tcp})
}

// startServerSidecar starts a control plane and the server pod's sidecar (serverNode, identity id)
// with inboundResources for the app port pod.Port(), its inbound listener on pod, and waits until it
// is ready.
func startServerSidecar(t *testing.T, pod netip.AddrPort, id dataplane.Identity) (*testCP, *sidecar) {
	t.Helper()
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", inboundResources(int(pod.Port()), false)...)
	server := startSidecar(t, cp.addr, serverNode, id)
	server.inboundAt(t, pod.String())
	server.waitReady(t)
	return cp, server
}

// inboundPorts is inboundResources for several app ports (port → opaque TCP).
func inboundPorts(ports map[int]bool) []proto.Message {
	var msgs []proto.Message
	var chains []fx.Chain
	for appPort, tcp := range ports {
		p := strconv.Itoa(appPort)
		cl := "inbound|" + p + "||"
		secure := fx.Chain{Name: cl + "mtls", Port: uint32(appPort), MTLS: true, Transport: "tls"}
		plain := fx.Chain{Name: cl + "plaintext", Port: uint32(appPort), Transport: "raw_buffer"}
		msgs = append(msgs, fx.StaticCluster(cl, netip.MustParseAddrPort("127.0.0.1:"+p)))
		if tcp {
			secure.Cluster, plain.Cluster = cl, cl
		} else {
			secure.Route, plain.Route = "inbound|"+p, "inbound|"+p
			msgs = append(msgs, fx.RouteConfig("inbound|"+p, fx.VirtualHost{Name: "inbound", Domains: []string{"*"}, Routes: []fx.Route{{Cluster: cl}}}))
		}
		chains = append(chains, secure, plain)
	}
	return append(msgs, fx.Listener("inbound", netip.MustParseAddrPort("0.0.0.0:15006"), nil, chains...))
}

func TestMTLSBetweenSidecars(t *testing.T) {
	ca := testpki.NewCA("mesh")
	clientIdent := testpki.Identity{Leaf: ca.Issue(clientID), CA: ca}
	echoIdent := testpki.Identity{Leaf: ca.Issue(echoID), CA: ca}

	app := startBackend(t, "app", "127.0.0.1:0")
	appPort := int(app.addr.Port())
	podAddr := netip.MustParseAddrPort("127.0.0.30:" + strconv.Itoa(appPort))

	cp, server := startServerSidecar(t, podAddr, echoIdent)

	good := newService(t, echoFQDN, "127.0.0.31", podAddr)
	wrongSAN := newService(t, "other.shop.svc.cluster.local", "127.0.0.32", podAddr)
	msgs := resources(good, wrongSAN)
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok {
			switch c.GetName() {
			case good.cluster():
				fx.WithMTLS(c, echoID)
			case wrongSAN.cluster():
				fx.WithMTLS(c, "spiffe://cluster.local/ns/shop/sa/someone-else")
			}
		}
	}
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecar(t, cp.addr, clientNode, clientIdent)
	client.outboundAt(good.lis)
	client.outboundAt(wrongSAN.lis)
	client.waitReady(t)

	// HTTP/1.1 from the app, mTLS (HTTP/2) between the sidecars, HTTP/1.1 to the server app.
	resp, body := get(t, clientFor(good), "http://"+good.authority()+"/secure")
	if resp.StatusCode != 200 || body != "app HTTP/1.1 "+good.authority()+" /secure" {
		t.Fatalf("through mTLS: %d %q", resp.StatusCode, body)
	}
	out := map[string]string{"direction": "outbound", "tls": "true", "client_id": clientID, "server_id": echoID, "status_code": "200"}
	if v := metricValue(t, client.reg, "response_total", out); v != 1 {
		t.Errorf("client sidecar response_total%v = %v, want 1", out, v)
	}
	in := map[string]string{"direction": "inbound", "tls": "true", "client_id": clientID, "server_id": echoID, "status_code": "200"}
	if v := metricValue(t, server.reg, "response_total", in); v != 1 {
		t.Errorf("server sidecar response_total%v = %v, want 1", in, v)
	}

	// A server whose identity does not match the cluster's SAN matchers is refused.
	resp, _ = get(t, clientFor(wrongSAN), "http://"+wrongSAN.authority()+"/")
	if resp.StatusCode != 502 || !strings.Contains(resp.Header.Get("Weft-Error"), "matches none of cluster") {
		t.Fatalf("wrong SAN: %d %q", resp.StatusCode, resp.Header.Get("Weft-Error"))
	}

	// A plaintext client outside the mesh reaches the app through the raw_buffer chain.
	resp, body = get(t, &http.Client{Timeout: 10 * time.Second}, "http://"+podAddr.String()+"/plain")
	if resp.StatusCode != 200 || body != "app HTTP/1.1 "+podAddr.String()+" /plain" {
		t.Fatalf("plaintext inbound: %d %q", resp.StatusCode, body)
	}
	plainIn := map[string]string{"direction": "inbound", "tls": "false", "client_id": "", "status_code": "200"}
	if v := metricValue(t, server.reg, "response_total", plainIn); v != 1 {
		t.Errorf("server sidecar response_total%v = %v, want 1", plainIn, v)
	}

	// A TLS client without a certificate cannot reach the app through the inbound listener.
	c, err := tls.Dial("tcp", podAddr.String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		c.Close()
	}
	if err == nil {
		t.Fatal("inbound accepted a client without a certificate")
	}
	// Nor can one from another trust domain.
	stranger := testpki.NewCA("stranger")
	sc := stranger.Issue("spiffe://evil.example/ns/x/sa/y")
	c, err = tls.Dial("tcp", podAddr.String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{sc.TLS}})
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil {
		t.Fatal("inbound accepted a client of another CA")
	}
}

// TestControlPlaneRestartUnderTraffic kills the control plane during steady traffic, restarts it, and
// checks that not one request failed and that the proxy resynced.
func TestControlPlaneRestartUnderTraffic(t *testing.T) {
	b1 := startBackend(t, "b1", "127.0.0.1:0")
	b2 := startBackend(t, "b2", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.33", b1.addr)
	cp, sc := mesh(t, svc)
	c := clientFor(svc)
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			resp, err := c.Get("http://" + svc.authority() + "/")
			if err != nil {
				failed.Add(1)
				lastErr.Store(err.Error())
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				failed.Add(1)
				lastErr.Store(resp.Status + " " + resp.Header.Get("Weft-Error"))
				continue
			}
			ok.Add(1)
		}
	}()
	waitFor(t, "traffic", func() bool { return ok.Load() > 20 })
	addr := cp.addr
	cp.stop()
	waitFor(t, "xDS disconnect", func() bool { return !sc.xds.Status().Connected })
	before := ok.Load()
	waitFor(t, "traffic while the control plane is down", func() bool { return ok.Load() > before+50 })

	// The restarted control plane (fresh state) moves the service to b2.
	svc.backends = []netip.AddrPort{b2.addr}
	cp2 := startCP(t, addr, nil, false)
	cp2.set(t, clientNode.ID(), "r1", resources(svc)...)
	waitFor(t, "resync to b2", func() bool { return b2.hits.Load() > 20 })
	cancel()
	<-done
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed; last: %v", failed.Load(), failed.Load()+ok.Load(), lastErr.Load())
	}
}

// TestNACKedResourceWhileOldConfigServes pushes a bad cluster: it is NACKed with a precise reason and
// the previous config keeps serving.
func TestNACKedResourceWhileOldConfigServes(t *testing.T) {
	b1 := startBackend(t, "b1", "127.0.0.1:0")
	b2 := startBackend(t, "b2", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.34", b1.addr)
	cp, sc := mesh(t, svc)
	bad := resources(svc)
	for _, m := range bad {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == svc.cluster() {
			c.LbPolicy = clusterv3.Cluster_MAGLEV
		}
	}
	cp.set(t, clientNode.ID(), "v2", bad...)
	waitFor(t, "NACK", func() bool { return len(cp.nackList()) > 0 })
	if n := cp.nackList()[0]; !strings.Contains(n, "lb_policy MAGLEV is not supported") {
		t.Fatalf("NACK detail %q", n)
	}
	for range 10 {
		resp, body := get(t, clientFor(svc), "http://"+svc.authority()+"/")
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "b1 ") || b2.hits.Load() != 0 {
			t.Fatalf("after NACK: %d %q", resp.StatusCode, body)
		}
	}
	if c := sc.p.Snapshot().Clusters[svc.cluster()]; c == nil || c.LB != config.LBRoundRobin {
		t.Fatalf("cluster after NACK: %+v", c)
	}
	if ok, why := sc.p.Ready(); !ok {
		t.Fatalf("not ready after a NACK: %s", why)
	}
}

// TestGRPCAndTCPOverMTLS: gRPC (HTTP/2 end to end, trailers, streaming) and opaque TCP between two
// sidecars over mTLS.
func TestGRPCAndTCPOverMTLS(t *testing.T) {
	ca := testpki.NewCA("mesh")
	grpcApp := startGRPCBackend(t)
	tcpApp := startTCPEcho(t, "")
	pod := "127.0.0.35"
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", inboundPorts(map[int]bool{int(grpcApp.Port()): false, int(tcpApp.Port()): true})...)
	server := startSidecar(t, cp.addr, serverNode, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	server.inboundAt(t, pod+":"+strconv.Itoa(int(grpcApp.Port())))
	server.inboundAt(t, pod+":"+strconv.Itoa(int(tcpApp.Port())))
	server.waitReady(t)

	g := newService(t, "grpc.shop.svc.cluster.local", "127.0.0.36", netip.MustParseAddrPort(pod+":"+strconv.Itoa(int(grpcApp.Port()))))
	tc := newService(t, "tcp.shop.svc.cluster.local", "127.0.0.37", netip.MustParseAddrPort(pod+":"+strconv.Itoa(int(tcpApp.Port()))))
	tc.tcp = true
	msgs := resources(g, tc)
	withCluster(msgs, g.cluster(), func(c *clusterv3.Cluster) { fx.WithMTLS(c, echoID) })
	withCluster(msgs, tc.cluster(), func(c *clusterv3.Cluster) { fx.WithMTLS(c, echoID) })
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecar(t, cp.addr, clientNode, testpki.Identity{Leaf: ca.Issue(clientID), CA: ca})
	client.outboundAt(g.lis)
	client.outboundAt(tc.lis)
	client.waitReady(t)

	cc := grpcClient(t, g.authority(), g.lis.Addr().String())
	gc := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var trailer metadata.MD
	_, err := gc.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("fail")}}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound || len(trailer.Get("why")) == 0 {
		t.Fatalf("gRPC status over mTLS: %v %v", err, trailer)
	}
	stream, err := gc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		body := []byte(strings.Repeat("x", i+1))
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			t.Fatal(err)
		}
		if got, err := stream.Recv(); err != nil || string(got.GetPayload().GetBody()) != string(body) {
			t.Fatalf("stream over mTLS: %v", err)
		}
	}
	_ = stream.CloseSend()

	conn, err := net.Dial("tcp", tc.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte(strings.Repeat("opaque over mTLS ", 10000))
	go func() { _, _ = conn.Write(payload); _ = conn.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != string(payload) {
		t.Fatalf("tcp over mTLS: %d bytes, %v", len(got), err)
	}
	labels := map[string]string{"direction": "outbound", "target_cluster": tc.cluster(), "tls": "true", "client_id": clientID, "server_id": echoID}
	waitFor(t, "tcp metrics", func() bool { return metricValue(t, client.reg, "tcp_close_total", labels) == 1 })
	in := map[string]string{"direction": "inbound", "tls": "true", "client_id": clientID, "server_id": echoID}
	waitFor(t, "inbound tcp metrics", func() bool { return metricValue(t, server.reg, "tcp_close_total", in) == 1 })

	// Each new TCP connection makes a new mTLS connection between the sidecars; after the first, the TLS
	// session is resumed (cheaper: no certificate exchange), and the server still sees the client's identity.
	for i := range 3 {
		conn, err := net.Dial("tcp", tc.lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("again " + strconv.Itoa(i))
		go func() { _, _ = conn.Write(msg); _ = conn.(*net.TCPConn).CloseWrite() }()
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || string(got) != string(msg) {
			t.Fatalf("tcp over mTLS, connection %d: %q, %v", i, got, err)
		}
	}
	waitFor(t, "inbound tcp metrics after 4 connections", func() bool { return metricValue(t, server.reg, "tcp_close_total", in) == 4 })
	if n := metricValue(t, client.reg, "tls_handshake_total", map[string]string{"direction": "outbound", "resumed": "true"}); n < 3 {
		t.Errorf("client sidecar resumed %v TLS sessions over 3 new TCP connections, want 3", n)
	}
	if n := metricValue(t, server.reg, "tls_handshake_total", map[string]string{"direction": "inbound", "resumed": "true"}); n < 3 {
		t.Errorf("server sidecar resumed %v TLS sessions, want 3", n)
	}
}
