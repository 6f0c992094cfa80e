package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
)

// stateOf builds a State from YAML.
func stateOf(t *testing.T, y string) *discovery.State {
	t.Helper()
	objs, err := discovery.ParseObjects([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return discovery.Build(objs)
}

// serviceYAML is a Service on port svcPort in default with one EndpointSlice of the given addresses,
// all on port epPort.
func serviceYAML(name string, svcPort, epPort int, addrs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: default}\nspec: {clusterIP: 10.96.0.%d, ports: [{name: grpc, port: %d, appProtocol: grpc}]}\n---\n", name, len(name), svcPort)
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: %s-1, namespace: default, labels: {kubernetes.io/service-name: %s}}\naddressType: IPv4\nports: [{name: grpc, port: %d}]\nendpoints:\n", name, name, epPort)
	for _, a := range addrs {
		fmt.Fprintf(&b, "- {addresses: [%s], conditions: {ready: true}}\n", a)
	}
	if len(addrs) == 0 {
		b.WriteString("  []\n")
	}
	return b.String() + "---\n"
}

type harness struct {
	srv  *Server
	addr string
	conn *grpc.ClientConn
}

func start(t *testing.T, st *discovery.State) *harness {
	t.Helper()
	srv := New(Options{})
	if st != nil {
		srv.Update(st)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(GRPCServerOptions()...) // as weft-control; conformance/xds runs without them
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{srv: srv, addr: lis.Addr().String(), conn: conn}
}

func node(id, kind string) *core.Node {
	md, _ := structpb.NewStruct(map[string]any{"CLIENT_KIND": kind})
	return &core.Node{Id: id, Metadata: md}
}

// adsClient is a hand-driven SotW ADS stream.
type adsClient struct {
	t      *testing.T
	stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *core.Node
	in     chan *discoverypb.DiscoveryResponse
	err    chan error
}

func (h *harness) ads(t *testing.T, n *core.Node) *adsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := discoverypb.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, stream: s, node: n, in: make(chan *discoverypb.DiscoveryResponse, 100), err: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				c.err <- err
				return
			}
			c.in <- r
		}
	}()
	return c
}

func (c *adsClient) send(typeURL string, names []string, version, nonce string, nack string) {
	c.t.Helper()
	req := &discoverypb.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
	if nack != "" {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *adsClient) recv() *discoverypb.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.in:
		return r
	case err := <-c.err:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(20 * time.Second):
		c.t.Fatal("timed out waiting for a response")
	}
	return nil
}

// ack acknowledges r, keeping the subscription names.
func (c *adsClient) ack(r *discoverypb.DiscoveryResponse, names []string) {
	c.send(r.GetTypeUrl(), names, r.GetVersionInfo(), r.GetNonce(), "")
}

func resourceNames(t *testing.T, r *discoverypb.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		out = append(out, resourceName(a))
	}
	slices.Sort(out)
	return out
}

func clusterName(svc string, port int) string {
	return xds.OutboundClusterName(int32(port), svc+".default.svc.cluster.local")
}

func TestUnavailableBeforeSync(t *testing.T) {
	h := start(t, nil)
	c := h.ads(t, node("a.default", "envoy"))
	_ = c.stream.Send(&discoverypb.DiscoveryRequest{Node: c.node, TypeUrl: xds.ClusterType}) // may fail: the server ends the stream at once
	select {
	case err := <-c.err:
		if grpcstatus.Code(err) != codes.Unavailable {
			t.Fatalf("stream error %v, want Unavailable", err)
		}
	case r := <-c.in:
		t.Fatalf("got a response before sync: %v", r)
	case <-time.After(20 * time.Second):
		t.Fatal("timed out")
	}
	rec := get(t, h.srv, "/ready")
	if rec.code != http.StatusServiceUnavailable {
		t.Errorf("/ready before sync = %d, want 503", rec.code)
	}
	h.srv.Update(stateOf(t, serviceYAML("echo", 8080, 8080, "10.0.0.1")))
	if rec := get(t, h.srv, "/ready"); rec.code != http.StatusOK {
		t.Errorf("/ready after sync = %d, want 200", rec.code)
	}
	c = h.ads(t, node("a.default", "envoy"))
	c.send(xds.ClusterType, nil, "", "", "")
	if r := c.recv(); !slices.Contains(resourceNames(t, r), clusterName("echo", 8080)) {
		t.Errorf("clusters after sync: %v", resourceNames(t, r))
	}
}

