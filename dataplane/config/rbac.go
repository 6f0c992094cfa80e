package config

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// Authorization: Envoy's RBAC filters (envoy.filters.network.rbac on TCP chains, envoy.filters.http.rbac
// in the HTTP connection manager), decoded into RBAC values the proxy evaluates per connection or
// request. What cannot be enforced exactly is refused (NACKed) with the field named: shadow rules,
// LOG actions, CEL conditions, metadata and other matchers not mirrored.

const (
	networkRBACTypeURL = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
	httpRBACTypeURL    = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
)

// RBAC is one RBAC filter's rules: with Deny, a request matching a policy is denied; else (ALLOW) a
// request matching no policy is denied. Policies are sorted by name (Envoy's order is its map's, so
// which matching policy is reported is ours to choose: the first by name).
type RBAC struct {
	Deny     bool
	Policies []RBACPolicy
	// readsHeaders: a rule reads a header other than :method and :path.
	readsHeaders bool
}

// ReadsHeaders reports whether a rule reads a request header other than :method and :path (a
// request path that has only those at hand then leaves the decision to one that has them all).
func (r *RBAC) ReadsHeaders() bool { return r.readsHeaders }

func (p *Permission) readsHeaders() bool {
	if p.Kind == RuleHeader && p.Header.Name != ":method" && p.Header.Name != ":path" {
		return true
	}
	for i := range p.Children {
		if p.Children[i].readsHeaders() {
			return true
		}
	}
	return false
}

func (p *Principal) readsHeaders() bool {
	if p.Kind == RuleHeader && p.Header.Name != ":method" && p.Header.Name != ":path" {
		return true
	}
	for i := range p.Children {
		if p.Children[i].readsHeaders() {
			return true
		}
	}
	return false
}

// RBACPolicy matches when any permission and any principal match.
type RBACPolicy struct {
	Name        string
	Permissions []Permission
	Principals  []Principal
}

// RuleKind says what a Permission or Principal node is.
type RuleKind uint8

// Kinds of Permission and Principal nodes.
const (
	RuleAny RuleKind = iota
	RuleAnd
	RuleOr
	RuleNot
	RuleDestinationPort // Permission
	RuleDestinationIP   // Permission
	RuleURLPath         // Permission
	RuleHeader          // Permission and Principal
	RuleAuthenticated   // Principal
	RuleSourceIP        // Principal (source_ip, direct_remote_ip and remote_ip: the peer's address)
)

// Permission is a node of envoy.config.rbac.v3.Permission.
type Permission struct {
	Kind     RuleKind
	Children []Permission // And, Or; Not has one
	Port     uint32
	Prefix   netip.Prefix
	Match    StringMatcher // URLPath, Header
	Header   *HeaderRule
}

// Principal is a node of envoy.config.rbac.v3.Principal.
type Principal struct {
	Kind     RuleKind
	Children []Principal
	// Name: Authenticated with a principal_name (nil: any authenticated peer).
	Name   *StringMatcher
	Prefix netip.Prefix
	Header *HeaderRule
}

// HeaderRule is an RBAC header matcher.
type HeaderRule struct {
	Name    string // lower case; ":method", ":path", ":authority" are the pseudo-headers
	Match   *StringMatcher
	Present bool // present_match
	Invert  bool
}

// AuthzRequest is what RBAC is evaluated on: a connection (HTTP false) or an HTTP request.
type AuthzRequest struct {
	PeerID  string // the client's SPIFFE ID from mTLS; "" for plaintext
	Source  netip.Addr
	Dst     netip.AddrPort
	HTTP    bool
	Method  string
	Path    string              // without the query, normalized (NormalizePath)
	Header  func(string) string // other headers; nil: none
	Headers func(string) bool   // whether a header is present; nil: none
}

// Allows evaluates r on req: whether it passes, and the name of the policy that decided ("" when an
// ALLOW filter matched no policy).
func (r *RBAC) Allows(req *AuthzRequest) (bool, string) {
	for i := range r.Policies {
		p := &r.Policies[i]
		if p.matches(req) {
			return !r.Deny, p.Name
		}
	}
	return r.Deny, ""
}

func (p *RBACPolicy) matches(req *AuthzRequest) bool {
	perm := false
	for i := range p.Permissions {
		if p.Permissions[i].matches(req) {
			perm = true
			break
		}
	}
	if !perm {
		return false
	}
	for i := range p.Principals {
		if p.Principals[i].matches(req) {
			return true
		}
	}
	return false
}

