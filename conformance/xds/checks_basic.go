package xds

import (
	"context"
	"errors"
	"fmt"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

func allChecks() []check {
	return []check{
		{id: "first-response-ads-sotw", section: secBasic, run: checkFirstADSSotW,
			title: "ADS SotW: first response per type has version_info, nonce and the requested type_url"},
		{id: "first-response-ads-delta", section: secIncremental, run: checkFirstADSDelta,
			title: "ADS delta: first response per type has a nonce, the type_url, named and versioned resources"},
		{id: "first-response-per-type-sotw", section: secRPCServices, run: checkFirstPerTypeSotW,
			title: "per-type SotW services (StreamClusters/Endpoints/Listeners/Routes) answer like ADS"},
		{id: "first-response-per-type-delta", section: secRPCServices, run: checkFirstPerTypeDelta,
			title: "per-type delta services (DeltaClusters/Endpoints/Listeners/Routes) answer like ADS"},
		{id: "node-first-message-only", section: secBasic, run: checkNodeFirstOnly,
			title: "node sent only on a stream's first request: later requests are still served"},
		{id: "sotw-ack-no-response", section: secWhenToSend, run: checkSotWAck,
			title: "SotW: an ACK gets no response"},
		{id: "delta-ack-no-response", section: secWhenToSend, run: checkDeltaAck,
			title: "delta: an ACK gets no response"},
		{id: "sotw-nack-no-resend", section: secAckNack, run: checkSotWNack,
			title: "SotW: a NACK is not answered by resending the rejected version"},
		{id: "delta-nack-no-resend", section: secAckNack, run: checkDeltaNack,
			title: "delta: a NACK is not answered by resending the rejected resources"},
		{id: "sotw-stale-nonce-ignored", section: secUpdates, run: checkSotWStaleNonce,
			title: "SotW: a request with a stale nonce is ignored"},
		{id: "delta-stale-nonce-honoured", section: secIncremental, run: checkDeltaStaleNonce,
			title: "delta: subscription changes are honoured even with a stale nonce"},
		{id: "sotw-added-names-sent", section: secHints, run: checkSotWNamesAdded,
			title: "SotW: names added at the same version are sent"},
		{id: "delta-added-names-sent", section: secDeltaSub, run: checkDeltaNamesAdded,
			title: "delta: newly subscribed names are sent"},
		{id: "sotw-resubscribe-resends", section: secHints, run: checkSotWResubscribe,
			title: "SotW: unsubscribe then resubscribe resends the resource"},
		{id: "delta-resubscribe-resends", section: secDeltaUnsub, run: checkDeltaResubscribe,
			title: "delta: unsubscribe then resubscribe resends the resource"},
		{id: "delta-subscribe-again-resends", section: secDeltaSub, run: checkDeltaSubscribeAgain,
			title: "delta: subscribing again to a name already held resends it"},
		{id: "delta-missing-in-removed", section: secDeltaNotExst, run: checkDeltaMissing,
			title: "delta: a subscribed name that does not exist is reported in removed_resources"},
		{id: "wildcard-legacy-empty", section: secHints, run: checkWildcardLegacy,
			title: "wildcard: SotW CDS with no names gets every cluster"},
		{id: "wildcard-explicit-star", section: secHints, run: checkWildcardStar,
			title: "wildcard: SotW CDS with \"*\" gets every cluster"},
		{id: "wildcard-star-with-names", section: secHints, run: checkWildcardStarNames,
			title: "wildcard: SotW CDS with \"*\" and a name gets every cluster"},
		{id: "wildcard-empty-after-names", section: secHints, run: checkWildcardEmptyAfterNames,
			title: "wildcard: SotW CDS empty after names unsubscribes, is not a wildcard"},
		{id: "delta-wildcard-forms", section: secHints, run: checkDeltaWildcard,
			title: "wildcard: delta CDS with no names, and with \"*\", gets every cluster"},
		{id: "delta-wildcard-unsubscribe-name", section: secDeltaUnsub, run: checkDeltaWildcardUnsubscribe,
			title: "delta: unsubscribing a name also covered by \"*\" gets it resent or removed"},
		{id: "delta-reconnect-initial-versions", section: secIncremental, run: checkDeltaReconnect,
			title: "delta: reconnect with initial_resource_versions resends only what changed"},
		{id: "no-duplicate-names", section: secDuplicate, run: checkNoDuplicates,
			title: "no response names a resource twice"},

		{id: "sotw-nack-then-change", section: secAckNack, needsDriver: true, run: checkSotWNackThenChange,
			title: "SotW: after a NACK, the next configuration change is sent"},
		{id: "sotw-missing-sent-when-created", section: secNotExist, needsDriver: true, run: checkSotWMissingAppears,
			title: "SotW: a requested resource that does not exist is sent when it appears"},
		{id: "delta-missing-sent-when-created", section: secDeltaNotExst, needsDriver: true, run: checkDeltaMissingAppears,
			title: "delta: a requested resource that does not exist is sent when it appears"},
		{id: "delta-removal-reported", section: secDeleting, needsDriver: true, run: checkDeltaRemoval,
			title: "delta: a deleted resource is reported in removed_resources"},
		{id: "sotw-full-state-cds-lds", section: secGrouping, needsDriver: true, run: checkFullState,
			title: "SotW: every CDS and LDS response holds the full state"},
		{id: "ordering-cds-eds-lds-rds", section: secConsistency, needsDriver: true, run: checkOrdering,
			title: "ADS: a change is pushed in the order CDS, EDS, LDS, RDS"},
		{id: "no-push-on-resync", section: secWhenToSend, needsDriver: true, run: checkNoPushOnResync,
			title: "nothing is sent when the input is re-read without a change"},
		{id: "no-push-unrelated-change", section: secWhenToSend, needsDriver: true, run: checkNoPushUnrelated,
			title: "an endpoint change sends nothing to streams that do not watch it"},
		{id: "many-streams", section: secBasic, needsDriver: true, run: checkManyStreams,
			title: "many streams, concurrent updates: all converge, no goroutine leak"},
		{id: "restart-new-versions", section: secAckNack, needsDriver: true, run: checkRestart,
			title: "a restarted server never reuses a version"},
	}
}

// validSotW checks the fields every SotW response must carry.
func validSotW(r *discoveryv3.DiscoveryResponse, typeURL string) error {
	var probs []string
	if r.TypeUrl != typeURL {
		probs = append(probs, fmt.Sprintf("type_url %q, want %q", r.TypeUrl, typeURL))
	}
	if r.VersionInfo == "" {
		probs = append(probs, "empty version_info")
	}
	if r.Nonce == "" {
		probs = append(probs, "empty nonce")
	}
	for _, a := range r.Resources {
		if a.GetTypeUrl() != typeURL && a.GetTypeUrl() != resourceWrapperType {
			probs = append(probs, fmt.Sprintf("a resource of type %q", a.GetTypeUrl()))
			break
		}
	}
	if len(probs) > 0 {
		return fmt.Errorf("%s response: %s", short(typeURL), strings.Join(probs, ", "))
	}
	return nil
}

func validDelta(r *discoveryv3.DeltaDiscoveryResponse, typeURL string) error {
	var probs []string
	if r.TypeUrl != typeURL {
		probs = append(probs, fmt.Sprintf("type_url %q, want %q", r.TypeUrl, typeURL))
	}
	if r.Nonce == "" {
		probs = append(probs, "empty nonce")
	}
	for _, res := range r.Resources {
		if res.Name == "" {
			probs = append(probs, "a resource without a name")
			break
		}
		if res.Version == "" {
			probs = append(probs, fmt.Sprintf("resource %q without a version", res.Name))
			break
		}
		if res.Resource.GetTypeUrl() != typeURL {
			probs = append(probs, fmt.Sprintf("resource %q of type %q", res.Name, res.Resource.GetTypeUrl()))
			break
		}
	}
	if len(probs) > 0 {
		return fmt.Errorf("delta %s response: %s", short(typeURL), strings.Join(probs, ", "))
	}
	return nil
}

// subscriptions is what a full client asks for: wildcard CDS and LDS, and every EDS and RDS name.
func subscriptions(n *names) []struct {
	typeURL string
	names   []string
} {
	out := []struct {
		typeURL string
		names   []string
	}{{cds, nil}, {lds, nil}}
	if len(n.endpoints) > 0 {
		out = append(out, struct {
			typeURL string
			names   []string
		}{eds, n.endpoints})
	}
	if len(n.routes) > 0 {
		out = append(out, struct {
			typeURL string
			names   []string
		}{rds, n.routes})
	}
	return out
}

func checkFirstADSSotW(ctx context.Context, e *env) error {
	n, err := e.discover(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	for _, sub := range subscriptions(n) {
		if err := s.subscribe(sub.typeURL, sub.names...); err != nil {
			return err
		}
		r, err := s.recvAck(ctx, sub.typeURL)
		if err != nil {
			return err
		}
		if err := validSotW(r, sub.typeURL); err != nil {
			return err
		}
	}
	return nil
}

func checkFirstADSDelta(ctx context.Context, e *env) error {
	n, err := e.discover(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	for _, sub := range subscriptions(n) {
		if err := s.subscribe(sub.typeURL, "", sub.names, nil); err != nil {
			return err
		}
		r, err := s.recvAck(ctx, sub.typeURL)
		if err != nil {
			return err
		}
		if err := validDelta(r, sub.typeURL); err != nil {
			return err
		}
	}
	return nil
}

func checkFirstPerTypeSotW(ctx context.Context, e *env) error {
	n, err := e.discover(ctx)
	if err != nil {
		return err
	}
	for _, sub := range subscriptions(n) {
		s, err := e.openSotW(ctx, viaPerType, sub.typeURL)
		if err != nil {
			return err
		}
		err = func() error {
			defer s.close()
			if err := s.subscribe(sub.typeURL, sub.names...); err != nil {
				return err
			}
			r, err := s.recv(ctx, sub.typeURL)
			if err != nil {
				return err
			}
			return validSotW(r, sub.typeURL)
		}()
		if err != nil {
			return fmt.Errorf("per-type %s service: %w", short(sub.typeURL), err)
		}
	}
	return nil
}

func checkFirstPerTypeDelta(ctx context.Context, e *env) error {
	n, err := e.discover(ctx)
	if err != nil {
		return err
	}
	for _, sub := range subscriptions(n) {
		s, err := e.openDelta(ctx, viaPerType, sub.typeURL)
		if err != nil {
			return err
		}
		err = func() error {
			defer s.close()
			if err := s.subscribe(sub.typeURL, "", sub.names, nil); err != nil {
				return err
			}
			r, err := s.recv(ctx, sub.typeURL)
			if err != nil {
				return err
			}
			return validDelta(r, sub.typeURL)
		}()
		if err != nil {
			return fmt.Errorf("per-type %s service: %w", short(sub.typeURL), err)
		}
	}
	return nil
}

func checkNodeFirstOnly(ctx context.Context, e *env) error {
	typ, a, _, err := e.need2(ctx)
	if err != nil {
		return err
	}
	// ADS: the first request (with the node) is for CDS; the second, for another type, has no node.
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, cds); err != nil {
		return err
	}
	if typ == cds {
		typ = lds // the second request must be for a type not yet subscribed
		a = ""
	}
	var names []string
	if a != "" {
		names = []string{a}
	}
	if err := s.subscribe(typ, names...); err != nil {
		return err
	}
	if _, err := s.recv(ctx, typ); err != nil {
		return fmt.Errorf("ADS: a %s request without node, after a first request with node: %w", short(typ), err)
	}
	// Per-type EDS/CDS service: a subscription change without node.
	typ, a, b, _ := e.need2(ctx)
	p, err := e.openSotW(ctx, viaPerType, typ)
	if err != nil {
		return err
	}
	defer p.close()
	if err := p.subscribe(typ, a); err != nil {
		return err
	}
	if _, err := p.recvAck(ctx, typ); err != nil {
		return err
	}
	if err := p.subscribe(typ, a, b); err != nil {
		return err
	}
	r, err := p.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("per-type %s: adding %s in a request without node: %w", short(typ), b, err)
	}
	if !contains(sotwNames(r), b) {
		return fmt.Errorf("per-type %s: adding %s in a request without node: response holds %s", short(typ), b, list(sotwNames(r)))
	}
	// Delta: the same on a delta stream.
	d, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer d.close()
	if err := d.subscribe(typ, "", []string{a}, nil); err != nil {
		return err
	}
	if _, err := d.recvAck(ctx, typ); err != nil {
		return err
	}
	if err := d.subscribe(typ, "", []string{b}, nil); err != nil {
		return err
	}
	dr, err := d.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("delta: subscribing to %s in a request without node: %w", b, err)
	}
	if !contains(deltaNames(dr), b) {
		return fmt.Errorf("delta: subscribing to %s in a request without node: response holds %s", b, list(deltaNames(dr)))
	}
	return nil
}

