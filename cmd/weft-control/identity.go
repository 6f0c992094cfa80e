package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/client-go/kubernetes"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/kubeauth"
	"github.com/weftmesh/weft/xds/server"
)

// identityConfig is the identity part of weft-control's flags. Identity is on when --identity-dir is set.
type identityConfig struct {
	addr   string        // --identity-addr: Certify and xDS over mTLS
	dir    string        // --identity-dir: what `weft identity bootstrap` wrote
	tokens string        // --identity-tokens: local mode's stand-in for TokenReview
	leaf   time.Duration // --identity-leaf-lifetime: lifetime of issued workload certificates
}

// identityPlane is the running CA: the Certify service and xDS over mTLS on one port.
type identityPlane struct {
	ca  *identity.CA
	g   *grpc.Server
	lis net.Listener
}

// startIdentity loads the CA (a broken directory fails here, before anything listens), and prepares the
// mTLS port. In Kubernetes mode tokens are checked with TokenReview and each issued certificate is recorded
// as an Event; in local mode the tokens file stands in.
func startIdentity(ctx context.Context, c identityConfig, trustDomain string, kube kubernetes.Interface, xdsSrv *server.Server, limits serverLimits, log *slog.Logger) (*identityPlane, error) {
	if c.leaf <= 0 {
		return nil, fmt.Errorf("--identity-leaf-lifetime %v: want a positive duration such as 24h or 10s", c.leaf)
	}
	ca, err := identity.NewCA(trustDomain, identity.WithLifetime(c.leaf))
	if err != nil {
		return nil, fmt.Errorf("--trust-domain: %w", err)
	}
	if err := identity.LoadDirInto(ca, c.dir); err != nil {
		return nil, fmt.Errorf("--identity-dir: %w", err)
	}
	var auth identity.Authenticator
	var opts []identity.ServerOption
	opts = append(opts, identity.WithLogger(log), identity.WithMetrics(xdsSrv.Registry()))
	switch {
	case c.tokens != "":
		tokens, err := identity.LoadStaticTokens(c.tokens)
		if err != nil {
			return nil, fmt.Errorf("--identity-tokens: %w", err)
		}
		auth = tokens
	case kube != nil:
		auth = kubeauth.TokenReviewer{Client: kube}
		rec := kubeauth.NewEventRecorder(kube, "weft-control")
		go func() { <-ctx.Done(); rec.Shutdown() }()
		opts = append(opts, identity.WithRecorder(rec))
	default:
		return nil, errors.New("--identity-dir in local mode needs --identity-tokens (lines token,namespace,serviceaccount)")
	}
	lis, err := listen("--identity-addr", c.addr)
	if err != nil {
		return nil, err
	}

	ns := ownNamespace()
	self := identity.ID{TrustDomain: trustDomain, Namespace: ns, ServiceAccount: "weft-control"}
	host, _, _ := net.SplitHostPort(c.addr)
	// The proxies check the name of the injector's controlPlaneAddr: weft-control.<namespace>.svc.
	names := []string{"weft-control." + ns + ".svc", "weft-control." + ns + ".svc.cluster.local", "localhost", "127.0.0.1"}
	if host != "" && !strings.HasPrefix(host, "0.") && host != "::" {
		names = append(names, host)
	}
	g := grpc.NewServer(append(limits.grpcServerOptions(),
		grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(self, names...))),
		grpc.StreamInterceptor(authorizeXDS(trustDomain)),
		grpc.UnaryInterceptor(authorizeFetch(trustDomain)),
	)...)
	identity.NewServer(ca, auth, opts...).Register(g)
	xdsSrv.Register(g) // also registers reflection and CSDS

	go identity.WatchDir(ctx, ca, c.dir, time.Minute, log) //nolint:errcheck // logs its own failures
	go xdsSrv.FollowTrustBundle(ctx, ca.Changed, func() []byte {
		if iss := ca.Issuer(); iss != nil {
			return iss.BundlePEM()
		}
		return nil
	})
	return &identityPlane{ca: ca, g: g, lis: lis}, nil
}

