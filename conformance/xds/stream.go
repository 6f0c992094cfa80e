package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	clustersvc "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointsvc "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenersvc "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routesvc "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs, short names for the checks.
const (
	cds = resource.ClusterType
	eds = resource.EndpointType
	lds = resource.ListenerType
	rds = resource.RouteType
)

var resourceWrapperType = "type.googleapis.com/" + string(proto.MessageName(&discoveryv3.Resource{}))

func short(typeURL string) string {
	switch typeURL {
	case cds:
		return "CDS"
	case eds:
		return "EDS"
	case lds:
		return "LDS"
	case rds:
		return "RDS"
	}
	return typeURL
}

// env is what the checks share: the configuration, one client connection, and what was learned about
// the server's resources.
type env struct {
	cfg      Config
	conn     *grpc.ClientConn
	dialOpts []grpc.DialOption

	mu         sync.Mutex
	violations []string                   // protocol violations seen on any stream (duplicate names)
	versions   map[string]map[string]bool // SotW version_info seen, by type URL

	probeAdded *names // resources the probe service adds, learned on first use
}

func (e *env) violation(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.violations) < 20 {
		e.violations = append(e.violations, fmt.Sprintf(format, args...))
	}
}

// transport selects the gRPC service a stream runs on: ADS, or the per-type service of typeURL.
type transport int

const (
	viaADS transport = iota
	viaPerType
)

// ---- state of the world ----

type sotwClient interface {
	Send(*discoveryv3.DiscoveryRequest) error
	Recv() (*discoveryv3.DiscoveryResponse, error)
	CloseSend() error
}

type typeState struct {
	names   []string
	version string
	nonce   string
}

// sotwStream is a raw SotW stream. It sends the node on the first request only, keeps per type the
// subscribed names, the last ACKed version and the last nonce, and reads responses in a goroutine.
type sotwStream struct {
	e       *env
	cs      sotwClient
	cancel  context.CancelFunc
	in      chan *discoveryv3.DiscoveryResponse
	errc    chan error
	pending []*discoveryv3.DiscoveryResponse
	sent    bool
	state   map[string]*typeState
}

func (e *env) openSotW(ctx context.Context, tr transport, typeURL string) (*sotwStream, error) {
	sctx, cancel := context.WithCancel(ctx)
	var cs sotwClient
	var err error
	switch {
	case tr == viaADS:
		cs, err = discoveryv3.NewAggregatedDiscoveryServiceClient(e.conn).StreamAggregatedResources(sctx, grpc.WaitForReady(true))
	case typeURL == cds:
		cs, err = clustersvc.NewClusterDiscoveryServiceClient(e.conn).StreamClusters(sctx, grpc.WaitForReady(true))
	case typeURL == eds:
		cs, err = endpointsvc.NewEndpointDiscoveryServiceClient(e.conn).StreamEndpoints(sctx, grpc.WaitForReady(true))
	case typeURL == lds:
		cs, err = listenersvc.NewListenerDiscoveryServiceClient(e.conn).StreamListeners(sctx, grpc.WaitForReady(true))
	case typeURL == rds:
		cs, err = routesvc.NewRouteDiscoveryServiceClient(e.conn).StreamRoutes(sctx, grpc.WaitForReady(true))
	default:
		err = fmt.Errorf("no per-type service for %s", typeURL)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening stream: %w", err)
	}
	s := &sotwStream{e: e, cs: cs, cancel: cancel, in: make(chan *discoveryv3.DiscoveryResponse, 64),
		errc: make(chan error, 1), state: map[string]*typeState{}}
	go func() {
		for {
			r, err := cs.Recv()
			if err != nil {
				s.errc <- err
				close(s.in)
				return
			}
			s.in <- r
		}
	}()
	return s, nil
}

func (s *sotwStream) close() { s.cancel() }

func (s *sotwStream) st(typeURL string) *typeState {
	t, ok := s.state[typeURL]
	if !ok {
		t = &typeState{}
		s.state[typeURL] = t
	}
	return t
}

