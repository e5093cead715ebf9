#!/usr/bin/env bash
# tests/chaos/chaos.sh - the chaos runner: a seeded, reproducible fault
# schedule against a 5-node cluster of real pmgclusterd daemons, each in its
# own network namespace (tests/integration/lib.sh) with its own PostgreSQL
# (tests/integration/pg.sh), formed with `pmgcm create` / `pmgcm join`,
# while tests/chaos/chaos_writer commits a steady stream of transactions on
# whichever node is master and records every acknowledged commit.
#
# Faults (one at a time, each held for a seeded time, a seeded gap between):
#   kill9       kill -9 of a daemon, restarted after HOLD s
#   stall       SIGSTOP for 0.2-0.8 s (under the suspicion timeout), SIGCONT
#   freeze      SIGSTOP for 3-9 s (declared dead meanwhile), SIGCONT
#   link        one node's link down for HOLD s, up
#   partition   two nodes on their own bridge (a 2/3 partition) for HOLD s;
#               when the master is among the two, half the time a node of
#               the three is promoted (--force) and the old master returns
#               at the heal
#   masterkill  kill -9 of the master, `pmgcm promote --force` on another
#               node, the old master restarted HOLD s later
#   rejoin      `pmgcm delete CID` of a follower on the master, then
#               `pmgcm join` again (it loads a snapshot)
#   pgstop      a node's PostgreSQL stopped (fast) for HOLD s, started
#   diskfull    a node's data_dir (a 2 MB tmpfs) filled for HOLD s (half
#               the time its daemon is also restarted meanwhile), freed
# A schedule starts with every kind once, in seeded order, then seeded
# weighted picks until the planned time (MINUTES) is used. After every
# fault the runner waits (30 s at most) until every node shows all five A.
#
# After the schedule everything heals (links, partitions, stopped
# processes, stopped servers, full disks, nodes outside the cluster), and
# the runner checks: exactly one master, named alike by every node's view
# and database; every node A and in-sync; every node's replicated tables
# equal the master's (checksums); writes resume; every acknowledged commit
# is on the master or in a node's pmgcm.divergence (with a reason); no
# acknowledged-failed transaction is present, none torn; no daemon crashed;
# every daemon exits 0 on SIGTERM with no sanitizer report (ASan build).
# On any failure it prints the seed, the schedule, the timeline (faults,
# every node's view changes) and the relevant log lines.
#
# Environment: CHAOS_SEED (default: today's date, YYYYMMDD), CHAOS_MINUTES
# (planned fault time, default 2), CHAOS_DELAY_MS (writer pause between
# commits, default 20), CHAOS_SETTLE_S (30), CHAOS_HEAL_S (120), and
# lib.sh's IT_KEEP=1. `make chaos SEED=... MINUTES=...` runs long ones.
# Needs root, network namespaces and PostgreSQL 15 (skips otherwise).
set -u
here=$(cd "$(dirname "$0")" && pwd)
ilib=$here/../integration
SEED=${CHAOS_SEED:-}
[[ -n "$SEED" ]] || SEED=$(date +%Y%m%d)
MINUTES=${CHAOS_MINUTES:-2}
DELAY_MS=${CHAOS_DELAY_MS:-20}
SETTLE_S=${CHAOS_SETTLE_S:-30}
HEAL_S=${CHAOS_HEAL_S:-120}
IT_BUDGET=${IT_BUDGET:-$((MINUTES * 60 * 3 + 1200))}
. "$ilib/lib.sh"
. "$ilib/pg.sh"
WRITER=${CHAOS_WRITER:-$IT_BUILDDIR/tests/chaos/chaos_writer}

command -v python3 >/dev/null || it_bail "python3 not installed"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the chaos runner needs root (namespaces, tmpfs, PostgreSQL)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }
[[ -x "$WRITER" ]] || it_bail "missing $WRITER (make check builds it)"

N=5
ALL="1 2 3 4 5"
FIRST_ID=100001
it_init $N
[[ $IT_MODE == netns ]] || { echo "1..0 # SKIP the chaos runner needs network namespaces"; exit 0; }
pg_init
CH=$IT_DIR/chaos
mkdir -p "$CH"
TL=$CH/timeline
FAULTS=$CH/faults.tsv
: >"$TL"
: >"$FAULTS"
T0=$(it_now_ms)
WRITER_PID= MON_PID=
MOUNTED=() RUNNING=()
PW=$IT_DIR/join.pw
printf 'chaos monkey password\n' >"$PW"
chmod 600 "$PW"

