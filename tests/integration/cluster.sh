#!/usr/bin/env bash
# tests/integration/cluster.sh - five real pmgclusterd daemons, each in its
# own network namespace (as root; else on 127.0.0.11..15), checked through
# `pmgcm status --output-format json` on their control sockets:
#
#   1  all five see all five alive
#   2  the text status is PMG's table: its header, one row per node, all A
#   3  kill -9 one: every survivor shows it D
#   4  start it again (same data dir): every node shows it A, nothing typed
#   5  SIGSTOP one past the suspicion timeout: the others show it D
#   6  SIGCONT it: it refutes, every node shows it A again
#   7  5000 garbage UDP datagrams at one node: its view is unchanged and
#      correct, nobody is marked suspect or dead, its status keeps answering
#   8  garbage TCP streams at the same node: the same holds
#   9  SIGTERM one: the others show it L (left, not dead)
#  10  the stopped daemon exited with status 0
#  11  every other daemon exits 0 on SIGTERM; no sanitizer report in any log
#
# Polls with deadlines (every 100 ms); never sleeps to synchronise. Cleans up
# daemons, namespaces and files even on failure. Takes well under 3 minutes.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

N=5
it_init "$N"
it_plan 11
ALL=$(it_all)

# observe_window SECONDS BG_PID "NODES": while BG_PID runs and SECONDS more,
# sample every listed node's view every 200 ms; OBS_BAD collects any member
# that is not A and every status call that failed.
observe_window() {
    local extra=$1 bg=$2 nodes=$3 end=0 i v now
    OBS_BAD=
    OBS_SAMPLES=0
    while :; do
        now=$(it_now_ms)
        if ((end == 0)) && ! kill -0 "$bg" 2>/dev/null; then
            end=$((now + extra * 1000))
        fi
        ((end != 0 && now >= end)) && break
        for i in $nodes; do
            if ! v=$(it_status "$i" 2>&1); then
                OBS_BAD+="node$i status failed: ${v:0:200}; "
                continue
            fi
            v=$(jq -r '.members? // . | .[] | select(.state != "A") | "\(.name)=\(.state)"' <<<"$v" | paste -sd, -)
            [[ -n "$v" ]] && OBS_BAD+="node$i saw $v; "
        done
        OBS_SAMPLES=$((OBS_SAMPLES + 1))
        sleep 0.2
    done
}

# ---- 1: all five see all five -------------------------------------------------
for i in $ALL; do
    it_start_node "$i" || it_diag "node$i: control socket did not answer within 10 s"
done
if it_wait_until "it_all_see_all_alive '$ALL'" 30; then
    it_ok "all $N nodes see all $N alive (${IT_WAITED} s after the last start)"
else
    it_not_ok "all $N nodes see all $N alive (gave up after ${IT_WAITED} s)"
    it_dump_views "$ALL"
    it_bail "cluster never formed; the other checks would only time out"
fi

# ---- 2: PMG's table ---------------------------------------------------------------
HDR='NAME(CID)--------------IPADDRESS----ROLE-STATE---------UPTIME---LOAD----MEM---DISK'
text=$(timeout 5 "$PMGCM" --socket "$(it_sock 2)" status 2>&1)
rows_ok=1
for i in $ALL; do
    # name(cid), then the node's IP, a role, state A
    grep -Eq "^node$i\([0-9]+\) +${IT_IP[i]//./\\.} +[^ ]+ +A( |$)" <<<"$text" || rows_ok=0
done
if [[ "$(head -n1 <<<"$text")" == "$HDR" && $(wc -l <<<"$text") -eq $((N + 1)) && $rows_ok == 1 ]]; then
    it_ok "text status on node2: PMG's header and one row per node, all A"
else
    it_not_ok "text status on node2: PMG's header and one row per node, all A"
    it_diag "$text"
fi

# ---- 3: kill -9 ------------------------------------------------------------------
V=5
SURV=$(it_others $V)
it_signal $V KILL
{ wait "${IT_PID[V]}"; } 2>/dev/null  # no "Killed" notice
if it_wait_until "it_all_show '$SURV' node$V D" 30; then
    it_ok "kill -9 node$V: every survivor shows it D after ${IT_WAITED} s"
else
    it_not_ok "kill -9 node$V: every survivor shows it D (gave up after ${IT_WAITED} s)"
    it_dump_views "$SURV"
fi

