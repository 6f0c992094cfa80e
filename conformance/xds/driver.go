package xds

import (
	"context"
	"errors"
)

// Service is the part of a Kubernetes Service (with its EndpointSlice) that the suite changes: a name, one
// port, and the IPs of its ready endpoints. Checks that need the configuration to change drive the control
// plane with services like this one.
type Service struct {
	Namespace string
	Name      string
	Port      int
	Endpoints []string // endpoint IPs, loopback addresses in local tests
}

// Driver changes what a control plane serves, so the checks that need a configuration change can run.
// Each method returns once the change has been handed to the control plane (written to its file, put into
// its cache); the suite then waits on its own xDS streams for the change to show. Without a Driver only
// the read-only checks run and the others are reported as SKIP.
type Driver interface {
	// AddService adds a service and its endpoints.
	AddService(ctx context.Context, svc Service) error
	// RemoveService removes a service (and its endpoints) added with AddService.
	RemoveService(ctx context.Context, namespace, name string) error
	// SetEndpoints replaces the endpoint IPs of a service.
	SetEndpoints(ctx context.Context, namespace, name string, ips []string) error
	// Resync makes the control plane re-read or re-publish its input without any change to it (the same
	// file rewritten, the same objects resent): nothing a client sees should change.
	Resync(ctx context.Context) error
	// Restart stops the control plane and starts it again on the same address with the same input.
	Restart(ctx context.Context) error
}

// ErrNotSupported is returned (wrapped) by a Driver method the driver cannot do, such as Restart for a
// server the suite did not start. The check that needs it is reported as SKIP.
var ErrNotSupported = errors.New("not supported by this driver")

// GoroutineCounter is optionally implemented by a Driver whose control plane can report its goroutine
// count (in-process: runtime.NumGoroutine; a process: go_goroutines from its metrics). With it, the
// many-streams check also proves that closing streams leaves no goroutine behind in the server.
type GoroutineCounter interface {
	Goroutines(ctx context.Context) (int, error)
}
