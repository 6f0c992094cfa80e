package main

import (
	"net"
	"strings"
	"testing"
)

// TestDashboardMistakes: a bad address, a bad or unreachable Prometheus, a bad kubeconfig: each one
// line that says what to do.
func TestDashboardMistakes(t *testing.T) {
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downURL := "http://" + down.Addr().String()
	down.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dashboard", "--addr", "50750"}, `--addr "50750": want host:port such as 127.0.0.1:50750`},
		{[]string{"dashboard", "--addr", "127.0.0.1:99999"}, `--addr "127.0.0.1:99999": want host:port`},
		{[]string{"dashboard", "extra"}, "unknown command"},
		{[]string{"dashboard", "--kubeconfig", "/nonexistent", "--prometheus-url", downURL}, "--kubeconfig"},
		{[]string{"dashboard", "--prometheus-url", "ftp://x"}, `--prometheus-url "ftp://x": want an http(s) URL`},
		{[]string{"dashboard", "--prometheus-url", downURL}, "Prometheus at " + downURL + ": not reachable"},
	} {
		root := newRootCmd()
		root.SetArgs(tc.args)
		t.Setenv("KUBECONFIG", "/nonexistent-kubeconfig")
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("weft %s: %v, want one line containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
