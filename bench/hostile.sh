#!/usr/bin/env bash
# bench/hostile.sh - hostile input from the network against a real cluster,
# each figure side by side with the same measurement on the idle cluster in
# the same run:
#
#   sudo bash bench/hostile.sh            (as root; ~7 min)
#   BENCH_QUICK=1 bash bench/hostile.sh   (~3 min: one repetition, shorter)
#
# The cluster: 4 pmgclusterd daemons (no database), each in its own network
# namespace (tests/integration/lib.sh), node1 made master with `pmgcm
# create`, nodes 2 and 3 joined; node4 joins during the measurements. The
# attackers and the checker run in the bridge namespace
# (tests/integration/hostile.py), the attackers from addresses of their own
# added to the bridge. Sections (shell functions, each appending
# "figure | idle | attacked" rows to the table; another helper's section
# can be added the same way):
#
#   section_ports     /livez, /readyz and the agent check, twice a second
#                     each for BENCH_WINDOW s: success rate, p50/p99/max
#                     latency; idle, then while 16 addresses hold every
#                     cap of node1's status and agent ports (answered
#                     requests kept open, heads a byte at a time, garbage)
#   section_api       `pmgcm sync` on node2 (a config fetch over the TLS
#                     node API) BENCH_SYNCS times: p50 and max; and the
#                     time of node4's `pmgcm join` (after a delete, again):
#                     idle, then during 120 half-sent ClientHellos from 4
#                     addresses renewed as fast as node1 drops them
#   section_throttle  wrong join passwords per second reaching the
#                     password check: from 1 address, then from 200
#                     (100 in the cluster's /24, 100 in /24s of their own),
#                     BENCH_WINDOW s each
#
# Each attacked window also records node1's CPU seconds (utime + stime from
# /proc) and RSS. Every figure is the median of BENCH_REPEAT runs (3;
# 1 when quick). Results: a table on stdout, also in
# bench/out/hostile.txt. Needs root, network namespaces, python3, jq, a
# built tree ($PMGCM_BUILD, default build/). Not part of `make check`.
# Keep the machine otherwise idle.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
export abs_top_builddir=${PMGCM_BUILD:-$top/build}
IT_BUDGET=${IT_BUDGET:-3600}
. "$top/tests/integration/lib.sh"
HOSTILE=$top/tests/integration/hostile.py

QUICK=${BENCH_QUICK:-}
[[ "$QUICK" == 0 ]] && QUICK=
if [[ -n "$QUICK" ]]; then
    REPEAT=${BENCH_REPEAT:-1} WINDOW=${BENCH_WINDOW:-10} SYNCS=${BENCH_SYNCS:-5}
else
    REPEAT=${BENCH_REPEAT:-3} WINDOW=${BENCH_WINDOW:-20} SYNCS=${BENCH_SYNCS:-10}
fi
OUT_DIR=$here/out
mkdir -p "$OUT_DIR"
TABLE=()

log() { echo "[$(date +%T)] $*" >&2; }
[[ $(id -u) == 0 ]] || { echo "bench/hostile.sh: needs root (network namespaces)" >&2; exit 1; }
command -v python3 >/dev/null && command -v jq >/dev/null ||
    { echo "bench/hostile.sh: needs python3 and jq" >&2; exit 1; }

br() { ip netns exec "$IT_BRNS" "$@"; }
hostile() { br python3 "$HOSTILE" "$@"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else print a[int((NR + 1) / 2)] }'; }
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/${IT_PID[$1]}/stat" 2>/dev/null; }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/${IT_PID[$1]}/status" 2>/dev/null; }
field() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2" | head -n1; }
row() { TABLE+=("$1|$2|$3"); }

# ---- the cluster -------------------------------------------------------------------
setup() {
    it_init 4
    [[ $IT_MODE == netns ]] || { echo "bench/hostile.sh: needs network namespaces" >&2; exit 1; }
    PW=$IT_DIR/join.pw
    printf 'hostile bench password\n' >"$PW"
    chmod 600 "$PW"
    local i
    for i in 1 2 3 4; do
        it_write_config_lc "$i" "node$i"
        it_start_node "$i" || { echo "node$i did not start" >&2; exit 1; }
    done
    it_pmgcm 1 create --password-file "$PW" >/dev/null || { echo "create failed" >&2; exit 1; }
    FP=$(it_fingerprint_of 1)
    for i in 2 3; do
        it_pmgcm "$i" join "${IT_IP[1]}" --fingerprint "$FP" --password-file "$PW" >/dev/null ||
            { echo "node$i: join failed" >&2; exit 1; }
    done
    it_wait_until "it_all_see_all_alive '1 2 3'" 30 >/dev/null || true
    local k
    for k in $(seq 100 215); do ip -n "$IT_BRNS" addr add "10.213.0.$k/32" dev br0; done
    : >"$IT_DIR/sources200"
    for k in $(seq 100 199); do echo "10.213.0.$k" >>"$IT_DIR/sources200"; done
    for k in $(seq 0 99); do
        ip -n "$IT_BRNS" addr add "10.214.$k.1/32" dev br0
        echo "10.214.$k.1" >>"$IT_DIR/sources200"
    done
    echo 10.213.0.150 >"$IT_DIR/sources1"
    ip -n "${IT_NS[1]}" route add 10.214.0.0/16 dev eth0
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=bench -keyout "$IT_DIR/att.key" -out "$IT_DIR/att.crt" >/dev/null 2>&1
    log "cluster: 3 nodes (node1 master), node4 outside; $IT_DIR"
}

