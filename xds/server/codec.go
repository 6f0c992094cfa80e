package server

import (
	"bytes"
	"unicode/utf8"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/xds"
)

// GRPCServerOptions are the options the gRPC server that carries this Server's services should be
// made with: a codec that writes the pre-encoded SotW responses (encoded once per version and
// resource set, shared by every stream) as they are, instead of encoding each one again per stream,
// and that hands SotW ADS requests to their stream undecoded (see decodeRequest). Every other
// message is (de)coded as by gRPC's own proto codec. Without these options everything still works,
// only slower.
//
// The flow-control windows are static (1 MB per stream, 8 MB per connection: a SotW request names
// every subscribed resource, ~50 bytes each) instead of gRPC's dynamic ones, whose bandwidth
// estimation sends a PING on every burst of data a connection receives: each ACK of every proxy
// cost the server a PING written and its answer read, for windows that xDS requests never fill.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(codec{encoding.GetCodecV2(protoenc.Name)}),
		grpc.StaticStreamWindowSize(1 << 20),
		grpc.StaticConnWindowSize(8 << 20),
	}
}

// preEncoded is a DiscoveryResponse whose bytes are already known: wire holds every field but the
// nonce (shared by all streams sent the same resources at the same version), nonce the encoded
// nonce field. The embedded message is the same response, which gRPC's default codec marshals.
type preEncoded struct {
	*discoverypb.DiscoveryResponse
	wire  []byte
	nonce []byte
}

type codec struct{ proto encoding.CodecV2 }

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
	if r, ok := v.(*rawRequest); ok {
		// Kept as it came (no copy: a reference to gRPC's buffers, released once decoded): the
		// stream decodes it, knowing its last request (see decodeRequest).
		data.Ref()
		r.data = data
		return nil
	}
	// One buffer (the usual case): decode it in place; the decoded message copies what it keeps.
	return proto.Unmarshal(data[0].ReadOnlyData(), m)
}

// rawRequest receives a DiscoveryRequest on a SotW ADS stream. With our codec, raw holds its bytes;
// with gRPC's own, the embedded message is decoded as usual.
type rawRequest struct {
	*discoverypb.DiscoveryRequest
	data mem.BufferSlice
}

// knownTypes are the type URLs a request usually names, so decoding one allocates nothing.
var knownTypes = []string{xds.ClusterType, xds.EndpointType, xds.ListenerType, xds.RouteType, xds.SecretType}

var errBadRequest = status.Error(codes.InvalidArgument, "malformed DiscoveryRequest")

// decodeRequest decodes a request of a stream. When it holds only the fields of an ACK or a
// subscription (version, resource names, type URL, nonce) and its names are byte for byte those of
// the stream's last request of that type (as an ACK's are), it reuses that request's names instead
// of decoding hundreds of strings again; anything else is decoded in full.
func (as *adsStream) decodeRequest(r *rawRequest) (*discoverypb.DiscoveryRequest, error) {
	if r.data == nil {
		return r.DiscoveryRequest, nil
	}
	defer r.data.Free()
	var b []byte
	if len(r.data) == 1 {
		b = r.data[0].ReadOnlyData()
	} else {
		b = r.data.Materialize()
	}
	var version, typeURL, nonce []byte
	spanStart, spanEnd := -1, -1 // the resource_names fields, when they are contiguous
	fast := true
	for off := 0; off < len(b) && fast; {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 || typ != protowire.BytesType {
			fast = false
			break
		}
		v, m := protowire.ConsumeBytes(b[off+n:])
		if m < 0 {
			return nil, errBadRequest
		}
		switch num {
		case 1, 4, 5:
			if !utf8.Valid(v) {
				// Every occurrence, not only the last one that wins: protobuf refuses the request.
				fast = false
			}
		}
		switch num {
		case 1:
			version = v
		case 3:
			if spanStart < 0 {
				spanStart = off
			} else if spanEnd != off {
				fast = false // names interleaved with other fields
			}
			spanEnd = off + n + m
		case 4:
			typeURL = v
		case 5:
			nonce = v
		default:
			fast = false
		}
		off += n + m
	}
	if !fast {
		req := &discoverypb.DiscoveryRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "malformed DiscoveryRequest: %v", err)
		}
		return req, nil
	}
	req := &discoverypb.DiscoveryRequest{VersionInfo: string(version), ResponseNonce: string(nonce)}
	req.TypeUrl = string(typeURL)
	for _, k := range knownTypes {
		if k == req.TypeUrl {
			req.TypeUrl = k
		}
	}
	if spanStart < 0 {
		return req, nil
	}
	span := b[spanStart:spanEnd]
	t := as.typ(req.TypeUrl)
	if t != nil && t.rawNames != nil && bytes.Equal(t.rawNames, span) {
		req.ResourceNames = t.rawNamesDecoded
		return req, nil
	}
	if t == nil && as.first.typeURL == req.TypeUrl && bytes.Equal(as.first.raw, span) {
		req.ResourceNames = as.first.names
		return req, nil
	}
	// Names of resources we serve are taken from the server's table: one copy for every stream.
	known := as.s.names.Load()
	names := make([]string, 0, len(span)/32)
	for off := 0; off < len(span); {
		_, _, n := protowire.ConsumeTag(span[off:])
		v, m := protowire.ConsumeBytes(span[off+n:])
		if k, ok := (*known)[string(v)]; ok {
			names = append(names, k)
		} else if utf8.Valid(v) {
			names = append(names, string(v))
		} else {
			return nil, errBadRequest
		}
		off += n + m
	}
	req.ResourceNames = names
	if t != nil {
		t.rawNames, t.rawNamesDecoded = bytes.Clone(span), names
	} else { // the first request of a type: handle makes its state, which takes these
		as.first.typeURL, as.first.raw, as.first.names = req.TypeUrl, bytes.Clone(span), names
	}
	return req, nil
}
