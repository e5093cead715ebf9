/*
 * capture.c - capturing changes through PostgreSQL's logical decoding: a
 * replication connection (replication=database) on the store's capture
 * thread streams the node's slot through pgoutput (publication pmgcm: the
 * replicated set and the per-origin tables), and the same thread numbers
 * what it decodes into the store's own log, in commit (WAL) order.
 *
 *   - a transaction the store applied itself (its sessions run under a
 *     replication origin "pmgcm_<db>_*") is skipped;
 *   - changes of the replicated set are numbered (epoch, seq) into
 *     pmgcm.log when the node is master and the transaction committed
 *     after it became master (its commit LSN is at or past
 *     pmgcm.state.master_lsn); on any other node of a cluster they go to
 *     pmgcm.divergence and the data is marked not loaded (a snapshot
 *     repairs the tables): the step-down fence, whatever the isolation
 *     level of the writer; outside a cluster they are not captured;
 *   - changes of per-origin tables (this node's own rows) are numbered
 *     into pmgcm.olog under this node's cid.
 *
 * Exactly once: the end LSN of the last transaction numbered is stored in
 * pmgcm.state.capture_lsn in the same transaction as the log rows; the
 * slot's confirmed position (the flush LSN reported to the walsender)
 * moves only after that commit, and a transaction re-decoded after a
 * restart whose commit is before capture_lsn is skipped. With db_sync the
 * flush LSN also waits until enough followers acknowledged holding the
 * change (pst_capture_set_sync): PostgreSQL's synchronous replication
 * (synchronous_standby_names naming this connection's application_name)
 * then holds the writer's commit until they did.
 *
 * Slots: one per node and database, "pmgcm_<database oid>", created by
 * the setup and role jobs (pst_slot_create), dropped when the node leaves
 * its cluster (pst_slot_drop). A slot lost to max_slot_wal_keep_size (or
 * dropped behind our back) is reported to the loop, which runs the repair
 * (schema.c: a clean resync, never a silent gap).
 */
#define _GNU_SOURCE
#include "store/internal.h"
#include "store/pgoutput.h"
#include "store/store.pb-c.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define FEEDBACK_MS 1000     /* status update to the walsender at least   */
#define STATS_MS 5000        /* slot statistics                           */
#define RETRY_MS 1000        /* after an error                            */
#define WANT_ASK_MS 20       /* a snapshot server waits: ask this often   */
#define COPY_FLUSH (4u << 20) /* a COPY buffer this big goes to the server */
/* Commit at least every this many source transactions (or BATCH_BYTES).
 * It caps the capture's throughput at BATCH_TXNS per commit cycle: 256
 * held it under 10,000/s whenever a cycle (4 round trips to a busy
 * server) took over 25 ms, and the lag grew by the second. */
#define BATCH_TXNS 4096
#define BATCH_BYTES (8u << 20)
#define SYNC_FIFO 4096
/* A batch waited this long for company (1000 before): at 1,000 changes/s
 * that was up to 1 ms of every change's lag for one transaction per
 * batch either way. Under load the batches group by themselves: what
 * arrives while one commits is the next one's. 0: no wait. */
#define GROUP_US 0

/* ---- slots (any thread) ------------------------------------------------------------ */