# ---- health checks: idle vs the hold ---------------------------------------------------
section_ports() {
    local r idle att ci ca c0 c1 hp
    local -a rate_i rate_a p50_i p50_a p99_i p99_a max_i max_a cpu rss
    for ((r = 1; r <= REPEAT; r++)); do
        log "ports: run $r/$REPEAT: idle $WINDOW s"
        idle=$(hostile check "${IT_IP[1]}" --rate 2 --seconds "$WINDOW" --source 10.213.0.1)
        log "ports: run $r/$REPEAT: 16 addresses holding every cap, $WINDOW s"
        # not through a function: $! must be the attacker itself
        ip netns exec "$IT_BRNS" python3 "$HOSTILE" hold "${IT_IP[1]}" --ports 7948,7949 \
            --sources 10.213.0.200-215 --seconds $((WINDOW + 4)) >"$IT_DIR/hold.$r" 2>&1 &
        hp=$!
        sleep 3
        c0=$(cpu_s 1)
        att=$(hostile check "${IT_IP[1]}" --rate 2 --seconds "$WINDOW" --source 10.213.0.1)
        c1=$(cpu_s 1)
        rss+=("$(rss_mb 1)")
        wait "$hp"
        cpu+=("$(awk -v a="$c0" -v b="$c1" -v w="$WINDOW" 'BEGIN { printf "%.2f", (b - a) / w }')")
        rate_i+=("$(field rate "$idle" | tr -d %)") rate_a+=("$(field rate "$att" | tr -d %)")
        p50_i+=("$(field p50_ms "$idle")") p50_a+=("$(field p50_ms "$att")")
        p99_i+=("$(field p99_ms "$idle")") p99_a+=("$(field p99_ms "$att")")
        max_i+=("$(field livez_max_ms "$idle")") max_a+=("$(field livez_max_ms "$att")")
        log "  idle:   $idle"
        log "  attack: $att"
        log "  attacker: $(cat "$IT_DIR/hold.$r")"
    done
    row "health checks passed, % (livez+readyz+agent, 2/s each)" \
        "$(echo "${rate_i[*]}" | median)" "$(echo "${rate_a[*]}" | median)"
    row "check latency p50, ms" "$(echo "${p50_i[*]}" | median)" "$(echo "${p50_a[*]}" | median)"
    row "check latency p99, ms" "$(echo "${p99_i[*]}" | median)" "$(echo "${p99_a[*]}" | median)"
    row "slowest /livez, ms" "$(echo "${max_i[*]}" | median)" "$(echo "${max_a[*]}" | median)"
    row "node1 CPU during the hold, s per s" "-" "$(echo "${cpu[*]}" | median)"
    row "node1 RSS during the hold, MB" "-" "$(echo "${rss[*]}" | median)"
}

