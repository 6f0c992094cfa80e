package proxy

import (
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/weftmesh/weft/dataplane/config"
)

// runtime is what the request path reads: one immutable value built from one config.Snapshot, swapped
// whole through Proxy.rt. The per-endpoint and per-cluster counters it points to (host, clusterState)
// live across runtimes, so in-flight counts, ejections and connection pools survive a config change.
type runtime struct {
	snap      *config.Snapshot
	listeners map[string]*listenerRT
	routes    map[string]*routeTable // by route configuration name
	clusters  map[string]*clusterRT
}

type listenerRT struct {
	cfg    *config.Listener
	chains []*chainRT
	def    *chainRT
	byName map[string]*chainRT // chains and def by name (authz_current.go)
}

type chainRT struct {
	cfg    *config.FilterChain
	routes *routeTable // inline route config, or nil (look up by RDS name)
}

// routeTable finds a virtual host by authority as Envoy does: exact domain, then the longest suffix
// wildcard (*.foo), then the longest prefix wildcard (foo.*), then "*".
type routeTable struct {
	name     string
	exact    map[string]*config.VirtualHost
	suffixes []wild // "*.example.com" → ".example.com", longest first
	prefixes []wild // "example.*" → "example.", longest first
	star     *config.VirtualHost
}

type wild struct {
	s  string
	vh *config.VirtualHost
}

