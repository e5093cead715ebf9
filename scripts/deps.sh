#!/usr/bin/env bash
# scripts/deps.sh - install (only) the Debian packages pmgcm needs that are
# missing. Idempotent and quiet; fails loudly. Needs root (or sudo) when
# something is missing. Used by scripts/test.sh, scripts/demo.sh, .ci/run.
#
#   bash scripts/deps.sh            build + test + benchmark packages
#   PMGCM_DEPS_QUIET=0 bash ...     show apt-get's output
set -euo pipefail

# Build: compiler, autotools, libraries.
BUILD_PKGS=(build-essential autoconf automake libtool pkg-config
            libuv1-dev libprotobuf-c-dev protobuf-c-compiler libmbedtls-dev
            libpq-dev libjansson-dev liblz4-dev)
# Tests: JSON queries, network namespaces, process tools, leak checks, and
# python3 (integration helpers speak raw control-socket requests and drive
# pmgcm on a pty with it).
TEST_PKGS=(jq iproute2 procps valgrind python3)
# pmgcm in a real terminal (tests/integration/cliterm.sh: join's progress
# line at 80 and 132 columns).
TEST_PKGS+=(tmux)
# Status port tests (tests/integration/haproxy.sh): HTTP client, the real
# load balancer, promtool (Debian's prometheus package).
TEST_PKGS+=(curl haproxy prometheus)
# The cluster panel in a real browser (tests/integration/panel.sh):
# Debian's headless Chromium, its chromedriver, and the selenium bindings
# for Debian's python3 (/usr/bin/python3) that drive it.
TEST_PKGS+=(chromium chromium-driver python3-selenium)
# Fuzzing (make fuzz): clang with libFuzzer (Debian 12's clang 14 ships it).
TEST_PKGS+=(clang)
# Benchmark anchor (bench/detect, bench/soak compare against Serf).
BENCH_PKGS=(serf python3-msgpack)
# Services: every test node gets its own throwaway PostgreSQL 15 server
# (store/; server binaries in /usr/lib/postgresql/15/bin).
SERVICE_PKGS=(postgresql-15 postgresql-client-15)

# The Debian package (debian/, tests/integration/package.sh):
# dpkg-buildpackage's debhelper, and lintian to check the .deb.
PACKAGE_PKGS=(debhelper lintian)

want=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${BENCH_PKGS[@]}" "${SERVICE_PKGS[@]}"
      "${PACKAGE_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$st" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

echo "deps: installing ${missing[*]}" >&2
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: need root to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
out=$(mktemp)
trap 'rm -f "$out"' EXIT
run() {
    if [[ "${PMGCM_DEPS_QUIET:-1}" == 0 ]]; then
        "${SUDO[@]}" "$@"
    elif ! "${SUDO[@]}" "$@" >"$out" 2>&1; then
        echo "deps: FAILED: $*" >&2
        tail -n 40 "$out" >&2
        exit 1
    fi
}
run apt-get update -q
run apt-get install -y -q --no-install-recommends "${missing[@]}"

# Verify: every package is now installed.
for p in "${missing[@]}"; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    if [[ "$st" != "install ok installed" ]]; then
        echo "deps: FAILED: package $p is still not installed" >&2
        exit 1
    fi
done
echo "deps: installed ${missing[*]}" >&2
