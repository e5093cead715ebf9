/*
 * uv.c - the libuv adapter: the only place in gossip/ that knows libuv.
 *
 * UDP datagrams and TCP streams go into the core; the core's output queue
 * is flushed after every event, and one timer is armed at the core's next
 * deadline. TCP frames are a 4-byte big-endian length followed by the
 * sealed bytes (gsp_frame); one request and one reply per connection.
 * Inbound and outbound connections have their own caps; frame buffers are
 * taken from the memory budget for unauthenticated input (gossip.h).
 */
#include "gossip/gossip.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

/* Datagrams read per system call (recvmmsg): libuv gives each one a 64 KiB
 * slot of the receive buffer; untouched pages cost no memory. */
#define RECV_BATCH 4
#define RECV_SLOT 65536

typedef struct conn conn;

struct gsp_uv {
    uv_loop_t *loop;
    gsp_core *core;
    uv_udp_t udp;
    uv_tcp_t listener;
    uv_timer_t timer;
    int open_handles;
    bool closing;
    conn *conns;
    size_t n_conns;          /* structs alive (closing ones included) */
    size_t n_in, n_out;      /* open, not closing                     */
    uint64_t serial;
    gsp_budget *budget;
    gsp_uv_limits lim;
    gsp_uv_stats st;
    /* inbound read rate: a token bucket of bytes (negative: in debt) */
    int64_t tokens;
    uint64_t tokens_at;
    uv_timer_t resume_timer; /* reading again once the bucket refilled */
    uint8_t *rbuf; /* RECV_BATCH * RECV_SLOT bytes (recvmmsg) */
    bool rbuf_busy;
};

struct conn {
    gsp_uv *u;
    conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_write_t write_req;
    int open_handles;
    bool outbound, reported, closing, replying;
    bool paused;             /* inbound: not reading, the rate is spent    */
    size_t unmetered;        /* inbound: first bytes not counted (below)   */
    uint64_t serial;         /* creation order: the lowest is the oldest */
    uint64_t start_ms, last_ms;
    uint64_t req_id;
    gsp_addr peer;
    gsp_addr local;          /* inbound: the address it arrived on        */
    gsp_frame fr;            /* the frame being read                      */
    uint8_t *out;            /* length header + frame being written       */
    size_t out_len;
};

typedef struct udp_send {
    uv_udp_send_t req;
    uint8_t *data;
} udp_send;

static void flush(gsp_uv *u);

void gsp_uv_limits_default(gsp_uv_limits *l)
{
    l->in_max = 64;
    l->in_per_addr = 8;
    l->out_max = 64;
    l->idle_ms = 2000;
    l->request_ms = 10000;
    l->cap_loopback = false;
    l->in_bytes_per_s = 16u << 20;
}

/* ---- address conversion ------------------------------------------------- */

static void to_sockaddr(const gsp_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (a->family == 6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, a->ip, 16);
        s6->sin6_port = htons(a->port);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, a->ip, 4);
        s4->sin_port = htons(a->port);
    }
}

static int from_sockaddr(const struct sockaddr *sa, gsp_addr *a)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         0xff, 0xff};
    memset(a, 0, sizeof(*a));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        a->family = 4;
        memcpy(a->ip, &s4->sin_addr, 4);
        a->port = ntohs(s4->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *ip = (const uint8_t *)&s6->sin6_addr;
        a->port = ntohs(s6->sin6_port);
        if (!memcmp(ip, v4mapped, sizeof(v4mapped))) {
            /* an IPv4 peer on a dual-stack socket: one address, one key */
            a->family = 4;
            memcpy(a->ip, ip + 12, 4);
        } else {
            a->family = 6;
            memcpy(a->ip, ip, 16);
        }
        return 0;
    }
    return -EAFNOSUPPORT;
}

static bool same_ip(const gsp_addr *a, const gsp_addr *b)
{
    return a->family == b->family &&
           !memcmp(a->ip, b->ip, a->family == 6 ? 16 : 4);
}

