package certfile_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane"
	"github.com/weftmesh/weft/dataplane/certfile"
	"github.com/weftmesh/weft/dataplane/testpki"
)

var _ dataplane.Identity = (*certfile.Source)(nil)

func TestLoadAndReload(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA("test")
	first := ca.Issue("spiffe://cluster.local/ns/shop/sa/web")
	if err := testpki.WriteDir(dir, first, ca); err != nil {
		t.Fatal(err)
	}
	s, err := certfile.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := s.Certificate()
	if c.Leaf.URIs[0].String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("loaded %v", c.Leaf.URIs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Watch(ctx) }()

	// A broken update keeps the previous certificate.
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("garbage key accepted")
	}
	if c, _ := s.Certificate(); c.Leaf.URIs[0].String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatal("broken update replaced the certificate")
	}
	// A good one is picked up by the watcher.
	second := ca.Issue("spiffe://cluster.local/ns/shop/sa/web2")
	if err := testpki.WriteDir(dir, second, ca); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	lastWrite := time.Now()
	for {
		// The watcher may start after the first write: write again now and then (well past the debounce).
		if time.Since(lastWrite) > time.Second {
			if err := testpki.WriteDir(dir, second, ca); err != nil {
				t.Fatal(err)
			}
			lastWrite = time.Now()
		}
		c, _ := s.Certificate()
		if c.Leaf.URIs[0].String() == "spiffe://cluster.local/ns/shop/sa/web2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("certificate not reloaded")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClearErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := certfile.Load(dir, nil)
	if err == nil || !strings.Contains(err.Error(), "cert.pem") {
		t.Fatalf("missing files: %v", err)
	}
	other := testpki.NewCA("other")
	if err := testpki.WriteDir(dir, other.Issue("spiffe://cluster.local/ns/a/sa/b"), testpki.NewCA("real")); err != nil {
		t.Fatal(err)
	}
	if _, err := certfile.Load(dir, nil); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("wrong CA: %v", err)
	}
}
