// Command proxy is the `make bench-proxy` harness: weft-proxy beside a direct connection and beside
// HAProxy (the reference proxy), all in one run on loopback, reported as ratios.
//
// Paths: B0 direct (client → server); B1 one weft-proxy hop (its outbound listener on a "ClusterIP",
// no iptables needed); B2 client sidecar → mTLS HTTP/2 → server sidecar → server (certificates from
// files, --cert-dir); H1 and H2 the same through HAProxy; F1 and F2 the floor: the HTTP app behind one
// and two no-op TCP relay processes (HAProxy mode tcp), what the machine charges for crossing one or
// two more processes, measured in the latency phases and wrk only. The proxies are configured by an
// in-process xDS server (go-control-plane's snapshot cache) with the resource shapes weft-control emits.
//
// Measured: open-loop HTTP/1.1 GETs of 1 KB at constant rates, latency from the intended send time
// (p50/p99/p999 added over direct); closed-loop maximum (wrk); gRPC unary (closed loop); TCP bulk;
// RSS of each proxy idle and under load (/proc/<pid>/status VmRSS); CPU seconds per 1000 requests
// (/proc/<pid>/stat); new TCP connections per second through the TCP path (connect, echo 64 bytes,
// close, closed loop), which on B2/H2 is a new mTLS connection between the two proxies each time.
//
//	go run ./bench/proxy [-weft-proxy bin/weft-proxy] [-rates 200,1000,2000] [-open 8s] ...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	weftBin, haproxy, wrk string
	weftBefore            string // an earlier weft-proxy binary measured beside (paths A1, A2)
	rates                 []int
	open, warm            time.Duration
	openConns             int
	closed                time.Duration
	wrkThreads, wrkConns  int
	wrkRounds             int
	grpcDur               time.Duration
	grpcInflight          int
	grpcRounds            int           // gRPC unary rounds (issue 17: the median round with the range)
	grpcStreams           int           // bidi streams of the gRPC streaming phase
	grpcStreamDur         time.Duration // the gRPC streaming phase (0: grpcDur)
	grpcOpen              time.Duration // the gRPC open-loop phase at the target rate (0: grpcDur)
	tcpDur                time.Duration
	connDur               time.Duration // the new-connections phase
	connWorkers           int
	keep                  bool            // keep the temp dir (configs, certificates, proxy logs)
	cpuProfile            string          // write CPU profiles of the weft-proxies here (needs a -tags weftpprof build)
	only                  map[string]bool // measure only these paths (nil: all)
	wrkOnly               map[string]bool // run wrk only on these paths (nil: all; the smoke test saves time)
	progress              io.Writer
}

