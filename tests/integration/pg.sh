# tests/integration/pg.sh - throwaway PostgreSQL servers for integration
# tests of the store (store/store.h). Source it after lib.sh and call
# pg_init after it_init:
#
#   . "$here/lib.sh"; . "$here/pg.sh"
#   it_init 3
#   pg_init                   # one initdb (a template), cleanup chained
#   pg_start 1; pg_schema 1   # node 1's server, database pmg, test tables
#   pg_conf 1                 # db_* lines into node1.conf (after writing it)
#   pg_sql 1 "SELECT count(*) FROM mail"
#   pg_checksum 1             # one line per replicated table
#
# Every server listens on a Unix socket only (listen_addresses = ''), in its
# own directory under the test's temp dir ($IT_DIR/pg/nI), so servers of
# tests running at the same time never meet; Unix sockets are reachable from
# every network namespace, so the servers run in the root namespace. They
# run as the postgres user (initdb refuses root) with fsync off. pg_init
# chains pg_cleanup in front of lib.sh's EXIT trap: daemons are stopped
# first (they hold connections), then every server (immediate shutdown),
# then it_cleanup does the rest (namespaces, temp dir).
#
# Environment: PG_BINDIR (default: pg_config --bindir, else
# /usr/lib/postgresql/15/bin), PG_USER (default postgres).

PG_USER=${PG_USER:-postgres}
if [[ -z "${PG_BINDIR:-}" ]]; then
    for PG_BINDIR in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [[ -x "$PG_BINDIR/initdb" ]] && break
    done
fi
PG_DIR=             # $IT_DIR/pg
PG_TEMPLATE=        # an initdb'd data dir copied for every node
declare -a PG_SOCK PG_DATA PG_UP
# the test schema's replicated tables, in pg_checksum's order (every table
# of db_schemas with a primary key, minus PG_EXCLUDE)
PG_EXCLUDE=${PG_EXCLUDE:-public.local_cache}

# pg_as_user CMD...: CMD as the postgres user, from a directory it can read.
pg_as_user() { (cd / && runuser -u "$PG_USER" -- "$@"); }

pg_need() {
    local b
    for b in initdb pg_ctl postgres psql; do
        [[ -x "$PG_BINDIR/$b" ]] || it_bail "PostgreSQL not installed ($PG_BINDIR/$b missing; scripts/deps.sh installs postgresql)"
    done
    [[ $(id -u) == 0 ]] || it_bail "the PostgreSQL helpers need root (initdb runs as $PG_USER through runuser)"
    id "$PG_USER" >/dev/null 2>&1 || it_bail "no user $PG_USER"
}

# pg_init: a template cluster (one initdb for all nodes) and the cleanup hook.
pg_init() {
    pg_need
    PG_DIR=$IT_DIR/pg
    # the postgres user must traverse root's mktemp dir (0700)
    chmod 0711 "$IT_DIR" || it_bail "chmod $IT_DIR"
    mkdir -p "$PG_DIR" && chmod 0711 "$PG_DIR" || it_bail "mkdir $PG_DIR"
    trap pg_it_cleanup EXIT
    PG_TEMPLATE=$PG_DIR/template
    mkdir -m 0700 "$PG_TEMPLATE" && chown "$PG_USER:" "$PG_TEMPLATE" || it_bail "mkdir $PG_TEMPLATE"
    pg_as_user "$PG_BINDIR/initdb" -D "$PG_TEMPLATE" -A trust -U postgres --no-sync \
        --no-instructions -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 ||
        it_bail "initdb failed: $(tail -n 5 "$PG_DIR/initdb.log")"
}

pg_sock() { echo "$PG_DIR/n$1"; }
pg_conninfo() { echo "host=$(pg_sock "$1") dbname=pmg user=postgres"; }
pg_logfile() { echo "$PG_DIR/n$1/server.log"; }  # in the socket dir: the server writes it

