package charts

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestGatewayAPICRDs: with gatewayAPI.crds the chart renders the Gateway API's standard channel (the
// golden file lists each object and its bundle version), at the version go.mod pins, byte for byte as
// the module ships it; without, none of it.
func TestGatewayAPICRDs(t *testing.T) {
	ms := render(t, "", with(identityValues(), "gatewayAPI", map[string]any{"crds": true}))
	var index []string
	crds := map[string]string{}
	for _, m := range ms {
		if !strings.HasSuffix(m.Source, "gateway-api.yaml") {
			continue
		}
		var obj struct {
			Kind     string
			Metadata struct {
				Name        string
				Annotations map[string]string
			}
		}
		if err := yaml.Unmarshal([]byte(m.Content), &obj); err != nil {
			t.Fatalf("%s: %v", m.Source, err)
		}
		index = append(index, obj.Kind+" "+obj.Metadata.Name+" "+obj.Metadata.Annotations["gateway.networking.k8s.io/channel"]+" "+obj.Metadata.Annotations["gateway.networking.k8s.io/bundle-version"])
		if obj.Kind == "CustomResourceDefinition" {
			crds[obj.Metadata.Name] = m.Content
		}
	}
	golden(t, "gateway-api.index", strings.Join(index, "\n")+"\n")
	for _, want := range []string{"httproutes", "grpcroutes", "referencegrants"} {
		if crds[want+".gateway.networking.k8s.io"] == "" {
			t.Errorf("the CRD of %s is not rendered", want)
		}
	}

	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`sigs\.k8s\.io/gateway-api (v\S+)`).FindSubmatch(gomod)
	if pinned == nil {
		t.Fatal("go.mod does not require sigs.k8s.io/gateway-api")
	}
	for _, line := range index {
		if !strings.HasSuffix(line, " standard "+string(pinned[1])) {
			t.Errorf("%q: want channel standard at %s, the version go.mod pins (make gateway-api-crds copies them)", line, pinned[1])
		}
	}

	// Byte for byte the module's files, when the module is in the cache (it is after go build).
	if dir := moduleDir(t, "sigs.k8s.io/gateway-api@"+string(pinned[1])); dir != "" {
		for name, content := range crds {
			plural, _, _ := strings.Cut(name, ".")
			want, err := os.ReadFile(filepath.Join(dir, "config/crd/standard/gateway.networking.k8s.io_"+plural+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(want)) != strings.TrimSpace(content) {
				t.Errorf("the CRD %s differs from the module's (make gateway-api-crds copies them)", name)
			}
		}
	}

	for _, m := range render(t, "", identityValues()) {
		if strings.HasSuffix(m.Source, "gateway-api.yaml") {
			t.Errorf("gatewayAPI.crds is off by default, yet %s %s is rendered", m.Kind, m.Name)
		}
	}
}

// moduleDir is the module cache folder of mod ("path@version"), or "" if it is not there.
func moduleDir(t *testing.T, mod string) string {
	cache := os.Getenv("GOMODCACHE")
	if cache == "" {
		gopath := os.Getenv("GOPATH")
		if gopath == "" {
			home, _ := os.UserHomeDir()
			gopath = filepath.Join(home, "go")
		}
		cache = filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "pkg", "mod")
	}
	dir := filepath.Join(cache, mod)
	if _, err := os.Stat(dir); err != nil {
		t.Logf("%s is not in the module cache; not comparing byte for byte", mod)
		return ""
	}
	return dir
}
