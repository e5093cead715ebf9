#!/usr/bin/env bash
# tests/integration/store.sh - the store (PostgreSQL replication between
# nodes, store/store.h) end to end: real pmgclusterd daemons in their own
# network namespaces (as root; else on 127.0.x.y), each with its own
# throwaway PostgreSQL server (tests/integration/pg.sh), the test schema of
# pg.sh (mail, rules, rule_attr with a composite key, objects with bytea,
# jsonb, float8, numeric and arrays; local_cache in db_exclude and counters
# without a key stay local). Every scenario ends with the replicated tables'
# checksums identical on every node (polled, never slept for):
#
#   1  node1 holds 100k mail rows before `pmgcm create`; node2 joins and
#      has them when join returns, node3 joins with --no-wait (it held junk
#      rows: replaced); local tables untouched; every node in-sync, A
#   9  INSERT/UPDATE/DELETE/TRUNCATE on a follower refused, the error names
#      the master; local tables stay writable
#      every kind of change: key updates, composite keys, TRUNCATE,
#      savepoints, rollbacks, odd values, rows of several MB; the master's
#      log holds them as written, the followers' logs the same rows
#   2  8 concurrent writers on the master, some transactions sleeping so
#      that they commit out of the order of their changes: rows = acks;
#      then a write with the followers at the head reaches them as the
#      capture's own frame (store.frames_direct)
#      the master's daemon restarted while a writer runs: nothing lost
#      the master's store sessions terminated while a writer runs (its
#      workers re-prepare their statements): nothing lost
#   3  kill -9 of a follower's daemon while it applies a 50k-change burst
#   4  a follower down during 50k changes catches up by deltas (its
#      pmgcm.state.snapshots unchanged); meanwhile its status says
#      catching-up with a lag, the text status S
#   6  kill -9 of the master while a writer runs; the least up-to-date
#      node is promoted (--force): it first catches up from the most
#      advanced one; everything that one held survives. Meanwhile node2
#      (no master) gets 20 wait-sync requests at once and 10 whose clients
#      leave: each of the 20 answered, the daemon answers on
#   7  the old master returns: what it committed that nobody received is in
#      its pmgcm.divergence, exactly; it resyncs. Again with N changes
#      written while every follower was stopped.
#   5  db_log_retention_s = 5: a follower away longer takes a snapshot
#   8  a joiner whose schema differs (a column type): schema mismatch, its
#      rows untouched
#      changes bigger than a stream frame (8 MiB): a 5 MB text updated to
#      another 5 MB text, a 5 MB bytea (10 MB as JSON hex)
#  10  the master's replication slot lost to max_slot_wal_keep_size while
#      its daemon was down and rows committed: the log restarts, the
#      followers take a snapshot, nothing lost; a follower's slot dropped
#      while its daemon was down: made again, that follower resyncs
#
# Needs root (PostgreSQL runs as the postgres user) and PostgreSQL 15.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-1500}
. "$here/lib.sh"
. "$here/pg.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the store tests need root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }

it_init 4
if [[ $IT_MODE == loopback ]]; then
    net=127.0.$((100 + $$ % 100))
    for i in 1 2 3 4; do IT_IP[i]=$net.$((10 + i)); done
fi
pg_init
ALL3="1 2 3"

PW=$IT_DIR/join.pw
printf 'correct horse battery staple\n' >"$PW"
chmod 600 "$PW"

# ---- helpers -----------------------------------------------------------------
# run [-t SECS] I ARGS...: `pmgcm ARGS` on node I; OUT, RC, DUR_MS.
ms() { it_fmt_ms "$1"; }
since() { it_fmt_ms $(($(it_now_ms) - $1)); }

STOP_BAD= # every SIGTERM that did not end in exit 0
kill9() {
    it_signal "$1" KILL
    wait "${IT_PID[$1]}" 2>/dev/null
}

# st, seq_of, pos, db, db_field, store, in_sync, master_is, follows,
# converged, wait_converged: tests/integration/pg.sh
# letters_a I "J K ...": node I's text status shows every listed node A
letters_a() {
    local txt j
    txt=$(PMGCM_SOCKET=$(it_sock "$1") timeout 10 "$PMGCM" status 2>/dev/null) || return 1
    for j in $2; do
        awk -v m="node$j(" 'index($1, m) == 1 { print $4 }' <<<"$txt" | grep -qx A || return 1
    done
}

# show "I J ...": what each node's store says, as diagnostics
show() {
    local i
    for i in $1; do
        it_diag "node$i: state $(pg_val "$i" "SELECT to_jsonb(s) FROM pmgcm.state s" | head -c 400) | status db $(db "$i" | head -c 300) | roles $(it_roles_of "$i")"
        grep -Ei 'store|snapshot|diverg|schema' "$(it_log "$i")" | tail -n 4 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    [[ -n "$PG_SAME_DIFF" ]] && it_diag "checksums: $PG_SAME_DIFF"
    return 0
}
# count_range I LO HI: mail rows of node I with LO <= id <= HI
count_range() { local v; v=$(pg_val "$1" "SELECT count(*) FROM mail WHERE id BETWEEN $2 AND $3"); echo "${v:-0}"; }
# ids_range I LO HI: those rows' ids, one per line, sorted
ids_range() { pg_sql "$1" "SELECT id FROM mail WHERE id BETWEEN $2 AND $3 ORDER BY id"; }
# div_ids I: the mail ids named by node I's pmgcm.divergence, sorted
div_ids() {
    pg_sql "$1" "SELECT coalesce((to_jsonb(d)->>'new')::jsonb->>'id', (to_jsonb(d)->>'old')::jsonb->>'id')
                   FROM pmgcm.divergence d ORDER BY 1" 2>/dev/null | sort -n
}
div_count() { pg_val "$1" "SELECT count(*) FROM pmgcm.divergence"; }
# stable I SECS: node I's position did not move for SECS seconds
stable() {
    local p0 p t0
    p0=$(pos "$1")
    t0=$(it_now_ms)
    while (($(it_now_ms) - t0 < $2 * 1000)); do
        sleep 0.2
        p=$(pos "$1")
        [[ "$p" == "$p0" ]] || return 1
    done
}
acks() { grep -c '^ack' "$1" 2>/dev/null; }
# store_ready I: wait until node I's store is set up (promote refuses
# before: "database is not set up yet"; the setup checks the slot first),
# as an admin reading its status would
store_ready() {
    it_wait_until "[[ -n \$(db_field $1 state) && ! \$(db_field $1 state) =~ ^(connecting|off)$ ]]" 60 ||
        it_diag "node$1's store still says '$(db_field "$1" state)' after ${IT_WAITED} s"
}

# ---- the servers, the schema, node1's data -------------------------------------
t0=$(it_now_ms)
for i in 1 2 3 4; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
done
for i in 1 2 3; do pg_schema "$i" || it_bail "schema on node$i"; done
pg_schema 4 mail_size_bigint || it_bail "schema on node4"
pg_sql 1 >/dev/null <<'EOF' || it_bail "loading node1's data failed"
INSERT INTO mail SELECT g, 'node1',
       CASE WHEN g % 97 = 0 THEN NULL
            WHEN g % 89 = 0 THEN E'quote '' dq " tab\t nl\n back\\slash ü € 𝄞'
            ELSE 'subject ' || g END,
       CASE WHEN g % 101 = 0 THEN NULL ELSE g % 5000 END,
       timestamptz '2024-01-01 00:00:00.123456+00' + g * interval '1.000001 s'
  FROM generate_series(1, 100000) g;
