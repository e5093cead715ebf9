#!/usr/bin/env bash
# tests/integration/origin.sh - per-origin tables (db_origin_tables,
# store/store.h "per-origin tables") end to end: 4 real pmgclusterd daemons
# in their own network namespaces (as root; else on 127.0.x.y), each with
# its own throwaway PostgreSQL (tests/integration/pg.sh), the tables
# public.quarantine and public.stats keyed by the writing node's cid.
#
#   - a foreign cid's row is refused (INSERT, UPDATE, DELETE; the error
#     names the row's cid and this node's cid); TRUNCATE is refused
#   - every node runs a writer (psql, one transaction per step: an insert,
#     every 5th step an update, every 7th a delete, a stats upsert) with
#     its acknowledgements recorded, all four at once, all test long
#   - the master's daemon is killed (kill -9) for ORIGIN_DOWN_S (default
#     25; the issue says two minutes): the survivors' newest rows reach
#     each other while it is down, asserted before any promote
#   - node2 is promoted; node1's daemon returns (its rows written while it
#     was down flow out); node4's daemon is restarted; {1,2} and {3,4} are
#     partitioned (rows flow inside each side), then healed
#   - writers stop: on every node, every origin's rows are exactly the
#     origin's own (checksums per origin), and the counts are what the
#     acknowledgements say (steps - deletes; stats sum = steps)
#   - node5 joins later: the join's snapshot holds every origin's rows;
#     its own rows flow to everyone
#   - `pmgcm delete --purge` and the per-origin lag in `pmgcm status
#     --output-format json`
#
# Watermarks, not sleeps: "rows flow" means that every node's newest own
# row (at the time of the check) is on every other listed node within
# ORIGIN_FLOW_S (default 20) seconds; after the partition (ORIGIN_PARTITION_S,
# default 10) heals, within ORIGIN_HEAL_S (default 10) seconds of the
# members seeing each other alive again.
#
# Needs root (PostgreSQL runs as the postgres user) and PostgreSQL 15.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-1200}
. "$here/lib.sh"
. "$here/pg.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the origin tests need root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }

DOWN_S=${ORIGIN_DOWN_S:-25}
FLOW_S=${ORIGIN_FLOW_S:-20}
PART_S=${ORIGIN_PARTITION_S:-10}
HEAL_S=${ORIGIN_HEAL_S:-10}
STEP_SLEEP=${ORIGIN_STEP_SLEEP:-0.02}

it_init 5
if [[ $IT_MODE == loopback ]]; then
    net=127.0.$((100 + $$ % 100))
    for i in 1 2 3 4 5; do IT_IP[i]=$net.$((10 + i)); done
fi
pg_init
ALL4="1 2 3 4"

PW=$IT_DIR/join.pw
printf 'correct horse battery staple\n' >"$PW"
chmod 600 "$PW"

# network faults (lib.sh: it_partition) need netns; in loopback mode the
# partition is skipped.

# ---- helpers -----------------------------------------------------------------
since() { it_fmt_ms $(($(it_now_ms) - $1)); }
STOP_BAD=
kill9() { it_signal "$1" KILL; wait "${IT_PID[$1]}" 2>/dev/null; }
follows() {
    local i r
    for i in $1; do
        r=$(it_roles_of "$i") || return 1
        [[ " $r " == *" node$2:"*":master "* ]] || return 1
        [[ $(grep -o ':master' <<<"$r" | wc -l) == 1 ]] || return 1
    done
}
# self_cid I: the cid node I's status gives itself
self_cid() { it_status "$1" 2>/dev/null | jq -r --arg n "node$1" '.members? // . | .[] | select(.name == $n) | .cid' 2>/dev/null; }
opos() { pg_sql "$1" "SELECT origin || ':' || seq || '/' || recv_seq FROM pmgcm.opos ORDER BY origin" 2>/dev/null | paste -sd' '; }
show() {
    local i l
    for i in $1; do
        it_diag "node$i: cid ${CID[i]:-?} state $(pg_val "$i" "SELECT role || ' ' || master || ' ' || epoch || '/' || seq FROM pmgcm.state") opos [$(opos "$i")] db $(db "$i" | head -c 200) | roles $(it_roles_of "$i")"
        grep -Ei 'origin|store|snapshot' "$(it_log "$i")" | tail -n 4 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    return 0
}