func (p *Permission) matches(req *AuthzRequest) bool {
	switch p.Kind {
	case RuleAny:
		return true
	case RuleAnd:
		for i := range p.Children {
			if !p.Children[i].matches(req) {
				return false
			}
		}
		return true
	case RuleOr:
		for i := range p.Children {
			if p.Children[i].matches(req) {
				return true
			}
		}
		return false
	case RuleNot:
		return !p.Children[0].matches(req)
	case RuleDestinationPort:
		return uint32(req.Dst.Port()) == p.Port
	case RuleDestinationIP:
		return p.Prefix.Contains(req.Dst.Addr())
	case RuleURLPath:
		return req.HTTP && rbacMatchString(p.Match, req.Path)
	case RuleHeader:
		return p.Header.matches(req)
	}
	return false
}

func (p *Principal) matches(req *AuthzRequest) bool {
	switch p.Kind {
	case RuleAny:
		return true
	case RuleAnd:
		for i := range p.Children {
			if !p.Children[i].matches(req) {
				return false
			}
		}
		return true
	case RuleOr:
		for i := range p.Children {
			if p.Children[i].matches(req) {
				return true
			}
		}
		return false
	case RuleNot:
		return !p.Children[0].matches(req)
	case RuleAuthenticated:
		if req.PeerID == "" {
			return false
		}
		return p.Name == nil || rbacMatchString(*p.Name, req.PeerID)
	case RuleSourceIP:
		return p.Prefix.Contains(req.Source)
	case RuleHeader:
		return p.Header.matches(req)
	}
	return false
}

// matches: on a connection (not HTTP) no header is there, as in Envoy's network filter.
func (h *HeaderRule) matches(req *AuthzRequest) bool {
	if !req.HTTP {
		return false
	}
	var v string
	present := false
	switch h.Name {
	case ":method":
		v, present = req.Method, true
	case ":path":
		v, present = req.Path, true
	default:
		if req.Headers != nil {
			present = req.Headers(h.Name)
		}
		if present && req.Header != nil {
			v = req.Header(h.Name)
		}
	}
	var ok bool
	if h.Present {
		ok = present
	} else {
		ok = present && rbacMatchString(*h.Match, v)
	}
	return ok != h.Invert
}

func rbacMatchString(m StringMatcher, s string) bool {
	if m.IgnoreCase {
		s = strings.ToLower(s)
	}
	low := func(x string) string {
		if m.IgnoreCase {
			return strings.ToLower(x)
		}
		return x
	}
	switch {
	case m.Regex != nil:
		return m.Regex.MatchString(s)
	case m.Exact != "":
		return s == low(m.Exact)
	case m.Prefix != "":
		return strings.HasPrefix(s, low(m.Prefix))
	case m.Suffix != "":
		return strings.HasSuffix(s, low(m.Suffix))
	case m.Contains != "":
		return strings.Contains(s, low(m.Contains))
	}
	return false
}

// NormalizePath is the path RBAC sees: the query cut off, percent-decoding of unreserved characters
// is left to the caller (net/http gives the decoded path), "." and ".." segments resolved and
// repeated slashes merged, as Envoy's normalize_path and merge_slashes do; a trailing slash is kept.
func NormalizePath(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	if !strings.Contains(p, "//") && !strings.Contains(p, "/.") {
		return p
	}
	trailing := strings.HasSuffix(p, "/")
	var out []string
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	s := "/" + strings.Join(out, "/")
	if trailing && s != "/" {
		s += "/"
	}
	return s
}

// decodeNetworkRBAC decodes an envoy.filters.network.rbac filter's configuration.
func decodeNetworkRBAC(a *anypb.Any) (*RBAC, error) {
	var n xp.NetworkRBAC
	if err := proto.Unmarshal(a.GetValue(), &n); err != nil {
		return nil, err
	}
	if err := unknownFields(&n); err != nil {
		return nil, err
	}
	if n.GetShadowRules() != nil {
		return nil, errors.New("rbac: shadow_rules are not supported")
	}
	if n.GetEnforcementType() != 0 {
		return nil, errors.New("rbac: enforcement_type CONTINUOUS is not supported (the decision is made once, when the connection opens)")
	}
	return decodeRBAC(n.GetRules())
}

// decodeHTTPRBAC decodes an envoy.filters.http.rbac filter's configuration.
func decodeHTTPRBAC(a *anypb.Any) (*RBAC, error) {
	var h xp.HttpRBAC
	if err := proto.Unmarshal(a.GetValue(), &h); err != nil {
		return nil, err
	}
	if err := unknownFields(&h); err != nil {
		return nil, err
	}
	if h.GetShadowRules() != nil {
		return nil, errors.New("rbac: shadow_rules are not supported")
	}
	return decodeRBAC(h.GetRules())
}

