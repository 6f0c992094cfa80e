package config

import (
	"errors"
	"fmt"
	"net/textproto"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// decodeRouteConfig validates and decodes a RouteConfiguration.
func decodeRouteConfig(rc *xp.RouteConfiguration) (*RouteConfig, error) {
	if rc.GetName() == "" {
		return nil, errors.New("route configuration has no name")
	}
	if err := checkUnknown(rc); err != nil {
		return nil, fmt.Errorf("route configuration %q: %w", rc.GetName(), err)
	}
	out := &RouteConfig{Name: rc.GetName()}
	global, err := decodeMutations(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove())
	if err != nil {
		return nil, fmt.Errorf("route configuration %q: %w", rc.GetName(), err)
	}
	for i, vh := range rc.GetVirtualHosts() {
		v, err := decodeVirtualHost(vh, global, rc.GetMostSpecificHeaderMutationsWins())
		if err != nil {
			return nil, fmt.Errorf("route configuration %q: virtual_hosts[%d] %q: %w", rc.GetName(), i, vh.GetName(), err)
		}
		out.VirtualHosts = append(out.VirtualHosts, *v)
	}
	return out, nil
}

// mutations is one level's request and response header mutations.
type mutations struct{ req, resp *HeaderMutation }

func decodeMutations(reqAdd []*xp.HeaderValueOption, reqRemove []string, respAdd []*xp.HeaderValueOption, respRemove []string) (mutations, error) {
	req, err := decodeMutation(reqAdd, reqRemove)
	if err != nil {
		return mutations{}, fmt.Errorf("request headers: %w", err)
	}
	resp, err := decodeMutation(respAdd, respRemove)
	if err != nil {
		return mutations{}, fmt.Errorf("response headers: %w", err)
	}
	return mutations{req, resp}, nil
}

func decodeVirtualHost(vh *xp.VirtualHost, global mutations, mostSpecificWins bool) (*VirtualHost, error) {
	if len(vh.GetDomains()) == 0 {
		return nil, errors.New("no domains")
	}
	out := &VirtualHost{Name: vh.GetName()}
	for _, d := range vh.GetDomains() {
		out.Domains = append(out.Domains, strings.ToLower(d))
	}
	if rp := vh.GetRetryPolicy(); rp != nil {
		r, err := decodeRetry(rp)
		if err != nil {
			return nil, fmt.Errorf("retry_policy: %w", err)
		}
		out.Retry = r
	}
	local, err := decodeMutations(vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(), vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	for i, r := range vh.GetRoutes() {
		rt, err := decodeRoute(r)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", i, r.GetName(), err)
		}
		if rt.Retry == nil {
			rt.Retry = out.Retry
		}
		// Envoy applies the route's mutations, then the virtual host's, then the route
		// configuration's (the reverse with most_specific_header_mutations_wins).
		for _, m := range []mutations{local, global} {
			if !m.req.Empty() {
				rt.RequestHeaders = append(rt.RequestHeaders, *m.req)
			}
			if !m.resp.Empty() {
				rt.ResponseHeaders = append(rt.ResponseHeaders, *m.resp)
			}
		}
		if mostSpecificWins {
			slices.Reverse(rt.RequestHeaders)
			slices.Reverse(rt.ResponseHeaders)
			rt.MostSpecificWins = true
		}
		rt.Extended = rt.Extended || len(rt.RequestHeaders) > 0 || len(rt.ResponseHeaders) > 0
		out.Extended = out.Extended || rt.Extended
		out.Routes = append(out.Routes, *rt)
	}
	return out, nil
}

func decodeRoute(r *xp.Route) (*Route, error) {
	out := &Route{Name: r.GetName()}
	if err := decodeRouteMatch(r.GetMatch(), out); err != nil {
		return nil, err
	}
	own, err := decodeMutations(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove())
	if err != nil {
		return nil, err
	}
	if !own.req.Empty() {
		out.RequestHeaders = append(out.RequestHeaders, *own.req)
	}
	if !own.resp.Empty() {
		out.ResponseHeaders = append(out.ResponseHeaders, *own.resp)
	}
	switch a := r.GetAction().(type) {
	case *xp.Route_Route:
		err = decodeRouteAction(a.Route, out)
	case *xp.Route_Redirect:
		out.Redirect, err = decodeRedirect(a.Redirect, out)
		if err != nil {
			err = fmt.Errorf("redirect: %w", err)
		}
	case *xp.Route_DirectResponse:
		out.Direct, err = decodeDirectResponse(a.DirectResponse)
		if err != nil {
			err = fmt.Errorf("direct_response: %w", err)
		}
	default:
		err = errors.New("the action must be route, redirect or direct_response")
	}
	if err != nil {
		return nil, err
	}
	out.Extended = out.Extended || out.Kind == PathSeparatedPrefix || len(out.Headers) > 0 || len(out.Query) > 0 || out.GRPC ||
		out.Redirect != nil || out.Direct != nil || out.PrefixRewrite != "" || out.RegexRewrite != nil || len(out.Mirrors) > 0 ||
		out.MaxStreamDuration > 0 || out.GRPCTimeout != nil
	return out, nil
}

func decodeRouteMatch(m *xp.RouteMatch, out *Route) error {
	if m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue() {
		return errors.New("case-insensitive path matching is not supported")
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *xp.RouteMatch_Prefix:
		out.Kind, out.Prefix = PathPrefix, ps.Prefix
	case *xp.RouteMatch_Path:
		out.Kind, out.Path = PathExact, ps.Path
	case *xp.RouteMatch_SafeRegex:
		re, err := compileRegex(ps.SafeRegex.GetRegex())
		if err != nil {
			return fmt.Errorf("safe_regex: %w", err)
		}
		out.Kind, out.Regex = PathRegex, re
	case *xp.RouteMatch_PathSeparatedPrefix:
		p := ps.PathSeparatedPrefix
		if p == "" || p[0] != '/' || strings.HasSuffix(p, "/") || strings.ContainsAny(p, "?#") {
			return fmt.Errorf("path_separated_prefix %q must start with / and neither end with / nor hold ? or #", p)
		}
		out.Kind, out.Prefix = PathSeparatedPrefix, p
	default:
		return errors.New("path match must be prefix, path, safe_regex or path_separated_prefix")
	}
	out.GRPC = m.GetGrpc() != nil
	for i, h := range m.GetHeaders() {
		hm, err := decodeHeaderMatcher(h)
		if err != nil {
			return fmt.Errorf("headers[%d] %q: %w", i, h.GetName(), err)
		}
		out.Headers = append(out.Headers, hm)
	}
	for i, q := range m.GetQueryParameters() {
		if q.GetName() == "" {
			return fmt.Errorf("query_parameters[%d]: no name", i)
		}
		qm := QueryMatcher{Name: q.GetName(), Match: ValueMatch{Kind: ValuePresent}, Present: true}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *xp.QueryParameterMatcher_StringMatch:
			vm, err := decodeValueMatch(s.StringMatch)
			if err != nil {
				return fmt.Errorf("query_parameters[%d] %q: %w", i, q.GetName(), err)
			}
			qm.Match = vm
		case *xp.QueryParameterMatcher_PresentMatch:
			qm.Present = s.PresentMatch
		}
		out.Query = append(out.Query, qm)
	}
	return nil
}

