/*
 * apply.c - following an upstream (store/store.h): pst_apply_dispatch hands
 * each server message to one apply_handle_* (as PostgreSQL's worker.c does);
 * received changes go into the log and are applied, with the position, in
 * one transaction.
 */
#define _GNU_SOURCE
#include "store/internal.h"
#include "store/pgoutput.h"
#include "store/store.pb-c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef Pmgcm__Store__Msg Msg;
typedef Pmgcm__Store__Open Open;
typedef Pmgcm__Store__Change Change;

#define APPLY_QUEUE_PAUSE 8

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

/* apply_run's steps, in order: unpack the queued frames into one batch,
 * lock this node's position, skip what it already holds (checking that
 * it is the same history), encode the rest for COPY, copy it into the log,
 * apply it and advance the position; one transaction. Each step returns
 * 0 or a PST_E* / -errno with err set. */

/* The queued frames' changes, in order (msgs own them). */
typedef struct batch {
    Msg **msgs;
    size_t nf;
    Change **ch;
    size_t n;
} batch;

static void batch_free(batch *bt)
{
    for (size_t f = 0; f < bt->nf; f++)
        pmgcm__store__msg__free_unpacked(bt->msgs[f], NULL);
    free(bt->msgs);
    free(bt->ch);
    memset(bt, 0, sizeof(*bt));
}

static int batch_unpack(const apply_job *aj, batch *bt, char *err, size_t el)
{
    size_t nf = 0, total = 0;
    for (const pst_buf *b = aj->frame; b; b = b->next) nf++;
    bt->msgs = calloc(nf ? nf : 1, sizeof(*bt->msgs));
    if (!bt->msgs) return -ENOMEM;
    for (const pst_buf *b = aj->frame; b; b = b->next) {
        Msg *one = pmgcm__store__msg__unpack(NULL, b->len, b->data);
        if (!one || one->n_changes == 0) {
            if (one) pmgcm__store__msg__free_unpacked(one, NULL);
            snprintf(err, el, "malformed changes");
            return PST_EPROTO;
        }
        bt->msgs[bt->nf++] = one;
        total += one->n_changes;
    }
    bt->ch = malloc((total ? total : 1) * sizeof(*bt->ch));
    if (!bt->ch) return -ENOMEM;
    for (size_t q = 0; q < bt->nf; q++)
        for (size_t k = 0; k < bt->msgs[q]->n_changes; k++)
            bt->ch[bt->n++] = bt->msgs[q]->changes[k];
    return 0;
}

/* The statements every apply transaction runs, prepared once per worker
 * session (parsed and planned each time, they cost the followers' servers
 * more than the rows at 1,000 changes/s). */
static const char APPLY_PREP[] =
    "PREPARE pmgcm_ap_lock AS SELECT epoch, seq, recv_seq FROM pmgcm.state"
    " FOR UPDATE;"
    " PREPARE pmgcm_ap_apply(bigint, bigint) AS SELECT pmgcm.apply($1, $2);"
    " PREPARE pmgcm_ap_pos(bigint, bigint, bigint, bigint) AS UPDATE"
    " pmgcm.state SET epoch = $1, seq = $2, recv_seq = $3, ts ="
    " to_timestamp($4 / 1000000.0);"
    " PREPARE pmgcm_ap_oins(int) AS INSERT INTO pmgcm.opos (origin) VALUES"
    " ($1) ON CONFLICT DO NOTHING;"
    " PREPARE pmgcm_ap_olock(int) AS SELECT 0, seq, recv_seq FROM pmgcm.opos"
    " WHERE origin = $1 FOR UPDATE;"
    " PREPARE pmgcm_ap_oapply(int, bigint, bigint) AS SELECT"
    " pmgcm.oapply($1, $2, $3);"
    " PREPARE pmgcm_ap_opos(int, bigint, bigint, bigint) AS UPDATE pmgcm.opos"
    " SET seq = $2, recv_seq = $3, ts = to_timestamp($4 / 1000000.0) WHERE"
    " origin = $1";

/* BEGIN, and this node's (epoch, seq, recv_seq) for the upstream (or for
 * the origin), locked for the transaction: one round trip (the last
 * statement's result comes back). */
