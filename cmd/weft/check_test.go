package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/cmd/weft/internal/check"
)

// TestCheckBadInput: each mistake is one line naming the flag.
func TestCheckBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"check", "--output", "yaml"}, `--output "yaml": want table or json`},
		{[]string{"check", "--wait", "-1s"}, "--wait -1s: want a positive duration"},
		{[]string{"check", "--pre", "--proxy"}, "--pre and --proxy: choose one"},
		{[]string{"check", "--namespace", "Weft_NS"}, `--namespace "Weft_NS": not a namespace name`},
		{[]string{"check", "--probe-namespace", ""}, `--probe-namespace "": not a namespace name`},
	} {
		_, err := runWeft(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.says) || strings.Contains(err.Error(), "\n") {
			t.Errorf("weft %s: %v, want one line saying %s", strings.Join(tc.args, " "), err, tc.says)
		}
	}
}

// TestCheckWithoutACluster: a kubeconfig that does not exist fails the first check, with its hint, in
// the text and the JSON output; weft exits 1 (errChecksFailed) without a further message.
func TestCheckWithoutACluster(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	out, err := runWeft(t, "check", "--kubeconfig", missing)
	if !errors.Is(err, errChecksFailed) {
		t.Fatalf("err = %v, want errChecksFailed", err)
	}
	for _, want := range []string{"kubernetes-api\n--------------\n× can initialize the client\n", "hint: check --kubeconfig", "see https://weft.io/checks#k8s-api-client for hints", "Status check results are ×: 1 failed (k8s-api-client)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, err = runWeft(t, "check", "--pre", "-o", "json", "--kubeconfig", missing)
	if !errors.Is(err, errChecksFailed) {
		t.Fatalf("err = %v, want errChecksFailed", err)
	}
	var rep check.JSONReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--output json is not JSON: %v\n%s", err, out)
	}
	first := rep.Sections[0].Checks[0]
	if rep.Success || first.ID != "k8s-api-client" || first.Result != "error" || first.Hint == "" || rep.Sections[len(rep.Sections)-1].Name != check.SectionPre {
		t.Errorf("JSON report: %+v", rep)
	}
}