# pg_start I: node I's server (created from the template on first start)
# with a database pmg; returns once it accepts connections. Prints nothing.
pg_start() {
    local i=$1 s d new=0
    s=$(pg_sock "$i")
    d=$PG_DIR/n$i.data
    if [[ ! -d "$d" ]]; then
        cp -a "$PG_TEMPLATE" "$d" || it_bail "copy of the template for node$i failed"
        mkdir -m 0700 -p "$s" && chown "$PG_USER:" "$s" || it_bail "mkdir $s"
        new=1
    fi
    PG_SOCK[i]=$s
    PG_DATA[i]=$d
    pg_as_user "$PG_BINDIR/pg_ctl" -D "$d" -l "$(pg_logfile "$i")" -w -t 60 \
        -o "-c listen_addresses='' -k $s -c fsync=off -c full_page_writes=off -c wal_level=logical -c max_slot_wal_keep_size=1GB -c shared_buffers=32MB -c max_connections=60 -c log_min_messages=warning" \
        start >>"$PG_DIR/n$i.ctl" 2>&1 || {
        it_diag "pg_ctl start node$i failed: $(tail -n 5 "$PG_DIR/n$i.ctl") $(tail -n 5 "$(pg_logfile "$i")")"
        return 1
    }
    PG_UP[i]=1
    if ((new)); then
        "$PG_BINDIR/psql" -X -q -h "$s" -U postgres -d postgres -c 'CREATE DATABASE pmg' >/dev/null ||
            { it_diag "CREATE DATABASE pmg on node$i failed"; return 1; }
    fi
    return 0
}

