/*
 * test_mctl.c - control protocol: request parser bounds, and a live
 * control socket (answers, errors, bounds, stale socket, mode, peer
 * credentials, client cap, idle timeout, clean close).
 */
#include "membership/membership.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static void test_parse_request(void)
{
    pmm_ctl_cmd cmd = 0;
    const char *why = NULL;
    char big[PMM_CTL_REQ_MAX + 2];

    CHECK(pmm_ctl_parse_request("status\n", 7, &cmd, &why) == 0);
    CHECK_EQ_INT(cmd, PMM_CTL_STATUS);
    CHECK(pmm_ctl_parse_request("ping", 4, &cmd, &why) == 0);
    CHECK_EQ_INT(cmd, PMM_CTL_PING);
    CHECK(pmm_ctl_parse_request("  status \r\n", 11, &cmd, &why) == 0);
    CHECK_EQ_INT(cmd, PMM_CTL_STATUS);

    CHECK(pmm_ctl_parse_request("", 0, &cmd, &why) == -EINVAL);
    CHECK(strcmp(why, "empty request") == 0);
    CHECK(pmm_ctl_parse_request("\n", 1, &cmd, &why) == -EINVAL);
    CHECK(pmm_ctl_parse_request("   \r\n", 5, &cmd, &why) == -EINVAL);
    CHECK(pmm_ctl_parse_request("statu\n", 6, &cmd, &why) == -ENOENT);
    CHECK(strcmp(why, "unknown command") == 0);
    CHECK(pmm_ctl_parse_request("status2\n", 8, &cmd, &why) == -ENOENT);
    CHECK(pmm_ctl_parse_request("STATUS\n", 7, &cmd, &why) == -ENOENT);
    CHECK(pmm_ctl_parse_request("status json\n", 12, &cmd, &why) == -ENOENT);
    CHECK(pmm_ctl_parse_request("status\0x\n", 9, &cmd, &why) == -EINVAL);
    CHECK(pmm_ctl_parse_request("st\tatus\n", 8, &cmd, &why) == -EINVAL);
    CHECK(pmm_ctl_parse_request("status\xff\n", 8, &cmd, &why) == -EINVAL);
    CHECK(pmm_ctl_parse_request("sta\ntus\n", 8, &cmd, &why) == -EINVAL);

    memset(big, 'a', sizeof(big));
    big[PMM_CTL_REQ_MAX - 1] = '\n';
    CHECK(pmm_ctl_parse_request(big, PMM_CTL_REQ_MAX, &cmd, &why) == -ENOENT);
    CHECK(pmm_ctl_parse_request(big, PMM_CTL_REQ_MAX + 1, &cmd, &why) == -E2BIG);
    CHECK(strcmp(why, "request too long") == 0);
}

static void test_error_reply(void)
{
    pmm_buf b;

    pmm_buf_init(&b, 1024);
    CHECK(pmm_ctl_error_reply(&b, "bad \"thing\"\n") == 0);
    CHECK(strcmp(b.p, "{\"ok\":false,\"error\":\"bad \\\"thing\\\"\\n\"}\n") == 0);
    pmm_buf_free(&b);
}

/* ---- live socket ------------------------------------------------------------ */

static char dir[64], sock_path[96];
static int handler_calls;

static int handler(void *ud, pmm_ctl_cmd cmd, pmm_buf *reply)
{
    handler_calls++;
    if (cmd == PMM_CTL_PING)
        return -EIO; /* exercises the generic error path */
    return pmm_buf_puts(reply, "{\"ok\":true,\"members\":[]}\n");
}

static int connect_sock(void)
{
    struct sockaddr_un sa;
    struct timeval tv = {.tv_sec = 15};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;

    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap - 1)
            break;
    }
    buf[n] = '\0';
    return n;
}

/* one request, whole answer */
static void ask(const void *req, size_t len, bool half_close, char *out,
                size_t cap)
{
    int fd = connect_sock();

    out[0] = '\0';
    if (fd < 0)
        return;
    /* the server may answer (e.g. "permission denied") and close before
     * the request is written: no SIGPIPE, and read the answer anyway */
    if (len > 0)
        (void)!send(fd, req, len, MSG_NOSIGNAL);
    if (half_close)
        shutdown(fd, SHUT_WR);
    read_all(fd, out, cap);
    close(fd);
}

