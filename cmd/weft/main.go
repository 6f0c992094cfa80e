// Command weft is the CLI users live in: install, inject, check, stat, tap, demo, identity, version.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		if errors.Is(err, errChecksFailed) {
			os.Exit(1) // weft check printed why
		}
		fmt.Fprintln(os.Stderr, "weft:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "weft",
		Short:         "Weft is a service mesh for Kubernetes built on xDS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Version,
	}
	root.SetVersionTemplate(buildinfo.String("weft") + "\n")
	root.AddCommand(newVersionCmd())
	root.AddCommand(newInstallCmd())
	root.AddCommand(newUninstallCmd())
	root.AddCommand(newInjectCmd())
	root.AddCommand(newUninjectCmd())
	root.AddCommand(newCheckCmd())
	root.AddCommand(newIdentityCmd())
	root.AddCommand(newDemoCmd())
	root.AddCommand(newStatCmd())
	root.AddCommand(newEdgesCmd())
	root.AddCommand(newTapCmd(), newTopCmd()) // tap.go
	root.AddCommand(newDashboardCmd())        // dashboard.go
	root.AddCommand(newConformanceCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and git commit of this binary",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), buildinfo.String("weft"))
		},
	}
}
