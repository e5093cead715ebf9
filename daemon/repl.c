/*
 * repl.c - the store's streams over the node API (daemon/daemon.h).
 */
#include "daemon/daemon.h"
#include "membership/cluster.pb-c.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define TICK_MS 300
#define CONNECT_TIMEOUT_MS 3000
#define BACKOFF_MIN_MS 300
#define BACKOFF_MAX_MS 5000
#define SCHEMA_RETRY_MS 15000
#define PROMO_QUERY_MS 3000
#define PROMO_CATCHUP_MS 60000
#define STREAM_IDLE_MS 15000
#define STREAM_MAX_FRAME (64u << 20) /* a change: old + new row as JSON */

typedef Pmgcm__Cluster__Request Req;
typedef Pmgcm__Cluster__Response Resp;

typedef struct rlink rlink;
struct rlink {
    pmm_repl *r;
    rlink *next;
    pmm_tls_conn *conn;
    pst_session *sess;
    bool client;
    bool got_resp;
    pst_open_kind kind;
    uint32_t peer_cid;
    uint8_t *open;
    size_t open_len;
    bool ended;
    int rc;
    char why[256];
    bool purpose_promo; /* POSITION / catch-up for a promote */
    uint32_t origin;    /* PST_OSUBSCRIBE: whose rows */
    bool draining;      /* transport closed, snapshot still loading */
};

enum { PROMO_NONE, PROMO_QUERY, PROMO_CATCHUP, PROMO_DONE };

struct pmm_repl {
    pmm_repl_env env;
    pst_store *st;
    uv_timer_t timer;
    rlink *links;
    rlink *up;            /* upstream stream (subscribe or snapshot) */
    uint64_t retry_at;
    uint32_t backoff;
    bool need_snap;
    bool closing;
    bool timer_closed;

    /* the role last asked of the store; the store has applied it when
     * every request asked is done (no stream before: a snapshot loaded
     * while a join's role change starts over would be thrown away) */
    bool role_valid, role_in, role_master;
    uint64_t roles_asked, roles_done;
    uint64_t role_epoch;
    char role_name[GSP_NAME_MAX + 1];
    char role_cluster[33];

    /* promote: catch up from the most advanced live peer first */
    int promo;
    uint64_t promo_epoch, promo_deadline;
    int promo_waiting;
    pst_pos promo_best;
    uint32_t promo_best_cid;

    /* cids whose rows this daemon has purged (pmgcm delete --purge) */
    uint32_t purged_done[PMM_PURGED_MAX];
    size_t n_purged_done;

    /* per-origin streams: retry times and stand-in rotation by cid */
    uint64_t origin_retry[64];
    uint32_t origin_rr[64];
};

static uint64_t now_ms(pmm_repl *r)
{
    return uv_now(r->env.loop);
}

#define rlog(l, ...) pmm_log((pmm_log_level)(l), "store", __VA_ARGS__)

static void decide(pmm_repl *r);

/* ---- store callbacks ------------------------------------------------------------ */

static void st_changed(void *ud)
{
    pmm_repl *r = ud;
    if (r->env.changed) r->env.changed(r->env.ud);
}

static void st_log(void *ud, int level, const char *msg)
{
    (void)ud;
    static const pmm_log_level map[] = {PMM_LOG_ERROR, PMM_LOG_WARN,
                                        PMM_LOG_INFO, PMM_LOG_DEBUG};
    pmm_log(map[level < 0 ? 0 : level > 3 ? 3 : level], "store", "%s",
            strncmp(msg, "store: ", 7) == 0 ? msg + 7 : msg);
}

/* ---- links --------------------------------------------------------------------------- */

static int link_send(void *ud, const uint8_t *buf, size_t len)
{
    rlink *l = ud;
    if (!l->conn) return -ENOTCONN;
    int rc = pmm_tls_send(l->conn, buf, len);
    if (rc == PMM_TLS_ETOOBIG)
        pmm_log(PMM_LOG_ERROR, "store",
                "a change or row of %zu bytes is larger than a stream frame "
                "(%u MB): the peer cannot receive it; replication to it is "
                "stuck there until that row is made smaller", len,
                STREAM_MAX_FRAME >> 20);
    return rc;
}

