// Package check is `weft check`: a list of checks, each a named question about a cluster with an
// answer (√ passed, ‼ a warning, × failed) and, when it is not √, what was found and what to do. The
// runner knows nothing of Kubernetes: it runs checks in order, retries failing ones while --wait
// lasts, and skips what a failed gate makes meaningless; the printers turn the outcomes into
// Linkerd-style text or JSON. The checks themselves (kube.go, controlplane.go, dataplane.go) take a
// client-go kubernetes.Interface and small interfaces for the rest, so that tests can give them a fake.
package check

import (
	"context"
	"time"
)

// Status is a check's answer.
type Status int

const (
	// Pass is √.
	Pass Status = iota
	// Warn is ‼: something to fix, but Weft works.
	Warn
	// Fail is ×: Weft does not work (or will not install); weft check exits 1.
	Fail
	// Skip is a check not run because a check it depends on failed.
	Skip
)

func (s Status) String() string {
	switch s {
	case Pass:
		return "success"
	case Warn:
		return "warning"
	case Fail:
		return "error"
	}
	return "skipped"
}

// Symbol is how the text output shows s.
func (s Status) Symbol() string {
	switch s {
	case Pass:
		return "√"
	case Warn:
		return "‼"
	case Fail:
		return "×"
	}
	return "-"
}

// Result is what a check found.
type Result struct {
	Status Status
	// Message says what is wrong (empty on success, or a detail worth showing).
	Message string
	// Hint says what to do about it.
	Hint string
}

// Passed is a √ result.
func Passed() Result { return Result{Status: Pass} }

// Failed is a × result: what is wrong and what to do.
func Failed(message, hint string) Result { return Result{Status: Fail, Message: message, Hint: hint} }

// Warned is a ‼ result: what is wrong and what to do.
func Warned(message, hint string) Result { return Result{Status: Warn, Message: message, Hint: hint} }

// Check is one question.
type Check struct {
	// ID names the check in JSON and in its documentation anchor (https://weft.io/checks#<id>).
	ID string
	// Section groups checks in the output ("kubernetes-api", "weft-webhook", ...).
	Section string
	// Description is the line shown: what is true when the check passes.
	Description string
	// Run answers the question. It must honour ctx.
	Run func(ctx context.Context) Result
	// Fatal: if this check fails, no check after it runs (nothing can be learned without it).
	Fatal bool
	// Gate: if this check fails, the rest of its section is skipped (they depend on it).
	Gate bool
}

// Outcome is a check with its final result.
type Outcome struct {
	Check
	Result
	// Attempts is how many times it ran (more than one with --wait).
	Attempts int
}

// Report is the outcome of every check, in order.
type Report struct {
	Outcomes []Outcome
}

// Success is true when no check failed (warnings allowed).
func (r Report) Success() bool {
	for _, o := range r.Outcomes {
		if o.Status == Fail {
			return false
		}
	}
	return true
}

// Count is how many outcomes have status s.
func (r Report) Count(s Status) int {
	n := 0
	for _, o := range r.Outcomes {
		if o.Status == s {
			n++
		}
	}
	return n
}

// Runner runs checks.
type Runner struct {
	// Wait is how long after the start failing checks are retried (--wait); zero: each runs once.
	Wait time.Duration
	// Interval is the pause between attempts of a failing check (default 2 s).
	Interval time.Duration
	// Timeout bounds each attempt of a check (default 30 s).
	Timeout time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Progress, if set, is called with each outcome as it is known (to print as we go).
	Progress func(Outcome)
	// Waiting, if set, is called when a failing check is about to be retried, with its failure so far
	// and how long it may still be retried.
	Waiting func(o Outcome, left time.Duration)
}

// Run runs the checks in order and returns every outcome. A failed Fatal check skips every check
// after it; a failed Gate check skips the rest of its section. A failing check is run again every
// Interval until it passes or Wait has passed since Run started; ctx ending stops the retries.
func (r Runner) Run(ctx context.Context, checks []Check) Report {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	interval := r.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	deadline := now().Add(r.Wait)
	var rep Report
	stopAll, stopSection := false, ""
	for _, c := range checks {
		o := Outcome{Check: c}
		switch {
		case stopAll:
			o.Result = Result{Status: Skip, Message: "not run: an earlier check failed"}
		case stopSection == c.Section:
			o.Result = Result{Status: Skip, Message: "not run: an earlier check of " + c.Section + " failed"}
		default:
			stopSection = ""
			for {
				o.Attempts++
				o.Result = runOne(ctx, c, timeout)
				if o.Status != Fail || ctx.Err() != nil || !now().Add(interval).Before(deadline) {
					break
				}
				if r.Waiting != nil {
					r.Waiting(o, deadline.Sub(now()))
				}
				t := time.NewTimer(interval)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
				t.Stop()
			}
			if o.Status == Fail {
				if c.Fatal {
					stopAll = true
				}
				if c.Gate {
					stopSection = c.Section
				}
			}
		}
		rep.Outcomes = append(rep.Outcomes, o)
		if r.Progress != nil {
			r.Progress(o)
		}
	}
	return rep
}

func runOne(ctx context.Context, c Check, timeout time.Duration) Result {
	if err := ctx.Err(); err != nil {
		return Failed("not run: "+err.Error(), "")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := c.Run(ctx)
	if res.Status == Skip {
		res.Status = Fail // a check does not skip itself
	}
	return res
}
