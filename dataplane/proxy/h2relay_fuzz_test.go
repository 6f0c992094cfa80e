package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weftmesh/weft/dataplane/config"
)

// fuzzUpstream is an HTTP/2 "server" for FuzzH2Relay: on each connection it writes the bytes the
// current input gives it and checks that what the relay writes is a client preface followed by
// well-formed frames (header blocks that decode with the relay's own HPACK state).
type fuzzUpstream struct {
	l     net.Listener
	reply atomic.Pointer[[]byte]
	open  atomic.Int64
	mu    sync.Mutex
	err   error
}

func (u *fuzzUpstream) serve() {
	for {
		c, err := u.l.Accept()
		if err != nil {
			return
		}
		u.open.Add(1)
		go func() {
			defer u.open.Add(-1)
			defer c.Close()
			reply := *u.reply.Load()
			go func() { _, _ = c.Write(reply) }()
			preface := make([]byte, len(clientPreface))
			if _, err := io.ReadFull(c, preface); err != nil {
				return // the relay closed before writing it (a session that ended at once)
			}
			if string(preface) != clientPreface {
				u.fail(errors.New("upstream: the relay's preface is " + string(preface)))
				return
			}
			u.fail(checkFrames("upstream", c))
		}()
	}
}

func (u *fuzzUpstream) fail(err error) {
	if err == nil {
		return
	}
	u.mu.Lock()
	if u.err == nil {
		u.err = err
	}
	u.mu.Unlock()
}

// checkFrames reads frames until the connection ends; a frame the relay wrote that does not parse
// is an error (the peer's settings may have allowed larger frames and tables: those limits are open).
func checkFrames(side string, r io.Reader) error {
	fr := http2.NewFramer(nil, r)
	fr.SetMaxReadFrameSize(1<<24 - 1)
	dec := hpack.NewDecoder(4096, nil)
	dec.SetAllowedMaxDynamicTableSize(math.MaxUint32)
	fr.ReadMetaHeaders = dec
	for {
		_, err := fr.ReadFrame()
		if err == nil {
			continue
		}
		var se http2.StreamError
		if errors.As(err, &se) {
			return errors.New(side + ": the relay wrote a bad frame: " + err.Error())
		}
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return errors.New(side + ": the relay wrote a bad frame: " + err.Error())
		}
		return nil // EOF, closed, or cut in the middle of a frame by the close
	}
}

type fuzzRelay struct {
	p    *Proxy
	up   *fuzzUpstream
	info *connInfo
}

// setupFuzzRelay starts a proxy whose inbound chain routes every path to a fuzzUpstream (over h2c),
// "/timeout" with a 5 ms route timeout; both stop when the fuzz test ends.
func setupFuzzRelay(f *testing.F) *fuzzRelay { return setupRelayForTest(f) }

func setupRelayForTest(f testing.TB) *fuzzRelay {
	var r fuzzRelay
	{
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.Fatal(err)
		}
		up := &fuzzUpstream{l: l}
		empty := []byte{}
		up.reply.Store(&empty)
		go up.serve()
		p := New(Options{Logger: slog.New(slog.DiscardHandler), H2Relay: true})
		name := "inbound|8080||"
		cla := &config.ClusterLoadAssignment{ClusterName: name, Localities: []config.Locality{{
			Endpoints: []config.Endpoint{{Address: netip.MustParseAddrPort(l.Addr().String())}}}}}
		p.Update(&config.Snapshot{
			Complete: true,
			Listeners: map[string]*config.Listener{"inbound": {Name: "inbound", Chains: []config.FilterChain{{
				Name:  name + "plaintext",
				Match: config.ChainMatch{DestinationPort: 8080},
				HTTP: &config.HTTPConnectionManager{Inline: &config.RouteConfig{Name: "inbound", VirtualHosts: []config.VirtualHost{{
					Name: "app", Domains: []string{"*"}, Routes: []config.Route{
						{Kind: config.PathPrefix, Prefix: "/timeout", Cluster: name, Timeout: 5 * time.Millisecond},
						{Kind: config.PathPrefix, Prefix: "/", Cluster: name},
					},
				}}}},
			}}}},
			Clusters: map[string]*config.Cluster{name: {Name: name, Kind: config.ClusterStatic, ConnectTimeout: time.Second, HTTP2: true, Static: cla}},
		})
		r.p, r.up = p, up
		r.info = &connInfo{direction: "inbound", chain: p.rt.Load().listeners["inbound"].chains[0]}
		f.Cleanup(func() {
			l.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = p.Shutdown(ctx)
			cancel()
		})
	}
	return &r
}

