#!/usr/bin/env bash
# A private Kubernetes control plane on loopback for integration tests:
# one etcd and one kube-apiserver; tests/k8s/node.sh adds a node to it (a kubelet,
# the scheduler and the controllers). The serving certificate also names
# 10.244.77.1, where the node's pods reach the host; the apiserver reaches
# kubelets by their node name (localhost on that node).
#
#   tests/k8s/control-plane.sh up DIR     start (or report the running one)
#   tests/k8s/control-plane.sh down DIR   stop; safe to repeat
#   tests/k8s/control-plane.sh status DIR exit 0 if running and ready
#
# `up` picks free 127.0.0.1 ports, makes a CA and a serving certificate for
# 127.0.0.1/localhost (openssl), an admin bearer token (group system:masters)
# and a service-account signing key, starts etcd (data in DIR/etcd) and
# kube-apiserver (authorization Node,RBAC), and waits until /readyz is ok.
# It leaves in DIR:
#   kubeconfig       admin kubeconfig (token auth, embedded CA)
#   env              KUBECONFIG=, ESI_K8S_SERVER=, ESI_K8S_TOKEN=, ESI_K8S_CA_FILE=
#                    lines; `set -a; . DIR/env; set +a` exports them
#   pids             process ids, one a line, in start order
#   etcd.log, kube-apiserver.log, pki/, etcd/
# and prints the same variables as one `export ...` line on stdout, so
# `eval "$(tests/k8s/control-plane.sh up DIR)"` works. Progress goes to stderr.
# `up` on a DIR whose processes are gone starts afresh (new etcd data).
#
# Binaries: $ESI_KUBE_APISERVER, $ESI_KUBECTL and $ESI_K8S_ETCD; if one is
# unset, tests/k8s/build-tools.sh is run to build or find them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
READY_TIMEOUT="${ESI_K8S_READY_TIMEOUT:-120}"

usage() {
    echo "usage: $0 up|down|status DIR" >&2
    exit 2
}

log() { echo "control-plane: $*" >&2; }

. "$here/lib.sh"

running() {
    [[ -s "$dir/pids" ]] || return 1
    local pid
    while read -r pid; do
        [[ -n "$pid" ]] && alive "$pid" || return 1
    done <"$dir/pids"
}

stop() {
    stop_pids "$dir/pids" # apiserver before etcd
}

