package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// Request mirroring (RouteAction.request_mirror_policies; the Gateway API's RequestMirror filter):
// a copy of the request, as rewritten for the route, goes to the mirror cluster, fire and forget.
// The mirror's response is read and discarded; it never delays or changes the client's response.
// A request body is mirrored only when it ends within mirrorBodyMax bytes: the copy is taken as the
// primary request reads it and sent when it has been read whole (so the primary is never held up);
// a larger body is not mirrored, nor are CONNECT and upgrades. At most mirrorMaxInFlight mirrors run at once in a proxy; beyond
// that a mirror is dropped, as is one to a cluster the proxy does not know.

const (
	mirrorBodyMax     = 64 << 10
	mirrorMaxInFlight = 64
	// mirrorTimeout bounds a mirror when its route has no timeout (Envoy's default route timeout).
	mirrorTimeout = 15 * time.Second
)

// mirrorsInFlight counts the mirrors running in this process.
var mirrorsInFlight atomic.Int64

// pendingMirror is one mirror request waiting for the body.
type pendingMirror struct {
	cl  *clusterRT
	req *http.Request
}

// startMirrors sends the route's mirrors of r (each by its fraction). Call it when r has its final
// headers and path; r's body, if any, is teed.
func (p *Proxy) startMirrors(rt *runtime, r *http.Request, rs *reqState, route *config.Route) {
	if r.Method == http.MethodConnect || r.Header.Get("Upgrade") != "" {
		return // a tunnel or an upgrade is not a request that can be copied
	}
	hasBody := r.Body != nil && r.Body != http.NoBody
	if hasBody && r.ContentLength > mirrorBodyMax {
		p.metrics.mirrorDropped("body too large")
		return
	}
	var pending []pendingMirror
	for i := range route.Mirrors {
		m := &route.Mirrors[i]
		if m.PerMillion < 1e6 && rand.Uint32N(1e6) >= m.PerMillion {
			continue
		}
		cl := rt.clusters[m.Cluster]
		if cl == nil || cl.cfg.Kind == config.ClusterOriginalDst {
			p.metrics.mirrorDropped("unknown cluster")
			continue
		}
		mr := r.Clone(context.Background()) // the headers are deep-copied
		mr.RequestURI = ""
		mr.Body, mr.ContentLength, mr.TransferEncoding, mr.Trailer = http.NoBody, 0, nil, nil
		switch {
		case m.HostRewrite != "":
			mr.Host = m.HostRewrite
		case !m.NoShadowSuffix:
			mr.Host = shadowHost(r.Host)
		}
		pending = append(pending, pendingMirror{cl, mr})
	}
	if len(pending) == 0 {
		return
	}
	timeout := cmpOr(route.Timeout, mirrorTimeout)
	if !hasBody {
		for _, pm := range pending {
			p.sendMirror(pm, nil, timeout, rs.info)
		}
		return
	}
	r.Body = &mirrorTee{ReadCloser: r.Body, fire: func(body []byte) {
		for _, pm := range pending {
			p.sendMirror(pm, body, timeout, rs.info)
		}
	}}
}

func cmpOr(a, b time.Duration) time.Duration {
	if a > 0 {
		return a
	}
	return b
}

// shadowHost appends Envoy's "-shadow" to the host part of an authority.
func shadowHost(authority string) string {
	if h, port, err := net.SplitHostPort(authority); err == nil {
		return net.JoinHostPort(h+"-shadow", port)
	}
	return authority + "-shadow"
}

// sendMirror sends one mirror request in a goroutine of its own (Shutdown waits for it, as for a
// tunnel: it is bounded by timeout).
func (p *Proxy) sendMirror(pm pendingMirror, body []byte, timeout time.Duration, info *connInfo) {
	if mirrorsInFlight.Add(1) > mirrorMaxInFlight {
		mirrorsInFlight.Add(-1)
		p.metrics.mirrorDropped("too many in flight")
		return
	}
	p.tunnelWG.Add(1)
	go func() {
		defer p.tunnelWG.Done()
		defer mirrorsInFlight.Add(-1)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		req := pm.req.WithContext(ctx)
		if len(body) > 0 {
			req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		rs := &reqState{info: info, authority: req.Host, cluster: pm.cl, start: time.Now()}
		prepareForward(req, rs)
		resp, err := p.roundTrip(rs, req)
		if err != nil {
			p.log.Debug("mirror failed", "cluster", pm.cl.cfg.Name, "err", err)
			p.metrics.mirrorDone(pm.cl.cfg.Name, "error")
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		p.metrics.mirrorDone(pm.cl.cfg.Name, strconv.Itoa(resp.StatusCode))
	}()
}

// mirrorTee keeps a copy of the request body as the primary request reads it, and fires the mirrors
// once it has been read whole within mirrorBodyMax.
type mirrorTee struct {
	io.ReadCloser
	buf   []byte
	over  bool
	fired bool
	fire  func([]byte)
}

func (t *mirrorTee) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if !t.over && n > 0 {
		if len(t.buf)+n > mirrorBodyMax {
			t.over, t.buf = true, nil
		} else {
			t.buf = append(t.buf, p[:n]...)
		}
	}
	if err == io.EOF && !t.over && !t.fired {
		t.fired = true
		t.fire(t.buf)
	}
	return n, err
}

// mirrorDone counts a mirror request sent to cluster, by its outcome (the status code, or "error").
func (m *Metrics) mirrorDone(cluster, outcome string) {
	m.set.GetOrCreateCounter(seriesName("request_mirror_total", "cluster", cluster, "outcome", outcome)).Inc()
}

// mirrorDropped counts a mirror not sent, by reason.
func (m *Metrics) mirrorDropped(reason string) {
	m.set.GetOrCreateCounter(seriesName("request_mirror_dropped_total", "reason", reason)).Inc()
}