chaos_cleanup() {
    local rc=$? i
    trap - EXIT
    [[ -n "$WRITER_PID" ]] && kill -TERM "$WRITER_PID" 2>/dev/null
    [[ -n "$MON_PID" ]] && kill -TERM "$MON_PID" 2>/dev/null
    it_heal_partition >/dev/null 2>&1
    for i in $ALL; do
        it_alive_pid "$i" && kill -CONT "${IT_PID[i]}" 2>/dev/null
        [[ -n "${MOUNTED[i]:-}" ]] && umount -l "$IT_DIR/node$i" 2>/dev/null
    done
    (exit "$rc")
    pg_it_cleanup
}
trap chaos_cleanup EXIT

# ---- timeline ------------------------------------------------------------------
rel() { it_fmt_ms $(($(it_now_ms) - T0)); }
# tl TEXT: one timeline line (also printed as a TAP comment)
tl() {
    local l
    l="$(printf '%9s' "$(rel)") $*"
    echo "$l" >>"$TL"
    echo "# $l"
}
FAULT_T0=0
fault_begin() { FAULT_T0=$(it_now_ms); }
# fault_end KIND "NODES": the interval during which NODES were faulted
fault_end() { echo "$FAULT_T0 $(it_now_ms) $1 $2" >>"$FAULTS"; }

