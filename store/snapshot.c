/*
 * snapshot.c - snapshots (the store's tablesync). The server thread opens
 * one REPEATABLE READ transaction (the position is computed in it), exports
 * its snapshot, and copies the replicated tables over up to PST_SNAP_JOBS
 * connections that all SET TRANSACTION SNAPSHOT to it (the same rows), as
 * many tables at once as the client asked for, largest first; their COPY
 * frames interleave on the stream (SNAP_DATA names its table).
 *
 * The client thread: a node with loaded data replaces it in one
 * transaction on one connection (its readers see the old rows until the
 * new ones are complete), keeping what it replaces (backup.c). A node
 * without loaded data (a join) asks for parallel tables: one transaction
 * empties everything and marks the node not loaded, then loaders (threads,
 * a connection each) load a table each in its own transaction, and a last
 * one sets the position and marks the node loaded. Its capture pauses
 * meanwhile, and the slot is moved past the load's WAL afterwards when
 * nothing else committed (snap_skip_load).
 */
#define _GNU_SOURCE
#include "store/internal.h"
#include "store/pgoutput.h"
#include "store/store.pb-c.h"

#include <errno.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef Pmgcm__Store__Msg Msg;
typedef Pmgcm__Store__Open Open;
typedef Pmgcm__Store__Change Change;

#define SNAP_CHUNK (256u * 1024u)
/* the most a SNAP_DATA frame carries compressed (a bigger row goes alone,
 * as it is); also the bound a client holds a frame's raw_len to */
#define SNAP_ZMAX (SNAP_CHUNK + 65536u)
#define SNAP_PIPE_MAX (8u << 20)

/* ---- snapshots: the thread side --------------------------------------------------------- */

struct pst_snap {
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
    uint64_t unload_gen; /* pst_unload_gen as the load committed */
    uint32_t peer_cid;   /* server: the receiver (its own origin rows stay) */
    uint64_t divergent;  /* client: log entries kept as divergence */
    uint32_t self_cid;   /* client: us */
    pst_tableset *local; /* client: the local replicated set (a copy) */
    char backup[80];     /* client: the backup schema of this load, or "" */
    size_t n_full;       /* client: our tables holding rows the load
                          * replaces (cl_full) */
    bool emptied;        /* client: cl_empty_tables truncated the tables
                          * in the snapshot's own transaction */
    uint64_t bk_rows;    /* client: rows kept there */
    uint32_t bk_tables;
    pst_origin opos[PST_ORIGINS_MAX]; /* client: positions received */
    size_t n_opos;
    unsigned jobs;       /* server: the client's Open.jobs; client: asked */
    bool lz4;            /* server: compress SNAP_DATA; client: asked to */
    uint64_t wire;       /* client (atomic): SNAP_DATA bytes as received */
    pthread_mutex_t lmu; /* client: the loaders' busy/dead, ours */
    pthread_cond_t lcv;
    int want_hold;       /* client (atomic): the thread asks the loop */
    int hold_asked;      /* client (atomic): the loop asked the capture
                          * (1), or there is none to ask (2) */
    bool hold;           /* client (loop only): the capture asked to pause */
    char skip[200];      /* client: what became of the load's WAL (log) */
    uint64_t t_ms[6];    /* client: connected, SNAP_BEGIN, tables
                          * emptied, SNAP_END, position set, WAL done */
    uint64_t *ours;      /* client: the load's transaction ids (lmu) */
    size_t n_ours, cap_ours;
};

static void snap_destroy(pst_snap *sn)
{
    pst_pipe_destroy(&sn->pipe);
    pthread_mutex_destroy(&sn->lmu);
    pthread_cond_destroy(&sn->lcv);
    free(sn->schema);
    pst_tableset_free(sn->local);
    free(sn->ours);
    free(sn);
}

/* The load's own transactions, by id (txid_current() on c, inside it). */
static int note_txid(pst_snap *sn, PGconn *c, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT txid_current()");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    uint64_t x = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    int rc = 0;
    pthread_mutex_lock(&sn->lmu);
    if (sn->n_ours == sn->cap_ours) {
        size_t n = sn->cap_ours ? sn->cap_ours * 2 : 16;
        uint64_t *p = realloc(sn->ours, n * sizeof(*p));
        if (p) {
            sn->ours = p;
            sn->cap_ours = n;
        } else {
            rc = -ENOMEM;
        }
    }
    if (rc == 0) sn->ours[sn->n_ours++] = x;
    pthread_mutex_unlock(&sn->lmu);
    return rc;
}

/* The thread's last act. A session that went away meanwhile left the
 * snap to the thread (detached): it frees it. The store counts running
 * threads so that pst_close can wait for them. */
static void snap_finish(pst_snap *sn, int rc)
{
    pst_store *st = sn->st;
    pthread_mutex_lock(&sn->pipe.mu);
    sn->rc = rc;
    sn->finished = true;
    bool det = sn->detached;
    pthread_mutex_unlock(&sn->pipe.mu);
    if (det) {
        snap_destroy(sn);
    } else {
        uv_async_send(&st->async);
    }
    __atomic_sub_fetch(&st->snap_threads, 1, __ATOMIC_ACQ_REL);
}

static int put_msg(pst_snap *sn, const Msg *m)
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

/* ---- server: the copy ------------------------------------------------------------------ */

/* The replicated tables as the snapshot's transaction lists them. */
typedef struct srv_tables {
    int n;
    char **names;       /* quoted names, as pmgcm.tables holds them */
    char **ocols;       /* per-origin tables: the quoted origin column */
    uint64_t *est_bytes;
    int *order;         /* the copy's order: the largest first */
} srv_tables;

static void srv_tables_free(srv_tables *t)
{
    for (int i = 0; i < t->n; i++) {
        if (t->names) free(t->names[i]);
        if (t->ocols) free(t->ocols[i]);
    }
    free(t->names);
    free(t->ocols);
    free(t->est_bytes);
    free(t->order);
    memset(t, 0, sizeof(*t));
}

/* What the copy connections share. */
typedef struct srv_copy {
    pst_snap *sn;
    const srv_tables *t;
    bool interleaved;   /* SNAP_DATA names its table, SNAP_TABLE_END */
    const char *snapid; /* the coordinator's exported snapshot */
    int next;           /* atomic: next index into t->order */
    int failed;         /* atomic: a connection failed, the others stop */
} srv_copy;

typedef struct srv_job {
    srv_copy *cp;
    PGconn *c;          /* the coordinator's (not owned) or its own */
    char *zbuf;         /* lz4: a frame's data compressed (owned) */
    bool own;
    uv_thread_t tid;
    bool started;
    int rc;
    char err[256];
} srv_job;

/* The session went away (pst_capture_wait's stop). */
static bool srv_gone(void *ud)
{
    pst_snap *sn = ud;
    pthread_mutex_lock(&sn->pipe.mu);
    bool gone = sn->pipe.aborted;
    pthread_mutex_unlock(&sn->pipe.mu);
    return gone;
}

/* The capture has classified every transaction this snapshot sees. A
 * change committed on this node while it was not the master (a writer's
 * commit released when a former master came back as a follower, a
 * transaction that slipped past a step-down) is visible in the tables
 * from its commit until the capture keeps it as divergence and marks the
 * data not loaded; a copy taken in between would carry rows no log
 * holds to the node loading it, silently. So: wait until the capture
 * is past everything this snapshot sees (lsn), then refuse if it kept
 * any divergence since before the snapshot began (gen0). Bounded; a
 * session that went away stops the wait. */
#define SNAP_CAPTURE_WAIT_MS 60000

static int srv_wait_capture(pst_snap *sn, uint64_t lsn, uint64_t gen0)
{
    pst_store *st = sn->st;
    char txt[32];
    pst_pgo_lsn_str(lsn, txt, sizeof(txt));
    if (__atomic_load_n(&st->cap_done_lsn, __ATOMIC_ACQUIRE) < lsn) {
        pst_log(st, 2, "store: snapshot for node %u waits for this node's"
                " capture to pass WAL %s", sn->peer_cid, txt);
        int rc = pst_capture_wait(st, lsn, SNAP_CAPTURE_WAIT_MS, srv_gone, sn);
        if (rc == -ECANCELED) return rc;
        if (rc) {
            snprintf(sn->err, sizeof(sn->err),
                     "this node's capture has not reached WAL %s (where"
                     " the snapshot begins) in %d s: it cannot vouch for"
                     " its rows; ask another node", txt,
                     SNAP_CAPTURE_WAIT_MS / 1000);
            return PST_EREMOTE;
        }
    }
    if (__atomic_load_n(&st->cap_div_gen, __ATOMIC_ACQUIRE) != gen0) {
        snprintf(sn->err, sizeof(sn->err),
                 "changes committed on this node while it was not the master"
                 " were found as the snapshot began (kept in"
                 " pmgcm.divergence): its data is resynced, not copied");
        pst_log(st, 1, "store: snapshot for node %u refused: %s",
                sn->peer_cid, sn->err);
        return PST_EREMOTE;
    }
    return 0;
}

/* Step 1: the coordinating transaction and the position it is consistent
 * with. A change this node's capture numbered before this snapshot whose
 * transaction this snapshot does not see (it waits for db_sync's
 * acknowledgement, or is a moment from being visible) is not in the
 * tables copied: the position is the change before the first such one
 * (what follows is replayed, harmlessly, over the copy). Every change the
 * snapshot sees was classified by the capture first (srv_wait_capture). */