func main() {
	var o options
	paths := flag.String("paths", "B0,F1,F2,B1,B2,H1,H2,A1,A2", "the paths to measure (B0 is the baseline of every ratio; F1/F2 are one and two no-op TCP relay processes, the machine's floor; A1/A2 only with -weft-proxy-before)")
	rates := flag.String("rates", "200,1000,2000", "open-loop request rates (requests/s), comma-separated")
	flag.StringVar(&o.weftBin, "weft-proxy", "bin/weft-proxy", "the weft-proxy binary (make build)")
	flag.StringVar(&o.weftBefore, "weft-proxy-before", "", "an earlier weft-proxy binary to measure in the same run as paths A1 and A2 (B1 and B2 through it), for before/after figures")
	flag.StringVar(&o.haproxy, "haproxy", "haproxy", "the HAProxy binary (Debian package haproxy; make apt)")
	flag.StringVar(&o.wrk, "wrk", "wrk", "the wrk binary (Debian package wrk; make apt)")
	flag.DurationVar(&o.open, "open", 8*time.Second, "duration of each open-loop phase")
	flag.IntVar(&o.openConns, "open-conns", 32, "connections of the open-loop generator (the rate is spread over them)")
	flag.DurationVar(&o.warm, "warm", time.Second, "warm-up before each open-loop phase (not measured)")
	flag.DurationVar(&o.closed, "closed", 6*time.Second, "wrk time per path, split over -wrk-rounds runs")
	flag.IntVar(&o.wrkRounds, "wrk-rounds", 3, "wrk rounds: each path runs once per round, each round in a rotated order; the median round is reported")
	flag.IntVar(&o.wrkThreads, "wrk-threads", 2, "wrk threads")
	flag.IntVar(&o.wrkConns, "wrk-conns", 64, "wrk connections")
	flag.DurationVar(&o.grpcDur, "grpc", 3*time.Second, "duration of each gRPC phase")
	flag.IntVar(&o.grpcInflight, "grpc-inflight", 16, "concurrent gRPC calls")
	flag.IntVar(&o.grpcRounds, "grpc-rounds", 3, "gRPC unary rounds: each path once per round, each round in a rotated order; the median round is reported")
	flag.IntVar(&o.grpcStreams, "grpc-streams", 16, "bidi streams of the gRPC streaming phase (one connection)")
	flag.DurationVar(&o.grpcStreamDur, "grpc-stream", 3*time.Second, "duration of each gRPC streaming phase")
	flag.DurationVar(&o.grpcOpen, "grpc-open", 5*time.Second, "duration of each gRPC open-loop phase at 1000 rps (the latency targets of issue 17)")
	flag.DurationVar(&o.tcpDur, "tcp", 3*time.Second, "duration of each TCP bulk phase")
	flag.DurationVar(&o.connDur, "conns", 3*time.Second, "duration of each new-connections phase")
	flag.IntVar(&o.connWorkers, "conn-workers", 16, "concurrent workers of the new-connections phase (each opens, echoes, closes, repeats)")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (configs, certificates, proxy logs)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write CPU profiles of the weft-proxies during the top-rate open-loop, the wrk and the gRPC phases to this directory (needs a weft-proxy built with -tags weftpprof)")
	flag.Parse()
	o.progress = os.Stderr
	if err := o.parseRates(*rates); err != nil {
		fail(err)
	}
	o.only = map[string]bool{}
	for _, p := range strings.Split(*paths, ",") {
		o.only[strings.ToUpper(strings.TrimSpace(p))] = true
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, o)
	if err != nil {
		fail(err)
	}
	res.report(os.Stdout)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench-proxy:", err)
	os.Exit(1)
}

func (o *options) parseRates(s string) error {
	o.rates = nil
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return fmt.Errorf("-rates: %q is not a positive number", f)
		}
		o.rates = append(o.rates, n)
	}
	slices.Sort(o.rates)
	return nil
}

// lookBin resolves a binary; "" when it is not there.
func lookBin(name string) string {
	if strings.ContainsRune(name, '/') {
		if abs, err := filepath.Abs(name); err == nil {
			if st, err := os.Stat(abs); err == nil && !st.IsDir() {
				return abs
			}
		}
		return ""
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return ""
	}
	return p
}

// procStats is the RSS and CPU of a path's proxies.
type procStats struct {
	names      []string
	rssIdleKB  []int64 // VmRSS
	anonIdleKB []int64 // RssAnon
	// rssScrapedKB and anonScrapedKB are sampled after idleScrapes reads of /metrics (weft-proxy only).
	rssScrapedKB, anonScrapedKB []int64
	rssLoadKB                   []int64 // highest sample during the top-rate phase
	anonLoadKB                  []int64
	cpuPer1k                    float64 // CPU seconds of all the path's proxies per 1000 requests at the top rate
	cpuErr                      error
	haveSample                  bool
}

type results struct {
	opts  options
	when  time.Time
	paths []*path
	open  map[string]map[int]latencyStats
	wrk   map[string]wrkResult
	grpc  map[string]grpcResult
	tcp   map[string]float64
	conns map[string]connResult // new connections per second over the TCP path
	errs  map[string]error      // "<path>/<measurement>" → why it has no number
	procs map[string]*procStats
	hap   string    // HAProxy version line
	load  [2]string // /proc/loadavg before and after
	// mtlsIn and mtlsOut are B2's evidence, from the sidecars' /metrics: 200 responses over mTLS with
	// the peer's SPIFFE identity, on the server's inbound and the client's outbound side.
	mtlsIn, mtlsOut float64
	mtlsErr         error
	// Issue 17: the gRPC unary rounds' CPU per call and RSS, gRPC streaming, gRPC latency at the
	// target rate (open loop).
	grpcProcs  map[string]*grpcProcStats
	grpcStream map[string]streamResult
	grpcOpen   map[string]latencyStats
	// relayed is, for F1 and F2, the sessions each relay process (client side first) took by the end
	// of the open-loop phases: the evidence that the floor's traffic crossed each of them.
	relayed map[string][]int64
}