# ---- queries -------------------------------------------------------------------
# view I: node I's view, "node1=A* node2=A ..." (* = master), sorted
view() {
    timeout 3 "$PMGCM" --socket "$(it_sock "$1")" status --output-format json 2>/dev/null |
        jq -r '[.members? // . | .[] | "\(.name)=\(.state)\(if .role == "master" then "*" else "" end)"] | sort | join(" ")' 2>/dev/null
}
# master_of_view VIEW: the master's node number in a view ("" when none or several)
master_of_view() {
    local m
    m=$(grep -o 'node[0-9]*=[A-Z?]\*' <<<"$1")
    [[ $(grep -c . <<<"$m") == 1 ]] || return 1
    m=${m%%=*}
    echo "${m#node}"
}
# master_now: the master as the first answering running node sees it
master_now() {
    local i v m
    for i in $ALL; do
        [[ -n "${RUNNING[i]:-}" ]] || continue
        v=$(view "$i") && [[ -n "$v" ]] || continue
        m=$(master_of_view "$v") && { echo "$m"; return 0; }
    done
    return 1
}
cid_of() {
    it_status "$1" 2>/dev/null | jq -r --arg n "node$2" '.members? // . | .[] | select(.name == $n) | .cid' 2>/dev/null
}
st() { pg_val "$1" "SELECT $2 FROM pmgcm.state"; }
pos() { pg_val "$1" "SELECT epoch || '/' || seq FROM pmgcm.state"; }
db_state() {
    it_status "$1" 2>/dev/null | jq -r --arg n "node$1" '.members? // . | .[] | select(.name == $n) | .db.state // empty' 2>/dev/null
}
# all_alive: every node's view lists all five, every one alive: A, or S
# (alive, its data catching up: a steady writer makes followers flicker
# between A and S)
all_alive() {
    local i v
    for i in $ALL; do
        v=$(view "$i") || return 1
        v=${v//\*/}
        [[ "${v//=S/=A}" == "node1=A node2=A node3=A node4=A node5=A" ]] || return 1
    done
}
# one_master: all_alive, and every view names the same single master
one_master() {
    local i v m= mi
    for i in $ALL; do
        v=$(view "$i") || return 1
        mi=$(master_of_view "$v") || return 1
        [[ -z "$m" || "$m" == "$mi" ]] || return 1
        m=$mi
        v=${v//\*/}
        [[ "${v//=S/=A}" == "node1=A node2=A node3=A node4=A node5=A" ]] || return 1
    done
}
# healed: all_alive, one master named alike everywhere (views and
# databases), every store in-sync, equal checksums. HEALED_WHY says what
# is missing.
HEALED_WHY= HEAL_CK_LAST=0
healed() {
    local i v m= mi now
    for i in $ALL; do
        v=$(view "$i")
        [[ "${v//\*/}" == "node1=A node2=A node3=A node4=A node5=A" ]] || { HEALED_WHY="node$i's view: ${v:-no answer}"; return 1; }
        mi=$(master_of_view "$v") || { HEALED_WHY="node$i's view has no single master: $v"; return 1; }
        [[ -z "$m" ]] && m=$mi
        [[ "$mi" == "$m" ]] || { HEALED_WHY="node$i says node$mi is master, another says node$m"; return 1; }
    done
    for i in $ALL; do
        v=$(pg_val "$i" "SELECT role || ' ' || master FROM pmgcm.state")
        if ((i == m)); then
            [[ "$v" == "master "* ]] || { HEALED_WHY="node$i's database role: $v (the views say it is master)"; return 1; }
        else
            [[ "$v" == "replica node$m" ]] || { HEALED_WHY="node$i's database role: '$v' (want replica node$m)"; return 1; }
        fi
        v=$(db_state "$i")
        [[ "$v" == in-sync ]] || { HEALED_WHY="node$i's store is ${v:-?}"; return 1; }
    done
    now=$(it_now_ms)
    # checksums cost: at most every 2 s (HEALED_WHY keeps the last verdict)
    if ((now - HEAL_CK_LAST < 2000)); then
        [[ "$HEALED_WHY" == "checksums differ"* ]] || HEALED_WHY="checksums not compared yet"
        return 1
    fi
    HEAL_CK_LAST=$now
    pg_same "$ALL" || { HEALED_WHY="checksums differ: $PG_SAME_DIFF"; return 1; }
    MASTER=$m
}

# ---- processes -----------------------------------------------------------------
CRASHES=
start_node() {
    it_start_node "$1" || tl "node$1: control socket did not answer within 10 s of its start"
    RUNNING[$1]=1
}
kill9() {
    kill -KILL "${IT_PID[$1]}" 2>/dev/null
    wait "${IT_PID[$1]}" 2>/dev/null
    RUNNING[$1]=
}
# check_crashes: every daemon that should run does; a dead one is a crash
# (exit status and log tail on the timeline), restarted so the run goes on
check_crashes() {
    local i s
    for i in $ALL; do
        [[ -n "${RUNNING[i]:-}" ]] || continue
        it_alive_pid "$i" && continue
        wait "${IT_PID[i]}" 2>/dev/null
        s=$?
        tl "CRASH node$i's daemon is gone (exit status $s)"
        CRASHES+="node$i exit $s at $(rel) s; "
        tail -n 30 "$(it_log "$i")" >"$CH/crash.node$i.$(rel)"
        start_node "$i"
    done
}
# pmgcm_on I ARGS...: OUT, RC
pmgcm_on() {
    local i=$1
    shift
    OUT=$(PMGCM_SOCKET=$(it_sock "$i") timeout 180 "$PMGCM" "$@" 2>&1)
    RC=$?
}
STEP_BAD=
step_bad() { tl "STEP FAILED: $*"; STEP_BAD+="$*; "; }

# join_node I M: node I joins master M (waits for its snapshot)
join_node() {
    local i=$1 m=$2 fp k
    for k in 1 2 3; do
        fp=$(it_fingerprint_of "$m")
        pmgcm_on "$i" join "${IT_IP[m]}" --fingerprint "$fp" --password-file "$PW"
        ((RC == 0)) && return 0
        tl "join of node$i at node$m failed (try $k, exit $RC): $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
        sleep 2
        m=$(master_now) || m=$2
    done
    return 1
}

# ---- the monitor: every node's view once a second, changes on the timeline ----------
monitor() {
    local i v
    declare -A prev
    while :; do
        for i in $ALL; do
            view "$i" >"$CH/mon.$i" &
        done
        wait
        for i in $ALL; do
            v=$(cat "$CH/mon.$i" 2>/dev/null)
            [[ -n "$v" ]] || v="(no answer)"
            if [[ "${prev[$i]:-}" != "$v" ]]; then
                prev[$i]=$v
                echo "$(printf '%9s' "$(rel)") VIEW node$i: $v" >>"$TL"
            fi
        done
        sleep 1
    done
}

# ---- the schedule ------------------------------------------------------------------
KINDS=(kill9 stall freeze link partition masterkill rejoin pgstop diskfull)
WEIGHTS=(3 2 2 2 2 2 1 2 1)
# estimated seconds a fault takes besides its hold time
declare -A COST=([kill9]=3 [stall]=2 [freeze]=4 [link]=4 [partition]=8 [masterkill]=12 [rejoin]=15 [pgstop]=4 [diskfull]=4)
RANDOM=$SEED
# rnd LO HI: R = a seeded number in LO..HI (never in a $(...) subshell:
# bash reseeds RANDOM there)
rnd() { R=$((RANDOM % ($2 - $1 + 1) + $1)); }
S_KIND=() S_NODE=() S_HOLD=() S_GAP=() S_R=()
plan_one() {
    local k=$1 n
    n=${#S_KIND[@]}
    S_KIND[n]=$k
    rnd 1 5; S_NODE[n]=$R
    rnd 0 99; S_R[n]=$R
    case $k in
        stall) rnd 2 8; S_HOLD[n]=0.$R ;;
        freeze) rnd 3 9; S_HOLD[n]=$R ;;
        kill9 | link | pgstop | diskfull) rnd 1 10; S_HOLD[n]=$R ;;
        partition) rnd 4 14; S_HOLD[n]=$R ;;
        masterkill) rnd 2 10; S_HOLD[n]=$R ;;
        rejoin) rnd 1 5; S_HOLD[n]=$R ;;
    esac
    rnd 0 4; S_GAP[n]=$R
    PLAN_S=$((PLAN_S + ${S_HOLD[n]%.*} + ${COST[$k]} + ${S_GAP[n]}))
}
PLAN_S=0
order=("${KINDS[@]}")
for ((a = ${#order[@]} - 1; a > 0; a--)); do
    b=$((RANDOM % (a + 1)))
    t=${order[a]} order[a]=${order[b]} order[b]=$t
done
for k in "${order[@]}"; do plan_one "$k"; done
wsum=0
for w in "${WEIGHTS[@]}"; do wsum=$((wsum + w)); done
while ((PLAN_S < MINUTES * 60)); do
    r=$((RANDOM % wsum))
    for ((a = 0; a < ${#KINDS[@]}; a++)); do
        ((r < WEIGHTS[a])) && break
        r=$((r - WEIGHTS[a]))
    done
    plan_one "${KINDS[a]}"
done
NF=${#S_KIND[@]}
{
    echo "seed $SEED, $MINUTES minute(s) planned: $NF faults (~$PLAN_S s)"
    for ((f = 0; f < NF; f++)); do
        printf '%3d %-10s node %d r %2d hold %4s s gap %d s\n' $((f + 1)) "${S_KIND[f]}" "${S_NODE[f]}" "${S_R[f]}" "${S_HOLD[f]}" "${S_GAP[f]}"
    done
} >"$CH/schedule"
it_diag "$(cat "$CH/schedule")"

# ---- the cluster ---------------------------------------------------------------------
for i in $ALL; do
    pg_start "$i" || it_bail "PostgreSQL for node$i did not start"
    pg_schema "$i" || it_bail "schema on node$i"
done
pg_sql 1 >/dev/null <<'EOF' || it_bail "loading node1's data failed"
INSERT INTO mail SELECT g, 'init', 'subject ' || g, g % 5000, now() FROM generate_series(1, 5000) g;
INSERT INTO rules SELECT g, 'rule ' || g, g % 7, g % 2 = 0 FROM generate_series(1, 20) g;
INSERT INTO rule_attr SELECT r, 'attr' || a, 'val ' || r || '/' || a FROM generate_series(1, 20) r, generate_series(1, 3) a;
INSERT INTO objects SELECT g, decode(md5(g::text), 'hex'), jsonb_build_object('g', g), g / 3.0, g * 1.125, ARRAY['t' || g] FROM generate_series(1, 20) g;
EOF
for i in $ALL; do
    it_write_config_lc "$i" "node$i"
    pg_conf "$i"
    mount -t tmpfs -o size=2m,mode=0700 "pmgcm-chaos-node$i" "$IT_DIR/node$i" || it_bail "mount tmpfs on node$i's data_dir"
    MOUNTED[i]=1
    start_node "$i"
done
it_wait_until "[[ \$(db_state 1) == idle && \$(db_state 5) == idle ]]" 30 || it_diag "stores: $(db_state 1) ... $(db_state 5)"
pmgcm_on 1 create --password-file "$PW"
((RC == 0)) || it_bail "pmgcm create on node1: $OUT"
for i in 2 3 4 5; do
    join_node "$i" 1 || it_bail "node$i could not join: $OUT"
done
if it_wait_until "healed" 120; then
    it_ok "a 5-node cluster: node1 created with 5000 rows, four nodes joined, all A, in-sync, equal ($(rel) s)"
else
    it_not_ok "the 5-node cluster forms"
    it_diag "$HEALED_WHY"
    it_bail "no cluster"
fi
tl "cluster formed, master node1; schedule starts (seed $SEED)"

: >"$CH/acks"
"$WRITER" "$CH/acks" "$FIRST_ID" "$DELAY_MS" $(for i in $ALL; do pg_sock "$i"; done) 2>"$CH/writer.err" &
WRITER_PID=$!
monitor &
MON_PID=$!
it_wait_until "grep -q '^ack' '$CH/acks'" 20 || it_diag "the writer acknowledged nothing in 20 s: $(tail -n 3 "$CH/acks")"

# ---- the faults ------------------------------------------------------------------------
# pick_other R EXCEPT...: the (R mod n)-th running node not in EXCEPT
pick_other() {
    local r=$1 i c=()
    shift
    for i in $ALL; do
        [[ " $* " == *" $i "* ]] && continue
        [[ -n "${RUNNING[i]:-}" ]] && c+=("$i")
    done
    ((${#c[@]})) || return 1
    echo "${c[r % ${#c[@]}]}"
}
acks_now() { grep -c '^ack' "$CH/acks"; }
# promote_on I OLD: node I promoted with --force once it sees node OLD not alive
promote_on() {
    local i=$1 old=$2 s
    it_wait_until "s=\$(it_state_of $i node$old); [[ \$s == D || \$s == '?' ]]" 20 ||
        tl "node$i still sees node$old as '$(it_state_of "$i" "node$old")' after 20 s; promoting anyway"
    pmgcm_on "$i" promote --force
    if ((RC == 0)); then
        tl "node$i promoted (--force): $(head -n1 <<<"$OUT")"
    else
        step_bad "pmgcm promote --force on node$i exit $RC: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
    fi
}

f_kill9() {
    local j=$1 hold=$2
    fault_begin
    tl "FAULT kill9 node$j (pid ${IT_PID[j]}) for $hold s"
    kill9 "$j"
    sleep "$hold"
    start_node "$j"
    tl "node$j restarted"
    fault_end kill9 "$j"
}
f_stop() {
    local kind=$1 j=$2 hold=$3
    fault_begin
    tl "FAULT $kind node$j: SIGSTOP for $hold s"
    kill -STOP "${IT_PID[j]}"
    sleep "$hold"
    kill -CONT "${IT_PID[j]}"
    tl "node$j continued"
    fault_end "$kind" "$j"
}
f_link() {
    local j=$1 hold=$2
    fault_begin
    tl "FAULT link node$j down for $hold s"
    it_link "$j" down || step_bad "link down node$j"
    sleep "$hold"
    it_link "$j" up || step_bad "link up node$j"
    tl "node$j's link up"
    fault_end link "$j"
}
f_partition() {
    local j=$1 hold=$2 r=$3 k m a b maj= t0
    k=$(( (j % 5) + 1 ))
    m=$(master_now) || m=0
    a=$j b=$k
    for i in $ALL; do [[ $i == "$a" || $i == "$b" ]] || maj+="$i "; done
    fault_begin
    t0=$(it_now_ms)
    tl "FAULT partition {node$a node$b} | {${maj% }} for $hold s (master node$m)"
    it_partition "$a $b" || step_bad "partition"
    if [[ $m == "$a" || $m == "$b" ]] && ((r % 2 == 0)); then
        local p
        p=$(pick_other "$r" $a $b)
        promote_on "$p" "$m"
    fi
    local left=$((hold * 1000 - ($(it_now_ms) - t0)))
    ((left > 0)) && sleep "$(it_fmt_ms $left)"
    it_heal_partition || step_bad "heal partition"
    tl "partition healed"
    fault_end partition "$ALL"
}
f_masterkill() {
    local r=$1 hold=$2 m p
    m=$(master_now) || { tl "masterkill skipped: no single master in any view"; return 0; }
    p=$(pick_other "$r" "$m") || return 0
    fault_begin
    tl "FAULT masterkill: kill -9 of master node$m, promote node$p, node$m back after $hold s"
    kill9 "$m"
    promote_on "$p" "$m"
    sleep "$hold"
    start_node "$m"
    tl "old master node$m restarted"
    fault_end masterkill "$m $p"
}
f_rejoin() {
    local r=$1 hold=$2 m j cid
    m=$(master_now) || { tl "rejoin skipped: no single master in any view"; return 0; }
    j=$(pick_other "$r" "$m") || return 0
    cid=$(cid_of "$m" "$j")
    fault_begin
    tl "FAULT rejoin: node$m deletes node$j (cid $cid), it joins again after $hold s"
    pmgcm_on "$m" delete "$cid"
    if ((RC != 0)); then
        step_bad "pmgcm delete $cid on node$m exit $RC: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
        fault_end rejoin "$j"
        return 0
    fi
    it_wait_until "[[ \$(it_cluster_of $j) == null ]]" 30 ||
        step_bad "node$j still in a cluster 30 s after its delete: $(it_cluster_of "$j" | head -c 200)"
    tl "node$j deleted (out of the cluster after ${IT_WAITED} s); its database: $(pg_val "$j" "SELECT role || ' ' || epoch || '/' || seq FROM pmgcm.state")"
    # outside any cluster nothing is refused: a local row, which the join
    # (a snapshot of the master's data) must replace
    if o=$(pg_sql "$j" "INSERT INTO mail VALUES ($((900000000 + F)), 'outside', 'written while deleted', 0, now())" 2>&1); then
        tl "row $((900000000 + F)) written on node$j while it was outside the cluster"
    else
        tl "a write on node$j outside the cluster failed: $o"
    fi
    sleep "$hold"
    m=$(master_now) || m=$m
    if join_node "$j" "$m"; then
        tl "node$j joined node$m again: $(tail -n1 <<<"$OUT" | head -c 200)"
    else
        step_bad "node$j could not join node$m again: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
    fi
    fault_end rejoin "$j"
}
f_pgstop() {
    local j=$1 hold=$2
    fault_begin
    tl "FAULT pgstop: node$j's PostgreSQL stopped for $hold s"
    pg_stop "$j" fast
    sleep "$hold"
    pg_start "$j" || step_bad "PostgreSQL of node$j did not start again"
    tl "node$j's PostgreSQL started"
    fault_end pgstop "$j"
}
f_diskfull() {
    local j=$1 hold=$2 r=$3 d s
    d=$IT_DIR/node$j
    fault_begin
    tl "FAULT diskfull: node$j's data_dir filled for $hold s$( ((r % 2 == 0)) && echo ", its daemon restarted meanwhile")"
    dd if=/dev/zero of="$d/.chaos-fill" bs=64k >/dev/null 2>&1
    tl "node$j's data_dir: $(df -k --output=avail "$d" | tail -n1 | tr -d ' ') KB free"
    if ((r % 2 == 0)); then
        kill9 "$j"
        it_start_node "$j"
        sleep 2
        if it_alive_pid "$j"; then
            tl "node$j's daemon runs on a full data_dir"
        else
            wait "${IT_PID[j]}" 2>/dev/null
            s=$?
            tl "node$j's daemon exited $s on a full data_dir: $(tail -n 2 "$(it_log "$j")" | tr '\n' ' ' | head -c 300)"
            ((s > 128)) &&
                step_bad "node$j's daemon died from signal/sanitizer on a full disk (exit $s)"
        fi
    fi
    sleep "$hold"
    rm -f "$d/.chaos-fill"
    if ! it_alive_pid "$j"; then
        wait "${IT_PID[j]}" 2>/dev/null
        s=$?
        ((r % 2 == 0)) || { tl "node$j's daemon exited ($s) while its disk was full"; ((s > 128)) && CRASHES+="node$j exit $s on a full disk; "; }
        start_node "$j"
        tl "node$j's daemon started after the disk was freed"
    else
        RUNNING[$j]=1
        tl "node$j's data_dir freed"
    fi
    fault_end "diskfull$( ((r % 2 == 0)) && echo -restart)" "$j"
}

SLOW_SETTLE=
for ((f = 0; f < NF; f++)); do
    check_crashes
    j=${S_NODE[f]} h=${S_HOLD[f]} r=${S_R[f]} F=$((f + 1))
    echo "$(printf '%9s' "$(rel)") --- fault $((f + 1))/$NF: ${S_KIND[f]} (acks so far $(acks_now))" >>"$TL"
    case ${S_KIND[f]} in
        kill9) f_kill9 "$j" "$h" ;;
        stall | freeze) f_stop "${S_KIND[f]}" "$j" "$h" ;;
        link) f_link "$j" "$h" ;;
        partition) f_partition "$j" "$h" "$r" ;;
        masterkill) f_masterkill "$r" "$h" ;;
        rejoin) f_rejoin "$r" "$h" ;;
        pgstop) f_pgstop "$j" "$h" ;;
        diskfull) f_diskfull "$j" "$h" "$r" ;;
    esac
    if it_wait_until all_alive "$SETTLE_S"; then
        tl "all five alive (A/S) in every view after ${IT_WAITED} s"
    else
        tl "NOT SETTLED: not all five alive everywhere $SETTLE_S s after the fault: $(for i in $ALL; do printf 'node%s: %s; ' "$i" "$(view "$i")"; done)"
        SLOW_SETTLE+="fault $((f + 1)) (${S_KIND[f]}); "
    fi
    sleep "${S_GAP[f]}"
done
check_crashes
NFAULTS=$(grep -c . "$FAULTS")

# ---- heal and check ------------------------------------------------------------------------
tl "schedule done ($NFAULTS faults); healing"
it_heal_partition >/dev/null 2>&1
for i in $ALL; do
    it_alive_pid "$i" && kill -CONT "${IT_PID[i]}" 2>/dev/null
    rm -f "$IT_DIR/node$i/.chaos-fill"
    [[ -n "${PG_UP[i]:-}" ]] || pg_start "$i"
    it_alive_pid "$i" || start_node "$i"
done
m=$(master_now) || m=1
for i in $ALL; do
    [[ "$(it_cluster_of "$i")" == null ]] && { tl "node$i is outside the cluster: joining node$m"; join_node "$i" "$m"; }
done
t0=$(it_now_ms)
if it_wait_until one_master "$HEAL_S"; then
    tl "one master, all alive after $(it_fmt_ms $(($(it_now_ms) - t0))) s (writer running)"
else
    tl "NOT HEALED after $HEAL_S s: $(for i in $ALL; do printf 'node%s: %s; ' "$i" "$(view "$i")"; done)"
fi
# writes resume (the writer is still running)
a0=$(acks_now)
if it_wait_until "(( \$(acks_now) >= $a0 + 20 ))" 30; then
    it_ok "writes resume on the master after the heal ($(($(acks_now) - a0)) more acknowledged in $IT_WAITED s)"
else
    it_not_ok "writes resume on the master after the heal"
    it_diag "writer: $(tail -n 3 "$CH/acks")"
fi
kill -TERM "$WRITER_PID" 2>/dev/null
wait "$WRITER_PID" 2>/dev/null
WRITER_PID=
tl "writer stopped: $(tr '\n' ' ' <"$CH/writer.err")"
MASTER=
if it_wait_until healed "$HEAL_S"; then
    tl "HEALED $(it_fmt_ms $(($(it_now_ms) - t0))) s after the schedule: master node$MASTER"
    it_ok "after $NFAULTS faults (seed $SEED) the cluster heals: one master (node$MASTER) in every view and database, all A, in-sync, equal checksums ($(it_fmt_ms $(($(it_now_ms) - t0))) s)"
else
    tl "NOT HEALED: $HEALED_WHY"
    it_not_ok "after $NFAULTS faults (seed $SEED) the cluster heals within $HEAL_S s of the writer's end"
    it_diag "$HEALED_WHY"
fi
[[ -n "$MASTER" ]] || MASTER=$(master_now) || MASTER=1

# every acknowledged commit is on the master or in a divergence record
awk '$1 == "ack" { print $2 }' "$CH/acks" | sort -u >"$CH/acked"
awk '$1 == "fail" { print $2 }' "$CH/acks" | sort -u >"$CH/failed"
pg_sql "$MASTER" "SELECT id FROM mail WHERE node = 'chaos'" | sort -u >"$CH/present"
: >"$CH/diverged"
: >"$CH/reasons"
for i in $ALL; do
    pg_sql "$i" "SELECT (new->>'id') FROM pmgcm.divergence WHERE new->>'node' = 'chaos'" >>"$CH/diverged" 2>/dev/null
    pg_sql "$i" "SELECT 'node$i: ' || count(*) || ' x ' || reason FROM pmgcm.divergence GROUP BY reason" >>"$CH/reasons" 2>/dev/null
done
sort -u -o "$CH/diverged" "$CH/diverged"
sort -u "$CH/present" "$CH/diverged" >"$CH/accounted"
NACK=$(grep -c . "$CH/acked")
LOST=$(comm -23 "$CH/acked" "$CH/accounted" | grep -c .)
NDIV=$(comm -12 "$CH/acked" "$CH/diverged" | comm -23 - "$CH/present" | grep -c .)
BOTH=$(comm -12 "$CH/diverged" "$CH/present" | grep -c .)
PHANTOM=$(comm -12 "$CH/failed" "$CH/present" | grep -c .)
NOREASON=0
for i in $ALL; do
    v=$(pg_val "$i" "SELECT count(*) FROM pmgcm.divergence WHERE coalesce(reason, '') = ''")
    NOREASON=$((NOREASON + ${v:-0}))
done
TORN=$(pg_sql "$MASTER" "SELECT count(*) FROM ((SELECT id FROM mail WHERE node = 'chaos' EXCEPT SELECT rule_id + $FIRST_ID - 1 FROM rule_attr WHERE attr = 'chaos')
        UNION ALL (SELECT rule_id + $FIRST_ID - 1 FROM rule_attr WHERE attr = 'chaos' EXCEPT SELECT id FROM mail WHERE node = 'chaos')) x")
tl "acknowledged $NACK, on the master $(grep -c . "$CH/present"), only in divergence $NDIV, in divergence and present $BOTH, lost $LOST, failed-but-present $PHANTOM, torn ${TORN:-?}"
if ((NACK > 0 && LOST == 0 && PHANTOM == 0 && NOREASON == 0)) && [[ "$TORN" == 0 ]]; then
    it_ok "$NACK acknowledged commits: every one on the master ($NDIV only in a pmgcm.divergence record with its reason); no refused transaction present, none torn"
else
    it_not_ok "every acknowledged commit is on the master or in pmgcm.divergence"
    it_diag "acknowledged $NACK, lost $LOST (first: $(comm -23 "$CH/acked" "$CH/accounted" | head -n 10 | paste -sd' ')), failed-but-present $PHANTOM, torn ${TORN:-?}, divergence rows without reason $NOREASON"
    for id in $(comm -23 "$CH/acked" "$CH/accounted" | head -n 5); do
        w=
        for i in $ALL; do
            v=$(pg_val "$i" "SELECT count(*) FROM pmgcm.capture WHERE new->>'id' = '$id'")
            ((${v:-0} > 0)) && w+="node$i's pmgcm.capture ($(pg_val "$i" "SELECT role FROM pmgcm.state")); "
            v=$(pg_val "$i" "SELECT count(*) FROM mail WHERE id = $id")
            ((${v:-0} > 0)) && w+="node$i's mail table; "
        done
        it_diag "  $(grep "^ack $id " "$CH/acks") (at $(date -d "@$(awk -v id="$id" '$2 == id { printf "%.3f", $4 / 1000; exit }' "$CH/acks")" +%T.%3N)); found in: ${w:-nowhere}"
    done
fi
[[ -s "$CH/reasons" ]] && it_diag "divergence records: $(paste -sd';' "$CH/reasons")"
# rows written on a node while it was deleted: its `pmgcm join` loads the
# master's data (a snapshot), so they are on no node afterwards
OUTSIDE=
for i in $ALL; do
    v=$(pg_sql "$i" "SELECT string_agg(id::text, ',' ORDER BY id) FROM mail WHERE node = 'outside'" 2>&1)
    [[ -z "$v" ]] || OUTSIDE+="node$i holds $v; "
done
NOUT=$(grep -c 'written on node' "$TL")
if [[ -z "$OUTSIDE" ]]; then
    it_ok "the $NOUT row(s) written on deleted nodes are gone after their re-join (the join loads the master's data)"
else
    it_not_ok "rows written on a node while it was deleted are gone after its re-join"
    it_diag "$OUTSIDE"
    it_diag "$(grep -E 'written on node|joined node' "$TL")"
fi

if [[ -z "$CRASHES" ]]; then
    it_ok "no daemon crashed during the schedule"
else
    it_not_ok "no daemon crashed during the schedule: $CRASHES"
    for f in "$CH"/crash.*; do [[ -f "$f" ]] && it_diag "---- $(basename "$f")" && it_diag "$(cat "$f")"; done
fi
if [[ -z "$STEP_BAD" && -z "$SLOW_SETTLE" ]]; then
    it_ok "every fault's commands succeeded (promote, delete, join) and every node was alive (A/S) everywhere within $SETTLE_S s of each fault"
else
    it_not_ok "every fault's commands succeeded and the cluster settled after each fault"
    it_diag "${STEP_BAD}${SLOW_SETTLE:+not settled after: $SLOW_SETTLE}"
fi

# false deaths: a node shown D while neither it nor the observer was faulted
# (a fault's interval plus 10 s of grace), or because of a stall under the
# suspicion timeout, a stopped PostgreSQL or a full disk
kill -TERM "$MON_PID" 2>/dev/null
wait "$MON_PID" 2>/dev/null
MON_PID=
FALSE_DEATHS=$(python3 - "$TL" "$FAULTS" "$T0" <<'EOF'
import re, sys
tl, faults, t0 = sys.argv[1], sys.argv[2], int(sys.argv[3])
iv = []
for l in open(faults):
    p = l.split()
    if len(p) >= 4:
        iv.append((int(p[0]) - t0, int(p[1]) - t0 + 10000, p[2], set(p[3:])))
prev, bad = {}, []
for l in open(tl):
    m = re.match(r'\s*([\d.]+) VIEW node(\d+): (.*)', l)
    if not m:
        continue
    t, obs, v = int(float(m.group(1)) * 1000), m.group(2), m.group(3)
    for tok in v.split():
        mm = re.match(r'node(\d+)=(\S)', tok)
        if not mm:
            continue
        n, s = mm.group(1), mm.group(2)
        if s == 'D' and prev.get((obs, n)) != 'D':
            # a stall (under the suspicion timeout), a stopped PostgreSQL
            # or a full disk must not make anybody dead
            excused = any(a <= t <= b and kind not in ('stall', 'pgstop', 'diskfull')
                          and (kind == 'partition' or obs in nodes or n in nodes)
                          for a, b, kind, nodes in iv)
            if not excused:
                bad.append('%.3f node%s saw node%s D' % (t / 1000, obs, n))
        prev[(obs, n)] = s
print(len(bad))
for b in bad[:20]:
    print(b, file=sys.stderr)
EOF
)
it_diag "false deaths (D shown for a node nobody faulted): $FALSE_DEATHS"

# ---- shutdown ------------------------------------------------------------------------------
bad=
for i in $ALL; do it_alive_pid "$i" && it_signal "$i" TERM; done
for i in $ALL; do
    it_reap "$i" 20
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
    RUNNING[i]=
done
it_report_shutdown "$bad" $ALL

it_diag "chaos summary: seed $SEED, $MINUTES min planned, $NFAULTS faults, $NACK commits acknowledged, $LOST lost, $NDIV only in divergence, $FALSE_DEATHS false deaths, $(($(it_now_ms) / 1000 - T0 / 1000)) s"
echo "seed=$SEED minutes=$MINUTES faults=$NFAULTS acked=$NACK lost=$LOST diverged=$NDIV false_deaths=$FALSE_DEATHS fails=$IT_FAILS" >>"${CHAOS_RESULTS:-/dev/null}"
if ((IT_FAILS > 0)); then
    it_diag "==== FAILED: seed $SEED (rerun: make chaos SEED=$SEED MINUTES=$MINUTES)"
    it_diag "==== schedule"
    it_diag "$(cat "$CH/schedule")"
    it_diag "==== timeline"
    it_diag "$(cat "$TL")"
    for i in $ALL; do
        it_diag "==== node$i.log: errors, warnings, store events (last 40)"
        it_diag "$(grep -Ei 'error|warn|diverg|snapshot|promot|master|sanitizer' "$(it_log "$i")" | tail -n 40)"
    done
fi
it_plan "$IT_TAPN"
exit 0