static int lock_position(const apply_job *aj, PGconn *c, pst_pos *pos,
                         uint64_t *recv, char *err, size_t el)
{
    int rc = pst_sql_prepare(c, aj->j.prepared, PST_PREP_APPLY, APPLY_PREP,
                             err, el);
    if (rc) return rc;
    char q[128];
    if (aj->is_origin)
        snprintf(q, sizeof(q), "BEGIN; EXECUTE pmgcm_ap_oins(%u);"
                 " EXECUTE pmgcm_ap_olock(%u)", aj->origin, aj->origin);
    else
        snprintf(q, sizeof(q), "BEGIN; EXECUTE pmgcm_ap_lock");
    PGresult *r = PQexec(c, q);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    pos->epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    pos->seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    *recv = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    return 0;
}

/* *first: the first change after recv (what we hold is skipped). What we
 * already hold must be the same history: an entry of another term at that
 * position means our log forked from the upstream's (a resync keeps what
 * we hold as divergence). */
static int skip_held(const apply_job *aj, PGconn *c, const batch *bt,
                     uint64_t recv, size_t *first, char *err, size_t el)
{
    size_t f = 0;
    while (f < bt->n && bt->ch[f]->seq <= recv) f++;
    *first = f;
    if (f == 0 || aj->is_origin) return 0;
    const Change *dup = bt->ch[f - 1];
    char sb[24];
    snprintf(sb, sizeof(sb), "%llu", (unsigned long long)dup->seq);
    const char *pv[1] = {sb};
    PGresult *r = NULL;
    int rc = pst_q1(c, "SELECT epoch FROM pmgcm.log WHERE seq = $1::bigint",
                    1, pv, &r, err, el);
    if (rc) return rc;
    bool other = PQntuples(r) == 1 &&
                 strtoull(PQgetvalue(r, 0, 0), NULL, 10) != dup->epoch;
    PQclear(r);
    if (other) {
        snprintf(err, el, "this node's change %llu is of another term"
                 " than the upstream's: its log forked",
                 (unsigned long long)dup->seq);
        return PST_EDIVERGED;
    }
    return 0;
}

/* What the batch's new changes end at. */
typedef struct tail {
    uint64_t prev;       /* the last change's seq (the new recv_seq) */
    uint64_t last_seq;   /* the last complete transaction's seq, or 0 */
    uint64_t last_epoch;
    int64_t last_ts;
} tail;

/* The changes from first on, checked (contiguous after recv, no older
 * term, the origin's own, a known op, numbers their columns can hold)
 * and written in COPY's binary format into b (header to trailer). */
static int encode_copy(const apply_job *aj, const batch *bt, size_t first,
                       const pst_pos *pos, uint64_t recv, pst_wbuf *b,
                       tail *t, char *err, size_t el)
{
    if (bt->ch[first]->seq != recv + 1) {
        snprintf(err, el, "gap in the change stream: have %llu, got %llu",
                 (unsigned long long)recv,
                 (unsigned long long)bt->ch[first]->seq);
        return PST_EPROTO;
    }
    int rc = pst_wb_reserve(b, sizeof(pst_copy_bin_head) + 2);
    if (rc) return rc;
    memcpy(b->p, pst_copy_bin_head, sizeof(pst_copy_bin_head));
    b->len = sizeof(pst_copy_bin_head);
    *t = (tail){.prev = recv, .last_epoch = pos->epoch};
    for (size_t i = first; i < bt->n; i++) {
        const Change *ch = bt->ch[i];
        /* the numbers go as they are: bounded to their columns here (a
         * text COPY had the server refuse them) */
        if (ch->seq != t->prev + 1 || ch->seq > INT64_MAX ||
            ch->epoch > INT64_MAX ||
            (ch->has_origin && ch->origin > INT32_MAX) ||
            (!aj->is_origin && ch->epoch < pos->epoch) ||
            (aj->is_origin && (ch->op == 'E' ||
                               !ch->has_origin || ch->origin != aj->origin)) ||
            (ch->op != 'I' && ch->op != 'U' && ch->op != 'D' &&
             ch->op != 'T' && ch->op != 'E')) {
            snprintf(err, el, "bad change %llu in the stream",
                     (unsigned long long)ch->seq);
            return PST_EPROTO;
        }
        t->prev = ch->seq;
        size_t lt = ch->tbl ? strlen(ch->tbl) : 0,
               lo = ch->old ? strlen(ch->old) : 0,
               ln = ch->new_ ? strlen(ch->new_) : 0;
        if (lt > INT32_MAX / 4 || lo > INT32_MAX / 4 || ln > INT32_MAX / 4)
            return -EFBIG;
        /* the count, 9 lengths, the numbers, 2 version bytes, the texts,
         * the trailer */
        if ((rc = pst_wb_reserve(b, 2 + 9 * 4 + 30 + 2 + lt + lo + ln + 2)))
            return rc;
        pst_wb_be(b, aj->is_origin ? 8 : 9, 2);
        pst_wb_num(b, ch->seq, 8);
        if (!aj->is_origin) pst_wb_num(b, ch->epoch, 8);
        pst_wb_num(b, (uint8_t)ch->op, 1);
        pst_wb_bin_text(b, ch->tbl, lt, false);
        pst_wb_bin_text(b, ch->old, lo, true);
        pst_wb_bin_text(b, ch->new_, ln, true);
        /* microseconds since 2000-01-01 (unsigned: any value is defined;
         * the server refuses one out of timestamptz's range) */
        pst_wb_num(b, (uint64_t)ch->ts_us - (uint64_t)PST_PGO_EPOCH_OFFSET_US,
                   8);
        pst_wb_num(b, ch->last ? 1 : 0, 1);
        pst_wb_num(b, ch->has_origin ? ch->origin : 0, 4);
        if (ch->last) {
            t->last_seq = ch->seq;
            t->last_epoch = ch->epoch;
            t->last_ts = ch->ts_us;
        }
    }
    pst_wb_be(b, 0xffff, 2);
    return 0;
}

