#!/usr/bin/env bash
# bench/origin.sh - per-origin rows (db_origin_tables, store/store.h)
# written on all nodes at once and replicated all-to-all:
#
#   sudo bash bench/origin.sh            (as root; ~4 min)
#   BENCH_QUICK=1 bash bench/origin.sh   (~1.5 min: shorter runs)
#
# BENCH_NODES (default 4) nodes, each with its own throwaway PostgreSQL 15
# server and a real pmgclusterd (loopback 127.1.X.11..; node1 runs `pmgcm
# create`, the others `pmgcm join`), one per-origin table bench_orows (cid,
# id) with PMG-statistics-like columns. bench/origin_lag runs one writer per
# node (single-row transactions of its own cid, libpq pipeline, paced at R
# rows/s per node) and one poller per node that asks every BENCH_POLL_MS
# (default 2) ms for every other origin's newest id:
#
#   lag = visible on a node - commit acknowledged on the origin; "each" is
#   every (row, receiving node) pair, "all" the slowest receiver per row
#   (applied everywhere). p50/p99 per rate in BENCH_RATES (per node,
#   default "250 1000"), BENCH_SECONDS (default 30) each.
#   rows/s sustained: the writers unpaced (BENCH_MAX_RATE rows/s per node
#   offered, default 20000) for BENCH_SECONDS: rows committed on all
#   origins / (first send -> the last row visible on every node), and the
#   lag at that load.
#
# Results: a table and one final line per figure, also in
# bench/out/origin.txt. Needs root, a built tree ($PMGCM_BUILD, default
# build/, with bench/origin_lag: `make -j2` there), postgresql-15, jq,
# python3. Not part of `make check`. BENCH_KEEP=1 keeps the temp dir (logs).
# Keep the machine otherwise idle.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
build=${PMGCM_BUILD:-$top/build}
findbin() { local c; for c in "$build/$1" "$build/$2/$1"; do [[ -x "$c" ]] && { echo "$c"; return; }; done; echo "$build/$2/$1"; }
PMGCLUSTERD=${PMGCLUSTERD:-$(findbin pmgclusterd daemon)}
PMGCM=${PMGCM:-$(findbin pmgcm cli)}
ORIGIN_LAG=${ORIGIN_LAG:-$build/bench/origin_lag}

QUICK=${BENCH_QUICK:-}
if [[ -n "$QUICK" && "$QUICK" != 0 ]]; then
    SECS=${BENCH_SECONDS:-10}
else
    QUICK= SECS=${BENCH_SECONDS:-30}
fi
N=${BENCH_NODES:-4}
RATES=${BENCH_RATES:-250 1000}
MAXRATE=${BENCH_MAX_RATE:-20000}
POLL_MS=${BENCH_POLL_MS:-2}
DRAIN=$((SECS * 2 > 30 ? SECS * 2 : 30))
PG_USER=${PG_USER:-postgres}
if [[ -z "${PG_BINDIR:-}" ]]; then
    for PG_BINDIR in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [[ -x "$PG_BINDIR/initdb" ]] && break
    done
fi
PSQL=$PG_BINDIR/psql

die() { echo "bench/origin.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

[[ $(id -u) == 0 ]] || die "needs root (PostgreSQL runs as $PG_USER through runuser)"
for b in "$PMGCLUSTERD" "$PMGCM" "$ORIGIN_LAG"; do
    [[ -x "$b" ]] || die "missing $b: build first (cd build && make -j2)"
done
for b in initdb pg_ctl psql; do [[ -x "$PG_BINDIR/$b" ]] || die "PostgreSQL not installed ($PG_BINDIR/$b)"; done
command -v jq >/dev/null || die "jq not installed"
command -v python3 >/dev/null || die "python3 not installed"
id "$PG_USER" >/dev/null 2>&1 || die "no user $PG_USER"
((N >= 2 && N <= 8)) || die "BENCH_NODES must be 2..8"

DIR=$(mktemp -d /tmp/pmgcm-bench-origin.XXXXXX) || die "mktemp"
chmod 0711 "$DIR"
NET=127.1.$((1 + $$ % 250))
declare -a DPID PGD CIDS
cleanup() {
    local rc=$? i
    trap - EXIT
    for i in "${!DPID[@]}"; do kill -TERM "${DPID[i]}" 2>/dev/null; done
    for i in "${!DPID[@]}"; do
        for _ in $(seq 50); do kill -0 "${DPID[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${DPID[i]}" 2>/dev/null
    done
    for i in "${!PGD[@]}"; do
        (cd / && runuser -u "$PG_USER" -- "$PG_BINDIR/pg_ctl" -D "${PGD[i]}" -m immediate -w stop) >/dev/null 2>&1
    done
    if [[ -n "${BENCH_KEEP:-}" ]]; then echo "bench/origin.sh: kept $DIR" >&2; else rm -rf "$DIR"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- PostgreSQL servers (as in bench/store.sh) ---------------------------------------
pg_as() { (cd / && runuser -u "$PG_USER" -- "$@"); }
pg_sock() { echo "$DIR/pg/s$1"; }
pg_ci() { echo "host=$(pg_sock "$1") dbname=pmg user=postgres"; }
pg_init() {
    mkdir -p "$DIR/pg" && chmod 0711 "$DIR/pg"
    mkdir -m 0700 "$DIR/pg/template" && chown "$PG_USER:" "$DIR/pg/template"
    pg_as "$PG_BINDIR/initdb" -D "$DIR/pg/template" -A trust -U postgres --no-sync \
        --no-instructions -E UTF8 --locale=C >"$DIR/pg/initdb.log" 2>&1 ||
        die "initdb: $(tail -n 3 "$DIR/pg/initdb.log")"
}
pg_start() {
    local i=$1 s d
    s=$(pg_sock "$i") d=$DIR/pg/d$i
    cp -a "$DIR/pg/template" "$d" && mkdir -m 0700 "$s" && chown "$PG_USER:" "$s" || die "pg dirs $i"
    PGD[i]=$d
    pg_as "$PG_BINDIR/pg_ctl" -D "$d" -l "$s/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $s -c fsync=off -c full_page_writes=off -c wal_level=logical -c max_slot_wal_keep_size=1GB -c shared_buffers=128MB -c max_wal_size=2GB -c max_connections=60 -c log_min_messages=warning" \
        start >>"$DIR/pg/ctl$i.log" 2>&1 || die "pg_ctl start $i: $(tail -n 3 "$s/server.log")"
    "$PSQL" -X -q -h "$s" -U postgres -d postgres -c 'CREATE DATABASE pmg' >/dev/null || die "createdb on $i"
}
sqlc() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h "$(pg_sock "$1")" -U postgres -d pmg -c "$2"; }
schema() {
    sqlc "$1" "CREATE TABLE bench_orows (cid int, id bigint, sender text, subject text, bytes int,
               spamlevel real, ts timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (cid, id))" >/dev/null
}

