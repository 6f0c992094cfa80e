package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// DocBase is where each check's documentation lives: DocBase + "#" + id.
const DocBase = "https://weft.io/checks"

// DocURL is the documentation of a check.
func DocURL(id string) string { return DocBase + "#" + id }

// TextPrinter prints outcomes as they come, Linkerd-style: a header per section, then a line per
// check (√, ‼ or ×), and under a ‼ or × what was found, what to do and where to read more. Skipped
// checks are not printed; the summary counts them.
type TextPrinter struct {
	W       io.Writer
	section string
	started bool
}

// Print writes one outcome.
func (p *TextPrinter) Print(o Outcome) {
	if o.Status == Skip {
		return
	}
	p.header(o.Section)
	fmt.Fprintf(p.W, "%s %s\n", o.Status.Symbol(), o.Description)
	if o.Status == Pass {
		return
	}
	for _, line := range strings.Split(o.Message, "\n") {
		if line != "" {
			fmt.Fprintf(p.W, "    %s\n", line)
		}
	}
	if o.Hint != "" {
		fmt.Fprintf(p.W, "    hint: %s\n", o.Hint)
	}
	fmt.Fprintf(p.W, "    see %s for hints\n", DocURL(o.ID))
}

func (p *TextPrinter) header(section string) {
	if section != p.section || !p.started {
		if p.started {
			fmt.Fprintln(p.W)
		}
		fmt.Fprintf(p.W, "%s\n%s\n", section, strings.Repeat("-", len(section)))
		p.section, p.started = section, true
	}
}

// Waiting writes, on a check's first failed attempt under --wait, that it is being retried.
func (p *TextPrinter) Waiting(o Outcome, left time.Duration) {
	if o.Attempts != 1 {
		return
	}
	p.header(o.Section)
	msg, _, _ := strings.Cut(o.Message, "\n")
	fmt.Fprintf(p.W, "… %s: %s (retrying for up to %s)\n", o.Description, msg, left.Round(time.Second))
}

// Summary writes the last line: "Status check results are √" or × with what failed.
func (p *TextPrinter) Summary(r Report) {
	if p.started {
		fmt.Fprintln(p.W)
	}
	var failed, warned []string
	for _, o := range r.Outcomes {
		switch o.Status {
		case Fail:
			failed = append(failed, o.ID)
		case Warn:
			warned = append(warned, o.ID)
		}
	}
	var parts []string
	if len(failed) > 0 {
		parts = append(parts, fmt.Sprintf("%d failed (%s)", len(failed), strings.Join(failed, ", ")))
	}
	if len(warned) > 0 {
		parts = append(parts, fmt.Sprintf("%s (%s)", plural(len(warned), "warning"), strings.Join(warned, ", ")))
	}
	if n := r.Count(Skip); n > 0 {
		parts = append(parts, fmt.Sprintf("%d not run", n))
	}
	sym := "√"
	if !r.Success() {
		sym = "×"
	}
	if len(parts) == 0 {
		fmt.Fprintf(p.W, "Status check results are %s\n", sym)
		return
	}
	fmt.Fprintf(p.W, "Status check results are %s: %s\n", sym, strings.Join(parts, ", "))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// JSONReport is the --output json document.
type JSONReport struct {
	Success  bool          `json:"success"`
	Sections []JSONSection `json:"sections"`
}

// JSONSection is one section's checks, in order.
type JSONSection struct {
	Name   string      `json:"name"`
	Checks []JSONCheck `json:"checks"`
}

// JSONCheck is one check's outcome. Result is success, warning, error or skipped.
type JSONCheck struct {
	ID          string `json:"id"`
	Description string `json:"description"`
	Result      string `json:"result"`
	Message     string `json:"message,omitempty"`
	Hint        string `json:"hint,omitempty"`
	Doc         string `json:"doc"`
	Attempts    int    `json:"attempts,omitempty"`
}

// ToJSON is the report as the --output json document; skipped checks are included.
func ToJSON(r Report) JSONReport {
	out := JSONReport{Success: r.Success(), Sections: []JSONSection{}}
	for _, o := range r.Outcomes {
		if n := len(out.Sections); n == 0 || out.Sections[n-1].Name != o.Section {
			out.Sections = append(out.Sections, JSONSection{Name: o.Section})
		}
		s := &out.Sections[len(out.Sections)-1]
		s.Checks = append(s.Checks, JSONCheck{
			ID: o.ID, Description: o.Description, Result: o.Status.String(),
			Message: o.Message, Hint: o.Hint, Doc: DocURL(o.ID), Attempts: o.Attempts,
		})
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func WriteJSON(w io.Writer, r Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(ToJSON(r))
}
