package check

import (
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/weftmesh/weft/identity"
)

// The CA checks are functions of the Secret's material, the trust domain (of weft-config; empty: the
// issuer's own) and the time: table-tested with certificates of chosen lifetimes.

const (
	rotateIssuerHint = "make a new issuer under the same anchor (weft identity bootstrap --out DIR --rotate-issuer), then re-apply: weft install --identity-dir DIR | kubectl apply -f -"
	rotateAnchorHint = "add a new trust anchor to the bundle, roll the proxies, then replace the old one (weft identity bootstrap makes a new CA)"
)

func checkChain(m identity.Material, trustDomain string, now time.Time) Result {
	chain, err := identity.ParseCertificatesPEM(m.IssuerCert)
	if err != nil || len(chain) == 0 {
		return Failed(fmt.Sprintf("%s does not hold a certificate", identity.IssuerCertFile), rotateIssuerHint)
	}
	if trustDomain == "" {
		for _, u := range chain[0].URIs {
			if u.Scheme == "spiffe" {
				trustDomain = u.Host
			}
		}
	}
	// At a moment the issuer is valid: expiry is reported by its own checks.
	if _, err := identity.ParseMaterial(m, trustDomain, validMoment(chain[0], now)); err != nil {
		return Failed(err.Error(), rotateIssuerHint)
	}
	return Passed()
}

// validity says whether certs are all valid at now; the message names those that are not.
func validity(what string, certs []*x509.Certificate, now time.Time) Result {
	var bad []string
	expired := false
	for _, c := range certs {
		switch {
		case now.After(c.NotAfter):
			expired = true
			bad = append(bad, fmt.Sprintf("%s %q expired on %s", what, c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339)))
		case now.Before(c.NotBefore):
			bad = append(bad, fmt.Sprintf("%s %q is not valid before %s (is this machine's clock right?)", what, c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339)))
		}
	}
	if len(bad) == 0 {
		return Passed()
	}
	hint := rotateIssuerHint
	if what == "trust anchor" {
		hint = rotateAnchorHint
	}
	if expired {
		bad = append(bad, "workloads can get no new certificate, and mTLS fails as their current ones expire")
	}
	return Failed(strings.Join(bad, "\n"), hint)
}

// soon warns when a cert valid now has less than ExpiryWarning left.
func soon(what string, certs []*x509.Certificate, now time.Time) Result {
	var bad []string
	for _, c := range certs {
		left := c.NotAfter.Sub(now)
		if left >= 0 && left < ExpiryWarning {
			bad = append(bad, fmt.Sprintf("%s %q expires in %s (%s)", what, c.Subject.CommonName, days(left), c.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	if len(bad) == 0 {
		return Passed()
	}
	hint := rotateIssuerHint
	if what == "trust anchor" {
		hint = rotateAnchorHint
	}
	return Warned(strings.Join(bad, "\n"), hint)
}

func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func anchorsOf(m identity.Material) ([]*x509.Certificate, Result) {
	certs, err := identity.ParseCertificatesPEM(m.Bundle)
	if err != nil || len(certs) == 0 {
		return nil, Failed(fmt.Sprintf("%s does not hold a certificate", identity.BundleFile), rotateAnchorHint)
	}
	return certs, Passed()
}

func issuerOf(m identity.Material) ([]*x509.Certificate, Result) {
	certs, err := identity.ParseCertificatesPEM(m.IssuerCert)
	if err != nil || len(certs) == 0 {
		return nil, Failed(fmt.Sprintf("%s does not hold a certificate", identity.IssuerCertFile), rotateIssuerHint)
	}
	return certs[:1], Passed()
}

func checkAnchorsValid(m identity.Material, _ string, now time.Time) Result {
	certs, r := anchorsOf(m)
	if certs == nil {
		return r
	}
	return validity("trust anchor", certs, now)
}

func checkAnchors60d(m identity.Material, _ string, now time.Time) Result {
	certs, r := anchorsOf(m)
	if certs == nil {
		return r
	}
	return soon("trust anchor", certs, now)
}

func checkIssuerValid(m identity.Material, _ string, now time.Time) Result {
	certs, r := issuerOf(m)
	if certs == nil {
		return r
	}
	return validity("issuer", certs, now)
}

func checkIssuer60d(m identity.Material, _ string, now time.Time) Result {
	certs, r := issuerOf(m)
	if certs == nil {
		return r
	}
	return soon("issuer", certs, now)
}
