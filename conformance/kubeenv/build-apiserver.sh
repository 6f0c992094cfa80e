#!/usr/bin/env bash
# Builds kube-apiserver from the Go module proxy (module ./apiserver) once and caches it outside the
# repository, keyed by Kubernetes version and Go version. Prints the binary's path.
# A cold build takes about ten minutes on 2 cores; a warm call returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/k8s.io\/kubernetes v/ {print $NF; exit}' "$here/apiserver/go.mod")
gover=$(go env GOVERSION)
cache=${WEFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weft}
out="$cache/kube-apiserver/$version-$gover/kube-apiserver"
if [ ! -x "$out" ]; then
  mkdir -p "$(dirname "$out")"
  echo "building kube-apiserver $version with $gover into $out (about ten minutes the first time)" >&2
  (cd "$here/apiserver" && go build -trimpath -ldflags='-s -w' -o "$out.tmp" .)
  mv "$out.tmp" "$out"
fi
echo "$out"
