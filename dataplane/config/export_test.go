package config

// RouteUnknownFields lists, for TestUnknownFieldTables, the Envoy fields the slim route messages lack
// and whether the proxy ignores them, by slim message name.
func RouteUnknownFields() map[string]map[int32]string {
	out := map[string]map[int32]string{}
	for _, f := range routeUnknowns {
		msg := slimPackage + f.msg
		if out[msg] == nil {
			out[msg] = map[int32]string{}
		}
		if f.num != 0 {
			out[msg][int32(f.num)] = f.name
		}
	}
	return out
}
