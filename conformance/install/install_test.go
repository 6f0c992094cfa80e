// Package install_test puts Weft on a real cluster as its README says to, with the real CLI and the
// real kubectl: `weft install | kubectl apply --server-side -f -` on kubeenv's cluster mode (etcd,
// kube-apiserver with its admission plugins, kube-controller-manager, kube-scheduler, and kwok as the
// kubelet of one fake Node), then `weft uninstall | kubectl delete -f -`, and nothing of Weft is left.
// No container runs (kwok makes Pods Running and Ready without a runtime): what this proves is that the
// apiserver accepts every object as written (schemas, Pod Security, RBAC escalation checks), that the
// controllers make the Pods the objects ask for, and that uninstall removes everything.
package install_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/identity"
)

const (
	namespace = "weft" // weft install's default
	partOf    = "app.kubernetes.io/part-of=weft"
)

// buildDir is where weftBinary built weft, removed by TestMain.
var buildDir string

func TestMain(m *testing.M) {
	code := kubeenv.Main(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// weftBinary is bin/weft when it is newer than every source (as right after `make build`), else weft
// built once for this test binary.
var weftBinary = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	if bin := filepath.Join(root, "bin", "weft"); prebuilt.Fresh(root, bin) {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "weft-install-bin-")
	if err != nil {
		return "", err
	}
	buildDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/weftmesh/weft/cmd/weft")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building weft: %v\n%s", err, out)
	}
	return filepath.Join(dir, "weft"), nil
})

