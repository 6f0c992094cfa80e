package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Issue 17's measurements: gRPC through the sidecars against HAProxy in the same run.
//
//   - gRPC unary in rounds (-grpc-rounds), each round in an order rotated by one path as wrk's, the
//     median round reported with the rounds' range; the CPU of the path's proxies is read over every
//     round and divided by the calls, and their highest RSS sampled meanwhile ("under gRPC load").
//   - gRPC streaming: -grpc-streams bidi streams on one connection, each echoing 1 KB messages as fast
//     as the path takes them (each stream keeps streamWindow messages in flight); messages/s received.
//   - gRPC open loop at the target rate (1000 rps): unary calls started at start + i/rate on one
//     connection, latency from the intended time, on B0, F1/F2 (the floor: relays in front of the gRPC
//     app), the proxies, and the before binary; the targets divide the sidecar pair's added latency
//     over F2 by HAProxy's.

// grpcProcStats are a path's proxies during the gRPC unary rounds.
type grpcProcStats struct {
	cpuPerCall time.Duration // CPU of all the path's proxies per call
	rssKB      []int64       // highest VmRSS of each proxy
	err        error
}

// streamResult is the gRPC streaming phase of a path.
type streamResult struct {
	msgsPerSec float64
	errors     int64
	firstErr   string
}

// medianGRPC is the median round (the lower middle of an even count) with the range of the rounds'
// rates and every round's failures.
func medianGRPC(gs []grpcResult) grpcResult {
	sorted := slices.Clone(gs)
	slices.SortFunc(sorted, func(a, b grpcResult) int {
		switch {
		case a.rps < b.rps:
			return -1
		case a.rps > b.rps:
			return 1
		}
		return 0
	})
	r := sorted[(len(sorted)-1)/2]
	r.min, r.max = sorted[0].rps, sorted[len(sorted)-1].rps
	r.errors = 0
	for _, g := range gs {
		r.errors += g.errors
		if r.firstErr == "" {
			r.firstErr = g.firstErr
		}
	}
	return r
}

// runGRPC runs the gRPC phases on the live paths and records them in res.
func runGRPC(ctx context.Context, o options, res *results, live []*path, logf func(string, ...any), profile func(string, *path, time.Duration) *profiler, profiled func(*profiler)) {
	var proxied []*path
	for _, p := range live {
		if !p.floor {
			proxied = append(proxied, p)
		}
	}
	rounds := max(1, o.grpcRounds)
	unary := map[string][]grpcResult{}
	type acc struct {
		cpu   float64
		calls int
		rss   []int64
		err   error
	}
	accs := map[string]*acc{}
	for r := range rounds {
		for i := range proxied {
			p := proxied[(i+r)%len(proxied)]
			if ctx.Err() != nil {
				return
			}
			if res.errs[p.key+"/grpc"] != nil {
				continue
			}
			logf("gRPC unary, round %d of %d: %s %s", r+1, rounds, p.key, p.name)
			var prof *profiler
			if r == 0 {
				prof = profile("grpc", p, o.grpcDur)
			}
			var s *sampler
			if p.key != "B0" {
				s = startSampler(p.procs)
			}
			g, err := grpcUnary(ctx, p.grpc, o.grpcInflight, o.grpcDur)
			profiled(prof)
			if s != nil {
				a := accs[p.key]
				if a == nil {
					a = &acc{rss: make([]int64, len(p.procs))}
					accs[p.key] = a
				}
				cpu0 := s.cpu0
				rss, _, _, serr := s.finish(max(1, g.calls))
				cpu1, cerr := totalCPU(p.procs)
				a.cpu += cpu1 - cpu0
				a.calls += g.calls
				a.err = errors.Join(a.err, serr, cerr)
				for j := range rss {
					a.rss[j] = max(a.rss[j], rss[j])
				}
			}
			if err != nil {
				res.fail(p.key, "grpc", err)
				continue
			}
			unary[p.key] = append(unary[p.key], g)
		}
	}
	for k, gs := range unary {
		if res.errs[k+"/grpc"] == nil {
			res.grpc[k] = medianGRPC(gs)
		}
	}
	for k, a := range accs {
		st := &grpcProcStats{rssKB: a.rss, err: a.err}
		if a.calls > 0 {
			st.cpuPerCall = time.Duration(a.cpu / float64(a.calls) * float64(time.Second))
		} else if st.err == nil {
			st.err = errors.New("no calls")
		}
		res.grpcProcs[k] = st
	}

	for _, p := range proxied {
		if ctx.Err() != nil {
			return
		}
		logf("gRPC streaming (%d bidi streams): %s %s", o.grpcStreams, p.key, p.name)
		s, err := grpcStream(ctx, p.grpc, max(1, o.grpcStreams), o.grpcStreamDur)
		if err != nil {
			res.fail(p.key, "grpcstream", err)
			continue
		}
		res.grpcStream[p.key] = s
	}

	rate := res.rateNear(targetRate)
	for _, p := range live {
		if ctx.Err() != nil {
			return
		}
		if p.grpc == "" {
			continue
		}
		logf("gRPC open loop %d rps: %s %s", rate, p.key, p.name)
		st, err := grpcOpenLoop(ctx, p.grpc, rate, o.warm, o.grpcOpen)
		if err != nil {
			res.fail(p.key, "grpcopen", err)
			continue
		}
		res.grpcOpen[p.key] = st
		if st.errors > 0 {
			logf("  %d of %d calls failed, first: %s", st.errors, st.errors+st.n, st.firstErr)
		}
	}
}

