# tests/integration/lib.sh - helpers for TAP integration tests that run real
# pmgclusterd daemons. Source it from a bash test script:
#
#   . "$(dirname "$0")/lib.sh"
#   it_init 5            # temp dir, key, network (netns as root, else loopback)
#   it_plan 7
#   it_start_node 1 ...  # start daemons (configs written on first start)
#   it_wait_until 'it_all_show "1 2 3" node4 A' 30 && it_ok "..." || it_not_ok "..."
#
# Network: as root, every node gets its own network namespace
# pmgcmt<i>-<pid>, attached by a veth pair to a bridge that lives in one more
# namespace pmgcmtb-<pid> (never in the root namespace); node i has address
# 10.213.0.(10+i)/24 there, so no packet can leave the machine. Without root
# or netns support, nodes bind 127.0.0.(10+i) on loopback instead. Control
# sockets are files under the test's temp dir, reachable from anywhere.
#
# it_cleanup (installed as an EXIT trap) kills every daemon, deletes the
# namespaces and the temp dir, also after a failure or a signal.
# Environment: abs_top_builddir (set by `make check`; else the current dir),
# PMGCLUSTERD / PMGCM to override the binaries, IT_KEEP=1 keeps the temp dir,
# IT_NETNS=0 forces loopback mode, IT_EXTRA_CONF lines appended to configs.

IT_BUILDDIR=${abs_top_builddir:-${top_builddir:-$PWD}}
# it_find_bin NAME SUBDIR: the built binary, at the top of the build tree or
# in its source subdirectory (non-recursive automake keeps it there).
it_find_bin() {
    local c
    for c in "$IT_BUILDDIR/$1" "$IT_BUILDDIR/$2/$1"; do
        [[ -x "$c" ]] && { echo "$c"; return 0; }
    done
    echo "$IT_BUILDDIR/$2/$1"
}
PMGCLUSTERD=${PMGCLUSTERD:-$(it_find_bin pmgclusterd daemon)}
PMGCM=${PMGCM:-$(it_find_bin pmgcm cli)}
UDPBLAST=${UDPBLAST:-$IT_BUILDDIR/tests/integration/udpblast}

IT_N=0            # number of nodes
IT_TAPN=0         # TAP test points emitted
IT_FAILS=0
IT_DIR=           # temp dir: key, configs, data dirs, sockets, logs
IT_MODE=          # netns | loopback
IT_BRNS=          # bridge namespace (netns mode)
IT_PORT=7946
IT_T0=$(date +%s)
IT_BUDGET=${IT_BUDGET:-600}   # seconds the whole script may take (a loaded machine included)
declare -a IT_NS IT_IP IT_PID
IT_WAITED=        # seconds the last it_wait_until took ("1.234")

# ---- TAP -----------------------------------------------------------------
it_plan() { echo "1..$1"; }
it_diag() { local l; while IFS= read -r l; do echo "# $l"; done <<<"$*"; }
it_ok() { IT_TAPN=$((IT_TAPN + 1)); echo "ok $IT_TAPN - $*"; }
it_not_ok() {
    IT_TAPN=$((IT_TAPN + 1)); IT_FAILS=$((IT_FAILS + 1))
    echo "not ok $IT_TAPN - $*"
}
# it_check DESCRIPTION COMMAND...: one test point from a command's status.
it_check() {
    local d=$1; shift
    if "$@"; then it_ok "$d"; else it_not_ok "$d"; fi
}
it_bail() { echo "Bail out! $*"; exit 1; }

# ---- time ----------------------------------------------------------------
it_now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
it_fmt_ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
it_remaining() { echo $((IT_BUDGET - ($(date +%s) - IT_T0))); }

# it_wait_until CONDITION DEADLINE_S: evaluates CONDITION (a shell command
# string) every 100 ms until it succeeds (0) or DEADLINE_S seconds pass (1).
# The deadline is capped by the script's overall budget. Sets IT_WAITED.
it_wait_until() {
    local cond=$1 dl=$2 rem t0 now
    rem=$(it_remaining)
    ((dl > rem)) && dl=$rem
    ((dl < 1)) && dl=1
    t0=$(it_now_ms)
    while :; do
        if eval "$cond"; then
            now=$(it_now_ms); IT_WAITED=$(it_fmt_ms $((now - t0)))
            return 0
        fi
        now=$(it_now_ms)
        if ((now - t0 >= dl * 1000)); then
            IT_WAITED=$(it_fmt_ms $((now - t0)))
            return 1
        fi
        sleep 0.1
    done
}