static void link_pause(void *ud, bool paused)
{
    rlink *l = ud;
    if (!l->conn) return;
    if (paused) pmm_tls_conn_pause(l->conn);
    else pmm_tls_conn_resume(l->conn);
}

static void link_done(rlink *l);

static void link_end(void *ud, int rc, const char *why)
{
    rlink *l = ud;
    if (!l->ended) {
        l->ended = true;
        l->rc = rc;
        snprintf(l->why, sizeof(l->why), "%s", why ? why : "");
    }
    if (l->conn) pmm_tls_conn_close(l->conn);
    else if (l->client && l->draining) link_done(l); /* transport gone */
}

static void link_unlist(rlink *l)
{
    rlink **pp = &l->r->links;
    while (*pp && *pp != l) pp = &(*pp)->next;
    if (*pp) *pp = l->next;
}

static rlink *link_new(pmm_repl *r, bool client)
{
    rlink *l = calloc(1, sizeof(*l));
    if (!l) return NULL;
    l->r = r;
    l->client = client;
    l->next = r->links;
    r->links = l;
    return l;
}

static void link_free(rlink *l)
{
    pmm_repl *r = l->r;
    link_unlist(l);
    pst_session_free(l->sess);
    free(l->open);
    free(l);
    if (r->closing && r->timer_closed && !r->links) free(r);
}

/* ---- server side ---------------------------------------------------------------------- */

/* A store stream's server end: frames, writable and close come from the
 * node API once the request turned into a stream. */
static void srv_frame(void *stream, const uint8_t *data, size_t len)
{
    rlink *l = stream;
    if (l->sess) pst_session_frame(l->sess, data, len);
}

static void srv_writable(void *stream)
{
    rlink *l = stream;
    if (l->sess) pst_session_writable(l->sess);
}

/* The connection closed: frees the stream. */
static void srv_close(void *stream)
{
    rlink *l = stream;
    l->conn = NULL;
    link_free(l);
}

/* STORE from a member node (the node API, net.h): answers ok and turns
 * the connection into the store's stream, or refuses. */
static void serve(void *ud, pmm_api_req *q, const uint8_t *frame,
                  size_t len)
{
    static const pmm_api_stream_cb scb = {
        .frame = srv_frame, .writable = srv_writable, .close = srv_close};
    pmm_repl *r = ud;
    pmm_tls_conn *c = pmm_api_req_conn(q);
    Req *req = pmgcm__cluster__request__unpack(NULL, len, frame);
    if (!req || !req->has_store || !c) {
        pmm_api_refuse(q, "malformed store request");
        if (req) pmgcm__cluster__request__free_unpacked(req, NULL);
        return;
    }
    if (r->closing) {
        pmgcm__cluster__request__free_unpacked(req, NULL);
        pmm_api_refuse(q, "no replicated database on this node");
        return;
    }
    rlink *l = link_new(r, false);
    if (!l) {
        pmgcm__cluster__request__free_unpacked(req, NULL);
        pmm_api_refuse(q, "out of memory");
        return;
    }
    l->conn = c;
    pst_link pl = {.send = link_send, .pause = link_pause, .end = link_end,
                   .ud = l};
    int rc = pst_server(r->st, req->store.data, req->store.len, &pl,
                        &l->sess);
    pmgcm__cluster__request__free_unpacked(req, NULL);
    if (rc) {
        link_free(l);
        pmm_api_refuse(q, rc == -EAGAIN
                              ? "the database is not ready on this node"
                              : "malformed store request");
        return;
    }
    pmm_tls_conn_set_max_frame(c, STREAM_MAX_FRAME);
    Resp resp = PMGCM__CLUSTER__RESPONSE__INIT;
    resp.ok = 1;
    uint8_t buf[16];
    size_t n = pmgcm__cluster__response__pack(&resp, buf);
    pmm_tls_send(c, buf, n);
    pmm_api_req_stream(q, &scb, l);
}

/* STORE on the node API: to r, or refused (r NULL: no database here). */
static void repl_register(pmm_api *api, pmm_repl *r)
{
    pmm_api_register(api, PMGCM__CLUSTER__REQUEST__KIND__STORE,
                     PMM_API_MEMBER, r ? serve : NULL, r,
                     "no replicated database on this node");
}

/* ---- client side ------------------------------------------------------------------------ */

