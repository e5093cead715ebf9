#!/usr/bin/env bash
# tests/integration/files.sh - mirrored config files (files/files.h)
# end to end: three real pmgclusterd daemons (create + join, as in
# lifecycle.sh), each with its own files_dir and a files_reload command
# that appends a line to a per-node marker file.
#
#   node1  master: its files_dir is the truth
#   node2  has a dotfile of its own (left alone) before joining
#   node3  has a stale file of its own (removed) before joining
#
# Checked: the master's files appear on every node byte for byte (path,
# mode, SHA-256), in subdirectories too; a file added, changed, chmod'ed or
# removed on the master follows everywhere (and a directory it empties goes
# too); a file over files_max_bytes and a symlink are not mirrored and say
# so in the master's log and `pmgcm status` JSON; a file changed or removed
# locally on a node is put back as the master has it; a node that was down
# while the master changed catches up at its start; the reload command ran
# on every node after each change (marker lines, with PMGCM_FILES_DIR) and
# never on the master. Nothing is lost: a file mirroring removes or
# replaces is in the node's trash (data_dir/files-trash); a file no
# manifest listed (node3's own stale.conf, a file added on node2, a file
# on the old master too big to mirror) stays where it is. Then node1 stops
# while node3 is behind: promote on node3 is refused (also with --force)
# and names node2, which is in sync; node2 is promoted: its directory is
# the truth from then on, node1 included when it returns. Last, the new
# master loses most of its files: it holds that manifest (nodes untouched),
# restoring them ends the hold, `pmgcm files publish` says what is held and
# `--confirm` publishes it; the nodes keep what it dropped in their trash.
# A master that lost its data_dir/files.manifest (so it does not know what
# is published, as after a promote with an unsynced files_dir) holds too.
# Polls with deadlines; never sleeps to synchronise.
set -u
here=$(cd "$(dirname "$0")" && pwd)
IT_BUDGET=${IT_BUDGET:-600}
. "$here/lib.sh"

command -v python3 >/dev/null || it_bail "python3 not installed (control socket helper)"
command -v sha256sum >/dev/null || it_bail "sha256sum not installed"

it_init 3
if [[ $IT_MODE == loopback ]]; then
    # our own /24 on loopback (every daemon's node API is on port 7947)
    net=127.0.$((200 + $$ % 50))
    for i in 1 2 3; do IT_IP[i]=$net.$((10 + i)); done
fi

MAX=65536
PW=$IT_DIR/join.pw
printf 'files test password\n' >"$PW"
chmod 600 "$PW"
for i in 1 2 3; do
    it_write_config_lc "$i" "node$i"
    mkdir -p "$IT_DIR/etc$i"
    cat >>"$IT_DIR/node$i.conf" <<EOF
files_dir = $IT_DIR/etc$i
files_reload = echo "reload \$PMGCM_FILES_DIR" >>$IT_DIR/reload$i.log
files_max_bytes = $MAX
EOF
done
E1=$IT_DIR/etc1 E2=$IT_DIR/etc2 E3=$IT_DIR/etc3

