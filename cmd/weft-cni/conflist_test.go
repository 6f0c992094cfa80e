package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./cmd/weft-cni -update` to create it)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs from the golden file (-want +got); if the change is meant, rerun with -update:\n%s", path, d)
	}
}

var testEntry = Entry{Type: PluginType, Kubeconfig: "/etc/cni/net.d/weft-cni.kubeconfig", IptablesMode: "auto", ExcludeNamespaces: []string{"kube-system"}}

// pluginTypes lists the "type" of each plugin of a configuration.
func pluginTypes(t *testing.T, name string, data []byte) []string {
	t.Helper()
	_, plugins, _, err := parseConfig(name, data)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range plugins {
		var x struct{ Type string }
		_ = json.Unmarshal(p, &x)
		out = append(out, x.Type)
	}
	return out
}

func TestPatchConfigGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/conflist/*.in")
	if len(ins) == 0 {
		t.Fatal("no testdata/conflist/*.in")
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			p, err := patchConfig(name, data, testEntry)
			if err != nil {
				t.Fatal(err)
			}
			if p.Write == "" {
				t.Fatal("patchConfig changed nothing")
			}
			golden(t, strings.TrimSuffix(in, ".in")+".golden", fmt.Appendf(nil, "# write %s; remove %q\n%s", p.Write, p.Remove, p.Data))

			// The entry is last and appears once; the other plugins are kept in order.
			before, after := pluginTypes(t, name, data), pluginTypes(t, p.Write, p.Data)
			var others []string
			for _, ty := range before {
				if ty != PluginType {
					others = append(others, ty)
				}
			}
			if d := cmp.Diff(append(others, PluginType), after); d != "" {
				t.Errorf("plugin types after patching (-want +got):\n%s", d)
			}
			// A second run changes nothing; so does the watch noticing its own write.
			again, err := patchConfig(p.Write, p.Data, testEntry)
			if err != nil || again.Write != "" {
				t.Errorf("patching the patched file again = %+v, %v; want no change", again, err)
			}
			// Other options rewrite the entry in place.
			other := testEntry
			other.IptablesMode = "legacy"
			changed, err := patchConfig(p.Write, p.Data, other)
			if err != nil || changed.Write != p.Write || !strings.Contains(string(changed.Data), `"iptablesMode": "legacy"`) {
				t.Errorf("patching with other options = %s %s, %v; want the entry rewritten", changed.Write, changed.Data, err)
			}
			// Uninstalling takes the entry out and keeps the rest.
			out, removed, err := unpatchConfig(p.Write, p.Data)
			if err != nil || !removed {
				t.Fatalf("unpatchConfig = %v, %v", removed, err)
			}
			if d := cmp.Diff(others, pluginTypes(t, p.Write, out)); d != "" {
				t.Errorf("plugin types after unpatching (-want +got):\n%s", d)
			}
			if _, removed, _ := unpatchConfig(p.Write, out); removed {
				t.Error("unpatching twice removed something the second time")
			}
		})
	}
}

func TestPatchConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"10-x.conflist", `not json`, "10-x.conflist is not a JSON object"},
		{"10-x.conflist", `{"name":"x"}`, `has no "plugins" list`},
		{"10-x.conflist", `{"name":"x","plugins":{"type":"ptp"}}`, `"plugins" is not a list`},
		{"10-x.conflist", `{"name":"x","plugins":[{"mtu":1}]}`, `plugin 0 has no "type"`},
		{"10-x.conflist", `{"name":"x","plugins":[{"type":"weft-cni"}]}`, "no network plugin besides weft-cni"},
		{"10-x.conf", `[]`, "is not a JSON object"},
	} {
		if _, err := patchConfig(tc.name, []byte(tc.data), testEntry); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("patchConfig(%s, %s) = %v; want an error containing %q", tc.name, tc.data, err, tc.want)
		}
	}
}

func TestPrimaryConfig(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{[]string{"20-b.conflist", "10-a.conf", "weft-cni.kubeconfig"}, "10-a.conf"},
		{[]string{"weft-cni.kubeconfig", "weft-cni.token", ".weft-cni-123", "99-loopback.json"}, "99-loopback.json"},
		{[]string{"calico-kubeconfig", "README"}, ""},
		{[]string{"10-calico.conflist", ".10-aaa.conflist"}, "10-calico.conflist"},
	} {
		if got := primaryConfig(tc.names); got != tc.want {
			t.Errorf("primaryConfig(%q) = %q, want %q", tc.names, got, tc.want)
		}
	}
}
