/*
 * tests/chaos/chaos_writer.c - the chaos runner's writer: commits a steady
 * stream of small transactions on whichever node is master and records
 * every acknowledged commit.
 *
 *   chaos_writer OUTFILE FIRST_ID DELAY_MS SOCKDIR1 [SOCKDIR2 ...]
 *
 * SOCKDIRi is node i's PostgreSQL socket directory (database pmg, user
 * postgres). Transaction k (id = FIRST_ID + k) is
 *
 *   BEGIN;
 *   SELECT role FROM pmgcm.state;                 -- must be 'master'
 *   INSERT INTO mail VALUES (id, 'chaos', ..., node, now());
 *   INSERT INTO rule_attr VALUES (id - FIRST_ID + 1, 'chaos', ...);
 *   UPDATE rules SET prio = prio + 1 WHERE id = 1;   -- every 10th
 *   COMMIT;
 *
 * on the node the writer stuck to last; any failure (connection, refused
 * write on a non-master, role not 'master', timeout) closes the connection
 * and moves on to the next node (a full round without success sleeps
 * 100 ms). The session runs with synchronous_commit = on, so an
 * acknowledged commit survives a PostgreSQL crash. One line per event in
 * OUTFILE (written with write(2), so a kill loses nothing acknowledged):
 *
 *   ack ID NODE MS       COMMIT returned ok: acknowledged
 *   unknown ID NODE MS   the connection broke during COMMIT: may or may not
 *                        be committed (not acknowledged); or COMMIT
 *                        returned with PostgreSQL's warning that its wait
 *                        for synchronous replication (db_sync) was
 *                        cancelled (statement_timeout): committed on that
 *                        node only, which is not what db_sync acknowledges
 *   fail ID NODE MS WHY  not committed (a new id is used for the next try)
 *
 * MS is milliseconds since the epoch. Runs until SIGTERM/SIGINT; prints a
 * summary on stderr.
 *
 * Environment (a second writer held open across step-downs):
 *   CHAOS_WRITER_ISOLATION  "read committed" (default), "repeatable read",
 *                           "serializable", or "alternate" (repeatable
 *                           read and serializable, one transaction each)
 *   CHAOS_WRITER_HOLD_MS    pause after the role check (the transaction's
 *                           snapshot is taken there) before the writes:
 *                           a step-down falls into it (default 0)
 *   CHAOS_WRITER_TAG        rule_attr.attr of its rows (default "chaos";
 *                           mail.node is always "chaos")
 */
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
/* a COMMIT whose synchronous replication wait was cancelled */
static int sync_cancelled;
static void on_notice(void *arg, const PGresult *r)
{
    (void)arg;
    const char *m = PQresultErrorMessage(r);
    if (m && strstr(m, "canceling wait for synchronous replication"))
        sync_cancelled = 1;
}
static void on_sig(int s) { (void)s; stop_flag = 1; }

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int out_fd = -1;
static void emit(const char *fmt, ...)
{
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof(buf) - 2) n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(out_fd, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        p += w;
        n -= (int)w;
    }
}

/* first line of a libpq error, spaces only */
static void oneline(const char *in, char *out, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; in && in[i] && j + 1 < len; i++) {
        char ch = in[i];
        if (ch == '\n' || ch == '\r') {
            if (in[i + 1] == '\0') break;
            ch = ' ';
        }
        out[j++] = ch;
    }
    out[j] = '\0';
}

