package controlplane

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds/server"
)

// gammaMesh is a discovery file: Service echo (target of the client) on 127.0.0.2, Service echo-b on
// 127.0.0.3, both on port, an HTTPRoute on echo-b, and a GRPCRoute attached to echo whose rules are
// given.
func gammaMesh(port int, rules string) string {
	svc := func(name, ip string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default}
spec:
  clusterIP: 10.96.0.%[3]d
  ports: [{name: grpc, port: 8080, appProtocol: grpc, targetPort: %[2]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-1, namespace: default, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: grpc, port: %[2]d}]
endpoints: [{addresses: [%[4]q], conditions: {ready: true}}]
---
`, name, port, len(name), ip)
	}
	// An HTTPRoute on echo-b's virtual host of the same route configuration, with what grpc-go would
	// refuse (path_separated_prefix, a retry policy of no retries): the client must get the gRPC
	// variant, or it NACKs the whole configuration and none of the calls below is routed.
	return svc("echo", "127.0.0.2") + svc("echo-b", "127.0.0.3") + `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-b, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-b}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /grpc.health.v1.Health}}]
    timeouts: {request: 10s, backendRequest: 5s}
    backendRefs: [{name: echo-b, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
` + rules
}

// callWith makes one RPC with the given metadata and returns the IP of the backend that answered.
func callWith(t *testing.T, conn *grpc.ClientConn, md ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	host, _, _ := net.SplitHostPort(p.Addr.String())
	return host, nil
}

// TestGRPCXDSClientFollowsGRPCRoute: a proxyless grpc-go client (xds:/// target) follows a GRPCRoute
// served by weft-control: calls with the header x-version: b go to echo-b, the others to echo; then
// the route is edited to split the other calls 1:1 between both, and they reach both.
func TestGRPCXDSClientFollowsGRPCRoute(t *testing.T) {
	port := backends(t)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(doc string) {
		t.Helper()
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(gammaMesh(port, `  - matches: [{headers: [{name: x-version, value: b}]}]
    backendRefs: [{name: echo-b, port: 8080}]
  - backendRefs: [{name: echo, port: 8080}]
`))
	if _, err := discovery.LoadFile(path); err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&discovery.FileSource{Path: path, Quiet: 20 * time.Millisecond}).Run(ctx, srv.Update) }()
	t.Cleanup(func() { cancel(); <-done })
	conn := xdsClient(t, controlPlane(t, srv))

	// Poll until the client has the route, then hold it to 20 calls each way in a row.
	streak := func(want string, md ...string) {
		t.Helper()
		n, last := 0, ""
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
			ip, err := callWith(t, conn, md...)
			if err != nil || ip != want {
				n, last = 0, fmt.Sprint(ip, err)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if n++; n == 20 {
				return
			}
		}
		t.Fatalf("calls with %v do not all reach %s (last: %s)", md, want, last)
	}
	streak("127.0.0.3", "x-version", "b")
	streak("127.0.0.2")
	streak("127.0.0.3", "x-version", "b")

	// Weighted: the calls without the header now spread over both backends.
	write(gammaMesh(port, `  - matches: [{headers: [{name: x-version, value: b}]}]
    backendRefs: [{name: echo-b, port: 8080}]
  - backendRefs: [{name: echo, port: 8080, weight: 1}, {name: echo-b, port: 8080, weight: 1}]
`))
	seen := map[string]int{}
	for deadline := time.Now().Add(60 * time.Second); seen["127.0.0.2"] == 0 || seen["127.0.0.3"] == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("calls without the header do not spread over both backends: %v", seen)
		}
		if ip, err := callWith(t, conn); err == nil {
			seen[ip]++
		}
	}
	// Over 400 calls, a 1:1 split gives each side 200 ± 4.5 σ (σ = 10).
	seen = map[string]int{}
	for range 400 {
		ip, err := callWith(t, conn)
		if err != nil {
			t.Fatal(err)
		}
		seen[ip]++
	}
	if seen["127.0.0.2"] < 155 || seen["127.0.0.3"] < 155 {
		t.Errorf("400 calls split %v, want about 200 each", seen)
	}
	streak("127.0.0.3", "x-version", "b")
}
