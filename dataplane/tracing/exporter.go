package tracing

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Kind is a span's kind: the inbound proxy's span serves (SERVER), the outbound proxy's calls (CLIENT).
// The values are opentelemetry.proto.trace.v1.Span.SpanKind's.
type Kind int32

const (
	Server Kind = 2 // SPAN_KIND_SERVER
	Client Kind = 3 // SPAN_KIND_CLIENT
)

// Attr is one span attribute: a string, or an integer when Str is empty and IsInt is set.
type Attr struct {
	Key   string
	Str   string
	Int   int64
	IsInt bool
}

// String and Int make attributes.
func String(k, v string) Attr { return Attr{Key: k, Str: v} }
func Int(k string, v int64) Attr {
	return Attr{Key: k, Int: v, IsInt: true}
}

// Span is one finished span as the exporter queues it.
type Span struct {
	Context    SpanContext // its own trace id and span id
	Parent     [8]byte     // zero for a root span
	Kind       Kind
	Name       string
	Start, End time.Time
	Attrs      []Attr
	Error      bool   // status ERROR (else UNSET)
	Message    string // the status message of an error
}

// Options configure an Exporter.
type Options struct {
	// Endpoint is the collector: host:port (OTLP/HTTP, path /v1/traces) or an http(s) URL (its path is
	// kept when it has one, else /v1/traces).
	Endpoint string
	// SampleRate is the fraction of requests without an incoming trace context that start a new
	// trace (0 to 1). Incoming contexts keep their own decision.
	SampleRate float64
	// Resource attributes (service.name, k8s.pod.name, ...).
	Resource []Attr
	// Scope is the instrumentation scope's name and version.
	ScopeName, ScopeVersion string
	// QueueSize bounds the spans waiting for export (2048 when 0): more are dropped and counted.
	QueueSize int
	// BatchSize is the most spans in one export (512 when 0); Interval the longest a span waits (1 s).
	BatchSize int
	Interval  time.Duration
	Client    *http.Client
	Logger    *slog.Logger
}

// Exporter queues finished spans and sends them to an OTLP/HTTP collector in batches. Its methods are
// safe for concurrent use; Run does the sending.
type Exporter struct {
	url        string
	sampleRate float64
	resource   []byte // the encoded opentelemetry.proto.resource.v1.Resource
	scope      []byte // the encoded opentelemetry.proto.common.v1.InstrumentationScope
	batch      int
	interval   time.Duration
	client     *http.Client
	log        *slog.Logger

	mu    sync.Mutex
	queue []*Span
	max   int
	kick  chan struct{}

	dropped, exported, failed atomic.Uint64
}

// ParseEndpoint turns --otlp-addr's value into the URL spans are posted to.
func ParseEndpoint(s string) (string, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("want host:port (OTLP/HTTP, such as otel-collector.observability:4318) or an http(s):// URL")
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		return u.String(), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return "", fmt.Errorf("want host:port (OTLP/HTTP, such as otel-collector.observability:4318) or an http(s):// URL")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("the port must be a number from 1 to 65535")
	}
	return "http://" + net.JoinHostPort(host, port) + "/v1/traces", nil
}

// New returns an exporter to o.Endpoint; Run sends its spans.
func New(o Options) (*Exporter, error) {
	u, err := ParseEndpoint(o.Endpoint)
	if err != nil {
		return nil, err
	}
	if o.SampleRate < 0 || o.SampleRate > 1 {
		return nil, errors.New("the sampling rate must be from 0 to 1")
	}
	e := &Exporter{
		url:        u,
		sampleRate: o.SampleRate,
		resource:   appendKeyValues(nil, 1, o.Resource),
		scope:      appendString(appendString(nil, 1, o.ScopeName), 2, o.ScopeVersion),
		batch:      o.BatchSize,
		interval:   o.Interval,
		client:     o.Client,
		log:        o.Logger,
		max:        o.QueueSize,
		kick:       make(chan struct{}, 1),
	}
	if e.batch <= 0 {
		e.batch = 512
	}
	if e.max <= 0 {
		e.max = 2048
	}
	if e.interval <= 0 {
		e.interval = time.Second
	}
	if e.client == nil {
		e.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			Proxy: nil, MaxIdleConnsPerHost: 1, IdleConnTimeout: 90 * time.Second, ForceAttemptHTTP2: true,
		}}
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	return e, nil
}

// SampleNew decides whether a request without an incoming trace context starts a trace.
func (e *Exporter) SampleNew() bool {
	return e.sampleRate > 0 && (e.sampleRate >= 1 || rand.Float64() < e.sampleRate)
}

// SamplesNew reports whether the exporter starts traces of its own (a sampling rate above 0).
func (e *Exporter) SamplesNew() bool { return e.sampleRate > 0 }

// Stats are the exporter's counts: spans sent, dropped because the queue was full, and lost in
// failed exports.
func (e *Exporter) Stats() (exported, dropped, failed uint64) {
	return e.exported.Load(), e.dropped.Load(), e.failed.Load()
}

// Enqueue adds a finished span; when the queue is full the span is dropped (and counted).
func (e *Exporter) Enqueue(s *Span) {
	e.mu.Lock()
	if len(e.queue) >= e.max {
		e.mu.Unlock()
		e.dropped.Add(1)
		return
	}
	e.queue = append(e.queue, s)
	full := len(e.queue) >= e.batch
	e.mu.Unlock()
	if full {
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
}

// Run exports the queued spans every Interval, or sooner when a batch is full, until ctx ends; then
// it sends what is left once (bounded by 2 s).
func (e *Exporter) Run(ctx context.Context) {
	t := time.NewTicker(e.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			e.Flush(fctx)
			cancel()
			e.client.CloseIdleConnections()
			return
		case <-t.C:
		case <-e.kick:
		}
		e.Flush(ctx)
	}
}

