package sds_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/weftmesh/weft/dataplane/sds"
	"github.com/weftmesh/weft/dataplane/testpki"
)

const spiffeA = "spiffe://cluster.local/ns/default/sa/a"

// fakeIdentity is a certificate the test replaces at will; nil means "no certificate yet".
type fakeIdentity struct {
	mu   sync.Mutex
	cert *tls.Certificate
}

func (f *fakeIdentity) Certificate() (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cert == nil {
		return nil, errors.New("no certificate yet")
	}
	return f.cert, nil
}

func (f *fakeIdentity) set(l *testpki.Leaf) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := l.TLS
	f.cert = &c
}

type fixture struct {
	srv  *sds.Server
	id   *fakeIdentity
	ca   *testpki.CA
	sock string
	cc   *grpc.ClientConn
}

func start(t *testing.T, withCert bool) *fixture {
	t.Helper()
	ca := testpki.NewCA("sds-test")
	id := &fakeIdentity{}
	if withCert {
		id.set(ca.Issue(spiffeA))
	}
	sock := filepath.Join(t.TempDir(), "sds.sock")
	srv, err := sds.Listen(sds.Options{Path: sock, Identity: id, Bundle: func() ([]byte, error) { return ca.PEM, nil }, Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &fixture{srv: srv, id: id, ca: ca, sock: sock, cc: cc}
}

type sdsStream = grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]

func (f *fixture) stream(t *testing.T) sdsStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	s, err := secretv3.NewSecretDiscoveryServiceClient(f.cc).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func send(t *testing.T, s sdsStream, req *discoveryv3.DiscoveryRequest) {
	t.Helper()
	if req.TypeUrl == "" {
		req.TypeUrl = sds.SecretTypeURL
	}
	if err := s.Send(req); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, s sdsStream) *discoveryv3.DiscoveryResponse {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatalf("waiting for an SDS response: %v", err)
	}
	if r.TypeUrl != sds.SecretTypeURL {
		t.Fatalf("type_url %q", r.TypeUrl)
	}
	return r
}

func ack(t *testing.T, s sdsStream, r *discoveryv3.DiscoveryResponse, names ...string) {
	t.Helper()
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: names, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
}

func secrets(t *testing.T, r *discoveryv3.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, a := range r.Resources {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatalf("resource %s: %v", a.TypeUrl, err)
		}
		if err := s.ValidateAll(); err != nil { // the rules Envoy applies to the proto
			t.Fatalf("secret %s is not valid for Envoy: %v", s.Name, err)
		}
		out[s.Name] = &s
	}
	return out
}

// checkDefault asserts that `default` is a usable certificate: the chain and key load as a pair (the
// key matches the leaf), the leaf carries the workload's SPIFFE ID and verifies against the bundle.
func checkDefault(t *testing.T, sec *tlsv3.Secret, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	tc := sec.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %s is not a TlsCertificate: %v", sec.Name, sec)
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("default: chain and key do not load as a pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != spiffeA {
		t.Fatalf("leaf URI SANs %v, want %s", leaf.URIs, spiffeA)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("leaf does not verify against ROOTCA: %v", err)
	}
	return leaf
}

func rootPool(t *testing.T, sec *tlsv3.Secret) *x509.CertPool {
	t.Helper()
	pemData := sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatalf("ROOTCA trusted_ca holds no certificate: %q", pemData)
	}
	return pool
}

func TestServesDefaultAndROOTCAOverUnixSocket(t *testing.T) {
	f := start(t, true)
	fi, err := os.Stat(f.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}

	// Envoy opens one stream per secret.
	rs := f.stream(t)
	send(t, rs, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"ROOTCA"}})
	rr := recv(t, rs)
	got := secrets(t, rr)
	if len(got) != 1 || got["ROOTCA"] == nil {
		t.Fatalf("asked for ROOTCA, got %v", got)
	}
	if !bytes.Equal(got["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes(), f.ca.PEM) {
		t.Fatal("ROOTCA is not the trust bundle")
	}
	roots := rootPool(t, got["ROOTCA"])

	ds := f.stream(t)
	send(t, ds, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	dr := recv(t, ds)
	got = secrets(t, dr)
	if len(got) != 1 || got["default"] == nil {
		t.Fatalf("asked for default, got %v", got)
	}
	checkDefault(t, got["default"], roots)
	if dr.VersionInfo == "" || dr.Nonce == "" {
		t.Fatalf("response without version or nonce: %v", dr)
	}

	// Both on one stream, and the unary fetch.
	bs := f.stream(t)
	send(t, bs, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default", "ROOTCA"}})
	if got := secrets(t, recv(t, bs)); len(got) != 2 {
		t.Fatalf("asked for both, got %v", got)
	}
	fr, err := secretv3.NewSecretDiscoveryServiceClient(f.cc).FetchSecrets(context.Background(), &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}, TypeUrl: sds.SecretTypeURL})
	if err != nil {
		t.Fatal(err)
	}
	checkDefault(t, secrets(t, fr)["default"], roots)
}

