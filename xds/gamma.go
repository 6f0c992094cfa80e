package xds

import (
	"cmp"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weftmesh/weft/discovery"
)

// The Gateway API's mesh profile (GAMMA): HTTPRoutes and GRPCRoutes whose parentRefs name a Service
// replace the default route of that Service's virtual host in the outbound route configuration of its
// port (docs/design.md, "Routes"). This file turns them into Envoy routes and, from the same checks,
// into each route's status (gamma_status.go). Pure, as the rest of the package.

// Names the routes and their users rely on.
const (
	// ControllerName is the controllerName of the status entries weft-control writes.
	ControllerName = "weft.io/gateway-controller"
	// OverrideRouteAnnotation, set to "enabled" on a route, lets a client pick one of its backends with
	// the OverrideRouteHeader (the Linkerd 1 dtab override, for testing a canary in production).
	OverrideRouteAnnotation = "weft.io/override-route"
	// OverrideRouteHeader holds the name of the backend Service a request should go to.
	OverrideRouteHeader = "weft-override-route"
	// Retries of a route whose rules have no retry field (the field is in the Gateway API's
	// experimental channel only): attempts ("2"), codes (HTTPRoute: status codes "502,503"; GRPCRoute:
	// gRPC status names "unavailable,resource-exhausted") and backoff (a duration, "100ms").
	RetryAttemptsAnnotation = "retry.weft.io/attempts"
	RetryCodesAnnotation    = "retry.weft.io/codes"
	RetryBackoffAnnotation  = "retry.weft.io/backoff"

	gatewayGroup = "gateway.networking.k8s.io"
)

// gammaKey is one port of one Service; the routes attached to it replace its virtual host's routes.
type gammaKey struct {
	ns, name string
	port     int32
}

// gammaTable is the outcome of checking and translating every route of a State.
type gammaTable struct {
	routes   map[gammaKey][]*route.Route
	statuses []discovery.RouteStatus
}

// gammaEntry is one Envoy route made from one match of one rule, with what orders it among the
// routes of its virtual host (the Gateway API's precedence), and the override routes that go
// before it.
type gammaEntry struct {
	r         *route.Route
	overrides []*route.Route
	pathRank  int // exact 3, regular expression 2, prefix 1
	pathLen   int
	method    bool
	headers   int
	queries   int
	created   metav1.Time
	kindName  string
	ns, name  string
	rule, idx int
}

