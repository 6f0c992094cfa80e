// Package sds serves the workload's identity over SDS (Envoy's Secret Discovery Service) on a Unix socket
// inside the pod, so that an Envoy sidecar in the same pod can use Weft's certificates:
//
//   - `default`: a TlsCertificate with the workload certificate chain and its private key (inline PEM);
//   - `ROOTCA`: a CertificateValidationContext whose trusted_ca is the trust bundle (inline PEM).
//
// The service is Envoy's SecretDiscoveryService, registered by hand with the slim, wire-compatible
// messages of dataplane/internal/xdsproto (go-control-plane's generated API would link all of Envoy's
// API into the sidecar): StreamSecrets (state of the world) and FetchSecrets; DeltaSecrets answers
// Unimplemented, and Envoy falls back to state of the world when its sds_config says api_type GRPC.
// It is served by identity/grpcwire's handlers on net/http's HTTP/2 server without TLS (h2c, prior
// knowledge), which speak the gRPC protocol Envoy's and grpc-go's clients use: the sidecar links no
// grpc-go.
//
// Socket: a stale socket file left by a previous run is removed at start (a live one, that answers a
// connect, is an error: another proxy serves it); the socket is made mode 0660, so that an Envoy
// running as another uid but sharing the proxy's group (the pod's fsGroup) can connect, and nobody
// else; it is removed at Close. The private key leaves the process only through this socket: put it in
// a volume that only the pod mounts (an emptyDir).
//
// Envoy asks for each secret on its own stream. A name this server does not know (or `default` before
// the first certificate) gets no response at all: Envoy treats an SDS response without the secret it
// asked for as an error (it NACKs it), and keeps the listener or cluster that needs the secret warming
// until the secret arrives or its initial_fetch_timeout (15 s by default) passes. When the secret
// appears later, it is pushed on the open stream.
package sds

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
	"github.com/weftmesh/weft/identity/grpcwire"
)

// Secret names (DESIGN.md).
const (
	CertificateName = "default"
	TrustBundleName = "ROOTCA"
)

// SecretTypeURL is the type of every resource this server sends.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// DefaultMode is the socket file's mode: owner and group (see the package comment).
const DefaultMode fs.FileMode = 0o660

// Certificates is the workload's current certificate (chain and key). dataplane.Identity satisfies it.
type Certificates interface {
	Certificate() (*tls.Certificate, error)
}

// Options configure a Server.
type Options struct {
	Path     string       // the Unix socket; required
	Identity Certificates // serves `default`; required
	// Bundle returns the trust bundle (PEM) served as `ROOTCA`; nil: ROOTCA is not served. See Bundle
	// and FileBundle.
	Bundle func() ([]byte, error)
	Poll   time.Duration // how often the identity and bundle are checked for changes (default 1s)
	Mode   fs.FileMode   // socket file mode (default DefaultMode)
	Logger *slog.Logger
	// ReadHeaderTimeout closes a connection that has not sent the HTTP/2 preface (or a request's
	// headers) this long after it opened (default 10 s); IdleTimeout one without a stream for this
	// long (default 5 min: Envoy keeps its SDS stream open, so only a stray client is idle).
	ReadHeaderTimeout, IdleTimeout time.Duration
}

const (
	defaultReadHeaderTimeout = 10 * time.Second
	defaultIdleTimeout       = 5 * time.Minute
	// maxHeaderBytes caps a request's headers.
	maxHeaderBytes = 64 << 10
)

// Server is an SDS server on a Unix socket.
type Server struct {
	o      Options
	log    *slog.Logger
	lis    net.Listener
	http   *http.Server
	cancel context.CancelFunc
	done   chan struct{}
	prefix string // makes versions unique across restarts

	mu      sync.Mutex
	st      *state
	changed chan struct{} // closed when st is replaced
	// what the last poll saw, to notice changes cheaply
	lastCert   *tls.Certificate
	lastLeaf   []byte
	lastBundle []byte
	counter    uint64

	closeOnce sync.Once
}