// compileRegex compiles an RE2 regex of a safe_regex field (Envoy's matches the whole string).
func compileRegex(s string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + s + ")$")
}

func decodeValueMatch(m *xp.StringMatcher) (ValueMatch, error) {
	out := ValueMatch{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *xp.StringMatcher_Exact:
		out.Kind, out.Value = ValueExact, p.Exact
	case *xp.StringMatcher_Prefix:
		out.Kind, out.Value = ValuePrefix, p.Prefix
	case *xp.StringMatcher_Suffix:
		out.Kind, out.Value = ValueSuffix, p.Suffix
	case *xp.StringMatcher_Contains:
		out.Kind, out.Value = ValueContains, p.Contains
	case *xp.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex.GetRegex())
		if err != nil {
			return out, fmt.Errorf("safe_regex: %w", err)
		}
		out.Kind, out.Regex = ValueRegex, re
	default:
		return out, errors.New("string_match has no pattern")
	}
	if out.IgnoreCase {
		out.Value = strings.ToLower(out.Value)
	}
	return out, nil
}

var pseudoHeaders = map[string]bool{":method": true, ":authority": true, ":path": true, ":scheme": true}

func decodeHeaderMatcher(h *xp.HeaderMatcher) (HeaderMatcher, error) {
	name := strings.ToLower(h.GetName())
	if name == "" {
		return HeaderMatcher{}, errors.New("no name")
	}
	if name[0] == ':' && !pseudoHeaders[name] {
		return HeaderMatcher{}, fmt.Errorf("pseudo-header %s is not supported (want :method, :authority, :path or :scheme)", name)
	}
	if name[0] != ':' && !httpguts.ValidHeaderFieldName(name) {
		return HeaderMatcher{}, errors.New("invalid header name")
	}
	out := HeaderMatcher{Name: name, Key: textproto.CanonicalMIMEHeaderKey(name), Invert: h.GetInvertMatch(), MissingAsEmpty: h.GetTreatMissingHeaderAsEmpty()}
	if name == ":authority" {
		out.Key = "Host"
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		out.Match, out.Present = ValueMatch{Kind: ValuePresent}, true // Envoy: the header must be present
	case *xp.HeaderMatcher_PresentMatch:
		out.Match, out.Present = ValueMatch{Kind: ValuePresent}, s.PresentMatch
	case *xp.HeaderMatcher_ExactMatch:
		out.Match = ValueMatch{Kind: ValueExact, Value: s.ExactMatch}
	case *xp.HeaderMatcher_PrefixMatch:
		out.Match = ValueMatch{Kind: ValuePrefix, Value: s.PrefixMatch}
	case *xp.HeaderMatcher_SuffixMatch:
		out.Match = ValueMatch{Kind: ValueSuffix, Value: s.SuffixMatch}
	case *xp.HeaderMatcher_ContainsMatch:
		out.Match = ValueMatch{Kind: ValueContains, Value: s.ContainsMatch}
	case *xp.HeaderMatcher_SafeRegexMatch:
		var re *regexp.Regexp
		re, err = compileRegex(s.SafeRegexMatch.GetRegex())
		out.Match = ValueMatch{Kind: ValueRegex, Regex: re}
	case *xp.HeaderMatcher_StringMatch:
		out.Match, err = decodeValueMatch(s.StringMatch)
	}
	return out, err
}

