package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weftmesh/weft/discovery"
)

// StatusWriter writes the status of Gateway API routes (status.parents[], the entries of one
// controller) to the API server. Whoever owns the State offers it the State and the statuses computed
// from it (Offer never blocks; a newer offer replaces one not yet written); Run, its own goroutine,
// patches the status subresource of each route whose entries differ, and nothing else. Entries of
// other controllers are kept. A failed patch is tried again with the next offer, or after a backoff.
// Make one with NewStatusWriter.
type StatusWriter struct {
	Client gwclient.Interface
	// Controller is the controllerName of the entries this writer owns.
	Controller gwv1.GatewayController
	Logger     *slog.Logger
	// Now gives the lastTransitionTime of a condition that changed (time.Now when nil).
	Now func() time.Time

	offers chan statusOffer
	// patched is, per route ("Kind/ns/name"), the resourceVersion a successful patch was made from:
	// until the State has a newer version of the route (with the status written), there is nothing
	// to compare with. Owned by Run's goroutine.
	patched map[string]string
}

type statusOffer struct {
	state *discovery.State
	want  []discovery.RouteStatus
}

// NewStatusWriter returns a StatusWriter for controller.
func NewStatusWriter(client gwclient.Interface, controller gwv1.GatewayController, log *slog.Logger) *StatusWriter {
	return &StatusWriter{Client: client, Controller: controller, Logger: log, offers: make(chan statusOffer, 1)}
}

// Offer hands the writer a State and the statuses wanted for its routes. It never blocks.
func (w *StatusWriter) Offer(st *discovery.State, want []discovery.RouteStatus) {
	o := statusOffer{st, want}
	for {
		select {
		case w.offers <- o:
			return
		default:
		}
		select { // drop the older offer, then try again
		case <-w.offers:
		default:
		}
	}
}

// Run writes offered statuses until ctx ends.
func (w *StatusWriter) Run(ctx context.Context) error {
	log := w.Logger
	if log == nil {
		log = slog.Default()
	}
	var retry <-chan time.Time
	var pending *statusOffer
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return nil
		case o := <-w.offers:
			pending = &o
		case <-retry:
		}
		retry = nil
		if pending == nil {
			continue
		}
		if failed := w.write(ctx, log, *pending); failed > 0 && ctx.Err() == nil {
			retry = time.After(backoff)
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		pending = nil
	}
}

// write patches every route of o whose entries differ from what is wanted; it returns how many
// patches failed.
func (w *StatusWriter) write(ctx context.Context, log *slog.Logger, o statusOffer) (failed int) {
	want := map[string][]gwv1.RouteParentStatus{}
	for _, rs := range o.want {
		want[rs.Kind+"/"+rs.Namespace+"/"+rs.Name] = rs.Parents
	}
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	if w.patched == nil {
		w.patched = map[string]string{}
	}
	seen := map[string]bool{}
	patch := func(kind string, meta metav1.ObjectMeta, have []gwv1.RouteParentStatus) {
		key := kind + "/" + meta.Namespace + "/" + meta.Name
		seen[key] = true
		if w.patched[key] == meta.ResourceVersion {
			return
		}
		parents, changed := w.merge(have, want[kind+"/"+meta.Namespace+"/"+meta.Name], metav1.NewTime(now().Truncate(time.Second)))
		if !changed {
			return
		}
		body, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": meta.ResourceVersion},
			"status":   map[string]any{"parents": parents},
		})
		if err != nil {
			log.Error("encoding a route status", "kind", kind, "route", meta.Namespace+"/"+meta.Name, "error", err)
			return
		}
		v1 := w.Client.GatewayV1()
		switch kind {
		case "HTTPRoute":
			_, err = v1.HTTPRoutes(meta.Namespace).Patch(ctx, meta.Name, types.MergePatchType, body, metav1.PatchOptions{}, "status")
		default:
			_, err = v1.GRPCRoutes(meta.Namespace).Patch(ctx, meta.Name, types.MergePatchType, body, metav1.PatchOptions{}, "status")
		}
		switch {
		case err == nil:
			w.patched[key] = meta.ResourceVersion
			log.Debug("wrote route status", "kind", kind, "route", meta.Namespace+"/"+meta.Name)
		case apierrors.IsNotFound(err):
			// Deleted meanwhile: nothing to say.
		case apierrors.IsConflict(err):
			// Changed meanwhile: the informer brings the new version and with it a new offer.
			log.Debug("route changed while its status was written; will write again", "kind", kind, "route", meta.Namespace+"/"+meta.Name)
		default:
			failed++
			log.Warn("writing route status", "kind", kind, "route", meta.Namespace+"/"+meta.Name, "error", err)
		}
	}
	for _, r := range o.state.HTTPRoutes {
		patch("HTTPRoute", r.ObjectMeta, r.Status.Parents)
	}
	for _, r := range o.state.GRPCRoutes {
		patch("GRPCRoute", r.ObjectMeta, r.Status.Parents)
	}
	for key := range w.patched {
		if !seen[key] {
			delete(w.patched, key)
		}
	}
	return failed
}

// merge replaces this controller's entries of have with want, keeping the others' in place, and
// reports whether anything but lastTransitionTime changed. A condition keeps its lastTransitionTime
// while its status stays; others get now.
func (w *StatusWriter) merge(have, want []gwv1.RouteParentStatus, now metav1.Time) ([]gwv1.RouteParentStatus, bool) {
	var out, mine []gwv1.RouteParentStatus
	for _, p := range have {
		if p.ControllerName == w.Controller {
			mine = append(mine, p)
		} else {
			out = append(out, p)
		}
	}
	var wantFull []gwv1.RouteParentStatus
	for _, p := range want {
		p = *p.DeepCopy()
		for i := range p.Conditions {
			c := &p.Conditions[i]
			c.LastTransitionTime = now
			for _, old := range mine {
				if equalParentRef(old.ParentRef, p.ParentRef) {
					if prev := findCondition(old.Conditions, c.Type); prev != nil && prev.Status == c.Status {
						c.LastTransitionTime = prev.LastTransitionTime
					}
				}
			}
		}
		wantFull = append(wantFull, p)
	}
	changed := !slices.EqualFunc(mine, wantFull, func(a, b gwv1.RouteParentStatus) bool {
		return equalParentRef(a.ParentRef, b.ParentRef) && a.ControllerName == b.ControllerName &&
			slices.EqualFunc(a.Conditions, b.Conditions, func(x, y metav1.Condition) bool {
				return x.Type == y.Type && x.Status == y.Status && x.Reason == y.Reason && x.Message == y.Message &&
					x.ObservedGeneration == y.ObservedGeneration && x.LastTransitionTime.Equal(&y.LastTransitionTime)
			})
	})
	out = append(out, wantFull...)
	if out == nil {
		out = []gwv1.RouteParentStatus{} // status.parents is required: [] rather than null
	}
	return out, changed
}

func findCondition(cs []metav1.Condition, typ string) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == typ {
			return &cs[i]
		}
	}
	return nil
}

func equalParentRef(a, b gwv1.ParentReference) bool {
	s := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	port := func(p *gwv1.PortNumber) string {
		if p == nil {
			return ""
		}
		return fmt.Sprint(*p)
	}
	return a.Name == b.Name && s((*string)(a.Group)) == s((*string)(b.Group)) && s((*string)(a.Kind)) == s((*string)(b.Kind)) &&
		s((*string)(a.Namespace)) == s((*string)(b.Namespace)) && s((*string)(a.SectionName)) == s((*string)(b.SectionName)) &&
		port(a.Port) == port(b.Port)
}
