// Package discovery turns Kubernetes objects (from the API server, or from a file in local mode) into
// a discovery.State: an immutable, complete, sorted value that the translation stage reads.
//
// This package holds the State value and the file source. It does not import client-go, so that the
// pure translation in xds/ can depend on it; the informer-based source lives in discovery/kube.
package discovery

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ProxyContainerName is the name of the sidecar container; a Pod with it runs a weft-proxy.
const ProxyContainerName = "weft-proxy"

// State is one complete, immutable view of the mesh. Every slice is sorted (see Build) so two States
// built from the same objects are equal, and a State is never modified after it is published.
type State struct {
	Namespaces []Namespace `json:"namespaces"`
	Services   []Service   `json:"services"`
	Pods       []Pod       `json:"pods"`
	// Gateway API routes (mesh profile) and ReferenceGrants, sorted by namespace and name (gamma.go).
	HTTPRoutes      []gwv1.HTTPRoute      `json:"httpRoutes,omitempty"`
	GRPCRoutes      []gwv1.GRPCRoute      `json:"grpcRoutes,omitempty"`
	ReferenceGrants []gwv1.ReferenceGrant `json:"referenceGrants,omitempty"`
	// AuthorizationPolicies of policy.weft.io, sorted by namespace and name (authz.go).
	AuthorizationPolicies []AuthorizationPolicy `json:"authorizationPolicies,omitempty"`
}

// Namespace is a Kubernetes Namespace, with what the mesh reads of it.
type Namespace struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Service is a Kubernetes Service with its EndpointSlices merged.
type Service struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	ClusterIP   string            `json:"clusterIP,omitempty"` // "" or "None" for headless Services
	Ports       []ServicePort     `json:"ports"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Endpoints of all the Service's EndpointSlices, one per address, sorted by address. Not-ready and
	// terminating endpoints are kept (with their conditions) so consumers decide.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Key is "namespace/name".
func (s Service) Key() string { return s.Namespace + "/" + s.Name }

// Headless reports whether the Service has no cluster IP.
func (s Service) Headless() bool { return s.ClusterIP == "" || s.ClusterIP == "None" }

// ServicePort is one port of a Service.
type ServicePort struct {
	Name        string `json:"name,omitempty"`
	Port        int32  `json:"port"`
	Protocol    string `json:"protocol,omitempty"` // TCP, UDP, SCTP
	AppProtocol string `json:"appProtocol,omitempty"`
	TargetPort  string `json:"targetPort,omitempty"` // number or container port name, as written
}

// Endpoint is one address that backs a Service.
type Endpoint struct {
	Address     string         `json:"address"`
	Ports       []EndpointPort `json:"ports"` // sorted by name
	Ready       bool           `json:"ready"`
	Terminating bool           `json:"terminating,omitempty"`
	Zone        string         `json:"zone,omitempty"`
	NodeName    string         `json:"nodeName,omitempty"`
	Hostname    string         `json:"hostname,omitempty"`
	Pod         string         `json:"pod,omitempty"` // name of the Pod in the Service's namespace, if any
}

// Port returns the endpoint port for the Service port named name ("" for an unnamed port).
func (e Endpoint) Port(name string) (int32, bool) {
	for _, p := range e.Ports {
		if p.Name == name {
			return p.Port, true
		}
	}
	return 0, false
}

// EndpointPort is a named port of an endpoint; the name matches a ServicePort's name.
type EndpointPort struct {
	Name string `json:"name,omitempty"`
	Port int32  `json:"port"`
}

// Pod is a Kubernetes Pod, with what the mesh reads of it.
type Pod struct {
	Namespace      string            `json:"namespace"`
	Name           string            `json:"name"`
	IP             string            `json:"ip,omitempty"`
	ServiceAccount string            `json:"serviceAccount,omitempty"`
	NodeName       string            `json:"nodeName,omitempty"`
	HasProxy       bool              `json:"hasProxy"`
	Ports          []ContainerPort   `json:"ports,omitempty"` // of the app containers (not the proxy), sorted by port
	Labels         map[string]string `json:"labels,omitempty"`
	Annotations    map[string]string `json:"annotations,omitempty"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// ContainerPort is a port an application container declares.
type ContainerPort struct {
	Name     string `json:"name,omitempty"`
	Port     int32  `json:"port"`
	Protocol string `json:"protocol,omitempty"`
}

// Service returns the Service namespace/name.
func (s *State) Service(namespace, name string) (Service, bool) {
	i, ok := slices.BinarySearchFunc(s.Services, [2]string{namespace, name}, func(sv Service, k [2]string) int {
		return cmp.Or(strings.Compare(sv.Namespace, k[0]), strings.Compare(sv.Name, k[1]))
	})
	if !ok {
		return Service{}, false
	}
	return s.Services[i], true
}

// Pod returns the Pod namespace/name.
func (s *State) Pod(namespace, name string) (Pod, bool) {
	i, ok := slices.BinarySearchFunc(s.Pods, [2]string{namespace, name}, func(p Pod, k [2]string) int {
		return cmp.Or(strings.Compare(p.Namespace, k[0]), strings.Compare(p.Name, k[1]))
	})
	if !ok {
		return Pod{}, false
	}
	return s.Pods[i], true
}

// PodByIP returns the Pod with the given IP, if exactly one has it.
func (s *State) PodByIP(ip string) (Pod, bool) {
	var found []Pod
	for _, p := range s.Pods {
		if p.IP == ip {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		return Pod{}, false
	}
	return found[0], true
}

// Namespace returns the Namespace name.
func (s *State) Namespace(name string) (Namespace, bool) {
	i, ok := slices.BinarySearchFunc(s.Namespaces, name, func(n Namespace, k string) int { return strings.Compare(n.Name, k) })
	if !ok {
		return Namespace{}, false
	}
	return s.Namespaces[i], true
}

// compareAddr orders addresses numerically when both parse, else as strings.
func compareAddr(a, b string) int {
	pa, errA := netip.ParseAddr(a)
	pb, errB := netip.ParseAddr(b)
	if errA == nil && errB == nil {
		return pa.Compare(pb)
	}
	return strings.Compare(a, b)
}
