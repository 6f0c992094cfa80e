package netns

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// helperEnv, when set in the environment of a test binary that imports this package, turns it into
// a small helper program before any test runs (see init). Helpers let a test act as another user.
const helperEnv = "WEFT_NETNS_HELPER"

func init() {
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "dial":
		os.Exit(helperDial(os.Getenv("WEFT_NETNS_ADDR")))
	case "serve":
		os.Exit(helperServe(os.Getenv("WEFT_NETNS_ADDR"), os.Getenv("WEFT_NETNS_REPLY")))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%s\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// helperDial connects to addr, prints the first line the server sends, and exits 0; or prints the
// error to stderr and exits 1.
func helperDial(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading:", err)
		return 1
	}
	fmt.Print(line)
	return 0
}

// helperServe listens on addr and answers every connection with reply and a newline, until killed.
func helperServe(addr, reply string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_, _ = fmt.Fprintln(c, reply)
		c.Close()
	}
}

var (
	selfOnce sync.Once
	selfPath string
	selfErr  error
)

// worldDir is this process's WorldDir.
func worldDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("weft-netns-%d", os.Getpid()))
}

// WorldDir is a directory (created once per process, 0755) for executables that users other than
// root must run: the helper binary and GoBuild's binaries, shared by the tests of the process (a
// test that puts files of its own there removes them with t.Cleanup). Main or RemoveWorldDir removes
// it when the tests are done; the next run's sweep removes it if the process died first.
func WorldDir() (string, error) {
	dir := worldDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, 0o755)
}

// Main runs the tests of a package that uses this package, then removes WorldDir: its TestMain is
// os.Exit(netns.Main(m)). kubeenv.Main does the same for the packages that run a cluster.
func Main(m *testing.M) int {
	code := m.Run()
	RemoveWorldDir()
	return code
}

// RemoveWorldDir removes WorldDir with the binaries in it (a helper copy of the test binary, each
// GoBuild binary: tens of MB per package), and forgets them.
func RemoveWorldDir() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if err := os.RemoveAll(worldDir()); err != nil {
		fmt.Fprintln(os.Stderr, "netns:", err)
	}
	clear(buildCache)
	selfOnce, selfPath, selfErr = sync.Once{}, "", nil
}

// helperBinary is a copy of the test binary that any user can run (go test's own build directory
// is private to root).
func helperBinary() (string, error) {
	selfOnce.Do(func() {
		dir, err := WorldDir()
		if err != nil {
			selfErr = err
			return
		}
		self, err := os.Executable()
		if err != nil {
			selfErr = err
			return
		}
		selfPath = filepath.Join(dir, "helper")
		selfErr = copyExecutable(self, selfPath)
	})
	return selfPath, selfErr
}

// copyExecutable copies src to dst through a `cp` child process. Writing the copy from this process
// would hold a writable descriptor on it that a concurrent fork (another test starting a process)
// inherits until its exec, and executing the copy meanwhile fails with ETXTBSY ("text file busy").
func copyExecutable(src, dst string) error {
	tmp := dst + ".tmp"
	if out, err := exec.Command("cp", src, tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("copying %s: %w: %s", src, err, out)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// DialAs connects from the pod to addr in a child process running as uid (gid = uid), and returns the
// first line the server sent. The error carries the child's message (for example "connection refused").
func (p *Pod) DialAs(ctx context.Context, uid uint32, addr string) (string, error) {
	bin, err := helperBinary()
	if err != nil {
		return "", fmt.Errorf("netns: preparing the helper binary: %w", err)
	}
	cmd := AsUser(exec.CommandContext(ctx, bin), uid, uid)
	cmd.Env = []string{helperEnv + "=dial", "WEFT_NETNS_ADDR=" + addr}
	out, err := p.Output(cmd)
	if err != nil {
		return "", fmt.Errorf("dialing %s from pod %s as uid %d: %w: %s", addr, p.Name, uid, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// StartServer starts, in the pod, a process running as uid that listens on addr (":8080") and
// answers each connection with reply and a newline; it returns once the server accepts connections
// and stops it at the end of the test. It stands for an application container.
func (p *Pod) StartServer(t testing.TB, uid uint32, addr, reply string) {
	t.Helper()
	bin, err := helperBinary()
	if err != nil {
		t.Fatalf("netns: preparing the helper binary: %v", err)
	}
	cmd := AsUser(exec.Command(bin), uid, uid)
	cmd.Env = []string{helperEnv + "=serve", "WEFT_NETNS_ADDR=" + addr, "WEFT_NETNS_REPLY=" + reply}
	p.Start(t, cmd)
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("netns: StartServer address %q: %v", addr, err)
	}
	p.WaitListening(t, "127.0.0.1:"+port)
}

// WaitListening polls until something in the pod accepts TCP connections on addr (30s at most).
func (p *Pod) WaitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := p.Dial(ctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("netns: nothing listens on %s in pod %s after 30s: %v", addr, p.Name, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a wait for an event
	}
}

// logWriter sends a process's output to the test log, line by line.
type logWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.t.Log(w.prefix + string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}
