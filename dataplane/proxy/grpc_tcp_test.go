package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcBackend echoes payloads; a request whose payload is "fail" gets NOT_FOUND with a trailer, and
// "slow" waits for its deadline.
type grpcBackend struct {
	testpb.UnimplementedTestServiceServer
}

func (grpcBackend) UnaryCall(ctx context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	switch string(r.GetPayload().GetBody()) {
	case "fail":
		_ = grpc.SetTrailer(ctx, metadata.Pairs("why", "asked-to-fail"))
		return nil, status.Error(codes.NotFound, "no such thing")
	case "slow":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &testpb.SimpleResponse{Payload: r.GetPayload()}, nil
}

func (grpcBackend) FullDuplexCall(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func startGRPCBackend(t testing.TB) netip.AddrPort {
	l := listen(t, "127.0.0.1:0")
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, grpcBackend{})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return netip.MustParseAddrPort(l.Addr().String())
}

func TestGRPCUnaryStreamingDeadlines(t *testing.T) {
	svc := newService(t, "grpc.shop.svc.cluster.local", "127.0.0.17", startGRPCBackend(t))
	_, sc := mesh(t, svc)
	cc := grpcClient(t, svc.authority(), svc.ip+":"+strconv.Itoa(svc.port))
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}})
	if err != nil || string(resp.GetPayload().GetBody()) != "hello" {
		t.Fatalf("unary: %v %v", resp, err)
	}
	// Status and trailers cross the proxy.
	var trailer metadata.MD
	_, err = client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("fail")}}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such thing" || trailer.Get("why")[0] != "asked-to-fail" {
		t.Fatalf("error status: %v, trailer %v", err, trailer)
	}
	// The client's deadline reaches the server.
	dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = client.UnaryCall(dctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("slow")}})
	dcancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("deadline: %v", err)
	}
	// Bidirectional streaming: each message comes back before the next is sent.
	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		body := bytes.Repeat([]byte{byte('a' + i)}, 1000*i+1)
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
			t.Fatal(err)
		}
		got, err := stream.Recv()
		if err != nil || !bytes.Equal(got.GetPayload().GetBody(), body) {
			t.Fatalf("stream message %d: %v", i, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v", err)
	}
	// NOT_FOUND (HTTP 200 with grpc-status 5) and the deadline are failures; the rest succeeded.
	labels := map[string]string{"authority": svc.authority(), "classification": "failure"}
	waitFor(t, "gRPC failures counted", func() bool { return metricValue(t, sc.reg, "response_total", labels) == 2 })
	labels["classification"] = "success"
	waitFor(t, "gRPC successes counted", func() bool { return metricValue(t, sc.reg, "response_total", labels) == 2 })
}