// streamWindow is how many messages each stream keeps in flight in the streaming phase.
const streamWindow = 8

// grpcStream runs n bidi streams (TestService.FullDuplexCall, 1 KB echo) on one connection for d, each
// keeping streamWindow messages in flight, and counts the echoes received.
func grpcStream(ctx context.Context, addr string, n int, d time.Duration) (streamResult, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return streamResult{}, err
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	req := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: respBody}}
	// One round trip first, so that connecting is not measured.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	st, err := client.FullDuplexCall(wctx)
	if err == nil {
		err = st.Send(req)
	}
	if err == nil {
		_, err = st.Recv()
	}
	if err != nil {
		return streamResult{}, fmt.Errorf("first streaming round trip: %w", err)
	}
	_ = st.CloseSend()

	var (
		received atomic.Int64
		errCount atomic.Int64
		firstErr atomic.Value
	)
	fail := func(err error) {
		errCount.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	end := start.Add(d)
	var counted atomic.Int64 // received before end
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			st, err := client.FullDuplexCall(sctx)
			if err != nil {
				fail(err)
				return
			}
			credits := make(chan struct{}, streamWindow)
			for range streamWindow {
				credits <- struct{}{}
			}
			done := make(chan struct{})
			go func() { // sender: a message per credit until the phase ends
				defer close(done)
				for time.Now().Before(end) {
					select {
					case <-credits:
					case <-sctx.Done():
						return
					}
					if err := st.Send(req); err != nil {
						if !errors.Is(err, io.EOF) {
							fail(err)
						}
						return
					}
				}
				_ = st.CloseSend()
			}()
			for {
				resp, err := st.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					if sctx.Err() == nil {
						fail(err)
					}
					break
				}
				if len(resp.GetPayload().GetBody()) != respSize {
					fail(errors.New("short message"))
				}
				received.Add(1)
				if time.Now().Before(end) {
					counted.Add(1)
				}
				select {
				case credits <- struct{}{}:
				default:
				}
			}
			<-done
		})
	}
	wg.Wait()
	r := streamResult{msgsPerSec: float64(counted.Load()) / d.Seconds(), errors: errCount.Load()}
	if s, ok := firstErr.Load().(string); ok {
		r.firstErr = s
	}
	return r, nil
}

// grpcOpenLoop makes unary calls (1 KB echo) on one connection at a constant rate: call i starts at
// start + i/rate, on a goroutine of its own (HTTP/2 multiplexes them; no caller waits for another's
// answer), its latency counted from that intended time, after warm of the same unmeasured.
func grpcOpenLoop(ctx context.Context, addr string, rate int, warm, d time.Duration) (latencyStats, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return latencyStats{}, err
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: respBody}}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = client.UnaryCall(wctx, req)
	wcancel()
	if err != nil {
		return latencyStats{}, fmt.Errorf("first gRPC call: %w", err)
	}
	sl, err := newPreciseSleeper()
	if err != nil {
		return latencyStats{}, err
	}
	defer sl.close()
	phase := func(d time.Duration) latencyStats {
		n := int(float64(rate) * d.Seconds())
		interval := time.Second / time.Duration(rate)
		lat := make([]time.Duration, n)
		wake := make([]time.Duration, n)
		errs := make([]error, n)
		start := time.Now().Add(5 * time.Millisecond)
		var wg sync.WaitGroup
		for i := range n {
			intended := start.Add(time.Duration(i) * interval)
			wake[i] = -1
			if wait := time.Until(intended); wait > 0 {
				if err := sl.sleep(wait); err != nil {
					errs[i] = err
					continue
				}
				wake[i] = time.Since(intended)
			}
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
				continue
			}
			wg.Go(func() {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				resp, err := client.UnaryCall(cctx, req)
				if err == nil && len(resp.GetPayload().GetBody()) != respSize {
					err = errors.New("short payload")
				}
				errs[i] = err
				lat[i] = time.Since(intended)
			})
		}
		wg.Wait()
		var st latencyStats
		var ok, wakes []time.Duration
		for i, l := range lat {
			if wake[i] >= 0 {
				wakes = append(wakes, wake[i])
			}
			if errs[i] != nil {
				if st.errors == 0 {
					st.firstErr = errs[i].Error()
				}
				st.errors++
				continue
			}
			ok = append(ok, l)
		}
		slices.Sort(ok)
		slices.Sort(wakes)
		st.n, st.sent = len(ok), n
		st.p50, st.p99, st.p999 = percentile(ok, 0.50), percentile(ok, 0.99), percentile(ok, 0.999)
		st.wakeLagP50, st.wakeLagP99 = percentile(wakes, 0.5), percentile(wakes, 0.99)
		return st
	}
	if warm > 0 {
		phase(warm)
	}
	return phase(d), nil
}
