/*
 * pmgcm.c - the pmgcm admin tool. Thin: parses the command line, asks the
 * local pmgclusterd over its control socket, prints the answer.
 *
 *   pmgcm [--socket PATH] status [--output-format text|json]
 *   pmgcm keygen
 */
#include "membership/membership.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define IO_TIMEOUT_S 10

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pmgcm [--socket PATH] COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  status [--output-format text|json]\n"
            "          show every cluster node as this node sees it\n"
            "  keygen  print a new random gossip key (for key_file)\n"
            "  help    show this help\n"
            "\n"
            "options:\n"
            "  --socket PATH   pmgclusterd control socket (default $PMGCM_SOCKET\n"
            "                  or " PMM_DEFAULT_SOCKET ")\n"
            "  --version       print the version\n"
            "\n"
            "status STATE: A alive, ? suspect (not yet confirmed dead),\n"
            "D dead, L left the cluster.\n");
}

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "pmgcm: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    usage(stderr);
    return 2;
}

/* "--name VALUE" or "--name=VALUE"; advances *i. 1 = matched, 0 = not,
 * -1 = missing value. */
static int opt_value(int argc, char **argv, int *i, const char *name,
                     const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

static int write_out(const char *s, size_t n)
{
    if (fwrite(s, 1, n, stdout) != n || fflush(stdout) != 0) {
        fprintf(stderr, "pmgcm: cannot write output: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

/* ---- keygen ---------------------------------------------------------------- */

static int cmd_keygen(void)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t key[GSP_KEY_LEN];
    char out[2 * GSP_KEY_LEN + 2];
    int rc = gsp_random(key, sizeof(key));

    if (rc != 0) {
        fprintf(stderr, "pmgcm: cannot generate a key: %s\n",
                gsp_strerror(rc));
        return 1;
    }
    for (size_t i = 0; i < sizeof(key); i++) {
        out[2 * i] = hex[key[i] >> 4];
        out[2 * i + 1] = hex[key[i] & 0xf];
    }
    out[2 * GSP_KEY_LEN] = '\n';
    out[2 * GSP_KEY_LEN + 1] = '\0';
    memset(key, 0, sizeof(key));
    rc = write_out(out, 2 * GSP_KEY_LEN + 1);
    memset(out, 0, sizeof(out));
    return rc;
}

/* ---- talking to the daemon ------------------------------------------------- */

/* Sends one request line and reads the whole answer into b. Prints its own
 * error and returns 1 on failure. */
static int ask_daemon(const char *path, const char *request, pmm_buf *b)
{
    struct sockaddr_un sa;
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    size_t len = strlen(request), off = 0;
    char chunk[65536];
    int fd;

    if (strlen(path) > PMM_SOCKET_PATH_MAX) {
        fprintf(stderr, "pmgcm: socket path too long: %s\n", path);
        return 1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "pmgcm: socket: %s\n", strerror(errno));
        return 1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        const char *hint = "";
        if (e == ENOENT || e == ECONNREFUSED)
            hint = " (is pmgclusterd running?)";
        else if (e == EACCES || e == EPERM)
            hint = " (only root and the daemon's user may ask it)";
        fprintf(stderr, "pmgcm: cannot reach pmgclusterd at %s: %s%s\n", path,
                strerror(e), hint);
        close(fd);
        return 1;
    }
    while (off < len) {
        ssize_t w = send(fd, request + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            break; /* it may have answered already (a refusal): read it */
        if (w < 0) {
            fprintf(stderr, "pmgcm: cannot talk to pmgclusterd at %s: %s\n",
                    path, strerror(errno));
            close(fd);
            return 1;
        }
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK)
                fprintf(stderr,
                        "pmgcm: pmgclusterd at %s did not answer within "
                        "%d s\n", path, IO_TIMEOUT_S);
            else
                fprintf(stderr, "pmgcm: cannot read from pmgclusterd at %s: "
                                "%s\n", path, strerror(e));
            close(fd);
            return 1;
        }
        if (r == 0)
            break;
        if (pmm_buf_add(b, chunk, (size_t)r) != 0) {
            fprintf(stderr, "pmgcm: answer from pmgclusterd is too large\n");
            close(fd);
            return 1;
        }
    }
    close(fd);
    if (b->len == 0) {
        fprintf(stderr, "pmgcm: pmgclusterd at %s closed the connection "
                        "without an answer\n", path);
        return 1;
    }
    return 0;
}

/* Parses the daemon's envelope; returns the document or NULL (error
 * printed). */
static pmm_json *parse_answer(const pmm_buf *b)
{
    pmm_json *doc = NULL;
    const pmm_json *ok;
    char err[256];
    int rc;

    rc = pmm_json_parse(b->p, b->len, &doc, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "pmgcm: bad answer from pmgclusterd: %s\n", err);
        return NULL;
    }
    ok = pmm_json_get(doc, "ok");
    if (ok == NULL || ok->type != PMM_JSON_BOOL) {
        fprintf(stderr, "pmgcm: bad answer from pmgclusterd: no 'ok'\n");
        pmm_json_free(doc);
        return NULL;
    }
    if (!ok->b) {
        const pmm_json *e = pmm_json_get(doc, "error");
        char safe[256];
        size_t i = 0;
        const char *msg = e != NULL && e->type == PMM_JSON_STRING
                              ? e->str : "unknown error";
        for (; msg[i] != '\0' && i + 1 < sizeof(safe); i++)
            safe[i] = ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
                          ? '?' : msg[i];
        safe[i] = '\0';
        fprintf(stderr, "pmgcm: pmgclusterd: %s\n", safe);
        pmm_json_free(doc);
        return NULL;
    }
    return doc;
}

