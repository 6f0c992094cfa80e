package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const meshYAML = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.7.7
  ports: [{name: http, port: 80, targetPort: %[1]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: %[1]d, protocol: TCP}]
endpoints:
%[2]s
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
spec:
  serviceAccountName: client
  containers: [{name: app, image: client}]
status: {podIP: 127.0.0.60}
`

func endpointYAML(ips ...string) string {
	var b strings.Builder
	for _, ip := range ips {
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: true}\n", ip)
	}
	return b.String()
}

// startWeftControl runs the real weft-control in local mode on a file.
func startWeftControl(t *testing.T, bin, file, xdsAddr string) func() {
	t.Helper()
	cmd := exec.Command(bin, "--discovery-file", file, "--xds-addr", xdsAddr, "--admin-addr", freeAddr(t), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestWithRealWeftControl runs weft-proxy against weft-control in local mode: traffic through the
// explicit proxy spreads over the Service's endpoints, follows an edit of the discovery file, and
// survives weft-control being killed and restarted without one failed request.
func TestWithRealWeftControl(t *testing.T) {
	if testing.Short() {
		t.Skip("builds weft-control")
	}
	bin := filepath.Join(t.TempDir(), "weft-control")
	build := exec.Command("go", "build", "-o", bin, "./cmd/weft-control")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building weft-control: %v\n%s", err, out)
	}

	var hits [2]atomic.Int64
	ips := []string{"127.0.0.61", "127.0.0.62"}
	l0, err := net.Listen("tcp", ips[0]+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l0.Addr().(*net.TCPAddr).Port
	l1, err := net.Listen("tcp", ips[1]+":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range []net.Listener{l0, l1} {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits[i].Add(1)
			fmt.Fprintf(w, "pod %d", i)
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { srv.Close() })
	}

	file := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(meshYAML, port, endpointYAML(ips...))), 0o600); err != nil {
		t.Fatal(err)
	}
	xdsAddr := freeAddr(t)
	stop := startWeftControl(t, bin, file, xdsAddr)

	o := runOptions{
		xdsAddr: xdsAddr, podName: "client-0", namespace: "shop", podIP: "127.0.0.60", serviceAccount: "client",
		adminAddr: freeAddr(t), httpProxyAddr: freeAddr(t), outboundAddr: freeAddr(t), inboundAddr: freeAddr(t),
		logLevel: "error", drainTimeout: 5 * time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "/ready", func() bool { code, _, _ := httpGet("http://" + o.adminAddr + "/ready"); return code == 200 })

	pu, _ := url.Parse("http://" + o.httpProxyAddr)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	send := func() error {
		resp, err := c.Get("http://web.shop.svc.cluster.local/")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s weft-error=%q %q", resp.Status, resp.Header.Get("Weft-Error"), b)
		}
		return nil
	}
	for range 40 {
		if err := send(); err != nil {
			t.Fatal(err)
		}
	}
	if hits[0].Load() == 0 || hits[1].Load() == 0 {
		t.Fatalf("not spread: %d/%d", hits[0].Load(), hits[1].Load())
	}

	// Steady traffic from here on: not one request may fail.
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	tctx, tcancel := context.WithCancel(context.Background())
	tdone := make(chan struct{})
	go func() {
		defer close(tdone)
		for tctx.Err() == nil {
			if err := send(); err != nil {
				failed.Add(1)
				lastErr.Store(err.Error())
			} else {
				ok.Add(1)
			}
		}
	}()
	// Drop pod 0 from the file: traffic moves to pod 1 only.
	if err := os.WriteFile(file, []byte(fmt.Sprintf(meshYAML, port, endpointYAML(ips[1]))), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod 0 out of rotation", func() bool {
		h0 := hits[0].Load()
		n := ok.Load()
		for ok.Load() < n+20 {
			time.Sleep(time.Millisecond)
		}
		return hits[0].Load() == h0
	})
	// Kill weft-control, keep serving, restart it (security.md §6 items 6 and 7).
	before := configWithoutVersions(t, o.adminAddr)
	acks := xdsACKs(t, o.adminAddr)
	stop()
	down := time.Now()
	n := ok.Load()
	waitFor(t, "the proxy to see the control plane gone", func() bool {
		_, body, _ := httpGet("http://" + o.adminAddr + "/xds")
		return strings.Contains(body, `"connected": false`)
	})
	waitFor(t, "traffic with the control plane down", func() bool { return ok.Load() > n+500 })
	startWeftControl(t, bin, file, xdsAddr)
	waitFor(t, "xDS reconnected and a response from the new weft-control ACKed", func() bool {
		_, body, _ := httpGet("http://" + o.adminAddr + "/xds")
		return strings.Contains(body, `"connected": true`) && xdsACKs(t, o.adminAddr) > acks
	})
	outage := time.Since(down)
	servedDown := ok.Load() - n
	// The restarted control plane, with the world unchanged, gives the same configuration.
	if after := configWithoutVersions(t, o.adminAddr); after != before {
		t.Errorf("the configuration after the control-plane restart differs from before:\nbefore: %s\nafter: %s", before, after)
	}
	n = ok.Load()
	waitFor(t, "traffic after the restart", func() bool { return ok.Load() > n+50 })
	tcancel()
	<-tdone
	t.Logf("control plane killed and restarted under traffic: %d requests, %d failed; %d of them from the kill to the new weft-control's config ACKed (%v)",
		ok.Load()+failed.Load(), failed.Load(), servedDown, outage.Round(time.Millisecond))
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed; last: %v", failed.Load(), failed.Load()+ok.Load(), lastErr.Load())
	}
}

// configWithoutVersions is the proxy's /config_dump with every version_info blanked (versions differ
// across control-plane restarts by design; the resources must not).
func configWithoutVersions(t *testing.T, admin string) string {
	t.Helper()
	code, body, err := httpGet("http://" + admin + "/config_dump")
	if err != nil || code != 200 {
		t.Fatalf("/config_dump: %d %v", code, err)
	}
	return versionInfo.ReplaceAllString(body, `"version_info":""`)
}

var versionInfo = regexp.MustCompile(`"version_info":\s*"[^"]*"`)

// xdsACKs is the proxy's count of ACKed xDS responses (/xds).
func xdsACKs(t *testing.T, admin string) uint64 {
	t.Helper()
	_, body, err := httpGet("http://" + admin + "/xds")
	if err != nil {
		t.Fatalf("/xds: %v", err)
	}
	var st struct {
		ACKs uint64 `json:"acks"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/xds: %v: %s", err, body)
	}
	return st.ACKs
}
