package viz

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// EdgesQuery is what `weft edges` asks.
type EdgesQuery struct {
	// Kind groups the sources (Deployment, Pod or Namespace).
	Kind Kind
	// Namespace of the sources; "" every namespace.
	Namespace string
	Window    time.Duration
	At        time.Time
}

// Edge is one source that sent to one Service in the window, with the identities its proxy saw.
type Edge struct {
	SrcNamespace string `json:"srcNamespace"`
	Src          string `json:"src"`
	SrcKind      Kind   `json:"srcKind"`
	DstNamespace string `json:"dstNamespace"`
	// Dst is the destination Service.
	Dst string `json:"dst"`
	// ClientID and ServerID are the SPIFFE IDs of the mTLS connection ("" without mTLS).
	ClientID string `json:"clientId"`
	ServerID string `json:"serverId"`
	Secured  bool   `json:"secured"`
	// Requests are HTTP/gRPC responses in the window; Connections TCP connections opened in it.
	Requests    float64 `json:"requests"`
	Connections float64 `json:"connections"`
}

// Edges returns who sent to which Service in the window, from the sources' outbound metrics, sorted.
func Edges(ctx context.Context, pq Querier, q EdgesQuery) ([]Edge, error) {
	if q.Window <= 0 {
		q.Window = time.Minute
	}
	if q.At.IsZero() {
		q.At = time.Now()
	}
	switch q.Kind {
	case Deployment, Pod, Namespace:
	default:
		return nil, fmt.Errorf("edges of %s: want deploy, pod or ns (a destination is a Service; its clients are workloads)", q.Kind)
	}
	src := []string{"namespace"}
	if q.Kind != Namespace {
		src = append(src, string(q.Kind))
	}
	by := strings.Join(append(src, "dst_namespace", "dst_service", "tls", "client_id", "server_id"), ", ")
	sel := selector("direction", "outbound", "namespace", q.Namespace)
	w := window(q.Window)
	edges := map[Edge]*Edge{}
	add := func(promql string, f func(*Edge, float64)) error {
		vec, err := query(ctx, pq, promql, q.At)
		if err != nil {
			return err
		}
		for _, s := range vec {
			m := s.Metric
			k := Edge{SrcNamespace: string(m["namespace"]), SrcKind: q.Kind, DstNamespace: string(m["dst_namespace"]),
				Dst: string(m["dst_service"]), ClientID: string(m["client_id"]), ServerID: string(m["server_id"]), Secured: m["tls"] == "true"}
			if q.Kind != Namespace {
				k.Src = string(m[model.LabelName(q.Kind)])
			} else {
				k.Src = k.SrcNamespace
			}
			if k.Src == "" || k.Dst == "" {
				continue // unrouted or passthrough: no Service to name
			}
			e := edges[k]
			if e == nil {
				e = &k
				edges[k] = e
			}
			f(e, float64(s.Value))
		}
		return nil
	}
	if err := add(fmt.Sprintf(`sum(increase(response_total%s[%s])) by (%s) > 0`, sel, w, by),
		func(e *Edge, v float64) { e.Requests += v }); err != nil {
		return nil, err
	}
	if err := add(fmt.Sprintf(`sum(increase(tcp_open_total%s[%s])) by (%s) > 0 or (sum(tcp_open_total%s) by (%s) - sum(tcp_close_total%s) by (%s)) > 0`,
		sel, w, by, sel, by, sel, by), func(e *Edge, v float64) { e.Connections += v }); err != nil {
		return nil, err
	}
	out := make([]Edge, 0, len(edges))
	for _, e := range edges {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b Edge) int {
		return strings.Compare(strings.Join([]string{a.SrcNamespace, a.Src, a.DstNamespace, a.Dst, a.ClientID, a.ServerID}, "\x00"),
			strings.Join([]string{b.SrcNamespace, b.Src, b.DstNamespace, b.Dst, b.ClientID, b.ServerID}, "\x00"))
	})
	return out, nil
}
