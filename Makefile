# Weft's build. `make demo` runs it, `make test` tests it (exactly what CI runs), `make deps` installs
# what a fresh machine lacks. Go tools are pinned here and installed into .tools/bin.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/weftmesh/weft/cmd/internal/buildinfo.Version=$(VERSION)
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_MODULE_VERSION := v0.8.2
GRPCURL_VERSION := v1.9.4
# h2spec: HTTP/2 conformance (conformance/h2 runs it against weft-proxy's HTTP/2 listeners). Its module
# has no go.mod, so go install resolves its few dependencies (x/net, cobra, color) at their latest.
H2SPEC_VERSION := v2.2.1+incompatible
GOSEC_VERSION := v2.30.0
GOVULNCHECK_VERSION := v1.10.0
# govulncheck's database. vuln.go.dev is out of reach from the machines this project runs on (only the
# Go module proxy is reachable); the same OSV reports are in the golang.org/x/vulndb module, whose
# cmd/indexdb turns them into a database that govulncheck -db file://... reads. Bump this version to
# get newer reports.
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
# helm: the version go.mod renders the chart with (helm lint, and the test that helm template agrees).
HELM_VERSION := $(shell awk '$$1 == "helm.sh/helm/v4" {print $$2}' go.mod)
# crane: go-containerregistry's CLI at the version go.mod builds the images with (deploy/images' test
# checks the archives with crane validate).
CRANE_VERSION := $(shell awk '$$1 == "github.com/google/go-containerregistry" {print $$2}' go.mod)

# containerd (with runc): deploy/images' test imports and runs an image as kind and ctr would.
APT_PACKAGES := etcd-server iptables nftables iproute2 haproxy wrk ca-certificates git make containerd prometheus tmux chromium
GO_TEST_FLAGS ?= -count=1 -timeout=30m

# weft-proxy's wire-compatible mirrors (slim Envoy messages; Certify's two messages): each a buf
# workspace of its own, its Go code generated beside it.
MIRRORS := dataplane/internal/xdsproto identity/workload/internal/certifypb

.PHONY: gateway-api-crds all build images test lint gosec vulncheck unit proto proto-check deps apt tools kube demo fuzz bench bench-control bench-proxy bench-identity clean

all: build

# weft-proxy is built without cgo: no libc or ld.so mapped, ~1.5 MB less resident memory per sidecar;
# and with Go's previous garbage collector (GOEXPERIMENT=nogreenteagc; Go 1.26 only, the opt-out goes
# away in 1.27): Green Tea writes mark bits at the end of every small-object span, so each barely used
# span of an idle sidecar has its last page resident too: ~0.35 MB less idle RSS (binary 75 KB smaller),
# with no measurable change of CPU per request, RSS at 2000 rps or new mTLS connections/s in bench/proxy
# side by side (a sidecar's heap is a few MB on 1-2 cores, where Green Tea gains nothing).
PROXY_BUILD := CGO_ENABLED=0 GOEXPERIMENT=nogreenteagc go build
# weft-cni (the CNI plugin and its installer) is static too: weft-cni install copies it onto each node,
# whose libc it must not depend on.

build:
	@mkdir -p bin
	go build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/weft-control ./cmd/weft
	$(PROXY_BUILD) -ldflags '$(LDFLAGS)' -o bin/ ./cmd/weft-proxy
	CGO_ENABLED=0 go build -ldflags '$(LDFLAGS)' -o bin/ ./cmd/weft-cni

## images: the container images of weft-control, weft-proxy (and weft-cni) as docker archives in
## bin/images/NAME.tar (docker load, kind load image-archive, ctr images import) and one OCI layout in
## bin/images/oci, tagged ghcr.io/weftmesh/NAME:$(VERSION) as weft install names them; no Docker needed.
## Static binaries for this machine's architecture on a distroless-style base, reproducible
## (SOURCE_DATE_EPOCH, default 0): the same sources give the same digests. REGISTRY=... retags them.
REGISTRY ?= ghcr.io/weftmesh
images:
	go run ./deploy/images --version '$(VERSION)' --registry '$(REGISTRY)' --ldflags '$(LDFLAGS)' --out bin/images

## test: everything CI runs — lint, unit and integration tests (real kube-apiserver), fuzz seed corpora.
test: lint unit

unit: build
	go test $(GO_TEST_FLAGS) ./...