# pg_stop I [MODE]: stop node I's server (MODE fast, the default, or immediate).
pg_stop() {
    local i=$1 mode=${2:-fast} pid
    [[ -n "${PG_DATA[i]:-}" ]] || return 0
    pg_as_user "$PG_BINDIR/pg_ctl" -D "${PG_DATA[i]}" -m "$mode" -w -t 30 stop \
        >>"$PG_DIR/n$i.ctl" 2>&1
    if [[ -f "${PG_DATA[i]}/postmaster.pid" ]]; then
        pid=$(head -n1 "${PG_DATA[i]}/postmaster.pid")
        [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null
    fi
    PG_UP[i]=
}
pg_restart() { pg_stop "$1" && pg_start "$1"; }
pg_stop_all() {
    local i
    for i in "${!PG_DATA[@]}"; do
        [[ -n "${PG_UP[i]:-}" ]] && pg_stop "$i" immediate
    done
    return 0
}

# pg_sql I SQL: SQL on node I's database pmg; unaligned, tuples only, stops
# at the first error (psql exits non-zero then).
# Without SQL the statements are read from stdin.
pg_sql() {
    local i=$1
    if (($# > 1)); then
        "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$(pg_sock "$i")" -U postgres -d pmg -c "$2"
    else
        "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$(pg_sock "$i")" -U postgres -d pmg -f -
    fi
}
# pg_val I SQL: one value (first line); empty when the query failed.
pg_val() { pg_sql "$1" "$2" 2>/dev/null | head -n1; }

# pg_wal I: node I's WAL insert position now ("0/16B3F48").
pg_wal() { pg_val "$1" "SELECT pg_current_wal_insert_lsn()"; }
# pg_captured I LSN: 0 once node I's capture has dealt with every change
# committed before LSN (numbered, kept as divergence, or not its to
# capture): the store's slot (pmgcm_<db oid>) confirmed LSN or later.
# Also 0 when the node has no slot (out of a cluster: nothing captured).
# Poll it: it_wait_until "pg_captured 2 $(pg_wal 2)" 20.
pg_captured() {
    local v
    v=$(pg_val "$1" "SELECT coalesce((SELECT (confirmed_flush_lsn >= '$2'::pg_lsn)::text
            FROM pg_replication_slots WHERE slot_name = 'pmgcm_' ||
              (SELECT oid FROM pg_database WHERE datname = current_database())), 'true')")
    [[ "$v" == true ]]
}

# pg_schema I [VARIANT]: the test application's tables, the same on every
# node (VARIANT "mail_size_bigint" changes one column's type, for the
# schema mismatch test):
#   mail        bigint key; text, int, timestamptz; an index  replicated
#   rules       int key, a unique name                       replicated
#   rule_attr   composite key (rule_id, attr)                replicated
#   objects     bytea, jsonb, float8, numeric, text[]        replicated
#   local_cache text key, in db_exclude                      local
#   counters    no primary key                               local
pg_schema() {
    local i=$1 sizetype=int
    [[ "${2:-}" == mail_size_bigint ]] && sizetype=bigint
    pg_sql "$i" >/dev/null <<EOF
CREATE TABLE public.mail (id bigint PRIMARY KEY, node text, subject text, size $sizetype, ts timestamptz);
CREATE INDEX mail_ts_idx ON public.mail (ts);
CREATE TABLE public.rules (id int PRIMARY KEY, name text UNIQUE, prio int, enabled bool);
CREATE TABLE public.rule_attr (rule_id int, attr text, val text, PRIMARY KEY (rule_id, attr));
CREATE TABLE public.objects (id int PRIMARY KEY, data bytea, meta jsonb, ratio float8, amount numeric(14,3), tags text[]);
CREATE TABLE public.local_cache (k text PRIMARY KEY, v text);
CREATE TABLE public.counters (node text, n bigint, ts timestamptz);
EOF
}

# pg_tables I: the replicated tables of node I (schema.table, sorted): every
# table of schema public with a primary key, minus PG_EXCLUDE.
pg_tables() {
    pg_sql "$1" "SELECT n.nspname || '.' || c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'
          AND EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary)
          AND n.nspname || '.' || c.relname <> ALL (string_to_array('${PG_EXCLUDE// /}', ','))
        ORDER BY 1"
}

# pg_checksum I: one line per replicated table: "schema.table rows md5",
# md5 over every row's text in primary key order. Equal output on two nodes
# means equal data.
pg_checksum() {
    pg_sql "$1" 2>&1 <<EOF
\\pset fieldsep ' '
SELECT format('SELECT %L, count(*), coalesce(md5(string_agg(t::text, ''|'' ORDER BY %s)), ''-'') FROM %I.%I t',
              n.nspname || '.' || c.relname,
              (SELECT string_agg(format('t.%I', a.attname), ', ' ORDER BY k.ord)
                 FROM pg_index x, unnest(x.indkey) WITH ORDINALITY k(attnum, ord), pg_attribute a
                WHERE x.indrelid = c.oid AND x.indisprimary AND a.attrelid = c.oid AND a.attnum = k.attnum),
              n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'
   AND EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary)
   AND n.nspname || '.' || c.relname <> ALL (string_to_array('${PG_EXCLUDE// /}', ','))
 ORDER BY n.nspname, c.relname
\\gexec
EOF
}
# pg_checksum_local I: the same for the tables that stay local (PG_EXCLUDE
# and the table without a key), to show nobody touched them.
pg_checksum_local() {
    pg_sql "$1" 2>&1 <<'EOF'
\pset fieldsep ' '
SELECT 'public.local_cache', count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY k)), '-') FROM public.local_cache t;
SELECT 'public.counters', count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM public.counters t;
EOF
}

# pg_same "I J ...": every listed node's pg_checksum is the same (and
# non-empty). PG_SAME_DIFF describes the difference otherwise.
PG_SAME_DIFF=
pg_same() {
    local i c first= fi=
    PG_SAME_DIFF=
    for i in $1; do
        c=$(pg_checksum "$i")
        if [[ -z "$c" || "$c" == *ERROR* || "$c" == *error* ]]; then
            PG_SAME_DIFF="node$i: no checksum: ${c:0:300}"
            return 1
        fi
        if [[ -z "$fi" ]]; then
            first=$c fi=$i
        elif [[ "$c" != "$first" ]]; then
            PG_SAME_DIFF="node$fi: $(paste -sd';' <<<"$first") vs node$i: $(paste -sd';' <<<"$c")"
            return 1
        fi
    done
    return 0
}

