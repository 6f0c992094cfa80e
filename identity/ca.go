package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// The files of a CA directory, as `weft identity bootstrap` writes them and weft-control's
// --identity-dir reads them. A Kubernetes Secret holding the CA uses the same names as its keys.
const (
	// BundleFile holds the trust bundle: one or more trust anchors (PEM certificates). During an anchor
	// rotation it holds the old and the new anchor.
	BundleFile = "ca.crt"
	// AnchorKeyFile is the trust anchor's private key. weft-control never reads it; only bootstrap uses
	// it, to sign a new issuer. Keep it offline in production.
	AnchorKeyFile = "ca.key"
	// IssuerCertFile is the issuer's certificate (PEM), optionally followed by further intermediates up
	// to, not including, an anchor.
	IssuerCertFile = "issuer.crt"
	// IssuerKeyFile is the issuer's private key (PEM, PKCS#8 or SEC 1 EC).
	IssuerKeyFile = "issuer.key"
)

const (
	// DefaultLifetime is a leaf's lifetime (capped by the issuer's NotAfter).
	DefaultLifetime = 24 * time.Hour
	// DefaultSkew is how far NotBefore lies before the moment of issuance.
	DefaultSkew = time.Minute
)

// Material is the CA's PEM material as read from files or a Secret.
type Material struct {
	Bundle     []byte // ca.crt
	IssuerCert []byte // issuer.crt
	IssuerKey  []byte // issuer.key
}

// Issuer is a parsed, checked issuer with its trust bundle. It is immutable.
type Issuer struct {
	// Chain is the issuer's certificate first, then any further intermediates (never an anchor).
	Chain []*x509.Certificate
	// Key signs leaves.
	Key crypto.Signer
	// Anchors is the trust bundle.
	Anchors []*x509.Certificate

	pool      *x509.CertPool
	chainDER  [][]byte
	bundlePEM []byte
	material  Material // what it was parsed from
}

// Certificate is the issuer's own certificate.
func (iss *Issuer) Certificate() *x509.Certificate { return iss.Chain[0] }

// TrustBundle is a pool of the anchors. Callers must not modify it.
func (iss *Issuer) TrustBundle() *x509.CertPool { return iss.pool }

// BundlePEM is the trust bundle in PEM, as served to workloads.
func (iss *Issuer) BundlePEM() []byte { return iss.bundlePEM }

// LoadDir reads the CA files of a directory (BundleFile, IssuerCertFile, IssuerKeyFile).
func LoadDir(dir string) (Material, error) {
	var m Material
	for name, dst := range map[string]*[]byte{BundleFile: &m.Bundle, IssuerCertFile: &m.IssuerCert, IssuerKeyFile: &m.IssuerKey} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return Material{}, fmt.Errorf("reading the CA directory (create it with `weft identity bootstrap --out %s`): %w", dir, err)
		}
		*dst = b
	}
	return m, nil
}

// ParseMaterial parses and checks CA material at time now: at least one anchor, all anchors CA
// certificates; the issuer a CA allowed to sign certificates, valid at now, chaining to an anchor, with
// the private key of its certificate; if the issuer carries a SPIFFE trust-domain URI, it must be
// trustDomain.
func ParseMaterial(m Material, trustDomain string, now time.Time) (*Issuer, error) {
	anchors, err := ParseCertificatesPEM(m.Bundle)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BundleFile, err)
	}
	if len(anchors) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", BundleFile)
	}
	pool := x509.NewCertPool()
	var bundlePEM bytes.Buffer
	for _, a := range anchors {
		if !a.IsCA {
			return nil, fmt.Errorf("%s: %q is not a CA certificate", BundleFile, a.Subject)
		}
		pool.AddCert(a)
		_ = pem.Encode(&bundlePEM, &pem.Block{Type: "CERTIFICATE", Bytes: a.Raw})
	}
	chain, err := ParseCertificatesPEM(m.IssuerCert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", IssuerCertFile, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", IssuerCertFile)
	}
	leaf := chain[0]
	if !leaf.IsCA || leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s: %q is not a CA allowed to sign certificates (needs basicConstraints CA and keyCertSign)", IssuerCertFile, leaf.Subject)
	}
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%s: issuer is valid from %s to %s, not now (%s)", IssuerCertFile, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" && u.Host != trustDomain {
			return nil, fmt.Errorf("%s: issuer belongs to trust domain %q, this CA serves %q (set --trust-domain)", IssuerCertFile, u.Host, trustDomain)
		}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s does not chain to an anchor of %s: %w", IssuerCertFile, BundleFile, err)
	}
	key, err := ParsePrivateKeyPEM(m.IssuerKey)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", IssuerKeyFile, err)
	}
	if !publicKeysEqual(key.Public(), leaf.PublicKey) {
		return nil, fmt.Errorf("%s is not the key of %s", IssuerKeyFile, IssuerCertFile)
	}
	iss := &Issuer{Chain: chain, Key: key, Anchors: anchors, pool: pool, bundlePEM: bundlePEM.Bytes(), material: m}
	for _, c := range chain {
		iss.chainDER = append(iss.chainDER, c.Raw)
	}
	return iss, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// ParsePrivateKeyPEM parses the first private key block (PKCS#8 or SEC 1 EC) of PEM data.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		switch block.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing PKCS#8 key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("key of type %T cannot sign", k)
			}
			return s, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(block.Bytes)
		}
	}
}

