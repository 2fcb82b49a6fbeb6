# Shell functions shared by control-plane.sh and node.sh (sourced, not run).
# Each caller sets `dir` (the control plane's directory: every process we
# start names it on its command line) and defines `log`.

# alive PID: the process exists and is one of ours (its command line names
# $dir, which guards against a recycled pid).
alive() {
    local cmdline
    cmdline="$({ tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$dir/"* ]]
}

# stop_pids FILE: stops the processes listed in FILE, last first (SIGTERM,
# up to 10 s, then SIGKILL), and removes FILE. Safe to repeat.
stop_pids() {
    local file="$1" pid
    [[ -f "$file" ]] || return 0
    for pid in $(tac "$file"); do
        alive "$pid" || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    done
    rm -f "$file"
}

# free_ports N: N distinct free ports on 127.0.0.1 (held open together while
# choosing; whoever binds them next may still lose one to another process).
free_ports() {
    local n="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
    else
        # No python3: random high ports that refuse a connection right now.
        local ports=() p
        while ((${#ports[@]} < n)); do
            p=$((20000 + RANDOM % 30000))
            [[ " ${ports[*]-} " == *" $p "* ]] && continue
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ports+=("$p"); fi
        done
        echo "${ports[*]}"
    fi
}

# wait_for NAME PID DEADLINE LOG CHECK...: poll CHECK until it succeeds; fail
# (showing the end of LOG) if the process exits or the deadline (in
# $SECONDS) passes.
wait_for() {
    local name="$1" pid="$2" deadline="$3" logfile="$4"
    shift 4
    until "$@"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last lines of $logfile:"
            tail -n 30 "$logfile" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name not ready in time; last lines of $logfile:"
            tail -n 30 "$logfile" >&2
            return 1
        fi
        sleep 0.25
    done
}
