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
	"tcp_open_total":               "Total count of TCP connections proxied as a byte stream (opaque TCP ports, CONNECT and Upgrade tunnels), counted when they open.",
	"tcp_close_total":              "Total count of TCP connections proxied as a byte stream, counted when they close.",
	"tcp_read_bytes_total":         "Total count of bytes read from the client of a TCP connection proxied as a byte stream (added when it closes).",
	"tcp_write_bytes_total":        "Total count of bytes written to the client of a TCP connection proxied as a byte stream (added when it closes).",
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
	help.m[family] = text
	help.Unlock()
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

// WithHelp runs write (a metrics.Set's WritePrometheus, the process metrics, ...) with its output going
// to w line by line, the text of every empty `# HELP family` line filled in. It holds only a partial
// line between writes and allocates nothing per scrape beyond that (a buffer of the whole exposition
// cost idle RSS: bench/proxy's "after 40 scrapes" row), and nothing on the request path.
func WithHelp(w io.Writer, write func(io.Writer)) {
	hw := helpWriters.Get().(*helpWriter)
	hw.w, hw.partial, hw.err = w, hw.partial[:0], nil
	write(hw)
	if len(hw.partial) > 0 {
		hw.line(hw.partial)
	}
	hw.w = nil
	if cap(hw.partial) <= 4096 {
		helpWriters.Put(hw)
	}
}

var helpWriters = sync.Pool{New: func() any { return new(helpWriter) }}

// helpWriter passes lines through to w, filling in empty HELP lines; it keeps a line cut between two
// writes in partial.
type helpWriter struct {
	w       io.Writer
	partial []byte
	err     error
}

func (h *helpWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && h.err == nil {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			h.partial = append(h.partial, p...)
			break
		}
		if len(h.partial) > 0 {
			h.partial = append(h.partial, p[:i+1]...)
			h.line(h.partial)
			h.partial = h.partial[:0]
		} else {
			h.line(p[:i+1])
		}
		p = p[i+1:]
	}
	return n, h.err
}

var helpPrefix = []byte("# HELP ")

// writeHelp writes family's whole HELP line in pieces: nothing is allocated, and nothing is kept (a
// cache of the lines was ~20 KB of heap in every scraped sidecar).
func (h *helpWriter) writeHelp(fam []byte) {
	help.RLock()
	text, ok := help.m[string(fam)]
	help.RUnlock()
	h.write(helpPrefix)
	h.write(fam)
	if ok {
		h.writeString(" ")
		h.writeString(text)
	} else {
		// The library's other process and Go runtime families: as helpOf says them.
		switch {
		case bytes.HasPrefix(fam, []byte("go_")):
			h.writeString(" Go runtime metric ")
			h.write(fam)
			h.writeString(" of weft-proxy.")
		case bytes.HasPrefix(fam, []byte("process_")):
			h.writeString(" Process metric ")
			h.write(fam)
			h.writeString(" of weft-proxy.")
		default:
			h.writeString(" weft-proxy metric ")
			h.write(fam)
			h.writeString(".")
		}
	}
	h.writeString("\n")
}

func (h *helpWriter) write(b []byte) {
	if h.err == nil {
		_, h.err = h.w.Write(b)
	}
}

func (h *helpWriter) writeString(s string) {
	if h.err == nil {
		_, h.err = io.WriteString(h.w, s)
	}
}

// line writes one line (with its line feed, except maybe the last).
func (h *helpWriter) line(l []byte) {
	if h.err != nil {
		return
	}
	if fam, ok := bytes.CutPrefix(bytes.TrimRight(l, "\n"), helpPrefix); ok && bytes.IndexByte(fam, ' ') < 0 {
		h.writeHelp(fam)
		return
	}
	_, h.err = h.w.Write(l)
}
