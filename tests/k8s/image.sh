#!/usr/bin/env bash
# Builds the esi-reconciler image without a container engine or a registry:
# an OCI image layout assembled with umoci (Debian's `umoci`), written as a
# tarball that `ctr images import` (or `kind load image-archive`) takes.
#
#   tests/k8s/image.sh BINARY OUT.tar [TAG]
#
# The image has the layout of charts/Dockerfile's final stage, read from
# that file so that the two cannot drift: the binary at the path its COPY
# names, its USER, ENTRYPOINT, CMD and EXPOSE. Beside the binary go exactly
# the shared libraries `ldd` lists for it (the Dockerfile's distroless base
# has the same glibc), /etc/passwd and /etc/group with the user, the CA
# bundle and a writable /tmp. The binary goes in without its debug
# information. TAG defaults to the chart's appVersion; the
# image is named esi-reconciler:TAG (docker.io/library/ once imported).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dockerfile="$repo/charts/Dockerfile"
chart="$repo/charts/esi-reconciler/Chart.yaml"

[[ $# -ge 2 ]] || { echo "usage: $0 BINARY OUT.tar [TAG]" >&2; exit 2; }
binary="$(realpath "$1")"
out="$(realpath -m "$2")"
tag="${3:-$(awk '/^appVersion:/ {gsub(/["'"'"']/, "", $2); print $2}' "$chart")}"
[[ -n "$tag" ]] || { echo "image.sh: no TAG given and no appVersion in $chart" >&2; exit 1; }
[[ -x "$binary" ]] || { echo "image.sh: $binary is not an executable" >&2; exit 1; }
command -v umoci >/dev/null || { echo "image.sh: umoci is required (apt-get install umoci)" >&2; exit 1; }

# The final stage of the Dockerfile: what follows its last FROM.
final="$(awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}' "$dockerfile")"
field() { printf '%s' "$final" | awk -v k="$1" '$1 == k {sub("^" k " +", ""); print; exit}'; }
dest="$(printf '%s' "$final" | awk '$1 == "COPY" {print $NF; exit}')"
user="$(field USER)"
expose="$(field EXPOSE)"
# ENTRYPOINT/CMD in exec form: ["a", "b"] -> one word a line.
# (Absent: nothing; not a JSON list: an error.)
words() { field "$1" | python3 -c 'import json,sys; t=sys.stdin.read().strip(); print("\n".join(json.loads(t)) if t else "")'; }
entrypoint_words="$(words ENTRYPOINT)"
cmd_words="$(words CMD)"
mapfile -t entrypoint <<<"$entrypoint_words"
mapfile -t cmd <<<"$cmd_words"
for v in dest user expose entrypoint_words; do
    [[ -n "${!v}" ]] || { echo "image.sh: no ${v%_words} in the final stage of $dockerfile (ENTRYPOINT and CMD in exec form)" >&2; exit 1; }
done
[[ "$user" =~ ^[0-9]+:[0-9]+$ ]] || { echo "image.sh: USER must be numeric uid:gid, not $user" >&2; exit 1; }
uid="${user%%:*}"
gid="${user##*:}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
layout="$work/layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --rootless --image "$layout:$tag" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"

mkdir -p "$(dirname "$root$dest")"
# Without debug information (a debug build's is most of its size); the
# symbols stay, for backtraces.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$root$dest" "$binary"
else
    cp "$binary" "$root$dest"
fi
chmod 0755 "$root$dest"
# The libraries the dynamic loader will look for, at the paths it found them,
# with their modes (the loader itself must stay executable).
# (A static binary has none: ldd then fails, and the list is empty.)
mapfile -t libs < <({ ldd "$binary" 2>/dev/null || true; } | awk '/=> \// {print $3} /^\t\// {print $1}')
for lib in "${libs[@]}"; do
    install -D -m "$(stat -Lc %a "$lib")" "$(realpath "$lib")" "$root$lib"
done
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' "$uid" "$gid" >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$gid" >"$root/etc/group"

umoci repack --image "$layout:$tag" "$work/bundle"
args=(--image "$layout:$tag" --config.user "$user" --clear=config.entrypoint --clear=config.cmd)
for w in "${entrypoint[@]}"; do args+=(--config.entrypoint "$w"); done
for w in "${cmd[@]}"; do [[ -z "$w" ]] || args+=(--config.cmd "$w"); done
for p in $expose; do
    [[ "$p" == */* ]] || p="$p/tcp"
    args+=(--config.exposedports "$p")
done
umoci config "${args[@]}"
umoci gc --layout "$layout"
# The full name for importers (containerd's `ctr images import`, which kind
# and minikube use): umoci's tag is only the tag.
python3 - "$layout/index.json" "docker.io/library/esi-reconciler:$tag" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"))
EOF
mkdir -p "$(dirname "$out")"
(cd "$layout" && tar -cf "$out" .)
echo "image.sh: esi-reconciler:$tag -> $out" >&2
