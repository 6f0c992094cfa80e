package xds

import (
	"fmt"
	"regexp"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weftmesh/weft/discovery"
)

// httpRouteEntries translates an HTTPRoute's rules: one entry per match (a rule without matches
// matches every request).
func httpRouteEntries(s *discovery.State, o Options, hr *gwv1.HTTPRoute, probs *routeProblems) []gammaEntry {
	const kind = "HTTPRoute"
	meta := hr.ObjectMeta
	override := meta.Annotations[OverrideRouteAnnotation] == "enabled"
	var out []gammaEntry
	for ri, rule := range hr.Spec.Rules {
		where := fmt.Sprintf("spec.rules[%d]", ri)
		ra := ruleAction{route: &route.Route{}}
		action := &route.RouteAction{}
		var redirect *gwv1.HTTPRequestRedirectFilter
		var rewrite *gwv1.HTTPURLRewriteFilter
		for fi, f := range rule.Filters {
			fw := fmt.Sprintf("%s.filters[%d]", where, fi)
			switch f.Type {
			case gwv1.HTTPRouteFilterRequestHeaderModifier:
				add, rm := headerMods(f.RequestHeaderModifier)
				ra.route.RequestHeadersToAdd = append(ra.route.RequestHeadersToAdd, add...)
				ra.route.RequestHeadersToRemove = append(ra.route.RequestHeadersToRemove, rm...)
			case gwv1.HTTPRouteFilterResponseHeaderModifier:
				add, rm := headerMods(f.ResponseHeaderModifier)
				ra.route.ResponseHeadersToAdd = append(ra.route.ResponseHeadersToAdd, add...)
				ra.route.ResponseHeadersToRemove = append(ra.route.ResponseHeadersToRemove, rm...)
			case gwv1.HTTPRouteFilterRequestRedirect:
				if f.RequestRedirect == nil {
					probs.unsupported("%s: requestRedirect is missing", fw)
					continue
				}
				redirect = f.RequestRedirect
			case gwv1.HTTPRouteFilterURLRewrite:
				if f.URLRewrite == nil {
					probs.unsupported("%s: urlRewrite is missing", fw)
					continue
				}
				rewrite = f.URLRewrite
			case gwv1.HTTPRouteFilterRequestMirror:
				if p := mirrorPolicy(s, o, kind, meta, f.RequestMirror, fw, probs); p != nil {
					action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, p)
				}
			default:
				probs.unsupported("%s: filter type %q is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror)", fw, f.Type)
			}
		}
		if redirect != nil && rewrite != nil {
			probs.unsupported("%s: requestRedirect and urlRewrite cannot be used together", where)
		}
		if rule.SessionPersistence != nil {
			probs.unsupported("%s.sessionPersistence is not supported", where)
		}
		var perTry *durationpb.Duration
		if t := rule.Timeouts; t != nil {
			if t.Request != nil {
				action.Timeout = parseDuration(where+".timeouts.request", string(*t.Request), probs)
			}
			if t.BackendRequest != nil {
				perTry = parseDuration(where+".timeouts.backendRequest", string(*t.BackendRequest), probs)
			}
		}
		action.RetryPolicy = retryPolicy(kind, rule.Retry, meta.Annotations, perTry, probs)
		if rewrite != nil {
			if rewrite.Hostname != nil {
				action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: string(*rewrite.Hostname)}
			}
			if p := rewrite.Path; p != nil && p.Type == gwv1.FullPathHTTPPathModifier && p.ReplaceFullPath != nil {
				action.RegexRewrite = &matcher.RegexMatchAndSubstitute{Pattern: &matcher.RegexMatcher{Regex: "^/.*$"}, Substitution: *p.ReplaceFullPath}
			}
		}
		for bi, br := range rule.BackendRefs {
			bw := fmt.Sprintf("%s.backendRefs[%d]", where, bi)
			if len(br.Filters) > 0 {
				probs.unsupported("%s.filters: filters on a backendRef are not supported; put them on the rule", bw)
			}
			if b, ok := resolveBackend(s, o, kind, meta, br.BackendObjectReference, bw, probs); ok {
				b.weight = weightOf(br.Weight)
				ra.backends = append(ra.backends, b)
			}
		}
		if redirect != nil {
			ra.route.Action = &route.Route_Redirect{Redirect: redirectAction(redirect, where, probs)}
		} else {
			ra.backendAction(action, where, probs)
		}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.HTTPRouteMatch{{}}
		}
		for mi, m := range matches {
			mw := fmt.Sprintf("%s.matches[%d]", where, mi)
			rm, e := httpMatch(m, mw, probs)
			e.created, e.kindName, e.ns, e.name, e.rule, e.idx = meta.CreationTimestamp, kind, meta.Namespace, meta.Name, ri, mi
			e = ra.entry(rm, e, override)
			prefixRewrite(e, m, redirect, rewrite, mw, probs)
			out = append(out, e)
		}
	}
	return out
}