static int srv_begin(pst_snap *sn, PGconn *c, Pmgcm__Store__Pos *head,
                     int64_t *ts)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    uint64_t gen0 = __atomic_load_n(&sn->st->cap_div_gen, __ATOMIC_ACQUIRE);
    int rc = pst_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                      err, el);
    if (rc) return rc;
    /* the snapshot is taken as this statement starts: the insert position
     * it reads is past every commit the snapshot sees */
    PGresult *r = PQexec(c, "SELECT epoch, seq, coalesce((extract(epoch FROM"
                            " ts) * 1000000)::bigint, 0), loaded,"
                            " pg_current_wal_insert_lsn()::text,"
                            " current_setting('wal_block_size')::bigint,"
                            " pg_size_bytes(current_setting("
                            "'wal_segment_size')) FROM pmgcm.state");
    uint64_t lsn = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
        pst_pgo_lsn_parse(PQgetvalue(r, 0, 4), &lsn) != 0) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    if (PQgetvalue(r, 0, 3)[0] != 't') {
        PQclear(r);
        snprintf(err, el, "this node holds no loaded data to copy");
        return PST_EREMOTE;
    }
    head->epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    head->seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    *ts = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    lsn = pst_wal_floor(lsn, strtoull(PQgetvalue(r, 0, 5), NULL, 10),
                         strtoull(PQgetvalue(r, 0, 6), NULL, 10));
    PQclear(r);
    if ((rc = srv_wait_capture(sn, lsn, gen0))) return rc;
    r = PQexec(c,
               "WITH x AS (SELECT (v::text::bigint % 4294967296) AS xid FROM"
               " pg_snapshot_xip(pg_current_snapshot()) v),"
               " f AS (SELECT min(l.seq) AS s FROM pmgcm.log l WHERE l.xid IN"
               " (SELECT xid FROM x))"
               " SELECT f.s - 1, (SELECT epoch FROM pmgcm.log WHERE seq ="
               " f.s - 1) FROM f WHERE f.s IS NOT NULL");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    if (PQntuples(r) == 1) {
        uint64_t s2 = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        if (s2 < head->seq) {
            pst_log(sn->st, 2, "store: snapshot position %llu/%llu, not"
                    " %llu: a later numbered change's transaction is not"
                    " visible yet", (unsigned long long)head->epoch,
                    (unsigned long long)s2, (unsigned long long)head->seq);
            head->seq = s2;
            if (!PQgetisnull(r, 0, 1))
                head->epoch = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
        }
    }
    PQclear(r);
    return 0;
}

/* Step 2: our schema text, which must be the client's. *mine: ours. */
static int srv_check_schema(pst_snap *sn, PGconn *c, char **mine)
{
    int rc = pst_schema_text(c, sn->st, mine, sn->err, sizeof(sn->err));
    if (rc) return rc;
    if (sn->schema && strcmp(sn->schema, *mine) != 0) {
        char d[700];
        snprintf(sn->err, sizeof(sn->err), "schema mismatch: %s",
                 pst_schema_diff(sn->schema, *mine, d, sizeof(d)));
        return PST_ESCHEMA;
    }
    return 0;
}

/* Step 3: the tables, largest first for the copy (and the origin column
 * of per-origin ones). */
static int srv_list_tables(pst_snap *sn, PGconn *c, srv_tables *t,
                           uint64_t **est_rows)
{
    PGresult *r = PQexec(c, "SELECT t.tbl, greatest(c.reltuples, 0)::bigint,"
                            " pg_table_size(c.oid), quote_ident(o.col) FROM"
                            " pmgcm.tables t JOIN pg_class c ON c.oid ="
                            " t.tbl::regclass LEFT JOIN pmgcm.otables o ON"
                            " o.tbl = t.tbl ORDER BY t.tbl");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, sn->err, sizeof(sn->err));
        PQclear(r);
        return PST_EDB;
    }
    int n = PQntuples(r);
    t->n = n;
    t->names = calloc((size_t)n + 1, sizeof(*t->names));
    t->ocols = calloc((size_t)n + 1, sizeof(*t->ocols));
    t->est_bytes = calloc((size_t)n + 1, sizeof(*t->est_bytes));
    t->order = calloc((size_t)n + 1, sizeof(*t->order));
    *est_rows = calloc((size_t)n + 1, sizeof(**est_rows));
    int rc = t->names && t->ocols && t->est_bytes && t->order && *est_rows
                 ? 0 : -ENOMEM;
    for (int i = 0; rc == 0 && i < n; i++) {
        t->names[i] = strdup(PQgetvalue(r, i, 0));
        if (!PQgetisnull(r, i, 3)) t->ocols[i] = strdup(PQgetvalue(r, i, 3));
        if (!t->names[i] || (!PQgetisnull(r, i, 3) && !t->ocols[i]))
            rc = -ENOMEM;
        (*est_rows)[i] = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        t->est_bytes[i] = strtoull(PQgetvalue(r, i, 2), NULL, 10);
        t->order[i] = i;
    }
    PQclear(r);
    if (rc) return rc;
    /* insertion sort by size, descending: a few dozen tables */
    for (int i = 1; i < n; i++) {
        int v = t->order[i], k = i;
        while (k > 0 && t->est_bytes[t->order[k - 1]] < t->est_bytes[v]) {
            t->order[k] = t->order[k - 1];
            k--;
        }
        t->order[k] = v;
    }
    return 0;
}

/* Step 4: SNAP_BEGIN: the position, the epochs, the per-origin positions
 * (the receiver's own excepted), the tables, our schema. */
static int srv_send_begin(pst_snap *sn, PGconn *c, Pmgcm__Store__Pos *head,
                          int64_t ts, char *mine, const srv_tables *t,
                          const uint64_t *est_rows, unsigned jobs)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    Pmgcm__Store__Epoch *ev = NULL, **ep = NULL;
    Pmgcm__Store__OriginPos *ov = NULL, **op = NULL;
    Pmgcm__Store__TableInfo *tv = NULL, **tp = NULL;
    int ne = 0, no = 0;
    PGresult *r = PQexec(c, "SELECT epoch, start_seq, master_cid FROM"
                            " pmgcm.epochs ORDER BY epoch");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    ne = PQntuples(r);
    ev = calloc((size_t)ne + 1, sizeof(*ev));
    ep = calloc((size_t)ne + 1, sizeof(*ep));
    for (int i = 0; ev && ep && i < ne; i++) {
        pmgcm__store__epoch__init(&ev[i]);
        ev[i].epoch = strtoull(PQgetvalue(r, i, 0), NULL, 10);
        ev[i].start_seq = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        ev[i].master_cid = (uint32_t)strtoul(PQgetvalue(r, i, 2), NULL, 10);
        ep[i] = &ev[i];
    }
    PQclear(r);
    char pc[16];
    snprintf(pc, sizeof(pc), "%u", sn->peer_cid);
    const char *pv[1] = {pc};
    /* this node's own origin likewise: before its first numbered change
     * whose transaction is not visible here */
    r = PQexecParams(
        c,
        "WITH x AS (SELECT (v::text::bigint % 4294967296) AS xid FROM"
        " pg_snapshot_xip(pg_current_snapshot()) v)"
        " SELECT o.origin, least(o.seq, coalesce((SELECT min(l.seq) - 1"
        " FROM pmgcm.olog l WHERE l.origin = o.origin AND l.xid IN"
        " (SELECT xid FROM x)), o.seq)) FROM pmgcm.opos o WHERE o.origin"
        " <> $1::int ORDER BY o.origin",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
    } else {
        no = PQntuples(r);
        ov = calloc((size_t)no + 1, sizeof(*ov));
        op = calloc((size_t)no + 1, sizeof(*op));
        for (int i = 0; ov && op && i < no; i++) {
            pmgcm__store__origin_pos__init(&ov[i]);
            ov[i].origin = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
            ov[i].seq = strtoull(PQgetvalue(r, i, 1), NULL, 10);
            op[i] = &ov[i];
        }
    }
    PQclear(r);
    tv = calloc((size_t)t->n + 1, sizeof(*tv));
    tp = calloc((size_t)t->n + 1, sizeof(*tp));
    for (int i = 0; tv && tp && i < t->n; i++) {
        pmgcm__store__table_info__init(&tv[i]);
        tv[i].name = t->names[i];
        tv[i].est_rows = est_rows[i];
        tv[i].est_bytes = t->est_bytes[i];
        tp[i] = &tv[i];
    }
    if (rc == 0 && (!ev || !ep || !ov || !op || !tv || !tp)) rc = -ENOMEM;
    if (rc == 0) {
        Msg m = PMGCM__STORE__MSG__INIT;
        m.kind = PMGCM__STORE__MSG__KIND__SNAP_BEGIN;
        m.head = head;
        m.has_head_ts_us = true;
        m.head_ts_us = ts;
        m.n_epochs = (size_t)ne;
        m.epochs = ep;
        m.n_tables = (size_t)t->n;
        m.tables = tp;
        m.schema = mine;
        m.n_origins = (size_t)no;
        m.origins = op;
        if (jobs > 1) {
            m.has_jobs = true;
            m.jobs = jobs;
        }
        rc = put_msg(sn, &m);
    }
    free(ev);
    free(ep);
    free(ov);
    free(op);
    free(tv);
    free(tp);
    return rc;
}

/* A frame of table `name`. SNAP_DATA to a client that asked for lz4 goes
 * as one LZ4 block when it is at most SNAP_ZMAX and compresses (j->zbuf,
 * LZ4_COMPRESSBOUND(SNAP_ZMAX) bytes); anything else as it is. */
static int srv_put(srv_job *j, Pmgcm__Store__Msg__Kind kind, const char *name,
                   const void *data, size_t len)
{
    srv_copy *cp = j->cp;
    if (__atomic_load_n(&cp->failed, __ATOMIC_ACQUIRE)) return -ECANCELED;
    Msg d = PMGCM__STORE__MSG__INIT;
    d.kind = kind;
    if (name && (kind != PMGCM__STORE__MSG__KIND__SNAP_DATA || cp->interleaved))
        d.name = (char *)name;
    if (data) {
        d.has_data = true;
        d.data.data = (uint8_t *)data;
        d.data.len = len;
    }
    if (data && j->zbuf && kind == PMGCM__STORE__MSG__KIND__SNAP_DATA &&
        len > 0 && len <= SNAP_ZMAX) {
        int z = LZ4_compress_default(data, j->zbuf, (int)len,
                                     LZ4_COMPRESSBOUND(SNAP_ZMAX));
        if (z > 0 && (size_t)z < len) {
            d.data.data = (uint8_t *)j->zbuf;
            d.data.len = (size_t)z;
            d.has_raw_len = true;
            d.raw_len = (uint32_t)len;
        }
    }
    return put_msg(cp->sn, &d);
}

/* Step 5, per table: COPY TO STDOUT into SNAP_DATA frames of whole lines
 * (about SNAP_CHUNK each; a bigger row alone). chunk: SNAP_CHUNK + 64 KiB. */
