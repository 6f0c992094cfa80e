package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/weftmesh/weft/deploy/inject"
	"github.com/weftmesh/weft/discovery/kube"
	"github.com/weftmesh/weft/identity"
)

// injectorConfig is the injector part of weft-control's flags. The injector is on when addr is set.
type injectorConfig struct {
	addr    string   // --injector-addr: HTTPS, path /inject
	config  string   // --injector-config: the weft-config ConfigMap's config.yaml
	certDNS []string // --injector-cert-dns: names of the serving certificate (the webhook Service's)
}

// injector is the running admission webhook.
type injector struct {
	srv *http.Server
	lis net.Listener
}

// ReasonNotInjected is the reason of the Warning Event recorded on a Pod's owner when the injector
// admitted the Pod without the proxy because of a problem (a bad config.weft.io annotation).
const ReasonNotInjected = "WeftNotInjected"

// startInjector reads the injector's configuration (a bad file fails here, before anything listens)
// and prepares the webhook: TLS with a serving certificate from the CA's issuer (renewed as the
// issuer rotates), namespace annotations from an informer (then the API, for a namespace the informer
// has not seen yet), and Events on the owners of Pods it could not mesh.
func startInjector(ctx context.Context, c injectorConfig, ca *identity.CA, client kubernetes.Interface, limits serverLimits, log *slog.Logger) (*injector, error) {
	if c.config == "" {
		return nil, errors.New("--injector-addr needs --injector-config (the weft-config ConfigMap's config.yaml)")
	}
	data, err := os.ReadFile(c.config)
	if err != nil {
		return nil, fmt.Errorf("--injector-config: %w", err)
	}
	cfg, err := inject.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("--injector-config %s: %w", c.config, err)
	}
	if ca == nil {
		return nil, errors.New("--injector-addr needs --identity-dir: the injector's serving certificate comes from the CA")
	}
	if client == nil {
		return nil, errors.New("--injector-addr needs Kubernetes (it reads namespaces), not --discovery-file")
	}
	names := append([]string(nil), c.certDNS...)
	if host, _, err := net.SplitHostPort(c.addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			names = append(names, host)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("--injector-cert-dns: give the name the apiserver calls the injector by (weft-injector.<namespace>.svc)")
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	nsInf := factory.Core().V1().Namespaces()
	if err := nsInf.Informer().SetTransform(kube.TrimNamespace); err != nil {
		return nil, err
	}
	lister := nsInf.Lister()
	factory.Start(ctx.Done())

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	go func() { <-ctx.Done(); broadcaster.Shutdown() }()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "weft-injector"})

	wh := &inject.Webhook{
		Config: func() inject.Config {
			cfg := cfg
			if iss := ca.Issuer(); iss != nil {
				cfg.TrustAnchorsPEM = string(iss.BundlePEM())
			}
			return cfg
		},
		Namespace: func(ctx context.Context, name string) (map[string]string, error) {
			if ns, err := lister.Get(name); err == nil {
				return ns.Annotations, nil
			}
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			ns, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return nil, nil
			}
			if err != nil {
				return nil, err
			}
			return ns.Annotations, nil
		},
		Report: func(_ context.Context, pod *corev1.Pod, namespace, problem string) {
			for _, o := range pod.OwnerReferences {
				if o.Controller != nil && *o.Controller {
					ref := &corev1.ObjectReference{APIVersion: o.APIVersion, Kind: o.Kind, Name: o.Name, UID: o.UID, Namespace: namespace}
					recorder.Eventf(ref, corev1.EventTypeWarning, ReasonNotInjected, "a Pod was started without the Weft proxy: %s", problem)
					return
				}
			}
		},
		Log: log,
	}
	mux := http.NewServeMux()
	mux.Handle(inject.WebhookPath, wh)

	base := ca.ServerTLSConfig(identity.ID{}, names...)
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := base.GetConfigForClient(hello)
			if err != nil {
				log.Warn("injector: no serving certificate", "err", err)
				return nil, err
			}
			// The apiserver authenticates the injector, not the other way round.
			c.ClientAuth, c.ClientCAs = tls.NoClientCert, nil
			c.MinVersion = tls.VersionTLS12
			c.NextProtos = []string{"h2", "http/1.1"}
			return c, nil
		},
	}
	lis, err := listen("--injector-addr", c.addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: limits.handshake, // the TLS handshake too
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       limits.idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return &injector{srv: srv, lis: tls.NewListener(lis, tlsConfig)}, nil
}
