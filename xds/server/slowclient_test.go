package server

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/xds"
)

// heapMB is the live heap after a collection, in MB.
func heapMB() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / (1 << 20)
}

// TestSlowClientMemoryBoundedAndLatest (security.md §6 item 3): a SotW client and a delta client
// subscribe to a 2000-endpoint ClusterLoadAssignment (~70 KB a response) and then read nothing,
// while 300 changes are pushed and a healthy client follows each one. The server's live heap after
// 100 changes and after 300 stays within a bound that does not grow with the changes (no per-stream
// queue of responses), and when the stuck clients read again they get the latest state within a few
// responses: what they missed was merged, not queued.
func TestSlowClientMemoryBoundedAndLatest(t *testing.T) {
	const endpoints, rounds = 2000, 300
	h := start(t, bigState(endpoints, 0))
	cn := clusterName("big", 80)
	slowConn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ads := discoverypb.NewAggregatedDiscoveryServiceClient(slowConn)
	sotw, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sotw.Send(&discoverypb.DiscoveryRequest{Node: node("slow.default", "envoy"), TypeUrl: xds.EndpointType, ResourceNames: []string{cn}}); err != nil {
		t.Fatal(err)
	}
	delta, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoverypb.DeltaDiscoveryRequest{Node: node("slowdelta.default", "envoy"), TypeUrl: xds.EndpointType, ResourceNamesSubscribe: []string{cn}}); err != nil {
		t.Fatal(err)
	}
	fast := h.ads(t, node("fast.default", "envoy"))
	fast.send(xds.EndpointType, []string{cn}, "", "", "")
	fast.ack(fast.recv(), []string{cn})

	base := heapMB()
	var at100 float64
	start := time.Now()
	for round := 1; round <= rounds; round++ {
		h.srv.Update(bigState(endpoints, round))
		r := fast.recv()
		if eps := endpointsOf(t, r); len(eps) != endpoints || !strings.HasPrefix(eps[0], fmt.Sprintf("10.%d.", round%250)) {
			t.Fatalf("round %d: the healthy client got %d endpoints starting %v", round, len(eps), eps[:1])
		}
		fast.ack(r, []string{cn})
		if round == 100 {
			at100 = heapMB()
		}
	}
	pushed := time.Since(start)
	at300 := heapMB()
	t.Logf("%d changes of a %d-endpoint CLA in %v with two clients not reading: live heap %.1f MB before, %.1f MB after 100, %.1f MB after %d",
		rounds, endpoints, pushed.Round(time.Millisecond), base, at100, at300, rounds)
	// A queue of responses would hold ~70 KB per change per stuck stream: 200 more changes, ~28 MB.
	if grew := at300 - at100; grew > 5 {
		t.Errorf("the live heap grew %.1f MB between change 100 and change %d, want under 5 MB (bounded, not per change)", grew, rounds)
	}
	if grew := at300 - base; grew > 20 {
		t.Errorf("the live heap grew %.1f MB with two stuck clients, want under 20 MB", grew)
	}

	latest := fmt.Sprintf("10.%d.", rounds%250)
	// The SotW client reads and ACKs again: the response it had not read, then the latest.
	for n := 1; ; n++ {
		r, err := sotw.Recv()
		if err != nil {
			t.Fatalf("SotW client: %v", err)
		}
		eps := endpointsOf(t, r)
		if len(eps) == endpoints && strings.HasPrefix(eps[0], latest) {
			t.Logf("the SotW client had the latest state after reading %d responses", n)
			break
		}
		if n >= 3 {
			t.Fatalf("the SotW client read %d responses without the latest state (got %v…)", n, eps[:1])
		}
		if err := sotw.Send(&discoverypb.DiscoveryRequest{TypeUrl: xds.EndpointType, ResourceNames: []string{cn}, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	// The delta client too (go-control-plane's delta stream over the LinearCache).
	for n := 1; ; n++ {
		r, err := delta.Recv()
		if err != nil {
			t.Fatalf("delta client: %v", err)
		}
		var first string
		for _, res := range r.GetResources() {
			var cla endpoint.ClusterLoadAssignment
			if err := res.GetResource().UnmarshalTo(&cla); err != nil {
				t.Fatal(err)
			}
			first = cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
		}
		if strings.HasPrefix(first, latest) {
			t.Logf("the delta client had the latest state after reading %d responses", n)
			break
		}
		if n >= 3 {
			t.Fatalf("the delta client read %d responses without the latest state (got %q)", n, first)
		}
		if err := delta.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: xds.EndpointType, ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
}
