// Package rotation checks workload certificate rotation under traffic, through the real binaries without
// root: weft-control in local mode with its identity CA on and two weft-proxies (a client pod and a
// server pod on loopback addresses, as `weft demo` runs them), mTLS between the proxies. Certificates
// renew while requests flow, and when the CA goes away and comes back, and no request fails.
// The tests take minutes (their durations are the point), so `go test -short` skips them.
package rotation

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// issuedLine is what a weft-proxy logs (level info) each time it gets a certificate from Certify.
const issuedLine = "workload certificate issued"

// TestRotationUnderTraffic: with a 10 s leaf lifetime each proxy renews about every 7 s; 60 s of
// continuous requests from the client app through both proxies to the server app span at least five
// rotations of each, and none fails. The rotations are seen three ways: the distinct certificates the
// server proxy presents on new mTLS connections, each proxy's own log, and weft-control's Certify count.
func TestRotationUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("rotation under traffic runs for a minute; skipped with -short")
	}
	const (
		leaf     = 10 * time.Second
		duration = 60 * time.Second
		rate     = 20 // requests per second
	)
	m := startMesh(t, leaf)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	tr := m.startTraffic(ctx, rate)

	serials := map[string]bool{}
	var order []string
	probes, probeErrs := 0, 0
	var firstProbeErr error
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		if p := m.exitedProc(); p != nil {
			cancel()
			<-tr.done
			t.Fatalf("%s exited during the traffic (%v)", p.name, p.err)
		}
		probes++
		s, err := m.serverCert()
		if err != nil {
			probeErrs++
			if firstProbeErr == nil {
				firstProbeErr = err
			}
			continue
		}
		if !serials[s] {
			serials[s] = true
			order = append(order, s)
		}
	}
	<-tr.done
	elapsed := time.Since(start)

	sent, failed := tr.sent.Load(), tr.failed.Load()
	issuedClient, issuedServer := m.client.count(issuedLine), m.server.count(issuedLine)
	certified, err := m.certified()
	if err != nil {
		t.Fatalf("reading weft-control's /metrics: %v", err)
	}
	t.Logf("%v of traffic: %d requests, %d failed; server certificates seen on the wire: %d (%d probes, %d failed); "+
		"certificates issued: client-0 %d, server-0 %d (proxy logs), %d Certify OK (weft-control)",
		elapsed.Round(time.Millisecond), sent, failed, len(serials), probes, probeErrs, issuedClient, issuedServer, certified)

	if failed != 0 {
		t.Errorf("%d of %d requests failed during rotation, want none; the first:\n%s", failed, sent, tr.errors())
	}
	if least := int64(duration.Seconds()) * rate / 4; sent < least {
		t.Errorf("only %d requests sent in %v, want at least %d", sent, elapsed.Round(time.Millisecond), least)
	}
	if probeErrs != 0 {
		t.Errorf("%d of %d new mTLS connections to server-0 saw no valid certificate; the first: %v", probeErrs, probes, firstProbeErr)
	}
	// Five rotations: the first certificate and at least five more.
	if len(serials) < 6 {
		t.Errorf("server-0 presented %d distinct certificates over %v (%v), want at least 6 (five rotations)", len(serials), elapsed.Round(time.Millisecond), order)
	}
	for name, n := range map[string]int{"client-0": issuedClient, "server-0": issuedServer} {
		if n < 6 {
			t.Errorf("the weft-proxy of %s logged %d issued certificates, want at least 6 (five rotations)", name, n)
		}
	}
	if certified < 12 {
		t.Errorf("weft-control counted %d successful Certify calls, want at least 12 (two proxies, five rotations each)", certified)
	}
}

// TestCADown: weft-control (the CA and xDS) is killed for 30 s; the proxies keep their configuration and
// certificates (60 s leaf lifetime), and requests keep flowing without a failure. weft-control then
// starts again on the same CA directory and ports, and both proxies renew.
func TestCADown(t *testing.T) {
	if testing.Short() {
		t.Skip("the CA-down test runs for about a minute; skipped with -short")
	}
	const (
		leaf   = 60 * time.Second
		outage = 30 * time.Second
		rate   = 20
	)
	m := startMesh(t, leaf)
	before, err := m.serverCert()
	if err != nil {
		t.Fatalf("server-0's certificate before the outage: %v", err)
	}
	issuedClient, issuedServer := m.client.count(issuedLine), m.server.count(issuedLine)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	tr := m.startTraffic(ctx, rate)

	m.control.kill(t, syscall.SIGKILL)
	down := time.Now()
	sentBefore := tr.sent.Load()
	t.Logf("weft-control killed %v after the traffic started", down.Sub(start).Round(time.Millisecond))

	// The outage: the proxies, on their own, still present their certificate and carry the traffic.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	probes := 0
	for time.Since(down) < outage {
		<-tick.C
		for _, p := range []*struct {
			name string
			proc *proc
		}{{"client-0", m.client}, {"server-0", m.server}} {
			if p.proc.exited() {
				cancel()
				<-tr.done
				t.Fatalf("the weft-proxy of %s exited while the CA was down (%v)", p.name, p.proc.err)
			}
		}
		s, err := m.serverCert()
		if err != nil {
			t.Errorf("with the CA down, a new mTLS connection to server-0: %v", err)
			continue
		}
		probes++
		if s != before {
			t.Errorf("server-0 presents certificate %s with the CA down, want its current one %s", s, before)
		}
	}
	sentDuring := tr.sent.Load() - sentBefore
	failedDuring := tr.failed.Load()

	m.startControl()
	up := time.Now()
	t.Logf("weft-control started again after %v down", up.Sub(down).Round(time.Millisecond))

	// Renewal after: both proxies get a new certificate from the restarted CA (they are due about 42 s
	// into the 60 s lifetime), and server-0 presents it on new connections.
	var after string
	m.poll("both proxies to renew with the restarted CA", 2*leaf, func() error {
		n, err := m.certified()
		if err != nil {
			return err
		}
		if n < 2 {
			return fmt.Errorf("weft-control issued %d certificates since its restart, want 2", n)
		}
		if after, err = m.serverCert(); err != nil {
			return err
		}
		if after == before {
			return fmt.Errorf("server-0 still presents its certificate from before the outage")
		}
		return nil
	})
	renewed := time.Now()
	cancel()
	<-tr.done

	sent, failed := tr.sent.Load(), tr.failed.Load()
	t.Logf("%d requests (%d while the CA was down), %d failed; server-0's certificate %s before, %s after; "+
		"renewed %v after the restart; issued in all: client-0 %d, server-0 %d (proxy logs)",
		sent, sentDuring, failed, before, after, renewed.Sub(up).Round(time.Millisecond),
		m.client.count(issuedLine), m.server.count(issuedLine))
	if failed != 0 {
		t.Errorf("%d of %d requests failed (%d while the CA was down), want none; the first:\n%s", failed, sent, failedDuring, tr.errors())
	}
	if least := int64(outage.Seconds()) * rate / 4; sentDuring < least {
		t.Errorf("only %d requests sent while the CA was down, want at least %d", sentDuring, least)
	}
	if probes == 0 {
		t.Error("no new mTLS connection to server-0 succeeded while the CA was down")
	}
	for name, n := range map[string][2]int{"client-0": {issuedClient, m.client.count(issuedLine)}, "server-0": {issuedServer, m.server.count(issuedLine)}} {
		if n[1] <= n[0] {
			t.Errorf("the weft-proxy of %s logged no new certificate after the CA came back (%d before, %d after)", name, n[0], n[1])
		}
	}
}