// state is one version of the served secrets.
type state struct {
	version string
	res     map[string]*anypb.Any
	digest  map[string]string
}

// Listen creates the socket, reads the identity once and starts serving and watching for changes.
// Close stops it.
func Listen(o Options) (*Server, error) {
	if o.Path == "" {
		return nil, errors.New("sds: no socket path")
	}
	if o.Identity == nil {
		return nil, errors.New("sds: no identity to serve")
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.Mode == 0 {
		o.Mode = DefaultMode
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = defaultIdleTimeout
	}
	s := &Server{
		o:       o,
		log:     o.Logger.With("component", "sds", "socket", o.Path),
		done:    make(chan struct{}),
		prefix:  strconv.FormatInt(time.Now().UnixNano(), 36),
		changed: make(chan struct{}),
		st:      &state{res: map[string]*anypb.Any{}, digest: map[string]string{}},
	}
	if err := removeStale(o.Path); err != nil {
		return nil, err
	}
	lis, err := net.Listen("unix", o.Path)
	if err != nil {
		return nil, fmt.Errorf("--sds-socket %s: %w (is the directory there and writable?)", o.Path, err)
	}
	// Between Listen and Chmod the socket has the umask's mode (0755 with the usual 022): nobody but
	// the owner may connect (connecting needs write permission), so the window is harmless.
	if err := os.Chmod(o.Path, o.Mode); err != nil {
		lis.Close()
		_ = os.Remove(o.Path)
		return nil, fmt.Errorf("--sds-socket %s: setting its mode: %w", o.Path, err)
	}
	s.lis = lis
	s.refresh()
	s.http = newHTTPServer(s)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		if err := s.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("SDS server stopped", "err", err)
		}
	}()
	go s.watch(ctx)
	s.log.Info("serving SDS", "secrets", []string{CertificateName, TrustBundleName})
	return s, nil
}

// removeStale removes a socket file no server answers on; anything else at path is an error.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--sds-socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("--sds-socket %s exists and is not a socket: remove it or choose another path", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("--sds-socket %s is served by another process: stop it or choose another path", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--sds-socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

// Close stops serving (open streams end) and removes the socket file.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
		_ = s.http.Close()
		if e := os.Remove(s.o.Path); e != nil && !errors.Is(e, fs.ErrNotExist) {
			err = fmt.Errorf("removing %s: %w", s.o.Path, e)
		}
	})
	return err
}

// Path is the socket's path.
func (s *Server) Path() string { return s.o.Path }

func (s *Server) watch(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.refresh()
		}
	}
}

