// Package netns is a test harness that makes "pods" out of Linux network namespaces, for the tests of
// transparent interception and the end-to-end mesh. It needs root (prereq.Root: a skip normally, a
// failure under WEFT_REQUIRE_ALL=1) and iproute2.
//
// A Network is one isolated layer-2 segment: a bridge living in a network namespace of its own, with
// no link to the host, so addresses inside it (10.44.0.0/24) clash with nothing and no packet leaves
// it. Each Pod is a namespace with loopback up and an eth0 veth into the bridge, its own address, and
// a default route through the bridge namespace (whose own address is the gateway, .1). Everything is
// named uniquely per process ("wnN<pid>-…") and deleted in t.Cleanup, even when the test fails;
// New also deletes what a killed earlier run left behind.
//
//	n := netns.New(t)
//	a, b := n.AddPod("client"), n.AddPod("server")
//	ln := b.Listen(t, "tcp", ":8080")                       // a socket in b's namespace
//	c, err := a.Dial(ctx, "tcp", b.Addr(8080))               // from a's namespace
//	out, err := a.Output(exec.Command(bin, "init"))          // a child process inside a
//	a.Start(t, netns.AsUser(exec.Command(bin), 2102, 2102))  // a daemon as another user, killed at cleanup
//	line, err := a.DialAs(ctx, 2102, b.Addr(8080))           // connect as uid 2102, read one line
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/conformance/prereq"
)

// namePrefix starts every namespace this package creates; the pid after it lets New sweep what a
// killed run left behind without touching a live run's namespaces.
const namePrefix = "wn"

var (
	counter atomic.Uint64
	sweep   sync.Once
)

// Network is an isolated segment joining pods through a bridge in its own namespace.
type Network struct {
	t      testing.TB
	id     string
	Prefix netip.Prefix // 10.44.0.0/24
	Bridge *Pod         // the bridge's namespace: address .1, the pods' gateway; no interception, a handy "outside" host
	mu     sync.Mutex
	pods   int
}

// New creates a network; it is torn down when the test ends. It stops the test unless it runs as root
// with iproute2 installed.
func New(t testing.TB) *Network {
	t.Helper()
	prereq.Root(t)
	prereq.Binary(t, "ip")
	sweep.Do(sweepStale)

	var rnd [2]byte
	_, _ = rand.Read(rnd[:])
	n := &Network{
		t:      t,
		id:     fmt.Sprintf("%s%d-%d-%s", namePrefix, os.Getpid(), counter.Add(1), hex.EncodeToString(rnd[:])),
		Prefix: netip.MustParsePrefix("10.44.0.0/24"),
	}
	br := &Pod{Name: "bridge", NS: n.id + "-br", IP: netip.MustParseAddr("10.44.0.1"), network: n}
	n.addNS(br.NS)
	n.ip(br.NS, "link", "set", "lo", "up")
	n.ip(br.NS, "link", "add", "br0", "type", "bridge")
	n.ip(br.NS, "addr", "add", br.IP.String()+"/24", "dev", "br0")
	n.ip(br.NS, "link", "set", "br0", "up")
	n.Bridge = br
	return n
}

// AddPod creates a pod namespace joined to the bridge, with the next free address. name is for
// messages and need not be unique.
func (n *Network) AddPod(name string) *Pod {
	n.t.Helper()
	n.mu.Lock()
	n.pods++
	i := n.pods
	n.mu.Unlock()
	if i > 250 {
		n.t.Fatalf("netns: a network holds at most 250 pods")
	}
	p := &Pod{
		Name:    name,
		NS:      fmt.Sprintf("%s-p%d", n.id, i),
		IP:      netip.AddrFrom4([4]byte{10, 44, 0, byte(i + 1)}),
		network: n,
	}
	peer := "veth" + strconv.Itoa(i) // in the bridge namespace, so only unique there
	n.addNS(p.NS)
	n.ip(p.NS, "link", "set", "lo", "up")
	n.ip(p.NS, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", n.Bridge.NS)
	n.ip(n.Bridge.NS, "link", "set", peer, "master", "br0", "up")
	n.ip(p.NS, "addr", "add", p.IP.String()+"/24", "dev", "eth0")
	n.ip(p.NS, "link", "set", "eth0", "up")
	n.ip(p.NS, "route", "add", "default", "via", n.Bridge.IP.String())
	return p
}

func (n *Network) addNS(name string) {
	n.t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		n.t.Fatalf("netns: ip netns add %s: %v: %s", name, err, out)
	}
	n.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			n.t.Errorf("netns: ip netns del %s: %v: %s", name, err, out)
		}
	})
}

