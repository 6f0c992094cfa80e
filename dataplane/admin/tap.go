package admin

import (
	"context"
	"io"
	"net/http"

	"github.com/weftmesh/weft/identity/grpcwire"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// TapFunc streams a tap's responses to send until ctx ends (proxy.Proxy.Tap).
type TapFunc func(ctx context.Context, req *tapv1.ObserveRequest, send func(*tapv1.ObserveResponse) error) error

// Who may tap: a loopback client (the pod's own containers, kubectl port-forward, weft-control in local
// mode where pods are loopback addresses), or a client on a TLS connection. The admin port takes TLS only
// when weft-proxy runs with a workload identity, and then only with weft-control's client certificate
// (cmd/weft-proxy/tap.go checks it in the handshake): anything else fails before a request is read.
func tapOverTLS(r *http.Request) bool {
	return r.TLS != nil && r.URL.Path == tapv1.ObserveMethod && len(r.TLS.VerifiedChains) > 0
}

// tapHandler serves Tap.Observe over grpcwire: one request message, then the stream.
func tapHandler(tap TapFunc) http.Handler {
	return grpcwire.StreamHandler(func(s *grpcwire.ServerStream) error {
		req := &tapv1.ObserveRequest{}
		if err := s.Recv(req); err == io.EOF {
			return grpcwire.Errorf(grpcwire.InvalidArgument, "Tap.Observe: the client sent no ObserveRequest")
		} else if err != nil {
			return err
		}
		if req.GetMaxRps() < 0 {
			return grpcwire.Errorf(grpcwire.InvalidArgument, "max_rps %v: want 0 (the default, 100) or more", req.GetMaxRps())
		}
		return tap(s.Context(), req, func(m *tapv1.ObserveResponse) error { return s.Send(m) })
	})
}
