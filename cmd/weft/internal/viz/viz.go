// Package viz is what `weft stat` and `weft edges` read: the proxies' golden metrics, queried from
// Prometheus's HTTP API with Linkerd's queries, returned as plain rows (the CLI prints them as a table
// or JSON; the dashboard serves the same rows).
//
// The metrics are weft-proxy's (dataplane/proxy/metrics.go): request_total, response_total
// {classification, status_code, grpc_status}, response_latency_ms, tcp_open_total, tcp_close_total,
// tcp_read_bytes_total, tcp_write_bytes_total, labelled direction, authority, dst_namespace,
// dst_service, namespace, pod, deployment, tls, client_id and server_id.
package viz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// Querier runs an instant PromQL query. v1.API satisfies it (NewQuerier); tests can pass a fake.
type Querier interface {
	Query(ctx context.Context, query string, ts time.Time, opts ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error)
}

// NewQuerier returns a Querier for the Prometheus at url (http://host:port, or with a path prefix).
// rt, when set, carries the requests (the apiserver's service proxy, for instance).
func NewQuerier(rawURL string, rt api.Config) (Querier, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--prometheus-url %q: want an http(s) URL such as http://127.0.0.1:9090", rawURL)
	}
	rt.Address = rawURL
	c, err := api.NewClient(rt)
	if err != nil {
		return nil, fmt.Errorf("--prometheus-url %q: %w", rawURL, err)
	}
	return v1.NewAPI(c), nil
}

// Kind is a resource kind stat groups by.
type Kind string

// The kinds stat knows.
const (
	Deployment Kind = "deployment"
	Pod        Kind = "pod"
	Service    Kind = "service"
	Namespace  Kind = "namespace"
)

// Kinds are the kinds in the order help texts list them.
var Kinds = []Kind{Deployment, Pod, Service, Namespace}

var kindAliases = map[string]Kind{
	"deploy": Deployment, "deployment": Deployment, "deployments": Deployment,
	"po": Pod, "pod": Pod, "pods": Pod,
	"svc": Service, "service": Service, "services": Service,
	"ns": Namespace, "namespace": Namespace, "namespaces": Namespace,
}

// ParseKind reads a kind as kubectl spells it (deploy, deployment, deployments, po, pod, svc, ns, ...).
func ParseKind(s string) (Kind, error) {
	if k, ok := kindAliases[strings.ToLower(s)]; ok {
		return k, nil
	}
	return "", fmt.Errorf("unknown resource kind %q: want one of deploy, pod, svc, ns", s)
}

// ParseResource reads KIND or KIND/NAME (deploy/web).
func ParseResource(s string) (Kind, string, error) {
	kind, name, _ := strings.Cut(s, "/")
	k, err := ParseKind(kind)
	return k, name, err
}

// Short is the kind as kubectl abbreviates it (deploy, po, svc, ns).
func (k Kind) Short() string {
	switch k {
	case Deployment:
		return "deploy"
	case Pod:
		return "po"
	case Service:
		return "svc"
	}
	return "ns"
}

// label is the metric label that names a resource of kind k: the workload labels on the proxy's own
// side, dst_service for a Service (outbound metrics: what clients sent to it).
func (k Kind) label() string {
	switch k {
	case Service:
		return "dst_service"
	}
	return string(k)
}

// ErrPrometheus wraps a failure to reach or query Prometheus (the CLI says what to do).
var ErrPrometheus = errors.New("prometheus")

// promErr says which Prometheus failed and how.
func promErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) || strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("%w: not reachable (%v)", ErrPrometheus, err)
	}
	return fmt.Errorf("%w: query failed: %v", ErrPrometheus, err)
}

// quote is a PromQL string literal.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// selector writes {k="v",...} from label pairs, skipping empty values.
func selector(kv ...string) string {
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			parts = append(parts, kv[i]+"="+quote(kv[i+1]))
		}
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// window writes a PromQL range ([1m]).
func window(d time.Duration) string { return model.Duration(d).String() }

func query(ctx context.Context, q Querier, promql string, at time.Time) (model.Vector, error) {
	v, _, _, err := q.Query(ctx, promql, at)
	if err != nil {
		return nil, promErr(err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("%w: %s: want a vector, got %s", ErrPrometheus, promql, v.Type())
	}
	return vec, nil
}