static void cl_open(pmm_tls_conn *c, void *ud)
{
    rlink *l = ud;
    Req q = PMGCM__CLUSTER__REQUEST__INIT;
    q.kind = PMGCM__CLUSTER__REQUEST__KIND__STORE;
    q.has_store = 1;
    q.store.data = l->open;
    q.store.len = l->open_len;
    size_t n = pmgcm__cluster__request__get_packed_size(&q);
    uint8_t *buf = malloc(n + PMM_API_PROTO_FIELDS_MAX);
    if (!buf) {
        pmm_tls_conn_abort(c);
        return;
    }
    pmgcm__cluster__request__pack(&q, buf);
    /* our protocol range, as every node API request carries it */
    if (l->r->env.api) n += pmm_api_proto_fields(l->r->env.api, buf + n);
    if (pmm_tls_send_owned(c, buf, n)) {
        free(buf);
        pmm_tls_conn_abort(c);
    }
}

static void cl_frame(pmm_tls_conn *c, const uint8_t *data, size_t len,
                     void *ud)
{
    rlink *l = ud;
    (void)c;
    if (l->ended) return;
    if (!l->got_resp) {
        Resp *resp = pmgcm__cluster__response__unpack(NULL, len, data);
        if (!resp || !resp->ok) {
            link_end(l, PST_EREMOTE,
                     resp && resp->error ? resp->error : "refused");
        } else {
            l->got_resp = true;
        }
        if (resp) pmgcm__cluster__response__free_unpacked(resp, NULL);
        return;
    }
    pst_session_frame(l->sess, data, len);
}

static void promo_link_done(pmm_repl *r, rlink *l);
static void up_done(pmm_repl *r, rlink *l);
static void drop_up(pmm_repl *r);

static void cl_close(pmm_tls_conn *c, int reason, void *ud)
{
    rlink *l = ud;
    (void)c;
    l->conn = NULL;
    if (!l->ended && reason == 0 && l->kind == PST_SNAPSHOT && l->sess &&
        !l->r->closing) {
        /* the whole snapshot arrived: let the loader finish */
        l->draining = true;
        pst_session_eof(l->sess);
        return;
    }
    if (!l->ended) {
        l->ended = true;
        l->rc = reason ? reason : -ECONNRESET;
        snprintf(l->why, sizeof(l->why), "%s", pmm_tls_strerror(l->rc));
    }
    link_done(l);
}

static void link_done(rlink *l)
{
    pmm_repl *r = l->r;
    if (!l->ended) {
        l->ended = true;
        l->rc = -ECONNRESET;
        snprintf(l->why, sizeof(l->why), "%s", pmm_tls_strerror(l->rc));
    }
    if (r->closing) {
        link_free(l);
        return;
    }
    if (r->up == l) up_done(r, l);
    else if (l->purpose_promo) promo_link_done(r, l);
    else if (l->kind == PST_OSUBSCRIBE && l->rc == PST_ENEEDSNAP) {
        rlog(PMM_LOG_INFO, "node %u no longer holds the rows of cid %u we "
             "miss: taking a snapshot", l->peer_cid, l->origin);
        r->need_snap = true;
        drop_up(r);
    } else if (l->kind == PST_OSUBSCRIBE && l->rc != -ECANCELED) {
        rlog(PMM_LOG_DEBUG, "stream of cid %u's rows from node %u ended: %s",
             l->origin, l->peer_cid, l->why);
    }
    link_free(l);
    decide(r);
}

static const pmm_cnode *self_of(pmm_repl *r, const pmm_cluster *cl);

static rlink *connect_to2(pmm_repl *r, const pmm_cnode *n, pst_open_kind kind,
                          uint32_t origin);

static rlink *connect_to(pmm_repl *r, const pmm_cnode *n, pst_open_kind kind)
{
    return connect_to2(r, n, kind, 0);
}

