package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

func newAwaitCmd() *cobra.Command {
	var (
		admin    string
		timeout  time.Duration
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "await",
		Short: "Block until the local proxy is ready (a postStart hook), or fail after --timeout",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := awaitReady(c.Context(), admin, timeout, interval); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "proxy at %s is ready\n", admin)
			return nil
		},
	}
	cmd.Flags().StringVar(&admin, "admin-addr", "127.0.0.1:15000", "the proxy's admin address (host:port); /ready is polled there")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	cmd.Flags().DurationVar(&interval, "interval", 200*time.Millisecond, "time between two polls")
	return cmd
}

// awaitReady polls http://admin/ready until it answers 200, or returns an error saying what it last
// saw when timeout passes.
func awaitReady(ctx context.Context, admin string, timeout, interval time.Duration) error {
	if timeout <= 0 {
		return errors.New("--timeout must be positive")
	}
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + admin + "/ready"
	client := &http.Client{Timeout: max(interval, time.Second)}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := "no answer yet"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("--admin-addr %q: %w", admin, err)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("last answer %s %q", resp.Status, body)
		} else if ctx.Err() == nil {
			last = "last error: " + err.Error()
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("the proxy at %s was not ready after %s (%s); check the proxy container's logs", url, timeout, last)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}
