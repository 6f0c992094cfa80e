package tracing

import (
	"encoding/hex"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func tid(s string) (id [16]byte) { _, _ = hex.Decode(id[:], []byte(s)); return id }
func sid(s string) (id [8]byte)  { _, _ = hex.Decode(id[:], []byte(s)); return id }

const (
	trace32 = "4bf92f3577b34da6a3ce929d0e0e4736"
	span16  = "00f067aa0ba902b7"
	trace16 = "a3ce929d0e0e4736"
)

func TestExtract(t *testing.T) {
	tests := []struct {
		name    string
		h       map[string]string
		want    SpanContext
		formats Formats
		found   bool
	}{
		{name: "no context", h: map[string]string{"Accept": "*/*"}},
		{name: "traceparent sampled", h: map[string]string{"traceparent": "00-" + trace32 + "-" + span16 + "-01"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true}, formats: W3C, found: true},
		{name: "traceparent not sampled", h: map[string]string{"traceparent": "00-" + trace32 + "-" + span16 + "-00"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16)}, formats: W3C, found: true},
		{name: "traceparent of a later version with more fields", h: map[string]string{"traceparent": "01-" + trace32 + "-" + span16 + "-01-what-comes"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true}, formats: W3C, found: true},
		{name: "traceparent version ff is invalid", h: map[string]string{"traceparent": "ff-" + trace32 + "-" + span16 + "-01"}},
		{name: "traceparent upper case is invalid", h: map[string]string{"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-" + span16 + "-01"}},
		{name: "traceparent all-zero trace id", h: map[string]string{"traceparent": "00-00000000000000000000000000000000-" + span16 + "-01"}},
		{name: "traceparent version 00 with extra fields", h: map[string]string{"traceparent": "00-" + trace32 + "-" + span16 + "-01-x"}},
		{name: "b3 single with parent", h: map[string]string{"b3": trace32 + "-" + span16 + "-1-05e3ac9a4f6e3b90"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true}, formats: B3Single, found: true},
		{name: "b3 single 64-bit, debug", h: map[string]string{"b3": trace16 + "-" + span16 + "-d"},
			want: SpanContext{TraceID: tid("0000000000000000" + trace16), SpanID: sid(span16), Sampled: true, Debug: true, Short: true}, formats: B3Single, found: true},
		{name: "b3 single deny", h: map[string]string{"b3": "0"}, formats: B3Single},
		{name: "b3 single unsampled", h: map[string]string{"b3": trace32 + "-" + span16 + "-0"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16)}, formats: B3Single, found: true},
		{name: "b3 single garbage", h: map[string]string{"b3": "hello-world"}},
		{name: "b3 multi", h: map[string]string{"X-B3-TraceId": trace16, "X-B3-SpanId": span16, "X-B3-Sampled": "1"},
			want: SpanContext{TraceID: tid("0000000000000000" + trace16), SpanID: sid(span16), Sampled: true, Short: true}, formats: B3Multi, found: true},
		{name: "b3 multi unsampled", h: map[string]string{"X-B3-TraceId": trace32, "X-B3-SpanId": span16, "X-B3-Sampled": "0"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16)}, formats: B3Multi, found: true},
		{name: "b3 multi debug flag", h: map[string]string{"X-B3-TraceId": trace32, "X-B3-SpanId": span16, "X-B3-Flags": "1"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true, Debug: true}, formats: B3Multi, found: true},
		{name: "b3 multi without span id", h: map[string]string{"X-B3-TraceId": trace32}},
		{name: "traceparent added to a 64-bit B3 trace keeps B3's form", h: map[string]string{"traceparent": "00-0000000000000000" + trace16 + "-" + span16 + "-01", "X-B3-TraceId": trace16, "X-B3-SpanId": span16},
			want: SpanContext{TraceID: tid("0000000000000000" + trace16), SpanID: sid(span16), Sampled: true, Short: true}, formats: W3C | B3Multi, found: true},
		{name: "traceparent wins over b3, both noted", h: map[string]string{"traceparent": "00-" + trace32 + "-" + span16 + "-01", "b3": trace16 + "-05e3ac9a4f6e3b90-0"},
			want: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true}, formats: W3C | B3Single, found: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.h {
				h.Set(k, v)
			}
			got, formats, found := Extract(h)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("context (-want +got):\n%s", diff)
			}
			if formats != tt.formats || found != tt.found {
				t.Errorf("formats, found = %b, %v; want %b, %v", formats, found, tt.formats, tt.found)
			}
		})
	}
}

