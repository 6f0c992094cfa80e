package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// relayExchange runs one client session of the relay over a pipe: it writes the preface, then the
// frames of seed and a PING, and returns what the relay answered up to that PING's ack (or its
// GOAWAY, or the end of the connection): RST_STREAM and GOAWAY frames as "RST_STREAM <id> <code>" and
// "GOAWAY <code>", and the connection-level credit it gave back (WINDOW_UPDATEs on stream 0 after the
// first, which opens the relay's window).
func relayExchange(t *testing.T, seed *h2Seed) (frames []string, credit uint64) {
	t.Helper()
	r := setupRelayForTest(t)
	cEnd, pEnd := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); r.p.serveH2Relay(pEnd, r.info) }()
	defer func() {
		cEnd.Close()
		<-done
	}()
	sync := [8]byte{'s', 'y', 'n', 'c', 's', 'y', 'n', 'c'}
	seed.frame(http2.FramePing, 0, 0, sync[:])
	go func() {
		_, _ = cEnd.Write([]byte(clientPreface))
		_, _ = cEnd.Write(seed.b)
	}()
	type result struct {
		frames []string
		credit uint64
	}
	got := make(chan result, 1)
	go func() {
		var res result
		defer func() { got <- res; _, _ = io.Copy(io.Discard, cEnd) }()
		fr := http2.NewFramer(nil, cEnd)
		opened := false
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				res.frames = append(res.frames, "EOF")
				return
			}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				res.frames = append(res.frames, fmt.Sprintf("RST_STREAM %d %v", f.StreamID, f.ErrCode))
			case *http2.GoAwayFrame:
				res.frames = append(res.frames, "GOAWAY "+f.ErrCode.String())
				return
			case *http2.WindowUpdateFrame:
				if f.StreamID == 0 && opened {
					res.credit += uint64(f.Increment)
				}
				opened = opened || f.StreamID == 0
			case *http2.PingFrame:
				if f.IsAck() && f.Data == sync {
					return
				}
			}
		}
	}()
	select {
	case res := <-got:
		return res.frames, res.credit
	case <-time.After(20 * time.Second):
		t.Fatal("the relay answered neither the PING nor with GOAWAY")
		return nil, 0
	}
}

var getRoot = []string{":method", "GET", ":scheme", "http", ":authority", "app", ":path", "/"}
var postRoot = []string{":method", "POST", ":scheme", "http", ":authority", "app", ":path", "/"}

// TestH2RelayStreamStates: frames on streams the relay keeps no state for, or in states that forbid
// them, get the answer RFC 9113 §5.1 (and RFC 7540 §5.3.1) asks for, as h2spec checks them: idle
// streams a connection error, half closed and closed ones a stream error STREAM_CLOSED, except that
// DATA the client had in flight on a stream the relay reset is dropped; and dropped DATA is still
// given back to the connection's window.
func TestH2RelayStreamStates(t *testing.T) {
	data := func(s *h2Seed, id uint32, n int) *h2Seed {
		return s.frame(http2.FrameData, 0, id, make([]byte, n))
	}
	prio := func(dep uint32) []byte {
		return []byte{byte(dep >> 24), byte(dep >> 16), byte(dep >> 8), byte(dep), 15}
	}
	for _, tc := range []struct {
		name string
		seed *h2Seed
		want []string
	}{{
		name: "WINDOW_UPDATE on an idle stream",
		seed: newH2Seed().settings().frame(http2.FrameWindowUpdate, 0, 1, []byte{0, 0, 0, 100}),
		want: []string{"GOAWAY PROTOCOL_ERROR"},
	}, {
		name: "WINDOW_UPDATE on an even stream",
		seed: newH2Seed().settings().headers(1, http2.FlagHeadersEndStream, getRoot...).frame(http2.FrameWindowUpdate, 0, 2, []byte{0, 0, 0, 100}),
		want: []string{"GOAWAY PROTOCOL_ERROR"},
	}, {
		name: "HEADERS on a half closed (remote) stream",
		seed: newH2Seed().settings().headers(1, http2.FlagHeadersEndStream, getRoot...).headers(1, http2.FlagHeadersEndStream, getRoot...),
		want: []string{"RST_STREAM 1 STREAM_CLOSED"},
	}, {
		name: "DATA after the client's RST_STREAM",
		seed: data(newH2Seed().settings().headers(1, 0, postRoot...).frame(http2.FrameRSTStream, 0, 1, []byte{0, 0, 0, 8}), 1, 4),
		want: []string{"RST_STREAM 1 STREAM_CLOSED"},
	}, {
		name: "PRIORITY that makes a stream depend on itself",
		seed: newH2Seed().settings().frame(http2.FramePriority, 0, 3, prio(3)),
		want: []string{"RST_STREAM 3 PROTOCOL_ERROR"},
	}, {
		name: "HEADERS that make a stream depend on itself",
		seed: newH2Seed().settings().frame(http2.FrameHeaders, http2.FlagHeadersEndStream|http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1,
			append(prio(1), hpackBlock(getRoot)...)),
		want: []string{"RST_STREAM 1 PROTOCOL_ERROR"},
	}, {
		name: "DATA in flight on a stream the relay reset is dropped",
		seed: data(newH2Seed().settings().frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1,
			append(prio(1), hpackBlock(postRoot)...)), 1, 100),
		want: []string{"RST_STREAM 1 PROTOCOL_ERROR"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := relayExchange(t, tc.seed)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("the relay's answer (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("dropped DATA is credited to the connection", func(t *testing.T) {
		// Stream 1 is reset by the relay (it depends on itself); the client then fills the
		// connection's whole window on it, as a client whose DATA was in flight could.
		s := newH2Seed().settings().frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersPriority, 1,
			append(prio(1), hpackBlock(postRoot)...))
		for range relayConnWindow / relayMaxFrame {
			data(s, 1, relayMaxFrame)
		}
		got, credit := relayExchange(t, s)
		if diff := cmp.Diff([]string{"RST_STREAM 1 PROTOCOL_ERROR"}, got); diff != "" {
			t.Errorf("the relay's answer (-want +got):\n%s", diff)
		}
		if credit != relayConnWindow {
			t.Errorf("the relay gave %d bytes of the connection window back for %d dropped, want all", credit, relayConnWindow)
		}
	})
}

