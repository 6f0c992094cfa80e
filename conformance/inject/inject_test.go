// Package inject_test runs Weft's proxy injector as a real kube-apiserver calls it: the webhook handler
// of deploy/inject serves HTTPS on 127.0.0.1 with a certificate from Weft's CA, a
// MutatingWebhookConfiguration points the apiserver at it with the CA bundle, and Deployments made
// through the real ReplicaSet controller yield Pods with (or without) the proxy.
package inject_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/deploy/inject"
	"github.com/weftmesh/weft/identity"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

// startWebhook serves the injector on a free loopback port over TLS, with a serving certificate for
// 127.0.0.1 from a CA made for the test (weft-control's own way: identity.CA.ServerTLSConfig), and
// returns its URL and the CA bundle the apiserver must trust.
func startWebhook(t *testing.T, client kubernetes.Interface, cfg inject.Config) (string, []byte) {
	t.Helper()
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
	bundle, err := os.ReadFile(filepath.Join(dir, identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	cfg.TrustAnchorsPEM = string(bundle)
	wh := &inject.Webhook{
		Config: func() inject.Config { return cfg },
		Namespace: func(ctx context.Context, name string) (map[string]string, error) {
			ns, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return ns.Annotations, nil
		},
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	base := ca.ServerTLSConfig(identity.ID{}, "127.0.0.1")
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := base.GetConfigForClient(h)
		if err != nil {
			return nil, err
		}
		c.ClientAuth, c.ClientCAs, c.NextProtos = tls.NoClientCert, nil, []string{"h2", "http/1.1"}
		return c, nil
	}}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(inject.WebhookPath, wh)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(tls.NewListener(lis, tlsConfig)) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	return "https://" + lis.Addr().String() + inject.WebhookPath, bundle
}

const configYAML = `proxyImage: ghcr.io/weftmesh/weft-proxy:v0.0.0-test
controlPlaneAddr: weft-control.weft.svc:15012
trustDomain: cluster.local
logLevel: info
cni: false
nativeSidecars: true
proxyUID: 2102
version: v0.0.0-test
resources:
  requests: {cpu: 10m, memory: 20Mi}
  limits: {memory: 64Mi}
`

// warnings collects the apiserver's warnings (what kubectl prints as "Warning: ...").
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.msgs, "\n")
}

