#!/usr/bin/env bash
# tests/integration/storelib.sh - the store as a library: two throwaway
# PostgreSQL servers (pg.sh, wal_level = logical), then
# tests/integration/store_pair (two stores back to back over an in-memory
# pst_link, in one process: see store_pair.c), whose TAP output this is.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/pg.sh"
[[ $(id -u) == 0 ]] || { echo "1..0 # SKIP the store library test needs root (PostgreSQL runs as postgres)"; exit 0; }
[[ -x "${PG_BINDIR:-}/initdb" ]] || { echo "1..0 # SKIP PostgreSQL server not installed"; exit 0; }
PAIR=${abs_top_builddir:-$here/../..}/tests/integration/store_pair
[[ -x "$PAIR" ]] || it_bail "missing $PAIR (make check builds it)"
IT_NETNS=0 it_init 0
pg_init
pg_start 1 && pg_start 2 || it_bail "PostgreSQL did not start"
export PAIR_CI_A="host=$(pg_sock 1) user=postgres" PAIR_CI_B="host=$(pg_sock 2) user=postgres"
"$PAIR"
