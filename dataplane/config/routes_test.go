package config_test

import (
	"regexp"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/dataplane/config"
	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

var routeCmp = append([]cmp.Option{cmp.Comparer(func(a, b *regexp.Regexp) bool {
	return a == nil && b == nil || a != nil && b != nil && a.String() == b.String()
})}, cmpOpts...)

func exactHeader(name, v string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}}
}

func hvo(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
}

// gatewayRoutes is a route configuration with every feature of the contract (docs: the Gateway API
// mapping), as weft-control emits it for HTTPRoutes.
func gatewayRoutes() *routev3.RouteConfiguration {
	cl := func(n string) string { return "outbound|8080||" + n + ".shop.svc.cluster.local" }
	return &routev3.RouteConfiguration{Name: "8080", VirtualHosts: []*routev3.VirtualHost{{
		Name: "echo.shop.svc.cluster.local:8080", Domains: []string{"echo.shop.svc.cluster.local", "echo.shop.svc.cluster.local:8080"},
		Routes: []*routev3.Route{{
			Name: "override",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{exactHeader("weft-override-route", "echo-v2")}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cl("echo-v2")}}},
		}, {
			Name: "canary",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api"},
				Headers: []*routev3.HeaderMatcher{exactHeader(":method", "GET"), {Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "a.*"}}}}}},
				QueryParameters: []*routev3.QueryParameterMatcher{{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{
					StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "2"}}}}}},
			RequestHeadersToAdd:     []*corev3.HeaderValueOption{hvo("x-add", "a", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD), hvo("x-set", "100%%", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
			RequestHeadersToRemove:  []string{"x-drop"},
			ResponseHeadersToAdd:    []*corev3.HeaderValueOption{hvo("x-resp", "r", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)},
			ResponseHeadersToRemove: []string{"server"},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
					{Name: cl("echo-v1"), Weight: wrapperspb.UInt32(90)}, {Name: cl("echo-v2"), Weight: wrapperspb.UInt32(10)}}}},
				PrefixRewrite:        "/v2",
				HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "echo.internal"},
				Timeout:              durationpb.New(2 * time.Second),
				RetryPolicy: &routev3.RetryPolicy{RetryOn: "connect-failure,retriable-status-codes", NumRetries: wrapperspb.UInt32(2),
					PerTryTimeout: durationpb.New(500 * time.Millisecond), RetriableStatusCodes: []uint32{503},
					RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(10 * time.Millisecond)}},
				RequestMirrorPolicies: []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: cl("shadow"), RuntimeFraction: &corev3.RuntimeFractionalPercent{
					DefaultValue: &typev3.FractionalPercent{Numerator: 50, Denominator: typev3.FractionalPercent_HUNDRED}}}},
				MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: durationpb.New(0)},
			}},
		}, {
			Name:  "full-path",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/old"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cl("echo")},
				RegexRewrite: &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "^/(o)ld$"}, Substitution: `/new/\1$`}}},
		}, {
			Name:  "redirect",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/moved"}},
			Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "https"},
				HostRedirect: "example.com", PortRedirect: 8443, PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: "/here"},
				ResponseCode: routev3.RedirectAction_FOUND}},
		}, {
			Name:   "invalid backends",
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 500}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{hvo("x-vhost", "v", corev3.HeaderValueOption_ADD_IF_ABSENT)},
	}}}
}

