#!/usr/bin/env bash
# tests/integration/reload.sh - SIGHUP reloads the configuration of a
# running pmgclusterd (two nodes in a cluster formed by key and peers):
#
#   - live keys take effect at once: status_access = token (/status 401
#     without the token, 200 with it), a new token in the same file,
#     log_level = debug (debug lines appear), log_format = json (every
#     line after it is a JSON object);
#   - a key that needs a restart (agent_port, probe_interval_ms) is named
#     in a warning with old and new value; the daemon keeps serving on
#     its old values (the old agent port answers, the new one is closed)
#     and the cluster stays formed;
#   - a broken file (unknown key, then an unreadable token) is refused
#     naming the file and line; nothing changes, the daemon keeps running;
#   - a file with no change says so; systemd hears RELOADING=1 with
#     MONOTONIC_USEC, then READY=1, for every reload;
#   - --check-config: exit 1 naming the line, 0 once fixed;
#   - both daemons exit 0 on SIGTERM, no sanitizer report in their logs.
#
# Everything waits on a condition with a deadline (it_wait_until).
. "$(dirname "$0")/lib.sh"

it_init 2
it_plan 13

SP=7948 AP=7949          # the daemons' default status and agent ports
NEW_AP=7959              # the agent port the reloaded file asks for

# run a command where node I's clients are: the bridge namespace (a
# remote client) in netns mode, anywhere in loopback mode
br() {
    if [[ $IT_MODE == netns ]]; then
        ip netns exec "$IT_BRNS" "$@"
    else
        "$@"
    fi
}
# http_code I PATH [curl args...]: the status code of GET PATH on node I
http_code() {
    local i=$1 path=$2
    shift 2
    br curl -s -o /dev/null --max-time 3 -w '%{http_code}' "$@" \
        "http://${IT_IP[i]}:$SP$path" 2>/dev/null
}
# agent_line I PORT: what node I's agent port PORT says (empty if closed)
agent_line() {
    br timeout 3 bash -c "exec 3<>/dev/tcp/${IT_IP[$1]}/$2 && cat <&3" 2>/dev/null
}

# the notify socket, as systemd's: one line per datagram ('|' for '\n')
NSOCK=$IT_DIR/notify.sock
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a") as f:
    while True:
        d = s.recv(4096)
        f.write(d.decode(errors="replace").replace("\n", "|") + "\n")
        f.flush()
' "$NSOCK" "$IT_DIR/notify.log" &
NOTIFY_PID=$!
# the daemons stop first (STOPPING=1 still has a listener), then it
stop_all() {
    local i
    for i in 1 2; do it_alive_pid "$i" && kill -TERM "${IT_PID[i]}"; done
    it_wait_until '! it_alive_pid 1 && ! it_alive_pid 2' 5 >/dev/null 2>&1
    kill "$NOTIFY_PID" 2>/dev/null
}
trap 'rc=$?; stop_all; (exit $rc); it_cleanup' EXIT
it_wait_until "[[ -S '$NSOCK' ]]" 10 || it_bail "the notify listener did not start"
: >"$IT_DIR/notify.log"

it_write_config 1
it_write_config 2
CONF=$IT_DIR/node1.conf
LOG=$(it_log 1)
NOTIFY_SOCKET=$NSOCK it_start_node 1 || it_bail "node1 did not start"
it_start_node 2 || it_bail "node2 did not start"
it_wait_until 'it_all_see_all_alive "1 2"' 30 || it_bail "no cluster of 2"
it_wait_until "[[ \$(http_code 1 /status) == 200 ]]" 10 ||
    it_bail "node1's /status: $(http_code 1 /status)"
it_wait_until "grep -q '^READY=1' '$IT_DIR/notify.log'" 10 || it_bail "no READY=1"

# set_key KEY VALUE: KEY's line in node1's config says VALUE now (added
# at the end if the file has none)
set_key() {
    if grep -q "^$1 = " "$CONF"; then
        sed -i "s|^$1 = .*|$1 = $2|" "$CONF"
    else
        echo "$1 = $2" >>"$CONF"
    fi
}
# mark: where node1's log and the notify log stand before a SIGHUP
mark() { LOG0=$(wc -l <"$LOG"); NOTE0=$(wc -l <"$IT_DIR/notify.log"); }
# since: node1's log lines after the mark
since() { tail -n +"$((LOG0 + 1))" "$LOG"; }
# reloaded: the reload after the mark has ended: systemd heard READY=1
# after RELOADING=1 (the daemon logs what it did before it says so)
reloaded() {
    tail -n +"$((NOTE0 + 1))" "$IT_DIR/notify.log" | grep -q '^READY=1'
}
hup() { mark; it_signal 1 HUP; it_wait_until reloaded 20; }
token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---- 1: live keys -------------------------------------------------------------
TOK1=$(token)
(umask 077; echo "$TOK1" >"$IT_DIR/status.token")
set_key status_access token
set_key status_token_file "$IT_DIR/status.token"
set_key log_level debug
if hup; then
    it_ok "SIGHUP with three live keys changed: reload done in $IT_WAITED s"
