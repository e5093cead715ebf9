#!/usr/bin/env bash
# tests/integration/safety.sh - data safety (issue 12, the database side):
# promote, resync and status can never silently lose data or report it
# wrong. 4 real pmgclusterd daemons in their own network namespaces (as
# root; else on 127.0.x.y), each with its own throwaway PostgreSQL
# (tests/integration/pg.sh); node1 creates the cluster with 20,000 mail
# rows and 20 MB of objects, node2 and node3 join.
#
#   1  status is true at start: node3's daemon restarted while its
#      PostgreSQL is down is never A (not on node1, not on itself, not in
#      the first second), its reason says "database down"; a follower
#      whose PostgreSQL stops while its daemon runs turns S with that
#      reason and its /readyz 503; both A again when PostgreSQL is back
#   2  a follower restarted 60,000 changes behind: status sampled during
#      the catch-up (node1's and its own letter, its /readyz, its reason)
#      is never A / 200 while it is behind the master's head by more than
#      the threshold (the store's sync_lag_max); the reason says "behind"
#   3  nodes 2 and 3 stopped, node4 joins (its load held back by a lock
#      in its own database), the master killed: `pmgcm promote` on node4,
#      with and without --force, is refused ("not loaded"); with node2
#      back, refused naming node2 (the live node with the most advanced
#      data); `--accept-data-loss` promotes it, printing and recording what
#      the cluster loses (in node4's status until cleared)
#   4  the others return and follow node4: before their tables are
#      replaced by node4's, every row they held is kept in a backup schema
#      (counted in the log and in their status); `pmgcm backups` lists
#      them, `pmgcm backups clear ID` drops one, a bad id is refused
#   5  REPEATABLE READ and SERIALIZABLE writers whose snapshot predates a
#      step-down: their write on the old master is refused or kept as
#      divergence with a non-A state; never captured and unsent
#   6  a hostile peer: a T change naming "public.mail; COPY ... TO
#      PROGRAM 'touch FILE'" in the master's log: every follower ends the
#      stream with an error in its status, FILE never appears, no table
#      changed; once the entry is gone the followers catch up
#   7  the master down after a promote that forked before the old
#      master's last rows: a node behind in the new term and the old
#      master (a longer log of the older term) both catch up from the
#      most advanced node of the new term, the old master's rows kept in
#      a backup
#
# Needs root (PostgreSQL runs as the postgres user) and PostgreSQL 15.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-1200}
. "$here/lib.sh"
. "$here/pg.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
command -v curl >/dev/null || it_bail "curl not installed"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the safety tests need root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }

it_init 4
if [[ $IT_MODE == loopback ]]; then
    net=127.0.$((100 + $$ % 100))
    for i in 1 2 3 4; do IT_IP[i]=$net.$((10 + i)); done
fi
pg_init
ALL4="1 2 3 4"
SP=7948
PWNED=/tmp/pmgcm-pwned-$$
rm -f "$PWNED"

PW=$IT_DIR/join.pw
printf 'correct horse battery staple\n' >"$PW"
chmod 600 "$PW"

