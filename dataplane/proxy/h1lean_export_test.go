package proxy

// SetLeanOff turns the lean HTTP/1.1 path off (true) or on, for tests and benchmarks comparing it
// with today's path.
func SetLeanOff(off bool) { leanOff.Store(off) }
