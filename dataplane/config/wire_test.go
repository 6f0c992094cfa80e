package config_test

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// TestWireCompatible checks every field of the slim messages weft-proxy decodes xDS with against
// go-control-plane's descriptors of the same Envoy messages: same number, kind and cardinality, the
// same oneof, and enum values of the same numbers. A field typed Present stands for any message. So
// the bytes of a real Envoy message decode into the slim one field for field.
func TestWireCompatible(t *testing.T) {
	for _, p := range []struct{ slim, envoy proto.Message }{
		{&xp.Cluster{}, &clusterv3.Cluster{}},
		{&xp.ClusterLoadAssignment{}, &endpointv3.ClusterLoadAssignment{}},
		{&xp.Listener{}, &listenerv3.Listener{}},
		{&xp.RouteConfiguration{}, &routev3.RouteConfiguration{}},
		{&xp.HttpConnectionManager{}, &hcmv3.HttpConnectionManager{}},
		{&xp.TcpProxy{}, &tcpproxyv3.TcpProxy{}},
		{&xp.UpstreamTlsContext{}, &tlsv3.UpstreamTlsContext{}},
		{&xp.DownstreamTlsContext{}, &tlsv3.DownstreamTlsContext{}},
		{&xp.Secret{}, &tlsv3.Secret{}},
		{&xp.HttpProtocolOptions{}, &httpv3.HttpProtocolOptions{}},
		{&xp.DiscoveryRequest{}, &discoveryv3.DiscoveryRequest{}},
		{&xp.DiscoveryResponse{}, &discoveryv3.DiscoveryResponse{}},
		{&xp.DeltaDiscoveryRequest{}, &discoveryv3.DeltaDiscoveryRequest{}},
		{&xp.DeltaDiscoveryResponse{}, &discoveryv3.DeltaDiscoveryResponse{}},
		{&xp.Status{}, &status.Status{}},
	} {
		checkMessage(t, p.slim.ProtoReflect().Descriptor(), p.envoy.ProtoReflect().Descriptor(), map[protoreflect.FullName]bool{})
	}
}

func checkMessage(t *testing.T, slim, envoy protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) {
	t.Helper()
	if seen[slim.FullName()] {
		return
	}
	seen[slim.FullName()] = true
	if slim.FullName() == (&xp.Present{}).ProtoReflect().Descriptor().FullName() {
		return
	}
	fs := slim.Fields()
	for i := range fs.Len() {
		sf := fs.Get(i)
		ef := envoy.Fields().ByName(sf.Name())
		where := string(envoy.FullName()) + "." + string(sf.Name())
		if ef == nil {
			t.Errorf("%s: no such field in Envoy's message", where)
			continue
		}
		if sf.Number() != ef.Number() || sf.Kind() != ef.Kind() || sf.Cardinality() != ef.Cardinality() || sf.IsMap() != ef.IsMap() {
			t.Errorf("%s: slim %d %v %v, Envoy %d %v %v", where, sf.Number(), sf.Cardinality(), sf.Kind(), ef.Number(), ef.Cardinality(), ef.Kind())
			continue
		}
		so, eo := sf.ContainingOneof(), ef.ContainingOneof()
		if (so != nil) != (eo != nil) || so != nil && so.Name() != eo.Name() {
			t.Errorf("%s: oneof differs", where)
		}
		switch {
		case sf.IsMap():
			if sf.MapValue().Kind() != ef.MapValue().Kind() {
				t.Errorf("%s: map value kinds differ", where)
			} else if sf.MapValue().Message() != nil {
				checkMessage(t, sf.MapValue().Message(), ef.MapValue().Message(), seen)
			}
		case sf.Message() != nil:
			if !strings.HasPrefix(string(sf.Message().FullName()), "weft.dataplane.envoy.v3.") && sf.Message().FullName() != ef.Message().FullName() {
				t.Errorf("%s: slim %s, Envoy %s", where, sf.Message().FullName(), ef.Message().FullName())
			}
			checkMessage(t, sf.Message(), ef.Message(), seen)
		case sf.Enum() != nil:
			vs := sf.Enum().Values()
			for j := range vs.Len() {
				ev := ef.Enum().Values().ByName(vs.Get(j).Name())
				if ev == nil || ev.Number() != vs.Get(j).Number() {
					t.Errorf("%s: enum value %s differs", where, vs.Get(j).Name())
				}
			}
		}
	}
}

// TestUnsupportedOneofsComplete: a CommonTlsContext whose validation context is not from SDS is
// refused, so every kind of validation context Envoy has must be known to the slim message (an unknown
// one would read as none).
func TestUnsupportedOneofsComplete(t *testing.T) {
	slim := (&xp.CommonTlsContext{}).ProtoReflect().Descriptor().Oneofs().ByName("validation_context_type").Fields()
	envoy := (&tlsv3.CommonTlsContext{}).ProtoReflect().Descriptor().Oneofs().ByName("validation_context_type").Fields()
	for i := range envoy.Len() {
		if slim.ByName(envoy.Get(i).Name()) == nil {
			t.Errorf("CommonTlsContext.validation_context_type: the slim message lacks %s", envoy.Get(i).Name())
		}
	}
}