# ---- helpers -----------------------------------------------------------------
since() { it_fmt_ms $(($(it_now_ms) - $1)); }
STOP_BAD=
kill9() {
    it_signal "$1" KILL
    wait "${IT_PID[$1]}" 2>/dev/null
}
# row I J: node I's status row for node J (compact JSON)
row() { it_status "$1" 2>/dev/null | jq -c --arg n "node$2" '.members? // . | .[] | select(.name == $n)' 2>/dev/null; }
db() { row "$1" "$1" | jq -c '.db // empty' 2>/dev/null; }
# letter I J: the letter node I's text status shows for node J
letter() {
    PMGCM_SOCKET=$(it_sock "$1") timeout 10 "$PMGCM" status 2>/dev/null |
        awk -v m="node$2(" 'index($1, m) == 1 { print $4 }'
}
letters_a() {
    local j
    for j in $2; do [[ "$(letter "$1" "$j")" == A ]] || return 1; done
}
# readyz I: node I's /readyz status code (000: no answer)
readyz() {
    local c
    if [[ $IT_MODE == netns ]]; then
        c=$(ip netns exec "$IT_BRNS" curl -s -o /dev/null --max-time 3 -w '%{http_code}' "http://${IT_IP[$1]}:$SP/readyz" 2>/dev/null)
    else
        c=$(curl -s -o /dev/null --max-time 3 -w '%{http_code}' "http://${IT_IP[$1]}:$SP/readyz" 2>/dev/null)
    fi
    echo "${c:-000}"
}
show() {
    local i
    for i in $1; do
        it_diag "node$i: state $(pg_val "$i" "SELECT to_jsonb(s) FROM pmgcm.state s" | head -c 300) | store $(store "$i" | head -c 400) | roles $(it_roles_of "$i")"
        grep -Ei 'store|snapshot|diverg|backup|promot' "$(it_log "$i")" | tail -n 5 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    [[ -n "$PG_SAME_DIFF" ]] && it_diag "checksums: $PG_SAME_DIFF"
    return 0
}
mail_count() { local v; v=$(pg_val "$1" "SELECT count(*) FROM mail"); echo "${v:-0}"; }
# backup_rows I: rows node I keeps in backup schemas (pmgcm.backups)
backup_rows() { local v; v=$(pg_val "$1" "SELECT coalesce(sum(rows), 0) FROM pmgcm.backups WHERE schema_name IS NOT NULL" 2>/dev/null); echo "${v:-0}"; }
# backup_mail_ids I: the mail ids in node I's backup schemas, sorted
backup_mail_ids() {
    local s
    for s in $(pg_sql "$1" "SELECT schema_name FROM pmgcm.backups WHERE schema_name IS NOT NULL" 2>/dev/null); do
        pg_sql "$1" "SELECT id FROM $s.\"public.mail\"" 2>/dev/null
    done | sort -n
}

# psql sessions held open: sess_open NAME I starts psql on node I reading
# from a fifo; sess NAME SQL sends SQL; sess_out NAME is what it printed
declare -A SESS_FD SESS_PID
sess_open() {
    local f=$IT_DIR/sess.$1
    mkfifo "$f.in"
    "$PG_BINDIR/psql" -X -q -At -h "$(pg_sock "$2")" -U postgres -d pmg <"$f.in" >"$f.out" 2>&1 &
    SESS_PID[$1]=$!
    exec {fd}>"$f.in"
    SESS_FD[$1]=$fd
}
sess() { printf '%s\n' "$2" >&"${SESS_FD[$1]}"; }
sess_out() { cat "$IT_DIR/sess.$1.out" 2>/dev/null; }
sess_close() {
    local fd=${SESS_FD[$1]}
    exec {fd}>&-
    wait "${SESS_PID[$1]}" 2>/dev/null
}

# ---- servers, schema, data ----------------------------------------------------------
for i in $ALL4; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" || it_bail "schema on node$i"
done
pg_sql 1 >/dev/null <<'EOF' || it_bail "loading node1's data failed"
INSERT INTO mail SELECT g, 'node1', 'subject ' || g, g % 5000, now() FROM generate_series(1, 20000) g;
INSERT INTO rules VALUES (1, 'rule 1', 1, true), (2, 'rule 2', 2, false);
-- 40 MB of COPY text: more than a snapshot stream holds in flight, so a
-- joiner whose master dies mid-snapshot cannot finish from what arrived
INSERT INTO objects SELECT g, decode(repeat(lpad(to_hex(g), 2, '0'), 2500000), 'hex'), '{}', 0, 0, NULL
  FROM generate_series(1, 8) g;
EOF
# node4 holds rows of its own before it joins
pg_sql 4 "INSERT INTO mail SELECT g, 'node4', 'own ' || g, g, now() FROM generate_series(900001, 900005) g" >/dev/null
for i in $ALL4; do
    it_write_config_lc "$i" "node$i"
    pg_conf "$i"
