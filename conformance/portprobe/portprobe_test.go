package portprobe_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"testing"

	"github.com/weftmesh/weft/conformance/portprobe"
)

// recorder is a testing.TB that counts errors instead of failing.
type recorder struct {
	testing.TB
	errors int
}

func (r *recorder) Helper()                       {}
func (r *recorder) Errorf(string, ...any)         { r.errors++ }
func (r *recorder) Fatalf(f string, a ...any)     { r.TB.Fatalf(f, a...) }
func (r *recorder) Logf(format string, a ...any)  {}
func (r *recorder) Error(...any)                  { r.errors++ }
func (r *recorder) Fatal(a ...any)                { r.TB.Fatal(a...) }
func (r *recorder) Skipf(format string, a ...any) { r.TB.Skipf(format, a...) }

// TestNoPrivateKeyFindsEveryForm: the dump check catches the key as PEM, DER, base64, hex and as its
// bare scalar (in a JSON []byte field, as protojson writes bytes), and passes a dump without it.
func TestNoPrivateKeyFindsEveryForm(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	d, _ := k.Bytes()
	jsonD, _ := json.Marshal(map[string][]byte{"k": d})
	for name, dump := range map[string][]byte{
		"PEM":           keyPEM,
		"DER":           append([]byte("x"), der...),
		"base64 DER":    []byte(base64.StdEncoding.EncodeToString(der)),
		"hex DER":       []byte(hex.EncodeToString(der)),
		"scalar":        d,
		"scalar (JSON)": jsonD,
	} {
		r := &recorder{TB: t}
		portprobe.NoPrivateKey(r, name, dump, keyPEM)
		if r.errors == 0 {
			t.Errorf("a dump holding the key as %s passed", name)
		}
	}
	r := &recorder{TB: t}
	portprobe.NoPrivateKey(r, "clean", []byte(fmt.Sprintf(`{"certificate": %q}`, "MIIB...")), keyPEM)
	if r.errors != 0 {
		t.Errorf("a clean dump failed")
	}
}
