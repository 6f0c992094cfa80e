package proxy

import (
	"strings"

	"golang.org/x/net/http2/hpack"
)

// The relay's header rules, the same as net/http's path applies (prepareForward, removeHopByHop): a
// request loses the proxy's credentials and the forwarding headers a client could forge (an app that
// trusts X-Forwarded-For must not be told lies through the mesh), a response the proxy's challenge.
// HTTP/2 has no other hop-by-hop fields (RFC 9113 §8.2.2: a request carrying them is malformed, and
// the Framer refuses it).

// relayDropsRequest reports whether the relay leaves a request field out.
func relayDropsRequest(name string) bool {
	switch name {
	case "proxy-authorization", "proxy-authenticate", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto":
		return true
	}
	return false
}

// relayDropsResponse reports whether the relay leaves a response field out.
func relayDropsResponse(name string) bool { return name == "proxy-authenticate" }

// withoutFields returns fields without those drop names; fields itself when none is dropped, so the
// common request costs no copy.
func withoutFields(fields []hpack.HeaderField, drop func(string) bool) []hpack.HeaderField {
	i := 0
	for i < len(fields) && !drop(fields[i].Name) {
		i++
	}
	if i == len(fields) {
		return fields
	}
	out := make([]hpack.HeaderField, i, len(fields)-1)
	copy(out, fields[:i])
	for _, f := range fields[i+1:] {
		if !drop(f.Name) {
			out = append(out, f)
		}
	}
	return out
}

// relayPathAsIs reports whether the relay may route and forward a :path as it came: no percent
// escapes in the path (serveHTTP routes on the decoded path, and the relay must not route
// differently), and a query that cleanQueryParams would leave alone.
func relayPathAsIs(p string) bool {
	path, query, _ := strings.Cut(p, "?")
	return strings.IndexByte(path, '%') < 0 && leanQuery([]byte(query))
}
