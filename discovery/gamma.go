package discovery

import (
	"cmp"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// The Gateway API objects of the mesh profile (GAMMA): routes whose parentRefs name a Service, and the
// ReferenceGrants that allow their cross-namespace backends. They are kept as the Gateway API's own
// types (spec and status, without managed fields), sorted by namespace and name; xds/ translates and
// checks them.

// buildGAMMA copies the Gateway API objects into s, sorted and without duplicates.
func buildGAMMA(objs Objects, s *State) {
	for _, r := range objs.HTTPRoutes {
		if r != nil {
			c := *r.DeepCopy()
			c.ManagedFields = nil
			s.HTTPRoutes = append(s.HTTPRoutes, c)
		}
	}
	for _, r := range objs.GRPCRoutes {
		if r != nil {
			c := *r.DeepCopy()
			c.ManagedFields = nil
			s.GRPCRoutes = append(s.GRPCRoutes, c)
		}
	}
	for _, g := range objs.ReferenceGrants {
		if g != nil {
			c := *g.DeepCopy()
			c.ManagedFields = nil
			s.ReferenceGrants = append(s.ReferenceGrants, c)
		}
	}
	s.HTTPRoutes = sortMetas(s.HTTPRoutes, func(r gwv1.HTTPRoute) *metav1.ObjectMeta { return &r.ObjectMeta })
	s.GRPCRoutes = sortMetas(s.GRPCRoutes, func(r gwv1.GRPCRoute) *metav1.ObjectMeta { return &r.ObjectMeta })
	s.ReferenceGrants = sortMetas(s.ReferenceGrants, func(g gwv1.ReferenceGrant) *metav1.ObjectMeta { return &g.ObjectMeta })
}

func sortMetas[T any](xs []T, meta func(T) *metav1.ObjectMeta) []T {
	byKey := func(a, b T) int {
		ma, mb := meta(a), meta(b)
		return cmp.Or(strings.Compare(ma.Namespace, mb.Namespace), strings.Compare(ma.Name, mb.Name))
	}
	slices.SortStableFunc(xs, byKey)
	return slices.CompactFunc(xs, func(a, b T) bool { return byKey(a, b) == 0 })
}

// ReferenceGrantAllows reports whether a ReferenceGrant in toNS lets objects of kind fromKind
// (group fromGroup) in fromNS refer to the object toGroup/toKind toName in toNS.
func (s *State) ReferenceGrantAllows(fromGroup, fromKind, fromNS, toGroup, toKind, toNS, toName string) bool {
	for _, g := range s.ReferenceGrants {
		if g.Namespace != toNS {
			continue
		}
		from := slices.ContainsFunc(g.Spec.From, func(f gwv1.ReferenceGrantFrom) bool {
			return string(f.Group) == fromGroup && string(f.Kind) == fromKind && string(f.Namespace) == fromNS
		})
		if !from {
			continue
		}
		if slices.ContainsFunc(g.Spec.To, func(t gwv1.ReferenceGrantTo) bool {
			return string(t.Group) == toGroup && string(t.Kind) == toKind && (t.Name == nil || *t.Name == "" || string(*t.Name) == toName)
		}) {
			return true
		}
	}
	return false
}

// gatewayGroup is the Gateway API's API group.
const gatewayGroup = "gateway.networking.k8s.io"

// decodeGateway decodes a Gateway API document of the file source (kind HTTPRoute, GRPCRoute or
// ReferenceGrant) into objs, strictly, as decodeDocument does the core kinds.
func decodeGateway(kind, namespace string, js []byte, objs *Objects) error {
	switch kind {
	case "HTTPRoute":
		var o gwv1.HTTPRoute
		if err := strictJSON(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		objs.HTTPRoutes = append(objs.HTTPRoutes, &o)
		return requireName(o.Name)
	case "GRPCRoute":
		var o gwv1.GRPCRoute
		if err := strictJSON(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		objs.GRPCRoutes = append(objs.GRPCRoutes, &o)
		return requireName(o.Name)
	default:
		var o gwv1.ReferenceGrant
		if err := strictJSON(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		objs.ReferenceGrants = append(objs.ReferenceGrants, &o)
		return requireName(o.Name)
	}
}

// RouteStatus is what the control plane says about one route (HTTPRoute or GRPCRoute): an entry per
// parentRef that names a Service, with the Accepted and ResolvedRefs conditions. The conditions'
// LastTransitionTime is left zero by the pure function that computes them; the writer that patches
// the status subresource sets it.
type RouteStatus struct {
	Kind      string                   `json:"kind"` // HTTPRoute or GRPCRoute
	Namespace string                   `json:"namespace"`
	Name      string                   `json:"name"`
	Parents   []gwv1.RouteParentStatus `json:"parents"`
}
