/*
 * api.c - the node API (net.h): a TLS server where services register
 * {request kind, who may call, handler}, and its client side.
 *
 * Server: every connection past the TLS handshake is an sconn. Its first
 * frame is routed by kind (api.proto Head) to the registered handler; the
 * sconn is then the pmm_api_req the handler answers (pmm_api_reply frees
 * it, or the close does when the answer came first). A request handed to a
 * stream (pmm_api_req_stream) keeps its sconn as the stream's router.
 *
 * Client: a pmm_api_call is one TLS connection: connect, handshake, one
 * frame out, one frame back, close; its callback runs exactly once.
 */
#include "net/net.h"
#include "net/api.pb-c.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define FRAME_MAX (8u << 20)
/* the server's limits on unauthenticated peers (see the channel's opts for
 * the handshakes, guard.c for the choice of what goes) */
#define API_HANDSHAKES_MAX 32     /* unfinished TLS handshakes at once ... */
#define API_HANDSHAKES_PER_SRC 4  /* ... from one address */
#define API_HANDSHAKE_MS 5000     /* accept to verify */
#define API_JOINERS_MAX 16        /* unknown certificates past the handshake */
#define API_JOINERS_PER_SRC 2
#define API_JOINER_FRAME_MAX (64u * 1024)
#define API_JOINER_IDLE_MS 15000
#define API_CONNS_HARD_MAX 4096   /* a safety net over everything */
#define API_IDLE_MS 30000
/* known nodes' streams: subscribe + per-origin per peer, fetches, files */
#define API_STREAMS_BASE 64
#define API_STREAMS_PER_NODE 3
/* calls */
#define CALL_TIMEOUT_MS 5000
#define CALL_IDLE_MS 15000
#define KIND_MAX 256

typedef struct route {
    pmm_api_who who;
    pmm_api_handler fn;
    void *ud;
    const char *off;
    bool set;
} route;

/* an incoming connection on the node API (and the request it carries) */
typedef struct sconn {
    pmm_api *a;
    pmm_tls_conn *conn; /* NULL once closed while its request is pending */
    bool busy;          /* its request is with a handler */
    char peer_ip[INET6_ADDRSTRLEN];
    /* a stream owns the connection */
    void *stream;
    pmm_api_stream_cb scb;
    /* what it counts against: a known node's stream, or a joiner */
    bool node, joiner;
    pmm_src src;
    uint64_t seq;
    struct sconn *jprev, *jnext; /* a->joiners, oldest first */
} sconn;

struct pmm_api_req {
    sconn s; /* a request is its connection */
};

struct pmm_api_call {
    pmm_api *a;
    pmm_api_call *next;
    pmm_tls_conn *conn;
    uint8_t *req;
    size_t req_len;
    bool probe;
    bool done;
    pmm_tls_fp seen_fp;
    bool got_fp;
    char target[INET6_ADDRSTRLEN + 8];
    pmm_api_call_fn fn;
    void *ud;
};

struct pmm_api {
    uv_loop_t *loop;
    /* refs: the api itself (until pmm_api_close), every server
     * connection and every call until its close callback */
    pmm_tls_identity *tls;
    pmm_tls_server *srv;
    pmm_api_gate gate;
    route routes[KIND_MAX];
    bool closing;
    int refs;
    pmm_api_call *calls;

    uint32_t n_node_conns, n_joiners;
    sconn *joiners, *joiners_last;
    uint64_t sconn_seq;
    uint64_t refused_streams, refused_joiners;
    uint64_t last_refuse_log;
    uint32_t proto_min, proto_max; /* the protocol range we speak */
    uint64_t last_proto_log;       /* ms: mismatches logged at most every 30 s */
};

static void api_unref(pmm_api *a)
{
    if (--a->refs > 0) return;
    pmm_tls_identity_free(a->tls);
    free(a);
}

static uint32_t streams_max(const pmm_api *a)
{
    size_t n = a->gate.nodes ? a->gate.nodes(a->gate.ud) : 1;
    return API_STREAMS_BASE + API_STREAMS_PER_NODE * (uint32_t)n;
}

