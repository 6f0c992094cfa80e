package discovery

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weftmesh/weft/discovery/authz"
)

// Objects is a set of Kubernetes objects to build a State from. Order does not matter.
type Objects struct {
	Namespaces     []*corev1.Namespace
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Pods           []*corev1.Pod
	// Gateway API objects (gamma.go).
	HTTPRoutes      []*gwv1.HTTPRoute
	GRPCRoutes      []*gwv1.GRPCRoute
	ReferenceGrants []*gwv1.ReferenceGrant
	// AuthorizationPolicies of policy.weft.io (authz.go).
	AuthorizationPolicies []*authz.AuthorizationPolicy
	// Ignored names the documents of other kinds that ParseObjects skipped ("document 3 (Deployment
	// default/web)"), for a warning: they may share the file, but they may also be a typo of a kind.
	Ignored []string
}

// Build turns objects into a State. It is a pure function: the same objects in any order give an
// equal State. EndpointSlices are merged into their Service (label kubernetes.io/service-name); an
// address that appears in several slices is kept once, ready if any slice says so.
func Build(objs Objects) *State {
	s := &State{}
	for _, n := range objs.Namespaces {
		if n == nil {
			continue
		}
		s.Namespaces = append(s.Namespaces, Namespace{Name: n.Name, Labels: cloneMap(n.Labels), Annotations: cloneMap(n.Annotations)})
	}
	slices.SortFunc(s.Namespaces, func(a, b Namespace) int { return strings.Compare(a.Name, b.Name) })
	s.Namespaces = slices.CompactFunc(s.Namespaces, func(a, b Namespace) bool { return a.Name == b.Name })

	slicesBySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range objs.EndpointSlices {
		if es == nil {
			continue
		}
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		key := es.Namespace + "/" + svc
		slicesBySvc[key] = append(slicesBySvc[key], es)
	}

	for _, sv := range objs.Services {
		if sv == nil {
			continue
		}
		out := Service{
			Namespace:   sv.Namespace,
			Name:        sv.Name,
			ClusterIP:   sv.Spec.ClusterIP,
			Annotations: cloneMap(sv.Annotations),
		}
		for _, p := range sv.Spec.Ports {
			sp := ServicePort{Name: p.Name, Port: p.Port, Protocol: string(p.Protocol), TargetPort: p.TargetPort.String()}
			if sp.Protocol == "" {
				sp.Protocol = "TCP"
			}
			if p.AppProtocol != nil {
				sp.AppProtocol = *p.AppProtocol
			}
			if p.TargetPort.String() == "0" || p.TargetPort.String() == "" {
				sp.TargetPort = ""
			}
			out.Ports = append(out.Ports, sp)
		}
		slices.SortFunc(out.Ports, func(a, b ServicePort) int {
			return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(a.Protocol, b.Protocol))
		})
		out.Endpoints = mergeSlices(slicesBySvc[sv.Namespace+"/"+sv.Name])
		s.Services = append(s.Services, out)
	}
	slices.SortFunc(s.Services, func(a, b Service) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	s.Services = slices.CompactFunc(s.Services, func(a, b Service) bool { return a.Key() == b.Key() })

	for _, p := range objs.Pods {
		if p == nil {
			continue
		}
		s.Pods = append(s.Pods, podFrom(p))
	}
	slices.SortFunc(s.Pods, func(a, b Pod) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	s.Pods = slices.CompactFunc(s.Pods, func(a, b Pod) bool { return a.Key() == b.Key() })
	buildGAMMA(objs, s)
	s.AuthorizationPolicies = buildPolicies(objs.AuthorizationPolicies)
	return s
}

func podFrom(p *corev1.Pod) Pod {
	out := Pod{
		Namespace:      p.Namespace,
		Name:           p.Name,
		IP:             p.Status.PodIP,
		ServiceAccount: p.Spec.ServiceAccountName,
		NodeName:       p.Spec.NodeName,
		Labels:         cloneMap(p.Labels),
		Annotations:    cloneMap(p.Annotations),
	}
	if out.ServiceAccount == "" {
		out.ServiceAccount = "default"
	}
	for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		if c.Name == ProxyContainerName {
			out.HasProxy = true
			continue
		}
		for _, cp := range c.Ports {
			proto := string(cp.Protocol)
			if proto == "" {
				proto = "TCP"
			}
			out.Ports = append(out.Ports, ContainerPort{Name: cp.Name, Port: cp.ContainerPort, Protocol: proto})
		}
	}
	slices.SortFunc(out.Ports, func(a, b ContainerPort) int {
		return cmp.Or(cmp.Compare(a.Port, b.Port), strings.Compare(a.Protocol, b.Protocol), strings.Compare(a.Name, b.Name))
	})
	out.Ports = slices.CompactFunc(out.Ports, func(a, b ContainerPort) bool { return a.Port == b.Port && a.Protocol == b.Protocol })
	return out
}

// mergeSlices merges the endpoints of one Service's slices: one Endpoint per address, sorted.
func mergeSlices(eps []*discoveryv1.EndpointSlice) []Endpoint {
	// Visit slices in name order so the merge is deterministic whatever order they came in.
	eps = slices.Clone(eps)
	slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	byAddr := map[string]*Endpoint{}
	for _, es := range eps {
		if es.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		var ports []EndpointPort
		for _, p := range es.Ports {
			if p.Port == nil {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports = append(ports, EndpointPort{Name: name, Port: *p.Port})
		}
		for _, e := range es.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
			for _, addr := range e.Addresses {
				ep, seen := byAddr[addr]
				if !seen {
					ep = &Endpoint{Address: addr, Ready: ready, Terminating: terminating}
					if e.Zone != nil {
						ep.Zone = *e.Zone
					}
					if e.NodeName != nil {
						ep.NodeName = *e.NodeName
					}
					if e.Hostname != nil {
						ep.Hostname = *e.Hostname
					}
					if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
						ep.Pod = e.TargetRef.Name
					}
					byAddr[addr] = ep
				} else {
					ep.Ready = ep.Ready || ready
					ep.Terminating = ep.Terminating && terminating
				}
				for _, p := range ports {
					if _, ok := ep.Port(p.Name); !ok {
						ep.Ports = append(ep.Ports, p)
					}
				}
			}
		}
	}
	out := make([]Endpoint, 0, len(byAddr))
	for _, ep := range byAddr {
		slices.SortFunc(ep.Ports, func(a, b EndpointPort) int { return strings.Compare(a.Name, b.Name) })
		out = append(out, *ep)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return compareAddr(a.Address, b.Address) })
	if len(out) == 0 {
		return nil
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}
