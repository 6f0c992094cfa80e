// Command weft-control is the Weft control plane: it watches Kubernetes (or a file, in local mode)
// and serves xDS to every proxy of the mesh.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "weft-control:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "weft-control",
		Short:         "The Weft control plane: Kubernetes in, xDS out",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Version,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return fmt.Errorf("the control plane is not built yet")
		},
	}
	root.SetVersionTemplate(buildinfo.String("weft-control") + "\n")
	return root
}
