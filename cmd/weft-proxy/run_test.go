package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpGet(u string) (int, string, error) {
	resp, err := http.Get(u)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestRunServesAdminAndTraffic runs the proxy command against a test control plane: /ready waits for
// the config, traffic flows through the explicit HTTP proxy, the admin endpoints describe what
// happened, and POST /shutdown drains and returns.
func TestRunServesAdminAndTraffic(t *testing.T) {
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from backend") })}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = backend.Serve(bl) }()
	defer backend.Close()

	cp := startCP(t, "127.0.0.1:0", nil, false)
	o := runOptions{
		xdsAddr: cp.addr, podName: "web-1", namespace: "shop", deployment: "web", podIP: "127.0.0.1", serviceAccount: "web",
		adminAddr: freeAddr(t), httpProxyAddr: freeAddr(t), outboundAddr: freeAddr(t), inboundAddr: freeAddr(t),
		logLevel: "warn", drainTimeout: 5 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), o) }()
	admin := "http://" + o.adminAddr
	waitFor(t, "admin up", func() bool { _, _, err := httpGet(admin + "/live"); return err == nil })
	if code, body, _ := httpGet(admin + "/ready"); code != 503 || !strings.Contains(body, "waiting for a complete xDS configuration") {
		t.Fatalf("/ready before config: %d %q", code, body)
	}

	const fqdn = "web.shop.svc.cluster.local"
	cl := fx.ClusterName(80, fqdn)
	cp.set(t, "web-1.shop", "v7",
		fx.EDSCluster(cl, clusterv3.Cluster_LEAST_REQUEST),
		fx.CLA(cl, netip.MustParseAddrPort(bl.Addr().String())),
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), nil, fx.Chain{Name: "web", IP: "10.0.0.1", Port: 80, Route: "80"}),
		fx.RouteConfig("80", fx.VirtualHost{Name: fqdn, Domains: []string{fqdn, fqdn + ":80"}, Routes: []fx.Route{{Cluster: cl}}}),
	)
	waitFor(t, "/ready", func() bool { code, _, _ := httpGet(admin + "/ready"); return code == 200 })

	pu, _ := url.Parse("http://" + o.httpProxyAddr)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	for range 3 {
		resp, err := c.Get("http://" + fqdn + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "hello from backend" {
			t.Fatalf("through the proxy: %d %q", resp.StatusCode, b)
		}
	}

	_, metrics, _ := httpGet(admin + "/metrics")
	want := `response_total{authority="web.shop.svc.cluster.local",classification="success",deployment="web",direction="outbound",dst_namespace="shop",dst_service="web",namespace="shop",pod="web-1",status_code="200",target_cluster="outbound|80||web.shop.svc.cluster.local",tls="false"} 3`
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	// Every family has HELP text (Prometheus and Grafana show it).
	for line := range strings.Lines(metrics) {
		if f, ok := strings.CutPrefix(line, "# HELP "); ok && !strings.Contains(strings.TrimSpace(f), " ") {
			t.Errorf("/metrics: no HELP text in %q", line)
		}
	}
	// The runtime's and the process's series that operators watch a sidecar by.
	for _, series := range []string{"# TYPE response_total counter", "# TYPE response_latency_ms histogram", "\nprocess_resident_memory_bytes ",
		"\nprocess_cpu_seconds_total ", "\nprocess_open_fds ", "\ngo_goroutines ", "\ngo_memstats_heap_inuse_bytes "} {
		if !strings.Contains(metrics, series) {
			t.Errorf("/metrics lacks %q", series)
		}
	}

	_, dump, _ := httpGet(admin + "/config_dump")
	var cd struct {
		Configs []map[string]any `json:"configs"`
	}
	if err := json.Unmarshal([]byte(dump), &cd); err != nil || len(cd.Configs) != 4 {
		t.Fatalf("/config_dump: %v, %d configs", err, len(cd.Configs))
	}
	for _, s := range []string{`"version_info": "v7"`, `"name": "outbound"`, `"route_config"`, `"cluster_name": "outbound|80||web.shop.svc.cluster.local"`, "ListenersConfigDump"} {
		if !strings.Contains(dump, s) {
			t.Errorf("/config_dump lacks %s", s)
		}
	}

	_, clusters, _ := httpGet(admin + "/clusters")
	if !strings.Contains(clusters, bl.Addr().String()) || !strings.Contains(clusters, `"health": "HEALTHY"`) {
		t.Errorf("/clusters: %s", clusters)
	}

	resp, err := http.Post(admin+"/shutdown", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /shutdown: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after /shutdown")
	}
}

