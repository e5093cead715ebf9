#!/usr/bin/env bash
# bench/logshape.sh - would a batched change log make the capture cheaper?
# An experiment on PostgreSQL alone (no pmgcm), for the choice of the log's
# shape (README, "The store at daf21bf"):
#
#   sudo bash bench/logshape.sh                 (as root; ~3 min)
#   BENCH_ROUNDS=5 BENCH_SECONDS=10             (the defaults)
#
# One throwaway PostgreSQL 15 server (the settings of bench/store.sh: fsync
# off, wal_level logical, Unix socket only, run as postgres), one database
# with a published table drained by pg_recvlogical through pgoutput (the
# anchor of bench/store.sh). pgbench commits single-row INSERTs into it
# (4 clients, saturated) in three modes, alternating every round:
#   none      nothing else
#   per-row   a session copies what committed into a log table shaped like
#             pmgcm.log (one row per change, jsonb, two indexes) every 2 ms
#   batched   the same session writes one row per 2 ms batch (the changes
#             as one jsonb array)
# The copying session stands in for pmgcm's capture: it pays for reading
# the new rows back, which pmgcm does not, the same in both modes; what
# differs between per-row and batched is the log's row count (heap and
# index inserts, WAL records, the walsender decoding them). Prints each
# round's tps and the ratios to "none", then the medians.
set -uo pipefail
[[ $(id -u) == 0 ]] || { echo "bench/logshape.sh: run as root (PostgreSQL runs as postgres)" >&2; exit 2; }
BIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
for c in initdb pg_ctl pgbench pg_recvlogical psql; do
    [[ -x $BIN/$c ]] || { echo "bench/logshape.sh: $BIN/$c missing (apt-get install postgresql-15)" >&2; exit 2; }
done
ROUNDS=${BENCH_ROUNDS:-5} SECS=${BENCH_SECONDS:-10}
[[ $ROUNDS =~ ^[1-9][0-9]?$ && $SECS =~ ^[1-9][0-9]{0,2}$ ]] ||
    { echo "bench/logshape.sh: BENCH_ROUNDS 1-99, BENCH_SECONDS 1-999" >&2; exit 2; }
DIR=$(mktemp -d /tmp/pmgcm-logshape.XXXXXX)
chown postgres: "$DIR" && chmod 0700 "$DIR"
RL=
cleanup() {
    [[ -n $RL ]] && kill "$RL" 2>/dev/null
    runuser -u postgres -- "$BIN/pg_ctl" -D "$DIR/d" -m immediate stop >/dev/null 2>&1
    rm -rf "$DIR"
}
trap cleanup EXIT
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$BIN/initdb" -D "$DIR/d" -A trust >/dev/null || exit 1
as_pg "$BIN/pg_ctl" -D "$DIR/d" -l "$DIR/server.log" -w -o "-c listen_addresses='' -k $DIR -c fsync=off -c full_page_writes=off -c wal_level=logical -c max_slot_wal_keep_size=1GB -c shared_buffers=128MB -c max_wal_size=2GB -c max_connections=60 -c log_min_messages=warning" start >/dev/null || exit 1
PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE a" || exit 1
"${PSQL[@]}" -d a <<'SQL' || exit 1
CREATE TABLE bench_ins (id bigserial PRIMARY KEY, sender text, subject text, ts timestamptz NOT NULL DEFAULT now());
CREATE PUBLICATION pub FOR TABLE bench_ins;
-- pmgcm.log's shape (store/sql/setup.sql)
CREATE TABLE log (seq bigint PRIMARY KEY, epoch bigint NOT NULL, op "char" NOT NULL, tbl text, old jsonb, new jsonb, ts timestamptz NOT NULL, last boolean NOT NULL, origin int NOT NULL DEFAULT 0, xid bigint);
CREATE INDEX log_xid ON log (xid) WHERE xid IS NOT NULL;
-- a batch a row
CREATE TABLE logb (seq bigint PRIMARY KEY, first bigint NOT NULL, epoch bigint NOT NULL, ts timestamptz NOT NULL, xids bigint[], entries jsonb);
CREATE TABLE pos (k int PRIMARY KEY, v bigint);
INSERT INTO pos VALUES (1, 0);
-- the stand-in: every 2 ms, what committed since goes into the log
CREATE PROCEDURE cap(mode int, secs float8) LANGUAGE plpgsql AS $p$
DECLARE last bigint; hi bigint; t0 timestamptz := clock_timestamp();
BEGIN
  SELECT v INTO last FROM pos WHERE k = 1;
  WHILE clock_timestamp() < t0 + secs * interval '1 s' LOOP
    SELECT coalesce(max(id), last) INTO hi FROM bench_ins WHERE id > last;
    IF hi > last THEN
      IF mode = 1 THEN
        INSERT INTO log SELECT b.id, 1, 'I', 'public.bench_ins', NULL, to_jsonb(b), now(), true, 0, b.id % 4294967296 FROM bench_ins b WHERE b.id > last AND b.id <= hi;
      ELSE
        INSERT INTO logb SELECT hi, last + 1, 1, now(), array_agg(b.id % 4294967296), jsonb_agg(jsonb_build_array('I', 'public.bench_ins', NULL, to_jsonb(b), true)) FROM bench_ins b WHERE b.id > last AND b.id <= hi;
      END IF;
      UPDATE pos SET v = hi WHERE k = 1;
      last := hi;
    END IF;
    COMMIT;
    PERFORM pg_sleep(0.002);
  END LOOP;
