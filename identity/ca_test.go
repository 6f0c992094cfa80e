package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTestCA bootstraps a CA directory and loads it.
func newTestCA(t testing.TB, opts ...Option) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	if err := Bootstrap(dir, BootstrapOptions{TrustDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA("cluster.local", opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := LoadDirInto(ca, dir); err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

func verifyLeaf(t testing.TB, leaf *Leaf, roots *x509.CertPool, usage x509.ExtKeyUsage) {
	t.Helper()
	inter := x509.NewCertPool()
	for _, der := range leaf.Intermediates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Certificate.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Fatalf("leaf does not verify against the trust bundle for %v: %v", usage, err)
	}
}

func TestBootstrapAndSign(t *testing.T) {
	ca, dir := newTestCA(t)
	for name, mode := range map[string]os.FileMode{BundleFile: 0o644, AnchorKeyFile: 0o600, IssuerCertFile: 0o644, IssuerKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	iss := ca.Issuer()
	anchor, issuer := iss.Anchors[0], iss.Certificate()
	now := time.Now()
	if d := anchor.NotAfter.Sub(now); d < 9*365*24*time.Hour || !anchor.IsCA || anchor.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("anchor: lifetime %v, CA %v, usage %v", d, anchor.IsCA, anchor.KeyUsage)
	}
	if d := issuer.NotAfter.Sub(now); d < 364*24*time.Hour || d > 366*24*time.Hour || !issuer.IsCA || !issuer.MaxPathLenZero || issuer.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("issuer: lifetime %v, CA %v, pathlen0 %v, usage %v", d, issuer.IsCA, issuer.MaxPathLenZero, issuer.KeyUsage)
	}

	key := mustKey(t, p256())
	leaf, err := ca.Sign(key.Public(), webID)
	if err != nil {
		t.Fatal(err)
	}
	verifyLeaf(t, leaf, ca.TrustBundle(), x509.ExtKeyUsageServerAuth)
	verifyLeaf(t, leaf, ca.TrustBundle(), x509.ExtKeyUsageClientAuth)
	if got, err := IDFromCertificate(leaf.Certificate); err != nil || got != webID {
		t.Errorf("leaf identity %v, %v", got, err)
	}
	if d := leaf.Certificate.NotAfter.Sub(now); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("leaf lifetime %v, want about 24h", d)
	}

	// A second bootstrap into the same directory must not destroy the CA.
	err = Bootstrap(dir, BootstrapOptions{})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second bootstrap: %v, want an 'already exists' error", err)
	}
}

func TestNameConstraintRejectsForeignTrustDomain(t *testing.T) {
	ca, _ := newTestCA(t)
	leaf, err := ca.Sign(mustKey(t, p256()).Public(), ID{TrustDomain: "evil.org", Namespace: "default", ServiceAccount: "web"})
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ca.Issuer().Certificate())
	if _, err := leaf.Certificate.Verify(x509.VerifyOptions{Roots: ca.TrustBundle(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Fatal("a leaf of another trust domain verified; the issuer's URI name constraint is missing")
	}
}

func TestSignWithoutIssuer(t *testing.T) {
	ca, err := NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Sign(mustKey(t, p256()).Public(), webID); !errors.Is(err, ErrNoIssuer) {
		t.Fatalf("Sign without issuer: %v, want ErrNoIssuer", err)
	}
	// An issuer that expired since it was loaded is no issuer either.
	clock := time.Now()
	ca2, _ := newTestCA(t, WithClock(func() time.Time { return clock }))
	clock = clock.Add(400 * 24 * time.Hour)
	if _, err := ca2.Sign(mustKey(t, p256()).Public(), webID); !errors.Is(err, ErrNoIssuer) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("Sign with expired issuer: %v, want ErrNoIssuer (expired)", err)
	}
}

