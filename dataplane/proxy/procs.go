package proxy

import (
	"context"
	"log/slog"
	"os"
	goruntime "runtime"
	"runtime/metrics"
	"sync/atomic"
	"syscall"
	"time"
)

// AdaptProcs runs the Go scheduler with one P while the sidecar is lightly loaded, and with all of
// them (GOMAXPROCS at start, which follows the CPU limit of the container) once one P is nearly
// saturated or goroutines often wait for it (checked every 250 ms: getrusage and the runtime's
// scheduling latencies, see procsPolicy). It returns when ctx ends; an explicit GOMAXPROCS in the
// environment turns it off.
//
// Why: a proxied request is a chain of goroutine hand-offs (the listener's connection, the upstream's
// response, and on the HTTP/2 hop between sidecars net/http's frame reader, serve loop, handler and a
// writer goroutine per flush, and the client's doRequest and read loop). With a second P idle, every
// hand-off wakes a sleeping thread to run (or steal) the goroutine, and that thread then spins and
// sleeps again: futex, epoll and nanosleep calls and context switches that cost more on a VM than the
// HTTP work. With one P the hand-offs are run-queue operations. Measured on the bench's B2 path at
// 1000 rps (perf stat on each sidecar, per request, alternating runs): GOMAXPROCS 2 0.33–0.36 ms of
// CPU, 20–21.6 system calls and 9.7–10.5 context switches per request per sidecar; with this, 0.22–0.23
// ms, 12.7–13.5 and 5.3–5.4. Under heavy load one P would cap the sidecar at one CPU (the closed-loop
// maximum fell by a third with GOMAXPROCS=1 in an earlier session), hence the switch back, at 0.4 CPU:
// on the bench's shared 2-CPU machine a sidecar that stays at one P up to 0.6 or 0.75 CPU got a
// smaller share of the CPUs in closed-loop phases (gRPC unary up to a third slower in some runs); at
// 0.4 the gain stays at 1000 rps (0.2 CPU per sidecar) and is gone at 2000. A P whose thread waits
// for a CPU uses little CPU while goroutines queue behind it, hence the latencies too.
func AdaptProcs(ctx context.Context, log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	pol := procsPolicy{max: goruntime.GOMAXPROCS(0), up: 0.4, down: 0.45, lateUp: 0.1, minCPU: 0.25, calm: 8}
	if pol.max <= 1 {
		return
	}
	// It starts with all Ps (start-up is busy: with one P the heap peaked higher and idle RSS was
	// ~0.3 MB larger) and goes down to one after calm intervals. Setting GOMAXPROCS ends the runtime's
	// own updates of it to a changed CPU limit of the container.
	adaptProcs(ctx, log, pol, pol.max, procsTick, procsKickWindow, procsKicks)
}

const (
	procsTick = 250 * time.Millisecond
	// procsKickWindow is how long AdaptProcs measures the load after a kick (kickProcs).
	procsKickWindow = 50 * time.Millisecond
	// procsKickGap is the least time between the end of a kick's window and the next one: a trickle of
	// new connections to a lightly loaded sidecar costs at most a few short measurements a second.
	procsKickGap = 250 * time.Millisecond
)

// procsOneP says AdaptProcs runs the sidecar with one P; procsKicks carries kickProcs's signals.
var (
	procsOneP  atomic.Bool
	procsKicks = make(chan struct{}, 1)
)

// kickProcs tells AdaptProcs, when it runs one P, that a connection was accepted: it then measures the
// load over the next procsKickWindow instead of at its next tick, and takes all Ps at once if one is
// nearly busy. A burst of load mostly starts with new connections, and waiting for the tick left the
// sidecar on one P for 0.27–0.70 s after wrk started on the bench's B1 path (debug log, five 2 s runs):
// a seventh to a third of each 2 s round, at a throughput a quarter lower than with all Ps.
func kickProcs() {
	if procsOneP.Load() {
		select {
		case procsKicks <- struct{}{}:
		default:
		}
	}
}

