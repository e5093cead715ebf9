/*
 * store.c - the store object: worker threads, job queue, pipes, setup,
 * LISTEN for commit notifications, periodic work (store/store.h).
 */
#define _GNU_SOURCE
#include "store/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SETUP_RETRY_MS 2000
#define TICK_MS 1000
#define TRIM_EVERY_MS 10000
#define VACUUM_EVERY_MS 2000
#define CHECK_EVERY_MS 5000
#define PING_HUNG_MS 5000 /* a database check this late: down */

const char *pst_strerror(int err)
{
    return pmm_strerror(err);
}

int pst_pos_cmp(pst_pos a, pst_pos b)
{
    if (a.epoch != b.epoch) return a.epoch < b.epoch ? -1 : 1;
    if (a.seq != b.seq) return a.seq < b.seq ? -1 : 1;
    return 0;
}

const char *pst_state_name(pst_state s)
{
    static const char *const n[] = {"off", "connecting", "idle", "loading",
                                    "catching-up", "in-sync", "diverged",
                                    "error"};
    return (unsigned)s < sizeof(n) / sizeof(n[0]) ? n[s] : "?";
}

int64_t pst_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t pst_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void pst_log(pst_store *st, int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (st->ev.log) st->ev.log(st->ev.ud, level, buf);
}

void pst_changed(pst_store *st)
{
    if (st->ev.changed && !st->closing) st->ev.changed(st->ev.ud);
}

void pst_set_error(pst_store *st, const char *fmt, ...)
{
    char buf[sizeof(st->info.error)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (strcmp(buf, st->info.error) != 0) {
        snprintf(st->info.error, sizeof(st->info.error), "%s", buf);
        if (buf[0]) pst_log(st, 0, "%s", buf);
        pst_changed(st);
    }
}

/* ---- the local replicated set --------------------------------------------------- */

#define TABNAME_MAX 1024

pst_tableset *pst_tableset_new(void)
{
    return calloc(1, sizeof(pst_tableset));
}

int pst_tableset_find(const pst_tableset *ts, const char *name)
{
    if (!ts || !name || strnlen(name, TABNAME_MAX + 1) > TABNAME_MAX)
        return -1;
    for (size_t i = 0; i < ts->n; i++)
        if (strcmp(ts->t[i].name, name) == 0) return (int)i;
    return -1;
}

int pst_tableset_add(pst_tableset *ts, const char *name, bool origin)
{
    if (!ts || !name || !*name || strnlen(name, TABNAME_MAX + 1) > TABNAME_MAX)
        return -EINVAL;
    if (pst_tableset_find(ts, name) >= 0) return -EEXIST;
    if (ts->n == ts->cap) {
        size_t nc = ts->cap ? ts->cap * 2 : 16;
        pst_tabname *nt = realloc(ts->t, nc * sizeof(*nt));
        if (!nt) return -ENOMEM;
        ts->t = nt;
        ts->cap = nc;
    }
    char *c = strdup(name);
    if (!c) return -ENOMEM;
    ts->t[ts->n].name = c;
    ts->t[ts->n].origin = origin;
    ts->n++;
    return 0;
}

pst_tableset *pst_tableset_dup(const pst_tableset *ts)
{
    if (!ts) return NULL;
    pst_tableset *d = pst_tableset_new();
    for (size_t i = 0; d && i < ts->n; i++)
        if (pst_tableset_add(d, ts->t[i].name, ts->t[i].origin) != 0) {
            pst_tableset_free(d);
            d = NULL;
        }
    return d;
}

void pst_tableset_free(pst_tableset *ts)
{
    if (!ts) return;
    for (size_t i = 0; i < ts->n; i++) free(ts->t[i].name);
    free(ts->t);
    free(ts);
}

const char *pst_safe_name(const char *name, char *buf, size_t cap)
{
    if (!cap) return buf;
    if (!name) name = "(none)";
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)name[i];
        buf[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    buf[i] = 0;
    if (name[i] && cap >= 4) memcpy(buf + cap - 4, "...", 4);
    return buf;
}

/* ---- pipes ------------------------------------------------------------------- */

pst_buf *pst_buf_new(const void *data, size_t len)
{
    pst_buf *b = malloc(sizeof(*b) + len);
    if (!b) return NULL;
    b->next = NULL;
    b->len = len;
    if (len) memcpy(b->data, data, len);
    return b;
}

void pst_pipe_init(pst_pipe *p, size_t max_bytes)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max_bytes = max_bytes;
}

