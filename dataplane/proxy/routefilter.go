package proxy

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// The Gateway API's route features (issue 16), as weft-control sends them in RDS: header, method and
// query matchers, path_separated_prefix, redirects, direct responses, request and response header
// mutations, prefix and full-path rewrites, request mirrors and gRPC stream limits. They apply in
// serveHTTP (applyRoute, routeTimeout), so to every request of every path: the lean HTTP/1.1 path
// leaves a virtual host with such routes (VirtualHost.Extended) to serveHTTP, and the forwarders of
// forward.go and h2forward.go, which serveHTTP calls, see the request already rewritten and write
// their response through the mutating writer.

// matchPath reports whether the route's path match takes path.
func matchPath(r *config.Route, path string) bool {
	switch r.Kind {
	case config.PathPrefix:
		return strings.HasPrefix(path, r.Prefix)
	case config.PathExact:
		return path == r.Path
	case config.PathRegex:
		return r.Regex.MatchString(path)
	case config.PathSeparatedPrefix:
		return strings.HasPrefix(path, r.Prefix) && (len(path) == len(r.Prefix) || path[len(r.Prefix)] == '/')
	}
	return false
}

// lazyQuery parses a request's query once, when a route first asks for it.
type lazyQuery struct {
	parsed bool
	v      url.Values
}

func (q *lazyQuery) get(req *http.Request, name string) (string, bool) {
	if !q.parsed {
		q.parsed = true
		q.v, _ = url.ParseQuery(req.URL.RawQuery)
	}
	vv, ok := q.v[name]
	if !ok || len(vv) == 0 {
		return "", false
	}
	return vv[0], true
}

// matchRequest reports whether the request satisfies all of the route's header and query matchers.
func matchRequest(r *config.Route, req *http.Request, q *lazyQuery) bool {
	if r.GRPC && !isGRPC(req.Header.Get("Content-Type")) {
		return false
	}
	for i := range r.Headers {
		h := &r.Headers[i]
		v, ok := headerValue(req, h)
		if !h.Matches(v, ok) {
			return false
		}
	}
	for i := range r.Query {
		m := &r.Query[i]
		v, ok := q.get(req, m.Name)
		if !m.Matches(v, ok) {
			return false
		}
	}
	return true
}

// isGRPC reports whether a content-type is gRPC's (application/grpc, application/grpc+proto ...), as
// Envoy's RouteMatch.grpc checks it.
func isGRPC(ct string) bool {
	const g = "application/grpc"
	return len(ct) >= len(g) && strings.EqualFold(ct[:len(g)], g) && (len(ct) == len(g) || ct[len(g)] == '+' || ct[len(g)] == ';')
}

// headerValue is the request's value of the matcher's header: the pseudo-headers from the request
// line, several values joined with "," as Envoy does.
func headerValue(req *http.Request, h *config.HeaderMatcher) (string, bool) {
	switch h.Name {
	case ":method":
		return req.Method, true
	case ":authority", "host":
		return req.Host, req.Host != ""
	case ":path":
		return req.URL.RequestURI(), true
	case ":scheme":
		return "http", true
	}
	vv := req.Header[h.Key]
	switch len(vv) {
	case 0:
		return "", false
	case 1:
		return vv[0], true
	}
	return strings.Join(vv, ","), true
}