func compareEntries(a, b gammaEntry) int {
	return cmp.Or(
		-cmp.Compare(a.pathRank, b.pathRank),
		-cmp.Compare(a.pathLen, b.pathLen),
		-cmpBool(a.method, b.method),
		-cmp.Compare(a.headers, b.headers),
		-cmp.Compare(a.queries, b.queries),
		a.created.Compare(b.created.Time),
		strings.Compare(a.ns, b.ns),
		strings.Compare(a.name, b.name),
		cmp.Compare(a.rule, b.rule),
		cmp.Compare(a.idx, b.idx),
	)
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// routeProblems collects what is wrong with one route, in the terms of its status conditions.
type routeProblems struct {
	// invalid: the route is not accepted (reason UnsupportedValue) and none of it is programmed.
	invalid []string
	// refReason/refs: a backendRef did not resolve; its backend is left out (a rule left without any
	// backend answers 500).
	refReason gwv1.RouteConditionReason
	refs      []string
	// notes are said in the Accepted condition's message (rules that answer every request with 500).
	notes []string
}

func (p *routeProblems) unsupported(format string, args ...any) {
	p.invalid = append(p.invalid, fmt.Sprintf(format, args...))
}

func (p *routeProblems) ref(reason gwv1.RouteConditionReason, format string, args ...any) {
	if p.refReason == "" {
		p.refReason = reason
	}
	p.refs = append(p.refs, fmt.Sprintf(format, args...))
}

// routeMeta is what both route kinds share.
type routeMeta struct {
	kind    string // HTTPRoute, GRPCRoute
	meta    metav1.ObjectMeta
	parents []gwv1.ParentReference
}

// buildGAMMA checks and translates every HTTPRoute and GRPCRoute of s.
func buildGAMMA(s *discovery.State, o Options) gammaTable {
	t := gammaTable{routes: map[gammaKey][]*route.Route{}}
	entries := map[gammaKey][]gammaEntry{}
	attach := func(rm routeMeta, es []gammaEntry, probs *routeProblems) {
		st := discovery.RouteStatus{Kind: rm.kind, Namespace: rm.meta.Namespace, Name: rm.meta.Name}
		for _, pr := range rm.parents {
			if !isServiceRef(pr.Group, pr.Kind, false) {
				continue // a Gateway's, or another controller's: not ours to program or to judge
			}
			keys, accepted := resolveParent(s, rm, pr, probs)
			st.Parents = append(st.Parents, parentStatus(rm, pr, accepted, probs))
			if accepted.Status != metav1.ConditionTrue {
				continue
			}
			for _, k := range keys {
				entries[k] = append(entries[k], es...)
			}
		}
		if len(st.Parents) > 0 {
			t.statuses = append(t.statuses, st)
		}
	}
	for i := range s.HTTPRoutes {
		hr := &s.HTTPRoutes[i]
		rm := routeMeta{kind: "HTTPRoute", meta: hr.ObjectMeta, parents: hr.Spec.ParentRefs}
		var probs routeProblems
		es := httpRouteEntries(s, o, hr, &probs)
		attach(rm, es, &probs)
	}
	for i := range s.GRPCRoutes {
		gr := &s.GRPCRoutes[i]
		rm := routeMeta{kind: "GRPCRoute", meta: gr.ObjectMeta, parents: gr.Spec.ParentRefs}
		var probs routeProblems
		es := grpcRouteEntries(s, o, gr, &probs)
		attach(rm, es, &probs)
	}
	for k, es := range entries {
		slices.SortStableFunc(es, compareEntries)
		var rs []*route.Route
		for _, e := range es {
			rs = append(rs, e.overrides...)
			rs = append(rs, e.r)
		}
		t.routes[k] = rs
	}
	return t
}

// isServiceRef reports whether group/kind name a core Service. A parentRef's group defaults to the
// Gateway API's and its kind to Gateway; a backendRef's to "" and Service.
func isServiceRef(group *gwv1.Group, kind *gwv1.Kind, backend bool) bool {
	g, k := "", "Service"
	if !backend {
		g, k = gatewayGroup, "Gateway"
	}
	if group != nil {
		g = string(*group)
	}
	if kind != nil {
		k = string(*kind)
	}
	return (g == "" || g == "core") && k == "Service"
}

// resolveParent finds the Service ports a parentRef attaches to, and says whether the route is
// accepted for it.
func resolveParent(s *discovery.State, rm routeMeta, pr gwv1.ParentReference, probs *routeProblems) ([]gammaKey, metav1.Condition) {
	cond := func(ok bool, reason gwv1.RouteConditionReason, msg string) metav1.Condition {
		c := metav1.Condition{Type: string(gwv1.RouteConditionAccepted), Reason: string(reason), Message: msg, ObservedGeneration: rm.meta.Generation, Status: metav1.ConditionFalse}
		if ok {
			c.Status = metav1.ConditionTrue
		}
		return c
	}
	ns := rm.meta.Namespace
	if pr.Namespace != nil && *pr.Namespace != "" {
		ns = string(*pr.Namespace)
	}
	if ns != rm.meta.Namespace {
		return nil, cond(false, gwv1.RouteReasonUnsupportedValue, fmt.Sprintf("parentRef Service %s/%s is in another namespace: consumer routes are not supported yet; create the route in namespace %s", ns, pr.Name, ns))
	}
	svc, ok := s.Service(ns, string(pr.Name))
	if !ok {
		return nil, cond(false, gwv1.RouteReasonNoMatchingParent, fmt.Sprintf("parentRef: Service %s/%s does not exist", ns, pr.Name))
	}
	var keys []gammaKey
	for _, sp := range svc.Ports {
		if sp.Protocol != "TCP" {
			continue
		}
		if pr.Port != nil && sp.Port != *pr.Port {
			continue
		}
		if pr.SectionName != nil && sp.Name != string(*pr.SectionName) {
			continue
		}
		keys = append(keys, gammaKey{ns, svc.Name, sp.Port})
	}
	if len(keys) == 0 {
		return nil, cond(false, gwv1.RouteReasonNoMatchingParent, fmt.Sprintf("parentRef: Service %s/%s has no TCP port %s", ns, pr.Name, describePort(pr)))
	}
	if len(probs.invalid) > 0 {
		return nil, cond(false, gwv1.RouteReasonUnsupportedValue, strings.Join(probs.invalid, "; "))
	}
	msg := "attached to Service " + ns + "/" + svc.Name
	if len(probs.notes) > 0 {
		msg += "; " + strings.Join(probs.notes, "; ")
	}
	return keys, cond(true, gwv1.RouteReasonAccepted, msg)
}

func describePort(pr gwv1.ParentReference) string {
	var parts []string
	if pr.Port != nil {
		parts = append(parts, strconv.Itoa(int(*pr.Port)))
	}
	if pr.SectionName != nil {
		parts = append(parts, "named "+strconv.Quote(string(*pr.SectionName)))
	}
	return strings.Join(parts, " ")
}

func parentStatus(rm routeMeta, pr gwv1.ParentReference, accepted metav1.Condition, probs *routeProblems) gwv1.RouteParentStatus {
	refs := metav1.Condition{Type: string(gwv1.RouteConditionResolvedRefs), Status: metav1.ConditionTrue, Reason: string(gwv1.RouteReasonResolvedRefs), Message: "every backendRef resolved", ObservedGeneration: rm.meta.Generation}
	if probs.refReason != "" {
		refs.Status, refs.Reason, refs.Message = metav1.ConditionFalse, string(probs.refReason), strings.Join(probs.refs, "; ")
	}
	return gwv1.RouteParentStatus{
		ParentRef:      pr,
		ControllerName: ControllerName,
		Conditions:     []metav1.Condition{accepted, refs},
	}
}

// backend is a resolved backendRef.
type backend struct {
	name    string // the Service's name, for the override header
	cluster string
	weight  uint32
}

// resolveBackend checks a backendRef (rule r of route rm) and gives its cluster.
func resolveBackend(s *discovery.State, o Options, kind string, meta metav1.ObjectMeta, ref gwv1.BackendObjectReference, where string, probs *routeProblems) (backend, bool) {
	if !isServiceRef(ref.Group, ref.Kind, true) {
		g, k := "", "Service"
		if ref.Group != nil {
			g = string(*ref.Group)
		}
		if ref.Kind != nil {
			k = string(*ref.Kind)
		}
		probs.ref(gwv1.RouteReasonInvalidKind, "%s: %s %q is not a Service (group %q kind %q); only Services are backends", where, k, ref.Name, g, k)
		return backend{}, false
	}
	ns := meta.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	if ns != meta.Namespace && !s.ReferenceGrantAllows(gatewayGroup, kind, meta.Namespace, "", "Service", ns, string(ref.Name)) {
		probs.ref(gwv1.RouteReasonRefNotPermitted, "%s: Service %s/%s is in another namespace and no ReferenceGrant in %s allows it", where, ns, ref.Name, ns)
		return backend{}, false
	}
	svc, ok := s.Service(ns, string(ref.Name))
	if !ok {
		probs.ref(gwv1.RouteReasonBackendNotFound, "%s: Service %s/%s does not exist", where, ns, ref.Name)
		return backend{}, false
	}
	if ref.Port == nil {
		probs.ref(gwv1.RouteReasonBackendNotFound, "%s: Service %s/%s: port is required", where, ns, ref.Name)
		return backend{}, false
	}
	if !slices.ContainsFunc(svc.Ports, func(sp discovery.ServicePort) bool { return sp.Port == *ref.Port && sp.Protocol == "TCP" }) {
		probs.ref(gwv1.RouteReasonBackendNotFound, "%s: Service %s/%s has no TCP port %d", where, ns, ref.Name, *ref.Port)
		return backend{}, false
	}
	return backend{name: svc.Name, cluster: OutboundClusterName(*ref.Port, fqdn(svc, o))}, true
}

// ruleAction is what every match of one rule shares.
type ruleAction struct {
	route    *route.Route // Action, header changes; Match unset
	backends []backend    // valid backends, weight 0 included (the override header may pick them)
}

// backendAction sets ra.route's action from its backends: one cluster, weighted clusters, or a 500
// when no valid backend has a weight.
func (ra *ruleAction) backendAction(action *route.RouteAction, where string, probs *routeProblems) {
	var live []backend
	for _, b := range ra.backends {
		if b.weight > 0 {
			live = append(live, b)
		}
	}
	switch {
	case len(live) == 0:
		ra.route.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 500}}
		if len(ra.backends) > 0 {
			probs.notes = append(probs.notes, where+": every backendRef has weight 0, so its requests get a 500")
		}
		return
	case len(live) == 1:
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: live[0].cluster}
	default:
		wc := &route.WeightedCluster{}
		for _, b := range live {
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: b.cluster, Weight: wrapperspb.UInt32(b.weight)})
		}
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	ra.route.Action = &route.Route_Route{Route: action}
}