INSERT INTO rules SELECT g, 'rule ' || g, g % 7, g % 2 = 0 FROM generate_series(1, 50) g;
INSERT INTO rule_attr SELECT r, 'attr' || a, 'val ' || r || '/' || a
  FROM generate_series(1, 50) r, generate_series(1, 4) a;
INSERT INTO objects SELECT g, decode(md5(g::text), 'hex'),
       jsonb_build_object('g', g, 'name', 'obj "' || g || '"', 'list', jsonb_build_array(g, g * 0.5, NULL, 'x')),
       g / 3.0::float8, g * 1.125, ARRAY['t' || g, NULL, 'a,b "c"']
  FROM generate_series(1, 20) g;
INSERT INTO objects VALUES (21, NULL, NULL, NULL, NULL, NULL), (22, '\x', '{}', 1e-300, -0.001, '{}');
EOF
for i in 1 2 3 4; do
    pg_sql "$i" "INSERT INTO local_cache SELECT 'k' || g, 'node$i value ' || g FROM generate_series(1, 10) g;
                 INSERT INTO counters SELECT 'node$i', g, now() FROM generate_series(1, 5) g" >/dev/null
done
# node3 holds junk in replicated tables: its join must replace it
pg_sql 3 "INSERT INTO mail VALUES (1, 'junk', 'junk', 1, now()), (999999999, 'junk', 'junk', 2, now());
          INSERT INTO rules VALUES (1, 'junk rule', 0, false)" >/dev/null
# node4's schema differs (mail.size bigint); it holds rows of its own
pg_sql 4 "INSERT INTO mail SELECT g, 'node4', 'own ' || g, g, now() FROM generate_series(1, 10) g;
          INSERT INTO rules VALUES (1, 'node4 rule', 3, true)" >/dev/null
declare -a LOCAL0
for i in 1 2 3 4; do LOCAL0[i]=$(pg_checksum_local "$i"); done
CK4_0=$(pg_checksum 4)
it_diag "4 PostgreSQL servers up, schema and 100k rows loaded in $(since $t0) s"

for i in 1 2 3 4; do
    it_write_config_lc "$i" "node$i"
    pg_conf "$i"
done
for i in 1 2 3; do start_node "$i"; done
# the store sets itself up in the background: wait until it says idle
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 20 ||
    it_diag "the stores did not all say idle within ${IT_WAITED} s: $(db 1) $(db 2) $(db 3)"

# ==== 1: create with 100k rows, join with a snapshot ===========================
run 1 create --password-file "$PW"
if ((RC != 0)); then
    it_not_ok "pmgcm create on node1"
    it_diag "exit $RC: $OUT"
    show 1
    it_bail "no cluster"
fi
FP1=$(it_fingerprint_of 1)
run -t 180 2 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
JOIN2_MS=$DUR_MS
# db_snapshot_jobs unset: 4 loaders (slots.sh sets 2 and 1)
PAR2=$(grep -o "snapshot for node 2 at [0-9/]*: [0-9]* table(s) over [0-9]* connection(s)" "$(it_log 1)" | tail -n1)
if ((RC == 0)) && pg_same "1 2" && [[ "$PAR2" == *" over 4 connection(s)" ]]; then
    it_ok "node1 creates with 100k mail rows; node2's join returns after its snapshot ($(ms $JOIN2_MS) s): its tables equal node1's right then; '$PAR2'"
else
    it_not_ok "node2's join returns with node1's data loaded, over 4 connections"
    it_diag "join exit $RC after $(ms $JOIN2_MS) s: $OUT; master's log: '${PAR2:-no snapshot line}'"
    show "1 2"
fi
# the join's wait asks wait-sync between its looks: an in-sync node answers
# it at once with its state; the snapshot came compressed (LZ4): its log
# says how many bytes crossed the wire for how many bytes of rows
WS=$(it_ctl 2 '{"cmd":"wait-sync"}')
LOADED=$(grep -o 'snapshot loaded: [0-9]* rows, [0-9]* bytes ([0-9]* on the wire)' "$(it_log 2)" | tail -n1)
RAWB=$(sed 's/.* rows, \([0-9]*\) bytes.*/\1/' <<<"$LOADED")
WIREB=$(sed 's/.*(\([0-9]*\) on the wire)/\1/' <<<"$LOADED")
if [[ "$(jq -c . <<<"$WS" 2>/dev/null)" == '{"ok":true,"state":"in-sync"}' ]] &&
    [[ -n "$RAWB" && -n "$WIREB" ]] && ((WIREB > 0 && WIREB * 2 < RAWB)); then
    it_ok "node2 answers wait-sync at once: $WS; its snapshot took $WIREB bytes on the wire for $RAWB bytes of rows"
else
    it_not_ok "node2 answers wait-sync with in-sync, and its snapshot was compressed"
    it_diag "wait-sync: $WS; log: ${LOADED:-no 'snapshot loaded' line}"
fi
run 3 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW" --no-wait
NOWAIT_MS=$DUR_MS NOWAIT_RC=$RC NOWAIT_OUT=$OUT
t0=$(it_now_ms)
if ((NOWAIT_RC == 0)) && wait_converged "$ALL3" 120; then
    it_ok "node3 joins with --no-wait (returned in $(ms $NOWAIT_MS) s): its junk rows replaced, all three equal after $(since $t0) s"
else
    it_not_ok "node3 joins with --no-wait and loads the data"
    it_diag "join exit $NOWAIT_RC after $(ms $NOWAIT_MS) s: $NOWAIT_OUT"
    show "$ALL3"
fi
bad=
for i in 1 2 3; do
    [[ "$(pg_checksum_local "$i")" == "${LOCAL0[i]}" ]] || bad+="node$i: $(pg_checksum_local "$i" | paste -sd';'); "
done
sn2=$(st 2 snapshots) sn3=$(st 3 snapshots)
# a snapshot drops a table's secondary indexes for its load and builds
# them again: every node has the same indexes after it
IDX1=$(pg_sql 1 "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname" | paste -sd';')
for i in 2 3; do
    [[ "$(pg_sql "$i" "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname" | paste -sd';')" == "$IDX1" ]] ||
        bad+="node$i's indexes differ from node1's: $(pg_sql "$i" "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1" | paste -sd' '); "
done
[[ "$IDX1" == *mail_ts_idx* ]] || bad+="no secondary index mail_ts_idx on node1; "
if [[ -z "$bad" ]] && ((${sn2:-0} >= 1 && ${sn3:-0} >= 1)); then
    it_ok "local_cache (db_exclude) and counters (no key) untouched on every node; indexes as on node1 after the snapshots (secondary ones rebuilt); pmgcm.state.snapshots is $sn2 on node2, $sn3 on node3"
else
    it_not_ok "local tables untouched; snapshots counted"
    it_diag "${bad:-local tables fine}; snapshots node2 '$sn2' node3 '$sn3'"
fi
if it_wait_until "in_sync '$ALL3' && letters_a 1 '$ALL3' && letters_a 3 '$ALL3'" 30; then
    it_ok "every node's status says db in-sync, the text status shows all three A ($IT_WAITED s)"
else
    it_not_ok "every node's db in-sync and A in the text status"
    for i in $ALL3; do it_diag "node$i db: $(db "$i")"; done
    it_diag "$(PMGCM_SOCKET=$(it_sock 1) timeout 10 "$PMGCM" status 2>&1)"
fi

# ==== 9: writes on a follower are refused =========================================
CK_BEFORE=$(pg_checksum 2)
bad= ERR9=
for sql in "INSERT INTO mail VALUES (5000001, 'x', 'x', 1, now())" \
    "UPDATE rules SET prio = 99 WHERE id = 3" \
    "DELETE FROM rule_attr WHERE rule_id = 2" \
    "TRUNCATE objects"; do
    o=$(pg_sql 2 "$sql" 2>&1) && { bad+="'$sql' succeeded; "; continue; }
    grep -qi master <<<"$o" && grep -q node1 <<<"$o" || bad+="'$sql': $o; "
    ERR9=$o
