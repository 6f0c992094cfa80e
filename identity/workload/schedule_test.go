package workload

import (
	"testing"
	"time"
)

func TestRenewAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		notAfter time.Time
		jitter   float64
		want     time.Duration
	}{
		{name: "24h, no jitter", notAfter: now.Add(24 * time.Hour), want: 16*time.Hour + 48*time.Minute},
		{name: "24h, +10%", notAfter: now.Add(24 * time.Hour), jitter: 1, want: time.Duration(float64(24*time.Hour) * 0.77)},
		{name: "24h, -10%", notAfter: now.Add(24 * time.Hour), jitter: -1, want: time.Duration(float64(24*time.Hour) * 0.63)},
		{name: "jitter clamped", notAfter: now.Add(10 * time.Second), jitter: 5, want: 7700 * time.Millisecond},
		{name: "expired", notAfter: now.Add(-time.Second), want: 0},
	}
	for _, tt := range tests {
		if got := RenewAfter(now, tt.notAfter, tt.jitter); got != tt.want {
			t.Errorf("%s: RenewAfter = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		attempt int
		jitter  float64
		want    time.Duration
	}{
		{attempt: 1, want: time.Second},
		{attempt: 2, want: 2 * time.Second},
		{attempt: 4, want: 8 * time.Second},
		{attempt: 6, want: 30 * time.Second},
		{attempt: 60, want: 30 * time.Second},
		{attempt: 1, jitter: 1, want: 1200 * time.Millisecond},
		{attempt: 60, jitter: -1, want: 24 * time.Second},
	}
	for _, tt := range tests {
		if got := Backoff(tt.attempt, time.Second, 30*time.Second, tt.jitter); got != tt.want {
			t.Errorf("Backoff(%d, jitter %v) = %v, want %v", tt.attempt, tt.jitter, got, tt.want)
		}
	}
}
