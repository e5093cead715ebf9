/*
 * session.c - store streams (store/store.h): what every session shares:
 * sending frames, ending, freeing, opening a client, the loop's view
 * (sess_poll).
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

void pst_sess_end(pst_session *s, int rc, const char *why);

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
            pst_sess_end(s, rc, "transport");
            return;
        }
    }
    s->blocked = false;
}

int pst_sess_send_raw(pst_session *s, const uint8_t *buf, size_t len)
{
    if (s->ended) return -ESHUTDOWN;
    if (!s->out_head) {
        int rc = s->link.send(s->link.ud, buf, len);
        if (rc == 0) {
            s->last_send_ms = pst_mono_ms();
            return 0;
        }
        if (rc != -EAGAIN) {
            pst_sess_end(s, rc, "transport");
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

int pst_sess_send_msg(pst_session *s, const Msg *m)
{
    size_t len = pmgcm__store__msg__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return -ENOMEM;
    pmgcm__store__msg__pack(m, buf);
    int rc = pst_sess_send_raw(s, buf, len);
    free(buf);
    return rc;
}

void pst_sess_send_error(pst_session *s, const char *err)
{
    Msg m = PMGCM__STORE__MSG__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__ERROR;
    m.error = (char *)err;
    pst_sess_send_msg(s, &m);
}

uint64_t pst_origin_head(pst_store *st, uint32_t o)
{
    pst_origin *p = pst_opos(st, o, false);
    return p ? p->recv_seq : 0;
}

void pst_sess_send_head(pst_session *s)
{
    pst_info *i = &s->st->info;
    Msg m = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Pos p = PMGCM__STORE__POS__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__HEAD;
    p.epoch = i->pos.epoch;
    p.seq = i->recv_seq;
    if (s->kind == PST_OSUBSCRIBE) {
        p.epoch = 0;
        p.seq = pst_origin_head(s->st, s->origin);
        m.has_origin = true;
        m.origin = s->origin;
    }
    m.head = &p;
    m.has_head_ts_us = true;
    m.head_ts_us = i->head_ts_us;
    m.has_master = true;
    m.master = i->master;
    if (s->kind == PST_SUBSCRIBE) {
        m.has_acks = true;
        m.acks = true;
    }
    pst_sess_send_msg(s, &m);
}

/* ---- db_sync: what the followers hold ----------------------------------------------- */

/* The log position that `need` distinct followers (server SUBSCRIBE
 * sessions, by cid) acknowledged: the need-th largest; 0 with fewer. */
static uint64_t sync_acked(pst_store *st, uint32_t need, uint32_t *have)
{
    uint32_t cids[64];
    uint64_t best[64];
    size_t n = 0;
    for (pst_session *s = st->sessions; s; s = s->next) {
        if (!s->server || s->kind != PST_SUBSCRIBE || s->ended || !s->acked)
            continue;
        size_t k = 0;
        while (k < n && cids[k] != s->cid) k++;
        if (k == n) {
            if (n == 64) continue;
            cids[n] = s->cid;
            best[n++] = s->acked;
        } else if (s->acked > best[k]) {
            best[k] = s->acked;
        }
    }
    *have = (uint32_t)n;
    if (need == 0 || n < need) return 0;
    /* the need-th largest */
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (best[j] > best[i]) {
                uint64_t t = best[i];
                best[i] = best[j];
                best[j] = t;
            }
    return best[need - 1];
}

void pst_sync_update(pst_store *st)
{
    uint32_t need = st->info.master ? st->sync_need : 0, have = 0;
    uint64_t acked = sync_acked(st, need, &have);
    if (need && have < need && !st->sync_short) {
        pst_log(st, 1, "store: db_sync needs %u follower(s) to hold every"
                " change, %u acknowledging: commits on this master wait"
                " until enough follow again", need, have);
        st->sync_short = true;
    } else if ((!need || have >= need) && st->sync_short) {
        if (need)
            pst_log(st, 2, "store: db_sync: %u follower(s) acknowledging"
                    " again; commits proceed", have);
        st->sync_short = false;
    }
    if (st->info.sync_need != need || st->info.sync_have != have) {
        st->info.sync_need = need;
        st->info.sync_have = have;
        pst_changed(st);
    }
    pst_capture_set_sync(st, need, acked);
}
/* ---- sessions: common ------------------------------------------------------------------- */

