/*
 * session.c - store streams (store/store.h): serving and following the
 * change log, snapshots, positions.
 */
#define _GNU_SOURCE
#include "store/internal.h"
#include "store/store.pb-c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef Pmgcm__Store__Msg Msg;
typedef Pmgcm__Store__Open Open;
typedef Pmgcm__Store__Change Change;

#define READ_BATCH 5000
#define FRAME_BYTES (4u << 20)
#define KEEPALIVE_MS 5000
#define SNAP_CHUNK (256u * 1024u)
#define SNAP_PIPE_MAX (8u << 20)
#define APPLY_QUEUE_PAUSE 8
#define MAX_OPEN (4u << 20)

typedef struct snap snap;

struct pst_session {
    pst_store *st;
    pst_link link;
    pst_session *next;
    bool server;
    pst_open_kind kind;
    bool ended;
    uint32_t cid;

    /* frames waiting for the transport */
    pst_buf *out_head, *out_tail;
    bool blocked;

    /* server subscribe */
    pst_pos from;      /* last entry sent */
    bool checked;      /* first read done (range validated) */
    bool reading;
    bool wait_head;    /* client ahead: wait */
    uint64_t last_send_ms;
    pst_pos req_from;

    /* client subscribe: frames to apply, in order */
    pst_buf *ap_head, *ap_tail;
    size_t ap_n;
    bool paused;
    bool applying;

    /* snapshots (either side) */
    snap *sn;

    pst_pos peer_pos;
    uint32_t origin; /* OSUBSCRIBE: whose changes */
    char *schema; /* server snapshot: the client's schema text */
    bool heard;   /* client subscribe: the upstream answered */
    bool end_delivered;
    int end_rc;
    char end_why[256];
};

static void sess_end(pst_session *s, int rc, const char *why);

/* ---- sending ------------------------------------------------------------------------ */

static void sess_flush(pst_session *s)
{
    while (s->out_head && !s->ended) {
        pst_buf *b = s->out_head;
        int rc = s->link.send(s->link.ud, b->data, b->len);
        if (rc == -EAGAIN) {
            s->blocked = true;
            return;
        }
        s->out_head = b->next;
        if (!s->out_head) s->out_tail = NULL;
        free(b);
        if (rc < 0) {
            sess_end(s, rc, "transport");
            return;
        }
    }
    s->blocked = false;
}

static int sess_send_raw(pst_session *s, const uint8_t *buf, size_t len)
{
    if (s->ended) return -ESHUTDOWN;
    if (!s->out_head) {
        int rc = s->link.send(s->link.ud, buf, len);
        if (rc == 0) {
            s->last_send_ms = pst_mono_ms();
            return 0;
        }
        if (rc != -EAGAIN) {
            sess_end(s, rc, "transport");
            return rc;
        }
        s->blocked = true;
    }
    pst_buf *b = pst_buf_new(buf, len);
    if (!b) return -ENOMEM;
    if (s->out_tail) s->out_tail->next = b;
    else s->out_head = b;
    s->out_tail = b;
    s->last_send_ms = pst_mono_ms();
    return 0;
}

static int sess_send_msg(pst_session *s, const Msg *m)
{
    size_t len = pmgcm__store__msg__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return -ENOMEM;
    pmgcm__store__msg__pack(m, buf);
    int rc = sess_send_raw(s, buf, len);
    free(buf);
    return rc;
}

static void sess_send_error(pst_session *s, const char *err)
{
    Msg m = PMGCM__STORE__MSG__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__ERROR;
    m.error = (char *)err;
    sess_send_msg(s, &m);
}

static uint64_t origin_head(pst_store *st, uint32_t o)
{
    pst_origin *p = pst_opos(st, o, false);
    return p ? p->recv_seq : 0;
}

static void sess_send_head(pst_session *s)
{
    pst_info *i = &s->st->info;
    Msg m = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Pos p = PMGCM__STORE__POS__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__HEAD;
    p.epoch = i->pos.epoch;
    p.seq = i->recv_seq;
    if (s->kind == PST_OSUBSCRIBE) {
        p.epoch = 0;
        p.seq = origin_head(s->st, s->origin);
        m.has_origin = true;
        m.origin = s->origin;
    }
    m.head = &p;
    m.has_head_ts_us = true;
    m.head_ts_us = i->head_ts_us;
    m.has_master = true;
    m.master = i->master;
    sess_send_msg(s, &m);
}

/* ---- snapshots: the thread side --------------------------------------------------------- */

struct snap {
    pst_store *st;
    pst_pipe pipe;       /* server: frames out; client: frames in */
    uv_thread_t tid;
    bool started;
    bool finished;       /* thread done (under pipe.mu) */
    bool detached;       /* session gone: the thread frees (under pipe.mu) */
    int rc;
    char err[256];
    char *schema;        /* client: ours; server: the client's */
    /* progress (atomics) */
    uint64_t rows, bytes, est_rows, est_bytes;
    uint32_t tables_done, tables;
    pst_pos pos;
    int64_t ts_us;
    uint64_t new_snapshots;
    uint32_t peer_cid;   /* server: the receiver (its own origin rows stay) */
    uint64_t divergent;  /* client: log entries kept as divergence */
    uint32_t self_cid;   /* client: us */
    pst_tableset *local; /* client: the local replicated set (a copy) */
    char backup[80];     /* client: the backup schema of this load, or "" */
    uint64_t bk_rows;    /* client: rows kept there */
    uint32_t bk_tables;
    pst_origin opos[PST_ORIGINS_MAX]; /* client: positions received */
    size_t n_opos;
};

/* The thread's last act. A session that went away meanwhile left the
 * snap to the thread (detached): it frees it. The store counts running
 * threads so that pst_close can wait for them. */
static void snap_finish(snap *sn, int rc)
{
    pst_store *st = sn->st;
    pthread_mutex_lock(&sn->pipe.mu);
    sn->rc = rc;
    sn->finished = true;
    bool det = sn->detached;
    pthread_mutex_unlock(&sn->pipe.mu);
    if (det) {
        pst_pipe_destroy(&sn->pipe);
        free(sn->schema);
        pst_tableset_free(sn->local);
        free(sn);
    } else {
        uv_async_send(&st->async);
    }
    __atomic_sub_fetch(&st->snap_threads, 1, __ATOMIC_ACQ_REL);
}

static int put_msg(snap *sn, const Msg *m)
{
    size_t len = pmgcm__store__msg__get_packed_size(m);
    pst_buf *b = malloc(sizeof(*b) + len);
    if (!b) return -ENOMEM;
    b->next = NULL;
    b->len = len;
    pmgcm__store__msg__pack(m, b->data);
    int rc = pst_pipe_put(&sn->pipe, b);
    uv_async_send(&sn->st->async);
    return rc;
}

const char *pst_schema(const pst_store *st)
{
    return st->info.ready ? st->schema_text : NULL;
}

const char *pst_schema_diff(const char *mine, const char *master, char *buf,
                            size_t len);

static const char *first_diff(const char *a, const char *b, char *buf,
                              size_t len)
{
    return pst_schema_diff(a, b, buf, len);
}

const char *pst_schema_diff(const char *a, const char *b, char *buf,
                            size_t len)
{
    /* the first line that differs, from either side */
    while (*a && *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a);
        size_t lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || memcmp(a, b, la) != 0) {
            snprintf(buf, len, "master has \"%.*s\", this node has \"%.*s\"",
                     (int)(lb > 300 ? 300 : lb), b, (int)(la > 300 ? 300 : la),
                     a);
            return buf;
        }
        a += la + (ea ? 1 : 0);
        b += lb + (eb ? 1 : 0);
    }
    if (*a)
        snprintf(buf, len, "this node has a table the master lacks: \"%.*s\"",
                 (int)strcspn(a, "\n"), a);
    else if (*b)
        snprintf(buf, len, "the master has a table this node lacks: \"%.*s\"",
                 (int)strcspn(b, "\n"), b);
    else
        snprintf(buf, len, "identical");
    return buf;
}

