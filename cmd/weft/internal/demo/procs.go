package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FindBinary looks for name next to the running executable, then on PATH.
func FindBinary(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			p := filepath.Join(filepath.Dir(exe), name)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is neither next to this weft binary nor on PATH: run `make build` (it puts weft, weft-control and weft-proxy in bin/) and start bin/weft demo", name)
}

// child is one supervised process: its own process group, output in a log file.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // valid after done
}

// supervisor starts children and stops them all, leaving none behind.
type supervisor struct {
	logDir string
	mu     sync.Mutex
	kids   []*child
	exited chan *child // a child that exited on its own
}

func newSupervisor(logDir string) *supervisor {
	return &supervisor{logDir: logDir, exited: make(chan *child, 16)}
}

func (s *supervisor) start(name, bin string, args ...string) (*child, error) {
	logPath := filepath.Join(s.logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so that stopping it reaches anything it starts; and killed if we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		f.Close()
		close(c.done)
		select {
		case s.exited <- c:
		default:
		}
	}()
	s.mu.Lock()
	s.kids = append(s.kids, c)
	s.mu.Unlock()
	return c, nil
}

// pids returns the pids of the children started so far.
func (s *supervisor) pids() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, c := range s.kids {
		out = append(out, c.cmd.Process.Pid)
	}
	return out
}

// stop sends SIGTERM to every child's process group, waits up to grace, then SIGKILLs what is left,
// and returns once every child has been reaped.
func (s *supervisor) stop(grace time.Duration) {
	s.mu.Lock()
	kids := append([]*child(nil), s.kids...)
	s.mu.Unlock()
	// Proxies first, the control plane last (it was started first).
	for i := len(kids) - 1; i >= 0; i-- {
		_ = syscall.Kill(-kids[i].cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	for _, c := range kids {
		select {
		case <-c.done:
		case <-deadline.C:
			for _, k := range kids {
				_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
			}
			<-c.done
		}
	}
	for _, c := range kids {
		<-c.done
		// The group may hold grandchildren; none of ours start any, but make sure.
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// tail returns the last lines of a child's log, for error messages.
func (c *child) tail(n int) string {
	b, _ := os.ReadFile(c.log)
	lines := strings.Split(strings.TrimRight(string(bytes.TrimSpace(b)), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exitError explains a child that stopped on its own.
func (c *child) exitError() error {
	return fmt.Errorf("%s exited (%v); the end of its log (%s):\n%s", c.name, c.err, c.log, c.tail(15))
}

// waitFor polls check every interval until it succeeds, ctx ends, or a child exits.
func (s *supervisor) waitFor(ctx context.Context, what string, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case c := <-s.exited:
			return c.exitError()
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("waiting for %s: %w", what, last)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}
