/*
 * ctl.c - the control socket of pmgclusterd (protocol: membership.h).
 *
 * A Unix stream socket (uv_pipe) created mode 0600. Each client sends one
 * request line, gets one JSON answer, and is closed. Only root and the
 * daemon's own uid are served (SO_PEERCRED). At most PMM_CTL_CLIENTS_MAX
 * clients at once; each has PMM_CTL_IDLE_MS to send its request (reset by
 * activity) and to take its answer.
 *
 * Requests are parsed and validated (pmm_ctl_parse_request, membership/
 * command.c) before the handler sees them. The handler answers asynchronously through its
 * pmm_ctl_req: while it has not, the client's one timer is the pending cap
 * (pending_ms) instead of the idle timeout. A pmm_ctl_req outlives its
 * client and the server: whoever goes first detaches it (req->cl = NULL),
 * and pmm_ctl_reply then only frees it.
 */
#define _GNU_SOURCE /* struct ucred */
#include "daemon/daemon.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

/* ---- server --------------------------------------------------------------- */

typedef struct ctl_client ctl_client;

struct pmm_ctl {
    uv_loop_t *loop;
    uv_pipe_t server;
    char path[PMM_SOCKET_PATH_MAX + 1];
    ino_t ino;
    dev_t dev;
    pmm_ctl_handler handler;
    void *ud;
    ctl_client *clients;
    size_t n_clients;
    bool closing;
    bool server_closed;
    uid_t uid;
    uint64_t pending_ms;
};

/* A request handed to the handler. Lives until pmm_ctl_reply, which may
 * come after its client is gone (cl == NULL) or the server was freed: it
 * never points at the server itself. */
typedef struct ctl_req {
    pmm_ctl_req base; /* first: the handler sees &base */
    ctl_client *cl;
} ctl_req;

struct ctl_client {
    pmm_ctl *ctl;
    uv_pipe_t pipe;
    uv_timer_t timer;
    uv_write_t wreq;
    int open_handles;
    bool closing;
    bool answered;      /* request complete: no more reading */
    ctl_req *req;       /* waiting for the handler's answer */
    uid_t uid;
    size_t len;
    char req_buf[PMM_CTL_REQ_MAX];
    pmm_buf reply;
    ctl_client *prev, *next;
};

static void ctl_maybe_free(pmm_ctl *c)
{
    if (c->closing && c->server_closed && c->clients == NULL)
        free(c);
}

/* The client no longer waits for req: a later reply only frees it. */
static void client_detach_req(ctl_client *cl)
{
    if (cl->req != NULL) {
        cl->req->cl = NULL;
        cl->req = NULL;
    }
}

static void client_closed_cb(uv_handle_t *h)
{
    ctl_client *cl = h->data;
    pmm_ctl *c = cl->ctl;

    if (--cl->open_handles > 0)
        return;
    if (cl->prev != NULL)
        cl->prev->next = cl->next;
    else
        c->clients = cl->next;
    if (cl->next != NULL)
        cl->next->prev = cl->prev;
    c->n_clients--;
    pmm_buf_free(&cl->reply);
    explicit_bzero(cl->req_buf, sizeof(cl->req_buf));
    free(cl);
    ctl_maybe_free(c);
}

static void client_close(ctl_client *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    client_detach_req(cl);
    uv_close((uv_handle_t *)&cl->pipe, client_closed_cb);
    uv_close((uv_handle_t *)&cl->timer, client_closed_cb);
}

static void client_answer(ctl_client *cl);

static void client_error(ctl_client *cl, const char *msg)
{
    pmm_buf_reset(&cl->reply);
    pmm_ctl_error_reply(&cl->reply, msg);
    client_answer(cl);
}