// A new certificate reaches an open stream without a new request; ACKs and NACKs are not answered
// with a resend (the next message on the stream is always the next version).
func TestRotationIsPushedAndAcksAreNotAnswered(t *testing.T) {
	f := start(t, true)
	s := f.stream(t)
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	r1 := recv(t, s)
	leaf1 := checkDefault(t, secrets(t, r1)["default"], f.ca.Pool())
	ack(t, s, r1, "default")

	f.id.set(f.ca.Issue(spiffeA))
	r2 := recv(t, s)
	leaf2 := checkDefault(t, secrets(t, r2)["default"], f.ca.Pool())
	if leaf2.SerialNumber.Cmp(leaf1.SerialNumber) == 0 && bytes.Equal(leaf1.Raw, leaf2.Raw) {
		t.Fatal("the pushed certificate is the old one")
	}
	if r2.VersionInfo == r1.VersionInfo || r2.Nonce == r1.Nonce {
		t.Fatalf("push reuses version %q / nonce %q", r2.VersionInfo, r2.Nonce)
	}

	// A NACK of r2 is logged, not answered; a request with a stale nonce (r1's) is ignored.
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}, VersionInfo: r1.VersionInfo, ResponseNonce: r2.Nonce, ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "test rejects it"}})
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default", "ROOTCA"}, VersionInfo: r1.VersionInfo, ResponseNonce: r1.Nonce})

	f.id.set(f.ca.Issue(spiffeA))
	r3 := recv(t, s)
	got := secrets(t, r3)
	if len(got) != 1 {
		t.Fatalf("the stale request changed the subscription: got %v", got)
	}
	leaf3 := checkDefault(t, got["default"], f.ca.Pool())
	if bytes.Equal(leaf3.Raw, leaf2.Raw) {
		t.Fatal("after the NACK the server resent the rejected certificate instead of the new one")
	}
	ack(t, s, r3, "default")

	// Asking for more names on the same stream (with the latest nonce) is answered at once.
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default", "ROOTCA"}, VersionInfo: r3.VersionInfo, ResponseNonce: r3.Nonce})
	r4 := recv(t, s)
	if got := secrets(t, r4); len(got) != 2 {
		t.Fatalf("after adding ROOTCA, got %v", got)
	}
	if r4.VersionInfo != r3.VersionInfo {
		t.Fatalf("nothing changed but the version went from %q to %q", r3.VersionInfo, r4.VersionInfo)
	}
}

// An unknown name gets no response on the stream (Envoy NACKs an SDS response without its secret and
// waits for the secret instead), and NotFound from the unary fetch. `default` before the proxy has a
// certificate is the same: it is pushed when the certificate arrives.
func TestUnknownNameAndCertificateNotYetThere(t *testing.T) {
	f := start(t, false)
	client := secretv3.NewSecretDiscoveryServiceClient(f.cc)
	_, err := client.FetchSecrets(context.Background(), &discoveryv3.DiscoveryRequest{ResourceNames: []string{"nope"}, TypeUrl: sds.SecretTypeURL})
	if grpcstatus.Code(err) != codes.NotFound {
		t.Fatalf("fetch of an unknown name: %v, want NotFound", err)
	}

	s := f.stream(t)
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"nope"}})
	send(t, s, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	f.id.set(f.ca.Issue(spiffeA))
	r := recv(t, s)
	if r.Nonce != "1" {
		t.Fatalf("first response has nonce %q: something was sent for the unknown name or the missing certificate", r.Nonce)
	}
	got := secrets(t, r)
	if len(got) != 1 || got["default"] == nil {
		t.Fatalf("got %v, want default alone", got)
	}
	checkDefault(t, got["default"], f.ca.Pool())

	// A stream asking for a secret of another type is refused.
	o := f.stream(t)
	send(t, o, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"x"}, TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"})
	if _, err := o.Recv(); grpcstatus.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong type_url: %v, want InvalidArgument", err)
	}
}

func TestSocketFile(t *testing.T) {
	dir := t.TempDir()
	id := &fakeIdentity{}
	id.set(testpki.NewCA("x").Issue(spiffeA))

	// A stale socket (its server gone without removing it) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	srv, err := sds.Listen(sds.Options{Path: stale, Identity: id})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}

	// A live one is not taken over.
	if _, err := sds.Listen(sds.Options{Path: stale, Identity: id}); err == nil {
		t.Fatal("a second server took over a live socket")
	}
	// Something else at the path is left alone.
	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := sds.Listen(sds.Options{Path: regular, Identity: id}); err == nil {
		t.Fatal("a regular file was replaced by the socket")
	}
	if b, err := os.ReadFile(regular); err != nil || string(b) != "x" {
		t.Fatalf("regular file touched: %q %v", b, err)
	}

	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after Close: %v", err)
	}
}

func TestBundlePrefersWhatWasSet(t *testing.T) {
	b := &sds.Bundle{}
	if _, err := b.PEM(); err == nil {
		t.Fatal("empty bundle without fallback gave no error")
	}
	b.Fallback = func() ([]byte, error) { return []byte("file"), nil }
	if p, _ := b.PEM(); string(p) != "file" {
		t.Fatalf("got %q, want the fallback", p)
	}
	b.Set([]byte("xds"))
	if p, _ := b.PEM(); string(p) != "xds" {
		t.Fatalf("got %q, want what was set", p)
	}
}
