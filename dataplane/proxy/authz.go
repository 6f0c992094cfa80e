package proxy

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/dataplane/config"
)

// Authorization (docs/design.md, "Authorization"): the inbound chains' RBAC filters, decoded by
// dataplane/config, are checked here. A TCP chain's network RBAC decides once per connection, after
// the mTLS handshake (a denied connection is closed before anything reaches the app); an HTTP
// chain's RBAC decides per request, before routing: a denied request gets a 403 with a weft-error
// header saying why, a denied gRPC call grpc-status 7 (PERMISSION_DENIED). The request path calls one
// hook each (handleConn, serveHTTP, and serveLean, which serves allowed requests itself and hands
// the others to serveFast, which goes through serveHTTP). Decisions are counted in inbound_authz_total.

// authzOn reports whether requests on the connection's chain are subject to HTTP RBAC in the
// current runtime rt (authz_current.go: a policy applies to connections already open).
func authzOn(rt *runtime, info *connInfo) bool {
	return len(rt.httpRBAC(info)) > 0
}

// decideRBAC runs the filters in order; the first that denies decides.
func decideRBAC(filters []*config.RBAC, req *config.AuthzRequest) (allowed bool, policy string) {
	for _, r := range filters {
		ok, name := r.Allows(req)
		if !ok {
			return false, name
		}
		if name != "" {
			policy = name
		}
	}
	return true, policy
}

// policyLabel is the AuthorizationPolicy of an RBAC policy name "<ns>/<name>/<rule>"; other names
// (from another control plane) are kept as they are.
func policyLabel(name string) string {
	if strings.Count(name, "/") == 2 {
		return name[:strings.LastIndexByte(name, '/')]
	}
	return name
}

// leanAllowed decides a request of the lean HTTP/1.1 path (GET or HEAD; its path has no
// percent-encoding, leanPath): true when the chain's HTTP RBAC allows it (counted here), false when
// it must take serveFast: denied (serveFast answers and counts it) or the rules read headers the lean
// path does not keep.
func (s *h1Conn1) leanAllowed(rt *runtime, q *leanReq) bool {
	filters := rt.httpRBAC(s.info)
	for _, r := range filters {
		if r.ReadsHeaders() {
			return false
		}
	}
	method := http.MethodGet
	if q.head {
		method = http.MethodHead
	}
	src, _ := netip.ParseAddrPort(s.remote)
	req := &config.AuthzRequest{PeerID: s.info.peerID, Source: src.Addr().Unmap(), Dst: s.info.dst, HTTP: true,
		Method: method, Path: config.NormalizePath(string(q.path))}
	ok, policy := decideRBAC(filters, req)
	if ok {
		s.p.metrics.observeAuthz("http", true, policy, s.info.peerID)
	}
	return ok
}

// authorizeConn checks a connection against its chain's network RBAC; false: close it.
func (p *Proxy) authorizeConn(c net.Conn, info *connInfo) bool {
	filters := p.rt.Load().networkRBAC(info)
	if len(filters) == 0 {
		return true
	}
	req := &config.AuthzRequest{PeerID: info.peerID, Source: addrPort(c.RemoteAddr()).Addr().Unmap(), Dst: info.dst}
	ok, policy := decideRBAC(filters, req)
	p.metrics.observeAuthz("tcp", ok, policy, info.peerID)
	if !ok {
		p.log.Debug("inbound connection denied by authorization policy", "remote", c.RemoteAddr(), "client_id", info.peerID, "dst", info.dst, "policy", policy)
	}
	return ok
}

// denyHTTP checks an inbound request against its chain's HTTP RBAC; true: it was denied and
// answered.
func (p *Proxy) denyHTTP(w http.ResponseWriter, r *http.Request, info *connInfo) bool {
	filters := p.rt.Load().httpRBAC(info)
	if len(filters) == 0 {
		return false
	}
	req := &config.AuthzRequest{
		PeerID: info.peerID,
		Source: addrPort(remoteAddr(r)).Addr().Unmap(),
		Dst:    info.dst,
		HTTP:   true,
		Method: r.Method,
		Path:   config.NormalizePath(r.URL.Path),
		Header: func(name string) string { return authzHeader(r, name) },
		Headers: func(name string) bool {
			_, ok := r.Header[http.CanonicalHeaderKey(name)]
			return ok || name == ":authority"
		},
	}
	ok, policy := decideRBAC(filters, req)
	p.metrics.observeAuthz("http", ok, policy, info.peerID)
	if ok {
		return false
	}
	who := info.peerID
	if who == "" {
		who = "a client without a mesh identity"
	}
	msg := "authorization policy denied " + r.Method + " " + req.Path + " from " + who
	if policy != "" {
		msg += " (" + policyLabel(policy) + ")"
	}
	writeDenied(w, r, msg)
	return true
}

func authzHeader(r *http.Request, name string) string {
	if name == ":authority" || name == "host" {
		return r.Host
	}
	return strings.Join(r.Header.Values(name), ",")
}

func remoteAddr(r *http.Request) net.Addr {
	ap, err := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	if err != nil {
		return &net.TCPAddr{}
	}
	return ap
}

// writeDenied answers a denied request: 403 with weft-error, or for gRPC PERMISSION_DENIED (7) as a
// trailers-only response carrying the same reason.
func writeDenied(w http.ResponseWriter, r *http.Request, msg string) {
	h := w.Header()
	h.Set("Weft-Error", msg)
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", "7")
		h.Set("Grpc-Message", grpcMessage(msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(msg)+1))
	w.WriteHeader(http.StatusForbidden)
	_, _ = io.WriteString(w, msg+"\n") // #nosec G705 -- text/plain, the proxy's own message
}

// observeAuthz counts one decision: inbound_authz_total{transport, decision, policy, client_id}.
func (m *Metrics) observeAuthz(transport string, allowed bool, policy, clientID string) {
	decision := "deny"
	if allowed {
		decision = "allow"
	}
	m.set.GetOrCreateCounter(seriesName("inbound_authz_total",
		"transport", transport, "decision", decision, "policy", policyLabel(policy), "client_id", clientID)).Inc()
}
