package iptables

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultValidateAddr is where Validate connects by default: TEST-NET-1 (RFC 5737), never routed, so
// the check never reaches a real host, whether or not interception works.
var DefaultValidateAddr = netip.MustParseAddrPort("192.0.2.1:20001")

// ValidateOptions configure Validate. Zero values mean the defaults.
type ValidateOptions struct {
	OutboundPort uint16         // where interception should send the connection (default 15001)
	ConnectAddr  netip.AddrPort // an address outside the pod to connect to (default DefaultValidateAddr)
	ProxyUID     uint32         // the proxy's uid: a check run under it proves nothing (default 2102)
	Timeout      time.Duration  // for the whole check (default 10s)
}

// Validate checks that outbound interception really works in the current network namespace, like
// Linkerd's CNI network validator: it listens on the outbound port, connects to ConnectAddr as the
// current (non-proxy) user, and expects the connection to land on its own listener with ConnectAddr as
// the original destination. It returns nil when it does, else an error that says what went wrong.
func Validate(ctx context.Context, o ValidateOptions) error {
	if o.OutboundPort == 0 {
		o.OutboundPort = DefaultOutboundPort
	}
	if !o.ConnectAddr.IsValid() {
		o.ConnectAddr = DefaultValidateAddr
	}
	if o.ProxyUID == 0 {
		o.ProxyUID = DefaultProxyUID
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if uid := os.Geteuid(); uid == int(o.ProxyUID) {
		return fmt.Errorf("validate runs as uid %d, the proxy's uid, whose traffic is never intercepted; run it as another user", uid)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	ln, err := net.Listen("tcp", ":"+strconv.Itoa(int(o.OutboundPort))) // #nosec G102 -- inside the Pod's network namespace, on the port intercepted outbound TCP is redirected to: the check needs every address
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("cannot listen on the outbound port %d: it is in use; run validate before the proxy starts (as an init container)", o.OutboundPort)
		}
		return fmt.Errorf("listening on the outbound port %d: %w", o.OutboundPort, err)
	}
	defer ln.Close()
	context.AfterFunc(ctx, func() { ln.Close() })

	var tok [16]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst, _ := OriginalDst(c.(*net.TCPConn))
			_ = c.SetWriteDeadline(time.Now().Add(o.Timeout))
			_, _ = fmt.Fprintf(c, "%s %s\n", token, dst)
			c.Close()
		}
	}()

	notRedirected := func(why string) error {
		return fmt.Errorf("outbound interception does not work: a connection to %s was not redirected to the proxy's outbound port %d (%s); check that `weft-proxy init` ran in this pod's network namespace with --outbound-port %d (in CNI mode: that the node's CNI configuration chains the weft-cni plugin, whose DaemonSet runs on this node) and that %s is not a skipped port or subnet",
			o.ConnectAddr, o.OutboundPort, why, o.OutboundPort, o.ConnectAddr)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", o.ConnectAddr.String())
	if err != nil {
		return notRedirected(err.Error())
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return notRedirected("connected, but reading the check's reply failed: " + err.Error())
	}
	gotToken, gotDst, _ := strings.Cut(strings.TrimSpace(line), " ")
	if gotToken != token {
		return notRedirected("connected to something that is not this check's listener")
	}
	if gotDst != o.ConnectAddr.String() {
		return fmt.Errorf("the connection to %s was redirected to port %d, but the original destination read there is %q; the proxy could not tell where it was going", o.ConnectAddr, o.OutboundPort, gotDst)
	}
	return nil
}
