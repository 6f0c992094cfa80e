package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// path is one way from the load generator to the backends.
type path struct {
	key, name string
	http      string  // where HTTP/1.1 requests go
	grpc      string  // where gRPC (h2c) calls go
	tcp       string  // where the bulk TCP connection goes
	procs     []*proc // the proxies carrying this path's HTTP and gRPC (measured)
	err       error   // the path could not be set up
	tcpErr    error   // the TCP variant could not be set up
	// hapStats is the CSV stats URL of H2's server HAProxy, whose TCP frontend sends resumed TLS
	// sessions to backend tcp_resumed and full handshakes to tcp_up (so their session counts tell).
	hapStats string
	// weftTCPServerAdmin is the admin address of B2's TCP server sidecar, whose tls_handshake_total
	// counts resumed and full mTLS handshakes.
	weftTCPServerAdmin string
	// floor marks F1 and F2: no-op TCP relay processes in front of the HTTP app, measured only in the
	// latency phases (and wrk) as the machine's cost of crossing one or two more processes.
	floor bool
	// relayStats are the CSV stats URLs of a floor path's relay processes, client side first: their
	// frontend's session count shows the traffic went through each of them.
	relayStats []string
}

const (
	namespace   = "bench"
	grpcPrefix  = "/grpc.testing.TestService/"
	clientSPIFF = "spiffe://cluster.local/ns/bench/sa/client"
	serverSPIFF = "spiffe://cluster.local/ns/bench/sa/server"
)

type topology struct {
	dir      string
	weftBin  string
	before   string // -weft-proxy-before: paths A1 and A2 through this binary ("" for none)
	haproxy  string
	xds      *xdsServer
	be       *backends
	paths    []*path
	mu       sync.Mutex // guards procs while the paths start
	procs    []*proc
	certs    map[string]string // role → cert dir
	progress func(string)
}