// applyRoute applies the route's filters to a request serveHTTP routed to it. It answers a redirect or
// a direct response itself (answered true); else it returns the cluster the request goes to, chosen
// by weight, with the request's headers and path rewritten, the response's header mutations in place
// around sw, and the mirrors sent off.
func (p *Proxy) applyRoute(rt *runtime, sw *statusWriter, r *http.Request, rs *reqState, route *config.Route) (cluster string, answered bool) {
	if !route.Extended {
		return routeCluster(route), false
	}
	wc := pickWeighted(route)
	if resp := responseMutations(route, wc); len(resp) > 0 {
		sw.ResponseWriter = &mutatingWriter{ResponseWriter: sw.ResponseWriter, muts: resp}
	}
	switch {
	case route.Redirect != nil:
		sw.Header().Set("Location", redirectLocation(route, r))
		sw.Header().Set("Content-Length", "0")
		sw.WriteHeader(route.Redirect.Code)
		return "", true
	case route.Direct != nil:
		d := route.Direct
		if len(d.Body) > 0 {
			sw.Header().Set("Content-Type", "text/plain")
		}
		sw.Header().Set("Content-Length", strconv.Itoa(len(d.Body)))
		sw.WriteHeader(d.Status)
		if r.Method != http.MethodHead {
			_, _ = sw.ResponseWriter.Write(d.Body) // #nosec G705 -- the route's direct_response body (text/plain), from the control plane
		}
		return "", true
	}
	if wc != nil && wc.RequestHeaders != nil && !route.MostSpecificWins {
		mutateHeaders(r.Header, wc.RequestHeaders)
	}
	for i := range route.RequestHeaders {
		mutateHeaders(r.Header, &route.RequestHeaders[i])
	}
	if wc != nil && wc.RequestHeaders != nil && route.MostSpecificWins {
		mutateHeaders(r.Header, wc.RequestHeaders)
	}
	if wc != nil && wc.HostRewrite != "" {
		r.Host = wc.HostRewrite
	}
	if route.PrefixRewrite != "" || route.RegexRewrite != nil {
		setPath(r.URL, rewritePath(route, r.URL.EscapedPath()))
	}
	if len(route.Mirrors) > 0 {
		p.startMirrors(rt, r, rs, route)
	}
	if wc != nil {
		return wc.Name, false
	}
	return route.Cluster, false
}

// pickWeighted chooses one of the route's weighted clusters by weight (nil for a plain cluster).
func pickWeighted(route *config.Route) *config.WeightedCluster {
	if len(route.WeightedClusters) == 0 {
		return nil
	}
	n := rand.Uint32N(route.TotalWeight)
	for i := range route.WeightedClusters {
		wc := &route.WeightedClusters[i]
		if n < wc.Weight {
			return wc
		}
		n -= wc.Weight
	}
	return &route.WeightedClusters[len(route.WeightedClusters)-1]
}

// responseMutations are the response header mutations of the route and its chosen cluster, in order.
func responseMutations(route *config.Route, wc *config.WeightedCluster) []config.HeaderMutation {
	if wc == nil || wc.ResponseHeaders == nil {
		return route.ResponseHeaders
	}
	out := make([]config.HeaderMutation, 0, len(route.ResponseHeaders)+1)
	if !route.MostSpecificWins {
		out = append(out, *wc.ResponseHeaders)
	}
	out = append(out, route.ResponseHeaders...)
	if route.MostSpecificWins {
		out = append(out, *wc.ResponseHeaders)
	}
	return out
}

// mutateHeaders applies one level's mutation: its removals, then its additions (Envoy's order).
func mutateHeaders(h http.Header, m *config.HeaderMutation) {
	for _, k := range m.Remove {
		delete(h, k)
	}
	for _, op := range m.Add {
		if op.Value == "" && !op.KeepEmpty {
			continue
		}
		_, exists := h[op.Key]
		switch op.Action {
		case config.AppendIfExistsOrAdd:
			h[op.Key] = append(h[op.Key], op.Value)
		case config.AddIfAbsent:
			if !exists {
				h[op.Key] = []string{op.Value}
			}
		case config.OverwriteIfExistsOrAdd:
			h[op.Key] = []string{op.Value}
		case config.OverwriteIfExists:
			if exists {
				h[op.Key] = []string{op.Value}
			}
		}
	}
}

// mutatingWriter applies the response header mutations when the final response head goes out: to the
// upstream's response and to the proxy's own (redirects, direct responses, weft-error failures).
type mutatingWriter struct {
	http.ResponseWriter
	muts []config.HeaderMutation
	done bool
}

