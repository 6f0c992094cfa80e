package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/weftmesh/weft/conformance/netns"
	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// TestMain removes netns.WorldDir (the weft-proxy binary netns.GoBuild made) when the tests are done.
func TestMain(m *testing.M) { os.Exit(netns.Main(m)) }

// TestTransparentMeshInNamespaces is the real thing: two pods (network namespaces) with `weft-proxy
// init` interception and the weft-proxy binary running as uid 2102 with certificates from --cert-dir,
// configured by a control plane in the test process. The client app calls a Service ClusterIP that
// no host owns: the client's sidecar takes it by SO_ORIGINAL_DST, talks mTLS to the server's
// sidecar, which hands it to the server app. A destination outside the mesh passes through, and a
// pod without a sidecar reaches the server app through the plaintext inbound chain.
func TestTransparentMeshInNamespaces(t *testing.T) {
	bin := netns.GoBuild(t, "./cmd/weft-proxy")
	n := netns.New(t)
	clientPod, serverPod, plainPod := n.AddPod("client"), n.AddPod("server"), n.AddPod("plain")

	// The control plane, on the bridge (reached by the proxies' uid, which bypasses interception).
	cp := startCPOn(t, n.Bridge.Listen(t, "tcp", ":15010"), "", nil, false)
	xdsAddr := n.Bridge.Addr(15010)

	// The server app on :8080 in the server pod; an "outside" service on the bridge.
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app %s %s", r.Proto, r.Host)
	})}
	go func() { _ = app.Serve(serverPod.Listen(t, "tcp", ":8080")) }()
	t.Cleanup(func() { app.Close() })
	outside := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "outside") })}
	go func() { _ = outside.Serve(n.Bridge.Listen(t, "tcp", ":9999")) }()
	t.Cleanup(func() { outside.Close() })

	const (
		clusterIP = "10.96.0.10"
		fqdn      = "echo.shop.svc.cluster.local"
		echoSA    = "spiffe://cluster.local/ns/shop/sa/echo"
		clientSA  = "spiffe://cluster.local/ns/shop/sa/client"
	)
	cl := fx.ClusterName(80, fqdn)
	serverEP := netip.AddrPortFrom(serverPod.IP, 8080)
	cp.set(t, "client-0.shop", "v1",
		fx.WithMTLS(fx.EDSCluster(cl, clusterv3.Cluster_LEAST_REQUEST), echoSA), fx.CLA(cl, serverEP), fx.Passthrough(),
		fx.Listener("outbound", netip.MustParseAddrPort("0.0.0.0:15001"), &fx.Chain{Name: "passthrough", Cluster: "passthrough"},
			fx.Chain{Name: cl, IP: clusterIP, Port: 80, Route: "80"}),
		fx.RouteConfig("80", fx.VirtualHost{Name: fqdn, Domains: []string{fqdn, fqdn + ":80", clusterIP, clusterIP + ":80"}, Routes: []fx.Route{{Cluster: cl}}}),
	)
	in := "inbound|8080||"
	cp.set(t, "server-0.shop", "v1",
		fx.StaticCluster(in, netip.MustParseAddrPort("127.0.0.1:8080")), fx.Passthrough(),
		fx.RouteConfig("inbound|8080", fx.VirtualHost{Name: "inbound", Domains: []string{"*"}, Routes: []fx.Route{{Cluster: in}}}),
		fx.Listener("inbound", netip.MustParseAddrPort("0.0.0.0:15006"), &fx.Chain{Name: "passthrough", Cluster: "passthrough"},
			fx.Chain{Name: in + "mtls", Port: 8080, Transport: "tls", MTLS: true, Route: "inbound|8080"},
			fx.Chain{Name: in + "plaintext", Port: 8080, Transport: "raw_buffer", Route: "inbound|8080"}),
	)

	ca := testpki.NewCA("mesh")
	sidecar := func(p *netns.Pod, name, sa, spiffe string) {
		dir, err := os.MkdirTemp(mustWorldDir(t), name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := testpki.WriteDir(dir, ca.Issue(spiffe), ca); err != nil {
			t.Fatal(err)
		}
		// The proxy runs as 2102; in a pod the certificates would be its own files.
		_ = os.Chmod(dir, 0o755)
		for _, f := range []string{"cert.pem", "key.pem", "ca.pem"} {
			_ = os.Chmod(filepath.Join(dir, f), 0o644)
		}
		if out, err := p.Output(exec.Command(bin, "init")); err != nil {
			t.Fatalf("weft-proxy init in %s: %v\n%s", p.Name, err, out)
		}
		cmd := netns.AsUser(exec.Command(bin, "run", "--xds-addr", xdsAddr, "--pod-name", name, "--namespace", "shop",
			"--pod-ip", p.IP.String(), "--service-account", sa, "--cert-dir", dir, "--log-level", "warn"), 2102, 2102)
		p.Start(t, cmd)
		waitFor(t, name+" ready", func() bool {
			body, err := podGet(p, "http://127.0.0.1:15000/ready")
			return err == nil && strings.TrimSpace(body) == "ready"
		})
	}
	sidecar(serverPod, "server-0", "echo", echoSA)
	sidecar(clientPod, "client-0", "client", clientSA)

	// Meshed: ClusterIP → client sidecar → mTLS → server sidecar → app.
	body, err := podGet(clientPod, "http://"+fqdn+"/", clusterIP+":80")
	if err != nil || body != "app HTTP/1.1 "+fqdn {
		t.Fatalf("meshed call: %q %v", body, err)
	}
	metrics, err := podGet(clientPod, "http://127.0.0.1:15000/metrics")
	want := `response_total{authority="` + fqdn + `",classification="success",client_id="` + clientSA + `",direction="outbound",dst_namespace="shop",dst_service="echo",namespace="shop",pod="client-0",server_id="` + echoSA + `",status_code="200",target_cluster="` + cl + `",tls="true"} 1`
	if err != nil || !strings.Contains(metrics, want) {
		t.Errorf("client sidecar metrics lack %s", want)
	}
	metrics, err = podGet(serverPod, "http://127.0.0.1:15000/metrics")
	want = `client_id="` + clientSA + `",direction="inbound",namespace="shop",pod="server-0",server_id="` + echoSA + `",status_code="200",target_cluster="` + in + `",tls="true"} 1`
	if err != nil || !strings.Contains(metrics, want) {
		t.Errorf("server sidecar metrics lack %s", want)
	}

	// Outside the mesh: passthrough to the original destination.
	if body, err := podGet(clientPod, "http://"+n.Bridge.Addr(9999)+"/"); err != nil || body != "outside" {
		t.Errorf("passthrough: %q %v", body, err)
	}
	// A pod without a sidecar reaches the app through the plaintext inbound chain.
	if body, err := podGet(plainPod, "http://"+serverEP.String()+"/"); err != nil || body != "app HTTP/1.1 "+serverEP.String() {
		t.Errorf("plaintext inbound: %q %v", body, err)
	}
}

func mustWorldDir(t *testing.T) string {
	d, err := netns.WorldDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// podGet makes a GET from inside a pod (as root, so interception applies); dialAddr overrides where
// it connects.
func podGet(p *netns.Pod, u string, dialAddr ...string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if len(dialAddr) > 0 {
			addr = dialAddr[0]
		}
		return p.Dial(ctx, network, addr)
	}}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("%s weft-error=%q", resp.Status, resp.Header.Get("Weft-Error"))
	}
	return string(b), err
}
