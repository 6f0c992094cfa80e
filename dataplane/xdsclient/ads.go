package xdsclient

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
	"github.com/weftmesh/weft/identity/grpcwire"
)

// The ADS methods, called by name with the slim messages (go-control-plane's generated stubs would link
// all of Envoy's API into the sidecar).
const (
	adsSotWMethod  = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	adsDeltaMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
)

// Conn is the way to the control plane: an HTTP/2 client and the server's base URL (http://host:port
// for plaintext HTTP/2, https://host:port for TLS). The ADS streams speak the gRPC protocol over it
// (identity/grpcwire), so the sidecar links no grpc-go: a few megabytes less resident memory per pod.
type Conn struct {
	Client grpcwire.Doer
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
type stream[Req, Res any] struct{ s *grpcwire.Stream }

// Send sends a request. When the stream has already ended, it returns the stream's status.
func (s stream[Req, Res]) Send(r *Req) error { return s.s.Send(any(r).(proto.Message)) }

func (s stream[Req, Res]) Recv() (*Res, error) {
	res := new(Res)
	if err := s.s.Recv(any(res).(proto.Message)); err != nil {
		return nil, err
	}
	return res, nil
}

// close ends the stream (resetting it if the server has not) and releases it.
func (s stream[Req, Res]) close() { s.s.Close() }

type deltaStream = stream[xp.DeltaDiscoveryRequest, xp.DeltaDiscoveryResponse]

type sotwStream = stream[xp.DiscoveryRequest, xp.DiscoveryResponse]

// adsClients is the way to the two ADS methods.
type adsClients struct {
	client grpcwire.Doer
	url    string
}

func newADSClients(c Conn) adsClients { return adsClients{client: c.Client, url: c.URL} }

func openDelta(ctx context.Context, c adsClients) deltaStream {
	return deltaStream{grpcwire.OpenStream(ctx, c.client, c.url+adsDeltaMethod)}
}

func openSotW(ctx context.Context, c adsClients) sotwStream {
	return sotwStream{grpcwire.OpenStream(ctx, c.client, c.url+adsSotWMethod)}
}

// isUnimplemented reports a gRPC status Unimplemented (the server lacks the method).
func isUnimplemented(err error) bool { return grpcwire.CodeOf(err) == grpcwire.Unimplemented }

// codeInvalidArgument is gRPC's INVALID_ARGUMENT, the code of a NACK's error detail.
const codeInvalidArgument = int32(grpcwire.InvalidArgument)
