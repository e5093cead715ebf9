/*
 * test_mcli.c - the pmgcm binary against a fake pmgclusterd: a control
 * socket served by this test, which records every request line and gives
 * canned answers. Checks the exact requests, password files, usage errors
 * (exit 2, nothing sent), text and JSON output, daemon errors (exit 1),
 * and the terminal prompts (through a pseudo-terminal: no echo, yes/no).
 *
 * The binary is $abs_top_builddir/cli/pmgcm (exported by `make check`),
 * else ./cli/pmgcm.
 */
#define _GNU_SOURCE /* posix_openpt, ptsname */
#include "cli/cli.h"
#include "membership/membership.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXREQ 8

/* a well-formed certificate fingerprint, as pmgcm prints it, in lower
 * case, and as the 64 digits alone */
#define FP "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:" \
           "67:89:AB:CD:EF:01:23:45:67:89"
#define FP_LC "ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:" \
              "45:67:89:ab:cd:ef:01:23:45:67:89"
#define FP_HEX "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
#define OUT_MAX 16384

static char bin[512], dir[64], sock_path[96], pwfile[160];
static int lfd = -1;

typedef struct run {
    int rc;                      /* exit status; 128 + signal; -1 timeout */
    double secs;                 /* how long it ran */
    char out[OUT_MAX], err[OUT_MAX];
    char req[MAXREQ][PMM_CTL_REQ_MAX + 64];
    int nreq;
    char tty[OUT_MAX];           /* what the terminal showed (pty runs) */
} run;

/* A terminal conversation: when `expect` has appeared, type `send`. */
typedef struct step {
    const char *expect;
    const char *send; /* a line ("\n" added) or "\x04" alone for EOF */
} step;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void slurp(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    size_t n = 0;

    buf[0] = '\0';
    if (fd < 0)
        return;
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    close(fd);
}

/* Serves one connection: the request line, then answers[i] (NULL: close
 * without an answer). */
static void serve_one(run *r, const char *const *answers, int nanswers)
{
    struct timeval tv = {.tv_sec = 5};
    char line[PMM_CTL_REQ_MAX + 64];
    size_t n = 0;
    const char *ans;
    int fd = accept(lfd, NULL, NULL);

    if (fd < 0)
        return;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (n < sizeof(line) - 1) {
        ssize_t k = read(fd, line + n, sizeof(line) - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        if (memchr(line, '\n', n) != NULL)
            break;
    }
    line[n] = '\0';
    if (r->nreq < MAXREQ)
        memcpy(r->req[r->nreq], line, n + 1);
    ans = r->nreq < nanswers
              ? answers[r->nreq]
              : "{\"ok\":false,\"error\":\"test: unexpected request\"}\n";
    r->nreq++;
    if (ans != NULL)
        (void)!send(fd, ans, strlen(ans), MSG_NOSIGNAL);
    close(fd);
}

/* Runs pmgcm with argv (NULL-terminated, without argv[0]). Without steps
 * it has no controlling terminal (setsid); with steps it gets a fresh
 * pseudo-terminal and the conversation is played on it. */
static void run_cli(run *r, const char *const *answers, int nanswers,
                    const step *steps, const char *const *args)
{
    char outp[128], errp[128];
    const char *argv[32];
    int argc = 0, mfd = -1, si = 0;
    size_t tn = 0, tfrom = 0;
    pid_t pid;
    double deadline;
    int status;

    memset(r, 0, sizeof(*r));
    r->rc = -1;
    argv[argc++] = bin;
    for (; *args != NULL && argc < 31; args++)
        argv[argc++] = *args;
    argv[argc] = NULL;
    snprintf(outp, sizeof(outp), "%s/out", dir);
    snprintf(errp, sizeof(errp), "%s/err", dir);
    if (steps != NULL) {
        mfd = posix_openpt(O_RDWR | O_NOCTTY);
        if (mfd < 0 || grantpt(mfd) != 0 || unlockpt(mfd) != 0 ||
            fcntl(mfd, F_SETFL, O_NONBLOCK) != 0) {
            printf("#   no pseudo-terminal: %s\n", strerror(errno));
            return;
        }
    }
    fflush(stdout);
    pid = fork();
    if (pid < 0)
        return;
    if (pid == 0) {
        int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int n = open("/dev/null", O_RDONLY);
        setsid();
        if (mfd >= 0) {
            /* a session leader opening a terminal makes it its own */
            int s = open(ptsname(mfd), O_RDWR);
            if (s < 0)
                _exit(126);
            close(mfd);
            if (s > 2)
                close(s);
        }
        dup2(n, 0);
        dup2(o, 1);
        dup2(e, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    r->secs = now_s();
    deadline = r->secs + 20;
    for (;;) {
        struct pollfd p[2] = {{.fd = lfd, .events = POLLIN},
                              {.fd = mfd, .events = POLLIN}};
        pid_t w = waitpid(pid, &status, WNOHANG | WUNTRACED);
        if (w == pid && WIFSTOPPED(status)) {
            printf("#   pmgcm stopped by signal %d\n", WSTOPSIG(status));
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            status = -1;
            break;
        }
        if (w == pid)
            break;
        if (now_s() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            printf("#   pmgcm did not finish within 20 s\n");
            status = -1;
            break;
        }
        if (poll(p, mfd >= 0 ? 2 : 1, 50) <= 0)
            continue;
        if (p[0].revents & POLLIN)
            serve_one(r, answers, nanswers);
        if (mfd >= 0 && (p[1].revents & (POLLIN | POLLHUP))) {
            /* non-blocking: the master reports a hang-up until the child
             * has opened its side, and then nothing may come for a while */
            ssize_t k = read(mfd, r->tty + tn, sizeof(r->tty) - 1 - tn);
            if (k > 0) {
                tn += (size_t)k;
                r->tty[tn] = '\0';
            } else {
                usleep(5000);
            }
        }
        if (steps != NULL && steps[si].expect != NULL) {
            char *at = strstr(r->tty + tfrom, steps[si].expect);
            if (at != NULL) {
                char line[256];
                if (strcmp(steps[si].send, "\x04") == 0)
                    snprintf(line, sizeof(line), "\x04");
                else
                    snprintf(line, sizeof(line), "%s\n", steps[si].send);
                usleep(20000); /* let it reach read() after the prompt */
                (void)!write(mfd, line, strlen(line));
                tfrom = (size_t)(at - r->tty) + strlen(steps[si].expect);
                si++;
            }
        }
    }
    /* a request that came in just before the exit */
    {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        while (poll(&p, 1, 0) == 1 && (p.revents & POLLIN))
            serve_one(r, answers, nanswers);
    }
    r->secs = now_s() - r->secs;
    if (mfd >= 0)
        close(mfd);
    if (status == -1)
        r->rc = -1;
    else if (WIFEXITED(status))
        r->rc = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        r->rc = 128 + WTERMSIG(status);
    slurp(outp, r->out, sizeof(r->out));
    slurp(errp, r->err, sizeof(r->err));
}

static void show(const run *r)
{
    printf("#   rc=%d nreq=%d after %.2f s\n#   out: %.300s\n#   err: %.300s\n"
           "#   tty: %.300s\n", r->rc, r->nreq, r->secs, r->out, r->err,
           r->tty);
    for (int i = 0; i < r->nreq && i < MAXREQ; i++)
        printf("#   req[%d]: %.300s", i, r->req[i]);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define ANS(...) ((const char *const[]){__VA_ARGS__}), \
    (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))
#define NOANS NULL, 0
/* join first asks status: this node is in no cluster yet */
#define NOCL "{\"ok\":true}\n"

static void write_file(const char *path, const char *data, size_t n,
                       mode_t mode)
{
    int fd;

    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return;
    (void)!write(fd, data, n);
    close(fd);
    chmod(path, mode);
}

static void set_pw(const char *s, mode_t mode)
{
    write_file(pwfile, s, strlen(s), mode);
}

/* ---- exact requests --------------------------------------------------------- */

static void test_join_request(void)
{
    run r;
    pmm_json *args = NULL;
    const char *cmd = NULL;
    char err[PMM_CTL_ERR_MAX];

    set_pw("s3cret pw\n", 0600);
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":4}\n"), NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1", "--fingerprint",
                 FP, "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 2);
    CHECK(strcmp(r.req[1], "{\"cmd\":\"join\",\"ip\":\"10.0.0.1\","
                           "\"fingerprint\":\"" FP "\",\"password\":"
                           "\"s3cret pw\"}\n") == 0);
    CHECK(strcmp(r.out, "joined cluster as cid 4\n") == 0);
    CHECK(strcmp(r.err, "") == 0);
    if (r.rc != 0 || r.nreq != 2)
        show(&r);

    /* quotes, backslashes, UTF-8, CRLF; options in another order; the
     * daemon's parser reads back exactly the same password */
    set_pw("q\"b\\s \xc3\xa9\r\nsecond line\n", 0640);
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":5}\n"), NULL,
            ARGS("join", "--no-wait", "--password-file", pwfile, "--socket", sock_path,
                 "fd00::1", "--fingerprint=" FP_LC));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[1], "{\"cmd\":\"join\",\"ip\":\"fd00::1\","
                           "\"fingerprint\":\"" FP_LC "\",\"password\":"
                           "\"q\\\"b\\\\s \xc3\xa9\"}\n") == 0);
    REQUIRE(pmm_ctl_parse_request(r.req[1], strlen(r.req[1]), &cmd, &args,
                                  err, sizeof(err)) == 0);
    CHECK(strcmp(cmd, "join") == 0);
    CHECK(strcmp(pmm_json_get(args, "password")->str,
                 "q\"b\\s \xc3\xa9") == 0);
    pmm_json_free(args);
    CHECK(strcmp(r.out, "joined cluster as cid 5\n") == 0);

    /* a master whose node API is off the default port (join-cmd's line) */
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":6}\n"), NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "[fd00::1]:7957",
                 "--fingerprint", FP_HEX, "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[1], "{\"cmd\":\"join\",\"ip\":\"[fd00::1]:7957\","
                           "\"fingerprint\":\"" FP_HEX "\",\"password\":"
                           "\"q\\\"b\\\\s \xc3\xa9\"}\n") == 0);
    REQUIRE(pmm_ctl_parse_request(r.req[1], strlen(r.req[1]), &cmd, &args,
                                  err, sizeof(err)) == 0);
    pmm_json_free(args);
}

