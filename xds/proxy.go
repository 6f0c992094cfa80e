// Package xds translates a discovery.State into Envoy xDS resources. It is pure: no I/O, no clock, no
// Kubernetes client, no gRPC; the same State and proxy always give the same resources.
package xds

import (
	"fmt"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Type URLs of the resources this package emits.
const (
	typePrefix   = "type.googleapis.com/"
	ListenerType = typePrefix + "envoy.config.listener.v3.Listener"
	ClusterType  = typePrefix + "envoy.config.cluster.v3.Cluster"
	EndpointType = typePrefix + "envoy.config.endpoint.v3.ClusterLoadAssignment"
	RouteType    = typePrefix + "envoy.config.route.v3.RouteConfiguration"
	SecretType   = typePrefix + "envoy.extensions.transport_sockets.tls.v3.Secret"
)

// Well-known names (DESIGN.md, "xDS names").
const (
	OutboundListenerName = "outbound"
	InboundListenerName  = "inbound"
	PassthroughCluster   = "passthrough"
	// BlackholeCluster has no endpoints: a connection sent there is closed. Strict inbound ports send
	// plaintext there, so that it cannot fall through to the passthrough chain and reach the app.
	BlackholeCluster = "blackhole"
	// CertificateSecret is the workload's own certificate and key, served from inside the pod.
	CertificateSecret = "default"
	// TrustBundleSecret is the mesh's trust bundle.
	TrustBundleSecret = "ROOTCA"

	OutboundListenerPort uint32 = 15001
	InboundListenerPort  uint32 = 15006
)

// ClientKind is what kind of xDS client a proxy is (node metadata CLIENT_KIND).
type ClientKind string

const (
	KindWeft  ClientKind = "weft"
	KindEnvoy ClientKind = "envoy"
	KindGRPC  ClientKind = "grpc"
)

// Proxy is what translation knows about the client asking: read from its xDS node.
type Proxy struct {
	ID             string
	Namespace      string
	PodName        string
	ServiceAccount string
	IP             string
	Kind           ClientKind
}

// ProxyFromNode reads a Proxy from an xDS node: its id (`<pod>.<namespace>`) and metadata NAMESPACE,
// POD_NAME, SERVICE_ACCOUNT, POD_IP and CLIENT_KIND. A node without CLIENT_KIND is an Envoy unless its
// user agent says grpc.
func ProxyFromNode(n *core.Node) Proxy {
	p := Proxy{ID: n.GetId()}
	fields := n.GetMetadata().GetFields()
	str := func(k string) string { return fields[k].GetStringValue() }
	p.Namespace, p.PodName, p.ServiceAccount, p.IP = str("NAMESPACE"), str("POD_NAME"), str("SERVICE_ACCOUNT"), str("POD_IP")
	if p.PodName == "" || p.Namespace == "" {
		if pod, ns, ok := strings.Cut(p.ID, "."); ok {
			if p.PodName == "" {
				p.PodName = pod
			}
			if p.Namespace == "" {
				p.Namespace = ns
			}
		}
	}
	switch k := ClientKind(strings.ToLower(str("CLIENT_KIND"))); k {
	case KindWeft, KindEnvoy, KindGRPC:
		p.Kind = k
	default:
		if strings.Contains(strings.ToLower(n.GetUserAgentName()), "grpc") {
			p.Kind = KindGRPC
		} else {
			p.Kind = KindEnvoy
		}
	}
	return p
}

// Options are the mesh-wide settings of translation.
type Options struct {
	// TrustDomain of SPIFFE IDs; "cluster.local" when empty.
	TrustDomain string
	// ClusterDomain is the DNS suffix of Services; "cluster.local" when empty.
	ClusterDomain string
	// Strict is set when the control plane runs the identity CA: inbound then requires mutual TLS
	// from a workload of the trust domain, except on pods (or in namespaces) annotated
	// config.weft.io/inbound-policy: permissive, which also accept plaintext. Without identity every
	// inbound port accepts plaintext (there is nothing to verify a client with).
	Strict bool
}

// InboundPolicyAnnotation chooses, on a pod or its namespace (the pod's wins), whether inbound
// accepts plaintext besides mutual TLS: "strict" (the default with identity on) or "permissive".
const InboundPolicyAnnotation = "config.weft.io/inbound-policy"

func (o Options) trustDomain() string {
	if o.TrustDomain == "" {
		return "cluster.local"
	}
	return o.TrustDomain
}

func (o Options) clusterDomain() string {
	if o.ClusterDomain == "" {
		return "cluster.local"
	}
	return o.ClusterDomain
}

// SPIFFEID is the identity of a workload running as service account sa in namespace ns.
func SPIFFEID(trustDomain, ns, sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, ns, sa)
}

// OutboundClusterName is `outbound|<port>||<fqdn>`.
func OutboundClusterName(port int32, fqdn string) string {
	return "outbound|" + strconv.Itoa(int(port)) + "||" + fqdn
}

// InboundClusterName is `inbound|<port>||`.
func InboundClusterName(port int32) string { return "inbound|" + strconv.Itoa(int(port)) + "||" }

// OutboundRouteName is the port, e.g. "8080".
func OutboundRouteName(port int32) string { return strconv.Itoa(int(port)) }

// InboundRouteName is `inbound|<port>`.
func InboundRouteName(port int32) string { return "inbound|" + strconv.Itoa(int(port)) }

// Protocol of a Service port, from appProtocol, else the port name's prefix; "" when unknown (TCP).
type Protocol string

const (
	ProtocolHTTP  Protocol = "http"
	ProtocolHTTP2 Protocol = "http2"
	ProtocolGRPC  Protocol = "grpc"
	ProtocolTCP   Protocol = "tcp"
)

// IsHTTP reports whether the protocol is one the HTTP connection manager handles.
func (p Protocol) IsHTTP() bool { return p == ProtocolHTTP || p == ProtocolHTTP2 || p == ProtocolGRPC }

// IsHTTP2 reports whether upstream connections should speak HTTP/2.
func (p Protocol) IsHTTP2() bool { return p == ProtocolHTTP2 || p == ProtocolGRPC }

// PortProtocol decides the protocol of a Service port (DESIGN.md, "Kubernetes").
func PortProtocol(appProtocol, name string) Protocol {
	switch strings.ToLower(appProtocol) {
	case "http", "kubernetes.io/http":
		return ProtocolHTTP
	case "http2", "kubernetes.io/h2c", "h2c":
		return ProtocolHTTP2
	case "grpc":
		return ProtocolGRPC
	case "tcp":
		return ProtocolTCP
	}
	name = strings.ToLower(name)
	for _, p := range []Protocol{ProtocolHTTP2, ProtocolHTTP, ProtocolGRPC, ProtocolTCP} {
		if name == string(p) || strings.HasPrefix(name, string(p)+"-") {
			return p
		}
	}
	return ProtocolTCP
}
