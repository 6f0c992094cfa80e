package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/conformance/prereq"
	"github.com/weftmesh/weft/dataplane/iptables"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

// cniNode is one node's CNI setup for the tests: a "host" network namespace (where the runtime runs
// the plugins; ptp puts the host side of each Pod's veth there), a CNI bin folder with ptp, host-local
// and the weft-cni that `weft-cni install` copied there, and the conflist it patched.
type cniNode struct {
	host      *netns.Pod
	binDir    string
	netDir    string
	cacheDir  string
	conflist  *libcni.NetworkConfigList
	confPath  string
	weftBin   string
	cni       *libcni.CNIConfig
	apiserver string // the apiserver's URL as the plugin reaches it
	pods      int
}

// podNS is a network namespace with only loopback up, as a runtime makes for a Pod sandbox before
// calling CNI ADD.
func (n *cniNode) podNS(t *testing.T, name string) *netns.Pod {
	t.Helper()
	n.pods++
	// Named like conformance/netns's namespaces, so that its sweep removes what a killed run left.
	p := &netns.Pod{Name: name, NS: strings.TrimSuffix(n.host.NS, "-br") + fmt.Sprintf("-cni%d", n.pods)}
	if out, err := exec.Command("ip", "netns", "add", p.NS).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", p.NS, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.NS).Run() })
	// containerd and CRI-O bring the sandbox's loopback up themselves (not through the conflist).
	if out, err := exec.Command("ip", "-n", p.NS, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", p.NS, err, out)
	}
	return p
}

func (n *cniNode) runtimeConf(p *netns.Pod, namespace, pod string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: "sandbox-" + pod,
		NetNS:       p.Path(),
		IfName:      "eth0",
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", pod}, {"K8S_POD_INFRA_CONTAINER_ID", "sandbox-" + pod}},
	}
}

// inHost runs fn with the calling thread in the host namespace: the plugins libcni executes are
// born there.
func (n *cniNode) inHost(t *testing.T, fn func() error) error {
	t.Helper()
	return n.host.Do(fn)
}

// apiFixture is the apiserver side: where it is, a ServiceAccount token allowed to get Pods (as the
// chart's ClusterRole weft-cni allows), and a namespace to create Pods in.
type apiFixture struct {
	host, caFile, token, ns string
	createPod               func(t *testing.T, name string, annotations map[string]string, containers ...string)
}

// kubeFixture is a real kube-apiserver (kubeenv) with a namespace and the weft-cni ServiceAccount.
func kubeFixture(t *testing.T, prefix string) apiFixture {
	t.Helper()
	env := kubeenv.Get(t)
	ns := fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)
	env.CreateNamespace(t, ns, nil)
	ctx := context.Background()
	c := env.Client
	sa, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "weft-cni"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	role := "weft-cni-test-" + ns
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.RbacV1().ClusterRoleBindings().Delete(context.Background(), role, metav1.DeleteOptions{})
		_ = c.RbacV1().ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{})
	})
	exp := int64(3600)
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return apiFixture{host: env.Config.Host, caFile: env.CAFile, token: tr.Status.Token, ns: ns,
		createPod: func(t *testing.T, name string, annotations map[string]string, containers ...string) {
			t.Helper()
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}
			for _, c := range containers {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "example.com/" + c})
			}
			if _, err := env.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}}
}

