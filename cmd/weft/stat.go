package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftmesh/weft/cmd/weft/internal/viz"
)

// vizOptions are the flags stat and edges share.
type vizOptions struct {
	namespace, kubeconfig, context string
	allNamespaces                  bool
	window                         time.Duration
	output                         string
	prometheusURL                  string
	vizNamespace                   string
}

func (o *vizOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "", "namespace of the resources (default: the kubeconfig context's, else default)")
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "every namespace")
	f.DurationVarP(&o.window, "time-window", "t", time.Minute, "time window of rates and latencies (it must hold two scrapes or more)")
	f.StringVarP(&o.output, "output", "o", "", "output: table (default), wide (with TCP bytes) or json")
	f.StringVar(&o.prometheusURL, "prometheus-url", os.Getenv("WEFT_PROMETHEUS_URL"),
		"Prometheus to query, e.g. http://127.0.0.1:9090 (env WEFT_PROMETHEUS_URL; default: weft install --viz's, through the apiserver's service proxy, else http://127.0.0.1:9090, weft demo --prometheus's)")
	f.StringVar(&o.vizNamespace, "viz-namespace", "weft", "namespace of weft install --viz's Prometheus")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	f.StringVar(&o.context, "context", "", "kubeconfig context (default: the current one)")
}

// vizEnv is what stat and edges run against: Prometheus and, when a cluster is reachable, its client.
type vizEnv struct {
	prom    viz.Querier
	promURL string
	kube    kubernetes.Interface // nil without a cluster
	ns      string               // the namespace asked ("" every namespace)
}

// defaultPrometheus is weft demo --prometheus's (block 0).
const defaultPrometheus = "http://127.0.0.1:9090"

// setup checks the flags, finds the cluster (optional) and Prometheus.
func (o *vizOptions) setup(ctx context.Context) (*vizEnv, error) {
	switch o.output {
	case "", "table", "wide", "json":
	default:
		return nil, fmt.Errorf("--output %q: want table, wide or json", o.output)
	}
	if o.window < time.Second {
		return nil, fmt.Errorf("--time-window %v: want at least 1s, and two scrapes or more inside it (1m by default)", o.window)
	}
	env := &vizEnv{}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context})
	cfg, cfgErr := cc.ClientConfig()
	if cfgErr == nil {
		cfg.Timeout = 5 * time.Second
		if kc, err := kubernetes.NewForConfig(cfg); err == nil {
			if _, err := kc.Discovery().ServerVersion(); err == nil {
				env.kube = kc
			}
		}
	} else if o.kubeconfig != "" || o.context != "" {
		return nil, fmt.Errorf("--kubeconfig/--context: %v", cfgErr)
	}
	env.ns = o.namespace
	if env.ns == "" && !o.allNamespaces {
		env.ns = "default"
		if ns, _, err := cc.Namespace(); err == nil && ns != "" {
			env.ns = ns
		}
	}
	if o.allNamespaces {
		env.ns = ""
	}
	if env.kube != nil && env.ns != "" {
		if _, err := env.kube.CoreV1().Namespaces().Get(ctx, env.ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("namespace %q does not exist in the cluster: check --namespace (kubectl get namespaces)", env.ns)
		}
	}

	env.promURL = o.prometheusURL
	var apiCfg api.Config
	if env.promURL == "" && env.kube != nil {
		// weft install --viz's Prometheus, through the apiserver's service proxy (no port-forward).
		rt, err := rest.TransportFor(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		env.promURL = strings.TrimSuffix(cfg.Host, "/") + "/api/v1/namespaces/" + o.vizNamespace + "/services/weft-prometheus:9090/proxy"
		apiCfg.RoundTripper = rt
	}
	if env.promURL == "" {
		env.promURL = defaultPrometheus
	}
	apiCfg.Client = &http.Client{Timeout: 10 * time.Second}
	if apiCfg.RoundTripper != nil {
		apiCfg.Client.Transport = apiCfg.RoundTripper
		apiCfg.RoundTripper = nil
	}
	q, err := viz.NewQuerier(env.promURL, apiCfg)
	if err != nil {
		return nil, err
	}
	env.prom = q
	return env, nil
}