else
    it_not_ok "SIGHUP: no end of the reload in the log within 20 s"
    it_diag "$(since | tail -n 5)"
fi
applied=$(since | grep -o 'reload: applied.*' | head -n1)
c_none=$(http_code 1 /status)
c_tok=$(http_code 1 /status -H "Authorization: Bearer $TOK1")
c_live=$(http_code 1 /livez)
if [[ $applied == *"log_level (info -> debug)"* && $applied == *"status_access (open -> token)"* &&
      $applied == *status_token_file* && $c_none == 401 && $c_tok == 200 && $c_live == 200 ]] &&
    it_wait_until "since | grep -q ' debug '" 10; then
    it_ok "applied at once: '$applied'; /status 401 without the token, 200 with it; /livez $c_live (always open); debug lines logged"
else
    it_not_ok "live keys: applied '$applied', /status $c_none without, $c_tok with the token, /livez $c_live, debug lines: $(since | grep -c ' debug ')"
fi

# status_access = local: a client elsewhere gets 403, one on the node's
# own host 200 (only netns mode has a client that is not local)
set_key status_access local
hup
if [[ $IT_MODE == netns ]]; then
    c_remote=$(http_code 1 /status)
    c_local=$(ip netns exec "${IT_NS[1]}" curl -s -o /dev/null --max-time 3 -w '%{http_code}' \
        "http://${IT_IP[1]}:$SP/status" 2>/dev/null)
    if since | grep -q 'reload: applied status_access (token -> local)' &&
        [[ $c_remote == 403 && $c_local == 200 ]]; then
        it_ok "status_access token -> local by SIGHUP: /status from the bridge 403, from the node's host 200"
    else
        it_not_ok "status_access local: remote $c_remote, local $c_local; $(since | grep reload)"
    fi
else
    it_ok "# SKIP status_access = local needs a remote client (netns mode)"
fi
set_key status_access token
hup

# ---- 2: a new token in the same file --------------------------------------------
TOK2=$(token)
(umask 077; echo "$TOK2" >"$IT_DIR/status.token")
hup
c_old=$(http_code 1 /status -H "Authorization: Bearer $TOK1")
c_new=$(http_code 1 /status -H "Authorization: Bearer $TOK2")
if since | grep -q "reload: the status token from $IT_DIR/status.token is in use" &&
    [[ $c_old == 401 && $c_new == 200 ]]; then
    it_ok "the token file rewritten, SIGHUP: the old token 401, the new one 200"
else
    it_not_ok "token rotation: old $c_old, new $c_new; log: $(since | grep 'reload' | tail -n 3)"
fi

# ---- 3: keys that need a restart ---------------------------------------------------
old_agent=$(agent_line 1 $AP)
set_key agent_port $NEW_AP
set_key probe_interval_ms 300
hup
warn=$(since | grep -o 'warn config: reload: .*' | head -n1)
new_agent=$(agent_line 1 $NEW_AP)
now_agent=$(agent_line 1 $AP)
if [[ $warn == *"agent_port ($AP -> $NEW_AP)"* && $warn == *"probe_interval_ms (200 -> 300)"* &&
      $warn == *"they need a restart"* && -n $now_agent && -z $new_agent ]]; then
    it_ok "restart-only keys named: '$warn'; the agent port still answers on $AP ('$now_agent'), nothing on $NEW_AP"
else
    it_not_ok "restart keys: warn '$warn'; agent on $AP '$now_agent' (before '$old_agent'), on $NEW_AP '$new_agent'"
fi
if it_alive_pid 1 && it_wait_until 'it_all_see_all_alive "1 2"' 10 &&
    [[ $(http_code 1 /livez) == 200 && $(http_code 1 /status -H "Authorization: Bearer $TOK2") == 200 ]]; then
    it_ok "still serving on the old values: both nodes alive in both views, /livez 200, /status 200 with the token"
else
    it_not_ok "after the restart-only change: alive $(it_alive_pid 1 && echo yes || echo no), views: $(it_dump_views "1 2")"
fi
# the same file again: the restart keys are named again, nothing applied
hup
if since | grep -q 'warn config: reload: .*agent_port.*they need a restart' &&
    ! since | grep -q 'reload: applied'; then
    it_ok "a second SIGHUP on the same file names the pending restart keys again and applies nothing"
