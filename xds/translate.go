package xds

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/discovery"
)

// Resources is one proxy's configuration, each list sorted by name.
type Resources struct {
	Listeners []*listener.Listener
	Clusters  []*cluster.Cluster
	Endpoints []*endpoint.ClusterLoadAssignment
	Routes    []*route.RouteConfiguration
}

// Mesh is the part of the configuration that does not depend on who asks; the server shares it
// across proxies. Only the inbound listener (InboundListener) is per proxy.
type Mesh struct {
	// Clusters for sidecars (weft-proxy, Envoy): outbound clusters with mTLS where the endpoints run
	// a proxy, the passthrough cluster, and inbound clusters for every port of every meshed pod.
	Clusters []*cluster.Cluster
	// GRPCClusters for proxyless gRPC: the same outbound clusters without transport sockets (grpc-go
	// rejects SDS) or Envoy-only options.
	GRPCClusters []*cluster.Cluster
	Endpoints    []*endpoint.ClusterLoadAssignment
	// Routes: one per Service port number (outbound) and `inbound|<port>` for every meshed pod port.
	Routes []*route.RouteConfiguration
	// GRPCRoutes are the outbound routes as proxyless gRPC gets them (the same names; see
	// grpcRouteConfig).
	GRPCRoutes []*route.RouteConfiguration
	// Outbound is the sidecars' `outbound` listener.
	Outbound *listener.Listener
	// APIListeners for proxyless gRPC, one per Service port, named `<fqdn>:<port>`.
	APIListeners []*listener.Listener
}

// BuildMesh translates the proxy-independent part of the configuration. A Builder gives the same
// result and reuses what did not change since its previous Build.
func BuildMesh(s *discovery.State, o Options) *Mesh { return NewBuilder(o).Build(s) }

func sortMesh(m *Mesh) {
	sortByName(m.Clusters)
	sortByName(m.GRPCClusters)
	slices.SortFunc(m.Endpoints, func(a, b *endpoint.ClusterLoadAssignment) int {
		return strings.Compare(a.GetClusterName(), b.GetClusterName())
	})
	sortByName(m.Routes)
	sortByName(m.GRPCRoutes)
	sortByName(m.APIListeners)
}

// Translate gives the whole configuration of one proxy.
func Translate(s *discovery.State, p Proxy, o Options) Resources {
	m := BuildMesh(s, o)
	return m.For(s, p, o)
}

// For selects and completes the Mesh's resources for one proxy.
func (m *Mesh) For(s *discovery.State, p Proxy, o Options) Resources {
	r := Resources{Endpoints: m.Endpoints}
	if p.Kind == KindGRPC {
		r.Listeners = m.APIListeners
		r.Clusters = m.GRPCClusters
		r.Routes = m.GRPCRoutes
		return r
	}
	ports := InboundPorts(s, p, o)
	own := map[string]bool{}
	for _, ip := range ports {
		own[InboundClusterName(ip.Port)] = true
		own[InboundRouteName(ip.Port)] = true
	}
	for _, c := range m.Clusters {
		if !strings.HasPrefix(c.GetName(), "inbound|") || own[c.GetName()] {
			r.Clusters = append(r.Clusters, c)
		}
	}
	for _, rc := range m.Routes {
		if !strings.HasPrefix(rc.GetName(), "inbound|") || own[rc.GetName()] {
			r.Routes = append(r.Routes, rc)
		}
	}
	r.Listeners = []*listener.Listener{InboundListener(ports), m.Outbound}
	sortByName(r.Listeners)
	return r
}

// InboundPort is a port of a proxy's own pod, with the protocol of the Service port that targets it.
type InboundPort struct {
	Port     int32
	Protocol Protocol
	// Permissive: plaintext is accepted besides mutual TLS (see Options.Strict).
	Permissive bool
	// Authz is the pod's RBAC (authz.go), nil when nothing restricts it; the same for all its ports.
	Authz *InboundAuthz
}

// Key identifies what the inbound listener makes of the port: proxies whose ports have equal keys
// share one.
func (p InboundPort) Key() string {
	k := strconv.Itoa(int(p.Port)) + "/" + string(p.Protocol) + "/" + strconv.FormatBool(p.Permissive)
	if p.Authz != nil {
		k += "/" + p.Authz.Key
	}
	return k
}

// InboundPorts lists the ports the inbound listener of proxy p serves: its pod's container ports.
// The pod is found by namespace and name, else by POD_IP; a proxy whose pod is unknown gets none.
func InboundPorts(s *discovery.State, p Proxy, o Options) []InboundPort {
	pod, ok := s.Pod(p.Namespace, p.PodName)
	if !ok && p.IP != "" {
		pod, ok = s.PodByIP(p.IP)
	}
	if !ok {
		return nil
	}
	ports := podInboundPorts(s, pod, o)
	if az := podAuthz(s, pod, o); az != nil { // authz.go
		for i := range ports {
			ports[i].Authz = az
		}
		if len(ports) == 0 {
			ports = []InboundPort{{Authz: az}} // for the passthrough chain's RBAC
		}
	}
	return ports
}

func podInboundPorts(s *discovery.State, pod discovery.Pod, o Options) []InboundPort {
	permissive := !o.Strict || inboundPolicy(s, pod) == "permissive"
	var out []InboundPort
	for _, cp := range pod.Ports {
		if cp.Protocol != "TCP" {
			continue
		}
		out = append(out, InboundPort{Port: cp.Port, Protocol: inboundProtocol(s, pod, cp.Port), Permissive: permissive})
	}
	slices.SortFunc(out, func(a, b InboundPort) int { return cmp.Compare(a.Port, b.Port) })
	return slices.CompactFunc(out, func(a, b InboundPort) bool { return a.Port == b.Port })
}

// inboundPolicy is the pod's config.weft.io/inbound-policy annotation, else its namespace's.
func inboundPolicy(s *discovery.State, pod discovery.Pod) string {
	if v, ok := pod.Annotations[InboundPolicyAnnotation]; ok {
		return v
	}
	ns, _ := s.Namespace(pod.Namespace)
	return ns.Annotations[InboundPolicyAnnotation]
}

// inboundProtocol is the protocol of a Service port whose endpoint is this pod's port; TCP if none.
func inboundProtocol(s *discovery.State, pod discovery.Pod, port int32) Protocol {
	for _, svc := range s.Services {
		if svc.Namespace != pod.Namespace {
			continue
		}
		for _, ep := range svc.Endpoints {
			if ep.Pod != pod.Name && (pod.IP == "" || ep.Address != pod.IP) {
				continue
			}
			for _, sp := range svc.Ports {
				if n, ok := ep.Port(sp.Name); ok && n == port {
					return PortProtocol(sp.AppProtocol, sp.Name)
				}
			}
		}
	}
	return ProtocolTCP
}

func sortByName[T interface{ GetName() string }](xs []T) {
	slices.SortFunc(xs, func(a, b T) int { return strings.Compare(a.GetName(), b.GetName()) })
}

func fqdn(svc discovery.Service, o Options) string {
	return svc.Name + "." + svc.Namespace + ".svc." + o.clusterDomain()
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("xds: marshaling " + string(proto.MessageName(m)) + ": " + err.Error())
	}
	return a
}
