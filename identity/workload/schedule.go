package workload

import "time"

// RenewAfter is how long to wait before renewing a certificate that expires at notAfter: 70% of the
// remaining life, spread by ±10% with jitter in [-1, 1] so that proxies started together do not renew
// together. It is never negative.
func RenewAfter(now, notAfter time.Time, jitter float64) time.Duration {
	remaining := notAfter.Sub(now)
	if remaining <= 0 {
		return 0
	}
	jitter = min(max(jitter, -1), 1)
	return time.Duration(float64(remaining) * 0.7 * (1 + 0.1*jitter))
}

// Backoff is the wait before retry number attempt (1, 2, …) after failures: min doubled per attempt,
// capped at max, spread by ±20% with jitter in [-1, 1].
func Backoff(attempt int, minWait, maxWait time.Duration, jitter float64) time.Duration {
	d := minWait
	for i := 1; i < attempt && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	jitter = min(max(jitter, -1), 1)
	return time.Duration(float64(d) * (1 + 0.2*jitter))
}
