package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/dataplane/tracing"
)

// newTracer is the span exporter --otlp-addr asks for (nil: tracing off, the request path pays one nil
// check), with the pod's resource attributes; start runs it until stop, which flushes what is queued.
func newTracer(o runOptions, log *slog.Logger) (*tracing.Exporter, error) {
	if o.otlpAddr == "" {
		return nil, nil
	}
	rate, err := strconv.ParseFloat(o.traceSampling, 64)
	if err != nil || rate < 0 || rate > 1 {
		return nil, fmt.Errorf("--trace-sampling %q: want a fraction from 0 to 1 of the requests without a trace context that start one (0: only continue incoming sampled traces)", o.traceSampling)
	}
	service := os.Getenv("OTEL_SERVICE_NAME")
	if service == "" {
		service = "weft-proxy"
	}
	res := []tracing.Attr{
		tracing.String("service.name", service),
		tracing.String("service.version", buildinfo.Version),
		tracing.String("service.instance.id", o.podName+"."+o.namespace),
		tracing.String("k8s.pod.name", o.podName),
		tracing.String("k8s.namespace.name", o.namespace),
	}
	if o.serviceAccount != "" {
		res = append(res, tracing.String("k8s.serviceaccount.name", o.serviceAccount))
	}
	e, err := tracing.New(tracing.Options{Endpoint: o.otlpAddr, SampleRate: rate, Resource: res,
		ScopeName: "weft-proxy", ScopeVersion: buildinfo.Version, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("--otlp-addr %q: %w", o.otlpAddr, err)
	}
	return e, nil
}

// runTracer runs e (when not nil) until the returned stop, which flushes the queue and waits.
func runTracer(e *tracing.Exporter) (stop func()) {
	if e == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	return func() { cancel(); <-done }
}