int pst_slot_name(PGconn *c, char *buf, size_t len, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT oid FROM pg_database WHERE datname ="
                            " current_database()");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    snprintf(buf, len, "pmgcm_%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

PGconn *pst_repl_connect(const char *conninfo, const char *appname,
                         char *err, size_t el)
{
    /* dbname is expanded as the whole conninfo; the later keywords win */
    const char *kw[] = {"dbname", "replication", "application_name", NULL};
    const char *val[] = {conninfo, "database", appname, NULL};
    if (pst_pq_load(err, el)) return NULL; /* libpq missing: say so */
    return pst_conn_ready(PQconnectdbParams(kw, val, 1), err, el);
}

int pst_slot_info(PGconn *c, const char *slot, bool *exists, bool *lost,
                  char *err, size_t el)
{
    const char *pv[1] = {slot};
    /* an invalidated slot: wal_status lost, no restart position */
    PGresult *r = PQexecParams(c, "SELECT CASE WHEN wal_status = 'lost' AND"
                                  " restart_lsn IS NULL THEN 'lost' ELSE"
                                  " coalesce(wal_status, '') END FROM"
                                  " pg_replication_slots WHERE slot_name = $1",
                               1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    *exists = PQntuples(r) == 1;
    *lost = *exists && strcmp(PQgetvalue(r, 0, 0), "lost") == 0;
    PQclear(r);
    return 0;
}

int pst_slot_create(const char *conninfo, const char *slot, char *err,
                    size_t el)
{
    char app[80];
    snprintf(app, sizeof(app), "%s_setup", slot);
    PGconn *c = pst_repl_connect(conninfo, app, err, el);
    if (!c) return PST_EDB;
    char *id = PQescapeIdentifier(c, slot, strlen(slot));
    char *sql = NULL;
    int rc = 0;
    if (!id || asprintf(&sql, "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput"
                              " NOEXPORT_SNAPSHOT", id) < 0) {
        sql = NULL;
        rc = -ENOMEM;
    } else {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            if (!st || strcmp(st, "42710") != 0) { /* not "exists" */
                pst_pgerr(c, r, err, el);
                rc = PST_EDB;
            }
        }
        PQclear(r);
    }
    PQfreemem(id);
    free(sql);
    PQfinish(c);
    return rc;
}

int pst_slot_drop(PGconn *c, const char *slot, char *err, size_t el)
{
    const char *pv[1] = {slot};
    /* its walsender (our capture thread, or a leftover) goes first */
    for (int i = 0; i < 100; i++) {
        PGresult *r = PQexecParams(
            c,
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM"
            " pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT"
            " NULL",
            1, NULL, pv, NULL, NULL, 0);
        bool active = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
        PQclear(r);
        r = PQexecParams(c,
                         "SELECT pg_drop_replication_slot(slot_name) FROM"
                         " pg_replication_slots WHERE slot_name = $1 AND"
                         " active_pid IS NULL",
                         1, NULL, pv, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        if (!ok) pst_pgerr(c, r, err, el);
        PQclear(r);
        bool exists, lost;
        if (pst_slot_info(c, slot, &exists, &lost, err, el) != 0)
            return PST_EDB;
        if (!exists) return 0;
        (void)active;
        uv_sleep(50);
    }
    snprintf(err, el, "replication slot %s is still in use", slot);
    return PST_EDB;
}

/* ---- the capture thread's state ------------------------------------------------ */

typedef struct relent {
    uint32_t oid;
    int kind;          /* 0 not replicated, 1 replicated, 2 per-origin */
    const char *tbl;   /* interned */
} relent;

/* a change held back until the next one says whether it is the last of
 * its transaction */
typedef struct held {
    bool any;
    char op;
    const char *tbl;
    char *old_, *new_;
} held;

/* a log entry the writer's transaction holds, kept for the frame that
 * serve's followers get once it commits (fr_add) */
typedef struct fr_ent {
    uint64_t seq, epoch;
    int64_t ts_us;
    char op;
    bool last;
    const char *tbl; /* interned */
    char *old_, *new_;
} fr_ent;

/* at most this many frames wait for the loop; older ones are dropped
 * (the sessions read the log instead) */
#define RES_FRAMES_MAX 32

typedef struct sync_ent {
    uint64_t need_seq; /* followers must hold the log up to this */
    uint64_t end_lsn;
} sync_ent;

struct pst_capture {
    pst_store *st;
    uv_thread_t tid;
    bool started;
    int wake_fd;
    char *conninfo;

    /* shared (mu) */
    pthread_mutex_t mu;
    bool stop, poke;
    bool numbering;       /* the loop confirmed this run's master role */
    uint32_t sync_need;   /* followers that must acknowledge (0: off) */
    uint64_t sync_acked;  /* log position held by that many followers */
    /* results for the loop */
    bool res_any;
    pst_pos res_pos;
    uint64_t res_recv;
    int64_t res_ts;
    uint64_t res_captured, res_divergent;
    bool res_own, res_unloaded;
    uint64_t res_unload_gen; /* st->unload_gen of the newest "not loaded" */
    uint64_t res_own_seq;
    int64_t res_own_ts;
    uint32_t res_cid;
    bool res_err_set;
    char res_err[256];
    bool res_stats;
    int64_t res_retained;
    char res_wal_status[16];
    int64_t res_safe;
    bool res_lost;        /* the slot is gone or lost: repair */
    bool res_streaming;
    bool hold;            /* a parallel load asked (pst_capture_hold) */
    uint64_t res_waiting; /* db_sync: transactions held */
    uint64_t res_flush;
    pst_cframe *res_fr, *res_fr_tail; /* committed frames, oldest first */
    size_t res_fr_n;

    /* thread only */
    PGconn *sql, *repl;
    char slot[64];
    pst_pgo *dec;
    relent *rels;
    size_t n_rels, cap_rels;
    char **names;
    size_t n_names, cap_names;

    /* the source transaction being decoded */
    bool in_src;
    bool src_skip, src_classified;
    uint64_t src_commit_lsn;
    int64_t src_ts;
    uint32_t src_xid;
    int main_dest;        /* 0 drop, 1 log, 2 divergence */
    bool origin_keep;

    /* the writer's open transaction */
    bool db_open;
    unsigned prepared; /* PST_PREP_* bits prepared on cp->sql */
    char role[16];
    uint64_t epoch, seq, oseq;
    uint32_t cid;
    uint64_t capture_lsn, master_lsn;
    bool loaded;
    uint64_t end_lsn;       /* end of the last source transaction done */
    int64_t open_us;        /* when the writer's transaction began      */
    size_t batch_txns, batch_bytes;
    uint64_t n_main, n_own, n_div;
    int64_t last_ts, own_ts;
    bool any_own;
    pst_wbuf blog, bolog, bdiv;
    held hlog, holog;
    /* the transaction's pmgcm.log entries as a frame to be (fr_*): off
     * when one would not fit PST_FRAME_BYTES or memory ran out */
    fr_ent *fr;
    size_t fr_n, fr_cap, fr_bytes;
    bool fr_off;
    uint64_t fr_from;

    /* held for a load (thread only): the stream ended for it; the WAL
     * position the slot must be past first, 0 until taken */
    bool held;
    uint64_t hold_lsn, hold_ask_ms;
    char *hold_snap;
    /* a snapshot server waits for st->cap_done_lsn: asked for a keepalive */
    uint64_t want_ask_ms;

    /* feedback */
    uint64_t flush_lsn, ka_end, last_fb_ms, last_stats_ms;
    bool fb_now;
    sync_ent fifo[SYNC_FIFO];
    size_t f_head, f_n;
};

/* ---- small helpers ------------------------------------------------------------------ */

static bool cap_stopping(pst_capture *cp)
{
    pthread_mutex_lock(&cp->mu);
    bool s = cp->stop;
    pthread_mutex_unlock(&cp->mu);
    return s;
}

static void cap_error(pst_capture *cp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cap_error(pst_capture *cp, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&cp->mu);
    cp->res_err_set = true;
    snprintf(cp->res_err, sizeof(cp->res_err), "%s", buf);
    pthread_mutex_unlock(&cp->mu);
    uv_async_send(&cp->st->async);
}

static void cap_post(pst_capture *cp)
{
    uv_async_send(&cp->st->async);
}

/* *p = max(*p, v), atomically; mo: the memory order of the store */
static void atomic_max(uint64_t *p, uint64_t v, int mo)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (cur < v &&
           !__atomic_compare_exchange_n(p, &cur, v, true, mo, __ATOMIC_RELAXED))
        ;
}

/* Everything committed up to lsn is classified and done (monotonic). */
static void done_to(pst_capture *cp, uint64_t lsn)
{
    atomic_max(&cp->st->cap_done_lsn, lsn, __ATOMIC_RELEASE);
}

/* Waits up to ms for a wake-up (stop, poke, acknowledgements) or, with
 * fd >= 0, for fd to be readable. */
static void cap_wait(pst_capture *cp, int fd, int ms)
{
    struct pollfd p[2] = {{.fd = cp->wake_fd, .events = POLLIN},
                          {.fd = fd, .events = POLLIN}};
    int n = poll(p, fd >= 0 ? 2 : 1, ms);
    if (n > 0 && (p[0].revents & POLLIN)) {
        uint64_t v;
        ssize_t k = read(cp->wake_fd, &v, sizeof(v));
        (void)k;
    }
}

static int wb_put(pst_wbuf *b, const char *s, size_t n)
{
    int rc = pst_wb_reserve(b, n);
    if (rc) return rc;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* a COPY text field: \N for NULL; backslash, tab, newline, CR escaped */
static int wb_field(pst_wbuf *b, const char *s)
{
    if (!s) return wb_put(b, "\\N", 2);
    int rc = pst_wb_reserve(b, 2 * strlen(s));
    if (rc) return rc;
    char *o = b->p + b->len;
    pst_copy_esc(&o, s);
    b->len = (size_t)(o - b->p);
    return 0;
}

static int wb_fmt(pst_wbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int wb_fmt(pst_wbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) return -EINVAL;
    return wb_put(b, tmp, (size_t)n);
}

static const char *intern(pst_capture *cp, const char *s)
{
    for (size_t i = 0; i < cp->n_names; i++)
        if (strcmp(cp->names[i], s) == 0) return cp->names[i];
    if (cp->n_names == cp->cap_names) {
        size_t nc = cp->cap_names ? cp->cap_names * 2 : 16;
        char **nn = realloc(cp->names, nc * sizeof(*nn));
        if (!nn) return NULL;
        cp->names = nn;
        cp->cap_names = nc;
    }
    char *d = strdup(s);
    if (!d) return NULL;
    cp->names[cp->n_names++] = d;
    return d;
}

/* ---- relations --------------------------------------------------------------------- */

static relent *rel_get(pst_capture *cp, uint32_t oid)
{
    for (size_t i = 0; i < cp->n_rels; i++)
        if (cp->rels[i].oid == oid) return &cp->rels[i];
    return NULL;
}

/* A Relation message: which local table is it? The decoder's raw names
 * go to the server only as parameters; the answer is our own entry in
 * pmgcm.tables. */
static int rel_learn(pst_capture *cp, const pst_pgo_rel *rel, char *err,
                     size_t el)
{
    relent *e = rel_get(cp, rel->oid);
    if (!e) {
        if (cp->n_rels == cp->cap_rels) {
            size_t nc = cp->cap_rels ? cp->cap_rels * 2 : 16;
            relent *nr = realloc(cp->rels, nc * sizeof(*nr));
            if (!nr) return -ENOMEM;
            cp->rels = nr;
            cp->cap_rels = nc;
        }
        e = &cp->rels[cp->n_rels++];
        e->oid = rel->oid;
    }
    e->kind = 0;
    e->tbl = NULL;
    const char *pv[2] = {rel->nspname, rel->relname};
    PGresult *r = PQexecParams(
        cp->sql,
        "SELECT t.tbl, o.tbl IS NOT NULL FROM pmgcm.tables t LEFT JOIN"
        " pmgcm.otables o ON o.tbl = t.tbl WHERE t.tbl = format('%I.%I',"
        " $1::text, $2::text)",
        2, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(cp->sql, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    if (PQntuples(r) == 1) {
        e->tbl = intern(cp, PQgetvalue(r, 0, 0));
        e->kind = !e->tbl ? 0 : PQgetvalue(r, 0, 1)[0] == 't' ? 2 : 1;
    }
    PQclear(r);
    return 0;
}

/* ---- the writer: the log, in the writer's transaction ------------------------------- */

/* b's rows by COPY (binary: b holds the header, the trailer goes here). */
static int wr_copy(pst_capture *cp, const char *sql, pst_wbuf *b,
                   bool binary, char *err, size_t el)
{
    if (!b->len) return 0;
    if (binary) {
        int rc = pst_wb_reserve(b, 2);
        if (rc) return rc;
        pst_wb_be(b, 0xffff, 2);
    }
    int rc = pst_copy_in(cp->sql, sql, b, err, el);
    if (rc == 0) b->len = 0; /* else wr_abort empties it */
    return rc;
}

static int wr_flush_bufs(pst_capture *cp, char *err, size_t el)
{
    int rc;
    if ((rc = wr_copy(cp, "COPY pmgcm.log (seq, epoch, op, tbl, old, new, ts,"
                          " last, origin, xid) FROM STDIN (FORMAT binary)",
                      &cp->blog, true, err, el)) ||
        (rc = wr_copy(cp, "COPY pmgcm.olog (origin, seq, op, tbl, old, new,"
                          " ts, last, xid) FROM STDIN (FORMAT binary)",
                      &cp->bolog, true, err, el)) ||
        (rc = wr_copy(cp, "COPY pmgcm.divergence (reason, epoch, op, tbl, old,"
                          " new, ts) FROM STDIN", &cp->bdiv, false, err, el)))
        return rc;
    cp->batch_bytes = 0;
    return 0;
}

static void held_clear(held *h)
{
    free(h->old_);
    free(h->new_);
    memset(h, 0, sizeof(*h));
}

/* ---- the frame for the followers ------------------------------------------------------ */

/* Forgets the transaction's entries; the next one starts after `from`. */
static void fr_reset(pst_capture *cp, uint64_t from)
{
    for (size_t i = 0; i < cp->fr_n; i++) {
        free(cp->fr[i].old_);
        free(cp->fr[i].new_);
    }
    cp->fr_n = cp->fr_bytes = 0;
    cp->fr_off = false;
    cp->fr_from = from;
}

/* The entry just written to the COPY buffer (seq cp->seq) into the frame;
 * takes h's values (h->old_/new_ become NULL) unless the frame is off. */
static void fr_add(pst_capture *cp, held *h, bool last)
{
    if (cp->fr_off) return;
    size_t sz = 64 + (h->tbl ? strlen(h->tbl) : 0) +
                (h->old_ ? strlen(h->old_) : 0) +
                (h->new_ ? strlen(h->new_) : 0);
    if (cp->fr_bytes + sz > PST_FRAME_BYTES) goto off;
    if (cp->fr_n == cp->fr_cap) {
        size_t nc = cp->fr_cap ? 2 * cp->fr_cap : 64;
        fr_ent *n = realloc(cp->fr, nc * sizeof(*n));
        if (!n) goto off;
        cp->fr = n;
        cp->fr_cap = nc;
    }
    cp->fr[cp->fr_n++] = (fr_ent){cp->seq, cp->epoch, cp->src_ts, h->op,
                                  last, h->tbl, h->old_, h->new_};
    cp->fr_bytes += sz;
    h->old_ = h->new_ = NULL;
    return;
off:
    fr_reset(cp, cp->fr_from);
    cp->fr_off = true;
}

/* The committed transaction's entries as a CHANGES frame (the fields
 * serve.c's read gives), or NULL (off, or out of memory). */
static pst_cframe *fr_pack(pst_capture *cp)
{
    if (cp->fr_off || cp->fr_n == 0 || cp->fr_n != cp->n_main ||
        cp->fr[0].seq != cp->fr_from + 1)
        return NULL;
    size_t n = cp->fr_n;
    Pmgcm__Store__Change *cv = calloc(n, sizeof(*cv));
    Pmgcm__Store__Change **pv = calloc(n, sizeof(*pv));
    pst_cframe *f = NULL;
    if (!cv || !pv) goto out;
    for (size_t i = 0; i < n; i++) {
        const fr_ent *e = &cp->fr[i];
        pmgcm__store__change__init(&cv[i]);
        cv[i].seq = e->seq;
        cv[i].epoch = e->epoch;
        cv[i].op = (uint8_t)e->op;
        cv[i].tbl = (char *)e->tbl;
        cv[i].old = e->old_;
        cv[i].new_ = e->new_;
        cv[i].ts_us = e->ts_us;
        cv[i].last = e->last;
        cv[i].has_origin = true;
        cv[i].origin = cp->cid;
        pv[i] = &cv[i];
    }
    Pmgcm__Store__Msg m = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Pos hd = PMGCM__STORE__POS__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__CHANGES;
    m.n_changes = n;
    m.changes = pv;
    hd.epoch = cv[n - 1].epoch;
    hd.seq = cv[n - 1].seq;
    m.head = &hd;
    m.has_acks = true;
    m.acks = true;
    size_t len = pmgcm__store__msg__get_packed_size(&m);
    f = malloc(sizeof(*f) + len);
    if (!f) goto out;
    f->next = NULL;
    f->from = cp->fr_from;
    f->to = (pst_pos){cv[n - 1].epoch, cv[n - 1].seq};
    f->len = len;
    pmgcm__store__msg__pack(&m, f->data);
out:
    free(cv);
    free(pv);
    return f;
}

static void frames_free(pst_cframe *f)
{
    while (f) {
        pst_cframe *n = f->next;
        free(f);
        f = n;
    }
}

static int wr_begin(pst_capture *cp, char *err, size_t el);

/* Opens the writer's transaction: the role and positions as they are,
 * locked against a role change until the commit. A database that says
 * master is numbered only once this run of the daemon confirmed it (the
 * loop's pst_capture_numbering): a master that was stopped and comes back
 * as a follower must not number what it decodes from before. Meanwhile
 * the stream waits. */
static int wr_open(pst_capture *cp, char *err, size_t el)
{
    if (cp->db_open) return 0;
    for (;;) {
        int rc = wr_begin(cp, err, el);
        if (rc) return rc;
        pthread_mutex_lock(&cp->mu);
        bool ok = cp->numbering || cp->stop;
        pthread_mutex_unlock(&cp->mu);
        if (ok || strcmp(cp->role, "master") != 0) return 0;
        PGresult *r = PQexec(cp->sql, "ROLLBACK");
        PQclear(r);
        cp->db_open = false;
        cap_wait(cp, -1, 1000);
        if (cap_stopping(cp)) {
            snprintf(err, el, "stopping");
            return -ECANCELED;
        }
    }
}

/* The statements every batch runs, prepared once per connection: parsed
 * and planned each time they were about a third of the session's CPU
 * with one transaction per batch (1,000 commits/s). */
static int wr_prepare(pst_capture *cp, char *err, size_t el)
{
    return pst_sql_prepare(
        cp->sql, &cp->prepared, PST_PREP_CAPTURE,
        "PREPARE pmgcm_cap_lock AS SELECT role, epoch, seq, cid,"
        " coalesce(capture_lsn, '0/0')::text,"
        " coalesce(master_lsn, '0/0')::text, loaded,"
        " coalesce((SELECT seq FROM pmgcm.opos o WHERE o.origin = s.cid), 0)"
        " FROM pmgcm.state s FOR UPDATE;"
        " PREPARE pmgcm_cap_done(pg_lsn, bigint, timestamptz, boolean) AS"
        " UPDATE pmgcm.state SET capture_lsn = $1, seq = $2, recv_seq = $2,"
        " ts = $3, loaded = loaded AND NOT $4;"
        " PREPARE pmgcm_cap_lsn(pg_lsn, boolean) AS UPDATE pmgcm.state SET"
        " capture_lsn = $1, loaded = loaded AND NOT $2;"
        " PREPARE pmgcm_cap_own(int, bigint, timestamptz) AS INSERT INTO"
        " pmgcm.opos (origin, seq, recv_seq, ts) VALUES ($1, $2, $2, $3) ON"
        " CONFLICT (origin) DO UPDATE SET seq = EXCLUDED.seq, recv_seq ="
        " EXCLUDED.recv_seq, ts = EXCLUDED.ts",
        err, el);
}

static int wr_begin(pst_capture *cp, char *err, size_t el)
{
    int prc = wr_prepare(cp, err, el);
    if (prc) return prc;
    PGresult *r = PQexec(cp->sql, "BEGIN; EXECUTE pmgcm_cap_lock");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(cp->sql, r, err, el);
        PQclear(r);
        r = PQexec(cp->sql, "ROLLBACK");
        PQclear(r);
        return PST_EDB;
    }
    snprintf(cp->role, sizeof(cp->role), "%s", PQgetvalue(r, 0, 0));
    cp->epoch = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    cp->seq = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    cp->cid = (uint32_t)strtoul(PQgetvalue(r, 0, 3), NULL, 10);
    if (pst_pgo_lsn_parse(PQgetvalue(r, 0, 4), &cp->capture_lsn) != 0)
        cp->capture_lsn = 0;
    if (pst_pgo_lsn_parse(PQgetvalue(r, 0, 5), &cp->master_lsn) != 0)
        cp->master_lsn = 0;
    cp->loaded = PQgetvalue(r, 0, 6)[0] == 't';
    cp->oseq = strtoull(PQgetvalue(r, 0, 7), NULL, 10);
    PQclear(r);
    cp->db_open = true;
    cp->open_us = pst_now_us();
    fr_reset(cp, cp->seq);
    cp->n_main = cp->n_own = cp->n_div = 0;
    cp->any_own = false;
    cp->batch_txns = cp->batch_bytes = 0;
    return 0;
}

static void wr_abort(pst_capture *cp)
{
    if (cp->db_open && cp->sql) {
        PGresult *r = PQexec(cp->sql, "ROLLBACK");
        PQclear(r);
    }
    cp->db_open = false;
    cp->blog.len = cp->bolog.len = cp->bdiv.len = 0;
    held_clear(&cp->hlog);
    held_clear(&cp->holog);
    fr_reset(cp, 0);
}

/* One row of pmgcm.log / pmgcm.olog from a held change. */
static int emit_held(pst_capture *cp, held *h, bool origin, bool last)
{
    if (!h->any) return 0;
    pst_wbuf *b = origin ? &cp->bolog : &cp->blog;
    size_t lt = h->tbl ? strlen(h->tbl) : 0, lo = h->old_ ? strlen(h->old_) : 0,
           ln = h->new_ ? strlen(h->new_) : 0;
    if (lt > INT32_MAX / 4 || lo > INT32_MAX / 4 || ln > INT32_MAX / 4)
        return -EFBIG;
    /* the header, 10 lengths, the numbers, 2 version bytes, the texts */
    int rc = pst_wb_reserve(b, sizeof(pst_copy_bin_head) + 2 + 10 * 4 + 38 +
                                   2 + lt + lo + ln);
    if (rc) return rc;
    if (b->len == 0) {
        memcpy(b->p, pst_copy_bin_head, sizeof(pst_copy_bin_head));
        b->len = sizeof(pst_copy_bin_head);
    }
    uint64_t ts = (uint64_t)(cp->src_ts - PST_PGO_EPOCH_OFFSET_US);
    if (origin) { /* origin, seq, op, tbl, old, new, ts, last, xid */
        pst_wb_be(b, 9, 2);
        pst_wb_num(b, cp->cid, 4);
        pst_wb_num(b, ++cp->oseq, 8);
    } else { /* seq, epoch, op, tbl, old, new, ts, last, origin, xid */
        pst_wb_be(b, 10, 2);
        pst_wb_num(b, ++cp->seq, 8);
        pst_wb_num(b, cp->epoch, 8);
    }
    pst_wb_num(b, (uint8_t)h->op, 1);
    pst_wb_bin_text(b, h->tbl, lt, false);
    pst_wb_bin_text(b, h->old_, lo, true);
    pst_wb_bin_text(b, h->new_, ln, true);
    pst_wb_num(b, ts, 8);
    pst_wb_num(b, last, 1);
    if (!origin) pst_wb_num(b, cp->cid, 4);
    pst_wb_num(b, cp->src_xid, 8);
    if (origin) {
        cp->n_own++;
        cp->any_own = true;
        cp->own_ts = cp->src_ts;
    } else {
        cp->n_main++;
        cp->last_ts = cp->src_ts;
        fr_add(cp, h, last);
    }
    held_clear(h);
    return 0;
}

/* Where this source transaction's changes go (at its first change). */
static void classify(pst_capture *cp)
{
    bool none = strcmp(cp->role, "none") == 0 || !cp->role[0];
    bool master = strcmp(cp->role, "master") == 0;
    if (none) cp->main_dest = 0;
    else if (master && cp->src_commit_lsn >= cp->master_lsn)
        cp->main_dest = 1;
    else cp->main_dest = 2;
    cp->origin_keep = !none && cp->cid != 0;
    cp->src_classified = true;
}

/* A decoded row change (or one table of a TRUNCATE). Takes old_/new_. */
static int on_change(pst_capture *cp, char op, const relent *e, char *old_,
                     char *new_, char *err, size_t el)
{
    int rc = 0;
    if (cp->src_skip || !e || e->kind == 0 || !e->tbl) goto drop;
    if ((rc = wr_open(cp, err, el))) goto drop;
    /* numbered before a restart: the slot sends it again */
    if (cp->src_commit_lsn < cp->capture_lsn) goto drop;
    if (!cp->src_classified) classify(cp);
    size_t sz = 64 + (old_ ? strlen(old_) : 0) + (new_ ? strlen(new_) : 0);
    cp->batch_bytes += sz;
    if (e->kind == 2) {
        if (!cp->origin_keep) goto drop;
        if ((rc = emit_held(cp, &cp->holog, true, false))) goto drop;
        cp->holog = (held){true, op, e->tbl, old_, new_};
        old_ = new_ = NULL;
    } else if (cp->main_dest == 1) {
        if ((rc = emit_held(cp, &cp->hlog, false, false))) goto drop;
        cp->hlog = (held){true, op, e->tbl, old_, new_};
        old_ = new_ = NULL;
    } else if (cp->main_dest == 2) {
        char ts[64], lsn[32];
        pst_ts_text(cp->src_ts, ts, sizeof(ts));
        pst_pgo_lsn_str(cp->src_commit_lsn, lsn, sizeof(lsn));
        rc = wb_fmt(&cp->bdiv,
                    "committed at %s (WAL %s) on this node while it was not"
                    " the master (role %s): never sent to the cluster\t%llu\t%c\t",
                    ts, lsn, cp->role, (unsigned long long)cp->epoch, op);
        if (!rc) rc = wb_field(&cp->bdiv, e->tbl);
        if (!rc) rc = wb_put(&cp->bdiv, "\t", 1);
        if (!rc) rc = wb_field(&cp->bdiv, old_);
        if (!rc) rc = wb_put(&cp->bdiv, "\t", 1);
        if (!rc) rc = wb_field(&cp->bdiv, new_);
        if (!rc) rc = wb_fmt(&cp->bdiv, "\t%s\n", ts);
        cp->n_div++;
    }
    if (!rc && (cp->blog.len > COPY_FLUSH || cp->bolog.len > COPY_FLUSH ||
                cp->bdiv.len > COPY_FLUSH))
        rc = wr_flush_bufs(cp, err, el);
drop:
    free(old_);
    free(new_);
    return rc;
}

static void fifo_push(pst_capture *cp, uint64_t need, uint64_t end)
{
    if (cp->f_n) {
        sync_ent *t = &cp->fifo[(cp->f_head + cp->f_n - 1) % SYNC_FIFO];
        if (t->need_seq >= need) { /* nothing newer to wait for */
            if (end > t->end_lsn) t->end_lsn = end;
            return;
        }
    }
    if (cp->f_n == SYNC_FIFO) { /* merge into the newest */
        sync_ent *t = &cp->fifo[(cp->f_head + cp->f_n - 1) % SYNC_FIFO];
        t->need_seq = need;
        t->end_lsn = end;
        return;
    }
    cp->fifo[(cp->f_head + cp->f_n) % SYNC_FIFO] = (sync_ent){need, end};
    cp->f_n++;
}

/* Releases what enough followers hold: the flush LSN moves. */
static void fifo_release(pst_capture *cp)
{
    pthread_mutex_lock(&cp->mu);
    uint32_t need = cp->sync_need;
    uint64_t acked = cp->sync_acked;
    pthread_mutex_unlock(&cp->mu);
    while (cp->f_n) {
        sync_ent *e = &cp->fifo[cp->f_head];
        if (need && e->need_seq > acked) break;
        if (e->end_lsn > cp->flush_lsn) {
            cp->flush_lsn = e->end_lsn;
            cp->fb_now = true;
        }
        cp->f_head = (cp->f_head + 1) % SYNC_FIFO;
        cp->f_n--;
    }
}

/* Commits the writer's transaction: the rows, the position and the end
 * LSN of the last source transaction, together. */
static int wr_commit(pst_capture *cp, char *err, size_t el)
{
    if (!cp->db_open) return 0;
    int rc = wr_flush_bufs(cp, err, el);
    if (rc) return rc;
    char lsn[32], q[700], ts[64], ots[64];
    pst_pgo_lsn_str(cp->end_lsn, lsn, sizeof(lsn));
    pst_ts_text(cp->last_ts, ts, sizeof(ts));
    pst_ts_text(cp->own_ts, ots, sizeof(ots));
    int n;
    /* the statements of wr_prepare (loaded = false: divergence kept) */
    const char *div = cp->n_div ? "true" : "false";
    if (cp->n_main)
        n = snprintf(q, sizeof(q), "EXECUTE pmgcm_cap_done('%s', %llu, '%s',"
                     " %s);", lsn, (unsigned long long)cp->seq, ts, div);
    else
        n = snprintf(q, sizeof(q), "EXECUTE pmgcm_cap_lsn('%s', %s);", lsn,
                     div);
    /* before the commit, the state row locked: role.c orders by it */
    uint64_t ugen = cp->n_div ? pst_unload_bump(cp->st) : 0;
    if (cp->any_own && n > 0 && (size_t)n < sizeof(q))
        n += snprintf(q + n, sizeof(q) - (size_t)n,
                      "EXECUTE pmgcm_cap_own(%u, %llu, '%s');", cp->cid,
                      (unsigned long long)cp->oseq, ots);
    if (n < 0 || (size_t)n + 8 >= sizeof(q)) return -EINVAL;
    snprintf(q + n, sizeof(q) - (size_t)n, "COMMIT");
    if ((rc = pst_exec(cp->sql, q, err, el))) return rc;
    cp->db_open = false;
    cp->capture_lsn = cp->end_lsn;
    /* for snapshot servers: the divergence first, then the position */
    if (cp->n_div) __atomic_add_fetch(&cp->st->cap_div_gen, 1, __ATOMIC_RELEASE);
    done_to(cp, cp->end_lsn);
    /* the followers' next frame, made here, off the loop; NULL: they read
     * the log */
    pst_cframe *f = cp->n_main && strcmp(cp->role, "master") == 0
                        ? fr_pack(cp) : NULL;
    fr_reset(cp, cp->seq);
    pst_cframe *drop = NULL;
    /* for the loop */
    pthread_mutex_lock(&cp->mu);
    cp->res_any = true;
    if (cp->n_main) {
        cp->res_pos = (pst_pos){cp->epoch, cp->seq};
        cp->res_recv = cp->seq;
        cp->res_ts = cp->last_ts;
        cp->res_captured += cp->n_main;
    }
    if (f) {
        if (cp->res_fr_n == RES_FRAMES_MAX) { /* the oldest goes */
            drop = cp->res_fr;
            cp->res_fr = drop->next;
            if (!cp->res_fr) cp->res_fr_tail = NULL;
            drop->next = NULL;
            cp->res_fr_n--;
        }
        if (cp->res_fr_tail) cp->res_fr_tail->next = f;
        else cp->res_fr = f;
        cp->res_fr_tail = f;
        cp->res_fr_n++;
    }
    if (cp->any_own) {
        cp->res_own = true;
        cp->res_cid = cp->cid;
        cp->res_own_seq = cp->oseq;
        cp->res_own_ts = cp->own_ts;
    }
    if (cp->n_div) {
        cp->res_divergent += cp->n_div;
        cp->res_unloaded = true;
        cp->res_unload_gen = ugen;
    }
    pthread_mutex_unlock(&cp->mu);
    frames_free(drop);
    fifo_push(cp, strcmp(cp->role, "master") == 0 ? cp->seq : 0, cp->end_lsn);
    cp->batch_txns = cp->batch_bytes = 0;
    cap_post(cp);
    return 0;
}

/* ---- the stream ---------------------------------------------------------------------- */

static int send_feedback(pst_capture *cp, bool reply)
{
    uint8_t fb[PST_PGO_FEEDBACK_LEN];
    int64_t now = pst_now_us() - PST_PGO_EPOCH_OFFSET_US;
    pst_pgo_feedback(fb, cp->flush_lsn, cp->flush_lsn, cp->flush_lsn, now,
                     reply);
    if (PQputCopyData(cp->repl, (const char *)fb, sizeof(fb)) != 1 ||
        PQflush(cp->repl) != 0)
        return PST_EDB;
    cp->last_fb_ms = pst_mono_ms();
    cp->fb_now = false;
    return 0;
}

/* One pgoutput message. */
static int on_message(pst_capture *cp, const uint8_t *data, size_t len,
                      char *err, size_t el)
{
    /* the rows of a transaction the store applied itself are dropped
     * undecoded (a snapshot's load sends every row it loads) */
    if (cp->src_skip && len > 0 &&
        (data[0] == 'I' || data[0] == 'U' || data[0] == 'D' ||
         data[0] == 'T'))
        return 0;
    pst_pgo_msg m;
    int rc = pst_pgo_decode(cp->dec, data, len, &m);
    if (rc) {
        snprintf(err, el, "undecodable change from the walsender (%s)",
                 strerror(-rc));
        return PST_EPROTO;
    }
    switch (m.kind) {
    case PST_PGO_BEGIN:
        cp->in_src = true;
        cp->src_skip = false;
        cp->src_classified = false;
        cp->src_commit_lsn = m.lsn;
        cp->src_ts = m.ts + PST_PGO_EPOCH_OFFSET_US;
        cp->src_xid = m.xid;
        break;
    case PST_PGO_ORIGIN:
        /* applied by the store itself: not captured again */
        if (m.name && strncmp(m.name, "pmgcm_", 6) == 0) cp->src_skip = true;
        break;
    case PST_PGO_RELATION:
        rc = rel_learn(cp, m.rel, err, el);
        break;
    case PST_PGO_INSERT:
    case PST_PGO_UPDATE:
    case PST_PGO_DELETE: {
        const relent *e = rel_get(cp, m.rel->oid);
        rc = on_change(cp, (char)m.kind, e, m.old_json, m.new_json, err, el);
        m.old_json = m.new_json = NULL;
        break;
    }
    case PST_PGO_TRUNCATE:
        for (uint32_t i = 0; i < m.n_rels && rc == 0; i++) {
            const relent *e = rel_get(cp, m.rels[i]->oid);
            rc = on_change(cp, 'T', e, NULL, NULL, err, el);
        }
        break;
    case PST_PGO_COMMIT:
        if (cp->db_open) {
            if ((rc = emit_held(cp, &cp->hlog, false, true)) ||
                (rc = emit_held(cp, &cp->holog, true, true)))
                break;
            if (m.end_lsn > cp->end_lsn) cp->end_lsn = m.end_lsn;
            cp->batch_txns++;
        } else {
            /* nothing of ours in it */
            if (m.end_lsn > cp->end_lsn) cp->end_lsn = m.end_lsn;
            fifo_push(cp, 0, m.end_lsn);
        }
        cp->in_src = false;
        break;
    default:
        break;
    }
    pst_pgo_msg_clear(&m);
    return rc;
}

static void post_stats(pst_capture *cp)
{
    const char *pv[1] = {cp->slot};
    PGresult *r = PQexecParams(
        cp->sql,
        "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn),"
        " 0)::bigint, coalesce(wal_status, ''), coalesce(safe_wal_size, -1)"
        " FROM pg_replication_slots WHERE slot_name = $1",
        1, NULL, pv, NULL, NULL, 0);
    cp->last_stats_ms = pst_mono_ms();
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        pthread_mutex_lock(&cp->mu);
        cp->res_stats = true;
        cp->res_retained = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        snprintf(cp->res_wal_status, sizeof(cp->res_wal_status), "%s",
                 PQgetvalue(r, 0, 1));
        cp->res_safe = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
        cp->res_flush = cp->flush_lsn;
        cp->res_waiting = cp->f_n;
        pthread_mutex_unlock(&cp->mu);
        cap_post(cp);
    }
    PQclear(r);
}

static void set_streaming(pst_capture *cp, bool on)
{
    pthread_mutex_lock(&cp->mu);
    cp->res_streaming = on;
    pthread_mutex_unlock(&cp->mu);
    cap_post(cp);
}

/* A parallel load asked for the capture to pause (pst_capture_hold): once
 * idle, with everything it wrote committed, it reads the running
 * transactions and the WAL insert position H (in that order, one
 * statement), goes on until everything before H is done, then ends the
 * stream (1) and hands the snapshot to the load (st->hold_snap, under
 * st->mu): a transaction that commits at or after H was not finished in
 * that snapshot, which is what the load checks before it moves the slot
 * past its own WAL (snapshot.c snap_skip_load). A commit of ours after
 * the snapshot was taken starts this over. 0 goes on streaming. */
static int hold_step(pst_capture *cp, char *err, size_t el)
{
    pthread_mutex_lock(&cp->mu);
    bool hold = cp->hold;
    pthread_mutex_unlock(&cp->mu);
    if (!hold) {
        cp->hold_lsn = 0;
        return 0;
    }
    if (cp->in_src) return 0;
    if (cp->db_open) {
        int rc = wr_commit(cp, err, el);
        if (rc) return rc;
        cp->hold_lsn = 0;
    }
    uint64_t now = pst_mono_ms();
    if (!cp->hold_lsn) {
        PGresult *r = PQexec(cp->sql, "SELECT pg_current_snapshot()::text,"
                                      " pg_current_wal_insert_lsn()::text");
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
            pst_pgo_lsn_parse(PQgetvalue(r, 0, 1), &cp->hold_lsn) != 0) {
            pst_pgerr(cp->sql, r, err, el);
            PQclear(r);
            cp->hold_lsn = 0;
            return PST_EDB;
        }
        free(cp->hold_snap);
        cp->hold_snap = strdup(PQgetvalue(r, 0, 0));
        PQclear(r);
        if (!cp->hold_snap) {
            cp->hold_lsn = 0;
            return -ENOMEM;
        }
        cp->hold_ask_ms = 0;
    }
    if (cp->f_n == 0 && cp->flush_lsn >= cp->hold_lsn) {
        pst_store *st = cp->st;
        pthread_mutex_lock(&st->mu);
        free(st->hold_snap);
        st->hold_snap = cp->hold_snap;
        pthread_mutex_unlock(&st->mu);
        cp->hold_snap = NULL;
        cp->hold_lsn = 0;
        cp->held = true;
        send_feedback(cp, false);
        return 1;
    }
    /* a keepalive says how far the walsender has read */
    if (now - cp->hold_ask_ms >= 20) {
        cp->hold_ask_ms = now;
        if (send_feedback(cp, true)) {
            pst_pgerr(cp->repl, NULL, err, el);
            return PST_EDB;
        }
    }
    return 0;
}

/* Streams the slot until an error or a stop. */
static int stream(pst_capture *cp, char *err, size_t el)
{
    char lsn[32], *sql = NULL;
    pst_pgo_lsn_str(cp->capture_lsn, lsn, sizeof(lsn));
    char *id = PQescapeIdentifier(cp->repl, cp->slot, strlen(cp->slot));
    if (!id || asprintf(&sql, "START_REPLICATION SLOT %s LOGICAL %s"
                              " (proto_version '1', publication_names"
                              " 'pmgcm')", id, lsn) < 0) {
        PQfreemem(id);
        return -ENOMEM;
    }
    PQfreemem(id);
    PGresult *r = PQexec(cp->repl, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_COPY_BOTH) {
        pst_pgerr(cp->repl, r, err, el);
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        bool lost = state && (strcmp(state, "55000") == 0 ||
                              strcmp(state, "42704") == 0 ||
                              strcmp(state, "58P01") == 0);
        PQclear(r);
        if (lost) {
            pthread_mutex_lock(&cp->mu);
            cp->res_lost = true;
            pthread_mutex_unlock(&cp->mu);
            cap_post(cp);
        }
        return PST_EDB;
    }
    PQclear(r);
    set_streaming(cp, true);
    pst_pgo_free(cp->dec);
    cp->dec = pst_pgo_new();
    cp->n_rels = 0;
    if (!cp->dec) return -ENOMEM;
    cp->in_src = false;
    cp->end_lsn = cp->capture_lsn;
    int rc = 0;
    while (rc == 0 && !cap_stopping(cp)) {
        for (;;) {
            char *buf = NULL;
            int n = PQgetCopyData(cp->repl, &buf, 1);
            if (n == 0) break;
            if (n < 0) {
                pst_pgerr(cp->repl, NULL, err, el);
                if (!err[0]) snprintf(err, el, "the walsender ended the stream");
                rc = PST_EDB;
                break;
            }
            pst_pgo_copy cpy;
            if (pst_pgo_copy_parse((const uint8_t *)buf, (size_t)n, &cpy)) {
                snprintf(err, el, "malformed message from the walsender");
                rc = PST_EPROTO;
            } else if (cpy.kind == 'k') {
                if (cpy.wal_end > cp->ka_end) cp->ka_end = cpy.wal_end;
                if (cpy.reply) cp->fb_now = true;
            } else {
                rc = on_message(cp, cpy.data, cpy.len, err, el);
            }
            PQfreemem(buf);
            if (rc) break;
            /* a long run of input: commit now and then */
            if (!cp->in_src && cp->db_open &&
                (cp->batch_txns >= BATCH_TXNS || cp->batch_bytes >= BATCH_BYTES))
                rc = wr_commit(cp, err, el);
            if (rc) break;
        }
        if (rc) break;
        /* the input is drained: what is complete goes in (group commit:
         * under load one commit of ours carries what arrived during the
         * last one; GROUP_US > 0 would wait that long for more) */
        if (!cp->in_src && cp->db_open) {
            int64_t left = GROUP_US - (pst_now_us() - cp->open_us);
            if (GROUP_US > 0 && left > 0 && cp->batch_txns < BATCH_TXNS) {
                struct pollfd p = {.fd = PQsocket(cp->repl), .events = POLLIN};
                if (poll(&p, 1, (int)((left + 999) / 1000)) > 0) {
                    if (!PQconsumeInput(cp->repl)) {
                        pst_pgerr(cp->repl, NULL, err, el);
                        rc = PST_EDB;
                        break;
                    }
                    continue;
                }
            }
            if ((rc = wr_commit(cp, err, el))) break;
        }
        fifo_release(cp);
        if (!cp->in_src && !cp->db_open && cp->f_n == 0 &&
            cp->ka_end > cp->flush_lsn) {
            /* idle: everything the walsender sent is done */
            cp->flush_lsn = cp->ka_end;
            cp->fb_now = true;
        }
        if (!cp->in_src && !cp->db_open) done_to(cp, cp->ka_end);
        if ((rc = hold_step(cp, err, el)) != 0) {
            if (rc == 1) rc = 0; /* held: the stream ends */
            break;
        }
        uint64_t now = pst_mono_ms();
        /* a snapshot server waits: a keepalive says how far the walsender
         * has read (everything up to there is done once we are idle) */
        bool want = !cp->in_src &&
                    __atomic_load_n(&cp->st->cap_want_lsn, __ATOMIC_RELAXED) >
                        __atomic_load_n(&cp->st->cap_done_lsn, __ATOMIC_RELAXED);
        bool ask = want && now - cp->want_ask_ms >= WANT_ASK_MS;
        if (ask) cp->want_ask_ms = now;
        if (ask || cp->fb_now || now - cp->last_fb_ms >= FEEDBACK_MS)
            if ((rc = send_feedback(cp, ask))) {
                pst_pgerr(cp->repl, NULL, err, el);
                break;
            }
        if (now - cp->last_stats_ms >= STATS_MS && !cp->db_open) post_stats(cp);
        int wait = (int)(FEEDBACK_MS - (pst_mono_ms() - cp->last_fb_ms));
        if (wait < 0) wait = 0;
        if (want && wait > WANT_ASK_MS) wait = WANT_ASK_MS;
        cap_wait(cp, PQsocket(cp->repl), wait);
        if (!PQconsumeInput(cp->repl)) {
            pst_pgerr(cp->repl, NULL, err, el);
            rc = PST_EDB;
        }
    }
    set_streaming(cp, false);
    return rc;
}

/* What the node's state says about capturing: in a cluster, the slot,
 * where to start. 1 = stream, 0 = nothing to do now, < 0 error. */
static int prepare(pst_capture *cp, char *err, size_t el)
{
    if (!cp->sql) {
        cp->sql = pst_connect(cp->conninfo, NULL, err, el);
        cp->prepared = 0;
        if (!cp->sql) return PST_EDB;
        if (pst_exec(cp->sql, "SET synchronous_commit = local", err, el)) {
            PQfinish(cp->sql);
            cp->sql = NULL;
            return PST_EDB;
        }
        if (pst_slot_name(cp->sql, cp->slot, sizeof(cp->slot), err, el)) {
            PQfinish(cp->sql);
            cp->sql = NULL;
            return PST_EDB;
        }
    }
    PGresult *r = PQexec(cp->sql, "SELECT role, coalesce(capture_lsn,"
                                  " '0/0')::text, seq FROM pmgcm.state");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(cp->sql, r, err, el);
        PQclear(r);
        if (PQstatus(cp->sql) != CONNECTION_OK) {
            PQfinish(cp->sql);
            cp->sql = NULL;
        }
        return PST_EDB;
    }
    bool none = strcmp(PQgetvalue(r, 0, 0), "none") == 0;
    if (pst_pgo_lsn_parse(PQgetvalue(r, 0, 1), &cp->capture_lsn) != 0)
        cp->capture_lsn = 0;
    uint64_t seq = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    bool master = strcmp(PQgetvalue(r, 0, 0), "master") == 0;
    PQclear(r);
    if (none) return 0;
    bool exists, lost;
    if (pst_slot_info(cp->sql, cp->slot, &exists, &lost, err, el))
        return PST_EDB;
    if (!exists || lost) {
        pthread_mutex_lock(&cp->mu);
        cp->res_lost = true;
        pthread_mutex_unlock(&cp->mu);
        cap_post(cp);
        return 0;
    }
    /* with db_sync, what was numbered before this start is released only
     * once the followers hold it */
    cp->f_head = cp->f_n = 0;
    cp->flush_lsn = 0;
    cp->ka_end = 0;
    fifo_push(cp, master ? seq : 0, cp->capture_lsn);
    return 1;
}

