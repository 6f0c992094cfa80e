package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var webID = ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}

func mustKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCheckCSR(t *testing.T) {
	p256 := mustKey(t, elliptic.P256())
	p384 := mustKey(t, elliptic.P384())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other := ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "other"}
	good := mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 0xff

	tests := []struct {
		name    string
		der     []byte
		wantErr string
	}{
		{name: "good", der: good},
		{name: "empty", der: nil, wantErr: "is empty"},
		{name: "garbage", der: []byte("not a csr"), wantErr: "not a DER PKCS#10"},
		{name: "bad signature", der: tampered, wantErr: "signature"},
		{name: "RSA key", der: mustCSR(t, rsaKey, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), wantErr: "CSR key is RSA"},
		{name: "P-384 key", der: mustCSR(t, p384, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), wantErr: "ECDSA P-384"},
		{name: "DNS SAN", der: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, DNSNames: []string{"web.default.svc"}}), wantErr: "DNS names"},
		{name: "IP SAN", der: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), wantErr: "IP addresses"},
		{name: "email SAN", der: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, EmailAddresses: []string{"a@b.c"}}), wantErr: "emails"},
		{name: "two URIs", der: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL(), other.URL()}}), wantErr: "2 URI SANs"},
		{name: "no URI", der: mustCSR(t, p256, &x509.CertificateRequest{}), wantErr: "0 URI SANs"},
		{name: "not SPIFFE", der: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "https", Host: "web"}}}), wantErr: "scheme must be spiffe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, id, err := CheckCSR(tt.der)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("CheckCSR error = %v, want ErrInvalidRequest containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id != webID || !csr.PublicKey.(*ecdsa.PublicKey).Equal(p256.Public()) {
				t.Fatalf("CheckCSR = %v, key %v", id, csr.PublicKey)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	other := ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "other"}
	tests := []struct {
		name         string
		asked        string
		inCSR, token ID
		want         error
	}{
		{name: "all agree", asked: webID.String(), inCSR: webID, token: webID},
		{name: "empty identity", asked: "", inCSR: webID, token: webID, want: ErrInvalidRequest},
		{name: "identity not SPIFFE", asked: "web", inCSR: webID, token: webID, want: ErrInvalidRequest},
		{name: "identity differs from CSR", asked: other.String(), inCSR: webID, token: other, want: ErrInvalidRequest},
		{name: "other service account", asked: other.String(), inCSR: other, token: webID, want: ErrIdentityMismatch},
		{name: "other trust domain", asked: "spiffe://evil.org/ns/default/sa/web", inCSR: ID{TrustDomain: "evil.org", Namespace: "default", ServiceAccount: "web"}, token: webID, want: ErrIdentityMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Authorize(tt.asked, tt.inCSR, tt.token)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Authorize = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestLeafTemplate(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	type leafShape struct {
		NotBefore, NotAfter time.Time
		URIs                []string
		KeyUsage            x509.KeyUsage
		ExtKeyUsage         []x509.ExtKeyUsage
		IsCA, Basic         bool
		DNS                 []string
	}
	base := leafShape{
		NotBefore:   now.Add(-time.Minute),
		URIs:        []string{"spiffe://cluster.local/ns/default/sa/web"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		Basic:       true,
	}
	tests := []struct {
		name         string
		issuerExpiry time.Time
		wantNotAfter time.Time
	}{
		{name: "full lifetime", issuerExpiry: now.Add(365 * 24 * time.Hour), wantNotAfter: now.Add(24 * time.Hour)},
		{name: "capped by issuer", issuerExpiry: now.Add(3 * time.Hour), wantNotAfter: now.Add(3 * time.Hour)},
		{name: "issuer expiry unknown", wantNotAfter: now.Add(24 * time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := LeafTemplate(webID, LeafParams{Now: now, Lifetime: 24 * time.Hour, Skew: time.Minute, IssuerNotAfter: tt.issuerExpiry, Serial: big.NewInt(7)})
			got := leafShape{NotBefore: c.NotBefore, NotAfter: c.NotAfter, KeyUsage: c.KeyUsage, ExtKeyUsage: c.ExtKeyUsage, IsCA: c.IsCA, Basic: c.BasicConstraintsValid, DNS: c.DNSNames}
			for _, u := range c.URIs {
				got.URIs = append(got.URIs, u.String())
			}
			want := base
			want.NotAfter = tt.wantNotAfter
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("leaf template (-want +got):\n%s", diff)
			}
		})
	}
}