/* Apply the complete transactions received (from pos->seq + 1 to
 * t->last_seq), move the position and commit; with no complete
 * transaction only recv_seq moves. pos is updated to what this node now
 * holds. Statements joined into one round trip where no result is needed
 * in between (a failing one ends the string; the worker rolls back). */
static int apply_and_advance(apply_job *aj, PGconn *c, pst_pos *pos,
                             const tail *t, char *err, size_t el)
{
    char q[700];
    int n;
    if (t->last_seq && aj->is_origin)
        n = snprintf(q, sizeof(q),
                     "EXECUTE pmgcm_ap_oapply(%u, %llu, %llu);"
                     " EXECUTE pmgcm_ap_opos(%u, %llu, %llu, %lld); COMMIT",
                     aj->origin, (unsigned long long)pos->seq + 1,
                     (unsigned long long)t->last_seq, aj->origin,
                     (unsigned long long)t->last_seq,
                     (unsigned long long)t->prev, (long long)t->last_ts);
    else if (t->last_seq)
        n = snprintf(q, sizeof(q),
                     "EXECUTE pmgcm_ap_apply(%llu, %llu);"
                     " EXECUTE pmgcm_ap_pos(%llu, %llu, %llu, %lld); COMMIT",
                     (unsigned long long)pos->seq + 1,
                     (unsigned long long)t->last_seq,
                     (unsigned long long)t->last_epoch,
                     (unsigned long long)t->last_seq,
                     (unsigned long long)t->prev, (long long)t->last_ts);
    else if (aj->is_origin)
        n = snprintf(q, sizeof(q), "UPDATE pmgcm.opos SET recv_seq = %llu"
                     " WHERE origin = %u; COMMIT",
                     (unsigned long long)t->prev, aj->origin);
    else
        n = snprintf(q, sizeof(q), "UPDATE pmgcm.state SET recv_seq = %llu;"
                     " COMMIT", (unsigned long long)t->prev);
    if (n < 0 || (size_t)n >= sizeof(q)) return -EINVAL;
    if (!t->last_seq) return pst_exec(c, q, err, el);
    /* one round trip; the apply's count is the first result */
    if (!PQsendQuery(c, q)) {
        pst_pgerr(c, NULL, err, el);
        return PST_EDB;
    }
    int rc = 0;
    bool counted = false;
    PGresult *r;
    while ((r = PQgetResult(c))) {
        ExecStatusType s = PQresultStatus(r);
        if (rc == 0 && s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
        } else if (rc == 0 && s == PGRES_TUPLES_OK && !counted &&
                   PQntuples(r) == 1) {
            aj->applied = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
            counted = true;
        }
        PQclear(r);
    }
    if (rc) return rc;
    if (!counted) {
        snprintf(err, el, "the apply function returned no count");
        return PST_EDB;
    }
    pos->seq = t->last_seq;
    pos->epoch = t->last_epoch;
    aj->ts_us = t->last_ts;
    aj->advanced = true;
    return 0;
}

