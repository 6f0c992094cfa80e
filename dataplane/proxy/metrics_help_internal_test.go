package proxy

import (
	"io"
	"strings"
	"testing"
)

// TestWithHelpLines: each empty HELP line is filled in with helpOf's text, whatever kind of family it
// is, and a scrape's HELP lines allocate nothing.
func TestWithHelpLines(t *testing.T) {
	RegisterHelp("weft_test_registered_total", "Registered text.")
	fams := []string{"request_total", "weft_test_registered_total", "go_gc_duration_seconds", "process_open_fds_x", "other_thing"}
	var in, want strings.Builder
	for _, f := range fams {
		in.WriteString("# HELP " + f + "\n" + f + " 1\n")
		want.WriteString("# HELP " + f + " " + helpOf(f) + "\n" + f + " 1\n")
	}
	var got strings.Builder
	WithHelp(&got, func(w io.Writer) { _, _ = io.WriteString(w, in.String()) })
	if got.String() != want.String() {
		t.Errorf("WithHelp wrote\n%s\nwant\n%s", got.String(), want.String())
	}
	lines := []byte(in.String())
	if n := testing.AllocsPerRun(100, func() {
		WithHelp(io.Discard, func(w io.Writer) { _, _ = w.Write(lines) })
	}); n != 0 {
		t.Errorf("WithHelp allocates %v times per scrape, want 0", n)
	}
}
