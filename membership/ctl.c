/*
 * ctl.c - the control socket of pmgclusterd (protocol: membership.h).
 *
 * A Unix stream socket (uv_pipe) created mode 0600. Each client sends one
 * request line, gets one JSON answer, and is closed. Only root and the
 * daemon's own uid are served (SO_PEERCRED). At most PMM_CTL_CLIENTS_MAX
 * clients at once; each has PMM_CTL_IDLE_MS to finish, reset by activity.
 */
#define _GNU_SOURCE /* struct ucred */
#include "membership/membership.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

/* ---- request parsing (pure) -------------------------------------------- */

int pmm_ctl_parse_request(const char *buf, size_t len, pmm_ctl_cmd *cmd,
                          const char **why)
{
    static const struct {
        const char *name;
        pmm_ctl_cmd cmd;
    } cmds[] = {{"status", PMM_CTL_STATUS}, {"ping", PMM_CTL_PING}};
    size_t s = 0, e;

    if (len > PMM_CTL_REQ_MAX) {
        *why = "request too long";
        return -E2BIG;
    }
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 || c >= 0x7f) {
            *why = "request contains a control or non-ASCII byte";
            return -EINVAL;
        }
    }
    while (s < len && buf[s] == ' ')
        s++;
    e = len;
    while (e > s && buf[e - 1] == ' ')
        e--;
    if (e == s) {
        *why = "empty request";
        return -EINVAL;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strlen(cmds[i].name) == e - s &&
            memcmp(cmds[i].name, buf + s, e - s) == 0) {
            *cmd = cmds[i].cmd;
            return 0;
        }
    }
    *why = "unknown command";
    return -ENOENT;
}

int pmm_ctl_error_reply(pmm_buf *b, const char *msg)
{
    pmm_buf_puts(b, "{\"ok\":false,\"error\":");
    pmm_json_str(b, msg, strlen(msg));
    return pmm_buf_puts(b, "}\n");
}

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
};

struct ctl_client {
    pmm_ctl *ctl;
    uv_pipe_t pipe;
    uv_timer_t timer;
    uv_write_t wreq;
    int open_handles;
    bool closing;
    bool answered;
    size_t len;
    char req[PMM_CTL_REQ_MAX];
    pmm_buf reply;
    ctl_client *prev, *next;
};

static void ctl_maybe_free(pmm_ctl *c)
{
    if (c->closing && c->server_closed && c->clients == NULL)
        free(c);
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
    free(cl);
    ctl_maybe_free(c);
}

static void client_close(ctl_client *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    uv_close((uv_handle_t *)&cl->pipe, client_closed_cb);
    uv_close((uv_handle_t *)&cl->timer, client_closed_cb);
}

static void client_timeout_cb(uv_timer_t *t)
{
    ctl_client *cl = t->data;

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

static void client_answer(ctl_client *cl)
{
    uv_buf_t b;
    int rc;

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
    uv_timer_again(&cl->timer);
    rc = uv_write(&cl->wreq, (uv_stream_t *)&cl->pipe, &b, 1,
                  client_written_cb);
    if (rc != 0)
        client_close(cl);
}

static void client_error(ctl_client *cl, const char *msg)
{
    pmm_buf_reset(&cl->reply);
    pmm_ctl_error_reply(&cl->reply, msg);
    client_answer(cl);
}

static void client_request(ctl_client *cl, size_t line_len)
{
    pmm_ctl_cmd cmd;
    const char *why = NULL;
    int rc;

    rc = pmm_ctl_parse_request(cl->req, line_len, &cmd, &why);
    if (rc != 0) {
        pmm_log(PMM_LOG_DEBUG, "ctl", "bad request: %s", why);
        client_error(cl, why);
        return;
    }
    pmm_buf_reset(&cl->reply);
    rc = cl->ctl->handler(cl->ctl->ud, cmd, &cl->reply);
    if (rc != 0) {
        pmm_log(PMM_LOG_WARN, "ctl", "request failed: %s", strerror(-rc));
        client_error(cl, "internal error");
        return;
    }
    client_answer(cl);
}

static void client_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ctl_client *cl = h->data;

    /* never zero-sized: one spare byte lets us notice an overlong line */
    if (cl->len >= sizeof(cl->req)) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    *buf = uv_buf_init(cl->req + cl->len, (unsigned)(sizeof(cl->req) - cl->len));
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
    uv_timer_again(&cl->timer);
    nl = memchr(cl->req + cl->len, '\n', (size_t)nread);
    cl->len += (size_t)nread;
    if (nl != NULL) {
        client_request(cl, (size_t)(nl - cl->req) + 1);
        return;
    }
    if (cl->len >= sizeof(cl->req))
        client_error(cl, "request too long");
}

static bool peer_allowed(ctl_client *cl, uid_t *uid_out)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    uv_os_fd_t fd;

    if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) != 0)
        return false;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 ||
        len != sizeof(cr))
        return false;
    *uid_out = cr.uid;
    return cr.uid == 0 || cr.uid == cl->ctl->uid;
}

static void server_conn_cb(uv_stream_t *server, int status)
{
    pmm_ctl *c = server->data;
    ctl_client *cl;
    uid_t uid = (uid_t)-1;

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
    uv_timer_start(&cl->timer, client_timeout_cb, PMM_CTL_IDLE_MS,
                   PMM_CTL_IDLE_MS);
    if (!peer_allowed(cl, &uid)) {
        pmm_log(PMM_LOG_WARN, "ctl", "refused client with uid %ld",
                uid == (uid_t)-1 ? -1L : (long)uid);
        client_error(cl, "permission denied");
        return;
    }
    if (uv_read_start((uv_stream_t *)&cl->pipe, client_alloc_cb,
                      client_read_cb) != 0)
        client_close(cl);
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
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
        return fail(err, errlen, -EINVAL,
                    "control socket path must be absolute and at most %d "
                    "bytes", PMM_SOCKET_PATH_MAX);
    snprintf(dir, sizeof(dir), "%s", path);
    rc = pmm_mkdir_p(dirname(dir), 0755);
    if (rc != 0) {
        snprintf(dir, sizeof(dir), "%s", path);
        return fail(err, errlen, rc, "%s: %s", dirname(dir), strerror(-rc));
    }
    rc = clear_stale(path);
    if (rc == -EADDRINUSE)
        return fail(err, errlen, rc,
                    "%s: another pmgclusterd is already listening there",
                    path);
    if (rc == -EEXIST)
        return fail(err, errlen, rc, "%s: exists and is not a socket", path);
    if (rc != 0)
        return fail(err, errlen, rc, "%s: %s", path, strerror(-rc));

    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return fail(err, errlen, -ENOMEM, "out of memory");
    c->loop = loop;
    c->handler = handler;
    c->ud = ud;
    c->uid = geteuid();
    snprintf(c->path, sizeof(c->path), "%s", path);
    rc = uv_pipe_init(loop, &c->server, 0);
    if (rc != 0) {
        free(c);
        return fail(err, errlen, rc, "%s: %s", path, uv_strerror(rc));
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
        fail(err, errlen, rc, "%s: %s", path, uv_strerror(rc));
        if (c->ino != 0)
            unlink(path);
        uv_close((uv_handle_t *)&c->server, server_closed_cb);
        return rc;
    }
    c->closing = false;
    *out = c;
    return 0;
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
    for (ctl_client *cl = c->clients; cl != NULL; cl = cl->next)
        client_close(cl);
    uv_close((uv_handle_t *)&c->server, server_closed_cb);
}