func (t *topology) stop() {
	var wg sync.WaitGroup
	for _, p := range t.procs {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// build starts every proxy of the paths. A path whose proxies do not come up keeps its error
// (the report says so) and the others go on.
func (t *topology) build(ctx context.Context) error {
	ca, err := newPKI()
	if err != nil {
		return err
	}
	t.certs = map[string]string{"client": filepath.Join(t.dir, "certs-client"), "server": filepath.Join(t.dir, "certs-server")}
	if err := ca.issue(t.certs["client"], clientSPIFF, 2); err != nil {
		return err
	}
	if err := ca.issue(t.certs["server"], serverSPIFF, 3); err != nil {
		return err
	}

	b0 := &path{key: "B0", name: "direct", http: t.be.http.String(), grpc: t.be.grpc.String(), tcp: t.be.sink.String()}
	b1 := &path{key: "B1", name: "weft 1 hop"}
	b2 := &path{key: "B2", name: "weft 2 sidecars mTLS"}
	h1 := &path{key: "H1", name: "HAProxy 1 hop"}
	h2 := &path{key: "H2", name: "HAProxy 2 hops mTLS"}
	t.paths = []*path{b0, b1, b2, h1, h2}

	// The proxied paths come up side by side.
	var wg sync.WaitGroup
	if t.weftBin == "" {
		b1.err = fmt.Errorf("weft-proxy binary not found (run make build)")
		b2.err = b1.err
	} else {
		wg.Go(func() { b1.err = t.weftB1(ctx, b1, weftVariant{bin: t.weftBin, pod: "b1", ip: "127.0.0.1"}) })
		wg.Go(func() { b2.err = t.weftB2(ctx, b2, weftVariant{bin: t.weftBin, pod: "b2", ip: "127.0.0.2"}) })
	}
	if t.haproxy == "" {
		h1.err = fmt.Errorf("haproxy not installed (make apt)")
		h2.err = h1.err
	} else {
		wg.Go(func() { h1.err = t.haproxyH1(ctx, h1) })
		wg.Go(func() { h2.err = t.haproxyH2(ctx, h2) })
	}
	proxied := []*path{b1, b2, h1, h2}
	// The floor: the same HTTP app behind one and two no-op TCP relay processes.
	f1 := &path{key: "F1", name: "floor: 1 TCP relay process", floor: true}
	f2 := &path{key: "F2", name: "floor: 2 TCP relay processes", floor: true}
	t.paths = append(t.paths, f1, f2)
	if t.haproxy == "" {
		f1.err = fmt.Errorf("haproxy not installed (make apt)")
		f2.err = f1.err
	} else {
		wg.Go(func() { f1.err = t.floorF1(ctx, f1) })
		wg.Go(func() { f2.err = t.floorF2(ctx, f2) })
	}
	if t.before != "" {
		a1 := &path{key: "A1", name: "weft 1 hop, before"}
		a2 := &path{key: "A2", name: "weft 2 sidecars mTLS, before"}
		t.paths = append(t.paths, a1, a2)
		proxied = append(proxied, a1, a2)
		if bin := lookBin(t.before); bin == "" {
			a1.err = fmt.Errorf("-weft-proxy-before %s not found", t.before)
			a2.err = a1.err
		} else {
			wg.Go(func() { a1.err = t.weftB1(ctx, a1, weftVariant{bin: bin, pod: "a1", ip: "127.0.0.5"}) })
			wg.Go(func() { a2.err = t.weftB2(ctx, a2, weftVariant{bin: bin, pod: "a2", ip: "127.0.0.6"}) })
		}
	}
	wg.Wait()
	for _, p := range proxied {
		if p.err != nil {
			p.tcpErr = p.err
		}
		p.grpc = p.http // the proxies route gRPC by path
	}
	return nil
}

// weft starts one weft-proxy for pod name (already configured in the xDS server) and waits for /ready.
func (t *topology) weft(ctx context.Context, bin, name, podIP, sa, outbound, inbound, certDir string) (*proc, error) {
	admin, err := freeAddr("127.0.0.1")
	if err != nil {
		return nil, err
	}
	args := []string{bin, "run", "--xds-addr", t.xds.addr, "--pod-name", name, "--namespace", namespace,
		"--pod-ip", podIP, "--service-account", sa, "--admin-addr", admin, "--outbound-addr", outbound,
		"--inbound-addr", inbound, "--log-level", "warn", "--drain-timeout", "2s"}
	if certDir != "" {
		args = append(args, "--cert-dir", certDir)
	}
	t.progress("starting weft-proxy " + name)
	p, err := startProc("weft-proxy-"+name, t.dir, args...)
	if err != nil {
		return nil, err
	}
	p.admin = admin
	t.mu.Lock()
	t.procs = append(t.procs, p)
	t.mu.Unlock()
	if err := p.waitReady(ctx, "/ready", httpOK("http://"+admin+"/ready")); err != nil {
		return nil, err
	}
	return p, nil
}

func addrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func fqdn(svc string) string { return svc + "." + namespace + ".svc.cluster.local" }

// outboundHTTP is the client pod's config for one Service address: HTTP routed by path (gRPC to the
// gRPC cluster, the rest to the HTTP cluster), endpoints as given; meshed (mTLS) when serverID is set.
func outboundHTTP(listen netip.AddrPort, httpEP, grpcEP netip.AddrPort, serverID string) []proto.Message {
	httpCl := outboundClusterName(listen.Port(), fqdn("echo"))
	grpcCl := outboundClusterName(listen.Port(), fqdn("grpc"))
	route := strconv.Itoa(int(listen.Port()))
	return []proto.Message{
		fx.Passthrough(),
		edsCluster(httpCl, serverID), fx.CLA(httpCl, httpEP),
		edsCluster(grpcCl, serverID), fx.CLA(grpcCl, grpcEP),
		routeConfig(route, prefixRoute{grpcPrefix, grpcCl}, prefixRoute{"/", httpCl}),
		listener("outbound", chain{name: fqdn("echo"), dst: listen, route: route}),
	}
}

func outboundTCP(listen, ep netip.AddrPort, serverID string) []proto.Message {
	cl := outboundClusterName(listen.Port(), fqdn("sink"))
	return []proto.Message{
		fx.Passthrough(),
		edsCluster(cl, serverID), fx.CLA(cl, ep),
		listener("outbound", chain{name: fqdn("sink"), dst: listen, cluster: cl}),
	}
}

// weftVariant is one set of weft-proxies for a path: its binary, the prefix of its pods' names, and
// the loopback addresses it listens on (ip+"1", ip+"2", ...).
type weftVariant struct{ bin, pod, ip string }

func (t *topology) weftB1(ctx context.Context, p *path, v weftVariant) error {
	var err error
	if p.http, err = freeAddr(v.ip + "1"); err != nil {
		return err
	}
	if err := t.xds.set(ctx, v.pod+"."+namespace, outboundHTTP(addrPort(p.http), t.be.http, t.be.grpc, "")...); err != nil {
		return err
	}
	pr, err := t.weft(ctx, v.bin, v.pod, v.ip+"1", "client", p.http, "", "")
	if err != nil {
		return err
	}
	p.procs = []*proc{pr}

	p.tcpErr = func() error {
		if p.tcp, err = freeAddr(v.ip + "2"); err != nil {
			return err
		}
		if err := t.xds.set(ctx, v.pod+"-tcp."+namespace, outboundTCP(addrPort(p.tcp), t.be.sink, "")...); err != nil {
			return err
		}
		_, err := t.weft(ctx, v.bin, v.pod+"-tcp", v.ip+"2", "client", p.tcp, "", "")
		return err
	}()
	return nil
}

// weftB2: client sidecar (outbound on a "ClusterIP") → mTLS HTTP/2 → server sidecar (inbound on the
// "pod IP") → the app on 127.0.0.1.
func (t *topology) weftB2(ctx context.Context, p *path, v weftVariant) error {
	inbound, err := freeAddr(v.ip + "2")
	if err != nil {
		return err
	}
	in := addrPort(inbound)
	httpCl, grpcCl := inboundClusterName(t.be.http.Port()), inboundClusterName(t.be.grpc.Port())
	route := "inbound|" + strconv.Itoa(int(in.Port()))
	err = t.xds.set(ctx, v.pod+"-server."+namespace,
		fx.StaticCluster(httpCl, t.be.http), fx.StaticCluster(grpcCl, t.be.grpc),
		routeConfig(route, prefixRoute{grpcPrefix, grpcCl}, prefixRoute{"/", httpCl}),
		listener("inbound", chain{name: httpCl, dst: in, route: route, mtls: true}))
	if err != nil {
		return err
	}
	server, err := t.weft(ctx, v.bin, v.pod+"-server", v.ip+"2", "server", "", inbound, t.certs["server"])
	if err != nil {
		return err
	}
	if p.http, err = freeAddr(v.ip + "1"); err != nil {
		return err
	}
	if err := t.xds.set(ctx, v.pod+"-client."+namespace, outboundHTTP(addrPort(p.http), in, in, serverSPIFF)...); err != nil {
		return err
	}
	client, err := t.weft(ctx, v.bin, v.pod+"-client", v.ip+"1", "client", p.http, "", t.certs["client"])
	if err != nil {
		return err
	}
	p.procs = []*proc{client, server}

	p.tcpErr = func() error {
		inbound, err := freeAddr(v.ip + "4")
		if err != nil {
			return err
		}
		in := addrPort(inbound)
		cl := inboundClusterName(t.be.sink.Port())
		if err := t.xds.set(ctx, v.pod+"-tcp-server."+namespace, fx.StaticCluster(cl, t.be.sink),
			listener("inbound", chain{name: cl, dst: in, cluster: cl, mtls: true})); err != nil {
			return err
		}
		srv, err := t.weft(ctx, v.bin, v.pod+"-tcp-server", v.ip+"4", "server", "", inbound, t.certs["server"])
		if err != nil {
			return err
		}
		p.weftTCPServerAdmin = srv.admin
		if p.tcp, err = freeAddr(v.ip + "3"); err != nil {
			return err
		}
		if err := t.xds.set(ctx, v.pod+"-tcp-client."+namespace, outboundTCP(addrPort(p.tcp), in, serverSPIFF)...); err != nil {
			return err
		}
		_, err = t.weft(ctx, v.bin, v.pod+"-tcp-client", v.ip+"3", "client", p.tcp, "", t.certs["client"])
		return err
	}()
	return nil
}

// haproxyConfig is the global part of every HAProxy config of the bench; sections follow.
const haproxyGlobal = `global
    maxconn 4096
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
`

func (t *topology) startHAProxy(ctx context.Context, name string, sections []string, binds []string) (*proc, error) {
	cfg := filepath.Join(t.dir, name+".cfg")
	if err := os.WriteFile(cfg, []byte(haproxyGlobal+strings.Join(sections, "")), 0o600); err != nil {
		return nil, err
	}
	t.progress("starting " + name)
	p, err := startProc(name, t.dir, t.haproxy, "-db", "-f", cfg)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.procs = append(t.procs, p)
	t.mu.Unlock()
	if err := p.waitReady(ctx, "its listeners", dialable(binds...)); err != nil {
		return nil, err
	}
	return p, nil
}

// tlsOpts are the mTLS options of an HAProxy bind or server line with the certificate of role. HAProxy
// checks the chain but not the SPIFFE URI SAN (it has no URI SAN matcher).
func (t *topology) tlsOpts(role, alpn string) string {
	d := t.certs[role]
	s := fmt.Sprintf(" ssl crt %s ca-file %s verify required", filepath.Join(d, "haproxy.pem"), filepath.Join(d, "ca.pem"))
	if alpn != "" {
		s += " alpn " + alpn
	}
	return s
}

// httpFrontend routes gRPC by path to the gRPC app (HTTP/2) and the rest to the HTTP app; bindOpts
// makes it TLS.
func httpFrontend(name, bind, bindOpts, app, grpcApp, upOpts string) string {
	s := fmt.Sprintf("frontend %s\n    mode http\n    bind %s%s\n", name, bind, bindOpts)
	if grpcApp != "" {
		s += fmt.Sprintf("    use_backend %s_grpc if { path_beg %s }\n", name, grpcPrefix)
	}
	s += fmt.Sprintf("    default_backend %s_app\nbackend %s_app\n    mode http\n    http-reuse always\n    server s1 %s%s\n", name, name, app, upOpts)
	if grpcApp != "" {
		s += fmt.Sprintf("backend %s_grpc\n    mode http\n    http-reuse always\n    server s1 %s proto h2\n", name, grpcApp)
	}
	return s
}

// tcpFrontend is a TCP frontend and its backend; rules are extra frontend lines (use_backend …).
func tcpFrontend(name, bind, bindOpts, upstream, upOpts string, rules ...string) string {
	s := fmt.Sprintf("frontend %s\n    mode tcp\n    bind %s%s\n", name, bind, bindOpts)
	for _, r := range rules {
		s += "    " + r + "\n"
	}
	return s + fmt.Sprintf("    default_backend %s_up\nbackend %s_up\n    mode tcp\n    server s1 %s%s\n",
		name, name, upstream, upOpts)
}

func (t *topology) haproxyH1(ctx context.Context, p *path) error {
	var err error
	if p.http, err = freeAddr("127.0.0.31"); err != nil {
		return err
	}
	if p.tcp, err = freeAddr("127.0.0.32"); err != nil {
		return err
	}
	pr, err := t.startHAProxy(ctx, "haproxy-1", []string{
		httpFrontend("http", p.http, "", t.be.http.String(), t.be.grpc.String(), ""),
		tcpFrontend("tcp", p.tcp, "", t.be.sink.String(), ""),
	}, []string{p.http, p.tcp})
	if err != nil {
		return err
	}
	p.procs = []*proc{pr}
	return nil
}

// haproxyRelay starts one HAProxy process that relays TCP from bind to upstream (mode tcp: no HTTP
// parsing, no TLS, a process hop and nothing else), and from grpcBind to grpcUpstream the same way (the
// gRPC app behind the floor), with the same global settings (threads) as the H paths' HAProxies, and a
// stats listener that counts the relay's sessions.
func (t *topology) haproxyRelay(ctx context.Context, name, bind, upstream, grpcBind, grpcUpstream string) (*proc, string, error) {
	stats, err := freeAddr("127.0.0.1")
	if err != nil {
		return nil, "", err
	}
	pr, err := t.startHAProxy(ctx, name, []string{
		tcpFrontend("relay", bind, "", upstream, ""),
		tcpFrontend("relay_grpc", grpcBind, "", grpcUpstream, ""),
		fmt.Sprintf("listen stats\n    mode http\n    bind %s\n    stats enable\n    stats uri /stats\n", stats),
	}, []string{bind, grpcBind, stats})
	if err != nil {
		return nil, "", err
	}
	return pr, "http://" + stats + "/stats;csv", nil
}

// floorF1 is client → one relay process → the HTTP app (and the gRPC app).
func (t *topology) floorF1(ctx context.Context, p *path) error {
	var err error
	if p.http, err = freeAddr("127.0.0.71"); err != nil {
		return err
	}
	if p.grpc, err = freeAddr("127.0.0.72"); err != nil {
		return err
	}
	pr, stats, err := t.haproxyRelay(ctx, "haproxy-f1", p.http, t.be.http.String(), p.grpc, t.be.grpc.String())
	if err != nil {
		return err
	}
	p.procs, p.relayStats = []*proc{pr}, []string{stats}
	return nil
}

// floorF2 is client → relay process → relay process → the HTTP app (and the gRPC app): B2's and H2's
// two process hops, plaintext, without the proxies' work.
func (t *topology) floorF2(ctx context.Context, p *path) error {
	srv, err := freeAddr("127.0.0.82")
	if err != nil {
		return err
	}
	srvGRPC, err := freeAddr("127.0.0.84")
	if err != nil {
		return err
	}
	server, sstats, err := t.haproxyRelay(ctx, "haproxy-f2-server", srv, t.be.http.String(), srvGRPC, t.be.grpc.String())
	if err != nil {
		return err
	}
	if p.http, err = freeAddr("127.0.0.81"); err != nil {
		return err
	}
	if p.grpc, err = freeAddr("127.0.0.83"); err != nil {
		return err
	}
	client, cstats, err := t.haproxyRelay(ctx, "haproxy-f2-client", p.http, srv, p.grpc, srvGRPC)
	if err != nil {
		return err
	}
	p.procs, p.relayStats = []*proc{client, server}, []string{cstats, sstats}
	return nil
}

// haproxyH2 mirrors B2: a client-side HAProxy speaking HTTP/2 over mTLS to a server-side HAProxy.
func (t *topology) haproxyH2(ctx context.Context, p *path) error {
	srvHTTP, err := freeAddr("127.0.0.42")
	if err != nil {
		return err
	}
	srvTCP, err := freeAddr("127.0.0.44")
	if err != nil {
		return err
	}
	stats, err := freeAddr("127.0.0.1")
	if err != nil {
		return err
	}
	p.hapStats = "http://" + stats + "/stats;csv"
	server, err := t.startHAProxy(ctx, "haproxy-2-server", []string{
		httpFrontend("http", srvHTTP, t.tlsOpts("server", "h2,http/1.1"), t.be.http.String(), t.be.grpc.String(), ""),
		tcpFrontend("tcp", srvTCP, t.tlsOpts("server", ""), t.be.sink.String(), "", "use_backend tcp_resumed if { ssl_fc_is_resumed }"),
		fmt.Sprintf("backend tcp_resumed\n    mode tcp\n    server s1 %s\n", t.be.sink),
		fmt.Sprintf("listen stats\n    mode http\n    bind %s\n    stats enable\n    stats uri /stats\n", stats),
	}, []string{srvHTTP, srvTCP, stats})
	if err != nil {
		return err
	}
	if p.http, err = freeAddr("127.0.0.41"); err != nil {
		return err
	}
	if p.tcp, err = freeAddr("127.0.0.43"); err != nil {
		return err
	}
	client, err := t.startHAProxy(ctx, "haproxy-2-client", []string{
		httpFrontend("http", p.http, "", srvHTTP, "", t.tlsOpts("client", "h2")),
		tcpFrontend("tcp", p.tcp, "", srvTCP, t.tlsOpts("client", "")),
	}, []string{p.http, p.tcp})
	if err != nil {
		return err
	}
	p.procs = []*proc{client, server}
	return nil
}
