#!/usr/bin/env bash
# scripts/demo.sh - a local 3-node pmgcm cluster with replicated PostgreSQL
# data and mirrored config files, to watch and poke. Run as root (each node's
# throwaway PostgreSQL server runs as the postgres user).
#
#   bash scripts/demo.sh           install what is missing, build, start one
#                                  PostgreSQL 15 server and one pmgclusterd per
#                                  node (127.0.0.1-3), form the cluster with
#                                  `pmgcm create` / `pmgcm join`, show
#                                  replication, a refused write, file
#                                  mirroring, kill -9 and catch-up; leave it
#                                  all running
#   bash scripts/demo.sh stop      stop every demo daemon and PostgreSQL server,
#                                  remove /tmp/pmgcm-demo
#   bash scripts/demo.sh start N   (re)start node N (1..3) of a running demo
#                                  (its PostgreSQL server too, if it is down)
#   bash scripts/demo.sh status    `pmgcm status` from every running node
#
# Everything lives in /tmp/pmgcm-demo: cluster.pw (the join password),
# nodeN.conf, nodeN/ (data dir), nodeN.sock (control socket), nodeN.log,
# nodeN.pid, nodeN-etc/ (the mirrored files_dir), nodeN-reload.log (what
# files_reload wrote), pg/nodeN/ (PostgreSQL's socket dir and server.log),
# pg/nodeN.data/. PMGCM_DEMO_DIR and PMGCM_DEMO_PORT override the directory
# and the gossip port (the node API, status and agent ports stay 7947-7949).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${PMGCM_DEMO_DIR:-/tmp/pmgcm-demo}
B=$top/build
PORT=${PMGCM_DEMO_PORT:-7946}
NODES=(1 2 3)
ENV=  # what the shown 'bash scripts/demo.sh ...' lines need in front
if [[ "$DEMO" != /tmp/pmgcm-demo ]]; then ENV+="PMGCM_DEMO_DIR=$DEMO "; fi
if [[ "$PORT" != 7946 ]]; then ENV+="PMGCM_DEMO_PORT=$PORT "; fi
ROWS=50000  # sample mail rows on node1
PG_USER=postgres
# The binaries: at the top of build/ or in their source subdirectories.
find_bin() { # find_bin NAME SUBDIR
    local c
    for c in "$B/$1" "$B/$2/$1"; do [[ -x "$c" ]] && { echo "$c"; return 0; }; done
    echo "$B/$2/$1"
}
set_bins() {
    DAEMON=$(find_bin pmgclusterd daemon)
    CLI=$(find_bin pmgcm cli)
    CLI_REL=${CLI#"$top"/}
}
set_bins
find_pg() {
    for PG_BINDIR in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [[ -x "$PG_BINDIR/initdb" ]] && return 0
    done
    PG_BINDIR=/usr/lib/postgresql/15/bin
}
find_pg
if [[ -t 1 ]]; then H=$'\e[1m'; C=$'\e[36m'; R=$'\e[0m'; else H=; C=; R=; fi

say() { printf '\n%s==> %s%s%s\n' "$H" "${PMGCM_DEMO_TIMES:+[$(since "$T_START") s] }" "$*" "$R"; }
die() { printf '\ndemo: %s\n' "$*" >&2; exit 1; }
now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
pause() { [[ -t 1 ]] && sleep "${1:-0.5}"; return 0; }  # for reading only

# wait_until CONDITION DEADLINE_S [INTERVAL_S]: poll (every 100 ms by
# default); sets WAITED (seconds, one decimal) and WAITED_MS.
wait_until() {
    local t0 now
    t0=$(now_ms)
    while :; do
        if eval "$1"; then
            now=$(now_ms); WAITED_MS=$((now - t0))
            WAITED=$(printf '%d.%d' $((WAITED_MS / 1000)) $((WAITED_MS % 1000 / 100)))
            return 0
        fi
        now=$(now_ms)
        ((now - t0 >= $2 * 1000)) && return 1
        sleep "${3:-0.1}"
    done
}
T_START=$(now_ms)
since() { # since T0_MS: seconds elapsed, one decimal
    local d=$(($(now_ms) - $1))
    printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# ---- PostgreSQL: one throwaway server per node, Unix socket only ----------------
pg_sock() { echo "$DEMO/pg/node$1"; }
pg_data() { echo "$DEMO/pg/node$1.data"; }
pg_as_user() { (cd / && runuser -u "$PG_USER" -- "$@"); }
# psql_n I [ARGS...]: psql on node I's database pmg, quiet, stops at an error
psql_n() { local i=$1; shift; "$PG_BINDIR/psql" -X -q -P pager=off -v ON_ERROR_STOP=1 -h "$(pg_sock "$i")" -U postgres -d pmg "$@"; }
# val I SQL: one value, empty when the query failed
val() { { psql_n "$1" -At -c "$2" 2>/dev/null || true; } | head -n1; }
pg_running() { # pg_running I: node I's postmaster.pid names a live process
    local p
    p=$(head -n1 "$(pg_data "$1")/postmaster.pid" 2>/dev/null) && [[ "$p" =~ ^[0-9]+$ ]] &&
        kill -0 "$p" 2>/dev/null
}
pg_need() {
    local b
    for b in initdb pg_ctl postgres psql; do
        [[ -x "$PG_BINDIR/$b" ]] || die "PostgreSQL 15 is not installed ($PG_BINDIR/$b missing; scripts/deps.sh installs postgresql-15)"
    done
    [[ $(id -u) == 0 ]] || die "run the demo as root: each node's PostgreSQL server runs as the $PG_USER user (through runuser)"
    id "$PG_USER" >/dev/null 2>&1 || die "no user $PG_USER (the postgresql-15 package creates it)"
}
pg_template() { # one initdb, copied for every node
    local t=$DEMO/pg/template
    mkdir -p "$DEMO/pg" && chmod 0711 "$DEMO/pg"
    mkdir -m 0700 "$t" && chown "$PG_USER:" "$t"
    pg_as_user "$PG_BINDIR/initdb" -D "$t" -A trust -U postgres --no-sync --no-instructions \
        -E UTF8 --locale=C >"$DEMO/pg/initdb.log" 2>&1 ||
        die "initdb failed: $(tail -n 5 "$DEMO/pg/initdb.log")"
}
pg_start() { # pg_start I: node I's server (a copy of the template the first time)
    local i=$1 s d new=0
    s=$(pg_sock "$i") d=$(pg_data "$i")
    pg_running "$i" && return 0
    if [[ ! -d "$d" ]]; then
        cp -a "$DEMO/pg/template" "$d"
        mkdir -m 0700 -p "$s" && chown "$PG_USER:" "$s"
        new=1
    fi
    pg_as_user "$PG_BINDIR/pg_ctl" -D "$d" -l "$s/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $s -c fsync=off -c full_page_writes=off -c wal_level=logical -c max_slot_wal_keep_size=1GB -c shared_buffers=32MB -c max_connections=40" \
        start >>"$DEMO/pg/node$i.ctl" 2>&1 ||
        die "PostgreSQL of node$i did not start: $(tail -n 5 "$s/server.log" 2>/dev/null)"
    if ((new)); then
        "$PG_BINDIR/psql" -X -q -h "$s" -U postgres -d postgres -c 'CREATE DATABASE pmg' >/dev/null
    fi
}
pg_stop() { # pg_stop I: fast shutdown, then kill -9 if it lingers
    local i=$1 d p
    d=$(pg_data "$i")
    pg_running "$i" || return 0
    pg_as_user "$PG_BINDIR/pg_ctl" -D "$d" -m fast -w -t 15 stop >/dev/null 2>&1 || true
    if pg_running "$i"; then
        p=$(head -n1 "$d/postmaster.pid")
        kill -KILL "$p" 2>/dev/null || true
    fi
}
schema() { # the mail gateway's tables, the same on every node
    psql_n "$1" >/dev/null <<'EOF'
CREATE TABLE mail (id bigint PRIMARY KEY, sender text, rcpt text, subject text, size int, received timestamptz);
CREATE TABLE rules (id int PRIMARY KEY, name text UNIQUE, prio int, enabled bool);
EOF
}
sample_data() { # node1's data before the cluster exists
    psql_n 1 >/dev/null <<EOF
INSERT INTO mail
SELECT g, 'user' || (g % 977) || '@' || (ARRAY['example.com','example.org','mail.test','lists.example.net'])[g % 4 + 1],
       'rcpt' || (g % 211) || '@corp.example',
       (ARRAY['Invoice ','Meeting notes ','Re: your order ','Newsletter #','Password reset '])[g % 5 + 1] || g,
       1000 + (g * 7919) % 250000,
       now() - (($ROWS - g) * interval '17 s')
  FROM generate_series(1, $ROWS) g;
INSERT INTO rules VALUES (1, 'block executables', 90, true), (2, 'virus scan', 80, true),
                         (3, 'spam score > 5', 50, true), (4, 'greylisting', 40, false),
                         (5, 'whitelist partners', 95, true);
EOF
}

# ---- the daemons ---------------------------------------------------------------------
sock() { echo "$DEMO/node$1.sock"; }
pid_of() { cat "$DEMO/node$1.pid" 2>/dev/null; }
running() { # the pid file names a live (not zombie) process
    local p st
    p=$(pid_of "$1") && [[ -n "$p" ]] && st=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ "${st:0:1}" != Z ]]
}
pmgcm_n() { local i=$1; shift; timeout 60 "$CLI" --socket "$(sock "$i")" "$@"; }
status_json() { timeout 5 "$CLI" --socket "$(sock "$1")" status --output-format json 2>/dev/null; }
state_of() { status_json "$1" | jq -r --arg n "node$2" '.members? // . | .[] | select(.name == $n) | .state' 2>/dev/null; }
db_state() { status_json "$1" | jq -r --arg n "node$1" '.members? // . | .[] | select(.name == $n) | .db.state // empty' 2>/dev/null; }
# view_seq I J: node J's db position (seq) in node I's view
view_seq() { status_json "$1" | jq -r --arg n "node$2" '.members? // . | .[] | select(.name == $n) | .db.seq // empty' 2>/dev/null; }
show_db_view() {
    show_cmd "node$1# pmgcm status --output-format json | jq -c '.[] | {name, state, db}'"
    status_json "$1" | jq -c '.members? // . | .[] | {name, state, db}'
}
all_show() { # all_show "I J ..." NODE STATE
    local i
    for i in $1; do [[ "$(state_of "$i" "$2")" == "$3" ]] || return 1; done
}
# every listed node shows every node of the second list A (alive, data in sync)
all_a() {
    local i j
    for i in $1; do for j in $2; do [[ "$(state_of "$i" "$j")" == A ]] || return 1; done; done
}

