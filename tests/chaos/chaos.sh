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
#   badpromote  `pmgcm promote --force` on a node whose data is incomplete
#               must be refused: half the time a follower whose apply is
#               held back by a lock in its database while the master
#               commits 1000 changes (behind), else a re-joining node whose
#               snapshot load is held back (not loaded)
#   fencestep   a REPEATABLE READ / SERIALIZABLE transaction on the master
#               takes its snapshot, another node is promoted (--force),
#               the old master steps down, then the transaction writes and
#               commits: refused, or kept as divergence (never captured and
#               unsent); accounted like the writer's commits
#   farbehind   a follower stopped while the master commits 20000 changes,
#               restarted; its status is sampled during the catch-up: never
#               A (in the master's view or its own) nor /readyz 200 while
#               behind by more than the threshold (sync_lag_max)
#   filespromote  mirrored files: a follower is stopped, the master changes
#               its files, the master is killed, the follower returns
#               behind: `pmgcm promote --force` on it must be refused; an
#               in-sync node is promoted instead, the old master returns
#               HOLD s later
#   masterdisk  the master's daemon killed (-9), its PostgreSQL killed and
#               its data directory destroyed; another node promoted
#               (--force); HOLD s later the node returns with an empty
#               database (it loads a snapshot). The cluster runs with
#               db_sync = one (CHAOS_DB_SYNC): every commit the writers
#               saw acknowledged must survive the lost disk
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
# acknowledged-failed transaction is present, none torn; every mail row
# any node held at a checkpoint (before each fault, and right after a row
# is written outside the cluster) is at the end on the master, deleted by
# a numbered change, or in a pmgcm.divergence record or a backup schema
# (pmgcm.backups); every bad promote was refused; no far-behind sample
# showed A or /readyz 200; no daemon crashed; every daemon exits 0 on
# SIGTERM with no sanitizer report (ASan build). A second writer commits
# REPEATABLE READ and SERIALIZABLE transactions that pause 300 ms between
# their snapshot and their writes, so step-downs fall into them.
# Mirrored files (files_dir on every node; the runner edits the master's at
# every checkpoint, after each fault): every node ends in sync, and every
# file version seen on any node at a checkpoint is at the end in the
# master's files_dir, replaced or removed by the runner's own edit on the
# master (a manifest change), in some node's trash, or (a file no manifest
# listed) still where it was.
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
    [[ -n "${WRITER2_PID:-}" ]] && kill -TERM "$WRITER2_PID" 2>/dev/null
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

# id_trace M I ID: every trace of mail id ID: the log entries for it on the
# master M and on node I, the writers' records, every node's divergence
# records and backup schemas holding it
id_trace() {
    local m=$1 i=$2 id=$3 k b q
    q="SELECT seq || ' e' || epoch || ' ' || op::text || ' origin ' || origin FROM pmgcm.log WHERE tbl = 'public.mail' AND '$id' IN (new->>'id', old->>'id')"
    it_diag "  id $id: node$m log: $(pg_sql "$m" "$q" 2>&1 | paste -sd' ')"
    ((i == m)) || it_diag "  id $id: node$i log: $(pg_sql "$i" "$q" 2>&1 | paste -sd' ')"
    it_diag "  id $id: writers: $(grep -h " $id " "$CH"/acks* 2>/dev/null | paste -sd' ')"
    for k in $ALL; do
        it_diag "  id $id: node$k divergence: $(pg_sql "$k" "SELECT coalesce(seq::text, '-') || ' e' || coalesce(epoch::text, '-') || ' ' || reason FROM pmgcm.divergence WHERE tbl = 'public.mail' AND '$id' IN (new->>'id', old->>'id')" 2>&1 | paste -sd' ' | cut -c1-300)"
        for b in $(pg_sql "$k" "SELECT schema_name FROM pmgcm.backups" 2>/dev/null); do
            [[ -n "$(pg_val "$k" "SELECT 1 FROM $b.\"public.mail\" WHERE id = $id")" ]] &&
                it_diag "  id $id: node$k backup $b holds it"
        done
    done
}

# every node's log: starts, snapshots, divergences, promotes, upstreams
node_histories() {
    local i
    for i in $ALL; do
        it_diag "==== node$i.log: every start, snapshot, divergence, promote and upstream"
        it_diag "$(grep -E '=== start|snapshot (for|sent|loaded)|sending a snapshot|taking a snapshot|DIVERGED|BACKUP|promot|following master|catching up|is down' "$(it_log "$i")" | cut -c1-220)"
    done
}

# rows_diff M: when the nodes' tables differ, which mail rows differ from
# master M's on each node (at most 8 each way), and every trace of those
# ids: the master's and the node's log entries, any node's divergence
# records and backup schemas (for the next person who reads a red run)
rows_diff() {
    local m=$1 i id s col ids
    pg_sql "$m" "SELECT id FROM mail" 2>/dev/null | sort >"$CH/rows.m"
    for i in $ALL; do
        ((i == m)) && continue
        pg_sql "$i" "SELECT id FROM mail" 2>/dev/null | sort >"$CH/rows.$i"
        # comm -23: only the master's rows; -13: only this node's
        for s in "missing on node$i:23" "only on node$i:13"; do
            col=${s##*:}
            ids=$(comm -"$col" "$CH/rows.m" "$CH/rows.$i" | head -n 8 | tr '\n' ' ')
            [[ -n "$ids" ]] || continue
            it_diag "rows_diff: mail ids ${s%:*} (vs master node$m): $ids"
            for id in $ids; do id_trace "$m" "$i" "$id"; done
        done
    done
    node_histories
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
KINDS=(kill9 stall freeze link partition masterkill rejoin pgstop diskfull badpromote fencestep farbehind filespromote masterdisk)
WEIGHTS=(3 2 2 2 2 2 1 2 1 1 1 1 1 1)
# estimated seconds a fault takes besides its hold time
declare -A COST=([kill9]=3 [stall]=2 [freeze]=4 [link]=4 [partition]=8 [masterkill]=12 [rejoin]=15 [pgstop]=4 [diskfull]=4 [badpromote]=12 [fencestep]=8 [farbehind]=10 [filespromote]=20 [masterdisk]=20)
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
        masterkill | filespromote | masterdisk) rnd 2 10; S_HOLD[n]=$R ;;
        rejoin) rnd 1 5; S_HOLD[n]=$R ;;
        badpromote | fencestep | farbehind) S_HOLD[n]=0 ;;
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