func (w *mutatingWriter) WriteHeader(code int) {
	if code >= 200 && !w.done {
		w.done = true
		h := w.Header()
		for i := range w.muts {
			mutateHeaders(h, &w.muts[i])
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *mutatingWriter) Write(b []byte) (int, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap keeps Flush, Hijack and the rest reachable through http.ResponseController.
func (w *mutatingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush is here because httputil.ReverseProxy checks for it on the writer itself in some paths.
func (w *mutatingWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// rewritePath is the request's (escaped) path after the route's prefix_rewrite or regex_rewrite.
func rewritePath(route *config.Route, path string) string {
	if route.RegexRewrite != nil {
		return route.RegexRewrite.Apply(path)
	}
	return replacePrefix(route, path, route.PrefixRewrite)
}

// replacePrefix replaces the part of path the route matched (its prefix, or all of an exact path)
// with repl, as Envoy's prefix_rewrite.
func replacePrefix(route *config.Route, path, repl string) string {
	if route.Kind == config.PathExact {
		return repl
	}
	if len(route.Prefix) > len(path) {
		return repl
	}
	return repl + path[len(route.Prefix):]
}

// setPath makes escaped the URL's path.
func setPath(u *url.URL, escaped string) {
	if p, err := url.PathUnescape(escaped); err == nil {
		u.Path, u.RawPath = p, escaped
		return
	}
	u.Path, u.RawPath = escaped, ""
}

// redirectLocation is the Location of a redirect route's answer to r.
func redirectLocation(route *config.Route, r *http.Request) string {
	rd := route.Redirect
	const scheme = "http" // what the application spoke to its proxy
	host, port := r.Host, ""
	if h, p, err := net.SplitHostPort(r.Host); err == nil {
		host, port = h, p
	}
	newScheme := scheme
	if rd.Scheme != "" {
		newScheme = rd.Scheme
		if rd.Scheme != scheme {
			port = "" // the new scheme's own port, unless port_redirect says otherwise
		}
	}
	if rd.Host != "" {
		host = rd.Host
		if h, p, err := net.SplitHostPort(rd.Host); err == nil {
			host, port = h, p
		}
	}
	if rd.Port != 0 {
		port = strconv.FormatUint(uint64(rd.Port), 10)
	}
	if newScheme == "http" && port == "80" || newScheme == "https" && port == "443" {
		port = ""
	}
	path, query := r.URL.EscapedPath(), r.URL.RawQuery
	if rd.StripQuery {
		query = ""
	}
	switch rd.PathKind {
	case config.RedirectReplacePath:
		path = rd.Path
		if p, q, ok := strings.Cut(rd.Path, "?"); ok {
			path, query = p, q // path_redirect's own query replaces the request's
		}
	case config.RedirectPrefix:
		path = replacePrefix(route, path, rd.Path)
	case config.RedirectRegex:
		path = rd.Regex.Apply(path)
	}
	var b strings.Builder
	b.WriteString(newScheme)
	b.WriteString("://")
	if strings.Contains(host, ":") {
		host = "[" + host + "]" // an IPv6 address
	}
	b.WriteString(host)
	if port != "" {
		b.WriteString(":" + port)
	}
	b.WriteString(path)
	if query != "" {
		b.WriteString("?" + query)
	}
	return b.String()
}

// routeTimeout is the request's deadline on the route: the shortest of its timeout, its
// max_stream_duration and, when the route says so, the gRPC client's grpc-timeout (capped, less the
// offset). Envoy runs these as separate timers, so the first to fire ends the request. 0: none.
func routeTimeout(route *config.Route, r *http.Request) time.Duration {
	t := route.Timeout
	if !route.Extended {
		return t
	}
	shorter := func(d time.Duration) {
		if d > 0 && (t == 0 || d < t) {
			t = d
		}
	}
	shorter(route.MaxStreamDuration)
	if g := route.GRPCTimeout; g != nil {
		if d, ok := grpcTimeout(r.Header.Get("Grpc-Timeout")); ok && d > 0 {
			if d > g.Offset {
				d -= g.Offset
			}
			if g.Max > 0 && d > g.Max {
				d = g.Max
			}
			shorter(d)
		}
	}
	return t
}