# shown commands: "nodeN# pmgcm ..." is `build/cli/pmgcm --socket DEMO/nodeN.sock ...`,
# "nodeN$ psql ..." is `psql -h DEMO/pg/nodeN -U postgres pmg ...`
show_cmd() { printf '%s%s%s\n' "$C" "$*" "$R"; }
run_pmgcm() { # run_pmgcm I ARGS...: shows and runs `pmgcm ARGS` on node I
    local i=$1; shift
    show_cmd "node$i# pmgcm $*"
    pmgcm_n "$i" "$@"
}
run_psql() { # run_psql I SQL: shows and runs it on node I (aligned output)
    show_cmd "node$1\$ psql -c \"$2\""
    psql_n "$1" -c "$2"
}
show_status() {
    show_cmd "node$1# pmgcm status"
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
    die "$* (everything is still running: inspect it, then '${ENV}bash scripts/demo.sh stop')"
}

write_config() {
    local i=$1
    mkdir -p "$DEMO/node$i" "$DEMO/node$i-etc"
    cat >"$DEMO/node$i.conf" <<CONF
# pmgclusterd configuration of demo node $i (no key_file, no peers: the
# cluster comes from 'pmgcm create' / 'pmgcm join')
name = node$i
bind = 127.0.0.$i:$PORT
data_dir = $DEMO/node$i
control_socket = $DEMO/node$i.sock
log_level = info
db_conninfo = host=$(pg_sock "$i") dbname=pmg user=postgres
db_schemas = public
files_dir = $DEMO/node$i-etc
files_reload = echo "\$(date +%T) files_reload: \$(ls -A \$PMGCM_FILES_DIR | wc -l) entries in \$PMGCM_FILES_DIR" >>$DEMO/node$i-reload.log
CONF
}