# ---- helpers -------------------------------------------------------------------
# put DIR PATH CONTENT: writes DIR/PATH atomically (a dotfile, then rename)
put() {
    mkdir -p "$(dirname "$1/$2")"
    printf '%s\n' "$3" >"$(dirname "$1/$2")/.put.$$" &&
        mv -f "$(dirname "$1/$2")/.put.$$" "$1/$2"
}
# tree DIR [EXTRA...]: "path mode sha256" of every file that may be
# mirrored (regular, not a dotfile, at most MAX bytes), sorted, without the
# EXTRA paths (a node's own files that no manifest listed)
tree() {
    local d=$1
    shift
    (cd "$d" && find . -type f ! -name '.*' -size -$((MAX + 1))c -printf '%P %m\n' | sort |
        while read -r p m; do
            [[ " $* " == *" $p "* ]] && continue
            echo "$p $m $({ sha256sum <"$p"; } 2>/dev/null | cut -c1-64)"
        done)
}
# each node's own files that mirroring must leave alone
declare -a EXTRA=([1]="" [2]="" [3]="stale.conf")
ntree() { tree "$IT_DIR/etc$1" ${EXTRA[$1]}; }
# mirrored: nodes 2 and 3 hold exactly the master's tree (and their own
# unmanaged files)
mirrored() {
    local t1
    t1=$(tree "$E1")
    [[ "$(ntree 2)" == "$t1" && "$(ntree 3)" == "$t1" ]]
}
# in_trash I PATH CONTENT: node I's trash holds PATH with that content
in_trash() {
    local f
    for f in "$IT_DIR/node$1/files-trash"/*/"$2"; do
        [[ -f "$f" && "$(cat "$f")" == "$3" ]] && return 0
    done
    return 1
}
trash_list() { (cd "$IT_DIR/node$1/files-trash" 2>/dev/null && find . -type f ! -name '.*' | sort | paste -sd' '); }
unmanaged_of() { files_of "$1" | jq -r '.unmanaged.names | join(" ")'; }
# reloads I: lines in node I's marker file
reloads() { [[ -f $IT_DIR/reload$1.log ]] && wc -l <"$IT_DIR/reload$1.log" || echo 0; }
declare -a R0
mark_reloads() { local i; for i in 2 3; do R0[i]=$(reloads "$i"); done; }
reloaded() { local i; for i in 2 3; do (($(reloads "$i") > R0[i])) || return 1; done; }
# files_of I: node I's "files" status object
files_of() { it_envelope "$1" 2>/dev/null | jq -c '.files // empty'; }
synced() { [[ "$(files_of "$1" | jq -r '.synced')" == true ]]; }
all_synced() { synced 1 && synced 2 && synced 3; }
# step DESC: waits until the nodes mirror the master, reloaded, all synced
step() {
    if it_wait_until 'mirrored && reloaded && all_synced' 30; then
        it_ok "$1 ($IT_WAITED s; reloads: node2 $(reloads 2), node3 $(reloads 3))"
    else
        it_not_ok "$1"
        it_diag "master: $(tree "$E1" | tr '\n' ';')"
        it_diag "node2:  $(ntree 2 | tr '\n' ';')"
        it_diag "node3:  $(ntree 3 | tr '\n' ';')"
        it_diag "reloads: node2 $(reloads 2) (was ${R0[2]}), node3 $(reloads 3) (was ${R0[3]})"
        for i in 1 2 3; do it_diag "node$i files: $(files_of "$i")"; done
    fi
}

# ---- the master's files, and the nodes' own leftovers ------------------------------
put "$E1" main.cf 'smtpd_banner = pmg'
put "$E1" domains 'example.com'
put "$E1" templates/spam.tt 'spam [% score %]'
put "$E1" dkim/selector.private 'private key'
chmod 0600 "$E1/dkim/selector.private"
put "$E2" .keep 'node2 own dotfile'
put "$E3" stale.conf 'not on the master'

# ---- cluster -------------------------------------------------------------------------
for i in 1 2 3; do it_start_node "$i" || it_bail "node$i did not start"; done
ok=1
it_pmgcm 1 create --password-file "$PW" >/dev/null 2>&1 || ok=0
FP=$(it_fingerprint_of 1)
for i in 2 3; do
    it_pmgcm "$i" join "${IT_IP[1]}" --fingerprint "$FP" --password-file "$PW" >"$IT_DIR/join$i.out" 2>&1 || ok=0
done
if ((ok)) && it_wait_until 'it_all_see_all_alive "1 2 3"' 30; then
    it_ok "create on node1, node2 and node3 join: all alive ($IT_WAITED s)"
else
    it_not_ok "create + join"
    it_diag "$(cat "$IT_DIR"/join*.out 2>/dev/null)"
fi

R0[2]=0 R0[3]=0
step "the master's files (subdirectories, modes) appear on node2 and node3 identically, then files_reload ran"
if [[ -f $E2/.keep && "$(cat "$E3/stale.conf" 2>/dev/null)" == 'not on the master' ]] &&
    it_wait_until '[[ "$(unmanaged_of 3)" == stale.conf ]] && synced 3' 10; then
    it_ok "node3's own stale.conf (in no manifest) is left alone and listed as unmanaged in its status, node3 in sync; node2's dotfile .keep is left alone"
else
    it_not_ok "stale.conf and .keep left alone: $(ls -A "$E2" "$E3" | tr '\n' ' ')"
    it_diag "node3 files: $(files_of 3)"
fi

# ---- changes on the master -----------------------------------------------------------------
mark_reloads
put "$E1" transport 'example.com smtp:[10.0.0.1]'
step "a file added on the master appears on every node"

mark_reloads
put "$E1" main.cf 'smtpd_banner = pmg, changed'
step "a file changed on the master changes on every node"

mark_reloads
chmod 0640 "$E1/domains"
step "a mode changed on the master changes on every node"

mark_reloads
rm -f "$E1/templates/spam.tt"
step "a file removed on the master is removed on every node"
if [[ ! -e $E2/templates && ! -e $E3/templates ]] &&
    in_trash 2 templates/spam.tt 'spam [% score %]' && in_trash 3 templates/spam.tt 'spam [% score %]'; then
    it_ok "the directory the removal emptied is gone on the nodes too; each node keeps the removed file in its trash"
else
    it_not_ok "templates/ gone on the nodes, spam.tt in their trash: $(ls -d "$E2/templates" "$E3/templates" 2>&1 | tr '\n' ' ')"
    it_diag "node2's trash: $(trash_list 2); node3's: $(trash_list 3)"
fi

# ---- limits: too big, symlink ----------------------------------------------------------------
mark_reloads
head -c $((MAX + 1)) /dev/zero >"$E1/.big.$$" && mv "$E1/.big.$$" "$E1/big.bin"
ln -s /etc/passwd "$E1/passwd-link"
put "$E1" after-limits.cf 'written after big.bin and the symlink'
step "after a file over files_max_bytes and a symlink, the next file is mirrored"
bad=
for i in 2 3; do
    for p in big.bin passwd-link; do [[ -e $IT_DIR/etc$i/$p || -L $IT_DIR/etc$i/$p ]] && bad+="node$i has $p; "; done
done
errs=$(files_of 1 | jq -r '.errors[]' 2>/dev/null)
grep -q "big.bin: $((MAX + 1)) bytes is over files_max_bytes ($MAX): not mirrored" <<<"$errs" || bad+="status: no big.bin error; "
grep -q "passwd-link: is a symlink: not mirrored" <<<"$errs" || bad+="status: no symlink error; "
grep -q "error files: big.bin: $((MAX + 1)) bytes is over files_max_bytes ($MAX): not mirrored" "$(it_log 1)" || bad+="no error in node1's log; "
if [[ -z $bad ]]; then
    it_ok "big.bin ($((MAX + 1)) bytes) and a symlink are not mirrored; the master's log and status JSON say why"
else
    it_not_ok "limits: $bad"
    it_diag "node1 files: $(files_of 1)"
fi
rm -f "$E1/big.bin" "$E1/passwd-link"

# ---- a round cut short leaves no mirrored file behind ------------------------------------------------
# node3 has a directory where the master's zz-blocked.cf goes: its round
# writes aa-first.cf, then fails on zz-blocked.cf. The master then drops
# both: node3 must remove the aa-first.cf it wrote (into its trash), not
# keep it as a file of its own.
mkdir -p "$E3/zz-blocked.cf" && printf 'x\n' >"$E3/zz-blocked.cf/.inside"
put "$E1" aa-first.cf 'written before the failure'
put "$E1" zz-blocked.cf 'cannot be written on node3'
bad=
it_wait_until '[[ -f $E3/aa-first.cf && "$(files_of 3 | jq -r .last_error)" == *zz-blocked.cf* ]]' 30 ||
    bad+="node3's round did not stop at zz-blocked.cf: $(files_of 3 | jq -c .last_error); "
[[ -f $IT_DIR/node3/files.pending ]] || bad+="no files.pending on node3; "
rm -f "$E1/aa-first.cf" "$E1/zz-blocked.cf"
it_wait_until '[[ ! -e $E3/aa-first.cf ]] && synced 3 && mirrored' 30 || bad+="aa-first.cf still on node3 ($IT_WAITED s); "
in_trash 3 aa-first.cf 'written before the failure' || bad+="aa-first.cf not in node3's trash; "
[[ "$(unmanaged_of 3)" == stale.conf ]] || bad+="node3's unmanaged files: $(unmanaged_of 3); "
[[ ! -e $IT_DIR/node3/files.pending ]] || bad+="files.pending still there; "
if [[ -z $bad ]]; then
    it_ok "a round cut short on node3 (a directory where zz-blocked.cf goes) after writing aa-first.cf: once the master drops both, node3 removes aa-first.cf into its trash (files.pending listed it); only stale.conf is its own"
else
    it_not_ok "a round cut short leaves no mirrored file behind: $bad"
    it_diag "node3 files: $(files_of 3)"
fi
rm -rf "$E3/zz-blocked.cf"

# ---- local edits on the nodes lose, but nothing is lost ------------------------------------------
mark_reloads
put "$E2" main.cf 'edited on node2'
put "$E2" local-only.cf 'added on node2'
EXTRA[2]=local-only.cf
rm -f "$E3/domains"
step "a file changed or removed locally on a node is put back as the master has it"
if in_trash 2 main.cf 'edited on node2' && [[ "$(cat "$E2/local-only.cf" 2>/dev/null)" == 'added on node2' ]] &&
    it_wait_until '[[ "$(unmanaged_of 2)" == local-only.cf && $(files_of 2 | jq .trash.files) -ge 2 ]]' 10; then
    it_ok "node2's edit of main.cf is kept in its trash ($(files_of 2 | jq -c '.trash | {events, files, bytes}')); local-only.cf, in no manifest, stays and is listed unmanaged"
else
    it_not_ok "the replaced edit is in node2's trash, its own new file stays"
    it_diag "node2's trash: $(trash_list 2); node2 files: $(files_of 2)"
fi

# ---- a node that was down catches up ---------------------------------------------------------------
it_signal 3 TERM
it_reap 3 10
exit3=$IT_EXIT
mark_reloads
put "$E1" domains 'example.com example.org'
it_wait_until '[[ "$(ntree 2)" == "$(tree "$E1")" ]]' 30
it_start_node 3 || it_diag "node3 did not restart"
step "node3, down while the master changed a file, catches up when it starts"

# ---- reload command ------------------------------------------------------------------------------
bad=
for i in 2 3; do
    n=$(grep -vc "^reload $IT_DIR/etc$i\$" "$IT_DIR/reload$i.log" 2>/dev/null)
    ((n == 0)) || bad+="node$i: $n marker lines without PMGCM_FILES_DIR=$IT_DIR/etc$i; "
done
[[ -e $IT_DIR/reload1.log ]] && bad+="the master ran files_reload; "
if [[ -z $bad ]]; then
    it_ok "files_reload ran with PMGCM_FILES_DIR set, on the nodes only (node2 $(reloads 2), node3 $(reloads 3) runs)"
else
    it_not_ok "reload: $bad"
fi

# ---- promote refused while files_dir is not in sync ------------------------------------------------
# node1 holds a file too big to mirror (in no manifest: node1 must keep it
# whatever happens); node3 stops, the master changes a file, node2 takes
# it, node1 stops: node3 comes back behind, with nobody to sync from
head -c $((MAX + 100)) /dev/urandom >"$E1/.huge.$$" && mv "$E1/.huge.$$" "$E1/huge.bin"
HUGE=$(sha256sum <"$E1/huge.bin" | cut -c1-64)
it_signal 3 TERM
it_reap 3 10
exit3b=$IT_EXIT
mark_reloads
put "$E1" domains 'example.com example.org example.net'
it_wait_until '[[ "$(ntree 2)" == "$(tree "$E1")" ]] && synced 2' 30 || it_diag "node2 did not take the change: $(files_of 2)"
it_signal 1 TERM
it_reap 1 10
exit1=$IT_EXIT
it_start_node 3 || it_diag "node3 did not restart"
cl_version() { it_cluster_of "$1" 2>/dev/null | jq -r '.version // empty'; }
# node3 learns the cluster config (and digest) from node2; its files
# cannot follow (the master is gone)
it_wait_until '[[ -n "$(cl_version 3)" && "$(cl_version 3)" == "$(cl_version 2)" ]] && [[ "$(files_of 3 | jq -r .published)" == "$(files_of 2 | jq -r .published)" ]]' 30 ||
    it_diag "node3's config: $(it_cluster_of 3); node2's: $(it_cluster_of 2)"
c2=$(it_cluster_of 2) c3=$(it_cluster_of 3)
bad=
for force in "" --force; do
    out=$(it_pmgcm 3 promote $force 2>&1)
    rc=$?
    ((rc == 1)) || bad+="promote $force: exit $rc; "
    grep -q "refused (files in sync): files_dir $E3 is not in sync with the cluster's mirrored files" <<<"$out" ||
        bad+="promote $force said: $out; "
    grep -q "in sync: node2 (cid 2)" <<<"$out" || bad+="promote $force does not name node2: $out; "
done
[[ "$(it_cluster_of 2)" == "$c2" && "$(it_cluster_of 3)" == "$c3" ]] || bad+="a config changed; "
[[ "$(files_of 3 | jq -r .synced)" == false ]] || bad+="node3 says it is in sync; "
if [[ -z $bad ]]; then
    it_ok "node3, back while node1 (master) is gone and behind on its files: promote and promote --force refused ('$(head -n1 <<<"$out" | cut -c1-160)...'), naming node2 as in sync; no config changed"
else
    it_not_ok "promote refused while files_dir is not in sync: $bad"
    it_diag "node3 files: $(files_of 3)"
fi

# ---- promote: the new master's directory is the truth ------------------------------------------
R1=$(reloads 1)
mark_reloads
it_pmgcm 2 promote >"$IT_DIR/promote.out" 2>&1
prc=$?
put "$E2" promoted.cf 'written on the new master'
EXTRA[2]= # local-only.cf is the new master's: everybody's now
it_wait_until '[[ -f $E3/promoted.cf && "$(ntree 3)" == "$(tree "$E2")" ]]' 30
it_start_node 1 || it_diag "node1 did not restart"
# node1 comes back as master of epoch 1, steps down, and mirrors node2
follows_node2() {
    local t2
    t2=$(tree "$E2")
    [[ "$(ntree 1)" == "$t2" && "$(ntree 3)" == "$t2" ]] &&
        (($(reloads 1) > R1 && $(reloads 3) > R0[3] && $(reloads 2) == R0[2])) &&
        all_synced && [[ "$(files_of 2 | jq -r .role)" == master ]]
}
if ((prc == 0)) && it_wait_until follows_node2 30 &&
    [[ "$(sha256sum <"$E1/huge.bin" | cut -c1-64)" == "$HUGE" ]] && [[ -f $E3/local-only.cf ]]; then
    it_ok "after node1 stops and node2 is promoted, a file added on node2 reaches node3, and node1 when it returns (reloads: node1 $(reloads 1), node3 $(reloads 3); none on node2) ($IT_WAITED s); node1's huge.bin (never mirrorable) is still there"
else
    it_not_ok "promote: node2's files everywhere, node1's huge.bin kept"
    it_diag "promote: exit $prc: $(cat "$IT_DIR/promote.out")"
    it_diag "huge.bin on node1: $(ls -l "$E1/huge.bin" 2>&1)"
    for i in 1 2 3; do it_diag "node$i: $(ntree "$i" | tr '\n' ';') reloads $(reloads "$i")"; done
    for i in 1 2 3; do it_diag "node$i files: $(files_of "$i")"; done
fi

# ---- a manifest that drops most files is held until confirmed -------------------------------------
held() { [[ "$(files_of 2 | jq -r '.held.dropped // empty')" == "$1" ]]; }
T1=$(ntree 1) T3=$(ntree 3)
mkdir -p "$IT_DIR/saved"
cp -a "$E2/." "$IT_DIR/saved/"
n_all=$(tree "$E2" | wc -l)
rm -f "$E2/main.cf" "$E2/transport" "$E2/after-limits.cf" "$E2/local-only.cf" "$E2/promoted.cf"
bad=
it_wait_until 'held 5' 15 || bad+="no hold in node2's status: $(files_of 2 | jq -c .held); "
grep -q "not publishing: the directory now drops 5 of the $n_all published files" "$(it_log 2)" || bad+="no warning in node2's log; "
# the nodes keep their files (nothing published) and stay in sync
[[ "$(ntree 1)" == "$T1" && "$(ntree 3)" == "$T3" ]] && synced 1 && synced 3 || bad+="a node changed: $(files_of 3); "
out=$(it_pmgcm 2 files publish 2>&1)
rc=$?
((rc == 1)) && grep -q "held: .* drops 5 of the $n_all published files" <<<"$out" || bad+="files publish without --confirm: exit $rc: $out; "
if [[ -z $bad ]]; then
    it_ok "node2 (master) loses 5 of its $n_all files: it holds that manifest (status .held, log), the nodes keep theirs; 'pmgcm files publish' without --confirm says so and exits 1"
else
    it_not_ok "a manifest dropping most files is held: $bad"
    it_diag "node2 files: $(files_of 2)"
fi
# restoring the files ends the hold; losing them again holds again
cp -a "$IT_DIR/saved/." "$E2/"
if it_wait_until '[[ "$(files_of 2 | jq -c .held)" == null ]] && synced 2' 15 &&
    rm -f "$E2/main.cf" "$E2/transport" "$E2/after-limits.cf" "$E2/local-only.cf" "$E2/promoted.cf" &&
    it_wait_until 'held 5' 15; then
    it_ok "restoring the files on node2 ends the hold by itself; removing them again holds again"
else
    it_not_ok "restoring the files ends the hold"
    it_diag "node2 files: $(files_of 2)"
fi
mark_reloads
out=$(it_pmgcm 2 files publish --confirm 2>&1)
rc=$?
gone() {
    local i
    for i in 1 3; do
        [[ ! -e $IT_DIR/etc$i/main.cf && ! -e $IT_DIR/etc$i/promoted.cf ]] || return 1
        in_trash "$i" main.cf 'smtpd_banner = pmg, changed' && in_trash "$i" promoted.cf 'written on the new master' || return 1
    done
    [[ "$(ntree 1)" == "$(tree "$E2")" && "$(ntree 3)" == "$(tree "$E2")" ]] && all_synced
}
if ((rc == 0)) && grep -q "published manifest .* (2 files; 5 dropped files are kept in the nodes' trash)" <<<"$out" &&
    it_wait_until gone 30 && [[ -f $E3/stale.conf && -f $E1/huge.bin ]]; then
    it_ok "pmgcm files publish --confirm ('$out'): node1 and node3 now hold node2's 2 files, the 5 dropped ones in their trash ($IT_WAITED s); their own unmanaged files stay"
else
    it_not_ok "files publish --confirm publishes the held manifest"
    it_diag "exit $rc: $out"
    for i in 1 3; do it_diag "node$i: $(ntree "$i" | tr '\n' ';') trash: $(trash_list "$i")"; done
    for i in 1 2 3; do it_diag "node$i files: $(files_of "$i")"; done
fi

# ---- a master that does not hold the published manifest holds too ---------------------------------
# (as after a promote with an unsynced files_dir: here node2 lost its
# data_dir/files.manifest while stopped, and its directory changed)
it_signal 2 TERM
it_reap 2 10
exit2=$IT_EXIT
rm -f "$IT_DIR/node2/files.manifest"
put "$E2" new.cf 'added while node2 was stopped'
it_start_node 2 || it_diag "node2 did not restart"
T1=$(ntree 1) T3=$(ntree 3)
bad=
it_wait_until '[[ "$(files_of 2 | jq -r .held.reason)" == "this node does not hold the published manifest" ]]' 20 ||
    bad+="no hold: $(files_of 2 | jq -c .held); "
grep -q 'not publishing: this node does not hold the published manifest' "$(it_log 2)" || bad+="no warning in node2's log; "
[[ "$(ntree 1)" == "$T1" && "$(ntree 3)" == "$T3" && ! -e $E3/new.cf ]] || bad+="a node changed; "
out=$(it_pmgcm 2 files publish --confirm 2>&1)
rc=$?
((rc == 0)) || bad+="files publish --confirm: exit $rc: $out; "
if [[ -z $bad ]] && it_wait_until '[[ "$(ntree 1)" == "$(tree "$E2")" && "$(ntree 3)" == "$(tree "$E2")" ]] && all_synced' 30; then
    it_ok "node2, master again without its files.manifest and with a new file: holds its directory (status, log) until 'pmgcm files publish --confirm'; then new.cf reaches every node"
else
    it_not_ok "a master that does not hold the published manifest publishes nothing unconfirmed: $bad"
    it_diag "node2 files: $(files_of 2)"
fi

# ---- shutdown ----------------------------------------------------------------------------------------
bad=
[[ $exit3 == 0 ]] || bad+="node3 exit $exit3 at its restart; "
[[ $exit3b == 0 ]] || bad+="node3 exit $exit3b before the promote; "
[[ $exit2 == 0 ]] || bad+="node2 exit $exit2 at its restart; "
[[ $exit1 == 0 ]] || bad+="node1 exit $exit1 before the promote; "
for i in 1 2 3; do
    it_signal "$i" TERM
    it_reap "$i" 10
    [[ $IT_EXIT == 0 ]] || bad+="node$i exit $IT_EXIT; "
done
it_report_shutdown "$bad" 1 2 3
it_plan "$IT_TAPN"
exit 0
