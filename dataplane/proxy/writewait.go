package proxy

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// writeThenWait writes the last bytes of a request to the app and returns once the connection is
// readable, without a read in between.
//
// Go's net.Conn reads at once after a write, and on loopback the response is never there yet: the
// read fails with EAGAIN and only then does the goroutine wait for the poller. That was one system
// call in five of a proxied request. Here the write is made inside RawConn.Read's callback, after the
// read side of the poller was armed, so a response arriving at any time after the write wakes the
// wait and none is lost; the bytes are then read by the caller's next Read (which finds them, or waits
// again after a spurious wake-up as any Read does).
//
// What RawConn.Read forgets is readiness from before it: bytes the server sent while the connection
// was idle in the pool. Only a connection the server closed sends those (its close, or a last message
// before it), and it answers the request with a reset, which wakes the wait; to keep even that case
// unusual, h1Conn.roundTrip arms only connections idle for less than a second. The client side does
// not use this: a pipelining client sends exactly such bytes (serveHTTP1 waits differently).
//
// A write that would block (a full send buffer) finishes with the connection's own Write, without the
// wait. Deadlines and Close interrupt the wait as they interrupt a Read.
type writeThenWait struct {
	c   net.Conn
	raw syscall.RawConn // nil: not a socket of this process (tests' pipes, wrapped conns)
	arm bool            // the next Write is the last of the message

	writeFn func(fd uintptr) bool // w.write, bound once
	p       []byte                // being written
	n       int                   // of p written
	werr    error
}

func newWriteThenWait(c net.Conn) *writeThenWait {
	w := &writeThenWait{c: c, raw: rawConnOf(c)}
	w.writeFn = w.write
	return w
}

// rawConnOf is the RawConn of a socket of this process without a read buffer of its own (a TCP
// connection, or one only wrapped to count it), else nil.
func rawConnOf(c net.Conn) syscall.RawConn {
	if s, ok := c.(*slotConn); ok {
		c = s.Conn
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

var errWouldBlock = errors.New("write would block")

func (w *writeThenWait) Write(p []byte) (int, error) {
	if !w.arm || w.raw == nil || len(p) == 0 {
		return w.c.Write(p)
	}
	w.arm = false
	w.p, w.n, w.werr = p, 0, nil
	// An error of Read itself (a deadline or Close ending the wait, or preventing it) is the next
	// Read's to report; what matters here is what was written.
	_ = w.raw.Read(w.writeFn)
	n, werr := w.n, w.werr
	w.p = nil
	switch {
	case werr == errWouldBlock:
		m, err := w.c.Write(p[n:])
		return n + m, err
	case werr != nil:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: werr}
	case n == 0:
		// The wait could not start (a read deadline passed, the connection closed): nothing was
		// written, and the connection's own Write says whether it can be.
		return w.c.Write(p)
	}
	return n, nil
}

// write is RawConn.Read's callback: the first call writes w.p and asks to wait; the next one, once
// the connection is readable (or woken for another reason: the caller's Read sorts it out), ends it.
func (w *writeThenWait) write(fd uintptr) bool {
	if w.werr != nil || w.n == len(w.p) {
		return true
	}
	for w.n < len(w.p) {
		m, e := rawWrite(int(fd), w.p[w.n:])
		switch {
		case e == syscall.EAGAIN:
			w.werr = errWouldBlock
			return true
		case e != 0:
			w.werr = os.NewSyscallError("write", e)
			return true
		}
		w.n += m
	}
	return false // written: wait until the answer can be read
}