# ---- the node API: idle vs a handshake flood ----------------------------------------------
sync_times() { # N: pmgcm sync on node2 N times; prints the times in ms
    local k t0
    for ((k = 0; k < $1; k++)); do
        t0=$(it_now_ms)
        it_pmgcm 2 sync >/dev/null 2>&1 || { echo fail; continue; }
        echo $(($(it_now_ms) - t0))
    done
}
join4() { # prints node4's join time in ms (then deletes it again)
    local t0 rc cid
    t0=$(it_now_ms)
    it_pmgcm 4 join "${IT_IP[1]}" --fingerprint "$FP" --password-file "$PW" --no-wait >/dev/null 2>&1
    rc=$?
    echo $((rc == 0 ? $(it_now_ms) - t0 : -1))
    cid=$(it_status 1 2>/dev/null | jq -r '.[] | select(.name == "node4") | .cid')
    [[ -n "$cid" && "$cid" != null ]] && it_pmgcm 1 delete "$cid" >/dev/null 2>&1
    it_wait_until "[[ \$(it_cluster_of 4) == null ]]" 30 >/dev/null
}
ctl_max_ms() { # the slowest of 10 control socket pings on node1 (one process)
    timeout 120 python3 -c '
import socket, sys, time
m = 0
for k in range(10):
    t = time.time()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    try:
        s.connect(sys.argv[1])
        s.sendall(b"ping\n")
        while s.recv(4096):
            pass
    except OSError:
        m = 99999
    s.close()
    m = max(m, (time.time() - t) * 1000)
    time.sleep(0.1)
print("%d" % m)' "$(it_sock 1)"
}
section_api() {
    local r s_i s_a fp c0 c1 ev0 ev1
    local -a sp_i sp_a sm_i sm_a j_i j_a cpu evs ctl_i ctl_a
    for ((r = 1; r <= REPEAT; r++)); do
        log "api: run $r/$REPEAT: idle"
        s_i=$(sync_times "$SYNCS" | paste -sd' ')
        ctl_i+=("$(ctl_max_ms)")
        j_i+=("$(join4)")
        log "api: run $r/$REPEAT: 120 half-sent ClientHellos from 4 addresses"
        ip netns exec "$IT_BRNS" python3 "$HOSTILE" hsflood "${IT_IP[1]}" --port 7947 \
            --sources 10.213.0.200-203 --conns 120 --seconds 600 >"$IT_DIR/hs.$r" 2>&1 &
        fp=$!
        sleep 3
        ev0=$(it_envelope 1 | jq -r '.guard.api_handshakes_evicted')
        c0=$(cpu_s 1)
        local t0=$(it_now_ms)
        s_a=$(sync_times "$SYNCS" | paste -sd' ')
        ctl_a+=("$(ctl_max_ms)")
        j_a+=("$(join4)")
        c1=$(cpu_s 1)
        ev1=$(it_envelope 1 | jq -r '.guard.api_handshakes_evicted')
        local el=$(($(it_now_ms) - t0))
        kill "$fp" 2>/dev/null
        wait "$fp" 2>/dev/null
        cpu+=("$(awk -v a="$c0" -v b="$c1" -v w="$el" 'BEGIN { printf "%.2f", (b - a) * 1000 / w }')")
        evs+=("$(awk -v a="$ev0" -v b="$ev1" -v w="$el" 'BEGIN { printf "%d", (b - a) * 1000 / w }')")
        sp_i+=("$(echo "$s_i" | median)") sp_a+=("$(echo "$s_a" | median)")
        sm_i+=("$(tr ' ' '\n' <<<"$s_i" | sort -g | tail -n1)") sm_a+=("$(tr ' ' '\n' <<<"$s_a" | sort -g | tail -n1)")
        log "  sync ms idle: $s_i; flood: $s_a; join ms idle ${j_i[-1]}, flood ${j_a[-1]}"
    done
    row "pmgcm sync (config over TLS) p50, ms" "$(echo "${sp_i[*]}" | median)" "$(echo "${sp_a[*]}" | median)"
    row "pmgcm sync max, ms" "$(echo "${sm_i[*]}" | median)" "$(echo "${sm_a[*]}" | median)"
    row "pmgcm join (node4), ms" "$(echo "${j_i[*]}" | median)" "$(echo "${j_a[*]}" | median)"
    row "node1's control socket, slowest of 10 pings, ms" "$(echo "${ctl_i[*]}" | median)" "$(echo "${ctl_a[*]}" | median)"
    row "half-sent hellos dropped by node1, per s" "-" "$(echo "${evs[*]}" | median)"
    row "node1 CPU during the flood, s per s" "-" "$(echo "${cpu[*]}" | median)"
}

# ---- the join throttle: 1 address vs 200 ------------------------------------------------------
section_throttle() {
    local r one many
    local -a g1 g200
    for ((r = 1; r <= REPEAT; r++)); do
        log "throttle: run $r/$REPEAT: wrong passwords from 1 address, $WINDOW s"
        one=$(hostile joinflood "${IT_IP[1]}" --sources-file "$IT_DIR/sources1" \
            --cert "$IT_DIR/att.crt" --key "$IT_DIR/att.key" --seconds "$WINDOW" --threads 4)
        one=${one%%$'\n'*}
        log "  $one"
        # let the budget fill up again (20 at once, one per 3 s)
        it_wait_until "(( \$(it_envelope 1 | jq -r '.guard.join_budget_left') >= 20 ))" 90 >/dev/null
        log "throttle: run $r/$REPEAT: from 200 addresses, $WINDOW s"
        many=$(hostile joinflood "${IT_IP[1]}" --sources-file "$IT_DIR/sources200" \
            --cert "$IT_DIR/att.crt" --key "$IT_DIR/att.key" --seconds "$WINDOW" --threads 48)
        many=${many%%$'\n'*}
        log "  $many"
        g1+=("$(field guesses_per_s "$one")") g200+=("$(field guesses_per_s "$many")")
        it_wait_until "(( \$(it_envelope 1 | jq -r '.guard.join_budget_left') >= 20 ))" 90 >/dev/null
    done
    row "wrong join passwords checked per s (idle: 1 address; attacked: 200)" \
        "$(echo "${g1[*]}" | median)" "$(echo "${g200[*]}" | median)"
}

report() {
    local head="bench/hostile.sh at $(git -C "$top" rev-parse --short HEAD 2>/dev/null), $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg), median of $REPEAT"
    {
        echo "$head"
        printf '%-62s | %12s | %12s\n' "figure" "idle" "attacked"
        local l
        for l in "${TABLE[@]}"; do
            IFS='|' read -r f a b <<<"$l"
            printf '%-62s | %12s | %12s\n' "$f" "$a" "$b"
        done
    } | tee "$OUT_DIR/hostile.txt"
}

setup
section_ports
section_api
section_throttle
report
