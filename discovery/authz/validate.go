package authz

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MatchKind is how a Pattern matches a string.
type MatchKind uint8

// Match kinds of a pattern: "x" exact, "x*" prefix, "*x" suffix, "*" anything.
const (
	MatchExact MatchKind = iota
	MatchPrefix
	MatchSuffix
	MatchAny
)

// Pattern is a parsed value of a principal, namespace or path list.
type Pattern struct {
	Kind  MatchKind
	Value string // without the '*'
}

// ParsePattern parses Istio's pattern syntax: at most one '*', at the start or at the end.
func ParsePattern(s string) (Pattern, error) {
	switch {
	case s == "":
		return Pattern{}, errors.New("empty value")
	case s == "*":
		return Pattern{Kind: MatchAny}, nil
	case strings.Count(s, "*") > 1:
		return Pattern{}, fmt.Errorf("%q: at most one '*', at the start or the end", s)
	case strings.HasSuffix(s, "*"):
		return Pattern{Kind: MatchPrefix, Value: strings.TrimSuffix(s, "*")}, nil
	case strings.HasPrefix(s, "*"):
		return Pattern{Kind: MatchSuffix, Value: strings.TrimPrefix(s, "*")}, nil
	case strings.Contains(s, "*"):
		return Pattern{}, fmt.Errorf("%q: '*' only at the start or the end", s)
	}
	return Pattern{Kind: MatchExact, Value: s}, nil
}

// NormalizePrincipal turns Istio's principal form ("cluster.local/ns/a/sa/b") into a SPIFFE ID; a
// value that already starts with spiffe:// is kept, and so are the "*" forms (a prefix pattern
// without the scheme gets it, a suffix pattern needs none).
func NormalizePrincipal(s string) string {
	if s == "*" || strings.HasPrefix(s, "*") || strings.HasPrefix(s, "spiffe://") {
		return s
	}
	return "spiffe://" + s
}

// Validate checks a policy's spec and returns it normalized (action upper-case with ALLOW for
// empty, principals as SPIFFE IDs, methods upper-case). Its errors name the field
// ("rules[0].from[1].source.principals[2]: ...") and what to write instead.
func Validate(in Spec) (Spec, error) {
	out := Spec{Selector: in.Selector}
	switch a := Action(strings.ToUpper(string(in.Action))); a {
	case "":
		out.Action = ActionAllow
	case ActionAllow, ActionDeny:
		out.Action = a
	default:
		return Spec{}, fmt.Errorf("action: %q is not supported (use ALLOW or DENY)", in.Action)
	}
	var errs []error
	for i, r := range in.Rules {
		var nr Rule
		for j, f := range r.From {
			where := fmt.Sprintf("rules[%d].from[%d].source", i, j)
			src, err := validateSource(f.Source)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.%w", where, err))
			}
			nr.From = append(nr.From, From{Source: src})
		}
		for j, t := range r.To {
			where := fmt.Sprintf("rules[%d].to[%d].operation", i, j)
			op, err := validateOperation(t.Operation)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.%w", where, err))
			}
			nr.To = append(nr.To, To{Operation: op})
		}
		out.Rules = append(out.Rules, nr)
	}
	if err := errors.Join(errs...); err != nil {
		return Spec{}, err
	}
	return out, nil
}

func validateSource(s Source) (Source, error) {
	var errs []error
	principals := func(field string, in []string) []string {
		var out []string
		for k, v := range in {
			if _, err := ParsePattern(v); err != nil {
				errs = append(errs, fmt.Errorf("%s[%d]: %w (a SPIFFE ID like spiffe://cluster.local/ns/NS/sa/SA, or with one '*' at the start or end)", field, k, err))
			}
			out = append(out, NormalizePrincipal(v))
		}
		return out
	}
	namespaces := func(field string, in []string) []string {
		for k, v := range in {
			p, err := ParsePattern(v)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s[%d]: %w (a namespace name, \"prefix*\" or \"*\")", field, k, err))
			case p.Kind == MatchSuffix:
				errs = append(errs, fmt.Errorf("%s[%d]: %q: a suffix match of namespaces is not supported (use a name, \"prefix*\" or \"*\")", field, k, v))
			case strings.Contains(p.Value, "/"):
				errs = append(errs, fmt.Errorf("%s[%d]: %q is not a namespace name", field, k, v))
			}
		}
		return in
	}
	out := Source{
		Principals:    principals("principals", s.Principals),
		NotPrincipals: principals("notPrincipals", s.NotPrincipals),
		Namespaces:    namespaces("namespaces", s.Namespaces),
		NotNamespaces: namespaces("notNamespaces", s.NotNamespaces),
	}
	return out, errors.Join(errs...)
}

func validateOperation(o Operation) (Operation, error) {
	var errs []error
	ports := func(field string, in []string) []string {
		for k, v := range in {
			if _, err := ParsePort(v); err != nil {
				errs = append(errs, fmt.Errorf("%s[%d]: %w", field, k, err))
			}
		}
		return in
	}
	paths := func(field string, in []string) []string {
		for k, v := range in {
			p, err := ParsePattern(v)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s[%d]: %w (a path like /api, /api/* or *.css)", field, k, err))
			case (p.Kind == MatchExact || p.Kind == MatchPrefix) && !strings.HasPrefix(p.Value, "/"):
				errs = append(errs, fmt.Errorf("%s[%d]: %q must start with '/'", field, k, v))
			}
		}
		return in
	}
	methods := func(field string, in []string) []string {
		var out []string
		for k, v := range in {
			if v != "*" && !isToken(v) {
				errs = append(errs, fmt.Errorf("%s[%d]: %q is not an HTTP method (GET, POST, ... or \"*\")", field, k, v))
			}
			out = append(out, strings.ToUpper(v))
		}
		return out
	}
	out := Operation{
		Ports:      ports("ports", o.Ports),
		NotPorts:   ports("notPorts", o.NotPorts),
		Paths:      paths("paths", o.Paths),
		NotPaths:   paths("notPaths", o.NotPaths),
		Methods:    methods("methods", o.Methods),
		NotMethods: methods("notMethods", o.NotMethods),
	}
	return out, errors.Join(errs...)
}

// ParsePort parses a port of an operation ("8080").
func ParsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return uint32(n), nil
}

// HTTPOnly reports whether an operation has conditions only HTTP can check (paths, methods).
func (o Operation) HTTPOnly() bool {
	return len(o.Paths)+len(o.NotPaths)+len(o.Methods)+len(o.NotMethods) > 0
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// Selects reports whether the selector chooses a Pod with these labels.
func (s *WorkloadSelector) Selects(labels map[string]string) bool {
	if s == nil {
		return true
	}
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
