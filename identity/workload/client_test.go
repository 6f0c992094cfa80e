package workload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/weftmesh/weft/identity"
)

// The data plane's Identity interface (dataplane/identity.go), which *Client must satisfy exactly.
var _ interface {
	Certificate() (*tls.Certificate, error)
	TrustBundle() *x509.CertPool
} = (*Client)(nil)

var (
	webID = identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	dbID  = identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "db"}
)

// testCA is a real Certify server on loopback whose leaves live for lifetime; it can be stopped and
// started again on the same address.
type testCA struct {
	t          *testing.T
	ca         *identity.CA
	dir        string
	tokensFile string
	addr       string

	mu sync.Mutex
	g  *grpc.Server
}

func newTestCA(t *testing.T, lifetime time.Duration) *testCA {
	t.Helper()
	dir := t.TempDir()
	if err := identity.Bootstrap(dir, identity.BootstrapOptions{}); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA("cluster.local", identity.WithLifetime(lifetime))
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.LoadDirInto(ca, dir); err != nil {
		t.Fatal(err)
	}
	tc := &testCA{t: t, ca: ca, dir: dir, tokensFile: filepath.Join(dir, "tokens")}
	tc.setTokens("tok-web,default,web\ntok-db,default,db\n")
	tc.start("127.0.0.1:0")
	t.Cleanup(tc.stop)
	return tc
}

func (tc *testCA) setTokens(s string) {
	if err := os.WriteFile(tc.tokensFile, []byte(s), 0o600); err != nil {
		tc.t.Fatal(err)
	}
}

func (tc *testCA) start(addr string) {
	tc.t.Helper()
	var lis net.Listener
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		tc.t.Fatal(err)
	}
	tokens, err := identity.LoadStaticTokens(tc.tokensFile)
	if err != nil {
		tc.t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc.ca.ServerTLSConfig(identity.ID{}, "127.0.0.1"))))
	identity.NewServer(tc.ca, tokens).Register(g)
	go g.Serve(lis)
	tc.mu.Lock()
	tc.g, tc.addr = g, lis.Addr().String()
	tc.mu.Unlock()
}