done
[[ "$(pg_checksum 2)" == "$CK_BEFORE" ]] || bad+="node2's tables changed; "
if [[ -z "$bad" ]]; then
    it_ok "INSERT, UPDATE, DELETE, TRUNCATE on follower node2 refused: '$(first_line "$ERR9")'"
else
    it_not_ok "writes on a follower are refused, naming the master"
    it_diag "$bad"
fi
if pg_sql 2 "INSERT INTO local_cache VALUES ('follower', 'ok'); UPDATE counters SET n = n + 1" >/dev/null 2>&1; then
    it_ok "node2's local tables (db_exclude, no key) stay writable"
    LOCAL0[2]=$(pg_checksum_local 2)
else
    it_not_ok "node2's local tables stay writable"
    it_diag "$(pg_sql 2 "INSERT INTO local_cache VALUES ('follower2', 'ok')" 2>&1)"
fi

# ==== every kind of change ===========================================================
t0=$(it_now_ms)
o=$(pg_sql 1 2>&1 <<'EOF'
BEGIN;
UPDATE rules SET id = id + 1000 WHERE id = 7;
UPDATE rule_attr SET attr = attr || '-x' WHERE rule_id = 3;
DELETE FROM rule_attr WHERE rule_id = 4 AND attr = 'attr2';
INSERT INTO objects VALUES (100, '\x00010203ff', '{"k": "v\"q", "n": null, "a": [1, 2.5e10, {"x": []}]}', 0.1, 123456789.001, ARRAY['x', NULL, 'a,b', '']),
                           (101, NULL, 'null', -1.5e-7, 0, NULL);
UPDATE mail SET subject = E'tab\there\nnewline ''q'' "dq" \\ back ü €', size = NULL WHERE id = 42;
COMMIT;
BEGIN;
INSERT INTO rules VALUES (5000, 'tmp', 1, true);
DELETE FROM rules WHERE id = 5000;
UPDATE mail SET size = coalesce(size, 0) + 1 WHERE id = 43;
UPDATE mail SET size = coalesce(size, 0) + 1 WHERE id = 43;
DELETE FROM rules WHERE id = 8;
INSERT INTO rules VALUES (8, 'rule 8 again', 9, false);
COMMIT;
BEGIN;
INSERT INTO mail VALUES (6000001, 'kept', 'kept', 1, now());
SAVEPOINT s1;
INSERT INTO mail VALUES (6000002, 'rolled back', 'rolled back', 2, now());
ROLLBACK TO SAVEPOINT s1;
COMMIT;
BEGIN;
INSERT INTO mail VALUES (6000003, 'rolled back', 'rolled back', 3, now());
ROLLBACK;
TRUNCATE rule_attr;
INSERT INTO rule_attr SELECT r, 'new' || a, 'after truncate' FROM generate_series(1, 5) r, generate_series(1, 3) a;
BEGIN;
TRUNCATE objects;
INSERT INTO objects VALUES (1, '\xdeadbeef', '[1, "two", {"3": 4}]', 2.5, 7, ARRAY['after', 'truncate']);
COMMIT;
INSERT INTO objects VALUES (200, decode(repeat('00ff7f', 500000), 'hex'), jsonb_build_object('big', repeat('x', 1000000)), 0, 0, NULL);
UPDATE mail SET subject = repeat('s', 3000000) WHERE id = 44;
UPDATE mail SET subject = repeat('t', 3000000) WHERE id = 44;
EOF
)
prc=$?
if ((prc == 0)) && wait_converged "$ALL3" 30 &&
    [[ $(count_range 2 6000001 6000003) == 1 && $(pg_val 3 "SELECT count(*) FROM rules WHERE id = 1007") == 1 ]]; then
    it_ok "key updates, composite keys, TRUNCATE (alone and in a transaction), savepoints, rollbacks, odd values, rows of 1-3 MB: all three equal after $(since $t0) s"
else
    it_not_ok "every kind of change reaches every node"
    it_diag "psql exit $prc: ${o:0:400}"
    show "$ALL3"
fi
# the master's change log holds those changes as written (the capture
# sends it by binary COPY; followers catching up read it): the odd
# subject, the 3 MB one, the jsonb and bytea values, each row with its
# source transaction and a commit time of this run
logchk=$(pg_sql 1 2>&1 <<'EOF'
SELECT count(*) FILTER (WHERE tbl = 'public.mail' AND op = 'U' AND new->>'subject' = E'tab\there\nnewline ''q'' "dq" \\ back ü €'),
       count(*) FILTER (WHERE tbl = 'public.mail' AND op = 'U' AND new->>'subject' = repeat('t', 3000000)),
       count(*) FILTER (WHERE tbl = 'public.objects' AND op = 'I' AND new->>'id' = '100' AND new->'meta' = '{"k": "v\"q", "n": null, "a": [1, 2.5e10, {"x": []}]}'::jsonb),
       count(*) FILTER (WHERE tbl = 'public.objects' AND op = 'I' AND new->>'id' = '200' AND length(new->>'data') = 3000002),
       count(*) FILTER (WHERE xid IS NULL OR ts < now() - interval '10 min' OR ts > now() + interval '1 min')
FROM pmgcm.log WHERE seq > (SELECT max(seq) - 200 FROM pmgcm.log) AND op <> 'E'
EOF
)
if [[ "$logchk" == "1|1|1|1|0" ]]; then
    it_ok "node1's pmgcm.log holds the changes as written: escapes, unicode, a 3 MB text, jsonb, bytea; every row with its transaction id and this run's commit time"
else
    it_not_ok "node1's pmgcm.log holds the changes as written"
    it_diag "counts (odd subject, 3 MB subject, jsonb, bytea, rows without xid or a time of this run): $logchk"
fi
# the followers' logs (their apply writes them by binary COPY too) hold
# the same rows as the master's: every column but the master's own xid
# (they joined at 1/1: their logs begin after it)
LOGHI=$(pg_val 1 "SELECT max(seq) FROM pmgcm.log")
LOGLO=$((LOGHI > 202 ? LOGHI - 200 : 2))
LOGQ="SELECT count(*) || ':' || min(seq) || '-' || max(seq) || ':' || md5(string_agg(concat_ws('|', seq, epoch, op, tbl, old, new, extract(epoch FROM ts)::numeric, last, origin), E'\\n' ORDER BY seq)) FROM pmgcm.log WHERE seq BETWEEN $LOGLO AND $LOGHI"
logs_same() {
    local m f
    m=$(pg_val 1 "$LOGQ")
    for f in 2 3; do [[ "$(pg_val "$f" "$LOGQ")" == "$m" ]] || return 1; done
    [[ "$m" == [1-9]*:* ]]
}
if it_wait_until logs_same 10; then
    it_ok "node2's and node3's pmgcm.log hold those changes exactly as node1's: $(pg_val 1 "$LOGQ")"
else
    it_not_ok "the followers' pmgcm.log hold the changes as node1's"
    it_diag "node1 $(pg_val 1 "$LOGQ"), node2 $(pg_val 2 "$LOGQ"), node3 $(pg_val 3 "$LOGQ")"
fi

