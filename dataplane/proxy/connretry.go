package proxy

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// A connection to an upstream that was never established — refused, unreachable, a connect timeout,
// a failed TLS handshake — means the request never left the proxy: it is sent again at once to
// another endpoint of the same cluster, whatever the route's retry policy says (Envoy's
// connect-failure retry, without waiting for a policy). A request tries at most maxConnectTries
// endpoints this way, each one not tried before; each such retry counts in
// upstream_connect_retry_total{cluster}. The success path allocates nothing more: the endpoints tried
// live in a triedHosts on the stack, and a request body is guarded by a field of the request's
// reqState (which makes the net/http path's reqState 32 B larger; the lean path is unchanged).

// maxConnectTries bounds the endpoints one request tries (the cluster's count when it has fewer).
const maxConnectTries = 3

// triedHosts are the endpoints a request has tried.
type triedHosts struct {
	h [maxConnectTries]*host
	n int
}

func (t *triedHosts) add(h *host) {
	if t.n < len(t.h) {
		t.h[t.n] = h
		t.n++
	}
}

func (t *triedHosts) has(h *host) bool {
	for _, x := range t.h[:t.n] {
		if x == h {
			return true
		}
	}
	return false
}

// pickUntried chooses the endpoint for a connect-failure retry: the first one not yet tried from a
// random start, one not ejected if there is one (the round-robin cursor stays where it is, so that
// the next request's pick is not skewed); nil when the request has tried maxConnectTries endpoints
// or all of them.
func (c *clusterRT) pickUntried(t *triedHosts) *host {
	hosts := c.flat
	if t.n >= maxConnectTries || t.n >= len(hosts) {
		return nil
	}
	var now int64
	if c.state.ejected.Load() > 0 {
		now = time.Now().UnixNano()
	}
	var ejected *host
	start := rand.IntN(len(hosts))
	for i := range hosts {
		h := hosts[(start+i)%len(hosts)]
		switch {
		case t.has(h):
		case now == 0 || !c.state.isEjected(h, now):
			return h
		case ejected == nil:
			ejected = h
		}
	}
	return ejected
}

// handshakeError is a failed TLS handshake with an upstream: the connection was never established.
type handshakeError struct {
	addr string
	err  error
}

func (e *handshakeError) Error() string {
	return "mTLS handshake with " + e.addr + ": " + e.err.Error()
}
func (e *handshakeError) Unwrap() error { return e.err }

// neverSent reports whether err says the connection to the upstream was never established, so that
// the request never left: a dial error (refused, unreachable, connect timeout) or a failed handshake.
func neverSent(err error) bool {
	if isDialError(err) {
		return true
	}
	var he *handshakeError
	return errors.As(err, &he)
}

// guardBody is a request body that can be sent again after a connection that was never made: the
// Close a transport makes when its dial fails is held back while nothing was read (net/http's
// Transport closes the body then); read says whether a byte was taken (then it cannot be resent).
// It also keeps the first read error, to tell the client's broken body (400) from an upstream
// failure (502).
type guardBody struct {
	rc     io.ReadCloser
	read   atomic.Bool
	closed atomic.Bool           // a Close held back
	err    atomic.Pointer[error] // the first read error other than io.EOF
}

func (b *guardBody) Read(p []byte) (int, error) {
	b.read.Store(true)
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

// bodyErr is the body's first read error, or nil (also for no guard).
func (b *guardBody) bodyErr() error {
	if b == nil {
		return nil
	}
	if e := b.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (b *guardBody) Close() error {
	if !b.read.Load() {
		b.closed.Store(true)
		return nil
	}
	return b.rc.Close()
}

// release makes a held-back Close, once the request is over.
func (b *guardBody) release() {
	if b.closed.Load() {
		_ = b.rc.Close()
	}
}

// connectRetry counts a connect-failure retry of cluster's.
func (m *Metrics) connectRetry(cluster string) {
	m.set.GetOrCreateCounter(seriesName("upstream_connect_retry_total", "cluster", cluster)).Inc()
}
