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

// unknownField names a field of Envoy's that the slim message msg lacks; ignore says that the proxy
// may ignore it.
type unknownField struct {
	msg    string
	num    protowire.Number
	name   string
	ignore bool
}

// lookupUnknown finds field num of message msg (a full name) in routeUnknowns.
func lookupUnknown(msg string, num protowire.Number) (unknownField, bool) {
	msg = strings.TrimPrefix(msg, slimPackage)
	for _, f := range routeUnknowns {
		if f.msg == msg && f.num == num && num != 0 {
			return f, true
		}
	}
	return unknownField{}, false
}

const slimPackage = "weft.dataplane.envoy.v3."

// routeUnknowns lists, per message of the route configuration (its name without the package
// weft.dataplane.envoy.v3.), Envoy's fields the slim one lacks; a message whose slim form lacks none
// has one entry of number 0. A message not listed here (or a number not listed) is refused whenever it
// carries an unknown field. An array of constants rather than maps: the linker lays it out as data,
// where maps would be built by ~7 KB of init code into heap that every sidecar keeps.
var routeUnknowns = [...]unknownField{
	{"RouteConfiguration", 3, "internal_only_headers", false},
	{"RouteConfiguration", 7, "validate_clusters", true},
	{"RouteConfiguration", 9, "vhds", false},
	{"RouteConfiguration", 11, "max_direct_response_body_size_bytes", false},
	{"RouteConfiguration", 12, "cluster_specifier_plugins", false},
	{"RouteConfiguration", 13, "request_mirror_policies", false},
	{"RouteConfiguration", 14, "ignore_port_in_host_matching", false},
	{"RouteConfiguration", 15, "ignore_path_parameters_in_path_matching", false},
	{"RouteConfiguration", 16, "typed_per_filter_config", false},
	{"RouteConfiguration", 17, "metadata", true},
	{"RouteConfiguration", 18, "vhost_header", false},
	{"RouteConfiguration", 19, "route_specifiers", false},
	{"VirtualHost", 4, "require_tls", false},
	{"VirtualHost", 5, "virtual_clusters", true},
	{"VirtualHost", 6, "rate_limits", false},
	{"VirtualHost", 8, "cors", false},
	{"VirtualHost", 14, "include_request_attempt_count", false},
	{"VirtualHost", 15, "typed_per_filter_config", false},
	{"VirtualHost", 17, "hedge_policy", false},
	{"VirtualHost", 18, "per_request_buffer_limit_bytes", true},
	{"VirtualHost", 19, "include_attempt_count_in_response", false},
	{"VirtualHost", 20, "retry_policy_typed_config", false},
	{"VirtualHost", 21, "matcher", false},
	{"VirtualHost", 22, "request_mirror_policies", false},
	{"VirtualHost", 23, "include_is_timeout_retry_header", false},
	{"VirtualHost", 24, "metadata", true},
	{"VirtualHost", 25, "request_body_buffer_limit", true},
	{"VirtualHost", 26, "route_specifiers", false},
	{"Route", 4, "metadata", true},
	{"Route", 5, "decorator", true},
	{"Route", 13, "typed_per_filter_config", false},
	{"Route", 15, "tracing", true},
	{"Route", 16, "per_request_buffer_limit_bytes", true},
	{"Route", 17, "filter_action", false},
	{"Route", 18, "non_forwarding_action", false},
	{"Route", 19, "stat_prefix", true},
	{"Route", 20, "request_body_buffer_limit", true},
	{"Route", 21, "route_specifiers", false},
	{"RouteMatch", 9, "runtime_fraction", false},
	{"RouteMatch", 11, "tls_context", false},
	{"RouteMatch", 12, "connect_matcher", false},
	{"RouteMatch", 13, "dynamic_metadata", false},
	{"RouteMatch", 15, "path_match_policy", false},
	{"RouteMatch", 16, "filter_state", false},
	{"RouteMatch", 17, "cookies", false},
	{"HeaderMatcher", 6, "range_match", false},
	{"QueryParameterMatcher", 0, "", false},
	{"StringMatcher", 8, "custom", false},
	{"RegexMatcher", 1, "google_re2", true}, // deprecated engine options; the regex is RE2 either way
	{"RegexMatchAndSubstitute", 0, "", false},
	{"RouteAction", 2, "cluster_header", false},
	{"RouteAction", 4, "metadata_match", false},
	{"RouteAction", 7, "auto_host_rewrite", false},
	{"RouteAction", 11, "priority", false},
	{"RouteAction", 13, "rate_limits", false},
	{"RouteAction", 14, "include_vh_rate_limits", true},
	{"RouteAction", 15, "hash_policy", false},
	{"RouteAction", 17, "cors", false},
	{"RouteAction", 20, "cluster_not_found_response_code", false},
	{"RouteAction", 23, "max_grpc_timeout", false},
	{"RouteAction", 24, "idle_timeout", false},
	{"RouteAction", 25, "upgrade_configs", false},
	{"RouteAction", 26, "internal_redirect_action", false},
	{"RouteAction", 27, "hedge_policy", false},
	{"RouteAction", 28, "grpc_timeout_offset", false},
	{"RouteAction", 29, "host_rewrite_header", false},
	{"RouteAction", 31, "max_internal_redirects", false},
	{"RouteAction", 33, "retry_policy_typed_config", false},
	{"RouteAction", 34, "internal_redirect_policy", false},
	{"RouteAction", 35, "host_rewrite_path_regex", false},
	{"RouteAction", 37, "cluster_specifier_plugin", false},
	{"RouteAction", 38, "append_x_forwarded_host", false},
	{"RouteAction", 39, "inline_cluster_specifier_plugin", false},
	{"RouteAction", 40, "early_data_policy", true},
	{"RouteAction", 41, "path_rewrite_policy", false},
	{"RouteAction", 42, "flush_timeout", false},
	{"RouteAction", 44, "host_rewrite", false},
	{"RouteAction", 45, "path_rewrite", false},
	{"RouteAction.RequestMirrorPolicy", 4, "trace_sampled", true},
	{"RouteAction.RequestMirrorPolicy", 5, "cluster_header", false},
	{"RouteAction.RequestMirrorPolicy", 7, "request_headers_mutations", false},
	{"RouteAction.MaxStreamDuration", 0, "", false},
	{"RuntimeFractionalPercent", 2, "runtime_key", true}, // no runtime: the default value is the value
	{"FractionalPercent", 0, "", false},
	{"RedirectAction", 10, "path_rewrite", false},
	{"DirectResponseAction", 3, "body_format", false},
	{"DataSource", 4, "environment_variable", false},
	{"DataSource", 5, "watched_directory", false},
	{"WeightedCluster", 2, "runtime_key_prefix", true},
	{"WeightedCluster", 4, "header_name", false},
	{"WeightedCluster", 5, "use_hash_policy", false},
	{"WeightedCluster.ClusterWeight", 3, "metadata_match", false},
	{"WeightedCluster.ClusterWeight", 10, "typed_per_filter_config", false},
	{"WeightedCluster.ClusterWeight", 12, "cluster_header", false},
	{"HeaderValueOption", 0, "", false},
	{"HeaderValue", 0, "", false},
	{"RetryPolicy", 4, "retry_priority", false},
	{"RetryPolicy", 5, "retry_host_predicate", false},
	{"RetryPolicy", 6, "host_selection_retry_max_attempts", false},
	{"RetryPolicy", 9, "retriable_headers", false},
	{"RetryPolicy", 10, "retriable_request_headers", false},
	{"RetryPolicy", 11, "rate_limited_retry_back_off", false},
	{"RetryPolicy", 12, "retry_options_predicates", false},
	{"RetryPolicy", 13, "per_try_idle_timeout", false},
	{"RetryPolicy", 14, "refresh_cluster_on_retry", false},
	{"RetryPolicy.RetryBackOff", 0, "", false},
}

// checkUnknown refuses m when it, or a message within it, carries an unknown field the proxy may not
// ignore. The error names the field by its path, e.g. "virtual_hosts[0].routes[1].route: field
// hash_policy (15) is not supported".
func checkUnknown(m proto.Message) error {
	return walkUnknown(m.ProtoReflect(), "")
}

func walkUnknown(m protoreflect.Message, path string) error {
	d := m.Descriptor()
	if !strings.HasPrefix(string(d.FullName()), slimPackage) {
		return nil // google.protobuf's well-known types: complete
	}
	if u := m.GetUnknown(); len(u) > 0 {
		for len(u) > 0 {
			num, _, n := protowire.ConsumeField(u)
			if n < 0 {
				return fmt.Errorf("%s: malformed unknown field", where(path, d))
			}
			u = u[n:]
			f, ok := lookupUnknown(string(d.FullName()), num)
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