func TestInject(t *testing.T) {
	parent := sid("05e3ac9a4f6e3b90")
	sc := SpanContext{TraceID: tid("0000000000000000" + trace16), SpanID: sid(span16), Sampled: true, Short: true}
	tests := []struct {
		name    string
		sc      SpanContext
		parent  [8]byte
		formats Formats
		in      http.Header
		want    http.Header
	}{
		{name: "new trace: traceparent only", sc: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true},
			in:   http.Header{"Tracestate": {"congo=t61rcWkgMzE"}},
			want: http.Header{"Traceparent": {"00-" + trace32 + "-" + span16 + "-01"}, "Tracestate": {"congo=t61rcWkgMzE"}}},
		{name: "b3 multi keeps its 64-bit trace id", sc: sc, parent: parent, formats: B3Multi,
			in: http.Header{"X-B3-Traceid": {trace16}, "X-B3-Spanid": {"05e3ac9a4f6e3b90"}, "X-B3-Sampled": {"1"}},
			want: http.Header{
				"Traceparent":  {"00-0000000000000000" + trace16 + "-" + span16 + "-01"},
				"X-B3-Traceid": {trace16}, "X-B3-Spanid": {span16}, "X-B3-Parentspanid": {"05e3ac9a4f6e3b90"}, "X-B3-Sampled": {"1"},
			}},
		{name: "b3 single debug", sc: SpanContext{TraceID: tid(trace32), SpanID: sid(span16), Sampled: true, Debug: true}, parent: parent, formats: B3Single,
			in: http.Header{"B3": {trace32 + "-05e3ac9a4f6e3b90-d"}},
			want: http.Header{
				"Traceparent": {"00-" + trace32 + "-" + span16 + "-01"},
				"B3":          {trace32 + "-" + span16 + "-d-05e3ac9a4f6e3b90"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.in.Clone()
			Inject(h, tt.sc, tt.parent, tt.formats)
			if diff := cmp.Diff(tt.want, h); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
			// What the next hop reads is the injected context.
			got, _, found := Extract(h)
			if !found || got.TraceID != tt.sc.TraceID || got.SpanID != tt.sc.SpanID || got.Sampled != tt.sc.Sampled {
				t.Errorf("the next hop reads %+v (found %v), want %+v", got, found, tt.sc)
			}
		})
	}
}

func TestHeadMayCarry(t *testing.T) {
	tests := []struct {
		head string
		want bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
		{"GET / HTTP/1.1\r\nHost: a\r\nTraceParent: 00-x\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nb3: 0\r\n\r\n", true},
		{"GET / HTTP/1.1\r\nX-B3-TraceId: abc\r\n\r\n", true},
		{"GET /traceparent: HTTP/1.1\r\nHost: a\r\nX-Traceparent: 1\r\n\r\n", false},
	}
	for _, tt := range tests {
		if got := HeadMayCarry([]byte(tt.head)); got != tt.want {
			t.Errorf("HeadMayCarry(%q) = %v, want %v", tt.head, got, tt.want)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "otel-collector.observability:4318", want: "http://otel-collector.observability:4318/v1/traces"},
		{in: "https://collector.example/", want: "https://collector.example/v1/traces"},
		{in: "http://127.0.0.1:4318/custom/path", want: "http://127.0.0.1:4318/custom/path"},
		{in: "collector", err: "want host:port"},
		{in: "collector:99999", err: "the port must be"},
		{in: "ftp://x:1", err: "want host:port"},
	}
	for _, tt := range tests {
		got, err := ParseEndpoint(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseEndpoint(%q) error %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseEndpoint(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
