package server

import (
	"strings"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
)

const regroupPod = `apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default, labels: {app: p}}
spec: {containers: [{name: app, ports: [{containerPort: 8080}]}, {name: weft-proxy}]}
status: {podIP: 10.0.0.9}
---
`

const regroupPolicy = `apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec: {action: DENY, rules: [{}]}
`

func hasRBAC(t *testing.T, res []*anypb.Any) (found, sawInbound bool) {
	t.Helper()
	for _, a := range res {
		if resourceName(a) != xds.InboundListenerName {
			continue
		}
		sawInbound = true
		found = strings.Contains(string(a.GetValue()), "envoy.filters.network.rbac")
	}
	return found, sawInbound
}

// TestRegroupOnPolicyChange: a proxy connected before a policy selects its pod gets an inbound
// listener with RBAC when the policy arrives, and without it when the policy goes, without asking
// (its old listener group did not change, so only the move to its new group can tell it): over SotW
// and delta ADS.
func TestRegroupOnPolicyChange(t *testing.T) {
	plain := stateOf(t, regroupPod)
	withPolicy := stateOf(t, regroupPod+regroupPolicy)
	h := start(t, plain)

	sotw := h.ads(t, node("p.default", "weft"))
	sotw.send(xds.ListenerType, nil, "", "", "")
	r := sotw.recv()
	if rbac, in := hasRBAC(t, r.GetResources()); !in || rbac {
		t.Fatalf("SotW first listeners: inbound %v, rbac %v; want inbound without rbac", in, rbac)
	}
	sotw.ack(r, nil)

	delta := h.delta(t, node("p.default", "weft"))
	delta.send(xds.ListenerType, nil, nil, "")
	d := delta.recv()
	if rbac, in := hasRBAC(t, deltaAnys(d)); !in || rbac {
		t.Fatalf("delta first listeners: inbound %v, rbac %v; want inbound without rbac", in, rbac)
	}
	delta.send(xds.ListenerType, nil, nil, d.GetNonce())

	for _, step := range []struct {
		name string
		st   *discovery.State
		want bool
	}{{"policy added", withPolicy, true}, {"policy removed", plain, false}} {
		h.srv.Update(step.st)
		for {
			r = sotw.recv()
			sotw.ack(r, nil)
			if rbac, in := hasRBAC(t, r.GetResources()); in {
				if rbac != step.want {
					t.Fatalf("SotW, %s: rbac %v, want %v", step.name, rbac, step.want)
				}
				break
			}
		}
		for {
			d = delta.recv()
			delta.send(xds.ListenerType, nil, nil, d.GetNonce())
			if rbac, in := hasRBAC(t, deltaAnys(d)); in {
				if rbac != step.want {
					t.Fatalf("delta, %s: rbac %v, want %v", step.name, rbac, step.want)
				}
				break
			}
		}
	}
}

func deltaAnys(r *discoverypb.DeltaDiscoveryResponse) []*anypb.Any {
	var out []*anypb.Any
	for _, x := range r.GetResources() {
		out = append(out, x.GetResource())
	}
	return out
}