func TestRunFlagErrors(t *testing.T) {
	err := run(context.Background(), runOptions{logLevel: "info"})
	if err == nil || !strings.Contains(err.Error(), "--xds-addr") || !strings.Contains(err.Error(), "--pod-name") {
		t.Fatalf("missing flags: %v", err)
	}
	for addr, want := range map[string]string{
		"127.0.0.1:99999": `--xds-addr "127.0.0.1:99999": the port must be a number from 1 to 65535`,
		"127.0.0.1:0":     `--xds-addr "127.0.0.1:0": the port must be a number from 1 to 65535`,
		"127.0.0.1:xds":   `--xds-addr "127.0.0.1:xds": the port must be a number`,
		":15012":          `--xds-addr ":15012": want host:port`,
		"127.0.0.1":       `--xds-addr "127.0.0.1": want host:port`,
	} {
		err = run(context.Background(), runOptions{xdsAddr: addr, podName: "a", namespace: "b", logLevel: "info"})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--xds-addr %s: %v, want %q", addr, err, want)
		}
	}
	err = run(context.Background(), runOptions{xdsAddr: "127.0.0.1:1", identityAddr: "cp:70000", podName: "a", namespace: "b", logLevel: "info"})
	if err == nil || !strings.Contains(err.Error(), `--identity-addr "cp:70000": the port must be`) {
		t.Errorf("--identity-addr cp:70000: %v", err)
	}
	err = run(context.Background(), runOptions{xdsAddr: "127.0.0.1:1", podName: "a", namespace: "b", logLevel: "loud"})
	if err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Fatalf("bad level: %v", err)
	}
	err = run(context.Background(), runOptions{xdsAddr: "127.0.0.1:1", podName: "a", namespace: "b", logLevel: "info", certDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "cert.pem") {
		t.Fatalf("empty cert dir: %v", err)
	}
	for _, tc := range []struct{ addr, rate, want string }{
		{"collector", "0", `--otlp-addr "collector": want host:port (OTLP/HTTP`},
		{"collector:4318", "half", `--trace-sampling "half": want a fraction from 0 to 1`},
		{"collector:4318", "2", `--trace-sampling "2": want a fraction from 0 to 1`},
	} {
		err = run(context.Background(), runOptions{xdsAddr: "127.0.0.1:1", podName: "a", namespace: "b", logLevel: "info", otlpAddr: tc.addr, traceSampling: tc.rate})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--otlp-addr %s --trace-sampling %s: %v, want %q", tc.addr, tc.rate, err, tc.want)
		}
	}
}

func TestRunIdentityFlagErrors(t *testing.T) {
	base := runOptions{xdsAddr: "127.0.0.1:1", podName: "a", namespace: "b", logLevel: "info"}
	o := base
	o.certDir, o.identityAddr = t.TempDir(), "127.0.0.1:15012"
	if err := run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Fatalf("both identities: %v", err)
	}
	o = base
	o.xdsTLS = true
	if err := run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "--xds-tls needs a workload certificate") {
		t.Fatalf("xds-tls without identity: %v", err)
	}
	o = base
	o.identityAddr, o.trustDomain, o.serviceAccount = "127.0.0.1:15012", "cluster.local", "Not_A_Valid_Name"
	if err := run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "--service-account") {
		t.Fatalf("bad service account: %v", err)
	}
}

// TestTrustAnchorsFromEnvironment: the anchors the injector passes as TRUST_ANCHORS take the place of
// --trust-bundle-file (absent in an injected Pod), and text that is not PEM is a clear error.
func TestTrustAnchorsFromEnvironment(t *testing.T) {
	ca := testpki.NewCA("mesh")
	log := slog.New(slog.DiscardHandler)
	o := runOptions{identityAddr: "127.0.0.1:15012", trustDomain: "cluster.local", namespace: "shop", serviceAccount: "web",
		tokenFile: "/var/run/secrets/weft/token", trustBundleFile: "/nonexistent/ca.crt", trustAnchors: string(ca.PEM)}
	id, _, err := identitySource(o, log)
	if err != nil {
		t.Fatalf("TRUST_ANCHORS set: %v", err)
	}
	if !id.TrustBundle().Equal(ca.Pool()) {
		t.Error("the trust bundle is not TRUST_ANCHORS")
	}
	o.trustAnchors = "not PEM"
	if _, _, err := identitySource(o, log); err == nil || !strings.Contains(err.Error(), "trust anchors") {
		t.Errorf("bad TRUST_ANCHORS: %v", err)
	}
}

// TestRunXDSOverMTLS: with --cert-dir and --xds-tls the proxy talks xDS over mTLS, checking the control
// plane's certificate against the trust bundle and presenting its own.
func TestRunXDSOverMTLS(t *testing.T) {
	ca := testpki.NewCA("mesh")
	dir := t.TempDir()
	if err := testpki.WriteDir(dir, ca.Issue("spiffe://cluster.local/ns/shop/sa/web"), ca); err != nil {
		t.Fatal(err)
	}
	serverCert := ca.IssueServer("127.0.0.1")
	var clientID atomic.Value
	creds := credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert.TLS},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			clientID.Store(cs.PeerCertificates[0].URIs[0].String())
			return nil
		},
	})
	cp := startCP(t, "127.0.0.1:0", nil, false, grpc.Creds(creds))
	const fqdn = "web.shop.svc.cluster.local"
	cl := fx.ClusterName(80, fqdn)
	cp.set(t, "web-1.shop", "v1",
		fx.EDSCluster(cl, clusterv3.Cluster_LEAST_REQUEST), fx.CLA(cl),
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), nil, fx.Chain{Name: "web", IP: "10.0.0.1", Port: 80, Cluster: cl}),
	)
	o := runOptions{
		xdsAddr: cp.addr, podName: "web-1", namespace: "shop", serviceAccount: "web", certDir: dir, xdsTLS: true,
		adminAddr: freeAddr(t), outboundAddr: freeAddr(t), inboundAddr: freeAddr(t), logLevel: "error", drainTimeout: time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "/ready over mTLS xDS", func() bool { code, _, _ := httpGet("http://" + o.adminAddr + "/ready"); return code == 200 })
	if id, _ := clientID.Load().(string); id != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("control plane saw client %q", id)
	}
}
