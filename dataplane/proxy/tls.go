package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/weftmesh/weft/dataplane/config"
)

// spiffeID returns the URI SAN of a certificate ("" if none).
func spiffeID(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

func trustDomain(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	td, _, _ := strings.Cut(rest, "/")
	return td
}

// ownID is the SPIFFE id of the current workload certificate.
func (p *Proxy) ownID() string {
	if p.identity == nil {
		return ""
	}
	cert, err := p.identity.Certificate()
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return ""
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return ""
		}
	}
	return spiffeID(leaf)
}

// verifyPeer checks a peer chain against the current trust bundle and returns its SPIFFE id.
func (p *Proxy) verifyPeer(certs []*x509.Certificate) (string, error) {
	if len(certs) == 0 {
		return "", errors.New("peer sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: p.identity.TrustBundle(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", fmt.Errorf("peer certificate: %w", err)
	}
	id := spiffeID(certs[0])
	if id == "" {
		return "", errors.New("peer certificate has no SPIFFE id")
	}
	return id, nil
}

func matchString(m config.StringMatcher, s string) bool {
	if m.IgnoreCase {
		s = strings.ToLower(s)
	}
	low := func(x string) string {
		if m.IgnoreCase {
			return strings.ToLower(x)
		}
		return x
	}
	switch {
	case m.Regex != nil:
		return m.Regex.MatchString(s)
	case m.Exact != "":
		return s == low(m.Exact)
	case m.Prefix != "":
		return strings.HasPrefix(s, low(m.Prefix))
	case m.Suffix != "":
		return strings.HasSuffix(s, low(m.Suffix))
	case m.Contains != "":
		return strings.Contains(s, low(m.Contains))
	}
	return false
}

// dialTLS opens an mTLS connection to an endpoint of a cluster: TLS 1.3, our workload certificate,
// the server's chain checked against the trust bundle and its SPIFFE id against the cluster's SAN
// matchers (or, with none, the trust domain of our own id).
// With counted, the connection takes one of the cluster's max_connections (the TCP connection under
// the TLS one carries the slot, so that the HTTP/2 transport still sees a *tls.Conn).
func (p *Proxy) dialTLS(ctx context.Context, st *clusterState, addr string, alpn []string, counted bool) (net.Conn, error) {
	cfg := st.cfg.Load()
	if counted {
		if err := st.acquireConn(); err != nil {
			return nil, err
		}
	}
	d := net.Dialer{Timeout: cfg.ConnectTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if counted {
		raw, err = st.countedConn(raw, err)
	}
	if err != nil {
		return nil, err
	}
	var sans []config.StringMatcher
	sni := "weft"
	if cfg.TLS != nil {
		sans = cfg.TLS.SANs
		if cfg.TLS.SNI != "" {
			sni = cfg.TLS.SNI
		}
	}
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         alpn,
		ServerName:         sni,
		ClientSessionCache: p.sessionCache(),
		InsecureSkipVerify: true, // #nosec G402 -- the chain and SPIFFE id are verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.identity.Certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := p.verifyPeer(cs.PeerCertificates)
			if err != nil {
				return err
			}
			if len(sans) == 0 {
				if trustDomain(id) != trustDomain(p.ownID()) {
					return fmt.Errorf("server identity %s is outside our trust domain", id)
				}
				return nil
			}
			for _, m := range sans {
				if matchString(m, id) {
					return nil
				}
			}
			return fmt.Errorf("server identity %s matches none of cluster %s's SAN matchers", id, cfg.Name)
		},
	}
	tc := tls.Client(newRawSockConn(raw), conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, &handshakeError{addr, err}
	}
	p.metrics.observeHandshake("outbound", tc.ConnectionState().DidResume)
	return tc, nil
}

// sessionCache is the client session cache of our current certificate (nil without one: no resumption).
func (p *Proxy) sessionCache() tls.ClientSessionCache {
	cert, err := p.identity.Certificate()
	if err != nil || cert == nil {
		return nil
	}
	return p.sessions.epoch(cert).cache
}

// serverTLS is the config for terminating mTLS on an inbound chain: a client certificate of our trust
// domain is required.
func (p *Proxy) serverTLS(alpn []string) *tls.Config {
	// Our own protocols first (the server's order wins), then whatever the config names (weft-control
	// says "weft"), so that no client is refused for its ALPN.
	protos := []string{"h2", "http/1.1"}
	for _, a := range alpn {
		if !slices.Contains(protos, a) {
			protos = append(protos, a)
		}
	}
	conf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: protos,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.identity.Certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := p.verifyPeer(cs.PeerCertificates)
			if err != nil {
				return err
			}
			if td := trustDomain(p.ownID()); trustDomain(id) != td {
				return fmt.Errorf("client identity %s is outside trust domain %s", id, td)
			}
			return nil
		},
	}
	// Tickets sealed with keys of our current certificate's epoch (see tlsSessions).
	if cert, err := p.identity.Certificate(); err == nil && cert != nil {
		conf.SetSessionTicketKeys(p.sessions.epoch(cert).keys)
	}
	return conf
}