func TestDecodeGatewayRoutes(t *testing.T) {
	got, err := config.DecodeRouteConfig(gatewayRoutes())
	if err != nil {
		t.Fatal(err)
	}
	cl := func(n string) string { return "outbound|8080||" + n + ".shop.svc.cluster.local" }
	vhostResp := config.HeaderMutation{Add: []config.HeaderOp{{Key: "X-Vhost", Value: "v", Action: config.AddIfAbsent}}}
	want := &config.RouteConfig{Name: "8080", VirtualHosts: []config.VirtualHost{{
		Name: "echo.shop.svc.cluster.local:8080", Domains: []string{"echo.shop.svc.cluster.local", "echo.shop.svc.cluster.local:8080"}, Extended: true,
		Routes: []config.Route{{
			Name: "override", Kind: config.PathPrefix, Prefix: "/", Cluster: cl("echo-v2"),
			Headers:         []config.HeaderMatcher{{Name: "weft-override-route", Key: "Weft-Override-Route", Match: config.ValueMatch{Kind: config.ValueExact, Value: "echo-v2"}}},
			ResponseHeaders: []config.HeaderMutation{vhostResp}, Extended: true,
		}, {
			Name: "canary", Kind: config.PathSeparatedPrefix, Prefix: "/api",
			Headers: []config.HeaderMatcher{
				{Name: ":method", Key: ":method", Match: config.ValueMatch{Kind: config.ValueExact, Value: "GET"}},
				{Name: "x-user", Key: "X-User", Match: config.ValueMatch{Kind: config.ValueRegex, Regex: regexp.MustCompile("^(?:a.*)$")}}},
			Query:            []config.QueryMatcher{{Name: "v", Match: config.ValueMatch{Kind: config.ValueExact, Value: "2"}, Present: true}},
			WeightedClusters: []config.WeightedCluster{{Name: cl("echo-v1"), Weight: 90}, {Name: cl("echo-v2"), Weight: 10}}, TotalWeight: 100,
			PrefixRewrite: "/v2", HostRewrite: "echo.internal", Timeout: 2 * time.Second,
			Retry: &config.RetryPolicy{On: config.RetryConnectFailure | config.RetryRetriableStatusCodes, NumRetries: 2, PerTryTimeout: 500 * time.Millisecond,
				RetriableStatusCodes: []int{503}, BaseInterval: 10 * time.Millisecond, MaxInterval: 100 * time.Millisecond},
			Mirrors:     []config.Mirror{{Cluster: cl("shadow"), PerMillion: 500000}},
			GRPCTimeout: &config.GRPCTimeout{},
			RequestHeaders: []config.HeaderMutation{{Remove: []string{"X-Drop"}, Add: []config.HeaderOp{
				{Key: "X-Add", Value: "a"}, {Key: "X-Set", Value: "100%", Action: config.OverwriteIfExistsOrAdd}}}},
			ResponseHeaders: []config.HeaderMutation{{Remove: []string{"Server"}, Add: []config.HeaderOp{{Key: "X-Resp", Value: "r", Action: config.OverwriteIfExistsOrAdd}}}, vhostResp},
			Extended:        true,
		}, {
			Name: "full-path", Kind: config.PathExact, Path: "/old", Cluster: cl("echo"),
			RegexRewrite:    &config.Rewrite{Regex: regexp.MustCompile("^/(o)ld$"), Template: "/new/${1}$$"},
			ResponseHeaders: []config.HeaderMutation{vhostResp}, Extended: true,
		}, {
			Name: "redirect", Kind: config.PathSeparatedPrefix, Prefix: "/moved",
			Redirect:        &config.Redirect{Scheme: "https", Host: "example.com", Port: 8443, PathKind: config.RedirectPrefix, Path: "/here", Code: 302},
			ResponseHeaders: []config.HeaderMutation{vhostResp}, Extended: true,
		}, {
			Name: "invalid backends", Kind: config.PathPrefix, Prefix: "/", Direct: &config.DirectResponse{Status: 500},
			ResponseHeaders: []config.HeaderMutation{vhostResp}, Extended: true,
		}},
	}}}
	if d := cmp.Diff(want, got, routeCmp...); d != "" {
		t.Errorf("-want +got:\n%s", d)
	}
	if s := got.VirtualHosts[0].Routes[2].RegexRewrite.Apply("/old"); s != "/new/o$" {
		t.Errorf("regex rewrite of /old = %q, want /new/o$", s)
	}
}