func (r *results) fail(key, what string, err error) { r.errs[key+"/"+what] = err }

func (r *results) err(key, what string) error {
	if e := r.errs[key+"/"+what]; e != nil {
		return e
	}
	return r.errs[key+"/path"]
}

func run(ctx context.Context, o options) (*results, error) {
	logf := func(format string, args ...any) {
		if o.progress != nil {
			fmt.Fprintf(o.progress, "bench-proxy: "+format+"\n", args...)
		}
	}
	dir, err := os.MkdirTemp("", "weft-bench-proxy-")
	if err != nil {
		return nil, err
	}
	if o.keep {
		logf("working directory %s (kept)", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	xds, err := startXDS(ctx)
	if err != nil {
		return nil, err
	}
	defer xds.stop()
	be, err := startBackends()
	if err != nil {
		return nil, err
	}
	defer be.stop()

	t := &topology{dir: dir, weftBin: lookBin(o.weftBin), haproxy: lookBin(o.haproxy), xds: xds, be: be, before: o.weftBefore,
		progress: func(s string) { logf("%s", s) }}
	defer t.stop()
	if err := t.build(ctx); err != nil {
		return nil, err
	}
	res := &results{opts: o, when: time.Now().UTC(), paths: t.paths, open: map[string]map[int]latencyStats{},
		wrk: map[string]wrkResult{}, grpc: map[string]grpcResult{}, tcp: map[string]float64{}, conns: map[string]connResult{},
		errs: map[string]error{}, procs: map[string]*procStats{}, relayed: map[string][]int64{},
		grpcProcs: map[string]*grpcProcStats{}, grpcStream: map[string]streamResult{}, grpcOpen: map[string]latencyStats{}}
	if o.grpcStreamDur <= 0 {
		o.grpcStreamDur = o.grpcDur
	}
	if o.grpcOpen <= 0 {
		o.grpcOpen = o.grpcDur
	}
	if o.grpcStreams <= 0 {
		o.grpcStreams = o.grpcInflight
	}
	res.opts = o
	if t.haproxy != "" {
		if out, err := exec.Command(t.haproxy, "-v").Output(); err == nil {
			res.hap, _, _ = strings.Cut(string(out), "\n")
		}
	}
	if o.cpuProfile != "" {
		if err := os.MkdirAll(o.cpuProfile, 0o755); err != nil {
			return nil, err
		}
		for _, p := range t.paths {
			for _, pr := range p.procs {
				if pr.admin == "" || (o.only != nil && !o.only[p.key]) || isBefore(p.key) {
					continue
				}
				if err := checkPprof(pr); err != nil {
					return nil, err
				}
			}
		}
	}
	profile := func(phase string, p *path, d time.Duration) *profiler {
		if o.cpuProfile == "" || isBefore(p.key) {
			return nil
		}
		return startProfiles(o.cpuProfile, phase, p.procs, d)
	}
	profiled := func(pr *profiler) {
		for _, err := range pr.wait() {
			logf("profile: %v", err)
		}
	}
	res.load[0] = loadavg()
	defer func() { res.load[1] = loadavg() }()
	var live []*path
	for _, p := range t.paths {
		if o.only != nil && !o.only[p.key] {
			res.fail(p.key, "path", errors.New("not selected (-paths)"))
			continue
		}
		if p.err != nil {
			res.fail(p.key, "path", p.err)
			logf("%s %s does not work: %v", p.key, p.name, p.err)
			continue
		}
		if p.tcpErr != nil {
			res.fail(p.key, "tcp", p.tcpErr)
		}
		live = append(live, p)
		if p.floor {
			continue // latency (and wrk) only: no RSS or CPU of the relays
		}
		ps := &procStats{}
		for _, pr := range p.procs {
			rss, anon, err := pr.mem()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", pr.name, err)
			}
			ps.names = append(ps.names, pr.name)
			ps.rssIdleKB = append(ps.rssIdleKB, rss)
			ps.anonIdleKB = append(ps.anonIdleKB, anon)
		}
		res.procs[p.key] = ps
	}
	// Sidecars are scraped: each weft-proxy's /metrics is read idleScrapes times (ten minutes of a 15 s
	// scrape interval), then its RSS is read again. HAProxy has no /metrics here.
	for _, p := range live {
		ps := res.procs[p.key]
		for _, pr := range p.procs {
			if pr.admin == "" {
				continue
			}
			if err := scrape(pr.admin, idleScrapes); err != nil {
				return nil, fmt.Errorf("%s: %w", pr.name, err)
			}
			rss, anon, err := pr.mem()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", pr.name, err)
			}
			ps.rssScrapedKB = append(ps.rssScrapedKB, rss)
			ps.anonScrapedKB = append(ps.anonScrapedKB, anon)
		}
	}

	// Open loop: the paths take turns at each rate.
	top := o.rates[len(o.rates)-1]
	for _, rate := range o.rates {
		for _, p := range live {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			logf("open loop %d rps: %s %s", rate, p.key, p.name)
			conns := openConns(o.openConns)
			openLoop(ctx, conns, p.http, rate, o.warm)
			var sample *sampler
			var prof *profiler
			if rate == top && !p.floor {
				sample = startSampler(p.procs)
				prof = profile("open"+strconv.Itoa(rate), p, o.open)
			}
			st := openLoop(ctx, conns, p.http, rate, o.open)
			closeConns(conns)
			profiled(prof)
			if sample != nil {
				ps := res.procs[p.key]
				ps.rssLoadKB, ps.anonLoadKB, ps.cpuPer1k, ps.cpuErr = sample.finish(st.sent)
				ps.haveSample = true
			}
			if res.open[p.key] == nil {
				res.open[p.key] = map[int]latencyStats{}
			}
			res.open[p.key][rate] = st
			if st.errors > 0 {
				logf("  %d of %d requests failed, first: %s", st.errors, st.errors+st.n, st.firstErr)
			}
		}
	}

	for _, p := range live {
		for _, url := range p.relayStats {
			n, err := relaySessions(url)
			if err != nil {
				res.fail(p.key, "relay", err)
			}
			res.relayed[p.key] = append(res.relayed[p.key], n)
		}
	}

	if b2 := t.paths[2]; b2.err == nil && (o.only == nil || o.only["B2"]) {
		res.mtlsIn, res.mtlsOut, res.mtlsErr = mtlsEvidence(b2.procs[0], b2.procs[1])
	}
	wrk := lookBin(o.wrk)
	// The closed loop runs in rounds, each path once per round, each round starting one path later:
	// a path's place in the order moved its rate by more than the differences measured (the run
	// right after direct's was the slowest, whichever path it was), so each path takes each place in
	// turn and reports its median round.
	rounds := max(1, o.wrkRounds)
	each := max(time.Second, (o.closed / time.Duration(rounds)).Round(time.Second))
	rates := map[string][]wrkResult{}
	for r := range rounds {
		for i := range live {
			p := live[(i+r)%len(live)]
			if o.wrkOnly != nil && !o.wrkOnly[p.key] {
				res.fail(p.key, "wrk", errors.New("not selected"))
				continue
			}
			if wrk == "" {
				res.fail(p.key, "wrk", errors.New("wrk not installed (make apt)"))
				continue
			}
			if res.errs[p.key+"/wrk"] != nil {
				continue
			}
			logf("closed loop (wrk -c%d), round %d of %d: %s %s", o.wrkConns, r+1, rounds, p.key, p.name)
			var prof *profiler
			if r == 0 {
				prof = profile("wrk", p, each)
			}
			w, err := runWrk(ctx, wrk, p.http, o.wrkThreads, o.wrkConns, each)
			profiled(prof)
			if err != nil {
				res.fail(p.key, "wrk", err)
				continue
			}
			rates[p.key] = append(rates[p.key], w)
		}
	}
	for k, ws := range rates {
		if res.errs[k+"/wrk"] == nil {
			res.wrk[k] = medianWrk(ws)
		}
	}
	runGRPC(ctx, o, res, live, logf, profile, profiled)
	for _, p := range live {
		if p.tcpErr != nil || p.floor {
			continue
		}
		logf("TCP bulk: %s %s", p.key, p.name)
		g, err := tcpBulk(ctx, p.tcp, o.tcpDur, be.bulk)
		if err != nil {
			res.fail(p.key, "tcp", err)
			continue
		}
		res.tcp[p.key] = g
	}
	for _, p := range live {
		if p.tcpErr != nil || p.floor {
			continue
		}
		logf("new connections (%d workers): %s %s", o.connWorkers, p.key, p.name)
		var r0, f0 int64
		var serr error
		if p.hapStats != "" {
			r0, f0, serr = hapTLSSessions(p.hapStats)
		}
		if p.weftTCPServerAdmin != "" {
			r0, f0, serr = weftTLSSessions(p.weftTCPServerAdmin)
		}
		c := newConns(ctx, p.tcp, o.connWorkers, o.connDur)
		switch {
		case p.hapStats != "":
			r1, f1, err := hapTLSSessions(p.hapStats)
			c.resumed, c.full, c.resumeErr, c.resumeMeasured = r1-r0, f1-f0, errors.Join(serr, err), true
		case p.weftTCPServerAdmin != "":
			r1, f1, err := weftTLSSessions(p.weftTCPServerAdmin)
			c.resumed, c.full, c.resumeErr, c.resumeMeasured = r1-r0, f1-f0, errors.Join(serr, err), true
		}
		if c.errors > 0 {
			logf("  %d of %d connections failed, first: %s", c.errors, c.errors+c.n, c.firstErr)
		}
		res.conns[p.key] = c
	}
	return res, nil
}

