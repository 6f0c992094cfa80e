package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/weftmesh/weft/conformance/kubeenv"
	"github.com/weftmesh/weft/conformance/portprobe"
	"github.com/weftmesh/weft/deploy/inject"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/workload"
	identitypb "github.com/weftmesh/weft/proto/weft/identity/v1"
)

// controlPlane is weft-control running in local mode with the identity CA on, for the tests below.
type controlPlane struct {
	c      config
	caDir  string
	token  string
	ctx    context.Context
	client *workload.Client // a workload (default/web) with its certificate
}

func startControlPlane(t *testing.T, limits serverLimits, adminAddr string) *controlPlane {
	t.Helper()
	caDir, tokens, token := localCA(t)
	c := baseConfig(t)
	if adminAddr != "" {
		c.adminAddr = adminAddr
	}
	c.discoveryFile = "../../deploy/examples/echo.yaml"
	c.identity = identityConfig{addr: freeAddr(t), dir: caDir, tokens: tokens, leaf: 2 * time.Hour}
	c.limits = limits
	ctx := startRun(t, c)
	cp := &controlPlane{c: c, caDir: caDir, token: token, ctx: ctx}
	cp.client = cp.certify(t)
	return cp
}

// certify gets a workload certificate through Certify on the mTLS port: the real call of a proxy.
func (cp *controlPlane) certify(t *testing.T) *workload.Client {
	t.Helper()
	web := identity.ID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	client, err := workload.New(workload.Config{Addr: cp.c.identity.addr, Identity: web, TokenFile: cp.token, TrustBundleFile: filepath.Join(cp.caDir, "ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(cp.ctx)
	t.Cleanup(cancel)
	go client.Run(ctx) //nolint:errcheck
	select {
	case <-client.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("no certificate from Certify: %+v", client.Status())
	}
	return client
}

// mtlsConn is a gRPC connection to the mTLS port with the workload's certificate (or none).
func (cp *controlPlane) mtlsConn(t *testing.T, withCert bool) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: cp.client.TrustBundle(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
	if withCert {
		cfg.GetClientCertificate = cp.client.GetClientCertificate
	}
	cc, err := grpc.NewClient(cp.c.identity.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (cp *controlPlane) plainConn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(cp.c.xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// askCDS opens an ADS stream as the proxy of web-0.default and returns the first CDS response: the
// real call of a proxy on the xDS ports. The stream stays open until the test ends.
func askCDS(t *testing.T, cc *grpc.ClientConn) *discoverypb.DiscoveryResponse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	timer := time.AfterFunc(20*time.Second, cancel)
	defer timer.Stop()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("ADS: %v", err)
	}
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "default", "SERVICE_ACCOUNT": "web", "CLIENT_KIND": "weft"})
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &core.Node{Id: "web-0.default", Metadata: md}, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatalf("ADS send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("ADS: %v", err)
	}
	if len(resp.GetResources()) == 0 {
		t.Fatal("ADS: a CDS response without clusters")
	}
	return resp
}

func getOK(t *testing.T, c *http.Client, url string) []byte {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %q", url, resp.StatusCode, b)
	}
	return b
}

// TestGarbageOnControlPlanePorts sends garbage to weft-control's ports (xDS plaintext, the mTLS port
// of xDS and Certify, admin): random bytes, TLS to a plaintext port, plaintext and HTTP/1 to the
// gRPC ports, half-open connections (part of a preface, of a TLS hello, of an HTTP/2 frame, of a request
// head), a slowloris head, and 2000 connections that send nothing to each port at once. weft-control
// closes every one (at once, or after its handshake timeout of 1 s here, 10 s by default, or its idle
// timeout of 2 s here, 5 min by default) and answers real calls all along: ADS on both ports, Certify,
// /ready. A Certify message over the 4 MiB cap is refused, and the next one served.
func TestGarbageOnControlPlanePorts(t *testing.T) {
	cp := startControlPlane(t, serverLimits{handshake: time.Second, idle: 2 * time.Second}, "")
	adminURL := "http://" + cp.c.adminAddr
	admin := &http.Client{Timeout: 20 * time.Second}

	ports := []struct {
		name   string
		addr   string
		real   func(t *testing.T)
		probes func(t *testing.T, dial portprobe.Dialer)
	}{
		{"xDS plaintext", cp.c.xdsAddr, func(t *testing.T) { askCDS(t, cp.plainConn(t)) }, func(t *testing.T, dial portprobe.Dialer) {
			t.Logf("TLS to the plaintext port: closed after %v", portprobe.TLSHello(t, dial))
			t.Logf("HTTP/1 to the gRPC port: closed after %v", portprobe.Send(t, "HTTP/1 to gRPC", dial, portprobe.HTTP1))
			t.Logf("half a preface: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialPreface))
			t.Logf("preface, SETTINGS and part of a frame: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialH2Frame))
		}},
		{"mTLS (xDS and Certify)", cp.c.identity.addr, func(t *testing.T) {
			askCDS(t, cp.mtlsConn(t, true))
			cp.certify(t)
		}, func(t *testing.T, dial portprobe.Dialer) {
			t.Logf("plaintext HTTP/1 to the TLS port: closed after %v", portprobe.Send(t, "plaintext to TLS", dial, portprobe.HTTP1))
			t.Logf("half a TLS hello: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialTLSHello))
			t.Logf("a TLS handshake, then nothing: closed after %v", portprobe.TLSHello(t, dial))
		}},
		{"admin", cp.c.adminAddr, func(t *testing.T) { getOK(t, admin, adminURL+"/ready") }, func(t *testing.T, dial portprobe.Dialer) {
			t.Logf("TLS to the plaintext port: closed after %v", portprobe.TLSHello(t, dial))
			t.Logf("half-open head: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialHTTP1))
			d, n := portprobe.Slowloris(t, dial, []byte("GET /ready HTTP/1.1\r\nHost: x\r\n"), 20*time.Millisecond)
			t.Logf("slowloris: closed after %v and %d bytes", d, n)
			req, _ := http.NewRequest(http.MethodGet, adminURL+"/ready", nil)
			req.Header.Set("X-Big", strings.Repeat("a", 1<<20))
			if resp, err := admin.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
					t.Errorf("1 MiB of headers: %d, want 431", resp.StatusCode)
				}
			}
		}},
	}
	for _, p := range ports {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			dial := portprobe.TCP(p.addr)
			p.real(t)
			t.Logf("random bytes: closed after %v", portprobe.RandomBytes(t, dial, 4096))
			p.probes(t, dial)
			const idle = 2000
			t.Logf("%d idle connections: all closed %v after they opened", idle, portprobe.Idle(t, dial, idle, func() { p.real(t) }))
			p.real(t)
		})
	}

	t.Run("Certify message over the cap", func(t *testing.T) {
		t.Parallel()
		cc := cp.mtlsConn(t, false)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := identitypb.NewIdentityClient(cc).Certify(ctx, &identitypb.CertifyRequest{
			Identity: "spiffe://cluster.local/ns/default/sa/web", Token: []byte("secret-web"),
			CertificateSigningRequest: bytes.Repeat([]byte{0x30}, maxRecvMsgBytes+1),
		})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("a %d-byte Certify: %v, want ResourceExhausted", maxRecvMsgBytes+1, err)
		}
		cp.certify(t)
	})
}

