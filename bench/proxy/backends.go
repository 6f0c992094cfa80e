package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// The servers every path ends at, all on 127.0.0.1 (the "app on localhost" of a pod): HTTP with 1 KB
// responses, gRPC unary echo, and a TCP sink that measures what it receives.

const respSize = 1024

var respBody = bytes.Repeat([]byte("w"), respSize)

type backends struct {
	http, grpc, sink netip.AddrPort
	bulk             chan bulkResult // one per sink connection, when it ends
	stop             func()
}

type bulkResult struct {
	bytes       int64
	first, last time.Time
}

func startBackends() (*backends, error) {
	b := &backends{bulk: make(chan bulkResult, 16)}
	var closers []func()
	b.stop = func() {
		for _, c := range closers {
			c()
		}
	}
	listen := func() (net.Listener, netip.AddrPort, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		return l, netip.MustParseAddrPort(l.Addr().String()), nil
	}

	hl, addr, err := listen()
	if err != nil {
		return nil, err
	}
	b.http = addr
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(respBody)
	}), Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = hs.Serve(hl) }()
	closers = append(closers, func() { hs.Close() })

	gl, addr, err := listen()
	if err != nil {
		b.stop()
		return nil, err
	}
	b.grpc = addr
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, echo{})
	go func() { _ = gs.Serve(gl) }()
	closers = append(closers, gs.Stop)

	sl, addr, err := listen()
	if err != nil {
		b.stop()
		return nil, err
	}
	b.sink = addr
	go func() {
		for {
			c, err := sl.Accept()
			if err != nil {
				return
			}
			go b.drain(c)
		}
	}()
	closers = append(closers, func() { sl.Close() })
	return b, nil
}

// echoMagic opens a connection the sink echoes instead of draining (the new-connections phase): the
// sink writes back everything such a connection sends, the magic included.
var echoMagic = []byte("weft-bench-echo\n")

func (b *backends) drain(c net.Conn) {
	defer c.Close()
	var r bulkResult
	head := make([]byte, len(echoMagic))
	n, err := io.ReadFull(c, head)
	if n > 0 {
		r.first, r.last, r.bytes = time.Now(), time.Now(), int64(n)
	}
	if err == nil && bytes.Equal(head, echoMagic) {
		echoBack(c, head)
		return
	}
	buf := make([]byte, 256<<10)
	for err == nil {
		n, err = c.Read(buf)
		if n > 0 {
			r.bytes += int64(n)
			r.last = time.Now()
			if r.first.IsZero() {
				r.first = r.last
			}
		}
	}
	select {
	case b.bulk <- r:
	default:
	}
}

// echoBack writes back head and then whatever arrives, until the peer closes.
func echoBack(c net.Conn, head []byte) {
	if _, err := c.Write(head); err != nil {
		return
	}
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

type echo struct {
	testpb.UnimplementedTestServiceServer
}

func (echo) UnaryCall(_ context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: r.GetPayload()}, nil
}

// FullDuplexCall echoes each message (the gRPC streaming phase).
func (echo) FullDuplexCall(st testpb.TestService_FullDuplexCallServer) error {
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := st.Send(&testpb.StreamingOutputCallResponse{Payload: r.GetPayload()}); err != nil {
			return err
		}
	}
}

var errNoBulk = errors.New("the sink saw no bulk transfer end")