static void capture_main(void *arg)
{
    pst_capture *cp = arg;
    char err[256];
    while (!cap_stopping(cp)) {
        err[0] = 0;
        pthread_mutex_lock(&cp->mu);
        if (!cp->hold) cp->held = false;
        bool paused = cp->held;
        pthread_mutex_unlock(&cp->mu);
        if (paused) {
            /* paused for a load until it says so */
            cap_wait(cp, -1, RETRY_MS);
            continue;
        }
        int rc = prepare(cp, err, sizeof(err));
        if (rc == 1) {
            cp->repl = pst_repl_connect(cp->conninfo, cp->slot, err,
                                        sizeof(err));
            if (!cp->repl) {
                rc = PST_EDB;
            } else {
                rc = stream(cp, err, sizeof(err));
                wr_abort(cp);
                PQfinish(cp->repl);
                cp->repl = NULL;
                if (rc == 0) continue; /* stopped */
            }
        }
        if (rc < 0 && !cap_stopping(cp)) {
            cap_error(cp, "capture: %s", err[0] ? err : pst_strerror(rc));
            if (cp->sql && PQstatus(cp->sql) != CONNECTION_OK) {
                PQfinish(cp->sql);
                cp->sql = NULL;
            }
        } else if (rc >= 0) {
            pthread_mutex_lock(&cp->mu);
            if (cp->res_err[0]) {
                cp->res_err[0] = 0;
                cp->res_err_set = true;
            }
            pthread_mutex_unlock(&cp->mu);
        }
        /* until poked (role, setup) or a second passed */
        pthread_mutex_lock(&cp->mu);
        bool poked = cp->poke;
        cp->poke = false;
        pthread_mutex_unlock(&cp->mu);
        if (!poked) cap_wait(cp, -1, RETRY_MS);
    }
    wr_abort(cp);
    if (cp->repl) PQfinish(cp->repl);
    if (cp->sql) PQfinish(cp->sql);
    cp->repl = cp->sql = NULL;
}

