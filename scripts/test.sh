#!/usr/bin/env bash
# scripts/test.sh - THE test command (CI runs exactly this via .ci/run).
#
#   1. scripts/deps.sh            install missing Debian packages
#   2. autoreconf -fi
#   3. build/      ./configure --enable-werror;  make -j2
#   4. build-san/  ./configure --enable-sanitizers --enable-werror; make -j2
#   5. build-tsan/ ./configure --enable-tsan --enable-werror; make -j2
#   then, side by side (PMGCM_SERIAL=1: one after the other):
#   - make check in build/ and build-san/ (ASan + UBSan, leaks detected)
#   - make check in build-tsan/ over every unit test and the store/files
#     integration tests (ThreadSanitizer; tests/tsan.supp)
#   6. meanwhile valgrind --leak-check=full over every unit test binary of
#      build/ (tests/unit/test_*) and every fuzz corpus replay
#      (tests/fuzz/replay_*)
#   7. and tests/integration/package.sh once (not in `make check`: it builds the
#      Debian package with dpkg-buildpackage, about 2 minutes, the same for
#      every build flavour): install beside a stand-in pmg-api into a
#      throwaway root, a cluster of 2 from the unit's command line, remove,
#      purge
#
# PMGCM_HOG=1 runs every `make check` (the tsan one too) beside busy loops
# that keep every core busy (scripts/hog.sh; PMGCM_HOG_N sets how many):
# the suite must pass on a loaded machine too.
#
# Prints the log of every failing test and ends with one line
# `N passed, N failed` (automake TAP results of both builds, ERROR and XPASS
# counted as failed, plus one check per valgrind run, plus one failure per
# step that could not run at all). Exits non-zero if anything failed.
set -uo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"

# A hung test must not eat CI's budget: each `make check` gets this long.
# (twice that beside the busy loops of PMGCM_HOG=1: everything is slower)
# (side by side, each takes longer than alone: 40 min, 60 with the hogs)
CHECK_TIMEOUT=${PMGCM_CHECK_TIMEOUT:-$([[ ${PMGCM_HOG:-0} == 1 ]] && echo 3600 || echo 2400)}
VALGRIND_TIMEOUT=${PMGCM_VALGRIND_TIMEOUT:-600}

step_failures=()   # steps that could not produce results
passed=0
failed=0

fail_step() { echo "test.sh: FAILED: $*" >&2; step_failures+=("$*"); }

banner() { printf '\n===== %s =====\n' "$*"; }

