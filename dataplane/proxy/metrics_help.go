package proxy

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// help is the HELP text of each metric family weft-proxy exposes. VictoriaMetrics/metrics writes
// `# HELP name` with no text; WithHelp fills it in from here. Another part of the proxy that adds a
// family registers its text with RegisterHelp.
var help = struct {
	sync.RWMutex
	m map[string]string
}{m: map[string]string{
	"request_total":                "Total count of HTTP and gRPC requests, by direction, authority, destination and workload (counted when the response ends, so it carries the same labels as response_total).",
	"response_total":               "Total count of HTTP and gRPC responses, by status_code, grpc_status and classification (failure: a 5xx status or a non-zero grpc-status).",
	"response_latency_ms":          "Elapsed time between a request's first byte and the end of its response, in milliseconds.",
	"tcp_open_total":               "Total count of opened TCP connections (opaque TCP and upstream connections of HTTP).",
	"tcp_close_total":              "Total count of closed TCP connections.",
	"tcp_read_bytes_total":         "Total count of bytes read from the peers of closed TCP connections.",
	"tcp_write_bytes_total":        "Total count of bytes written to the peers of closed TCP connections.",
	"tls_handshake_total":          "Total count of completed mTLS handshakes, by direction and whether the session was resumed.",
	"upstream_connect_retry_total": "Total count of connection attempts retried on another endpoint after a connect failure, by cluster.",

	// VictoriaMetrics/metrics' process and Go runtime families.
	"process_cpu_seconds_total":        "Total user and system CPU time spent in seconds.",
	"process_cpu_seconds_system_total": "Total system CPU time spent in seconds.",
	"process_cpu_seconds_user_total":   "Total user CPU time spent in seconds.",
	"process_resident_memory_bytes":    "Resident memory size in bytes.",
	"process_virtual_memory_bytes":     "Virtual memory size in bytes.",
	"process_start_time_seconds":       "Start time of the process since unix epoch in seconds.",
	"process_open_fds":                 "Number of open file descriptors.",
	"process_max_fds":                  "Maximum number of open file descriptors.",
}}

// RegisterHelp sets the HELP text of a metric family.
func RegisterHelp(family, text string) {
	help.Lock()
	defer help.Unlock()
	help.m[family] = text
}

func helpOf(family string) string {
	help.RLock()
	defer help.RUnlock()
	if h, ok := help.m[family]; ok {
		return h
	}
	// The library's other process and Go runtime families: say what they are from their name.
	switch {
	case strings.HasPrefix(family, "go_"):
		return "Go runtime metric " + family + " of weft-proxy."
	case strings.HasPrefix(family, "process_"):
		return "Process metric " + family + " of weft-proxy."
	}
	return "weft-proxy metric " + family + "."
}

var helpBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// WithHelp runs write (a metrics.Set's WritePrometheus, the process metrics, ...) and copies what it
// wrote to w with the text of every empty `# HELP family` line filled in. It costs a buffer per scrape,
// none on the request path.
func WithHelp(w io.Writer, write func(io.Writer)) {
	buf := helpBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer helpBufs.Put(buf)
	write(buf)
	out := make([]byte, 0, buf.Len()+buf.Len()/8)
	for b := buf.Bytes(); len(b) > 0; {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i+1], b[i+1:]
		} else {
			b = nil
		}
		if fam, ok := bytes.CutPrefix(bytes.TrimRight(line, "\n"), []byte("# HELP ")); ok && bytes.IndexByte(fam, ' ') < 0 {
			out = append(out, "# HELP "...)
			out = append(out, fam...)
			out = append(out, ' ')
			out = append(out, helpOf(string(fam))...)
			out = append(out, '\n')
			continue
		}
		out = append(out, line...)
	}
	_, _ = w.Write(out)
}
