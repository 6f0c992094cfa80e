// Command weft-cni is Weft's CNI chained plugin and its installer.
//
//	weft-cni            the plugin, as a container runtime executes it (CNI_COMMAND=ADD|CHECK|DEL ...)
//	weft-cni install    puts the plugin on the node and chains it to the node's CNI configuration
//	                    (what the weft-cni DaemonSet runs); removes it again on SIGTERM
//	weft-cni version
//
// In CNI mode a meshed Pod needs no privileged init container: on ADD, the plugin reads the Pod from
// the apiserver and, when it has a weft-proxy container, programs the same interception as
// `weft-proxy init` (dataplane/iptables) inside the Pod's network namespace, with the
// config.weft.io/skip-* annotations. It passes the previous plugin's result on unchanged, meshed or
// not. DEL removes the rules; CHECK verifies them.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if os.Getenv("CNI_COMMAND") != "" { // a container runtime runs the plugin: CNI's contract, no command line
		ensureSbinOnPath()
		runPlugin()
		return
	}
	if err := newRootCmd().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "weft-cni:", err)
		os.Exit(1)
	}
}

// newRootCmd is weft-cni's command line (cobra, as the other binaries'): install and version; without
// a command it is the plugin, which then says what it is (CNI_COMMAND unset).
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "weft-cni",
		Short: "Weft's CNI chained plugin (run by the container runtime with CNI_COMMAND set) and its node installer",
		Long: `Weft's CNI chained plugin and its installer.

A container runtime runs weft-cni as a plugin, with CNI_COMMAND (ADD, CHECK, DEL) and the network
configuration on stdin; weft-cni install puts it on the node (what the weft-cni DaemonSet runs).`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q; commands: install, version (a container runtime runs the plugin with CNI_COMMAND set)", args[0])
			}
			return nil
		},
		Run: func(*cobra.Command, []string) {
			ensureSbinOnPath()
			runPlugin()
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%s: %w (%s --help)", c.Name(), err, c.CommandPath())
	})
	root.AddCommand(newInstallCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version and git commit of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), buildinfo.String(PluginType))
			return err
		},
	})
	return root
}

// newInstallCmd is weft-cni install; it runs until SIGTERM (or once, with --once).
func newInstallCmd() *cobra.Command {
	var f installFlags
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Put weft-cni on this node and chain it to the node's CNI configuration; keep it there until SIGTERM, then remove it",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("install: unexpected argument %q (flags only)", args[0])
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			if err := runInstall(ctx, f, c.OutOrStdout(), c.ErrOrStderr()); err != nil {
				return fmt.Errorf("install: %w", err)
			}
			return nil
		},
	}
	addInstallFlags(cmd.Flags(), &f)
	return cmd
}

// ensureSbinOnPath adds the usual system folders to PATH: runtimes pass their own environment to
// plugins, and a minimal one may lack /usr/sbin, where iptables lives.
func ensureSbinOnPath() {
	path := os.Getenv("PATH")
	have := filepath.SplitList(path)
	for _, d := range []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		found := false
		for _, h := range have {
			if strings.TrimSuffix(h, "/") == d {
				found = true
				break
			}
		}
		if !found {
			have = append(have, d)
		}
	}
	_ = os.Setenv("PATH", strings.Join(have, string(os.PathListSeparator)))
}
