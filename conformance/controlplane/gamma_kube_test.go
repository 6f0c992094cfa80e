package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/deploy/charts"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/discovery/kube"
	"github.com/weftmesh/weft/xds"
	"github.com/weftmesh/weft/xds/server"
)

// installGatewayCRDs applies the Gateway API CRDs as `weft install --crds` renders them, with kubectl,
// and waits until the API server serves HTTPRoutes, GRPCRoutes and ReferenceGrants.
func installGatewayCRDs(t *testing.T, env *kubeenv.Env) {
	t.Helper()
	ch, err := charts.Load("")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := charts.Render(ch, "", map[string]any{
		"gatewayAPI": map[string]any{"crds": true},
		"identity":   map[string]any{"trustAnchorsPEM": "-", "issuerCertPEM": "-", "issuerKeyPEM": "-"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var crds []charts.Manifest
	for _, m := range ms {
		if m.Kind == "CustomResourceDefinition" {
			crds = append(crds, m)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := env.Kubectl(ctx, strings.NewReader(charts.YAML(crds)), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Kubectl(ctx, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io", "crd/referencegrants.gateway.networking.k8s.io"); err != nil {
		t.Fatal(err)
	}
	for {
		list, err := env.Client.Discovery().ServerResourcesForGroupVersion("gateway.networking.k8s.io/v1")
		if err == nil && len(list.APIResources) >= 3 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the API server does not serve gateway.networking.k8s.io/v1: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestGAMMARoutesKubernetes: real discovery and the status writer against a real kube-apiserver.
// Without the Gateway API CRDs discovery works (routes ignored); once they are installed the same
// discovery picks them up, and routes applied to the API
// server get status.parents[] written back: a good route is Accepted and ResolvedRefs; a missing
// backend, an invalid regular expression, a parent Service that does not exist, a cross-namespace
// backend without a ReferenceGrant (then with one) and all-zero weights each say so.
func TestGAMMARoutesKubernetes(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client
	gw, err := gwclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"gamma", "gamma-store"} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range [][2]string{{"gamma", "web"}, {"gamma", "web-canary"}, {"gamma", "zero"}, {"gamma", "cross"}, {"gamma-store", "db"}} {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s[1], Namespace: s[0]},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		if _, err := c.CoreV1().Services(s[0]).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))

	// run starts discovery (and the status writer) and returns the server and a stop function.
	run := func() (*server.Server, func()) {
		srv := server.New(server.Options{})
		w := kube.NewStatusWriter(gw, xds.ControllerName, log)
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 2)
		go func() { done <- w.Run(rctx) }()
		go func() {
			done <- (&kube.Source{Client: c, Gateway: gw, Logger: log, Quiet: 20 * time.Millisecond, Max: 200 * time.Millisecond, GatewayRecheck: 100 * time.Millisecond}).Run(rctx, func(st *discovery.State) {
				srv.Update(st)
				w.Offer(st, xds.RouteStatuses(st, xds.Options{}))
			})
		}()
		return srv, func() {
			rcancel()
			for range 2 {
				if err := <-done; err != nil {
					t.Error(err)
				}
			}
		}
	}
	waitState := func(srv *server.Server, what string, ok func(*discovery.State) bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if st := srv.State(); st != nil && ok(st) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("discovery never published a State with %s", what)
			}
		}
	}

	// Without the CRDs (when this package's API server does not have them yet) discovery works; once
	// they are installed, the same discovery watches the routes.
	srv, stop := run()
	defer stop()
	if _, err := c.Discovery().ServerResourcesForGroupVersion("gateway.networking.k8s.io/v1"); err != nil {
		waitState(srv, "Service gamma/web", func(st *discovery.State) bool { _, ok := st.Service("gamma", "web"); return ok })
	} else {
		t.Log("the Gateway API CRDs were already installed: not testing discovery without them")
	}
	installGatewayCRDs(t, env)

	svcParent := func(name string) []gwv1.ParentReference {
		return []gwv1.ParentReference{{Group: ptr.To(gwv1.Group("")), Kind: ptr.To(gwv1.Kind("Service")), Name: gwv1.ObjectName(name), Port: ptr.To(gwv1.PortNumber(80))}}
	}
	backend := func(ns, name string, weight int32) gwv1.HTTPBackendRef {
		ref := gwv1.HTTPBackendRef{BackendRef: gwv1.BackendRef{BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: ptr.To(gwv1.PortNumber(80))}, Weight: ptr.To(weight)}}
		if ns != "" {
			ref.Namespace = ptr.To(gwv1.Namespace(ns))
		}
		return ref
	}
	route := func(name, parent string, rule gwv1.HTTPRouteRule) *gwv1.HTTPRoute {
		return &gwv1.HTTPRoute{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "gamma"},
			Spec:       gwv1.HTTPRouteSpec{CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: svcParent(parent)}, Rules: []gwv1.HTTPRouteRule{rule}},
		}
	}
	for _, r := range []*gwv1.HTTPRoute{
		route("canary", "web", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("", "web", 90), backend("", "web-canary", 10)}}),
		route("missing", "web-canary", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("", "nosuch", 1)}}),
		route("bad-regex", "web", gwv1.HTTPRouteRule{
			Matches:     []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{Type: ptr.To(gwv1.PathMatchRegularExpression), Value: ptr.To("/([")}}},
			BackendRefs: []gwv1.HTTPBackendRef{backend("", "web", 1)},
		}),
		route("orphan", "ghost", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("", "web", 1)}}),
		route("cross", "cross", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("gamma-store", "db", 1)}}),
		route("zero", "zero", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("", "zero", 0), backend("", "web", 0)}}),
	} {
		if _, err := gw.GatewayV1().HTTPRoutes("gamma").Create(ctx, r, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating HTTPRoute %s: %v", r.Name, err)
		}
	}

	type want struct{ accepted, acceptedReason, resolved, resolvedReason, says string }
	// waitStatus polls the route's status, as `kubectl get httproute -o yaml` shows it, until our entry
	// has the conditions wanted (for the route's current generation).
	waitStatus := func(name string, w want) {
		t.Helper()
		var last string
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("HTTPRoute gamma/%s: status never became %+v; last: %s", name, w, last)
			}
			r, err := gw.GatewayV1().HTTPRoutes("gamma").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			last = fmt.Sprintf("%+v", r.Status.Parents)
			if len(r.Status.Parents) != 1 || r.Status.Parents[0].ControllerName != xds.ControllerName {
				continue
			}
			var a, rr *metav1.Condition
			for i, cd := range r.Status.Parents[0].Conditions {
				if cd.ObservedGeneration != r.Generation || cd.LastTransitionTime.IsZero() {
					continue
				}
				switch cd.Type {
				case "Accepted":
					a = &r.Status.Parents[0].Conditions[i]
				case "ResolvedRefs":
					rr = &r.Status.Parents[0].Conditions[i]
				}
			}
			if a == nil || rr == nil {
				continue
			}
			if string(a.Status) == w.accepted && a.Reason == w.acceptedReason && string(rr.Status) == w.resolved && rr.Reason == w.resolvedReason &&
				strings.Contains(a.Message+" | "+rr.Message, w.says) {
				return
			}
		}
	}
	waitStatus("canary", want{"True", "Accepted", "True", "ResolvedRefs", "attached to Service gamma/web"})
	waitStatus("missing", want{"True", "Accepted", "False", "BackendNotFound", "Service gamma/nosuch does not exist"})
	waitStatus("bad-regex", want{"False", "UnsupportedValue", "True", "ResolvedRefs", "invalid regular expression"})
	waitStatus("orphan", want{"False", "NoMatchingParent", "True", "ResolvedRefs", "Service gamma/ghost does not exist"})
	waitStatus("cross", want{"True", "Accepted", "False", "RefNotPermitted", "no ReferenceGrant in gamma-store allows it"})
	waitStatus("zero", want{"True", "Accepted", "True", "ResolvedRefs", "every backendRef has weight 0"})

	// The ReferenceGrant makes the cross-namespace backend valid.
	grant := &gwv1.ReferenceGrant{
		ObjectMeta: metav1.ObjectMeta{Name: "gamma-to-db", Namespace: "gamma-store"},
		Spec: gwv1.ReferenceGrantSpec{
			From: []gwv1.ReferenceGrantFrom{{Group: gwv1.GroupName, Kind: "HTTPRoute", Namespace: "gamma"}},
			To:   []gwv1.ReferenceGrantTo{{Group: "", Kind: "Service"}},
		},
	}
	if _, err := gw.GatewayV1().ReferenceGrants("gamma-store").Create(ctx, grant, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus("cross", want{"True", "Accepted", "True", "ResolvedRefs", "every backendRef resolved"})

	// The served routes: the canary split, and the cross-namespace backend now that it is allowed.
	waitState(srv, "the canary split and the granted backend", func(st *discovery.State) bool {
		m := xds.BuildMesh(st, xds.Options{})
		var split, granted bool
		for _, rc := range m.Routes {
			for _, vh := range rc.GetVirtualHosts() {
				for _, r := range vh.GetRoutes() {
					if wc := r.GetRoute().GetWeightedClusters().GetClusters(); vh.GetName() == "web.gamma.svc.cluster.local:80" && len(wc) == 2 &&
						wc[0].GetWeight().GetValue() == 90 && wc[1].GetWeight().GetValue() == 10 {
						split = true
					}
					if vh.GetName() == "cross.gamma.svc.cluster.local:80" && r.GetRoute().GetCluster() == "outbound|80||db.gamma-store.svc.cluster.local" {
						granted = true
					}
				}
			}
		}
		return split && granted
	})

	// An edit that fixes the regular expression: a new generation, accepted.
	r, err := gw.GatewayV1().HTTPRoutes("gamma").Get(ctx, "bad-regex", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Spec.Rules[0].Matches[0].Path.Value = ptr.To("/items/[0-9]+")
	if _, err := gw.GatewayV1().HTTPRoutes("gamma").Update(ctx, r, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus("bad-regex", want{"True", "Accepted", "True", "ResolvedRefs", "attached to Service gamma/web"})

	// A route moved from a Service to a Gateway parent is no longer ours: our entry goes.
	o, err := gw.GatewayV1().HTTPRoutes("gamma").Get(ctx, "orphan", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	o.Spec.ParentRefs = []gwv1.ParentReference{{Name: "some-gateway"}}
	if _, err := gw.GatewayV1().HTTPRoutes("gamma").Update(ctx, o, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		o, err := gw.GatewayV1().HTTPRoutes("gamma").Get(ctx, "orphan", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(o.Status.Parents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTPRoute gamma/orphan still has status entries after its Service parent went: %+v", o.Status.Parents)
		}
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