static bool known(const pmm_api *a, const pmm_tls_fp *fp)
{
    char fps[PMM_TLS_FP_STR_SIZE];
    if (!a->gate.known) return false;
    pmm_tls_fp_str(fp, fps, sizeof(fps));
    return a->gate.known(a->gate.ud, fps);
}

/* ---- answers ------------------------------------------------------------------- */

static void send_and_close(sconn *s, const void *resp, size_t len)
{
    if (!s->conn) return;
    uint8_t *buf = malloc(len ? len : 1);
    if (buf) {
        if (len) memcpy(buf, resp, len);
        if (pmm_tls_send_owned(s->conn, buf, len)) free(buf);
    }
    pmm_tls_conn_close(s->conn);
}

static void send_refusal(sconn *s, const char *why)
{
    Pmgcm__Api__Refusal r = PMGCM__API__REFUSAL__INIT;
    r.ok = 0;
    r.error = (char *)why;
    size_t len = pmgcm__api__refusal__get_packed_size(&r);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        if (s->conn) pmm_tls_conn_close(s->conn);
        return;
    }
    pmgcm__api__refusal__pack(&r, buf);
    send_and_close(s, buf, len);
    free(buf);
}

/* The handler is done with s: freed now if its connection is gone. */
static void sconn_release(sconn *s)
{
    s->busy = false;
    if (!s->conn) free(s);
}

void pmm_api_reply(pmm_api_req *r, const void *resp, size_t len)
{
    sconn *s = &r->s;
    send_and_close(s, resp, len);
    sconn_release(s);
}

void pmm_api_refuse(pmm_api_req *r, const char *why)
{
    sconn *s = &r->s;
    send_refusal(s, why);
    sconn_release(s);
}

pmm_tls_conn *pmm_api_req_conn(const pmm_api_req *r)
{
    return r->s.conn;
}

const char *pmm_api_req_ip(const pmm_api_req *r)
{
    return r->s.peer_ip;
}

const pmm_src *pmm_api_req_src(const pmm_api_req *r)
{
    return &r->s.src;
}

bool pmm_api_req_member(const pmm_api_req *r)
{
    return r->s.node;
}

int pmm_api_req_peer_fp(const pmm_api_req *r, pmm_tls_fp *out)
{
    if (!r->s.conn) return -ENOTCONN;
    return pmm_tls_conn_peer_fp(r->s.conn, out);
}

void pmm_api_req_stream(pmm_api_req *r, const pmm_api_stream_cb *cb,
                        void *stream)
{
    sconn *s = &r->s;
    s->busy = false;
    if (!s->conn) {
        /* closed meanwhile: the stream ends at once */
        if (cb->close) cb->close(stream);
        free(s);
        return;
    }
    s->stream = stream;
    s->scb = *cb;
    pmm_tls_conn_resume(s->conn);
}

/* ---- the server ---------------------------------------------------------------- */

static void joiner_unlink(pmm_api *a, sconn *s)
{
    if (!s->joiner) return;
    s->joiner = false;
    if (s->jprev) s->jprev->jnext = s->jnext;
    else a->joiners = s->jnext;
    if (s->jnext) s->jnext->jprev = s->jprev;
    else a->joiners_last = s->jprev;
    s->jprev = s->jnext = NULL;
    a->n_joiners--;
}

/* Room for a new joiner from src: at the per-address cap that address's
 * oldest idle joiner goes, at the global cap the oldest idle one of the
 * address holding the most. A joiner whose request is being handled
 * (busy, or a stream) is never dropped. false when there is no room. */
