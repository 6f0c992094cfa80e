package inject_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/deploy/charts"
	"github.com/weftmesh/weft/deploy/inject"
	"github.com/weftmesh/weft/identity"
)

// brokenInjector is an injector that is down in one of two ways: it drops every connection at once,
// or it accepts them and never answers (a hung weft-control). It counts the apiserver's calls.
type brokenInjector struct {
	calls atomic.Int32
	mu    sync.Mutex
	held  []net.Conn
}

func startBrokenInjector(t *testing.T, hang bool) (*brokenInjector, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &brokenInjector{}
	t.Cleanup(func() {
		l.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.calls.Add(1)
			if !hang {
				c.Close()
				continue
			}
			b.mu.Lock()
			b.held = append(b.held, c)
			b.mu.Unlock()
		}
	}()
	return b, "https://" + l.Addr().String() + inject.WebhookPath
}

// chartWebhook is the MutatingWebhookConfiguration that weft install renders, as it is (failure
// policy, timeout, excluded namespaces), pointed at url instead of the injector Service.
func chartWebhook(t *testing.T, name, url string) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	anchor, err := identity.NewAnchor(identity.DefaultTrustDomain, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := charts.Load("v0.0.0-test")
	if err != nil {
		t.Fatal(err)
	}
	pem := string(anchor.CertPEM())
	ms, err := charts.Render(ch, charts.DefaultNamespace, map[string]any{"identity": map[string]any{
		"trustAnchorsPEM": pem, "issuerCertPEM": pem, "issuerKeyPEM": "not used by this test",
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Kind != "MutatingWebhookConfiguration" {
			continue
		}
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		if err := yaml.UnmarshalStrict([]byte(m.Content), &mwc); err != nil {
			t.Fatalf("%s: %v", m.Source, err)
		}
		mwc.Name = name
		for i := range mwc.Webhooks {
			mwc.Webhooks[i].ClientConfig.Service = nil
			mwc.Webhooks[i].ClientConfig.URL = &url
		}
		return &mwc
	}
	t.Fatal("the chart renders no MutatingWebhookConfiguration")
	return nil
}

// TestInjectorDownNeverBlocksPods (security.md §6 item 15): with the webhook as weft install renders it
// (failurePolicy Ignore, timeoutSeconds 10), an injector that drops every connection, or one that hangs,
// never stops a Pod: the apiserver calls it, gives up, and the real ReplicaSet controller's Pods are
// created and run, without the proxy.
func TestInjectorDownNeverBlocksPods(t *testing.T) {
	env := kubeenv.GetCluster(t)
	for _, tc := range []struct {
		name string
		hang bool
	}{{"drops connections", false}, {"hangs", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			broken, url := startBrokenInjector(t, tc.hang)
			mwc := chartWebhook(t, "weft-injector-down", url)
			if got := *mwc.Webhooks[0].FailurePolicy; got != admissionregistrationv1.Ignore {
				t.Fatalf("the chart's failurePolicy is %s, want Ignore", got)
			}
			if _, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), mwc.Name, metav1.DeleteOptions{})
			})
			ns := "down-" + strings.ReplaceAll(tc.name, " ", "-")
			env.CreateNamespace(t, ns, map[string]string{inject.AnnotationInject: inject.Enabled})

			// The apiserver loads webhook configurations asynchronously: create dry-run Pods until one
			// of them was sent to the broken injector. Each must be admitted, without the proxy.
			probe := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: ns},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
			}
			poll(ctx, t, env, "the apiserver calls the broken injector", func() bool {
				got, err := env.Client.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				if err != nil {
					t.Fatalf("a Pod was refused while the injector is down: %v", err)
				}
				if inject.HasProxy(&got.Spec) {
					t.Fatal("a Pod got the proxy from an injector that is down")
				}
				return broken.calls.Load() > 0
			})

			manifest := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: %s}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: app, image: example.invalid/app:1}]
`, ns)
			before := broken.calls.Load() // before the apply: the controller may create the Pod at once
			if out, err := env.Kubectl(ctx, strings.NewReader(manifest), "apply", "--server-side", "-f", "-"); err != nil {
				t.Fatalf("kubectl apply: %v\n%s", err, out)
			}
			var pod corev1.Pod
			poll(ctx, t, env, "the Deployment's Pod is created and Running", func() bool {
				list, err := env.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
				if err != nil || len(list.Items) != 1 {
					return false
				}
				pod = list.Items[0]
				return pod.Status.Phase == corev1.PodRunning
			})
			if inject.HasProxy(&pod.Spec) {
				t.Error("the Deployment's Pod got the proxy from an injector that is down")
			}
			if broken.calls.Load() == before {
				t.Error("the ReplicaSet controller's Pod was created without a call to the injector: the test proved nothing")
			}
		})
	}
}