func hpackBlock(kv []string) []byte {
	s := newH2Seed()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = s.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(s.hb.Bytes())
}

// TestH2RelayInitialWindowChange: a change of the client's SETTINGS_INITIAL_WINDOW_SIZE moves the send
// window of a stream already open by the difference, below zero too (RFC 9113 §6.9.2); the relay
// sends what a larger window allows after its SETTINGS ack, and nothing while the window is not
// positive.
func TestH2RelayInitialWindowChange(t *testing.T) {
	r := setupRelayForTest(t)
	reply := newH2Seed().settings().headers(1, 0, ":status", "200").
		frame(http2.FrameData, http2.FlagDataEndStream, 1, []byte("0123456789")).b
	r.up.reply.Store(&reply)
	cEnd, pEnd := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); r.p.serveH2Relay(pEnd, r.info) }()
	defer func() {
		cEnd.Close()
		<-done
	}()
	_ = cEnd.SetDeadline(time.Now().Add(20 * time.Second))
	writes := make(chan []byte, 16)
	go func() {
		for b := range writes {
			if _, err := cEnd.Write(b); err != nil {
				return
			}
		}
	}()
	defer close(writes)
	fr := http2.NewFramer(nil, cEnd)
	// next returns the relay's next frame but WINDOW_UPDATEs and its own SETTINGS, in short.
	next := func() string {
		t.Helper()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("reading the relay's frames: %v", err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if f.IsAck() {
					return "SETTINGS ack"
				}
			case *http2.WindowUpdateFrame:
			case *http2.DataFrame:
				return fmt.Sprintf("DATA %d %q end=%v", f.StreamID, f.Data(), f.StreamEnded())
			case *http2.PingFrame:
				return "PING ack"
			default:
				return fmt.Sprintf("%v %d", f.Header().Type, f.Header().StreamID)
			}
		}
	}
	expect := func(step string, want ...string) {
		t.Helper()
		var got []string
		for range want {
			got = append(got, next())
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("%s: the relay's frames (-want +got):\n%s", step, diff)
		}
	}
	iws := func(v uint32) []byte { return newH2Seed().settings(uint32(http2.SettingInitialWindowSize), v).b }
	wu := func(n byte) []byte { return newH2Seed().frame(http2.FrameWindowUpdate, 0, 1, []byte{0, 0, 0, n}).b }
	ping := newH2Seed().frame(http2.FramePing, 0, 0, make([]byte, 8)).b

	writes <- append([]byte(clientPreface), iws(0)...)
	writes <- newH2Seed().headers(1, http2.FlagHeadersEndStream, getRoot...).b
	expect("window 0", "SETTINGS ack", "HEADERS 1")
	writes <- ping // the response's body reached the relay by now, or comes with nothing sent
	expect("window 0", "PING ack")
	writes <- iws(1)
	expect("window 0 → 1", "SETTINGS ack", `DATA 1 "0" end=false`)
	writes <- append(append(iws(0), wu(1)...), ping...) // window 0 - 1 + 1
	expect("window 1 → 0 (-1) → 0 (WINDOW_UPDATE 1)", "SETTINGS ack", "PING ack")
	writes <- wu(2)
	expect("window 0 → 2 (WINDOW_UPDATE 2)", `DATA 1 "12" end=false`)
	writes <- iws(100)
	expect("window 0 → 100", "SETTINGS ack", `DATA 1 "3456789" end=true`)
}
