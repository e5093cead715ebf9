#!/usr/bin/env bash
# tests/integration/upgrade.sh - the upgrade in place from the trigger
# route (capture by row triggers into pmgcm.capture) to logical decoding:
# a 3-node cluster runs the daemon of the last commit before the change
# (UPGRADE_FROM, default the parent of the commit that removed
# store/jobs.c; built here from `git archive`, cached under the build tree;
# or UPGRADE_OLD_BIN=path/to/old/pmgclusterd), with per-origin tables and
# a writer acknowledging every commit on the master; the binaries are
# switched one node at a time, followers first, the master last, each
# node's PostgreSQL written to while its daemon is down. Afterwards:
#
#   - every acknowledged commit is on every node; the replicated tables and
#     every origin's rows are equal everywhere
#   - no node took a snapshot (pmgcm.state.snapshots unchanged: data and
#     positions kept), none holds divergence, the master's position only
#     grew, what the old triggers captured while a daemon was down was
#     numbered (the master's rows, node2's own rows)
#   - the old queues and triggers are gone, every node has its slot
#
# Needs root, PostgreSQL 15, git history (else SKIP).
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-600}
. "$here/lib.sh"
. "$here/pg.sh"

[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the upgrade test needs root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }
SRC=${abs_top_srcdir:-$here/../..}
BLD=${abs_top_builddir:-$here/../..}
NEW=$PMGCLUSTERD

# ---- the old daemon ---------------------------------------------------------
OLD=${UPGRADE_OLD_BIN:-}
if [[ -z "$OLD" ]]; then
    command -v git >/dev/null && git -C "$SRC" rev-parse HEAD >/dev/null 2>&1 ||
        { echo "1..0 # SKIP no git history to build the old daemon from (set UPGRADE_OLD_BIN)"; exit 0; }
    FROM=${UPGRADE_FROM:-}
    if [[ -z "$FROM" ]]; then
        c=$(git -C "$SRC" rev-list -1 HEAD -- store/jobs.c 2>/dev/null)
        [[ -n "$c" ]] || { echo "1..0 # SKIP no commit removed store/jobs.c in this history (set UPGRADE_FROM)"; exit 0; }
        FROM=$(git -C "$SRC" rev-parse "$c^") || { echo "1..0 # SKIP no parent of $c"; exit 0; }
    fi
    it_old_daemon "$SRC" "$BLD" "$FROM"
fi
[[ -x "$OLD" ]] || it_bail "no old daemon at $OLD"

pg_it_init 3
ALL="1 2 3"
show() {
    local i l
    for i in $1; do
        it_diag "node$i: $(pg_val "$i" "SELECT role || ' ' || epoch || '/' || seq || ' recv ' || recv_seq || ' snapshots ' || snapshots || ' loaded ' || loaded FROM pmgcm.state") db $(db "$i" | head -c 200)"
        grep -Ei 'store' "$(it_log "$i")" | tail -n 5 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    return 0
}
CONV=0
converged() {
    local now
    now=$(it_now_ms)
    ((now - CONV < 1000)) && return 1
    CONV=$now
    pg_same "$1" || return 1
    local a b
    a=$(pg_origin_checksum 1)
    for b in 2 3; do [[ "$(pg_origin_checksum "$b")" == "$a" ]] || return 1; done
}

# ---- the old cluster -----------------------------------------------------------
for i in $ALL; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" && pg_origin_schema "$i" || it_bail "schema on node$i"
    it_write_config_lc "$i" "node$i"
    pg_conf "$i" "db_origin_tables=$PG_ORIGIN_TABLES"
done
pg_sql 1 "INSERT INTO mail SELECT g, 'old', 'before the upgrade ' || g, g, now() FROM generate_series(1, 20000) g" >/dev/null
for i in $ALL; do start_with "$OLD" "$i"; done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30
run 1 create --password-file "$PW"
((RC == 0)) || { show 1; it_bail "create on the old daemon failed: $OUT"; }
FP1=$(it_fingerprint_of 1)
bad=
for i in 2 3; do
    run -t 120 "$i" join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
    ((RC == 0)) || bad+="node$i: $(first_line "$OUT"); "
done
declare -a CID SNAP0
for i in $ALL; do
    it_wait_until "[[ -n \$(pg_cid $i) && \$(pg_cid $i) != 0 ]]" 20
    CID[i]=$(pg_cid "$i")
    pg_sql "$i" "INSERT INTO quarantine SELECT ${CID[i]}, g, 'old ' || g, 0, now() FROM generate_series(1, 500) g" >/dev/null || bad+="node$i's own rows; "
done
if [[ -z "$bad" ]] && it_wait_until "in_sync '$ALL' && converged '$ALL'" 60 &&
    [[ "$(pg_val 1 "SELECT to_regclass('pmgcm.capture') IS NOT NULL")" == t ]]; then
    for i in $ALL; do SNAP0[i]=$(st "$i" snapshots); done
    SEQ0=$(st 1 seq)
    it_ok "the old daemon (${OLD#$BLD/}): 3 nodes in sync, 20000 mail rows and 500 own rows per node, capture by triggers (pmgcm.capture), master at $(st 1 epoch)/$SEQ0"
