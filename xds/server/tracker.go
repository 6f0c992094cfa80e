package server

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	admin "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/weftmesh/weft/xds"
)

// tracker follows every stream through the go-control-plane callbacks: what was sent, what was
// ACKed, what was NACKed and why. CSDS, /debug/ and the metrics read it. A closed stream's entry is
// deleted, so a disconnected proxy leaves nothing behind.
type tracker struct {
	s *Server

	mu      sync.Mutex
	streams map[int64]*streamState
}

type streamState struct {
	id          int64
	delta       bool
	node        *core.Node
	proxy       xds.Proxy
	connectedAt time.Time
	peer        peerCert // the client certificate of an mTLS stream; zero on plaintext
	types       map[string]*typeState
}

// peerCert is what a stream's client certificate says, read once when the stream opens.
type peerCert struct {
	id       string    // the SPIFFE ID (URI SAN)
	notAfter time.Time // zero when there was no client certificate
}

// peerCertOf reads the verified client certificate of a stream's context (an mTLS port), if any.
func peerCertOf(ctx context.Context) peerCert {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return peerCert{}
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return peerCert{}
	}
	leaf := info.State.PeerCertificates[0]
	pc := peerCert{notAfter: leaf.NotAfter}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			pc.id = u.String()
			break
		}
	}
	return pc
}

type typeState struct {
	requested    map[string]bool // names subscribed; empty with wildcard
	wildcard     bool
	lastNonce    string
	lastVersion  string
	sentAt       time.Time
	ackedVersion string
	nack         *nackState
	resources    map[string]resourceState
	lastSent     *sentRecord // the last response (nonce lastNonce)
}

type nackState struct {
	version, nonce, detail string
	at                     time.Time
}

// resourceState is a resource as last sent to a stream. What happened to it since (ACK, NACK) is
// what happened to the response that carried it, which every resource of that response shares.
type resourceState struct {
	version string
	config  *anypb.Any
	*sentRecord
}

type sentRecord struct {
	nonce  string
	sentAt time.Time
	acked  bool
	nacked string // error detail when the client rejected it
	nackAt time.Time
}

func newTracker(s *Server) *tracker { return &tracker{s: s, streams: map[int64]*streamState{}} }

func (t *tracker) open(ctx context.Context, id int64, delta bool) error {
	if !t.s.Synced() {
		t.s.metrics.rejectedStreams.Inc()
		return errNotSynced
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[id] = &streamState{id: id, delta: delta, connectedAt: t.s.now(), peer: peerCertOf(ctx), types: map[string]*typeState{}}
	return nil
}

func (t *tracker) closed(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st, ok := t.streams[id]; ok && st.node != nil {
		t.s.metrics.connected.WithLabelValues(string(st.proxy.Kind)).Dec()
	}
	delete(t.streams, id)
}

// stream returns the state of stream id, recording its node on the first request that has one.
func (t *tracker) stream(id int64, node *core.Node) *streamState {
	st, ok := t.streams[id]
	if !ok {
		return nil
	}
	if st.node == nil && node != nil {
		st.node = node
		st.proxy = xds.ProxyFromNode(node)
		t.s.metrics.connected.WithLabelValues(string(st.proxy.Kind)).Inc()
	}
	return st
}

func (st *streamState) typ(url string) *typeState {
	ts, ok := st.types[url]
	if !ok {
		ts = &typeState{requested: map[string]bool{}, resources: map[string]resourceState{}}
		st.types[url] = ts
	}
	return ts
}

// ackOrNack handles the response nonce and error detail of a request.
func (t *tracker) ackOrNack(st *streamState, typeURL, nonce, version string, errDetail string, hasErr bool) {
	ts := st.typ(typeURL)
	if nonce == "" {
		return
	}
	now := t.s.now()
	short := shortType(typeURL)
	if hasErr {
		ts.nack = &nackState{version: ts.lastVersion, nonce: nonce, detail: errDetail, at: now}
		for _, r := range ts.resources {
			if r.nonce == nonce {
				r.nacked, r.acked, r.nackAt = errDetail, false, now
				break // they all share the one record
			}
		}
		t.s.metrics.of(short).nacks.Inc()
		t.s.log.Warn("proxy rejected configuration (NACK)", "node", st.node.GetId(), "type", short, "version", ts.lastVersion, "error", errDetail)
		return
	}
	matched := false
	if nonce == ts.lastNonce {
		// The usual ACK: of the last response, whose record is at hand.
		if ts.lastSent != nil {
			ts.lastSent.acked, ts.lastSent.nacked = true, ""
		}
	} else {
		for _, r := range ts.resources {
			if r.nonce == nonce {
				r.acked, r.nacked = true, ""
				matched = true
				break // they all share the one record
			}
		}
	}
	if nonce != ts.lastNonce && !matched {
		return // an ACK of something superseded
	}
	if nonce == ts.lastNonce {
		ts.ackedVersion = version
		if st.delta {
			ts.ackedVersion = ts.lastVersion
		}
		ts.nack = nil
		t.s.metrics.of(short).ackLatency.Observe(now.Sub(ts.sentAt).Seconds())
		updatedAt := time.Unix(0, t.s.updatedAt.Load())
		if !ts.sentAt.Before(updatedAt) {
			t.s.metrics.of(short).convergence.Observe(now.Sub(updatedAt).Seconds())
		}
	}
}

// OnStreamOpen implements the go-control-plane callbacks: streams opened before the first State
// get Unavailable, so proxies keep their last configuration and retry.
func (t *tracker) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return t.open(ctx, id, false)
}

