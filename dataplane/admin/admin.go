// Package admin is weft-proxy's admin server (--admin-addr, 15000 by convention): /ready, /live,
// /metrics, /config_dump (Envoy's JSON format, with versions), /clusters and POST /shutdown; and, in a
// binary built with -tags weftpprof only, Go's profiler under /debug/pprof/ (see pprof.go). Only
// /ready, /live and /metrics answer clients off loopback (Public), and Tap.Observe answers weft-control
// over mutual TLS (tap.go).
package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/xdsclient"
	tapv1 "github.com/weftmesh/weft/proto/weft/tap/v1"
)

// Proxy is what the admin server asks of the data path.
type Proxy interface {
	Ready() (bool, string)
	Snapshot() *config.Snapshot
	Clusters() []proxy.ClusterStatus
}

// XDS is what the admin server asks of the xDS client.
type XDS interface {
	Status() xdsclient.Status
}

// Options configure the handler.
type Options struct {
	Proxy Proxy
	XDS   XDS // may be nil
	// Metrics writes the metrics in the Prometheus text format (GET /metrics).
	Metrics func(io.Writer)
	// Shutdown starts a graceful drain and exit (POST /shutdown). It must not block.
	Shutdown func()
	// Tap serves Tap.Observe (tap.go); nil: no tap.
	Tap TapFunc
}

// Public are the endpoints anyone who reaches the admin port may call: the kubelet's probes (/ready,
// /live) and Prometheus (/metrics) come from the pod network. The rest (/config_dump, /clusters, /xds,
// POST /shutdown, /debug/) are served to loopback clients only: the pod's own containers, weft-proxy
// await, and kubectl port-forward (which arrives on loopback). The port itself is never intercepted
// (iptables returns it before the inbound redirect), so a remote client's address is its own.
var Public = []string{"/ready", "/live", "/metrics"}

// MaxBodyBytes caps a request body (no endpoint reads one); MaxHeaderBytes is the server's head cap
// that weft-proxy sets.
const (
	MaxBodyBytes   = 64 << 10
	MaxHeaderBytes = 64 << 10
)

// Handler returns the admin endpoints, the non-public ones for loopback clients only.
func Handler(o Options) http.Handler {
	mux := handler(o)
	h := http.MaxBytesHandler(mux, MaxBodyBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(Public, r.URL.Path) && !FromLoopback(r) && !tapOverTLS(r) {
			http.Error(w, r.URL.Path+" is served to loopback clients only (from inside the pod, or through kubectl port-forward)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// FromLoopback reports whether the request's peer (its address, never a header) is on loopback.
func FromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

func handler(o Options) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := o.Proxy.Ready()
		if !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("live\n")) })
	// Uncompressed: a sidecar's metrics are a few KB, and a gzip writer is ~1 MB of heap (compress/flate's
	// compressor), allocated again after every GC for the scrape that asks for gzip (Prometheus
	// always does), which would keep an idle, scraped sidecar several MB above its start-up size.
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if o.Metrics != nil {
			o.Metrics(w)
		}
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		b, err := ConfigDump(o.Proxy.Snapshot())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /clusters", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, o.Proxy.Clusters())
	})
	mux.HandleFunc("GET /xds", func(w http.ResponseWriter, _ *http.Request) {
		if o.XDS == nil {
			http.Error(w, "no xDS client", http.StatusNotFound)
			return
		}
		writeJSON(w, o.XDS.Status())
	})
	mux.HandleFunc("POST /shutdown", func(w http.ResponseWriter, _ *http.Request) {
		if o.Shutdown == nil {
			http.Error(w, "shutdown is not available", http.StatusNotImplemented)
			return
		}
		o.Shutdown()
		_, _ = w.Write([]byte("draining\n"))
	})
	if o.Tap != nil {
		mux.Handle("POST "+tapv1.ObserveMethod, tapHandler(o.Tap))
	}
	for _, register := range extraHandlers {
		register(mux)
	}
	return mux
}

// extraHandlers are endpoints that only some builds have (the profiler of pprof.go).
var extraHandlers []func(*http.ServeMux)

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ConfigDump renders a snapshot as Envoy's /config_dump (proto field names, one dump per type in
// CDS, EDS, LDS, RDS order), with each resource's version and the type's last accepted version. It is
// written by hand rather than through envoy/admin/v3, which would pull in (and keep resident) much of
// Envoy's bootstrap API.
func ConfigDump(s *config.Snapshot) ([]byte, error) {
	mo := protojson.MarshalOptions{UseProtoNames: true, Resolver: config.JSONResolver}
	resource := func(t, n string) (json.RawMessage, string, error) {
		r := s.Raw[t][n]
		b, err := mo.Marshal(r.Resource)
		return b, r.Version, err
	}
	type dyn = map[string]any
	var configs []any
	for _, d := range []struct {
		typeURL, dumpType, listKey, itemKey string
	}{
		{config.ClusterType, "ClustersConfigDump", "dynamic_active_clusters", "cluster"},
		{config.EndpointType, "EndpointsConfigDump", "dynamic_endpoint_configs", "endpoint_config"},
		{config.ListenerType, "ListenersConfigDump", "dynamic_listeners", "listener"},
		{config.RouteType, "RoutesConfigDump", "dynamic_route_configs", "route_config"},
	} {
		items := []any{}
		for _, n := range slices.Sorted(maps.Keys(s.Raw[d.typeURL])) {
			b, v, err := resource(d.typeURL, n)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", d.dumpType, n, err)
			}
			if d.typeURL == config.ListenerType {
				items = append(items, dyn{"name": n, "active_state": dyn{"version_info": v, "listener": b}})
			} else {
				items = append(items, dyn{"version_info": v, d.itemKey: b})
			}
		}
		c := dyn{"@type": "type.googleapis.com/envoy.admin.v3." + d.dumpType, d.listKey: items}
		if v := s.Versions[d.typeURL]; v != "" && (d.typeURL == config.ClusterType || d.typeURL == config.ListenerType) {
			c["version_info"] = v
		}
		configs = append(configs, c)
	}
	return json.MarshalIndent(map[string]any{"configs": configs}, "", "  ")
}
