package proxy

import (
	"crypto/rand"
	"crypto/tls"
	"sync/atomic"
)

// tlsSessions makes new mTLS connections between proxies cheap: TLS 1.3 session resumption, with a
// client session cache for dials and fixed ticket keys for the inbound side (a tls.Config is made per
// connection, and Go's automatic ticket keys belong to one Config). Both are tied to our certificate of
// the moment: a new certificate starts a new cache and new keys, so no session outlives the
// certificate (and so the issuer and trust bundle) it was made with. Resumed connections still run
// VerifyConnection, so the peer's SPIFFE ID is checked against the current trust bundle and SANs.
type tlsSessions struct {
	cur atomic.Pointer[sessionEpoch]
}

type sessionEpoch struct {
	cert  *tls.Certificate
	cache tls.ClientSessionCache
	keys  [][32]byte
}

// sessionCacheSize bounds the cached sessions: one per upstream SNI (a cluster), the latest ticket.
const sessionCacheSize = 1024

// epoch returns the cache and keys for cert, starting new ones when cert is not the last one seen.
func (s *tlsSessions) epoch(cert *tls.Certificate) *sessionEpoch {
	if e := s.cur.Load(); e != nil && e.cert == cert {
		return e
	}
	e := &sessionEpoch{cert: cert, cache: tls.NewLRUClientSessionCache(sessionCacheSize), keys: make([][32]byte, 1)}
	if _, err := rand.Read(e.keys[0][:]); err != nil {
		panic("crypto/rand: " + err.Error()) // never fails on Linux
	}
	s.cur.Store(e)
	return e
}
