#!/usr/bin/env bash
# tests/layout.sh - the layout stays true: every library folder includes
# only its own headers and those of the folders it may depend on
# (DESIGN.md "Layout", README "Layout"), and those arrows have no cycle.
#
#   common  <- gossip <- membership <- files <- daemon
#   common  <- net    <- membership
#   store   <- daemon
#   cli -> (control socket, HTTP) -> daemon: cli includes no daemon header
#   store   <- cli (pmgcm detach works on a database with no daemon)
#
# A folder may use what the folders it depends on use (the arrows are
# transitive); common/ is the base every library may use, and depends on
# nothing of ours. Output is TAP: one point per folder, then the cycle
# check, then a check that no source includes one of ours without its
# folder (which would hide an arrow).
set -u
top=${abs_top_srcdir:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# the direct arrows: folder -> the folders it may include
declare -A deps=(
    [common]=""
    [gossip]="common"
    [net]="common"
    [store]="common"
    [membership]="common gossip net"
    [files]="membership"
    [daemon]="files membership store"
    [cli]="membership store"
)
folders=(common gossip net store membership files daemon cli)

# the transitive closure of the arrows, and whether they hold a cycle
declare -A allowed=()
cycle=""
reach=""
closure() { # closure FOLDER PATH: adds every folder FOLDER reaches to reach
    local f=$1 path=$2 d
    for d in ${deps[$f]}; do
        if [[ " $path " == *" $d "* ]]; then
            cycle="$path $d"
            continue
        fi
        [[ " $reach " == *" $d "* ]] || reach="$reach $d"
        closure "$d" "$path $d"
    done
}
for f in "${folders[@]}"; do
    reach=""
    closure "$f" "$f"
    allowed[$f]=" $f $(echo $reach | tr ' ' '\n' | sort | tr '\n' ' ')"
done

n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }

echo "1..$(( ${#folders[@]} + 2 ))"
for f in "${folders[@]}"; do
    bad=()
    if [[ ! -d "$top/$f" ]]; then
        not_ok "$f/: the folder is missing"
        continue
    fi
    while IFS= read -r line; do
        # file:line:#include "dir/name.h"
        inc=${line#*#include \"}
        inc=${inc%%\"*}
        dir=${inc%%/*}
        [[ " ${folders[*]} " == *" $dir "* ]] || continue # not one of ours
        [[ "${allowed[$f]}" == *" $dir "* ]] && continue
        bad+=("${line%%:*}: $inc")
    done < <(grep -rn --include='*.c' --include='*.h' '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$top/$f" |
             sed "s|^$top/||")
    if ((${#bad[@]} == 0)); then
        ok "$f/ includes only $(echo "${allowed[$f]}" | xargs | sed 's/ /, /g')"
    else
        not_ok "$f/ includes against the arrows: ${bad[*]}"
    fi
done

if [[ -z "$cycle" ]]; then
    ok "the arrows have no cycle"
else
    not_ok "the arrows have a cycle: $cycle"
fi

# `#include "x.h"` without a folder: the arrow check cannot see it
bare=$(cd "$top" && grep -rn --include='*.c' --include='*.h' \
           '^[[:space:]]*#[[:space:]]*include[[:space:]]*"[^/"]*"' "${folders[@]}" 2>/dev/null)
if [[ -z "$bare" ]]; then
    ok "every include of ours names its folder"
else
    not_ok "includes without a folder: $(echo "$bare" | tr '\n' ' ')"
fi
((fails == 0))
