package config

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The slim route messages keep only the fields weft-proxy implements; a field of Envoy's they lack
// arrives as an unknown field. A route configuration is refused when one of its messages carries an
// unknown field, unless the field is listed below as one whose only effect is outside what the proxy
// does (stats, tracing, metadata, runtime keys, buffer limits): "nothing may be half-supported".
// TestUnknownFieldTables (wire_test.go) checks these tables against go-control-plane's descriptors, so
// every Envoy field of these messages is either read, or named here.

// unknownField names a field of Envoy's that the slim message lacks; ignore says that the proxy may
// ignore it.
type unknownField struct {
	name   string
	ignore bool
}

// routeUnknowns lists, per message of the route configuration, Envoy's fields the slim one lacks.
// A message not listed here (or a number not listed) is refused whenever it carries an unknown field.
var routeUnknowns = map[protoreflect.FullName]map[protowire.Number]unknownField{
	"weft.dataplane.envoy.v3.RouteConfiguration": {
		3: {"internal_only_headers", false}, 7: {"validate_clusters", true}, 9: {"vhds", false},
		11: {"max_direct_response_body_size_bytes", false}, 12: {"cluster_specifier_plugins", false},
		13: {"request_mirror_policies", false}, 14: {"ignore_port_in_host_matching", false},
		15: {"ignore_path_parameters_in_path_matching", false}, 16: {"typed_per_filter_config", false},
		17: {"metadata", true}, 18: {"vhost_header", false}, 19: {"route_specifiers", false},
	},
	"weft.dataplane.envoy.v3.VirtualHost": {
		4: {"require_tls", false}, 5: {"virtual_clusters", true}, 6: {"rate_limits", false}, 8: {"cors", false},
		14: {"include_request_attempt_count", false}, 15: {"typed_per_filter_config", false},
		17: {"hedge_policy", false}, 18: {"per_request_buffer_limit_bytes", true},
		19: {"include_attempt_count_in_response", false}, 20: {"retry_policy_typed_config", false},
		21: {"matcher", false}, 22: {"request_mirror_policies", false}, 23: {"include_is_timeout_retry_header", false},
		24: {"metadata", true}, 25: {"request_body_buffer_limit", true}, 26: {"route_specifiers", false},
	},
	"weft.dataplane.envoy.v3.Route": {
		4: {"metadata", true}, 5: {"decorator", true}, 13: {"typed_per_filter_config", false}, 15: {"tracing", true},
		16: {"per_request_buffer_limit_bytes", true}, 17: {"filter_action", false}, 18: {"non_forwarding_action", false},
		19: {"stat_prefix", true}, 20: {"request_body_buffer_limit", true}, 21: {"route_specifiers", false},
	},
	"weft.dataplane.envoy.v3.RouteMatch": {
		9: {"runtime_fraction", false}, 11: {"tls_context", false}, 12: {"connect_matcher", false},
		13: {"dynamic_metadata", false}, 15: {"path_match_policy", false}, 16: {"filter_state", false}, 17: {"cookies", false},
	},
	"weft.dataplane.envoy.v3.HeaderMatcher": {
		6: {"range_match", false},
	},
	"weft.dataplane.envoy.v3.QueryParameterMatcher": {},
	"weft.dataplane.envoy.v3.StringMatcher": {
		8: {"custom", false},
	},
	"weft.dataplane.envoy.v3.RegexMatcher": {
		1: {"google_re2", true}, // deprecated engine options; the regex is RE2 either way
	},
	"weft.dataplane.envoy.v3.RegexMatchAndSubstitute": {},
	"weft.dataplane.envoy.v3.RouteAction": {
		2: {"cluster_header", false}, 4: {"metadata_match", false}, 7: {"auto_host_rewrite", false},
		11: {"priority", false}, 13: {"rate_limits", false}, 14: {"include_vh_rate_limits", true},
		15: {"hash_policy", false}, 17: {"cors", false}, 20: {"cluster_not_found_response_code", false},
		23: {"max_grpc_timeout", false}, 24: {"idle_timeout", false}, 25: {"upgrade_configs", false},
		26: {"internal_redirect_action", false}, 27: {"hedge_policy", false}, 28: {"grpc_timeout_offset", false},
		29: {"host_rewrite_header", false}, 31: {"max_internal_redirects", false}, 33: {"retry_policy_typed_config", false},
		34: {"internal_redirect_policy", false}, 35: {"host_rewrite_path_regex", false},
		37: {"cluster_specifier_plugin", false}, 38: {"append_x_forwarded_host", false},
		39: {"inline_cluster_specifier_plugin", false}, 40: {"early_data_policy", true},
		41: {"path_rewrite_policy", false}, 42: {"flush_timeout", false}, 44: {"host_rewrite", false},
		45: {"path_rewrite", false},
	},
	"weft.dataplane.envoy.v3.RouteAction.RequestMirrorPolicy": {
		4: {"trace_sampled", true}, 5: {"cluster_header", false}, 7: {"request_headers_mutations", false},
	},
	"weft.dataplane.envoy.v3.RouteAction.MaxStreamDuration": {},
	"weft.dataplane.envoy.v3.RuntimeFractionalPercent": {
		2: {"runtime_key", true}, // no runtime: the default value is the value
	},
	"weft.dataplane.envoy.v3.FractionalPercent": {},
	"weft.dataplane.envoy.v3.RedirectAction": {
		10: {"path_rewrite", false},
	},
	"weft.dataplane.envoy.v3.DirectResponseAction": {
		3: {"body_format", false},
	},
	"weft.dataplane.envoy.v3.DataSource": {
		4: {"environment_variable", false}, 5: {"watched_directory", false},
	},
	"weft.dataplane.envoy.v3.WeightedCluster": {
		2: {"runtime_key_prefix", true}, 4: {"header_name", false}, 5: {"use_hash_policy", false},
	},
	"weft.dataplane.envoy.v3.WeightedCluster.ClusterWeight": {
		3: {"metadata_match", false}, 10: {"typed_per_filter_config", false}, 12: {"cluster_header", false},
	},
	"weft.dataplane.envoy.v3.HeaderValueOption": {},
	"weft.dataplane.envoy.v3.HeaderValue":       {},
	"weft.dataplane.envoy.v3.RetryPolicy": {
		4: {"retry_priority", false}, 5: {"retry_host_predicate", false}, 6: {"host_selection_retry_max_attempts", false},
		9: {"retriable_headers", false}, 10: {"retriable_request_headers", false}, 11: {"rate_limited_retry_back_off", false},
		12: {"retry_options_predicates", false}, 13: {"per_try_idle_timeout", false}, 14: {"refresh_cluster_on_retry", false},
	},
	"weft.dataplane.envoy.v3.RetryPolicy.RetryBackOff": {},
}

