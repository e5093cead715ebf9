/*
 * bench/store_lag.c - delta lag of the store (bench/store.sh, figure 2).
 *
 *   store_lag --master CONNINFO --follower CONNINFO [--follower ...]
 *             --rate R --seconds S --start-id ID [--table T]
 *             [--poll-ms MS | --channel NAME] [--drain-s S] [--raw FILE]
 *             [--numbered CI]
 *
 * A writer commits one single-row INSERT per transaction on the master at
 * a fixed rate R (libpq pipeline mode: every statement followed by a sync
 * is its own transaction; sends are paced on a schedule t0 + k/R, so a
 * slow server shows as queueing, not as a lower offered rate). Ids are
 * sequential from ID; the table is T (default bench_lag: id bigint primary
 * key, ...). The commit time of row k is when its sync's result arrives
 * (the client knows it committed); the local commit latency is that minus
 * its send time.
 *
 * Visibility on a follower is pushed (the default): one thread per
 * follower LISTENs on channel bench_lag (--channel) on its own connection
 * and timestamps each notification when it arrives; bench/store.sh installs
 * on each follower an AFTER INSERT statement trigger, ENABLE ALWAYS (the
 * store applies with session_replication_role = replica), that notifies
 * the max id of the statement's rows. A notification is sent when the
 * apply's transaction commits and read by the listening backend only once
 * that transaction is visible, so its receipt time is >= the visible time;
 * the follower runs no query for it (no observer tax on 2 cores). With
 * --poll-ms MS instead one thread per follower runs `SELECT max(id)` every
 * MS ms on its own connection, the poll's answer time being the visible
 * time. Either way: since the master commits the rows in id order and the
 * store applies them in commit order, every id up to the max is visible.
 * The writer starts once every follower's thread is connected (listening).
 * With no --follower only the commit latency is measured (the anchor). Lag of row k on
 * a follower = visible - commit; on "all" nodes = the max over followers.
 * After the writer ends the pollers wait up to S s (default 30) for the
 * last row; a row never seen counts as an infinite lag ("inf"). The
 * schedule lasts S seconds: rows a saturated master did not take by then
 * are never sent (achieved_rate below offered_rate). Every clock is CLOCK_MONOTONIC of this one process.
 *
 * Output: key=value lines (bench/store.sh parses them), times in ms:
 *   writer sent=N acked=N offered_rate=R achieved_rate=R write_s=S
 *   commit p50=.. p90=.. p99=.. max=..
 *   follower1 seen=N p50=.. p90=.. p99=.. max=.. rows=N
 *   numbered seen=N p50=.. ...   (with --numbered CONNINFO: the master's
 *                                 pmgcm.log holds the change, numbered)
 *   all seen=N p50=.. p90=.. p99=.. max=..
 * --raw FILE: one line per row: id commit_lat_ms lag_f1_ms lag_f2_ms ...
 *   ack_unix_us (the acknowledgement on CLOCK_REALTIME, to set beside
 *   PostgreSQL's commit timestamps)
 * Exit 0 when every row was seen on every follower, 1 otherwise, 2 usage.
 */
