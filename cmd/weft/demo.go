package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/cmd/weft/internal/demo"
)

func newDemoCmd() *cobra.Command {
	var o demo.Options
	var plain bool
	var block int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole mesh on this machine (no cluster, no root) and show its golden metrics live",
		Long: `Run a whole mesh on this machine, without a cluster and without root: weft-control in local mode
with its identity CA, three demo services (web calls books over HTTP and authors over gRPC; books fails
a share of its requests), each behind its own weft-proxy with mTLS between them, and a traffic
generator. Every pod is a loopback address 127.<block>.0.N. The table shows, per service, what its
proxy received: requests per second, success rate, p50/p99 latency and the share of mTLS traffic.
Ctrl-C stops everything and removes the demo's files. With --prometheus, Prometheus (Debian's
prometheus on PATH) scrapes every proxy on 127.<block>.0.1:9090, for weft stat and weft edges.

weft-control and weft-proxy are looked for next to this binary, then on PATH (make build puts all
three in bin/).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if block < 0 || block > 255 {
				return fmt.Errorf("--block %d: want 0 to 255 (the demo uses 127.<block>.0.0/16)", block)
			}
			if o.RPS < 1 {
				return fmt.Errorf("--rps %d: want at least 1 request per second", o.RPS)
			}
			if o.Interval <= 0 {
				return fmt.Errorf("--interval %v: want a positive duration such as 2s", o.Interval)
			}
			if o.Duration < 0 {
				return fmt.Errorf("--duration %v: want 0 (until Ctrl-C) or a positive duration such as 30s", o.Duration)
			}
			if o.FailRate < 0 || o.FailRate > 1 {
				return fmt.Errorf("--fail-rate %v: want a share between 0 and 1", o.FailRate)
			}
			if o.ScrapeInterval < time.Second {
				return fmt.Errorf("--scrape-interval %v: want at least 1s", o.ScrapeInterval)
			}
			o.Block = byte(block)
			o.Out, o.Log = cmd.OutOrStdout(), cmd.ErrOrStderr()
			o.Plain = plain || !isTerminal(os.Stdout)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			_, err := demo.Run(ctx, o)
			return err
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.Duration, "duration", 0, "stop this long after the mesh is ready (0: until Ctrl-C)")
	f.DurationVar(&o.Interval, "interval", 2*time.Second, "refresh the table this often")
	f.BoolVar(&plain, "plain", false, "print each table below the last instead of redrawing (the default when stdout is not a terminal)")
	f.IntVar(&block, "block", 0, "loopback block: the demo uses 127.<block>.0.0/16")
	f.IntVar(&o.RPS, "rps", 20, "requests per second the traffic generator sends to web")
	f.Float64Var(&o.FailRate, "fail-rate", 0.1, "share of books' requests that fail")
	f.BoolVar(&o.Prometheus, "prometheus", false, "also run Prometheus (Debian's prometheus on PATH) on 127.<block>.0.1:9090, scraping every proxy, for weft stat and weft edges")
	f.DurationVar(&o.ScrapeInterval, "scrape-interval", 5*time.Second, "with --prometheus: how often Prometheus scrapes the proxies")
	return cmd
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
