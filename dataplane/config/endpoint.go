package config

import (
	"errors"
	"fmt"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// decodeLoadAssignment validates and decodes a ClusterLoadAssignment.
func decodeLoadAssignment(cla *xp.ClusterLoadAssignment) (*ClusterLoadAssignment, error) {
	if cla == nil {
		return nil, errors.New("missing load assignment")
	}
	out := &ClusterLoadAssignment{ClusterName: cla.GetClusterName()}
	for i, le := range cla.GetEndpoints() {
		loc := Locality{
			Region:   le.GetLocality().GetRegion(),
			Zone:     le.GetLocality().GetZone(),
			SubZone:  le.GetLocality().GetSubZone(),
			Weight:   le.GetLoadBalancingWeight().GetValue(),
			Priority: le.GetPriority(),
		}
		for j, lb := range le.GetLbEndpoints() {
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, fmt.Errorf("cluster load assignment %q: endpoints[%d].lb_endpoints[%d]: needs a socket address", cla.GetClusterName(), i, j)
			}
			ap, err := socketAddr(sa)
			if err != nil {
				return nil, fmt.Errorf("cluster load assignment %q: endpoints[%d].lb_endpoints[%d]: %w", cla.GetClusterName(), i, j, err)
			}
			if ap.Port() == 0 {
				return nil, fmt.Errorf("cluster load assignment %q: endpoints[%d].lb_endpoints[%d]: port 0", cla.GetClusterName(), i, j)
			}
			w := lb.GetLoadBalancingWeight().GetValue()
			if w == 0 {
				w = 1
			}
			loc.Endpoints = append(loc.Endpoints, Endpoint{Address: ap, Weight: w, Health: health(lb.GetHealthStatus())})
		}
		out.Localities = append(out.Localities, loc)
	}
	return out, nil
}

func health(h xp.HealthStatus) Health {
	switch h {
	case xp.HealthStatus_HEALTHY:
		return HealthHealthy
	case xp.HealthStatus_UNHEALTHY:
		return HealthUnhealthy
	case xp.HealthStatus_DRAINING:
		return HealthDraining
	case xp.HealthStatus_TIMEOUT:
		return HealthTimeout
	case xp.HealthStatus_DEGRADED:
		return HealthDegraded
	default:
		return HealthUnknown
	}
}