static int cmd_status(const char *sock, bool json)
{
    pmm_buf in, out;
    pmm_json *doc;
    pmm_status_row *rows = NULL;
    size_t n = 0;
    char err[256];
    int rc = 1;

    pmm_buf_init(&in, PMM_CTL_REPLY_MAX);
    pmm_buf_init(&out, PMM_CTL_REPLY_MAX * 2);
    if (ask_daemon(sock, "status\n", &in) != 0)
        goto out;
    doc = parse_answer(&in);
    if (doc == NULL)
        goto out;
    if (pmm_status_from_json(pmm_json_get(doc, "members"), &rows, &n, err,
                             sizeof(err)) != 0) {
        fprintf(stderr, "pmgcm: bad answer from pmgclusterd: %s\n", err);
        pmm_json_free(doc);
        goto out;
    }
    pmm_json_free(doc);
    pmm_status_sort(rows, n);
    if (json) {
        pmm_status_write_json(&out, rows, n);
        pmm_buf_puts(&out, "\n");
    } else {
        pmm_status_render_text(&out, rows, n);
    }
    if (out.err != 0) {
        fprintf(stderr, "pmgcm: %s\n", strerror(-out.err));
        goto out;
    }
    rc = write_out(out.p, out.len);
out:
    free(rows);
    pmm_buf_free(&in);
    pmm_buf_free(&out);
    return rc;
}

int main(int argc, char **argv)
{
    const char *sock = getenv("PMGCM_SOCKET");
    const char *cmd = NULL;
    int i;

    if (sock == NULL || sock[0] == '\0')
        sock = PMM_DEFAULT_SOCKET;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        int m;

        if (a[0] != '-') {
            cmd = a;
            i++;
            break;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--version") == 0) {
            printf("pmgcm %s\n", PACKAGE_VERSION);
            return 0;
        }
        m = opt_value(argc, argv, &i, "--socket", &sock);
        if (m < 0)
            return usage_error("option '%s' needs a value", a);
        if (m == 0)
            return usage_error("unknown option '%s'", a);
        if (sock[0] == '\0')
            return usage_error("%s: empty socket path", a);
    }
    if (cmd == NULL)
        return usage_error("%s", "no command given");

    if (strcmp(cmd, "status") == 0) {
        bool json = false;
        for (; i < argc; i++) {
            const char *fmt = NULL;
            int m = opt_value(argc, argv, &i, "--output-format", &fmt);
            if (m < 0)
                return usage_error("option '%s' needs a value", argv[i]);
            if (m == 0)
                return usage_error("status: unexpected argument '%s'",
                                   argv[i]);
            if (strcmp(fmt, "json") == 0)
                json = true;
            else if (strcmp(fmt, "text") == 0)
                json = false;
            else
                return usage_error("--output-format must be text or json, "
                                   "not '%s'", fmt);
        }
        return cmd_status(sock, json);
    }
    if (strcmp(cmd, "keygen") == 0) {
        if (i < argc)
            return usage_error("keygen: unexpected argument '%s'", argv[i]);
        return cmd_keygen();
    }
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    return usage_error("unknown command '%s'", cmd);
}
