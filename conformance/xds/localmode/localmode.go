// Package localmode drives a Weft control plane in local mode (weft-control --discovery-file) for the
// xDS conformance suite: it keeps a set of services and rewrites the discovery file, as multi-document
// Kubernetes YAML (Services and EndpointSlices), on every change.
package localmode

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	xdsconf "github.com/weftmesh/weft/conformance/xds"
)

// Driver implements xds.Driver by rewriting the file at Path. Restart and Goroutines are delegated to
// the functions given, when the caller controls the control plane's process.
type Driver struct {
	Path string
	// OnRestart restarts the control plane reading Path; nil: Restart is not supported.
	OnRestart func(ctx context.Context) error
	// CountGoroutines reports the control plane's goroutines; nil: not known.
	CountGoroutines func(ctx context.Context) (int, error)

	mu         sync.Mutex // guards below and the file
	services   map[string]xdsconf.Service
	ips        map[string]int // cluster IP index of each service, stable across changes
	generation int
}

// New writes services to path and returns a driver for them.
func New(path string, services []xdsconf.Service) (*Driver, error) {
	d := &Driver{Path: path, services: map[string]xdsconf.Service{}, ips: map[string]int{}}
	for _, s := range services {
		d.put(s)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d, d.writeLocked()
}

func key(ns, name string) string { return ns + "/" + name }

func (d *Driver) put(s xdsconf.Service) {
	k := key(s.Namespace, s.Name)
	if _, ok := d.ips[k]; !ok {
		d.ips[k] = len(d.ips) + 1
	}
	s.Endpoints = append([]string(nil), s.Endpoints...)
	d.services[k] = s
}

// AddService implements xds.Driver.
func (d *Driver) AddService(_ context.Context, s xdsconf.Service) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.put(s)
	return d.writeLocked()
}

// RemoveService implements xds.Driver.
func (d *Driver) RemoveService(_ context.Context, namespace, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.services, key(namespace, name))
	return d.writeLocked()
}

// SetEndpoints implements xds.Driver.
func (d *Driver) SetEndpoints(_ context.Context, namespace, name string, ips []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.services[key(namespace, name)]
	if !ok {
		return fmt.Errorf("no service %s/%s", namespace, name)
	}
	s.Endpoints = ips
	d.put(s)
	return d.writeLocked()
}

// Resync implements xds.Driver: the file is rewritten with the same objects (only a comment changes).
func (d *Driver) Resync(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writeLocked()
}

// Restart implements xds.Driver.
func (d *Driver) Restart(ctx context.Context) error {
	if d.OnRestart == nil {
		return fmt.Errorf("restarting the control plane: %w", xdsconf.ErrNotSupported)
	}
	return d.OnRestart(ctx)
}

// Goroutines implements xds.GoroutineCounter.
func (d *Driver) Goroutines(ctx context.Context) (int, error) {
	if d.CountGoroutines == nil {
		return 0, fmt.Errorf("counting goroutines: %w", xdsconf.ErrNotSupported)
	}
	return d.CountGoroutines(ctx)
}

// writeLocked replaces the file in one rename, so the control plane never reads half of it.
func (d *Driver) writeLocked() error {
	d.generation++
	list := make([]xdsconf.Service, 0, len(d.services))
	for _, s := range d.services {
		list = append(list, s)
	}
	sort.Slice(list, func(i, j int) bool {
		return key(list[i].Namespace, list[i].Name) < key(list[j].Namespace, list[j].Name)
	})
	var b bytes.Buffer
	fmt.Fprintf(&b, "# written by the xDS conformance suite, generation %d\n", d.generation)
	for _, s := range list {
		b.Write(Render(s, d.ips[key(s.Namespace, s.Name)]))
	}
	tmp, err := os.CreateTemp(filepath.Dir(d.Path), ".xds-conformance-*.yaml")
	if err != nil {
		return fmt.Errorf("writing discovery file: %w", err)
	}
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("writing discovery file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing discovery file: %w", err)
	}
	if err := os.Rename(tmp.Name(), d.Path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing discovery file: %w", err)
	}
	return nil
}

// Render is the YAML of one service: a Service with cluster IP 10.96.<n/256>.<n%256> and one HTTP port,
// and an EndpointSlice of its ready endpoints.
func Render(s xdsconf.Service, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  clusterIP: 10.96.%[3]d.%[4]d
  ports: [{name: http, port: %[5]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: %[1]s-1, namespace: %[2]s, labels: {kubernetes.io/service-name: %[1]s}}
addressType: IPv4
ports: [{name: http, port: %[5]d}]
`, s.Name, s.Namespace, n/256, n%256, s.Port)
	if len(s.Endpoints) == 0 {
		b.WriteString("endpoints: []\n")
	} else {
		b.WriteString("endpoints:\n")
	}
	for _, ip := range s.Endpoints {
		fmt.Fprintf(&b, "- {addresses: [%s], conditions: {ready: true}}\n", ip)
	}
	return b.Bytes()
}

// MetricsGoroutines counts a process's goroutines from the go_goroutines gauge of its Prometheus
// metrics at url (weft-control: http://127.0.0.1:15014/metrics).
func MetricsGoroutines(url string) func(ctx context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, fmt.Errorf("reading metrics: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("reading metrics from %s: %s", url, resp.Status)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					return 0, fmt.Errorf("go_goroutines %q: %w", v, err)
				}
				return int(f), nil
			}
		}
		if err := sc.Err(); err != nil {
			return 0, fmt.Errorf("reading metrics: %w", err)
		}
		return 0, fmt.Errorf("%s has no go_goroutines gauge", url)
	}
}
