#!/usr/bin/env bash
# tests/integration/panel.sh - the cluster panel (GET / on the status port,
# daemon/panel.h) in a real browser: Debian's headless Chromium, driven by
# chromedriver through python3-selenium (tests/integration/panel.py), one
# page kept open while the cluster changes under it. Three pmgclusterd
# daemons formed with create/join (no store); the browser runs in the
# bridge's namespace (as root; else everything is on 127.0.x.y loopback
# addresses), the one place that reaches every node.
#
#   1  the panel's answers: GET / text/html, /panel.js and /panel.css with
#      their types, a strict Content-Security-Policy (no inline code) and
#      nosniff on each; HEAD / without a body; OPTIONS / (HAProxy's check)
#      still readiness
#   2  node2's page in Chromium shows the three nodes, all A, node1 master,
#      and no join line (node2 is not the master)
#   3  node1's page shows the join line, exactly what `pmgcm join-cmd`
#      prints on node1
#   4  screenshots: desktop (1280 wide) and phone (390x844) of node2's page
#      kept in the build dir (tests/integration/panel-*.png); at phone width
#      nothing is wider than the screen
#   5  kill -9 node1 (the master): node2's open page shows it D with its
#      reason ("ERROR: unreachable ...") within the detection time (from the
#      gossip settings) plus one refresh, and no later than one refresh
#      (plus slack for a loaded machine) after node2's own /status said so
#   6  pmgcm promote on node2: the same page shows node2 as master and now
#      the join line (node2's), and the timeline lists node1 dead and
#      node2 promoted
#   7  pmgcm delete 1 (node1, dead) on node2: the row goes, the timeline
#      shows deleted and key rotated; SIGTERM node3: L with its reason and
#      a left event (screenshots panel-promoted.png, panel-wall.png at
#      2560x1440)
#   8  the same page files served with a recorded /status of a cluster
#      with a store (node names no node may have: <img onerror>, quotes,
#      <script>): the replication table, this node's snapshot progress,
#      the lag chart; every name shown as text, no element made from data;
#      screenshots panel-replication*.png
#   9  the browser's console holds no error (a CSP violation or a script
#      error would be one) other than the missing favicon
#  10  every daemon exits 0 on SIGTERM; no sanitizer report in any log
#
# Needs chromium, chromium-driver, python3-selenium, curl, jq: installed by
# scripts/deps.sh, never by this test; skipped (TAP SKIP, saying what is
# missing) without them. Polls with deadlines derived from the gossip
# settings and the page's refresh; cleans up even on failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-600}
. "$here/lib.sh"

for t in curl jq; do
    if ! command -v "$t" >/dev/null; then
        echo "1..0 # SKIP $t not installed (bash scripts/deps.sh)"
        exit 0
    fi