done
for i in 1 2 3; do start_node "$i"; done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30 ||
    it_diag "the stores did not all say idle: $(db 1) $(db 2) $(db 3)"
run 1 create --password-file "$PW"
((RC == 0)) || { it_diag "create: $OUT"; it_bail "no cluster"; }
FP1=$(it_fingerprint_of 1)
for i in 2 3; do
    run -t 120 "$i" join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
    ((RC == 0)) || it_diag "node$i join exit $RC: $OUT"
done
if wait_converged "1 2 3" 60 && it_wait_until "in_sync '1 2 3' && letters_a 1 '1 2 3'" 30; then
    it_diag "node1 created with 20,000 mail rows, node2 and node3 joined"
else
    show "1 2 3"
    it_bail "the three nodes did not converge"
fi
LAGMAX=$(store 1 | jq -r '.sync_lag_max // empty')
it_diag "the store's sync_lag_max: ${LAGMAX:-unknown}"
LAGMAX=${LAGMAX:-500}

# ==== 1: status is true while a database is down ======================================
stop_node 3
pg_stop 3
start_node 3
t0=$(it_now_ms)
bad= n=0 reason=
while (($(it_now_ms) - t0 < 5000)) || [[ -z "$reason" && $(($(it_now_ms) - t0)) -lt 20000 ]]; do
    l1=$(letter 1 3) l3=$(letter 3 3)
    n=$((n + 1))
    [[ "$l1" == A ]] && bad+="node1 showed node3 A at +$(since $t0) s; "
    [[ "$l3" == A ]] && bad+="node3 showed itself A at +$(since $t0) s; "
    [[ -z "$reason" ]] && reason=$(row 3 3 | jq -r '.db.reason // empty' 2>/dev/null | grep -i 'database' )
done
if [[ -z "$bad" && -n "$reason" ]]; then
    it_ok "node3's daemon restarted with its PostgreSQL down: never A on node1 or on itself ($n samples over $(since $t0) s from its start); its reason: '$reason'"
else
    it_not_ok "a daemon whose database is down is never A, from its first second on"
    it_diag "${bad:0:600} reason '${reason}'; node3 row on node1: $(row 1 3)"
fi
pg_start 3
if it_wait_until "in_sync 3 && [[ \$(letter 1 3) == A && \$(letter 3 3) == A ]]" 60; then
    it_ok "node3's PostgreSQL back: A on node1 and on itself (${IT_WAITED} s)"
else
    it_not_ok "node3 A again once its PostgreSQL is back"
    show 3
fi
pg_stop 2
if it_wait_until "[[ \$(letter 1 2) == S && \$(letter 2 2) == S && \$(readyz 2) == 503 ]] && row 2 2 | jq -e '.db.reason | test(\"database\")' >/dev/null" 30; then
    it_ok "node2's PostgreSQL stopped under a running daemon: S on node1 and on itself, /readyz 503, reason '$(row 2 2 | jq -r .db.reason)' (${IT_WAITED} s)"
else
    it_not_ok "a follower whose PostgreSQL stops turns S with the reason, /readyz 503"
    it_diag "node1 shows node2 '$(letter 1 2)', node2 itself '$(letter 2 2)', readyz $(readyz 2); node2 row: $(row 2 2)"
fi
pg_start 2
it_wait_until "in_sync '1 2 3' && letters_a 1 '1 2 3' && [[ \$(readyz 2) == 200 ]]" 60 ||
    it_diag "not all A after node2's PostgreSQL came back: $(db 2)"

# ==== 2: a far-behind restart: status sampled during the catch-up ==============================
stop_node 3
p3=$(seq_of 3)
for ((k = 0; k < 60; k++)); do
    echo "INSERT INTO mail SELECT g, 'behind', 'b ' || g, 1, now() FROM generate_series($((100001 + k * 1000)), $((100000 + (k + 1) * 1000))) g;"