start_node() {
    local i=$1
    running "$i" && die "node$i is already running (pid $(pid_of "$i"))"
    [[ -f "$DEMO/node$i.conf" ]] || die "no $DEMO/node$i.conf: run '${ENV}bash scripts/demo.sh' first"
    pg_start "$i"
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
    # the servers after the daemons (which hold connections to them)
    for i in "${NODES[@]}"; do
        pg_running "$i" && { any=1; pg_stop "$i"; }
    done
    rm -rf "$DEMO"
    if ((any)); then echo "demo: stopped the demo nodes and their PostgreSQL servers, removed $DEMO"; fi
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
pg_need
echo "built ${DAEMON#"$top"/} and $CLI_REL"

if [[ -d "$DEMO" ]]; then
    say "Stopping the previous demo"
    stop_all
fi
listening=$(ss -Htuln 2>/dev/null | awk '{print $5}')
for i in "${NODES[@]}"; do
    for p in "$PORT" 7947 7948 7949; do
        if grep -qx "127.0.0.$i:$p" <<<"$listening"; then
            die "127.0.0.$i:$p is already in use by another program (not this demo): stop it (or pick another gossip port with PMGCM_DEMO_PORT=...)"
        fi
    done
done
mkdir -p "$DEMO"
chmod 0711 "$DEMO"  # the postgres user reaches its directories below

# ---- 1: PostgreSQL ------------------------------------------------------------------------
say "Starting one throwaway PostgreSQL server per node (Unix socket only, fsync off)"
t0=$(now_ms)
pg_template
for i in "${NODES[@]}"; do pg_start "$i"; schema "$i"; done
sample_data 1
echo "3 servers up, the same tables on each, $ROWS sample mails on node1 only ($(since "$t0") s):"
for i in "${NODES[@]}"; do
    echo "  node$i: socket dir $(pg_sock "$i"), mail rows: $(val "$i" 'SELECT count(*) FROM mail')"
done
echo "tables (every table with a primary key in db_schemas is replicated):"
psql_n 1 -c '\d mail' | sed 's/^/    /'
PSQL=psql; command -v psql >/dev/null || PSQL=$PG_BINDIR/psql
echo "In what follows, ${C}nodeN\$ psql${R} is '$PSQL -h $DEMO/pg/nodeN -U postgres pmg'"
echo "and ${C}nodeN# pmgcm${R} is '$CLI_REL --socket $DEMO/nodeN.sock'."

# ---- 2: daemons, create, join ---------------------------------------------------------------
say "Starting 3 daemons: 127.0.0.1:$PORT, 127.0.0.2:$PORT, 127.0.0.3:$PORT (no shared key: not a cluster yet)"
for i in "${NODES[@]}"; do write_config "$i"; done
echo "node1's config ($DEMO/node1.conf):"
sed 's/^/    /' "$DEMO/node1.conf"
for i in "${NODES[@]}"; do
    start_node "$i"
    echo "node$i: pid $(pid_of "$i"), log $DEMO/node$i.log"
done
wait_until "[[ \$(db_state 1) == idle && \$(db_state 2) == idle && \$(db_state 3) == idle ]]" 30 ||
    fail "the daemons' stores did not all connect to their databases within 30 s: $(db_state 1) $(db_state 2) $(db_state 3)"

printf 'correct horse battery staple\n' >"$DEMO/cluster.pw"
chmod 600 "$DEMO/cluster.pw"
say "node1 creates the cluster (its $ROWS rows become the cluster's data)"
run_pmgcm 1 create --password-file "$DEMO/cluster.pw" || fail "pmgcm create failed"
pause
run_pmgcm 1 join-cmd || fail "pmgcm join-cmd failed"
FP=$(pmgcm_n 1 join-cmd 2>/dev/null | grep -o -- '--fingerprint [^ ]*' | cut -d' ' -f2 || true)
[[ -n "$FP" ]] || fail "no fingerprint from 'pmgcm join-cmd'"

for i in 2 3; do
    say "node$i joins: TLS to node1 (fingerprint pinned, password checked), then a snapshot of the data"
    t0=$(now_ms)
    run_pmgcm "$i" join 127.0.0.1 --fingerprint "$FP" --password-file "$DEMO/cluster.pw" ||
        fail "pmgcm join on node$i failed"
    echo "(join returned after $(since "$t0") s)"
    run_psql "$i" "SELECT count(*), max(received) FROM mail"
done

wait_until "all_a '1 2 3' '1 2 3'" 30 || fail "the nodes did not all show each other A within 30 s"
say "The cluster: every node alive and its data in sync"
show_status 1
echo "STATE: A alive (and data in sync), S syncing, ? suspect, D dead, L left."
pause 1

# ---- 3: replication -------------------------------------------------------------------------
say "A write on the master (node1) appears on node2 and node3"
run_psql 3 "SELECT id, sender, subject FROM mail WHERE id > $ROWS"
t0=$(now_ms)
run_psql 1 "INSERT INTO mail VALUES ($ROWS + 1, 'alice@example.com', 'rcpt1@corp.example', 'Hello from the master', 4242, now())"
seen() { [[ "$(val 2 "SELECT count(*) FROM mail WHERE id = $ROWS + 1")" == 1 &&
            "$(val 3 "SELECT count(*) FROM mail WHERE id = $ROWS + 1")" == 1 ]]; }
wait_until seen 10 0.02 || fail "the new row did not reach node2 and node3 within 10 s"
echo "-> on node2 and node3 $((WAITED_MS)) ms after the INSERT returned (polled with psql):"
run_psql 3 "SELECT id, sender, subject FROM mail WHERE id > $ROWS"
pause 1

say "A write on a follower is refused (writes go to the master)"
set +e
run_psql 2 "UPDATE rules SET enabled = false WHERE name = 'virus scan'"
rc=$?
set -e
((rc != 0)) || fail "the write on node2 was not refused"
echo "(psql exit status $rc; node2's rules are unchanged)"
pause 1

# ---- 4: mirrored files -------------------------------------------------------------------------
say "A file dropped into node1's files_dir ($DEMO/node1-etc) appears on node2 and node3"
mkdir -p "$DEMO/node1-etc/templates"
show_cmd "node1\$ printf ... > $DEMO/node1-etc/pmg.conf; printf ... > $DEMO/node1-etc/templates/main.cf.in"
printf 'section: admin\n\temail admin@corp.example\n\nsection: spam\n\tbounce_score 10\n' >"$DEMO/node1-etc/pmg.conf"
printf 'myhostname = [%% pmg.hostname %%]\nsmtpd_tls_security_level = may\n' >"$DEMO/node1-etc/templates/main.cf.in"
t0=$(now_ms)
mirrored() {
    local i
    for i in 2 3; do
        cmp -s "$DEMO/node1-etc/pmg.conf" "$DEMO/node$i-etc/pmg.conf" &&
            cmp -s "$DEMO/node1-etc/templates/main.cf.in" "$DEMO/node$i-etc/templates/main.cf.in" &&
            [[ -s "$DEMO/node$i-reload.log" ]] || return 1
    done
}
wait_until mirrored 20 || fail "the files did not reach node2 and node3 (with their reload hook run) within 20 s"
echo "-> on node2 and node3, reload hook run, $(since "$t0") s after the write (the master scans every 2 s):"
show_cmd "node3\$ find $DEMO/node3-etc -type f | xargs ls -l; cat $DEMO/node3-reload.log"
find "$DEMO/node3-etc" -type f -print0 | xargs -0 ls -l | sed "s|$DEMO/||"
cat "$DEMO/node3-reload.log"
pause 1

# ---- 5: kill -9, writes meanwhile, catch-up by deltas -------------------------------------------------
say "kill -9 of node3's daemon (its PostgreSQL keeps running); the others find out by themselves"
t0=$(now_ms)
show_cmd "kill -9 \$(cat $DEMO/node3.pid)"
kill -9 "$(pid_of 3)"
wait_until "all_show '1 2' 3 D" 60 || fail "node1 and node2 did not show node3 dead within 60 s"
echo "-> node1 and node2 show node3 as D $(since "$t0") s after the kill:"
show_status 1
pause 1

say "Writes on the master while node3 is down"
SNAP3=$(val 3 'SELECT snapshots FROM pmgcm.state')
run_psql 1 "INSERT INTO mail SELECT g, 'batch@example.com', 'rcpt@corp.example', 'written while node3 was down', 2000, now() FROM generate_series($ROWS + 2, $ROWS + 10001) g"
run_psql 1 "UPDATE rules SET prio = prio + 1 WHERE enabled"
# the master numbers the changes as logical decoding delivers their
# commits; node2 applies them; node1 learns node2's position by gossip
wait_until "[[ \$(val 1 \"SELECT confirmed_flush_lsn >= pg_current_wal_insert_lsn() FROM pg_replication_slots WHERE slot_name LIKE 'pmgcm%'\") == t ]]" 10 || true
HEAD=$(val 1 'SELECT seq FROM pmgcm.state')
wait_until "[[ \$(view_seq 1 1) == $HEAD && \$(view_seq 1 2) == $HEAD ]]" 10 || true
echo "node1's view: node3 is dead and behind by the changes it missed (db.lag_changes):"
show_db_view 1
echo "node3's position in its own database (pmgcm.state) is where it stopped:"
run_psql 3 "SELECT role, master, epoch, seq, snapshots FROM pmgcm.state"
pause 1

say "Restarting node3 with the same config: it rejoins and catches up from the change log"
t0=$(now_ms)
show_cmd "${ENV}bash scripts/demo.sh start 3"
start_node 3
N1=$(val 1 'SELECT count(*) FROM mail')
caught_up() {
    [[ "$(val 3 'SELECT count(*) FROM mail')" == "$N1" && "$(db_state 3)" == in-sync ]] &&
        all_a '1 3' '1 2 3'
}
wait_until caught_up 60 || fail "node3 did not catch up within 60 s (db state: $(db_state 3))"
echo "-> node3 is A and in sync again $(since "$t0") s after the restart"
# the others learn node3's position by gossip, a moment later
wait_until "[[ \$(view_seq 1 3) == \$(val 1 'SELECT seq FROM pmgcm.state') ]]" 10 || true
show_db_view 1
run_psql 3 "SELECT role, master, epoch, seq, snapshots FROM pmgcm.state"
SNAP3B=$(val 3 'SELECT snapshots FROM pmgcm.state')
if [[ "$SNAP3B" == "$SNAP3" ]]; then
    echo "(snapshots still $SNAP3B: node3 caught up by deltas, not by a new snapshot)"
else
    echo "(snapshots went from $SNAP3 to $SNAP3B: node3 took a new snapshot)"
fi
pause 1

say "Promote is refused while the master is alive"
set +e
run_pmgcm 2 promote
set -e
echo "(with node1 down, 'pmgcm promote --force' on node2 makes it master: it first catches up from the most advanced live node)"

say "Everything is still running ($(since "$T_START") s). Try:"
cat <<EOT
  $PSQL -h $DEMO/pg/node1 -U postgres pmg        # node1's database (the master); node2, node3 alike
  $PSQL -h $DEMO/pg/node2 -U postgres pmg -c "INSERT INTO rules VALUES (9, 'x', 1, true)"   # refused
  $CLI_REL --socket $DEMO/node1.sock status
  $CLI_REL --socket $DEMO/node2.sock status --output-format json | jq
  curl -s 'http://127.0.0.1:7948/readyz?verbose'     # node1's readiness (the status port)
  curl -s http://127.0.0.1:7948/metrics | grep pmgcm_db
  chromium http://127.0.0.1:7948/                    # the cluster panel (any browser on this machine; read-only)
  echo hello > $DEMO/node1-etc/motd            # mirrored to node2-etc and node3-etc within ~2 s
  cat $DEMO/node2-reload.log                    # each run of files_reload on node2
  kill -9 \$(cat $DEMO/node2.pid)      # crash node2: the others show it D
  ${ENV}bash scripts/demo.sh start 2        # start node2 again: it rejoins and catches up by itself
  kill -9 \$(cat $DEMO/node1.pid); $CLI_REL --socket $DEMO/node2.sock promote --force
  ${ENV}bash scripts/demo.sh status         # status from every running node
  tail -f $DEMO/node1.log
  ${ENV}bash scripts/demo.sh stop           # stop daemons and PostgreSQL servers, remove $DEMO
EOT