/* ---- the loop's side ------------------------------------------------------------------- */

int pst_capture_start(pst_store *st)
{
    pst_capture *cp = calloc(1, sizeof(*cp));
    if (!cp) return -ENOMEM;
    cp->st = st;
    cp->conninfo = strdup(st->conninfo);
    cp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!cp->conninfo || cp->wake_fd < 0) {
        if (cp->wake_fd >= 0) close(cp->wake_fd);
        free(cp->conninfo);
        free(cp);
        return -ENOMEM;
    }
    pthread_mutex_init(&cp->mu, NULL);
    st->cap = cp;
    return 0;
}

/* The thread starts once the schema is set up (it reads pmgcm.state). */
void pst_capture_run(pst_store *st)
{
    pst_capture *cp = st->cap;
    if (!cp || cp->started) return;
    if (uv_thread_create(&cp->tid, capture_main, cp) == 0) cp->started = true;
}

static void cap_wake(pst_capture *cp)
{
    uint64_t one = 1;
    ssize_t k = write(cp->wake_fd, &one, sizeof(one));
    (void)k;
}

void pst_capture_poke(pst_store *st)
{
    pst_capture *cp = st->cap;
    if (!cp) return;
    pthread_mutex_lock(&cp->mu);
    cp->poke = true;
    pthread_mutex_unlock(&cp->mu);
    cap_wake(cp);
}

