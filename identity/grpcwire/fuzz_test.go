package grpcwire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
)

// prefixed is a message body with gRPC's 5-byte prefix declaring n bytes.
func prefixed(flag byte, n uint32, body []byte) []byte {
	b := []byte{flag, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], n)
	return append(b, body...)
}

// allocatedReading is the bytes allocated while reading every message of data, and the error that ended it.
func allocatedReading(data []byte) (uint64, int, error) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := bytes.NewReader(data)
	n := 0
	var err error
	for {
		var m testgrpc.SimpleRequest
		if err = readMessage(r, &m); err != nil {
			break
		}
		n++
	}
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, n, err
}

// FuzzReadMessage feeds arbitrary bytes to the length-prefixed message reader that both Certify's
// client and server use. It must not panic; it ends with io.EOF (between messages),
// io.ErrUnexpectedEOF (inside one) or a gRPC *Error; and it allocates in proportion to the bytes that
// arrived, not to the length a prefix declares (at most 64 MB, which a peer can declare in 5 bytes).
func FuzzReadMessage(f *testing.F) {
	good, err := proto.Marshal(&testgrpc.SimpleRequest{ResponseSize: 3, Payload: &testgrpc.Payload{Body: []byte("hello")}, FillUsername: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(prefixed(0, uint32(len(good)), good))
	f.Add(append(prefixed(0, uint32(len(good)), good), prefixed(0, 0, nil)...))
	f.Add(prefixed(0, uint32(len(good)), good[:len(good)-1]))
	f.Add(prefixed(1, uint32(len(good)), good))
	f.Add(prefixed(2, 0, nil))
	f.Add(prefixed(0, MaxMessageSize, []byte("short")))
	f.Add(prefixed(0, MaxMessageSize+1, nil))
	f.Add(prefixed(0, 4, []byte{0xff, 0xff, 0xff, 0xff}))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		alloc, _, err := allocatedReading(data)
		var we *Error
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &we) {
			t.Fatalf("reading %q ended with %v (%T), want io.EOF, io.ErrUnexpectedEOF or *Error", data, err, err)
		}
		if limit := uint64(8*len(data)) + 4<<20; alloc > limit {
			t.Fatalf("reading %d bytes allocated %d bytes (limit %d)", len(data), alloc, limit)
		}
	})
}

// TestReadMessageAllocatesWhatArrives: a prefix declaring 64 MB followed by 10 bytes costs about
// 32 KB (the test allows 4 MB of background noise), not 64 MB; one declaring more than 64 MB is
// refused as ResourceExhausted; and a real 1 MB message still reads whole.
func TestReadMessageAllocatesWhatArrives(t *testing.T) {
	alloc, _, err := allocatedReading(prefixed(0, MaxMessageSize, []byte("0123456789")))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated 64 MB message: %v, want io.ErrUnexpectedEOF", err)
	}
	if alloc > 4<<20 {
		t.Errorf("a 64 MB prefix with 10 bytes allocated %d bytes, want under 4 MB (the buffer grows from 32 KB)", alloc)
	}
	if _, _, err := allocatedReading(prefixed(0, MaxMessageSize+1, nil)); CodeOf(err) != ResourceExhausted {
		t.Errorf("over-limit prefix: %v, want ResourceExhausted", err)
	}
	big := &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: bytes.Repeat([]byte("x"), 1<<20)}}
	b, err := frame(big)
	if err != nil {
		t.Fatal(err)
	}
	var got testgrpc.SimpleRequest
	if err := readMessage(bytes.NewReader(b), &got); err != nil || !proto.Equal(&got, big) {
		t.Fatalf("1 MB message: %v, equal %v", err, proto.Equal(&got, big))
	}
}
