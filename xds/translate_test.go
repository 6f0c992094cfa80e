package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/weftmesh/weft/discovery"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func load(t *testing.T, name string) *discovery.State {
	t.Helper()
	s, err := discovery.LoadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var (
	grpcClient = Proxy{ID: "client.default", Namespace: "default", PodName: "client", Kind: KindGRPC}
	webSidecar = Proxy{ID: "web-0.shop", Namespace: "shop", PodName: "web-0", Kind: KindWeft}
	stranger   = Proxy{ID: "nobody.nowhere", Namespace: "nowhere", PodName: "nobody", Kind: KindEnvoy}
)

type fixture struct {
	file  string
	proxy Proxy
}

var fixtures = []fixture{
	{"echo.yaml", grpcClient},
	{"echo.yaml", stranger},
	{"mesh.yaml", grpcClient},
	{"mesh.yaml", webSidecar},
	{"mesh.yaml", stranger},
	{"gamma.yaml", webSidecar},
	{"gamma.yaml", grpcClient},
}

func (f fixture) golden() string {
	return filepath.Join("testdata", strings.TrimSuffix(f.file, ".yaml")+"."+f.proxy.PodName+"."+string(f.proxy.Kind)+".golden.json")
}

// TestGolden compares each fixture's whole translation with its golden file (go test -update rewrites
// them). The comparison is of protos (protocmp), not bytes: protojson output is not stable.
func TestGolden(t *testing.T) {
	for _, f := range fixtures {
		t.Run(filepath.Base(f.golden()), func(t *testing.T) {
			got := Translate(load(t, f.file), f.proxy, Options{})
			if *update {
				if err := os.WriteFile(f.golden(), encodeGolden(t, got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			data, err := os.ReadFile(f.golden())
			if err != nil {
				t.Fatalf("%v (run go test ./xds -update to write it)", err)
			}
			want := decodeGolden(t, data)
			if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
				t.Errorf("translation differs from %s (-want +got); if intended, run go test ./xds -update\n%s", f.golden(), d)
			}
		})
	}
}

func encodeGolden(t *testing.T, r Resources) []byte {
	t.Helper()
	out := map[string][]json.RawMessage{}
	add := func(key string, m proto.Message) {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out[key] = append(out[key], b)
	}
	for _, x := range r.Listeners {
		add("listeners", x)
	}
	for _, x := range r.Clusters {
		add("clusters", x)
	}
	for _, x := range r.Endpoints {
		add("endpoints", x)
	}
	for _, x := range r.Routes {
		add("routes", x)
	}
	b, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	return buf.Bytes()
}

func decodeGolden(t *testing.T, data []byte) Resources {
	t.Helper()
	var raw map[string][]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	var r Resources
	for _, b := range raw["listeners"] {
		r.Listeners = append(r.Listeners, unmarshal[listener.Listener](t, b))
	}
	for _, b := range raw["clusters"] {
		r.Clusters = append(r.Clusters, unmarshal[cluster.Cluster](t, b))
	}
	for _, b := range raw["endpoints"] {
		r.Endpoints = append(r.Endpoints, unmarshal[endpoint.ClusterLoadAssignment](t, b))
	}
	for _, b := range raw["routes"] {
		r.Routes = append(r.Routes, unmarshal[route.RouteConfiguration](t, b))
	}
	return r
}

func unmarshal[T any, P interface {
	*T
	proto.Message
}](t *testing.T, b []byte) P {
	t.Helper()
	m := P(new(T))
	if err := protojson.Unmarshal(b, m); err != nil {
		t.Fatal(err)
	}
	return m
}

type validator interface{ ValidateAll() error }

// TestEveryResourceValidates runs Envoy's own field rules (protoc-gen-validate) over every resource of
// every fixture, including the typed configs packed in Any fields.
func TestEveryResourceValidates(t *testing.T) {
	for _, f := range fixtures {
		r := Translate(load(t, f.file), f.proxy, Options{})
		var all []proto.Message
		for _, x := range r.Listeners {
			all = append(all, x)
		}
		for _, x := range r.Clusters {
			all = append(all, x)
		}
		for _, x := range r.Endpoints {
			all = append(all, x)
		}
		for _, x := range r.Routes {
			all = append(all, x)
		}
		if len(all) == 0 {
			t.Fatalf("%s: no resources", f.golden())
		}
		for _, m := range all {
			validateDeep(t, fmt.Sprintf("%s %s", f.golden(), resourceName(m)), m)
		}
	}
}

func validateDeep(t *testing.T, where string, m proto.Message) {
	t.Helper()
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %T: %v", where, m, err)
		}
	} else {
		t.Errorf("%s: %T has no ValidateAll", where, m)
	}
	walkAny(m.ProtoReflect(), func(a *anypb.Any) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: unpacking %s: %v", where, a.GetTypeUrl(), err)
			return
		}
		validateDeep(t, where+" > "+a.GetTypeUrl(), inner)
	})
}