static int srv_copy_table(srv_job *j, int ti, char *chunk)
{
    srv_copy *cp = j->cp;
    pst_snap *sn = cp->sn;
    const char *name = cp->t->names[ti];
    PGconn *c = j->c;
    int rc = srv_put(j, PMGCM__STORE__MSG__KIND__SNAP_TABLE, name, NULL, 0);
    if (rc) return rc;
    char *sql = NULL, others[PST_OTHERS_LEN];
    if ((rc = pst_others_where(others, sizeof(others), cp->t->ocols[ti],
                               sn->peer_cid)))
        return rc;
    int ar = cp->t->ocols[ti]
                 ? asprintf(&sql, "COPY (SELECT * FROM %s%s) TO STDOUT", name,
                            others)
                 : asprintf(&sql, "COPY %s TO STDOUT", name);
    if (ar < 0) return -ENOMEM;
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_COPY_OUT) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        return PST_EDB;
    }
    PQclear(r);
    size_t fill = 0;
    uint64_t rows = 0, bytes = 0, rows_told = 0, bytes_told = 0;
    for (;;) {
        char *row = NULL;
        int n = PQgetCopyData(c, &row, 0);
        if (n == -1) break; /* done */
        if (n < 0) {
            pst_pgerr(c, NULL, j->err, sizeof(j->err));
            return PST_EDB;
        }
        if (fill && fill + (size_t)n > SNAP_CHUNK + 65536) {
            if ((rc = srv_put(j, PMGCM__STORE__MSG__KIND__SNAP_DATA, name,
                              chunk, fill)))
                break;
            fill = 0;
        }
        if ((size_t)n > SNAP_CHUNK + 65536) {
            /* one enormous row: its own message */
            rc = srv_put(j, PMGCM__STORE__MSG__KIND__SNAP_DATA, name, row,
                         (size_t)n);
        } else {
            memcpy(chunk + fill, row, (size_t)n);
            fill += (size_t)n;
        }
        rows++;
        bytes += (uint64_t)n;
        PQfreemem(row);
        if (rc) break;
        if (fill >= SNAP_CHUNK) {
            /* progress, once a chunk */
            __atomic_add_fetch(&sn->rows, rows - rows_told, __ATOMIC_RELAXED);
            __atomic_add_fetch(&sn->bytes, bytes - bytes_told,
                               __ATOMIC_RELAXED);
            rows_told = rows;
            bytes_told = bytes;
            if ((rc = srv_put(j, PMGCM__STORE__MSG__KIND__SNAP_DATA, name,
                              chunk, fill)))
                break;
            fill = 0;
        }
    }
    __atomic_add_fetch(&sn->rows, rows - rows_told, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sn->bytes, bytes - bytes_told, __ATOMIC_RELAXED);
    /* on error the connection is left in its COPY: it is closed */
    if (rc) return rc;
    r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        return PST_EDB;
    }
    PQclear(r);
    while ((r = PQgetResult(c))) PQclear(r);
    if (fill &&
        (rc = srv_put(j, PMGCM__STORE__MSG__KIND__SNAP_DATA, name, chunk, fill)))
        return rc;
    if (cp->interleaved) {
        Msg e = PMGCM__STORE__MSG__INIT;
        e.kind = PMGCM__STORE__MSG__KIND__SNAP_TABLE_END;
        e.name = (char *)name;
        e.has_rows = true;
        e.rows = rows;
        if ((rc = put_msg(sn, &e))) return rc;
    }
    __atomic_add_fetch(&sn->tables_done, 1, __ATOMIC_RELAXED);
    return 0;
}

/* One copy connection: tables from the shared order until none is left.
 * A connection of its own joins the coordinator's snapshot first. */
static void srv_job_main(void *arg)
{
    srv_job *j = arg;
    srv_copy *cp = j->cp;
    int rc = 0;
    char *chunk = malloc(SNAP_ZMAX);
    if (!chunk) rc = -ENOMEM;
    if (rc == 0 && cp->sn->lz4 &&
        !(j->zbuf = malloc(LZ4_COMPRESSBOUND(SNAP_ZMAX))))
        rc = -ENOMEM;
    if (rc == 0 && j->own) {
        j->c = pst_connect(cp->sn->st->conninfo, NULL, j->err, sizeof(j->err));
        if (!j->c) rc = PST_EDB;
        char q[160];
        snprintf(q, sizeof(q), "BEGIN ISOLATION LEVEL REPEATABLE READ READ"
                 " ONLY; SET TRANSACTION SNAPSHOT '%s'", cp->snapid);
        if (rc == 0) rc = pst_exec(j->c, q, j->err, sizeof(j->err));
    }
    for (;;) {
        if (rc) break;
        int k = __atomic_fetch_add(&cp->next, 1, __ATOMIC_ACQ_REL);
        if (k >= cp->t->n) break;
        rc = srv_copy_table(j, cp->t->order[k], chunk);
    }
    if (rc) __atomic_store_n(&cp->failed, 1, __ATOMIC_RELEASE);
    free(chunk);
    free(j->zbuf);
    j->zbuf = NULL;
    if (j->own && j->c) {
        PQfinish(j->c);
        j->c = NULL;
    }
    j->rc = rc;
}

/* Step 5: the tables over `jobs` connections: the coordinator's and
 * jobs - 1 more in its exported snapshot (all see the same rows). */
static int srv_copy_tables(pst_snap *sn, PGconn *c, const srv_tables *t,
                           unsigned jobs)
{
    char snapid[80] = "";
    if (jobs > 1) {
        PGresult *r = PQexec(c, "SELECT pg_export_snapshot()");
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
            pst_pgerr(c, r, sn->err, sizeof(sn->err));
            PQclear(r);
            return PST_EDB;
        }
        snprintf(snapid, sizeof(snapid), "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        if (strspn(snapid, "0123456789ABCDEFabcdef-") != strlen(snapid)) {
            snprintf(sn->err, sizeof(sn->err), "unexpected snapshot id");
            return PST_EDB;
        }
    }
    srv_copy cp = {.sn = sn, .t = t, .interleaved = jobs > 1,
                   .snapid = snapid};
    srv_job js[PST_SNAP_JOBS];
    memset(js, 0, sizeof(js));
    for (unsigned i = 0; i < jobs; i++) {
        js[i].cp = &cp;
        js[i].own = i > 0;
        js[i].c = i == 0 ? c : NULL;
    }
    for (unsigned i = 1; i < jobs; i++)
        js[i].started = uv_thread_create(&js[i].tid, srv_job_main,
                                         &js[i]) == 0;
    srv_job_main(&js[0]);
    int rc = js[0].rc;
    const char *why = js[0].err;
    for (unsigned i = 1; i < jobs; i++) {
        if (!js[i].started) {
            if (!rc) rc = -EAGAIN;
            continue;
        }
        uv_thread_join(&js[i].tid);
        /* the first real error, not a connection stopped for it */
        if (js[i].rc && (!rc || rc == -ECANCELED)) {
            rc = js[i].rc;
            why = js[i].err;
        }
    }
    if (rc && why[0]) snprintf(sn->err, sizeof(sn->err), "%s", why);
    return rc;
}

static void snap_server_main(void *arg)
{
    pst_snap *sn = arg;
    pst_store *st = sn->st;
    char *mine = NULL;
    uint64_t *est_rows = NULL;
    srv_tables t = {0};
    Pmgcm__Store__Pos head = PMGCM__STORE__POS__INIT;
    int64_t ts = 0;
    int rc = 0;
    PGconn *c = pst_connect(st->conninfo, NULL, sn->err, sizeof(sn->err));
    if (!c) rc = PST_EDB;
    if (rc == 0) rc = srv_begin(sn, c, &head, &ts);
    if (rc == 0) rc = srv_check_schema(sn, c, &mine);
    if (rc == 0) rc = srv_list_tables(sn, c, &t, &est_rows);
    /* as many connections as the client loads tables at once, bounded */
    unsigned jobs = sn->jobs < PST_SNAP_JOBS ? sn->jobs : PST_SNAP_JOBS;
    if (jobs > (unsigned)t.n) jobs = (unsigned)t.n;
    if (jobs < 1) jobs = 1;
    __atomic_store_n(&sn->tables, (uint32_t)t.n, __ATOMIC_RELAXED);
    if (rc == 0)
        pst_log(st, 2, "store: snapshot for node %u at %llu/%llu: %d"
                " table(s) over %u connection(s)", sn->peer_cid,
                (unsigned long long)head.epoch, (unsigned long long)head.seq,
                t.n, jobs);
    if (rc == 0)
        rc = srv_send_begin(sn, c, &head, ts, mine, &t, est_rows, jobs);
    if (rc == 0) rc = srv_copy_tables(sn, c, &t, jobs);
    if (rc == 0) {
        Msg e = PMGCM__STORE__MSG__INIT;
        e.kind = PMGCM__STORE__MSG__KIND__SNAP_END;
        e.has_rows = e.has_bytes = true;
        e.rows = __atomic_load_n(&sn->rows, __ATOMIC_RELAXED);
        e.bytes = __atomic_load_n(&sn->bytes, __ATOMIC_RELAXED);
        rc = put_msg(sn, &e);
    }
    if (rc && rc != -ECANCELED) {
        Msg e = PMGCM__STORE__MSG__INIT;
        e.kind = PMGCM__STORE__MSG__KIND__ERROR;
        e.error = sn->err[0] ? sn->err : (char *)pst_strerror(rc);
        put_msg(sn, &e);
    }
    srv_tables_free(&t);
    free(est_rows);
    if (c) PQfinish(c);
    free(mine);
    pst_pipe_eof(&sn->pipe);
    snap_finish(sn, rc);
}

/* ---- client: the load ------------------------------------------------------------------ */

/* A loading connection under a replication origin of its own, so that
 * what it loads is not captured again: the first of pmgcm_load0..15 (one
 * set for the whole server), from pmgcm_load<first> on, that no other
 * session holds (several loads may overlap while an old one winds down;
 * each loader of a pool starts at its own, so they do not race for one
 * and connect again). PostgreSQL keeps a replication
 * state for every origin ever set up, max_replication_slots of them for
 * the server (the store's workers' included): the same few names are used
 * again and again. */
static PGconn *snap_connect(pst_store *st, unsigned first, char *err,
                            size_t el)
{
    for (unsigned k = 0; k < 16; k++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "@load%u", (first + k) % 16);
        PGconn *c = pst_connect(st->conninfo, tag, err, el);
        if (c || !strstr(err, "is already active")) return c;
    }
    return NULL;
}

/* One loading connection. In a parallel load (a node without loaded data)
 * each runs on a thread of its own and loads each table in a transaction
 * of its own; otherwise the snapshot's connection loads inline, inside the
 * one transaction that replaces everything. */
