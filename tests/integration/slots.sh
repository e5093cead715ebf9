#!/usr/bin/env bash
# tests/integration/slots.sh - the parallel snapshot and the replication
# slots while the daemons run (store/snapshot.c, store/capture.c): 3 real
# pmgclusterd daemons, each with its own throwaway PostgreSQL
# (tests/integration/pg.sh), the test schema of pg.sh (4 replicated
# tables). Every check ends with the replicated tables' checksums identical
# (polled, never slept for):
#
#   - node2 joins while a writer commits on node1 (inserts into mail,
#     updates of rules, rule_attr and objects): the master copies the 4
#     tables over 2 connections sharing one exported snapshot (node2's
#     db_snapshot_jobs = 2: each loader takes a second table once its
#     first is in), node2 loads them in parallel; after the writer: every
#     acknowledged row on node2, none twice (ids checked, checksums equal).
#     node3 (db_snapshot_jobs = 1) joins in one transaction.
#   - the master's slot dropped by hand while its daemon runs and a writer
#     commits (its walsender terminated, pg_drop_replication_slot): the
#     daemon re-makes it (slot_repairs), the log restarts, the followers
#     resync; nothing lost. The same for a follower's slot: it resyncs.
#   - `pmgcm delete` of a dead node (node3 down): the master's server holds
#     only its own slot; node3, back, learns it was removed and drops its
#     slot on its own server (slots are per node, on each node's server)
#
# Needs root (PostgreSQL runs as the postgres user) and PostgreSQL 15.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-600}
. "$here/lib.sh"
. "$here/pg.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the slot tests need root (PostgreSQL runs as postgres)"; exit 0; }
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
show() {
    local i l
    for i in $1; do
        it_diag "node$i: $(pg_val "$i" "SELECT role || ' ' || master || ' ' || epoch || '/' || seq || ' loaded ' || loaded || ' snapshots ' || snapshots FROM pmgcm.state") slot '$(slot_of "$i")' store $(store "$i" | head -c 300)"
        grep -Ei 'slot|snapshot|error' "$(it_log "$i")" | tail -n 5 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    return 0
}
# slot_of I: node I's pmgcm slot on its own server ("name wal_status"), or ""
slot_of() { pg_val "$1" "SELECT slot_name || ' ' || coalesce(wal_status, '-') FROM pg_replication_slots WHERE database = current_database() AND slot_name LIKE 'pmgcm\_%'"; }
slots_count() { pg_val "$1" "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pmgcm\_%'"; }
repairs_of() { store "$1" | jq -r '.capture.slot_repairs // 0'; }
# drop_slot I: terminate the walsender of node I's slot and drop the slot
# before the daemon streams it again (retried inside the server)
drop_slot() {
    pg_sql "$1" >/dev/null 2>"$IT_DIR/drop$1.err" <<'EOF'
DO $$
DECLARE s text;
BEGIN
  SELECT slot_name INTO s FROM pg_replication_slots WHERE database = current_database() AND slot_name LIKE 'pmgcm\_%';
  IF s IS NULL THEN RAISE EXCEPTION 'no pmgcm slot'; END IF;
  FOR i IN 1..500 LOOP
    PERFORM pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots WHERE slot_name = s AND active_pid IS NOT NULL;
    BEGIN
      PERFORM pg_drop_replication_slot(s);
      RETURN;
    EXCEPTION WHEN object_in_use THEN
      PERFORM pg_sleep(0.01);
    END;
  END LOOP;
  RAISE EXCEPTION 'the slot stayed active';
END $$;
EOF
}
# writer FILE FIRST N: N single-statement transactions on node1: a mail row
# (ids FIRST..FIRST+N-1), then updates of rules, rule_attr and objects
writer_sql() {
    local f=$1 first=$2 n=$3 k id
    : >"$f"
    for ((k = 0; k < n; k++)); do
        id=$((first + k))
        echo "INSERT INTO mail VALUES ($id, 'w', 'writer $id', $k, now());"
        ((k % 3 == 0)) && echo "UPDATE rules SET prio = prio + 1 WHERE id = $((k % 500 + 1));"
        ((k % 5 == 0)) && echo "UPDATE rule_attr SET val = 'v$id' WHERE rule_id = $((k % 500 + 1)) AND attr = 'a';"
        ((k % 7 == 0)) && echo "UPDATE objects SET amount = amount + 1 WHERE id = $((k % 200 + 1));"
    done >"$f"
}
# ids_ok I FIRST N: node I holds exactly the mail ids FIRST..FIRST+N-1 of
# that range (each once: the key; all: the count)
ids_ok() { [[ "$(pg_val "$1" "SELECT count(*) || ' ' || count(DISTINCT id) FROM mail WHERE id BETWEEN $2 AND $(($2 + $3 - 1))")" == "$3 $3" ]]; }

