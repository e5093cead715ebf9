#!/usr/bin/env bash
# tests/integration/package.sh - the Debian package, as an administrator of
# a PMG node gets it:
#
#   - `dpkg-buildpackage -us -uc -b` on a clean copy of the source (the
#     tracked files) builds pmgcm_*.deb; lintian finds no error in it; the
#     unit is under /lib/systemd/system (where debhelper enables it), the
#     config is a conffile;
#   - installed with dpkg into a throwaway root (its own dpkg database:
#     dpkg --root --force-script-chrootless, so the maintainer scripts run
#     with DPKG_ROOT) next to a stand-in pmg-api package (built here with
#     dpkg-deb) that owns /usr/bin/pmgcm, its man page and its completion:
#     the three are diverted to pmgcm.pmg-api and still work, the unit is
#     enabled, postinst says which keys to set;
#   - the unit's ExecStart command line (its absolute paths under the root)
#     with the shipped config exits 78 naming name and bind; with name and
#     bind set it tells $NOTIFY_SOCKET READY=1 once its control socket
#     answers, logs "<N>" priorities into a JOURNAL_STREAM, forms a cluster
#     of 2 with the installed pmgcm (create / join, network namespaces),
#     reloads by the unit's ExecReload lines (--check-config, then SIGHUP:
#     RELOADING=1 ... READY=1; a bad file stops at the check, the daemon
#     untouched), and sends STOPPING=1 on SIGTERM;
#   - remove puts pmg-api's files back and keeps data_dir; purge removes
#     data_dir, the conffile and the enablement; pmg-api is untouched.
#
# Needs root (netns, the install), dpkg-buildpackage and debhelper
# (scripts/deps.sh installs them); lintian is used when installed.
# PMGCM_DEB=FILE uses a package built before instead of building one.
IT_BUDGET=${IT_BUDGET:-1500}
. "$(dirname "$0")/lib.sh"

top=${abs_top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}

if [[ $(id -u) != 0 ]]; then
    echo "1..0 # SKIP needs root (dpkg, network namespaces)"
    exit 0
fi
if [[ -z "${PMGCM_DEB:-}" ]]; then
    for b in dpkg-buildpackage dh dpkg-deb; do
        command -v "$b" >/dev/null || { echo "1..0 # SKIP $b not installed (scripts/deps.sh)"; exit 0; }
    done
fi

it_init 2
it_plan 17

R=$IT_DIR/root             # the throwaway root
DPKG=(dpkg "--root=$R" "--log=$R/var/log/dpkg.log" --force-script-chrootless
      --force-depends)
NOTIFY_PID=

pkg_cleanup() {
    local rc=$?
    [[ -n "$NOTIFY_PID" ]] && kill "$NOTIFY_PID" 2>/dev/null
    (exit $rc)
    it_cleanup
}
trap pkg_cleanup EXIT

# ---- 1. build ------------------------------------------------------------------
DEB=${PMGCM_DEB:-}
if [[ -z "$DEB" ]]; then
    mkdir -p "$IT_DIR/pkg/src"
    if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$top" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$IT_DIR/pkg/src"
    else
        tar -C "$top" --exclude='./build*' --exclude=./debian/build -cf - . | tar -xf - -C "$IT_DIR/pkg/src"
    fi
    t0=$(it_now_ms)
    (cd "$IT_DIR/pkg/src" && timeout 900 dpkg-buildpackage -us -uc -b) >"$IT_DIR/pkg/build.log" 2>&1
    rc=$?
    t1=$(it_now_ms)
    DEB=$(ls "$IT_DIR"/pkg/pmgcm_*_*.deb 2>/dev/null | head -n1)
    if ((rc == 0)) && [[ -f "$DEB" ]]; then
        it_ok "dpkg-buildpackage -us -uc -b builds $(basename "$DEB") ($(it_fmt_ms $((t1 - t0))) s)"
    else
        it_not_ok "dpkg-buildpackage -us -uc -b (exit $rc)"
        it_diag "$(tail -n 30 "$IT_DIR/pkg/build.log")"
        it_bail "no package"
    fi
else
    [[ -f "$DEB" ]] || it_bail "PMGCM_DEB=$DEB: no such file"
    it_ok "using the package $DEB # SKIP not built here (PMGCM_DEB)"
fi