// unexpected describes a SotW response that should not have come.
func unexpected(r *discoveryv3.DiscoveryResponse) string {
	return fmt.Sprintf("%s version %q nonce %q with %d resources %s", short(r.TypeUrl), r.VersionInfo, r.Nonce, len(r.Resources), list(sotwNames(r)))
}

func unexpectedDelta(r *discoveryv3.DeltaDiscoveryResponse) string {
	return fmt.Sprintf("delta %s nonce %q with resources %s, removed %s", short(r.TypeUrl), r.Nonce, list(deltaNames(r)), list(r.RemovedResources))
}

func checkSotWAck(ctx context.Context, e *env) error {
	typ, a, _, err := e.need2(ctx)
	if err != nil {
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
	if _, err := s.recvAck(ctx, cds); err != nil {
		return err
	}
	if typ != cds {
		if err := s.subscribe(typ, a); err != nil {
			return err
		}
		if _, err := s.recvAck(ctx, typ); err != nil {
			return err
		}
	}
	r, err := s.quiet(ctx)
	if err != nil {
		return err
	}
	if r != nil {
		return fmt.Errorf("the server answered an ACK with %s", unexpected(r))
	}
	return nil
}

func checkDeltaAck(ctx context.Context, e *env) error {
	typ, a, _, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds, "", nil, nil); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, cds); err != nil {
		return err
	}
	if typ != cds {
		if err := s.subscribe(typ, "", []string{a}, nil); err != nil {
			return err
		}
		if _, err := s.recvAck(ctx, typ); err != nil {
			return err
		}
	}
	r, err := s.quiet(ctx)
	if err != nil {
		return err
	}
	if r != nil {
		return fmt.Errorf("the server answered an ACK with %s", unexpectedDelta(r))
	}
	return nil
}