done | pg_sql 1 >/dev/null
it_wait_until "(( \$(seq_of 2) >= $p3 + 60000 ))" 60 || it_diag "node2 at $(seq_of 2) only"
head1=$(seq_of 1)
t0=$(it_now_ms)
start_node 3
n=0 viol= behind_seen= s_seen=
while :; do
    m=$(seq_of 1)
    l1=$(letter 1 3) l3=$(letter 3 3) rz=$(readyz 3) r=$(row 3 3 | jq -r '.db.reason // empty' 2>/dev/null)
    s=$(seq_of 3)
    n=$((n + 1))
    lag=$((m - s))
    if ((lag > LAGMAX)); then
        [[ "$l1" == A || "$l3" == A || "$rz" == 200 ]] && viol+="+$(since $t0) s: behind by >= $lag, node1 '$l1' self '$l3' readyz $rz; "
        [[ "$l1" == S ]] && s_seen=1
    fi
    [[ -z "$behind_seen" && "$r" == *behind* ]] && behind_seen=$r
    ((s >= head1)) && break
    (($(it_now_ms) - t0 > 120000)) && { viol+="not caught up in 120 s; "; break; }
done
if [[ -z "$viol" && -n "$behind_seen" && -n "$s_seen" ]]; then
    it_ok "node3 restarted 60,000 changes behind: $n samples during its catch-up ($(since $t0) s), none A or readyz 200 while behind by more than $LAGMAX; node1 showed it S, its reason '$behind_seen'"
elif [[ -z "$viol" && $n -le 2 ]]; then
    it_ok "# SKIP node3 caught up before its status was sampled"
else
    it_not_ok "a far-behind follower is S with a 'behind' reason and readyz 503 until it has caught up"
    it_diag "${viol:0:800}; behind reason seen: '${behind_seen}'; S seen: ${s_seen:-no}"
fi
if it_wait_until "in_sync 3 && [[ \$(letter 1 3) == A && \$(letter 3 3) == A && \$(readyz 3) == 200 ]]" 60; then
    it_ok "caught up: node3 A on node1 and on itself, /readyz 200"
else
    it_not_ok "node3 A once caught up"
    show 3
fi

# ==== 3: promote of a node whose data is not loaded ============================================
CK1=$(pg_checksum 1)
ROWS1=$(mail_count 1)
stop_node 2
stop_node 3
start_node 4
it_wait_until "[[ \$(db_field 4 state) == idle ]]" 20 || it_diag "node4's store: $(db 4)"
# node4's load is held back: a transaction of its own holds a lock its
# snapshot's TRUNCATE waits for
sess_open lock 4
sess lock "BEGIN; LOCK TABLE mail IN ACCESS SHARE MODE; \\echo locked"
it_wait_until "grep -q locked '$IT_DIR/sess.lock.out'" 10 || it_diag "the lock session: $(sess_out lock)"
run 4 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW" --no-wait
((RC == 0)) || it_diag "node4 join exit $RC: $OUT"
it_wait_until "[[ \$(st 4 loaded) == f && \$(store 4 | jq -r .state) == loading ]]" 30 ||
    it_diag "node4 is not loading: $(store 4)"
kill9 1
it_wait_until "[[ \$(it_state_of 4 node1) == D ]]" 30 || it_diag "node4 shows node1 '$(it_state_of 4 node1)'"
E4=$(it_cluster_of 4 | jq -r .epoch)
run 4 promote
R1=$RC O1=$OUT
run 4 promote --force
R2=$RC O2=$OUT
if ((R1 == 1 && R2 == 1)) && grep -qi 'not loaded' <<<"$O1" && grep -qi 'not loaded' <<<"$O2" &&
    [[ "$(it_cluster_of 4 | jq -r .epoch)" == "$E4" ]]; then
    it_ok "node4 not loaded, master dead, nobody else up: promote and promote --force refused: '$(first_line "$O1")'"