func (s *sotwStream) send(req *discoveryv3.DiscoveryRequest) error {
	if !s.sent {
		req.Node = s.e.cfg.Node
		s.sent = true
	}
	if err := s.cs.Send(req); err != nil {
		return fmt.Errorf("sending %s request: %w", short(req.TypeUrl), err)
	}
	return nil
}

// subscribe sets the names of typeURL (nil: none, the legacy wildcard on a first request) and sends
// them with the last ACKed version and the last nonce of that type.
func (s *sotwStream) subscribe(typeURL string, names ...string) error {
	t := s.st(typeURL)
	t.names = names
	return s.send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names, VersionInfo: t.version, ResponseNonce: t.nonce})
}

// ack accepts r: it sends r's version and nonce with the current names of its type.
func (s *sotwStream) ack(r *discoveryv3.DiscoveryResponse) error {
	t := s.st(r.TypeUrl)
	t.version, t.nonce = r.VersionInfo, r.Nonce
	return s.send(&discoveryv3.DiscoveryRequest{TypeUrl: r.TypeUrl, ResourceNames: t.names, VersionInfo: t.version, ResponseNonce: t.nonce})
}

// nack rejects r: its nonce, the previous version, and an error_detail.
func (s *sotwStream) nack(r *discoveryv3.DiscoveryResponse) error {
	t := s.st(r.TypeUrl)
	t.nonce = r.Nonce
	return s.send(&discoveryv3.DiscoveryRequest{TypeUrl: r.TypeUrl, ResourceNames: t.names, VersionInfo: t.version, ResponseNonce: t.nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "xds-conformance: rejected on purpose"}})
}

func (s *sotwStream) next(ctx context.Context, wait time.Duration) (*discoveryv3.DiscoveryResponse, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r, ok := <-s.in:
		if !ok {
			err := <-s.errc
			s.errc <- err
			if errors.Is(err, io.EOF) {
				err = errors.New("server ended the stream")
			}
			return nil, fmt.Errorf("stream closed: %w", err)
		}
		s.e.checkResponse(r)
		if debug {
			fmt.Fprintf(os.Stderr, "DEBUG sotw %p got %s v=%s n=%s %v\n", s, short(r.TypeUrl), r.VersionInfo, r.Nonce, sotwNames(r))
		}
		return r, nil
	case <-t.C:
		return nil, errTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

var debug = os.Getenv("XDS_CONFORMANCE_DEBUG") != ""

var errTimeout = errors.New("timed out")

// recv returns the next response of typeURL (any type when empty), keeping others for later.
func (s *sotwStream) recv(ctx context.Context, typeURL string) (*discoveryv3.DiscoveryResponse, error) {
	for i, r := range s.pending {
		if typeURL == "" || r.TypeUrl == typeURL {
			s.pending = slices.Delete(s.pending, i, i+1)
			return r, nil
		}
	}
	deadline := time.Now().Add(s.e.cfg.Timeout)
	for {
		r, err := s.next(ctx, time.Until(deadline))
		if errors.Is(err, errTimeout) {
			return nil, fmt.Errorf("no %s response within %v", orAny(short(typeURL)), s.e.cfg.Timeout)
		}
		if err != nil {
			return nil, err
		}
		if typeURL == "" || r.TypeUrl == typeURL {
			return r, nil
		}
		s.pending = append(s.pending, r)
	}
}

// recvAck receives the next response of typeURL and ACKs it.
func (s *sotwStream) recvAck(ctx context.Context, typeURL string) (*discoveryv3.DiscoveryResponse, error) {
	r, err := s.recv(ctx, typeURL)
	if err != nil {
		return nil, err
	}
	return r, s.ack(r)
}

// quiet waits Config.Quiet and returns the first response that arrives (or is pending), nil if none.
func (s *sotwStream) quiet(ctx context.Context) (*discoveryv3.DiscoveryResponse, error) {
	if len(s.pending) > 0 {
		r := s.pending[0]
		s.pending = s.pending[1:]
		return r, nil
	}
	r, err := s.next(ctx, s.e.cfg.Quiet)
	if errors.Is(err, errTimeout) {
		return nil, nil
	}
	return r, err
}

func orAny(s string) string {
	if s == "" {
		return "any"
	}
	return s
}

// ---- incremental ----

type deltaClient interface {
	Send(*discoveryv3.DeltaDiscoveryRequest) error
	Recv() (*discoveryv3.DeltaDiscoveryResponse, error)
	CloseSend() error
}

type deltaStream struct {
	e       *env
	cs      deltaClient
	cancel  context.CancelFunc
	in      chan *discoveryv3.DeltaDiscoveryResponse
	errc    chan error
	pending []*discoveryv3.DeltaDiscoveryResponse
	sent    bool
}

func (e *env) openDelta(ctx context.Context, tr transport, typeURL string) (*deltaStream, error) {
	sctx, cancel := context.WithCancel(ctx)
	var cs deltaClient
	var err error
	switch {
	case tr == viaADS:
		cs, err = discoveryv3.NewAggregatedDiscoveryServiceClient(e.conn).DeltaAggregatedResources(sctx, grpc.WaitForReady(true))
	case typeURL == cds:
		cs, err = clustersvc.NewClusterDiscoveryServiceClient(e.conn).DeltaClusters(sctx, grpc.WaitForReady(true))
	case typeURL == eds:
		cs, err = endpointsvc.NewEndpointDiscoveryServiceClient(e.conn).DeltaEndpoints(sctx, grpc.WaitForReady(true))
	case typeURL == lds:
		cs, err = listenersvc.NewListenerDiscoveryServiceClient(e.conn).DeltaListeners(sctx, grpc.WaitForReady(true))
	case typeURL == rds:
		cs, err = routesvc.NewRouteDiscoveryServiceClient(e.conn).DeltaRoutes(sctx, grpc.WaitForReady(true))
	default:
		err = fmt.Errorf("no per-type service for %s", typeURL)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("opening delta stream: %w", err)
	}
	s := &deltaStream{e: e, cs: cs, cancel: cancel, in: make(chan *discoveryv3.DeltaDiscoveryResponse, 64), errc: make(chan error, 1)}
	go func() {
		for {
			r, err := cs.Recv()
			if err != nil {
				s.errc <- err
				close(s.in)
				return
			}
			s.in <- r
		}
	}()
	return s, nil
}

func (s *deltaStream) close() { s.cancel() }

func (s *deltaStream) send(req *discoveryv3.DeltaDiscoveryRequest) error {
	if !s.sent {
		req.Node = s.e.cfg.Node
		s.sent = true
	}
	if err := s.cs.Send(req); err != nil {
		return fmt.Errorf("sending delta %s request: %w", short(req.TypeUrl), err)
	}
	return nil
}

func (s *deltaStream) subscribe(typeURL, nonce string, sub, unsub []string) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResponseNonce: nonce, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub})
}