// prefixRewrite sets a ReplacePrefixMatch (of a redirect or a URL rewrite) on an entry's routes: it is
// only meaningful for a PathPrefix match.
func prefixRewrite(e gammaEntry, m gwv1.HTTPRouteMatch, redirect *gwv1.HTTPRequestRedirectFilter, rewrite *gwv1.HTTPURLRewriteFilter, where string, probs *routeProblems) {
	var p *gwv1.HTTPPathModifier
	switch {
	case redirect != nil:
		p = redirect.Path
	case rewrite != nil:
		p = rewrite.Path
	}
	if p == nil || p.Type != gwv1.PrefixMatchHTTPPathModifier {
		return
	}
	if p.ReplacePrefixMatch == nil {
		probs.unsupported("%s: replacePrefixMatch is missing", where)
		return
	}
	if m.Path != nil && m.Path.Type != nil && *m.Path.Type != gwv1.PathMatchPathPrefix {
		probs.unsupported("%s: replacePrefixMatch needs a PathPrefix match", where)
		return
	}
	// Envoy's prefix_rewrite glues the rest of the path onto the new prefix, so "/" for the prefix
	// "/foo" would make "/foo/bar" "//bar"; the spec wants "/bar" (and "/" for "/foo"): a regex
	// rewrite of the prefix and its following slashes does that, as Envoy Gateway emits it.
	var regex *matcher.RegexMatchAndSubstitute
	if prefix := strings.TrimRight(matchPrefix(m), "/"); *p.ReplacePrefixMatch == "/" && prefix != "" {
		regex = &matcher.RegexMatchAndSubstitute{Pattern: &matcher.RegexMatcher{Regex: "^" + regexp.QuoteMeta(prefix) + "/*"}, Substitution: "/"}
	}
	for _, r := range append([]*route.Route{e.r}, e.overrides...) {
		switch a := r.Action.(type) {
		case *route.Route_Redirect:
			if regex != nil {
				a.Redirect.PathRewriteSpecifier = &route.RedirectAction_RegexRewrite{RegexRewrite: regex}
			} else {
				a.Redirect.PathRewriteSpecifier = &route.RedirectAction_PrefixRewrite{PrefixRewrite: *p.ReplacePrefixMatch}
			}
		case *route.Route_Route:
			if regex != nil {
				a.Route.RegexRewrite = regex
			} else {
				a.Route.PrefixRewrite = *p.ReplacePrefixMatch
			}
		}
	}
}

func redirectAction(f *gwv1.HTTPRequestRedirectFilter, where string, probs *routeProblems) *route.RedirectAction {
	ra := &route.RedirectAction{ResponseCode: route.RedirectAction_FOUND}
	if f.Scheme != nil {
		ra.SchemeRewriteSpecifier = &route.RedirectAction_SchemeRedirect{SchemeRedirect: *f.Scheme}
	}
	if f.Hostname != nil {
		ra.HostRedirect = string(*f.Hostname)
	}
	if f.Port != nil {
		ra.PortRedirect = uint32(*f.Port) // #nosec G115 -- the CRD limits ports to 1-65535
	}
	if p := f.Path; p != nil && p.Type == gwv1.FullPathHTTPPathModifier {
		if p.ReplaceFullPath == nil {
			probs.unsupported("%s.filters: requestRedirect.path.replaceFullPath is missing", where)
		} else {
			ra.PathRewriteSpecifier = &route.RedirectAction_PathRedirect{PathRedirect: *p.ReplaceFullPath}
		}
	}
	if f.StatusCode != nil {
		switch *f.StatusCode {
		case 301:
			ra.ResponseCode = route.RedirectAction_MOVED_PERMANENTLY
		case 302:
		case 303:
			ra.ResponseCode = route.RedirectAction_SEE_OTHER
		case 307:
			ra.ResponseCode = route.RedirectAction_TEMPORARY_REDIRECT
		case 308:
			ra.ResponseCode = route.RedirectAction_PERMANENT_REDIRECT
		default:
			probs.unsupported("%s.filters: requestRedirect.statusCode %d is not one of 301, 302, 303, 307, 308", where, *f.StatusCode)
		}
	}
	return ra
}

func weightOf(w *int32) uint32 {
	if w == nil {
		return 1
	}
	if *w < 0 {
		return 0
	}
	return uint32(*w) // #nosec G115 -- not negative
}