static rlink *connect_to2(pmm_repl *r, const pmm_cnode *n, pst_open_kind kind,
                          uint32_t origin)
{
    struct sockaddr_storage ss;
    if (pmm_sockaddr_ip(&ss, n->ip, n->api_port) != 0) return NULL;
    pmm_tls_fp fp;
    if (pmm_tls_fp_parse(&fp, n->fp) != 0) return NULL;
    rlink *l = link_new(r, true);
    if (!l) return NULL;
    l->kind = kind;
    l->peer_cid = n->cid;
    l->origin = origin;
    const pmm_cluster *cl = pmm_lc_cluster(r->env.lc);
    const pmm_cnode *self = cl ? self_of(r, cl) : NULL;
    uint32_t my_cid = self ? self->cid : 0;
    pst_link pl = {.send = link_send, .pause = link_pause, .end = link_end,
                   .ud = l};
    int crc = kind == PST_OSUBSCRIBE
                  ? pst_client_origin(r->st, origin, my_cid, &pl, &l->open,
                                      &l->open_len, &l->sess)
                  : pst_client(r->st, kind, my_cid, &pl, &l->open,
                               &l->open_len, &l->sess);
    if (crc != 0) {
        link_free(l);
        return NULL;
    }
    pmm_tls_callbacks cb = {.ud = l, .open = cl_open, .frame = cl_frame,
                            .close = cl_close};
    pmm_tls_opts o;
    pmm_tls_opts_default(&o);
    o.max_frame = STREAM_MAX_FRAME;
    /* the server sends at least a keepalive every 5 s: a stream silent for
     * longer than this is dead (a partition, a frozen peer) even if TCP
     * has not noticed; reading paused by us does not count */
    o.idle_timeout_ms = STREAM_IDLE_MS;
    if (pmm_tls_connect(&l->conn, r->env.loop, (struct sockaddr *)&ss,
                        pmm_api_identity(r->env.api), &fp, &cb,
                        CONNECT_TIMEOUT_MS, &o) != 0) {
        link_free(l);
        return NULL;
    }
    return l;
}

/* ---- decisions ---------------------------------------------------------------------- */

static bool node_alive(pmm_repl *r, const pmm_cnode *n)
{
    gsp_core *core = gsp_uv_core(r->env.u);
    gsp_member m;
    if (!core || gsp_core_get(core, &n->node_id, &m) != 0) return false;
    return m.state == GSP_ALIVE || m.state == GSP_SUSPECT;
}

/* A live peer's store position from its gossiped metadata. */
static bool peer_pos(pmm_repl *r, const pmm_cnode *n, pst_pos *pos)
{
    gsp_core *core = gsp_uv_core(r->env.u);
    gsp_member m;
    pmm_meta meta;
    if (!core || gsp_core_get(core, &n->node_id, &m) != 0 ||
        m.state != GSP_ALIVE || !m.meta ||
        pmm_meta_decode(&meta, m.meta, m.meta_len) != 0 || !meta.db_state)
        return false;
    pos->epoch = meta.db_epoch;
    pos->seq = meta.db_seq;
    return true;
}

static const pmm_cnode *self_of(pmm_repl *r, const pmm_cluster *cl)
{
    return pmm_cluster_by_name(cl, r->env.cfg->name);
}

static void role_set_done(void *ud, int rc)
{
    pmm_repl *r = ud;
    if (rc == -ECANCELED || r->closing) return;
    r->roles_done++;
    if (rc != 0) r->role_valid = false; /* decide() asks again */
    else if (r->roles_done == r->roles_asked) decide(r);
}

static void set_role(pmm_repl *r, bool in, bool master, uint64_t epoch,
                     const char *name, const char *cluster, uint32_t cid)
{
    if (r->role_valid && r->role_in == in && r->role_master == master &&
        r->role_epoch == epoch && strcmp(r->role_name, name) == 0 &&
        strcmp(r->role_cluster, cluster) == 0)
        return;
    r->role_valid = true;
    r->roles_asked++;
    r->role_in = in;
    r->role_master = master;
    r->role_epoch = epoch;
    snprintf(r->role_name, sizeof(r->role_name), "%s", name);
    snprintf(r->role_cluster, sizeof(r->role_cluster), "%s", cluster);
    if (master)
        rlog(PMM_LOG_INFO, "taking writes as master (epoch %llu)",
             (unsigned long long)epoch);
    else if (in)
        rlog(PMM_LOG_INFO, "following master %s", name);
    pst_set_role(r->st, in, master, epoch, cid, name, cluster, role_set_done,
                 r);
}

