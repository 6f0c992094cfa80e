package server

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/weftmesh/weft/discovery"
)

// benchState is 100 Services × 10 endpoints (the bench-control mesh); round moves one endpoint.
func benchState(round int) *discovery.State {
	st := &discovery.State{}
	for s := range 100 {
		svc := discovery.Service{Namespace: "bench", Name: fmt.Sprintf("svc-%03d", s), ClusterIP: fmt.Sprintf("10.96.0.%d", s+1),
			Ports: []discovery.ServicePort{{Name: "http", Port: 80, Protocol: "TCP"}}}
		for i := range 10 {
			addr := fmt.Sprintf("10.%d.0.%d", 1+s, i+1)
			if s == 0 && i == 0 {
				addr = fmt.Sprintf("10.250.%d.%d", round/250, round%250)
			}
			svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Address: addr, Ready: true, Ports: []discovery.EndpointPort{{Name: "http", Port: 8080}}})
		}
		st.Services = append(st.Services, svc)
	}
	return st
}

// BenchmarkUpdateOneEndpoint is the server's fixed cost of a one-endpoint change, before any stream
// is told: translation, and finding what changed.
func BenchmarkUpdateOneEndpoint(b *testing.B) {
	s := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s.Update(benchState(0))
	states := []*discovery.State{benchState(1), benchState(2)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.Update(states[i%2])
	}
}