typedef struct snap_loader {
    pst_snap *sn;
    PGconn *c;
    bool own;          /* connection made and closed by the loader */
    unsigned idx;      /* its place in the pool (0: the snapshot's own
                        * connection), the origin it tries first */
    bool txn;          /* each table in its own transaction */
    pst_pipe q;        /* parallel: the frames of its tables */
    uv_thread_t tid;
    bool started;
    bool busy;         /* a table assigned, not yet committed (sn->lmu) */
    bool dead;         /* failed (sn->lmu) */
    char *name;        /* dispatcher: the table it gets frames for */
    int ti;            /* the table being loaded (our set), -1 none */
    bool in_copy;
    /* secondary indexes of the table being loaded, dropped before its
     * COPY and built again after it (CREATE INDEX statements) */
    char **rebuild;
    size_t n_rebuild;
    char *zbuf;        /* a compressed frame's lines (SNAP_ZMAX, owned) */
    int rc;
    char err[256];
} snap_loader;

static void rebuild_clear(snap_loader *l)
{
    for (size_t i = 0; i < l->n_rebuild; i++) free(l->rebuild[i]);
    free(l->rebuild);
    l->rebuild = NULL;
    l->n_rebuild = 0;
}

/* Before a truncated table is loaded: its indexes go, to be built again
 * once the rows are in (a sorted build is far cheaper than an insert per
 * row into each index: a 400,000-row table with a two-column primary key
 * loaded in 0.73-0.92 s with it, in 0.38-0.47 s plus 0.11 s for the key
 * built after; in the same transaction, so a failed load restores them).
 * A secondary index is dropped and made again from its definition; a
 * primary key or unique constraint is dropped and added again (its
 * pg_get_constraintdef: name, columns, INCLUDE, DEFERRABLE, NULLS NOT
 * DISTINCT). Kept as they are: exclusion constraints, a constraint a
 * foreign key depends on, one inherited from a partitioned table or
 * commented, one whose index has storage parameters, a sort order, an
 * operator class or collation not the default (the constraint's text
 * does not carry them: ADD CONSTRAINT would build a different index), the
 * replica identity's index, indexes in another tablespace, clustered,
 * invalid, commented, or with column statistics targets (what the
 * statements would not restore). The table is a local name. */
static int rebuild_begin(snap_loader *l, const char *tbl)
{
    PGconn *c = l->c;
    rebuild_clear(l);
    const char *pv[1] = {tbl};
    PGresult *r = PQexecParams(
        c,
        "WITH x AS (SELECT i.indexrelid AS idx, n.oid AS con, n.conname,"
        " n.contype, k.reloptions IS NULL AND NOT EXISTS (SELECT 1 FROM"
        " unnest(i.indoption::int2[]) o WHERE o <> 0) AND NOT EXISTS (SELECT"
        " 1 FROM unnest(i.indclass::oid[]) c JOIN pg_opclass p ON p.oid = c"
        " WHERE NOT p.opcdefault) AND NOT EXISTS (SELECT 1 FROM"
        " unnest(i.indkey::int2[], i.indcollation::oid[]) u(att, coll) JOIN"
        " pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.att"
        " WHERE u.coll IS NOT NULL AND a.attcollation <> u.coll) AS plain"
        " FROM pg_index i JOIN pg_class k ON k.oid = i.indexrelid"
        " LEFT JOIN pg_constraint n ON n.conindid = i.indexrelid AND"
        " n.conrelid = i.indrelid AND n.contype IN ('p', 'u', 'x') WHERE"
        " i.indrelid = $1::regclass AND i.indisvalid AND NOT"
        " i.indisclustered AND NOT i.indisreplident AND k.reltablespace = 0"
        " AND obj_description(i.indexrelid, 'pg_class') IS NULL AND NOT"
        " EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid ="
        " i.indexrelid AND a.attstattarget > 0))"
        " SELECT format('DROP INDEX %s', idx::regclass),"
        " pg_get_indexdef(idx) FROM x WHERE con IS NULL AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint f WHERE f.conindid = x.idx)"
        " UNION ALL SELECT format('ALTER TABLE %s DROP CONSTRAINT %I',"
        " $1::regclass, n.conname), format('ALTER TABLE %s ADD CONSTRAINT"
        " %I %s', $1::regclass, n.conname, pg_get_constraintdef(n.oid))"
        " FROM x JOIN pg_constraint n ON n.oid = x.con WHERE x.plain AND"
        " n.contype IN ('p', 'u') AND n.conparentid = 0 AND n.coninhcount ="
        " 0 AND obj_description(n.oid, 'pg_constraint') IS NULL AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint f WHERE f.oid <> n.oid AND"
        " f.conindid = x.idx) ORDER BY 1",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, l->err, sizeof(l->err));
        PQclear(r);
        return PST_EDB;
    }
    int n = PQntuples(r), rc = 0;
    if (n) {
        l->rebuild = calloc((size_t)n, sizeof(*l->rebuild));
        if (!l->rebuild) rc = -ENOMEM;
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        l->rebuild[i] = strdup(PQgetvalue(r, i, 1));
        if (!l->rebuild[i]) {
            rc = -ENOMEM;
            break;
        }
        l->n_rebuild++;
        rc = pst_exec(c, PQgetvalue(r, i, 0), l->err, sizeof(l->err));
    }
    PQclear(r);
    return rc;
}

/* SNAP_TABLE: COPY FROM STDIN into our table of that name. A table
 * emptied in this transaction (not a per-origin one, which keeps our rows;
 * not a partitioned one) is loaded frozen: no hint bits or vacuum freeze
 * to do afterwards, and less to write now. A loader with transactions of
 * its own empties the table again in it for that (unless a foreign key
 * references it: TRUNCATE would refuse; it is empty anyway). The one
 * transaction of a loaded node emptied its tables only if one held rows
 * (cl_empty_tables): otherwise they are empty, their indexes are built
 * after the rows all the same, but the rows go in unfrozen (PostgreSQL
 * refuses FREEZE for a table not truncated in the transaction). */
static int ld_table(snap_loader *l, const char *name)
{
    pst_snap *sn = l->sn;
    PGconn *c = l->c;
    char *err = l->err;
    size_t el = sizeof(l->err);
    int rc;
    int ti = pst_tableset_find(sn->local, name);
    if (ti < 0) {
        char nb[120];
        snprintf(err, el, "snapshot carries table \"%s\", which is not"
                 " replicated here", pst_safe_name(name, nb, sizeof(nb)));
        return PST_ESCHEMA;
    }
    const char *tbl = sn->local->t[ti].name; /* our name, never theirs */
    if (l->txn &&
        ((rc = pst_exec(c, "BEGIN; SET LOCAL maintenance_work_mem = '128MB'",
                        err, el)) ||
         (rc = note_txid(sn, c, err, el))))
        return rc;
    bool freeze = false;
    if (!sn->local->t[ti].origin) {
        const char *pv[2] = {tbl, l->txn ? "f" : "t"};
        PGresult *r = PQexecParams(
            c, "SELECT relkind = 'r' AND ($2::bool OR NOT EXISTS (SELECT 1"
               " FROM pg_constraint WHERE confrelid = $1::regclass AND"
               " contype = 'f')) FROM pg_class WHERE oid = $1::regclass",
            2, NULL, pv, NULL, NULL, 0);
        freeze = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                 PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
    }
    if (freeze && l->txn) {
        char *q = NULL;
        if (asprintf(&q, "TRUNCATE %s", tbl) < 0) return -ENOMEM;
        rc = pst_exec(c, q, err, el);
        free(q);
        if (rc) return rc;
    }
    if (freeze && (rc = rebuild_begin(l, tbl))) return rc;
    if (!l->txn && !sn->emptied) freeze = false;
    char *sql = NULL;
    if (asprintf(&sql, "COPY %s FROM STDIN%s", tbl,
                 freeze ? " (FREEZE)" : "") < 0)
        return -ENOMEM;
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    PQclear(r);
    l->ti = ti;
    l->in_copy = true;
    return 0;
}

/* SNAP_DATA: whole COPY text lines of the table being loaded, or (raw_len
 * set, and only if we asked for lz4) one LZ4 block of exactly raw_len such
 * bytes, at most SNAP_ZMAX. */
static int ld_data(snap_loader *l, const Msg *m)
{
    const uint8_t *data = m->data.data;
    size_t len = m->data.len;
    if (!l->in_copy) {
        snprintf(l->err, sizeof(l->err), "data outside a table");
        return PST_EPROTO;
    }
    __atomic_add_fetch(&l->sn->wire, len, __ATOMIC_RELAXED);
    if (m->has_raw_len) {
        if (!l->sn->lz4 || m->raw_len == 0 || m->raw_len > SNAP_ZMAX ||
            len > (size_t)LZ4_COMPRESSBOUND(SNAP_ZMAX)) {
            snprintf(l->err, sizeof(l->err), "compressed snapshot data of"
                     " %u bytes: not asked for, or over %u", m->raw_len,
                     SNAP_ZMAX);
            return PST_EPROTO;
        }
        if (!l->zbuf && !(l->zbuf = malloc(SNAP_ZMAX))) return -ENOMEM;
        int n = LZ4_decompress_safe((const char *)data, l->zbuf, (int)len,
                                    (int)m->raw_len);
        if (n < 0 || (uint32_t)n != m->raw_len) {
            snprintf(l->err, sizeof(l->err), "compressed snapshot data does"
                     " not decompress to its %u bytes", m->raw_len);
            return PST_EPROTO;
        }
        data = (const uint8_t *)l->zbuf;
        len = (size_t)n;
    }
    if (PQputCopyData(l->c, (const char *)data, (int)len) != 1) {
        pst_pgerr(l->c, NULL, l->err, sizeof(l->err));
        return PST_EDB;
    }
    uint64_t nl = 0;
    const uint8_t *p = data, *e = data + len;
    while (p < e && (p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        nl++;
        p++;
    }
    __atomic_add_fetch(&l->sn->rows, nl, __ATOMIC_RELAXED);
    __atomic_add_fetch(&l->sn->bytes, len, __ATOMIC_RELAXED);
    return 0;
}

/* The end of a table's data: the COPY ends, the dropped indexes are built
 * again, a loader's own transaction commits. */
static int ld_table_end(snap_loader *l)
{
    PGconn *c = l->c;
    int rc = 0;
    if (!l->in_copy) return 0;
    l->in_copy = false;
    PQputCopyEnd(c, NULL);
    PGresult *r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, l->err, sizeof(l->err));
        rc = PST_EDB;
    }
    PQclear(r);
    while ((r = PQgetResult(c))) PQclear(r);
    for (size_t i = 0; rc == 0 && i < l->n_rebuild; i++)
        rc = pst_exec(c, l->rebuild[i], l->err, sizeof(l->err));
    rebuild_clear(l);
    if (rc == 0 && l->txn) rc = pst_exec(c, "COMMIT", l->err, sizeof(l->err));
    l->ti = -1;
    if (rc == 0) __atomic_add_fetch(&l->sn->tables_done, 1, __ATOMIC_RELAXED);
    return rc;
}

