package server

import (
	"sync"
	"unicode/utf8"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// GRPCServerOptions are the options the gRPC server that carries this Server's services should be
// made with: a codec that writes the pre-encoded SotW responses (encoded once per version and
// resource set, shared by every stream) as they are, instead of encoding each one again per stream,
// and that decodes requests without a pooled copy. Every other message is (de)coded as by gRPC's
// own proto codec. Without these options everything still works, only slower.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{proto: encoding.GetCodecV2(protoenc.Name), names: &interned{m: map[string]string{}}})}
}

// preEncoded is a DiscoveryResponse whose bytes are already known: wire holds every field but the
// nonce (shared by all streams sent the same resources at the same version), nonce the encoded
// nonce field. The embedded message is the same response, which gRPC's default codec marshals.
type preEncoded struct {
	*discoverypb.DiscoveryResponse
	wire  []byte
	nonce []byte
}

type codec struct {
	proto encoding.CodecV2
	names *interned
}

func (codec) Name() string { return protoenc.Name }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preEncoded); ok && p.wire != nil {
		// A protobuf message may hold its fields in any order: the nonce goes last. gRPC only
		// reads these buffers (SliceBuffer's Free does nothing), so the shared bytes stay intact.
		return mem.BufferSlice{mem.SliceBuffer(p.wire), mem.SliceBuffer(p.nonce)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok || len(data) != 1 {
		return c.proto.Unmarshal(data, v)
	}
	// One buffer (the usual case): decode it in place; the decoded message copies what it keeps.
	b := data[0].ReadOnlyData()
	if req, ok := m.(*discoverypb.DiscoveryRequest); ok && c.names.decodeACK(b, req) {
		return nil
	}
	return proto.Unmarshal(b, m)
}

// interned holds one copy of each resource name and type URL seen in requests, so the requests
// of thousands of streams, each repeating the same hundreds of names in every ACK, share them
// instead of allocating each name again. It stops growing at maxInterned names (a client sending
// made-up names cannot make it grow without bound); names past that are allocated as usual.
type interned struct {
	mu sync.RWMutex
	m  map[string]string
}

const maxInterned = 1 << 17

func (in *interned) get(b []byte) (string, bool) {
	in.mu.RLock()
	s, ok := in.m[string(b)] // no allocation: the compiler looks up without converting
	in.mu.RUnlock()
	if ok {
		return s, true
	}
	if !utf8.Valid(b) {
		return "", false
	}
	s = string(b)
	in.mu.Lock()
	if len(in.m) < maxInterned {
		in.m[s] = s
	}
	in.mu.Unlock()
	return s, true
}

// decodeACK decodes req from b when it holds only the fields of an ACK or a subscription change
// (version, resource names, type URL, nonce), as most requests do; anything else (a node, an
// error detail, another field) is left to the full decoder, as is anything malformed.
func (in *interned) decodeACK(b []byte, req *discoverypb.DiscoveryRequest) bool {
	var version, typeURL, nonce string
	var names []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return false
		}
		b = b[n:]
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch num {
		case 1, 5:
			if !utf8.Valid(v) {
				return false
			}
			if num == 1 {
				version = string(v)
			} else {
				nonce = string(v)
			}
		case 3, 4:
			s, ok := in.get(v)
			if !ok {
				return false
			}
			if num == 3 {
				if names == nil {
					names = make([]string, 0, 16)
				}
				names = append(names, s)
			} else {
				typeURL = s
			}
		default:
			return false
		}
	}
	proto.Reset(req)
	req.VersionInfo, req.ResourceNames, req.TypeUrl, req.ResponseNonce = version, names, typeURL, nonce
	return true
}
