package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	xdsconf "github.com/weftmesh/weft/conformance/xds"
	"github.com/weftmesh/weft/conformance/xds/localmode"
)

func newConformanceCmd() *cobra.Command {
	var (
		addr, nodeID, format, run, driveFile, metricsURL string
		timeout, quiet                                   time.Duration
		streams                                          int
	)
	cmd := &cobra.Command{
		Use:   "conformance --xds-addr HOST:PORT",
		Short: "Check an xDS control plane against the xDS protocol (any control plane, by address)",
		Long: `Run the xDS conformance suite against the control plane at --xds-addr: raw ADS and per-type
streams, state of the world and incremental, one PASS/FAIL per rule of Envoy's "xDS REST and gRPC
protocol" document, each with its section.

With only an address the read-only checks run; the checks that need the configuration to change are
SKIP. To run them too against a weft-control in local mode, give --drive-discovery-file with the file
that weft-control reads (--discovery-file): the suite REWRITES that file with its own services. The
restart check stays SKIP (the suite cannot restart a process it did not start).

The exit status is 1 when a check fails.`,
		Example: `  weft conformance --xds-addr 127.0.0.1:15010
  weft-control --discovery-file /tmp/conf.yaml & weft conformance --xds-addr 127.0.0.1:15010 --drive-discovery-file /tmp/conf.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if addr == "" {
				return errors.New("--xds-addr is required: the HOST:PORT of the xDS server to check (weft-control listens on 127.0.0.1:15010)")
			}
			if _, _, err := net.SplitHostPort(addr); err != nil {
				return fmt.Errorf("--xds-addr %q: want HOST:PORT", addr)
			}
			if format != "text" && format != "markdown" {
				return fmt.Errorf("--format %q: want text or markdown", format)
			}
			cfg := xdsconf.Config{Target: addr, Timeout: timeout, Quiet: quiet, Streams: streams}
			if nodeID != "" {
				cfg.Node = xdsconf.DefaultNode()
				cfg.Node.Id = nodeID
			}
			if run != "" {
				cfg.Match = func(id string) bool { return strings.Contains(id, run) }
			}
			if driveFile != "" {
				d, err := localmode.New(driveFile, conformanceServices)
				if err != nil {
					return fmt.Errorf("--drive-discovery-file: %w", err)
				}
				if metricsURL != "" {
					d.CountGoroutines = localmode.MetricsGoroutines(metricsURL)
				}
				cfg.Driver = d
			}
			out := cmd.OutOrStdout()
			if format == "text" {
				fmt.Fprintf(out, "xDS conformance of %s (rules from %s)\n", addr, xdsconf.Document)
				cfg.Out = out
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
			defer stop()
			results, err := xdsconf.Run(ctx, cfg)
			if err != nil {
				return err
			}
			if format == "markdown" {
				if err := xdsconf.WriteMarkdown(out, results); err != nil {
					return err
				}
			}
			fmt.Fprintln(out, xdsconf.Summary(results))
			for _, r := range results {
				if r.Status == xdsconf.Fail {
					return errConformanceFailed
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "xds-addr", "", "HOST:PORT of the xDS server to check")
	f.StringVar(&nodeID, "node-id", "", "node id to present (default xds-conformance.default, with Weft's node metadata)")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for a response the protocol requires")
	f.DurationVar(&quiet, "quiet", time.Second, "how long a stream must stay silent to count as \"nothing sent\"")
	f.IntVar(&streams, "streams", 32, "concurrent streams of the many-streams check")
	f.StringVar(&format, "format", "text", "text (a line per check as it runs) or markdown (a table at the end)")
	f.StringVar(&run, "run", "", "run only the checks whose ID contains this")
	f.StringVar(&driveFile, "drive-discovery-file", "", "weft-control's --discovery-file: REWRITTEN by the suite to change the configuration")
	f.StringVar(&metricsURL, "metrics-url", "", "with --drive-discovery-file: the control plane's Prometheus metrics (go_goroutines), to check for goroutine leaks (weft-control: http://127.0.0.1:15014/metrics)")
	return cmd
}

// conformanceServices is what --drive-discovery-file starts with: three services, two on one port.
var conformanceServices = []xdsconf.Service{
	{Namespace: "default", Name: "web", Port: 8080, Endpoints: []string{"127.0.0.11", "127.0.0.12"}},
	{Namespace: "default", Name: "api", Port: 8080, Endpoints: []string{"127.0.0.21"}},
	{Namespace: "default", Name: "grpc", Port: 9090, Endpoints: []string{"127.0.0.31"}},
}

var errConformanceFailed = errors.New("some conformance checks failed")
