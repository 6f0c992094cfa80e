package proxy

import (
	"sort"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// ClusterStatus is one cluster as /clusters shows it.
type ClusterStatus struct {
	Name           string           `json:"name"`
	Kind           string           `json:"kind"`
	LBPolicy       string           `json:"lb_policy"`
	TLS            bool             `json:"tls"`
	ActiveRequests int64            `json:"active_requests"`
	ActiveRetries  int64            `json:"active_retries"`
	Connections    int64            `json:"tcp_connections"`
	Endpoints      []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint with its health and ejection state.
type EndpointStatus struct {
	Address        string `json:"address"`
	Health         string `json:"health"`
	Weight         uint32 `json:"weight"`
	ActiveRequests int64  `json:"active_requests"`
	Ejected        bool   `json:"ejected"`
	EjectedUntil   string `json:"ejected_until,omitempty"`
	Ejections      int32  `json:"ejections"`
}

// Clusters reports every cluster's endpoints, sorted by name.
func (p *Proxy) Clusters() []ClusterStatus {
	rt := p.rt.Load()
	out := make([]ClusterStatus, 0, len(rt.clusters))
	now := time.Now().UnixNano()
	for _, c := range rt.clusters {
		cs := ClusterStatus{
			Name: c.cfg.Name, Kind: c.cfg.Kind.String(), LBPolicy: c.cfg.LB.String(), TLS: c.cfg.TLS != nil,
			ActiveRequests: c.state.active.Load(), ActiveRetries: c.state.retries.Load(), Connections: c.state.connections.Load(),
			Endpoints: []EndpointStatus{},
		}
		for _, h := range c.all {
			until := h.ejectedUntil.Load()
			es := EndpointStatus{
				Address: h.addrStr, Health: config.Health(h.health.Load()).String(), Weight: h.weight, // #nosec G115 -- health holds a config.Health, stored from one
				ActiveRequests: h.active.Load(), Ejected: until > now, Ejections: h.ejections.Load(),
			}
			if es.Ejected {
				es.EjectedUntil = time.Unix(0, until).UTC().Format(time.RFC3339Nano)
			}
			cs.Endpoints = append(cs.Endpoints, es)
		}
		out = append(out, cs)
	}
	// sort.Slice, not slices.SortFunc: a generic sort of a struct type links its own ~15 KB copy of
	// pdqsort (resident in every sidecar); sort.Slice is linked anyway.
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
