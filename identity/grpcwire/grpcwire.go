// Package grpcwire speaks the gRPC protocol over net/http's HTTP/2: the unary and bidirectional
// streaming calls weft-proxy makes (ADS to the control plane, Certify to the CA) and the handlers of its
// SDS server. A message is a 5-byte prefix (compressed flag, big-endian length) and the protobuf bytes;
// the call's status comes in the trailers grpc-status and grpc-message (or in the head of a response
// that has no body: "trailers-only").
//
// Why not grpc-go or connect-go: the sidecar runs in every pod and already links net/http's HTTP/2;
// grpc-go adds ~4 MB of resident memory, connect-go ~0.3 MB (its code, type data and tables: a sidecar's
// resident binary pages follow what is linked; measured with bench/proxy, see cmd/weft-proxy/memory.go).
// What is here is the part of the protocol those calls use, tested against grpc-go's client and server.
// It lives under identity/ because both the identity client and the data plane call it, and identity
// is the leaf both may import (DESIGN.md).
//
// Not supported: compression (none is offered; a compressed message is an error), custom metadata,
// messages over MaxMessageSize. A stream the server resets is Unavailable whatever the reset's HTTP/2
// error code (grpc-go maps CANCEL to Canceled): net/http does not export the code.
package grpcwire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
)

// Code is a gRPC status code.
type Code uint32

// The status codes (google.rpc.Code).
const (
	OK Code = iota
	Canceled
	Unknown
	InvalidArgument
	DeadlineExceeded
	NotFound
	AlreadyExists
	PermissionDenied
	ResourceExhausted
	FailedPrecondition
	Aborted
	OutOfRange
	Unimplemented
	Internal
	Unavailable
	DataLoss
	Unauthenticated
)

var codeNames = [...]string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
	"Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Error is a call's non-OK status.
type Error struct {
	Code    Code
	Message string
}

// Error reads as grpc-go's status errors do.
func (e *Error) Error() string {
	return "rpc error: code = " + e.Code.String() + " desc = " + e.Message
}

// Errorf makes a status error.
func Errorf(c Code, format string, a ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, a...)}
}

// CodeOf is err's status code: OK for nil, the code of an *Error in its chain, Canceled or
// DeadlineExceeded for a context's errors, else Unknown.
func CodeOf(err error) Code {
	var e *Error
	switch {
	case err == nil:
		return OK
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return DeadlineExceeded
	}
	return Unknown
}

// MaxMessageSize bounds one received message (an xDS response for a large mesh is a few MB).
const MaxMessageSize = 64 << 20

const contentType = "application/grpc"

// isGRPC accepts application/grpc and its +proto / ;params forms.
func isGRPC(ct string) bool {
	rest, ok := strings.CutPrefix(ct, contentType)
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// frame is m with its message prefix.
func frame(m proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 5, 5+proto.Size(m)), m)
	if err != nil {
		return nil, Errorf(Internal, "encoding the message: %v", err)
	}
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)-5)) // #nosec G115 -- messages are far below 4 GiB (the caller's limits)
	return b, nil
}

// readMessage reads one message into m (nil: skips it): io.EOF when r ends between messages,
// io.ErrUnexpectedEOF inside one, an *Error for a message that cannot be taken, else r's error.
func readMessage(r io.Reader, m proto.Message) error {
	var prefix [5]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return err
	}
	switch prefix[0] {
	case 0:
	case 1:
		return Errorf(Internal, "the peer sent a compressed message, but no compression was negotiated")
	default:
		return Errorf(Internal, "invalid message prefix flag %#x", prefix[0])
	}
	n := binary.BigEndian.Uint32(prefix[1:])
	if n > MaxMessageSize {
		return Errorf(ResourceExhausted, "message of %d bytes is over the limit of %d", n, MaxMessageSize)
	}
	// The buffer grows with what arrives (doubling from 32 KB), not to the declared length at once: a
	// peer that declares 64 MB and sends 10 bytes costs 32 KB, not 64 MB.
	buf := make([]byte, 0, min(int(n), 32<<10))
	for len(buf) < int(n) {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(int(n)-len(buf), cap(buf)))
		}
		k, err := io.ReadFull(r, buf[len(buf):min(cap(buf), int(n))])
		buf = buf[:len(buf)+k]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	if m == nil {
		return nil
	}
	if err := proto.Unmarshal(buf, m); err != nil {
		return Errorf(Internal, "decoding the message: %v", err)
	}
	return nil
}

