package xdsclient

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/testpki"

	// The types inside the golden resources' Any fields, for protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// fuzzTypes are the resource types weft-proxy subscribes to, indexed by the fuzzer's type byte.
var fuzzTypes = []string{config.ListenerType, config.RouteType, config.ClusterType, config.EndpointType, config.SecretType}

// FuzzDecodeResource feeds arbitrary bytes as the Any value of each resource type to the decoding and
// validation weft-proxy applies to every xDS resource (slim mirrors in dataplane/internal/xdsproto,
// then dataplane/config), and an accepted one into the client's state. Whatever the bytes, nothing
// panics; a rejected resource gives a non-empty NACK reason; an accepted one decodes to its type's
// value, the same value again, and the state takes it (wanted names, snapshot). The seeds are every
// resource of weft-control's golden translation for a weft proxy, and a trust bundle secret.
func FuzzDecodeResource(f *testing.F) {
	files, _ := filepath.Glob("../../xds/testdata/*.weft.golden.json")
	if len(files) == 0 {
		f.Fatal("no weft-control golden files in ../../xds/testdata")
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var doc map[string][]json.RawMessage
		if err := json.Unmarshal(raw, &doc); err != nil {
			f.Fatal(err)
		}
		for key, typ := range map[string]uint8{"listeners": 0, "routes": 1, "clusters": 2, "endpoints": 3} {
			for _, r := range doc[key] {
				var m proto.Message
				switch typ {
				case 0:
					m = &listenerv3.Listener{}
				case 1:
					m = &routev3.RouteConfiguration{}
				case 2:
					m = &clusterv3.Cluster{}
				case 3:
					m = &endpointv3.ClusterLoadAssignment{}
				}
				if err := protojson.Unmarshal(r, m); err != nil {
					f.Fatalf("%s: %v", file, err)
				}
				b, err := proto.Marshal(m)
				if err != nil {
					f.Fatal(err)
				}
				f.Add(typ, b)
			}
		}
	}
	ca := testpki.NewCA("mesh")
	for _, pem := range [][]byte{ca.PEM, []byte("not pem")} {
		b, err := proto.Marshal(&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: pem}}}}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(4), b)
	}
	f.Add(uint8(0), []byte{})
	f.Add(uint8(2), []byte{0x0a, 0xff})

	f.Fuzz(func(t *testing.T, typ uint8, value []byte) {
		typeURL := fuzzTypes[int(typ)%len(fuzzTypes)]
		a := &anypb.Any{TypeUrl: typeURL, Value: value}
		name, v, err := decode(typeURL, a)
		if err != nil {
			if strings.TrimSpace(nackError([]error{err})) == "" {
				t.Fatalf("%s rejected with an empty NACK reason", typeURL)
			}
			return
		}
		want := map[string]reflect.Type{
			config.ListenerType: reflect.TypeFor[*config.Listener](),
			config.RouteType:    reflect.TypeFor[*config.RouteConfig](),
			config.ClusterType:  reflect.TypeFor[*config.Cluster](),
			config.EndpointType: reflect.TypeFor[*config.ClusterLoadAssignment](),
			config.SecretType:   reflect.TypeFor[*config.Secret](),
		}[typeURL]
		if reflect.TypeOf(v) != want || reflect.ValueOf(v).IsNil() {
			t.Fatalf("%s decoded to %T (%v), want a non-nil %v", typeURL, v, v, want)
		}
		name2, v2, err := decode(typeURL, a)
		if err != nil || name2 != name || !reflect.DeepEqual(v, v2) {
			t.Fatalf("decoding %s twice differs: %q %v", typeURL, name2, err)
		}
		st := newState()
		st.resources[typeURL][name] = entry{version: "1", raw: a, value: v}
		st.received[typeURL] = true
		if dep := dependent(typeURL); dep != "" {
			added, _ := st.resubscribe(dep)
			for _, n := range added {
				if !st.subscribed[dep][n] {
					t.Fatalf("resubscribe added %q but does not hold it", n)
				}
			}
		}
		s := st.snapshot()
		if s.Raw[typeURL][name].Resource != a {
			t.Fatalf("snapshot lost %s %q", typeURL, name)
		}
	})
}
