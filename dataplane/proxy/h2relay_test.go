package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/dataplane/proxy"
)

// relayBackend is a grpc-go TestService for the relay's tests: unary echo (a "fail" body gets
// NOT_FOUND with a trailer, "slow" waits for the call's end and reports how it ended), server
// streaming by ResponseParameters (counting the messages sent), client streaming (the total size)
// and bidi echo (reporting a call that ends by cancellation).
type relayBackend struct {
	testpb.UnimplementedTestServiceServer
	addr      netip.AddrPort
	slowEnded chan time.Duration // a "slow" unary call's deadline as the server saw it (0: none)
	bidiEnded chan error         // how a bidi call ended, when not by the client's CloseSend
	sent      atomic.Int64
	hold      chan struct{} // a client stream whose first message is "hold" waits for it before reading on
}

const relayMaxMsg = 16 << 20

func startRelayBackend(t *testing.T) *relayBackend {
	b := &relayBackend{slowEnded: make(chan time.Duration, 8), bidiEnded: make(chan error, 8), hold: make(chan struct{})}
	l := listen(t, "127.0.0.1:0")
	s := grpc.NewServer(grpc.MaxRecvMsgSize(relayMaxMsg), grpc.MaxSendMsgSize(relayMaxMsg))
	testpb.RegisterTestServiceServer(s, b)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	b.addr = netip.MustParseAddrPort(l.Addr().String())
	return b
}

func (b *relayBackend) UnaryCall(ctx context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	switch string(r.GetPayload().GetBody()) {
	case "fail":
		_ = grpc.SetTrailer(ctx, metadata.Pairs("why", "asked-to-fail"))
		return nil, status.Error(codes.NotFound, "no such thing")
	case "slow":
		var left time.Duration
		if d, ok := ctx.Deadline(); ok {
			left = time.Until(d)
		}
		b.slowEnded <- left
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &testpb.SimpleResponse{Payload: r.GetPayload()}, nil
}

func (b *relayBackend) StreamingOutputCall(r *testpb.StreamingOutputCallRequest, s grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for i, p := range r.GetResponseParameters() {
		body := bytes.Repeat([]byte{byte('a' + i%26)}, int(p.GetSize()))
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
		b.sent.Add(1)
	}
	return nil
}

func (b *relayBackend) StreamingInputCall(s grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	var n int32
	for {
		m, err := s.Recv()
		if err == io.EOF {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: n})
		}
		if err != nil {
			return err
		}
		if string(m.GetPayload().GetBody()) == "hold" {
			select {
			case <-b.hold:
			case <-s.Context().Done():
				return s.Context().Err()
			}
			continue
		}
		n += int32(len(m.GetPayload().GetBody()))
	}
}

func (b *relayBackend) FullDuplexCall(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		req, err := s.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			select {
			case b.bidiEnded <- s.Context().Err():
			default:
			}
			return err
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

// relayClient is a grpc-go client of authority through addr with fixed windows (no BDP growth, so
// that a stream nobody reads holds back at a known size) and room for large messages.
func relayClient(t *testing.T, authority, addr string) testpb.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+authority, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(1<<20),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(relayMaxMsg), grpc.MaxCallSendMsgSize(relayMaxMsg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testpb.NewTestServiceClient(cc)
}

// relayPaths runs f through one sidecar (B1: h2c to the outbound listener, h2c to the app) and
// through two (B2: h2c, mTLS HTTP/2 between the sidecars, h2c to the app), with the relay on.
func relayPaths(t *testing.T, f func(t *testing.T, client testpb.TestServiceClient, b *relayBackend)) {
	t.Setenv("WEFT_TEST_H2_RELAY", "1") // whatever the run chose for the rest of the package
	for _, path := range []string{"B1", "B2"} {
		t.Run(path, func(t *testing.T) {
			b := startRelayBackend(t)
			var svc *service
			if path == "B1" {
				svc = newService(t, "grpc.shop.svc.cluster.local", "127.0.0.17", b.addr)
				mesh(t, svc)
			} else {
				svc, _, _ = meshOverMTLS(t, "127.0.0.93", "127.0.0.94", b.addr)
			}
			before := proxy.RelayStreams()
			f(t, relayClient(t, svc.authority(), svc.lis.Addr().String()), b)
			if proxy.RelayStreams() == before {
				t.Fatal("the relay served no stream")
			}
		})
	}
}

func relayCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestH2RelayUnaryStatusTrailersLargeMessages(t *testing.T) {
	relayPaths(t, func(t *testing.T, client testpb.TestServiceClient, _ *relayBackend) {
		ctx := relayCtx(t)
		for _, n := range []int{0, 1, 16384, 16385, 100_000, 4 << 20} {
			body := bytes.Repeat([]byte{'u'}, n)
			resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
			if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
				t.Fatalf("unary call of %d bytes: %d back, %v", n, len(resp.GetPayload().GetBody()), err)
			}
		}
		var trailer metadata.MD
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("fail")}}, grpc.Trailer(&trailer))
		if status.Code(err) != codes.NotFound || status.Convert(err).Message() != "no such thing" || len(trailer.Get("why")) != 1 || trailer.Get("why")[0] != "asked-to-fail" {
			t.Fatalf("status %v, trailer %v; want NOT_FOUND \"no such thing\" and why=asked-to-fail", err, trailer)
		}
	})
}

