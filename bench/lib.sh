# bench/lib.sh - start/stop/query local clusters of pmgclusterd or Serf agents
# on 127.0.0.1 for bench/detect and bench/soak. Source it; not a test.
#
#   bn_init                   temp dir, cleanup trap, checks binaries
#   bn_start KIND N           KIND = pmg | serf; N nodes on 127.0.0.1
#   bn_wait_all_alive KIND N DEADLINE_S
#   bn_member_state KIND I NAME   -> A ? D L (pmg) / alive failed left ... (serf)
#   bn_kill KIND I SIG; bn_restart KIND I; bn_stop_all KIND
#
# Node i of pmg binds 127.0.0.1:(PMG_PORT0+i) for gossip, +100+i for the
# node API, +200+i for the status port, +300+i for the agent port (the keys
# this daemon knows), control socket $BN_DIR/pmg/n<i>.sock; Serf agent i binds 127.0.0.1:(SERF_PORT0+i), RPC on
# 127.0.0.1:(SERF_RPC0+i). Both are told the same seeds: the first three
# nodes other than themselves. Default settings for both, nothing tuned
# (BN_PMG_EXTRA_CONF="key = value" lines are appended to pmg configs, for
# experiments only).

BN_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BN_BUILD=${PMGCM_BUILD:-$BN_TOP/build}
bn_find_bin() { # bn_find_bin NAME SUBDIR: top of the build tree or its subdir
    local c
    for c in "$BN_BUILD/$1" "$BN_BUILD/$2/$1"; do [[ -x "$c" ]] && { echo "$c"; return 0; }; done
    echo "$BN_BUILD/$2/$1"
}
PMGCLUSTERD=${PMGCLUSTERD:-$(bn_find_bin pmgclusterd daemon)}
PMGCM=${PMGCM:-$(bn_find_bin pmgcm cli)}
SERF=${SERF:-serf}
PMG_PORT0=${PMG_PORT0:-17000}   # gossip 17000+i; other TCP ports below
SERF_PORT0=${SERF_PORT0:-18000}
SERF_RPC0=${SERF_RPC0:-19000}
BN_DIR=
declare -A BN_PID=()   # "kind:i" -> pid

bn_now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
bn_log() { echo "[$(date +%T)] $*" >&2; }

bn_init() {
    local b
    for b in "$PMGCLUSTERD" "$PMGCM"; do
        [[ -x "$b" ]] || { echo "bench: missing $b: build first (bash scripts/build.sh build)" >&2; exit 1; }
    done
    command -v "$SERF" >/dev/null || { echo "bench: serf not installed (bash scripts/deps.sh)" >&2; exit 1; }
    command -v jq >/dev/null || { echo "bench: jq not installed (bash scripts/deps.sh)" >&2; exit 1; }
    BN_DIR=$(mktemp -d /tmp/pmgcm-bench.XXXXXX)
    mkdir -p "$BN_DIR/pmg" "$BN_DIR/serf"
    trap bn_cleanup EXIT
    trap 'exit 130' INT TERM HUP
    "$PMGCM" keygen >"$BN_DIR/key"
}

bn_cleanup() {
    local rc=$?
    trap - EXIT
    bn_stop_all pmg
    bn_stop_all serf
    if [[ -n "${BN_KEEP:-}" ]]; then echo "bench: kept $BN_DIR" >&2; else rm -rf "$BN_DIR"; fi
    exit "$rc"
}

# bn_ports_free KIND N: every port the cluster needs is unused.
bn_ports_free() {
    local kind=$1 n=$2 i p used
    used=$(ss -Htuln 2>/dev/null | awk '{print $5}' | sed -n 's/^127\.0\.0\.1:\([0-9]*\)$/\1/p; s/^\*:\([0-9]*\)$/\1/p; s/^0\.0\.0\.0:\([0-9]*\)$/\1/p' | sort -u)
    for ((i = 1; i <= n; i++)); do
        for p in $([[ $kind == pmg ]] && echo $((PMG_PORT0 + i)) $((PMG_PORT0 + 100 + i)) $((PMG_PORT0 + 200 + i)) $((PMG_PORT0 + 300 + i)) || echo $((SERF_PORT0 + i)) $((SERF_RPC0 + i))); do
            if grep -qx "$p" <<<"$used"; then echo "bench: port $p is in use" >&2; return 1; fi
        done
    done
}

bn_seeds() { # bn_seeds I N -> the first three node numbers other than I
    local i=$1 n=$2 j c=0 s=
    for ((j = 1; j <= n && c < 3; j++)); do ((j == i)) || { s+="$j "; c=$((c + 1)); }; done
    echo "$s"
}

