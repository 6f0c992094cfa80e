package xdsclient

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

var testNode = Node{PodName: "web-1", Namespace: "shop", PodIP: "127.0.0.2", ServiceAccount: "web", Version: "test"}

const echo = "echo.shop.svc.cluster.local"

func resources(endpoints ...string) []proto.Message {
	var addrs []netip.AddrPort
	for _, e := range endpoints {
		addrs = append(addrs, netip.MustParseAddrPort(e))
	}
	cl := fx.ClusterName(8080, echo)
	return []proto.Message{
		fx.EDSCluster(cl, clusterv3.Cluster_LEAST_REQUEST),
		fx.Passthrough(),
		fx.CLA(cl, addrs...),
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), &fx.Chain{Name: "passthrough", Cluster: "passthrough"},
			fx.Chain{Name: "echo", IP: "10.96.0.10", Port: 8080, Route: "8080"}),
		fx.RouteConfig("8080", fx.VirtualHost{Name: echo, Domains: []string{echo, echo + ":8080"}, Routes: []fx.Route{{Cluster: cl}}}),
	}
}

func dial(t *testing.T, addr string) Conn {
	t.Helper()
	cc := Dial(addr, nil)
	t.Cleanup(cc.Client.(*http.Client).CloseIdleConnections)
	return cc
}

func runClient(t *testing.T, cc Conn, sotw bool) *Client {
	t.Helper()
	c := New(Options{Node: testNode, Conn: cc, SotW: sotw, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func endpointsOf(s *config.Snapshot) []string {
	cla := s.Endpoints[fx.ClusterName(8080, echo)]
	if cla == nil {
		return nil
	}
	var out []string
	for _, l := range cla.Localities {
		for _, e := range l.Endpoints {
			out = append(out, e.Address.String())
		}
	}
	return out
}

func TestFullConfigAndNode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sotwOnly bool // server lacks delta: the client must fall back
	}{{"delta", false}, {"sotw-fallback", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cp := startCP(t, "127.0.0.1:0", nil, tc.sotwOnly)
			cp.set(t, testNode.ID(), "v1", resources("127.0.0.5:9000")...)
			c := runClient(t, dial(t, cp.addr), false)
			waitFor(t, "complete config", func() bool { return c.Snapshot().Complete })
			s := c.Snapshot()
			if got := endpointsOf(s); len(got) != 1 || got[0] != "127.0.0.5:9000" {
				t.Fatalf("endpoints = %v", got)
			}
			l := s.Listeners["outbound"]
			if l == nil || len(l.Chains) != 1 || l.Chains[0].HTTP.RouteConfigName != "8080" || l.Default.TCP.Cluster != "passthrough" {
				t.Fatalf("outbound listener decoded wrong: %+v", l)
			}
			if rc := s.Routes["8080"]; rc == nil || rc.VirtualHosts[0].Routes[0].Cluster != fx.ClusterName(8080, echo) {
				t.Fatalf("route 8080 decoded wrong: %+v", rc)
			}
			wantProto := "delta"
			if tc.sotwOnly {
				wantProto = "sotw"
			}
			if st := c.Status(); st.Protocol != wantProto {
				t.Fatalf("protocol = %q, want %q", st.Protocol, wantProto)
			}
			nodes := cp.Nodes()
			n := nodes[len(nodes)-1]
			md := n.GetMetadata().GetFields()
			if n.GetId() != "web-1.shop" || md["NAMESPACE"].GetStringValue() != "shop" || md["POD_NAME"].GetStringValue() != "web-1" ||
				md["SERVICE_ACCOUNT"].GetStringValue() != "web" || md["POD_IP"].GetStringValue() != "127.0.0.2" || md["CLIENT_KIND"].GetStringValue() != "weft" {
				t.Fatalf("node = %v", n)
			}
			// An update of the endpoints arrives as a new snapshot.
			cp.set(t, testNode.ID(), "v2", resources("127.0.0.5:9000", "127.0.0.6:9000")...)
			waitFor(t, "two endpoints", func() bool { return len(endpointsOf(c.Snapshot())) == 2 })
		})
	}
}

