package grpcwire_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/identity/grpcwire"
)

// The calls are tested against grpc-go on the other side: its server for the client, its client for
// the handlers, over h2c on loopback.

const (
	unaryMethod  = "/grpc.testing.TestService/UnaryCall"
	duplexMethod = "/grpc.testing.TestService/FullDuplexCall"
)

// echoServer is grpc-go's side: it echoes payloads, and answers a request that carries a
// ResponseStatus with that status.
type echoServer struct {
	testgrpc.UnimplementedTestServiceServer
	timeouts chan string // grpc-timeout headers seen
}

func (s *echoServer) UnaryCall(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok && s.timeouts != nil {
		_, has := ctx.Deadline()
		select {
		case s.timeouts <- map[bool]string{true: "deadline", false: "none"}[has] + " " + strings.Join(md["content-type"], ","):
		default:
		}
	}
	if st := req.GetResponseStatus(); st != nil {
		if st.GetCode() == int32(codes.DeadlineExceeded) {
			<-ctx.Done() // hold the call until the caller's deadline
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
}

func (s *echoServer) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if st := req.GetResponseStatus(); st != nil {
			return status.Error(codes.Code(st.GetCode()), st.GetMessage())
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func grpcServer(t *testing.T) (base string, srv *echoServer) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv = &echoServer{timeouts: make(chan string, 1)}
	testgrpc.RegisterTestServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return "http://" + lis.Addr().String(), srv
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

func payload(s string) *testgrpc.Payload { return &testgrpc.Payload{Body: []byte(s)} }

func TestUnaryAgainstGRPCServer(t *testing.T) {
	base, srv := grpcServer(t)
	c := h2cClient()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var res testgrpc.SimpleResponse
	if err := grpcwire.Unary(ctx, c, base+unaryMethod, &testgrpc.SimpleRequest{Payload: payload("hello")}, &res); err != nil {
		t.Fatalf("unary call: %v", err)
	}
	if got := string(res.GetPayload().GetBody()); got != "hello" {
		t.Errorf("echo = %q, want hello", got)
	}
	if got := <-srv.timeouts; got != "deadline application/grpc" {
		t.Errorf("server saw %q, want the caller's deadline and content type application/grpc", got)
	}

	// A status with a message that needs percent-encoding on the wire.
	msg := "token rejected: 100% wrong, naïve\nsecond line"
	err := grpcwire.Unary(ctx, c, base+unaryMethod, &testgrpc.SimpleRequest{
		ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.PermissionDenied), Message: msg}}, &res)
	var e *grpcwire.Error
	if !errors.As(err, &e) || e.Code != grpcwire.PermissionDenied || e.Message != msg {
		t.Errorf("error = %#v, want PermissionDenied with %q", err, msg)
	}

	// A method the server lacks.
	err = grpcwire.Unary(ctx, c, base+"/grpc.testing.TestService/EmptyCall", &testgrpc.Empty{}, &testgrpc.Empty{})
	if grpcwire.CodeOf(err) != grpcwire.Unimplemented {
		t.Errorf("unknown method: %v, want Unimplemented", err)
	}

	// The caller's deadline ends the call.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	err = grpcwire.Unary(short, c, base+unaryMethod, &testgrpc.SimpleRequest{
		ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.DeadlineExceeded)}}, &res)
	if grpcwire.CodeOf(err) != grpcwire.DeadlineExceeded {
		t.Errorf("past the deadline: %v, want DeadlineExceeded", err)
	}

	// Nobody listening.
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := lis.Addr().String()
	lis.Close()
	err = grpcwire.Unary(ctx, c, "http://"+addr+unaryMethod, &testgrpc.SimpleRequest{}, &res)
	if grpcwire.CodeOf(err) != grpcwire.Unavailable {
		t.Errorf("refused connection: %v, want Unavailable", err)
	}
}

func TestStreamAgainstGRPCServer(t *testing.T) {
	base, _ := grpcServer(t)
	c := h2cClient()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	s := grpcwire.OpenStream(ctx, c, base+duplexMethod)
	for _, m := range []string{"one", "two", "three"} {
		if err := s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload(m)}); err != nil {
			t.Fatalf("send %s: %v", m, err)
		}
		var res testgrpc.StreamingOutputCallResponse
		if err := s.Recv(&res); err != nil {
			t.Fatalf("recv: %v", err)
		}
		if got := string(res.GetPayload().GetBody()); got != m {
			t.Fatalf("echo = %q, want %q", got, m)
		}
	}
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload("late")}); grpcwire.CodeOf(err) != grpcwire.Internal {
		t.Errorf("send after CloseSend: %v, want Internal at once", err)
	}
	if err := s.Recv(&testgrpc.StreamingOutputCallResponse{}); err != io.EOF {
		t.Errorf("after the half-close: %v, want io.EOF (status OK)", err)
	}
	s.Close()

	// The server ends the call with a status: Recv reports it, and so does a Send after it.
	s = grpcwire.OpenStream(ctx, c, base+duplexMethod)
	defer s.Close()
	if err := s.Send(&testgrpc.StreamingOutputCallRequest{
		ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.InvalidArgument), Message: "bad request"}}); err != nil {
		t.Fatalf("send: %v", err)
	}
	err := s.Recv(&testgrpc.StreamingOutputCallResponse{})
	var e *grpcwire.Error
	if !errors.As(err, &e) || e.Code != grpcwire.InvalidArgument || e.Message != "bad request" {
		t.Fatalf("recv: %v, want InvalidArgument \"bad request\"", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err = s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload("late")})
		if err != nil || time.Now().After(deadline) {
			break
		}
	}
	if grpcwire.CodeOf(err) != grpcwire.InvalidArgument {
		t.Errorf("send after the call ended: %v, want its status InvalidArgument", err)
	}
}

