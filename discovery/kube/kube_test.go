package kube

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/discovery"
)

func TestMain(m *testing.M) { os.Exit(kubeenv.Main(m)) }

// latest records what the source published, for polling.
type latest struct {
	mu sync.Mutex
	st *discovery.State
	n  int
}

func (l *latest) publish(s *discovery.State) { l.mu.Lock(); l.st = s; l.n++; l.mu.Unlock() }

func (l *latest) waitFor(t *testing.T, what string, cond func(*discovery.State) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		st := l.st
		l.mu.Unlock()
		if st != nil && cond(st) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func addresses(s *discovery.State, ns, name string) []string {
	svc, ok := s.Service(ns, name)
	if !ok {
		return nil
	}
	var out []string
	for _, e := range svc.Endpoints {
		out = append(out, e.Address)
	}
	return out
}

func sliceOf(ns, svc, name string, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To[int32](8080)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

func TestSourceFollowsAPIServer(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client
	ns := "kube-src"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 8080, AppProtocol: ptr.To("grpc")}}},
	}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, sliceOf(ns, "echo", "echo-a", "10.1.0.1", "10.1.0.2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var l latest
	src := &Source{Client: c, Quiet: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, l.publish) }()
	defer func() { cancel(); <-done }()

	// The first State is published after sync and is complete.
	l.waitFor(t, "first state", func(s *discovery.State) bool { return s != nil })
	l.mu.Lock()
	first := l.st
	l.mu.Unlock()
	if got := addresses(first, ns, "echo"); len(got) != 2 {
		t.Fatalf("first published state has endpoints %v, want both (nothing is published before sync)", got)
	}
	if s, _ := first.Service(ns, "echo"); s.ClusterIP == "" || s.Ports[0].AppProtocol != "grpc" {
		t.Errorf("service = %+v", s)
	}

	// Scale up with a second slice, then down.
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, sliceOf(ns, "echo", "echo-b", "10.1.0.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "3 endpoints", func(s *discovery.State) bool { return len(addresses(s, ns, "echo")) == 3 })
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Update(ctx, sliceOf(ns, "echo", "echo-a", "10.1.0.1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "10.1.0.2 gone", func(s *discovery.State) bool { return len(addresses(s, ns, "echo")) == 2 })

	// Pods: proxy detection and trimming.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-0", Namespace: ns, ManagedFields: nil},
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{
			{Name: "app", Image: "app", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
			{Name: discovery.ProxyContainerName, Image: "weft-proxy"},
		}},
	}
	if _, err := c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "pod with proxy", func(s *discovery.State) bool {
		p, ok := s.Pod(ns, "echo-0")
		return ok && p.HasProxy && len(p.Ports) == 1 && p.Ports[0].Port == 8080
	})

	// Restart the API server (every watch drops, informers relist) and change things right after: the
	// State follows and keeps no stale endpoint.
	env.RestartAPIServer(t)
	if err := c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "echo-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "only 10.1.0.1 after restart", func(s *discovery.State) bool {
		a := addresses(s, ns, "echo")
		return len(a) == 1 && a[0] == "10.1.0.1"
	})
	if err := c.CoreV1().Services(ns).Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	l.waitFor(t, "service gone", func(s *discovery.State) bool { _, ok := s.Service(ns, "echo"); return !ok })
}
