// Package proxy is weft-proxy's data path: the outbound (transparent), inbound and explicit HTTP proxy
// listeners; filter-chain matching and protocol detection; HTTP/1.1, HTTP/2, gRPC and opaque TCP
// forwarding; load balancing, timeouts, retries, circuit breakers and outlier detection; mTLS; metrics.
//
// The configuration comes as whole config.Snapshots through Update, which builds an immutable runtime
// and swaps it in through an atomic pointer: the request path loads that pointer and takes no lock.
package proxy

import (
	"cmp"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/weftmesh/weft/dataplane"
	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/tracing"
)

// Options configure a Proxy.
type Options struct {
	// Identity, when set, enables mTLS (the SDS secrets "default" and "ROOTCA" of the config map to it).
	// Without it the proxy runs plaintext only.
	Identity dataplane.Identity
	// Metrics receives the proxy's metrics (a new set when nil); its WritePrometheus serves them.
	Metrics *metrics.Set
	// Workload labels every golden metric (namespace, pod, deployment).
	Workload Workload
	Logger   *slog.Logger
	// DetectTimeout bounds the first read of protocol detection (default 1 s).
	DetectTimeout time.Duration
	// IdleTimeout closes an HTTP client connection that sends no request for this long
	// (DefaultIdleTimeout when zero); ReadHeaderTimeout one whose request head is not whole this long
	// after it began (DefaultReadHeaderTimeout when zero).
	IdleTimeout, ReadHeaderTimeout time.Duration
	// H2Relay serves HTTP/2 client connections (h2c, and mTLS with ALPN h2) with the frame relay of
	// h2relay.go instead of net/http's server (--h2-relay).
	H2Relay bool
	// Tracer, when set, traces requests (trace.go) and exports their spans; its Run is the caller's.
	Tracer *tracing.Exporter
}

// Proxy serves the listeners with the latest configuration.
type Proxy struct {
	rt       atomic.Pointer[runtime]
	identity dataplane.Identity
	metrics  *Metrics
	log      *slog.Logger
	detect   time.Duration
	rp       *httputil.ReverseProxy
	tracer   *tracing.Exporter // nil: tracing is off

	idleTimeout, readHeaderTimeout time.Duration

	// updateMu serializes Update; the maps below belong to it.
	updateMu      sync.Mutex
	clusterStates map[string]*clusterState
	hosts         map[string]*host

	// configured is closed, and hasConfig set, when the first complete configuration is installed:
	// connections accepted before it wait for it (firstConfigWait) rather than meet a partial one.
	configured   chan struct{}
	hasConfig    atomic.Bool
	configuredMu sync.Once

	draining atomic.Bool
	servers  []*http.Server
	mu       sync.Mutex // guards listeners, servers, tunnels
	lis      []net.Listener
	tunnels  map[net.Conn]struct{}
	tunnelWG sync.WaitGroup

	outbound, inbound *connServer
	fast              fastConns // connections on the HTTP/1.1 fast path (h1server.go)
	sessions          tlsSessions
	tap               tapHub   // open taps (tap.go)
	authzTCP          tcpConns // open inbound TCP connections, decided again at each Update (authz_current.go)
	h2relay           bool
	relays            relaySessions // the HTTP/2 relay's client connections (h2relay.go)
}

