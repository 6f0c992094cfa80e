package main

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/dataplane/iptables"
)

func newValidateCmd() *cobra.Command {
	var (
		o       iptables.ValidateOptions
		connect string
	)
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check that outbound traffic is really redirected to the proxy (run after init, before the proxy)",
		Long: `Listen on the outbound port, connect to --connect-addr as the current user (which must not be
the proxy's uid), and check that the connection lands on that listener with --connect-addr as its
original destination. Exits non-zero with the reason when it does not.`,
		Args: noArgs,
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error {
		ctx, stdout := c.Context(), c.OutOrStdout()
		ap, err := netip.ParseAddrPort(connect)
		if err != nil || !ap.Addr().Is4() {
			return fmt.Errorf("--connect-addr %q: want an IPv4 address and port such as %s", connect, iptables.DefaultValidateAddr)
		}
		o.ConnectAddr = ap
		if err := iptables.Validate(ctx, o); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "outbound interception works: a connection to %s reached port %d\n", ap, o.OutboundPort)
		return nil
	}
	fl := cmd.Flags()
	fl.StringVar(&connect, "connect-addr", iptables.DefaultValidateAddr.String(), "an address:port outside the pod to connect to (never reached when interception works)")
	uintVar(cmd, &o.OutboundPort, "outbound-port", iptables.DefaultOutboundPort, "the port intercepted outbound TCP should reach")
	uintVar(cmd, &o.ProxyUID, "proxy-uid", iptables.DefaultProxyUID, "the proxy's uid (validate refuses to run as it)")
	fl.DurationVar(&o.Timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}