END $p$;
SQL
"$BIN/pg_recvlogical" -h "$DIR" -U postgres -d a --slot s --create-slot -P pgoutput >/dev/null 2>&1 || { echo "pg_recvlogical --create-slot failed" >&2; exit 1; }
"$BIN/pg_recvlogical" -h "$DIR" -U postgres -d a --slot s --start -f "$DIR/recv.out" -o proto_version=1 -o publication_names=pub 2>/dev/null &
RL=$!
echo "INSERT INTO bench_ins (sender, subject) VALUES ('sender@example.com', 'a subject line of a mail about invoices');" >"$DIR/ins.sql"
declare -A T
R1=() R2=()
echo "bench/logshape.sh: $ROUNDS rounds of 3 x ${SECS}s, pgbench 4 clients; load $(cut -d' ' -f1-3 /proc/loadavg)"
for k in $(seq "$ROUNDS"); do
    for m in 0 1 2; do
        "${PSQL[@]}" -d a -c "UPDATE pos SET v = (SELECT coalesce(max(id), 0) FROM bench_ins)" || exit 1
        cp=
        if ((m > 0)); then "${PSQL[@]}" -d a -c "CALL cap($m, $SECS + 1)" & cp=$!; fi
        T[$m:$k]=$("$BIN/pgbench" -n -c 4 -j 4 -T "$SECS" -f "$DIR/ins.sql" -h "$DIR" -U postgres a 2>&1 |
                   sed -n 's/^tps = \([0-9.]*\) (without.*/\1/p')
        [[ -n $cp ]] && wait "$cp"
        [[ -n ${T[$m:$k]} ]] || { echo "pgbench gave no tps" >&2; exit 1; }
        : >"$DIR/recv.out"
        "${PSQL[@]}" -d a -c "CHECKPOINT" || exit 1
    done
    r1=$(awk -v a="${T[1:$k]}" -v b="${T[0:$k]}" 'BEGIN { printf "%.2f", a / b }')
    r2=$(awk -v a="${T[2:$k]}" -v b="${T[0:$k]}" 'BEGIN { printf "%.2f", a / b }')
    R1+=("$r1") R2+=("$r2")
    printf 'round %d: none %.0f tps, per-row log %.0f (%s), batched log %.0f (%s)\n' \
        "$k" "${T[0:$k]}" "${T[1:$k]}" "$r1" "${T[2:$k]}" "$r2"
done
med() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
"${PSQL[@]}" -d a -At -c "SELECT 'log rows ' || (SELECT count(*) FROM log) || '; batched rows ' || (SELECT count(*) FROM logb) || ' holding ' || (SELECT coalesce(sum(seq - first + 1), 0) FROM logb) || ' changes'"
echo "median ratio to none: per-row log $(med "${R1[@]}"), batched log $(med "${R2[@]}")"
