package proxy_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/weftmesh/weft/dataplane/testpki"
	fx "github.com/weftmesh/weft/dataplane/xdsfixture"
)

// h2App is the server pod's application for the tests of bodyless requests arriving over mTLS
// HTTP/2: it answers with announced and late trailers, streams a body in two parts (the second after
// release), and reports the request's headers.
type h2App struct {
	addr    netip.AddrPort
	release chan struct{}
	heads   chan http.Header
}

func startH2App(t *testing.T) *h2App {
	t.Helper()
	a := &h2App{release: make(chan struct{}), heads: make(chan http.Header, 16)}
	l := listen(t, "127.0.0.1:0")
	a.addr = netip.MustParseAddrPort(l.Addr().String())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.heads <- r.Header.Clone()
		switch r.URL.Path {
		case "/trailers":
			w.Header().Set("Trailer", "X-Sum")
			_, _ = io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
			w.Header().Set(http.TrailerPrefix+"X-Late", "late")
		case "/stream":
			_, _ = io.WriteString(w, "first|")
			http.NewResponseController(w).Flush()
			select {
			case <-a.release:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "second")
		default:
			w.Header().Set("X-App", "yes")
			w.Header().Set("Connection", "X-Hop")
			w.Header().Set("X-Hop", "must not pass")
			_, _ = io.WriteString(w, r.Method+" "+r.URL.RequestURI())
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return a
}

// meshOverMTLS starts a server sidecar in front of appAddr on pod and a client sidecar with an mTLS
// cluster to it; it returns the Service and both sidecars.
func meshOverMTLS(t *testing.T, pod, vip string, appAddr netip.AddrPort) (*service, *sidecar, *sidecar) {
	t.Helper()
	ca := testpki.NewCA("mesh")
	podAddr := netip.MustParseAddrPort(pod + ":" + strconv.Itoa(int(appAddr.Port())))
	cp, server := startServerSidecar(t, podAddr, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	svc := newService(t, echoFQDN, vip, podAddr)
	msgs := resources(svc)
	for _, m := range msgs {
		if c, ok := m.(*clusterv3.Cluster); ok && c.GetName() == svc.cluster() {
			fx.WithMTLS(c, echoID)
		}
	}
	cp.set(t, clientNode.ID(), "v1", msgs...)
	client := startSidecar(t, cp.addr, clientNode, testpki.Identity{Leaf: ca.Issue(clientID), CA: ca})
	client.outboundAt(svc.lis)
	client.waitReady(t)
	return svc, client, server
}

// Trailers of an HTTP/1.1 app, announced and late, reach an HTTP/1.1 client through both sidecars.
func TestTrailersOverMTLS(t *testing.T) {
	app := startH2App(t)
	svc, _, _ := meshOverMTLS(t, "127.0.0.81", "127.0.0.82", app.addr)
	resp, err := clientFor(svc).Get("http://" + svc.authority() + "/trailers")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != "body" {
		t.Fatalf("response %d %q (%v)", resp.StatusCode, body, err)
	}
	if resp.Trailer.Get("X-Sum") != "42" || resp.Trailer.Get("X-Late") != "late" {
		t.Fatalf("trailers %v, want X-Sum 42 and X-Late late", resp.Trailer)
	}
}

// A body the app streams reaches the client part by part: the first part before the app sends the
// second.
func TestStreamedBodyOverMTLS(t *testing.T) {
	app := startH2App(t)
	svc, _, _ := meshOverMTLS(t, "127.0.0.83", "127.0.0.84", app.addr)
	c := dialListener(t, svc, 20*time.Second)
	if _, err := io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: "+svc.authority()+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, len("first|"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first|" {
		t.Fatalf("first part %q (%v)", first, err)
	}
	close(app.release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "second" {
		t.Fatalf("second part %q (%v)", rest, err)
	}
}

// The server sidecar's side of the mTLS HTTP/2 hop, spoken to directly as a client sidecar would:
// request and response headers are cleaned as ReverseProxy cleans them, HEAD works, an unreachable
// app is a 502 with weft-error, and the metrics carry the client's identity.
func TestInboundHTTP2Requests(t *testing.T) {
	ca := testpki.NewCA("mesh")
	app := startH2App(t)
	podAddr := netip.MustParseAddrPort("127.0.0.85:" + strconv.Itoa(int(app.addr.Port())))
	_, server := startServerSidecar(t, podAddr, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})

	// A port where nothing listens, for the unreachable app.
	dead := listen(t, "127.0.0.1:0")
	deadPort := netip.MustParseAddrPort(dead.Addr().String()).Port()
	dead.Close()

	leaf := ca.Issue(clientID)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		Protocols:       new(http.Protocols),
	}
	tr.Protocols.SetHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	base := "https://" + podAddr.String()

	req, _ := http.NewRequest(http.MethodGet, base+"/h?a=1;b=2", nil)
	req.Header.Set("Te", "trailers")
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	req.Header.Set("Forwarded", "for=192.0.2.1")
	req.Header.Set("Proxy-Authorization", "secret")
	req.Header.Set("X-Keep", "k")
	req.Header.Set("Weft-Orig-Proto", "HTTP/1.1") // as a client sidecar says for an HTTP/1.1 app's request
	req.Header.Set("User-Agent", "")              // none at all
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("the test client spoke %s to the inbound listener, want HTTP/2", resp.Proto)
	}
	// The query with a semicolon is parsed and encoded again (ReverseProxy's Rewrite mode drops "a=1;b=2").
	if resp.StatusCode != 200 || string(body) != "GET /h" || resp.Header.Get("X-App") != "yes" {
		t.Fatalf("response %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if _, ok := resp.Header["X-Hop"]; ok {
		t.Errorf("a header the app named in Connection reached the client: %v", resp.Header)
	}
	h := <-app.heads
	if h.Get("Te") != "trailers" || h.Get("X-Keep") != "k" {
		t.Errorf("end-to-end headers lost: %v", h)
	}
	for _, k := range []string{"X-Forwarded-For", "Forwarded", "Proxy-Authorization", "User-Agent"} {
		if _, ok := h[k]; ok {
			t.Errorf("the app got %s: %v", k, h)
		}
	}

	req, _ = http.NewRequest(http.MethodHead, base+"/head", nil)
	req.Header.Set("Weft-Orig-Proto", "HTTP/1.1")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-app.heads
	if resp.StatusCode != 200 || resp.Header.Get("X-App") != "yes" {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}

	in := map[string]string{"direction": "inbound", "tls": "true", "client_id": clientID, "server_id": echoID, "status_code": "200"}
	waitFor(t, "the server sidecar's response_total with the client's identity", func() bool {
		return metricValue(t, server.reg, "response_total", in) == 2
	})

	// The app goes away: a 502 that says why, counted as such.
	deadPod := netip.MustParseAddrPort("127.0.0.86:" + strconv.Itoa(int(deadPort)))
	_, server2 := startServerSidecar(t, deadPod, testpki.Identity{Leaf: ca.Issue(echoID), CA: ca})
	req, _ = http.NewRequest(http.MethodGet, "https://"+deadPod.String()+"/gone", nil)
	req.Header.Set("Weft-Orig-Proto", "HTTP/1.1")
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Header.Get("Weft-Error"), "refused") {
		t.Fatalf("unreachable app: %d %q weft-error %q", resp.StatusCode, body, resp.Header.Get("Weft-Error"))
	}
	in["status_code"] = "502"
	waitFor(t, "the server sidecar's response_total of the 502", func() bool {
		return metricValue(t, server2.reg, "response_total", in) == 1
	})
}
