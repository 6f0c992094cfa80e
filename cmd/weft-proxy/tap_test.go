package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/dataplane/admin"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/testpki"
	"github.com/weftmesh/weft/identity/grpcwire"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

const controlID = "spiffe://cluster.local/ns/weft/sa/weft-control"

// TestAdminPortTap: one admin port serves the probes in plaintext HTTP/1.1, the tap in h2c to loopback
// clients, and the tap over mutual TLS to weft-control's certificate only.
func TestAdminPortTap(t *testing.T) {
	ca := testpki.NewCA("mesh")
	id := testpki.Identity{Leaf: ca.Issue("spiffe://cluster.local/ns/shop/sa/web"), CA: ca}
	tapped := make(chan struct{}, 8)
	h := admin.Handler(admin.Options{Proxy: proxy.New(proxy.Options{}), Tap: func(ctx context.Context, req *tapv1.ObserveRequest, send func(*tapv1.ObserveResponse) error) error {
		tapped <- struct{}{}
		return send(&tapv1.ObserveResponse{Event: &tapv1.TapEvent{Proxy: "web-0.shop"}})
	}})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	srv.Protocols.SetHTTP2(true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := newSniffListener(l, tapTLSConfig(id, defaultTapIdentity("cluster.local", "weft-control.weft.svc:15012")))
	go func() { _ = srv.Serve(sl) }()
	t.Cleanup(func() { srv.Close() })
	addr := l.Addr().String()

	resp, err := http.Get("http://" + addr + "/live")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "live\n" {
		t.Fatalf("GET /live over HTTP/1.1: %d %q", resp.StatusCode, body)
	}

	observe := func(c *http.Client, url string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := grpcwire.OpenStream(ctx, c, url+tapv1.ObserveMethod)
		defer s.Close()
		if err := s.Send(&tapv1.ObserveRequest{}); err != nil {
			return err
		}
		_ = s.CloseSend()
		r := &tapv1.ObserveResponse{}
		if err := s.Recv(r); err != nil {
			return err
		}
		if r.GetEvent().GetProxy() != "web-0.shop" {
			t.Errorf("event %v, want the tap's", r)
		}
		return nil
	}
	h2c := &http.Transport{}
	h2c.Protocols = new(http.Protocols)
	h2c.Protocols.SetUnencryptedHTTP2(true)
	if err := observe(&http.Client{Transport: h2c}, "http://"+addr); err != nil {
		t.Errorf("tap over loopback h2c: %v", err)
	}

	mtls := func(clientID string) *http.Client {
		leaf := ca.Issue(clientID)
		tr := &http.Transport{TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), Certificates: []tls.Certificate{leaf.TLS},
			InsecureSkipVerify: true, // #nosec G402 -- the test checks the server's side only
		}}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP2(true)
		return &http.Client{Transport: tr}
	}
	if err := observe(mtls(controlID), "https://"+addr); err != nil {
		t.Errorf("tap over mTLS as weft-control: %v", err)
	}
	n := len(tapped)
	err = observe(mtls("spiffe://cluster.local/ns/shop/sa/intruder"), "https://"+addr)
	if err == nil || len(tapped) != n {
		t.Errorf("tap over mTLS as another workload: %v (taps opened %d, before %d), want the handshake refused", err, len(tapped), n)
	}
}

func TestDefaultTapIdentity(t *testing.T) {
	for addr, want := range map[string]string{
		"weft-control.mesh.svc:15012":               "spiffe://example.org/ns/mesh/sa/weft-control",
		"weft-control.mesh.svc.cluster.local:15012": "spiffe://example.org/ns/mesh/sa/weft-control",
		"127.0.0.1:15012":                           "spiffe://example.org/ns/weft/sa/weft-control",
	} {
		if got := defaultTapIdentity("example.org", addr); got != want {
			t.Errorf("defaultTapIdentity(%q) = %q, want %q", addr, got, want)
		}
	}
	if !strings.HasPrefix(defaultTapIdentity("cluster.local", ""), "spiffe://cluster.local/ns/weft/") {
		t.Error("no --xds-addr: want the weft namespace")
	}
}
