package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/weftmesh/weft/xds"
)

// TestDebugConnections: /debug/connections lists each connected node once (with its stream count and
// oldest stream), the SPIFFE ID and certificate expiry of a client on an mTLS port, and forgets a node
// whose streams closed.
func TestDebugConnections(t *testing.T) {
	h := start(t, stateOf(t, serviceYAML("a", 80, 8080, "10.0.0.1")))

	// Plaintext: two streams of one node.
	for range 2 {
		c := h.ads(t, node("web-1.shop", "weft"))
		c.send(xds.ClusterType, nil, "", "", "")
		c.recv()
	}

	// mTLS on a second listener of the same Server, as weft-control's :15012.
	ca, caKey := testCA(t)
	notAfter := time.Now().Add(3 * time.Hour).Truncate(time.Second).UTC()
	clientCert := testLeaf(t, ca, caKey, "spiffe://cluster.local/ns/shop/sa/api", notAfter)
	serverCert := testLeaf(t, ca, caKey, "spiffe://cluster.local/ns/weft/sa/weft-control", notAfter)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
	})))
	h.srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{clientCert}, RootCAs: pool, ServerName: "127.0.0.1",
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mtls, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := mtls.Send(&discoverypb.DiscoveryRequest{Node: node("api-0.shop", "weft"), TypeUrl: xds.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := mtls.Recv(); err != nil {
		t.Fatal(err)
	}

	var got Connections
	if err := json.Unmarshal([]byte(get(t, h.srv, "/debug/connections").body), &got); err != nil {
		t.Fatal(err)
	}
	want := Connections{Connections: []Connection{
		{Node: "api-0.shop", Kind: "weft", Streams: 1, Identity: "spiffe://cluster.local/ns/shop/sa/api", CertificateExpiry: &notAfter},
		{Node: "web-1.shop", Kind: "weft", Streams: 2},
	}}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Connection{}, "ConnectedSince")); diff != "" {
		t.Errorf("/debug/connections (-want +got):\n%s", diff)
	}
	for _, c := range got.Connections {
		if time.Since(c.ConnectedSince) > time.Minute || c.ConnectedSince.After(time.Now()) {
			t.Errorf("%s connected_since = %v, want about now", c.Node, c.ConnectedSince)
		}
	}

	cancel()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var after Connections
		if err := json.Unmarshal([]byte(get(t, h.srv, "/debug/connections").body), &after); err != nil {
			t.Fatal(err)
		}
		if len(after.Connections) == 1 && after.Connections[0].Node == "web-1.shop" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after api-0's stream closed, /debug/connections = %+v", after)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func testLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, id string, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		URIs: []*url.URL{u}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