# ---- writers -------------------------------------------------------------------
# step k of node I's writer (cid C), one transaction: insert quarantine row
# k; k % 5 == 0: update row k-3; k % 7 == 0: delete row k-5; stats (C,
# k/50, 'mails') += 1. Before each step the writer looks for a row
# 'stop-writers' in its local (not replicated) local_cache and quits
# cleanly: acks are exact (a step is acked only after its COMMIT).
# expected_rows A: quarantine rows after A steps.
expected_rows() { echo $(($1 - $1 / 7)); }
NSTEPS=30000
declare -a WPID CID
write_steps() { # write_steps C FIRST LAST
    awk -v c="$1" -v a="$2" -v b="$3" -v z="$STEP_SLEEP" 'BEGIN {
        for (k = a; k <= b; k++) {
            print "SELECT count(*) > 0 AS stop FROM local_cache WHERE k = \x27stop-writers\x27 \\gset"
            print "\\if :stop"; print "\\q"; print "\\endif"
            print "BEGIN;"
            printf "INSERT INTO quarantine VALUES (%d, %d, \x27mail %d from cid %d\x27, 0, now());\n", c, k, k, c
            if (k % 5 == 0) printf "UPDATE quarantine SET n = n + 1, subject = \x27updated %d\x27 WHERE cid = %d AND rid = %d;\n", k, c, k - 3
            if (k % 7 == 0) printf "DELETE FROM quarantine WHERE cid = %d AND rid = %d;\n", c, k - 5
            printf "INSERT INTO stats VALUES (%d, %d, \x27mails\x27, 1) ON CONFLICT (cid, day, k) DO UPDATE SET n = stats.n + 1;\n", c, int(k / 50)
            print "COMMIT;"
            printf "SELECT pg_sleep(%s);\n", z
            printf "\\echo ack %d\n", k
        } }'
}
start_writer() {
    local i=$1
    pg_bg "$i" "$IT_DIR/w$i.sql" "$IT_DIR/w$i.out"
    WPID[i]=$PG_BG_PID
}
acks() { local n; n=$(grep -c '^ack' "$IT_DIR/w$1.out" 2>/dev/null); echo "${n:-0}"; }
last_ack() { local a; a=$(grep '^ack' "$IT_DIR/w$1.out" 2>/dev/null | tail -n1); echo "${a#ack }"; }

# flows "I J ...": every listed node's newest own row right now reaches
# every other listed node within FLOW_S s. FLOW_DESC says how it went.
FLOW_DESC=
flows() {
    local nodes=$1 i j m t0 cond= desc=
    t0=$(it_now_ms)
    for i in $nodes; do
        m=$(pg_origin_max "$i" quarantine cid rid "${CID[i]}")
        ((m > 0)) || { FLOW_DESC="node$i holds no row of its own"; return 1; }
        desc+="node$i@$m "
        for j in $nodes; do
            ((i == j)) && continue
            cond+="(( \$(pg_origin_max $j quarantine cid rid ${CID[i]}) >= $m )) && "
        done
    done
    if it_wait_until "sleep 0.2; ${cond% && }" "$FLOW_S"; then
        FLOW_DESC="newest rows ${desc% } on every other node of {${nodes// /,}} within $IT_WAITED s"
        return 0
    fi
    FLOW_DESC="after $IT_WAITED s: "
    for i in $nodes; do
        m=${desc#*node$i@}; m=${m%% *}
        for j in $nodes; do
            ((i == j)) && continue
            (($(pg_origin_max "$j" quarantine cid rid "${CID[i]}") >= m)) ||
                FLOW_DESC+="node$j has node$i's rows up to $(pg_origin_max "$j" quarantine cid rid "${CID[i]}") of $m; "
        done
    done
    return 1
}
flow_point() { # flow_point "I J ..." DESCRIPTION
    if flows "$1"; then
        it_ok "$2: $FLOW_DESC"
    else
        it_not_ok "$2"
        it_diag "$FLOW_DESC"
        show "$1"
    fi
}

# same_origins "I J ...": the listed nodes' per-origin checksums are equal
# and every origin is there. SAME_DIFF describes a difference.
SAME_DIFF=
same_origins() {
    local i c first= fi=
    SAME_DIFF=
    for i in $1; do
        c=$(pg_origin_checksum "$i")
        if [[ -z "$c" || "$c" == *ERROR* ]]; then SAME_DIFF="node$i: ${c:0:200}"; return 1; fi
        if [[ -z "$fi" ]]; then
            first=$c fi=$i
        elif [[ "$c" != "$first" ]]; then
            SAME_DIFF="node$fi vs node$i: $(diff <(echo "$first") <(echo "$c") | grep '^[<>]' | head -n 6 | paste -sd';')"
            return 1
        fi
    done
}
CONV_POLL=0
converged() {
    local now
    now=$(it_now_ms)
    ((now - CONV_POLL < 1000)) && return 1
    CONV_POLL=$now
    same_origins "$1"
}

# ---- servers, schema, cluster ----------------------------------------------------
t0=$(it_now_ms)
for i in 1 2 3 4 5; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" && pg_origin_schema "$i" || it_bail "schema on node$i"
done
# node5 holds rows of its own before it joins (a foreign-looking origin row
# too: the snapshot replaces what it holds of the others' origins)
pg_sql 5 "INSERT INTO quarantine VALUES (2, 999999, 'junk', 0, now()); INSERT INTO rules VALUES (1, 'junk', 0, false)" >/dev/null
for i in 1 2 3 4 5; do
    it_write_config_lc "$i" "node$i"
    pg_conf "$i" "db_origin_tables=$PG_ORIGIN_TABLES"
done
it_diag "5 PostgreSQL servers up in $(since "$t0") s; db_origin_tables = $PG_ORIGIN_TABLES; master down ${DOWN_S} s"
for i in $ALL4; do start_node "$i"; done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle && \$(db_field 4 state) == idle ]]" 20 ||
    it_diag "the stores did not all say idle: $(db 1) $(db 2) $(db 3) $(db 4)"
