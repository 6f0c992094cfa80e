package kube

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestStatusMerge: the writer replaces only its own entries, keeps a condition's lastTransitionTime
// while its status stays, and reports a change only when something but that time differs.
func TestStatusMerge(t *testing.T) {
	const ours, theirs = "weft.io/gateway-controller", "example.com/gateway"
	then := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	now := metav1.NewTime(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	svc := gwv1.ParentReference{Group: new(gwv1.Group), Kind: ptr.To(gwv1.Kind("Service")), Name: "web"}
	gateway := gwv1.ParentReference{Name: "gw"}
	entry := func(ctrl gwv1.GatewayController, p gwv1.ParentReference, ltt metav1.Time, accepted metav1.ConditionStatus, reason string) gwv1.RouteParentStatus {
		return gwv1.RouteParentStatus{ParentRef: p, ControllerName: ctrl, Conditions: []metav1.Condition{
			{Type: "Accepted", Status: accepted, Reason: reason, LastTransitionTime: ltt, ObservedGeneration: 1},
		}}
	}
	w := &StatusWriter{Controller: ours}
	for _, tc := range []struct {
		name        string
		have, want  []gwv1.RouteParentStatus
		out         []gwv1.RouteParentStatus
		wantChanged bool
	}{{
		name:        "first write, beside another controller's entry",
		have:        []gwv1.RouteParentStatus{entry(theirs, gateway, then, "True", "Accepted")},
		want:        []gwv1.RouteParentStatus{entry(ours, svc, metav1.Time{}, "True", "Accepted")},
		out:         []gwv1.RouteParentStatus{entry(theirs, gateway, then, "True", "Accepted"), entry(ours, svc, now, "True", "Accepted")},
		wantChanged: true,
	}, {
		name:        "unchanged: no write, the time stays",
		have:        []gwv1.RouteParentStatus{entry(ours, svc, then, "True", "Accepted")},
		want:        []gwv1.RouteParentStatus{entry(ours, svc, metav1.Time{}, "True", "Accepted")},
		out:         []gwv1.RouteParentStatus{entry(ours, svc, then, "True", "Accepted")},
		wantChanged: false,
	}, {
		name:        "status flips: new time",
		have:        []gwv1.RouteParentStatus{entry(ours, svc, then, "True", "Accepted")},
		want:        []gwv1.RouteParentStatus{entry(ours, svc, metav1.Time{}, "False", "UnsupportedValue")},
		out:         []gwv1.RouteParentStatus{entry(ours, svc, now, "False", "UnsupportedValue")},
		wantChanged: true,
	}, {
		name:        "the Service parentRef is gone: our entry goes, theirs stays",
		have:        []gwv1.RouteParentStatus{entry(ours, svc, then, "True", "Accepted"), entry(theirs, gateway, then, "True", "Accepted")},
		out:         []gwv1.RouteParentStatus{entry(theirs, gateway, then, "True", "Accepted")},
		wantChanged: true,
	}, {
		name:        "our last entry goes: an empty list, not null (status.parents is required)",
		have:        []gwv1.RouteParentStatus{entry(ours, svc, then, "True", "Accepted")},
		out:         []gwv1.RouteParentStatus{},
		wantChanged: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			out, changed := w.merge(tc.have, tc.want, now)
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if d := cmp.Diff(tc.out, out); d != "" {
				t.Errorf("merged status (-want +got):\n%s", d)
			}
		})
	}
}