# ---- daemons ---------------------------------------------------------------------------
# ctl I: node I's status envelope (the control socket's raw answer)
ctl() {
    timeout 10 python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"status\n")
buf = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    buf += d
sys.stdout.write(buf.decode())
' "$DIR/ctl$1.sock"
}
field() { ctl "$1" 2>/dev/null | jq -r "$2" 2>/dev/null; }
ip_of() { echo "$NET.$((10 + $1))"; }
dstart() {
    local i=$1
    mkdir -p "$DIR/n$i"
    cat >"$DIR/n$i.conf" <<EOF
name = node$i
bind = $(ip_of "$i"):7946
data_dir = $DIR/n$i
control_socket = $DIR/ctl$i.sock
label = pmgcm-bench
status_port = 0
agent_port = 0
log_level = info
db_conninfo = $(pg_ci "$i")
db_origin_tables = public.bench_orows:cid
EOF
    "$PMGCLUSTERD" --config "$DIR/n$i.conf" </dev/null >>"$DIR/n$i.log" 2>&1 &
    DPID[i]=$!
    for _ in $(seq 100); do ctl "$i" >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "node$i's control socket did not answer (log: $(tail -n 3 "$DIR/n$i.log"))"
}
wait_state() { # wait_state I STATE TIMEOUT_S
    local t0
    t0=$(now_ms)
    while (($(now_ms) - t0 < $3 * 1000)); do
        [[ "$(field "$1" .store.state)" == "$2" ]] && return 0
        sleep 0.2
    done
    die "node$1's store not $2 after $3 s: $(field "$1" .store)"
}
PW=$DIR/pw
printf 'bench password for the origins\n' >"$PW" && chmod 600 "$PW"

# ---- figures ---------------------------------------------------------------------------
kv() { sed -n "s/.*[[:space:]]$2=\([^[:space:]]*\).*/\1/p" <<<"$(grep "^$1 " <<<"$3")"; }
T0=$(date +%s)
log "temp dir $DIR, $N nodes on $NET.11.., rates $RATES rows/s per node and unpaced ($MAXRATE offered) for ${SECS}s each${QUICK:+ (quick)}"

pg_init
for ((i = 1; i <= N; i++)); do pg_start "$i"; schema "$i"; dstart "$i"; done
for ((i = 1; i <= N; i++)); do wait_state "$i" idle 30; done
"$PMGCM" --socket "$DIR/ctl1.sock" create --password-file "$PW" >"$DIR/create.out" 2>&1 || die "create: $(cat "$DIR/create.out")"
FP=$(field 1 .fingerprint)
for ((i = 2; i <= N; i++)); do
    "$PMGCM" --socket "$DIR/ctl$i.sock" join "$(ip_of 1)" --fingerprint "$FP" --password-file "$PW" \
        >"$DIR/join$i.out" 2>&1 || die "join node$i: $(cat "$DIR/join$i.out")"
done
for ((i = 1; i <= N; i++)); do
    wait_state "$i" in-sync 60
    CIDS[i]=$(sqlc "$i" "SELECT cid FROM pmgcm.state")
    [[ "${CIDS[i]}" =~ ^[1-9][0-9]*$ ]] || die "node$i has no cid"
