package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/deploy/charts"
)

// nodeDirs makes a node's CNI folders (bin, net.d) and a ServiceAccount token and CA, as the
// DaemonSet's Pod sees them.
type nodeDirs struct {
	root, bin, netd, token, ca string
}

func newNodeDirs(t *testing.T) nodeDirs {
	t.Helper()
	root := t.TempDir()
	d := nodeDirs{root: root, bin: filepath.Join(root, "host/opt/cni/bin"), netd: filepath.Join(root, "host/etc/cni/net.d"),
		token: filepath.Join(root, "sa/token"), ca: filepath.Join(root, "sa/ca.crt")}
	for _, dir := range []string{d.bin, d.netd, filepath.Dir(d.token)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, d.token, "token-1")
	writeFile(t, d.ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	return d
}

func (d nodeDirs) args(extra ...string) []string {
	return append([]string{"install", "--cni-bin-dir", d.bin, "--cni-net-dir", d.netd, "--host-root", filepath.Join(d.root, "host"),
		"--apiserver", "https://10.96.0.1:443", "--token-file", d.token, "--ca-file", d.ca}, extra...)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// eventually polls cond until it holds (20s at most).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a wait for an event
	}
}

func chainsWeft(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	_, plugins, _, err := parseConfig(filepath.Base(path), b)
	if err != nil || len(plugins) == 0 {
		return false
	}
	return isOurs(plugins[len(plugins)-1])
}

