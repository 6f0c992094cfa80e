package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/discovery/kube"
)

// sliceRequests counts the source's requests for EndpointSlices: lists (a relist) and watches.
type sliceRequests struct {
	lists, watches, gone atomic.Int64
	next                 http.RoundTripper
}

func (s *sliceRequests) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/endpointslices") {
		q := r.URL.Query()
		if q.Get("watch") == "true" || q.Get("watch") == "1" {
			s.watches.Add(1)
			if q.Get("sendInitialEvents") == "true" {
				s.lists.Add(1) // a streaming list is a relist too
			}
			resp, err := s.next.RoundTrip(r)
			if err == nil {
				if resp.StatusCode == http.StatusGone {
					s.gone.Add(1)
				} else {
					resp.Body = &goneSniffer{ReadCloser: resp.Body, gone: &s.gone}
				}
			}
			return resp, err
		}
		s.lists.Add(1)
	}
	return s.next.RoundTrip(r)
}

// goneSniffer counts a watch stream that carries the apiserver's 410 (an ERROR event whose Status
// says "too old resource version"), in JSON or protobuf alike (the message is a plain string in both).
type goneSniffer struct {
	io.ReadCloser
	gone *atomic.Int64
	tail []byte
	seen bool
}

func (g *goneSniffer) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if !g.seen && n > 0 {
		buf := append(g.tail, p[:n]...)
		if bytes.Contains(buf, []byte("too old resource version")) {
			g.seen = true
			g.gone.Add(1)
		}
		g.tail = append(g.tail[:0], buf[max(0, len(buf)-32):]...)
	}
	return n, err
}

// published is the latest State the source published.
type published struct {
	mu sync.Mutex
	st *discovery.State
	n  int
}

func (p *published) set(s *discovery.State) { p.mu.Lock(); p.st, p.n = s, p.n+1; p.mu.Unlock() }
func (p *published) get() (*discovery.State, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st, p.n
}

func endpointAddrs(s *discovery.State, ns, name string) []string {
	if s == nil {
		return nil
	}
	svc, ok := s.Service(ns, name)
	if !ok {
		return nil
	}
	var out []string
	for _, e := range svc.Endpoints {
		out = append(out, e.Address)
	}
	slices.Sort(out)
	return out
}

func slice(ns, name string, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

// TestWatchCutAnd410Relist (security.md §6 item 8): weft-control's Kubernetes source follows a
// Service's EndpointSlices through an apiserver restart that cuts every watch, after the cluster's
// resourceVersion moved on past what the source last saw (writes it does not watch): the restarted
// apiserver's watch cache answers the resumed watch with 410 "too old resource version" (seen on the
// wire) and the source relists. Slices are created, updated and deleted right after the restart;
// the published endpoints converge to exactly the apiserver's (listed independently): no phantom
// endpoint, none lost.
func TestWatchCutAnd410Relist(t *testing.T) {
	env := kubeenv.Get(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client
	const ns = "faults-relist"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	if _, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ips := func(third, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("10.44.%d.%d", third, i+1))
		}
		return out
	}
	for i, name := range []string{"web-a", "web-b", "web-c"} {
		if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(ns, name, ips(i, 10)...), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	counter := &sliceRequests{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.next = rt; return counter }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pub published
	src := &kube.Source{Client: client, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Quiet: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, pub.set) }()
	defer func() { cancel(); <-done }()

	// truth is what the apiserver holds, listed with the admin client.
	truth := func() []string {
		l, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, es := range l.Items {
			for _, e := range es.Endpoints {
				out = append(out, e.Addresses...)
			}
		}
		slices.Sort(out)
		return out
	}
	converge := func(what string) {
		t.Helper()
		want := truth()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, _ := pub.get()
			got := endpointAddrs(st, ns, "web")
			if slices.Equal(got, want) {
				t.Logf("%s: %d endpoints, as the apiserver has them", what, len(got))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the source publishes %d endpoints, the apiserver has %d\nphantom: %v\nlost: %v",
					what, len(got), len(want), minus(got, want), minus(want, got))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	converge("first sync")

	// The cut, with a 410: the resourceVersion moves on (ConfigMap writes, not watched by the source)
	// before the restart, so the source's last resourceVersion is older than the restarted watch
	// cache's start. Changes land right after the apiserver is back.
	for i := range 5 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bump-%d", i), Namespace: ns}}
		if _, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	lists := counter.lists.Load()
	start := time.Now()
	env.RestartAPIServer(t)
	restart := time.Since(start)
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice(ns, "web-d", ips(3, 7)...), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.DiscoveryV1().EndpointSlices(ns).Delete(ctx, "web-c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(ns, "web-a", ips(0, 4)...), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	converge("after the watch cut and the 410")
	relists := counter.lists.Load() - lists
	gone := counter.gone.Load()
	t.Logf("watch cut and 410: apiserver down and back in %v; %d watches answered 410 Gone, %d relists of EndpointSlices", restart.Round(time.Millisecond), gone, relists)
	if gone == 0 || relists == 0 {
		t.Errorf("%d watches answered 410 and %d relists after the restart, want both: the test did not exercise a 410 relist", gone, relists)
	}
}

// minus is the elements of a not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
