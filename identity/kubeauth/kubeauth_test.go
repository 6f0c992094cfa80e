package kubeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/identity"
	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

func createSA(t *testing.T, c kubernetes.Interface, ns, name string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func requestToken(t *testing.T, c kubernetes.Interface, ns, sa, audience string) string {
	t.Helper()
	exp := int64(600)
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	return tr.Status.Token
}

// expiredCopy re-signs a real token's claims with the apiserver's ServiceAccount key, moved an hour into
// the past: a genuinely signed token that has expired.
func expiredCopy(t *testing.T, env *kubeenv.Env, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour).Unix()
	claims["iat"], claims["nbf"], claims["exp"] = past-600, past-600, past
	payload, err = json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(env.Dir, "sa.key"))
	if err != nil {
		t.Fatalf("the apiserver's ServiceAccount key: %v", err)
	}
	signer, err := identity.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key := signer.(*ecdsa.PrivateKey)
	if key.Curve != elliptic.P256() {
		t.Fatalf("ServiceAccount key curve %s, this test signs ES256", key.Curve.Params().Name)
	}
	signingInput := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(pad32(r), pad32(s)...)
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func pad32(n *big.Int) []byte {
	b := make([]byte, 32)
	return n.FillBytes(b)
}

func csrFor(t *testing.T, id identity.ID) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newCA(t *testing.T) (*identity.CA, string) {
	t.Helper()
	dir := t.TempDir()
	if err := identity.Bootstrap(dir, identity.BootstrapOptions{}); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.LoadDirInto(ca, dir); err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

// TestCertifyWithTokenReview runs the Certify service with TokenReview against a real apiserver, over
// real gRPC with the server's TLS, and checks every way a token can be wrong.
func TestCertifyWithTokenReview(t *testing.T) {
	env := kubeenv.Get(t)
	ns := "certify"
	createSA(t, env.Client, ns, "web")
	createSA(t, env.Client, ns, "db")
	webID := identity.ID{TrustDomain: identity.DefaultTrustDomain, Namespace: ns, ServiceAccount: "web"}

	ca, _ := newCA(t)
	events := NewEventRecorder(env.Client, "weft-control")
	defer events.Shutdown()
	srv := identity.NewServer(ca, TokenReviewer{Client: env.Client}, identity.WithRecorder(events))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(identity.ID{}, "127.0.0.1"))))
	srv.Register(g)
	go g.Serve(lis)
	defer g.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.TrustBundle(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := identityv1.NewIdentityClient(cc)

	good := requestToken(t, env.Client, ns, "web", identity.Audience)
	tests := []struct {
		name     string
		token    string
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "token with the audience", token: good},
		{name: "wrong audience", token: requestToken(t, env.Client, ns, "web", "https://kubernetes.default.svc"), wantCode: codes.Unauthenticated, wantMsg: "audience"},
		{name: "another service account's token", token: requestToken(t, env.Client, ns, "db", identity.Audience), wantCode: codes.FailedPrecondition, wantMsg: "the token proves spiffe://cluster.local/ns/certify/sa/db"},
		{name: "expired token", token: expiredCopy(t, env, good), wantCode: codes.Unauthenticated, wantMsg: "expired"},
		{name: "garbage token", token: "garbage", wantCode: codes.Unauthenticated, wantMsg: "token rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := client.Certify(ctx, &identityv1.CertifyRequest{Identity: webID.String(), Token: []byte(tt.token), CertificateSigningRequest: csrFor(t, webID)})
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
			id, err := identity.VerifyPeer(append([][]byte{resp.LeafCertificate}, resp.IntermediateCertificates...), ca.TrustBundle(), x509.ExtKeyUsageClientAuth)
			if err != nil || id != webID {
				t.Fatalf("issued certificate: %v, %v", id, err)
			}
		})
	}

	// The issued certificate left an Event on the ServiceAccount.
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := env.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.kind": "ServiceAccount", "involvedObject.name": "web", "reason": ReasonIssued}.String(),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) > 0 {
			e := list.Items[0]
			if !strings.Contains(e.Message, webID.String()) || e.Type != corev1.EventTypeNormal || e.InvolvedObject.UID == "" {
				t.Fatalf("event %+v", e)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no CertificateIssued event on the ServiceAccount within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// db never got a certificate: no event for it.
	list, err := env.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=db"})
	if err != nil || len(list.Items) != 0 {
		t.Fatalf("events for db: %v %v", list, err)
	}
}

// TestCASecret: the CA loads from a Secret and follows its updates (issuer rotation without restart).
func TestCASecret(t *testing.T) {
	env := kubeenv.Get(t)
	ns := "weft-system"
	if _, err := env.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, dir := newCA(t)
	secretFrom := func() *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "weft-identity", Namespace: ns}, Data: map[string][]byte{}}
		for _, f := range []string{identity.BundleFile, identity.IssuerCertFile, identity.IssuerKeyFile} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			s.Data[f] = b
		}
		return s
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := env.Client.CoreV1().Secrets(ns).Create(ctx, secretFrom(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(identity.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if err := LoadSecret(ctx, env.Client, ns, "nope", ca); err == nil || !strings.Contains(err.Error(), "weft-system/nope") {
		t.Fatalf("missing secret: %v", err)
	}
	if err := LoadSecret(ctx, env.Client, ns, "weft-identity", ca); err != nil {
		t.Fatal(err)
	}
	first := ca.Issuer().Certificate()
	done := make(chan error, 1)
	go func() { done <- WatchSecret(ctx, env.Client, ns, "weft-identity", ca, slog.New(slog.DiscardHandler)) }()

	if err := identity.RotateIssuer(dir, identity.BootstrapOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Secrets(ns).Update(ctx, secretFrom(), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for ca.Issuer().Certificate().Equal(first) {
		if time.Now().After(deadline) {
			t.Fatal("the CA did not follow the Secret's new issuer within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