static void client_timer_cb(uv_timer_t *t)
{
    ctl_client *cl = t->data;

    if (cl->req != NULL) {
        pmm_log(PMM_LOG_WARN, "ctl", "request unanswered for %llu ms, "
                "client told it timed out",
                (unsigned long long)cl->ctl->pending_ms);
        client_detach_req(cl);
        client_error(cl, "timed out");
        return;
    }
    pmm_log(PMM_LOG_DEBUG, "ctl", "client idle for %d ms, dropped",
            PMM_CTL_IDLE_MS);
    client_close(cl);
}

static void client_written_cb(uv_write_t *req, int status)
{
    ctl_client *cl = req->data;

    if (status != 0 && status != UV_ECANCELED)
        pmm_log(PMM_LOG_DEBUG, "ctl", "reply not delivered: %s",
                uv_strerror(status));
    client_close(cl);
}

/* Writes cl->reply (or "internal error" when it is empty or failed), then
 * closes. The idle timer bounds a client that does not read. */
static void client_answer(ctl_client *cl)
{
    uv_buf_t b;
    int rc;

    if (cl->closing)
        return;
    cl->answered = true;
    uv_read_stop((uv_stream_t *)&cl->pipe);
    if (cl->reply.err != 0 || cl->reply.len == 0) {
        pmm_buf_reset(&cl->reply);
        pmm_ctl_error_reply(&cl->reply, "internal error");
        if (cl->reply.err != 0) {
            client_close(cl);
            return;
        }
    }
    b = uv_buf_init(cl->reply.p, (unsigned)cl->reply.len);
    cl->wreq.data = cl;
    uv_timer_start(&cl->timer, client_timer_cb, PMM_CTL_IDLE_MS, 0);
    rc = uv_write(&cl->wreq, (uv_stream_t *)&cl->pipe, &b, 1,
                  client_written_cb);
    if (rc != 0)
        client_close(cl);
}

/* req->answer of every request this server hands out (pmm_ctl_reply) */
static void ctl_answer(pmm_ctl_req *base, const char *json, size_t len)
{
    ctl_req *req = (ctl_req *)base;
    ctl_client *cl = req->cl;

    free(req);
    if (cl == NULL)
        return; /* client gone, timed out, or server closed */
    cl->req = NULL;
    pmm_buf_reset(&cl->reply);
    if (json != NULL && len > 0) {
        pmm_buf_add(&cl->reply, json, len);
        if (json[len - 1] != '\n')
            pmm_buf_add(&cl->reply, "\n", 1);
    }
    client_answer(cl);
}

static void client_request(ctl_client *cl, size_t line_len)
{
    pmm_ctl *c = cl->ctl;
    pmm_json *args = NULL;
    const char *cmd = NULL;
    char why[PMM_CTL_ERR_MAX];
    ctl_req *req;
    int rc;

    cl->answered = true;
    uv_read_stop((uv_stream_t *)&cl->pipe);
    rc = pmm_ctl_parse_request(cl->req_buf, line_len, &cmd, &args, why,
                               sizeof(why));
    /* the line may hold a password: keep no copy of it */
    explicit_bzero(cl->req_buf, sizeof(cl->req_buf));
    if (rc != 0) {
        pmm_log(PMM_LOG_DEBUG, "ctl", "bad request from uid %ld: %s",
                (long)cl->uid, why);
        client_error(cl, why);
        return;
    }
    req = calloc(1, sizeof(*req));
    if (req == NULL) {
        pmm_json_free(args);
        client_error(cl, "out of memory");
        return;
    }
    /* the questions asked in loops (a join's wait asks four times a
     * second) only at debug level */
    pmm_log(strcmp(cmd, "status") == 0 || strcmp(cmd, "ping") == 0 ||
                    strcmp(cmd, "wait-sync") == 0
                ? PMM_LOG_DEBUG : PMM_LOG_INFO,
            "ctl", "%s requested by uid %ld", cmd, (long)cl->uid);
    req->base.answer = ctl_answer;
    req->cl = cl;
    cl->req = req;
    uv_timer_start(&cl->timer, client_timer_cb, c->pending_ms, 0);
    /* may answer (and free req) now */
    c->handler(c->ud, &req->base, cmd, args);
    pmm_json_free(args);
}

