package proxy

import (
	"context"
	"log/slog"
	goruntime "runtime"
	"testing"
	"time"
)

// The number of Ps follows the sidecar's load: all of them as soon as one P is nearly busy or
// goroutines often wait for it, one again only after a calm spell, and nothing in between moves it.
func TestProcsPolicy(t *testing.T) {
	pol := procsPolicy{max: 4, up: 0.6, down: 0.45, lateUp: 0.1, minCPU: 0.25, calm: 3}
	type step struct {
		cpu, late float64
		want      int
	}
	steps := []step{
		{0.9, 0, 4},     // start-up is busy: stays at all Ps
		{0.3, 0, 4},     // calm 1
		{0.3, 0, 4},     // calm 2
		{0.5, 0, 4},     // busy enough: the calm count starts over
		{0.3, 0, 4},     // calm 1
		{0.3, 0.2, 4},   // goroutines wait for the Ps (a shared machine): not calm
		{0.3, 0, 4},     // calm 1
		{0.3, 0, 4},     // calm 2
		{0.3, 0.05, 1},  // calm 3: one P
		{0.55, 0.05, 1}, // more work than the way down allowed, but one P copes
		{0.05, 0.5, 1},  // a few late wake-ups of an idle process: stays at one
		{0.4, 0.2, 4},   // goroutines often wait for the one P, though it used under a CPU: all Ps
		{0.44, 0, 4},    // calm 1
		{0.2, 0, 4},     // calm 2
		{0.2, 0, 1},     // calm 3
		{0.6, 0, 4},     // one P nearly saturated: all of them at once
	}
	cur, calm := 4, 0
	for i, s := range steps {
		cur, calm = pol.next(cur, procsLoad{cpu: s.cpu, late: s.late}, calm)
		if cur != s.want {
			t.Fatalf("step %d (cpu %.2f, late %.2f): %d Ps, want %d", i, s.cpu, s.late, cur, s.want)
		}
	}
}

// A sidecar on one P that gets busy takes all its Ps as soon as a new connection kicks AdaptProcs,
// without waiting for its tick (here an hour away); at all Ps, kicks are not even sent.
func TestAdaptProcsKick(t *testing.T) {
	prev := goruntime.GOMAXPROCS(1)
	defer goruntime.GOMAXPROCS(prev)
	ctx, cancel := context.WithCancel(context.Background())
	kicks := make(chan struct{}, 1)
	done := make(chan struct{})
	pol := procsPolicy{max: 2, up: 0.4, down: 0.45, lateUp: 0.1, minCPU: 0.25, calm: 8}
	go func() {
		defer close(done)
		adaptProcs(ctx, slog.New(slog.DiscardHandler), pol, 1, time.Hour, 20*time.Millisecond, kicks)
	}()
	defer func() { cancel(); <-done }()

	// Busy: a goroutine spinning keeps the one P (and this process's CPU use) at its limit.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := 0; i < 1e5; i++ {
				spinSink += i
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !procsOneP.Load() { // adaptProcs has started at one P
		if time.Now().After(deadline) {
			t.Fatal("adaptProcs at one P does not say so: kicks would be dropped")
		}
		time.Sleep(time.Millisecond)
	}
	for goruntime.GOMAXPROCS(0) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("still one P after kicks while busy")
		}
		kickProcs() // what an accepted connection does
		select {
		case k := <-procsKicks: // kickProcs's channel: forward it to this loop's
			kicks <- k
		default:
		}
		time.Sleep(5 * time.Millisecond)
	}
	if procsOneP.Load() {
		t.Error("at all Ps, procsOneP still says one P")
	}
	kickProcs()
	select {
	case <-procsKicks:
		t.Error("a kick was sent at all Ps")
	default:
	}
}

var spinSink int