/* Every queued frame in one transaction: one commit per batch of frames
 * keeps up with many small frames. */
static void apply_run(pst_job *j, PGconn *c)
{
    apply_job *aj = (apply_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    batch bt = {0};
    pst_wbuf buf = {0};
    size_t first = 0;
    pst_pos pos = {0};
    uint64_t recv = 0;
    tail t;
    int rc = batch_unpack(aj, &bt, err, el);
    if (!rc) rc = lock_position(aj, c, &pos, &recv, err, el);
    if (!rc) rc = skip_held(aj, c, &bt, recv, &first, err, el);
    if (!rc && first == bt.n) { /* all duplicates */
        aj->pos = pos;
        aj->recv_seq = recv;
        rc = pst_exec(c, "ROLLBACK", err, el);
        goto out;
    }
    if (!rc) rc = encode_copy(aj, &bt, first, &pos, recv, &buf, &t, err, el);
    /* into pmgcm.log (or pmgcm.olog) directly: no temp table to fill,
     * copy from and empty at every commit */
    if (!rc)
        rc = pst_copy_in(c,
                         aj->is_origin
                             ? "COPY pmgcm.olog (seq, op, tbl, old, new, ts,"
                               " last, origin) FROM STDIN (FORMAT binary)"
                             : "COPY pmgcm.log (seq, epoch, op, tbl, old, new,"
                               " ts, last, origin) FROM STDIN (FORMAT binary)",
                         &buf, err, el);
    if (!rc) rc = apply_and_advance(aj, c, &pos, &t, err, el);
    if (!rc) {
        aj->pos = pos;
        aj->recv_seq = t.prev;
    }
out:
    free(buf.p);
    batch_free(&bt);
    j->rc = rc;
}

void pst_apply_pump(pst_session *s);

/* db_sync: tell the server what this node holds (its log, committed) */
static void send_ack(pst_session *s, uint64_t epoch, uint64_t seq)
{
    if (s->kind != PST_SUBSCRIBE || !s->acks_ok || seq <= s->acked) return;
    Msg m = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Pos p = PMGCM__STORE__POS__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__ACK;
    p.epoch = epoch;
    p.seq = seq;
    m.head = &p;
    s->acked = seq;
    pst_sess_send_msg(s, &m);
}

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
    bool alive = pst_sess_alive(st, s);
    if (j->rc == 0 && alive && !aj->is_origin && s->acks_ok &&
        aj->recv_seq > s->acked) {
        /* db_sync: the server learns what we hold (durably: committed) */
        send_ack(s, aj->pos.epoch, aj->recv_seq);
    }
    if (j->rc && alive) {
        pst_set_error(st, "applying changes: %s", j->err);
        pst_sess_end(s, j->rc, j->err);
    }
    free(aj);
    if (alive) {
        s->applying = false;
        pst_apply_pump(s);
    }
    /* another session may be waiting for the apply slot */
    pst_session_poll_all(st);
}

void pst_apply_pump(pst_session *s)
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
    uint64_t gen; /* pst_unload_bump's */
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
    /* the tables hold those changes: only a snapshot repairs them */
    if ((rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = false", err, el)))
        goto out;
    dj->gen = pst_unload_bump(j->st); /* the row is ours till the commit */
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
            pst_unloaded(st, dj->gen);
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
        if (pst_sess_alive(st, s))
            pst_sess_end(s, j->rc ? j->rc : PST_EDIVERGED,
                     j->rc ? j->err : "diverged");
    }
    free(dj);
}

/* ---- the dispatch: one handler per server message ------------------------------ */

/* CHANGES: every table named must be one of ours (of the stream's kind):
 * an unknown one ends the stream before anything is stored; the frame is
 * queued for apply_run. */
