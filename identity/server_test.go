package identity

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

const testTokens = `# token,namespace,serviceaccount
tok-web, default, web
tok-db,default,db
`

func writeTokens(t testing.TB) *StaticTokens {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(testTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := LoadStaticTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

type recorded struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorded) Issued(c Caller, id ID, leaf *x509.Certificate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, c.Namespace+"/"+c.ServiceAccount+" "+id.String())
}

// serve runs srv on a loopback gRPC server with creds and returns a client.
func serve(t testing.TB, srv *Server, creds credentials.TransportCredentials, clientCreds credentials.TransportCredentials) identityv1.IdentityClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(creds))
	srv.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientCreds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return identityv1.NewIdentityClient(cc)
}

func TestCertifyOverTLS(t *testing.T) {
	ca, _ := newTestCA(t)
	rec := &recorded{}
	reg := prometheus.NewRegistry()
	srv := NewServer(ca, writeTokens(t), WithRecorder(rec), WithMetrics(reg))
	client := serve(t, srv, credentials.NewTLS(ca.ServerTLSConfig(ID{}, "127.0.0.1")),
		credentials.NewTLS(&tls.Config{RootCAs: ca.TrustBundle(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}))

	p256 := mustKey(t, p256())
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dbID := ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "db"}
	goodCSR := mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})

	tests := []struct {
		name     string
		req      *identityv1.CertifyRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "good", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: goodCSR}},
		{name: "unknown token", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-nope"), CertificateSigningRequest: goodCSR}, wantCode: codes.Unauthenticated, wantMsg: "not in the tokens file"},
		{name: "no token", req: &identityv1.CertifyRequest{Identity: webID.String(), CertificateSigningRequest: goodCSR}, wantCode: codes.Unauthenticated, wantMsg: "token is empty"},
		{name: "another service account's token", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-db"), CertificateSigningRequest: goodCSR}, wantCode: codes.FailedPrecondition, wantMsg: "the token proves " + dbID.String()},
		{name: "garbage CSR", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: []byte{0x30, 0x03, 1, 2, 3}}, wantCode: codes.InvalidArgument, wantMsg: "not a DER PKCS#10"},
		{name: "RSA key", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: mustCSR(t, rsaKey, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})}, wantCode: codes.InvalidArgument, wantMsg: "ECDSA P-256"},
		{name: "DNS SAN", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, DNSNames: []string{"evil.example"}})}, wantCode: codes.InvalidArgument, wantMsg: "DNS names"},
		{name: "extra URI SAN", req: &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: mustCSR(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL(), dbID.URL()}})}, wantCode: codes.InvalidArgument, wantMsg: "2 URI SANs"},
		{name: "no identity", req: &identityv1.CertifyRequest{Token: []byte("tok-web"), CertificateSigningRequest: goodCSR}, wantCode: codes.InvalidArgument, wantMsg: "identity is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			resp, err := client.Certify(ctx, tt.req)
			if tt.wantCode != codes.OK {
				st := status.Convert(err)
				if st.Code() != tt.wantCode || !strings.Contains(st.Message(), tt.wantMsg) {
					t.Fatalf("Certify = %v %q, want %v containing %q", st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(resp.LeafCertificate)
			if err != nil {
				t.Fatal(err)
			}
			raw := append([][]byte{resp.LeafCertificate}, resp.IntermediateCertificates...)
			id, err := VerifyPeer(raw, ca.TrustBundle(), x509.ExtKeyUsageClientAuth)
			if err != nil || id != webID {
				t.Fatalf("issued chain: id %v, %v", id, err)
			}
			if _, err := VerifyPeer(raw, ca.TrustBundle(), x509.ExtKeyUsageServerAuth); err != nil {
				t.Fatal(err)
			}
			if !p256.PublicKey.Equal(leaf.PublicKey) {
				t.Fatal("leaf does not carry the CSR's key")
			}
			if !resp.ValidUntil.AsTime().Equal(leaf.NotAfter) || leaf.IsCA || len(leaf.DNSNames)+len(leaf.IPAddresses) != 0 {
				t.Fatalf("leaf: valid_until %v NotAfter %v CA %v DNS %v", resp.ValidUntil.AsTime(), leaf.NotAfter, leaf.IsCA, leaf.DNSNames)
			}
		})
	}
	metrics := gather(t, reg)
	for name, want := range map[string]float64{
		`weft_identity_certify_total{code="OK"}`:              1,
		`weft_identity_certify_total{code="InvalidArgument"}`: 5,
		`weft_identity_certify_total{code="Unauthenticated"}`: 2,
		`weft_identity_certify_duration_seconds`:              float64(len(tests)),
		`weft_identity_issuer_expiry_timestamp_seconds`:       float64(ca.Issuer().Certificate().NotAfter.Unix()),
	} {
		if got := metrics[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.calls) != 1 || rec.calls[0] != "default/web "+webID.String() {
		t.Fatalf("recorder saw %q, want exactly the one issued certificate", rec.calls)
	}
}

func TestCertifyWithoutIssuer(t *testing.T) {
	ca, err := NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	client := serve(t, NewServer(ca, writeTokens(t)), insecure.NewCredentials(), insecure.NewCredentials())
	csr := mustCSR(t, mustKey(t, p256()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	_, err = client.Certify(context.Background(), &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("tok-web"), CertificateSigningRequest: csr})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "has not loaded an issuer") {
		t.Fatalf("Certify without issuer = %v, want Unavailable", err)
	}
}

// TestServerTLSClientCertificate: the mTLS port accepts callers without a certificate (for Certify) and
// reports the SPIFFE ID of those with one (for xDS authorization); a foreign CA's certificate fails.
func TestServerTLSClientCertificate(t *testing.T) {
	ca, _ := newTestCA(t)
	foreign, _ := newTestCA(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 4)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(ID{}, "127.0.0.1"))),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, err := PeerID(ctx)
			if err != nil {
				seen <- "none"
			} else {
				seen <- id.String()
			}
			if err == nil {
				if err := AuthorizePeer(ctx, id); err != nil {
					t.Errorf("AuthorizePeer(own ID): %v", err)
				}
				other := ID{TrustDomain: id.TrustDomain, Namespace: "kube-system", ServiceAccount: id.ServiceAccount}
				if err := AuthorizePeer(ctx, other); !errors.Is(err, ErrPeerMismatch) {
					t.Errorf("AuthorizePeer(another namespace) = %v, want ErrPeerMismatch", err)
				}
			} else if err := AuthorizePeer(ctx, webID); !errors.Is(err, ErrPeerMismatch) {
				t.Errorf("AuthorizePeer without a certificate = %v, want ErrPeerMismatch", err)
			}
			return h(ctx, req)
		}))
	NewServer(ca, writeTokens(t)).Register(g)
	go g.Serve(lis)
	defer g.Stop()

	call := func(cert *tls.Certificate) error {
		cfg := &tls.Config{RootCAs: ca.TrustBundle(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err = identityv1.NewIdentityClient(cc).Certify(ctx, &identityv1.CertifyRequest{})
		return err
	}
	workloadCert := func(c *CA) *tls.Certificate {
		key := mustKey(t, p256())
		leaf, err := c.Sign(key.Public(), webID)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: append([][]byte{leaf.Certificate.Raw}, leaf.Intermediates...), PrivateKey: key}
	}
	if err := call(nil); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call without client cert: %v", err)
	}
	if got := <-seen; got != "none" {
		t.Fatalf("PeerID without cert = %s", got)
	}
	if err := call(workloadCert(ca)); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call with client cert: %v", err)
	}
	if got := <-seen; got != webID.String() {
		t.Fatalf("PeerID = %s, want %s", got, webID)
	}
	if err := call(workloadCert(foreign)); status.Code(err) != codes.Unavailable {
		t.Fatalf("call with a foreign CA's cert: %v, want a failed handshake (Unavailable)", err)
	}
}

