package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"
)

// FuzzCheckCSR feeds arbitrary DER to the CSR checks, without the token and CA around them that
// FuzzCertify spends its time in. Whatever the bytes, CheckCSR does not panic and every refusal wraps
// ErrInvalidRequest; a CSR it accepts has a verifying self-signature, an ECDSA P-256 key, no DNS, IP
// or email names, and exactly one URI SAN, which is the returned ID spelled the same way (so the
// certificate issued for the ID names what the CSR asked for).
func FuzzCheckCSR(f *testing.F) {
	key := mustKey(f, elliptic.P256())
	f.Add(mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}))
	f.Add(mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL(), webID.URL()}}))
	f.Add(mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, DNSNames: []string{"web"}}))
	f.Add(mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/default/sa/web/x"}}}))
	f.Add(mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/default/sa/web", RawQuery: "a"}}}))
	f.Add(mustCSR(f, mustKey(f, elliptic.P384()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}))
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(mustCSR(f, edKey, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}))
	good := mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 1
	f.Add(tampered)
	f.Add(good[:len(good)/2])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, id, err := CheckCSR(der)
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("CheckCSR refused with %v, which does not wrap ErrInvalidRequest", err)
			}
			if csr != nil || id != (ID{}) {
				t.Fatalf("CheckCSR refused (%v) but returned %v %v", err, csr, id)
			}
			return
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature does not verify: %v", err)
		}
		if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
			t.Fatalf("accepted a %s key", keyDescription(csr))
		}
		if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 || len(csr.URIs) != 1 {
			t.Fatalf("accepted a CSR with names %v %v %v %v", csr.DNSNames, csr.IPAddresses, csr.EmailAddresses, csr.URIs)
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("accepted invalid ID %+v: %v", id, err)
		}
		if got := csr.URIs[0].String(); got != id.String() || id.URL().String() != got {
			t.Fatalf("CSR asks for %q, CheckCSR returned %q", got, id)
		}
	})
}
