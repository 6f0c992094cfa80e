package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// docs decodes a YAML stream into generic objects (comments and formatting gone).
func docs(t *testing.T, b []byte) []any {
	t.Helper()
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var out []any
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := yaml.Unmarshal(d, &v); err != nil {
			t.Fatal(err)
		}
		if v != nil {
			out = append(out, v)
		}
	}
}

// TestRewrite runs weft inject (both forms) and weft uninject on a stream of every kind of workload
// (testdata/stream/in.yaml; outputs in testdata/stream/, go test -update rewrites them), and checks
// what a user relies on: comments and unknown fields kept, other documents byte for byte, the manual
// form's Pod template equal to what Inject makes of it, and uninject giving back the input's objects.
func TestRewrite(t *testing.T) {
	in, err := os.ReadFile("testdata/stream/in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	run := func(mode Mode, input []byte) ([]byte, []string) {
		t.Helper()
		var lines []string
		out, err := Rewrite(bytes.NewReader(input), mode, cfg, func(s string) { lines = append(lines, s) })
		if err != nil {
			t.Fatal(err)
		}
		return out, lines
	}
	annotated, lines := run(Annotate, in)
	compareGolden(t, "testdata/stream/annotate.yaml", annotated)
	compareGolden(t, "testdata/stream/annotate.log", lines)
	manual, lines := run(Manual, in)
	compareGolden(t, "testdata/stream/manual.yaml", manual)
	compareGolden(t, "testdata/stream/manual.log", lines)

	for _, out := range [][]byte{annotated, manual} {
		for _, keep := range []string{"# A shop: every kind", "name: web # the front end", "someFutureField: kept # a field this binary does not know",
			"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80, targetPort: 8080}]\n", "# only a comment"} {
			if !bytes.Contains(out, []byte(keep)) {
				t.Errorf("the output lost %q", keep)
			}
		}
	}

	// The manual form's Deployment template is Inject's Pod.
	var deploy struct {
		Spec struct{ Template corev1.PodTemplateSpec } `json:"spec"`
	}
	if err := yaml.Unmarshal(bytes.SplitN(manual, []byte("\n---\n"), 2)[0], &deploy); err != nil {
		t.Fatal(err)
	}
	var orig struct {
		Spec struct{ Template corev1.PodTemplateSpec } `json:"spec"`
	}
	if err := yaml.Unmarshal(bytes.SplitN(in, []byte("\n---\n"), 2)[0], &orig); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: orig.Spec.Template.ObjectMeta, Spec: orig.Spec.Template.Spec}
	pod.Namespace = "shop"
	if res, err := Inject(pod, enabledNS, cfg); err != nil || !res.Injected {
		t.Fatal(err, res)
	}
	pod.Namespace = ""
	if diff := cmp.Diff(pod.Spec, deploy.Spec.Template.Spec); diff != "" {
		t.Errorf("weft inject --manual differs from Inject (-Inject +manual):\n%s", diff)
	}

	// Uninject of either form gives back the input's objects.
	want := docs(t, in)
	for name, out := range map[string][]byte{"annotated": annotated, "manual": manual} {
		back, _ := run(Remove, out)
		if diff := cmp.Diff(want, docs(t, back)); diff != "" {
			t.Errorf("uninject of the %s stream differs from the input (-input +uninjected):\n%s", name, diff)
		}
	}
	// Injecting twice changes nothing more.
	again, _ := run(Manual, manual)
	if !bytes.Equal(again, manual) {
		t.Errorf("weft inject --manual of its own output changed it")
	}
}

// TestRewriteJSON: kubectl get -o json output is a YAML stream too; the result is block YAML.
func TestRewriteJSON(t *testing.T) {
	in := `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":[{"name":"a","image":"a:1","args":["true"]}]}}]}`
	out, err := Rewrite(strings.NewReader(in), Annotate, testConfig(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var got, want any
	if err := yaml.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(strings.Replace(in, `"name":"x"}`, `"name":"x","annotations":{"weft.io/inject":"enabled"}}`, 1)), &want); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s\n%s", diff, out)
	}
	if bytes.Contains(out, []byte("{")) {
		t.Errorf("output is not block YAML:\n%s", out)
	}
}

// TestRewriteErrors: each bad input is one line naming the document (and the annotation).
func TestRewriteErrors(t *testing.T) {
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: a}]}\n"
	for _, tc := range []struct{ name, in, want string }{
		{"not yaml", pod + "---\nfoo: [\n", "document 2: not YAML"},
		{"not an object", pod + "---\n- a\n- b\n", "document 2: not a Kubernetes object"},
		{"no kind", "a: 1\n", "document 1: not a Kubernetes object: apiVersion or kind is missing"},
		{"bad template", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: 3}}}\n", "document 1: deployment/d: the Pod template is not valid"},
		{"bad annotation", pod + "---\n" + strings.Replace(pod, "{name: p}", "{name: q, annotations: {config.weft.io/proxy-await: sometimes}}", 1),
			`document 2: pod/q: annotation config.weft.io/proxy-await: "sometimes": want enabled or disabled`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Rewrite(strings.NewReader(tc.in), Manual, testConfig(t), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}