static void snap_server_main(void *arg)
{
    snap *sn = arg;
    pst_store *st = sn->st;
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    PGresult *r = NULL;
    char *mine = NULL;
    uint64_t total_rows = 0, total_bytes = 0;
    PGconn *c = pst_connect(st->conninfo, err, el);
    if (!c) {
        rc = PST_EDB;
        goto out;
    }
    if ((rc = pst_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                       err, el)))
        goto out;
    r = PQexec(c, "SELECT epoch, seq, coalesce((extract(epoch FROM ts) *"
                  " 1000000)::bigint, 0), loaded FROM pmgcm.state");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    if (PQgetvalue(r, 0, 3)[0] != 't') {
        snprintf(err, el, "this node holds no loaded data to copy");
        rc = PST_EREMOTE;
        goto out;
    }
    Pmgcm__Store__Pos head = PMGCM__STORE__POS__INIT;
    head.epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    head.seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    int64_t ts = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    r = NULL;
    if ((rc = pst_schema_text(c, st, &mine, err, el))) goto out;
    if (sn->schema && strcmp(sn->schema, mine) != 0) {
        char d[700];
        snprintf(err, el, "schema mismatch: %s",
                 first_diff(sn->schema, mine, d, sizeof(d)));
        rc = PST_ESCHEMA;
        goto out;
    }
    /* epochs */
    r = PQexec(c, "SELECT epoch, start_seq, master_cid FROM pmgcm.epochs"
                  " ORDER BY epoch");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    int ne = PQntuples(r);
    Pmgcm__Store__Epoch *ev = calloc((size_t)ne + 1, sizeof(*ev));
    Pmgcm__Store__Epoch **ep = calloc((size_t)ne + 1, sizeof(*ep));
    for (int i = 0; ev && ep && i < ne; i++) {
        pmgcm__store__epoch__init(&ev[i]);
        ev[i].epoch = strtoull(PQgetvalue(r, i, 0), NULL, 10);
        ev[i].start_seq = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        ev[i].master_cid = (uint32_t)strtoul(PQgetvalue(r, i, 2), NULL, 10);
        ep[i] = &ev[i];
    }
    PQclear(r);
    /* per-origin positions, the receiver's own excepted */
    Pmgcm__Store__OriginPos *ov = NULL, **op = NULL;
    int no = 0;
    {
        char pc[16];
        snprintf(pc, sizeof(pc), "%u", sn->peer_cid);
        const char *pv[1] = {pc};
        PGresult *ro = PQexecParams(c, "SELECT origin, seq FROM pmgcm.opos"
                                       " WHERE origin <> $1::int ORDER BY"
                                       " origin", 1, NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(ro) != PGRES_TUPLES_OK) {
            pst_pgerr(c, ro, err, el);
            PQclear(ro);
            free(ev);
            free(ep);
            rc = PST_EDB;
            goto out;
        }
        no = PQntuples(ro);
        ov = calloc((size_t)no + 1, sizeof(*ov));
        op = calloc((size_t)no + 1, sizeof(*op));
        for (int i = 0; ov && op && i < no; i++) {
            pmgcm__store__origin_pos__init(&ov[i]);
            ov[i].origin = (uint32_t)strtoul(PQgetvalue(ro, i, 0), NULL, 10);
            ov[i].seq = strtoull(PQgetvalue(ro, i, 1), NULL, 10);
            op[i] = &ov[i];
        }
        PQclear(ro);
    }
    /* tables with estimates (and the origin column of per-origin ones) */
    r = PQexec(c, "SELECT t.tbl, greatest(c.reltuples, 0)::bigint,"
                  " pg_table_size(c.oid), quote_ident(o.col) FROM pmgcm.tables t"
                  " JOIN pg_class c ON c.oid = t.tbl::regclass"
                  " LEFT JOIN pmgcm.otables o ON o.tbl = t.tbl ORDER BY t.tbl");
    if (!ev || !ep || !ov || !op || PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        free(ev);
        free(ep);
        free(ov);
        free(op);
        goto out;
    }
    int nt = PQntuples(r);
    char **ocols = calloc((size_t)nt + 1, sizeof(*ocols));
    Pmgcm__Store__TableInfo *tv = calloc((size_t)nt + 1, sizeof(*tv));
    Pmgcm__Store__TableInfo **tp = calloc((size_t)nt + 1, sizeof(*tp));
    char **names = calloc((size_t)nt + 1, sizeof(*names));
    for (int i = 0; tv && tp && names && i < nt; i++) {
        pmgcm__store__table_info__init(&tv[i]);
        names[i] = strdup(PQgetvalue(r, i, 0));
        if (ocols && !PQgetisnull(r, i, 3)) ocols[i] = strdup(PQgetvalue(r, i, 3));
        tv[i].name = names[i];
        tv[i].est_rows = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        tv[i].est_bytes = strtoull(PQgetvalue(r, i, 2), NULL, 10);
        tp[i] = &tv[i];
    }
    PQclear(r);
    r = NULL;
    Msg m = PMGCM__STORE__MSG__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__SNAP_BEGIN;
    m.head = &head;
    m.has_head_ts_us = true;
    m.head_ts_us = ts;
    m.n_epochs = (size_t)ne;
    m.epochs = ep;
    m.n_tables = (size_t)nt;
    m.tables = tp;
    m.schema = mine;
    m.n_origins = (size_t)no;
    m.origins = op;
    rc = (tv && tp && names && ocols) ? put_msg(sn, &m) : -ENOMEM;
    free(ev);
    free(ep);
    free(ov);
    free(op);
    free(tv);
    free(tp);
    /* the data, table by table */
    char *chunk = malloc(SNAP_CHUNK + 65536);
    for (int i = 0; rc == 0 && i < nt; i++) {
        Msg t = PMGCM__STORE__MSG__INIT;
        t.kind = PMGCM__STORE__MSG__KIND__SNAP_TABLE;
        t.name = names[i];
        if ((rc = put_msg(sn, &t))) break;
        char *sql = NULL;
        int ar = ocols && ocols[i]
                     ? asprintf(&sql, "COPY (SELECT * FROM %s WHERE %s::text IS"
                                      " DISTINCT FROM '%u') TO STDOUT",
                                names[i], ocols[i], sn->peer_cid)
                     : asprintf(&sql, "COPY %s TO STDOUT", names[i]);
        if (ar < 0 || !chunk) {
            free(sql);
            rc = -ENOMEM;
            break;
        }
        r = PQexec(c, sql);
        free(sql);
        if (PQresultStatus(r) != PGRES_COPY_OUT) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
            break;
        }
        PQclear(r);
        r = NULL;
        size_t fill = 0;
        for (;;) {
            char *row = NULL;
            int n = PQgetCopyData(c, &row, 0);
            if (n > 0) {
                if (fill + (size_t)n > SNAP_CHUNK + 65536 && fill > 0) {
                    Msg d = PMGCM__STORE__MSG__INIT;
                    d.kind = PMGCM__STORE__MSG__KIND__SNAP_DATA;
                    d.has_data = true;
                    d.data.data = (uint8_t *)chunk;
                    d.data.len = fill;
                    if ((rc = put_msg(sn, &d))) {
                        PQfreemem(row);
                        break;
                    }
                    fill = 0;
                }
                if ((size_t)n > SNAP_CHUNK + 65536) {
                    /* one enormous row: its own message */
                    Msg d = PMGCM__STORE__MSG__INIT;
                    d.kind = PMGCM__STORE__MSG__KIND__SNAP_DATA;
                    d.has_data = true;
                    d.data.data = (uint8_t *)row;
                    d.data.len = (size_t)n;
                    rc = put_msg(sn, &d);
                } else {
                    memcpy(chunk + fill, row, (size_t)n);
                    fill += (size_t)n;
                }
                total_rows++;
                total_bytes += (size_t)n;
                __atomic_store_n(&sn->rows, total_rows, __ATOMIC_RELAXED);
                __atomic_store_n(&sn->bytes, total_bytes, __ATOMIC_RELAXED);
                PQfreemem(row);
                if (rc) break;
                if (fill >= SNAP_CHUNK) {
                    Msg d = PMGCM__STORE__MSG__INIT;
                    d.kind = PMGCM__STORE__MSG__KIND__SNAP_DATA;
                    d.has_data = true;
                    d.data.data = (uint8_t *)chunk;
                    d.data.len = fill;
                    if ((rc = put_msg(sn, &d))) break;
                    fill = 0;
                }
                continue;
            }
            if (n == -1) break; /* done */
            pst_pgerr(c, NULL, err, el);
            rc = PST_EDB;
            break;
        }
        if (rc) break;
        r = PQgetResult(c);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
            break;
        }
        PQclear(r);
        r = NULL;
        if (fill) {
            Msg d = PMGCM__STORE__MSG__INIT;
            d.kind = PMGCM__STORE__MSG__KIND__SNAP_DATA;
            d.has_data = true;
            d.data.data = (uint8_t *)chunk;
            d.data.len = fill;
            if ((rc = put_msg(sn, &d))) break;
        }
        __atomic_store_n(&sn->tables_done, (uint32_t)i + 1, __ATOMIC_RELAXED);
    }
    free(chunk);
    for (int i = 0; names && i < nt; i++) free(names[i]);
    free(names);
    for (int i = 0; ocols && i < nt; i++) free(ocols[i]);
    free(ocols);
    if (rc == 0) {
        Msg e = PMGCM__STORE__MSG__INIT;
        e.kind = PMGCM__STORE__MSG__KIND__SNAP_END;
        e.has_rows = e.has_bytes = true;
        e.rows = total_rows;
        e.bytes = total_bytes;
        rc = put_msg(sn, &e);
    }
out:
    if (rc && rc != -ECANCELED) {
        Msg e = PMGCM__STORE__MSG__INIT;
        e.kind = PMGCM__STORE__MSG__KIND__ERROR;
        e.error = err[0] ? err : (char *)pst_strerror(rc);
        put_msg(sn, &e);
    }
    PQclear(r);
    if (c) PQfinish(c);
    free(mine);
    pst_pipe_eof(&sn->pipe);
    snap_finish(sn, rc);
}

/* COPY text of one row into the log: escape \ tab newline CR */
static void copy_esc(char **p, const char *s)
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

/* Ends the table being copied in: 0 or PST_EDB (message in sn->err). */
static int copy_end(snap *sn, PGconn *c)
{
    int rc = 0;
    PQputCopyEnd(c, NULL);
    PGresult *r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, sn->err, sizeof(sn->err));
        rc = PST_EDB;
    }
    PQclear(r);
    while ((r = PQgetResult(c))) PQclear(r);
    __atomic_add_fetch(&sn->tables_done, 1, __ATOMIC_RELAXED);
    return rc;
}

/* SNAP_BEGIN's table list against our replicated set: every name ours,
 * each once, none of ours missing. 0 or PST_ESCHEMA (why in err). */
static int snap_check_tables(const snap *sn, const Msg *m, char *err,
                             size_t el)
{
    char nb[120];
    if (!sn->local) {
        snprintf(err, el, "the replicated set is not known yet");
        return PST_ESCHEMA;
    }
    uint8_t *seen = calloc(sn->local->n + 1, 1);
    if (!seen) return -ENOMEM;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < m->n_tables; i++) {
        int ti = pst_tableset_find(sn->local, m->tables[i]->name);
        if (ti < 0 || seen[ti]) {
            snprintf(err, el, "snapshot %s table \"%s\"%s",
                     ti < 0 ? "carries" : "repeats",
                     pst_safe_name(m->tables[i]->name, nb, sizeof(nb)),
                     ti < 0 ? ", which is not replicated here" : "");
            rc = PST_ESCHEMA;
        } else {
            seen[ti] = 1;
        }
    }
    for (size_t i = 0; rc == 0 && i < sn->local->n; i++)
        if (!seen[i]) {
            snprintf(err, el, "snapshot lacks table %s, which is"
                     " replicated here",
                     pst_safe_name(sn->local->t[i].name, nb, sizeof(nb)));
            rc = PST_ESCHEMA;
        }
    free(seen);
    return rc;
}

/* SNAP_BEGIN, in the load's transaction: is this node's data a prefix of
 * the snapshot's lineage (loaded, its term is the one that covers its
 * position there, not past the snapshot's head)? Else a backup of what the
 * snapshot replaces (backup.c). 0 or an error (why in sn->err). */
