// Package server serves the translated configuration over xDS: ADS (state-of-the-world and delta)
// and the per-type services, CSDS, gRPC reflection and the admin HTTP endpoints.
//
// Caches: each resource type lives in typedCaches, which keep one copy of each resource version
// (marshaled lazily, once) shared by every stream, a version per resource, and an immutable
// snapshot per change. Endpoints, routes and secrets are the same for every proxy and share one
// cache each; clusters have two (sidecars with mTLS, proxyless gRPC without SDS); listeners have one
// for gRPC API listeners and one per distinct set of inbound ports among sidecars (pods of one
// workload share it). Update feeds them in the order CDS → EDS → LDS → RDS, and every stream
// pushes in that order. SotW ADS streams run our own loop over the snapshots (sotw.go); delta and
// the per-type services run go-control-plane's stream servers over a LinearCache in each
// typedCache, fed the same changes.
package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
)

// Options configure a Server.
type Options struct {
	Logger    *slog.Logger
	Translate xds.Options
	// VersionPrefix starts every version this server sends. Empty: the start time and random bytes,
	// so versions never repeat across restarts or replicas.
	VersionPrefix string
	// Now is the clock (for latencies and CSDS timestamps); time.Now when nil.
	Now func() time.Time
}

// Server is the xDS server. Update and SetTrustBundle may be called from any goroutine.
type Server struct {
	log    *slog.Logger
	opts   Options
	now    func() time.Time
	prefix string

	synced atomic.Bool

	// buildMu serializes translation: builder keeps the last Mesh's resources to reuse.
	buildMu sync.Mutex
	builder *xds.Builder

	// mu guards everything below and serializes Update (so caches are fed in order).
	mu        sync.Mutex
	state     *discovery.State
	mesh      *xds.Mesh
	updatedAt atomic.Int64 // unix nanos of the last Update, read by the tracker without mu
	updates   uint64
	clusters  *typedCache // sidecars
	grpcCDS   *typedCache // proxyless gRPC
	endpoints *typedCache
	routes    *typedCache
	grpcRDS   *typedCache // proxyless gRPC: outbound routes only, as xds.Mesh.GRPCRoutes
	apiLDS    *typedCache
	secrets   *typedCache
	groups    map[string]*listenerGroup
	lds       ldsWatches // delta watches on listener groups (regroup.go)
	// names holds every resource name served, one copy each: requests naming them share it.
	names atomic.Pointer[map[string]string]

	xds     serverv3.Server
	clients *tracker
	// adsIDs numbers our SotW ADS streams across every grpc.Server the Server is registered on
	// (weft-control serves it on two ports): the tracker keys streams by id.
	adsIDs  atomic.Int64
	metrics *metrics
}

// typedCache is one set of resources of a type: a LinearCache (for the delta and per-type streams
// of go-control-plane), the snapshot our SotW ADS streams read, and the resources last put in it, so
// Update sends only what changed.
type typedCache struct {
	typeURL string
	prefix  string
	linear  *cache.LinearCache
	current map[string]proto.Message
	wire    map[string][]byte // encoding of each current resource
	bytes   int

	seq  uint64 // changes so far; the snapshot's version is prefix+seq (only set touches it)
	snap atomic.Pointer[snapshot]
	subs watchers
}

type listenerGroup struct {
	ports []xds.InboundPort
	lds   *typedCache
}

