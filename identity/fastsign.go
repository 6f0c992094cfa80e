package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"
)

// A workload leaf has a fixed shape (LeafTemplate), so the CA can encode it directly, as
// x509.CreateCertificate would (TestFastLeafMatchesCreateCertificate proves the bytes are the same),
// but without CreateCertificate's check of its own signature: that check is one more ECDSA verify per
// certificate, a third of the cost of issuance, and guards against faulty crypto.Signers, which an
// in-memory *ecdsa.PrivateKey is not. The CA then costs what the work needs: one CSR verify, one sign.

var (
	oidSignatureECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidExtKeyUsage              = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtExtendedKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidExtBasicConstraints      = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtAuthorityKeyID        = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtSubjectAltName        = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidServerAuth               = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth               = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}

	// The constant extensions of every leaf.
	extLeafKeyUsage    = mustExt(oidExtKeyUsage, true, asn1.BitString{Bytes: []byte{0x80}, BitLength: 1}) // digitalSignature
	extLeafExtKeyUsage = mustExt(oidExtExtendedKeyUsage, false, []asn1.ObjectIdentifier{oidServerAuth, oidClientAuth})
	extLeafBasic       = mustExt(oidExtBasicConstraints, true, struct{}{}) // CA false, no path length
)

func mustExt(id asn1.ObjectIdentifier, critical bool, v any) pkix.Extension {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return pkix.Extension{Id: id, Critical: critical, Value: b}
}

// The structures of RFC 5280 as crypto/x509 marshals them.
type tbsCertificate struct {
	Version            int `asn1:"optional,explicit,default:0,tag:0"`
	SerialNumber       *big.Int
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Issuer             asn1.RawValue
	Validity           validity
	Subject            asn1.RawValue
	PublicKey          asn1.RawValue
	Extensions         []pkix.Extension `asn1:"omitempty,optional,explicit,tag:3"`
}

type validity struct {
	NotBefore, NotAfter time.Time
}

type certificate struct {
	TBSCertificate     asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	SignatureValue     asn1.BitString
}

type authKeyID struct {
	ID []byte `asn1:"optional,tag:0"`
}

// canSignFast reports whether the issuer's key allows the direct encoding (ECDSA P-256, SHA-256).
func canSignFast(iss *Issuer) bool {
	k, ok := iss.Key.(*ecdsa.PrivateKey)
	return ok && k.Curve == elliptic.P256()
}

// signLeafFast encodes and signs a leaf of LeafTemplate's shape for the public key in DER
// SubjectPublicKeyInfo form (a CSR's RawSubjectPublicKeyInfo).
func signLeafFast(iss *Issuer, tmpl *x509.Certificate, spki []byte) ([]byte, error) {
	issuer := iss.Chain[0]
	exts := []pkix.Extension{extLeafKeyUsage, extLeafExtKeyUsage, extLeafBasic}
	if len(issuer.SubjectKeyId) > 0 {
		akid, err := asn1.Marshal(authKeyID{issuer.SubjectKeyId})
		if err != nil {
			return nil, err
		}
		exts = append(exts, pkix.Extension{Id: oidExtAuthorityKeyID, Value: akid})
	}
	var sans []asn1.RawValue
	for _, u := range tmpl.URIs {
		sans = append(sans, asn1.RawValue{Tag: 6, Class: asn1.ClassContextSpecific, Bytes: []byte(u.String())})
	}
	sanDER, err := asn1.Marshal(sans)
	if err != nil {
		return nil, err
	}
	exts = append(exts, pkix.Extension{Id: oidExtSubjectAltName, Critical: true, Value: sanDER}) // empty subject → critical
	sigAlg := pkix.AlgorithmIdentifier{Algorithm: oidSignatureECDSAWithSHA256}
	tbs, err := asn1.Marshal(tbsCertificate{
		Version:            2,
		SerialNumber:       tmpl.SerialNumber,
		SignatureAlgorithm: sigAlg,
		Issuer:             asn1.RawValue{FullBytes: issuer.RawSubject},
		Validity:           validity{tmpl.NotBefore.UTC(), tmpl.NotAfter.UTC()},
		Subject:            asn1.RawValue{FullBytes: []byte{0x30, 0}},
		PublicKey:          asn1.RawValue{FullBytes: spki},
		Extensions:         exts,
	})
	if err != nil {
		return nil, fmt.Errorf("encoding the certificate: %w", err)
	}
	digest := sha256.Sum256(tbs)
	sig, err := iss.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate: %w", err)
	}
	return asn1.Marshal(certificate{
		TBSCertificate:     asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: sigAlg,
		SignatureValue:     asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
}