// sampler watches the RSS and CPU of a path's proxies during a phase.
type sampler struct {
	procs   []*proc
	cpu0    float64
	cpuErr  error
	maxRSS  []int64
	maxAnon []int64
	stop    chan struct{}
	stopped chan struct{}
}

func startSampler(procs []*proc) *sampler {
	s := &sampler{procs: procs, maxRSS: make([]int64, len(procs)), maxAnon: make([]int64, len(procs)), stop: make(chan struct{}), stopped: make(chan struct{})}
	s.cpu0, s.cpuErr = totalCPU(procs)
	go func() {
		defer close(s.stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, p := range procs {
				if rss, anon, err := p.mem(); err == nil {
					s.maxRSS[i] = max(s.maxRSS[i], rss)
					s.maxAnon[i] = max(s.maxAnon[i], anon)
				}
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops sampling: the highest VmRSS and RssAnon of each process, and the CPU seconds of all of
// them per 1000 requests.
func (s *sampler) finish(requests int) (rss, anon []int64, cpuPer1k float64, err error) {
	close(s.stop)
	<-s.stopped
	cpu1, err := totalCPU(s.procs)
	if err = errors.Join(s.cpuErr, err); err != nil {
		return s.maxRSS, s.maxAnon, 0, err
	}
	if requests == 0 {
		return s.maxRSS, s.maxAnon, 0, errors.New("no requests")
	}
	return s.maxRSS, s.maxAnon, (cpu1 - s.cpu0) / (float64(requests) / 1000), nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func totalCPU(procs []*proc) (float64, error) {
	var sum float64
	for _, p := range procs {
		c, err := p.cpuSeconds()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.name, err)
		}
		sum += c
	}
	return sum, nil
}

// isBefore tells the paths through the -weft-proxy-before binary (not profiled: it may be a normal build).
func isBefore(key string) bool { return key == "A1" || key == "A2" }