// promError turns a Prometheus failure into one line that says what to do.
func (e *vizEnv) promError(err error) error {
	if errors.Is(err, viz.ErrPrometheus) {
		return fmt.Errorf("the Prometheus at %s: %v; start one with `weft demo --prometheus` or `weft install --viz`, or point --prometheus-url at yours", e.promURL, strings.TrimPrefix(err.Error(), "prometheus: "))
	}
	return err
}

// checkScraped fails when Prometheus scrapes no proxy at all (no data will ever come).
func (e *vizEnv) checkScraped(ctx context.Context) error {
	targets, _, err := viz.ScrapedProxies(ctx, e.prom, time.Time{})
	if err != nil {
		return e.promError(err)
	}
	if targets == 0 {
		return fmt.Errorf("the Prometheus at %s scrapes no weft-proxy (no job %q): use the Prometheus of `weft demo --prometheus` or `weft install --viz`, or add that job to yours", e.promURL, viz.ProxyJob)
	}
	return nil
}

func newStatCmd() *cobra.Command {
	var o vizOptions
	var from, to, fromNS, toNS string
	cmd := &cobra.Command{
		Use:   "stat deploy|pod|svc|ns [NAME]",
		Short: "Show the golden metrics of deployments, pods, services or namespaces: success rate, RPS, latency, TCP connections",
		Long: `Show the golden metrics of meshed resources over a time window (Linkerd's viz stat), read from the
proxies' metrics in Prometheus:

  MESHED       pods with a proxy / pods (✔ without a cluster: a proxy reports)
  SUCCESS      share of responses that are not 5xx and carry no failing grpc-status
  RPS          responses per second
  LATENCY_P50/P95/P99   response latency quantiles
  TCP_CONN     TCP connections open now

deploy, pod and ns are measured at their proxies' inbound side (what they served); svc at its clients'
outbound side (what was sent to it). --to svc/NAME or ns/NAME keeps what the resource sent there;
--from deploy|pod|ns/NAME (with svc) keeps what that client sent.

  weft stat deploy -n demo --prometheus-url http://127.0.0.1:9090
  weft stat svc/books -n demo --from deploy/web -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, name, err := viz.ParseResource(args[0])
			if err != nil {
				return err
			}
			if len(args) == 2 {
				if name != "" {
					return fmt.Errorf("%s %s: give the name once, as KIND NAME or KIND/NAME", args[0], args[1])
				}
				name = args[1]
			}
			q := viz.StatQuery{Kind: kind, Name: name, Window: o.window, Wide: o.output == "wide" || o.output == "json", FromNamespace: fromNS, ToNamespace: toNS}
			if from != "" {
				if q.FromKind, q.FromName, err = viz.ParseResource(from); err != nil || q.FromName == "" {
					return fmt.Errorf("--from %q: want KIND/NAME such as deploy/web", from)
				}
			}
			if to != "" {
				if q.ToKind, q.ToName, err = viz.ParseResource(to); err != nil || q.ToName == "" {
					return fmt.Errorf("--to %q: want KIND/NAME such as svc/books", to)
				}
			}
			ctx := cmd.Context()
			env, err := o.setup(ctx)
			if err != nil {
				return err
			}
			q.Namespace = env.ns
			if env.kube != nil {
				q.Pods = kubePods{env.kube}
			}
			rows, err := viz.Stat(ctx, env.prom, q)
			if err != nil {
				return env.promError(err)
			}
			if len(rows) == 0 {
				if err := env.checkScraped(ctx); err != nil {
					return err
				}
			}
			return printStat(cmd.OutOrStdout(), cmd.ErrOrStderr(), o, q, rows)
		},
	}
	o.flags(cmd)
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "only what this client sent: deploy/NAME, pod/NAME or ns/NAME (with svc)")
	f.StringVar(&to, "to", "", "only what the resource sent to svc/NAME or ns/NAME")
	f.StringVar(&fromNS, "from-namespace", "", "namespace of --from (default: --namespace)")
	f.StringVar(&toNS, "to-namespace", "", "namespace of --to (default: --namespace)")
	return cmd
}

func printStat(out, errOut io.Writer, o vizOptions, q viz.StatQuery, rows []viz.StatRow) error {
	if o.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	traffic := false
	for _, r := range rows {
		traffic = traffic || r.HasTraffic()
	}
	if len(rows) > 0 {
		if err := viz.WriteStatTable(out, rows, q.Namespace == "" && q.Kind != viz.Namespace, o.output == "wide"); err != nil {
			return err
		}
	}
	if !traffic {
		where := "namespace " + q.Namespace
		if q.Namespace == "" || q.Kind == viz.Namespace {
			where = "any namespace"
		}
		fmt.Fprintf(errOut, "No traffic found for %s in %s in the last %s (a new mesh needs a scrape or two: try again in a few seconds).\n", q.Kind, where, o.window)
	}
	return nil
}

func newEdgesCmd() *cobra.Command {
	var o vizOptions
	cmd := &cobra.Command{
		Use:   "edges deploy|pod|ns",
		Short: "Show who talks to whom: each client workload and the Services it sent to, with the mTLS identities",
		Long: `Show the edges of the mesh over a time window (Linkerd's viz edges), from the clients' proxies:
SRC (a deployment, pod or namespace), DST (the Service it sent to), SECURED (√ when mTLS), and the
SPIFFE identities on each side of the connection (CLIENT_ID, SERVER_ID).

  weft edges deploy -n demo --prometheus-url http://127.0.0.1:9090`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, name, err := viz.ParseResource(args[0])
			if err != nil {
				return err
			}
			if name != "" || kind == viz.Service {
				return fmt.Errorf("edges %s: want deploy, pod or ns (the sources' kind; the destinations are Services)", args[0])
			}
			ctx := cmd.Context()
			env, err := o.setup(ctx)
			if err != nil {
				return err
			}
			edges, err := viz.Edges(ctx, env.prom, viz.EdgesQuery{Kind: kind, Namespace: env.ns, Window: o.window})
			if err != nil {
				return env.promError(err)
			}
			if len(edges) == 0 {
				if err := env.checkScraped(ctx); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if o.output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(edges)
			}
			if len(edges) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "No edges found in the last %s (no traffic yet, or a new mesh: try again in a few seconds).\n", o.window)
				return nil
			}
			return viz.WriteEdgesTable(out, edges)
		},
	}
	o.flags(cmd)
	return cmd
}