/* One frame for a loader. */
static int ld_frame(snap_loader *l, const Msg *m)
{
    switch (m->kind) {
    case PMGCM__STORE__MSG__KIND__SNAP_TABLE:
        if (l->in_copy) {
            snprintf(l->err, sizeof(l->err), "a table before the previous"
                     " one ended");
            return PST_EPROTO;
        }
        return ld_table(l, m->name);
    case PMGCM__STORE__MSG__KIND__SNAP_DATA:
        return ld_data(l, m);
    case PMGCM__STORE__MSG__KIND__SNAP_TABLE_END:
        return ld_table_end(l);
    default:
        snprintf(l->err, sizeof(l->err), "unexpected message %d for a"
                 " loader", m->kind);
        return PST_EPROTO;
    }
}

/* A parallel loader's thread: frames until its pipe ends. A table's end
 * frees it for the next one. */
static void ld_main(void *arg)
{
    snap_loader *l = arg;
    pst_snap *sn = l->sn;
    int rc = 0;
    if (l->own) {
        l->c = snap_connect(sn->st, l->idx, l->err, sizeof(l->err));
        if (!l->c) rc = PST_EDB;
    }
    pst_buf *b;
    while (rc == 0 && (b = pst_pipe_get(&l->q)) != NULL) {
        Msg *m = pmgcm__store__msg__unpack(NULL, b->len, b->data);
        free(b);
        if (!m) {
            snprintf(l->err, sizeof(l->err), "malformed snapshot message");
            rc = PST_EPROTO;
            break;
        }
        bool end = m->kind == PMGCM__STORE__MSG__KIND__SNAP_TABLE_END;
        rc = ld_frame(l, m);
        pmgcm__store__msg__free_unpacked(m, NULL);
        if (rc == 0 && end) {
            pthread_mutex_lock(&sn->lmu);
            l->busy = false;
            pthread_cond_broadcast(&sn->lcv);
            pthread_mutex_unlock(&sn->lmu);
        }
    }
    if (rc == 0 && l->in_copy) {
        snprintf(l->err, sizeof(l->err), "the snapshot stream ended early");
        rc = -ECONNRESET;
    }
    if (rc) {
        pst_pipe_abort(&l->q);
        if (l->in_copy) PQputCopyEnd(l->c, "aborted");
        l->in_copy = false;
        /* its transaction rolls back with the connection (or, on the
         * snapshot's connection, before that is used again) */
        if (l->c && !l->own) {
            PGresult *r;
            while ((r = PQgetResult(l->c))) PQclear(r);
            char scratch[64];
            pst_exec(l->c, "ROLLBACK", scratch, sizeof(scratch));
        }
    }
    rebuild_clear(l);
    free(l->zbuf);
    l->zbuf = NULL;
    if (l->own && l->c) {
        PQfinish(l->c);
        l->c = NULL;
    }
    pthread_mutex_lock(&sn->lmu);
    l->rc = rc;
    l->dead = rc != 0;
    l->busy = false;
    pthread_cond_broadcast(&sn->lcv);
    pthread_mutex_unlock(&sn->lmu);
}

/* SNAP_BEGIN's table list against our replicated set: every name ours,
 * each once, none of ours missing. 0 or PST_ESCHEMA (why in err). */
static int snap_check_tables(const pst_snap *sn, const Msg *m, char *err,
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
static int snap_backup_begin(pst_snap *sn, PGconn *c, const Msg *m)
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
    /* nothing to keep: part of the history, or no rows the load replaces */
    if (prefix || sn->n_full == 0) return 0;
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

/* SNAP_BEGIN step: the snapshot's schema and position, the estimates. */
static int cl_accept(pst_snap *sn, const Msg *m)
{
    if (!m->head || !m->schema) {
        snprintf(sn->err, sizeof(sn->err), "unexpected snapshot start");
        return PST_EPROTO;
    }
    if (strcmp(m->schema, sn->schema) != 0) {
        char d[700];
        snprintf(sn->err, sizeof(sn->err), "schema mismatch: %s",
                 pst_schema_diff(sn->schema, m->schema, d, sizeof(d)));
        return PST_ESCHEMA;
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
    __atomic_store_n(&sn->tables, (uint32_t)m->n_tables, __ATOMIC_RELAXED);
    /* the snapshot must carry exactly our replicated set; what goes into
     * SQL below are our own names, never the received ones */
    return snap_check_tables(sn, m, sn->err, sizeof(sn->err));
}

/* SNAP_BEGIN step: how many of our tables hold rows the load replaces
 * (in a per-origin table, other origins' rows), into sn->n_full: one
 * query, an EXISTS per table. A fresh node's are all empty; then there is
 * nothing to keep in a backup schema or to empty first. */
static int cl_full(pst_snap *sn, PGconn *c)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    size_t n = sn->local->n;
    sn->n_full = 0;
    if (n == 0) return 0;
    PGresult *ro = pst_otables(c, err, el);
    if (!ro) return PST_EDB;
    char *sql = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&sql, &len);
    if (!f) {
        PQclear(ro);
        return -ENOMEM;
    }
    fputs("SELECT ", f);
    for (size_t i = 0; i < n; i++) {
        const char *col = sn->local->t[i].origin
                              ? pst_otable_col(ro, sn->local->t[i].name)
                              : NULL;
        char others[PST_OTHERS_LEN];
        if (pst_others_where(others, sizeof(others), col, sn->self_cid)) {
            PQclear(ro);
            fclose(f);
            free(sql);
            return -ENAMETOOLONG;
        }
        fprintf(f, "%sEXISTS (SELECT 1 FROM %s%s)", i ? ", " : "",
                sn->local->t[i].name, others);
    }
    PQclear(ro);
    if (fclose(f) != 0) {
        free(sql);
        return -ENOMEM;
    }
    PGresult *r = PQexec(c, sql);
    free(sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
        (size_t)PQnfields(r) != n) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    for (size_t i = 0; i < n; i++)
        sn->n_full += PQgetvalue(r, 0, (int)i)[0] == 't';
    PQclear(r);
    return 0;
}

/* SNAP_BEGIN step: everything replicated goes, in one statement (foreign
 * keys); per-origin tables keep this node's own rows. Nothing to do when
 * no table holds such rows (cl_full). */
static int cl_empty_tables(pst_snap *sn, PGconn *c)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    if (sn->n_full == 0) return 0;
    PGresult *ro = pst_otables(c, err, el);
    if (!ro) return PST_EDB;
    size_t len = 64, nt = 0;
    for (size_t i = 0; i < sn->local->n; i++)
        len += strlen(sn->local->t[i].name) + 2;
    char *sql = malloc(len), *p = sql;
    if (!sql) {
        PQclear(ro);
        return -ENOMEM;
    }
    p += sprintf(p, "TRUNCATE ");
    for (size_t i = 0; i < sn->local->n; i++) {
        if (sn->local->t[i].origin) continue;
        p += sprintf(p, "%s%s", nt++ ? ", " : "", sn->local->t[i].name);
    }
    if (nt) rc = pst_exec(c, sql, err, el);
    sn->emptied = nt && rc == 0;
    free(sql);
    for (int k = 0; rc == 0 && k < PQntuples(ro); k++) {
        char *d = NULL, others[PST_OTHERS_LEN];
        if ((rc = pst_others_where(others, sizeof(others),
                                   PQgetvalue(ro, k, 1), sn->self_cid)) != 0)
            break;
        if (asprintf(&d, "DELETE FROM %s%s", PQgetvalue(ro, k, 0), others) <
            0) {
            rc = -ENOMEM;
            break;
        }
        rc = pst_exec(c, d, err, el);
        free(d);
    }
    PQclear(ro);
    return rc;
}

/* SNAP_BEGIN step: other origins' positions come with the snapshot. */
static int cl_origins(pst_snap *sn, PGconn *c, const Msg *m)
{
    char q0[160];
    snprintf(q0, sizeof(q0),
             "DELETE FROM pmgcm.olog WHERE origin <> %u;"
             "DELETE FROM pmgcm.opos WHERE origin <> %u",
             sn->self_cid, sn->self_cid);
    int rc = pst_exec(c, q0, sn->err, sizeof(sn->err));
    sn->n_opos = 0;
    for (size_t i = 0; i < m->n_origins && rc == 0; i++) {
        if (m->origins[i]->origin == sn->self_cid) continue;
        char q[160];
        snprintf(q, sizeof(q),
                 "INSERT INTO pmgcm.opos VALUES (%u, %llu, %llu, now())",
                 m->origins[i]->origin,
                 (unsigned long long)m->origins[i]->seq,
                 (unsigned long long)m->origins[i]->seq);
        rc = pst_exec(c, q, sn->err, sizeof(sn->err));
        if (sn->n_opos < PST_ORIGINS_MAX) {
            pst_origin *o = &sn->opos[sn->n_opos++];
            memset(o, 0, sizeof(*o));
            o->origin = m->origins[i]->origin;
            o->seq = o->recv_seq = m->origins[i]->seq;
        }
    }
    return rc;
}

/* SNAP_BEGIN step: entries of our log the snapshot's lineage does not
 * hold (a term after ours started before them, e.g. an old master's
 * numbered but unsent changes) are kept as divergence; then the epochs
 * and the log restart at the snapshot. */
