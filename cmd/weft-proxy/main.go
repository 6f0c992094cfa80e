// Command weft-proxy is the Weft sidecar proxy, configured only by xDS.
//
//	weft-proxy [run]    the proxy (default)
//	weft-proxy init     programs iptables for the pod, as an init container
//	weft-proxy await    blocks until the local proxy is ready (a postStart hook)
//	weft-proxy validate checks that traffic redirection really works
//
// The command line is parsed with the standard library's flag package (flags as --name value or
// --name=value): a CLI framework would add about a megabyte of resident memory to every pod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if err := execute(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "weft-proxy:", err)
		os.Exit(1)
	}
}

// command is one subcommand: its flags, and what it does once they are parsed.
type command struct {
	name, short, long string
	flags             *flag.FlagSet
	run               func(ctx context.Context, stdout io.Writer) error
}

func newCommand(name, short, long string) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help is printed by execute
	return &command{name: name, short: short, long: long, flags: fs}
}

func commands() []*command {
	return []*command{newRunCmd(), newInitCmd(), newAwaitCmd(), newValidateCmd()}
}

// execute runs weft-proxy with args (without the program name): a subcommand name first, or run's
// flags directly; --version; -h or --help after any command.
func execute(ctx context.Context, args []string, stdout io.Writer) error {
	cmds := commands()
	cmd, rest := cmds[0], args
	if len(args) > 0 {
		switch a := args[0]; {
		case a == "--version" || a == "-version" || a == "version":
			_, err := fmt.Fprintln(stdout, buildinfo.String("weft-proxy"))
			return err
		case a == "help":
			printUsage(stdout, nil, cmds)
			return nil
		case !strings.HasPrefix(a, "-"):
			cmd = nil
			for _, c := range cmds {
				if c.name == a {
					cmd, rest = c, args[1:]
				}
			}
			if cmd == nil {
				return fmt.Errorf("unknown command %q: want run, init, await or validate (weft-proxy --help)", a)
			}
		}
	}
	if err := cmd.flags.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			root := cmd == cmds[0] && (len(args) == 0 || args[0] != "run")
			if root {
				printUsage(stdout, cmd, cmds)
			} else {
				printUsage(stdout, cmd, nil)
			}
			return nil
		}
		return fmt.Errorf("%s: %w (weft-proxy %s --help)", cmd.name, err, cmd.name)
	}
	if cmd.flags.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q (weft-proxy %s --help)", cmd.name, cmd.flags.Arg(0), cmd.name)
	}
	return cmd.run(ctx, stdout)
}

// printUsage prints a command's help (the root's, with the list of commands, when cmds is set).
func printUsage(w io.Writer, cmd *command, cmds []*command) {
	if cmds != nil {
		fmt.Fprintf(w, "The Weft sidecar proxy, configured only by xDS.\n\nUsage:\n  weft-proxy [command] [flags]\n\nCommands:\n")
		for _, c := range cmds {
			fmt.Fprintf(w, "  %-9s %s\n", c.name, c.short)
		}
		fmt.Fprintf(w, "\nWithout a command, weft-proxy runs the proxy (run).\n")
		if cmd == nil {
			return
		}
		fmt.Fprintf(w, "\nFlags of run:\n")
	} else {
		text := cmd.short
		if cmd.long != "" {
			text = cmd.long
		}
		fmt.Fprintf(w, "%s\n\nUsage:\n  weft-proxy %s [flags]\n\nFlags:\n", text, cmd.name)
	}
	cmd.flags.SetOutput(w)
	cmd.flags.PrintDefaults()
	cmd.flags.SetOutput(io.Discard)
}

// isSet reports whether a flag was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// uintFlag is a flag.Value for an unsigned integer of bits bits (ports, uids).
type uintFlag[T uint16 | uint32] struct{ p *T }

func uintVar[T uint16 | uint32](fs *flag.FlagSet, p *T, name string, value T, usage string) {
	*p = value
	fs.Var(uintFlag[T]{p}, name, usage)
}

func (f uintFlag[T]) String() string {
	if f.p == nil {
		return "0"
	}
	return strconv.FormatUint(uint64(*f.p), 10)
}

func (f uintFlag[T]) Set(s string) error {
	var zero T
	bits := 16
	if any(zero) == any(uint32(0)) {
		bits = 32
	}
	n, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return fmt.Errorf("want a number from 0 to %d", uint64(1)<<bits-1)
	}
	*f.p = T(n)
	return nil
}
