// Package identity is Weft's certificate authority and the pure pieces around it: SPIFFE IDs, the checks
// of a certificate signing request, leaf templates, the CA material (trust bundle and issuer) and the
// Certify gRPC service. It imports nothing from k8s.io, so the sidecar can use it; the Kubernetes side
// (TokenReview, Secrets, Events) lives in identity/kubeauth, the sidecar's rotating client in
// identity/workload.
package identity

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// DefaultTrustDomain is the trust domain when none is configured (DESIGN.md, Identity).
const DefaultTrustDomain = "cluster.local"

// Audience is the audience a ServiceAccount token must carry to be accepted by Certify.
const Audience = "identity.weft.io"

// ID is a workload's SPIFFE ID, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. The zero
// value is not a valid ID.
type ID struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// NewID validates the three parts and returns the ID.
func NewID(trustDomain, namespace, serviceAccount string) (ID, error) {
	id := ID{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}
	if err := id.Validate(); err != nil {
		return ID{}, err
	}
	return id, nil
}

// String is the URI form of the ID.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL is the ID as a *url.URL, the form x509 certificates carry in their URI SANs.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// Validate checks the trust domain (SPIFFE rules: lowercase letters, digits, '.', '-', '_'), the
// namespace (a DNS-1123 label) and the service account name (a DNS-1123 subdomain).
func (id ID) Validate() error {
	if err := ValidateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if !isDNS1123Label(id.Namespace) {
		return fmt.Errorf("namespace %q is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)", id.Namespace)
	}
	if !isDNS1123Subdomain(id.ServiceAccount) {
		return fmt.Errorf("service account %q is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253)", id.ServiceAccount)
	}
	return nil
}

// ParseID parses and validates spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func ParseID(s string) (ID, error) {
	u, err := url.Parse(s)
	if err != nil {
		return ID{}, fmt.Errorf("SPIFFE ID %q: %w", s, err)
	}
	return IDFromURL(u)
}

// IDFromURL is ParseID for a URL already parsed (a URI SAN of a certificate).
func IDFromURL(u *url.URL) (ID, error) {
	s := u.String()
	if u.Scheme != "spiffe" {
		return ID{}, fmt.Errorf("SPIFFE ID %q: scheme must be spiffe", s)
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.RawPath != "" {
		return ID{}, fmt.Errorf("SPIFFE ID %q: must not carry user info, port, query, fragment or escapes", s)
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" {
		return ID{}, fmt.Errorf("SPIFFE ID %q: path must be /ns/<namespace>/sa/<service-account>", s)
	}
	id := ID{TrustDomain: u.Host, Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return ID{}, fmt.Errorf("SPIFFE ID %q: %w", s, err)
	}
	return id, nil
}

// ValidateTrustDomain checks a trust domain name by the SPIFFE rules.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("trust domain is empty")
	}
	if len(td) > 255 || !trustDomainRE.MatchString(td) {
		return fmt.Errorf("trust domain %q may hold only lowercase letters, digits, '.', '-' and '_'", td)
	}
	return nil
}

var (
	trustDomainRE = regexp.MustCompile(`^[a-z0-9._-]+$`)
	dns1123Label  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

func isDNS1123Label(s string) bool { return len(s) <= 63 && dns1123Label.MatchString(s) }

func isDNS1123Subdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !isDNS1123Label(label) {
			return false
		}
	}
	return true
}

// ParseServiceAccountUser turns a Kubernetes user name system:serviceaccount:<ns>:<sa> into an ID of
// the trust domain.
func ParseServiceAccountUser(trustDomain, user string) (ID, error) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return ID{}, fmt.Errorf("user %q is not a service account (system:serviceaccount:<namespace>:<name>)", user)
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok {
		return ID{}, fmt.Errorf("user %q is not a service account (system:serviceaccount:<namespace>:<name>)", user)
	}
	return NewID(trustDomain, ns, sa)
}
