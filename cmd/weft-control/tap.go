package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/grpcwire"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// The tap relay (docs/design.md, "Tap"): weft-control serves Tap.Observe to users on its xDS ports
// (15010 and 15012; `weft tap` reaches it with --control-addr, e.g. through kubectl port-forward). It authorizes
// the caller, finds the target's meshed pods in the discovery state, opens Tap.Observe on each pod's
// proxy (admin port 15000) and merges the streams.
//
// Authorization: in Kubernetes mode the caller sends its bearer token (`authorization: Bearer …`, what
// `weft tap` takes from the kubeconfig); weft-control checks it with a TokenReview and asks a
// SubjectAccessReview whether that user may get pods in the target's namespace: who may not read a
// namespace's pods may not tap it. In local mode (no cluster) the callers are loopback clients only.
// To the proxies weft-control proves itself with a certificate of its own SPIFFE ID
// (spiffe://<td>/ns/<ns>/sa/weft-control) from its CA, and checks each proxy's certificate is the pod's
// identity; loopback pods (local mode) are reached over plaintext HTTP/2.

// tapMaxPods caps the fan-out of one tap.
const tapMaxPods = 100

// tapAdminPort is the proxies' admin port.
var tapAdminPort = 15000

type tapRelay struct {
	state       atomic.Pointer[discovery.State]
	kube        kubernetes.Interface // nil in local mode
	ca          *identity.CA         // nil: no mTLS to the proxies (loopback pods only)
	self        identity.ID
	trustDomain string
	log         *slog.Logger

	plain *http.Client // h2c to loopback pods

	mu      sync.Mutex // guards the fields below
	cert    *tls.Certificate
	certIss *identity.Issuer
}

func newTapRelay(kube kubernetes.Interface, trustDomain string, log *slog.Logger) *tapRelay {
	h2c := &http.Transport{DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	h2c.Protocols = new(http.Protocols)
	h2c.Protocols.SetUnencryptedHTTP2(true)
	return &tapRelay{
		kube: kube, trustDomain: trustDomain, log: log,
		self:  identity.ID{TrustDomain: trustDomain, Namespace: ownNamespace(), ServiceAccount: "weft-control"},
		plain: &http.Client{Transport: h2c},
	}
}

// publishing keeps the latest discovery state for the relay and hands it on.
func (t *tapRelay) publishing(next func(*discovery.State)) func(*discovery.State) {
	return func(s *discovery.State) {
		t.state.Store(s)
		next(s)
	}
}

// register adds Tap to g. The proto package has no gRPC stubs (weft-proxy imports it), so the
// service description is written here.
func (t *tapRelay) register(g *grpc.Server) {
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: "weft.tap.v1.Tap",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName:    "Observe",
			ServerStreams: true,
			Handler:       func(_ any, ss grpc.ServerStream) error { return t.observe(ss) },
		}},
		Metadata: "weft/tap/v1/tap.proto",
	}, t)
}

func (t *tapRelay) observe(ss grpc.ServerStream) error {
	req := &tapv1.ObserveRequest{}
	if err := ss.RecvMsg(req); err != nil {
		return err
	}
	if err := validateTap(req); err != nil {
		return err
	}
	ctx := ss.Context()
	ns := req.GetTarget().GetNamespace()
	if err := t.authorize(ctx, ns); err != nil {
		return err
	}
	pods, err := t.targetPods(ctx, req.GetTarget())
	if err != nil {
		return err
	}
	send := func(r *tapv1.ObserveResponse) error { return ss.SendMsg(r) }
	if len(pods) > tapMaxPods {
		if err := send(&tapv1.ObserveResponse{Notice: fmt.Sprintf("tapping %d of the target's %d meshed pods (the most one tap takes)", tapMaxPods, len(pods))}); err != nil {
			return err
		}
		pods = pods[:tapMaxPods]
	}
	return t.relay(ctx, req, pods, send)
}

// validateTap checks a request's fields; each error names the field and what to send.
func validateTap(req *tapv1.ObserveRequest) error {
	tg := req.GetTarget()
	switch {
	case tg.GetNamespace() == "":
		return status.Error(codes.InvalidArgument, "target.namespace: missing (the namespace to tap)")
	case tg.GetKind() == tapv1.Target_KIND_UNSPECIFIED:
		return status.Error(codes.InvalidArgument, "target.kind: missing (deploy, pod or ns)")
	case tg.GetKind() != tapv1.Target_KIND_NAMESPACE && tg.GetName() == "":
		return status.Errorf(codes.InvalidArgument, "target.name: missing (the %s to tap)", kindName(tg.GetKind()))
	case req.GetMaxRps() < 0:
		return status.Errorf(codes.InvalidArgument, "max_rps %v: want 0 (the default, 100 per second per proxy) or more", req.GetMaxRps())
	}
	return nil
}

func kindName(k tapv1.Target_Kind) string {
	switch k {
	case tapv1.Target_KIND_DEPLOYMENT:
		return "deploy"
	case tapv1.Target_KIND_POD:
		return "pod"
	case tapv1.Target_KIND_NAMESPACE:
		return "ns"
	}
	return k.String()
}