// TestAckNackAndOrdering walks one ADS stream through the protocol: ACK gets no resend, NACK gets no
// resend and shows as ERROR in CSDS, a changed config is sent again, CDS comes before EDS, and SotW
// CDS always carries the full state. "No resend" is shown without waiting: after the ACK or NACK an
// unrelated change is made, and the next message must be about that change.
func TestAckNackAndOrdering(t *testing.T) {
	base := serviceYAML("a", 80, 8080, "10.0.0.1") + serviceYAML("b", 80, 8080, "10.0.1.1")
	h := start(t, stateOf(t, base))
	c := h.ads(t, node("p.default", "envoy"))
	ca, cb := clusterName("a", 80), clusterName("b", 80)

	c.send(xds.ClusterType, nil, "", "", "")
	cds := c.recv()
	if got := resourceNames(t, cds); !slices.Contains(got, ca) || !slices.Contains(got, cb) {
		t.Fatalf("CDS = %v", got)
	}
	c.ack(cds, nil)
	c.send(xds.EndpointType, []string{ca, cb}, "", "", "")
	eds := c.recv()
	if got := resourceNames(t, eds); !slices.Equal(got, []string{ca, cb}) {
		t.Fatalf("EDS = %v", got)
	}
	c.ack(eds, []string{ca, cb})

	// An endpoint change: only EDS, only the changed CLA, and no CDS resend after the ACK.
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1", "10.0.0.2")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	r := c.recv()
	if r.GetTypeUrl() != xds.EndpointType || !slices.Equal(resourceNames(t, r), []string{ca}) {
		t.Fatalf("after an endpoint change got %s %v, want EDS [%s]", r.GetTypeUrl(), resourceNames(t, r), ca)
	}
	c.ack(r, []string{ca, cb})

	// A new Service: CDS (full state: all three clusters) before EDS.
	withC := serviceYAML("a", 80, 8080, "10.0.0.1", "10.0.0.2") + serviceYAML("b", 80, 8080, "10.0.1.2") + serviceYAML("c", 80, 8080, "10.0.2.1")
	h.srv.Update(stateOf(t, withC))
	r = c.recv()
	if r.GetTypeUrl() != xds.ClusterType {
		t.Fatalf("first push after adding a Service is %s, want CDS first", r.GetTypeUrl())
	}
	if got := resourceNames(t, r); !slices.Contains(got, ca) || !slices.Contains(got, cb) || !slices.Contains(got, clusterName("c", 80)) {
		t.Fatalf("SotW CDS is not full state: %v", got)
	}
	// NACK it.
	c.send(xds.ClusterType, nil, cds.GetVersionInfo(), r.GetNonce(), "cluster c: no thanks")
	r2 := c.recv()
	if r2.GetTypeUrl() != xds.EndpointType || !slices.Equal(resourceNames(t, r2), []string{cb}) {
		t.Fatalf("after NACK got %s %v, want the pending EDS for b", r2.GetTypeUrl(), resourceNames(t, r2))
	}
	c.ack(r2, []string{ca, cb})

	// CSDS shows the NACK (the server handles requests asynchronously: poll).
	var errored, synced []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		errored, synced = csdsStatus(t, h, "p.default")
		if slices.Contains(errored, clusterName("c", 80)) && slices.Contains(synced, ca) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CSDS: ERROR %v, SYNCED %v; want c's cluster in ERROR and a's endpoints SYNCED", errored, synced)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := metricValue(t, h.srv, `weft_xds_nacks_total{type="cds"}`); got != "1" {
		t.Errorf("NACK counter = %q, want 1", got)
	}

	// Another endpoint change: the NACKed CDS is not resent, only EDS comes.
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.3")+serviceYAML("b", 80, 8080, "10.0.1.2")+serviceYAML("c", 80, 8080, "10.0.2.1")))
	r = c.recv()
	if r.GetTypeUrl() != xds.EndpointType {
		t.Fatalf("after NACK and an endpoint change got %s, want EDS (the rejected CDS must not be resent)", r.GetTypeUrl())
	}
	c.ack(r, []string{ca, cb})
	// A cluster change: CDS comes again, with a new version.
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.3")+serviceYAML("b", 80, 8080, "10.0.1.2")))
	r = c.recv()
	if r.GetTypeUrl() != xds.ClusterType || r.GetVersionInfo() == cds.GetVersionInfo() || slices.Contains(resourceNames(t, r), clusterName("c", 80)) {
		t.Fatalf("after a cluster change got %s %s %v", r.GetTypeUrl(), r.GetVersionInfo(), resourceNames(t, r))
	}
}

