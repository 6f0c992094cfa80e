package h2

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// maxRSSGrowthKB bounds how much a proxy's resident memory may grow over one attack: generous (the
// sidecar idles at ~10 MB), so that only memory that follows the attacker's input fails it.
const maxRSSGrowthKB = 48 << 10

// side is one of the proxy's HTTP/2 listeners under attack.
type side struct {
	name      string
	proxy     *proxyProc
	dial      func(t testing.TB) *h2client
	authority string // what the attacking requests address
	app       *apps  // where the attacking requests would land
	webURL    string // the same app for the bystander, through client-0's explicit proxy
}

func sides(m *mesh) []side {
	return []side{
		{"outbound h2c", m.client, func(t testing.TB) *h2client { return dialH2C(t, m.client.httpProxy) }, m.webPlain, m.plainApp,
			"http://" + m.webPlain + "/bystander"},
		{"inbound mTLS", m.server, func(t testing.TB) *h2client { return dialH2TLS(t, m.inboundWeb, m.clientTLS) }, "web", m.serverApp,
			fmt.Sprintf("http://web.%s.svc.cluster.local:%d/bystander", namespace, webPort)},
	}
}

// bystander makes gRPC calls through both sidecars (its own connections to each listener under
// attack: client-0's explicit proxy, and client-0's mTLS connection to server-0's inbound listener),
// and HTTP requests to the very app under attack (webURL, through client-0's explicit proxy), until
// stop, and counts the calls that succeeded and failed.
type bystander struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stop       context.CancelFunc
	done       sync.WaitGroup
}

func startBystander(t *testing.T, m *mesh, webURL string) *bystander {
	cc := m.dialGRPC(t, m.grpcMeshed)
	c := testgrpc.NewTestServiceClient(cc)
	proxyURL := &url.URL{Scheme: "http", Host: m.client.httpProxy}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL)}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	b := &bystander{stop: cancel}
	loop := func(call func(ctx context.Context) error) {
		for ctx.Err() == nil {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			err := call(cctx)
			ccancel()
			switch {
			case err == nil:
				b.ok.Add(1)
			case ctx.Err() == nil:
				b.failed.Add(1)
				b.firstErr.CompareAndSwap(nil, err.Error()) // one type: Value panics on mixed ones
			}
		}
	}
	b.done.Go(func() {
		loop(func(ctx context.Context) error {
			_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("bystander")}})
			return err
		})
	})
	b.done.Go(func() {
		loop(func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, webURL, nil)
			if err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET %s: %s %q", webURL, resp.Status, body)
			}
			return nil
		})
	})
	return b
}

// check stops the bystander and fails the test unless every call succeeded.
func (b *bystander) check(t *testing.T) {
	t.Helper()
	b.stop()
	b.done.Wait()
	t.Logf("bystander: %d calls succeeded, %d failed during the attack", b.ok.Load(), b.failed.Load())
	if b.failed.Load() > 0 {
		t.Errorf("another connection's calls failed during the attack: %d (first: %v)", b.failed.Load(), b.firstErr.Load())
	}
	if b.ok.Load() == 0 {
		t.Error("another connection made no call during the attack")
	}
}

// attack runs one attack on each side with a bystander beside it, and checks the proxy's memory and
// that it still serves afterwards.
func attack(t *testing.T, m *mesh, f func(t *testing.T, s side)) {
	for _, s := range sides(m) {
		t.Run(s.name, func(t *testing.T) {
			before := s.proxy.rssKB(t)
			b := startBystander(t, m, s.webURL)
			f(t, s)
			// The bystander goes on for a moment after the attack, as its aftermath (a connection the
			// proxy is tearing down) is part of it.
			waitFor(t, "bystander calls after the attack", 10*time.Second, func() error {
				if n := b.ok.Load(); n < 3 {
					return fmt.Errorf("%d calls so far", n)
				}
				return nil
			})
			b.check(t)
			s.proxy.alive(t)
			after := s.proxy.rssKB(t)
			t.Logf("%s's VmRSS %d KiB before, %d KiB after", s.proxy.name, before, after)
			if after-before > maxRSSGrowthKB {
				t.Errorf("%s's VmRSS grew by %d KiB over the attack (bound %d KiB)", s.proxy.name, after-before, maxRSSGrowthKB)
			}
			// A fresh connection is served.
			h := s.dial(t)
			id := h.request(get(s.authority, "/after"))
			if ev, seen, ok := h.await(30*time.Second, func(ev frameEvent) bool { return ev.typ == http2.FrameHeaders && ev.stream == id }); !ok || ev.status != "200" {
				t.Errorf("a request on a new connection after the attack: %s", summarize(seen))
			}
		})
	}
}

