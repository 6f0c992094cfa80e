#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests run, from the Go module proxy, once, and caches them outside
# the repository keyed by version and Go version. Prints the folder that holds them.
# The binaries are stamped with their version (-X, as Kubernetes' own build does), so that the apiserver
# and kubectl report v1.x.y rather than v0.0.0-master; the folder's "-stamped" suffix keeps unstamped
# binaries of an earlier build-kube.sh from being used.
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  from module ./kube (k8s.io/kubernetes)
#   kwok and its stage configs                                         from sigs.k8s.io/kwok
# A cold build takes about 21 minutes on 2 cores; with a warm Go build cache only the links run (2.5
# minutes on a loaded 2-core machine); a warm call returns at once. `build-kube.sh apiserver` builds
# kube-apiserver alone (the apiserver-only mode).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/k8s.io\/kubernetes v/ {print $NF; exit}' "$here/kube/go.mod")
kwok_version=v0.8.0
gover=$(go env GOVERSION)
cache=${WEFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weft}
out="$cache/kubernetes/$version-$gover-stamped"
mkdir -p "$out"

bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
[ "${1:-}" = apiserver ] && bins=(kube-apiserver)
missing=()
for b in "${bins[@]}"; do [ -x "$out/$b" ] || missing+=("./$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "building ${missing[*]} of Kubernetes $version with $gover into $out" >&2
  tmp=$(mktemp -d "$out/.build-XXXXXX")
  # -trimpath as before, so that the build cache is shared between the binaries and between runs; -X
  # only changes the link. component-base/version is what the servers and kubectl report,
  # client-go/pkg/version goes into their User-Agent.
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  ldflags="-s -w" built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$built"
  done
  (cd "$here/kube" && go build -trimpath -ldflags="$ldflags" -o "$tmp/" "${missing[@]}")
  mv "$tmp"/* "$out/" && rmdir "$tmp"
fi

if [ "${1:-}" != apiserver ] && [ ! -x "$out/kwok-$kwok_version/kwok" ]; then
  echo "building kwok $kwok_version with $gover into $out/kwok-$kwok_version" >&2
  tmp=$(mktemp -d "$out/.kwok-XXXXXX")
  GOBIN="$tmp" go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
  src=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$kwok_version/kustomize/stage
  mkdir -p "$tmp/stages"
  # The stages kwok needs to play a kubelet: Nodes become Ready and keep a lease; Pods become Ready,
  # complete (Jobs) and are deleted.
  for s in node/fast node/heartbeat-with-lease pod/fast; do
    find "$src/$s" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml -exec cp {} "$tmp/stages/" \;
  done
  chmod -R u+w "$tmp"
  mv "$tmp" "$out/kwok-$kwok_version"
fi
echo "$out"
