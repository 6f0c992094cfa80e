package proxy_test

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// The Gateway API route features (issue 16) with real traffic through a real proxy: the route
// configurations are written as weft-control emits them for HTTPRoutes (the contract's mapping).

// seen is what an echo backend saw of one request.
type seen struct {
	Backend, Method, Path, RawQuery, Host, Body string
	Header                                      http.Header
}

// echoBackend answers with what it saw, as JSON, and names itself in X-Backend. Its hook, when set,
// runs first (to delay or block).
type echoBackend struct {
	name string
	*backend
	mu   sync.Mutex
	reqs []seen
	got  chan seen
	hook atomic.Pointer[func(n int64, r *http.Request)]
}

func startEcho(t testing.TB, name string) *echoBackend {
	t.Helper()
	e := &echoBackend{name: name, got: make(chan seen, 1000)}
	e.backend = startBackend(t, name, "127.0.0.1:0")
	e.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := e.hits.Add(1)
		if h := e.hook.Load(); h != nil {
			(*h)(n, r)
		}
		body, _ := io.ReadAll(r.Body)
		s := seen{Backend: name, Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Host: r.Host, Body: string(body), Header: r.Header}
		e.mu.Lock()
		e.reqs = append(e.reqs, s)
		e.mu.Unlock()
		select {
		case e.got <- s:
		default:
		}
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Upstream-Secret", "s3cret")
		_ = json.NewEncoder(w).Encode(s)
	})
	return e
}

func (e *echoBackend) setHook(f func(n int64, r *http.Request)) { e.hook.Store(&f) }

func (e *echoBackend) cluster() string { return fx.ClusterName(80, e.name+".shop.svc.cluster.local") }

// gateway is a client sidecar whose Service echo has the given routes, to the backends v1, v2 and
// mirror (clusters outbound|80||<name>.shop.svc.cluster.local).
type gateway struct {
	svc            *service
	cp             *testCP
	sc             *sidecar
	c              *http.Client
	v1, v2, mirror *echoBackend
}

func startGateway(t testing.TB, ip string, routes func(g *gateway) []*routev3.Route) *gateway {
	t.Helper()
	g := &gateway{v1: startEcho(t, "v1"), v2: startEcho(t, "v2"), mirror: startEcho(t, "mirror")}
	g.svc = newService(t, echoFQDN, ip, g.v1.addr)
	g.cp = startCP(t, "127.0.0.1:0", nil, false)
	g.cp.set(t, clientNode.ID(), "v1", g.resources(routes(g))...)
	g.sc = startSidecar(t, g.cp.addr, clientNode, nil)
	g.sc.outboundAt(g.svc.lis)
	g.sc.waitReady(t)
	g.c = clientFor(g.svc)
	g.c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return g
}

// resources is resources(svc) with the backends' clusters and the given routes as the Service's.
func (g *gateway) resources(routes []*routev3.Route) []proto.Message {
	msgs := resources(g.svc)
	for _, e := range []*echoBackend{g.v1, g.v2, g.mirror} {
		msgs = append(msgs, fx.EDSCluster(e.cluster(), clusterv3.Cluster_ROUND_ROBIN), fx.CLA(e.cluster(), e.addr))
	}
	for _, m := range msgs {
		if rc, ok := m.(*routev3.RouteConfiguration); ok {
			rc.VirtualHosts[0].Routes = routes
		}
	}
	return msgs
}

func (g *gateway) url(path string) string { return "http://" + g.svc.authority() + path }

// do sends a request and reads the backend's echo (nil when the answer is not one).
func (g *gateway) do(t testing.TB, req *http.Request) (*http.Response, *seen, string) {
	t.Helper()
	resp, err := g.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	var s seen
	if json.Unmarshal(b, &s) != nil || s.Backend == "" {
		return resp, nil, string(b)
	}
	return resp, &s, string(b)
}

func (g *gateway) get(t testing.TB, path string, hdr ...string) (*http.Response, *seen, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, g.url(path), nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return g.do(t, req)
}