else
    it_not_ok "promote of a node whose data is not loaded is refused, with and without --force"
    it_diag "promote exit $R1: $O1"
    it_diag "promote --force exit $R2: $O2"
fi
start_node 2
it_wait_until "[[ \$(it_state_of 4 node2) =~ ^[AS]$ ]] && row 4 2 | jq -e '.db.seq > 0' >/dev/null" 30 ||
    it_diag "node4 does not see node2 with data: $(row 4 2)"
run 4 promote --force
if ((RC == 1)) && grep -qi 'not loaded' <<<"$OUT" && grep -q 'node2' <<<"$OUT"; then
    it_ok "with node2 back: refused again, naming node2 as the live node with the most advanced data: '$(first_line "$OUT")'"
else
    it_not_ok "the refusal names the live node with the most advanced data (node2)"
    it_diag "exit $RC: $OUT"
fi
# node2 goes again, node4's load fails when the lock goes: nobody to load from
stop_node 2
sess lock "ROLLBACK;"
sess_close lock
it_wait_until "[[ \$(store 4 | jq -r .state) != loading ]]" 30 || it_diag "node4 still loading: $(store 4)"
run 4 promote --accept-data-loss
if ((RC == 0)) && grep -qi 'lose' <<<"$OUT" && it_wait_until "follows 4 4" 20 &&
    grep -qi 'accept-data-loss' "$(it_log 4)" && store 4 | jq -e '.kept.backups >= 1' >/dev/null; then
    it_ok "promote --accept-data-loss on node4 proceeds; it printed what the cluster loses ('$(grep -i lose <<<"$OUT" | head -n1 | cut -c1-200)'), logged it and keeps a record in its status"
else
    it_not_ok "promote --accept-data-loss proceeds, printing and recording what is lost"
    it_diag "exit $RC: $OUT"
    show 4
fi

# ==== 4: the others resync; their rows are kept in backups ==============================================
t0=$(it_now_ms)
for i in 1 2 3; do start_node "$i"; done
if it_wait_until "follows '$ALL4' 4" 60 && wait_converged "$ALL4" 120 && it_wait_until "in_sync '$ALL4'" 30; then
    it_ok "nodes 1, 2, 3 return, follow node4 and hold its data ($(since $t0) s; $(mail_count 1) mail rows, were $ROWS1)"
else
    it_not_ok "the old nodes follow the promoted node4"
    show "$ALL4"
fi
bad=
for i in 1 2 3; do
    b=$(backup_rows "$i")
    ids=$(backup_mail_ids "$i" | grep -c .)
    ((ids >= ROWS1)) || bad+="node$i keeps $ids mail rows ($b rows in all) of $ROWS1; "
    grep -qiE 'backup.*[0-9]+ rows|[0-9]+ rows.*backup' "$(it_log "$i")" || bad+="node$i logged no backup count; "
    store "$i" | jq -e '.kept.backups >= 1 and .kept.rows >= '"$ROWS1" >/dev/null || bad+="node$i status: $(store "$i" | jq -c .kept); "
done
if [[ -z "$bad" ]]; then
    it_ok "before node4's data replaced theirs, nodes 1, 2, 3 kept every row they held in a backup schema ($ROWS1+ mail rows each), logged with counts, shown in their status"
else
    it_not_ok "no resync destroys rows silently: every replaced row is in a backup"
    it_diag "$bad"
    show "1 2 3"
fi
run 2 backups
L=$OUT LRC=$RC
run 2 --output-format json backups
id=$(jq -r '[.backups[] | select(.schema != null)][0].id // empty' <<<"$OUT" 2>/dev/null)
schema=$(jq -r '[.backups[] | select(.schema != null)][0].schema // empty' <<<"$OUT" 2>/dev/null)
run 2 backups clear 999999
BRC=$RC BOUT=$OUT
run 2 backups clear "${id:-0}"
CRC=$RC COUT=$OUT
gone=$(pg_val 2 "SELECT count(*) FROM pg_namespace WHERE nspname = '$schema'")
if ((LRC == 0 && BRC == 1 && CRC == 0)) && [[ -n "$id" && "$gone" == 0 ]] && grep -q "$schema" <<<"$L" &&
    it_wait_until "store 2 | jq -e '.kept.rows == 0' >/dev/null" 10; then
    it_ok "pmgcm backups lists node2's backup ($schema); clear 999999 refused ('$(first_line "$BOUT")'); clear $id drops it: gone from the database and from the status"
