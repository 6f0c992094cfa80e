package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/dataplane/sds"
	"github.com/weftmesh/weft/dataplane/testpki"
)

// TestRunServesSDSOnAUnixSocket runs the proxy command line with --cert-dir and --sds-socket (no control
// plane needed for SDS): an SDS client in the pod reads `default` (the files' certificate and key) and
// `ROOTCA` (ca.pem); a new certificate written to the directory is pushed on the open stream; at
// shutdown the socket is gone.
func TestRunServesSDSOnAUnixSocket(t *testing.T) {
	ca := testpki.NewCA("mesh")
	dir := t.TempDir()
	first := ca.Issue("spiffe://cluster.local/ns/shop/sa/web")
	if err := testpki.WriteDir(dir, first, ca); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "sds.sock")

	args := []string{"--xds-addr", freeAddr(t), "--pod-name", "web-1", "--namespace", "shop", "--service-account", "web",
		"--cert-dir", dir, "--sds-socket", sock, "--admin-addr", freeAddr(t), "--outbound-addr", "", "--inbound-addr", "",
		"--log-level", "error", "--drain-timeout", "1s"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- execute(ctx, args, io.Discard) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("proxy: %v", err)
			}
		}
	}
	defer stop()
	waitFor(t, "the SDS socket", func() bool { _, err := os.Stat(sock); return err == nil })
	if fi, _ := os.Stat(sock); fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want 0660", fi.Mode().Perm())
	}

	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer scancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(cc).StreamSecrets(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	readSecrets := func() (*discoveryv3.DiscoveryResponse, map[string]*tlsv3.Secret) {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("SDS stream: %v", err)
		}
		out := map[string]*tlsv3.Secret{}
		for _, a := range r.Resources {
			var s tlsv3.Secret
			if err := a.UnmarshalTo(&s); err != nil {
				t.Fatal(err)
			}
			out[s.Name] = &s
		}
		return r, out
	}
	leafOf := func(s *tlsv3.Secret) []byte {
		t.Helper()
		tc := s.GetTlsCertificate()
		pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			t.Fatalf("default: chain and key do not match: %v", err)
		}
		return pair.Certificate[0]
	}

	r, got := readSecrets()
	if got["default"] == nil || got["ROOTCA"] == nil {
		t.Fatalf("got %v, want default and ROOTCA", got)
	}
	if !bytes.Equal(leafOf(got["default"]), first.TLS.Certificate[0]) {
		t.Fatal("default is not the certificate of --cert-dir")
	}
	if !bytes.Equal(got["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes(), ca.PEM) {
		t.Fatal("ROOTCA is not ca.pem of --cert-dir")
	}
	leaf, _ := x509.ParseCertificate(first.TLS.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResourceNames: []string{"default", "ROOTCA"}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
		t.Fatal(err)
	}

	// Rotation: new files in the directory reach the open stream. The files are written one by one,
	// so a response may carry an intermediate state; read until the new certificate arrives.
	second := ca.Issue("spiffe://cluster.local/ns/shop/sa/web")
	if err := testpki.WriteDir(dir, second, ca); err != nil {
		t.Fatal(err)
	}
	for {
		r, got = readSecrets()
		if d := got["default"]; d != nil && bytes.Equal(leafOf(d), second.TLS.Certificate[0]) {
			break
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretTypeURL, ResourceNames: []string{"default", "ROOTCA"}, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}); err != nil {
			t.Fatal(err)
		}
	}

	stop()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after shutdown: %v", err)
	}
}

func TestRunSDSNeedsAnIdentity(t *testing.T) {
	o := runOptions{xdsAddr: "127.0.0.1:1", podName: "a", namespace: "b", logLevel: "info", sdsSocket: filepath.Join(t.TempDir(), "s")}
	if err := run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "--sds-socket") {
		t.Fatalf("--sds-socket without identity: %v", err)
	}
}
