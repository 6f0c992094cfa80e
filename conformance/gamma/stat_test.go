package gamma

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/prebuilt"
	"github.com/weftmesh/weft/conformance/prereq"
)

const promPort = 9090 // Prometheus, on weft-control's address

// weftBinary is the weft CLI: bin/weft when `make build` made it from the current sources, else built.
var weftBinary = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "weft")
	if prebuilt.Fresh(root, bin) {
		return bin, nil
	}
	if weftBuildDir, err = os.MkdirTemp("", "weft-gamma-cli-"); err != nil {
		return "", err
	}
	cmd := exec.Command("go", "build", "-o", weftBuildDir+"/", "./cmd/weft")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building ./cmd/weft: %v\n%s", err, out)
	}
	return filepath.Join(weftBuildDir, "weft"), nil
})

var weftBuildDir string // removed by TestMain

// statRow is the part of `weft stat -o json`'s rows this test reads.
type statRow struct {
	Name     string   `json:"name"`
	Requests float64  `json:"requests"`
	Success  *float64 `json:"success"`
	RPS      float64  `json:"rps"`
}

// TestCanaryInWeftStat is the canary walk-through as a user watches it: Prometheus scrapes the sidecars
// (as `weft demo --prometheus` runs it), client-0 sends a steady 100 requests a second to Service echo,
// and at each step of the route (90/10, 50/50, 0/100: the canary promoted) `weft stat deploy -n gamma`
// over the last 5 s shows echo-v1 and echo-v2 sharing the traffic as the weights say (within 10 points:
// the rates are extrapolated from 1 s scrapes), none at a weight 0, all of it successful.
func TestCanaryInWeftStat(t *testing.T) {
	prom := prereq.Binary(t, "prometheus")
	weft, err := weftBinary()
	if err != nil {
		t.Fatal(err)
	}
	m := startMesh(t)
	promURL := m.startPrometheus(t, prom)

	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				done <- nil
				return
			case <-tick.C:
			}
			r, err := m.get(http.MethodGet, "echo", "/", nil)
			if err == nil && r.status != http.StatusOK {
				err = fmt.Errorf("status %d: %s", r.status, r.body)
			}
			if err != nil {
				done <- fmt.Errorf("GET echo through client-0's sidecar: %w", err)
				return
			}
			sent.Add(1)
		}
	}()
	t.Cleanup(func() {
		close(stop)
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	// Warm-up, not measured: a counter's first sample counts nothing in a rate, so both deployments'
	// series (labelled with Service echo's authority) must exist in Prometheus before a step's window.
	m.apply(t, split(50, 50, ""))
	from := sent.Load()
	waitFor(t, "traffic to both versions", 30*time.Second, func() error {
		if n := sent.Load() - from; n < 100 {
			return fmt.Errorf("%d requests sent", n)
		}
		return nil
	})
	after := time.Now()
	waitFor(t, "Prometheus to scrape every sidecar after the warm-up", 10*time.Second, func() error {
		return scrapedAfter(promURL, after)
	})

	const window = 5 * time.Second
	for _, w := range []struct{ v1, v2 int }{{90, 10}, {50, 50}, {0, 100}} {
		m.apply(t, split(w.v1, w.v2, ""))
		// The window must hold this step's traffic only, scraped: wait for 6 s of it, then a scrape.
		from, began := sent.Load(), time.Now()
		waitFor(t, "6 s of traffic at the new weights", 30*time.Second, func() error {
			if n := sent.Load() - from; n < 600 {
				return fmt.Errorf("%d requests sent at these weights", n)
			}
			return nil
		})
		after = time.Now()
		waitFor(t, "Prometheus to scrape every sidecar after the traffic", 10*time.Second, func() error {
			return scrapedAfter(promURL, after)
		})
		args := []string{"stat", "deploy", "-n", namespace, "--prometheus-url", promURL, "-t", window.String()}
		table := runWeft(t, weft, args...)
		var rows []statRow
		if err := json.Unmarshal([]byte(runWeft(t, weft, append(args, "-o", "json")...)), &rows); err != nil {
			t.Fatalf("weft stat -o json: %v", err)
		}
		t.Logf("weights %d/%d: weft %s\n%s", w.v1, w.v2, strings.Join(args[:4], " ")+" -t "+window.String(), table)
		byName := map[string]statRow{}
		for _, r := range rows {
			byName[r.Name] = r
		}
		v1, v2 := byName["echo-v1"], byName["echo-v2"]
		total := v1.RPS + v2.RPS
		// What the client sent in this step, a second a time (less than 100 on a busy machine).
		rate := float64(sent.Load()-from) / time.Since(began).Seconds()
		if total < 0.7*rate || total > 1.3*rate {
			t.Errorf("weights %d/%d: weft stat shows %.1f RPS at echo-v1 and echo-v2 together, want about %.1f (what the client sent)", w.v1, w.v2, total, rate)
			continue
		}
		share := v2.RPS / total
		if math.Abs(share-float64(w.v2)/100) > 0.10 {
			t.Errorf("weights %d/%d: weft stat shows echo-v2 at %.1f of %.1f RPS (%.0f%%), want %d%% ± 10", w.v1, w.v2, v2.RPS, total, 100*share, w.v2)
		}
		for _, r := range []struct {
			row    statRow
			weight int
		}{{v1, w.v1}, {v2, w.v2}} {
			if r.weight == 0 && r.row.Requests != 0 {
				t.Errorf("weights %d/%d: weft stat shows %v requests at deploy/%s in the window, want none", w.v1, w.v2, r.row.Requests, r.row.Name)
			}
		}
		for _, r := range []statRow{v1, v2} {
			if r.Requests > 0 && (r.Success == nil || *r.Success != 1) {
				t.Errorf("weights %d/%d: deploy/%s success %v, want 100%%", w.v1, w.v2, r.Name, r.Success)
			}
		}
	}
}

func runWeft(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "no-cluster"), "WEFT_PROMETHEUS_URL=")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("weft %s: %v\n%s%s", strings.Join(args, " "), err, out, ee.Stderr)
		}
		t.Fatalf("weft %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// startPrometheus runs prometheus on weft-control's address scraping every sidecar's /metrics each
// second, labelled as `weft demo --prometheus` labels them (job weft-proxy; namespace, pod,
// deployment), and returns its URL once it is ready.
func (m *mesh) startPrometheus(t *testing.T, bin string) string {
	t.Helper()
	var cfg strings.Builder
	cfg.WriteString("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n- job_name: weft-proxy\n  metrics_path: /metrics\n  honor_labels: true\n  static_configs:\n")
	for _, p := range m.pods {
		fmt.Fprintf(&cfg, "  - {targets: [%q], labels: {namespace: %s, pod: %s, deployment: %s}}\n", p.admin, namespace, p.name, p.deployment)
	}
	path := filepath.Join(m.dir, "prometheus.yml")
	writeFile(t, path, cfg.String())
	addr := netip.AddrPortFrom(m.block.ip(0, 1), promPort).String()
	startProc(t, m.dir, "prometheus", bin, "--config.file", path, "--storage.tsdb.path", filepath.Join(m.dir, "prometheus-data"),
		"--web.listen-address", addr, "--log.level", "warn")
	url := "http://" + addr
	waitFor(t, "prometheus /-/ready", 30*time.Second, func() error { return httpOK(url + "/-/ready") })
	return url
}

// scrapedAfter is nil once Prometheus has scraped every sidecar after t0.
func scrapedAfter(promURL string, t0 time.Time) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(promURL + `/api/v1/query?query=` + strings.ReplaceAll(`min(timestamp(up{job="weft-proxy"}))`, `"`, `%22`))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return err
	}
	if len(body.Data.Result) == 0 {
		return errors.New("no scrape yet")
	}
	s, _ := body.Data.Result[0].Value[1].(string)
	ts, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("timestamp %q: %v", s, err)
	}
	if ts <= float64(t0.UnixMilli())/1000 {
		return fmt.Errorf("the oldest last scrape is at %.3f, before %.3f", ts, float64(t0.UnixMilli())/1000)
	}
	return nil
}