static bool joiner_room(pmm_api *a, const pmm_src *src)
{
    pmm_guard_ent e[API_JOINERS_MAX + 1];
    sconn *who[API_JOINERS_MAX + 1];
    size_t n = 0, v;
    uint32_t same = 0;

    memset(e, 0, sizeof(e));
    for (sconn *o = a->joiners; o && n < API_JOINERS_MAX + 1; o = o->jnext) {
        e[n].src = o->src;
        e[n].cls = o->busy || o->stream ? -1 : 0;
        e[n].seq = o->seq;
        who[n++] = o;
        if (pmm_src_eq(&o->src, src)) same++;
    }
    if (same >= API_JOINERS_PER_SRC) {
        v = pmm_guard_victim_of(e, n, SIZE_MAX, src);
        if (v >= n) return false;
        pmm_tls_conn_abort(who[v]->conn);
        joiner_unlink(a, who[v]);
        return a->n_joiners < API_JOINERS_MAX || joiner_room(a, src);
    }
    if (a->n_joiners < API_JOINERS_MAX) return true;
    v = pmm_guard_victim(e, n, SIZE_MAX);
    if (v >= n) return false;
    pmm_tls_conn_abort(who[v]->conn);
    joiner_unlink(a, who[v]);
    return true;
}

static int srv_verify(pmm_tls_conn *c, const pmm_tls_fp *peer, void *ud)
{
    pmm_api *a = ud;
    struct sockaddr_storage ss;
    pmm_src src;

    memset(&ss, 0, sizeof(ss));
    pmm_tls_conn_peer_addr(c, &ss);
    pmm_src_from_sa(&src, (struct sockaddr *)&ss);
    bool is_node = known(a, peer);
    if (is_node && a->n_node_conns >= streams_max(a)) {
        a->refused_streams++;
        uint64_t now = uv_now(a->loop);
        if (now >= a->last_refuse_log + 10000) {
            a->last_refuse_log = now;
            pmm_log(PMM_LOG_WARN, "net", "node API: %u streams of known "
                    "nodes open (the most for %zu nodes): one more refused "
                    "(%llu so far)", a->n_node_conns,
                    a->gate.nodes ? a->gate.nodes(a->gate.ud) : 1,
                    (unsigned long long)a->refused_streams);
        }
        pmm_tls_conn_set_ud(c, NULL);
        return PMM_TLS_REFUSE;
    }
    if (!is_node && !joiner_room(a, &src)) {
        a->refused_joiners++;
        pmm_tls_conn_set_ud(c, NULL);
        return PMM_TLS_REFUSE;
    }
    /* a request is its connection: allocated as one */
    pmm_api_req *r = calloc(1, sizeof(*r));
    if (!r) {
        pmm_tls_conn_set_ud(c, NULL);
        return PMM_TLS_REFUSE;
    }
    sconn *s = &r->s;
    s->a = a;
    s->conn = c;
    s->src = src;
    s->seq = ++a->sconn_seq;
    pmm_sockaddr_ip_str((struct sockaddr *)&ss, s->peer_ip,
                        sizeof(s->peer_ip));
    pmm_tls_conn_set_ud(c, s);
    a->refs++; /* until its close */
    if (is_node) {
        s->node = true;
        a->n_node_conns++;
        return PMM_TLS_ACCEPT_NODE;
    }
    s->joiner = true;
    s->jprev = a->joiners_last;
    if (a->joiners_last) a->joiners_last->jnext = s;
    else a->joiners = s;
    a->joiners_last = s;
    a->n_joiners++;
    /* an unauthenticated joiner only ever sends a small join request */
    pmm_tls_conn_set_max_frame(c, API_JOINER_FRAME_MAX);
    pmm_tls_conn_set_idle_timeout(c, API_JOINER_IDLE_MS);
    return PMM_TLS_ACCEPT_JOINER;
}

