package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// load is a steady stream of GETs from several workers until stopped, with each failure's time.
type load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	failures     []time.Time
	first        []string
	stop         chan struct{}
	done         sync.WaitGroup
}

func startLoad(c *http.Client, url, want string, workers int) *load {
	l := &load{stop: make(chan struct{})}
	for range workers {
		l.done.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				l.sent.Add(1)
				err := func() error {
					resp, err := c.Get(url)
					if err != nil {
						return err
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(b), want) {
						return fmt.Errorf("%d %q weft-error=%q %v", resp.StatusCode, b, resp.Header.Get("Weft-Error"), err)
					}
					return nil
				}()
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					l.failures = append(l.failures, time.Now())
					if len(l.first) < 5 {
						l.first = append(l.first, err.Error())
					}
					l.mu.Unlock()
				}
			}
		})
	}
	return l
}

func (l *load) finish() { close(l.stop); l.done.Wait() }

// TestProxyRestartUnderLoad (security.md §6, the proxy restart): a sidecar is drained and started
// again while four workers send requests without pause.
//
// A server pod's sidecar (one of two endpoints of the Service, mTLS between the sidecars): no request
// fails. The draining sidecar finishes what it has in flight and stops accepting; the client's
// sidecar finds its connection gone (GOAWAY) and the next connection refused, and sends the request
// to the other endpoint (the connect-failure retry).
//
// The client pod's own sidecar (the one its app talks to): the app's requests fail only while no
// sidecar listens, between the drain's end and the new sidecar's listener; a slow request in flight
// when the drain starts completes.
func TestProxyRestartUnderLoad(t *testing.T) {
	ca := testpki.NewCA("mesh")
	app := startBackend(t, "app", "127.0.0.1:0")
	port := strconv.Itoa(int(app.addr.Port()))
	pods := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.130:" + port), netip.MustParseAddrPort("127.0.0.131:" + port)}
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", inboundResources(int(app.addr.Port()), false)...)
	startServer := func(pod netip.AddrPort) *sidecar {
		s := startSidecar(t, cp.addr, serverNode, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
		s.inboundAt(t, pod.String())
		s.waitReady(t)
		return s
	}
	servers := []*sidecar{startServer(pods[0]), startServer(pods[1])}
	svc := newService(t, echoFQDN, "127.0.0.132", pods...)
	svc.lb = clusterv3.Cluster_ROUND_ROBIN
	msgs := resources(svc)
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == svc.cluster() {
			fx.WithMTLS(c, echoID)
		}
	}
	cp.set(t, clientNode.ID(), "v1", msgs...)
	clientIdent := testpki.Identity{Leaf: ca.Issue(clientID), CA: ca}
	client := startSidecar(t, cp.addr, clientNode, clientIdent)
	client.outboundAt(svc.lis)
	client.waitReady(t)
	url := "http://" + svc.authority() + "/r"
	drain := func(s *sidecar) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.p.Shutdown(ctx); err != nil {
			t.Fatalf("drain: %v", err)
		}
	}
	// waitSent waits until the load has sent n more requests.
	waitSent := func(l *load, n int64) {
		from := l.sent.Load()
		waitFor(t, fmt.Sprintf("%d more requests", n), func() bool { return l.sent.Load() >= from+n })
	}

	t.Run("server-sidecar", func(t *testing.T) {
		c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 8}, svc), Timeout: 10 * time.Second}
		l := startLoad(c, url, "app ", 4)
		start := time.Now()
		waitSent(l, 200)
		for range 2 { // restart server pod 0's sidecar twice
			drain(servers[0])
			waitSent(l, 100) // traffic with one endpoint down
			servers[0] = startServer(pods[0])
			waitSent(l, 200)
		}
		l.finish()
		took := time.Since(start)
		sent, failed := l.sent.Load(), l.failed.Load()
		t.Logf("two restarts of a server sidecar: %d requests in %v (%.0f/s), %d failed; %v connect retries",
			sent, took.Round(time.Millisecond), float64(sent)/took.Seconds(), failed, connectRetries(t, client, svc.cluster()))
		if failed != 0 {
			t.Errorf("%d of %d requests failed while a server sidecar restarted, want none; the first: %v", failed, sent, l.first)
		}
	})

	t.Run("client-sidecar", func(t *testing.T) {
		app.delay.Store(0)
		c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 8}, svc), Timeout: 10 * time.Second}
		l := startLoad(c, url, "app ", 4)
		start := time.Now()
		waitSent(l, 200)
		// A slow request in flight when the drain starts.
		slowDone := make(chan error, 1)
		slow := &http.Client{Transport: resolve(&http.Transport{}, svc), Timeout: 10 * time.Second}
		hits := app.hits.Load()
		app.delay.Store(int64(300 * time.Millisecond))
		go func() {
			resp, err := slow.Get(url)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("%s", resp.Status)
				}
			}
			slowDone <- err
		}()
		waitFor(t, "the slow request at the app", func() bool { return app.hits.Load() > hits })
		addr := svc.lis.Addr().String()
		downFrom := time.Now()
		drain(client)
		app.delay.Store(0)
		if err := <-slowDone; err != nil {
			t.Errorf("the request in flight during the drain: %v", err)
		}
		lis := listen(t, addr)
		client = startSidecar(t, cp.addr, clientNode, clientIdent)
		client.outboundAt(lis)
		client.waitReady(t)
		downTo := time.Now()
		waitSent(l, 200)
		l.finish()
		took := time.Since(start)
		sent, failed := l.sent.Load(), l.failed.Load()
		outside := 0
		l.mu.Lock()
		for _, at := range l.failures {
			if at.Before(downFrom) || at.After(downTo.Add(time.Second)) {
				outside++
			}
		}
		l.mu.Unlock()
		t.Logf("a restart of the client's own sidecar: %d requests in %v, %d failed, all between the drain and the new sidecar's ready (%v), %d outside",
			sent, took.Round(time.Millisecond), failed, downTo.Sub(downFrom).Round(time.Millisecond), outside)
		if outside != 0 {
			t.Errorf("%d requests failed outside the restart window; the first: %v", outside, l.first)
		}
	})
}

