// Package workload is the sidecar's side of Weft identity: it makes a key in memory (never written,
// never sent), gets a certificate for it from Certify with the pod's ServiceAccount token, and renews it
// before it expires. It imports nothing from k8s.io.
//
// The data plane uses a *Client through its own small interface:
//
//	type Identity interface {
//		Certificate() (*tls.Certificate, error) // current workload cert (chain + key)
//		TrustBundle() *x509.CertPool            // current roots for verifying peers
//	}
package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/identity/grpcwire"
	"github.com/weftmesh/weft/identity/spiffeid"
	"github.com/weftmesh/weft/identity/workload/internal/certifypb"
)

// certifyMethod is weft.identity.v1.Identity/Certify, called through identity/grpcwire in the gRPC protocol
// with wire-compatible mirrors of its messages: the generated package of the service also holds its
// grpc-go stubs, and the sidecar links no grpc-go (resident memory per pod).
const certifyMethod = "/weft.identity.v1.Identity/Certify"

// Config configures a Client.
type Config struct {
	// Addr is the Certify service, host:port (weft-control's :15012).
	Addr string
	// ServerName is the name the CA's serving certificate must carry; the host of Addr when empty.
	ServerName string
	// Identity is the workload's SPIFFE ID (trust domain, POD_NAMESPACE, SERVICE_ACCOUNT). It must be
	// the identity the token proves.
	Identity spiffeid.ID
	// TokenFile holds the projected ServiceAccount token (audience identity.weft.io). It is read again at
	// every renewal, since kubelet rotates it.
	TokenFile string
	// TrustBundleFile holds the trust anchors (PEM): they verify the CA's serving certificate and, via
	// TrustBundle, the peers. It is read again at every renewal and every BundleRefresh, so that a new
	// anchor (a ConfigMap update during an anchor rotation) is trusted long before the next renewal.
	TrustBundleFile string
	// TrustBundlePEM holds the trust anchors (PEM) when TrustBundleFile is empty: the injector gives them
	// to the proxy in its environment (TRUST_ANCHORS). Later bundles come from SetTrustBundle (the
	// control plane's ROOTCA).
	TrustBundlePEM []byte
	// BundleRefresh is how often TrustBundleFile is re-read between renewals (default 1m).
	BundleRefresh time.Duration
	// MinBackoff and MaxBackoff bound the waits between failed attempts (defaults 1s and 30s).
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one Certify call (default 10s).
	Timeout time.Duration
	// Logger (slog.Default() when nil).
	Logger *slog.Logger
}

// Client holds the workload's current certificate and renews it; Run drives it.
type Client struct {
	cfg   Config
	log   *slog.Logger
	cert  atomic.Pointer[tls.Certificate]
	roots atomic.Pointer[x509.CertPool]
	ready chan struct{}
	once  sync.Once

	mu       sync.Mutex // guards the fields below
	lastErr  error
	failures int
}

// New checks the configuration and reads the trust bundle; the first certificate comes from Run.
func New(cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("identity address is empty: set the address of weft-control's Certify service (host:15012)")
	}
	if err := cfg.Identity.Validate(); err != nil {
		return nil, fmt.Errorf("workload identity: %w", err)
	}
	if cfg.TokenFile == "" {
		return nil, errors.New("token file is empty: set --token-file to the projected ServiceAccount token (audience identity.weft.io)")
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("identity address %q: %w", cfg.Addr, err)
		}
		cfg.ServerName = host
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.BundleRefresh <= 0 {
		cfg.BundleRefresh = time.Minute
	}
	c := &Client{cfg: cfg, log: cfg.Logger, ready: make(chan struct{})}
	if c.log == nil {
		c.log = slog.Default()
	}
	if err := c.loadTrustBundle(); err != nil {
		return nil, err
	}
	return c, nil
}

// ID is the workload's SPIFFE ID.
func (c *Client) ID() spiffeid.ID { return c.cfg.Identity }

// Ready is closed once the first certificate is obtained.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Certificate is the current certificate (leaf, intermediates, key). Each new TLS connection should ask
// again: after a renewal it gets the new one.
func (c *Client) Certificate() (*tls.Certificate, error) {
	if cert := c.cert.Load(); cert != nil {
		return cert, nil
	}
	return nil, errors.New("no workload certificate yet: the identity client has not reached the CA")
}

// TrustBundle is the current pool of trust anchors.
func (c *Client) TrustBundle() *x509.CertPool { return c.roots.Load() }

// GetCertificate serves the current certificate in a tls.Config of a server.
func (c *Client) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.Certificate()
}

// GetClientCertificate serves the current certificate in a tls.Config of a client.
func (c *Client) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.Certificate()
}

// SetTrustBundle replaces the trust anchors (e.g. from the control plane's ROOTCA secret).
func (c *Client) SetTrustBundle(pemData []byte) error {
	pool, err := parseBundle(pemData)
	if err != nil {
		return err
	}
	c.roots.Store(pool)
	return nil
}

// Status is the client's state, for /ready and logs.
type Status struct {
	Ready     bool
	NotAfter  time.Time
	LastError error // of the last attempt, nil if it succeeded
	Failures  int   // failed attempts since the last success
}

// Status reports the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{LastError: c.lastErr, Failures: c.failures}
	if cert := c.cert.Load(); cert != nil {
		s.Ready, s.NotAfter = true, cert.Leaf.NotAfter
	}
	return s
}

