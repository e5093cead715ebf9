#!/usr/bin/env bash
# scripts/demo.sh - a local 3-node pmgcm cluster to look at and poke.
#
#   bash scripts/demo.sh           build, start 3 nodes on 127.0.0.1-3:7946,
#                                  show a failure and a self-healing rejoin,
#                                  leave the cluster running
#   bash scripts/demo.sh stop      stop every demo node, remove /tmp/pmgcm-demo
#   bash scripts/demo.sh start N   (re)start node N (1..3) of a running demo
#   bash scripts/demo.sh status    `pmgcm status` from every running node
#
# Everything lives in /tmp/pmgcm-demo: key, nodeN.conf, nodeN/ (data dir),
# nodeN.sock (control socket), nodeN.log, nodeN.pid.
# PMGCM_DEMO_DIR and PMGCM_DEMO_PORT override the directory and the port.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${PMGCM_DEMO_DIR:-/tmp/pmgcm-demo}
B=$top/build
PORT=${PMGCM_DEMO_PORT:-7946}
NODES=(1 2 3)
# The binaries: at the top of build/ or in their source subdirectories.
find_bin() { # find_bin NAME SUBDIR
    local c
    for c in "$B/$1" "$B/$2/$1"; do [[ -x "$c" ]] && { echo "$c"; return 0; }; done
    echo "$B/$2/$1"
}
set_bins() {
    DAEMON=$(find_bin pmgclusterd membership)
    CLI=$(find_bin pmgcm cli)
    CLI_REL=${CLI#"$top"/}
}
set_bins
if [[ -t 1 ]]; then H=$'\e[1m'; R=$'\e[0m'; else H=; R=; fi

say() { printf '\n%s==> %s%s\n' "$H" "$*" "$R"; }
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

# wait_until CONDITION DEADLINE_S: poll every 100 ms; sets WAITED (seconds).
wait_until() {
    local t0 now
    t0=$(now_ms)
    while :; do
        if eval "$1"; then
            now=$(now_ms); WAITED=$(printf '%d.%d' $(((now - t0) / 1000)) $(((now - t0) % 1000 / 100)))
            return 0
        fi
        now=$(now_ms)
        ((now - t0 >= $2 * 1000)) && return 1
        sleep 0.1
    done
}

since() { # since T0_MS: seconds elapsed, one decimal
    local d=$(($(now_ms) - $1))
    printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}
sock() { echo "$DEMO/node$1.sock"; }
pid_of() { cat "$DEMO/node$1.pid" 2>/dev/null; }
running() { # the pid file names a live (not zombie) process
    local p st
    p=$(pid_of "$1") && [[ -n "$p" ]] && st=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ "${st:0:1}" != Z ]]
}
status_json() { timeout 5 "$CLI" --socket "$(sock "$1")" status --output-format json 2>/dev/null; }
state_of() { status_json "$1" | jq -r --arg n "node$2" '.members? // . | .[] | select(.name == $n) | .state' 2>/dev/null; }
alive_count() { status_json "$1" | jq '[.members? // . | .[] | select(.state == "A")] | length' 2>/dev/null; }
all_see_alive() { # all_see_alive "I J ..." COUNT
    local i
    for i in $1; do [[ "$(alive_count "$i")" == "$2" ]] || return 1; done
}
all_show() { # all_show "I J ..." NODE STATE
    local i
    for i in $1; do [[ "$(state_of "$i" "$2")" == "$3" ]] || return 1; done
}
show_status() {
    echo "\$ $CLI_REL --socket $(sock "$1") status"
    timeout 5 "$CLI" --socket "$(sock "$1")" status || echo "(node$1 did not answer)"
}
show_logs() {
    local i
    for i in "${NODES[@]}"; do
        [[ -f "$DEMO/node$i.log" ]] || continue
        echo "---- last lines of $DEMO/node$i.log"
        tail -n 15 "$DEMO/node$i.log"
    done
}
fail() {
    show_logs
    die "$* (the nodes are still running: inspect them, then 'bash scripts/demo.sh stop')"
}

write_config() {
    local i=$1 j peers=
    for j in "${NODES[@]}"; do ((j == i)) || peers+="127.0.0.$j:$PORT "; done
    mkdir -p "$DEMO/node$i"
    cat >"$DEMO/node$i.conf" <<CONF
# pmgclusterd configuration of demo node $i
name = node$i
bind = 127.0.0.$i:$PORT
data_dir = $DEMO/node$i
control_socket = $DEMO/node$i.sock
key_file = $DEMO/key
peers = ${peers% }
log_level = info
CONF
}

start_node() {
    local i=$1
    running "$i" && die "node$i is already running (pid $(pid_of "$i"))"
    [[ -f "$DEMO/node$i.conf" ]] || die "no $DEMO/node$i.conf: run 'bash scripts/demo.sh' first"
    echo "--- start $(date '+%F %T')" >>"$DEMO/node$i.log"
    setsid "$DAEMON" --config "$DEMO/node$i.conf" </dev/null >>"$DEMO/node$i.log" 2>&1 &
    echo $! >"$DEMO/node$i.pid"
    disown $!   # a node outlives this script; no job notices about it
    wait_until "status_json $i >/dev/null" 10 ||
        fail "node$i's control socket $(sock "$i") did not answer within 10 s"
}