# ---- setup -----------------------------------------------------------------
it_need() {
    local b
    for b in "$PMGCLUSTERD" "$PMGCM"; do
        [[ -x "$b" ]] || it_bail "missing binary $b (build first)"
    done
    command -v jq >/dev/null || it_bail "jq not installed (scripts/deps.sh)"
}

# it_init N: temp dir, cluster key, network for N nodes, cleanup trap.
it_init() {
    IT_N=$1
    it_need
    IT_DIR=$(mktemp -d /tmp/pmgcmt.XXXXXX) || it_bail "mktemp failed"
    trap it_cleanup EXIT
    trap 'exit 130' INT TERM HUP
    "$PMGCM" keygen >"$IT_DIR/key" 2>"$IT_DIR/keygen.err" ||
        it_bail "pmgcm keygen failed: $(cat "$IT_DIR/keygen.err")"
    [[ $(head -n1 "$IT_DIR/key") =~ ^[0-9a-fA-F]{64}$ ]] ||
        it_bail "pmgcm keygen printed no 64-hex key: $(head -c 200 "$IT_DIR/key")"
    if [[ ${IT_NETNS:-1} != 0 && $(id -u) == 0 ]] && it_setup_netns; then
        IT_MODE=netns
    else
        IT_MODE=loopback
        IT_PORT=$((20000 + $$ % 20000))
        local i
        for ((i = 1; i <= IT_N; i++)); do IT_NS[i]=; IT_IP[i]=127.0.0.$((10 + i)); done
    fi
    it_diag "mode $IT_MODE, dir $IT_DIR, daemon $PMGCLUSTERD"
}

it_setup_netns() {
    local i ns
    IT_BRNS=pmgcmtb-$$
    ip netns add "$IT_BRNS" 2>/dev/null || { IT_BRNS=; return 1; }
    ip -n "$IT_BRNS" link set lo up &&
        ip -n "$IT_BRNS" link add br0 type bridge &&
        ip -n "$IT_BRNS" addr add 10.213.0.1/24 dev br0 &&
        ip -n "$IT_BRNS" link set br0 up || { it_teardown_netns; return 1; }
    for ((i = 1; i <= IT_N; i++)); do
        ns=pmgcmt$i-$$
        ip netns add "$ns" || { it_teardown_netns; return 1; }
        IT_NS[i]=$ns
        IT_IP[i]=10.213.0.$((10 + i))
        ip -n "$IT_BRNS" link add "vh$i" type veth peer name eth0 netns "$ns" &&
            ip -n "$IT_BRNS" link set "vh$i" master br0 up &&
            ip -n "$ns" link set lo up &&
            ip -n "$ns" addr add "${IT_IP[i]}/24" dev eth0 &&
            ip -n "$ns" link set eth0 up || { it_teardown_netns; return 1; }
    done
    return 0
}

it_teardown_netns() {
    local ns p
    for ns in "${IT_NS[@]}" "$IT_BRNS"; do
        [[ -n "$ns" ]] || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    IT_NS=(); IT_BRNS=
}

# ---- nodes -------------------------------------------------------------------
it_name() { echo "node$1"; }
it_sock() { echo "$IT_DIR/node$1.sock"; }
it_log() { echo "$IT_DIR/node$1.log"; }

it_write_config() {
    local i=$1 j peers=
    for ((j = 1; j <= IT_N; j++)); do
        ((j == i)) || peers+="${IT_IP[j]}:$IT_PORT "
    done
    mkdir -p "$IT_DIR/node$i"
    {
        echo "name = node$i"
        echo "bind = ${IT_IP[i]}:$IT_PORT"
        echo "data_dir = $IT_DIR/node$i"
        echo "control_socket = $(it_sock "$i")"
        echo "key_file = $IT_DIR/key"
        echo "label = pmgcm-it"
        echo "peers = ${peers% }"
        echo "log_level = ${IT_LOG_LEVEL:-info}"
        [[ -n "${IT_EXTRA_CONF:-}" ]] && printf '%s\n' "$IT_EXTRA_CONF"
    } >"$IT_DIR/node$i.conf"
}

