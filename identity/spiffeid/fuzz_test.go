package spiffeid

import (
	"strings"
	"testing"
)

// FuzzParseID: whatever the string, ParseID does not panic; an ID it accepts is valid, formats back to
// the same string, and parses again to itself, from its string and from its URL form (the URI SAN
// certificates carry).
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/web",
		"spiffe://example.org/ns/a-b/sa/c.d-e",
		"spiffe://cluster.local/ns/default/sa/web/x",
		"spiffe://Cluster.local/ns/default/sa/web",
		"spiffe://cluster.local:8443/ns/default/sa/web",
		"spiffe://u@cluster.local/ns/default/sa/web",
		"spiffe://cluster.local/ns/de%66ault/sa/web",
		"spiffe://cluster.local/ns/default/sa/web?x#y",
		"spiffe:cluster.local/ns/default/sa/web",
		"https://cluster.local/ns/default/sa/web",
		"spiffe://a_b/ns/x/sa/y",
		"spiffe:///ns/x/sa/y",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			if id != (ID{}) {
				t.Fatalf("ParseID(%q) failed (%v) but returned %+v", s, err, id)
			}
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("ParseID(%q) accepted an invalid ID: %v", s, err)
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
		if u := id.URL().String(); u != s {
			t.Fatalf("ParseID(%q).URL() = %q", s, u)
		}
		again, err := IDFromURL(id.URL())
		if err != nil || again != id {
			t.Fatalf("IDFromURL(%q) = %+v, %v; want %+v", s, again, err, id)
		}
	})
}

// FuzzNewID: an ID built from any three parts that NewID accepts formats to a string that ParseID
// reads back to the same parts (so no part can smuggle a '/', '?', '#', '%' or ':' into the ID).
func FuzzNewID(f *testing.F) {
	f.Add("cluster.local", "default", "web")
	f.Add("example.org", "a-b", "c.d-e")
	f.Add("a_b", "x", "y")
	f.Add("cluster.local", "ns/x", "y")
	f.Add("cluster.local:1", "x", "y")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, td, ns, sa string) {
		id, err := NewID(td, ns, sa)
		if err != nil {
			return
		}
		for _, part := range []string{td, ns, sa} {
			if strings.ContainsAny(part, "/?#%:@") {
				t.Fatalf("NewID accepted %q in %+v", part, id)
			}
		}
		back, err := ParseID(id.String())
		if err != nil || back != id {
			t.Fatalf("ParseID(%q) = %+v, %v; want %+v", id.String(), back, err, id)
		}
	})
}