stop_all() {
    local i p any=0
    for i in "${NODES[@]}"; do
        if running "$i"; then
            p=$(pid_of "$i"); any=1
            kill -CONT "$p" 2>/dev/null || true
            kill -TERM "$p" 2>/dev/null || true
        fi
    done
    for i in "${NODES[@]}"; do
        if running "$i"; then
            wait_until "! running $i" 5 || kill -KILL "$(pid_of "$i")" 2>/dev/null || true
        fi
    done
    rm -rf "$DEMO"
    if ((any)); then echo "demo: stopped the demo nodes"; fi
}

build() {
    bash "$top/scripts/deps.sh"
    if [[ -f "$B/Makefile" ]]; then
        (cd "$B" && make -j2) >"$top/build/make.out" 2>&1 || {
            tail -n 40 "$top/build/make.out"; die "build failed (log: build/make.out)"; }
    else
        bash "$top/scripts/build.sh" build --enable-werror >/tmp/pmgcm-demo-build.out 2>&1 || {
            tail -n 40 /tmp/pmgcm-demo-build.out; die "build failed (log: /tmp/pmgcm-demo-build.out)"; }
    fi
    set_bins
    [[ -x "$DAEMON" && -x "$CLI" ]] || die "build did not produce pmgclusterd and pmgcm under build/"
}

case "${1:-run}" in
stop)
    stop_all
    exit 0
    ;;
start)
    [[ "${2:-}" =~ ^[123]$ ]] || die "usage: scripts/demo.sh start 1|2|3"
    start_node "$2"
    echo "demo: node$2 started (pid $(pid_of "$2"))"
    exit 0
    ;;
status)
    for i in "${NODES[@]}"; do running "$i" && { show_status "$i"; echo; }; done
    exit 0
    ;;
run) ;;
*) die "usage: scripts/demo.sh [stop | start N | status]" ;;
esac

cd "$top"
say "Installing missing packages and building (build/)"
build
echo "built ${DAEMON#"$top"/} and $CLI_REL"

if [[ -d "$DEMO" ]]; then
    say "Stopping the previous demo"
    stop_all
fi
listening=$(ss -Htuln 2>/dev/null | awk '{print $5}')
for i in "${NODES[@]}"; do
    if grep -qx "127.0.0.$i:$PORT" <<<"$listening"; then
        die "127.0.0.$i:$PORT is already in use by another program (not this demo): stop it, or pick another port with PMGCM_DEMO_PORT=..."
    fi
done
mkdir -p "$DEMO"

say "Starting 3 nodes: 127.0.0.1:$PORT, 127.0.0.2:$PORT, 127.0.0.3:$PORT"
"$CLI" keygen >"$DEMO/key"
chmod 600 "$DEMO/key"
echo "cluster key: $DEMO/key (from '$CLI_REL keygen')"
for i in "${NODES[@]}"; do write_config "$i"; done
echo "node1's config ($DEMO/node1.conf):"
sed 's/^/    /' "$DEMO/node1.conf"
t0=$(now_ms)
for i in "${NODES[@]}"; do
    start_node "$i"
    echo "node$i: pid $(pid_of "$i"), log $DEMO/node$i.log"
done

wait_until "all_see_alive '1 2 3' 3" 30 || fail "the nodes did not all see 3 alive within 30 s"
say "All 3 nodes see 3 alive, $(since "$t0") s after the first start. Each node answers from its own view:"
for i in "${NODES[@]}"; do show_status "$i"; echo; done
echo "State letters: A alive, ? suspect, D dead, L left (stopped gracefully)."

say "Killing node3 with kill -9 (no goodbye): the others must find out by themselves"
t0=$(now_ms)
kill -9 "$(pid_of 3)"
wait_until "all_show '1 2' 3 D" 60 || fail "node1 and node2 did not show node3 dead within 60 s"
echo "node1 and node2 show node3 as D $(since "$t0") s after the kill:"
show_status 1

say "Restarting node3 with the same config and data dir (it remembers its peers)"
t0=$(now_ms)
start_node 3
wait_until "all_see_alive '1 2 3' 3" 60 || fail "node3 was not back as A everywhere within 60 s"
echo "every node shows node3 as A again $(since "$t0") s after the restart, with no join command typed:"
show_status 1
echo
show_status 3

say "The cluster is still running. Try:"
cat <<EOT
  $CLI_REL --socket $DEMO/node1.sock status
  $CLI_REL --socket $DEMO/node2.sock status --output-format json
  kill -9 \$(cat $DEMO/node2.pid)      # crash node2: the others show it D
  kill -STOP \$(cat $DEMO/node2.pid)   # freeze it (kill -CONT to thaw: it refutes)
  kill \$(cat $DEMO/node2.pid)         # stop it gracefully: the others show it L
  bash scripts/demo.sh start 2        # start node2 again: it rejoins by itself
  bash scripts/demo.sh status         # status from every running node
  tail -f $DEMO/node1.log
  bash scripts/demo.sh stop           # stop everything and remove $DEMO
EOT
if grep -aq status_port "$DAEMON"; then
    cat <<EOT
Each node also serves HTTP on its IP, port 7948 (the status port):
  curl -s http://127.0.0.1:7948/status            # node1's view as JSON
  curl -s http://127.0.0.1:7948/metrics           # Prometheus metrics
  curl -s 'http://127.0.0.1:7948/readyz?verbose'  # 503 here: this demo cluster is formed by a
                                                  # shared key, not by 'pmgcm create' / 'pmgcm join'
EOT
fi