run 1 create --password-file "$PW"
((RC == 0)) || { it_diag "create: $OUT"; show 1; it_bail "pmgcm create failed"; }
FP1=$(it_fingerprint_of 1)
bad=
for i in 2 3 4; do
    run -t 120 "$i" join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
    ((RC == 0)) || bad+="node$i: exit $RC: $(first_line "$OUT"); "
done
# every node knows its cid (status, and its store)
for i in $ALL4; do
    it_wait_until "[[ -n \$(pg_cid $i) && \$(pg_cid $i) != 0 ]]" 20
    it_wait_until "[[ \$(self_cid $i) =~ ^[1-9][0-9]*$ ]]" 10
    CID[i]=$(self_cid "$i")
    [[ "$(pg_cid "$i")" == "${CID[i]}" ]] || bad+="node$i: status cid '${CID[i]}', store cid '$(pg_cid "$i")'; "
done
# what became of each joiner's load WAL (nobody writes on them yet: their
# slots usually skip it; their own rows written from the next section on
# must reach every node either way)
for i in 2 3 4; do it_diag "node$i: $(grep -o "the load's WAL: .*" "$IT_DIR/node$i.log" 2>/dev/null | tail -n1)"; done
if [[ -z "$bad" ]] && it_wait_until "in_sync '$ALL4'" 30; then
    it_ok "node1 creates, nodes 2-4 join; cids ${CID[1]} ${CID[2]} ${CID[3]} ${CID[4]} (status = pmgcm.state), all in-sync"
else
    it_not_ok "a 4-node cluster with per-origin tables"
    it_diag "$bad"
    show "$ALL4"
    it_bail "no cluster"
fi

# ---- foreign rows refused -------------------------------------------------------------
pg_sql 1 "INSERT INTO quarantine VALUES (${CID[1]}, 0, 'node1 row zero', 0, now()); INSERT INTO stats VALUES (${CID[1]}, -1, 'seed', 1)" >/dev/null ||
    it_diag "node1 could not write its own row: $(pg_sql 1 "INSERT INTO quarantine VALUES (${CID[1]}, -5, 'x', 0, now())" 2>&1)"
it_wait_until "[[ \$(pg_val 2 'SELECT count(*) FROM quarantine WHERE cid = ${CID[1]} AND rid = 0') == 1 ]]" 20 ||
    it_diag "node1's row 0 did not reach node2"
CK2=$(pg_origin_checksum 2)
bad= ERR=
for sql in "INSERT INTO quarantine VALUES (${CID[1]}, 777, 'forged', 0, now())" \
    "INSERT INTO stats VALUES (${CID[3]}, 1, 'forged', 1)" \
    "UPDATE quarantine SET subject = 'forged' WHERE cid = ${CID[1]} AND rid = 0" \
    "UPDATE quarantine SET cid = ${CID[2]} WHERE cid = ${CID[1]} AND rid = 0" \
    "DELETE FROM quarantine WHERE cid = ${CID[1]}"; do
    o=$(pg_sql 2 "$sql" 2>&1) && { bad+="'$sql' succeeded; "; continue; }
    [[ "$o" == *"belongs to the node with cid ${CID[1]}"* || "$o" == *"belongs to the node with cid ${CID[3]}"* ]] &&
        [[ "$o" == *"this node (cid ${CID[2]}) writes only its own rows"* ]] || bad+="'$sql': $(first_line "$o"); "
    [[ -z "$ERR" ]] && ERR=$(first_line "$o")
done
# an own row moved to a foreign cid
pg_sql 2 "INSERT INTO quarantine VALUES (${CID[2]}, 0, 'node2 row zero', 0, now())" >/dev/null || bad+="node2's own row refused: $(pg_sql 2 "SELECT 1" 2>&1); "
o=$(pg_sql 2 "UPDATE quarantine SET cid = ${CID[3]} WHERE cid = ${CID[2]} AND rid = 0" 2>&1) && bad+="moving node2's row to cid ${CID[3]} succeeded; "
[[ "$o" == *"belongs to the node with cid ${CID[3]}"* ]] || bad+="moving a row to cid ${CID[3]}: $(first_line "$o"); "
CK2b=$(pg_origin_checksum 2 | grep -v " ${CID[2]} ")
[[ "$CK2b" == "$(grep -v " ${CID[2]} " <<<"$CK2")" ]] || bad+="node2's copy of the other origins changed; "
if [[ -z "$bad" ]]; then
    it_ok "on node2 (cid ${CID[2]}) INSERT/UPDATE/DELETE of other cids' rows refused, also moving an own row to another cid: '$ERR'"
else
    it_not_ok "a foreign cid's row is refused with a clear error"
    it_diag "$bad"
fi
bad=
for t in quarantine stats; do
    o=$(pg_sql 3 "TRUNCATE $t" 2>&1) && bad+="TRUNCATE $t succeeded on node3; "
    [[ "$o" == *pmgcm* ]] || bad+="TRUNCATE $t: $(first_line "$o"); "