# pg_conf I [KEY=VALUE...]: (re)writes node I's db_* config lines: db_conninfo
# of its server, db_exclude = PG_EXCLUDE, and any extra db_ settings given
# (e.g. db_log_retention_s=5). Call after the config file was written.
pg_conf() {
    local i=$1 f kv
    shift
    f=$IT_DIR/node$i.conf
    [[ -f "$f" ]] || it_bail "pg_conf: $f not written yet"
    sed -i '/^db_/d' "$f"
    {
        echo "db_conninfo = $(pg_conninfo "$i")"
        echo "db_exclude = $PG_EXCLUDE"
        for kv in "$@"; do echo "${kv%%=*} = ${kv#*=}"; done
    } >>"$f"
}

# pg_it_cleanup: the EXIT trap: daemons first (they hold connections), then
# every server, then lib.sh's it_cleanup with the script's exit status.
pg_it_cleanup() {
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
    done
    pg_stop_all
    if ((rc != 0 || IT_FAILS > 0)) && [[ -n "$PG_DIR" ]]; then
        for i in "${!PG_DATA[@]}"; do
            [[ -s "$(pg_logfile "$i")" ]] || continue
            it_diag "---- tail of PostgreSQL log of node$i"
            it_diag "$(tail -n 15 "$(pg_logfile "$i")")"
        done
    fi
    (exit "$rc")
    it_cleanup
}

# pg_bg I INFILE OUTFILE: psql running the statements of INFILE on node I in
# the background (stdout to OUTFILE, stderr to OUTFILE.err, stops at the
# first error); PG_BG_PID is psql's own pid (kill it to end the session).
PG_BG_PID=
pg_bg() {
    "$PG_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$(pg_sock "$1")" -U postgres -d pmg \
        -f - <"$2" >"$3" 2>"$3.err" &
    PG_BG_PID=$!
}

