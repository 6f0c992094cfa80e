// Package spiffeid holds the SPIFFE pieces of Weft identity that a sidecar needs: the workload ID
// (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), its parsing and validation, the ID of a
// certificate and the check of a peer's chain against a trust bundle. It is a leaf: it imports only the
// standard library, so weft-proxy gets these without the CA and its gRPC service (package identity,
// which re-exports everything here under the same names).
package spiffeid

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
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

// IDFromCertificate returns the SPIFFE ID of a workload certificate: its only URI SAN.
func IDFromCertificate(cert *x509.Certificate) (ID, error) {
	if len(cert.URIs) != 1 {
		return ID{}, fmt.Errorf("certificate holds %d URI SANs, want exactly one SPIFFE ID", len(cert.URIs))
	}
	return IDFromURL(cert.URIs[0])
}

// VerifyPeer checks a workload certificate chain (leaf first, DER) against the trust bundle and
// returns its SPIFFE ID. It is what a proxy does with a peer's certificate.
func VerifyPeer(rawCerts [][]byte, roots *x509.CertPool, usage x509.ExtKeyUsage) (ID, error) {
	if len(rawCerts) == 0 {
		return ID{}, errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, der := range rawCerts {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return ID{}, fmt.Errorf("parsing the peer certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return ID{}, fmt.Errorf("peer certificate: %w", err)
	}
	return IDFromCertificate(certs[0])
}

// ParseCertificatesPEM parses every CERTIFICATE block of PEM data.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(data)) != 0 && len(certs) == 0 {
		return nil, errors.New("not PEM")
	}
	return certs, nil
}
