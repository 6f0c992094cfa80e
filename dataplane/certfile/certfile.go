// Package certfile is an identity source for weft-proxy read from files (--cert-dir): cert.pem (the
// workload certificate followed by its intermediates), key.pem and ca.pem (the trust bundle). The files
// are reloaded when they change (a Kubernetes Secret volume swaps them atomically); a broken update is
// logged and the last good material keeps serving. It satisfies dataplane.Identity.
package certfile

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// File names inside the directory.
const (
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
	CAFile   = "ca.pem"
)

type material struct {
	cert *tls.Certificate
	pool *x509.CertPool
}

// Source serves the certificate and trust bundle of a directory.
type Source struct {
	dir string
	log *slog.Logger
	cur atomic.Pointer[material]
}

// Load reads the directory once; it fails when the files are missing or do not belong together.
func Load(dir string, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Source{dir: dir, log: log.With("component", "certfile", "dir", dir)}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads the files again; on error the previous material stays.
func (s *Source) Reload() error {
	pair, err := tls.LoadX509KeyPair(filepath.Join(s.dir, CertFile), filepath.Join(s.dir, KeyFile))
	if err != nil {
		return fmt.Errorf("--cert-dir %s: loading %s and %s: %w", s.dir, CertFile, KeyFile, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(s.dir, CAFile))
	if err != nil {
		return fmt.Errorf("--cert-dir %s: %w", s.dir, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("--cert-dir %s: %s holds no PEM certificate", s.dir, CAFile)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return fmt.Errorf("--cert-dir %s: %s: %w", s.dir, CertFile, err)
		}
		pair.Leaf = leaf
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("--cert-dir %s: %s does not chain to %s: %w", s.dir, CertFile, CAFile, err)
	}
	hasSPIFFE := false
	for _, u := range leaf.URIs {
		hasSPIFFE = hasSPIFFE || u.Scheme == "spiffe"
	}
	if !hasSPIFFE {
		return fmt.Errorf("--cert-dir %s: %s has no spiffe:// URI SAN", s.dir, CertFile)
	}
	s.cur.Store(&material{cert: &pair, pool: pool})
	return nil
}

// Certificate returns the current workload certificate (chain and key).
func (s *Source) Certificate() (*tls.Certificate, error) {
	m := s.cur.Load()
	if m == nil {
		return nil, errors.New("no certificate loaded")
	}
	return m.cert, nil
}

// TrustBundle returns the current roots.
func (s *Source) TrustBundle() *x509.CertPool {
	if m := s.cur.Load(); m != nil {
		return m.pool
	}
	return x509.NewCertPool()
}

// Watch reloads the files when the directory changes, until ctx ends.
func (s *Source) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.dir, err)
	}
	defer w.Close()
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("watch %s: %w", s.dir, err)
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			debounce = time.After(100 * time.Millisecond)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("watching certificates", "err", err)
		case <-debounce:
			if err := s.Reload(); err != nil {
				s.log.Warn("certificate files changed but cannot be used; keeping the previous ones", "err", err)
			} else {
				s.log.Info("reloaded certificates")
			}
		}
	}
}
