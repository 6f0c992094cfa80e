package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/prereq"
)

// TestSmoke runs the whole harness for a few seconds against a freshly built weft-proxy and the real
// HAProxy and wrk: every path must carry HTTP/1.1, gRPC and TCP without one failure, every proxy must be
// measured, the floor paths must carry HTTP/1.1 through each of their relay processes, and the report
// must hold all its tables. (No timing is asserted: speed is for the bench.)
func TestSmoke(t *testing.T) {
	goBin := prereq.Binary(t, "go")
	haproxy := prereq.Binary(t, "haproxy")
	wrk := prereq.Binary(t, "wrk")
	bin := filepath.Join(t.TempDir(), "weft-proxy")
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/weftmesh/weft/cmd/weft-proxy").CombinedOutput(); err != nil {
		t.Fatalf("building weft-proxy: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := run(ctx, options{
		weftBin: bin, haproxy: haproxy, wrk: wrk,
		rates: []int{100}, openConns: 4, open: 200 * time.Millisecond, warm: 100 * time.Millisecond,
		closed: time.Second, wrkThreads: 1, wrkConns: 4, wrkOnly: map[string]bool{"B0": true, "B2": true, "F1": true, "F2": true},
		grpcDur: 200 * time.Millisecond, grpcInflight: 2, tcpDur: 200 * time.Millisecond,
		connDur: time.Second, connWorkers: 4,
		progress: &progress,
	})
	if err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	for k, err := range res.errs {
		if !strings.HasSuffix(k, "/wrk") || err.Error() != "not selected" {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, k := range []string{"B0", "F1", "F2", "B1", "B2", "H1", "H2"} { // the gRPC open loop, floor included
		if st := res.grpcOpen[k]; st.n == 0 || st.errors != 0 {
			t.Errorf("%s gRPC open loop: %d ok, %d failed (%s)", k, st.n, st.errors, st.firstErr)
		}
	}
	for _, k := range columns {
		st, ok := res.open[k][100]
		if !ok || st.n == 0 || st.errors != 0 {
			t.Errorf("%s open loop: %d ok, %d failed (%s)", k, st.n, st.errors, st.firstErr)
		}
		if w, ran := res.wrk[k]; (ran || k == "B0" || k == "B2" || k[0] == 'F') && (w.rps <= 0 || w.errors != 0) {
			t.Errorf("%s wrk: %+v", k, w)
		}
		if k[0] == 'F' {
			checkFloor(t, res, k, 4)
			continue
		}
		if g := res.grpc[k]; g.rps <= 0 || g.errors != 0 {
			t.Errorf("%s gRPC: %+v", k, g)
		}
		if res.tcp[k] <= 0 {
			t.Errorf("%s TCP bulk: %v Gbit/s", k, res.tcp[k])
		}
		if c := res.conns[k]; c.n == 0 || c.errors != 0 {
			t.Errorf("%s new connections: %d echoed, %d failed (%s)", k, c.n, c.errors, c.firstErr)
		}
		if c := res.conns[k]; (k == "H2" || k == "B2") && (!c.resumeMeasured || c.resumeErr != nil || c.resumed+c.full < int64(c.n)) {
			t.Errorf("%s TLS sessions not counted: %d resumed + %d full for %d connections (%v)", k, c.resumed, c.full, c.n, c.resumeErr)
		}
		if s := res.grpcStream[k]; s.msgsPerSec <= 0 || s.errors != 0 {
			t.Errorf("%s gRPC streaming: %+v", k, s)
		}
		if k == "B0" {
			continue
		}
		if g := res.grpcProcs[k]; g == nil || g.err != nil || g.cpuPerCall < 0 || len(g.rssKB) != len(res.procs[k].rssIdleKB) {
			t.Errorf("%s proxies not measured under gRPC load: %+v", k, g)
		}
		ps := res.procs[k]
		if ps == nil || len(ps.rssIdleKB) == 0 || len(ps.rssLoadKB) != len(ps.rssIdleKB) || len(ps.anonLoadKB) != len(ps.rssIdleKB) || ps.cpuErr != nil {
			t.Errorf("%s proxies not measured: %+v", k, ps)
			continue
		}
		for i := range ps.rssIdleKB {
			if ps.rssIdleKB[i] <= 0 || ps.rssLoadKB[i] <= 0 || ps.anonIdleKB[i] <= 0 || ps.anonIdleKB[i] > ps.rssIdleKB[i] {
				t.Errorf("%s %s: RSS idle %d kB, loaded %d kB", k, ps.names[i], ps.rssIdleKB[i], ps.rssLoadKB[i])
			}
		}
		if weft := k[0] == 'B' || k[0] == 'A'; weft != (len(ps.rssScrapedKB) == len(ps.rssIdleKB)) || len(ps.anonScrapedKB) != len(ps.rssScrapedKB) {
			t.Errorf("%s: RSS after scrapes sampled for %d of %d proxies", k, len(ps.rssScrapedKB), len(ps.rssIdleKB))
		}
	}
	// B2 really is two sidecars with mTLS between them: each saw the other's SPIFFE identity.
	if res.mtlsErr != nil || res.mtlsIn < 10 || res.mtlsOut < 10 {
		t.Errorf("B2 mTLS evidence: server sidecar %v responses from %s, client sidecar %v from %s (%v)",
			res.mtlsIn, clientSPIFF, res.mtlsOut, serverSPIFF, res.mtlsErr)
	}
	var out bytes.Buffer
	res.report(&out)
	report := out.String()
	for _, want := range []string{"### Against direct", "| F1 1 TCP relay | F2 2 TCP relays |", "#### B2's latency target against the machine's floor",
		"| B2 over F2: what the two sidecars add beyond two relay processes | ", "| F2 (2 relay processes) over direct: the floor | ", "| max rps (wrk) |", "| TCP bulk Gbit/s |", "### weft-proxy against HAProxy", "### Targets (issue 4)", "| B1 max rps ≥ 60% of direct |",
		"| new TCP connections/s (4 workers) |", "| B2 new mTLS connections ≥ 600/s (issue 5) |",
		"| TLS sessions resumed between the proxies |", "### Targets (issue 17: HTTP/2 and gRPC)", "| gRPC unary rps B2 ≥ 1.0× H2 (median of 1 rounds) |",
		"| gRPC streaming msg/s B1 ≥ 1.0× H1 |", "| CPU per gRPC call B2 ≤ 1.0× H2 |", "| sidecar RSS under gRPC load ≤ 20 MB, each weft-proxy |",
		"| gRPC p99 @100 rps: (B2 − F2) ≤ 0.8 × (H2 − F2) |", "| HTTP/1.1 p50 @100 rps: (B2 − F2) ≤ 0.8 × (H2 − F2) |"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if strings.Count(report, "n/a") != 3 { // wrk ran on B0, B2, F1 and F2 only
		t.Errorf("report has missing numbers beyond the three unselected wrk runs:\n%s", report)
	}
	if t.Failed() {
		t.Logf("progress:\n%s", progress.String())
	}
}

// checkFloor checks a floor path: the open loop's connections went through each of its relay processes
// (one for F1, two for F2), and it took part in nothing but the latency phases and wrk.
func checkFloor(t *testing.T, res *results, key string, conns int64) {
	t.Helper()
	var p *path
	for _, q := range res.paths {
		if q.key == key {
			p = q
		}
	}
	if want := int(key[1] - '0'); p == nil || len(p.procs) != want || len(res.relayed[key]) != want {
		t.Fatalf("%s: want %d relay processes, have %+v, sessions %v", key, want, p, res.relayed[key])
	}
	for i, n := range res.relayed[key] {
		if n < conns {
			t.Errorf("%s relay %s: %d sessions, want at least the open loop's %d connections", key, p.procs[i].name, n, conns)
		}
	}
	if p.procs[0].pid() == p.procs[len(p.procs)-1].pid() && len(p.procs) > 1 {
		t.Errorf("%s: its relays are one process", key)
	}
	_, g := res.grpc[key]
	_, b := res.tcp[key]
	_, c := res.conns[key]
	if g || b || c || res.procs[key] != nil {
		t.Errorf("%s measured beyond latency and wrk: gRPC %v, TCP bulk %v, new connections %v, proxies %v", key, g, b, c, res.procs[key] != nil)
	}
}