// TestOnlySubscribersGetAnEndpointChange: two SotW streams subscribed to different CLAs.
func TestOnlySubscribersGetAnEndpointChange(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	ca, cb := clusterName("a", 80), clusterName("b", 80)
	sa, sb := h.ads(t, node("sa.default", "envoy")), h.ads(t, node("sb.default", "envoy"))
	sa.send(xds.EndpointType, []string{ca}, "", "", "")
	sb.send(xds.EndpointType, []string{cb}, "", "", "")
	sa.ack(sa.recv(), []string{ca})
	sb.ack(sb.recv(), []string{cb})

	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.2")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	if r := sa.recv(); !slices.Equal(resourceNames(t, r), []string{ca}) {
		t.Fatalf("subscriber of a got %v", resourceNames(t, r))
	}
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.2")+serviceYAML("b", 80, 8080, "10.0.1.2")))
	r := sb.recv()
	eps := endpointsOf(t, r)
	if !slices.Equal(eps, []string{"10.0.1.2:8080"}) {
		t.Fatalf("subscriber of b: first message after a's change has %v; want only b's new endpoint (a's change must not reach it)", eps)
	}
}

func endpointsOf(t *testing.T, r *discoverypb.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		var cla endpoint.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		for _, loc := range cla.GetEndpoints() {
			for _, e := range loc.GetLbEndpoints() {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
			}
		}
	}
	return out
}

// TestMissingResourceArrives: a subscription to a CLA that does not exist yet is answered when it does.
func TestMissingResourceArrives(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	c := h.ads(t, node("p.default", "envoy"))
	cn := clusterName("new", 80)
	c.send(xds.EndpointType, []string{cn}, "", "", "")
	first := c.recv() // the initial answer has nothing for it
	if len(first.GetResources()) != 0 {
		t.Fatalf("got %v for a missing resource", resourceNames(t, first))
	}
	c.ack(first, []string{cn})
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("new", 80, 8080, "10.0.9.9")))
	if got := endpointsOf(t, c.recv()); !slices.Equal(got, []string{"10.0.9.9:8080"}) {
		t.Fatalf("endpoints = %v", got)
	}
}

// TestStaleNonceIgnored: a request carrying an old nonce changes nothing.
func TestStaleNonceIgnored(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	ca, cb := clusterName("a", 80), clusterName("b", 80)
	c := h.ads(t, node("p.default", "envoy"))
	c.send(xds.EndpointType, []string{ca}, "", "", "")
	r1 := c.recv()
	c.ack(r1, []string{ca})
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.2")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	r2 := c.recv()
	// A request with r1's (stale) nonce asking for b: ignored, so b is not sent.
	c.send(xds.EndpointType, []string{cb}, r1.GetVersionInfo(), r1.GetNonce(), "")
	c.ack(r2, []string{ca})
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.3")+serviceYAML("b", 80, 8080, "10.0.1.2")))
	if got := resourceNames(t, c.recv()); !slices.Equal(got, []string{ca}) {
		t.Fatalf("after a stale-nonce request for b, got %v; want only a", got)
	}
}

// deltaClient is a hand-driven delta ADS stream.
type deltaClient struct {
	t      *testing.T
	stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node   *core.Node
	in     chan *discoverypb.DeltaDiscoveryResponse
	err    chan error
}

func (h *harness) delta(t *testing.T, n *core.Node) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := discoverypb.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: s, node: n, in: make(chan *discoverypb.DeltaDiscoveryResponse, 100), err: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				c.err <- err
				return
			}
			c.in <- r
		}
	}()
	return c
}