func TestStreamRecvEndsWithContext(t *testing.T) {
	base, _ := grpcServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	s := grpcwire.OpenStream(ctx, h2cClient(), base+duplexMethod)
	defer s.Close()
	if err := s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Recv(&testgrpc.StreamingOutputCallResponse{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Recv(&testgrpc.StreamingOutputCallResponse{}) }() // nothing more comes
	cancel()
	wantCode(t, "recv after cancel", done, grpcwire.Canceled)
}

// wireServer serves the TestService methods through grpcwire's handlers.
func wireServer(t *testing.T) *grpc.ClientConn {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(unaryMethod, grpcwire.UnaryHandler(func(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		if st := req.GetResponseStatus(); st != nil {
			return nil, &grpcwire.Error{Code: grpcwire.Code(st.GetCode()), Message: st.GetMessage()}
		}
		return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
	}))
	mux.Handle(duplexMethod, grpcwire.StreamHandler(func(s *grpcwire.ServerStream) error {
		for {
			var req testgrpc.StreamingOutputCallRequest
			if err := s.Recv(&req); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if st := req.GetResponseStatus(); st != nil {
				return &grpcwire.Error{Code: grpcwire.Code(st.GetCode()), Message: st.GetMessage()}
			}
			if err := s.Send(&testgrpc.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
				return err
			}
		}
	}))
	cc, err := grpc.NewClient(serveH2C(t, mux), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestHandlersServeGRPCClient(t *testing.T) {
	cc := wireServer(t)
	tc := testgrpc.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	res, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: payload("hi")})
	if err != nil || string(res.GetPayload().GetBody()) != "hi" {
		t.Fatalf("unary: %v %v, want the echo", res, err)
	}
	msg := "no secret \"x\": 50% of ünïcode\tand a tab"
	_, err = tc.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.NotFound), Message: msg}})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != msg {
		t.Errorf("unary error: %v, want NotFound %q", err, msg)
	}
	if _, err := tc.EmptyCall(ctx, &testgrpc.Empty{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("unregistered method: %v, want Unimplemented", err)
	}

	st, err := tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"a", "b"} {
		if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload(m)}); err != nil {
			t.Fatal(err)
		}
		r, err := st.Recv()
		if err != nil || string(r.GetPayload().GetBody()) != m {
			t.Fatalf("stream echo: %v %v, want %q", r, err, m)
		}
	}
	st.CloseSend()
	if _, err := st.Recv(); err != io.EOF {
		t.Errorf("after the half-close: %v, want io.EOF", err)
	}

	// A status before any message goes out as a trailers-only response.
	st, err = tc.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&testgrpc.StreamingOutputCallRequest{ResponseStatus: &testgrpc.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "not yet"}})
	if _, err := st.Recv(); status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != "not yet" {
		t.Errorf("stream status: %v, want FailedPrecondition \"not yet\"", err)
	}
}

// A handler's context carries the caller's deadline (grpc-timeout); a malformed grpc-timeout fails
// the call with Internal, naming the header.
func TestHandlersTakeTheCallersDeadline(t *testing.T) {
	deadlines := make(chan time.Time, 1)
	mux := http.NewServeMux()
	mux.Handle(unaryMethod, grpcwire.UnaryHandler(func(ctx context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		dl, _ := ctx.Deadline() // zero without one
		deadlines <- dl
		return &testgrpc.SimpleResponse{}, nil
	}))
	addr := serveH2C(t, mux)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tc := testgrpc.NewTestServiceClient(cc)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want, _ := ctx.Deadline()
	if _, err := tc.UnaryCall(ctx, &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-deadlines; got.IsZero() || got.After(want.Add(time.Second)) || got.Before(want.Add(-5*time.Second)) {
		t.Errorf("handler's deadline %v, want about the caller's %v", got, want)
	}
	if _, err := tc.UnaryCall(context.Background(), &testgrpc.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-deadlines; !got.IsZero() {
		t.Errorf("handler's deadline %v for a call without one, want none", got)
	}

	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+unaryMethod, strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Grpc-Timeout", "5x")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if st, msg := resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"); st != "13" || !strings.Contains(msg, "grpc-timeout") {
		t.Errorf("malformed grpc-timeout: status %q %q, want 13 (Internal) naming grpc-timeout", st, msg)
	}
}

// A 200 response that is not gRPC (a web page from a misrouted call) is Unknown, as grpc-go says.
func TestUnaryFromNonGRPCServerIsUnknown(t *testing.T) {
	addr := serveH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html>hello</html>")
	}))
	err := grpcwire.Unary(context.Background(), h2cClient(), "http://"+addr+unaryMethod, &testgrpc.SimpleRequest{}, &testgrpc.SimpleResponse{})
	if grpcwire.CodeOf(err) != grpcwire.Unknown || !strings.Contains(err.Error(), "text/html") {
		t.Errorf("call to a web server: %v, want Unknown naming text/html", err)
	}
}