# it_start_node I: start node I (config written the first time) in the
# background; returns once its control socket answers `status` (10 s max).
it_start_node() {
    local i=$1
    [[ -f "$IT_DIR/node$i.conf" ]] || it_write_config "$i"
    echo "=== start $(date +%T.%N)" >>"$(it_log "$i")"
    if [[ $IT_MODE == netns ]]; then
        ip netns exec "${IT_NS[i]}" "$PMGCLUSTERD" --config "$IT_DIR/node$i.conf" \
            </dev/null >>"$(it_log "$i")" 2>&1 &
    else
        "$PMGCLUSTERD" --config "$IT_DIR/node$i.conf" </dev/null >>"$(it_log "$i")" 2>&1 &
    fi
    IT_PID[i]=$!
    it_wait_until "it_status $i >/dev/null 2>&1" 10
}

it_alive_pid() { [[ -n "${IT_PID[$1]:-}" ]] && kill -0 "${IT_PID[$1]}" 2>/dev/null; }

# it_signal I SIG: send a signal to node I's daemon.
it_signal() { kill "-$2" "${IT_PID[$1]}"; }

# it_reap I DEADLINE_S: wait for node I's daemon to exit; sets IT_EXIT to
# its exit status (or "timeout").
it_reap() {
    local i=$1 dl=$2
    IT_EXIT=timeout
    if it_wait_until "! it_alive_pid $i" "$dl"; then
        { wait "${IT_PID[i]}"; } 2>/dev/null
        IT_EXIT=$?
    fi
}

# ---- status queries ------------------------------------------------------------
# it_status I: node I's `pmgcm status` as JSON on stdout.
it_status() {
    timeout 5 "$PMGCM" --socket "$(it_sock "$1")" status --output-format json
}
# it_state_of I NAME: the state letter node I shows for member NAME.
it_state_of() {
    it_status "$1" 2>/dev/null | jq -r --arg n "$2" '.members? // . | .[] | select(.name == $n) | .state' 2>/dev/null
}
# it_count_state I STATE: how many members node I shows in STATE.
it_count_state() {
    it_status "$1" 2>/dev/null | jq -r --arg s "$2" '[.members? // . | .[] | select(.state == $s)] | length' 2>/dev/null
}
# it_sees_all_alive I: node I shows every one of the IT_N nodes, all A.
it_sees_all_alive() {
    local out
    out=$(it_status "$1" 2>/dev/null | jq -r '[.members? // . | .[] | select(.state == "A") | .name] | sort | join(" ")' 2>/dev/null) || return 1
    [[ "$out" == "$(it_all_names)" ]]
}
it_all_names() {
    local i s=
    for ((i = 1; i <= IT_N; i++)); do s+="node$i "; done
    tr ' ' '\n' <<<"${s% }" | sort | paste -sd' '
}
# it_all_see_all_alive "I J ...": each listed node sees all IT_N alive.
it_all_see_all_alive() {
    local i
    for i in $1; do it_sees_all_alive "$i" || return 1; done
}
# it_all_show "I J ..." NAME STATE: each listed node shows NAME in STATE.
it_all_show() {
    local i
    for i in $1; do [[ "$(it_state_of "$i" "$2")" == "$3" ]] || return 1; done
}
# it_others I: every node number except I.
it_others() {
    local j s=
    for ((j = 1; j <= IT_N; j++)); do ((j == $1)) || s+="$j "; done
    echo "${s% }"
}
it_all() { it_others 0; }

# it_dump_views "I J ...": every listed node's view as TAP diagnostics.
it_dump_views() {
    local i
    for i in $1; do
        it_diag "view of node$i: $(it_status "$i" 2>&1 |
            jq -c '[.members? // . | .[] | "\(.name)=\(.state)"]' 2>&1 | head -c 600)"
    done
}
# it_dump_logs: last lines of every node's log as TAP diagnostics.
it_dump_logs() {
    local i
    for ((i = 1; i <= IT_N; i++)); do
        [[ -f "$(it_log "$i")" ]] || continue
        it_diag "---- tail of node$i.log"
        it_diag "$(tail -n "${1:-25}" "$(it_log "$i")")"
    done
}