static bool is_loopback(const gsp_addr *a)
{
    static const uint8_t v6lo[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 0, 0, 0, 1};
    if (a->family == 4) return a->ip[0] == 127;
    return a->family == 6 && !memcmp(a->ip, v6lo, 16);
}

/* ---- the timer ---------------------------------------------------------- */

/* The wall clock for the probe schedule (gsp_core_set_wallclock): read
 * at every timer (a vDSO call), so a step of the clock is taken at once. */
static void set_wallclock(gsp_uv *u)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 && ts.tv_sec > 0)
        gsp_core_set_wallclock(u->core, uv_now(u->loop),
                               (uint64_t)ts.tv_sec * 1000 +
                                   (uint64_t)ts.tv_nsec / 1000000);
}

static void on_timer(uv_timer_t *t)
{
    gsp_uv *u = t->data;
    set_wallclock(u);
    gsp_core_tick(u->core, uv_now(u->loop));
    flush(u);
}

static void rearm(gsp_uv *u)
{
    if (u->closing) return;
    uint64_t now = uv_now(u->loop);
    uint64_t d = gsp_core_next_deadline(u->core);
    uv_timer_start(&u->timer, on_timer, d > now ? d - now : 0, 0);
}

/* ---- connections -------------------------------------------------------- */

static void conn_free_if_done(conn *c)
{
    if (c->open_handles) return;
    gsp_uv *u = c->u;
    if (c->prev) c->prev->next = c->next;
    else u->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    u->n_conns--;
    gsp_frame_free(&c->fr);
    free(c->out);
    free(c);
    if (u->closing && !u->open_handles && !u->conns) {
        gsp_core_free(u->core);
        free(u->rbuf);
        free(u);
    }
}

static void conn_on_close(uv_handle_t *h)
{
    conn *c = h->data;
    c->open_handles--;
    conn_free_if_done(c);
}

/* Closes a connection: its slot and its frame's memory are free at once
 * (the struct itself once libuv is done with the handles). */
static void conn_close(conn *c, bool ok)
{
    if (c->closing) return;
    c->closing = true;
    gsp_uv *u = c->u;
    if (c->outbound) u->n_out--;
    else u->n_in--;
    if (c->outbound && !c->reported && !u->closing) {
        c->reported = true;
        bool done = ok && c->fr.need && c->fr.got == c->fr.need;
        gsp_core_stream_result(u->core, uv_now(u->loop), c->req_id, done,
                               done ? c->fr.buf : NULL,
                               done ? c->fr.need : 0);
    }
    gsp_frame_free(&c->fr);
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    if (c->outbound && !u->closing) flush(u);
}

/* The inbound connection to drop for c: one still reading its request
 * (not c; older than c when c is inbound; holding memory if need_mem), the
 * one that received most of a frame it has not finished, the oldest of
 * those alike. A real peer sends its frame at once, so what a connection
 * holds unfinished is what it costs and what it is worth least: a flood
 * of new connections accepted in one go drops the held ones before a
 * peer's push-pull that is only waiting for its turn to be read. NULL if
 * there is none. */
static conn *pick_victim(gsp_uv *u, const conn *c, bool need_mem)
{
    conn *best = NULL;
    for (conn *x = u->conns; x; x = x->next) {
        if (x == c || x->outbound || x->closing || x->replying) continue;
        if (c && !c->outbound && x->serial > c->serial) continue;
        if (need_mem && !x->fr.cap) continue;
        size_t got = x->fr.hdr_got + x->fr.got;
        size_t bgot = best ? best->fr.hdr_got + best->fr.got : 0;
        if (!best || got > bgot || (got == bgot && x->serial < best->serial))
            best = x;
    }
    return best;
}

static void conn_on_timeout(uv_timer_t *t)
{
    conn *c = t->data;
    gsp_uv *u = c->u;
    if (!c->outbound && !c->replying) {
        uint64_t now = uv_now(u->loop);
        uint64_t d1 = c->start_ms + u->lim.request_ms;
        uint64_t d2 = c->last_ms + u->lim.idle_ms;
        uint64_t d = d1 < d2 ? d1 : d2;
        if (now < d) { /* bytes arrived meanwhile: not idle yet */
            uv_timer_start(&c->timer, conn_on_timeout, d - now, 0);
            return;
        }
    }
    if (!c->outbound) u->st.in_timeouts++;
    conn_close(c, false);
}