func TestHandlersRefuseNonGRPCRequests(t *testing.T) {
	h := grpcwire.UnaryHandler(func(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
		t.Error("the method ran for a request that is not a gRPC call")
		return nil, nil
	})
	srv := &http.Server{Handler: h}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Close()
	url := "http://" + lis.Addr().String() + unaryMethod
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: HTTP %d, want 405", resp.StatusCode)
	}
	resp, err = http.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(body), "application/grpc") {
		t.Errorf("JSON POST: HTTP %d %q, want 415 naming application/grpc", resp.StatusCode, body)
	}
}

// waitForGoroutine polls the goroutine dump until one is in fn (a function name), for up to 10 s.
func waitForGoroutine(t *testing.T, fn string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if n := runtime.Stack(buf, true); strings.Contains(string(buf[:n]), fn) {
			return
		}
	}
	t.Fatalf("no goroutine in %s after 10 s", fn)
}

// wantCode waits (10 s at most) for the error of what on done, and checks its status code.
func wantCode(t *testing.T, what string, done <-chan error, want grpcwire.Code) {
	t.Helper()
	select {
	case err := <-done:
		if grpcwire.CodeOf(err) != want {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still blocked 10 s later", what)
	}
}

// nonReadingServer answers a call's head but never reads the request; it returns the method's URL.
func nonReadingServer(t *testing.T) string {
	mux := http.NewServeMux()
	mux.HandleFunc(duplexMethod, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		<-r.Context().Done() // never reads the request
	})
	return "http://" + serveH2C(t, mux) + duplexMethod
}

// serveH2C serves h on loopback over HTTP/2 without TLS until the test ends; it returns the address.
func serveH2C(t *testing.T, h http.Handler) string {
	t.Helper()
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: h, Protocols: &p}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(lis)
	t.Cleanup(func() { hs.Close() })
	return lis.Addr().String()
}

// A server that answers the call's head but never reads the request: the client's Send fills the
// stream's flow control window and waits. When the context ends, Send returns (and so does Close):
// net/http's transport does not watch the context while it waits for the window, so the call has to
// be aborted, not only its request body failed.
func TestStreamSendEndsWithContextWhenServerDoesNotRead(t *testing.T) {
	url := nonReadingServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := grpcwire.OpenStream(ctx, h2cClient(), url)
	done := make(chan error, 1)
	go func() {
		// More than the server's windows (1 MB per stream and connection): Send cannot complete.
		done <- s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload(strings.Repeat("x", 4<<20))})
	}()
	waitForGoroutine(t, "awaitFlowControl")
	cancel()
	wantCode(t, "send after cancel", done, grpcwire.Canceled)
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close still blocked 10 s after the context ended")
	}
}

// A call that cannot be made (its URL does not parse) fails its Send and Recv with the reason.
func TestStreamWithBadURLFails(t *testing.T) {
	s := grpcwire.OpenStream(context.Background(), h2cClient(), "http://control-plane:port/x.Y/Z")
	defer s.Close()
	done := make(chan error, 1)
	go func() { done <- s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload("x")}) }()
	select {
	case err := <-done:
		if grpcwire.CodeOf(err) != grpcwire.Internal || !strings.Contains(err.Error(), "port") {
			t.Errorf("send: %v, want Internal about the URL's port", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send still blocked 10 s on a call that could not be made")
	}
	if err := s.Recv(&testgrpc.StreamingOutputCallResponse{}); grpcwire.CodeOf(err) != grpcwire.Internal {
		t.Errorf("recv: %v, want Internal", err)
	}
}

// The same for a Recv after a Send that returned with part of its message still waiting for the
// server's window.
func TestStreamRecvEndsWithContextWhenServerDoesNotRead(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := grpcwire.OpenStream(ctx, h2cClient(), nonReadingServer(t))
	defer s.Close()
	// A little more than the server's 1 MB window: the transport takes it all from Send, and waits.
	if err := s.Send(&testgrpc.StreamingOutputCallRequest{Payload: payload(strings.Repeat("x", 1<<20+4096))}); err != nil {
		t.Fatal(err)
	}
	waitForGoroutine(t, "awaitFlowControl")
	done := make(chan error, 1)
	go func() { done <- s.Recv(&testgrpc.StreamingOutputCallResponse{}) }()
	cancel()
	wantCode(t, "recv after cancel", done, grpcwire.Canceled)
}
