package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httprbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/discovery/authz"
)

// Authorization (docs/design.md, "Authorization"): the AuthorizationPolicies that select a pod become
// Envoy RBAC filters on every chain of its inbound listener, as Istio builds them: a DENY filter first
// (when DENY policies select the pod), then an ALLOW filter (when ALLOW policies select it, or its
// default inbound policy is deny: an ALLOW filter without policies denies everything). Principals
// match authenticated.principal_name (the client certificate's SPIFFE ID); namespaces are the prefix
// spiffe://<trust-domain>/ns/<ns>/; permissions match destination_port, url_path and the :method
// header. On TCP chains the HTTP-only conditions (paths, methods) cannot be checked: an ALLOW rule's
// operation that has them is dropped (it allows less), a DENY rule's operation loses them (it denies
// more).

const (
	networkRBACFilterName = "envoy.filters.network.rbac"
	httpRBACFilterName    = "envoy.filters.http.rbac"
)

// DefaultInboundPolicyAnnotation on a pod or its namespace (the pod's wins): "allow" (the default)
// or "deny": with "deny", a request must match an ALLOW AuthorizationPolicy. Any other value is taken
// as "deny" (fail closed).
const DefaultInboundPolicyAnnotation = "config.weft.io/default-inbound-policy"

// InboundAuthz is the RBAC of a pod's inbound listener: Deny and Allow each nil when absent.
type InboundAuthz struct {
	Deny, Allow *rbacconfig.RBAC
	// tcpDeny and tcpAllow are Deny and Allow for TCP chains (forTCP).
	tcpDeny, tcpAllow *rbacconfig.RBAC
	// Key identifies the content (a digest); pods with equal keys share an inbound listener.
	Key string
}

// podAuthz computes the RBAC of pod, nil when nothing restricts it.
func podAuthz(s *discovery.State, pod discovery.Pod, o Options) *InboundAuthz {
	policies := s.PoliciesFor(pod)
	defaultDeny := defaultInboundPolicy(s, pod) != "allow"
	if len(policies) == 0 && !defaultDeny {
		return nil
	}
	var deny, allow *rbacconfig.RBAC
	for _, p := range policies {
		if p.Spec.Action == authz.ActionDeny {
			if deny == nil {
				deny = &rbacconfig.RBAC{Action: rbacconfig.RBAC_DENY, Policies: map[string]*rbacconfig.Policy{}}
			}
			addPolicies(deny, p, o)
			continue
		}
		if allow == nil {
			allow = &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW, Policies: map[string]*rbacconfig.Policy{}}
		}
		addPolicies(allow, p, o)
	}
	if allow == nil && defaultDeny {
		allow = &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW}
	}
	a := &InboundAuthz{Deny: deny, Allow: allow, tcpDeny: forTCP(deny, policies, o), tcpAllow: forTCP(allow, policies, o)}
	h := sha256.New()
	for _, r := range []*rbacconfig.RBAC{a.Deny, a.Allow, a.tcpDeny, a.tcpAllow} {
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		h.Write(b)
		h.Write([]byte{0})
	}
	a.Key = hex.EncodeToString(h.Sum(nil)[:12])
	return a
}

// defaultInboundPolicy is the pod's config.weft.io/default-inbound-policy, else its namespace's,
// lower-cased; "allow" when neither says.
func defaultInboundPolicy(s *discovery.State, pod discovery.Pod) string {
	v, ok := pod.Annotations[DefaultInboundPolicyAnnotation]
	if !ok {
		ns, _ := s.Namespace(pod.Namespace)
		v, ok = ns.Annotations[DefaultInboundPolicyAnnotation]
	}
	if !ok || strings.TrimSpace(v) == "" {
		return "allow"
	}
	return strings.ToLower(strings.TrimSpace(v))
}

// PolicyName is the RBAC policy name of rule i of an AuthorizationPolicy: "<ns>/<name>/<i>". The
// proxy reports "<ns>/<name>" in its metrics.
func PolicyName(p discovery.AuthorizationPolicy, i int) string {
	return p.Namespace + "/" + p.Name + "/" + strconv.Itoa(i)
}

// addPolicies adds one Envoy policy per rule. A policy with an Error fails closed: as ALLOW it adds
// nothing (it still counts, so the pod needs another ALLOW to be reached), as DENY it denies all.
func addPolicies(r *rbacconfig.RBAC, p discovery.AuthorizationPolicy, o Options) {
	if p.Error != "" {
		if p.Spec.Action == authz.ActionDeny {
			r.Policies[PolicyName(p, 0)] = &rbacconfig.Policy{
				Permissions: []*rbacconfig.Permission{anyPermission()},
				Principals:  []*rbacconfig.Principal{anyPrincipal()},
			}
		}
		return
	}
	for i, rule := range p.Spec.Rules {
		pol := &rbacconfig.Policy{}
		for _, f := range rule.From {
			pol.Principals = append(pol.Principals, sourcePrincipal(f.Source, o))
		}
		if len(rule.From) == 0 {
			pol.Principals = []*rbacconfig.Principal{anyPrincipal()}
		}
		for _, t := range rule.To {
			pol.Permissions = append(pol.Permissions, operationPermission(t.Operation))
		}
		if len(rule.To) == 0 {
			pol.Permissions = []*rbacconfig.Permission{anyPermission()}
		}
		r.Policies[PolicyName(p, i)] = pol
	}
}

