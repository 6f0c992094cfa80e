// Package dataplane is weft-proxy's data plane: the xDS client (xdsclient), the decoded configuration
// (config), the listeners and proxying (proxy), and the admin server (admin). This file defines what the
// data plane needs from an identity source; the identity issue's rotating client and the --cert-dir
// file loader (certfile) both satisfy it.
package dataplane

import (
	"crypto/tls"
	"crypto/x509"
)

// Identity is the workload's current certificate and trust bundle. Implementations rotate both behind
// these calls; the proxy asks for them on every handshake, so a rotation needs no restart.
type Identity interface {
	Certificate() (*tls.Certificate, error) // current workload cert (chain + key)
	TrustBundle() *x509.CertPool            // current roots for verifying peers
}
