package proxy

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/weftmesh/weft/dataplane/config"
)

func TestDeploymentOf(t *testing.T) {
	for pod, want := range map[string]string{
		"web-7d9c5b8f6d-x2k4q":      "web",
		"books-api-5f7b9c4d8-bq2zx": "books-api",
		"web-0":                     "", // a StatefulSet's
		"web":                       "",
		"web-7d9c5b8f6d-xaeiq":      "", // vowels are not in Kubernetes' suffix alphabet
		"a-b-7d9c5b8f6d-x2k4q":      "a-b",
		"web-7d9c-x2k4q":            "", // a hash of 4
		"web-7d9c5b8f6dz-x2k4q":     "", // a hash of 11
		"web-7d9c5-x2k4q":           "web",
		"web-7d9c5b8f6d-x2k4qz":     "", // a suffix of 6
		"-7d9c5b8f6d-x2k4q":         "", // no Deployment name
		"web--x2k4q":                "",
		"web-7d9a5b8f6d-x2k4q":      "", // a vowel in the hash
	} {
		if got := DeploymentOf(pod); got != want {
			t.Errorf("DeploymentOf(%q) = %q, want %q", pod, got, want)
		}
		// The regular expression DeploymentOf replaced, as the reference.
		ref := ""
		if m := regexp.MustCompile(`^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$`).FindStringSubmatch(pod); m != nil {
			ref = m[1]
		}
		if got := DeploymentOf(pod); got != ref {
			t.Errorf("DeploymentOf(%q) = %q, the regular expression's %q", pod, got, ref)
		}
	}
}

func TestClusterService(t *testing.T) {
	for cl, want := range map[string][2]string{
		"outbound|80||web.shop.svc.cluster.local":   {"shop", "web"},
		"outbound|8080||books.demo.svc.example.org": {"demo", "books"},
		"inbound|8080||":           {"", ""},
		"passthrough":              {"", ""},
		"outbound|80||example.com": {"", ""},
	} {
		ns, svc := clusterService(cl)
		if diff := cmp.Diff(want, [2]string{ns, svc}); diff != "" {
			t.Errorf("clusterService(%q) (-want +got):\n%s", cl, diff)
		}
	}
}

// The golden metrics carry the workload and destination labels and grpc_status, every family has HELP
// text, and the series of a cluster that the configuration no longer has are dropped (the others stay).
func TestMetricsLabelsHelpAndRetain(t *testing.T) {
	m := NewMetrics(nil, Workload{Namespace: "shop", Pod: "web-7d9c5b8f6d-x2k4q"})
	const gone, kept = "outbound|80||old.shop.svc.cluster.local", "outbound|9090||grpc.shop.svc.cluster.local"
	rs := func(cl string) *reqState {
		return &reqState{info: &connInfo{direction: "outbound"}, authority: "a", cluster: &clusterRT{cfg: &config.Cluster{Name: cl}}}
	}
	m.observeHTTP(&Proxy{}, rs(gone), 200, http.Header{}, time.Now())
	m.observeHTTP(&Proxy{}, rs(kept), 200, http.Header{"Grpc-Status": {"14"}}, time.Now())
	m.tcpOpen(m.tcpLabels(&connInfo{direction: "outbound"}, gone, "10.0.0.1:80", false, [2]string{}))
	expose := func() string {
		var b strings.Builder
		m.WritePrometheus(&b)
		return b.String()
	}
	out := expose()
	for _, want := range []string{
		`response_total{authority="a",classification="failure",deployment="web",direction="outbound",dst_namespace="shop",dst_service="grpc",grpc_status="14",namespace="shop",pod="web-7d9c5b8f6d-x2k4q",status_code="200",target_cluster="` + kept + `",tls="false"} 1`,
		`response_total{authority="a",classification="success",deployment="web",direction="outbound",dst_namespace="shop",dst_service="old",namespace="shop",pod="web-7d9c5b8f6d-x2k4q",status_code="200",target_cluster="` + gone + `",tls="false"} 1`,
		`tcp_open_total{authority="10.0.0.1:80",deployment="web",direction="outbound",dst_namespace="shop",dst_service="old",namespace="shop",pod="web-7d9c5b8f6d-x2k4q",target_cluster="` + gone + `",tls="false"} 1`,
		"# HELP response_latency_ms Elapsed time",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s\n%s", want, out)
		}
	}
	for line := range strings.Lines(out) {
		if f, ok := strings.CutPrefix(line, "# HELP "); ok && !strings.Contains(strings.TrimSpace(f), " ") {
			t.Errorf("no HELP text in %q", line)
		}
	}

	m.retain(&config.Snapshot{Complete: false}) // a partial config drops nothing
	if !strings.Contains(expose(), gone) {
		t.Fatal("a partial configuration dropped series")
	}
	m.retain(&config.Snapshot{Complete: true, Clusters: map[string]*config.Cluster{kept: {Name: kept}}})
	out = expose()
	if strings.Contains(out, gone) {
		t.Errorf("series of the removed cluster %s are still exposed:\n%s", gone, out)
	}
	if !strings.Contains(out, kept) {
		t.Errorf("series of the kept cluster %s were dropped:\n%s", kept, out)
	}
	// The cluster comes back: its series start again from zero.
	m.observeHTTP(&Proxy{}, rs(gone), 200, http.Header{}, time.Now())
	if !strings.Contains(expose(), `target_cluster="`+gone+`",tls="false"} 1`) {
		t.Errorf("no fresh series for the re-added cluster:\n%s", expose())
	}
}

// WithHelp gives the same text whichever way the writer cuts its output, and fills only empty HELP
// lines.
func TestWithHelpCutWrites(t *testing.T) {
	in := "# HELP request_total\n# TYPE request_total counter\nrequest_total{a=\"b\"} 1\n# HELP x_total some text\nx_total 2\n# HELP go_goroutines\ngo_goroutines 7"
	want := "# HELP request_total " + helpOf("request_total") + "\n# TYPE request_total counter\nrequest_total{a=\"b\"} 1\n# HELP x_total some text\nx_total 2\n# HELP go_goroutines Go runtime metric go_goroutines of weft-proxy.\ngo_goroutines 7"
	for _, chunk := range []int{1, 2, 7, 1000} {
		var b strings.Builder
		WithHelp(&b, func(w io.Writer) {
			for s := in; len(s) > 0; {
				n := min(chunk, len(s))
				_, _ = io.WriteString(w, s[:n])
				s = s[n:]
			}
		})
		if d := cmp.Diff(want, b.String()); d != "" {
			t.Errorf("writes of %d bytes (-want +got):\n%s", chunk, d)
		}
	}
}