// TestConnectionBeforeFirstConfigWaits: a request that reaches a sidecar which has just started (its
// listeners open, its configuration not yet complete) waits for the configuration and is served,
// instead of being closed or answered 503 "no route".
func TestConnectionBeforeFirstConfigWaits(t *testing.T) {
	b := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.133", b.addr)
	cp := startCP(t, "127.0.0.1:0", nil, false)
	sc := startSidecar(t, cp.addr, clientNode, nil)
	counted := &countingListener{Listener: svc.lis}
	sc.outboundAt(counted)
	res := make(chan string, 1)
	go func() {
		resp, err := clientFor(svc).Get("http://" + svc.authority() + "/early")
		if err != nil {
			res <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- resp.Status + " " + string(body)
	}()
	// The connection is accepted by the proxy before the configuration exists.
	waitFor(t, "the early connection accepted", func() bool { return counted.n.Load() == 1 })
	cp.set(t, clientNode.ID(), "v1", resources(svc)...)
	select {
	case r := <-res:
		if !strings.HasPrefix(r, "200 OK b HTTP/1.1") {
			t.Fatalf("a request sent before the first configuration: %s", r)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the early request was not served after the configuration arrived")
	}
}

// TestNoControlPlaneFailsClosed (security.md §6 item 6, new pods): a sidecar that starts while the
// control plane is unreachable is not ready, and a request to it fails (its connection is closed) once
// the wait for a first configuration is spent; nothing is forwarded anywhere.
func TestNoControlPlaneFailsClosed(t *testing.T) {
	defer proxy.SetFirstConfigWait(proxy.SetFirstConfigWait(300 * time.Millisecond))
	b := startBackend(t, "b", "127.0.0.1:0")
	svc := newService(t, echoFQDN, "127.0.0.134", b.addr)
	dead := closedPort(t)
	sc := startSidecar(t, dead.String(), clientNode, nil)
	sc.outboundAt(svc.lis)
	start := time.Now()
	resp, err := clientFor(svc).Get("http://" + svc.authority() + "/new-pod")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("a sidecar without a control plane answered %s %q", resp.Status, body)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("the request failed after %v, before the wait for a configuration (300ms) was spent", took)
	}
	if ok, why := sc.p.Ready(); ok {
		t.Errorf("a sidecar without a configuration is ready (%s)", why)
	}
	if b.hits.Load() != 0 {
		t.Errorf("the backend got %d requests from a sidecar without a configuration", b.hits.Load())
	}
}
