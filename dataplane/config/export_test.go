package config

// RouteUnknownFields lists, for TestUnknownFieldTables, the Envoy fields the slim route messages lack
// and whether the proxy ignores them, by slim message name.
func RouteUnknownFields() map[string]map[int32]string {
	out := map[string]map[int32]string{}
	for msg, fs := range routeUnknowns {
		out[string(msg)] = map[int32]string{}
		for n, f := range fs {
			out[string(msg)][int32(n)] = f.name
		}
	}
	return out
}