// Doer sends HTTP requests: an *http.Client whose transport speaks HTTP/2 (h2, or h2c with prior
// knowledge).
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

func newRequest(ctx context.Context, url string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		return nil, Errorf(Internal, "%v", err)
	}
	req.Header = http.Header{
		"Content-Type": {contentType},
		"Te":           {"trailers"},
		"User-Agent":   {"weft-grpcwire"},
	}
	if dl, ok := ctx.Deadline(); ok {
		req.Header["Grpc-Timeout"] = []string{encodeTimeout(time.Until(dl))}
	}
	return req, nil
}

// encodeTimeout is grpc-timeout's value: at most 8 digits and a unit.
func encodeTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	for _, u := range []struct {
		unit string
		d    time.Duration
	}{{"n", time.Nanosecond}, {"u", time.Microsecond}, {"m", time.Millisecond}, {"S", time.Second}, {"M", time.Minute}} {
		if n := (d + u.d - 1) / u.d; n < 1e8 {
			return strconv.FormatInt(int64(n), 10) + u.unit
		}
	}
	return strconv.FormatInt(int64((d+time.Hour-1)/time.Hour), 10) + "H"
}

// decodeTimeout parses grpc-timeout (1 to 8 digits and a unit); ok is false for a malformed value.
func decodeTimeout(v string) (d time.Duration, ok bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if unit == time.Hour && n > uint64(time.Duration(math.MaxInt64)/time.Hour) {
		return time.Duration(math.MaxInt64), true
	}
	return time.Duration(n) * unit, true // #nosec G115 -- at most 8 digits (checked above): no overflow but hours, guarded above
}

// checkHead is the call's error from the response head: nil for a gRPC response.
func checkHead(resp *http.Response) error {
	if resp.StatusCode != http.StatusOK {
		return Errorf(httpStatusCode(resp.StatusCode), "the server answered HTTP %d, not a gRPC response", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !isGRPC(ct) {
		// gRPC's HTTP-to-status mapping: a 200 that is not a gRPC response is Unknown (as grpc-go says).
		return Errorf(Unknown, "the server answered with content type %q, not a gRPC response", ct)
	}
	return nil
}

// httpStatusCode maps a non-200 HTTP status to a gRPC code as gRPC's HTTP-to-gRPC status mapping says.
func httpStatusCode(status int) Code {
	switch status {
	case http.StatusBadRequest:
		return Internal
	case http.StatusUnauthorized:
		return Unauthenticated
	case http.StatusForbidden:
		return PermissionDenied
	case http.StatusNotFound:
		return Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return Unavailable
	}
	return Unknown
}

// trailerStatus is the status the server ended the call with (read once the body is at EOF): nil for
// OK.
func trailerStatus(resp *http.Response) error {
	s, msg := resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
	if s == "" { // trailers-only response
		s, msg = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	}
	if s == "" {
		return Errorf(Internal, "the server ended the call without a gRPC status")
	}
	c, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return Errorf(Internal, "invalid grpc-status %q from the server", s)
	}
	if c == 0 {
		return nil
	}
	return &Error{Code: Code(c), Message: decodeMessage(msg)}
}

// callError is the status for a failure of the transport: the context's own end, else Unavailable.
func callError(ctx context.Context, err error) error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case ctx.Err() != nil:
		return &Error{Code: CodeOf(ctx.Err()), Message: ctx.Err().Error()}
	case pastDeadline(ctx):
		// The server, which got our deadline as grpc-timeout, ended the call (a reset) before the
		// context's own timer fired here.
		return &Error{Code: DeadlineExceeded, Message: context.DeadlineExceeded.Error()}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(Internal, "the response ended inside a message")
	}
	return Errorf(Unavailable, "%v", err)
}

