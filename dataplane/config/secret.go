package config

import (
	"crypto/x509"
	"errors"
	"fmt"

	xp "github.com/weftmesh/weft/dataplane/internal/xdsproto"
)

// TrustBundleSecret is the SDS secret holding the mesh's trust anchors (DESIGN.md).
const TrustBundleSecret = "ROOTCA"

// Secret is a decoded SDS secret: only a validation context with inline PEM anchors is supported (the
// workload's own certificate never comes from the control plane).
type Secret struct {
	Name      string
	TrustedCA []byte // PEM
}

// decodeSecret validates and decodes a Secret.
func decodeSecret(s *xp.Secret) (*Secret, error) {
	if s.GetName() == "" {
		return nil, errors.New("secret has no name")
	}
	vc := s.GetValidationContext()
	if vc == nil {
		return nil, fmt.Errorf("secret %q: only validation_context secrets are supported (the workload certificate comes from the identity client)", s.GetName())
	}
	pem := vc.GetTrustedCa().GetInlineBytes()
	if len(pem) == 0 {
		pem = []byte(vc.GetTrustedCa().GetInlineString())
	}
	if len(pem) == 0 {
		return nil, fmt.Errorf("secret %q: trusted_ca must be inline PEM", s.GetName())
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("secret %q: trusted_ca holds no PEM certificate", s.GetName())
	}
	return &Secret{Name: s.GetName(), TrustedCA: pem}, nil
}
