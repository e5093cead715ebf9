#!/usr/bin/env bash
# tests/integration/sync.sh - db_sync = one (store/store.h pst_set_sync):
# 3 real pmgclusterd daemons, each with its own throwaway PostgreSQL
# (tests/integration/pg.sh), the test schema of pg.sh.
#
#   - the master's PostgreSQL names the daemon's capture connection in
#     synchronous_standby_names; the followers' do not; status says
#     sync need 1, active
#   - 40 single-row commits on the master: right when each commit returns
#     the change is already in a follower's pmgcm.log (held durably)
#   - both followers' daemons stopped: a commit on the master waits (its
#     backend waits in SyncRep, the psql has not returned, the status says
#     0 of 1 acknowledging, the log says so); a follower back: it returns
#   - a writer acknowledging every commit; the master's PostgreSQL is killed
#     and its data directory destroyed; node2 is promoted: every commit the
#     writer saw acknowledged is in node2's tables (and node3's)
#   - db_sync = off on a restarted master: synchronous_standby_names reset
#
# Needs root (PostgreSQL runs as the postgres user) and PostgreSQL 15.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-240}
. "$here/lib.sh"
. "$here/pg.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the sync tests need root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }

it_init 3
if [[ $IT_MODE == loopback ]]; then
    net=127.0.$((100 + $$ % 100))
    for i in 1 2 3; do IT_IP[i]=$net.$((10 + i)); done
fi
pg_init
ALL="1 2 3"
PW=$IT_DIR/join.pw
printf 'correct horse battery staple\n' >"$PW"
chmod 600 "$PW"

STOP_BAD=
ssn() { pg_val "$1" "SELECT current_setting('synchronous_standby_names')"; }
slot() { pg_val "$1" "SELECT 'pmgcm_' || oid FROM pg_database WHERE datname = current_database()"; }
show() {
    local i l
    for i in $1; do
        it_diag "node$i: $(pg_val "$i" "SELECT role || ' ' || master || ' ' || epoch || '/' || seq FROM pmgcm.state") ssn '$(ssn "$i")' store $(store "$i" | head -c 300)"
        grep -Ei 'sync|store' "$(it_log "$i")" | tail -n 4 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    return 0
}

# ---- cluster ------------------------------------------------------------------
for i in $ALL; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" || it_bail "schema on node$i"
    it_write_config_lc "$i" "node$i"
    pg_conf "$i" "db_sync=one"
done
for i in $ALL; do start_node "$i"; done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30 ||
    it_diag "the stores did not all say idle"
run 1 create --password-file "$PW"
((RC == 0)) || { show 1; it_bail "pmgcm create failed: $OUT"; }
FP1=$(it_fingerprint_of 1)
bad=
for i in 2 3; do
    run -t 120 "$i" join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
    ((RC == 0)) || bad+="node$i: exit $RC: $(first_line "$OUT"); "
done
if [[ -z "$bad" ]] && it_wait_until "in_sync '$ALL'" 30 &&
    it_wait_until "[[ \$(store 1 | jq -r '.sync.active') == true && \$(store 1 | jq -r '.sync.have') -ge 1 ]]" 30 &&
    [[ "$(ssn 1)" == "\"$(slot 1)\"" && -z "$(ssn 2)" && -z "$(ssn 3)" ]]; then
    it_ok "db_sync = one: node1's synchronous_standby_names is '$(ssn 1)' (its capture connection), the followers' empty; status $(store 1 | jq -c .sync)"
else
    it_not_ok "db_sync = one on a 3-node cluster"
    it_diag "$bad"
    show "$ALL"
    it_bail "no cluster"
fi

# ---- every returned commit is held by a follower ------------------------------------
bad=
for k in $(seq 1 40); do
    id=$((500000 + k))
    pg_sql 1 "INSERT INTO mail VALUES ($id, 'sync', 'sync $k', $k, now())" >/dev/null || { bad+="insert $id failed; "; continue; }
    n=0
    for j in 2 3; do
        n=$((n + $(pg_val "$j" "SELECT count(*) FROM pmgcm.log WHERE new->>'id' = '$id'")))
    done
    ((n >= 1)) || bad+="$id in no follower's log when its commit returned; "
done
if [[ -z "$bad" ]]; then
    it_ok "40 commits on node1: each was in a follower's pmgcm.log when it returned"
else
    it_not_ok "every returned commit is held by a follower"
    it_diag "${bad:0:600}"
    show "$ALL"
fi