# ---- mirrored files: setup, edits, checkpoints, the promote fault, the final check ----
# Every node mirrors $IT_DIR/etc<i> (outside its tmpfs data_dir, so the
# trash copies across filesystems). node1, the first master, starts with
# 13 files; node3 holds own.cf, which no manifest lists (it must stay).
# Every checkpoint (after each fault) records "node path sha256" of every
# file of every node in $CH/files.seen, and the runner then edits the
# master's files (one changed, every second time one added, every third
# one removed: never most of them), recording the version it replaced or
# removed in $CH/files.changed.
FE=0
files_setup() {
    local i k
    : >"$CH/files.seen"
    : >"$CH/files.changed"
    for i in $ALL; do mkdir -p "$IT_DIR/etc$i"; done
    for ((k = 1; k <= 12; k++)); do
        printf 'setting %d = initial\n' "$k" >"$IT_DIR/etc1/conf$k.cf"
    done
    mkdir -p "$IT_DIR/etc1/sub"
    printf 'nested\n' >"$IT_DIR/etc1/sub/nested.cf"
    printf 'node3 only, in no manifest\n' >"$IT_DIR/etc3/own.cf"
}
files_conf() {
    printf '%s\n' "files_dir = $IT_DIR/etc$1" "files_max_bytes = 65536" \
        "files_trash_max_files = 2000" "files_trash_max_bytes = 524288" >>"$IT_DIR/node$1.conf"
}
files_of() { it_envelope "$1" 2>/dev/null | jq -c '.files // empty' 2>/dev/null; }
files_field() { files_of "$1" | jq -r --arg f "$2" '.[$f] // empty' 2>/dev/null; }
# files_snap I: "node<I> path sha256" of every file in node I's files_dir
files_snap() {
    (cd "$IT_DIR/etc$1" 2>/dev/null && find . -type f ! -name '.*' -printf '%P\n' | sort |
        while IFS= read -r p; do echo "node$1 $p $(sha256sum <"$p" | cut -c1-64)"; done)
}
files_checkpoint() {
    local i m f k
    for i in $ALL; do files_snap "$i"; done >>"$CH/files.seen"
    m=$(master_now) || return 0
    FE=$((FE + 1))
    f=$IT_DIR/etc$m/conf$(((FE % 12) + 1)).cf
    if [[ -f $f ]]; then
        echo "$(sha256sum <"$f" | cut -c1-64) changed ${f##*/}" >>"$CH/files.changed"
        printf 'setting %d = edit %d on node%s\n' $(((FE % 12) + 1)) "$FE" "$m" >"$f.tmp.$$" && mv "$f.tmp.$$" "$f"
    fi
    if ((FE % 2 == 0)); then
        printf 'added at checkpoint %d\n' "$FE" >"$IT_DIR/etc$m/added$FE.cf"
    fi
    if ((FE % 3 == 0)); then
        k=$(cd "$IT_DIR/etc$m" && ls added*.cf 2>/dev/null | head -n1)
        if [[ -n "$k" ]]; then
            echo "$(sha256sum <"$IT_DIR/etc$m/$k" | cut -c1-64) removed $k" >>"$CH/files.changed"
            rm -f "$IT_DIR/etc$m/$k"
        fi
    fi
    # the next fault starts with every node in sync (a promote of a node
    # whose files are behind is refused, and rightly so)
    it_wait_until "files_synced_all && [[ \$(files_field $m local) == \$(files_field $m published) ]]" 30 ||
        tl "mirrored files: not every node in sync 30 s after the edit on node$m: $FILES_WHY"
}
# files_synced_all: every running node's files_dir holds the same
# published manifest (FILES_WHY says who does not)
FILES_WHY=
files_synced_all() {
    local i p first=
    for i in $ALL; do
        [[ -n "${RUNNING[i]:-}" ]] || continue
        [[ "$(files_field "$i" synced)" == true ]] || { FILES_WHY="node$i: $(files_of "$i" | head -c 400)"; return 1; }
        p=$(files_field "$i" published)
        [[ -z "$first" ]] && first=$p
        [[ "$p" == "$first" ]] || { FILES_WHY="node$i publishes $p, another $first"; return 1; }
    done
}
f_filespromote() {
    local r=$1 hold=$2 m j k c p0 i
    m=$(master_now) || { tl "filespromote skipped: no single master in any view"; return 0; }
    j=$(pick_other "$r" "$m") || return 0
    k=
    for i in $ALL; do
        [[ $i == "$m" || $i == "$j" || -z "${RUNNING[i]:-}" ]] && continue
        [[ "$(files_field "$i" synced)" == true ]] && { k=$i; break; }
    done
    [[ -n "$k" ]] || { tl "filespromote skipped: no other follower in sync"; return 0; }
    fault_begin
    tl "FAULT filespromote: node$j stopped, master node$m changes its files and is killed, node$j returns behind (promote must be refused), node$k promoted, node$m back after $hold s"
    it_signal "$j" TERM
    it_reap "$j" 20
    RUNNING[$j]=
    c=$IT_DIR/etc$m/conf1.cf
    echo "$(sha256sum <"$c" | cut -c1-64) changed conf1.cf" >>"$CH/files.changed"
    printf 'setting 1 = changed while node%s was down\n' "$j" >"$c.tmp.$$" && mv "$c.tmp.$$" "$c"
    p0=$(files_field "$k" published)
    it_wait_until "[[ \$(files_field $k published) != '$p0' && \$(files_field $k synced) == true ]]" 20 ||
        tl "node$k did not take the master's change: $(files_of "$k" | head -c 300)"
    kill9 "$m"
    start_node "$j"
    it_wait_until "[[ \$(files_field $j published) == \$(files_field $k published) ]]" 30 ||
        tl "node$j did not learn the new files digest: $(files_of "$j" | head -c 300)"
    pmgcm_on "$j" promote --force
    if ((RC == 0)); then
        step_bad "pmgcm promote --force on node$j, whose files_dir is behind, succeeded: $(head -c 200 <<<"$OUT")"
    else
        tl "promote --force on node$j refused as it must be: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
        grep -q 'files_dir' <<<"$OUT" || tl "(refused for another reason than its files)"
    fi
    promote_on "$k" "$m"
    sleep "$hold"
    start_node "$m"
    tl "old master node$m restarted"
    fault_end filespromote "$m $j $k"
}
# files_final M: after the heal, every node in sync, and no file version
# seen at a checkpoint lost (M: the master)
FILES_LOST= NSEEN=
files_final() {
    local m=$1 t0 lost=0 node path sha first= i
    t0=$(it_now_ms)
    if it_wait_until files_synced_all 60; then
        tl "mirrored files: every node in sync after $(it_fmt_ms $(($(it_now_ms) - t0))) s"
    else
        it_not_ok "mirrored files: every node in sync after the heal"
        it_diag "$FILES_WHY"
    fi
    for i in $ALL; do files_snap "$i"; done >>"$CH/files.seen"
    # what is where now: the master's files, every trash, every files_dir
    files_snap "$m" | awk '{ print $2, $3 }' | sort -u >"$CH/files.master"
    : >"$CH/files.trash"
    for i in $ALL; do
        (cd "$IT_DIR/node$i/files-trash" 2>/dev/null && find . -type f ! -name '.*' -printf '%P\n' |
            while IFS= read -r p; do echo "${p#*/} $(sha256sum <"$p" | cut -c1-64)"; done) >>"$CH/files.trash"
    done
    sort -u -o "$CH/files.trash" "$CH/files.trash"
    for i in $ALL; do files_snap "$i"; done | sort -u >"$CH/files.now"
    awk '{ print $3, $1 }' "$CH/files.changed" | sort -u >"$CH/files.changedkeys"
    NSEEN=$(sort -u "$CH/files.seen" | grep -c .)
    while read -r node path sha; do
        grep -qxF "$path $sha" "$CH/files.master" && continue
        grep -qxF "$path $sha" "$CH/files.trash" && continue
        grep -qxF "$path $sha" "$CH/files.changedkeys" && continue
        grep -qxF "$node $path $sha" "$CH/files.now" && continue
        lost=$((lost + 1))
        [[ -z "$first" ]] && first="$node $path ${sha:0:16}"
    done < <(sort -u "$CH/files.seen")
    FILES_LOST=$lost
    tl "mirrored files: $NSEEN file versions seen at checkpoints, $lost unaccounted; trash: $(grep -c . "$CH/files.trash") versions; the runner changed $(grep -c . "$CH/files.changed")"
    if ((lost == 0)) && [[ "$(cat "$IT_DIR/etc3/own.cf" 2>/dev/null)" == 'node3 only, in no manifest' ]]; then
        it_ok "mirrored files: every one of $NSEEN file versions seen at the checkpoints is on the master, in a node's trash, replaced by the runner's edit, or (own.cf, in no manifest) still in place"
    else
        it_not_ok "mirrored files: no file version lost ($lost unaccounted, first: ${first:-none}; own.cf on node3: $(cat "$IT_DIR/etc3/own.cf" 2>&1))"
        for i in $ALL; do it_diag "node$i files: $(files_of "$i" | head -c 600)"; done
    fi
}

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
files_setup
for i in $ALL; do
    it_write_config_lc "$i" "node$i"
    pg_conf "$i" "db_sync=${CHAOS_DB_SYNC:-one}"
    files_conf "$i"
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
it_wait_until files_synced_all 60 || it_diag "mirrored files not in sync at the start: $FILES_WHY"
files_checkpoint
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
    elif grep -q 'refused (' <<<"$OUT" && [[ -z "${PROMOTE_RETRY:-}" ]]; then
        # its data is incomplete (just restarted, behind): as an admin
        # would, promote the node the refusal names
        local b
        tl "promote on node$i refused: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
        b=$(grep -o 'most advanced data is node[0-9]*\|behind node[0-9]*\|than node[0-9]*\|in sync: node[0-9]*' <<<"$OUT" | grep -o '[0-9]*$' | head -n1)
        if [[ -n "$b" && "$b" != "$old" ]]; then
            PROMOTE_RETRY=1 promote_on "$b" "$old"
        else
            step_bad "pmgcm promote --force on node$i refused, no other node named: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
        fi
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
        checkpoint "$j"
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
# the master's disk lost: its daemon and PostgreSQL die, its database is
# gone; another node is promoted; the node comes back with an empty
# database of the same schema and loads a snapshot (its identity is kept:
# it is still in the cluster)
f_masterdisk() {
    local r=$1 hold=$2 m p
    m=$(master_now) || { tl "masterdisk skipped: no single master in any view"; return 0; }
    p=$(pick_other "$r" "$m") || return 0
    fault_begin
    tl "FAULT masterdisk: master node$m's daemon and PostgreSQL killed, its data directory destroyed; promote node$p; node$m back with an empty database after $hold s"
    kill9 "$m"
    pg_stop "$m" immediate
    rm -rf "${PG_DATA[m]}"
    promote_on "$p" "$m"
    sleep "$hold"
    if pg_start "$m" && pg_schema "$m"; then
        tl "node$m's PostgreSQL made anew (empty database, same schema)"
    else
        step_bad "node$m's PostgreSQL could not be made anew"
    fi
    start_node "$m"
    tl "node$m's daemon restarted on the empty database"
    fault_end masterdisk "$m $p"
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

# ---- data safety (issue 12): faults, samples and checks -------------------------------
# Kept apart from the faults above: the second writer, checkpoints of the
# rows every node holds, bad promotes, writers across step-downs, far-behind
# restarts, and the checks on them at the end.
LAGMAX=500          # the store's sync_lag_max (read from a status at start)
FIRST2=50000001     # second writer (REPEATABLE READ / SERIALIZABLE)
FENCE_FIRST=70000000
WRITER2_PID=
BADPROMOTE_N=0 BADPROMOTE_BAD=
FENCE_N=0
FB_N=0 FB_SAMPLES=0 FB_S=0 FB_VIOL=
: >"$CH/seen"
: >"$CH/acks2"
: >"$CH/acks3"

safety_writer_start() {
    local l
    l=$(it_envelope 1 2>/dev/null | jq -r '.store.sync_lag_max // empty')
    [[ "$l" =~ ^[0-9]+$ ]] && LAGMAX=$l
    CHAOS_WRITER_ISOLATION=alternate CHAOS_WRITER_HOLD_MS=300 CHAOS_WRITER_TAG=chaos-rr \
        "$WRITER" "$CH/acks2" "$FIRST2" 50 $(for i in $ALL; do pg_sock "$i"; done) 2>"$CH/writer2.err" &
    WRITER2_PID=$!
}
safety_writer_stop() {
    [[ -n "$WRITER2_PID" ]] || return 0
    kill -TERM "$WRITER2_PID" 2>/dev/null
    wait "$WRITER2_PID" 2>/dev/null
    WRITER2_PID=
    tl "second writer (repeatable read / serializable, 300 ms between snapshot and writes) stopped: $(tr '\n' ' ' <"$CH/writer2.err")"
}

# checkpoint [I...]: the mail ids every listed (default: every running)
# node holds now, into seen: each must be accounted for at the end
checkpoint() {
    local i nodes=${*:-$ALL}
    for i in $nodes; do
        [[ -n "${PG_UP[i]:-}" ]] || continue
        pg_sql "$i" "SELECT id FROM mail" >>"$CH/seen" 2>/dev/null
    done
}

# the status port of node I: /readyz's code (000: no answer)
readyz() {
    local c
    c=$(ip netns exec "$IT_BRNS" curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://${IT_IP[$1]}:7948/readyz" 2>/dev/null)
    echo "${c:-000}"
}
# letter_in I J: the letter node I's view shows for node J
letter_in() { view "$1" | grep -o "node$2=[A-Z?]" | cut -d= -f2; }
epoch_of() { it_cluster_of "$1" 2>/dev/null | jq -r '.epoch // empty'; }
# lock_db I MODE: a session of node I's database holds a lock on mail
# (application_name chaoslock) until unlock_db I (at most 10 min: longer
# than promote's 60 s wait for a catch-up that never starts, on a loaded
# machine too - a lock that ran out mid-promote let the node catch up and
# the promote succeed, rightly)
lock_db() {
    "$PG_BINDIR/psql" -X -q -At -h "$(pg_sock "$1")" -U postgres -d pmg \
        -c "SET application_name = 'chaoslock'" -c "BEGIN" -c "LOCK TABLE mail IN $2 MODE" \
        -c "SELECT pg_sleep(600)" >/dev/null 2>&1 &
    it_wait_until "[[ \$(pg_val $1 \"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaoslock' AND wait_event = 'PgSleep'\") == 1 ]]" 10
}
unlock_db() {
    pg_val "$1" "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'chaoslock'" >/dev/null
}
# burst M BASE N: N mail rows (node 'burst', ids BASE+1..BASE+N) on node M
# in transactions of 1000
burst() {
    local m=$1 base=$2 n=$3 k
    for ((k = 0; k < n; k += 1000)); do
        echo "INSERT INTO mail SELECT g, 'burst', 'burst ' || g, 0, now() FROM generate_series($((base + k + 1)), $((base + k + 1000))) g;"
    done | pg_sql "$m" >/dev/null 2>&1
}
# gossip_seq J M: node M's position seq as node J's view has it (gossip)
gossip_seq() {
    local v
    v=$(it_status "$1" 2>/dev/null | jq -r --arg n "node$2" '.members? // . | .[] | select(.name == $n) | .db.seq // 0' 2>/dev/null)
    echo "${v:-0}"
}
# bad_promote_try J WHAT: promote --force on node J must be refused
bad_promote_try() {
    local j=$1 what=$2 e0
    e0=$(epoch_of "$j")
    pmgcm_on "$j" promote --force
    BADPROMOTE_N=$((BADPROMOTE_N + 1))
    if ((RC == 1)) && grep -q 'refused (' <<<"$OUT" && [[ "$(epoch_of "$j")" == "$e0" ]]; then
        tl "promote --force on node$j ($what) refused: $(head -c 250 <<<"$OUT" | tr '\n' ' ')"
    else
        BADPROMOTE_BAD+="node$j ($what): exit $RC $(head -c 200 <<<"$OUT" | tr '\n' ' '); "
        tl "BAD: promote --force on node$j ($what) was not refused: exit $RC $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
    fi
}

f_badpromote() {
    local r=$1 m j cid
    m=$(master_now) || { tl "badpromote skipped: no single master in any view"; return 0; }
    j=$(pick_other "$r" "$m") || return 0
    fault_begin
    if ((r % 2 == 0)); then
        tl "FAULT badpromote: node$j's apply held back by a lock while node$m commits 1000 changes, then promote --force on node$j"
        lock_db "$j" EXCLUSIVE || tl "the lock on node$j's mail was not taken"
        burst "$m" $((600000000 + F * 10000)) 1000
        checkpoint "$m"
        it_wait_until "(( \$(seq_of $m) - \$(seq_of $j) > $LAGMAX + 100 ))" 20 ||
            tl "node$j is only $(($(seq_of "$m") - $(seq_of "$j"))) behind"
        # promote's check reads the others' positions from gossip: wait
        # until node j's view carries node m's new position (a promote
        # within that gossip delay is not covered: see the README)
        it_wait_until "(( \$(gossip_seq $j $m) - \$(seq_of $j) > $LAGMAX + 100 ))" 30 ||
            tl "node$j's view of node$m is at $(gossip_seq "$j" "$m") only"
        bad_promote_try "$j" "behind by $(($(seq_of "$m") - $(seq_of "$j"))) changes"
        unlock_db "$j"
    else
        cid=$(cid_of "$m" "$j")
        tl "FAULT badpromote: node$j (cid $cid) deleted and joining again with its snapshot load held back, then promote --force on it"
        pmgcm_on "$m" delete "$cid"
        if ((RC != 0)); then
            step_bad "badpromote: pmgcm delete $cid on node$m exit $RC: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
            fault_end badpromote "$j"
            return 0
        fi
        it_wait_until "[[ \$(it_cluster_of $j) == null ]]" 30 || step_bad "node$j still in a cluster after its delete"
        lock_db "$j" "ACCESS SHARE" || tl "the lock on node$j's mail was not taken"
        pmgcm_on "$j" join "${IT_IP[m]}" --fingerprint "$(it_fingerprint_of "$m")" --password-file "$PW" --no-wait
        ((RC == 0)) || step_bad "badpromote: join --no-wait of node$j exit $RC: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
        it_wait_until "[[ \$(st $j loaded) == f ]] && [[ \$(it_envelope $j | jq -r .store.state) == loading ]]" 30 ||
            tl "node$j is not loading: $(it_envelope "$j" | jq -c .store | head -c 200)"
        bad_promote_try "$j" "not loaded"
        unlock_db "$j"
        it_wait_until "[[ \$(db_state $j) == in-sync ]]" 60 || step_bad "node$j did not load after the lock went: $(db_state "$j")"
    fi
    fault_end badpromote "$j"
}

f_fencestep() {
    local r=$1 m p level id f out c d row
    m=$(master_now) || { tl "fencestep skipped: no single master in any view"; return 0; }
    p=$(pick_in_sync "$r" "$m") || { tl "fencestep skipped: no follower in sync"; return 0; }
    level="REPEATABLE READ"
    ((r % 2)) && level=SERIALIZABLE
    id=$((FENCE_FIRST + F))
    f=$CH/fence.$F
    fault_begin
    tl "FAULT fencestep: a $level transaction on master node$m takes its snapshot; node$p promoted; then it writes mail $id and commits"
    mkfifo "$f.in"
    "$PG_BINDIR/psql" -X -q -At -h "$(pg_sock "$m")" -U postgres -d pmg <"$f.in" >"$f.out" 2>&1 &
    local pid=$! fd
    exec {fd}>"$f.in"
    printf '%s\n' "BEGIN ISOLATION LEVEL $level; SELECT count(*) FROM mail; \\echo snapshot" >&"$fd"
    it_wait_until "grep -q snapshot '$f.out'" 10
    PROMOTE_RETRY=1 promote_on_alive "$p"
    it_wait_until "[[ \$(st $m role) != master ]]" 30 || tl "node$m still says master"
    printf '%s\n' "INSERT INTO mail VALUES ($id, 'chaos', 'fence', 0, now());" \
        "INSERT INTO rule_attr VALUES ($((id - FENCE_FIRST)), 'chaos-fence', 'fence');" \
        "COMMIT;" "\\echo done" >&"$fd"
    it_wait_until "grep -q done '$f.out'" 15
    exec {fd}>&-
    wait "$pid" 2>/dev/null
    out=$(tr '\n' ' ' <"$f.out")
    FENCE_N=$((FENCE_N + 1))
    if grep -q ERROR "$f.out"; then
        echo "fail $id $m $(it_now_ms) fence" >>"$CH/acks3"
        tl "the $level transaction on node$m failed: ${out:0:250}"
    else
        echo "ack $id $m $(it_now_ms)" >>"$CH/acks3"
        tl "the $level transaction on node$m committed (no error): ${out:0:200}"
    fi
    # never a captured, unsent change left on a non-master
    if ! it_wait_until "pg_captured $m $(pg_wal "$m")" 20; then
        step_bad "node$m's capture did not get past the transaction after stepping down (slot $(pg_val "$m" "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name LIKE 'pmgcm%'"), WAL $(pg_val "$m" 'SELECT pg_current_wal_lsn()'))"
    fi
    row=$(pg_val "$m" "SELECT count(*) FROM mail WHERE id = $id")
    d=$(pg_val "$m" "SELECT count(*) FROM pmgcm.divergence WHERE new->>'id' = '$id'")
    c=$(pg_val "$p" "SELECT count(*) FROM mail WHERE id = $id")
    if [[ "$row" == 1 && "$d" != 1 && "$c" != 1 ]]; then
        step_bad "mail $id committed on node$m after its step-down: neither in its divergence nor on node$p"
    fi
    fault_end fencestep "$m $p"
}
# pick_in_sync R EXCEPT...: like pick_other, among nodes whose store is in-sync
pick_in_sync() {
    local r=$1 k c
    shift
    for ((k = 0; k < 5; k++)); do
        c=$(pick_other $((r + k)) "$@") || return 1
        [[ "$(db_state "$c")" == in-sync ]] && { echo "$c"; return 0; }
    done
    return 1
}
# promote_on_alive I: promote --force of node I while the master is alive
promote_on_alive() {
    pmgcm_on "$1" promote --force
    if ((RC == 0)); then
        tl "node$1 promoted (--force, the master alive): $(head -n1 <<<"$OUT")"
    else
        step_bad "pmgcm promote --force on node$1 exit $RC: $(head -c 300 <<<"$OUT" | tr '\n' ' ')"
    fi
}

f_farbehind() {
    local r=$1 m j head0 t0 mb l1 lj rz sj n=0 ns=0 lag
    m=$(master_now) || { tl "farbehind skipped: no single master in any view"; return 0; }
    j=$(pick_other "$r" "$m") || return 0
    fault_begin
    tl "FAULT farbehind: node$j stopped while node$m commits 20000 changes, restarted, its status sampled during the catch-up"
    it_signal "$j" TERM
    it_reap "$j" 15
    RUNNING[$j]=
    burst "$m" $((610000000 + F * 100000)) 20000
    checkpoint "$m"
    head0=$(seq_of "$m")
    t0=$(it_now_ms)
    start_node "$j"
    while :; do
        mb=$(seq_of "$m")
        l1=$(letter_in "$m" "$j") lj=$(letter_in "$j" "$j") rz=$(readyz "$j")
        sj=$(seq_of "$j")
        n=$((n + 1))
        lag=$((mb - sj))
        if ((lag > LAGMAX)); then
            ns=$((ns + 1))
            [[ "$l1" == A || "$lj" == A || "$rz" == 200 ]] &&
                FB_VIOL+="node$j at +$(it_fmt_ms $(($(it_now_ms) - t0))) s behind by >= $lag: master's view $l1, own $lj, readyz $rz; "
        fi
        ((sj >= head0)) && break
        (($(it_now_ms) - t0 > 90000)) && { step_bad "farbehind: node$j not caught up in 90 s (at $sj of $head0)"; break; }
    done
    FB_N=$((FB_N + 1)) FB_SAMPLES=$((FB_SAMPLES + n)) FB_S=$((FB_S + ns))
    tl "node$j caught up $(it_fmt_ms $(($(it_now_ms) - t0))) s after its restart: $n samples, $ns while behind by more than $LAGMAX"
    fault_end farbehind "$j"
}

# safety_checks MASTER: the TAP points of this section (after the heal)
safety_checks() {
    local m=$1 i lost n
    # every row any node held at a checkpoint: on the master, deleted by a
    # numbered change, in a divergence record or in a backup schema
    sort -u -o "$CH/seen" "$CH/seen"
    pg_sql "$m" "SELECT id FROM mail" >"$CH/kept" 2>/dev/null
    pg_sql "$m" "SELECT old->>'id' FROM pmgcm.log WHERE op = 'D' AND tbl = 'public.mail'" >>"$CH/kept" 2>/dev/null
    for i in $ALL; do
        pg_sql "$i" "SELECT coalesce(new->>'id', old->>'id') FROM pmgcm.divergence WHERE tbl = 'public.mail'" >>"$CH/kept" 2>/dev/null
        for s in $(pg_sql "$i" "SELECT schema_name FROM pmgcm.backups WHERE schema_name IS NOT NULL" 2>/dev/null); do
            pg_sql "$i" "SELECT id FROM $s.\"public.mail\"" >>"$CH/kept" 2>/dev/null
        done
    done
    sort -u -o "$CH/kept" "$CH/kept"
    n=$(grep -c . "$CH/seen")
    lost=$(comm -23 "$CH/seen" "$CH/kept" | grep -c .)
    local nb=0
    for i in $ALL; do
        v=$(pg_val "$i" "SELECT count(*) FROM pmgcm.backups WHERE schema_name IS NOT NULL")
        nb=$((nb + ${v:-0}))
    done
    if ((n > 0 && lost == 0)); then
        it_ok "every one of the $n mail rows any node held at a checkpoint is on the master, deleted by a numbered change, or kept in a divergence record or one of $nb backup schema(s)"
    else
        it_not_ok "every row any node held at a checkpoint is on the master, deleted by a numbered change, or in a divergence record or a backup"
        it_diag "$lost of $n not found: $(comm -23 "$CH/seen" "$CH/kept" | head -n 10 | paste -sd' ')"
    fi
    # rows written outside the cluster: in that node's backup
    local outb=
    for id in $(grep -o 'row [0-9]* written on node' "$TL" | awk '{ print $2 }'); do
        grep -qx "$id" "$CH/kept" || outb+="$id "
    done
    if [[ -z "$outb" ]]; then
        it_ok "the row(s) written on deleted nodes are kept in their backups"
    else
        it_not_ok "rows written on deleted nodes are kept in their backups: missing $outb"
    fi
    if ((BADPROMOTE_N == 0)); then
        it_ok "# SKIP no badpromote fault in this schedule"
    elif [[ -z "$BADPROMOTE_BAD" ]]; then
        it_ok "$BADPROMOTE_N promote attempt(s) on nodes whose data was incomplete (behind, not loaded): every one refused, the epoch unchanged"
    else
        it_not_ok "promote on a node whose data is incomplete is refused"
        it_diag "$BADPROMOTE_BAD"
    fi
    if ((FB_N == 0)); then
        it_ok "# SKIP no farbehind fault in this schedule"
    elif [[ -z "$FB_VIOL" ]]; then
        it_ok "$FB_N far-behind restart(s): $FB_SAMPLES status samples during the catch-up ($FB_S while behind by more than $LAGMAX): none showed A or /readyz 200 while behind by more than $LAGMAX"
    else
        it_not_ok "no sample shows A or /readyz 200 for a node behind by more than $LAGMAX"
        it_diag "${FB_VIOL:0:1500}"
    fi
    tl "fencestep: $FENCE_N transaction(s) across a step-down: $(grep -c '^ack' "$CH/acks3") committed, $(grep -c '^fail' "$CH/acks3") refused; second writer: $(grep -c '^ack' "$CH/acks2") acknowledged, $(grep -c '^fail' "$CH/acks2") failed"
}

safety_writer_start

SLOW_SETTLE=
for ((f = 0; f < NF; f++)); do
    check_crashes
    j=${S_NODE[f]} h=${S_HOLD[f]} r=${S_R[f]} F=$((f + 1))
    checkpoint
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
        badpromote) f_badpromote "$r" ;;
        fencestep) f_fencestep "$r" ;;
        farbehind) f_farbehind "$r" ;;
        filespromote) f_filespromote "$r" "$h" ;;
        masterdisk) f_masterdisk "$r" "$h" ;;
    esac
    if it_wait_until all_alive "$SETTLE_S"; then
        tl "all five alive (A/S) in every view after ${IT_WAITED} s"
    else
        tl "NOT SETTLED: not all five alive everywhere $SETTLE_S s after the fault: $(for i in $ALL; do printf 'node%s: %s; ' "$i" "$(view "$i")"; done)"
        SLOW_SETTLE+="fault $((f + 1)) (${S_KIND[f]}); "
    fi
    files_checkpoint
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
safety_writer_stop
MASTER=
if it_wait_until healed "$HEAL_S"; then
    tl "HEALED $(it_fmt_ms $(($(it_now_ms) - t0))) s after the schedule: master node$MASTER"
    it_ok "after $NFAULTS faults (seed $SEED) the cluster heals: one master (node$MASTER) in every view and database, all A, in-sync, equal checksums ($(it_fmt_ms $(($(it_now_ms) - t0))) s)"
