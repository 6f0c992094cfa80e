package netns

import (
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
)

// GoBuild builds a main package of this module ("./cmd/weft-proxy") once per test process into
// WorldDir, so any user (such as the proxy's uid) can run it, and returns the binary's path.
func GoBuild(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildCache[pkg]; ok {
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("netns: building %s needs the go command on PATH: %v", pkg, err)
	}
	gomod, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" {
		t.Fatalf("netns: finding the module root: %v", err)
	}
	dir, err := WorldDir()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("netns: go build %s: %v\n%s", pkg, err, b)
	}
	buildCache[pkg] = out
	return out
}
