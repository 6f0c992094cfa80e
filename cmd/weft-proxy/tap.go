package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/dataplane"
	"github.com/weftmesh/weft/dataplane/admin"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/identity/spiffeid"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// The tap on the admin port (docs/design.md, "Tap"): Tap.Observe is gRPC over the admin server's HTTP/2,
// h2c for loopback clients and mutual TLS for weft-control. The port sniffs each connection's first
// byte: a TLS handshake (0x16) gets the workload certificate and must present weft-control's
// (--tap-identity), anything else is the plaintext admin server as before (probes, Prometheus).

// defaultTapIdentity is weft-control's SPIFFE ID: its namespace is the one in the control plane's
// address (weft-control.<ns>.svc:15012, as the injector sets it), else weft.
func defaultTapIdentity(trustDomain, xdsAddr string) string {
	ns := "weft"
	host, _, err := net.SplitHostPort(xdsAddr)
	if err == nil {
		if parts := strings.Split(host, "."); len(parts) >= 3 && parts[0] == "weft-control" && parts[2] == "svc" {
			ns = parts[1]
		}
	}
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/weft-control", trustDomain, ns)
}

// tapTLSConfig serves the admin port's TLS: our workload certificate; the client's must chain to our
// trust bundle and be allowed's (weft-control's). TLS 1.3, HTTP/2 only.
func tapTLSConfig(id dataplane.Identity, allowed string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				MinVersion:     tls.VersionTLS13,
				NextProtos:     []string{"h2"},
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return id.Certificate() },
				ClientAuth:     tls.RequireAndVerifyClientCert,
				ClientCAs:      id.TrustBundle(),
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
						return errors.New("tap: no verified client certificate")
					}
					got, err := spiffeid.IDFromCertificate(cs.VerifiedChains[0][0])
					if err != nil {
						return fmt.Errorf("tap: %w", err)
					}
					if got.String() != allowed {
						return fmt.Errorf("tap: %s may not tap this proxy (only %s)", got, allowed)
					}
					return nil
				},
			}, nil
		},
	}
}

// tapFunc is the admin server's Tap: the proxy's, each event stamped with the proxy's node id, ended
// when stop ends (the drain) as well as when the client goes.
func tapFunc(p *proxy.Proxy, node string, stop context.Context) admin.TapFunc {
	return func(ctx context.Context, req *tapv1.ObserveRequest, send func(*tapv1.ObserveResponse) error) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-stop.Done():
				cancel()
			case <-ctx.Done():
			}
		}()
		return p.Tap(ctx, req, func(r *tapv1.ObserveResponse) error {
			if r.Event != nil {
				r.Event.Proxy = node
			}
			return send(r)
		})
	}
}

// sniffListener hands the admin server plaintext connections as they are and TLS connections (first
// byte 0x16, a handshake record) wrapped in tls.Server. The first byte is read on a goroutine per
// connection, with a deadline, so a silent client never holds up the others.
type sniffListener struct {
	net.Listener
	cfg   *tls.Config
	conns chan net.Conn
	errc  chan error
	once  sync.Once
	done  chan struct{}
}

const sniffTimeout = 10 * time.Second

func newSniffListener(l net.Listener, cfg *tls.Config) *sniffListener {
	s := &sniffListener{Listener: l, cfg: cfg, conns: make(chan net.Conn), errc: make(chan error, 1), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *sniffListener) loop() {
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.errc <- err
			return
		}
		go s.sniff(c)
	}
}

func (s *sniffListener) sniff(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(sniffTimeout))
	br := bufio.NewReaderSize(c, 16)
	first, err := br.Peek(1)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return
	}
	var out net.Conn = &peekedConn{Conn: c, r: br}
	if first[0] == 0x16 {
		if s.cfg == nil { // no workload identity: no TLS on this port
			c.Close()
			return
		}
		out = tls.Server(out, s.cfg)
	}
	select {
	case s.conns <- out:
	case <-s.done:
		c.Close()
	}
}

func (s *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case err := <-s.errc:
		s.errc <- err
		return nil, err
	case <-s.done:
		return nil, net.ErrClosed
	}
}

func (s *sniffListener) Close() error {
	s.once.Do(func() { close(s.done) })
	return s.Listener.Close()
}

// peekedConn is a connection whose first bytes were read into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if c.r.Buffered() > 0 {
		return c.r.Read(b)
	}
	return c.Conn.Read(b)
}
