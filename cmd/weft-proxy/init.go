package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// initFlags are the flags of `weft-proxy init`; the skip-* ones mirror the config.weft.io/skip-*
// annotations and take the same text.
type initFlags struct {
	skipInbound, skipOutbound, skipSubnets string
	proxyUID                               uint32
	inboundPort, outboundPort, adminPort   uint16
	dryRun                                 bool
	mode                                   string
}

// options turns the flags into iptables options, or one clear error naming the flag.
func (f initFlags) options() (iptables.Options, error) {
	o := iptables.Options{ProxyUID: f.proxyUID, InboundPort: f.inboundPort, OutboundPort: f.outboundPort, AdminPort: f.adminPort}
	var err error
	if o.SkipInboundPorts, err = iptables.ParsePorts(f.skipInbound); err != nil {
		return o, fmt.Errorf("--skip-inbound-ports: %w", err)
	}
	if o.SkipOutboundPorts, err = iptables.ParsePorts(f.skipOutbound); err != nil {
		return o, fmt.Errorf("--skip-outbound-ports: %w", err)
	}
	if o.SkipSubnets, err = iptables.ParseSubnets(f.skipSubnets); err != nil {
		return o, fmt.Errorf("--skip-subnets: %w", err)
	}
	return o, nil
}

func newInitCmd() *cobra.Command {
	var f initFlags
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Program the pod's iptables so its TCP goes through the proxy (run as an init container)",
		Long: `Program the nat table of the pod's network namespace: inbound TCP goes to the inbound port and
outbound TCP to the outbound port, except the proxy's own uid, loopback, the admin port, and the
skipped ports and subnets. Running it again changes nothing. Needs NET_ADMIN and NET_RAW.`,
		Args: noArgs,
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error {
		ctx, stdout := c.Context(), c.OutOrStdout()
		opts, err := f.options()
		if err != nil {
			return err
		}
		mode, err := iptables.ParseMode(f.mode)
		if err != nil {
			return fmt.Errorf("--iptables-mode: %w", err)
		}
		rs, err := iptables.Rules(opts)
		if err != nil {
			return err
		}
		if f.dryRun {
			_, err := fmt.Fprint(stdout, rs.Restore())
			return err
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		a := &iptables.Applier{Mode: mode, Log: log}
		res, err := a.Apply(ctx, rs)
		if err != nil {
			return err
		}
		if res.Changed {
			fmt.Fprintf(stdout, "iptables programmed (%s backend)\n", res.Backend.Mode)
		} else {
			fmt.Fprintf(stdout, "iptables already programmed (%s backend); nothing changed\n", res.Backend.Mode)
		}
		return nil
	}
	fl := cmd.Flags()
	fl.StringVar(&f.skipInbound, "skip-inbound-ports", "", `inbound ports that bypass the proxy, as config.weft.io/skip-inbound-ports ("22,8000-8100")`)
	fl.StringVar(&f.skipOutbound, "skip-outbound-ports", "", `outbound ports that bypass the proxy, as config.weft.io/skip-outbound-ports ("5432,3306")`)
	fl.StringVar(&f.skipSubnets, "skip-subnets", "", `IPv4 CIDRs whose traffic bypasses the proxy, as config.weft.io/skip-subnets ("10.0.0.0/8,169.254.169.254/32")`)
	uintVar(cmd, &f.proxyUID, "proxy-uid", iptables.DefaultProxyUID, "uid the proxy runs as; its traffic is never intercepted")
	uintVar(cmd, &f.inboundPort, "inbound-port", iptables.DefaultInboundPort, "proxy port receiving intercepted inbound TCP")
	uintVar(cmd, &f.outboundPort, "outbound-port", iptables.DefaultOutboundPort, "proxy port receiving intercepted outbound TCP")
	uintVar(cmd, &f.adminPort, "admin-port", iptables.DefaultAdminPort, "proxy admin port, never intercepted inbound")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the iptables-restore input for the nat table and change nothing")
	fl.StringVar(&f.mode, "iptables-mode", string(iptables.ModeAuto), "iptables backend: auto, nft or legacy")
	return cmd
}