// authorize lets the caller tap namespace ns: a loopback caller in local mode; in Kubernetes mode a
// bearer token whose user may get pods in ns.
func (t *tapRelay) authorize(ctx context.Context, ns string) error {
	if t.kube == nil {
		if p, ok := peer.FromContext(ctx); ok {
			if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil && ap.Addr().Unmap().IsLoopback() {
				return nil
			}
		}
		return status.Error(codes.PermissionDenied, "local mode: tap is served to loopback clients only")
	}
	token := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get("authorization") {
			if after, ok := strings.CutPrefix(v, "Bearer "); ok {
				token = strings.TrimSpace(after)
			}
		}
	}
	if token == "" {
		return status.Error(codes.Unauthenticated, "tap needs the caller's Kubernetes bearer token (authorization: Bearer …; weft tap sends the kubeconfig's, or --token)")
	}
	tr, err := t.kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return status.Errorf(codes.Unavailable, "checking the token (TokenReview): %v", err)
	}
	if !tr.Status.Authenticated {
		return status.Errorf(codes.Unauthenticated, "the bearer token is not valid for this cluster: %s", tr.Status.Error)
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := t.kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: "get", Resource: "pods"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return status.Errorf(codes.Unavailable, "checking access (SubjectAccessReview): %v", err)
	}
	if !sar.Status.Allowed {
		return status.Errorf(codes.PermissionDenied, "%s may not get pods in namespace %s, so may not tap it", u.Username, ns)
	}
	return nil
}

// targetPods resolves the target to its pods in the discovery state; pods without a proxy make an
// error when nothing else is left to tap.
func (t *tapRelay) targetPods(ctx context.Context, tg *tapv1.Target) ([]discovery.Pod, error) {
	st := t.state.Load()
	if st == nil {
		return nil, status.Error(codes.Unavailable, "weft-control has not read the cluster's pods yet: try again in a moment")
	}
	ns := tg.GetNamespace()
	var inNS []discovery.Pod
	for _, p := range st.Pods {
		if p.Namespace == ns {
			inNS = append(inNS, p)
		}
	}
	what := kindName(tg.GetKind()) + "/" + tg.GetName()
	var pods []discovery.Pod
	switch tg.GetKind() {
	case tapv1.Target_KIND_NAMESPACE:
		what = "namespace " + ns
		if len(inNS) == 0 {
			return nil, status.Errorf(codes.NotFound, "namespace %s has no pods (does it exist?)", ns)
		}
		pods = inNS
	case tapv1.Target_KIND_POD:
		i := slices.IndexFunc(inNS, func(p discovery.Pod) bool { return p.Name == tg.GetName() })
		if i < 0 {
			return nil, status.Errorf(codes.NotFound, "pod %s not found in namespace %s", tg.GetName(), ns)
		}
		pods = inNS[i : i+1]
	case tapv1.Target_KIND_DEPLOYMENT:
		sel, err := t.deploymentSelector(ctx, ns, tg.GetName())
		if err != nil {
			return nil, err
		}
		for _, p := range inNS {
			if sel.Matches(labels.Set(p.Labels)) {
				pods = append(pods, p)
			}
		}
		if len(pods) == 0 {
			return nil, status.Errorf(codes.NotFound, "deploy/%s in namespace %s has no pods", tg.GetName(), ns)
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "target.kind %v: want deploy, pod or ns", tg.GetKind())
	}
	meshed := slices.DeleteFunc(slices.Clone(pods), func(p discovery.Pod) bool { return !p.HasProxy || p.IP == "" })
	if len(meshed) == 0 {
		if len(pods) == 1 && !pods[0].HasProxy {
			return nil, status.Errorf(codes.FailedPrecondition, "pod %s/%s has no weft-proxy (it is not meshed), so there is nothing to tap: inject it (weft inject, or the weft.io/inject annotation)", ns, pods[0].Name)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "%s has no meshed pods with an IP (%d without a weft-proxy or not started), so there is nothing to tap", what, len(pods))
	}
	return meshed, nil
}

// deploymentSelector is the Deployment's pod selector. In local mode, where the file has no
// Deployments, deploy/NAME is the pods labelled app=NAME (as the demo's).
func (t *tapRelay) deploymentSelector(ctx context.Context, ns, name string) (labels.Selector, error) {
	if t.kube == nil {
		return labels.SelectorFromSet(labels.Set{"app": name}), nil
	}
	d, err := t.kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, status.Errorf(codes.NotFound, "deploy/%s not found in namespace %s", name, ns)
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading deploy/%s: %v", name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() {
		return nil, status.Errorf(codes.FailedPrecondition, "deploy/%s has no usable pod selector", name)
	}
	return sel, nil
}

