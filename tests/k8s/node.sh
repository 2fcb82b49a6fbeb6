#!/usr/bin/env bash
# One node for the loopback control plane of tests/k8s/control-plane.sh:
# kube-controller-manager, kube-scheduler, containerd + runc (Debian's) and a
# kubelet, so that Deployments become real pods.
#
#   tests/k8s/node.sh up DIR          start, next to the control plane in DIR
#   tests/k8s/node.sh load DIR TAR    import an OCI image tarball (tests/k8s/image.sh's)
#   tests/k8s/node.sh down DIR        stop and undo; safe to repeat
#
# Pods get their own network namespaces on a bridge this script makes
# (esitest0, 10.244.77.0/24; the host side is 10.244.77.1), so each pod has
# its own ports and the kubelet's probes reach them there. Pods reach the
# host at 10.244.77.1: whatever they need there (etcd, the apiserver) must
# listen on that address. Nothing leaves the machine: the bridge has no
# uplink and no masquerading.
#
# What the node changes on the machine and `down` puts back: the bridge,
# net.ipv4.ip_forward (the bridge's gateway sets it), the sysctls the kubelet
# sets (vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
# kernel.panic_on_oops, kernel.keys.root_maxkeys and root_maxbytes), mounts
# under DIR/node, the pods' network namespaces and CNI results, the kubelet's
# /var/log/containers links, the kubepods cgroups (so: no other kubelet on
# the machine), containerd's /run/containerd (unless it was there before).
# One node per machine: /run/esi-test-node names the last one brought up,
# and an `up` first takes down one that a killed run left behind.
# Settings this kind of machine needs (see shared/recipes, pods/): cgroup v1
# with cgroupfs, `failCgroupV1: false`, containerd's
# `restrict_oom_score_adj`, runc, `--oom-score-adj=0` for the kubelet.
#
# Binaries: $ESI_KUBE_CONTROLLER_MANAGER, $ESI_KUBE_SCHEDULER, $ESI_KUBELET
# (tests/k8s/build-tools.sh builds them if unset); containerd, ctr, runc, CNI
# plugins (/usr/lib/cni), umoci and gcc from Debian.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
READY_TIMEOUT="${ESI_K8S_READY_TIMEOUT:-120}"
BRIDGE=esitest0
SUBNET=10.244.77.0/24
GATEWAY=10.244.77.1
NODE=localhost
PAUSE_IMAGE=docker.io/library/esi-test-pause:v1

log() { echo "node: $*" >&2; }
usage() {
    echo "usage: $0 up|down DIR | load DIR IMAGE.tar" >&2
    exit 2
}

. "$here/lib.sh"

# The node of the last `up` on this machine, so that an `up` after a run that
# was killed before its teardown undoes that node first.
CURRENT=/run/esi-test-node

ctr_() { ctr -a "$node/containerd.sock" -n k8s.io "$@"; }
containerd_answers() { ctr_ version >/dev/null 2>&1; }

# The sandbox ("pause") image: a static program that waits for a signal.
pause_image() {
    local w="$node/pause"
    mkdir -p "$w"
    printf '%s\n' '#include <signal.h>' '#include <sys/wait.h>' '#include <unistd.h>' \
        'static void done(int s){(void)s;_exit(0);}' \
        'static void reap(int s){(void)s;while(waitpid(-1,0,WNOHANG)>0);}' \
        'int main(void){signal(SIGINT,done);signal(SIGTERM,done);signal(SIGCHLD,reap);for(;;)pause();}' \
        >"$w/pause.c"
    gcc -static -O2 -o "$w/pause" "$w/pause.c"
    umoci init --layout "$w/layout"
    umoci new --image "$w/layout:v1"
    umoci unpack --rootless --image "$w/layout:v1" "$w/bundle" >/dev/null
    cp "$w/pause" "$w/bundle/rootfs/pause"
    umoci repack --image "$w/layout:v1" "$w/bundle"
    umoci config --image "$w/layout:v1" --config.entrypoint /pause
    (cd "$w/layout" && tar -cf "$w/pause.tar" .)
    ctr_ images import --base-name "${PAUSE_IMAGE%:*}" "$w/pause.tar" >/dev/null
}

save_sysctls() {
    [[ -f "$node/sysctls" ]] && return 0
    local k
    # What the kubelet sets (setupKernelTunables), and what the bridge sets.
    for k in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
        kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward; do
        echo "$k $(cat "/proc/sys/$k")"
    done >"$node/sysctls"
}

restore_sysctls() {
    [[ -f "$node/sysctls" ]] || return 0
    local k v
    while read -r k v; do
        echo "$v" >"/proc/sys/$k" 2>/dev/null || true
    done <"$node/sysctls"
    rm -f "$node/sysctls"
}

