package server

import (
	"strconv"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// DeltaAggregatedResources wraps the delta stream for two rules of the incremental protocol that
// go-control-plane does not follow: subscribing again to a name the client holds resends it, and a
// subscribed name that does not exist is reported in removed_resources.
func (a *ads) DeltaAggregatedResources(st discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.gcp.DeltaAggregatedResources(&deltaFilter{
		AggregatedDiscoveryService_DeltaAggregatedResourcesServer: st,
		srv:        a.srv,
		subscribed: map[string]map[string]bool{},
	})
}

type deltaFilter struct {
	discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	srv *Server

	// Recv runs on go-control-plane's receive goroutine, Send on its process goroutine; sendMu keeps
	// the extra responses Recv makes from interleaving with them.
	sendMu sync.Mutex
	node   *core.Node
	// Only the receive goroutine touches these.
	subscribed map[string]map[string]bool
	pending    *discoverypb.DeltaDiscoveryRequest
	missing    int
}

func (f *deltaFilter) Send(r *discoverypb.DeltaDiscoveryResponse) error {
	f.sendMu.Lock()
	defer f.sendMu.Unlock()
	return f.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Send(r)
}

func (f *deltaFilter) Recv() (*discoverypb.DeltaDiscoveryRequest, error) {
	if p := f.pending; p != nil {
		f.pending = nil
		f.reportMissing(p)
		return p, nil
	}
	req, err := f.AggregatedDiscoveryService_DeltaAggregatedResourcesServer.Recv()
	if err != nil {
		return nil, err
	}
	if req.GetNode() != nil {
		f.node = req.GetNode()
	}
	subs := f.subscribed[req.GetTypeUrl()]
	if subs == nil {
		subs = map[string]bool{}
		f.subscribed[req.GetTypeUrl()] = subs
	}
	var again []string
	for _, n := range req.GetResourceNamesSubscribe() {
		if subs[n] && n != "*" {
			again = append(again, n)
		}
		subs[n] = true
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		delete(subs, n)
	}
	if len(again) > 0 {
		// Forget them first (an unsubscribe go-control-plane applies silently), then subscribe.
		f.pending = req
		return &discoverypb.DeltaDiscoveryRequest{Node: req.GetNode(), TypeUrl: req.GetTypeUrl(), ResourceNamesUnsubscribe: again}, nil
	}
	f.reportMissing(req)
	return req, nil
}

// reportMissing tells the client, in removed_resources, which of the names it just subscribed to do
// not exist.
func (f *deltaFilter) reportMissing(req *discoverypb.DeltaDiscoveryRequest) {
	var missing []string
	for _, n := range req.GetResourceNamesSubscribe() {
		if n != "*" && !f.srv.exists(req.GetTypeUrl(), f.node, n) {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	f.missing++
	_ = f.Send(&discoverypb.DeltaDiscoveryResponse{
		TypeUrl:          req.GetTypeUrl(),
		RemovedResources: missing,
		Nonce:            "absent-" + strconv.Itoa(f.missing),
	})
}
