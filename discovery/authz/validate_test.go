package authz

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      Spec
		want    Spec
		wantErr string
	}{
		{name: "empty is ALLOW", in: Spec{}, want: Spec{Action: ActionAllow}},
		{name: "lower-case action", in: Spec{Action: "deny"}, want: Spec{Action: ActionDeny}},
		{name: "unknown action", in: Spec{Action: "AUDIT"}, wantErr: `action: "AUDIT" is not supported (use ALLOW or DENY)`},
		{
			name: "normalized",
			in: Spec{Rules: []Rule{{
				From: []From{{Source: Source{Principals: []string{"cluster.local/ns/a/sa/b", "spiffe://td/ns/c/sa/d", "*", "*/sa/x", "td/ns/e/*"}, Namespaces: []string{"web", "mon*", "*"}}}},
				To:   []To{{Operation: Operation{Ports: []string{"8080"}, Methods: []string{"get", "*"}, Paths: []string{"/a", "/b/*", "*.css", "*"}}}},
			}}},
			want: Spec{Action: ActionAllow, Rules: []Rule{{
				From: []From{{Source: Source{Principals: []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://td/ns/c/sa/d", "*", "*/sa/x", "spiffe://td/ns/e/*"}, Namespaces: []string{"web", "mon*", "*"}}}},
				To:   []To{{Operation: Operation{Ports: []string{"8080"}, Methods: []string{"GET", "*"}, Paths: []string{"/a", "/b/*", "*.css", "*"}}}},
			}}},
		},
		{name: "star in the middle", in: Spec{Rules: []Rule{{From: []From{{Source: Source{Principals: []string{"a*b"}}}}}}},
			wantErr: `rules[0].from[0].source.principals[0]: "a*b": '*' only at the start or the end`},
		{name: "namespace suffix", in: Spec{Rules: []Rule{{From: []From{{Source: Source{NotNamespaces: []string{"*-prod"}}}}}}},
			wantErr: `rules[0].from[0].source.notNamespaces[0]: "*-prod": a suffix match of namespaces is not supported`},
		{name: "port", in: Spec{Rules: []Rule{{To: []To{{Operation: Operation{NotPorts: []string{"0"}}}}}}},
			wantErr: `rules[0].to[0].operation.notPorts[0]: "0" is not a port (1-65535)`},
		{name: "path", in: Spec{Rules: []Rule{{To: []To{{Operation: Operation{Paths: []string{"api"}}}}}}},
			wantErr: `rules[0].to[0].operation.paths[0]: "api" must start with '/'`},
		{name: "method", in: Spec{Rules: []Rule{{To: []To{{Operation: Operation{Methods: []string{"GET POST"}}}}}}},
			wantErr: `rules[0].to[0].operation.methods[0]: "GET POST" is not an HTTP method`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Validate(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestSelects(t *testing.T) {
	var none *WorkloadSelector
	if !none.Selects(map[string]string{"a": "b"}) || !(&WorkloadSelector{}).Selects(nil) {
		t.Error("an absent or empty selector must select every pod")
	}
	s := &WorkloadSelector{MatchLabels: map[string]string{"app": "api", "tier": "be"}}
	if !s.Selects(map[string]string{"app": "api", "tier": "be", "x": "y"}) || s.Selects(map[string]string{"app": "api"}) {
		t.Error("matchLabels must all match")
	}
}
