package proxy

import (
	"context"
	"log/slog"
	"os"
	goruntime "runtime"
	"syscall"
	"time"
)

// AdaptProcs runs the Go scheduler with one P while the sidecar is lightly loaded, and with all of
// them (GOMAXPROCS at start, which follows the CPU limit of the container) once it uses most of a CPU
// (checked every 250 ms from getrusage).
// It returns when ctx ends; an explicit GOMAXPROCS in the environment turns it off.
//
// Why: a proxied request is a chain of goroutine hand-offs (the listener's connection, the upstream's
// response, and on the HTTP/2 hop between sidecars net/http's frame reader, serve loop, handler and a
// writer goroutine per flush, and the client's doRequest and read loop). With a second P idle, every
// hand-off wakes a sleeping thread to run (or steal) the goroutine, and that thread then spins and
// sleeps again: futex, epoll and nanosleep calls and context switches that cost more on a VM than the
// HTTP work. Measured on the bench's B2 path at 1000 rps (perf stat on each sidecar, per request): with
// GOMAXPROCS 2, 0.25–0.30 ms of CPU, 17–21 system calls and 8–10 context switches per request per
// sidecar; with 1, 0.15–0.20 ms, 9–13 and 3.6–5.3. With one P the hand-offs are run-queue
// operations. Under heavy load one P would cap the sidecar at one CPU (the closed-loop maximum fell
// by a third in an earlier run), hence the switch back.
func AdaptProcs(ctx context.Context, log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	pol := procsPolicy{max: goruntime.GOMAXPROCS(0), up: 0.75, down: 0.45, calm: 8}
	if pol.max <= 1 {
		return
	}
	// It starts with all Ps (start-up is busy: with one P the heap peaked higher and idle RSS was
	// ~0.3 MB larger) and goes down to one after calm intervals. Setting GOMAXPROCS ends the runtime's
	// own updates of it to a changed CPU limit of the container.
	cur := pol.max
	const every = 250 * time.Millisecond
	t := time.NewTicker(every)
	defer t.Stop()
	last, lastAt := cpuTime(), time.Now()
	calm := 0
	for {
		select {
		case <-ctx.Done():
			goruntime.GOMAXPROCS(pol.max)
			return
		case now := <-t.C:
			c := cpuTime()
			busy := float64(c-last) / float64(now.Sub(lastAt))
			last, lastAt = c, now
			var n int
			n, calm = pol.next(cur, busy, calm)
			if n != cur {
				goruntime.GOMAXPROCS(n)
				log.Debug("GOMAXPROCS changed", "from", cur, "to", n, "cpu", busy)
				cur = n
			}
		}
	}
}

// procsPolicy decides the number of Ps from the CPU the process used in the last interval (busy, in
// CPUs): up to max as soon as one P is nearly saturated, back to one after calm intervals in a row
// below down. The thresholds leave room between them because the same load costs more CPU with more
// Ps (the wake-ups above).
type procsPolicy struct {
	max      int
	up, down float64
	calm     int
}

// next returns the number of Ps for the next interval and the updated count of calm intervals.
func (p procsPolicy) next(cur int, busy float64, calm int) (int, int) {
	if cur == 1 {
		if busy >= p.up {
			return p.max, 0
		}
		return 1, 0
	}
	if busy >= p.down {
		return cur, 0
	}
	if calm+1 >= p.calm {
		return 1, 0
	}
	return cur, calm + 1
}

// cpuTime is the user and system CPU time of the process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