# ---- cleanup -------------------------------------------------------------------
it_cleanup() {
    local rc=$? i
    trap - EXIT
    for ((i = 1; i <= IT_N; i++)); do
        if it_alive_pid "$i"; then
            kill -CONT "${IT_PID[i]}" 2>/dev/null
            kill -TERM "${IT_PID[i]}" 2>/dev/null
        fi
    done
    for ((i = 1; i <= IT_N; i++)); do
        [[ -n "${IT_PID[i]:-}" ]] || continue
        it_wait_until "! it_alive_pid $i" 3 >/dev/null 2>&1 || kill -KILL "${IT_PID[i]}" 2>/dev/null
        { wait "${IT_PID[i]}"; } 2>/dev/null
    done
    if ((rc != 0 || IT_FAILS > 0)) && [[ -n "$IT_DIR" ]]; then
        it_dump_logs 40
    fi
    [[ $IT_MODE == netns ]] && it_teardown_netns
    if [[ -n "$IT_DIR" && -z "${IT_KEEP:-}" ]]; then
        rm -rf "$IT_DIR"
    elif [[ -n "$IT_DIR" ]]; then
        it_diag "kept $IT_DIR"
    fi
    exit "$rc"
}

# ---- cluster lifecycle (create/join/delete/promote/sync) -------------------------
# it_write_config_lc I NAME [IP] [PORT] [API_PORT]: a config for a node that
# gets its cluster (and so its keyring) from `pmgcm create` / `pmgcm join`:
# no key_file, no peers. IP defaults to IT_IP[I], PORT to IT_PORT, API_PORT
# to the daemon's default (7947).
it_write_config_lc() {
    local i=$1 name=$2 ip=${3:-${IT_IP[$1]}} port=${4:-$IT_PORT} api=${5:-}
    mkdir -p "$IT_DIR/node$i"
    {
        echo "name = $name"
        echo "bind = $ip:$port"
        echo "data_dir = $IT_DIR/node$i"
        echo "control_socket = $(it_sock "$i")"
        echo "label = pmgcm-it"
        [[ -n "$api" ]] && echo "api_port = $api"
        echo "log_level = ${IT_LOG_LEVEL:-info}"
        [[ -n "${IT_EXTRA_CONF:-}" ]] && printf '%s\n' "$IT_EXTRA_CONF"
    } >"$IT_DIR/node$i.conf"
}

# it_old_daemon SRC BLD FROM: the pmgclusterd of commit FROM (a full id) of
# the git tree SRC, built from `git archive` and cached under the build
# tree BLD (tests/integration/upgrade-old/FROM/pmgclusterd; one build at a
# time: another flavour's run may build the same commit). Its path in OLD;
# bails out when it cannot be built. (rolling.sh, upgrade.sh)
it_old_daemon() {
    local src=$1 bld=$2 from=$3
    local cache=$bld/tests/integration/upgrade-old/$from
    OLD=$cache/pmgclusterd
    mkdir -p "$bld/tests/integration/upgrade-old" || it_bail "mkdir upgrade-old"
    exec 9>"$bld/tests/integration/upgrade-old/$from.lock"
    flock -w 900 9 || it_bail "waiting for another build of the old daemon"
    if [[ ! -x "$OLD" ]]; then
        rm -rf "$cache" && mkdir -p "$cache/src" || it_bail "mkdir $cache"
        echo "# building the old daemon at ${from:0:12} (cached in ${cache#$bld/})"
        # the daemon moved from membership/ to daemon/
        if ! (git -C "$src" archive "$from" | tar -x -C "$cache/src" &&
            cd "$cache/src" && autoreconf -fi && ./configure &&
            t=daemon/pmgclusterd && { [[ -d daemon ]] || t=membership/pmgclusterd; } &&
            make -j2 "$t" && cp "$t" "$OLD") >"$cache/build.log" 2>&1; then
            it_bail "building the old daemon failed: $(tail -n 5 "$cache/build.log")"
        fi
        rm -rf "$cache/src"
    fi
    exec 9>&-
    [[ -x "$OLD" ]] || it_bail "no old daemon at $OLD"
}

