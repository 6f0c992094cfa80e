// Package tracing is weft-proxy's distributed tracing: it reads and writes the trace context of W3C
// Trace Context (traceparent, tracestate) and of B3 (the single b3 header and the X-B3-* headers),
// records the proxy's own spans, and exports them with OTLP over HTTP (protobuf POST /v1/traces) in
// batches from a bounded queue.
//
// It writes the OTLP messages itself with protowire and links neither the OTLP Go packages
// (go.opentelemetry.io/proto/otlp) nor the OpenTelemetry SDK: the sidecar's resident memory follows
// what it links (docs/design.md).
package tracing

import (
	"encoding/hex"
	"net/http"
	"strings"
)

// Formats are the propagation formats a request carried; the proxy writes its own span's context back
// in each of them (and always as traceparent).
type Formats uint8

const (
	W3C      Formats = 1 << iota // traceparent (tracestate passes through unchanged)
	B3Single                     // b3: {trace}-{span}-{sampled}-{parent}
	B3Multi                      // X-B3-TraceId, X-B3-SpanId, X-B3-ParentSpanId, X-B3-Sampled, X-B3-Flags
)

// SpanContext is the part of a span that crosses process boundaries.
type SpanContext struct {
	TraceID [16]byte
	SpanID  [8]byte
	Sampled bool
	// Debug is B3's debug flag (X-B3-Flags: 1 or b3 sampling state "d"); it implies Sampled.
	Debug bool
	// Short is set when the trace id came as B3's 64-bit form: B3 headers keep that form.
	Short bool
}

// Valid reports whether sc has a trace id and a span id (the W3C rule: neither all zeros).
func (sc SpanContext) Valid() bool {
	return sc.TraceID != [16]byte{} && sc.SpanID != [8]byte{}
}

// The canonical header keys (http.CanonicalHeaderKey of each).
const (
	hTraceparent  = "Traceparent"
	hB3           = "B3"
	hB3TraceID    = "X-B3-Traceid"
	hB3SpanID     = "X-B3-Spanid"
	hB3ParentSpan = "X-B3-Parentspanid"
	hB3Sampled    = "X-B3-Sampled"
	hB3Flags      = "X-B3-Flags"
)

// Extract reads the trace context of h: traceparent first, then b3, then the X-B3-* headers. found is
// false when h carries none that parses (a malformed header counts as none, as the W3C spec says).
// formats lists every format present, so that Inject can answer in each.
func Extract(h http.Header) (sc SpanContext, formats Formats, found bool) {
	if v := h[hTraceparent]; len(v) == 1 {
		if c, ok := parseTraceparent(v[0]); ok {
			sc, found = c, true
			formats |= W3C
		}
	}
	if v := h[hB3]; len(v) == 1 {
		if c, ok, deny := parseB3Single(v[0]); ok || deny {
			formats |= B3Single
			if !found && ok {
				sc, found = c, true
			} else if ok && c.Short && c.TraceID == sc.TraceID {
				sc.Short = true // a proxy before added traceparent to a 64-bit B3 trace: keep B3's form
			} else if !found && deny {
				// "b3: 0": not sampled, and no ids to continue.
				return SpanContext{}, formats, false
			}
		}
	}
	if _, ok := h[hB3TraceID]; ok {
		if c, ok := parseB3Multi(h); ok {
			formats |= B3Multi
			if !found {
				sc, found = c, true
			} else if c.Short && c.TraceID == sc.TraceID {
				sc.Short = true
			}
		}
	}
	return sc, formats, found
}

// Inject writes sc as the trace context of h: always traceparent, and b3 or X-B3-* where formats has
// them (parent is the span id of sc's parent for B3's ParentSpanId; zero leaves it out). tracestate is
// left as it came.
func Inject(h http.Header, sc SpanContext, parent [8]byte, formats Formats) {
	h[hTraceparent] = []string{formatTraceparent(sc)}
	trace := hex.EncodeToString(sc.TraceID[:])
	if sc.Short {
		trace = trace[16:]
	}
	span := hex.EncodeToString(sc.SpanID[:])
	sampled := "0"
	if sc.Sampled {
		sampled = "1"
	}
	if formats&B3Single != 0 {
		state := sampled
		if sc.Debug {
			state = "d"
		}
		v := trace + "-" + span + "-" + state
		if parent != [8]byte{} {
			v += "-" + hex.EncodeToString(parent[:])
		}
		h[hB3] = []string{v}
	}
	if formats&B3Multi != 0 {
		h[hB3TraceID] = []string{trace}
		h[hB3SpanID] = []string{span}
		if parent != [8]byte{} {
			h[hB3ParentSpan] = []string{hex.EncodeToString(parent[:])}
		} else {
			delete(h, hB3ParentSpan)
		}
		if sc.Debug {
			h[hB3Flags] = []string{"1"}
			delete(h, hB3Sampled)
		} else {
			h[hB3Sampled] = []string{sampled}
		}
	}
}

