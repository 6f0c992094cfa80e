package proxy

import (
	"bytes"
	"net/http"
	"strconv"
)

// The lean heads: the common request head of the HTTP/1.1 fast path and the common response head of
// an HTTP/1.1 upstream, parsed in place (header lines as byte slices into the read buffers, no
// http.Request, http.Response or http.Header maps) and written out again as today's path writes them:
// a GET or HEAD goes upstream exactly as http.ReadRequest + forward's header rules + writeRequest
// would write it, and the response reaches the client exactly as http.ReadResponse + the forwarder +
// fastResponse would write it (header keys canonical and sorted, hop-by-hop headers dropped, Date and
// a sniffed Content-Type added when missing). h1lean_test.go checks both byte for byte against that
// path. In the bench's profiles that parsing and those maps were most of the proxy's user-space CPU.
//
// The parsers accept a strict subset: anything they do not know exactly how net/http would treat
// (obs-fold, percent-escapes in the path, a Pragma, a Connection header naming other headers, chunked
// or unframed bodies, 1xx, a head larger than the buffer, bytes net/http would refuse...) is left to
// today's path, which keeps every protocol detail.

// leanHdr is one header line: its canonical key and its trimmed value.
type leanHdr struct {
	key, val []byte
}

// leanKeysCap bounds the canonical keys of one head: a head fits in a 4 KB buffer, so its keys do.
const leanKeysCap = 4 << 10

// leanReq is a parsed request head.
type leanReq struct {
	head       bool // HEAD (else GET)
	target     []byte
	path       []byte
	host       []byte
	ua         []byte
	hasUA      bool
	teTrailers bool
	hdrs       []leanHdr // the headers that go upstream besides Host and User-Agent, sorted by key
	keys       []byte    // canonical keys (cap leanKeysCap: slices into it stay valid)
}

var (
	crlf     = []byte("\r\n")
	crlfcrlf = []byte("\r\n\r\n")
	proto11  = []byte(" HTTP/1.1")
	keyTe    = []byte("Te")
	valTrail = []byte("trailers")
)

// parse parses head (request line through the blank line); false leaves the request to today's path.
func (q *leanReq) parse(head []byte) bool {
	if q.keys == nil {
		q.keys = make([]byte, 0, leanKeysCap)
	}
	q.keys, q.hdrs = q.keys[:0], q.hdrs[:0]
	q.host, q.ua, q.hasUA, q.teTrailers = nil, nil, false, false
	line, rest, ok := bytes.Cut(head, crlf)
	if !ok {
		return false
	}
	switch {
	case bytes.HasPrefix(line, []byte("GET /")):
		q.head, q.target = false, line[4:]
	case bytes.HasPrefix(line, []byte("HEAD /")):
		q.head, q.target = true, line[5:]
	default:
		return false
	}
	if !bytes.HasSuffix(q.target, proto11) {
		return false
	}
	q.target = q.target[:len(q.target)-len(proto11)]
	q.path = q.target
	if i := bytes.IndexByte(q.target, '?'); i >= 0 {
		q.path = q.target[:i]
		if !leanQuery(q.target[i+1:]) {
			return false
		}
	}
	if !leanPath(q.path) {
		return false
	}
	hasHost := false
	for {
		h, r, ok := bytes.Cut(rest, crlf)
		if !ok {
			return false
		}
		rest = r
		if len(h) == 0 {
			break
		}
		k0 := len(q.keys)
		key, val, ok := q.line(h)
		if !ok {
			return false
		}
		drop := true
		switch string(key) {
		case "Host":
			if hasHost {
				return false
			}
			hasHost, q.host = true, val
		case "User-Agent":
			if !q.hasUA {
				q.hasUA, q.ua = true, val
			}
		case "Te":
			q.teTrailers = q.teTrailers || hasTokenBytes(val, "trailers")
		case "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
			"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		case "Content-Length", "Transfer-Encoding", "Trailer", "Connection", "Upgrade", "Expect",
			"Pragma", "Grpc-Timeout", origProtoHeader, "Idempotency-Key", "X-Idempotency-Key":
			return false
		case "Content-Type":
			if bytes.HasPrefix(val, []byte("application/grpc")) {
				return false
			}
			drop = false
		default:
			drop = false
		}
		if drop {
			q.keys = q.keys[:k0]
			continue
		}
		q.hdrs = append(q.hdrs, leanHdr{key, val})
	}
	if !hasHost || len(q.host) == 0 || !validHost(q.host) || bytes.IndexByte(q.host, '%') >= 0 {
		return false
	}
	if q.teTrailers {
		q.hdrs = append(q.hdrs, leanHdr{keyTe, valTrail})
	}
	sortHdrs(q.hdrs)
	return true
}