// New returns a proxy with an empty configuration.
func New(opts Options) *Proxy {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DetectTimeout <= 0 {
		opts.DetectTimeout = time.Second
	}
	p := &Proxy{
		identity:          opts.Identity,
		tracer:            opts.Tracer,
		metrics:           NewMetrics(opts.Metrics, opts.Workload),
		log:               opts.Logger.With("component", "proxy"),
		detect:            opts.DetectTimeout,
		idleTimeout:       cmp.Or(opts.IdleTimeout, DefaultIdleTimeout),
		readHeaderTimeout: cmp.Or(opts.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		clusterStates:     map[string]*clusterState{},
		hosts:             map[string]*host{},
		tunnels:           map[net.Conn]struct{}{},
		configured:        make(chan struct{}),
		h2relay:           opts.H2Relay,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    roundTripper{p},
		ErrorHandler: p.proxyError,
		BufferPool:   bufferPool{},
		ErrorLog:     slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	p.rt.Store(p.buildRuntime(&config.Snapshot{}))
	p.outbound = p.newConnServer("outbound")
	p.inbound = p.newConnServer("inbound")
	return p
}

// Update installs a new configuration. Call it from one goroutine (the xDS client's OnUpdate).
func (p *Proxy) Update(s *config.Snapshot) {
	p.updateMu.Lock()
	defer p.updateMu.Unlock()
	rt := p.buildRuntime(s)
	p.rt.Store(rt)
	p.reauthorize(rt) // authz_current.go
	p.metrics.retain(s)
	if s.Complete {
		p.configuredMu.Do(func() { p.hasConfig.Store(true); close(p.configured) })
	}
}

// firstConfigWait bounds how long a connection accepted before the first complete configuration
// waits for it. A proxy that starts (or restarts) listens at once, and its configuration arrives in
// parts (listeners before their routes): a request served in between would get a 503 "no route" or a
// closed connection, though the proxy would have served it a moment later. Past the wait, it is
// served with whatever configuration there is (refused: new pods fail closed), and later connections
// no longer wait.
var firstConfigWait atomic.Int64 // nanoseconds; 10 s (tests shorten it)

func init() { firstConfigWait.Store(int64(10 * time.Second)) }

// awaitConfig waits for the first complete configuration, at most firstConfigWait.
func (p *Proxy) awaitConfig() {
	if p.hasConfig.Load() {
		return
	}
	t := time.NewTimer(time.Duration(firstConfigWait.Load()))
	defer t.Stop()
	select {
	case <-p.configured:
	case <-t.C:
		// The wait is spent once: a configuration that stays incomplete must not delay every later
		// connection by firstConfigWait.
		p.configuredMu.Do(func() { p.hasConfig.Store(true); close(p.configured) })
	}
}

// Snapshot returns the configuration in use.
func (p *Proxy) Snapshot() *config.Snapshot { return p.rt.Load().snap }

// Ready reports whether the proxy holds a complete configuration and, when identity is configured, a
// certificate; a draining proxy is not ready.
func (p *Proxy) Ready() (bool, string) {
	if p.draining.Load() {
		return false, "draining"
	}
	if s := p.rt.Load().snap; s == nil || !s.Complete {
		return false, "waiting for a complete xDS configuration"
	}
	if p.identity != nil {
		if c, err := p.identity.Certificate(); err != nil || c == nil {
			return false, "waiting for the workload certificate"
		}
	}
	return true, "ready"
}

// ServeOutbound accepts connections for the "outbound" listener (transparent: original destination).
// Without iptables, a listener bound on the destination address itself works the same way.
func (p *Proxy) ServeOutbound(l net.Listener) error { return p.serveListener(l, "outbound") }

// ServeInbound accepts connections for the "inbound" listener.
func (p *Proxy) ServeInbound(l net.Listener) error { return p.serveListener(l, "inbound") }

// ServeHTTPProxy serves the explicit HTTP proxy (absolute-form requests and CONNECT), routed by
// authority through the outbound route configurations and clusters.
//
// Its connections go through the HTTP/1.1 fast path's door (serveHTTP1) like the transparent
// listeners', so that a request head parsers would split differently is refused the same way
// (ambiguousHead); absolute-form requests and CONNECT then go to net/http's server.
func (p *Proxy) ServeHTTPProxy(l net.Listener) error {
	return p.acceptLoop(l, func(c net.Conn) {
		p.awaitConfig()
		p.serveHTTP1(c, &connInfo{direction: "outbound", explicit: true}, p.outbound)
	})
}

func (p *Proxy) track(l net.Listener, srv *http.Server) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l != nil {
		p.lis = append(p.lis, l)
	}
	if srv != nil {
		p.servers = append(p.servers, srv)
	}
}

// Shutdown drains: it stops accepting, lets in-flight requests and tunnels finish until ctx ends, then
// closes what is left.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.draining.Store(true)
	// The connections still waiting for a first configuration (awaitConfig) stop waiting: they see the
	// drain and close, rather than outlive the Shutdown by up to firstConfigWait.
	p.configuredMu.Do(func() { p.hasConfig.Store(true); close(p.configured) })
	p.mu.Lock()
	for _, l := range p.lis {
		l.Close()
	}
	servers := append([]*http.Server{p.outbound.srv, p.inbound.srv}, p.servers...)
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Shutdown(ctx) }()
	}
	p.fast.closeIdle()
	p.relays.drain()
	done := make(chan struct{})
	go func() { wg.Wait(); p.tunnelWG.Wait(); p.fast.wg.Wait(); p.relays.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		p.mu.Lock()
		for c := range p.tunnels {
			c.Close()
		}
		p.mu.Unlock()
		p.fast.closeAll()
		p.relays.closeAll()
		for _, s := range servers {
			s.Close()
		}
		return ctx.Err()
	}
}

type bufferPool struct{}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (bufferPool) Get() []byte  { return *(bufPool.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { bufPool.Put(&b) }
