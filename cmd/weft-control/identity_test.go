package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/workload"
)

func TestCheckNode(t *testing.T) {
	web := identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	md := func(kv ...string) *structpb.Struct {
		m := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		s, _ := structpb.NewStruct(m)
		return s
	}
	for _, tc := range []struct {
		name   string
		nodeID string
		md     *structpb.Struct
		want   string // "" = allowed
	}{
		{"own workload", "web-0.default", md("NAMESPACE", "default", "SERVICE_ACCOUNT", "web"), ""},
		{"namespace from the node id", "web-0.default", md("SERVICE_ACCOUNT", "web"), ""},
		{"another namespace", "web-0.payments", md("NAMESPACE", "payments", "SERVICE_ACCOUNT", "web"), "asks config for spiffe://cluster.local/ns/payments/sa/web"},
		{"another service account", "web-0.default", md("SERVICE_ACCOUNT", "db"), "asks config for spiffe://cluster.local/ns/default/sa/db"},
		{"metadata disagrees with the id", "web-0.default", md("NAMESPACE", "payments", "SERVICE_ACCOUNT", "web"), "differs from the node id"},
		{"no service account", "web-0.default", md("NAMESPACE", "default"), "SERVICE_ACCOUNT is required"},
		{"node id without namespace", "web-0", md("SERVICE_ACCOUNT", "web"), "want <pod>.<namespace>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkNode("cluster.local", web, tc.nodeID, tc.md)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("allowed, want refusal containing %q", tc.want)
			case tc.want != "" && (status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error = %v, want PermissionDenied containing %q", err, tc.want)
			}
		})
	}
}

// TestIdentityPort runs weft-control in local mode with identity on: a workload gets a certificate through
// Certify with its token, then reads its own config (and the ROOTCA trust bundle) over xDS with that
// certificate, but not another namespace's, and not without a certificate.
func TestIdentityPort(t *testing.T) {
	caDir, tokens, token := localCA(t)
	c := baseConfig(t)
	c.discoveryFile = "../../deploy/examples/echo.yaml"
	c.identity = identityConfig{addr: freeAddr(t), dir: caDir, tokens: tokens, leaf: 2 * time.Hour}
	ctx := startRun(t, c)

	web := identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	client, err := workload.New(workload.Config{Addr: c.identity.addr, Identity: web, TokenFile: token, TrustBundleFile: filepath.Join(caDir, "ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	go client.Run(ctx) //nolint:errcheck
	select {
	case <-client.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("no certificate from Certify: %+v", client.Status())
	}
	if cert, err := client.Certificate(); err != nil {
		t.Fatal(err)
	} else if life := time.Until(cert.Leaf.NotAfter); life > 2*time.Hour || life < 2*time.Hour-time.Minute {
		t.Errorf("leaf expires in %v, want about --identity-leaf-lifetime 2h", life)
	}

	dial := func(withCert bool) *grpc.ClientConn {
		cfg := &tls.Config{RootCAs: client.TrustBundle(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
		if withCert {
			cfg.GetClientCertificate = client.GetClientCertificate
		}
		cc, err := grpc.NewClient(c.identity.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	ask := func(cc *grpc.ClientConn, nodeID, ns, sa, typeURL string, names ...string) (*discoverypb.DiscoveryResponse, error) {
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		defer scancel()
		stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(sctx)
		if err != nil {
			return nil, err
		}
		md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": ns, "SERVICE_ACCOUNT": sa, "CLIENT_KIND": "weft"})
		// A refused stream ends before or after the send; Recv carries the status either way.
		_ = stream.Send(&discoverypb.DiscoveryRequest{Node: &core.Node{Id: nodeID, Metadata: md}, TypeUrl: typeURL, ResourceNames: names})
		return stream.Recv()
	}

	resp, err := ask(dial(true), "web-0.default", "default", "web", resourcev3.SecretType, "ROOTCA")
	if err != nil {
		t.Fatalf("SDS ROOTCA over mTLS with the workload's own certificate: %v", err)
	}
	if len(resp.Resources) != 1 {
		t.Fatalf("ROOTCA: got %d resources", len(resp.Resources))
	}
	var secret tlsv3.Secret
	if err := resp.Resources[0].UnmarshalTo(&secret); err != nil {
		t.Fatal(err)
	}
	anchor, _ := os.ReadFile(filepath.Join(caDir, "ca.crt"))
	bundle := secret.GetValidationContext().GetTrustedCa().GetInlineBytes()
	if !sameCerts(t, bundle, anchor) {
		t.Errorf("ROOTCA is not the CA's trust anchor:\n%s", bundle)
	}
	if resp, err := ask(dial(true), "web-0.default", "default", "web", resourcev3.ClusterType); err != nil || len(resp.Resources) == 0 {
		t.Errorf("CDS over mTLS for the workload's own node: %d resources, %v", len(resp.GetResources()), err)
	}

	if _, err := ask(dial(true), "web-0.payments", "payments", "web", resourcev3.ClusterType); status.Code(err) != codes.PermissionDenied {
		t.Errorf("config of another namespace: error %v, want PermissionDenied", err)
	}
	if _, err := ask(dial(false), "web-0.default", "default", "web", resourcev3.ClusterType); status.Code(err) != codes.Unauthenticated {
		t.Errorf("xDS without a client certificate: error %v, want Unauthenticated", err)
	}
}

func sameCerts(t *testing.T, a, b []byte) bool {
	t.Helper()
	ca, err := identity.ParseCertificatesPEM(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if !ca[i].Equal(cb[i]) {
			return false
		}
	}
	return true
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered 200 (last error %v)", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLeafLifetimeMustBePositive: a zero or negative --identity-leaf-lifetime is one clear line.
func TestLeafLifetimeMustBePositive(t *testing.T) {
	dir := t.TempDir()
	if err := identity.Bootstrap(dir, identity.BootstrapOptions{TrustDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	c := baseConfig(t)
	c.discoveryFile = "../../deploy/examples/echo.yaml"
	c.identity = identityConfig{addr: freeAddr(t), dir: dir, tokens: filepath.Join(dir, "tokens"), leaf: -time.Second}
	err := run(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "--identity-leaf-lifetime -1s: want a positive duration") {
		t.Fatalf("error = %v, want a clear --identity-leaf-lifetime message", err)
	}
}

// TestOwnNamespace: the serving certificate of :15012 names weft-control in the namespace it runs in
// (the proxies check weft-control.<namespace>.svc), from POD_NAMESPACE, else the ServiceAccount volume.
func TestOwnNamespace(t *testing.T) {
	file := filepath.Join(t.TempDir(), "namespace")
	old := namespaceFile
	namespaceFile = file
	defer func() { namespaceFile = old }()
	t.Setenv("POD_NAMESPACE", "")
	if got := ownNamespace(); got != "weft" {
		t.Errorf("nothing known: %q, want weft", got)
	}
	if err := os.WriteFile(file, []byte("mesh-system\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := ownNamespace(); got != "mesh-system" {
		t.Errorf("from the ServiceAccount volume: %q", got)
	}
	t.Setenv("POD_NAMESPACE", "other")
	if got := ownNamespace(); got != "other" {
		t.Errorf("from POD_NAMESPACE: %q", got)
	}
}