func formatTraceparent(sc SpanContext) string {
	var b [55]byte
	copy(b[:], "00-")
	hex.Encode(b[3:35], sc.TraceID[:])
	b[35] = '-'
	hex.Encode(b[36:52], sc.SpanID[:])
	b[52] = '-'
	b[53], b[54] = '0', '0'
	if sc.Sampled {
		b[54] = '1'
	}
	return string(b[:])
}

// parseTraceparent parses version-traceid-parentid-flags (W3C Trace Context, level 1: a later version
// may carry more fields after these, which are ignored; version ff is invalid).
func parseTraceparent(v string) (SpanContext, bool) {
	var sc SpanContext
	v = strings.TrimSpace(v)
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return sc, false
	}
	ver, ok := hexByte(v[0:2])
	if !ok || ver == 0xff || (ver == 0 && len(v) != 55) || (len(v) > 55 && v[55] != '-') {
		return sc, false
	}
	if !lowerHex(v[3:35]) || !lowerHex(v[36:52]) {
		return sc, false
	}
	_, _ = hex.Decode(sc.TraceID[:], []byte(v[3:35]))
	_, _ = hex.Decode(sc.SpanID[:], []byte(v[36:52]))
	flags, ok := hexByte(v[53:55])
	if !ok || !sc.Valid() {
		return SpanContext{}, false
	}
	sc.Sampled = flags&1 == 1
	return sc, true
}

// parseB3Single parses b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]] or a lone sampling
// state; deny is the lone "0" (do not sample, no ids).
func parseB3Single(v string) (sc SpanContext, ok, deny bool) {
	v = strings.TrimSpace(v)
	if v == "0" {
		return sc, false, true
	}
	parts := strings.Split(v, "-")
	if len(parts) < 2 || len(parts) > 4 {
		return sc, false, false
	}
	if !parseB3TraceID(parts[0], &sc) || !parseSpanID(parts[1], &sc.SpanID) {
		return SpanContext{}, false, false
	}
	sc.Sampled = true // absent sampling state: the receiver decides; a proxy continuing it samples
	if len(parts) >= 3 {
		switch parts[2] {
		case "1":
			sc.Sampled = true
		case "0":
			sc.Sampled = false
		case "d":
			sc.Sampled, sc.Debug = true, true
		default:
			return SpanContext{}, false, false
		}
	}
	if len(parts) == 4 {
		var parent [8]byte
		if !parseSpanID(parts[3], &parent) {
			return SpanContext{}, false, false
		}
	}
	return sc, sc.Valid(), false
}

func parseB3Multi(h http.Header) (SpanContext, bool) {
	var sc SpanContext
	if !parseB3TraceID(h.Get(hB3TraceID), &sc) || !parseSpanID(h.Get(hB3SpanID), &sc.SpanID) {
		return sc, false
	}
	sc.Sampled = true
	switch h.Get(hB3Sampled) {
	case "0", "false":
		sc.Sampled = false
	case "", "1", "true":
	default:
		return SpanContext{}, false
	}
	if h.Get(hB3Flags) == "1" {
		sc.Sampled, sc.Debug = true, true
	}
	return sc, sc.Valid()
}

// parseB3TraceID reads a 32- or 16-character (left-padded with zeros to 128 bits) trace id.
func parseB3TraceID(s string, sc *SpanContext) bool {
	switch len(s) {
	case 32:
	case 16:
		sc.Short = true
		s = "0000000000000000" + s
	default:
		return false
	}
	if !lowerHex(s) {
		return false
	}
	_, _ = hex.Decode(sc.TraceID[:], []byte(s))
	return true
}

func parseSpanID(s string, id *[8]byte) bool {
	if len(s) != 16 || !lowerHex(s) {
		return false
	}
	_, _ = hex.Decode(id[:], []byte(s))
	return true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func hexByte(s string) (byte, bool) {
	var b [1]byte
	if len(s) != 2 || !lowerHex(s) {
		return 0, false
	}
	_, _ = hex.Decode(b[:], []byte(s))
	return b[0], true
}

// HeadMayCarry reports whether an HTTP/1.1 request head (request line and header lines) may carry a
// trace context: a header line that starts with traceparent:, b3: or x-b3- in any case. The proxy's
// lean path leaves such requests to the path that traces.
func HeadMayCarry(head []byte) bool {
	for i := 0; i < len(head); i++ {
		if head[i] != '\n' || i+1 >= len(head) {
			continue
		}
		rest := head[i+1:]
		if hasPrefixFold(rest, "traceparent:") || hasPrefixFold(rest, "b3:") || hasPrefixFold(rest, "x-b3-") {
			return true
		}
	}
	return false
}

func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}
