package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/dataplane/config"
)

// fuzzRoutes is a seed route configuration with every Gateway API feature the proxy implements.
func fuzzRoutes() *routev3.RouteConfiguration {
	exact := func(v string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
	}
	rx := func(v string) *matcherv3.RegexMatcher { return &matcherv3.RegexMatcher{Regex: v} }
	hvo := func(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
	}
	return &routev3.RouteConfiguration{Name: "80", VirtualHosts: []*routev3.VirtualHost{{Name: "echo", Domains: []string{"*"},
		RequestHeadersToAdd: []*corev3.HeaderValueOption{hvo("x-vh", "1", corev3.HeaderValueOption_ADD_IF_ABSENT)},
		Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{{Name: "weft-override-route", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("b")}}}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "b"}}},
		}, {
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api"},
				Headers:         []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("GET")}}},
				QueryParameters: []*routev3.QueryParameterMatcher{{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}}}},
			RequestHeadersToAdd:     []*corev3.HeaderValueOption{hvo("x-set", "v", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
			RequestHeadersToRemove:  []string{"x-drop"},
			ResponseHeadersToAdd:    []*corev3.HeaderValueOption{hvo("x-resp", "r", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)},
			ResponseHeadersToRemove: []string{"server"},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
					{Name: "a", Weight: wrapperspb.UInt32(90)}, {Name: "b", Weight: wrapperspb.UInt32(10),
						ResponseHeadersToAdd: []*corev3.HeaderValueOption{hvo("x-canary", "1", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS)}}}}},
				PrefixRewrite: "/v2", Timeout: durationpb.New(time.Second),
				RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "m", RuntimeFraction: &corev3.RuntimeFractionalPercent{
					DefaultValue: &typev3.FractionalPercent{Numerator: 5, Denominator: typev3.FractionalPercent_TEN_THOUSAND}}}},
				MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(time.Second), GrpcTimeoutHeaderOffset: durationpb.New(time.Millisecond)},
			}},
		}, {
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: rx("/re/(.*)")}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "a"},
				RegexRewrite: &matcherv3.RegexMatchAndSubstitute{Pattern: rx("^/re/(.*)$"), Substitution: `/x/\1`}}},
		}, {
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/moved"}},
			Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true},
				PortRedirect: 8443, PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/new"}, ResponseCode: routev3.RedirectAction_SEE_OTHER}},
		}, {
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}},
		}},
	}}}
}

// FuzzRouteRequest decodes arbitrary bytes as a route configuration (as weft-proxy reads RDS), and
// routes a request built from arbitrary parts through each accepted virtual host the way serveHTTP
// does: matching, the weighted choice, header mutations, rewrites, redirect locations, timeouts.
// Nothing panics; a rejected configuration has a reason; a redirect's Location is a URL without
// spaces or control characters; a timeout is never negative; a weighted route always picks a cluster.
func FuzzRouteRequest(f *testing.F) {
	seed, err := proto.Marshal(fuzzRoutes())
	if err != nil {
		f.Fatal(err)
	}
	for _, target := range []string{"/api?v=1", "/api/x?v", "/apix", "/re/a%2Fb", "/moved?q=1", "/"} {
		f.Add(seed, "GET", target, "weft-override-route", "b", "100m")
	}
	f.Add(seed, "DELETE", "/api?v=", "X-Drop", "1", "")
	f.Add([]byte{}, "GET", "/", "", "", "")
	f.Fuzz(func(t *testing.T, rcBytes []byte, method, target, hname, hvalue, grpcTimeoutValue string) {
		_, v, err := config.Decode(config.RouteType, &anypb.Any{TypeUrl: config.RouteType, Value: rcBytes})
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("rejected without a reason")
			}
			return
		}
		rc := v.(*config.RouteConfig)
		u, err := url.ParseRequestURI(target)
		if err != nil || method == "" || strings.ContainsAny(method, " \r\n") {
			return
		}
		for vi := range rc.VirtualHosts {
			vh := &rc.VirtualHosts[vi]
			req := &http.Request{Method: method, URL: u, Host: "echo.shop.svc.cluster.local:80", Header: http.Header{}}
			if hname != "" {
				req.Header.Set(hname, hvalue)
			}
			if grpcTimeoutValue != "" {
				req.Header.Set("Grpc-Timeout", grpcTimeoutValue)
			}
			route := matchRoute(vh, req.URL.Path, req)
			if route == nil {
				continue
			}
			if d := routeTimeout(route, req); d < 0 {
				t.Fatalf("negative timeout %v", d)
			}
			if route.Redirect != nil {
				loc := redirectLocation(route, req)
				if _, err := url.Parse(loc); err != nil || strings.ContainsAny(loc, " \r\n\t\x00") {
					t.Fatalf("redirect Location %q: %v", loc, err)
				}
				continue
			}
			wc := pickWeighted(route)
			if len(route.WeightedClusters) > 0 && wc == nil {
				t.Fatal("no weighted cluster chosen")
			}
			h := req.Header.Clone()
			for i := range route.RequestHeaders {
				mutateHeaders(h, &route.RequestHeaders[i])
			}
			resp := http.Header{"Server": {"x"}}
			for _, m := range responseMutations(route, wc) {
				mutateHeaders(resp, &m)
			}
			if route.PrefixRewrite != "" || route.RegexRewrite != nil {
				u2 := *req.URL
				setPath(&u2, rewritePath(route, u2.EscapedPath()))
				_ = u2.String()
			}
		}
	})
}
