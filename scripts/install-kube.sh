#!/bin/sh
# Builds the kube-apiserver and etcd that the cluster tests start (tests/support/apiserver.rs)
# from source, once, into a cache directory outside the repository, and reuses them when
# present. The releases are pinned by the Go module in scripts/kube (go.mod and go.sum).
#
#   scripts/install-kube.sh          build unless cached; prints the directory last
#   scripts/install-kube.sh --dir    print the directory only (builds nothing)
#
# The cache directory is $SLUICE_KUBE_CACHE (default ~/.cache/sluice-kube) / <releases>-<sum>,
# where <sum> is a digest of scripts/kube/go.mod and go.sum: changing a pin builds anew.
# Needs Go >= 1.26 (`go` on PATH, or $GO) and the Go module proxy. The build is CPU-heavy
# (about 7 minutes on 2 cores the first time, module downloads included) and runs at the lowest priority.
set -eu

KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.0

here=$(cd "$(dirname "$0")" && pwd)
module="$here/kube"
cache_root=${SLUICE_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice-kube}
sum=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-12)
dir="$cache_root/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-$sum"

if [ "${1:-}" = "--dir" ]; then
    echo "$dir"
    exit 0
fi

ready() {
    [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ]
}

if ready; then
    echo "kube-apiserver $KUBE_VERSION and etcd $ETCD_VERSION are built in:"
    echo "$dir"
    exit 0
fi

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if ! [ -x "$GO" ] && ! command -v "$GO" >/dev/null 2>&1; then
    echo "error: Go not found; install Go >= 1.26 (https://go.dev/dl/) and put \`go\` on PATH" >&2
    echo "or set GO=/path/to/go: the cluster tests build kube-apiserver and etcd with it" >&2
    exit 1
fi

mkdir -p "$cache_root"
# One build at a time: a second `make test` started meanwhile waits, then finds them built.
exec 9>"$cache_root/.build.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if ready; then
    echo "$dir"
    exit 0
fi

stage=$(mktemp -d "$cache_root/.build.XXXXXX")
# An interrupted build leaves nothing behind: the next run starts over.
go_pid=""
trap 'rm -rf "$stage"' EXIT
trap 'stop_build; exit 130' INT
trap 'stop_build; exit 143' TERM
stop_build() {
    if [ -n "$go_pid" ]; then
        kill "$go_pid" 2>/dev/null || true
    fi
}
# Runs `go build` in the background so that a signal interrupts the wait (a shell runs
# its traps only between commands) and the trap can stop the build.
go_build() {
    GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0 \
        nice -n 19 "$GO" build -trimpath "$@" &
    go_pid=$!
    wait "$go_pid"
    go_pid=""
}

echo "building kube-apiserver $KUBE_VERSION and etcd $ETCD_VERSION with $("$GO" version)"
echo "(once; about 7 minutes on 2 cores) into $dir"
start=$(date +%s)
version_flags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
 -X k8s.io/component-base/version.gitMajor=$(echo "$KUBE_VERSION" | sed 's/^v\([0-9]*\)\..*/\1/') \
 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | sed 's/^v[0-9]*\.\([0-9]*\)\..*/\1/') \
 -X k8s.io/component-base/version.gitTreeState=clean"
cd "$module"
# GOTOOLCHAIN=local: build with the Go that is installed, never download another.
# -mod=readonly: go.sum is committed; a missing sum is an error, not a silent update.
go_build -ldflags "$version_flags" -o "$stage/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go_build -ldflags "-s -w" -o "$stage/etcd" go.etcd.io/etcd/server/v3
"$stage/kube-apiserver" --version
"$stage/etcd" --version | head -n 1

# Publish whole or not at all: the directory appears only once both binaries are in it.
chmod 755 "$stage"
rm -rf "$dir"
mv "$stage" "$dir"
trap - EXIT
echo "built in $(($(date +%s) - start)) s:"
echo "$dir"
