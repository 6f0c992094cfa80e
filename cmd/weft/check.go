package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftmesh/weft/cmd/weft/internal/check"
	"github.com/weftmesh/weft/deploy/charts"
)

type checkOptions struct {
	pre, proxy     bool
	namespace      string
	cpNamespace    string
	probeNamespace string
	kubeconfig     string
	context        string
	output         string
	wait           time.Duration
	cni            bool
}

// errChecksFailed makes weft exit 1 after the report is printed (no further message).
var errChecksFailed = errors.New("checks failed")

func newCheckCmd() *cobra.Command {
	var o checkOptions
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the cluster can run Weft (--pre), that Weft works, and that the meshed Pods' proxies do (--proxy)",
		Long: `Check a cluster, Linkerd-style: each line is a check, √ when it passed, ‼ a warning, × a failure
with what was found, what to do and a link (https://weft.io/checks#ID). The exit code is 1 if a check
failed.

  weft check --pre      before weft install: apiserver, version, clock, RBAC to install, webhooks, native sidecars
  weft check            after: control plane Pods, the injector webhook (a dry-run Pod must come back
                        with the proxy), the CA, xDS serving
  weft check --proxy    also every meshed Pod: Ready, its proxy's version, connected to a control plane
                        (--namespace NS: only the Pods of NS; --control-plane-namespace if not weft)

The control plane's admin endpoints (port 15014) are read through the apiserver's service and pod
proxies, so weft check needs no port-forward, but your user needs get on services/proxy and pods/proxy
in the control plane's namespace.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCheck(cmd, o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.pre, "pre", false, "check that Weft can be installed (before weft install)")
	f.BoolVar(&o.proxy, "proxy", false, "also check the meshed Pods' proxies")
	f.StringVarP(&o.namespace, "namespace", "n", "", "namespace of the control plane (default weft); with --proxy, the namespace of the meshed Pods to check (default: every namespace)")
	f.StringVar(&o.cpNamespace, "control-plane-namespace", "", "namespace of the control plane, in every mode (default weft, or --namespace without --proxy)")
	f.StringVar(&o.probeNamespace, "probe-namespace", "default", "namespace of the dry-run Pods that try the injector (and, with --pre, native sidecars)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.context, "context", "", "kubeconfig context (default: the current one)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.DurationVar(&o.wait, "wait", 0, "retry failing checks until they pass or this long has passed (such as 5m)")
	f.BoolVar(&o.cni, "cni", false, "with --pre: Weft will be installed in CNI mode (also check DaemonSets may be created)")
	return cmd
}

func runCheck(cmd *cobra.Command, o checkOptions) error {
	switch o.output {
	case "table", "json":
	default:
		return fmt.Errorf("--output %q: want table or json", o.output)
	}
	if o.wait < 0 {
		return fmt.Errorf("--wait %v: want a positive duration such as 5m", o.wait)
	}
	if o.pre && o.proxy {
		return errors.New("--pre and --proxy: choose one (--pre is before weft install, --proxy after)")
	}
	for flag, ns := range map[string]string{"namespace": o.namespace, "control-plane-namespace": o.cpNamespace, "probe-namespace": o.probeNamespace} {
		if ns == "" && flag != "probe-namespace" {
			continue
		}
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return fmt.Errorf("--%s %q: not a namespace name (%s)", flag, ns, errs[0])
		}
	}
	cpNamespace, proxyNamespace := charts.DefaultNamespace, ""
	if o.proxy {
		proxyNamespace = o.namespace
	} else if o.namespace != "" {
		cpNamespace = o.namespace
	}
	if o.cpNamespace != "" {
		cpNamespace = o.cpNamespace
	}
	t := &check.Target{
		Namespace: cpNamespace, ProbeNamespace: o.probeNamespace, ProxyNamespace: proxyNamespace, CNI: o.cni,
		Connect: func() (kubernetes.Interface, check.ServerClock, error) {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			rules.ExplicitPath = o.kubeconfig
			cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context}).ClientConfig()
			if err != nil {
				return nil, nil, fmt.Errorf("reading the kubeconfig: %w", err)
			}
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return nil, nil, fmt.Errorf("making a Kubernetes client: %w", err)
			}
			return client, check.DateClock{Config: cfg}, nil
		},
	}
	checks := check.KubernetesChecks(t)
	switch {
	case o.pre:
		checks = append(checks, check.PreChecks(t)...)
	case o.proxy:
		checks = append(append(checks, check.ControlPlaneChecks(t)...), check.DataPlaneChecks(t)...)
	default:
		checks = append(checks, check.ControlPlaneChecks(t)...)
	}
	runner := check.Runner{Wait: o.wait}
	out := cmd.OutOrStdout()
	var report check.Report
	if o.output == "json" {
		report = runner.Run(cmd.Context(), checks)
		if err := check.WriteJSON(out, report); err != nil {
			return err
		}
	} else {
		p := &check.TextPrinter{W: out}
		runner.Progress, runner.Waiting = p.Print, p.Waiting
		report = runner.Run(cmd.Context(), checks)
		p.Summary(report)
	}
	if !report.Success() {
		return errChecksFailed
	}
	return nil
}