func prefixMatch(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func toCluster(name string) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}}
}

func strMatch(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func headerIs(name, v string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: strMatch(v)}}
}

func weighted(a string, wa uint32, b string, wb uint32) *routev3.RouteAction {
	return &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
		Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: a, Weight: wrapperspb.UInt32(wa)}, {Name: b, Weight: wrapperspb.UInt32(wb)}}}}}
}

// TestWeightedSplit sends 1000 requests to a 90/10 split and checks the share of each backend against
// the binomial distribution (4 sigma: a correct split fails about once in 16000 runs). Both the lean
// path (a plain route) and serveHTTP (a route with a response header, so Extended) are measured.
func TestWeightedSplit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ip       string
		extended bool
	}{{"lean path", "127.0.0.160", false}, {"filtered route", "127.0.0.161", true}} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, tc.ip, func(g *gateway) []*routev3.Route {
				r := &routev3.Route{Match: prefixMatch("/"), Action: &routev3.Route_Route{Route: weighted(g.v1.cluster(), 90, g.v2.cluster(), 10)}}
				if tc.extended {
					r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: "canary"}}}
				}
				return []*routev3.Route{r}
			})
			const n, p = 1000, 0.10
			for range n {
				resp, s, body := g.get(t, "/split")
				if resp.StatusCode != 200 || s == nil {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
				if tc.extended && resp.Header.Get("X-Route") != "canary" {
					t.Fatalf("response header x-route = %q, want canary", resp.Header.Get("X-Route"))
				}
			}
			v1, v2 := g.v1.hits.Load(), g.v2.hits.Load()
			sigma := math.Sqrt(n * p * (1 - p))
			lo, hi := n*p-4*sigma, n*p+4*sigma
			t.Logf("90/10 over %d requests: v1 %d, v2 %d (want v2 in [%.0f, %.0f])", n, v1, v2, lo, hi)
			if v1+v2 != n || float64(v2) < lo || float64(v2) > hi {
				t.Fatalf("v1 %d, v2 %d: v2 outside the 4-sigma bounds [%.0f, %.0f] of %d requests at %.0f%%", v1, v2, lo, hi, n, p*100)
			}
		})
	}
}

// TestMatchHeadersMethodQuery: header, method and query matchers and path_separated_prefix choose the
// backend; the first matching route wins.
func TestMatchHeadersMethodQuery(t *testing.T) {
	g := startGateway(t, "127.0.0.162", func(g *gateway) []*routev3.Route {
		return []*routev3.Route{
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{headerIs("weft-override-route", "v2")}}, Action: toCluster(g.v2.cluster())},
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{headerIs(":method", "DELETE")}}, Action: toCluster(g.v2.cluster())},
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, QueryParameters: []*routev3.QueryParameterMatcher{{Name: "version",
				QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: strMatch("2")}}}}, Action: toCluster(g.v2.cluster())},
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/canary"}}, Action: toCluster(g.v2.cluster())},
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/grpc-only"}, Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}}, Action: toCluster(g.v2.cluster())},
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: []*routev3.HeaderMatcher{{Name: "x-env",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "stag(e|ing)"}}}}}}},
				Action: toCluster(g.v2.cluster())},
			{Match: prefixMatch("/"), Action: toCluster(g.v1.cluster())},
		}
	})
	for _, tc := range []struct {
		name, method, path string
		hdr                []string
		want               string
	}{
		{"no match", "GET", "/x", nil, "v1"},
		{"override header", "GET", "/x", []string{"weft-override-route", "v2"}, "v2"},
		{"override header, other value", "GET", "/x", []string{"weft-override-route", "v3"}, "v1"},
		{"method", "DELETE", "/x", nil, "v2"},
		{"other method", "PUT", "/x", nil, "v1"},
		{"query", "GET", "/x?a=1&version=2", nil, "v2"},
		{"query, other value", "GET", "/x?version=20", nil, "v1"},
		{"separated prefix itself", "GET", "/canary", nil, "v2"},
		{"separated prefix and more", "GET", "/canary/a", nil, "v2"},
		{"not a separated prefix", "GET", "/canaryx", nil, "v1"},
		{"gRPC only, gRPC", "GET", "/grpc-only", []string{"Content-Type", "application/grpc+proto"}, "v2"},
		{"gRPC only, not gRPC", "GET", "/grpc-only", []string{"Content-Type", "application/grpc-web"}, "v1"},
		{"regex header", "GET", "/x", []string{"x-env", "staging"}, "v2"},
		{"regex is whole", "GET", "/x", []string{"x-env", "staging2"}, "v1"},
	} {
		req, _ := http.NewRequest(tc.method, g.url(tc.path), nil)
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			req.Header.Set(tc.hdr[i], tc.hdr[i+1])
		}
		resp, s, body := g.do(t, req)
		if resp.StatusCode != 200 || s == nil || s.Backend != tc.want {
			t.Errorf("%s: %s %s: got %d %q, want backend %s", tc.name, tc.method, tc.path, resp.StatusCode, body, tc.want)
		}
	}
}