else
    tl "NOT HEALED: $HEALED_WHY"
    it_not_ok "after $NFAULTS faults (seed $SEED) the cluster heals within $HEAL_S s of the writer's end"
    it_diag "$HEALED_WHY"
    HEAL_FAILED=1
fi
[[ -n "$MASTER" ]] || MASTER=$(master_now) || MASTER=1
[[ -n "${HEAL_FAILED:-}" && "$HEALED_WHY" == "checksums differ"* ]] && rows_diff "$MASTER"

# every acknowledged commit is on the master or in a divergence record
# (the steady writer, the repeatable read / serializable one, fencestep)
awk '$1 == "ack" { print $2 }' "$CH/acks" "$CH/acks2" "$CH/acks3" | sort -u >"$CH/acked"
awk '$1 == "fail" { print $2 }' "$CH/acks" "$CH/acks2" "$CH/acks3" | sort -u >"$CH/failed"
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
# each writer's mail row and rule_attr row come together (attr tags the
# writer, rule_id = id - its first id + 1)
TORN=$(pg_sql "$MASTER" "WITH w(tag, base) AS (VALUES ('chaos', $FIRST_ID - 1), ('chaos-rr', $FIRST2 - 1), ('chaos-fence', $FENCE_FIRST)),
        m AS (SELECT id FROM mail WHERE node = 'chaos'),
        a AS (SELECT rule_id + w.base AS id FROM rule_attr r JOIN w ON w.tag = r.attr)
        SELECT count(*) FROM ((SELECT id FROM m EXCEPT SELECT id FROM a) UNION ALL (SELECT id FROM a EXCEPT SELECT id FROM m)) x")
tl "acknowledged $NACK, on the master $(grep -c . "$CH/present"), only in divergence $NDIV, in divergence and present $BOTH, lost $LOST, failed-but-present $PHANTOM, torn ${TORN:-?}"
# a commit kept as divergence somewhere yet on the master: where it came
# from (a change committed while not the master reaches the master only
# by a copy of that node's tables; once it did, silently, store_pair's
# test_snapshot_waits_for_capture)
if ((BOTH > 0)); then
    for id in $(comm -12 "$CH/diverged" "$CH/present" | head -n 4); do
        id_trace "$MASTER" "$MASTER" "$id"
    done
    [[ -n "${HEAL_FAILED:-}" ]] || node_histories
fi
if ((NACK > 0 && LOST == 0 && PHANTOM == 0 && NOREASON == 0)) && [[ "$TORN" == 0 ]]; then
    it_ok "$NACK acknowledged commits: every one on the master ($NDIV only in a pmgcm.divergence record with its reason); no refused transaction present, none torn"
else
    it_not_ok "every acknowledged commit is on the master or in pmgcm.divergence"
    it_diag "acknowledged $NACK, lost $LOST (first: $(comm -23 "$CH/acked" "$CH/accounted" | head -n 10 | paste -sd' ')), failed-but-present $PHANTOM, torn ${TORN:-?}, divergence rows without reason $NOREASON"
    for id in $(comm -23 "$CH/acked" "$CH/accounted" | head -n 5); do
        w=
        for i in $ALL; do
            pg_captured "$i" "$(pg_wal "$i")" || w+="node$i's capture is behind its WAL ($(pg_val "$i" "SELECT role FROM pmgcm.state")); "
            v=$(pg_val "$i" "SELECT count(*) FROM mail WHERE id = $id")
            ((${v:-0} > 0)) && w+="node$i's mail table; "
        done
        it_diag "  $(grep "^ack $id " "$CH/acks") (at $(date -d "@$(awk -v id="$id" '$2 == id { printf "%.3f", $4 / 1000; exit }' "$CH/acks")" +%T.%3N)); found in: ${w:-nowhere}"
    done
fi
[[ -s "$CH/reasons" ]] && it_diag "divergence records: $(paste -sd';' "$CH/reasons")"
files_final "$MASTER"

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

safety_checks "$MASTER"

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
echo "seed=$SEED minutes=$MINUTES faults=$NFAULTS acked=$NACK lost=$LOST diverged=$NDIV false_deaths=$FALSE_DEATHS files_seen=${NSEEN:-0} files_lost=${FILES_LOST:-?} fails=$IT_FAILS" >>"${CHAOS_RESULTS:-/dev/null}"
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