static void drop_up(pmm_repl *r)
{
    if (r->up && r->up->conn) {
        link_end(r->up, -ECANCELED, "upstream changed");
    }
}

static void up_done(pmm_repl *r, rlink *l)
{
    r->up = NULL;
    int rc = l->rc;
    uint64_t now = now_ms(r);
    if (rc == 0 && l->kind == PST_SNAPSHOT) {
        r->need_snap = false;
        r->backoff = 0;
        r->retry_at = now;
        return;
    }
    if (rc == PST_ENEEDSNAP || rc == PST_EDIVERGED) {
        rlog(PMM_LOG_INFO, "%s: taking a snapshot", pst_strerror(rc));
        r->need_snap = true;
        r->retry_at = now;
        return;
    }
    if (rc == PST_ESCHEMA || strstr(l->why, "schema mismatch")) {
        rlog(PMM_LOG_ERROR, "cannot sync: %s (nothing was changed; retrying "
             "every %d s)", l->why, SCHEMA_RETRY_MS / 1000);
        r->retry_at = now + SCHEMA_RETRY_MS;
        return;
    }
    if (rc != -ECANCELED)
        rlog(PMM_LOG_INFO, "stream from node %u ended: %s", l->peer_cid,
             l->why);
    r->backoff = r->backoff ? r->backoff * 2 : BACKOFF_MIN_MS;
    if (r->backoff > BACKOFF_MAX_MS) r->backoff = BACKOFF_MAX_MS;
    if (rc == -ECANCELED) r->backoff = 0;
    r->retry_at = now + r->backoff;
}

/* promote: POSITION answers and the catch-up stream */
static void promo_link_done(pmm_repl *r, rlink *l)
{
    if (l->kind == PST_POSITION) {
        r->promo_waiting--;
        if (l->rc == 0) {
            pst_pos p = pst_session_peer_pos(l->sess);
            if (pst_pos_cmp(p, r->promo_best) > 0) {
                r->promo_best = p;
                r->promo_best_cid = l->peer_cid;
            }
        }
    } else {
        /* the catch-up stream ended: take what we got */
        r->promo = PROMO_DONE;
    }
}

static void promo_step(pmm_repl *r, const pmm_cluster *cl,
                       const pmm_cnode *self)
{
    pst_info in;
    pst_get_info(r->st, &in);
    uint64_t now = now_ms(r);
    if (r->promo == PROMO_NONE || r->promo_epoch != cl->epoch) {
        r->promo = PROMO_QUERY;
        r->promo_epoch = cl->epoch;
        r->promo_deadline = now + PROMO_QUERY_MS;
        r->promo_best.epoch = in.pos.epoch;
        r->promo_best.seq = in.recv_seq;
        r->promo_best_cid = 0;
        r->promo_waiting = 0;
        drop_up(r);
        for (size_t i = 0; i < cl->n_nodes; i++) {
            const pmm_cnode *n = &cl->nodes[i];
            if (n == self || !node_alive(r, n)) continue;
            rlink *l = connect_to(r, n, PST_POSITION);
            if (l) {
                l->purpose_promo = true;
                r->promo_waiting++;
            }
        }
        rlog(PMM_LOG_INFO, "promote: asking %d live peer(s) for their "
             "position before taking writes", r->promo_waiting);
    }
    if (r->promo == PROMO_QUERY) {
        if (r->promo_waiting > 0 && now < r->promo_deadline) return;
        if (r->promo_best_cid == 0) {
            r->promo = PROMO_DONE;
        } else {
            const pmm_cnode *b = pmm_cluster_by_cid(cl, r->promo_best_cid);
            rlink *l = b ? connect_to(r, b, PST_SUBSCRIBE) : NULL;
            if (!l) {
                r->promo = PROMO_DONE;
            } else {
                rlog(PMM_LOG_INFO, "promote: catching up from %s (position "
                     "%llu/%llu, ours %llu/%llu)", b->name,
                     (unsigned long long)r->promo_best.epoch,
                     (unsigned long long)r->promo_best.seq,
                     (unsigned long long)in.pos.epoch,
                     (unsigned long long)in.recv_seq);
                l->purpose_promo = true;
                r->promo = PROMO_CATCHUP;
                r->promo_deadline = now + PROMO_CATCHUP_MS;
            }
        }
    }
    if (r->promo == PROMO_CATCHUP) {
        bool level = in.pos.seq >= r->promo_best.seq &&
                     in.recv_seq == in.pos.seq;
        if (!level && now < r->promo_deadline) return;
        if (!level) {
            char note[300];
            snprintf(note, sizeof(note), "promote: the catch-up from the "
                     "most advanced peer was incomplete after %d s; took "
                     "writes at %llu/%llu, that peer at %llu/%llu (what it "
                     "holds beyond is kept in its backups when it resyncs)",
                     PROMO_CATCHUP_MS / 1000,
                     (unsigned long long)in.pos.epoch,
                     (unsigned long long)in.pos.seq,
                     (unsigned long long)r->promo_best.epoch,
                     (unsigned long long)r->promo_best.seq);
            rlog(PMM_LOG_WARN, "%s", note);
            pst_note(r->st, "promote", note);
        }
        for (rlink *l = r->links; l; l = l->next)
            if (l->purpose_promo && l->conn) link_end(l, -ECANCELED, "done");
        r->promo = PROMO_DONE;
    }
}