func checkSotWNack(ctx context.Context, e *env) error {
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
	again, err := s.quiet(ctx)
	if err != nil {
		return err
	}
	if again != nil {
		return fmt.Errorf("after a NACK of CDS version %q the server sent %s", r.VersionInfo, unexpected(again))
	}
	return nil
}

func checkDeltaNack(ctx context.Context, e *env) error {
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds, "", nil, nil); err != nil {
		return err
	}
	r, err := s.recv(ctx, cds)
	if err != nil {
		return err
	}
	if err := s.nack(r); err != nil {
		return err
	}
	again, err := s.quiet(ctx)
	if err != nil {
		return err
	}
	if again != nil {
		return fmt.Errorf("after a NACK the server sent %s", unexpectedDelta(again))
	}
	return nil
}

func checkSotWStaleNonce(ctx context.Context, e *env) error {
	typ, a, b, err := e.need2(ctx)
	if err != nil {
		return err
	}
	// Twice: the stale request arrives before the client ACKs the newer response (the race nonces
	// exist for), then after it.
	for _, beforeAck := range []bool{true, false} {
		if err := staleNonceRound(ctx, e, typ, a, b, beforeAck); err != nil {
			return err
		}
	}
	return nil
}

func staleNonceRound(ctx context.Context, e *env, typ, a, b string, beforeAck bool) error {
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, a); err != nil {
		return err
	}
	r1, err := s.recvAck(ctx, typ)
	if err != nil {
		return err
	}
	if err := s.subscribe(typ, a, b); err != nil {
		return err
	}
	r2, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("adding %s to the subscription: %w", b, err)
	}
	if r2.Nonce == r1.Nonce {
		return fmt.Errorf("two responses carry the same nonce %q", r1.Nonce)
	}
	when := "before"
	if !beforeAck {
		when = "after"
		if err := s.ack(r2); err != nil {
			return err
		}
	}
	// The stale request drops b; the current one (an ACK of r2) asks for a and b again. A server that
	// ignores the stale request sees no change and stays silent; one that applied it resends b.
	if err := s.send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: []string{a}, VersionInfo: r2.VersionInfo, ResponseNonce: r1.Nonce}); err != nil {
		return err
	}
	if err := s.ack(r2); err != nil {
		return err
	}
	r, err := s.quiet(ctx)
	if err != nil {
		return err
	}
	if r != nil {
		return fmt.Errorf("the server applied a request with stale nonce %q, sent %s the ACK of nonce %q (it dropped %s, then resent it): %s",
			r1.Nonce, when, r2.Nonce, b, unexpected(r))
	}
	return nil
}