func decodeRouteAction(ra *xp.RouteAction, out *Route) error {
	switch cs := ra.GetClusterSpecifier().(type) {
	case *xp.RouteAction_Cluster:
		if cs.Cluster == "" {
			return errors.New("empty cluster")
		}
		out.Cluster = cs.Cluster
	case *xp.RouteAction_WeightedClusters:
		for i, wc := range cs.WeightedClusters.GetClusters() {
			if wc.GetName() == "" {
				return errors.New("weighted cluster without a name")
			}
			w := wc.GetWeight().GetValue()
			c := WeightedCluster{Name: wc.GetName(), Weight: w, HostRewrite: wc.GetHostRewriteLiteral()}
			m, err := decodeMutations(wc.GetRequestHeadersToAdd(), wc.GetRequestHeadersToRemove(), wc.GetResponseHeadersToAdd(), wc.GetResponseHeadersToRemove())
			if err != nil {
				return fmt.Errorf("weighted_clusters.clusters[%d] %q: %w", i, wc.GetName(), err)
			}
			if !m.req.Empty() {
				c.RequestHeaders = m.req
			}
			if !m.resp.Empty() {
				c.ResponseHeaders = m.resp
			}
			if c.RequestHeaders != nil || c.ResponseHeaders != nil || c.HostRewrite != "" {
				out.Extended = true
			}
			if c.HostRewrite != "" && !validHostRewrite(c.HostRewrite) {
				return fmt.Errorf("weighted_clusters.clusters[%d] %q: host_rewrite_literal %q is not a valid host", i, wc.GetName(), c.HostRewrite)
			}
			out.WeightedClusters = append(out.WeightedClusters, c)
			if out.TotalWeight+w < out.TotalWeight {
				return errors.New("weighted_clusters: the weights overflow 32 bits")
			}
			out.TotalWeight += w
		}
		if out.TotalWeight == 0 {
			return errors.New("weighted_clusters with total weight 0")
		}
		if tw := cs.WeightedClusters.GetTotalWeight(); tw != nil && tw.GetValue() != out.TotalWeight {
			return fmt.Errorf("weighted_clusters: total_weight %d is not the sum of the weights (%d)", tw.GetValue(), out.TotalWeight)
		}
	default:
		return errors.New("route action needs cluster or weighted_clusters")
	}
	if t := ra.GetTimeout(); t != nil {
		if t.AsDuration() < 0 {
			return errors.New("negative timeout")
		}
		out.Timeout = t.AsDuration()
	}
	if rp := ra.GetRetryPolicy(); rp != nil {
		rr, err := decodeRetry(rp)
		if err != nil {
			return fmt.Errorf("retry_policy: %w", err)
		}
		out.Retry = rr
	}
	out.HostRewrite = ra.GetHostRewriteLiteral()
	if out.HostRewrite != "" && !validHostRewrite(out.HostRewrite) {
		return fmt.Errorf("host_rewrite_literal %q is not a valid host", out.HostRewrite)
	}
	for _, wc := range out.WeightedClusters {
		if out.HostRewrite != "" && wc.HostRewrite != "" {
			return fmt.Errorf("host_rewrite_literal on both the route and weighted cluster %q is not supported", wc.Name)
		}
	}
	if pr := ra.GetPrefixRewrite(); pr != "" {
		if ra.GetRegexRewrite() != nil {
			return errors.New("prefix_rewrite and regex_rewrite are exclusive")
		}
		if out.Kind == PathRegex {
			return errors.New("prefix_rewrite needs a prefix, path or path_separated_prefix match, not safe_regex")
		}
		if err := checkPath(pr); err != nil {
			return fmt.Errorf("prefix_rewrite: %w", err)
		}
		out.PrefixRewrite = pr
	}
	if rr := ra.GetRegexRewrite(); rr != nil {
		rw, err := decodeRewrite(rr)
		if err != nil {
			return fmt.Errorf("regex_rewrite: %w", err)
		}
		out.RegexRewrite = rw
	}
	for i, mp := range ra.GetRequestMirrorPolicies() {
		m, err := decodeMirror(mp)
		if err != nil {
			return fmt.Errorf("request_mirror_policies[%d]: %w", i, err)
		}
		if m.PerMillion > 0 {
			out.Mirrors = append(out.Mirrors, m)
		}
	}
	if msd := ra.GetMaxStreamDuration(); msd != nil {
		if d := msd.GetMaxStreamDuration(); d != nil {
			if d.AsDuration() < 0 {
				return errors.New("max_stream_duration: negative max_stream_duration")
			}
			out.MaxStreamDuration = d.AsDuration()
		}
		if msd.GetGrpcTimeoutHeaderMax() != nil {
			g := &GRPCTimeout{Max: msd.GetGrpcTimeoutHeaderMax().AsDuration(), Offset: msd.GetGrpcTimeoutHeaderOffset().AsDuration()}
			if g.Max < 0 || g.Offset < 0 {
				return errors.New("max_stream_duration: negative grpc_timeout_header_max or grpc_timeout_header_offset")
			}
			out.GRPCTimeout = g
		} else if msd.GetGrpcTimeoutHeaderOffset() != nil {
			return errors.New("max_stream_duration: grpc_timeout_header_offset without grpc_timeout_header_max is not supported")
		}
	}
	return nil
}

