package h2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
)

// stallResumeFixed: a client-streaming call whose server reads nothing until the client has filled the
// proxy's window (1–3 MB queued) breaks today's weft-proxy (B1 and B2), where direct (B0) is fine: once
// the server reads, it receives nothing more and the call hangs until its deadline; and, depending on
// timing, the stalled stream holds up the other calls on the same client connection (their DATA waits
// for the connection's window). While false, "a slow server holds back only its own stream" logs those
// two instead of failing; set it to true once the proxy passes (the HTTP/2 frame relay of issue 17
// must).
const stallResumeFixed = true

// TestGRPCMatrix makes real grpc-go calls to a real grpc-go server through one sidecar (B1: client →
// client-0's weft-proxy → the app of a pod without a sidecar) and through two (B2: client → client-0's
// weft-proxy ═ mTLS HTTP/2 ═► server-0's weft-proxy → its app), and checks what an application relies
// on: every kind of call, cancellation and deadlines as the server sees them, 4 MB messages both ways,
// 100 concurrent streams on one connection, metadata, trailers and failed statuses with their details.
func TestGRPCMatrix(t *testing.T) {
	m := startMesh(t)
	for _, path := range []struct {
		name, via, authority string
		app                  *apps
	}{
		{"B0", m.plainGRPC, m.grpcPlain, m.plainApp}, // direct: the control, that each case holds without a proxy
		{"B1", m.client.httpProxy, m.grpcPlain, m.plainApp},
		{"B2", m.client.httpProxy, m.grpcMeshed, m.serverApp},
	} {
		t.Run(path.name, func(t *testing.T) {
			inboundBefore := m.server.inboundMTLSRequests(t)
			if path.name == "B2" {
				t.Cleanup(func() {
					// B2 went over mutual TLS: server-0's sidecar counted the calls inbound with
					// client-0's identity. (B1's app has no sidecar: its calls cannot go around
					// client-0's, which the client dials.)
					if n := m.server.inboundMTLSRequests(t) - inboundBefore; n < 100 {
						t.Errorf("server-0's sidecar counted %v requests inbound over mTLS from %s during B2, want ≥ 100", n, clientID)
					}
				})
			}
			cc := dialVia(t, path.via, path.authority)
			c := testgrpc.NewTestServiceClient(cc)
			srv := path.app.grpc
			ctx := func(t *testing.T) context.Context {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				t.Cleanup(cancel)
				return ctx
			}

			t.Run("unary", func(t *testing.T) {
				body := []byte("hello through " + path.name)
				resp, err := c.UnaryCall(ctx(t), &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: body}})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(resp.GetPayload().GetBody(), body) {
					t.Fatalf("echo %q, want %q", resp.GetPayload().GetBody(), body)
				}
			})

			t.Run("server streaming", func(t *testing.T) {
				sizes := []int32{1, 1000, 70000, 0, 300000, 5}
				var params []*testgrpc.ResponseParameters
				for _, n := range sizes {
					params = append(params, &testgrpc.ResponseParameters{Size: n})
				}
				st, err := c.StreamingOutputCall(ctx(t), &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
				if err != nil {
					t.Fatal(err)
				}
				var got []int32
				for {
					r, err := st.Recv()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						t.Fatalf("after %d messages: %v", len(got), err)
					}
					if !filled(r.GetPayload().GetBody()) {
						t.Fatalf("message %d arrived changed", len(got))
					}
					got = append(got, int32(len(r.GetPayload().GetBody())))
				}
				if diff := cmp.Diff(sizes, got); diff != "" {
					t.Fatalf("message sizes (-sent +received):\n%s", diff)
				}
			})

			t.Run("client streaming", func(t *testing.T) {
				st, err := c.StreamingInputCall(ctx(t))
				if err != nil {
					t.Fatal(err)
				}
				total := 0
				for _, n := range []int{3, 0, 65536, 200000, 17} {
					b := make([]byte, n)
					fill(b)
					if err := st.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: b}}); err != nil {
						t.Fatal(err)
					}
					total += n
				}
				resp, err := st.CloseAndRecv()
				if err != nil {
					t.Fatal(err)
				}
				if int(resp.GetAggregatedPayloadSize()) != total {
					t.Fatalf("server counted %d bytes, sent %d", resp.GetAggregatedPayloadSize(), total)
				}
			})

			t.Run("bidi streaming", func(t *testing.T) {
				st, err := c.FullDuplexCall(ctx(t))
				if err != nil {
					t.Fatal(err)
				}
				for i := range 50 {
					msg := fmt.Appendf(nil, "ping %d", i)
					if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: msg}}); err != nil {
						t.Fatal(err)
					}
					r, err := st.Recv() // one round trip at a time: the relay must not hold a message back
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(r.GetPayload().GetBody(), msg) {
						t.Fatalf("echo %q, want %q", r.GetPayload().GetBody(), msg)
					}
				}
				if err := st.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if _, err := st.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("after CloseSend: %v, want the call to end OK", err)
				}
			})

			t.Run("cancel mid-stream", func(t *testing.T) {
				tag := path.name + "-cancel"
				cctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx(t), "x-tag", tag, "x-hold", "1"))
				st, err := c.FullDuplexCall(cctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte("one")}}); err != nil {
					t.Fatal(err)
				}
				if _, err := st.Recv(); err != nil { // the stream is open end to end
					t.Fatal(err)
				}
				cancel()
				if _, err := st.Recv(); status.Code(err) != codes.Canceled {
					t.Fatalf("client after cancel: %v, want Canceled", err)
				}
				select {
				case e := <-srv.ended(tag):
					if !errors.Is(e.err, context.Canceled) {
						t.Fatalf("the server's context ended with %v, want context.Canceled", e.err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the server's context was not cancelled within 10s of the client's cancel")
				}
			})

			t.Run("deadline", func(t *testing.T) {
				tag := path.name + "-deadline"
				const timeout = 800 * time.Millisecond
				start := time.Now()
				dctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx(t), "x-tag", tag, "x-hold", "1"), timeout)
				defer cancel()
				_, err := c.UnaryCall(dctx, &testgrpc.SimpleRequest{})
				if status.Code(err) != codes.DeadlineExceeded {
					t.Fatalf("call with a %v deadline: %v, want DeadlineExceeded", timeout, err)
				}
				select {
				case e := <-srv.ended(tag):
					if !e.hasDeadline {
						t.Fatal("the server's context had no deadline (grpc-timeout lost on the way)")
					}
					if d := e.deadline.Sub(start); d <= 0 || d > timeout+time.Second {
						t.Fatalf("the server's deadline was %v after the call started, want about %v", d, timeout)
					}
					if e.err == nil {
						t.Fatal("the server's context did not end")
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the server's context did not end within 10s of the deadline")
				}
			})

			t.Run("4 MB both ways", func(t *testing.T) {
				const size = 4 << 20
				big := make([]byte, size)
				fill(big)
				resp, err := c.UnaryCall(ctx(t), &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: big}})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(resp.GetPayload().GetBody(), big) {
					t.Fatalf("4 MB echo came back changed (%d bytes)", len(resp.GetPayload().GetBody()))
				}
				st, err := c.FullDuplexCall(ctx(t))
				if err != nil {
					t.Fatal(err)
				}
				for range 3 {
					if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: big},
						ResponseParameters: []*testgrpc.ResponseParameters{{Size: size}}}); err != nil {
						t.Fatal(err)
					}
					r, err := st.Recv()
					if err != nil {
						t.Fatal(err)
					}
					if len(r.GetPayload().GetBody()) != size || !filled(r.GetPayload().GetBody()) {
						t.Fatalf("a 4 MB stream message came back changed (%d bytes)", len(r.GetPayload().GetBody()))
					}
				}
				if err := st.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if _, err := st.Recv(); !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
			})

			t.Run("100 concurrent streams on one connection", func(t *testing.T) {
				const n = 100
				before := srv.maxOpen.Load()
				srv.maxOpen.Store(0)
				defer srv.maxOpen.Store(max(before, srv.maxOpen.Load()))
				cctx := ctx(t)
				streams := make([]testgrpc.TestService_FullDuplexCallClient, n)
				for i := range streams {
					st, err := c.FullDuplexCall(cctx)
					if err != nil {
						t.Fatalf("stream %d: %v", i, err)
					}
					// Each stream's first round trip before the next opens: all n are open at once.
					if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: fmt.Appendf(nil, "s%d", i)}}); err != nil {
						t.Fatalf("stream %d: %v", i, err)
					}
					if _, err := st.Recv(); err != nil {
						t.Fatalf("stream %d: %v", i, err)
					}
					streams[i] = st
				}
				if got := srv.maxOpen.Load(); got < n {
					t.Fatalf("the server saw at most %d streams open at once, want %d", got, n)
				}
				var wg sync.WaitGroup
				errs := make(chan error, n)
				for i, st := range streams {
					wg.Go(func() {
						for j := range 5 {
							msg := fmt.Appendf(nil, "s%d m%d", i, j)
							if err := st.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: msg}}); err != nil {
								errs <- err
								return
							}
							r, err := st.Recv()
							if err != nil {
								errs <- err
								return
							}
							if !bytes.Equal(r.GetPayload().GetBody(), msg) {
								errs <- fmt.Errorf("stream %d: echo %q, want %q (streams crossed)", i, r.GetPayload().GetBody(), msg)
								return
							}
						}
						if err := st.CloseSend(); err != nil {
							errs <- err
							return
						}
						if _, err := st.Recv(); !errors.Is(err, io.EOF) {
							errs <- fmt.Errorf("stream %d end: %v", i, err)
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
			})

			t.Run("a slow reader holds back only its own stream", func(t *testing.T) {
				// Stream A: the server sends 64 MB that the client does not read. Flow control must
				// stop the server (the proxies buffer a window's worth, not the lot) while stream B
				// on the same connection goes on; then A is read to the end, intact.
				const msgs, size = 1000, 64 << 10
				tag := path.name + "-slow"
				var params []*testgrpc.ResponseParameters
				for range msgs {
					params = append(params, &testgrpc.ResponseParameters{Size: size})
				}
				proxies := map[string][]*proxyProc{"B1": {m.client}, "B2": {m.client, m.server}}[path.name]
				var rssBefore []int64
				for _, p := range proxies {
					rssBefore = append(rssBefore, p.rssKB(t))
				}
				actx := metadata.AppendToOutgoingContext(ctx(t), "x-tag", tag)
				a, err := c.StreamingOutputCall(actx, &testgrpc.StreamingOutputCallRequest{ResponseParameters: params})
				if err != nil {
					t.Fatal(err)
				}
				sent := srv.sentCount(tag)
				// The server stops when the windows between it and the unread client are full: wait
				// until its count holds still.
				last, still := int64(-1), 0
				waitFor(t, "the server of the unread stream to be held back", 30*time.Second, func() error {
					n := sent.Load()
					if n == last && n > 0 {
						still++
					} else {
						still = 0
					}
					last = n
					if n >= msgs {
						return nil // it got everything out: the check below fails it
					}
					if still < 10 { // half a second without progress
						return fmt.Errorf("%d messages sent so far", n)
					}
					return nil
				})
				held := sent.Load()
				t.Logf("the server was held back after %d of %d messages (%d MB)", held, msgs, held*size>>20)
				if held >= msgs {
					t.Fatalf("the server sent all %d MB to a client that read nothing: no flow control end to end", msgs*size>>20)
				}
				for i, p := range proxies {
					if grew := p.rssKB(t) - rssBefore[i]; grew > maxRSSGrowthKB {
						t.Errorf("%s's VmRSS grew by %d KiB holding an unread stream", p.name, grew)
					}
				}
				b, err := c.FullDuplexCall(ctx(t))
				if err != nil {
					t.Fatal(err)
				}
				for i := range 20 {
					msg := fmt.Appendf(nil, "beside a stalled stream %d", i)
					if err := b.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: msg}}); err != nil {
						t.Fatal(err)
					}
					if r, err := b.Recv(); err != nil || !bytes.Equal(r.GetPayload().GetBody(), msg) {
						t.Fatalf("stream B beside the stalled one: %v", err)
					}
				}
				if err := b.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if sent.Load() >= msgs {
					t.Fatalf("the unread stream's server got all its data out meanwhile")
				}
				for i := range msgs {
					r, err := a.Recv()
					if err != nil {
						t.Fatalf("reading the held stream, message %d: %v", i, err)
					}
					if len(r.GetPayload().GetBody()) != size || !filled(r.GetPayload().GetBody()) {
						t.Fatalf("message %d of the held stream arrived changed", i)
					}
				}
				if _, err := a.Recv(); !errors.Is(err, io.EOF) {
					t.Fatalf("the held stream's end: %v", err)
				}
			})

			t.Run("a slow server holds back only its own stream", func(t *testing.T) {
				// The other direction: the client sends 64 MB to a server that reads nothing yet.
				// The client's sends must block (flow control through every hop) while another call
				// on the connection goes on; released, the server gets every byte.
				const msgs, size = 1000, 64 << 10
				tag := path.name + "-stall"
				proxies := map[string][]*proxyProc{"B1": {m.client}, "B2": {m.client, m.server}}[path.name]
				var rssBefore []int64
				for _, p := range proxies {
					rssBefore = append(rssBefore, p.rssKB(t))
				}
				sctx, scancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer scancel()
				st, err := c.StreamingInputCall(metadata.AppendToOutgoingContext(sctx, "x-tag", tag, "x-stall", "1"))
				if err != nil {
					t.Fatal(err)
				}
				var sent atomic.Int64
				sendErr := make(chan error, 1)
				go func() {
					body := make([]byte, size)
					fill(body)
					for range msgs {
						if err := st.Send(&testgrpc.StreamingInputCallRequest{Payload: &testgrpc.Payload{Body: body}}); err != nil {
							sendErr <- err
							return
						}
						sent.Add(1)
					}
					sendErr <- nil
				}()
				last, still := int64(-1), 0
				waitFor(t, "the client's sends to be held back", 30*time.Second, func() error {
					n := sent.Load()
					if n == last && n > 0 {
						still++
					} else {
						still = 0
					}
					last = n
					if n >= msgs || still >= 10 { // everything sent (fails below), or half a second still
						return nil
					}
					return fmt.Errorf("%d messages sent so far", n)
				})
				held := sent.Load()
				t.Logf("the client was held back after %d of %d messages (%d MB)", held, msgs, held*size>>20)
				if held >= msgs {
					t.Fatalf("the client sent all %d MB to a server that read nothing: no flow control end to end", msgs*size>>20)
				}
				for i, p := range proxies {
					if grew := p.rssKB(t) - rssBefore[i]; grew > maxRSSGrowthKB {
						t.Errorf("%s's VmRSS grew by %d KiB holding an unread request stream", p.name, grew)
					}
				}
				sawBug := false
				known := func(msg string) { // see stallResumeFixed
					if stallResumeFixed || path.name == "B0" {
						t.Fatal(msg)
					}
					sawBug = true
					t.Logf("KNOWN BUG (stallResumeFixed = false): %s", msg)
				}
				bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err = c.UnaryCall(bctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("beside")}})
				bcancel()
				if err != nil {
					known(fmt.Sprintf("a call beside the stalled stream, on the same connection: %v", err))
				}
				close(srv.gate(tag))
				// Released, the stream must flow again. Through today's weft-proxy it does not (a known
				// bug, see stallResumeFixed); direct (B0) it does.
				var resumeErr error
				select {
				case resumeErr = <-sendErr:
				case <-time.After(15 * time.Second):
					resumeErr = errors.New("no progress within 15s")
				}
				if resumeErr != nil {
					if errors.Is(resumeErr, io.EOF) { // the stream ended: its status says why
						_, resumeErr = st.CloseAndRecv()
					}
					known(fmt.Sprintf("the stream did not resume once the server read: %v (the client had sent %d messages, the server received %d after its release)",
						resumeErr, sent.Load(), srv.sentCount(tag+"/received").Load()))
					scancel()
					return
				}
				if !stallResumeFixed && path.name != "B0" && !sawBug {
					t.Logf("the call beside went through and the stream resumed: if that holds run after run, set stallResumeFixed = true")
				}
				resp, err := st.CloseAndRecv()
				if err != nil {
					t.Fatal(err)
				}
				if got := int64(resp.GetAggregatedPayloadSize()); got != msgs*size {
					t.Fatalf("the server received %d bytes, want %d", got, msgs*size)
				}
			})

			t.Run("metadata and trailers", func(t *testing.T) {
				var header, trailer metadata.MD
				mctx := metadata.AppendToOutgoingContext(ctx(t), "x-echo", "v-"+path.name)
				if _, err := c.UnaryCall(mctx, &testgrpc.SimpleRequest{}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
					t.Fatal(err)
				}
				if got := header.Get("x-echo"); len(got) != 1 || got[0] != "v-"+path.name {
					t.Fatalf("header metadata x-echo = %q, want [v-%s]", got, path.name)
				}
				if got := trailer.Get("x-echo-trailer"); len(got) != 1 || got[0] != "v-"+path.name {
					t.Fatalf("trailer x-echo-trailer = %q, want [v-%s]", got, path.name)
				}
				// Streams carry trailers too.
				st, err := c.FullDuplexCall(metadata.AppendToOutgoingContext(ctx(t), "x-echo", "s-"+path.name))
				if err != nil {
					t.Fatal(err)
				}
				if err := st.CloseSend(); err != nil {
					t.Fatal(err)
				}
				if _, err := st.Recv(); !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
				if got := st.Trailer().Get("x-echo-trailer"); len(got) != 1 || got[0] != "s-"+path.name {
					t.Fatalf("stream trailer x-echo-trailer = %q", got)
				}
			})

			t.Run("failed statuses keep their details", func(t *testing.T) {
				for _, code := range []codes.Code{codes.NotFound, codes.PermissionDenied, codes.ResourceExhausted, codes.FailedPrecondition, codes.Internal, codes.Unavailable} {
					fctx := metadata.AppendToOutgoingContext(ctx(t), "x-code", fmt.Sprint(int(code)))
					_, err := c.UnaryCall(fctx, &testgrpc.SimpleRequest{})
					st := status.Convert(err)
					if st.Code() != code || st.Message() != "asked for "+code.String() {
						t.Fatalf("status %v %q, want %v %q", st.Code(), st.Message(), code, "asked for "+code.String())
					}
					want := []any{&errdetails.ErrorInfo{Reason: "ASKED", Domain: "h2.test", Metadata: map[string]string{"code": fmt.Sprint(int(code))}}}
					if diff := cmp.Diff(want, st.Details(), protocmp.Transform()); diff != "" {
						t.Fatalf("%v's details (-want +got):\n%s", code, diff)
					}
					// The same on a stream, where the status arrives in trailers after messages.
					sst, err := c.StreamingOutputCall(fctx, &testgrpc.StreamingOutputCallRequest{})
					if err != nil {
						t.Fatal(err)
					}
					_, err = sst.Recv()
					if s := status.Convert(err); s.Code() != code || len(s.Details()) != 1 {
						t.Fatalf("stream status %v with %d details, want %v with 1", s.Code(), len(s.Details()), code)
					}
				}
			})
		})
	}
}
