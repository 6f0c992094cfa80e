package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/weftmesh/weft/dataplane/config"
)

// LocalMode runs a proxy without iptables, as `weft demo` does: every pod is a loopback address.
//
// In a cluster, iptables sends a pod's inbound connections to the `inbound` listener on 15006 and the
// proxy forwards them to the application on 127.0.0.1:<port>. On one machine without root there is no
// redirect and every "pod" shares the host's 127.0.0.1. So LocalMode
//
//   - binds <pod-ip>:<port> for every destination port of the `inbound` listener's filter chains and
//     serves those connections on the inbound listener; their local address is the destination they
//     would have had before a redirect, so filter-chain matching is unchanged;
//   - rewrites the loopback endpoints of the `inbound|<port>||` clusters to AppIP, the address the
//     pod's application listens on (its "localhost").
//
// The xDS configuration is exactly the one a proxy in a cluster gets; only its use differs.
type LocalMode struct {
	Proxy *Proxy
	// PodIP is where the inbound ports are bound (the Pod IP of the discovery file).
	PodIP netip.Addr
	// AppIP replaces 127.0.0.1 in the inbound clusters (invalid: no rewrite).
	AppIP  netip.Addr
	Logger *slog.Logger
	// Listen opens a listener (net.Listen when nil).
	Listen func(network, addr string) (net.Listener, error)

	// mu guards bound; Update runs on the xDS goroutine, Close on shutdown.
	mu     sync.Mutex
	bound  map[uint32]net.Listener
	closed bool
}

// Update is the xDS client's OnUpdate: it installs the rewritten snapshot, then binds the inbound ports
// the new configuration has and closes those it no longer has. A port that cannot be bound is logged
// and retried at the next update.
func (m *LocalMode) Update(s *config.Snapshot) {
	m.Proxy.Update(RewriteInboundClusters(s, m.AppIP))
	if m.PodIP.IsValid() {
		if err := m.reconcile(InboundPorts(s)); err != nil {
			m.logger().Warn("local mode: binding inbound ports", "err", err)
		}
	}
}

// Close closes the inbound listeners LocalMode opened (Proxy.Shutdown closes them too).
func (m *LocalMode) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for port, l := range m.bound {
		l.Close()
		delete(m.bound, port)
	}
}

// Ports returns the inbound ports bound now, sorted.
func (m *LocalMode) Ports() []uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint32
	for p := range m.bound {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func (m *LocalMode) logger() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.Default()
}

func (m *LocalMode) reconcile(ports []uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	if m.bound == nil {
		m.bound = map[uint32]net.Listener{}
	}
	listen := m.Listen
	if listen == nil {
		listen = net.Listen
	}
	want := map[uint32]bool{}
	var errs []error
	for _, port := range ports {
		want[port] = true
		if _, ok := m.bound[port]; ok {
			continue
		}
		addr := netip.AddrPortFrom(m.PodIP, uint16(port)).String() // #nosec G115 -- xDS listener ports are checked to be 1-65535 (dataplane/config)
		l, err := listen("tcp", addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("inbound port %s: %w", addr, err))
			continue
		}
		m.bound[port] = l
		m.logger().Info("local mode: inbound port bound", "addr", addr)
		go func() {
			if err := m.Proxy.ServeInbound(l); err != nil && !errors.Is(err, net.ErrClosed) {
				m.logger().Warn("local mode: inbound port stopped", "addr", addr, "err", err)
			}
		}()
	}
	for port, l := range m.bound {
		if !want[port] {
			l.Close()
			delete(m.bound, port)
			m.logger().Info("local mode: inbound port released", "port", port)
		}
	}
	return errors.Join(errs...)
}

// InboundPorts lists the destination ports of the `inbound` listener's filter chains, sorted.
func InboundPorts(s *config.Snapshot) []uint32 {
	l := s.Listeners["inbound"]
	if l == nil {
		return nil
	}
	var out []uint32
	for _, fc := range l.Chains {
		if p := fc.Match.DestinationPort; p != 0 && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// RewriteInboundClusters returns s with the loopback endpoints of its `inbound|...` STATIC clusters moved
// to appIP (same port). s is not modified; what is unchanged is shared. An invalid appIP returns s.
func RewriteInboundClusters(s *config.Snapshot, appIP netip.Addr) *config.Snapshot {
	if !appIP.IsValid() || s == nil {
		return s
	}
	var clusters map[string]*config.Cluster
	for name, c := range s.Clusters {
		if !strings.HasPrefix(name, "inbound|") || c.Kind != config.ClusterStatic || c.Static == nil {
			continue
		}
		cla, changed := rewriteLoopback(c.Static, appIP)
		if !changed {
			continue
		}
		if clusters == nil {
			clusters = make(map[string]*config.Cluster, len(s.Clusters))
			for k, v := range s.Clusters {
				clusters[k] = v
			}
		}
		nc := *c
		nc.Static = cla
		clusters[name] = &nc
	}
	if clusters == nil {
		return s
	}
	ns := *s
	ns.Clusters = clusters
	return &ns
}

func rewriteLoopback(cla *config.ClusterLoadAssignment, appIP netip.Addr) (*config.ClusterLoadAssignment, bool) {
	out := *cla
	out.Localities = make([]config.Locality, len(cla.Localities))
	changed := false
	for i, l := range cla.Localities {
		nl := l
		nl.Endpoints = make([]config.Endpoint, len(l.Endpoints))
		for j, e := range l.Endpoints {
			if e.Address.Addr().IsLoopback() && e.Address.Addr() != appIP {
				e.Address = netip.AddrPortFrom(appIP, e.Address.Port())
				changed = true
			}
			nl.Endpoints[j] = e
		}
		out.Localities[i] = nl
	}
	return &out, changed
}

// NewLocalMode checks the flags of local mode: bindPodIP binds the inbound ports on podIP, appIP (may
// be empty) is where the application listens. The error says which flag is wrong.
func NewLocalMode(p *Proxy, podIP string, bindPodIP bool, appIP string, log *slog.Logger) (*LocalMode, error) {
	m := &LocalMode{Proxy: p, Logger: log}
	if bindPodIP {
		ip, err := netip.ParseAddr(podIP)
		if err != nil {
			return nil, fmt.Errorf("--inbound-bind-pod-ip needs --pod-ip (or POD_IP) to be an IP address, got %q", podIP)
		}
		m.PodIP = ip
	}
	if appIP != "" {
		ip, err := netip.ParseAddr(appIP)
		if err != nil {
			return nil, fmt.Errorf("--app-ip %q: want an IP address such as 127.1.0.2", appIP)
		}
		m.AppIP = ip
	}
	return m, nil
}
