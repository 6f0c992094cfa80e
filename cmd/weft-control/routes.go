package main

import (
	"log/slog"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/discovery"
)

// logRouteProblems logs, in local mode (where no API server gets a route's status), each condition of
// a Gateway API route that is not True, once: when it appears or its message changes. It returns what
// it logged, to pass to the next call.
func logRouteProblems(log *slog.Logger, statuses []discovery.RouteStatus, last map[string]string) map[string]string {
	now := map[string]string{}
	for _, rs := range statuses {
		for _, p := range rs.Parents {
			for _, c := range p.Conditions {
				if c.Status == metav1.ConditionTrue {
					continue
				}
				key := rs.Kind + " " + rs.Namespace + "/" + rs.Name + " parent " + string(p.ParentRef.Name) + " " + c.Type
				msg := c.Reason + ": " + c.Message
				now[key] = msg
				if last[key] != msg {
					log.Warn("route "+c.Type+" is False", "kind", rs.Kind, "route", rs.Namespace+"/"+rs.Name, "parent", string(p.ParentRef.Name), "reason", c.Reason, "message", c.Message)
				}
			}
		}
	}
	return now
}