static void apply_handle_changes(pst_session *s, const Msg *m,
                                 const uint8_t *buf, size_t len)
{
    pst_store *st = s->st;
    pst_info *i = &st->info;
    if (m->n_changes == 0) return;
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
            pst_sess_end(s, PST_ESCHEMA, st->info.error);
            return;
        }
    }
    if (m->has_acks && m->acks) s->acks_ok = true;
    Change *l = m->changes[m->n_changes - 1];
    pst_pos hp = {l->epoch, l->seq};
    if (m->head && m->head->seq > hp.seq) hp.seq = m->head->seq;
    if (s->kind == PST_SUBSCRIBE && pst_pos_cmp(i->head, hp) < 0) {
        i->head = hp;
        i->head_ts_us = l->ts_us;
    }
    pst_buf *b = pst_buf_new(buf, len);
    if (!b) {
        pst_sess_end(s, -ENOMEM, "out of memory");
        return;
    }
    if (s->ap_tail) s->ap_tail->next = b;
    else s->ap_head = b;
    s->ap_tail = b;
    s->ap_n++;
    if (s->ap_n >= APPLY_QUEUE_PAUSE && !s->paused) {
        s->paused = true;
        if (s->link.pause) s->link.pause(s->link.ud, true);
    }
    pst_apply_pump(s);
}

/* HEAD: the upstream's newest entry (keepalive; how far behind we are). */
static void apply_handle_head(pst_session *s, const Msg *m)
{
    pst_info *i = &s->st->info;
    if (!m->head) return;
    if (m->has_acks && m->acks && !s->acks_ok) {
        s->acks_ok = true;
        send_ack(s, i->pos.epoch, i->recv_seq);
    }
    if (s->kind == PST_OSUBSCRIBE) {
        s->peer_pos.seq = m->head->seq;
        return;
    }
    pst_pos hp = {m->head->epoch, m->head->seq};
    i->head = hp;
    if (m->has_head_ts_us) i->head_ts_us = m->head_ts_us;
    s->peer_pos = hp;
    pst_changed(s->st);
}

static void apply_handle_need_snapshot(pst_session *s)
{
    pst_sess_end(s, PST_ENEEDSNAP, "the upstream needs us to take a snapshot");
}

/* DIVERGED: our log holds entries after the fork that the upstream never
 * had: they go to pmgcm.divergence (div_run), then a snapshot. */
static void apply_handle_diverged(pst_session *s, const Msg *m)
{
    pst_store *st = s->st;
    if (!m->fork || s->kind != PST_SUBSCRIBE) {
        pst_sess_end(s, PST_EPROTO, "diverged without a fork point");
        return;
    }
    st->info.state = PST_DIVERGED;
    div_job *dj = calloc(1, sizeof(*dj));
    if (!dj) {
        pst_sess_end(s, -ENOMEM, "out of memory");
        return;
    }
    dj->s = s;
    dj->fork.epoch = m->fork->epoch;
    dj->fork.seq = m->fork->seq;
    dj->j.run = div_run;
    dj->j.done = div_done;
    pst_submit(st, &dj->j);
    pst_changed(st);
}

static void apply_handle_error(pst_session *s, const Msg *m)
{
    pst_sess_end(s, PST_EREMOTE, m->error ? m->error : "peer error");
}

void pst_apply_dispatch(pst_session *s, const uint8_t *buf, size_t len)
{
    pst_store *st = s->st;
    Msg *m = pmgcm__store__msg__unpack(NULL, len, buf);
    if (!m) {
        pst_sess_end(s, PST_EPROTO, "malformed message");
        return;
    }
    if (!s->heard) {
        s->heard = true;
        pst_changed(st);
    }
    switch (m->kind) {
    case PMGCM__STORE__MSG__KIND__CHANGES:
        apply_handle_changes(s, m, buf, len);
        break;
    case PMGCM__STORE__MSG__KIND__HEAD:
        apply_handle_head(s, m);
        break;
    case PMGCM__STORE__MSG__KIND__NEED_SNAPSHOT:
        apply_handle_need_snapshot(s);
        break;
    case PMGCM__STORE__MSG__KIND__DIVERGED:
        apply_handle_diverged(s, m);
        break;
    case PMGCM__STORE__MSG__KIND__ERROR:
        apply_handle_error(s, m);
        break;
    default:
        pst_sess_end(s, PST_EPROTO, "unexpected message");
    }
    pmgcm__store__msg__free_unpacked(m, NULL);
}