# ---- 2. lintian ----------------------------------------------------------------
if command -v lintian >/dev/null; then
    lint=$(lintian --allow-root "$DEB" 2>&1)
    if ! grep -q '^E: ' <<<"$lint"; then
        it_ok "lintian: no error ($(grep -c '^W: ' <<<"$lint") warnings)"
    else
        it_not_ok "lintian: errors"
    fi
    [[ -n "$lint" ]] && it_diag "$lint"
else
    it_ok "lintian # SKIP lintian not installed"
fi

# ---- 3. contents -----------------------------------------------------------------
contents=$(dpkg-deb -c "$DEB" | awk '{print $NF}')
conffiles=$(dpkg-deb -I "$DEB" conffiles 2>/dev/null)
bad=
for f in ./lib/systemd/system/pmgclusterd.service ./usr/sbin/pmgclusterd ./usr/bin/pmgcm \
    ./usr/share/man/man1/pmgcm.1.gz ./usr/share/man/man8/pmgclusterd.8.gz \
    ./usr/share/bash-completion/completions/pmgcm ./etc/pmgcm/pmgclusterd.conf \
    ./usr/share/doc/pmgcm/copyright; do
    grep -qxF "$f" <<<"$contents" || bad+="no $f; "
done
grep -qxF /etc/pmgcm/pmgclusterd.conf <<<"$conffiles" || bad+="the config is no conffile: $conffiles; "
grep -q 'AGPL-3' <(dpkg-deb --fsys-tarfile "$DEB" | tar -xOf - ./usr/share/doc/pmgcm/copyright) ||
    bad+="copyright names no AGPL-3; "
if [[ -z "$bad" ]]; then
    it_ok "the package holds the unit in /lib/systemd/system, both binaries, man pages, completion, the config as a conffile, the AGPL copyright"
else
    it_not_ok "package contents: $bad"
fi

# ---- 4. install next to pmg-api ----------------------------------------------------
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers" "$R/var/log"
touch "$R/var/lib/dpkg/status"
S=$IT_DIR/standin
mkdir -p "$S/DEBIAN" "$S/usr/bin" "$S/usr/share/man/man1" "$S/usr/share/bash-completion/completions"
printf '#!/bin/sh\necho "pmg-api stand-in pmgcm $*"\n' >"$S/usr/bin/pmgcm"
chmod 755 "$S/usr/bin/pmgcm"
printf '.TH PMGCM 1\n.SH NAME\npmgcm \\- stand-in of pmg-api\n' | gzip -9n >"$S/usr/share/man/man1/pmgcm.1.gz"
echo "complete -C 'pmgcm bashcomplete' pmgcm # pmg-api stand-in" >"$S/usr/share/bash-completion/completions/pmgcm"
printf 'Package: pmg-api\nVersion: 8.1.4\nArchitecture: all\nMaintainer: pmgcm tests <tests@example.org>\nDescription: stand-in for PMG'"'"'s pmg-api\n owns /usr/bin/pmgcm, its man page and its bash completion, as pmg-api does.\n' >"$S/DEBIAN/control"
dpkg-deb --root-owner-group -b "$S" "$IT_DIR/pmg-api.deb" >/dev/null || it_bail "dpkg-deb of the stand-in failed"
"${DPKG[@]}" -i "$IT_DIR/pmg-api.deb" >"$IT_DIR/dpkg1.log" 2>&1 || it_bail "installing the stand-in: $(tail -n 5 "$IT_DIR/dpkg1.log")"
"${DPKG[@]}" -i "$DEB" >"$IT_DIR/dpkg2.log" 2>&1
rc=$?
divs=$(DPKG_ROOT=$R dpkg-divert --list 'pmgcm*' | sort)
want_divs=$(printf '%s\n' \
    "diversion of /usr/bin/pmgcm to /usr/bin/pmgcm.pmg-api by pmgcm" \
    "diversion of /usr/share/bash-completion/completions/pmgcm to /usr/share/bash-completion/completions/pmgcm.pmg-api by pmgcm" \
    "diversion of /usr/share/man/man1/pmgcm.1.gz to /usr/share/man/man1/pmgcm.pmg-api.1.gz by pmgcm" | sort)