# ==== 2: 8 concurrent writers ===========================================================
# writer W: 250 transactions; transaction j inserts A_j and B_j, updates A_j,
# deletes B_(j-1) and bumps the writer's own rules row; every 7th sleeps
# before COMMIT, so transactions commit out of the order of their changes.
# After K acknowledged transactions the writer owns K+1 mail rows and its
# rules row says prio K.
NW=8 NT=250
for ((w = 1; w <= NW; w++)); do
    base=$((10000000 + w * 100000))
    for ((j = 0; j < NT; j++)); do
        a=$((base + 2 * j))
        echo "BEGIN;"
        echo "INSERT INTO mail VALUES ($a, 'w$w', 'writer $w txn $j', $j, now()), ($((a + 1)), 'w$w', 'tmp', 0, now());"
        ((j % 7 == w % 7)) && echo "SELECT pg_sleep(0.0$((RANDOM % 9 + 1)));"
        echo "UPDATE mail SET subject = subject || ' updated' WHERE id = $a;"
        ((j > 0)) && echo "DELETE FROM mail WHERE id = $((a - 1));"
        echo "INSERT INTO rules VALUES ($((2000 + w)), 'writer $w', 1, true) ON CONFLICT (id) DO UPDATE SET prio = rules.prio + 1;"
        ((j % 7 == w % 7)) && echo "SELECT pg_sleep(0.0$((RANDOM % 9 + 1)));"
        echo "COMMIT;"
        echo "\\echo ack $j"
    done >"$IT_DIR/w$w.sql"
done
t0=$(it_now_ms)
declare -a WPID
for ((w = 1; w <= NW; w++)); do
    pg_bg 1 "$IT_DIR/w$w.sql" "$IT_DIR/w$w.out"
    WPID[w]=$PG_BG_PID
done
for ((w = 1; w <= NW; w++)); do wait "${WPID[w]}"; done
WRITE_MS=$(($(it_now_ms) - t0))
expect=0 wbad=
for ((w = 1; w <= NW; w++)); do
    k=$(acks "$IT_DIR/w$w.out")
    ((k > 0)) && expect=$((expect + k + 1))
    ((k == NT)) || wbad+="writer $w: $k acks ($(head -c 200 "$IT_DIR/w$w.out.err")); "
    WACK[w]=$k
done
t0=$(it_now_ms)
if wait_converged "$ALL3" 120; then
    got=$(count_range 1 10000000 10999999)
    pbad=
    for ((w = 1; w <= NW; w++)); do
        p=$(pg_val 3 "SELECT prio FROM rules WHERE id = $((2000 + w))")
        [[ "$p" == "${WACK[w]}" ]] || pbad+="writer $w: prio $p, acks ${WACK[w]}; "
    done
    if [[ "$got" == "$expect" && -z "$pbad" && -z "$wbad" ]]; then
        it_ok "8 concurrent writers, $((NW * NT)) transactions in $(ms $WRITE_MS) s (some committing out of order): all three equal $(since $t0) s later; $got rows = what the writers acknowledged"
    else
        it_not_ok "8 concurrent writers: rows = acknowledgements"
        it_diag "rows $got, expected $expect; ${wbad}${pbad}"
    fi
else
    it_not_ok "8 concurrent writers: all three nodes equal afterwards"
    it_diag "writers: ${wbad:-all $NT acks each} in $(ms $WRITE_MS) s"
    show "$ALL3"
fi

# followers at the head get the capture's own frame, without a read of the
# log: with everything in sync, a single write goes that way (up to three
# tries: a session that has just reconnected reads once first)
FD0=$(store 1 | jq -r '.frames_direct // empty')
FD1=$FD0
for ((k = 1; k <= 3; k++)); do
    pg_sql 1 "INSERT INTO rules VALUES ($((2100 + k)), 'direct frame $k', $k, true)" >/dev/null
    wait_converged "$ALL3" 60 || break
    FD1=$(store 1 | jq -r '.frames_direct // empty')
    [[ -n "$FD0" && -n "$FD1" ]] && ((FD1 > FD0)) && break
done
if [[ -n "$FD0" && -n "$FD1" ]] && ((FD1 > FD0)); then
    it_ok "a write with both followers at the head reaches them as the capture's own frame (node1's store.frames_direct $FD0 -> $FD1 after $k write(s)), all three equal"
else
    it_not_ok "a write with both followers at the head goes to them as the capture's frame (store.frames_direct moves)"
    it_diag "frames_direct before '${FD0}', after '${FD1}'; node1 store: $(store 1 | head -c 400)"
fi

# ==== the master's daemon restarted while a writer runs ===========================
# what is committed while the daemon is away is numbered when it is back:
# nothing lost, nothing divergent
WR=35000000
for ((j = 1; j <= 20000; j++)); do
    echo "INSERT INTO mail SELECT $((WR + j)), 'wr', 'restart $j', $j, now() FROM pg_sleep(0.002);"
    echo "\\echo ack $j"
done >"$IT_DIR/wr.sql"
pg_bg 1 "$IT_DIR/wr.sql" "$IT_DIR/wr.out"
WRPID=$PG_BG_PID
it_wait_until "(( \$(acks '$IT_DIR/wr.out') >= 200 ))" 20
stop_node 1
a_stop=$(acks "$IT_DIR/wr.out")
it_wait_until "(( \$(acks '$IT_DIR/wr.out') >= $a_stop + 300 ))" 20
start_node 1
a_start=$(acks "$IT_DIR/wr.out")
it_wait_until "(( \$(acks '$IT_DIR/wr.out') >= $a_start + 300 ))" 20
kill "$WRPID" 2>/dev/null
wait "$WRPID" 2>/dev/null
a_end=$(acks "$IT_DIR/wr.out")
n1=$(count_range 1 $WR $((WR + 99999)))
t0=$(it_now_ms)
if wait_converged "$ALL3" 60 && ((n1 >= a_end)) && [[ $(count_range 3 $WR $((WR + 99999))) == "$n1" && $(div_count 1) == 0 ]]; then
    it_ok "the master's daemon stopped and restarted while a writer runs ($((a_start - a_stop)) transactions while it was away): all $n1 rows everywhere $(since $t0) s later, no divergence"
else
    it_not_ok "the master's daemon restarted under writes: nothing lost"
    it_diag "acks: $a_stop at the stop, $a_start at the start, $a_end in the end; node1 holds $n1, node3 $(count_range 3 $WR $((WR + 99999))); node1's divergence: $(div_count 1)"
    show "$ALL3"
fi

# ==== the master's store sessions terminated while a writer runs ==================
# its workers serve the followers with statements prepared on their own
# connections (pst_exec_prepared): a terminated backend's replacement
# prepares them again; the capture's session reconnects too
WT=36000000
for ((j = 1; j <= 20000; j++)); do
    echo "INSERT INTO mail SELECT $((WT + j)), 'wt', 'terminated $j', $j, now() FROM pg_sleep(0.002);"
    echo "\\echo ack $j"
done >"$IT_DIR/wt.sql"
pg_bg 1 "$IT_DIR/wt.sql" "$IT_DIR/wt.out"
WTPID=$PG_BG_PID
term_store() { pg_val 1 "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pmgcm-store' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"; }
it_wait_until "(( \$(acks '$IT_DIR/wt.out') >= 200 ))" 20
nt1=$(term_store)
a1=$(acks "$IT_DIR/wt.out")
it_wait_until "(( \$(acks '$IT_DIR/wt.out') >= $a1 + 300 ))" 20
nt2=$(term_store)
a2=$(acks "$IT_DIR/wt.out")
it_wait_until "(( \$(acks '$IT_DIR/wt.out') >= $a2 + 300 ))" 20
kill "$WTPID" 2>/dev/null
wait "$WTPID" 2>/dev/null
n1=$(count_range 1 $WT $((WT + 99999)))
t0=$(it_now_ms)
if ((nt1 > 0 && nt2 > 0)) && wait_converged "$ALL3" 60 && [[ $(count_range 2 $WT $((WT + 99999))) == "$n1" && $(count_range 3 $WT $((WT + 99999))) == "$n1" && $(div_count 1) == 0 ]]; then
    it_ok "the master's store sessions terminated twice while a writer runs ($nt1 and $nt2 backends): all $n1 rows everywhere $(since $t0) s later, no divergence"
