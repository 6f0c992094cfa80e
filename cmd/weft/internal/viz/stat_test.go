package viz

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
)

// fakeProm answers each query with the vector of the first key its text starts with, and records the
// queries.
type fakeProm struct {
	answers map[string]model.Vector
	queries []string
	err     error
}

func (f *fakeProm) Query(_ context.Context, q string, _ time.Time, _ ...v1.Option) (model.Value, v1.Warnings, v1.Infos, error) {
	f.queries = append(f.queries, q)
	if f.err != nil {
		return nil, nil, nil, f.err
	}
	for prefix, v := range f.answers {
		if strings.HasPrefix(q, prefix) {
			return v, nil, nil, nil
		}
	}
	return model.Vector{}, nil, nil, nil
}

func sample(v float64, kv ...string) *model.Sample {
	m := model.Metric{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[model.LabelName(kv[i])] = model.LabelValue(kv[i+1])
	}
	return &model.Sample{Metric: m, Value: model.SampleValue(v)}
}

// The queries are Linkerd's, with the filters each kind and --from/--to ask for.
func TestStatQueries(t *testing.T) {
	for _, tc := range []struct {
		name string
		q    StatQuery
		want []string
	}{
		{"deploy in a namespace", StatQuery{Kind: Deployment, Namespace: "demo"}, []string{
			`sum(increase(response_total{direction="inbound",namespace="demo"}[1m])) by (namespace, deployment, classification)`,
			`histogram_quantile(0.5, sum(rate(response_latency_ms_bucket{direction="inbound",namespace="demo"}[1m])) by (le, namespace, deployment))`,
			`histogram_quantile(0.95, sum(rate(response_latency_ms_bucket{direction="inbound",namespace="demo"}[1m])) by (le, namespace, deployment))`,
			`histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{direction="inbound",namespace="demo"}[1m])) by (le, namespace, deployment))`,
			`sum(tcp_open_total{direction="inbound",namespace="demo"}) by (namespace, deployment) - sum(tcp_close_total{direction="inbound",namespace="demo"}) by (namespace, deployment)`,
			`count(up{namespace="demo"} == 1) by (namespace, deployment)`,
		}},
		{"one pod, every namespace, 30s", StatQuery{Kind: Pod, Name: "web-0", Window: 30 * time.Second}, []string{
			`sum(increase(response_total{direction="inbound",pod="web-0"}[30s])) by (namespace, pod, classification)`,
		}},
		{"svc from a deployment", StatQuery{Kind: Service, Name: "books", Namespace: "demo", FromKind: Deployment, FromName: "web"}, []string{
			`sum(increase(response_total{direction="outbound",dst_namespace="demo",dst_service="books",namespace="demo",deployment="web"}[1m])) by (dst_namespace, dst_service, classification)`,
		}},
		{"deploy to a svc of another namespace", StatQuery{Kind: Deployment, Name: "web", Namespace: "demo", ToKind: Service, ToName: "db", ToNamespace: "data"}, []string{
			`sum(increase(response_total{direction="outbound",namespace="demo",deployment="web",dst_namespace="data",dst_service="db"}[1m])) by (namespace, deployment, classification)`,
		}},
		{"namespaces", StatQuery{Kind: Namespace}, []string{
			`sum(increase(response_total{direction="inbound"}[1m])) by (namespace, classification)`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeProm{}
			if _, err := Stat(context.Background(), f, tc.q); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, f.queries[:len(tc.want)]); d != "" {
				t.Errorf("queries (-want +got):\n%s", d)
			}
		})
	}
}

func TestStatRowsAndTable(t *testing.T) {
	f := &fakeProm{answers: map[string]model.Vector{
		"sum(increase(response_total": {
			sample(90, "namespace", "demo", "deployment", "books", "classification", "success"),
			sample(30, "namespace", "demo", "deployment", "books", "classification", "failure"),
			sample(12, "namespace", "demo", "deployment", "authors", "classification", "failure"),
		},
		"histogram_quantile(0.5,": {sample(2.5, "namespace", "demo", "deployment", "books")},
		"sum(tcp_open_total":      {sample(3, "namespace", "demo", "deployment", "db")},
		"count(up":                {sample(2, "namespace", "demo", "deployment", "books"), sample(1, "namespace", "demo", "deployment", "db"), sample(1, "namespace", "demo", "deployment", "idle")},
	}}
	rows, err := Stat(context.Background(), f, StatQuery{Kind: Deployment, Namespace: "demo", Window: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	p := func(v float64) *float64 { return &v }
	want := []StatRow{
		{Namespace: "demo", Kind: Deployment, Name: "authors", TotalPods: -1, Requests: 12, Success: p(0), RPS: 0.2},
		{Namespace: "demo", Kind: Deployment, Name: "books", MeshedPods: 2, TotalPods: -1, Requests: 120, Success: p(0.75), RPS: 2, LatencyMsP50: p(2.5)},
		{Namespace: "demo", Kind: Deployment, Name: "db", MeshedPods: 1, TotalPods: -1, TCPConnections: 3},
		{Namespace: "demo", Kind: Deployment, Name: "idle", MeshedPods: 1, TotalPods: -1},
	}
	if d := cmp.Diff(want, rows); d != "" {
		t.Errorf("rows (-want +got):\n%s", d)
	}
	var b bytes.Buffer
	if err := WriteStatTable(&b, rows, false, false); err != nil {
		t.Fatal(err)
	}
	wantTable := `      NAME   MESHED   SUCCESS      RPS   LATENCY_P50   LATENCY_P95   LATENCY_P99   TCP_CONN
   authors        -     0.00%   0.2rps             -             -             -          0
     books        ✔    75.00%   2.0rps           2ms             -             -          0
        db        ✔         -        -             -             -             -          3
      idle        ✔         -        -             -             -             -          0
`
	if d := cmp.Diff(wantTable, b.String()); d != "" {
		t.Errorf("table (-want +got):\n%s", d)
	}
}

// Bad requests fail before any query; a Prometheus failure is ErrPrometheus.
func TestStatErrors(t *testing.T) {
	for _, tc := range []struct {
		q    StatQuery
		want string
	}{
		{StatQuery{Kind: Service, ToKind: Service, ToName: "x"}, "a Service sends nothing itself"},
		{StatQuery{Kind: Deployment, ToKind: Pod, ToName: "x"}, "want --to svc/NAME or --to ns/NAME"},
		{StatQuery{Kind: Deployment, FromKind: Deployment, FromName: "web"}, "stat a Service: weft stat svc --from deploy/web"},
	} {
		f := &fakeProm{}
		if _, err := Stat(context.Background(), f, tc.q); err == nil || !strings.Contains(err.Error(), tc.want) || len(f.queries) != 0 {
			t.Errorf("Stat(%+v): %v after %d queries, want %q before any", tc.q, err, len(f.queries), tc.want)
		}
	}
	_, err := Stat(context.Background(), &fakeProm{err: errors.New("server error: 503")}, StatQuery{Kind: Pod})
	if !errors.Is(err, ErrPrometheus) {
		t.Errorf("a failing Prometheus: %v, want ErrPrometheus", err)
	}
	if _, err := ParseKind("job"); err == nil || err.Error() != `unknown resource kind "job": want one of deploy, pod, svc, ns` {
		t.Errorf("ParseKind(job): %v", err)
	}
}