// httpMatch translates one HTTPRouteMatch (docs/design.md, "Routes": the contract with the proxy).
func httpMatch(m gwv1.HTTPRouteMatch, where string, probs *routeProblems) (*route.RouteMatch, gammaEntry) {
	rm := &route.RouteMatch{}
	var e gammaEntry
	typ, value := gwv1.PathMatchPathPrefix, "/"
	if m.Path != nil {
		if m.Path.Type != nil {
			typ = *m.Path.Type
		}
		if m.Path.Value != nil {
			value = *m.Path.Value
		}
	}
	switch typ {
	case gwv1.PathMatchExact:
		if !strings.HasPrefix(value, "/") {
			probs.unsupported("%s.path.value: %q must start with /", where, value)
		}
		rm.PathSpecifier = &route.RouteMatch_Path{Path: value}
		e.pathRank, e.pathLen = 3, len(value)
	case gwv1.PathMatchRegularExpression:
		checkRegex(where+".path.value", value, probs)
		rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: value}}
		e.pathRank, e.pathLen = 2, len(value)
	case gwv1.PathMatchPathPrefix:
		if !strings.HasPrefix(value, "/") || strings.ContainsAny(value, "?#") {
			probs.unsupported("%s.path.value: %q must start with / and hold no ? or #", where, value)
		}
		if p := strings.TrimRight(value, "/"); p == "" {
			rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: "/"}
		} else {
			rm.PathSpecifier = &route.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: p}
		}
		e.pathRank, e.pathLen = 1, len(strings.TrimRight(value, "/"))
	default:
		probs.unsupported("%s.path.type: %q is not supported (Exact, PathPrefix, RegularExpression)", where, typ)
	}
	for hi, h := range m.Headers {
		hw := fmt.Sprintf("%s.headers[%d]", where, hi)
		name := strings.ToLower(string(h.Name))
		if h.Type != nil && *h.Type == gwv1.HeaderMatchRegularExpression {
			checkRegex(hw+".value", h.Value, probs)
			rm.Headers = append(rm.Headers, regexHeader(name, h.Value))
		} else if h.Type == nil || *h.Type == gwv1.HeaderMatchExact {
			rm.Headers = append(rm.Headers, exactHeader(name, h.Value))
		} else {
			probs.unsupported("%s.type: %q is not supported (Exact, RegularExpression)", hw, *h.Type)
		}
	}
	e.headers = len(m.Headers)
	if m.Method != nil {
		rm.Headers = append(rm.Headers, exactHeader(":method", string(*m.Method)))
		e.method = true
	}
	for qi, q := range m.QueryParams {
		qw := fmt.Sprintf("%s.queryParams[%d]", where, qi)
		sm := &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: q.Value}}
		if q.Type != nil && *q.Type == gwv1.QueryParamMatchRegularExpression {
			checkRegex(qw+".value", q.Value, probs)
			sm.MatchPattern = &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: q.Value}}
		} else if q.Type != nil && *q.Type != gwv1.QueryParamMatchExact {
			probs.unsupported("%s.type: %q is not supported (Exact, RegularExpression)", qw, *q.Type)
		}
		rm.QueryParameters = append(rm.QueryParameters, &route.QueryParameterMatcher{
			Name:                         string(q.Name),
			QueryParameterMatchSpecifier: &route.QueryParameterMatcher_StringMatch{StringMatch: sm},
		})
	}
	e.queries = len(m.QueryParams)
	return rm, e
}

