package xds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

func checkSotWNackThenChange(ctx context.Context, e *env) error {
	if _, err := e.learnProbe(ctx); err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds); err != nil {
		return err
	}
	r, err := s.recv(ctx, cds)
	if err != nil {
		return err
	}
	if err := s.nack(r); err != nil {
		return err
	}
	rejected := r.VersionInfo
	return e.withProbe(ctx, func(added *names) error {
		// A resend of the rejected version is NACKed again, as a client that still rejects it would.
		for resends := 0; resends < 1000; resends++ {
			r, err := s.recv(ctx, cds)
			if err != nil {
				return fmt.Errorf("after a NACK of version %q, the cluster added next: %w", rejected, err)
			}
			if r.VersionInfo != rejected && len(missing(added.clusters, sotwNames(r))) == 0 {
				return s.ack(r)
			}
			if err := s.nack(r); err != nil {
				return err
			}
		}
		return fmt.Errorf("after a NACK of version %q the server resent it 1000 times without the change", rejected)
	})
}

func checkSotWMissingAppears(ctx context.Context, e *env) error {
	p, err := e.learnProbe(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	want := p.endpoints[0]
	if err := s.subscribe(eds, want); err != nil {
		return err
	}
	if r, err := s.quiet(ctx); err != nil {
		return err
	} else if r != nil {
		if err := s.ack(r); err != nil {
			return err
		}
	}
	return e.withProbe(ctx, func(*names) error {
		for {
			r, err := s.recvAck(ctx, eds)
			if err != nil {
				return fmt.Errorf("subscribed to EDS %s before it existed; after it was created: %w", want, err)
			}
			if contains(sotwNames(r), want) {
				return nil
			}
		}
	})
}

func checkDeltaMissingAppears(ctx context.Context, e *env) error {
	p, err := e.learnProbe(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	want := p.endpoints[0]
	if err := s.subscribe(eds, "", []string{want}, nil); err != nil {
		return err
	}
	if r, err := s.quiet(ctx); err != nil {
		return err
	} else if r != nil {
		if err := s.ack(r); err != nil {
			return err
		}
	}
	return e.withProbe(ctx, func(*names) error {
		for {
			r, err := s.recvAck(ctx, eds)
			if err != nil {
				return fmt.Errorf("subscribed to EDS %s before it existed; after it was created: %w", want, err)
			}
			if contains(deltaNames(r), want) {
				return nil
			}
		}
	})
}

func checkDeltaRemoval(ctx context.Context, e *env) error {
	p, err := e.learnProbe(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	err = e.withProbe(ctx, func(*names) error {
		if err := s.subscribe(cds, "", nil, nil); err != nil {
			return err
		}
		if err := deltaCollect(ctx, s, cds, p.clusters); err != nil {
			return err
		}
		if err := s.subscribe(eds, "", p.endpoints, nil); err != nil {
			return err
		}
		return deltaCollect(ctx, s, eds, p.endpoints)
	})
	if err != nil {
		return err
	}
	// withProbe removed the probe: both the wildcard CDS and the named EDS subscriptions must say so.
	removed := map[string]bool{}
	want := append(slices.Clone(p.clusters), p.endpoints...)
	for len(missing(want, sorted(removed))) > 0 {
		r, err := s.recvAck(ctx, "")
		if err != nil {
			return fmt.Errorf("after the probe service was deleted, waiting for %s in removed_resources (have %s): %w", list(want), list(sorted(removed)), err)
		}
		for _, n := range r.RemovedResources {
			removed[n] = true
		}
	}
	return nil
}

func checkFullState(ctx context.Context, e *env) error {
	p, err := e.learnProbe(ctx)
	if err != nil {
		return err
	}
	base, err := e.discover(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	for _, t := range []string{cds, lds} {
		if err := s.subscribe(t); err != nil {
			return err
		}
		if _, err := s.recvAck(ctx, t); err != nil {
			return err
		}
	}
	var probs []string
	// checkResp reports a CDS or LDS response that lacks a resource that exists.
	checkResp := func(r *discoveryv3.DiscoveryResponse, want []string, when string) {
		if m := missing(want, sotwNames(r)); len(m) > 0 {
			probs = append(probs, fmt.Sprintf("%s, %s version %q lacks %s", when, short(r.TypeUrl), r.VersionInfo, list(m)))
		}
	}
	// drain reads responses until one of CDS holds (or lacks) the probe's clusters, then any more
	// until quiet; each CDS and LDS response must be the full state.
	drain := func(withProbe bool, when string) error {
		wantC, wantL := base.clusters, base.listeners
		if withProbe {
			wantC = append(slices.Clone(wantC), p.clusters...)
			wantL = append(slices.Clone(wantL), p.listeners...)
		}
		done := false
		for !done {
			r, err := s.recvAck(ctx, "")
			if err != nil {
				return fmt.Errorf("%s: %w", when, err)
			}
			switch r.TypeUrl {
			case cds:
				checkResp(r, wantC, when)
				has := len(missing(p.clusters, sotwNames(r))) == 0
				done = has == withProbe
			case lds:
				checkResp(r, wantL, when)
			}
		}
		for {
			r, err := s.quiet(ctx)
			if err != nil || r == nil {
				return err
			}
			if err := s.ack(r); err != nil {
				return err
			}
			switch r.TypeUrl {
			case cds:
				checkResp(r, wantC, when)
			case lds:
				checkResp(r, wantL, when)
			}
		}
	}
	err = e.withProbe(ctx, func(*names) error { return drain(true, "after a service was added") })
	if err != nil {
		return err
	}
	if err := drain(false, "after a service was removed"); err != nil {
		return err
	}
	if len(probs) > 0 {
		return errors.New(strings.Join(probs, "; "))
	}
	return nil
}

func checkOrdering(ctx context.Context, e *env) error {
	p, err := e.learnProbe(ctx)
	if err != nil {
		return err
	}
	base, err := e.discover(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	// Subscribe in advance to the probe's EDS and RDS names, so every type is pushed by the server
	// rather than asked for by the client.
	epNames := append(slices.Clone(base.endpoints), p.endpoints...)
	rtNames := sorted(set(append(slices.Clone(base.routes), p.routes...)))
	subs := []struct {
		t     string
		names []string
	}{{cds, nil}, {eds, epNames}, {lds, nil}, {rds, rtNames}}
	for _, sub := range subs {
		if sub.t == rds && len(sub.names) == 0 {
			continue
		}
		if err := s.subscribe(sub.t, sub.names...); err != nil {
			return err
		}
	}
	if err := drainQuiet(ctx, s); err != nil {
		return err
	}
	const rounds = 3
	for round := 1; round <= rounds; round++ {
		pr := probe()
		if err := e.cfg.Driver.AddService(ctx, pr); err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		var seq []string
		gotC, gotE := false, false
		for !gotC || !gotE {
			r, err := s.recvAck(ctx, "")
			if err != nil {
				_ = e.removeProbe(ctx)
				return fmt.Errorf("round %d, waiting for the new cluster and its endpoints (sequence so far %v): %w", round, seq, err)
			}
			seq = append(seq, short(r.TypeUrl))
			switch r.TypeUrl {
			case cds:
				gotC = gotC || len(missing(p.clusters, sotwNames(r))) == 0
			case eds:
				gotE = gotE || len(missing(p.endpoints, sotwNames(r))) == 0
			}
		}
		for {
			r, err := s.quiet(ctx)
			if err != nil {
				return err
			}
			if r == nil {
				break
			}
			if err := s.ack(r); err != nil {
				return err
			}
			seq = append(seq, short(r.TypeUrl))
		}
		if err := e.removeProbe(ctx); err != nil {
			return err
		}
		if err := drainQuiet(ctx, s); err != nil {
			return err
		}
		if msg := orderProblem(seq); msg != "" {
			return fmt.Errorf("round %d of %d: %s (responses in order: %s)", round, rounds, msg, strings.Join(seq, ", "))
		}
	}
	return nil
}

// orderProblem looks at the first response of each type and names the first pair out of order.
func orderProblem(seq []string) string {
	rank := map[string]int{"CDS": 0, "EDS": 1, "LDS": 2, "RDS": 3}
	first := map[string]int{}
	for i, t := range seq {
		if _, ok := first[t]; !ok {
			first[t] = i
		}
	}
	types := make([]string, 0, len(first))
	for t := range first {
		types = append(types, t)
	}
	sort.Slice(types, func(i, j int) bool { return first[types[i]] < first[types[j]] })
	for i := 1; i < len(types); i++ {
		if rank[types[i]] < rank[types[i-1]] {
			return fmt.Sprintf("%s was pushed before %s", types[i-1], types[i])
		}
	}
	return ""
}

// drainQuiet ACKs responses until the stream stays quiet.
func drainQuiet(ctx context.Context, s *sotwStream) error {
	for {
		r, err := s.quiet(ctx)
		if err != nil || r == nil {
			return err
		}
		if err := s.ack(r); err != nil {
			return err
		}
	}
}

func drainQuietDelta(ctx context.Context, s *deltaStream) error {
	for {
		r, err := s.quiet(ctx)
		if err != nil || r == nil {
			return err
		}
		if err := s.ack(r); err != nil {
			return err
		}
	}
}

// fullClients opens a SotW and a delta ADS stream subscribed to wildcard CDS and LDS and to the given
// EDS and RDS names, and waits until both are quiet.
func (e *env) fullClients(ctx context.Context, epNames, rtNames []string) (*sotwStream, *deltaStream, error) {
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return nil, nil, err
	}
	d, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		s.close()
		return nil, nil, err
	}
	subs := []struct {
		t     string
		names []string
	}{{cds, nil}, {lds, nil}, {eds, epNames}, {rds, rtNames}}
	for _, sub := range subs {
		if (sub.t == eds || sub.t == rds) && len(sub.names) == 0 {
			continue
		}
		if err := s.subscribe(sub.t, sub.names...); err != nil {
			return nil, nil, err
		}
		if _, err := s.recvAck(ctx, sub.t); err != nil {
			return nil, nil, err
		}
		if err := d.subscribe(sub.t, "", sub.names, nil); err != nil {
			return nil, nil, err
		}
		if _, err := d.recvAck(ctx, sub.t); err != nil {
			return nil, nil, err
		}
	}
	if err := drainQuiet(ctx, s); err != nil {
		return nil, nil, err
	}
	if err := drainQuietDelta(ctx, d); err != nil {
		return nil, nil, err
	}
	return s, d, nil
}

func checkNoPushOnResync(ctx context.Context, e *env) error {
	if _, err := e.learnProbe(ctx); err != nil {
		return err
	}
	return e.withProbe(ctx, func(p *names) error {
		n, err := e.discover(ctx)
		if err != nil {
			return err
		}
		s, d, err := e.fullClients(ctx, n.endpoints, n.routes)
		if err != nil {
			return err
		}
		defer s.close()
		defer d.close()
		if err := e.cfg.Driver.Resync(ctx); err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		var probs []string
		for i := 0; i < 2; i++ { // two quiet periods: the server may debounce
			if r, err := s.quiet(ctx); err != nil {
				return err
			} else if r != nil {
				probs = append(probs, "SotW "+unexpected(r))
				_ = s.ack(r)
			}
			if r, err := d.quiet(ctx); err != nil {
				return err
			} else if r != nil {
				probs = append(probs, unexpectedDelta(r))
				_ = d.ack(r)
			}
		}
		// Both streams are live: a real change reaches them.
		pr := probe()
		if err := e.cfg.Driver.SetEndpoints(ctx, pr.Namespace, pr.Name, []string{"127.0.0.53"}); err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		if err := waitEndpoints(ctx, s, nil, p.endpoints[0], []string{"127.0.0.53"}); err != nil {
			return fmt.Errorf("SotW stream after the resync: %w", err)
		}
		if err := waitEndpoints(ctx, nil, d, p.endpoints[0], []string{"127.0.0.53"}); err != nil {
			return fmt.Errorf("delta stream after the resync: %w", err)
		}
		if len(probs) > 0 {
			return fmt.Errorf("after a resync without change the server sent: %s", strings.Join(probs, "; "))
		}
		return nil
	})
}

// addrs lists the socket addresses of a ClusterLoadAssignment, sorted.
func addrs(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, ep := range l.GetLbEndpoints() {
			if a := ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress(); a != "" {
				out = append(out, a)
			}
		}
	}
	sort.Strings(out)
	return out
}

// claIn finds the ClusterLoadAssignment called name among resources.
func claOf(m proto.Message, name string) (*endpointv3.ClusterLoadAssignment, bool) {
	cla, ok := m.(*endpointv3.ClusterLoadAssignment)
	return cla, ok && cla.ClusterName == name
}

// waitEndpoints reads (and ACKs) EDS responses on s or d until the assignment of name has exactly ips.
func waitEndpoints(ctx context.Context, s *sotwStream, d *deltaStream, name string, ips []string) error {
	want := slices.Clone(ips)
	sort.Strings(want)
	var last []string
	for {
		var ms []*discoveryv3.Resource
		if s != nil {
			r, err := s.recvAck(ctx, eds)
			if err != nil {
				return fmt.Errorf("waiting for endpoints %v of %s (last %v): %w", want, name, last, err)
			}
			for _, a := range r.Resources {
				ms = append(ms, &discoveryv3.Resource{Resource: a})
			}
		} else {
			r, err := d.recvAck(ctx, eds)
			if err != nil {
				return fmt.Errorf("waiting for endpoints %v of %s (last %v): %w", want, name, last, err)
			}
			ms = r.Resources
		}
		for _, res := range ms {
			m, err := decode(res.Resource)
			if err != nil {
				return err
			}
			if cla, ok := claOf(m, name); ok {
				last = addrs(cla)
				if slices.Equal(last, want) {
					return nil
				}
			}
		}
	}
}

func checkNoPushUnrelated(ctx context.Context, e *env) error {
	if _, err := e.learnProbe(ctx); err != nil {
		return err
	}
	return e.withProbe(ctx, func(p *names) error {
		n, err := e.discover(ctx)
		if err != nil {
			return err
		}
		others := slices.DeleteFunc(slices.Clone(n.endpoints), func(x string) bool { return contains(p.endpoints, x) })
		// s and d watch everything but the probe's endpoints; w watches only those.
		s, d, err := e.fullClients(ctx, others, n.routes)
		if err != nil {
			return err
		}
		defer s.close()
		defer d.close()
		w, err := e.openSotW(ctx, viaADS, "")
		if err != nil {
			return err
		}
		defer w.close()
		if err := w.subscribe(eds, p.endpoints[0]); err != nil {
			return err
		}
		if _, err := w.recvAck(ctx, eds); err != nil {
			return err
		}
		pr := probe()
		if err := e.cfg.Driver.SetEndpoints(ctx, pr.Namespace, pr.Name, []string{"127.0.0.54", "127.0.0.55"}); err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		if err := waitEndpoints(ctx, w, nil, p.endpoints[0], []string{"127.0.0.54", "127.0.0.55"}); err != nil {
			return err
		}
		var probs []string
		if r, err := s.quiet(ctx); err != nil {
			return err
		} else if r != nil {
			probs = append(probs, "SotW "+unexpected(r))
		}
		if r, err := d.quiet(ctx); err != nil {
			return err
		} else if r != nil {
			probs = append(probs, unexpectedDelta(r))
		}
		if len(probs) > 0 {
			return fmt.Errorf("after a change to endpoints of %s only, streams not watching it got: %s", p.endpoints[0], strings.Join(probs, "; "))
		}
		return nil
	})
}

func checkManyStreams(ctx context.Context, e *env) error {
	if _, err := e.learnProbe(ctx); err != nil {
		return err
	}
	counter, _ := e.cfg.Driver.(GoroutineCounter)
	var baseline int
	if counter != nil {
		b, err := counter.Goroutines(ctx)
		switch {
		case errors.Is(err, ErrNotSupported):
			counter = nil
		case err != nil:
			return fmt.Errorf("counting the server's goroutines: %w", err)
		}
		baseline = b
	}
	err := e.withProbe(ctx, func(p *names) error {
		name := p.endpoints[0]
		final := []string{"127.0.1.5", "127.0.2.5"}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var wg sync.WaitGroup
		errs := make(chan error, e.cfg.Streams)
		for i := 0; i < e.cfg.Streams; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				errs <- e.followEndpoints(sctx, i%2 == 1, name, final)
			}(i)
		}
		pr := probe()
		for u := 1; u <= 5; u++ {
			ips := []string{fmt.Sprintf("127.0.1.%d", u), fmt.Sprintf("127.0.2.%d", u)}
			if err := e.cfg.Driver.SetEndpoints(ctx, pr.Namespace, pr.Name, ips); err != nil {
				cancel()
				wg.Wait()
				return fmt.Errorf("driver: %w", err)
			}
		}
		wg.Wait()
		close(errs)
		var failed []string
		for err := range errs {
			if err != nil {
				failed = append(failed, err.Error())
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("%d of %d streams did not converge to the last endpoints; first: %s", len(failed), e.cfg.Streams, failed[0])
		}
		return nil
	})
	if err != nil || counter == nil {
		return err
	}
	// The streams are closed: the server's goroutines must come back to where they were.
	deadline := time.Now().Add(e.cfg.Timeout)
	for {
		n, err := counter.Goroutines(ctx)
		if err != nil {
			return fmt.Errorf("counting the server's goroutines: %w", err)
		}
		if n <= baseline+5 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("goroutine leak: %d goroutines before %d streams, %d after they closed", baseline, e.cfg.Streams, n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// followEndpoints opens one ADS stream (delta or SotW) watching name and returns once it has final.
func (e *env) followEndpoints(ctx context.Context, delta bool, name string, final []string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*e.cfg.Timeout)
	defer cancel()
	if delta {
		d, err := e.openDelta(ctx, viaADS, "")
		if err != nil {
			return err
		}
		defer d.close()
		if err := d.subscribe(cds, "", nil, nil); err != nil {
			return err
		}
		if err := d.subscribe(eds, "", []string{name}, nil); err != nil {
			return err
		}
		return waitEndpoints(ctx, nil, d, name, final)
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds); err != nil {
		return err
	}
	if err := s.subscribe(eds, name); err != nil {
		return err
	}
	return waitEndpoints(ctx, s, nil, name, final)
}

func checkRestart(ctx context.Context, e *env) error {
	if _, err := e.learnProbe(ctx); err != nil {
		return err
	}
	return e.withProbe(ctx, func(p *names) error {
		n, err := e.discover(ctx)
		if err != nil {
			return err
		}
		s, d, err := e.fullClients(ctx, n.endpoints, n.routes)
		if err != nil {
			return err
		}
		s.close()
		d.close()
		e.mu.Lock()
		before := map[string]map[string]bool{}
		for t, vs := range e.versions {
			before[t] = map[string]bool{}
			for v := range vs {
				before[t][v] = true
			}
		}
		e.mu.Unlock()
		if err := e.cfg.Driver.Restart(ctx); err != nil {
			return fmt.Errorf("driver: %w", err)
		}
		// The client's connection may still hold the old transport: retry until a stream works.
		var reused []string
		deadline := time.Now().Add(e.cfg.Timeout)
		for {
			reused, err = e.reusedVersions(ctx, n, before)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("after the restart: %w", err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		if len(reused) > 0 {
			return fmt.Errorf("after a restart the server sent versions it had used before: %s", strings.Join(reused, ", "))
		}
		return nil
	})
}

// reusedVersions opens a stream, subscribes like a full client and lists the versions it gets that are
// in before.
func (e *env) reusedVersions(ctx context.Context, n *names, before map[string]map[string]bool) ([]string, error) {
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return nil, err
	}
	defer s.close()
	var reused []string
	for _, sub := range subscriptions(n) {
		if err := s.subscribe(sub.typeURL, sub.names...); err != nil {
			return nil, err
		}
		r, err := s.recvAck(ctx, sub.typeURL)
		if err != nil {
			return nil, err
		}
		if before[r.TypeUrl][r.VersionInfo] {
			reused = append(reused, fmt.Sprintf("%s %q", short(r.TypeUrl), r.VersionInfo))
		}
	}
	return reused, nil
}
