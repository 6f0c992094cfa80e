package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/cmd/internal/buildinfo"
	"github.com/weftmesh/weft/dataplane"
	"github.com/weftmesh/weft/dataplane/admin"
	"github.com/weftmesh/weft/dataplane/certfile"
	"github.com/weftmesh/weft/dataplane/config"
	"github.com/weftmesh/weft/dataplane/proxy"
	"github.com/weftmesh/weft/dataplane/sds"
	"github.com/weftmesh/weft/dataplane/xdsclient"
	"github.com/weftmesh/weft/identity/spiffeid"
	"github.com/weftmesh/weft/identity/workload"
)

type runOptions struct {
	xdsAddr, podName, namespace, podIP, serviceAccount  string
	deployment                                          string
	adminAddr, httpProxyAddr, outboundAddr, inboundAddr string
	certDir, logLevel                                   string
	drainTimeout                                        time.Duration
	// identity from the control plane (Certify on :15012)
	identityAddr, tokenFile, trustBundleFile, trustDomain string
	trustAnchors                                          string
	xdsTLS                                                bool
	tapIdentity                                           string // --tap-identity (tap.go)
	// local mode (weft demo): inbound ports bound on the pod IP, the app on another loopback address
	inboundBindPodIP bool
	appIP            string
	// SDS for an Envoy in the same pod (off when empty)
	sdsSocket string
	// HTTP/2 client connections through the frame relay (dataplane/proxy/h2relay.go)
	h2Relay bool
	// the Go runtime's memory settings (memory.go)
	gcPercent    int
	gcPercentSet bool
	memoryLimit  string
	// tracing (tracing.go): the OTLP/HTTP collector (off when empty) and the sampling rate of new traces
	otlpAddr, traceSampling string
	// not flags: the admin server's read-header and idle timeouts (defaults below; tests shorten them)
	adminHeaderTimeout, adminIdleTimeout time.Duration
}

