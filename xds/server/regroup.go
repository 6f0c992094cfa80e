package server

import (
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/weftmesh/weft/xds"
)

// Moving proxies between listener groups. Proxies share an inbound listener (a listener group) when
// their ports, protocols, mTLS mode and authorization (xds.InboundPort.Key) are equal; a stream picks
// its group when it asks for listeners. When an Update changes a proxy's RBAC (a policy now selects
// its pod, its default-inbound-policy changed), the proxy must get its new inbound listener without
// asking (see authzMoved for the other changes): its old group's listener did not change, so
// nothing would wake it. After each Update, regroup therefore wakes the SotW streams that watch a
// listener group (each re-resolves its group when woken, sotwRegroup) and moves the delta watches on
// listener groups whose proxy now belongs to another group to that group's cache, which answers them
// at once with the new listener.

// ldsDeltaWatch is a delta LDS watch on a listener group, movable by regroup.
type ldsDeltaWatch struct {
	mu     sync.Mutex
	s      *Server
	req    *cache.DeltaRequest
	sub    cache.Subscription
	ch     chan cache.DeltaResponse
	proxy  xds.Proxy
	c      *typedCache
	cancel func()
	done   bool
}

// ldsWatches is the set of open ldsDeltaWatches.
type ldsWatches struct {
	mu sync.Mutex
	m  map[*ldsDeltaWatch]struct{}
}

// createDeltaLDSWatch opens a delta watch on the proxy's listener group that regroup can move.
func (s *Server) createDeltaLDSWatch(c *typedCache, p xds.Proxy, req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	cancel, err := c.linear.CreateDeltaWatch(req, sub, ch)
	if err != nil {
		return nil, err
	}
	w := &ldsDeltaWatch{s: s, req: req, sub: sub, ch: ch, proxy: p, c: c, cancel: cancel}
	s.lds.mu.Lock()
	if s.lds.m == nil {
		s.lds.m = map[*ldsDeltaWatch]struct{}{}
	}
	s.lds.m[w] = struct{}{}
	s.lds.mu.Unlock()
	return func() {
		w.mu.Lock()
		w.done = true
		if w.cancel != nil {
			w.cancel()
		}
		w.mu.Unlock()
		s.lds.mu.Lock()
		delete(s.lds.m, w)
		s.lds.mu.Unlock()
	}, nil
}

// regroup runs after an Update, without s.mu held.
func (s *Server) regroup() {
	s.mu.Lock()
	caches := make([]*typedCache, 0, len(s.groups))
	for _, g := range s.groups {
		caches = append(caches, g.lds)
	}
	s.mu.Unlock()
	for _, c := range caches {
		c.subs.notify()
	}

	s.lds.mu.Lock()
	ws := make([]*ldsDeltaWatch, 0, len(s.lds.m))
	for w := range s.lds.m {
		ws = append(ws, w)
	}
	s.lds.mu.Unlock()
	for _, w := range ws {
		w.move()
	}
}

// move re-creates the watch on the proxy's current group when that is another one.
func (w *ldsDeltaWatch) move() {
	w.mu.Lock()
	defer w.mu.Unlock()
	// No cancel: the watch answered when it was made, and the stream's next request makes the next
	// watch (on the right group).
	if w.done || w.cancel == nil {
		return
	}
	c := w.s.listenerGroup(w.proxy)
	if c == w.c || !w.s.authzMoved(w.c, c) {
		return
	}
	w.cancel()
	cancel, err := c.linear.CreateDeltaWatch(w.req, w.sub, w.ch)
	if err != nil {
		w.s.log.Error("moving a listener watch to its new group", "proxy", w.proxy.ID, "error", err)
		w.cancel = nil
		return
	}
	w.c, w.cancel = c, cancel
}

// authzMoved reports whether the listener groups of caches from and to differ in their RBAC. Only
// then is a proxy moved without asking: a move for another reason (a port whose protocol changed from
// TCP to HTTP when a Service started to target it) would send the proxy a chain naming a route it
// does not have yet, and weft-proxy does not warm listeners (Envoy waits for the route; weft-proxy
// would answer 503 meanwhile), so those proxies keep their listener until they ask, as before.
func (s *Server) authzMoved(from, to *typedCache) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := func(c *typedCache) (string, bool) {
		for _, g := range s.groups {
			if g.lds == c {
				for _, p := range g.ports {
					if p.Authz != nil {
						return p.Authz.Key, true
					}
				}
				return "", true
			}
		}
		return "", false
	}
	a, okA := key(from)
	b, okB := key(to)
	return okA && okB && a != b
}

// sotwRegroup re-resolves a SotW stream's listener group when woken; as.mu is held.
func (as *adsStream) sotwRegroup() {
	t := as.typ(xds.ListenerType)
	if t == nil || t.cache == nil || t.cache == as.s.apiLDS {
		return
	}
	c, err := as.s.typedCacheFor(xds.ListenerType, as.proxy, t.applied)
	if err != nil || c == t.cache || !as.s.authzMoved(t.cache, c) {
		return
	}
	t.cache.subs.remove(as)
	// Versions are per cache: the new one's may equal what was sent from the old. Forget what was
	// sent, so that the whole subscription goes out again (LDS is sent in full anyway).
	t.cache, t.recheck, t.sent = c, true, map[string]string{}
	c.subs.add(as)
}
