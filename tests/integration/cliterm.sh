#!/usr/bin/env bash
# tests/integration/cliterm.sh - pmgcm in a real terminal against a real
# cluster: three pmgclusterd daemons, each with its own throwaway
# PostgreSQL server (pg.sh); node1 holds 200k mail rows (about 50 MB) and
# creates the cluster.
#
#   1  node2 joins inside tmux at 80 columns, node3 at 132: while the
#      snapshot loads, the pane is captured every 0.1 s; a progress line is
#      seen, and no line of any capture (wrapped lines joined, tmux's -J) is
#      wider than the pane; the join ends with "data in sync"
#   2  join on a member: it says so and exits 1 before any prompt (on a
#      terminal: no fingerprint, no password asked)
#   3  the bash completion completes `delete`'s cids from the live daemon
#      (the non-master ones); without a daemon it prints nothing, at once
#   4  update-fingerprints: all unchanged; node3's certificate replaced
#      (its tls/ removed, restarted): reported CHANGED with both
#      fingerprints, not pinned without a terminal or --yes (exit 1),
#      pinned once "yes" is typed; then node3 takes the new config again
#      and a second run finds everything unchanged
#
# Needs root (PostgreSQL runs as the postgres user), PostgreSQL 15 and tmux.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-600}
. "$here/lib.sh"
. "$here/pg.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP needs root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }
command -v tmux >/dev/null || { echo "1..0 # SKIP tmux not installed (scripts/deps.sh)"; exit 0; }

it_init 3
if [[ $IT_MODE == loopback ]]; then
    net=127.0.$((100 + $$ % 100))
    for i in 1 2 3; do IT_IP[i]=$net.$((10 + i)); done
fi
pg_init
it_plan 9

PW=$IT_DIR/join.pw
printf 'correct horse battery staple\n' >"$PW"
chmod 600 "$PW"
TM=(tmux -L "pmgcmt$$" -f /dev/null)
tm_cleanup() { "${TM[@]}" kill-server 2>/dev/null; }
trap 'tm_rc=$?; tm_cleanup; sh -c "exit $tm_rc"; pg_it_cleanup' EXIT

# run I ARGS...: `pmgcm ARGS` on node I without a terminal (setsid: no
# controlling tty); OUT, RC
run() {
    local i=$1
    shift
    OUT=$(PMGCM_SOCKET=$(it_sock "$i") timeout 120 setsid -w "$PMGCM" "$@" 2>&1 </dev/null)
    RC=$?
}
STOP_BAD=
stop_node() {
    it_alive_pid "$1" || return 0
    it_signal "$1" TERM
    it_reap "$1" 15
    [[ $IT_EXIT == 0 ]] || STOP_BAD+="node$1 exit $IT_EXIT; "
}

# ---- the servers, node1's data ------------------------------------------------
t0=$(it_now_ms)
for i in 1 2 3; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" || it_bail "schema on node$i"
done
pg_sql 1 >/dev/null <<'EOF' || it_bail "loading node1's data failed"
INSERT INTO mail SELECT g, 'node1', 'subject ' || g || ' ' || repeat('x', 200), g % 5000,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 s'
  FROM generate_series(1, 200000) g;
EOF
for i in 1 2 3; do
    it_write_config_lc "$i" "node$i"
    pg_conf "$i"
    it_start_node "$i" || it_diag "node$i: control socket did not answer within 10 s"
done
it_wait_until "[[ \$(db_field 1 state) == idle && \$(db_field 2 state) == idle && \$(db_field 3 state) == idle ]]" 30 ||
    it_diag "the stores did not all say idle within ${IT_WAITED} s: $(db 1) $(db 2) $(db 3)"
run 1 create --password-file "$PW"
((RC == 0)) || it_bail "pmgcm create on node1: $OUT"
FP1=$(it_fingerprint_of 1)
it_diag "3 daemons with PostgreSQL up, node1 created the cluster with 200k rows in $(it_fmt_ms $(($(it_now_ms) - t0))) s"

