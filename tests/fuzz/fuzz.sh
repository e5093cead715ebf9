#!/usr/bin/env bash
# tests/fuzz/fuzz.sh - `make fuzz`: build every fuzz target with libFuzzer
# and fuzz it. Called by the rule in tests/fuzz/Makefile.inc:
#
#   fuzz.sh SRCDIR BUILDDIR TARGET...
#
# Environment: MINUTES per target (default 1), FUZZ_JOBS targets at once
# (default 2), FUZZ_CC (clang), FUZZ_CPPFLAGS and FUZZ_LIBS (from the
# build's configure results), FUZZ_NO_RUN=1 builds only.
#
# The library sources (common/, gossip/, net/, membership/, files/,
# daemon/ but pmgclusterd.c, store/ and the protobuf-c
# files generated in the build tree) are compiled with
# -fsanitize=fuzzer-no-link,address,undefined into BUILDDIR/tests/fuzz/
# clang/, each target with -fsanitize=fuzzer. Each run starts from the seed
# corpus tests/fuzz/corpus/TARGET and adds what it finds there (libFuzzer
# keeps only inputs with new coverage); a crash is written to
# tests/fuzz/crashes/TARGET/ and stops that target. Logs:
# BUILDDIR/tests/fuzz/clang/TARGET.log. The last lines give, per target,
# executions, corpus size and crashes.
set -euo pipefail
src=$(cd "$1" && pwd)
bld=$(cd "$2" && pwd)
shift 2
targets=("$@")
MINUTES=${MINUTES:-1}
FUZZ_JOBS=${FUZZ_JOBS:-2}
CC=${FUZZ_CC:-clang}
read -r -a cppflags <<<"${FUZZ_CPPFLAGS:-}"
read -r -a libs <<<"${FUZZ_LIBS:-}"
out=$bld/tests/fuzz/clang
mkdir -p "$out/obj"

command -v "$CC" >/dev/null || { echo "fuzz: $CC not found (bash scripts/deps.sh installs clang)" >&2; exit 1; }

san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined
     -fno-omit-frame-pointer -g -O1)
cflags=(-std=gnu11 -w "${san[@]}" -fsanitize=fuzzer-no-link "${cppflags[@]}")

# ---- the libraries, instrumented --------------------------------------------
libsrc=()
for f in "$src"/common/*.c "$src"/gossip/*.c "$src"/net/*.c "$src"/store/*.c "$src"/membership/*.c "$src"/files/*.c "$src"/daemon/*.c; do
    [[ $(basename "$f") == pmgclusterd.c ]] && continue
    libsrc+=("$f")
done
for f in gossip/gossip net/api membership/meta membership/cluster store/store; do
    libsrc+=("$bld/$f.pb-c.c")
done
# rebuilt when the source, or any header, is newer than its object
newest_h=$(ls -t "$src"/{common,gossip,net,membership,files,daemon,store}/*.h \
               "$bld"/*/*.pb-c.h 2>/dev/null | head -n1)
todo=()
for f in "${libsrc[@]}"; do
    o=$out/obj/$(basename "$(dirname "$f")")-$(basename "$f" .c).o
    if [[ ! -f $o || $f -nt $o || $newest_h -nt $o ]]; then todo+=("$f"); fi
done
echo "fuzz: compiling ${#todo[@]} of ${#libsrc[@]} library sources with $CC"
rm -f "$out/libfuzzlib.a"
export CC out
((${#todo[@]} == 0)) || printf '%s\n' "${todo[@]}" | xargs -P "$FUZZ_JOBS" -I{} sh -c '
    f={}; d=$(basename "$(dirname "$f")"); b=$(basename "$f" .c)
    exec "$CC" "$@" -c "$f" -o "$out/obj/$d-$b.o"' sh "${cflags[@]}"
ar rcs "$out/libfuzzlib.a" "$out"/obj/*.o

# ---- the targets ---------------------------------------------------------------
for t in "${targets[@]}"; do
    echo "fuzz: building $t"
    "$CC" "${cflags[@]}" -fsanitize=fuzzer "$src/tests/fuzz/fuzz_$t.c" \
        "$out/libfuzzlib.a" "${libs[@]}" -o "$out/fuzz_$t"
done
[[ "${FUZZ_NO_RUN:-0}" == 1 ]] && exit 0

# ---- fuzzing -------------------------------------------------------------------
secs=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
run_one() {
    local t=$1
    local corpus=$src/tests/fuzz/corpus/$t crashes=$src/tests/fuzz/crashes/$t
    mkdir -p "$corpus" "$crashes"
    local rc=0
    ( cd "$out" && \
      ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      "./fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
          -max_len=65536 -print_final_stats=1 \
          -artifact_prefix="$crashes/" "$corpus" ) >"$out/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$out/$t.rc"
}
export -f run_one
export src out secs
echo "fuzz: ${#targets[@]} targets, $MINUTES min each, $FUZZ_JOBS at once (logs in $out/)"
printf '%s\n' "${targets[@]}" | xargs -P "$FUZZ_JOBS" -I{} bash -c 'run_one {}'

# ---- summary -------------------------------------------------------------------
fail=0
for t in "${targets[@]}"; do
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log" | tail -n1)
    n=$(find "$src/tests/fuzz/corpus/$t" -type f | wc -l)
    c=$(find "$src/tests/fuzz/crashes/$t" -type f | wc -l)
    rc=$(cat "$out/$t.rc")
    echo "fuzz: $t: ${execs:-?} executions, corpus $n inputs, $c crash files, exit $rc"
    if ((rc != 0 || c > 0)); then fail=1; fi
done
exit $fail
