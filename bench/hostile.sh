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
#   section_gossip_tcp  the gossip port: idle, then while
#                     tests/integration/tcphold.py keeps 128 gossip TCP
#                     connections to node1 from 32 addresses (twice its
#                     inbound cap), each announcing a 4 MiB frame, sending
#                     1 MiB as fast as node1 reads, then a byte every
#                     500 ms, reconnecting 100 ms after node1 drops it:
#                     node1's RSS growth, budget in use and CPU; TCP
#                     exchanges (push-pulls, TCP probes) into node1 and by
#                     nodes 2 and 3, failed ones, TCP fallback probes,
#                     suspicions and view changes (push-pull every 2 s in
#                     this cluster, so windows hold several)
#
# BENCH_SECTIONS picks sections ("ports gossip_tcp api throttle" by
# default); PMGCLUSTERD=PATH measures another build (section_gossip_tcp
# reads its counters from /metrics, which older builds have too).
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
TCPHOLD=$top/tests/integration/tcphold.py
SECTIONS=${BENCH_SECTIONS:-ports gossip_tcp api throttle}
# section_gossip_tcp counts push-pulls: every 2 s instead of every 30 s
IT_EXTRA_CONF="pushpull_interval_ms = 2000"

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

# ---- the gossip port: idle vs 128 held TCP connections -----------------------------------------
# mstat I 'NAME{LABELS}': a counter from node I's /metrics
mstat() {
    ip netns exec "${IT_NS[$1]}" curl -s --max-time 3 "http://${IT_IP[$1]}:7948/metrics" 2>/dev/null |
        awk -v m="$2" '$1 == m { print $2; f = 1 } END { if (!f) print 0 }'
}
msum() { local f=$1 i t=0; shift; for i in "$@"; do t=$((t + $(mstat "$i" "$f"))); done; echo $t; }
gview() { it_status "$1" 2>/dev/null | jq -c '[.[] | "\(.name)=\(.state)"]' 2>/dev/null; }
section_gossip_tcp() {
    local SIN='pmgcm_gossip_streams_total{direction="in"}'
    local SOUT='pmgcm_gossip_streams_total{direction="out"}'
    local SFAIL=pmgcm_gossip_stream_failures_total TCPP=pmgcm_gossip_tcp_fallback_probes_total
    local SUS=pmgcm_gossip_suspicions_total
    local srcs= k r kind i
    for ((k = 100; k < 132; k++)); do srcs+="${srcs:+,}10.213.0.$k"; done
    local -A M V0
    for ((r = 1; r <= REPEAT; r++)); do
        for kind in idle attack; do
            local rss0 rss_max used_max=0 changed=0 sus0 in0 out0 fail0 tf0 c0 c1 hp= v u end
            for i in 1 2 3; do V0[$i]=$(gview "$i"); done
            rss0=$(awk '/^VmRSS:/ { print $2 }' "/proc/${IT_PID[1]}/status"); rss_max=$rss0
            sus0=$(msum $SUS 1 2 3); in0=$(mstat 1 "$SIN")
            out0=$(msum "$SOUT" 2 3); fail0=$(msum $SFAIL 2 3); tf0=$(msum $TCPP 2 3)
            log "gossip_tcp: run $r/$REPEAT: $kind $WINDOW s"
            if [[ $kind == attack ]]; then
                # not through a function: $! must be the attacker itself
                ip netns exec "$IT_BRNS" timeout $((WINDOW + 30)) python3 "$TCPHOLD" "${IT_IP[1]}" "$IT_PORT" \
                    --src "$srcs" --per-src 4 --seconds "$WINDOW" >"$IT_DIR/gossiphold.$r" 2>&1 &
                hp=$!
            fi
            c0=$(cpu_s 1)
            end=$(($(it_now_ms) + WINDOW * 1000))
            while (($(it_now_ms) < end)); do
                v=$(awk '/^VmRSS:/ { print $2 }' "/proc/${IT_PID[1]}/status"); ((v > rss_max)) && rss_max=$v
                u=$(it_gossip_stat 1 budget_used); u=${u:-0}; ((u > used_max)) && used_max=$u
                for i in 1 2 3; do [[ "$(gview "$i")" == "${V0[$i]}" ]] || changed=$((changed + 1)); done
                sleep 0.5
            done
            c1=$(cpu_s 1)
            [[ -n "$hp" ]] && wait "$hp"
            # what the attacker left in node1's socket buffers drains
            # before the next window (an idle window must be idle)
            [[ -n "$hp" ]] && it_wait_until "(( \$(it_gossip_stat 1 tcp_in_open) + 0 == 0 ))" 60 >/dev/null
            M[rss,$kind]+=" $(awk -v a=$rss_max -v b=$rss0 'BEGIN { printf "%.1f", (a - b) / 1024 }')"
            M[budget,$kind]+=" $(awk -v a=$used_max 'BEGIN { printf "%.1f", a / 1048576 }')"
            M[cpu,$kind]+=" $(awk -v a="$c0" -v b="$c1" -v w="$WINDOW" 'BEGIN { printf "%.3f", (b - a) / w }')"
            M[in,$kind]+=" $(($(mstat 1 "$SIN") - in0))"
            M[out,$kind]+=" $(($(msum "$SOUT" 2 3) - out0))"
            M[fail,$kind]+=" $(($(msum $SFAIL 2 3) - fail0))"
            M[tcpp,$kind]+=" $(($(msum $TCPP 2 3) - tf0))"
            M[sus,$kind]+=" $(($(msum $SUS 1 2 3) - sus0))"
            M[views,$kind]+=" $changed"
            if [[ $kind == attack ]]; then
                local hold
                hold=$(tail -n1 "$IT_DIR/gossiphold.$r")
                M[aopen,$kind]+=" $(jq -r '.max_open // 0' <<<"$hold" 2>/dev/null)"
                M[amib,$kind]+=" $(jq -r '(.bytes // 0) / 1048576 | floor' <<<"$hold" 2>/dev/null)"
                M[adrop,$kind]+=" $(jq -r '.closed_by_peer // 0' <<<"$hold" 2>/dev/null)"
                log "  attacker: $hold"
            fi
            log "  $kind: RSS +${M[rss,$kind]##* } MB, budget ${M[budget,$kind]##* } MiB, CPU ${M[cpu,$kind]##* } s/s, TCP in ${M[in,$kind]##* }, out ${M[out,$kind]##* } (failed ${M[fail,$kind]##* }, fallback probes ${M[tcpp,$kind]##* }), suspicions ${M[sus,$kind]##* }, view changes $changed"
        done
    done
    row "gossip TCP hold: node1 RSS growth, MB (max)" "$(echo "${M[rss,idle]}" | median)" "$(echo "${M[rss,attack]}" | median)"
    row "node1 budget for unauthenticated input in use, MiB (max)" "$(echo "${M[budget,idle]}" | median)" "$(echo "${M[budget,attack]}" | median)"
    row "node1 CPU, s per s" "$(echo "${M[cpu,idle]}" | median)" "$(echo "${M[cpu,attack]}" | median)"
    row "TCP exchanges into node1 (push-pulls, TCP probes)" "$(echo "${M[in,idle]}" | median)" "$(echo "${M[in,attack]}" | median)"
    row "TCP exchanges by node2+node3 / failed" "$(echo "${M[out,idle]}" | median) / $(echo "${M[fail,idle]}" | median)" "$(echo "${M[out,attack]}" | median) / $(echo "${M[fail,attack]}" | median)"
    row "TCP fallback probes by node2+node3" "$(echo "${M[tcpp,idle]}" | median)" "$(echo "${M[tcpp,attack]}" | median)"
    row "suspicions raised (nodes 1-3)" "$(echo "${M[sus,idle]}" | median)" "$(echo "${M[sus,attack]}" | median)"
    row "view samples that changed (nodes 1-3)" "$(echo "${M[views,idle]}" | median)" "$(echo "${M[views,attack]}" | median)"
    row "attacker: open at once / MiB sent / dropped by node1" "-" "$(echo "${M[aopen,attack]}" | median) / $(echo "${M[amib,attack]}" | median) / $(echo "${M[adrop,attack]}" | median)"
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
for s in $SECTIONS; do
    declare -F "section_$s" >/dev/null || { echo "bench/hostile.sh: no section $s" >&2; exit 1; }
    "section_$s"
done
report
