package kubeauth

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/weftmesh/weft/identity"
)

func typesUID(s string) types.UID { return types.UID(s) }

// MaterialFromSecret reads the CA material from a Secret whose keys are the file names of a CA
// directory (ca.crt, issuer.crt, issuer.key), e.g. made by
// `kubectl create secret generic weft-identity --from-file=DIR/ca.crt --from-file=DIR/issuer.crt --from-file=DIR/issuer.key`.
func MaterialFromSecret(s *corev1.Secret) (identity.Material, error) {
	m := identity.Material{Bundle: s.Data[identity.BundleFile], IssuerCert: s.Data[identity.IssuerCertFile], IssuerKey: s.Data[identity.IssuerKeyFile]}
	for key, v := range map[string][]byte{identity.BundleFile: m.Bundle, identity.IssuerCertFile: m.IssuerCert, identity.IssuerKeyFile: m.IssuerKey} {
		if len(v) == 0 {
			return identity.Material{}, fmt.Errorf("secret %s/%s has no key %q (it needs %s, %s and %s)", s.Namespace, s.Name, key, identity.BundleFile, identity.IssuerCertFile, identity.IssuerKeyFile)
		}
	}
	return m, nil
}

// LoadSecret reads the CA Secret and makes it ca's issuer.
func LoadSecret(ctx context.Context, client kubernetes.Interface, namespace, name string, ca *identity.CA) error {
	s, err := client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the CA secret %s/%s: %w", namespace, name, err)
	}
	m, err := MaterialFromSecret(s)
	if err != nil {
		return err
	}
	if err := ca.Load(m); err != nil {
		return fmt.Errorf("CA secret %s/%s: %w", namespace, name, err)
	}
	return nil
}

// WatchSecret keeps ca's issuer in step with the CA Secret until ctx ends (issuer rotation without a
// restart). Material that fails its checks is logged and ignored; the current issuer stays.
func WatchSecret(ctx context.Context, client kubernetes.Interface, namespace, name string, ca *identity.CA, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
	inf := factory.Core().V1().Secrets().Informer()
	load := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		m, err := MaterialFromSecret(s)
		if err == nil {
			err = ca.Load(m)
		}
		if err != nil {
			log.Warn("CA secret rejected; keeping the current issuer", "secret", namespace+"/"+name, "err", err)
			return
		}
		log.Info("issuer loaded", "secret", namespace+"/"+name, "issuer", ca.Issuer().Certificate().Subject.CommonName, "not_after", ca.Issuer().Certificate().NotAfter)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    load,
		UpdateFunc: func(_, obj any) { load(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
	return nil
}