func TestLeafCappedByIssuer(t *testing.T) {
	dir := t.TempDir()
	if err := Bootstrap(dir, BootstrapOptions{IssuerLifetime: 2 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	ca, err := NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if err := LoadDirInto(ca, dir); err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Sign(mustKey(t, p256()).Public(), webID)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.Certificate.NotAfter.Equal(ca.Issuer().Certificate().NotAfter) {
		t.Fatalf("leaf NotAfter %v, want the issuer's %v", leaf.Certificate.NotAfter, ca.Issuer().Certificate().NotAfter)
	}
}

func TestParseMaterialRejects(t *testing.T) {
	a := t.TempDir()
	b := t.TempDir()
	for _, d := range []string{a, b} {
		if err := Bootstrap(d, BootstrapOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ma, err := LoadDir(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := LoadDir(b)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name    string
		m       Material
		td      string
		now     time.Time
		wantErr string
	}{
		{name: "issuer of another anchor", m: Material{Bundle: ma.Bundle, IssuerCert: mb.IssuerCert, IssuerKey: mb.IssuerKey}, td: "cluster.local", now: now, wantErr: "does not chain"},
		{name: "key of another issuer", m: Material{Bundle: ma.Bundle, IssuerCert: ma.IssuerCert, IssuerKey: mb.IssuerKey}, td: "cluster.local", now: now, wantErr: "is not the key of"},
		{name: "empty bundle", m: Material{IssuerCert: ma.IssuerCert, IssuerKey: ma.IssuerKey}, td: "cluster.local", now: now, wantErr: "holds no certificate"},
		{name: "garbage bundle", m: Material{Bundle: []byte("junk"), IssuerCert: ma.IssuerCert, IssuerKey: ma.IssuerKey}, td: "cluster.local", now: now, wantErr: "not PEM"},
		{name: "no key", m: Material{Bundle: ma.Bundle, IssuerCert: ma.IssuerCert}, td: "cluster.local", now: now, wantErr: "no PEM private key"},
		{name: "expired issuer", m: ma, td: "cluster.local", now: now.Add(2 * 365 * 24 * time.Hour), wantErr: "not now"},
		{name: "other trust domain", m: ma, td: "example.org", now: now, wantErr: "trust domain \"cluster.local\""},
		{name: "good, two anchors", m: Material{Bundle: append(append([]byte(nil), mb.Bundle...), ma.Bundle...), IssuerCert: ma.IssuerCert, IssuerKey: ma.IssuerKey}, td: "cluster.local", now: now},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss, err := ParseMaterial(tt.m, tt.td, tt.now)
			if tt.wantErr == "" {
				if err != nil || len(iss.Anchors) != 2 {
					t.Fatalf("ParseMaterial: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseMaterial error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestIssuerRotationWithoutRestart: a new issuer written into the watched directory is used for new
// leaves, and leaves of the old issuer still verify against the unchanged bundle.
func TestIssuerRotationWithoutRestart(t *testing.T) {
	ca, dir := newTestCA(t)
	old := ca.Issuer().Certificate()
	changed := ca.Changed()
	oldLeaf, err := ca.Sign(mustKey(t, p256()).Public(), webID)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- WatchDir(ctx, ca, dir, time.Hour, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// Garbage first: it is rejected and the old issuer stays.
	if err := os.WriteFile(filepath.Join(dir, IssuerCertFile), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := RotateIssuer(dir, BootstrapOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for ca.Issuer().Certificate().Equal(old) {
		if time.Now().After(deadline) {
			t.Fatal("the CA did not pick up the new issuer within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed() was not closed by the new issuer")
	}
	newLeaf, err := ca.Sign(mustKey(t, p256()).Public(), webID)
	if err != nil {
		t.Fatal(err)
	}
	if newLeaf.Certificate.CheckSignatureFrom(ca.Issuer().Certificate()) != nil {
		t.Fatal("new leaf not signed by the new issuer")
	}
	verifyLeaf(t, newLeaf, ca.TrustBundle(), x509.ExtKeyUsageClientAuth)
	verifyLeaf(t, oldLeaf, ca.TrustBundle(), x509.ExtKeyUsageClientAuth)
}