down() {
    [[ -d "$node" ]] || return 0
    # The kubelet first, so that it restarts nothing; then every pod's
    # containers, through containerd while it still runs.
    if [[ -f "$node/pids" ]]; then
        local kubelet
        kubelet="$(grep -m1 . "$node/kubelet.pid" 2>/dev/null || true)"
        if [[ -n "$kubelet" ]] && alive "$kubelet"; then
            kill -TERM "$kubelet" 2>/dev/null || true
            sleep 1
            alive "$kubelet" && kill -KILL "$kubelet" 2>/dev/null || true
        fi
    fi
    if [[ -S "$node/containerd.sock" ]]; then
        local t
        for t in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
        done
        sleep 1
        for t in $(ctr_ tasks ls -q 2>/dev/null); do
            ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true
        done
        for t in $(ctr_ containers ls -q 2>/dev/null); do
            ctr_ containers delete "$t" >/dev/null 2>&1 || true
        done
    fi
    stop_pids "$node/pids"
    # Shims left by a containerd that was killed.
    pkill -KILL -f "containerd-shim.*$node/" 2>/dev/null || true
    # Mounts under the node (volumes, overlays, network namespaces), deepest first.
    local m
    for m in $(awk -v d="$node/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    # The pods' network namespaces: those that appeared since `up`.
    for m in $(awk 'index($2, "/run/netns/cni-") == 1 {print $2}' /proc/mounts); do
        grep -qxF "$m" "$node/netns-before" 2>/dev/null && continue
        umount -l "$m" 2>/dev/null && rm -f "$m" || true
    done
    # Whatever still runs in the pods' cgroups (containerd gone before its
    # tasks), then the cgroups, in every hierarchy.
    local f pid d
    for f in $(find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs 2>/dev/null); do
        for pid in $(cat "$f" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    for d in $(find /sys/fs/cgroup -mindepth 2 -depth -type d -name 'kubepods*' 2>/dev/null); do
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    # CNI's cached results of our pods (a pod's loopback result shares its
    # container id), then the directories if nothing else is in them.
    local r id
    for r in /var/lib/cni/results/esitest-*-eth0; do
        [[ -e "$r" ]] || continue
        id="${r#/var/lib/cni/results/esitest-}"
        id="${id%-eth0}"
        rm -f "$r" "/var/lib/cni/results/cni-loopback-$id-lo"
    done
    rmdir /var/lib/cni/results /var/lib/cni /run/netns 2>/dev/null || true
    # The kubelet's links to our containers' logs (its directory is fixed).
    find /var/log/containers -maxdepth 1 -lname "$node/*" -delete 2>/dev/null || true
    rmdir /var/log/containers 2>/dev/null || true
    # containerd's shim sockets, if no other containerd had that directory.
    [[ -f "$node/had-run-containerd" ]] || rm -rf /run/containerd
    restore_sysctls
    rm -f "$node/env"
    if [[ "$(cat "$CURRENT" 2>/dev/null)" == "$dir" ]]; then rm -f "$CURRENT"; fi
}

node_ready() {
    [[ "$("$ESI_KUBECTL" --kubeconfig "$dir/kubeconfig" get node "$NODE" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

start() {
    local name="$1"
    shift
    setsid "$@" </dev/null >"$node/$name.log" 2>&1 &
    echo $! >>"$node/pids"
    last_pid=$!
}

up() {
    [[ -f "$dir/kubeconfig" ]] || { log "no control plane in $dir (tests/k8s/control-plane.sh up $dir)"; exit 1; }
    dir="$(cd "$dir" && pwd)"
    node="$dir/node"
    [[ "$(id -u)" == 0 ]] || { log "a node needs root (mounts, cgroups, a bridge)"; exit 1; }
    for cmd in containerd ctr runc umoci gcc ip python3; do
        command -v "$cmd" >/dev/null || { log "'$cmd' is required"; exit 1; }
    done
    [[ -x /usr/lib/cni/bridge ]] || { log "CNI plugins are required (containernetworking-plugins)"; exit 1; }
    if [[ -z "${ESI_KUBE_CONTROLLER_MANAGER:-}" || -z "${ESI_KUBE_SCHEDULER:-}" || -z "${ESI_KUBELET:-}" || -z "${ESI_KUBECTL:-}" ]]; then
        eval "$(bash "$here/build-tools.sh")"
    fi
    if [[ -f "$node/env" ]] && node_ready 2>/dev/null; then
        log "already running in $node"
        cat "$node/env"
        return 0
    fi
    # A node left by a run killed before its teardown (one node a machine).
    local previous
    previous="$(cat "$CURRENT" 2>/dev/null || true)"
    if [[ -n "$previous" && "$previous" != "$dir" && -d "$previous/node" ]]; then
        log "taking down the node a killed run left in $previous"
        bash "$0" down "$previous" || true
    fi
    down
    rm -rf "$node" # a fresh node: an earlier one's state is not reused
    mkdir -p "$node"/{containerd,cni/net.d,kubelet,logs}
    echo "$dir" >"$CURRENT"
    trap 'down' EXIT
    save_sysctls
    [[ -d /run/containerd ]] && touch "$node/had-run-containerd"
    awk 'index($2, "/run/netns/cni-") == 1 {print $2}' /proc/mounts >"$node/netns-before"

    # The pods' bridge, made here so that the host's address on it exists
    # before anything listens there.
    # One left by a run that was killed before its teardown goes first.
    ip link del "$BRIDGE" 2>/dev/null || true
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up

    cat >"$node/containerd/config.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$node/containerd.sock"
[ttrpc]
  address = "$node/containerd.sock.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$node/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    stream_server_address = "127.0.0.1"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$node/cni/net.d"
EOF
    cat >"$node/cni/net.d/10-esitest.conflist" <<EOF
{"cniVersion":"0.4.0","name":"esitest","plugins":[
 {"type":"bridge","bridge":"$BRIDGE","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"$SUBNET","gateway":"$GATEWAY"}]],"dataDir":"$node/cni/ipam"}},
 {"type":"loopback"}]}
EOF
    log "starting containerd"
    start containerd containerd --config "$node/containerd/config.toml"
    local containerd_pid=$last_pid
    wait_for containerd "$containerd_pid" $((SECONDS + READY_TIMEOUT)) "$node/containerd.log" containerd_answers
    pause_image

    local kubeconfig="$dir/kubeconfig"
    read -r cm_port sched_port kubelet_port healthz_port <<<"$(free_ports 4)"
    log "starting kube-controller-manager and kube-scheduler"
    start kube-controller-manager "$ESI_KUBE_CONTROLLER_MANAGER" \
        --kubeconfig="$kubeconfig" \
        --authentication-kubeconfig="$kubeconfig" \
        --authorization-kubeconfig="$kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$cm_port" \
        --leader-elect=false \
        --root-ca-file="$dir/pki/ca.crt" \
        --service-account-private-key-file="$dir/pki/sa.key" \
        --controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ephemeral-volume,-pvc-protection,-pv-protection,-ttl' \
        --concurrent-deployment-syncs=2 --concurrent-replicaset-syncs=2
    start kube-scheduler "$ESI_KUBE_SCHEDULER" \
        --kubeconfig="$kubeconfig" \
        --authentication-kubeconfig="$kubeconfig" \
        --authorization-kubeconfig="$kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$sched_port" \
        --leader-elect=false

    cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$node/containerd.sock
imageServiceEndpoint: unix://$node/containerd.sock
failSwapOn: false
makeIPTablesUtilChains: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
enforceNodeAllocatable: []
podLogsDir: $node/logs
fileCheckFrequency: 1s
syncFrequency: 5s
nodeStatusUpdateFrequency: 2s
EOF
    log "starting the kubelet (node $NODE)"
    start kubelet "$ESI_KUBELET" \
        --config="$node/kubelet.yaml" \
        --kubeconfig="$kubeconfig" \
        --root-dir="$node/kubelet" \
        --hostname-override="$NODE" \
        --oom-score-adj=0 \
        --v=1
    echo "$last_pid" >"$node/kubelet.pid"
    wait_for kubelet "$last_pid" $((SECONDS + READY_TIMEOUT)) "$node/kubelet.log" node_ready
    # The default namespace's ServiceAccount comes from the controller
    # manager; pods are refused until it exists.
    local deadline=$((SECONDS + READY_TIMEOUT))
    until "$ESI_KUBECTL" --kubeconfig "$kubeconfig" get serviceaccount default >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { log "no default ServiceAccount after ${READY_TIMEOUT}s"; tail -n 30 "$node/kube-controller-manager.log" >&2; exit 1; }
        sleep 0.5
    done
    printf 'ESI_NODE_GATEWAY=%q\nESI_NODE_NAME=%q\n' "$GATEWAY" "$NODE" >"$node/env"
    trap - EXIT
    log "node $NODE ready in ${SECONDS}s"
    cat "$node/env"
}

load() {
    dir="$(cd "$dir" && pwd)"
    node="$dir/node"
    [[ -S "$node/containerd.sock" ]] || { log "no node running in $node"; exit 1; }
    # The image names itself (image.sh writes its full name in the index).
    ctr_ images import "$1" >&2
}

[[ $# -ge 2 ]] || usage
dir="$2"
node="$dir/node"
case "$1" in
up) [[ $# -eq 2 ]] || usage; up ;;
load) [[ $# -eq 3 ]] || usage; load "$3" ;;
down)
    [[ $# -eq 2 ]] || usage
    if [[ -d "$dir" ]]; then
        dir="$(cd "$dir" && pwd)"
        node="$dir/node"
        down
    fi
    ;;
*) usage ;;
esac
