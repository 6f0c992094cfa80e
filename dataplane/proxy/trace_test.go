package proxy_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/testpki"
	"github.com/weftmesh/weft/dataplane/tracing"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// otlpReceiver is an OTLP/HTTP collector endpoint (POST /v1/traces, protobuf) that decodes each
// export as the collector's ExportTraceServiceRequest and keeps the spans with their resource's
// service.name.
type otlpReceiver struct {
	addr  string
	mu    sync.Mutex
	spans []recvSpan
}

type recvSpan struct {
	service string
	*tracepb.Span
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	rc := &otlpReceiver{}
	l := listen(t, "127.0.0.1:0")
	rc.addr = l.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want POST /v1/traces with application/x-protobuf", http.StatusBadRequest)
			return
		}
		b, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		for _, rs := range req.GetResourceSpans() {
			var service string
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					service = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					rc.spans = append(rc.spans, recvSpan{service, s})
				}
			}
		}
		rc.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return rc
}

// spansOf waits until the receiver holds n spans of trace id and returns them.
func (rc *otlpReceiver) spansOf(t *testing.T, trace []byte, n int) []recvSpan {
	t.Helper()
	var got []recvSpan
	waitFor(t, strconv.Itoa(n)+" spans of trace "+hex.EncodeToString(trace), func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		got = got[:0]
		for _, s := range rc.spans {
			if bytes.Equal(s.GetTraceId(), trace) {
				got = append(got, s)
			}
		}
		return len(got) >= n
	})
	return got
}

func (rc *otlpReceiver) total() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.spans)
}

func startExporter(t *testing.T, endpoint, service string, rate float64) *tracing.Exporter {
	t.Helper()
	e, err := tracing.New(tracing.Options{Endpoint: endpoint, SampleRate: rate, Interval: 20 * time.Millisecond,
		Resource: []tracing.Attr{tracing.String("service.name", service)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func attrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, kv := range s.GetAttributes() {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.GetKey()] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.GetKey()] = strconv.FormatInt(v.IntValue, 10)
		}
	}
	return m
}