// TestRouteNACKs: what the proxy cannot do is refused with the field and the reason.
func TestRouteNACKs(t *testing.T) {
	canary := func(rc *routev3.RouteConfiguration) *routev3.Route { return rc.VirtualHosts[0].Routes[1] }
	action := func(rc *routev3.RouteConfiguration) *routev3.RouteAction { return canary(rc).GetRoute() }
	for _, tc := range []struct {
		name    string
		mutate  func(*routev3.RouteConfiguration)
		wantErr string
	}{
		{"hash policy", func(rc *routev3.RouteConfiguration) {
			action(rc).HashPolicy = []*routev3.RouteAction_HashPolicy{{}}
		}, `virtual_hosts[0].routes[1].route: field hash_policy (15) is not supported`},
		{"rate limits", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].RateLimits = []*routev3.RateLimit{{}} }, `virtual_hosts[0]: field rate_limits (6) is not supported`},
		{"per-filter config", func(rc *routev3.RouteConfiguration) {
			canary(rc).TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.rbac": {}}
		}, `virtual_hosts[0].routes[1]: field typed_per_filter_config (13) is not supported`},
		{"cookie match", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.Cookies = []*routev3.CookieMatcher{{Name: "c"}}
		}, `routes[1].match: field cookies (17) is not supported`},
		{"runtime fraction match", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.RuntimeFraction = &corev3.RuntimeFractionalPercent{}
		}, `routes[1].match: field runtime_fraction (9) is not supported`},
		{"idle timeout", func(rc *routev3.RouteConfiguration) { action(rc).IdleTimeout = durationpb.New(time.Second) },
			`routes[1].route: field idle_timeout (24) is not supported`},
		{"retry host predicate", func(rc *routev3.RouteConfiguration) {
			action(rc).RetryPolicy.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}}
		}, `routes[1].route.retry_policy: field retry_host_predicate (5) is not supported`},
		{"mirror by header", func(rc *routev3.RouteConfiguration) { action(rc).RequestMirrorPolicies[0].ClusterHeader = "x" },
			`request_mirror_policies[0]: field cluster_header (5) is not supported`},
		{"cluster header", func(rc *routev3.RouteConfiguration) {
			action(rc).ClusterSpecifier = &routev3.RouteAction_ClusterHeader{ClusterHeader: "x-cluster"}
		}, `routes[1].route: field cluster_header (2) is not supported`},
		{"weighted cluster metadata", func(rc *routev3.RouteConfiguration) {
			action(rc).GetWeightedClusters().Clusters[0].MetadataMatch = &corev3.Metadata{}
		}, `weighted_clusters.clusters[0]: field metadata_match (3) is not supported`},
		{"direct response body from a file", func(rc *routev3.RouteConfiguration) {
			rc.VirtualHosts[0].Routes[4].GetDirectResponse().Body = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: "/etc/x"}}
		}, `direct_response: body must be inline_string or inline_bytes`},
		{"direct response status", func(rc *routev3.RouteConfiguration) { rc.VirtualHosts[0].Routes[4].GetDirectResponse().Status = 99 },
			`direct_response: status 99 is out of range [200, 599]`},
		{"redirect path_rewrite", func(rc *routev3.RouteConfiguration) {
			rc.VirtualHosts[0].Routes[3].GetRedirect().PathRewriteSpecifier = &routev3.RedirectAction_PathRewrite{PathRewrite: "/x"}
		}, `routes[3].redirect: field path_rewrite (10) is not supported`},
		{"redirect scheme", func(rc *routev3.RouteConfiguration) {
			rc.VirtualHosts[0].Routes[3].GetRedirect().SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: "ftp"}
		}, `redirect: scheme_redirect "ftp" is not supported (want http or https)`},
		{"command operator", func(rc *routev3.RouteConfiguration) {
			canary(rc).RequestHeadersToAdd[0].Header.Value = "%DOWNSTREAM_REMOTE_ADDRESS%"
		}, `request headers: headers_to_add[0] "x-add": command operators (%...%) in header values are not supported`},
		{"host header", func(rc *routev3.RouteConfiguration) { canary(rc).RequestHeadersToRemove = []string{"Host"} },
			`headers_to_remove[0]: Host may not be modified`},
		{"pseudo-header matcher", func(rc *routev3.RouteConfiguration) { canary(rc).Match.Headers[0].Name = ":status" },
			`headers[0] ":status": pseudo-header :status is not supported`},
		{"bad regex", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.Headers[1].GetStringMatch().GetSafeRegex().Regex = "a("
		}, `headers[1] "x-user": safe_regex: error parsing regexp`},
		{"path separated prefix with a slash", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/api/"}
		}, `path_separated_prefix "/api/" must start with / and neither end with / nor hold ? or #`},
		{"rewrite group out of range", func(rc *routev3.RouteConfiguration) {
			rc.VirtualHosts[0].Routes[2].GetRoute().RegexRewrite.Substitution = `\2`
		}, `regex_rewrite: substitution "\\2" refers to group 2; the pattern has 1`},
		{"prefix rewrite on a regex route", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "/a.*"}}
		}, `prefix_rewrite needs a prefix, path or path_separated_prefix match, not safe_regex`},
		{"custom string matcher", func(rc *routev3.RouteConfiguration) {
			canary(rc).Match.QueryParameters[0].GetStringMatch().MatchPattern = &matcherv3.StringMatcher_Custom{}
		}, `match.query_parameters[0].string_match: field custom (8) is not supported`},
		{"route config mirror", func(rc *routev3.RouteConfiguration) {
			rc.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "x"}}
		}, `route configuration "8080": RouteConfiguration: field request_mirror_policies (13) is not supported`},
		{"total weight", func(rc *routev3.RouteConfiguration) {
			//lint:ignore SA1019 Envoy still accepts the deprecated total_weight, and the proxy checks it
			action(rc).GetWeightedClusters().TotalWeight = wrapperspb.UInt32(99)
		}, `total_weight 99 is not the sum of the weights (100)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := gatewayRoutes()
			tc.mutate(rc)
			_, err := config.DecodeRouteConfig(rc)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), `route configuration "8080": `) {
				t.Fatalf("error = %v\nwant it to name the route configuration and contain %q", err, tc.wantErr)
			}
		})
	}
	// Fields whose only effect is outside the proxy (stats, tracing, metadata) are accepted.
	rc := gatewayRoutes()
	rc.VirtualHosts[0].Routes[1].Decorator = &routev3.Decorator{Operation: "op"}
	rc.VirtualHosts[0].Routes[1].StatPrefix = "canary"
	rc.VirtualHosts[0].VirtualClusters = []*routev3.VirtualCluster{{Name: "vc"}}
	rc.ValidateClusters = wrapperspb.Bool(true)
	if _, err := config.DecodeRouteConfig(rc); err != nil {
		t.Fatalf("ignorable fields: %v", err)
	}
}

func TestHeaderAndQueryMatchers(t *testing.T) {
	present := func(want, invert bool) config.HeaderMatcher {
		return config.HeaderMatcher{Name: "x", Match: config.ValueMatch{Kind: config.ValuePresent}, Present: want, Invert: invert}
	}
	exact := config.HeaderMatcher{Name: "x", Match: config.ValueMatch{Kind: config.ValueExact, Value: "a"}}
	for _, tc := range []struct {
		name string
		m    config.HeaderMatcher
		v    string
		ok   bool
		want bool
	}{
		{"exact hit", exact, "a", true, true},
		{"exact miss", exact, "b", true, false},
		{"exact absent", exact, "", false, false},
		{"exact of empty matches empty", config.HeaderMatcher{Match: config.ValueMatch{Kind: config.ValueExact}}, "", true, true},
		{"inverted exact miss", config.HeaderMatcher{Match: exact.Match, Invert: true}, "b", true, true},
		{"inverted exact absent", config.HeaderMatcher{Match: exact.Match, Invert: true}, "", false, false},
		{"missing as empty", config.HeaderMatcher{Match: config.ValueMatch{Kind: config.ValueExact}, MissingAsEmpty: true}, "", false, true},
		{"present", present(true, false), "", true, true},
		{"present absent", present(true, false), "", false, false},
		{"absent wanted", present(false, false), "", false, true},
		{"absent wanted, present", present(false, false), "z", true, false},
		{"inverted present, absent", present(true, true), "", false, true},
		{"ignore case", config.HeaderMatcher{Match: config.ValueMatch{Kind: config.ValuePrefix, Value: "ab", IgnoreCase: true}}, "ABC", true, true},
		{"contains", config.HeaderMatcher{Match: config.ValueMatch{Kind: config.ValueContains, Value: "b"}}, "abc", true, true},
		{"suffix", config.HeaderMatcher{Match: config.ValueMatch{Kind: config.ValueSuffix, Value: "bc"}}, "abc", true, true},
		{"regex is whole", config.HeaderMatcher{Match: config.ValueMatch{Kind: config.ValueRegex, Regex: regexp.MustCompile("^(?:b)$")}}, "abc", true, false},
	} {
		if got := tc.m.Matches(tc.v, tc.ok); got != tc.want {
			t.Errorf("%s: Matches(%q, %v) = %v, want %v", tc.name, tc.v, tc.ok, got, tc.want)
		}
	}
	q := config.QueryMatcher{Name: "v", Match: config.ValueMatch{Kind: config.ValueExact, Value: "2"}, Present: true}
	qp := config.QueryMatcher{Name: "v", Match: config.ValueMatch{Kind: config.ValuePresent}, Present: true}
	qa := config.QueryMatcher{Name: "v", Match: config.ValueMatch{Kind: config.ValuePresent}, Present: false}
	for _, c := range []struct {
		m    config.QueryMatcher
		v    string
		ok   bool
		want bool
	}{{q, "2", true, true}, {q, "3", true, false}, {q, "", false, false}, {qp, "", true, true}, {qp, "", false, false}, {qa, "", false, true}, {qa, "x", true, false}} {
		if got := c.m.Matches(c.v, c.ok); got != c.want {
			t.Errorf("query %+v: Matches(%q, %v) = %v, want %v", c.m, c.v, c.ok, got, c.want)
		}
	}
}

// TestUnknownFieldTables: every field of Envoy's route messages is either in the slim message (read) or
// named in the proxy's table of unknown fields (refused, or ignored where that cannot change what the
// proxy does), under Envoy's name and number: an Envoy upgrade that adds a field fails here.
func TestUnknownFieldTables(t *testing.T) {
	tables := config.RouteUnknownFields()
	seen := map[string]bool{}
	var walk func(slim, envoy protoreflect.MessageDescriptor)
	walk = func(slim, envoy protoreflect.MessageDescriptor) {
		name := string(slim.FullName())
		if seen[name] || !strings.HasPrefix(name, "weft.dataplane.envoy.v3.") || slim.FullName() == (&xp.Present{}).ProtoReflect().Descriptor().FullName() {
			return
		}
		seen[name] = true
		table, ok := tables[name]
		if !ok {
			t.Errorf("%s (Envoy's %s) has no table of unknown fields", name, envoy.FullName())
			return
		}
		for i := range envoy.Fields().Len() {
			ef := envoy.Fields().Get(i)
			sf := slim.Fields().ByNumber(ef.Number())
			switch {
			case sf != nil && table[int32(ef.Number())] != "":
				t.Errorf("%s: field %d is both read and in the table", name, ef.Number())
			case sf != nil:
				if sf.Message() != nil && ef.Message() != nil && !sf.IsMap() {
					walk(sf.Message(), ef.Message())
				}
			case table[int32(ef.Number())] != string(ef.Name()):
				t.Errorf("%s: Envoy's field %s (%d) is neither read nor in the table (%q)", name, ef.Name(), ef.Number(), table[int32(ef.Number())])
			}
		}
		for n := range table {
			if envoy.Fields().ByNumber(protoreflect.FieldNumber(n)) == nil {
				t.Errorf("%s: the table names field %d, which Envoy's message lacks", name, n)
			}
		}
	}
	walk((&xp.RouteConfiguration{}).ProtoReflect().Descriptor(), (&routev3.RouteConfiguration{}).ProtoReflect().Descriptor())
	for name := range tables {
		if !seen[name] {
			t.Errorf("table for %s, which no route message reaches", name)
		}
	}
}
