package proxy

import (
	"net"
	"slices"
	"sync"

	"github.com/weftmesh/weft/dataplane/config"
)

// A policy applies to connections already open (docs/design.md, "Authorization"). A connection keeps
// the filter chain it was matched to at accept (its TLS, its protocol), but its RBAC is read from the
// CURRENT runtime on every request: the chain of the same name in the same listener (Envoy requires
// chain names unique in a listener; weft's are inbound|<port>||mtls and the like). Pooled HTTP/2
// connections between sidecars live for ever, so a DENY or a default-deny must reach them. A TCP
// chain's network RBAC decides once per connection; when a new configuration arrives, every open
// inbound TCP connection is decided again (reauthorize) and closed if the new RBAC denies it.

// indexChains fills byName: the chains by name, then the default chain if its name is free.
func (lr *listenerRT) indexChains() {
	lr.byName = make(map[string]*chainRT, len(lr.chains)+1)
	for _, ch := range lr.chains {
		if ch.cfg.Name != "" {
			if _, dup := lr.byName[ch.cfg.Name]; !dup {
				lr.byName[ch.cfg.Name] = ch
			}
		}
	}
	if lr.def != nil && lr.def.cfg.Name != "" {
		if _, dup := lr.byName[lr.def.cfg.Name]; !dup {
			lr.byName[lr.def.cfg.Name] = lr.def
		}
	}
}

// currentChain is the chain of rt that info's connection is on now: the chain of the same name in
// the listener, else (an unnamed chain) the one with an equal match; when the listener no longer has
// it, the chain of accept time.
func (rt *runtime) currentChain(info *connInfo) *chainRT {
	if info == nil || info.chain == nil {
		return nil
	}
	lr := rt.listeners[info.direction]
	if lr == nil {
		return info.chain
	}
	if name := info.chain.cfg.Name; name != "" {
		if ch := lr.byName[name]; ch != nil {
			return ch
		}
		return info.chain
	}
	for _, ch := range lr.chains {
		if ch.cfg.Name == "" && sameMatch(&ch.cfg.Match, &info.chain.cfg.Match) {
			return ch
		}
	}
	return info.chain
}

func sameMatch(a, b *config.ChainMatch) bool {
	return a.DestinationPort == b.DestinationPort && a.TransportProtocol == b.TransportProtocol &&
		slices.Equal(a.Prefixes, b.Prefixes) && slices.Equal(a.ApplicationProtocols, b.ApplicationProtocols)
}

// httpRBAC is the HTTP RBAC that applies now to requests on info's connection (nil: none).
func (rt *runtime) httpRBAC(info *connInfo) []*config.RBAC {
	ch := rt.currentChain(info)
	if ch == nil || ch.cfg.HTTP == nil {
		return nil
	}
	return ch.cfg.HTTP.RBAC
}

// networkRBAC is the network RBAC that applies now to info's connection (nil: none).
func (rt *runtime) networkRBAC(info *connInfo) []*config.RBAC {
	ch := rt.currentChain(info)
	if ch == nil {
		return nil
	}
	return ch.cfg.RBAC
}

// tcpConns are the open inbound connections of TCP chains, decided again at each Update.
type tcpConns struct {
	mu sync.Mutex
	m  map[net.Conn]*connInfo
}

// trackTCP registers an inbound TCP connection being proxied; call the result when it ends.
func (p *Proxy) trackTCP(c net.Conn, info *connInfo) func() {
	if info.direction != "inbound" {
		return func() {}
	}
	t := &p.authzTCP
	t.mu.Lock()
	if t.m == nil {
		t.m = map[net.Conn]*connInfo{}
	}
	t.m[c] = info
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.m, c)
		t.mu.Unlock()
	}
}

// reauthorize decides every open inbound TCP connection again with rt's network RBAC and closes
// those it denies (counted as denials in inbound_authz_total).
func (p *Proxy) reauthorize(rt *runtime) {
	t := &p.authzTCP
	t.mu.Lock()
	var denied []net.Conn
	for c, info := range t.m {
		filters := rt.networkRBAC(info)
		if len(filters) == 0 {
			continue
		}
		req := &config.AuthzRequest{PeerID: info.peerID, Source: addrPort(c.RemoteAddr()).Addr().Unmap(), Dst: info.dst}
		if ok, policy := decideRBAC(filters, req); !ok {
			p.metrics.observeAuthz("tcp", false, policy, info.peerID)
			p.log.Debug("open inbound connection closed: a new authorization policy denies it", "remote", c.RemoteAddr(), "client_id", info.peerID, "dst", info.dst, "policy", policy)
			denied = append(denied, c)
		}
	}
	t.mu.Unlock()
	for _, c := range denied {
		go c.Close() // a TLS close_notify may wait on a write in progress; Update does not
	}
}
