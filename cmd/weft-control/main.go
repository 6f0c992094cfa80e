// Command weft-control is the Weft control plane: it watches Kubernetes (or a file, in local mode)
// and serves xDS to every proxy of the mesh.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/kubernetes"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/deploy/inject"
	"github.com/weftmesh/weft/discovery"
	"github.com/weftmesh/weft/discovery/kube"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/xds"
	"github.com/weftmesh/weft/xds/server"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "weft-control:", err)
		os.Exit(1)
	}
}

type config struct {
	kubeconfig    string
	discoveryFile string
	xdsAddr       string
	adminAddr     string
	trustDomain   string
	trustBundle   string
	debounce      time.Duration
	debounceMax   time.Duration
	logLevel      string
	identity      identityConfig
	injector      injectorConfig
	limits        serverLimits // not flags: defaultLimits, shortened by tests
}

// serverLimits are the timeouts and caps of weft-control's ports (xDS 15010, mTLS 15012, admin 15014,
// injector 15017).
type serverLimits struct {
	// handshake bounds the start of a connection: on the gRPC ports the TLS handshake and the HTTP/2
	// preface (grpc.ConnectionTimeout), on the HTTP ports the TLS handshake and the request head
	// (ReadHeaderTimeout). A connection that sends nothing, or half a preface, is closed after it.
	handshake time.Duration
	// idle closes a connection without a request or stream for this long (gRPC: MaxConnectionIdle,
	// GOAWAY then close; HTTP: IdleTimeout between requests).
	idle time.Duration
}

var defaultLimits = serverLimits{handshake: 10 * time.Second, idle: 5 * time.Minute}

const (
	// maxRecvMsgBytes caps one gRPC message on the xDS and mTLS ports (DiscoveryRequest, Certify): gRPC's
	// default, said here. A larger one is refused with ResourceExhausted.
	maxRecvMsgBytes = 4 << 20
	// maxHeaderBytes caps a request head on the admin and injector ports (431 above it).
	maxHeaderBytes = 64 << 10
	// maxAdminBodyBytes caps a request body on the admin port (it takes none).
	maxAdminBodyBytes = 64 << 10
)

func (l serverLimits) orDefault() serverLimits {
	if l.handshake <= 0 {
		l.handshake = defaultLimits.handshake
	}
	if l.idle <= 0 {
		l.idle = defaultLimits.idle
	}
	return l
}

// grpcServerOptions are the options of both gRPC servers (the plaintext xDS port and the mTLS port).
func (l serverLimits) grpcServerOptions() []grpc.ServerOption {
	return append(server.GRPCServerOptions(),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.idle}),
		grpc.ConnectionTimeout(l.handshake),
		grpc.MaxRecvMsgSize(maxRecvMsgBytes),
		grpc.MaxConcurrentStreams(1<<20),
	)
}