finish() {
    banner "summary"
    local s
    for s in "${step_failures[@]+"${step_failures[@]}"}"; do
        echo "step failed: $s"
    done
    failed=$((failed + ${#step_failures[@]}))
    echo "$passed passed, $failed failed"
    if ((failed > 0)); then exit 1; fi
    exit 0
}

banner "dependencies"
if ! bash scripts/deps.sh; then
    fail_step "scripts/deps.sh"
    finish
fi

banner "autoreconf -fi"
if ! autoreconf -fi; then
    fail_step "autoreconf -fi"
    finish
fi

# build_flavour DIR LABEL configure-args...: configure, make -j2 and the
# check programs (make -j2 check TESTS=), one flavour after the other: the
# builds are what needs the CPU.
build_flavour() {
    local dir=$1 label=$2
    shift 2
    banner "$label: configure $* && make -j2 (in $dir/)"
    rm -f "$dir/test-suite.log"
    if ! bash scripts/build.sh --reconf "$dir" "$@"; then
        fail_step "$label: build"
        return 1
    fi
    (cd "$dir" && make -j2 check TESTS= >/dev/null 2>&1) || true
    rm -f "$dir/test-suite.log"
    return 0
}

# run_check DIR [make-args...]: `make check` in DIR (the tests one at a
# time), its output to DIR/check.out and its exit code to DIR/check.rc.
# The environment (ASAN_OPTIONS, TSAN_OPTIONS) is the caller's.
run_check() {
    local dir=$1
    shift
    local rc=0 hog=()
    [[ ${PMGCM_HOG:-0} == 1 ]] && hog=(bash "$top/scripts/hog.sh")
    rm -f "$dir/check.rc"
    (cd "$dir" && timeout -k 30 "$CHECK_TIMEOUT" "${hog[@]}" make check "$@") \
        >"$dir/check.out" 2>&1 || rc=$?
    echo "$rc" >"$dir/check.rc"
}

# collect_check DIR LABEL: prints what run_check wrote and records a step
# that could not produce results.
collect_check() {
    local dir=$1 label=$2 rc
    banner "$label: make check (in $dir/)"
    cat "$dir/check.out" 2>/dev/null
    rc=$(cat "$dir/check.rc" 2>/dev/null || echo none)
    if [[ $rc == none ]]; then
        fail_step "$label: make check did not finish"
    elif ((rc == 124 || rc == 137)); then
        fail_step "$label: make check timed out after ${CHECK_TIMEOUT}s"
    elif [[ ! -f "$dir/test-suite.log" ]]; then
        fail_step "$label: make check produced no test-suite.log (exit $rc)"
    elif ((rc != 0)) && ! grep -Eq '^# (FAIL|ERROR|XPASS): *[1-9]' "$dir/test-suite.log"; then
        fail_step "$label: make check exited $rc with no failing test recorded"
    fi
}

# ---- the three builds ------------------------------------------------------------
ok_plain=0 ok_san=0 ok_tsan=0
build_flavour build "build" --enable-werror && ok_plain=1
build_flavour build-san "sanitizers" --enable-sanitizers --enable-werror && ok_san=1
# build-tsan/ (--enable-tsan): every unit test binary, and the integration
# tests whose daemons run the store's and the file mirror's worker threads.
build_flavour build-tsan "tsan" --enable-tsan --enable-werror && ok_tsan=1
TSAN_TESTS=${PMGCM_TSAN_TESTS:-"tests/integration/store.sh tests/integration/files.sh"}
tsan_units=
((ok_tsan)) && tsan_units=$(cd build-tsan && find tests/unit -maxdepth 1 -type f -perm -u+x \
                 -name 'test_*' ! -name '*.*' | sort | tr '\n' ' ')

# ---- the three `make check`s, side by side --------------------------------------
# They wait on daemons, PostgreSQL and timers far more than they compute
# (the plain check: 25 min of wall time for 5 min of CPU), and every
# integration test has its own namespaces, addresses, directories and
# Unix sockets: so the plain, ASan+UBSan and TSan checks run at once, and
# valgrind and the package test beside them. PMGCM_SERIAL=1 runs them one
# after the other (as before: for a slow or odd machine).
check_jobs=()
start_check() { # start_check DIR [NAME=VALUE...] -- [make-args...]
    local dir=$1
    shift
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    if [[ ${PMGCM_SERIAL:-0} == 1 ]]; then
        (for e in "${envs[@]+"${envs[@]}"}"; do export "$e"; done; run_check "$dir" "$@")
    else
        (for e in "${envs[@]+"${envs[@]}"}"; do export "$e"; done; run_check "$dir" "$@") &
        check_jobs+=($!)
    fi
}
((ok_plain)) && start_check build -- --
((ok_san)) && start_check build-san ASAN_OPTIONS=detect_leaks=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 -- --
((ok_tsan)) && start_check build-tsan \
    "TSAN_OPTIONS=halt_on_error=0 exitcode=66 suppressions=$top/tests/tsan.supp" \
    -- TESTS="$tsan_units $TSAN_TESTS"

# ---- valgrind over the unit test binaries of the plain build -----------------
banner "valgrind: unit test binaries of build/"
vg_pass=0
vg_fail=0
vg_failed_logs=()
if [[ -d build/tests/unit ]]; then
    mkdir -p build/valgrind
    while IFS= read -r bin; do
        name=${bin#build/}
        log=build/valgrind/$(basename "$bin").log
        rc=0
        (cd build && srcdir="$top" top_srcdir="$top" abs_top_srcdir="$top" abs_top_builddir="$top/build" \
            timeout -k 10 "$VALGRIND_TIMEOUT" valgrind -q --error-exitcode=1 \
            --leak-check=full --track-origins=yes "./$name") >"$log" 2>&1 || rc=$?
        if ((rc == 0)); then
            echo "PASS: valgrind $name"
            vg_pass=$((vg_pass + 1))
        else
            echo "FAIL: valgrind $name (exit $rc, log $log)"
            vg_fail=$((vg_fail + 1))
            vg_failed_logs+=("$log")
        fi
    done < <(find build/tests/unit build/tests/fuzz -maxdepth 1 -type f \
             -perm -u+x \( -name 'test_*' -o -name 'replay_*' \) \
             ! -name '*.*' 2>/dev/null | sort)
fi
if ((vg_pass + vg_fail == 0)); then
    echo "valgrind: no unit test binaries found under build/tests/unit"
fi

# ---- the Debian package (tests/integration/package.sh) -------------------------
banner "package: tests/integration/package.sh (dpkg-buildpackage, install, a cluster of 2, remove, purge)"
pkg_pass=0
pkg_fail=0
PKG_LOG=build/package.log
if [[ -x build/daemon/pmgclusterd ]]; then
    rc=0
    (cd build && abs_top_builddir="$top/build" abs_top_srcdir="$top" \
        timeout -k 30 "$CHECK_TIMEOUT" bash "$top/tests/integration/package.sh") >"$PKG_LOG" 2>&1 || rc=$?
    pkg_pass=$(grep -c '^ok ' "$PKG_LOG")
    pkg_fail=$(grep -c '^not ok ' "$PKG_LOG")
    plan=$(sed -n 's/^1\.\.\([0-9][0-9]*\).*/\1/p' "$PKG_LOG" | head -n1)
    grep -E '^(ok|not ok|Bail out!|1\.\.)' "$PKG_LOG"
    if ((rc != 0 && pkg_fail == 0)) || [[ -z "$plan" ]] ||
        { ((plan > 0)) && ((pkg_pass + pkg_fail != plan)); }; then
        fail_step "package.sh: exit $rc, plan ${plan:-none}, $pkg_pass ok, $pkg_fail not ok (log $PKG_LOG)"
        vg_failed_logs+=("$PKG_LOG")
    elif ((pkg_fail > 0)); then
        vg_failed_logs+=("$PKG_LOG")
    fi
else
    fail_step "package.sh: no build/ to run it from"
fi

# ---- the checks' results ----------------------------------------------------------
banner "waiting for the make checks"
for j in "${check_jobs[@]+"${check_jobs[@]}"}"; do wait "$j"; done
((ok_plain)) && collect_check build "build"
((ok_san)) && collect_check build-san "sanitizers"
((ok_tsan)) && collect_check build-tsan "tsan"

# ---- logs of failing tests ---------------------------------------------------
for dir in build build-san build-tsan; do
    [[ -d "$dir" ]] || continue
    while IFS= read -r trs; do
        if grep -Eq '^:global-test-result: (FAIL|ERROR|XPASS)' "$trs"; then
            logf=${trs%.trs}.log
            banner "FAILED: $logf"
            if [[ -f "$logf" ]]; then
                head -c 60000 "$logf"
                echo
            fi
        fi
    done < <(find "$dir" -name '*.trs' | sort)
done
for log in "${vg_failed_logs[@]+"${vg_failed_logs[@]}"}"; do
    banner "FAILED: $log"
    head -c 60000 "$log"
    echo
done

# ---- totals ------------------------------------------------------------------
banner "results"
count() { # count FIELD FILE -> the number after "# FIELD:"
    sed -n "s/^# $1: *\([0-9][0-9]*\).*/\1/p" "$2" | head -n1
}
for dir in build build-san build-tsan; do
    f=$dir/test-suite.log
    [[ -f "$f" ]] || continue
    p=$(count PASS "$f"); fl=$(count FAIL "$f"); er=$(count ERROR "$f"); xp=$(count XPASS "$f")
    sk=$(count SKIP "$f"); xf=$(count XFAIL "$f")
    p=${p:-0} fl=${fl:-0} er=${er:-0} xp=${xp:-0} sk=${sk:-0} xf=${xf:-0}
    echo "$dir: pass $p, fail $fl, error $er, xpass $xp, skip $sk, xfail $xf"
    passed=$((passed + p))
    failed=$((failed + fl + er + xp))
done
echo "valgrind: pass $vg_pass, fail $vg_fail"
passed=$((passed + vg_pass))
failed=$((failed + vg_fail))
echo "package.sh: pass $pkg_pass, fail $pkg_fail"
passed=$((passed + pkg_pass))
failed=$((failed + pkg_fail))
finish
