package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// OriginalDst returns where a connection accepted on a REDIRECT target was going before the nat
// table rewrote it (SO_ORIGINAL_DST; IPv4 only). For a connection that conntrack saw but nothing
// rewrote it returns the connection's own local address.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	if local, ok := c.LocalAddr().(*net.TCPAddr); ok && local.IP.To4() == nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: IPv6 is not intercepted (weft-proxy init programs IPv4 only)", local)
	}
	var (
		dst    netip.AddrPort
		sysErr error
	)
	err = raw.Control(func(fd uintptr) {
		// sockaddr_in fits in the 16 bytes of an ipv6_mreq: family(2) port(2, network order) addr(4).
		var mreq *unix.IPv6Mreq
		mreq, sysErr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if sysErr != nil {
			return
		}
		b := mreq.Multiaddr
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), binary.BigEndian.Uint16(b[2:4]))
	})
	if err == nil {
		err = sysErr
	}
	if errors.Is(err, syscall.ENOENT) {
		return netip.AddrPort{}, fmt.Errorf("original destination: the connection has no nat entry (was it redirected by iptables?): %w", err)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return dst, nil
}