void pst_capture_set_sync(pst_store *st, uint32_t need, uint64_t acked)
{
    pst_capture *cp = st->cap;
    if (!cp) return;
    pthread_mutex_lock(&cp->mu);
    bool wake = cp->sync_need != need || cp->sync_acked != acked;
    cp->sync_need = need;
    cp->sync_acked = acked;
    pthread_mutex_unlock(&cp->mu);
    if (wake) cap_wake(cp);
}

void pst_capture_numbering(pst_store *st, bool on)
{
    pst_capture *cp = st->cap;
    if (!cp) return;
    pthread_mutex_lock(&cp->mu);
    bool wake = cp->numbering != on;
    cp->numbering = on;
    pthread_mutex_unlock(&cp->mu);
    if (wake) cap_wake(cp);
}

void pst_capture_hold(pst_store *st, bool on)
{
    pst_capture *cp = st->cap;
    pthread_mutex_lock(&st->mu);
    free(st->hold_snap);
    st->hold_snap = NULL;
    pthread_mutex_unlock(&st->mu);
    if (!cp) return;
    pthread_mutex_lock(&cp->mu);
    bool wake = cp->hold != on;
    cp->hold = on;
    pthread_mutex_unlock(&cp->mu);
    if (wake) cap_wake(cp);
}