func TestH2RelayStreaming(t *testing.T) {
	relayPaths(t, func(t *testing.T, client testpb.TestServiceClient, _ *relayBackend) {
		ctx := relayCtx(t)
		// Server streaming.
		sizes := []int32{0, 1, 16384, 100_000, 1 << 20, 4 << 20}
		req := &testpb.StreamingOutputCallRequest{}
		for _, n := range sizes {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: n})
		}
		ss, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range sizes {
			m, err := ss.Recv()
			if err != nil || !bytes.Equal(m.GetPayload().GetBody(), bytes.Repeat([]byte{byte('a' + i)}, int(n))) {
				t.Fatalf("server stream message %d (%d bytes): %d bytes, %v", i, n, len(m.GetPayload().GetBody()), err)
			}
		}
		if _, err := ss.Recv(); err != io.EOF {
			t.Fatalf("server stream end: %v", err)
		}
		// Client streaming: 64 messages of 64 KB.
		cs, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 64 {
			if err := cs.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 64<<10)}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := cs.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != 64*64<<10 {
			t.Fatalf("client stream: %v, %v; want %d bytes", resp, err, 64*64<<10)
		}
		// Bidi: each message comes back before the next goes.
		bs, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			body := bytes.Repeat([]byte{byte('a' + i)}, 5000*i+1)
			if err := bs.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
				t.Fatal(err)
			}
			if m, err := bs.Recv(); err != nil || !bytes.Equal(m.GetPayload().GetBody(), body) {
				t.Fatalf("bidi message %d: %v", i, err)
			}
		}
		if err := bs.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := bs.Recv(); err != io.EOF {
			t.Fatalf("bidi end: %v", err)
		}
	})
}

// A call's deadline reaches the server (grpc-timeout) and a cancelled call ends there (RST_STREAM
// passes through the relay), and the connection serves the next call.
func TestH2RelayCancellationAndDeadlines(t *testing.T) {
	relayPaths(t, func(t *testing.T, client testpb.TestServiceClient, b *relayBackend) {
		ctx := relayCtx(t)
		dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := client.UnaryCall(dctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("slow")}})
		dcancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("deadline: %v", err)
		}
		select {
		case left := <-b.slowEnded:
			if left <= 0 || left > 300*time.Millisecond {
				t.Fatalf("the server's call had %v left of its deadline, want the client's 300ms less the way", left)
			}
		case <-ctx.Done():
			t.Fatal("the server never got the call")
		}
		for i := range 5 {
			sctx, scancel := context.WithCancel(ctx)
			bs, err := client.FullDuplexCall(sctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := bs.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("m")}}); err != nil {
				t.Fatal(err)
			}
			if _, err := bs.Recv(); err != nil {
				t.Fatal(err)
			}
			scancel()
			select {
			case got := <-b.bidiEnded:
				if !errors.Is(got, context.Canceled) {
					t.Fatalf("cancelled call %d ended on the server with %v", i, got)
				}
			case <-ctx.Done():
				t.Fatalf("cancelled call %d never ended on the server", i)
			}
			if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("next")}}); err != nil {
				t.Fatalf("call after cancel %d: %v", i, err)
			}
		}
	})
}

