package demo

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/cmd/weft/internal/viz"
)

// PrometheusAddr is where `weft demo --prometheus` serves Prometheus: weft-control's loopback address,
// port 9090 (http://127.0.0.1:9090 on block 0, `weft stat`'s default).
func (l Layout) PrometheusAddr() string { return netip.AddrPortFrom(l.ControlIP(), 9090).String() }

// PrometheusConfig is the demo's prometheus.yml: one job, viz.ProxyJob, with every proxy's admin
// /metrics as a static target labelled as the chart's pod discovery labels them (namespace, pod,
// deployment).
func (l Layout) PrometheusConfig(interval time.Duration) ([]byte, error) {
	type staticConfig struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	var static []staticConfig
	for _, p := range l.Pods {
		static = append(static, staticConfig{Targets: []string{p.AdminAddr()},
			Labels: map[string]string{"namespace": Namespace, "pod": p.Name, "deployment": p.App}})
	}
	iv := interval.String()
	cfg := map[string]any{
		"global": map[string]any{"scrape_interval": iv, "evaluation_interval": iv},
		"scrape_configs": []any{map[string]any{
			"job_name":       viz.ProxyJob,
			"metrics_path":   "/metrics",
			"honor_labels":   true,
			"static_configs": static,
		}},
	}
	return yaml.Marshal(cfg)
}

// startPrometheus runs Debian's prometheus on loopback, scraping the demo's proxies, and waits until
// it is ready.
func startPrometheus(ctx context.Context, sup *supervisor, o Options, l Layout, dir string) error {
	bin := o.PrometheusBin
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("prometheus"); err != nil {
			return fmt.Errorf("--prometheus: prometheus is not on PATH: install it (apt-get install prometheus, or make deps)")
		}
	}
	interval := o.ScrapeInterval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	cfg, err := l.PrometheusConfig(interval)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, cfg, 0o644); err != nil { // #nosec G306 -- the demo's config, nothing secret
		return err
	}
	_, err = sup.start("prometheus", bin, "--config.file", path, "--storage.tsdb.path", filepath.Join(dir, "prometheus-data"),
		"--web.listen-address", l.PrometheusAddr(), "--log.level", "warn")
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	return sup.waitFor(ctx, "prometheus", 30*time.Second, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.PrometheusAddr()+"/-/ready", nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/-/ready: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		}
		return nil
	})
}