else
    it_not_ok "pmgcm backups list / clear"
    it_diag "list exit $LRC: ${L:0:400}"
    it_diag "clear 999999 exit $BRC: $BOUT; clear '$id' exit $CRC: $COUT; schema '$schema' left: $gone; kept $(store 2 | jq -c .kept)"
fi
for i in 1 3 4; do
    for id in $(PMGCM_SOCKET=$(it_sock "$i") "$PMGCM" --output-format json backups 2>/dev/null | jq -r '.backups[].id'); do
        run "$i" backups clear "$id" >/dev/null
    done
done

# ==== 5: REPEATABLE READ / SERIALIZABLE writers across a step-down ================================
pg_sql 4 "INSERT INTO mail SELECT g, 'fence', 'f ' || g, 1, now() FROM generate_series(700001, 700100) g" >/dev/null
wait_converged "$ALL4" 60 || show "$ALL4"
# fence_case LEVEL OLD NEW ID: a LEVEL writer on master OLD takes its
# snapshot, NEW is promoted (--force), then the writer inserts ID and commits
fence_case() {
    local level=$1 old=$2 new=$3 id=$4 name=fence$4 out d c okw
    sess_open "$name" "$old"
    sess "$name" "BEGIN ISOLATION LEVEL $level; SELECT count(*) FROM mail; \\echo snapshot"
    it_wait_until "grep -q snapshot '$IT_DIR/sess.$name.out'" 10
    run "$new" promote --force
    it_wait_until "[[ \$(st $old role) == replica ]]" 30 || it_diag "node$old did not step down: role $(st "$old" role)"
    sess "$name" "INSERT INTO mail VALUES ($id, 'fence', '$level after the step-down', 1, now());"
    sess "$name" "COMMIT;"
    sess "$name" "\\echo done"
    it_wait_until "grep -q done '$IT_DIR/sess.$name.out'" 10
    sess_close "$name"
    out=$(sess_out "$name")
    # no captured, unsent change left behind: the capture went past it
    local lsn
    lsn=$(pg_wal "$old")
    if it_wait_until "pg_captured $old $lsn" 20; then c=0; else c="not captured yet"; fi
    d=$(pg_val "$old" "SELECT count(*) FROM pmgcm.divergence WHERE new->>'id' = '$id'")
    okw=$(pg_val "$old" "SELECT count(*) FROM mail WHERE id = $id")
    if grep -qiE 'not the master|role changed' <<<"$out" && [[ "$okw" == 0 && "$c" == 0 ]]; then
        FENCE="refused: '$(grep -iE 'not the master|role changed' <<<"$out" | head -n1 | cut -c1-160)'"
        return 0
    fi
    if [[ "$okw" == 1 && "$d" == 1 ]]; then
        FENCE="committed, then kept in pmgcm.divergence"
        return 0
    fi
    FENCE="commit output '${out:0:300}', capture rows $c, divergence rows $d, row present $okw"
    return 1
}
if fence_case "REPEATABLE READ" 4 1 777001 && FR=$FENCE && it_wait_until "follows '$ALL4' 1" 30 &&
    wait_converged "$ALL4" 90 && it_wait_until "pg_captured 4 $(pg_wal 4)" 20; then
    it_ok "a REPEATABLE READ writer on node4 whose snapshot predates its step-down: $FR; no captured change left behind; all four equal under node1"
else
    it_not_ok "a REPEATABLE READ writer across a step-down leaves no captured, unsent change"
    it_diag "$FENCE"
    show "1 4"