// TestTracingThroughTwoSidecars sends requests with trace contexts from an app through its sidecar,
// mTLS, and the server's sidecar to the server app, and checks what an OTLP collector receives and
// what the server app sees: the incoming trace id is kept, the client sidecar's CLIENT span is the
// child of the app's span, the server sidecar's SERVER span the child of that, and the server app's
// parent is the SERVER span; in W3C, B3 single and B3 multi; unsampled and absent contexts make no
// spans.
func TestTracingThroughTwoSidecars(t *testing.T) {
	ca := testpki.NewCA("mesh")
	clientIdent := testpki.Identity{Leaf: ca.Issue(clientID), CA: ca}
	echoIdent := testpki.Identity{Leaf: ca.Issue(echoID), CA: ca}
	rc := startOTLPReceiver(t)

	// The server app records the trace headers it got.
	var seenMu sync.Mutex
	var seen http.Header
	appL := listen(t, "127.0.0.1:0")
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenMu.Lock()
		seen = r.Header.Clone()
		seenMu.Unlock()
		if r.URL.Path == "/fail" {
			http.Error(w, "no", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})}
	go func() { _ = app.Serve(appL) }()
	t.Cleanup(func() { app.Close() })
	appPort := netip.MustParseAddrPort(appL.Addr().String()).Port()
	podAddr := netip.MustParseAddrPort("127.0.0.30:" + strconv.Itoa(int(appPort)))
	lastSeen := func() http.Header {
		seenMu.Lock()
		defer seenMu.Unlock()
		return seen
	}

	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", inboundResources(int(appPort), false)...)
	server := startSidecarWith(t, cp.addr, serverNode, proxy.Options{Identity: echoIdent, Tracer: startExporter(t, rc.addr, "echo", 0)})
	server.inboundAt(t, podAddr.String())
	server.waitReady(t)

	svc := newService(t, echoFQDN, "127.0.0.31", podAddr)
	msgs := resources(svc)
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == svc.cluster() {
			fx.WithMTLS(c, echoID)
		}
	}
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecarWith(t, cp.addr, clientNode, proxy.Options{Identity: clientIdent, Tracer: startExporter(t, rc.addr, "client", 0)})
	client.outboundAt(svc.lis)
	client.waitReady(t)
	hc := clientFor(svc)

	send := func(path string, h map[string]string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+svc.authority()+path, nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	// An unsampled context and none at all make no spans and pass unchanged.
	const unsampled = "00-11111111111111111111111111111111-2222222222222222-00"
	if code := send("/quiet", map[string]string{"traceparent": unsampled}); code != 200 {
		t.Fatalf("unsampled: %d", code)
	}
	if got := lastSeen().Get("Traceparent"); got != unsampled {
		t.Errorf("the app got traceparent %q for an unsampled one, want it unchanged", got)
	}
	if code := send("/none", nil); code != 200 {
		t.Fatalf("no context: %d", code)
	}
	if got := lastSeen().Get("Traceparent"); got != "" {
		t.Errorf("with a sampling rate of 0 the proxies started a trace: traceparent %q", got)
	}

	// checkHops checks the two spans of one request and returns them (client, server).
	checkHops := func(trace []byte, appParent []byte, path string, status int) (cs, ss recvSpan) {
		t.Helper()
		spans := rc.spansOf(t, trace, 2)
		if len(spans) != 2 {
			t.Fatalf("%d spans of the trace, want 2", len(spans))
		}
		for _, s := range spans {
			switch s.GetKind() {
			case tracepb.Span_SPAN_KIND_CLIENT:
				cs = s
			case tracepb.Span_SPAN_KIND_SERVER:
				ss = s
			}
		}
		if cs.Span == nil || ss.Span == nil || cs.service != "client" || ss.service != "echo" {
			t.Fatalf("want a CLIENT span from the client's sidecar and a SERVER span from echo's, got %v", spans)
		}
		if !bytes.Equal(cs.GetParentSpanId(), appParent) {
			t.Errorf("CLIENT span's parent = %x, want the app's span %x", cs.GetParentSpanId(), appParent)
		}
		if !bytes.Equal(ss.GetParentSpanId(), cs.GetSpanId()) {
			t.Errorf("SERVER span's parent = %x, want the CLIENT span %x", ss.GetParentSpanId(), cs.GetSpanId())
		}
		for _, s := range []recvSpan{cs, ss} {
			a := attrs(s.Span)
			want := map[string]string{
				"http.request.method": "GET", "url.path": path, "http.response.status_code": strconv.Itoa(status),
				"server.address": echoFQDN, "server.port": strconv.Itoa(svc.port),
				"weft.client.id": clientID, "weft.server.id": echoID,
			}
			for k, v := range want {
				if a[k] != v {
					t.Errorf("%s span: %s = %q, want %q (all: %v)", s.GetKind(), k, a[k], v, a)
				}
			}
			if s.GetStartTimeUnixNano() == 0 || s.GetEndTimeUnixNano() < s.GetStartTimeUnixNano() {
				t.Errorf("%s span times: %d..%d", s.GetKind(), s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano())
			}
			if (status >= 500) != (s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR) {
				t.Errorf("%s span status %v for HTTP %d", s.GetKind(), s.GetStatus(), status)
			}
		}
		if a := attrs(ss.Span); a["client.address"] == "" {
			t.Errorf("SERVER span without client.address: %v", a)
		}
		return cs, ss
	}

	// W3C: the trace id is kept, tracestate passes, the app's parent is the SERVER span.
	trace := mustHex("4bf92f3577b34da6a3ce929d0e0e4736")
	parent := mustHex("00f067aa0ba902b7")
	if code := send("/w3c", map[string]string{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE"}); code != 200 {
		t.Fatalf("w3c: %d", code)
	}
	h := lastSeen()
	_, ss := checkHops(trace, parent, "/w3c", 200)
	if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-" + hex.EncodeToString(ss.GetSpanId()) + "-01"; h.Get("Traceparent") != want {
		t.Errorf("the app got traceparent %q, want %q", h.Get("Traceparent"), want)
	}
	if h.Get("Tracestate") != "congo=t61rcWkgMzE" {
		t.Errorf("the app got tracestate %q", h.Get("Tracestate"))
	}
	// The two requests before made no spans.
	if n := rc.total(); n != 2 {
		t.Errorf("the collector has %d spans, want 2 (the unsampled and untraced requests make none)", n)
	}

	// B3 multi with a 64-bit trace id: the B3 headers keep the form, ParentSpanId is the CLIENT span.
	if code := send("/b3multi", map[string]string{"X-B3-TraceId": "a3ce929d0e0e4736", "X-B3-SpanId": "05e3ac9a4f6e3b90", "X-B3-Sampled": "1"}); code != 200 {
		t.Fatalf("b3 multi: %d", code)
	}
	h = lastSeen()
	cs, ss := checkHops(mustHex("0000000000000000a3ce929d0e0e4736"), mustHex("05e3ac9a4f6e3b90"), "/b3multi", 200)
	if h.Get("X-B3-TraceId") != "a3ce929d0e0e4736" || h.Get("X-B3-SpanId") != hex.EncodeToString(ss.GetSpanId()) ||
		h.Get("X-B3-ParentSpanId") != hex.EncodeToString(cs.GetSpanId()) || h.Get("X-B3-Sampled") != "1" {
		t.Errorf("the app got B3 headers %v, want trace a3ce929d0e0e4736, span %x, parent %x", h, ss.GetSpanId(), cs.GetSpanId())
	}

	// B3 single, and a failure: status ERROR on both spans.
	if code := send("/fail", map[string]string{"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}); code != 500 {
		t.Fatalf("b3 single /fail: %d", code)
	}
	h = lastSeen()
	cs, ss = checkHops(mustHex("80f198ee56343ba864fe8b2a57d3eff7"), mustHex("e457b5a2e4d86bd1"), "/fail", 500)
	if want := "80f198ee56343ba864fe8b2a57d3eff7-" + hex.EncodeToString(ss.GetSpanId()) + "-1-" + hex.EncodeToString(cs.GetSpanId()); h.Get("B3") != want {
		t.Errorf("the app got b3 %q, want %q", h.Get("B3"), want)
	}
}

// TestTracingStartsTraces: with a sampling rate of 1 the outbound sidecar starts a trace for a
// request that has none; its span is a root and the upstream gets its traceparent.
func TestTracingStartsTraces(t *testing.T) {
	rc := startOTLPReceiver(t)
	var got sync.Map
	appL := listen(t, "127.0.0.1:0")
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store("traceparent", r.Header.Get("Traceparent"))
	})}
	go func() { _ = app.Serve(appL) }()
	t.Cleanup(func() { app.Close() })
	svc := newService(t, echoFQDN, "127.0.0.31", netip.MustParseAddrPort(appL.Addr().String()))
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, clientNode.ID(), "v1", resources(svc)...)
	client := startSidecarWith(t, cp.addr, clientNode, proxy.Options{Tracer: startExporter(t, rc.addr, "client", 1)})
	client.outboundAt(svc.lis)
	client.waitReady(t)
	if resp, _ := get(t, clientFor(svc), "http://"+svc.authority()+"/start"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	v, _ := got.Load("traceparent")
	sc, _, found := tracing.Extract(http.Header{"Traceparent": {v.(string)}})
	if !found || !sc.Sampled {
		t.Fatalf("the app got traceparent %q, want a sampled one", v)
	}
	spans := rc.spansOf(t, sc.TraceID[:], 1)
	if s := spans[0]; s.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || len(s.GetParentSpanId()) != 0 || !bytes.Equal(s.GetSpanId(), sc.SpanID[:]) {
		t.Errorf("span kind %v parent %x id %x; want a CLIENT root span with id %x", s.GetKind(), s.GetParentSpanId(), s.GetSpanId(), sc.SpanID)
	}
	if a := attrs(spans[0].Span); a["weft.client.id"] != "" || a["http.response.status_code"] != "200" {
		t.Errorf("plaintext span attributes: %v", a)
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// BenchmarkTracedHop is a keep-alive HTTP/1.1 GET through the outbound listener: without a tracer,
// with one and no trace context (the lean path, as without), and with a sampled traceparent (the
// net/http path, a span per request exported to a collector that discards it).
func BenchmarkTracedHop(b *testing.B) {
	be := startBackend(b, "b", "127.0.0.1:0")
	collector := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })}
	cl := listen(b, "127.0.0.1:0")
	go func() { _ = collector.Serve(cl) }()
	b.Cleanup(func() { collector.Close() })
	for _, tc := range []struct {
		name   string
		tracer bool
		header string
	}{
		{"off", false, ""},
		{"on-untraced", true, ""},
		{"on-sampled", true, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			svc := newService(b, echoFQDN, "127.0.0.72", be.addr)
			cp := startCP(b, "127.0.0.1:0", nil, false)
			cp.set(b, clientNode.ID(), "v1", resources(svc)...)
			var o proxy.Options
			if tc.tracer {
				e, err := tracing.New(tracing.Options{Endpoint: cl.Addr().String(), QueueSize: 1 << 16})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); e.Run(ctx) }()
				b.Cleanup(func() { cancel(); <-done })
				o.Tracer = e
			}
			sc := startSidecarWith(b, cp.addr, clientNode, o)
			sc.outboundAt(svc.lis)
			sc.waitReady(b)
			c := &http.Client{Transport: resolve(&http.Transport{MaxIdleConnsPerHost: 64}, svc)}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, "http://"+svc.authority()+"/", nil)
					if tc.header != "" {
						req.Header.Set("Traceparent", tc.header)
					}
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// traceGRPC is a gRPC server that records the traceparent each call brings and fails "fail" with
// NOT_FOUND.
type traceGRPC struct {
	testpb.UnimplementedTestServiceServer
	mu   sync.Mutex
	seen []string
}