/* Without --no-wait, join then polls status until the data is in sync. */
static void test_join_waits_for_data(void)
{
    run r;

    set_pw("pw\n", 0600);
    run_cli(&r,
            ANS(NOCL, "{\"ok\":true,\"cid\":4}\n",
                "{\"ok\":true,\"store\":{\"state\":\"loading\","
                "\"error\":\"\",\"loaded\":false,\"snapshot\":{\"rows\":10,"
                "\"bytes\":1000,\"est_rows\":20,\"est_bytes\":2000,"
                "\"tables\":2,\"tables_done\":1,\"elapsed_ms\":100}}}\n",
                "{\"ok\":true,\"state\":\"in-sync\"}\n",
                "{\"ok\":true,\"store\":{\"state\":\"in-sync\","
                "\"error\":\"\",\"loaded\":true,\"snapshot\":{\"rows\":20,"
                "\"bytes\":2000,\"est_rows\":20,\"est_bytes\":2000,"
                "\"tables\":2,\"tables_done\":2,\"elapsed_ms\":250}}}\n"),
            NULL,
            ARGS("--socket", sock_path, "join", "10.0.0.1", "--fingerprint",
                 FP, "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 5);
    CHECK(strcmp(r.req[2], "{\"cmd\":\"status\"}\n") == 0);
    /* between two looks, the daemon is asked to answer once in sync */
    CHECK(strcmp(r.req[3], "{\"cmd\":\"wait-sync\"}\n") == 0);
    CHECK(strcmp(r.req[4], "{\"cmd\":\"status\"}\n") == 0);
    CHECK(strstr(r.out, "joined cluster as cid 4\n") != NULL);
    CHECK(strstr(r.out, "data in sync: snapshot of 20 rows") != NULL);
    if (r.rc != 0 || r.nreq != 5)
        show(&r);

    /* an older daemon without wait-sync: no error shown, it sleeps
     * between looks from then on (not asked again) */
    run_cli(&r,
            ANS(NOCL, "{\"ok\":true,\"cid\":4}\n",
                "{\"ok\":true,\"store\":{\"state\":\"loading\","
                "\"error\":\"\",\"loaded\":false}}\n",
                "{\"ok\":false,\"error\":\"unknown command\"}\n",
                "{\"ok\":true,\"store\":{\"state\":\"loading\","
                "\"error\":\"\",\"loaded\":false}}\n",
                "{\"ok\":true,\"store\":{\"state\":\"in-sync\","
                "\"error\":\"\",\"loaded\":true}}\n"),
            NULL,
            ARGS("--socket", sock_path, "join", "10.0.0.1", "--fingerprint",
                 FP, "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 6);
    CHECK(strcmp(r.req[3], "{\"cmd\":\"wait-sync\"}\n") == 0);
    CHECK(strcmp(r.req[4], "{\"cmd\":\"status\"}\n") == 0);
    CHECK(strcmp(r.req[5], "{\"cmd\":\"status\"}\n") == 0);
    CHECK(strstr(r.err, "unknown command") == NULL);
    CHECK(strstr(r.out, "data in sync") != NULL);
    if (r.rc != 0 || r.nreq != 6)
        show(&r);

    /* a schema mismatch: exit 1, the reason, and "nothing was changed" */
    run_cli(&r,
            ANS(NOCL, "{\"ok\":true,\"cid\":5}\n",
                "{\"ok\":true,\"store\":{\"state\":\"error\",\"error\":"
                "\"snapshot: schema mismatch: master has \\\"public.mail(id "
                "bigint)\\\"\",\"loaded\":false}}\n"),
            NULL,
            ARGS("--socket", sock_path, "join", "10.0.0.1", "--fingerprint",
                 FP, "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "schema mismatch: master has") != NULL);
    CHECK(strstr(r.err, "nothing was changed") != NULL);
    if (r.rc != 1)
        show(&r);

    /* no replicated database on the node: done after one status */
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":6}\n", "{\"ok\":true}\n"), NULL,
            ARGS("--socket", sock_path, "join", "10.0.0.1", "--fingerprint",
                 FP, "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 3);
    CHECK(strcmp(r.out, "joined cluster as cid 6\n") == 0);
}

static void test_commands(void)
{
    run r;
    const char *members =
        "{\"ok\":true,\"node\":\"pmg5\",\"id\":\"00\",\"generation\":1,"
        "\"time\":1,\"members\":[{\"name\":\"pmg5\",\"cid\":1,\"ip\":"
        "\"192.168.2.127\",\"role\":\"master\",\"state\":\"A\",\"uptime\":"
        "162000,\"load\":0.3,\"mem\":80,\"disk\":41},{\"name\":\"pmg6\","
        "\"cid\":2,\"ip\":\"192.168.2.128\",\"role\":\"node\",\"state\":"
        "\"S\",\"uptime\":60,\"load\":0,\"mem\":10,\"disk\":20}]}\n";

    set_pw("a long enough pw\n", 0600);
    run_cli(&r, ANS("{\"ok\":true,\"cid\":1,\"fingerprint\":\"AB:CD\"}\n"),
            NULL, ARGS("--socket", sock_path, "create", "--password-file",
                       pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"create\",\"password\":"
                           "\"a long enough pw\"}\n") == 0);
    CHECK(strcmp(r.out, "cluster created: this node is master (cid 1)\n"
                        "fingerprint: AB:CD\n") == 0);
    {
        /* quotes, a backslash, markup and UTF-8 in a password: escaped
         * (UTF-8 kept as it is), and it parses back to the same bytes */
        const char *cmd;
        pmm_json *args = NULL;
        char err[PMM_CTL_ERR_MAX];
        set_pw("p\"w\\<script>\xc3\xa9\n", 0600);
        run_cli(&r, ANS("{\"ok\":true,\"cid\":1}\n"), NULL,
                ARGS("--socket", sock_path, "create", "--password-file",
                     pwfile));
        CHECK_EQ_INT(r.rc, 0);
        CHECK(strcmp(r.req[0], "{\"cmd\":\"create\",\"password\":"
                               "\"p\\\"w\\\\<script>\xc3\xa9\"}\n") == 0);
        CHECK(pmm_ctl_parse_request(r.req[0], strlen(r.req[0]), &cmd, &args,
                                    err, sizeof(err)) == 0);
        CHECK(args != NULL &&
              strcmp(pmm_json_get(args, "password")->str,
                     "p\"w\\<script>\xc3\xa9") == 0);
        pmm_json_free(args);
        set_pw("a long enough pw\n", 0600);
    }

    run_cli(&r, ANS("{\"ok\":true,\"command\":\"pmgcm join 10.0.0.1 "
                    "--fingerprint AB:CD\"}\n"),
            NULL, ARGS("--socket", sock_path, "join-cmd"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"join-cmd\"}\n") == 0);
    CHECK(strcmp(r.out, "pmgcm join 10.0.0.1 --fingerprint AB:CD\n") == 0);

    run_cli(&r, ANS("{\"ok\":true,\"cid\":3}\n"), NULL,
            ARGS("--socket", sock_path, "delete", "3"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"delete\",\"cid\":3}\n") == 0);
    CHECK(strcmp(r.out, "node with cid 3 deleted from the cluster\n") == 0);
    run_cli(&r, ANS("{\"ok\":true,\"cid\":3,\"key_rotated\":true}\n"), NULL,
            ARGS("--socket", sock_path, "delete", "3"));
    CHECK(strcmp(r.out, "node with cid 3 deleted from the cluster (gossip "
                        "key rotated)\n") == 0);

    /* the daemon's own words win */
    run_cli(&r, ANS("{\"ok\":true,\"cid\":7,\"message\":\"node 7 removed; "
                    "gossip key rotated\"}\n"),
            NULL, ARGS("delete", "65535", "--socket", sock_path));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"delete\",\"cid\":65535}\n") == 0);
    CHECK(strcmp(r.out, "node 7 removed; gossip key rotated\n") == 0);

    run_cli(&r, ANS("{\"ok\":true,\"cid\":2,\"epoch\":5}\n"), NULL,
            ARGS("--socket", sock_path, "promote"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"promote\",\"force\":false}\n") == 0);
    CHECK(strcmp(r.out, "this node is now master (cid 2, epoch 5)\n") == 0);
    run_cli(&r, ANS("{\"ok\":true}\n"), NULL,
            ARGS("--socket", sock_path, "promote", "--force"));
    CHECK(strcmp(r.req[0], "{\"cmd\":\"promote\",\"force\":true}\n") == 0);
    CHECK(strcmp(r.out, "this node is now master\n") == 0);

    run_cli(&r, ANS("{\"ok\":true}\n"), NULL,
            ARGS("--socket", sock_path, "sync"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"sync\"}\n") == 0);
    CHECK(strcmp(r.out, "sync done\n") == 0);
    run_cli(&r, ANS("{\"ok\":true,\"master_ip\":\"10.0.0.2\"}\n"), NULL,
            ARGS("--socket", sock_path, "sync", "--master_ip", "10.0.0.2"));
    CHECK(strcmp(r.req[0], "{\"cmd\":\"sync\",\"master_ip\":\"10.0.0.2\"}\n")
          == 0);
    CHECK(strcmp(r.out, "sync done (master 10.0.0.2)\n") == 0);
    run_cli(&r, ANS("{\"ok\":true,\"epoch\":2,\"version\":7,\"master_cid\":2,"
                    "\"updated\":true}\n"),
            NULL, ARGS("--socket", sock_path, "sync"));
    CHECK(strcmp(r.out, "sync done: cluster config epoch 2, version 7 "
                        "(updated)\n") == 0);
    run_cli(&r, ANS("{\"ok\":true}\n"), NULL,
            ARGS("--socket", sock_path, "sync", "--master-ip=fd00::2"));
    CHECK(strcmp(r.req[0], "{\"cmd\":\"sync\",\"master_ip\":\"fd00::2\"}\n")
          == 0);

    /* files publish: what is held, or published on --confirm */
    run_cli(&r, ANS("{\"ok\":true,\"digest\":\"0123456789abcdef0123\","
                    "\"files\":2,\"dropped\":30}\n"),
            NULL, ARGS("--socket", sock_path, "files", "publish", "--confirm"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0],
                 "{\"cmd\":\"files-publish\",\"confirm\":true}\n") == 0);
    CHECK(strcmp(r.out, "published manifest 0123456789abcdef (2 files; 30 "
                        "dropped files are kept in the nodes' trash)\n") == 0);
    run_cli(&r, ANS("{\"ok\":false,\"error\":\"held: x\"}\n"), NULL,
            ARGS("--socket", sock_path, "files", "publish"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.req[0],
                 "{\"cmd\":\"files-publish\",\"confirm\":false}\n") == 0);
    CHECK(strcmp(r.err, "pmgcm: held: x\n") == 0);

    /* status: the legacy request, rows rendered as they come */
    run_cli(&r, ANS(members), NULL, ARGS("--socket", sock_path, "status"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "status\n") == 0);
    CHECK(strstr(r.out, "NAME(CID)--------------IPADDRESS----ROLE-STATE") ==
          r.out);
    CHECK(strstr(r.out, "pmg5(1)              192.168.2.127   master A  "
                        "   1 day 21:00   0.30    80%    41%\n") != NULL);
    CHECK(strstr(r.out, "pmg6(2)              192.168.2.128   node   S") !=
          NULL);
    run_cli(&r, ANS(members), NULL,
            ARGS("--socket", sock_path, "status", "--output-format", "json"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(r.out[0] == '[' && strstr(r.out, "\"role\":\"master\"") != NULL);
    if (r.rc != 0)
        show(&r);
    run_cli(&r, ANS(members), NULL,
            ARGS("--socket", sock_path, "status", "--output-format",
                 "json-pretty"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out, "[\n  {\n    \"name\": \"pmg5\",\n") == r.out);
    CHECK(strstr(r.out, "    \"role\": \"master\",\n") != NULL);
}

static void test_join_fetches_fingerprint(void)
{
    run r;

    set_pw("pw\n", 0600);
    run_cli(&r,
            ANS(NOCL, "{\"ok\":true,\"fingerprint\":\"" FP "\"}\n",
                "{\"ok\":true,\"cid\":2}\n"),
            NULL, ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1",
                       "--password-file", pwfile, "--yes"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 3);
    CHECK(strcmp(r.req[1], "{\"cmd\":\"fingerprint\",\"ip\":\"10.0.0.1\"}\n")
          == 0);
    CHECK(strcmp(r.req[2], "{\"cmd\":\"join\",\"ip\":\"10.0.0.1\","
                           "\"fingerprint\":\"" FP "\",\"password\":"
                           "\"pw\"}\n") == 0);
    CHECK(strstr(r.err, FP) != NULL);
    CHECK(strcmp(r.out, "joined cluster as cid 2\n") == 0);

    /* json: only the final answer is the output */
    run_cli(&r,
            ANS(NOCL, "{\"ok\":true,\"fingerprint\":\"" FP "\"}\n",
                "{\"ok\":true,\"cid\":2}\n"),
            NULL, ARGS("--socket", sock_path, "--output-format", "json",
                       "join", "--no-wait", "10.0.0.1", "--password-file", pwfile,
                       "--yes"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.out, "{\"ok\":true,\"cid\":2}\n") == 0);

    /* the master cannot be reached: stop after the first request */
    run_cli(&r, ANS(NOCL, "{\"ok\":false,\"error\":\"cannot reach 10.0.0.1:7947: "
                    "connection refused\"}\n"),
            NULL, ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1",
                       "--password-file", pwfile, "--yes"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 2);
    CHECK(strcmp(r.err, "pmgcm: cannot reach 10.0.0.1:7947: connection "
                        "refused\n") == 0);
    CHECK(strcmp(r.out, "") == 0);

    /* an answer without a usable fingerprint */
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"fingerprint\":\"A B\"}\n"), NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1",
                 "--password-file", pwfile, "--yes"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 2);
    CHECK(strstr(r.err, "no valid 'fingerprint'") != NULL);
}

/* ---- password files ------------------------------------------------------------ */

static void expect_pwfile_refused(const char *why)
{
    run r;

    run_cli(&r, ANS("{\"ok\":true,\"cid\":1}\n"), NULL,
            ARGS("--socket", sock_path, "create", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strstr(r.err, why) != NULL);
    CHECK(strcmp(r.out, "") == 0);
    if (r.rc != 1 || r.nreq != 0 || strstr(r.err, why) == NULL)
        show(&r);
}

static void test_password_file(void)
{
    char big[PMM_CTL_PASSWORD_MAX + 8];
    run r;

    set_pw("secret\n", 0644);
    expect_pwfile_refused("is readable by everyone (mode 0644)");
    set_pw("secret\n", 0604);
    expect_pwfile_refused("is readable by everyone");
    /* the same for join, before anything is asked */
    run_cli(&r, NOANS, NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1",
                 "--password-file", pwfile, "--fingerprint", FP));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strstr(r.err, "readable by everyone") != NULL);
    run_cli(&r, NOANS, NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1",
                 "--password-file", pwfile, "--yes"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);

    set_pw("", 0600);
    expect_pwfile_refused("is empty");
    set_pw("\nsecond\n", 0600);
    expect_pwfile_refused("is empty");
    set_pw("tab\there\n", 0600);
    expect_pwfile_refused("control character");
    set_pw("bad\xff utf8\n", 0600);
    expect_pwfile_refused("not valid UTF-8");
    write_file(pwfile, "nul\0byte\n", 9, 0600);
    expect_pwfile_refused("control character");
    memset(big, 'p', sizeof(big));
    big[PMM_CTL_PASSWORD_MAX + 1] = '\n';
    write_file(pwfile, big, PMM_CTL_PASSWORD_MAX + 2, 0600);
    expect_pwfile_refused("longer than 1024 bytes");
    write_file(pwfile, big, sizeof(big), 0600); /* no newline at all */
    expect_pwfile_refused("longer than 1024 bytes");
    /* exactly 1024, without a trailing newline: fine */
    write_file(pwfile, big, PMM_CTL_PASSWORD_MAX, 0600);
    run_cli(&r, ANS("{\"ok\":true,\"cid\":1}\n"), NULL,
            ARGS("--socket", sock_path, "create", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 1);
    CHECK(strlen(r.req[0]) == strlen("{\"cmd\":\"create\",\"password\":\"\"}\n")
                              + PMM_CTL_PASSWORD_MAX);
    unlink(pwfile);
    expect_pwfile_refused("cannot open password file");
    {
        char saved[sizeof(pwfile)];
        memcpy(saved, pwfile, sizeof(saved));
        snprintf(pwfile, sizeof(pwfile), "%s", dir);
        expect_pwfile_refused("not a regular file");
        memcpy(pwfile, saved, sizeof(saved));
    }
}

/* ---- usage errors ----------------------------------------------------------------- */

static void expect_usage(const char *const *args)
{
    run r;

    run_cli(&r, NOANS, NULL, args);
    CHECK_EQ_INT(r.rc, 2);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strstr(r.err, "usage: pmgcm") != NULL);
    CHECK(strcmp(r.out, "") == 0);
    if (r.rc != 2 || r.nreq != 0) {
        printf("#   args:");
        for (const char *const *a = args; *a != NULL; a++)
            printf(" '%s'", *a);
        printf("\n");
        show(&r);
    }
}

#define S "--socket", sock_path

static void test_usage_errors(void)
{
    set_pw("pw\n", 0600);
    expect_usage(ARGS(S));
    expect_usage(ARGS(S, "frobnicate"));
    expect_usage(ARGS(S, "--bogus", "status"));
    expect_usage(ARGS(S, "status", "--bogus"));
    expect_usage(ARGS(S, "status", "extra"));
    expect_usage(ARGS(S, "status", "--output-format"));
    expect_usage(ARGS(S, "status", "--output-format", "xml"));
    expect_usage(ARGS(S, "--output-format=yaml", "status"));
    expect_usage(ARGS("--socket", "", "status"));
    expect_usage(ARGS("status", "--socket"));
    expect_usage(ARGS(S, "keygen", "extra"));
    expect_usage(ARGS(S, "create", "extra"));
    expect_usage(ARGS(S, "create", "--fingerprint", "X"));
    expect_usage(ARGS(S, "create", "--password-file"));
    expect_usage(ARGS(S, "create", "--password-file="));
    expect_usage(ARGS(S, "join"));
    expect_usage(ARGS(S, "join", "--password-file", pwfile, "--yes"));
    expect_usage(ARGS(S, "join", "10.0.0.1", "10.0.0.2"));
    expect_usage(ARGS(S, "join", "mail1.example.com", "--yes",
                      "--password-file", pwfile));
    expect_usage(ARGS(S, "join", "10.0.0.1:0", "--fingerprint", FP,
                      "--password-file", pwfile));
    expect_usage(ARGS(S, "join", "10.0.0.1:65536", "--fingerprint", FP,
                      "--password-file", pwfile));
    expect_usage(ARGS(S, "join", "fd00::1:7957:", "--fingerprint", FP,
                      "--password-file", pwfile));
    expect_usage(ARGS(S, "join", "10.0.0.1", "--fingerprint"));
    expect_usage(ARGS(S, "join", "10.0.0.1", "--fingerprint", "A B"));
    expect_usage(ARGS(S, "join", "10.0.0.1", "--fingerprint", ""));
    expect_usage(ARGS(S, "join", "10.0.0.1", "--force"));
    expect_usage(ARGS(S, "join-cmd", "10.0.0.1"));
    expect_usage(ARGS(S, "join-cmd", "--yes"));
    expect_usage(ARGS(S, "delete"));
    expect_usage(ARGS(S, "delete", "0"));
    expect_usage(ARGS(S, "delete", "65536"));
    expect_usage(ARGS(S, "delete", "-1"));
    expect_usage(ARGS(S, "delete", "abc"));
    expect_usage(ARGS(S, "delete", "1.5"));
    expect_usage(ARGS(S, "delete", " 3"));
    expect_usage(ARGS(S, "delete", "3x"));
    expect_usage(ARGS(S, "delete", "99999999999999999999"));
    expect_usage(ARGS(S, "delete", ""));
    expect_usage(ARGS(S, "delete", "3", "4"));
    expect_usage(ARGS(S, "delete", "--force", "3"));
    expect_usage(ARGS(S, "files"));
    expect_usage(ARGS(S, "files", "push"));
    expect_usage(ARGS(S, "files", "publish", "now"));
    expect_usage(ARGS(S, "files", "publish", "--force"));
    expect_usage(ARGS(S, "promote", "--confirm"));
    expect_usage(ARGS(S, "promote", "now"));
    expect_usage(ARGS(S, "promote", "--force=yes"));
    expect_usage(ARGS(S, "promote", "--yes"));
    expect_usage(ARGS(S, "sync", "10.0.0.2"));
    expect_usage(ARGS(S, "sync", "--master-ip"));
    expect_usage(ARGS(S, "sync", "--master-ip", "master.example.com"));
    expect_usage(ARGS(S, "sync", "--master_ip=10.0.0"));
    expect_usage(ARGS(S, "sync", "--masterip", "10.0.0.2"));
}

/* The fingerprint's form is checked by pmgcm itself: exit 2 before any
 * prompt or request. Echoed arguments are cut, control bytes defused. */
static void test_fingerprint_form_and_echo(void)
{
    static const char *const bad[] = {
        "X",
        "AB:CD:EF",
        /* 31 pairs */
        "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:"
        "67:89:AB:CD:EF:01:23:45:67",
        /* a G */
        "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:"
        "67:89:AB:CD:EF:01:23:45:67:8G",
        /* dashes */
        "AB-CD-EF-01-23-45-67-89-AB-CD-EF-01-23-45-67-89-AB-CD-EF-01-23-45-"
        "67-89-AB-CD-EF-01-23-45-67-89",
        /* 64 digits with one colon */
        "abcdef0123456789abcdef0123456789:bcdef0123456789abcdef0123456789",
        " " FP,
    };
    static char huge[100 * 1024 + 1];
    char arg[200];
    run r;

    set_pw("pw\n", 0600);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        expect_usage(ARGS(S, "join", "10.0.0.1", "--fingerprint", bad[i],
                          "--password-file", pwfile));
        /* on a terminal: no password is asked first */
        if (i == 0) {
            int fd = posix_openpt(O_RDWR | O_NOCTTY);
            if (fd >= 0) {
                close(fd);
                run_cli(&r, NOANS,
                        (const step[]){{"Enter join password: ", "pw"},
                                       {NULL, NULL}},
                        ARGS(S, "join", "10.0.0.1", "--fingerprint",
                             bad[i]));
                CHECK_EQ_INT(r.rc, 2);
                CHECK_EQ_INT(r.nreq, 0);
                CHECK(strstr(r.tty, "password") == NULL);
                CHECK(strstr(r.err, "is not a certificate fingerprint") !=
                      NULL);
                if (r.rc != 2)
                    show(&r);
            }
        }
    }
    /* the three good forms are sent as given */
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":4}\n"), NULL,
            ARGS(S, "join", "--no-wait", "10.0.0.1", "--fingerprint", FP_HEX,
                 "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);

    /* a 100 KB argument is echoed cut, with "..." */
    memset(huge, 'Z', sizeof(huge) - 1);
    huge[1] = '\x1b';
    run_cli(&r, NOANS, NULL, ARGS(S, huge));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strlen(r.err) < 4096);
    CHECK(strstr(r.err, "pmgcm: unknown command 'Z?ZZZ") == r.err);
    snprintf(arg, sizeof(arg), "unknown command 'Z?%.*s...'\n", 62,
             huge + 2);
    CHECK(strstr(r.err, arg) != NULL);
    CHECK(strchr(r.err, '\x1b') == NULL);
    run_cli(&r, NOANS, NULL,
            ARGS(S, "join", "10.0.0.1", "--fingerprint", huge));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strlen(r.err) < 4096);
    CHECK(strstr(r.err, "ZZZ...' is not a certificate fingerprint") != NULL);
    huge[0] = '-';
    huge[1] = '-';
    run_cli(&r, NOANS, NULL, ARGS(S, "status", huge));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strlen(r.err) < 4096);
    CHECK(strstr(r.err, "...'") != NULL);
    run_cli(&r, NOANS, NULL, ARGS(S, "delete", huge + 2));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strlen(r.err) < 4096);
    if (strlen(r.err) >= 4096)
        printf("#   stderr is %zu bytes\n", strlen(r.err));
}

