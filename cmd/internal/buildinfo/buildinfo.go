// Package buildinfo tells which version and git commit a Weft binary was built from.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at link time by the Makefile (-X); a plain `go build` leaves it "dev".
var Version = "dev"

// Commit returns the git commit the binary was built from, as recorded by the Go toolchain,
// with "-dirty" when the tree had uncommitted changes, or "unknown".
func Commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	if rev == "" {
		return "unknown"
	}
	return rev + modified
}

// String is the one line that `weft version` and `--version` print.
func String(binary string) string {
	return fmt.Sprintf("%s %s (commit %s, %s, %s/%s)", binary, Version, Commit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