# ---- per-origin tables (db_origin_tables, store/store.h) -----------------------------
# PG_ORIGIN_TABLES: the db_origin_tables value for pg_origin_schema's tables.
PG_ORIGIN_TABLES="public.quarantine:cid, public.stats:cid"
# pg_origin_schema I: two per-origin tables (every node writes its own rows,
# keyed by its cid), like PMG's quarantine metadata and statistics:
#   quarantine  (cid, rid) key; text, int, timestamptz
#   stats       (cid, day, k) key; a counter
pg_origin_schema() {
    pg_sql "$1" >/dev/null <<'EOF2'
CREATE TABLE public.quarantine (cid int, rid bigint, subject text, n int NOT NULL DEFAULT 0, ts timestamptz, PRIMARY KEY (cid, rid));
CREATE TABLE public.stats (cid int, day int, k text, n bigint NOT NULL, PRIMARY KEY (cid, day, k));
EOF2
}
# pg_cid I: the cid node I's store knows itself by (pmgcm.state.cid).
pg_cid() { pg_val "$1" "SELECT cid FROM pmgcm.state"; }
# pg_origin_checksum I [TABLE:COL ...]: one line per per-origin table and
# origin: "schema.table cid rows md5" (md5 over the rows' text in primary
# key order), default PG_ORIGIN_TABLES. Equal output on two nodes means
# every origin's rows are equal.
pg_origin_checksum() {
    local i=$1 tc t c
    shift
    (($# == 0)) && set -- ${PG_ORIGIN_TABLES//,/ }
    for tc in "$@"; do
        t=${tc%%:*} c=${tc#*:}
        pg_sql "$i" 2>&1 <<EOF2
\\pset fieldsep ' '
SELECT format('SELECT %L, t.%I, count(*), md5(string_agg(t::text, ''|'' ORDER BY %s)) FROM %s t GROUP BY t.%I ORDER BY 2',
              '$t', '$c',
              (SELECT string_agg(format('t.%I', a.attname), ', ' ORDER BY k.ord)
                 FROM pg_index x, unnest(x.indkey) WITH ORDINALITY k(attnum, ord), pg_attribute a
                WHERE x.indrelid = '$t'::regclass AND x.indisprimary AND a.attrelid = x.indrelid AND a.attnum = k.attnum),
              '$t', '$c')
\\gexec
EOF2
    done
}
# pg_origin_max I TABLE COL KEY CID: max(KEY) of origin CID's rows in TABLE
# on node I (0 when none or unreadable).
pg_origin_max() {
    local v
    v=$(pg_val "$1" "SELECT coalesce(max($4), 0) FROM $2 WHERE $3 = $5")
    echo "${v:-0}"
}

# ---- a node's replication state, as the store and status tests read it ----------
# (a test may define its own version of one after sourcing this file)

# st I COLUMN: a column of node I's pmgcm.state
st() { pg_val "$1" "SELECT $2 FROM pmgcm.state"; }
# seq_of I: node I's pmgcm.state seq (0 when unreadable)
seq_of() { local v; v=$(st "$1" seq); echo "${v:-0}"; }
# pos I: node I's position "epoch/seq"
pos() { pg_val "$1" "SELECT epoch || '/' || seq FROM pmgcm.state"; }
# db I: node I's own "db" object in its status (compact JSON)
db() { it_status "$1" 2>/dev/null | jq -c --arg n "node$1" '.members? // . | .[] | select(.name == $n) | .db // empty' 2>/dev/null; }
db_field() { db "$1" | jq -r --arg f "$2" '.[$f] // empty' 2>/dev/null; }
# store I: node I's own "store" object
store() { it_envelope "$1" 2>/dev/null | jq -c '.store // empty' 2>/dev/null; }
# in_sync "I J ...": every listed node says db.state in-sync for itself
in_sync() {
    local i
    for i in $1; do [[ "$(db_field "$i" state)" == in-sync ]] || return 1; done
}
# master_is I NAME: node I's pmgcm.state says NAME is the master
master_is() { [[ "$(st "$1" master)" == "$2" ]]; }
# follows "I J ..." M: every listed node's view has node M as the only
# master, and its database says so too
follows() {
    local i r
    for i in $1; do
        r=$(it_roles_of "$i") || return 1
        [[ " $r " == *" node$2:"*":master "* ]] || return 1
        [[ $(grep -o ':master' <<<"$r" | wc -l) == 1 ]] || return 1
        ((i == $2)) || master_is "$i" "node$2" || return 1
    done
}
# converged "I J ...": the listed nodes' replicated tables are identical.
# Checksums cost; they are computed when every node's pmgcm.state position
# is the same, else at most every 5 s; positions are read at most every
# 300 ms (each read is a new PostgreSQL session: polling must not steal
# the CPU the daemons need to catch up).
CONV_LAST=0 CONV_POLL=0
converged() {
    local i p first= same=1 now
    now=$(it_now_ms)
    ((now - CONV_POLL < 300)) && return 1
    CONV_POLL=$now
    for i in $1; do
        p=$(pos "$i")
        [[ -z "$first" ]] && first=$p
        [[ -n "$p" && "$p" == "$first" ]] || same=0
    done
    now=$(it_now_ms)
    ((!same && now - CONV_LAST < 5000)) && return 1
    CONV_LAST=$now
    pg_same "$1"
}
# wait_converged "I J ..." SECS: until the nodes converge. SECS without
# progress ends the wait, not SECS in all: while any node's position still
# moves the wait goes on (under ThreadSanitizer, beside two other test
# runs, a 3 MB row takes long to apply; a node that is stuck does not
# move), up to 6 x SECS. IT_WAITED: the whole wait.
wait_converged() {
    local nodes=$1 secs=$2 t0 hard sig last= i
    CONV_LAST=0 CONV_POLL=0
    t0=$(it_now_ms)
    hard=$((t0 + 6 * secs * 1000))
    while :; do
        if it_wait_until "converged '$nodes'" "$secs"; then
            IT_WAITED=$(it_fmt_ms $(($(it_now_ms) - t0)))
            return 0
        fi
        sig=
        for i in $nodes; do sig+="$(pos "$i") "; done
        if [[ "$sig" == "$last" ]] || (($(it_now_ms) >= hard)) || (($(it_remaining) < 2)); then
            IT_WAITED=$(it_fmt_ms $(($(it_now_ms) - t0)))
            return 1
        fi
        [[ -n "$last" ]] && it_diag "wait_converged: still moving after $(it_fmt_ms $(($(it_now_ms) - t0))) s: $sig"
        last=$sig
    done
}

# ---- what the database scripts share: pmgcm on a node, node stop/start ---------
# (a script may define its own variant after sourcing this file)

# run [-t SECS] I ARGS...: `pmgcm ARGS...` on node I (its control socket);
# OUT = its output (stdout and stderr), RC = its exit status, DUR_MS = how
# long it took. SECS: at most that long (default 60).
run() {
    local t=60 t0
    [[ $1 == -t ]] && { t=$2; shift 2; }
    local i=$1
    shift
    t0=$(it_now_ms)
    OUT=$(PMGCM_SOCKET=$(it_sock "$i") timeout "$t" "$PMGCM" "$@" 2>&1)
    RC=$?
    DUR_MS=$(($(it_now_ms) - t0))
}
first_line() { head -n1 <<<"$1"; }
# stop_node I: SIGTERM node I's daemon (if it runs) and reap it within
# STOP_S seconds (default 20); a non-zero exit is added to STOP_BAD (for
# it_report_shutdown)
STOP_BAD=
stop_node() {
    it_alive_pid "$1" || return 0
    it_signal "$1" TERM
    it_reap "$1" "${STOP_S:-20}"
    [[ $IT_EXIT == 0 ]] || STOP_BAD+="node$1 exit $IT_EXIT; "
}
start_node() { it_start_node "$1" || it_diag "node$1: control socket did not answer within 10 s"; }
# start_with BIN I: node I's daemon from the binary BIN (an old build)
start_with() {
    PMGCLUSTERD=$1 it_start_node "$2" || it_diag "node$2: control socket did not answer within 10 s"
}

# pg_it_init N: it_init N, in loopback mode the nodes on our own /24
# (127.0.X.11...: every daemon's node API is on the default port), pg_init,
# and the join password in the file PW.
pg_it_init() {
    local i net
    it_init "$1"
    if [[ $IT_MODE == loopback ]]; then
        net=127.0.$((100 + $$ % 100))
        for ((i = 1; i <= $1; i++)); do IT_IP[i]=$net.$((10 + i)); done
    fi
    pg_init
    PW=$IT_DIR/join.pw
    printf 'correct horse battery staple\n' >"$PW"
    chmod 600 "$PW"
}

# pg_it_end "I J ..." SECS [NODE...]: the end of a script: SIGTERM every
# listed daemon still running, reap each within SECS (a non-zero exit
# joins STOP_BAD), one TAP point for the shutdown and the sanitizer logs of
# NODE... (default: the listed ones), the duration, the plan.
pg_it_end() {
    local bad=$STOP_BAD alive= i
    for i in $1; do it_alive_pid "$i" && { it_signal "$i" TERM; alive+="$i "; }; done
    for i in $alive; do
        it_reap "$i" "$2"
        [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
    done
    # shellcheck disable=SC2086 # a list of node numbers
    it_report_shutdown "$bad" ${3:-$1}
    it_diag "took $(($(date +%s) - IT_T0)) s"
    it_plan "$IT_TAPN"
}