// TestRedirectAndDirectResponse: a redirect answers with its status and Location (the request's port
// and query kept unless changed); a direct response answers with its status and body; no backend sees
// either.
func TestRedirectAndDirectResponse(t *testing.T) {
	g := startGateway(t, "127.0.0.163", func(g *gateway) []*routev3.Route {
		return []*routev3.Route{
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/old"}},
				Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/new"},
					ResponseCode: routev3.RedirectAction_FOUND}}},
			{Match: prefixMatch("/secure"), Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
				SchemeRewriteSpecifier: &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "https"}, HostRedirect: "example.com"}}},
			{Match: prefixMatch("/elsewhere"), Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
				PortRedirect: 8443, PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/landing"}, StripQuery: true,
				ResponseCode: routev3.RedirectAction_PERMANENT_REDIRECT}}},
			{Match: prefixMatch("/broken"), Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}},
				ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-why", Value: "no valid backend"}}}},
			{Match: prefixMatch("/teapot"), Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 418,
				Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "short and stout"}}}}},
			{Match: prefixMatch("/"), Action: toCluster(g.v1.cluster())},
		}
	})
	port := strconv.Itoa(g.svc.port)
	for _, tc := range []struct {
		path     string
		code     int
		location string
	}{
		{"/old/page?q=1", 302, "http://" + echoFQDN + ":" + port + "/new/page?q=1"},
		{"/old", 302, "http://" + echoFQDN + ":" + port + "/new"},
		{"/secure/x", 301, "https://example.com/secure/x"},
		{"/elsewhere/x?q=1", 308, "http://" + echoFQDN + ":8443/landing"},
	} {
		resp, _, _ := g.get(t, tc.path)
		if resp.StatusCode != tc.code || resp.Header.Get("Location") != tc.location {
			t.Errorf("GET %s: %d Location %q, want %d %q", tc.path, resp.StatusCode, resp.Header.Get("Location"), tc.code, tc.location)
		}
	}
	resp, _, body := g.get(t, "/broken")
	if resp.StatusCode != 500 || body != "" || resp.Header.Get("X-Why") != "no valid backend" {
		t.Errorf("direct response: %d %q x-why %q, want 500, no body, x-why", resp.StatusCode, body, resp.Header.Get("X-Why"))
	}
	resp, _, body = g.get(t, "/teapot")
	if resp.StatusCode != 418 || body != "short and stout" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("direct response: %d %q %q", resp.StatusCode, body, resp.Header.Get("Content-Type"))
	}
	if n := g.v1.hits.Load(); n != 0 {
		t.Errorf("the backend saw %d requests; redirects and direct responses are the proxy's", n)
	}
}