/* create: a password shorter than 12 characters is refused, in words,
 * before anything is sent; 12 characters (not bytes) are enough */
static void test_create_short_password(void)
{
    run r;

    set_pw("eleven char\n", 0600);
    run_cli(&r, ANS("{\"ok\":true,\"cid\":1}\n"), NULL,
            ARGS(S, "create", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strcmp(r.err, "pmgcm: the join password is too short: 11 "
                        "characters, at least 12 are needed (anyone who "
                        "reaches the node API can try passwords; a "
                        "passphrase of a few words is fine)\n") == 0);
    if (r.rc != 1)
        show(&r);
    /* 11 characters in 20 bytes: still too short */
    set_pw("\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4"
           "\xc3\xa4\xc3\xa4" "ab\n", 0600);
    run_cli(&r, NOANS, NULL, ARGS(S, "create", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "too short: 11 characters") != NULL);
    /* twelve */
    set_pw("\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4"
           "\xc3\xa4\xc3\xa4" "abc\n", 0600);
    run_cli(&r, ANS("{\"ok\":true,\"cid\":1}\n"), NULL,
            ARGS(S, "create", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 1);
    /* join takes whatever the cluster was made with */
    set_pw("short\n", 0600);
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":2}\n"), NULL,
            ARGS(S, "join", "--no-wait", "10.0.0.1", "--fingerprint", FP,
                 "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 0);
    /* on a terminal: refused before the confirmation is asked */
    {
        int fd = posix_openpt(O_RDWR | O_NOCTTY);
        if (fd >= 0) {
            close(fd);
            run_cli(&r, NOANS,
                    (const step[]){{"Enter join password: ", "tiny"},
                                   {"Confirm join password: ", "tiny"},
                                   {NULL, NULL}},
                    ARGS(S, "create"));
            CHECK_EQ_INT(r.rc, 1);
            CHECK_EQ_INT(r.nreq, 0);
            CHECK(strstr(r.tty, "Confirm") == NULL);
            CHECK(strstr(r.err, "too short: 4 characters") != NULL);
        }
    }
}

/* ---- output formats and errors ----------------------------------------------- */

static void test_output_json(void)
{
    run r;
    const char *ok = "{\"ok\":true,\"cid\":3}\n";
    const char *bad = "{\"ok\":false,\"error\":\"not the master\"}\n";

    run_cli(&r, ANS(ok), NULL,
            ARGS("--socket", sock_path, "--output-format", "json", "delete",
                 "3"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.out, ok) == 0);
    CHECK(strcmp(r.err, "") == 0);
    run_cli(&r, ANS(ok), NULL,
            ARGS("--socket", sock_path, "delete", "3", "--output-format=json"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.out, ok) == 0);
    /* the last one wins */
    run_cli(&r, ANS(ok), NULL,
            ARGS("--output-format", "json", "--socket", sock_path, "delete",
                 "3", "--output-format", "text"));
    CHECK(strcmp(r.out, "node with cid 3 deleted from the cluster\n") == 0);
    /* an error is the answer too, and exit 1 */
    run_cli(&r, ANS(bad), NULL,
            ARGS("--socket", sock_path, "--output-format", "json", "promote"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.out, bad) == 0);
    CHECK(strcmp(r.err, "") == 0);
    /* an answer without the final newline gets one */
    run_cli(&r, ANS("{\"ok\":true,\"command\":\"x\"}"), NULL,
            ARGS("--socket", sock_path, "--output-format", "json",
                 "join-cmd"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.out, "{\"ok\":true,\"command\":\"x\"}\n") == 0);
    run_cli(&r, NOANS, NULL, ARGS("keygen", "--output-format", "json"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out, "{\"key\":\"", 8) == 0 && strlen(r.out) == 8 + 64 + 3);
    /* json-pretty (Proxmox's name): the same JSON, indented; strings with
     * brackets, commas, colons and escaped quotes stay as they are */
    run_cli(&r, ANS("{\"ok\":true,\"cid\":3,\"a\":[1,{\"s\":\"x,{[:]}\\\"y\"}],"
                    "\"e\":{},\"f\":[]}\n"), NULL,
            ARGS("--socket", sock_path, "--output-format", "json-pretty",
                 "delete", "3"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.out, "{\n"
                        "  \"ok\": true,\n"
                        "  \"cid\": 3,\n"
                        "  \"a\": [\n"
                        "    1,\n"
                        "    {\n"
                        "      \"s\": \"x,{[:]}\\\"y\"\n"
                        "    }\n"
                        "  ],\n"
                        "  \"e\": {},\n"
                        "  \"f\": []\n"
                        "}\n") == 0);
    if (r.rc != 0 || strstr(r.out, "{\n  \"ok\"") != r.out)
        show(&r);
    run_cli(&r, ANS(bad), NULL,
            ARGS("--socket", sock_path, "--output-format=json-pretty",
                 "promote"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.out, "{\n  \"ok\": false,\n  \"error\": \"not the "
                        "master\"\n}\n") == 0);
    run_cli(&r, NOANS, NULL, ARGS("keygen", "--output-format", "json-pretty"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strstr(r.out, "{\n  \"key\": \"") == r.out &&
          strlen(r.out) == 12 + 64 + 4);
}

static void test_text_errors(void)
{
    run r;
    char missing[200];

    run_cli(&r, ANS("{\"ok\":false,\"error\":\"not implemented yet\"}\n"),
            NULL, ARGS("--socket", sock_path, "join-cmd"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 1);
    CHECK(strcmp(r.err, "pmgcm: not implemented yet\n") == 0);
    CHECK(strcmp(r.out, "") == 0);
    /* terminal control sequences from the daemon are defused */
    run_cli(&r, ANS("{\"ok\":false,\"error\":\"red\\u001b[31m\\nx\"}\n"),
            NULL, ARGS("--socket", sock_path, "sync"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.err, "pmgcm: red?[31m?x\n") == 0);
    run_cli(&r, ANS("hello\n"), NULL, ARGS("--socket", sock_path, "sync"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "bad answer from pmgclusterd") != NULL);
    run_cli(&r, ANS("{\"result\":1}\n"), NULL,
            ARGS("--socket", sock_path, "sync"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "no 'ok'") != NULL);
    run_cli(&r, ANS(NULL), NULL, ARGS("--socket", sock_path, "sync"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "without an answer") != NULL);
    run_cli(&r, ANS("{\"ok\":true}\n"), NULL,
            ARGS("--socket", sock_path, "join-cmd"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "no 'command'") != NULL);
    snprintf(missing, sizeof(missing), "%s/nothing.sock", dir);
    run_cli(&r, NOANS, NULL, ARGS("--socket", missing, "promote"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "is pmgclusterd running?") != NULL);
}

/* ---- the terminal --------------------------------------------------------------- */

static void test_no_terminal(void)
{
    run r;

    run_cli(&r, NOANS, NULL, ARGS("--socket", sock_path, "create"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strcmp(r.err, "pmgcm: no terminal: use --password-file\n") == 0);
    run_cli(&r, NOANS, NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1", "--fingerprint",
                 FP));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strcmp(r.err, "pmgcm: no terminal: use --password-file\n") == 0);
    set_pw("pw\n", 0600);
    run_cli(&r, NOANS, NULL,
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1",
                 "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strstr(r.err, "no terminal to confirm") != NULL);
}

static void test_terminal_prompts(void)
{
    run r;
    int fd = posix_openpt(O_RDWR | O_NOCTTY);

    if (fd < 0) {
        printf("# no pseudo-terminals here: prompts not tested\n");
        return;
    }
    close(fd);

    /* create: asked twice, never echoed */
    run_cli(&r, ANS("{\"ok\":true,\"cid\":1,\"fingerprint\":\"AB\"}\n"),
            (const step[]){{"Enter join password: ", "tty-Secret-01"},
                           {"Confirm join password: ", "tty-Secret-01"},
                           {NULL, NULL}},
            ARGS("--socket", sock_path, "create"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 1);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"create\",\"password\":"
                           "\"tty-Secret-01\"}\n") == 0);
    CHECK(strstr(r.tty, "Confirm join password: ") != NULL);
    CHECK(strstr(r.tty, "tty-Secret-01") == NULL);
    if (r.rc != 0)
        show(&r);

    /* a mismatch: nothing sent */
    run_cli(&r, NOANS,
            (const step[]){{"Enter join password: ", "the first password"},
                           {"Confirm join password: ", "the other password"},
                           {NULL, NULL}},
            ARGS("--socket", sock_path, "create"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strcmp(r.err, "pmgcm: passwords do not match\n") == 0);

    /* end of input instead of a password */
    run_cli(&r, NOANS,
            (const step[]){{"Enter join password: ", "\x04"}, {NULL, NULL}},
            ARGS("--socket", sock_path, "create"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strstr(r.err, "no password given") != NULL);

    /* join: the fingerprint is shown; "no" aborts after asking it only */
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"fingerprint\":\"" FP "\"}\n"),
            (const step[]){{"(yes/no): ", "no"}, {NULL, NULL}},
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 2);
    CHECK(strcmp(r.req[1], "{\"cmd\":\"fingerprint\",\"ip\":\"10.0.0.1\"}\n")
          == 0);
    CHECK(strstr(r.tty, "The master's certificate fingerprint is") != NULL);
    CHECK(strstr(r.tty, "  " FP) != NULL);
    CHECK(strstr(r.tty, "Are you sure you want to join? (yes/no): ") != NULL);
    CHECK(strcmp(r.err, "pmgcm: aborted\n") == 0);
    CHECK(strstr(r.tty, "Enter join password") == NULL);
    if (r.rc != 1)
        show(&r);

    /* "yes", then the password (not echoed), then the join */
    run_cli(&r,
            ANS(NOCL, "{\"ok\":true,\"fingerprint\":\"" FP "\"}\n",
                "{\"ok\":true,\"cid\":9}\n"),
            (const step[]){{"(yes/no): ", "yes"},
                           {"Enter join password: ", "tty-Secret2"},
                           {NULL, NULL}},
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 3);
    CHECK(strcmp(r.req[2], "{\"cmd\":\"join\",\"ip\":\"10.0.0.1\","
                           "\"fingerprint\":\"" FP "\",\"password\":"
                           "\"tty-Secret2\"}\n") == 0);
    CHECK(strstr(r.tty, "tty-Secret2") == NULL);
    CHECK(strstr(r.tty, "(yes/no): yes") != NULL); /* that one is echoed */
    CHECK(strcmp(r.out, "joined cluster as cid 9\n") == 0);
    if (r.rc != 0)
        show(&r);

    /* --fingerprint given: no question, only the password */
    run_cli(&r, ANS(NOCL, "{\"ok\":true,\"cid\":9}\n"),
            (const step[]){{"Enter join password: ", "pw3"}, {NULL, NULL}},
            ARGS("--socket", sock_path, "join", "--no-wait", "10.0.0.1", "--fingerprint",
                 FP));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 2);
    CHECK(strstr(r.tty, "yes/no") == NULL);
}

/* ---- the command table: help, and the docs that must follow it ------------ */


/* no line of s is wider than w columns */
static bool lines_fit(const char *s, size_t w)
{
    while (*s != '\0') {
        size_t n = strcspn(s, "\n");
        if (n > w) {
            printf("#   %zu columns: %.*s\n", n, (int)n, s);
            return false;
        }
        s += n;
        if (*s == '\n')
            s++;
    }
    return true;
}

static void test_help(void)
{
    run r;

    run_cli(&r, NOANS, NULL, ARGS(S, "help"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 0);
    CHECK(strstr(r.out, "usage: pmgcm") == r.out);
    CHECK(lines_fit(r.out, 79));
    for (size_t i = 0; i < PMM_CMD_COUNT; i++) {
        char want[64];
        if (pmm_ctl_cmds[i].name == NULL)
            continue;
        snprintf(want, sizeof(want), "\n  %s ", pmm_ctl_cmds[i].name);
        CHECK(strstr(r.out, want) != NULL ||
              (snprintf(want, sizeof(want), "\n  %s\n",
                        pmm_ctl_cmds[i].name) > 0 &&
               strstr(r.out, want) != NULL));
        CHECK(strstr(r.out, pmm_ctl_cmds[i].help) != NULL);
    }
    for (int id = 0; id < PMM_OPT_COUNT; id++)
        if (PMM_OPTS_GLOBAL & PMM_OPT(id)) {
            char want[64];
            snprintf(want, sizeof(want), "--%s", pmm_cli_opts[id].name);
            CHECK(strstr(r.out, want) != NULL);
        }
    /* --help alone is the same text */
    {
        char first[OUT_MAX];
        memcpy(first, r.out, sizeof(first));
        run_cli(&r, NOANS, NULL, ARGS("--help"));
        CHECK_EQ_INT(r.rc, 0);
        CHECK(strcmp(r.out, first) == 0);
    }

    /* help CMD (and CMD --help) for every command: its synopsis, where it
     * runs, every option it takes */
    for (size_t i = 0; i < PMM_CMD_COUNT; i++) {
        const pmm_ctl_cmd *c = &pmm_ctl_cmds[i];
        char head[64], again[OUT_MAX];
        if (c->name == NULL)
            continue;
        run_cli(&r, NOANS, NULL, ARGS(S, "help", c->name));
        CHECK_EQ_INT(r.rc, 0);
        CHECK_EQ_INT(r.nreq, 0);
        snprintf(head, sizeof(head), "usage: pmgcm %s", c->name);
        CHECK(strstr(r.out, head) == r.out);
        CHECK(strstr(r.out, c->help) != NULL);
        CHECK(strstr(r.out, pmm_ctl_who_str(c->who)) != NULL);
        CHECK(lines_fit(r.out, 79));
        for (int id = 0; id < PMM_OPT_COUNT; id++)
            if (c->opts & PMM_OPT(id)) {
                char want[64];
                snprintf(want, sizeof(want), "--%s", pmm_cli_opts[id].name);
                CHECK(strstr(r.out, want) != NULL);
                /* its help, maybe wrapped: the first 20 characters */
                snprintf(want, sizeof(want), "%.20s", pmm_cli_opts[id].help);
                CHECK(strstr(r.out, want) != NULL);
            }
        memcpy(again, r.out, sizeof(again));
        run_cli(&r, NOANS, NULL, ARGS(S, c->name, "--help"));
        CHECK_EQ_INT(r.rc, 0);
        CHECK(strcmp(r.out, again) == 0);
    }
    run_cli(&r, NOANS, NULL, ARGS(S, "help", "frobnicate"));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err, "help: unknown command 'frobnicate'") != NULL);
    run_cli(&r, NOANS, NULL, ARGS(S, "help", "join", "delete"));
    CHECK_EQ_INT(r.rc, 2);
    /* a usage error shows the command's synopsis, also for an error found
     * before the command word */
    run_cli(&r, NOANS, NULL, ARGS(S, "--frob", "join", "10.0.0.1"));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err, "pmgcm: unknown option '--frob'\nusage: pmgcm join "
                        "<master_ip>") == r.err);
    CHECK(lines_fit(r.err, 79));
}

