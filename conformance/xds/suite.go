// Package xds is a conformance suite for xDS control planes: it speaks raw xDS (ADS and the per-type
// services, state of the world and incremental) to a server at an address and checks the rules of
// Envoy's "xDS REST and gRPC protocol" document, one result per rule, each naming its section.
//
// Run it with Run (the CLI `weft conformance` and this package's test do). With only an address it runs
// the read-only checks; a Driver lets it change the server's configuration and run the rest.
//
// Checks that something is NOT sent wait Config.Quiet for silence: that is the one wait of the suite
// that is a fixed time, because absence has no event to wait for. Set XDS_CONFORMANCE_DEBUG=1 to print
// every response received on stderr.
package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
)

// Document is the protocol document every check cites.
const Document = "https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol"

// Section titles of Document, as written there.
const (
	secBasic        = "Basic Protocol Overview"
	secAckNack      = "ACK/NACK and resource type instance version"
	secWhenToSend   = "When to send an update"
	secHints        = "How the client specifies what resources to return"
	secGrouping     = "Grouping Resources into Responses"
	secDuplicate    = "Duplicate Resource Names"
	secDeleting     = "Deleting Resources"
	secNotExist     = "Knowing When a Requested Resource Does Not Exist"
	secUnsubscribe  = "Unsubscribing From Resources"
	secUpdates      = "Resource updates"
	secConsistency  = "Eventual consistency considerations"
	secIncremental  = "Incremental xDS"
	secDeltaSub     = "Incremental xDS: Subscribing to Resources"
	secDeltaUnsub   = "Incremental xDS: Unsubscribing from Resources"
	secDeltaNotExst = "Incremental xDS: Knowing When a Requested Resource Does Not Exist"
	secRPCServices  = "RPC Services and Methods for Each Variant"
)

// Status is the outcome of one check.
type Status string

const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	// Skip means the check did not run: it needs a Driver, or the server's configuration lacks what it
	// needs (say, two clusters). A skipped check has not passed.
	Skip Status = "SKIP"
)

// Result is the outcome of one check.
type Result struct {
	ID       string // stable identifier, e.g. "sotw-ack-no-response"
	Title    string // what the check asserts, one line
	Section  string // the section of Document the rule comes from
	Status   Status
	Detail   string // why it failed or was skipped; empty on PASS
	Duration time.Duration
}

// Config says where the server is and how to talk to it.
type Config struct {
	// Target is the server's address, HOST:PORT (any gRPC target works).
	Target string
	// DialOptions replace the default (plaintext) transport credentials when set.
	DialOptions []grpc.DialOption
	// Node is sent on the first request of every stream. Default: DefaultNode().
	Node *corev3.Node
	// Driver changes the server's configuration; nil runs only the read-only checks.
	Driver Driver
	// Timeout is how long a check waits for a response it expects. Default 10s.
	Timeout time.Duration
	// Quiet is how long a stream must stay silent for "the server sent nothing" to hold. Default 1s.
	Quiet time.Duration
	// Streams is the number of concurrent streams of the many-streams check. Default 32.
	Streams int
	// Match selects checks by ID; nil runs all.
	Match func(id string) bool
	// Out receives one line per check as it finishes; nil prints nothing.
	Out io.Writer
}

// DefaultNode is the node the suite presents when Config.Node is nil: a pod "xds-conformance" in
// namespace "default", with the metadata Weft's proxies send.
func DefaultNode() *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"NAMESPACE":       "default",
		"POD_NAME":        "xds-conformance",
		"SERVICE_ACCOUNT": "default",
		"POD_IP":          "127.0.0.1",
		"CLIENT_KIND":     "weft",
	})
	return &corev3.Node{Id: "xds-conformance.default", Cluster: "xds-conformance", Metadata: md}
}

// errSkip marks a check that could not run against this server's configuration.
type errSkip struct{ reason string }

func (e errSkip) Error() string { return e.reason }

func skipf(format string, args ...any) error { return errSkip{fmt.Sprintf(format, args...)} }

type check struct {
	id          string
	title       string
	section     string
	needsDriver bool
	run         func(ctx context.Context, e *env) error
}

// Checks lists the IDs, titles and sections of all checks, in the order Run runs them.
func Checks() []Result {
	var out []Result
	for _, c := range allChecks() {
		out = append(out, Result{ID: c.id, Title: c.title, Section: c.section})
	}
	return out
}

