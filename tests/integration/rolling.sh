#!/usr/bin/env bash
# tests/integration/rolling.sh - a rolling upgrade: a 3-node cluster that
# mixes the previous release (ROLLING_FROM, default 94bd217, the last main
# before protocol and schema versions; built here from `git archive`,
# cached under the build tree; or ROLLING_OLD_BIN=path/to/old/pmgclusterd)
# with this build:
#
#   - node1 runs the old daemon and creates the cluster; node2 and node3
#     (new) join it: the old master serves their snapshots
#   - writes on the old master reach both; node2 (new) is promoted, its
#     writes reach the old node; node1 (old) is promoted back, its writes
#     reach the new ones
#   - status shows each node's build (the old one as null, protocol 1..1)
#     and a "versions:" line while builds differ
#   - node1 is upgraded in place (stopped, written to while down, started
#     with the new binary on the same data_dir and database): its pmgcm
#     schema is migrated from version 1 to 2, what was written meanwhile
#     reaches everyone, nothing resyncs
#   - nothing lost: every phase's rows on every node; tables identical
#     (row counts and md5 of every row, pg.sh pg_same)
#   - versions refused: node3 restarted speaking protocol 2..2 is refused
#     by the master (its log names both ranges, its status row says why);
#     a joiner speaking 2..2 gets a refusal naming both ranges; a database
#     whose pmgcm schema is newer than the build stops the daemon (exit 78)
#
# Needs root, PostgreSQL, git history (else SKIP).
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-900}
. "$here/lib.sh"
. "$here/pg.sh"

[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the rolling upgrade test needs root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }
SRC=${abs_top_srcdir:-$here/../..}
BLD=${abs_top_builddir:-$here/../..}
NEW=$PMGCLUSTERD
NEWVER=$("$NEW" --version | awk '{ print $2 }')
[[ -n "$NEWVER" ]] || it_bail "$NEW --version printed no version"

# ---- the old daemon ---------------------------------------------------------
OLD=${ROLLING_OLD_BIN:-}
if [[ -z "$OLD" ]]; then
    command -v git >/dev/null && git -C "$SRC" rev-parse HEAD >/dev/null 2>&1 ||
        { echo "1..0 # SKIP no git history to build the old daemon from (set ROLLING_OLD_BIN)"; exit 0; }
    FROM=$(git -C "$SRC" rev-parse --verify -q "${ROLLING_FROM:-94bd217}^{commit}") ||
        { echo "1..0 # SKIP commit ${ROLLING_FROM:-94bd217} not in this history (set ROLLING_FROM or ROLLING_OLD_BIN)"; exit 0; }
    it_old_daemon "$SRC" "$BLD" "$FROM"
fi
[[ -x "$OLD" ]] || it_bail "no old daemon at $OLD"

pg_it_init 4
ALL="1 2 3"
STOP_S=30 # stop_node (pg.sh)
show() {
    local i l
    for i in $1; do
        it_diag "node$i: $(pg_val "$i" "SELECT role || ' ' || epoch || '/' || seq || ' snapshots ' || snapshots FROM pmgcm.state") db $(db "$i" | head -c 200)"
        grep -Ei 'store|api|refus' "$(it_log "$i")" | tail -n 6 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    return 0
}
# member I NAME FIELD: FIELD (jq path) of NAME's row in node I's status
member() { it_status "$1" 2>/dev/null | jq -c --arg n "$2" "(.members? // .) | .[] | select(.name == \$n) | $3" 2>/dev/null; }
# write I FIRST LAST TAG: mail rows FIRST..LAST written on node I
write() { pg_sql "$1" "INSERT INTO mail SELECT g, '$4', 'rolling ' || g, g % 1000, now() FROM generate_series($2, $3) g" >/dev/null; }
# has_rows "I J ..." FIRST LAST: every listed node holds mail rows FIRST..LAST
has_rows() {
    local i n=$(($3 - $2 + 1))
    for i in $1; do
        [[ "$(pg_val "$i" "SELECT count(*) FROM mail WHERE id BETWEEN $2 AND $3")" == "$n" ]] || return 1
    done
}
synced() { in_sync "$1" && converged "$1"; }
WANT=0 # mail rows written so far (every write below is a new id range)

# ---- an old master, new followers ------------------------------------------------
for i in $ALL; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" || it_bail "schema on node$i"
    it_write_config_lc "$i" "node$i"
    pg_conf "$i"
done
write 1 1 5000 before
pg_sql 1 "INSERT INTO rules SELECT g, 'rule ' || g, g, g % 2 = 0 FROM generate_series(1, 200) g" >/dev/null
WANT=5000
start_with "$OLD" 1
start_with "$NEW" 2
start_with "$NEW" 3
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30
run 1 create --password-file "$PW"
((RC == 0)) || { show 1; it_bail "create on the old daemon failed: $OUT"; }
FP1=$(it_fingerprint_of 1)
bad=
for i in 2 3; do
    run -t 180 "$i" join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
    ((RC == 0)) || bad+="node$i: $(first_line "$OUT"); "
