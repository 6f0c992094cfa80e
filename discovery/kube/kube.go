// Package kube is the Kubernetes source of discovery.State: client-go informers for Services,
// EndpointSlices, Pods and Namespaces, trimmed to the fields the mesh reads.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weftmesh/weft/discovery"
)

// Source watches Kubernetes and publishes a discovery.State after each burst of changes.
type Source struct {
	Client kubernetes.Interface
	// Gateway, if set, watches the Gateway API's HTTPRoutes, GRPCRoutes and ReferenceGrants (gamma.go)
	// when their CRDs are served.
	Gateway gwclient.Interface
	// GatewayRecheck is how often, while the Gateway API CRDs are not served, the API server is asked
	// again (default 30 s); once they are, their routes are watched.
	GatewayRecheck time.Duration
	// Dynamic, when set, watches AuthorizationPolicies (authz.go); nil: no policies. Without the CRD,
	// PolicyPoll (default 30 s) is how often the source looks whether it was installed.
	Dynamic    dynamic.Interface
	PolicyPoll time.Duration
	Logger     *slog.Logger
	// Quiet is how long no change must arrive before a new State is built (default 100 ms); Max caps
	// how long a steady stream of changes can delay one (default 1 s).
	Quiet, Max time.Duration
}

var _ discovery.Source = (*Source)(nil)

// Run starts the informers, waits until every cache has synced (nothing is published before), then
// publishes the first State and one more after each debounced burst of changes. Each State is built
// from the informers' stores as a whole, so after a relist (a dropped watch, 410 Gone) the State holds
// exactly what the API server has: no stale and no phantom endpoints.
func (s *Source) Run(ctx context.Context, publish func(*discovery.State)) error {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	quiet, max := s.Quiet, s.Max
	if quiet <= 0 {
		quiet = 100 * time.Millisecond
	}
	if max <= 0 {
		max = time.Second
	}
	if max < quiet {
		max = quiet
	}

	factory := informers.NewSharedInformerFactory(s.Client, 0)
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	podInf := factory.Core().V1().Pods()
	nsInf := factory.Core().V1().Namespaces()

	// Callbacks only record that something changed; the loop below is the one goroutine that reads
	// the stores and owns the published state.
	dirty := make(chan struct{}, 1)
	mark := func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { mark() },
		UpdateFunc: func(any, any) { mark() },
		DeleteFunc: func(any) { mark() },
	}
	for _, inf := range []struct {
		informer  cache.SharedIndexInformer
		transform cache.TransformFunc
	}{
		{svcInf.Informer(), TrimService},
		{sliceInf.Informer(), TrimEndpointSlice},
		{podInf.Informer(), TrimPod},
		{nsInf.Informer(), TrimNamespace},
	} {
		if err := inf.informer.SetTransform(inf.transform); err != nil {
			return fmt.Errorf("setting informer transform: %w", err)
		}
		if _, err := inf.informer.AddEventHandler(handler); err != nil {
			return fmt.Errorf("adding informer handler: %w", err)
		}
	}

	gw, err := startGateway(s.Gateway, s.Client.Discovery(), handler, log, true)
	if err != nil {
		return err
	}
	recheckEvery := s.GatewayRecheck
	if recheckEvery <= 0 {
		recheckEvery = 30 * time.Second
	}
	var recheck <-chan time.Time
	if s.Gateway != nil && (gw == nil || !gw.complete) {
		recheck = time.After(recheckEvery)
	}
	policies, err := watchPolicies(s.Client, s.Dynamic, handler, log, s.PolicyPoll)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	gw.start(ctx)
	defer func() { gw.shutdown() }() // gw may start later (recheck below)
	policies.start(ctx)
	defer policies.shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("the %v cache never synced", typ)
		}
	}
	if err := gw.waitForSync(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if !policies.synced(ctx) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("the AuthorizationPolicy cache never synced")
	}

	build := func() *discovery.State {
		var objs discovery.Objects
		objs.Services, _ = svcInf.Lister().List(labels.Everything())
		objs.EndpointSlices, _ = sliceInf.Lister().List(labels.Everything())
		objs.Pods, _ = podInf.Lister().List(labels.Everything())
		objs.Namespaces, _ = nsInf.Lister().List(labels.Everything())
		gw.list(&objs)
		objs.AuthorizationPolicies = policies.list()
		return discovery.Build(objs)
	}
	// Drain the marks made during the initial list: the first State already includes them.
	select {
	case <-dirty:
	default:
	}
	st := build()
	discovery.WarnInvalidPolicies(log, st, nil)
	log.Info("kubernetes caches synced", "services", len(st.Services), "pods", len(st.Pods))
	publish(st)

	quietTimer := time.NewTimer(time.Hour)
	quietTimer.Stop()
	var maxTimer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-dirty:
			quietTimer.Reset(quiet)
			if maxTimer == nil {
				maxTimer = time.After(max)
			}
			continue
		case <-quietTimer.C:
		case <-maxTimer:
			quietTimer.Stop()
		case <-recheck:
			// Some Gateway API CRDs were not served: are more of them now?
			recheck = nil
			next, err := startGateway(s.Gateway, s.Client.Discovery(), handler, log, false)
			if err != nil {
				log.Warn("checking for the Gateway API CRDs", "error", err)
			}
			if err != nil || next.kinds() <= gw.kinds() {
				recheck = time.After(recheckEvery)
				continue
			}
			if !next.complete {
				recheck = time.After(recheckEvery)
			}
			gw.shutdown()
			gw = next
			gw.start(ctx)
			if err := gw.waitForSync(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			log.Info("Gateway API CRDs are served now: watching them", "kinds", gw.kinds(), "all", gw.complete)
			mark()
			continue
		}
		maxTimer = nil
		next := build()
		discovery.WarnInvalidPolicies(log, next, st)
		st = next
		publish(st)
	}
}

