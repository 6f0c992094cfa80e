package server

import (
	"context"
	"hash/maphash"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/xds"
)

// This file is the state-of-the-world ADS stream: our own loop over the typedCaches' snapshots,
// with the protocol behaviour of go-control-plane's ordered ADS server over LinearCaches (which
// still serve the delta and per-type streams), without its per-request costs. go-control-plane
// closes and reopens a cache watch for every request, so each ACK of an EDS response naming 100
// clusters rebuilt the subscription and re-indexed the watch under every one of those names, and
// every change recomputed and re-indexed every watch under the cache's lock. Here a stream keeps
// its subscription across requests and rebuilds it only when the names change; a change wakes the
// streams that watch its cache, and each compares its subscription with the new snapshot itself,
// in parallel; a request whose names did not change and that came after nothing changed costs a
// comparison of two numbers. A response's resources are encoded once per version and resource set
// and shared by every stream (see preEncoded).
//
// The behaviour kept: ordered pushes (CDS, EDS, LDS, RDS, SDS); at most one unanswered response
// per type (a new one waits for the ACK or NACK of the last); SotW nonces, with stale ones dropped;
// versions from the cache; full state for CDS and LDS, changed resources only for the others; an
// answer to a request without one of our versions even when empty; a NACK is not answered with the
// rejected version; legacy and explicit ("*") wildcards and unsubscription as in go-control-plane's
// stream.Subscription.

// snapshot is an immutable view of a typedCache: what a SotW stream compares its state with.
type snapshot struct {
	seq     uint64
	version string
	typeURL string
	res     map[string]*entry
	sorted  []string // every name, sorted: a wildcard full-state response
	changed []string // names updated or deleted since the snapshot before (sequence seq-1)

	memo sync.Map // memoKey → *encoded: responses already encoded from this snapshot
}

// entry is one resource of a snapshot, marshaled once and shared by every stream.
type entry struct {
	version string
	any     *anypb.Any
}

// newSnapshot is prev with update (encoded in wire) and deleted applied, at c's current sequence
// number.
func newSnapshot(c *typedCache, prev *snapshot, update map[string]types.Resource, wire map[string][]byte, deleted []string) *snapshot {
	sn := &snapshot{seq: c.seq, version: c.prefix + strconv.FormatUint(c.seq, 10), typeURL: c.typeURL, res: map[string]*entry{}}
	if prev != nil {
		sn.res = maps.Clone(prev.res)
	}
	for name := range update {
		sn.res[name] = &entry{version: sn.version, any: &anypb.Any{TypeUrl: c.typeURL, Value: wire[name]}}
		sn.changed = append(sn.changed, name)
	}
	for _, name := range deleted {
		delete(sn.res, name)
		sn.changed = append(sn.changed, name)
	}
	sn.sorted = slices.Sorted(maps.Keys(sn.res))
	return sn
}

// encoded is a response body (every field but the nonce) for one resource set of one snapshot.
type encoded struct {
	names     []string // of the resources, in order
	resources []*anypb.Any
	wire      []byte
}

// memoKey identifies a set of names: the sums of two independent hashes of its members (a set's
// key, whatever the order). allNames is the key of a snapshot's every resource.
type memoKey [2]uint64

var (
	allNames       = memoKey{}
	seedA, seedB   = maphash.MakeSeed(), maphash.MakeSeed()
	errNoTypeInADS = status.Errorf(codes.InvalidArgument, "type URL is required for ADS")
)

func keyOf(names []string) memoKey {
	var k memoKey
	for _, n := range names {
		k[0] += maphash.String(seedA, n)
		k[1] += maphash.String(seedB, n)
	}
	k[1] ^= uint64(len(names)) << 1
	if k == allNames {
		k[0] = 1
	}
	return k
}

