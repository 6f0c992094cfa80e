package xdsclient

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// relay forwards TCP connections to upstream until frozen; frozen, it reads and drops everything both
// ways while keeping the connections open: a control plane that hangs without closing anything.
type relay struct {
	addr   string
	frozen atomic.Bool
	closed chan struct{} // receives when a client closes its connection
}

func startRelay(t *testing.T, upstream string) *relay {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	r := &relay{addr: lis.Addr().String(), closed: make(chan struct{}, 16)}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); u.Close() })
			go func() {
				r.pump(u, c)
				r.closed <- struct{}{}
			}()
			go r.pump(c, u)
		}
	}()
	return r
}

// pump copies from src to dst until src fails, dropping what it reads while frozen.
func (r *relay) pump(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !r.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil && !errors.Is(werr, net.ErrClosed) {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestDeadControlPlaneNoticed: a control plane that stops answering without closing the connection
// is noticed by HTTP/2 PINGs: the client closes that connection (and reconnects), the config stays.
func TestDeadControlPlaneNoticed(t *testing.T) {
	oldAfter, oldTimeout := pingAfter, pingTimeout
	pingAfter, pingTimeout = 200*time.Millisecond, 300*time.Millisecond
	t.Cleanup(func() { pingAfter, pingTimeout = oldAfter, oldTimeout })

	cp := startCP(t, "127.0.0.1:0", nil, false,
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Millisecond, PermitWithoutStream: true}))
	cp.set(t, testNode.ID(), "v1", resources("127.0.0.5:9000")...)
	r := startRelay(t, cp.addr)
	c := runClient(t, dial(t, r.addr), false)
	waitFor(t, "complete config", func() bool { return c.Snapshot().Complete })

	r.frozen.Store(true)
	select {
	case <-r.closed:
	case <-time.After(20 * time.Second):
		t.Fatal("the client kept a connection to a control plane that no longer answers")
	}
	if e := endpointsOf(c.Snapshot()); len(e) != 1 || e[0] != "127.0.0.5:9000" {
		t.Fatalf("config lost when the control plane hung: %v", e)
	}
}