// h2Seed builds frames for the seed corpus.
type h2Seed struct {
	b   []byte
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newH2Seed() *h2Seed {
	s := &h2Seed{}
	s.enc = hpack.NewEncoder(&s.hb)
	return s
}

func (s *h2Seed) frame(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) *h2Seed {
	s.b = appendFrameHdr(s.b, len(payload), typ, flags, id)
	s.b = append(s.b, payload...)
	return s
}

func (s *h2Seed) headers(id uint32, flags http2.Flags, kv ...string) *h2Seed {
	s.hb.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		_ = s.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return s.frame(http2.FrameHeaders, flags|http2.FlagHeadersEndHeaders, id, bytes.Clone(s.hb.Bytes()))
}

func (s *h2Seed) settings(kv ...uint32) *h2Seed {
	var p []byte
	for i := 0; i+1 < len(kv); i += 2 {
		p = append(p, byte(kv[i]>>8), byte(kv[i]), byte(kv[i+1]>>24), byte(kv[i+1]>>16), byte(kv[i+1]>>8), byte(kv[i+1]))
	}
	return s.frame(http2.FrameSettings, 0, 0, p)
}

// FuzzH2Relay drives the relay (h2relay.go) with arbitrary bytes from the client after its preface
// and arbitrary bytes from the upstream. Whatever they are, the relay must not panic, must end the
// session once the client hangs up (no deadlock, its goroutines gone, its upstream connections
// closed), and must write only well-formed HTTP/2 to both sides (frames that parse, header blocks
// that decode with the HPACK state the relay built).
func FuzzH2Relay(f *testing.F) {
	req := func(path string) []string {
		return []string{":method", "POST", ":scheme", "http", ":authority", "app:8080", ":path", path, "content-type", "application/grpc", "te", "trailers"}
	}
	resp := newH2Seed().settings().
		headers(1, 0, ":status", "200", "content-type", "application/grpc").
		frame(http2.FrameData, 0, 1, []byte{0, 0, 0, 0, 2, 'o', 'k'}).
		headers(1, http2.FlagHeadersEndStream, "grpc-status", "0").b
	unary := newH2Seed().settings(uint32(http2.SettingInitialWindowSize), 1<<20).
		headers(1, 0, req("/svc/Call")...).
		frame(http2.FrameData, http2.FlagDataEndStream, 1, []byte{0, 0, 0, 0, 2, 'h', 'i'}).b
	f.Add(unary, resp)
	f.Add(unary, []byte{})
	f.Add(newH2Seed().settings().headers(1, http2.FlagHeadersEndStream, ":method", "GET", ":scheme", "http", ":authority", "app", ":path", "/").
		frame(http2.FrameRSTStream, 0, 1, []byte{0, 0, 0, 8}).
		headers(3, 0, req("/timeout")...).
		frame(http2.FrameWindowUpdate, 0, 0, []byte{0, 1, 0, 0}).
		frame(http2.FramePing, 0, 0, make([]byte, 8)).b, resp)
	f.Add(newH2Seed().settings(uint32(http2.SettingMaxFrameSize), 1<<20, uint32(http2.SettingHeaderTableSize), 0).
		headers(1, 0, req("/")...).
		frame(http2.FrameData, 0, 1, make([]byte, 16384)).
		frame(http2.FrameContinuation, 0, 1, []byte{0x82}).
		frame(http2.FrameGoAway, 0, 0, make([]byte, 8)).b,
		newH2Seed().settings(uint32(http2.SettingInitialWindowSize), 0).frame(http2.FrameGoAway, 0, 0, make([]byte, 8)).b)
	f.Add(newH2Seed().settings().headers(1, 0, req("/")...).frame(http2.FrameData, http2.FlagDataPadded, 1, []byte{3, 'a', 0, 0, 0}).b,
		newH2Seed().settings().frame(http2.FrameRSTStream, 0, 1, []byte{0, 0, 0, 7}).
			frame(http2.FrameWindowUpdate, 0, 1, []byte{0x7f, 0xff, 0xff, 0xff}).b)
	r := setupFuzzRelay(f)
	f.Fuzz(func(t *testing.T, client, upstream []byte) {
		r.up.reply.Store(&upstream)
		r.up.mu.Lock()
		r.up.err = nil
		r.up.mu.Unlock()
		cEnd, pEnd := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.p.serveH2Relay(pEnd, r.info)
		}()
		checked := make(chan error, 1)
		go func() { checked <- checkFrames("client", cEnd) }()
		_ = cEnd.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = cEnd.Write([]byte(clientPreface))
		_, _ = cEnd.Write(client)
		// Give the session's upstream streams a moment of life: the client ends when the relay has
		// answered, or soon after.
		select {
		case <-done:
		case <-time.After(20 * time.Millisecond):
		}
		cEnd.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the session did not end after the client closed")
		}
		if err := <-checked; err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for r.up.open.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatal("an upstream connection outlived its session")
			}
			time.Sleep(time.Millisecond)
		}
		r.up.mu.Lock()
		err := r.up.err
		r.up.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestH2RelayRapidReset: a client that opens streams and resets each before its response
// (CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM once it passes the relay's limit, and the session
// ends.
func TestH2RelayRapidReset(t *testing.T) {
	r := setupRelayForTest(t)
	cEnd, pEnd := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); r.p.serveH2Relay(pEnd, r.info) }()
	defer cEnd.Close()
	got := make(chan http2.ErrCode, 1)
	go func() {
		fr := http2.NewFramer(nil, cEnd)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				close(got)
				return
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				got <- ga.ErrCode
				_, _ = io.Copy(io.Discard, cEnd)
				return
			}
		}
	}()
	seed := newH2Seed().settings()
	for i := range relayResetLimit + 10 {
		id := uint32(2*i + 1)
		seed.headers(id, http2.FlagHeadersEndStream, ":method", "GET", ":scheme", "http", ":authority", "app", ":path", "/").
			frame(http2.FrameRSTStream, 0, id, []byte{0, 0, 0, 8})
	}
	go func() {
		_, _ = cEnd.Write([]byte(clientPreface))
		_, _ = cEnd.Write(seed.b)
	}()
	select {
	case code := <-got:
		if code != http2.ErrCodeEnhanceYourCalm {
			t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no GOAWAY after a rapid reset flood")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
}