static conn *conn_new(gsp_uv *u, bool outbound)
{
    conn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->u = u;
    c->outbound = outbound;
    if (uv_tcp_init(u->loop, &c->tcp)) {
        free(c);
        return NULL;
    }
    c->tcp.data = c;
    uv_timer_init(u->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    c->serial = ++u->serial;
    c->start_ms = c->last_ms = uv_now(u->loop);
    gsp_frame_init(&c->fr, gsp_core_config(u->core)->max_stream_bytes,
                   u->budget);
    c->next = u->conns;
    if (u->conns) u->conns->prev = c;
    u->conns = c;
    u->n_conns++;
    if (outbound) u->n_out++;
    else u->n_in++;
    return c;
}

/* ---- the inbound read rate ----------------------------------------------- */

/* Burst: a quarter second's worth, at least 64 KiB. */
static int64_t bucket_max(const gsp_uv *u)
{
    int64_t b = (int64_t)u->lim.in_bytes_per_s / 4;
    return b < 65536 ? 65536 : b;
}

static void refill(gsp_uv *u)
{
    uint64_t now = uv_now(u->loop);
    if (now > u->tokens_at)
        u->tokens += (int64_t)((now - u->tokens_at) * u->lim.in_bytes_per_s /
                               1000);
    if (u->tokens > bucket_max(u)) u->tokens = bucket_max(u);
    u->tokens_at = now;
}

static void on_resume(uv_timer_t *t);

/* Arms the resume timer for when the bucket is out of debt. */
static void arm_resume(gsp_uv *u)
{
    if (u->closing || uv_is_active((uv_handle_t *)&u->resume_timer)) return;
    uint64_t ms = 1;
    if (u->tokens < 0)
        ms = ((uint64_t)-u->tokens * 1000 + u->lim.in_bytes_per_s - 1) /
             u->lim.in_bytes_per_s;
    uv_timer_start(&u->resume_timer, on_resume, ms ? ms : 1, 0);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);

static void on_resume(uv_timer_t *t)
{
    gsp_uv *u = t->data;
    refill(u);
    if (u->tokens <= 0) {
        arm_resume(u);
        return;
    }
    uint64_t now = uv_now(u->loop);
    for (conn *c = u->conns; c; c = c->next) {
        if (!c->paused || c->closing) continue;
        c->paused = false;
        c->last_ms = now; /* the pause was ours, not the peer's silence */
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read))
            conn_close(c, false);
    }
}

/* Counts n bytes read on an inbound connection; with pause, stops reading
 * on it while the bucket is in debt (the kernel's buffers then push back
 * on the peer). A connection's first UNMETERED bytes are not counted: a
 * TCP probe or a small push-pull gets through at once even while held
 * connections keep the bucket empty. */
#define UNMETERED 4096
static void spend(conn *c, size_t n, bool pause)
{
    gsp_uv *u = c->u;
    size_t free_part = n < c->unmetered ? n : c->unmetered;
    c->unmetered -= free_part;
    n -= free_part;
    refill(u);
    u->tokens -= (int64_t)n;
    if (u->tokens >= 0 || !pause) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->paused = true;
    u->st.in_throttled++;
    arm_resume(u);
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn *c = h->data;
    gsp_uv *u = c->u;
    uint8_t *p = NULL;
    size_t room = 0;
    (void)hint;
    int rc = gsp_frame_space(&c->fr, &p, &room);
    while (rc == -ENOBUFS) {
        /* the budget is spent: older readers give theirs back first */
        conn *v = pick_victim(u, c, true);
        if (!v) break;
        u->st.in_evicted++;
        conn_close(v, false);
        rc = gsp_frame_space(&c->fr, &p, &room);
    }
    if (rc) {
        if (rc == -ENOBUFS) u->st.budget_refused++;
        buf->base = NULL;
        buf->len = 0; /* libuv reports UV_ENOBUFS: conn_read closes */
        return;
    }
    buf->base = (char *)p;
    /* at most 64 KiB a read: connections take turns, and a read over the
     * rate overshoots it by little */
    buf->len = room < 65536 ? room : 65536;
}