done
o1=$(pg_sql 1 "TRUNCATE quarantine" 2>&1) && bad+="TRUNCATE quarantine succeeded on the master; "
if [[ -z "$bad" ]]; then
    it_ok "TRUNCATE of a per-origin table refused (on node3 and on the master): '$(first_line "$o")'"
else
    it_not_ok "TRUNCATE of a per-origin table refused"
    it_diag "$bad"
fi

# ---- writers on all four -----------------------------------------------------------------
for i in $ALL4; do write_steps "${CID[i]}" 1 "$NSTEPS" >"$IT_DIR/w$i.sql"; done
for i in $ALL4; do start_writer "$i"; done
t0=$(it_now_ms)
it_wait_until "(( \$(acks 1) > 50 && \$(acks 2) > 50 && \$(acks 3) > 50 && \$(acks 4) > 50 ))" 30 ||
    it_diag "writers slow to start: acks $(acks 1) $(acks 2) $(acks 3) $(acks 4); $(cat "$IT_DIR"/w*.out.err 2>/dev/null | head -n 3)"
flow_point "$ALL4" "4 writers at once, every node's rows on every node"

# ---- the master's daemon killed ---------------------------------------------------------
# node4's daemon stops first: the master's rows of the next seconds reach
# nodes 2 and 3 only; node4 must get them from them while node1 is down
stop_node 4
it_wait_until "(( \$(pg_origin_max 2 quarantine cid rid ${CID[1]}) >= $(last_ack 1) + 60 ))" 15
kill9 1
TK=$(it_now_ms)
it_diag "node4's daemon stopped; then node1's daemon (master) killed with kill -9 at acks $(acks 1) $(acks 2) $(acks 3) $(acks 4); every writer goes on into its own database"
o1() { pg_origin_checksum "$1" public.quarantine:cid | awk -v c="${CID[1]}" '$2 == c'; }
# what node1 sent before it died is applied on nodes 2 and 3 (they agree
# on node1's rows): that is what node4 must get from them
it_wait_until "sleep 0.2; [[ \$(o1 2) == \$(o1 3) ]]" "$FLOW_S" ||
    it_diag "nodes 2 and 3 disagree on node1's rows: $(o1 2) / $(o1 3)"
M1=$(($(pg_origin_max 2 quarantine cid rid "${CID[1]}") > $(pg_origin_max 3 quarantine cid rid "${CID[1]}") ? $(pg_origin_max 2 quarantine cid rid "${CID[1]}") : $(pg_origin_max 3 quarantine cid rid "${CID[1]}")))
M4=$(pg_origin_max 4 quarantine cid rid "${CID[1]}")
start_node 4
t0=$(it_now_ms)
if ((M1 > M4)) && it_wait_until "sleep 0.3; [[ \$(pg_origin_max 4 quarantine cid rid ${CID[1]}) -ge $M1 && \$(pg_origin_max 2 quarantine cid rid ${CID[1]}) -ge $M1 && \$(pg_origin_max 3 quarantine cid rid ${CID[1]}) -ge $M1 ]] && [[ \$(o1 2) == \$(o1 4) && \$(o1 3) == \$(o1 4) ]]" "$FLOW_S"; then
    it_ok "node1 (master) down, node4 back: it gets node1's rows it missed (up to $M1, it had $M4) from a live peer, $IT_WAITED s; nodes 2-4 hold the same rows of node1"
else
    it_not_ok "while an origin is down its rows come from another live peer"
    it_diag "node1's rows: node2 up to $(pg_origin_max 2 quarantine cid rid "${CID[1]}"), node3 $(pg_origin_max 3 quarantine cid rid "${CID[1]}"), node4 $(pg_origin_max 4 quarantine cid rid "${CID[1]}") (wanted $M1; node4 had $M4); $(o1 2) / $(o1 3) / $(o1 4)"
    show "2 3 4"
fi
it_wait_until "[[ \$(it_state_of 2 node1) =~ ^[D?]$ && \$(it_state_of 3 node1) =~ ^[D?]$ && \$(it_state_of 4 node1) =~ ^[D?]$ ]]" 20 ||
    it_diag "the survivors do not all see node1 down: $(it_state_of 2 node1) $(it_state_of 3 node1) $(it_state_of 4 node1)"
flow_point "2 3 4" "master down ($(since "$TK") s after the kill), no promote: the survivors' new rows (node4's written while its daemon was stopped too) reach each other"
# keep it down for DOWN_S, checking the flow again near the end
while (($(it_now_ms) - TK < (DOWN_S - 8) * 1000)); do sleep 1; done
# nobody promoted itself: node1 (dead) stays the only master in every
# survivor's view, and no survivor's store calls itself master
nobody_promoted() {
    local i
    roles_now=
    for i in 2 3 4; do roles_now+="node$i: [$(it_roles_of "$i")] $(pg_val "$i" "SELECT role FROM pmgcm.state"); "; done
    [[ $(grep -o 'node[234]:[0-9]*:master' <<<"$roles_now" | wc -l) == 0 &&
       $(grep -o 'node1:[0-9]*:master' <<<"$roles_now" | wc -l) == 3 &&
       $(grep -o '] master;' <<<"$roles_now" | wc -l) == 0 ]]
}
# (polled only so that a status query that times out under load is asked
# again: a promote, once done, does not undo itself)
if it_wait_until nobody_promoted 15; then
    it_ok "no promote by itself $(since "$TK") s after the master's kill: node1 is still the master in every survivor's view, no survivor's store is master"
