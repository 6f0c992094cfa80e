// Command weft-proxy is the Weft sidecar proxy, configured only by xDS.
//
//	weft-proxy [run]    the proxy (default)
//	weft-proxy init     programs iptables for the pod, as an init container
//	weft-proxy validate checks that traffic redirection really works
//	weft-proxy await    blocks until the local proxy is ready (a postStart hook)
//	weft-proxy version  prints the version
//
// The command line is cobra's, as weft's and weft-control's. No help, usage or version template is
// set: cobra's default ones are Go functions, and a template would link text/template, whose
// MethodByName keeps every exported method of the binary alive (a bigger binary is more resident
// memory in every pod: memory.go). Measured against the flag-package command line it replaced
// (bench/proxy, the old binary beside the new in the same run, three runs, 2026-12-07): 403 KB more
// binary (text+rodata+pclntab), 0.05–0.2 MB more idle VmRSS per sidecar (11.4–11.7 MB, under the 12 MB
// target).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if err := execute(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "weft-proxy:", err)
		os.Exit(1)
	}
}

// execute runs weft-proxy with args (without the program name): a subcommand name first, or run's
// flags directly; --version; -h or --help after any command.
func execute(ctx context.Context, args []string, stdout io.Writer) error {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	return root.ExecuteContext(ctx)
}

// newRootCmd is weft-proxy: run's flags and action (run is the default command), and the commands.
func newRootCmd() *cobra.Command {
	runCmd := newRunCmd()
	var version bool
	root := &cobra.Command{
		Use:   "weft-proxy",
		Short: "The Weft sidecar proxy, configured only by xDS",
		Long: `The Weft sidecar proxy, configured only by xDS.

Without a command, weft-proxy runs the proxy (run) with the flags below.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q: want run, init, await or validate (weft-proxy --help)", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if version {
				return printVersion(cmd.OutOrStdout())
			}
			return runCmd.RunE(cmd, args)
		},
	}
	root.Flags().AddFlagSet(runCmd.Flags()) // the same flags, bound to the same options
	root.Flags().BoolVar(&version, "version", false, "print the version and exit")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		name := c.Name()
		if c == root {
			name = "run"
		}
		return fmt.Errorf("%s: %w (weft-proxy %s --help)", name, err, name)
	})
	root.AddCommand(runCmd, newInitCmd(), newValidateCmd(), newAwaitCmd(), &cobra.Command{
		Use:   "version",
		Short: "Print the version and git commit of this binary",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return printVersion(cmd.OutOrStdout()) },
	})
	return root
}

func printVersion(w io.Writer) error {
	_, err := fmt.Fprintln(w, buildinfo.String("weft-proxy"))
	return err
}

// noArgs rejects positional arguments: every input of weft-proxy is a flag.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s: unexpected argument %q (weft-proxy %s --help)", cmd.Name(), args[0], cmd.Name())
	}
	return nil
}

// uintFlag is a pflag.Value for an unsigned integer of 16 or 32 bits (ports, uids) whose error names
// the range.
type uintFlag[T uint16 | uint32] struct{ p *T }

func uintVar[T uint16 | uint32](cmd *cobra.Command, p *T, name string, value T, usage string) {
	*p = value
	cmd.Flags().Var(uintFlag[T]{p}, name, usage)
}

func (f uintFlag[T]) bits() int {
	var zero T
	if any(zero) == any(uint32(0)) {
		return 32
	}
	return 16
}

func (f uintFlag[T]) Type() string { return "uint" + strconv.Itoa(f.bits()) }

func (f uintFlag[T]) String() string {
	if f.p == nil {
		return "0"
	}
	return strconv.FormatUint(uint64(*f.p), 10)
}

func (f uintFlag[T]) Set(s string) error {
	bits := f.bits()
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return fmt.Errorf("want a number from 0 to %d", uint64(1)<<bits-1)
	}
	*f.p = T(n)
	return nil
}
