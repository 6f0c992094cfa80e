package check

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (rewrite with go test -update)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

func fixed(r Result) func(context.Context) Result {
	return func(context.Context) Result { return r }
}

// render runs checks and returns the text output (printed as the runner goes) and the JSON.
func render(t *testing.T, r Runner, checks []Check) (Report, []byte, []byte) {
	t.Helper()
	var text, js bytes.Buffer
	p := &TextPrinter{W: &text}
	r.Progress = p.Print
	rep := r.Run(context.Background(), checks)
	p.Summary(rep)
	if err := WriteJSON(&js, rep); err != nil {
		t.Fatal(err)
	}
	return rep, text.Bytes(), js.Bytes()
}

func TestOutputGolden(t *testing.T) {
	for _, tc := range []struct {
		name   string
		checks []Check
		ok     bool
	}{
		{"pass", []Check{
			{ID: "k8s-api", Section: "kubernetes-api", Description: "can query the Kubernetes API", Run: fixed(Passed())},
			{ID: "k8s-version", Section: "kubernetes-version", Description: "is running Kubernetes 1.29 or later", Run: fixed(Passed())},
		}, true},
		{"warn", []Check{
			{ID: "k8s-api", Section: "kubernetes-api", Description: "can query the Kubernetes API", Run: fixed(Passed())},
			{ID: "issuer-60d", Section: "weft-identity", Description: "the issuer is valid for at least 60 days", Run: fixed(Warned("the issuer expires in 20 days (2027-01-01T00:00:00Z)", "rotate it: weft identity bootstrap --rotate-issuer"))},
		}, true},
		{"mixed", []Check{
			{ID: "k8s-api", Section: "kubernetes-api", Description: "can query the Kubernetes API", Run: fixed(Passed())},
			{ID: "cp-ns", Section: "weft-control-plane", Description: "the control plane namespace exists", Gate: true, Run: fixed(Passed())},
			{ID: "cp-pods", Section: "weft-control-plane", Description: "the control plane Pods are Running and Ready", Run: fixed(Failed("weft/weft-control-1: not Ready\nweft/weft-control-2: Pending", "kubectl -n weft describe pod -l app.kubernetes.io/name=weft-control"))},
			{ID: "webhook-config", Section: "weft-webhook", Description: "the webhook configuration exists", Gate: true, Run: fixed(Failed("MutatingWebhookConfiguration weft-injector does not exist", ""))},
			{ID: "webhook-service", Section: "weft-webhook", Description: "the injector Service has ready endpoints", Run: fixed(Passed())},
			{ID: "identity-secret", Section: "weft-identity", Description: "the identity Secret holds the CA", Fatal: true, Run: fixed(Failed("Secret weft/weft-identity does not exist", "weft install | kubectl apply -f -"))},
			{ID: "xds-ready", Section: "weft-xds", Description: "weft-control serves xDS", Run: fixed(Passed())},
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, text, js := render(t, Runner{}, tc.checks)
			if rep.Success() != tc.ok {
				t.Errorf("Success() = %v, want %v", rep.Success(), tc.ok)
			}
			golden(t, tc.name+".txt", text)
			golden(t, tc.name+".json", js)
		})
	}
}

func TestGatesAndFatalSkip(t *testing.T) {
	ran := map[string]bool{}
	c := func(id, section string, r Result, gate, fatal bool) Check {
		return Check{ID: id, Section: section, Description: id, Gate: gate, Fatal: fatal, Run: func(context.Context) Result {
			ran[id] = true
			return r
		}}
	}
	rep := Runner{}.Run(context.Background(), []Check{
		c("a1", "a", Failed("x", ""), true, false),
		c("a2", "a", Passed(), false, false), // skipped: gate a1 failed
		c("b1", "b", Warned("w", ""), true, false),
		c("b2", "b", Passed(), false, false), // runs: a warning is not a failure
		c("c1", "c", Failed("y", ""), false, false),
		c("c2", "c", Failed("z", ""), false, true),
		c("d1", "d", Passed(), false, false), // skipped: c2 is fatal
	})
	var got []string
	for _, o := range rep.Outcomes {
		got = append(got, o.ID+"="+o.Status.String())
	}
	want := []string{"a1=error", "a2=skipped", "b1=warning", "b2=success", "c1=error", "c2=error", "d1=skipped"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if ran["a2"] || ran["d1"] {
		t.Errorf("skipped checks ran: %v", ran)
	}
}

func TestWaitRetriesUntilPass(t *testing.T) {
	calls := 0
	flaky := Check{ID: "flaky", Section: "s", Description: "becomes ready", Run: func(context.Context) Result {
		calls++
		if calls < 3 {
			return Failed("not yet", "")
		}
		return Passed()
	}}
	rep := Runner{Wait: time.Minute, Interval: time.Millisecond}.Run(context.Background(), []Check{flaky})
	if o := rep.Outcomes[0]; o.Status != Pass || o.Attempts != 3 {
		t.Errorf("with --wait: %s after %d attempts, want success after 3", o.Status, o.Attempts)
	}

	// The text output says once that it waits, then gives the outcome.
	calls = 0
	var text bytes.Buffer
	p := &TextPrinter{W: &text}
	rep = Runner{Wait: time.Minute, Interval: time.Millisecond, Progress: p.Print, Waiting: p.Waiting}.Run(context.Background(), []Check{flaky})
	p.Summary(rep)
	want := "s\n-\n… becomes ready: not yet (retrying for up to 1m0s)\n√ becomes ready\n\nStatus check results are √\n"
	if diff := cmp.Diff(want, text.String()); diff != "" {
		t.Errorf("--wait text (-want +got):\n%s", diff)
	}

	calls = 0
	rep = Runner{}.Run(context.Background(), []Check{flaky})
	if o := rep.Outcomes[0]; o.Status != Fail || o.Attempts != 1 {
		t.Errorf("without --wait: %s after %d attempts, want error after 1", o.Status, o.Attempts)
	}
}

func TestWaitGivesUpAtTheDeadline(t *testing.T) {
	// A fake clock that moves a second per reading: the deadline (10 s) passes after a few attempts.
	now := time.Unix(0, 0)
	clock := func() time.Time { now = now.Add(time.Second); return now }
	never := Check{ID: "never", Section: "s", Description: "never ready", Run: fixed(Failed("no", ""))}
	warn := Check{ID: "warn", Section: "s", Description: "a warning", Run: fixed(Warned("w", ""))}
	rep := Runner{Wait: 10 * time.Second, Interval: time.Millisecond, Now: clock}.Run(context.Background(), []Check{never, warn})
	if o := rep.Outcomes[0]; o.Status != Fail || o.Attempts < 2 || o.Attempts > 10 {
		t.Errorf("never-ready check: %s after %d attempts, want error after 2..10", o.Status, o.Attempts)
	}
	if o := rep.Outcomes[1]; o.Attempts != 1 {
		t.Errorf("a warning was retried %d times; warnings are not retried", o.Attempts)
	}
}

func TestCancelStopsWaiting(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	c := Check{ID: "c", Section: "s", Description: "d", Run: func(context.Context) Result {
		calls++
		if calls == 2 {
			cancel()
		}
		return Failed("no", "")
	}}
	rep := Runner{Wait: time.Hour, Interval: time.Millisecond}.Run(ctx, []Check{c, c})
	if rep.Outcomes[0].Attempts != 2 || rep.Outcomes[1].Status != Fail || calls != 2 {
		t.Errorf("after cancel: attempts %d, second %s, calls %d", rep.Outcomes[0].Attempts, rep.Outcomes[1].Status, calls)
	}
}
