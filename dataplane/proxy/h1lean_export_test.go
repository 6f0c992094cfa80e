package proxy

import "time"

// SetLeanOff turns the lean HTTP/1.1 path off (true) or on, for tests and benchmarks comparing it
// with today's path.
func SetLeanOff(off bool) { leanOff.Store(off) }

// SetFirstConfigWait sets how long a connection accepted before the first complete configuration
// waits for it, returning the previous value.
func SetFirstConfigWait(d time.Duration) time.Duration {
	return time.Duration(firstConfigWait.Swap(int64(d)))
}

// RelayStreams is how many streams the HTTP/2 relay has taken (tests check that it served them).
func RelayStreams() int64 { return relayStreams.Load() }
