package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftmesh/weft/identity"
)

// Options configure Run.
type Options struct {
	// Duration stops the demo this long after the mesh is ready; 0 runs until ctx ends (Ctrl-C).
	Duration time.Duration
	// Interval between two refreshes of the table.
	Interval time.Duration
	// Plain prints each table after the previous one instead of redrawing the screen.
	Plain bool
	// Block is the loopback block 127.<Block>.0.0/16 the demo uses.
	Block byte
	// RPS is the traffic generator's rate.
	RPS int
	// FailRate is the share of books' requests that fail.
	FailRate float64
	// ControlBin and ProxyBin are the binaries; found with FindBinary when empty.
	ControlBin, ProxyBin string
	// Prometheus also runs Prometheus on loopback (Layout.PrometheusAddr), scraping every proxy each
	// ScrapeInterval (5 s when zero), with PrometheusBin (prometheus on PATH when empty).
	Prometheus     bool
	PrometheusBin  string
	ScrapeInterval time.Duration
	// NoTraffic leaves the traffic generator off (a test sends its own requests).
	NoTraffic bool
	// Out receives the table; Log receives progress lines.
	Out, Log io.Writer
	// Started, when set, is called once everything runs, with the child pids and the temp dir.
	Started func(pids []int, dir string)
}

// Result tells what ran, so that a caller (the test) can check that nothing is left behind.
type Result struct {
	Pids []int
	Dir  string
	// Rows are the totals since start, as the last table printed them.
	Rows []Row
}

// services are the rows of the table, in order.
var services = []string{"web", "books", "authors"}

// Run runs the demo until ctx ends or Duration passes, then stops everything and removes its files.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.RPS <= 0 {
		o.RPS = 20
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.ControlBin == "" {
		if o.ControlBin, err = FindBinary("weft-control"); err != nil {
			return nil, err
		}
	}
	if o.ProxyBin == "" {
		if o.ProxyBin, err = FindBinary("weft-proxy"); err != nil {
			return nil, err
		}
	}
	layout := NewLayout(o.Block)
	if err := checkFree(layout, o.Prometheus); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "weft-demo-")
	if err != nil {
		return nil, fmt.Errorf("making the demo's temp dir: %w", err)
	}
	res = &Result{Dir: dir}
	sup := newSupervisor(dir)
	a := &apps{layout: layout}
	defer func() {
		a.stop()
		sup.stop(5 * time.Second)
		res.Pids = sup.pids()
		if rmErr := os.RemoveAll(dir); rmErr != nil && err == nil {
			err = fmt.Errorf("removing %s: %w", dir, rmErr)
		}
	}()

	fmt.Fprintf(o.Log, "weft demo: files in %s\n", dir)
	if err := writeFiles(dir, layout); err != nil {
		return res, err
	}
	if err := a.start(o.FailRate); err != nil {
		return res, err
	}
	if err := startMesh(ctx, sup, o, layout, dir); err != nil {
		if ctx.Err() != nil {
			return res, nil // stopped while starting
		}
		return res, err
	}
	if o.Prometheus {
		if err := startPrometheus(ctx, sup, o, layout, dir); err != nil {
			if ctx.Err() != nil {
				return res, nil
			}
			return res, err
		}
		u := "http://" + layout.PrometheusAddr()
		fmt.Fprintf(o.Log, "weft demo: Prometheus at %s; in another terminal: weft stat deploy -n %s --prometheus-url %s\n", u, Namespace, u)
	}
	if o.Started != nil {
		o.Started(sup.pids(), dir)
	}
	fmt.Fprintf(o.Log, "weft demo: mesh ready; traffic at %d requests/s (Ctrl-C stops everything)\n", o.RPS)
	fmt.Fprintf(o.Log, "weft demo: watch it live with weft tap deploy/books -n %s%s (or weft top)\n", Namespace, tapAddrFlag(layout))
	if o.Duration > 0 { // counted from here: a slow start does not eat the traffic's time
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}

	genCtx, stopGen := context.WithCancel(ctx)
	genDone := make(chan struct{})
	go func() {
		defer close(genDone)
		if !o.NoTraffic {
			generate(genCtx, layout, o.RPS)
		}
	}()
	defer func() { stopGen(); <-genDone }()

	drain := func() { stopGen(); <-genDone }
	rows, err := watch(ctx, sup, o, layout, drain)
	res.Rows = rows
	return res, err
}

// checkFree fails early, with a clear message, when another demo (or anything) holds the addresses.
func checkFree(l Layout, prometheus bool) error {
	addrs := []string{l.XDSAddr(), l.ControlAdminAddr(), l.IdentityAddr()}
	if prometheus {
		addrs = append(addrs, l.PrometheusAddr())
	}
	for _, p := range l.Pods {
		addrs = append(addrs, p.AdminAddr(), p.HTTPProxyAddr())
		if p.Port != 0 {
			addrs = append(addrs, p.PodAddr(), p.AppAddr())
		}
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("%s is in use (is another weft demo running? stop it, or choose another loopback block with --block): %w", a, err)
		}
		ln.Close()
	}
	return nil
}

// writeFiles writes the manifests, the CA (identity bootstrap) and the static tokens that stand in for
// Kubernetes' TokenReview: one token per service account.
func writeFiles(dir string, l Layout) error {
	if err := os.WriteFile(filepath.Join(dir, "demo.yaml"), l.Manifests(), 0o644); err != nil { // #nosec G306 -- the demo's manifests, for the user to read; nothing secret
		return err
	}
	if err := identity.Bootstrap(filepath.Join(dir, "ca"), identity.BootstrapOptions{}); err != nil {
		return fmt.Errorf("creating the demo's CA: %w", err)
	}
	var tokens strings.Builder
	tokens.WriteString("# token,namespace,serviceaccount — weft demo's stand-in for TokenReview\n")
	for _, p := range l.Pods {
		tok := "demo-token-" + p.App
		fmt.Fprintf(&tokens, "%s,%s,%s\n", tok, Namespace, p.App)
		if err := os.WriteFile(filepath.Join(dir, p.App+".token"), []byte(tok+"\n"), 0o600); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "tokens"), []byte(tokens.String()), 0o600)
}