void pst_pipe_destroy(pst_pipe *p)
{
    pst_buf *b = p->head;
    while (b) {
        pst_buf *n = b->next;
        free(b);
        b = n;
    }
    p->head = p->tail = NULL;
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

int pst_pipe_put(pst_pipe *p, pst_buf *b)
{
    pthread_mutex_lock(&p->mu);
    while (!p->aborted && p->bytes > 0 && p->bytes + b->len > p->max_bytes)
        pthread_cond_wait(&p->cv, &p->mu);
    if (p->aborted) {
        pthread_mutex_unlock(&p->mu);
        free(b);
        return -ECANCELED;
    }
    b->next = NULL;
    if (p->tail) p->tail->next = b;
    else p->head = b;
    p->tail = b;
    p->bytes += b->len;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

pst_buf *pst_pipe_get(pst_pipe *p)
{
    pthread_mutex_lock(&p->mu);
    while (!p->head && !p->closed && !p->aborted)
        pthread_cond_wait(&p->cv, &p->mu);
    pst_buf *b = NULL;
    if (p->head && !p->aborted) {
        b = p->head;
        p->head = b->next;
        if (!p->head) p->tail = NULL;
        p->bytes -= b->len;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return b;
}

pst_buf *pst_pipe_try_get(pst_pipe *p, bool *eof)
{
    pthread_mutex_lock(&p->mu);
    pst_buf *b = p->head;
    if (b) {
        p->head = b->next;
        if (!p->head) p->tail = NULL;
        p->bytes -= b->len;
        pthread_cond_broadcast(&p->cv);
    }
    *eof = !b && p->closed;
    pthread_mutex_unlock(&p->mu);
    return b;
}

size_t pst_pipe_bytes(pst_pipe *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->bytes;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void pst_pipe_eof(pst_pipe *p)
{
    pthread_mutex_lock(&p->mu);
    p->closed = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void pst_pipe_abort(pst_pipe *p)
{
    pthread_mutex_lock(&p->mu);
    p->aborted = true;
    p->closed = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- libpq helpers (worker threads) ------------------------------------------ */

void pst_pgerr(PGconn *c, PGresult *r, char *err, size_t errlen)
{
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    if (!m || !*m) m = c ? PQerrorMessage(c) : "no connection";
    snprintf(err, errlen, "%s", m);
    size_t n = strlen(err);
    while (n && (err[n - 1] == '\n' || err[n - 1] == ' ')) err[--n] = 0;
}

PGresult *pst_exec_prepared(PGconn *c, unsigned *prepared, int id,
                            const char *sql, int n, const char *const *pv)
{
    if (!prepared || id < 0 || id >= PST_PREP_N)
        return PQexecParams(c, sql, n, NULL, pv, NULL, NULL, 0);
    char name[24];
    snprintf(name, sizeof(name), "pmgcm_p%d", id);
    if (!(*prepared & (1u << id))) {
        PGresult *r = PQprepare(c, name, sql, n, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) return r;
        PQclear(r);
        *prepared |= 1u << id;
    }
    return PQexecPrepared(c, name, n, pv, NULL, NULL, 0);
}

int pst_sql_prepare(PGconn *c, unsigned *prepared, int id, const char *stmts,
                    char *err, size_t errlen)
{
    if (*prepared & (1u << id)) return 0;
    int rc = pst_exec(c, stmts, err, errlen);
    if (rc == 0) {
        *prepared |= 1u << id;
        return 0;
    }
    /* PREPARE is not undone by the failed statement's rollback: what the
     * string did prepare would make the next try fail; start over */
    PGresult *r = PQexec(c, "DEALLOCATE ALL");
    PQclear(r);
    *prepared = 0;
    return rc;
}

PGresult *pst_otables(PGconn *c, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, "SELECT tbl, quote_ident(col) FROM pmgcm.otables");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) return r;
    pst_pgerr(c, r, err, errlen);
    PQclear(r);
    return NULL;
}

const char *pst_otable_col(const PGresult *ro, const char *tbl)
{
    for (int k = 0; ro && tbl && k < PQntuples(ro); k++)
        if (strcmp(PQgetvalue(ro, k, 0), tbl) == 0)
            return PQgetvalue(ro, k, 1);
    return NULL;
}

int pst_others_where(char *buf, size_t len, const char *col, uint32_t cid)
{
    int n = col ? snprintf(buf, len, " WHERE %s::text IS DISTINCT FROM '%u'",
                           col, cid)
                : snprintf(buf, len, "%s", "");
    return n >= 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

int pst_exec(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, errlen);
        PQclear(r);
        return PST_EDB;
    }
    PQclear(r);
    return 0;
}

/* ---- COPY writers: the capture's and the apply's log rows ---------------------- */

void pst_ts_text(int64_t unix_us, char *buf, size_t len)
{
    time_t s = (time_t)(unix_us / 1000000);
    long us = (long)(unix_us % 1000000);
    if (us < 0) {
        us += 1000000;
        s -= 1;
    }
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(buf, len, "%04d-%02d-%02d %02d:%02d:%02d.%06ld+00",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, us);
}

const char pst_copy_bin_head[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

int pst_wb_reserve(pst_wbuf *b, size_t n)
{
    if (b->len + n + 1 <= b->cap) return 0;
    size_t nc = b->cap ? b->cap * 2 : 65536;
    while (nc < b->len + n + 1) nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) return -ENOMEM;
    b->p = np;
    b->cap = nc;
    return 0;
}

void pst_copy_esc(char **p, const char *s)
{
    char *o = *p;
    if (!s) {
        *o++ = '\\';
        *o++ = 'N';
        *p = o;
        return;
    }
    for (; *s; s++) {
        switch (*s) {
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        default: *o++ = *s;
        }
    }
    *p = o;
}

int pst_copy_in(PGconn *c, const char *sql, const pst_wbuf *b, char *err,
                size_t el)
{
    if (b->len > INT32_MAX) return -EFBIG;
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    PQclear(r);
    if (PQputCopyData(c, b->p, (int)b->len) != 1 ||
        PQputCopyEnd(c, NULL) != 1) {
        pst_pgerr(c, NULL, err, el);
        return PST_EDB;
    }
    r = PQgetResult(c);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
    }
    PQclear(r);
    while ((r = PQgetResult(c))) PQclear(r);
    return rc;
}

void pst_notice_quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

int pst_origin_setup(PGconn *c, const char *tag, char *err, size_t el)
{
    char name[80];
    PGresult *r;
    if (tag[0] == '@') {
        snprintf(name, sizeof(name), "pmgcm_%s", tag + 1);
    } else {
        r = PQexec(c, "SELECT oid FROM pg_database WHERE datname ="
                      " current_database()");
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
            pst_pgerr(c, r, err, el);
            PQclear(r);
            return PST_EDB;
        }
        snprintf(name, sizeof(name), "pmgcm_%s_%s", PQgetvalue(r, 0, 0), tag);
        PQclear(r);
    }
    const char *pv[1] = {name};
    r = PQexecParams(c,
                     "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS"
                     " (SELECT 1 FROM pg_replication_origin WHERE roname ="
                     " $1)",
                     1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        /* two sessions creating it at once: the other one won */
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (!state || strcmp(state, "23505") != 0) {
            pst_pgerr(c, r, err, el);
            PQclear(r);
            return PST_EDB;
        }
    }
    PQclear(r);
    r = PQexecParams(c, "SELECT pg_replication_origin_session_setup($1)", 1,
                     NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    PQclear(r);
    return 0;
}

/* A new connection, checked: NULL (err says why, c finished) when libpq
 * could not allocate it or it did not connect; else c with notices quiet.
 * Takes ownership of c. */
PGconn *pst_conn_ready(PGconn *c, char *err, size_t el)
{
    if (!c) {
        snprintf(err, el, "out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        pst_pgerr(c, NULL, err, el);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, pst_notice_quiet, NULL);
    return c;
}

PGconn *pst_connect(const char *conninfo, const char *origin_tag, char *err,
                    size_t errlen)
{
    if (pst_pq_load(err, errlen)) return NULL;
    PGconn *c = pst_conn_ready(PQconnectdb(conninfo), err, errlen);
    if (!c)
        return NULL;
    /* synchronous_commit = local: the store's own commits never wait for
     * db_sync's acknowledgements (the capture thread gives them) */
    if (pst_exec(c,
                 "SET session_replication_role = replica;"
                 "SET application_name = 'pmgcm-store';"
                 "SET DateStyle = ISO; SET IntervalStyle = postgres;"
                 "SET extra_float_digits = 3; SET statement_timeout = 0;"
                 "SET client_min_messages = warning;"
                 "SET synchronous_commit = local;",
                 err, errlen) != 0 ||
        (origin_tag && pst_origin_setup(c, origin_tag, err, errlen) != 0)) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* ---- worker pool ---------------------------------------------------------------- */

static void worker_main(void *arg)
{
    pst_worker *w = arg;
    pst_store *st = w->st;
    for (;;) {
        pthread_mutex_lock(&st->mu);
        while (!st->q_head && !st->stopping)
            pthread_cond_wait(&st->cv, &st->mu);
        if (st->stopping) {
            pthread_mutex_unlock(&st->mu);
            break;
        }
        pst_job *j = st->q_head;
        st->q_head = j->next;
        if (!st->q_head) st->q_tail = NULL;
        pthread_mutex_unlock(&st->mu);

        j->rc = 0;
        j->err[0] = 0;
        if (w->conn && PQstatus(w->conn) != CONNECTION_OK) {
            PQfinish(w->conn);
            w->conn = NULL;
        }
        if (!w->conn) {
            w->conn = pst_connect(st->conninfo, w->tag, j->err, sizeof(j->err));
            w->prepared = 0; /* a new session: nothing prepared */
        }
        j->prepared = &w->prepared;
        if (!w->conn && !j->err[0])
            snprintf(j->err, sizeof(j->err), "cannot connect");
        j->run(j, w->conn);
        /* a failed statement inside a transaction: never leave it open */
        if (w->conn && PQtransactionStatus(w->conn) != PQTRANS_IDLE) {
            PGresult *r = PQexec(w->conn, "ROLLBACK");
            PQclear(r);
            if (PQtransactionStatus(w->conn) != PQTRANS_IDLE) {
                PQfinish(w->conn);
                w->conn = NULL;
                w->prepared = 0;
            }
        }

        pthread_mutex_lock(&st->mu);
        j->next = st->done_head;
        st->done_head = j;
        pthread_mutex_unlock(&st->mu);
        uv_async_send(&st->async);
    }
    if (w->conn) PQfinish(w->conn);
    w->conn = NULL;
}

void pst_submit(pst_store *st, pst_job *j)
{
    j->st = st;
    j->next = NULL;
    j->cancelled = false;
    pthread_mutex_lock(&st->mu);
    if (st->q_tail) st->q_tail->next = j;
    else st->q_head = j;
    st->q_tail = j;
    pthread_cond_signal(&st->cv);
    pthread_mutex_unlock(&st->mu);
}


static void async_cb(uv_async_t *a)
{
    pst_store *st = a->data;
    pthread_mutex_lock(&st->mu);
    pst_job *list = st->done_head;
    st->done_head = NULL;
    pthread_mutex_unlock(&st->mu);
    /* reverse into completion order */
    pst_job *rev = NULL;
    while (list) {
        pst_job *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        pst_job *n = rev->next;
        rev->done(rev);
        rev = n;
    }
    pst_capture_poll(st);
    pst_session_poll_all(st);
}

/* ---- database check -------------------------------------------------------------- */

/* Every tick: does the database answer? A worker's connection that died
 * with its server (a restart) is not the verdict: a fresh connection is
 * tried before the database counts as down. */
static void ping_run(pst_job *j, PGconn *c)
{
    __atomic_store_n(&j->st->ping_run_ms, pst_mono_ms(), __ATOMIC_RELAXED);
    if (c) {
        PGresult *r = PQexec(c, "SELECT 1");
        bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        if (ok) return;
    }
    PGconn *f = pst_connect(j->st->conninfo, NULL, j->err, sizeof(j->err));
    if (f) {
        PQfinish(f);
        j->err[0] = 0;
        return;
    }
    j->rc = PST_EDB;
}

static void ping_done(pst_job *j)
{
    pst_store *st = j->st;
    st->ping_busy = false;
    __atomic_store_n(&st->ping_run_ms, 0, __ATOMIC_RELAXED);
    if (!st->closing) {
        bool down = j->rc != 0;
        if (down) {
            /* the first line of libpq's message */
            const char *e = j->err[0] ? j->err : "no answer";
            size_t n = strcspn(e, "\n");
            if (n >= sizeof(st->db_error)) n = sizeof(st->db_error) - 1;
            memcpy(st->db_error, e, n);
            st->db_error[n] = 0;
        }
        if (down != st->db_down) {
            st->db_down = down;
            if (down)
                pst_log(st, 0, "store: database down: %s", st->db_error);
            else
                pst_log(st, 2, "store: database answers again");
            pst_changed(st);
        }
    }
    free(j);
}

static void ping_start(pst_store *st)
{
    if (st->ping_busy || st->closing || !st->info.ready) return;
    pst_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->run = ping_run;
    j->done = ping_done;
    st->ping_busy = true;
    pst_submit(st, j);
}

/* ---- timer ------------------------------------------------------------------------ */

static void timer_cb(uv_timer_t *t)
{
    pst_store *st = t->data;
    if (st->closing) return;
    if (!st->info.ready) {
        pst_setup_start(st);
        return;
    }
    ping_start(st);
    pst_checks_retry(st);
    pst_sync_update(st);
    pst_sync_apply(st);
    uint64_t now = pst_mono_ms();
    if (now - st->last_vacuum_ms >= VACUUM_EVERY_MS) {
        st->last_vacuum_ms = now;
        pst_start_vacuum(st);
    }
    if (now - st->last_trim_ms >= TRIM_EVERY_MS) {
        st->last_trim_ms = now;
        pst_start_trim(st);
    }
    if (now - st->last_check_ms >= CHECK_EVERY_MS) {
        st->last_check_ms = now;
        pst_setup_check(st);
        pst_start_kept(st);
    }
    pst_sessions_head(st);
}

/* ---- open / close ---------------------------------------------------------------- */

static char *dup_or(const char *s, const char *def)
{
    return strdup(s && *s ? s : def);
}

int pst_open(uv_loop_t *loop, const pst_config *cfg, const pst_events *ev,
             pst_store **out)
{
    if (!loop || !cfg || !cfg->conninfo || !*cfg->conninfo || !out)
        return -EINVAL;
    pst_store *st = calloc(1, sizeof(*st));
    if (!st) return -ENOMEM;
    st->loop = loop;
    if (ev) st->ev = *ev;
    st->conninfo = strdup(cfg->conninfo);
    st->schemas = dup_or(cfg->schemas, "public");
    st->exclude = dup_or(cfg->exclude, "");
    st->origin_tables = dup_or(cfg->origin_tables, "");
    st->retention_s = cfg->retention_s ? cfg->retention_s : 3600;
    st->snap_jobs = cfg->snapshot_jobs == 0 ? PST_SNAP_JOBS
                    : cfg->snapshot_jobs > PST_SNAP_JOBS ? PST_SNAP_JOBS
                                                           : cfg->snapshot_jobs;
    st->n_workers = cfg->workers ? cfg->workers : 4;
    st->workers = calloc(st->n_workers, sizeof(*st->workers));
    if (!st->conninfo || !st->schemas || !st->exclude || !st->workers ||
        !st->origin_tables || pst_capture_start(st) != 0) {
        free(st->origin_tables);
        free(st->conninfo);
        free(st->schemas);
        free(st->exclude);
        free(st->workers);
        free(st);
        return -ENOMEM;
    }
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    uv_async_init(loop, &st->async, async_cb);
    st->async.data = st;
    uv_timer_init(loop, &st->timer);
    st->timer.data = st;
    st->info.state = PST_CONNECTING;
    for (size_t i = 0; i < st->n_workers; i++) {
        st->workers[i].st = st;
        snprintf(st->workers[i].tag, sizeof(st->workers[i].tag), "w%u",
                 (unsigned)(i % 10000));
        if (uv_thread_create(&st->workers[i].tid, worker_main,
                             &st->workers[i]) == 0)
            st->workers[i].started = true;
    }
    uv_timer_start(&st->timer, timer_cb,
                   cfg->tick_ms ? cfg->tick_ms : SETUP_RETRY_MS,
                   cfg->tick_ms ? cfg->tick_ms : TICK_MS);
    st->last_trim_ms = pst_mono_ms();
    pst_setup_start(st);
    *out = st;
    return 0;
}


static void close_free_cb(uv_handle_t *h)
{
    pst_unref(h->data);
}

/* The last of the store's closing handles frees it. */
void pst_unref(pst_store *st)
{
    if (--st->refs > 0 || !st->closing) return;
    pthread_mutex_destroy(&st->mu);
    pthread_cond_destroy(&st->cv);
    free(st->conninfo);
    free(st->schemas);
    free(st->exclude);
    free(st->origin_tables);
    free(st->workers);
    free(st->schema_text);
    pst_tableset_free(st->tables);
    free(st);
}


void pst_close(pst_store *st)
{
    if (!st) return;
    st->closing = 1;
    pst_sessions_close_all(st);
    /* the capture thread first (it posts to the async handle) */
    pst_capture_stop(st);
    /* stop the workers: cancel what runs, join */
    pthread_mutex_lock(&st->mu);
    st->stopping = true;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    for (size_t i = 0; i < st->n_workers; i++) {
        if (!st->workers[i].started) continue;
        uv_thread_join(&st->workers[i].tid);
    }
    /* run the done callbacks of finished jobs (they free themselves) and
     * of queued ones */
    pthread_mutex_lock(&st->mu);
    pst_job *list = st->done_head, *q = st->q_head;
    st->done_head = st->q_head = st->q_tail = NULL;
    pthread_mutex_unlock(&st->mu);
    while (list) {
        pst_job *n = list->next;
        list->done(list);
        list = n;
    }
    while (q) {
        pst_job *n = q->next;
        q->rc = -ECANCELED;
        q->cancelled = true;
        q->done(q);
        q = n;
    }
    pst_roles_free(st);
    /* snapshot threads were told to stop with their sessions: they signal
     * the async handle until they are gone, so wait for them (bounded) */
    for (int i = 0; i < 10000 &&
                    __atomic_load_n(&st->snap_threads, __ATOMIC_ACQUIRE) > 0;
         i++)
        uv_sleep(1);
    st->refs += 2;
    uv_close((uv_handle_t *)&st->async, close_free_cb);
    uv_close((uv_handle_t *)&st->timer, close_free_cb);
}


pst_origin *pst_opos(pst_store *st, uint32_t o, bool create)
{
    for (size_t i = 0; i < st->n_opos; i++)
        if (st->opos[i].origin == o) return &st->opos[i];
    if (!create || st->n_opos == PST_ORIGINS_MAX) return NULL;
    pst_origin *p = &st->opos[st->n_opos++];
    memset(p, 0, sizeof(*p));
    p->origin = o;
    return p;
}

size_t pst_get_origins(const pst_store *st, pst_origin *out, size_t max)
{
    for (size_t i = 0; i < st->n_opos && i < max; i++) out[i] = st->opos[i];
    return st->n_opos;
}

void pst_set_master_head(pst_store *st, pst_pos head)
{
    if (pst_pos_cmp(head, st->master_head) == 0) return;
    st->master_head = head;
    pst_changed(st);
}

/* libpq's connection errors lead with the socket's path: the cause
 * ("No such file or directory", "Connection refused") first. */
static const char *short_err(const char *e, char *buf, size_t len)
{
    if (strncmp(e, "database: ", 10) == 0) e += 10;
    const char *f = strstr(e, " failed: ");
    size_t n = strcspn(e, "\n");
    if (f && (size_t)(f - e) < n && f[9] && f[9] != '\n') {
        size_t cn = strcspn(f + 9, "\n");
        snprintf(buf, len, "%.*s (%.*s)", (int)cn, f + 9, (int)(f - e), e);
    } else {
        snprintf(buf, len, "%.*s", (int)n, e);
    }
    return buf;
}

const char *pst_reason(const pst_info *in, char *buf, size_t len)
{
    char e[200];
    switch (in->state) {
    case PST_IN_SYNC:
        snprintf(buf, len, "%s", "");
        break;
    case PST_OFF:
        snprintf(buf, len, "no replicated database");
        break;
    case PST_CONNECTING:
        if (in->db_down)
            snprintf(buf, len, "database down: %.90s",
                     short_err(in->error, e, sizeof(e)));
        else if (!in->ready && in->error[0])
            snprintf(buf, len, "database not ready: %.90s",
                     short_err(in->error, e, sizeof(e)));
        else
            snprintf(buf, len, "connecting to the database");
        break;
    case PST_IDLE:
        snprintf(buf, len, "not in a cluster");
        break;
    case PST_LOADING:
        snprintf(buf, len, "loading a snapshot: %u %%", in->load_pct);
        break;
    case PST_DIVERGED:
        snprintf(buf, len, "diverged: keeping this node's unsent changes "
                 "before a snapshot");
        break;
    case PST_ERROR:
        snprintf(buf, len, "error: %.90s", in->error);
        break;
    case PST_CATCHING_UP:
        if (!in->loaded)
            snprintf(buf, len, "data not loaded: waiting for a snapshot%s%.60s",
                     in->error[0] ? ": " : "", in->error);
        else if (in->lag > PST_SYNC_LAG_MAX)
            snprintf(buf, len, "behind the master by %llu changes",
                     (unsigned long long)in->lag);
        else if (in->error[0])
            snprintf(buf, len, "not following: %.90s", in->error);
        else
            snprintf(buf, len, "not following the master yet");
        break;
    }
    return buf;
}

void pst_get_info(const pst_store *st, pst_info *out)
{
    *out = st->info;
    /* how far behind: the newest head known, from the upstream's frames
     * or from what the current master announces (a restarted follower
     * learns it before its upstream says anything) */
    uint64_t head = out->head.seq > out->recv_seq ? out->head.seq
                                                  : out->recv_seq;
    if (st->master_head.epoch >= out->pos.epoch &&
        st->master_head.seq > head)
        head = st->master_head.seq;
    out->lag = !out->master && head > out->pos.seq ? head - out->pos.seq : 0;
    if (out->snap_est_rows)
        out->load_pct = (uint32_t)(out->snap_rows >= out->snap_est_rows
                                       ? 99
                                       : out->snap_rows * 100 /
                                             out->snap_est_rows);
    else if (out->snap_est_bytes)
        out->load_pct = (uint32_t)(out->snap_bytes >= out->snap_est_bytes
                                       ? 99
                                       : out->snap_bytes * 100 /
                                             out->snap_est_bytes);
    /* a check that does not come back (a server that hangs) counts too,
     * from when a worker began it (not while it waits in the queue) */
    uint64_t run = __atomic_load_n(&st->ping_run_ms, __ATOMIC_RELAXED);
    bool hung = st->ping_busy && run && pst_mono_ms() - run > PING_HUNG_MS;
    out->db_down = (st->db_down || hung) && out->ready;
    if (out->db_down) {
        out->state = PST_CONNECTING;
        if (hung && !st->db_down)
            snprintf(out->error, sizeof(out->error), "no answer for %llu s",
                     (unsigned long long)((pst_mono_ms() - run) / 1000));
        else
            snprintf(out->error, sizeof(out->error), "%s", st->db_error);
    } else if (!out->ready || out->state == PST_LOADING ||
               out->state == PST_DIVERGED || out->state == PST_CONNECTING ||
               out->state == PST_IDLE || out->state == PST_OFF) {
        /* as the store says */
    } else if (out->master) {
        out->state = PST_IN_SYNC;
    } else if (pst_following(st) && out->loaded &&
               out->lag <= PST_SYNC_LAG_MAX) {
        out->state = PST_IN_SYNC;
    } else {
        out->state = PST_CATCHING_UP;
    }
    pst_reason(out, out->reason, sizeof(out->reason));
}