// refresh reads the identity and bundle and, when either changed, makes a new state and wakes the
// streams.
func (s *Server) refresh() {
	cert, certErr := s.o.Identity.Certificate()
	if certErr != nil || cert == nil || len(cert.Certificate) == 0 {
		cert = nil
	}
	var bundle []byte
	if s.o.Bundle != nil {
		b, err := s.o.Bundle()
		if err != nil {
			s.log.Debug("no trust bundle for ROOTCA", "err", err)
		} else {
			bundle = b
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var leaf []byte
	if cert != nil {
		leaf = cert.Certificate[0]
	}
	if s.counter > 0 && cert == s.lastCert && bytes.Equal(leaf, s.lastLeaf) && bytes.Equal(bundle, s.lastBundle) {
		return
	}
	next := &state{res: map[string]*anypb.Any{}, digest: map[string]string{}}
	if cert != nil {
		if sec, err := certificateSecret(cert); err != nil {
			s.log.Warn("workload certificate not served as SDS default", "err", err)
		} else if err := next.add(sec); err != nil {
			s.log.Warn("workload certificate not served as SDS default", "err", err)
		}
	}
	if len(bundle) > 0 {
		if err := next.add(bundleSecret(bundle)); err != nil {
			s.log.Warn("trust bundle not served as SDS ROOTCA", "err", err)
		}
	}
	s.lastCert, s.lastLeaf, s.lastBundle = cert, leaf, bundle
	if s.counter > 0 && maps(next.digest, s.st.digest) {
		return // same content (e.g. the same files read again)
	}
	s.counter++
	next.version = s.prefix + "-" + strconv.FormatUint(s.counter, 10)
	s.st = next
	close(s.changed)
	s.changed = make(chan struct{})
	s.log.Debug("SDS secrets changed", "version", next.version, "default", cert != nil, "rootca", len(bundle) > 0)
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func (st *state) add(sec *xp.Secret) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(sec)
	if err != nil {
		return fmt.Errorf("encoding secret %s: %w", sec.Name, err)
	}
	// The type URL is Envoy's: the slim message has a name of its own.
	a := &anypb.Any{TypeUrl: SecretTypeURL, Value: b}
	sum := sha256.Sum256(a.Value)
	st.res[sec.Name] = a
	st.digest[sec.Name] = hex.EncodeToString(sum[:])
	return nil
}

func (s *Server) current() (*state, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st, s.changed
}

// certificateSecret is `default`: the chain and the key (PKCS#8) as inline PEM.
func certificateSecret(cert *tls.Certificate) (*xp.Secret, error) {
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return &xp.Secret{
		Name: CertificateName,
		Type: &xp.Secret_TlsCertificate{TlsCertificate: &xp.TlsCertificate{
			CertificateChain: inline(chain),
			PrivateKey:       inline(key),
		}},
	}, nil
}

// bundleSecret is `ROOTCA`: the trust anchors as inline PEM.
func bundleSecret(bundle []byte) *xp.Secret {
	return &xp.Secret{
		Name: TrustBundleName,
		Type: &xp.Secret_ValidationContext{ValidationContext: &xp.CertificateValidationContext{
			TrustedCa: inline(bundle),
		}},
	}
}

func inline(b []byte) *xp.DataSource {
	return &xp.DataSource{Specifier: &xp.DataSource_InlineBytes{InlineBytes: b}}
}

// wanted is the names a request asks for; none means every secret (what a debugging client without
// names expects; Envoy always names its secret).
func wanted(names []string) []string {
	if len(names) == 0 {
		return []string{CertificateName, TrustBundleName}
	}
	n := slices.Clone(names)
	slices.Sort(n)
	return slices.Compact(n)
}

// pick returns the state's resources among names (in order) and their digests.
func (st *state) pick(names []string) ([]*anypb.Any, map[string]string) {
	var res []*anypb.Any
	dig := map[string]string{}
	for _, n := range names {
		if a, ok := st.res[n]; ok {
			res = append(res, a)
			dig[n] = st.digest[n]
		}
	}
	return res, dig
}

// StreamSecrets is SDS, state of the world. The server answers the first request on a stream, a
// request whose names change what it would send, and every change of a requested secret; an ACK or
// NACK of the latest response is not answered (after a NACK the same content is not sent again), and
// a request carrying an older nonce is ignored, as the xDS protocol says.
func (s *Server) StreamSecrets(stream *grpcwire.ServerStream) error {
	ctx := stream.Context()
	reqs := make(chan *xp.DiscoveryRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req := new(xp.DiscoveryRequest)
			if err := stream.Recv(req); err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		names      []string // nil until the first request
		sent       map[string]string
		lastNonce  string
		nonceCount int
	)
	send := func(st *state, force bool) error {
		res, dig := st.pick(names)
		if len(res) == 0 {
			return nil // nothing Envoy would accept: wait until the secret exists
		}
		if !force && maps(dig, sent) {
			return nil
		}
		nonceCount++
		lastNonce = strconv.Itoa(nonceCount)
		if err := stream.Send(&xp.DiscoveryResponse{VersionInfo: st.version, Resources: res, TypeUrl: SecretTypeURL, Nonce: lastNonce}); err != nil {
			return err
		}
		sent = dig
		return nil
	}
	for {
		_, changed := s.current()
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if grpcwire.CodeOf(err) == grpcwire.Canceled {
				return nil
			}
			return ignoreEOF(err)
		case <-changed:
			if names == nil {
				continue
			}
			st, _ := s.current()
			if err := send(st, false); err != nil {
				return err
			}
		case req := <-reqs:
			st, _ := s.current() // the newest, so that a change during the wait is not lost
			if req.GetTypeUrl() != "" && req.GetTypeUrl() != SecretTypeURL {
				return grpcwire.Errorf(grpcwire.InvalidArgument, "this SDS server serves only %s, not %s", SecretTypeURL, req.GetTypeUrl())
			}
			if req.GetResponseNonce() != "" && req.GetResponseNonce() != lastNonce {
				continue // answers an older response: a newer one is on its way
			}
			if e := req.GetErrorDetail(); e != nil {
				s.log.Warn("SDS client rejected the secrets", "version", req.GetVersionInfo(), "names", req.GetResourceNames(), "err", e.GetMessage())
			}
			names = wanted(req.GetResourceNames())
			if err := send(st, req.GetResponseNonce() == ""); err != nil {
				return err
			}
		}
	}
}

func ignoreEOF(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// FetchSecrets is SDS over a unary call: the requested secrets of the moment, NotFound when none
// exists.
func (s *Server) FetchSecrets(_ context.Context, req *xp.DiscoveryRequest) (*xp.DiscoveryResponse, error) {
	if req.GetTypeUrl() != "" && req.GetTypeUrl() != SecretTypeURL {
		return nil, grpcwire.Errorf(grpcwire.InvalidArgument, "this SDS server serves only %s, not %s", SecretTypeURL, req.GetTypeUrl())
	}
	st, _ := s.current()
	res, _ := st.pick(wanted(req.GetResourceNames()))
	if len(res) == 0 {
		return nil, grpcwire.Errorf(grpcwire.NotFound, "no secret %v here (this server has %q and %q, the certificate once the proxy has one)", req.GetResourceNames(), CertificateName, TrustBundleName)
	}
	return &xp.DiscoveryResponse{VersionInfo: st.version, Resources: res, TypeUrl: SecretTypeURL}, nil
}

// Bundle is a trust bundle source for Options.Bundle: the PEM last handed to Set (the control plane's
// ROOTCA), else what Fallback returns (e.g. FileBundle of the bundle the proxy was started with).
type Bundle struct {
	Fallback func() ([]byte, error)

	mu  sync.Mutex
	pem []byte
}

// Set records a new trust bundle.
func (b *Bundle) Set(pemData []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pem = slices.Clone(pemData)
}

// PEM is the current trust bundle.
func (b *Bundle) PEM() ([]byte, error) {
	b.mu.Lock()
	p := b.pem
	b.mu.Unlock()
	if p != nil {
		return p, nil
	}
	if b.Fallback == nil {
		return nil, errors.New("no trust bundle yet")
	}
	return b.Fallback()
}

// FileBundle reads the trust bundle from a PEM file at each call.
func FileBundle(path string) func() ([]byte, error) {
	return func() ([]byte, error) { return os.ReadFile(path) }
}

// The methods of Envoy's envoy.service.secret.v3.SecretDiscoveryService.
const (
	streamSecretsMethod = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
	fetchSecretsMethod  = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
	deltaSecretsMethod  = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets"
)

// newHTTPServer serves the SDS methods with the slim messages over HTTP/2 without TLS (h2c with prior
// knowledge, what gRPC clients speak on a Unix socket). DeltaSecrets answers Unimplemented.
func newHTTPServer(s *Server) *http.Server {
	mux := http.NewServeMux()
	mux.Handle(streamSecretsMethod, grpcwire.StreamHandler(s.StreamSecrets))
	mux.Handle(fetchSecretsMethod, grpcwire.UnaryHandler(s.FetchSecrets))
	mux.Handle(deltaSecretsMethod, grpcwire.StreamHandler(func(*grpcwire.ServerStream) error {
		return grpcwire.Errorf(grpcwire.Unimplemented, "this SDS server has no delta xDS: use state of the world (api_type GRPC)")
	}))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           mux,
		Protocols:         &protos,
		ReadHeaderTimeout: s.o.ReadHeaderTimeout,
		IdleTimeout:       s.o.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}