// startTCPEcho echoes bytes; when banner is set it speaks first.
func startTCPEcho(t testing.TB, banner string) netip.AddrPort {
	l := listen(t, "127.0.0.1:0")
	serveEach(l, func(c net.Conn) {
		defer c.Close()
		if banner != "" {
			_, _ = io.WriteString(c, banner)
		}
		_, _ = io.Copy(c, c)
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

func TestOpaqueTCP(t *testing.T) {
	echo := newService(t, "tcp.shop.svc.cluster.local", "127.0.0.18", startTCPEcho(t, ""))
	echo.tcp = true
	smtp := newService(t, "smtp.shop.svc.cluster.local", "127.0.0.19", startTCPEcho(t, "220 hello\r\n"))
	smtp.tcp = true
	_, sc := mesh(t, echo, smtp)

	c, err := net.Dial("tcp", echo.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("weft"), 256<<10) // 1 MiB
	go func() {
		_, _ = c.Write(payload)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echo through tcp_proxy: %d bytes, %v", len(got), err)
	}
	labels := map[string]string{"direction": "outbound", "target_cluster": echo.cluster(), "tls": "false"}
	waitFor(t, "tcp close counted", func() bool { return metricValue(t, sc.reg, "tcp_close_total", labels) == 1 })
	if v := metricValue(t, sc.reg, "tcp_open_total", labels); v != 1 {
		t.Errorf("tcp_open_total = %v", v)
	}
	if v := metricValue(t, sc.reg, "tcp_read_bytes_total", labels); v != float64(len(payload)) {
		t.Errorf("tcp_read_bytes_total = %v, want %d", v, len(payload))
	}
	if v := metricValue(t, sc.reg, "tcp_write_bytes_total", labels); v != float64(len(payload)) {
		t.Errorf("tcp_write_bytes_total = %v, want %d", v, len(payload))
	}

	// A server-speaks-first protocol on an opaque port: the proxy must not wait for the client.
	c, err = net.Dial("tcp", smtp.lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(c, buf, len("220 hello\r\n"))
	if err != nil || string(buf[:n]) != "220 hello\r\n" {
		t.Fatalf("banner: %q %v", buf[:n], err)
	}
}

// TestGRPCClientsGetProxyErrorsAsGRPCStatus: a gRPC client sees a proxy-made failure as a gRPC status
// carrying the weft-error reason.
func TestGRPCClientsGetProxyErrorsAsGRPCStatus(t *testing.T) {
	svc := newService(t, "grpc-empty.shop.svc.cluster.local", "127.0.0.49")
	_, sc := mesh(t, svc)
	cc := grpcClient(t, svc.authority(), svc.lis.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var hdr metadata.MD // a trailers-only response: its metadata arrives as trailers
	_, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Trailer(&hdr))
	want := "cluster " + svc.cluster() + " has no ready endpoints"
	if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != want {
		t.Fatalf("got %v, want UNAVAILABLE %q", err, want)
	}
	if got := hdr.Get("weft-error"); len(got) != 1 || got[0] != want {
		t.Errorf("weft-error header = %v", got)
	}
	if v := metricValue(t, sc.reg, "response_total", map[string]string{"target_cluster": svc.cluster(), "classification": "failure"}); v != 1 {
		t.Errorf("response_total{failure} = %v", v)
	}
}

// gRPC through both sidecars over mTLS (h2c to the client sidecar, HTTP/2 over mTLS between them,
// h2c to the app, each written through an h2WriteConn): streams the client cancels mid-call
// (RST_STREAM), before or after their first response, leave the connections serving the next call;
// messages around h2HoldBytes and much larger than it, and calls in parallel, come back intact.
func TestGRPCOverMTLSResetsSizesParallel(t *testing.T) {
	svc, _, _ := meshOverMTLS(t, "127.0.0.91", "127.0.0.92", startGRPCBackend(t))
	cc := grpcClient(t, svc.authority(), svc.lis.Addr().String())
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	unary := func(body []byte) {
		t.Helper()
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
		if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
			t.Fatalf("unary call of %d bytes: %d bytes back, %v", len(body), len(resp.GetPayload().GetBody()), err)
		}
	}
	for i := range 10 {
		sctx, scancel := context.WithCancel(ctx)
		stream, err := client.FullDuplexCall(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("m")}}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		scancel()
		unary([]byte("after reset " + strconv.Itoa(i)))
	}
	for _, n := range []int{0, 1, 4000, 4096 - 5, 4096, 4097, 16384, 100_000, 3 << 20} {
		unary(bytes.Repeat([]byte{'s'}, n))
	}
	errs := make(chan error, 16)
	for g := range 16 {
		go func() {
			for j := range 20 {
				want := "call " + strconv.Itoa(g) + "/" + strconv.Itoa(j)
				resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(want)}})
				if err != nil || string(resp.GetPayload().GetBody()) != want {
					errs <- fmt.Errorf("%s: %q, %v", want, resp.GetPayload().GetBody(), err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// grpcClient is a grpc-go client that sends authority's calls, in plaintext, to addr (a proxy's
// listener or the app); it is closed when the test ends.
func grpcClient(tb testing.TB, authority, addr string) *grpc.ClientConn {
	tb.Helper()
	cc, err := grpc.NewClient("passthrough:///"+authority, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	return cc
}
