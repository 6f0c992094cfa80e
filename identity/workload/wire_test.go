package workload

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/weftmesh/weft/identity/workload/internal/certifypb"
	identityv1 "github.com/weftmesh/weft/proto/weft/identity/v1"
)

// TestWireCompatible checks the client's mirrors of the Certify messages against the service's own:
// every field has the same number, kind and cardinality, both ways, so the bytes of one decode into the
// other field for field.
func TestWireCompatible(t *testing.T) {
	for _, p := range []struct{ mirror, real proto.Message }{
		{&certifypb.CertifyRequest{}, &identityv1.CertifyRequest{}},
		{&certifypb.CertifyResponse{}, &identityv1.CertifyResponse{}},
	} {
		m, r := p.mirror.ProtoReflect().Descriptor(), p.real.ProtoReflect().Descriptor()
		if m.Name() != r.Name() {
			t.Errorf("%s mirrors %s", m.FullName(), r.FullName())
		}
		sameFields(t, m, r)
		sameFields(t, r, m)
	}
}

func sameFields(t *testing.T, a, b protoreflect.MessageDescriptor) {
	t.Helper()
	for i := range a.Fields().Len() {
		fa := a.Fields().Get(i)
		fb := b.Fields().ByName(fa.Name())
		if fb == nil {
			t.Errorf("%s: no field %s in %s", a.FullName(), fa.Name(), b.FullName())
			continue
		}
		if fa.Number() != fb.Number() || fa.Kind() != fb.Kind() || fa.Cardinality() != fb.Cardinality() {
			t.Errorf("%s.%s: %d %v %v, %s: %d %v %v", a.FullName(), fa.Name(), fa.Number(), fa.Cardinality(), fa.Kind(),
				b.FullName(), fb.Number(), fb.Cardinality(), fb.Kind())
		}
		if fa.Message() != nil && fa.Message().FullName() != fb.Message().FullName() {
			t.Errorf("%s.%s: message %s, %s has %s", a.FullName(), fa.Name(), fa.Message().FullName(), b.FullName(), fb.Message().FullName())
		}
	}
}
