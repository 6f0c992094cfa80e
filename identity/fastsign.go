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

// canSignFast reports whether the issuer's key allows the direct encoding (ECDSA P-256, SHA-256).
func canSignFast(iss *Issuer) bool {
	k, ok := iss.Key.(*ecdsa.PrivateKey)
	return ok && k.Curve == elliptic.P256()
}

// signLeafFast encodes and signs a leaf of LeafTemplate's shape for the public key in DER
// SubjectPublicKeyInfo form (a CSR's RawSubjectPublicKeyInfo). The TBSCertificate is written directly
// in DER (constant parts encoded once with encoding/asn1), which costs a fraction of reflection.
func signLeafFast(iss *Issuer, tmpl *x509.Certificate, spki []byte) ([]byte, error) {
	issuer := iss.Chain[0]
	exts := make([]byte, 0, 256)
	exts = append(exts, leafConstExts...)
	if len(issuer.SubjectKeyId) > 0 {
		// SEQUENCE { OID authorityKeyIdentifier, OCTET STRING { SEQUENCE { [0] keyIdentifier } } }
		keyID := derTLV(0x80, issuer.SubjectKeyId)
		exts = append(exts, derTLV(0x30, derOIDAuthorityKeyID, derTLV(0x04, derTLV(0x30, keyID)))...)
	}
	var sans []byte
	for _, u := range tmpl.URIs {
		s := u.String()
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return nil, fmt.Errorf("URI SAN %q is not IA5String", s)
			}
		}
		sans = append(sans, derTLV(0x86, []byte(s))...)
	}
	// SEQUENCE { OID subjectAltName, BOOLEAN TRUE (critical: the subject is empty), OCTET STRING { SEQUENCE { names } } }
	exts = append(exts, derTLV(0x30, derOIDSubjectAltName, derTrue, derTLV(0x04, derTLV(0x30, sans)))...)

	serial, err := asn1.Marshal(tmpl.SerialNumber)
	if err != nil {
		return nil, err
	}
	notBefore, err := derTime(tmpl.NotBefore)
	if err != nil {
		return nil, err
	}
	notAfter, err := derTime(tmpl.NotAfter)
	if err != nil {
		return nil, err
	}
	tbs := derTLV(0x30,
		derVersion3,
		serial,
		derSigAlgECDSAWithSHA256,
		issuer.RawSubject,
		derTLV(0x30, notBefore, notAfter),
		derEmptySubject,
		spki,
		derTLV(0xa3, derTLV(0x30, exts)),
	)
	digest := sha256.Sum256(tbs)
	sig, err := iss.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate: %w", err)
	}
	return derTLV(0x30, tbs, derSigAlgECDSAWithSHA256, derTLV(0x03, []byte{0}, sig)), nil
}

// DER pieces of every leaf.
var (
	derVersion3              = []byte{0xa0, 0x03, 0x02, 0x01, 0x02} // [0] EXPLICIT INTEGER 2
	derEmptySubject          = []byte{0x30, 0x00}
	derTrue                  = []byte{0x01, 0x01, 0xff}
	derSigAlgECDSAWithSHA256 = mustMarshal(pkix.AlgorithmIdentifier{Algorithm: oidSignatureECDSAWithSHA256})
	derOIDAuthorityKeyID     = mustMarshal(oidExtAuthorityKeyID)
	derOIDSubjectAltName     = mustMarshal(oidExtSubjectAltName)
	leafConstExts            = append(append(mustMarshal(extLeafKeyUsage), mustMarshal(extLeafExtKeyUsage)...), mustMarshal(extLeafBasic)...)
)

func mustMarshal(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// derTLV encodes tag, definite length and the concatenated contents.
func derTLV(tag byte, contents ...[]byte) []byte {
	n := 0
	for _, c := range contents {
		n += len(c)
	}
	out := make([]byte, 0, n+6)
	out = append(out, tag)
	switch {
	case n < 0x80:
		out = append(out, byte(n))
	case n < 0x100:
		out = append(out, 0x81, byte(n))
	case n < 0x10000:
		out = append(out, 0x82, byte(n>>8), byte(n))
	default:
		out = append(out, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	for _, c := range contents {
		out = append(out, c...)
	}
	return out
}

// derTime encodes a validity time as RFC 5280 wants: UTCTime through 2049, GeneralizedTime after.
func derTime(t time.Time) ([]byte, error) {
	t = t.UTC()
	switch y := t.Year(); {
	case y >= 1950 && y < 2050:
		return derTLV(0x17, []byte(t.Format("060102150405Z"))), nil
	case y >= 0 && y <= 9999:
		return derTLV(0x18, []byte(t.Format("20060102150405Z"))), nil
	default:
		return nil, fmt.Errorf("time %v cannot be encoded", t)
	}
}
