#!/usr/bin/env bash
# Builds the upstream binaries used by the loopback Kubernetes control plane
# (tests/k8s/control-plane.sh): kube-apiserver, kubectl, etcd and helm, and the
# one-node cluster's kube-controller-manager, kube-scheduler and kubelet, from the
# Go modules pinned under tests/k8s/tools/. Go is test tooling only.
#
#   eval "$(bash tests/k8s/build-tools.sh)"
#
# Binaries are cached outside the repository, one directory per version:
#   ${ESI_TOOLS_CACHE:-$HOME/.cache/esi-reconciler/tools}/<name>-<version>/<name>
# A binary already in the cache is not rebuilt, so a second run takes well
# under a second and runs no `go` command at all. Progress goes to stderr; the
# only output on stdout is one `export ESI_KUBE_APISERVER=... ESI_KUBECTL=...
# ESI_K8S_ETCD=... ESI_HELM=... ESI_KUBE_CONTROLLER_MANAGER=... ESI_KUBE_SCHEDULER=...
# ESI_KUBELET=...` line.
#
# Environment:
#   ESI_TOOLS_CACHE  cache directory (default above)
#   ESI_TOOLS_JOBS   parallel compile jobs for `go build -p` (default: nproc)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$here/tools"
cache="${ESI_TOOLS_CACHE:-$HOME/.cache/esi-reconciler/tools}"

# modver GO_MOD MODULE: the version GO_MOD requires for MODULE (reads the file,
# no `go` invocation, so that the cached path stays fast).
modver() {
    local v
    v="$(awk -v m="$2" '
        $1 == "require" && $2 == m && $3 ~ /^v/ { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }' "$1")"
    if [[ -z "$v" ]]; then
        echo "build-tools.sh: no version of $2 in $1" >&2
        exit 1
    fi
    printf '%s\n' "$v"
}

k8s_ver="$(modver "$tools/kubernetes/go.mod" k8s.io/kubernetes)"
etcd_ver="$(modver "$tools/etcd/go.mod" go.etcd.io/etcd/server/v3)"
helm_ver="$(modver "$tools/helm/go.mod" helm.sh/helm/v3)"

# build NAME VERSION MODULE_DIR PACKAGE [EXTRA_LDFLAGS]
# Sets $built to the path of the cached binary, building it if missing.
build() {
    local name="$1" version="$2" moddir="$tools/$3" pkg="$4" extra="${5:-}"
    built="$cache/$name-$version/$name"
    [[ -x "$built" ]] && return 0

    if ! command -v go >/dev/null 2>&1; then
        echo "build-tools.sh: 'go' is not on PATH; it is needed once to build $name $version" >&2
        exit 1
    fi
    echo "building $name $version (first time only, several minutes)..." >&2
    mkdir -p "${built%/*}"
    local tmp="$built.tmp.$$" start=$SECONDS
    # -mod=readonly: the committed go.mod/go.sum are authoritative, never rewritten.
    # -buildvcs=false: the main module sits inside this git repo; do not stamp it.
    # GOWORK=off: ignore any go.work a developer may have above the repo.
    if ! (cd "$moddir" && GOWORK=off CGO_ENABLED=0 go build \
            -mod=readonly -buildvcs=false -trimpath -p "${ESI_TOOLS_JOBS:-$(nproc)}" \
            -ldflags="-s -w $extra" -o "$tmp" "$pkg"); then
        rm -f "$tmp"
        echo "build-tools.sh: building $name $version failed" >&2
        exit 1
    fi
    mv -f "$tmp" "$built"  # atomic: a concurrent run sees a whole binary or none
    echo "built $name $version in $((SECONDS - start)) s: $built" >&2
}

# Version stamps as upstream's release builds set them (hack/lib/version.sh).
# kube-apiserver derives its binary/emulation version from gitVersion, so the
# default "v0.0.0-master+\$Format:%H\$" must not be left in.
k8s_minor="${k8s_ver#v1.}"; k8s_minor="${k8s_minor%%.*}"
k8s_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X $p.gitVersion=$k8s_ver -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor"
    k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.gitCommit= -X $p.buildDate=1970-01-01T00:00:00Z"
done

build kube-apiserver "$k8s_ver" kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
apiserver="$built"
build kubectl "$k8s_ver" kubernetes k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
kubectl="$built"
# The one-node cluster of tests/pods.rs: pods need a node and the controllers.
build kube-controller-manager "$k8s_ver" kubernetes k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
controller_manager="$built"
build kube-scheduler "$k8s_ver" kubernetes k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
scheduler="$built"
build kubelet "$k8s_ver" kubernetes k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
kubelet="$built"
build etcd "$etcd_ver" etcd . # main.go in tools/etcd; etcd stamps its own version
etcd="$built"

# helm: its Makefile sets the version and the default Kubernetes version for
# `helm template`/lint from the k8s.io/client-go it is built with (major + 1).
client_go="$(modver "$tools/helm/go.mod" k8s.io/client-go)" # e.g. v0.37.0
cg_major="${client_go#v}"; cg_major="${cg_major%%.*}"
cg_minor="${client_go#v*.}"; cg_minor="${cg_minor%%.*}"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_ver -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $p.k8sVersionMajor=$((cg_major + 1)) -X $p.k8sVersionMinor=$cg_minor"
done
build helm "$helm_ver" helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"
helm="$built"

printf 'export ESI_KUBE_APISERVER=%q ESI_KUBECTL=%q ESI_K8S_ETCD=%q ESI_HELM=%q ESI_KUBE_CONTROLLER_MANAGER=%q ESI_KUBE_SCHEDULER=%q ESI_KUBELET=%q\n' \
    "$apiserver" "$kubectl" "$etcd" "$helm" "$controller_manager" "$scheduler" "$kubelet"
