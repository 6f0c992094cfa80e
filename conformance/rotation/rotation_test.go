// Package rotation checks workload certificate rotation under traffic, through the real binaries without
// root: weft-control in local mode with its identity CA on and two weft-proxies (a client pod and a
// server pod on loopback addresses, as `weft demo` runs them), mTLS between the proxies. Certificates
// renew while requests flow, and when the CA goes away and comes back, and no request fails.
// The tests take minutes (their durations are the point), so `go test -short` skips them.
package rotation

import (
	"context"
	"crypto/x509"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// issuedLine is what a weft-proxy logs (level info) each time it gets a certificate from Certify.
const issuedLine = "workload certificate issued"

// failedLine is what it logs (level warn) when a renewal fails and it keeps its current certificate.
const failedLine = "certificate renewal failed; keeping the current certificate"

// TestRotationUnderTraffic: with a 10 s leaf lifetime each proxy renews about every 7 s; 60 s of
// continuous requests from the client app through both proxies to the server app span at least five
// rotations of each, and none fails. The rotations are seen three ways: the distinct certificates the
// server proxy presents on new mTLS connections, each proxy's own log, and weft-control's Certify count.
func TestRotationUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("rotation under traffic runs for a minute; skipped with -short")
	}
	t.Parallel() // each on its own loopback block
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
		c, err := m.serverCert()
		if err != nil {
			probeErrs++
			if firstProbeErr == nil {
				firstProbeErr = err
			}
			continue
		}
		s := serial(c)
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

// TestCADown: weft-control (the CA and xDS) is killed for 30 s, timed so that both proxies' renewal
// comes due while it is down; the proxies keep their configuration and certificates (60 s leaf lifetime),
// retry with backoff, and requests keep flowing without a failure. weft-control then starts again on the
// same CA directory and ports, both proxies renew, and the traffic goes on past the old certificates'
// expiry.
//
// The schedule, in seconds after issuance: a proxy renews at 70% ±10% of the 60 s lifetime, in [37.8,
// 46.2]; the CA is down from 17 to 47, so every first attempt fails. Retries back off 1, 2, 4, 8 s (±20%),
// so one lands in [47, 58.2] whatever the first attempt's time, before the 60 s expiry.
func TestCADown(t *testing.T) {
	if testing.Short() {
		t.Skip("the CA-down test runs for about a minute; skipped with -short")
	}
	t.Parallel() // each on its own loopback block
	const (
		leaf   = 60 * time.Second
		downAt = 17 * time.Second // after issuance
		outage = 30 * time.Second
		rate   = 20
	)
	m := startMesh(t, leaf)
	first, err := m.serverCert()
	if err != nil {
		t.Fatalf("server-0's certificate before the outage: %v", err)
	}
	issued := first.NotAfter.Add(-leaf) // the client proxy, started just before, got its own a moment earlier
	issuedClient, issuedServer := m.client.count(issuedLine), m.server.count(issuedLine)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := m.startTraffic(ctx, rate)
	stopTraffic := func() { cancel(); <-tr.done }
	defer stopTraffic()

	// probeUntil checks server-0 every 500 ms until the time comes: its proxies alive, and new mTLS
	// connections served with the certificate it had at the start. It returns the number of probes.
	probeUntil := func(when time.Time, phase string) int {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		probes := 0
		for time.Now().Before(when) {
			<-tick.C
			for _, p := range []*proc{m.client, m.server} {
				if p.exited() {
					t.Fatalf("%s exited %s (%v)", p.name, phase, p.err)
				}
			}
			c, err := m.serverCert()
			if err != nil {
				t.Errorf("%s, a new mTLS connection to server-0: %v", phase, err)
				continue
			}
			probes++
			if serial(c) != serial(first) {
				t.Errorf("server-0 presents certificate %s %s, want its first one %s", serial(c), phase, serial(first))
			}
		}
		return probes
	}
	probeUntil(issued.Add(downAt), "before the outage")

	sentBefore, failedBefore := tr.sent.Load(), tr.failed.Load()
	m.control.kill(t, syscall.SIGKILL)
	down := time.Now()
	t.Logf("weft-control killed %v after the proxies' certificates were issued", down.Sub(issued).Round(time.Millisecond))

	// The outage: the proxies, on their own, still present their certificate and carry the traffic.
	probes := probeUntil(down.Add(outage), "with the CA down")
	sentDuring, failedDuring := tr.sent.Load()-sentBefore, tr.failed.Load()-failedBefore
	failedRenewals := map[string]int{"client-0": m.client.count(failedLine), "server-0": m.server.count(failedLine)}

	m.startControl()
	up := time.Now()
	t.Logf("weft-control ready again after %v down (%v after issuance)", up.Sub(down).Round(time.Millisecond), up.Sub(issued).Round(time.Millisecond))

	// Renewal after: both proxies get a new certificate from the restarted CA, and server-0 presents it on
	// new connections.
	var after *x509.Certificate
	m.poll("both proxies to renew with the restarted CA", leaf, func() error {
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
		if serial(after) == serial(first) {
			return fmt.Errorf("server-0 still presents its certificate from before the outage")
		}
		return nil
	})
	renewed := time.Now()
	// The traffic goes on past the first certificates' expiry: it rides on the renewed ones.
	m.poll("the first certificates to expire", leaf, func() error {
		if time.Now().Before(first.NotAfter.Add(2 * time.Second)) {
			return fmt.Errorf("the first certificate expires at %v", first.NotAfter)
		}
		return nil
	})
	stopTraffic()
	if c, err := m.serverCert(); err != nil {
		t.Errorf("after the first certificates expired, a new mTLS connection to server-0: %v", err)
	} else if serial(c) == serial(first) {
		t.Errorf("server-0 still presents its expired first certificate")
	}

	sent, failed := tr.sent.Load(), tr.failed.Load()
	t.Logf("%d requests (%d while the CA was down), %d failed; failed renewals while down: %v; server-0's certificate %s first, %s after; "+
		"renewed %v after the restart; issued in all: client-0 %d, server-0 %d (proxy logs)",
		sent, sentDuring, failed, failedRenewals, serial(first), serial(after), renewed.Sub(up).Round(time.Millisecond),
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
	for name, n := range failedRenewals {
		if n == 0 {
			t.Errorf("the weft-proxy of %s logged no failed renewal while the CA was down, want its renewal due then to fail and be retried", name)
		}
	}
	for name, n := range map[string][2]int{"client-0": {issuedClient, m.client.count(issuedLine)}, "server-0": {issuedServer, m.server.count(issuedLine)}} {
		if n[1] <= n[0] {
			t.Errorf("the weft-proxy of %s logged no new certificate after the CA came back (%d before, %d after)", name, n[0], n[1])
		}
	}
}
