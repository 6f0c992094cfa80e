package proxy

import (
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// The fast path's reads and writes of plain sockets are made as raw system calls: the sockets are
// non-blocking (a call returns EAGAIN instead of waiting, and the wait is the poller's), so there is
// nothing for the Go scheduler to hand over while they run. syscall.Read and Write tell the scheduler
// about every call, and when the proxy had been idle that wakes the runtime's monitor thread (sysmon),
// which then polls every 20 µs for a while: between requests of an open-loop 2000 rps, a third of the
// proxy's system calls (sysmon's sleeps and wake-ups) and a context switch per request came from that.

// The calls are recvfrom(2) and sendto(2) without an address rather than read(2) and write(2): on a
// socket they do the same, without the file layer's work of a read or write (fdget_pos, vfs_read and
// vfs_write, sock_read_iter/sock_write_iter: 5-6% of the proxy's CPU under wrk in perf profiles, about
// twice HAProxy's recv/send entry cost), and MSG_NOSIGNAL spares a write to a connection the peer
// reset the SIGPIPE that write(2) raises (the runtime then catches and drops it). A descriptor that
// is not a socket (ENOTSOCK) is read or written with read(2) or write(2).

func rawRead(fd int, p []byte) (int, syscall.Errno) {
	n, e := rawIO(syscall.SYS_RECVFROM, fd, p, 0)
	if e == syscall.ENOTSOCK {
		return rawIO(syscall.SYS_READ, fd, p, 0)
	}
	return n, e
}

func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	n, e := rawIO(syscall.SYS_SENDTO, fd, p, syscall.MSG_NOSIGNAL)
	if e == syscall.ENOTSOCK {
		return rawIO(syscall.SYS_WRITE, fd, p, 0)
	}
	return n, e
}

// rawIO is recvfrom(2) or sendto(2) (trap) of p on fd with flags and no address, or read(2) or
// write(2) (which ignore the fourth argument), retried on EINTR.
func rawIO(trap uintptr, fd int, p []byte, flags uintptr) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0) // #nosec G103 -- a read/write system call on our own buffer, the same as the syscall package's
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// rawReader reads a socket through its RawConn with raw read calls (the poller waits when nothing
// has arrived; deadlines and Close end the wait as for a Read); other connections read as usual.
type rawReader struct {
	c      net.Conn
	raw    syscall.RawConn // nil: c.Read
	readFn func(fd uintptr) bool
	p      []byte
	n      int
	err    error
}

func newRawReader(c net.Conn) *rawReader {
	r := &rawReader{c: c, raw: rawConnOf(c)}
	r.readFn = r.read
	return r
}

func (r *rawReader) Read(p []byte) (int, error) {
	if r.raw == nil || len(p) == 0 {
		return r.c.Read(p)
	}
	r.p, r.n, r.err = p, 0, nil
	if err := r.raw.Read(r.readFn); err != nil {
		r.p = nil
		return 0, err
	}
	n, err := r.n, r.err
	r.p, r.err = nil, nil
	return n, err
}

func (r *rawReader) read(fd uintptr) bool {
	n, e := rawRead(int(fd), r.p)
	switch {
	case e == syscall.EAGAIN:
		return false
	case e != 0:
		r.err = &net.OpError{Op: "read", Net: "tcp", Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: os.NewSyscallError("read", e)}
	case n == 0:
		r.err = io.EOF
	}
	r.n = n
	return true
}

// rawSockConn is a socket under a TLS connection (the mTLS hop between sidecars, both ends) whose
// Read and Write are raw system calls through its RawConn, for the reason at the top of this file:
// the TLS records of that hop went through syscall.Read and Write, and since a sidecar at 1000 rps is
// idle between requests, their first call after each idle spell woke sysmon (a futex call: 17% of the
// client sidecar's CPU and 9% of the server's in the bench's profiles, plus sysmon's own wake-ups).
// Everything else (Close, addresses, deadlines, which the RawConn waits honour) is the socket's.
// crypto/tls makes at most one Read and one Write at a time; the two may run concurrently, hence
// their separate state (reads are the fast path's rawReader).
type rawSockConn struct {
	net.Conn
	raw syscall.RawConn

	r       *rawReader
	writeFn func(fd uintptr) bool
	wp      []byte
	wn      int
	werr    error

	writes atomic.Int64 // write calls that wrote (what coalescing saves)
}

// newRawSockConn wraps c if it is a socket of this process without a read buffer of its own (a TCP
// connection, or one only wrapped to count it); any other connection is returned as it is.
func newRawSockConn(c net.Conn) net.Conn {
	raw := rawConnOf(c)
	if raw == nil {
		return c
	}
	s := &rawSockConn{Conn: c, raw: raw, r: newRawReader(c)}
	s.writeFn = s.write
	return s
}

// Read reports errors as the socket's own Read would (the RawConn's wait errors say "raw-read").
func (s *rawSockConn) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		err = s.opError("read", err)
	}
	return n, err
}

func (s *rawSockConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.wp, s.wn, s.werr = p, 0, nil
	s.writes.Add(1)
	err := s.raw.Write(s.writeFn)
	n, werr := s.wn, s.werr
	s.wp, s.werr = nil, nil
	if werr == nil && err != nil {
		werr = s.opError("write", err)
	}
	return n, werr
}

func (s *rawSockConn) write(fd uintptr) bool {
	for s.wn < len(s.wp) {
		n, e := rawWrite(int(fd), s.wp[s.wn:])
		switch {
		case e == syscall.EAGAIN:
			return false // the poller waits until the socket is writable (or a deadline, or Close)
		case e != 0:
			s.werr = s.opError("write", os.NewSyscallError("write", e))
			return true
		}
		s.wn += n
	}
	return true
}

// opError reports err as the socket's own Read or Write would (RawConn's errors say "raw-read").
func (s *rawSockConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}