func (t *tracker) OnStreamClosed(id int64, _ *core.Node) { t.closed(id) }

func (t *tracker) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return t.open(ctx, id, true)
}

func (t *tracker) OnDeltaStreamClosed(id int64, _ *core.Node) { t.closed(id) }

func (t *tracker) OnStreamRequest(id int64, req *discoverypb.DiscoveryRequest) error {
	t.sotwRequest(id, req, false)
	return nil
}

// sotwRequest records a SotW request. unchanged tells that its names are those of the stream's
// previous request of the type (as an ACK's usually are), so the subscription needs no new look.
func (t *tracker) sotwRequest(id int64, req *discoverypb.DiscoveryRequest, unchanged bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stream(id, req.GetNode())
	if st == nil {
		return
	}
	ts := st.typ(req.GetTypeUrl())
	if req.GetResponseNonce() != "" && req.GetResponseNonce() != ts.lastNonce {
		return // stale nonce: the server ignores this request, and so do we
	}
	if unchanged {
		t.ackOrNack(st, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
		return
	}
	ts.wildcard = len(req.GetResourceNames()) == 0 || slices.Contains(req.GetResourceNames(), "*")
	if !sameNames(ts.requested, req.GetResourceNames()) { // an ACK usually repeats the names: keep the map
		clear(ts.requested)
		for _, n := range req.GetResourceNames() {
			ts.requested[n] = true
		}
	}
	if !ts.wildcard {
		for name := range ts.resources {
			if !ts.requested[name] {
				delete(ts.resources, name)
			}
		}
	}
	t.ackOrNack(st, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
}

func (t *tracker) OnStreamResponse(_ context.Context, id int64, req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
	t.sotwResponse(id, req, resp, nil)
}

// sotwResponse records a SotW response; names, when known, are the names of its resources.
func (t *tracker) sotwResponse(id int64, req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse, names []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stream(id, req.GetNode())
	if st == nil {
		return
	}
	ts := st.typ(resp.GetTypeUrl())
	now := t.s.now()
	ts.lastNonce, ts.lastVersion, ts.sentAt = resp.GetNonce(), resp.GetVersionInfo(), now
	if resp.GetTypeUrl() == xds.ListenerType || resp.GetTypeUrl() == xds.ClusterType {
		clear(ts.resources) // full state: what is not in the response is gone
	}
	size := 0
	rec := &sentRecord{nonce: resp.GetNonce(), sentAt: now}
	ts.lastSent = rec
	if len(ts.resources) == 0 {
		ts.resources = make(map[string]resourceState, len(resp.GetResources()))
	}
	for i, a := range resp.GetResources() {
		size += len(a.GetValue())
		name := ""
		if names != nil {
			name = names[i]
		} else {
			name = resourceName(a)
		}
		ts.resources[name] = resourceState{version: resp.GetVersionInfo(), config: a, sentRecord: rec}
	}
	short := shortType(resp.GetTypeUrl())
	tm := t.s.metrics.of(short)
	tm.pushes.Inc()
	tm.pushedBytes.Add(float64(size))
}

func (t *tracker) OnStreamDeltaRequest(id int64, req *discoverypb.DeltaDiscoveryRequest) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stream(id, req.GetNode())
	if st == nil {
		return nil
	}
	ts := st.typ(req.GetTypeUrl())
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			ts.wildcard = true
			continue
		}
		ts.requested[n] = true
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			ts.wildcard = false
			continue
		}
		delete(ts.requested, n)
		delete(ts.resources, n)
	}
	if req.GetResponseNonce() == "" && len(req.GetResourceNamesSubscribe()) == 0 && len(ts.requested) == 0 && len(req.GetInitialResourceVersions()) == 0 {
		ts.wildcard = true // the first request of a type with no names is a wildcard subscription
	}
	t.ackOrNack(st, req.GetTypeUrl(), req.GetResponseNonce(), "", req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	return nil
}