func (s *deltaStream) ack(r *discoveryv3.DeltaDiscoveryResponse) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
}

func (s *deltaStream) nack(r *discoveryv3.DeltaDiscoveryResponse) error {
	return s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "xds-conformance: rejected on purpose"}})
}

func (s *deltaStream) next(ctx context.Context, wait time.Duration) (*discoveryv3.DeltaDiscoveryResponse, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r, ok := <-s.in:
		if !ok {
			err := <-s.errc
			s.errc <- err
			if errors.Is(err, io.EOF) {
				err = errors.New("server ended the stream")
			}
			return nil, fmt.Errorf("delta stream closed: %w", err)
		}
		s.e.checkDeltaResponse(r)
		if debug {
			fmt.Fprintf(os.Stderr, "DEBUG delta %p got %s n=%s %v removed %v\n", s, short(r.TypeUrl), r.Nonce, deltaNames(r), r.RemovedResources)
		}
		return r, nil
	case <-t.C:
		return nil, errTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *deltaStream) recv(ctx context.Context, typeURL string) (*discoveryv3.DeltaDiscoveryResponse, error) {
	for i, r := range s.pending {
		if typeURL == "" || r.TypeUrl == typeURL {
			s.pending = slices.Delete(s.pending, i, i+1)
			return r, nil
		}
	}
	deadline := time.Now().Add(s.e.cfg.Timeout)
	for {
		r, err := s.next(ctx, time.Until(deadline))
		if errors.Is(err, errTimeout) {
			return nil, fmt.Errorf("no delta %s response within %v", orAny(short(typeURL)), s.e.cfg.Timeout)
		}
		if err != nil {
			return nil, err
		}
		if typeURL == "" || r.TypeUrl == typeURL {
			return r, nil
		}
		s.pending = append(s.pending, r)
	}
}

