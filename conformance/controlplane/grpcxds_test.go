// Package controlplane tests the control plane end to end with independent xDS clients: grpc-go's
// own xDS client makes real RPCs to real servers on loopback addresses, configured by weft-control
// from a discovery file (local mode) or from a real kube-apiserver.
package controlplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	xdsgrpc "google.golang.org/grpc/xds"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds/server"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

const target = "xds:///echo.default.svc.cluster.local:8080"

// backends starts a gRPC server (health service) on 127.0.0.2 and one on 127.0.0.3, on the same port,
// playing two pods. It returns the port.
func backends(t *testing.T) int {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		l2, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatalf("listening on 127.0.0.2 (loopback addresses play pod IPs): %v", err)
		}
		port := l2.Addr().(*net.TCPAddr).Port
		l3, err := net.Listen("tcp", "127.0.0.3:"+strconv.Itoa(port))
		if err != nil {
			l2.Close()
			continue
		}
		for _, l := range []net.Listener{l2, l3} {
			g := grpc.NewServer()
			healthpb.RegisterHealthServer(g, health.NewServer())
			go func() { _ = g.Serve(l) }()
			t.Cleanup(g.Stop)
		}
		return port
	}
	t.Fatal("no port free on both 127.0.0.2 and 127.0.0.3")
	return 0
}

// controlPlane serves srv's xDS on a loopback port and returns its address.
func controlPlane(t *testing.T, srv *server.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(server.GRPCServerOptions()...) // as weft-control serves: shared pre-encoded responses
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// xdsClient dials target with grpc-go's xDS resolver, bootstrapped to the control plane at addr.
func xdsClient(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "client.default", "metadata": {"CLIENT_KIND": "grpc", "NAMESPACE": "default", "POD_NAME": "client"}}
}`, addr)
	resolver, err := xdsgrpc.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// call makes one RPC and returns the IP of the backend that answered.
func call(t *testing.T, conn *grpc.ClientConn) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	host, _, _ := net.SplitHostPort(p.Addr.String())
	return host, nil
}

// waitSpread makes RPCs until each of want has answered at least once, and none other has.
func waitSpread(t *testing.T, conn *grpc.ClientConn, want ...string) {
	t.Helper()
	seen := map[string]int{}
	var lastErr error
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ip, err := call(t, conn)
		if err != nil {
			lastErr = err
			time.Sleep(50 * time.Millisecond)
			continue
		}
		seen[ip]++
		all := true
		for _, w := range want {
			all = all && seen[w] > 0
		}
		if all {
			for ip := range seen {
				if !contains(want, ip) {
					t.Fatalf("RPCs reached %s, want only %v (seen %v)", ip, want, seen)
				}
			}
			return
		}
	}
	t.Fatalf("RPCs did not reach all of %v: seen %v, last error %v", want, seen, lastErr)
}

// waitOnly makes RPCs until 20 in a row reach only the given backend.
func waitOnly(t *testing.T, conn *grpc.ClientConn, only string) {
	t.Helper()
	streak := 0
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ip, err := call(t, conn)
		if err != nil || ip != only {
			streak, last = 0, fmt.Sprint(ip, err)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if streak++; streak == 20 {
			return
		}
	}
	t.Fatalf("RPCs still do not all reach %s (last: %s)", only, last)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// TestGRPCXDSClientLocalMode: weft-control in local mode, its discovery file listing two endpoints;
// grpc-go's xDS client spreads RPCs over both; the file is edited to drop one; the client stops using it.
func TestGRPCXDSClientLocalMode(t *testing.T) {
	port := backends(t)
	example, err := os.ReadFile("../../deploy/examples/echo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The example's endpoints listen on 8080; ours on a free port.
	doc := strings.ReplaceAll(string(example), "- name: grpc\n  port: 8080", "- name: grpc\n  port: "+strconv.Itoa(port))
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}

	srv := server.New(server.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&discovery.FileSource{Path: path, Quiet: 20 * time.Millisecond}).Run(ctx, srv.Update) }()
	t.Cleanup(func() { cancel(); <-done })

	conn := xdsClient(t, controlPlane(t, srv))
	waitSpread(t, conn, "127.0.0.2", "127.0.0.3")

	// Remove 127.0.0.3 from the file (rewrite through a rename, as editors do).
	i := strings.Index(doc, `- addresses: ["127.0.0.3"]`)
	j := strings.Index(doc[i:], "---")
	edited := doc[:i] + doc[i+j:]
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitOnly(t, conn, "127.0.0.2")
}