type failingAuth struct{}

func (failingAuth) Authenticate(context.Context, string) (Caller, error) {
	return Caller{}, errors.New("dial tcp 10.96.0.1:443: connect: connection refused")
}

func TestCertifyTokenCheckUnavailable(t *testing.T) {
	ca, _ := newTestCA(t)
	srv := NewServer(ca, failingAuth{})
	csr := mustCSR(t, mustKey(t, p256()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	_, err := srv.Certify(context.Background(), &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte("t"), CertificateSigningRequest: csr})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "token check unavailable: dial tcp") {
		t.Fatalf("Certify with the apiserver unreachable = %v, want Unavailable naming the cause", err)
	}
}

// gather flattens a registry into name{labels} → value (histograms: their sample count).
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			if len(m.GetLabel()) > 0 {
				var parts []string
				for _, l := range m.GetLabel() {
					parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				key += "{" + strings.Join(parts, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestStaticTokensReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("a,default,web\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := LoadStaticTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := st.Authenticate(context.Background(), "a"); err != nil || c != (Caller{Namespace: "default", ServiceAccount: "web"}) {
		t.Fatalf("token a: %+v, %v", c, err)
	}
	if err := os.WriteFile(path, []byte("# rotated\nbb,default,db\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, errOld := st.Authenticate(context.Background(), "a")
		c, errNew := st.Authenticate(context.Background(), "bb")
		if errors.Is(errOld, ErrUnauthenticated) && errNew == nil && c.ServiceAccount == "db" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokens file change not picked up: old %v, new %v", errOld, errNew)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A broken file is refused with the line that is wrong.
	if err := os.WriteFile(path, []byte("only-two,fields\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadStaticTokens(path); err == nil || !strings.Contains(err.Error(), "line 1: want token,namespace,serviceaccount") {
		t.Fatalf("LoadStaticTokens of a broken file: %v", err)
	}
}
