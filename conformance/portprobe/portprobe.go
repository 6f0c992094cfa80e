// Package portprobe sends garbage to a listening port, as a hostile or broken client would, and
// watches what the server does with the connection: random bytes, TLS to a plaintext port, plaintext
// to a TLS port, HTTP/1 to a gRPC port, a partial frame and then silence (half-open), and thousands
// of connections that never send a byte. Each probe waits for the server to close the connection and
// says how long that took; the tests of each server (weft-control, weft-proxy, its listeners) then
// check that the server still serves real requests.
package portprobe

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/prereq"
)

// Wait is how long a probe waits for the server to close a connection before it fails the test: far
// above every timeout under test (they are shortened in the tests to a second or two).
const Wait = 30 * time.Second

// Dialer dials the port under test (a Unix socket, or TCP from a given source address).
type Dialer func() (net.Conn, error)

// TCP dials addr over TCP.
func TCP(addr string) Dialer {
	return func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 10*time.Second) }
}

// Unix dials the Unix socket at path.
func Unix(path string) Dialer {
	return func() (net.Conn, error) { return net.DialTimeout("unix", path, 10*time.Second) }
}

// Closed reads c until the server closes it (EOF or a reset), discarding what it sends, and returns
// how long that took from start; it fails the test if the connection is still open after Wait.
func Closed(t testing.TB, what string, c net.Conn, start time.Time) time.Duration {
	t.Helper()
	_ = c.SetReadDeadline(start.Add(Wait))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the server still holds the connection open after %v", what, Wait)
	}
	return time.Since(start)
}

// Send dials, writes b (errors ignored: the server may close early) and waits for the server to close
// the connection; it returns how long that took after the write.
func Send(t testing.TB, what string, dial Dialer, b []byte) time.Duration {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatalf("%s: dial: %v", what, err)
	}
	defer c.Close()
	start := time.Now()
	_, _ = c.Write(b)
	return Closed(t, what, c, start)
}

// RandomBytes sends n random bytes.
func RandomBytes(t testing.TB, dial Dialer, n int) time.Duration {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return Send(t, "random bytes", dial, b)
}

// TLSHello makes a TLS handshake without a client certificate (to a plaintext port, or a port that
// may detect TLS) and then sends nothing: the server must close the connection, at once or after its
// timeout.
func TLSHello(t testing.TB, dial Dialer) time.Duration {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatalf("TLS hello: dial: %v", err)
	}
	defer c.Close()
	start := time.Now()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // a probe, not a client
	_ = tc.SetDeadline(start.Add(Wait))
	_ = tc.Handshake()
	return Closed(t, "TLS hello", c, start)
}

// Slowloris sends head one byte every interval, and then endless header lines in the same way, until
// the server closes the connection (its read-header timeout); it returns how long that took and how
// many bytes went out.
func Slowloris(t testing.TB, dial Dialer, head []byte, interval time.Duration) (time.Duration, int) {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatalf("slowloris: dial: %v", err)
	}
	defer c.Close()
	start := time.Now()
	closed := make(chan struct{})
	go func() {
		_ = c.SetReadDeadline(start.Add(Wait))
		_, _ = io.Copy(io.Discard, c)
		close(closed)
	}()
	sent := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; ; i++ {
		var b byte
		if i < len(head) {
			b = head[i]
		} else {
			b = "X-Slow: a\r\n"[(i-len(head))%len("X-Slow: a\r\n")]
		}
		select {
		case <-closed:
			if time.Since(start) >= Wait {
				t.Fatalf("slowloris: the server still reads the head after %v (%d bytes)", Wait, sent)
			}
			return time.Since(start), sent
		case <-tick.C:
		}
		if _, err := c.Write([]byte{b}); err == nil {
			sent++
		}
	}
}

// HTTP1 is an HTTP/1.1 request: plaintext to a TLS port, HTTP/1 to a gRPC (HTTP/2) port.
var HTTP1 = []byte("POST /envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\x00\x00\x00\x00")

