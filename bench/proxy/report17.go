package main

import (
	"fmt"
	"strings"
	"time"
)

// Targets of issue 17 (HTTP/2 and gRPC at HAProxy's level; latency stated over the floor).
const (
	target17GRPCRatio    = 1.0 // gRPC unary and streaming rates ≥ HAProxy's on the same path
	target17CPURatio     = 1.0 // CPU per gRPC call ≤ HAProxy's
	target17RSSGRPCMB    = 20.0
	target17LatencyRatio = 0.8 // the sidecar pair's added latency over F2 ≤ 0.8 × HAProxy's two hops over F2
)

// grpcRows are the gRPC rows of the "against direct" table beyond unary: streaming, latency at the
// target rate, CPU per call and RSS under gRPC load.
func (rw *reportWriter) grpcRows() {
	r := rw.r
	rate := r.rateNear(targetRate)
	rw.row(fmt.Sprintf("gRPC streaming msg/s (%d bidi streams)", r.opts.grpcStreams), func(k string) string {
		s, ok := r.grpcStream[k]
		if !ok {
			return "—"
		}
		v := fmt.Sprintf("%.0f", s.msgsPerSec)
		if k != "B0" {
			v += pct(s.msgsPerSec, r.grpcStream["B0"].msgsPerSec)
		}
		if s.errors > 0 {
			v += fmt.Sprintf(" (%d failed %s)", s.errors, rw.note(fmt.Sprintf("%s gRPC streaming: %d failures, first: %s", k, s.errors, s.firstErr)))
		}
		return v
	})
	for _, q := range []struct {
		name string
		pick func(latencyStats) time.Duration
	}{{"p50", func(s latencyStats) time.Duration { return s.p50 }}, {"p99", func(s latencyStats) time.Duration { return s.p99 }}} {
		rw.row(fmt.Sprintf("gRPC %s @%d rps (open loop)", q.name, rate), func(k string) string {
			st, ok := r.grpcOpen[k]
			if !ok || st.n == 0 {
				return "—"
			}
			s := ms(q.pick(st))
			if b, ok := r.grpcOpen["B0"]; ok && b.n > 0 && k != "B0" {
				s = addedMS(q.pick(st) - q.pick(b))
			}
			if st.errors > 0 && q.name == "p50" {
				s += fmt.Sprintf(" (%d failed %s)", st.errors, rw.note(fmt.Sprintf("%s gRPC @%d rps: %d of %d calls failed, first: %s", k, rate, st.errors, st.errors+st.n, st.firstErr)))
			}
			return s
		})
	}
	rw.row(fmt.Sprintf("gRPC generator wake-up lag p50 / p99 @%d rps", rate), func(k string) string {
		st, ok := r.grpcOpen[k]
		if !ok || st.n == 0 {
			return "—"
		}
		return ms(st.wakeLagP50) + " / " + ms(st.wakeLagP99)
	})
	rw.row("CPU ms per gRPC unary call", func(k string) string {
		g := r.grpcProcs[k]
		switch {
		case g == nil:
			return "—"
		case g.err != nil:
			return "n/a " + rw.note(fmt.Sprintf("%s CPU per gRPC call: %v", k, g.err))
		}
		return fmt.Sprintf("%.3f", float64(g.cpuPerCall)/1e6)
	})
	rw.row("highest RSS under gRPC unary load", func(k string) string {
		g := r.grpcProcs[k]
		if g == nil || len(g.rssKB) == 0 {
			return "—"
		}
		var parts []string
		for _, x := range g.rssKB {
			parts = append(parts, mb(x))
		}
		return strings.Join(parts, " + ")
	})
}

// overF2 is what a path adds over F2 at rate, for HTTP/1.1 (open) or gRPC (grpcOpen).
func (r *results) overF2(key string, rate int, grpcPhase bool, pick func(latencyStats) time.Duration) (time.Duration, bool) {
	if !grpcPhase {
		return r.over(key, "F2", rate, pick)
	}
	a, ok1 := r.grpcOpen[key]
	b, ok2 := r.grpcOpen["F2"]
	if !ok1 || !ok2 || a.n == 0 || b.n == 0 {
		return 0, false
	}
	return pick(a) - pick(b), true
}

