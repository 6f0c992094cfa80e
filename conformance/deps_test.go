// The architecture of DESIGN.md ("Layout"), kept true by a test: each rule names the packages it covers,
// what they must not depend on, and why. It reads `go list -deps`, so a ban also catches an import that
// arrives through another package.
package conformance

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/weftmesh/weft"

type listedPackage struct {
	ImportPath string
	Name       string
	Imports    []string
	Deps       []string
}

// depRule bans, for every package under one of the covered prefixes (minus the exempt ones), any
// dependency (transitive unless direct is set) on a path under one of the banned prefixes.
type depRule struct {
	covers []string
	exempt []string
	banned []string
	// allowed are exceptions to banned, each with its reason in why.
	allowed []string
	direct  bool
	why     string
}

var depRules = []depRule{
	{
		covers: []string{module + "/xds"},
		exempt: []string{module + "/xds/server"},
		banned: []string{"k8s.io/client-go", "google.golang.org/grpc", "github.com/envoyproxy/go-control-plane/pkg/cache", "github.com/envoyproxy/go-control-plane/pkg/server"},
		why:    "xds/ is the pure middle of the pipeline: translation is a function of values, with no I/O, no Kubernetes client, no gRPC and no server cache, so it can be table-tested",
	},
	{
		covers: []string{module + "/dataplane"},
		banned: []string{"k8s.io/", "github.com/envoyproxy/go-control-plane/pkg/cache", "github.com/envoyproxy/go-control-plane/pkg/server", module + "/discovery", module + "/xds", module + "/deploy"},
		why:    "the data plane is configured only by xDS: it must not know Kubernetes or the control plane's caches (and stays small)",
	},
	{
		covers: []string{module + "/cmd/weft-proxy"},
		banned: []string{"k8s.io/client-go", "k8s.io/api", "github.com/envoyproxy/go-control-plane/pkg/cache", "github.com/envoyproxy/go-control-plane/pkg/server", module + "/discovery", module + "/xds"},
		why:    "the sidecar binary runs in every pod: it carries the data plane and the identity client, never the Kubernetes client or the control plane",
	},
	{
		covers: []string{module + "/cmd/weft-proxy"},
		banned: []string{"github.com/envoyproxy/", "github.com/cncf/xds"},
		why:    "weft-proxy reads xDS with the slim, wire-compatible messages of dataplane/internal/xdsproto: go-control-plane's generated Envoy API would add megabytes of resident memory to every pod",
	},
	{
		covers: []string{module + "/cmd/weft-proxy"},
		banned: []string{"google.golang.org/grpc", "connectrpc.com/connect"},
		why:    "weft-proxy speaks gRPC (ADS, Certify, SDS) through identity/grpcwire over net/http's HTTP/2: grpc-go would add about 4 MB of resident memory to every pod, connect-go 0.3-0.4 MB (bench/proxy, same run) (keep the identity CA and other grpc users out of the sidecar; use identity/spiffeid)",
	},
	{
		covers: []string{module + "/cmd/weft-proxy"},
		banned: []string{"github.com/prometheus/client_golang/prometheus", "github.com/prometheus/client_model/go", "github.com/prometheus/common/expfmt", "database/sql"},
		why:    "weft-proxy keeps its metrics with VictoriaMetrics/metrics, which writes the Prometheus text format from plain counters: client_golang links its protobuf data model, expfmt and procfs, about 1 MB of idle resident memory in every pod (bench/proxy), and its collectors package links database/sql",
	},
	{
		covers:  []string{module + "/cmd/weft-cni"},
		banned:  []string{"google.golang.org/grpc", "github.com/envoyproxy/", "github.com/cncf/xds", "helm.sh/", "k8s.io/client-go/kubernetes", module + "/discovery", module + "/xds", module + "/deploy", module + "/identity"},
		allowed: []string{"k8s.io/client-go/kubernetes/scheme", "k8s.io/client-go/kubernetes/typed/core/v1"},
		why:     "weft-cni is executed by the container runtime for every Pod sandbox on every node: it carries the iptables rule builder and reads one Pod (client-go's typed core/v1 client, not the whole clientset), never the control plane, xDS, gRPC or the chart renderer",
	},
	{
		covers: []string{module + "/identity"},
		banned: []string{module + "/xds", module + "/discovery", module + "/dataplane", module + "/deploy"},
		why:    "identity is a leaf: the CA and the certificate client are used by both planes and must depend on neither",
	},
	{
		covers: []string{module + "/discovery"},
		banned: []string{"google.golang.org/grpc", "github.com/envoyproxy/", module + "/xds", module + "/dataplane"},
		why:    "discovery only turns Kubernetes objects into discovery.State; xDS is the next stage's business",
	},
	{
		covers: []string{module + "/proto"},
		banned: []string{module + "/"},
		why:    "proto/ holds generated API code only; it must not depend on the code that implements it",
	},
	{
		covers:  []string{module + "/"},
		exempt:  []string{module + "/conformance", module + "/bench"},
		banned:  []string{module + "/conformance", module + "/bench"},
		allowed: []string{module + "/conformance/xds"},
		direct:  true,
		why:     "tests and benchmarks depend on the product, never the other way round (the one exception: the xDS conformance suite, conformance/xds, which `weft conformance` ships)",
	},
}

func TestDependencyRules(t *testing.T) {
	pkgs := listPackages(t)
	for _, rule := range depRules {
		for _, p := range pkgs {
			if !under(p.ImportPath, rule.covers) || under(p.ImportPath, rule.exempt) {
				continue
			}
			deps := p.Deps
			if rule.direct {
				deps = p.Imports
			}
			for _, d := range deps {
				if under(d, rule.banned) && !under(d, rule.allowed) {
					t.Errorf("%s depends on %s: %s", p.ImportPath, d, rule.why)
				}
			}
		}
	}
}

// TestNoCatchAllPackages keeps names meaningful: DESIGN.md forbids util, common and pkg packages.
func TestNoCatchAllPackages(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, elem := range strings.Split(strings.TrimPrefix(p.ImportPath, module+"/"), "/") {
			switch elem {
			case "util", "utils", "common", "pkg", "helpers", "misc":
				t.Errorf("package %s: %q packages are not allowed (DESIGN.md, Layout); name the package for what it does", p.ImportPath, elem)
			}
		}
	}
}

// under reports whether path is one of the prefixes or lies below one. A prefix ending in "/" matches
// anything that starts with it.
func under(path string, prefixes []string) bool {
	for _, pre := range prefixes {
		if strings.HasSuffix(pre, "/") {
			if strings.HasPrefix(path, pre) {
				return true
			}
			continue
		}
		if path == pre || strings.HasPrefix(path, pre+"/") {
			return true
		}
	}
	return false
}

func listPackages(t *testing.T) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json=ImportPath,Name,Imports,Deps", module+"/...")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}