// TestControlPlaneAdminExposure: /ready and /metrics answer anyone who reaches the admin port (the
// kubelet, Prometheus), and /debug/connections (weft check, through the apiserver); the rest of /debug/ only loopback clients: a request from another address of the machine
// (the pod network) gets 403. No private key (the issuer's, in --identity-dir) appears in anything the
// admin port or CSDS (on both gRPC ports) serves.
func TestControlPlaneAdminExposure(t *testing.T) {
	src := portprobe.NonLoopback(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	cp := startControlPlane(t, serverLimits{}, "0.0.0.0:"+port)
	local := &http.Client{Timeout: 20 * time.Second}
	fromNet := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return portprobe.From(src, addr)()
	}}}
	remoteURL := "http://" + src.String() + ":" + port
	loopURL := "http://127.0.0.1:" + port
	for _, path := range []string{"/ready", "/metrics", "/debug/connections"} {
		getOK(t, fromNet, remoteURL+path)
	}
	for _, path := range []string{"/debug/", "/debug/state", "/debug/clients", "/debug/pprof/", "/nope"} {
		resp, err := fromNet.Get(remoteURL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET %s from %s: %d, want 403", path, src, resp.StatusCode)
		}
	}

	// A proxy connected on each port, so that CSDS and /debug/clients have clients to show.
	askCDS(t, cp.plainConn(t))
	askCDS(t, cp.mtlsConn(t, true))
	issuerKey, err := os.ReadFile(filepath.Join(cp.caDir, identity.IssuerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	rootKey, _ := os.ReadFile(filepath.Join(cp.caDir, "ca.key"))
	keys := append(issuerKey, rootKey...)
	for _, path := range []string{"/debug/", "/debug/state", "/debug/clients", "/debug/connections", "/metrics", "/ready"} {
		portprobe.NoPrivateKey(t, "GET "+path, getOK(t, local, loopURL+path), keys)
	}
	for name, cc := range map[string]*grpc.ClientConn{"plaintext": cp.plainConn(t), "mTLS": cp.mtlsConn(t, true)} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		resp, err := statuspb.NewClientStatusDiscoveryServiceClient(cc).FetchClientStatus(ctx, &statuspb.ClientStatusRequest{})
		cancel()
		if err != nil {
			t.Fatalf("CSDS on the %s port: %v", name, err)
		}
		if len(resp.GetConfig()) == 0 {
			t.Fatalf("CSDS on the %s port shows no client", name)
		}
		b, _ := protojson.Marshal(resp)
		portprobe.NoPrivateKey(t, "CSDS on the "+name+" port", b, keys)
	}
}

