package rotation

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
)

// rootCALine is what a weft-proxy logs (level info) when it installs a new trust bundle from the control
// plane's SDS secret ROOTCA.
const rootCALine = "trust bundle updated from SDS ROOTCA"

// TestAnchorRotation: the trust anchor itself is replaced under steady traffic, with a bundle overlap,
// and no request fails. The CA directory starts with anchor A and an issuer under A (8 s leaves); then
//
//  1. ca.crt becomes A + B while the issuer is still A's: weft-control reloads it and pushes ROOTCA, both
//     proxies install it and renew at least once;
//  2. issuer.crt/issuer.key become an issuer under B: after two renewals of each proxy every workload
//     certificate chains to B, and server-0 presents one on the wire;
//  3. ca.crt becomes B alone: both proxies install it, renew once more, and traffic goes on.
//
// Each file is written as an operator (or kubelet) would: a temporary file renamed over the old one.
// At the end server-0's certificate verifies against B and not against A.
func TestAnchorRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("anchor rotation under traffic runs for about 45 s; skipped with -short")
	}
	t.Parallel() // each on its own loopback block
	const (
		leaf = 8 * time.Second
		rate = 20 // requests per second
		// A renewal comes at 70% ±10% of the remaining life, about every 5–6 s; generous deadlines for
		// two of them on a loaded machine.
		phase = 40 * time.Second
	)
	m := startMesh(t, leaf)
	caDir := filepath.Join(m.dir, "ca")
	bundleA, err := os.ReadFile(filepath.Join(caDir, identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	anchorsA, err := identity.ParseCertificatesPEM(bundleA)
	if err != nil || len(anchorsA) != 1 {
		t.Fatalf("the bootstrapped bundle: %d anchors, %v; want one", len(anchorsA), err)
	}
	anchorA := anchorsA[0]
	now := time.Now()
	anchorB, err := identity.NewAnchor(trustDomain, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issuerB, err := identity.NewIssuer(trustDomain, anchorB, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	poolA, poolB, poolAB := x509.NewCertPool(), x509.NewCertPool(), x509.NewCertPool()
	poolA.AddCert(anchorA)
	poolB.AddCert(anchorB.Cert)
	poolAB.AddCert(anchorA)
	poolAB.AddCert(anchorB.Cert)

	first, err := m.serverCert()
	if err != nil {
		t.Fatalf("server-0's first certificate: %v", err)
	}
	if first.CheckSignatureFrom(issuerB.Cert) == nil {
		t.Fatal("server-0's first certificate is signed by the new issuer before the test installed it")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := m.startTraffic(ctx, rate)
	stopTraffic := func() { cancel(); <-tr.done }
	defer stopTraffic()
	start := time.Now()

	// counts is how many certificates each proxy has logged as issued, and how many ROOTCA bundles it
	// has installed.
	type counts struct{ issued, rootCA [2]int }
	count := func() counts {
		var c counts
		for i, p := range []*proc{m.client, m.server} {
			c.issued[i], c.rootCA[i] = p.count(issuedLine), p.count(rootCALine)
		}
		return c
	}
	// waitFor polls until both proxies have installed a new ROOTCA and renewed at least renewals times
	// since before, and extra (if any) holds; server-0 must keep presenting a certificate valid for the
	// test's current roots all along.
	waitFor := func(what string, before counts, renewals int, extra func(*x509.Certificate) error) {
		t.Helper()
		m.poll(what, phase, func() error {
			now := count()
			for i, name := range []string{"client-0", "server-0"} {
				if now.rootCA[i] <= before.rootCA[i] {
					return fmt.Errorf("the weft-proxy of %s has not installed a new ROOTCA", name)
				}
				if got := now.issued[i] - before.issued[i]; got < renewals {
					return fmt.Errorf("the weft-proxy of %s renewed %d times, want %d", name, got, renewals)
				}
			}
			c, err := m.serverCert()
			if err != nil {
				return err
			}
			if extra != nil {
				return extra(c)
			}
			return nil
		})
	}
	progress := func(phase string) {
		t.Helper()
		t.Logf("%v: %s; %d requests, %d failed", time.Since(start).Round(time.Millisecond), phase, tr.sent.Load(), tr.failed.Load())
	}

	// Phase 1: the bundle overlap, A + B, with the issuer still A's.
	before := count()
	overlap := append(append([]byte{}, bundleA...), anchorB.CertPEM()...)
	writeAtomic(t, filepath.Join(caDir, identity.BundleFile), overlap, 0o644)
	m.roots = poolAB
	waitFor("both proxies to take the bundle A + B and renew", before, 1, func(c *x509.Certificate) error {
		if c.CheckSignatureFrom(issuerB.Cert) == nil {
			return errors.New("server-0 presents a certificate of issuer B before the switch")
		}
		return nil
	})
	progress("bundle A + B in place")

	// Phase 2: the issuer under B (the key first, as identity.RotateIssuer writes it).
	before = count()
	keyB, err := issuerB.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(caDir, identity.IssuerKeyFile), keyB, 0o600)
	writeAtomic(t, filepath.Join(caDir, identity.IssuerCertFile), issuerB.CertPEM(), 0o644)
	// The issuer changed, so weft-control pushes ROOTCA again (the same bundle): the proxies only log a
	// changed one, so wait on renewals alone here.
	m.poll("both proxies to renew twice under issuer B", phase, func() error {
		now := count()
		for i, name := range []string{"client-0", "server-0"} {
			if got := now.issued[i] - before.issued[i]; got < 2 {
				return fmt.Errorf("the weft-proxy of %s renewed %d times since the issuer switch, want 2", name, got)
			}
		}
		c, err := m.serverCert()
		if err != nil {
			return err
		}
		if err := c.CheckSignatureFrom(issuerB.Cert); err != nil {
			return fmt.Errorf("server-0 presents certificate %s from %q, not issuer B", serial(c), c.Issuer.CommonName)
		}
		return nil
	})
	progress("issuer B in place, both proxies renewed twice")

	// Phase 3: A leaves the bundle.
	before = count()
	writeAtomic(t, filepath.Join(caDir, identity.BundleFile), anchorB.CertPEM(), 0o644)
	m.roots = poolB
	waitFor("both proxies to take the bundle B alone and renew", before, 1, func(c *x509.Certificate) error {
		return c.CheckSignatureFrom(issuerB.Cert)
	})
	// A few more seconds of traffic on the new anchor alone.
	settled := time.Now().Add(3 * time.Second)
	m.poll("a few more seconds of traffic", 10*time.Second, func() error {
		if time.Now().Before(settled) {
			return errors.New("not yet")
		}
		return nil
	})
	stopTraffic()
	progress("bundle B alone")

	// server-0's certificate on the wire now chains to B only.
	m.roots = poolA
	if c, err := m.serverCert(); err == nil {
		t.Errorf("server-0's certificate %s (issuer %q) verifies against anchor A, which left the bundle", serial(c), c.Issuer.CommonName)
	} else if ua := (x509.UnknownAuthorityError{}); !errors.As(err, &ua) {
		t.Errorf("server-0's certificate against anchor A alone: %v, want an unknown authority", err)
	}
	m.roots = poolB
	last, err := m.serverCert()
	if err != nil {
		t.Errorf("server-0's certificate against anchor B alone: %v", err)
	} else if err := last.CheckSignatureFrom(issuerB.Cert); err != nil {
		t.Errorf("server-0's final certificate %s is not signed by issuer B: %v", serial(last), err)
	}

	sent, failed := tr.sent.Load(), tr.failed.Load()
	end := count()
	t.Logf("%v of traffic: %d requests, %d failed; certificates issued: client-0 %d, server-0 %d; ROOTCA installed: client-0 %d, server-0 %d",
		time.Since(start).Round(time.Millisecond), sent, failed, end.issued[0], end.issued[1], end.rootCA[0], end.rootCA[1])
	if failed != 0 {
		t.Errorf("%d of %d requests failed across the anchor rotation, want none; the first:\n%s", failed, sent, tr.errors())
	}
	if least := int64(time.Since(start).Seconds()) * rate / 4; sent < least {
		t.Errorf("only %d requests sent, want at least %d", sent, least)
	}
}

// writeAtomic replaces path by data as identity's own writes do: a temporary file in the same directory,
// renamed over it, so that a reader (weft-control's WatchDir, a proxy) never sees half a file.
func writeAtomic(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		t.Fatal(err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%s after the rename: %v", path, err)
	}
}