// H2Preface is the HTTP/2 client preface.
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Partial frames for half-open probes: the start of something, then silence.
var (
	// PartialPreface is the first half of the HTTP/2 preface.
	PartialPreface = []byte(H2Preface[:12])
	// PartialH2Frame is the preface, an empty SETTINGS frame and the first 5 bytes of a 9-byte
	// HEADERS frame header.
	PartialH2Frame = []byte(H2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00" + "\x00\x00\x10\x01\x04")
	// PartialTLSHello is the 5-byte record header of a TLS handshake record and 10 of its bytes.
	PartialTLSHello = []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00\x00")
	// PartialHTTP1 is an HTTP/1.1 head without its blank line.
	PartialHTTP1 = []byte("GET /ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
)

// HalfOpen sends partial and then nothing: the server must close the connection (its read-header or
// handshake timeout).
func HalfOpen(t testing.TB, dial Dialer, partial []byte) time.Duration {
	t.Helper()
	return Send(t, fmt.Sprintf("half-open after %q", partial), dial, partial)
}

// RaiseFileLimit raises the soft RLIMIT_NOFILE to at least n (both ends of n connections live in
// the test process).
func RaiseFileLimit(t testing.TB, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		lim.Max = n // raising the hard limit needs root
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		prereq.Missing(t, "%d open files (RLIMIT_NOFILE): %v; raise it with ulimit -n or run as root", n, err)
	}
}

// Idle opens n connections that send nothing, runs during while they are open (a real request, which
// must still succeed), and waits until the server has closed every one of them; it returns how long
// after the last dial the last one closed.
func Idle(t testing.TB, dial Dialer, n int, during func()) time.Duration {
	t.Helper()
	RaiseFileLimit(t, uint64(3*n+1024))
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := dial()
		if err != nil {
			t.Fatalf("idle connection %d of %d: %v", len(conns)+1, n, err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	if during != nil {
		during()
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open int
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(start.Add(Wait))
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				open++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if open > 0 {
		t.Fatalf("%d of %d idle connections still open %v after they were made", open, n, Wait)
	}
	return time.Since(start)
}

// NonLoopback returns an address of this machine that is not a loopback address (a request from it
// is a request from the network), or stops the test when there is none.
func NonLoopback(t testing.TB) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			if ip := p.Addr(); ip.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
				return ip
			}
		}
	}
	prereq.Missing(t, "a non-loopback IPv4 address on this machine (to send a request from the network)")
	return netip.Addr{}
}

// From dials addr over TCP from the local address src.
func From(src netip.Addr, addr string) Dialer {
	return func() (net.Conn, error) {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		return d.Dial("tcp", addr)
	}
}

// NoPrivateKey fails the test if dump (what an admin endpoint or CSDS served) holds a private key: a
// PEM "PRIVATE KEY" block, or any of keyPEM's keys as DER bytes, in base64 or hex, or as the bare
// private scalar (an ECDSA key's D, in bytes, base64 or hex).
func NoPrivateKey(t testing.TB, what string, dump, keyPEM []byte) {
	t.Helper()
	if bytes.Contains(dump, []byte("PRIVATE KEY")) {
		t.Errorf("%s holds a PEM private key", what)
	}
	rest := keyPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		forms := [][]byte{block.Bytes}
		if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			if ek, ok := k.(*ecdsa.PrivateKey); ok {
				if d, err := ek.Bytes(); err == nil {
					forms = append(forms, d)
				}
			}
		} else if ek, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
			if d, err := ek.Bytes(); err == nil {
				forms = append(forms, d)
			}
		}
		for _, f := range forms {
			for _, enc := range [][]byte{f, []byte(base64.StdEncoding.EncodeToString(f)), []byte(base64.RawURLEncoding.EncodeToString(f)), []byte(hex.EncodeToString(f))} {
				if bytes.Contains(dump, enc) {
					t.Errorf("%s holds the private key's bytes (%d bytes of key material)", what, len(f))
				}
			}
		}
	}
}