// 100 streams open at once on one client connection, all through the relay.
func TestH2Relay100ConcurrentStreams(t *testing.T) {
	relayPaths(t, func(t *testing.T, client testpb.TestServiceClient, _ *relayBackend) {
		ctx := relayCtx(t)
		const n = 100
		var opened sync.WaitGroup
		opened.Add(n)
		allOpen := make(chan struct{})
		errs := make(chan error, n)
		for i := range n {
			go func() {
				errs <- func() error {
					bs, err := client.FullDuplexCall(ctx)
					if err != nil {
						opened.Done()
						return err
					}
					want := fmt.Sprintf("stream %d", i)
					for round := range 2 {
						if err := bs.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(want)}}); err != nil {
							return err
						}
						m, err := bs.Recv()
						if err != nil || string(m.GetPayload().GetBody()) != want {
							return fmt.Errorf("%s round %d: %q, %v", want, round, m.GetPayload().GetBody(), err)
						}
						if round == 0 {
							opened.Done()
							<-allOpen // every stream is open and has had an answer before any goes on
						}
					}
					if err := bs.CloseSend(); err != nil {
						return err
					}
					if _, err := bs.Recv(); err != io.EOF {
						return fmt.Errorf("%s end: %v", want, err)
					}
					return nil
				}()
			}()
		}
		opened.Wait()
		close(allOpen)
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	})
}

// A stream whose client does not read holds back only itself: the server can send it no more than
// the windows on the way allow, while other calls on the same connection go on; read later, it is
// whole.
func TestH2RelaySlowReaderStallsOnlyItsStream(t *testing.T) {
	relayPaths(t, func(t *testing.T, client testpb.TestServiceClient, b *relayBackend) {
		ctx := relayCtx(t)
		const msgs, size = 64, 64 << 10 // 4 MB
		req := &testpb.StreamingOutputCallRequest{}
		for range msgs {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: size})
		}
		slow, err := client.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the server to start sending", func() bool { return b.sent.Load() >= 2 })
		for i := range 20 {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			body := []byte(fmt.Sprintf("beside the slow stream %d", i))
			resp, err := client.UnaryCall(cctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
			ccancel()
			if err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
				t.Fatalf("call %d beside the slow stream: %v", i, err)
			}
		}
		// Windows on the way: the client's 64 KB, 256 KB per relay hop, the server's own buffer; far
		// from the 4 MB the server would send if the relay buffered without bound.
		if got := b.sent.Load(); got >= msgs/2 {
			t.Fatalf("the server sent %d of %d messages nobody read: flow control did not hold it back", got, msgs)
		}
		for i := range msgs {
			m, err := slow.Recv()
			if err != nil || len(m.GetPayload().GetBody()) != size || m.GetPayload().GetBody()[0] != byte('a'+i%26) {
				t.Fatalf("slow stream message %d: %d bytes, %v", i, len(m.GetPayload().GetBody()), err)
			}
		}
		if _, err := slow.Recv(); err != io.EOF {
			t.Fatalf("slow stream end: %v", err)
		}
	})
}

