package viz

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// StatQuery is what `weft stat` asks.
type StatQuery struct {
	Kind Kind
	// Name is one resource; "" is every resource of Kind.
	Name string
	// Namespace of the resource; "" is every namespace. Ignored for Kind Namespace.
	Namespace string
	// ToKind/ToName (Service or Namespace) keep only what the resource sent to it (outbound);
	// ToNamespace defaults to Namespace.
	ToKind              Kind
	ToName, ToNamespace string
	// FromKind/FromName (Deployment, Pod or Namespace) keep only what it sent to the resource, which
	// must then be a Service; FromNamespace defaults to Namespace.
	FromKind                Kind
	FromName, FromNamespace string
	// Window is the time range of rates and quantiles (1m when zero).
	Window time.Duration
	// At is the query's evaluation time (now when zero).
	At time.Time
	// Wide also queries TCP bytes per second.
	Wide bool
	// Pods, when set, counts the resources' pods and their meshed ones (from the cluster), so that rows
	// list resources with no traffic too and MESHED says n/m; without it, MESHED counts the pods whose
	// proxy Prometheus scrapes.
	Pods PodCounter
}

// PodCounter counts pods by resource (the CLI's is client-go's; tests can pass a map).
type PodCounter interface {
	// CountPods returns, per resource of kind in namespace ("" all), its pods and the meshed ones.
	CountPods(ctx context.Context, kind Kind, namespace string) (map[Key]PodCount, error)
}

// Key names a resource.
type Key struct{ Namespace, Name string }

// PodCount is a resource's pods.
type PodCount struct{ Meshed, Total int }

// StatRow is one resource's golden metrics over the window. A metric with no data is nil (JSON null,
// "-" in the table).
type StatRow struct {
	Namespace string `json:"namespace"`
	Kind      Kind   `json:"kind"`
	Name      string `json:"name"`
	// MeshedPods/TotalPods: TotalPods is -1 when the cluster was not asked (MESHED prints ✔ or -).
	MeshedPods int `json:"meshedPods"`
	TotalPods  int `json:"totalPods"`
	// Requests is the number of responses in the window (increase of response_total).
	Requests float64 `json:"requests"`
	// Success is the share of responses classified success (nil without responses).
	Success *float64 `json:"success"`
	// RPS is Requests over the window's seconds.
	RPS          float64  `json:"rps"`
	LatencyMsP50 *float64 `json:"latencyMsP50"`
	LatencyMsP95 *float64 `json:"latencyMsP95"`
	LatencyMsP99 *float64 `json:"latencyMsP99"`
	// TCPConnections open now (tcp_open_total - tcp_close_total).
	TCPConnections float64 `json:"tcpConnections"`
	// ReadBytesPerSec/WriteBytesPerSec are set with Wide.
	ReadBytesPerSec  *float64 `json:"readBytesPerSec,omitempty"`
	WriteBytesPerSec *float64 `json:"writeBytesPerSec,omitempty"`
}

// Meshed is the MESHED column: n/m with the cluster's pods, else ✔ when a proxy reports.
func (r StatRow) Meshed() string {
	if r.TotalPods >= 0 {
		return fmt.Sprintf("%d/%d", r.MeshedPods, r.TotalPods)
	}
	if r.MeshedPods > 0 {
		return "✔"
	}
	return "-"
}

// HasTraffic tells whether the row saw any request or connection.
func (r StatRow) HasTraffic() bool { return r.Requests > 0 || r.TCPConnections > 0 || r.Success != nil }

// plan is a StatQuery's label filter and grouping.
type plan struct {
	filter  string   // the selector of the golden metrics
	up      string   // the selector of `up` (the scraped proxies)
	groupBy []string // namespace label, name label
}

func (q StatQuery) plan() (plan, error) {
	var kv []string
	nsLabel, nameLabel := "namespace", q.Kind.label()
	if q.Kind == Service {
		nsLabel = "dst_namespace"
		kv = append(kv, "direction", "outbound", nsLabel, q.Namespace, nameLabel, q.Name)
	} else {
		ns := q.Namespace
		if q.Kind == Namespace {
			ns = q.Name
		}
		kv = append(kv, "direction", "inbound", "namespace", ns)
		if q.Kind != Namespace {
			kv = append(kv, nameLabel, q.Name)
		}
	}
	up := selector(kv[2:]...)
	if q.Kind == Service {
		up = ""
	}
	switch q.ToKind {
	case "":
	case Service, Namespace:
		if q.Kind == Service {
			return plan{}, fmt.Errorf("--to: a Service sends nothing itself; ask its clients: weft stat deploy --to svc/%s", q.Name)
		}
		toNS := q.ToNamespace
		if toNS == "" {
			toNS = q.Namespace
		}
		kv[1] = "outbound"
		if q.ToKind == Namespace {
			kv = append(kv, "dst_namespace", q.ToName)
		} else {
			kv = append(kv, "dst_namespace", toNS, "dst_service", q.ToName)
		}
	default:
		return plan{}, fmt.Errorf("--to %s/%s: the proxies name a destination by Service; want --to svc/NAME or --to ns/NAME", q.ToKind.Short(), q.ToName)
	}
	switch q.FromKind {
	case "":
	case Deployment, Pod, Namespace:
		if q.Kind != Service {
			return plan{}, fmt.Errorf("--from %s/%s: a %s is named on its own side only; ask for what it sent: weft stat %s/%s --to svc/NAME, or stat a Service: weft stat svc --from %s/%s",
				q.FromKind.Short(), q.FromName, q.Kind, q.FromKind.Short(), q.FromName, q.FromKind.Short(), q.FromName)
		}
		fromNS := q.FromNamespace
		if fromNS == "" {
			fromNS = q.Namespace
		}
		if q.FromKind == Namespace {
			kv = append(kv, "namespace", q.FromName)
		} else {
			kv = append(kv, "namespace", fromNS, q.FromKind.label(), q.FromName)
		}
	default:
		return plan{}, fmt.Errorf("--from %s/%s: want --from deploy/NAME, pod/NAME or ns/NAME", q.FromKind.Short(), q.FromName)
	}
	g := []string{nsLabel, nameLabel}
	if q.Kind == Namespace {
		g = []string{"namespace"}
	}
	return plan{filter: selector(kv...), up: up, groupBy: g}, nil
}

