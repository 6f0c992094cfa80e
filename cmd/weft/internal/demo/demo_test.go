package demo

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/prebuilt"
)

// syncBuffer is the demo's output, read by the test while the demo writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// buildBinaries returns weft-control and weft-proxy of this checkout: those of `make build` in bin/
// when they are newer than every Go source, go.mod and go.sum of the module (as right after make build,
// which `make test` runs first), else freshly built into a temp dir.
func buildBinaries(t *testing.T) (control, proxy string) {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	control, proxy = filepath.Join(root, "bin", "weft-control"), filepath.Join(root, "bin", "weft-proxy")
	if prebuilt.Fresh(root, control, proxy) {
		t.Logf("using %s and %s (newer than every source)", control, proxy)
		return control, proxy
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/weftmesh/weft/cmd/weft-control", "github.com/weftmesh/weft/cmd/weft-proxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	return filepath.Join(dir, "weft-control"), filepath.Join(dir, "weft-proxy")
}

// TestDemo runs the whole demo until each service has had traffic and books has failed some, stops
// it like Ctrl-C does, and checks the last table and that nothing is left behind.
func TestDemo(t *testing.T) {
	t0 := time.Now()
	control, proxy := buildBinaries(t)
	t.Logf("weft-control and weft-proxy built in %s", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()

	var out, log syncBuffer
	var pids []int
	var dir string
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		res *Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := Run(ctx, Options{
			Interval: 300 * time.Millisecond, Plain: true,
			Block: byte(100 + rand.IntN(150)), RPS: 40, FailRate: 0.3,
			ControlBin: control, ProxyBin: proxy, Out: &out, Log: &log,
			Started: func(p []int, d string) { pids, dir = p, d; close(started) },
		})
		done <- result{res, err}
	}()

	deadline := time.After(25 * time.Second)
	select {
	case <-started:
	case r := <-done:
		t.Fatalf("the demo stopped before the mesh was ready: %v\n%s", r.err, log.String())
	case <-deadline:
		t.Fatalf("the mesh was not ready in time:\n%s", log.String())
	}
	if len(pids) != 5 {
		t.Errorf("%d child processes, want 5 (weft-control and 4 weft-proxies)", len(pids))
	}
	// Poll the live table until all three services had traffic and books failed some of it.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for seen := false; !seen; {
		select {
		case r := <-done:
			t.Fatalf("the demo stopped on its own: %v\n%s\n%s", r.err, out.String(), log.String())
		case <-deadline:
			t.Fatalf("no table showed traffic through web, books and authors with failures at books:\n%s\n%s", out.String(), log.String())
		case <-tick.C:
		}
		rows := ParseTable(out.String())
		seen = len(rows) == 3 && rows["books"][3] != "100%" && rows["books"][3] != "-"
		for _, svc := range services {
			seen = seen && rows[svc] != nil && rows[svc][1] != "0"
		}
	}
	cancel() // Ctrl-C
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the demo did not stop within 20 s of its context ending")
	}
	if r.err != nil {
		t.Fatalf("demo: %v\n%s", r.err, log.String())
	}
	text := out.String()
	if !strings.Contains(text, "Totals over") {
		t.Fatalf("no totals table at the end:\n%s", text)
	}
	rows := ParseTable(text)
	for _, svc := range services {
		row := rows[svc]
		if row == nil || row[1] == "0" {
			t.Errorf("%s: no requests in the totals: %v\n%s", svc, row, text)
			continue
		}
		if row[6] != "100%" {
			t.Errorf("%s: mTLS share %s, want 100%% (every hop is between two proxies)\n%s", svc, row[6], text)
		}
	}
	if rows["books"] != nil && rows["books"][3] == "100%" {
		t.Errorf("books: success rate 100%%, want below (it fails 30%% of its requests)\n%s", text)
	}
	if rows["authors"] != nil && rows["authors"][3] != "100%" {
		t.Errorf("authors: success rate %s, want 100%%\n%s", rows["authors"][3], text)
	}

	// Nothing left behind: the children are gone and so is the temp dir.
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child process %d still exists after the demo stopped (kill -0: %v)", pid, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp dir %s still exists after the demo stopped (%v)", dir, err)
	}
	t.Logf("the demo ran and stopped in %s; its output:\n%s", time.Since(t0).Round(time.Millisecond), text)
}

// Without the binaries the demo says how to get them.
func TestMissingBinaryNamesMakeBuild(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := FindBinary("weft-control")
	if err == nil || !strings.Contains(err.Error(), "make build") || !strings.Contains(err.Error(), "weft-control") {
		t.Fatalf("FindBinary without the binary: %v, want a message naming weft-control and make build", err)
	}
}