func (tc *testCA) stop() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.g != nil {
		tc.g.Stop()
		tc.g = nil
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startClient runs a workload client for id with token until the test ends.
func startClient(t *testing.T, tc *testCA, id identity.ID, token string) (*Client, string) {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, token+"\n")
	c, err := New(Config{
		Addr:            tc.addr,
		Identity:        id,
		TokenFile:       tokenFile,
		TrustBundleFile: filepath.Join(tc.dir, identity.BundleFile),
		BundleRefresh:   50 * time.Millisecond,
		MinBackoff:      50 * time.Millisecond,
		MaxBackoff:      300 * time.Millisecond,
		Timeout:         5 * time.Second,
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return c, tokenFile
}

func waitReady(t *testing.T, c *Client) {
	t.Helper()
	select {
	case <-c.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("no certificate within 30s: %+v", c.Status())
	}
}

// waitFor polls cond until it holds or 30s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 30s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serial(t *testing.T, c *Client) string {
	t.Helper()
	cert, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf.SerialNumber.String()
}

func TestFirstCertificate(t *testing.T) {
	tc := newTestCA(t, time.Hour)
	c, _ := startClient(t, tc, webID, "tok-web")
	if _, err := c.Certificate(); err == nil {
		select {
		case <-c.Ready():
		default:
			t.Fatal("a certificate before Ready")
		}
	}
	waitReady(t, c)
	cert, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.VerifyPeer(cert.Certificate, c.TrustBundle(), x509.ExtKeyUsageServerAuth)
	if err != nil || id != webID {
		t.Fatalf("certificate: %v, %v", id, err)
	}
	if st := c.Status(); !st.Ready || st.LastError != nil || !st.NotAfter.Equal(cert.Leaf.NotAfter) {
		t.Fatalf("status %+v", st)
	}
}

func TestWrongTokenNeverReady(t *testing.T) {
	tc := newTestCA(t, time.Hour)
	c, _ := startClient(t, tc, webID, "tok-db") // db's token, asking for web
	waitFor(t, "two failed attempts", func() bool { return c.Status().Failures >= 2 })
	select {
	case <-c.Ready():
		t.Fatal("ready with another service account's token")
	default:
	}
	if _, err := c.Certificate(); err == nil {
		t.Fatal("a certificate with another service account's token")
	}
}

// TestRotations: with 2 s leaves the client renews again and again, each time with a new key, and
// re-reads the token file each time.
func TestRotations(t *testing.T) {
	tc := newTestCA(t, 2*time.Second)
	c, tokenFile := startClient(t, tc, webID, "tok-web")
	waitReady(t, c)
	seen := map[string]bool{}
	keys := map[string]bool{}
	for len(seen) < 4 {
		waitFor(t, fmt.Sprintf("rotation %d", len(seen)+1), func() bool { return !seen[serial(t, c)] })
		cert, _ := c.Certificate()
		seen[cert.Leaf.SerialNumber.String()] = true
		der, err := x509.MarshalPKIXPublicKey(cert.Leaf.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		keys[string(der)] = true
	}
	if len(keys) != len(seen) {
		t.Fatalf("%d certificates with %d keys: every renewal must use a new key", len(seen), len(keys))
	}

	// The token is read at every renewal: swap it on both sides; renewals go on.
	tc.setTokens("tok-web-rotated,default,web\n")
	writeFile(t, tokenFile, "tok-web-rotated")
	before := serial(t, c)
	waitFor(t, "a renewal with the rotated token", func() bool { return serial(t, c) != before && c.Status().LastError == nil })
}

// TestCADownThenUp: while the CA is down the client keeps its certificate and retries; when the CA is
// back it renews.
func TestCADownThenUp(t *testing.T) {
	tc := newTestCA(t, 2*time.Second)
	c, _ := startClient(t, tc, webID, "tok-web")
	waitReady(t, c)
	tc.stop()
	held := serial(t, c)
	waitFor(t, "failed renewals while the CA is down", func() bool { return c.Status().Failures >= 3 })
	if got := serial(t, c); got != held {
		t.Fatalf("certificate changed while the CA was down: %s → %s", held, got)
	}
	if st := c.Status(); !st.Ready || st.LastError == nil {
		t.Fatalf("status while the CA is down: %+v", st)
	}
	tc.start(tc.addr)
	waitFor(t, "renewal after the CA is back", func() bool { return serial(t, c) != held && c.Status().Failures == 0 })
}

// mtlsPair serves an echo over mutual TLS with server's identity and returns a function that makes
// one connection with client's identity, checking each side's SPIFFE ID against its trust bundle.
func mtlsPair(t *testing.T, server, client *Client) func() error {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: server.GetCertificate,
		ClientAuth:     tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, err := identity.VerifyPeer(raw, server.TrustBundle(), x509.ExtKeyUsageClientAuth)
			if err == nil && id != client.ID() {
				err = fmt.Errorf("client is %s", id)
			}
			return err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	return func() error {
		conn, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{
			MinVersion:           tls.VersionTLS13,
			GetClientCertificate: client.GetClientCertificate,
			InsecureSkipVerify:   true, // verified below by SPIFFE ID, not host name
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				id, err := identity.VerifyPeer(raw, client.TrustBundle(), x509.ExtKeyUsageServerAuth)
				if err == nil && id != server.ID() {
					err = fmt.Errorf("server is %s", id)
				}
				return err
			},
		})
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(conn, buf); err != nil {
			return err
		}
		if string(buf) != "ping" {
			return errors.New("echo mismatch")
		}
		return nil
	}
}

// rotatingLifetime is the leaf lifetime of the tests that rotate under mTLS traffic. Certificate times
// have one-second precision, so a leaf lives between lifetime-1s and lifetime; renewal comes at 63-77%
// of that, and the rest (at least ~0.9 s here) must cover one Certify call on a loaded machine.
const rotatingLifetime = 5 * time.Second

// TestMTLSAcrossRotations: two workloads talk mutual TLS through Certificate and TrustBundle while
// both rotate their certificates; no handshake fails and each side sees the other's ID.
func TestMTLSAcrossRotations(t *testing.T) {
	t.Parallel()
	tc := newTestCA(t, rotatingLifetime)
	server, _ := startClient(t, tc, dbID, "tok-db")
	client, _ := startClient(t, tc, webID, "tok-web")
	waitReady(t, server)
	waitReady(t, client)
	dial := mtlsPair(t, server, client)
	seen := map[string]bool{}
	n := 0
	for len(seen) < 3 {
		seen[serial(t, server)] = true
		if err := dial(); err != nil {
			t.Fatalf("connection %d failed during rotation: %v", n, err)
		}
		n++
		time.Sleep(5 * time.Millisecond) // pacing of the load, not a wait for a condition
	}
	t.Logf("%d mTLS connections across %d server certificates", n, len(seen))
}