// The admin server's timeouts: a connection whose request head is not whole 10 s after it opened (or
// after its first byte, between requests) is closed, as is one that sends nothing for 2 minutes
// between requests (the kubelet's probes and Prometheus reconnect or come back well within it).
const (
	defaultAdminHeaderTimeout = 10 * time.Second
	defaultAdminIdleTimeout   = 2 * time.Minute
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newRunCmd() *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the sidecar proxy (the default command)",
		Args:  noArgs,
	}
	f := cmd.Flags()
	cmd.RunE = func(c *cobra.Command, _ []string) error {
		o.gcPercentSet = f.Changed("gc-percent") // f's flags are the root's too: set by either
		ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return run(ctx, o)
	}
	f.StringVar(&o.xdsAddr, "xds-addr", envOr("XDS_ADDR", ""), "control plane xDS address host:port (env XDS_ADDR)")
	f.StringVar(&o.podName, "pod-name", envOr("POD_NAME", ""), "this pod's name (env POD_NAME)")
	f.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", ""), "this pod's namespace (env POD_NAMESPACE)")
	f.StringVar(&o.deployment, "deployment", envOr("POD_DEPLOYMENT", ""), "this pod's Deployment, the deployment label of its metrics (env POD_DEPLOYMENT; default: from the pod name, <deployment>-<hash>-<suffix>)")
	f.StringVar(&o.podIP, "pod-ip", envOr("POD_IP", ""), "this pod's IP (env POD_IP)")
	f.StringVar(&o.serviceAccount, "service-account", envOr("SERVICE_ACCOUNT", ""), "this pod's service account (env SERVICE_ACCOUNT)")
	f.StringVar(&o.adminAddr, "admin-addr", "0.0.0.0:15000", "admin server address (/ready, /live, /metrics to anyone; /config_dump, /clusters, /xds, /shutdown to loopback clients only)")
	f.StringVar(&o.httpProxyAddr, "http-proxy-addr", "", "explicit HTTP proxy address (off when empty; 127.0.0.1:4140 by convention)")
	f.StringVar(&o.outboundAddr, "outbound-addr", "0.0.0.0:15001", "transparent outbound listener address (off when empty)")
	f.StringVar(&o.inboundAddr, "inbound-addr", "0.0.0.0:15006", "inbound listener address (off when empty)")
	f.StringVar(&o.certDir, "cert-dir", "", "directory with cert.pem, key.pem and ca.pem for mTLS (reloaded on change); plaintext only when neither this nor --identity-addr is set")
	f.StringVar(&o.identityAddr, "identity-addr", envOr("IDENTITY_ADDR", ""), "weft-control's Certify service host:port (15012) to get and renew the workload certificate (env IDENTITY_ADDR)")
	f.StringVar(&o.tokenFile, "token-file", "/var/run/secrets/weft/token", "projected ServiceAccount token for --identity-addr")
	f.StringVar(&o.trustBundleFile, "trust-bundle-file", "/var/run/secrets/weft/ca.crt", "trust anchors (PEM) for --identity-addr")
	f.StringVar(&o.trustAnchors, "trust-anchors", envOr("TRUST_ANCHORS", ""), "trust anchors for --identity-addr as PEM text, in place of --trust-bundle-file (env TRUST_ANCHORS, set by the injector)")
	f.StringVar(&o.trustDomain, "trust-domain", envOr("TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (env TRUST_DOMAIN)")
	f.StringVar(&o.tapIdentity, "tap-identity", envOr("TAP_IDENTITY", ""), "SPIFFE ID that may tap this proxy over mutual TLS on the admin port (default: weft-control's, spiffe://<trust-domain>/ns/<namespace of --xds-addr>/sa/weft-control; env TAP_IDENTITY)")
	f.BoolVar(&o.xdsTLS, "xds-tls", envOr("XDS_TLS", "") == "true", "talk xDS over mTLS with the workload certificate (control plane port 15012; env XDS_TLS=true)")
	f.BoolVar(&o.inboundBindPodIP, "inbound-bind-pod-ip", false, "local mode, no iptables: bind <pod-ip>:<port> for each port of the inbound listener and serve it as if redirected")
	f.StringVar(&o.appIP, "app-ip", "", "local mode: the address the application listens on, in place of 127.0.0.1 in the inbound clusters")
	f.StringVar(&o.sdsSocket, "sds-socket", envOr("SDS_SOCKET", ""), "serve the workload certificate (default) and trust bundle (ROOTCA) over SDS on this Unix socket, mode 0660, for an Envoy in the pod (off when empty; env SDS_SOCKET)")
	f.BoolVar(&o.h2Relay, "h2-relay", envOr("WEFT_H2_RELAY", "true") != "false", "serve HTTP/2 and gRPC client connections (h2c, and mTLS with ALPN h2) with the frame relay (a goroutine per connection, flow control end to end) instead of net/http's HTTP/2 server; --h2-relay=false (env WEFT_H2_RELAY=false) goes back to net/http's")
	f.StringVar(&o.logLevel, "log-level", envOr("WEFT_PROXY_LOG_LEVEL", "info"), "log level: debug, info, warn or error")
	f.DurationVar(&o.drainTimeout, "drain-timeout", 10*time.Second, "how long in-flight requests may take to finish on SIGTERM")
	f.IntVar(&o.gcPercent, "gc-percent", defaultGCPercent, "the Go GC's target heap growth in percent (as GOGC): lower keeps the sidecar smaller for more CPU (50: ~2 MB less at 2000 rps, ~20% fewer new mTLS connections/s); GOGC in the environment replaces the default")
	f.StringVar(&o.memoryLimit, "memory-limit", "", "soft memory limit of the Go runtime (as GOMEMLIMIT, e.g. 48MiB); default: GOMEMLIMIT, else 90% of the container's cgroup memory.max, else none")
	f.StringVar(&o.otlpAddr, "otlp-addr", envOr("OTLP_ADDR", ""), "trace requests and export the proxy's spans with OTLP/HTTP to this collector, host:port (port 4318 by convention) or http(s):// URL (off when empty; env OTLP_ADDR, set by the injector from the chart's tracing.collector)")
	f.StringVar(&o.traceSampling, "trace-sampling", envOr("TRACE_SAMPLING", "0"), "with --otlp-addr, the fraction (0 to 1) of requests without a trace context that start a trace; incoming traceparent/B3 contexts keep their own sampling decision (env TRACE_SAMPLING)")
	return cmd
}