func startMesh(ctx context.Context, sup *supervisor, o Options, l Layout, dir string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	ready := func(addr string) func(context.Context) error {
		return func(ctx context.Context) error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/ready", nil)
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s/ready: %d %s", addr, resp.StatusCode, strings.TrimSpace(string(body)))
			}
			return nil
		}
	}
	_, err := sup.start("weft-control", o.ControlBin,
		"--discovery-file", filepath.Join(dir, "demo.yaml"),
		"--xds-addr", l.XDSAddr(), "--admin-addr", l.ControlAdminAddr(),
		"--identity-addr", l.IdentityAddr(), "--identity-dir", filepath.Join(dir, "ca"),
		"--identity-tokens", filepath.Join(dir, "tokens"), "--debounce", "20ms")
	if err != nil {
		return err
	}
	if err := sup.waitFor(ctx, "weft-control", 20*time.Second, ready(l.ControlAdminAddr())); err != nil {
		return err
	}
	for _, p := range l.Pods {
		args := []string{"run",
			"--xds-addr", l.IdentityAddr(), "--xds-tls",
			"--pod-name", p.Name, "--namespace", Namespace, "--deployment", p.App, "--pod-ip", p.IP.String(), "--service-account", p.App,
			"--identity-addr", l.IdentityAddr(), "--token-file", filepath.Join(dir, p.App+".token"),
			"--trust-bundle-file", filepath.Join(dir, "ca", identity.BundleFile),
			"--admin-addr", p.AdminAddr(), "--http-proxy-addr", p.HTTPProxyAddr(),
			"--outbound-addr", "", "--inbound-addr", "",
			"--inbound-bind-pod-ip", "--app-ip", p.AppIP.String(),
			"--drain-timeout", "2s", "--log-level", "warn",
		}
		if _, err := sup.start("weft-proxy-"+p.Name, o.ProxyBin, args...); err != nil {
			return err
		}
	}
	for _, p := range l.Pods {
		if err := sup.waitFor(ctx, "the weft-proxy of "+p.Name, 30*time.Second, ready(p.AdminAddr())); err != nil {
			return err
		}
		if p.Port == 0 {
			continue
		}
		// Ready means a complete config and a certificate; the inbound port is bound right after.
		dial := func(ctx context.Context) error {
			c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", p.PodAddr())
			if err == nil {
				c.Close()
			}
			return err
		}
		if err := sup.waitFor(ctx, "the inbound port of "+p.Name, 10*time.Second, dial); err != nil {
			return err
		}
	}
	return nil
}

// watch scrapes the proxies every interval and prints the table until ctx ends; it returns the totals,
// scraped after drain has stopped the traffic and let the requests in flight finish.
func watch(ctx context.Context, sup *supervisor, o Options, l Layout, drain func()) ([]Row, error) {
	client := &http.Client{Timeout: 3 * time.Second}
	start := time.Now()
	first := map[string]Counts{}
	prev := map[string]Counts{}
	prevAt := start
	current := map[string]Counts{}
	scrapeAll := func(ctx context.Context) error {
		var errs []error
		for _, svc := range services {
			c, err := scrape(ctx, client, l.Pod(svc).AdminAddr())
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", svc, err))
				continue
			}
			current[svc] = c
		}
		return errors.Join(errs...)
	}
	if err := scrapeAll(ctx); err != nil && ctx.Err() == nil {
		return nil, err
	}
	for k, v := range current {
		first[k], prev[k] = v, v
	}
	totals := func(now time.Time) []Row {
		var rows []Row
		for _, svc := range services {
			rows = append(rows, RowFor(svc, current[svc].Sub(first[svc]), now.Sub(start)))
		}
		return rows
	}
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// A last scrape for the totals (the proxies still run), once no request is in flight.
			drain()
			sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_ = scrapeAll(sctx)
			cancel()
			rows := totals(time.Now())
			fmt.Fprintf(o.Out, "\nTotals over %s:\n", time.Since(start).Round(100*time.Millisecond))
			FormatTable(o.Out, rows)
			return rows, nil
		case c := <-sup.exited:
			return totals(time.Now()), c.exitError()
		case <-tick.C:
		}
		now := time.Now()
		if err := scrapeAll(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(o.Log, "weft demo: scraping: %v\n", err)
		}
		var rows []Row
		for _, svc := range services {
			rows = append(rows, RowFor(svc, current[svc].Sub(prev[svc]), now.Sub(prevAt)))
			prev[svc] = current[svc]
		}
		prevAt = now
		if !o.Plain {
			fmt.Fprint(o.Out, "\x1b[H\x1b[2J") // home, clear screen
		}
		fmt.Fprintf(o.Out, "weft demo — %s, the last %s (inbound at each service's proxy; Ctrl-C stops)\n",
			now.Format("15:04:05"), o.Interval)
		FormatTable(o.Out, rows)
		if o.Plain {
			fmt.Fprintln(o.Out)
		}
	}
}

// tapAddrFlag is the --control-addr weft tap needs for this layout ("" on block 0, its default).
func tapAddrFlag(l Layout) string {
	if l.XDSAddr() == "127.0.0.1:15010" {
		return ""
	}
	return " --control-addr " + l.XDSAddr()
}
