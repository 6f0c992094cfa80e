package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// startUpgradeBackend switches to an echo protocol on "Upgrade: echo".
func startUpgradeBackend(t testing.TB) netip.AddrPort {
	l := listen(t, "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		_, _ = io.Copy(c, brw)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

// upgradeRoundTrip upgrades a connection to addr and checks that bytes echo both ways.
func upgradeRoundTrip(t *testing.T, addr, authority string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n", authority)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade: %s %q weft-error=%q", resp.Status, b, resp.Header.Get("Weft-Error"))
	}
	for i := range 3 {
		msg := "ping " + strconv.Itoa(i) + "\n"
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		line, err := br.ReadString('\n')
		if err != nil || line != msg {
			t.Fatalf("echo after upgrade: %q %v", line, err)
		}
	}
}

func TestUpgradePlaintextAndMTLS(t *testing.T) {
	app := startUpgradeBackend(t)
	plain := newService(t, "ws.shop.svc.cluster.local", "127.0.0.80", app)

	ca := testpki.NewCA("mesh")
	pod := netip.MustParseAddrPort("127.0.0.81:" + strconv.Itoa(int(app.Port())))
	cp, _ := startServerSidecar(t, pod, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})

	secure := newService(t, "wss.shop.svc.cluster.local", "127.0.0.82", pod)
	msgs := resources(plain, secure)
	withCluster(msgs, secure.cluster(), func(c *clusterv3.Cluster) { fx.WithMTLS(c, echoID) })
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecar(t, cp.addr, clientNode, testpki.Identity{Leaf: ca.Issue(clientID), CA: ca})
	client.outboundAt(plain.lis)
	client.outboundAt(secure.lis)
	client.waitReady(t)

	t.Run("plaintext", func(t *testing.T) { upgradeRoundTrip(t, plain.lis.Addr().String(), plain.authority()) })
	t.Run("mtls", func(t *testing.T) { upgradeRoundTrip(t, secure.lis.Addr().String(), secure.authority()) })
}