// checkDialAddr rejects an address the proxy could never dial (it would retry it forever): it must be
// host:port with a host and a port from 1 to 65535.
func checkDialAddr(flag, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("%s %q: want host:port, such as weft-control.weft.svc:15012", flag, addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%s %q: the port must be a number from 1 to 65535", flag, addr)
	}
	return nil
}

func (o runOptions) validate() error {
	var missing []string
	if o.xdsAddr == "" {
		missing = append(missing, "--xds-addr (or XDS_ADDR)")
	}
	if o.podName == "" {
		missing = append(missing, "--pod-name (or POD_NAME)")
	}
	if o.namespace == "" {
		missing = append(missing, "--namespace (or POD_NAMESPACE)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: weft-proxy needs to know its control plane and its pod", strings.Join(missing, ", "))
	}
	if err := checkDialAddr("--xds-addr", o.xdsAddr); err != nil {
		return err
	}
	if o.identityAddr != "" {
		if err := checkDialAddr("--identity-addr", o.identityAddr); err != nil {
			return err
		}
	}
	if o.certDir != "" && o.identityAddr != "" {
		return errors.New("--cert-dir and --identity-addr both give a certificate: choose one")
	}
	if o.xdsTLS && o.certDir == "" && o.identityAddr == "" {
		return errors.New("--xds-tls needs a workload certificate: set --identity-addr or --cert-dir")
	}
	if o.sdsSocket != "" && o.certDir == "" && o.identityAddr == "" {
		return errors.New("--sds-socket serves the workload certificate: set --identity-addr or --cert-dir too")
	}
	return nil
}

// identitySource returns the workload identity the flags ask for (nil: plaintext only) and, for the
// control plane's Certify client, the function that keeps it renewed.
func identitySource(o runOptions, log *slog.Logger) (dataplane.Identity, func(context.Context) error, error) {
	switch {
	case o.certDir != "":
		src, err := certfile.Load(o.certDir, log)
		if err != nil {
			return nil, nil, err
		}
		return src, src.Watch, nil
	case o.identityAddr != "":
		id, err := spiffeid.NewID(o.trustDomain, o.namespace, o.serviceAccount)
		if err != nil {
			return nil, nil, fmt.Errorf("workload identity from --trust-domain, --namespace and --service-account: %w", err)
		}
		cfg := workload.Config{Addr: o.identityAddr, Identity: id, TokenFile: o.tokenFile, TrustBundleFile: o.trustBundleFile, Logger: log}
		if o.trustAnchors != "" {
			cfg.TrustBundleFile, cfg.TrustBundlePEM = "", []byte(o.trustAnchors)
		}
		c, err := workload.New(cfg)
		if err != nil {
			return nil, nil, err
		}
		return c, c.Run, nil
	}
	return nil, nil, nil
}

// trustBundleSetter is an identity whose trust bundle the control plane may update (SDS ROOTCA): the
// identity client's *workload.Client. Files from --cert-dir stay authoritative.
type trustBundleSetter interface {
	SetTrustBundle(pem []byte) error
}

// withTrustBundle installs each new configuration with update and hands a changed ROOTCA to the
// identity.
func withTrustBundle(update func(*config.Snapshot), id dataplane.Identity, log *slog.Logger) func(*config.Snapshot) {
	setter, _ := id.(trustBundleSetter)
	var last []byte
	return func(s *config.Snapshot) {
		update(s)
		if setter == nil {
			return
		}
		if sec := s.Secrets[config.TrustBundleSecret]; sec != nil && !bytes.Equal(sec.TrustedCA, last) {
			if err := setter.SetTrustBundle(sec.TrustedCA); err != nil {
				log.Warn("ROOTCA from the control plane not used", "err", err)
				return
			}
			last = sec.TrustedCA
			log.Info("trust bundle updated from SDS ROOTCA")
		}
	}
}

// xdsTLSConfig is nil (plaintext HTTP/2), or mTLS with the workload certificate: the server's chain is
// checked against the current trust bundle and its name against the host of --xds-addr.
func xdsTLSConfig(o runOptions, id dataplane.Identity) *tls.Config {
	if !o.xdsTLS || id == nil {
		return nil
	}
	host, _, _ := net.SplitHostPort(o.xdsAddr)
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // #nosec G402 -- verified below against the bundle of the moment (it rotates)
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.Certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("control plane sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: id.TrustBundle(), Intermediates: inter, DNSName: host})
			return err
		},
	}
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func listenFlag(flag, addr string) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w (is another proxy running? choose another address with %s)", flag, addr, err, flag)
	}
	return l, nil
}

