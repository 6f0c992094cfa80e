package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/grpcwire"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fakeProxyTap serves Tap.Observe as a proxy's admin port does (h2c), answering each call with one event
// naming the request's path match, and returns its port.
func fakeProxyTap(t *testing.T) int {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("POST "+tapv1.ObserveMethod, grpcwire.StreamHandler(func(s *grpcwire.ServerStream) error {
		req := &tapv1.ObserveRequest{}
		if err := s.Recv(req); err != nil {
			return err
		}
		return s.Send(&tapv1.ObserveResponse{Event: &tapv1.TapEvent{Proxy: "fake", Request: &tapv1.Request{Method: "GET", Path: req.GetMatch().GetPathPrefix() + "1"}}})
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetUnencryptedHTTP2(true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

// serveRelay serves the relay's Tap on loopback and returns a client connection.
func serveRelay(t *testing.T, r *tapRelay) *grpc.ClientConn {
	t.Helper()
	g := grpc.NewServer()
	r.register(g)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient("passthrough:///"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// observe calls Tap.Observe and returns the paths of the events until the stream ends.
func observe(ctx context.Context, cc *grpc.ClientConn, req *tapv1.ObserveRequest) ([]string, error) {
	s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, tapv1.ObserveMethod)
	if err != nil {
		return nil, err
	}
	if err := s.SendMsg(req); err != nil {
		return nil, err
	}
	_ = s.CloseSend()
	var paths []string
	for {
		r := &tapv1.ObserveResponse{}
		if err := s.RecvMsg(r); err == io.EOF {
			return paths, nil
		} else if err != nil {
			return paths, err
		}
		if r.GetEvent() != nil {
			paths = append(paths, r.GetEvent().GetRequest().GetPath())
		}
	}
}

// TestTapAuthorizedBySubjectAccessReview: against a real apiserver, a user (here a ServiceAccount's
// token) allowed to get pods in namespace A taps A, and is refused B; no token and a forged one are
// unauthenticated.
func TestTapAuthorizedBySubjectAccessReview(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	suffix := fmt.Sprint(rand.IntN(1e6))
	nsA, nsB := "tap-a-"+suffix, "tap-b-"+suffix
	env.CreateNamespace(t, nsA, nil)
	env.CreateNamespace(t, nsB, nil)
	c := env.Client
	if _, err := c.CoreV1().ServiceAccounts(nsA).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "viewer"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().Roles(nsA).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().RoleBindings(nsA).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "viewer-reads-pods"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-reader"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "viewer", Namespace: nsA}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := c.CoreV1().ServiceAccounts(nsA).CreateToken(ctx, "viewer", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := tr.Status.Token

	port := fakeProxyTap(t)
	old := tapAdminPort
	tapAdminPort = port
	t.Cleanup(func() { tapAdminPort = old })
	relay := newTapRelay(c, "cluster.local", quietLog())
	relay.state.Store(&discovery.State{Pods: []discovery.Pod{
		{Namespace: nsA, Name: "web-0", IP: "127.0.0.1", HasProxy: true, ServiceAccount: "web"},
		{Namespace: nsB, Name: "web-0", IP: "127.0.0.1", HasProxy: true, ServiceAccount: "web"},
	}})
	cc := serveRelay(t, relay)
	req := func(ns string) *tapv1.ObserveRequest {
		return &tapv1.ObserveRequest{Target: &tapv1.Target{Namespace: ns, Kind: tapv1.Target_KIND_POD, Name: "web-0"}, Match: &tapv1.Match{PathPrefix: "/ok/"}}
	}
	withToken := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}

	// The SubjectAccessReview can lag the RoleBinding's creation (RBAC's cache): poll.
	deadline := time.Now().Add(20 * time.Second)
	for {
		paths, err := observe(withToken(token), cc, req(nsA))
		if err == nil {
			if len(paths) != 1 || paths[0] != "/ok/1" {
				t.Fatalf("tap of %s: events %v, want the proxy's one event /ok/1", nsA, paths)
			}
			break
		}
		if status.Code(err) != codes.PermissionDenied || time.Now().After(deadline) {
			t.Fatalf("tap of %s by a user who may get its pods: %v", nsA, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		ns   string
		code codes.Code
		msg  string
	}{
		{"other namespace", withToken(token), nsB, codes.PermissionDenied, "system:serviceaccount:" + nsA + ":viewer may not get pods in namespace " + nsB + ", so may not tap it"},
		{"no token", ctx, nsA, codes.Unauthenticated, "tap needs the caller's Kubernetes bearer token"},
		{"forged token", withToken("not-a-token"), nsA, codes.Unauthenticated, "the bearer token is not valid for this cluster"},
	} {
		_, err := observe(tc.ctx, cc, req(tc.ns))
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %v containing %q", tc.name, err, tc.code, tc.msg)
		}
	}
}

// TestTapTargets: the target resolves to meshed pods; every other case is one line that says why.
func TestTapTargets(t *testing.T) {
	relay := newTapRelay(nil, "cluster.local", quietLog())
	relay.state.Store(&discovery.State{Pods: []discovery.Pod{
		{Namespace: "demo", Name: "web-0", IP: "127.0.0.2", HasProxy: true, Labels: map[string]string{"app": "web"}},
		{Namespace: "demo", Name: "web-1", IP: "", HasProxy: true, Labels: map[string]string{"app": "web"}},
		{Namespace: "demo", Name: "plain-0", IP: "127.0.0.3", Labels: map[string]string{"app": "plain"}},
		{Namespace: "other", Name: "plain-0", IP: "127.0.0.4", Labels: map[string]string{"app": "plain"}},
	}})
	for _, tc := range []struct {
		target *tapv1.Target
		pods   []string
		code   codes.Code
		msg    string
	}{
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_DEPLOYMENT, Name: "web"}, pods: []string{"web-0"}},
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_NAMESPACE}, pods: []string{"web-0"}},
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_POD, Name: "web-0"}, pods: []string{"web-0"}},
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_POD, Name: "plain-0"}, code: codes.FailedPrecondition,
			msg: "pod demo/plain-0 has no weft-proxy (it is not meshed), so there is nothing to tap: inject it (weft inject, or the weft.io/inject annotation)"},
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_DEPLOYMENT, Name: "plain"}, code: codes.FailedPrecondition,
			msg: "pod demo/plain-0 has no weft-proxy"},
		{target: &tapv1.Target{Namespace: "other", Kind: tapv1.Target_KIND_NAMESPACE}, code: codes.FailedPrecondition, msg: "pod other/plain-0 has no weft-proxy"},
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_POD, Name: "nope"}, code: codes.NotFound, msg: "pod nope not found in namespace demo"},
		{target: &tapv1.Target{Namespace: "demo", Kind: tapv1.Target_KIND_DEPLOYMENT, Name: "nope"}, code: codes.NotFound, msg: "deploy/nope in namespace demo has no pods"},
		{target: &tapv1.Target{Namespace: "missing", Kind: tapv1.Target_KIND_NAMESPACE}, code: codes.NotFound, msg: "namespace missing has no pods (does it exist?)"},
	} {
		pods, err := relay.targetPods(context.Background(), tc.target)
		if tc.code != codes.OK {
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Errorf("%v: %v, want %v containing %q", tc.target, err, tc.code, tc.msg)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.target, err)
		}
		var names []string
		for _, p := range pods {
			names = append(names, p.Name)
		}
		if fmt.Sprint(names) != fmt.Sprint(tc.pods) {
			t.Errorf("%v: pods %v, want %v", tc.target, names, tc.pods)
		}
	}
}

