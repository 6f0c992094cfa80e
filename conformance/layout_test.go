package conformance

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/weftmesh/weft/conformance/prereq"
)

// topLevel is docs/design.md's fixed top level ("Layout"), each entry with what it is for.
var topLevel = map[string]string{
	".ci":          "CI's script",
	".gitignore":   "build output and tools kept out of git",
	"Makefile":     "build, test, lint, images, bench",
	"README.md":    "what Weft is and how to use it",
	"bench":        "benchmarks",
	"buf.gen.yaml": "buf's code generation for proto/",
	"buf.yaml":     "buf's workspace for proto/",
	"cmd":          "the four binaries",
	"conformance":  "end-to-end and protocol tests, the test harnesses",
	"dataplane":    "the sidecar's proxy",
	"deploy":       "chart, injector, images",
	"discovery":    "Kubernetes (or a file) in, discovery.State out",
	"docs":         "the design",
	"go.mod":       "the module",
	"go.sum":       "the module's checksums",
	"identity":     "the CA and the workload identity client",
	"proto":        "our own APIs",
	"xds":          "translation and the xDS server",
}

// TestTopLevelLayout keeps the top level of the repository to docs/design.md's list: a new folder or
// file there is a design decision, made in the design first.
func TestTopLevelLayout(t *testing.T) {
	git := prereq.Binary(t, "git")
	cmd := exec.Command(git, "ls-files")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git ls-files (the tests run in a checkout of the repository): %v", err)
	}
	var seen []string
	for _, f := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		top, _, _ := strings.Cut(f, "/")
		if !slices.Contains(seen, top) {
			seen = append(seen, top)
		}
	}
	for _, top := range seen {
		if _, ok := topLevel[top]; !ok {
			t.Errorf("%s at the top of the repository: not in docs/design.md's layout; put it in one of the folders there, or add it to the design (and to topLevel here) first", top)
		}
	}
	if !slices.Contains(seen, "docs") {
		t.Errorf("docs/design.md is missing: the README and the layout rules point to it")
	}
}
