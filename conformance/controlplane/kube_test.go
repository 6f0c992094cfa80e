package controlplane

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/discovery/kube"
	"github.com/weftmesh/weft/xds/server"
)

func echoSlice(port int, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To(int32(port))}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

// The API server refuses loopback addresses in EndpointSlices, so here the pods have addresses in
// 10.254.0.0/24 and the test client's dialer plays the pod network: it carries 10.254.0.N to the
// backend listening on 127.0.0.N. Everything else (xDS, the addresses the client is told) is real.
func podNetwork(ctx context.Context, addr string) (net.Conn, error) {
	if rest, ok := strings.CutPrefix(addr, "10.254.0."); ok {
		addr = "127.0.0." + rest
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// TestGRPCXDSClientKubernetes: the same as local mode, but discovery watches a real kube-apiserver:
// create a Service and its EndpointSlice, scale down and up, restart the API server, delete.
func TestGRPCXDSClientKubernetes(t *testing.T) {
	env := kubeenv.Get(t)
	port := backends(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 8080, AppProtocol: ptr.To("grpc")}}},
	}
	if _, err := c.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slices := c.DiscoveryV1().EndpointSlices("default")
	if _, err := slices.Create(ctx, echoSlice(port, "10.254.0.2", "10.254.0.3"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setEndpoints := func(ips ...string) {
		t.Helper()
		cur, err := slices.Get(ctx, "echo-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		next := echoSlice(port, ips...)
		next.ResourceVersion = cur.ResourceVersion
		if _, err := slices.Update(ctx, next, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	srv := server.New(server.Options{})
	done := make(chan error, 1)
	go func() {
		done <- (&kube.Source{Client: c, Quiet: 20 * time.Millisecond, Max: 200 * time.Millisecond}).Run(ctx, srv.Update)
	}()
	defer func() { cancel(); <-done }()

	conn := xdsClient(t, controlPlane(t, srv), grpc.WithContextDialer(podNetwork))
	waitSpread(t, conn, "127.0.0.2", "127.0.0.3")

	setEndpoints("10.254.0.2")
	waitOnly(t, conn, "127.0.0.2")
	setEndpoints("10.254.0.2", "10.254.0.3")
	waitSpread(t, conn, "127.0.0.2", "127.0.0.3")

	// Every watch drops and the informers relist; a change made right after must arrive, and the
	// endpoint removed by it must not come back.
	env.RestartAPIServer(t)
	setEndpoints("10.254.0.3")
	waitOnly(t, conn, "127.0.0.3")

	// Deleting the Service removes its listener, cluster and endpoints: RPCs stop working.
	if err := c.CoreV1().Services("default").Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := call(t, conn); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("RPCs still succeed after the Service was deleted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := srv.State().Service("default", "echo"); ok {
		t.Error("deleted Service still in the served state")
	}
}