func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// Unary calls a unary method (url: base URL and /package.Service/Method) and decodes its response into
// res. Errors are *Error.
func Unary(ctx context.Context, c Doer, url string, req, res proto.Message) error {
	b, err := frame(req)
	if err != nil {
		return err
	}
	hreq, err := newRequest(ctx, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := c.Do(hreq)
	if err != nil {
		return callError(ctx, err)
	}
	defer resp.Body.Close()
	if err := checkHead(resp); err != nil {
		return err
	}
	switch err := readMessage(resp.Body, res); {
	case err == io.EOF:
		if st := trailerStatus(resp); st != nil {
			return st
		}
		return Errorf(Internal, "the server sent no response message")
	case err != nil:
		return callError(ctx, err)
	}
	if n, err := io.Copy(io.Discard, resp.Body); err != nil {
		return callError(ctx, err)
	} else if n > 0 {
		return Errorf(Internal, "the server sent more than one response message to a unary call")
	}
	return trailerStatus(resp)
}

// Stream is the client side of a bidirectional streaming call. It is not safe for concurrent use (the
// xDS loops Send and Recv from one goroutine); Close releases it.
type Stream struct {
	ctx        context.Context
	cancel     context.CancelFunc
	body       *io.PipeWriter
	halfClosed bool
	head       chan struct{} // closed once resp or err is set
	resp       *http.Response
	err        error
	ended      error // the final status once Recv has read it (io.EOF for OK)
}

// OpenStream starts a call of a streaming method. It returns at once; the request goes out with the
// first Send, and a failure to make the call is the error of Send or Recv.
func OpenStream(ctx context.Context, c Doer, url string) *Stream {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	s := &Stream{ctx: ctx, cancel: cancel, body: pw, head: make(chan struct{})}
	req, err := newRequest(ctx, url, pr)
	if err != nil {
		s.err = err
		close(s.head)
		pr.CloseWithError(err) // Send fails instead of waiting for a reader
		return s
	}
	// net/http's HTTP/2 transport watches the request's context only once the request body has ended:
	// failing the body when the context ends is what resets the stream and unblocks a Recv.
	context.AfterFunc(ctx, func() { pr.CloseWithError(ctx.Err()) })
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			if err = checkHead(resp); err != nil {
				resp.Body.Close()
			} else {
				// Nor does it watch the context, or read the failed body, while it waits for the
				// server's flow control window: closing the response body is what aborts the stream then.
				context.AfterFunc(ctx, func() { resp.Body.Close() })
			}
		}
		if err != nil {
			s.err = callError(ctx, err)
		}
		s.resp = resp
		close(s.head)
	}()
	return s
}

// Send sends a message. Once the call has ended, it returns the call's status (io.EOF if that was OK).
func (s *Stream) Send(m proto.Message) error {
	if s.halfClosed {
		return Errorf(Internal, "Send after CloseSend: the stream's request side is closed")
	}
	b, err := frame(m)
	if err != nil {
		return err
	}
	if _, err := s.body.Write(b); err != nil {
		return s.finish()
	}
	return nil
}

// finish waits for the end of a call whose request side is gone and returns its status.
func (s *Stream) finish() error {
	<-s.head
	if s.err != nil {
		return s.err
	}
	for s.ended == nil {
		if err := s.recv(nil); err != nil && s.ended == nil {
			return err
		}
	}
	return s.ended
}

// CloseSend tells the server that no more messages come (a half-close).
func (s *Stream) CloseSend() error {
	s.halfClosed = true
	return s.body.Close()
}

// Recv receives the next message into m. At the end of the call it returns io.EOF for status OK, else
// the status (*Error).
func (s *Stream) Recv(m proto.Message) error {
	<-s.head
	if s.err != nil {
		return s.err
	}
	return s.recv(m)
}

func (s *Stream) recv(m proto.Message) error {
	if s.ended != nil {
		return s.ended
	}
	err := readMessage(s.resp.Body, m)
	switch {
	case err == nil:
		return nil
	case err == io.EOF:
		s.ended = trailerStatus(s.resp)
		if s.ended == nil {
			s.ended = io.EOF
		}
		return s.ended
	}
	return callError(s.ctx, err)
}

// Close ends the call (resetting it if the server has not ended it) and releases it.
func (s *Stream) Close() {
	s.cancel()
	<-s.head
	if s.resp != nil {
		s.resp.Body.Close()
	}
}

// ServerStream is the server side of a streaming call.
type ServerStream struct {
	r       *http.Request
	w       http.ResponseWriter
	started bool
}

// Context is the call's context: it ends when the client goes away or its deadline (grpc-timeout) passes.
func (s *ServerStream) Context() context.Context { return s.r.Context() }