// unknownFields refuses a message (or any message inside it) that carries fields we do not mirror:
// ignoring one (a CEL condition, a metadata matcher) would change what the policy means.
func unknownFields(m proto.Message) error {
	var err error
	var walk func(m proto.Message, path string)
	walk = func(m proto.Message, path string) {
		if err != nil {
			return
		}
		r := m.ProtoReflect()
		if len(r.GetUnknown()) > 0 {
			err = fmt.Errorf("rbac: %s has fields weft-proxy does not support (%s)", path, r.Descriptor().Name())
			return
		}
		r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap():
				if fd.MapValue().Message() != nil {
					v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
						walk(mv.Message().Interface(), path+"."+string(fd.Name())+"["+k.String()+"]")
						return err == nil
					})
				}
			case fd.IsList():
				if fd.Message() != nil {
					for i := 0; i < v.List().Len(); i++ {
						walk(v.List().Get(i).Message().Interface(), fmt.Sprintf("%s.%s[%d]", path, fd.Name(), i))
					}
				}
			case fd.Message() != nil:
				walk(v.Message().Interface(), path+"."+string(fd.Name()))
			}
			return err == nil
		})
	}
	walk(m, "config")
	return err
}

func decodeRBAC(r *xp.RBAC) (*RBAC, error) {
	out := &RBAC{}
	switch r.GetAction() {
	case xp.RBAC_ALLOW:
	case xp.RBAC_DENY:
		out.Deny = true
	default:
		return nil, fmt.Errorf("rbac: action %v is not supported (ALLOW or DENY)", r.GetAction())
	}
	// Policies are decoded in the order of their names: sorting the names, not the decoded policies,
	// keeps a slices.SortFunc instantiation for RBACPolicy (~30 KB of binary, so of every sidecar's
	// resident memory) out of weft-proxy.
	names := make([]string, 0, len(r.GetPolicies()))
	for name := range r.GetPolicies() {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p := r.GetPolicies()[name]
		pol := RBACPolicy{Name: name}
		if len(p.GetPermissions()) == 0 || len(p.GetPrincipals()) == 0 {
			return nil, fmt.Errorf("rbac: policy %q needs permissions and principals", name)
		}
		for i, pm := range p.GetPermissions() {
			d, err := decodePermission(pm, 0)
			if err != nil {
				return nil, fmt.Errorf("rbac: policy %q: permissions[%d]: %w", name, i, err)
			}
			pol.Permissions = append(pol.Permissions, d)
		}
		for i, pr := range p.GetPrincipals() {
			d, err := decodePrincipal(pr, 0)
			if err != nil {
				return nil, fmt.Errorf("rbac: policy %q: principals[%d]: %w", name, i, err)
			}
			pol.Principals = append(pol.Principals, d)
		}
		for i := range pol.Permissions {
			out.readsHeaders = out.readsHeaders || pol.Permissions[i].readsHeaders()
		}
		for i := range pol.Principals {
			out.readsHeaders = out.readsHeaders || pol.Principals[i].readsHeaders()
		}
		out.Policies = append(out.Policies, pol)
	}
	return out, nil
}

const maxRBACDepth = 32

func decodePermission(p *xp.RbacPermission, depth int) (Permission, error) {
	if depth > maxRBACDepth {
		return Permission{}, errors.New("nested too deep")
	}
	set := func(kind RuleKind, rules []*xp.RbacPermission) (Permission, error) {
		out := Permission{Kind: kind}
		for i, c := range rules {
			d, err := decodePermission(c, depth+1)
			if err != nil {
				return out, fmt.Errorf("[%d]: %w", i, err)
			}
			out.Children = append(out.Children, d)
		}
		return out, nil
	}
	switch r := p.GetRule().(type) {
	case *xp.RbacPermission_Any:
		return Permission{Kind: RuleAny}, nil
	case *xp.RbacPermission_AndRules:
		return set(RuleAnd, r.AndRules.GetRules())
	case *xp.RbacPermission_OrRules:
		return set(RuleOr, r.OrRules.GetRules())
	case *xp.RbacPermission_NotRule:
		c, err := decodePermission(r.NotRule, depth+1)
		return Permission{Kind: RuleNot, Children: []Permission{c}}, err
	case *xp.RbacPermission_DestinationPort:
		if r.DestinationPort == 0 || r.DestinationPort > 65535 {
			return Permission{}, fmt.Errorf("destination_port %d out of range", r.DestinationPort)
		}
		return Permission{Kind: RuleDestinationPort, Port: r.DestinationPort}, nil
	case *xp.RbacPermission_DestinationIp:
		pf, err := cidr(r.DestinationIp)
		return Permission{Kind: RuleDestinationIP, Prefix: pf}, err
	case *xp.RbacPermission_UrlPath:
		if r.UrlPath.GetPath() == nil {
			return Permission{}, errors.New("url_path without path")
		}
		m, err := decodeStringMatcher(r.UrlPath.GetPath())
		return Permission{Kind: RuleURLPath, Match: m}, err
	case *xp.RbacPermission_Header:
		h, err := decodeHeaderRule(r.Header)
		return Permission{Kind: RuleHeader, Header: h}, err
	}
	return Permission{}, errors.New("empty or unsupported permission (weft-proxy supports any, and_rules, or_rules, not_rule, destination_port, destination_ip, url_path, header)")
}