static void on_written(uv_write_t *req, int status);

static void conn_frame_done(conn *c)
{
    gsp_uv *u = c->u;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (c->outbound) {
        conn_close(c, true);
        return;
    }
    uint8_t *reply = NULL;
    size_t rlen = 0;
    gsp_core_stream_request(u->core, uv_now(u->loop), &c->peer,
                            c->local.family ? &c->local : NULL, c->fr.buf,
                            c->fr.need, &reply, &rlen);
    gsp_frame_free(&c->fr); /* opened (or refused): the budget's again */
    flush(u);
    if (!reply) {
        conn_close(c, true);
        return;
    }
    c->out = malloc(rlen + 4);
    if (!c->out) {
        free(reply);
        conn_close(c, false);
        return;
    }
    c->out[0] = (uint8_t)(rlen >> 24);
    c->out[1] = (uint8_t)(rlen >> 16);
    c->out[2] = (uint8_t)(rlen >> 8);
    c->out[3] = (uint8_t)rlen;
    memcpy(c->out + 4, reply, rlen);
    free(reply);
    c->out_len = rlen + 4;
    c->replying = true;
    uv_timer_start(&c->timer, conn_on_timeout, u->lim.request_ms, 0);
    uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_written))
        conn_close(c, false);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;
    (void)buf;
    if (c->closing) return;
    if (nread < 0) {
        conn_close(c, false);
        return;
    }
    if (nread == 0) return;
    c->last_ms = uv_now(c->u->loop);
    int rc = gsp_frame_commit(&c->fr, (size_t)nread);
    if (rc == 1) {
        if (!c->outbound) spend(c, (size_t)nread, false);
        conn_frame_done(c);
    } else if (rc < 0) {
        if (rc == GSP_ETOOBIG) c->u->st.frames_too_big++;
        conn_close(c, false);
    } else if (!c->outbound) {
        spend(c, (size_t)nread, true);
    }
}

static void on_written(uv_write_t *req, int status)
{
    conn *c = req->data;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c, false);
        return;
    }
    if (c->outbound) {
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read))
            conn_close(c, false);
    } else {
        conn_close(c, true);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (status < 0 || c->closing) {
        conn_close(c, false);
        return;
    }
    c->write_req.data = c;
    uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_written))
        conn_close(c, false);
}

static void start_stream(gsp_uv *u, gsp_out *o)
{
    conn *c = u->n_out < u->lim.out_max ? conn_new(u, true) : NULL;
    if (!c) {
        if (u->n_out >= u->lim.out_max) u->st.out_refused++;
        free(o->data);
        gsp_core_stream_result(u->core, uv_now(u->loop), o->req_id, false,
                               NULL, 0);
        return;
    }
    c->req_id = o->req_id;
    c->peer = o->addr;
    c->out = malloc(o->len + 4);
    if (!c->out) {
        free(o->data);
        conn_close(c, false);
        return;
    }
    c->out[0] = (uint8_t)(o->len >> 24);
    c->out[1] = (uint8_t)(o->len >> 16);
    c->out[2] = (uint8_t)(o->len >> 8);
    c->out[3] = (uint8_t)o->len;
    memcpy(c->out + 4, o->data, o->len);
    c->out_len = o->len + 4;
    free(o->data);
    struct sockaddr_storage ss;
    to_sockaddr(&o->addr, &ss);
    c->connect_req.data = c;
    uv_timer_start(&c->timer, conn_on_timeout,
                   o->timeout_ms ? o->timeout_ms : 5000, 0);
    if (uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss,
                       on_connect))
        conn_close(c, false);
}