else
    it_not_ok "while the master is down and nobody runs promote, no survivor becomes master"
    it_diag "$roles_now"
fi
r=$(pg_val 3 "SELECT role || ' ' || master FROM pmgcm.state")
flow_point "2 3 4" "still no promote $(since "$TK") s after the kill (node3's store: '$r'), rows still flow among the survivors"
while (($(it_now_ms) - TK < DOWN_S * 1000)); do sleep 0.5; done

# ---- promote node2 --------------------------------------------------------------------------
run -t 120 2 promote
((RC == 0)) || { it_diag "promote: exit $RC: $(first_line "$OUT"); again with --force"; run -t 120 2 promote --force; }
PRC=$RC POUT=$OUT
if ((PRC == 0)) && it_wait_until "follows '2 3 4' 2" 30 && flows "2 3 4"; then
    it_ok "after node1 was down $(since "$TK") s, node2 promoted ($(first_line "$POUT")); nodes 3, 4 follow; $FLOW_DESC"
else
    it_not_ok "node2 promoted while node1 is down; origin rows keep flowing"
    it_diag "promote exit $PRC: $POUT; $FLOW_DESC"
    show "2 3 4"
fi

# ---- node1 returns ------------------------------------------------------------------------------
a1=$(last_ack 1)
start_node 1
t0=$(it_now_ms)
if it_wait_until "follows '1 2 3 4' 2" 30 &&
    it_wait_until "(( \$(pg_origin_max 2 quarantine cid rid ${CID[1]}) >= $a1 && \$(pg_origin_max 3 quarantine cid rid ${CID[1]}) >= $a1 && \$(pg_origin_max 4 quarantine cid rid ${CID[1]}) >= $a1 ))" "$FLOW_S" &&
    flows "$ALL4"; then
    it_ok "node1's daemon restarted: it follows node2; the rows its writer committed while the daemon was down (up to step $a1) reach every node within $(since "$t0") s; $FLOW_DESC"
else
    it_not_ok "the old master returns and its rows written while it was down flow out"
    it_diag "node1's row $a1: node2 has up to $(pg_origin_max 2 quarantine cid rid "${CID[1]}"), node3 $(pg_origin_max 3 quarantine cid rid "${CID[1]}"), node4 $(pg_origin_max 4 quarantine cid rid "${CID[1]}"); $FLOW_DESC"
    show "$ALL4"
fi

# ---- node4 restarted (SIGTERM), and node3 killed and restarted ---------------------------------------
stop_node 4
kill9 3
# down until they have missed rows: node1's newest row on node2 is 20 past
# what nodes 3 and 4 hold of node1's
m34=$(pg_origin_max 3 quarantine cid rid "${CID[1]}")
m=$(pg_origin_max 4 quarantine cid rid "${CID[1]}")
((m > m34)) && m34=$m
it_wait_until "(( \$(pg_origin_max 2 quarantine cid rid ${CID[1]}) >= $m34 + 20 ))" 30 ||
    it_diag "node1's rows did not move on node2 while nodes 3 and 4 were down: $(pg_origin_max 2 quarantine cid rid "${CID[1]}") (3/4 had $m34)"
MISSED=$(($(pg_origin_max 2 quarantine cid rid "${CID[1]}") - m34))
start_node 4
start_node 3
if ((MISSED >= 20)) && flows "$ALL4"; then
    it_ok "node4's daemon restarted (SIGTERM) and node3's killed -9 and restarted, after they missed $MISSED of node1's rows: $FLOW_DESC"
else
    it_not_ok "after node restarts origin rows flow again"
    it_diag "missed $MISSED of node1's rows; $FLOW_DESC"
    show "$ALL4"
fi