func decodePrincipal(p *xp.RbacPrincipal, depth int) (Principal, error) {
	if depth > maxRBACDepth {
		return Principal{}, errors.New("nested too deep")
	}
	set := func(kind RuleKind, ids []*xp.RbacPrincipal) (Principal, error) {
		out := Principal{Kind: kind}
		for i, c := range ids {
			d, err := decodePrincipal(c, depth+1)
			if err != nil {
				return out, fmt.Errorf("[%d]: %w", i, err)
			}
			out.Children = append(out.Children, d)
		}
		return out, nil
	}
	switch r := p.GetIdentifier().(type) {
	case *xp.RbacPrincipal_Any:
		return Principal{Kind: RuleAny}, nil
	case *xp.RbacPrincipal_AndIds:
		return set(RuleAnd, r.AndIds.GetIds())
	case *xp.RbacPrincipal_OrIds:
		return set(RuleOr, r.OrIds.GetIds())
	case *xp.RbacPrincipal_NotId:
		c, err := decodePrincipal(r.NotId, depth+1)
		return Principal{Kind: RuleNot, Children: []Principal{c}}, err
	case *xp.RbacPrincipal_Authenticated_:
		out := Principal{Kind: RuleAuthenticated}
		if pn := r.Authenticated.GetPrincipalName(); pn != nil {
			m, err := decodeStringMatcher(pn)
			if err != nil {
				return out, fmt.Errorf("authenticated.principal_name: %w", err)
			}
			out.Name = &m
		}
		return out, nil
	case *xp.RbacPrincipal_SourceIp:
		pf, err := cidr(r.SourceIp)
		return Principal{Kind: RuleSourceIP, Prefix: pf}, err
	case *xp.RbacPrincipal_DirectRemoteIp:
		pf, err := cidr(r.DirectRemoteIp)
		return Principal{Kind: RuleSourceIP, Prefix: pf}, err
	case *xp.RbacPrincipal_RemoteIp:
		pf, err := cidr(r.RemoteIp)
		return Principal{Kind: RuleSourceIP, Prefix: pf}, err
	case *xp.RbacPrincipal_Header:
		h, err := decodeHeaderRule(r.Header)
		return Principal{Kind: RuleHeader, Header: h}, err
	}
	return Principal{}, errors.New("empty or unsupported principal (weft-proxy supports any, and_ids, or_ids, not_id, authenticated, source_ip, direct_remote_ip, remote_ip, header)")
}

func decodeHeaderRule(h *xp.RbacHeaderMatcher) (*HeaderRule, error) {
	out := &HeaderRule{Name: strings.ToLower(h.GetName()), Invert: h.GetInvertMatch()}
	if out.Name == "" {
		return nil, errors.New("header matcher without a name")
	}
	var m StringMatcher
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *xp.RbacHeaderMatcher_StringMatch:
		m, err = decodeStringMatcher(s.StringMatch)
	case *xp.RbacHeaderMatcher_ExactMatch:
		m = StringMatcher{Exact: s.ExactMatch}
	case *xp.RbacHeaderMatcher_PrefixMatch:
		m = StringMatcher{Prefix: s.PrefixMatch}
	case *xp.RbacHeaderMatcher_SuffixMatch:
		m = StringMatcher{Suffix: s.SuffixMatch}
	case *xp.RbacHeaderMatcher_PresentMatch:
		out.Present = true
		if !s.PresentMatch {
			out.Invert = !out.Invert
		}
		return out, nil
	default:
		return nil, fmt.Errorf("header %q: unsupported match (string_match, exact, prefix, suffix or present)", h.GetName())
	}
	if err != nil {
		return nil, fmt.Errorf("header %q: %w", h.GetName(), err)
	}
	if m == (StringMatcher{}) {
		return nil, fmt.Errorf("header %q: empty match", h.GetName())
	}
	out.Match = &m
	return out, nil
}

func cidr(c *xp.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", c.GetAddressPrefix())
	}
	bits := a.BitLen()
	if c.GetPrefixLen() != nil {
		bits = int(c.GetPrefixLen().GetValue())
	}
	return a.Unmap().Prefix(bits)
}
