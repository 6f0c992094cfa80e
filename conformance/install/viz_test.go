package install_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/conformance/prereq"
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

	// With a Prometheus that answers (no proxy traffic yet), MESHED counts the cluster's Pods: weft-control's
	// three replicas and weft-prometheus, none with a proxy; the empty window gets a note, not an error.
	prom := startPrometheus(t, prereq.Binary(t, "prometheus"))
	out, err := stat("deploy", "-n", namespace, "--prometheus-url", prom, "-o", "json")
	if err != nil {
		t.Fatalf("weft stat deploy -n %s: %v\n%s", namespace, err, out)
	}
	var rows []struct {
		Name                  string
		MeshedPods, TotalPods int
		Requests              float64
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("weft stat -o json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, r := range rows {
		got[r.Name] = fmt.Sprintf("%d/%d", r.MeshedPods, r.TotalPods)
	}
	if want := map[string]string{"weft-control": "0/3", "weft-prometheus": "0/1"}; !maps.Equal(got, want) {
		t.Errorf("weft stat deploy -n %s: MESHED %v, want %v", namespace, got, want)
	}
	if out, err := stat("deploy", "-n", namespace, "--prometheus-url", prom); err != nil || !strings.Contains(out, "No traffic found for deployment in namespace weft") {
		t.Errorf("weft stat deploy -n %s: %v, want a table and a note:\n%s", namespace, err, out)
	}
	c.uninstall(t, ctx)
	t.Logf("installed with --viz, checked and uninstalled in %s", time.Since(start).Round(time.Millisecond))
}

// startPrometheus runs Debian's Prometheus with a job weft-proxy that has no targets, on a free loopback
// port, until the test ends.
func startPrometheus(t *testing.T, bin string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: weft-proxy\n  static_configs: []\n"
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--config.file", filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr, "--log.level", "warn")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	poll(t, ctx, "prometheus did not get ready", func() error {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %d", resp.StatusCode)
		}
		return nil
	})
	return "http://" + addr
}