func anyPrincipal() *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Any{Any: true}}
}

func anyPermission() *rbacconfig.Permission {
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Any{Any: true}}
}

func andIDs(ids []*rbacconfig.Principal) *rbacconfig.Principal {
	if len(ids) == 0 {
		return anyPrincipal()
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_AndIds{AndIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

func orIDs(ids []*rbacconfig.Principal) *rbacconfig.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_OrIds{OrIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

func notID(id *rbacconfig.Principal) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_NotId{NotId: id}}
}

func andRules(rules []*rbacconfig.Permission) *rbacconfig.Permission {
	if len(rules) == 0 {
		return anyPermission()
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: &rbacconfig.Permission_Set{Rules: rules}}}
}

func orRules(rules []*rbacconfig.Permission) *rbacconfig.Permission {
	if len(rules) == 1 {
		return rules[0]
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_OrRules{OrRules: &rbacconfig.Permission_Set{Rules: rules}}}
}

func notRule(r *rbacconfig.Permission) *rbacconfig.Permission {
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_NotRule{NotRule: r}}
}

// stringMatcher turns a parsed pattern into a StringMatcher; MatchAny gives nil.
func stringMatcher(p authz.Pattern) *matcher.StringMatcher {
	switch p.Kind {
	case authz.MatchPrefix:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: p.Value}}
	case authz.MatchSuffix:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: p.Value}}
	case authz.MatchExact:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: p.Value}}
	}
	return nil
}

func authenticated(m *matcher.StringMatcher) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Authenticated_{Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: m}}}
}

func principalIDs(values []string) []*rbacconfig.Principal {
	var out []*rbacconfig.Principal
	for _, v := range values {
		p, err := authz.ParsePattern(authz.NormalizePrincipal(v))
		if err != nil {
			continue // validated before; not reached
		}
		out = append(out, authenticated(stringMatcher(p)))
	}
	return out
}

func namespaceIDs(values []string, o Options) []*rbacconfig.Principal {
	var out []*rbacconfig.Principal
	for _, v := range values {
		p, err := authz.ParsePattern(v)
		if err != nil {
			continue
		}
		prefix := "spiffe://" + o.trustDomain() + "/ns/"
		switch p.Kind {
		case authz.MatchAny:
			out = append(out, authenticated(nil))
		case authz.MatchPrefix:
			out = append(out, authenticated(stringMatcher(authz.Pattern{Kind: authz.MatchPrefix, Value: prefix + p.Value})))
		default:
			out = append(out, authenticated(stringMatcher(authz.Pattern{Kind: authz.MatchPrefix, Value: prefix + p.Value + "/"})))
		}
	}
	return out
}

func sourcePrincipal(s authz.Source, o Options) *rbacconfig.Principal {
	var and []*rbacconfig.Principal
	if ids := principalIDs(s.Principals); len(ids) > 0 {
		and = append(and, orIDs(ids))
	}
	if ids := namespaceIDs(s.Namespaces, o); len(ids) > 0 {
		and = append(and, orIDs(ids))
	}
	if ids := principalIDs(s.NotPrincipals); len(ids) > 0 {
		and = append(and, notID(orIDs(ids)))
	}
	if ids := namespaceIDs(s.NotNamespaces, o); len(ids) > 0 {
		and = append(and, notID(orIDs(ids)))
	}
	return andIDs(and)
}

func portRules(values []string) []*rbacconfig.Permission {
	var out []*rbacconfig.Permission
	for _, v := range values {
		if n, err := authz.ParsePort(v); err == nil {
			out = append(out, &rbacconfig.Permission{Rule: &rbacconfig.Permission_DestinationPort{DestinationPort: n}})
		}
	}
	return out
}

func pathRules(values []string) []*rbacconfig.Permission {
	var out []*rbacconfig.Permission
	for _, v := range values {
		p, err := authz.ParsePattern(v)
		if err != nil {
			continue
		}
		if p.Kind == authz.MatchAny {
			out = append(out, anyPermission())
			continue
		}
		out = append(out, &rbacconfig.Permission{Rule: &rbacconfig.Permission_UrlPath{UrlPath: &matcher.PathMatcher{
			Rule: &matcher.PathMatcher_Path{Path: stringMatcher(p)},
		}}})
	}
	return out
}

func methodRules(values []string) []*rbacconfig.Permission {
	var out []*rbacconfig.Permission
	for _, v := range values {
		if v == "*" {
			out = append(out, anyPermission())
			continue
		}
		out = append(out, &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: &route.HeaderMatcher{
			Name: ":method",
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
				MatchPattern: &matcher.StringMatcher_Exact{Exact: v},
			}},
		}}})
	}
	return out
}