# ---- a partition {1,2} | {3,4} --------------------------------------------------------------------
if it_partition "3 4"; then
    TP=$(it_now_ms)
    it_wait_until "[[ \$(it_state_of 1 node3) =~ ^[D?]$ && \$(it_state_of 3 node1) =~ ^[D?]$ ]]" 20 ||
        it_diag "the sides do not see each other down: node1 sees node3 '$(it_state_of 1 node3)', node3 sees node1 '$(it_state_of 3 node1)'"
    f12=0 f34=0
    flows "1 2" && f12=1
    D12=$FLOW_DESC
    flows "3 4" && f34=1
    D34=$FLOW_DESC
    if ((f12 && f34)); then
        it_ok "partition {1,2} | {3,4}: rows flow inside each side ({1,2}: $D12; {3,4}: $D34)"
    else
        it_not_ok "during a partition origin rows flow inside each side"
        it_diag "{1,2}: $D12; {3,4}: $D34"
        show "$ALL4"
    fi
    while (($(it_now_ms) - TP < PART_S * 1000)); do sleep 0.5; done
    it_heal_partition || it_diag "heal failed"
    t0=$(it_now_ms)
    it_wait_until "[[ \$(it_state_of 1 node3) == A && \$(it_state_of 3 node1) == A && \$(it_state_of 2 node4) == A && \$(it_state_of 4 node2) == A ]]" 30 ||
        it_diag "the sides do not see each other alive after $IT_WAITED s"
    HEAL=$IT_WAITED
    # the streams across the cut: TCP connections that went silent
    SS=$(ip netns exec "${IT_NS[1]}" ss -tnoi state established 2>/dev/null | grep -A1 "${IT_IP[3]}" | head -n 4 | tr -s ' ' | paste -sd' ' | cut -c1-400)
    fs=$FLOW_S
    FLOW_S=$HEAL_S
    if flows "$ALL4"; then
        it_ok "the partition heals (members alive again after $HEAL s): $FLOW_DESC"
    else
        it_not_ok "after the partition heals (members alive again after $HEAL s), origin rows flow between the sides within $HEAL_S s"
        it_diag "$FLOW_DESC"
        it_diag "node1's TCP connections to node3 at the heal: ${SS:-none}"
        FLOW_S=$fs
        flows "$ALL4"
        it_diag "later: $FLOW_DESC"
        show "$ALL4"
    fi
    FLOW_S=$fs
else
    it_ok "# SKIP partition: needs network namespaces (mode $IT_MODE)"
    it_ok "# SKIP partition heal: needs network namespaces"
fi

# ---- writers stop: every row exactly once, everywhere --------------------------------------------------
for i in $ALL4; do pg_sql "$i" "INSERT INTO local_cache VALUES ('stop-writers', 'x') ON CONFLICT DO NOTHING" >/dev/null; done
bad=
for i in $ALL4; do
    wait "${WPID[i]}"
    rc=$?
    ((rc == 0)) || bad+="node$i's writer exit $rc: $(head -c 200 "$IT_DIR/w$i.out.err"); "
done
declare -a A
for i in $ALL4; do A[i]=$(acks "$i"); done
[[ -z "$bad" ]] || it_diag "$bad"
it_diag "writers stopped after $(since "$t0") s since the heal; acks: node1 ${A[1]}, node2 ${A[2]}, node3 ${A[3]}, node4 ${A[4]}"
# the truth: each origin's rows on the origin itself, as the acks say
bad=
for i in $ALL4; do
    c=${CID[i]}
    # rows 0 of node1 and node2 were written before the writers
    extra=0
    ((i <= 2)) && extra=1
    want=$(($(expected_rows "${A[i]}") + extra))
    got=$(pg_val "$i" "SELECT count(*) FROM quarantine WHERE cid = $c")
    [[ "$got" == "$want" ]] || bad+="node$i holds $got of its own quarantine rows, the acks say $want; "
    want=$((A[i] + (i == 1 ? 1 : 0)))
    got=$(pg_val "$i" "SELECT sum(n) FROM stats WHERE cid = $c")
    [[ "$got" == "$want" ]] || bad+="node$i's own stats sum to $got, the acks say $want; "
    got=$(pg_val "$i" "SELECT max(rid) FROM quarantine WHERE cid = $c")
    [[ "$got" == "${A[i]}" ]] || bad+="node$i's newest own row is $got, the last ack ${A[i]}; "
done
if [[ -z "$bad" ]]; then
    it_ok "on every origin its own rows are exactly what its acks say (rows = steps - deletes, stats = steps)"
else
    it_not_ok "each origin's own rows match its acknowledgements"
    it_diag "$bad"
fi
t0=$(it_now_ms)
CONV_POLL=0
if it_wait_until "converged '$ALL4'" 90; then
    CK=$(pg_origin_checksum 1)
    it_ok "every node holds every origin's rows exactly ($(since "$t0") s after the writers stopped): $(awk '$1 == "public.quarantine" { printf "cid %s %s rows; ", $2, $3 }' <<<"$CK")checksums per origin equal on all four"
else
    it_not_ok "every node ends with every origin's rows exactly once"
    it_diag "$SAME_DIFF"
    for i in $ALL4; do it_diag "node$i: $(pg_origin_checksum "$i" | awk '{ printf "%s/%s=%s ", $1, $2, $3 }')"; done
    show "$ALL4"
fi
# and the positions: every node at every origin's last seq (pmgcm.opos
# lists all four origins, the same seq everywhere)
opos_seq() { opos "$1" | sed 's|/[0-9]*||g'; }
opos_same() {
    local i o
    o=$(opos_seq 1)
    [[ $(wc -w <<<"$o") == 4 ]] || return 1
    for i in 2 3 4; do [[ "$(opos_seq "$i")" == "$o" ]] || return 1; done
}
if it_wait_until opos_same 20; then
    it_ok "pmgcm.opos (origin:seq) is the same on every node, all four origins: [$(opos_seq 1)]"
else
    it_not_ok "every node's pmgcm.opos reaches every origin's last seq"
fi
it_diag "pmgcm.opos (origin:seq/recv_seq): node1 [$(opos 1)] node2 [$(opos 2)] node3 [$(opos 3)] node4 [$(opos 4)]"

