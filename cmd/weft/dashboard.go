package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/weft/internal/dashboard"
	"github.com/weftmesh/weft/cmd/weft/internal/tap"
)

func newDashboardCmd() *cobra.Command {
	var o vizOptions
	var addr string
	var conn tap.Conn
	cmd := &cobra.Command{
		Use:   "dashboard",
		Short: "Serve the web dashboard: namespaces, workloads and their golden metrics, topology, mTLS, live tap",
		Long: `Serve Weft's dashboard on a local address and print its URL: namespaces → workloads with their
golden metrics (the numbers of weft stat), charts of their recent history, the topology of who talks to
which Service and whether over mutual TLS, and a live tap of a workload's requests (weft-control's Tap
API, as weft tap). The page and its scripts are built into this binary.

  weft demo --prometheus                   # in another terminal: a mesh on this machine
  weft dashboard                           # then open http://127.0.0.1:50750

In a cluster it reads weft install --viz's Prometheus through the apiserver (or --prometheus-url), and
taps through weft-control (kubectl -n weft port-forward deploy/weft-control 15010).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, port, err := net.SplitHostPort(addr)
			if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
				return fmt.Errorf("--addr %q: want host:port such as 127.0.0.1:50750", addr)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			env, err := o.setup(ctx)
			if err != nil {
				return err
			}
			if err := env.checkScraped(ctx); err != nil {
				return err
			}
			opts := dashboard.Options{Prom: env.prom, PromURL: env.promURL, DefaultNamespace: o.namespace}
			if env.kube != nil {
				opts.Pods = kubePods{env.kube}
			}
			if conn.ControlAddr != "" {
				conn.Kubeconfig, conn.Context = o.kubeconfig, o.context
				tctx, cc, err := conn.Dial(ctx)
				if err != nil {
					return err
				}
				defer cc.Close()
				opts.Tap = dashboard.ControlTapper{Conn: cc, Outgoing: tctx}
			}
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("--addr %s: %w (is another dashboard running? choose another address with --addr)", addr, err)
			}
			// Only requests naming this machine's loopback, or the host --addr names, are served
			// (dashboard.HostGuard: DNS rebinding, cross-origin reads).
			hosts := []string{"127.0.0.1", "localhost", "::1"}
			if host != "" && host != "0.0.0.0" && host != "::" {
				hosts = append(hosts, host)
			}
			srv := &http.Server{Handler: dashboard.HostGuard(dashboard.Handler(opts), hosts...), ReadHeaderTimeout: 10 * time.Second}
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Weft dashboard at http://%s (Prometheus %s); Ctrl-C stops it\n",
				net.JoinHostPort(host, strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), env.promURL)
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(l) }()
			select {
			case <-ctx.Done():
			case err := <-errc:
				return err
			}
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:50750", "address to serve the dashboard on (loopback by default: it shows what Prometheus and tap show you)")
	f.StringVarP(&o.namespace, "namespace", "n", "", "namespace shown first (default: the first with traffic)")
	f.StringVar(&o.prometheusURL, "prometheus-url", envOr("WEFT_PROMETHEUS_URL", ""),
		"Prometheus to query, e.g. http://127.0.0.1:9090 (env WEFT_PROMETHEUS_URL; default: weft install --viz's, through the apiserver's service proxy, else http://127.0.0.1:9090, weft demo --prometheus's)")
	f.StringVar(&o.vizNamespace, "viz-namespace", "weft", "namespace of weft install --viz's Prometheus")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.context, "context", "", "kubeconfig context (default: the current one)")
	f.StringVar(&conn.ControlAddr, "control-addr", envOr("WEFT_CONTROL_ADDR", "127.0.0.1:15010"), "weft-control's plaintext xDS address, which serves Tap: weft demo's default, or in a cluster that of kubectl -n weft port-forward deploy/weft-control 15010 (env WEFT_CONTROL_ADDR; empty: no tap view)")
	f.StringVar(&conn.Token, "token", "", "bearer token weft-control authorizes taps with (default: the kubeconfig's)")
	o.window = time.Minute
	o.allNamespaces = true
	return cmd
}