func (t *tracker) OnStreamDeltaResponse(id int64, req *discoverypb.DeltaDiscoveryRequest, resp *discoverypb.DeltaDiscoveryResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stream(id, req.GetNode())
	if st == nil {
		return
	}
	ts := st.typ(resp.GetTypeUrl())
	now := t.s.now()
	ts.lastNonce, ts.lastVersion, ts.sentAt = resp.GetNonce(), resp.GetSystemVersionInfo(), now
	size := 0
	rec := &sentRecord{nonce: resp.GetNonce(), sentAt: now}
	ts.lastSent = rec
	for _, r := range resp.GetResources() {
		size += len(r.GetResource().GetValue())
		ts.resources[r.GetName()] = resourceState{version: r.GetVersion(), config: r.GetResource(), sentRecord: rec}
	}
	for _, n := range resp.GetRemovedResources() {
		delete(ts.resources, n)
	}
	short := shortType(resp.GetTypeUrl())
	tm := t.s.metrics.of(short)
	tm.pushes.Inc()
	tm.pushedBytes.Add(float64(size))
}

// gcpCallbacks are the tracker as go-control-plane's stream servers see it. Their SotW (per-type)
// and delta servers count stream ids from 1 each, as our ADS SotW server does: each range is moved
// so that the tracker's ids stay unique.
type gcpCallbacks struct{ t *tracker }

const (
	perTypeIDs = 1 << 40
	deltaIDs   = 2 << 40
)

func (c gcpCallbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	return c.t.OnStreamOpen(ctx, id+perTypeIDs, typeURL)
}
func (c gcpCallbacks) OnStreamClosed(id int64, n *core.Node) { c.t.OnStreamClosed(id+perTypeIDs, n) }
func (c gcpCallbacks) OnStreamRequest(id int64, r *discoverypb.DiscoveryRequest) error {
	return c.t.OnStreamRequest(id+perTypeIDs, r)
}
func (c gcpCallbacks) OnStreamResponse(ctx context.Context, id int64, req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
	c.t.OnStreamResponse(ctx, id+perTypeIDs, req, resp)
}
func (c gcpCallbacks) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	return c.t.OnDeltaStreamOpen(ctx, id+deltaIDs, typeURL)
}
func (c gcpCallbacks) OnDeltaStreamClosed(id int64, n *core.Node) {
	c.t.OnDeltaStreamClosed(id+deltaIDs, n)
}
func (c gcpCallbacks) OnStreamDeltaRequest(id int64, r *discoverypb.DeltaDiscoveryRequest) error {
	return c.t.OnStreamDeltaRequest(id+deltaIDs, r)
}
func (c gcpCallbacks) OnStreamDeltaResponse(id int64, req *discoverypb.DeltaDiscoveryRequest, resp *discoverypb.DeltaDiscoveryResponse) {
	c.t.OnStreamDeltaResponse(id+deltaIDs, req, resp)
}
func (c gcpCallbacks) OnFetchRequest(ctx context.Context, r *discoverypb.DiscoveryRequest) error {
	return c.t.OnFetchRequest(ctx, r)
}
func (c gcpCallbacks) OnFetchResponse(req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
	c.t.OnFetchResponse(req, resp)
}