/* Every other node's own rows (per-origin tables): one stream per origin,
 * from that node while it is alive, else from another live peer that
 * holds them; independent of the master. */
#define ORIGIN_SLOTS 64
static void origin_links(pmm_repl *r, const pmm_cluster *cl,
                         const pmm_cnode *self, const pst_info *in)
{
    uint64_t now = now_ms(r);
    /* drop streams of origins gone from the config, or from a stand-in
     * source while the origin itself is alive again */
    for (rlink *l = r->links; l; l = l->next) {
        if (!l->client || l->kind != PST_OSUBSCRIBE || l->ended || !l->conn)
            continue;
        const pmm_cnode *o = pmm_cluster_by_cid(cl, l->origin);
        const pmm_cnode *src = pmm_cluster_by_cid(cl, l->peer_cid);
        if (!o || o == self || (l->peer_cid != l->origin && node_alive(r, o)))
            link_end(l, -ECANCELED, "origin source changed");
        else if (!src || !node_alive(r, src))
            /* gossip says the source is gone: another live peer may hold
             * those rows; don't wait for TCP to notice */
            link_end(l, -ECANCELED, "origin source not alive");
    }
    if (!in->loaded || !in->n_origin_tables) return;
    for (size_t i = 0; i < cl->n_nodes; i++) {
        const pmm_cnode *o = &cl->nodes[i];
        if (o == self) continue;
        bool have = false;
        for (rlink *l = r->links; l && !have; l = l->next)
            have = l->client && l->kind == PST_OSUBSCRIBE &&
                   l->origin == o->cid && !l->ended;
        if (have) continue;
        size_t slot = o->cid % ORIGIN_SLOTS;
        if (now < r->origin_retry[slot]) continue;
        const pmm_cnode *src = node_alive(r, o) ? o : NULL;
        for (size_t k = 0; !src && k < cl->n_nodes; k++) {
            /* a stand-in: rotate through live peers on every attempt */
            const pmm_cnode *p =
                &cl->nodes[(k + r->origin_rr[slot]) % cl->n_nodes];
            if (p != self && p != o && node_alive(r, p)) src = p;
        }
        if (!src) continue;
        r->origin_rr[slot]++;
        r->origin_retry[slot] = now + BACKOFF_MIN_MS;
        rlink *l = connect_to2(r, src, PST_OSUBSCRIBE, o->cid);
        if (!l) r->origin_retry[slot] = now + BACKOFF_MAX_MS;
    }
}