// New makes a Server. It answers streams with Unavailable until the first Update.
func New(o Options) *Server {
	s := &Server{log: o.Logger, opts: o, now: o.Now, prefix: o.VersionPrefix, groups: map[string]*listenerGroup{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.prefix == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		s.prefix = strconv.FormatInt(time.Now().Unix(), 36) + "-" + hex.EncodeToString(b[:]) + "-"
	}
	s.builder = xds.NewBuilder(o.Translate)
	s.metrics = newMetrics()
	s.names.Store(&map[string]string{})
	s.clusters = s.newCache(xds.ClusterType)
	s.grpcCDS = s.newCache(xds.ClusterType)
	s.endpoints = s.newCache(xds.EndpointType)
	s.routes = s.newCache(xds.RouteType)
	s.grpcRDS = s.newCache(xds.RouteType)
	s.apiLDS = s.newCache(xds.ListenerType)
	s.secrets = s.newCache(xds.SecretType)
	s.clients = newTracker(s)
	s.xds = serverv3.NewServer(context.Background(), router{s}, gcpCallbacks{s.clients}, sotw.WithOrderedADS())
	return s
}

func (s *Server) newCache(typeURL string) *typedCache {
	c := &typedCache{
		typeURL: typeURL,
		prefix:  s.prefix,
		linear:  cache.NewLinearCache(typeURL, cache.WithVersionPrefix(s.prefix), cache.WithLogger(cacheLogger{s.log})),
		current: map[string]proto.Message{},
	}
	c.snap.Store(newSnapshot(c, nil, nil, nil, nil))
	return c
}

// set makes the cache hold exactly want, sending only changed and deleted resources to watchers.
func (c *typedCache) set(want map[string]proto.Message) (changed int, err error) {
	update := map[string]types.Resource{}
	wire := make(map[string][]byte, len(want))
	var deleted []string
	size := 0
	for name, m := range want {
		if old, ok := c.current[name]; ok && old == m {
			// The very message of the last set (the Builder keeps what did not change).
			wire[name] = c.wire[name]
			size += len(c.wire[name])
			continue
		}
		// Compared by their encoding (the one every stream is sent): faster than proto.Equal, and
		// a changed resource is then marshaled only once.
		b, err := deterministic.Marshal(m)
		if err != nil {
			return 0, fmt.Errorf("encoding %s %q: %w", c.typeURL, name, err)
		}
		size += len(b)
		if old, ok := c.wire[name]; ok && bytes.Equal(old, b) {
			wire[name] = old
			continue
		}
		wire[name] = b
		update[name] = m
	}
	for name := range c.current {
		if _, ok := want[name]; !ok {
			deleted = append(deleted, name)
		}
	}
	c.bytes = size
	if len(update) == 0 && len(deleted) == 0 {
		return 0, nil
	}
	c.current, c.wire = want, wire
	c.seq++
	c.snap.Store(newSnapshot(c, c.snap.Load(), update, wire, deleted))
	c.subs.notify()
	return len(update) + len(deleted), c.linear.UpdateResources(update, deleted)
}

// deterministic is how resources are encoded (as go-control-plane's cache.MarshalResource does).
var deterministic = proto.MarshalOptions{Deterministic: true}

func byName[T proto.Message](xs []T, name func(T) string) map[string]proto.Message {
	out := make(map[string]proto.Message, len(xs))
	for _, x := range xs {
		out[name(x)] = x
	}
	return out
}

func nameOf[T interface{ GetName() string }](x T) string { return x.GetName() }

// Update translates a new State and pushes what changed. The first Update marks the server synced.
func (s *Server) Update(st *discovery.State) {
	start := s.now()
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	defer s.regroup() // regroup.go; after s.mu is released
	mesh := s.builder.Build(st)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.state, s.mesh = st, mesh
	s.updatedAt.Store(start.UnixNano())
	s.updates++
	changed := 0
	feed := func(c *typedCache, want map[string]proto.Message) {
		n, err := c.set(want)
		if err != nil {
			s.log.Error("updating xDS cache", "type", c.typeURL, "error", err)
		}
		changed += n
	}
	// Order matters: a client must know a cluster before its endpoints, and clusters and listeners
	// before the routes that name them.
	feed(s.clusters, byName(mesh.Clusters, nameOf))
	feed(s.grpcCDS, byName(mesh.GRPCClusters, nameOf))
	feed(s.endpoints, byName(mesh.Endpoints, claName))
	feed(s.apiLDS, byName(mesh.APIListeners, nameOf))
	for _, g := range s.groups {
		feed(g.lds, s.groupListeners(g.ports))
	}
	feed(s.routes, byName(mesh.Routes, nameOf))
	feed(s.grpcRDS, byName(mesh.GRPCRoutes, nameOf))
	if changed > 0 {
		names := map[string]string{}
		for _, c := range s.caches() {
			for n := range c.current {
				names[n] = n
			}
		}
		s.names.Store(&names)
	}
	s.metrics.observeUpdate(s, changed, s.now().Sub(start))
	if !s.synced.Swap(true) {
		s.log.Info("xDS server ready", "version_prefix", s.prefix, "services", len(st.Services))
	}
}

// caches are every typedCache; s.mu is held.
func (s *Server) caches() []*typedCache {
	cs := []*typedCache{s.clusters, s.grpcCDS, s.endpoints, s.routes, s.grpcRDS, s.apiLDS, s.secrets}
	for _, g := range s.groups {
		cs = append(cs, g.lds)
	}
	return cs
}

func claName(c *endpoint.ClusterLoadAssignment) string { return c.GetClusterName() }

func (s *Server) groupListeners(ports []xds.InboundPort) map[string]proto.Message {
	in := xds.InboundListener(ports)
	return map[string]proto.Message{in.GetName(): in, s.mesh.Outbound.GetName(): s.mesh.Outbound}
}

// SetTrustBundle serves pemBundle (PEM CA certificates) as the SDS secret ROOTCA, the trust bundle
// every proxy validates peers against. Call it at startup and whenever the bundle changes.
func (s *Server) SetTrustBundle(pemBundle []byte) error {
	if err := checkPEMCertificates(pemBundle); err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	secret := &tls.Secret{
		Name: xds.TrustBundleSecret,
		Type: &tls.Secret_ValidationContext{ValidationContext: &tls.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: pemBundle}},
		}},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.secrets.set(map[string]proto.Message{secret.GetName(): secret})
	return err
}

