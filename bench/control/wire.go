package main

import (
	"bytes"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// The simulated proxies read only what they use from a DiscoveryResponse (type, version, nonce,
// the resource names, and the one marked ClusterLoadAssignment) straight from the wire, and write
// their requests from pre-encoded parts: thousands of them share two cores with the servers, and a
// full decode of every resource they then ignore made the harness, not the server, the slower side.
// Both servers are measured with the same clients.

const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

var adsStreamDesc = grpc.StreamDesc{StreamName: "StreamAggregatedResources", ServerStreams: true, ClientStreams: true}

// response is what a simulated proxy keeps of a DiscoveryResponse. marked is set by the caller
// before decoding: the cluster whose endpoints carry the round marker.
type response struct {
	marked                  string
	typeURL, version, nonce string
	names                   []string // field 1 (the name) of every resource, in order
	round                   int      // the marker round, when the marked CLA was in it; else -1
	bytes                   int      // resource bytes
}

// request is an encoded DiscoveryRequest in two parts: the small fields, and the resource_names
// fields shared by every request of a client (a SotW EDS ACK repeats all ~100 names; copying them
// per ACK was a large part of the harness's allocations). Protobuf fields may come in any order.
type request struct{ head, names []byte }

// newRequest encodes a request; node (an encoded Node) and names (encoded resource_names fields)
// may be nil. names is not copied.
func newRequest(node []byte, typeURL, version, nonce string, names []byte) request {
	b := make([]byte, 0, len(node)+len(typeURL)+len(version)+len(nonce)+16)
	if version != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, version)
	}
	if node != nil {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, node)
	}
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, typeURL)
	if nonce != "" {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, nonce)
	}
	return request{head: b, names: names}
}

// encodeNames is the resource_names fields (3) for names.
func encodeNames(names []string) []byte {
	var b []byte
	for _, n := range names {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, n)
	}
	return b
}

// wireCodec writes requests and reads responses as above; the servers see ordinary protobuf.
type wireCodec struct{}

func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	r, ok := v.(request)
	if !ok {
		return nil, fmt.Errorf("wire codec: cannot encode %T", v)
	}
	if len(r.names) == 0 {
		return mem.BufferSlice{mem.SliceBuffer(r.head)}, nil
	}
	// gRPC only reads these buffers (SliceBuffer's Free does nothing): the shared names stay intact.
	return mem.BufferSlice{mem.SliceBuffer(r.head), mem.SliceBuffer(r.names)}, nil
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*response)
	if !ok {
		return fmt.Errorf("wire codec: cannot decode into %T", v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		b = data.Materialize()
	}
	return r.decode(b)
}

var errMalformed = errors.New("malformed DiscoveryResponse")

func (r *response) decode(b []byte) error {
	r.typeURL, r.version, r.nonce, r.names, r.round, r.bytes = "", "", "", r.names[:0], -1, 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errMalformed
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		switch num {
		case 1:
			r.version = string(v)
		case 2:
			if err := r.resource(v); err != nil {
				return err
			}
		case 4:
			r.typeURL = string(v)
		case 5:
			r.nonce = string(v)
		}
	}
	return nil
}

// markerInWire finds the round marker address (see markerAddr) in an encoded ClusterLoadAssignment
// without decoding it: an address is a plain string field, and only the marker starts 10.250.
func markerInWire(cla []byte) int {
	i := bytes.Index(cla, []byte("10.250."))
	if i < 0 {
		return -1
	}
	rest := cla[i+len("10.250."):]
	x, n := digits(rest)
	if n == 0 || n >= len(rest) || rest[n] != '.' {
		return -1
	}
	y, m := digits(rest[n+1:])
	if m == 0 {
		return -1
	}
	return x*250 + y
}

func digits(b []byte) (v, n int) {
	for n < len(b) && n < 3 && b[n] >= '0' && b[n] <= '9' {
		v = v*10 + int(b[n]-'0')
		n++
	}
	return v, n
}

// resource reads one google.protobuf.Any: its value's name, and the marker if it is the marked CLA.
func (r *response) resource(any []byte) error {
	for len(any) > 0 {
		num, typ, n := protowire.ConsumeTag(any)
		if n < 0 {
			return errMalformed
		}
		any = any[n:]
		if num != 2 || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, any)
			if n < 0 {
				return errMalformed
			}
			any = any[n:]
			continue
		}
		value, n := protowire.ConsumeBytes(any)
		if n < 0 {
			return errMalformed
		}
		any = any[n:]
		r.bytes += len(value)
		name := field1(value)
		r.names = append(r.names, name)
		if name == r.marked {
			r.round = markerInWire(value)
		}
	}
	return nil
}