// Run certifies at once and then renews at 70% of the remaining life (±10%), until ctx ends. When the CA
// cannot be reached it keeps the current certificate and retries with exponential backoff.
func (c *Client) Run(ctx context.Context) error {
	for {
		var wait time.Duration
		notAfter, err := c.certify(ctx)
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		c.lastErr = err
		if err != nil {
			c.failures++
			wait = Backoff(c.failures, c.cfg.MinBackoff, c.cfg.MaxBackoff, jitter())
		} else {
			c.failures = 0
			wait = RenewAfter(time.Now(), notAfter, jitter())
		}
		failures := c.failures
		c.mu.Unlock()
		if err != nil {
			attrs := []any{"identity", c.cfg.Identity.String(), "ca", c.cfg.Addr, "attempt", failures, "retry_in", wait.Round(time.Millisecond), "err", err}
			if cert := c.cert.Load(); cert != nil {
				attrs = append(attrs, "current_not_after", cert.Leaf.NotAfter)
			}
			c.log.Warn("certificate renewal failed; keeping the current certificate", attrs...)
		} else {
			c.log.Info("workload certificate issued", "identity", c.cfg.Identity.String(), "not_after", notAfter, "renew_in", wait.Round(time.Millisecond))
		}
		if !c.sleep(ctx, wait) {
			return nil
		}
	}
}

// sleep waits for d, re-reading the trust bundle every BundleRefresh meanwhile. It reports false when
// ctx ended.
func (c *Client) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	refresh := time.NewTicker(c.cfg.BundleRefresh)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-refresh.C:
			if err := c.loadTrustBundle(); err != nil {
				c.log.Warn("keeping the previous trust bundle", "err", err)
			}
		}
	}
}

func jitter() float64 { return mathrand.Float64()*2 - 1 }

// certify makes a fresh key, asks the CA for a certificate, checks what comes back and installs it.
func (c *Client) certify(ctx context.Context) (time.Time, error) {
	if err := c.loadTrustBundle(); err != nil {
		c.log.Warn("keeping the previous trust bundle", "err", err)
	}
	token, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the ServiceAccount token: %w", err)
	}
	token = []byte(strings.TrimSpace(string(token)))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return time.Time{}, fmt.Errorf("making a key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{c.cfg.Identity.URL()}}, key)
	if err != nil {
		return time.Time{}, fmt.Errorf("making the CSR: %w", err)
	}
	roots := c.roots.Load()
	// A connection per call, verified against the roots of the moment (they rotate), closed after it.
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: c.cfg.Timeout}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, ServerName: c.cfg.ServerName, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout: c.cfg.Timeout,
		Protocols:           new(http.Protocols),
	}
	transport.Protocols.SetHTTP2(true)
	defer transport.CloseIdleConnections()
	callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var resp certifypb.CertifyResponse
	err = grpcwire.Unary(callCtx, &http.Client{Transport: transport}, "https://"+c.cfg.Addr+certifyMethod, &certifypb.CertifyRequest{
		Identity:                  c.cfg.Identity.String(),
		Token:                     token,
		CertificateSigningRequest: csr,
	}, &resp)
	if err != nil {
		return time.Time{}, fmt.Errorf("certify at %s: %w", c.cfg.Addr, err)
	}
	cert, err := checkResponse(&resp, key, c.cfg.Identity, roots)
	if err != nil {
		return time.Time{}, err
	}
	c.cert.Store(cert)
	c.once.Do(func() { close(c.ready) })
	return cert.Leaf.NotAfter, nil
}

// checkResponse validates the CA's answer at the edge: the leaf carries our key and our identity and
// chains to the trust bundle.
func checkResponse(resp *certifypb.CertifyResponse, key *ecdsa.PrivateKey, want spiffeid.ID, roots *x509.CertPool) (*tls.Certificate, error) {
	chain := append([][]byte{resp.GetLeafCertificate()}, resp.GetIntermediateCertificates()...)
	id, err := spiffeid.VerifyPeer(chain, roots, x509.ExtKeyUsageAny)
	if err != nil {
		return nil, fmt.Errorf("the CA's certificate does not verify against the trust bundle: %w", err)
	}
	if id != want {
		return nil, fmt.Errorf("the CA issued a certificate for %s, we asked for %s", id, want)
	}
	leaf, err := x509.ParseCertificate(resp.GetLeafCertificate())
	if err != nil {
		return nil, err
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("the CA's certificate is not for our key")
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

func (c *Client) loadTrustBundle() error {
	if c.cfg.TrustBundleFile == "" {
		if c.roots.Load() != nil {
			return nil
		}
		if len(c.cfg.TrustBundlePEM) == 0 {
			return errors.New("trust bundle file is empty: set it to the mesh's ca.crt (what `weft identity bootstrap` wrote)")
		}
		pool, err := parseBundle(c.cfg.TrustBundlePEM)
		if err != nil {
			return fmt.Errorf("trust anchors: %w", err)
		}
		c.roots.Store(pool)
		return nil
	}
	data, err := os.ReadFile(c.cfg.TrustBundleFile)
	if err != nil {
		return fmt.Errorf("reading the trust bundle: %w", err)
	}
	pool, err := parseBundle(data)
	if err != nil {
		return fmt.Errorf("trust bundle %s: %w", c.cfg.TrustBundleFile, err)
	}
	c.roots.Store(pool)
	return nil
}

func parseBundle(data []byte) (*x509.CertPool, error) {
	certs, err := spiffeid.ParseCertificatesPEM(data)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in the trust bundle")
	}
	pool := x509.NewCertPool()
	for _, cert := range certs {
		pool.AddCert(cert)
	}
	return pool, nil
}