# ---- per-origin lag in the status (db.origins: cid, seq, behind) ---------------------------------------
# status_origins_zero I: node I's view has, for each of nodes 1-4, db.origins
# naming all four cids, every one 0 behind
status_origins_zero() {
    it_status "$1" 2>/dev/null | jq -e --argjson c "[${CID[1]},${CID[2]},${CID[3]},${CID[4]}]" '
        [.members? // . | .[] | select(.name | test("^node[1-4]$"))] as $m
        | ($m | length) == 4 and ($m | map(((.db.origins // []) | map(.cid) | sort) as $h
                | ($c - $h | length) == 0 and ((.db.origins // []) | all(.behind == 0))) | all)' >/dev/null 2>&1
}
if it_wait_until "status_origins_zero 2 && status_origins_zero 3" 30; then
    it_ok "pmgcm status --output-format json: every node's db.origins names all four origins, each 0 behind ($IT_WAITED s): node1 $(it_status 2 | jq -c '.members? // . | .[] | select(.name == "node1") | .db.origins' | head -c 300)"
else
    it_not_ok "pmgcm status --output-format json shows every node caught up on every origin (db.origins, behind 0)"
    it_diag "$(it_status 2 2>&1 | jq -c '[.members? // . | .[] | {name, o: .db.origins}]' 2>&1 | head -c 1200)"
fi

# ---- node5 joins later: every origin's rows in its snapshot --------------------------------------------
start_node 5
it_wait_until "[[ \$(db_field 5 state) == idle ]]" 20 || it_diag "node5's store says $(db 5)"
FP2=$(it_fingerprint_of 2)
CKJ=$(pg_origin_checksum 2)
# node5 writes rows of its own all through its join: from the moment its
# store has a cid (the role, right before the snapshot loads) until well
# after join returned, one transaction each (a load moves the joiner's slot
# past its own WAL only when no other transaction committed meanwhile:
# these must all be captured and reach every node)
pg_sql 5 >"$IT_DIR/jw.out" 2>&1 <<'EOF2' &
DO $$
DECLARE c int; n int := 0; t0 timestamptz := clock_timestamp();
BEGIN
  LOOP
    EXIT WHEN clock_timestamp() > t0 + interval '150 s';
    EXIT WHEN EXISTS (SELECT 1 FROM local_cache WHERE k = 'stop-joinwriter');
    c := (SELECT s.cid FROM pmgcm.state s WHERE s.role <> 'none');
    IF c IS NOT NULL AND c <> 0 THEN
      n := n + 1;
      INSERT INTO quarantine VALUES (c, 100000 + n, 'written while joining', 0, clock_timestamp());
    END IF;
    COMMIT;
    PERFORM pg_sleep(0.002);
  END LOOP;
END $$;
EOF2
JW=$!
run -t 120 5 join "${IT_IP[2]}" --fingerprint "$FP2" --password-file "$PW"
JRC=$RC JOUT=$OUT
CID[5]=$(pg_cid 5)
JWN0=$(pg_val 5 "SELECT count(*) FROM quarantine WHERE rid > 100000")
# a good many more after join returned, then it stops
it_wait_until "(( \$(pg_val 5 'SELECT count(*) FROM quarantine WHERE rid > 100000') >= JWN0 + 50 ))" 30 ||
    it_diag "node5's join writer wrote $(pg_val 5 "SELECT count(*) FROM quarantine WHERE rid > 100000") rows ($JWN0 when join returned): $(head -c 300 "$IT_DIR/jw.out")"
pg_sql 5 "INSERT INTO local_cache VALUES ('stop-joinwriter', 'x') ON CONFLICT DO NOTHING" >/dev/null
wait "$JW"
CK5=$(pg_origin_checksum 5 | grep -v " ${CID[5]:-none} ")
if ((JRC == 0)) && [[ "$CK5" == "$CKJ" ]]; then
    it_ok "node5 joins later ($(it_fmt_ms "$DUR_MS") s): when join returns its snapshot holds every origin's rows ($(grep -c . <<<"$CK5") table/origin checksums equal), its junk row of cid ${CID[2]} replaced"
else
    it_not_ok "a node joining later receives all origin rows in its snapshot"
    it_diag "join exit $JRC: $(first_line "$JOUT")"
    it_diag "node2: $(paste -sd';' <<<"$CKJ")"
    it_diag "node5: $(paste -sd';' <<<"$CK5")"
    show "2 5"
fi
# the rows node5 wrote while joining: on every node, each exactly once
JWN=$(pg_val 5 "SELECT count(*) FROM quarantine WHERE rid > 100000")
# how many committed before its snapshot was loaded (its log's clock)
JWL=$(grep -o '^[0-9T:.-]*Z info store: snapshot loaded' "$IT_DIR/node5.log" 2>/dev/null | tail -n1 | cut -d' ' -f1)
JWB=$([[ -n "$JWL" ]] && pg_val 5 "SELECT count(*) FROM quarantine WHERE rid > 100000 AND ts < '$JWL'::timestamptz")
JWP=$(grep -o "the load's WAL: .*" "$IT_DIR/node5.log" 2>/dev/null | tail -n1)
jw_everywhere() {
    local i
    for i in 1 2 3 4; do
        [[ "$(pg_val "$i" "SELECT count(*) FROM quarantine WHERE cid = ${CID[5]} AND rid > 100000")" == "$JWN" ]] || return 1
    done
}
if [[ -n "${CID[5]}" && "${CID[5]}" != 0 ]] && ((JWN > JWN0 && JWN0 > 0)) && it_wait_until jw_everywhere 30; then
    it_ok "node5's own rows written while it joined reach every node: $JWN ($JWN0 when join returned, ${JWB:-?} before its snapshot was loaded; ${JWP:-no WAL line})"
else
    it_not_ok "the rows a joiner writes into its own per-origin table during and just after its snapshot are captured and replicated"
    it_diag "node5 cid ${CID[5]}: $JWN rows ($JWN0 at join's return, ${JWB:-?} before loaded); on nodes 1-4: $(for i in 1 2 3 4; do pg_val "$i" "SELECT count(*) FROM quarantine WHERE cid = ${CID[5]:-0} AND rid > 100000"; done | paste -sd' '); ${JWP:-no WAL line}; $(head -c 300 "$IT_DIR/jw.out")"
fi
ok5=0
if [[ -n "${CID[5]}" && "${CID[5]}" != 0 ]] &&
    pg_sql 5 "INSERT INTO quarantine VALUES (${CID[5]}, 1, 'node5 mail', 0, now()); INSERT INTO stats VALUES (${CID[5]}, 0, 'mails', 1)" >/dev/null 2>&1 &&
    it_wait_until "converged '1 2 3 4 5'" 30; then
    ok5=1
fi
if ((ok5)); then
    it_ok "node5 (cid ${CID[5]}) writes its own rows: they reach every node, all five equal"
else
    it_not_ok "the joiner's own rows reach every node"
    it_diag "$SAME_DIFF"
    show "1 2 3 4 5"
fi

# ---- pmgcm delete [--purge] -----------------------------------------------------
{
    # node5 deleted without --purge: its rows stay everywhere
    CKB=$(pg_origin_checksum 1)
    run 2 delete "${CID[5]}"
    drc=$RC dout=$OUT
    # the delete has reached everyone: node5 is out, nobody lists it
    no5() {
        local i
        [[ "$(it_cluster_of 5)" == null ]] || return 1
        for i in $ALL4; do [[ "$(it_roles_of "$i")" != *node5* ]] || return 1; done
    }
    bad=
    it_wait_until no5 30 || bad+="node5 still listed or in the cluster after $IT_WAITED s: $(it_cluster_of 5 | head -c 100); "
    ((drc == 0)) || bad+="delete ${CID[5]}: exit $drc: $(first_line "$dout"); "
    for i in $ALL4; do [[ "$(pg_origin_checksum "$i")" == "$CKB" ]] || bad+="node$i's rows changed; "; done
    if [[ -z "$bad" ]]; then
        it_ok "pmgcm delete ${CID[5]}: node5's rows stay on every node"
    else
        it_not_ok "pmgcm delete keeps the deleted node's rows"
        it_diag "$bad"
    fi
    # node4 deleted with --purge: its rows go everywhere
    stop_node 4
    run 2 delete "${CID[4]}" --purge
    drc=$RC dout=$OUT
    cond="[[ \$(pg_val 1 'SELECT count(*) FROM quarantine WHERE cid = ${CID[4]}') == 0 && \$(pg_val 2 'SELECT count(*) FROM quarantine WHERE cid = ${CID[4]}') == 0 && \$(pg_val 3 'SELECT count(*) FROM quarantine WHERE cid = ${CID[4]}') == 0 && \$(pg_val 1 'SELECT count(*) FROM stats WHERE cid = ${CID[4]}') == 0 && \$(pg_val 3 'SELECT count(*) FROM stats WHERE cid = ${CID[4]}') == 0 ]]"
    if ((drc == 0)) && it_wait_until "$cond" 30 && same_origins "1 2 3"; then
        it_ok "pmgcm delete ${CID[4]} --purge: node4's rows gone from every remaining node ($IT_WAITED s), the others' rows intact"
    else
        it_not_ok "pmgcm delete --purge removes the node's rows everywhere"
        it_diag "exit $drc: $(first_line "$dout"); rows of cid ${CID[4]}: node1 $(pg_val 1 "SELECT count(*) FROM quarantine WHERE cid = ${CID[4]}") node2 $(pg_val 2 "SELECT count(*) FROM quarantine WHERE cid = ${CID[4]}") node3 $(pg_val 3 "SELECT count(*) FROM quarantine WHERE cid = ${CID[4]}"); $SAME_DIFF"
    fi
}

# ---- the end ------------------------------------------------------------------------------------------------
bad=$STOP_BAD
alive=
for i in 1 2 3 4 5; do it_alive_pid "$i" && { it_signal "$i" TERM; alive+="$i "; }; done
for i in $alive; do
    it_reap "$i" 15
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" 1 2 3 4 5
it_diag "took $(($(date +%s) - IT_T0)) s"
it_plan "$IT_TAPN"
exit 0