# ---- servers and data ------------------------------------------------------------
for i in $ALL; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" || it_bail "schema on node$i"
    it_write_config_lc "$i" "node$i"
    case $i in
    2) pg_conf "$i" db_snapshot_jobs=2 ;;
    3) pg_conf "$i" db_snapshot_jobs=1 ;;
    *) pg_conf "$i" ;;
    esac
done
pg_sql 1 >/dev/null <<'EOF' || it_bail "filling node1"
INSERT INTO mail SELECT g, 'node1', 'subject ' || g || repeat(' x', g % 40), g % 1000, now() FROM generate_series(1, 150000) g;
INSERT INTO rules SELECT g, 'rule ' || g, g % 10, g % 2 = 0 FROM generate_series(1, 500) g;
INSERT INTO rule_attr SELECT r, a, 'v' || r FROM generate_series(1, 500) r, unnest(ARRAY['a', 'b', 'c']) a;
INSERT INTO objects SELECT g, decode(md5(g::text), 'hex'), jsonb_build_object('g', g), g / 7.0, g * 1.5, ARRAY['t' || g] FROM generate_series(1, 20000) g;
ANALYZE;
EOF
for i in $ALL; do start_node "$i"; done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30 ||
    it_diag "the stores did not all say idle"
run 1 create --password-file "$PW"
((RC == 0)) || { show 1; it_bail "pmgcm create failed: $OUT"; }
FP1=$(it_fingerprint_of 1)

# ---- a parallel snapshot while the master writes --------------------------------------
writer_sql "$IT_DIR/w1.sql" 70000001 3000
pg_bg 1 "$IT_DIR/w1.sql" "$IT_DIR/w1.out"
W1=$PG_BG_PID
t0=$(it_now_ms)
run -t 180 2 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
JRC=$RC JOUT=$OUT
wait "$W1"
WRC=$?
PAR=$(grep -o 'snapshot for node 2 at [0-9/]*: 4 table(s) over 2 connection(s)' "$(it_log 1)" | tail -n1)
if ((JRC == 0 && WRC == 0)) && [[ -n "$PAR" ]] && wait_converged "1 2" 120 &&
    it_wait_until "in_sync '1 2'" 60 && ids_ok 2 70000001 3000 && ids_ok 1 70000001 3000 &&
    [[ "$(pg_val 2 "SELECT count(*) FROM mail")" == "$(pg_val 1 "SELECT count(*) FROM mail")" ]]; then
    it_ok "node2 joins while node1 commits 3000 writer transactions: '$PAR'; after the writer node2 holds each of its rows exactly once, checksums equal ($(it_fmt_ms $(($(it_now_ms) - t0))) s)"
else
    it_not_ok "a parallel snapshot taken while the master writes converges, nothing lost or doubled"
    it_diag "join exit $JRC: $(first_line "$JOUT"); writer exit $WRC: $(head -c 300 "$IT_DIR/w1.out.err"); master log: '${PAR:-no parallel snapshot line}'"
    it_diag "writer rows node1 $(pg_val 1 "SELECT count(*) FROM mail WHERE id > 70000000"), node2 $(pg_val 2 "SELECT count(*) FROM mail WHERE id > 70000000")"
    show "1 2"
fi
run -t 180 3 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
PAR3=$(grep -o 'snapshot for node 3 at [0-9/]*: 4 table(s) over 1 connection(s)' "$(it_log 1)" | tail -n1)
if ((RC == 0)) && [[ -n "$PAR3" ]] && wait_converged "$ALL" 120 && it_wait_until "in_sync '$ALL'" 30; then
    it_ok "node3 joins in one transaction ('$PAR3'); all three equal and in-sync"
else
    it_not_ok "node3 joins (db_snapshot_jobs = 1: one connection); all three equal and in-sync"
    it_diag "join exit $RC: $(first_line "$OUT"); master's log: '${PAR3:-no such snapshot line}'"
    show "$ALL"
fi

