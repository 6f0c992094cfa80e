package proxy

import (
	"net"
	"net/netip"

	"github.com/weftmesh/weft/dataplane/iptables"
)

// originalDst returns the destination a connection had before iptables REDIRECT sent it to us
// (SO_ORIGINAL_DST); ok is false when the connection was not redirected.
func originalDst(c net.Conn) (dst netip.AddrPort, ok bool) {
	tc, isTCP := c.(*net.TCPConn)
	if !isTCP {
		return dst, false
	}
	dst, err := iptables.OriginalDst(tc)
	if err != nil {
		return dst, false
	}
	if local := addrPort(c.LocalAddr()); dst == local {
		return dst, false
	}
	return dst, true
}