# ---- 3: restart, rejoins by itself ------------------------------------------------
it_start_node $V || it_diag "node$V: control socket did not answer within 10 s"
if it_wait_until "it_all_see_all_alive '$ALL'" 30; then
    it_ok "restart node$V (same data dir): every node shows it A after ${IT_WAITED} s"
else
    it_not_ok "restart node$V: every node shows it A (gave up after ${IT_WAITED} s)"
    it_dump_views "$ALL"
fi

# ---- 4, 5: SIGSTOP past the suspicion timeout, SIGCONT, refute ---------------------
V=4
SURV=$(it_others $V)
it_signal $V STOP
if it_wait_until "it_all_show '$SURV' node$V D" 40; then
    it_ok "SIGSTOP node$V: the others show it D after ${IT_WAITED} s"
else
    it_not_ok "SIGSTOP node$V: the others show it D (gave up after ${IT_WAITED} s)"
    it_dump_views "$SURV"
fi
it_signal $V CONT
if it_wait_until "it_all_see_all_alive '$ALL'" 30; then
    it_ok "SIGCONT node$V: it refutes, every node shows it A after ${IT_WAITED} s"
else
    it_not_ok "SIGCONT node$V: every node shows it A again (gave up after ${IT_WAITED} s)"
    it_dump_views "$ALL"
fi

# ---- 6, 7: garbage at node1 -------------------------------------------------------
T=1
# Let the cluster be all-alive everywhere before measuring disturbance.
it_wait_until "it_all_see_all_alive '$ALL'" 10 >/dev/null
before=$(it_status $T 2>/dev/null | jq -c '[.members? // . | .[] | {name, ip, state}] | sort_by(.name)')
blast() {
    if [[ $IT_MODE == netns ]]; then
        ip netns exec "$IT_BRNS" "$UDPBLAST" "$@"
    else
        "$UDPBLAST" "$@"
    fi
}
for kind in udp tcp; do
    if [[ $kind == udp ]]; then
        args=(-n 5000 -r 5000 -s $$)
        what="5000 garbage UDP datagrams"
    else
        args=(--tcp -n 50 -r 50 -s $$)
        what="50 garbage TCP streams"
    fi
    if [[ ! -x "$UDPBLAST" ]]; then
        it_not_ok "$what at node$T: $UDPBLAST not built"
        continue
    fi
    blast "${args[@]}" "${IT_IP[T]}" "$IT_PORT" >"$IT_DIR/blast-$kind.out" 2>&1 &
    bp=$!
    observe_window 5 "$bp" "$ALL"
    wait "$bp"
    brc=$?
    after=$(it_status $T 2>/dev/null | jq -c '[.members? // . | .[] | {name, ip, state}] | sort_by(.name)')
    it_diag "$(cat "$IT_DIR/blast-$kind.out")"
    if ((brc != 0)); then
        it_not_ok "$what at node$T: the blaster failed (exit $brc)"
    elif [[ -n "$OBS_BAD" ]]; then
        it_not_ok "$what at node$T: nobody marked suspect/dead, status answers"
        it_diag "seen in $OBS_SAMPLES samples: ${OBS_BAD:0:2000}"
    elif [[ -z "$after" || "$after" != "$before" ]]; then
        it_not_ok "$what at node$T: its view is unchanged"
        it_diag "before: $before"
        it_diag "after:  $after"
    else
        it_ok "$what at node$T: view unchanged, nobody marked suspect/dead in $OBS_SAMPLES samples of every node"
    fi
done

# ---- 8, 9: graceful stop ------------------------------------------------------------
V=3
SURV=$(it_others $V)
it_signal $V TERM
if it_wait_until "it_all_show '$SURV' node$V L" 20; then
    it_ok "SIGTERM node$V: the others show it L after ${IT_WAITED} s"
else
    it_not_ok "SIGTERM node$V: the others show it L (gave up after ${IT_WAITED} s)"
    it_dump_views "$SURV"
fi
it_reap $V 10
if [[ $IT_EXIT == 0 ]]; then
    it_ok "node$V exited with status 0 on SIGTERM"
else
    it_not_ok "node$V exited with status 0 on SIGTERM (got: $IT_EXIT)"
fi

# ---- 10: clean shutdown everywhere ----------------------------------------------------
bad=
for i in $SURV; do it_signal "$i" TERM; done
for i in $SURV; do
    it_reap "$i" 10
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" $ALL
it_diag "took $(($(date +%s) - IT_T0)) s"
exit 0