else
    it_not_ok "the master's store sessions terminated under writes: its workers reconnect and serve again"
    it_diag "terminated $nt1 then $nt2 backends; node1 holds $n1, node2 $(count_range 2 $WT $((WT + 99999))), node3 $(count_range 3 $WT $((WT + 99999))); node1's divergence: $(div_count 1)"
    show "$ALL3"
fi

# ==== 3: kill -9 of a follower while it applies a big burst ===============================
# 100 transactions of 500 updates each (50k changes)
for ((k = 0; k < 100; k++)); do
    echo "UPDATE mail SET size = coalesce(size, 0) + 1 WHERE id > $((k * 1000)) AND id <= $((k * 1000 + 500));"
done >"$IT_DIR/burst.sql"
p0=$(seq_of 2)
sn2=$(st 2 snapshots)
t0=$(it_now_ms)
pg_bg 1 "$IT_DIR/burst.sql" "$IT_DIR/burst.out"
BPID=$PG_BG_PID
if it_wait_until "(( \$(seq_of 2) > $p0 + 2000 ))" 60; then
    kill9 2
    pk=$(st 2 seq)
    KILLED="node2's daemon killed at seq $pk (it was at $p0 before the burst)"
else
    kill9 2
    KILLED="node2 never got 2000 changes into the burst within ${IT_WAITED} s; killed anyway at seq $(st 2 seq)"
fi
wait "$BPID"
brc=$?
it_diag "$KILLED; the burst committed on node1 in $(since $t0) s (psql exit $brc), head $(st 1 seq)"
t0=$(it_now_ms)
start_node 2
if ((brc == 0)) && wait_converged "$ALL3" 120 && it_wait_until "in_sync '$ALL3'" 20; then
    it_ok "kill -9 of node2's daemon in the middle of a 50k-change burst, restarted: all three equal $(since $t0) s later, in-sync (snapshots $sn2 -> $(st 2 snapshots))"
else
    it_not_ok "a follower killed mid-burst catches up"
    show "$ALL3"
fi

# ==== 4: a follower down for 50k changes: deltas, no snapshot ===============================
{
    for ((k = 0; k < 45; k++)); do
        echo "INSERT INTO mail SELECT g, 'burst', 'down ' || g, g % 100, now() FROM generate_series($((20000001 + k * 1000)), $((20000000 + (k + 1) * 1000))) g;"
    done
    for ((k = 0; k < 5; k++)); do
        echo "DELETE FROM mail WHERE id > $((20000000 + k * 1000)) AND id <= $((20000000 + (k + 1) * 1000));"
    done
} >"$IT_DIR/down.sql"
sn3=$(st 3 snapshots)
stop_node 3
p3=$(seq_of 3)
t0=$(it_now_ms)
pg_sql 1 <"$IT_DIR/down.sql" >/dev/null 2>"$IT_DIR/down.err"
drc=$?
it_diag "node3 stopped at seq $p3; 50k changes committed on node1 in $(since $t0) s (psql exit $drc)"
# the other follower has them before node3 returns: they were numbered
it_wait_until "(( \$(seq_of 2) >= $p3 + 50000 ))" 60 || it_diag "node2 is at seq $(st 2 seq) only"
t0=$(it_now_ms)
start_node 3
# while it catches up: what do its status and the text status say?
# The head does not move while node3 catches up (nobody writes): a sample
# of node3 saying in-sync at a position more than sync_lag_max (500)
# behind it is a lie, however the sampling raced the catch-up.
HEAD1=$(st 1 seq)
LAG_SEEN= S_SEEN= LAG_POLL=0 LIE=
sample_lag() {
    local now d
    now=$(it_now_ms)
    ((now - LAG_POLL < 300)) && return 0
    LAG_POLL=$now
    d=$(db 3)
    [[ -z "$LAG_SEEN" ]] && jq -e '(.state == "catching-up" or .state == "loading") and .lag_changes > 0' <<<"$d" >/dev/null 2>&1 &&
        LAG_SEEN=$d
    [[ -z "$LIE" ]] && jq -e --argjson h "${HEAD1:-0}" '.state == "in-sync" and .seq < $h - 500' <<<"$d" >/dev/null 2>&1 &&
        LIE="$d (head $HEAD1)"
    [[ -z "$S_SEEN" ]] && PMGCM_SOCKET=$(it_sock 1) timeout 10 "$PMGCM" status 2>/dev/null | awk 'index($1, "node3(") == 1 { print $4 }' | grep -qx S &&
        S_SEEN=1
    return 0
}
CONV_LAST=0 CONV_POLL=0
if ((drc == 0)) && it_wait_until "sample_lag; converged '$ALL3'" 120 && [[ "$(st 3 snapshots)" == "$sn3" ]]; then
    it_ok "node3, stopped while 50k changes were made, catches up by deltas: all three equal $(since $t0) s after its restart, pmgcm.state.snapshots still $sn3"
else
    it_not_ok "a follower back within retention catches up by deltas (no snapshot)"
    it_diag "snapshots $sn3 -> $(st 3 snapshots); psql exit $drc $(head -c 200 "$IT_DIR/down.err")"
    show "$ALL3"
fi
# what a sample can show depends on how fast the catch-up ran between
# samples (on a loaded machine node1's view can still show S after node3's
# own status already says in-sync); what must never be seen is a lie
if [[ -z "$LIE" && -n "$LAG_SEEN" && -n "$S_SEEN" ]]; then
    it_ok "while node3 caught up its status said $LAG_SEEN and node1's text status showed it S; no sample said in-sync while behind"
elif [[ -z "$LIE" && ( -n "$LAG_SEEN" || -n "$S_SEEN" ) && $(db_field 3 state) == in-sync ]]; then
    it_ok "while node3 caught up: ${LAG_SEEN:+its status said $LAG_SEEN}${S_SEEN:+node1 showed it S in pmgcm status} (the catch-up outran the other sample); no sample said in-sync while behind"
elif [[ -z "$LIE" && -z "$LAG_SEEN" && -z "$S_SEEN" && $(db_field 3 state) == in-sync ]]; then
    it_ok "# SKIP node3 caught up before its status was sampled"
else
    it_not_ok "while node3 caught up, its status said catching-up with lag_changes > 0 and the text status showed it S, and never in-sync while behind"
    it_diag "db sample: ${LAG_SEEN:-none with a lag}; S seen: ${S_SEEN:-no}; now $(db 3)"
fi

# ==== 6: the master dies mid-stream; the least up-to-date node is promoted =====================
# node3 is stopped through 20k changes and a writer's start, so node2 gets
# much further; the writer runs on node1 while its daemon is killed and
# goes on a little after (those rows nobody receives). node3 is promoted
# as soon as it sees node2: it must take node2's changes before it takes
# writes of its own.
stop_node 3
for ((k = 0; k < 20; k++)); do
    echo "UPDATE mail SET size = coalesce(size, 0) + 10 WHERE id > $((k * 5000)) AND id <= $((k * 5000 + 1000));"
done >"$IT_DIR/lag.sql"
pg_sql 1 <"$IT_DIR/lag.sql" >/dev/null
W6=30000000
# about 300 transactions a second (each waits 2 ms), for a minute and more
for ((j = 1; j <= 30000; j++)); do
    echo "INSERT INTO mail SELECT $((W6 + j)), 'w6', 'mid-stream $j', $j, now() FROM pg_sleep(0.002);"
    echo "\\echo ack $j"
