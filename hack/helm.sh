#!/usr/bin/env bash
# Build the pinned helm from the Go module proxy and cache it (packaging tests, `make chart-lint`).
#
# There is no release download here, only the Go module proxy, so helm is built from source with
# `go install helm.sh/helm/v3/cmd/helm@version` (the module has no replace directives). The binary
# lands in $DYNAMICLORA_BIN (default ~/.cache/dynamiclora/bin) with a version stamp next to it and is
# rebuilt only when missing or built for another pinned version (cold: 5-12 min on 2 cores).
#
# Usage: hack/helm.sh   # build when missing, print the helm binary's path
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# Minor of the k8s.io/client-go helm's go.mod requires (v0.37 for v3.22.0): helm's Makefile stamps it as
# the default Kubernetes version of `helm lint`/`helm template`; unset, they pretend to be v1.20.
HELM_K8S_MINOR="${HELM_K8S_MINOR:-37}"
OUT="${DYNAMICLORA_BIN:-$HOME/.cache/dynamiclora/bin}"

log() { echo "[helm.sh] $*" >&2; }

want_version() {
  case "$1" in
    helm) echo "$HELM_VERSION+k8s1.$HELM_K8S_MINOR" ;;
    *) log "ERROR: unknown tool '$1'"; exit 2 ;;
  esac
}

package() {
  case "$1" in
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
  esac
}

ldflags() {
  case "$1" in
    # As helm's Makefile does: without these `helm version` says v3.x-dev and offline rendering
    # assumes Kubernetes v1.20, which fails charts with a kubeVersion constraint.
    helm)
      local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
      done
      echo "$ld" ;;
  esac
}

build() {
  local name="$1" version
  version="$(want_version "$name")"
  if [[ -x "$OUT/$name" && "$(cat "$OUT/.$name.version" 2>/dev/null)" == "$version" ]]; then
    echo "$OUT/$name"
    return 0
  fi
  command -v go >/dev/null || { log "ERROR: 'go' not found on PATH (needed to build $name)"; exit 1; }
  log "building $name $version from the Go module proxy (cold: a few minutes)"
  local start=$SECONDS gobin
  gobin="$(mktemp -d "${TMPDIR:-/tmp}/dynamiclora-$name.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$gobin'" RETURN
  GOBIN="$gobin" GOFLAGS="-mod=mod" CGO_ENABLED=0 GOTOOLCHAIN=local \
    GOCACHE="${GOCACHE:-$HOME/.cache/go-build}" \
    nice -n 15 go install -trimpath -ldflags "$(ldflags "$name")" "$(package "$name")@${version%%+*}" >&2
  mv -f "$gobin/$name" "$OUT/$name.tmp"
  mv -f "$OUT/$name.tmp" "$OUT/$name"
  echo "$version" >"$OUT/.$name.version"
  log "$name $version built in $((SECONDS - start))s"
  echo "$OUT/$name"
}

mkdir -p "$OUT"
# Serialise concurrent callers (make + pytest fixtures) so they do not build twice into one place.
exec 9>"$OUT/.lock"
flock 9

build helm