func (c *deltaClient) send(typeURL string, sub, unsub []string, nonce string) {
	c.t.Helper()
	if err := c.stream.Send(&discoverypb.DeltaDiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub, ResponseNonce: nonce}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *deltaClient) recv() *discoverypb.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.in:
		return r
	case err := <-c.err:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(20 * time.Second):
		c.t.Fatal("timed out waiting for a delta response")
	}
	return nil
}

func deltaNames(r *discoverypb.DeltaDiscoveryResponse) []string {
	var out []string
	for _, x := range r.GetResources() {
		out = append(out, x.GetName())
	}
	slices.Sort(out)
	return out
}

func TestDeltaSubscriptions(t *testing.T) {
	two := func(a, b string) *discovery.State {
		return stateOf(t, serviceYAML("a", 80, 8080, a)+serviceYAML("b", 80, 8080, b))
	}
	h := start(t, two("10.0.0.1", "10.0.1.1"))
	ca, cb := clusterName("a", 80), clusterName("b", 80)
	c := h.delta(t, node("d.default", "envoy"))

	c.send(xds.EndpointType, []string{ca}, nil, "")
	r := c.recv()
	if !slices.Equal(deltaNames(r), []string{ca}) {
		t.Fatalf("subscribe a: got %v", deltaNames(r))
	}
	c.send(xds.EndpointType, []string{cb}, nil, r.GetNonce())
	r = c.recv()
	if !slices.Equal(deltaNames(r), []string{cb}) {
		t.Fatalf("subscribe b: got %v, want only b", deltaNames(r))
	}
	c.send(xds.EndpointType, nil, []string{ca}, r.GetNonce())
	// a changes after the unsubscribe, then b: the next message is about b alone.
	h.srv.Update(two("10.0.0.2", "10.0.1.1"))
	h.srv.Update(two("10.0.0.2", "10.0.1.2"))
	r = c.recv()
	if !slices.Equal(deltaNames(r), []string{cb}) {
		t.Fatalf("after unsubscribing a: got %v, want only b", deltaNames(r))
	}
	// Resubscribing resends a.
	c.send(xds.EndpointType, []string{ca}, nil, r.GetNonce())
	r = c.recv()
	if !slices.Equal(deltaNames(r), []string{ca}) {
		t.Fatalf("resubscribe a: got %v", deltaNames(r))
	}
	// Removing a Service tells the subscriber.
	c.send(xds.EndpointType, nil, nil, r.GetNonce())
	h.srv.Update(stateOf(t, serviceYAML("b", 80, 8080, "10.0.1.2")))
	r = c.recv()
	if !slices.Equal(r.GetRemovedResources(), []string{ca}) {
		t.Fatalf("after deleting a: removed %v, resources %v", r.GetRemovedResources(), deltaNames(r))
	}
}

func TestProxylessGetsClustersWithoutSDS(t *testing.T) {
	y := serviceYAML("a", 80, 8080, "10.0.0.1") + `apiVersion: v1
kind: Pod
metadata: {name: a-0, namespace: default}
spec: {containers: [{name: app}, {name: weft-proxy}]}
status: {podIP: 10.0.0.1}
`
	y = strings.Replace(y, "{addresses: [10.0.0.1], conditions: {ready: true}}", "{addresses: [10.0.0.1], conditions: {ready: true}, targetRef: {kind: Pod, name: a-0}}", 1)
	h := start(t, stateOf(t, y))
	for _, kind := range []string{"grpc", "envoy"} {
		c := h.ads(t, node("x.default", kind))
		c.send(xds.ClusterType, []string{clusterName("a", 80)}, "", "", "")
		r := c.recv()
		if len(r.GetResources()) != 1 {
			t.Fatalf("%s: %d clusters", kind, len(r.GetResources()))
		}
		var cl cluster.Cluster
		if err := r.GetResources()[0].UnmarshalTo(&cl); err != nil {
			t.Fatal(err)
		}
		if has := cl.GetTransportSocket() != nil; has != (kind == "envoy") {
			t.Errorf("%s: transport socket present = %v", kind, has)
		}
	}
}

func TestVersionsDifferAcrossRestarts(t *testing.T) {
	st := stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1"))
	var versions []string
	for range 2 {
		h := start(t, st)
		c := h.ads(t, node("p.default", "envoy"))
		c.send(xds.ClusterType, nil, "", "", "")
		versions = append(versions, c.recv().GetVersionInfo())
	}
	if versions[0] == versions[1] {
		t.Fatalf("two servers sent the same version %q for the same state", versions[0])
	}
}