done >"$IT_DIR/w6.sql"
pg_bg 1 "$IT_DIR/w6.sql" "$IT_DIR/w6.out"
W6PID=$PG_BG_PID
it_wait_until "(( \$(count_range 2 $W6 $((W6 + 99999))) >= 300 ))" 60 ||
    it_diag "node2 holds only $(count_range 2 $W6 $((W6 + 99999))) of the writer's rows after ${IT_WAITED} s"
kill9 1
a_kill=$(acks "$IT_DIR/w6.out")
it_wait_until "(( \$(acks '$IT_DIR/w6.out') >= $a_kill + 100 )) || ! kill -0 $W6PID 2>/dev/null" 10
kill "$W6PID" 2>/dev/null
wait "$W6PID" 2>/dev/null
a_end=$(acks "$IT_DIR/w6.out")
# node2 has everything it is going to get
it_wait_until "stable 2 1" 20 || it_diag "node2's position kept moving"
CK2=$(pg_checksum 2)
RULES2=$(pg_val 2 "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM rules t")
ids_range 2 $W6 $((W6 + 99999)) >"$IT_DIR/w6.node2"
ids_range 1 $W6 $((W6 + 99999)) >"$IT_DIR/w6.node1"
# U: committed on node1, never received by the survivors
U=$(comm -23 "$IT_DIR/w6.node1" "$IT_DIR/w6.node2")
NU=$(grep -c . <<<"$U")
p2=$(pos 2) p3=$(pos 3)
it_diag "writer acks: $a_kill when node1's daemon was killed, $a_end in the end; node2 at $p2 holds $(grep -c . "$IT_DIR/w6.node2") writer rows, node1 $(grep -c . "$IT_DIR/w6.node1"): $NU nobody received; node3 stopped at $p3"
# node2 has no master now, so it is not in sync: wait-sync requests wait
# there (up to PMM_WAIT_SYNC_MS each). 20 clients wait at once, and 10
# more ask and leave before the answer (each still holds one of the
# socket's 32 client places until its answer is due, then it goes
# nowhere): each of the 20 gets its own {"ok":true,"state":...}, and the
# daemon answers status on.
WAITS=$(timeout 60 python3 - "$(it_sock 2)" <<'PY'
import json, socket, sys
path = sys.argv[1]
req = b'{"cmd":"wait-sync"}\n'
waiters = []
for _ in range(20):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)  # blocking: waits while the listen backlog is full
    s.settimeout(30)
    s.sendall(req)
    waiters.append(s)
for _ in range(10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(req)
    s.close()
states = {}
for s in waiters:
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    try:
        a = json.loads(buf)
        k = a["state"] if a.get("ok") is True and isinstance(a.get("state"), str) else "bad:" + buf.decode(errors="replace").strip()
    except Exception:
        k = "bad:" + buf.decode(errors="replace").strip()
    states[k] = states.get(k, 0) + 1
print(" ".join("%s=%d" % kv for kv in sorted(states.items())))
PY
)
if [[ -n "$WAITS" && ! "$WAITS" =~ bad: ]] && (( $(tr ' ' '\n' <<<"$WAITS" | awk -F= '{ n += $2 } END { print n + 0 }') == 20 )) &&
    it_wait_until "it_envelope 2 | jq -e '.ok == true' >/dev/null 2>&1" 10; then
    it_ok "node2 without a master: 20 wait-sync requests at once each answered ($WAITS), 10 whose clients left did no harm; it answers status on"
else
    it_not_ok "20 wait-sync requests at once on node2 each get an answer, and node2 answers status after"
    it_diag "answers: ${WAITS:-none}; status: $(it_envelope 2 2>&1 | head -c 300)"
fi
start_node 3
it_wait_until "[[ \$(it_state_of 3 node2) =~ ^[AS]$ ]]" 20 || it_diag "node3 does not see node2 alive: '$(it_state_of 3 node2)'"
store_ready 3
p3b=$(pos 3)
run -t 120 3 promote --force
PRC=$RC PROMOTE_OUT=$OUT PROMOTE_MS=$DUR_MS
t0=$(it_now_ms)
early=$(pg_sql 3 "INSERT INTO rules VALUES (9999, 'after the promote', 1, true)" 2>&1) &&
    early="accepted at once"
it_diag "a write on node3 right after the promote returned: $(first_line "$early")"
# the new master takes writes (maybe not at once: it catches up first)
it_wait_until "pg_sql 3 \"INSERT INTO rules VALUES (9999, 'after the promote', 1, true) ON CONFLICT (id) DO NOTHING\" >/dev/null 2>&1" 60
WRITE_OK=$? WRITE_AFTER=$IT_WAITED
others() { grep -v '^public.rules ' <<<"$1"; }
if ((PRC == 0 && WRITE_OK == 0)) && it_wait_until "follows '2 3' 3" 30 && wait_converged "2 3" 60 &&
    [[ "$(others "$(pg_checksum 3)")" == "$(others "$CK2")" &&
        "$(pg_val 3 "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM rules t WHERE id <> 9999")" == "$RULES2" ]]; then
    it_ok "kill -9 of the master mid-stream; the least up-to-date node3 (at $p3b when promoted, node2 at $p2) promoted with --force ($(ms $PROMOTE_MS) s), took a write $WRITE_AFTER s later: node2 follows, both hold exactly what node2 held plus that write ($(since $t0) s)"
else
    it_not_ok "the least up-to-date node promoted after the master died: nothing the most advanced survivor held is lost"
    it_diag "promote exit $PRC: $PROMOTE_OUT; the write on node3 after it: $( ((WRITE_OK == 0)) && echo "ok after $WRITE_AFTER s" || pg_sql 3 "INSERT INTO rules VALUES (9998, 'after the promote', 1, true)" 2>&1)"
    [[ "$(others "$(pg_checksum 3)")" == "$(others "$CK2")" ]] || it_diag "node3 now: $(pg_checksum 3 | paste -sd';') / node2 before: $(paste -sd';' <<<"$CK2")"
    show "2 3"
fi
st3=$(pg_val 3 "SELECT role || ' ' || master || ' epoch ' || epoch FROM pmgcm.state")
it_diag "node3's pmgcm.state after the promote: $st3; promote said: $(first_line "$PROMOTE_OUT")"

# ==== 7: the old master returns with changes nobody received ==================================
sn1=$(st 1 snapshots)
d1=$(div_count 1)
t0=$(it_now_ms)
start_node 1
if it_wait_until "follows '1 2 3' 3" 30 && wait_converged "$ALL3" 90 && it_wait_until "in_sync '$ALL3'" 20; then
    it_ok "the old master node1 returns: steps down, follows node3, all three equal ($(since $t0) s; snapshots $sn1 -> $(st 1 snapshots))"
else
    it_not_ok "the killed master returns, steps down and resyncs"
    show "$ALL3"
fi
got=$(div_ids 1 | grep -x '[0-9]*' | grep -c .)
if [[ "$(div_ids 1)" == "$U" || ($NU == 0 && $(div_count 1) == 0) ]]; then
    it_ok "node1's pmgcm.divergence holds exactly the $NU rows it committed that nobody received (was ${d1:-?} before)"
else
    it_not_ok "node1's pmgcm.divergence holds exactly the $NU changes nobody received"
    it_diag "divergence rows: $(div_count 1) ($got naming a mail id); wanted ids $(head -n 3 <<<"$U" | paste -sd' ')..."
    it_diag "$(pg_sql 1 "SELECT to_jsonb(d) FROM pmgcm.divergence d LIMIT 3" 2>&1 | head -c 600)"
