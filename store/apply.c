/*
 * apply.c - following an upstream (store/store.h): pst_apply_dispatch hands
 * each server message to one apply_handle_* (as PostgreSQL's worker.c does);
 * received changes go into the log and are applied, with the position, in
 * one transaction.
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
    if (first > 0 && !aj->is_origin) {
        /* what we already hold must be the same history: an entry of
         * another term at that position means our log forked from the
         * upstream's (a resync keeps what we hold as divergence) */
        const Change *dup = m->changes[first - 1];
        char sb[24];
        snprintf(sb, sizeof(sb), "%llu", (unsigned long long)dup->seq);
        const char *pv[1] = {sb};
        if ((rc = pst_q1(c, "SELECT epoch FROM pmgcm.log WHERE seq ="
                            " $1::bigint", 1, pv, &r, err, el)))
            goto out;
        bool other = PQntuples(r) == 1 &&
                     strtoull(PQgetvalue(r, 0, 0), NULL, 10) != dup->epoch;
        PQclear(r);
        r = NULL;
        if (other) {
            snprintf(err, el, "this node's change %llu is of another term"
                     " than the upstream's: its log forked",
                     (unsigned long long)dup->seq);
            rc = PST_EDIVERGED;
            goto out;
        }
    }
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
            (aj->is_origin && (ch->op == 'E' ||
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
        pst_copy_esc(&p, ch->tbl);
        *p++ = '\t';
        pst_copy_esc(&p, ch->old);
        *p++ = '\t';
        pst_copy_esc(&p, ch->new_);
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

/* Ends the table being copied in: 0 or PST_EDB (message in sn->err). */