void pst_sess_list_remove(pst_session *s)
{
    pst_session **pp = &s->st->sessions;
    while (*pp && *pp != s) pp = &(*pp)->next;
    if (*pp) *pp = s->next;
}

pst_session *pst_sess_new(pst_store *st, const pst_link *link, bool server)
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
void pst_sess_end(pst_session *s, int rc, const char *why)
{
    if (s->ended) return;
    s->ended = true;
    s->end_rc = rc;
    snprintf(s->end_why, sizeof(s->end_why), "%s",
             why ? why : pst_strerror(rc));
    if (s->sn && rc != 0) pst_snap_abort(s->sn);
    if (s->server && s->kind == PST_SUBSCRIBE && s->acked && !s->st->closing)
        pst_sync_update(s->st);
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
    pst_sess_list_remove(s);
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
        pst_snap_abort(s->sn);
        pst_snap_free(s->sn); /* the thread exits promptly once aborted */
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
        pst_snap_eof(s->sn);
        return;
    }
    pst_sess_end(s, -ECONNRESET, "the peer closed the stream");
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

bool pst_sess_alive(pst_store *st, pst_session *s)
{
    for (pst_session *p = st->sessions; p; p = p->next)
        if (p == s) return !s->ended;
    return false;
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
    pst_session *s = pst_sess_new(st, link, false);
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
        /* a node holding no loaded data takes tables in parallel (each in
         * its own transaction); loaded data is replaced in one */
        if (!st->info.loaded) {
            o.has_jobs = true;
            o.jobs = st->snap_jobs;
        }
        /* data compressed: a quarter of the bytes through the TLS channel,
         * whose cipher is the daemons' largest cost in a snapshot */
        o.has_lz4 = true;
        o.lz4 = true;
    }
    pst_session *s = client_new(st, &o, link, buf, len);
    if (!s) return -ENOMEM;
    s->kind = kind;
    s->cid = self_cid;
    if (kind == PST_SNAPSHOT) {
        s->sn = pst_snap_start(s, false, st->schema_text,
                              o.has_jobs ? o.jobs : 1, o.lz4);
        if (!s->sn) {
            pst_sess_list_remove(s);
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
        /* after the opening message a client only acknowledges what it
         * holds (db_sync), on a subscription */
        Msg *m = s->kind == PST_SUBSCRIBE
                     ? pmgcm__store__msg__unpack(NULL, len, buf)
                     : NULL;
        if (!m || m->kind != PMGCM__STORE__MSG__KIND__ACK || !m->head) {
            if (m) pmgcm__store__msg__free_unpacked(m, NULL);
            pst_sess_end(s, PST_EPROTO, "unexpected frame from the client");
            return;
        }
        /* never past what we hold ourselves */
        uint64_t a = m->head->seq;
        if (a > s->st->info.recv_seq) a = s->st->info.recv_seq;
        pmgcm__store__msg__free_unpacked(m, NULL);
        if (a > s->acked) {
            s->acked = a;
            pst_sync_update(s->st);
        }
        return;
    }
    switch (s->kind) {
    case PST_SUBSCRIBE:
    case PST_OSUBSCRIBE:
        pst_apply_dispatch(s, buf, len);
        break;
    case PST_SNAPSHOT:
        pst_snap_client_frame(s, buf, len);
        break;
    case PST_POSITION: {
        Msg *m = pmgcm__store__msg__unpack(NULL, len, buf);
        if (m && m->kind == PMGCM__STORE__MSG__KIND__POSITION && m->head) {
            s->peer_pos.epoch = m->head->epoch;
            s->peer_pos.seq = m->head->seq;
            pst_sess_end(s, 0, "position");
        } else {
            pst_sess_end(s, m && m->kind == PMGCM__STORE__MSG__KIND__ERROR
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
            pst_serve_pump(s);
            break;
        case PST_SNAPSHOT:
            pst_snap_server_pump(s);
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
            pst_sess_send_msg(s, &m);
            s->last_send_ms = 0;
            pst_sess_end(s, 0, "position sent");
            break;
        }
        }
    } else if (s->kind == PST_SNAPSHOT && s->sn) {
        pst_snap_client_poll(s);
    } else if (s->kind == PST_SUBSCRIBE || s->kind == PST_OSUBSCRIBE) {
        pst_apply_pump(s);
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
        if (!s->ended) pst_sess_end(s, -ECANCELED, "store closing");
}
