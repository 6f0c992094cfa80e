package proxy

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// The tap (Tap.Observe, proto/weft/tap/v1): a live copy of the requests this proxy finishes, for
// `weft tap` and `weft top` through weft-control. What the request path pays when nobody taps is one
// atomic load (tapHub.on, nil); the rest runs only while a tap is open. Each tap has a bounded buffer: a
// tap client that reads slowly loses events (counted in ObserveResponse.dropped), never slows a request.
// Bodies are never copied; of the headers only tapHeaders are.

// tapHeaders are the request headers a tap shows: nothing that carries credentials (Authorization,
// Cookie, Proxy-Authorization) or application data.
var tapHeaders = []string{"Content-Type", "User-Agent", "X-Request-Id", "Traceparent"}

const (
	tapBuffer     = 256 // events queued per tap before it drops
	tapDefaultRPS = 100
)

// tapHub holds the open taps. on is the request path's view: nil when nobody taps, else the current
// taps (copy on write under mu).
type tapHub struct {
	on  atomic.Pointer[[]*tapper]
	mu  sync.Mutex
	ids atomic.Uint64
}

type tapper struct {
	match tapv1.Match
	ch    chan *tapv1.TapEvent

	dropped atomic.Uint64
	limit   uint64
	queued  atomic.Uint64

	mu     sync.Mutex // guards the rate limiter
	rps    float64
	tokens float64
	last   time.Time
}

// tapHTTP reports a finished request to the open taps; with none it is one atomic load.
func (p *Proxy) tapHTTP(r *http.Request, rs *reqState, sw *statusWriter, start time.Time) {
	if taps := p.tap.on.Load(); taps != nil {
		p.tapSlow(*taps, r, rs, sw, start)
	}
}

func (p *Proxy) tapSlow(taps []*tapper, r *http.Request, rs *reqState, sw *statusWriter, start time.Time) {
	var ev *tapv1.TapEvent
	now := time.Now()
	for _, t := range taps {
		if !t.matches(r, rs) || !t.admit(now) {
			continue
		}
		if ev == nil {
			ev = p.tapEvent(r, rs, sw, start, now)
		}
		select {
		case t.ch <- ev: // shared: senders only read it
		default:
			t.dropped.Add(1)
			if t.limit > 0 {
				t.queued.Add(^uint64(0)) // not queued after all: a later request may take its place
			}
		}
	}
}

func (t *tapper) matches(r *http.Request, rs *reqState) bool {
	m := &t.match
	return (m.PathPrefix == "" || strings.HasPrefix(r.URL.Path, m.PathPrefix)) &&
		(m.Method == "" || r.Method == m.Method) &&
		(m.Authority == "" || rs.authority == m.Authority)
}

// admit is the tap's rate limit (a token bucket of one second's worth, full at the start) and its limit on events.
func (t *tapper) admit(now time.Time) bool {
	if t.limit > 0 && t.queued.Load() >= t.limit {
		return false
	}
	t.mu.Lock()
	t.tokens += now.Sub(t.last).Seconds() * t.rps
	t.last = now
	if t.tokens > t.rps {
		t.tokens = t.rps
	}
	ok := t.tokens >= 1
	if ok {
		t.tokens--
	}
	t.mu.Unlock()
	if !ok {
		t.dropped.Add(1)
		return false
	}
	if t.limit > 0 && t.queued.Add(1) > t.limit {
		return false
	}
	return true
}

