package xds_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	xdsconf "github.com/weftmesh/weft/conformance/xds"
	"github.com/weftmesh/weft/conformance/xds/gcpserver"
	"github.com/weftmesh/weft/conformance/xds/localmode"
)

var (
	xdsAddr = flag.String("xds-addr", "", "run the suite against the xDS server at HOST:PORT (read-only checks) instead of the in-process servers")
	drive   = flag.String("xds-drive-discovery-file", "", "with -xds-addr: weft-control's --discovery-file, REWRITTEN to run the checks that change the configuration")
	nodeID  = flag.String("xds-node-id", "", "node id to present with -xds-addr (default: the suite's default node)")
	timeout = flag.Duration("xds-timeout", 4*time.Second, "how long to wait for an expected response")
	quiet   = flag.Duration("xds-quiet", 300*time.Millisecond, "how long a stream must stay silent for \"nothing sent\"")
)

var only = flag.String("xds-only", "", "run only the checks whose ID contains this")

func match() func(string) bool {
	if *only == "" {
		return nil
	}
	return func(id string) bool { return strings.Contains(id, *only) }
}

// fixture is what the in-process servers serve: three services, two on one port.
var fixture = []xdsconf.Service{
	{Namespace: "default", Name: "web", Port: 8080, Endpoints: []string{"127.0.0.11", "127.0.0.12"}},
	{Namespace: "default", Name: "api", Port: 8080, Endpoints: []string{"127.0.0.21"}},
	{Namespace: "default", Name: "grpc", Port: 9090, Endpoints: []string{"127.0.0.31"}},
}

// TestExternal runs the checks against a server given by address (the read-only ones, or all but the
// restart with -xds-drive-discovery-file); every check that runs must pass.
func TestExternal(t *testing.T) {
	if *xdsAddr == "" {
		t.Skip("no -xds-addr given; the in-process servers are tested by the other tests")
	}
	cfg := xdsconf.Config{Target: *xdsAddr, Quiet: *quiet, Timeout: *timeout, Out: testWriter{t}}
	if *nodeID != "" {
		cfg.Node = xdsconf.DefaultNode()
		cfg.Node.Id = *nodeID
	}
	if *drive != "" {
		d, err := localmode.New(*drive, fixture)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Driver = d
	}
	results, err := xdsconf.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Status == xdsconf.Fail {
			t.Errorf("%s: %s", r.ID, r.Detail)
		}
	}
}

// goControlPlaneExpected is the truth about plain go-control-plane v0.14.0 (SnapshotCache, ads=false,
// as in its example): every check passes except these, each for the reason given.
var goControlPlaneExpected = map[string]string{
	// SnapshotCache.CreateWatch answers any request whose version_info differs from the snapshot's; a
	// NACK carries the previous version, so the rejected version is resent at once (a NACK loop).
	"sotw-nack-no-resend": "resends the rejected version right after a NACK",
	// The delta subscription keeps the version it last sent; subscribing to a held name sends nothing.
	"delta-subscribe-again-resends": "does not resend a name subscribed again",
	// createDeltaResponse only reports names it had sent before as removed; a name that never existed
	// gets no response at all.
	"delta-missing-in-removed": "does not report a subscribed name that does not exist",
	// Without ads=true and WithOrderedADS, watches are answered in map order.
	"ordering-cds-eds-lds-rds": "pushes types in random order",
	// A new snapshot version makes every SotW watch respond, resources changed or not.
	"no-push-on-resync":        "resends everything on a new snapshot version",
	"no-push-unrelated-change": "resends every type on any change",
	// The nonce is kept on the watch, and every request makes a new watch with no nonce: once the newer
	// response is ACKed, a request carrying an older nonce is applied.
	"sotw-stale-nonce-ignored": "applies a stale-nonce request that arrives after the ACK of the newer response",
	// SnapshotCache's createResponse filters by the request's names, "*" included, so an explicit
	// wildcard gets no clusters at all.
	"wildcard-explicit-star":   "answers an explicit \"*\" with no resources",
	"wildcard-star-with-names": "answers \"*\" plus a name with that name only",
	// The version counter is the application's: it starts again at 1 in a new process.
	"restart-new-versions": "reuses versions after a restart",
}

func TestGoControlPlane(t *testing.T) {
	srv, err := gcpserver.Start("127.0.0.1:0", xdsconf.DefaultNode().Id, fixture)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	results, err := xdsconf.Run(context.Background(), xdsconf.Config{Target: srv.Addr(), Driver: srv, Quiet: *quiet, Timeout: *timeout, Out: testWriter{t}, Match: match()})
	if err != nil {
		t.Fatal(err)
	}
	assertExpected(t, results, goControlPlaneExpected)
	writeTable(t, "go-control-plane", results)
}

