package proxy

import "testing"

// The number of Ps follows the sidecar's CPU use: all of them as soon as one P is nearly busy, one
// again only after a calm spell, and nothing in between moves it.
func TestProcsPolicy(t *testing.T) {
	pol := procsPolicy{max: 4, up: 0.75, down: 0.45, calm: 3}
	type step struct {
		busy float64
		want int
	}
	steps := []step{
		{0.9, 4},  // start-up is busy: stays at all Ps
		{0.3, 4},  // calm 1
		{0.3, 4},  // calm 2
		{0.5, 4},  // busy enough: the calm count starts over
		{0.3, 4},  // calm 1
		{0.3, 4},  // calm 2
		{0.3, 1},  // calm 3: one P
		{0.6, 1},  // more work than the way down allowed, but one P copes
		{0.74, 1}, // just under the way up
		{0.8, 4},  // one P nearly saturated: all of them at once
		{0.44, 4}, // calm 1
	}
	cur, calm := 4, 0
	for i, s := range steps {
		cur, calm = pol.next(cur, s.busy, calm)
		if cur != s.want {
			t.Fatalf("step %d (busy %.2f): %d Ps, want %d", i, s.busy, cur, s.want)
		}
	}
}
