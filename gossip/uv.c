/*
 * uv.c - the libuv adapter: the only place in gossip/ that knows libuv.
 *
 * UDP datagrams and TCP streams go into the core; the core's output queue
 * is flushed after every event, and one timer is armed at the core's next
 * deadline. TCP frames are a 4-byte big-endian length followed by the
 * sealed bytes; one request and one reply per connection.
 */
#include "gossip/gossip.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define CONN_MAX 128
#define INBOUND_TIMEOUT_MS 10000

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
    size_t n_conns;
    uint8_t rbuf[65536];
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
    bool outbound, reported, closing;
    uint64_t req_id;
    gsp_addr peer;
    uint8_t hdr[4];
    size_t hdr_got;
    uint8_t *in;
    size_t in_need, in_got;
    uint8_t *out; /* length header + frame */
    size_t out_len;
};

typedef struct udp_send {
    uv_udp_send_t req;
    uint8_t *data;
} udp_send;

static void flush(gsp_uv *u);

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
        a->family = 6;
        memcpy(a->ip, &s6->sin6_addr, 16);
        a->port = ntohs(s6->sin6_port);
        return 0;
    }
    return -EAFNOSUPPORT;
}

/* ---- the timer ---------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    gsp_uv *u = t->data;
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
    free(c->in);
    free(c->out);
    free(c);
    if (u->closing && !u->open_handles && !u->conns) {
        gsp_core_free(u->core);
        free(u);
    }
}

static void conn_on_close(uv_handle_t *h)
{
    conn *c = h->data;
    c->open_handles--;
    conn_free_if_done(c);
}

static void conn_close(conn *c, bool ok)
{
    if (c->closing) return;
    c->closing = true;
    gsp_uv *u = c->u;
    if (c->outbound && !c->reported && !u->closing) {
        c->reported = true;
        gsp_core_stream_result(u->core, uv_now(u->loop), c->req_id, ok,
                               ok ? c->in : NULL, ok ? c->in_need : 0);
    }
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    if (!u->closing) {
        flush(u);
    }
}

static void conn_on_timeout(uv_timer_t *t)
{
    conn_close(t->data, false);
}

static conn *conn_new(gsp_uv *u, bool outbound)
{
    if (u->n_conns >= CONN_MAX) return NULL;
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
    c->next = u->conns;
    if (u->conns) u->conns->prev = c;
    u->conns = c;
    u->n_conns++;
    return c;
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    conn *c = h->data;
    if (c->hdr_got < 4) {
        buf->base = (char *)c->hdr + c->hdr_got;
        buf->len = 4 - c->hdr_got;
    } else {
        buf->base = (char *)c->in + c->in_got;
        buf->len = c->in_need - c->in_got;
    }
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
    gsp_core_stream_request(u->core, uv_now(u->loop), &c->peer, c->in,
                            c->in_need, &reply, &rlen);
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
    uv_buf_t b = uv_buf_init((char *)c->out, (unsigned)c->out_len);
    if (uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &b, 1, on_written))
        conn_close(c, false);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;
    if (nread < 0) {
        conn_close(c, false);
        return;
    }
    if (nread == 0) return;
    if (c->hdr_got < 4) {
        c->hdr_got += (size_t)nread;
        if (c->hdr_got < 4) return;
        size_t len = ((size_t)c->hdr[0] << 24) | ((size_t)c->hdr[1] << 16) |
                     ((size_t)c->hdr[2] << 8) | c->hdr[3];
        /* bound before allocating: a stream frame is at most the core's
         * configured maximum (4 MiB by default) */
        if (len == 0 || len > (64u << 20)) {
            conn_close(c, false);
            return;
        }
        c->in = malloc(len);
        if (!c->in) {
            conn_close(c, false);
            return;
        }
        c->in_need = len;
        c->in_got = 0;
        return;
    }
    c->in_got += (size_t)nread;
    if (c->in_got == c->in_need) conn_frame_done(c);
}

static void on_written(uv_write_t *req, int status)
{
    conn *c = req->data;
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
    conn *c = conn_new(u, true);
    if (!c) {
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

static void on_accept(uv_stream_t *server, int status)
{
    gsp_uv *u = server->data;
    if (status < 0) return;
    conn *c = conn_new(u, false);
    if (!c) {
        /* over the cap: accept and drop at once */
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
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        from_sockaddr((struct sockaddr *)&ss, &c->peer);
    c->write_req.data = c;
    uv_timer_start(&c->timer, conn_on_timeout, INBOUND_TIMEOUT_MS, 0);
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
    buf->len = sizeof(u->rbuf);
}

static void udp_recv(uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                     const struct sockaddr *addr, unsigned flags)
{
    gsp_uv *u = h->data;
    if (buf->base == (char *)u->rbuf) u->rbuf_busy = false;
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
    struct sockaddr_storage ss;
    to_sockaddr(bind_addr, &ss);
    int rc;
    if ((rc = uv_udp_init(loop, &u->udp))) {
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
    if ((rc = uv_udp_bind(&u->udp, (struct sockaddr *)&ss, 0)) ||
        (rc = uv_tcp_bind(&u->listener, (struct sockaddr *)&ss, 0)) ||
        (rc = uv_listen((uv_stream_t *)&u->listener, 128, on_accept)) ||
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
}