# it_ctl I REQUEST: sends one raw request line to node I's control socket
# (protocol: membership/membership.h) and prints the daemon's answer. For
# what `pmgcm` does not print, e.g. the status envelope ("cluster",
# "fingerprint", "gossip").
it_ctl() {
    timeout 10 python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(8)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    buf += d
sys.stdout.write(buf.decode())
' "$(it_sock "$1")" "$2"
}
# it_envelope I: node I's whole status answer (one JSON object).
it_envelope() { it_ctl "$1" status; }
# it_cluster_of I: node I's "cluster" object (compact JSON), "null" outside
# a cluster; fails when the daemon does not answer.
it_cluster_of() {
    local e
    e=$(it_envelope "$1" 2>/dev/null) && [[ -n "$e" ]] || return 1
    jq -ce '.ok == true' <<<"$e" >/dev/null || return 1
    jq -c '.cluster // null' <<<"$e"
}
# it_fingerprint_of I: node I's TLS certificate fingerprint.
it_fingerprint_of() { it_envelope "$1" 2>/dev/null | jq -r '.fingerprint // empty'; }
# it_gossip_stat I FIELD: one counter of node I's "gossip" object.
it_gossip_stat() { it_envelope "$1" 2>/dev/null | jq -r --arg f "$2" '.gossip[$f] // empty'; }
# it_roles_of I: node I's view as "name:cid:role" words sorted by cid, e.g.
# "node1:1:master node2:2:node".
it_roles_of() {
    it_status "$1" 2>/dev/null |
        jq -r '[.members? // . | .[] | "\(.name):\(.cid):\(.role)"] | sort_by(split(":")[1] | tonumber) | join(" ")' 2>/dev/null
}
# it_pmgcm I ARGS...: `pmgcm ARGS...` typed on node I (its control socket
# through $PMGCM_SOCKET, so the command line is what an admin types).
it_pmgcm() {
    local i=$1; shift
    PMGCM_SOCKET=$(it_sock "$i") timeout 60 "$PMGCM" "$@"
}
# it_pmgcm_tty I ANSWER ARGS...: the same on a terminal (a pty): ANSWER is
# typed when pmgcm asks "(yes/no)". Prints everything the terminal showed;
# returns pmgcm's exit status.
it_pmgcm_tty() {
    local i=$1 answer=$2; shift 2
    PMGCM_SOCKET=$(it_sock "$i") timeout 90 python3 -c '
import os, pty, select, sys, time
answer, argv = sys.argv[1], sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out, sent, end = b"", False, time.time() + 80
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if not r:
        continue
    try:
        d = os.read(fd, 4096)
    except OSError:
        d = b""
    if not d:
        break
    out += d
    if not sent and b"(yes/no)" in out:
        os.write(fd, answer.encode() + b"\n")
        sent = True
else:
    os.kill(pid, 9)
_, st = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace").replace("\r\n", "\n"))
sys.exit(os.waitstatus_to_exitcode(st))
' "$answer" "$PMGCM" "$@"
}

# it_report_shutdown BAD NODE...: one TAP point for the end of a script:
# BAD holds what already went wrong (non-zero exits, ...); every listed
# node's log is searched for sanitizer reports.
it_report_shutdown() {
    local bad=$1 i
    shift
    for i in "$@"; do
        [[ -f "$(it_log "$i")" ]] || continue
        if grep -Eq 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|SUMMARY: [A-Za-z]+Sanitizer' "$(it_log "$i")"; then
            bad+="sanitizer report in node$i.log; "
            it_diag "$(grep -E -A12 'ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:' "$(it_log "$i")" | head -n 40)"
        fi
    done
    if [[ -z "$bad" ]]; then
        it_ok "every daemon exits 0 on SIGTERM; no sanitizer report in any log"
    else
        it_not_ok "every daemon exits 0 on SIGTERM; no sanitizer report in any log: $bad"
    fi
}

# ---- network faults (netns mode only; return 1 in loopback mode) -----------------
# it_link I down|up: node I's veth port on the bridge down or up: node I
# hears nobody and nobody hears it (its own interface stays configured).
it_link() {
    [[ $IT_MODE == netns ]] || return 1
    ip -n "$IT_BRNS" link set "vh$1" "$2"
}
# it_partition "I J ...": moves the listed nodes' ports to a second bridge
# br1: they hear each other and nobody else (a partition); the rest stay
# on br0. it_heal_partition puts every port back on br0 and up.
it_partition() {
    local i
    [[ $IT_MODE == netns ]] || return 1
    if ! ip -n "$IT_BRNS" link show br1 >/dev/null 2>&1; then
        ip -n "$IT_BRNS" link add br1 type bridge && ip -n "$IT_BRNS" link set br1 up || return 1
    fi
    for i in $1; do ip -n "$IT_BRNS" link set "vh$i" master br1 || return 1; done
}
it_heal_partition() {
    local i rc=0
    [[ $IT_MODE == netns ]] || return 1
    for ((i = 1; i <= IT_N; i++)); do
        ip -n "$IT_BRNS" link set "vh$i" master br0 up || rc=1
    done
    return $rc
}
