// Package admin is weft-proxy's admin server (--admin-addr, 15000 by convention): /ready, /live,
// /metrics, /config_dump (Envoy's JSON format, with versions), /clusters and POST /shutdown.
package admin

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"slices"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/xdsclient"
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
	Proxy    Proxy
	XDS      XDS // may be nil
	Gatherer prometheus.Gatherer
	// Shutdown starts a graceful drain and exit (POST /shutdown). It must not block.
	Shutdown func()
}

// Handler returns the admin endpoints.
func Handler(o Options) http.Handler {
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
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
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
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ConfigDump renders a snapshot as Envoy's /config_dump: one dump per type, with each resource's
// version and the type's last accepted version.
func ConfigDump(s *config.Snapshot) ([]byte, error) {
	sorted := func(t string) []string { return slices.Sorted(maps.Keys(s.Raw[t])) }
	var msgs []proto.Message

	clusters := &adminv3.ClustersConfigDump{VersionInfo: s.Versions[config.ClusterType]}
	for _, n := range sorted(config.ClusterType) {
		r := s.Raw[config.ClusterType][n]
		clusters.DynamicActiveClusters = append(clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: r.Version, Cluster: r.Resource})
	}
	endpoints := &adminv3.EndpointsConfigDump{}
	for _, n := range sorted(config.EndpointType) {
		r := s.Raw[config.EndpointType][n]
		endpoints.DynamicEndpointConfigs = append(endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{VersionInfo: r.Version, EndpointConfig: r.Resource})
	}
	listeners := &adminv3.ListenersConfigDump{VersionInfo: s.Versions[config.ListenerType]}
	for _, n := range sorted(config.ListenerType) {
		r := s.Raw[config.ListenerType][n]
		listeners.DynamicListeners = append(listeners.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{Name: n,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: r.Version, Listener: r.Resource}})
	}
	routes := &adminv3.RoutesConfigDump{}
	for _, n := range sorted(config.RouteType) {
		r := s.Raw[config.RouteType][n]
		routes.DynamicRouteConfigs = append(routes.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: r.Version, RouteConfig: r.Resource})
	}
	msgs = append(msgs, clusters, endpoints, listeners, routes)
	dump := &adminv3.ConfigDump{}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err != nil {
			return nil, err
		}
		dump.Configs = append(dump.Configs, a)
	}
	raw, err := protojson.Marshal(dump)
	if err != nil {
		return nil, err
	}
	// protojson's spacing is deliberately unstable; normalize it for people and scripts.
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, err
	}
	if err := json.Indent(&out, compact.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