/* getopt_long: no abbreviations, values after '=' or apart, options
 * before the command that belong to it */
static void test_getopt(void)
{
    run r;

    expect_usage(ARGS(S, "sync", "--master-i", "10.0.0.2"));
    expect_usage(ARGS(S, "delete", "3", "--pur"));
    expect_usage(ARGS(S, "--out=json", "status"));
    expect_usage(ARGS(S, "delete", "3", "--purge=yes"));
    expect_usage(ARGS(S, "-x", "status"));
    run_cli(&r, NOANS, NULL, ARGS(S, "sync", "--master-i", "10.0.0.2"));
    CHECK(strstr(r.err, "unknown option '--master-i' (did you mean "
                        "--master-ip?)") != NULL);
    run_cli(&r, NOANS, NULL, ARGS(S, "delete", "3", "--purge=yes"));
    CHECK(strstr(r.err, "option '--purge' takes no value") != NULL);
    run_cli(&r, NOANS, NULL, ARGS(S, "delete", "3", "--force"));
    CHECK(strstr(r.err, "delete: unknown option '--force'") != NULL);
    /* a command's option before the command word */
    run_cli(&r, ANS("{\"ok\":true,\"cid\":3}\n"), NULL,
            ARGS("--purge", S, "delete", "3"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"delete\",\"cid\":3,\"purge\":true}\n")
          == 0);
    /* options after the command also under POSIXLY_CORRECT */
    setenv("POSIXLY_CORRECT", "1", 1);
    run_cli(&r, ANS("{\"ok\":true,\"cid\":3}\n"), NULL,
            ARGS("delete", "3", "--purge", S));
    unsetenv("POSIXLY_CORRECT");
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"delete\",\"cid\":3,\"purge\":true}\n")
          == 0);
    /* "--" ends the options */
    run_cli(&r, NOANS, NULL, ARGS(S, "delete", "--", "-3"));
    CHECK_EQ_INT(r.rc, 2);
    CHECK(strstr(r.err, "delete: bad cid '-3'") != NULL);
    run_cli(&r, NOANS, NULL, ARGS("--version"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strncmp(r.out, "pmgcm ", 6) == 0);
}