static void client_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ctl_client *cl = h->data;

    /* never zero-sized: one spare byte lets us notice an overlong line */
    if (cl->len >= sizeof(cl->req_buf)) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init(cl->req_buf + cl->len,
                       (unsigned)(sizeof(cl->req_buf) - cl->len));
}

static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    ctl_client *cl = s->data;
    char *nl;

    if (cl->answered || cl->closing)
        return;
    if (nread == UV_ENOBUFS) {
        client_error(cl, "request too long");
        return;
    }
    if (nread == UV_EOF) {
        /* the request may end at EOF instead of '\n' */
        if (cl->len == 0)
            client_close(cl);
        else
            client_request(cl, cl->len);
        return;
    }
    if (nread < 0) {
        client_close(cl);
        return;
    }
    if (nread == 0)
        return;
    uv_timer_start(&cl->timer, client_timer_cb, PMM_CTL_IDLE_MS, 0);
    nl = memchr(cl->req_buf + cl->len, '\n', (size_t)nread);
    cl->len += (size_t)nread;
    if (nl != NULL) {
        client_request(cl, (size_t)(nl - cl->req_buf) + 1);
        return;
    }
    if (cl->len >= sizeof(cl->req_buf)) {
        explicit_bzero(cl->req_buf, sizeof(cl->req_buf));
        client_error(cl, "request too long");
    }
}

static bool peer_allowed(ctl_client *cl)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) != 0)
        return false;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 ||
        len != sizeof(cr))
        return false;
    cl->uid = cr.uid;
    return cr.uid == 0 || cr.uid == cl->ctl->uid;
}

static void server_conn_cb(uv_stream_t *server, int status)
{
    pmm_ctl *c = server->data;
    ctl_client *cl;

    if (status != 0) {
        pmm_log(PMM_LOG_WARN, "ctl", "accept: %s", uv_strerror(status));
        return;
    }
    cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        pmm_log(PMM_LOG_ERROR, "ctl", "out of memory");
        return;
    }
    cl->ctl = c;
    cl->uid = (uid_t)-1;
    pmm_buf_init(&cl->reply, PMM_CTL_REPLY_MAX);
    uv_pipe_init(c->loop, &cl->pipe, 0);
    uv_timer_init(c->loop, &cl->timer);
    cl->pipe.data = cl;
    cl->timer.data = cl;
    cl->open_handles = 2;
    cl->next = c->clients;
    if (c->clients != NULL)
        c->clients->prev = cl;
    c->clients = cl;
    c->n_clients++;

    if (uv_accept(server, (uv_stream_t *)&cl->pipe) != 0) {
        client_close(cl);
        return;
    }
    if (c->n_clients > PMM_CTL_CLIENTS_MAX) {
        pmm_log(PMM_LOG_WARN, "ctl", "too many clients, connection dropped");
        client_close(cl);
        return;
    }
    uv_timer_start(&cl->timer, client_timer_cb, PMM_CTL_IDLE_MS, 0);
    if (!peer_allowed(cl)) {
        pmm_log(PMM_LOG_WARN, "ctl", "refused client with uid %ld",
                cl->uid == (uid_t)-1 ? -1L : (long)cl->uid);
        client_error(cl, "permission denied");
        return;
    }
    if (uv_read_start((uv_stream_t *)&cl->pipe, client_alloc_cb,
                      client_read_cb) != 0)
        client_close(cl);
}

/* A socket file at path: in use by a live daemon (-EADDRINUSE), stale
 * (removed, 0), absent (0), or something else (-EEXIST). Blocking; only
 * used at startup. */