static int snap_backup_begin(snap *sn, PGconn *c, const Msg *m)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    PGresult *r = PQexec(c, "SELECT loaded, epoch, seq FROM pmgcm.state"
                            " FOR UPDATE");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    bool loaded = PQgetvalue(r, 0, 0)[0] == 't';
    pst_pos pos = {strtoull(PQgetvalue(r, 0, 1), NULL, 10),
                   strtoull(PQgetvalue(r, 0, 2), NULL, 10)};
    PQclear(r);
    pst_pos *ep = calloc(m->n_epochs + 1, sizeof(*ep));
    if (!ep) return -ENOMEM;
    for (size_t i = 0; i < m->n_epochs; i++) {
        ep[i].epoch = m->epochs[i]->epoch;
        ep[i].seq = m->epochs[i]->start_seq;
    }
    pst_pos head = {m->head->epoch, m->head->seq};
    bool prefix = pst_lineage_prefix(loaded, pos, ep, m->n_epochs, head);
    free(ep);
    if (prefix) return 0;
    char why[300];
    snprintf(why, sizeof(why),
             "replaced by a snapshot at %llu/%llu; this node's data (%s,"
             " at %llu/%llu) was not part of that history",
             (unsigned long long)head.epoch, (unsigned long long)head.seq,
             loaded ? "loaded" : "not loaded",
             (unsigned long long)pos.epoch, (unsigned long long)pos.seq);
    return pst_backup_begin(c, sn->local, sn->self_cid, why, sn->backup,
                            sizeof(sn->backup), err, el);
}

static int snap_client_load(snap *sn, PGconn *c)
{
    pst_store *st = sn->st;
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    bool in_copy = false, begun = false, done = false;
    pst_buf *b;
    while (!done && (b = pst_pipe_get(&sn->pipe)) != NULL) {
        Msg *m = pmgcm__store__msg__unpack(NULL, b->len, b->data);
        free(b);
        if (!m) {
            snprintf(err, el, "malformed snapshot message");
            return PST_EPROTO;
        }
        switch (m->kind) {
        case PMGCM__STORE__MSG__KIND__SNAP_BEGIN: {
            if (begun || !m->head || !m->schema) {
                rc = PST_EPROTO;
                snprintf(err, el, "unexpected snapshot start");
                break;
            }
            if (strcmp(m->schema, sn->schema) != 0) {
                char d[700];
                snprintf(err, el, "schema mismatch: %s",
                         first_diff(sn->schema, m->schema, d, sizeof(d)));
                rc = PST_ESCHEMA;
                break;
            }
            sn->pos.epoch = m->head->epoch;
            sn->pos.seq = m->head->seq;
            sn->ts_us = m->has_head_ts_us ? m->head_ts_us : 0;
            uint64_t er = 0, eb = 0;
            for (size_t i = 0; i < m->n_tables; i++) {
                er += m->tables[i]->est_rows;
                eb += m->tables[i]->est_bytes;
            }
            __atomic_store_n(&sn->est_rows, er, __ATOMIC_RELAXED);
            __atomic_store_n(&sn->est_bytes, eb, __ATOMIC_RELAXED);
            __atomic_store_n(&sn->tables, (uint32_t)m->n_tables,
                             __ATOMIC_RELAXED);
            if ((rc = pst_exec(c, "BEGIN", err, el))) break;
            begun = true;
            /* the snapshot must carry exactly our replicated set; what
             * goes into SQL below are our own names, never the received
             * ones */
            if ((rc = snap_check_tables(sn, m, err, el))) break;
            /* data that is not a prefix of the snapshot's lineage: keep
             * what the snapshot replaces */
            if ((rc = snap_backup_begin(sn, c, m))) break;
            /* everything replicated goes, in one statement (foreign keys);
             * per-origin tables keep this node's own rows */
            PGresult *ro = PQexec(c, "SELECT tbl, quote_ident(col) FROM"
                                     " pmgcm.otables");
            if (PQresultStatus(ro) != PGRES_TUPLES_OK) {
                pst_pgerr(c, ro, err, el);
                PQclear(ro);
                rc = PST_EDB;
                break;
            }
            size_t len = 64, nt = 0;
            for (size_t i = 0; i < sn->local->n; i++)
                len += strlen(sn->local->t[i].name) + 2;
            char *sql = malloc(len), *p = sql;
            if (!sql) {
                PQclear(ro);
                rc = -ENOMEM;
                break;
            }
            p += sprintf(p, "TRUNCATE ");
            for (size_t i = 0; i < sn->local->n; i++) {
                if (sn->local->t[i].origin) continue;
                p += sprintf(p, "%s%s", nt++ ? ", " : "",
                             sn->local->t[i].name);
            }
            if (nt) rc = pst_exec(c, sql, err, el);
            free(sql);
            for (int k = 0; rc == 0 && k < PQntuples(ro); k++) {
                char *d = NULL;
                if (asprintf(&d, "DELETE FROM %s WHERE %s::text IS DISTINCT"
                                 " FROM '%u'", PQgetvalue(ro, k, 0),
                             PQgetvalue(ro, k, 1), sn->self_cid) < 0) {
                    rc = -ENOMEM;
                    break;
                }
                rc = pst_exec(c, d, err, el);
                free(d);
            }
            PQclear(ro);
            if (rc) break;
            /* other origins' positions come with the snapshot */
            char q0[160];
            snprintf(q0, sizeof(q0),
                     "DELETE FROM pmgcm.olog WHERE origin <> %u;"
                     "DELETE FROM pmgcm.opos WHERE origin <> %u",
                     sn->self_cid, sn->self_cid);
            if ((rc = pst_exec(c, q0, err, el))) break;
            sn->n_opos = 0;
            for (size_t i = 0; i < m->n_origins && rc == 0; i++) {
                if (m->origins[i]->origin == sn->self_cid) continue;
                char q[160];
                snprintf(q, sizeof(q),
                         "INSERT INTO pmgcm.opos VALUES (%u, %llu, %llu, now())",
                         m->origins[i]->origin,
                         (unsigned long long)m->origins[i]->seq,
                         (unsigned long long)m->origins[i]->seq);
                rc = pst_exec(c, q, err, el);
                if (sn->n_opos < PST_ORIGINS_MAX) {
                    pst_origin *o = &sn->opos[sn->n_opos++];
                    memset(o, 0, sizeof(*o));
                    o->origin = m->origins[i]->origin;
                    o->seq = o->recv_seq = m->origins[i]->seq;
                }
            }
            if (rc) break;
            /* entries of our log the snapshot's lineage does not hold (a
             * term after ours started before them, e.g. an old master's
             * numbered but unsent changes) are kept as divergence before
             * the log restarts at the snapshot */
            {
                char *vals = NULL;
                size_t vl = 0;
                FILE *vf = open_memstream(&vals, &vl);
                if (!vf) {
                    rc = -ENOMEM;
                    break;
                }
                fputs("WITH e(epoch, start_seq) AS (VALUES (0::bigint,"
                      " 0::bigint)", vf);
                for (size_t i = 0; i < m->n_epochs; i++)
                    fprintf(vf, ", (%llu, %llu)",
                            (unsigned long long)m->epochs[i]->epoch,
                            (unsigned long long)m->epochs[i]->start_seq);
                fprintf(vf,
                        "), d AS (SELECT l.* FROM pmgcm.log l WHERE l.op <>"
                        " 'E' AND l.seq >= (SELECT min(start_seq) FROM e"
                        " WHERE e.epoch > l.epoch))"
                        " INSERT INTO pmgcm.divergence (reason, epoch, seq,"
                        " op, tbl, old, new, ts) SELECT 'not received by the"
                        " cluster: a later term started before it; replaced"
                        " by a snapshot at %llu/%llu', epoch, seq, op, tbl,"
                        " old, new, ts FROM d ORDER BY seq",
                        (unsigned long long)m->head->epoch,
                        (unsigned long long)m->head->seq);
                if (fclose(vf) != 0) {
                    free(vals);
                    rc = -ENOMEM;
                    break;
                }
                PGresult *rd = PQexec(c, vals);
                free(vals);
                if (PQresultStatus(rd) != PGRES_COMMAND_OK) {
                    pst_pgerr(c, rd, err, el);
                    PQclear(rd);
                    rc = PST_EDB;
                    break;
                }
                sn->divergent = strtoull(PQcmdTuples(rd), NULL, 10);
                PQclear(rd);
            }
            /* the epochs and the log restart at the snapshot */
            if ((rc = pst_exec(c, "DELETE FROM pmgcm.log;"
                                  "DELETE FROM pmgcm.epochs", err, el)))
                break;
            for (size_t i = 0; i < m->n_epochs; i++) {
                char q[200];
                snprintf(q, sizeof(q),
                         "INSERT INTO pmgcm.epochs VALUES (%llu, %llu, %u)",
                         (unsigned long long)m->epochs[i]->epoch,
                         (unsigned long long)m->epochs[i]->start_seq,
                         m->epochs[i]->master_cid);
                if ((rc = pst_exec(c, q, err, el))) break;
            }
            break;
        }
        case PMGCM__STORE__MSG__KIND__SNAP_TABLE: {
            if (!begun || !m->name) {
                rc = PST_EPROTO;
                snprintf(err, el, "table before snapshot start");
                break;
            }
            if (in_copy) {
                in_copy = false;
                if ((rc = copy_end(sn, c))) break;
            }
            /* only a table of our replicated set, under our name */
            char *sql = NULL;
            int ti = pst_tableset_find(sn->local, m->name);
            if (ti < 0) {
                char nb[120];
                snprintf(err, el, "snapshot carries table \"%s\", which is"
                         " not replicated here",
                         pst_safe_name(m->name, nb, sizeof(nb)));
                rc = PST_ESCHEMA;
                break;
            }
            PGresult *r;
            if (asprintf(&sql, "COPY %s FROM STDIN",
                         sn->local->t[ti].name) < 0) {
                rc = -ENOMEM;
                break;
            }
            r = PQexec(c, sql);
            free(sql);
            if (PQresultStatus(r) != PGRES_COPY_IN) {
                pst_pgerr(c, r, err, el);
                PQclear(r);
                rc = PST_EDB;
                break;
            }
            PQclear(r);
            in_copy = true;
            break;
        }
        case PMGCM__STORE__MSG__KIND__SNAP_DATA:
            if (!in_copy || !m->has_data) {
                rc = PST_EPROTO;
                snprintf(err, el, "data outside a table");
                break;
            }
            if (PQputCopyData(c, (const char *)m->data.data,
                              (int)m->data.len) != 1) {
                pst_pgerr(c, NULL, err, el);
                rc = PST_EDB;
                break;
            }
            {
                uint64_t nl = 0;
                for (size_t i = 0; i < m->data.len; i++)
                    nl += m->data.data[i] == '\n';
                __atomic_add_fetch(&sn->rows, nl, __ATOMIC_RELAXED);
                __atomic_add_fetch(&sn->bytes, m->data.len, __ATOMIC_RELAXED);
            }
            break;
        case PMGCM__STORE__MSG__KIND__SNAP_END: {
            if (!begun) {
                rc = PST_EPROTO;
                break;
            }
            if (in_copy) {
                in_copy = false;
                if ((rc = copy_end(sn, c))) break;
            }
            if (sn->backup[0] &&
                (rc = pst_backup_end(c, sn->local, sn->backup, &sn->bk_rows,
                                     &sn->bk_tables, err, el)))
                break;
            char q[400];
            snprintf(q, sizeof(q),
                     "UPDATE pmgcm.state SET epoch = %llu, seq = %llu,"
                     " recv_seq = %llu, ts = CASE WHEN %lld > 0 THEN"
                     " to_timestamp(%lld / 1000000.0) ELSE now() END,"
                     " loaded = true, snapshots = snapshots + 1"
                     " RETURNING snapshots",
                     (unsigned long long)sn->pos.epoch,
                     (unsigned long long)sn->pos.seq,
                     (unsigned long long)sn->pos.seq, (long long)sn->ts_us,
                     (long long)sn->ts_us);
            PGresult *r = PQexec(c, q);
            if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                pst_pgerr(c, r, err, el);
                PQclear(r);
                rc = PST_EDB;
                break;
            }
            sn->new_snapshots = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
            PQclear(r);
            rc = pst_exec(c, "COMMIT", err, el);
            done = true;
            break;
        }
        case PMGCM__STORE__MSG__KIND__ERROR:
            snprintf(err, el, "%s", m->error ? m->error : "peer error");
            rc = strncmp(err, "schema mismatch", 15) == 0 ? PST_ESCHEMA
                                                          : PST_EREMOTE;
            break;
        default:
            rc = PST_EPROTO;
            snprintf(err, el, "unexpected message %d in a snapshot", m->kind);
        }
        pmgcm__store__msg__free_unpacked(m, NULL);
        if (rc) break;
    }
    (void)st;
    if (!done && rc == 0) {
        rc = -ECONNRESET;
        snprintf(err, el, "the snapshot stream ended early");
    }
    if (in_copy) PQputCopyEnd(c, "aborted");
    return rc;
}

