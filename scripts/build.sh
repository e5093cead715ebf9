#!/usr/bin/env bash
# scripts/build.sh - out-of-tree build used by scripts/test.sh and
# scripts/demo.sh.
#
#   bash scripts/build.sh [--reconf] BUILDDIR [configure args...]
#
# Runs `autoreconf -fi` when ./configure is missing, configures BUILDDIR
# (when it has no Makefile yet, or always with --reconf) and runs
# `make -j2` there. Does not run tests.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reconf=0
if [[ "${1:-}" == --reconf ]]; then reconf=1; shift; fi
bdir=${1:?usage: build.sh [--reconf] BUILDDIR [configure args...]}
shift
cd "$top"
if [[ ! -x configure ]]; then
    echo "build: autoreconf -fi" >&2
    autoreconf -fi
fi
mkdir -p "$bdir"
cd "$bdir"
if ((reconf)) || [[ ! -f Makefile ]]; then
    echo "build: configure $* (in $bdir)" >&2
    "$top/configure" "$@" >configure.out 2>&1 || {
        echo "build: configure FAILED (in $bdir); last lines:" >&2
        tail -n 30 configure.out >&2
        exit 1
    }
fi
echo "build: make -j2 (in $bdir)" >&2
make -j2
