package check

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/identity"
)

const day = 24 * time.Hour

// ca makes CA material: an anchor made at anchorAt living anchorLife, an issuer made at issuerAt
// living issuerLife (capped at the anchor's end).
func ca(t *testing.T, td string, anchorAt time.Time, anchorLife time.Duration, issuerAt time.Time, issuerLife time.Duration) (identity.Material, identity.KeyPair) {
	t.Helper()
	anchor, err := identity.NewAnchor(td, anchorAt, anchorLife)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := identity.NewIssuer(td, anchor, issuerAt, issuerLife)
	if err != nil {
		t.Fatal(err)
	}
	key, err := issuer.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	return identity.Material{Bundle: anchor.CertPEM(), IssuerCert: issuer.CertPEM(), IssuerKey: key}, anchor
}

func TestCAChecks(t *testing.T) {
	now := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	good, _ := ca(t, "cluster.local", now.Add(-day), 10*365*day, now.Add(-day), 365*day)
	other, _ := ca(t, "cluster.local", now.Add(-day), 10*365*day, now.Add(-day), 365*day)
	expiring, _ := ca(t, "cluster.local", now.Add(-day), 10*365*day, now.Add(-300*day), 320*day) // 20 days left
	expired, _ := ca(t, "cluster.local", now.Add(-2*365*day), 10*365*day, now.Add(-400*day), 365*day)
	anchorSoon, _ := ca(t, "cluster.local", now.Add(-day), 31*day, now.Add(-day), 365*day) // both end in 30 days
	anchorGone, _ := ca(t, "cluster.local", now.Add(-100*day), 50*day, now.Add(-100*day), 365*day)

	wrongKey := good
	wrongKey.IssuerKey = other.IssuerKey
	wrongAnchor := good
	wrongAnchor.Bundle = other.Bundle
	garbage := good
	garbage.IssuerCert = []byte("not a certificate")

	// Each case: the status of chain, anchors-valid, anchors-60d, issuer-valid, issuer-60d, and a word
	// the failing or warning ones' messages must hold.
	for _, tc := range []struct {
		name string
		m    identity.Material
		td   string
		want []Status
		says string
	}{
		{"good", good, "cluster.local", []Status{Pass, Pass, Pass, Pass, Pass}, ""},
		{"good, trust domain from the issuer", good, "", []Status{Pass, Pass, Pass, Pass, Pass}, ""},
		{"issuer expires in 20 days", expiring, "cluster.local", []Status{Pass, Pass, Pass, Pass, Warn}, "expires in 20 days"},
		{"issuer expired", expired, "cluster.local", []Status{Pass, Pass, Pass, Fail, Pass}, "expired on"},
		{"anchor expires in 30 days", anchorSoon, "cluster.local", []Status{Pass, Pass, Warn, Pass, Warn}, "expires in 30 days"},
		{"anchor expired", anchorGone, "cluster.local", []Status{Pass, Fail, Pass, Fail, Pass}, "expired on"},
		{"issuer key of another issuer", wrongKey, "cluster.local", []Status{Fail, Pass, Pass, Pass, Pass}, "is not the key of"},
		{"issuer of another anchor", wrongAnchor, "cluster.local", []Status{Fail, Pass, Pass, Pass, Pass}, "does not chain"},
		{"another trust domain", good, "example.org", []Status{Fail, Pass, Pass, Pass, Pass}, "trust domain"},
		{"issuer not PEM", garbage, "cluster.local", []Status{Fail, Pass, Pass, Fail, Fail}, "does not hold a certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []Status
			for _, f := range []func(identity.Material, string, time.Time) Result{checkChain, checkAnchorsValid, checkAnchors60d, checkIssuerValid, checkIssuer60d} {
				r := f(tc.m, tc.td, now)
				got = append(got, r.Status)
				if r.Status != Pass {
					if !strings.Contains(r.Message, tc.says) {
						t.Errorf("message %q does not say %q", r.Message, tc.says)
					}
					if r.Hint == "" {
						t.Errorf("%s result %q has no hint", r.Status, r.Message)
					}
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("chain, anchors-valid, anchors-60d, issuer-valid, issuer-60d (-want +got):\n%s", diff)
			}
		})
	}
}