done
if [[ -z "$bad" ]] && it_wait_until "synced '$ALL'" 90 && has_rows "$ALL" 1 5000; then
    it_ok "join: new node2 and node3 joined the old master node1 (${OLD#$BLD/}) and loaded its 5000 rows"
else
    it_not_ok "new nodes join an old master"
    it_diag "$bad $PG_SAME_DIFF"
    show "$ALL"
    it_bail "no mixed cluster"
fi

# versions as status shows them
# the old node1 reads the new nodes' metadata (unknown fields skipped)
it_wait_until "[[ \$(member 1 node3 .state) == '\"A\"' ]]" 30
v1=$(member 2 node1 '[.version, .protocol.min, .protocol.max]')
v2=$(member 2 node2 '[.version, .protocol.min, .protocol.max]')
v3=$(member 1 node3 .state)
txt=$(PMGCM_SOCKET=$(it_sock 2) timeout 10 "$PMGCM" status 2>&1)
if [[ "$v1" == '[null,1,1]' && "$v2" == "[\"$NEWVER\",1,1]" && "$v3" == '"A"' ]] &&
    grep -q "^versions: .*before versioning (node1)" <<<"$txt" &&
    [[ "$(pg_val 2 "SELECT version FROM pmgcm.schema")" == 2 &&
        "$(pg_val 1 "SELECT to_regclass('pmgcm.schema') IS NULL")" == t ]]; then
    it_ok "status on node2: node1 is a build from before versioning (version null, protocol 1..1), node2 $NEWVER (1..1); the old node1 shows node3 A; '$(grep '^versions:' <<<"$txt")'; schema version 2 on node2, none on node1"
else
    it_not_ok "status shows each node's version while builds differ"
    it_diag "node1 in node2's status: $v1; node2: $v2; node3 in node1's: $v3"
    it_diag "$txt"
fi

# ---- replicate from the old master ------------------------------------------------
write 1 5001 8000 old-master
WANT=8000
if it_wait_until "synced '$ALL'" 60 && has_rows "$ALL" 5001 8000; then
    it_ok "3000 rows written on the old master reach both new nodes"
else
    it_not_ok "the old master replicates to new nodes"
    it_diag "$PG_SAME_DIFF"
    show "$ALL"
fi

# ---- promote: old -> new ----------------------------------------------------------
run -t 120 2 promote --force
PRC=$RC POUT=$OUT
it_wait_until "follows '$ALL' 2" 60
write 2 8001 10000 new-master
WANT=10000
if ((PRC == 0)) && it_wait_until "follows '$ALL' 2 && synced '$ALL'" 60 && has_rows "$ALL" 8001 10000; then
    it_ok "promote old -> new: node2 (new) is master; its 2000 rows reach node1 (old) and node3"
else
    it_not_ok "promote from an old master to a new node"
    it_diag "promote exit $PRC: $POUT; roles on node1: $(it_roles_of 1); $PG_SAME_DIFF"
    show "$ALL"
fi

# ---- promote: new -> old ----------------------------------------------------------
run -t 120 1 promote --force
PRC=$RC POUT=$OUT
it_wait_until "follows '$ALL' 1" 60
write 1 10001 12000 old-again
WANT=12000
if ((PRC == 0)) && it_wait_until "follows '$ALL' 1 && synced '$ALL'" 60 && has_rows "$ALL" 10001 12000; then
    it_ok "promote new -> old: node1 (old) is master again; its 2000 rows reach node2 and node3 (new)"
else
    it_not_ok "promote from a new master to an old node"
    it_diag "promote exit $PRC: $POUT; roles on node2: $(it_roles_of 2); $PG_SAME_DIFF"
    show "$ALL"
fi

# ---- node1 upgraded in place ----------------------------------------------------------
declare -a SNAP0
for i in $ALL; do SNAP0[i]=$(st "$i" snapshots); done
stop_node 1
# written while its daemon is down (the master's database: numbered by
# the new daemon once it runs)
write 1 12001 12500 while-down
WANT=12500
start_with "$NEW" 1
bad=
it_wait_until "follows '$ALL' 1 && synced '$ALL'" 90 || bad+="not in sync after the upgrade: $PG_SAME_DIFF; "
has_rows "$ALL" 12001 12500 || bad+="the rows written while node1 was down are not everywhere; "
grep -q "pmgcm schema migrated from version 1 to 2" "$(it_log 1)" || bad+="no migration logged on node1; "
[[ "$(pg_val 1 "SELECT version || ' ' || build FROM pmgcm.schema")" == "2 $NEWVER" ]] || bad+="node1's pmgcm.schema: $(pg_val 1 "SELECT version || ' ' || build FROM pmgcm.schema"); "
for i in $ALL; do
    [[ "$(st "$i" snapshots)" == "${SNAP0[i]}" ]] || bad+="node$i took a snapshot (${SNAP0[i]} -> $(st "$i" snapshots)); "