// walkAny calls fn for every Any directly or indirectly inside m (not inside the Anys themselves).
func walkAny(m protoreflect.Message, fn func(*anypb.Any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		visit := func(v protoreflect.Value) {
			msg := v.Message()
			if a, ok := msg.Interface().(*anypb.Any); ok {
				fn(a)
				return
			}
			walkAny(msg, fn)
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				visit(v.List().Get(i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { visit(mv); return true })
		case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
			visit(v)
		}
		return true
	})
}

func names[T interface{ GetName() string }](xs []T) []string {
	var out []string
	for _, x := range xs {
		out = append(out, x.GetName())
	}
	return out
}

func TestProxylessGRPC(t *testing.T) {
	r := Translate(load(t, "echo.yaml"), grpcClient, Options{})
	if d := cmp.Diff([]string{"echo.default.svc.cluster.local:8080"}, names(r.Listeners)); d != "" {
		t.Errorf("listeners (-want +got):\n%s", d)
	}
	l := r.Listeners[0]
	var h hcm.HttpConnectionManager
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(&h); err != nil {
		t.Fatalf("api listener: %v", err)
	}
	if h.GetRds().GetRouteConfigName() != "8080" || h.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("api listener RDS = %v", h.GetRds())
	}
	if d := cmp.Diff([]string{"outbound|8080||echo.default.svc.cluster.local"}, names(r.Clusters)); d != "" {
		t.Errorf("clusters (-want +got):\n%s", d)
	}
	for _, c := range r.Clusters {
		if c.GetTransportSocket() != nil || len(c.GetTypedExtensionProtocolOptions()) != 0 {
			t.Errorf("cluster %s for grpc has a transport socket or Envoy-only options", c.GetName())
		}
		if c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetType() != cluster.Cluster_EDS {
			t.Errorf("cluster %s is not EDS over ADS", c.GetName())
		}
	}
	if d := cmp.Diff([]string{"8080"}, names(r.Routes)); d != "" {
		t.Errorf("routes (-want +got):\n%s", d)
	}
}

