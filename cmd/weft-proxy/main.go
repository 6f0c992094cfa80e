// Command weft-proxy is the Weft sidecar proxy, configured only by xDS.
//
//	weft-proxy [run]    the proxy (default)
//	weft-proxy init     programs iptables for the pod, as an init container
//	weft-proxy await    blocks until the local proxy is ready (a postStart hook)
//	weft-proxy validate checks that traffic redirection really works
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "weft-proxy:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	run := newRunCmd()
	root := &cobra.Command{
		Use:           "weft-proxy",
		Short:         "The Weft sidecar proxy, configured only by xDS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Version,
		Args:          cobra.NoArgs,
		RunE:          run.RunE,
	}
	root.Flags().AddFlagSet(run.Flags())
	root.SetVersionTemplate(buildinfo.String("weft-proxy") + "\n")
	root.AddCommand(run, newInitCmd(), newAwaitCmd(), newValidateCmd())
	return root
}
