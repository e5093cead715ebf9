#!/usr/bin/env bash
# tests/integration/restore.sh - backup and restore, the admin guide's
# "Total cluster failure": a 3-node cluster with data; pg_dump of the
# master and of a follower; every node destroyed (daemons, data_dirs,
# PostgreSQL servers); the master's dump restored into a fresh node's
# database; `pmgcm detach` (no daemon running, the database the config
# names); `pmgcm create`; two fresh nodes join. Afterwards:
#
#   - pmgcm detach is refused while a daemon uses the database
#   - the follower's dump restored elsewhere refuses writes with a message
#     that names pmgcm detach; after `pmgcm detach --db` it takes them
#   - the new cluster holds exactly the data of the dump on every node
#     (pg.sh pg_same: row counts and md5 of every row), and a write on
#     the new master reaches every node
#
# Needs root and PostgreSQL (else SKIP).
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-600}
. "$here/lib.sh"
. "$here/pg.sh"

[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the restore test needs root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" && -x "${PG_BINDIR:-}/pg_dump" ]] || { echo "1..0 # SKIP PostgreSQL server or pg_dump not installed"; exit 0; }

pg_it_init 3
ALL="1 2 3"
STOP_S=30 # stop_node (pg.sh)
synced() { in_sync "$1" && converged "$1"; }
show() {
    local i l
    for i in $1; do
        it_diag "node$i: $(pg_val "$i" "SELECT role || ' ' || epoch || '/' || seq FROM pmgcm.state") db $(db "$i" | head -c 200)"
        grep -Ei 'store' "$(it_log "$i")" | tail -n 5 | while IFS= read -r l; do it_diag "  node$i.log: ${l:0:300}"; done
    done
    return 0
}
# a node from nothing: its PostgreSQL server with the application's
# tables, its config, its daemon
fresh_node() {
    local i=$1
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    [[ "${2:-}" == noschema ]] || pg_schema "$i" || it_bail "schema on node$i"
    it_write_config_lc "$i" "node$i"
    pg_conf "$i"
}
form() { # form: node1 creates, node2 and node3 join
    local i bad=
    run 1 create --password-file "$PW"
    ((RC == 0)) || bad+="create: $(first_line "$OUT"); "
    FP1=$(it_fingerprint_of 1)
    for i in 2 3; do
        run -t 180 "$i" join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
        ((RC == 0)) || bad+="node$i join: $(first_line "$OUT"); "
    done
    FORM_BAD=$bad
    [[ -z "$bad" ]]
}

# ---- a cluster with data -------------------------------------------------------------
for i in $ALL; do fresh_node "$i"; done
pg_sql 1 >/dev/null <<'EOF' || it_bail "loading node1's data failed"
INSERT INTO mail SELECT g, 'n1', 'mail ' || g, g % 5000, now() FROM generate_series(1, 20000) g;
INSERT INTO rules SELECT g, 'rule ' || g, g, g % 3 = 0 FROM generate_series(1, 300) g;
INSERT INTO rule_attr SELECT g % 300 + 1, 'a' || g, 'v' || g FROM generate_series(1, 900) g ON CONFLICT DO NOTHING;
INSERT INTO objects SELECT g, decode(md5(g::text), 'hex'), jsonb_build_object('g', g), g / 7.0, g * 1.5, ARRAY['t' || g] FROM generate_series(1, 500) g;
EOF
for i in $ALL; do start_node "$i"; done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30
ok=0
if form && it_wait_until "synced '$ALL'" 90; then
    # written after the joins: through the replication, not the snapshot
    pg_sql 1 "INSERT INTO mail SELECT g, 'n1', 'later ' || g, 1, now() FROM generate_series(20001, 21000) g" >/dev/null &&
        it_wait_until "synced '$ALL'" 60 && ok=1
fi
if ((ok)); then
    it_ok "a 3-node cluster with 21000 mail rows and three more tables, in sync"
else
    it_not_ok "a cluster with data"
    it_diag "$FORM_BAD $PG_SAME_DIFF"
    show "$ALL"
    it_bail "no cluster"
fi

# ---- detach refused while a daemon uses the database -----------------------------------
out=$(timeout 30 "$PMGCM" detach --db "$(pg_conninfo 2)" 2>&1)
rc=$?
# the same refusal as JSON, indented with json-pretty like every answer
jout=$(timeout 30 "$PMGCM" --output-format json-pretty detach --db "$(pg_conninfo 2)" 2>/dev/null)
jrc=$?
if ((rc == 1)) && [[ "$out" == *"a pmgclusterd uses this database"* ]] &&
    [[ "$(st 2 role)" == replica ]] && ((jrc == 1)) &&
    [[ "$(jq -r '.ok, (.error | test("a pmgclusterd uses this database"))' <<<"$jout" 2>/dev/null | paste -sd,)" == false,true ]] &&
    [[ "$(head -n1 <<<"$jout")" == "{" && "$(sed -n 2p <<<"$jout")" == "  \""* ]]; then
    it_ok "pmgcm detach on a running node's database is refused, nothing changed: '$(first_line "$out" | cut -c1-140)...' (json-pretty: $(wc -l <<<"$jout") lines)"
else
    it_not_ok "pmgcm detach refuses a database a daemon uses"
    it_diag "exit $rc: $out; role $(st 2 role); json-pretty exit $jrc: $jout"
fi

# ---- backups, then everything lost --------------------------------------------------------
CK=$(pg_checksum 1)
NMAIL=$(pg_val 1 "SELECT count(*) FROM mail")
"$PG_BINDIR/pg_dump" -h "$(pg_sock 1)" -U postgres -d pmg -Fc -f "$IT_DIR/master.dump" 2>"$IT_DIR/dump1.err" ||
    it_bail "pg_dump of the master: $(head -c 300 "$IT_DIR/dump1.err")"
"$PG_BINDIR/pg_dump" -h "$(pg_sock 2)" -U postgres -d pmg -Fc -f "$IT_DIR/follower.dump" 2>"$IT_DIR/dump2.err" ||
    it_bail "pg_dump of node2: $(head -c 300 "$IT_DIR/dump2.err")"
for i in $ALL; do stop_node "$i"; done
pg_stop_all
for i in $ALL; do
    rm -rf "$IT_DIR/node$i" "$IT_DIR/node$i.conf" "${PG_DATA[i]}"
    PG_DATA[i]=
done
it_ok "pg_dump of the master ($(stat -c %s "$IT_DIR/master.dump") bytes) and of node2; every node destroyed (daemons stopped, data_dirs and PostgreSQL data removed)"

# ---- a restored follower dump refuses writes until detached -------------------------------
fresh_node 1 noschema
"$PG_BINDIR/psql" -X -q -h "$(pg_sock 1)" -U postgres -d postgres -c 'CREATE DATABASE pmgf' >/dev/null ||
    it_bail "CREATE DATABASE pmgf"
"$PG_BINDIR/pg_restore" -h "$(pg_sock 1)" -U postgres -d pmgf --no-owner "$IT_DIR/follower.dump" >"$IT_DIR/restore2.out" 2>&1 ||
    it_diag "pg_restore of node2's dump said: $(head -c 400 "$IT_DIR/restore2.out")"
FCONN="host=$(pg_sock 1) dbname=pmgf user=postgres"
w1=$("$PG_BINDIR/psql" -X -q -At -h "$(pg_sock 1)" -U postgres -d pmgf -c "INSERT INTO mail VALUES (900001, 'x', 'after restore', 1, now())" 2>&1)
wrc1=$?
dout=$(timeout 30 "$PMGCM" detach --db "$FCONN" 2>&1)
drc=$?
w2=$("$PG_BINDIR/psql" -X -q -At -h "$(pg_sock 1)" -U postgres -d pmgf -c "INSERT INTO mail VALUES (900001, 'x', 'after detach', 1, now())" 2>&1)
wrc2=$?
if ((wrc1 != 0)) && [[ "$w1" == *"write on the master (node1)"*"pmgcm detach"* ]] && ((drc == 0)) &&
    [[ "$dout" == *"write guard:"*"dropped"* ]] && ((wrc2 == 0)); then
    it_ok "node2's dump restored elsewhere refuses a write ('$(grep -o 'write on the master.*' <<<"$w1" | head -n1)'); pmgcm detach --db: '$(paste -sd'|' <<<"$dout" | cut -c1-200)...'; then the write passes"
else
    it_not_ok "a restored follower dump: refused write names pmgcm detach, detach makes it writable"
    it_diag "write before: exit $wrc1: $w1"
    it_diag "detach: exit $drc: $dout"
    it_diag "write after: exit $wrc2: $w2"
fi

# ---- Total cluster failure: restore, detach, create, join --------------------------------
"$PG_BINDIR/pg_restore" -h "$(pg_sock 1)" -U postgres -d pmg --no-owner "$IT_DIR/master.dump" >"$IT_DIR/restore1.out" 2>&1 ||
    it_diag "pg_restore of the master's dump said: $(head -c 400 "$IT_DIR/restore1.out")"
dout=$(timeout 30 "$PMGCM" detach --config "$IT_DIR/node1.conf" 2>&1)
drc=$?
role=$(st 1 role)
start_node 1
fresh_node 2
fresh_node 3
start_node 2
start_node 3
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30
bad=
((drc == 0)) || bad+="detach exit $drc: $dout; "
[[ "$role" == none ]] || bad+="role after detach: $role; "
form || bad+="$FORM_BAD"
it_wait_until "synced '$ALL'" 120 || bad+="not in sync: $PG_SAME_DIFF; "
for i in $ALL; do
    [[ "$(pg_checksum "$i")" == "$CK" ]] || bad+="node$i's tables differ from the dump; "
done
if [[ -z "$bad" ]]; then
    it_ok "Total cluster failure: the master's dump restored into a fresh node1, pmgcm detach (config's database: '$(first_line "$dout")'), create, fresh node2 and node3 joined: all $NMAIL mail rows and every table equal to the dump on every node"
else
    it_not_ok "Total cluster failure: restore, detach, create, join"
    it_diag "${bad:0:800}"
    show "$ALL"
fi

pg_sql 1 "INSERT INTO mail SELECT g, 'new', 'after the restore ' || g, 1, now() FROM generate_series(30001, 30500) g" >/dev/null
w=$?
if ((w == 0)) && it_wait_until "synced '$ALL'" 60 &&
    [[ "$(pg_val 3 "SELECT count(*) FROM mail WHERE id BETWEEN 30001 AND 30500")" == 500 ]]; then
    it_ok "writes on the new master work and reach both new nodes"
else
    it_not_ok "writes after the restore"
    show "$ALL"
fi

# ---- the end ------------------------------------------------------------------------------
pg_it_end "$ALL" 20
exit 0
