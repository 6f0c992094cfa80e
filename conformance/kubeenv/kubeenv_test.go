package kubeenv_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/conformance/kubeenv"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

// TestObjectsArriveThroughInformers proves the environment is a real API server with real watches:
// objects created through the API arrive through client-go informers.
func TestObjectsArriveThroughInformers(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	factory := informers.NewSharedInformerFactory(env.Client, 0)
	seen := make(chan string, 16)
	handler := func(kind string) cache.ResourceEventHandlerFuncs {
		return cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
			if o, ok := obj.(metav1.Object); ok && (o.GetNamespace() == "kubeenv-test" || o.GetName() == "kubeenv-test") {
				seen <- kind + "/" + o.GetName()
			}
		}}
	}
	if _, err := factory.Core().V1().Namespaces().Informer().AddEventHandler(handler("Namespace")); err != nil {
		t.Fatal(err)
	}
	if _, err := factory.Core().V1().Services().Informer().AddEventHandler(handler("Service")); err != nil {
		t.Fatal(err)
	}
	if _, err := factory.Discovery().V1().EndpointSlices().Informer().AddEventHandler(handler("EndpointSlice")); err != nil {
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown() // runs after cancel below has stopped the informers
	defer cancel()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer for %v did not sync", typ)
		}
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubeenv-test"}}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "kubeenv-test"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "grpc", Port: 8080, AppProtocol: ptr.To("grpc")}},
		},
	}
	created, err := env.Client.CoreV1().Services("kubeenv-test").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if created.Spec.ClusterIP == "" {
		t.Errorf("the API server allocated no ClusterIP to the Service")
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      "echo-1",
			Namespace: "kubeenv-test",
			Labels:    map[string]string{discoveryv1.LabelServiceName: "echo"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To[int32](8080)}},
	}
	if _, err := env.Client.DiscoveryV1().EndpointSlices("kubeenv-test").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	want := map[string]bool{"Namespace/kubeenv-test": false, "Service/echo": false, "EndpointSlice/echo-1": false}
	for remaining := len(want); remaining > 0; {
		select {
		case got := <-seen:
			if done, ok := want[got]; ok && !done {
				want[got] = true
				remaining--
			}
		case <-ctx.Done():
			t.Fatalf("informers did not deliver every object: %v", want)
		}
	}
}

// TestServiceAccountTokens proves token signing works: TokenRequest mints a token for an audience and
// TokenReview authenticates it for that audience only.
func TestServiceAccountTokens(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns, sa, audience = "default", "kubeenv-tokens", "identity.weft.io"
	if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	review := func(aud string) *authenticationv1.TokenReview {
		t.Helper()
		r, err := env.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{aud}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenReview: %v", err)
		}
		return r
	}
	ok := review(audience)
	if !ok.Status.Authenticated {
		t.Fatalf("token not authenticated for its audience: %q", ok.Status.Error)
	}
	if got, want := ok.Status.User.Username, "system:serviceaccount:"+ns+":"+sa; got != want {
		t.Errorf("TokenReview username = %q, want %q", got, want)
	}
	if other := review("someone-else"); other.Status.Authenticated {
		t.Errorf("token authenticated for an audience it was not minted for")
	}
}

// TestClusterDeploymentToEndpoints proves cluster mode has real controllers: a Deployment applied with
// kubectl becomes 3 Running Pods with IPs (ReplicaSet controller, scheduler, kwok), each with the
// ServiceAccount token volume (admission), and its Service gets one EndpointSlice with 3 ready
// endpoints (EndpointSlice controller); scaling to 1 leaves 1 endpoint.
func TestClusterDeploymentToEndpoints(t *testing.T) {
	env := kubeenv.GetCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns = "harness"
	env.CreateNamespace(t, ns, nil)
	manifest := `apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: harness}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: echo
        image: example.invalid/echo:1
        ports: [{containerPort: 8080, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: harness}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
`
	if out, err := env.Kubectl(ctx, strings.NewReader(manifest), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl apply: %s", strings.TrimSpace(out))
	}

	running := func(want int) []corev1.Pod {
		t.Helper()
		var pods []corev1.Pod
		waitFor(ctx, t, fmt.Sprintf("%d Running pods with IPs", want), func() bool {
			list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			if err != nil {
				return false
			}
			pods = pods[:0]
			for _, p := range list.Items {
				if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
					pods = append(pods, p)
				}
			}
			return len(pods) == want && len(list.Items) == want
		}, env)
		return pods
	}
	readyEndpoints := func(want int) {
		t.Helper()
		waitFor(ctx, t, fmt.Sprintf("one EndpointSlice with %d ready endpoints", want), func() bool {
			list, err := env.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
			if err != nil || len(list.Items) != 1 {
				return false
			}
			ready := 0
			for _, ep := range list.Items[0].Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready++
				}
			}
			return ready == want && len(list.Items[0].Endpoints) == want
		}, env)
	}

	pods := running(3)
	_, cidr, _ := net.ParseCIDR(env.PodCIDR)
	for _, p := range pods {
		if ip := net.ParseIP(p.Status.PodIP); ip == nil || !cidr.Contains(ip) {
			t.Errorf("pod %s has IP %q, want one in %s", p.Name, p.Status.PodIP, env.PodCIDR)
		}
		if p.Spec.NodeName != env.NodeName {
			t.Errorf("pod %s is on node %q, want %q", p.Name, p.Spec.NodeName, env.NodeName)
		}
		if p.Spec.ServiceAccountName != "default" || !hasTokenVolume(p) {
			t.Errorf("pod %s has no ServiceAccount token volume (serviceAccountName %q)", p.Name, p.Spec.ServiceAccountName)
		}
	}
	readyEndpoints(3)

	if _, err := env.Kubectl(ctx, nil, "-n", ns, "scale", "deployment/echo", "--replicas=1"); err != nil {
		t.Fatal(err)
	}
	running(1)
	readyEndpoints(1)
}

func hasTokenVolume(p corev1.Pod) bool {
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil {
				return true
			}
		}
	}
	return false
}

// waitFor polls cond until it holds or ctx ends, then fails naming what it waited for, with the
// controllers' logs.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool, env *kubeenv.Env) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s\nkube-controller-manager:\n%s\nkwok:\n%s", what, env.Logs("kube-controller-manager"), env.Logs("kwok"))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
