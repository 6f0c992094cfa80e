// Package identity is Weft's certificate authority and the pure pieces around it: SPIFFE IDs, the checks
// of a certificate signing request, leaf templates, the CA material (trust bundle and issuer) and the
// Certify gRPC service. It imports nothing from k8s.io, so the sidecar can use it; the Kubernetes side
// (TokenReview, Secrets, Events) lives in identity/kubeauth, the sidecar's rotating client in
// identity/workload.
package identity

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"

	"github.com/weftmesh/weft/identity/spiffeid"
)

// DefaultTrustDomain is the trust domain when none is configured (DESIGN.md, Identity).
const DefaultTrustDomain = spiffeid.DefaultTrustDomain

// Audience is the audience a ServiceAccount token must carry to be accepted by Certify.
const Audience = spiffeid.Audience

// ID is a workload's SPIFFE ID, spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>. The zero
// value is not a valid ID. It is spiffeid.ID (the sidecar's grpc-free leaf package).
type ID = spiffeid.ID

// NewID validates the three parts and returns the ID.
func NewID(trustDomain, namespace, serviceAccount string) (ID, error) {
	return spiffeid.NewID(trustDomain, namespace, serviceAccount)
}

// ParseID parses and validates spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func ParseID(s string) (ID, error) { return spiffeid.ParseID(s) }

// IDFromURL is ParseID for a URL already parsed (a URI SAN of a certificate).
func IDFromURL(u *url.URL) (ID, error) { return spiffeid.IDFromURL(u) }

// ValidateTrustDomain checks a trust domain name by the SPIFFE rules.
func ValidateTrustDomain(td string) error { return spiffeid.ValidateTrustDomain(td) }

// IDFromCertificate returns the SPIFFE ID of a workload certificate: its only URI SAN.
func IDFromCertificate(cert *x509.Certificate) (ID, error) { return spiffeid.IDFromCertificate(cert) }

// VerifyPeer checks a workload certificate chain (leaf first, DER) against the trust bundle and
// returns its SPIFFE ID. It is what a proxy does with a peer's certificate.
func VerifyPeer(rawCerts [][]byte, roots *x509.CertPool, usage x509.ExtKeyUsage) (ID, error) {
	return spiffeid.VerifyPeer(rawCerts, roots, usage)
}

// ParseCertificatesPEM parses every CERTIFICATE block of PEM data.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	return spiffeid.ParseCertificatesPEM(data)
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
