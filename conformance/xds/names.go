package xds

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// names is what the server serves to the suite's node, by type: clusters and listeners from wildcard
// CDS and LDS, EDS names from the EDS clusters, RDS names from the listeners' connection managers.
type names struct {
	clusters, endpoints, listeners, routes []string
}

func (n *names) String() string {
	return fmt.Sprintf("clusters %v, endpoints %v, listeners %v, routes %v", n.clusters, n.endpoints, n.listeners, n.routes)
}

// minus returns the names in n that are not in o.
func (n *names) minus(o *names) *names {
	d := func(a, b []string) []string {
		var out []string
		for _, x := range a {
			if !slices.Contains(b, x) {
				out = append(out, x)
			}
		}
		return out
	}
	return &names{d(n.clusters, o.clusters), d(n.endpoints, o.endpoints), d(n.listeners, o.listeners), d(n.routes, o.routes)}
}

// namesFrom derives the names from a CDS and an LDS response.
func namesFrom(cdsResp, ldsResp *discoveryv3.DiscoveryResponse) (*names, error) {
	n := &names{}
	ep, rt := map[string]bool{}, map[string]bool{}
	for _, a := range cdsResp.GetResources() {
		m, err := decode(a)
		if err != nil {
			return nil, fmt.Errorf("decoding a cluster: %w", err)
		}
		c, ok := m.(*clusterv3.Cluster)
		if !ok {
			return nil, fmt.Errorf("CDS response holds a %T", m)
		}
		n.clusters = append(n.clusters, c.Name)
		if c.GetType() == clusterv3.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.Name
			}
			ep[name] = true
		}
	}
	for _, a := range ldsResp.GetResources() {
		m, err := decode(a)
		if err != nil {
			return nil, fmt.Errorf("decoding a listener: %w", err)
		}
		l, ok := m.(*listenerv3.Listener)
		if !ok {
			return nil, fmt.Errorf("LDS response holds a %T", m)
		}
		n.listeners = append(n.listeners, l.Name)
		for _, r := range routeNames(l) {
			rt[r] = true
		}
	}
	sort.Strings(n.clusters)
	sort.Strings(n.listeners)
	n.endpoints, n.routes = sorted(ep), sorted(rt)
	return n, nil
}

// routeNames finds the RDS route configuration names a listener refers to.
func routeNames(l *listenerv3.Listener) []string {
	var out []string
	add := func(h *hcmv3.HttpConnectionManager) {
		if r := h.GetRds().GetRouteConfigName(); r != "" {
			out = append(out, r)
		}
	}
	if api := l.GetApiListener().GetApiListener(); api != nil {
		var h hcmv3.HttpConnectionManager
		if api.UnmarshalTo(&h) == nil {
			add(&h)
		}
	}
	chains := slices.Clone(l.GetFilterChains())
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, l.GetDefaultFilterChain())
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil {
				continue
			}
			var h hcmv3.HttpConnectionManager
			if tc.MessageIs(&h) && tc.UnmarshalTo(&h) == nil {
				add(&h)
			}
		}
	}
	return out
}

// discover reads the server's current names over a fresh ADS stream.
func (e *env) discover(ctx context.Context) (*names, error) {
	return e.waitNames(ctx, "", func(*names) bool { return true })
}

// waitNames follows wildcard CDS and LDS on a fresh ADS stream, ACKing every response, until pred holds
// for the names served; it returns them. what says what it waits for, for the error.
func (e *env) waitNames(ctx context.Context, what string, pred func(*names) bool) (*names, error) {
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := s.subscribe(cds); err != nil {
		return nil, err
	}
	c, err := s.recvAck(ctx, cds)
	if err != nil {
		return nil, fmt.Errorf("wildcard CDS: %w", err)
	}
	if err := s.subscribe(lds); err != nil {
		return nil, err
	}
	l, err := s.recvAck(ctx, lds)
	if err != nil {
		return nil, fmt.Errorf("wildcard LDS: %w", err)
	}
	var last *names
	for attempt := 0; ; attempt++ {
		n, err := namesFrom(c, l)
		if err != nil {
			return nil, err
		}
		last = n
		if pred(n) {
			return n, nil
		}
		r, err := s.recv(ctx, "")
		if err != nil {
			return nil, fmt.Errorf("waiting for %s (last seen: %v): %w", what, last, err)
		}
		if err := s.ack(r); err != nil {
			return nil, err
		}
		switch r.TypeUrl {
		case cds:
			c = r
		case lds:
			l = r
		}
	}
}

