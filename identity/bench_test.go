package identity

import (
	"context"
	"crypto/x509"
	"net/url"
	"testing"

	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

// BenchmarkCertify is the in-process issuance path: token, CSR checks, signing.
func BenchmarkCertify(b *testing.B) {
	ca, _ := newTestCA(b)
	srv := NewServer(ca, writeTokens(b))
	csr := mustCSR(b, mustKey(b, p256()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	req := &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: csr}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := srv.Certify(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