lint: tools
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>&1); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@go mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run go mod tidy and commit"; exit 1; }
	go vet ./...
	staticcheck ./...
	buf lint
	@for d in $(MIRRORS); do echo "buf lint ($$d)"; (cd $$d && buf lint) || exit 1; done
	$(MAKE) --no-print-directory proto-check
	$(MAKE) --no-print-directory gosec vulncheck

# gosec: every finding is fixed, or explained where it is (// #nosec Gnnn -- why), or its rule is
# excluded here with the reason. Not scanned: generated code; bench/, conformance/kubeenv,
# conformance/netns and conformance/portprobe (harnesses that run on a developer's or CI's machine,
# never shipped; portprobe sends malformed frames and TLS without verification on purpose; the xDS suite
# that weft conformance ships, conformance/xds, is scanned); conformance/kubeenv/kube (its own module:
# it builds kube-apiserver).
# Excluded rules:
#   G101 hardcoded credentials: its name heuristics flag file names and mount paths ("weft-cni.token");
#        no credential is in the source: test CAs and keys are made at run time.
#   G104 unhandled errors: all are Close, Remove, hash.Write (never fails) or io.Pipe's CloseWithError
#        (always nil) on something being abandoned, where the error has no use (reviewed 2026-12).
#   G204 subprocess with variable arguments: iptables, nft, ip, the go tool and the Kubernetes
#        binaries, with arguments the code builds itself and no shell.
#   G304 file inclusion via variable: reading the files the user names (--cert-dir, --token-file,
#        --discovery-file, --config, ...) is what those flags are for.
#   G404 math/rand: load balancing, weighted routes, retry and renewal jitter, the demo's traffic;
#        keys, serial numbers and tokens come from crypto/rand.
GOSEC_EXCLUDE := G101,G104,G204,G304,G404
gosec: tools
	gosec -quiet -exclude-generated -exclude=$(GOSEC_EXCLUDE) -exclude-dir=bench -exclude-dir=conformance/kubeenv -exclude-dir=conformance/netns -exclude-dir=conformance/portprobe ./...

# vulncheck: govulncheck with the database built from golang.org/x/vulndb (see VULNDB_VERSION). It fails
# on a vulnerability of a module that the code calls. A vulnerability of the standard library is
# printed but fails only with VULNCHECK_STDLIB=fail: it is fixed by a newer Go than the machine's
# toolchain (go version), which the project does not choose here.
VULNCHECK_STDLIB ?= warn
vulncheck: tools
	@out=$$(govulncheck -db file://$(TOOLS)/vulndb ./... 2>&1) && rc=0 || rc=$$?; \
	if [ $$rc -ne 0 ] && [ $$rc -ne 3 ]; then echo "$$out"; exit $$rc; fi; \
	echo "$$out" | grep -E '^(Vulnerability #|    [A-Z]|  (Module|Standard library)|    (Found|Fixed) in)' || true; \
	echo "$$out" | grep -E '^Your code|^This scan|^vulnerabilit|^No vulnerabilities' || true; \
	if echo "$$out" | grep -q '^  Module: '; then echo "govulncheck: a module the code calls is vulnerable: upgrade it (go get MODULE@FIXED-VERSION)"; exit 1; fi; \
	if [ "$(VULNCHECK_STDLIB)" = fail ] && echo "$$out" | grep -q '^  Standard library'; then exit 1; fi

## proto: regenerate the Go code of proto/ and of weft-proxy's slim Envoy mirrors with buf and the pinned plugins.
proto: tools
	buf generate
	for d in $(MIRRORS); do (cd $$d && buf generate) || exit 1; done

# proto-check fails when the committed generated code differs from what `make proto` would write.
proto-check:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	buf generate --template buf.gen.yaml -o "$$tmp"; \
	for d in $(MIRRORS); do (cd $$d && buf generate -o "$$tmp/$$d") || exit 1; done; \
	stale=0; for f in $$(cd "$$tmp" && find . -name '*.go'); do \
	  if ! cmp -s "$$tmp/$$f" "$$f"; then echo "stale generated code: $$f (run make proto and commit)"; stale=1; fi; \
	done; exit $$stale

## deps: what a fresh machine lacks — Debian packages, pinned Go tools, and the Kubernetes binaries (built once, cached).
deps: apt tools kube

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

tools: $(TOOLS)/.stamp-$(BUF_VERSION)-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)-$(STATICCHECK_MODULE_VERSION)-$(GRPCURL_VERSION)-$(H2SPEC_VERSION)-$(HELM_VERSION)-$(CRANE_VERSION)-$(GOSEC_VERSION)-$(GOVULNCHECK_VERSION)-$(VULNDB_VERSION)