// relay opens the tap on each pod's proxy and sends the merged responses until the caller leaves, the
// limit is reached or every proxy's stream ended. A proxy that cannot be tapped becomes a notice; when
// none can, the call fails.
func (t *tapRelay) relay(ctx context.Context, req *tapv1.ObserveRequest, pods []discovery.Pod, send func(*tapv1.ObserveResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	merged := make(chan *tapv1.ObserveResponse, 256) // full: the relays stop reading, the proxies drop
	type ended struct {
		pod    string
		events int
		err    error
	}
	done := make(chan ended, len(pods))
	for _, p := range pods {
		go func() {
			n, err := t.tapPod(ctx, p, req, merged)
			done <- ended{p.Name, n, err}
		}()
	}
	var sent uint32
	var failed []string
	for open := len(pods); open > 0; {
		select {
		case <-ctx.Done():
			return nil
		case r := <-merged:
			if err := send(r); err != nil {
				return err
			}
			if r.Event != nil {
				sent++
				if req.GetLimit() > 0 && sent >= req.GetLimit() {
					return nil
				}
			}
		case e := <-done:
			open--
			if e.err != nil && ctx.Err() == nil {
				msg := fmt.Sprintf("pod %s: %v", e.pod, e.err)
				failed = append(failed, msg)
				t.log.Info("tap: a proxy could not be tapped", "pod", e.pod, "err", e.err)
				if err := send(&tapv1.ObserveResponse{Notice: msg}); err != nil {
					return err
				}
			}
		}
	}
	if len(failed) == len(pods) {
		return status.Errorf(codes.Unavailable, "no proxy of the target could be tapped: %s", strings.Join(failed, "; "))
	}
	for { // the streams ended: what they queued still goes out
		select {
		case r := <-merged:
			if err := send(r); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// tapPod streams one proxy's tap into out; it returns the number of messages read.
func (t *tapRelay) tapPod(ctx context.Context, p discovery.Pod, req *tapv1.ObserveRequest, out chan<- *tapv1.ObserveResponse) (int, error) {
	ip, err := netip.ParseAddr(p.IP)
	if err != nil {
		return 0, fmt.Errorf("pod IP %q: %w", p.IP, err)
	}
	addr := netip.AddrPortFrom(ip, uint16(tapAdminPort)).String() // #nosec G115 -- a port number
	client, url := t.plain, "http://"+addr+tapv1.ObserveMethod
	if !ip.IsLoopback() {
		want := identity.ID{TrustDomain: t.trustDomain, Namespace: p.Namespace, ServiceAccount: p.ServiceAccount}
		if client, err = t.tlsClient(want); err != nil {
			return 0, err
		}
		defer client.CloseIdleConnections()
		url = "https://" + addr + tapv1.ObserveMethod
	}
	s := grpcwire.OpenStream(ctx, client, url)
	defer s.Close()
	if err := s.Send(req); err != nil {
		return 0, err
	}
	if err := s.CloseSend(); err != nil {
		return 0, err
	}
	n := 0
	for {
		r := &tapv1.ObserveResponse{}
		if err := s.Recv(r); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return n, nil // the proxy ended the call (its limit, its drain) or the caller left
			}
			return n, err
		}
		n++
		select {
		case out <- r:
		case <-ctx.Done():
			return n, nil
		}
	}
}

// tlsClient is an HTTP/2 client to one pod's proxy admin port over mutual TLS: weft-control's own
// certificate (from its CA, renewed at 70% of its life or when the issuer changes), and a check that
// the proxy's certificate is want, the pod's identity. One per tapped pod (a tap is one long stream), so
// that no pooled connection verified for one pod serves another.
func (t *tapRelay) tlsClient(want identity.ID) (*http.Client, error) {
	if t.ca == nil {
		return nil, errors.New("tapping a pod's proxy needs weft-control's identity CA (--identity-dir): without it weft-control has no certificate the proxies accept")
	}
	tr := &http.Transport{
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			cfg := &tls.Config{
				MinVersion: tls.VersionTLS13,
				NextProtos: []string{"h2"},
				// The proxy's certificate names a SPIFFE ID, not a host: VerifyConnection (which also runs
				// on resumed sessions) checks it against the trust bundle and the pod's identity.
				InsecureSkipVerify: true, // #nosec G402 -- verified in VerifyConnection
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return t.clientCert()
				},
				VerifyConnection: func(cs tls.ConnectionState) error {
					iss := t.ca.Issuer()
					if iss == nil {
						return identity.ErrNoIssuer
					}
					raw := make([][]byte, len(cs.PeerCertificates))
					for i, c := range cs.PeerCertificates {
						raw[i] = c.Raw
					}
					got, err := identity.VerifyPeer(raw, iss.TrustBundle(), x509.ExtKeyUsageServerAuth)
					if err != nil {
						return err
					}
					if got != want {
						return fmt.Errorf("the proxy at %s is %s, want the pod's %s", addr, got, want)
					}
					return nil
				},
			}
			d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
			return d.DialContext(ctx, network, addr)
		},
	}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	return &http.Client{Transport: tr}, nil
}

func (t *tapRelay) clientCert() (*tls.Certificate, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	iss := t.ca.Issuer()
	if t.cert != nil && t.certIss == iss {
		leaf := t.cert.Leaf
		if time.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 7 / 10)) {
			return t.cert, nil
		}
	}
	cert, err := t.ca.ServingCertificate(t.self)
	if err != nil {
		return nil, err
	}
	t.cert, t.certIss = cert, iss
	return cert, nil
}