// TestAnchorRotation walks a full anchor rotation under traffic: a new anchor joins the bundle, the
// issuer switches to one signed by it, the old anchor leaves. The workloads pick the bundle changes up
// from the file (re-read between renewals) and the new issuer at their renewals; no mTLS connection
// fails.
func TestAnchorRotation(t *testing.T) {
	t.Parallel()
	tc := newTestCA(t, rotatingLifetime)
	server, _ := startClient(t, tc, dbID, "tok-db")
	client, _ := startClient(t, tc, webID, "tok-web")
	waitReady(t, server)
	waitReady(t, client)
	dial := mtlsPair(t, server, client)

	stop := make(chan struct{})
	type loadResult struct {
		n, failed int
		first     error
	}
	loadDone := make(chan loadResult, 1)
	go func() {
		var r loadResult
		for {
			select {
			case <-stop:
				loadDone <- r
				return
			default:
			}
			if err := dial(); err != nil {
				r.failed++
				if r.first == nil {
					r.first = err
				}
			}
			r.n++
			time.Sleep(5 * time.Millisecond) // pacing of the load
		}
	}()
	reload := func() {
		if err := identity.LoadDirInto(tc.ca, tc.dir); err != nil {
			t.Fatal(err)
		}
	}
	trusts := func(what string, anchors ...*x509.Certificate) {
		want := x509.NewCertPool()
		for _, a := range anchors {
			want.AddCert(a)
		}
		waitFor(t, what, func() bool { return server.TrustBundle().Equal(want) && client.TrustBundle().Equal(want) })
	}
	oldBundle, err := os.ReadFile(filepath.Join(tc.dir, identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}

	// 1. The new anchor joins the bundle.
	anchor, err := identity.NewAnchor("cluster.local", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(tc.dir, identity.BundleFile), append(append([]byte(nil), oldBundle...), anchor.CertPEM()...))
	reload()
	oldAnchor := tc.ca.Issuer().Anchors[0]
	trusts("both workloads trusting old and new anchor", oldAnchor, anchor.Cert)

	// 2. The issuer switches to one signed by the new anchor.
	issuer, err := identity.NewIssuer("cluster.local", anchor, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := issuer.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(tc.dir, identity.IssuerKeyFile), key)
	writeAtomic(t, filepath.Join(tc.dir, identity.IssuerCertFile), issuer.CertPEM())
	reload()
	waitFor(t, "certificates from the new issuer", func() bool {
		a, _ := server.Certificate()
		b, _ := client.Certificate()
		return a.Leaf.CheckSignatureFrom(issuer.Cert) == nil && b.Leaf.CheckSignatureFrom(issuer.Cert) == nil
	})

	// 3. The old anchor leaves.
	writeAtomic(t, filepath.Join(tc.dir, identity.BundleFile), anchor.CertPEM())
	reload()
	trusts("both workloads trusting only the new anchor", anchor.Cert)
	s1, s2 := serial(t, server), serial(t, client)
	waitFor(t, "renewals after the old anchor left", func() bool { return serial(t, server) != s1 && serial(t, client) != s2 })

	close(stop)
	r := <-loadDone
	if r.failed > 0 {
		t.Fatalf("%d of %d connections failed during the anchor rotation; first: %v", r.failed, r.n, r.first)
	}
	t.Logf("%d mTLS connections, none failed, across an anchor rotation", r.n)
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	if err := identity.Bootstrap(dir, identity.BootstrapOptions{}); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, identity.BundleFile)
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no address", cfg: Config{Identity: webID, TokenFile: "t", TrustBundleFile: bundle}},
		{name: "no identity", cfg: Config{Addr: "127.0.0.1:15012", TokenFile: "t", TrustBundleFile: bundle}},
		{name: "no token file", cfg: Config{Addr: "127.0.0.1:15012", Identity: webID, TrustBundleFile: bundle}},
		{name: "no bundle", cfg: Config{Addr: "127.0.0.1:15012", Identity: webID, TokenFile: "t"}},
		{name: "bundle not PEM", cfg: Config{Addr: "127.0.0.1:15012", Identity: webID, TokenFile: "t", TrustBundleFile: filepath.Join(dir, identity.IssuerKeyFile)}},
	}
	for _, tt := range tests {
		if _, err := New(tt.cfg); err == nil {
			t.Errorf("%s: New accepted it", tt.name)
		}
	}
}

// TestTrustBundlePEM: the anchors given as text (the injector's TRUST_ANCHORS) verify the CA as a file
// would, and text that is not PEM is refused at New.
func TestTrustBundlePEM(t *testing.T) {
	tc := newTestCA(t, time.Hour)
	pem, err := os.ReadFile(filepath.Join(tc.dir, identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, "tok-web\n")
	cfg := Config{Addr: tc.addr, Identity: webID, TokenFile: tokenFile, TrustBundlePEM: pem, MinBackoff: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitReady(t, c)
	cfg.TrustBundlePEM = []byte("not a certificate")
	if _, err := New(cfg); err == nil {
		t.Error("New accepted trust anchors that are not PEM")
	}
}
