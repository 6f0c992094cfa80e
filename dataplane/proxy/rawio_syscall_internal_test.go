package proxy

import (
	"net"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// rawFD is the descriptor of a TCP connection (or file) for rawRead and rawWrite.
func rawFD(t *testing.T, c syscall.Conn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// readAll reads n bytes from fd with rawRead, waiting (with a deadline) for bytes still in flight.
func readAll(t *testing.T, fd, n int) ([]byte, syscall.Errno) {
	t.Helper()
	buf := make([]byte, n)
	got := 0
	deadline := time.Now().Add(10 * time.Second)
	for got < n {
		m, e := rawRead(fd, buf[got:])
		switch {
		case e == syscall.EAGAIN:
			if time.Now().After(deadline) {
				t.Fatalf("read %d of %d bytes before the deadline", got, n)
			}
			time.Sleep(time.Millisecond)
			continue
		case e != 0:
			return buf[:got], e
		case m == 0:
			return buf[:got], 0 // EOF
		}
		got += m
	}
	return buf, 0
}

// The fast path's raw reads and writes carry bytes both ways on a socket, report the peer's close as a
// read of 0, and work on a descriptor that is not a socket (a pipe) too.
func TestRawIO(t *testing.T) {
	a, b := tcpPair(t)
	fa, fb := rawFD(t, a.(*net.TCPConn)), rawFD(t, b.(*net.TCPConn))
	msg := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if n, e := rawWrite(fa, msg); e != 0 || n != len(msg) {
		t.Fatalf("rawWrite on a socket = %d, %v", n, e)
	}
	if got, e := readAll(t, fb, len(msg)); e != 0 || string(got) != string(msg) {
		t.Fatalf("rawRead on a socket = %q, %v", got, e)
	}
	if m, e := rawRead(fb, make([]byte, 16)); e != syscall.EAGAIN {
		t.Fatalf("rawRead with nothing to read = %d, %v; want EAGAIN", m, e)
	}
	a.Close()
	if got, e := readAll(t, fb, 1); e != 0 || len(got) != 0 {
		t.Fatalf("rawRead after the peer's close = %q, %v; want 0 bytes (EOF)", got, e)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fr, fw := rawFD(t, r), rawFD(t, w)
	if n, e := rawWrite(fw, msg); e != 0 || n != len(msg) {
		t.Fatalf("rawWrite on a pipe = %d, %v", n, e)
	}
	if got, e := readAll(t, fr, len(msg)); e != 0 || string(got) != string(msg) {
		t.Fatalf("rawRead on a pipe = %q, %v", got, e)
	}
}

// A raw write to a connection its peer reset fails with an error and raises no SIGPIPE (write(2)
// raises one; a program that asked for SIGPIPE with signal.Notify would be told of every client that
// went away).
func TestRawWriteNoSIGPIPE(t *testing.T) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGPIPE, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	a, b := tcpPair(t)
	fa := rawFD(t, a.(*net.TCPConn))
	if err := b.(*net.TCPConn).SetLinger(0); err != nil { // close with a reset
		t.Fatal(err)
	}
	b.Close()
	msg := make([]byte, 1024)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The first write may be taken before the reset arrives, the next fails with ECONNRESET
		// (the reset's error, without a signal), those after it with EPIPE: write(2)'s SIGPIPE.
		_, e := rawWrite(fa, msg)
		if e == syscall.EPIPE {
			break
		}
		if e != 0 && e != syscall.ECONNRESET {
			t.Fatalf("write to a reset connection: %v; want ECONNRESET, then EPIPE", e)
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset connection never failed with EPIPE")
		}
		if e == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	// A SIGPIPE raised by the write was queued before it returned; the runtime hands queued signals
	// to the channel in passes. Two SIGUSR1 round trips make sure a pass that took it has ended.
	for range 2 {
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		for got := false; !got; {
			select {
			case s := <-sigs:
				if s == syscall.SIGPIPE {
					t.Fatal("the write raised SIGPIPE")
				}
				got = s == syscall.SIGUSR1
			case <-time.After(10 * time.Second):
				t.Fatal("SIGUSR1 was not delivered")
			}
		}
	}
}