static int cl_restart_log(pst_snap *sn, PGconn *c, const Msg *m)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    char *vals = NULL;
    size_t vl = 0;
    FILE *vf = open_memstream(&vals, &vl);
    if (!vf) return -ENOMEM;
    fputs("WITH e(epoch, start_seq) AS (VALUES (0::bigint, 0::bigint)", vf);
    for (size_t i = 0; i < m->n_epochs; i++)
        fprintf(vf, ", (%llu, %llu)", (unsigned long long)m->epochs[i]->epoch,
                (unsigned long long)m->epochs[i]->start_seq);
    fprintf(vf,
            "), d AS (SELECT l.* FROM pmgcm.log l WHERE l.op <> 'E' AND"
            " l.seq >= (SELECT min(start_seq) FROM e WHERE e.epoch >"
            " l.epoch))"
            " INSERT INTO pmgcm.divergence (reason, epoch, seq, op, tbl,"
            " old, new, ts) SELECT 'not received by the cluster: a later"
            " term started before it; replaced by a snapshot at %llu/%llu',"
            " epoch, seq, op, tbl, old, new, ts FROM d ORDER BY seq",
            (unsigned long long)m->head->epoch,
            (unsigned long long)m->head->seq);
    if (fclose(vf) != 0) {
        free(vals);
        return -ENOMEM;
    }
    PGresult *rd = PQexec(c, vals);
    free(vals);
    if (PQresultStatus(rd) != PGRES_COMMAND_OK) {
        pst_pgerr(c, rd, err, el);
        PQclear(rd);
        return PST_EDB;
    }
    sn->divergent = strtoull(PQcmdTuples(rd), NULL, 10);
    PQclear(rd);
    int rc = pst_exec(c, "DELETE FROM pmgcm.log; DELETE FROM pmgcm.epochs",
                      err, el);
    for (size_t i = 0; rc == 0 && i < m->n_epochs; i++) {
        char q[200];
        snprintf(q, sizeof(q), "INSERT INTO pmgcm.epochs VALUES (%llu, %llu,"
                 " %u)", (unsigned long long)m->epochs[i]->epoch,
                 (unsigned long long)m->epochs[i]->start_seq,
                 m->epochs[i]->master_cid);
        rc = pst_exec(c, q, err, el);
    }
    return rc;
}

/* A parallel load's loaders each set up a replication origin
 * pmgcm_load<k> (snap_connect), which creates it the first time: made
 * here first, in a transaction of the load's own (snap_skip_load counts
 * every other commit). Best effort: on an error (another server's
 * session making one at the same moment) the loaders make them. */
static void make_load_origins(pst_snap *sn, PGconn *c)
{
    char e[256];
    if (pst_exec(c, "BEGIN", e, sizeof(e))) return;
    int rc = note_txid(sn, c, e, sizeof(e));
    if (rc == 0)
        rc = pst_exec(c, "SELECT pg_replication_origin_create(n) FROM (SELECT"
                         " 'pmgcm_load' || g AS n FROM generate_series(0, 15)"
                         " g) x WHERE NOT EXISTS (SELECT 1 FROM"
                         " pg_replication_origin WHERE roname = x.n)",
                      e, sizeof(e));
    pst_exec(c, rc == 0 ? "COMMIT" : "ROLLBACK", e, sizeof(e));
}

/* Before a parallel load writes: waits (at most 2 s, in 2 ms steps) until
 * the capture paused. Writing before that, its walsender would go on
 * decoding the load's rows (held in its reorder buffer, spilled to disk
 * past logical_decoding_work_mem) up to the position where it paused,
 * only for the capture to drop them: in a 1M-row join, 0.3-0.45 CPU-s of
 * 2 cores. Not pausing in time costs only that: snap_skip_load checks
 * for itself whether the WAL can be skipped. */
static void wait_hold(pst_snap *sn)
{
    pst_store *st = sn->st;
    for (int k = 0; k < 1000; k++) {
        int a = __atomic_load_n(&sn->hold_asked, __ATOMIC_ACQUIRE);
        if (a == 2) return;
        if (a == 1) {
            pthread_mutex_lock(&st->mu);
            bool held = st->hold_snap != NULL;
            pthread_mutex_unlock(&st->mu);
            if (held) return;
        }
        uv_sleep(2);
    }
}

/* SNAP_BEGIN: the load's transaction replaces what the snapshot replaces.
 * A parallel load commits it now with the node marked not loaded (the
 * tables follow, each in a transaction of its own; a failure or a crash
 * before the end leaves a node that loads a snapshot again, its old data
 * in a backup schema when it was not part of the snapshot's history).
 * After cl_accept. */
static int cl_begin(pst_snap *sn, PGconn *c, const Msg *m, bool par)
{
    if (par) wait_hold(sn);
    int rc = pst_exec(c, "BEGIN; SET LOCAL maintenance_work_mem = '256MB'",
                      sn->err, sizeof(sn->err));
    if (rc == 0 && par) rc = note_txid(sn, c, sn->err, sizeof(sn->err));
    if (rc == 0) rc = cl_full(sn, c);
    if (rc == 0) rc = snap_backup_begin(sn, c, m);
    if (rc == 0) rc = cl_empty_tables(sn, c);
    if (rc == 0) rc = cl_origins(sn, c, m);
    if (rc == 0) rc = cl_restart_log(sn, c, m);
    if (rc == 0 && par)
        rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = false; COMMIT",
                      sn->err, sizeof(sn->err));
    return rc;
}

/* SNAP_END: what the backup holds that the snapshot holds too goes, the
 * position is the snapshot's, the node is loaded. */
static int cl_end(pst_snap *sn, PGconn *c, bool par)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    if (par) rc = pst_exec(c, "BEGIN", err, el);
    if (rc == 0 && par) rc = note_txid(sn, c, err, el);
    if (rc == 0 && sn->backup[0])
        rc = pst_backup_end(c, sn->local, sn->backup, &sn->bk_rows,
                            &sn->bk_tables, err, el);
    if (rc) return rc;
    char q[400];
    snprintf(q, sizeof(q),
             "UPDATE pmgcm.state SET epoch = %llu, seq = %llu,"
             " recv_seq = %llu, ts = CASE WHEN %lld > 0 THEN"
             " to_timestamp(%lld / 1000000.0) ELSE now() END,"
             " loaded = true, snapshots = snapshots + 1"
             " RETURNING snapshots",
             (unsigned long long)sn->pos.epoch,
             (unsigned long long)sn->pos.seq, (unsigned long long)sn->pos.seq,
             (long long)sn->ts_us, (long long)sn->ts_us);
    PGresult *r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    sn->new_snapshots = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    sn->unload_gen = pst_unload_gen(sn->st); /* the state row is ours */
    return pst_exec(c, "COMMIT", err, el);
}

/* The loaders of a parallel load: the first on the snapshot's own
 * connection (its transaction committed), the others connect. */
typedef struct cl_pool {
    snap_loader ls[PST_SNAP_JOBS];
    unsigned n;
    unsigned open;     /* tables begun and not ended (the stream's view) */
    snap_loader *cur;  /* a one-after-the-other stream: its table's */
    uint8_t *seen;     /* our tables begun (each table once) */
} cl_pool;

static int pool_start(pst_snap *sn, cl_pool *p, PGconn *c, unsigned n)
{
    p->seen = calloc(sn->local->n + 1, 1);
    if (!p->seen) return -ENOMEM;
    p->n = n;
    for (unsigned i = 0; i < n; i++) {
        snap_loader *l = &p->ls[i];
        l->sn = sn;
        l->ti = -1;
        l->txn = true;
        l->own = i > 0;
        l->idx = i;
        l->c = i == 0 ? c : NULL;
        pst_pipe_init(&l->q, SNAP_PIPE_MAX / 2);
        l->started = uv_thread_create(&l->tid, ld_main, l) == 0;
        if (!l->started) {
            snprintf(sn->err, sizeof(sn->err), "no thread for a loader");
            return -EAGAIN;
        }
    }
    return 0;
}

/* Every loader stops (abort) or finishes its pipe (eof); 0 if all
 * succeeded, else the first real error (why in sn->err). */
static int pool_stop(pst_snap *sn, cl_pool *p, bool abort)
{
    int rc = 0;
    for (unsigned i = 0; i < p->n; i++) {
        snap_loader *l = &p->ls[i];
        if (abort) pst_pipe_abort(&l->q);
        else pst_pipe_eof(&l->q);
    }
    for (unsigned i = 0; i < p->n; i++) {
        snap_loader *l = &p->ls[i];
        if (l->started) uv_thread_join(&l->tid);
        l->started = false;
        if (l->rc && (!rc || rc == -ECANCELED || rc == -ECONNRESET)) {
            rc = l->rc;
            snprintf(sn->err, sizeof(sn->err), "%s", l->err);
        }
        free(l->name);
        l->name = NULL;
        pst_pipe_destroy(&l->q);
    }
    p->n = 0;
    free(p->seen);
    p->seen = NULL;
    return rc;
}

/* A free loader for a new table (one will be: the stream has ended a
 * table whose loader is still committing), NULL if one failed. */
static snap_loader *pool_claim(pst_snap *sn, cl_pool *p)
{
    snap_loader *got = NULL;
    pthread_mutex_lock(&sn->lmu);
    for (;;) {
        bool dead = false;
        for (unsigned i = 0; i < p->n && !got; i++) {
            dead |= p->ls[i].dead;
            if (!p->ls[i].busy && !p->ls[i].name && !p->ls[i].dead)
                got = &p->ls[i];
        }
        if (got || dead) break;
        pthread_cond_wait(&sn->lcv, &sn->lmu);
    }
    if (got) got->busy = true;
    pthread_mutex_unlock(&sn->lmu);
    return got;
}

static snap_loader *pool_find(cl_pool *p, const char *name)
{
    for (unsigned i = 0; name && i < p->n; i++)
        if (p->ls[i].name && strcmp(p->ls[i].name, name) == 0)
            return &p->ls[i];
    return NULL;
}

/* Hands a frame to a loader (b is taken). */
static int pool_give(pst_snap *sn, snap_loader *l, pst_buf *b)
{
    int rc = pst_pipe_put(&l->q, b);
    if (rc) snprintf(sn->err, sizeof(sn->err), "a loader failed");
    return rc;
}

/* A table's end in a one-after-the-other stream, for its loader. */
static int pool_end_cur(pst_snap *sn, cl_pool *p)
{
    snap_loader *l = p->cur;
    if (!l) return 0;
    p->cur = NULL;
    Msg e = PMGCM__STORE__MSG__INIT;
    e.kind = PMGCM__STORE__MSG__KIND__SNAP_TABLE_END;
    size_t len = pmgcm__store__msg__get_packed_size(&e);
    pst_buf *b = malloc(sizeof(*b) + len);
    if (!b) return -ENOMEM;
    b->next = NULL;
    b->len = len;
    pmgcm__store__msg__pack(&e, b->data);
    free(l->name);
    l->name = NULL;
    p->open--;
    return pool_give(sn, l, b);
}