void pst_capture_want(pst_store *st, uint64_t lsn)
{
    atomic_max(&st->cap_want_lsn, lsn, __ATOMIC_RELAXED);
    pthread_mutex_lock(&st->mu);
    if (st->cap) cap_wake(st->cap);
    pthread_mutex_unlock(&st->mu);
}

uint64_t pst_wal_floor(uint64_t lsn, uint64_t page, uint64_t seg)
{
    if (page < 512 || seg < page) return lsn;
    uint64_t off = lsn % page;
    /* a page header: 24 bytes, a segment's first: 40 (MAXALIGNed) */
    if (off == 24 || (lsn % seg == 40)) return lsn - off;
    return lsn;
}

int pst_capture_wal_now(PGconn *c, uint64_t *lsn, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT pg_current_wal_insert_lsn()::text,"
                            " current_setting('wal_block_size')::bigint,"
                            " pg_size_bytes(current_setting("
                            "'wal_segment_size'))");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
        pst_pgo_lsn_parse(PQgetvalue(r, 0, 0), lsn) != 0) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    *lsn = pst_wal_floor(*lsn, strtoull(PQgetvalue(r, 0, 1), NULL, 10),
                         strtoull(PQgetvalue(r, 0, 2), NULL, 10));
    PQclear(r);
    return 0;
}

