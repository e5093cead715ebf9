/*
 * serve.c - serving peers (store/store.h): the change log after a client's
 * position (SUBSCRIBE, OSUBSCRIBE), snapshots (the pump of snapshot.c's
 * thread) and positions.
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
#define KEEPALIVE_MS 5000
#define MAX_OPEN (4u << 20)

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
    /* at most PST_FRAME_BYTES of row data per frame (the first change always
     * goes, so a lone huge change still moves; the transport refuses
     * frames over its limit) */
    size_t bytes = 0;
    int keep = n;
    for (int i = 0; i < n; i++) {
        bytes += 64 + (size_t)PQgetlength(r, i, 3) + (size_t)PQgetlength(r, i, 4) +
                 (size_t)PQgetlength(r, i, 5);
        if (i > 0 && bytes > PST_FRAME_BYTES) {
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
    if (!rj->is_origin) {
        m.has_acks = true;
        m.acks = true;
    }
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
static void read_entries(read_job *rj, PGconn *c, int prep, const char *sql,
                         int n, const char *const *pv)
{
    PGresult *r = pst_exec_prepared(c, rj->j.prepared, prep, sql, n, pv);
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
        read_entries(rj, c, PST_PREP_READ_OLOG,
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
    read_entries(rj, c, PST_PREP_READ_LOG,
                 "SELECT seq, epoch, op, tbl, old::text, new::text,"
                 " (extract(epoch FROM ts) * 1000000)::bigint, last, origin"
                 " FROM pmgcm.log WHERE seq > $1::bigint AND seq <= $2::bigint"
                 " ORDER BY seq LIMIT $3::int",
                 3, pv3);
}

void pst_serve_pump(pst_session *s);

static void read_done(pst_job *j)
{
    read_job *rj = (read_job *)j;
    pst_store *st = j->st;
    pst_session *s = rj->s;
    if (st->closing || !pst_sess_alive(st, s)) {
        free(rj->frame);
        free(rj);
        return;
    }
    s->reading = false;
    if (j->rc) {
        pst_sess_send_error(s, j->err);
        pst_sess_end(s, j->rc, j->err);
    } else if (rj->verdict == 1) {
        Msg m = PMGCM__STORE__MSG__INIT;
        m.kind = PMGCM__STORE__MSG__KIND__NEED_SNAPSHOT;
        pst_sess_send_msg(s, &m);
        pst_sess_end(s, 0, "sent: need a snapshot");
    } else if (rj->verdict == 2) {
        Msg m = PMGCM__STORE__MSG__INIT;
        Pmgcm__Store__Pos f = PMGCM__STORE__POS__INIT;
        m.kind = PMGCM__STORE__MSG__KIND__DIVERGED;
        f.epoch = rj->fork.epoch;
        f.seq = rj->fork.seq;
        m.fork = &f;
        pst_sess_send_msg(s, &m);
        pst_sess_end(s, 0, "sent: diverged");
    } else if (rj->verdict == 3) {
        pst_sess_send_error(s, "this node is behind you (older epoch)");
        pst_sess_end(s, PST_EAHEAD, "client ahead");
    } else {
        s->checked = true;
        if (rj->verdict == 4) {
            if (s->from.seq == 0) s->from = rj->from;
            s->recheck = true;
            pst_sess_send_head(s);
        } else {
            pst_sess_send_raw(s, rj->frame, rj->frame_len);
            s->from = rj->last;
            s->recheck = false;
        }
        pst_serve_pump(s);
    }
    free(rj->frame);
    free(rj);
}

void pst_serve_pump(pst_session *s)
{
    pst_store *st = s->st;
    if (s->ended || s->reading || s->blocked || !st->info.ready) return;
    bool org = s->kind == PST_OSUBSCRIBE;
    uint64_t head = org ? pst_origin_head(st, s->origin) : st->info.recv_seq;
    if (!s->checked || s->from.seq < head) {
        read_job *rj = calloc(1, sizeof(*rj));
        if (!rj) return;
        rj->s = s;
        rj->from = s->checked ? s->from : s->req_from;
        rj->upto = head;
        rj->check = !s->checked || s->recheck;
        rj->is_origin = org;
        rj->origin = s->origin;
        rj->j.run = read_run;
        rj->j.done = read_done;
        s->reading = true;
        pst_submit(st, &rj->j);
        return;
    }
    if (pst_mono_ms() - s->last_send_ms >= KEEPALIVE_MS) pst_sess_send_head(s);
}

void pst_serve_offer(pst_store *st, const pst_cframe *f)
{
    if (!st->info.ready || !st->info.master) return;
    for (pst_session *s = st->sessions; s; s = s->next) {
        if (!s->server || s->kind != PST_SUBSCRIBE || s->ended ||
            !s->checked || s->recheck || s->reading || s->blocked ||
            s->from.seq != f->from)
            continue;
        if (pst_sess_send_raw(s, f->data, f->len) == 0) {
            s->from = f->to;
            st->info.served_direct++;
        }
    }
}

/* ---- server: open ------------------------------------------------------------------ */

int pst_server(pst_store *st, const uint8_t *open, size_t len,
               const pst_link *link, pst_session **out)
{
    if (!st->info.ready) return -EAGAIN;
    if (len > MAX_OPEN) return -EINVAL;
    Open *o = pmgcm__store__open__unpack(NULL, len, open);
    if (!o) return -EINVAL;
    pst_session *s = pst_sess_new(st, link, true);
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
        s->sn = pst_snap_start(s, true, o->schema,
                               o->has_jobs ? o->jobs : 1,
                               o->has_lz4 && o->lz4);
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
        pst_sess_list_remove(s);
        free(s);
        return rc;
    }
    *out = s;
    uv_async_send(&st->async); /* first pump from the loop */
    return 0;
}

