package gamma

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// httpRoute is one HTTPRoute document attached to Service parent's port 8080.
func httpRoute(name, parent, annotations, rules string) string {
	return fmt.Sprintf(`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: %s
  namespace: %s
  annotations: {%s}
spec:
  parentRefs: [{group: "", kind: Service, name: %s, port: %d}]
  rules:
%s`, name, namespace, annotations, parent, appPort, rules)
}

// split is the canary route: Service echo's traffic shared by weight between echo-v1 and echo-v2.
func split(v1, v2 int, annotations string) string {
	return httpRoute("echo-split", "echo", annotations, fmt.Sprintf(`  - backendRefs:
    - {name: echo-v1, port: %d, weight: %d}
    - {name: echo-v2, port: %d, weight: %d}
`, appPort, v1, appPort, v2))
}

// TestRoutes runs one mesh and goes through the route cases in turn, each rewriting the discovery file.
func TestRoutes(t *testing.T) {
	m := startMesh(t)
	t.Run("WeightedSplitFollowsEdits", m.weightedSplit)
	t.Run("HeaderMethodQueryMatches", m.matches)
	t.Run("TimeoutAndRetry", m.timeoutAndRetry)
	t.Run("OverrideHeader", m.override)
	t.Run("BadRoutesLeaveTheRestWorking", m.badRoutes)
	t.Run("GRPCRouteMethodAndHeader", m.grpcRouteMatches)
}