func run(ctx context.Context, o runOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if err := applyMemory(o); err != nil {
		return err
	}
	level, err := parseLevel(o.logLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go proxy.AdaptProcs(ctx, log) // one P while lightly loaded (dataplane/proxy/procs.go)
	id, keep, err := identitySource(o, log)
	if err != nil {
		return err
	}
	if keep != nil {
		go func() {
			if err := keep(ctx); err != nil && ctx.Err() == nil {
				log.Warn("the workload certificate is no longer renewed or reloaded", "err", err)
			}
		}()
	}

	sdsBundle, err := startSDS(o, id, log)
	if err != nil {
		return err
	}
	if sdsBundle != nil {
		defer sdsBundle.close()
	}

	// /metrics serves the proxy's own metrics, then the Go runtime's and the process's (go_*,
	// process_resident_memory_bytes, process_cpu_seconds_total, ...).
	set := metrics.NewSet()
	writeMetrics := func(w io.Writer) {
		proxy.WithHelp(w, func(w io.Writer) { // HELP text on every family
			set.WritePrometheus(w)
			metrics.WriteProcessMetrics(w)
			metrics.WriteFDMetrics(w) // process_open_fds, process_max_fds
		})
	}
	tracer, err := newTracer(o, log)
	if err != nil {
		return err
	}
	defer runTracer(tracer)() // after the drain below: its spans are flushed
	p := proxy.New(proxy.Options{Identity: id, Metrics: set, Logger: log, Tracer: tracer, H2Relay: o.h2Relay,
		Workload: proxy.Workload{Namespace: o.namespace, Pod: o.podName, Deployment: o.deployment}})

	cc := xdsclient.Dial(o.xdsAddr, xdsTLSConfig(o, id))
	defer cc.Client.(*http.Client).CloseIdleConnections()
	node := xdsclient.Node{PodName: o.podName, Namespace: o.namespace, PodIP: o.podIP, ServiceAccount: o.serviceAccount, Version: buildinfo.Version}
	onUpdate := p.Update
	if o.inboundBindPodIP || o.appIP != "" {
		lm, err := proxy.NewLocalMode(p, o.podIP, o.inboundBindPodIP, o.appIP, log)
		if err != nil {
			return err
		}
		defer lm.Close()
		onUpdate = lm.Update
	}
	if sdsBundle != nil && o.identityAddr != "" {
		onUpdate = sdsBundle.fromXDS(onUpdate)
	}
	xc := xdsclient.New(xdsclient.Options{Node: node, Conn: cc, OnUpdate: withTrustBundle(onUpdate, id, log), Logger: log})

	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	open := func(flag, addr string) (net.Listener, error) {
		l, err := listenFlag(flag, addr)
		if l != nil {
			listeners = append(listeners, l)
		}
		return l, err
	}
	outL, err := open("--outbound-addr", o.outboundAddr)
	if err != nil {
		return err
	}
	inL, err := open("--inbound-addr", o.inboundAddr)
	if err != nil {
		return err
	}
	proxyL, err := open("--http-proxy-addr", o.httpProxyAddr)
	if err != nil {
		return err
	}
	adminL, err := open("--admin-addr", o.adminAddr)
	if err != nil {
		return err
	}

	errc := make(chan error, 4)
	serve := func(name string, f func(net.Listener) error, l net.Listener) {
		if l == nil {
			return
		}
		go func() {
			if err := f(l); err != nil {
				errc <- fmt.Errorf("%s listener: %w", name, err)
			}
		}()
	}
	serve("outbound", p.ServeOutbound, outL)
	serve("inbound", p.ServeInbound, inL)
	serve("http proxy", p.ServeHTTPProxy, proxyL)

	shutdown := make(chan struct{})
	var shutdownOnce sync.Once
	tapStop, stopTaps := context.WithCancel(context.Background())
	defer stopTaps()
	adminSrv := &http.Server{
		Handler: admin.Handler(admin.Options{Proxy: p, XDS: xc, Metrics: writeMetrics, Shutdown: func() {
			shutdownOnce.Do(func() { close(shutdown) })
		}, Tap: tapFunc(p, node.ID(), tapStop)}),
		ReadHeaderTimeout: cmp.Or(o.adminHeaderTimeout, defaultAdminHeaderTimeout),
		IdleTimeout:       cmp.Or(o.adminIdleTimeout, defaultAdminIdleTimeout),
		MaxHeaderBytes:    admin.MaxHeaderBytes,
	}
	adminSrv.Protocols = new(http.Protocols) // HTTP/1.1, h2c (loopback tap) and HTTP/2 over TLS (tap.go)
	adminSrv.Protocols.SetHTTP1(true)
	adminSrv.Protocols.SetUnencryptedHTTP2(true)
	adminSrv.Protocols.SetHTTP2(true)
	if adminL != nil {
		var tapTLS *tls.Config
		if id != nil {
			tapTLS = tapTLSConfig(id, cmp.Or(o.tapIdentity, defaultTapIdentity(o.trustDomain, o.xdsAddr)))
		}
		adminL = newSniffListener(adminL, tapTLS)
		go func() {
			if err := adminSrv.Serve(adminL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin server: %w", err)
			}
		}()
	}
	xdsDone := make(chan struct{})
	go func() {
		defer close(xdsDone)
		// Over mTLS the xDS stream needs our certificate: wait for the first one rather than fail and
		// back off (which delayed start-up by seconds).
		if r, ok := id.(interface{ Ready() <-chan struct{} }); ok && o.xdsTLS {
			select {
			case <-r.Ready():
			case <-ctx.Done():
				return
			}
		}
		_ = xc.Run(ctx)
	}()
	log.Info("weft-proxy started", "version", buildinfo.Version, "node", node.ID(), "xds", o.xdsAddr,
		"outbound", o.outboundAddr, "inbound", o.inboundAddr, "http_proxy", o.httpProxyAddr, "admin", o.adminAddr, "mtls", id != nil)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received: draining", "timeout", o.drainTimeout)
	case <-shutdown:
		log.Info("shutdown requested: draining", "timeout", o.drainTimeout)
	case runErr = <-errc:
		log.Error("stopping", "err", runErr)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), o.drainTimeout)
	defer dcancel()
	if err := p.Shutdown(dctx); err != nil {
		log.Warn("drain timed out; closed the remaining connections", "err", err)
	}
	stopTaps()
	_ = adminSrv.Shutdown(dctx)
	cancel()
	<-xdsDone
	return runErr
}