// Flush exports every queued span now, in batches.
func (e *Exporter) Flush(ctx context.Context) {
	for {
		e.mu.Lock()
		n := min(len(e.queue), e.batch)
		if n == 0 {
			e.mu.Unlock()
			return
		}
		spans := make([]*Span, n)
		copy(spans, e.queue)
		e.queue = append(e.queue[:0], e.queue[n:]...)
		e.mu.Unlock()
		if err := e.export(ctx, spans); err != nil {
			e.failed.Add(uint64(len(spans)))
			e.log.Warn("exporting spans", "endpoint", e.url, "spans", len(spans), "error", err)
			return
		}
		e.exported.Add(uint64(len(spans)))
	}
}

func (e *Exporter) export(ctx context.Context, spans []*Span) error {
	body, err := e.Encode(spans)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := e.client.Do(req) // #nosec G704 -- the collector the operator configured
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("collector answered %s", resp.Status)
	}
	return nil
}

// Encode is the body of an OTLP/HTTP export of spans: an
// opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest with one ResourceSpans holding one
// ScopeSpans. It is written field by field with protowire, so that weft-proxy links none of the OTLP
// Go packages (their descriptors, types and registration cost resident memory in every sidecar:
// docs/design.md); the tests decode it with those packages. Field numbers are OTLP's
// (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto).
func (e *Exporter) Encode(spans []*Span) ([]byte, error) {
	ss := appendMessage(nil, 1, e.scope) // ScopeSpans.scope
	var sp []byte
	for _, s := range spans {
		sp = s.appendProto(sp[:0])
		ss = appendMessage(ss, 2, sp) // spans
	}
	rs := appendMessage(nil, 1, e.resource)                      // ResourceSpans.resource
	rs = appendMessage(rs, 2, ss)                                // scope_spans
	return appendMessage(make([]byte, 0, len(rs)+8), 1, rs), nil // resource_spans
}

// appendProto appends s as an opentelemetry.proto.trace.v1.Span.
func (s *Span) appendProto(b []byte) []byte {
	b = appendBytes(b, 1, s.Context.TraceID[:]) // trace_id
	b = appendBytes(b, 2, s.Context.SpanID[:])  // span_id
	if s.Parent != [8]byte{} {
		b = appendBytes(b, 4, s.Parent[:]) // parent_span_id
	}
	b = appendString(b, 5, s.Name) // name
	if s.Kind != 0 {
		b = protowire.AppendTag(b, 6, protowire.VarintType) // kind
		b = protowire.AppendVarint(b, uint64(s.Kind))       // #nosec G115 -- 2 or 3
	}
	b = protowire.AppendTag(b, 7, protowire.Fixed64Type)       // start_time_unix_nano
	b = protowire.AppendFixed64(b, uint64(s.Start.UnixNano())) // #nosec G115 -- times after 1970
	b = protowire.AppendTag(b, 8, protowire.Fixed64Type)       // end_time_unix_nano
	b = protowire.AppendFixed64(b, uint64(s.End.UnixNano()))   // #nosec G115 -- times after 1970
	b = appendKeyValues(b, 9, s.Attrs)                         // attributes
	if s.Error {
		var st []byte                                         // Status
		st = appendString(st, 2, s.Message)                   // message
		st = protowire.AppendTag(st, 3, protowire.VarintType) // code
		st = protowire.AppendVarint(st, 2)                    // STATUS_CODE_ERROR
		b = appendMessage(b, 15, st)                          // status
	}
	if s.Context.Sampled {
		b = protowire.AppendTag(b, 16, protowire.Fixed32Type) // flags
		b = protowire.AppendFixed32(b, 1)                     // W3C trace flags: sampled
	}
	return b
}

// appendKeyValues appends attrs as repeated opentelemetry.proto.common.v1.KeyValue field num.
func appendKeyValues(b []byte, num protowire.Number, attrs []Attr) []byte {
	var kv, v []byte
	for _, a := range attrs {
		v = v[:0] // AnyValue
		if a.IsInt {
			v = protowire.AppendTag(v, 3, protowire.VarintType) // int_value
			v = protowire.AppendVarint(v, uint64(a.Int))        // #nosec G115 -- int64 as protobuf's varint
		} else {
			v = protowire.AppendTag(v, 1, protowire.BytesType) // string_value (also when empty: the oneof is set)
			v = protowire.AppendString(v, a.Str)
		}
		kv = appendString(kv[:0], 1, a.Key) // key
		kv = appendMessage(kv, 2, v)        // value
		b = appendMessage(b, num, kv)
	}
	return b
}

// appendString appends a proto3 string field, nothing when empty (its default).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendBytes appends a proto3 bytes field.
func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// appendMessage appends an encoded message as field num (also when empty: the field is present).
func appendMessage(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

// NewTraceID and NewSpanID are random ids (never all zeros) from math/rand/v2's randomly seeded
// ChaCha8 source.
func NewTraceID() [16]byte {
	var id [16]byte
	for id == [16]byte{} {
		binary.LittleEndian.PutUint64(id[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

func NewSpanID() [8]byte {
	var id [8]byte
	for id == [8]byte{} {
		binary.LittleEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}