// entry completes e (one match of the rule) with its route, and the override routes before it when
// the route enables them.
func (ra *ruleAction) entry(m *route.RouteMatch, e gammaEntry, override bool) gammaEntry {
	r := cloneRoute(ra.route)
	r.Match = m
	r.Name = fmt.Sprintf("%s/%s/%s/rule/%d/match/%d", strings.ToLower(e.rkind()), e.ns, e.name, e.rule, e.idx)
	e.r = r
	if act, ok := r.Action.(*route.Route_Route); ok && override {
		seen := map[string]bool{}
		for _, b := range ra.backends {
			if seen[b.name] {
				continue
			}
			seen[b.name] = true
			or := cloneRoute(r)
			or.Name = r.Name + "/override/" + b.name
			or.Match.Headers = append(or.Match.Headers, exactHeader(OverrideRouteHeader, b.name))
			a := cloneAction(act.Route)
			a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: b.cluster}
			or.Action = &route.Route_Route{Route: a}
			e.overrides = append(e.overrides, or)
		}
	}
	return e
}

func (e gammaEntry) rkind() string { return e.kindName }

func cloneRoute(r *route.Route) *route.Route { return proto.Clone(r).(*route.Route) }

func cloneAction(a *route.RouteAction) *route.RouteAction { return proto.Clone(a).(*route.RouteAction) }