func TestSidecar(t *testing.T) {
	s := load(t, "mesh.yaml")
	r := Translate(s, webSidecar, Options{TrustDomain: "example.org"})
	if d := cmp.Diff([]string{"inbound", "outbound"}, names(r.Listeners)); d != "" {
		t.Errorf("listeners (-want +got):\n%s", d)
	}
	wantClusters := []string{
		"blackhole",
		"inbound|8080||", "inbound|9000||",
		"outbound|5432||db.shop.svc.cluster.local",
		"outbound|6379||cache.shop.svc.cluster.local",
		"outbound|80||web.blog.svc.cluster.local",
		"outbound|80||web.shop.svc.cluster.local",
		"outbound|9000||web.shop.svc.cluster.local",
		"passthrough",
	}
	if d := cmp.Diff(wantClusters, names(r.Clusters)); d != "" {
		t.Errorf("clusters (-want +got):\n%s", d)
	}

	byName := map[string]*cluster.Cluster{}
	for _, c := range r.Clusters {
		byName[c.GetName()] = c
	}
	// web's pods all run weft-proxy: mTLS with the SPIFFE IDs of its service accounts.
	ts := byName["outbound|80||web.shop.svc.cluster.local"].GetTransportSocket()
	var up tls.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatalf("web cluster transport socket: %v", err)
	}
	common := up.GetCommonTlsContext()
	if got := common.GetTlsCertificateSdsSecretConfigs(); len(got) != 1 || got[0].GetName() != "default" {
		t.Errorf("certificate SDS = %v, want default", got)
	}
	cvc := common.GetCombinedValidationContext()
	if cvc.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" {
		t.Errorf("validation SDS = %v, want ROOTCA", cvc.GetValidationContextSdsSecretConfig())
	}
	var sans []string
	for _, m := range cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tls.SubjectAltNameMatcher_URI {
			t.Errorf("SAN matcher type %v, want URI", m.GetSanType())
		}
		sans = append(sans, m.GetMatcher().GetExact())
	}
	if d := cmp.Diff([]string{"spiffe://example.org/ns/shop/sa/web", "spiffe://example.org/ns/shop/sa/web-canary"}, sans); d != "" {
		t.Errorf("SAN matchers (-want +got):\n%s", d)
	}
	if got := byName["outbound|5432||db.shop.svc.cluster.local"].GetLbPolicy(); got != cluster.Cluster_LEAST_REQUEST {
		t.Errorf("sidecar cluster lb_policy = %v, want LEAST_REQUEST (P2C, the proxy's default)", got)
	}
	// db runs no proxy: plaintext.
	if byName["outbound|5432||db.shop.svc.cluster.local"].GetTransportSocket() != nil {
		t.Error("db cluster has a transport socket, but its endpoints run no proxy")
	}
	// grpc-admin is HTTP/2 upstream.
	if _, ok := byName["outbound|9000||web.shop.svc.cluster.local"].GetTypedExtensionProtocolOptions()[httpProtocolOptionsName]; !ok {
		t.Error("grpc port cluster has no HTTP/2 protocol options")
	}

	// Inbound: per container port an mTLS and a plaintext chain; 8080 is HTTP (targeted by web:80 "http").
	var inbound *listener.Listener
	for _, l := range r.Listeners {
		if l.GetName() == "inbound" {
			inbound = l
		}
	}
	var chains []string
	for _, fc := range inbound.GetFilterChains() {
		chains = append(chains, fmt.Sprintf("%d/%s/%s", fc.GetFilterChainMatch().GetDestinationPort().GetValue(), fc.GetFilterChainMatch().GetTransportProtocol(), fc.GetFilters()[0].GetName()))
	}
	wantChains := []string{
		"8080/tls/envoy.filters.network.http_connection_manager", "8080/raw_buffer/envoy.filters.network.http_connection_manager",
		"9000/tls/envoy.filters.network.http_connection_manager", "9000/raw_buffer/envoy.filters.network.http_connection_manager",
	}
	if d := cmp.Diff(wantChains, chains); d != "" {
		t.Errorf("inbound chains (-want +got):\n%s", d)
	}
}

func TestInboundPortsByIPWhenNameUnknown(t *testing.T) {
	s := load(t, "mesh.yaml")
	got := InboundPorts(s, Proxy{IP: "10.1.0.2", Kind: KindEnvoy}, Options{})
	want := []InboundPort{{8080, ProtocolHTTP, true, nil}, {9000, ProtocolGRPC, true, nil}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("InboundPorts by IP (-want +got):\n%s", d)
	}
}

