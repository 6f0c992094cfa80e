package tracing

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// TestEncodeMatchesOTLP decodes Encode's hand-written protobuf with the OTLP Go packages and compares
// it with the message those packages would have written for the same spans.
func TestEncodeMatchesOTLP(t *testing.T) {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	i64 := func(k string, v int64) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
	}
	tid := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	start, end := time.Unix(100, 5), time.Unix(101, 7)
	tests := []struct {
		name  string
		opts  Options
		spans []*Span
		want  *tracepb.ResourceSpans
	}{{
		name: "server root sampled, client child with error, attributes of both kinds",
		opts: Options{Resource: []Attr{String("service.name", "web"), String("k8s.pod.name", "web-1")}, ScopeName: "weft-proxy", ScopeVersion: "v1.2.3"},
		spans: []*Span{
			{Context: SpanContext{TraceID: tid, SpanID: [8]byte{1}, Sampled: true}, Kind: Server, Name: "GET /a", Start: start, End: end,
				Attrs: []Attr{String("http.method", "GET"), Int("http.status_code", 200), Int("neg", -3), String("empty", "")}},
			{Context: SpanContext{TraceID: tid, SpanID: [8]byte{2}}, Parent: [8]byte{1}, Kind: Client, Name: "outbound", Start: start, End: end,
				Error: true, Message: "upstream reset"},
		},
		want: &tracepb.ResourceSpans{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", "web"), str("k8s.pod.name", "web-1")}},
			ScopeSpans: []*tracepb.ScopeSpans{{
				Scope: &commonpb.InstrumentationScope{Name: "weft-proxy", Version: "v1.2.3"},
				Spans: []*tracepb.Span{{
					TraceId: tid[:], SpanId: []byte{1, 0, 0, 0, 0, 0, 0, 0}, Flags: 1, Name: "GET /a", Kind: tracepb.Span_SPAN_KIND_SERVER,
					StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(end.UnixNano()),
					Attributes: []*commonpb.KeyValue{str("http.method", "GET"), i64("http.status_code", 200), i64("neg", -3), str("empty", "")},
				}, {
					TraceId: tid[:], SpanId: []byte{2, 0, 0, 0, 0, 0, 0, 0}, ParentSpanId: []byte{1, 0, 0, 0, 0, 0, 0, 0}, Name: "outbound",
					Kind: tracepb.Span_SPAN_KIND_CLIENT, StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(end.UnixNano()),
					Status: &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "upstream reset"},
				}},
			}},
		},
	}, {
		name: "no resource attributes, no scope, no spans",
		want: &tracepb.ResourceSpans{Resource: &resourcepb.Resource{}, ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{}}}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Endpoint = "127.0.0.1:4318"
			e, err := New(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			b, err := e.Encode(tt.spans)
			if err != nil {
				t.Fatal(err)
			}
			var got coltracepb.ExportTraceServiceRequest
			if err := proto.Unmarshal(b, &got); err != nil {
				t.Fatalf("the OTLP packages cannot decode Encode's output: %v", err)
			}
			want := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{tt.want}}
			if d := cmp.Diff(want, &got, protocmp.Transform()); d != "" {
				t.Errorf("Encode (-want +got):\n%s", d)
			}
			if len(got.ProtoReflect().GetUnknown()) != 0 {
				t.Errorf("Encode wrote unknown fields")
			}
		})
	}
}