# ---- the master's slot dropped while its daemon runs ------------------------------------
S1=$(slot_of 1) R1=$(repairs_of 1) sn2=$(st 2 snapshots) sn3=$(st 3 snapshots)
writer_sql "$IT_DIR/w2.sql" 71000001 1500
pg_bg 1 "$IT_DIR/w2.sql" "$IT_DIR/w2.out"
W2=$PG_BG_PID
it_wait_until "[[ \$(pg_val 1 'SELECT count(*) FROM mail WHERE id > 71000000') -ge 300 ]]" 60 || it_diag "the writer did not start"
drop_slot 1
DRC=$?
GONE1=$(slot_of 1)
wait "$W2"
WRC=$?
pg_sql 1 "INSERT INTO mail VALUES (71999999, 'w', 'after the drop', 1, now())" >/dev/null
if ((DRC == 0 && WRC == 0)) && [[ -n "$S1" ]] &&
    it_wait_until "[[ -n \"\$(slot_of 1)\" && \$(repairs_of 1) -gt $R1 ]]" 60 &&
    wait_converged "$ALL" 180 && it_wait_until "in_sync '$ALL'" 60 && ids_ok 2 71000001 1500 && ids_ok 3 71000001 1500 &&
    ids_ok 2 71999999 1 && ids_ok 3 71999999 1 &&
    (($(st 2 snapshots) > sn2 && $(st 3 snapshots) > sn3)) && it_wait_until "in_sync '$ALL'" 60; then
    it_ok "node1's slot dropped under its running daemon and a writer (slot then '${GONE1:-none}'): re-made ($(slot_of 1)), slot_repairs $R1 -> $(repairs_of 1), node2 and node3 resynced (snapshots $sn2 -> $(st 2 snapshots), $sn3 -> $(st 3 snapshots)), all 1501 rows everywhere, equal"
else
    it_not_ok "the master's slot dropped while its daemon runs: re-made, followers resync, nothing lost"
    it_diag "drop exit $DRC: $(head -c 300 "$IT_DIR/drop1.err"); writer exit $WRC: $(head -c 300 "$IT_DIR/w2.out.err"); slot before '$S1', after the drop '$GONE1', now '$(slot_of 1)'; repairs $R1 -> $(repairs_of 1)"
    it_diag "writer rows node1 $(pg_val 1 "SELECT count(*) FROM mail WHERE id > 71000000"), node2 $(pg_val 2 "SELECT count(*) FROM mail WHERE id > 71000000"), node3 $(pg_val 3 "SELECT count(*) FROM mail WHERE id > 71000000")"
    show "$ALL"
fi

# ---- a follower's slot dropped while its daemon runs ---------------------------------------
S3=$(slot_of 3) R3=$(repairs_of 3) sn3=$(st 3 snapshots)
drop_slot 3
DRC=$?
GONE3=$(slot_of 3)
pg_sql 1 "INSERT INTO mail SELECT g, 'w', 'after the follower drop', 1, now() FROM generate_series(72000001, 72000100) g" >/dev/null
if ((DRC == 0)) && [[ -n "$S3" ]] &&
    it_wait_until "[[ -n \"\$(slot_of 3)\" && \$(repairs_of 3) -gt $R3 ]]" 60 &&
    wait_converged "$ALL" 180 && it_wait_until "in_sync '$ALL'" 60 &&
    ids_ok 3 72000001 100 && (($(st 3 snapshots) > sn3)); then
    it_ok "node3's slot dropped under its running daemon (then '${GONE3:-none}'): re-made, slot_repairs $R3 -> $(repairs_of 3), node3 resynced (snapshots $sn3 -> $(st 3 snapshots)), equal"
else
    it_not_ok "a follower's slot dropped while its daemon runs: re-made, it resyncs"
    it_diag "drop exit $DRC: $(head -c 300 "$IT_DIR/drop3.err"); slot before '$S3', after '$GONE3', now '$(slot_of 3)'; repairs $R3 -> $(repairs_of 3); snapshots $sn3 -> $(st 3 snapshots)"
    show "$ALL"
fi

# ---- pmgcm delete of a dead node ---------------------------------------------------------
S3=$(slot_of 3)
it_signal 3 KILL
it_reap 3 15
run 1 delete 3
DRC=$RC DOUT=$OUT
N1=$(slots_count 1) OWN1=$(slot_of 1)
start_node 3
if ((DRC == 0)) && [[ -n "$S3" && "$N1" == 1 && -n "$OWN1" ]] &&
    it_wait_until "[[ \$(it_cluster_of 3) == null && -z \"\$(slot_of 3)\" ]]" 60; then
    it_ok "pmgcm delete 3 while node3 is dead: node1's server holds only node1's slot ($OWN1); node3, back, is out of the cluster and its slot ($S3) is dropped from its server"
else
    it_not_ok "pmgcm delete of a dead node: no slot left behind"
    it_diag "delete exit $DRC: $(first_line "$DOUT"); node1's pmgcm slots: $N1 ($OWN1); node3 cluster $(it_cluster_of 3), slot before '$S3', now '$(slot_of 3)'"
    show "1 3"
fi

# ---- the end -------------------------------------------------------------------------------
if wait_converged "1 2" 60 && it_wait_until "in_sync '1 2'" 30; then
    it_ok "in the end node1 and node2 equal and in-sync"
else
    it_not_ok "in the end node1 and node2 equal and in-sync"
    show "1 2"
fi
bad=$STOP_BAD
for i in $ALL; do
    it_alive_pid "$i" || continue
    it_signal "$i" TERM
    it_reap "$i" 15
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" $ALL
it_diag "took $(($(date +%s) - IT_T0)) s"
it_plan "$IT_TAPN"
exit 0
