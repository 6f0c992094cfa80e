package proxy_test

import (
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/portprobe"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/testpki"
)

// TestGarbageOnProxyListeners sends garbage to each of the proxy's listeners (outbound 15001, inbound
// 15006 with its mTLS and plaintext chains, the explicit HTTP proxy 4140): random bytes, a TLS hello,
// a partial request head and silence, a head trickled a byte at a time (slowloris), and 2000
// connections that send nothing. The proxy closes each connection, at once or after its timeouts
// (shortened here: read-header 1 s, idle 2 s; 30 s and 5 min by default), and serves real requests
// all along. The three listeners are probed at once (6000 idle connections in all).
func TestGarbageOnProxyListeners(t *testing.T) {
	ca := testpki.NewCA("mesh")
	app := startBackend(t, "app", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.92", app.addr)
	pod := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.93"), app.addr.Port())
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, clientNode.ID(), "v1", append(resources(svc), inboundResources(int(pod.Port()), false)...)...)
	sc := startSidecarWith(t, cp.addr, clientNode, proxy.Options{
		Identity:          testpki.Identity{Leaf: ca.Issue(clientID), CA: ca},
		ReadHeaderTimeout: time.Second,
		IdleTimeout:       2 * time.Second,
	})
	sc.outboundAt(svc.lis)
	sc.inboundAt(t, pod.String())
	sc.waitReady(t)

	plain := &http.Client{Timeout: 20 * time.Second}
	listeners := []struct {
		name string
		addr string
		real func() (*http.Response, error)
	}{
		{"outbound", svc.lis.Addr().String(), func() (*http.Response, error) {
			return clientFor(svc).Get("http://" + svc.authority() + "/real")
		}},
		{"inbound", pod.String(), func() (*http.Response, error) {
			return plain.Get("http://" + pod.String() + "/real")
		}},
		{"explicit HTTP proxy", sc.httpAddr, func() (*http.Response, error) {
			return sc.proxyClient().Get("http://" + svc.authority() + "/real")
		}},
	}
	for _, l := range listeners {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			real := func(when string) {
				t.Helper()
				resp, err := l.real()
				if err != nil {
					t.Fatalf("a real request %s: %v", when, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("a real request %s: %d %q", when, resp.StatusCode, body)
				}
			}
			dial := portprobe.TCP(l.addr)
			real("before")
			t.Logf("random bytes: closed after %v", portprobe.RandomBytes(t, dial, 4096))
			t.Logf("TLS hello: closed after %v", portprobe.TLSHello(t, dial))
			t.Logf("HTTP/2 preface and a partial frame: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialH2Frame))
			t.Logf("half-open head: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialHTTP1))
			d, n := portprobe.Slowloris(t, dial, []byte("GET /real HTTP/1.1\r\nHost: "+svc.authority()+"\r\n"), 20*time.Millisecond)
			t.Logf("slowloris: closed after %v and %d bytes", d, n)
			const idle = 2000
			t.Logf("%d idle connections: all closed %v after they opened", idle, portprobe.Idle(t, dial, idle, func() { real("with 2000 idle connections open") }))
			real("after")
		})
	}
}

// TestH2FloodsOnTheOutboundListener sends HTTP/2 floods (h2c with prior knowledge) to the outbound
// listener, frame by frame: Rapid Reset (10000 streams opened and reset at once), a CONTINUATION flood,
// and 10000 PINGs and SETTINGS. The proxy (net/http's HTTP/2 server) stays up and serves a real request
// after each; the CONTINUATION flood is cut by the 64 KiB head limit, long before the test's 64 MiB.
func TestH2FloodsOnTheOutboundListener(t *testing.T) {
	app := startBackend(t, "app", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.94", app.addr)
	mesh(t, svc)
	real := func() {
		t.Helper()
		resp, body := get(t, clientFor(svc), "http://"+svc.authority()+"/real")
		if resp.StatusCode != 200 {
			t.Fatalf("a real request: %d %q", resp.StatusCode, body)
		}
	}
	dial := portprobe.TCP(svc.lis.Addr().String())
	real()
	r := portprobe.RapidReset(t, dial, "/", 10000)
	t.Logf("rapid reset, 10000 streams: %d bytes in %v, cut by the proxy: %v; the app got %d requests", r.Bytes, r.Took, r.Cut, app.hits.Load()-1)
	real()
	const max = 64 << 20
	r = portprobe.ContinuationFlood(t, dial, "/", max)
	t.Logf("CONTINUATION flood: %d bytes in %v, cut by the proxy: %v", r.Bytes, r.Took, r.Cut)
	if !r.Cut || r.Bytes >= max {
		t.Errorf("CONTINUATION flood: %d bytes taken, cut %v: want the connection cut before %d bytes", r.Bytes, r.Cut, max)
	}
	real()
	r = portprobe.PingFlood(t, dial, 10000)
	t.Logf("PING flood, 10000: %d bytes in %v, cut by the proxy: %v", r.Bytes, r.Took, r.Cut)
	real()
	r = portprobe.SettingsFlood(t, dial, 10000)
	t.Logf("SETTINGS flood, 10000: %d bytes in %v, cut by the proxy: %v", r.Bytes, r.Took, r.Cut)
	real()
}