else
    it_not_ok "a cluster on the old daemon"
    it_diag "$bad"
    show "$ALL"
    it_bail "no old cluster"
fi

# ---- a writer on the master all along -----------------------------------------
awk 'BEGIN { for (k = 1; k <= 200000; k++) {
    printf "INSERT INTO mail VALUES (%d, \x27w\x27, \x27during the upgrade\x27, 0, now());\n", 100000 + k
    if (k % 10 == 0) print "SELECT pg_sleep(0.01);"
    printf "\\echo ack %d\n", 100000 + k } }' >"$IT_DIR/writer.sql"
pg_bg 1 "$IT_DIR/writer.sql" "$IT_DIR/writer.out"
WPID=$PG_BG_PID
acks() { local n; n=$(grep -c '^ack' "$IT_DIR/writer.out" 2>/dev/null); echo "${n:-0}"; }
more_acks() { local a=$1; it_wait_until "(( \$(acks) >= $a + 200 ))" 60; }

# ---- followers first, then the master ---------------------------------------------
bad=
for i in 3 2 1; do
    a=$(acks)
    more_acks "$a" || bad+="the writer stalled before node$i's turn; "
    stop_node "$i"
    # written while the daemon is down: its own rows (the old row trigger
    # captures them, the new daemon numbers them); on the master the
    # writer's rows too
    pg_sql "$i" "INSERT INTO quarantine SELECT ${CID[i]}, g, 'while down ' || g, 0, now() FROM generate_series(1001, 1100) g" >/dev/null ||
        bad+="node$i's own rows while down; "
    a=$(acks)
    ((i == 1)) && { more_acks "$a" || bad+="the writer stalled while node1's daemon was down; "; }
    start_with "$NEW" "$i"
    if ! it_wait_until "[[ \$(pg_val $i \"SELECT to_regclass('pmgcm.capture') IS NULL\") == t ]] && in_sync '$ALL'" 60; then
        bad+="node$i not upgraded and in sync; "
        show "$i"
    fi
done
a=$(acks)
more_acks "$a" || bad+="no writes after the upgrade; "
if [[ -z "$bad" ]]; then
    it_ok "nodes 3, 2, 1 switched to the new daemon one at a time under the writer ($(acks) commits acknowledged so far), each in sync again"
else
    it_not_ok "switching every node to the new daemon"
    it_diag "$bad"
fi

# ---- nothing lost, nothing resynced ----------------------------------------------------
echo "SELECT 1;" >/dev/null
# stop the writer after its next ack: a marker row tells it nothing; kill
# psql (what it acknowledged is what counts)
kill "$WPID" 2>/dev/null
wait "$WPID" 2>/dev/null
NACK=$(acks)
grep '^ack' "$IT_DIR/writer.out" | awk '{ print $2 }' | sort -n >"$IT_DIR/acked.ids"
bad=
if it_wait_until "converged '$ALL'" 90; then
    for i in $ALL; do
        pg_sql "$i" "SELECT id FROM mail WHERE id > 100000 ORDER BY 1" >"$IT_DIR/present$i.ids"
        l=$(comm -23 "$IT_DIR/acked.ids" "$IT_DIR/present$i.ids" | wc -l)
        ((l == 0)) || bad+="node$i lacks $l acknowledged rows; "
        [[ "$(st "$i" snapshots)" == "${SNAP0[i]}" ]] || bad+="node$i took a snapshot (${SNAP0[i]} -> $(st "$i" snapshots)); "
        [[ "$(pg_val "$i" "SELECT count(*) FROM pmgcm.divergence")" == 0 ]] || bad+="node$i holds divergence; "
        [[ "$(pg_val "$i" "SELECT count(*) FROM pg_trigger WHERE tgname IN ('pmgcm_capture', 'pmgcm_ocapture', 'pmgcm_notify')")" == 0 ]] || bad+="node$i still has old triggers; "
        [[ "$(pg_val "$i" "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pmgcm%'")" == 1 ]] || bad+="node$i has no slot; "
        for j in $ALL; do
            [[ "$(pg_val "$j" "SELECT count(*) FROM quarantine WHERE cid = ${CID[i]} AND rid BETWEEN 1001 AND 1100")" == 100 ]] ||
                bad+="node$j lacks node$i's rows written while its daemon was down; "
        done
    done
    (($(st 1 seq) > SEQ0)) || bad+="node1's position did not grow ($SEQ0 -> $(st 1 seq)); "
else
    bad+="not converged: $PG_SAME_DIFF; "
fi
if [[ -z "$bad" ]] && ((NACK > 0)); then
    it_ok "all $NACK acknowledged commits on every node; tables and every origin's rows equal; no snapshot, no divergence; old triggers gone, a slot each; node1 at $(st 1 epoch)/$(st 1 seq) (was $SEQ0)"
else
    it_not_ok "nothing lost, nothing resynced by the upgrade"
    it_diag "${bad:0:800}"
    show "$ALL"
fi

# ---- the end ------------------------------------------------------------------------------
pg_it_end "$ALL" 15
exit 0