func (s *traceGRPC) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.seen = append(s.seen, strings.Join(md.Get("traceparent"), ","))
	s.mu.Unlock()
	if string(req.GetPayload().GetBody()) == "fail" {
		return nil, status.Error(codes.NotFound, "no such thing")
	}
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// TestTracingGRPCThroughTwoSidecars: a gRPC call with a traceparent in its metadata crosses both
// sidecars (HTTP/2 end to end, mTLS between them) with the same parent/child chain as HTTP/1.1, and
// the spans carry the gRPC status (a NOT_FOUND fails the CLIENT span, not the SERVER span: the
// OpenTelemetry gRPC conventions).
func TestTracingGRPCThroughTwoSidecars(t *testing.T) {
	ca := testpki.NewCA("mesh")
	rc := startOTLPReceiver(t)
	app := &traceGRPC{}
	l := listen(t, "127.0.0.1:0")
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, app)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	appAddr := netip.MustParseAddrPort(l.Addr().String())
	pod := netip.MustParseAddrPort("127.0.0.38:" + strconv.Itoa(int(appAddr.Port())))

	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, serverNode.ID(), "v1", inboundResources(int(appAddr.Port()), false)...)
	server := startSidecarWith(t, cp.addr, serverNode, proxy.Options{Identity: testpki.Identity{Leaf: ca.Issue(echoID), CA: ca}, Tracer: startExporter(t, rc.addr, "echo", 0)})
	server.inboundAt(t, pod.String())
	server.waitReady(t)
	svc := newService(t, "grpc.shop.svc.cluster.local", "127.0.0.39", pod)
	msgs := resources(svc)
	withCluster(msgs, svc.cluster(), func(c *clusterv3.Cluster) { fx.WithMTLS(c, echoID) })
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecarWith(t, cp.addr, clientNode, proxy.Options{Identity: testpki.Identity{Leaf: ca.Issue(clientID), CA: ca}, Tracer: startExporter(t, rc.addr, "client", 0)})
	client.outboundAt(svc.lis)
	client.waitReady(t)

	gc := testpb.NewTestServiceClient(grpcClient(t, svc.authority(), svc.lis.Addr().String()))
	for i, body := range []string{"hello", "fail"} {
		trace := fmt.Sprintf("%032x", i+1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+trace+"-00f067aa0ba902b7-01")
		_, err := gc.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}})
		cancel()
		if want := map[string]codes.Code{"hello": codes.OK, "fail": codes.NotFound}[body]; status.Code(err) != want {
			t.Fatalf("%s: %v, want %v", body, err, want)
		}
		spans := rc.spansOf(t, mustHex(trace), 2)
		var cs, ss recvSpan
		for _, s := range spans {
			if s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT {
				cs = s
			} else {
				ss = s
			}
		}
		if cs.Span == nil || ss.Span == nil || hex.EncodeToString(cs.GetParentSpanId()) != "00f067aa0ba902b7" || !bytes.Equal(ss.GetParentSpanId(), cs.GetSpanId()) {
			t.Fatalf("%s: spans %v, want CLIENT (child of the app's span) → SERVER", body, spans)
		}
		app.mu.Lock()
		got := app.seen[len(app.seen)-1]
		app.mu.Unlock()
		if want := "00-" + trace + "-" + hex.EncodeToString(ss.GetSpanId()) + "-01"; got != want {
			t.Errorf("%s: the server app got traceparent %q, want %q", body, got, want)
		}
		wantCode := map[string]string{"hello": "0", "fail": "5"}[body]
		for _, s := range []recvSpan{cs, ss} {
			if a := attrs(s.Span); a["rpc.system"] != "grpc" || a["rpc.grpc.status_code"] != wantCode || a["url.path"] != "/grpc.testing.TestService/UnaryCall" {
				t.Errorf("%s %s span attributes: %v", body, s.GetKind(), a)
			}
		}
		if failed := cs.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR; failed != (body == "fail") {
			t.Errorf("%s: CLIENT span status %v", body, cs.GetStatus())
		}
		if ss.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
			t.Errorf("%s: SERVER span status %v, want unset (NOT_FOUND is not the server's fault)", body, ss.GetStatus())
		}
	}
}