// grpcRouteEntries translates a GRPCRoute's rules: one entry per match (a rule without matches
// matches every call).
func grpcRouteEntries(s *discovery.State, o Options, gr *gwv1.GRPCRoute, probs *routeProblems) []gammaEntry {
	const kind = "GRPCRoute"
	meta := gr.ObjectMeta
	override := meta.Annotations[OverrideRouteAnnotation] == "enabled"
	var out []gammaEntry
	for ri, rule := range gr.Spec.Rules {
		where := fmt.Sprintf("spec.rules[%d]", ri)
		ra := ruleAction{route: &route.Route{}}
		action := &route.RouteAction{}
		for fi, f := range rule.Filters {
			fw := fmt.Sprintf("%s.filters[%d]", where, fi)
			switch f.Type {
			case gwv1.GRPCRouteFilterRequestHeaderModifier:
				add, rm := headerMods(f.RequestHeaderModifier)
				ra.route.RequestHeadersToAdd = append(ra.route.RequestHeadersToAdd, add...)
				ra.route.RequestHeadersToRemove = append(ra.route.RequestHeadersToRemove, rm...)
			case gwv1.GRPCRouteFilterResponseHeaderModifier:
				add, rm := headerMods(f.ResponseHeaderModifier)
				ra.route.ResponseHeadersToAdd = append(ra.route.ResponseHeadersToAdd, add...)
				ra.route.ResponseHeadersToRemove = append(ra.route.ResponseHeadersToRemove, rm...)
			case gwv1.GRPCRouteFilterRequestMirror:
				if p := mirrorPolicy(s, o, kind, meta, f.RequestMirror, fw, probs); p != nil {
					action.RequestMirrorPolicies = append(action.RequestMirrorPolicies, p)
				}
			default:
				probs.unsupported("%s: filter type %q is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror)", fw, f.Type)
			}
		}
		if rule.SessionPersistence != nil {
			probs.unsupported("%s.sessionPersistence is not supported", where)
		}
		action.RetryPolicy = retryPolicy(kind, nil, meta.Annotations, nil, probs)
		for bi, br := range rule.BackendRefs {
			bw := fmt.Sprintf("%s.backendRefs[%d]", where, bi)
			if len(br.Filters) > 0 {
				probs.unsupported("%s.filters: filters on a backendRef are not supported; put them on the rule", bw)
			}
			if b, ok := resolveBackend(s, o, kind, meta, br.BackendObjectReference, bw, probs); ok {
				b.weight = weightOf(br.Weight)
				ra.backends = append(ra.backends, b)
			}
		}
		ra.backendAction(action, where, probs)
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.GRPCRouteMatch{{}}
		}
		for mi, m := range matches {
			rm, e := grpcMatch(m, fmt.Sprintf("%s.matches[%d]", where, mi), probs)
			e.created, e.kindName, e.ns, e.name, e.rule, e.idx = meta.CreationTimestamp, kind, meta.Namespace, meta.Name, ri, mi
			out = append(out, ra.entry(rm, e, override))
		}
	}
	return out
}

// grpcMatch translates a GRPCRouteMatch: the method to the path /<service>/<method> (exact when both
// are given, a prefix for a service, a regular expression otherwise), headers as for HTTP.
func grpcMatch(m gwv1.GRPCRouteMatch, where string, probs *routeProblems) (*route.RouteMatch, gammaEntry) {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	e := gammaEntry{pathRank: 1, pathLen: 1}
	if mm := m.Method; mm != nil {
		var svc, method string
		if mm.Service != nil {
			svc = *mm.Service
		}
		if mm.Method != nil {
			method = *mm.Method
		}
		regex := mm.Type != nil && *mm.Type == gwv1.GRPCMethodMatchRegularExpression
		if mm.Type != nil && !regex && *mm.Type != gwv1.GRPCMethodMatchExact {
			probs.unsupported("%s.method.type: %q is not supported (Exact, RegularExpression)", where, *mm.Type)
		}
		switch {
		case regex:
			s, me := svc, method
			if s == "" {
				s = "[^/]+"
			}
			if me == "" {
				me = "[^/]+"
			}
			checkRegex(where+".method.service", s, probs)
			checkRegex(where+".method.method", me, probs)
			re := "/" + s + "/" + me
			rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}
			e.pathRank, e.pathLen = 2, len(svc)+len(method)
		case svc != "" && method != "":
			p := "/" + svc + "/" + method
			rm.PathSpecifier = &route.RouteMatch_Path{Path: p}
			e.pathRank, e.pathLen = 3, len(p)
		case svc != "":
			rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: "/" + svc + "/"}
			e.pathRank, e.pathLen = 1, len(svc)+2
		case method != "":
			re := "/[^/]+/" + regexp.QuoteMeta(method)
			rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}
			e.pathRank, e.pathLen = 2, len(method)
		}
	}
	for hi, h := range m.Headers {
		hw := fmt.Sprintf("%s.headers[%d]", where, hi)
		name := strings.ToLower(string(h.Name))
		if h.Type != nil && *h.Type == gwv1.GRPCHeaderMatchRegularExpression {
			checkRegex(hw+".value", h.Value, probs)
			rm.Headers = append(rm.Headers, regexHeader(name, h.Value))
		} else if h.Type == nil || *h.Type == gwv1.GRPCHeaderMatchExact {
			rm.Headers = append(rm.Headers, exactHeader(name, h.Value))
		} else {
			probs.unsupported("%s.type: %q is not supported (Exact, RegularExpression)", hw, *h.Type)
		}
	}
	e.headers = len(m.Headers)
	return rm, e
}

// matchPrefix is the path prefix of a PathPrefix match ("/" when the match has no path).
func matchPrefix(m gwv1.HTTPRouteMatch) string {
	if m.Path == nil || m.Path.Value == nil {
		return "/"
	}
	return *m.Path.Value
}