fi

# again, deterministic: N changes written on master node3 while both
# followers are stopped, node3 killed, node2 promoted, node3 back
stop_node 1
stop_node 2
s7=$(seq_of 3)
o=$(pg_sql 3 2>&1 <<'EOF'
BEGIN;
INSERT INTO mail SELECT g, 'lost', 'lost ' || g, 1, now() FROM generate_series(40000001, 40000060) g;
COMMIT;
BEGIN;
INSERT INTO mail SELECT g, 'lost', 'lost ' || g, 1, now() FROM generate_series(40000061, 40000100) g;
UPDATE mail SET subject = 'diverged' WHERE id BETWEEN 1001 AND 1030;
COMMIT;
DELETE FROM mail WHERE id BETWEEN 2001 AND 2007;
EOF
)
wrc=$?
N7=137
EXPECT7=$( (seq 40000001 40000100; seq 1001 1030; seq 2001 2007) | sort -n)
# let node3's daemon number them (they are in its log, not just captured)
it_wait_until "(( \$(seq_of 3) >= $s7 + $N7 ))" 10 || it_diag "node3 numbered only $(($(seq_of 3) - s7)) of them before it was killed"
kill9 3
d3=$(div_count 3)
start_node 1
start_node 2
it_wait_until "[[ \$(it_state_of 2 node1) =~ ^[AS]$ ]]" 20 || it_diag "node2 does not see node1 alive: '$(it_state_of 2 node1)'"
store_ready 2
run -t 120 2 promote --force
PRC=$RC PROMOTE_OUT=$OUT
it_wait_until "follows '1 2' 2" 30 || it_diag "node1 does not follow node2"
CK_NEW=$(pg_checksum 2)
t0=$(it_now_ms)
start_node 3
if ((wrc == 0 && PRC == 0)) && it_wait_until "follows '1 2 3' 2" 30 && wait_converged "$ALL3" 90 &&
    [[ "$(pg_checksum 3)" == "$CK_NEW" ]] && it_wait_until "in_sync '$ALL3'" 20; then
    it_ok "master node3 wrote $N7 changes while both followers were stopped and was killed; node2 promoted; node3 returns, steps down, its tables equal node2's ($(since $t0) s)"
else
    it_not_ok "an old master with $N7 unshipped changes steps down and resyncs"
    it_diag "psql exit $wrc: ${o:0:200}; promote on node2 exit $PRC: $PROMOTE_OUT"
    show "$ALL3"
fi
got=$(div_ids 3)
if [[ "$got" == "$EXPECT7" && "$(div_count 3)" == "$((${d3:-0} + N7))" && "$(div_count 1)" == "$(grep -c . <<<"$U")" ]]; then
    it_ok "node3's pmgcm.divergence holds exactly those $N7 changes (100 inserts, 30 updates, 7 deletes); node1's divergence unchanged"
else
    it_not_ok "node3's pmgcm.divergence holds exactly the $N7 unshipped changes"
    it_diag "node3 divergence: $(div_count 3) rows (was $d3), $(grep -c . <<<"$got") ids, $(comm -3 <(echo "$got") <(echo "$EXPECT7") | wc -l) differ from the expected ids; node1 has $(div_count 1)"
    it_diag "$(pg_sql 3 "SELECT to_jsonb(d) FROM pmgcm.divergence d ORDER BY 1 DESC LIMIT 2" 2>&1 | head -c 600)"
fi

# ==== 5: a follower away longer than the retention takes a snapshot ============================
for i in $ALL3; do
    stop_node "$i"
    pg_conf "$i" db_log_retention_s=5
    start_node "$i"
done
wait_converged "$ALL3" 60 && it_wait_until "in_sync '$ALL3'" 30 ||
    it_diag "not in sync after restarting with db_log_retention_s = 5"
sn3=$(st 3 snapshots)
stop_node 3
E3=$(st 3 epoch) P3=$(seq_of 3)
pg_sql 2 "INSERT INTO mail SELECT g, 'retention', 'r ' || g, 1, now() FROM generate_series(50000001, 50002000) g" >/dev/null
t0=$(it_now_ms)
# numbered and shipped to node1, then trimmed everywhere
if it_wait_until "(( \$(seq_of 1) >= $P3 + 2000 ))" 30 &&
    it_wait_until "[[ \$(pg_val 1 'SELECT count(*) FROM pmgcm.log WHERE epoch = $E3 AND seq = $P3 + 1') == 0 && \$(pg_val 2 'SELECT count(*) FROM pmgcm.log WHERE epoch = $E3 AND seq = $P3 + 1') == 0 ]]" 60; then
    it_diag "the change after node3's position ($E3/$P3) left node1's and node2's logs $(since $t0) s after it was written"
else
    it_diag "node1 at $(pos 1); the logs still hold $E3/$((P3 + 1)) after ${IT_WAITED} s (oldest on node2: $(pg_val 2 "SELECT min(ts) FROM pmgcm.log"))"
fi
pg_sql 2 "INSERT INTO mail VALUES (50002001, 'retention', 'after the trim', 1, now())" >/dev/null
t0=$(it_now_ms)
start_node 3
if wait_converged "$ALL3" 120 && (($(st 3 snapshots) > sn3)); then
    it_ok "node3, away longer than db_log_retention_s = 5, takes a snapshot by itself (snapshots $sn3 -> $(st 3 snapshots)): all three equal $(since $t0) s after its restart"
else
    it_not_ok "a follower away beyond the retention takes a snapshot"
    it_diag "snapshots $sn3 -> $(st 3 snapshots)"
    show "$ALL3"
fi
it_diag "node3.log about the snapshot: $(grep -i snapshot "$(it_log 3)" | tail -n 2 | paste -sd'|' | head -c 400)"

# ==== 8: a joiner whose schema differs ========================================================
start_node 4
it_wait_until "[[ \$(db_field 4 state) == idle ]]" 20 || it_diag "node4's store says $(db 4)"
FP2=$(it_fingerprint_of 2)
run -t 60 4 join "${IT_IP[2]}" --fingerprint "$FP2" --password-file "$PW"
J4_RC=$RC J4_OUT=$OUT
# either the join fails, or node4 is in but its store refuses to load
it_wait_until "((J4_RC != 0)) || [[ \$(db_field 4 state) =~ ^(error|diverged)$ ]]" 30
msg="$J4_OUT $(db_field 4 error) $(grep -i 'schema' "$(it_log 4)" | tail -n 3)"
if grep -qi 'schema mismatch' <<<"$msg" && grep -q 'mail' <<<"$msg" &&
    [[ "$(db_field 4 state)" != in-sync && "$(pg_checksum 4)" == "$CK4_0" &&
        "$(pg_checksum_local 4)" == "${LOCAL0[4]}" ]]; then
    it_ok "node4 (mail.size bigint) joining: join exit $J4_RC, its rows untouched: '$(grep -io 'schema mismatch.*' <<<"$msg" | head -n1 | cut -c1-160)...'"
else
    it_not_ok "a joiner with a different schema gets 'schema mismatch' and keeps its rows"
    it_diag "join exit $J4_RC: $J4_OUT"
    it_diag "node4 db: $(db 4); checksum before: $(paste -sd';' <<<"$CK4_0"); now: $(pg_checksum 4 | paste -sd';')"
    show 4
fi
stop_node 4

