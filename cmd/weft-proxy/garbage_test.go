package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/weftmesh/weft/conformance/portprobe"
	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// startProxyWithAdmin runs the proxy command with a workload certificate from --cert-dir, a test
// control plane's config, and its admin server on adminAddr with the given timeouts; it returns the
// certificate directory once /ready answers 200.
func startProxyWithAdmin(t *testing.T, adminAddr string, headerTimeout, idleTimeout time.Duration) string {
	t.Helper()
	ca := testpki.NewCA("mesh")
	dir := t.TempDir()
	if err := testpki.WriteDir(dir, ca.Issue("spiffe://cluster.local/ns/shop/sa/web"), ca); err != nil {
		t.Fatal(err)
	}
	cp := startCP(t, "127.0.0.1:0", nil, false)
	const fqdn = "web.shop.svc.cluster.local"
	cl := fx.ClusterName(80, fqdn)
	cp.set(t, "web-1.shop", "v1",
		fx.EDSCluster(cl, clusterv3.Cluster_LEAST_REQUEST), fx.CLA(cl, netip.MustParseAddrPort("127.0.0.1:9")),
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), nil, fx.Chain{Name: "web", IP: "10.0.0.1", Port: 80, Route: "80"}),
		fx.RouteConfig("80", fx.VirtualHost{Name: fqdn, Domains: []string{fqdn}, Routes: []fx.Route{{Cluster: cl}}}),
	)
	o := runOptions{
		xdsAddr: cp.addr, podName: "web-1", namespace: "shop", serviceAccount: "web", certDir: dir,
		adminAddr: adminAddr, outboundAddr: freeAddr(t), inboundAddr: freeAddr(t), logLevel: "error", drainTimeout: time.Second,
		adminHeaderTimeout: headerTimeout, adminIdleTimeout: idleTimeout,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("the proxy did not stop")
		}
	})
	ready := "http://" + strings.Replace(adminAddr, "0.0.0.0", "127.0.0.1", 1) + "/ready"
	waitFor(t, "/ready", func() bool { code, _, _ := httpGet(ready); return code == 200 })
	return dir
}

// TestGarbageOnProxyAdmin sends garbage to weft-proxy's admin port (15000): random bytes, a TLS hello,
// a half-open request head, a slowloris head, 1 MiB of headers (431) and 2000 connections that send
// nothing. Each connection is closed by the proxy (read-header timeout 1 s here, 10 s by default;
// idle 2 s here, 2 min by default) and /ready answers all along.
func TestGarbageOnProxyAdmin(t *testing.T) {
	addr := freeAddr(t)
	startProxyWithAdmin(t, addr, time.Second, 2*time.Second)
	ready := func() {
		t.Helper()
		if code, body, err := httpGet("http://" + addr + "/ready"); code != 200 {
			t.Fatalf("/ready: %d %q %v", code, body, err)
		}
	}
	dial := portprobe.TCP(addr)
	t.Logf("random bytes: closed after %v", portprobe.RandomBytes(t, dial, 4096))
	t.Logf("TLS hello: closed after %v", portprobe.TLSHello(t, dial))
	t.Logf("half-open head: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialHTTP1))
	d, n := portprobe.Slowloris(t, dial, []byte("GET /ready HTTP/1.1\r\nHost: x\r\n"), 20*time.Millisecond)
	t.Logf("slowloris: closed after %v and %d bytes", d, n)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/ready", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 1<<20))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("1 MiB of headers: %d, want 431", resp.StatusCode)
		}
	}
	const idle = 2000
	t.Logf("%d idle connections: all closed %v after they opened", idle, portprobe.Idle(t, dial, idle, ready))
	ready()
}

// TestProxyAdminExposure: weft-proxy's admin port listens on every address (the kubelet probes /ready
// and /live on the pod IP, Prometheus scrapes /metrics), but /config_dump, /clusters, /xds and POST
// /shutdown answer loopback clients only: from another address of the machine they get 403 and the
// proxy keeps running. Nothing the admin port serves holds the workload's private key.
func TestProxyAdminExposure(t *testing.T) {
	src := portprobe.NonLoopback(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	dir := startProxyWithAdmin(t, "0.0.0.0:"+port, 0, 0)
	fromNet := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return portprobe.From(src, addr)()
	}}}
	remote := "http://" + src.String() + ":" + port
	local := "http://127.0.0.1:" + port
	call := func(c *http.Client, method, url string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, url, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	for _, path := range []string{"/ready", "/live", "/metrics"} {
		if code, body := call(fromNet, "GET", remote+path); code != 200 {
			t.Errorf("GET %s from %s: %d %q, want 200", path, src, code, body)
		}
	}
	for _, r := range []struct{ method, path string }{{"GET", "/config_dump"}, {"GET", "/clusters"}, {"GET", "/xds"}, {"POST", "/shutdown"}, {"GET", "/debug/pprof/"}} {
		if code, body := call(fromNet, r.method, remote+r.path); code != http.StatusForbidden {
			t.Errorf("%s %s from %s: %d %q, want 403", r.method, r.path, src, code, body)
		}
	}
	if code, _ := call(fromNet, "GET", remote+"/live"); code != 200 {
		t.Fatalf("the proxy stopped after a POST /shutdown from %s", src)
	}

	key, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/config_dump", "/clusters", "/xds", "/metrics", "/ready", "/live"} {
		code, body := call(http.DefaultClient, "GET", local+path)
		if code != 200 {
			t.Fatalf("GET %s from loopback: %d %q", path, code, body)
		}
		portprobe.NoPrivateKey(t, "GET "+path, body, key)
	}
}
