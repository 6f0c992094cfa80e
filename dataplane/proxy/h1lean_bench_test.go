package proxy_test

import (
	"bufio"
	"bytes"

	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"

	"github.com/weftmesh/weft/dataplane/proxy"
)

// rawApp answers every request head on a connection with one fixed 1 KB response, allocating
// nothing per request, so that a benchmark's allocations are the proxy's.
func rawApp(t testing.TB) netip.AddrPort {
	l := listen(t, "127.0.0.1:0")
	body := bytes.Repeat([]byte("x"), 1024)
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Wed, 02 Dec 2026 08:00:00 GMT\r\n\r\n")
	resp = append(resp, body...)
	// The proxy keeps its upstream connections open after the benchmark: closing them at cleanup ends
	// the app's readers (goleak checks for them in TestMain).
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	serveEach(l, func(c net.Conn) {
		defer c.Close()
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
		buf := make([]byte, 8192)
		n := 0
		for {
			m, err := c.Read(buf[n:])
			if err != nil {
				return
			}
			n += m
			for {
				i := bytes.Index(buf[:n], []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				if _, err := c.Write(resp); err != nil {
					return
				}
				n = copy(buf, buf[i+4:n])
			}
		}
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

// BenchmarkLeanHop is one keep-alive HTTP/1.1 GET of 1 KB through the outbound listener from a raw
// client to a raw app (neither allocates per request): allocations per op are the proxy's, with the
// lean path and with today's path.
func BenchmarkLeanHop(b *testing.B) {
	svc := newService(b, echoFQDN, "127.0.0.71", rawApp(b))
	_, _ = mesh(b, svc)
	req := []byte("GET /bench HTTP/1.1\r\nHost: " + svc.authority() + "\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	for _, tc := range []struct {
		name string
		off  bool
	}{{"lean", false}, {"today", true}} {
		b.Run(tc.name, func(b *testing.B) {
			proxy.SetLeanOff(tc.off)
			defer proxy.SetLeanOff(false)
			c, err := net.Dial("tcp", svc.lis.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReaderSize(c, 8192)
			// The response's length, from a first exchange.
			if _, err := c.Write(req); err != nil {
				b.Fatal(err)
			}
			total, n := 0, 0
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					b.Fatal(err)
				}
				total += len(line)
				if len(line) == 2 {
					break
				}
				if k, v, ok := bytes.Cut(line, []byte(": ")); ok && string(k) == "Content-Length" {
					n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
				}
			}
			if _, err := br.Discard(n); err != nil {
				b.Fatal(err)
			}
			total += n
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := br.Discard(total); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

}