int pst_capture_wait(pst_store *st, uint64_t lsn, uint64_t timeout_ms,
                     bool (*stop)(void *ud), void *ud)
{
    if (__atomic_load_n(&st->cap_done_lsn, __ATOMIC_ACQUIRE) >= lsn) return 0;
    uint64_t t0 = pst_mono_ms();
    pst_capture_want(st, lsn);
    while (__atomic_load_n(&st->cap_done_lsn, __ATOMIC_ACQUIRE) < lsn) {
        if (stop && stop(ud)) return -ECANCELED;
        if (pst_mono_ms() - t0 > timeout_ms) return -ETIMEDOUT;
        uv_sleep(2);
    }
    return 0;
}

bool pst_capture_running(pst_store *st)
{
    pthread_mutex_lock(&st->mu);
    bool running = st->cap != NULL;
    pthread_mutex_unlock(&st->mu);
    return running;
}

void pst_capture_stop(pst_store *st)
{
    pst_capture *cp = st->cap;
    if (!cp) return;
    pthread_mutex_lock(&cp->mu);
    cp->stop = true;
    pthread_mutex_unlock(&cp->mu);
    cap_wake(cp);
    if (cp->started) uv_thread_join(&cp->tid);
    pthread_mutex_lock(&st->mu); /* pst_capture_want wakes under it */
    st->cap = NULL;
    pthread_mutex_unlock(&st->mu);
    pthread_mutex_destroy(&cp->mu);
    close(cp->wake_fd);
    free(cp->conninfo);
    free(cp->blog.p);
    free(cp->bolog.p);
    free(cp->bdiv.p);
    held_clear(&cp->hlog);
    held_clear(&cp->holog);
    fr_reset(cp, 0);
    free(cp->fr);
    frames_free(cp->res_fr);
    pst_pgo_free(cp->dec);
    free(cp->hold_snap);
    pthread_mutex_lock(&st->mu);
    free(st->hold_snap);
    st->hold_snap = NULL;
    pthread_mutex_unlock(&st->mu);
    free(cp->rels);
    for (size_t i = 0; i < cp->n_names; i++) free(cp->names[i]);
    free(cp->names);
    free(cp);
}

