package config

import (
	"regexp"
	"strings"
	"time"
)

// The route features of the Gateway API's mesh profile (HTTPRoute, GRPCRoute) as weft-control emits
// them in RDS: header, method and query matchers, path_separated_prefix, redirects, direct responses,
// header mutations, path rewrites, mirrors and gRPC stream limits. The matchers are pure and tested here;
// dataplane/proxy applies the rest.

// ValueKind says how a ValueMatch compares a value.
type ValueKind uint8

// Value match kinds.
const (
	ValueExact ValueKind = iota
	ValuePrefix
	ValueSuffix
	ValueContains
	ValueRegex
	// ValuePresent matches on presence alone (HeaderMatcher.present_match and the like).
	ValuePresent
)

// ValueMatch is a string matcher of a header or query parameter matcher. Unlike StringMatcher it can
// say "exactly the empty string".
type ValueMatch struct {
	Kind       ValueKind
	Value      string // lower-cased when IgnoreCase
	Regex      *regexp.Regexp
	IgnoreCase bool
}

// Match reports whether s matches (a ValuePresent matcher matches any value).
func (m *ValueMatch) Match(s string) bool {
	if m.IgnoreCase && m.Kind != ValueRegex {
		s = strings.ToLower(s)
	}
	switch m.Kind {
	case ValueExact:
		return s == m.Value
	case ValuePrefix:
		return strings.HasPrefix(s, m.Value)
	case ValueSuffix:
		return strings.HasSuffix(s, m.Value)
	case ValueContains:
		return strings.Contains(s, m.Value)
	case ValueRegex:
		return m.Regex.MatchString(s)
	}
	return true
}

// HeaderMatcher is a decoded envoy.config.route.v3.HeaderMatcher. Name is lower case; the pseudo-headers
// :method, :authority, :path and :scheme are matched against the request's.
type HeaderMatcher struct {
	Name string
	// Key is Name in net/http's canonical form (for a regular header).
	Key   string
	Match ValueMatch
	// Present is the wanted presence when Match.Kind is ValuePresent.
	Present        bool
	Invert         bool
	MissingAsEmpty bool
}

// Matches reports whether a request whose header Name has value v (ok false: absent; several values
// joined with ",") satisfies the matcher, as Envoy's HeaderUtility::matchHeaders.
func (h *HeaderMatcher) Matches(v string, ok bool) bool {
	if !ok && !h.MissingAsEmpty {
		return h.Match.Kind == ValuePresent && h.Present == h.Invert
	}
	var m bool
	if h.Match.Kind == ValuePresent {
		m = h.Present
	} else {
		m = h.Match.Match(v)
	}
	return m != h.Invert
}

// QueryMatcher is a decoded envoy.config.route.v3.QueryParameterMatcher; the value compared is the
// parameter's first, decoded.
type QueryMatcher struct {
	Name  string
	Match ValueMatch
	// Present is the wanted presence when Match.Kind is ValuePresent.
	Present bool
}

// Matches reports whether a request whose parameter Name has first value v (ok false: absent)
// satisfies the matcher.
func (q *QueryMatcher) Matches(v string, ok bool) bool {
	if q.Match.Kind == ValuePresent {
		return ok == q.Present
	}
	return ok && q.Match.Match(v)
}

// AppendAction is HeaderValueOption.append_action.
type AppendAction uint8

// Append actions, as Envoy numbers them.
const (
	AppendIfExistsOrAdd AppendAction = iota
	AddIfAbsent
	OverwriteIfExistsOrAdd
	OverwriteIfExists
)

// HeaderOp adds or sets one header.
type HeaderOp struct {
	Key       string // canonical (net/http) form
	Value     string // after the %% escapes
	Action    AppendAction
	KeepEmpty bool
}

// HeaderMutation is one level's headers_to_remove (applied first, as Envoy) and headers_to_add.
type HeaderMutation struct {
	Remove []string // canonical keys
	Add    []HeaderOp
}

// Empty reports whether the mutation does nothing.
func (m *HeaderMutation) Empty() bool { return m == nil || len(m.Remove) == 0 && len(m.Add) == 0 }

// RedirectPath says how a redirect builds its path.
type RedirectPath uint8

// Redirect path kinds.
const (
	RedirectKeepPath RedirectPath = iota
	RedirectReplacePath
	RedirectPrefix
	RedirectRegex
)

// Redirect is a decoded RedirectAction.
type Redirect struct {
	Scheme   string // "" keeps the request's
	Host     string // "" keeps the request's
	Port     uint32 // 0: the request's port, or the scheme's default when Scheme changes it
	PathKind RedirectPath
	// Path is path_redirect (RedirectReplacePath; may carry a query) or prefix_rewrite (RedirectPrefix).
	Path       string
	Regex      *Rewrite // RedirectRegex
	Code       int      // 301, 302, 303, 307 or 308
	StripQuery bool
}

// Rewrite is a RegexMatchAndSubstitute: every match of Regex in the path is replaced by Template
// (regexp.Expand syntax; Envoy's \1 became ${1}).
type Rewrite struct {
	Regex    *regexp.Regexp
	Template string
}

// Apply rewrites s.
func (w *Rewrite) Apply(s string) string { return w.Regex.ReplaceAllString(s, w.Template) }

// DirectResponse is a decoded DirectResponseAction.
type DirectResponse struct {
	Status int
	Body   []byte
}

// Mirror is one request_mirror_policies entry.
type Mirror struct {
	Cluster string
	// PerMillion is the share of requests mirrored, in millionths (1e6: all).
	PerMillion uint32
	// HostRewrite replaces the mirror's Host; else Envoy's "-shadow" suffix is appended to it unless
	// NoShadowSuffix.
	HostRewrite    string
	NoShadowSuffix bool
}

// GRPCTimeout is max_stream_duration's use of the grpc-timeout header.
type GRPCTimeout struct {
	Max    time.Duration // 0: no cap
	Offset time.Duration
}