func newRootCmd() *cobra.Command {
	var c config
	root := &cobra.Command{
		Use:           "weft-control",
		Short:         "The Weft control plane: Kubernetes in, xDS out",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Version,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, c)
		},
	}
	f := root.Flags()
	f.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, then ~/.kube/config)")
	f.StringVar(&c.discoveryFile, "discovery-file", "", "local mode: read Services, EndpointSlices and Pods from this multi-document YAML file (watched) instead of Kubernetes")
	f.StringVar(&c.xdsAddr, "xds-addr", "127.0.0.1:15010", "address of the plaintext xDS server (loopback unless you mean it)")
	f.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:15014", "address of the admin HTTP server (/ready, /metrics, /debug/)")
	f.StringVar(&c.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
	f.StringVar(&c.trustBundle, "trust-bundle", "", "PEM file of CA certificates to serve as the SDS secret ROOTCA")
	f.DurationVar(&c.debounce, "debounce", 100*time.Millisecond, "quiet time after a Kubernetes change before a new configuration is built")
	f.DurationVar(&c.debounceMax, "debounce-max", time.Second, "longest a stream of Kubernetes changes may delay a new configuration")
	f.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&c.identity.addr, "identity-addr", ":15012", "address of the mTLS port: the Certify service and xDS for proxies with workload certificates (needs --identity-dir)")
	f.StringVar(&c.identity.dir, "identity-dir", "", "CA directory (what weft identity bootstrap writes): turns the identity CA on (issuer reloaded on change)")
	f.StringVar(&c.identity.tokens, "identity-tokens", "", "local mode: file of token,namespace,serviceaccount lines that stands in for TokenReview")
	f.DurationVar(&c.identity.leaf, "identity-leaf-lifetime", 24*time.Hour, "lifetime of the workload certificates the CA issues (proxies renew at about 70% of it)")
	f.StringVar(&c.injector.addr, "injector-addr", "", "address of the proxy injector, the mutating admission webhook (HTTPS, path /inject; :15017 in a cluster); off when empty; needs --identity-dir and Kubernetes")
	f.StringVar(&c.injector.config, "injector-config", "", "the injector's proxy defaults: config.yaml of the weft-config ConfigMap")
	f.StringSliceVar(&c.injector.certDNS, "injector-cert-dns", nil, "DNS names of the injector's serving certificate: the webhook Service's, weft-injector.<namespace>.svc (repeatable or comma-separated)")
	root.SetVersionTemplate(buildinfo.String("weft-control") + "\n")
	return root
}