// weft runs the CLI with its standard output a pipe, as in `weft install | kubectl apply -f -`.
func weft(t *testing.T, ctx context.Context, args ...string) (stdout []byte, stderr string) {
	t.Helper()
	bin, err := weftBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("weft %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.Bytes(), errOut.String()
}

// cluster is the harness with the clients these tests use.
type cluster struct {
	env    *kubeenv.Env
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	env := kubeenv.GetCluster(t)
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandler = rest.NoWarnings{} // listing every kind lists the deprecated ones too
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(env.Client.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{env: env, dyn: dyn, mapper: restmapper.NewDiscoveryRESTMapper(groups)}
}

// objects decodes a multi-document YAML stream into its objects.
func objects(t *testing.T, manifests []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("the manifests are not Kubernetes YAML: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, &u)
		}
	}
}

func key(u *unstructured.Unstructured) string {
	k := u.GetKind() + "/" + u.GetName()
	if u.GetNamespace() != "" {
		k = u.GetNamespace() + "/" + k
	}
	return k
}

// get reads obj's live version from the apiserver.
func (c *cluster) get(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	var r dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		r = c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	return r.Get(ctx, obj.GetName(), metav1.GetOptions{})
}

// apply is `kubectl apply --server-side -f -` of the manifests; every object must be applied.
func (c *cluster) apply(t *testing.T, ctx context.Context, manifests []byte, objs []*unstructured.Unstructured) {
	t.Helper()
	out, err := c.env.Kubectl(ctx, bytes.NewReader(manifests), "apply", "--server-side", "--field-manager=weft-install", "-f", "-")
	if err != nil {
		t.Fatalf("the apiserver refused the manifests: %v\n%s", err, out)
	}
	if n := strings.Count(out, " serverside-applied\n"); n != len(objs) {
		t.Errorf("kubectl applied %d objects, the manifests hold %d:\n%s", n, len(objs), out)
	}
}

// poll calls cond every 200 ms until it returns nil or ctx ends, and then fails with its last error.
func poll(t *testing.T, ctx context.Context, what string, cond func() error) {
	t.Helper()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitControlPlane waits until the weft-control Deployment is Available with all its replicas ready.
func (c *cluster) waitControlPlane(t *testing.T, ctx context.Context, replicas int32) {
	t.Helper()
	poll(t, ctx, "weft-control did not become Available", func() error {
		d, err := c.env.Client.AppsV1().Deployments(namespace).Get(ctx, "weft-control", metav1.GetOptions{})
		if err != nil {
			return err
		}
		available := false
		for _, cond := range d.Status.Conditions {
			if cond.Type == appsv1.DeploymentAvailable && cond.Status == corev1.ConditionTrue {
				available = true
			}
		}
		s := d.Status
		if !available || s.ReadyReplicas != replicas || s.AvailableReplicas != replicas || s.UpdatedReplicas != replicas || s.ObservedGeneration != d.Generation {
			return fmt.Errorf("status %+v; events: %s", s, c.events(ctx))
		}
		return nil
	})
}

// events is the namespace's recent events, for a failure message (why a ReplicaSet made no Pods).
func (c *cluster) events(ctx context.Context) string {
	evs, err := c.env.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range evs.Items {
		if e.Type != corev1.EventTypeNormal {
			fmt.Fprintf(&b, "\n  %s %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message)
		}
	}
	return b.String()
}

// snapshot is each object's resourceVersion, or for the kinds whose status the controllers keep
// writing, its generation (which only a change of the spec moves).
func (c *cluster) snapshot(t *testing.T, ctx context.Context, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	s := map[string]string{}
	for _, o := range objs {
		live, err := c.get(ctx, o)
		if err != nil {
			t.Fatalf("%s: %v", key(o), err)
		}
		switch o.GetKind() {
		case "Deployment", "DaemonSet", "PodDisruptionBudget":
			s[key(o)] = fmt.Sprintf("generation %d", live.GetGeneration())
		default:
			s[key(o)] = "resourceVersion " + live.GetResourceVersion()
		}
	}
	return s
}

// uninstall is `weft uninstall | kubectl delete --ignore-not-found -f -`; then nothing labelled
// part-of=weft may be left, of any kind, in any namespace (the Pods, ReplicaSets and EndpointSlices the
// controllers made included), and the namespace must be gone (the namespace controller finishes that).
func (c *cluster) uninstall(t *testing.T, ctx context.Context) {
	t.Helper()
	manifests, _ := weft(t, ctx, "uninstall")
	if bytes.Contains(manifests, []byte("issuer.key")) || bytes.Contains(manifests, []byte("PRIVATE KEY")) {
		t.Error("weft uninstall prints key material")
	}
	start := time.Now()
	if out, err := c.env.Kubectl(ctx, bytes.NewReader(manifests), "delete", "--ignore-not-found", "-f", "-"); err != nil {
		t.Fatalf("deleting what weft uninstall printed: %v\n%s", err, out)
	}
	t.Logf("kubectl delete returned after %s", time.Since(start).Round(time.Millisecond))
	lists, err := c.env.Client.Discovery().ServerPreferredResources()
	if err != nil {
		t.Fatal(err)
	}
	var resources []schema.GroupVersionResource
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.APIResources {
			if !strings.Contains(r.Name, "/") && contains(r.Verbs, "list") {
				resources = append(resources, gv.WithResource(r.Name))
			}
		}
	}
	poll(t, ctx, "weft uninstall left objects behind", func() error {
		var left []string
		for _, r := range resources {
			l, err := c.dyn.Resource(r).List(ctx, metav1.ListOptions{LabelSelector: partOf})
			if err != nil {
				return fmt.Errorf("listing %s: %w", r, err)
			}
			for _, o := range l.Items {
				left = append(left, r.Resource+" "+key(&o))
			}
		}
		if _, err := c.env.Client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "namespace "+namespace)
		}
		if len(left) > 0 {
			sort.Strings(left)
			return fmt.Errorf("still there: %s", strings.Join(left, ", "))
		}
		return nil
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestInstallUninstall: `weft install` with its default flags, applied server-side, is accepted
// whole; weft-control becomes Available with 3 ready replicas and its PodDisruptionBudget allows 2
// disruptions; the Secret holds a CA weft-control can load and the webhook trusts its anchors;
// applying the same manifests again changes nothing; and `weft uninstall` removes everything.
func TestInstallUninstall(t *testing.T) {
	c := newCluster(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	manifests, stderr := weft(t, ctx, "install")
	if !strings.Contains(stderr, "made a new trust anchor") {
		t.Errorf("weft install did not say it made a CA; stderr: %q", stderr)
	}
	objs := objects(t, manifests)
	c.apply(t, ctx, manifests, objs)
	for _, o := range objs {
		live, err := c.get(ctx, o)
		if err != nil {
			t.Errorf("%s was applied but is not there: %v", key(o), err)
			continue
		}
		if live.GetLabels()["app.kubernetes.io/part-of"] != "weft" {
			t.Errorf("%s lacks the label %s (uninstall and weft check find Weft's objects by it)", key(o), partOf)
		}
	}
	t.Logf("applied %d objects in %s", len(objs), time.Since(start).Round(time.Millisecond))

	c.waitControlPlane(t, ctx, 3)
	t.Logf("weft-control Available with 3 ready replicas after %s", time.Since(start).Round(time.Millisecond))
	poll(t, ctx, "the PodDisruptionBudget did not count the 3 replicas", func() error {
		pdb, err := c.env.Client.PolicyV1().PodDisruptionBudgets(namespace).Get(ctx, "weft-control", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if s := pdb.Status; s.ExpectedPods != 3 || s.CurrentHealthy != 3 || s.DisruptionsAllowed != 2 {
			return fmt.Errorf("status %+v, want 3 expected, 3 healthy, 2 disruptions allowed", s)
		}
		return nil
	})

	secret, err := c.env.Client.CoreV1().Secrets(namespace).Get(ctx, "weft-identity", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := secret.Data[identity.AnchorKeyFile]; ok {
		t.Errorf("the Secret holds %s, the trust anchor's key", identity.AnchorKeyFile)
	}
	iss, err := identity.ParseMaterial(identity.Material{
		Bundle: secret.Data[identity.BundleFile], IssuerCert: secret.Data[identity.IssuerCertFile], IssuerKey: secret.Data[identity.IssuerKeyFile],
	}, identity.DefaultTrustDomain, time.Now())
	if err != nil {
		t.Fatalf("the Secret weft-identity does not hold a CA weft-control can load: %v", err)
	}
	if left := time.Until(iss.Certificate().NotAfter); left < 30*24*time.Hour {
		t.Errorf("the new issuer expires in %s", left)
	}
	hook, err := c.env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "weft-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(hook.Webhooks) != 1 || !bytes.Equal(hook.Webhooks[0].ClientConfig.CABundle, secret.Data[identity.BundleFile]) {
		t.Error("the webhook's caBundle is not the trust anchors of the Secret")
	}

	before := c.snapshot(t, ctx, objs)
	c.apply(t, ctx, manifests, objs)
	after := c.snapshot(t, ctx, objs)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("applying the same manifests again changed %s: %s, then %s", k, v, after[k])
		}
	}

	uninstallStart := time.Now()
	c.uninstall(t, ctx)
	t.Logf("uninstalled in %s (install to nothing left: %s)", time.Since(uninstallStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestInstallCNI: `weft install --cni` is accepted too; the DaemonSet puts its Pod on the Node and it
// becomes ready, beside weft-control; uninstall removes it all.
func TestInstallCNI(t *testing.T) {
	c := newCluster(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	manifests, _ := weft(t, ctx, "install", "--cni")
	objs := objects(t, manifests)
	c.apply(t, ctx, manifests, objs)
	ns, err := c.env.Client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace %s: Pod Security %q, want privileged (the CNI DaemonSet mounts host folders)", namespace, got)
	}
	poll(t, ctx, "the weft-cni DaemonSet did not become ready on the Node", func() error {
		ds, err := c.env.Client.AppsV1().DaemonSets(namespace).Get(ctx, "weft-cni", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if s := ds.Status; s.DesiredNumberScheduled != 1 || s.NumberReady != 1 || s.NumberAvailable != 1 || s.ObservedGeneration != ds.Generation {
			return fmt.Errorf("status %+v; events: %s", s, c.events(ctx))
		}
		pods, err := c.env.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=weft-cni"})
		if err != nil {
			return err
		}
		if len(pods.Items) != 1 || pods.Items[0].Spec.NodeName != c.env.NodeName || pods.Items[0].Status.Phase != corev1.PodRunning {
			return fmt.Errorf("want one Running weft-cni Pod on %s, got %d", c.env.NodeName, len(pods.Items))
		}
		return nil
	})
	c.waitControlPlane(t, ctx, 3)
	t.Logf("weft-cni and weft-control ready after %s", time.Since(start).Round(time.Millisecond))
	c.uninstall(t, ctx)
	t.Logf("installed and uninstalled in %s", time.Since(start).Round(time.Millisecond))
}