// validHostRewrite reports whether h may be sent as a Host header (a host, optionally with a port).
func validHostRewrite(h string) bool {
	return httpguts.ValidHostHeader(h) && !strings.ContainsAny(h, "%/ ")
}

// checkPath checks a path that replaces (part of) a request's path.
func checkPath(p string) error {
	if p == "" || p[0] != '/' {
		return fmt.Errorf("%q does not start with /", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f || c == '#' {
			return fmt.Errorf("%q holds a character a path may not", p)
		}
	}
	return nil
}

// decodeRewrite turns a RegexMatchAndSubstitute into a Go regexp and template: Envoy's (RE2's) \N
// group references become ${N}, a $ stays itself, \\ is a backslash.
func decodeRewrite(r *xp.RegexMatchAndSubstitute) (*Rewrite, error) {
	re, err := regexp.Compile(r.GetPattern().GetRegex())
	if err != nil {
		return nil, fmt.Errorf("pattern: %w", err)
	}
	if r.GetPattern() == nil {
		return nil, errors.New("no pattern")
	}
	sub := r.GetSubstitution()
	for i := 0; i < len(sub); i++ {
		if c := sub[i]; c <= ' ' || c == 0x7f || c == '#' {
			return nil, fmt.Errorf("substitution %q holds a character a path may not", sub)
		}
	}
	var b strings.Builder
	for i := 0; i < len(sub); i++ {
		c := sub[i]
		switch {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(sub) && sub[i+1] >= '0' && sub[i+1] <= '9':
			n := int(sub[i+1] - '0')
			if n > re.NumSubexp() {
				return nil, fmt.Errorf("substitution %q refers to group %d; the pattern has %d", sub, n, re.NumSubexp())
			}
			fmt.Fprintf(&b, "${%d}", n)
			i++
		case c == '\\' && i+1 < len(sub) && sub[i+1] == '\\':
			b.WriteByte('\\')
			i++
		case c == '\\':
			return nil, fmt.Errorf("substitution %q: a backslash must be followed by a digit or a backslash", sub)
		default:
			b.WriteByte(c)
		}
	}
	return &Rewrite{Regex: re, Template: b.String()}, nil
}

var redirectCodes = map[xp.RedirectAction_RedirectResponseCode]int{
	xp.RedirectAction_MOVED_PERMANENTLY:  301,
	xp.RedirectAction_FOUND:              302,
	xp.RedirectAction_SEE_OTHER:          303,
	xp.RedirectAction_TEMPORARY_REDIRECT: 307,
	xp.RedirectAction_PERMANENT_REDIRECT: 308,
}

func decodeRedirect(r *xp.RedirectAction, route *Route) (*Redirect, error) {
	out := &Redirect{Host: r.GetHostRedirect(), Port: r.GetPortRedirect(), StripQuery: r.GetStripQuery()}
	code, ok := redirectCodes[r.GetResponseCode()]
	if !ok {
		return nil, fmt.Errorf("response_code %d is not supported", r.GetResponseCode())
	}
	out.Code = code
	switch s := r.GetSchemeRewriteSpecifier().(type) {
	case *xp.RedirectAction_HttpsRedirect:
		if s.HttpsRedirect {
			out.Scheme = "https"
		}
	case *xp.RedirectAction_SchemeRedirect:
		out.Scheme = strings.ToLower(s.SchemeRedirect)
		if out.Scheme != "http" && out.Scheme != "https" {
			return nil, fmt.Errorf("scheme_redirect %q is not supported (want http or https)", s.SchemeRedirect)
		}
	}
	if out.Host != "" && !validHostRewrite(out.Host) {
		return nil, fmt.Errorf("host_redirect %q is not a valid host", out.Host)
	}
	if out.Port > 65535 {
		return nil, fmt.Errorf("port_redirect %d is out of range", out.Port)
	}
	switch s := r.GetPathRewriteSpecifier().(type) {
	case *xp.RedirectAction_PathRedirect:
		if err := checkPath(s.PathRedirect); err != nil {
			return nil, fmt.Errorf("path_redirect: %w", err)
		}
		out.PathKind, out.Path = RedirectReplacePath, s.PathRedirect
	case *xp.RedirectAction_PrefixRewrite:
		if route.Kind == PathRegex {
			return nil, errors.New("prefix_rewrite needs a prefix, path or path_separated_prefix match, not safe_regex")
		}
		if err := checkPath(s.PrefixRewrite); err != nil {
			return nil, fmt.Errorf("prefix_rewrite: %w", err)
		}
		out.PathKind, out.Path = RedirectPrefix, s.PrefixRewrite
	case *xp.RedirectAction_RegexRewrite:
		rw, err := decodeRewrite(s.RegexRewrite)
		if err != nil {
			return nil, fmt.Errorf("regex_rewrite: %w", err)
		}
		out.PathKind, out.Regex = RedirectRegex, rw
	}
	return out, nil
}

// maxDirectBody is Envoy's default max_direct_response_body_size_bytes.
const maxDirectBody = 4096

func decodeDirectResponse(d *xp.DirectResponseAction) (*DirectResponse, error) {
	if d.GetStatus() < 200 || d.GetStatus() > 599 {
		return nil, fmt.Errorf("status %d is out of range [200, 599]", d.GetStatus())
	}
	out := &DirectResponse{Status: int(d.GetStatus())}
	if b := d.GetBody(); b != nil {
		switch s := b.GetSpecifier().(type) {
		case *xp.DataSource_InlineString:
			out.Body = []byte(s.InlineString)
		case *xp.DataSource_InlineBytes:
			out.Body = s.InlineBytes
		default:
			return nil, errors.New("body must be inline_string or inline_bytes")
		}
		if len(out.Body) > maxDirectBody {
			return nil, fmt.Errorf("body of %d bytes is over the limit of %d", len(out.Body), maxDirectBody)
		}
	}
	return out, nil
}

func decodeMirror(m *xp.RouteAction_RequestMirrorPolicy) (Mirror, error) {
	out := Mirror{Cluster: m.GetCluster(), PerMillion: 1e6, HostRewrite: m.GetHostRewriteLiteral(), NoShadowSuffix: m.GetDisableShadowHostSuffixAppend()}
	if out.Cluster == "" {
		return out, errors.New("no cluster")
	}
	if out.HostRewrite != "" && !validHostRewrite(out.HostRewrite) {
		return out, fmt.Errorf("host_rewrite_literal %q is not a valid host", out.HostRewrite)
	}
	if rf := m.GetRuntimeFraction(); rf != nil {
		dv := rf.GetDefaultValue()
		n := uint64(dv.GetNumerator())
		switch dv.GetDenominator() {
		case xp.FractionalPercent_HUNDRED:
			n *= 10000
		case xp.FractionalPercent_TEN_THOUSAND:
			n *= 100
		case xp.FractionalPercent_MILLION:
		default:
			return out, fmt.Errorf("runtime_fraction: denominator %d is not supported", dv.GetDenominator())
		}
		out.PerMillion = uint32(min(n, 1e6)) // #nosec G115 -- at most 1e6
	}
	return out, nil
}

// maxHeaderOps bounds the header mutations of one level.
const maxHeaderOps = 1000

func decodeMutation(add []*xp.HeaderValueOption, remove []string) (*HeaderMutation, error) {
	if len(add)+len(remove) > maxHeaderOps {
		return nil, fmt.Errorf("more than %d header mutations", maxHeaderOps)
	}
	out := &HeaderMutation{}
	for i, name := range remove {
		k, err := mutableHeader(name)
		if err != nil {
			return nil, fmt.Errorf("headers_to_remove[%d]: %w", i, err)
		}
		out.Remove = append(out.Remove, k)
	}
	for i, o := range add {
		op, err := decodeHeaderOp(o)
		if err != nil {
			return nil, fmt.Errorf("headers_to_add[%d] %q: %w", i, o.GetHeader().GetKey(), err)
		}
		out.Add = append(out.Add, op)
	}
	return out, nil
}

// mutableHeader checks a header a route may add or remove (Envoy's rule: no pseudo-header, no Host)
// and returns its canonical key.
func mutableHeader(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty header name")
	case name[0] == ':' || strings.EqualFold(name, "host"):
		return "", fmt.Errorf("%s may not be modified (pseudo-headers and host; use host_rewrite_literal for the host)", name)
	case !httpguts.ValidHeaderFieldName(name):
		return "", fmt.Errorf("%q is not a valid header name", name)
	}
	return textproto.CanonicalMIMEHeaderKey(name), nil
}

