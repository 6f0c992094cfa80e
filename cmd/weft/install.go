package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/strvals"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/deploy/charts"
	"github.com/weftmesh/weft/identity"
)

// installOptions are weft install's flags. Each named flag sets one value of the chart (values.yaml);
// --values and --set reach the others, as with helm.
type installOptions struct {
	namespace     string
	registry      string
	tag           string
	replicas      int
	trustDomain   string
	logLevel      string
	proxyLogLevel string
	proxyCPU      string
	proxyMemory   string
	proxyMemLimit string
	native        bool
	cni           bool
	viz           bool
	identityDir   string
	valueFiles    []string
	sets          []string
	output        string
}

// flagValues maps a named flag to the chart value it sets.
var flagValues = map[string]string{
	"registry":             "image.registry",
	"tag":                  "image.tag",
	"replicas":             "controlPlane.replicas",
	"trust-domain":         "trustDomain",
	"log-level":            "controlPlane.logLevel",
	"proxy-log-level":      "proxy.logLevel",
	"proxy-cpu-request":    "proxy.resources.requests.cpu",
	"proxy-memory-request": "proxy.resources.requests.memory",
	"proxy-memory-limit":   "proxy.resources.limits.memory",
	"native-sidecars":      "proxy.nativeSidecars",
	"cni":                  "cni.enabled",
	"viz":                  "viz.enabled",
}

