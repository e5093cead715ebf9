/*
 * capture.c - capturing changes: numbering what the master committed and
 * this node's own per-origin rows, the sweep of a non-master, LISTEN.
 */
#define _GNU_SOURCE
#include "store/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- numbering captured changes (master) --------------------------------------- */

typedef struct capture_job {
    pst_job j;
    uint32_t cid;
    uint64_t n;
    pst_pos pos;
    int64_t ts_us;
} capture_job;

static void capture_run(pst_job *j, PGconn *c)
{
    capture_job *cj = (capture_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char cid[16];
    snprintf(cid, sizeof(cid), "%u", cj->cid);
    const char *pv[1] = {cid};
    int rc = pst_exec(c, "BEGIN", j->err, sizeof(j->err));
    if (rc) goto out;
    PGresult *r = PQexec(c, "SELECT epoch, seq, role FROM pmgcm.state FOR UPDATE");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    bool master = strcmp(PQgetvalue(r, 0, 2), "master") == 0;
    cj->pos.epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    cj->pos.seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    if (!master) { /* stepped down meanwhile: leave the rows alone */
        rc = pst_exec(c, "ROLLBACK", j->err, sizeof(j->err));
        goto out;
    }
    r = PQexecParams(
        c,
        "WITH c AS (DELETE FROM pmgcm.capture RETURNING *),"
        " s AS (SELECT epoch, seq FROM pmgcm.state),"
        " n AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS rn,"
        "  count(*) OVER () AS cnt FROM c)"
        " INSERT INTO pmgcm.log (seq, epoch, op, tbl, old, new, ts, last, origin)"
        " SELECT s.seq + n.rn, s.epoch, n.op, n.tbl, n.old, n.new,"
        "  clock_timestamp(), n.rn = n.cnt, $1::int FROM n, s",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    cj->n = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    if (cj->n == 0) {
        rc = pst_exec(c, "ROLLBACK", j->err, sizeof(j->err));
        goto out;
    }
    {
        char nb[24];
        snprintf(nb, sizeof(nb), "%llu", (unsigned long long)cj->n);
        const char *p2[1] = {nb};
        r = PQexecParams(c,
                         "UPDATE pmgcm.state SET seq = seq + $1::bigint,"
                         " recv_seq = seq + $1::bigint, ts = clock_timestamp()"
                         " RETURNING (extract(epoch FROM ts) * 1000000)::bigint",
                         1, NULL, p2, NULL, NULL, 0);
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    cj->ts_us = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    cj->pos.seq += cj->n;
    rc = pst_exec(c, "COMMIT", j->err, sizeof(j->err));
out:
    j->rc = rc;
}

static void capture_done(pst_job *j)
{
    capture_job *cj = (capture_job *)j;
    pst_store *st = j->st;
    st->capture_busy = false;
    if (st->closing) {
        free(cj);
        return;
    }
    if (j->rc) {
        pst_set_error(st, "numbering changes: %s", j->err);
    } else if (cj->n > 0) {
        pst_info *i = &st->info;
        i->pos = cj->pos;
        i->recv_seq = cj->pos.seq;
        i->head = cj->pos;
        i->pos_ts_us = i->head_ts_us = cj->ts_us;
        i->captured_total += cj->n;
        if (i->error[0]) pst_set_error(st, "%s", "");
        pst_sessions_head(st);
        pst_changed(st);
    }
    bool again = st->capture_again;
    free(cj);
    st->capture_again = false;
    if (again) pst_start_capture(st);
}

void pst_start_capture(pst_store *st)
{
    if (!st->info.ready || !st->info.master || st->closing) return;
    if (st->capture_busy) {
        st->capture_again = true;
        return;
    }
    capture_job *cj = calloc(1, sizeof(*cj));
    if (!cj) return;
    cj->cid = st->self_cid;
    cj->j.run = capture_run;
    cj->j.done = capture_done;
    st->capture_busy = true;
    st->capture_again = false;
    pst_submit(st, &cj->j);
}

/* ---- numbering this node's own origin changes (every node) ------------------ */

typedef struct ocap_job {
    pst_job j;
    uint32_t cid;
    uint64_t n, seq;
    int64_t ts_us;
} ocap_job;

static void ocap_run(pst_job *j, PGconn *c)
{
    ocap_job *oj = (ocap_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char cid[16];
    snprintf(cid, sizeof(cid), "%u", oj->cid);
    const char *pv[1] = {cid};
    int rc = pst_exec(c, "BEGIN", err, el);
    PGresult *r = NULL;
    if (rc) goto out;
    r = PQexecParams(c, "INSERT INTO pmgcm.opos (origin) VALUES ($1::int)"
                        " ON CONFLICT DO NOTHING", 1, NULL, pv, NULL, NULL, 0);
    PQclear(r);
    r = PQexecParams(c, "SELECT seq FROM pmgcm.opos WHERE origin = $1::int"
                        " FOR UPDATE", 1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    oj->seq = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    r = PQexecParams(
        c,
        "WITH c AS (DELETE FROM pmgcm.ocapture RETURNING *),"
        " s AS (SELECT seq FROM pmgcm.opos WHERE origin = $1::int),"
        " n AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS rn,"
        "  count(*) OVER () AS cnt FROM c)"
        " INSERT INTO pmgcm.olog (origin, seq, op, tbl, old, new, ts, last)"
        " SELECT $1::int, s.seq + n.rn, n.op, n.tbl, n.old, n.new,"
        "  clock_timestamp(), n.rn = n.cnt FROM n, s",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    oj->n = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    r = NULL;
    if (oj->n == 0) {
        rc = pst_exec(c, "ROLLBACK", err, el);
        goto out;
    }
    char nb[24];
    snprintf(nb, sizeof(nb), "%llu", (unsigned long long)oj->n);
    const char *p2[2] = {cid, nb};
    r = PQexecParams(c,
                     "UPDATE pmgcm.opos SET seq = seq + $2::bigint, recv_seq ="
                     " seq + $2::bigint, ts = clock_timestamp() WHERE origin ="
                     " $1::int RETURNING (extract(epoch FROM ts) *"
                     " 1000000)::bigint",
                     2, NULL, p2, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    oj->ts_us = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    oj->seq += oj->n;
    rc = pst_exec(c, "COMMIT", err, el);
out:
    PQclear(r);
    j->rc = rc;
}

static void ocap_done(pst_job *j)
{
    ocap_job *oj = (ocap_job *)j;
    pst_store *st = j->st;
    st->ocapture_busy = false;
    if (!st->closing) {
        if (j->rc) {
            pst_set_error(st, "numbering this node's own rows: %s", j->err);
        } else if (oj->n > 0) {
            pst_origin *o = pst_opos(st, oj->cid, true);
            if (o) {
                o->seq = o->recv_seq = oj->seq;
                o->ts_us = oj->ts_us;
            }
            pst_sessions_head(st);
            pst_changed(st);
        }
    }
    bool again = st->ocapture_again;
    free(oj);
    st->ocapture_again = false;
    if (again && !st->closing) pst_start_ocapture(st);
}

void pst_start_ocapture(pst_store *st)
{
    if (!st->info.ready || st->closing || !st->info.n_origin_tables ||
        st->self_cid == 0 || st->info.state == PST_IDLE)
        return;
    if (st->ocapture_busy) {
        st->ocapture_again = true;
        return;
    }
    ocap_job *oj = calloc(1, sizeof(*oj));
    if (!oj) return;
    oj->cid = st->self_cid;
    oj->j.run = ocap_run;
    oj->j.done = ocap_done;
    st->ocapture_busy = true;
    st->ocapture_again = false;
    pst_submit(st, &oj->j);
}

/* ---- the capture sweep (every node but the master) ------------------------------ */

/* A non-master must hold no captured, unsent change. The fence in the
 * capture trigger refuses such writes; this is the net behind it: any
 * capture row found on a node that is not master goes to divergence (with
 * the reason), and the data is marked not loaded, so a snapshot replaces
 * the tables (keeping what it replaces: see snapshots) and the node is
 * not A meanwhile. */
typedef struct sweep_job {
    pst_job j;
    uint64_t moved;
} sweep_job;

static void sweep_run(pst_job *j, PGconn *c)
{
    sweep_job *sj = (sweep_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    PGresult *r = PQexec(c, "SELECT EXISTS (SELECT 1 FROM pmgcm.capture)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        j->rc = PST_EDB;
        return;
    }
    bool any = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!any) return;
    int rc;
    if ((rc = pst_exec(c, "BEGIN", err, el)) ||
        (rc = pst_exec(c, "SELECT pg_advisory_xact_lock(7947002)", err, el)) ||
        (rc = pst_q1(c, "SELECT role FROM pmgcm.state FOR UPDATE", 0, NULL, &r,
                 err, el)))
        goto out;
    bool master = strcmp(PQgetvalue(r, 0, 0), "master") == 0;
    PQclear(r);
    if (master) { /* promoted meanwhile: the rows are its to number */
        rc = pst_exec(c, "ROLLBACK", err, el);
        goto out;
    }
    if ((rc = pst_q1(c,
                 "WITH c AS (DELETE FROM pmgcm.capture RETURNING *)"
                 " INSERT INTO pmgcm.divergence (reason, epoch, op, tbl, old,"
                 " new, ts) SELECT 'committed here after this node had"
                 " stopped being master (its transaction began before the"
                 " step-down), never sent', (SELECT epoch FROM pmgcm.state),"
                 " op, tbl, old, new, now() FROM c ORDER BY id",
                 0, NULL, &r, err, el)))
        goto out;
    sj->moved = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    if (sj->moved &&
        (rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = false", err, el)))
        goto out;
    rc = pst_exec(c, "COMMIT", err, el);
out:
    j->rc = rc;
}

static void sweep_done(pst_job *j)
{
    sweep_job *sj = (sweep_job *)j;
    pst_store *st = j->st;
    st->sweep_busy = false;
    if (!st->closing) {
        if (j->rc) {
            pst_log(st, 3, "store: capture sweep: %s", j->err);
        } else if (sj->moved) {
            pst_info *i = &st->info;
            i->loaded = false;
            i->divergent_total += sj->moved;
            if (i->state == PST_IN_SYNC) i->state = PST_CATCHING_UP;
            pst_log(st, 1,
                    "store: DIVERGED: %llu change(s) committed here after"
                    " this node had stopped being master were never sent;"
                    " kept in pmgcm.divergence; resyncing with a snapshot",
                    (unsigned long long)sj->moved);
            pst_start_kept(st);
            pst_changed(st);
        }
    }
    free(sj);
}

void pst_start_sweep(pst_store *st)
{
    if (!st->info.ready || st->sweep_busy || st->closing || st->want_master ||
        st->info.master || st->info.state == PST_IDLE || st->role_busy)
        return;
    sweep_job *sj = calloc(1, sizeof(*sj));
    if (!sj) return;
    sj->j.run = sweep_run;
    sj->j.done = sweep_done;
    st->sweep_busy = true;
    pst_submit(st, &sj->j);
}

/* ---- retention ---------------------------------------------------------------------- */


/* The queue tables and the one-row state tables are updated at every
 * commit: their dead rows must go long before autovacuum's next round
 * (every capture, numbering pass and apply reads them). */
static void vacuum_run(pst_job *j, PGconn *c)
{
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    j->rc = pst_exec(c,
                     "VACUUM (SKIP_LOCKED) pmgcm.capture, pmgcm.ocapture,"
                     " pmgcm.state, pmgcm.opos",
                     j->err, sizeof(j->err));
}

static void vacuum_done(pst_job *j)
{
    pst_store *st = j->st;
    st->vacuum_busy = false;
    if (j->rc && !st->closing)
        pst_log(st, 3, "store: vacuum: %s", j->err);
    free(j);
}

void pst_start_vacuum(pst_store *st)
{
    if (!st->info.ready || st->vacuum_busy || st->closing) return;
    pst_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->run = vacuum_run;
    j->done = vacuum_done;
    st->vacuum_busy = true;
    pst_submit(st, j);
}
/* ---- LISTEN (non-blocking, under uv_poll) --------------------------------------- */

void pst_listen_stop(pst_store *st);

static void listen_poll_cb(uv_poll_t *p, int status, int events)
{
    pst_store *st = p->data;
    (void)events;
    if (status < 0 || !PQconsumeInput(st->listen)) {
        pst_log(st, 1, "store: LISTEN connection lost: %s",
                PQerrorMessage(st->listen));
        pst_listen_stop(st);
        return;
    }
    bool any = false;
    PGnotify *n;
    while ((n = PQnotifies(st->listen)) != NULL) {
        any = true;
        PQfreemem(n);
    }
    /* drain results of our own LISTEN command */
    while (!PQisBusy(st->listen)) {
        PGresult *r = PQgetResult(st->listen);
        if (!r) break;
        PQclear(r);
    }
    if (any) {
        pst_start_capture(st);
        pst_start_ocapture(st);
    }
}

void pst_unref(pst_store *st);

static void listen_closed(uv_handle_t *h)
{
    pst_store *st = h->data;
    if (st->listen) PQfinish(st->listen);
    st->listen = NULL;
    pst_unref(st);
}

void pst_listen_stop(pst_store *st)
{
    if (!st->listen) return;
    if (st->listen_active) {
        st->listen_active = false;
        uv_poll_stop(&st->listen_poll);
        uv_close((uv_handle_t *)&st->listen_poll, listen_closed);
    } else {
        PQfinish(st->listen);
        st->listen = NULL;
        st->refs--;
    }
}

/* Connects without blocking: PQconnectPoll driven by uv_poll. */
static void listen_connect_cb(uv_poll_t *p, int status, int events);

static void listen_want(pst_store *st, PostgresPollingStatusType ps)
{
    uv_poll_start(&st->listen_poll,
                  ps == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE,
                  listen_connect_cb);
}

static void listen_connect_cb(uv_poll_t *p, int status, int events)
{
    pst_store *st = p->data;
    (void)events;
    PostgresPollingStatusType ps =
        status < 0 ? PGRES_POLLING_FAILED : PQconnectPoll(st->listen);
    if (ps == PGRES_POLLING_READING || ps == PGRES_POLLING_WRITING) {
        listen_want(st, ps);
        return;
    }
    if (ps != PGRES_POLLING_OK || PQsetnonblocking(st->listen, 1) != 0 ||
        !PQsendQuery(st->listen, "LISTEN pmgcm_capture")) {
        pst_listen_stop(st);
        return;
    }
    PQsetNoticeProcessor(st->listen, pst_notice_quiet, NULL);
    PQflush(st->listen);
    uv_poll_start(&st->listen_poll, UV_READABLE, listen_poll_cb);
    /* changes committed before we listened */
    pst_start_capture(st);
}

void pst_listen_start(pst_store *st)
{
    if (st->listen || st->closing) return;
    PGconn *c = PQconnectStart(st->conninfo);
    if (!c) return;
    if (PQstatus(c) == CONNECTION_BAD || PQsocket(c) < 0) {
        PQfinish(c);
        return;
    }
    st->listen = c;
    st->refs++;
    if (uv_poll_init(st->loop, &st->listen_poll, PQsocket(c)) != 0) {
        PQfinish(c);
        st->listen = NULL;
        st->refs--;
        return;
    }
    st->listen_poll.data = st;
    st->listen_active = true;
    listen_want(st, PGRES_POLLING_WRITING);
}