// wantConnError waits for GOAWAY with one of codes (the connection error RFC 9113 prescribes), and
// then for the connection to close.
func wantConnError(t *testing.T, h *h2client, what string, codes ...http2.ErrCode) {
	t.Helper()
	ev, seen, ok := h.await(10*time.Second, func(ev frameEvent) bool { return ev.typ == http2.FrameGoAway })
	if !ok {
		t.Fatalf("%s: no GOAWAY within 10s; the server sent: %s", what, summarize(seen))
	}
	good := false
	for _, c := range codes {
		good = good || ev.code == c
	}
	if !good {
		t.Fatalf("%s: %v, want GOAWAY with one of %v", what, ev, codes)
	}
	t.Logf("%s: %v", what, ev)
	if _, seen, ok := h.await(10*time.Second, func(ev frameEvent) bool { return ev.closed != nil }); !ok {
		t.Fatalf("%s: the connection stayed open after GOAWAY %v; then: %s", what, ev.code, summarize(seen))
	}
}

// TestBadInput attacks the proxy's HTTP/2 listeners, the outbound h2c one (client-0's explicit proxy)
// and the inbound mTLS one (server-0's, with a mesh client certificate), each with what RFC 9113 and
// the HTTP/2 CVEs of 2023-2024 describe. Each attack must get the answer the RFC prescribes, leave the
// proxy's memory bounded, and leave the calls of another connection through the same proxy unharmed.
func TestBadInput(t *testing.T) {
	m := startMesh(t)

	t.Run("malformed frames", func(t *testing.T) {
		attack(t, m, func(t *testing.T, s side) {
			// RFC 9113 §6.5: a SETTINGS frame whose length is not a multiple of 6 is a connection
			// error FRAME_SIZE_ERROR.
			h := s.dial(t)
			_ = h.write(func() error { return h.fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 3, 0, 0, 1}) })
			wantConnError(t, h, "SETTINGS of 5 bytes", http2.ErrCodeFrameSize)
			// §6.9: a WINDOW_UPDATE of 0 on the connection is a connection error PROTOCOL_ERROR.
			h = s.dial(t)
			_ = h.write(func() error { return h.fr.WriteRawFrame(http2.FrameWindowUpdate, 0, 0, []byte{0, 0, 0, 0}) })
			wantConnError(t, h, "WINDOW_UPDATE of 0 on the connection", http2.ErrCodeProtocol)
			// §4.3: a header block that does not decode (an index beyond the tables) is a connection
			// error COMPRESSION_ERROR.
			h = s.dial(t)
			_ = h.write(func() error {
				return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.newStream(), BlockFragment: []byte{0xff, 0x80, 0x7f}, EndStream: true, EndHeaders: true})
			})
			wantConnError(t, h, "an undecodable header block", http2.ErrCodeCompression)
			// §6.1: DATA on stream 0 is a connection error PROTOCOL_ERROR.
			h = s.dial(t)
			_ = h.write(func() error { return h.fr.WriteData(0, false, []byte("x")) })
			wantConnError(t, h, "DATA on stream 0", http2.ErrCodeProtocol)
		})
	})

	t.Run("header block over the limit", func(t *testing.T) {
		// RFC 9113 §8.2.2 / §10.5.1: a request whose field section is over the advertised
		// SETTINGS_MAX_HEADER_LIST_SIZE may be answered 431 (RFC 6585), reset, or treated as a
		// connection error; it must not be forwarded. A single field longer than the decoder takes
		// is a decoding error, which §4.3 makes a connection error COMPRESSION_ERROR.
		for _, shape := range []struct {
			name   string
			fields func(limit uint32) []hpack.HeaderField
		}{
			{"many fields", func(limit uint32) []hpack.HeaderField {
				var fs []hpack.HeaderField
				for i := range int(2*limit) / 1000 {
					fs = append(fs, hpack.HeaderField{Name: fmt.Sprintf("x-big-%d", i), Value: strings.Repeat("b", 960)})
				}
				return append(fs, hpack.HeaderField{Name: "x-big", Value: "1"})
			}},
			{"one field", func(limit uint32) []hpack.HeaderField {
				return []hpack.HeaderField{{Name: "x-big", Value: strings.Repeat("a", int(2*limit))}}
			}},
		} {
			t.Run(shape.name, func(t *testing.T) {
				attack(t, m, func(t *testing.T, s side) {
					h := s.dial(t)
					limit, advertised := h.settings[http2.SettingMaxHeaderListSize]
					if !advertised {
						limit = 64 << 10 // nothing advertised: a limit is still expected
					}
					t.Logf("the server advertises SETTINGS_MAX_HEADER_LIST_SIZE %d (%v)", limit, advertised)
					bigBefore := s.app.webBig.Load()
					block := h.headerBlock(get(s.authority, "/big", shape.fields(limit)...)...)
					id := h.newStream()
					_ = h.write(func() error { // HEADERS then CONTINUATIONs of 16 KB
						const chunk = 16 << 10
						first := block[:min(chunk, len(block))]
						rest := block[len(first):]
						if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(rest) == 0}); err != nil {
							return err
						}
						for len(rest) > 0 {
							n := min(chunk, len(rest))
							if err := h.fr.WriteContinuation(id, n == len(rest), rest[:n]); err != nil {
								return err
							}
							rest = rest[n:]
						}
						return nil
					})
					ev, seen, ok := h.await(10*time.Second, func(ev frameEvent) bool {
						return ev.typ == http2.FrameGoAway || (ev.stream == id && (ev.typ == http2.FrameRSTStream || ev.typ == http2.FrameHeaders))
					})
					if !ok {
						t.Fatalf("no answer to a %d-byte header block within 10s: %s", len(block), summarize(seen))
					}
					t.Logf("a %d-byte header block (limit %d): %v", len(block), limit, ev)
					switch {
					case ev.typ == http2.FrameHeaders && ev.status == "431":
					case ev.typ == http2.FrameRSTStream && (ev.code == http2.ErrCodeProtocol || ev.code == http2.ErrCodeRefusedStream || ev.code == http2.ErrCodeEnhanceYourCalm):
					case ev.typ == http2.FrameGoAway && (ev.code == http2.ErrCodeProtocol || ev.code == http2.ErrCodeEnhanceYourCalm || ev.code == http2.ErrCodeCompression):
					default:
						t.Fatalf("a header block over the limit got %v; want 431, RST_STREAM (PROTOCOL_ERROR, REFUSED_STREAM or ENHANCE_YOUR_CALM) or GOAWAY (PROTOCOL_ERROR, ENHANCE_YOUR_CALM or COMPRESSION_ERROR)", ev)
					}
					if n := s.app.webBig.Load() - bigBefore; n != 0 {
						t.Fatalf("the app received %d requests with the oversized header", n)
					}
				})
			})
		}
	})

	t.Run("rapid reset", func(t *testing.T) {
		// CVE-2023-44487: HEADERS then RST_STREAM(CANCEL) on stream after stream, never waiting.
		const streams = 20000
		attack(t, m, func(t *testing.T, s side) {
			h := s.dial(t)
			hitsBefore := s.app.webHit.Load()
			block := h.headerBlock(get(s.authority, "/reset")...) // indexed after the first: a few bytes each
			var werr error
			sent := 0
			for sent < streams && werr == nil {
				werr = h.write(func() error {
					for range 100 {
						id := h.newStream()
						if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
							return err
						}
						if err := h.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
							return err
						}
						sent++
						h.sent += int64(len(block) + 9 + 13)
					}
					return nil
				})
			}
			// Either the server stopped the flood with GOAWAY (ENHANCE_YOUR_CALM, as Go, nghttp2 and
			// Envoy do, or PROTOCOL_ERROR), or it took every reset and the connection still answers.
			var verdict string
			if werr != nil {
				verdict = fmt.Sprintf("the server closed the connection after %d streams (%v)", sent, werr)
			}
			alive, seen := h.ping(60 * time.Second)
			var goaway *frameEvent
			for i := range seen {
				if seen[i].typ == http2.FrameGoAway {
					goaway = &seen[i]
				}
			}
			switch {
			case goaway != nil:
				if goaway.code != http2.ErrCodeEnhanceYourCalm && goaway.code != http2.ErrCodeProtocol && goaway.code != http2.ErrCodeNo {
					t.Fatalf("rapid reset: %v, want GOAWAY ENHANCE_YOUR_CALM or PROTOCOL_ERROR", *goaway)
				}
				verdict = fmt.Sprintf("GOAWAY %v after %d of %d streams (client had written %d bytes)", goaway.code, sent, streams, goaway.lastSent)
			case alive:
				verdict = fmt.Sprintf("all %d streams taken, the connection still answers PING", sent)
			case werr == nil:
				t.Fatalf("rapid reset: after %d streams the connection neither answered PING within 60s nor sent GOAWAY: %s", sent, summarize(seen))
			}
			t.Logf("rapid reset of %d streams: %s; the app saw %d of them", streams, verdict, s.app.webHit.Load()-hitsBefore)
		})
	})

	t.Run("CONTINUATION flood", func(t *testing.T) {
		// CVE-2024-27316 (and CVE-2023-45288): a header block that never ends, CONTINUATION after
		// CONTINUATION. The server must cut it off with a connection error, not buffer (or decode)
		// it without end: with header data, once the block is over its limit; with empty frames
		// (nothing to buffer, but a connection held busy for ever), once their number is absurd.
		for _, shape := range []struct {
			name     string
			frag     func(h *h2client) []byte
			batch    int   // frames per write
			maxFlood int64 // bytes the client writes at most
			// mustStop: the proxy must end the block with GOAWAY. net/http's HTTP/2 server took empty
			// CONTINUATION frames without end (1.9 M of them); the relay's cap (h2relay_guard.go)
			// answers more than 512 in a row with GOAWAY ENHANCE_YOUR_CALM.
			mustStop bool
		}{
			{"header data", func(h *h2client) []byte {
				var frag []byte
				for i := range 40 { // distinct literal fields, not indexed: each costs the decoder
					frag = append(frag, h.headerBlockLiteral(fmt.Sprintf("x-flood-%d", i), strings.Repeat("v", 300))...)
				}
				return frag
			}, 1, 64 << 20, true},
			{"empty frames", func(*h2client) []byte { return nil }, 1000, 16 << 20, true},
		} {
			t.Run(shape.name, func(t *testing.T) {
				attack(t, m, func(t *testing.T, s side) {
					h := s.dial(t)
					limit := h.settings[http2.SettingMaxHeaderListSize]
					id := h.newStream()
					head := h.headerBlock(get(s.authority, "/flood")...)
					frag := shape.frag(h)
					werr := h.write(func() error {
						return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: head, EndStream: true})
					})
					frames := 0
					for werr == nil && !h.ended.Load() && h.sentBytes() < shape.maxFlood {
						werr = h.write(func() error {
							for range shape.batch {
								h.sent += int64(len(frag) + 9)
								frames++
								if err := h.fr.WriteContinuation(id, false, frag); err != nil {
									return err
								}
							}
							return nil
						})
					}
					if !shape.mustStop && werr == nil && !h.ended.Load() {
						// (No PING to see if it lives: any frame but CONTINUATION inside a header
						// block is itself a connection error.)
						t.Logf("CONTINUATION flood of %d empty frames (%d bytes, more than the sockets buffer): the proxy read them all and sent no GOAWAY", frames, h.sentBytes())
						return
					}
					ev, seen, ok := h.await(20*time.Second, func(ev frameEvent) bool { return ev.typ == http2.FrameGoAway || ev.closed != nil })
					if !ok {
						t.Fatalf("CONTINUATION flood: after %d frames (%d bytes), no GOAWAY and the connection is open: %s", frames, h.sentBytes(), summarize(seen))
					}
					if ev.typ != http2.FrameGoAway {
						t.Fatalf("CONTINUATION flood: the connection closed without GOAWAY after %d bytes (%v)", ev.lastSent, ev.closed)
					}
					if ev.code != http2.ErrCodeProtocol && ev.code != http2.ErrCodeEnhanceYourCalm && ev.code != http2.ErrCodeCompression {
						t.Fatalf("CONTINUATION flood: %v, want GOAWAY PROTOCOL_ERROR, ENHANCE_YOUR_CALM or COMPRESSION_ERROR", ev)
					}
					// What the client had written includes what the sockets buffered (megabytes on
					// loopback), so it says little about what the proxy took; the memory bound
					// (attack) does.
					t.Logf("CONTINUATION flood: %v when the client had written %d bytes in %d frames (limit %d)", ev, ev.lastSent, frames, limit)
				})
			})
		}
	})
}

// headerBlockLiteral is a literal header field without indexing (RFC 7541 §6.2.2), new name, no
// Huffman: the decoder must take every byte of it.
func (h *h2client) headerBlockLiteral(name, value string) []byte {
	b := []byte{0x00}
	b = appendHPACKInt(b, 7, uint64(len(name)))
	b = append(b, name...)
	b = appendHPACKInt(b, 7, uint64(len(value)))
	return append(b, value...)
}

func appendHPACKInt(b []byte, prefix uint, v uint64) []byte {
	max := uint64(1)<<prefix - 1
	if v < max {
		return append(b, byte(v))
	}
	b = append(b, byte(max))
	v -= max
	for v >= 128 {
		b = append(b, byte(v%128+128))
		v /= 128
	}
	return append(b, byte(v))
}

func (h *h2client) sentBytes() int64 {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return h.sent
}