// authorizeXDS lets an xDS stream on the mTLS port through only when its client certificate is the
// workload of the node it asks config for (checkNode): no proxy reads another namespace's config. It reads
// the first request itself, before go-control-plane sees the stream, so a refusal reaches the client as a
// status. Other Envoy services (CSDS) need a certificate of the trust domain; Certify and reflection need
// none (a workload calls Certify before it has a certificate).
func authorizeXDS(trustDomain string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !strings.HasPrefix(info.FullMethod, "/envoy.service.") {
			return handler(srv, ss)
		}
		peerID, err := meshPeer(ss.Context(), trustDomain)
		if err != nil {
			return err
		}
		first := firstRequest(info.FullMethod)
		if first == nil {
			return handler(srv, ss)
		}
		if err := ss.RecvMsg(first); err != nil {
			return err
		}
		node := first.(interface{ GetNode() *core.Node }).GetNode()
		if err := checkNode(trustDomain, peerID, node.GetId(), node.GetMetadata()); err != nil {
			return err
		}
		return handler(srv, &replayStream{ServerStream: ss, first: first})
	}
}

// authorizeFetch is authorizeXDS for the unary Fetch* methods of the per-type services.
func authorizeFetch(trustDomain string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !strings.HasPrefix(info.FullMethod, "/envoy.service.") {
			return handler(ctx, req)
		}
		peerID, err := meshPeer(ctx, trustDomain)
		if err != nil {
			return nil, err
		}
		if dr, ok := req.(*discoverypb.DiscoveryRequest); ok {
			if err := checkNode(trustDomain, peerID, dr.GetNode().GetId(), dr.GetNode().GetMetadata()); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

func meshPeer(ctx context.Context, trustDomain string) (identity.ID, error) {
	id, err := identity.PeerID(ctx)
	if err != nil {
		return id, status.Errorf(codes.Unauthenticated, "xDS on the mTLS port needs a workload certificate: %v", err)
	}
	if id.TrustDomain != trustDomain {
		return id, status.Errorf(codes.PermissionDenied, "certificate %s is not of trust domain %s", id, trustDomain)
	}
	return id, nil
}

// firstRequest is an empty first message of an xDS stream method, or nil for other streams (CSDS).
func firstRequest(fullMethod string) proto.Message {
	if strings.HasPrefix(fullMethod, "/envoy.service.status.") {
		return nil
	}
	name := fullMethod[strings.LastIndex(fullMethod, "/")+1:]
	switch {
	case strings.HasPrefix(name, "Delta"):
		return &discoverypb.DeltaDiscoveryRequest{}
	case strings.HasPrefix(name, "Stream"):
		return &discoverypb.DiscoveryRequest{}
	}
	return nil
}

// replayStream hands the already-read first request to the handler, then reads on.
type replayStream struct {
	grpc.ServerStream
	first proto.Message
}

func (s *replayStream) RecvMsg(m any) error {
	if s.first != nil {
		proto.Merge(m.(proto.Message), s.first)
		s.first = nil
		return nil
	}
	return s.ServerStream.RecvMsg(m)
}

// checkNode is the authorization decision, a function of values: the node id is <pod>.<namespace>, its
// metadata names the SERVICE_ACCOUNT (and, if it says, the same NAMESPACE), and that workload is the peer's.
func checkNode(trustDomain string, peer identity.ID, nodeID string, md *structpb.Struct) error {
	field := func(k string) string { return md.GetFields()[k].GetStringValue() }
	pod, ns, ok := strings.Cut(nodeID, ".")
	if !ok || pod == "" || ns == "" || strings.Contains(ns, ".") {
		return status.Errorf(codes.PermissionDenied, "node id %q: want <pod>.<namespace>", nodeID)
	}
	if mdNS := field("NAMESPACE"); mdNS != "" && mdNS != ns {
		return status.Errorf(codes.PermissionDenied, "node %q: metadata NAMESPACE %q differs from the node id", nodeID, mdNS)
	}
	sa := field("SERVICE_ACCOUNT")
	if sa == "" {
		return status.Errorf(codes.PermissionDenied, "node %q: metadata SERVICE_ACCOUNT is required on the mTLS port", nodeID)
	}
	if want := (identity.ID{TrustDomain: trustDomain, Namespace: ns, ServiceAccount: sa}); peer != want {
		return status.Errorf(codes.PermissionDenied, "client certificate is %s but node %q asks config for %s", peer, nodeID, want)
	}
	return nil
}

// namespaceFile is where a Pod finds its own namespace (the ServiceAccount volume).
var namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// ownNamespace is the namespace weft-control runs in: POD_NAMESPACE, else the ServiceAccount volume's,
// else weft (the chart's default).
func ownNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(namespaceFile); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	return "weft"
}