/* Inbound connections from the same IP as c, c not counted. */
static size_t from_same_ip(const gsp_uv *u, const conn *c)
{
    size_t n = 0;
    for (const conn *x = u->conns; x; x = x->next)
        if (x != c && !x->outbound && !x->closing && same_ip(&x->peer, &c->peer))
            n++;
    return n;
}

static void on_accept(uv_stream_t *server, int status)
{
    gsp_uv *u = server->data;
    if (status < 0) return;
    conn *c = conn_new(u, false);
    if (!c) {
        /* out of memory: accept and drop at once */
        uv_tcp_t *tmp = malloc(sizeof(*tmp));
        if (tmp && uv_tcp_init(u->loop, tmp) == 0) {
            if (uv_accept(server, (uv_stream_t *)tmp) == 0) {}
            uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
        } else {
            free(tmp);
        }
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
        conn_close(c, false);
        return;
    }
    u->st.in_accepted++;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        from_sockaddr((struct sockaddr *)&ss, &c->peer);
    len = sizeof(ss);
    if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        from_sockaddr((struct sockaddr *)&ss, &c->local);
    /* per address first: a capped address must not evict anyone */
    if ((u->lim.cap_loopback || !is_loopback(&c->peer)) &&
        from_same_ip(u, c) >= u->lim.in_per_addr) {
        u->st.in_refused_addr++;
        conn_close(c, false);
        return;
    }
    if (u->n_in > u->lim.in_max) {
        conn *v = pick_victim(u, c, false);
        if (!v) {
            u->st.in_refused_full++;
            conn_close(c, false);
            return;
        }
        u->st.in_evicted++;
        conn_close(v, false);
    }
    c->write_req.data = c;
    c->unmetered = UNMETERED;
    uv_timer_start(&c->timer, conn_on_timeout,
                   u->lim.idle_ms < u->lim.request_ms ? u->lim.idle_ms
                                                      : u->lim.request_ms,
                   0);
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read))
        conn_close(c, false);
}

/* ---- UDP ---------------------------------------------------------------- */

static void udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    gsp_uv *u = h->data;
    if (u->rbuf_busy) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    u->rbuf_busy = true;
    buf->base = (char *)u->rbuf;
    buf->len = RECV_BATCH * RECV_SLOT;
}

static void udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                     const struct sockaddr *addr, unsigned flags)
{
    gsp_uv *u = h->data;
    /* with recvmmsg each datagram comes as a chunk of the buffer, and the
     * buffer itself once more at the end (UV_UDP_MMSG_FREE) */
    if (!(flags & UV_UDP_MMSG_CHUNK) && buf->base == (char *)u->rbuf)
        u->rbuf_busy = false;
    if (nread <= 0 || !addr || (flags & UV_UDP_PARTIAL)) return;
    gsp_addr from;
    if (from_sockaddr(addr, &from)) return;
    gsp_core_recv(u->core, uv_now(u->loop), &from, (const uint8_t *)buf->base,
                  (size_t)nread);
    flush(u);
}

static void udp_sent(uv_udp_send_t *req, int status)
{
    udp_send *s = (udp_send *)req;
    free(s->data);
    free(s);
}

static void send_udp(gsp_uv *u, gsp_out *o)
{
    struct sockaddr_storage ss;
    to_sockaddr(&o->addr, &ss);
    uv_buf_t b = uv_buf_init((char *)o->data, (unsigned)o->len);
    int rc = uv_udp_try_send(&u->udp, &b, 1, (struct sockaddr *)&ss);
    if (rc == UV_EAGAIN) {
        udp_send *s = malloc(sizeof(*s));
        if (s) {
            s->data = o->data;
            if (uv_udp_send(&s->req, &u->udp, &b, 1, (struct sockaddr *)&ss,
                            udp_sent) == 0)
                return;
            free(s);
        }
    }
    free(o->data);
}

/* ---- glue --------------------------------------------------------------- */