# ==== 1: join in tmux at 80 and 132 columns =====================================
# join_in_tmux I COLS: node I joins node1 in a tmux pane COLS wide; sets
# TM_MAXW (the widest line of any capture, wrapped lines joined), TM_SEEN
# (progress lines seen, one per line), TM_FINAL (the last capture), TM_RC
join_in_tmux() {
    local i=$1 cols=$2 s=join$1 cap deadline line
    TM_MAXW=0 TM_SEEN= TM_FINAL= TM_RC=
    "${TM[@]}" new-session -d -s "$s" -x "$cols" -y 24 \
        "env PMGCM_SOCKET=$(it_sock "$i") $PMGCM join ${IT_IP[1]} --fingerprint $FP1 --password-file $PW; echo \"EXIT=\$?\"; sleep 600" ||
        { it_diag "tmux new-session failed"; return 1; }
    [[ $("${TM[@]}" display-message -p -t "$s" '#{pane_width}') == "$cols" ]] ||
        it_diag "the pane is $("${TM[@]}" display-message -p -t "$s" '#{pane_width}') columns, not $cols"
    deadline=$(($(date +%s) + 240))
    while (($(date +%s) < deadline)); do
        cap=$("${TM[@]}" capture-pane -p -J -t "$s") || break
        while IFS= read -r line; do
            line=${line%"${line##*[! ]}"} # trailing blanks of the pane
            ((${#line} > TM_MAXW)) && TM_MAXW=${#line}
            if [[ $line =~ ^(snapshot|waiting\ for\ a\ snapshot|catching\ up) ]] &&
                ! grep -qxF -- "$line" <<<"$TM_SEEN"; then
                TM_SEEN+="$line"$'\n'
            fi
        done <<<"$cap"
        if [[ $cap =~ EXIT=([0-9]+) ]]; then
            TM_RC=${BASH_REMATCH[1]}
            TM_FINAL=$cap
            break
        fi
        sleep 0.1
    done
    "${TM[@]}" kill-session -t "$s" 2>/dev/null
    [[ -n "$TM_RC" ]]
}

for pair in "2 80" "3 132"; do
    set -- $pair
    join_in_tmux "$1" "$2"
    nbar=$(grep -c '^snapshot' <<<"$TM_SEEN")
    if [[ "$TM_RC" == 0 ]] && ((TM_MAXW <= $2 - 1)) && [[ -n "$TM_SEEN" ]] &&
        grep -q "joined cluster as cid" <<<"$TM_FINAL" && grep -q "data in sync" <<<"$TM_FINAL"; then
        it_ok "node$1 joins in tmux at $2 columns: progress shown ($(grep -c . <<<"$TM_SEEN") distinct lines, $nbar of the snapshot), widest line $TM_MAXW columns, ends in sync"
    else
        it_not_ok "node$1 joins in tmux at $2 columns within the width, with progress"
        it_diag "exit '${TM_RC}', widest $TM_MAXW, final pane: $TM_FINAL"
    fi
    it_diag "$(sed -n '1,6p' <<<"$TM_SEEN")"
    SNAP_SEEN+=$(grep '^snapshot' <<<"$TM_SEEN")
done
# the snapshot of 50 MB takes long enough for at least one bar
if grep -Eq '^snapshot .*[kMG]B/s' <<<"${SNAP_SEEN:-}"; then
    it_ok "the snapshot's line (bytes, rate) was on screen"
else
    it_not_ok "the snapshot's line (bytes, rate) was on screen"
fi

# ==== 2: join on a member ============================================================
run 2 join "${IT_IP[1]}" --fingerprint "$FP1" --password-file "$PW"
tty_out=$(it_pmgcm_tty 3 no join "${IT_IP[1]}")
tty_rc=$?
if ((RC == 1)) && grep -q "this node is already in a cluster (master node1, cid 1, at ${IT_IP[1]})" <<<"$OUT" &&
    ((tty_rc == 1)) && grep -q "already in a cluster" <<<"$tty_out" &&
    ! grep -qi 'password\|fingerprint is' <<<"$tty_out"; then
    it_ok "join on a member: said so, exit 1, nothing asked on a terminal"
else
    it_not_ok "join on a member: said so, exit 1, nothing asked"
    it_diag "exit $RC: $OUT"
    it_diag "on a tty, exit $tty_rc: $tty_out"
fi

# ==== 3: completion of delete's cids ==========================================
comp() {
    PMGCM_SOCKET=$1 PATH=$(dirname "$PMGCM"):$PATH bash -c '
        source "$1"
        COMP_WORDS=(pmgcm delete "")
        COMP_CWORD=2
        _pmgcm
        echo "${COMPREPLY[*]}"' _ "$abs_top_srcdir/contrib/pmgcm.bash-completion" 2>&1
}
abs_top_srcdir=${abs_top_srcdir:-$here/../..}
c_live=$(comp "$(it_sock 1)")
t0=$(it_now_ms)
c_none=$(comp "$IT_DIR/nothing.sock")
c_ms=$(($(it_now_ms) - t0))
if [[ "$c_live" == "2 3" && -z "$c_none" ]] && ((c_ms < 1000)); then
    it_ok "completion: delete offers cids '2 3' from the daemon; none, quietly, without one (${c_ms} ms)"
else
    it_not_ok "completion of delete's cids"
    it_diag "live: '$c_live'; without a daemon: '$c_none' after $c_ms ms"
fi

# ==== 4: update-fingerprints ========================================================
run 1 update-fingerprints
if ((RC == 0)) && [[ $(grep -c ': unchanged$' <<<"$OUT") == 3 ]] && grep -q "fingerprints up to date" <<<"$OUT"; then
    it_ok "update-fingerprints: every node unchanged, exit 0"
else
    it_not_ok "update-fingerprints: every node unchanged"
    it_diag "exit $RC: $OUT"
fi
old3=$(it_fingerprint_of 3)
stop_node 3
rm -rf "$IT_DIR/node3/tls"
it_start_node 3 || it_diag "node3 did not come back"
new3=$(it_fingerprint_of 3)
run 1 update-fingerprints
ver_before=$(it_cluster_of 1 | jq -r .version)
if ((RC == 1)) && [[ -n "$new3" && "$new3" != "$old3" ]] &&
    grep -q "node3 (cid 3, ${IT_IP[3]}): its certificate CHANGED" <<<"$OUT" &&
    grep -q "pinned:    $old3" <<<"$OUT" && grep -q "presents:  $new3" <<<"$OUT" &&
    grep -q "not pinned" <<<"$OUT"; then
    it_ok "node3's new certificate: reported with both fingerprints, not pinned without a terminal (exit 1)"
else
    it_not_ok "node3's new certificate reported, not pinned"
    it_diag "old '$old3' new '$new3'; exit $RC: $OUT"
fi
tty_out=$(it_pmgcm_tty 1 yes update-fingerprints)
tty_rc=$?
run 1 update-fingerprints
v1=$(it_cluster_of 1 | jq -r .version)
it_wait_until "[[ \$(it_cluster_of 3 | jq -r .version) == $v1 ]]" 30
v3=$(it_cluster_of 3 | jq -r .version)
if ((tty_rc == 0)) && grep -q "pinned the new fingerprint" <<<"$tty_out" &&
    ((RC == 0)) && [[ $(grep -c ': unchanged$' <<<"$OUT") == 3 ]] &&
    ((v1 > ver_before)) && [[ "$v3" == "$v1" ]]; then
    it_ok "typed yes: pinned (config version $ver_before -> $v1); node3 holds it; a second run: all unchanged"
else
    it_not_ok "pinned once confirmed, node3 follows, then all unchanged"
    it_diag "tty exit $tty_rc: $tty_out"
    it_diag "second run exit $RC: $OUT; versions node1 $v1 (before $ver_before), node3 $v3"
fi

# ---- shutdown -------------------------------------------------------------------
tm_cleanup
for i in 1 2 3; do stop_node "$i"; done
it_report_shutdown "$STOP_BAD" 1 2 3