func TestTapRequestValidation(t *testing.T) {
	for _, tc := range []struct {
		req *tapv1.ObserveRequest
		msg string
	}{
		{&tapv1.ObserveRequest{}, "target.namespace: missing"},
		{&tapv1.ObserveRequest{Target: &tapv1.Target{Namespace: "a"}}, "target.kind: missing (deploy, pod or ns)"},
		{&tapv1.ObserveRequest{Target: &tapv1.Target{Namespace: "a", Kind: tapv1.Target_KIND_POD}}, "target.name: missing (the pod to tap)"},
		{&tapv1.ObserveRequest{Target: &tapv1.Target{Namespace: "a", Kind: tapv1.Target_KIND_NAMESPACE}, MaxRps: -1}, "max_rps -1: want 0"},
	} {
		err := validateTap(tc.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%v: %v, want InvalidArgument containing %q", tc.req, err, tc.msg)
		}
	}
	if err := validateTap(&tapv1.ObserveRequest{Target: &tapv1.Target{Namespace: "a", Kind: tapv1.Target_KIND_NAMESPACE}}); err != nil {
		t.Errorf("a namespace target: %v", err)
	}
}

// In local mode only loopback callers may tap.
func TestTapLocalModeIsLoopbackOnly(t *testing.T) {
	relay := newTapRelay(nil, "cluster.local", quietLog())
	at := func(addr string) context.Context {
		ap := netip.MustParseAddrPort(addr)
		return peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(ap)})
	}
	if err := relay.authorize(at("127.0.0.1:5000"), "demo"); err != nil {
		t.Errorf("a loopback caller: %v", err)
	}
	if err := relay.authorize(at("10.0.0.9:5000"), "demo"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a remote caller: %v, want PermissionDenied", err)
	}
}

