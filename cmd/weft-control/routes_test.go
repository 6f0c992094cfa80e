package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/xds"
)

// TestLocalModeLogsRouteProblems: in local mode a bad route is reported in the log once (not at every
// reload), and again when what is wrong changes.
func TestLocalModeLogsRouteProblems(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	state := func(regex string) *discovery.State {
		objs, err := discovery.ParseObjects([]byte(`apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{path: {type: RegularExpression, value: "` + regex + `"}}], backendRefs: [{name: web, port: 80}]}]
`))
		if err != nil {
			t.Fatal(err)
		}
		return discovery.Build(objs)
	}
	var logged map[string]string
	step := func(regex string, want int) {
		t.Helper()
		buf.Reset()
		logged = logRouteProblems(log, xds.RouteStatuses(state(regex), xds.Options{}), logged)
		if got := strings.Count(buf.String(), "UnsupportedValue"); got != want {
			t.Errorf("regex %q: %d lines about it, want %d:\n%s", regex, got, want, buf.String())
		}
	}
	step("/([", 1)
	step("/([", 0)
	step("/((", 1)
	step("/ok", 0)
	step("/((", 1)
}
