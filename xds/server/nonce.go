package server

import (
	"sync"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// adsWithStaleNonces wraps the go-control-plane ADS server so that a SotW request whose response
// nonce is not the nonce of the latest response of its type on the stream is dropped, as the xDS
// protocol requires. go-control-plane checks nonces only against its current watch, which is replaced
// by each request, so a stale request arriving after the ACK of a newer response would otherwise be
// applied.
type adsWithStaleNonces struct {
	discoverypb.AggregatedDiscoveryServiceServer
}

func (a adsWithStaleNonces) StreamAggregatedResources(st discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.AggregatedDiscoveryServiceServer.StreamAggregatedResources(&nonceFilter{
		AggregatedDiscoveryService_StreamAggregatedResourcesServer: st,
		latest: map[string]string{},
	})
}

type nonceFilter struct {
	discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	mu     sync.Mutex
	latest map[string]string // type URL → nonce of the latest response sent
}

func (f *nonceFilter) Send(r *discoverypb.DiscoveryResponse) error {
	f.mu.Lock()
	f.latest[r.GetTypeUrl()] = r.GetNonce()
	f.mu.Unlock()
	return f.AggregatedDiscoveryService_StreamAggregatedResourcesServer.Send(r)
}

func (f *nonceFilter) Recv() (*discoverypb.DiscoveryRequest, error) {
	for {
		req, err := f.AggregatedDiscoveryService_StreamAggregatedResourcesServer.Recv()
		if err != nil {
			return nil, err
		}
		if n := req.GetResponseNonce(); n != "" {
			f.mu.Lock()
			latest, sent := f.latest[req.GetTypeUrl()]
			f.mu.Unlock()
			if sent && n != latest {
				continue // stale: the client had not seen our latest response when it sent this
			}
		}
		return req, nil
	}
}