func (p *Proxy) tapEvent(r *http.Request, rs *reqState, sw *statusWriter, start, now time.Time) *tapv1.TapEvent {
	info := rs.info
	ev := &tapv1.TapEvent{
		Source:    r.RemoteAddr,
		StartTime: timestamppb.New(start),
		Latency:   durationpb.New(now.Sub(start)),
		Id:        p.tap.ids.Add(1),
		Request: &tapv1.Request{
			Method:    r.Method,
			Scheme:    "http",
			Authority: rs.authority,
			Path:      r.URL.Path,
		},
	}
	if r.TLS != nil {
		ev.Request.Scheme = "https"
	}
	for _, name := range tapHeaders {
		if v := r.Header.Get(name); v != "" {
			ev.Request.Headers = append(ev.Request.Headers, &tapv1.Header{Name: strings.ToLower(name), Value: v})
		}
	}
	if info.direction == "inbound" {
		ev.Direction = tapv1.TapEvent_DIRECTION_INBOUND
		ev.Destination = info.dst.String()
		ev.Tls, ev.ClientId = info.tls, info.peerID
		if info.tls {
			ev.ServerId = p.ownID()
		}
	} else {
		ev.Direction = tapv1.TapEvent_DIRECTION_OUTBOUND
		ev.Destination = tapDestination(rs)
		ev.Tls, ev.ServerId = rs.upTLS, rs.serverID
		if rs.upTLS {
			ev.ClientId = p.ownID()
		}
	}
	code := sw.code
	if code == 0 {
		code = http.StatusBadGateway
	}
	h := sw.Header()
	resp := &tapv1.Response{Status: uint32(code), WeftError: h.Get("Weft-Error")} // #nosec G115 -- an HTTP status
	if g, err := strconv.ParseUint(grpcStatus(h), 10, 32); err == nil {
		v := uint32(g)
		resp.GrpcStatus = &v
	}
	if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil {
		resp.ContentLength = &n
	}
	ev.Response = resp
	return ev
}

// tapDestination is where an outbound request went: the original destination, else the cluster's
// Service as host:port (outbound|8080||books.demo.svc.cluster.local → books.demo.svc.cluster.local:8080).
func tapDestination(rs *reqState) string {
	if rs.target != "" {
		return rs.target
	}
	name := clusterName(rs)
	parts := strings.Split(name, "|")
	if len(parts) == 4 && parts[3] != "" {
		return parts[3] + ":" + parts[1]
	}
	return name
}

// Tap streams the requests this proxy finishes that match req to send, until ctx ends, send fails or
// req.Limit events were sent. Drops (over max_rps, or send slower than the traffic) are reported with the
// next message.
func (p *Proxy) Tap(ctx context.Context, req *tapv1.ObserveRequest, send func(*tapv1.ObserveResponse) error) error {
	rps := req.GetMaxRps()
	if rps <= 0 {
		rps = tapDefaultRPS
	}
	t := &tapper{ch: make(chan *tapv1.TapEvent, tapBuffer), limit: uint64(req.GetLimit()), rps: rps, tokens: rps, last: time.Now()}
	if m := req.GetMatch(); m != nil {
		t.match = tapv1.Match{PathPrefix: m.GetPathPrefix(), Method: m.GetMethod(), Authority: m.GetAuthority()}
	}
	p.tap.add(t)
	defer p.tap.remove(t)
	var sent uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-t.ch:
			if err := send(&tapv1.ObserveResponse{Event: ev, Dropped: t.dropped.Swap(0)}); err != nil {
				return err
			}
			sent++
			if t.limit > 0 && sent >= t.limit {
				return nil
			}
		}
	}
}

// Tapping reports how many taps are open.
func (p *Proxy) Tapping() int {
	if taps := p.tap.on.Load(); taps != nil {
		return len(*taps)
	}
	return 0
}

func (h *tapHub) add(t *tapper) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var taps []*tapper
	if cur := h.on.Load(); cur != nil {
		taps = append(taps, *cur...)
	}
	taps = append(taps, t)
	h.on.Store(&taps)
}

func (h *tapHub) remove(t *tapper) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := h.on.Load()
	if cur == nil {
		return
	}
	var taps []*tapper
	for _, o := range *cur {
		if o != t {
			taps = append(taps, o)
		}
	}
	if len(taps) == 0 {
		h.on.Store(nil)
		return
	}
	h.on.Store(&taps)
}
