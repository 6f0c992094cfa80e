package netns

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/conformance/prereq"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// The tests below run the real `weft-proxy init` and `weft-proxy validate` inside pods and check where
// connections land. Every listener answers with one line naming itself; the proxy's listeners on
// 15001 and 15006 add the original destination they read with SO_ORIGINAL_DST.

const proxyUID = 2102

// proxyListener stands in for the proxy's outbound or inbound listener.
func proxyListener(t *testing.T, p *Pod, port, label string) {
	ln := p.Listen(t, "tcp", ":"+port)
	serveLines(ln, func(c net.Conn) string {
		dst, err := iptables.OriginalDst(c.(*net.TCPConn))
		if err != nil {
			return label + " error " + err.Error()
		}
		return label + " " + dst.String()
	})
}

// appListener stands in for an application (or anything that is not the proxy).
func appListener(t *testing.T, p *Pod, addr, label string) {
	serveLines(p.Listen(t, "tcp", addr), func(net.Conn) string { return label })
}

// natSave is the pod's nat table as the backend's iptables-save prints it, without comments and
// counters, so two saves compare equal when the rules are the same.
func natSave(t *testing.T, p *Pod, mode string) string {
	t.Helper()
	out, err := p.Output(exec.Command("iptables-"+mode+"-save", "-t", "nat"))
	if err != nil {
		t.Fatalf("iptables-%s-save in pod %s: %v\n%s", mode, p.Name, err, out)
	}
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	var keep []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		keep = append(keep, counters.ReplaceAllString(line, "[0:0]"))
	}
	return strings.Join(keep, "\n")
}

func runInit(t *testing.T, bin string, p *Pod, args ...string) string {
	t.Helper()
	out, err := p.Output(exec.Command(bin, append([]string{"init"}, args...)...))
	if err != nil {
		t.Fatalf("weft-proxy init %v in pod %s: %v\n%s", args, p.Name, err, out)
	}
	return string(out)
}

func TestInitInterceptsInNamespaces(t *testing.T) {
	bin := GoBuild(t, "./cmd/weft-proxy")
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			needBinaries(t, "iptables-"+mode+"-save", "iptables-"+mode+"-restore")
			n := New(t)
			pod, peer, skipped := n.AddPod("app"), n.AddPod("peer"), n.AddPod("skipped-subnet")

			args := []string{"--iptables-mode", mode, "--skip-inbound-ports", "9090",
				"--skip-outbound-ports", "5432", "--skip-subnets", skipped.IP.String() + "/32"}
			if out := runInit(t, bin, pod, args...); !strings.Contains(out, "iptables programmed ("+mode+" backend)") {
				t.Errorf("first init said %q; want it to report programming with %s", out, mode)
			}
			before := natSave(t, pod, mode)
			for _, want := range []string{"-A OUTPUT -p tcp -j WEFT_OUTPUT", "-A PREROUTING -p tcp -j WEFT_INBOUND", "REDIRECT --to-ports 15001", "REDIRECT --to-ports 15006"} {
				if !strings.Contains(before, want) {
					t.Errorf("iptables-%s-save lacks %q:\n%s", mode, want, before)
				}
			}
			other := map[string]string{"nft": "legacy", "legacy": "nft"}[mode]
			if s := natSave(t, pod, other); strings.Contains(s, "WEFT_") {
				t.Errorf("--iptables-mode %s also wrote the %s tables:\n%s", mode, other, s)
			}

			// A second run changes nothing.
			if out := runInit(t, bin, pod, args...); !strings.Contains(out, "nothing changed") {
				t.Errorf("second init said %q; want it to change nothing", out)
			}
			if d := cmp.Diff(before, natSave(t, pod, mode)); d != "" {
				t.Errorf("the second init changed the nat table (-before +after):\n%s", d)
			}

			// What runs in the pod: the proxy's two listeners, the app, a skipped inbound port, the admin server.
			proxyListener(t, pod, "15001", "outbound")
			proxyListener(t, pod, "15006", "inbound")
			appListener(t, pod, ":8080", "app 8080")
			appListener(t, pod, ":9090", "app 9090")
			appListener(t, pod, ":15000", "admin")
			appListener(t, pod, "127.0.0.1:7777", "loopback 7777")
			// Elsewhere on the network.
			appListener(t, peer, ":8080", "peer 8080")
			appListener(t, peer, ":5432", "peer 5432")
			appListener(t, skipped, ":8080", "skipped-subnet 8080")

			clusterIP := "10.96.0.10:80" // no such host: only the redirect can answer
			for _, tc := range []struct {
				name     string
				from     *Pod
				uid      int // -1: the test process (root)
				addr     string
				wantLine string
			}{
				{"outbound to a peer is captured with its original destination", pod, -1, peer.Addr(8080), "outbound " + peer.Addr(8080)},
				{"outbound to a service IP is captured", pod, -1, clusterIP, "outbound " + clusterIP},
				{"outbound of another user is captured", pod, 65534, peer.Addr(8080), "outbound " + peer.Addr(8080)},
				{"the proxy's uid bypasses", pod, proxyUID, peer.Addr(8080), "peer 8080"},
				{"a skipped outbound port bypasses", pod, -1, peer.Addr(5432), "peer 5432"},
				{"a skipped subnet bypasses", pod, -1, skipped.Addr(8080), "skipped-subnet 8080"},
				{"loopback bypasses", pod, -1, "127.0.0.1:7777", "loopback 7777"},
				{"the pod's own IP goes over loopback and bypasses", pod, -1, pod.Addr(8080), "app 8080"},
				{"inbound to an app port is captured with its original destination", peer, -1, pod.Addr(8080), "inbound " + pod.Addr(8080)},
				{"inbound to a skipped port bypasses", peer, -1, pod.Addr(9090), "app 9090"},
				{"inbound to the admin port bypasses", peer, -1, pod.Addr(15000), "admin"},
				{"a pod without init is not intercepted", peer, -1, skipped.Addr(8080), "skipped-subnet 8080"},
			} {
				var got string
				var err error
				if tc.uid >= 0 {
					got, err = tc.from.DialAs(context.Background(), uint32(tc.uid), tc.addr)
				} else {
					got, err = readLine(t, tc.from, tc.addr)
				}
				if err != nil {
					t.Errorf("%s: %s → %s: %v", tc.name, tc.from.Name, tc.addr, err)
					continue
				}
				if got != tc.wantLine {
					t.Errorf("%s: %s → %s answered %q, want %q", tc.name, tc.from.Name, tc.addr, got, tc.wantLine)
				}
			}
		})
	}
}