// lagSpread is how far apart the generator's wake-up lag (p50, or p99) was during the phases of keys.
func (r *results) lagSpread(rate int, grpcPhase, p99 bool, keys ...string) time.Duration {
	var lo, hi time.Duration
	for i, k := range keys {
		var st latencyStats
		var ok bool
		if grpcPhase {
			st, ok = r.grpcOpen[k]
		} else {
			st, ok = r.openStat(k, rate)
		}
		if !ok {
			return 0
		}
		lag := st.wakeLagP50
		if p99 {
			lag = st.wakeLagP99
		}
		if i == 0 || lag < lo {
			lo = lag
		}
		if i == 0 || lag > hi {
			hi = lag
		}
	}
	return hi - lo
}

// targets17 is issue 17's targets section: each weft figure beside HAProxy's from the same run.
func (rw *reportWriter) targets17() {
	r, w := rw.r, rw.w
	rate := r.rateNear(targetRate)
	fmt.Fprintf(w, "\n### Targets (issue 17: HTTP/2 and gRPC)\n\n| target | measured | met |\n|---|---|---|\n")
	line := func(target, measured, verdict string) {
		fmt.Fprintf(w, "| %s | %s | %s |\n", target, orNA(measured, "—"), verdict)
	}
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	pairs := [][2]string{{"B1", "H1"}, {"B2", "H2"}}
	rng := func(g grpcResult) string {
		if g.max > g.min {
			return fmt.Sprintf(" [%.0f–%.0f]", g.min, g.max)
		}
		return ""
	}
	for _, p := range pairs {
		g, ok1 := r.grpc[p[0]]
		h, ok2 := r.grpc[p[1]]
		target := fmt.Sprintf("gRPC unary rps %s ≥ %.1f× %s (median of %d rounds)", p[0], target17GRPCRatio, p[1], max(1, r.opts.grpcRounds))
		if !ok1 || !ok2 || h.rps == 0 {
			line(target, "", "not measured")
			continue
		}
		line(target, fmt.Sprintf("%.0f%s vs %.0f%s: %s", g.rps, rng(g), h.rps, rng(h), ratio(g.rps, h.rps)), yes(g.rps >= target17GRPCRatio*h.rps))
	}
	for _, p := range pairs {
		g, ok1 := r.grpcStream[p[0]]
		h, ok2 := r.grpcStream[p[1]]
		target := fmt.Sprintf("gRPC streaming msg/s %s ≥ %.1f× %s", p[0], target17GRPCRatio, p[1])
		if !ok1 || !ok2 || h.msgsPerSec == 0 {
			line(target, "", "not measured")
			continue
		}
		line(target, fmt.Sprintf("%.0f vs %.0f: %s", g.msgsPerSec, h.msgsPerSec, ratio(g.msgsPerSec, h.msgsPerSec)), yes(g.msgsPerSec >= target17GRPCRatio*h.msgsPerSec))
	}
	for _, p := range pairs {
		g, h := r.grpcProcs[p[0]], r.grpcProcs[p[1]]
		target := fmt.Sprintf("CPU per gRPC call %s ≤ %.1f× %s", p[0], target17CPURatio, p[1])
		if g == nil || h == nil || g.err != nil || h.err != nil || h.cpuPerCall == 0 {
			line(target, "", "not measured")
			continue
		}
		line(target, fmt.Sprintf("%.3f vs %.3f ms: %s", float64(g.cpuPerCall)/1e6, float64(h.cpuPerCall)/1e6, ratio(float64(g.cpuPerCall), float64(h.cpuPerCall))),
			yes(float64(g.cpuPerCall) <= target17CPURatio*float64(h.cpuPerCall)))
	}
	// RSS: idle (the idle samples of the HTTP/1.1 part) and under gRPC unary load, every weft-proxy of B1
	// and B2.
	rss := func(target string, limit float64, pick func(k string) ([]int64, []string)) {
		var worst int64
		var who string
		for _, k := range []string{"B1", "B2"} {
			vs, names := pick(k)
			for i, v := range vs {
				if v > worst {
					worst, who = v, names[i]
				}
			}
		}
		if who == "" {
			line(target, "", "not measured")
			return
		}
		line(target, fmt.Sprintf("largest %s (%s)", mb(worst), who), yes(float64(worst)/1024 <= limit))
	}
	rss(fmt.Sprintf("sidecar RSS idle ≤ %.0f MB, each weft-proxy", targetRSSIdleMB), targetRSSIdleMB, func(k string) ([]int64, []string) {
		if ps := r.procs[k]; ps != nil {
			return ps.rssIdleKB, ps.names
		}
		return nil, nil
	})
	rss(fmt.Sprintf("sidecar RSS under gRPC load ≤ %.0f MB, each weft-proxy", target17RSSGRPCMB), target17RSSGRPCMB, func(k string) ([]int64, []string) {
		g, ps := r.grpcProcs[k], r.procs[k]
		if g == nil || ps == nil || len(g.rssKB) != len(ps.names) {
			return nil, nil
		}
		return g.rssKB, ps.names
	})
	// Latency over the floor: (B2 − F2) ÷ (H2 − F2) at the target rate.
	for _, proto := range []struct {
		name string
		grpc bool
	}{{"HTTP/1.1", false}, {"gRPC", true}} {
		for _, q := range []struct {
			name string
			pick func(latencyStats) time.Duration
		}{{"p50", func(s latencyStats) time.Duration { return s.p50 }}, {"p99", func(s latencyStats) time.Duration { return s.p99 }}} {
			target := fmt.Sprintf("%s %s @%d rps: (B2 − F2) ≤ %.1f × (H2 − F2)", proto.name, q.name, rate, target17LatencyRatio)
			b, ok1 := r.overF2("B2", rate, proto.grpc, q.pick)
			h, ok2 := r.overF2("H2", rate, proto.grpc, q.pick)
			// As issue 4's targets: when the generator's own wake-up lag (same percentile) differed
			// between the three phases by more than what HAProxy added, the run cannot tell.
			jitter := r.lagSpread(rate, proto.grpc, q.name == "p99", "B2", "H2", "F2")
			switch {
			case !ok1 || !ok2:
				line(target, "", "not measured")
			case h <= 0:
				line(target, fmt.Sprintf("B2 %s, H2 %s over F2", addedMS(b), addedMS(h)), "inconclusive: HAProxy's two hops added nothing over F2 in this run")
			case jitter > h:
				line(target, fmt.Sprintf("B2 %s, H2 %s over F2: %.2f", addedMS(b), addedMS(h), float64(b)/float64(h)),
					fmt.Sprintf("inconclusive: the generator's own %s wake-up lag differed by %s between the phases", q.name, ms(jitter)))
			default:
				v := float64(b) / float64(h)
				line(target, fmt.Sprintf("B2 %s, H2 %s over F2: %.2f", addedMS(b), addedMS(h), v), yes(v <= target17LatencyRatio))
			}
		}
	}
	// HTTP/1.1 B1 beside the previous binary (A1), so that nothing regresses.
	target := "HTTP/1.1 B1 beside the previous binary (A1): max rps, added p50 / p99"
	if r.opts.weftBefore == "" {
		line(target, "", "not measured (run with -weft-proxy-before)")
	} else {
		var parts []string
		if b, ok := r.wrk["B1"]; ok {
			if a, ok := r.wrk["A1"]; ok {
				parts = append(parts, fmt.Sprintf("wrk %.0f vs %.0f (%s)", b.rps, a.rps, ratio(b.rps, a.rps)))
			}
		}
		for _, q := range []struct {
			name string
			pick func(latencyStats) time.Duration
		}{{"p50", func(s latencyStats) time.Duration { return s.p50 }}, {"p99", func(s latencyStats) time.Duration { return s.p99 }}} {
			b, ok1 := r.added("B1", rate, q.pick)
			a, ok2 := r.added("A1", rate, q.pick)
			if ok1 && ok2 {
				parts = append(parts, fmt.Sprintf("%s @%d %s vs %s", q.name, rate, addedMS(b), addedMS(a)))
			}
		}
		line(target, strings.Join(parts, "; "), "(for comparison)")
	}
}
