package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/identity"
)

func runWeft(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestIdentityBootstrap: the files bootstrap writes are what weft-control loads, and --rotate-issuer
// makes a new issuer under the same anchor.
func TestIdentityBootstrap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := runWeft(t, "identity", "bootstrap", "--trust-domain", "example.org", "--out", dir); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.LoadDirInto(ca, dir); err != nil {
		t.Fatalf("weft-control could not load what bootstrap wrote: %v", err)
	}
	first := ca.Issuer()

	if _, err := runWeft(t, "identity", "bootstrap", "--out", dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("bootstrap over an existing CA: %v, want a refusal", err)
	}
	if _, err := runWeft(t, "identity", "bootstrap", "--out", dir, "--rotate-issuer"); err != nil {
		t.Fatal(err)
	}
	if err := identity.LoadDirInto(ca, dir); err != nil {
		t.Fatal(err)
	}
	if ca.Issuer().Certificate().Equal(first.Certificate()) || !ca.Issuer().Anchors[0].Equal(first.Anchors[0]) {
		t.Fatal("--rotate-issuer must replace the issuer and keep the anchor")
	}
	if _, err := runWeft(t, "identity", "bootstrap"); err == nil || !strings.Contains(err.Error(), "--out is required") {
		t.Fatalf("bootstrap without --out: %v", err)
	}
}