typedef struct results {
    char status[256], ping[256], unknown[256], empty[256], eof_req[256];
    char toolong[256], exact_max[256], split[256];
    char nobody[256];
    int nobody_connect_ok;
    int capped_eof, capped_total;
    double idle_s;
    bool idle_eof;
} results;

static results res;
static uv_async_t done_async;

static void *client_thread(void *arg)
{
    static char big[PMM_CTL_REQ_MAX + 100];

    ask("status\n", 7, false, res.status, sizeof(res.status));
    ask("ping\n", 5, false, res.ping, sizeof(res.ping));
    ask("hello\n", 6, false, res.unknown, sizeof(res.unknown));
    ask("\n", 1, false, res.empty, sizeof(res.empty));
    ask("status", 6, true, res.eof_req, sizeof(res.eof_req));
    memset(big, 'x', sizeof(big));
    ask(big, sizeof(big), false, res.toolong, sizeof(res.toolong));
    memset(big, ' ', PMM_CTL_REQ_MAX);
    memcpy(big + PMM_CTL_REQ_MAX - 7, "status\n", 7);
    ask(big, PMM_CTL_REQ_MAX, false, res.exact_max, sizeof(res.exact_max));
    {
        /* a request in pieces */
        int fd = connect_sock();
        if (fd >= 0) {
            if (write(fd, "sta", 3) == 3) {
                usleep(50000);
                if (write(fd, "tus\nignored", 11) == 11)
                    read_all(fd, res.split, sizeof(res.split));
            }
            close(fd);
        }
    }

    /* another uid: the file mode stops it; with the mode opened up, the
     * SO_PEERCRED check still does */
    if (geteuid() == 0) {
        pid_t pid;
        int pfd[2];
        if (pipe(pfd) == 0) {
            chmod(sock_path, 0666);
            pid = fork();
            if (pid == 0) {
                char out[256];
                close(pfd[0]);
                if (setgid(65534) != 0 || setuid(65534) != 0)
                    _exit(1);
                ask("status\n", 7, false, out, sizeof(out));
                if (write(pfd[1], out, strlen(out)) < 0)
                    _exit(1);
                _exit(0);
            }
            close(pfd[1]);
            read_all(pfd[0], res.nobody, sizeof(res.nobody));
            close(pfd[0]);
            waitpid(pid, NULL, 0);
            chmod(sock_path, 0600);
        }
    }

    /* client cap: 40 idle connections, the ones over the cap are closed at
     * once (EOF), the rest are held until they idle out */
    {
        int fds[40];
        for (int i = 0; i < 40; i++)
            fds[i] = connect_sock();
        usleep(300000);
        for (int i = 0; i < 40; i++) {
            char c;
            ssize_t r;
            if (fds[i] < 0)
                continue;
            res.capped_total++;
            r = recv(fds[i], &c, 1, MSG_DONTWAIT);
            if (r == 0)
                res.capped_eof++;
        }
        for (int i = 0; i < 40; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        usleep(300000); /* let the server see those EOFs */
    }

    /* idle timeout */
    {
        struct timespec a, b;
        int fd = connect_sock();
        char c;
        clock_gettime(CLOCK_MONOTONIC, &a);
        if (fd >= 0) {
            res.idle_eof = read(fd, &c, 1) == 0;
            close(fd);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        res.idle_s = (double)(b.tv_sec - a.tv_sec) +
                     (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    }
    uv_async_send(&done_async);
    return NULL;
}

static pmm_ctl *live_ctl;

static void done_cb(uv_async_t *a)
{
    pmm_ctl_close(live_ctl);
    uv_close((uv_handle_t *)a, NULL);
}

static void test_live_socket(void)
{
    uv_loop_t loop;
    pthread_t th;
    char err[256];
    struct stat st;

    REQUIRE(uv_loop_init(&loop) == 0);
    REQUIRE(pmm_ctl_start(&live_ctl, &loop, sock_path, handler, NULL, err,
                          sizeof(err)) == 0);
    REQUIRE(stat(sock_path, &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    REQUIRE(uv_async_init(&loop, &done_async, done_cb) == 0);
    REQUIRE(pthread_create(&th, NULL, client_thread, NULL) == 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK(uv_loop_close(&loop) == 0);
    CHECK(access(sock_path, F_OK) != 0); /* removed at close */

    CHECK(strcmp(res.status, "{\"ok\":true,\"members\":[]}\n") == 0);
    CHECK(strcmp(res.ping, "{\"ok\":false,\"error\":\"internal error\"}\n") == 0);
    CHECK(strcmp(res.unknown, "{\"ok\":false,\"error\":\"unknown command\"}\n") == 0);
    CHECK(strcmp(res.empty, "{\"ok\":false,\"error\":\"empty request\"}\n") == 0);
    CHECK(strcmp(res.eof_req, res.status) == 0);
    CHECK(strcmp(res.toolong, "{\"ok\":false,\"error\":\"request too long\"}\n") == 0);
    CHECK(strcmp(res.exact_max, res.status) == 0);
    CHECK(strcmp(res.split, res.status) == 0);
    if (geteuid() == 0) {
        CHECK(strcmp(res.nobody, "{\"ok\":false,\"error\":\"permission denied\"}\n") == 0);
        printf("# uid 65534 got: %s", res.nobody[0] ? res.nobody : "(nothing)\n");
    }
    printf("# capped: %d of %d connections closed at once\n", res.capped_eof,
           res.capped_total);
    CHECK_EQ_INT(res.capped_total, 40);
    CHECK_EQ_INT(res.capped_eof, 40 - PMM_CTL_CLIENTS_MAX);
    printf("# idle client dropped after %.2f s\n", res.idle_s);
    CHECK(res.idle_eof);
    CHECK(res.idle_s > PMM_CTL_IDLE_MS / 1000.0 - 0.5 &&
          res.idle_s < PMM_CTL_IDLE_MS / 1000.0 + 2);
    CHECK(handler_calls >= 5);
}

static void test_stale_and_busy(void)
{
    uv_loop_t loop;
    pmm_ctl *c = NULL, *c2 = NULL;
    char err[256], path[160];
    struct sockaddr_un sa;
    int fd;

    REQUIRE(uv_loop_init(&loop) == 0);
    /* a stale socket file (nobody listening) is replaced */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    REQUIRE(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(fd);
    CHECK(pmm_ctl_start(&c, &loop, sock_path, handler, NULL, err,
                        sizeof(err)) == 0);
    /* a live one is not */
    CHECK(pmm_ctl_start(&c2, &loop, sock_path, handler, NULL, err,
                        sizeof(err)) == -EADDRINUSE);
    CHECK(strstr(err, "already listening") != NULL);
    pmm_ctl_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);

    /* a regular file is never removed */
    fd = open(sock_path, O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    close(fd);
    CHECK(pmm_ctl_start(&c2, &loop, sock_path, handler, NULL, err,
                        sizeof(err)) == -EEXIST);
    CHECK(strstr(err, "not a socket") != NULL);
    unlink(sock_path);

    /* parent directory created 0755 */
    snprintf(path, sizeof(path), "%s/sub/dir/x.sock", dir);
    c = NULL;
    CHECK(pmm_ctl_start(&c, &loop, path, handler, NULL, err, sizeof(err)) == 0);
    {
        struct stat st;
        char d[160];
        snprintf(d, sizeof(d), "%s/sub/dir", dir);
        CHECK(stat(d, &st) == 0 && (st.st_mode & 0777) == 0755);
    }
    if (c != NULL)
        pmm_ctl_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof(path), "%s/sub/dir", dir);
    rmdir(path);
    snprintf(path, sizeof(path), "%s/sub", dir);
    rmdir(path);

    /* bad paths */
    CHECK(pmm_ctl_start(&c2, &loop, "relative.sock", handler, NULL, err,
                        sizeof(err)) == -EINVAL);
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    CHECK(pmm_ctl_start(&c2, &loop, path, handler, NULL, err, sizeof(err)) ==
          -EINVAL);
    CHECK(uv_loop_close(&loop) == 0);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/test_mctl.XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    chmod(dir, 0755); /* the uid-65534 child must reach the socket */
    snprintf(sock_path, sizeof(sock_path), "%s/ctl.sock", dir);
    TAP_RUN(test_parse_request);
    TAP_RUN(test_error_reply);
    TAP_RUN(test_live_socket);
    TAP_RUN(test_stale_and_busy);
    rmdir(dir);
    return tap_done();
}