// setUpNode prepares a node whose conflist chains ptp (with host-local) and weft-cni, installed by
// `weft-cni install --once` with the fixture's ServiceAccount token.
func setUpNode(t *testing.T, api apiFixture) *cniNode {
	t.Helper()
	nw := netns.New(t)
	n := &cniNode{host: nw.Bridge}
	n.weftBin = netns.GoBuild(t, "./cmd/weft-cni")
	ptp := netns.GoBuild(t, "github.com/containernetworking/plugins/plugins/main/ptp")
	hostLocal := netns.GoBuild(t, "github.com/containernetworking/plugins/plugins/ipam/host-local")

	dir := t.TempDir()
	n.binDir, n.netDir, n.cacheDir = filepath.Join(dir, "bin"), filepath.Join(dir, "net.d"), filepath.Join(dir, "cache")
	for _, d := range []string{n.binDir, n.netDir, n.cacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{ptp, hostLocal} {
		if out, err := exec.Command("cp", b, n.binDir).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", b, err, out)
		}
	}
	n.confPath = filepath.Join(n.netDir, "10-ptp.conflist")
	writeFile(t, n.confPath, fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "weft-test",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "mtu": 1500,
     "ipam": {"type": "host-local", "subnet": "10.45.0.0/24", "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}}
  ]
}
`, filepath.Join(dir, "ipam")))
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, api.token)

	// The apiserver listens on the test's loopback; the plugins run in the host namespace, where a
	// relay on the same address and another port stands for the node's route to the apiserver.
	n.apiserver = relay(t, n.host, api.host)
	out, err := exec.Command(n.weftBin, "install", "--once", "--cni-bin-dir", n.binDir, "--cni-net-dir", n.netDir,
		"--apiserver", n.apiserver, "--token-file", tokenFile, "--ca-file", api.caFile).CombinedOutput()
	if err != nil {
		t.Fatalf("weft-cni install --once: %v\n%s", err, out)
	}
	if n.conflist, err = libcni.NetworkConfFromFile(n.confPath); err != nil {
		t.Fatalf("libcni reading the patched conflist: %v", err)
	}
	if last := n.conflist.Plugins[len(n.conflist.Plugins)-1].Network.Type; len(n.conflist.Plugins) != 2 || last != PluginType {
		t.Fatalf("patched conflist has %d plugins, last %q:\n%s", len(n.conflist.Plugins), last, n.conflist.Bytes)
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.binDir}, n.cacheDir, nil)
	return n
}

// relay listens in ns on the address of the URL u (an https://IP:port on the test's loopback), on
// another port, and copies each connection to u's address from the test's own namespace. It returns
// the URL of the relay (the same IP, so the apiserver's certificate still matches).
func relay(t *testing.T, ns *netns.Pod, u string) string {
	t.Helper()
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	target := parsed.Host
	ln := ns.Listen(t, "tcp", net.JoinHostPort(parsed.Hostname(), "0"))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	parsed.Host = ln.Addr().String()
	return parsed.String()
}

// lineServer answers every connection on ln with one line made by reply.
func lineServer(ln net.Listener, reply func(net.Conn) string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintln(c, reply(c))
			c.Close()
		}
	}()
}

// dialLine connects from p (as root) and reads the first line.
func dialLine(p *netns.Pod, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func natTable(t *testing.T, p *netns.Pod) string {
	t.Helper()
	var out []string
	for _, mode := range []string{"nft", "legacy"} {
		b, err := p.Output(exec.Command("iptables-"+mode+"-save", "-t", "nat"))
		if err != nil {
			t.Fatalf("iptables-%s-save in %s: %v\n%s", mode, p.Name, err, b)
		}
		out = append(out, string(b))
	}
	return strings.Join(out, "")
}

// TestPluginRedirectsMeshedPods runs weft-cni as a runtime does, through libcni, chained after ptp,
// with the Pods in a real apiserver, and checks where real connections land.
func TestPluginRedirectsMeshedPods(t *testing.T) {
	prereq.Root(t)
	testPluginRedirectsMeshedPods(t, kubeFixture(t, "cni"))
}

func testPluginRedirectsMeshedPods(t *testing.T, api apiFixture) {
	prereq.Binary(t, "iptables-nft-save")
	prereq.Binary(t, "iptables-legacy-save")
	node := setUpNode(t, api)
	proxyBin := netns.GoBuild(t, "./cmd/weft-proxy")
	ns := api.ns

	api.createPod(t, "web", map[string]string{AnnotationSkipOutboundPorts: "5432", AnnotationSkipInboundPorts: "9090"}, "app", ProxyContainer)
	api.createPod(t, "plain", nil, "app")
	ctx := context.Background()

	// ADD for both Pods.
	web, plain := node.podNS(t, "web"), node.podNS(t, "plain")
	results := map[string]*current.Result{}
	for _, p := range []*netns.Pod{web, plain} {
		var res *current.Result
		err := node.inHost(t, func() error {
			r, err := node.cni.AddNetworkList(ctx, node.conflist, node.runtimeConf(p, ns, p.Name))
			if err != nil {
				return err
			}
			res, err = current.NewResultFromResult(r)
			return err
		})
		if err != nil {
			t.Fatalf("CNI ADD for Pod %s: %v", p.Name, err)
		}
		if len(res.IPs) != 1 || !netip.MustParsePrefix("10.45.0.0/24").Contains(netip.MustParseAddr(res.IPs[0].Address.IP.String())) {
			t.Fatalf("CNI ADD for Pod %s returned %+v; want ptp's address from 10.45.0.0/24", p.Name, res)
		}
		results[p.Name] = res
	}
	webIP := results["web"].IPs[0].Address.IP.String()
	gw := results["web"].IPs[0].Gateway.String() // the host side of the veth

	// The rules: in the meshed Pod, as weft-proxy init makes them with the annotations; none in the other.
	want, _ := iptables.Rules(iptables.Options{ProxyUID: iptables.DefaultProxyUID,
		SkipOutboundPorts: []iptables.PortRange{{From: 5432, To: 5432}}, SkipInboundPorts: []iptables.PortRange{{From: 9090, To: 9090}}})
	saved, err := web.Output(exec.Command("iptables-nft-save", "-t", "nat"))
	if err != nil {
		t.Fatalf("iptables-nft-save: %v\n%s", err, saved)
	}
	table, err := iptables.ParseSave(string(saved))
	if err != nil {
		t.Fatal(err)
	}
	if missing := iptables.Plan(table, want); missing != "" {
		t.Errorf("the meshed Pod's nat table lacks (as iptables-restore input):\n%s\nit holds:\n%s", missing, saved)
	}
	if tbl := natTable(t, plain); strings.Contains(tbl, "WEFT_") {
		t.Errorf("the Pod without a proxy got rules:\n%s", tbl)
	}

	// The network validator (weft-proxy validate, the first init container in CNI mode) passes in the
	// meshed Pod and fails, saying why, in the other.
	validate := func(p *netns.Pod) (string, error) {
		out, err := p.Output(exec.Command(proxyBin, "validate", "--connect-addr", gw+":20001", "--timeout", "10s"))
		return string(out), err
	}
	if out, err := validate(web); err != nil {
		t.Errorf("weft-proxy validate in the meshed Pod: %v\n%s", err, out)
	}
	if out, err := validate(plain); err == nil || !strings.Contains(out, "outbound interception does not work") {
		t.Errorf("weft-proxy validate in the Pod without rules = %v:\n%s\nwant a clear failure", err, out)
	}

	// Real traffic. The host side answers on 9999 and 5432; the proxy's listeners in the meshed Pod
	// report the original destination; the app listens on 8080 and 9090.
	for _, port := range []string{"9999", "5432"} {
		lineServer(node.host.Listen(t, "tcp", ":"+port), func(net.Conn) string { return "host " + port })
	}
	for port, label := range map[string]string{"15001": "outbound", "15006": "inbound"} {
		lineServer(web.Listen(t, "tcp", ":"+port), func(c net.Conn) string {
			dst, err := iptables.OriginalDst(c.(*net.TCPConn))
			if err != nil {
				return label + " error " + err.Error()
			}
			return label + " " + dst.String()
		})
	}
	for _, port := range []string{"8080", "9090"} {
		lineServer(web.Listen(t, "tcp", ":"+port), func(net.Conn) string { return "app " + port })
	}
	hostAddr := net.JoinHostPort(gw, "9999")
	check := func(name, got, want string, err error) {
		t.Helper()
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", name, got, err, want)
		}
	}
	got, err := dialLine(web, hostAddr)
	check("outbound from the app is redirected to 15001", got, "outbound "+hostAddr, err)
	got, err = web.DialAs(ctx, iptables.DefaultProxyUID, hostAddr)
	check("outbound from the proxy's uid 2102 is not redirected", got, "host 9999", err)
	got, err = dialLine(web, net.JoinHostPort(gw, "5432"))
	check("a skipped outbound port is not redirected", got, "host 5432", err)
	got, err = dialLine(node.host, net.JoinHostPort(webIP, "8080"))
	check("inbound to the app is redirected to 15006", got, "inbound "+net.JoinHostPort(webIP, "8080"), err)
	got, err = dialLine(node.host, net.JoinHostPort(webIP, "9090"))
	check("a skipped inbound port is not redirected", got, "app 9090", err)
	got, err = dialLine(plain, hostAddr)
	check("the Pod without a proxy is not redirected", got, "host 9999", err)

	// CHECK passes with the rules, and fails clearly when they are gone.
	webRT, plainRT := node.runtimeConf(web, ns, "web"), node.runtimeConf(plain, ns, "plain")
	for _, rt := range []*libcni.RuntimeConf{webRT, plainRT} {
		if err := node.inHost(t, func() error { return node.cni.CheckNetworkList(ctx, node.conflist, rt) }); err != nil {
			t.Errorf("CNI CHECK for %s: %v", rt.ContainerID, err)
		}
	}
	if out, err := web.Output(exec.Command("iptables-nft", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "WEFT_OUTPUT")); err != nil {
		t.Fatalf("deleting the OUTPUT jump: %v\n%s", err, out)
	}
	err = node.inHost(t, func() error { return node.cni.CheckNetworkList(ctx, node.conflist, webRT) })
	if err == nil || !strings.Contains(err.Error(), "lacks the interception") || !strings.Contains(err.Error(), "-A OUTPUT -p tcp -j WEFT_OUTPUT") {
		t.Errorf("CNI CHECK without the OUTPUT jump = %v; want it to say what is missing", err)
	} else {
		t.Logf("CHECK without the rules: %v", err)
	}
	// ADD again puts it back (the applier plans only what is missing).
	if out, err := execPlugin(t, node, "ADD", web.Path(), ns, "web", webConf(t, node, results["web"])); err != nil {
		t.Fatalf("ADD again: %v\n%s", err, out)
	}
	got, err = dialLine(web, hostAddr)
	check("redirected again after a second ADD", got, "outbound "+hostAddr, err)

	// DEL of weft-cni alone (the Pod's interface stays): the redirection is gone.
	if out, err := execPlugin(t, node, "DEL", web.Path(), ns, "web", webConf(t, node, nil)); err != nil {
		t.Fatalf("weft-cni DEL: %v\n%s", err, out)
	}
	if tbl := natTable(t, web); strings.Contains(tbl, "WEFT_") {
		t.Errorf("rules left after DEL:\n%s", tbl)
	}
	got, err = dialLine(web, hostAddr)
	check("not redirected after DEL", got, "host 9999", err)
	err = node.inHost(t, func() error { return node.cni.CheckNetworkList(ctx, node.conflist, webRT) })
	if err == nil || !strings.Contains(err.Error(), "lacks the interception") {
		t.Errorf("CNI CHECK after DEL = %v; want a failure", err)
	}

	// The runtime's DEL of the whole list (ptp removes the interface) and DEL of a namespace that is
	// already gone both succeed.
	for _, rt := range []*libcni.RuntimeConf{webRT, plainRT} {
		if err := node.inHost(t, func() error { return node.cni.DelNetworkList(ctx, node.conflist, rt) }); err != nil {
			t.Errorf("CNI DEL for %s: %v", rt.ContainerID, err)
		}
	}
	if out, err := execPlugin(t, node, "DEL", "/var/run/netns/no-such-namespace", ns, "web", webConf(t, node, nil)); err != nil {
		t.Errorf("DEL with a vanished namespace: %v\n%s", err, out)
	}
}

// webConf is weft-cni's configuration as libcni hands it over: its entry with the list's name and
// version, and the previous plugin's result.
func webConf(t *testing.T, node *cniNode, prev *current.Result) []byte {
	t.Helper()
	var conf map[string]any
	if err := json.Unmarshal(node.conflist.Plugins[len(node.conflist.Plugins)-1].Bytes, &conf); err != nil {
		t.Fatal(err)
	}
	conf["name"], conf["cniVersion"] = node.conflist.Name, node.conflist.CNIVersion
	if prev != nil {
		conf["prevResult"] = prev
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// execPlugin runs the installed weft-cni as a runtime would, from the host namespace: the CNI_*
// environment and the configuration on stdin. It returns standard output.
func execPlugin(t *testing.T, node *cniNode, command, netnsPath, ns, pod string, conf []byte) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(node.binDir, PluginType))
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=sandbox-" + pod, "CNI_NETNS=" + netnsPath, "CNI_IFNAME=eth0",
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + pod, "CNI_PATH=" + node.binDir, "PATH=" + os.Getenv("PATH")}
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := node.inHost(t, cmd.Run)
	if stderr.Len() > 0 {
		t.Logf("weft-cni %s stderr: %s", command, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), err
}

// TestPluginPassesThePreviousResult runs weft-cni alone with the CNI environment: for a Pod without a
// proxy it prints the previous plugin's result unchanged and touches nothing; a meshed Pod with a bad
// annotation, or an apiserver it cannot read, give a CNI error that says what to do.
func TestPluginPassesThePreviousResult(t *testing.T) {
	prereq.Root(t)
	testPluginPassesThePreviousResult(t, kubeFixture(t, "cni-pass"))
}

func testPluginPassesThePreviousResult(t *testing.T, api apiFixture) {
	prereq.Binary(t, "iptables-nft-save")
	prereq.Binary(t, "iptables-legacy-save")
	node := setUpNode(t, api)
	ns := api.ns
	api.createPod(t, "plain", nil, "app")
	api.createPod(t, "bad", map[string]string{AnnotationSkipOutboundPorts: "5432,mysql"}, "app", ProxyContainer)

	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"aa:bb:cc:dd:ee:ff","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.45.0.7/24","gateway":"10.45.0.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["10.96.0.10"]}}`
	conf := func(prevResult string) []byte {
		var c map[string]any
		_ = json.Unmarshal(webConf(t, node, nil), &c)
		var p any
		_ = json.Unmarshal([]byte(prevResult), &p)
		c["prevResult"] = p
		b, _ := json.Marshal(c)
		return b
	}
	p := node.podNS(t, "plain")
	for _, pod := range []string{"plain", "no-such-pod"} {
		out, err := execPlugin(t, node, "ADD", p.Path(), ns, pod, conf(prev))
		if err != nil {
			t.Fatalf("ADD for %s: %v\n%s", pod, err, out)
		}
		var got, want any
		_ = json.Unmarshal([]byte(out), &got)
		_ = json.Unmarshal([]byte(prev), &want)
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("ADD for %s did not pass the previous result on unchanged (-prevResult +output):\n%s", pod, d)
		}
	}
	if tbl := natTable(t, p); strings.Contains(tbl, "WEFT_") {
		t.Errorf("rules for a Pod without a proxy:\n%s", tbl)
	}
	// kube-system is excluded by default: no apiserver request at all (the Pod does not exist).
	if out, err := execPlugin(t, node, "ADD", p.Path(), "kube-system", "coredns-1", conf(prev)); err != nil {
		t.Errorf("ADD in kube-system: %v\n%s", err, out)
	}

	cniErr := func(out string) (code int, msg string) {
		var e struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("stdout is not a CNI error: %q", out)
		}
		return e.Code, e.Msg
	}
	out, err := execPlugin(t, node, "ADD", p.Path(), ns, "bad", conf(prev))
	if err == nil {
		t.Fatalf("ADD with a bad annotation succeeded: %s", out)
	}
	if code, msg := cniErr(out); code != 7 || !strings.Contains(msg, "config.weft.io/skip-outbound-ports") || !strings.Contains(msg, `"mysql"`) {
		t.Errorf("ADD with a bad annotation: code %d, %q; want code 7 naming the annotation and the value", code, msg)
	}
	// No prevResult: weft-cni is not chained.
	out, err = execPlugin(t, node, "ADD", p.Path(), ns, "plain", webConf(t, node, nil))
	if code, msg := cniErr(out); err == nil || code != 7 || !strings.Contains(msg, "chained plugin") {
		t.Errorf("ADD without prevResult = %v, code %d %q; want it to say weft-cni must be chained", err, code, msg)
	}
	// An apiserver that does not answer: a "try again later" error naming the Pod.
	kc := filepath.Join(node.netDir, KubeconfigFile)
	b := readFile(t, kc)
	writeFile(t, kc, strings.Replace(b, node.apiserver, "https://127.0.0.1:1", 1))
	out, err = execPlugin(t, node, "ADD", p.Path(), ns, "plain", conf(prev))
	if code, msg := cniErr(out); err == nil || code != 11 || !strings.Contains(msg, "reading Pod "+ns+"/plain") {
		t.Errorf("ADD with the apiserver away = %v, code %d %q; want code 11 naming the Pod", err, code, msg)
	}
	// A token the apiserver does not accept (say, the DaemonSet's Pod was deleted): the same, with the
	// apiserver's word.
	writeFile(t, kc, b)
	writeFile(t, filepath.Join(node.netDir, TokenFile), "not-a-token")
	out, err = execPlugin(t, node, "ADD", p.Path(), ns, "plain", conf(prev))
	if code, msg := cniErr(out); err == nil || code != 11 || !strings.Contains(msg, "Unauthorized") {
		t.Errorf("ADD with a bad token = %v, code %d %q; want code 11 saying Unauthorized", err, code, msg)
	}
}
