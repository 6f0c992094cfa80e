package proxy

import (
	"cmp"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/dataplane/tracing"
)

// Tracing (dataplane/tracing): with Options.Tracer set, every HTTP request that arrives with a sampled
// trace context (traceparent, b3, X-B3-*), or that the sampling rate picks to start a trace, gets a
// span of this proxy: SERVER on the inbound side, CLIENT on the outbound side. The span's context goes
// upstream in place of the incoming one (traceparent always, B3 in the formats that came), so the next
// hop's span is its child. A request with an unsampled context passes untouched. Without a tracer the
// request path pays one nil check (serveHTTP) and the lean path one more (h1lean.go).

// traceStart begins r's span, or returns nil when r is not traced; it rewrites r's trace headers.
func (p *Proxy) traceStart(r *http.Request, rs *reqState) *tracing.Span {
	in, formats, found := tracing.Extract(r.Header)
	sp := &tracing.Span{Start: time.Now(), Name: r.Method}
	switch {
	case found && !in.Sampled:
		return nil
	case found:
		sp.Context, sp.Parent = in, in.SpanID
	case p.tracer.SampleNew():
		sp.Context = tracing.SpanContext{TraceID: tracing.NewTraceID(), Sampled: true}
	default:
		return nil
	}
	sp.Context.SpanID = tracing.NewSpanID()
	tracing.Inject(r.Header, sp.Context, sp.Parent, formats)
	sp.Kind = tracing.Client
	if rs.info.direction == "inbound" {
		sp.Kind = tracing.Server
	}
	host, port := splitAuthority(rs.authority)
	sp.Attrs = append(make([]tracing.Attr, 0, 12),
		tracing.String("http.request.method", r.Method),
		tracing.String("url.path", r.URL.Path),
		tracing.String("server.address", host),
		tracing.String("network.protocol.version", strings.TrimPrefix(r.Proto, "HTTP/")),
	)
	if port > 0 {
		sp.Attrs = append(sp.Attrs, tracing.Int("server.port", int64(port)))
	}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		sp.Attrs = append(sp.Attrs, tracing.String("user_agent.original", ua))
	}
	if sp.Kind == tracing.Server {
		sp.Attrs = append(sp.Attrs, tracing.String("client.address", remoteIP(r.RemoteAddr)))
	}
	return sp
}

// traceEnd finishes sp with the request's outcome and queues it for export.
func (p *Proxy) traceEnd(sp *tracing.Span, rs *reqState, sw *statusWriter) {
	sp.End = time.Now()
	code := sw.code
	if code == 0 {
		code = http.StatusBadGateway // as the metrics count an aborted response
	}
	sp.Attrs = append(sp.Attrs, tracing.Int("http.response.status_code", int64(code)))
	if rs.cluster != nil {
		sp.Attrs = append(sp.Attrs, tracing.String("upstream_cluster", rs.cluster.cfg.Name)) // Envoy's tag
	}
	// The peer identities, as the metrics' client_id and server_id.
	var client, server string
	if rs.info.direction == "inbound" {
		if rs.info.tls {
			client, server = rs.info.peerID, p.ownID()
		}
	} else if rs.upTLS {
		client, server = p.ownID(), rs.serverID
	}
	if client != "" {
		sp.Attrs = append(sp.Attrs, tracing.String("weft.client.id", client))
	}
	if server != "" {
		sp.Attrs = append(sp.Attrs, tracing.String("weft.server.id", server))
	}
	if code >= 500 {
		sp.Error, sp.Message = true, sw.Header().Get("Weft-Error")
		sp.Attrs = append(sp.Attrs, tracing.String("error.type", strconv.Itoa(code)))
	}
	if g, err := strconv.Atoi(grpcStatus(sw.Header())); err == nil {
		sp.Attrs = append(sp.Attrs, tracing.String("rpc.system", "grpc"), tracing.Int("rpc.grpc.status_code", int64(g)))
		// OpenTelemetry's gRPC conventions: a client span fails on any status but OK, a server span on
		// the statuses that are the server's fault.
		if g != 0 && (sp.Kind == tracing.Client || grpcServerFault[g]) && !sp.Error {
			sp.Error = true
			sp.Message = cmp.Or(sw.Header().Get("Grpc-Message"), sw.Header().Get(http.TrailerPrefix+"Grpc-Message"))
			sp.Attrs = append(sp.Attrs, tracing.String("error.type", strconv.Itoa(g)))
		}
	}
	p.tracer.Enqueue(sp)
}

// grpcServerFault are UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS.
var grpcServerFault = map[int]bool{2: true, 4: true, 12: true, 13: true, 14: true, 15: true}

// splitAuthority is an authority's host and port (0 when it has none).
func splitAuthority(authority string) (string, int) {
	host, port, err := net.SplitHostPort(authority)
	if err != nil {
		return authority, 0
	}
	n, _ := strconv.Atoi(port)
	return host, n
}
