package xdsclient

import (
	"maps"
	"slices"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/dataplane/config"
)

// subscription order: clusters before endpoints, listeners before routes (as the server sends them).
var typeOrder = []string{config.ClusterType, config.EndpointType, config.ListenerType, config.RouteType, config.SecretType}

// wildcard reports whether a type is subscribed to as a whole.
func wildcard(typeURL string) bool {
	return typeURL == config.ClusterType || typeURL == config.ListenerType
}

type entry struct {
	version string
	raw     *anypb.Any
	value   any // *config.Listener, *config.RouteConfig, *config.Cluster or *config.ClusterLoadAssignment
}

// state is the client's accepted resources. It is owned by the Run goroutine.
type state struct {
	resources map[string]map[string]entry // type URL → name → entry
	versions  map[string]string           // type URL → last accepted version
	received  map[string]bool             // type URL → a response was accepted
	// subscribed names for the non-wildcard types.
	subscribed map[string]map[string]bool
}

func newState() *state {
	st := &state{
		resources:  map[string]map[string]entry{},
		versions:   map[string]string{},
		received:   map[string]bool{},
		subscribed: map[string]map[string]bool{config.EndpointType: {}, config.RouteType: {}, config.SecretType: {config.TrustBundleSecret: true}},
	}
	for _, t := range typeOrder {
		st.resources[t] = map[string]entry{}
	}
	return st
}

// decode validates one resource of a type; the returned name is the resource's own name.
func decode(typeURL string, a *anypb.Any) (string, any, error) {
	return config.Decode(typeURL, a)
}

// wanted returns the names of the non-wildcard resources the accepted listeners and clusters refer to.
func (st *state) wanted(typeURL string) map[string]bool {
	out := map[string]bool{}
	switch typeURL {
	case config.EndpointType:
		for _, e := range st.resources[config.ClusterType] {
			if c := e.value.(*config.Cluster); c.Kind == config.ClusterEDS {
				out[c.EDSServiceName] = true
			}
		}
	case config.RouteType:
		for _, e := range st.resources[config.ListenerType] {
			l := e.value.(*config.Listener)
			for _, fc := range l.Chains {
				if fc.HTTP != nil && fc.HTTP.RouteConfigName != "" {
					out[fc.HTTP.RouteConfigName] = true
				}
			}
			if l.Default != nil && l.Default.HTTP != nil && l.Default.HTTP.RouteConfigName != "" {
				out[l.Default.HTTP.RouteConfigName] = true
			}
		}
	}
	return out
}

// resubscribe recomputes the subscriptions of a dependent type; it returns the names added and removed,
// and forgets the resources of the removed names.
func (st *state) resubscribe(typeURL string) (added, removed []string) {
	want := st.wanted(typeURL)
	have := st.subscribed[typeURL]
	for n := range want {
		if !have[n] {
			added = append(added, n)
		}
	}
	for n := range have {
		if !want[n] {
			removed = append(removed, n)
			delete(st.resources[typeURL], n)
		}
	}
	st.subscribed[typeURL] = want
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}

func (st *state) names(typeURL string) []string {
	return slices.Sorted(maps.Keys(st.subscribed[typeURL]))
}

// complete: listeners and clusters arrived, and every dependent name is present.
func (st *state) complete() bool {
	if !st.received[config.ListenerType] || !st.received[config.ClusterType] {
		return false
	}
	for _, t := range []string{config.EndpointType, config.RouteType} {
		for n := range st.subscribed[t] {
			if _, ok := st.resources[t][n]; !ok {
				return false
			}
		}
	}
	return true
}

func (st *state) snapshot() *config.Snapshot {
	s := &config.Snapshot{
		Listeners: map[string]*config.Listener{},
		Routes:    map[string]*config.RouteConfig{},
		Clusters:  map[string]*config.Cluster{},
		Endpoints: map[string]*config.ClusterLoadAssignment{},
		Secrets:   map[string]*config.Secret{},
		Raw:       map[string]map[string]config.RawResource{},
		Versions:  maps.Clone(st.versions),
		Complete:  st.complete(),
	}
	for t, m := range st.resources {
		raw := map[string]config.RawResource{}
		for n, e := range m {
			raw[n] = config.RawResource{Version: e.version, Resource: e.raw}
			switch v := e.value.(type) {
			case *config.Listener:
				s.Listeners[n] = v
			case *config.RouteConfig:
				s.Routes[n] = v
			case *config.Cluster:
				s.Clusters[n] = v
			case *config.ClusterLoadAssignment:
				s.Endpoints[n] = v
			case *config.Secret:
				s.Secrets[n] = v
			}
		}
		s.Raw[t] = raw
	}
	return s
}
