package tracing

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// receiver is an OTLP/HTTP traces endpoint that decodes each export as the collector's
// ExportTraceServiceRequest.
type receiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	res   []string // service.name of each ResourceSpans
	fail  bool
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST /v1/traces application/x-protobuf", http.StatusBadRequest)
		return
	}
	b, _ := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.fail {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	for _, rs := range req.GetResourceSpans() {
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				rc.res = append(rc.res, kv.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			rc.spans = append(rc.spans, ss.GetSpans()...)
		}
	}
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.spans)
}

func TestExporterBatchesAndBoundsItsQueue(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	e, err := New(Options{Endpoint: srv.URL, QueueSize: 10, BatchSize: 4, Interval: time.Hour,
		Resource: []Attr{String("service.name", "test")}})
	if err != nil {
		t.Fatal(err)
	}
	span := func(i int) *Span {
		return &Span{Context: SpanContext{TraceID: NewTraceID(), SpanID: NewSpanID(), Sampled: true}, Kind: Server,
			Name: "GET", Start: time.Unix(100, 0), End: time.Unix(101, int64(i)), Attrs: []Attr{Int("http.response.status_code", 200)}}
	}
	for i := range 12 {
		e.Enqueue(span(i))
	}
	if _, dropped, _ := e.Stats(); dropped != 2 {
		t.Errorf("dropped = %d, want 2 (queue of 10, 12 spans)", dropped)
	}
	e.Flush(context.Background())
	if n := rc.count(); n != 10 {
		t.Fatalf("receiver got %d spans, want 10", n)
	}
	if len(rc.res) != 3 || rc.res[0] != "test" {
		t.Errorf("exports = %v, want 3 batches (4+4+2) of service.name test", rc.res)
	}
	s := rc.spans[0]
	if s.GetKind() != tracepb.Span_SPAN_KIND_SERVER || s.GetEndTimeUnixNano() != uint64(time.Unix(101, 0).UnixNano()) ||
		len(s.GetTraceId()) != 16 || len(s.GetSpanId()) != 8 || len(s.GetParentSpanId()) != 0 ||
		s.GetAttributes()[0].GetValue().GetIntValue() != 200 {
		t.Errorf("first span: %v", s)
	}

	// A failing collector loses the batch (counted) and does not block the queue.
	rc.mu.Lock()
	rc.fail = true
	rc.mu.Unlock()
	e.Enqueue(span(0))
	e.Flush(context.Background())
	if exported, _, failed := e.Stats(); exported != 10 || failed != 1 {
		t.Errorf("exported, failed = %d, %d; want 10, 1", exported, failed)
	}
}

func TestExporterRunSendsWithinTheInterval(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	e, err := New(Options{Endpoint: srv.URL, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	e.Enqueue(&Span{Context: SpanContext{TraceID: NewTraceID(), SpanID: NewSpanID()}, Start: time.Now(), End: time.Now()})
	deadline := time.Now().Add(10 * time.Second)
	for rc.count() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the span was not exported")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// What is queued when Run stops is sent.
	cancel()
	<-done
	e.Enqueue(&Span{Context: SpanContext{TraceID: NewTraceID(), SpanID: NewSpanID()}})
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	e.Run(ctx2)
	if n := rc.count(); n != 2 {
		t.Errorf("after Run's final flush the receiver has %d spans, want 2", n)
	}
}

func TestSampling(t *testing.T) {
	for _, rate := range []float64{0, 1} {
		e, err := New(Options{Endpoint: "127.0.0.1:4318", SampleRate: rate})
		if err != nil {
			t.Fatal(err)
		}
		for range 100 {
			if e.SampleNew() != (rate == 1) {
				t.Fatalf("rate %v: SampleNew() = %v", rate, !(rate == 1))
			}
		}
	}
	if _, err := New(Options{Endpoint: "127.0.0.1:4318", SampleRate: 1.5}); err == nil {
		t.Error("a sampling rate of 1.5 was accepted")
	}
}
