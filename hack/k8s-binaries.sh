#!/usr/bin/env bash
# Build the pinned control-plane binaries used by dynamiclora_dev.localcluster (tests, e2e, local demo).
#
# There is no Docker and no release download here, only the Go module proxy, so the binaries are built
# from source:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  <- k8s.io/kubernetes
#   etcd                                                              <- go.etcd.io/etcd/server/v3
#   kwok                                                              <- sigs.k8s.io/kwok/cmd/kwok
# `go install pkg@version` refuses modules whose go.mod has replace directives (kubernetes points its
# staging modules at ./staging, etcd at ../api etc.), so each one is built from a throwaway module that
# requires it and, for kubernetes, replaces every staging module with the matching published v0.x tag.
#
# Results are cached in $DYNAMICLORA_K8S_CACHE/<kube version>/ (default ~/.cache/dynamiclora/k8s) and a
# binary is rebuilt only when it is missing or was built for another pinned version. A binary already
# present in $KUBEBUILDER_ASSETS (the envtest convention) is used as is and not built.
#
# Usage: hack/k8s-binaries.sh            # build what is missing, print the cache folder
#        hack/k8s-binaries.sh --print-dir
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
CACHE_ROOT="${DYNAMICLORA_K8S_CACHE:-$HOME/.cache/dynamiclora/k8s}"
OUT="$CACHE_ROOT/$KUBE_VERSION"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$OUT"
  exit 0
fi

log() { echo "[k8s-binaries] $*" >&2; }

command -v go >/dev/null || { log "ERROR: 'go' not found on PATH (Go >= 1.26 is needed to build)"; exit 1; }

# The version a binary must have been built for (stamp file next to it).
want_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    *) echo "$KUBE_VERSION" ;;
  esac
}

# True when the binary needs building: not in KUBEBUILDER_ASSETS and not cached for the pinned version.
needs_build() {
  local name="$1"
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$name" ]]; then
    return 1
  fi
  [[ -x "$OUT/$name" && "$(cat "$OUT/.$name.version" 2>/dev/null)" == "$(want_version "$name")" ]] && return 1
  return 0
}

mkdir -p "$OUT"
# Serialise concurrent callers (make + a pytest fixture) so they do not build twice into the same place.
exec 9>"$CACHE_ROOT/.lock"
flock 9

export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
export GOTOOLCHAIN=local  # fail clearly instead of downloading another Go toolchain
export GOCACHE="${GOCACHE:-$HOME/.cache/go-build}"
GO_BUILD=(nice -n 15 go build -trimpath)

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dynamiclora-k8s-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Start a throwaway module in $WORK/$1.
new_module() {
  local dir="$WORK/$1"
  mkdir -p "$dir"
  (cd "$dir" && go mod init "dynamiclora.local/build/$1" >/dev/null 2>&1)
  echo "$dir"
}

# Install one built binary into the cache with its version stamp.
install_bin() {
  local src="$1" name="$2"
  mv -f "$src" "$OUT/$name.tmp"
  mv -f "$OUT/$name.tmp" "$OUT/$name"
  want_version "$name" >"$OUT/.$name.version"
}

timed() {
  local what="$1"; shift
  local start=$SECONDS
  "$@"
  local took=$((SECONDS - start))
  log "$what built in ${took}s"
  echo "$(date -u +%FT%TZ) $what ${took}s nproc=$(nproc)" >>"$CACHE_ROOT/build-times.log"
}

build_kubernetes() {
  local want=()
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    needs_build "$b" && want+=("$b")
  done
  [[ ${#want[@]} -eq 0 ]] && return 0
  log "building ${want[*]} $KUBE_VERSION"
  local dir staging_version info modfile
  dir="$(new_module kubernetes)"
  staging_version="v0.${KUBE_VERSION#v1.}"
  info="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION")"
  modfile="$(sed -n 's/.*"GoMod": "\(.*\)",*/\1/p' <<<"$info")"
  # Every staging module that kubernetes both requires and replaces with ./staging/...
  local staged
  staged="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$modfile")"
  {
    echo "replace ("
    for m in $staged; do
      if grep -Eq "^[[:space:]]*$m v0\.0\.0" "$modfile"; then
        echo "	$m => $m $staging_version"
      fi
    done
    echo ")"
  } >>"$dir/go.mod"
  local commit date
  commit="$(sed -n 's/.*"Hash": *"\([0-9a-f]*\)".*/\1/p' "${modfile%.mod}.info" | head -1)"
  date="$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "${modfile%.mod}.info" | head -1)"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.buildDate=${date:-unknown}"
    if [[ -n "$commit" ]]; then
      ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean"
    fi
  done
  (cd "$dir" && go get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null 2>&1 || go get "k8s.io/kubernetes@$KUBE_VERSION")
  local pkgs=()
  for b in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  mkdir -p "$dir/bin"
  (cd "$dir" && timed "${want[*]}" "${GO_BUILD[@]}" -ldflags "$ld" -o "$dir/bin/" "${pkgs[@]}")
  for b in "${want[@]}"; do install_bin "$dir/bin/$b" "$b"; done
}

build_etcd() {
  needs_build etcd || return 0
  log "building etcd $ETCD_VERSION"
  local dir
  dir="$(new_module etcd)"
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 \
    || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  local ld="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
  (cd "$dir" && timed etcd "${GO_BUILD[@]}" -ldflags "$ld" -o "$dir/etcd" go.etcd.io/etcd/server/v3)
  install_bin "$dir/etcd" etcd
}

build_kwok() {
  needs_build kwok || return 0
  log "building kwok $KWOK_VERSION"
  local dir
  dir="$(new_module kwok)"
  (cd "$dir" && go get "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null 2>&1 || go get "sigs.k8s.io/kwok@$KWOK_VERSION")
  local ld="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  ld+=" -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}"
  (cd "$dir" && timed kwok "${GO_BUILD[@]}" -ldflags "$ld" -o "$dir/kwok" sigs.k8s.io/kwok/cmd/kwok)
  install_bin "$dir/kwok" kwok
}

total_start=$SECONDS
build_etcd
build_kwok
build_kubernetes
log "all binaries ready in $OUT (${KUBEBUILDER_ASSETS:+KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS preferred; }$((SECONDS - total_start))s)"
echo "$OUT"