// Synced reports whether the server has a State to serve.
func (s *Server) Synced() bool { return s.synced.Load() }

// VersionPrefix is the prefix of every version this server sends.
func (s *Server) VersionPrefix() string { return s.prefix }

// State returns the last State given to Update, or nil.
func (s *Server) State() *discovery.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// cacheFor picks the cache for a request: by type, and for clusters and listeners by who asks.
func (s *Server) cacheFor(typeURL string, node *core.Node, names []string) (*cache.LinearCache, error) {
	c, err := s.typedCacheFor(typeURL, xds.ProxyFromNode(node), names)
	if err != nil {
		return nil, err
	}
	return c.linear, nil
}

func (s *Server) typedCacheFor(typeURL string, p xds.Proxy, names []string) (*typedCache, error) {
	if !s.synced.Load() {
		return nil, errNotSynced
	}
	switch typeURL {
	case xds.ClusterType:
		if p.Kind == xds.KindGRPC {
			return s.grpcCDS, nil
		}
		return s.clusters, nil
	case xds.EndpointType:
		return s.endpoints, nil
	case xds.RouteType:
		if p.Kind == xds.KindGRPC {
			return s.grpcRDS, nil
		}
		return s.routes, nil
	case xds.SecretType:
		return s.secrets, nil
	case xds.ListenerType:
		if p.Kind == xds.KindGRPC || asksForAPIListeners(names) {
			return s.apiLDS, nil
		}
		return s.listenerGroup(p), nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "weft-control does not serve resources of type %q", typeURL)
}

// asksForAPIListeners: a client naming listeners other than inbound/outbound wants API listeners.
func asksForAPIListeners(names []string) bool {
	for _, n := range names {
		if n != xds.InboundListenerName && n != xds.OutboundListenerName && n != "*" {
			return true
		}
	}
	return false
}

func (s *Server) listenerGroup(p xds.Proxy) *typedCache {
	s.mu.Lock()
	defer s.mu.Unlock()
	ports := xds.InboundPorts(s.state, p, s.opts.Translate)
	var key strings.Builder
	for _, ip := range ports {
		key.WriteString(ip.Key() + ",")
	}
	g, ok := s.groups[key.String()]
	if !ok {
		g = &listenerGroup{ports: ports, lds: s.newCache(xds.ListenerType)}
		if _, err := g.lds.set(s.groupListeners(ports)); err != nil {
			s.log.Error("filling listener cache", "error", err)
		}
		s.groups[key.String()] = g
	}
	return g.lds
}