static void srv_frame(pmm_tls_conn *c, const uint8_t *data, size_t len,
                      void *ud)
{
    sconn *s = ud;
    pmm_api *a = s->a;
    if (s->stream) {
        if (s->scb.frame) s->scb.frame(s->stream, data, len);
        return;
    }
    if (s->busy) return; /* one request per connection */
    pmm_tls_conn_pause(c);
    Pmgcm__Api__Head *h = pmgcm__api__head__unpack(NULL, len, data);
    if (!h) {
        send_refusal(s, "malformed request");
        return;
    }
    uint32_t kind = h->kind;
    /* no range: a build from before versioning (protocol 1) */
    uint32_t pmin = h->has_proto_min ? h->proto_min : 1;
    uint32_t pmax = h->has_proto_max ? h->proto_max : pmin;
    pmgcm__api__head__free_unpacked(h, NULL);
    if (pmin == 0 || pmax < pmin ||
        !pmm_proto_overlap(pmin, pmax, a->proto_min, a->proto_max)) {
        char why[256];
        const char *ip = s->peer_ip;
        snprintf(why, sizeof(why),
                 "protocol versions do not overlap: the peer%s%s%s speaks "
                 "%u..%u, this node speaks %u..%u: upgrade the older build "
                 "(README \"Rolling upgrades\")", ip[0] ? " (" : "", ip,
                 ip[0] ? ")" : "", pmin, pmax, a->proto_min, a->proto_max);
        uint64_t now = uv_now(a->loop);
        if (a->last_proto_log == 0 || now - a->last_proto_log >= 30000) {
            a->last_proto_log = now;
            pmm_log(PMM_LOG_WARN, "api", "refused a request (kind %u): %s",
                    kind, why);
        }
        send_refusal(s, why);
        return;
    }
    const route *rt = kind < KIND_MAX && a->routes[kind].set
                          ? &a->routes[kind] : NULL;
    if (!rt) {
        send_refusal(s, "unknown request");
        return;
    }
    if (rt->who == PMM_API_MEMBER) {
        pmm_tls_fp fp;
        if (pmm_tls_conn_peer_kind(c) != PMM_TLS_ACCEPT_NODE ||
            pmm_tls_conn_peer_fp(c, &fp) || !known(a, &fp)) {
            send_refusal(s, "not a member of this cluster");
            return;
        }
    }
    if (!rt->fn) {
        send_refusal(s, rt->off ? rt->off : "unknown request");
        return;
    }
    s->busy = true; /* until the handler answers */
    rt->fn(rt->ud, (pmm_api_req *)s, data, len);
}

static void srv_writable(pmm_tls_conn *c, void *ud)
{
    sconn *s = ud;
    (void)c;
    if (s && s->stream && s->scb.writable) s->scb.writable(s->stream);
}

static void srv_close(pmm_tls_conn *c, int reason, void *ud)
{
    sconn *s = ud;
    (void)c;
    (void)reason;
    if (!s) return;
    pmm_api *a = s->a;
    joiner_unlink(a, s);
    if (s->node) {
        s->node = false;
        a->n_node_conns--;
    }
    if (s->stream) {
        void *st = s->stream;
        s->stream = NULL;
        if (s->scb.close) s->scb.close(st);
    }
    s->conn = NULL;
    s->a = NULL; /* a pending request outlives the api */
    if (!s->busy) free(s);
    api_unref(a);
}