func newInstallCmd() *cobra.Command {
	var o installOptions
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Print the manifests that install Weft's control plane: weft install | kubectl apply -f -",
		Long: `Print the Kubernetes manifests of Weft's control plane, rendered from the Helm chart built into
this binary (deploy/charts/weft; helm install renders the same objects):

  weft check --pre                              # can this cluster run Weft?
  weft install | kubectl apply -f -             # namespace weft: weft-control, the injector, the CA
  weft check                                    # is it up?
  kubectl annotate namespace NS weft.io/inject=enabled
  kubectl rollout restart deployment -n NS      # the new Pods get the proxy

The identity Secret holds the issuer that signs workload certificates. Without --identity-dir, a new
trust anchor and issuer are made for this install and the anchor's key is thrown away (to rotate the
issuer later, make your own CA with weft identity bootstrap and pass --identity-dir). The manifests
carry the issuer's private key, so weft install will not print them to a terminal: pipe them, or
write them with -o FILE.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runInstall(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.namespace, "namespace", charts.DefaultNamespace, "namespace of the control plane")
	f.StringVar(&o.registry, "registry", "ghcr.io/weftmesh", "registry of the weft-control, weft-proxy and weft-cni images")
	f.StringVar(&o.tag, "tag", buildinfo.Version, "tag of the images (this CLI's version unless set)")
	f.IntVar(&o.replicas, "replicas", 3, "replicas of weft-control")
	f.StringVar(&o.trustDomain, "trust-domain", identity.DefaultTrustDomain, "SPIFFE trust domain of workload identities")
	f.StringVar(&o.logLevel, "log-level", "info", "log level of weft-control (debug, info, warn, error)")
	f.StringVar(&o.proxyLogLevel, "proxy-log-level", "info", "log level of the proxies (debug, info, warn, error)")
	f.StringVar(&o.proxyCPU, "proxy-cpu-request", "10m", "CPU request of each proxy")
	f.StringVar(&o.proxyMemory, "proxy-memory-request", "20Mi", "memory request of each proxy")
	f.StringVar(&o.proxyMemLimit, "proxy-memory-limit", "64Mi", "memory limit of each proxy")
	f.BoolVar(&o.native, "native-sidecars", true, "run the proxy as a native sidecar (Kubernetes 1.29+); false: an ordinary container")
	f.BoolVar(&o.cni, "cni", false, "intercept traffic with the Weft CNI plugin (a DaemonSet) instead of a privileged init container in each Pod")
	f.BoolVar(&o.viz, "viz", false, "also run a Prometheus that scrapes every meshed Pod's proxy (weft-prometheus), for weft stat and weft edges")
	f.StringVar(&o.identityDir, "identity-dir", "", "CA directory from weft identity bootstrap (ca.crt, issuer.crt, issuer.key); default: a new CA for this install")
	f.StringArrayVarP(&o.valueFiles, "values", "f", nil, "a values file of the chart (repeatable; later files win)")
	f.StringArrayVar(&o.sets, "set", nil, "a chart value, key=value as with helm --set (repeatable; wins over the flags above)")
	f.StringVarP(&o.output, "output", "o", "", `write the manifests to this file (mode 0600) instead of standard output; "-" is standard output even on a terminal`)
	return cmd
}

func runInstall(cmd *cobra.Command, o installOptions) error {
	errOut := cmd.ErrOrStderr()
	out, closeOut, err := installOutput(cmd, o.output, "weft install | kubectl apply -f -")
	if err != nil {
		return err
	}
	if err := identity.ValidateTrustDomain(o.trustDomain); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	ident, made, err := installIdentity(o.identityDir, o.trustDomain, time.Now())
	if err != nil {
		return err
	}
	files := make([][]byte, 0, len(o.valueFiles))
	for _, name := range o.valueFiles {
		b, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("--values: %w", err)
		}
		files = append(files, b)
	}
	vals, err := installValues(o, cmd.Flags(), files, ident)
	if err != nil {
		return err
	}
	manifests, err := renderChart(o.namespace, vals)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(out, charts.YAML(manifests)); err != nil {
		return err
	}
	if err := closeOut(); err != nil {
		return err
	}
	if made {
		fmt.Fprintf(errOut, "weft install: made a new trust anchor (valid until %s) and issuer for trust domain %s; the anchor's key is not kept (see weft install --help)\n",
			ident.anchorNotAfter.Format(time.DateOnly), o.trustDomain)
	}
	return nil
}

// installOutput is where the manifests go: the -o file (created 0600: it holds a private key), or
// standard output unless that is a terminal and -o - was not given.
func installOutput(cmd *cobra.Command, output, pipeHint string) (io.Writer, func() error, error) {
	switch output {
	case "-":
		return cmd.OutOrStdout(), func() error { return nil }, nil
	case "":
		if f, ok := cmd.OutOrStdout().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			return nil, nil, fmt.Errorf("the manifests hold the identity issuer's private key and standard output is a terminal: pipe them (%s), write them with -o FILE, or pass -o - to print them anyway", pipeHint)
		}
		return cmd.OutOrStdout(), func() error { return nil }, nil
	}
	f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("-o: %w", err)
	}
	// O_CREATE's mode applies only to a new file: an existing one keeps its own until made 0600 here,
	// before the key is written into it.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("-o %s: %w", output, err)
	}
	return f, f.Close, nil
}

// installIdentity is the CA that goes into the identity Secret: read from dir and checked, or made
// now (made is then true). The anchor's key is never part of it.
type identityValues struct {
	bundlePEM, issuerCertPEM, issuerKeyPEM string
	anchorNotAfter                         time.Time
}

func installIdentity(dir, trustDomain string, now time.Time) (identityValues, bool, error) {
	if dir != "" {
		m, err := identity.LoadDir(dir)
		if err != nil {
			return identityValues{}, false, fmt.Errorf("--identity-dir: %w", err)
		}
		iss, err := identity.ParseMaterial(m, trustDomain, now)
		if err != nil {
			return identityValues{}, false, fmt.Errorf("--identity-dir %s: %w", dir, err)
		}
		if left := iss.Certificate().NotAfter.Sub(now); left < 30*24*time.Hour {
			return identityValues{}, false, fmt.Errorf("--identity-dir %s: the issuer expires in %s (%s); rotate it first: weft identity bootstrap --out %s --rotate-issuer",
				dir, left.Round(time.Hour), iss.Certificate().NotAfter.Format(time.RFC3339), dir)
		}
		return identityValues{bundlePEM: string(m.Bundle), issuerCertPEM: string(m.IssuerCert), issuerKeyPEM: string(m.IssuerKey)}, false, nil
	}
	anchor, err := identity.NewAnchor(trustDomain, now, identity.DefaultAnchorLifetime)
	if err != nil {
		return identityValues{}, false, err
	}
	issuer, err := identity.NewIssuer(trustDomain, anchor, now, identity.DefaultIssuerLifetime)
	if err != nil {
		return identityValues{}, false, err
	}
	key, err := issuer.KeyPEM()
	if err != nil {
		return identityValues{}, false, err
	}
	return identityValues{
		bundlePEM: string(anchor.CertPEM()), issuerCertPEM: string(issuer.CertPEM()), issuerKeyPEM: string(key),
		anchorNotAfter: anchor.Cert.NotAfter,
	}, true, nil
}

// installValues layers the chart's values, lowest first: the image tag (this CLI's version), the
// --values files, the named flags the user gave, --set, and the identity. Bad input names the flag.
func installValues(o installOptions, flags *pflag.FlagSet, files [][]byte, ident identityValues) (map[string]any, error) {
	if errs := validation.IsDNS1123Label(o.namespace); len(errs) > 0 {
		return nil, fmt.Errorf("--namespace %q: %s", o.namespace, strings.Join(errs, "; "))
	}
	for name, q := range map[string]string{"proxy-cpu-request": o.proxyCPU, "proxy-memory-request": o.proxyMemory, "proxy-memory-limit": o.proxyMemLimit} {
		if _, err := resource.ParseQuantity(q); err != nil {
			return nil, fmt.Errorf("--%s %q: want a Kubernetes quantity such as 10m, 20Mi or 1Gi", name, q)
		}
	}
	for name, l := range map[string]string{"log-level": o.logLevel, "proxy-log-level": o.proxyLogLevel} {
		switch l {
		case "debug", "info", "warn", "error":
		default:
			return nil, fmt.Errorf("--%s %q: want debug, info, warn or error", name, l)
		}
	}
	if o.replicas < 1 {
		return nil, fmt.Errorf("--replicas %d: want at least 1 (3 survive the loss of a node)", o.replicas)
	}
	vals := map[string]any{"image": map[string]any{"tag": o.tag}}
	for i, b := range files {
		var doc any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return nil, fmt.Errorf("--values %s is not YAML: %s", o.valueFiles[i], strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
		}
		file, ok := doc.(map[string]any)
		if !ok && doc != nil {
			what := "single value"
			if _, list := doc.([]any); list {
				what = "list"
			}
			return nil, fmt.Errorf("--values %s: want a map of chart values such as controlPlane: {replicas: 2}, not a %s (the values: deploy/charts/weft/values.yaml)", o.valueFiles[i], what)
		}
		vals = chartutil.MergeTables(file, vals)
	}
	named := map[string]any{}
	for flag, key := range flagValues {
		if flags.Changed(flag) {
			if err := strvals.ParseInto(key+"="+flags.Lookup(flag).Value.String(), named); err != nil {
				return nil, fmt.Errorf("--%s: %w", flag, err)
			}
		}
	}
	vals = chartutil.MergeTables(named, vals)
	set := map[string]any{}
	for _, s := range o.sets {
		if err := strvals.ParseInto(s, set); err != nil {
			return nil, fmt.Errorf("--set %s: %w (want key=value, such as controlPlane.replicas=2)", s, err)
		}
	}
	vals = chartutil.MergeTables(set, vals)
	if _, ok := vals["identity"]; ok {
		return nil, errors.New("the identity values come from --identity-dir, not --values or --set")
	}
	vals["identity"] = map[string]any{
		"trustAnchorsPEM": ident.bundlePEM, "issuerCertPEM": ident.issuerCertPEM, "issuerKeyPEM": ident.issuerKeyPEM,
	}
	return vals, nil
}

// renderChart renders the embedded chart at this CLI's version.
func renderChart(namespace string, vals map[string]any) ([]charts.Manifest, error) {
	ch, err := charts.Load(buildinfo.Version)
	if err != nil {
		return nil, err
	}
	return charts.Render(ch, namespace, vals)
}

func newUninstallCmd() *cobra.Command {
	var (
		namespace string
		cni       bool
		output    string
	)
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Print what weft install created, to delete: weft uninstall | kubectl delete -f -",
		Long: `Print the objects weft install creates (kind, name and namespace only, no secrets), in the order
to delete them: the webhook first, so that no new Pod is sent to an injector that is going away, and the
namespace last. Meshed Pods keep their proxy until they are restarted; remove the weft.io/inject
annotations and restart them first if the proxies should go too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			manifests, err := uninstallManifests(namespace, cni)
			if err != nil {
				return err
			}
			out, closeOut, err := installOutput(cmd, orDash(output), "")
			if err != nil {
				return err
			}
			if _, err := io.WriteString(out, manifests); err != nil {
				return err
			}
			return closeOut()
		},
	}
	cmd.Flags().StringVar(&namespace, "namespace", charts.DefaultNamespace, "namespace of the control plane")
	cmd.Flags().BoolVar(&cni, "cni", true, "include the CNI DaemonSet and its RBAC (kubectl delete --ignore-not-found skips them if absent)")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this file instead of standard output")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// uninstallManifests renders the chart with every optional part on and placeholder identity, and keeps