var errNotSynced = status.Error(codes.Unavailable, "weft-control has not synced with Kubernetes yet; keep the last configuration and retry")

// router is the cache.Cache the go-control-plane server sees: it hands each watch to the right
// LinearCache.
type router struct{ s *Server }

func (r router) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	c, err := r.s.cacheFor(req.GetTypeUrl(), req.GetNode(), req.GetResourceNames())
	if err != nil {
		return nil, err
	}
	if req.GetErrorDetail() != nil && !strings.HasPrefix(req.GetVersionInfo(), r.s.prefix) {
		// A NACK of the first response carries no version (or another server's); the LinearCache
		// would take that for a client with nothing and resend the rejected version at once, in a
		// loop. Give it one of ours, so it compares against what the stream was sent.
		req = proto.Clone(req).(*cache.Request)
		req.VersionInfo = r.s.prefix + "nacked"
	}
	return c.CreateWatch(req, sub, ch)
}

func (r router) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	p := xds.ProxyFromNode(req.GetNode())
	c, err := r.s.typedCacheFor(req.GetTypeUrl(), p, req.GetResourceNamesSubscribe())
	if err != nil {
		return nil, err
	}
	if req.GetTypeUrl() == xds.ListenerType && c != r.s.apiLDS {
		return r.s.createDeltaLDSWatch(c, p, req, sub, ch) // regroup.go
	}
	return c.linear.CreateDeltaWatch(req, sub, ch)
}

func (r router) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, status.Error(codes.Unimplemented, "weft-control serves xDS over streams only (REST fetch is not supported)")
}

// cacheLogger sends go-control-plane's logs to slog, one level down: its Info is chatty.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(f string, a ...any) {}
func (c cacheLogger) Infof(f string, a ...any) {
	// Formatting is costly (the cache logs whole subscription maps): only when someone listens.
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug(fmt.Sprintf(f, a...))
	}
}
func (c cacheLogger) Warnf(f string, a ...any)  { c.l.Warn(fmt.Sprintf(f, a...)) }
func (c cacheLogger) Errorf(f string, a ...any) { c.l.Error(fmt.Sprintf(f, a...)) }

// checkPEMCertificates reports whether b holds at least one PEM certificate and nothing else.
func checkPEMCertificates(b []byte) error {
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if len(bytes.TrimSpace(rest)) != 0 {
				return errors.New("not PEM")
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("a %s block; want only CERTIFICATE blocks", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no certificate")
	}
	return nil
}

// FollowTrustBundle serves bundle() as ROOTCA now and again each time the channel from changed()
// closes, until ctx ends. It fits identity.CA: changed is ca.Changed, and bundle returns the current
// issuer's BundlePEM (nil while there is none, which keeps the last bundle).
func (s *Server) FollowTrustBundle(ctx context.Context, changed func() <-chan struct{}, bundle func() []byte) {
	for {
		ch := changed()
		if pem := bundle(); len(pem) > 0 {
			if err := s.SetTrustBundle(pem); err != nil {
				s.log.Error("not serving the new trust bundle", "error", err)
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// exists reports whether the resource typeURL/name is served to the client with this node.
func (s *Server) exists(typeURL string, node *core.Node, name string) bool {
	p := xds.ProxyFromNode(node)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch typeURL {
	case xds.ClusterType:
		if p.Kind == xds.KindGRPC {
			return s.grpcCDS.current[name] != nil
		}
		return s.clusters.current[name] != nil
	case xds.EndpointType:
		return s.endpoints.current[name] != nil
	case xds.RouteType:
		if p.Kind == xds.KindGRPC {
			return s.grpcRDS.current[name] != nil
		}
		return s.routes.current[name] != nil
	case xds.SecretType:
		return s.secrets.current[name] != nil
	case xds.ListenerType:
		return s.apiLDS.current[name] != nil || name == xds.InboundListenerName || name == xds.OutboundListenerName
	}
	return true // not ours to judge
}
