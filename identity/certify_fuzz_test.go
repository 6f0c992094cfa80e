package identity

import (
	"context"
	"crypto/x509"
	"net/url"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

// FuzzCertify feeds arbitrary identities, tokens and CSRs to the Certify path. Whatever the input, it
// must not panic, must answer with one of the documented codes, and when it issues a certificate, that
// certificate names exactly the identity the token proves. The seed corpus runs under plain go test.
func FuzzCertify(f *testing.F) {
	ca, _ := newTestCA(f)
	srv := NewServer(ca, writeTokens(f))
	key := mustKey(f, p256())
	dbID := ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "db"}
	good := mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	f.Add(webID.String(), "tok-web", good)
	f.Add(webID.String(), "tok-db", good)
	f.Add(dbID.String(), "tok-db", mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{dbID.URL()}}))
	f.Add(webID.String(), "tok-web", mustCSR(f, key, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, DNSNames: []string{"x"}}))
	f.Add(webID.String(), "tok-web", good[:len(good)/2])
	f.Add("", "", []byte{})
	f.Add("spiffe://cluster.local/ns/default/sa/web/x", "tok-web", []byte("\x30\x82\xff\xff"))

	f.Fuzz(func(t *testing.T, identity, token string, csr []byte) {
		resp, err := srv.Certify(context.Background(), &identityv1.CertifyRequest{Identity: identity, Token: []byte(token), CertificateSigningRequest: csr})
		switch code := status.Code(err); code {
		case codes.OK:
		case codes.Unauthenticated, codes.InvalidArgument, codes.FailedPrecondition:
			return
		default:
			t.Fatalf("Certify answered %v (%v); only OK, Unauthenticated, InvalidArgument, FailedPrecondition are possible here", code, err)
		}
		caller, err := srv.auth.Authenticate(context.Background(), token)
		if err != nil {
			t.Fatalf("certificate issued for a token the authenticator rejects: %v", err)
		}
		leaf, err := x509.ParseCertificate(resp.LeafCertificate)
		if err != nil {
			t.Fatal(err)
		}
		id, err := IDFromCertificate(leaf)
		if err != nil {
			t.Fatal(err)
		}
		if id.Namespace != caller.Namespace || id.ServiceAccount != caller.ServiceAccount || id.TrustDomain != ca.TrustDomain() || id.String() != identity {
			t.Fatalf("issued %s for token of %s/%s asking %q", id, caller.Namespace, caller.ServiceAccount, identity)
		}
		if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || leaf.IsCA {
			t.Fatalf("issued leaf with extra names or CA: %+v", leaf)
		}
	})
}
