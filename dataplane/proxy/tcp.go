package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/weftmesh/weft/dataplane/config"
)

// dialCluster connects to an endpoint of a cluster, with mTLS when the cluster asks for it and we
// have an identity. A connection that cannot be made (refused, unreachable, timed out, a failed
// handshake) is tried on another endpoint not yet tried, up to maxConnectTries (connretry.go); the
// error names the last failure.
func (p *Proxy) dialCluster(ctx context.Context, cl *clusterRT, target string, key uint64, alpn []string) (net.Conn, string, bool, error) {
	if target != "" {
		d := net.Dialer{Timeout: cl.cfg.ConnectTimeout}
		c, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			return nil, target, false, p.roundTripError(ctx, &reqState{cluster: cl}, target, err)
		}
		return c, target, false, nil
	}
	var tried triedHosts
	h := cl.pick(key)
	if h == nil {
		return nil, "", false, &proxyErr{http.StatusServiceUnavailable, "cluster " + cl.cfg.Name + " has no ready endpoints"}
	}
	for {
		tried.add(h)
		var c net.Conn
		var err error
		useTLS := cl.cfg.TLS != nil && p.identity != nil
		if useTLS {
			c, err = p.dialTLS(ctx, cl.state, h.addrStr, alpn, false)
		} else {
			d := net.Dialer{Timeout: cl.cfg.ConnectTimeout}
			c, err = d.DialContext(ctx, "tcp", h.addrStr)
		}
		if err == nil {
			cl.outcome(h, 200)
			return c, h.addrStr, useTLS, nil
		}
		cl.outcome(h, 0)
		next := cl.pickUntried(&tried)
		if next == nil || ctx.Err() != nil {
			return nil, h.addrStr, false, p.roundTripError(ctx, &reqState{cluster: cl}, h.addrStr, err)
		}
		p.metrics.connectRetry(cl.cfg.Name)
		h = next
	}
}

// proxyTCP forwards an opaque TCP connection to a cluster.
func (p *Proxy) proxyTCP(c net.Conn, info *connInfo, clusterName string) {
	rt := p.rt.Load()
	cl := rt.clusters[clusterName]
	if cl == nil {
		p.log.Debug("tcp_proxy to an unknown cluster", "cluster", clusterName)
		c.Close()
		return
	}
	target := ""
	if cl.cfg.Kind == config.ClusterOriginalDst {
		if !info.redirected && info.dst == info.local {
			p.log.Debug("passthrough would loop back to the proxy", "dst", info.dst)
			c.Close()
			return
		}
		target = info.dst.String()
	}
	st := cl.state
	if st.connections.Add(1) > limit(cl.cfg.Breakers.MaxConnections, 1024) {
		st.connections.Add(-1)
		p.log.Debug("circuit open", "cluster", clusterName)
		c.Close()
		return
	}
	defer st.connections.Add(-1)
	var key uint64
	if cl.cfg.LB == config.LBRingHash {
		key = hashString(remoteIP(c.RemoteAddr().String()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), maxConnectTries*cl.cfg.ConnectTimeout+time.Second)
	up, addr, upTLS, err := p.dialCluster(ctx, cl, target, key, nil)
	cancel()
	if err != nil {
		p.log.Debug("tcp upstream", "cluster", clusterName, "err", err)
		c.Close()
		return
	}
	labels := p.metrics.tcpLabels(info, clusterName, addr, upTLS || info.tls, p.tcpIDs(info, up))
	p.pipe(c, up, labels)
}

func (p *Proxy) tcpIDs(info *connInfo, up net.Conn) [2]string {
	if info.direction == "inbound" {
		if info.tls {
			return [2]string{info.peerID, p.ownID()}
		}
		return [2]string{}
	}
	if id := peerIDOf(up); id != "" {
		return [2]string{p.ownID(), id}
	}
	return [2]string{}
}

// peerIDOf is the SPIFFE id of the server of an mTLS connection ("" for plaintext).
func peerIDOf(c net.Conn) string {
	if tc, ok := c.(*tls.Conn); ok {
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			return spiffeID(pc[0])
		}
	}
	return ""
}

// pipe copies both ways until both directions end, half-closing as each side finishes.
func (p *Proxy) pipe(down, up net.Conn, l tcpLabelValues) {
	p.mu.Lock()
	p.tunnels[down] = struct{}{}
	p.tunnelWG.Add(1)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.tunnels, down)
		p.mu.Unlock()
		p.tunnelWG.Done()
	}()
	p.metrics.tcpOpen(l)
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(up, down)
		closeWrite(up)
		done <- n
	}()
	written, _ := io.Copy(down, up)
	closeWrite(down)
	read := <-done
	down.Close()
	up.Close()
	p.metrics.tcpClose(l, read, written)
}

func closeWrite(c net.Conn) {
	switch cw := c.(type) {
	case interface{ CloseWrite() error }:
		_ = cw.CloseWrite()
	default:
		_ = c.Close()
	}
}

// connect serves CONNECT on the explicit proxy: a tunnel to the routed cluster.
func (p *Proxy) connect(w http.ResponseWriter, r *http.Request, rs *reqState) {
	ctx, cancel := context.WithTimeout(r.Context(), maxConnectTries*rs.cluster.cfg.ConnectTimeout+time.Second) // as proxyTCP: room for a connect retry on each endpoint tried
	up, addr, upTLS, err := p.dialCluster(ctx, rs.cluster, rs.target, rs.hashKey, []string{"http/1.1"})
	cancel()
	if err != nil {
		pe, _ := err.(*proxyErr)
		if pe == nil {
			pe = &proxyErr{http.StatusBadGateway, err.Error()}
		}
		writeWeftError(w, r, pe.status, pe.msg)
		return
	}
	rs.upTLS = upTLS
	rs.serverID = peerIDOf(up)
	down, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.Close()
		writeWeftError(w, r, http.StatusBadGateway, "CONNECT needs HTTP/1.1")
		return
	}
	if _, err := io.WriteString(down, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		up.Close()
		down.Close()
		return
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.code = http.StatusOK
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := up.Write(b); err != nil {
			up.Close()
			down.Close()
			return
		}
	}
	labels := p.metrics.tcpLabels(rs.info, rs.cluster.cfg.Name, addr, upTLS, [2]string{p.ownIDIf(upTLS), rs.serverID})
	p.pipe(down, up, labels)
}

func (p *Proxy) ownIDIf(b bool) string {
	if !b {
		return ""
	}
	return p.ownID()
}
