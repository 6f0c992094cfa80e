package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ServerTLSConfig is the TLS configuration of the control plane's mTLS port (:15012, xDS and
// Certify): a serving certificate from the current issuer for names (DNS names or IP addresses) and
// the optional SPIFFE ID, renewed when 70% of its life has passed or the issuer changed; client
// certificates are verified against the current trust bundle when given (VerifyClientCertIfGiven: a
// workload calls Certify before it has a certificate; xDS handlers require one with PeerID). TLS 1.3 only.
func (c *CA) ServerTLSConfig(id ID, names ...string) *tls.Config {
	sc := &servingCert{ca: c, id: id, names: names}
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"},
	}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		iss := c.Issuer()
		if iss == nil {
			return nil, fmt.Errorf("%w: cannot serve TLS yet", ErrNoIssuer)
		}
		cert, err := sc.get(iss)
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			MinVersion:   tls.VersionTLS13,
			NextProtos:   []string{"h2"},
			Certificates: []tls.Certificate{*cert},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    iss.TrustBundle(),
		}, nil
	}
	return base
}

type servingCert struct {
	ca    *CA
	id    ID
	names []string

	mu     sync.Mutex // guards the fields below
	cert   *tls.Certificate
	issuer *Issuer
}

func (s *servingCert) get(iss *Issuer) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.now()
	if s.cert != nil && s.issuer == iss {
		leaf := s.cert.Leaf
		renewAt := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 7 / 10)
		if now.Before(renewAt) {
			return s.cert, nil
		}
	}
	cert, err := s.ca.ServingCertificate(s.id, s.names...)
	if err != nil {
		return nil, err
	}
	s.cert, s.issuer = cert, iss
	return cert, nil
}

// PeerID is the SPIFFE ID of the client certificate of a gRPC call over ServerTLSConfig. It fails when
// the caller presented no certificate.
func PeerID(ctx context.Context) (ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ID{}, errors.New("no peer in the call context")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ID{}, errors.New("the connection is not TLS")
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return ID{}, errors.New("the client presented no certificate")
	}
	return IDFromCertificate(chains[0][0])
}

// ErrPeerMismatch: the caller's certificate names another workload than the one it asks about.
// → codes.PermissionDenied at the caller's gRPC edge.
var ErrPeerMismatch = errors.New("client certificate is for another workload")

// AuthorizePeer checks that the client certificate of a gRPC call over ServerTLSConfig is want's: the
// xDS server calls it with the trust domain and the NAMESPACE and SERVICE_ACCOUNT of the node a proxy
// asks config for, so that no proxy reads another namespace's config or certificates. No certificate is
// an error too.
func AuthorizePeer(ctx context.Context, want ID) error {
	got, err := PeerID(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPeerMismatch, err)
	}
	if got != want {
		return fmt.Errorf("%w: the certificate is %s, the node claims %s", ErrPeerMismatch, got, want)
	}
	return nil
}