// count sends n GETs to Service echo through client-0's sidecar, 8 at a time, and counts who answered.
func (m *mesh) count(t *testing.T, n int) map[string]int {
	t.Helper()
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
		errs = make(chan error, n)
		next = make(chan struct{}, n)
	)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range 8 {
		wg.Go(func() {
			for range next {
				r, err := m.get(http.MethodGet, "echo", "/", nil)
				if err == nil && r.status != http.StatusOK {
					err = fmt.Errorf("status %d: %s", r.status, r.body)
				}
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				seen[r.body]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("GET echo through client-0's sidecar: %v", err)
	}
	return seen
}

// weightedSplit: 90/10 over 1000 requests within 4 sigma of the binomial, then the file edited to 50/50
// and 100/0, and the traffic follows.
func (m *mesh) weightedSplit(t *testing.T) {
	const n = 1000
	for _, w := range []struct{ v1, v2 int }{{90, 10}, {50, 50}, {100, 0}} {
		m.apply(t, split(w.v1, w.v2, ""))
		seen := m.count(t, n)
		p := float64(w.v2) / 100
		mean, sigma := n*p, math.Sqrt(n*p*(1-p))
		got := seen["echo-v2"]
		t.Logf("weights %d/%d: echo-v1 %d, echo-v2 %d of %d (v2 expected %.0f ± %.1f at 4σ)", w.v1, w.v2, seen["echo-v1"], got, n, mean, 4*sigma)
		if seen["echo-v1"]+got != n {
			t.Fatalf("weights %d/%d: answers from %v, want only echo-v1 and echo-v2", w.v1, w.v2, seen)
		}
		if math.Abs(float64(got)-mean) > 4*sigma {
			t.Errorf("weights %d/%d: echo-v2 answered %d of %d, want %.0f ± %.1f (4σ)", w.v1, w.v2, got, n, mean, 4*sigma)
		}
	}
}

// matches: x-canary: yes goes to v2; POST with ?variant=b goes to v2; everything else to v1.
func (m *mesh) matches(t *testing.T) {
	m.apply(t, httpRoute("echo-match", "echo", "", fmt.Sprintf(`  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: echo-v2, port: %[1]d}]
  - matches: [{method: POST, queryParams: [{name: variant, value: b}]}]
    backendRefs: [{name: echo-v2, port: %[1]d}]
  - backendRefs: [{name: echo-v1, port: %[1]d}]
`, appPort)))
	for _, c := range []struct {
		method, pathQuery string
		header            map[string]string
		want              string
	}{
		{"GET", "/", nil, "echo-v1"},
		{"GET", "/", map[string]string{"x-canary": "yes"}, "echo-v2"},
		{"GET", "/", map[string]string{"X-Canary": "yes"}, "echo-v2"},
		{"GET", "/", map[string]string{"x-canary": "no"}, "echo-v1"},
		{"POST", "/?variant=b", nil, "echo-v2"},
		{"POST", "/?variant=a", nil, "echo-v1"},
		{"POST", "/", nil, "echo-v1"},
		{"GET", "/?variant=b", nil, "echo-v1"},
	} {
		for range 10 { // v1 and v2 both back Service echo: one lucky answer proves nothing
			r := m.must(t, c.method, "echo", c.pathQuery, c.header)
			if r.status != http.StatusOK || r.body != c.want {
				t.Errorf("%s %s %v: %d %q, want 200 from %s", c.method, c.pathQuery, c.header, r.status, r.body, c.want)
				break
			}
		}
	}
}

// timeoutAndRetry: timeouts.request gives a 504 from a backend that does not answer; a route retrying
// 503 gets past a backend failing the first try (the backend counts two attempts), while the same
// request without the route's retries sees the 503 (one attempt).
func (m *mesh) timeoutAndRetry(t *testing.T) {
	m.apply(t, httpRoute("echo-resilient", "echo", `retry.weft.io/attempts: "2", retry.weft.io/codes: "503", retry.weft.io/backoff: 10ms`,
		fmt.Sprintf(`  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: echo-v1, port: %[1]d}]
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    backendRefs: [{name: echo-v1, port: %[1]d}]
`, appPort)))

	start := time.Now()
	r := m.must(t, "GET", "echo", "/slow", nil)
	took := time.Since(start)
	if r.status != http.StatusGatewayTimeout {
		t.Errorf("GET /slow with timeouts.request 300ms: %d %q, want 504", r.status, r.body)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("GET /slow with timeouts.request 300ms answered after %v, want about 300ms", took)
	}

	// attempts "2" is two retries: three tries in all.
	for _, c := range []struct {
		fail, status int
		body         string
	}{
		{1, http.StatusOK, "echo-v1"},
		{2, http.StatusOK, "echo-v1"},
		{3, http.StatusServiceUnavailable, "echo-v1 fails the first try"},
	} {
		id := fmt.Sprintf("retried-%d", c.fail)
		r := m.must(t, "GET", "echo", fmt.Sprintf("/flaky?id=%s&fail=%d", id, c.fail), nil)
		if r.status != c.status || r.body != c.body {
			t.Errorf("GET /flaky failing %d tries, retries 2 on 503: %d %q, want %d %q", c.fail, r.status, r.body, c.status, c.body)
		}
		if n, want := m.v1.attemptsOf(id), min(c.fail+1, 3); n != want {
			t.Errorf("GET /flaky failing %d tries, retries 2 on 503: echo-v1 saw %d attempts, want %d", c.fail, n, want)
		}
	}
	// The control: Service echo-v1 has no route, hence no retries.
	r = m.must(t, "GET", "echo-v1", "/flaky?id=control", nil)
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("GET echo-v1/flaky without a route: %d %q, want the backend's 503", r.status, r.body)
	}
	if n := m.v1.attemptsOf("control"); n != 1 {
		t.Errorf("GET echo-v1/flaky without a route: echo-v1 saw %d attempts, want 1", n)
	}
}

// override: weft-override-route: echo-v2 picks v2 at weight 0 when the route enables it, and is ignored
// when it does not.
func (m *mesh) override(t *testing.T) {
	over := map[string]string{"weft-override-route": "echo-v2"}
	m.apply(t, split(100, 0, `weft.io/override-route: enabled`))
	for range 20 {
		if r := m.must(t, "GET", "echo", "/", over); r.status != http.StatusOK || r.body != "echo-v2" {
			t.Fatalf("override enabled, weft-override-route: echo-v2 at weight 0: %d %q, want 200 from echo-v2", r.status, r.body)
		}
		if r := m.must(t, "GET", "echo", "/", nil); r.status != http.StatusOK || r.body != "echo-v1" {
			t.Fatalf("override enabled, no header, 100/0: %d %q, want 200 from echo-v1", r.status, r.body)
		}
	}
	m.apply(t, split(100, 0, ""))
	for range 20 {
		if r := m.must(t, "GET", "echo", "/", over); r.status != http.StatusOK || r.body != "echo-v1" {
			t.Fatalf("override not enabled, weft-override-route: echo-v2: %d %q, want the header ignored (200 from echo-v1)", r.status, r.body)
		}
	}
}

// badRoutes: a route whose only backend Service does not exist answers 500 (the spec) and a route with
// an invalid regular expression programs nothing; the good route beside them works, and weft-control
// logs both problems.
func (m *mesh) badRoutes(t *testing.T) {
	m.apply(t, split(0, 100, "")+
		httpRoute("lonely-missing", "lonely", "", fmt.Sprintf(`  - backendRefs: [{name: no-such-service, port: %d}]
`, appPort))+
		httpRoute("v2-bad-regex", "echo-v2", "", fmt.Sprintf(`  - matches: [{path: {type: RegularExpression, value: "/([a-z"}}]
    backendRefs: [{name: echo-v1, port: %d}]
`, appPort)))
	for range 10 {
		if r := m.must(t, "GET", "echo", "/", nil); r.status != http.StatusOK || r.body != "echo-v2" {
			t.Fatalf("the good route (0/100) beside bad ones: %d %q, want 200 from echo-v2", r.status, r.body)
		}
	}
	if r := m.must(t, "GET", "lonely", "/", nil); r.status != http.StatusInternalServerError {
		t.Errorf("Service lonely, whose route's only backend does not exist: %d %q, want 500", r.status, r.body)
	}
	// Not Accepted: echo-v2 keeps its default route (an accepted route would send "/x" nowhere: 404).
	for range 10 {
		if r := m.must(t, "GET", "echo-v2", "/x", nil); r.status != http.StatusOK || r.body != "echo-v2" {
			t.Fatalf("Service echo-v2, whose route has an invalid regex: %d %q, want its default route (200 from echo-v2)", r.status, r.body)
		}
	}
	for _, want := range [][]string{
		{"lonely-missing", "BackendNotFound", "no-such-service"},
		{"v2-bad-regex", "UnsupportedValue"},
	} {
		waitFor(t, "weft-control to log "+strings.Join(want, ", "), 10*time.Second, func() error {
			b, err := os.ReadFile(m.control.log)
			if err != nil {
				return err
			}
			for line := range strings.SplitSeq(string(b), "\n") {
				ok := true
				for _, w := range want {
					ok = ok && strings.Contains(line, w)
				}
				if ok {
					t.Logf("weft-control: %s", line)
					return nil
				}
			}
			return fmt.Errorf("no line has all of %q", want)
		})
	}
}