// sdsServing is the SDS server of --sds-socket and the trust bundle it serves as ROOTCA.
type sdsServing struct {
	srv    *sds.Server
	bundle *sds.Bundle
}

// startSDS serves SDS on --sds-socket when it is set (nil otherwise). ROOTCA is ca.pem of --cert-dir,
// or, with --identity-addr, the control plane's ROOTCA once received and --trust-bundle-file before.
func startSDS(o runOptions, id dataplane.Identity, log *slog.Logger) (*sdsServing, error) {
	if o.sdsSocket == "" || id == nil {
		return nil, nil
	}
	file := o.trustBundleFile
	if o.certDir != "" {
		file = filepath.Join(o.certDir, certfile.CAFile)
	}
	b := &sds.Bundle{Fallback: sds.FileBundle(file)}
	srv, err := sds.Listen(sds.Options{Path: o.sdsSocket, Identity: id, Bundle: b.PEM, Logger: log})
	if err != nil {
		return nil, err
	}
	return &sdsServing{srv: srv, bundle: b}, nil
}

func (s *sdsServing) close() { _ = s.srv.Close() }

// fromXDS installs each configuration with update and keeps a valid ROOTCA from the control plane for SDS.
func (s *sdsServing) fromXDS(update func(*config.Snapshot)) func(*config.Snapshot) {
	return func(snap *config.Snapshot) {
		update(snap)
		if sec := snap.Secrets[config.TrustBundleSecret]; sec != nil && x509.NewCertPool().AppendCertsFromPEM(sec.TrustedCA) {
			s.bundle.Set(sec.TrustedCA)
		}
	}
}
