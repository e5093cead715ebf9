#!/usr/bin/env bash
# scripts/hog.sh - runs a command while busy loops keep every CPU core busy,
# so the tests meet a loaded machine as often as an idle one:
#
#   bash scripts/hog.sh COMMAND [ARGS...]       e.g. make check
#   PMGCM_HOG_N=4 bash scripts/hog.sh COMMAND   4 busy loops instead
#
# Starts PMGCM_HOG_N (default: the number of online cores, nproc) shell
# busy loops at the default priority (not niced: they compete with the
# tests on equal terms), runs COMMAND, then stops exactly those loops (by
# their process ids; also when COMMAND fails or the script is
# interrupted). Exit status: COMMAND's. `make check-hog` runs `make check`
# this way; `PMGCM_HOG=1 bash scripts/test.sh` runs both make checks of
# the suite this way.
set -uo pipefail
(($# > 0)) || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
n=${PMGCM_HOG_N:-$(nproc 2>/dev/null || echo 2)}
[[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 64)) ||
    { echo "hog: PMGCM_HOG_N must be 1..64, not '$n'" >&2; exit 2; }
pids=()
stop_hogs() {
    local p
    for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null; done
    pids=()
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM HUP
for ((i = 0; i < n; i++)); do
    bash -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &
    pids+=("$!")
done
echo "hog: $n busy loop(s) (pids ${pids[*]}) beside: $*" >&2
"$@"
rc=$?
stop_hogs
echo "hog: stopped; the command exited $rc" >&2
exit "$rc"
