package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// profiler takes CPU profiles of a path's weft-proxies during one phase (-cpuprofile DIR). It needs a
// weft-proxy built with -tags weftpprof, whose admin port serves /debug/pprof/ (normal builds don't).
type profiler struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

// pprofHint says how to get a binary that can be profiled.
const pprofHint = "-cpuprofile needs a weft-proxy built with the profiler: go build -tags weftpprof -o /tmp/weft-proxy-pprof ./cmd/weft-proxy, then pass -weft-proxy /tmp/weft-proxy-pprof"

// checkPprof tells whether a weft-proxy serves /debug/pprof/.
func checkPprof(p *proc) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/debug/pprof/")
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s has no /debug/pprof/ (status %d): %s", p.name, resp.StatusCode, pprofHint)
	}
	return nil
}

// startProfiles starts a CPU profile of d (whole seconds, at least 1) on each weft-proxy of procs,
// written to dir/<phase>-<proc>.pprof. HAProxy processes (no admin address) are skipped.
func startProfiles(dir, phase string, procs []*proc, d time.Duration) *profiler {
	pr := &profiler{}
	secs := max(1, int(d/time.Second))
	for _, p := range procs {
		if p.admin == "" {
			continue
		}
		file := filepath.Join(dir, strings.ReplaceAll(phase, " ", "-")+"-"+p.name+".pprof")
		pr.wg.Go(func() {
			if err := fetchProfile("http://"+p.admin+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), file, d); err != nil {
				pr.mu.Lock()
				pr.errs = append(pr.errs, fmt.Errorf("%s %s: %w", phase, p.name, err))
				pr.mu.Unlock()
			}
		})
	}
	return pr
}

func fetchProfile(url, file string, d time.Duration) error {
	c := &http.Client{Timeout: d + 30*time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// wait waits for the profiles; it returns what went wrong.
func (pr *profiler) wait() []error {
	if pr == nil {
		return nil
	}
	pr.wg.Wait()
	return pr.errs
}