func exactHeader(name, value string) *route.HeaderMatcher {
	return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
		StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: value}},
	}}
}

func regexHeader(name, re string) *route.HeaderMatcher {
	return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{
		StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}},
	}}
}

// checkRegex reports an invalid regular expression (RE2, as Envoy's and grpc-go's safe_regex).
func checkRegex(where, re string, probs *routeProblems) bool {
	if _, err := regexp.Compile(re); err != nil {
		probs.unsupported("%s: invalid regular expression %q: %v", where, re, err)
		return false
	}
	return true
}

// headerMods translates a RequestHeaderModifier or ResponseHeaderModifier.
func headerMods(f *gwv1.HTTPHeaderFilter) (add []*core.HeaderValueOption, remove []string) {
	if f == nil {
		return nil, nil
	}
	for _, h := range f.Set {
		add = append(add, &core.HeaderValueOption{Header: &core.HeaderValue{Key: strings.ToLower(string(h.Name)), Value: h.Value}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, h := range f.Add {
		add = append(add, &core.HeaderValueOption{Header: &core.HeaderValue{Key: strings.ToLower(string(h.Name)), Value: h.Value}, AppendAction: core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	for _, n := range f.Remove {
		remove = append(remove, strings.ToLower(n))
	}
	return add, remove
}

// mirrorPolicy translates a RequestMirror filter; its backend is checked like a backendRef.
func mirrorPolicy(s *discovery.State, o Options, kind string, meta metav1.ObjectMeta, f *gwv1.HTTPRequestMirrorFilter, where string, probs *routeProblems) *route.RouteAction_RequestMirrorPolicy {
	if f == nil {
		probs.unsupported("%s: requestMirror is missing", where)
		return nil
	}
	b, ok := resolveBackend(s, o, kind, meta, f.BackendRef, where+".requestMirror.backendRef", probs)
	if !ok {
		return nil
	}
	p := &route.RouteAction_RequestMirrorPolicy{Cluster: b.cluster}
	var num, den int64
	switch {
	case f.Percent != nil:
		num, den = int64(*f.Percent), 100
	case f.Fraction != nil:
		num, den = int64(f.Fraction.Numerator), 100
		if f.Fraction.Denominator != nil {
			den = int64(*f.Fraction.Denominator)
		}
	}
	if den > 0 {
		if num < 0 || num > den {
			probs.unsupported("%s.requestMirror: the fraction must be between 0 and 1", where)
			return nil
		}
		if num < den {
			// #nosec G115 -- 0 <= num*1e6/den <= 1e6
			p.RuntimeFraction = &core.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{
				Numerator: uint32(num * 1_000_000 / den), Denominator: typev3.FractionalPercent_MILLION,
			}}
		}
	}
	return p
}

// retryPolicy makes the retry policy of a rule from its retry field (HTTPRoute, experimental channel)
// or else the route's retry annotations; perTry is timeouts.backendRequest. It returns nil when the
// rule has neither.
func retryPolicy(kind string, field *gwv1.HTTPRouteRetry, ann map[string]string, perTry *durationpb.Duration, probs *routeProblems) *route.RetryPolicy {
	var attempts *int
	var backoff *durationpb.Duration
	var httpCodes []uint32
	var grpcCodes []string
	switch {
	case field != nil:
		attempts = field.Attempts
		for _, c := range field.Codes {
			// #nosec G115 -- the CRD limits codes to 400-599; others are refused below
			httpCodes = append(httpCodes, uint32(c))
		}
		if field.Backoff != nil {
			backoff = parseDuration("retry.backoff", string(*field.Backoff), probs)
		}
		if attempts == nil {
			one := 1
			attempts = &one
		}
	default:
		if v, ok := ann[RetryAttemptsAnnotation]; ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 || n > 10 {
				probs.unsupported("annotation %s: %q is not a number of retries from 0 to 10", RetryAttemptsAnnotation, v)
			}
			attempts = &n
		}
		if v, ok := ann[RetryCodesAnnotation]; ok {
			for c := range strings.SplitSeq(v, ",") {
				c = strings.TrimSpace(c)
				if c == "" {
					continue
				}
				if kind == "GRPCRoute" {
					if !slices.Contains([]string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}, c) {
						probs.unsupported("annotation %s: %q is not a retriable gRPC status (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)", RetryCodesAnnotation, c)
					}
					grpcCodes = append(grpcCodes, c)
					continue
				}
				n, err := strconv.Atoi(c)
				if err != nil || n < 400 || n > 599 {
					probs.unsupported("annotation %s: %q is not an HTTP status code from 400 to 599", RetryCodesAnnotation, c)
					continue
				}
				httpCodes = append(httpCodes, uint32(n)) // #nosec G115 -- 400-599
			}
		}
		if v, ok := ann[RetryBackoffAnnotation]; ok {
			backoff = parseDuration("annotation "+RetryBackoffAnnotation, v, probs)
		}
		if attempts == nil && (len(httpCodes) > 0 || len(grpcCodes) > 0 || backoff != nil) {
			one := 1
			attempts = &one
		}
	}
	for _, c := range httpCodes {
		if c < 400 || c > 599 {
			probs.unsupported("retry.codes: %d is not an HTTP status code from 400 to 599", c)
		}
	}
	if attempts == nil && perTry == nil {
		return nil
	}
	rp := &route.RetryPolicy{PerTryTimeout: perTry, NumRetries: wrapperspb.UInt32(0)}
	if attempts != nil && *attempts > 0 {
		on := []string{"connect-failure"}
		if len(httpCodes) > 0 {
			on = append(on, "retriable-status-codes")
			rp.RetriableStatusCodes = httpCodes
		}
		on = append(on, grpcCodes...)
		rp.RetryOn = strings.Join(on, ",")
		rp.NumRetries = wrapperspb.UInt32(uint32(min(*attempts, 10))) // #nosec G115 -- 1-10
		if backoff != nil && backoff.AsDuration() > 0 {
			rp.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: backoff}
		}
	}
	return rp
}

// parseDuration reads a Gateway API duration (GEP-2257: "1h", "10s", "500ms", "1m30s").
func parseDuration(where, v string, probs *routeProblems) *durationpb.Duration {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		probs.unsupported("%s: %q is not a duration (for example 10s or 500ms)", where, v)
		return nil
	}
	return durationpb.New(d)
}

// RouteStatuses computes the status of every route of s that has a Service parentRef: per such
// parentRef, Accepted and ResolvedRefs with the Gateway API's reasons. Sorted by kind, namespace and
// name. Pure; an edge writer (discovery/kube) patches them into the routes' status subresources.
func RouteStatuses(s *discovery.State, o Options) []discovery.RouteStatus {
	st := buildGAMMA(s, o).statuses
	slices.SortFunc(st, func(a, b discovery.RouteStatus) int {
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return st
}

// grpcRouteConfig is the route configuration rc as a proxyless gRPC client gets it: grpc-go rejects a
// whole RouteConfiguration that uses a path specifier it does not know, or a retry policy without
// retries, so path_separated_prefix becomes the equivalent regular expression and a retry policy of
// no retries is dropped; a request timeout also caps gRPC deadlines (max_stream_duration). rc itself
// is returned when nothing changes.
func grpcRouteConfig(rc *route.RouteConfiguration) *route.RouteConfiguration {
	var out *route.RouteConfiguration
	for vi, vh := range rc.GetVirtualHosts() {
		for ri, r := range vh.GetRoutes() {
			sep, isSep := r.GetMatch().GetPathSpecifier().(*route.RouteMatch_PathSeparatedPrefix)
			act := r.GetRoute()
			dropRetry := act.GetRetryPolicy() != nil && act.GetRetryPolicy().GetNumRetries().GetValue() == 0
			capStream := act.GetTimeout() != nil
			if !isSep && !dropRetry && !capStream {
				continue
			}
			if out == nil {
				out = proto.Clone(rc).(*route.RouteConfiguration)
			}
			nr := out.VirtualHosts[vi].Routes[ri]
			if isSep {
				nr.Match.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: regexp.QuoteMeta(sep.PathSeparatedPrefix) + "(/.*)?"}}
			}
			if a := nr.GetRoute(); a != nil {
				if dropRetry {
					a.RetryPolicy = nil
				}
				if capStream {
					a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{GrpcTimeoutHeaderMax: a.Timeout}
				}
			}
		}
	}
	if out == nil {
		return rc
	}
	return out
}

// vhostRoutes are the routes of a Service port's virtual host: its attached routes, else def.
func (t gammaTable) vhostRoutes(svc discovery.Service, port int32, def *route.Route) []*route.Route {
	if rs, ok := t.routes[gammaKey{svc.Namespace, svc.Name, port}]; ok {
		return rs
	}
	return []*route.Route{def}
}

// gammaInputs is what translation reads of the Gateway API objects a Builder translated last: not
// their status or resourceVersion, which change when weft-control writes the status.
type gammaInputs []any

func gammaInputsOf(s *discovery.State) gammaInputs {
	type meta struct {
		ns, name    string
		annotations map[string]string
		created     metav1.Time
		generation  int64
	}
	metaOf := func(m metav1.ObjectMeta) meta {
		return meta{m.Namespace, m.Name, m.Annotations, m.CreationTimestamp, m.Generation}
	}
	var in gammaInputs
	for _, r := range s.HTTPRoutes {
		in = append(in, metaOf(r.ObjectMeta), r.Spec)
	}
	for _, r := range s.GRPCRoutes {
		in = append(in, metaOf(r.ObjectMeta), r.Spec)
	}
	for _, g := range s.ReferenceGrants {
		in = append(in, metaOf(g.ObjectMeta), g.Spec)
	}
	return in
}

// same reports whether s has the same Gateway API inputs.
func (g gammaInputs) same(s *discovery.State) bool {
	return reflect.DeepEqual(g, gammaInputsOf(s))
}
