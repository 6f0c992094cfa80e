package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/deploy/inject"
)

const deploymentYAML = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "web:1"}]
`

// runWeftIO runs the CLI with stdin and returns stdout and stderr apart.
func runWeftIO(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

// TestInjectCLI: weft inject - annotates, --manual inlines the proxy with the built-in chart's defaults
// (this CLI's version) or --config's, and weft uninject takes either off again.
func TestInjectCLI(t *testing.T) {
	annotated, log, err := runWeftIO(t, deploymentYAML, "inject", "-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(annotated, "weft.io/inject: enabled") || !strings.Contains(log, "shop/deployment/web: annotated") {
		t.Errorf("weft inject -:\n%s\nstderr: %s", annotated, log)
	}

	manual, log, err := runWeftIO(t, deploymentYAML, "inject", "--manual", "-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(manual, "image: ghcr.io/weftmesh/weft-proxy:"+buildinfo.Version) || !strings.Contains(manual, "name: weft-proxy") {
		t.Errorf("weft inject --manual does not use the chart's proxy image at this version:\n%s", manual)
	}
	if !strings.Contains(log, "no trust anchors") {
		t.Errorf("no warning about the missing trust anchors: %s", log)
	}

	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	cfg := "proxyImage: registry.example/weft-proxy:v7\ncontrolPlaneAddr: weft-control.mesh.svc:15012\ntrustDomain: example.org\ntrustAnchorsPEM: ANCHORS\nnativeSidecars: false\nversion: v7\n"
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	custom, log, err := runWeftIO(t, deploymentYAML, "inject", "--manual", "--config", cfgFile, "-")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Template struct {
				Metadata struct{ Labels map[string]string }
				Spec     struct {
					Containers []struct{ Name, Image string }
				}
			}
		}
	}
	if err := yaml.Unmarshal([]byte(custom), &d); err != nil {
		t.Fatal(err)
	}
	if c := d.Spec.Template.Spec.Containers; len(c) != 2 || c[0].Name != inject.ProxyContainer || c[0].Image != "registry.example/weft-proxy:v7" ||
		d.Spec.Template.Metadata.Labels[inject.LabelControlPlaneNS] != "mesh" || strings.Contains(log, "no trust anchors") {
		t.Errorf("--config not followed (classic sidecar of registry.example/weft-proxy:v7, control plane in mesh):\n%s\nstderr: %s", custom, log)
	}

	for _, in := range []string{annotated, manual, custom} {
		back, _, err := runWeftIO(t, in, "uninject", "-")
		if err != nil {
			t.Fatal(err)
		}
		var want, got any
		if err := yaml.Unmarshal([]byte(deploymentYAML), &want); err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal([]byte(back), &got); err != nil {
			t.Fatal(err)
		}
		if !equalJSON(t, want, got) {
			t.Errorf("weft uninject did not give back the input:\n%s", back)
		}
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	x, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// TestInjectCLIErrors: bad input is one line naming the file, the document and what is wrong.
func TestInjectCLIErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(deploymentYAML+"---\nkind: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badCfg := filepath.Join(dir, "cfg.yaml")
	if err := os.WriteFile(badCfg, []byte("proxyImage: x\nproxyImg: y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{[]string{"inject", bad}, "", "bad.yaml: document 2: not YAML"},
		{[]string{"inject", "-"}, strings.Replace(deploymentYAML, "{labels: {app: web}}", "{labels: {app: web}, annotations: {config.weft.io/skip-subnets: everywhere}}", 1),
			`standard input: document 1: shop/deployment/web: annotation config.weft.io/skip-subnets: "everywhere"`},
		{[]string{"inject", "--manual", "--config", badCfg, "-"}, deploymentYAML, `--config ` + badCfg + `: unknown field "proxyImg"`},
		{[]string{"inject", filepath.Join(dir, "none.yaml")}, "", "none.yaml: no such file"},
		{[]string{"uninject"}, "", "accepts 1 arg"},
	} {
		out, _, err := runWeftIO(t, tc.stdin, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("weft %s: error = %v, want it to contain %q", strings.Join(tc.args, " "), err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("weft %s: error is not one line: %q", strings.Join(tc.args, " "), err)
		}
		if out != "" {
			t.Errorf("weft %s: printed a partial stream on error:\n%s", strings.Join(tc.args, " "), out)
		}
	}
}
