// Package testpki makes a throwaway CA and SPIFFE workload certificates for data-plane tests.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// CA is a self-signed root.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a root CA.
func NewCA(name string) *CA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{Organization: []string{name}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &CA{Cert: c, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Pool is the CA as a trust bundle.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Leaf is a workload certificate.
type Leaf struct {
	TLS             tls.Certificate
	CertPEM, KeyPEM []byte
}

// Issue makes a leaf whose only URI SAN is spiffeID.
func (ca *CA) Issue(spiffeID string) *Leaf { return ca.issue(spiffeID, nil) }

// IssueServer makes a serving certificate for IP addresses (a control plane on loopback).
func (ca *CA) IssueServer(ips ...string) *Leaf { return ca.issue("", ips) }

func (ca *CA) issue(spiffeID string, ips []string) *Leaf {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var uris []*url.URL
	if spiffeID != "" {
		u, err := url.Parse(spiffeID)
		if err != nil {
			panic(err)
		}
		uris = append(uris, u)
	}
	var ipAddrs []net.IP
	for _, ip := range ips {
		ipAddrs = append(ipAddrs, net.ParseIP(ip))
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		URIs:         uris,
		IPAddresses:  ipAddrs,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		panic(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return &Leaf{
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}
}

// WriteDir writes cert.pem, key.pem and ca.pem into dir (the --cert-dir layout).
func WriteDir(dir string, l *Leaf, ca *CA) error {
	for name, b := range map[string][]byte{"cert.pem": l.CertPEM, "key.pem": l.KeyPEM, "ca.pem": ca.PEM} {
		if err := os.WriteFile(filepath.Join(dir, name+".tmp"), b, 0o600); err != nil {
			return err
		}
		if err := os.Rename(filepath.Join(dir, name+".tmp"), filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// Identity is a fixed certificate and bundle; it satisfies dataplane.Identity.
type Identity struct {
	Leaf *Leaf
	CA   *CA
}

// Certificate returns the leaf.
func (i Identity) Certificate() (*tls.Certificate, error) { return &i.Leaf.TLS, nil }

// TrustBundle returns the CA.
func (i Identity) TrustBundle() *x509.CertPool { return i.CA.Pool() }