#define _GNU_SOURCE /* ppoll */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXF 8
#define NONE INT64_MIN

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(int64_t t)
{
    struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static const char *table = "bench_lag";
static long long start_id;
static size_t n_rows;           /* planned: rate * seconds */
static atomic_size_t n_final;   /* sent, once the writer is done */
static int64_t *t_send, *t_ack;      /* per row, ns */
static int64_t *t_vis[MAXF];          /* per follower per row */
static atomic_int writer_done, writer_failed;
static atomic_llong writer_end_ns;
static int drain_s = 30, poll_ms = 0; /* 0: push (LISTEN) */
static const char *channel = "bench_lag";
static atomic_int n_ready; /* follower threads connected (listening) */

typedef struct follower {
    int idx;
    const char *conninfo;
    bool numbered; /* probe of the master's change log, not a follower */
    size_t seen;
    long long rows;
    char err[256];
} follower;

static PGconn *connect_db(const char *ci)
{
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "store_lag: connect %s: %s", ci, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Rows up to id m visible at t: the follower's seen count moves. */
/* A follower's watch ends (poll and push alike): every row seen, or every
 * row the writer sent once it is done, or the writer failed, or drain_s
 * after the writer ended (*deadline set then). */
static bool follower_done(size_t seen, int64_t t, int64_t *deadline)
{
    if (seen >= n_rows ||
        (atomic_load(&writer_done) && seen >= atomic_load(&n_final)))
        return true;
    if (atomic_load(&writer_failed)) return true;
    if (atomic_load(&writer_done)) {
        if (!*deadline) *deadline = t + (int64_t)drain_s * 1000000000;
        if (t > *deadline) return true;
    }
    return false;
}

static void saw(follower *f, size_t *seen, long long m, int64_t t)
{
    long long hi = start_id + (long long)n_rows - 1;
    if (m < start_id || m > hi) return; /* another run's rows */
    size_t upto = (size_t)(m - start_id) + 1;
    for (; *seen < upto; (*seen)++) t_vis[f->idx][*seen] = t;
}

/* The row count in the run's id range on c, or -1. */
static long long count_rows(PGconn *c)
{
    char cq[256], lo[32], hi[32];
    const char *pv[2] = {lo, hi};
    snprintf(lo, sizeof lo, "%lld", start_id);
    snprintf(hi, sizeof hi, "%lld", start_id + (long long)n_rows - 1);
    snprintf(cq, sizeof cq,
             "SELECT count(*) FROM %s WHERE id BETWEEN $1 AND $2", table);
    PGresult *r = PQexecParams(c, cq, 2, NULL, pv, NULL, NULL, 0);
    long long n = PQresultStatus(r) == PGRES_TUPLES_OK
                      ? atoll(PQgetvalue(r, 0, 0))
                      : -1;
    PQclear(r);
    return n;
}

static void *poller(void *arg)
{
    follower *f = arg;
    PGconn *c = connect_db(f->conninfo);
    char q[256], lo[32], hi[32];
    const char *pv[2] = {lo, hi};
    size_t seen = 0;
    int64_t next = now_ns(), deadline = 0;

    if (!c) {
        snprintf(f->err, sizeof f->err, "connect failed");
        atomic_fetch_add(&n_ready, 1);
        return NULL;
    }
    atomic_fetch_add(&n_ready, 1);
    if (f->numbered)
        snprintf(q, sizeof q,
                 "SELECT coalesce((SELECT (new->>'id')::bigint FROM pmgcm.log"
                 " WHERE tbl = 'public.%s' AND (new->>'id')::bigint BETWEEN"
                 " $1 AND $2 ORDER BY seq DESC LIMIT 1), 0)",
                 table);
    else
        snprintf(q, sizeof q,
                 "SELECT coalesce(max(id), 0) FROM %s WHERE id BETWEEN $1 AND"
                 " $2",
                 table);
    snprintf(lo, sizeof lo, "%lld", start_id);
    snprintf(hi, sizeof hi, "%lld", start_id + (long long)n_rows - 1);
    for (;;) {
        sleep_until(next);
        next += (int64_t)(poll_ms > 0 ? poll_ms : 2) * 1000000;
        PGresult *r = PQexecParams(c, q, 2, NULL, pv, NULL, NULL, 0);
        int64_t t = now_ns();
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            snprintf(f->err, sizeof f->err, "%s", PQerrorMessage(c));
            PQclear(r);
            break;
        }
        long long m = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
        saw(f, &seen, m, t);
        if (follower_done(seen, t, &deadline)) break;
        if (t > next) next = t; /* fell behind: no burst of polls */
    }
    f->seen = seen;
    if (!f->numbered) f->rows = count_rows(c);
    PQfinish(c);
    return NULL;
}

/* Push: LISTEN on the follower, each notification's payload is the max id
 * of an applied statement; timestamped when read off the socket. */
static void *listener(void *arg)
{
    follower *f = arg;
    PGconn *c = connect_db(f->conninfo);
    size_t seen = 0;
    int64_t deadline = 0;
    char q[160];

    if (!c) {
        snprintf(f->err, sizeof f->err, "connect failed");
        atomic_fetch_add(&n_ready, 1);
        return NULL;
    }
    char *ch = PQescapeIdentifier(c, channel, strlen(channel));
    snprintf(q, sizeof q, "LISTEN %s", ch ? ch : "bench_lag");
    PQfreemem(ch);
    PGresult *r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(f->err, sizeof f->err, "%s", PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        atomic_fetch_add(&n_ready, 1);
        return NULL;
    }
    PQclear(r);
    atomic_fetch_add(&n_ready, 1);
    int fd = PQsocket(c);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, 50);
        int64_t t = now_ns();
        if (pr < 0 && errno != EINTR) {
            snprintf(f->err, sizeof f->err, "poll: %s", strerror(errno));
            break;
        }
        if (pr > 0) {
            if (!PQconsumeInput(c)) {
                snprintf(f->err, sizeof f->err, "%s", PQerrorMessage(c));
                break;
            }
            PGnotify *n;
            while ((n = PQnotifies(c))) {
                saw(f, &seen, atoll(n->extra), t);
                PQfreemem(n);
            }
        }
        if (follower_done(seen, t, &deadline)) break;
    }
    f->seen = seen;
    f->rows = count_rows(c);
    PQfinish(c);
    return NULL;
}