// of each object only what kubectl delete needs, in reverse install order.
func uninstallManifests(namespace string, cni bool) (string, error) {
	placeholder := identityValues{bundlePEM: "-", issuerCertPEM: "-", issuerKeyPEM: "-"}
	o := installOptions{namespace: namespace, tag: buildinfo.Version, replicas: 1, logLevel: "info", proxyLogLevel: "info", proxyCPU: "1", proxyMemory: "1", proxyMemLimit: "1"}
	vals, err := installValues(o, pflag.NewFlagSet("uninstall", pflag.ContinueOnError), nil, placeholder)
	if err != nil {
		return "", err
	}
	vals["cni"] = map[string]any{"enabled": cni}
	vals["viz"] = map[string]any{"enabled": true} // weft install --viz's Prometheus (absent: --ignore-not-found skips it)
	manifests, err := renderChart(namespace, vals)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	for i := len(manifests) - 1; i >= 0; i-- {
		for _, doc := range strings.Split(manifests[i].Content, "\n---\n") {
			var obj struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace,omitempty"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				return "", fmt.Errorf("%s: %w", manifests[i].Source, err)
			}
			if obj.Kind == "" {
				continue
			}
			y, err := yaml.Marshal(obj)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&b, "---\n%s", y)
		}
	}
	return b.String(), nil
}
