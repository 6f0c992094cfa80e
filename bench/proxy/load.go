package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// latencyStats are percentiles of a set of latencies.
type latencyStats struct {
	n              int
	p50, p99, p999 time.Duration
	errors         int
	firstErr       string
	// How late the generator woke for the requests it was on time for: its own jitter, a floor under
	// what the run can resolve.
	wakeLagP50, wakeLagP99 time.Duration
	sent                   int // requests that left the generator (CPU per request divides by these)
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// openConns is one keep-alive HTTP/1.1 connection per client, as wrk2 and fortio do.
func openConns(n int) []*http.Client {
	cs := make([]*http.Client, n)
	for i := range cs {
		t := &http.Transport{
			MaxConnsPerHost:     1,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
			Protocols:           new(http.Protocols),
		}
		t.Protocols.SetHTTP1(true)
		cs[i] = &http.Client{Transport: t, Timeout: 10 * time.Second}
	}
	return cs
}

func closeConns(cs []*http.Client) {
	for _, c := range cs {
		c.CloseIdleConnections()
	}
}

// errBehind is a request the generator could not even send: its connection was still busy with
// earlier requests 10 s after the phase ended.
var errBehind = errors.New("not sent: the path fell more than 10s behind the schedule")

// openLoop sends GET http://addr/ at a constant total rate for d over a fixed set of connections
// (request i goes on connection i mod len(conns), at start + i/rate), and measures each latency from
// the request's INTENDED send time, as wrk2 does: when a path falls behind, the requests that wait for
// their connection count that wait (no coordinated omission), and every scheduled request ends either
// with a latency or as a failure.
func openLoop(ctx context.Context, conns []*http.Client, addr string, rate int, d time.Duration) latencyStats {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, n)
	wake := make([]time.Duration, n)
	errs := make([]error, n)
	url := "http://" + addr + "/"
	start := time.Now().Add(5 * time.Millisecond)
	giveUp := start.Add(d + 10*time.Second)
	var wg sync.WaitGroup
	for w, client := range conns {
		wg.Go(func() {
			sl, err := newPreciseSleeper()
			if err != nil {
				for i := w; i < n; i += len(conns) {
					errs[i] = err
				}
				return
			}
			defer sl.close()
			for i := w; i < n; i += len(conns) {
				intended := start.Add(time.Duration(i) * interval)
				wake[i] = -1
				if wait := time.Until(intended); wait > 0 {
					if err := sl.sleep(wait); err != nil {
						errs[i] = err
						continue
					}
					wake[i] = time.Since(intended)
				}
				if ctx.Err() != nil || time.Now().After(giveUp) {
					errs[i] = errBehind
					continue
				}
				errs[i] = get(ctx, client, url)
				lat[i] = time.Since(intended)
			}
		})
	}
	wg.Wait()
	st := latencyStats{}
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
	st.n = len(ok)
	st.p50, st.p99, st.p999 = percentile(ok, 0.50), percentile(ok, 0.99), percentile(ok, 0.999)
	st.wakeLagP50, st.wakeLagP99 = percentile(wakes, 0.5), percentile(wakes, 0.99)
	st.sent = n
	for _, e := range errs {
		if e == errBehind {
			st.sent--
		}
	}
	return st
}

func get(ctx context.Context, client *http.Client, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	nb, err := io.Copy(io.Discard, resp.Body)
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d (%s)", resp.StatusCode, resp.Header.Get("Weft-Error"))
	case nb != respSize:
		return fmt.Errorf("body of %d bytes, want %d", nb, respSize)
	}
	return nil
}

// wrkResult is wrk's closed-loop maximum.
type wrkResult struct {
	rps      float64
	errors   int64
	min, max float64 // the lowest and highest rate of the rounds
}

// medianWrk is the median round's rate (the lower middle one of an even count), with every round's
// errors and the spread of the rates.
func medianWrk(ws []wrkResult) wrkResult {
	rs := make([]float64, len(ws))
	var r wrkResult
	for i, w := range ws {
		rs[i] = w.rps
		r.errors += w.errors
	}
	slices.Sort(rs)
	r.rps, r.min, r.max = rs[(len(rs)-1)/2], rs[0], rs[len(rs)-1]
	return r
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSock   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

func runWrk(ctx context.Context, wrk, addr string, threads, conns int, d time.Duration) (wrkResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.CommandContext(ctx, wrk, "-t"+strconv.Itoa(threads), "-c"+strconv.Itoa(conns),
		"-d"+strconv.Itoa(secs)+"s", "http://"+addr+"/")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s", err, out.String())
	}
	m := wrkRPS.FindSubmatch(out.Bytes())
	if m == nil {
		return wrkResult{}, fmt.Errorf("wrk printed no Requests/sec: %s", out.String())
	}
	var r wrkResult
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := wrkNon2xx.FindSubmatch(out.Bytes()); m != nil {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		r.errors += n
	}
	if m := wrkSock.FindSubmatch(out.Bytes()); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(string(s), 10, 64)
			r.errors += n
		}
	}
	return r, nil
}

// grpcResult is closed-loop gRPC unary throughput and latency.
type grpcResult struct {
	rps      float64
	p50, p99 time.Duration
	errors   int64
	firstErr string
	calls    int     // calls that succeeded
	min, max float64 // the lowest and highest rate of the rounds (medianGRPC)
}

