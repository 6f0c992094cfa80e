package netns

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain removes the helper binary's folder (WorldDir) when the tests are done.
func TestMain(m *testing.M) { os.Exit(Main(m)) }

// serveLines answers every connection on ln with the line reply(conn).
func serveLines(ln net.Listener, reply func(net.Conn) string) {
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

// readLine dials addr from pod p (as root) and returns the first line the server sent.
func readLine(t *testing.T, p *Pod, addr string) (string, error) {
	t.Helper()
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

func nsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func TestPodsTalkOverTheBridgeAndAreCleanedUp(t *testing.T) {
	var names []string
	t.Run("network", func(t *testing.T) {
		n := New(t)
		a, b := n.AddPod("a"), n.AddPod("b")
		names = []string{n.Bridge.NS, a.NS, b.NS}
		if a.IP == b.IP || a.NS == b.NS {
			t.Fatalf("pods share an address or a name: %+v %+v", a, b)
		}

		ln := b.Listen(t, "tcp", ":8080")
		serveLines(ln, func(c net.Conn) string { return "b saw " + c.RemoteAddr().(*net.TCPAddr).IP.String() })
		got, err := readLine(t, a, b.Addr(8080))
		if err != nil {
			t.Fatalf("a → b: %v", err)
		}
		if want := "b saw " + a.IP.String(); got != want {
			t.Errorf("a → b answered %q, want %q", got, want)
		}

		// The listener lives in b's namespace only: a's own loopback has nothing on 8080.
		if _, err := readLine(t, a, "127.0.0.1:8080"); err == nil {
			t.Error("a reached b's listener through its own loopback; namespaces are not separate")
		}

		// A child process as another user, inside the pod.
		line, err := a.DialAs(context.Background(), 65534, b.Addr(8080))
		if err != nil {
			t.Fatal(err)
		}
		if want := "b saw " + a.IP.String(); line != want {
			t.Errorf("DialAs answered %q, want %q", line, want)
		}

		// An application process as another user, and the bridge namespace as a client.
		a.StartServer(t, 65534, ":9000", "app in a")
		if got, err := readLine(t, n.Bridge, a.Addr(9000)); err != nil || got != "app in a" {
			t.Errorf("bridge → a:9000 = %q, %v; want the app's answer", got, err)
		}

		// Nothing outside: the bridge namespace has no route beyond the segment.
		out, err := exec.Command("ip", "-n", n.Bridge.NS, "route", "show").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "default") {
			t.Errorf("the bridge namespace has a default route; traffic could leave the test network:\n%s", out)
		}
		for _, name := range names {
			if !nsExists(name) {
				t.Errorf("namespace %s does not exist during the test", name)
			}
		}
	})
	for _, name := range names {
		if nsExists(name) {
			t.Errorf("namespace %s is still there after its test ended", name)
		}
	}
}

func TestNamesAreUniqueAcrossNetworks(t *testing.T) {
	n1, n2 := New(t), New(t)
	p1, p2 := n1.AddPod("x"), n2.AddPod("x")
	if p1.NS == p2.NS || n1.Bridge.NS == n2.Bridge.NS {
		t.Fatalf("two networks made the same names: %s %s", p1.NS, p2.NS)
	}
	// Same addresses on both, yet isolated: a listener in n1 is not reached from n2.
	if p1.IP != p2.IP {
		t.Fatalf("expected the same address plan in both networks, got %s and %s", p1.IP, p2.IP)
	}
	ln := p1.Listen(t, "tcp", ":7000")
	serveLines(ln, func(net.Conn) string { return "n1" })
	if got, err := readLine(t, n1.Bridge, p1.Addr(7000)); err != nil || got != "n1" {
		t.Fatalf("within n1: %q, %v", got, err)
	}
	if got, err := readLine(t, n2.Bridge, p2.Addr(7000)); err == nil {
		t.Errorf("n2 reached n1's listener (%q); networks are not isolated", got)
	}
}

func TestStalePid(t *testing.T) {
	for name, want := range map[string]bool{
		"wn999999-3-ab12-p1": true,
		"wn999999-3-ab12-br": true,
		"wnabc-3-ab12-p1":    false,
		"cni-1234":           false,
		"wn999999-3":         false,
	} {
		if _, ok := stalePid(name); ok != want {
			t.Errorf("stalePid(%q) = %v, want %v", name, ok, want)
		}
	}
	if _, ok := stalePid(fmt.Sprintf("wn%d-1-ab12-p1", os.Getpid())); ok {
		t.Error("stalePid claimed this process's own namespace")
	}
}

func TestStartedProcessesStopAtCleanup(t *testing.T) {
	var cmd *exec.Cmd
	t.Run("pod", func(t *testing.T) {
		p := New(t).AddPod("sleeper")
		cmd = exec.Command("sleep", "300")
		p.Start(t, cmd)
		// It runs inside the pod: its network namespace is the pod's.
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p.Path(), &st); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("net:[%d]", st.Ino); link != want {
			t.Errorf("process namespace %s, want the pod's %s", link, want)
		}
	})
	if cmd.ProcessState == nil {
		t.Error("the process still runs after its test ended")
	}
}