/* the man page's way of writing a word: '-' as "\-" */
static void man_word(char *out, size_t cap, const char *prefix,
                     const char *w)
{
    size_t o = (size_t)snprintf(out, cap, "%s", prefix);

    for (; *w != '\0' && o + 3 < cap; w++) {
        if (*w == '-')
            out[o++] = '\\';
        out[o++] = *w;
    }
    out[o] = '\0';
}

/* doc/pmgcm.1, the README, the completion: every command and option of
 * the table is in each */
static void test_docs_follow_table(void)
{
    char *man = tap_read_doc("doc/pmgcm.1");
    char *readme = tap_read_doc("README.md");
    char *comp = tap_read_doc("contrib/pmgcm.bash-completion");
    const char *cmds = comp ? strstr(comp, "local commands=\"") : NULL;

    REQUIRE(man != NULL && readme != NULL && comp != NULL && cmds != NULL);
    for (size_t i = 0; i < PMM_CMD_COUNT; i++) {
        const pmm_ctl_cmd *c = &pmm_ctl_cmds[i];
        char want[96];
        const char *end = strchr(cmds, '\n');
        if (c->name == NULL)
            continue;
        man_word(want, sizeof(want), "\n.B ", c->name);
        if (strstr(man, want) == NULL)
            printf("#   doc/pmgcm.1 has no paragraph for %s (%s)\n", c->name,
                   want + 1);
        CHECK(strstr(man, want) != NULL);
        snprintf(want, sizeof(want), "pmgcm %s", c->name);
        if (strstr(readme, want) == NULL)
            printf("#   README.md never shows `%s`\n", want);
        CHECK(strstr(readme, want) != NULL);
        snprintf(want, sizeof(want), " %s ", c->name);
        {
            /* the word in the completion's command list */
            char list[512];
            size_t n = (size_t)(end - cmds);
            snprintf(list, sizeof(list), " %.*s ", (int)(n < 500 ? n : 500),
                     cmds + strlen("local commands=\""));
            char *q = strchr(list, '"');
            if (q != NULL)
                memcpy(q, " ", 2);
            if (strstr(list, want) == NULL)
                printf("#   the completion's commands lack %s\n", c->name);
            CHECK(strstr(list, want) != NULL);
        }
    }
    for (int id = 0; id < PMM_OPT_COUNT; id++) {
        char want[96];
        man_word(want, sizeof(want), "\\-\\-", pmm_cli_opts[id].name);
        if (strstr(man, want) == NULL)
            printf("#   doc/pmgcm.1 lacks %s\n", want);
        CHECK(strstr(man, want) != NULL);
        snprintf(want, sizeof(want), "--%s", pmm_cli_opts[id].name);
        if (strstr(comp, want) == NULL)
            printf("#   the completion lacks %s\n", want);
        CHECK(strstr(comp, want) != NULL);
        if (strstr(readme, want) == NULL)
            printf("#   README.md never names %s\n", want);
        CHECK(strstr(readme, want) != NULL);
    }
    /* the completion offers each command's own options */
    for (size_t i = 0; i < PMM_CMD_COUNT; i++) {
        const pmm_ctl_cmd *c = &pmm_ctl_cmds[i];
        char want[96];
        const char *row, *eol;
        if (c->name == NULL || c->opts == 0)
            continue;
        snprintf(want, sizeof(want), "\n        %s) opts=\"", c->name);
        row = strstr(comp, want);
        CHECK(row != NULL);
        if (row == NULL) {
            printf("#   the completion has no opts for %s\n", c->name);
            continue;
        }
        eol = strchr(row + 1, '\n');
        for (int id = 0; id < PMM_OPT_COUNT; id++)
            if (c->opts & PMM_OPT(id)) {
                const char *at;
                snprintf(want, sizeof(want), "--%s", pmm_cli_opts[id].name);
                at = strstr(row, want);
                CHECK(at != NULL && at < eol);
            }
    }
    free(man);
    free(readme);
    free(comp);
}