// Plain HTTP/2 (not gRPC) through the relay: a GET, a POST with a body larger than the windows, and
// a proxy-made error, with an h2c client of net/http.
func TestH2RelayPlainHTTP2(t *testing.T) {
	t.Setenv("WEFT_TEST_H2_RELAY", "1") // whatever the run chose for the rest of the package
	be := startBackend(t, "app", "127.0.0.1:0")
	svc := newService(t, "web.shop.svc.cluster.local", "127.0.0.18", be.addr)
	mesh(t, svc)
	before := proxy.RelayStreams()
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: resolve(tr, svc), Timeout: 20 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	resp, body := get(t, c, "http://"+svc.authority()+"/hello")
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || body != "app HTTP/2.0 "+svc.authority()+" /hello" {
		t.Fatalf("GET: %d %s %q", resp.StatusCode, resp.Proto, body)
	}
	big := strings.Repeat("p", 3<<20)
	resp, err := c.Post("http://"+svc.authority()+"/upload", "text/plain", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("app got %d bytes", len(big)); string(got) != want {
		t.Fatalf("POST: %q, want %q", got, want)
	}
	ureq, _ := http.NewRequest(http.MethodGet, "http://"+svc.authority()+"/", nil)
	ureq.Host = "unknown.example"
	resp, err = c.Do(ureq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Weft-Error") == "" {
		t.Fatalf("unrouted: %d, weft-error %q", resp.StatusCode, resp.Header.Get("Weft-Error"))
	}
	if proxy.RelayStreams()-before < 3 {
		t.Fatalf("the relay took %d streams, want 3", proxy.RelayStreams()-before)
	}
}

// An upstream's GOAWAY (grpc-go's GracefulStop) lets the streams it processed finish through the
// relay, and the next call goes on a new connection (here to a new server on the same address).
func TestH2RelayUpstreamGoaway(t *testing.T) {
	t.Setenv("WEFT_TEST_H2_RELAY", "1")
	l := listen(t, "127.0.0.1:0")
	addr := netip.MustParseAddrPort(l.Addr().String())
	first := grpc.NewServer()
	testpb.RegisterTestServiceServer(first, &relayBackend{})
	go func() { _ = first.Serve(l) }()
	t.Cleanup(first.Stop)
	svc := newService(t, "grpc.shop.svc.cluster.local", "127.0.0.17", addr)
	mesh(t, svc)
	client := relayClient(t, svc.authority(), svc.lis.Addr().String())
	ctx := relayCtx(t)

	bs, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	echo := func(what string) {
		t.Helper()
		if err := bs.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(what)}}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if m, err := bs.Recv(); err != nil || string(m.GetPayload().GetBody()) != what {
			t.Fatalf("%s: %q, %v", what, m.GetPayload().GetBody(), err)
		}
	}
	echo("before the GOAWAY")
	stopped := make(chan struct{})
	go func() { first.GracefulStop(); close(stopped) }() // GOAWAY; waits for the open stream
	var second *grpc.Server
	waitFor(t, "a second server on the first one's address", func() bool {
		l2, err := net.Listen("tcp", addr.String())
		if err != nil {
			return false
		}
		second = grpc.NewServer()
		testpb.RegisterTestServiceServer(second, &relayBackend{})
		go func() { _ = second.Serve(l2) }()
		return true
	})
	t.Cleanup(second.Stop)
	for i := range 3 {
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("after")}})
		if err != nil || string(resp.GetPayload().GetBody()) != "after" {
			t.Fatalf("call %d after the GOAWAY: %v", i, err)
		}
	}
	echo("the stream the first server processed goes on")
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("end of the stream: %v", err)
	}
	select {
	case <-stopped:
	case <-ctx.Done():
		t.Fatal("the first server's GracefulStop never returned (its connection stayed open)")
	}
}

// The other direction: a server that does not read a client stream holds back that stream only (the
// client's sends block on its window), while other calls go on; released, it gets every byte.
func TestH2RelaySlowServerStallsOnlyItsStream(t *testing.T) {
	relayPaths(t, func(t *testing.T, client testpb.TestServiceClient, b *relayBackend) {
		ctx := relayCtx(t)
		cs, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: []byte("hold")}}); err != nil {
			t.Fatal(err)
		}
		const msgs, size = 64, 64 << 10
		var queued atomic.Int64
		sendDone := make(chan error, 1)
		go func() {
			for range msgs {
				if err := cs.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, size)}}); err != nil {
					sendDone <- err
					return
				}
				queued.Add(1)
			}
			sendDone <- nil
		}()
		waitFor(t, "the client to start sending", func() bool { return queued.Load() >= 2 })
		for i := range 20 {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := client.UnaryCall(cctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("beside")}})
			ccancel()
			if err != nil {
				t.Fatalf("call %d beside the held stream: %v", i, err)
			}
		}
		if got := queued.Load(); got >= msgs/2 {
			t.Fatalf("the client could send %d of %d messages nobody read: flow control did not hold it back", got, msgs)
		}
		close(b.hold)
		if err := <-sendDone; err != nil {
			t.Fatal(err)
		}
		resp, err := cs.CloseAndRecv()
		if err != nil || resp.GetAggregatedPayloadSize() != msgs*size {
			t.Fatalf("held stream: %v, %v; want %d bytes", resp, err, msgs*size)
		}
	})
}