bn_start_node() { # bn_start_node KIND I N
    local kind=$1 i=$2 n=$3 j peers= args=()
    if [[ $kind == pmg ]]; then
        for j in $(bn_seeds "$i" "$n"); do peers+="127.0.0.1:$((PMG_PORT0 + j)) "; done
        if [[ ! -f "$BN_DIR/pmg/n$i.conf" ]]; then
            mkdir -p "$BN_DIR/pmg/n$i"
            bn_pmg_ports "$i" >"$BN_DIR/pmg/n$i.ports"
            cat >"$BN_DIR/pmg/n$i.conf" <<CONF
name = n$i
bind = 127.0.0.1:$((PMG_PORT0 + i))
data_dir = $BN_DIR/pmg/n$i
control_socket = $BN_DIR/pmg/n$i.sock
key_file = $BN_DIR/key
peers = ${peers% }
log_level = warn
$(cat "$BN_DIR/pmg/n$i.ports")
${BN_PMG_EXTRA_CONF:-}
CONF
        fi
        "$PMGCLUSTERD" --config "$BN_DIR/pmg/n$i.conf" </dev/null >>"$BN_DIR/pmg/n$i.log" 2>&1 &
    else
        # Node 1's very first start has nobody to join; every later start
        # (and every other node) joins its seeds, as `serf join` would.
        if [[ $i != 1 || -f "$BN_DIR/serf/n1.started" ]]; then
            for j in $(bn_seeds "$i" "$n"); do args+=("-join=127.0.0.1:$((SERF_PORT0 + j))"); done
        fi
        touch "$BN_DIR/serf/n$i.started"
        "$SERF" agent -node="n$i" -bind="127.0.0.1:$((SERF_PORT0 + i))" \
            -rpc-addr="127.0.0.1:$((SERF_RPC0 + i))" -log-level=info "${args[@]}" \
            </dev/null >>"$BN_DIR/serf/n$i.log" 2>&1 &
    fi
    BN_PID[$kind:$i]=$!
}

# bn_pmg_ports I: config lines giving node I its own node API, status and
# agent ports (all nodes share 127.0.0.1), for the keys this daemon knows.
bn_pmg_ports() {
    local i=$1 k off=100
    for k in api_port status_port agent_port; do
        if grep -aq "$k" "$PMGCLUSTERD"; then
            echo "$k = $((PMG_PORT0 + off + i))"
        fi
        off=$((off + 100))
    done
}

bn_pid() { echo "${BN_PID[$1:$2]:-}"; }

# bn_query KIND I: node I's member list as JSON on stdout.
bn_query() {
    if [[ $1 == pmg ]]; then
        timeout 5 "$PMGCM" --socket "$BN_DIR/pmg/n$2.sock" status --output-format json 2>/dev/null
    else
        timeout 5 "$SERF" members -rpc-addr="127.0.0.1:$((SERF_RPC0 + $2))" -format=json 2>/dev/null
    fi
}

