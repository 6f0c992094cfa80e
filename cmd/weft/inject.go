package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/deploy/charts"
	"github.com/weftmesh/weft/deploy/inject"
)

func newInjectCmd() *cobra.Command {
	var (
		manual     bool
		configFile string
	)
	cmd := &cobra.Command{
		Use:   "inject FILE|-",
		Short: "Add Weft to the workloads of a manifest: kubectl get deploy -o yaml | weft inject - | kubectl apply -f -",
		Long: `Rewrite the Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and Pods (also inside
Lists) of a multi-document YAML stream, and print it. Other documents, and every other field, are kept
as they are; comments are kept.

By default the Pod templates get the annotation weft.io/inject: enabled, and the injector (weft-control's
admission webhook) adds the proxy when the Pods are created. With --manual the proxy is written into
the Pod templates here, by the same code as the injector, with the proxy defaults of --config: the
config.yaml of the weft-config ConfigMap,

  kubectl get configmap -n weft weft-config -o jsonpath='{.data.config\.yaml}' > weft-config.yaml

or, without --config, those of the chart built into this CLI (which carry no trust anchors).

A workload whose template says weft.io/inject: disabled, or uses the host's network, is left alone; a
config.weft.io annotation with a bad value is an error naming it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, fromChart, err := injectConfig(configFile)
			if err != nil {
				return err
			}
			mode := inject.Annotate
			if manual {
				mode = inject.Manual
				if fromChart || cfg.TrustAnchorsPEM == "" {
					fmt.Fprintln(cmd.ErrOrStderr(), "weft inject: the proxy defaults have no trust anchors, so the proxies will not get certificates: pass --config with the cluster's weft-config (weft inject --help)")
				}
			}
			return rewrite(cmd, args[0], mode, cfg)
		},
	}
	cmd.Flags().BoolVar(&manual, "manual", false, "write the proxy into the Pod templates instead of annotating them for the injector")
	cmd.Flags().StringVar(&configFile, "config", "", "proxy defaults (config.yaml of the weft-config ConfigMap); default: the built-in chart's")
	return cmd
}

func newUninjectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "uninject FILE|-",
		Short: "Remove Weft from the workloads of a manifest: kubectl get deploy -o yaml | weft uninject - | kubectl apply -f -",
		Long: `Undo weft inject, either form: remove the weft-proxy, weft-init and weft-validate containers, the
weft-token and weft-init-run volumes, the weft.io/control-plane-ns label, the weft.io/proxy-version annotation and
weft.io/inject: enabled from the Pod templates of a YAML stream (weft.io/inject: disabled stays). Other
documents and fields are kept as they are.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return rewrite(cmd, args[0], inject.Remove, inject.Config{})
		},
	}
}

func rewrite(cmd *cobra.Command, file string, mode inject.Mode, cfg inject.Config) error {
	var in io.Reader = cmd.InOrStdin()
	name := "standard input"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		in, name = f, file
	}
	out, err := inject.Rewrite(in, mode, cfg, func(line string) { fmt.Fprintln(cmd.ErrOrStderr(), line) })
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	_, err = cmd.OutOrStdout().Write(out)
	return err
}

// injectConfig is the proxy defaults from file, or from the chart built into this CLI (fromChart).
func injectConfig(file string) (cfg inject.Config, fromChart bool, err error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return cfg, false, fmt.Errorf("--config: %w", err)
		}
		if cfg, err = inject.ParseConfig(data); err != nil {
			return cfg, false, fmt.Errorf("--config %s: %w", file, err)
		}
		return cfg, false, nil
	}
	cfg, err = chartInjectConfig()
	return cfg, true, err
}

// chartInjectConfig is the config.yaml of the weft-config ConfigMap that weft install renders with its
// defaults at this CLI's version, without trust anchors.
func chartInjectConfig() (inject.Config, error) {
	placeholder := "-"
	o := installOptions{namespace: charts.DefaultNamespace, tag: buildinfo.Version, replicas: 1, logLevel: "info", proxyLogLevel: "info", proxyCPU: "1", proxyMemory: "1", proxyMemLimit: "1"}
	vals, err := installValues(o, newInstallCmd().Flags(), nil, identityValues{bundlePEM: placeholder, issuerCertPEM: placeholder, issuerKeyPEM: placeholder})
	if err != nil {
		return inject.Config{}, err
	}
	manifests, err := renderChart(charts.DefaultNamespace, vals)
	if err != nil {
		return inject.Config{}, err
	}
	for _, m := range manifests {
		if m.Kind != "ConfigMap" || m.Name != "weft-config" {
			continue
		}
		var cm corev1.ConfigMap
		if err := yaml.Unmarshal([]byte(m.Content), &cm); err != nil {
			return inject.Config{}, fmt.Errorf("the chart's weft-config: %w", err)
		}
		cfg, err := inject.ParseConfig([]byte(cm.Data["config.yaml"]))
		if err != nil {
			return inject.Config{}, fmt.Errorf("the chart's weft-config: %w", err)
		}
		cfg.TrustAnchorsPEM = ""
		return cfg, nil
	}
	return inject.Config{}, errors.New("the built-in chart has no weft-config ConfigMap")
}
