package proxy

import (
	"encoding/binary"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// originalDst returns the destination a connection had before iptables REDIRECT sent it to us
// (SO_ORIGINAL_DST); ok is false when the connection was not redirected.
func originalDst(c net.Conn) (dst netip.AddrPort, ok bool) {
	tc, isTCP := c.(*net.TCPConn)
	if !isTCP {
		return dst, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return dst, false
	}
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	_ = raw.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
			if err != nil {
				return
			}
			// struct sockaddr_in: family(2) port(2, big endian) addr(4)
			port := binary.BigEndian.Uint16(m.Multiaddr[2:4])
			dst, ok = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Multiaddr[4:8])), port), true
			return
		}
		const ip6tSoOriginalDst = 80
		m, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, ip6tSoOriginalDst)
		if err != nil {
			return
		}
		port := binary.BigEndian.Uint16((*[2]byte)(unsafePort(&m.Addr))[:])
		dst, ok = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr), port), true
	})
	if ok && dst == local {
		return dst, false
	}
	return dst, ok
}

func unsafePort(a *unix.RawSockaddrInet6) *[2]byte {
	p := a.Port
	b := [2]byte{byte(p), byte(p >> 8)} // Port holds the network-order bytes in host order
	return &b
}