// Transforms keep only what discovery.Build reads, so the stores stay small with many Pods. Each takes
// and returns the informer's object; anything else (a tombstone) passes through untouched.

func trimMeta(m metav1.ObjectMeta, keepLabels bool) metav1.ObjectMeta {
	out := metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Annotations: m.Annotations}
	if keepLabels {
		out.Labels = m.Labels
	}
	return out
}

// TrimService keeps a Service's identity, annotations, cluster IP and ports.
func TrimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{
		ObjectMeta: trimMeta(s.ObjectMeta, false),
		Spec:       corev1.ServiceSpec{ClusterIP: s.Spec.ClusterIP, Ports: s.Spec.Ports, Type: s.Spec.Type},
	}, nil
}

// TrimEndpointSlice keeps a slice's service label, address type, ports and endpoints.
func TrimEndpointSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	m := trimMeta(es.ObjectMeta, false)
	m.Annotations = nil
	if name, ok := es.Labels[discoveryv1.LabelServiceName]; ok {
		m.Labels = map[string]string{discoveryv1.LabelServiceName: name}
	}
	eps := make([]discoveryv1.Endpoint, len(es.Endpoints))
	for i, e := range es.Endpoints {
		eps[i] = discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, Hostname: e.Hostname, NodeName: e.NodeName, Zone: e.Zone}
		if e.TargetRef != nil {
			eps[i].TargetRef = &corev1.ObjectReference{Kind: e.TargetRef.Kind, Name: e.TargetRef.Name, Namespace: e.TargetRef.Namespace}
		}
	}
	return &discoveryv1.EndpointSlice{ObjectMeta: m, AddressType: es.AddressType, Ports: es.Ports, Endpoints: eps}, nil
}

// TrimPod keeps a Pod's identity, labels, annotations, service account, node, container names and
// ports, and IP.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	trim := func(cs []corev1.Container) []corev1.Container {
		if cs == nil {
			return nil
		}
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i] = corev1.Container{Name: c.Name, Ports: c.Ports}
		}
		return out
	}
	return &corev1.Pod{
		ObjectMeta: trimMeta(p.ObjectMeta, true),
		Spec: corev1.PodSpec{
			ServiceAccountName: p.Spec.ServiceAccountName,
			NodeName:           p.Spec.NodeName,
			InitContainers:     trim(p.Spec.InitContainers),
			Containers:         trim(p.Spec.Containers),
		},
		Status: corev1.PodStatus{PodIP: p.Status.PodIP, Phase: p.Status.Phase},
	}, nil
}

// TrimNamespace keeps a Namespace's name, labels and annotations.
func TrimNamespace(obj any) (any, error) {
	n, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: trimMeta(n.ObjectMeta, true)}, nil
}

// Config loads a client configuration: the kubeconfig file if one is named, else the in-cluster
// configuration, else ~/.kube/config (or $KUBECONFIG).
func Config(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("reading kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	if cfg, err := rest.InClusterConfig(); err == nil {
		return cfg, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if len(rules.Precedence) == 1 {
		if _, err := os.Stat(rules.Precedence[0]); errors.Is(err, os.ErrNotExist) {
			home, _ := os.UserHomeDir()
			return nil, fmt.Errorf("no Kubernetes configuration: not in a cluster and no %s; pass --kubeconfig, or --discovery-file for local mode", filepath.Join(home, ".kube", "config"))
		}
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("reading kubeconfig: %w", err)
	}
	return cfg, nil
}

// Connect makes a client and checks that the API server answers within timeout.
func Connect(ctx context.Context, cfg *rest.Config, timeout time.Duration) (kubernetes.Interface, error) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("making a Kubernetes client: %w", err)
	}
	probe := rest.CopyConfig(cfg)
	probe.Timeout = timeout
	pc, err := kubernetes.NewForConfig(probe)
	if err != nil {
		return nil, fmt.Errorf("making a Kubernetes client: %w", err)
	}
	if _, err := pc.Discovery().ServerVersion(); err != nil {
		return nil, fmt.Errorf("the Kubernetes API server at %s does not answer: %w", cfg.Host, err)
	}
	return client, nil
}
