package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
)

func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestTrustBundleFollowsTheCA: ROOTCA is served over SDS and replaced when the CA says it changed.
func TestTrustBundleFollowsTheCA(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	if err := h.srv.SetTrustBundle([]byte("not pem")); err == nil {
		t.Error("SetTrustBundle accepted garbage")
	}
	first, second := selfSignedPEM(t), selfSignedPEM(t)
	current := first
	// Served before any stream asks: FollowTrustBundle's first SetTrustBundle runs after bundle()
	// returns, so waiting on bundleCh alone would race the request below.
	if err := h.srv.SetTrustBundle(first); err != nil {
		t.Fatal(err)
	}
	changed := make(chan struct{})
	bundleCh := make(chan []byte, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.srv.FollowTrustBundle(ctx, func() <-chan struct{} { return changed }, func() []byte {
		b := current
		select { // once changed is closed FollowTrustBundle calls again at once: let it end with ctx
		case bundleCh <- b:
		case <-ctx.Done():
		}
		return b
	})
	<-bundleCh

	c := h.ads(t, node("p.default", "weft"))
	c.send(xds.SecretType, []string{xds.TrustBundleSecret}, "", "", "")
	r := c.recv()
	if got := trustedCA(t, r); got != string(first) {
		t.Fatalf("ROOTCA = %q", got)
	}
	c.ack(r, []string{xds.TrustBundleSecret})
	current = second
	close(changed)
	<-bundleCh
	if got := trustedCA(t, c.recv()); got != string(second) {
		t.Fatalf("ROOTCA after rotation = %q", got)
	}
}

func trustedCA(t *testing.T, r *discoverypb.DiscoveryResponse) string {
	t.Helper()
	if len(r.GetResources()) != 1 {
		t.Fatalf("%d secrets", len(r.GetResources()))
	}
	var s tls.Secret
	if err := r.GetResources()[0].UnmarshalTo(&s); err != nil {
		t.Fatal(err)
	}
	if s.GetName() != "ROOTCA" {
		t.Fatalf("secret %q", s.GetName())
	}
	return string(s.GetValidationContext().GetTrustedCa().GetInlineBytes())
}

// TestPerTypeServiceAndCSDSStream: the CDS service works on its own, and CSDS streams answer.
func TestPerTypeServiceAndCSDSStream(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cds, err := clusterservice.NewClusterDiscoveryServiceClient(h.conn).StreamClusters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cds.Send(&discoverypb.DiscoveryRequest{Node: node("percds.default", "envoy")}); err != nil {
		t.Fatal(err)
	}
	r, err := cds.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range r.GetResources() {
		names = append(names, resourceName(a))
	}
	if !strings.Contains(strings.Join(names, " "), clusterName("a", 80)) {
		t.Fatalf("CDS service sent %v", names)
	}
	if err := cds.Send(&discoverypb.DiscoveryRequest{VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}

	st, err := statuspb.NewClientStatusDiscoveryServiceClient(h.conn).StreamClientStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := st.Send(&statuspb.ClientStatusRequest{}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if synced(resp, "percds.default", clusterName("a", 80)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CSDS never showed the per-type CDS client SYNCED: %v", resp)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func synced(resp *statuspb.ClientStatusResponse, nodeID, name string) bool {
	for _, cc := range resp.GetConfig() {
		if cc.GetNode().GetId() != nodeID {
			continue
		}
		for _, g := range cc.GetGenericXdsConfigs() {
			if g.GetName() == name && g.GetConfigStatus() == statuspb.ConfigStatus_SYNCED {
				return true
			}
		}
	}
	return false
}

// TestReflectionKnowsEmittedTypes: grpcurl can list the services and decode every Any we emit.
func TestReflectionKnowsEmittedTypes(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	s, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, sv := range r.GetListServicesResponse().GetService() {
		services = append(services, sv.GetName())
	}
	for _, want := range []string{"envoy.service.discovery.v3.AggregatedDiscoveryService", "envoy.service.status.v3.ClientStatusDiscoveryService", "envoy.service.secret.v3.SecretDiscoveryService"} {
		if !strings.Contains(strings.Join(services, " "), want) {
			t.Errorf("reflection lists %v, missing %s", services, want)
		}
	}
	for _, sym := range []string{
		"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
		"envoy.extensions.filters.http.router.v3.Router",
		"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
		"envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
		"envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
	} {
		if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: sym}}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e := r.GetErrorResponse(); e != nil {
			t.Errorf("reflection does not know %s: %s", sym, e.GetErrorMessage())
		}
	}
}

func TestDebugState(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))
	var st discovery.State
	if err := json.Unmarshal([]byte(get(t, h.srv, "/debug/state").body), &st); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Service("default", "a"); !ok {
		t.Errorf("/debug/state has no default/a: %+v", st)
	}
	if body := get(t, h.srv, "/debug/").body; !strings.Contains(body, h.srv.VersionPrefix()) {
		t.Errorf("/debug/ = %s", body)
	}
}
