/*
 * bench/origin_lag.c - all-to-all replication of per-origin rows
 * (bench/origin.sh).
 *
 *   origin_lag --cid C1 --node CONNINFO1 --cid C2 --node CONNINFO2 ...
 *              --rate R --seconds S [--table T] [--start-id ID]
 *              [--poll-ms MS] [--drain-s S]
 *
 * Every node at once: one writer per node commits single-row INSERTs of its
 * own origin (cid Ci) into T (default bench_orows: (cid int, id bigint) key)
 * at R rows per second per node (libpq pipeline mode, every statement its
 * own transaction, sends paced on the schedule t0 + k/R; a node that cannot
 * keep up shows as achieved < offered). Ids run from ID per origin. The
 * commit time of row k is when its sync's result arrives.
 *
 * One poller per node asks every poll (MS ms, default 2) for the newest id
 * of every other origin (an index lookup per origin). Rows of one origin
 * are committed in id order and applied in origin order, so every id up to
 * that max is visible; its visible time is the poll's answer time. Lag of
 * (row, receiver) = visible - commit; "all" = per row, the slowest of the
 * other nodes. After the writers end the pollers wait up to S s (default
 * 30) for the rest; a row never seen counts as "inf".
 *
 * Output (key=value lines, times in ms):
 *   writerI cid=C acked=N achieved_rate=R
 *   writers nodes=N offered_rate=R achieved_rate=R acked=N write_s=S ok=1
 *   commit p50=.. p90=.. p99=.. max=..
 *   each seen=N p50=.. ...       (every row on every other node)
 *   all seen=N p50=.. ...        (every row on all other nodes)
 *   applied rows=N span_s=S rate=R   (first send -> the last row visible
 *                                     everywhere: rows/s replicated all-to-all)
 *   nodeI rows=N want=N          (rows of the run per node at the end)
 * Exit 0 when every row is on every node, 1 otherwise, 2 usage.
 * Every clock is CLOCK_MONOTONIC of this one process.
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

#define MAXN 8
#define NONE INT64_MIN

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const char *table = "bench_orows";
static long long start_id = 1;
static size_t n_rows; /* planned per origin: rate * seconds */
static int nn;
static const char *ci[MAXN];
static int cid[MAXN];
static double rate, secs;
static int drain_s = 30, poll_ms = 2;
static int64_t *t_send[MAXN], *t_ack[MAXN];
static int64_t *t_vis[MAXN][MAXN]; /* [receiver][origin][k] */
static atomic_size_t acked_n[MAXN];
static atomic_int writers_left, any_failed;
static int64_t t_start;

typedef struct pstate {
    int idx;
    long long rows[MAXN]; /* count per origin at the end */
    char err[256];
} pstate;
static pstate ps[MAXN];
typedef struct wstate {
    int idx;
    size_t sent, acked;
    int64_t w0, w1;
    int rc;
} wstate;
static wstate ws[MAXN];