func checkDeltaStaleNonce(ctx context.Context, e *env) error {
	typ, a, b, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, "", []string{a}, nil); err != nil {
		return err
	}
	r1, err := s.recvAck(ctx, typ)
	if err != nil {
		return err
	}
	if err := s.subscribe(typ, r1.Nonce, []string{b}, nil); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, typ); err != nil {
		return fmt.Errorf("subscribing to %s: %w", b, err)
	}
	// r1's nonce is stale now. Unsubscribe b and subscribe it again, both with the stale nonce: the
	// server must honour both, so b comes again.
	if err := s.subscribe(typ, r1.Nonce, nil, []string{b}); err != nil {
		return err
	}
	if r, err := s.quiet(ctx); err != nil {
		return err
	} else if r != nil {
		if err := s.ack(r); err != nil {
			return err
		}
	}
	if err := s.subscribe(typ, r1.Nonce, []string{b}, nil); err != nil {
		return err
	}
	r, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("unsubscribed from %s and subscribed again, both with stale nonce %q: %w", b, r1.Nonce, err)
	}
	if !contains(deltaNames(r), b) {
		return fmt.Errorf("unsubscribed from %s and subscribed again with a stale nonce: got %s", b, unexpectedDelta(r))
	}
	return nil
}

func checkSotWNamesAdded(ctx context.Context, e *env) error {
	typ, a, b, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, a); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, typ); err != nil {
		return err
	}
	if err := s.subscribe(typ, a, b); err != nil {
		return err
	}
	r, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("after adding %s to [%s]: %w", b, a, err)
	}
	if !contains(sotwNames(r), b) {
		return fmt.Errorf("after adding %s: %s", b, unexpected(r))
	}
	return nil
}