/* The writer: pipelined, paced single-row transactions. 0 or -1. */
static int writer(const char *ci, double rate, size_t *acked_out,
                  size_t *sent_out)
{
    PGconn *c = connect_db(ci);
    char q[512];
    size_t sent = 0, acked = 0, maxq = 20000;
    int rc = 0;

    if (!c) return -1;
    snprintf(q, sizeof q,
             "INSERT INTO %s (id, sender, receiver, subject, bytes, spamlevel)"
             " VALUES ($1::bigint, 'sender' || ($1::bigint %% 977) || '@example.com',"
             " 'user' || ($1::bigint %% 4099) || '@example.org',"
             " 'Subject of message ' || $1::bigint || ' - quarterly report',"
             " ($1::bigint %% 100000)::int + 1200,"
             " (($1::bigint %% 97) / 10.0)::real)",
             table);
    PGresult *r = PQprepare(c, "ins", q, 1, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "store_lag: prepare: %s", PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
        return -1;
    }
    PQclear(r);
    if (!PQenterPipelineMode(c) || PQsetnonblocking(c, 1) != 0) {
        fprintf(stderr, "store_lag: pipeline mode: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    int fd = PQsocket(c);
    double step = 1e9 / rate;
    int64_t t0 = now_ns() + 1000000;
    /* the schedule ends at t0 + n_rows / rate: what a saturated server did
     * not take by then is never sent (achieved_rate < offered_rate) */
    int64_t t_stop = t0 + (int64_t)(step * (double)n_rows);
    size_t limit = n_rows;
    while (acked < limit) {
        int64_t now = now_ns();
        if (now >= t_stop && limit > sent) limit = sent;
        while (sent < limit && sent - acked < maxq &&
               now >= t0 + (int64_t)(step * (double)sent)) {
            char id[32];
            const char *pv[1] = {id};
            snprintf(id, sizeof id, "%lld", start_id + (long long)sent);
            if (!PQsendQueryPrepared(c, "ins", 1, pv, NULL, NULL, 0) ||
                !PQpipelineSync(c)) {
                fprintf(stderr, "store_lag: send: %s", PQerrorMessage(c));
                rc = -1;
                goto out;
            }
            t_send[sent++] = now_ns();
        }
        int fl = PQflush(c);
        if (fl < 0) {
            fprintf(stderr, "store_lag: flush: %s", PQerrorMessage(c));
            rc = -1;
            goto out;
        }
        if (!PQconsumeInput(c)) {
            fprintf(stderr, "store_lag: read: %s", PQerrorMessage(c));
            rc = -1;
            goto out;
        }
        while (acked < sent && !PQisBusy(c)) {
            PGresult *res = PQgetResult(c);
            if (!res) continue; /* end of one statement's results */
            ExecStatusType s = PQresultStatus(res);
            if (s == PGRES_PIPELINE_SYNC) {
                t_ack[acked++] = now_ns();
            } else if (s != PGRES_COMMAND_OK) {
                fprintf(stderr, "store_lag: insert of id %lld: %s",
                        start_id + (long long)acked, PQresultErrorMessage(res));
                PQclear(res);
                rc = -1;
                goto out;
            }
            PQclear(res);
        }
        /* wait for an answer, the socket to drain or the next send */
        int64_t wake = sent < limit
                           ? t0 + (int64_t)(step * (double)sent)
                           : now_ns() + 100000000;
        int64_t d = wake - now_ns();
        if (sent - acked >= maxq) d = 100000000;
        if (d > 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (fl == 1) p.events |= POLLOUT;
            struct timespec ts = {.tv_sec = d / 1000000000,
                                  .tv_nsec = d % 1000000000};
            ppoll(&p, 1, &ts, NULL);
        }
    }
out:
    *acked_out = acked;
    *sent_out = sent;
    PQfinish(c);
    return rc;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* p50/p90/p99/max of v[0..n) (sorted in place), in ms. */
static void pct(const char *label, int64_t *v, size_t n, const char *extra)
{
    if (n == 0) {
        printf("%s seen=0 p50=nan p90=nan p99=nan max=nan%s\n", label,
               extra ? extra : "");
        return;
    }
    qsort(v, n, sizeof *v, cmp_i64);
    size_t seen = 0;
    while (seen < n && v[seen] != INT64_MAX) seen++;
    char p[4][32];
    const double qs[4] = {0.50, 0.90, 0.99, 1.0};
    for (int i = 0; i < 4; i++) {
        int64_t x = v[(size_t)((double)(n - 1) * qs[i])];
        if (x == INT64_MAX) snprintf(p[i], sizeof p[i], "inf");
        else snprintf(p[i], sizeof p[i], "%.2f", (double)x / 1e6);
    }
    printf("%s seen=%zu p50=%s p90=%s p99=%s max=%s%s\n", label, seen, p[0],
           p[1], p[2], p[3], extra ? extra : "");
}

static void usage(void)
{
    fprintf(stderr, "usage: store_lag --master CONNINFO --follower CONNINFO"
                    " [--follower ...] --rate R --seconds S --start-id ID"
                    " [--table T] [--poll-ms MS | --channel NAME] [--drain-s S]"
                    " [--raw FILE] [--numbered CONNINFO]\n"
                    "  no --follower: the commit latency only\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *master = NULL, *raw = NULL;
    follower fs[MAXF];
    int nf = 0;
    double rate = 0, secs = 0;

    memset(fs, 0, sizeof fs);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--master")) master = v;
        else if (!strcmp(a, "--follower") && nf < MAXF) {
            fs[nf].idx = nf;
            fs[nf++].conninfo = v;
        } else if (!strcmp(a, "--numbered") && nf < MAXF) {
            fs[nf].idx = nf;
            fs[nf].numbered = true;
            fs[nf++].conninfo = v;
        } else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--seconds")) secs = atof(v);
        else if (!strcmp(a, "--start-id")) start_id = atoll(v);
        else if (!strcmp(a, "--table")) table = v;
        else if (!strcmp(a, "--poll-ms")) poll_ms = atoi(v);
        else if (!strcmp(a, "--channel")) channel = v;
        else if (!strcmp(a, "--drain-s")) drain_s = atoi(v);
        else if (!strcmp(a, "--raw")) raw = v;
        else usage();
    }
    if (!master || rate <= 0 || secs <= 0 || poll_ms < 0) usage();
    n_rows = (size_t)(rate * secs);
    if (n_rows == 0) usage();
    t_send = calloc(n_rows, sizeof(int64_t));
    t_ack = calloc(n_rows, sizeof(int64_t));
    for (int f = 0; f < nf; f++) {
        t_vis[f] = malloc(n_rows * sizeof(int64_t));
        if (!t_vis[f]) return 1;
        for (size_t k = 0; k < n_rows; k++) t_vis[f][k] = NONE;
    }
    if (!t_send || !t_ack) return 1;

    pthread_t th[MAXF];
    for (int f = 0; f < nf; f++)
        if (pthread_create(&th[f], NULL,
                           fs[f].numbered || poll_ms > 0 ? poller : listener,
                           &fs[f]) != 0)
            return 1;
    /* every follower watched before the first row is sent */
    while (atomic_load(&n_ready) < nf) sleep_until(now_ns() + 1000000);
    size_t acked = 0, sent = 0;
    int64_t w0 = now_ns();
    int wrc = writer(master, rate, &acked, &sent);
    int64_t w1 = now_ns();
    atomic_store(&n_final, sent);
    atomic_store(&writer_end_ns, w1);
    if (wrc != 0) atomic_store(&writer_failed, 1);
    atomic_store(&writer_done, 1);
    for (int f = 0; f < nf; f++) pthread_join(th[f], NULL);

    double ws = (double)(w1 - w0) / 1e9;
    printf("writer planned=%zu sent=%zu acked=%zu offered_rate=%.0f"
           " achieved_rate=%.0f write_s=%.2f ok=%d\n",
           n_rows, sent, acked, rate, ws > 0 ? (double)acked / ws : 0, ws,
           wrc == 0);
    int64_t *v = malloc(n_rows * sizeof(int64_t));
    if (!v) return 1;
    for (size_t k = 0; k < acked; k++) v[k] = t_ack[k] - t_send[k];
    pct("commit", v, acked, NULL);
    bool all_seen = wrc == 0;
    for (int f = 0; f < nf; f++) {
        size_t n = 0;
        size_t seen = 0;
        for (size_t k = 0; k < acked; k++)
            if (t_vis[f][k] != NONE) {
                int64_t l = t_vis[f][k] - t_ack[k];
                v[n++] = l < 0 ? 0 : l;
                seen++;
            } else {
                v[n++] = INT64_MAX; /* never seen: counts as infinite */
            }
        char lab[32], extra[320];
        int fno = 0;
        for (int g = 0; g <= f; g++) fno += !fs[g].numbered;
        if (fs[f].numbered) snprintf(lab, sizeof lab, "numbered");
        else snprintf(lab, sizeof lab, "follower%d", fno);
        int o = fs[f].numbered
                    ? 0
                    : snprintf(extra, sizeof extra, " rows=%lld", fs[f].rows);
        snprintf(extra + o, sizeof extra - (size_t)o, "%s%s",
                 fs[f].err[0] ? " error=" : "", fs[f].err);
        for (char *p = extra; *p; p++)
            if (*p == '\n') *p = ' ';
        pct(lab, v, n, extra);
        if (!fs[f].numbered &&
            (seen != acked || fs[f].rows != (long long)acked))
            all_seen = false;
    }
    size_t n = 0;
    for (size_t k = 0; k < acked; k++) {
        int64_t l = 0;
        for (int f = 0; f < nf; f++) {
            if (fs[f].numbered) continue;
            if (t_vis[f][k] == NONE) { l = INT64_MAX; break; }
            int64_t x = t_vis[f][k] - t_ack[k];
            if (x > l) l = x;
        }
        v[n++] = l;
    }
    if (nf > 0) pct("all", v, n, NULL);
    if (raw) {
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        int64_t mono_to_unix_us =
            ((int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec - now_ns()) / 1000;
        FILE *fp = fopen(raw, "w");
        if (fp) {
            for (size_t k = 0; k < acked; k++) {
                fprintf(fp, "%lld %.3f", start_id + (long long)k,
                        (double)(t_ack[k] - t_send[k]) / 1e6);
                for (int f = 0; f < nf; f++)
                    if (t_vis[f][k] == NONE) fprintf(fp, " -");
                    else fprintf(fp, " %.3f",
                                 (double)(t_vis[f][k] - t_ack[k]) / 1e6);
                fprintf(fp, " %lld\n",
                        (long long)(t_ack[k] / 1000 + mono_to_unix_us));
            }
            fclose(fp);
        }
    }
    return all_seen ? 0 : 1;
}
