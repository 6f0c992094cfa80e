package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/weftmesh/weft/cmd/weft/internal/tap"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// tapFlags are the flags tap and top share.
type tapFlags struct {
	namespace, path, method, authority string
	maxRPS                             float64
	conn                               tap.Conn
}

func (f *tapFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.namespace, "namespace", "n", "default", "namespace of the deploy or pod")
	fl.StringVar(&f.path, "path", "", "only requests whose path starts with this")
	fl.StringVar(&f.method, "method", "", "only requests with this method (GET, POST, ...)")
	fl.StringVar(&f.authority, "authority", "", "only requests with this authority (host:port as the client sent it)")
	fl.Float64Var(&f.maxRPS, "max-rps", 100, "at most this many requests per second from each proxy")
	fl.StringVar(&f.conn.ControlAddr, "control-addr", envOr("WEFT_CONTROL_ADDR", "127.0.0.1:15010"), "weft-control's plaintext xDS address, which serves Tap: weft demo's default, or in a cluster what kubectl -n weft port-forward deploy/weft-control 15010 opens (env WEFT_CONTROL_ADDR)")
	fl.StringVar(&f.conn.Token, "token", "", "bearer token weft-control authorizes the tap with (default: the kubeconfig's; weft-control checks that its user may get pods in the namespace)")
	fl.StringVar(&f.conn.Kubeconfig, "kubeconfig", "", "kubeconfig file whose bearer token to send (default: $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&f.conn.Context, "context", "", "kubeconfig context (default: the current one)")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// request checks the flags and the target argument and builds the request.
func (f *tapFlags) request(arg string, limit uint32) (*tapv1.ObserveRequest, error) {
	if f.maxRPS <= 0 {
		return nil, fmt.Errorf("--max-rps %v: want a positive number of requests per second", f.maxRPS)
	}
	if f.path != "" && !strings.HasPrefix(f.path, "/") {
		return nil, fmt.Errorf("--path %q: want a path prefix starting with /", f.path)
	}
	if f.conn.ControlAddr == "" {
		return nil, errors.New("--control-addr: empty; want weft-control's host:port (127.0.0.1:15010)")
	}
	t, err := tap.ParseTarget(arg, f.namespace)
	if err != nil {
		return nil, err
	}
	return &tapv1.ObserveRequest{Target: t, MaxRps: f.maxRPS, Limit: limit,
		Match: &tapv1.Match{PathPrefix: f.path, Method: f.method, Authority: f.authority}}, nil
}

func newTapCmd() *cobra.Command {
	var f tapFlags
	var output string
	var limit uint32
	cmd := &cobra.Command{
		Use:   "tap deploy/NAME|pod/NAME|ns/NAME",
		Short: "Stream the requests a deployment, pod or namespace serves and sends, live",
		Long: `Stream the requests that the proxies of a deployment, a pod or a namespace see, as they finish:
method, authority, path, status, latency and the mTLS identities of both ends (bodies never, and no
credentials). weft-control relays the tap from each pod's proxy; in a cluster it lets you tap only
a namespace whose pods you may get (it checks your kubeconfig's bearer token, or --token).

On weft demo: weft tap deploy/books -n demo
In a cluster: kubectl -n weft port-forward deploy/weft-control 15010 & weft tap deploy/web -n shop`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := tap.CheckFormat(output); err != nil {
				return err
			}
			req, err := f.request(args[0], limit)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			ctx, cc, err := f.conn.Dial(ctx)
			if err != nil {
				return err
			}
			defer cc.Close()
			out, notes := cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = tap.Observe(ctx, cc, req, func(r *tapv1.ObserveResponse) error {
				tap.Print(out, notes, tap.Format(output), r)
				return nil
			})
			if err != nil {
				return fmt.Errorf("tap %s: %w", args[0], err)
			}
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "", "wide (with the proxy pod and both identities) or json (one object per request)")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "stop after this many requests (0: until Ctrl-C)")
	return cmd
}

func newTopCmd() *cobra.Command {
	var f tapFlags
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "top deploy/NAME|pod/NAME|ns/NAME",
		Short: "A live table of the busiest paths of a deployment, pod or namespace (q quits)",
		Long: `A live table of the requests that the proxies of a deployment, a pod or a namespace see, from a tap:
per source, destination, method and path, the count, the best, worst and last latency and the success
rate, busiest first, refreshed every --interval. q (or Ctrl-C) quits.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval <= 0 {
				return fmt.Errorf("--interval %v: want a positive duration such as 1s", interval)
			}
			req, err := f.request(args[0], 0)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			ctx, cc, err := f.conn.Dial(ctx)
			if err != nil {
				return err
			}
			defer cc.Close()
			return runTop(ctx, cmd.InOrStdin(), cmd.OutOrStdout(), fmt.Sprintf("weft top %s -n %s", args[0], req.GetTarget().GetNamespace()), interval, func(ctx context.Context, t *tap.Top) error {
				return tap.Observe(ctx, cc, req, func(r *tapv1.ObserveResponse) error { t.Add(r); return nil })
			})
		},
	}
	f.add(cmd)
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "refresh the table this often")
	return cmd
}

// runTop draws the table every interval until q, Ctrl-C or the end of the stream. On a terminal it uses
// the alternate screen and reads keys unbuffered; otherwise it prints each table below the last.
func runTop(ctx context.Context, in io.Reader, out io.Writer, title string, interval time.Duration, stream func(context.Context, *tap.Top) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	outF, outTTY := out.(*os.File)
	outTTY = outTTY && term.IsTerminal(int(outF.Fd()))
	if inF, ok := in.(*os.File); ok && term.IsTerminal(int(inF.Fd())) {
		if st, err := term.MakeRaw(int(inF.Fd())); err == nil {
			defer func() { _ = term.Restore(int(inF.Fd()), st) }()
		}
	}
	height := 0
	if outTTY {
		fmt.Fprint(out, "\x1b[?1049h\x1b[?25l") // alternate screen, cursor hidden
		defer fmt.Fprint(out, "\x1b[?25h\x1b[?1049l")
	}
	quit := make(chan struct{})
	go func() { // keys: q, Q or Ctrl-C (raw mode delivers it as a byte)
		b := make([]byte, 1)
		for {
			n, err := in.Read(b)
			if err != nil {
				return
			}
			if n == 1 && (b[0] == 'q' || b[0] == 'Q' || b[0] == 3) {
				close(quit)
				return
			}
		}
	}()
	t := tap.NewTop()
	errc := make(chan error, 1)
	go func() { errc <- stream(ctx, t) }()
	draw := func() {
		var b bytes.Buffer
		if outTTY {
			if _, h, err := term.GetSize(int(outF.Fd())); err == nil {
				height = h
			}
			b.WriteString("\x1b[H\x1b[2J")
			t.Render(&b, title, height)
			_, _ = out.Write(bytes.ReplaceAll(b.Bytes(), []byte("\n"), []byte("\r\n")))
			return
		}
		t.Render(&b, title, 0)
		b.WriteString("\n")
		_, _ = out.Write(b.Bytes())
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	draw()
	for {
		select {
		case <-quit:
			return nil
		case <-ctx.Done():
			return nil
		case err := <-errc:
			draw()
			if err != nil {
				return fmt.Errorf("top: %w", err)
			}
			return nil
		case <-tick.C:
			draw()
		}
	}
}
