package xdsclient

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// The ADS methods, called by name with the slim messages (go-control-plane's generated stubs would link
// all of Envoy's API into the sidecar).
const (
	adsSotWMethod  = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	adsDeltaMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
)

// Conn is the way to the control plane: an HTTP/2 client and the server's base URL (http://host:port
// for plaintext HTTP/2, https://host:port for TLS). The ADS streams speak the gRPC protocol over it
// (connect-go), so the sidecar links no grpc-go: a few megabytes less resident memory per pod.
type Conn struct {
	Client connect.HTTPClient
	URL    string
}

// Liveness of the control plane connection: after pingAfter (30 s) without a frame from the server, a
// ping; no answer within pingTimeout (20 s) closes the connection and the stream fails, so a dead
// control plane is noticed (gRPC keepalive's role). weft-control's servers permit a ping every 10 s.
// Variables for tests only.
var (
	pingAfter   = 30 * time.Second
	pingTimeout = 20 * time.Second
)

// Dial returns the Conn to the control plane at addr (host:port): plaintext HTTP/2 (h2c, prior
// knowledge) when tlsConfig is nil, else TLS with ALPN h2. Connections are made when a stream opens and
// reused; a dead one is detected by PING (30 s without a frame, 20 s for the answer).
func Dial(addr string, tlsConfig *tls.Config) Conn {
	return Conn{Client: HTTP2Client(tlsConfig), URL: baseURL(addr, tlsConfig != nil)}
}

// HTTP2Client is an HTTP/2-only client (h2c when tlsConfig is nil) with PING liveness checks.
func HTTP2Client(tlsConfig *tls.Config) *http.Client {
	var protos http.Protocols
	t := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		HTTP2:               &http.HTTP2Config{SendPingTimeout: pingAfter, PingTimeout: pingTimeout},
	}
	if tlsConfig != nil {
		protos.SetHTTP2(true)
		t.TLSClientConfig = tlsConfig.Clone()
	} else {
		protos.SetUnencryptedHTTP2(true)
	}
	t.Protocols = &protos
	return &http.Client{Transport: t}
}

func baseURL(addr string, tls bool) string {
	if strings.Contains(addr, "://") {
		return strings.TrimSuffix(addr, "/")
	}
	if tls {
		return "https://" + addr
	}
	return "http://" + addr
}

// stream is one ADS stream as the loops use it: Send, and Recv until an error.
type stream[Req, Res any] struct {
	s      *connect.BidiStreamForClient[Req, Res]
	cancel context.CancelFunc
}

// newStream opens a stream that ends with ctx or close: net/http's HTTP/2 transport watches the
// request's context only once the request body is closed, so closing the body when the context ends is
// what unblocks a Recv.
func newStream[Req, Res any](ctx context.Context, c *connect.Client[Req, Res]) stream[Req, Res] {
	ctx, cancel := context.WithCancel(ctx)
	s := c.CallBidiStream(ctx)
	context.AfterFunc(ctx, func() { _ = s.CloseRequest() })
	return stream[Req, Res]{s: s, cancel: cancel}
}

// Send sends a request. When the stream has already ended, connect reports io.EOF from Send and the
// real status from Receive: that status is returned.
func (s stream[Req, Res]) Send(r *Req) error {
	err := s.s.Send(r)
	if errors.Is(err, io.EOF) {
		if _, rerr := s.s.Receive(); rerr != nil {
			return rerr
		}
	}
	return err
}

func (s stream[Req, Res]) Recv() (*Res, error) { return s.s.Receive() }

// close ends the stream (resetting it if the server has not) and releases it.
func (s stream[Req, Res]) close() {
	s.cancel()
	_ = s.s.CloseResponse()
}

type deltaStream = stream[xp.DeltaDiscoveryRequest, xp.DeltaDiscoveryResponse]

type sotwStream = stream[xp.DiscoveryRequest, xp.DiscoveryResponse]

// adsClients are the two ADS methods' connect clients (gRPC protocol, no compression asked for).
type adsClients struct {
	delta *connect.Client[xp.DeltaDiscoveryRequest, xp.DeltaDiscoveryResponse]
	sotw  *connect.Client[xp.DiscoveryRequest, xp.DiscoveryResponse]
}

func newADSClients(c Conn) adsClients {
	return adsClients{
		delta: connect.NewClient[xp.DeltaDiscoveryRequest, xp.DeltaDiscoveryResponse](c.Client, c.URL+adsDeltaMethod, connect.WithGRPC()),
		sotw:  connect.NewClient[xp.DiscoveryRequest, xp.DiscoveryResponse](c.Client, c.URL+adsSotWMethod, connect.WithGRPC()),
	}
}

func openDelta(ctx context.Context, c adsClients) deltaStream {
	return newStream(ctx, c.delta)
}

func openSotW(ctx context.Context, c adsClients) sotwStream {
	return newStream(ctx, c.sotw)
}

// isUnimplemented reports a gRPC status Unimplemented (the server lacks the method).
func isUnimplemented(err error) bool { return connect.CodeOf(err) == connect.CodeUnimplemented }

// codeInvalidArgument is gRPC's INVALID_ARGUMENT, the code of a NACK's error detail.
const codeInvalidArgument = int32(connect.CodeInvalidArgument)
