package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/identity"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func baseConfig(t *testing.T) config {
	return config{xdsAddr: freeAddr(t), adminAddr: freeAddr(t), trustDomain: "cluster.local", debounce: 100 * time.Millisecond, debounceMax: time.Second, logLevel: "error"}
}

// TestStartupProblemsAreOneClearLine: each startup problem is one line that says what is wrong.
func TestStartupProblemsAreOneClearLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	unreachable := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(unreachable, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		edit func(*config)
		want string
	}{
		{"bad file", func(c *config) { c.discoveryFile = bad }, "bad.yaml: document 1 (Service default/a): spec.ports[0].port: 0 is not a port number"},
		{"missing file", func(c *config) { c.discoveryFile = filepath.Join(dir, "nope.yaml") }, "nope.yaml: no such file"},
		{"port in use", func(c *config) { c.discoveryFile = "../../deploy/examples/echo.yaml"; c.xdsAddr = busy.Addr().String() }, "--xds-addr " + busy.Addr().String() + ": address already in use"},
		{"missing kubeconfig", func(c *config) { c.kubeconfig = filepath.Join(dir, "none") }, "reading kubeconfig"},
		{"apiserver unreachable", func(c *config) { c.kubeconfig = unreachable }, "the Kubernetes API server at https://127.0.0.1:1 does not answer"},
		{"bad debounce", func(c *config) { c.debounce = 2 * time.Second }, "--debounce 2s / --debounce-max 1s"},
		{"two sources", func(c *config) { c.discoveryFile = "../../deploy/examples/echo.yaml"; c.kubeconfig = unreachable }, "--kubeconfig and --discovery-file both say where Services come from: choose one"},
		{"tokens without CA", func(c *config) {
			c.discoveryFile = "../../deploy/examples/echo.yaml"
			c.identity.tokens = filepath.Join(dir, "tokens")
		}, "--identity-tokens stands in for TokenReview of the identity CA, which is off: add --identity-dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig(t)
			tc.edit(&c)
			err := run(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

// localCA makes a CA (weft identity bootstrap) and a local-mode tokens file that maps the token in
// the file token to default/web: what --identity-dir and --identity-tokens take.
func localCA(t *testing.T) (caDir, tokens, token string) {
	t.Helper()
	dir := t.TempDir()
	caDir = filepath.Join(dir, "ca")
	if err := identity.Bootstrap(caDir, identity.BootstrapOptions{TrustDomain: "cluster.local"}); err != nil {
		t.Fatal(err)
	}
	tokens = filepath.Join(dir, "tokens")
	token = filepath.Join(dir, "token")
	if err := os.WriteFile(tokens, []byte("secret-web,default,web\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(token, []byte("secret-web"), 0o600); err != nil {
		t.Fatal(err)
	}
	return caDir, tokens, token
}

// injectorSetup is weft-control's config in Kubernetes mode (env's apiserver) with a new CA and the
// injector on, as the chart runs it; anchors is the CA's trust bundle (the webhook's caBundle).
func injectorSetup(t *testing.T, env *kubeenv.Env) (config, []byte) {
	t.Helper()
	caDir, _, _ := localCA(t)
	anchors, err := os.ReadFile(filepath.Join(caDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	c := baseConfig(t)
	c.kubeconfig = env.Kubeconfig
	c.identity = identityConfig{addr: freeAddr(t), dir: caDir, leaf: time.Hour}
	c.injector = injectorConfig{addr: freeAddr(t), config: writeTemp(t, "config.yaml", injectorConfigYAML), certDNS: []string{"weft-injector.weft.svc"}}
	return c, anchors
}

// startRun runs weft-control with c until the test ends (then it must stop cleanly within 20 s) and
// waits for its /ready. The context it returns ends when the test's cleanup stops weft-control.
func startRun(t *testing.T, c config) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("weft-control did not stop")
		}
	})
	waitReady(t, "http://"+strings.Replace(c.adminAddr, "0.0.0.0", "127.0.0.1", 1)+"/ready")
	return ctx
}

// TestLocalModeServesAndStops runs the daemon on the example file until /ready, then stops it.
func TestLocalModeServesAndStops(t *testing.T) {
	c := baseConfig(t)
	c.discoveryFile = "../../deploy/examples/echo.yaml"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + c.adminAddr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/ready never answered 200 (last error %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after shutdown", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("did not stop")
	}
}