all_divs=$(DPKG_ROOT=$R dpkg-divert --list | sort)
bad=
((rc == 0)) || bad+="dpkg -i exit $rc; "
[[ "$all_divs" == "$want_divs" ]] || bad+="diversions: $all_divs; "
[[ "$("$R/usr/bin/pmgcm.pmg-api" status)" == "pmg-api stand-in pmgcm status" ]] || bad+="pmgcm.pmg-api is not pmg-api's; "
"$R/usr/bin/pmgcm" --version 2>&1 | grep -q '^pmgcm ' || bad+="/usr/bin/pmgcm is not ours: $("$R/usr/bin/pmgcm" --version 2>&1 | head -c 200); "
zcat "$R/usr/share/man/man1/pmgcm.pmg-api.1.gz" | grep -q 'stand-in of pmg-api' || bad+="man page not diverted; "
zcat "$R/usr/share/man/man1/pmgcm.1.gz" | grep -q 'join' || bad+="our man page missing; "
grep -q 'pmg-api stand-in' "$R/usr/share/bash-completion/completions/pmgcm.pmg-api" || bad+="completion not diverted; "
grep -q 'pmg-api stand-in' "$R/usr/share/bash-completion/completions/pmgcm" && bad+="completion is still pmg-api's; "
if [[ -z "$bad" ]]; then
    it_ok "installed next to pmg-api: its pmgcm, man page and completion diverted to pmgcm.pmg-api (and still work), ours in place"
else
    it_not_ok "install next to pmg-api: $bad"
    it_diag "$(cat "$IT_DIR/dpkg2.log")"
fi

# ---- 5. postinst: enabled, not started, says which keys to set ---------------------
UNIT=$R/lib/systemd/system/pmgclusterd.service
bad=
[[ "$(readlink "$R/etc/systemd/system/multi-user.target.wants/pmgclusterd.service")" == /lib/systemd/system/pmgclusterd.service ]] ||
    bad+="not enabled (no multi-user.target.wants link); "
grep -q "pmgclusterd is not started: .*missing required keys 'name' and 'bind'" "$IT_DIR/dpkg2.log" ||
    bad+="postinst did not name the keys to set; "
grep -qx 'Type=notify' "$UNIT" || bad+="no Type=notify; "
grep -qx 'RestartPreventExitStatus=78' "$UNIT" || bad+="no RestartPreventExitStatus=78; "
grep -qx 'ReadWritePaths=-/etc/pmg' "$UNIT" || bad+="/etc/pmg not writable in the sandbox; "
if [[ -z "$bad" ]]; then
    it_ok "postinst enables pmgclusterd.service (Type=notify), does not start it, and names the keys to set: $(grep -o "missing required keys.*" "$IT_DIR/dpkg2.log" | head -n1)"
else
    it_not_ok "postinst and unit: $bad"
    it_diag "$(cat "$IT_DIR/dpkg2.log")"
fi