/* A table frame of a parallel load: to the loader of its table. b is
 * taken; m is the frame unpacked. interleaved: the stream's own framing
 * (SNAP_BEGIN said jobs > 1). */
static int pool_route(pst_snap *sn, cl_pool *p, const Msg *m, pst_buf *b,
                      bool interleaved)
{
    snap_loader *l = NULL;
    switch (m->kind) {
    case PMGCM__STORE__MSG__KIND__SNAP_TABLE: {
        int rc = interleaved ? 0 : pool_end_cur(sn, p);
        /* each of our tables once (a second load of one would replace
         * the first, committed) */
        int ti = m->name ? pst_tableset_find(sn->local, m->name) : -1;
        if (rc == 0 && (ti < 0 || p->seen[ti])) rc = PST_EPROTO;
        else if (rc == 0) p->seen[ti] = 1;
        if (rc == 0 && p->open >= p->n) rc = PST_EPROTO;
        if (rc == 0 && !(l = pool_claim(sn, p))) rc = -EIO;
        if (rc == 0 && !(l->name = strdup(m->name))) rc = -ENOMEM;
        if (rc) {
            if (rc == PST_EPROTO)
                snprintf(sn->err, sizeof(sn->err), "unexpected table start"
                         " in a snapshot");
            free(b);
            return rc;
        }
        p->open++;
        if (!interleaved) p->cur = l;
        return pool_give(sn, l, b);
    }
    case PMGCM__STORE__MSG__KIND__SNAP_DATA:
        l = interleaved ? pool_find(p, m->name) : p->cur;
        if (!l || !m->has_data) break;
        return pool_give(sn, l, b);
    case PMGCM__STORE__MSG__KIND__SNAP_TABLE_END:
        l = interleaved ? pool_find(p, m->name) : NULL;
        if (!l) break;
        free(l->name);
        l->name = NULL;
        p->open--;
        return pool_give(sn, l, b);
    default:
        break;
    }
    free(b);
    snprintf(sn->err, sizeof(sn->err), "data outside a table");
    return PST_EPROTO;
}

/* After a parallel load (its last transaction committed): its rows need
 * not be decoded by this node's capture, which would only drop them (they
 * carry the load's replication origin) after its walsender turned each
 * into a message: the slot is moved past the load's WAL
 * (pg_replication_slot_advance, fast-forward: no output) when that skips
 * nothing else. The capture paused for the load (pst_capture_hold) after
 * everything committed before the WAL position H was done, and handed over
 * S0, the running transactions read just before H. A transaction that
 * commits at or after H was running in S0 or began after it; L1 is the
 * insert position now, S2 the running transactions after that: every
 * transaction with a commit record before L1 has an id below S2's xmax.
 * So every commit in [H, L1) is one of S0's running ones or an id in
 * [S0's xmax, S2's xmax); if each of those that is not the load's own
 * has not committed (aborted, or still running: then it commits after
 * L1, and is decoded), the slot moves to L1. Otherwise, or on any error,
 * it stays and the capture decodes the load as before. Never fails the
 * load; sn->skip says what happened. */
/* Writes a record of the running transactions (xl_running_xacts) into the
 * WAL now, after the load committed. The slot's restart position (where
 * its walsender starts reading) only moves to such a record; PostgreSQL
 * 15 writes one every 15 s or at a checkpoint, so without this the slot,
 * advanced past the load, still restarts before it, and the capture's
 * walsender reads the whole load again, queueing (and spilling to disk)
 * every row only to forget it: some 0.9 CPU-s per million rows. PostgreSQL
 * 16 has pg_log_standby_snapshot() for this; 15 writes the record first
 * thing when a logical slot is made: a temporary one is made and dropped
 * (a transaction still running would make it wait: at most 200 ms, then
 * it is given up, the record already written). Best effort: any failure
 * only leaves the walsender its extra reading. */
static void log_running_xacts(PGconn *c)
{
    PGresult *r = PQexec(c, "SET statement_timeout = 200; SELECT"
                            " pg_drop_replication_slot(slot_name) FROM"
                            " pg_create_logical_replication_slot('pmgcm_rx_'"
                            " || pg_backend_pid(), 'pgoutput', true)");
    PQclear(r);
    r = PQexec(c, "RESET statement_timeout");
    PQclear(r);
}

