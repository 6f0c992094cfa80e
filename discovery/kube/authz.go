package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/weftmesh/weft/discovery/authz"
)

// PolicyResource is the AuthorizationPolicy CRD's resource.
var PolicyResource = schema.GroupVersionResource{Group: authz.Group, Version: authz.Version, Resource: authz.Resource}

// policyWatch watches AuthorizationPolicies with a dynamic informer whose transform turns each object
// into an *authz.AuthorizationPolicy. Without the CRD nothing waits for it: discovery works without
// policies, and the informer starts once the API server serves the CRD (checked every poll; a
// reflector started without it would log a failed list at each retry).
type policyWatch struct {
	factory  dynamicinformer.DynamicSharedInformerFactory
	informer cache.SharedIndexInformer
	client   kubernetes.Interface
	log      *slog.Logger
	poll     time.Duration
	// installed: the CRD was served when the watch started; the first State then waits for its sync.
	installed bool

	mu               sync.Mutex
	started, stopped bool
	stop, done       chan struct{} // shutdown closes stop; the poller closes done when it ends
}

// watchPolicies sets up the watch, or returns nil when dyn is nil (policies off).
func watchPolicies(client kubernetes.Interface, dyn dynamic.Interface, handler cache.ResourceEventHandler, log *slog.Logger, poll time.Duration) (*policyWatch, error) {
	if dyn == nil {
		return nil, nil
	}
	if poll <= 0 {
		poll = 30 * time.Second
	}
	w := &policyWatch{installed: true, client: client, log: log, poll: poll}
	if _, err := client.Discovery().ServerResourcesForGroupVersion(authz.APIVersion); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("looking for the AuthorizationPolicy CRD (%s): %w", authz.APIVersion, err)
		}
		w.installed = false
		log.Warn("the AuthorizationPolicy CRD (authorizationpolicies.policy.weft.io) is not installed: no authorization policies until it is (weft install installs it)")
	}
	w.factory = dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	w.informer = w.factory.ForResource(PolicyResource).Informer()
	if err := w.informer.SetTransform(PolicyFromUnstructured); err != nil {
		return nil, fmt.Errorf("setting informer transform: %w", err)
	}
	if _, err := w.informer.AddEventHandler(handler); err != nil {
		return nil, fmt.Errorf("adding informer handler: %w", err)
	}
	return w, nil
}

func (w *policyWatch) start(ctx context.Context) {
	if w == nil {
		return
	}
	if w.installed {
		w.startInformer(ctx)
		return
	}
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTicker(w.poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-w.stop:
				return
			case <-t.C:
			}
			if _, err := w.client.Discovery().ServerResourcesForGroupVersion(authz.APIVersion); err == nil {
				w.log.Info("the AuthorizationPolicy CRD is installed: watching authorization policies")
				w.startInformer(ctx)
				return
			}
		}
	}()
}

func (w *policyWatch) startInformer(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.started = true
		w.factory.Start(ctx.Done())
	}
}

// shutdown stops the poller and the informer.
func (w *policyWatch) shutdown() {
	if w == nil {
		return
	}
	if w.done != nil {
		close(w.stop)
		<-w.done
	}
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.factory.Shutdown()
}

// synced waits for the first list when the CRD was installed at the start.
func (w *policyWatch) synced(ctx context.Context) bool {
	if w == nil || !w.installed {
		return true
	}
	return cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced)
}

func (w *policyWatch) list() []*authz.AuthorizationPolicy {
	if w == nil {
		return nil
	}
	var out []*authz.AuthorizationPolicy
	for _, o := range w.informer.GetStore().List() {
		if p, ok := o.(*authz.AuthorizationPolicy); ok {
			out = append(out, p)
		}
	}
	return out
}

// PolicyFromUnstructured is the policy informer's transform: an unstructured AuthorizationPolicy
// becomes an *authz.AuthorizationPolicy (anything else, a tombstone, passes through). An object that
// does not convert (the CRD's schema makes that unlikely) becomes a policy whose action is not valid,
// so that it fails closed (discovery.AuthorizationPolicy) instead of vanishing.
func PolicyFromUnstructured(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	var p authz.AuthorizationPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p); err != nil {
		p = authz.AuthorizationPolicy{Spec: authz.Spec{Action: authz.Action("unreadable object: " + err.Error())}}
	}
	p.ObjectMeta = metav1.ObjectMeta{Name: u.GetName(), Namespace: u.GetNamespace(), UID: u.GetUID(), ResourceVersion: u.GetResourceVersion()}
	return &p, nil
}
