package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"
)

// Targets of issue 4.
const (
	targetB2P50     = 150 * time.Microsecond
	targetB2P99     = 250 * time.Microsecond
	targetB1MaxPct  = 60.0
	targetRSSIdleMB = 12.0
	targetRSSLoadMB = 20.0
	targetRate      = 1000
	targetConnsPerS = 600 // issue 5: new mTLS connections per second between two proxies
)

// columns are the paths in the order of the tables: direct, the floor (one and two no-op relay
// processes), then each weft path beside its HAProxy twin.
var columns = []string{"B0", "F1", "F2", "B1", "H1", "B2", "H2"}

// beforeColumns are B1 and B2 through an earlier weft-proxy binary (-weft-proxy-before), when asked for.
var beforeColumns = []string{"A1", "A2"}

// columnNames head the tables.
var columnNames = map[string]string{"B0": "B0 direct", "F1": "F1 1 TCP relay", "F2": "F2 2 TCP relays", "B1": "B1 weft", "H1": "H1 HAProxy", "B2": "B2 weft mTLS",
	"H2": "H2 HAProxy mTLS", "A1": "A1 weft before", "A2": "A2 weft mTLS before"}

// cols are the columns of this run's tables.
func (r *results) cols() []string {
	if r.opts.weftBefore == "" {
		return columns
	}
	return append(append([]string{}, columns...), beforeColumns...)
}

type reportWriter struct {
	r     *results
	w     io.Writer
	notes []string
}

// note adds a footnote (once per text) and returns its marker.
func (rw *reportWriter) note(s string) string {
	for i, n := range rw.notes {
		if n == s {
			return fmt.Sprintf("[%d]", i+1)
		}
	}
	rw.notes = append(rw.notes, s)
	return fmt.Sprintf("[%d]", len(rw.notes))
}

// na is a cell for a missing number, with a footnote saying why.
func (rw *reportWriter) na(key, what string) string {
	err := rw.r.err(key, what)
	if err == nil {
		return "—"
	}
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return "n/a " + rw.note(fmt.Sprintf("%s: %s", key, msg))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/1e6) }

func addedMS(d time.Duration) string { return fmt.Sprintf("%+.3f ms", float64(d)/1e6) }

func mb(kb int64) string { return fmt.Sprintf("%.1f MB", float64(kb)/1024) }

func pct(v, base float64) string {
	if base <= 0 {
		return ""
	}
	return fmt.Sprintf(" (%.0f%%)", 100*v/base)
}

func (rw *reportWriter) row(label string, cell func(key string) string) {
	cells := []string{label}
	for _, k := range rw.r.cols() {
		cells = append(cells, cell(k))
	}
	fmt.Fprintf(rw.w, "| %s |\n", strings.Join(cells, " | "))
}