static void snap_client_main(void *arg)
{
    snap *sn = arg;
    int rc;
    PGconn *c = pst_connect(sn->st->conninfo, sn->err, sizeof(sn->err));
    if (!c) {
        rc = PST_EDB;
    } else {
        rc = snap_client_load(sn, c);
        PQfinish(c); /* an open transaction rolls back: old data stays */
    }
    snap_finish(sn, rc);
}

static snap *snap_start(pst_session *s, bool server, const char *schema)
{
    pst_store *st = s->st;
    snap *sn = calloc(1, sizeof(*sn));
    if (!sn) return NULL;
    sn->st = st;
    sn->peer_cid = s->cid;
    sn->self_cid = st->self_cid;
    sn->schema = schema ? strdup(schema) : NULL;
    if (!server) {
        sn->local = pst_tableset_dup(st->tables);
        if (!sn->local) {
            free(sn->schema);
            free(sn);
            return NULL;
        }
    }
    pst_pipe_init(&sn->pipe, SNAP_PIPE_MAX);
    __atomic_add_fetch(&st->snap_threads, 1, __ATOMIC_ACQ_REL);
    if (uv_thread_create(&sn->tid,
                         server ? snap_server_main : snap_client_main,
                         sn) != 0) {
        __atomic_sub_fetch(&st->snap_threads, 1, __ATOMIC_ACQ_REL);
        pst_pipe_destroy(&sn->pipe);
        free(sn->schema);
        pst_tableset_free(sn->local);
        free(sn);
        return NULL;
    }
    pthread_detach(sn->tid);
    sn->started = true;
    return sn;
}

/* Never waits: a running thread is told to stop and frees sn itself. */
static void snap_free(snap *sn)
{
    pthread_mutex_lock(&sn->pipe.mu);
    bool fin = sn->finished;
    if (!fin) sn->detached = true;
    pthread_mutex_unlock(&sn->pipe.mu);
    if (!fin) return;
    pst_pipe_destroy(&sn->pipe);
    free(sn->schema);
    pst_tableset_free(sn->local);
    free(sn);
}

/* ---- sessions: common ------------------------------------------------------------------- */

static void sess_list_remove(pst_session *s)
{
    pst_session **pp = &s->st->sessions;
    while (*pp && *pp != s) pp = &(*pp)->next;
    if (*pp) *pp = s->next;
}

static pst_session *sess_new(pst_store *st, const pst_link *link, bool server)
{
    pst_session *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->st = st;
    s->link = *link;
    s->server = server;
    s->next = st->sessions;
    st->sessions = s;
    s->last_send_ms = pst_mono_ms();
    return s;
}

/* Deferred end: link->end never runs inside a call from the caller; it
 * is delivered from the store's async callback (pst_session_poll_all). */
static void sess_end(pst_session *s, int rc, const char *why)
{
    if (s->ended) return;
    s->ended = true;
    s->end_rc = rc;
    snprintf(s->end_why, sizeof(s->end_why), "%s",
             why ? why : pst_strerror(rc));
    if (s->sn && rc != 0) pst_pipe_abort(&s->sn->pipe);
    uv_async_send(&s->st->async);
}

static void deliver_ends(pst_store *st)
{
again:
    for (pst_session *s = st->sessions; s; s = s->next) {
        if (s->ended && !s->end_delivered) {
            s->end_delivered = true;
            if (s->link.end) {
                s->link.end(s->link.ud, s->end_rc, s->end_why);
                goto again; /* the list may have changed */
            }
        }
    }
}

void pst_session_free(pst_session *s)
{
    if (!s) return;
    s->ended = true;
    sess_list_remove(s);
    while (s->out_head) {
        pst_buf *b = s->out_head;
        s->out_head = b->next;
        free(b);
    }
    while (s->ap_head) {
        pst_buf *b = s->ap_head;
        s->ap_head = b->next;
        free(b);
    }
    if (s->sn) {
        pst_pipe_abort(&s->sn->pipe);
        snap_free(s->sn); /* the thread exits promptly once aborted */
    }
    free(s->schema);
    /* a read or apply job in flight keeps a pointer: it checks detached
     * sessions through the store's list */
    free(s);
}

void pst_session_eof(pst_session *s)
{
    if (s->ended) return;
    if (!s->server && s->kind == PST_SNAPSHOT && s->sn) {
        pst_pipe_eof(&s->sn->pipe);
        return;
    }
    sess_end(s, -ECONNRESET, "the peer closed the stream");
}

pst_pos pst_session_peer_pos(const pst_session *s)
{
    return s->peer_pos;
}

void pst_session_writable(pst_session *s)
{
    sess_flush(s);
    pst_session_poll_all(s->st);
}

static bool sess_alive(pst_store *st, pst_session *s)
{
    for (pst_session *p = st->sessions; p; p = p->next)
        if (p == s) return !s->ended;
    return false;
}

/* ---- server: subscribe ------------------------------------------------------------------ */

typedef struct read_job {
    pst_job j;
    pst_session *s;
    pst_pos from;
    uint64_t upto;
    bool check;
    bool is_origin;
    uint32_t origin;
    /* results */
    int verdict; /* 0 entries, 1 need snapshot, 2 diverged, 3 ahead, 4 wait */
    pst_pos fork;
    uint8_t *frame;
    size_t frame_len;
    uint64_t n;
    pst_pos last;
} read_job;

static void encode_changes(read_job *rj, PGresult *r)
{
    pst_job *j = &rj->j;
    int n = PQntuples(r);
    if (n == 0 || strtoull(PQgetvalue(r, 0, 0), NULL, 10) != rj->from.seq + 1) {
        rj->verdict = n == 0 && rj->upto <= rj->from.seq ? 4 : 1;
        return;
    }
    Change *cv = calloc((size_t)n, sizeof(*cv));
    Change **cp = calloc((size_t)n, sizeof(*cp));
    if (!cv || !cp) {
        free(cv);
        free(cp);
        j->rc = -ENOMEM;
        return;
    }
    /* at most FRAME_BYTES of row data per frame (the first change always
     * goes, so a lone huge change still moves; the transport refuses
     * frames over its limit) */
    size_t bytes = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
        bytes += 64 + (size_t)PQgetlength(r, i, 3) + (size_t)PQgetlength(r, i, 4) +
                 (size_t)PQgetlength(r, i, 5);
        if (i > 0 && bytes > FRAME_BYTES) {
            keep = i;
            break;
        }
    }
    n = keep;
    for (int i = 0; i < n; i++) {
        pmgcm__store__change__init(&cv[i]);
        cv[i].seq = strtoull(PQgetvalue(r, i, 0), NULL, 10);
        cv[i].epoch = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        cv[i].op = (uint8_t)PQgetvalue(r, i, 2)[0];
        if (!PQgetisnull(r, i, 3)) cv[i].tbl = PQgetvalue(r, i, 3);
        if (!PQgetisnull(r, i, 4)) cv[i].old = PQgetvalue(r, i, 4);
        if (!PQgetisnull(r, i, 5)) cv[i].new_ = PQgetvalue(r, i, 5);
        cv[i].ts_us = strtoll(PQgetvalue(r, i, 6), NULL, 10);
        cv[i].last = PQgetvalue(r, i, 7)[0] == 't';
        cv[i].has_origin = true;
        cv[i].origin = (uint32_t)strtoul(PQgetvalue(r, i, 8), NULL, 10);
        cp[i] = &cv[i];
    }
    Msg m = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Pos hd = PMGCM__STORE__POS__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__CHANGES;
    m.n_changes = (size_t)n;
    m.changes = cp;
    /* the server's head, so the client knows how far behind it is */
    hd.epoch = cv[n - 1].epoch;
    hd.seq = rj->upto;
    m.head = &hd;
    rj->frame_len = pmgcm__store__msg__get_packed_size(&m);
    rj->frame = malloc(rj->frame_len);
    if (rj->frame) pmgcm__store__msg__pack(&m, rj->frame);
    else j->rc = -ENOMEM;
    rj->n = (uint64_t)n;
    rj->last.seq = cv[n - 1].seq;
    rj->last.epoch = cv[n - 1].epoch;
    free(cv);
    free(cp);
}

