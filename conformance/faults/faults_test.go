// Package faults runs the faults of security.md §6 against the real weft-control with traffic or
// xDS clients flowing, and reports what a user compares: failed requests, time to recover, memory.
package faults

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/prebuilt"
)

// controlBinary builds weft-control once per test binary, or reuses bin/weft-control when it is newer
// than every source (right after `make build`).
var controlBinary = sync.OnceValues(func() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(root, "bin", "weft-control")
	if prebuilt.Fresh(root, bin) {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "weft-faults-bin-")
	if err != nil {
		return "", err
	}
	buildDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/weftmesh/weft/cmd/weft-control")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building weft-control: %v\n%s", err, out)
	}
	return filepath.Join(dir, "weft-control"), nil
})

// buildDir is where controlBinary built, removed by TestMain.
var buildDir string

func TestMain(m *testing.M) {
	code := kubeenv.Main(m)
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// freeAddr is a loopback address with a port free at the time of the call.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// control is a weft-control process in local mode.
type control struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startControl runs weft-control on a discovery file and waits for /ready.
func startControl(t *testing.T, file, xdsAddr, adminAddr string) *control {
	t.Helper()
	bin, err := controlBinary()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "weft-control.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--discovery-file", file, "--xds-addr", xdsAddr, "--admin-addr", adminAddr, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	c := &control{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); f.Close(); close(c.done) }()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("weft-control log:\n%s", b)
		}
	})
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("http://" + adminAddr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		select {
		case <-c.done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("weft-control exited before ready:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("weft-control not ready after 30 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops weft-control with SIGKILL (a crash, not a drain) and waits for it.
func (c *control) kill() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Kill()
	<-c.done
}

// peakRSS is the process's peak resident set (VmHWM), in MB.
func (c *control) peakRSS() float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
