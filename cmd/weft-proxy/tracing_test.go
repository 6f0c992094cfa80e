package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// TestRunExportsSpans runs the proxy command with --otlp-addr and --trace-sampling 1: a request without
// a trace context starts a trace, the backend gets its traceparent, and the span reaches the OTLP/HTTP
// collector with the pod's resource attributes, at the latest when the proxy stops.
func TestRunExportsSpans(t *testing.T) {
	var mu sync.Mutex
	var got []*tracepb.ResourceSpans
	collector := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(b, &req) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, req.GetResourceSpans()...)
		mu.Unlock()
	})}
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = collector.Serve(cl) }()
	defer collector.Close()

	var traceparent string
	backend := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		traceparent = r.Header.Get("Traceparent")
		mu.Unlock()
	})}
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = backend.Serve(bl) }()
	defer backend.Close()

	cp := startCP(t, "127.0.0.1:0", nil, false)
	o := runOptions{
		xdsAddr: cp.addr, podName: "web-1", namespace: "shop", podIP: "127.0.0.1", serviceAccount: "web",
		adminAddr: freeAddr(t), httpProxyAddr: freeAddr(t), outboundAddr: "", inboundAddr: "",
		logLevel: "warn", drainTimeout: 5 * time.Second,
		otlpAddr: cl.Addr().String(), traceSampling: "1",
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	const fqdn = "web.shop.svc.cluster.local"
	name := fx.ClusterName(80, fqdn)
	cp.set(t, "web-1.shop", "v1",
		fx.EDSCluster(name, clusterv3.Cluster_LEAST_REQUEST),
		fx.CLA(name, netip.MustParseAddrPort(bl.Addr().String())),
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), nil, fx.Chain{Name: "web", IP: "10.0.0.1", Port: 80, Route: "80"}),
		fx.RouteConfig("80", fx.VirtualHost{Name: fqdn, Domains: []string{fqdn, fqdn + ":80"}, Routes: []fx.Route{{Cluster: name}}}),
	)
	waitFor(t, "/ready", func() bool { code, _, _ := httpGet("http://" + o.adminAddr + "/ready"); return code == 200 })
	pu, _ := url.Parse("http://" + o.httpProxyAddr)
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}).Get("http://" + fqdn + "/books")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("through the proxy: %d %s", resp.StatusCode, resp.Header.Get("Weft-Error"))
	}
	cancel() // SIGTERM: drain, then the exporter flushes
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(traceparent) != 55 || traceparent[53:] != "01" {
		t.Fatalf("the backend got traceparent %q, want a sampled one the proxy started", traceparent)
	}
	if len(got) == 0 || len(got[0].GetScopeSpans()) == 0 || len(got[0].GetScopeSpans()[0].GetSpans()) != 1 {
		t.Fatalf("the collector got %v, want one span", got)
	}
	res := map[string]string{}
	for _, kv := range got[0].GetResource().GetAttributes() {
		res[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if res["service.name"] != "weft-proxy" || res["k8s.pod.name"] != "web-1" || res["k8s.namespace.name"] != "shop" {
		t.Errorf("resource attributes %v", res)
	}
	s := got[0].GetScopeSpans()[0].GetSpans()[0]
	if s.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || s.GetName() != "GET" || traceparent[36:52] != hexID(s.GetSpanId()) {
		t.Errorf("span %v; want the CLIENT span whose id the backend got as parent (%s)", s, traceparent)
	}
}

func hexID(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