static PGconn *connect_db(const char *c_)
{
    PGconn *c = PQconnectdb(c_);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "origin_lag: connect %s: %s", c_, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

static void *poller(void *arg)
{
    pstate *p = arg;
    int n = p->idx;
    PGconn *c = connect_db(ci[n]);
    char q[512], arr[256] = "{", lo[32], hi[32];
    const char *pv[3] = {arr, lo, hi};
    size_t seen[MAXN] = {0};
    int64_t next = now_ns(), deadline = 0;

    if (!c) {
        snprintf(p->err, sizeof p->err, "connect failed");
        atomic_store(&any_failed, 1);
        return NULL;
    }
    for (int o = 0; o < nn; o++) {
        size_t l = strlen(arr);
        snprintf(arr + l, sizeof arr - l, "%s%d", o ? "," : "", cid[o]);
    }
    strcat(arr, "}");
    snprintf(lo, sizeof lo, "%lld", start_id);
    snprintf(hi, sizeof hi, "%lld", start_id + (long long)n_rows - 1);
    snprintf(q, sizeof q,
             "SELECT coalesce((SELECT max(id) FROM %s t WHERE t.cid = o.c AND"
             " t.id BETWEEN $2::bigint AND $3::bigint), 0) FROM"
             " unnest($1::int[]) WITH ORDINALITY o(c, i) ORDER BY o.i",
             table);
    for (;;) {
        struct timespec ts = {.tv_sec = next / 1000000000,
                              .tv_nsec = next % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        next += (int64_t)poll_ms * 1000000;
        PGresult *r = PQexecParams(c, q, 3, NULL, pv, NULL, NULL, 0);
        int64_t t = now_ns();
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != nn) {
            snprintf(p->err, sizeof p->err, "%s", PQerrorMessage(c));
            PQclear(r);
            atomic_store(&any_failed, 1);
            break;
        }
        bool done = atomic_load(&writers_left) == 0, all = true;
        for (int o = 0; o < nn; o++) {
            if (o == n) continue;
            long long m = atoll(PQgetvalue(r, o, 0));
            if (m >= start_id) {
                size_t upto = (size_t)(m - start_id) + 1;
                if (upto > n_rows) upto = n_rows;
                for (; seen[o] < upto; seen[o]++) t_vis[n][o][seen[o]] = t;
            }
            if (!done || seen[o] < ws[o].acked) all = false;
        }
        PQclear(r);
        if (done && all) break;
        if (atomic_load(&any_failed)) break;
        if (done) {
            if (!deadline) deadline = t + (int64_t)drain_s * 1000000000;
            if (t > deadline) break;
        }
        if (t > next) next = t;
    }
    for (int o = 0; o < nn; o++) {
        char q2[256], cs[16];
        const char *pv2[3] = {cs, lo, hi};
        snprintf(cs, sizeof cs, "%d", cid[o]);
        snprintf(q2, sizeof q2,
                 "SELECT count(*) FROM %s WHERE cid = $1::int AND id BETWEEN"
                 " $2::bigint AND $3::bigint", table);
        PGresult *r = PQexecParams(c, q2, 3, NULL, pv2, NULL, NULL, 0);
        p->rows[o] = PQresultStatus(r) == PGRES_TUPLES_OK
                         ? atoll(PQgetvalue(r, 0, 0)) : -1;
        PQclear(r);
    }
    PQfinish(c);
    return NULL;
}

static void *writer(void *arg)
{
    wstate *w = arg;
    int n = w->idx;
    PGconn *c = connect_db(ci[n]);
    char q[512];
    size_t sent = 0, acked = 0, maxq = 20000;

    w->rc = -1;
    if (!c) goto done;
    snprintf(q, sizeof q,
             "INSERT INTO %s (cid, id, sender, subject, bytes, spamlevel)"
             " VALUES (%d, $1::bigint, 'sender' || ($1::bigint %% 977) || '@example.com',"
             " 'Subject of message ' || $1::bigint || ' - quarterly report',"
             " ($1::bigint %% 100000)::int + 1200, (($1::bigint %% 97) / 10.0)::real)",
             table, cid[n]);
    PGresult *r = PQprepare(c, "ins", q, 1, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "origin_lag: prepare on node %d: %s", n + 1, PQerrorMessage(c));
        PQclear(r);
        goto out;
    }
    PQclear(r);
    if (!PQenterPipelineMode(c) || PQsetnonblocking(c, 1) != 0) {
        fprintf(stderr, "origin_lag: pipeline mode: %s", PQerrorMessage(c));
        goto out;
    }
    int fd = PQsocket(c);
    double step = 1e9 / rate;
    int64_t t0 = t_start;
    int64_t t_stop = t0 + (int64_t)(step * (double)n_rows);
    size_t limit = n_rows;
    w->w0 = now_ns();
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
                fprintf(stderr, "origin_lag: send: %s", PQerrorMessage(c));
                goto out;
            }
            t_send[n][sent++] = now_ns();
        }
        int fl = PQflush(c);
        if (fl < 0 || !PQconsumeInput(c)) {
            fprintf(stderr, "origin_lag: node %d: %s", n + 1, PQerrorMessage(c));
            goto out;
        }
        while (acked < sent && !PQisBusy(c)) {
            PGresult *res = PQgetResult(c);
            if (!res) continue;
            ExecStatusType s = PQresultStatus(res);
            if (s == PGRES_PIPELINE_SYNC) {
                t_ack[n][acked++] = now_ns();
                atomic_store(&acked_n[n], acked);
            } else if (s != PGRES_COMMAND_OK) {
                fprintf(stderr, "origin_lag: node %d insert of id %lld: %s", n + 1,
                        start_id + (long long)acked, PQresultErrorMessage(res));
                PQclear(res);
                goto out;
            }
            PQclear(res);
        }
        int64_t wake = sent < limit ? t0 + (int64_t)(step * (double)sent)
                                    : now_ns() + 100000000;
        int64_t d = wake - now_ns();
        if (sent - acked >= maxq) d = 100000000;
        if (d > 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (fl == 1) p.events |= POLLOUT;
            struct timespec ts = {.tv_sec = d / 1000000000, .tv_nsec = d % 1000000000};
            ppoll(&p, 1, &ts, NULL);
        }
    }
    w->rc = 0;
out:
    PQfinish(c);
