package install_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestInstallViz: `weft install --viz` applies cleanly beside the control plane, its Prometheus
// Deployment becomes Available with the config that discovers meshed Pods, and weft stat against this
// cluster says when a namespace does not exist and when Prometheus cannot answer (kwok runs no
// container: the Service has no serving Pod behind it); uninstall removes it all. (The config's
// relabelling runs in a real Prometheus in cmd/weft's TestVizPrometheusRelabelling: Debian builds
// Prometheus and promtool without Kubernetes discovery, so promtool cannot read the config as it is.)
func TestInstallViz(t *testing.T) {
	c := newCluster(t)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	manifests, _ := weft(t, ctx, "install", "--viz")
	objs := objects(t, manifests)
	c.apply(t, ctx, manifests, objs)
	poll(t, ctx, "weft-prometheus did not become Available", func() error {
		d, err := c.env.Client.AppsV1().Deployments(namespace).Get(ctx, "weft-prometheus", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range d.Status.Conditions {
			if cond.Type == appsv1.DeploymentAvailable && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("status %+v; events: %s", d.Status, c.events(ctx))
	})

	cm, err := c.env.Client.CoreV1().ConfigMaps(namespace).Get(ctx, "weft-prometheus", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := cm.Data["prometheus.yml"]
	for _, want := range []string{"job_name: weft-proxy", "role: pod", "__meta_kubernetes_pod_label_weft_io_control_plane_ns", "regex: " + namespace, "target_label: deployment", "replacement: ${1}:15000"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("prometheus.yml lacks %q:\n%s", want, cfg)
		}
	}

	// weft stat reaches Prometheus through the apiserver: a missing namespace is named first.
	bin, err := weftBinary()
	if err != nil {
		t.Fatal(err)
	}
	stat := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"stat", "--kubeconfig", c.env.Kubeconfig}, args...)...)
		cmd.Env = append(os.Environ(), "WEFT_PROMETHEUS_URL=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := stat("deploy", "-n", "no-such-ns"); err == nil || !strings.Contains(out, `namespace "no-such-ns" does not exist`) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("weft stat -n no-such-ns: %v, want one line naming the namespace:\n%s", err, out)
	}
	if out, err := stat("deploy", "-n", "default"); err == nil || !strings.Contains(out, "Prometheus at ") || !strings.Contains(out, "services/weft-prometheus:9090/proxy") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("weft stat with no Prometheus serving: %v, want one line naming it:\n%s", err, out)
	}
	c.uninstall(t, ctx)
	t.Logf("installed with --viz, checked and uninstalled in %s", time.Since(start).Round(time.Millisecond))
}
