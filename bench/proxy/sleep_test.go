package main

import (
	"testing"
	"time"
)

// The sleeper wakes after its duration, never before, again and again on one timer. (How close to it
// is a figure, not an assertion: the bench reports the generator's wake-up lag in every run.)
func TestPreciseSleeper(t *testing.T) {
	s, err := newPreciseSleeper()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	const d = 300 * time.Microsecond
	for range 50 {
		start := time.Now()
		if err := s.sleep(d); err != nil {
			t.Fatal(err)
		}
		got := time.Since(start)
		if got < d {
			t.Fatalf("slept %v, want at least %v", got, d)
		}
	}
	if err := s.sleep(0); err != nil {
		t.Errorf("sleep(0): %v", err)
	}
}