func (s *deltaStream) recvAck(ctx context.Context, typeURL string) (*discoveryv3.DeltaDiscoveryResponse, error) {
	r, err := s.recv(ctx, typeURL)
	if err != nil {
		return nil, err
	}
	return r, s.ack(r)
}

func (s *deltaStream) quiet(ctx context.Context) (*discoveryv3.DeltaDiscoveryResponse, error) {
	if len(s.pending) > 0 {
		r := s.pending[0]
		s.pending = s.pending[1:]
		return r, nil
	}
	r, err := s.next(ctx, s.e.cfg.Quiet)
	if errors.Is(err, errTimeout) {
		return nil, nil
	}
	return r, err
}

// ---- resources ----

// checkResponse records protocol violations every response is checked for: duplicate resource names.
func (e *env) checkResponse(r *discoveryv3.DiscoveryResponse) {
	e.mu.Lock()
	if e.versions == nil {
		e.versions = map[string]map[string]bool{}
	}
	if e.versions[r.TypeUrl] == nil {
		e.versions[r.TypeUrl] = map[string]bool{}
	}
	e.versions[r.TypeUrl][r.VersionInfo] = true
	e.mu.Unlock()
	if d := duplicates(sotwNames(r)); len(d) > 0 {
		e.violation("%s response version %q repeats %s", short(r.TypeUrl), r.VersionInfo, strings.Join(d, ", "))
	}
}

func (e *env) checkDeltaResponse(r *discoveryv3.DeltaDiscoveryResponse) {
	if d := duplicates(deltaNames(r)); len(d) > 0 {
		e.violation("delta %s response repeats %s", short(r.TypeUrl), strings.Join(d, ", "))
	}
	if d := duplicates(r.RemovedResources); len(d) > 0 {
		e.violation("delta %s response repeats %s in removed_resources", short(r.TypeUrl), strings.Join(d, ", "))
	}
}

func duplicates(names []string) []string {
	seen := map[string]int{}
	var d []string
	for _, n := range names {
		seen[n]++
		if seen[n] == 2 {
			d = append(d, n)
		}
	}
	return d
}

// decode unmarshals one resource, unwrapping a discovery Resource when the server sends that form.
func decode(a *anypb.Any) (proto.Message, error) {
	if a.GetTypeUrl() == resourceWrapperType {
		var w discoveryv3.Resource
		if err := a.UnmarshalTo(&w); err != nil {
			return nil, err
		}
		a = w.Resource
	}
	return a.UnmarshalNew()
}

func nameOf(m proto.Message) string {
	switch v := m.(type) {
	case *clusterv3.Cluster:
		return v.Name
	case *endpointv3.ClusterLoadAssignment:
		return v.ClusterName
	case *listenerv3.Listener:
		return v.Name
	case *routev3.RouteConfiguration:
		return v.Name
	case *tlsv3.Secret:
		return v.Name
	case interface{ GetName() string }:
		return v.GetName()
	}
	return ""
}

func sotwNames(r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range r.Resources {
		if a.GetTypeUrl() == resourceWrapperType {
			var w discoveryv3.Resource
			if err := a.UnmarshalTo(&w); err == nil && w.Name != "" {
				out = append(out, w.Name)
				continue
			}
		}
		m, err := decode(a)
		if err != nil {
			out = append(out, "<undecodable "+a.GetTypeUrl()+">")
			continue
		}
		out = append(out, nameOf(m))
	}
	return out
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.Resources {
		n := res.Name
		if n == "" && res.Resource != nil {
			if m, err := decode(res.Resource); err == nil {
				n = nameOf(m)
			}
		}
		out = append(out, n)
	}
	return out
}

func set(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func sorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// missing returns the names of want absent from got.
func missing(want []string, got []string) []string {
	g := set(got)
	var out []string
	for _, n := range want {
		if !g[n] {
			out = append(out, n)
		}
	}
	return out
}

func contains(names []string, n string) bool { return slices.Contains(names, n) }
