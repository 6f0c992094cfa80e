package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Memory settings of the Go runtime. The GC's target heap growth stays at Go's 100% by default:
// 50% kept weft-proxy's heap at 2000 rps about 1.5–2 MB smaller, but cost about 20% of the new mTLS
// connections per second between sidecars and ~10% of the closed-loop throughput (bench/proxy, same
// runs), and 100% still keeps a sidecar under 20 MB at 2000 rps; --gc-percent 50 is there for
// memory-tight nodes. In a container with a memory limit, the runtime gets a soft limit below it so
// that it collects harder rather than being OOM-killed.
//
// Where an idle sidecar's memory is (bench/proxy, 2026-12; read with /proc/<pid>/pagemap against the
// symbol table, and `perf record -e page-faults -d -g` for who touched each page first):
//   - ~10 MB of VmRSS is the binary (RssFile): the kernel maps 64 KB around every page touched, and an
//     idle proxy touches all but about a dozen of the ~180 64-KB blocks of its text, rodata, pclntab
//     and data: package init functions are spread over the whole text (the linker orders it by
//     package), and each stack growth, goroutine start and preemption reads the pclntab of the
//     functions involved. RssFile follows the size of what is linked, not what is run; only a smaller
//     binary lowers it. (Replacing connect-go by identity/grpcwire took 667 KB off the loaded image
//     and 0.3–0.4 MB off idle VmRSS, same run, 2026-12.)
//   - ~2.4–2.6 MB is anonymous: ~1.4 MB allocated at start-up and not collected (no GC runs before the
//     heap reaches 4 MB or for 2 minutes), a third of it protobuf-go's lazy set-up of the slim xDS
//     messages on first decode; ~0.7 MB of goroutine stacks; runtime structures. A runtime.GC or
//     debug.FreeOSMemory once start-up is done raised it by 0.6–1 MB instead (start-up garbage is only
//     ~0.45 MB, scattered over spans that stay in use), and so did a GC percent of 25 during start-up
//     (+1 MB, same run: the collector's own metadata and workers cost more than the garbage it frees).
//   - Session 7's features (the HTTP/2 frame relay, tap, tracing, route filters, RBAC) added 719 KB to
//     the loaded image (text+rodata+pclntab+data, 10.87 -> 11.59 MB) and ~0.6 MB of RssFile: the relay
//     and the features' own code in dataplane/proxy and dataplane/config (~2/3), golang.org/x/net/http2's
//     Framer with hpack, httpguts, idna and x/text/unicode/norm (~130 KB: net/http's bundled copies are
//     not importable), the larger slim descriptors (rbac.proto) and tap/v1. Writing OTLP with protowire
//     (dataplane/tracing), sort.Slice for struct slices (each slices.SortFunc of a struct type links its
//     own ~15 KB pdqsort) and data tables instead of map literals took 152 KB of it back. Anonymous
//     memory grew ~0.2 MB: protobuf-go's set-up of the bigger slim messages, descriptor registration.
//   - A scraped sidecar grows towards the GC's 4 MB minimum heap: each /metrics scrape allocates
//     ~55 KB (it was ~230 KB with client_golang's Go and process collectors, which also linked ~1 MB
//     of resident binary: dataplane/proxy/metrics.go); --gc-percent scales that minimum.

// defaultGCPercent is --gc-percent's default.
const defaultGCPercent = 100

// cgroupMemoryMax is the cgroup v2 memory limit of the container we run in.
const cgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// memorySettings are the runtime settings the flags and the environment ask for.
type memorySettings struct {
	gcPercent int   // debug.SetGCPercent; -1: leave the runtime's (GOGC)
	limit     int64 // debug.SetMemoryLimit; 0: leave the runtime's (GOMEMLIMIT, or none)
}

// resolveMemory decides the settings: flags given explicitly win, then GOGC and GOMEMLIMIT in the
// environment (which the runtime has applied already), then the defaults: --gc-percent 100 and a soft
// limit of 90% of the cgroup's memory.max (none when unlimited). cgroupMax is the content of
// memory.max ("" when unreadable).
func resolveMemory(gcFlag int, gcSet bool, limitFlag string, env func(string) string, cgroupMax string) (memorySettings, error) {
	s := memorySettings{gcPercent: -1}
	switch {
	case gcSet:
		if gcFlag < 0 {
			return s, fmt.Errorf("--gc-percent %d: want 0 or more (GOGC=off in the environment turns the GC off)", gcFlag)
		}
		s.gcPercent = gcFlag
	case env("GOGC") == "":
		s.gcPercent = defaultGCPercent
	}
	switch {
	case limitFlag != "":
		n, err := parseBytes(limitFlag)
		if err != nil {
			return s, fmt.Errorf("--memory-limit %q: %w", limitFlag, err)
		}
		s.limit = n
	case env("GOMEMLIMIT") == "":
		if n, err := strconv.ParseInt(strings.TrimSpace(cgroupMax), 10, 64); err == nil && n > 0 {
			s.limit = n / 10 * 9
		}
	}
	return s, nil
}

func (s memorySettings) apply() {
	if s.gcPercent >= 0 {
		debug.SetGCPercent(s.gcPercent)
	}
	if s.limit > 0 {
		debug.SetMemoryLimit(s.limit)
	}
}

// applyMemory resolves and applies the runtime's memory settings for run.
func applyMemory(o runOptions) error {
	cg, _ := os.ReadFile(cgroupMemoryMax)
	s, err := resolveMemory(o.gcPercent, o.gcPercentSet, o.memoryLimit, os.Getenv, string(cg))
	if err != nil {
		return err
	}
	s.apply()
	return nil
}

// parseBytes reads a size in bytes with an optional binary suffix: 67108864, 64MiB, 1GiB, 512KiB.
func parseBytes(v string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("want a positive number of bytes, optionally with KiB, MiB or GiB (e.g. 64MiB)")
	}
	return n * mult, nil
}