// kubePods counts pods and meshed pods (those with the weft-proxy container) by resource.
type kubePods struct{ c kubernetes.Interface }

func (k kubePods) CountPods(ctx context.Context, kind viz.Kind, namespace string) (map[viz.Key]viz.PodCount, error) {
	pods, err := k.c.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	out := map[viz.Key]viz.PodCount{}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		var key viz.Key
		switch kind {
		case viz.Pod:
			key = viz.Key{Namespace: p.Namespace, Name: p.Name}
		case viz.Namespace:
			key = viz.Key{Name: p.Namespace}
		case viz.Deployment:
			dep := deploymentOf(&p)
			if dep == "" {
				continue
			}
			key = viz.Key{Namespace: p.Namespace, Name: dep}
		default:
			return nil, nil
		}
		c := out[key]
		c.Total++
		if meshed(&p) {
			c.Meshed++
		}
		out[key] = c
	}
	return out, nil
}

// deploymentOf is the Deployment of a pod: its ReplicaSet owner's name less the pod-template-hash.
func deploymentOf(p *corev1.Pod) string {
	for _, o := range p.OwnerReferences {
		if o.Kind == "ReplicaSet" {
			if h := p.Labels["pod-template-hash"]; h != "" {
				return strings.TrimSuffix(o.Name, "-"+h)
			}
		}
	}
	return ""
}

func meshed(p *corev1.Pod) bool {
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range cs {
			if c.Name == "weft-proxy" {
				return true
			}
		}
	}
	return false
}