// encode returns the response body holding names (all of them exist in sn), encoding it on first use.
func (sn *snapshot) encode(key memoKey, names []string) (*encoded, error) {
	if e, ok := sn.memo.Load(key); ok {
		return e.(*encoded), nil
	}
	names = slices.Clone(names)
	slices.Sort(names)
	enc := &encoded{names: names, resources: make([]*anypb.Any, 0, len(names))}
	for _, n := range names {
		enc.resources = append(enc.resources, sn.res[n].any)
	}
	var err error
	enc.wire, err = proto.Marshal(&discoverypb.DiscoveryResponse{VersionInfo: sn.version, Resources: enc.resources, TypeUrl: sn.typeURL})
	if err != nil {
		return nil, err
	}
	e, _ := sn.memo.LoadOrStore(key, enc)
	return e.(*encoded), nil
}

// watchers are the SotW streams that watch a typedCache; a change wakes them all.
type watchers struct {
	mu sync.Mutex
	m  map[*adsStream]struct{}
}

func (w *watchers) add(a *adsStream) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[*adsStream]struct{}{}
	}
	w.m[a] = struct{}{}
}

func (w *watchers) remove(a *adsStream) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, a)
}

// notify wakes every watcher without blocking: a stream that is busy finds the change when it
// next looks, a slow client never holds up an update.
func (w *watchers) notify() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for a := range w.m {
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}
}

// ads serves the aggregated service: SotW with our stream loop, delta with go-control-plane's
// (wrapped, see DeltaAggregatedResources).
type ads struct {
	gcp discoverypb.AggregatedDiscoveryServiceServer
	srv *Server
}

// adsStream is the state of one SotW ADS stream: mu guards everything but wake, which caches
// write to.
type adsStream struct {
	mu     sync.Mutex
	closed bool
	s      *Server
	id     int64
	ctx    context.Context
	st     discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	node   *core.Node
	proxy  xds.Proxy
	wake   chan struct{}
	nonces int64
	types  []*sotwType // in push order
	// first: the encoded and decoded names of a request of a type the stream has no state for yet.
	first struct {
		typeURL string
		raw     []byte
		names   []string
	}
}

// sotwType is a stream's subscription to one type.
type sotwType struct {
	url   string
	order int
	cache *typedCache
	// legacy: no name was ever requested, so an empty request is a wildcard (stream.Subscription's
	// allowLegacyWildcard).
	legacy   bool
	wildcard bool
	names    map[string]struct{}
	applied  []string          // the request names names was made from
	tracked  []string          // the names of the last request the tracker saw
	sent     map[string]string // name → version last sent (go-control-plane's returned resources)
	nonce    string            // of the last response
	open     bool              // the client answered the last response (or got none yet): we may send
	checked  uint64            // sequence of the snapshot last compared while open
	recheck  bool              // compare again even if the snapshot did not change (new subscription)
	req      *discoverypb.DiscoveryRequest
	// The encoded resource_names of the last request decoded in full, and what they decoded to.
	rawNames        []byte
	rawNamesDecoded []string
}

func (a *ads) StreamAggregatedResources(st discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s := a.srv
	as := &adsStream{s: s, id: s.adsIDs.Add(1), ctx: st.Context(), st: st, node: &core.Node{}, wake: make(chan struct{}, 1)}
	as.proxy = xds.ProxyFromNode(as.node)
	if err := s.clients.OnStreamOpen(st.Context(), as.id, ""); err != nil {
		s.clients.OnStreamClosed(as.id, as.node)
		return err
	}
	defer func() {
		as.mu.Lock()
		defer as.mu.Unlock()
		as.closed = true // a request being read now is dropped: nothing touches the stream after this
		for _, t := range as.types {
			t.cache.subs.remove(as)
		}
		s.clients.OnStreamClosed(as.id, as.node)
	}()

	// Requests are handled on the goroutine that reads them (no hand-over per ACK), changes on this
	// one; mu keeps them apart, and a blocked send holds back both, as one loop would.
	done := make(chan error, 1)
	go func() {
		for {
			raw := &rawRequest{DiscoveryRequest: &discoverypb.DiscoveryRequest{}}
			if err := st.RecvMsg(raw); err != nil {
				done <- nil // the client closed the stream, or it failed
				return
			}
			as.mu.Lock()
			if as.closed {
				as.mu.Unlock()
				return
			}
			req, err := as.decodeRequest(raw)
			if err == nil {
				err = as.handle(req)
			}
			as.mu.Unlock()
			if err != nil {
				done <- err
				return
			}
		}
	}()
	for {
		select {
		case <-as.wake:
			as.mu.Lock()
			as.sotwRegroup() // regroup.go
			err := as.push(nil, false)
			as.mu.Unlock()
			if err != nil {
				return status.Errorf(codes.Unavailable, "%v", err)
			}
		case err := <-done:
			return err
		}
	}
}

