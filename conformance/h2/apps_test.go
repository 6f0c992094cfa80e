package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// apps are one pod's apps: a grpc-go server (the interop TestService, below) and an h2c net/http server
// that answers any request 200 after reading its body (h2spec's target).
type apps struct {
	grpc   *testServer
	webHit atomic.Int64 // requests the web app served
	// webHeader counts web requests carrying the header x-big (the over-the-limit case must not
	// arrive).
	webBig atomic.Int64
}

func startApps(t *testing.T, ip netip.Addr) *apps {
	t.Helper()
	a := &apps{grpc: newTestServer()}
	gl, err := net.Listen("tcp", netip.AddrPortFrom(ip, grpcPort).String())
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(maxMsg), grpc.MaxSendMsgSize(maxMsg))
	testgrpc.RegisterTestServiceServer(gs, a.grpc)
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)

	wl, err := net.Listen("tcp", netip.AddrPortFrom(ip, webPort).String())
	if err != nil {
		t.Fatal(err)
	}
	ws := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a.webHit.Add(1)
			if r.Header.Get("x-big") != "" {
				a.webBig.Add(1)
			}
			n, _ := io.Copy(io.Discard, r.Body)
			w.Header().Set("content-type", "text/plain")
			fmt.Fprintf(w, "ok %s %d\n", r.Method, n)
		}),
		Protocols:         new(http.Protocols),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ws.Protocols.SetHTTP1(true)
	ws.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = ws.Serve(wl) }()
	t.Cleanup(func() { ws.Close() })
	return a
}

// callEnd is what the server saw when a call it was holding ended.
type callEnd struct {
	err         error // the context's error
	deadline    time.Time
	hasDeadline bool
}

// testServer is the interop TestService with hooks driven by request metadata:
//
//	x-tag: a name for the call; with x-hold the server holds the call until its context ends and
//	       reports that end under the tag (ended)
//	x-echo: sent back as header metadata x-echo and trailer x-echo-trailer
//	x-code: the call fails with this code, message "asked for <code>" and an ErrorInfo detail
//
// It also counts the streams open at once (maxOpen).
type testServer struct {
	testgrpc.UnimplementedTestServiceServer
	mu      sync.Mutex
	ends    map[string]chan callEnd
	open    atomic.Int64
	maxOpen atomic.Int64
	sent    sync.Map // x-tag → *atomic.Int64: messages StreamingOutputCall has handed to grpc-go
	gates   sync.Map // x-tag → chan struct{}: StreamingInputCall with x-stall reads nothing until closed
}

// gate is the channel that StreamingInputCall tagged tag (with x-stall) waits on before reading.
func (s *testServer) gate(tag string) chan struct{} {
	v, _ := s.gates.LoadOrStore(tag, make(chan struct{}))
	return v.(chan struct{})
}

// sentCount is how many messages StreamingOutputCall has sent on the call tagged tag (grpc-go's Send
// returns only once the stream's flow control lets the message out, give or take its write quota).
func (s *testServer) sentCount(tag string) *atomic.Int64 {
	v, _ := s.sent.LoadOrStore(tag, new(atomic.Int64))
	return v.(*atomic.Int64)
}

func newTestServer() *testServer { return &testServer{ends: map[string]chan callEnd{}} }

// ended returns the channel on which the call tagged tag reports its end.
func (s *testServer) ended(tag string) chan callEnd {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.ends[tag]
	if !ok {
		ch = make(chan callEnd, 1)
		s.ends[tag] = ch
	}
	return ch
}

func (s *testServer) enter() func() {
	n := s.open.Add(1)
	for {
		m := s.maxOpen.Load()
		if n <= m || s.maxOpen.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { s.open.Add(-1) }
}

func md(ctx context.Context, key string) string {
	m, _ := metadata.FromIncomingContext(ctx)
	if v := m.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// prologue applies x-echo and x-code; a non-nil error ends the call.
func (s *testServer) prologue(ctx context.Context) error {
	if v := md(ctx, "x-echo"); v != "" {
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-echo", v)); err != nil {
			return err
		}
		if err := grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", v)); err != nil {
			return err
		}
	}
	if v := md(ctx, "x-code"); v != "" {
		c, err := strconv.Atoi(v)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "x-code %q", v)
		}
		st, err := status.New(codes.Code(c), "asked for "+codes.Code(c).String()).
			WithDetails(&errdetails.ErrorInfo{Reason: "ASKED", Domain: "h2.test", Metadata: map[string]string{"code": v}})
		if err != nil {
			return err
		}
		return st.Err()
	}
	return nil
}

// hold reports the end of a held call.
func (s *testServer) hold(ctx context.Context) error {
	<-ctx.Done()
	d, ok := ctx.Deadline()
	s.ended(md(ctx, "x-tag")) <- callEnd{err: ctx.Err(), deadline: d, hasDeadline: ok}
	return ctx.Err()
}

func (s *testServer) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, s.prologue(ctx)
}

func (s *testServer) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if err := s.prologue(ctx); err != nil {
		return nil, err
	}
	if md(ctx, "x-hold") != "" {
		return nil, s.hold(ctx)
	}
	body := req.GetPayload().GetBody()
	if n := req.GetResponseSize(); n > 0 {
		body = make([]byte, n)
		fill(body)
	}
	return &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: body}}, nil
}

func (s *testServer) StreamingOutputCall(req *testgrpc.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	ctx := stream.Context()
	if err := s.prologue(ctx); err != nil {
		return err
	}
	var sent *atomic.Int64
	if tag := md(ctx, "x-tag"); tag != "" {
		sent = s.sentCount(tag)
	}
	for _, p := range req.GetResponseParameters() {
		body := make([]byte, p.GetSize())
		fill(body)
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: &testgrpc.Payload{Body: body}}); err != nil {
			return err
		}
		if sent != nil {
			sent.Add(1)
		}
	}
	if md(ctx, "x-hold") != "" {
		return s.hold(ctx)
	}
	return nil
}

func (s *testServer) StreamingInputCall(stream testgrpc.TestService_StreamingInputCallServer) error {
	ctx := stream.Context()
	if err := s.prologue(ctx); err != nil {
		return err
	}
	if md(ctx, "x-stall") != "" {
		select {
		case <-s.gate(md(ctx, "x-tag")):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	total := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&testgrpc.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		if !filled(req.GetPayload().GetBody()) {
			return status.Error(codes.DataLoss, "a message arrived changed")
		}
		total += len(req.GetPayload().GetBody())
		if tag := md(ctx, "x-tag"); tag != "" {
			s.sentCount(tag + "/received").Add(1)
		}
	}
}

// FullDuplexCall echoes each message (its payload, or ResponseParameters' sizes when given). With
// x-hold it reports how the call ended when the client goes away.
func (s *testServer) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	defer s.enter()()
	ctx := stream.Context()
	if err := s.prologue(ctx); err != nil {
		return err
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if md(ctx, "x-hold") != "" {
				return s.hold(ctx)
			}
			return err
		}
		resp := &testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}
		if ps := req.GetResponseParameters(); len(ps) > 0 {
			body := make([]byte, ps[0].GetSize())
			fill(body)
			resp.Payload = &testgrpc.Payload{Body: body}
		}
		if err := stream.Send(resp); err != nil {
			if md(ctx, "x-hold") != "" {
				return s.hold(ctx)
			}
			return err
		}
	}
}

// fill writes a pattern that filled recognises, so that a message that arrives changed is caught.
func fill(b []byte) {
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
}

func filled(b []byte) bool {
	for i := range b {
		if b[i] != byte(i*7+i>>8) {
			return false
		}
	}
	return true
}