// line splits a header line into its canonical key (appended to q.keys) and trimmed value, as
// textproto does; false for anything else it would refuse or treat specially (obs-fold, a key that
// is not a token, a byte not allowed in a value).
func (q *leanReq) line(h []byte) (key, val []byte, ok bool) {
	var k []byte
	k, q.keys, val, ok = leanLine(h, q.keys)
	return k, val, ok
}

func leanLine(h, keys []byte) (key, newKeys, val []byte, ok bool) {
	colon := bytes.IndexByte(h, ':')
	if colon <= 0 || len(keys)+colon > cap(keys) {
		return nil, keys, nil, false
	}
	k0 := len(keys)
	upper := true
	for _, c := range h[:colon] {
		if !tokenByte(c) {
			return nil, keys[:k0], nil, false
		}
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		keys = append(keys, c)
		upper = c == '-'
	}
	v := h[colon+1:]
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, keys[:k0], nil, false
		}
	}
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return keys[k0:], keys, v, true
}

// tokenByte is RFC 9110's tchar (net/http's validHeaderFieldByte).
func tokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// leanPath: a path whose bytes url.ParseRequestURI keeps as they are and URL.RequestURI writes back
// the same (no percent-escapes: the route matches the decoded path).
func leanPath(p []byte) bool {
	for _, c := range p {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case bytes.IndexByte([]byte("-._~/!$&'()*+,=:@"), c) >= 0:
		default:
			return false
		}
	}
	return true
}

// leanQuery: a query the forwarder sends as it is (cleanQueryParams leaves it alone).
func leanQuery(q []byte) bool {
	for i := 0; i < len(q); i++ {
		switch c := q[i]; {
		case c <= ' ' || c >= 0x7f || c == ';':
			return false
		case c == '%':
			if i+2 >= len(q) || !ishex(q[i+1]) || !ishex(q[i+2]) {
				return false
			}
		}
	}
	return true
}

// hasTokenBytes reports whether a comma-separated value lists token, in any case.
func hasTokenBytes(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if bytes.EqualFold(bytes.Trim(t, " \t"), []byte(token)) {
			return true
		}
	}
	return false
}

// sortHdrs sorts by key, keeping the order of a key's values (as Header.WriteSubset writes them).
func sortHdrs(h []leanHdr) {
	for i := 1; i < len(h); i++ {
		for j := i; j > 0 && bytes.Compare(h[j-1].key, h[j].key) > 0; j-- {
			h[j-1], h[j] = h[j], h[j-1]
		}
	}
}

func appendHdrs(dst []byte, hdrs []leanHdr) []byte {
	for _, h := range hdrs {
		dst = append(dst, h.key...)
		dst = append(dst, ": "...)
		dst = append(dst, h.val...)
		dst = append(dst, "\r\n"...)
	}
	return dst
}

// appendUpstream appends the request head the forwarder sends upstream (writeRequest's layout).
func (q *leanReq) appendUpstream(dst []byte, hostRewrite string) []byte {
	if q.head {
		dst = append(dst, "HEAD "...)
	} else {
		dst = append(dst, "GET "...)
	}
	dst = append(dst, q.target...)
	dst = append(dst, " HTTP/1.1\r\nHost: "...)
	if hostRewrite != "" {
		dst = append(dst, hostRewrite...)
	} else {
		dst = append(dst, q.host...)
	}
	dst = append(dst, "\r\n"...)
	if q.hasUA && len(q.ua) > 0 {
		dst = append(dst, "User-Agent: "...)
		dst = append(dst, q.ua...)
		dst = append(dst, "\r\n"...)
	}
	dst = appendHdrs(dst, q.hdrs)
	return append(dst, "\r\n"...)
}

// leanResp is a parsed response head of an HTTP/1.1 upstream.
type leanResp struct {
	status     int
	cl         int64 // Content-Length, -1 when absent
	keep       bool  // the upstream keeps the connection
	hasCT      bool
	hasDate    bool
	grpcStatus []byte
	hdrs       []leanHdr // without the hop-by-hop headers
	keys       []byte
}