func checkDeltaNamesAdded(ctx context.Context, e *env) error {
	typ, a, b, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, "", []string{a}, nil); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, typ); err != nil {
		return err
	}
	if err := s.subscribe(typ, "", []string{b}, nil); err != nil {
		return err
	}
	r, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("after subscribing to %s: %w", b, err)
	}
	if !contains(deltaNames(r), b) {
		return fmt.Errorf("after subscribing to %s: %s", b, unexpectedDelta(r))
	}
	return nil
}

func checkSotWResubscribe(ctx context.Context, e *env) error {
	typ, a, b, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, a, b); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, typ); err != nil {
		return err
	}
	if err := s.subscribe(typ, a); err != nil {
		return err
	}
	if r, err := s.quiet(ctx); err != nil {
		return err
	} else if r != nil {
		if err := s.ack(r); err != nil {
			return err
		}
	}
	if err := s.subscribe(typ, a, b); err != nil {
		return err
	}
	r, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("after dropping %s and asking for it again: %w", b, err)
	}
	if !contains(sotwNames(r), b) {
		return fmt.Errorf("after dropping %s and asking for it again: %s", b, unexpected(r))
	}
	return nil
}

func checkDeltaResubscribe(ctx context.Context, e *env) error {
	typ, a, b, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, "", []string{a, b}, nil); err != nil {
		return err
	}
	if err := deltaCollect(ctx, s, typ, []string{a, b}); err != nil {
		return err
	}
	if err := s.subscribe(typ, "", nil, []string{b}); err != nil {
		return err
	}
	if r, err := s.quiet(ctx); err != nil {
		return err
	} else if r != nil {
		if err := s.ack(r); err != nil {
			return err
		}
	}
	if err := s.subscribe(typ, "", []string{b}, nil); err != nil {
		return err
	}
	r, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("after unsubscribing from %s and subscribing again: %w", b, err)
	}
	if !contains(deltaNames(r), b) {
		return fmt.Errorf("after unsubscribing from %s and subscribing again: %s", b, unexpectedDelta(r))
	}
	return nil
}