static void decide(pmm_repl *r)
{
    if (r->closing) return;
    pst_info in;
    pst_get_info(r->st, &in);
    if (!in.ready) return;
    const pmm_cluster *cl = pmm_lc_cluster(r->env.lc);
    const pmm_cnode *self = cl ? self_of(r, cl) : NULL;
    if (!cl || !self) {
        drop_up(r);
        pst_set_sync(r->st, 0);
        r->promo = PROMO_NONE;
        set_role(r, false, false, 0, "", "", 0);
        return;
    }
    char cid_hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(cid_hex + 2 * i, 3, "%02x", cl->cluster_id[i]);
    if (r->role_valid && r->role_in) origin_links(r, cl, self, &in);
    /* deleted with --purge: their rows go, here too (once per run; the
     * delete is idempotent) */
    for (size_t i = 0; i < cl->n_purged; i++) {
        bool done = false;
        for (size_t k = 0; k < r->n_purged_done && !done; k++)
            done = r->purged_done[k] == cl->purged[i];
        if (done || pmm_cluster_by_cid(cl, cl->purged[i])) continue;
        if (r->n_purged_done == PMM_PURGED_MAX) {
            memmove(r->purged_done, r->purged_done + 1,
                    (PMM_PURGED_MAX - 1) * sizeof(r->purged_done[0]));
            r->n_purged_done--;
        }
        r->purged_done[r->n_purged_done++] = cl->purged[i];
        if (in.n_origin_tables) {
            rlog(PMM_LOG_INFO, "purging the rows of deleted node cid %u",
                 cl->purged[i]);
            pst_purge_origin(r->st, cl->purged[i], NULL, NULL);
        }
    }
    const pmm_cnode *m = pmm_cluster_master(cl);
    /* db_sync: how many other nodes must hold a change before its commit
     * on the master returns (one: 1 when there is another node; majority:
     * half the nodes, rounded down: with the master that is a majority) */
    uint32_t need = 0, others = cl->n_nodes > 0 ? (uint32_t)cl->n_nodes - 1 : 0;
    if (r->env.cfg->db_sync == PMM_DB_SYNC_ONE) need = others ? 1 : 0;
    else if (r->env.cfg->db_sync == PMM_DB_SYNC_MAJORITY)
        need = (uint32_t)cl->n_nodes / 2;
    pst_set_sync(r->st, m == self ? need : 0);
    if (m == self) {
        pst_set_master_head(r->st, (pst_pos){0, 0});
        bool already = r->role_valid && r->role_master &&
                       r->role_epoch == cl->epoch;
        if (!already && in.pos.epoch < cl->epoch && in.loaded) {
            /* a new term: catch up first */
            promo_step(r, cl, self);
            if (r->promo != PROMO_DONE) {
                char who[GSP_NAME_MAX + 1];
                /* shown in refused writes meanwhile */
                snprintf(who, sizeof(who), "%.20s, catching up first",
                         self->name);
                set_role(r, true, false, in.pos.epoch, who, cid_hex,
                         self->cid);
                return;
            }
        }
        drop_up(r);
        set_role(r, true, true, cl->epoch, self->name, cid_hex, self->cid);
        return;
    }
    r->promo = PROMO_NONE;
    set_role(r, true, false, cl->epoch, m ? m->name : "?", cid_hex,
             self->cid);
    {
        /* the head the master announces: how far behind this node is */
        pst_pos mh = {0, 0};
        if (m && !peer_pos(r, m, &mh)) mh = (pst_pos){0, 0};
        pst_set_master_head(r->st, mh);
    }
    if (!m) return;
    /* the master is down: catch up from the most advanced live peer (it
     * may hold changes the master shipped before it died), by (epoch,
     * seq) as promote does: a peer of an older term with a longer log
     * (an old master's changes nobody else took) is behind, not ahead */
    const pmm_cnode *src = m;
    if (!node_alive(r, m)) {
        const pmm_cnode *best = NULL;
        pst_pos best_pos = {in.pos.epoch, in.recv_seq};
        for (size_t i = 0; i < cl->n_nodes; i++) {
            const pmm_cnode *n = &cl->nodes[i];
            pst_pos p;
            if (n == self || n == m || !peer_pos(r, n, &p)) continue;
            if (pst_pos_cmp(p, best_pos) > 0) {
                best = n;
                best_pos = p;
            }
        }
        if (best) src = best;
        else if (r->up && r->up->peer_cid != m->cid)
            src = pmm_cluster_by_cid(cl, r->up->peer_cid); /* keep it */
    }
    if (!src) src = m;
    if (r->up && r->up->peer_cid != src->cid) drop_up(r);
    if (r->up && r->up->conn) {
        const pmm_cnode *up = pmm_cluster_by_cid(cl, r->up->peer_cid);
        if (!up || !node_alive(r, up)) drop_up(r); /* gossip: it is gone */
    }
    if (r->up && r->up->kind == PST_SUBSCRIBE && !in.loaded) drop_up(r);
    if (r->up || now_ms(r) < r->retry_at) return;
    if (!r->role_valid || r->role_master) return;
    if (r->roles_done != r->roles_asked) return;
    pst_open_kind kind = (!in.loaded || r->need_snap) ? PST_SNAPSHOT
                                                       : PST_SUBSCRIBE;
    if (kind == PST_SNAPSHOT)
        rlog(PMM_LOG_INFO, "taking a snapshot from %s", src->name);
    else if (src != m)
        rlog(PMM_LOG_INFO, "master %s is down: catching up from %s",
             m->name, src->name);
    r->up = connect_to(r, src, kind);
    if (!r->up) {
        r->backoff = r->backoff ? r->backoff * 2 : BACKOFF_MIN_MS;
        if (r->backoff > BACKOFF_MAX_MS) r->backoff = BACKOFF_MAX_MS;
        r->retry_at = now_ms(r) + r->backoff;
    }
}