func TestInjectorOnARealCluster(t *testing.T) {
	env := kubeenv.GetCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg, err := inject.ParseConfig([]byte(configYAML))
	if err != nil {
		t.Fatal(err)
	}
	url, bundle := startWebhook(t, env.Client, cfg)
	cfg.TrustAnchorsPEM = string(bundle)

	// The chart's webhook, pointed at the test's URL.
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "weft-injector-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:                    "inject.weft.io",
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
			TimeoutSeconds:          ptr.To[int32](10),
			ReinvocationPolicy:      ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: bundle},
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"weft", "kube-system"},
			}}},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
					Scope: ptr.To(admissionregistrationv1.NamespacedScope)},
			}},
		}},
	}
	if _, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), mwc.Name, metav1.DeleteOptions{})
	})
	env.CreateNamespace(t, "meshed", map[string]string{inject.AnnotationInject: inject.Enabled})
	env.CreateNamespace(t, "plain", nil)

	// The apiserver loads webhook configurations asynchronously: wait until a dry-run Pod comes back
	// injected (what weft check does to see the injector working).
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: "meshed"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	poll(ctx, t, env, "a dry-run Pod in the annotated namespace comes back with weft-proxy", func() bool {
		got, err := env.Client.CoreV1().Pods("meshed").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err == nil && inject.HasProxy(&got.Spec)
	})

	deployment := func(ns, name string, ann map[string]string) string {
		return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata:
      labels: {app: %[2]s}
      annotations: %[3]s
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: example.invalid/app:1
        ports: [{containerPort: 8080, name: http}]
`, ns, name, flow(t, ann))
	}
	apply := func(manifest string) {
		t.Helper()
		if out, err := env.Kubectl(ctx, strings.NewReader(manifest), "apply", "--server-side", "-f", "-"); err != nil {
			t.Fatalf("kubectl apply: %v\n%s", err, out)
		}
	}
	podOf := func(ns, app string) corev1.Pod {
		t.Helper()
		var pod corev1.Pod
		poll(ctx, t, env, fmt.Sprintf("the ReplicaSet controller makes a Pod of %s/%s", ns, app), func() bool {
			list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
			if err != nil || len(list.Items) != 1 {
				return false
			}
			pod = list.Items[0]
			return true
		})
		return pod
	}

	meshedYAML := deployment("meshed", "web", nil)
	apply(meshedYAML)
	apply(deployment("plain", "web", nil))
	apply(deployment("meshed", "opted-out", map[string]string{inject.AnnotationInject: inject.Disabled}))
	apply(deployment("meshed", "bad", map[string]string{inject.AnnotationSkipOutboundPorts: "postgres"}))

	web := podOf("meshed", "web")
	if !inject.HasProxy(&web.Spec) || web.Spec.InitContainers[0].Name != inject.InitContainer || web.Labels[inject.LabelControlPlaneNS] != "weft" {
		t.Errorf("the Pod of a Deployment in an annotated namespace has no proxy: init %v, containers %v, labels %v", names(web.Spec.InitContainers), names(web.Spec.Containers), web.Labels)
	}
	if p := podOf("plain", "web"); inject.HasProxy(&p.Spec) {
		t.Error("the Pod of a Deployment in a plain namespace got the proxy")
	}
	if p := podOf("meshed", "opted-out"); inject.HasProxy(&p.Spec) {
		t.Error("a Pod annotated weft.io/inject=disabled in an annotated namespace got the proxy")
	}
	if p := podOf("meshed", "bad"); inject.HasProxy(&p.Spec) {
		t.Error("a Pod with a bad config.weft.io annotation got the proxy")
	}

	// A Pod with a bad annotation is created anyway, and whoever creates it is told why.
	var w warnings
	rc := rest.CopyConfig(env.Config)
	rc.WarningHandler = &w
	warned := kubernetes.NewForConfigOrDie(rc)
	bad := probe.DeepCopy()
	bad.Annotations = map[string]string{inject.AnnotationProxyAwait: "sometimes"}
	if got, err := warned.CoreV1().Pods("meshed").Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil || inject.HasProxy(&got.Spec) {
		t.Errorf("a Pod with a bad annotation: error %v (want it created without the proxy)", err)
	}
	if !strings.Contains(w.all(), "weft: the proxy was not injected: annotation config.weft.io/proxy-await") {
		t.Errorf("warnings %q: want one naming config.weft.io/proxy-await", w.all())
	}

	// weft inject --manual makes the same Pod as the webhook: run it on the same Deployment, create
	// its Pod template as a Pod (dry run, in the plain namespace, where the webhook leaves it alone: it
	// already has the proxy), and compare with the webhook's Pod. The ServiceAccount token volume is
	// left out: the admission plugin mounts it into the containers that exist when it runs, which are
	// the proxy's too for a manually injected Pod.
	manual, err := inject.Rewrite(strings.NewReader(meshedYAML), inject.Manual, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.Unmarshal(manual, &d); err != nil {
		t.Fatal(err)
	}
	manualPod := &corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
	manualPod.GenerateName, manualPod.Namespace = "web-manual-", "plain"
	created, err := env.Client.CoreV1().Pods("plain").Create(ctx, manualPod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	type shape struct {
		InitContainers, Containers []corev1.Container
		Volumes                    []corev1.Volume
	}
	of := func(p *corev1.Pod) shape {
		s := shape{}
		for _, v := range p.Spec.Volumes {
			if !strings.HasPrefix(v.Name, "kube-api-access-") {
				s.Volumes = append(s.Volumes, v)
			}
		}
		strip := func(cs []corev1.Container) []corev1.Container {
			out := make([]corev1.Container, 0, len(cs))
			for _, c := range cs {
				c = *c.DeepCopy()
				var mounts []corev1.VolumeMount
				for _, m := range c.VolumeMounts {
					if !strings.HasPrefix(m.Name, "kube-api-access-") {
						mounts = append(mounts, m)
					}
				}
				c.VolumeMounts = mounts
				out = append(out, c)
			}
			return out
		}
		s.InitContainers, s.Containers = strip(p.Spec.InitContainers), strip(p.Spec.Containers)
		return s
	}
	if diff := cmp.Diff(of(&web), of(created)); diff != "" {
		t.Errorf("weft inject --manual differs from the webhook (-webhook +manual):\n%s", diff)
	}
}

func names(cs []corev1.Container) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

// flow writes annotations as a YAML flow mapping ({} when none).
func flow(t *testing.T, m map[string]string) string {
	if len(m) == 0 {
		return "{}"
	}
	b, err := yaml.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return "{" + strings.Join(strings.Split(strings.TrimSpace(string(b)), "\n"), ", ") + "}"
}

// poll checks cond every 100 ms until it holds; at the deadline it fails with the apiserver's log.
func poll(ctx context.Context, t *testing.T, env *kubeenv.Env, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s\nkube-apiserver log:\n%s\nkube-controller-manager log:\n%s", what, env.Logs("kube-apiserver"), env.Logs("kube-controller-manager"))
		case <-tick.C:
		}
	}
}
