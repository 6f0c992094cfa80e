package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// CheckCSR parses a DER PKCS#10 request and checks it is a workload's: a valid self-signature, an ECDSA
// P-256 key, no DNS, IP or email names, and exactly one URI SAN that is a valid SPIFFE ID, which it
// returns. Every failure wraps ErrInvalidRequest. It is a pure function.
func CheckCSR(der []byte) (*x509.CertificateRequest, ID, error) {
	if len(der) == 0 {
		return nil, ID{}, fmt.Errorf("%w: certificate_signing_request is empty", ErrInvalidRequest)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, ID{}, fmt.Errorf("%w: certificate_signing_request is not a DER PKCS#10 request: %v", ErrInvalidRequest, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, ID{}, fmt.Errorf("%w: CSR signature does not verify: %v", ErrInvalidRequest, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, ID{}, fmt.Errorf("%w: CSR key is %s; workload keys must be ECDSA P-256", ErrInvalidRequest, keyDescription(csr))
	}
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, ID{}, fmt.Errorf("%w: CSR holds DNS names %q, IP addresses %v or emails %q; a workload CSR may hold only its SPIFFE ID", ErrInvalidRequest, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if len(csr.URIs) != 1 {
		return nil, ID{}, fmt.Errorf("%w: CSR holds %d URI SANs; it must hold exactly one, the workload's SPIFFE ID", ErrInvalidRequest, len(csr.URIs))
	}
	id, err := IDFromURL(csr.URIs[0])
	if err != nil {
		return nil, ID{}, fmt.Errorf("%w: CSR URI SAN: %v", ErrInvalidRequest, err)
	}
	return csr, id, nil
}

func keyDescription(csr *x509.CertificateRequest) string {
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); ok {
		return "ECDSA " + pub.Curve.Params().Name
	}
	return csr.PublicKeyAlgorithm.String()
}

// Authorize decides whether a request may have the identity: the identity field of the request (asked),
// the CSR's SPIFFE ID (inCSR) and the identity proven by the token must all be the same. A request that
// contradicts itself is ErrInvalidRequest; one that asks for someone else's identity is
// ErrIdentityMismatch.
func Authorize(asked string, inCSR, token ID) error {
	if asked == "" {
		return fmt.Errorf("%w: identity is empty; set it to the SPIFFE ID in the CSR (%s)", ErrInvalidRequest, inCSR)
	}
	askedID, err := ParseID(asked)
	if err != nil {
		return fmt.Errorf("%w: identity: %v", ErrInvalidRequest, err)
	}
	if askedID != inCSR {
		return fmt.Errorf("%w: identity %s differs from the CSR's SAN %s", ErrInvalidRequest, askedID, inCSR)
	}
	if askedID != token {
		return fmt.Errorf("%w: asked for %s, the token proves %s", ErrIdentityMismatch, askedID, token)
	}
	return nil
}

// LeafParams are the inputs of LeafTemplate besides the identity.
type LeafParams struct {
	Now            time.Time
	Lifetime       time.Duration // wanted lifetime (DefaultLifetime)
	Skew           time.Duration // NotBefore is Now - Skew, for clocks behind ours
	IssuerNotAfter time.Time     // the leaf never outlives its issuer
	Serial         *big.Int
}

// LeafTemplate is the certificate a workload gets: the SPIFFE ID as the only (URI) SAN,
// digitalSignature, serverAuth + clientAuth, not a CA, NotBefore = Now - Skew and NotAfter =
// min(Now + Lifetime, IssuerNotAfter). It is a pure function.
func LeafTemplate(id ID, p LeafParams) *x509.Certificate {
	notAfter := p.Now.Add(p.Lifetime)
	if !p.IssuerNotAfter.IsZero() && p.IssuerNotAfter.Before(notAfter) {
		notAfter = p.IssuerNotAfter
	}
	return &x509.Certificate{
		SerialNumber:          p.Serial,
		NotBefore:             p.Now.Add(-p.Skew),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
}