func operationPermission(op authz.Operation) *rbacconfig.Permission {
	var and []*rbacconfig.Permission
	add := func(rules []*rbacconfig.Permission, not bool) {
		if len(rules) == 0 {
			return
		}
		if not {
			and = append(and, notRule(orRules(rules)))
		} else {
			and = append(and, orRules(rules))
		}
	}
	add(portRules(op.Ports), false)
	add(pathRules(op.Paths), false)
	add(methodRules(op.Methods), false)
	add(portRules(op.NotPorts), true)
	add(pathRules(op.NotPaths), true)
	add(methodRules(op.NotMethods), true)
	return andRules(and)
}

// forTCP is r for a TCP chain: the HTTP-only conditions removed as the comment at the top says.
func forTCP(r *rbacconfig.RBAC, policies []discovery.AuthorizationPolicy, o Options) *rbacconfig.RBAC {
	if r == nil {
		return nil
	}
	out := &rbacconfig.RBAC{Action: r.GetAction()}
	for _, p := range policies {
		wantDeny := p.Spec.Action == authz.ActionDeny
		if wantDeny != (r.GetAction() == rbacconfig.RBAC_DENY) || p.Error != "" {
			continue
		}
		for i, rule := range p.Spec.Rules {
			var tos []authz.To
			for _, t := range rule.To {
				op := t.Operation
				if op.HTTPOnly() {
					if !wantDeny {
						continue // ALLOW: an operation TCP cannot check allows nothing here
					}
					op = authz.Operation{Ports: op.Ports, NotPorts: op.NotPorts}
				}
				tos = append(tos, authz.To{Operation: op})
			}
			if len(rule.To) > 0 && len(tos) == 0 {
				continue
			}
			p1 := p
			p1.Spec.Rules = []authz.Rule{{From: rule.From, To: tos}}
			tmp := &rbacconfig.RBAC{Policies: map[string]*rbacconfig.Policy{}}
			addPolicies(tmp, p1, o)
			if out.Policies == nil {
				out.Policies = map[string]*rbacconfig.Policy{}
			}
			out.Policies[PolicyName(p, i)] = tmp.Policies[PolicyName(p1, 0)]
		}
	}
	// The fail-closed DENY policies (with an Error) deny all on TCP too.
	for name, pol := range r.GetPolicies() {
		for _, p := range policies {
			if p.Error != "" && name == PolicyName(p, 0) {
				if out.Policies == nil {
					out.Policies = map[string]*rbacconfig.Policy{}
				}
				out.Policies[name] = pol
			}
		}
	}
	return out
}

// networkRBACFilters are the RBAC network filters of a TCP chain (deny, then allow).
func networkRBACFilters(a *InboundAuthz, statPrefix string) []*listener.Filter {
	var out []*listener.Filter
	for _, r := range []*rbacconfig.RBAC{a.tcpDeny, a.tcpAllow} {
		if r == nil {
			continue
		}
		out = append(out, &listener.Filter{
			Name:       networkRBACFilterName,
			ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&netrbac.RBAC{Rules: r, StatPrefix: statPrefix})},
		})
	}
	return out
}

// httpRBACFilters are the RBAC HTTP filters of an HTTP chain (deny, then allow), before the router.
func httpRBACFilters(a *InboundAuthz) []*hcm.HttpFilter {
	var out []*hcm.HttpFilter
	for _, r := range []*rbacconfig.RBAC{a.Deny, a.Allow} {
		if r == nil {
			continue
		}
		out = append(out, &hcm.HttpFilter{
			Name:       httpRBACFilterName,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&httprbac.RBAC{Rules: r})},
		})
	}
	return out
}

// authzFilters are the network filters of an inbound chain of port p with its RBAC.
func authzFilters(p InboundPort, cluster string) []*listener.Filter {
	if p.Protocol.IsHTTP() {
		h := hcmConfig(cluster, InboundRouteName(p.Port))
		h.HttpFilters = append(httpRBACFilters(p.Authz), h.HttpFilters...)
		return []*listener.Filter{{Name: hcmFilterName, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(h)}}}
	}
	return append(networkRBACFilters(p.Authz, cluster), tcpProxy(cluster))
}

// passthroughFilters are the filters of the inbound listener's default chain, which passes through
// connections to ports no chain serves (ports the pod does not declare): with the pod's authz, its
// network RBAC (deny, then allow) before the tcp_proxy, as Istio does, so that a port the app listens
// on without declaring it is not a way around the policies or default-deny. A pod without ports has
// one InboundPort of port 0 that carries only its Authz.
func passthroughFilters(ports []InboundPort) []*listener.Filter {
	for _, p := range ports {
		if p.Authz != nil {
			return append(networkRBACFilters(p.Authz, PassthroughCluster), tcpProxy(PassthroughCluster))
		}
	}
	return []*listener.Filter{tcpProxy(PassthroughCluster)}
}