// TestStrictInbound: with identity on, inbound ports accept only mutual TLS (no plaintext chain), unless
// the pod or its namespace says config.weft.io/inbound-policy: permissive; the pod's word wins.
func TestStrictInbound(t *testing.T) {
	proxy := Proxy{IP: "10.1.0.2", Kind: KindEnvoy}
	chains := func(s *discovery.State, o Options) []string {
		var out []string
		for _, l := range Translate(s, proxy, o).Listeners {
			if l.GetName() != InboundListenerName {
				continue
			}
			for _, fc := range l.GetFilterChains() {
				out = append(out, fmt.Sprintf("%d/%s/%s", fc.GetFilterChainMatch().GetDestinationPort().GetValue(), fc.GetFilterChainMatch().GetTransportProtocol(), forwardsTo(t, fc)))
			}
		}
		return out
	}
	strictChains := []string{"8080/tls/rds:inbound|8080", "8080/raw_buffer/blackhole", "9000/tls/rds:inbound|9000", "9000/raw_buffer/blackhole"}
	permissiveChains := []string{"8080/tls/rds:inbound|8080", "8080/raw_buffer/rds:inbound|8080", "9000/tls/rds:inbound|9000", "9000/raw_buffer/rds:inbound|9000"}
	annotate := func(s *discovery.State, nsPolicy, podPolicy string) *discovery.State {
		for i := range s.Namespaces {
			if s.Namespaces[i].Name == "shop" && nsPolicy != "" {
				s.Namespaces[i].Annotations = map[string]string{InboundPolicyAnnotation: nsPolicy}
			}
		}
		for i := range s.Pods {
			if s.Pods[i].IP == "10.1.0.2" && podPolicy != "" {
				s.Pods[i].Annotations = map[string]string{InboundPolicyAnnotation: podPolicy}
			}
		}
		return s
	}
	for _, tc := range []struct {
		name          string
		strict        bool
		nsPol, podPol string
		want          []string
	}{
		{"identity off: plaintext accepted", false, "", "", permissiveChains},
		{"identity on: strict by default", true, "", "", strictChains},
		{"namespace permissive", true, "permissive", "", permissiveChains},
		{"pod strict in a permissive namespace", true, "permissive", "strict", strictChains},
		{"pod permissive", true, "", "permissive", permissiveChains},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := annotate(load(t, "mesh.yaml"), tc.nsPol, tc.podPol)
			if d := cmp.Diff(tc.want, chains(s, Options{Strict: tc.strict})); d != "" {
				t.Errorf("inbound chains (-want +got):\n%s", d)
			}
		})
	}
}

// forwardsTo is the cluster a filter chain sends its connections or requests to.
func forwardsTo(t *testing.T, fc *listener.FilterChain) string {
	t.Helper()
	f := fc.GetFilters()[0]
	switch cfg := f.GetTypedConfig(); {
	case cfg.MessageIs(&tcpproxy.TcpProxy{}):
		var tp tcpproxy.TcpProxy
		if err := cfg.UnmarshalTo(&tp); err != nil {
			t.Fatal(err)
		}
		return tp.GetCluster()
	case cfg.MessageIs(&hcm.HttpConnectionManager{}):
		var h hcm.HttpConnectionManager
		if err := cfg.UnmarshalTo(&h); err != nil {
			t.Fatal(err)
		}
		return "rds:" + h.GetRds().GetRouteConfigName()
	}
	return f.GetName()
}

func TestEndpointsReadyOnlyWithWeightedZones(t *testing.T) {
	r := Translate(load(t, "mesh.yaml"), stranger, Options{})
	var web *endpoint.ClusterLoadAssignment
	for _, e := range r.Endpoints {
		if e.GetClusterName() == "outbound|80||web.shop.svc.cluster.local" {
			web = e
		}
	}
	if web == nil {
		t.Fatal("no CLA for web:80")
	}
	var got []string
	for _, loc := range web.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			got = append(got, fmt.Sprintf("%s w%d %s:%d %v", loc.GetLocality().GetZone(), loc.GetLoadBalancingWeight().GetValue(), sa.GetAddress(), sa.GetPortValue(), lb.GetHealthStatus()))
		}
	}
	want := []string{
		"us-east-1a w1 10.1.0.1:8080 HEALTHY",
		"us-east-1b w2 10.1.0.2:8080 HEALTHY",
		"us-east-1b w2 10.1.0.5:8080 HEALTHY",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	// A Service without endpoints still gets an (empty) assignment, so clients do not wait for one.
	if !slices.ContainsFunc(r.Endpoints, func(e *endpoint.ClusterLoadAssignment) bool {
		return e.GetClusterName() == "outbound|80||web.blog.svc.cluster.local" && len(e.GetEndpoints()) == 0
	}) {
		t.Error("no empty CLA for web.blog")
	}
}