func decodeHeaderOp(o *xp.HeaderValueOption) (HeaderOp, error) {
	hv := o.GetHeader()
	k, err := mutableHeader(hv.GetKey())
	if err != nil {
		return HeaderOp{}, err
	}
	v := hv.GetValue()
	if len(hv.GetRawValue()) > 0 {
		if v != "" {
			return HeaderOp{}, errors.New("value and raw_value are exclusive")
		}
		v = string(hv.GetRawValue())
	}
	v, err = unescapeHeaderValue(v)
	if err != nil {
		return HeaderOp{}, err
	}
	if !httpguts.ValidHeaderFieldValue(v) {
		return HeaderOp{}, errors.New("the value holds a character a header value may not")
	}
	a := o.GetAppendAction()
	if a < 0 || a > xp.HeaderValueOption_OVERWRITE_IF_EXISTS {
		return HeaderOp{}, fmt.Errorf("append_action %d is not supported", a)
	}
	op := HeaderOp{Key: k, Value: v, Action: AppendAction(a), KeepEmpty: o.GetKeepEmptyValue()} // #nosec G115 -- 0..3, checked above
	if a := o.GetAppend(); a != nil {
		if o.GetAppendAction() != 0 {
			return HeaderOp{}, errors.New("append and append_action are exclusive")
		}
		if !a.GetValue() {
			op.Action = OverwriteIfExistsOrAdd
		}
	}
	return op, nil
}

