package proxy_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/proxy"
)

func staticCLA(name string, addrs ...string) *config.ClusterLoadAssignment {
	cla := &config.ClusterLoadAssignment{ClusterName: name, Localities: []config.Locality{{}}}
	for _, a := range addrs {
		cla.Localities[0].Endpoints = append(cla.Localities[0].Endpoints, config.Endpoint{Address: netip.MustParseAddrPort(a)})
	}
	return cla
}

func TestRewriteInboundClusters(t *testing.T) {
	in := &config.Snapshot{Clusters: map[string]*config.Cluster{
		"inbound|8080||": {Name: "inbound|8080||", Kind: config.ClusterStatic, Static: staticCLA("inbound|8080||", "127.0.0.1:8080")},
		"outbound|8080||web.default.svc.cluster.local": {Name: "outbound|8080||web.default.svc.cluster.local", Kind: config.ClusterEDS},
		"static-elsewhere": {Name: "static-elsewhere", Kind: config.ClusterStatic, Static: staticCLA("static-elsewhere", "127.0.0.1:9000")},
	}}
	app := netip.MustParseAddr("127.1.0.2")
	out := proxy.RewriteInboundClusters(in, app)

	if got, want := out.Clusters["inbound|8080||"].Static.Localities[0].Endpoints[0].Address, netip.MustParseAddrPort("127.1.0.2:8080"); got != want {
		t.Errorf("inbound endpoint = %v, want %v", got, want)
	}
	if got := in.Clusters["inbound|8080||"].Static.Localities[0].Endpoints[0].Address.String(); got != "127.0.0.1:8080" {
		t.Errorf("the input snapshot was modified: %s", got)
	}
	if out.Clusters["outbound|8080||web.default.svc.cluster.local"] != in.Clusters["outbound|8080||web.default.svc.cluster.local"] ||
		out.Clusters["static-elsewhere"] != in.Clusters["static-elsewhere"] {
		t.Error("clusters other than inbound|...|| must be shared unchanged")
	}
	if proxy.RewriteInboundClusters(in, netip.Addr{}) != in {
		t.Error("no app IP: the snapshot must be returned as is")
	}
	if again := proxy.RewriteInboundClusters(out, app); again != out {
		t.Error("an already rewritten snapshot must be returned as is")
	}
}

func TestInboundPorts(t *testing.T) {
	s := &config.Snapshot{Listeners: map[string]*config.Listener{"inbound": {Name: "inbound", Chains: []config.FilterChain{
		{Match: config.ChainMatch{DestinationPort: 9090, TransportProtocol: "tls"}},
		{Match: config.ChainMatch{DestinationPort: 9090, TransportProtocol: "raw_buffer"}},
		{Match: config.ChainMatch{DestinationPort: 8080}},
		{Match: config.ChainMatch{}},
	}}}}
	if diff := cmp.Diff([]uint32{8080, 9090}, proxy.InboundPorts(s)); diff != "" {
		t.Errorf("InboundPorts (-want +got):\n%s", diff)
	}
	if got := proxy.InboundPorts(&config.Snapshot{}); got != nil {
		t.Errorf("no inbound listener: %v", got)
	}
}

// inboundSnapshot is the shape weft-control sends a pod serving HTTP on port: a plaintext chain for
// the port on the `inbound` listener, routed to inbound|<port>|| on 127.0.0.1.
func inboundSnapshot(port uint16) *config.Snapshot {
	name := fmt.Sprintf("inbound|%d||", port)
	return &config.Snapshot{
		Complete: true,
		Listeners: map[string]*config.Listener{"inbound": {
			Name: "inbound", UseOriginalDst: true,
			Chains: []config.FilterChain{{
				Name:  name + "plaintext",
				Match: config.ChainMatch{DestinationPort: uint32(port)},
				HTTP: &config.HTTPConnectionManager{Inline: &config.RouteConfig{Name: "inbound", VirtualHosts: []config.VirtualHost{{
					Name: "app", Domains: []string{"*"}, Routes: []config.Route{{Kind: config.PathPrefix, Prefix: "/", Cluster: name}},
				}}}},
			}},
		}},
		Clusters: map[string]*config.Cluster{name: {
			Name: name, Kind: config.ClusterStatic, ConnectTimeout: time.Second,
			Static: staticCLA(name, fmt.Sprintf("127.0.0.1:%d", port)),
		}},
	}
}

// TestLocalModeInbound: with no iptables, a connection to <pod-ip>:<port> reaches the app on
// <app-ip>:<port> through the inbound listener, and a port the config drops is released.
func TestLocalModeInbound(t *testing.T) {
	b := byte(rand.IntN(200) + 20)
	podIP := netip.AddrFrom4([4]byte{127, b, 0, 2})
	appIP := netip.AddrFrom4([4]byte{127, b, 1, 2})
	appL := listen(t, netip.AddrPortFrom(appIP, 0).String())
	port := uint16(appL.Addr().(*net.TCPAddr).Port)
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app on %s", r.Context().Value(http.LocalAddrContextKey))
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = app.Serve(appL) }()
	t.Cleanup(func() { app.Close() })

	p := proxy.New(proxy.Options{})
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	lm := &proxy.LocalMode{Proxy: p, PodIP: podIP, AppIP: appIP}
	t.Cleanup(lm.Close)
	lm.Update(inboundSnapshot(port))
	if diff := cmp.Diff([]uint32{uint32(port)}, lm.Ports()); diff != "" {
		t.Fatalf("bound ports (-want +got):\n%s", diff)
	}

	url := fmt.Sprintf("http://%s/hello", netip.AddrPortFrom(podIP, port))
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "app on " + netip.AddrPortFrom(appIP, port).String(); resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("GET %s = %d %q, want 200 %q", url, resp.StatusCode, body, want)
	}

	// The port leaves the config: it is no longer bound.
	empty := &config.Snapshot{Complete: true, Listeners: map[string]*config.Listener{"inbound": {Name: "inbound"}}}
	lm.Update(empty)
	if got := lm.Ports(); len(got) != 0 {
		t.Fatalf("bound ports after removal: %v", got)
	}
	if conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(podIP, port).String(), time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after its port left the config", netip.AddrPortFrom(podIP, port))
	}
}

func TestNewLocalModeFlagMistakes(t *testing.T) {
	p := proxy.New(proxy.Options{})
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	if _, err := proxy.NewLocalMode(p, "", true, "", nil); err == nil || !strings.Contains(err.Error(), "--pod-ip") {
		t.Errorf("--inbound-bind-pod-ip without a pod IP: %v, want an error naming --pod-ip", err)
	}
	if _, err := proxy.NewLocalMode(p, "127.0.0.2", true, "localhost", nil); err == nil || !strings.Contains(err.Error(), "--app-ip") {
		t.Errorf("--app-ip localhost: %v, want an error naming --app-ip", err)
	}
	m, err := proxy.NewLocalMode(p, "127.0.0.2", true, "127.1.0.2", nil)
	if err != nil || m.PodIP != netip.MustParseAddr("127.0.0.2") || m.AppIP != netip.MustParseAddr("127.1.0.2") {
		t.Errorf("NewLocalMode = %+v, %v", m, err)
	}
}
