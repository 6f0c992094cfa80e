package discovery

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestLoadExample(t *testing.T) {
	s, err := LoadFile("../deploy/examples/echo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	svc, ok := s.Service("default", "echo")
	if !ok {
		t.Fatal("no Service default/echo")
	}
	want := []Endpoint{
		{Address: "127.0.0.2", Ports: []EndpointPort{{Name: "grpc", Port: 8080}}, Ready: true, Zone: "zone-a", Pod: "echo-0"},
		{Address: "127.0.0.3", Ports: []EndpointPort{{Name: "grpc", Port: 8080}}, Ready: true, Zone: "zone-b", Pod: "echo-1"},
	}
	if d := cmp.Diff(want, svc.Endpoints); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]ServicePort{{Name: "grpc", Port: 8080, Protocol: "TCP", AppProtocol: "grpc", TargetPort: "8080"}}, svc.Ports); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}
	p, ok := s.Pod("default", "echo-1")
	if !ok || p.IP != "127.0.0.3" || p.ServiceAccount != "echo" || p.HasProxy {
		t.Errorf("pod echo-1 = %+v, %v", p, ok)
	}
}

// TestParseErrorsNameDocumentAndField: every error names the document (its number, kind and name) and
// the field by its full path, list indexes included, whatever kind of mistake it is.
func TestParseErrorsNameDocumentAndField(t *testing.T) {
	const svcA = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"bad port", svcA + "---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec:\n  ports: [{port: 0}]\n",
			"document 2 (Service x/b): spec.ports[0].port: 0 is not a port number (1-65535)"},
		{"unknown field", svcA + "spec: {prots: []}\n", `document 1 (Service default/a): spec.prots: unknown field (check its spelling and indentation)`},
		{"unknown field in a list, second document", svcA + "---\n" + svcA + "spec: {ports: [{name: a, port: 80}, {name: b, portz: 81}]}\n",
			`document 2 (Service default/a): spec.ports[1].portz: unknown field (check its spelling and indentation)`},
		{"field names are case-sensitive", svcA + "spec: {Ports: []}\n", `document 1 (Service default/a): spec.Ports: unknown field (check its spelling and indentation)`},
		{"wrong type", svcA + "spec: {ports: [{port: x}]}\n", "document 1 (Service default/a): spec.ports[0].port: string is not a valid int32"},
		{"wrong type, second item", svcA + "spec: {ports: [{name: a, port: 80}, {name: b, port: \"81\"}]}\n",
			"document 1 (Service default/a): spec.ports[1].port: string is not a valid int32"},
		{"wrong type in a slice's endpoint", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: yes please}}]\n",
			"document 1 (EndpointSlice default/s): endpoints[1].conditions.ready: string is not a valid bool"},
		{"list where a mapping belongs", svcA + "spec: {selector: [a]}\n", "document 1 (Service default/a): spec.selector: array is not a valid map[string]string"},
		{"number label", svcA + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: web, tier: 3}}\n",
			"document 2 (Pod default/p): metadata.labels.tier: number is not a valid string"},
		{"bad address", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [1.2.3]}]\n",
			`document 1 (EndpointSlice default/s): endpoints[0].addresses[0]: "1.2.3" is not an IPv4 address`},
		{"no service label", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n",
			`document 1 (EndpointSlice default/s): metadata.labels: missing "kubernetes.io/service-name" (the name of the Service this slice belongs to)`},
		{"no kind", "apiVersion: v1\nmetadata: {name: a}\n", "document 1: kind: missing; every document needs apiVersion and kind"},
		{"not yaml", "a: [b\n", "document 1: not valid YAML: yaml: line 1: did not find expected ',' or ']'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseObjects([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if d := cmp.Diff(tc.want, err.Error()); d != "" {
				t.Errorf("error (-want +got):\n%s", d)
			}
		})
	}
}

