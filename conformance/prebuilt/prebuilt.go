// Package prebuilt lets tests that run weft-control and weft-proxy as real processes reuse the binaries
// of `make build` (bin/) when they are up to date, as right after `make build`, which `make test` runs first.
package prebuilt

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Fresh reports whether every binary is newer than every non-test Go file, go.mod and go.sum under root.
func Fresh(root string, bins ...string) bool {
	var oldest time.Time
	for _, b := range bins {
		st, err := os.Stat(b)
		if err != nil {
			return false
		}
		if oldest.IsZero() || st.ModTime().Before(oldest) {
			oldest = st.ModTime()
		}
	}
	stale := errors.New("stale")
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if (strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go")) || name == "go.mod" || name == "go.sum" {
			if info, err := d.Info(); err != nil || !info.ModTime().Before(oldest) {
				return stale
			}
		}
		return nil
	})
	return err == nil
}