func (as *adsStream) typ(url string) *sotwType {
	for _, t := range as.types {
		if t.url == url {
			return t
		}
	}
	return nil
}

func (as *adsStream) handle(req *discoverypb.DiscoveryRequest) error {
	typeURL := req.GetTypeUrl()
	t := as.typ(typeURL)
	if n := req.GetResponseNonce(); n != "" && t != nil && t.nonce != "" && n != t.nonce {
		return nil // stale: the client had not seen our latest response of this type
	}
	if req.GetNode() != nil {
		as.node = req.GetNode()
		as.proxy = xds.ProxyFromNode(as.node)
	} else {
		req.Node = as.node
	}
	if typeURL == "" {
		return errNoTypeInADS
	}
	as.s.clients.sotwRequest(as.id, req, t != nil && slices.Equal(t.tracked, req.GetResourceNames()))
	if t != nil {
		t.tracked = req.GetResourceNames()
		if t.nonce != "" && req.GetResponseNonce() != t.nonce {
			return nil // sent without a nonce after we sent a response: ignored, as go-control-plane does
		}
	}
	c, err := as.s.typedCacheFor(typeURL, as.proxy, req.GetResourceNames())
	if err != nil {
		return err
	}
	if t == nil {
		t = &sotwType{url: typeURL, order: typeOrder(typeURL), legacy: true, recheck: true, names: map[string]struct{}{}, sent: map[string]string{}}
		if len(req.GetResourceNames()) == 0 {
			t.wildcard = true
		}
		t.setNames(req.GetResourceNames())
		t.tracked = req.GetResourceNames()
		if as.first.typeURL == typeURL {
			t.rawNames, t.rawNamesDecoded = as.first.raw, as.first.names
		}
		as.first.typeURL, as.first.raw, as.first.names = "", nil, nil
		i, _ := slices.BinarySearchFunc(as.types, t.order, func(x *sotwType, o int) int { return x.order - o })
		as.types = slices.Insert(as.types, i, t)
	} else if t.setNames(req.GetResourceNames()) {
		t.recheck = true
	}
	if t.cache != c {
		if t.cache != nil {
			t.cache.subs.remove(as)
			t.sent = map[string]string{} // another listener group: its versions are not comparable (regroup.go)
		}
		t.cache, t.recheck = c, true
		c.subs.add(as)
	}
	t.req = req
	// A NACK of a response from another server (or of none) names no version of ours: compare with
	// what this stream was sent, and do not answer with the rejected resources.
	version := req.GetVersionInfo()
	if req.GetErrorDetail() != nil && !strings.HasPrefix(version, as.s.prefix) {
		version = as.s.prefix + "nacked"
	}
	// A client with no version of ours gets an answer even when it is empty.
	replyEvenIfEmpty := version == "" || !strings.HasPrefix(version, as.s.prefix)
	t.open = true
	return as.push(t, replyEvenIfEmpty)
}

// setNames applies the names of a request, as stream.Subscription.SetResourceSubscription does,
// and reports whether the subscription changed.
func (t *sotwType) setNames(names []string) bool {
	if t.applied != nil && slices.Equal(t.applied, names) {
		return false // an ACK repeating the names
	}
	t.applied = names
	if t.applied == nil {
		t.applied = []string{}
	}
	if t.legacy {
		if len(names) == 0 {
			return false
		}
		t.legacy = false
	}
	star, n := false, 0
	same := true
	for _, name := range names {
		if name == "*" {
			star = true
			continue
		}
		n++
		if _, ok := t.names[name]; !ok {
			same = false
		}
	}
	if same && star == t.wildcard && n == len(t.names) {
		return false
	}
	subscribed := make(map[string]struct{}, n)
	for _, name := range names {
		if name != "*" {
			subscribed[name] = struct{}{}
		}
	}
	if !star {
		// Forget what is no longer subscribed, so subscribing again sends it again.
		for name := range t.sent {
			if _, ok := subscribed[name]; !ok {
				delete(t.sent, name)
			}
		}
	}
	t.wildcard, t.names = star, subscribed
	return true
}