// parse parses a response head to a request (HEAD or not); false leaves it to http.ReadResponse.
func (r *leanResp) parse(head []byte, headReq bool) bool {
	if r.keys == nil {
		r.keys = make([]byte, 0, leanKeysCap)
	}
	r.keys, r.hdrs = r.keys[:0], r.hdrs[:0]
	r.cl, r.keep, r.hasCT, r.hasDate, r.grpcStatus = -1, true, false, false, nil
	line, rest, ok := bytes.Cut(head, crlf)
	if !ok || len(line) < 12 || string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return false
	}
	code := line[9:12]
	for _, c := range code {
		if c < '0' || c > '9' {
			return false
		}
	}
	r.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if r.status < 200 {
		return false // 1xx (and 101): net/http's path
	}
	for _, c := range line[12:] {
		if c == '\r' || c == '\n' {
			return false
		}
	}
	for {
		h, rr, ok := bytes.Cut(rest, crlf)
		if !ok {
			return false
		}
		rest = rr
		if len(h) == 0 {
			break
		}
		k0 := len(r.keys)
		var key, val []byte
		key, r.keys, val, ok = leanLine(h, r.keys)
		if !ok {
			return false
		}
		drop := false
		switch string(key) {
		case "Content-Length":
			if r.cl >= 0 || len(val) == 0 || len(val) > 18 {
				return false
			}
			n := int64(0)
			for _, c := range val {
				if c < '0' || c > '9' {
					return false
				}
				n = n*10 + int64(c-'0')
			}
			r.cl = n
		case "Connection":
			for v := val; len(v) > 0; {
				var t []byte
				t, v, _ = bytes.Cut(v, []byte(","))
				switch t = bytes.Trim(t, " \t"); {
				case bytes.EqualFold(t, []byte("close")):
					r.keep = false
				case len(t) == 0, bytes.EqualFold(t, []byte("keep-alive")):
				default:
					return false // names other headers to drop: net/http's path
				}
			}
			drop = true
		case "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Upgrade":
			drop = true
		case "Transfer-Encoding", "Trailer", "Pragma":
			return false
		case "Content-Type":
			if eventStream(string(val)) {
				return false // flushed as it comes: net/http's path
			}
			r.hasCT = true
		case "Date":
			r.hasDate = true
		case "Grpc-Status":
			if r.grpcStatus == nil {
				r.grpcStatus = val
			}
		}
		if drop {
			r.keys = r.keys[:k0]
			continue
		}
		r.hdrs = append(r.hdrs, leanHdr{key, val})
	}
	if r.cl < 0 && !headReq && r.status != http.StatusNoContent && r.status != http.StatusNotModified {
		return false // a body to the end of the connection: net/http's path
	}
	return true
}

// bodyLen is the length of the body that follows the head.
func (r *leanResp) bodyLen(headReq bool) int64 {
	if headReq || r.status == http.StatusNoContent || r.status == http.StatusNotModified || r.cl < 0 {
		return 0
	}
	return r.cl
}

var (
	keyCT    = []byte("Content-Type")
	keyDate  = []byte("Date")
	keyConn  = []byte("Connection")
	valClose = []byte("close")
)

// appendClient appends the head the client gets (fastResponse.writeHead's): first is the body's first
// bytes (for a Content-Type sniffed when the upstream set none), date the Date to add when it set
// none, closeAfter whether the connection closes after this response.
func (r *leanResp) appendClient(dst []byte, headReq bool, first, date []byte, closeAfter bool) []byte {
	noBody := r.status == http.StatusNoContent || r.status == http.StatusNotModified
	if noBody {
		// As net/http: none of the headers that would describe a body.
		h := r.hdrs[:0]
		for _, x := range r.hdrs {
			if string(x.key) != "Content-Length" && string(x.key) != "Content-Type" {
				h = append(h, x)
			}
		}
		r.hdrs = h
	}
	added := false
	if !r.hasCT && len(first) > 0 && !noBody && !headReq {
		r.hdrs = append(r.hdrs, leanHdr{keyCT, []byte(http.DetectContentType(first))})
		added = true
	}
	if !r.hasDate {
		r.hdrs = append(r.hdrs, leanHdr{keyDate, date})
		added = true
	}
	if closeAfter {
		r.hdrs = append(r.hdrs, leanHdr{keyConn, valClose})
		added = true
	}
	if added {
		sortHdrs(r.hdrs)
	} else if !sortedHdrs(r.hdrs) {
		sortHdrs(r.hdrs)
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(r.status), 10)
	dst = append(dst, ' ')
	if text := http.StatusText(r.status); text != "" {
		dst = append(dst, text...)
	} else {
		dst = append(dst, "status code "...)
		dst = strconv.AppendInt(dst, int64(r.status), 10)
	}
	dst = append(dst, "\r\n"...)
	dst = appendHdrs(dst, r.hdrs)
	return append(dst, "\r\n"...)
}

func sortedHdrs(h []leanHdr) bool {
	for i := 1; i < len(h); i++ {
		if bytes.Compare(h[i-1].key, h[i].key) > 0 {
			return false
		}
	}
	return true
}