# bn_state_in JSON NAME: the state of NAME in a member list, without forking
# (jq costs ~30 ms a call, too much for polling 30 nodes every 100 ms).
# Relies on "name" coming before "state"/"status" within a member object;
# bn_check_parser verifies that against jq once.
bn_state_in() {
    local s=${1//[$'\n\t\r ']/} rest
    rest=${s#*\"name\":\"$2\"}
    [[ "$rest" == "$s" ]] && return 1
    rest=${rest%%\"name\":*}
    [[ "$rest" =~ \"(state|status)\":\"([^\"]*)\" ]] || return 1
    echo "${BASH_REMATCH[2]}"
}
BN_PARSER=fast
bn_check_parser() { # bn_check_parser KIND N: fall back to jq if the fast parse disagrees
    local kind=$1 n=$2 js i a b
    js=$(bn_query "$kind" 1) || return 0
    for ((i = 1; i <= n; i++)); do
        a=$(bn_state_in "$js" "n$i")
        b=$(jq -r --arg n "n$i" '.members? // . | .[] | select(.name == $n) | (.state // .status)' <<<"$js")
        if [[ "$a" != "$b" ]]; then
            bn_log "fast JSON parse disagrees with jq ($a vs $b); using jq (slower polling)"
            BN_PARSER=jq
            return 0
        fi
    done
}
bn_member_state() { # bn_member_state KIND I NAME
    local js
    js=$(bn_query "$1" "$2") || return 1
    if [[ $BN_PARSER == fast ]]; then
        bn_state_in "$js" "$3"
    else
        jq -r --arg n "$3" '.members? // . | .[] | select(.name == $n) | (.state // .status)' <<<"$js"
    fi
}
# bn_false_re KIND: log lines that mean a member was suspected or declared
# dead (pmgclusterd logs them at warn; Serf/memberlist at info).
bn_false_re() {
    if [[ $1 == pmg ]]; then
        echo 'suspect \(was|dead \(was'
    else
        echo 'EventMemberFailed|Suspect .* has failed|Marking .* as failed'
    fi
}
bn_alive_word() { [[ $1 == pmg ]] && echo A || echo alive; }
bn_dead_word() { [[ $1 == pmg ]] && echo D || echo failed; }

# bn_alive_count KIND I: how many members node I shows alive.
bn_alive_count() {
    local js t w
    js=$(bn_query "$1" "$2") || { echo 0; return 1; }
    js=${js//[$'\n\t\r ']/}
    w=$(bn_alive_word "$1")
    t=${js//\"state\":\"$w\"/$'\001'}
    t=${t//\"status\":\"$w\"/$'\001'}
    t=${t//[^$'\001']/}
    echo "${#t}"
}

# bn_wait_all_alive KIND N DEADLINE_S [SKIP]: every node (but SKIP) shows N
# alive. Sets BN_WAITED_MS.
bn_wait_all_alive() {
    local kind=$1 n=$2 dl=$3 skip=${4:-0} t0 i ok
    t0=$(bn_now_ms)
    while :; do
        ok=1
        for ((i = 1; i <= n; i++)); do
            ((i == skip)) && continue
            [[ "$(bn_alive_count "$kind" "$i")" == "$n" ]] || { ok=0; break; }
        done
        BN_WAITED_MS=$(($(bn_now_ms) - t0))
        ((ok)) && return 0
        ((BN_WAITED_MS > dl * 1000)) && return 1
        sleep 0.1
    done
}

bn_start() { # bn_start KIND N (N <= 99)
    local kind=$1 n=$2 i
    ((n <= 99)) || { echo "bench: at most 99 nodes" >&2; return 1; }
    bn_ports_free "$kind" "$n" || return 1
    for ((i = 1; i <= n; i++)); do
        bn_start_node "$kind" "$i" "$n"
        # Let node 1 come up before the others try to join it.
        if ((i == 1)); then bn_wait_answer "$kind" 1 10 || return 1; fi
    done
    return 0
}
bn_wait_answer() { # bn_wait_answer KIND I DEADLINE_S
    local t0
    t0=$(bn_now_ms)
    until bn_query "$1" "$2" >/dev/null; do
        (($(bn_now_ms) - t0 > $3 * 1000)) && { bn_log "$1 node $2 does not answer"; return 1; }
        sleep 0.1
    done
}

bn_kill() { # bn_kill KIND I SIG: signal and, for KILL/TERM, reap
    local p
    p=$(bn_pid "$1" "$2")
    [[ -n "$p" ]] || return 0
    kill "-$3" "$p" 2>/dev/null
    if [[ $3 == KILL || $3 == 9 ]]; then wait "$p" 2>/dev/null; BN_PID[$1:$2]=; fi
}

bn_stop_all() { # bn_stop_all KIND
    local kind=$1 k p t0
    for k in "${!BN_PID[@]}"; do
        [[ $k == "$kind":* && -n "${BN_PID[$k]}" ]] || continue
        kill -CONT "${BN_PID[$k]}" 2>/dev/null
        kill -TERM "${BN_PID[$k]}" 2>/dev/null
    done
    t0=$(bn_now_ms)
    for k in "${!BN_PID[@]}"; do
        [[ $k == "$kind":* && -n "${BN_PID[$k]}" ]] || continue
        p=${BN_PID[$k]}
        while kill -0 "$p" 2>/dev/null && (($(bn_now_ms) - t0 < 5000)); do sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
        BN_PID[$k]=
    done
    rm -f "$BN_DIR/$kind"/n*.started 2>/dev/null
}

# bn_cpu_ns PID: CPU time of every thread of PID in nanoseconds (the
# scheduler's own account, /proc/PID/task/*/schedstat; the clock ticks of
# /proc/PID/stat are 10 ms, coarse next to an idle daemon's ~30 ms a
# minute). Threads that exited are not counted: both daemons keep theirs.
bn_cpu_ns() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d\n", s}'
}
# bn_cpu_ticks PID: utime+stime in clock ticks.
bn_cpu_ticks() {
    local s
    s=$(<"/proc/$1/stat") || return 1
    s=${s##*) }
    # after "comm) ": state(3) ppid pgrp session tty tpgid flags minflt cminflt
    # majflt cmajflt utime(14) stime(15)
    set -- $s
    echo $((${12} + ${13}))
}
# bn_log_sizes KIND N: byte sizes of every node's log (a mark for bn_log_news).
bn_log_sizes() {
    local i s=
    for ((i = 1; i <= $2; i++)); do s+="$(stat -c %s "$BN_DIR/$1/n$i.log" 2>/dev/null || echo 0) "; done
    echo "$s"
}
# bn_log_news KIND N MARK REGEX: lines matching REGEX written since MARK.
bn_log_news() {
    local kind=$1 n=$2 i off
    local -a marks=($3)
    for ((i = 1; i <= n; i++)); do
        off=${marks[i - 1]:-0}
        tail -c +$((off + 1)) "$BN_DIR/$kind/n$i.log" 2>/dev/null | grep -E "$4" | sed "s/^/n$i: /"
    done
}
bn_rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# bn_median V...: median of numbers (awk, floats ok).
bn_median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit}
        if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
bn_min() { printf '%s\n' "$@" | sort -g | head -n1; }
bn_max() { printf '%s\n' "$@" | sort -g | tail -n1; }
