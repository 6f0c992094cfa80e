// Command weft-proxy is the Weft sidecar proxy, configured only by xDS.
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
	root := &cobra.Command{
		Use:           "weft-proxy",
		Short:         "The Weft sidecar proxy, configured only by xDS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Version,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("the proxy is not built yet")
		},
	}
	root.SetVersionTemplate(buildinfo.String("weft-proxy") + "\n")
	return root
}
