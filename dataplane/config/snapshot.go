package config

import (
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the resources weft-proxy subscribes to.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// Snapshot is one complete, immutable configuration: every accepted resource of every type. It is
// published whole and never modified afterwards; readers may hold it without locks.
type Snapshot struct {
	Listeners map[string]*Listener
	Routes    map[string]*RouteConfig
	Clusters  map[string]*Cluster
	Endpoints map[string]*ClusterLoadAssignment
	Secrets   map[string]*Secret // SDS: ROOTCA, when the control plane serves it
	// Raw holds the accepted resources as received, per type URL and name, for /config_dump.
	Raw map[string]map[string]RawResource
	// Versions holds the last accepted version per type URL.
	Versions map[string]string
	// Complete is true once listeners and clusters have arrived and every route configuration and
	// load assignment they refer to is present.
	Complete bool
}

// RawResource is one accepted resource as received, with its version.
type RawResource struct {
	Version  string
	Resource *anypb.Any
}

// LoadAssignment returns the load assignment for a cluster: the inline one of a STATIC cluster or the EDS one.
func (s *Snapshot) LoadAssignment(c *Cluster) *ClusterLoadAssignment {
	if c.Kind == ClusterStatic {
		return c.Static
	}
	return s.Endpoints[c.EDSServiceName]
}
