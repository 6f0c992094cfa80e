package check

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	apiversion "k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The checks on a fake clientset: the logic and messages of each; the cluster tests show them on a
// real apiserver.

func run1(t *testing.T, checks []Check, id string) Result {
	t.Helper()
	for _, c := range checks {
		if c.ID == id {
			return c.Run(context.Background())
		}
	}
	t.Fatalf("no check %s", id)
	return Result{}
}

func wantResult(t *testing.T, what string, got Result, status Status, says string) {
	t.Helper()
	if got.Status != status || !strings.Contains(got.Message, says) {
		t.Errorf("%s = %s %q, want %s saying %q", what, got.Status, got.Message, status, says)
	}
	if status != Pass && got.Hint == "" {
		t.Errorf("%s: %s without a hint", what, status)
	}
}

func TestVersionChecks(t *testing.T) {
	for _, tc := range []struct {
		server       string
		version, sc  Status
		versionSays  string
		sidecarsSays string
	}{
		{"v1.36.3", Pass, Pass, "", ""},
		{"v1.29.0-eks-1234", Pass, Pass, "", ""},
		{"v1.28.9", Fail, Warn, "runs Kubernetes 1.28.9; Weft needs 1.29 or later", "--native-sidecars=false"},
		{"v0.0.0-master+$Format:%H$", Warn, Warn, "a build without a version stamp", ""},
	} {
		c := fake.NewClientset()
		c.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &apiversion.Info{GitVersion: tc.server}
		tg := &Target{Namespace: "weft", Client: c}
		if r := run1(t, KubernetesChecks(tg), "k8s-api-reachable"); r.Status != Pass {
			t.Fatalf("%s: reachable = %+v", tc.server, r)
		}
		wantResult(t, tc.server+" k8s-version", run1(t, KubernetesChecks(tg), "k8s-version"), tc.version, tc.versionSays)
		r := run1(t, PreChecks(tg), "pre-native-sidecars")
		if r.Status != tc.sc || !strings.Contains(r.Hint, tc.sidecarsSays) {
			t.Errorf("%s pre-native-sidecars = %+v", tc.server, r)
		}
	}
}

type fakeClock struct {
	skew time.Duration
	err  error
}

func (f fakeClock) ServerTime(context.Context) (time.Time, time.Time, time.Duration, error) {
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	return now.Add(f.skew), now, 500 * time.Millisecond, f.err
}

// TestNativeSidecarProbe: the dry-run Pod tells, whatever the version says: an apiserver without the
// feature drops the init container's restartPolicy.
func TestNativeSidecarProbe(t *testing.T) {
	c := fake.NewClientset()
	c.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &apiversion.Info{GitVersion: "v1.28.9"}
	tg := &Target{Namespace: "weft", ProbeNamespace: "default", Client: c}
	run1(t, KubernetesChecks(tg), "k8s-api-reachable")
	wantResult(t, "a 1.28 apiserver that keeps restartPolicy", run1(t, PreChecks(tg), "pre-native-sidecars"), Pass, "")

	c = fake.NewClientset()
	c.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod).DeepCopy()
		for i := range p.Spec.InitContainers {
			p.Spec.InitContainers[i].RestartPolicy = nil
		}
		return true, p, nil
	})
	tg.Client = c
	wantResult(t, "an apiserver that drops it", run1(t, PreChecks(tg), "pre-native-sidecars"), Warn, "the SidecarContainers feature is off")
}

func TestClockSkew(t *testing.T) {
	for _, tc := range []struct {
		clock  fakeClock
		status Status
		says   string
	}{
		{fakeClock{skew: 10 * time.Second}, Pass, ""},
		{fakeClock{skew: -60 * time.Second}, Pass, ""}, // within the Date header's second
		{fakeClock{skew: 2 * time.Minute}, Warn, "2m0s ahead of this machine's"},
		{fakeClock{skew: -10 * time.Minute}, Fail, "10m0s behind this machine's"},
	} {
		tg := &Target{Client: fake.NewClientset(), Clock: tc.clock}
		wantResult(t, tc.clock.skew.String(), run1(t, KubernetesChecks(tg), "k8s-clock-skew"), tc.status, tc.says)
	}
	tg := &Target{Client: fake.NewClientset(), Clock: fakeClock{err: errors.New("no Date")}}
	if r := run1(t, KubernetesChecks(tg), "k8s-clock-skew"); r.Status != Warn {
		t.Errorf("unreadable clock = %+v, want a warning", r)
	}
}

func deployment(replicas, ready int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: ControlPlaneName, Namespace: "weft"},
		Spec:       appsv1.DeploymentSpec{Replicas: &replicas},
		Status:     appsv1.DeploymentStatus{ReadyReplicas: ready, UpdatedReplicas: ready},
	}
}

