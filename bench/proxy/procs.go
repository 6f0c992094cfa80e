package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// proc is one proxy process of the bench (weft-proxy or haproxy), measured through /proc.
type proc struct {
	name  string
	cmd   *exec.Cmd
	log   string // its stderr+stdout file
	admin string // weft-proxy's admin address
	done  chan struct{}
}

func startProc(name, logDir string, args ...string) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = cleanEnv()
	// The proxies die with the bench, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	return p, nil
}

// proxyEnv lists the environment variables weft-proxy reads as flag defaults: the bench passes every
// setting as a flag, so the caller's environment must not change them.
var proxyEnv = []string{"XDS_ADDR", "XDS_TLS", "POD_NAME", "POD_NAMESPACE", "POD_IP", "SERVICE_ACCOUNT",
	"IDENTITY_ADDR", "TRUST_DOMAIN", "WEFT_PROXY_LOG_LEVEL"}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(proxyEnv, name) {
			env = append(env, kv)
		}
	}
	return env
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	b = bytes.TrimSpace(b)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}

// stop sends SIGTERM and waits (SIGKILL after a few seconds).
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// mem is VmRSS and its anonymous part (RssAnon: heap, stacks; the rest is mostly the binary's pages)
// from /proc/<pid>/status, in kB.
func (p *proc) mem() (rss, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		return 0, 0, err
	}
	field := func(name string) (int64, error) {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, name+":"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					return strconv.ParseInt(f[0], 10, 64)
				}
			}
		}
		return 0, fmt.Errorf("no %s in /proc/%d/status", name, p.pid())
	}
	rss, err1 := field("VmRSS")
	anon, err2 := field("RssAnon")
	return rss, anon, errors.Join(err1, err2)
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds is utime+stime of all threads, from /proc/<pid>/stat.
func (p *proc) cpuSeconds() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12).
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(ut+st) / clockTicks, nil
}

// waitReady polls until check passes, the process dies, or the deadline passes.
func (p *proc) waitReady(ctx context.Context, what string, check func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for !check() {
		if p.exited() {
			return fmt.Errorf("%s exited before %s: %s", p.name, what, p.tail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: timed out waiting for %s: %s", p.name, what, p.tail())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func httpOK(url string) func() bool {
	c := &http.Client{Timeout: time.Second}
	return func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

func dialable(addrs ...string) func() bool {
	return func() bool {
		for _, a := range addrs {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	}
}

// freeAddr picks a free port on a loopback address (the listener is closed again; the bench owns
// these addresses for its run).
func freeAddr(ip string) (string, error) {
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		return "", fmt.Errorf("no free port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// mtlsEvidence reads from the sidecars' /metrics how many 200 responses went over mTLS with the
// expected peer identities: inbound at the server, outbound at the client.
func mtlsEvidence(client, server *proc) (in, out float64, err error) {
	in, err1 := metricSum(server.admin, "response_total", map[string]string{"direction": "inbound", "tls": "true", "client_id": clientSPIFF, "status_code": "200"})
	out, err2 := metricSum(client.admin, "response_total", map[string]string{"direction": "outbound", "tls": "true", "server_id": serverSPIFF, "status_code": "200"})
	return in, out, errors.Join(err1, err2)
}

// metricSum adds the samples of a counter on a weft-proxy's /metrics whose labels include want.
// idleScrapes is how many times the bench reads each idle weft-proxy's /metrics before sampling its RSS again.
const idleScrapes = 40

// scrape reads admin's /metrics n times, as Prometheus would (the body read to its end).
func scrape(admin string, n int) error {
	c := &http.Client{Timeout: 5 * time.Second}
	for range n {
		resp, err := c.Get("http://" + admin + "/metrics")
		if err != nil {
			return fmt.Errorf("scrape: %w", err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("scrape: %d %v", resp.StatusCode, err)
		}
	}
	return nil
}

func metricSum(admin, name string, want map[string]string) (float64, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("metrics of %s: %w", admin, err)
	}
	var sum float64
next:
	for _, m := range mfs[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		sum += m.GetCounter().GetValue()
	}
	return sum, nil
}
