package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/conformance/prereq"
)

// vizPrometheusConfig is the prometheus.yml of `weft install --viz`'s ConfigMap.
func vizPrometheusConfig(t *testing.T) string {
	t.Helper()
	out, err := runWeft(t, "install", "--viz")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(out, "\n---\n") {
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal([]byte(doc), &cm); err == nil && cm.Kind == "ConfigMap" && cm.Name == "weft-prometheus" {
			return cm.Data["prometheus.yml"]
		}
	}
	t.Fatalf("weft install --viz renders no ConfigMap weft-prometheus:\n%s", out)
	return ""
}

// TestVizPrometheusRelabelling runs Debian's Prometheus on `weft install --viz`'s scrape config, with its
// Kubernetes pod discovery swapped for a file of targets that carry the labels that discovery gives
// (Debian builds Prometheus and promtool without Kubernetes discovery; the relabelling is the same), and
// checks what Prometheus makes of them: one target per meshed Pod, on its proxy's admin port, labelled
// namespace, pod and deployment; Weft's own Pods, unmeshed Pods, finished Pods and Pods of another
// control plane dropped. promtool check config accepts the config too.
func TestVizPrometheusRelabelling(t *testing.T) {
	prom := prereq.Binary(t, "prometheus")
	promtool := prereq.Binary(t, "promtool")
	cfg := vizPrometheusConfig(t)
	dir := t.TempDir()
	sd := "kubernetes_sd_configs:\n  - role: pod\n"
	if !strings.Contains(cfg, sd) {
		t.Fatalf("the config has no pod discovery:\n%s", cfg)
	}
	cfg = strings.Replace(cfg, sd, fmt.Sprintf("file_sd_configs:\n  - files: [%q]\n    refresh_interval: 1s\n", filepath.Join(dir, "pods.json")), 1)
	cfg = strings.Replace(cfg, "scrape_interval: 10s", "scrape_interval: 1h", 1) // relabelling only: no scrape needed

	pod := func(ns, name, ip, port, labels, kind, owner, phase string) map[string]any {
		l := map[string]string{
			"__address__": ip + ":" + port, "__meta_kubernetes_namespace": ns, "__meta_kubernetes_pod_name": name,
			"__meta_kubernetes_pod_ip": ip, "__meta_kubernetes_pod_phase": phase,
			"__meta_kubernetes_pod_controller_kind": kind, "__meta_kubernetes_pod_controller_name": owner,
		}
		for _, kv := range strings.Fields(labels) {
			k, v, _ := strings.Cut(kv, "=")
			l["__meta_kubernetes_pod_label_"+k] = v
		}
		return map[string]any{"targets": []string{ip + ":" + port}, "labels": l}
	}
	meshed := "weft_io_control_plane_ns=weft"
	pods := []map[string]any{
		// A Deployment's meshed Pod: a target per container port (app, proxy admin, proxy inbound).
		pod("shop", "web-7d9c5b8f6d-x2k4q", "10.44.0.5", "8080", meshed, "ReplicaSet", "web-7d9c5b8f6d", "Running"),
		pod("shop", "web-7d9c5b8f6d-x2k4q", "10.44.0.5", "15000", meshed, "ReplicaSet", "web-7d9c5b8f6d", "Running"),
		pod("shop", "web-7d9c5b8f6d-x2k4q", "10.44.0.5", "4143", meshed, "ReplicaSet", "web-7d9c5b8f6d", "Running"),
		// A StatefulSet's: no deployment label.
		pod("shop", "db-0", "10.44.0.6", "5432", meshed, "StatefulSet", "db", "Running"),
		pod("shop", "plain-1", "10.44.0.7", "80", "", "ReplicaSet", "plain-5f7b9c4d8", "Running"),                                                                      // not meshed
		pod("weft", "weft-control-6b8d7f9c5-abcde", "10.44.0.8", "15014", meshed+" app_kubernetes_io_part_of=weft", "ReplicaSet", "weft-control-6b8d7f9c5", "Running"), // Weft's own
		pod("shop", "job-x", "10.44.0.9", "80", meshed, "Job", "job", "Succeeded"),                                                                                     // finished
		pod("other", "api-5f7b9c4d8-bq2zx", "10.44.0.10", "80", "weft_io_control_plane_ns=other-mesh", "ReplicaSet", "api-5f7b9c4d8", "Running"),
	}
	b, _ := json.Marshal(pods)
	if err := os.WriteFile(filepath.Join(dir, "pods.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s\n%s", err, out, cfg)
	}
	url := startPrometheus(t, prom, cfg)

	type target struct{ Labels map[string]string }
	want := []map[string]string{
		{"instance": "10.44.0.5:15000", "job": "weft-proxy", "namespace": "shop", "pod": "web-7d9c5b8f6d-x2k4q", "deployment": "web"},
		{"instance": "10.44.0.6:15000", "job": "weft-proxy", "namespace": "shop", "pod": "db-0"},
	}
	var got []map[string]string
	poll(t, "Prometheus's targets", 30*time.Second, func() error {
		resp, err := http.Get(url + "/api/v1/targets?state=active")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r struct {
			Data struct{ ActiveTargets []target }
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return err
		}
		got = nil
		for _, tg := range r.Data.ActiveTargets {
			got = append(got, tg.Labels)
		}
		slices.SortFunc(got, func(a, b map[string]string) int { return strings.Compare(a["instance"], b["instance"]) })
		if d := cmp.Diff(want, got); d != "" {
			return fmt.Errorf("targets (-want +got):\n%s", d)
		}
		return nil
	})
}
