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

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
)

func main() {
	if len(os.Args) > 1 && os.Getenv("CNI_COMMAND") == "" {
		switch os.Args[1] {
		case "install":
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			if err := runInstall(ctx, os.Args[2:], os.Stdout, os.Stderr); err != nil {
				fmt.Fprintln(os.Stderr, "weft-cni install:", err)
				os.Exit(1)
			}
			return
		case "version", "--version", "-version":
			fmt.Println(buildinfo.String(PluginType))
			return
		default:
			fmt.Fprintf(os.Stderr, "weft-cni: unknown command %q; commands: install, version (a container runtime runs the plugin with CNI_COMMAND set)\n", os.Args[1])
			os.Exit(2)
		}
	}
	ensureSbinOnPath()
	runPlugin()
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