static void tick(uv_timer_t *t)
{
    pmm_repl *r = t->data;
    decide(r);
    /* a healthy subscription resets the backoff */
    if (r->up && r->up->got_resp && r->up->kind == PST_SUBSCRIBE)
        r->backoff = 0;
}

void pmm_repl_cluster_changed(pmm_repl *r)
{
    if (r) decide(r);
}

/* ---- start / stop ----------------------------------------------------------------------- */

int pmm_repl_start(pmm_repl **out, const pmm_repl_env *env, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (!env->cfg->db_conninfo[0]) {
        repl_register(env->api, NULL);
        return 0;
    }
    pmm_repl *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->env = *env;
    pst_config sc = {.conninfo = env->cfg->db_conninfo,
                     .schemas = env->cfg->db_schemas,
                     .exclude = env->cfg->db_exclude,
                     .origin_tables = env->cfg->db_origin_tables,
                     .retention_s = env->cfg->db_log_retention_s,
                     .snapshot_jobs = env->cfg->db_snapshot_jobs};
    pst_events ev = {.changed = st_changed, .log = st_log, .ud = r};
    int rc = pst_open(env->loop, &sc, &ev, &r->st);
    if (rc) {
        snprintf(err, errlen, "store: %s", strerror(-rc));
        free(r);
        return rc;
    }
    uv_timer_init(env->loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, tick, TICK_MS, TICK_MS);
    repl_register(env->api, r);
    *out = r;
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    pmm_repl *r = h->data;
    r->timer_closed = true;
    if (!r->links) free(r);
}

void pmm_repl_close(pmm_repl *r)
{
    if (!r) return;
    r->closing = true;
    repl_register(r->env.api, NULL);
    /* sessions first (they reference the store), then the store */
    for (rlink *l = r->links, *nx; l; l = nx) {
        nx = l->next;
        if (!l->conn) { /* a snapshot loading after its transport closed */
            pst_session_free(l->sess);
            l->sess = NULL;
            link_unlist(l);
            free(l->open);
            free(l);
            continue;
        }
        pst_session_free(l->sess);
        l->sess = NULL;
        l->ended = true;
        if (l->conn) {
            if (l->client) pmm_tls_conn_abort(l->conn);
            else pmm_tls_conn_close(l->conn);
        }
    }
    pst_close(r->st);
    r->st = NULL;
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, timer_closed);
}

void pmm_repl_info(const pmm_repl *r, pst_info *out)
{
    if (!r) {
        memset(out, 0, sizeof(*out));
        out->state = PST_OFF;
        return;
    }
    pst_get_info(r->st, out);
}

size_t pmm_repl_origins(const pmm_repl *r, pst_origin *out, size_t max)
{
    return r ? pst_get_origins(r->st, out, max) : 0;
}

void pmm_repl_note(pmm_repl *r, const char *kind, const char *text)
{
    if (r && !r->closing) pst_note(r->st, kind, text);
}

int pmm_repl_backups(pmm_repl *r, const char *clear, pst_backups_fn done,
                     void *ud)
{
    if (!r || r->closing) return -ENODEV;
    return pst_backups(r->st, clear, done, ud);
}

const char *pmm_repl_schema(const pmm_repl *r)
{
    return r && !r->closing ? pst_schema(r->st) : NULL;
}