func TestInitChangedOptionsReplaceTheRules(t *testing.T) {
	bin := GoBuild(t, "./cmd/weft-proxy")
	n := New(t)
	pod, peer := n.AddPod("app"), n.AddPod("peer")
	runInit(t, bin, pod, "--iptables-mode", "nft")
	runInit(t, bin, pod, "--iptables-mode", "nft", "--skip-outbound-ports", "8080")
	s := natSave(t, pod, "nft")
	if c := strings.Count(s, "-A OUTPUT -p tcp -j WEFT_OUTPUT"); c != 1 {
		t.Errorf("OUTPUT jumps to WEFT_OUTPUT %d times after a rerun with new options, want 1:\n%s", c, s)
	}
	proxyListener(t, pod, "15001", "outbound")
	appListener(t, peer, ":8080", "peer 8080")
	if got, err := readLine(t, pod, peer.Addr(8080)); err != nil || got != "peer 8080" {
		t.Errorf("after adding --skip-outbound-ports 8080, pod → peer:8080 = %q, %v; want it to bypass", got, err)
	}
}

func TestInitAutoModePicksTheBackendInUse(t *testing.T) {
	bin := GoBuild(t, "./cmd/weft-proxy")
	needBinaries(t, "iptables-legacy", "iptables-legacy-save", "iptables-nft-save")
	n := New(t)

	fresh := n.AddPod("fresh")
	if out := runInit(t, bin, fresh); !strings.Contains(out, "(nft backend)") {
		t.Errorf("auto mode in an empty namespace said %q; want nft", out)
	}

	// A namespace whose existing rules are legacy ones (as on a node whose kube-proxy uses legacy).
	old := n.AddPod("legacy-node")
	if out, err := old.Output(exec.Command("iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "1", "-j", "ACCEPT")); err != nil {
		t.Fatalf("seeding a legacy rule: %v\n%s", err, out)
	}
	if out := runInit(t, bin, old); !strings.Contains(out, "(legacy backend)") {
		t.Errorf("auto mode with legacy rules present said %q; want legacy", out)
	}
	if s := natSave(t, old, "legacy"); !strings.Contains(s, "WEFT_OUTPUT") {
		t.Errorf("legacy nat table lacks Weft's chains:\n%s", s)
	}
	if s := natSave(t, old, "nft"); strings.Contains(s, "WEFT_") {
		t.Errorf("auto mode wrote the nft tables as well:\n%s", s)
	}
}

func TestInitWarnsWhenBothBackendsHoldTheRules(t *testing.T) {
	bin := GoBuild(t, "./cmd/weft-proxy")
	needBinaries(t, "iptables-legacy-save", "iptables-nft-save")
	pod := New(t).AddPod("app")
	if out := runInit(t, bin, pod, "--iptables-mode", "nft"); strings.Contains(out, "also holds") {
		t.Errorf("first init warned: %s", out)
	}
	if out := runInit(t, bin, pod, "--iptables-mode", "legacy"); !strings.Contains(out, "nft nat table also holds Weft's chains") {
		t.Errorf("init with legacy after nft did not warn about the nft chains:\n%s", out)
	}
}

func TestValidate(t *testing.T) {
	bin := GoBuild(t, "./cmd/weft-proxy")
	n := New(t)
	outside := netip.AddrPortFrom(n.Bridge.IP, 20001).String() // nothing listens there

	validate := func(p *Pod, uid int, extra ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"validate", "--connect-addr", outside, "--timeout", "20s"}, extra...)...)
		if uid >= 0 {
			AsUser(cmd, uint32(uid), uint32(uid))
		}
		out, err := p.Output(cmd)
		return string(out), err
	}

	t.Run("succeeds with the rules", func(t *testing.T) {
		pod := n.AddPod("with-init")
		runInit(t, bin, pod, "--iptables-mode", "nft")
		out, err := validate(pod, -1)
		if err != nil {
			t.Fatalf("validate failed in a pod with rules: %v\n%s", err, out)
		}
		if !strings.Contains(out, "outbound interception works") {
			t.Errorf("validate said %q", out)
		}
		// As a non-root, non-proxy user too (how an init container may run it).
		if out, err := validate(pod, 65534, "--outbound-port", "15001"); err != nil {
			// Binding 15001 needs no privilege (> 1024), so this must work.
			t.Errorf("validate as uid 65534: %v\n%s", err, out)
		}
	})
	t.Run("fails clearly without the rules", func(t *testing.T) {
		pod := n.AddPod("no-init")
		out, err := validate(pod, -1)
		if err == nil {
			t.Fatalf("validate succeeded in a pod without rules:\n%s", out)
		}
		t.Logf("validate without rules: %s", out)
		for _, want := range []string{"outbound interception does not work", outside, "connection refused", "weft-proxy init"} {
			if !strings.Contains(out, want) {
				t.Errorf("validate's message lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("fails clearly when a skip covers the address", func(t *testing.T) {
		pod := n.AddPod("skipping")
		runInit(t, bin, pod, "--iptables-mode", "nft", "--skip-subnets", n.Bridge.IP.String())
		if out, err := validate(pod, -1); err == nil || !strings.Contains(out, "does not work") {
			t.Errorf("validate = %v, %q; want a failure since the subnet is skipped", err, out)
		}
	})
	t.Run("refuses to run as the proxy uid", func(t *testing.T) {
		pod := n.AddPod("as-proxy")
		runInit(t, bin, pod, "--iptables-mode", "nft")
		out, err := validate(pod, proxyUID)
		if err == nil || !strings.Contains(out, "the proxy's uid") {
			t.Errorf("validate as uid %d = %v, %q; want a refusal naming the proxy's uid", proxyUID, err, out)
		}
	})
	t.Run("says so when the outbound port is taken", func(t *testing.T) {
		pod := n.AddPod("busy")
		runInit(t, bin, pod, "--iptables-mode", "nft")
		appListener(t, pod, ":15001", "a running proxy")
		out, err := validate(pod, -1)
		if err == nil || !strings.Contains(out, "in use") {
			t.Errorf("validate = %v, %q; want it to say the port is in use", err, out)
		}
	})
}

// needBinaries stops the test unless the named commands are installed.
func needBinaries(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		prereq.Binary(t, name)
	}
}

// TestTheBridgeHostsAnInProcessServerForPods shows the pattern for a control plane that runs in the
// test process: its listener is opened in the bridge namespace, where every pod reaches it; from a pod
// with interception only the proxy's uid reaches it directly.
func TestTheBridgeHostsAnInProcessServerForPods(t *testing.T) {
	bin := GoBuild(t, "./cmd/weft-proxy")
	n := New(t)
	meshed, plain := n.AddPod("meshed"), n.AddPod("plain")
	runInit(t, bin, meshed)
	proxyListener(t, meshed, "15001", "outbound")
	appListener(t, n.Bridge, n.Bridge.Addr(15010), "control plane")

	if got, err := meshed.DialAs(context.Background(), proxyUID, n.Bridge.Addr(15010)); err != nil || got != "control plane" {
		t.Errorf("the proxy's uid → control plane = %q, %v; want a direct connection", got, err)
	}
	if got, err := readLine(t, meshed, n.Bridge.Addr(15010)); err != nil || got != "outbound "+n.Bridge.Addr(15010) {
		t.Errorf("another uid → control plane = %q, %v; want it captured", got, err)
	}

	// An HTTP server in the test process, called from a pod by an HTTP client whose dialer is the pod's.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, "hello ", host)
	})}
	ln := n.Bridge.Listen(t, "tcp", ":15014") // listening before the client dials: no race
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	client := &http.Client{Transport: &http.Transport{DialContext: plain.Dial}}
	resp, err := client.Get("http://" + n.Bridge.Addr(15014) + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "hello " + plain.IP.String(); string(body) != want {
		t.Errorf("HTTP from pod %s answered %q, want %q", plain.Name, body, want)
	}
}