// grpcUnary runs `inflight` closed-loop callers of TestService.UnaryCall (1 KB echo) over one
// connection (h2c) for d.
func grpcUnary(ctx context.Context, addr string, inflight int, d time.Duration) (grpcResult, error) {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return grpcResult{}, err
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: respBody}}
	// One call first, so that connecting is not measured.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = client.UnaryCall(wctx, req)
	wcancel()
	if err != nil {
		return grpcResult{}, fmt.Errorf("first gRPC call: %w", err)
	}
	var (
		mu       sync.Mutex
		all      []time.Duration
		errCount atomic.Int64
		firstErr atomic.Value
	)
	end := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				resp, err := client.UnaryCall(cctx, req)
				cancel()
				if err == nil && len(resp.GetPayload().GetBody()) != respSize {
					err = errors.New("short payload")
				}
				if err != nil {
					errCount.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(all)
	r := grpcResult{rps: float64(len(all)) / elapsed.Seconds(), p50: percentile(all, 0.5), p99: percentile(all, 0.99), errors: errCount.Load(), calls: len(all)}
	if s, ok := firstErr.Load().(string); ok {
		r.firstErr = s
	}
	return r, nil
}

// tcpBulk writes as fast as it can over one connection for d; the sink measures what arrived between
// its first and last read.
func tcpBulk(ctx context.Context, addr string, d time.Duration, results <-chan bulkResult) (float64, error) {
	for len(results) > 0 {
		<-results
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	end := time.Now().Add(d)
	var werr error
	for time.Now().Before(end) && ctx.Err() == nil {
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, werr = c.Write(buf); werr != nil {
			break
		}
	}
	c.Close()
	select {
	case r := <-results:
		span := r.last.Sub(r.first)
		if span <= 0 || r.bytes < int64(len(buf)) {
			return 0, fmt.Errorf("sink received %d bytes (write error: %v)", r.bytes, werr)
		}
		return float64(r.bytes) * 8 / span.Seconds() / 1e9, nil
	case <-time.After(10 * time.Second):
		return 0, fmt.Errorf("%w (write error: %v)", errNoBulk, werr)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// connResult is the new-connections phase: each worker in a closed loop opens a new TCP connection,
// writes a small message, reads its echo and closes.
type connResult struct {
	perSec   float64 // completed connections per second
	n        int     // completed connections
	errors   int
	firstErr string
	p50, p99 time.Duration // of one whole connection: connect, write, echo, close
	// On H2, the server HAProxy's count of TLS sessions resumed and fully handshaken during the phase.
	resumed, full  int64
	resumeMeasured bool
	resumeErr      error
}

// weftTLSSessions reads a weft-proxy's inbound mTLS handshakes, resumed and full, from its /metrics.
func weftTLSSessions(admin string) (resumed, full int64, err error) {
	r, err := metricSum(admin, "tls_handshake_total", map[string]string{"direction": "inbound", "resumed": "true"})
	if err != nil {
		return 0, 0, err
	}
	f, err := metricSum(admin, "tls_handshake_total", map[string]string{"direction": "inbound", "resumed": "false"})
	return int64(r), int64(f), err
}

// hapTLSSessions reads from an HAProxy's CSV stats the sessions of backends tcp_resumed (resumed TLS
// sessions) and tcp_up (full handshakes): their stot column.
func hapTLSSessions(url string) (resumed, full int64, err error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, 0, fmt.Errorf("HAProxy stats: %w", err)
	}
	defer resp.Body.Close()
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil {
		return 0, 0, fmt.Errorf("HAProxy stats: %w", err)
	}
	var seen int
	for _, r := range rows {
		if len(r) < 8 || r[1] != "BACKEND" {
			continue
		}
		n, perr := strconv.ParseInt(r[7], 10, 64) // stot
		if perr != nil {
			continue
		}
		switch r[0] {
		case "tcp_resumed":
			resumed, seen = n, seen+1
		case "tcp_up":
			full, seen = n, seen+1
		}
	}
	if seen != 2 {
		return 0, 0, errors.New("HAProxy stats lack backends tcp_resumed and tcp_up")
	}
	return resumed, full, nil
}

// relaySessions reads from a floor relay's CSV stats the sessions its frontend "relay" has taken.
func relaySessions(url string) (int64, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, fmt.Errorf("HAProxy stats: %w", err)
	}
	defer resp.Body.Close()
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("HAProxy stats: %w", err)
	}
	for _, r := range rows {
		if len(r) >= 8 && r[0] == "relay" && r[1] == "FRONTEND" {
			return strconv.ParseInt(r[7], 10, 64) // stot
		}
	}
	return 0, errors.New("HAProxy stats lack frontend relay")
}

// connMsgSize is the message each connection sends (echoMagic first, so the sink echoes it).
const connMsgSize = 64

// newConns runs workers closed-loop connection openers against addr for d.
func newConns(ctx context.Context, addr string, workers int, d time.Duration) connResult {
	msg := bytes.Repeat([]byte("c"), connMsgSize)
	copy(msg, echoMagic)
	var (
		mu       sync.Mutex
		all      []time.Duration
		errCount int
		firstErr string
	)
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var mine []time.Duration
			var errs int
			var first string
			got := make([]byte, connMsgSize)
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				if err := oneConn(addr, msg, got); err != nil {
					if errs == 0 {
						first = err.Error()
					}
					errs++
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, mine...)
			if errs > 0 && errCount == 0 {
				firstErr = first
			}
			errCount += errs
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(all)
	return connResult{perSec: float64(len(all)) / elapsed.Seconds(), n: len(all), errors: errCount, firstErr: firstErr,
		p50: percentile(all, 0.5), p99: percentile(all, 0.99)}
}

// oneConn is one new connection: connect, write msg, read the same bytes back, close.
func oneConn(addr string, msg, got []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return errors.New("the echo differs from the message")
	}
	return nil
}