/* every wire command of the table is what the daemon's parser accepts,
 * and what pmgcm sends for it parses back to the same row */
static void test_table_and_parser(void)
{
    for (size_t i = 0; i < PMM_CMD_COUNT; i++) {
        const pmm_ctl_cmd *c = &pmm_ctl_cmds[i];
        char req[128], err[PMM_CTL_ERR_MAX];
        const char *cmd = NULL;
        pmm_json *args = NULL;
        bool needs = false;
        CHECK(c->id == (pmm_ctl_id)i);
        CHECK(c->help != NULL && strlen(c->help) < 60);
        CHECK(c->synopsis != NULL);
        CHECK(c->min_pos <= c->max_pos && c->max_pos <= 2);
        if (c->name != NULL)
            CHECK(pmm_ctl_cmd_by_name(c->name) == c);
        if (c->wire == NULL)
            continue;
        CHECK(pmm_ctl_cmd_by_wire(c->wire) == c);
        for (int k = 0; k < PMM_CTL_ARGS_MAX && c->args[k].key; k++)
            needs |= c->args[k].required;
        snprintf(req, sizeof(req), "{\"cmd\":\"%s\"}\n", c->wire);
        int rc = pmm_ctl_parse_request(req, strlen(req), &cmd, &args, err,
                                       sizeof(err));
        CHECK_EQ_INT(rc, needs ? -EINVAL : 0);
        if (rc == 0)
            CHECK(strcmp(cmd, c->wire) == 0);
        pmm_json_free(args);
    }
    for (int id = 0; id < PMM_OPT_COUNT; id++)
        CHECK(pmm_cli_opts[id].name != NULL && pmm_cli_opts[id].help != NULL &&
              strlen(pmm_cli_opts[id].help) < 80);
}