// deltaCollect reads and ACKs delta responses of typ until every name in want has been sent.
func deltaCollect(ctx context.Context, s *deltaStream, typ string, want []string) error {
	got := map[string]bool{}
	for len(missing(want, sorted(got))) > 0 {
		r, err := s.recvAck(ctx, typ)
		if err != nil {
			return fmt.Errorf("waiting for %s (have %s): %w", list(want), list(sorted(got)), err)
		}
		for _, n := range deltaNames(r) {
			got[n] = true
		}
	}
	return nil
}

func checkDeltaSubscribeAgain(ctx context.Context, e *env) error {
	typ, a, _, err := e.need2(ctx)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(typ, "", []string{a}, nil); err != nil {
		return err
	}
	if _, err := s.recvAck(ctx, typ); err != nil {
		return err
	}
	if err := s.subscribe(typ, "", []string{a}, nil); err != nil {
		return err
	}
	r, err := s.recv(ctx, typ)
	if err != nil {
		return fmt.Errorf("subscribing again to %s, which the client holds: %w", a, err)
	}
	if !contains(deltaNames(r), a) {
		return fmt.Errorf("subscribing again to %s: %s", a, unexpectedDelta(r))
	}
	return nil
}

const absentName = "xds-conformance-does-not-exist"

func checkDeltaMissing(ctx context.Context, e *env) error {
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(eds, "", []string{absentName}, nil); err != nil {
		return err
	}
	r, err := s.recv(ctx, eds)
	if err != nil {
		return fmt.Errorf("subscribed to EDS %q, which does not exist: %w", absentName, err)
	}
	if !contains(r.RemovedResources, absentName) {
		return fmt.Errorf("subscribed to EDS %q, which does not exist: %s", absentName, unexpectedDelta(r))
	}
	return nil
}

func allClusters(ctx context.Context, e *env) ([]string, error) {
	n, err := e.discover(ctx)
	if err != nil {
		return nil, err
	}
	if len(n.clusters) == 0 {
		return nil, skipf("the server serves no clusters to node %q", e.cfg.Node.GetId())
	}
	return n.clusters, nil
}

// wildcardCDS opens a SotW stream, sends one CDS request with names, and checks the response holds every
// cluster.
func wildcardCDS(ctx context.Context, e *env, names ...string) error {
	all, err := allClusters(ctx, e)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds, names...); err != nil {
		return err
	}
	r, err := s.recv(ctx, cds)
	if err != nil {
		return err
	}
	if m := missing(all, sotwNames(r)); len(m) > 0 {
		return fmt.Errorf("CDS request %s: response lacks %s", list(names), list(m))
	}
	return nil
}

func checkWildcardLegacy(ctx context.Context, e *env) error { return wildcardCDS(ctx, e) }

func checkWildcardStar(ctx context.Context, e *env) error { return wildcardCDS(ctx, e, "*") }

func checkWildcardStarNames(ctx context.Context, e *env) error {
	all, err := allClusters(ctx, e)
	if err != nil {
		return err
	}
	return wildcardCDS(ctx, e, "*", all[0])
}

func checkWildcardEmptyAfterNames(ctx context.Context, e *env) error {
	all, err := allClusters(ctx, e)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds, all[0]); err != nil {
		return err
	}
	r, err := s.recvAck(ctx, cds)
	if err != nil {
		return err
	}
	if !contains(sotwNames(r), all[0]) {
		return fmt.Errorf("CDS request [%s]: %s", all[0], unexpected(r))
	}
	if err := s.subscribe(cds); err != nil {
		return err
	}
	again, err := s.quiet(ctx)
	if err != nil {
		return err
	}
	if again != nil && len(again.Resources) > 0 {
		return fmt.Errorf("an empty CDS request after [%s] was served as a wildcard: %s", all[0], unexpected(again))
	}
	return nil
}

func checkDeltaWildcard(ctx context.Context, e *env) error {
	all, err := allClusters(ctx, e)
	if err != nil {
		return err
	}
	for _, form := range [][]string{nil, {"*"}} {
		err := func() error {
			s, err := e.openDelta(ctx, viaADS, "")
			if err != nil {
				return err
			}
			defer s.close()
			if err := s.subscribe(cds, "", form, nil); err != nil {
				return err
			}
			return deltaCollect(ctx, s, cds, all)
		}()
		if err != nil {
			return fmt.Errorf("delta CDS subscribe %s: %w", list(form), err)
		}
	}
	return nil
}