// Run runs the checks against cfg.Target and returns one result per check, in order. Its error is only
// for a configuration it cannot use (an unusable target); a server that misbehaves yields FAIL results.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Target == "" {
		return nil, errors.New("no xDS server address: give one as HOST:PORT")
	}
	if cfg.Node == nil {
		cfg.Node = DefaultNode()
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Quiet <= 0 {
		cfg.Quiet = time.Second
	}
	if cfg.Streams <= 0 {
		cfg.Streams = 32
	}
	opts := cfg.DialOptions
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(cfg.Target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to xDS server %q: %w", cfg.Target, err)
	}
	defer conn.Close()

	e := &env{cfg: cfg, conn: conn, dialOpts: opts}
	// One wildcard CDS and LDS exchange first, so an unreachable or unready server is one clear error
	// rather than every check waiting out its deadline.
	pctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	_, err = e.discover(pctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%s does not answer xDS (wildcard CDS and LDS over ADS) within %v: %w; check the address and that the server is up", cfg.Target, cfg.Timeout, err)
	}
	if cfg.Driver != nil {
		// The driver may just have written the server's input: let the server settle first.
		if err := e.settle(ctx); err != nil {
			return nil, fmt.Errorf("waiting for %s to serve a stable configuration: %w", cfg.Target, err)
		}
	}
	var results []Result
	for _, c := range allChecks() {
		if cfg.Match != nil && !cfg.Match(c.id) {
			continue
		}
		r := Result{ID: c.id, Title: c.title, Section: c.section}
		start := time.Now()
		switch {
		case c.needsDriver && cfg.Driver == nil:
			r.Status, r.Detail = Skip, "needs a driver to change the server's configuration"
		default:
			cctx, cancel := context.WithTimeout(ctx, 4*cfg.Timeout+20*cfg.Quiet)
			err := c.run(cctx, e)
			cancel()
			var skip errSkip
			switch {
			case err == nil:
				r.Status = Pass
			case errors.As(err, &skip):
				r.Status, r.Detail = Skip, skip.reason
			case errors.Is(err, ErrNotSupported):
				r.Status, r.Detail = Skip, err.Error()
			default:
				r.Status, r.Detail = Fail, err.Error()
			}
		}
		r.Duration = time.Since(start)
		results = append(results, r)
		if cfg.Out != nil {
			fmt.Fprintln(cfg.Out, r.line())
		}
		if ctx.Err() != nil {
			break
		}
	}
	return results, nil
}

func (r Result) line() string {
	s := fmt.Sprintf("%s  %-34s %s  [§ %s]", r.Status, r.ID, r.Title, r.Section)
	if r.Detail != "" {
		s += "\n      " + r.Detail
	}
	return s
}

// WriteText writes results as an aligned table followed by a count per status.
func WriteText(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tSECTION")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Status, r.Title, r.Section)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, Summary(results))
	return err
}

// WriteMarkdown writes results as a Markdown table (for a README), with the reason of each FAIL and SKIP.
func WriteMarkdown(w io.Writer, results []Result) error {
	var b strings.Builder
	b.WriteString("| check | section of the xDS protocol | result |\n|---|---|---|\n")
	for _, r := range results {
		res := string(r.Status)
		if r.Detail != "" && r.Status != Pass {
			res += ": " + strings.ReplaceAll(r.Detail, "|", `\|`)
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r.Title, r.Section, res)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteComparison writes one Markdown table with a result column per server (names[i] heads runs[i]);
// runs must come from the same checks in the same order. A FAIL cell carries the reason given in
// reasons[i][id], when there is one.
func WriteComparison(w io.Writer, names []string, runs [][]Result, reasons []map[string]string) error {
	if len(names) != len(runs) || len(reasons) != len(runs) {
		return errors.New("WriteComparison: names, runs and reasons differ in length")
	}
	var b strings.Builder
	b.WriteString("| check | section of the xDS protocol |")
	for _, n := range names {
		fmt.Fprintf(&b, " %s |", n)
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(names)) + "\n")
	if len(runs) == 0 {
		_, err := io.WriteString(w, b.String())
		return err
	}
	for i, r := range runs[0] {
		fmt.Fprintf(&b, "| %s | %s |", r.Title, r.Section)
		for j, run := range runs {
			if i >= len(run) || run[i].ID != r.ID {
				return fmt.Errorf("WriteComparison: run %s does not have check %s at row %d", names[j], r.ID, i)
			}
			cell := string(run[i].Status)
			if why := reasons[j][r.ID]; why != "" && run[i].Status == Fail {
				cell += ": " + why
			}
			fmt.Fprintf(&b, " %s |", strings.ReplaceAll(cell, "|", `\|`))
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Summary counts results by status: "27 passed, 3 failed, 2 skipped".
func Summary(results []Result) string {
	var p, f, s int
	for _, r := range results {
		switch r.Status {
		case Pass:
			p++
		case Fail:
			f++
		case Skip:
			s++
		}
	}
	return fmt.Sprintf("%d passed, %d failed, %d skipped", p, f, s)
}