func TestDisconnectFreesState(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	ctx, cancel := context.WithCancel(context.Background())
	s, err := discoverypb.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoverypb.DiscoveryRequest{Node: node("gone.default", "weft"), TypeUrl: xds.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if n := len(h.srv.clients.summary()); n != 1 {
		t.Fatalf("%d clients tracked, want 1", n)
	}
	if got := metricValue(t, h.srv, `weft_xds_connected_proxies{kind="weft"}`); got != "1" {
		t.Errorf("connected weft proxies = %q", got)
	}
	cancel()
	deadline := time.Now().Add(20 * time.Second)
	for len(h.srv.clients.summary()) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("closed stream still tracked")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := metricValue(t, h.srv, `weft_xds_connected_proxies{kind="weft"}`); got != "0" {
		t.Errorf("connected weft proxies after disconnect = %q", got)
	}
}

type response struct {
	code int
	body string
}

func get(t *testing.T, s *Server, path string) response {
	t.Helper()
	srv := httptestServer(t, s)
	resp, err := http.Get(srv + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, string(b)}
}

var (
	adminMu  sync.Mutex
	adminFor = map[*Server]string{}
)

// httptestServer serves s's admin handler on a real loopback socket (one per Server).
func httptestServer(t *testing.T, s *Server) string {
	adminMu.Lock()
	defer adminMu.Unlock()
	if u, ok := adminFor[s]; ok {
		return u
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.AdminHandler()}
	go func() { _ = hs.Serve(lis) }()
	t.Cleanup(func() { hs.Close() })
	u := "http://" + lis.Addr().String()
	adminFor[s] = u
	return u
}

// metricValue reads one sample from /metrics, e.g. `weft_xds_nacks_total{type="cds"}`.
func metricValue(t *testing.T, s *Server, series string) string {
	t.Helper()
	body := get(t, s, "/metrics").body
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// csdsStatus fetches CSDS and returns the names in ERROR (checking the error detail) and SYNCED for a node.
func csdsStatus(t *testing.T, h *harness, nodeID string) (errored, synced []string) {
	t.Helper()
	resp, err := statuspb.NewClientStatusDiscoveryServiceClient(h.conn).FetchClientStatus(context.Background(), &statuspb.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cc := range resp.GetConfig() {
		if cc.GetNode().GetId() != nodeID {
			continue
		}
		for _, g := range cc.GetGenericXdsConfigs() {
			switch g.GetConfigStatus() {
			case statuspb.ConfigStatus_ERROR:
				errored = append(errored, g.GetName())
				if !strings.Contains(g.GetErrorState().GetDetails(), "no thanks") {
					t.Errorf("CSDS error state of %s = %v", g.GetName(), g.GetErrorState())
				}
			case statuspb.ConfigStatus_SYNCED:
				synced = append(synced, g.GetName())
			}
		}
	}
	return errored, synced
}

func bigState(n, round int) *discovery.State {
	svc := discovery.Service{Namespace: "default", Name: "big", ClusterIP: "10.96.9.9",
		Ports: []discovery.ServicePort{{Name: "grpc", Port: 80, Protocol: "TCP"}}}
	for i := range n {
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{
			Address: fmt.Sprintf("10.%d.%d.%d", round%250, i/250, i%250+1), Ready: true,
			Ports: []discovery.EndpointPort{{Name: "grpc", Port: 8080}},
		})
	}
	return &discovery.State{Services: []discovery.Service{svc}}
}

// TestSlowClientDoesNotBlockOthers: a client that never reads its stream does not hold back another
// client's updates (each stream has its own sender, and the cache never queues more than one pending
// response per watch).
func TestSlowClientDoesNotBlockOthers(t *testing.T) {
	h := start(t, bigState(2000, 0))
	cn := clusterName("big", 80)
	slowConn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slow, err := discoverypb.NewAggregatedDiscoveryServiceClient(slowConn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Send(&discoverypb.DiscoveryRequest{Node: node("slow.default", "envoy"), TypeUrl: xds.EndpointType, ResourceNames: []string{cn}}); err != nil {
		t.Fatal(err)
	}
	fast := h.ads(t, node("fast.default", "envoy"))
	fast.send(xds.EndpointType, []string{cn}, "", "", "")
	fast.ack(fast.recv(), []string{cn})
	for round := 1; round <= 30; round++ {
		h.srv.Update(bigState(2000, round))
		r := fast.recv()
		if eps := endpointsOf(t, r); len(eps) != 2000 || !strings.HasPrefix(eps[0], fmt.Sprintf("10.%d.", round)) {
			t.Fatalf("round %d: fast client got %d endpoints starting %v", round, len(eps), eps[:1])
		}
		fast.ack(r, []string{cn})
	}
}

// TestNackOfFirstResponseIsNotResent: the first response's NACK carries no version; the rejected
// configuration must not come back, only a later change.
func TestNackOfFirstResponseIsNotResent(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	c := h.ads(t, node("p.default", "envoy"))
	ca := clusterName("a", 80)
	c.send(xds.ClusterType, nil, "", "", "")
	cds := c.recv()
	c.send(xds.ClusterType, nil, "", cds.GetNonce(), "bad cluster")
	c.send(xds.EndpointType, []string{ca}, "", "", "")
	if r := c.recv(); r.GetTypeUrl() != xds.EndpointType {
		t.Fatalf("after a NACK of the first CDS response got %s %v, want the EDS answer (no CDS resend)", r.GetTypeUrl(), resourceNames(t, r))
	}
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	if r := c.recv(); r.GetTypeUrl() != xds.ClusterType || len(r.GetResources()) != 4 { // a, b, passthrough, blackhole
		t.Fatalf("after a cluster change got %s %v", r.GetTypeUrl(), resourceNames(t, r))
	}
}

// TestStaleNonceAfterAckIgnored: a stale request that arrives after the client ACKed the newer
// response is still ignored.
func TestStaleNonceAfterAckIgnored(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("b", 80, 8080, "10.0.1.1")))
	ca, cb := clusterName("a", 80), clusterName("b", 80)
	c := h.ads(t, node("p.default", "envoy"))
	c.send(xds.EndpointType, []string{ca}, "", "", "")
	r1 := c.recv()
	c.ack(r1, []string{ca})
	c.send(xds.EndpointType, []string{ca, cb}, r1.GetVersionInfo(), r1.GetNonce(), "")
	r2 := c.recv()
	c.ack(r2, []string{ca, cb})
	// Stale (r1's nonce), dropping b: must be ignored, so b stays subscribed.
	c.send(xds.EndpointType, []string{ca}, r1.GetVersionInfo(), r1.GetNonce(), "")
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("b", 80, 8080, "10.0.1.2")))
	if got := resourceNames(t, c.recv()); !slices.Equal(got, []string{cb}) {
		t.Fatalf("after a stale request dropping b, a change of b got %v; want b", got)
	}
}