fi
if fence_case SERIALIZABLE 1 2 777002 && FS=$FENCE && it_wait_until "follows '$ALL4' 2" 30 &&
    wait_converged "$ALL4" 90 && it_wait_until "pg_captured 1 $(pg_wal 1)" 20; then
    it_ok "a SERIALIZABLE writer on node1 whose snapshot predates its step-down: $FS; no captured change left behind; all four equal under node2"
else
    it_not_ok "a SERIALIZABLE writer across a step-down leaves no captured, unsent change"
    it_diag "$FENCE"
    show "1 2"
fi
it_wait_until "in_sync '$ALL4'" 60 || it_diag "not all in sync: $(db 1) $(db 3) $(db 4)"

# ==== 6: a hostile table name in the change stream =============================================
CKS=$(pg_checksum 3)
HOSTILE="public.mail; COPY (SELECT 1) TO PROGRAM 'touch $PWNED'"
pg_sql 2 >/dev/null <<EOF || it_diag "injecting the hostile change on node2 failed"
BEGIN;
WITH s AS (UPDATE pmgcm.state SET seq = seq + 1, recv_seq = recv_seq + 1 RETURNING epoch, seq)
INSERT INTO pmgcm.log (seq, epoch, op, tbl, ts, last, origin) SELECT seq, epoch, 'T', \$h\$$HOSTILE\$h\$, now(), true, 0 FROM s;
COMMIT;
EOF
HSEQ=$(seq_of 2)
pg_sql 2 "INSERT INTO rules VALUES (4242, 'after the hostile change', 1, true)" >/dev/null
bad=
all_refuse() {
    local i
    for i in 1 3 4; do store "$i" | jq -e '.error | test("not replicated")' >/dev/null || return 1; done
}
it_wait_until all_refuse 30 ||
    bad+="not every follower shows the refusal: $(for i in 1 3 4; do echo "node$i: $(store "$i" | jq -r .error)"; done | paste -sd' '); "
[[ -e "$PWNED" ]] && bad+="$PWNED exists: the hostile SQL ran; "
[[ "$(pg_checksum 3)" == "$CKS" ]] || bad+="node3's tables changed; "
for i in 1 3 4; do [[ "$(letter "$i" "$i")" == A ]] && bad+="node$i shows itself A; "; done
if [[ -z "$bad" ]]; then
    it_ok "a T change for '$HOSTILE' served by the master: every follower refuses it (status: '$(store 3 | jq -r .error | cut -c1-160)'), nothing ran ($PWNED absent, node3's tables unchanged), not A"
else
    it_not_ok "a hostile table name from the network never reaches SQL"
    it_diag "$bad"
    show "1 3"
fi
# the entry made harmless on the master: the followers catch up
pg_sql 2 "UPDATE pmgcm.log SET op = 'E', tbl = NULL WHERE seq = $HSEQ" >/dev/null
if wait_converged "$ALL4" 90 && it_wait_until "in_sync '$ALL4'" 60 && [[ ! -e "$PWNED" ]]; then
    it_ok "with the entry gone the followers catch up: all four equal, in-sync"
else
    it_not_ok "the followers recover once the hostile entry is gone"
    show "$ALL4"
fi
rm -f "$PWNED"

