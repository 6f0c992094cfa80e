package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

const (
	// DefaultAnchorLifetime is a new trust anchor's lifetime.
	DefaultAnchorLifetime = 10 * 365 * 24 * time.Hour
	// DefaultIssuerLifetime is a new issuer's lifetime.
	DefaultIssuerLifetime = 365 * 24 * time.Hour
)

func p256() elliptic.Curve { return elliptic.P256() }

// KeyPair is a certificate and its key.
type KeyPair struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CertPEM is the certificate in PEM.
func (kp KeyPair) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.Cert.Raw})
}

// KeyPEM is the key in PEM (PKCS#8).
func (kp KeyPair) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(kp.Key)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewAnchor makes a self-signed trust anchor (root CA) for the trust domain: ECDSA P-256, keyCertSign
// and cRLSign, path length at most one (anchor → issuer → leaf), the trust domain's SPIFFE ID as URI SAN.
func NewAnchor(trustDomain string, now time.Time, lifetime time.Duration) (KeyPair, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return KeyPair{}, err
	}
	tmpl := caTemplate(trustDomain, "Weft trust anchor", now, now.Add(lifetime))
	tmpl.MaxPathLen = 1
	return makeCA(tmpl, nil)
}

// NewIssuer makes an issuer (intermediate CA) signed by the anchor: ECDSA P-256, keyCertSign and
// cRLSign, path length zero (it signs only leaves), URI name constraint to the trust domain, NotAfter
// capped at the anchor's.
func NewIssuer(trustDomain string, anchor KeyPair, now time.Time, lifetime time.Duration) (KeyPair, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return KeyPair{}, err
	}
	notAfter := now.Add(lifetime)
	if anchor.Cert.NotAfter.Before(notAfter) {
		notAfter = anchor.Cert.NotAfter
	}
	tmpl := caTemplate(trustDomain, "Weft issuer", now, notAfter)
	tmpl.MaxPathLen = 0
	tmpl.MaxPathLenZero = true
	tmpl.PermittedURIDomains = []string{trustDomain}
	return makeCA(tmpl, &anchor)
}

func caTemplate(trustDomain, name string, now, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"Weft"}, CommonName: name + " " + trustDomain + " " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             now.Add(-DefaultSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
}

func makeCA(tmpl *x509.Certificate, parent *KeyPair) (KeyPair, error) {
	key, err := ecdsa.GenerateKey(p256(), rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("making a key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return KeyPair{}, err
	}
	tmpl.SerialNumber = serial
	parentCert, parentKey := tmpl, key
	if parent != nil {
		parentCert, parentKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		return KeyPair{}, fmt.Errorf("signing %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{Cert: cert, Key: key}, nil
}

// BootstrapOptions configure Bootstrap and RotateIssuer.
type BootstrapOptions struct {
	TrustDomain    string
	AnchorLifetime time.Duration // DefaultAnchorLifetime when zero
	IssuerLifetime time.Duration // DefaultIssuerLifetime when zero
	Now            time.Time     // time.Now() when zero
	Force          bool          // overwrite existing files
}

func (o *BootstrapOptions) defaults() {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.AnchorLifetime == 0 {
		o.AnchorLifetime = DefaultAnchorLifetime
	}
	if o.IssuerLifetime == 0 {
		o.IssuerLifetime = DefaultIssuerLifetime
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
}

// Bootstrap creates a new CA in dir: ca.crt (the anchor), ca.key (its key), issuer.crt and issuer.key.
// It refuses to overwrite an existing CA unless Force is set.
func Bootstrap(dir string, o BootstrapOptions) error {
	o.defaults()
	if !o.Force {
		for _, name := range []string{BundleFile, AnchorKeyFile, IssuerCertFile, IssuerKeyFile} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return fmt.Errorf("%s already exists; use --rotate-issuer for a new issuer under the same anchor, or --force to replace the whole CA (every workload then needs new certificates)", filepath.Join(dir, name))
			}
		}
	}
	anchor, err := NewAnchor(o.TrustDomain, o.Now, o.AnchorLifetime)
	if err != nil {
		return err
	}
	issuer, err := NewIssuer(o.TrustDomain, anchor, o.Now, o.IssuerLifetime)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { // #nosec G301 -- ca.crt is for everyone to read; the keys in the folder are written 0600
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	anchorKey, err := anchor.KeyPEM()
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, BundleFile), anchor.CertPEM(), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, AnchorKeyFile), anchorKey, 0o600); err != nil {
		return err
	}
	return writeIssuer(dir, issuer)
}

// RotateIssuer replaces the issuer of the CA in dir by a new one signed by the anchor whose key is
// ca.key. The trust bundle is unchanged, so workloads keep trusting both old and new leaves; a running
// weft-control picks the new issuer up without a restart. An empty TrustDomain means the anchor's.
func RotateIssuer(dir string, o BootstrapOptions) error {
	td := o.TrustDomain
	o.defaults()
	bundlePEM, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		return fmt.Errorf("reading the trust bundle: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, AnchorKeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is missing: the anchor's key is needed to sign a new issuer", filepath.Join(dir, AnchorKeyFile))
	} else if err != nil {
		return err
	}
	anchors, err := ParseCertificatesPEM(bundlePEM)
	if err != nil {
		return fmt.Errorf("%s: %w", BundleFile, err)
	}
	signer, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", AnchorKeyFile, err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return fmt.Errorf("%s: anchor key must be ECDSA", AnchorKeyFile)
	}
	for _, a := range anchors {
		if publicKeysEqual(key.Public(), a.PublicKey) {
			for _, u := range a.URIs {
				if u.Scheme != "spiffe" {
					continue
				}
				if td != "" && td != u.Host {
					return fmt.Errorf("the anchor belongs to trust domain %q, not %q", u.Host, td)
				}
				o.TrustDomain = u.Host
			}
			issuer, err := NewIssuer(o.TrustDomain, KeyPair{Cert: a, Key: key}, o.Now, o.IssuerLifetime)
			if err != nil {
				return err
			}
			return writeIssuer(dir, issuer)
		}
	}
	return fmt.Errorf("%s is the key of no anchor in %s", AnchorKeyFile, BundleFile)
}

func writeIssuer(dir string, issuer KeyPair) error {
	key, err := issuer.KeyPEM()
	if err != nil {
		return err
	}
	// The key first: a reader that sees the new key with the old certificate rejects the pair and keeps
	// its issuer until the certificate follows.
	if err := writeFileAtomic(filepath.Join(dir, IssuerKeyFile), key, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, IssuerCertFile), issuer.CertPEM(), 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