done:
    w->w1 = now_ns();
    w->sent = sent;
    w->acked = acked;
    if (w->rc) atomic_store(&any_failed, 1);
    atomic_fetch_sub(&writers_left, 1);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void pct(const char *label, int64_t *v, size_t n)
{
    if (n == 0) {
        printf("%s seen=0 p50=nan p90=nan p99=nan max=nan\n", label);
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
    printf("%s seen=%zu of=%zu p50=%s p90=%s p99=%s max=%s\n", label, seen, n,
           p[0], p[1], p[2], p[3]);
}

static void usage(void)
{
    fprintf(stderr, "usage: origin_lag --cid C --node CONNINFO [--cid C --node"
                    " CONNINFO ...] --rate R --seconds S [--table T]"
                    " [--start-id ID] [--poll-ms MS] [--drain-s S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int next_cid = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--cid")) next_cid = atoi(v);
        else if (!strcmp(a, "--node") && nn < MAXN) {
            if (next_cid <= 0) usage();
            cid[nn] = next_cid;
            ci[nn++] = v;
            next_cid = 0;
        } else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--seconds")) secs = atof(v);
        else if (!strcmp(a, "--start-id")) start_id = atoll(v);
        else if (!strcmp(a, "--table")) table = v;
        else if (!strcmp(a, "--poll-ms")) poll_ms = atoi(v);
        else if (!strcmp(a, "--drain-s")) drain_s = atoi(v);
        else usage();
    }
    if (nn < 2 || rate <= 0 || secs <= 0 || poll_ms <= 0) usage();
    n_rows = (size_t)(rate * secs);
    if (n_rows == 0) usage();
    for (int n = 0; n < nn; n++) {
        t_send[n] = calloc(n_rows, sizeof(int64_t));
        t_ack[n] = calloc(n_rows, sizeof(int64_t));
        if (!t_send[n] || !t_ack[n]) return 1;
        for (int o = 0; o < nn; o++) {
            if (o == n) continue;
            t_vis[n][o] = malloc(n_rows * sizeof(int64_t));
            if (!t_vis[n][o]) return 1;
            for (size_t k = 0; k < n_rows; k++) t_vis[n][o][k] = NONE;
        }
    }
    atomic_store(&writers_left, nn);
    t_start = now_ns() + 200000000;
    pthread_t pth[MAXN], wth[MAXN];
    for (int n = 0; n < nn; n++) {
        ps[n].idx = n;
        ws[n].idx = n;
        if (pthread_create(&pth[n], NULL, poller, &ps[n]) != 0) return 1;
    }
    for (int n = 0; n < nn; n++)
        if (pthread_create(&wth[n], NULL, writer, &ws[n]) != 0) return 1;
    for (int n = 0; n < nn; n++) pthread_join(wth[n], NULL);
    int64_t w_end = now_ns();
    for (int n = 0; n < nn; n++) pthread_join(pth[n], NULL);

    size_t total = 0;
    bool ok = true;
    for (int n = 0; n < nn; n++) {
        double s = (double)(ws[n].w1 - t_start) / 1e9;
        printf("writer%d cid=%d sent=%zu acked=%zu achieved_rate=%.0f ok=%d\n", n + 1,
               cid[n], ws[n].sent, ws[n].acked, s > 0 ? (double)ws[n].acked / s : 0,
               ws[n].rc == 0);
        total += ws[n].acked;
        if (ws[n].rc) ok = false;
    }
    double wsec = (double)(w_end - t_start) / 1e9;
    printf("writers nodes=%d offered_rate=%.0f achieved_rate=%.0f acked=%zu write_s=%.2f ok=%d\n",
           nn, rate * nn, wsec > 0 ? (double)total / wsec : 0, total, wsec, ok);
    int64_t *v = malloc((total * (size_t)nn + 1) * sizeof(int64_t));
    if (!v) return 1;
    size_t m = 0;
    for (int n = 0; n < nn; n++)
        for (size_t k = 0; k < ws[n].acked; k++) v[m++] = t_ack[n][k] - t_send[n][k];
    pct("commit", v, m);
    /* each (row, receiver) */
    m = 0;
    int64_t last_all = 0;
    for (int o = 0; o < nn; o++)
        for (size_t k = 0; k < ws[o].acked; k++)
            for (int n = 0; n < nn; n++) {
                if (n == o) continue;
                int64_t t = t_vis[n][o][k];
                if (t == NONE) { v[m++] = INT64_MAX; ok = false; continue; }
                int64_t l = t - t_ack[o][k];
                v[m++] = l < 0 ? 0 : l;
                if (t > last_all) last_all = t;
            }
    pct("each", v, m);
    m = 0;
    for (int o = 0; o < nn; o++)
        for (size_t k = 0; k < ws[o].acked; k++) {
            int64_t l = 0;
            for (int n = 0; n < nn; n++) {
                if (n == o) continue;
                if (t_vis[n][o][k] == NONE) { l = INT64_MAX; break; }
                int64_t x = t_vis[n][o][k] - t_ack[o][k];
                if (x > l) l = x;
            }
            v[m++] = l;
        }
    pct("all", v, m);
    double span = last_all > t_start ? (double)(last_all - t_start) / 1e9 : 0;
    printf("applied rows=%zu span_s=%.2f rate=%.0f copies_rate=%.0f\n", total, span,
           span > 0 ? (double)total / span : 0,
           span > 0 ? (double)total * (nn - 1) / span : 0);
    for (int n = 0; n < nn; n++) {
        long long have = 0;
        for (int o = 0; o < nn; o++) have += ps[n].rows[o];
        char e[300] = "";
        if (ps[n].err[0]) {
            snprintf(e, sizeof e, " error=%s", ps[n].err);
            for (char *p = e; *p; p++) if (*p == '\n') *p = ' ';
        }
        printf("node%d rows=%lld want=%zu%s\n", n + 1, have, total, e);
        if (have != (long long)total) ok = false;
    }
    return ok ? 0 : 1;
}
