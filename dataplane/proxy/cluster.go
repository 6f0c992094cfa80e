package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// clusterState is what outlives a runtime for one cluster: breaker counters, the round-robin cursor,
// ejections and the connection pools.
type clusterState struct {
	name string
	cfg  atomic.Pointer[config.Cluster]

	rr          atomic.Uint64
	active      atomic.Int64 // requests in flight
	retries     atomic.Int64 // retries in flight
	connections atomic.Int64 // open upstream connections (HTTP pools and tcp_proxy)
	ejected     atomic.Int32 // hosts currently ejected

	h1    *h1Pool // plaintext HTTP/1.1 (requests it cannot take go to its fallback Transport)
	h2c   *http.Transport
	tlsH2 *http.Transport // mTLS to another weft-proxy: HTTP/2 over TLS
	tlsH1 *http.Transport // mTLS, HTTP/1.1 (upgrades)
}

func newClusterState(p *Proxy, name string) *clusterState {
	st := &clusterState{name: name}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := st.acquireConn(); err != nil {
			return nil, err
		}
		d := net.Dialer{Timeout: st.cfg.Load().ConnectTimeout, KeepAlive: 30 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		return st.countedConn(c, err)
	}
	base := func() *http.Transport {
		return &http.Transport{
			DialContext:           dial,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 0,
			DisableCompression:    true,
			ExpectContinueTimeout: 0,
		}
	}
	h1 := base()
	h1.Protocols = new(http.Protocols)
	h1.Protocols.SetHTTP1(true)
	st.h1 = newH1Pool(dial, h1)
	st.h2c = base()
	st.h2c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newH2WriteConn(newRawSockConn(c), true), nil // rawio.go, h2coalesce.go
	}
	st.h2c.Protocols = new(http.Protocols)
	st.h2c.Protocols.SetUnencryptedHTTP2(true)
	if p.identity != nil {
		tlsDial := func(alpn []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
			return func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.dialTLS(ctx, st, addr, alpn, true)
			}
		}
		st.tlsH2 = base()
		st.tlsH2.DialTLSContext = tlsDial([]string{"h2"})
		st.tlsH2.Protocols = new(http.Protocols)
		st.tlsH2.Protocols.SetHTTP2(true)
		st.tlsH1 = base()
		st.tlsH1.DialTLSContext = tlsDial([]string{"http/1.1"})
		st.tlsH1.Protocols = new(http.Protocols)
		st.tlsH1.Protocols.SetHTTP1(true)
	}
	return st
}

// errCircuitOpen is returned for a connection over the cluster's max_connections.
var errCircuitOpen = errors.New("circuit open")

// acquireConn takes one of the cluster's max_connections (Envoy's default: 1024). Over the limit the
// request fails fast with "circuit open" (Envoy would queue it as pending).
func (st *clusterState) acquireConn() error {
	if st.connections.Add(1) > limit(st.cfg.Load().Breakers.MaxConnections, 1024) {
		st.connections.Add(-1)
		return errCircuitOpen
	}
	return nil
}

// countedConn gives the slot back when the connection closes (or was never opened).
func (st *clusterState) countedConn(c net.Conn, err error) (net.Conn, error) {
	if err != nil {
		st.connections.Add(-1)
		return nil, err
	}
	return &slotConn{Conn: c, release: func() { st.connections.Add(-1) }}, nil
}

// slotConn releases its connection slot once, on the first Close.
type slotConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (c *slotConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func (st *clusterState) close() {
	st.h1.close()
	for _, t := range []*http.Transport{st.h2c, st.tlsH2, st.tlsH1} {
		if t != nil {
			t.CloseIdleConnections()
		}
	}
}

// limit returns a breaker threshold, with Envoy's defaults.
func limit(v uint32, def int64) int64 {
	if v == 0 {
		return def
	}
	return int64(v)
}

// isEjected reports whether h is ejected at now, returning expired hosts to service.
func (st *clusterState) isEjected(h *host, now int64) bool {
	until := h.ejectedUntil.Load()
	if until == 0 {
		return false
	}
	if now < until {
		return true
	}
	if h.ejectedUntil.CompareAndSwap(until, 0) {
		st.ejected.Add(-1)
	}
	return false
}

// outcome feeds outlier detection with the result of one request to h: status (0 for a connection
// failure), gateway (502/503/504 or connection failure).
func (c *clusterRT) outcome(h *host, status int) {
	o := c.cfg.Outlier
	if o == nil {
		return
	}
	gateway := status == 0 || status == 502 || status == 503 || status == 504
	fail5xx := status == 0 || status >= 500
	var eject bool
	if fail5xx {
		n := h.consecutive5x.Add(1)
		eject = o.Consecutive5xx > 0 && int64(n) >= int64(o.Consecutive5xx)
	} else {
		h.consecutive5x.Store(0)
	}
	if gateway {
		n := h.consecutiveGw.Add(1)
		eject = eject || (o.ConsecutiveGatewayFailure > 0 && int64(n) >= int64(o.ConsecutiveGatewayFailure))
	} else {
		h.consecutiveGw.Store(0)
	}
	if !eject || h.ejectedUntil.Load() != 0 {
		return
	}
	ejected := int64(c.state.ejected.Load())
	if ejected > 0 && (ejected+1)*100 > int64(o.MaxEjectionPercent)*int64(len(c.all)) {
		return
	}
	n := h.ejections.Add(1)
	d := time.Duration(n) * o.BaseEjectionTime
	if o.MaxEjectionTime > 0 && d > max(o.MaxEjectionTime, o.BaseEjectionTime) {
		d = max(o.MaxEjectionTime, o.BaseEjectionTime)
	}
	if h.ejectedUntil.CompareAndSwap(0, time.Now().Add(d).UnixNano()) {
		c.state.ejected.Add(1)
		h.consecutive5x.Store(0)
		h.consecutiveGw.Store(0)
	}
}