// probe is the service checks add and remove to change the configuration.
func probe() Service {
	return Service{Namespace: "default", Name: "xds-conformance-probe", Port: 9555, Endpoints: []string{"127.0.0.51", "127.0.0.52"}}
}

// addProbe adds the probe service and waits until its clusters are served. It returns the names the
// probe adds (learned on first use by comparing the names before and after).
func (e *env) addProbe(ctx context.Context) (*names, error) {
	var before *names
	if e.probeAdded == nil {
		b, err := e.discover(ctx)
		if err != nil {
			return nil, err
		}
		before = b
	}
	p := probe()
	if err := e.cfg.Driver.AddService(ctx, p); err != nil {
		return nil, fmt.Errorf("driver: adding service %s/%s: %w", p.Namespace, p.Name, err)
	}
	if e.probeAdded != nil {
		want := e.probeAdded.clusters
		if _, err := e.waitNames(ctx, "the probe's clusters", func(n *names) bool { return len(missing(want, n.clusters)) == 0 }); err != nil {
			return nil, err
		}
		return e.probeAdded, nil
	}
	after, err := e.waitNames(ctx, "a new cluster for the probe service", func(n *names) bool { return len(missing(n.clusters, before.clusters)) > 0 })
	if err != nil {
		return nil, err
	}
	added := after.minus(before)
	if len(added.endpoints) == 0 {
		return nil, fmt.Errorf("the probe service added clusters %v but no EDS cluster; the suite needs EDS clusters", added.clusters)
	}
	e.probeAdded = added
	return added, nil
}

// removeProbe removes the probe service and waits until its clusters are gone.
func (e *env) removeProbe(ctx context.Context) error {
	p := probe()
	if err := e.cfg.Driver.RemoveService(ctx, p.Namespace, p.Name); err != nil {
		return fmt.Errorf("driver: removing service %s/%s: %w", p.Namespace, p.Name, err)
	}
	if e.probeAdded == nil {
		return nil
	}
	gone := e.probeAdded.clusters
	_, err := e.waitNames(ctx, "the probe's clusters to go", func(n *names) bool { return len(missing(gone, n.clusters)) == len(gone) })
	return err
}

// withProbe runs f with the probe service added, and removes it afterwards (also on failure).
func (e *env) withProbe(ctx context.Context, f func(added *names) error) (err error) {
	cleanup := func() error {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*e.cfg.Timeout)
		defer cancel()
		return e.removeProbe(cctx)
	}
	added, err := e.addProbe(ctx)
	if err != nil {
		_ = cleanup()
		return err
	}
	defer func() {
		if rerr := cleanup(); rerr != nil && err == nil {
			err = fmt.Errorf("cleaning up: %w", rerr)
		}
	}()
	return f(added)
}

// learnProbe makes sure the names the probe service adds are known, adding and removing it once.
func (e *env) learnProbe(ctx context.Context) (*names, error) {
	if e.probeAdded != nil {
		return e.probeAdded, nil
	}
	if err := e.withProbe(ctx, func(*names) error { return nil }); err != nil {
		return nil, err
	}
	return e.probeAdded, nil
}

// need2 returns two EDS names (or, failing that, two cluster names with CDS) for checks that subscribe
// to names one by one.
func (e *env) need2(ctx context.Context) (typeURL string, a, b string, err error) {
	n, err := e.discover(ctx)
	if err != nil {
		return "", "", "", err
	}
	switch {
	case len(n.endpoints) >= 2:
		return eds, n.endpoints[0], n.endpoints[1], nil
	case len(n.clusters) >= 2:
		return cds, n.clusters[0], n.clusters[1], nil
	}
	return "", "", "", skipf("the server serves fewer than two EDS resources and clusters (%v); the check needs two", n)
}

func list(names []string) string { return "[" + strings.Join(names, " ") + "]" }

// settle follows wildcard CDS and LDS until the server has sent nothing for two quiet periods.
func (e *env) settle(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*e.cfg.Timeout)
	defer cancel()
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	for _, t := range []string{cds, lds} {
		if err := s.subscribe(t); err != nil {
			return err
		}
		if _, err := s.recvAck(ctx, t); err != nil {
			return err
		}
	}
	for silent := 0; silent < 2; {
		r, err := s.quiet(ctx)
		if err != nil {
			return err
		}
		if r == nil {
			silent++
			continue
		}
		silent = 0
		if err := s.ack(r); err != nil {
			return err
		}
	}
	return nil
}