// rateNear is the measured rate closest to want (the targets are stated at 1000 rps).
func (r *results) rateNear(want int) int {
	best := r.opts.rates[0]
	for _, x := range r.opts.rates {
		if abs(x-want) < abs(best-want) {
			best = x
		}
	}
	return best
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func (r *results) openStat(key string, rate int) (latencyStats, bool) {
	st, ok := r.open[key][rate]
	return st, ok && st.n > 0
}

// added is a path's latency percentile minus direct's at the same rate.
func (r *results) added(key string, rate int, pick func(latencyStats) time.Duration) (time.Duration, bool) {
	return r.over(key, "B0", rate, pick)
}

// over is a path's latency percentile minus another path's at the same rate.
func (r *results) over(key, base string, rate int, pick func(latencyStats) time.Duration) (time.Duration, bool) {
	st, ok := r.openStat(key, rate)
	b, bok := r.openStat(base, rate)
	if !ok || !bok {
		return 0, false
	}
	return pick(st) - pick(b), true
}

func (r *results) report(w io.Writer) {
	rw := &reportWriter{r: r, w: w}
	o := r.opts
	top := o.rates[len(o.rates)-1]
	fmt.Fprintf(w, "## weft-proxy beside direct and HAProxy\n\n")
	fmt.Fprintf(w, "One run on loopback, %s, %d CPUs (GOMAXPROCS %d), %s. B0 direct; B1 one weft-proxy hop; "+
		"B2 client sidecar → mTLS HTTP/2 → server sidecar; H1/H2 the same through HAProxy; F1/F2 the floor: one and two no-op TCP relay processes "+
		"(HAProxy mode tcp, latency and wrk only). HTTP/1.1 GET, 1 KB responses. "+
		"Open loop: %v per rate after %v warm-up, over %d keep-alive connections, latency from the intended send time. Closed loop: wrk -t%d -c%d, %d rounds of %v per path in rotated orders, median round shown with the rounds' range. "+
		"gRPC unary 1 KB echo, %d in flight, %d rounds of %v per path in rotated orders (median round, the rounds' range); gRPC streaming: %d bidi streams echoing 1 KB messages on one connection, %v; gRPC open loop at %d rps (F1/F2 relay to the gRPC app too), %v. TCP bulk: one connection, %v. "+
		"New connections: %d workers for %v, each connection through the TCP path: connect, 64-byte echo, close. "+
		"Load average before/after: %s / %s (the machine is shared: compare columns, not runs).%s\n\n",
		r.when.Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), runtime.GOMAXPROCS(0), orNA(r.hap, "HAProxy not run"),
		o.open, o.warm, o.openConns, o.wrkThreads, o.wrkConns, max(1, o.wrkRounds), max(time.Second, (o.closed/time.Duration(max(1, o.wrkRounds))).Round(time.Second)), o.grpcInflight, max(1, o.grpcRounds), o.grpcDur,
		o.grpcStreams, o.grpcStreamDur, r.rateNear(targetRate), o.grpcOpen, o.tcpDur, o.connWorkers, o.connDur, r.load[0], r.load[1], beforeNote(o))

	fmt.Fprintf(w, "### Against direct\n\n")
	head, rule := "| |", "|---|"
	for _, k := range r.cols() {
		head += " " + columnNames[k] + " |"
		rule += "---|"
	}
	fmt.Fprintf(w, "%s\n%s\n", head, rule)
	for _, rate := range o.rates {
		for _, q := range []struct {
			name string
			pick func(latencyStats) time.Duration
		}{{"p50", func(s latencyStats) time.Duration { return s.p50 }},
			{"p99", func(s latencyStats) time.Duration { return s.p99 }},
			{"p999", func(s latencyStats) time.Duration { return s.p999 }}} {
			rw.row(fmt.Sprintf("%s @%d rps", q.name, rate), func(k string) string {
				st, ok := r.openStat(k, rate)
				if !ok {
					return rw.na(k, "open")
				}
				s := ""
				if k == "B0" {
					s = ms(q.pick(st))
				} else if d, ok := r.added(k, rate, q.pick); ok {
					s = addedMS(d)
				} else {
					s = ms(q.pick(st)) + " (no direct baseline)"
				}
				if st.errors > 0 && q.name == "p50" {
					s += fmt.Sprintf(" (%d failed %s)", st.errors, rw.note(fmt.Sprintf("%s @%d rps: %d of %d requests failed, first: %s", k, rate, st.errors, st.errors+st.n, st.firstErr)))
				}
				return s
			})
		}
	}
	for _, rate := range o.rates {
		rw.row(fmt.Sprintf("generator wake-up lag p50 / p99 @%d rps", rate), func(k string) string {
			st, ok := r.openStat(k, rate)
			if !ok {
				return rw.na(k, "open")
			}
			return ms(st.wakeLagP50) + " / " + ms(st.wakeLagP99)
		})
	}
	base := r.wrk["B0"].rps
	rw.row("max rps (wrk)", func(k string) string {
		v, ok := r.wrk[k]
		if !ok {
			return rw.na(k, "wrk")
		}
		s := fmt.Sprintf("%.0f", v.rps)
		if k != "B0" {
			s += pct(v.rps, base)
		}
		if v.max > v.min {
			s += fmt.Sprintf(" [%.0f–%.0f]", v.min, v.max)
		}
		if v.errors > 0 {
			s += fmt.Sprintf(" (%d errors)", v.errors)
		}
		return s
	})
	gbase := r.grpc["B0"].rps
	rw.row("gRPC unary rps", func(k string) string {
		g, ok := r.grpc[k]
		if !ok {
			return rw.na(k, "grpc")
		}
		s := fmt.Sprintf("%.0f", g.rps)
		if k != "B0" {
			s += pct(g.rps, gbase)
		}
		if g.max > g.min {
			s += fmt.Sprintf(" [%.0f–%.0f]", g.min, g.max)
		}
		if g.errors > 0 {
			s += fmt.Sprintf(" (%d failed %s)", g.errors, rw.note(fmt.Sprintf("%s gRPC: %d calls failed, first: %s", k, g.errors, g.firstErr)))
		}
		return s
	})
	rw.row("gRPC p50 / p99", func(k string) string {
		g, ok := r.grpc[k]
		if !ok {
			return rw.na(k, "grpc")
		}
		if k == "B0" {
			return ms(g.p50) + " / " + ms(g.p99)
		}
		b, ok := r.grpc["B0"]
		if !ok {
			return ms(g.p50) + " / " + ms(g.p99)
		}
		return addedMS(g.p50-b.p50) + " / " + addedMS(g.p99-b.p99)
	})
	rw.grpcRows()
	tbase := r.tcp["B0"]
	rw.row("TCP bulk Gbit/s", func(k string) string {
		v, ok := r.tcp[k]
		if !ok {
			return rw.na(k, "tcp")
		}
		s := fmt.Sprintf("%.2f", v)
		if k != "B0" {
			s += pct(v, tbase)
		}
		return s
	})
	rw.row(fmt.Sprintf("new TCP connections/s (%d workers)", o.connWorkers), func(k string) string {
		c, ok := r.conns[k]
		if !ok {
			return rw.na(k, "tcp")
		}
		s := fmt.Sprintf("%.0f", c.perSec)
		if k != "B0" {
			s += pct(c.perSec, r.conns["B0"].perSec)
		}
		if c.errors > 0 {
			s += fmt.Sprintf(" (%d failed %s)", c.errors, rw.note(fmt.Sprintf("%s new connections: %d of %d failed, first: %s", k, c.errors, c.errors+c.n, c.firstErr)))
		}
		return s
	})
	rw.row("one connection p50 / p99", func(k string) string {
		c, ok := r.conns[k]
		if !ok || c.n == 0 {
			return rw.na(k, "tcp")
		}
		return ms(c.p50) + " / " + ms(c.p99)
	})
	rw.row("TLS sessions resumed between the proxies", func(k string) string {
		c, ok := r.conns[k]
		switch {
		case !ok || !c.resumeMeasured:
			return "—"
		case c.resumeErr != nil:
			r.fail(k, "resumption", c.resumeErr)
			return rw.na(k, "resumption")
		}
		return fmt.Sprintf("%d of %d", c.resumed, c.resumed+c.full)
	})
	rss := func(pick func(*procStats) ([]int64, []int64)) func(string) string {
		return func(k string) string {
			if k == "B0" {
				return "—"
			}
			ps := r.procs[k]
			if ps == nil {
				return rw.na(k, "path")
			}
			v, anon := pick(ps)
			if len(v) == 0 {
				return "not sampled"
			}
			var parts []string
			for i, x := range v {
				parts = append(parts, fmt.Sprintf("%s (anon %s)", mb(x), mb(anon[i])))
			}
			return strings.Join(parts, " + ")
		}
	}
	rw.row("RSS idle (client + server)", rss(func(p *procStats) ([]int64, []int64) { return p.rssIdleKB, p.anonIdleKB }))
	scraped := rss(func(p *procStats) ([]int64, []int64) { return p.rssScrapedKB, p.anonScrapedKB })
	rw.row(fmt.Sprintf("RSS idle after %d scrapes of /metrics", idleScrapes), func(k string) string {
		if ps := r.procs[k]; ps != nil && len(ps.rssIdleKB) > 0 && len(ps.rssScrapedKB) == 0 {
			return "— (no /metrics)"
		}
		return scraped(k)
	})
	rw.row(fmt.Sprintf("highest RSS at %d rps", top), rss(func(p *procStats) ([]int64, []int64) { return p.rssLoadKB, p.anonLoadKB }))
	rw.row(fmt.Sprintf("CPU s / 1000 req at %d rps", top), func(k string) string {
		if k == "B0" {
			return "—"
		}
		ps := r.procs[k]
		switch {
		case ps == nil:
			return rw.na(k, "path")
		case !ps.haveSample:
			return "not sampled"
		case ps.cpuErr != nil:
			r.fail(k, "cpu", ps.cpuErr)
			return rw.na(k, "cpu")
		}
		return fmt.Sprintf("%.3f", ps.cpuPer1k)
	})

	rw.versusHAProxy()
	rw.targets()
	rw.targets17()
	if len(rw.notes) > 0 {
		fmt.Fprintf(w, "\n")
		for i, n := range rw.notes {
			fmt.Fprintf(w, "[%d] %s  \n", i+1, n)
		}
	}
	fmt.Fprintf(w, "\nGenerator wake-up lag: how late the load generator woke for the requests it was on time for; it is part of the "+
		"latencies above, so a large lag means the machine, not the path, was short of CPU. RSS is VmRSS; anon is RssAnon "+
		"(heap and stacks), the rest is mostly the pages of the binary. CPU counts user+system time of all the path's proxies.\n")
	if r.mtlsErr == nil && r.mtlsIn > 0 {
		fmt.Fprintf(w, "\nB2 is mutual TLS end to end: the server sidecar counted %.0f responses to %s and the client sidecar %.0f from %s (their /metrics).\n",
			r.mtlsIn, clientSPIFF, r.mtlsOut, serverSPIFF)
	} else if r.mtlsErr != nil {
		fmt.Fprintf(w, "\nB2's mTLS could not be confirmed from the sidecars' /metrics: %v\n", r.mtlsErr)
	}
	fmt.Fprintf(w, "\nNew connections: on B2 and H2 each client connection makes the client-side proxy open a new mTLS connection to the server-side one "+
		"(neither pools TCP upstreams). B2's resumed sessions are counted by the server sidecar (tls_handshake_total on its /metrics), "+
		"H2's by the server HAProxy (ssl_fc_is_resumed sends them to a backend of their own).\n")
	fmt.Fprintf(w, "\nHAProxy's mTLS checks the peer's chain against the CA but not its SPIFFE URI SAN (it has no URI SAN matcher); weft-proxy checks both.\n")
}