done
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver || echo /usr/bin/chromedriver)}
if [[ -z "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
    echo "1..0 # SKIP no browser: Debian's chromium and chromium-driver are not installed (bash scripts/deps.sh installs them)"
    exit 0
fi
# python3-selenium is Debian's: the python3 first in PATH may be another one
PY=
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import selenium' 2>/dev/null; then
        PY=$(command -v "$p")
        break
    fi
done
if [[ -z "$PY" ]]; then
    echo "1..0 # SKIP python3-selenium is not installed (bash scripts/deps.sh installs it)"
    exit 0
fi
export CHROMIUM CHROMEDRIVER

it_init 3
if [[ $IT_MODE == loopback ]]; then
    # our own /24 on loopback, away from the other tests
    net=127.0.$((150 + $$ % 50))
    for i in 1 2 3; do IT_IP[i]=$net.$((10 + i)); done
fi
it_plan 10
SP=7948 # the daemons' default status port
PW=$IT_DIR/join.pw
printf 'panel test password\n' >"$PW"
chmod 600 "$PW"
ART=${abs_top_builddir:-$PWD}/tests/integration
mkdir -p "$ART"

# The gossip defaults (README, "How failure detection works"): a quiet
# probe interval, a failed probe and its verification (2 x 250 ms), then
# the suspicion timeout at its largest (suspicion_max_mult x suspicion_mult
# x probe_interval_ms, N <= 10); the page polls every REFRESH_MS.
PROBE_QUIET_MS=600 PROBE_MS=200 PROBE_LEN_MS=250 SUSP_MULT=3 SUSP_MAX_MULT=6
REFRESH_MS=2000
DETECT_MS=$((PROBE_QUIET_MS + 2 * PROBE_LEN_MS + SUSP_MAX_MULT * SUSP_MULT * PROBE_MS))
# what a loaded machine (2 cores, ASan, other tests) adds: the deadline is
# generous, the ordering check (page vs /status) is the tight one
LOAD_FACTOR=${PANEL_LOAD_FACTOR:-4}
DEAD_DEADLINE_S=$(( (LOAD_FACTOR * (DETECT_MS + REFRESH_MS) + 999) / 1000 ))
PAGE_SLACK_MS=$((REFRESH_MS + 3000))

br() {
    if [[ $IT_MODE == netns ]]; then
        ip netns exec "$IT_BRNS" "$@"
    else
        "$@"
    fi
}

# ---- the browser: one driver process, JSON lines both ways ---------------------
DRV_PID=
drv_stop() {
    if [[ -n "${DRV_PID:-}" ]] && kill -0 "$DRV_PID" 2>/dev/null; then
        echo '{"cmd":"quit"}' >&"${DRV[1]:-}" 2>/dev/null
        it_wait_until "! kill -0 $DRV_PID 2>/dev/null" 10 >/dev/null 2>&1 ||
            kill -KILL "$DRV_PID" 2>/dev/null
    fi
    DRV_PID=
}
trap 'rc=$?; drv_stop; (exit $rc); it_cleanup' EXIT

# drv JSON TIMEOUT_S: one command; its answer in DRV_OUT; 0 when "ok"
drv() {
    DRV_OUT=
    [[ -n "${DRV_PID:-}" ]] || return 1
    printf '%s\n' "$1" >&"${DRV[1]:-}" || return 1
    IFS= read -r -t "$2" DRV_OUT <&"${DRV[0]:-}" || { DRV_OUT="(no answer in $2 s)"; return 1; }
    jq -e '.ok == true' <<<"$DRV_OUT" >/dev/null 2>&1
}
drv_diag() {
    it_diag "driver: $(jq -c '{ok, error, waited_ms, status_ms, conn, rows: [.rows[]? | [.name, .state, .role, .reason] | join("|")], join, events: [.events[]? | .text]}' <<<"$DRV_OUT" 2>/dev/null || echo "$DRV_OUT")"
    [[ -s "$IT_DIR/driver.err" ]] && it_diag "driver stderr: $(tail -n 5 "$IT_DIR/driver.err")"
}

STOP_BAD=
stop_node() {
    it_alive_pid "$1" || return 0
    it_signal "$1" TERM
    it_reap "$1" 10
    [[ $IT_EXIT == 0 ]] || STOP_BAD+="node$1 exit $IT_EXIT; "
}

URL1=http://${IT_IP[1]}:$SP
URL2=http://${IT_IP[2]}:$SP

# ---- the cluster -------------------------------------------------------------------
for i in 1 2 3; do
    it_write_config_lc "$i" "node$i"
    it_start_node "$i" || it_bail "node$i: control socket did not answer within 10 s"
done
it_pmgcm 1 create --password-file "$PW" >/dev/null 2>&1
FP=$(it_fingerprint_of 1)
for i in 2 3; do
    out=$(it_pmgcm "$i" join "${IT_IP[1]}" --fingerprint "$FP" --password-file "$PW" 2>&1) ||
        it_diag "node$i join: $out"
done
it_wait_until "it_all_see_all_alive '1 2 3'" 30 || { it_dump_views "1 2 3"; it_bail "no cluster"; }
it_diag "cluster of 3 formed; detection deadline ${DEAD_DEADLINE_S} s (detect ${DETECT_MS} ms + refresh ${REFRESH_MS} ms, x${LOAD_FACTOR})"

# ==== 1: the answers ===========================================================================
# hdr I PATH [CURL ARGS]: status line and headers of node I's answer
hdr() { local i=$1 p=$2; shift 2; br curl -s -o /dev/null -D - --max-time 5 "$@" "http://${IT_IP[i]}:$SP$p" | tr -d '\r'; }
bad=
h=$(hdr 2 /)
body=$(br curl -s --max-time 5 "$URL2/")
csp="Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
grep -q '^HTTP/1.1 200 ' <<<"$h" || bad+="GET / not 200; "
grep -qi '^Content-Type: text/html; charset=utf-8$' <<<"$h" || bad+="GET / type; "
grep -qF "$csp" <<<"$h" || bad+="GET / CSP; "
grep -qi '^X-Content-Type-Options: nosniff$' <<<"$h" || bad+="GET / nosniff; "
grep -q '<script src="/panel.js" defer></script>' <<<"$body" || bad+="page does not load /panel.js; "
grep -Eq '<script>|<style>| style=| on[a-z]+=' <<<"$body" && bad+="inline script or style in the page; "
for f in panel.js:text/javascript panel.css:text/css; do
    hh=$(hdr 2 "/${f%%:*}")
    { grep -q '^HTTP/1.1 200 ' <<<"$hh" && grep -qi "^Content-Type: ${f#*:}; charset=utf-8\$" <<<"$hh" &&
        grep -qF "$csp" <<<"$hh" && grep -qi '^X-Content-Type-Options: nosniff$' <<<"$hh"; } ||
        bad+="/${f%%:*}: $(head -n1 <<<"$hh") $(grep -i '^content-type' <<<"$hh"); "
done
br curl -s --max-time 5 "$URL2/panel.js" | grep -q innerHTML && bad+="panel.js uses innerHTML; "
hh=$(hdr 2 / -I)
[[ $(br curl -s -I --max-time 5 "$URL2/" | wc -c) -lt 2000 ]] || bad+="HEAD / carries a body; "
grep -q '^HTTP/1.1 200 ' <<<"$hh" || bad+="HEAD / $(head -n1 <<<"$hh"); "
ready=$(br curl -s --max-time 5 -X OPTIONS --http1.0 "$URL2/")
[[ "$ready" == ok ]] || bad+="OPTIONS / answered '$ready', not readiness; "
if [[ -z "$bad" ]]; then
    it_ok "GET / text/html, /panel.js and /panel.css typed, each with the strict CSP and nosniff; no inline code; HEAD / no body; OPTIONS / still readiness ('ok')"
else
    it_not_ok "the panel's answers: $bad"
    it_diag "$h"
fi

# ==== the browser ===================================================================
# exec: the coprocess is the driver itself (DRV_PID its pid); Chromium's
# profile goes under the test's temp dir
export PANEL_TMP=$IT_DIR
if [[ $IT_MODE == netns ]]; then
    coproc DRV { exec ip netns exec "$IT_BRNS" "$PY" "$here/panel.py" 2>"$IT_DIR/driver.err"; }
else
    coproc DRV { exec "$PY" "$here/panel.py" 2>"$IT_DIR/driver.err"; }
fi
IFS= read -r -t 60 DRV_OUT <&"${DRV[0]:-}" || DRV_OUT=
if ! jq -e '.ready == true' <<<"$DRV_OUT" >/dev/null 2>&1; then
    it_diag "driver did not start: $DRV_OUT $(tail -n 20 "$IT_DIR/driver.err")"
    it_bail "headless Chromium did not start (chromium and chromedriver are installed)"
fi
it_diag "Chromium $(jq -r .browser <<<"$DRV_OUT") headless via chromedriver, python3-selenium ($PY)"

# ==== 2: node2's page shows the three nodes =====================================================
if drv "{\"cmd\":\"open\",\"url\":\"$URL2/\"}" 40 &&
    drv '{"cmd":"wait","what":"count","n":3,"deadline":20}' 30 &&
    jq -e '[.rows[] | .name] == ["node1","node2","node3"] and
           ([.rows[] | select(.role == "master") | .name] == ["node1"]) and .join == null and
           (.rows[0].cells[3] | length > 0)' <<<"$DRV_OUT" >/dev/null; then
    it_ok "node2's page in Chromium: node1, node2, node3 all A, node1 master, no join line on a non-master ($(jq -r '.rows | map(.cells | join(" ")) | join("; ")' <<<"$DRV_OUT"))"
else
    it_not_ok "node2's page shows three nodes, all A"
    drv_diag
fi

# ==== 3: the join line, on the master only =======================================================
want=$(it_pmgcm 1 join-cmd 2>/dev/null | grep '^pmgcm join ' | head -n1)
DRV2_OUT=
if [[ -n "$want" ]] && drv "{\"cmd\":\"open\",\"url\":\"$URL1/\"}" 40 &&
    drv '{"cmd":"wait","what":"join","shown":true,"deadline":10}' 20 &&
    [[ "$(jq -r .join <<<"$DRV_OUT")" == "$want" ]]; then
    it_ok "node1's (the master's) page shows the join line, as join-cmd prints it: '$want'"
else
    it_not_ok "node1's page shows the join line '$want'"
    drv_diag
fi

# ==== 4: screenshots =============================================================================
bad=
drv "{\"cmd\":\"open\",\"url\":\"$URL2/\"}" 40 || bad+="reopen node2's page; "
drv '{"cmd":"wait","what":"count","n":3,"deadline":20}' 30 || bad+="3 rows; "
drv "{\"cmd\":\"shot\",\"path\":\"$ART/panel-desktop.png\",\"width\":1280,\"height\":900}" 30 || bad+="desktop shot: $DRV_OUT; "
drv "{\"cmd\":\"shot\",\"path\":\"$ART/panel-phone.png\",\"width\":390,\"height\":844,\"mobile\":true}" 30 || bad+="phone shot: $DRV_OUT; "
ovf=$(jq -r '.overflow_x // "?"' <<<"$DRV_OUT")
[[ "$ovf" == 0 ]] || bad+="at 390 px the page is $ovf px wider than the screen; "
for f in panel-desktop.png panel-phone.png; do
    [[ $(head -c 8 "$ART/$f" 2>/dev/null | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] || bad+="$f is no PNG; "
done
if [[ -z "$bad" ]]; then
    it_ok "screenshots kept: $ART/panel-desktop.png (1280 wide), $ART/panel-phone.png (390x844, nothing wider than the screen)"
else
    it_not_ok "screenshots: $bad"
fi

# ==== 5: kill -9 the master: the open page shows it D, with its reason =============================
it_signal 1 KILL
{ wait "${IT_PID[1]}"; } 2>/dev/null
t_kill=$(it_now_ms)
if drv "{\"cmd\":\"wait\",\"what\":\"state\",\"name\":\"node1\",\"state\":\"D\",\"reason\":\"ERROR: unreachable\",\"deadline\":$DEAD_DEADLINE_S,\"status\":\"$URL2/status\"}" $((DEAD_DEADLINE_S + 20)); then
    page_ms=$(jq -r .waited_ms <<<"$DRV_OUT")
    st_ms=$(jq -r '.status_ms // empty' <<<"$DRV_OUT")
    reason=$(jq -r '.rows[] | select(.name == "node1") | .reason' <<<"$DRV_OUT")
    if [[ -n "$st_ms" ]] && ((page_ms - st_ms <= PAGE_SLACK_MS)); then
        it_ok "kill -9 node1: node2's open page shows it D '$reason' $(it_fmt_ms "$page_ms") s later (deadline $DEAD_DEADLINE_S s); node2's /status said D at $(it_fmt_ms "$st_ms") s: the page followed within $(it_fmt_ms $((page_ms - st_ms))) s (refresh $(it_fmt_ms $REFRESH_MS) s)"
    else
        it_not_ok "kill -9 node1: the page followed /status within one refresh (page $page_ms ms, /status ${st_ms:-never} ms, slack $PAGE_SLACK_MS ms)"
        drv_diag
    fi
else
    it_not_ok "kill -9 node1: node2's page shows it D with its reason within $DEAD_DEADLINE_S s"
    drv_diag
    it_dump_views "2 3"
fi

# ==== 6: promote node2: the page shows the new master =================================================
out=$(it_pmgcm 2 promote 2>&1) || it_diag "promote: $out"
if drv '{"cmd":"wait","what":"master","name":"node2","deadline":20}' 30 &&
    drv '{"cmd":"wait","what":"join","shown":true,"deadline":10}' 20 &&
    jq -e --arg ip "${IT_IP[2]}" '(.join | startswith("pmgcm join " + $ip + " --fingerprint ")) and
        ([.events[] | select(.kind == "dead" and (.text | contains("node1")))] | length > 0) and
        ([.events[] | select(.kind == "promoted" and (.text | contains("node2")))] | length > 0)' <<<"$DRV_OUT" >/dev/null; then
    it_ok "pmgcm promote on node2: its page shows node2 master, node1 $(jq -r '.rows[] | select(.name == "node1") | .state + " " + .role' <<<"$DRV_OUT"), the join line '$(jq -r .join <<<"$DRV_OUT")', and the timeline: $(jq -r '[.events[] | .text] | .[0:4] | join(" / ")' <<<"$DRV_OUT")"
else
    it_not_ok "pmgcm promote on node2: the page shows the new master, its join line and the events"
    it_diag "promote: $out"
    drv_diag
fi

# ==== 7: delete the dead node1 (the key rotates), stop node3 (it leaves) ============================
out=$(it_pmgcm 2 delete 1 2>&1) || it_diag "delete 1: $out"
if drv '{"cmd":"wait","what":"gone","name":"node1","deadline":30}' 40 &&
    drv '{"cmd":"wait","what":"event","kind":"key rotated","name":"","deadline":30}' 40 &&
    jq -e '([.events[] | select(.kind == "deleted" and (.text | contains("node1")))] | length > 0)' <<<"$DRV_OUT" >/dev/null; then
    ok7="pmgcm delete 1 on node2: node1's row gone, events deleted and key rotated ($(jq -r '[.events[] | select(.kind == "deleted" or .kind == "key rotated") | .text] | join(" / ")' <<<"$DRV_OUT"))"
else
    ok7=
    it_diag "delete: $out"
    drv_diag
fi
stop_node 3
if [[ -n "$ok7" ]] &&
    drv '{"cmd":"wait","what":"state","name":"node3","state":"L","reason":"left","deadline":20}' 30 &&
    drv '{"cmd":"wait","what":"event","kind":"left","name":"node3","deadline":10}' 20; then
    it_ok "$ok7; SIGTERM node3: L '$(jq -r '.rows[] | select(.name == "node3") | .reason' <<<"$DRV_OUT")' and a left event"
else
    it_not_ok "delete shown (row gone, deleted + key rotated events), a stopped node3 shown L with a left event"
    drv_diag
fi
drv "{\"cmd\":\"shot\",\"path\":\"$ART/panel-promoted.png\",\"width\":1280,\"height\":900}" 30 ||
    it_diag "screenshot after the promote: $DRV_OUT"
drv "{\"cmd\":\"shot\",\"path\":\"$ART/panel-wall.png\",\"width\":2560,\"height\":1440}" 30 ||
    it_diag "wall screen screenshot: $DRV_OUT"

# ==== 8: replication and hostile names, from a recorded /status ===========================
# The same page files (saved from node2, served with node2's headers) and a
# /status as a node with a store sees it, with names no node may carry
# ([A-Za-z0-9._-] only) but a page must never run: the replication table,
# the snapshot progress, the lag chart; every name shown as text.
FAKE=$IT_DIR/fake
mkdir -p "$FAKE"
br curl -s --max-time 5 -o "$FAKE/index.html" "$URL2/"
br curl -s --max-time 5 -o "$FAKE/panel.css" "$URL2/panel.css"
br curl -s --max-time 5 -o "$FAKE/panel.js" "$URL2/panel.js"
PANEL_HEADERS=$(hdr 2 / | grep -Ei '^(Content-Security-Policy|X-Content-Type-Options|X-Frame-Options|Referrer-Policy):')
export PANEL_HEADERS
EVIL1='<img src=x onerror="document.title='"'"'pwned'"'"'">'
EVIL2=$'q"uo\'te & <b>bold</b>'
EVIL3="<script>document.title='pwned'</script>"
jq -n --arg e1 "$EVIL1" --arg e2 "$EVIL2" --arg e3 "$EVIL3" '
  def db($st; $seq; $lag; $div; $why): {state: $st, reason: $why, kept: {backups: 0, divergence: $div},
      epoch: 2, seq: $seq, lag_changes: $lag, lag_seconds: 0,
      origins: [{cid: 1, seq: $seq, behind: $lag}, {cid: 2, seq: 40, behind: 3}]};
  {ok: true, node: $e2, id: "ab", time: 0, ready: false, draining: false,
   members: [
    {name: $e1, cid: 1, ip: "10.0.0.1", role: "master", state: "A", uptime: 93784, load: 0.5, mem: 40, disk: 17,
     id: "a1", gossip_state: "alive", port: 7946, self: false, reason: "", last_seen: null,
     db: db("in-sync"; 120000; 0; 0; "")},
    {name: $e2, cid: 2, ip: "10.0.0.2", role: "node", state: "S", uptime: 120, load: 1.25, mem: 35, disk: 18,
     id: "a2", gossip_state: "alive", port: 7946, self: true, reason: "loading a snapshot: 43 %", last_seen: null,
     db: db("loading"; 0; 120000; 20003; "loading a snapshot: 43 %")},
    {name: "node3", cid: 3, ip: "10.0.0.3", role: "node", state: "D", uptime: null, load: null, mem: null, disk: null,
     id: "a3", gossip_state: "dead", port: 7946, self: false, reason: "ERROR: unreachable (dead); last seen 2m13s ago",
     last_seen: 133, db: db("in-sync"; 119000; 1000; 0; "")}],
   cluster: {cluster_id: "0123456789abcdef0123456789abcdef", epoch: 2, version: 7, master_cid: 1},
   store: {state: "loading", snapshot: {rows: 43000, bytes: 1, est_rows: 100000, est_bytes: 2, tables: 12, tables_done: 5, elapsed_ms: 61000}},
   events: [{seq: 1, time: 1764670000, kind: "dead", name: $e3, cid: 3, detail: "was suspect"},
            {seq: 2, time: 1764670060, kind: "key rotated", name: "", cid: 0, detail: $e1}]}' >"$FAKE/status.json"
# netns: loopback of the bridge's namespace (this run's own); loopback
# mode: an address of this run's own /24, next to the nodes'
FPORT=$SP
if [[ $IT_MODE == netns ]]; then
    FHOST=127.0.0.1
    ip netns exec "$IT_BRNS" "$PY" "$here/panel.py" serve "$FHOST" "$FPORT" "$FAKE" 2>"$IT_DIR/fake.err" &
else
    FHOST=$net.20
    "$PY" "$here/panel.py" serve "$FHOST" "$FPORT" "$FAKE" 2>"$IT_DIR/fake.err" &
fi
FAKE_PID=$!
it_wait_until "br curl -sf --max-time 2 -o /dev/null http://$FHOST:$FPORT/status" 10 >/dev/null 2>&1
bad=
if drv "{\"cmd\":\"open\",\"url\":\"http://$FHOST:$FPORT/\"}" 40 &&
    drv '{"cmd":"wait","what":"repl","n":3,"deadline":20}' 30; then
    title=
    jq -e --arg e1 "$EVIL1" --arg e2 "$EVIL2" '[.rows[] | .name] == [$e1, $e2, "node3"]' <<<"$DRV_OUT" >/dev/null || bad+="names not shown as text; "
    jq -e '.markup == 0' <<<"$DRV_OUT" >/dev/null || bad+="markup from data in the page; "
    jq -e --arg e3 "$EVIL3" '[.events[] | select(.text | contains($e3))] | length == 1' <<<"$DRV_OUT" >/dev/null || bad+="event name not shown as text; "
    jq -e '.snapshot | startswith("43000 of ~100000 rows, 5 of 12 tables")' <<<"$DRV_OUT" >/dev/null || bad+="snapshot progress '$(jq -r .snapshot <<<"$DRV_OUT")'; "
    jq -e '.repl[1] | .[1] == "loading" and .[3] == "120000" and .[6] == "20003" and (.[5] | contains("cid 1: 120000 behind"))' <<<"$DRV_OUT" >/dev/null || bad+="replication row $(jq -c '.repl[1]' <<<"$DRV_OUT"); "
    # the chart keeps what the page saw: wait for a few samples
    drv '{"cmd":"wait","what":"repl","n":3,"points":4,"deadline":20}' 30 || bad+="chart: $(jq -c '{chart_lines, chart_points}' <<<"$DRV_OUT"); "
    drv "{\"cmd\":\"shot\",\"path\":\"$ART/panel-replication.png\",\"width\":1280,\"height\":900}" 30 || bad+="shot; "
    drv "{\"cmd\":\"shot\",\"path\":\"$ART/panel-replication-phone.png\",\"width\":390,\"height\":844,\"mobile\":true}" 30 || bad+="phone shot; "
    [[ $(jq -r .overflow_x <<<"$DRV_OUT") == 0 ]] || bad+="wider than a phone: $(jq -r .overflow_x <<<"$DRV_OUT") px; "
    drv '{"cmd":"rows"}' 10 && jq -e '.conn | startswith("live")' <<<"$DRV_OUT" >/dev/null || bad+="not live: $(jq -r .conn <<<"$DRV_OUT"); "
else
    bad+="page: $DRV_OUT; "
fi
kill "$FAKE_PID" 2>/dev/null
wait "$FAKE_PID" 2>/dev/null
if [[ -z "$bad" ]]; then
    it_ok "a recorded /status with a store and hostile names: replication rows (state, epoch:seq, lag, per origin, 20003 divergence records), snapshot progress, 3 lag lines; <img onerror>, quotes and <script> names shown as text, no element made from data (screenshots panel-replication*.png)"
else
    it_not_ok "replication view and hostile names: $bad"
    drv_diag
fi

# ==== 9: the console =======================================================================================
if drv '{"cmd":"console"}' 20; then
    # (point 8's recorded-status server is stopped while its page still
    # polls it: a refused or reset poll of that server is the test's doing)
    errs=$(jq -c --arg fake "http://$FHOST:$FPORT/status - Failed to load resource: net::ERR_CONNECTION_" \
        '[.log[] | select(.level == "SEVERE" and (.message | test("favicon.ico") | not) and (.message | startswith($fake) | not)) | .message]' <<<"$DRV_OUT")
    if [[ "$errs" == "[]" ]]; then
        it_ok "the browser's console holds no error (no CSP violation, no script error; $(jq '.log | length' <<<"$DRV_OUT") entries)"
    else
        it_not_ok "the browser's console holds errors: $errs"
    fi
else
    it_not_ok "the browser's console could not be read"
    drv_diag
fi
drv_stop

# ==== 10: shutdown ============================================================================================
stop_node 2
it_report_shutdown "$STOP_BAD" 1 2 3
