package config

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// Resources are read with slim, wire-compatible mirrors of Envoy's messages (dataplane/internal/xdsproto)
// rather than go-control-plane's generated API, which would add megabytes of resident binary pages to
// the sidecar. Any payloads are dispatched by their type URL string.

// Decode validates and decodes one xDS resource of type typeURL (ListenerType, RouteType, ClusterType,
// EndpointType or SecretType) as it came off an ADS stream. It returns the resource's own name and its
// decoded form: *Listener, *RouteConfig, *Cluster, *ClusterLoadAssignment or *Secret.
func Decode(typeURL string, a *anypb.Any) (string, any, error) {
	if a.GetTypeUrl() != typeURL {
		return "", nil, fmt.Errorf("resource of type %q in a %q response", a.GetTypeUrl(), typeURL)
	}
	b := a.GetValue()
	switch typeURL {
	case ListenerType:
		var m xp.Listener
		if err := proto.Unmarshal(b, &m); err != nil {
			return "", nil, fmt.Errorf("listener: %w", err)
		}
		v, err := decodeListenerResource(&m)
		return m.GetName(), v, err
	case RouteType:
		var m xp.RouteConfiguration
		if err := proto.Unmarshal(b, &m); err != nil {
			return "", nil, fmt.Errorf("route configuration: %w", err)
		}
		v, err := decodeRouteConfig(&m)
		return m.GetName(), v, err
	case ClusterType:
		var m xp.Cluster
		if err := proto.Unmarshal(b, &m); err != nil {
			return "", nil, fmt.Errorf("cluster: %w", err)
		}
		v, err := decodeClusterResource(&m)
		return m.GetName(), v, err
	case SecretType:
		var m xp.Secret
		if err := proto.Unmarshal(b, &m); err != nil {
			return "", nil, fmt.Errorf("secret: %w", err)
		}
		v, err := decodeSecret(&m)
		return m.GetName(), v, err
	case EndpointType:
		var m xp.ClusterLoadAssignment
		if err := proto.Unmarshal(b, &m); err != nil {
			return "", nil, fmt.Errorf("cluster load assignment: %w", err)
		}
		if m.GetClusterName() == "" {
			return "", nil, errors.New("cluster load assignment has no cluster_name")
		}
		v, err := decodeLoadAssignment(&m)
		return m.GetClusterName(), v, err
	}
	return "", nil, fmt.Errorf("unexpected type %q", typeURL)
}

// decodeMessage reads m, an Envoy message of any generated package, into its slim mirror through the
// wire encoding, as weft-proxy reads it off an ADS stream.
func decodeMessage(m proto.Message, into proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, into)
}

// DecodeCluster validates and decodes an envoy.config.cluster.v3.Cluster, given as a message of any
// generated package (go-control-plane's, say): it is read through its wire encoding.
func DecodeCluster(c proto.Message) (*Cluster, error) {
	var m xp.Cluster
	if err := decodeMessage(c, &m); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return decodeClusterResource(&m)
}

// DecodeListener validates and decodes an envoy.config.listener.v3.Listener (see DecodeCluster).
func DecodeListener(l proto.Message) (*Listener, error) {
	var m xp.Listener
	if err := decodeMessage(l, &m); err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	return decodeListenerResource(&m)
}

// DecodeRouteConfig validates and decodes an envoy.config.route.v3.RouteConfiguration (see DecodeCluster).
func DecodeRouteConfig(rc proto.Message) (*RouteConfig, error) {
	var m xp.RouteConfiguration
	if err := decodeMessage(rc, &m); err != nil {
		return nil, fmt.Errorf("route configuration: %w", err)
	}
	return decodeRouteConfig(&m)
}

// DecodeLoadAssignment validates and decodes an envoy.config.endpoint.v3.ClusterLoadAssignment (see
// DecodeCluster).
func DecodeLoadAssignment(cla proto.Message) (*ClusterLoadAssignment, error) {
	var m xp.ClusterLoadAssignment
	if err := decodeMessage(cla, &m); err != nil {
		return nil, fmt.Errorf("cluster load assignment: %w", err)
	}
	return decodeLoadAssignment(&m)
}

// DecodeSecret validates and decodes an envoy.extensions.transport_sockets.tls.v3.Secret (see
// DecodeCluster).
func DecodeSecret(s proto.Message) (*Secret, error) {
	var m xp.Secret
	if err := decodeMessage(s, &m); err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	return decodeSecret(&m)
}

// slimTypes maps the Envoy type names weft-proxy reads, at the top level or inside an Any, to their
// slim mirrors. The listener filters and the router carry no configuration the proxy reads.
var slimTypes = map[protoreflect.FullName]protoreflect.MessageType{
	"envoy.config.listener.v3.Listener":                                                 (*xp.Listener)(nil).ProtoReflect().Type(),
	"envoy.config.route.v3.RouteConfiguration":                                          (*xp.RouteConfiguration)(nil).ProtoReflect().Type(),
	"envoy.config.cluster.v3.Cluster":                                                   (*xp.Cluster)(nil).ProtoReflect().Type(),
	"envoy.config.endpoint.v3.ClusterLoadAssignment":                                    (*xp.ClusterLoadAssignment)(nil).ProtoReflect().Type(),
	"envoy.extensions.transport_sockets.tls.v3.Secret":                                  (*xp.Secret)(nil).ProtoReflect().Type(),
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": (*xp.HttpConnectionManager)(nil).ProtoReflect().Type(),
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":                            (*xp.TcpProxy)(nil).ProtoReflect().Type(),
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":                      (*xp.UpstreamTlsContext)(nil).ProtoReflect().Type(),
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext":                    (*xp.DownstreamTlsContext)(nil).ProtoReflect().Type(),
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":                            (*xp.HttpProtocolOptions)(nil).ProtoReflect().Type(),
}

// JSONResolver resolves the type URLs of the Envoy resources in a Snapshot's Raw (and of the Anys nested
// in them) to the slim messages weft-proxy reads, for protojson (/config_dump):
//
//	protojson.MarshalOptions{Resolver: config.JSONResolver}
//
// The JSON shows the fields the proxy reads; a type it neither reads nor links (a listener filter, the
// router) shows as its "@type" alone.
var JSONResolver interface {
	protoregistry.MessageTypeResolver
	protoregistry.ExtensionTypeResolver
} = jsonResolver{}

type jsonResolver struct{}

func (jsonResolver) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, ok := slimTypes[n]; ok {
		return mt, nil
	}
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(n); err == nil {
		return mt, nil
	}
	return (*xp.Present)(nil).ProtoReflect().Type(), nil
}

func (r jsonResolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	return r.FindMessageByName(protoreflect.FullName(url[strings.LastIndexByte(url, '/')+1:]))
}

func (jsonResolver) FindExtensionByName(n protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(n)
}

func (jsonResolver) FindExtensionByNumber(m protoreflect.FullName, f protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(m, f)
}
