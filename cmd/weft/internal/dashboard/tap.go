package dashboard

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/weftmesh/weft/cmd/weft/internal/tap"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// ControlTapper taps through weft-control's Tap service, as `weft tap` does (cmd/weft/internal/tap).
type ControlTapper struct {
	Conn *grpc.ClientConn
	// Outgoing carries the metadata of every tap: tap.Conn.Dial's context, with the caller's bearer
	// token (Kubernetes mode: weft-control checks it with a TokenReview and a SubjectAccessReview); nil
	// sends none (local mode serves loopback callers).
	Outgoing context.Context
}

// Tap implements Tapper.
func (t ControlTapper) Tap(ctx context.Context, req *tapv1.ObserveRequest, each func(*tapv1.ObserveResponse) error) error {
	if t.Outgoing != nil {
		if md, ok := metadata.FromOutgoingContext(t.Outgoing); ok {
			ctx = metadata.NewOutgoingContext(ctx, md)
		}
	}
	return tap.Observe(ctx, t.Conn, req, each)
}