func checkDeltaWildcardUnsubscribe(ctx context.Context, e *env) error {
	all, err := allClusters(ctx, e)
	if err != nil {
		return err
	}
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.subscribe(cds, "", []string{"*", all[0]}, nil); err != nil {
		return err
	}
	if err := deltaCollect(ctx, s, cds, all); err != nil {
		return err
	}
	if err := drainQuietDelta(ctx, s); err != nil {
		return err
	}
	if err := s.subscribe(cds, "", nil, []string{all[0]}); err != nil {
		return err
	}
	r, err := s.recv(ctx, cds)
	if err != nil {
		return fmt.Errorf("subscribed to \"*\" and %s, then unsubscribed from %s: %w", all[0], all[0], err)
	}
	if !contains(deltaNames(r), all[0]) && !contains(r.RemovedResources, all[0]) {
		return fmt.Errorf("subscribed to \"*\" and %s, then unsubscribed from %s: %s", all[0], all[0], unexpectedDelta(r))
	}
	return nil
}

func checkDeltaReconnect(ctx context.Context, e *env) error {
	all, err := allClusters(ctx, e)
	if err != nil {
		return err
	}
	versions := map[string]string{}
	{
		s, err := e.openDelta(ctx, viaADS, "")
		if err != nil {
			return err
		}
		if err := s.subscribe(cds, "", nil, nil); err != nil {
			s.close()
			return err
		}
		for len(missing(all, keys(versions))) > 0 {
			r, err := s.recvAck(ctx, cds)
			if err != nil {
				s.close()
				return err
			}
			for _, res := range r.Resources {
				versions[res.Name] = res.Version
			}
		}
		s.close()
	}
	// Reconnect claiming every cluster at its version, except: all[0] at a version the server never
	// sent, and a cluster that does not exist.
	const gone = "xds-conformance-gone"
	initial := map[string]string{gone: "1"}
	for n, v := range versions {
		initial[n] = v
	}
	initial[all[0]] = "xds-conformance-stale"
	s, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	if err := s.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: cds, InitialResourceVersions: initial}); err != nil {
		return err
	}
	sent, removed := map[string]bool{}, map[string]bool{}
	r, err := s.recvAck(ctx, cds)
	for err == nil && r != nil {
		for _, n := range deltaNames(r) {
			sent[n] = true
		}
		for _, n := range r.RemovedResources {
			removed[n] = true
		}
		if r, err = s.quiet(ctx); err == nil && r != nil {
			err = s.ack(r)
		}
	}
	if err != nil {
		return fmt.Errorf("reconnecting with initial_resource_versions: %w", err)
	}
	var probs []string
	if !sent[all[0]] {
		probs = append(probs, fmt.Sprintf("did not send %s, held at a version it never had", all[0]))
	}
	var resent []string
	for _, n := range all[1:] {
		if sent[n] {
			resent = append(resent, n)
		}
	}
	if len(resent) > 0 {
		probs = append(probs, fmt.Sprintf("resent %s, held at their current version", list(resent)))
	}
	if !removed[gone] {
		probs = append(probs, fmt.Sprintf("did not report %s, which does not exist, in removed_resources", gone))
	}
	if len(probs) > 0 {
		return errors.New("after a reconnect with initial_resource_versions the server " + strings.Join(probs, "; "))
	}
	return nil
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func checkNoDuplicates(ctx context.Context, e *env) error {
	n, err := e.discover(ctx)
	if err != nil {
		return err
	}
	s, err := e.openSotW(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer s.close()
	d, err := e.openDelta(ctx, viaADS, "")
	if err != nil {
		return err
	}
	defer d.close()
	for _, sub := range subscriptions(n) {
		if err := s.subscribe(sub.typeURL, sub.names...); err != nil {
			return err
		}
		if _, err := s.recvAck(ctx, sub.typeURL); err != nil {
			return err
		}
		if err := d.subscribe(sub.typeURL, "", sub.names, nil); err != nil {
			return err
		}
		if _, err := d.recvAck(ctx, sub.typeURL); err != nil {
			return err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.violations) > 0 {
		return errors.New(strings.Join(e.violations, "; "))
	}
	return nil
}