func (t *tracker) OnFetchRequest(context.Context, *discoverypb.DiscoveryRequest) error { return nil }

func (t *tracker) OnFetchResponse(*discoverypb.DiscoveryRequest, *discoverypb.DiscoveryResponse) {}

// resourceName reads the name of a resource without decoding it: for every type we serve (Listener,
// Cluster, ClusterLoadAssignment, RouteConfiguration, Secret) the name is string field 1.
func resourceName(a *anypb.Any) string {
	b := a.GetValue()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ""
			}
			return string(v)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		b = b[n:]
	}
	return ""
}

func shortType(url string) string {
	switch url {
	case xds.ListenerType:
		return "lds"
	case xds.ClusterType:
		return "cds"
	case xds.EndpointType:
		return "eds"
	case xds.RouteType:
		return "rds"
	case xds.SecretType:
		return "sds"
	}
	return url[strings.LastIndex(url, ".")+1:]
}

// clientConfigs is the CSDS view of every connected client the matchers accept (all when none).
func (t *tracker) clientConfigs(matchers []*matcher.NodeMatcher) []*statuspb.ClientConfig {
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]int64, 0, len(t.streams))
	for id := range t.streams {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var out []*statuspb.ClientConfig
	for _, id := range ids {
		st := t.streams[id]
		if st.node == nil || !nodeMatches(st.node, matchers) {
			continue
		}
		cc := &statuspb.ClientConfig{Node: st.node, ClientScope: "stream-" + stringID(id)}
		urls := make([]string, 0, len(st.types))
		for u := range st.types {
			urls = append(urls, u)
		}
		slices.SortFunc(urls, func(a, b string) int { return cmp.Compare(typeOrder(a), typeOrder(b)) })
		for _, u := range urls {
			ts := st.types[u]
			names := make([]string, 0, len(ts.resources)+len(ts.requested))
			for n := range ts.resources {
				names = append(names, n)
			}
			for n := range ts.requested {
				if _, ok := ts.resources[n]; !ok {
					names = append(names, n)
				}
			}
			slices.Sort(names)
			for _, n := range names {
				g := &statuspb.ClientConfig_GenericXdsConfig{TypeUrl: u, Name: n}
				r, sent := ts.resources[n]
				switch {
				case !sent:
					g.ConfigStatus, g.ClientStatus = statuspb.ConfigStatus_NOT_SENT, admin.ClientResourceStatus_REQUESTED
				case r.nacked != "":
					g.ConfigStatus, g.ClientStatus = statuspb.ConfigStatus_ERROR, admin.ClientResourceStatus_NACKED
					g.ErrorState = &admin.UpdateFailureState{Details: r.nacked, VersionInfo: r.version, LastUpdateAttempt: timestamppb.New(r.nackAt)}
				case r.acked:
					g.ConfigStatus, g.ClientStatus = statuspb.ConfigStatus_SYNCED, admin.ClientResourceStatus_ACKED
				default:
					g.ConfigStatus, g.ClientStatus = statuspb.ConfigStatus_STALE, admin.ClientResourceStatus_REQUESTED
				}
				if sent {
					g.VersionInfo, g.XdsConfig, g.LastUpdated = r.version, r.config, timestamppb.New(r.sentAt)
				}
				cc.GenericXdsConfigs = append(cc.GenericXdsConfigs, g)
			}
		}
		out = append(out, cc)
	}
	return out
}

func typeOrder(u string) int {
	switch u {
	case xds.ClusterType:
		return 0
	case xds.EndpointType:
		return 1
	case xds.ListenerType:
		return 2
	case xds.RouteType:
		return 3
	case xds.SecretType:
		return 4
	}
	return 5
}

func stringID(id int64) string { return strconv.FormatInt(id, 10) }

func sameNames(set map[string]bool, names []string) bool {
	if len(set) != len(names) {
		return false
	}
	for _, n := range names {
		if !set[n] {
			return false
		}
	}
	return true
}
