package identity

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"testing"
	"time"
)

// TestFastLeafMatchesCreateCertificate: the directly encoded leaf is, byte for byte, the TBSCertificate
// that x509.CreateCertificate makes from the same template, and its signature verifies.
func TestFastLeafMatchesCreateCertificate(t *testing.T) {
	ca, _ := newTestCA(t)
	iss := ca.Issuer()
	if !canSignFast(iss) {
		t.Fatal("a bootstrapped issuer must take the fast path")
	}
	key := mustKey(t, p256())
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		now      time.Time
		lifetime time.Duration
		id       ID
	}{
		{name: "now", now: time.Now(), lifetime: 24 * time.Hour, id: webID},
		{name: "generalized time", now: time.Date(2049, 12, 31, 23, 0, 0, 0, time.UTC), lifetime: 24 * time.Hour, id: webID},
		{name: "long service account", now: time.Now(), lifetime: time.Hour, id: ID{TrustDomain: "cluster.local", Namespace: "a-very-long-namespace-name-for-the-length-bytes", ServiceAccount: "x" + string(bytes.Repeat([]byte("y"), 200))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
			tmpl := LeafTemplate(tc.id, LeafParams{Now: tc.now, Lifetime: tc.lifetime, Skew: time.Minute, Serial: serial})
			fast, err := signLeafFast(iss, tmpl, spki)
			if err != nil {
				t.Fatal(err)
			}
			got, err := x509.ParseCertificate(fast)
			if err != nil {
				t.Fatal(err)
			}
			wantDER, err := x509.CreateCertificate(rand.Reader, tmpl, iss.Certificate(), key.Public(), iss.Key)
			if err != nil {
				t.Fatal(err)
			}
			want, err := x509.ParseCertificate(wantDER)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
				t.Fatalf("TBSCertificate differs from CreateCertificate's:\n got %x\nwant %x", got.RawTBSCertificate, want.RawTBSCertificate)
			}
			if err := got.CheckSignatureFrom(iss.Certificate()); err != nil {
				t.Fatalf("signature: %v", err)
			}
		})
	}
}