/* ---- join: membership first ------------------------------------------------- */

static void test_join_member_first(void)
{
    run r;
    const char *in_cluster =
        "{\"ok\":true,\"members\":[{\"name\":\"pmg5\",\"cid\":1,\"ip\":"
        "\"192.168.2.127\",\"role\":\"master\"},{\"name\":\"pmg6\",\"cid\":2,"
        "\"ip\":\"192.168.2.128\",\"role\":\"node\"}],\"cluster\":{"
        "\"cluster_id\":\"00\",\"epoch\":1,\"version\":3,\"master_cid\":1}}\n";
    int fd = posix_openpt(O_RDWR | O_NOCTTY);

    /* on a terminal, without --fingerprint or a password file: nothing is
     * asked */
    if (fd >= 0) {
        close(fd);
        run_cli(&r, ANS(in_cluster), (const step[]){{NULL, NULL}},
                ARGS(S, "join", "10.0.0.1"));
        CHECK_EQ_INT(r.rc, 1);
        CHECK_EQ_INT(r.nreq, 1);
        CHECK(strcmp(r.req[0], "{\"cmd\":\"status\"}\n") == 0);
        CHECK(strcmp(r.err, "pmgcm: this node is already in a cluster "
                            "(master pmg5, cid 1, at 192.168.2.127): nothing "
                            "done; to move it, delete it on that master "
                            "first\n") == 0);
        CHECK(strstr(r.tty, "password") == NULL);
        CHECK(strstr(r.tty, "fingerprint") == NULL);
        if (r.rc != 1)
            show(&r);
    }
    set_pw("pw\n", 0600);
    run_cli(&r, ANS(in_cluster), NULL,
            ARGS(S, "--output-format", "json", "join", "10.0.0.1", "--yes",
                 "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 1);
    CHECK(strncmp(r.out, "{\"ok\":false,\"error\":\"this node is already in "
                         "a cluster", 50) == 0);
    /* a hostile master name: made printable for the terminal, then
     * escaped in the JSON error */
    run_cli(&r, ANS("{\"ok\":true,\"members\":[{\"name\":\"p\\\"g\\\\<b>"
                    "\\u0007\\u00e9\",\"cid\":1,\"ip\":\"192.168.2.127\","
                    "\"role\":\"master\"}],\"cluster\":{\"cluster_id\":"
                    "\"00\",\"epoch\":1,\"version\":3,\"master_cid\":1}}\n"),
            NULL, ARGS(S, "--output-format", "json", "join", "10.0.0.1",
                       "--yes", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.out, "{\"ok\":false,\"error\":\"this node is already in "
                        "a cluster (master p\\\"g\\\\<b>???, cid 1, at "
                        "192.168.2.127): nothing done; to move it, delete "
                        "it on that master first\"}\n") == 0);
    if (r.rc != 1)
        show(&r);
    /* the daemon cannot be asked: stop there too */
    run_cli(&r, ANS("{\"ok\":false,\"error\":\"gossip is not running "
                    "yet\"}\n"), NULL,
            ARGS(S, "join", "10.0.0.1", "--yes", "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 1);
    CHECK(strcmp(r.err, "pmgcm: gossip is not running yet\n") == 0);
    run_cli(&r, ANS("{\"ok\":false,\"error\":\"gossip is not running "
                    "yet\"}\n"), NULL,
            ARGS(S, "--output-format", "json", "join", "10.0.0.1", "--yes",
                 "--password-file", pwfile));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.out, "{\"ok\":false,\"error\":\"gossip is not running "
                        "yet\"}\n") == 0);
}

/* ---- update-fingerprints ---------------------------------------------------- */

#define FP2 "11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:" \
            "66:77:88:99:AA:BB:CC:DD:EE:FF:00"
static const char upfp_probe[] =
    "{\"ok\":true,\"nodes\":[{\"cid\":1,\"name\":\"pmg5\",\"ip\":\"10.0.0.1\","
    "\"state\":\"unchanged\",\"fingerprint\":\"" FP "\"},{\"cid\":2,\"name\":"
    "\"pmg6\",\"ip\":\"10.0.0.2\",\"state\":\"changed\",\"fingerprint\":\""
    FP "\",\"presented\":\"" FP2 "\"},{\"cid\":3,\"name\":\"pmg7\",\"ip\":"
    "\"10.0.0.3\",\"state\":\"unchanged\",\"fingerprint\":\"" FP "\"}],"
    "\"changed\":1}\n";

static void test_update_fingerprints(void)
{
    run r;
    int fd;

    /* --yes: the change is pinned with exactly the fingerprint shown */
    run_cli(&r, ANS(upfp_probe, "{\"ok\":true,\"cid\":2,\"updated\":true}\n"),
            NULL, ARGS(S, "update-fingerprints", "--yes"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK_EQ_INT(r.nreq, 2);
    CHECK(strcmp(r.req[0], "{\"cmd\":\"update-fingerprints\"}\n") == 0);
    CHECK(strcmp(r.req[1], "{\"cmd\":\"update-fingerprints\",\"cid\":2,"
                           "\"fingerprint\":\"" FP2 "\"}\n") == 0);
    CHECK(strstr(r.out, "pmg5 (cid 1, 10.0.0.1): unchanged\n") != NULL);
    CHECK(strstr(r.out, "pmg6 (cid 2, 10.0.0.2): its certificate CHANGED\n"
                        "    pinned:    " FP "\n    presents:  " FP2 "\n"
                        "    pinned the new fingerprint\n") != NULL);
    CHECK(strstr(r.out, "fingerprints up to date (new ones pinned)\n") != NULL);
    {
        /* what pmgcm sends parses on the daemon's side */
        const char *cmd;
        pmm_json *args = NULL;
        char err[PMM_CTL_ERR_MAX];
        CHECK(pmm_ctl_parse_request(r.req[1], strlen(r.req[1]), &cmd, &args,
                                    err, sizeof(err)) == 0);
        pmm_json_free(args);
    }
    if (r.rc != 0)
        show(&r);

    /* no terminal, no --yes: shown, not pinned, exit 1 */
    run_cli(&r, ANS(upfp_probe), NULL, ARGS(S, "update-fingerprints"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK_EQ_INT(r.nreq, 1);
    CHECK(strstr(r.out, "not pinned (confirm with yes, or --yes)") != NULL);
    CHECK(strstr(r.out, "1 changed certificate(s) not pinned") != NULL);

    /* on a terminal: "no" keeps the old one, "yes" pins */
    fd = posix_openpt(O_RDWR | O_NOCTTY);
    if (fd >= 0) {
        close(fd);
        run_cli(&r, ANS(upfp_probe),
                (const step[]){{"Pin the new one? (yes/no): ", "no"},
                               {NULL, NULL}},
                ARGS(S, "update-fingerprints"));
        CHECK_EQ_INT(r.rc, 1);
        CHECK_EQ_INT(r.nreq, 1);
        run_cli(&r, ANS(upfp_probe, "{\"ok\":true,\"updated\":true}\n"),
                (const step[]){{"Pin the new one? (yes/no): ", "yes"},
                               {NULL, NULL}},
                ARGS(S, "update-fingerprints"));
        CHECK_EQ_INT(r.rc, 0);
        CHECK_EQ_INT(r.nreq, 2);
        CHECK(strstr(r.tty, "\"fingerprint\"") != NULL);
        if (r.rc != 0)
            show(&r);
    }

    /* an unreachable node: reported, exit 1; json: one document. Then
     * the same with a hostile name and error: made printable for the
     * terminal, escaped in the JSON document, which parses */
    static const struct {
        const char *name, *err;          /* as the daemon sends them */
        const char *name_out, *err_out;  /* in pmgcm's document */
    } unreach[] = {
        {"pmg6", "connection refused", "pmg6", "connection refused"},
        {"p\\\"g\\\\<script>\\u0001\\u00e9", "refused \\\"x\\\"\\n</script>",
         "p\\\"g\\\\<script>???", "refused \\\"x\\\"?</script>"},
    };
    for (size_t k = 0; k < sizeof(unreach) / sizeof(unreach[0]); k++) {
        char ans[512], want[512];
        pmm_json *j = NULL;
        char err[128];
        snprintf(ans, sizeof(ans), "{\"ok\":true,\"nodes\":[{\"cid\":2,"
                 "\"name\":\"%s\",\"ip\":\"10.0.0.2\",\"state\":"
                 "\"unreachable\",\"fingerprint\":\"" FP "\",\"error\":"
                 "\"%s\"}],\"changed\":0}\n", unreach[k].name,
                 unreach[k].err);
        snprintf(want, sizeof(want), "{\"ok\":true,\"nodes\":[{\"cid\":2,"
                 "\"name\":\"%s\",\"ip\":\"10.0.0.2\",\"state\":"
                 "\"unreachable\",\"fingerprint\":\"" FP "\",\"error\":"
                 "\"%s\"}],\"pinned\":0,\"not_pinned\":0,\"unreachable\":1}"
                 "\n", unreach[k].name_out, unreach[k].err_out);
        run_cli(&r, ANS(ans), NULL,
                ARGS(S, "--output-format", "json", "update-fingerprints"));
        CHECK_EQ_INT(r.rc, 1);
        CHECK(strcmp(r.out, want) == 0);
        CHECK(pmm_json_parse(r.out, strlen(r.out), &j, err, sizeof(err)) ==
              0);
        pmm_json_free(j);
    }
    /* --yes with json: the pinned node shows "updated" and the new
     * fingerprint, the others as the daemon said */
    run_cli(&r, ANS(upfp_probe, "{\"ok\":true,\"cid\":2,\"updated\":true}\n"),
            NULL, ARGS(S, "--output-format", "json", "update-fingerprints",
                       "--yes"));
    CHECK_EQ_INT(r.rc, 0);
    CHECK(strcmp(r.out, "{\"ok\":true,\"nodes\":[{\"cid\":1,\"name\":\"pmg5\","
                        "\"ip\":\"10.0.0.1\",\"state\":\"unchanged\","
                        "\"fingerprint\":\"" FP "\"},{\"cid\":2,\"name\":"
                        "\"pmg6\",\"ip\":\"10.0.0.2\",\"state\":\"updated\","
                        "\"fingerprint\":\"" FP2 "\"},{\"cid\":3,\"name\":"
                        "\"pmg7\",\"ip\":\"10.0.0.3\",\"state\":"
                        "\"unchanged\",\"fingerprint\":\"" FP "\"}],"
                        "\"pinned\":1,\"not_pinned\":0,\"unreachable\":0}\n")
          == 0);
    if (r.rc != 0)
        show(&r);
    /* the daemon refuses (not the master) */
    run_cli(&r, ANS("{\"ok\":false,\"error\":\"only the master can update "
                    "fingerprints; the master is pmg5 (10.0.0.1)\"}\n"),
            NULL, ARGS(S, "update-fingerprints"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strstr(r.err, "only the master can update fingerprints") != NULL);
    run_cli(&r, ANS("{\"ok\":false,\"error\":\"no cluster defined\"}\n"),
            NULL, ARGS(S, "update-fingerprints", "--output-format=json"));
    CHECK_EQ_INT(r.rc, 1);
    CHECK(strcmp(r.out, "{\"ok\":false,\"error\":\"no cluster defined\"}\n")
          == 0);
}

/* ---- the progress line -------------------------------------------------------- */

static void test_progress_line(void)
{
    char line[2048];
    pmc_progress with = {.state = "loading", .error = "",
                         .rows = 400000, .est_rows = 1000000,
                         .bytes = 41e6, .est_bytes = 100e6,
                         .tables_done = 3, .tables = 7, .elapsed_ms = 8200};
    pmc_progress none = with; /* PostgreSQL gave no estimate */
    pmc_progress wait = {.state = "waiting", .error =
        "cannot reach the master at 10.0.0.1:7947: connection refused; "
        "retrying in 5 s, and this reason is long enough to need cutting"};

    none.est_rows = 0;
    none.est_bytes = 0;
    for (int w = 0; w <= 300; w++) {
        const pmc_progress *ps[] = {&with, &none, &wait};
        for (size_t k = 0; k < 3; k++) {
            size_t n = pmc_progress_line(line, sizeof(line), w, ps[k]);
            size_t lim = (size_t)(w < 20 ? 20 : w) - 1;
            CHECK(n == strlen(line));
            if (n > lim)
                printf("#   width %d: %zu characters: %s\n", w, n, line);
            CHECK(n <= lim);
            for (size_t i = 0; i < n; i++)
                CHECK((unsigned char)line[i] >= 0x20 &&
                      (unsigned char)line[i] < 0x7f);
            CHECK(strncmp(line, k == 2 ? "waiting" : "snapshot",
                          k == 2 ? 7 : 8) == 0);
        }
    }
    pmc_progress_line(line, sizeof(line), 80, &with);
    printf("#   80: %s\n", line);
    CHECK(strstr(line, " [#") != NULL);
    CHECK(strstr(line, " 40%") != NULL);
    CHECK(strstr(line, "41.0 MB/~100.0 MB") != NULL);
    CHECK(strstr(line, "5.0 MB/s") != NULL);
    CHECK(strstr(line, "ETA 12s") != NULL);
    pmc_progress_line(line, sizeof(line), 132, &with);
    printf("#   132: %s\n", line);
    CHECK(strstr(line, "tables 3/7") != NULL);
    CHECK(strstr(line, "rows 400000/~1000000") != NULL);
    /* no estimate: bytes and rate, no bar, no percentage */
    pmc_progress_line(line, sizeof(line), 80, &none);
    printf("#   80, no estimate: %s\n", line);
    CHECK(strstr(line, "41.0 MB") != NULL);
    CHECK(strstr(line, "5.0 MB/s") != NULL);
    CHECK(strchr(line, '[') == NULL && strchr(line, '%') == NULL);
    CHECK(strstr(line, "8s") != NULL);
    /* bytes estimate only: a bar from the bytes */
    none.est_bytes = 82e6;
    pmc_progress_line(line, sizeof(line), 80, &none);
    CHECK(strstr(line, " 50%") != NULL);
    /* narrow: the bar and the percentage survive longest after bytes */
    pmc_progress_line(line, sizeof(line), 40, &with);
    printf("#   40: %s\n", line);
    CHECK(strstr(line, "[") != NULL && strstr(line, "40%") != NULL);
    /* waiting, with its reason cut to the width */
    pmc_progress_line(line, sizeof(line), 80, &wait);
    CHECK(strncmp(line, "waiting for a snapshot: cannot reach", 36) == 0);
    CHECK(strlen(line) == 79);
    /* the terminal's width: $COLUMNS without a terminal, else 80 */
    setenv("COLUMNS", "132", 1);
    CHECK_EQ_INT(pmc_term_width(-1), 132);
    setenv("COLUMNS", "13x", 1);
    CHECK_EQ_INT(pmc_term_width(-1), 80);
    unsetenv("COLUMNS");
    CHECK_EQ_INT(pmc_term_width(-1), 80);
}

int main(void)
{
    const char *top = getenv("abs_top_builddir");
    struct sockaddr_un sa;
    struct stat st;

    signal(SIGPIPE, SIG_IGN);
    if (top != NULL && top[0] != '\0')
        snprintf(bin, sizeof(bin), "%s/cli/pmgcm", top);
    else
        snprintf(bin, sizeof(bin), "cli/pmgcm");
    if (stat(bin, &st) != 0 || !(st.st_mode & S_IXUSR)) {
        printf("Bail out! pmgcm binary not found at %s (set "
               "abs_top_builddir)\n", bin);
        return 1;
    }
    snprintf(dir, sizeof(dir), "/tmp/test_mcli.XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(sock_path, sizeof(sock_path), "%s/ctl.sock", dir);
    snprintf(pwfile, sizeof(pwfile), "%s/pw", dir);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(lfd, 8) != 0) {
        printf("Bail out! cannot listen on %s: %s\n", sock_path,
               strerror(errno));
        return 1;
    }
    printf("# pmgcm: %s\n", bin);
    TAP_RUN(test_join_request);
    TAP_RUN(test_join_waits_for_data);
    TAP_RUN(test_commands);
    TAP_RUN(test_join_fetches_fingerprint);
    TAP_RUN(test_password_file);
    TAP_RUN(test_usage_errors);
    TAP_RUN(test_fingerprint_form_and_echo);
    TAP_RUN(test_create_short_password);
    TAP_RUN(test_output_json);
    TAP_RUN(test_text_errors);
    TAP_RUN(test_no_terminal);
    TAP_RUN(test_terminal_prompts);
    TAP_RUN(test_help);
    TAP_RUN(test_getopt);
    TAP_RUN(test_docs_follow_table);
    TAP_RUN(test_table_and_parser);
    TAP_RUN(test_join_member_first);
    TAP_RUN(test_update_fingerprints);
    TAP_RUN(test_progress_line);
    close(lfd);
    unlink(sock_path);
    unlink(pwfile);
    {
        char p[128];
        snprintf(p, sizeof(p), "%s/out", dir);
        unlink(p);
        snprintf(p, sizeof(p), "%s/err", dir);
        unlink(p);
    }
    rmdir(dir);
    return tap_done();
}
