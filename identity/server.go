package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

// Caller is who a token proves the caller to be: a Kubernetes ServiceAccount.
type Caller struct {
	Namespace      string
	ServiceAccount string
	// UID of the ServiceAccount, when the authenticator knows it (TokenReview does).
	UID string
}

// Authenticator checks a ServiceAccount token for the audience Audience. A rejected token is an error
// wrapping ErrUnauthenticated; any other error means the check could not be made (→ Unavailable).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Caller, error)
}

// Recorder is told about every issued certificate (a Kubernetes Event on the ServiceAccount). It must
// not block.
type Recorder interface {
	Issued(caller Caller, id ID, leaf *x509.Certificate)
}

// Server is the Identity gRPC service: it checks the token and the CSR and signs a leaf with the CA.
type Server struct {
	identityv1.UnimplementedIdentityServer
	ca   *CA
	auth Authenticator
	rec  Recorder
	log  *slog.Logger
	reg  prometheus.Registerer

	requests *prometheus.CounterVec // by gRPC code
	latency  prometheus.Histogram
}

// ServerOption configures a Server.
type ServerOption func(*Server)

// WithRecorder records each issued certificate (kubeauth.EventRecorder in weft-control).
func WithRecorder(r Recorder) ServerOption { return func(s *Server) { s.rec = r } }

// WithLogger sets the logger (slog.Default() otherwise).
func WithLogger(l *slog.Logger) ServerOption { return func(s *Server) { s.log = l } }

// WithMetrics registers the service's metrics with reg: weft_identity_certify_total{code},
// weft_identity_certify_duration_seconds and weft_identity_issuer_expiry_timestamp_seconds.
func WithMetrics(reg prometheus.Registerer) ServerOption { return func(s *Server) { s.reg = reg } }

// NewServer makes the Identity service of ca, with auth checking tokens (kubeauth.TokenReviewer, or
// StaticTokens in local mode).
func NewServer(ca *CA, auth Authenticator, opts ...ServerOption) *Server {
	s := &Server{ca: ca, auth: auth, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	if s.reg != nil {
		s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_identity_certify_total",
			Help: "Certify calls by gRPC status code.",
		}, []string{"code"})
		s.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_identity_certify_duration_seconds",
			Help:    "Time to answer a Certify call, token check included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		})
		expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "weft_identity_issuer_expiry_timestamp_seconds",
			Help: "NotAfter of the current issuer (0 without one): alert well before it.",
		}, func() float64 {
			if iss := ca.Issuer(); iss != nil {
				return float64(iss.Certificate().NotAfter.Unix())
			}
			return 0
		})
		for _, c := range []prometheus.Collector{s.requests, s.latency, expiry} {
			if err := s.reg.Register(c); err != nil {
				s.log.Warn("identity metrics not registered", "err", err)
			}
		}
	}
	return s
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g grpc.ServiceRegistrar) { identityv1.RegisterIdentityServer(g, s) }

// Certify implements identityv1.IdentityServer. It is the edge: errors become gRPC codes here, once.
func (s *Server) Certify(ctx context.Context, req *identityv1.CertifyRequest) (*identityv1.CertifyResponse, error) {
	start := time.Now()
	leaf, err := s.certify(ctx, req)
	if s.requests != nil {
		s.latency.Observe(time.Since(start).Seconds())
		s.requests.WithLabelValues(Code(err).String()).Inc()
	}
	if err != nil {
		code := Code(err)
		s.log.Debug("certify refused", "identity", req.GetIdentity(), "code", code, "err", err)
		return nil, status.Error(code, err.Error())
	}
	return &identityv1.CertifyResponse{
		LeafCertificate:          leaf.Certificate.Raw,
		IntermediateCertificates: leaf.Intermediates,
		ValidUntil:               timestamppb.New(leaf.Certificate.NotAfter),
	}, nil
}

// Code is the gRPC code of an error of certify.
func Code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, ErrUnauthenticated):
		return codes.Unauthenticated
	case errors.Is(err, ErrInvalidRequest):
		return codes.InvalidArgument
	case errors.Is(err, ErrIdentityMismatch):
		return codes.FailedPrecondition
	case errors.Is(err, ErrNoIssuer), errors.Is(err, ErrTokenCheckUnavailable):
		return codes.Unavailable
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	default:
		return codes.Internal
	}
}

func (s *Server) certify(ctx context.Context, req *identityv1.CertifyRequest) (*Leaf, error) {
	if len(req.GetToken()) == 0 {
		return nil, fmt.Errorf("%w: token is empty; send the projected ServiceAccount token with audience %s", ErrUnauthenticated, Audience)
	}
	caller, err := s.auth.Authenticate(ctx, string(req.GetToken()))
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrTokenCheckUnavailable, err)
	}
	tokenID, err := NewID(s.ca.TrustDomain(), caller.Namespace, caller.ServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	csr, csrID, err := CheckCSR(req.GetCertificateSigningRequest())
	if err != nil {
		return nil, err
	}
	if err := Authorize(req.GetIdentity(), csrID, tokenID); err != nil {
		return nil, err
	}
	leaf, err := s.ca.Sign(csr.PublicKey, tokenID)
	if err != nil {
		return nil, err
	}
	if s.rec != nil {
		s.rec.Issued(caller, tokenID, leaf.Certificate)
	}
	s.log.Debug("certificate issued", "identity", tokenID.String(), "serial", leaf.Certificate.SerialNumber.Text(16), "not_after", leaf.Certificate.NotAfter)
	return leaf, nil
}