make_pki() {
    local pki="$dir/pki"
    rm -rf "$pki"
    mkdir -p "$pki"
    (
        cd "$pki"
        exec 2>openssl.log
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.crt -days 3650 -subj "/CN=esi-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
        cat >apiserver.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,IP:10.244.77.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -days 3650 -extfile apiserver.ext -out apiserver.crt
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
        openssl pkey -in sa.key -pubout -out sa.pub
        chmod 600 ./*.key
    ) || {
        log "openssl failed:"
        cat "$pki/openssl.log" >&2
        exit 1
    }
}

write_outputs() {
    local server="$1" token="$2" ca_b64
    ca_b64="$(base64 -w0 <"$dir/pki/ca.crt")"
    local old_umask
    old_umask="$(umask)"
    umask 077
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: esi-test
  cluster:
    server: $server
    certificate-authority-data: $ca_b64
users:
- name: admin
  user:
    token: $token
contexts:
- name: esi-test
  context:
    cluster: esi-test
    user: admin
    namespace: default
current-context: esi-test
EOF
    {
        printf 'KUBECONFIG=%q\n' "$dir/kubeconfig"
        printf 'ESI_K8S_SERVER=%q\n' "$server"
        printf 'ESI_K8S_TOKEN=%q\n' "$token"
        printf 'ESI_K8S_CA_FILE=%q\n' "$dir/pki/ca.crt"
    } >"$dir/env"
    umask "$old_umask"
}

print_env() {
    local line out="export"
    while IFS= read -r line; do out+=" $line"; done <"$dir/env"
    echo "$out"
}

# ready: the apiserver named in DIR/env answers "ok" on /readyz.
ready() {
    # shellcheck disable=SC2034 # all four are assigned by DIR/env
    local KUBECONFIG ESI_K8S_SERVER ESI_K8S_TOKEN ESI_K8S_CA_FILE
    # shellcheck source=/dev/null
    . "$dir/env" 2>/dev/null || return 1
    [[ "$(curl -fsS --max-time 2 --cacert "$dir/pki/ca.crt" \
        -H "Authorization: Bearer $ESI_K8S_TOKEN" "$ESI_K8S_SERVER/readyz" 2>/dev/null)" == ok ]]
}

etcd_healthy() {
    [[ "$(curl -fsS --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null)" == *'"health":"true"'* ]]
}

up() {
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if running && ready; then
        log "already running in $dir"
        print_env
        return 0
    fi
    stop # leftovers of a half-dead earlier run

    for cmd in openssl curl base64; do
        command -v "$cmd" >/dev/null || { log "'$cmd' is required"; exit 1; }
    done
    if [[ -z "${ESI_KUBE_APISERVER:-}" || -z "${ESI_K8S_ETCD:-}" || -z "${ESI_KUBECTL:-}" ]]; then
        eval "$(bash "$here/build-tools.sh")"
    fi

    rm -rf "$dir/etcd" "$dir/kubeconfig" "$dir/env" "$dir/tokens.csv" "$dir"/*.log
    make_pki
    local token
    token="$(openssl rand -hex 32)"
    (umask 077 && printf '%s,admin,admin,"system:masters"\n' "$token" >"$dir/tokens.csv")

    local etcd_port peer_port api_port
    read -r etcd_port peer_port api_port <<<"$(free_ports 3)"
    local server="https://127.0.0.1:$api_port"
    trap 'stop' EXIT # on any failure below, stop what was started

    log "starting etcd on 127.0.0.1:$etcd_port"
    # setsid: own session, so the caller's Ctrl-C or job control does not reach
    # it; the pid stays the same (a background job is no group leader).
    setsid "$ESI_K8S_ETCD" \
        --name=esi-test \
        --data-dir="$dir/etcd" \
        --listen-client-urls="http://127.0.0.1:$etcd_port" \
        --advertise-client-urls="http://127.0.0.1:$etcd_port" \
        --listen-peer-urls="http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
        --initial-cluster="esi-test=http://127.0.0.1:$peer_port" \
        --unsafe-no-fsync \
        --log-level=warn \
        </dev/null >"$dir/etcd.log" 2>&1 &
    local etcd_pid=$!
    echo "$etcd_pid" >"$dir/pids"
    wait_for etcd "$etcd_pid" $((SECONDS + READY_TIMEOUT)) "$dir/etcd.log" etcd_healthy "$etcd_port"

    log "starting kube-apiserver on $server"
    setsid "$ESI_KUBE_APISERVER" \
        --etcd-servers="http://127.0.0.1:$etcd_port" \
        --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 \
        --secure-port="$api_port" \
        --cert-dir="$dir/pki" \
        --tls-cert-file="$dir/pki/apiserver.crt" \
        --tls-private-key-file="$dir/pki/apiserver.key" \
        --client-ca-file="$dir/pki/ca.crt" \
        --token-auth-file="$dir/tokens.csv" \
        --authorization-mode=Node,RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$dir/pki/sa.pub" \
        --service-account-signing-key-file="$dir/pki/sa.key" \
        --service-cluster-ip-range=10.96.0.0/24 \
        --endpoint-reconciler-type=none \
        --kubelet-preferred-address-types=Hostname \
        --enable-priority-and-fairness=false \
        --profiling=false \
        </dev/null >"$dir/kube-apiserver.log" 2>&1 &
    local api_pid=$!
    echo "$api_pid" >>"$dir/pids"

    write_outputs "$server" "$token"
    wait_for kube-apiserver "$api_pid" $((SECONDS + READY_TIMEOUT)) "$dir/kube-apiserver.log" ready
    trap - EXIT
    log "ready in ${SECONDS}s: $server (env: $dir/env)"
    print_env
}

[[ $# -eq 2 ]] || usage
dir="$2"
case "$1" in
up) up ;;
down)
    if [[ -d "$dir" ]]; then
        dir="$(cd "$dir" && pwd)"
        stop
    fi
    ;;
status)
    [[ -d "$dir" ]] || exit 1
    dir="$(cd "$dir" && pwd)"
    running && ready
    ;;
*) usage ;;
esac
