package proxy

import (
	"net/http"
	"net/url"
	"regexp"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/dataplane/config"
)

func TestMutateHeaders(t *testing.T) {
	op := func(k, v string, a config.AppendAction) config.HeaderOp {
		return config.HeaderOp{Key: k, Value: v, Action: a}
	}
	h := http.Header{"A": {"1"}, "B": {"1"}, "C": {"1"}, "D": {"1"}, "Gone": {"x"}}
	mutateHeaders(h, &config.HeaderMutation{
		Remove: []string{"Gone", "A"}, // removals first: A is then added afresh
		Add: []config.HeaderOp{
			op("A", "2", config.AppendIfExistsOrAdd), op("B", "2", config.AppendIfExistsOrAdd),
			op("C", "2", config.AddIfAbsent), op("New", "2", config.AddIfAbsent),
			op("D", "2", config.OverwriteIfExistsOrAdd), op("Set", "2", config.OverwriteIfExistsOrAdd),
			op("B", "3", config.OverwriteIfExists), op("Absent", "3", config.OverwriteIfExists),
			op("Empty", "", config.AppendIfExistsOrAdd), {Key: "Kept", Action: config.AppendIfExistsOrAdd, KeepEmpty: true},
		},
	})
	want := http.Header{"A": {"2"}, "B": {"3"}, "C": {"1"}, "New": {"2"}, "D": {"2"}, "Set": {"2"}, "Kept": {""}}
	if d := cmp.Diff(want, h); d != "" {
		t.Errorf("-want +got:\n%s", d)
	}
}

func TestRedirectLocation(t *testing.T) {
	prefix := config.Route{Kind: config.PathSeparatedPrefix, Prefix: "/old"}
	exact := config.Route{Kind: config.PathExact, Path: "/old"}
	for _, tc := range []struct {
		name   string
		route  config.Route
		rd     config.Redirect
		host   string
		target string
		want   string
	}{
		{"keep all", prefix, config.Redirect{}, "svc:8080", "/old/a?q=1", "http://svc:8080/old/a?q=1"},
		{"default port dropped", prefix, config.Redirect{}, "svc:80", "/old", "http://svc/old"},
		{"https drops the port", prefix, config.Redirect{Scheme: "https"}, "svc:8080", "/old", "https://svc/old"},
		{"https with a port", prefix, config.Redirect{Scheme: "https", Port: 8443}, "svc:8080", "/old", "https://svc:8443/old"},
		{"https to 443", prefix, config.Redirect{Scheme: "https", Port: 443}, "svc", "/old", "https://svc/old"},
		{"host keeps the port", prefix, config.Redirect{Host: "example.com"}, "svc:8080", "/x", "http://example.com:8080/x"},
		{"host with its port", prefix, config.Redirect{Host: "example.com:9000"}, "svc:8080", "/x", "http://example.com:9000/x"},
		{"prefix", prefix, config.Redirect{PathKind: config.RedirectPrefix, Path: "/new"}, "svc", "/old/a/b?q", "http://svc/new/a/b?q"},
		{"prefix of an exact path", exact, config.Redirect{PathKind: config.RedirectPrefix, Path: "/new"}, "svc", "/old", "http://svc/new"},
		{"path", prefix, config.Redirect{PathKind: config.RedirectReplacePath, Path: "/p"}, "svc", "/old?q=1", "http://svc/p?q=1"},
		{"path with a query", prefix, config.Redirect{PathKind: config.RedirectReplacePath, Path: "/p?x=2", StripQuery: true}, "svc", "/old?q=1", "http://svc/p?x=2"},
		{"strip query", prefix, config.Redirect{StripQuery: true}, "svc", "/old?q=1", "http://svc/old"},
		{"regex", prefix, config.Redirect{PathKind: config.RedirectRegex, Regex: &config.Rewrite{Regex: regexp.MustCompile("^/old/(.*)$"), Template: "/v2/${1}"}}, "svc", "/old/a", "http://svc/v2/a"},
		{"escaped path kept", prefix, config.Redirect{}, "svc", "/old/a%20b", "http://svc/old/a%20b"},
		{"ipv6", prefix, config.Redirect{}, "[::1]:8080", "/old", "http://[::1]:8080/old"},
	} {
		u, err := url.ParseRequestURI(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		r := tc.route
		r.Redirect = &tc.rd
		if got := redirectLocation(&r, &http.Request{Host: tc.host, URL: u}); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestRouteTimeout(t *testing.T) {
	req := func(grpcTimeout string) *http.Request {
		h := http.Header{}
		if grpcTimeout != "" {
			h.Set("Grpc-Timeout", grpcTimeout)
		}
		return &http.Request{Header: h}
	}
	for _, tc := range []struct {
		name  string
		route config.Route
		req   *http.Request
		want  time.Duration
	}{
		{"plain", config.Route{Timeout: time.Second}, req("10m"), time.Second},
		{"stream duration shorter", config.Route{Timeout: time.Second, MaxStreamDuration: 100 * time.Millisecond, Extended: true}, req(""), 100 * time.Millisecond},
		{"stream duration only", config.Route{MaxStreamDuration: 100 * time.Millisecond, Extended: true}, req(""), 100 * time.Millisecond},
		{"grpc-timeout without the header max", config.Route{Timeout: time.Second, Extended: true}, req("10m"), time.Second},
		{"grpc-timeout", config.Route{Timeout: time.Second, GRPCTimeout: &config.GRPCTimeout{}, Extended: true}, req("10m"), 10 * time.Millisecond},
		{"grpc-timeout capped", config.Route{GRPCTimeout: &config.GRPCTimeout{Max: 50 * time.Millisecond}, Extended: true}, req("10S"), 50 * time.Millisecond},
		{"grpc-timeout less the offset", config.Route{GRPCTimeout: &config.GRPCTimeout{Offset: 5 * time.Millisecond}, Extended: true}, req("10m"), 5 * time.Millisecond},
		{"grpc-timeout absent", config.Route{Timeout: time.Second, GRPCTimeout: &config.GRPCTimeout{}, Extended: true}, req(""), time.Second},
		{"grpc-timeout 0 is none", config.Route{GRPCTimeout: &config.GRPCTimeout{}, Extended: true}, req("0m"), 0},
	} {
		if got := routeTimeout(&tc.route, tc.req); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc": true, "application/grpc+proto": true, "Application/GRPC;charset=x": true,
		"application/grpc-web": false, "application/json": false, "": false, "application/grp": false,
	} {
		if isGRPC(ct) != want {
			t.Errorf("isGRPC(%q) = %v, want %v", ct, !want, want)
		}
	}
}