static void snap_skip_load(pst_snap *sn, PGconn *c)
{
    pst_store *st = sn->st;
    char *s0 = NULL, slot[64], err[256] = "";
    char *ours = NULL, l1[32] = "";
    size_t ol = 0;
    PGresult *r = NULL;
    pthread_mutex_lock(&st->mu);
    if (st->hold_snap) s0 = strdup(st->hold_snap);
    pthread_mutex_unlock(&st->mu);
    if (!s0) {
        snprintf(sn->skip, sizeof(sn->skip), "decoded by the capture (it"
                 " had not paused)");
        return;
    }
    FILE *f = open_memstream(&ours, &ol);
    if (!f) goto out;
    pthread_mutex_lock(&sn->lmu);
    fputc('{', f);
    for (size_t i = 0; i < sn->n_ours; i++)
        fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)sn->ours[i]);
    fputc('}', f);
    pthread_mutex_unlock(&sn->lmu);
    if (fclose(f) != 0) goto out;
    if (pst_slot_name(c, slot, sizeof(slot), err, sizeof(err))) goto out;
    log_running_xacts(c);
    r = PQexec(c, "SELECT pg_current_wal_insert_lsn()::text");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) goto fail;
    snprintf(l1, sizeof(l1), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = NULL;
    /* the others, until none is running (bounded: it may be a session
     * left open; then the capture decodes) */
    const char *pv[3] = {s0, ours, slot};
    long long committed = -1, running = 0, n = 0;
    char ids[64] = "";
    for (int k = 0; k < 100; k++) {
        r = PQexecParams(
            c,
            "WITH s AS (SELECT $1::pg_snapshot AS s0, pg_current_snapshot()"
            " AS s2), x AS (SELECT pg_snapshot_xmax(s0)::text::bigint AS a,"
            " pg_snapshot_xmax(s2)::text::bigint AS b FROM s),"
            " c AS (SELECT v::text::bigint AS id FROM s, pg_snapshot_xip(s0) v"
            " UNION SELECT g FROM x, generate_series(x.a, x.b - 1) g WHERE"
            " x.b - x.a <= 100000),"
            " t AS (SELECT id, pg_xact_status(id::text::xid8) AS st FROM c"
            " WHERE id <> ALL ($2::bigint[]))"
            " SELECT count(*) FILTER (WHERE st = 'committed'), count(*)"
            " FILTER (WHERE st = 'in progress'), count(*), (SELECT b - a >"
            " 100000 FROM x), coalesce(((array_agg(id ORDER BY id) FILTER"
            " (WHERE st = 'committed'))[1:4])::text, '') FROM t",
            2, NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
            goto fail;
        committed = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        running = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        n = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
        bool wide = PQgetvalue(r, 0, 3)[0] == 't';
        snprintf(ids, sizeof(ids), "%s", PQgetvalue(r, 0, 4));
        PQclear(r);
        r = NULL;
        if (wide) {
            snprintf(sn->skip, sizeof(sn->skip), "decoded by the capture"
                     " (over 100000 transaction ids began meanwhile)");
            goto out;
        }
        if (committed > 0 || running == 0) break;
        uv_sleep(20);
    }
    if (committed != 0 || running != 0) {
        snprintf(sn->skip, sizeof(sn->skip), "decoded by the capture (%lld"
                 " other transaction(s) %s meanwhile%s%s)",
                 committed ? committed : running,
                 committed ? "committed" : "still running",
                 committed ? ": " : "", committed ? ids : "");
        goto out;
    }
    /* the capture's walsender is gone (it ends when the stream does) */
    for (int k = 0; k < 150; k++) {
        r = PQexecParams(c, "SELECT active FROM pg_replication_slots WHERE"
                            " slot_name = $1", 1, NULL, pv + 2, NULL, NULL,
                         0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) goto fail;
        bool busy = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
        bool gone = PQntuples(r) != 1;
        PQclear(r);
        r = NULL;
        if (gone) {
            snprintf(sn->skip, sizeof(sn->skip), "no slot %s", slot);
            goto out;
        }
        if (!busy) break;
        if (k == 149) {
            snprintf(sn->skip, sizeof(sn->skip), "decoded by the capture"
                     " (slot %s still in use)", slot);
            goto out;
        }
        uv_sleep(20);
    }
    const char *pa[2] = {slot, l1};
    r = PQexecParams(c, "SELECT pg_replication_slot_advance($1,"
                        " $2::pg_lsn)::text", 2, NULL, pa, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) goto fail;
    snprintf(sn->skip, sizeof(sn->skip), "skipped by slot %s (advanced to"
             " %s; %lld other transaction id(s) checked)", slot, l1, n);
    goto out;
fail:
    pst_pgerr(c, r, err, sizeof(err));
    snprintf(sn->skip, sizeof(sn->skip), "decoded by the capture (%.150s)",
             err);
out:
    PQclear(r);
    free(ours);
    free(s0);
}

/* This thread took a frame of len bytes from sn->pipe. The loop pauses
 * the stream when the pipe holds SNAP_PIPE_MAX and resumes it below half
 * that (pst_snap_client_poll): it is woken the moment the pipe falls
 * past that mark. Nothing else would wake it in time (the frames come
 * from the paused stream; the store's housekeeping tick is up to a
 * second away), and the load would stand still meanwhile. */
static void snap_drained(pst_snap *sn, size_t len)
{
    size_t left = pst_pipe_bytes(&sn->pipe);
    if (left < SNAP_PIPE_MAX / 2 && left + len >= SNAP_PIPE_MAX / 2)
        uv_async_send(&sn->st->async);
}

/* The client's thread: SNAP_BEGIN, the tables, SNAP_END. A node with
 * loaded data loads on the snapshot's connection inside one transaction
 * (its readers see the old data until the new is complete); one without
 * loads tables in parallel connections (sn->jobs asked for, as many as
 * the server streams at once). */
static int snap_client_load(pst_snap *sn, PGconn *c)
{
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    bool begun = false, done = false, par = false, interleaved = false;
    snap_loader one = {.sn = sn, .c = c, .ti = -1};
    cl_pool pool;
    memset(&pool, 0, sizeof(pool));
    pst_buf *b;
    while (rc == 0 && !done && (b = pst_pipe_get(&sn->pipe)) != NULL) {
        snap_drained(sn, b->len);
        Msg *m = pmgcm__store__msg__unpack(NULL, b->len, b->data);
        if (!m) {
            free(b);
            snprintf(err, el, "malformed snapshot message");
            rc = PST_EPROTO;
            break;
        }
        bool table_frame = m->kind == PMGCM__STORE__MSG__KIND__SNAP_TABLE ||
                           m->kind == PMGCM__STORE__MSG__KIND__SNAP_DATA ||
                           m->kind == PMGCM__STORE__MSG__KIND__SNAP_TABLE_END;
        if (table_frame && !begun) {
            snprintf(err, el, "table before snapshot start");
            rc = PST_EPROTO;
        } else if (table_frame && par) {
            rc = pool_route(sn, &pool, m, b, interleaved);
            b = NULL;
        } else if (table_frame) {
            if (m->kind == PMGCM__STORE__MSG__KIND__SNAP_TABLE_END) {
                rc = PST_EPROTO;
                snprintf(err, el, "unexpected table end in a snapshot");
            } else if (m->kind == PMGCM__STORE__MSG__KIND__SNAP_TABLE) {
                if (!m->name) {
                    rc = PST_EPROTO;
                    snprintf(err, el, "table without a name");
                } else if ((rc = ld_table_end(&one)) == 0) {
                    rc = ld_table(&one, m->name);
                }
            } else if (!m->has_data) {
                rc = PST_EPROTO;
                snprintf(err, el, "data outside a table");
            } else {
                rc = ld_data(&one, m);
            }
            if (rc && one.err[0]) snprintf(err, el, "%s", one.err);
        } else {
            switch (m->kind) {
            case PMGCM__STORE__MSG__KIND__SNAP_BEGIN: {
                if (begun) {
                    rc = PST_EPROTO;
                    snprintf(err, el, "unexpected snapshot start");
                    break;
                }
                interleaved = m->has_jobs && m->jobs > 1;
                unsigned n = interleaved ? m->jobs : 1;
                if (n > sn->jobs) {
                    rc = PST_EPROTO;
                    snprintf(err, el, "the snapshot streams %u tables at"
                             " once; %u asked for", n, sn->jobs);
                    break;
                }
                par = sn->jobs > 1;
                begun = true;
                sn->t_ms[1] = pst_mono_ms();
                /* once the snapshot is acceptable, the loaders connect
                 * while the capture pauses and the tables are emptied (a
                 * loader touches c only for a table's frames, which
                 * come after this) */
                if ((rc = cl_accept(sn, m))) break;
                if (par && (rc = pool_start(sn, &pool, c, n))) break;
                if ((rc = cl_begin(sn, c, m, par))) break;
                sn->t_ms[2] = pst_mono_ms();
                break;
            }
            case PMGCM__STORE__MSG__KIND__SNAP_END:
                sn->t_ms[3] = pst_mono_ms();
                if (!begun) {
                    rc = PST_EPROTO;
                    snprintf(err, el, "unexpected snapshot end");
                    break;
                }
                if (par) {
                    if (!interleaved) rc = pool_end_cur(sn, &pool);
                    int r2 = pool_stop(sn, &pool, rc != 0);
                    if (!rc) rc = r2;
                    if (!rc && pool.open) {
                        rc = PST_EPROTO;
                        snprintf(err, el, "the snapshot ended inside a"
                                 " table");
                    }
                } else if ((rc = ld_table_end(&one)) && one.err[0]) {
                    snprintf(err, el, "%s", one.err);
                }
                if (rc == 0) rc = cl_end(sn, c, par);
                sn->t_ms[4] = pst_mono_ms();
                if (rc == 0 && par) snap_skip_load(sn, c);
                sn->t_ms[5] = pst_mono_ms();
                done = rc == 0;
                break;
            case PMGCM__STORE__MSG__KIND__ERROR:
                snprintf(err, el, "%s", m->error ? m->error : "peer error");
                rc = strncmp(err, "schema mismatch", 15) == 0 ? PST_ESCHEMA
                                                              : PST_EREMOTE;
                break;
            default:
                rc = PST_EPROTO;
                snprintf(err, el, "unexpected message %d in a snapshot",
                         m->kind);
            }
        }
        free(b);
        pmgcm__store__msg__free_unpacked(m, NULL);
    }
    if (pool.n) {
        /* the loaders stop; the first real error is theirs */
        char keep[256];
        snprintf(keep, sizeof(keep), "%s", err);
        int r2 = pool_stop(sn, &pool, true);
        if (r2 && r2 != -ECANCELED &&
            (rc == -EIO || rc == -ECANCELED || !rc))
            rc = r2;
        else snprintf(err, el, "%s", keep);
    }
    if (!done && rc == 0) {
        rc = -ECONNRESET;
        snprintf(err, el, "the snapshot stream ended early");
    }
    if (one.in_copy) PQputCopyEnd(c, "aborted");
    rebuild_clear(&one);
    free(one.zbuf);
    return rc;
}

static void snap_client_main(void *arg)
{
    pst_snap *sn = arg;
    int rc;
    PGconn *c = snap_connect(sn->st, 0, sn->err, sizeof(sn->err));
    sn->t_ms[0] = pst_mono_ms();
    if (!c) {
        rc = PST_EDB;
    } else {
        if (sn->jobs > 1) {
            /* a parallel load: the capture pauses (snap_skip_load), once
             * the loaders' origins exist (made after this, their commits
             * would count as others') */
            make_load_origins(sn, c);
            __atomic_store_n(&sn->want_hold, 1, __ATOMIC_RELEASE);
            uv_async_send(&sn->st->async);
        }
        rc = snap_client_load(sn, c);
        PQfinish(c); /* an open transaction rolls back: old data stays */
    }
    snap_finish(sn, rc);
}

pst_snap *pst_snap_start(pst_session *s, bool server, const char *schema,
                         unsigned jobs, bool lz4)
{
    pst_store *st = s->st;
    pst_snap *sn = calloc(1, sizeof(*sn));
    if (!sn) return NULL;
    sn->st = st;
    sn->peer_cid = s->cid;
    sn->self_cid = st->self_cid;
    sn->schema = schema ? strdup(schema) : NULL;
    sn->jobs = jobs < 1 ? 1 : jobs > PST_SNAP_JOBS ? PST_SNAP_JOBS : jobs;
    sn->lz4 = lz4;
    pthread_mutex_init(&sn->lmu, NULL);
    pthread_cond_init(&sn->lcv, NULL);
    if (!server) {
        sn->local = pst_tableset_dup(st->tables);
        if (!sn->local) {
            pthread_mutex_destroy(&sn->lmu);
            pthread_cond_destroy(&sn->lcv);
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
        snap_destroy(sn);
        return NULL;
    }
    pthread_detach(sn->tid);
    sn->started = true;
    return sn;
}

/* Never waits: a running thread is told to stop and frees sn itself. */
void pst_snap_free(pst_snap *sn)
{
    if (sn->hold) {
        pst_capture_hold(sn->st, false);
        sn->hold = false;
    }
    pthread_mutex_lock(&sn->pipe.mu);
    bool fin = sn->finished;
    if (!fin) sn->detached = true;
    pthread_mutex_unlock(&sn->pipe.mu);
    if (!fin) return;
    snap_destroy(sn);
}

/* ---- client: snapshot ------------------------------------------------------------------ */

void pst_snap_client_poll(pst_session *s)
{
    pst_snap *sn = s->sn;
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
    if (!fin && !s->ended && !sn->hold &&
        __atomic_exchange_n(&sn->want_hold, 0, __ATOMIC_ACQ_REL)) {
        pst_capture_hold(s->st, true);
        sn->hold = true;
        __atomic_store_n(&sn->hold_asked, s->st->cap ? 1 : 2,
                         __ATOMIC_RELEASE);
    }
    if (!fin || s->ended) return;
    pst_store *st = s->st;
    if (sn->hold) {
        /* the capture goes on (past the load's WAL, when skipped) */
        pst_capture_hold(st, false);
        sn->hold = false;
    }
    if (rc == 0) {
        i->pos = sn->pos;
        i->recv_seq = sn->pos.seq;
        i->head = sn->pos;
        i->pos_ts_us = i->head_ts_us = sn->ts_us;
        pst_loaded_read(st, true, sn->unload_gen);
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
                "store: snapshot loaded: %llu rows, %llu bytes (%llu on the"
                " wire), %u tables, position %llu/%llu, in %.1f s",
                (unsigned long long)i->snap_rows,
                (unsigned long long)i->snap_bytes,
                (unsigned long long)__atomic_load_n(&sn->wire,
                                                    __ATOMIC_RELAXED),
                i->snap_tables,
                (unsigned long long)sn->pos.epoch,
                (unsigned long long)sn->pos.seq,
                (double)(pst_mono_ms() - i->snap_started_ms) / 1000.0);
        if (sn->skip[0]) pst_log(st, 2, "store: the load's WAL: %s", sn->skip);
        const uint64_t *t = sn->t_ms;
#define D(a, b) (t[a] && t[b] && t[b] >= t[a] ? (long long)(t[b] - t[a]) : -1LL)
        pst_log(st, 2, "store: snapshot phases (ms): to the first frame %lld,"
                " emptying %lld, tables %lld, position %lld, the WAL %lld",
                D(0, 1), D(1, 2), D(2, 3), D(3, 4), D(4, 5));
#undef D
    } else {
        pst_set_error(st, "snapshot: %s", sn->err);
    }
    pst_changed(st);
    pst_sess_end(s, rc, rc ? sn->err : "snapshot loaded");
}

void pst_snap_client_frame(pst_session *s, const uint8_t *buf,
                                  size_t len)
{
    pst_buf *b = pst_buf_new(buf, len);
    if (!b) {
        pst_sess_end(s, -ENOMEM, "out of memory");
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


/* ---- server: the pump of the snapshot thread ---------------------------------------------------------- */

void pst_snap_server_pump(pst_session *s)
{
    pst_snap *sn = s->sn;
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
                    pst_sess_end(s, rc, rc ? sn->err : "snapshot sent");
                }
            }
            return;
        }
        pst_sess_send_raw(s, b->data, b->len);
        free(b);
    }
}


void pst_snap_abort(pst_snap *sn)
{
    pst_pipe_abort(&sn->pipe);
}

void pst_snap_eof(pst_snap *sn)
{
    pst_pipe_eof(&sn->pipe);
}