done
v1=$(member 3 node1 .version)
txt=$(PMGCM_SOCKET=$(it_sock 3) timeout 10 "$PMGCM" status 2>&1)
[[ "$v1" == "\"$NEWVER\"" ]] || bad+="node3 sees node1's version as $v1; "
grep -q '^versions:' <<<"$txt" && bad+="a versions: line with one build everywhere; "
if [[ -z "$bad" ]]; then
    it_ok "node1 upgraded in place (same data_dir and database): schema migrated 1 -> 2, the 500 rows written while it was down reach everyone, no snapshot anywhere, every node $NEWVER"
else
    it_not_ok "the old node upgraded in place"
    it_diag "$bad"
    show "$ALL"
fi

# ---- nothing lost --------------------------------------------------------------------------
bad=
for i in $ALL; do
    n=$(pg_val "$i" "SELECT count(*) FROM mail")
    [[ "$n" == "$WANT" ]] || bad+="node$i has $n mail rows, not $WANT; "
done
pg_same "$ALL" || bad+="$PG_SAME_DIFF; "
if [[ -z "$bad" ]]; then
    it_ok "nothing lost: $WANT mail rows on every node, every replicated table identical (row counts and md5 of every row)"
else
    it_not_ok "nothing lost across the rolling upgrade"
    it_diag "$bad"
fi

# ---- versions refused ------------------------------------------------------------------------
# a follower speaking a protocol the master does not
stop_node 3
PMGCLUSTERD_TEST_PROTO=2-2 start_with "$NEW" 3
bad=
it_wait_until "grep -q 'protocol versions do not overlap: the peer (${IT_IP[3]}) speaks 2..2, this node speaks 1..1' '$(it_log 1)'" 60 ||
    bad+="node1 did not log node3's refused requests; "
it_wait_until "[[ \$(member 1 node3 .reason) == *'protocol versions 2..2'*'do not overlap ours (1..1)'* ]]" 30 ||
    bad+="node1's status row of node3 says '$(member 1 node3 .reason)'; "
if [[ -z "$bad" ]]; then
    it_ok "node3 speaking protocol 2..2: the master refuses its requests and logs both ranges; its status row says $(member 1 node3 .reason | cut -c1-90)..."
else
    it_not_ok "a node outside the protocol range is refused and shown"
    it_diag "$bad"
    show "1 3"
fi
stop_node 3
start_with "$NEW" 3
# a joiner speaking 2..2
it_write_config_lc 4 node4
PMGCLUSTERD_TEST_PROTO=2-2 start_with "$NEW" 4
run -t 60 4 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
if ((RC != 0)) && [[ "$OUT" == *"speaks 2..2, this node speaks 1..1"* ]] && [[ "$(member 1 node4 .name)" == "" ]]; then
    it_ok "a joiner speaking 2..2 is refused: '$(first_line "$OUT" | cut -c1-150)'"
else
    it_not_ok "a joiner outside the protocol range is refused"
    it_diag "join exit $RC: $OUT"
fi
stop_node 4

# a database whose pmgcm schema is newer than this build
it_wait_until "synced '$ALL'" 60 || it_diag "node3 back: not in sync: $PG_SAME_DIFF"
stop_node 3
pg_sql 3 "UPDATE pmgcm.schema SET version = 99" >/dev/null
start_with "$NEW" 3
it_reap 3 60
rc3=$IT_EXIT
msg=$(grep -m1 "schema is version 99, newer than this build knows (2" "$(it_log 3)")
pg_sql 3 "UPDATE pmgcm.schema SET version = 2" >/dev/null
start_with "$NEW" 3
if [[ "$rc3" == 78 && -n "$msg" ]] && it_wait_until "synced '$ALL'" 90; then
    it_ok "schema version 99 in node3's database: the daemon exits 78 saying '${msg:0:160}...'; back at version 2 it starts and syncs"
else
    it_not_ok "a database with a newer pmgcm schema stops the daemon"
    it_diag "exit $rc3; log: $(grep -i schema "$(it_log 3)" | tail -n 3)"
fi

# writes still work everywhere after all that
write 1 12501 12600 after
if it_wait_until "synced '$ALL'" 60 && has_rows "$ALL" 12501 12600; then
    it_ok "a write on the master after the upgrade reaches every node"
else
    it_not_ok "writes after the upgrade"
    show "$ALL"
fi

# ---- the end ------------------------------------------------------------------------------
pg_it_end "$ALL" 20 "1 2 3 4"
exit 0