// TestRewritesAndHeaders: prefix and full-path rewrites and the host rewrite reach the backend;
// request headers added, set and removed as the backend sees them; response headers as the client
// sees them.
func TestRewritesAndHeaders(t *testing.T) {
	add := func(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
	}
	g := startGateway(t, "127.0.0.164", func(g *gateway) []*routev3.Route {
		prefix := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: g.v1.cluster()}, PrefixRewrite: "/v2",
			HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "api.internal"}}
		full := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: g.v1.cluster()},
			RegexRewrite: &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/.*$"}, Substitution: "/replaced"}}
		return []*routev3.Route{
			{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api"}}, Action: &routev3.Route_Route{Route: prefix},
				RequestHeadersToAdd: []*corev3.HeaderValueOption{
					add("x-added", "one", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD),
					add("x-set", "new", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
					add("x-percent", "100%%", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
				RequestHeadersToRemove:  []string{"x-secret"},
				ResponseHeadersToAdd:    []*corev3.HeaderValueOption{add("x-served-by", "weft", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
				ResponseHeadersToRemove: []string{"x-upstream-secret"}},
			{Match: prefixMatch("/full"), Action: &routev3.Route_Route{Route: full}},
		}
	})
	resp, s, body := g.get(t, "/api/items?id=7", "X-Added", "zero", "X-Set", "old", "X-Secret", "hush")
	if resp.StatusCode != 200 || s == nil {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if s.Path != "/v2/items" || s.RawQuery != "id=7" || s.Host != "api.internal" {
		t.Errorf("backend saw path %q query %q host %q, want /v2/items id=7 api.internal", s.Path, s.RawQuery, s.Host)
	}
	if got := s.Header.Values("X-Added"); strings.Join(got, ",") != "zero,one" {
		t.Errorf("backend saw x-added %q, want zero and one (added)", got)
	}
	if got := s.Header.Values("X-Set"); strings.Join(got, ",") != "new" {
		t.Errorf("backend saw x-set %q, want new (set)", got)
	}
	if s.Header.Get("X-Percent") != "100%" {
		t.Errorf("backend saw x-percent %q, want 100%%", s.Header.Get("X-Percent"))
	}
	if _, ok := s.Header["X-Secret"]; ok {
		t.Errorf("backend saw x-secret, which the route removes")
	}
	if resp.Header.Get("X-Served-By") != "weft" || resp.Header.Get("X-Upstream-Secret") != "" || resp.Header.Get("X-Backend") != "v1" {
		t.Errorf("client saw x-served-by %q x-upstream-secret %q x-backend %q, want weft, none (removed), v1",
			resp.Header.Get("X-Served-By"), resp.Header.Get("X-Upstream-Secret"), resp.Header.Get("X-Backend"))
	}
	// /apix is not under the separated prefix /api: the second route does not match either.
	if resp, _, _ := g.get(t, "/apix"); resp.StatusCode != 503 {
		t.Errorf("/apix: %d, want 503 (no route)", resp.StatusCode)
	}
	_, s, body = g.get(t, "/full/path?x=1")
	if s == nil || s.Path != "/replaced" || s.RawQuery != "x=1" {
		t.Errorf("full path rewrite: backend saw %q", body)
	}
	// An HTTP/2 client (net/http's HTTP/2 server, the HTTP/2 forwarder for a GET) gets the same.
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	g2 := *g
	g2.c = &http.Client{Transport: resolve(h2, g.svc), Timeout: 10 * time.Second}
	resp, s, body = g2.get(t, "/api/h2", "X-Secret", "hush")
	if resp.ProtoMajor != 2 || s == nil || s.Path != "/v2/h2" || s.Host != "api.internal" || s.Header.Get("X-Secret") != "" || s.Header.Get("X-Set") != "new" ||
		resp.Header.Get("X-Served-By") != "weft" || resp.Header.Get("X-Upstream-Secret") != "" {
		t.Errorf("HTTP/2 GET: %s %d %v %q", resp.Proto, resp.StatusCode, resp.Header, body)
	}
	// A POST (net/http's path, ReverseProxy) gets the same.
	req, _ := http.NewRequest(http.MethodPost, g.url("/api/post"), strings.NewReader("payload"))
	req.Header.Set("X-Secret", "hush")
	resp, s, body = g.do(t, req)
	if s == nil || s.Path != "/v2/post" || s.Body != "payload" || s.Header.Get("X-Secret") != "" || resp.Header.Get("X-Served-By") != "weft" {
		t.Errorf("POST: %d %q", resp.StatusCode, body)
	}
}

// TestMirror: the mirror gets a copy of each request (body included, Host with Envoy's -shadow) while
// the client gets the primary's answer, even while the mirror has not answered.
func TestMirror(t *testing.T) {
	g := startGateway(t, "127.0.0.165", func(g *gateway) []*routev3.Route {
		ra := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: g.v1.cluster()},
			RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: g.mirror.cluster()}}}
		return []*routev3.Route{{Match: prefixMatch("/"), Action: &routev3.Route_Route{Route: ra},
			RequestHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-route", Value: "mirrored"}}}}}
	})
	release := make(chan struct{})
	g.mirror.setHook(func(_ int64, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	resp, s, body := g.get(t, "/m?a=1")
	if resp.StatusCode != 200 || s == nil || s.Backend != "v1" {
		t.Fatalf("client got %d %q, want the primary's answer", resp.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodPost, g.url("/post"), strings.NewReader("copy me"))
	resp, s, body = g.do(t, req)
	if resp.StatusCode != 200 || s == nil || s.Backend != "v1" || s.Body != "copy me" {
		t.Fatalf("client got %d %q, want the primary's answer", resp.StatusCode, body)
	}
	close(release) // the mirror answers only now: the client's answers did not wait for it
	var got []seen
	for len(got) < 2 {
		select {
		case m := <-g.mirror.got:
			got = append(got, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("the mirror got %d requests, want 2", len(got))
		}
	}
	byPath := map[string]seen{got[0].Path: got[0], got[1].Path: got[1]}
	if m := byPath["/m"]; m.Method != "GET" || m.RawQuery != "a=1" || m.Host != echoFQDN+"-shadow:"+strconv.Itoa(g.svc.port) || m.Header.Get("X-Route") != "mirrored" {
		t.Errorf("mirror of the GET: %+v", m)
	}
	if m := byPath["/post"]; m.Method != "POST" || m.Body != "copy me" {
		t.Errorf("mirror of the POST: %+v", m)
	}
	waitFor(t, "the mirrors counted", func() bool {
		return metricValue(t, g.sc.reg, "request_mirror_total", map[string]string{"cluster": g.mirror.cluster(), "outcome": "200"}) == 2
	})
}

// TestTimeouts: the route timeout answers 504; max_stream_duration's grpc_timeout_header_max takes a
// gRPC client's grpc-timeout; a per-try timeout with a retry recovers from a slow first try.
func TestTimeouts(t *testing.T) {
	g := startGateway(t, "127.0.0.166", func(g *gateway) []*routev3.Route {
		slow := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: g.v1.cluster()}, Timeout: durationpb.New(300 * time.Millisecond)}
		grpcish := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: g.v1.cluster()}, Timeout: durationpb.New(20 * time.Second),
			MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(20 * time.Second)}}
		retried := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: g.v2.cluster()}, Timeout: durationpb.New(20 * time.Second),
			RetryPolicy: &routev3.RetryPolicy{RetryOn: "5xx,connect-failure", NumRetries: wrapperspb.UInt32(2), PerTryTimeout: durationpb.New(300 * time.Millisecond),
				RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}}
		return []*routev3.Route{
			{Match: prefixMatch("/slow"), Action: &routev3.Route_Route{Route: slow}},
			{Match: prefixMatch("/grpcish"), Action: &routev3.Route_Route{Route: grpcish}},
			{Match: prefixMatch("/retried"), Action: &routev3.Route_Route{Route: retried}},
		}
	})
	block := func(_ int64, r *http.Request) { <-r.Context().Done() }
	g.v1.setHook(block)
	resp, _, body := g.get(t, "/slow")
	if resp.StatusCode != 504 || !strings.Contains(resp.Header.Get("Weft-Error"), "timeout") {
		t.Errorf("route timeout: %d %q weft-error %q, want 504", resp.StatusCode, body, resp.Header.Get("Weft-Error"))
	}
	resp, _, body = g.get(t, "/grpcish", "Grpc-Timeout", "300m")
	if resp.StatusCode != 504 {
		t.Errorf("grpc-timeout 300m under a 20 s route: %d %q, want 504", resp.StatusCode, body)
	}
	// The first try hangs, the second answers: the per-try timeout cuts the first, the retry recovers.
	g.v2.setHook(func(n int64, r *http.Request) {
		if n == 1 {
			<-r.Context().Done()
		}
	})
	resp, s, body := g.get(t, "/retried")
	if resp.StatusCode != 200 || s == nil || s.Backend != "v2" || g.v2.hits.Load() != 2 {
		t.Errorf("per-try timeout and retry: %d %q after %d tries, want 200 from the second", resp.StatusCode, body, g.v2.hits.Load())
	}
}