func newRouteTable(rc *config.RouteConfig) *routeTable {
	t := &routeTable{name: rc.Name, exact: map[string]*config.VirtualHost{}}
	for i := range rc.VirtualHosts {
		vh := &rc.VirtualHosts[i]
		for _, d := range vh.Domains {
			switch {
			case d == "*":
				if t.star == nil {
					t.star = vh
				}
			case strings.HasPrefix(d, "*"):
				t.suffixes = append(t.suffixes, wild{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefixes = append(t.prefixes, wild{d[:len(d)-1], vh})
			default:
				if _, dup := t.exact[d]; !dup {
					t.exact[d] = vh
				}
			}
		}
	}
	// Longest first, in order otherwise. sort.SliceStable, not slices.SortStableFunc: a generic sort
	// of a struct type links its own copy of the sort (resident in every sidecar).
	sort.SliceStable(t.suffixes, func(i, j int) bool { return len(t.suffixes[i].s) > len(t.suffixes[j].s) })
	sort.SliceStable(t.prefixes, func(i, j int) bool { return len(t.prefixes[i].s) > len(t.prefixes[j].s) })
	return t
}

// match finds the virtual host for an authority (host or host:port, any case).
func (t *routeTable) match(authority string) *config.VirtualHost {
	if vh, ok := t.exact[authority]; ok {
		return vh
	}
	a := authority
	if hasUpper(a) {
		a = strings.ToLower(a)
		if vh, ok := t.exact[a]; ok {
			return vh
		}
	}
	for _, w := range t.suffixes {
		if strings.HasSuffix(a, w.s) {
			return w.vh
		}
	}
	for _, w := range t.prefixes {
		if strings.HasPrefix(a, w.s) {
			return w.vh
		}
	}
	return t.star
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// matchRoute returns the first route of a virtual host matching the path and, for the routes that
// have header or query matchers (routefilter.go), the request.
func matchRoute(vh *config.VirtualHost, path string, req *http.Request) *config.Route {
	var q lazyQuery
	for i := range vh.Routes {
		r := &vh.Routes[i]
		if matchPath(r, path) && (len(r.Headers) == 0 && len(r.Query) == 0 && !r.GRPC || matchRequest(r, req, &q)) {
			return r
		}
	}
	return nil
}

// buildRuntime turns a snapshot into a runtime. It runs on the xDS goroutine only (Proxy.Update holds
// updateMu), and reuses the hosts and cluster states of the previous runtime.
func (p *Proxy) buildRuntime(s *config.Snapshot) *runtime {
	rt := &runtime{
		snap:      s,
		listeners: map[string]*listenerRT{},
		routes:    map[string]*routeTable{},
		clusters:  map[string]*clusterRT{},
	}
	for name, rc := range s.Routes {
		rt.routes[name] = newRouteTable(rc)
	}
	for name, l := range s.Listeners {
		lr := &listenerRT{cfg: l}
		for i := range l.Chains {
			lr.chains = append(lr.chains, newChainRT(&l.Chains[i]))
		}
		if l.Default != nil {
			lr.def = newChainRT(l.Default)
		}
		lr.indexChains() // authz_current.go
		rt.listeners[name] = lr
	}
	liveHosts := map[string]bool{}
	for name, c := range s.Clusters {
		st := p.clusterStates[name]
		if st == nil {
			st = newClusterState(p, name)
			p.clusterStates[name] = st
		}
		st.cfg.Store(c)
		cr := &clusterRT{cfg: c, state: st}
		if cla := s.LoadAssignment(c); cla != nil {
			cr.build(p, cla, liveHosts)
		}
		rt.clusters[name] = cr
	}
	// Forget the state of clusters and hosts that are gone.
	for name, st := range p.clusterStates {
		if _, ok := s.Clusters[name]; !ok {
			st.close()
			delete(p.clusterStates, name)
		}
	}
	for key := range p.hosts {
		if !liveHosts[key] {
			delete(p.hosts, key)
		}
	}
	return rt
}

func newChainRT(fc *config.FilterChain) *chainRT {
	c := &chainRT{cfg: fc}
	if fc.HTTP != nil && fc.HTTP.Inline != nil {
		c.routes = newRouteTable(fc.HTTP.Inline)
	}
	return c
}

// host is one upstream endpoint of one cluster. It outlives runtimes (keyed by cluster and address).
type host struct {
	addr    netip.AddrPort
	addrStr string
	weight  uint32
	health  atomic.Uint32 // config.Health, from the latest EDS

	active        atomic.Int64 // requests in flight (least request)
	consecutive5x atomic.Int32
	consecutiveGw atomic.Int32
	ejectedUntil  atomic.Int64 // unix nanos; 0: not ejected
	ejections     atomic.Int32 // times ejected, for growing backoff
}

func hostKey(cluster string, ap netip.AddrPort) string { return cluster + "\x00" + ap.String() }

// locality is one group of ready hosts with its weight.
type locality struct {
	weight uint32
	hosts  []*host
}

// clusterRT is a cluster in one runtime: its config and its endpoints grouped for load balancing.
type clusterRT struct {
	cfg        *config.Cluster
	state      *clusterState
	all        []*host    // every endpoint, for /clusters and outlier percentages
	localities []locality // the ready hosts of the best priority
	weighted   bool       // localities carry weights
	totalW     uint32
	flat       []*host // all ready hosts of the best priority
	ring       []ringEntry
}

func (c *clusterRT) build(p *Proxy, cla *config.ClusterLoadAssignment, live map[string]bool) {
	best := ^uint32(0)
	for _, l := range cla.Localities {
		for _, e := range l.Endpoints {
			if e.Health.Ready() && l.Priority < best {
				best = l.Priority
			}
		}
	}
	for _, l := range cla.Localities {
		loc := locality{weight: l.Weight}
		for _, e := range l.Endpoints {
			key := hostKey(c.cfg.Name, e.Address)
			h := p.hosts[key]
			if h == nil {
				h = &host{addr: e.Address, addrStr: e.Address.String()}
				p.hosts[key] = h
			}
			h.weight = e.Weight
			h.health.Store(uint32(e.Health))
			live[key] = true
			c.all = append(c.all, h)
			if e.Health.Ready() && l.Priority == best {
				loc.hosts = append(loc.hosts, h)
			}
		}
		if len(loc.hosts) > 0 {
			c.localities = append(c.localities, loc)
			c.flat = append(c.flat, loc.hosts...)
			if loc.weight > 0 {
				c.weighted = true
			}
			c.totalW += loc.weight
		}
	}
	if c.weighted {
		// A locality without a weight gets none of the traffic, as in Envoy.
		c.localities = slices.DeleteFunc(c.localities, func(l locality) bool { return l.weight == 0 })
	}
	if c.cfg.LB == config.LBRingHash {
		c.ring = buildRing(c.flat)
	}
}

// authorityPort returns the port of an authority, or def when it has none.
func authorityPort(authority string, def string) string {
	if i := strings.LastIndexByte(authority, ':'); i >= 0 && !strings.Contains(authority[i:], "]") {
		if _, err := strconv.Atoi(authority[i+1:]); err == nil {
			return authority[i+1:]
		}
	}
	return def
}