else
    it_not_ok "second SIGHUP: $(since | grep reload | tail -n 3)"
fi

# ---- 4: a broken file --------------------------------------------------------------
cp "$CONF" "$IT_DIR/node1.conf.good"
echo "colour = blue" >>"$CONF"
line=$(wc -l <"$CONF")
hup
err=$(since | grep -o 'error config: reload: .*' | head -n1)
if [[ $err == "error config: reload: $CONF:$line: unknown key 'colour'; still running with the previous configuration" ]] &&
    it_alive_pid 1 && [[ $(http_code 1 /status -H "Authorization: Bearer $TOK2") == 200 &&
                         $(http_code 1 /status) == 401 ]] && it_status 1 >/dev/null; then
    it_ok "a broken file: '$err'; the token rule still holds, the control socket answers"
else
    it_not_ok "broken file: '$err' (want line $line); alive $(it_alive_pid 1 && echo yes || echo no)"
fi
out=$("$PMGCLUSTERD" --check-config "$CONF" 2>&1); rc=$?
cp "$IT_DIR/node1.conf.good" "$CONF"
out2=$("$PMGCLUSTERD" --check-config "$CONF" 2>&1); rc2=$?
if ((rc == 1 && rc2 == 0)) && [[ $out == *"$CONF:$line: unknown key 'colour'"* && $out2 == "$CONF: ok" ]]; then
    it_ok "--check-config: exit 1 and '$out'; once fixed exit 0 '$out2'"
else
    it_not_ok "--check-config: $rc '$out', fixed: $rc2 '$out2'"
fi
# a token the daemon cannot read: the whole reload is refused
chmod 0644 "$IT_DIR/status.token"
set_key log_level info
hup
err=$(since | grep -o 'error config: reload: .*' | head -n1)
if [[ $err == *"status_token_file $IT_DIR/status.token is readable by everyone"*"still running with the previous configuration" ]] &&
    ! since | grep -q 'reload: applied' &&
    [[ $(http_code 1 /status -H "Authorization: Bearer $TOK2") == 200 ]] &&
    it_wait_until "since | grep -q ' debug '" 10; then
    it_ok "a token file readable by everyone: '$err'; log_level stays debug, the token still works"
else
    it_not_ok "unreadable token: '$err'; $(since | grep reload | tail -n 3)"
fi
chmod 0600 "$IT_DIR/status.token"

# ---- 5: json logs, no change, sd_notify ---------------------------------------------
set_key log_level debug
set_key log_format json
# the restart-only keys back to their running values: no change pending
set_key agent_port $AP
set_key probe_interval_ms 200
hup
mark
it_signal 1 HUP
# every line after the switch is one JSON object with the four fields
json_ok() {
    local l n=0
    while IFS= read -r l; do
        jq -e 'type == "object" and (.time | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\\.[0-9]{3}Z$")) and
               (.level | IN("error", "warn", "info", "debug")) and (.subsystem | type == "string") and
               (.message | type == "string") and length == 4' <<<"$l" >/dev/null || return 1
        n=$((n + 1))
    done < <(since)
    ((n >= 2))
}
if it_wait_until 'reloaded && since | grep -q "reload: .*no change" && json_ok' 20; then
    it_ok "log_format = json: every line after it is a JSON object ($(since | wc -l) lines), e.g. $(since | grep -m1 'no change')"
else
    it_not_ok "json lines: $(since | head -n 3)"
fi
n_rel=$(grep -c '^RELOADING=1|MONOTONIC_USEC=[0-9]\+|' "$IT_DIR/notify.log")
n_rdy=$(grep -c '^READY=1' "$IT_DIR/notify.log")
if ((n_rel >= 7 && n_rdy == n_rel + 1)) &&
    [[ $(tail -n 2 "$IT_DIR/notify.log" | head -n1) == RELOADING=1* && $(tail -n1 "$IT_DIR/notify.log") == READY=1* ]]; then
    it_ok "sd_notify: $n_rel reloads, each RELOADING=1 with MONOTONIC_USEC then READY=1 ('$(grep -m1 '^RELOADING' "$IT_DIR/notify.log")')"
else
    it_not_ok "sd_notify: $n_rel RELOADING, $n_rdy READY: $(tail -n 4 "$IT_DIR/notify.log")"
fi

# ---- 6: clean shutdown after all those reloads ---------------------------------------
bad=
for i in 1 2; do it_signal "$i" TERM; done
for i in 1 2; do
    it_reap "$i" 10
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
grep -q '^STOPPING=1' "$IT_DIR/notify.log" || bad+="no STOPPING=1; "
it_report_shutdown "$bad" 1 2
