package identity

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/reflection"

	"github.com/weftmesh/weft/conformance/prereq"
)

// TestGrpcurl: with reflection registered beside it (as weft-control does), grpcurl can discover and
// call Certify over the CA's TLS, trusting only ca.crt.
func TestGrpcurl(t *testing.T) {
	grpcurl := prereq.Binary(t, "grpcurl")
	ca, dir := newTestCA(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(ID{}, "127.0.0.1"))))
	NewServer(ca, writeTokens(t)).Register(g)
	reflection.Register(g)
	go g.Serve(lis)
	defer g.Stop()

	csr := mustCSR(t, mustKey(t, p256()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	body, err := json.Marshal(map[string]string{
		"identity":                    webID.String(),
		"token":                       base64.StdEncoding.EncodeToString([]byte("tok-web")),
		"certificate_signing_request": base64.StdEncoding.EncodeToString(csr),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, grpcurl, append([]string{"-cacert", filepath.Join(dir, BundleFile), "-servername", "127.0.0.1"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := run(lis.Addr().String(), "list"); err != nil || !strings.Contains(out, "weft.identity.v1.Identity") {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	out, err := run("-d", string(body), lis.Addr().String(), "weft.identity.v1.Identity/Certify")
	if err != nil {
		t.Fatalf("grpcurl Certify: %v\n%s", err, out)
	}
	var resp struct {
		LeafCertificate string `json:"leafCertificate"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("grpcurl output %q: %v", out, err)
	}
	der, err := base64.StdEncoding.DecodeString(resp.LeafCertificate)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := IDFromCertificate(leaf); err != nil || id != webID {
		t.Fatalf("grpcurl got a certificate for %v, %v", id, err)
	}
	// A bad token comes back as a clear Unauthenticated.
	bad := strings.Replace(string(body), base64.StdEncoding.EncodeToString([]byte("tok-web")), base64.StdEncoding.EncodeToString([]byte("nope")), 1)
	out, err = run("-d", bad, lis.Addr().String(), "weft.identity.v1.Identity/Certify")
	if err == nil || !strings.Contains(out, "Unauthenticated") || !strings.Contains(out, "token rejected") {
		t.Fatalf("grpcurl Certify with a bad token: %v\n%s", err, out)
	}
}