// Stat returns the golden metrics of the resources q names, sorted by namespace and name.
func Stat(ctx context.Context, pq Querier, q StatQuery) ([]StatRow, error) {
	if q.Window <= 0 {
		q.Window = time.Minute
	}
	if q.At.IsZero() {
		q.At = time.Now()
	}
	p, err := q.plan()
	if err != nil {
		return nil, err
	}
	by := strings.Join(p.groupBy, ", ")
	w := window(q.Window)
	rows := map[Key]*StatRow{}
	row := func(m model.Metric) *StatRow {
		k := Key{Name: string(m[model.LabelName(p.groupBy[len(p.groupBy)-1])])}
		if q.Kind != Namespace {
			k.Namespace = string(m[model.LabelName(p.groupBy[0])])
		}
		r := rows[k]
		if r == nil {
			r = &StatRow{Namespace: k.Namespace, Kind: q.Kind, Name: k.Name, TotalPods: -1}
			rows[k] = r
		}
		return r
	}
	each := func(promql string, f func(*StatRow, float64, model.Metric)) error {
		vec, err := query(ctx, pq, promql, q.At)
		if err != nil {
			return err
		}
		for _, s := range vec {
			if v := float64(s.Value); !math.IsNaN(v) {
				f(row(s.Metric), v, s.Metric)
			}
		}
		return nil
	}

	success := map[*StatRow]float64{}
	err = each(fmt.Sprintf(`sum(increase(response_total%s[%s])) by (%s, classification)`, p.filter, w, by),
		func(r *StatRow, v float64, m model.Metric) {
			r.Requests += v
			if m["classification"] == "success" {
				success[r] += v
			}
		})
	if err != nil {
		return nil, err
	}
	for r, s := range success {
		if r.Requests > 0 {
			r.Success = ptr(s / r.Requests)
		}
	}
	for _, r := range rows {
		r.RPS = r.Requests / q.Window.Seconds()
		if r.Requests > 0 && r.Success == nil {
			r.Success = ptr(0)
		}
	}
	for _, qt := range []struct {
		q   float64
		set func(*StatRow, *float64)
	}{
		{0.5, func(r *StatRow, v *float64) { r.LatencyMsP50 = v }},
		{0.95, func(r *StatRow, v *float64) { r.LatencyMsP95 = v }},
		{0.99, func(r *StatRow, v *float64) { r.LatencyMsP99 = v }},
	} {
		err := each(fmt.Sprintf(`histogram_quantile(%g, sum(rate(response_latency_ms_bucket%s[%s])) by (le, %s))`, qt.q, p.filter, w, by),
			func(r *StatRow, v float64, _ model.Metric) { qt.set(r, ptr(v)) })
		if err != nil {
			return nil, err
		}
	}
	err = each(fmt.Sprintf(`sum(tcp_open_total%s) by (%s) - sum(tcp_close_total%s) by (%s)`, p.filter, by, p.filter, by),
		func(r *StatRow, v float64, _ model.Metric) { r.TCPConnections = v })
	if err != nil {
		return nil, err
	}
	if q.Wide {
		for _, b := range []struct {
			metric string
			set    func(*StatRow, *float64)
		}{
			{"tcp_read_bytes_total", func(r *StatRow, v *float64) { r.ReadBytesPerSec = v }},
			{"tcp_write_bytes_total", func(r *StatRow, v *float64) { r.WriteBytesPerSec = v }},
		} {
			err := each(fmt.Sprintf(`sum(rate(%s%s[%s])) by (%s)`, b.metric, p.filter, w, by),
				func(r *StatRow, v float64, _ model.Metric) { b.set(r, ptr(v)) })
			if err != nil {
				return nil, err
			}
		}
	}
	if q.Pods != nil && q.Kind != Service {
		ns := q.Namespace
		if q.Kind == Namespace {
			ns = ""
		}
		counts, err := q.Pods.CountPods(ctx, q.Kind, ns)
		if err != nil {
			return nil, err
		}
		for k, c := range counts {
			if q.Name != "" && k.Name != q.Name {
				continue
			}
			if q.Kind == Namespace {
				k.Namespace = ""
			}
			r := rows[k]
			if r == nil {
				r = &StatRow{Namespace: k.Namespace, Kind: q.Kind, Name: k.Name}
				rows[k] = r
			}
			r.MeshedPods, r.TotalPods = c.Meshed, c.Total
		}
	} else if p.up != "" {
		// The scraped proxies: Prometheus's targets carry namespace, pod and deployment.
		err = each(fmt.Sprintf(`count(up%s == 1) by (%s)`, p.up, by), func(r *StatRow, v float64, _ model.Metric) {
			r.MeshedPods = int(v)
		})
		if err != nil {
			return nil, err
		}
	}
	out := make([]StatRow, 0, len(rows))
	for k, r := range rows {
		if k.Name == "" {
			continue // series without the label (a pod whose deployment is not known)
		}
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b StatRow) int {
		return strings.Compare(a.Namespace+"\x00"+a.Name, b.Namespace+"\x00"+b.Name)
	})
	return out, nil
}

func ptr(v float64) *float64 { return &v }