// TestGarbageOnTheInjector sends garbage to the injector's HTTPS port (15017) of weft-control running
// against a real apiserver: random bytes, plaintext HTTP/1 to the TLS port, half a TLS hello, a TLS
// handshake and then nothing, a half-open request head over TLS, 2000 connections that send nothing,
// and an AdmissionReview over the 4 MiB body cap (413). Each connection is closed (handshake and
// read-header timeout 1 s here, 10 s by default; idle 2 s here, 5 min by default) and a real
// AdmissionReview is answered all along.
func TestGarbageOnTheInjector(t *testing.T) {
	env := kubeenv.Get(t)
	env.CreateNamespace(t, "inj-garbage", nil)
	c, anchors := injectorSetup(t, env)
	c.limits = serverLimits{handshake: time.Second, idle: 2 * time.Second}
	startRun(t, c)

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(anchors)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "weft-injector.weft.svc", MinVersion: tls.VersionTLS12},
	}}
	url := "https://" + c.injector.addr + inject.WebhookPath
	raw, _ := json.Marshal(&corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "inj-garbage"},
		Spec:       corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{Name: "web", Image: "web:1"}}}})
	review, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "uid-garbage", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "inj-garbage",
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
	})
	real := func() {
		t.Helper()
		resp, err := client.Post(url, "application/json", bytes.NewReader(review))
		if err != nil {
			t.Fatalf("a real AdmissionReview: %v", err)
		}
		defer resp.Body.Close()
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil || !out.Response.Allowed || out.Response.UID != "uid-garbage" {
			t.Fatalf("a real AdmissionReview: %s, %v, %+v", resp.Status, err, out.Response)
		}
	}
	real()

	dial := portprobe.TCP(c.injector.addr)
	t.Logf("random bytes: closed after %v", portprobe.RandomBytes(t, dial, 4096))
	t.Logf("plaintext HTTP/1 to the TLS port: closed after %v", portprobe.Send(t, "plaintext to TLS", dial, portprobe.HTTP1))
	t.Logf("half a TLS hello: closed after %v", portprobe.HalfOpen(t, dial, portprobe.PartialTLSHello))
	t.Logf("a TLS handshake, then nothing: closed after %v", portprobe.TLSHello(t, dial))
	tlsDial := func() (net.Conn, error) {
		return tls.Dial("tcp", c.injector.addr, &tls.Config{RootCAs: roots, ServerName: "weft-injector.weft.svc", MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
	}
	t.Logf("half-open head over TLS: closed after %v", portprobe.HalfOpen(t, tlsDial, portprobe.PartialHTTP1))

	resp, err := client.Post(url, "application/json", bytes.NewReader(bytes.Repeat([]byte(" "), inject.MaxRequestBytes+1)))
	if err != nil {
		t.Fatalf("an AdmissionReview over the cap: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("an AdmissionReview of %d bytes: %s, want 413", inject.MaxRequestBytes+1, resp.Status)
	}
	const idle = 2000
	t.Logf("%d idle connections: all closed %v after they opened", idle, portprobe.Idle(t, dial, idle, real))
	real()
}

// TestH2FloodsOnTheXDSPort sends HTTP/2 floods to the plaintext xDS port, frame by frame: Rapid Reset
// (10000 ADS streams opened and reset at once), a CONTINUATION flood (a header block that never ends),
// and 10000 PINGs and 10000 SETTINGS. weft-control stays up and serves ADS after each; the
// CONTINUATION flood is cut by gRPC's header list limit (16 MiB) before the test's 64 MiB.
func TestH2FloodsOnTheXDSPort(t *testing.T) {
	cp := startControlPlane(t, serverLimits{}, "")
	dial := portprobe.TCP(cp.c.xdsAddr)
	const ads = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	askCDS(t, cp.plainConn(t))
	r := portprobe.RapidReset(t, dial, ads, 10000)
	t.Logf("rapid reset, 10000 streams: %d bytes in %v, cut by the server: %v", r.Bytes, r.Took, r.Cut)
	askCDS(t, cp.plainConn(t))
	const max = 64 << 20
	r = portprobe.ContinuationFlood(t, dial, ads, max)
	t.Logf("CONTINUATION flood: %d bytes in %v, cut by the server: %v", r.Bytes, r.Took, r.Cut)
	if !r.Cut || r.Bytes >= max {
		t.Errorf("CONTINUATION flood: %d bytes taken, cut %v: want the connection cut before %d bytes", r.Bytes, r.Cut, max)
	}
	askCDS(t, cp.plainConn(t))
	r = portprobe.PingFlood(t, dial, 10000)
	t.Logf("PING flood, 10000: %d bytes in %v, cut by the server: %v", r.Bytes, r.Took, r.Cut)
	askCDS(t, cp.plainConn(t))
	r = portprobe.SettingsFlood(t, dial, 10000)
	t.Logf("SETTINGS flood, 10000: %d bytes in %v, cut by the server: %v", r.Bytes, r.Took, r.Cut)
	askCDS(t, cp.plainConn(t))
}
