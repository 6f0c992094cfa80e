package identity

import (
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	tests := []struct {
		in      string
		want    ID
		wantErr string
	}{
		{in: "spiffe://cluster.local/ns/default/sa/web", want: ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}},
		{in: "spiffe://example.org/ns/kube-system/sa/a.b-c", want: ID{TrustDomain: "example.org", Namespace: "kube-system", ServiceAccount: "a.b-c"}},
		{in: "https://cluster.local/ns/default/sa/web", wantErr: "scheme must be spiffe"},
		{in: "spiffe://cluster.local/ns/default", wantErr: "path must be"},
		{in: "spiffe://cluster.local/ns/default/sa/web/extra", wantErr: "path must be"},
		{in: "spiffe://cluster.local/sa/web/ns/default", wantErr: "path must be"},
		{in: "spiffe://Cluster.Local/ns/default/sa/web", wantErr: "trust domain"},
		{in: "spiffe:///ns/default/sa/web", wantErr: "trust domain is empty"},
		{in: "spiffe://cluster.local:8080/ns/default/sa/web", wantErr: "port"},
		{in: "spiffe://cluster.local/ns/Default/sa/web", wantErr: "namespace"},
		{in: "spiffe://cluster.local/ns/default/sa/", wantErr: "service account"},
		{in: "spiffe://cluster.local/ns/default/sa/web?x=1", wantErr: "query"},
		{in: "spiffe://cluster.local/ns/" + strings.Repeat("a", 64) + "/sa/web", wantErr: "namespace"},
		{in: "spiffe://cluster.local/ns/de%2Ffault/sa/web", wantErr: "escapes"},
		{in: "::", wantErr: "missing protocol scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseID(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseID(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseID(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseID(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			if got.String() != tt.in || got.URL().String() != tt.in {
				t.Fatalf("round trip: String %q URL %q, want %q", got.String(), got.URL(), tt.in)
			}
		})
	}
}

func TestParseServiceAccountUser(t *testing.T) {
	tests := []struct {
		user    string
		want    ID
		wantErr bool
	}{
		{user: "system:serviceaccount:default:web", want: ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}},
		{user: "system:serviceaccount:default", wantErr: true},
		{user: "system:node:n1", wantErr: true},
		{user: "alice", wantErr: true},
		{user: "system:serviceaccount:BAD:web", wantErr: true},
		{user: "system:serviceaccount:default:web:x", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseServiceAccountUser("cluster.local", tt.user)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseServiceAccountUser(%q) = %+v, %v; want %+v, error %v", tt.user, got, err, tt.want, tt.wantErr)
		}
	}
}
