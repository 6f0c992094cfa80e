package kube

import (
	"context"
	"fmt"
	"log/slog"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	weftdiscovery "github.com/weftmesh/weft/discovery"
)

// The Gateway API routes of the mesh profile: HTTPRoutes, GRPCRoutes and ReferenceGrants, watched
// when their CRDs are served. Without the CRDs discovery runs on without routes (and says so once).

// gatewayGroupVersion is the Gateway API version weft reads.
const gatewayGroupVersion = gwv1.GroupName + "/v1"

// gatewayWatch is the informers of the Gateway API kinds the API server serves.
type gatewayWatch struct {
	factory gwinformers.SharedInformerFactory
	http    cache.SharedIndexInformer
	grpc    cache.SharedIndexInformer
	grants  cache.SharedIndexInformer
	// complete: every kind is served (no need to ask again).
	complete bool
	// stop ends the informers (Shutdown waits for them to end).
	stop context.CancelFunc
}

// kinds is how many of the kinds w watches; 0 for nil.
func (w *gatewayWatch) kinds() int {
	n := 0
	if w != nil {
		for _, inf := range []cache.SharedIndexInformer{w.http, w.grpc, w.grants} {
			if inf != nil {
				n++
			}
		}
	}
	return n
}

// servedGatewayKinds lists the resources of gateway.networking.k8s.io/v1 the API server serves; none
// (and no error) when the group is not installed.
func servedGatewayKinds(d discovery.DiscoveryInterface) (map[string]bool, error) {
	list, err := d.ServerResourcesForGroupVersion(gatewayGroupVersion)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("asking the API server for %s: %w", gatewayGroupVersion, err)
	}
	served := map[string]bool{}
	for _, r := range list.APIResources {
		served[r.Name] = true
	}
	return served, nil
}

// startGateway makes the informers of the Gateway API kinds that are served, with handler; nil when
// none is. With warn, it logs what is missing.
func startGateway(client gwclient.Interface, disc discovery.DiscoveryInterface, handler cache.ResourceEventHandler, log *slog.Logger, warn bool) (*gatewayWatch, error) {
	if client == nil {
		return nil, nil
	}
	served, err := servedGatewayKinds(disc)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, r := range []string{"httproutes", "grpcroutes", "referencegrants"} {
		if !served[r] {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 && warn {
		log.Warn("Gateway API CRDs are not installed; routes are ignored until they are (weft install --crds installs them)", "missing", missing, "group_version", gatewayGroupVersion)
	}
	if len(missing) == 3 {
		return nil, nil
	}
	w := &gatewayWatch{factory: gwinformers.NewSharedInformerFactory(client, 0), complete: len(missing) == 0}
	v1 := w.factory.Gateway().V1()
	if served["httproutes"] {
		w.http = v1.HTTPRoutes().Informer()
	}
	if served["grpcroutes"] {
		w.grpc = v1.GRPCRoutes().Informer()
	}
	if served["referencegrants"] {
		w.grants = v1.ReferenceGrants().Informer()
	}
	for _, inf := range []cache.SharedIndexInformer{w.http, w.grpc, w.grants} {
		if inf == nil {
			continue
		}
		if err := inf.SetTransform(dropManagedFields); err != nil {
			return nil, fmt.Errorf("setting informer transform: %w", err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("adding informer handler: %w", err)
		}
	}
	return w, nil
}

// dropManagedFields keeps a Gateway API object whole but for its managed fields.
func dropManagedFields(obj any) (any, error) {
	switch o := obj.(type) {
	case *gwv1.HTTPRoute:
		o.ManagedFields = nil
	case *gwv1.GRPCRoute:
		o.ManagedFields = nil
	case *gwv1.ReferenceGrant:
		o.ManagedFields = nil
	}
	return obj, nil
}

func (w *gatewayWatch) start(ctx context.Context) {
	if w != nil {
		ctx, w.stop = context.WithCancel(ctx)
		w.factory.Start(ctx.Done())
	}
}

// shutdown stops the informers and waits until they have.
func (w *gatewayWatch) shutdown() {
	if w != nil && w.stop != nil {
		w.stop()
		w.factory.Shutdown()
	}
}

// waitForSync reports which cache did not sync, if any.
func (w *gatewayWatch) waitForSync(ctx context.Context) error {
	if w == nil {
		return nil
	}
	for typ, ok := range w.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("the %v cache never synced", typ)
		}
	}
	return nil
}

// list adds the watched objects to objs.
func (w *gatewayWatch) list(objs *weftdiscovery.Objects) {
	if w == nil {
		return
	}
	v1 := w.factory.Gateway().V1()
	if w.http != nil {
		objs.HTTPRoutes, _ = v1.HTTPRoutes().Lister().List(labels.Everything())
	}
	if w.grpc != nil {
		objs.GRPCRoutes, _ = v1.GRPCRoutes().Lister().List(labels.Everything())
	}
	if w.grants != nil {
		objs.ReferenceGrants, _ = v1.ReferenceGrants().Lister().List(labels.Everything())
	}
	// The listers give pointers into the caches: Build copies what it keeps and modifies nothing.
}
