// Package prereq is how a test says it needs something the machine may lack (root, a binary, a built
// kube-apiserver). Outside CI such a test skips with a message naming the fix; with WEFT_REQUIRE_ALL=1
// (as CI sets it) it fails instead, so CI can never pass by skipping.
package prereq

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// RequireAll reports whether every prerequisite must be present (WEFT_REQUIRE_ALL=1).
func RequireAll() bool { return os.Getenv("WEFT_REQUIRE_ALL") == "1" }

// Missing stops the test because a prerequisite is absent: a skip normally, a failure under
// WEFT_REQUIRE_ALL=1. The message should say what is missing and how to get it (usually `make deps`).
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if RequireAll() {
		t.Fatalf("prerequisite missing (WEFT_REQUIRE_ALL=1 forbids skipping): %s", msg)
	}
	t.Skipf("prerequisite missing: %s", msg)
}

// Root stops the test unless it runs as root (network namespaces, iptables).
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "this test needs root (network namespaces, iptables); run it as root, as CI does")
	}
}

// Binary returns the path of an executable on PATH, or stops the test naming `make deps`.
func Binary(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s is not installed; run `make deps`", name)
	}
	return path
}