// adaptProcs is AdaptProcs's loop from cur Ps: the load is measured every tick, and after a kick
// received while at one P over the next window (then no other kick is taken for procsKickGap).
func adaptProcs(ctx context.Context, log *slog.Logger, pol procsPolicy, cur int, tick, window time.Duration, kicks <-chan struct{}) {
	t := time.NewTicker(tick)
	defer t.Stop()
	var m procsMeter
	m.sample(pol.minCPU)
	calm := 0
	set := func(n int, l procsLoad) {
		if n != cur {
			goruntime.GOMAXPROCS(n)
			log.Debug("GOMAXPROCS changed", "from", cur, "to", n, "cpu", l.cpu, "late", l.late)
			cur = n
		}
		procsOneP.Store(cur == 1)
	}
	set(cur, procsLoad{})
	defer procsOneP.Store(false)
	var (
		wt        *time.Timer
		windowEnd <-chan time.Time // the running window's end, nil when none runs
		lastEnd   time.Time        // when the last window ended
	)
	defer func() {
		if wt != nil {
			wt.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			goruntime.GOMAXPROCS(pol.max)
			return
		case <-kicks:
			if cur != 1 || windowEnd != nil || (!lastEnd.IsZero() && time.Since(lastEnd) < procsKickGap) {
				continue
			}
			m.mark() // the window's load is measured from now
			if wt == nil {
				wt = time.NewTimer(window)
			} else {
				wt.Reset(window)
			}
			windowEnd = wt.C
		case <-windowEnd:
			windowEnd, lastEnd = nil, time.Now()
			l := m.sample(pol.minCPU)
			if cur == 1 && l.cpu >= pol.up {
				// Only the CPU test: a window is too short for the scheduling latencies to say much,
				// and the tick still takes them.
				set(pol.max, l)
				calm = 0
			}
		case <-t.C:
			l := m.sample(pol.minCPU)
			var n int
			n, calm = pol.next(cur, l, calm)
			set(n, l)
		}
	}
}

// procsLoad is the process's load over one interval: cpu is the CPU time it used (getrusage) per
// second of wall time; late is the share of goroutines that waited at least procsLateWait to run after
// they became runnable (the runtime's /sched/latencies). On a shared machine cpu alone can mislead: a
// P whose thread waits for a CPU uses none, yet goroutines queue behind it, and late shows that.
type procsLoad struct{ cpu, late float64 }

// procsLateWait is the wait for a P that counts as late: several times what a hand-off takes with one
// idle P, well under the latency a client would notice.
const procsLateWait = 200e-6

// procsMinSamples is the fewest scheduling latencies (the runtime records one in eight) that make a
// share: an idle sidecar's few wake-ups say nothing.
const procsMinSamples = 32

// procsPolicy decides the number of Ps: up to max as soon as one P is nearly saturated (cpu at up) or
// goroutines often wait for it (late at lateUp, with at least minCPU used: a few late wake-ups of an
// idle process say nothing), back to one after calm intervals in a row with cpu under down and few
// late. The CPU thresholds leave room between them because the same load costs more CPU with more Ps
// (the wake-ups above).
type procsPolicy struct {
	max      int
	up, down float64
	lateUp   float64
	minCPU   float64
	calm     int
}

// next returns the number of Ps for the next interval and the updated count of calm intervals.
func (p procsPolicy) next(cur int, l procsLoad, calm int) (int, int) {
	if cur == 1 {
		if l.cpu >= p.up || (l.late >= p.lateUp && l.cpu >= p.minCPU) {
			return p.max, 0
		}
		return 1, 0
	}
	if l.cpu >= p.down || l.late >= p.lateUp {
		return cur, 0
	}
	if calm+1 >= p.calm {
		return 1, 0
	}
	return cur, calm + 1
}

// procsMeter measures procsLoad between calls of sample.
type procsMeter struct {
	at      time.Time
	cpu     time.Duration
	samples []metrics.Sample
	counts  []uint64 // the latency histogram's counts at the previous sample
}

// mark starts the next measurement now without reading the scheduling latencies: the next sample's
// late share covers the time since their last read.
func (m *procsMeter) mark() {
	m.at, m.cpu = time.Now(), cpuTime()
}

// sample returns the load since the previous call (or mark). Below minCPU it leaves the scheduling latencies
// unread (late 0): the first runtime/metrics read builds the runtime's tables of metrics, ~0.2 MB of
// idle RSS that an idle sidecar need not have.
func (m *procsMeter) sample(minCPU float64) procsLoad {
	now, cpu := time.Now(), cpuTime()
	var l procsLoad
	if wall := now.Sub(m.at).Seconds(); !m.at.IsZero() && wall > 0 {
		l.cpu = (cpu - m.cpu).Seconds() / wall
	}
	m.at, m.cpu = now, cpu
	if l.cpu < minCPU {
		m.counts = m.counts[:0] // the next share starts from the next read
		return l
	}
	if m.samples == nil {
		m.samples = []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	}
	metrics.Read(m.samples)
	if m.samples[0].Value.Kind() != metrics.KindFloat64Histogram {
		return l
	}
	h := m.samples[0].Value.Float64Histogram()
	if len(m.counts) == len(h.Counts) {
		var all, late uint64
		for i, c := range h.Counts {
			d := c - m.counts[i]
			all += d
			if h.Buckets[i] >= procsLateWait {
				late += d
			}
		}
		if all >= procsMinSamples {
			l.late = float64(late) / float64(all)
		}
	}
	m.counts = append(m.counts[:0], h.Counts...)
	return l
}

// cpuTime is the user and system CPU time of the process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
