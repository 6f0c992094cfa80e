package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/weftmesh/weft/dataplane/iptables"
)

func newValidateCmd() *command {
	var (
		o       iptables.ValidateOptions
		connect string
	)
	cmd := newCommand("validate", "Check that outbound traffic is really redirected to the proxy (run after init, before the proxy)",
		`Listen on the outbound port, connect to --connect-addr as the current user (which must not be
the proxy's uid), and check that the connection lands on that listener with --connect-addr as its
original destination. Exits non-zero with the reason when it does not.`)
	cmd.run = func(ctx context.Context, stdout io.Writer) error {
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
	fl := cmd.flags
	fl.StringVar(&connect, "connect-addr", iptables.DefaultValidateAddr.String(), "an address:port outside the pod to connect to (never reached when interception works)")
	uintVar(fl, &o.OutboundPort, "outbound-port", iptables.DefaultOutboundPort, "the port intercepted outbound TCP should reach")
	uintVar(fl, &o.ProxyUID, "proxy-uid", iptables.DefaultProxyUID, "the proxy's uid (validate refuses to run as it)")
	fl.DurationVar(&o.Timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}
