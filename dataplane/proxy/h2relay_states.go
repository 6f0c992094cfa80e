package proxy

import "golang.org/x/net/http2"

// Stream states the relay keeps no h2Stream for (RFC 9113 §5.1): idle streams, the peer has not
// opened yet, and closed ones, which the relay has forgotten except for the few it reset itself last.

// relayRecentResets is how many of the streams the relay reset towards a client it remembers: frames
// the client had in flight on them are dropped (§5.1: an endpoint MUST ignore frames it receives on
// closed streams after it has sent a RST_STREAM frame) rather than answered with STREAM_CLOSED. A
// stream that has fallen out of the record gets a RST_STREAM STREAM_CLOSED, which a client ignores.
const relayRecentResets = 16

// idleStream reports whether id names a stream in the idle state on hc: one its peer has not opened
// yet. The relay opens no streams towards clients, and upstreams push none (ENABLE_PUSH 0), so an
// even id is never open either.
func (hc *h2Conn) idleStream(id uint32) bool {
	if hc.client {
		return id%2 == 0 || id >= hc.nextID
	}
	return id%2 == 0 || id > hc.lastID
}

// resetSent notes that the relay queued a RST_STREAM for stream id on the client connection hc.
func (hc *h2Conn) resetSent(id uint32) {
	if hc.client {
		return
	}
	hc.rstIDs[hc.rstNext%relayRecentResets] = id
	hc.rstNext++
}

// recentlyReset reports whether the relay reset stream id on hc lately (resetSent).
func (hc *h2Conn) recentlyReset(id uint32) bool {
	for _, r := range hc.rstIDs {
		if r == id && id != 0 {
			return true
		}
	}
	return false
}

// closedData answers DATA the client sent on a closed stream id (s.mu held; its bytes are already
// taken from the connection window, and given back here): ignored if the relay reset the stream
// lately, else a stream error STREAM_CLOSED (§5.1), counted as a control frame so that a client
// cannot make the relay queue them without bound.
func (s *h2Session) closedData(hc *h2Conn, id uint32, n int64) error {
	s.credit(hc, nil, 0, n)
	if hc.client || hc.recentlyReset(id) {
		return nil // upstream: the relay resets upstream streams with CANCEL and drops what follows
	}
	s.streamError(hc, id, http2.ErrCodeStreamClosed)
	return s.queuedControl(hc)
}

// selfDependent reports whether the priority fields of a HEADERS or PRIORITY frame on stream id make
// it depend on itself: a stream error PROTOCOL_ERROR (RFC 7540 §5.3.1; RFC 9113 deprecates the
// scheme but the fields are still parsed).
func selfDependent(id uint32, p http2.PriorityParam) bool {
	return id != 0 && p.StreamDep == id
}
