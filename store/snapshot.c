/*
 * snapshot.c - snapshots (the store's tablesync): the server thread copies
 * every replicated table inside one consistent snapshot; the client thread
 * loads them in one transaction, keeping what it replaces (backup.c).
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

#define SNAP_CHUNK (256u * 1024u)
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
    uint32_t peer_cid;   /* server: the receiver (its own origin rows stay) */
    uint64_t divergent;  /* client: log entries kept as divergence */
    uint32_t self_cid;   /* client: us */
    pst_tableset *local; /* client: the local replicated set (a copy) */
    char backup[80];     /* client: the backup schema of this load, or "" */
    uint64_t bk_rows;    /* client: rows kept there */
    uint32_t bk_tables;
    pst_origin opos[PST_ORIGINS_MAX]; /* client: positions received */
    size_t n_opos;
    /* client: secondary indexes of the table being loaded, dropped before
     * its COPY and built again after it (CREATE INDEX statements) */
    char **rebuild;
    size_t n_rebuild;
};

static void rebuild_clear(pst_snap *sn);

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
        pst_pipe_destroy(&sn->pipe);
        free(sn->schema);
        pst_tableset_free(sn->local);
        rebuild_clear(sn);
        free(sn);
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

static void snap_server_main(void *arg)
{
    pst_snap *sn = arg;
    pst_store *st = sn->st;
    char *err = sn->err;
    size_t el = sizeof(sn->err);
    int rc = 0;
    PGresult *r = NULL;
    char *mine = NULL;
    uint64_t total_rows = 0, total_bytes = 0;
    PGconn *c = pst_connect(st->conninfo, NULL, err, el);
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
    /* A change this node's capture numbered before this snapshot whose
     * transaction this snapshot does not see (it waits for db_sync's
     * acknowledgement, or is a moment from being visible) is not in the
     * tables copied: the position is the change before the first such
     * one (what follows is replayed, harmlessly, over the copy). */
    r = PQexec(c,
               "WITH x AS (SELECT (v::text::bigint % 4294967296) AS xid FROM"
               " pg_snapshot_xip(pg_current_snapshot()) v),"
               " f AS (SELECT min(l.seq) AS s FROM pmgcm.log l WHERE l.xid IN"
               " (SELECT xid FROM x))"
               " SELECT f.s - 1, (SELECT epoch FROM pmgcm.log WHERE seq ="
               " f.s - 1) FROM f WHERE f.s IS NOT NULL");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    if (PQntuples(r) == 1) {
        uint64_t s2 = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        if (s2 < head.seq) {
            pst_log(st, 2, "store: snapshot position %llu/%llu, not %llu:"
                    " a later numbered change's transaction is not visible"
                    " yet", (unsigned long long)head.epoch,
                    (unsigned long long)s2, (unsigned long long)head.seq);
            head.seq = s2;
            if (!PQgetisnull(r, 0, 1))
                head.epoch = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
        }
    }
    PQclear(r);
    r = NULL;
    if ((rc = pst_schema_text(c, st, &mine, err, el))) goto out;
    if (sn->schema && strcmp(sn->schema, mine) != 0) {
        char d[700];
        snprintf(err, el, "schema mismatch: %s",
                 pst_schema_diff(sn->schema, mine, d, sizeof(d)));
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
        /* this node's own origin likewise: before its first numbered
         * change whose transaction is not visible here */
        PGresult *ro = PQexecParams(
            c,
            "WITH x AS (SELECT (v::text::bigint % 4294967296) AS xid FROM"
            " pg_snapshot_xip(pg_current_snapshot()) v)"
            " SELECT o.origin, least(o.seq, coalesce((SELECT min(l.seq) - 1"
            " FROM pmgcm.olog l WHERE l.origin = o.origin AND l.xid IN"
            " (SELECT xid FROM x)), o.seq)) FROM pmgcm.opos o WHERE o.origin"
            " <> $1::int ORDER BY o.origin",
            1, NULL, pv, NULL, NULL, 0);
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
static void rebuild_clear(pst_snap *sn)
{
    for (size_t i = 0; i < sn->n_rebuild; i++) free(sn->rebuild[i]);
    free(sn->rebuild);
    sn->rebuild = NULL;
    sn->n_rebuild = 0;
}

/* Before a truncated table is loaded: its secondary indexes go, to be
 * built again once the rows are in (a sorted build is far cheaper than
 * an insert per row into each index; in the same transaction, so a
 * failed load restores them). Kept as they are: indexes of constraints
 * (primary keys, unique, exclusion: foreign keys may depend on them),
 * in another tablespace, clustered, invalid, commented, or with column
 * statistics targets (what CREATE INDEX would not restore). The table is
 * a local name. */
static int rebuild_begin(pst_snap *sn, PGconn *c, const char *tbl)
{
    rebuild_clear(sn);
    const char *pv[1] = {tbl};
    PGresult *r = PQexecParams(
        c,
        "SELECT format('DROP INDEX %s', i.indexrelid::regclass),"
        " pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class k ON"
        " k.oid = i.indexrelid WHERE i.indrelid = $1::regclass AND"
        " i.indisvalid AND NOT i.indisclustered AND k.reltablespace = 0 AND"
        " NOT EXISTS (SELECT 1 FROM pg_constraint n WHERE n.conindid ="
        " i.indexrelid) AND obj_description(i.indexrelid, 'pg_class') IS"
        " NULL AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid"
        " = i.indexrelid AND a.attstattarget > 0) ORDER BY 1",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, sn->err, sizeof(sn->err));
        PQclear(r);
        return PST_EDB;
    }
    int n = PQntuples(r), rc = 0;
    if (n) {
        sn->rebuild = calloc((size_t)n, sizeof(*sn->rebuild));
        if (!sn->rebuild) rc = -ENOMEM;
    }
    for (int i = 0; rc == 0 && i < n; i++) {
        sn->rebuild[i] = strdup(PQgetvalue(r, i, 1));
        if (!sn->rebuild[i]) {
            rc = -ENOMEM;
            break;
        }
        sn->n_rebuild++;
        rc = pst_exec(c, PQgetvalue(r, i, 0), sn->err, sizeof(sn->err));
    }
    PQclear(r);
    return rc;
}

static int copy_end(pst_snap *sn, PGconn *c)
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
    /* the indexes dropped for the load, built again */
    for (size_t i = 0; rc == 0 && i < sn->n_rebuild; i++)
        rc = pst_exec(c, sn->rebuild[i], sn->err, sizeof(sn->err));
    rebuild_clear(sn);
    __atomic_add_fetch(&sn->tables_done, 1, __ATOMIC_RELAXED);
    return rc;
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

static int snap_client_load(pst_snap *sn, PGconn *c)
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
                         pst_schema_diff(sn->schema, m->schema, d, sizeof(d)));
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
            /* memory for the index builds after each table's load */
            if ((rc = pst_exec(c, "BEGIN; SET LOCAL maintenance_work_mem ="
                                  " '256MB'", err, el)))
                break;
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
            /* a table this transaction truncated (not a per-origin one,
             * which keeps our rows; not a partitioned one) is loaded
             * frozen: no hint bits or vacuum freeze to do afterwards, and
             * less to write now */
            bool freeze = false;
            if (!sn->local->t[ti].origin) {
                const char *pv[1] = {sn->local->t[ti].name};
                r = PQexecParams(c, "SELECT relkind = 'r' FROM pg_class"
                                    " WHERE oid = $1::regclass", 1, NULL, pv,
                                 NULL, NULL, 0);
                freeze = PQresultStatus(r) == PGRES_TUPLES_OK &&
                         PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
                PQclear(r);
            }
            if (freeze &&
                (rc = rebuild_begin(sn, c, sn->local->t[ti].name)))
                break;
            if (asprintf(&sql, "COPY %s FROM STDIN%s", sn->local->t[ti].name,
                         freeze ? " (FREEZE)" : "") < 0) {
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
    pst_snap *sn = arg;
    int rc;
    /* under a replication origin of its own: the load is not captured
     * again (several loads may overlap while an old one winds down) */
    static unsigned next_tag;
    char tag[16];
    snprintf(tag, sizeof(tag), "s%u",
             __atomic_fetch_add(&next_tag, 1, __ATOMIC_RELAXED) % 64);
    PGconn *c = pst_connect(sn->st->conninfo, tag, sn->err, sizeof(sn->err));
    if (!c) {
        rc = PST_EDB;
    } else {
        rc = snap_client_load(sn, c);
        PQfinish(c); /* an open transaction rolls back: old data stays */
    }
    snap_finish(sn, rc);
}

pst_snap *pst_snap_start(pst_session *s, bool server, const char *schema)
{
    pst_store *st = s->st;
    pst_snap *sn = calloc(1, sizeof(*sn));
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
        rebuild_clear(sn);
        free(sn);
        return NULL;
    }
    pthread_detach(sn->tid);
    sn->started = true;
    return sn;
}

/* Never waits: a running thread is told to stop and frees sn itself. */
void pst_snap_free(pst_snap *sn)
{
    pthread_mutex_lock(&sn->pipe.mu);
    bool fin = sn->finished;
    if (!fin) sn->detached = true;
    pthread_mutex_unlock(&sn->pipe.mu);
    if (!fin) return;
    pst_pipe_destroy(&sn->pipe);
    free(sn->schema);
    pst_tableset_free(sn->local);
    rebuild_clear(sn);
    free(sn);
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