func TestInstallWatchesAndUninstalls(t *testing.T) {
	bin := netns.GoBuild(t, "./cmd/weft-cni")
	d := newNodeDirs(t)
	kindnet := readFile(t, "testdata/conflist/kindnet.conflist.in")
	kindnet = strings.Replace(kindnet, `	{"type": "weft-cni", "kubeconfig": "/old/path", "iptablesMode": "nft"}`+"\n", "", 1)
	kindnet = strings.Replace(kindnet, `{"type": "portmap", "capabilities": {"portMappings": true}},`, `{"type": "portmap", "capabilities": {"portMappings": true}}`, 1)
	primary := filepath.Join(d.netd, "10-kindnet.conflist")
	writeFile(t, primary, kindnet)
	writeFile(t, filepath.Join(d.netd, "99-loopback.conf"), `{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`)

	writeFile(t, filepath.Join(d.netd, ".weft-cni-1234"), "half a file from a killed run")
	cmd := exec.Command(bin, d.args("--resync", "1s", "--exclude-namespaces", "kube-system, weft")...)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		t.Logf("weft-cni install:\n%s", logs.String())
	})

	eventually(t, "the primary conflist chains weft-cni", func() bool { return chainsWeft(primary) })
	var entry Entry
	_, plugins, _, _ := parseConfig(primary, []byte(readFile(t, primary)))
	if err := json.Unmarshal(plugins[len(plugins)-1], &entry); err != nil {
		t.Fatal(err)
	}
	want := Entry{Type: PluginType, Kubeconfig: "/etc/cni/net.d/weft-cni.kubeconfig", IptablesMode: "auto", ExcludeNamespaces: []string{"kube-system", "weft"}}
	if d := cmp.Diff(want, entry); d != "" {
		t.Errorf("the chained entry (-want +got):\n%s", d)
	}
	if chainsWeft(filepath.Join(d.netd, "99-loopback.conf")) || strings.Contains(readFile(t, filepath.Join(d.netd, "99-loopback.conf")), PluginType) {
		t.Error("install touched a configuration that is not the primary one")
	}
	// The binary, byte for byte, executable.
	if same, err := sameFile(bin, filepath.Join(d.bin, PluginType)); err != nil || !same {
		t.Errorf("the installed binary is not a copy of weft-cni: %v", err)
	}
	if st, err := os.Stat(filepath.Join(d.bin, PluginType)); err != nil || st.Mode().Perm()&0o111 == 0 {
		t.Errorf("installed binary: %v, %v; want an executable", st, err)
	}
	// The kubeconfig: the apiserver, the CA inline, the token by its path on the node.
	kc, err := clientcmd.LoadFromFile(filepath.Join(d.netd, KubeconfigFile))
	if err != nil {
		t.Fatal(err)
	}
	cur := kc.Contexts[kc.CurrentContext]
	if cur == nil || kc.Clusters[cur.Cluster].Server != "https://10.96.0.1:443" || kc.AuthInfos[cur.AuthInfo].TokenFile != "/etc/cni/net.d/"+TokenFile ||
		!bytes.Equal(kc.Clusters[cur.Cluster].CertificateAuthorityData, []byte(readFile(t, d.ca))) {
		t.Errorf("kubeconfig = %+v", kc)
	}
	if got := readFile(t, filepath.Join(d.netd, TokenFile)); got != "token-1" {
		t.Errorf("token copy = %q", got)
	}
	if st, _ := os.Stat(filepath.Join(d.netd, TokenFile)); st == nil || st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode = %v, want 0600", st)
	}

	// The network plugin rewrites its configuration: weft-cni chains itself again.
	writeFile(t, primary, kindnet)
	eventually(t, "weft-cni re-chains itself after the conflist was rewritten", func() bool { return chainsWeft(primary) })
	// The kubelet rotates the ServiceAccount token: the copy follows.
	writeFile(t, d.token, "token-2")
	eventually(t, "the token copy follows the rotated token", func() bool {
		b, _ := os.ReadFile(filepath.Join(d.netd, TokenFile))
		return string(b) == "token-2"
	})

	// SIGTERM: a clean uninstall.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("weft-cni install exited with %v after SIGTERM", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("weft-cni install did not exit after SIGTERM")
	}
	if got := pluginTypes(t, primary, []byte(readFile(t, primary))); !cmp.Equal(got, []string{"ptp", "portmap"}) {
		t.Errorf("plugins after uninstall = %q, want ptp, portmap", got)
	}
	for _, f := range []string{filepath.Join(d.bin, PluginType), filepath.Join(d.netd, KubeconfigFile), filepath.Join(d.netd, TokenFile)} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s is still there after uninstall (%v)", f, err)
		}
	}
	left, _ := filepath.Glob(filepath.Join(d.netd, ".weft-cni-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

func TestInstallOnceConvertsAConf(t *testing.T) {
	bin := netns.GoBuild(t, "./cmd/weft-cni")
	d := newNodeDirs(t)
	writeFile(t, filepath.Join(d.netd, "10-flannel.conf"), readFile(t, "testdata/conflist/flannel.conf.in"))
	out, err := exec.Command(bin, d.args("--once")...).CombinedOutput()
	if err != nil {
		t.Fatalf("weft-cni install --once: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "chained in 10-flannel.conflist") {
		t.Errorf("install said %q", out)
	}
	if _, err := os.Stat(filepath.Join(d.netd, "10-flannel.conf")); !os.IsNotExist(err) {
		t.Errorf("the .conf is still there beside its conflist (%v): the runtime would pick it first", err)
	}
	if !chainsWeft(filepath.Join(d.netd, "10-flannel.conflist")) {
		t.Errorf("10-flannel.conflist does not chain weft-cni:\n%s", readFile(t, filepath.Join(d.netd, "10-flannel.conflist")))
	}
	// Again: nothing changes.
	before := readFile(t, filepath.Join(d.netd, "10-flannel.conflist"))
	if out, err := exec.Command(bin, d.args("--once")...).CombinedOutput(); err != nil {
		t.Fatalf("second install: %v\n%s", err, out)
	}
	if after := readFile(t, filepath.Join(d.netd, "10-flannel.conflist")); after != before {
		t.Errorf("a second install changed the conflist:\n%s", cmp.Diff(before, after))
	}
}

func TestInstallBadInput(t *testing.T) {
	bin := netns.GoBuild(t, "./cmd/weft-cni")
	d := newNodeDirs(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{d.args("--once", "--iptables-mode", "ipvs"), "--iptables-mode"},
		{append(d.args("--once"), "--cni-net-dir", filepath.Join(d.root, "nope")), "--cni-net-dir"},
		{d.args("--once"), "no CNI network configuration yet"},
		{d.args("--once", "--token-file", filepath.Join(d.root, "nope")), "--token-file"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || !strings.Contains(string(out), tc.want) || len(lines) != 1 {
			t.Errorf("weft-cni %q = %v:\n%s\nwant one line containing %q", tc.args, err, out, tc.want)
		}
	}
}

// TestChartArgsAreInstallFlags renders the chart's DaemonSet in CNI mode and checks that weft-cni
// install accepts its arguments and writes the node's own paths into the configuration.
func TestChartArgsAreInstallFlags(t *testing.T) {
	ch, err := charts.Load("v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	ms, err := charts.Render(ch, "weft", map[string]any{"cni": map[string]any{"enabled": true},
		"identity": map[string]any{"trustAnchorsPEM": "A\n", "issuerCertPEM": "C\n", "issuerKeyPEM": "K\n"}})
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	for _, m := range ms {
		if m.Kind == "DaemonSet" && m.Name == "weft-cni" {
			ds = &appsv1.DaemonSet{}
			if err := yaml.Unmarshal([]byte(m.Content), ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ds == nil {
		t.Fatal("the chart renders no DaemonSet weft-cni with cni.enabled")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "install" {
		t.Fatalf("DaemonSet args = %q, want install first", c.Args)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	f, err := parseInstallFlags(c.Args[1:], io.Discard)
	if err != nil {
		t.Fatalf("weft-cni install rejects the chart's args %q: %v", c.Args, err)
	}
	in := &installer{f: f}
	if got := in.hostPath(filepath.Join(f.netDir, KubeconfigFile)); got != "/etc/cni/net.d/"+KubeconfigFile {
		t.Errorf("kubeconfig path written into the conflist = %q, want the node's /etc/cni/net.d/%s", got, KubeconfigFile)
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounted[m.MountPath] = true
	}
	if !mounted[f.binDir] || !mounted[f.netDir] {
		t.Errorf("the DaemonSet mounts %v, not both %s and %s", c.VolumeMounts, f.binDir, f.netDir)
	}
	if f.apiserver != "https://10.96.0.1:443" {
		t.Errorf("apiserver = %q", f.apiserver)
	}
	if a := ds.Spec.Template.Spec.AutomountServiceAccountToken; a != nil && !*a {
		t.Error("the DaemonSet does not mount its ServiceAccount token, which the plugin's kubeconfig needs")
	}
}