$(TOOLS)/.stamp-%:
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	GOBIN=$(TOOLS) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_MODULE_VERSION)
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	GOBIN=$(TOOLS) go install github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)
	GOBIN=$(TOOLS) go install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)
	GOBIN=$(TOOLS) go install github.com/google/go-containerregistry/cmd/crane@$(CRANE_VERSION)
	GOBIN=$(TOOLS) go install github.com/securego/gosec/v2/cmd/gosec@$(GOSEC_VERSION)
	GOBIN=$(TOOLS) go install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	GOBIN=$(TOOLS) go install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)
	rm -rf $(TOOLS)/vulndb
	indexdb -vulns "$$(go mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p')/data/osv" -out $(TOOLS)/vulndb
	@rm -f $(TOOLS)/.stamp-*; touch $@

## gateway-api-crds: copy the Gateway API's standard channel CRDs of the module go.mod pins into the
## chart (deploy/charts/weft/gateway-api; weft install --crds renders them). Run after bumping it.
gateway-api-crds:
	rm -f deploy/charts/weft/gateway-api/*.yaml
	cp "$$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)"/config/crd/standard/*.yaml deploy/charts/weft/gateway-api/
	chmod 644 deploy/charts/weft/gateway-api/*.yaml

# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok for conformance/kubeenv,
# built from the Go module proxy into ~/.cache/weft (about 21 minutes cold on 2 cores, nothing warm).
kube:
	conformance/kubeenv/build-kube.sh

## fuzz: each Go fuzz target for FUZZTIME (default 30s), one after another (Go fuzzes one target per
## run), then per target the executions and the coverage Go reports: inputs that reached new code
## this run ("new interesting") and the corpus size. `make test` runs only their seed corpora
## (testdata/fuzz holds the crashers found, kept as cases). A failure prints the input's file.
## FUZZPARALLEL=1 uses one worker (default: one per CPU).
FUZZTIME ?= 30s
FUZZMINIMIZETIME ?= 5s
FUZZPARALLEL ?=
FUZZ_TARGETS := \
	./discovery:FuzzParseObjects \
	./xds:FuzzGAMMATranslate \
	./dataplane/xdsclient:FuzzDecodeResource \
	./xds/server:FuzzDecodeRequest \
	./xds/server:FuzzADS \
	./identity/spiffeid:FuzzParseID \
	./identity/spiffeid:FuzzNewID \
	./identity:FuzzCheckCSR \
	./identity:FuzzCertify \
	./identity:FuzzParseStaticTokens \
	./identity/kubeauth:FuzzTokenReview \
	./identity/grpcwire:FuzzReadMessage \
	./dataplane/proxy:FuzzLeanRequest \
	./dataplane/proxy:FuzzLeanResponse \
	./dataplane/proxy:FuzzH2WriteConn \
	./dataplane/proxy:FuzzRouteRequest \
	./dataplane/proxy:FuzzH2Relay \
	./dataplane/iptables:FuzzRules \
	./deploy/inject:FuzzInject \
	./xds:FuzzAuthzTranslation

fuzz:
	@summary=""; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; log=$$(mktemp); \
		echo "== $$fn ($$pkg) for $(FUZZTIME)"; \
		if ! go test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZETIME) \
			$(if $(FUZZPARALLEL),-parallel=$(FUZZPARALLEL)) $$pkg >$$log 2>&1; then \
			cat $$log; rm -f $$log; exit 1; \
		fi; \
		last=$$(grep '^fuzz: elapsed' $$log | tail -1 | sed -E 's/^fuzz: //; s| \([0-9]+/sec\)||'); rm -f $$log; \
		echo "   $$last"; summary+=$$(printf '%-22s %s' "$$fn" "$$last")$$'\n'; \
	done; echo; echo "fuzzed each target for $(FUZZTIME):"; printf '%s' "$$summary"

## demo: a whole mesh on one machine, no cluster, no root.
demo: build
	bin/weft demo

## bench: all benchmarks, each beside its baseline in one run.
bench: bench-control bench-proxy bench-identity

# Each benchmark is a Go program in bench/<name> that measures Weft beside its baseline in one run and
# prints a Markdown table of ratios (the README carries the latest).
bench-control bench-proxy bench-identity: build apt
	go run ./bench/$(patsubst bench-%,%,$@)

clean:
	rm -rf bin .tools