static void flush(gsp_uv *u)
{
    if (u->closing) return;
    gsp_out o;
    while (gsp_core_pop_out(u->core, &o)) {
        if (o.kind == GSP_OUT_UDP)
            send_udp(u, &o);
        else
            start_stream(u, &o);
    }
    rearm(u);
}

int gsp_uv_start(gsp_uv **out, uv_loop_t *loop, gsp_core *core,
                 const gsp_addr *bind_addr)
{
    *out = NULL;
    gsp_uv *u = calloc(1, sizeof(*u));
    if (!u) return -ENOMEM;
    u->loop = loop;
    u->core = core;
    gsp_uv_limits_default(&u->lim);
    u->rbuf = malloc(RECV_BATCH * RECV_SLOT);
    if (!u->rbuf) {
        free(u);
        return -ENOMEM;
    }
    struct sockaddr_storage ss;
    to_sockaddr(bind_addr, &ss);
    int rc;
    if ((rc = uv_udp_init_ex(loop, &u->udp, AF_UNSPEC | UV_UDP_RECVMMSG))) {
        free(u->rbuf);
        free(u);
        return rc;
    }
    u->udp.data = u;
    u->open_handles++;
    uv_tcp_init(loop, &u->listener);
    u->listener.data = u;
    u->open_handles++;
    uv_timer_init(loop, &u->timer);
    u->timer.data = u;
    u->open_handles++;
    uv_timer_init(loop, &u->resume_timer);
    u->resume_timer.data = u;
    u->open_handles++;
    u->tokens = bucket_max(u);
    u->tokens_at = uv_now(loop);
    set_wallclock(u);
    if ((rc = uv_udp_bind(&u->udp, (struct sockaddr *)&ss, 0)) ||
        (rc = uv_tcp_bind(&u->listener, (struct sockaddr *)&ss, 0)) ||
        /* the kernel's whole accept queue: a peer's connection is not
         * refused while a flood of others waits to be accepted (and
         * dropped) */
        (rc = uv_listen((uv_stream_t *)&u->listener, SOMAXCONN, on_accept)) ||
        (rc = uv_udp_recv_start(&u->udp, udp_alloc, udp_recv))) {
        u->core = NULL; /* the caller keeps the core on failure */
        gsp_uv_close(u);
        return rc;
    }
    *out = u;
    flush(u);
    return 0;
}

gsp_core *gsp_uv_core(gsp_uv *u)
{
    return u->core;
}

int gsp_uv_set_limits(gsp_uv *u, const gsp_uv_limits *l)
{
    if (!l->in_max || !l->in_per_addr || !l->out_max || !l->idle_ms ||
        !l->request_ms || !l->in_bytes_per_s)
        return -EINVAL;
    u->lim = *l;
    refill(u); /* a smaller burst applies at once */
    return 0;
}

void gsp_uv_set_budget(gsp_uv *u, gsp_budget *b)
{
    u->budget = b;
}

void gsp_uv_get_stats(const gsp_uv *u, gsp_uv_stats *out)
{
    *out = u->st;
    out->in_open = u->n_in;
    out->out_open = u->n_out;
}

void gsp_uv_kick(gsp_uv *u)
{
    flush(u);
}

uint64_t gsp_uv_now(gsp_uv *u)
{
    return uv_now(u->loop);
}

static void main_on_close(uv_handle_t *h)
{
    gsp_uv *u = h->data;
    u->open_handles--;
    if (!u->open_handles && !u->conns) {
        gsp_core_free(u->core);
        free(u->rbuf);
        free(u);
    }
}

void gsp_uv_close(gsp_uv *u)
{
    if (!u || u->closing) return;
    u->closing = true;
    uv_timer_stop(&u->timer);
    for (conn *c = u->conns, *n; c; c = n) {
        n = c->next;
        conn_close(c, false);
    }
    uv_close((uv_handle_t *)&u->udp, main_on_close);
    uv_close((uv_handle_t *)&u->listener, main_on_close);
    uv_close((uv_handle_t *)&u->timer, main_on_close);
    uv_close((uv_handle_t *)&u->resume_timer, main_on_close);
}
