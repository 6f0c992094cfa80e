package xds

import (
	"net/netip"
	"strconv"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/weftmesh/weft/discovery"
)

// outboundRoutes gives one RouteConfiguration per Service port number, named by the port, with a
// virtual host per Service on that port. Domains: name, name.ns, name.ns.svc, the FQDN and the
// ClusterIP, each also with ":port". The bare name is left out when two namespaces have a Service of
// that name on the port (Envoy rejects duplicate domains; callers then use name.ns). The Gateway API
// routes attached to a Service port (gamma) replace its default route.
func outboundRoutes(s *discovery.State, o Options, gamma gammaTable) []*route.RouteConfiguration {
	type entry struct {
		svc discovery.Service
		sp  discovery.ServicePort
	}
	byPort := map[int32][]entry{}
	var ports []int32
	for _, svc := range s.Services { // sorted by namespace, name
		for _, sp := range svc.Ports {
			if sp.Protocol != "TCP" {
				continue
			}
			if _, ok := byPort[sp.Port]; !ok {
				ports = append(ports, sp.Port)
			}
			byPort[sp.Port] = append(byPort[sp.Port], entry{svc, sp})
		}
	}
	var out []*route.RouteConfiguration
	for _, port := range ports {
		names := map[string]int{}
		for _, e := range byPort[port] {
			names[e.svc.Name]++
		}
		rc := &route.RouteConfiguration{Name: OutboundRouteName(port)}
		for _, e := range byPort[port] {
			f := fqdn(e.svc, o)
			hosts := []string{e.svc.Name + "." + e.svc.Namespace, e.svc.Name + "." + e.svc.Namespace + ".svc", f}
			if names[e.svc.Name] == 1 {
				hosts = append([]string{e.svc.Name}, hosts...)
			}
			if !e.svc.Headless() {
				ip := e.svc.ClusterIP
				if a, err := netip.ParseAddr(ip); err == nil && a.Is6() {
					ip = "[" + ip + "]"
				}
				hosts = append(hosts, ip)
			}
			p := ":" + strconv.Itoa(int(port))
			domains := make([]string, 0, 2*len(hosts))
			for _, h := range hosts {
				domains = append(domains, h, h+p)
			}
			rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{
				Name:    f + p,
				Domains: domains,
				Routes:  gamma.vhostRoutes(e.svc, port, routeTo(OutboundClusterName(port, f))),
			})
		}
		out = append(out, rc)
	}
	return out
}

// inboundRoute is `inbound|<port>`: everything to the application's port.
func inboundRoute(port int32) *route.RouteConfiguration {
	name := InboundRouteName(port)
	return &route.RouteConfiguration{
		Name: name,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes:  []*route.Route{routeTo(InboundClusterName(port))},
		}},
	}
}

func routeTo(cluster string) *route.Route {
	return &route.Route{
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: cluster},
		}},
	}
}