// unescapeHeaderValue reads a header value as Envoy's substitution format: %% is a percent sign; a
// command operator (%REQ(...)%, %DOWNSTREAM_REMOTE_ADDRESS% ...) is not supported.
func unescapeHeaderValue(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", errors.New("command operators (%...%) in header values are not supported; write %% for a percent sign")
	}
	return b.String(), nil
}

var retryConditions = map[string]RetryOn{
	"5xx":                    Retry5xx,
	"gateway-error":          RetryGatewayError,
	"reset":                  RetryReset,
	"reset-before-request":   RetryReset,
	"connect-failure":        RetryConnectFailure,
	"retriable-status-codes": RetryRetriableStatusCodes,
	"refused-stream":         RetryRefusedStream,
	"cancelled":              RetryGRPCCancelled,
	"deadline-exceeded":      RetryGRPCDeadlineExceeded,
	"resource-exhausted":     RetryGRPCResourceExhausted,
	"unavailable":            RetryGRPCUnavailable,
	"internal":               RetryGRPCInternal,
}

func decodeRetry(rp *xp.RetryPolicy) (*RetryPolicy, error) {
	out := &RetryPolicy{NumRetries: 1}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		bit, ok := retryConditions[c]
		if !ok {
			return nil, fmt.Errorf("retry_on %q is not supported", c)
		}
		out.On |= bit
	}
	if n := rp.GetNumRetries(); n != nil {
		out.NumRetries = int(n.GetValue())
	}
	if t := rp.GetPerTryTimeout(); t != nil {
		out.PerTryTimeout = t.AsDuration()
	}
	for _, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("retriable status code %d out of range", c)
		}
		out.RetriableStatusCodes = append(out.RetriableStatusCodes, int(c))
	}
	out.BaseInterval, out.MaxInterval = 25e6, 250e6 // Envoy's defaults: 25 ms, 10x
	if b := rp.GetRetryBackOff(); b != nil {
		out.BaseInterval = b.GetBaseInterval().AsDuration()
		if b.GetMaxInterval() != nil {
			out.MaxInterval = b.GetMaxInterval().AsDuration()
		} else {
			out.MaxInterval = 10 * out.BaseInterval
		}
		if out.BaseInterval <= 0 || out.MaxInterval < out.BaseInterval {
			return nil, errors.New("retry_back_off: base_interval must be > 0 and <= max_interval")
		}
	}
	return out, nil
}