func orNA(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func ratio(a, b float64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// versusHAProxy compares each weft path with its HAProxy twin: B1 with H1, B2 with H2.
func (rw *reportWriter) versusHAProxy() {
	r, w := rw.r, rw.w
	rate := r.rateNear(targetRate)
	top := r.opts.rates[len(r.opts.rates)-1]
	fmt.Fprintf(w, "\n### weft-proxy against HAProxy (weft ÷ HAProxy; lower is better for latency, CPU and RSS)\n\n")
	fmt.Fprintf(w, "| | B1 ÷ H1 | B2 ÷ H2 |\n|---|---|---|\n")
	pairs := [][2]string{{"B1", "H1"}, {"B2", "H2"}}
	line := func(label string, cell func(weft, hap string) string) {
		fmt.Fprintf(w, "| %s | %s | %s |\n", label, cell(pairs[0][0], pairs[0][1]), cell(pairs[1][0], pairs[1][1]))
	}
	latency := func(pick func(latencyStats) time.Duration) func(a, b string) string {
		return func(a, b string) string {
			da, ok1 := r.added(a, rate, pick)
			db, ok2 := r.added(b, rate, pick)
			if !ok1 || !ok2 {
				return "—"
			}
			return fmt.Sprintf("%s vs %s", addedMS(da), addedMS(db))
		}
	}
	line(fmt.Sprintf("added p50 @%d rps", rate), latency(func(s latencyStats) time.Duration { return s.p50 }))
	line(fmt.Sprintf("added p99 @%d rps", rate), latency(func(s latencyStats) time.Duration { return s.p99 }))
	line("max rps (wrk)", func(a, b string) string {
		x, ok1 := r.wrk[a]
		y, ok2 := r.wrk[b]
		if !ok1 || !ok2 {
			return "—"
		}
		return ratio(x.rps, y.rps)
	})
	line("gRPC unary rps", func(a, b string) string {
		x, ok1 := r.grpc[a]
		y, ok2 := r.grpc[b]
		if !ok1 || !ok2 {
			return "—"
		}
		return ratio(x.rps, y.rps)
	})
	line("new TCP connections/s", func(a, b string) string {
		x, ok1 := r.conns[a]
		y, ok2 := r.conns[b]
		if !ok1 || !ok2 {
			return "—"
		}
		return ratio(x.perSec, y.perSec)
	})
	line("TCP bulk Gbit/s", func(a, b string) string {
		x, ok1 := r.tcp[a]
		y, ok2 := r.tcp[b]
		if !ok1 || !ok2 {
			return "—"
		}
		return ratio(x, y)
	})
	sum := func(v []int64) float64 {
		var s int64
		for _, x := range v {
			s += x
		}
		return float64(s)
	}
	line("RSS idle", func(a, b string) string {
		x, y := r.procs[a], r.procs[b]
		if x == nil || y == nil {
			return "—"
		}
		return ratio(sum(x.rssIdleKB), sum(y.rssIdleKB))
	})
	line(fmt.Sprintf("RSS at %d rps", top), func(a, b string) string {
		x, y := r.procs[a], r.procs[b]
		if x == nil || y == nil || !x.haveSample || !y.haveSample {
			return "—"
		}
		return ratio(sum(x.rssLoadKB), sum(y.rssLoadKB))
	})
	line(fmt.Sprintf("CPU per request at %d rps", top), func(a, b string) string {
		x, y := r.procs[a], r.procs[b]
		if x == nil || y == nil || x.cpuErr != nil || y.cpuErr != nil || !x.haveSample || !y.haveSample {
			return "—"
		}
		return ratio(x.cpuPer1k, y.cpuPer1k)
	})
}

// targets checks the targets.
func (rw *reportWriter) targets() {
	r, w := rw.r, rw.w
	rate := r.rateNear(targetRate)
	top := r.opts.rates[len(r.opts.rates)-1]
	fmt.Fprintf(w, "\n### Targets (issue 4)\n\n| target | measured | met |\n|---|---|---|\n")
	verdict := func(ok, have bool) string {
		switch {
		case !have:
			return "not measured"
		case ok:
			return "yes"
		default:
			return "**no**"
		}
	}
	line := func(target, measured string, ok, have bool) {
		if !have && measured == "" {
			measured = "—"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", target, measured, verdict(ok, have))
	}
	rateNote := ""
	if rate != targetRate {
		rateNote = fmt.Sprintf(" (measured at %d rps)", rate)
	}
	// A latency target is judged only when the generator's own wake-up lag (at the same percentile) was
	// about the same during the direct and the B2 phases: a steady oversleep of the generator cancels in
	// "added over direct", a difference between the phases does not and is the run's resolution.
	latencyTarget := func(name string, limit time.Duration, pick, lag func(latencyStats) time.Duration) {
		target := fmt.Sprintf("B2 adds ≤ %.2f ms %s at %d rps%s", float64(limit)/1e6, name, targetRate, rateNote)
		d, ok := r.added("B2", rate, pick)
		if !ok {
			line(target, "", false, false)
			return
		}
		b0, _ := r.openStat("B0", rate)
		b2, _ := r.openStat("B2", rate)
		if j := (lag(b2) - lag(b0)).Abs(); j > limit {
			if d > limit+j {
				fmt.Fprintf(w, "| %s | %s | **no** (even allowing for the generator's %s wake-up lag differing by %s between the phases) |\n", target, addedMS(d), name, ms(j))
			} else {
				fmt.Fprintf(w, "| %s | %s | inconclusive: the generator's own %s wake-up lag differed by %s between the direct and B2 phases |\n", target, addedMS(d), name, ms(j))
			}
			return
		}
		line(target, addedMS(d), d <= limit, true)
	}
	latencyTarget("p50", targetB2P50, func(s latencyStats) time.Duration { return s.p50 }, func(s latencyStats) time.Duration { return s.wakeLagP50 })
	latencyTarget("p99", targetB2P99, func(s latencyStats) time.Duration { return s.p99 }, func(s latencyStats) time.Duration { return s.wakeLagP99 })
	b1, ok1 := r.wrk["B1"]
	b0, ok0 := r.wrk["B0"]
	h1, okh := r.wrk["H1"]
	v := 0.0
	if ok1 && ok0 && b0.rps > 0 {
		v = 100 * b1.rps / b0.rps
	}
	line(fmt.Sprintf("B1 max rps ≥ %.0f%% of direct", targetB1MaxPct), cond(ok1 && ok0, fmt.Sprintf("%.0f%%", v)), v >= targetB1MaxPct, ok1 && ok0)
	line("B1 max rps ≥ HAProxy's (H1)", cond(ok1 && okh, fmt.Sprintf("%.0f vs %.0f rps", b1.rps, h1.rps)), b1.rps >= h1.rps, ok1 && okh)
	rssLine := func(target string, limitMB float64, pick func(*procStats) []int64) {
		var worst int64
		var names []string
		have := false
		for _, k := range []string{"B1", "B2"} {
			ps := r.procs[k]
			if ps == nil {
				continue
			}
			for i, x := range pick(ps) {
				have = true
				if x > worst {
					worst = x
					names = []string{ps.names[i]}
				}
			}
		}
		measured := ""
		if have {
			measured = fmt.Sprintf("largest %s (%s)", mb(worst), strings.Join(names, ""))
		}
		line(target, measured, float64(worst)/1024 <= limitMB, have)
	}
	rssLine(fmt.Sprintf("RSS ≤ %.0f MB idle, each weft-proxy", targetRSSIdleMB), targetRSSIdleMB, func(p *procStats) []int64 { return p.rssIdleKB })
	// Issue 5's target: new mTLS connections per second between two proxies, with session resumption.
	c, okc := r.conns["B2"]
	measured := ""
	if okc {
		measured = fmt.Sprintf("%.0f/s, %d failed; %d of %d TLS sessions resumed", c.perSec, c.errors, c.resumed, c.resumed+c.full)
	}
	target := fmt.Sprintf("B2 new mTLS connections ≥ %d/s (issue 5)", targetConnsPerS)
	line(target, measured, okc && c.perSec >= targetConnsPerS && c.errors == 0, okc)
	rssLine(fmt.Sprintf("RSS ≤ %.0f MB at 2000 rps, each weft-proxy%s", targetRSSLoadMB, cond(top != 2000, fmt.Sprintf(" (measured at %d rps)", top))), targetRSSLoadMB,
		func(p *procStats) []int64 { return p.rssLoadKB })
	rw.floor(rate)
}

// floor puts B2's latency target beside the machine's floor: what F2's two no-op relay processes add
// over direct, and what B2's (and H2's) two proxies add beyond that.
func (rw *reportWriter) floor(rate int) {
	r, w := rw.r, rw.w
	p50 := func(s latencyStats) time.Duration { return s.p50 }
	p99 := func(s latencyStats) time.Duration { return s.p99 }
	fmt.Fprintf(w, "\n#### B2's latency target against the machine's floor\n\n"+
		"F1 and F2 put one and two no-op TCP relay processes (HAProxy mode tcp: no HTTP, no TLS) between the client and the app: "+
		"what this machine charges for a request to cross one or two more processes (cross-process wake-ups), with no proxy work. "+
		"B2 and H2 cross two proxy processes, so \"over F2\" is what their two proxies add beyond the machine's cost of two relay processes. "+
		"The target (≤ %s p50, ≤ %s p99 over direct) is judged above, over direct. Each figure is the difference of two phases of "+
		"the open loop; the generator wake-up lag rows above show how much the machine itself differed between them.\n\n",
		addedMS(targetB2P50), addedMS(targetB2P99))
	fmt.Fprintf(w, "| at %d rps | added p50 | added p99 |\n|---|---|---|\n", rate)
	for _, l := range []struct{ label, key, base string }{
		{"F1 (1 relay process) over direct", "F1", "B0"},
		{"F2 (2 relay processes) over direct: the floor", "F2", "B0"},
		{"B2 over direct", "B2", "B0"},
		{"B2 over F2: what the two sidecars add beyond two relay processes", "B2", "F2"},
		{"H2 over direct", "H2", "B0"},
		{"H2 over F2: what HAProxy's two hops add beyond two relay processes", "H2", "F2"},
	} {
		cell := func(pick func(latencyStats) time.Duration) string {
			d, ok := r.over(l.key, l.base, rate, pick)
			if !ok {
				return "—"
			}
			return addedMS(d)
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", l.label, cell(p50), cell(p99))
	}
}

func cond(ok bool, s string) string {
	if ok {
		return s
	}
	return ""
}

func beforeNote(o options) string {
	if o.weftBefore == "" {
		return ""
	}
	return " A1/A2 are B1/B2 through an earlier weft-proxy binary (" + o.weftBefore + "), measured in the same run, taking turns with the others at each rate."
}