# ==== changes bigger than a stream frame (8 MiB) ===================================================
# an UPDATE of a 5 MB text to another 5 MB text (old + new: 10 MB), a 5 MB
# bytea (10 MB as JSON hex text), then a small change after them
t0=$(it_now_ms)
o=$(pg_sql 2 "UPDATE mail SET subject = repeat('u', 5000000) WHERE id = 45;
              UPDATE mail SET subject = repeat('v', 5000000) WHERE id = 45;
              INSERT INTO objects VALUES (300, decode(repeat('ab', 5000000), 'hex'), '{}', 0, 0, NULL);
              INSERT INTO rules VALUES (3000, 'after the big rows', 1, true)" 2>&1)
if wait_converged "$ALL3" 60 && [[ $(pg_val 3 "SELECT length(data) FROM objects WHERE id = 300") == 5000000 ]]; then
    it_ok "changes of 10 MB (a 5 MB text updated to another, a 5 MB bytea) and a change after them reach every node ($(since $t0) s)"
else
    it_not_ok "changes of 10 MB (a 5 MB text updated to another, a 5 MB bytea) reach every node"
    it_diag "psql: ${o:0:200}"
    show "$ALL3"
fi

# ==== 10: a slot lost or dropped while its daemon was down =======================================
# The master's slot is invalidated by max_slot_wal_keep_size while its
# daemon is down and rows commit there: decoding can never hand them over,
# so the master restarts its log and the followers take a snapshot (which
# holds them); nothing is lost and no follower keeps old data. Then a
# follower's slot dropped by hand while its daemon is down: it is made again
# and that follower resyncs by a snapshot. Deltas flow again after each.
slot_of() { pg_val "$1" "SELECT slot_name || ' ' || coalesce(wal_status, '-') || ' ' || coalesce(restart_lsn::text, '-') FROM pg_replication_slots WHERE database = current_database() AND slot_name LIKE 'pmgcm\_%'"; }
capture_of() { it_envelope "$1" 2>/dev/null | jq -c '.store.capture // empty' 2>/dev/null; }
# wal_round I: one more WAL segment on node I (a write outside the
# replicated set, a segment switch), then a checkpoint
wal_round() {
    pg_sql "$1" >/dev/null 2>&1 <<'EOF'
INSERT INTO local_cache SELECT 'w' || g || '-' || md5(random()::text), repeat('w', 200) FROM generate_series(1, 50) g;
SELECT pg_switch_wal();
CHECKPOINT;
EOF
}
slot_lost() { wal_round "$1"; [[ "$(slot_of "$1" | cut -d' ' -f2)" == lost ]]; }
wait_converged "$ALL3" 60 || it_diag "not converged before the lost-slot point"
M=2
sn1=$(st 1 snapshots) sn3=$(st 3 snapshots) E2=$(st 2 epoch) P2=$(seq_of 2)
SLOT2=$(slot_of 2)
stop_node $M
printf '%s\n' "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB';" "SELECT pg_reload_conf();" | pg_sql $M >/dev/null
pg_sql $M "INSERT INTO mail SELECT g, 'slot lost', 'while down ' || g, 2, now() FROM generate_series(60000001, 60000500) g;
           UPDATE rules SET name = 'renamed while the slot was lost' WHERE id = 3000" >/dev/null
it_wait_until "slot_lost $M" 60
LOST2=$(slot_of $M)
printf '%s\n' "ALTER SYSTEM RESET max_slot_wal_keep_size;" "SELECT pg_reload_conf();" | pg_sql $M >/dev/null
t0=$(it_now_ms)
start_node $M
pg_sql $M "INSERT INTO mail VALUES (60000501, 'slot lost', 'after the restart', 3, now())" >/dev/null
if [[ "$LOST2" == *" lost "* ]] && wait_converged "$ALL3" 120 &&
    [[ $(count_range 1 60000001 60000501) == 501 && $(count_range 3 60000001 60000501) == 501 ]] &&
    (($(st 1 snapshots) > sn1 && $(st 3 snapshots) > sn3)) &&
    grep -q "slot .* was invalidated" "$(it_log $M)" &&
    [[ "$(slot_of $M | cut -d' ' -f2)" =~ ^(reserved|extended)$ ]] &&
    it_wait_until "in_sync '$ALL3'" 30; then
    it_ok "the master's slot lost (max_slot_wal_keep_size) while its daemon was down and 500 rows committed: re-made, the log restarted ($E2/$P2 -> $(pos $M)), node1 and node3 took a snapshot, all three equal with those rows and one after ($(since $t0) s); slot_repairs $(capture_of $M | jq -r .slot_repairs)"
else
    it_not_ok "the master's slot lost while its daemon was down: the followers resync, nothing lost"
    it_diag "slot before: $SLOT2; after the WAL rounds: $LOST2; now: $(slot_of $M); snapshots node1 $sn1 -> $(st 1 snapshots), node3 $sn3 -> $(st 3 snapshots); rows 60000001..60000501 on node1 $(count_range 1 60000001 60000501), node3 $(count_range 3 60000001 60000501)"
    it_diag "node$M.log: $(grep -i 'slot' "$(it_log $M)" | tail -n 3 | paste -sd'|' | head -c 500)"
    show "$ALL3"
fi

sn3=$(st 3 snapshots) SLOT3=$(slot_of 3)
stop_node 3
pg_sql 3 "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database() AND slot_name LIKE 'pmgcm\_%'" >/dev/null
GONE3=$(slot_of 3)
pg_sql $M "INSERT INTO mail VALUES (60000502, 'slot dropped', 'while node3 was down', 4, now())" >/dev/null
t0=$(it_now_ms)
start_node 3
pg_sql $M "INSERT INTO mail VALUES (60000503, 'slot dropped', 'after node3 is back', 5, now())" >/dev/null
# (a node without loaded data loads its tables in parallel, each committed
# on its own: the rows can be there before the load's last commit, which
# counts the snapshot; in-sync comes after it)
if [[ -n "$SLOT3" && -z "$GONE3" ]] && wait_converged "$ALL3" 120 &&
    it_wait_until "in_sync '$ALL3'" 30 &&
    [[ $(count_range 3 60000502 60000503) == 2 ]] && (($(st 3 snapshots) > sn3)) &&
    grep -q "slot .* is missing" "$(it_log 3)" && [[ "$(slot_of 3 | cut -d' ' -f1)" == "$(cut -d' ' -f1 <<<"$SLOT3")" ]]; then
    it_ok "a follower's slot dropped while its daemon was down: made again, node3 resynced by a snapshot (snapshots $sn3 -> $(st 3 snapshots)), all three equal ($(since $t0) s)"
else
    it_not_ok "a follower's slot dropped while its daemon was down: made again, it resyncs"
    it_diag "slot before: $SLOT3; after the drop: '$GONE3'; now: $(slot_of 3); snapshots $sn3 -> $(st 3 snapshots); rows $(count_range 3 60000502 60000503)"
    it_diag "node3.log: $(grep -i 'slot' "$(it_log 3)" | tail -n 3 | paste -sd'|' | head -c 500)"
    show "$ALL3"
fi

# ==== the end ===================================================================================
if wait_converged "$ALL3" 60 && it_wait_until "in_sync '$ALL3' && letters_a 2 '$ALL3'" 30; then
    it_ok "in the end all three equal, in-sync, A ($(pg_checksum 2 | awk '{ printf "%s %s; ", $1, $2 }'))"
else
    it_not_ok "in the end all three equal and in-sync"
    show "$ALL3"
fi

# one SIGTERM each, all at once, then reap them
bad=$STOP_BAD
alive=
for i in 1 2 3 4; do it_alive_pid "$i" && { it_signal "$i" TERM; alive+="$i "; }; done
for i in $alive; do
    it_reap "$i" 15
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" 1 2 3 4
it_diag "took $(($(date +%s) - IT_T0)) s"
it_plan "$IT_TAPN"
exit 0