/* Runs a log query (seq, epoch, op, tbl, old, new, ts_us, last, origin)
 * and encodes its rows as the next CHANGES frame. */
static void read_entries(read_job *rj, PGconn *c, const char *sql, int n,
                         const char *const *pv)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, rj->j.err, sizeof(rj->j.err));
        rj->j.rc = PST_EDB;
    } else {
        encode_changes(rj, r);
    }
    PQclear(r);
}

static void read_run(pst_job *j, PGconn *c)
{
    read_job *rj = (read_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char eb[24], sb[24], ub[24], ob[16];
    snprintf(eb, sizeof(eb), "%llu", (unsigned long long)rj->from.epoch);
    snprintf(sb, sizeof(sb), "%llu", (unsigned long long)rj->from.seq);
    snprintf(ub, sizeof(ub), "%llu", (unsigned long long)rj->upto);
    snprintf(ob, sizeof(ob), "%u", rj->origin);
    if (rj->is_origin) {
        /* one origin's log: contiguous from the client's position, or a
         * snapshot is needed */
        if (rj->from.seq >= rj->upto) {
            rj->verdict = 4;
            return;
        }
        const char *pv[4] = {ob, sb, ub, NULL};
        char lim[16];
        snprintf(lim, sizeof(lim), "%d", READ_BATCH);
        pv[3] = lim;
        read_entries(rj, c,
                     "SELECT seq, 0, op, tbl, old::text, new::text,"
                     " (extract(epoch FROM ts) * 1000000)::bigint, last,"
                     " origin FROM pmgcm.olog WHERE origin = $1::int AND seq >"
                     " $2::bigint AND seq <= $3::bigint ORDER BY seq LIMIT"
                     " $4::int",
                     4, pv);
        return;
    }
    if (rj->check) {
        const char *pv[2] = {eb, sb};
        PGresult *r = PQexecParams(
            c,
            "SELECT (SELECT epoch FROM pmgcm.log WHERE seq = $2::bigint),"
            " (SELECT min(start_seq) FROM pmgcm.epochs WHERE epoch >"
            " $1::bigint), (SELECT min(seq) FROM pmgcm.log),"
            " (SELECT recv_seq FROM pmgcm.state), (SELECT epoch FROM"
            " pmgcm.state)",
            2, NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            pst_pgerr(c, r, err, el);
            PQclear(r);
            j->rc = PST_EDB;
            return;
        }
        bool has_at = !PQgetisnull(r, 0, 0), has_next = !PQgetisnull(r, 0, 1);
        bool has_min = !PQgetisnull(r, 0, 2);
        uint64_t at = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        uint64_t next = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
        uint64_t min = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
        uint64_t head = strtoull(PQgetvalue(r, 0, 3), NULL, 10);
        uint64_t sep = strtoull(PQgetvalue(r, 0, 4), NULL, 10);
        PQclear(r);
        if (rj->from.seq == 0) {
            rj->verdict = 1;
        } else if (has_next && rj->from.seq >= next) {
            rj->verdict = 2;
            rj->fork.seq = next - 1;
            rj->fork.epoch = rj->from.epoch;
        } else if (rj->from.epoch > sep) {
            rj->verdict = 3;
        } else if (has_at && at != rj->from.epoch) {
            rj->verdict = 2; /* cannot happen with consistent epochs */
            rj->fork.seq = rj->from.seq - 1;
            rj->fork.epoch = rj->from.epoch;
        } else if (rj->from.seq > head) {
            rj->verdict = 4;
        } else if (rj->from.seq == head) {
            rj->verdict = 4;
        } else if (!has_min || rj->from.seq + 1 < min) {
            rj->verdict = 1;
        }
        if (rj->verdict) return;
    }
    const char *pv[2] = {sb, ub};
    char lim[16];
    snprintf(lim, sizeof(lim), "%d", READ_BATCH);
    const char *pv3[3] = {pv[0], pv[1], lim};
    read_entries(rj, c,
                 "SELECT seq, epoch, op, tbl, old::text, new::text,"
                 " (extract(epoch FROM ts) * 1000000)::bigint, last, origin"
                 " FROM pmgcm.log WHERE seq > $1::bigint AND seq <= $2::bigint"
                 " ORDER BY seq LIMIT $3::int",
                 3, pv3);
}

static void serve_pump(pst_session *s);

static void read_done(pst_job *j)
{
    read_job *rj = (read_job *)j;
    pst_store *st = j->st;
    pst_session *s = rj->s;
    if (st->closing || !sess_alive(st, s)) {
        free(rj->frame);
        free(rj);
        return;
    }
    s->reading = false;
    if (j->rc) {
        sess_send_error(s, j->err);
        sess_end(s, j->rc, j->err);
    } else if (rj->verdict == 1) {
        Msg m = PMGCM__STORE__MSG__INIT;
        m.kind = PMGCM__STORE__MSG__KIND__NEED_SNAPSHOT;
        sess_send_msg(s, &m);
        sess_end(s, 0, "sent: need a snapshot");
    } else if (rj->verdict == 2) {
        Msg m = PMGCM__STORE__MSG__INIT;
        Pmgcm__Store__Pos f = PMGCM__STORE__POS__INIT;
        m.kind = PMGCM__STORE__MSG__KIND__DIVERGED;
        f.epoch = rj->fork.epoch;
        f.seq = rj->fork.seq;
        m.fork = &f;
        sess_send_msg(s, &m);
        sess_end(s, 0, "sent: diverged");
    } else if (rj->verdict == 3) {
        sess_send_error(s, "this node is behind you (older epoch)");
        sess_end(s, PST_EAHEAD, "client ahead");
    } else {
        s->checked = true;
        if (rj->verdict == 4) {
            if (s->from.seq == 0) s->from = rj->from;
            sess_send_head(s);
        } else {
            sess_send_raw(s, rj->frame, rj->frame_len);
            s->from = rj->last;
        }
        serve_pump(s);
    }
    free(rj->frame);
    free(rj);
}

static void serve_pump(pst_session *s)
{
    pst_store *st = s->st;
    if (s->ended || s->reading || s->blocked || !st->info.ready) return;
    bool org = s->kind == PST_OSUBSCRIBE;
    uint64_t head = org ? origin_head(st, s->origin) : st->info.recv_seq;
    if (!s->checked || s->from.seq < head) {
        read_job *rj = calloc(1, sizeof(*rj));
        if (!rj) return;
        rj->s = s;
        rj->from = s->checked ? s->from : s->req_from;
        rj->upto = head;
        rj->check = !s->checked;
        rj->is_origin = org;
        rj->origin = s->origin;
        rj->j.run = read_run;
        rj->j.done = read_done;
        s->reading = true;
        pst_submit(st, &rj->j);
        return;
    }
    if (pst_mono_ms() - s->last_send_ms >= KEEPALIVE_MS) sess_send_head(s);
}

/* ---- server: snapshot / position ---------------------------------------------------------- */

static void snap_server_pump(pst_session *s)
{
    snap *sn = s->sn;
    while (!s->ended && !s->blocked) {
        bool eof;
        pst_buf *b = pst_pipe_try_get(&sn->pipe, &eof);
        if (!b) {
            if (eof) {
                pthread_mutex_lock(&sn->pipe.mu);
                bool fin = sn->finished;
                int rc = sn->rc;
                pthread_mutex_unlock(&sn->pipe.mu);
                if (fin) {
                    if (rc == 0)
                        pst_log(s->st, 2, "store: snapshot sent: %llu rows,"
                                " %llu bytes", (unsigned long long)sn->rows,
                                (unsigned long long)sn->bytes);
                    else
                        pst_log(s->st, 1, "store: snapshot for a peer"
                                " failed: %s", sn->err);
                    sess_end(s, rc, rc ? sn->err : "snapshot sent");
                }
            }
            return;
        }
        sess_send_raw(s, b->data, b->len);
        free(b);
    }
}

int pst_server(pst_store *st, const uint8_t *open, size_t len,
               const pst_link *link, pst_session **out)
{
    if (!st->info.ready) return -EAGAIN;
    if (len > MAX_OPEN) return -EINVAL;
    Open *o = pmgcm__store__open__unpack(NULL, len, open);
    if (!o) return -EINVAL;
    pst_session *s = sess_new(st, link, true);
    if (!s) {
        pmgcm__store__open__free_unpacked(o, NULL);
        return -ENOMEM;
    }
    s->kind = (pst_open_kind)o->kind;
    s->cid = o->has_cid ? o->cid : 0;
    int rc = 0;
    switch (o->kind) {
    case PMGCM__STORE__OPEN__KIND__SUBSCRIBE:
        if (!o->from) {
            rc = -EINVAL;
            break;
        }
        s->req_from.epoch = o->from->epoch;
        s->req_from.seq = o->from->seq;
        break;
    case PMGCM__STORE__OPEN__KIND__SNAPSHOT:
        s->sn = snap_start(s, true, o->schema);
        if (!s->sn) rc = -ENOMEM;
        else pst_log(st, 2, "store: sending a snapshot to node %u", s->cid);
        break;
    case PMGCM__STORE__OPEN__KIND__POSITION:
        break;
    case PMGCM__STORE__OPEN__KIND__OSUBSCRIBE:
        if (!o->from || !o->has_origin || o->origin == 0) {
            rc = -EINVAL;
            break;
        }
        s->origin = o->origin;
        s->req_from.seq = o->from->seq;
        break;
    default:
        rc = -EINVAL;
    }
    pmgcm__store__open__free_unpacked(o, NULL);
    if (rc) {
        sess_list_remove(s);
        free(s);
        return rc;
    }
    *out = s;
    uv_async_send(&st->async); /* first pump from the loop */
    return 0;
}

/* ---- client: subscribe (apply) -------------------------------------------------------- */

typedef struct apply_job {
    pst_job j;
    pst_session *s;
    bool is_origin;
    uint32_t origin;
    pst_buf *frame;
    uint64_t expect_recv; /* our recv_seq before this frame */
    /* results */
    pst_pos pos;
    uint64_t recv_seq;
    int64_t ts_us;
    uint64_t applied;
    bool advanced;
} apply_job;

static void apply_run(pst_job *j, PGconn *c)
{
    apply_job *aj = (apply_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    /* every queued frame in one transaction: one commit per batch of
     * frames keeps up with many small frames */
    size_t nf = 0, total = 0;
    for (pst_buf *b = aj->frame; b; b = b->next) nf++;
    Msg **msgs = calloc(nf ? nf : 1, sizeof(*msgs));
    if (!msgs) {
        j->rc = -ENOMEM;
        return;
    }
    nf = 0;
    for (pst_buf *b = aj->frame; b; b = b->next) {
        Msg *one = pmgcm__store__msg__unpack(NULL, b->len, b->data);
        if (!one || one->n_changes == 0) {
            if (one) pmgcm__store__msg__free_unpacked(one, NULL);
            for (size_t q = 0; q < nf; q++)
                pmgcm__store__msg__free_unpacked(msgs[q], NULL);
            free(msgs);
            snprintf(err, el, "malformed changes");
            j->rc = PST_EPROTO;
            return;
        }
        msgs[nf++] = one;
        total += one->n_changes;
    }
    Change **all = malloc(total * sizeof(*all));
    if (!all) {
        for (size_t q = 0; q < nf; q++)
            pmgcm__store__msg__free_unpacked(msgs[q], NULL);
        free(msgs);
        j->rc = -ENOMEM;
        return;
    }
    total = 0;
    for (size_t q = 0; q < nf; q++)
        for (size_t c2 = 0; c2 < msgs[q]->n_changes; c2++)
            all[total++] = msgs[q]->changes[c2];
    struct {
        size_t n_changes;
        Change **changes;
    } mm = {total, all}, *m = &mm;
    int rc = pst_exec(c, "BEGIN", err, el);
    PGresult *r = NULL;
    char *buf = NULL;
    if (rc) goto out;
    char ob[16];
    snprintf(ob, sizeof(ob), "%u", aj->origin);
    if (aj->is_origin) {
        const char *pv[1] = {ob};
        r = PQexecParams(c, "INSERT INTO pmgcm.opos (origin) VALUES ($1::int)"
                            " ON CONFLICT DO NOTHING", 1, NULL, pv, NULL,
                         NULL, 0);
        PQclear(r);
        r = PQexecParams(c, "SELECT 0, seq, recv_seq FROM pmgcm.opos WHERE"
                            " origin = $1::int FOR UPDATE", 1, NULL, pv,
                         NULL, NULL, 0);
    } else {
        r = PQexec(c, "SELECT epoch, seq, recv_seq FROM pmgcm.state FOR"
                      " UPDATE");
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    uint64_t epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    uint64_t seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    uint64_t recv = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    r = NULL;
    /* contiguous, one entry after what we hold; skip what we have */
    size_t first = 0;
    while (first < m->n_changes && m->changes[first]->seq <= recv) first++;
    if (first == m->n_changes) { /* all duplicates */
        aj->pos.epoch = epoch;
        aj->pos.seq = seq;
        aj->recv_seq = recv;
        rc = pst_exec(c, "ROLLBACK", err, el);
        goto out;
    }
    if (m->changes[first]->seq != recv + 1) {
        snprintf(err, el, "gap in the change stream: have %llu, got %llu",
                 (unsigned long long)recv,
                 (unsigned long long)m->changes[first]->seq);
        rc = PST_EPROTO;
        goto out;
    }
    /* the entries, by COPY */
    size_t cap = 256;
    for (size_t i = first; i < m->n_changes; i++) {
        Change *ch = m->changes[i];
        cap += 128 + 2 * ((ch->tbl ? strlen(ch->tbl) : 0) +
                          (ch->old ? strlen(ch->old) : 0) +
                          (ch->new_ ? strlen(ch->new_) : 0));
    }
    buf = malloc(cap);
    if (!buf) {
        rc = -ENOMEM;
        goto out;
    }
    char *p = buf;
    uint64_t last_seq = 0, last_epoch = epoch, prev = recv;
    int64_t last_ts = 0;
    for (size_t i = first; i < m->n_changes; i++) {
        Change *ch = m->changes[i];
        if (ch->seq != prev + 1 || (!aj->is_origin && ch->epoch < epoch) ||
            (aj->is_origin && (ch->op == 'E' || ch->op == 'T' ||
                               !ch->has_origin || ch->origin != aj->origin)) ||
            (ch->op != 'I' && ch->op != 'U' && ch->op != 'D' &&
             ch->op != 'T' && ch->op != 'E')) {
            snprintf(err, el, "bad change %llu in the stream",
                     (unsigned long long)ch->seq);
            rc = PST_EPROTO;
            goto out;
        }
        prev = ch->seq;
        p += sprintf(p, "%llu\t%llu\t%c\t", (unsigned long long)ch->seq,
                     (unsigned long long)ch->epoch, (char)ch->op);
        copy_esc(&p, ch->tbl);
        *p++ = '\t';
        copy_esc(&p, ch->old);
        *p++ = '\t';
        copy_esc(&p, ch->new_);
        p += sprintf(p, "\t%lld\t%c\t%u\n", (long long)ch->ts_us,
                     ch->last ? 't' : 'f', ch->has_origin ? ch->origin : 0);
        if (ch->last) {
            last_seq = ch->seq;
            last_epoch = ch->epoch;
            last_ts = ch->ts_us;
        }
    }
    /* ts arrives as microseconds: stage through a temp table */
    if ((rc = pst_exec(c,
                       "CREATE TEMP TABLE IF NOT EXISTS pmgcm_in (seq bigint,"
                       " epoch bigint, op \"char\", tbl text, old jsonb,"
                       " new jsonb, ts_us bigint, last boolean, origin int)"
                       " ON COMMIT DELETE ROWS",
                       err, el)))
        goto out;
    r = PQexec(c, "COPY pmgcm_in FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    PQclear(r);
    r = NULL;
    if (PQputCopyData(c, buf, (int)(p - buf)) != 1 ||
        PQputCopyEnd(c, NULL) != 1) {
        pst_pgerr(c, NULL, err, el);
        rc = PST_EDB;
        goto out;
    }
    r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    PQclear(r);
    while ((r = PQgetResult(c))) PQclear(r);
    if ((rc = pst_exec(c,
                       aj->is_origin
                           ? "INSERT INTO pmgcm.olog SELECT origin, seq, op,"
                             " tbl, old, new, to_timestamp(ts_us / 1000000.0),"
                             " last FROM pmgcm_in"
                           : "INSERT INTO pmgcm.log SELECT seq, epoch, op, tbl,"
                             " old, new, to_timestamp(ts_us / 1000000.0), last,"
                             " origin FROM pmgcm_in",
                       err, el)))
        goto out;
    char q[300];
    if (last_seq && aj->is_origin)
        snprintf(q, sizeof(q), "SELECT pmgcm.oapply(%u, %llu, %llu)",
                 aj->origin, (unsigned long long)seq + 1,
                 (unsigned long long)last_seq);
    else if (last_seq)
        snprintf(q, sizeof(q), "SELECT pmgcm.apply(%llu, %llu)",
                 (unsigned long long)seq + 1, (unsigned long long)last_seq);
    if (last_seq) {
        r = PQexec(c, q);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
            goto out;
        }
        aj->applied = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
        r = NULL;
        if (aj->is_origin)
            snprintf(q, sizeof(q),
                     "UPDATE pmgcm.opos SET seq = %llu, recv_seq = %llu,"
                     " ts = to_timestamp(%lld / 1000000.0) WHERE origin = %u",
                     (unsigned long long)last_seq, (unsigned long long)prev,
                     (long long)last_ts, aj->origin);
        else
            snprintf(q, sizeof(q),
                     "UPDATE pmgcm.state SET epoch = %llu, seq = %llu,"
                     " recv_seq = %llu, ts = to_timestamp(%lld / 1000000.0)",
                     (unsigned long long)last_epoch,
                     (unsigned long long)last_seq, (unsigned long long)prev,
                     (long long)last_ts);
        seq = last_seq;
        epoch = last_epoch;
        aj->ts_us = last_ts;
        aj->advanced = true;
    } else {
        if (aj->is_origin)
            snprintf(q, sizeof(q), "UPDATE pmgcm.opos SET recv_seq = %llu"
                     " WHERE origin = %u", (unsigned long long)prev,
                     aj->origin);
        else
            snprintf(q, sizeof(q), "UPDATE pmgcm.state SET recv_seq = %llu",
                     (unsigned long long)prev);
    }
    if ((rc = pst_exec(c, q, err, el)) || (rc = pst_exec(c, "COMMIT", err, el)))
        goto out;
    aj->pos.epoch = epoch;
    aj->pos.seq = seq;
    aj->recv_seq = prev;
out:
    PQclear(r);
    free(buf);
    for (size_t f = 0; f < nf; f++)
        pmgcm__store__msg__free_unpacked(msgs[f], NULL);
    free(msgs);
    free(all);
    j->rc = rc;
}

static void apply_pump(pst_session *s);

static void apply_done(pst_job *j)
{
    apply_job *aj = (apply_job *)j;
    pst_store *st = j->st;
    pst_session *s = aj->s;
    if (!aj->is_origin) st->apply_busy = false;
    while (aj->frame) {
        pst_buf *b = aj->frame;
        aj->frame = b->next;
        free(b);
    }
    if (st->closing) {
        free(aj);
        return;
    }
    if (j->rc == 0 && aj->is_origin) {
        pst_origin *o = pst_opos(st, aj->origin, true);
        if (o) {
            o->seq = aj->pos.seq;
            o->recv_seq = aj->recv_seq;
            if (aj->advanced) o->ts_us = aj->ts_us;
        }
        st->info.applied_total += aj->applied;
        pst_changed(st);
        pst_sessions_head(st);
    } else if (j->rc == 0) {
        pst_info *i = &st->info;
        i->pos = aj->pos;
        i->recv_seq = aj->recv_seq;
        if (aj->advanced) i->pos_ts_us = aj->ts_us;
        i->applied_total += aj->applied;
        if (pst_pos_cmp(i->head, i->pos) < 0) i->head = i->pos;
        if (i->error[0]) pst_set_error(st, "%s", "");
        pst_changed(st);
        pst_sessions_head(st);
    }
    bool alive = sess_alive(st, s);
    if (j->rc && alive) {
        pst_set_error(st, "applying changes: %s", j->err);
        sess_end(s, j->rc, j->err);
    }
    free(aj);
    if (alive) {
        s->applying = false;
        apply_pump(s);
    }
    /* another session may be waiting for the apply slot */
    pst_session_poll_all(st);
}

static void apply_pump(pst_session *s)
{
    pst_store *st = s->st;
    bool org = s->kind == PST_OSUBSCRIBE;
    if (s->ended || s->applying || (!org && st->apply_busy) || !s->ap_head)
        goto flow;
    apply_job *aj = calloc(1, sizeof(*aj));
    if (!aj) goto flow;
    /* up to 64 frames / 32 MB in one transaction */
    pst_buf *first = s->ap_head, *last = first;
    size_t bytes = first->len, cnt = 1;
    while (last->next && cnt < 64 && bytes + last->next->len <= (32u << 20)) {
        last = last->next;
        bytes += last->len;
        cnt++;
    }
    s->ap_head = last->next;
    if (!s->ap_head) s->ap_tail = NULL;
    last->next = NULL;
    s->ap_n -= cnt;
    aj->s = s;
    aj->frame = first;
    aj->is_origin = org;
    aj->origin = s->origin;
    aj->j.run = apply_run;
    aj->j.done = apply_done;
    s->applying = true;
    if (!org) st->apply_busy = true;
    pst_submit(st, &aj->j);
flow:
    if (!s->ended && s->paused && s->ap_n <= APPLY_QUEUE_PAUSE / 4) {
        s->paused = false;
        if (s->link.pause) s->link.pause(s->link.ud, false);
    }
}

typedef struct div_job {
    pst_job j;
    pst_session *s;
    pst_pos fork;
    uint64_t moved;
} div_job;

static void div_run(pst_job *j, PGconn *c)
{
    div_job *dj = (div_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char fb[24];
    snprintf(fb, sizeof(fb), "%llu", (unsigned long long)dj->fork.seq);
    const char *pv[1] = {fb};
    int rc = pst_exec(c, "BEGIN", err, el);
    if (rc) goto out;
    if ((rc = pst_exec(c, "SELECT pg_advisory_xact_lock(7947002)", err, el)))
        goto out;
    PGresult *r = PQexecParams(
        c,
        "WITH d AS (DELETE FROM pmgcm.log WHERE seq > $1::bigint RETURNING *)"
        " INSERT INTO pmgcm.divergence (reason, epoch, seq, op, tbl, old, new,"
        " ts) SELECT 'not received by the cluster: the new master''s term"
        " started after change ' || $1::text, epoch, seq, op, tbl, old, new, ts"
        " FROM d WHERE op <> 'E' ORDER BY seq",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    dj->moved = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    r = PQexec(c,
               "WITH c AS (DELETE FROM pmgcm.capture RETURNING *)"
               " INSERT INTO pmgcm.divergence (reason, op, tbl, old, new, ts)"
               " SELECT 'committed here as master, never numbered nor sent',"
               " op, tbl, old, new, now() FROM c ORDER BY id");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    dj->moved += strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    /* the tables hold those changes: only a snapshot repairs them */
    if ((rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = false", err, el)))
        goto out;
    rc = pst_exec(c, "COMMIT", err, el);
out:
    j->rc = rc;
}

static void div_done(pst_job *j)
{
    div_job *dj = (div_job *)j;
    pst_store *st = j->st;
    pst_session *s = dj->s;
    if (!st->closing) {
        if (j->rc == 0) {
            st->info.loaded = false;
            st->info.divergent_total += dj->moved;
            pst_log(st, 1,
                    "store: DIVERGED: %llu change(s) held here after change"
                    " %llu were never received by the cluster; kept in"
                    " pmgcm.divergence; resyncing with a snapshot",
                    (unsigned long long)dj->moved,
                    (unsigned long long)dj->fork.seq);
            pst_start_kept(st);
        } else {
            pst_set_error(st, "recording divergence: %s", j->err);
        }
        pst_changed(st);
        if (sess_alive(st, s))
            sess_end(s, j->rc ? j->rc : PST_EDIVERGED,
                     j->rc ? j->err : "diverged");
    }
    free(dj);
}

static void client_frame_subscribe(pst_session *s, const uint8_t *buf,
                                   size_t len)
{
    pst_store *st = s->st;
    Msg *m = pmgcm__store__msg__unpack(NULL, len, buf);
    if (!m) {
        sess_end(s, PST_EPROTO, "malformed message");
        return;
    }
    pst_info *i = &st->info;
    if (!s->heard) {
        s->heard = true;
        pst_changed(st);
    }
    switch (m->kind) {
    case PMGCM__STORE__MSG__KIND__CHANGES: {
        if (m->n_changes == 0) break;
        /* every table named must be one of ours (of the stream's kind):
         * an unknown one ends the stream before anything is stored */
        for (size_t k = 0; k < m->n_changes; k++) {
            const Change *ch = m->changes[k];
            if (ch->op == 'E') continue;
            int ti = pst_tableset_find(st->tables, ch->tbl);
            bool want_origin = s->kind == PST_OSUBSCRIBE;
            if (ti < 0 || st->tables->t[ti].origin != want_origin) {
                char nb[120];
                pst_set_error(st, "the upstream sent change %llu for table"
                              " \"%s\", which is not replicated here%s:"
                              " stream ended, nothing applied",
                              (unsigned long long)ch->seq,
                              pst_safe_name(ch->tbl, nb, sizeof(nb)),
                              ti >= 0 ? " as that kind of table" : "");
                sess_end(s, PST_ESCHEMA, st->info.error);
                pmgcm__store__msg__free_unpacked(m, NULL);
                return;
            }
        }
        Change *l = m->changes[m->n_changes - 1];
        pst_pos hp = {l->epoch, l->seq};
        if (m->head && m->head->seq > hp.seq) hp.seq = m->head->seq;
        if (s->kind == PST_SUBSCRIBE && pst_pos_cmp(i->head, hp) < 0) {
            i->head = hp;
            i->head_ts_us = l->ts_us;
        }
        pst_buf *b = pst_buf_new(buf, len);
        if (!b) {
            sess_end(s, -ENOMEM, "out of memory");
            break;
        }
        if (s->ap_tail) s->ap_tail->next = b;
        else s->ap_head = b;
        s->ap_tail = b;
        s->ap_n++;
        if (s->ap_n >= APPLY_QUEUE_PAUSE && !s->paused) {
            s->paused = true;
            if (s->link.pause) s->link.pause(s->link.ud, true);
        }
        apply_pump(s);
        break;
    }
    case PMGCM__STORE__MSG__KIND__HEAD:
        if (m->head && s->kind == PST_OSUBSCRIBE) {
            s->peer_pos.seq = m->head->seq;
        } else if (m->head) {
            pst_pos hp = {m->head->epoch, m->head->seq};
            i->head = hp;
            if (m->has_head_ts_us) i->head_ts_us = m->head_ts_us;
            s->peer_pos = hp;
            pst_changed(st);
        }
        break;
    case PMGCM__STORE__MSG__KIND__NEED_SNAPSHOT:
        sess_end(s, PST_ENEEDSNAP, "the upstream needs us to take a snapshot");
        break;
    case PMGCM__STORE__MSG__KIND__DIVERGED: {
        if (!m->fork || s->kind != PST_SUBSCRIBE) {
            sess_end(s, PST_EPROTO, "diverged without a fork point");
            break;
        }
        i->state = PST_DIVERGED;
        div_job *dj = calloc(1, sizeof(*dj));
        if (!dj) {
            sess_end(s, -ENOMEM, "out of memory");
            break;
        }
        dj->s = s;
        dj->fork.epoch = m->fork->epoch;
        dj->fork.seq = m->fork->seq;
        dj->j.run = div_run;
        dj->j.done = div_done;
        pst_submit(st, &dj->j);
        pst_changed(st);
        break;
    }
    case PMGCM__STORE__MSG__KIND__ERROR:
        sess_end(s, PST_EREMOTE, m->error ? m->error : "peer error");
        break;
    default:
        sess_end(s, PST_EPROTO, "unexpected message");
    }
    pmgcm__store__msg__free_unpacked(m, NULL);
}

/* ---- client: snapshot ------------------------------------------------------------------ */

static void snap_client_poll(pst_session *s)
{
    snap *sn = s->sn;
    pst_info *i = &s->st->info;
    i->snap_rows = __atomic_load_n(&sn->rows, __ATOMIC_RELAXED);
    i->snap_bytes = __atomic_load_n(&sn->bytes, __ATOMIC_RELAXED);
    i->snap_est_rows = __atomic_load_n(&sn->est_rows, __ATOMIC_RELAXED);
    i->snap_est_bytes = __atomic_load_n(&sn->est_bytes, __ATOMIC_RELAXED);
    i->snap_tables = __atomic_load_n(&sn->tables, __ATOMIC_RELAXED);
    i->snap_tables_done = __atomic_load_n(&sn->tables_done, __ATOMIC_RELAXED);
    if (s->paused && pst_pipe_bytes(&sn->pipe) < SNAP_PIPE_MAX / 2) {
        s->paused = false;
        if (s->link.pause) s->link.pause(s->link.ud, false);
    }
    pthread_mutex_lock(&sn->pipe.mu);
    bool fin = sn->finished;
    int rc = sn->rc;
    pthread_mutex_unlock(&sn->pipe.mu);
    if (!fin || s->ended) return;
    pst_store *st = s->st;
    if (rc == 0) {
        i->pos = sn->pos;
        i->recv_seq = sn->pos.seq;
        i->head = sn->pos;
        i->pos_ts_us = i->head_ts_us = sn->ts_us;
        i->loaded = true;
        i->snapshots = sn->new_snapshots;
        i->state = PST_CATCHING_UP;
        if (sn->divergent) {
            i->divergent_total += sn->divergent;
            pst_log(st, 1, "store: DIVERGED: %llu change(s) of this node's "
                    "log were never received by the cluster; kept in "
                    "pmgcm.divergence", (unsigned long long)sn->divergent);
        }
        if (sn->bk_rows)
            pst_log(st, 1, "store: BACKUP: the snapshot replaced %llu rows "
                    "this node held (%u table(s)) that the cluster's data "
                    "does not hold; kept in backup schema %s (pmgcm backups)",
                    (unsigned long long)sn->bk_rows, sn->bk_tables,
                    sn->backup);
        else if (sn->backup[0])
            pst_log(st, 3, "store: this node's data was of another history,"
                    " but the snapshot holds every row of it: no backup");
        pst_start_kept(st);
        /* origins: ours kept, the others from the snapshot */
        pst_origin mine;
        pst_origin *me = pst_opos(st, sn->self_cid, false);
        bool have_me = me != NULL;
        if (have_me) mine = *me;
        st->n_opos = 0;
        if (have_me) st->opos[st->n_opos++] = mine;
        for (size_t k = 0; k < sn->n_opos && st->n_opos < PST_ORIGINS_MAX; k++)
            st->opos[st->n_opos++] = sn->opos[k];
        pst_set_error(st, "%s", "");
        pst_log(st, 2,
                "store: snapshot loaded: %llu rows, %llu bytes, %u tables,"
                " position %llu/%llu, in %.1f s",
                (unsigned long long)i->snap_rows,
                (unsigned long long)i->snap_bytes, i->snap_tables,
                (unsigned long long)sn->pos.epoch,
                (unsigned long long)sn->pos.seq,
                (double)(pst_mono_ms() - i->snap_started_ms) / 1000.0);
    } else {
        pst_set_error(st, "snapshot: %s", sn->err);
    }
    pst_changed(st);
    sess_end(s, rc, rc ? sn->err : "snapshot loaded");
}

static void client_frame_snapshot(pst_session *s, const uint8_t *buf,
                                  size_t len)
{
    pst_buf *b = pst_buf_new(buf, len);
    if (!b) {
        sess_end(s, -ENOMEM, "out of memory");
        return;
    }
    /* never blocks: the transport is paused above the high-water mark */
    pst_pipe *p = &s->sn->pipe;
    pthread_mutex_lock(&p->mu);
    if (p->tail) p->tail->next = b;
    else p->head = b;
    p->tail = b;
    p->bytes += len;
    bool full = p->bytes >= p->max_bytes;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (full && !s->paused) {
        s->paused = true;
        if (s->link.pause) s->link.pause(s->link.ud, true);
    }
    /* the snapshot ends with SNAP_END or ERROR: the thread sees it */
}

/* ---- client: open ------------------------------------------------------------------------ */

/* Packs the opening message into *buf (malloc'ed) and makes the client
 * session for it; NULL (nothing allocated) when out of memory. */
static pst_session *client_new(pst_store *st, const Open *o,
                               const pst_link *link, uint8_t **buf,
                               size_t *len)
{
    *len = pmgcm__store__open__get_packed_size(o);
    *buf = malloc(*len ? *len : 1);
    if (!*buf) return NULL;
    pmgcm__store__open__pack(o, *buf);
    pst_session *s = sess_new(st, link, false);
    if (!s) {
        free(*buf);
        *buf = NULL;
    }
    return s;
}

int pst_client(pst_store *st, pst_open_kind kind, uint32_t self_cid,
               const pst_link *link, uint8_t **buf, size_t *len,
               pst_session **out)
{
    if (!st->info.ready) return -EAGAIN;
    Open o = PMGCM__STORE__OPEN__INIT;
    Pmgcm__Store__Pos from = PMGCM__STORE__POS__INIT;
    o.kind = (Pmgcm__Store__Open__Kind)kind;
    o.has_cid = true;
    o.cid = self_cid;
    if (kind == PST_SUBSCRIBE) {
        from.epoch = st->info.pos.epoch;
        from.seq = st->info.loaded ? st->info.recv_seq : 0;
        o.from = &from;
    } else if (kind == PST_SNAPSHOT) {
        o.schema = st->schema_text;
    }
    pst_session *s = client_new(st, &o, link, buf, len);
    if (!s) return -ENOMEM;
    s->kind = kind;
    s->cid = self_cid;
    if (kind == PST_SNAPSHOT) {
        s->sn = snap_start(s, false, st->schema_text);
        if (!s->sn) {
            sess_list_remove(s);
            free(s);
            free(*buf);
            *buf = NULL;
            return -ENOMEM;
        }
        st->info.state = PST_LOADING;
        st->info.snap_started_ms = pst_mono_ms();
        st->info.snap_rows = st->info.snap_bytes = 0;
        st->info.snap_est_rows = st->info.snap_est_bytes = 0;
        st->info.snap_tables = st->info.snap_tables_done = 0;
        pst_changed(st);
    }
    *out = s;
    return 0;
}

int pst_client_origin(pst_store *st, uint32_t origin, uint32_t self_cid,
                      const pst_link *link, uint8_t **buf, size_t *len,
                      pst_session **out)
{
    if (!st->info.ready || !st->info.loaded) return -EAGAIN;
    Open o = PMGCM__STORE__OPEN__INIT;
    Pmgcm__Store__Pos from = PMGCM__STORE__POS__INIT;
    o.kind = PMGCM__STORE__OPEN__KIND__OSUBSCRIBE;
    o.has_cid = true;
    o.cid = self_cid;
    o.has_origin = true;
    o.origin = origin;
    pst_origin *p = pst_opos(st, origin, false);
    from.seq = p ? p->recv_seq : 0;
    o.from = &from;
    pst_session *s = client_new(st, &o, link, buf, len);
    if (!s) return -ENOMEM;
    s->kind = PST_OSUBSCRIBE;
    s->cid = self_cid;
    s->origin = origin;
    *out = s;
    return 0;
}

void pst_session_frame(pst_session *s, const uint8_t *buf, size_t len)
{
    if (s->ended) return;
    if (s->server) {
        /* clients send nothing after the opening message */
        sess_end(s, PST_EPROTO, "unexpected frame from the client");
        return;
    }
    switch (s->kind) {
    case PST_SUBSCRIBE:
    case PST_OSUBSCRIBE:
        client_frame_subscribe(s, buf, len);
        break;
    case PST_SNAPSHOT:
        client_frame_snapshot(s, buf, len);
        break;
    case PST_POSITION: {
        Msg *m = pmgcm__store__msg__unpack(NULL, len, buf);
        if (m && m->kind == PMGCM__STORE__MSG__KIND__POSITION && m->head) {
            s->peer_pos.epoch = m->head->epoch;
            s->peer_pos.seq = m->head->seq;
            sess_end(s, 0, "position");
        } else {
            sess_end(s, m && m->kind == PMGCM__STORE__MSG__KIND__ERROR
                            ? PST_EREMOTE : PST_EPROTO,
                     "bad position answer");
        }
        if (m) pmgcm__store__msg__free_unpacked(m, NULL);
        break;
    }
    }
}

/* ---- the loop's view ------------------------------------------------------------------ */

static void sess_poll(pst_session *s)
{
    if (s->ended) return;
    if (s->blocked) return;
    if (s->server) {
        switch (s->kind) {
        case PST_SUBSCRIBE:
        case PST_OSUBSCRIBE:
            serve_pump(s);
            break;
        case PST_SNAPSHOT:
            snap_server_pump(s);
            break;
        case PST_POSITION: {
            if (s->last_send_ms == 0) break;
            Msg m = PMGCM__STORE__MSG__INIT;
            Pmgcm__Store__Pos p = PMGCM__STORE__POS__INIT;
            m.kind = PMGCM__STORE__MSG__KIND__POSITION;
            p.epoch = s->st->info.pos.epoch;
            p.seq = s->st->info.recv_seq;
            m.head = &p;
            m.has_master = true;
            m.master = s->st->info.master;
            sess_send_msg(s, &m);
            s->last_send_ms = 0;
            sess_end(s, 0, "position sent");
            break;
        }
        }
    } else if (s->kind == PST_SNAPSHOT && s->sn) {
        snap_client_poll(s);
    } else if (s->kind == PST_SUBSCRIBE || s->kind == PST_OSUBSCRIBE) {
        apply_pump(s);
    }
}

void pst_session_poll_all(pst_store *st)
{
    /* sess_poll may end sessions (the caller frees them later) */
    for (pst_session *s = st->sessions; s; s = s->next) sess_poll(s);
    deliver_ends(st);
}

bool pst_following(const pst_store *st)
{
    for (pst_session *s = st->sessions; s; s = s->next)
        if (!s->server && s->kind == PST_SUBSCRIBE && !s->ended && s->heard)
            return true;
    return false;
}

void pst_sessions_head(pst_store *st)
{
    pst_session_poll_all(st);
}

void pst_sessions_close_all(pst_store *st)
{
    for (pst_session *s = st->sessions; s; s = s->next)
        if (!s->ended) sess_end(s, -ECANCELED, "store closing");
}
