//go:build weftpprof

package admin

import (
	"net/http"
	"net/http/pprof"
)

// A profiling build (go build -tags weftpprof ./cmd/weft-proxy) serves Go's profiler on the admin port:
// /debug/pprof/profile?seconds=N for CPU, /debug/pprof/heap, /debug/pprof/goroutine... A normal build
// leaves it out entirely: no handler anyone could make the proxy work with, and no bytes of
// net/http/pprof in the binary or its resident memory. `go run ./bench/proxy -cpuprofile DIR` uses it.
func init() {
	extraHandlers = append(extraHandlers, func(mux *http.ServeMux) {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	})
}
