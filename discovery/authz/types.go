// Package authz holds the AuthorizationPolicy resource (group policy.weft.io, version v1alpha1), shaped
// like Istio's security.istio.io AuthorizationPolicy so that a policy written for Istio reads the same
// here, and its validation. It is a leaf: Kubernetes API machinery types only, no client.
package authz

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Group, Version, Kind and Resource of the AuthorizationPolicy CRD.
const (
	Group    = "policy.weft.io"
	Version  = "v1alpha1"
	Kind     = "AuthorizationPolicy"
	Resource = "authorizationpolicies"
)

// APIVersion is "policy.weft.io/v1alpha1".
const APIVersion = Group + "/" + Version

// AuthorizationPolicy allows or denies inbound traffic to the selected workloads of its namespace.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              Spec `json:"spec"`
}

// Spec is what a policy says.
type Spec struct {
	// Selector chooses the Pods of the policy's namespace it applies to; nil or empty: all of them.
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// Action is ALLOW (the default) or DENY.
	Action Action `json:"action,omitempty"`
	// Rules: a request matches the policy when it matches any rule. An ALLOW policy without rules
	// allows nothing; a DENY policy without rules denies nothing (as Istio).
	Rules []Rule `json:"rules,omitempty"`
}

// Action of a policy.
type Action string

// Actions.
const (
	ActionAllow Action = "ALLOW"
	ActionDeny  Action = "DENY"
)

// WorkloadSelector selects Pods by their labels (all of MatchLabels must match).
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// Rule matches when any of From matches (or From is empty) and any of To matches (or To is empty).
type Rule struct {
	From []From `json:"from,omitempty"`
	To   []To   `json:"to,omitempty"`
}

// From wraps a Source, as Istio's rule.from[].source.
type From struct {
	Source Source `json:"source"`
}

// Source is who calls: every non-empty list must match (each list matches when any entry does).
type Source struct {
	// Principals are SPIFFE IDs of clients ("spiffe://cluster.local/ns/web/sa/frontend", or Istio's
	// form without "spiffe://"); "*" is any authenticated client; a leading or trailing "*" matches a
	// suffix or prefix.
	Principals    []string `json:"principals,omitempty"`
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	// Namespaces of authenticated clients ("web"); "*" any; a trailing "*" matches a prefix.
	Namespaces    []string `json:"namespaces,omitempty"`
	NotNamespaces []string `json:"notNamespaces,omitempty"`
}

// To wraps an Operation, as Istio's rule.to[].operation.
type To struct {
	Operation Operation `json:"operation"`
}

// Operation is what is called: every non-empty list must match. Paths and Methods are HTTP only.
type Operation struct {
	// Ports are the workload's (container) ports, as strings like Istio's ("8080").
	Ports    []string `json:"ports,omitempty"`
	NotPorts []string `json:"notPorts,omitempty"`
	// Paths: exact, "/prefix/*", "*suffix" or "*".
	Paths    []string `json:"paths,omitempty"`
	NotPaths []string `json:"notPaths,omitempty"`
	// Methods: "GET", "POST", ...; "*" any.
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
}