// push sends, in type order, every response due: for each type the client is not still to answer,
// what changed in its subscription since it was last sent. req (with its replyEvenIfEmpty) is the
// type of the request being handled, nil when a cache changed.
func (as *adsStream) push(req *sotwType, replyEvenIfEmpty bool) error {
	for _, t := range as.types {
		if !t.open {
			continue
		}
		force := t == req && replyEvenIfEmpty
		sn := t.cache.snap.Load()
		if sn.seq == t.checked && !t.recheck && !force {
			continue
		}
		// One change since the last comparison: only its names can differ.
		incremental := sn.seq == t.checked+1 && !t.recheck && !force
		t.checked, t.recheck = sn.seq, false
		if err := as.respond(t, sn, force, incremental); err != nil {
			return err
		}
	}
	return nil
}

// respond compares t with sn and sends what is due, as go-control-plane's LinearCache computes it.
func (as *adsStream) respond(t *sotwType, sn *snapshot, replyEvenIfEmpty, incremental bool) error {
	var changed, removed []string
	// compare files a subscribed name as changed (new to the client, or another version) or removed
	// (sent before, gone now).
	compare := func(name string) {
		e, exists := sn.res[name]
		v, known := t.sent[name]
		switch {
		case !exists:
			if known {
				removed = append(removed, name)
			}
		case !known || v != e.version:
			changed = append(changed, name)
		}
	}
	if incremental {
		// Everything else was in step at the snapshot before (what the client was sent, or had
		// nothing due), and subscriptions did not change: compare the changed names only.
		for _, name := range sn.changed {
			if !t.wildcard {
				if _, ok := t.names[name]; !ok {
					continue
				}
			}
			compare(name)
		}
	} else if t.wildcard {
		for _, name := range sn.sorted {
			if v, ok := t.sent[name]; !ok || v != sn.res[name].version {
				changed = append(changed, name)
			}
		}
		for name := range t.sent {
			if _, ok := sn.res[name]; !ok {
				removed = append(removed, name)
			}
		}
	} else {
		for name := range t.names {
			compare(name)
		}
		for name := range t.sent {
			if _, ok := t.names[name]; !ok {
				removed = append(removed, name)
			}
		}
	}
	if len(changed) == 0 && len(removed) == 0 && !replyEvenIfEmpty {
		return nil
	}
	fullState := cache.ResourceRequiresFullStateInSotw(t.url)
	var names []string
	key := memoKey{}
	switch {
	case !fullState:
		if !replyEvenIfEmpty && len(changed) == 0 {
			return nil // only full-state types tell a removal by an empty response
		}
		names, key = changed, keyOf(changed)
	case t.wildcard:
		names, key = sn.sorted, allNames
	default:
		for name := range t.names {
			if _, ok := sn.res[name]; ok {
				names = append(names, name)
			}
		}
		key = keyOf(names)
	}
	enc, err := sn.encode(key, names)
	if err != nil {
		return err
	}
	if len(t.sent) == 0 {
		t.sent = make(map[string]string, len(names))
	}
	for _, name := range names {
		t.sent[name] = sn.res[name].version
	}
	for _, name := range removed {
		delete(t.sent, name)
	}

	as.nonces++
	nonce := strconv.FormatInt(as.nonces, 10)
	resp := &discoverypb.DiscoveryResponse{VersionInfo: sn.version, Resources: enc.resources, TypeUrl: t.url, Nonce: nonce}
	t.nonce, t.open = nonce, false
	as.s.clients.sotwResponse(as.id, t.req, resp, enc.names)
	field := protowire.AppendTag(make([]byte, 0, len(nonce)+2), 5, protowire.BytesType)
	field = protowire.AppendString(field, nonce)
	return as.st.SendMsg(&preEncoded{DiscoveryResponse: resp, wire: enc.wire, nonce: field})
}