// CA signs workload certificates with the current issuer. The issuer can be replaced at any time
// (SetIssuer) without a restart; readers take no lock.
type CA struct {
	trustDomain string
	now         func() time.Time
	lifetime    time.Duration
	skew        time.Duration
	issuer      atomic.Pointer[Issuer]

	mu      sync.Mutex    // guards changed
	changed chan struct{} // closed and replaced at every issuer change
}

// Option configures a CA.
type Option func(*CA)

// WithClock sets the CA's clock (tests).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// WithLifetime sets the leaf lifetime (default DefaultLifetime).
func WithLifetime(d time.Duration) Option { return func(c *CA) { c.lifetime = d } }

// WithSkew sets how far NotBefore lies before issuance (default DefaultSkew).
func WithSkew(d time.Duration) Option { return func(c *CA) { c.skew = d } }

// NewCA makes a CA for the trust domain with no issuer yet: until SetIssuer, signing fails with
// ErrNoIssuer.
func NewCA(trustDomain string, opts ...Option) (*CA, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return nil, err
	}
	c := &CA{trustDomain: trustDomain, now: time.Now, lifetime: DefaultLifetime, skew: DefaultSkew, changed: make(chan struct{})}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// TrustDomain is the CA's trust domain.
func (c *CA) TrustDomain() string { return c.trustDomain }

// Now is the CA's clock.
func (c *CA) Now() time.Time { return c.now() }

// Load parses and checks m and makes it the current issuer; on error the current issuer stays.
func (c *CA) Load(m Material) error {
	iss, err := ParseMaterial(m, c.trustDomain, c.now())
	if err != nil {
		return err
	}
	c.SetIssuer(iss)
	return nil
}

// SetIssuer replaces the current issuer.
func (c *CA) SetIssuer(iss *Issuer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.issuer.Store(iss)
	close(c.changed)
	c.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of the issuer (and so, perhaps, of the
// trust bundle): the control plane waits on it to push a new ROOTCA. Call it again after each change.
func (c *CA) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Issuer is the current issuer, or nil.
func (c *CA) Issuer() *Issuer { return c.issuer.Load() }

// TrustBundle is the current pool of anchors, or nil when no issuer is loaded.
func (c *CA) TrustBundle() *x509.CertPool {
	if iss := c.issuer.Load(); iss != nil {
		return iss.pool
	}
	return nil
}

// Leaf is a signed workload certificate.
type Leaf struct {
	Certificate *x509.Certificate
	// Intermediates are DER certificates from the leaf's issuer up to, not including, the anchor.
	Intermediates [][]byte
}

// currentIssuer returns the issuer if it is valid now.
func (c *CA) currentIssuer(now time.Time) (*Issuer, error) {
	iss := c.issuer.Load()
	if iss == nil {
		return nil, fmt.Errorf("%w: the CA has not loaded an issuer yet", ErrNoIssuer)
	}
	if now.After(iss.Chain[0].NotAfter) {
		return nil, fmt.Errorf("%w: the issuer expired at %s; rotate it (weft identity bootstrap --rotate-issuer)", ErrNoIssuer, iss.Chain[0].NotAfter.UTC().Format(time.RFC3339))
	}
	return iss, nil
}

// Sign issues a workload leaf for id and pub. Callers check the request first (CheckCSR, Authorize).
func (c *CA) Sign(pub crypto.PublicKey, id ID) (*Leaf, error) {
	now := c.now()
	iss, err := c.currentIssuer(now)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := LeafTemplate(id, LeafParams{Now: now, Lifetime: c.lifetime, Skew: c.skew, IssuerNotAfter: iss.Chain[0].NotAfter, Serial: serial})
	if !canSignFast(iss) {
		return c.sign(iss, tmpl, pub)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrInvalidRequest, err)
	}
	der, err := signLeafFast(iss, tmpl, spki)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate just signed: %w", err)
	}
	return &Leaf{Certificate: cert, Intermediates: iss.chainDER}, nil
}

func (c *CA) sign(iss *Issuer, tmpl *x509.Certificate, pub crypto.PublicKey) (*Leaf, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.Chain[0], pub, iss.Key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the certificate just signed: %w", err)
	}
	return &Leaf{Certificate: cert, Intermediates: iss.chainDER}, nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("making a serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

// ServingCertificate issues a TLS server certificate for the control plane itself: the DNS names and
// IP addresses in names, and optionally a SPIFFE ID, with serverAuth + clientAuth. Workload leaves
// never carry DNS names or IPs, so a client that checks the server name cannot be fooled by a workload.
func (c *CA) ServingCertificate(id ID, names ...string) (*tls.Certificate, error) {
	now := c.now()
	iss, err := c.currentIssuer(now)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(p256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("making a key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := LeafTemplate(id, LeafParams{Now: now, Lifetime: c.lifetime, Skew: c.skew, IssuerNotAfter: iss.Chain[0].NotAfter, Serial: serial})
	if id.IsZero() {
		tmpl.URIs = nil
	}
	tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	leaf, err := c.sign(iss, tmpl, key.Public())
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: append([][]byte{leaf.Certificate.Raw}, leaf.Intermediates...), PrivateKey: key, Leaf: leaf.Certificate}, nil
}
