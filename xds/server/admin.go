package server

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminHandler serves /ready (200 once synced, else 503), /metrics (Prometheus) and /debug/ (JSON:
// /debug/state, the discovery State; /debug/clients, every connected client's sync status;
// /debug/connections, the connected nodes, which `weft check --proxy` reads).
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if !s.Synced() {
			http.Error(w, "not ready: discovery has not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/{$}", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{
			"version_prefix": s.prefix,
			"synced":         s.Synced(),
			"endpoints":      []string{"/debug/state", "/debug/clients", "/debug/connections"},
		})
	})
	mux.HandleFunc("GET /debug/state", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.State())
	})
	mux.HandleFunc("GET /debug/clients", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.clients.summary())
	})
	mux.HandleFunc("GET /debug/connections", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, Connections{Connections: s.clients.connections()})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ClientStatus is one stream's sync status, as /debug/clients shows it.
type ClientStatus struct {
	Stream      int64                 `json:"stream"`
	Node        string                `json:"node"`
	Kind        string                `json:"kind"`
	Delta       bool                  `json:"delta"`
	ConnectedAt time.Time             `json:"connected_at"`
	Types       map[string]TypeStatus `json:"types"`
}

// TypeStatus is a stream's status for one resource type.
type TypeStatus struct {
	SentVersion  string   `json:"sent_version"`
	AckedVersion string   `json:"acked_version,omitempty"`
	Synced       bool     `json:"synced"`
	Resources    int      `json:"resources"`
	Wildcard     bool     `json:"wildcard,omitempty"`
	Requested    []string `json:"requested,omitempty"`
	NACK         string   `json:"nack,omitempty"`
}

// Connections is the body of /debug/connections: the xDS clients connected to this replica, one entry
// per node (a node with several streams, such as per-type ones, is listed once), sorted by node id.
// Streams that have not yet said who they are are left out.
type Connections struct {
	Connections []Connection `json:"connections"`
}

// Connection is one connected node.
type Connection struct {
	// Node is the node id, <pod>.<namespace> for a sidecar.
	Node string `json:"node"`
	Kind string `json:"kind"`
	// Streams is how many xDS streams the node has open to this replica.
	Streams int `json:"streams"`
	// ConnectedSince is when its oldest open stream opened.
	ConnectedSince time.Time `json:"connected_since"`
	// Identity is the SPIFFE ID of the client certificate, on the mTLS port; empty on plaintext.
	Identity string `json:"identity,omitempty"`
	// CertificateExpiry is the NotAfter of the client certificate the oldest mTLS stream was opened
	// with (a proxy that renews its certificate keeps its stream, so this is the handshake's).
	CertificateExpiry *time.Time `json:"certificate_expiry,omitempty"`
}

func (t *tracker) connections() []Connection {
	t.mu.Lock()
	defer t.mu.Unlock()
	byNode := map[string]*Connection{}
	for _, st := range t.streams {
		if st.node == nil || st.node.GetId() == "" {
			continue
		}
		c, ok := byNode[st.node.GetId()]
		if !ok {
			c = &Connection{Node: st.node.GetId(), Kind: string(st.proxy.Kind), ConnectedSince: st.connectedAt}
			byNode[c.Node] = c
		}
		c.Streams++
		if !st.connectedAt.After(c.ConnectedSince) {
			c.ConnectedSince = st.connectedAt
		}
		if st.peer.id != "" && (c.CertificateExpiry == nil || !st.connectedAt.After(c.ConnectedSince)) {
			c.Identity = st.peer.id
			exp := st.peer.notAfter.UTC()
			c.CertificateExpiry = &exp
		}
	}
	out := make([]Connection, 0, len(byNode))
	for _, c := range byNode {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b Connection) int { return strings.Compare(a.Node, b.Node) })
	return out
}

func (t *tracker) summary() []ClientStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := []ClientStatus{}
	for _, st := range t.streams {
		cs := ClientStatus{Stream: st.id, Node: st.node.GetId(), Kind: string(st.proxy.Kind), Delta: st.delta, ConnectedAt: st.connectedAt, Types: map[string]TypeStatus{}}
		for u, ts := range st.types {
			synced := ts.lastNonce != ""
			for _, r := range ts.resources {
				synced = synced && r.acked
			}
			x := TypeStatus{SentVersion: ts.lastVersion, AckedVersion: ts.ackedVersion, Synced: synced, Resources: len(ts.resources), Wildcard: ts.wildcard}
			for n := range ts.requested {
				x.Requested = append(x.Requested, n)
			}
			slices.Sort(x.Requested)
			if ts.nack != nil {
				x.NACK = ts.nack.detail
			}
			cs.Types[shortType(u)] = x
		}
		out = append(out, cs)
	}
	slices.SortFunc(out, func(a, b ClientStatus) int { return int(a.Stream - b.Stream) })
	return out
}

func stringMatches(m *matcher.StringMatcher, s string) bool {
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	lower := func(p string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(p)
		}
		return p
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcher.StringMatcher_Exact:
		return s == lower(p.Exact)
	case *matcher.StringMatcher_Prefix:
		return strings.HasPrefix(s, lower(p.Prefix))
	case *matcher.StringMatcher_Suffix:
		return strings.HasSuffix(s, lower(p.Suffix))
	case *matcher.StringMatcher_Contains:
		return strings.Contains(s, lower(p.Contains))
	}
	return false
}
