package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/cmd/weft/internal/demo"
	"github.com/weftmesh/weft/conformance/prereq"
)

// TestTapAndTopOnTheDemo runs weft demo's mesh (local mode: weft-control --discovery-file, a weft-proxy
// per pod, mTLS between them, traffic) and taps it as a user would: filtered tap lines within seconds,
// -o json, and weft top in tmux showing the busiest paths until q.
func TestTapAndTopOnTheDemo(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/", "github.com/weftmesh/weft/cmd/weft-control", "github.com/weftmesh/weft/cmd/weft-proxy", "github.com/weftmesh/weft/cmd/weft")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binaries: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	block := byte(100 + rand.IntN(150))
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := demo.Run(ctx, demo.Options{Block: block, RPS: 40, FailRate: 0.2, Interval: time.Hour, Plain: true,
			ControlBin: filepath.Join(bin, "weft-control"), ProxyBin: filepath.Join(bin, "weft-proxy"),
			Started: func([]int, string) { close(started) }})
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the demo: %v", err)
		}
	})
	select {
	case <-started:
	case err := <-done:
		done <- err
		t.Fatalf("the demo stopped before its mesh was ready: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("the demo's mesh was not ready within 90s")
	}
	control := demo.NewLayout(block).XDSAddr()

	// tapLines runs weft tap with a limit (so it ends) and a deadline, and returns its req lines.
	tapLines := func(t *testing.T, limit int, args ...string) []string {
		t.Helper()
		args = append([]string{"tap"}, append(args, "-n", "demo", "--control-addr", control, "--limit", strconv.Itoa(limit))...)
		type result struct {
			out string
			err error
		}
		res := make(chan result, 1)
		go func() { out, err := runWeft(t, args...); res <- result{out, err} }()
		select {
		case r := <-res:
			if r.err != nil {
				t.Fatalf("weft %s: %v\n%s", strings.Join(args, " "), r.err, r.out)
			}
			var reqs []string
			for _, l := range strings.Split(r.out, "\n") {
				if strings.HasPrefix(l, "req ") || strings.HasPrefix(l, "{") {
					reqs = append(reqs, l)
				}
			}
			if len(reqs) != limit {
				t.Fatalf("weft %s: %d requests, want %d:\n%s", strings.Join(args, " "), len(reqs), limit, r.out)
			}
			if !strings.HasPrefix(reqs[0], "{") && strings.Count(r.out, "\nrsp ")+strings.Count(r.out, "\nend ") != 2*limit {
				t.Errorf("weft %s: want a rsp and an end line per request:\n%s", strings.Join(args, " "), r.out)
			}
			return reqs
		case <-time.After(30 * time.Second):
			t.Fatalf("weft %s: no %d requests within 30s", strings.Join(args, " "), limit)
			return nil
		}
	}

	t.Run("path and method", func(t *testing.T) {
		for _, l := range tapLines(t, 4, "deploy/books", "--path", "/books/", "--method", "GET") {
			if !strings.Contains(l, " proxy=in ") || !strings.Contains(l, ":method=GET :authority=books.demo.svc.cluster.local:8080 :path=/books/") || !strings.Contains(l, " tls=true") {
				t.Errorf("line %q: want books' inbound GET /books/... over mTLS", l)
			}
		}
	})
	t.Run("method", func(t *testing.T) {
		for _, l := range tapLines(t, 3, "pod/web-0", "--method", "POST") {
			if !strings.Contains(l, " proxy=out ") || !strings.Contains(l, ":method=POST :authority=authors.demo.svc.cluster.local:9090 :path=/grpc.testing.TestService/UnaryCall") {
				t.Errorf("line %q: want web's outbound gRPC call to authors", l)
			}
		}
	})
	t.Run("json", func(t *testing.T) {
		for _, l := range tapLines(t, 2, "ns/demo", "--authority", "web.demo.svc.cluster.local:8080", "-o", "json") {
			var ev struct {
				Proxy    string `json:"proxy"`
				ClientID string `json:"client_id"`
				Request  struct {
					Authority string `json:"authority"`
				} `json:"request"`
				Response struct {
					Status int `json:"status"`
				} `json:"response"`
			}
			if err := json.Unmarshal([]byte(l), &ev); err != nil {
				t.Fatalf("-o json line %q: %v", l, err)
			}
			if ev.Request.Authority != "web.demo.svc.cluster.local:8080" || ev.Response.Status == 0 || ev.ClientID != "spiffe://cluster.local/ns/demo/sa/traffic" {
				t.Errorf("-o json line %q: want a request to web from traffic's identity, with its status", l)
			}
		}
	})
	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"tap", "svc/books", "-n", "demo"}, `target "svc/books": unknown kind "svc" (tap takes deploy, pod or ns)`},
			{[]string{"tap", "pod/nope", "-n", "demo"}, "tap pod/nope: pod nope not found in namespace demo"},
			{[]string{"tap", "deploy/books", "-n", "demo", "--path", "books"}, `--path "books": want a path prefix starting with /`},
			{[]string{"tap", "deploy/books", "-n", "demo", "-o", "yaml"}, `-o "yaml": want wide or json`},
			{[]string{"tap", "deploy/books", "-n", "demo", "--max-rps", "0"}, "--max-rps 0: want a positive number"},
			{[]string{"top", "deploy/books", "-n", "demo", "--interval", "0s"}, "--interval 0s: want a positive duration"},
			{[]string{"top", "deploy/books", "-n", "demo", "--control-addr", "127.0.0.1:1"}, "cannot reach weft-control's Tap"},
		} {
			args := append(tc.args, "--control-addr", control)
			if tc.args[len(tc.args)-2] == "--control-addr" {
				args = tc.args
			}
			out, err := runWeft(t, args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("weft %s: %v (output %q), want one line containing %q", strings.Join(args, " "), err, out, tc.want)
			}
		}
	})
	t.Run("top in tmux", func(t *testing.T) {
		tmux := prereq.Binary(t, "tmux")
		sock := fmt.Sprintf("weft-top-test-%d", rand.IntN(1e9))
		run := func(args ...string) (string, error) {
			out, err := exec.Command(tmux, append([]string{"-L", sock}, args...)...).CombinedOutput()
			return string(out), err
		}
		t.Cleanup(func() { _, _ = run("kill-server") })
		cmd := fmt.Sprintf("%s top deploy/web -n demo --control-addr %s --interval 200ms", filepath.Join(bin, "weft"), control)
		if out, err := run("new-session", "-d", "-s", "top", "-x", "200", "-y", "40", cmd); err != nil {
			t.Fatalf("tmux new-session: %v\n%s", err, out)
		}
		// web's busiest paths: traffic's GET / (inbound) and the gRPC call to authors (outbound), each
		// counted more than once.
		var screen string
		deadline := time.Now().Add(30 * time.Second)
		for {
			screen, _ = run("capture-pane", "-p", "-t", "top")
			if topCount(screen, "traffic.demo", "GET", "/") > 1 && topCount(screen, "web-0", "POST", "/grpc.testing.TestService/UnaryCall") > 1 &&
				strings.Contains(screen, "SOURCE") && strings.Contains(screen, "SUCCESS RATE") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("weft top did not show web's paths with counts within 30s; the screen:\n%s", screen)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if out, err := run("send-keys", "-t", "top", "q"); err != nil {
			t.Fatalf("tmux send-keys: %v\n%s", err, out)
		}
		deadline = time.Now().Add(10 * time.Second)
		for {
			if _, err := run("has-session", "-t", "top"); err != nil {
				break // q ended weft top, and with it the session
			}
			if time.Now().After(deadline) {
				s, _ := run("capture-pane", "-p", "-t", "top")
				t.Fatalf("weft top still runs 10s after q; the screen:\n%s", s)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// topCount is the COUNT of the row of weft top's screen with this source, method and path (0: none).
func topCount(screen, src, method, path string) int {
	for _, l := range strings.Split(screen, "\n") {
		f := strings.Fields(l)
		if len(f) >= 9 && f[0] == src && f[2] == method && f[3] == path {
			n, _ := strconv.Atoi(f[4])
			return n
		}
	}
	return 0
}