// TestTapRelayMTLS: to a pod's proxy the relay presents weft-control's own identity from its CA, and
// accepts only the pod's identity.
func TestTapRelayMTLS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := identity.Bootstrap(dir, identity.BootstrapOptions{TrustDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.LoadDirInto(ca, dir); err != nil {
		t.Fatal(err)
	}
	podID := identity.ID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	proxyCert, err := ca.ServingCertificate(podID)
	if err != nil {
		t.Fatal(err)
	}
	clients := make(chan string, 4)
	mux := http.NewServeMux()
	mux.Handle("POST "+tapv1.ObserveMethod, grpcwire.StreamHandler(func(s *grpcwire.ServerStream) error {
		if err := s.Recv(&tapv1.ObserveRequest{}); err != nil {
			return err
		}
		return s.Send(&tapv1.ObserveResponse{Event: &tapv1.TapEvent{Proxy: "web-0.shop"}})
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, TLSConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*proxyCert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Issuer().TrustBundle(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := identity.IDFromCertificate(cs.PeerCertificates[0])
			clients <- id.String()
			return err
		},
	}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() { srv.Close() })

	relay := newTapRelay(nil, "cluster.local", quietLog())
	relay.ca = ca
	call := func(want identity.ID) error {
		c, err := relay.tlsClient(want)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s := grpcwire.OpenStream(ctx, c, "https://"+l.Addr().String()+tapv1.ObserveMethod)
		defer s.Close()
		if err := s.Send(&tapv1.ObserveRequest{}); err != nil {
			return err
		}
		_ = s.CloseSend()
		return s.Recv(&tapv1.ObserveResponse{})
	}
	if err := call(podID); err != nil {
		t.Fatalf("tap over mTLS to the pod's proxy: %v", err)
	}
	if got := <-clients; got != "spiffe://cluster.local/ns/"+ownNamespace()+"/sa/weft-control" {
		t.Errorf("the relay presented %s, want weft-control's identity", got)
	}
	err = call(identity.ID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "books"})
	if err == nil || !strings.Contains(err.Error(), "want the pod's spiffe://cluster.local/ns/shop/sa/books") {
		t.Errorf("a proxy with another identity than the pod's: %v, want refused", err)
	}
}