# The unit's ExecStart with its absolute paths under the throwaway root.
EXEC=$(sed -n 's/^ExecStart=//p' "$UNIT")
read -r -a EXEC_W <<<"$EXEC"
for k in "${!EXEC_W[@]}"; do
    [[ ${EXEC_W[k]} == /* ]] && EXEC_W[k]=$R${EXEC_W[k]}
done
it_diag "ExecStart=$EXEC -> ${EXEC_W[*]}"
PMGCM=$R/usr/bin/pmgcm
PMGCLUSTERD=$R/usr/sbin/pmgclusterd

# ---- 6. the shipped config --------------------------------------------------------
out=$("${EXEC_W[@]}" 2>&1 </dev/null)
rc=$?
if [[ "${EXEC_W[*]}" == "$R/usr/sbin/pmgclusterd --config $R/etc/pmgcm/pmgclusterd.conf" ]] &&
    ((rc == 78)) && grep -q "missing required keys 'name' and 'bind': set them" <<<"$out"; then
    it_ok "the unit's command line with the shipped config exits 78 (no restart) and names name and bind"
else
    it_not_ok "the shipped config: exit $rc: $out"
fi

# ---- 7. configured: READY=1 once it answers; <N> priorities in the journal ---------
CONF=$R/etc/pmgcm/pmgclusterd.conf
PW=$IT_DIR/join.pw
printf 'correct horse battery staple\n' >"$PW"
chmod 600 "$PW"
sed -i -e "s|^#name = .*|name = node1|" -e "s|^#bind = .*|bind = ${IT_IP[1]}:$IT_PORT|" \
    -e "s|^data_dir = /var/lib/pmgcm|data_dir = $R/var/lib/pmgcm|" \
    -e "s|^#control_socket = .*|control_socket = $(it_sock 1)|" -e "s|^#label = .*|label = pmgcm-it|" "$CONF"
"$PMGCLUSTERD" --check-config "$CONF" >/dev/null 2>&1 || it_bail "the edited config: $("$PMGCLUSTERD" --check-config "$CONF" 2>&1)"
it_write_config_lc 2 node2

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
it_wait_until "[[ -S '$NSOCK' ]]" 10 || it_bail "the notify listener did not start"
: >"$IT_DIR/notify.log"

# start_node I journal|plain ARGV...: a daemon as systemd starts it
# (NOTIFY_SOCKET set), stderr to node I's log; "journal": the log is its
# journal (JOURNAL_STREAM names that file's DEV:INODE, as systemd does)
start_node() {
    local i=$1 how=$2 log js=
    shift 2
    log=$(it_log "$i")
    : >"$log"
    [[ $how == journal ]] && js=$(stat -c '%d:%i' "$log")
    # exec all the way down: IT_PID is the daemon's own pid
    (
        unset JOURNAL_STREAM NOTIFY_SOCKET
        [[ -n "$js" ]] && export NOTIFY_SOCKET=$NSOCK JOURNAL_STREAM=$js
        # a NOTIFY_SOCKET nobody listens on (a careless wrapper script)
        [[ $how == badnotify ]] && export NOTIFY_SOCKET=$IT_DIR/nobody-listens.sock
        if [[ $IT_MODE == netns ]]; then
            exec ip netns exec "${IT_NS[i]}" "$@"
        fi
        exec "$@"
    ) </dev/null >>"$log" 2>&1 &
    IT_PID[i]=$!
}
start_node 1 journal "${EXEC_W[@]}"
ready_when_answering=
if it_wait_until "grep -q '^READY=1' '$IT_DIR/notify.log'" 20; then
    # READY comes after the control socket listens: it answers now
    it_status 1 >/dev/null 2>&1 && ready_when_answering=yes
fi
bad=
[[ $ready_when_answering == yes ]] || bad+="READY=1 (${IT_WAITED}s) but no answer; "
grep -q "^READY=1|STATUS=node node1, gossip on ${IT_IP[1]}:$IT_PORT" "$IT_DIR/notify.log" || bad+="notify: $(head -c 200 "$IT_DIR/notify.log"); "
grep -q '^<6>info daemon: running$' "$(it_log 1)" || bad+="no '<6>info daemon: running' line; "
grep -Evq '^<[3467]>(error|warn|info|debug) [a-z]+: ' "$(it_log 1)" && bad+="a line without its priority; "
if [[ -z "$bad" ]]; then
    it_ok "from the unit's command line: READY=1 on NOTIFY_SOCKET once the control socket answers; every line in the journal stream starts with its <priority>"
else
    it_not_ok "start under a service manager: $bad"
    it_diag "$(head -n 5 "$(it_log 1)")"
fi

# node2: the installed daemon with its own config, stderr not a journal,
# NOTIFY_SOCKET naming a socket nobody listens on: a warning, never a
# shutdown (it still forms the cluster below)
start_node 2 badnotify "$PMGCLUSTERD" --config "$IT_DIR/node2.conf"
TS='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z'
if it_wait_until "it_status 2 >/dev/null 2>&1 && grep -q 'sd_notify READY=1' '$(it_log 2)'" 20 &&
    grep -Eq "^$TS info daemon: running\$" "$(it_log 2)" &&
    grep -Eq "^$TS warn daemon: sd_notify READY=1: " "$(it_log 2)" &&
    ! grep -Evq "^$TS (error|warn|info|debug) [a-z]+: " "$(it_log 2)" &&
    it_status 2 >/dev/null 2>&1; then
    it_ok "node2 (stderr not the journal): every line starts with its UTC time, e.g. '$(grep -m1 'daemon: running' "$(it_log 2)")'; a NOTIFY_SOCKET nobody listens on: '$(grep -m1 -o 'warn daemon: sd_notify.*' "$(it_log 2)")', still running"
else
    it_not_ok "node2: $(head -n 3 "$(it_log 2)")"
fi

# ---- 8. a cluster of 2 with the installed pmgcm ---------------------------------------
out=$(it_pmgcm 1 create --password-file "$PW" 2>&1)
rc=$?
fp=$(it_fingerprint_of 1)
out2=$(it_pmgcm 2 join "${IT_IP[1]}" --fingerprint "$fp" --password-file "$PW" 2>&1)
rc2=$?
if ((rc == 0 && rc2 == 0)) &&
    it_wait_until 'it_all_see_all_alive "1 2" && [[ "$(it_roles_of 2)" == "node1:1:master node2:2:node" ]]' 60; then
    it_ok "installed pmgcm: create on node1, join on node2: both see both alive, node1 master (${IT_WAITED} s)"
else
    it_not_ok "cluster of 2: create exit $rc ($out), join exit $rc2 ($out2)"
    it_dump_views "1 2"
fi

# ---- 8b. systemctl reload: the unit's ExecReload lines, in order, as systemd
# runs them (it stops at the first that fails); $MAINPID is node1's pid ----------
mapfile -t RELOAD_CMDS < <(sed -n 's/^ExecReload=//p' "$UNIT")
# run_reload: every ExecReload line until one fails; 0 or that one's status
run_reload() {
    local cmd w k rc
    for cmd in "${RELOAD_CMDS[@]}"; do
        read -r -a w <<<"${cmd//\$MAINPID/${IT_PID[1]}}"
        for k in "${!w[@]}"; do
            # the package's own paths are under the root; /bin/kill is the host's
            [[ ${w[k]} == /usr/* || ${w[k]} == /etc/* ]] && w[k]=$R${w[k]}
        done
        "${w[@]}" >>"$IT_DIR/reload.out" 2>&1 || { rc=$?; return "$rc"; }
    done
    return 0
}
bad=
((${#RELOAD_CMDS[@]} == 2)) && [[ ${RELOAD_CMDS[0]} == "/usr/sbin/pmgclusterd --check-config /etc/pmgcm/pmgclusterd.conf" &&
    ${RELOAD_CMDS[1]} == '/bin/kill -HUP $MAINPID' ]] || bad+="ExecReload lines: ${RELOAD_CMDS[*]}; "
# a bad file: the check fails naming the line, no signal is sent
cp "$CONF" "$IT_DIR/conf.good"
echo "colour = blue" >>"$CONF"
n0=$(wc -l <"$IT_DIR/notify.log")
: >"$IT_DIR/reload.out"
run_reload
rc=$?
((rc == 1)) && grep -q "$CONF:$(wc -l <"$CONF"): unknown key 'colour'" "$IT_DIR/reload.out" ||
    bad+="bad file: exit $rc, $(head -c 200 "$IT_DIR/reload.out"); "
# a live key changed: checked, then SIGHUP; RELOADING=1 then READY=1
cp "$IT_DIR/conf.good" "$CONF"
sed -i 's/^#log_level = info$/log_level = debug/' "$CONF"
: >"$IT_DIR/reload.out"
run_reload || bad+="good file: $(head -c 200 "$IT_DIR/reload.out"); "
if it_wait_until "tail -n +$((n0 + 1)) '$IT_DIR/notify.log' | grep -q '^READY=1'" 20; then
    tail -n +"$((n0 + 1))" "$IT_DIR/notify.log" | head -n1 | grep -q '^RELOADING=1|MONOTONIC_USEC=[0-9]\+|' ||
        bad+="notify after the reload: $(tail -n +"$((n0 + 1))" "$IT_DIR/notify.log" | paste -sd' '); "
else
    bad+="no READY=1 after the reload; "
fi
grep -q '^<6>info config: reload: applied log_level (info -> debug)$' "$(it_log 1)" || bad+="no 'reload: applied' line; "
it_status 1 >/dev/null 2>&1 || bad+="node1 does not answer after the reload; "
if [[ -z "$bad" ]]; then
    it_ok "systemctl reload as the unit says: a bad file fails at --check-config naming the line (no signal); a good one: RELOADING=1 (MONOTONIC_USEC), READY=1, log_level applied"
else
    it_not_ok "reload through ExecReload: $bad"
fi

# ---- 9. SIGTERM: STOPPING=1, exit 0 -------------------------------------------------------
STOP_BAD=
kill -TERM "${IT_PID[1]}"
it_reap 1 15
[[ $IT_EXIT == 0 ]] || STOP_BAD+="node1 exit $IT_EXIT; "
if [[ $IT_EXIT == 0 ]] && grep -q '^STOPPING=1' "$IT_DIR/notify.log" &&
    it_wait_until '[[ "$(it_state_of 2 node1)" == L ]]' 20; then
    it_ok "SIGTERM: STOPPING=1 on NOTIFY_SOCKET, exit 0, node2 shows node1 L (left)"
else
    it_not_ok "SIGTERM: exit $IT_EXIT, notify: $(paste -sd' ' "$IT_DIR/notify.log"), node2 shows node1 $(it_state_of 2 node1)"
fi
kill -TERM "${IT_PID[2]}"
it_reap 2 15
[[ $IT_EXIT == 0 ]] || STOP_BAD+="node2 exit $IT_EXIT; "

# ---- 9b. files_dir read-only, as the unit's sandbox makes one not listed in
# ReadWritePaths: one error at start that says how to fix it ---------------------
RO=$IT_DIR/ro-files
mkdir -p "$RO" "$IT_DIR/ro-data"
chmod 700 "$IT_DIR/ro-data"
printf '%s\n' "name = ro1" "bind = ${IT_IP[1]}:$IT_PORT" "data_dir = $IT_DIR/ro-data" \
    "control_socket = $IT_DIR/ro.sock" "files_dir = $RO/sub" >"$IT_DIR/ro.conf"
: >"$IT_DIR/ro.log"
(
    unset JOURNAL_STREAM NOTIFY_SOCKET
    ns=()
    [[ $IT_MODE == netns ]] && ns=(ip netns exec "${IT_NS[1]}")
    # a private mount namespace in which $RO is a read-only bind mount
    exec "${ns[@]}" unshare -m --propagation private sh -c \
        'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"' \
        sh "$RO" "$PMGCLUSTERD" --config "$IT_DIR/ro.conf"
) </dev/null >>"$IT_DIR/ro.log" 2>&1 &
IT_PID[1]=$!
want="error files: $RO is on a read-only file system here, so this node cannot mirror into $RO/sub: under pmgclusterd.service add \`ReadWritePaths=$RO/sub\` in \`systemctl edit pmgclusterd\`"
ro_logged() { grep -qF "$want" "$IT_DIR/ro.log"; }
if it_wait_until ro_logged 20 &&
    [[ $(grep -c 'read-only file system' "$IT_DIR/ro.log") == 1 ]] &&
    timeout 5 "$PMGCM" --socket "$IT_DIR/ro.sock" status >/dev/null 2>&1; then
    it_ok "files_dir on a read-only mount (a sandbox without ReadWritePaths): one error at start naming the ReadWritePaths= line to add; the daemon runs on"
else
    it_not_ok "read-only files_dir: $(tail -n 5 "$IT_DIR/ro.log")"
fi
kill -TERM "${IT_PID[1]}"
it_reap 1 15
[[ $IT_EXIT == 0 ]] || STOP_BAD+="ro1 exit $IT_EXIT; "

# ---- 10. remove: pmg-api's files back, data_dir kept ------------------------------------------
[[ -f "$R/var/lib/pmgcm/node_id" ]] || it_diag "no node_id in $R/var/lib/pmgcm before remove"
"${DPKG[@]}" -r pmgcm >"$IT_DIR/dpkg3.log" 2>&1
rc=$?
bad=
((rc == 0)) || bad+="dpkg -r exit $rc; "
[[ -z "$(DPKG_ROOT=$R dpkg-divert --list)" ]] || bad+="diversions left: $(DPKG_ROOT=$R dpkg-divert --list); "
[[ "$("$R/usr/bin/pmgcm" status 2>&1)" == "pmg-api stand-in pmgcm status" ]] || bad+="/usr/bin/pmgcm is not pmg-api's again; "
[[ -e "$R/usr/bin/pmgcm.pmg-api" ]] && bad+="pmgcm.pmg-api left; "
zcat "$R/usr/share/man/man1/pmgcm.1.gz" 2>/dev/null | grep -q 'stand-in of pmg-api' || bad+="man page not back; "
grep -q 'pmg-api stand-in' "$R/usr/share/bash-completion/completions/pmgcm" 2>/dev/null || bad+="completion not back; "
[[ -f "$R/var/lib/pmgcm/node_id" && -f "$R/var/lib/pmgcm/cluster.conf" ]] || bad+="data_dir not kept; "
[[ -f "$CONF" ]] || bad+="conffile gone on remove; "
[[ -e "$R/usr/sbin/pmgclusterd" ]] && bad+="pmgclusterd left; "
if [[ -z "$bad" ]]; then
    it_ok "dpkg -r: diversions removed, pmg-api's pmgcm, man page and completion back; data_dir (node_id, cluster.conf) and the config kept"
else
    it_not_ok "remove: $bad"
    it_diag "$(cat "$IT_DIR/dpkg3.log")"
fi

# ---- 11. purge: data_dir, conffile, enablement gone; pmg-api untouched --------------------------
"${DPKG[@]}" -P pmgcm >"$IT_DIR/dpkg4.log" 2>&1
rc=$?
bad=
((rc == 0)) || bad+="dpkg -P exit $rc; "
[[ -e "$R/var/lib/pmgcm" ]] && bad+="data_dir left; "
[[ -e "$CONF" ]] && bad+="config left; "
[[ -e "$R/etc/systemd/system/multi-user.target.wants/pmgclusterd.service" ]] && bad+="still enabled; "
st=$(dpkg-query "--admindir=$R/var/lib/dpkg" -W -f='${db:Status-Abbrev}' pmgcm 2>/dev/null)
[[ -z "$st" || "$st" == "un "* || "$st" == "pn "* ]] || bad+="pmgcm status '$st'; "
[[ "$(dpkg-query "--admindir=$R/var/lib/dpkg" -W -f='${db:Status-Abbrev}' pmg-api)" == "ii "* ]] || bad+="pmg-api not installed; "
(cd "$R" && md5sum -c --quiet var/lib/dpkg/info/pmg-api.md5sums >/dev/null 2>&1) || bad+="pmg-api's files changed; "
if [[ -z "$bad" ]]; then
    it_ok "dpkg -P: data_dir, the config and the enablement gone; pmg-api installed and its files unchanged"
else
    it_not_ok "purge: $bad"
    it_diag "$(cat "$IT_DIR/dpkg4.log")"
fi

# ---- 12. the dpkg log: nothing forced but the dependencies --------------------------------------
# (in a throwaway root nobody else owns /etc, /lib, /usr...: dpkg may say
# such a directory is not empty, never one of the package's own)
own_dirs='/etc/pmgcm|/var/lib/pmgcm|/usr/share/doc/pmgcm'
if ! grep -hiE 'error|warning' "$IT_DIR"/dpkg[1234].log |
    grep -vE 'dependency problems|depends on|is not installed|Package .* is not' |
    grep -vE "directory '/(etc|lib|usr|var)(/[a-z0-9-]+)*' not empty so not removed" |
    grep -q . || grep -qE "directory '($own_dirs)' not empty" "$IT_DIR"/dpkg[1234].log; then
    it_ok "no dpkg error or warning in install, remove and purge (besides the host's libraries missing from the throwaway root's database)"
else
    it_not_ok "dpkg said: $(grep -hiE 'error|warning' "$IT_DIR"/dpkg[1234].log | head -n 5)"
fi

# ---- 13. the package's Depends are this machine's libraries --------------------------------------
deps=$(dpkg-deb -f "$DEB" Depends)
missing=
IFS=',' read -r -a dl <<<"$deps"
for d in "${dl[@]}"; do
    p=$(awk '{print $1}' <<<"$d")
    [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" == "ii "* ]] || missing+="$p "
done
# the daemon loads libpq with dlopen (store/pq.c): dpkg-shlibdeps cannot
# see it, debian/control names it
[[ ",$deps," == *", libpq5"[,\ ]* || "$deps" == "libpq5"[,\ ]* ]] || missing+="libpq5 (not in Depends, loaded with dlopen) "
if [[ -z "$missing" ]]; then
    it_ok "every package in Depends ($deps) is installed here, libpq5 among them"
else
    it_not_ok "Depends not installed here: $missing"
fi

it_report_shutdown "$STOP_BAD" 1 2