func TestBuildIsOrderIndependentAndMergesSlices(t *testing.T) {
	doc := `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}, {name: admin, port: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: admin, port: 9001}]
endpoints:
- addresses: [10.1.0.2]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.1.0.10]
  conditions: {ready: false}
- addresses: [10.1.0.2]
  conditions: {ready: true, terminating: false}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
`
	objs, err := ParseObjects([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s1 := Build(objs)
	rev := Objects{EndpointSlices: []*discoveryv1.EndpointSlice{objs.EndpointSlices[1], objs.EndpointSlices[0]}, Services: objs.Services}
	s2 := Build(rev)
	if d := cmp.Diff(s1, s2); d != "" {
		t.Fatalf("order changed the State:\n%s", d)
	}
	svc, _ := s1.Service("shop", "web")
	want := []Endpoint{
		{Address: "10.1.0.2", Ports: []EndpointPort{{Name: "admin", Port: 9001}, {Name: "http", Port: 8080}}, Ready: true},
		{Address: "10.1.0.10", Ports: []EndpointPort{{Name: "http", Port: 8080}}, Ready: false},
	}
	if d := cmp.Diff(want, svc.Endpoints); d != "" {
		t.Errorf("merged endpoints (-want +got):\n%s", d)
	}
	if len(svc.Ports) != 2 || svc.Ports[0].Port != 80 {
		t.Errorf("ports not sorted: %+v", svc.Ports)
	}
}

// TestFileSourceKeepsLastGood edits a watched file: a good edit is published, a bad one is not.
func TestFileSourceKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	example, err := os.ReadFile("../deploy/examples/echo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	write := func(b []byte) {
		t.Helper()
		// Write then rename, as editors do.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(example)

	var mu sync.Mutex
	var got []*State
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	src := &FileSource{Path: path, Quiet: 20 * time.Millisecond}
	go func() {
		done <- src.Run(ctx, func(s *State) { mu.Lock(); got = append(got, s); mu.Unlock() })
	}()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func([]*State) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			ok := cond(got)
			mu.Unlock()
			if ok {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	waitFor("first state", func(s []*State) bool { return len(s) == 1 })

	write([]byte(strings.Replace(string(example), "port: 8080\n    appProtocol", "port: nope\n    appProtocol", 1)))
	// A good edit after the bad one must be the next published State: the bad one is never published.
	write([]byte(strings.Replace(string(example), `["127.0.0.3"]`, `["127.0.0.4"]`, 1)))
	waitFor("second state", func(s []*State) bool { return len(s) >= 2 })
	mu.Lock()
	defer mu.Unlock()
	svc, _ := got[len(got)-1].Service("default", "echo")
	if len(got) != 2 || len(svc.Endpoints) != 2 || svc.Endpoints[1].Address != "127.0.0.4" {
		t.Fatalf("published %d states, last endpoints %+v", len(got), svc.Endpoints)
	}
}

func TestParseObjectsNamesIgnoredDocuments(t *testing.T) {
	objs, err := ParseObjects([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: a}\n---\napiVersion: v1\nkind: Servcie\nmetadata: {name: typo}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"document 2 (Deployment a/web)", "document 3 (Servcie default/typo)"}
	if d := cmp.Diff(want, objs.Ignored); d != "" {
		t.Errorf("Ignored (-want +got):\n%s", d)
	}
}

// logCount is a slog handler that counts records by message.
type logCount struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *logCount) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCount) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n[r.Message]++
	return nil
}
func (l *logCount) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCount) WithGroup(string) slog.Handler      { return l }
func (l *logCount) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[msg]
}

// TestFileSourceWatchesTheFileAlone: changes to other files in the folder do not re-read the discovery
// file, and a rejected content is logged once however often it is written again (a user saw 20
// identical errors in 2 s in /tmp). Documents of kinds Weft does not read are warned about once.
func TestFileSourceWatchesTheFileAlone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	example, err := os.ReadFile("../deploy/examples/echo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	replace := func(name string, b []byte) {
		t.Helper()
		tmp := name + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, name); err != nil {
			t.Fatal(err)
		}
	}
	withDeployment := append(append([]byte{}, example...), []byte("\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n")...)
	replace(path, withDeployment)

	logs := &logCount{n: map[string]int{}}
	published := make(chan *State, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	src := &FileSource{Path: path, Quiet: 20 * time.Millisecond, Logger: slog.New(logs)}
	go func() { done <- src.Run(ctx, func(s *State) { published <- s }) }()
	defer func() { cancel(); <-done }()
	next := func(what string) *State {
		t.Helper()
		select {
		case s := <-published:
			return s
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out waiting for %s", what)
			return nil
		}
	}
	next("the first state")

	bad := []byte(strings.Replace(string(example), "port: 8080\n    appProtocol", "port: nope\n    appProtocol", 1))
	for i := 0; i < 5; i++ {
		replace(path, bad)
		replace(filepath.Join(dir, "other.txt"), []byte{byte(i)})
	}
	// A good edit after the bad ones is the next published State; by then every earlier event was handled.
	good := []byte(strings.Replace(string(withDeployment), `["127.0.0.3"]`, `["127.0.0.4"]`, 1))
	replace(path, good)
	s := next("the good edit")
	if svc, _ := s.Service("default", "echo"); len(svc.Endpoints) != 2 || svc.Endpoints[1].Address != "127.0.0.4" {
		t.Fatalf("published endpoints %+v, want the good edit's", svc.Endpoints)
	}
	if n := logs.count("discovery file rejected; still serving the last good one"); n > 1 {
		t.Errorf("the same rejected content was logged %d times, want at most once", n)
	}
	// Writes to other files only: nothing is read, so nothing is logged or published.
	before := logs.count("discovery file: documents of kinds Weft does not read (it reads Namespace, Service, EndpointSlice, Pod, AuthorizationPolicy) are ignored")
	if before < 1 || before > 2 {
		t.Errorf("ignored-kind warning logged %d times for 2 contents, want 1 or 2", before)
	}
	for i := 0; i < 5; i++ {
		replace(filepath.Join(dir, "other.txt"), []byte{byte(10 + i)})
	}
	replace(path, good) // same content again: read, not parsed
	replace(path, example)
	next("the edit without the Deployment")
	if after := logs.count("discovery file: documents of kinds Weft does not read (it reads Namespace, Service, EndpointSlice, Pod, AuthorizationPolicy) are ignored"); after != before {
		t.Errorf("ignored-kind warnings went from %d to %d for contents without a new ignored document", before, after)
	}
}