// Recv receives the next message into m: io.EOF once the client has half-closed.
func (s *ServerStream) Recv(m proto.Message) error {
	err := readMessage(s.r.Body, m)
	switch {
	case err == nil, err == io.EOF:
		return err
	case s.r.Context().Err() != nil:
		return &Error{Code: CodeOf(s.r.Context().Err()), Message: "the client ended the call"}
	}
	return callError(s.r.Context(), err)
}

// Send sends a message (and the response head before the first).
func (s *ServerStream) Send(m proto.Message) error {
	b, err := frame(m)
	if err != nil {
		return err
	}
	if !s.started {
		s.started = true
		s.w.WriteHeader(http.StatusOK)
	}
	if _, err := s.w.Write(b); err != nil {
		return callError(s.r.Context(), err)
	}
	if err := http.NewResponseController(s.w).Flush(); err != nil {
		return callError(s.r.Context(), err)
	}
	return nil
}

// StreamHandler serves a streaming method: fn runs once per call, and its error is the call's status
// (an *Error's code, else Unknown; nil is OK).
func StreamHandler(fn func(*ServerStream) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r, cancel, ok := accept(w, r)
		if !ok {
			return
		}
		defer cancel()
		s := &ServerStream{r: r, w: w}
		finish(s, fn(s))
	})
}

// UnaryHandler serves a unary method: fn gets the request message and returns the response or the
// call's status.
func UnaryHandler[Req, Res any, PReq interface {
	*Req
	proto.Message
}, PRes interface {
	*Res
	proto.Message
}](fn func(context.Context, PReq) (PRes, error)) http.Handler {
	return StreamHandler(func(s *ServerStream) error {
		req := PReq(new(Req))
		if err := s.Recv(req); err == io.EOF {
			return Errorf(Internal, "the client sent no request message")
		} else if err != nil {
			return err
		}
		res, err := fn(s.Context(), req)
		if err != nil {
			return err
		}
		return s.Send(res)
	})
}

// accept answers a request that is not a gRPC call with an HTTP error. For a call, it returns the
// request with the caller's deadline (grpc-timeout) on its context, and the cancel to call at the end.
func accept(w http.ResponseWriter, r *http.Request) (*http.Request, context.CancelFunc, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "gRPC calls are POST requests", http.StatusMethodNotAllowed)
		return nil, nil, false
	}
	if ct := r.Header.Get("Content-Type"); !isGRPC(ct) {
		http.Error(w, fmt.Sprintf("content type %q: this is a gRPC method (application/grpc)", ct), http.StatusUnsupportedMediaType)
		return nil, nil, false
	}
	w.Header().Set("Content-Type", contentType)
	cancel := context.CancelFunc(func() {})
	if v := r.Header.Get("Grpc-Timeout"); v != "" {
		d, ok := decodeTimeout(v)
		if !ok {
			finish(&ServerStream{r: r, w: w}, Errorf(Internal, "malformed grpc-timeout %q", v))
			return nil, nil, false
		}
		var ctx context.Context
		ctx, cancel = context.WithTimeout(r.Context(), d)
		r = r.WithContext(ctx)
	}
	return r, cancel, true
}

// finish writes the call's status: as trailers after messages, or in the head of a response without
// any (trailers-only).
func finish(s *ServerStream, err error) {
	code, msg := CodeOf(err), ""
	var e *Error
	switch {
	case errors.As(err, &e):
		msg = e.Message
	case err != nil:
		msg = err.Error()
	}
	prefix := ""
	if s.started {
		prefix = http.TrailerPrefix
	}
	h := s.w.Header()
	h.Set(prefix+"Grpc-Status", strconv.Itoa(int(code)))
	if msg != "" {
		h.Set(prefix+"Grpc-Message", encodeMessage(msg))
	}
	if !s.started {
		s.w.WriteHeader(http.StatusOK)
	}
}

// encodeMessage percent-encodes grpc-message: bytes outside printable ASCII, and '%'.
func encodeMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// decodeMessage undoes encodeMessage; a malformed escape is kept as it is, as gRPC says.
func decodeMessage(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b = append(b, byte(v))
				i += 2
				continue
			}
		}
		b = append(b, s[i])
	}
	return string(b)
}