func TestRouteDomains(t *testing.T) {
	r := Translate(load(t, "mesh.yaml"), stranger, Options{})
	domains := map[string][]string{}
	for _, rc := range r.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			domains[rc.GetName()+" "+vh.GetName()] = vh.GetDomains()
		}
	}
	want := map[string][]string{
		// "web" exists in shop and blog: the bare name would be ambiguous, so neither gets it.
		"80 web.blog.svc.cluster.local:80":       {"web.blog", "web.blog:80", "web.blog.svc", "web.blog.svc:80", "web.blog.svc.cluster.local", "web.blog.svc.cluster.local:80", "10.96.2.1", "10.96.2.1:80"},
		"80 web.shop.svc.cluster.local:80":       {"web.shop", "web.shop:80", "web.shop.svc", "web.shop.svc:80", "web.shop.svc.cluster.local", "web.shop.svc.cluster.local:80", "10.96.1.1", "10.96.1.1:80"},
		"5432 db.shop.svc.cluster.local:5432":    {"db", "db:5432", "db.shop", "db.shop:5432", "db.shop.svc", "db.shop.svc:5432", "db.shop.svc.cluster.local", "db.shop.svc.cluster.local:5432", "10.96.1.2", "10.96.1.2:5432"},
		"6379 cache.shop.svc.cluster.local:6379": {"cache", "cache:6379", "cache.shop", "cache.shop:6379", "cache.shop.svc", "cache.shop.svc:6379", "cache.shop.svc.cluster.local", "cache.shop.svc.cluster.local:6379"},
		"9000 web.shop.svc.cluster.local:9000":   {"web", "web:9000", "web.shop", "web.shop:9000", "web.shop.svc", "web.shop.svc:9000", "web.shop.svc.cluster.local", "web.shop.svc.cluster.local:9000", "10.96.1.1", "10.96.1.1:9000"},
	}
	if d := cmp.Diff(want, domains); d != "" {
		t.Errorf("virtual host domains (-want +got):\n%s", d)
	}
}

func TestProxyFromNode(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "shop", "POD_NAME": "web-0", "SERVICE_ACCOUNT": "web", "POD_IP": "10.1.0.1", "CLIENT_KIND": "weft"})
	got := ProxyFromNode(&core.Node{Id: "web-0.shop", Metadata: md})
	want := Proxy{ID: "web-0.shop", Namespace: "shop", PodName: "web-0", ServiceAccount: "web", IP: "10.1.0.1", Kind: KindWeft}
	if got != want {
		t.Errorf("ProxyFromNode = %+v, want %+v", got, want)
	}
	if p := ProxyFromNode(&core.Node{Id: "x", UserAgentName: "gRPC Go"}); p.Kind != KindGRPC {
		t.Errorf("grpc user agent: kind %q", p.Kind)
	}
	if p := ProxyFromNode(&core.Node{Id: "a.b"}); p.Kind != KindEnvoy || p.PodName != "a" || p.Namespace != "b" {
		t.Errorf("bare node: %+v", p)
	}
}

func TestPortProtocol(t *testing.T) {
	for _, tc := range []struct {
		app, name string
		want      Protocol
	}{
		{"grpc", "", ProtocolGRPC}, {"kubernetes.io/h2c", "", ProtocolHTTP2}, {"http", "tcp-x", ProtocolHTTP},
		{"", "http-web", ProtocolHTTP}, {"", "grpc-admin", ProtocolGRPC}, {"", "http2", ProtocolHTTP2},
		{"", "postgres", ProtocolTCP}, {"tcp", "http", ProtocolTCP}, {"", "httpx", ProtocolTCP},
	} {
		if got := PortProtocol(tc.app, tc.name); got != tc.want {
			t.Errorf("PortProtocol(%q, %q) = %q, want %q", tc.app, tc.name, got, tc.want)
		}
	}
}

func resourceName(m proto.Message) string {
	if c, ok := m.(*endpoint.ClusterLoadAssignment); ok {
		return c.GetClusterName()
	}
	return m.(interface{ GetName() string }).GetName()
}
