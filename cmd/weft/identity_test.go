package main

import (
	"bytes"
	"os"
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

// TestIdentityBootstrapLifetimes: a lifetime of zero, below an hour or negative is a mistake named by
// its flag, and nothing is written (a negative anchor lifetime once wrote an expired CA and exited 0).
func TestIdentityBootstrapLifetimes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--anchor-lifetime", "-1h"}, "--anchor-lifetime -1h0m0s: want at least 1h"},
		{[]string{"--issuer-lifetime", "0s"}, "--issuer-lifetime 0s: want at least 1h"},
		{[]string{"--issuer-lifetime", "30m"}, "--issuer-lifetime 30m0s: want at least 1h"},
		{[]string{"--rotate-issuer", "--issuer-lifetime", "-5m"}, "--issuer-lifetime -5m0s: want at least 1h"},
	} {
		dir := filepath.Join(t.TempDir(), "ca")
		_, err := runWeft(t, append([]string{"identity", "bootstrap", "--out", dir}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bootstrap %s: %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
		if _, statErr := os.Stat(dir); !os.IsNotExist(statErr) {
			t.Errorf("bootstrap %s wrote %s", strings.Join(tc.args, " "), dir)
		}
	}
}
