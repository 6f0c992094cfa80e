package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/proxy"
)

// goroutinesIn reports whether a goroutine is in fn (a function name in its stack).
func goroutinesIn(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn)
}

// TestShutdownEndsTheWaitForConfig: a connection accepted before the first configuration waits for it
// (up to 10 s); a Shutdown meanwhile must end that wait and close the connection at once, not leave it
// and its goroutine to a proxy that has said it is shut down.
func TestShutdownEndsTheWaitForConfig(t *testing.T) {
	defer proxy.SetFirstConfigWait(proxy.SetFirstConfigWait(10 * time.Second))
	for _, mode := range []string{"explicit proxy", "outbound"} {
		t.Run(mode, func(t *testing.T) {
			p := proxy.New(proxy.Options{Logger: slog.New(slog.DiscardHandler)})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() {
				if mode == "outbound" {
					served <- p.ServeOutbound(l)
				} else {
					served <- p.ServeHTTPProxy(l)
				}
			}()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(5 * time.Second); !goroutinesIn("proxy.(*Proxy).awaitConfig"); {
				if time.Now().After(deadline) {
					t.Fatal("the connection never waited for the configuration")
				}
				runtime.Gosched()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := p.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			<-served
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			start := time.Now()
			n, err := c.Read(make([]byte, 512))
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the waiting connection is still open %v after Shutdown returned", time.Since(start).Round(time.Millisecond))
			}
			if n > 0 {
				t.Errorf("a proxy shut down before any configuration answered the waiting connection")
			}
			for deadline := time.Now().Add(3 * time.Second); goroutinesIn("proxy.(*Proxy).awaitConfig"); {
				if time.Now().After(deadline) {
					t.Fatal("a goroutine still waits for a configuration after Shutdown")
				}
				runtime.Gosched()
			}
		})
	}
}