func (n *Network) ip(ns string, args ...string) {
	n.t.Helper()
	args = append([]string{"-n", ns}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("netns: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// sweepStale deletes namespaces (and helper directories) of earlier runs whose process is gone.
func sweepStale() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if pid, ok := stalePid(e.Name()); ok && !alive(pid) {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "weft-netns-*"))
	for _, d := range dirs {
		if pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "weft-netns-")); err == nil && pid != os.Getpid() && !alive(pid) {
			_ = os.RemoveAll(d)
		}
	}
}

// stalePid reads the pid out of a namespace name this package made ("wn<pid>-<n>-<hex>-…").
func stalePid(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, namePrefix)
	if !ok {
		return 0, false
	}
	parts := strings.Split(rest, "-")
	if len(parts) < 4 {
		return 0, false
	}
	pid, err := strconv.Atoi(parts[0])
	if err != nil || pid == os.Getpid() {
		return 0, false
	}
	if _, err := strconv.Atoi(parts[1]); err != nil {
		return 0, false
	}
	if len(parts[2]) != 4 {
		return 0, false
	}
	return pid, true
}

func alive(pid int) bool {
	return syscall.Kill(pid, 0) != syscall.ESRCH
}

// Pod is a network namespace on a Network.
type Pod struct {
	Name    string     // as given to AddPod
	NS      string     // the namespace's name (ip netns), unique
	IP      netip.Addr // its address on the network
	network *Network
}

// Path is the namespace's file, for setns or nsenter --net=.
func (p *Pod) Path() string { return filepath.Join("/run/netns", p.NS) }

// Addr is "ip:port" of the pod.
func (p *Pod) Addr(port uint16) string { return netip.AddrPortFrom(p.IP, port).String() }

// Do runs fn on an OS thread that is inside the pod's namespace. Sockets fn creates stay in the
// namespace after Do returns; processes fn starts (exec.Cmd.Start) are born in it.
func (p *Pod) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: opening the current namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(p.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: opening %s: %w", p.Path(), err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: entering %s: %w", p.NS, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime ends it with this goroutine rather than reuse it.
			errc <- fmt.Errorf("netns: leaving %s: %w", p.NS, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener in the pod; it is closed at the end of the test.
func (p *Pod) Listen(t testing.TB, network, address string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := p.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		t.Fatalf("netns: listening on %s in pod %s: %v", address, p.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Dial connects from the pod as the test process's user (root).
func (p *Pod) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Output runs cmd inside the pod to completion and returns its combined output (it sets cmd.Stdout
// and cmd.Stderr).
func (p *Pod) Output(cmd *exec.Cmd) ([]byte, error) {
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := p.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("netns: starting %s in pod %s: %w", cmd.Path, p.Name, err)
	}
	err := cmd.Wait()
	return buf.Bytes(), err
}

// Start starts cmd inside the pod and stops it (SIGTERM, then SIGKILL after 5s) at the end of the
// test. Its output goes to the test log unless cmd.Stdout/Stderr are set.
func (p *Pod) Start(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if cmd.Stdout == nil && cmd.Stderr == nil {
		w := &logWriter{t: t, prefix: p.Name + "/" + filepath.Base(cmd.Path) + ": "}
		cmd.Stdout, cmd.Stderr = w, w
	}
	if err := p.Do(cmd.Start); err != nil {
		t.Fatalf("netns: starting %s in pod %s: %v", cmd.Path, p.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// AsUser makes cmd run as uid and gid (for example the proxy's 2102) and returns it.
func AsUser(cmd *exec.Cmd, uid, gid uint32) *exec.Cmd {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid} // and no supplementary groups
	return cmd
}