func TestDeltaSubscribeAgainAndMissing(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	ca := clusterName("a", 80)
	c := h.delta(t, node("d.default", "envoy"))
	c.send(xds.EndpointType, []string{ca}, nil, "")
	r := c.recv()
	c.send(xds.EndpointType, nil, nil, r.GetNonce())
	// Subscribing again to a held name resends it.
	c.send(xds.EndpointType, []string{ca}, nil, "")
	if r := c.recv(); !slices.Equal(deltaNames(r), []string{ca}) {
		t.Fatalf("subscribe again: got %v removed %v", deltaNames(r), r.GetRemovedResources())
	}
	// A name that does not exist is reported removed; it is sent once it exists.
	missing := clusterName("later", 80)
	c.send(xds.EndpointType, []string{missing}, nil, "")
	r = c.recv()
	if !slices.Equal(r.GetRemovedResources(), []string{missing}) {
		t.Fatalf("subscribing to a missing name: removed %v, resources %v", r.GetRemovedResources(), deltaNames(r))
	}
	c.send(xds.EndpointType, nil, nil, r.GetNonce())
	h.srv.Update(stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")+serviceYAML("later", 80, 8080, "10.0.5.1")))
	if r := c.recv(); !slices.Equal(deltaNames(r), []string{missing}) {
		t.Fatalf("once it exists: got %v", deltaNames(r))
	}
}