static int clear_stale(const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EEXIST;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    close(fd);
    if (rc == 0)
        return -EADDRINUSE;
    if (errno != ECONNREFUSED && errno != ENOENT)
        return -errno;
    if (unlink(path) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

static void server_closed_cb(uv_handle_t *h)
{
    pmm_ctl *c = h->data;

    c->server_closed = true;
    ctl_maybe_free(c);
}

int pmm_ctl_start(pmm_ctl **out, uv_loop_t *loop, const char *path,
                  pmm_ctl_handler handler, void *ud, char *err,
                  size_t errlen)
{
    char dir[PMM_SOCKET_PATH_MAX + 1];
    struct stat st;
    pmm_ctl *c;
    mode_t old;
    int rc;

    if (path == NULL || path[0] != '/' || strlen(path) > PMM_SOCKET_PATH_MAX)
        return pmm_errf(err, errlen, -EINVAL,
                    "control socket path must be absolute and at most %d "
                    "bytes", PMM_SOCKET_PATH_MAX);
    snprintf(dir, sizeof(dir), "%s", path);
    rc = pmm_mkdir_p(dirname(dir), 0755);
    if (rc != 0) {
        snprintf(dir, sizeof(dir), "%s", path);
        return pmm_errf(err, errlen, rc, "%s: %s", dirname(dir), strerror(-rc));
    }
    rc = clear_stale(path);
    if (rc == -EADDRINUSE)
        return pmm_errf(err, errlen, rc,
                    "%s: another pmgclusterd is already listening there",
                    path);
    if (rc == -EEXIST)
        return pmm_errf(err, errlen, rc, "%s: exists and is not a socket", path);
    if (rc != 0)
        return pmm_errf(err, errlen, rc, "%s: %s", path, strerror(-rc));

    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return pmm_errf(err, errlen, -ENOMEM, "out of memory");
    c->loop = loop;
    c->handler = handler;
    c->ud = ud;
    c->uid = geteuid();
    c->pending_ms = PMM_CTL_PENDING_MS;
    snprintf(c->path, sizeof(c->path), "%s", path);
    rc = uv_pipe_init(loop, &c->server, 0);
    if (rc != 0) {
        free(c);
        return pmm_errf(err, errlen, rc, "%s: %s", path, uv_strerror(rc));
    }
    c->server.data = c;
    c->closing = true; /* until listening: a close frees c */
    old = umask(0177);
    rc = uv_pipe_bind(&c->server, path);
    umask(old);
    if (rc == 0 && chmod(path, 0600) != 0)
        rc = -errno;
    if (rc == 0 && stat(path, &st) == 0) {
        c->ino = st.st_ino;
        c->dev = st.st_dev;
    }
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&c->server, 16, server_conn_cb);
    if (rc != 0) {
        pmm_errf(err, errlen, rc, "%s: %s", path, uv_strerror(rc));
        if (c->ino != 0)
            unlink(path);
        uv_close((uv_handle_t *)&c->server, server_closed_cb);
        return rc;
    }
    c->closing = false;
    *out = c;
    return 0;
}

void pmm_ctl_set_pending_timeout_ms(pmm_ctl *c, uint64_t ms)
{
    c->pending_ms = ms;
}

void pmm_ctl_set_peer_uid(pmm_ctl *c, uid_t uid)
{
    c->uid = uid;
}

void pmm_ctl_close(pmm_ctl *c)
{
    struct stat st;

    if (c == NULL || c->closing)
        return;
    c->closing = true;
    /* remove the socket file only if it is still the one we created */
    if (stat(c->path, &st) == 0 && st.st_ino == c->ino && st.st_dev == c->dev)
        unlink(c->path);
    for (ctl_client *cl = c->clients; cl != NULL; cl = cl->next) {
        if (cl->req != NULL) {
            /* waiting for an answer: say why none comes; the handler's
             * later reply only frees its req */
            client_detach_req(cl);
            client_error(cl, "pmgclusterd is shutting down");
        } else {
            client_close(cl);
        }
    }
    uv_close((uv_handle_t *)&c->server, server_closed_cb);
}