# ==== 7: the master down, a peer of an older term with a longer log ==============================
# node2 (master) takes 30 rows alone; it is killed and node1 promoted
# (--force) from the common position: a new term that forked before
# those rows. node1 takes 10 rows that node3 receives and node4 (stopped)
# does not; then node1 stops. node2 comes back (its log longer than
# anyone's, but of the older term) and node4 (behind, in the new term):
# both catch up from node3 while the master is down, node2 keeping its
# 30 rows in a backup. A source chosen by seq alone: node4 asks node2
# ("behind you (older epoch)") over and over, and node2 stays forked.
for i in 1 3 4; do stop_node "$i"; done
s2=$(seq_of 2)
pg_sql 2 "INSERT INTO mail SELECT g, 'old term', 'o ' || g, 1, now() FROM generate_series(800001, 800030) g" >/dev/null
it_wait_until "(( \$(seq_of 2) >= $s2 + 30 ))" 30 || it_diag "node2's capture did not number its 30 rows: seq $(seq_of 2), was $s2"
p2=$(pos 2)
kill9 2
for i in 1 3 4; do start_node "$i"; done
it_wait_until "[[ \$(it_state_of 1 node3) =~ ^[AS]$ && \$(it_state_of 1 node4) =~ ^[AS]$ && ! \$(it_state_of 1 node2) =~ ^[AS]$ ]]" 30 ||
    it_diag "node1's view before the promote: node2 $(it_state_of 1 node2) node3 $(it_state_of 1 node3) node4 $(it_state_of 1 node4)"
run -t 120 1 promote --force
PRC=$RC POUT=$OUT
it_wait_until "follows '1 3 4' 1 && in_sync '1 3 4'" 60 ||
    it_diag "nodes 1, 3, 4 do not follow node1 in sync: promote exit $PRC: $(first_line "$POUT")"
p4=$(pos 4)
stop_node 4
it_wait_until "pg_sql 1 \"INSERT INTO mail SELECT g, 'new term', 'n ' || g, 1, now() FROM generate_series(800101, 800110) g\" >/dev/null 2>&1" 60 ||
    it_diag "node1 took no write after the promote"
it_wait_until "[[ \$(pg_val 3 'SELECT count(*) FROM mail WHERE id BETWEEN 800101 AND 800110') == 10 ]]" 60 ||
    it_diag "node3 did not receive node1's 10 rows"
p1=$(pos 1) p3=$(pos 3)
stop_node 1
t0=$(it_now_ms)
start_node 2
start_node 4
new_rows() { [[ "$(pg_val "$1" "SELECT count(*) FILTER (WHERE id BETWEEN 800101 AND 800110) || '/' || count(*) FILTER (WHERE id BETWEEN 800001 AND 800030) FROM mail")" == 10/0 ]]; }
if it_wait_until "new_rows 4 && new_rows 2" 90 && wait_converged "2 3 4" 90 && ! it_alive_pid 1 &&
    (($(backup_mail_ids 2 | awk '$1 >= 800001 && $1 <= 800030' | wc -l) == 30)); then
    it_ok "the master down: node4 (behind, $p4) and the old master node2 ($p2, an older term, its log longer) both catch up from node3 ($p3) in $(since $t0) s; node2's 30 rows of the old term kept in its backup"
else
    it_not_ok "with the master down, a peer of an older term with a longer log is not the catch-up source"
    it_diag "positions: node1 (down) was $p1, node2 $(pos 2) (was $p2), node3 $(pos 3), node4 $(pos 4) (was $p4); node2's backup holds $(backup_mail_ids 2 | awk '$1 >= 800001 && $1 <= 800030' | wc -l) of its 30 rows"
    grep -iE 'catching up|behind you|diverg|snapshot' "$(it_log 4)" | tail -n 4 | while IFS= read -r l; do it_diag "  node4.log: ${l:0:300}"; done
    show "2 3 4"
fi
start_node 1
if it_wait_until "follows '$ALL4' 1" 60 && wait_converged "$ALL4" 90 && it_wait_until "in_sync '$ALL4'" 60; then
    it_ok "node1 back: all four follow it, equal and in sync"
else
    it_not_ok "node1 back: all four follow it, equal and in sync"
    show "$ALL4"
fi

# ==== the end ================================================================================
bad=$STOP_BAD
alive=
for i in $ALL4; do it_alive_pid "$i" && { it_signal "$i" TERM; alive+="$i "; }; done
for i in $alive; do
    it_reap "$i" 15
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" $ALL4
it_diag "took $(($(date +%s) - IT_T0)) s"
it_plan "$IT_TAPN"
exit 0