// TestRouteNACKedWithReason: a route configuration with something the proxy cannot do is NACKed with
// the field and the reason, and the proxy keeps serving its last good configuration.
func TestRouteNACKedWithReason(t *testing.T) {
	g := startGateway(t, "127.0.0.167", func(g *gateway) []*routev3.Route {
		return []*routev3.Route{{Match: prefixMatch("/"), Action: toCluster(g.v1.cluster())}}
	})
	for i, tc := range []struct {
		name   string
		route  func(r *routev3.Route)
		reason string
	}{
		{"range header match", func(r *routev3.Route) {
			r.Match.Headers = []*routev3.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &routev3.HeaderMatcher_RangeMatch{}}}
		}, `match.headers[0]: field range_match (6) is not supported`},
		{"hash policy", func(r *routev3.Route) {
			r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{}}
		}, `route: field hash_policy (15) is not supported`},
		{"rate limits", func(r *routev3.Route) { r.GetRoute().RateLimits = []*routev3.RateLimit{{}} }, `route: field rate_limits (13) is not supported`},
		{"upgrade configs", func(r *routev3.Route) {
			r.GetRoute().UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket"}}
		}, `route: field upgrade_configs (25) is not supported`},
		{"header command operator", func(r *routev3.Route) {
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-ip", Value: "%DOWNSTREAM_REMOTE_ADDRESS%"}}}
		}, `command operators (%...%) in header values are not supported`},
		{"mirror to a header's cluster", func(r *routev3.Route) {
			r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{ClusterHeader: "x-mirror"}}
		}, `request_mirror_policies[0]: field cluster_header (5) is not supported`},
		{"redirect by path_rewrite", func(r *routev3.Route) {
			r.Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{PathRewriteSpecifier: &routev3.RedirectAction_PathRewrite{PathRewrite: "/x"}}}
		}, `redirect: field path_rewrite (10) is not supported`},
		{"direct response from a file", func(r *routev3.Route) {
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 200, Body: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/passwd"}}}}
		}, `direct_response: body must be inline_string or inline_bytes`},
	} {
		before := len(g.cp.nackList())
		msgs := g.resources([]*routev3.Route{{Match: prefixMatch("/"), Action: toCluster(g.v1.cluster())}})
		for _, m := range msgs {
			if rc, ok := m.(*routev3.RouteConfiguration); ok {
				tc.route(rc.VirtualHosts[0].Routes[0])
			}
		}
		g.cp.set(t, clientNode.ID(), "bad"+strconv.Itoa(i), msgs...)
		waitFor(t, tc.name+" NACKed", func() bool { return len(g.cp.nackList()) > before })
		if n := g.cp.nackList()[before]; !strings.Contains(n, tc.reason) {
			t.Errorf("%s: NACK %q, want it to say %q", tc.name, n, tc.reason)
		}
		if resp, s, body := g.get(t, "/still"); resp.StatusCode != 200 || s == nil || s.Backend != "v1" {
			t.Errorf("%s: after the NACK: %d %q, want the last good configuration", tc.name, resp.StatusCode, body)
		}
	}
}