int pmm_api_start(pmm_api **out, const pmm_api_env *env, char *err,
                  size_t errlen)
{
    *out = NULL;
    pmm_api *a = calloc(1, sizeof(*a));
    if (!a) return -ENOMEM;
    a->loop = env->loop;
    a->proto_min = PMM_PROTO_MIN;
    a->proto_max = PMM_PROTO_MAX;
    a->refs = 1;
    int rc = pmm_mkdir_p(env->tls_dir, 0700);
    if (rc) {
        snprintf(err, errlen, "%s: %s", env->tls_dir, strerror(-rc));
        free(a);
        return rc;
    }
    rc = pmm_tls_identity_load(env->tls_dir, &a->tls);
    if (rc == -ENOENT) {
        rc = pmm_tls_identity_create(env->tls_dir, env->cn);
        if (rc == 0) {
            rc = pmm_tls_identity_load(env->tls_dir, &a->tls);
            if (rc == 0)
                pmm_log(PMM_LOG_INFO, "net", "created TLS identity, "
                        "fingerprint %s", pmm_tls_identity_fp_str(a->tls));
        }
    }
    if (rc) {
        snprintf(err, errlen, "TLS identity in %s: %s", env->tls_dir,
                 pmm_tls_strerror(rc));
        free(a);
        return rc;
    }
    struct sockaddr_storage ss;
    rc = pmm_sockaddr_ip(&ss, env->ip, env->port);
    if (rc) {
        snprintf(err, errlen, "node API on %s:%u: not an IP address",
                 env->ip, env->port);
        pmm_tls_identity_free(a->tls);
        free(a);
        return rc;
    }
    pmm_tls_callbacks cb = {.ud = a, .verify = srv_verify,
                            .frame = srv_frame, .close = srv_close,
                            .writable = srv_writable};
    pmm_tls_opts opts;
    pmm_tls_opts_default(&opts);
    opts.max_frame = FRAME_MAX;
    opts.idle_timeout_ms = API_IDLE_MS;
    opts.max_conns = API_CONNS_HARD_MAX;
    opts.handshake_timeout_ms = API_HANDSHAKE_MS;
    opts.max_handshakes = API_HANDSHAKES_MAX;
    opts.max_handshakes_per_src = API_HANDSHAKES_PER_SRC;
    opts.budget = env->budget;
    rc = pmm_tls_server_start(&a->srv, a->loop, (struct sockaddr *)&ss,
                              a->tls, &cb, &opts);
    if (rc) {
        snprintf(err, errlen, "node API on %s:%u: %s", env->ip, env->port,
                 strerror(-rc));
        pmm_tls_identity_free(a->tls);
        free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void pmm_api_close(pmm_api *a)
{
    if (!a || a->closing) return;
    a->closing = true;
    for (pmm_api_call *c = a->calls; c; c = c->next)
        pmm_tls_conn_abort(c->conn);
    pmm_tls_server_close(a->srv);
    a->srv = NULL;
    api_unref(a);
}

pmm_tls_identity *pmm_api_identity(const pmm_api *a)
{
    return a->tls;
}

void pmm_api_set_gate(pmm_api *a, const pmm_api_gate *g)
{
    if (g) a->gate = *g;
    else memset(&a->gate, 0, sizeof(a->gate));
}

int pmm_api_register(pmm_api *a, uint32_t kind, pmm_api_who who,
                     pmm_api_handler fn, void *ud, const char *off)
{
    if (!a || kind == 0 || kind >= KIND_MAX) return -EINVAL;
    route *r = &a->routes[kind];
    r->who = who;
    r->fn = fn;
    r->ud = ud;
    r->off = off;
    r->set = true;
    return 0;
}

void pmm_api_get_stats(const pmm_api *a, pmm_api_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!a) return;
    if (a->srv) pmm_tls_server_get_stats(a->srv, &out->tls);
    out->node_streams = a->n_node_conns;
    out->streams_max = streams_max(a);
    out->joiners = a->n_joiners;
    out->refused_streams = a->refused_streams;
    out->refused_joiners = a->refused_joiners;
}

/* ---- the client side --------------------------------------------------------------- */

static void call_finish(pmm_api_call *c, int rc, const uint8_t *resp,
                        size_t len)
{
    if (c->done) return;
    c->done = true;
    c->fn(c, rc, resp, len, c->ud);
}

static void call_free(pmm_api_call *c)
{
    pmm_api *a = c->a;
    for (pmm_api_call **p = &a->calls; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    free(c->req);
    free(c);
    api_unref(a);
}

static int call_verify(pmm_tls_conn *conn, const pmm_tls_fp *peer, void *ud)
{
    pmm_api_call *c = ud;
    (void)conn;
    c->seen_fp = *peer;
    c->got_fp = true;
    return c->probe ? PMM_TLS_REFUSE : PMM_TLS_ACCEPT_NODE;
}

static void call_open(pmm_tls_conn *conn, void *ud)
{
    pmm_api_call *c = ud;
    int rc = pmm_tls_send(conn, c->req, c->req_len);
    if (rc) {
        call_finish(c, rc, NULL, 0);
        pmm_tls_conn_abort(conn);
    }
}

static void call_frame(pmm_tls_conn *conn, const uint8_t *data, size_t len,
                       void *ud)
{
    pmm_api_call *c = ud;
    call_finish(c, 0, data, len);
    pmm_tls_conn_close(conn);
}

static void call_close(pmm_tls_conn *conn, int reason, void *ud)
{
    pmm_api_call *c = ud;
    (void)conn;
    call_finish(c, reason ? reason : -ECONNRESET, NULL, 0);
    call_free(c);
}

/* One varint field (number < 2048: a 2-byte tag); returns its size. */
static size_t put_field(uint8_t *p, uint32_t num, uint32_t v)
{
    size_t n = 0;
    uint32_t tag = num << 3; /* wire type 0 */
    while (tag >= 0x80) {
        p[n++] = (uint8_t)(tag | 0x80);
        tag >>= 7;
    }
    p[n++] = (uint8_t)tag;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

int pmm_api_set_proto(pmm_api *a, uint32_t min, uint32_t max)
{
    if (a == NULL || min == 0 || max < min) return -EINVAL;
    a->proto_min = min;
    a->proto_max = max;
    return 0;
}

size_t pmm_api_proto_fields(const pmm_api *a, uint8_t *out)
{
    size_t n = put_field(out, 30, a->proto_min);
    return n + put_field(out + n, 31, a->proto_max);
}

int pmm_api_call_start(pmm_api *a, const char *ip, uint16_t port,
                       const pmm_tls_fp *expected, const void *req,
                       size_t len, pmm_api_call_fn fn, void *ud,
                       pmm_api_call **out)
{
    struct sockaddr_storage ss;
    if (out) *out = NULL;
    if (a->closing) return -ECANCELED;
    int rc = pmm_sockaddr_ip(&ss, ip, port);
    if (rc) return rc;
    pmm_api_call *c = calloc(1, sizeof(*c));
    if (!c) return -ENOMEM;
    c->a = a;
    c->fn = fn;
    c->ud = ud;
    c->probe = expected == NULL;
    snprintf(c->target, sizeof(c->target), "%s:%u", ip, port);
    if (!c->probe) {
        /* room for our protocol range, appended below */
        c->req = malloc(len + PMM_API_PROTO_FIELDS_MAX);
        if (!c->req) {
            free(c);
            return -ENOMEM;
        }
        if (len) memcpy(c->req, req, len);
        c->req_len = len;
        /* our protocol range: fields 30 and 31 (api.proto Head), appended
         * (protobuf merges them into the message) */
        c->req_len += pmm_api_proto_fields(a, c->req + c->req_len);
    }
    pmm_tls_callbacks cb = {.ud = c, .verify = call_verify, .open = call_open,
                            .frame = call_frame, .close = call_close};
    pmm_tls_opts opts;
    pmm_tls_opts_default(&opts);
    opts.max_frame = FRAME_MAX;
    opts.idle_timeout_ms = CALL_IDLE_MS;
    c->next = a->calls;
    a->calls = c;
    a->refs++;
    rc = pmm_tls_connect(&c->conn, a->loop, (struct sockaddr *)&ss, a->tls,
                         expected, &cb, CALL_TIMEOUT_MS, &opts);
    if (rc) {
        call_free(c);
        return rc;
    }
    if (out) *out = c;
    return 0;
}

const char *pmm_api_call_target(const pmm_api_call *c)
{
    return c->target;
}

int pmm_api_call_peer(const pmm_api_call *c, pmm_tls_fp *out)
{
    if (!c->got_fp) return -ENOENT;
    *out = c->seen_fp;
    return 0;
}

void pmm_api_call_abort(pmm_api_call *c)
{
    if (c && !c->done) pmm_tls_conn_abort(c->conn);
}