/* From the store's async callback: what the thread did. */
void pst_capture_poll(pst_store *st)
{
    pst_capture *cp = st->cap;
    if (!cp || st->closing) return;
    pthread_mutex_lock(&cp->mu);
    bool any = cp->res_any, own = cp->res_own, unl = cp->res_unloaded;
    uint64_t ugen = cp->res_unload_gen;
    pst_pos pos = cp->res_pos;
    uint64_t recv = cp->res_recv, cap = cp->res_captured,
             div = cp->res_divergent, oseq = cp->res_own_seq;
    int64_t ts = cp->res_ts, ots = cp->res_own_ts;
    uint32_t cid = cp->res_cid;
    bool err_set = cp->res_err_set, stats = cp->res_stats, lost = cp->res_lost;
    char e[256];
    snprintf(e, sizeof(e), "%s", cp->res_err);
    if (stats) {
        st->info.wal_retained = cp->res_retained;
        snprintf(st->info.slot_status, sizeof(st->info.slot_status), "%s",
                 cp->res_wal_status);
        st->info.slot_safe = cp->res_safe;
        st->info.sync_waiting = cp->res_waiting;
    }
    st->info.capturing = cp->res_streaming;
    pst_cframe *frames = cp->res_fr;
    cp->res_fr = cp->res_fr_tail = NULL;
    cp->res_fr_n = 0;
    cp->res_any = cp->res_own = cp->res_unloaded = false;
    cp->res_captured = cp->res_divergent = 0;
    cp->res_err_set = cp->res_stats = cp->res_lost = false;
    pthread_mutex_unlock(&cp->mu);
    pst_info *i = &st->info;
    if (any && cap && i->master && pst_pos_cmp(pos, i->pos) > 0) {
        i->pos = pos;
        i->recv_seq = recv;
        i->head = pos;
        i->pos_ts_us = i->head_ts_us = ts;
        i->captured_total += cap;
    }
    /* before the sessions look at the new head: those exactly at a
     * frame's start take it as it is */
    for (const pst_cframe *f = frames; f; f = f->next)
        if (i->master && f->to.seq <= i->recv_seq) pst_serve_offer(st, f);
    frames_free(frames);
    if (own) {
        pst_origin *o = pst_opos(st, cid, true);
        if (o && oseq > o->seq) {
            o->seq = o->recv_seq = oseq;
            o->ts_us = ots;
        }
    }
    if (div) {
        i->divergent_total += div;
        pst_log(st, 1,
                "store: DIVERGED: %llu change(s) committed here while this"
                " node was not the master (a transaction that began before a"
                " step-down, or slipped past it) were never sent; kept in"
                " pmgcm.divergence; resyncing with a snapshot",
                (unsigned long long)div);
        pst_start_kept(st);
    }
    if (unl && pst_unloaded(st, ugen)) {
        if (i->state == PST_IN_SYNC) i->state = PST_CATCHING_UP;
    }
    if (err_set) {
        if (e[0]) pst_set_error(st, "%s", e);
        else if (strncmp(i->error, "capture: ", 9) == 0)
            pst_set_error(st, "%s", "");
    } else if (any && strncmp(i->error, "capture: ", 9) == 0) {
        pst_set_error(st, "%s", "");
    }
    if (lost) pst_slot_repair(st);
    if (any || div || unl || stats) {
        pst_sessions_head(st);
        pst_changed(st);
    }
}

/* ---- db_sync: synchronous_standby_names ------------------------------------------ */

typedef struct ssn_job {
    pst_job j;
    bool want;
    bool active; /* result: the setting names our capture connection */
} ssn_job;

static void ssn_run(pst_job *j, PGconn *c)
{
    ssn_job *sj = (ssn_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char slot[64], ours[80];
    int rc = pst_slot_name(c, slot, sizeof(slot), err, el);
    if (rc) {
        j->rc = rc;
        return;
    }
    snprintf(ours, sizeof(ours), "\"%s\"", slot);
    PGresult *r = PQexec(c, "SELECT current_setting('synchronous_standby_names')");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        j->rc = PST_EDB;
        return;
    }
    bool is_ours = strcmp(PQgetvalue(r, 0, 0), ours) == 0 ||
                   strcmp(PQgetvalue(r, 0, 0), slot) == 0;
    PQclear(r);
    char sql[200];
    if (sj->want && !is_ours)
        /* the slot name is [a-z0-9_]: no quoting issue */
        snprintf(sql, sizeof(sql), "ALTER SYSTEM SET synchronous_standby_names"
                 " = '%s'", ours);
    else if (!sj->want && is_ours)
        snprintf(sql, sizeof(sql), "ALTER SYSTEM RESET"
                 " synchronous_standby_names");
    else {
        sj->active = is_ours;
        return;
    }
    if ((rc = pst_exec(c, sql, err, el)) ||
        (rc = pst_exec(c, "SELECT pg_reload_conf()", err, el))) {
        j->rc = rc;
        return;
    }
    sj->active = sj->want;
}

static void ssn_start(pst_store *st);

static void ssn_done(pst_job *j)
{
    ssn_job *sj = (ssn_job *)j;
    pst_store *st = j->st;
    st->ssn_busy = false;
    if (!st->closing) {
        if (j->rc) {
            pst_log(st, 0, "store: db_sync: setting synchronous_standby_names:"
                    " %s", j->err);
        } else {
            st->ssn_checked = true;
        }
        if (j->rc == 0 && sj->active != st->info.sync_active) {
            st->info.sync_active = sj->active;
            pst_log(st, 2, "store: db_sync: synchronous_standby_names %s",
                    sj->active ? "names this node's capture: commits wait"
                                 " for followers"
                               : "reset: commits no longer wait");
            pst_changed(st);
        }
        if (st->ssn_again || sj->want != st->ssn_want) ssn_start(st);
    }
    free(sj);
}

static void ssn_start(pst_store *st)
{
    if (st->closing || !st->info.ready) return;
    if (st->ssn_busy) {
        st->ssn_again = true;
        return;
    }
    ssn_job *sj = calloc(1, sizeof(*sj));
    if (!sj) return;
    sj->want = st->ssn_want;
    sj->j.run = ssn_run;
    sj->j.done = ssn_done;
    st->ssn_busy = true;
    st->ssn_again = false;
    pst_submit(st, &sj->j);
}

/* The setting follows (master && need): from pst_set_sync, role changes
 * and the tick. */
void pst_sync_apply(pst_store *st)
{
    bool want = st->info.master && st->want_master && st->sync_need > 0;
    /* once at start: the setting may be left from an earlier run */
    if (want == st->ssn_want && want == st->info.sync_active &&
        st->ssn_checked && !st->ssn_busy)
        return;
    st->ssn_want = want;
    ssn_start(st);
}

void pst_set_sync(pst_store *st, uint32_t need)
{
    if (need == st->sync_need) return;
    st->sync_need = need;
    pst_sync_update(st);
    pst_sync_apply(st);
}
