package discovery

import (
	"cmp"
	"log/slog"
	"slices"
	"strings"

	"github.com/weftmesh/weft/discovery/authz"
)

// AuthorizationPolicy is a policy.weft.io AuthorizationPolicy as translation reads it: validated and
// normalized (authz.Validate), or, when it is not valid, with Error set. A policy with an Error is
// never dropped silently, because dropping it would widen access: translation fails closed on it (an
// ALLOW policy then allows nothing, a DENY policy denies everything on the Pods it selects).
type AuthorizationPolicy struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Spec      authz.Spec `json:"spec"`
	// Error says why the policy is not valid; "" when it is.
	Error string `json:"error,omitempty"`
}

// Key is "namespace/name".
func (p AuthorizationPolicy) Key() string { return p.Namespace + "/" + p.Name }

// buildPolicies validates, normalizes and sorts the policies by namespace and name.
func buildPolicies(in []*authz.AuthorizationPolicy) []AuthorizationPolicy {
	var out []AuthorizationPolicy
	for _, p := range in {
		if p == nil {
			continue
		}
		ap := AuthorizationPolicy{Namespace: p.Namespace, Name: p.Name}
		spec, err := authz.Validate(p.Spec)
		if err != nil {
			// Keep what decides whom it applies to and its action, so that it fails closed there.
			ap.Spec = authz.Spec{Selector: p.Spec.Selector, Action: authz.ActionAllow}
			if strings.EqualFold(string(p.Spec.Action), string(authz.ActionDeny)) {
				ap.Spec.Action = authz.ActionDeny
			}
			ap.Error = "spec." + err.Error()
		} else {
			ap.Spec = spec
		}
		out = append(out, ap)
	}
	slices.SortFunc(out, func(a, b AuthorizationPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return slices.CompactFunc(out, func(a, b AuthorizationPolicy) bool { return a.Key() == b.Key() })
}

// PoliciesFor returns the policies of the Pod's namespace that select it, in name order.
func (s *State) PoliciesFor(pod Pod) []AuthorizationPolicy {
	var out []AuthorizationPolicy
	for _, p := range s.AuthorizationPolicies {
		if p.Namespace == pod.Namespace && p.Spec.Selector.Selects(pod.Labels) {
			out = append(out, p)
		}
	}
	return out
}

// InvalidPolicies lists the policies that are not valid, for a warning.
func (s *State) InvalidPolicies() []AuthorizationPolicy {
	var out []AuthorizationPolicy
	for _, p := range s.AuthorizationPolicies {
		if p.Error != "" {
			out = append(out, p)
		}
	}
	return out
}

// WarnInvalidPolicies logs each policy of s that is not valid, unless prev (the State published
// before, or nil) had the same policy with the same error: one line per mistake, not one per change.
func WarnInvalidPolicies(log *slog.Logger, s, prev *State) {
	seen := map[string]string{}
	if prev != nil {
		for _, p := range prev.InvalidPolicies() {
			seen[p.Key()] = p.Error
		}
	}
	for _, p := range s.InvalidPolicies() {
		if seen[p.Key()] == p.Error {
			continue
		}
		verb := "allows nothing"
		if p.Spec.Action == authz.ActionDeny {
			verb = "denies every request"
		}
		log.Warn("AuthorizationPolicy is not valid: until it is fixed it "+verb+" on the Pods it selects (fail closed)",
			"policy", p.Key(), "error", p.Error)
	}
}