done
# the origin streams are up when a row of each origin is everywhere
for ((i = 1; i <= N; i++)); do sqlc "$i" "INSERT INTO bench_orows (cid, id) VALUES (${CIDS[i]}, 0)" >/dev/null; done
t0=$(now_ms)
while :; do
    ok=1
    for ((i = 1; i <= N; i++)); do [[ "$(sqlc "$i" "SELECT count(*) FROM bench_orows WHERE id = 0")" == "$N" ]] || ok=0; done
    ((ok)) && break
    (($(now_ms) - t0 > 60000)) && die "the first rows did not reach every node in 60 s"
    sleep 0.2
done
log "cluster of $N up (cids ${CIDS[*]:1}); origin streams flowing after $(($(now_ms) - t0)) ms"

NODEARGS=()
for ((i = 1; i <= N; i++)); do NODEARGS+=(--cid "${CIDS[i]}" --node "$(pg_ci "$i")"); done
declare -A RES RC
k=0
for r in $RATES max; do
    k=$((k + 1))
    rr=$r
    [[ $r == max ]] && rr=$MAXRATE
    sleep 2
    log "run $k: $rr rows/s per node offered on all $N nodes for ${SECS}s, every node polled every ${POLL_MS} ms"
    RES[$r]=$("$ORIGIN_LAG" "${NODEARGS[@]}" --rate "$rr" --seconds "$SECS" --start-id $((k * 100000000)) \
        --poll-ms "$POLL_MS" --drain-s "$DRAIN" 2>"$DIR/run$k.err")
    RC[$r]=$?
    sed 's/^/    /' <<<"${RES[$r]}" >&2
    [[ -s "$DIR/run$k.err" ]] && log "origin_lag: $(head -c 300 "$DIR/run$k.err")"
done
# every node holds every row (the PK rules out duplicates): counts per origin
bad=
for ((i = 1; i <= N; i++)); do
    c=$(sqlc "$i" "SELECT string_agg(cid || ':' || n, ' ' ORDER BY cid) FROM (SELECT cid, count(*) n FROM bench_orows GROUP BY cid) x")
    [[ -z "${first:-}" ]] && first=$c
    [[ "$c" == "$first" ]] || bad+="node$i $c vs node1 $first; "
done
CPU=
for ((i = 1; i <= N; i++)); do
    CPU+="node$i $(awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/${DPID[i]}/stat") s; "
done

# ---- report -------------------------------------------------------------------------------
mkdir -p "$top/bench/out"
out=$top/bench/out/origin.txt
{
    echo "bench/origin.sh: $(date '+%F %T'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $($PG_BINDIR/postgres --version 2>/dev/null)${QUICK:+, BENCH_QUICK}"
    echo "$N nodes, each its own PostgreSQL (fsync off, synchronous_commit off, Unix sockets) and pmgclusterd; one per-origin table (cid, id) written on every node at once"
    echo
    printf '   %-10s %10s %10s %8s %-6s %8s %8s %8s %9s\n' "offered" "achieved" "rows" "who" "" p50 p90 p99 max
    for r in $RATES max; do
        lbl="$r/s"
        [[ $r == max ]] && lbl="unpaced"
        for who in commit each all; do
            printf '   %-10s %10s %10s %8s %-6s %8s %8s %8s %9s\n' "$lbl" "$(kv writers achieved_rate "${RES[$r]}")" \
                "$(kv writers acked "${RES[$r]}")" "$who" "" "$(kv "$who" p50 "${RES[$r]}")" "$(kv "$who" p90 "${RES[$r]}")" \
                "$(kv "$who" p99 "${RES[$r]}")" "$(kv "$who" max "${RES[$r]}")"
        done
        echo "   $lbl: applied everywhere at $(kv applied rate "${RES[$r]}") rows/s ($(kv applied copies_rate "${RES[$r]}") row copies/s) over $(kv applied span_s "${RES[$r]}") s; every row on every node: $([[ ${RC[$r]} == 0 ]] && echo yes || echo "NO (origin_lag exit ${RC[$r]})")"
    done
    echo "   rates are per node offered / all nodes achieved; commit = the writer's commit latency on its own node (capture trigger included);"
    echo "   each = every (row, other node) pair, all = the slowest other node per row (commit on the origin -> visible everywhere), ms"
    echo "   row counts per origin equal on every node: ${bad:-yes}; daemon CPU (utime+stime) over the whole run: $CPU"
    echo
    for r in $RATES; do
        echo "origin lag at $r rows/s per node ($(kv writers achieved_rate "${RES[$r]}") rows/s on $N nodes): applied everywhere p50 $(kv all p50 "${RES[$r]}") ms p99 $(kv all p99 "${RES[$r]}") ms (each pair p99 $(kv each p99 "${RES[$r]}") ms)"
    done
    echo "origin rows sustained, all-to-all at $N nodes: $(kv applied rate "${RES[max]}") rows/s committed and applied everywhere (writers achieved $(kv writers achieved_rate "${RES[max]}") rows/s); lag at that load p50 $(kv all p50 "${RES[max]}") ms p99 $(kv all p99 "${RES[max]}") ms"
    echo "took $(($(date +%s) - T0)) s"
} | tee "$out"
echo "(saved to ${out#$top/})"
