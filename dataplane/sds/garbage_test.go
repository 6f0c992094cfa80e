package sds_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/conformance/portprobe"
	"github.com/weftmesh/weft/dataplane/sds"
	"github.com/weftmesh/weft/dataplane/testpki"
)

// TestGarbageOnTheSocket sends garbage to the SDS socket: random bytes, a TLS hello, HTTP/1 to the
// gRPC socket, half an HTTP/2 preface, the preface and part of a frame, and 2000 connections that send
// nothing. The server closes each (read-header timeout 1 s here, 10 s by default; idle 2 s here,
// 5 min by default) and serves `default` to a real client all along.
func TestGarbageOnTheSocket(t *testing.T) {
	ca := testpki.NewCA("sds-test")
	id := &fakeIdentity{}
	id.set(ca.Issue(spiffeA))
	sock := filepath.Join(t.TempDir(), "sds.sock")
	srv, err := sds.Listen(sds.Options{Path: sock, Identity: id, Bundle: func() ([]byte, error) { return ca.PEM, nil },
		ReadHeaderTimeout: time.Second, IdleTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	real := func() {
		t.Helper()
		cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := secretv3.NewSecretDiscoveryServiceClient(cc).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}, TypeUrl: sds.SecretTypeURL})
		if err != nil || len(resp.GetResources()) != 1 {
			t.Fatalf("FetchSecrets default: %v, %d resources", err, len(resp.GetResources()))
		}
	}
	dial := portprobe.Unix(sock)
	real()
	t.Logf("random bytes: closed after %v", portprobe.RandomBytes(t, dial, 4096))
	t.Logf("TLS hello: closed after %v", portprobe.TLSHello(t, dial))
	t.Logf("HTTP/1 to the gRPC socket: closed after %v", portprobe.Send(t, "HTTP/1 to gRPC", dial, portprobe.HTTP1))
	t.Logf("half a preface: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialPreface))
	t.Logf("preface, SETTINGS and part of a frame: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialH2Frame))
	const idle = 2000
	t.Logf("%d idle connections: all closed %v after they opened", idle, portprobe.Idle(t, dial, idle, real))
	real()
}