// TestReadOnlySubset runs without a driver: the checks that need one are SKIP, never PASS.
func TestReadOnlySubset(t *testing.T) {
	srv, err := gcpserver.Start("127.0.0.1:0", xdsconf.DefaultNode().Id, fixture)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	needsDriver := map[string]bool{}
	none, err := xdsconf.Run(context.Background(), xdsconf.Config{Target: srv.Addr(), Driver: srv, Quiet: *quiet, Timeout: *timeout,
		Match: func(id string) bool { return false }})
	if err != nil || len(none) != 0 {
		t.Fatalf("Match excluding everything ran %d checks (err %v)", len(none), err)
	}
	// The driver checks are skipped without running; of the read-only ones, run two (the rest run in
	// TestGoControlPlane).
	readOnly := map[string]bool{"first-response-ads-sotw": true, "sotw-nack-no-resend": true}
	results, err := xdsconf.Run(context.Background(), xdsconf.Config{Target: srv.Addr(), Quiet: *quiet, Timeout: *timeout,
		Match: func(id string) bool { return readOnly[id] || driverChecks[id] }})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(readOnly)+len(driverChecks) {
		t.Fatalf("%d results, want %d", len(results), len(readOnly)+len(driverChecks))
	}
	for _, r := range results {
		if r.Status == xdsconf.Skip {
			needsDriver[r.ID] = true
			if !strings.Contains(r.Detail, "driver") {
				t.Errorf("%s skipped for %q, want the reason to name the driver", r.ID, r.Detail)
			}
		}
	}
	for id := range driverChecks {
		if !needsDriver[id] {
			t.Errorf("%s was not skipped without a driver", id)
		}
	}
	for id := range readOnly {
		if needsDriver[id] {
			t.Errorf("%s was skipped without a driver; it needs none", id)
		}
	}
	assertExpected(t, results, goControlPlaneExpected)
}

// driverChecks are the checks that need a Driver.
var driverChecks = map[string]bool{
	"sotw-nack-then-change": true, "sotw-missing-sent-when-created": true, "delta-missing-sent-when-created": true,
	"delta-removal-reported": true, "sotw-full-state-cds-lds": true, "ordering-cds-eds-lds-rds": true,
	"no-push-on-resync": true, "no-push-unrelated-change": true, "many-streams": true, "restart-new-versions": true,
}

// assertExpected checks each result against the expected FAILs; SKIP is accepted only without a driver.
func assertExpected(t *testing.T, results []xdsconf.Result, expectedFail map[string]string) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range xdsconf.Checks() {
		seen[c.ID] = true
	}
	for _, r := range results {
		_, wantFail := expectedFail[r.ID]
		switch {
		case r.Status == xdsconf.Skip && strings.Contains(r.Detail, "driver"):
		case wantFail && r.Status != xdsconf.Fail:
			t.Errorf("%s: %s, want FAIL (%s) — if the server was fixed, update the expected table", r.ID, r.Status, expectedFail[r.ID])
		case !wantFail && r.Status != xdsconf.Pass:
			t.Errorf("%s: %s, want PASS: %s", r.ID, r.Status, r.Detail)
		}
	}
	for id := range expectedFail {
		if !seen[id] {
			t.Errorf("expected-FAIL table names %s, which is not a check", id)
		}
	}
}

// finished holds the results of the full runs, for the comparison table TestMain writes.
var finished = map[string][]xdsconf.Result{}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if dir := os.Getenv("XDS_CONFORMANCE_TABLES"); dir != "" && finished["go-control-plane"] != nil && finished["weft-control"] != nil {
		var b bytes.Buffer
		err := xdsconf.WriteComparison(&b, []string{"go-control-plane v0.14.0", "weft-control"},
			[][]xdsconf.Result{finished["go-control-plane"], finished["weft-control"]},
			[]map[string]string{goControlPlaneExpected, weftExpected})
		if err == nil {
			err = os.WriteFile(dir+"/comparison.md", b.Bytes(), 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "writing the comparison table:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// writeTable writes the Markdown table to $XDS_CONFORMANCE_TABLES/<name>.md when that is set (for README).
func writeTable(t *testing.T, name string, results []xdsconf.Result) {
	dir := os.Getenv("XDS_CONFORMANCE_TABLES")
	if dir == "" {
		return
	}
	var b bytes.Buffer
	if err := xdsconf.WriteMarkdown(&b, results); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/"+name+".md", b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if *only == "" {
		finished[name] = results
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
