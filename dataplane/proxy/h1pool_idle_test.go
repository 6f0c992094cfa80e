package proxy

import (
	"io"
	"net"
	"testing"
	"time"
)

// The pool's idle bookkeeping runs on monoNow readings passed in by its callers (the lean path reads
// the clock once when a request starts and once when it ends): a connection returned at t is reused
// up to t+h1IdleTimeout and closed after it, and the wait for a response is armed only on a
// connection idle for less than a second.
func TestH1PoolIdleClock(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var d net.Dialer
	p := newH1Pool(d.DialContext, nil)
	addr := l.Addr().String()
	pc, reused, err := p.getDeadline(addr, false, time.Time{}, monoNow())
	if err != nil || reused {
		t.Fatalf("first get: reused %v, %v", reused, err)
	}
	srv := <-accepted
	defer srv.Close()
	if !pc.recentlyUsed(monoNow()) {
		t.Error("a new connection does not count as recently used")
	}

	t0 := monoNow()
	if t0 <= 0 {
		t.Fatalf("monoNow = %v, want > 0", t0)
	}
	p.put(pc, t0)
	if !pc.recentlyUsed(t0+time.Second-1) || pc.recentlyUsed(t0+time.Second) {
		t.Error("recentlyUsed: want true up to a second after the connection went idle, false from then on")
	}
	got := p.getIdle(addr, t0+h1IdleTimeout-1)
	if got != pc {
		t.Fatalf("getIdle just before the idle timeout = %p, want the idle connection %p", got, pc)
	}
	p.put(pc, t0)
	if got := p.getIdle(addr, t0+h1IdleTimeout); got != nil {
		t.Fatalf("getIdle at the idle timeout returned a connection, want none")
	}
	// The timed-out connection was closed: the server reads EOF.
	_ = srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := srv.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server read after the idle timeout: %v, want EOF (closed by the pool)", err)
	}
	if m := monoNow(); m < t0 {
		t.Fatalf("monoNow went back: %v after %v", m, t0)
	}
}