// checkUnknown refuses m when it, or a message within it, carries an unknown field the proxy may not
// ignore. The error names the field by its path, e.g. "virtual_hosts[0].routes[1].route: field
// hash_policy (15) is not supported".
func checkUnknown(m proto.Message) error {
	return walkUnknown(m.ProtoReflect(), "")
}

func walkUnknown(m protoreflect.Message, path string) error {
	d := m.Descriptor()
	if !strings.HasPrefix(string(d.FullName()), "weft.dataplane.envoy.v3.") {
		return nil // google.protobuf's well-known types: complete
	}
	if u := m.GetUnknown(); len(u) > 0 {
		known := routeUnknowns[d.FullName()]
		for len(u) > 0 {
			num, _, n := protowire.ConsumeField(u)
			if n < 0 {
				return fmt.Errorf("%s: malformed unknown field", where(path, d))
			}
			u = u[n:]
			f, ok := known[num]
			switch {
			case ok && f.ignore:
				continue
			case ok:
				return fmt.Errorf("%s: field %s (%d) is not supported", where(path, d), f.name, num)
			default:
				return fmt.Errorf("%s: field %d is not supported", where(path, d), num)
			}
		}
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		p := string(fd.Name())
		if path != "" {
			p = path + "." + p
		}
		if fd.IsList() {
			l := v.List()
			for i := range l.Len() {
				if err = walkUnknown(l.Get(i).Message(), p+"["+strconv.Itoa(i)+"]"); err != nil {
					return false
				}
			}
			return true
		}
		err = walkUnknown(v.Message(), p)
		return err == nil
	})
	return err
}

func where(path string, d protoreflect.MessageDescriptor) string {
	if path == "" {
		return string(d.Name())
	}
	return path
}