func pod(ns, name string, ready bool, proxyVersion string, containers ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{}, Annotations: map[string]string{}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}},
	}
	if ready {
		p.Status.Conditions[0].Status = corev1.ConditionTrue
	}
	if proxyVersion != "" {
		p.Annotations[ProxyVersionAnnotation] = proxyVersion
	}
	if ns == "weft" {
		p.Labels["app.kubernetes.io/name"] = ControlPlaneName
	}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
	}
	return p
}

func TestControlPlaneDeployment(t *testing.T) {
	for _, tc := range []struct {
		objs   []runtime.Object
		id     string
		status Status
		says   string
	}{
		{[]runtime.Object{deployment(3, 3)}, "cp-deployment", Pass, ""},
		{[]runtime.Object{deployment(0, 0)}, "cp-deployment", Fail, "scaled to 0 replicas"},
		{[]runtime.Object{deployment(3, 1)}, "cp-deployment", Fail, "1 of 3 replicas ready"},
		{nil, "cp-deployment", Fail, "Deployment weft/weft-control does not exist"},
		{[]runtime.Object{pod("weft", "weft-control-a", true, "", "weft-control")}, "cp-pods", Pass, ""},
		{[]runtime.Object{pod("weft", "weft-control-a", true, "", "weft-control"), pod("weft", "weft-control-b", false, "", "weft-control")}, "cp-pods", Fail, "weft/weft-control-b: Running but not Ready"},
		{nil, "cp-pods", Fail, "no weft-control Pod"},
	} {
		tg := &Target{Namespace: "weft", Client: fake.NewClientset(tc.objs...)}
		wantResult(t, tc.id, run1(t, ControlPlaneChecks(tg), tc.id), tc.status, tc.says)
	}
}

// mapAdmin serves each weft-control Pod's /debug/connections from a map.
type mapAdmin map[string]string

func (m mapAdmin) Service(context.Context, string, string) ([]byte, error) {
	return []byte("ready\n"), nil
}

func (m mapAdmin) Pod(_ context.Context, _, pod, path string) ([]byte, error) {
	body, ok := m[pod+path]
	if !ok {
		return nil, errors.New("the server is currently unable to handle the request")
	}
	return []byte(body), nil
}

func TestDataPlane(t *testing.T) {
	objs := []runtime.Object{
		pod("weft", "weft-control-a", true, "", "weft-control"),
		pod("weft", "weft-control-b", true, "", "weft-control"),
		pod("shop", "api", true, "v1", "api", ProxyContainer),
		pod("shop", "web", true, "v0", "web", ProxyContainer),
		pod("shop", "plain", true, "", "plain"), // not meshed: not checked
	}
	tg := &Target{Namespace: "weft", Client: fake.NewClientset(objs...), cfg: &proxyConfig{Version: "v1"}}
	// api is connected to replica a over mTLS, web to b in plaintext.
	tg.Admin = mapAdmin{
		"weft-control-a/debug/connections": `{"connections":[{"node":"api.shop","identity":"spiffe://cluster.local/ns/shop/sa/default"}]}`,
		"weft-control-b/debug/connections": `{"connections":[{"node":"web.shop"}]}`,
		"weft-control-a/ready":             "ready\n",
	}
	checks := DataPlaneChecks(tg)
	wantResult(t, "proxy-pods-ready", run1(t, checks, "proxy-pods-ready"), Pass, "")
	wantResult(t, "xds-replicas-ready", run1(t, ControlPlaneChecks(tg), "xds-replicas-ready"), Fail, "weft-control-b: the server is currently unable")
	wantResult(t, "proxy-version", run1(t, checks, "proxy-version"), Warn, "shop/web runs proxy v0, the control plane v1")
	wantResult(t, "proxy-connected", run1(t, checks, "proxy-connected"), Pass, "")
	wantResult(t, "proxy-identity", run1(t, checks, "proxy-identity"), Warn, "shop/web: connected without a workload certificate")

	// web's replica lost it; api claims another ServiceAccount.
	tg.Admin = mapAdmin{
		"weft-control-a/debug/connections": `{"connections":[{"node":"api.shop","identity":"spiffe://cluster.local/ns/shop/sa/admin"}]}`,
		"weft-control-b/debug/connections": `{"connections":[]}`,
	}
	wantResult(t, "proxy-connected", run1(t, checks, "proxy-connected"), Fail, "shop/web: its proxy is connected to no weft-control replica")
	wantResult(t, "proxy-identity", run1(t, checks, "proxy-identity"), Fail, "connected as spiffe://cluster.local/ns/shop/sa/admin, but the Pod runs as ServiceAccount default")

	// A replica that does not answer: the proxies connected to it cannot be vouched for.
	delete(tg.Admin.(mapAdmin), "weft-control-b/debug/connections")
	wantResult(t, "proxy-connected", run1(t, checks, "proxy-connected"), Fail, "could not read the connections of weft-control-b")

	// No meshed Pod in scope: a warning that says how to mesh one.
	tg.ProxyNamespace = "empty"
	wantResult(t, "proxy-pods-ready", run1(t, checks, "proxy-pods-ready"), Warn, "no Pod with a weft-proxy container in namespace empty")
}