static int exec_ok(PGconn *c, const char *sql, int nparams,
                   const char *const *pv, ExecStatusType want, char *why,
                   size_t wl, PGresult **keep)
{
    PGresult *r = PQexecParams(c, sql, nparams, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != want) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        char m[400];
        oneline(PQerrorMessage(c), m, sizeof(m));
        snprintf(why, wl, "%s %s", st ? st : "-", m[0] ? m : "error");
        PQclear(r);
        return -1;
    }
    if (keep)
        *keep = r;
    else
        PQclear(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s OUTFILE FIRST_ID DELAY_MS SOCKDIR...\n", argv[0]);
        return 2;
    }
    out_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) {
        perror(argv[1]);
        return 1;
    }
    long long first = atoll(argv[2]);
    long delay = atol(argv[3]);
    int n = argc - 4;
    char **socks = argv + 4;
    PGconn **conns = calloc((size_t)n, sizeof(*conns));
    if (!conns) return 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sig;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    const char *iso = getenv("CHAOS_WRITER_ISOLATION");
    const char *hold_s = getenv("CHAOS_WRITER_HOLD_MS");
    const char *tag = getenv("CHAOS_WRITER_TAG");
    long hold = hold_s ? atol(hold_s) : 0;
    if (!tag || !*tag) tag = "chaos";
    if (!iso || !*iso) iso = "read committed";
    if (strcmp(iso, "read committed") != 0 && strcmp(iso, "repeatable read") != 0 &&
        strcmp(iso, "serializable") != 0 && strcmp(iso, "alternate") != 0) {
        fprintf(stderr, "chaos_writer: bad CHAOS_WRITER_ISOLATION '%s'\n", iso);
        return 2;
    }
    long long id = first, acks = 0, fails = 0, unknown = 0;
    int cur = 0, misses = 0;
    while (!stop_flag) {
        char why[512] = "";
        int node = cur + 1;
        if (!conns[cur] || PQstatus(conns[cur]) != CONNECTION_OK) {
            if (conns[cur]) PQfinish(conns[cur]);
            char ci[1200];
            snprintf(ci, sizeof(ci),
                     "host=%s dbname=pmg user=postgres connect_timeout=2 "
                     "options='-c synchronous_commit=on -c statement_timeout=5000 "
                     "-c lock_timeout=4000'",
                     socks[cur]);
            conns[cur] = PQconnectdb(ci);
            if (PQstatus(conns[cur]) != CONNECTION_OK) {
                PQfinish(conns[cur]);
                conns[cur] = NULL;
                goto next; /* not an attempt: no id used */
            }
            PQsetNoticeReceiver(conns[cur], on_notice, NULL);
        }
        PGconn *c = conns[cur];
        char ids[32], rid[32], nb[16];
        snprintf(ids, sizeof(ids), "%lld", id);
        snprintf(rid, sizeof(rid), "%lld", id - first + 1);
        snprintf(nb, sizeof(nb), "%d", node);
        const char *pv[2] = {ids, nb};
        const char *pr[3] = {rid, ids, tag};
        PGresult *r = NULL;
        const char *level = strcmp(iso, "alternate") != 0 ? iso
                            : id % 2 ? "serializable" : "repeatable read";
        char begin[64];
        snprintf(begin, sizeof(begin), "BEGIN ISOLATION LEVEL %s", level);
        if (exec_ok(c, begin, 0, NULL, PGRES_COMMAND_OK, why, sizeof(why), NULL))
            goto failed;
        if (exec_ok(c, "SELECT role FROM pmgcm.state", 0, NULL, PGRES_TUPLES_OK,
                    why, sizeof(why), &r))
            goto failed;
        if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), "master") != 0) {
            snprintf(why, sizeof(why), "role %s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "?");
            PQclear(r);
            goto failed;
        }
        PQclear(r);
        if (hold > 0) { /* the snapshot is taken: a role change may come */
            struct timespec ts = {hold / 1000, (hold % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (exec_ok(c,
                    "INSERT INTO mail VALUES ($1::bigint, 'chaos', 'chaos ' || $1,"
                    " $2::int, now())",
                    2, pv, PGRES_COMMAND_OK, why, sizeof(why), NULL))
            goto failed;
        if (exec_ok(c,
                    "INSERT INTO rule_attr VALUES ($1::int, $3, 'txn ' || $2)",
                    3, pr, PGRES_COMMAND_OK, why, sizeof(why), NULL))
            goto failed;
        if (id % 10 == 0 &&
            exec_ok(c, "UPDATE rules SET prio = prio + 1 WHERE id = 1", 0, NULL,
                    PGRES_COMMAND_OK, why, sizeof(why), NULL))
            goto failed;
        sync_cancelled = 0;
        r = PQexec(c, "COMMIT");
        if (PQresultStatus(r) == PGRES_COMMAND_OK && sync_cancelled) {
            PQclear(r);
            emit("unknown %lld %d %lld COMMIT returned after its wait for"
                 " synchronous replication was cancelled: committed on that"
                 " node only", id, node, now_ms());
            unknown++;
            id++;
            continue;
        }
        if (PQresultStatus(r) == PGRES_COMMAND_OK) {
            PQclear(r);
            emit("ack %lld %d %lld", id, node, now_ms());
            acks++;
            id++;
            misses = 0;
            if (delay > 0) {
                struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        {
            char m[400];
            oneline(PQerrorMessage(c), m, sizeof(m));
            PQclear(r);
            if (PQstatus(c) != CONNECTION_OK) {
                emit("unknown %lld %d %lld %s", id, node, now_ms(), m);
                unknown++;
            } else {
                emit("fail %lld %d %lld COMMIT %s", id, node, now_ms(), m);
                fails++;
            }
            id++;
            PQfinish(c);
            conns[cur] = NULL;
            goto next;
        }
    failed:
        emit("fail %lld %d %lld %s", id, node, now_ms(), why);
        fails++;
        id++;
        PQfinish(c);
        conns[cur] = NULL;
    next:
        cur = (cur + 1) % n;
        if (++misses >= n) {
            misses = 0;
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < n; i++)
        if (conns[i]) PQfinish(conns[i]);
    free(conns);
    fprintf(stderr, "chaos_writer: %lld acknowledged, %lld failed, %lld unknown\n",
            acks, fails, unknown);
    close(out_fd);
    return 0;
}