func run(ctx context.Context, c config) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	if c.debounce <= 0 || c.debounceMax < c.debounce {
		return fmt.Errorf("--debounce %v / --debounce-max %v: want 0 < debounce <= debounce-max", c.debounce, c.debounceMax)
	}
	if c.kubeconfig != "" && c.discoveryFile != "" {
		return errors.New("--kubeconfig and --discovery-file both say where Services come from: choose one (--discovery-file is local mode, with no cluster)")
	}
	c.limits = c.limits.orDefault()
	if c.identity.tokens != "" && c.identity.dir == "" {
		return errors.New("--identity-tokens stands in for TokenReview of the identity CA, which is off: add --identity-dir (weft identity bootstrap --out DIR makes one)")
	}

	// With the identity CA on, inbound is strict (mutual TLS only) unless a workload opts out.
	srv := server.New(server.Options{Logger: log, Translate: xds.Options{TrustDomain: c.trustDomain, Strict: c.identity.dir != ""}})
	if c.trustBundle != "" {
		pem, err := os.ReadFile(c.trustBundle)
		if err != nil {
			return fmt.Errorf("--trust-bundle: %w", err)
		}
		if err := srv.SetTrustBundle(pem); err != nil {
			return fmt.Errorf("--trust-bundle %s: %w", c.trustBundle, err)
		}
	}

	var src discovery.Source
	var kubeClient kubernetes.Interface
	if c.discoveryFile != "" {
		// Load once up front so a bad file is reported before anything listens.
		if _, err := discovery.LoadFile(c.discoveryFile); err != nil {
			return err
		}
		src = &discovery.FileSource{Path: c.discoveryFile, Logger: log}
	} else {
		cfg, err := kube.Config(c.kubeconfig)
		if err != nil {
			return err
		}
		client, err := kube.Connect(ctx, cfg, 10*time.Second)
		if err != nil {
			return fmt.Errorf("%w (check --kubeconfig, or use --discovery-file for local mode)", err)
		}
		src = &kube.Source{Client: client, Logger: log, Quiet: c.debounce, Max: c.debounceMax}
		kubeClient = client
	}

	xdsLis, err := listen("--xds-addr", c.xdsAddr)
	if err != nil {
		return err
	}
	adminLis, err := listen("--admin-addr", c.adminAddr)
	if err != nil {
		xdsLis.Close()
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var ident *identityPlane
	if c.identity.dir != "" {
		if c.trustBundle != "" {
			xdsLis.Close()
			adminLis.Close()
			return errors.New("--trust-bundle and --identity-dir both give the trust bundle: choose one")
		}
		if ident, err = startIdentity(ctx, c.identity, c.trustDomain, kubeClient, srv, c.limits, log); err != nil {
			xdsLis.Close()
			adminLis.Close()
			return err
		}
	}

	var inj *injector
	if c.injector.addr != "" {
		var ca *identity.CA
		if ident != nil {
			ca = ident.ca
		}
		if inj, err = startInjector(ctx, c.injector, ca, kubeClient, c.limits, log); err != nil {
			xdsLis.Close()
			adminLis.Close()
			if ident != nil {
				ident.lis.Close()
			}
			return err
		}
	}

	g := grpc.NewServer(c.limits.grpcServerOptions()...)
	srv.Register(g)
	tap := newTapRelay(kubeClient, c.trustDomain, log) // Tap.Observe for weft tap/top (tap.go)
	tap.register(g)
	if ident != nil {
		tap.ca = ident.ca
		tap.register(ident.g)
	}
	httpSrv := &http.Server{
		Handler:           adminHandler(srv.AdminHandler()),
		ReadHeaderTimeout: c.limits.handshake,
		IdleTimeout:       c.limits.idle,
		MaxHeaderBytes:    maxHeaderBytes,
	}

	errc := make(chan error, 5)
	go func() { errc <- g.Serve(xdsLis) }()
	if ident != nil {
		go func() { errc <- ident.g.Serve(ident.lis) }()
		log.Info("identity CA serving", "addr", ident.lis.Addr().String(), "trust_domain", c.trustDomain)
	}
	go func() {
		if err := httpSrv.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	if inj != nil {
		go func() {
			if err := inj.srv.Serve(inj.lis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
		log.Info("injector serving", "addr", inj.lis.Addr().String(), "path", inject.WebhookPath, "cert_names", c.injector.certDNS)
	}
	go func() { errc <- src.Run(ctx, tap.publishing(srv.Update)) }()
	log.Info("weft-control serving", "xds", xdsLis.Addr().String(), "admin", adminLis.Addr().String(), "mode", mode(c))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = httpSrv.Shutdown(shutdown)
	if inj != nil {
		_ = inj.srv.Shutdown(shutdown)
	}
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		if ident != nil {
			ident.g.GracefulStop()
		}
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-shutdown.Done():
		g.Stop()
		if ident != nil {
			ident.g.Stop()
		}
	}
	return runErr
}

func mode(c config) string {
	if c.discoveryFile != "" {
		return "local (" + c.discoveryFile + ")"
	}
	return "kubernetes"
}

func listen(flag, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("%s %s: address already in use (is another weft-control running? pick another address with %s)", flag, addr, flag)
		}
		return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	return l, nil
}

// adminHandler serves /ready and /metrics to whoever reaches --admin-addr (the kubelet's probes and
// Prometheus come from the pod network), /debug/connections too (which proxies are connected, with
// their SPIFFE IDs and certificate expiry: what `weft check --proxy` reads through the apiserver's
// service and pod proxies, which come from the apiserver's address), and everything else, the rest of
// /debug/ (the mesh's whole state, pprof), to loopback clients only: inside the pod, or through
// kubectl port-forward, which arrives on loopback.
func adminHandler(h http.Handler) http.Handler {
	h = http.MaxBytesHandler(h, maxAdminBodyBytes)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !publicAdminPath[r.URL.Path] && !fromLoopback(r) {
			http.Error(w, r.URL.Path+" is served to loopback clients only (use kubectl port-forward to reach it)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

var publicAdminPath = map[string]bool{"/ready": true, "/metrics": true, "/debug/connections": true}

// fromLoopback reports whether the request's peer (never a header) is a loopback address.
func fromLoopback(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}