func TestNACKKeepsLastGoodConfig(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sotwOnly bool
	}{{"delta", false}, {"sotw", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cp := startCP(t, "127.0.0.1:0", nil, tc.sotwOnly)
			cp.set(t, testNode.ID(), "v1", resources("127.0.0.5:9000")...)
			c := runClient(t, dial(t, cp.addr), false)
			waitFor(t, "complete config", func() bool { return c.Snapshot().Complete })
			good := c.Snapshot()

			bad := resources("127.0.0.7:9000")
			bad[0].(*clusterv3.Cluster).LbPolicy = clusterv3.Cluster_MAGLEV
			cp.set(t, testNode.ID(), "v2", bad...)
			waitFor(t, "a NACK", func() bool { return len(cp.nackList()) > 0 })
			nack := cp.nackList()[0]
			want := `cluster "outbound|8080||echo.shop.svc.cluster.local": lb_policy MAGLEV is not supported`
			if !strings.Contains(nack, want) {
				t.Fatalf("NACK error_detail = %q, want it to contain %q", nack, want)
			}
			if c.Status().NACKs == 0 || !strings.Contains(c.Status().LastNACK, "MAGLEV") {
				t.Fatalf("status = %+v", c.Status())
			}
			s := c.Snapshot()
			if s.Clusters[fx.ClusterName(8080, echo)].LB != config.LBLeastRequest {
				t.Fatalf("the bad cluster replaced the good one")
			}
			if s.Clusters[fx.ClusterName(8080, echo)] != good.Clusters[fx.ClusterName(8080, echo)] {
				t.Fatalf("cluster changed after NACK")
			}
			// A fixed config is accepted again.
			cp.set(t, testNode.ID(), "v3", resources("127.0.0.8:9000")...)
			waitFor(t, "v3 endpoints", func() bool {
				e := endpointsOf(c.Snapshot())
				return len(e) == 1 && e[0] == "127.0.0.8:9000"
			})
		})
	}
}

func TestReconnectKeepsConfigAndResyncs(t *testing.T) {
	cp := startCP(t, "127.0.0.1:0", nil, false)
	cp.set(t, testNode.ID(), "v1", resources("127.0.0.5:9000")...)
	c := runClient(t, dial(t, cp.addr), false)
	waitFor(t, "complete config", func() bool { return c.Snapshot().Complete })
	addr := cp.addr
	cp.stop()
	waitFor(t, "disconnect", func() bool { return !c.Status().Connected })
	if e := endpointsOf(c.Snapshot()); len(e) != 1 {
		t.Fatalf("config lost while disconnected: %v", e)
	}
	// A new control plane (a restart: fresh cache) on the same address, with new endpoints.
	cp2 := startCP(t, addr, nil, false)
	cp2.set(t, testNode.ID(), "w1", resources("127.0.0.9:9000")...)
	waitFor(t, "resync", func() bool {
		e := endpointsOf(c.Snapshot())
		return len(e) == 1 && e[0] == "127.0.0.9:9000"
	})
}

// TestRemovalsFollowTheServer: a cluster and a route configuration that leave the server's config
// leave the snapshot, with their endpoints, in both protocols.
func TestRemovalsFollowTheServer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sotwOnly bool
	}{{"delta", false}, {"sotw", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cp := startCP(t, "127.0.0.1:0", nil, tc.sotwOnly)
			other := fx.ClusterName(9090, "other.shop.svc.cluster.local")
			full := append(resources("127.0.0.5:9000"),
				fx.EDSCluster(other, clusterv3.Cluster_ROUND_ROBIN), fx.CLA(other, netip.MustParseAddrPort("127.0.0.6:9090")))
			cp.set(t, testNode.ID(), "v1", full...)
			c := runClient(t, dial(t, cp.addr), false)
			waitFor(t, "both clusters with endpoints", func() bool {
				s := c.Snapshot()
				return s.Complete && s.Clusters[other] != nil && s.Endpoints[other] != nil
			})
			cp.set(t, testNode.ID(), "v2", resources("127.0.0.5:9000")...)
			waitFor(t, "the cluster and its endpoints gone", func() bool {
				s := c.Snapshot()
				return s.Clusters[other] == nil && s.Endpoints[other] == nil && s.Complete
			})
			if s := c.Snapshot(); s.Clusters[fx.ClusterName(8080, echo)] == nil || len(endpointsOf(s)) != 1 {
				t.Fatalf("the remaining cluster was disturbed: %+v", s.Clusters)
			}
		})
	}
}

// TestTrustBundleFromSDS: the ROOTCA secret arrives in the snapshot; a secret that is not a trust
// bundle is NACKed.
func TestTrustBundleFromSDS(t *testing.T) {
	ca := testpki.NewCA("mesh")
	cp := startCP(t, "127.0.0.1:0", nil, false)
	rootca := &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: ca.PEM}}}}}
	cp.set(t, testNode.ID(), "v1", append(resources("127.0.0.5:9000"), rootca)...)
	c := runClient(t, dial(t, cp.addr), false)
	waitFor(t, "ROOTCA", func() bool {
		s := c.Snapshot().Secrets["ROOTCA"]
		return s != nil && string(s.TrustedCA) == string(ca.PEM)
	})
	bad := &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("not pem")}}}}}
	cp.set(t, testNode.ID(), "v2", append(resources("127.0.0.5:9000"), bad)...)
	waitFor(t, "NACK of the bad secret", func() bool {
		n := cp.nackList()
		return len(n) > 0 && strings.Contains(n[len(n)-1], `secret "ROOTCA": trusted_ca holds no PEM certificate`)
	})
	if s := c.Snapshot().Secrets["ROOTCA"]; s == nil || string(s.TrustedCA) != string(ca.PEM) {
		t.Fatal("the good ROOTCA was replaced")
	}
}