# ---- too few followers: commits wait, and say so ---------------------------------------
stop_node 2
stop_node 3
it_wait_until "[[ \$(store 1 | jq -r '.sync.have') == 0 ]]" 30 || it_diag "node1 still counts followers: $(store 1 | jq -c .sync)"
echo "INSERT INTO mail VALUES (600001, 'sync', 'waits', 1, now());" >"$IT_DIR/wait.sql"
pg_bg 1 "$IT_DIR/wait.sql" "$IT_DIR/wait.out"
WAITPID=$PG_BG_PID
if it_wait_until "[[ \$(pg_val 1 \"SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'\") -ge 1 ]]" 20 &&
    kill -0 "$WAITPID" 2>/dev/null && grep -q 'db_sync needs 1 follower(s) to hold every change, 0 acknowledging' "$(it_log 1)"; then
    S=$(store 1 | jq -c .sync)
    start_node 2
    if it_wait_until "! kill -0 $WAITPID 2>/dev/null" 60 && wait "$WAITPID" &&
        [[ "$(pg_val 2 "SELECT count(*) FROM pmgcm.log WHERE new->>'id' = '600001'")" == 1 ]]; then
        it_ok "both followers down: the commit waits (backend in SyncRep, status $S, logged); node2 back: it returns ($IT_WAITED s), node2 holds it"
    else
        it_not_ok "the waiting commit returns once a follower is back"
        it_diag "psql $(kill -0 "$WAITPID" 2>/dev/null && echo running || echo ended): $(cat "$IT_DIR/wait.out" "$IT_DIR/wait.out.err" 2>/dev/null | head -c 300)"
        show "1 2"
    fi
else
    it_not_ok "with no follower a commit waits and the status says so"
    it_diag "SyncRep waiters $(pg_val 1 "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"), psql $(kill -0 "$WAITPID" 2>/dev/null && echo running || echo ended), log: $(grep -c 'db_sync needs' "$(it_log 1)")"
    show 1
    start_node 2
fi
start_node 3
it_wait_until "in_sync '$ALL'" 60 || it_diag "not all in sync again"

# ---- the master's disk is lost: every acknowledged commit survives -----------------------
# a writer that prints "ack ID" after each COMMIT returned
awk 'BEGIN { for (k = 1; k <= 100000; k++) {
    printf "INSERT INTO mail VALUES (%d, \x27sync\x27, \x27acked\x27, 0, now());\n", 700000 + k
    printf "\\echo ack %d\n", 700000 + k } }' >"$IT_DIR/acked.sql"
pg_bg 1 "$IT_DIR/acked.sql" "$IT_DIR/acked.out"
it_wait_until "(( \$(grep -c '^ack' '$IT_DIR/acked.out' 2>/dev/null) >= 300 ))" 60 || it_diag "the writer acknowledged only $(grep -c '^ack' "$IT_DIR/acked.out") commits"
# the master's server dies and its data directory is destroyed
pg_stop 1 immediate
rm -rf "${PG_DATA[1]}"
NACK=$(grep -c '^ack' "$IT_DIR/acked.out")
run 2 promote --force
PRC=$RC POUT=$OUT
lost=
if ((PRC == 0)) && it_wait_until "[[ \$(pg_val 2 \"SELECT role FROM pmgcm.state\") == master ]]" 30; then
    grep '^ack' "$IT_DIR/acked.out" | awk '{ print $2 }' | sort -n >"$IT_DIR/acked.ids"
    it_wait_until "[[ \$(pg_val 2 \"SELECT count(*) FROM mail WHERE id > 700000\") -ge $NACK ]]" 30
    pg_sql 2 "SELECT id FROM mail WHERE id > 700000 ORDER BY 1" >"$IT_DIR/present.ids" 2>/dev/null
    lost=$(comm -23 "$IT_DIR/acked.ids" "$IT_DIR/present.ids" | wc -l)
fi
if ((PRC == 0 && NACK >= 1)) && [[ "$lost" == 0 ]]; then
    it_ok "node1's PostgreSQL killed and its data directory destroyed under a writer: node2 promoted, all $NACK acknowledged commits are in its tables"
else
    it_not_ok "every acknowledged commit survives the loss of the master's disk"
    it_diag "promote exit $PRC: $(first_line "$POUT"); acknowledged $NACK, lost ${lost:-?} (first: $(comm -23 "$IT_DIR/acked.ids" "$IT_DIR/present.ids" 2>/dev/null | head -n 5 | paste -sd' '))"
    show "2 3"
fi
kill "$PG_BG_PID" 2>/dev/null
wait "$PG_BG_PID" 2>/dev/null

# ---- db_sync off: the setting goes ---------------------------------------------------
stop_node 2
pg_conf 2 "db_sync=off"
start_node 2
if it_wait_until "[[ -z \$(ssn 2) && \$(store 2 | jq -r '.sync.need') == 0 ]]" 30; then
    it_ok "node2 (master) restarted with db_sync = off: synchronous_standby_names reset"
else
    it_not_ok "db_sync = off resets synchronous_standby_names"
    show 2
fi

# ---- the end ------------------------------------------------------------------------------
stop_node 1
bad=$STOP_BAD
alive=
for i in $ALL; do it_alive_pid "$i" && { it_signal "$i" TERM; alive+="$i "; }; done
for i in $alive; do
    it_reap "$i" 15
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" 1 2 3
it_diag "took $(($(date +%s) - IT_T0)) s"
it_plan "$IT_TAPN"
exit 0
