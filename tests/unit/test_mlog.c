/*
 * test_mlog.c - pmm_log's two line formats (journald priorities when stderr
 * is the journal, UTC timestamps otherwise) and pmm_sd_notify.
 *
 * Every TAP_RUN is its own process (tests/tap.h): pmm_log decides once per
 * process whether stderr is the journal, so each test sets JOURNAL_STREAM
 * and stderr before its first line.
 */
#include "membership/membership.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static char path[64];

/* stderr goes to a fresh temp file; returns its fd (still open) */
static int capture_stderr(void)
{
    int fd;

    snprintf(path, sizeof(path), "/tmp/test_mlog.%ld.XXXXXX", (long)getpid());
    fd = mkstemp(path);
    if (fd < 0)
        return -1;
    fflush(stderr);
    if (dup2(fd, STDERR_FILENO) < 0)
        return -1;
    return fd;
}

static size_t read_back(char *buf, size_t len)
{
    FILE *f;
    size_t n;

    fflush(stderr);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    unlink(path);
    return n;
}

static void set_journal_stream(int fd)
{
    struct stat st;
    char v[64];

    REQUIRE(fstat(fd, &st) == 0);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", v, 1);
}

static void test_journal_stream_parse(void)
{
    int fd = capture_stderr();
    struct stat st;
    char v[64];

    REQUIRE(fd >= 0);
    REQUIRE(fstat(fd, &st) == 0);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    CHECK_EQ_INT(pmm_log_journal_stream(v, fd), 1);
    snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    CHECK_EQ_INT(pmm_log_journal_stream(v, fd), 0);
    snprintf(v, sizeof(v), "%llu:%llux", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    CHECK_EQ_INT(pmm_log_journal_stream(v, fd), 0);
    CHECK_EQ_INT(pmm_log_journal_stream(NULL, fd), 0);
    CHECK_EQ_INT(pmm_log_journal_stream("", fd), 0);
    CHECK_EQ_INT(pmm_log_journal_stream("12", fd), 0);
    CHECK_EQ_INT(pmm_log_journal_stream("1:2", -1), 0);
    close(fd);
    unlink(path);
}

/* stderr is the journal: "<N>" priorities, no timestamps */
static void test_journal_priorities(void)
{
    char buf[4096];
    int fd = capture_stderr();

    REQUIRE(fd >= 0);
    set_journal_stream(fd);
    pmm_log_set_level(PMM_LOG_DEBUG);
    pmm_log(PMM_LOG_ERROR, "store", "database down: %s", "gone");
    pmm_log(PMM_LOG_WARN, "gossip", "w");
    pmm_log(PMM_LOG_INFO, "daemon", "i");
    pmm_log(PMM_LOG_DEBUG, "ctl", "d");
    read_back(buf, sizeof(buf));
    close(fd);
    CHECK(strcmp(buf, "<3>error store: database down: gone\n"
                      "<4>warn gossip: w\n"
                      "<6>info daemon: i\n"
                      "<7>debug ctl: d\n") == 0);
    if (strncmp(buf, "<3>", 3) != 0)
        printf("#   got: %s", buf);
}

/* stderr is not the journal (JOURNAL_STREAM names another file, as when
 * StandardError= points elsewhere): UTC timestamps, no priorities */
static void test_timestamps_otherwise(void)
{
    char buf[4096];
    int other = open("/dev/null", O_RDONLY);
    int fd = capture_stderr();
    unsigned y, mo, d, h, mi, s, ms;
    char lvl[16], rest[128];

    REQUIRE(fd >= 0 && other >= 0);
    set_journal_stream(other);
    pmm_log(PMM_LOG_WARN, "files", "%s", "x");
    read_back(buf, sizeof(buf));
    close(fd);
    close(other);
    CHECK(sscanf(buf, "%4u-%2u-%2uT%2u:%2u:%2u.%3uZ %15s %127[^\n]", &y, &mo,
                 &d, &h, &mi, &s, &ms, lvl, rest) == 9);
    CHECK(y >= 2024 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h < 24 &&
          mi < 60 && s <= 60 && ms < 1000);
    CHECK(strcmp(lvl, "warn") == 0);
    CHECK(strcmp(rest, "files: x") == 0);
    CHECK(strstr(buf, "Z warn files: x\n") != NULL);
    CHECK(buf[0] != '<');
}

/* libpq's multi-line messages make one line; other control characters
 * (a hostile name) still show as '?' */
static void test_one_line(void)
{
    char buf[4096];
    int fd = capture_stderr();

    REQUIRE(fd >= 0);
    set_journal_stream(fd);
    pmm_log(PMM_LOG_ERROR, "store", "%s",
            "connection to server failed: No such file\n\tIs the server "
            "running?\n");
    pmm_log(PMM_LOG_INFO, "gossip", "%s", "bad\x1b[31mname\r\x7f");
    read_back(buf, sizeof(buf));
    close(fd);
    CHECK(strcmp(buf, "<3>error store: connection to server failed: No such "
                      "file  Is the server running?\n"
                      "<6>info gossip: bad?[31mname??\n") == 0);
    if (strncmp(buf, "<3>", 3) != 0)
        printf("#   got: %s", buf);
}

/* the JSON line itself: every string escaped, nothing else added */
static void test_json_line_escaping(void)
{
    char out[512];

    CHECK_EQ_INT(pmm_log_json_line(out, sizeof(out),
                                   "2026-12-02T06:40:01.123Z", PMM_LOG_WARN,
                                   "files", "plain"), 0);
    CHECK(strcmp(out, "{\"time\":\"2026-12-02T06:40:01.123Z\",\"level\":"
                      "\"warn\",\"subsystem\":\"files\",\"message\":"
                      "\"plain\"}\n") == 0);
    /* quotes, backslashes, control characters, DEL, UTF-8 kept, an
     * invalid byte as U+FFFD */
    CHECK_EQ_INT(pmm_log_json_line(out, sizeof(out), "T", PMM_LOG_ERROR,
                                   "st\"ore",
                                   "a\"b\\c\x01\x1b[31m\x7f caf\xc3\xa9 "
                                   "\xff end\n\t\r"), 0);
    CHECK(strcmp(out, "{\"time\":\"T\",\"level\":\"error\",\"subsystem\":"
                      "\"st\\\"ore\",\"message\":\"a\\\"b\\\\c\\u0001"
                      "\\u001b[31m\\u007f caf\xc3\xa9 \\ufffd end\\n"
                      "\\t\\r\"}\n") == 0);
    if (strncmp(out, "{\"time\":\"T\"", 11) != 0 || strstr(out, "end") == NULL)
        printf("#   got: %s", out);
    /* what it wrote is JSON, and gives the message back */
    {
        pmm_json *j = NULL;
        char e[128];
        REQUIRE(pmm_json_parse(out, strlen(out), &j, e, sizeof(e)) == 0);
        const pmm_json *m = pmm_json_get(j, "message");
        CHECK(m != NULL && m->type == PMM_JSON_STRING &&
              strcmp(m->str, "a\"b\\c\x01\x1b[31m\x7f caf\xc3\xa9 "
                             "\xef\xbf\xbd end\n\t\r") == 0);
        CHECK(pmm_json_get(j, "level") != NULL);
        CHECK_EQ_INT(j->n_child, 4);
        pmm_json_free(j);
    }
    /* too small: refused, never cut in the middle of an object */
    CHECK_EQ_INT(pmm_log_json_line(out, 20, "T", PMM_LOG_INFO, "x", "y"),
                 -E2BIG);
    CHECK_EQ_INT(pmm_log_json_line(out, sizeof(out), "T", (pmm_log_level)9,
                                   "x", "y"), -EINVAL);
    CHECK_EQ_INT(pmm_log_json_line(out, sizeof(out), "T", PMM_LOG_INFO,
                                   NULL, "y"), -EINVAL);
}

/* log_format = json, not under the journal: one object per line, a UTC
 * time with milliseconds; libpq's lines folded as in text */
static void test_json_format(void)
{
    char buf[8192];
    int other = open("/dev/null", O_RDONLY);
    int fd = capture_stderr();
    unsigned y, mo, d, h, mi, s, ms;
    char rest[4096];

    REQUIRE(fd >= 0 && other >= 0);
    set_journal_stream(other);
    pmm_log_set_format(PMM_LOG_JSON);
    CHECK_EQ_INT(pmm_log_get_format(), PMM_LOG_JSON);
    pmm_log(PMM_LOG_WARN, "files", "%s", "x \"quoted\"");
    pmm_log(PMM_LOG_ERROR, "store", "%s",
            "connection to server failed: No such file\n\tIs the server "
            "running?\n");
    pmm_log(PMM_LOG_DEBUG, "gossip", "not shown at info");
    pmm_log(PMM_LOG_INFO, "gossip", "%s", "bad\x1b[31mname\x7f");
    pmm_log_set_format((pmm_log_format)7); /* ignored */
    CHECK_EQ_INT(pmm_log_get_format(), PMM_LOG_JSON);
    pmm_log_set_format(PMM_LOG_TEXT);
    pmm_log(PMM_LOG_INFO, "daemon", "back to text");
    read_back(buf, sizeof(buf));
    close(fd);
    close(other);
    CHECK(sscanf(buf, "{\"time\":\"%4u-%2u-%2uT%2u:%2u:%2u.%3uZ\",%4095[^\n]",
                 &y, &mo, &d, &h, &mi, &s, &ms, rest) == 8);
    CHECK(y >= 2024 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h < 24 &&
          mi < 60 && s <= 60 && ms < 1000);
    CHECK(strncmp(rest, "\"level\":\"warn\",\"subsystem\":\"files\","
                        "\"message\":\"x \\\"quoted\\\"\"}", 60) == 0);
    CHECK(strstr(buf, "\"level\":\"error\",\"subsystem\":\"store\","
                      "\"message\":\"connection to server failed: No such "
                      "file  Is the server running?\"}\n") != NULL);
    CHECK(strstr(buf, "\"message\":\"bad\\u001b[31mname\\u007f\"}\n") !=
          NULL);
    CHECK(strstr(buf, "not shown") == NULL);
    /* every JSON line is one object; then text again */
    {
        int lines = 0;
        for (char *l = buf; *l;) {
            char *e = strchr(l, '\n');
            REQUIRE(e != NULL);
            *e = '\0';
            if (lines < 3) {
                pmm_json *j = NULL;
                char er[128];
                CHECK(pmm_json_parse(l, strlen(l), &j, er, sizeof(er)) == 0);
                CHECK(j != NULL && j->type == PMM_JSON_OBJECT &&
                      j->n_child == 4);
                pmm_json_free(j);
            } else {
                CHECK(strstr(l, "Z info daemon: back to text") != NULL);
            }
            lines++;
            l = e + 1;
        }
        CHECK_EQ_INT(lines, 4);
    }
}

/* json under the journal: the priority stays in front */
static void test_json_journal(void)
{
    char buf[4096];
    int fd = capture_stderr();

    REQUIRE(fd >= 0);
    set_journal_stream(fd);
    pmm_log_set_format(PMM_LOG_JSON);
    pmm_log(PMM_LOG_ERROR, "store", "database down");
    pmm_log(PMM_LOG_INFO, "daemon", "i");
    read_back(buf, sizeof(buf));
    close(fd);
    CHECK(strncmp(buf, "<3>{\"time\":\"", 12) == 0);
    CHECK(strstr(buf, "Z\",\"level\":\"error\",\"subsystem\":\"store\","
                      "\"message\":\"database down\"}\n<6>{\"time\":\"") !=
          NULL);
    CHECK(strstr(buf, "\"level\":\"info\",\"subsystem\":\"daemon\","
                      "\"message\":\"i\"}\n") != NULL);
    if (strncmp(buf, "<3>{", 4) != 0)
        printf("#   got: %s", buf);
}

static int dgram_listen(struct sockaddr_un *sa, socklen_t len)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)sa, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void test_sd_notify(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char got[256];
    ssize_t n;
    int fd;

    /* not under systemd: nothing to do */
    unsetenv("NOTIFY_SOCKET");
    CHECK_EQ_INT(pmm_sd_notify("READY=1"), 0);

    /* a path */
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/test_mlog.%ld.sock",
             (long)getpid());
    unlink(sa.sun_path);
    fd = dgram_listen(&sa, sizeof(sa));
    REQUIRE(fd >= 0);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    CHECK_EQ_INT(pmm_sd_notify("READY=1\nSTATUS=x"), 0);
    n = recv(fd, got, sizeof(got) - 1, MSG_DONTWAIT);
    CHECK(n == 16);
    got[n < 0 ? 0 : n] = '\0';
    CHECK(strcmp(got, "READY=1\nSTATUS=x") == 0);
    close(fd);
    unlink(sa.sun_path);
    /* nobody listening: an error, no hang */
    CHECK(pmm_sd_notify("STOPPING=1") < 0);

    /* the abstract namespace, as systemd passes it ("@name") */
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    n = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "test_mlog.%ld",
                 (long)getpid());
    fd = dgram_listen(&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                       1 + (size_t)n));
    REQUIRE(fd >= 0);
    {
        char env[120];
        snprintf(env, sizeof(env), "@%s", sa.sun_path + 1);
        setenv("NOTIFY_SOCKET", env, 1);
    }
    CHECK_EQ_INT(pmm_sd_notify("STOPPING=1"), 0);
    n = recv(fd, got, sizeof(got) - 1, MSG_DONTWAIT);
    got[n < 0 ? 0 : n] = '\0';
    CHECK(strcmp(got, "STOPPING=1") == 0);
    close(fd);

    /* not a socket address */
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    CHECK_EQ_INT(pmm_sd_notify("READY=1"), -EINVAL);
    setenv("NOTIFY_SOCKET", "@", 1);
    CHECK_EQ_INT(pmm_sd_notify("READY=1"), -EINVAL);
}

int main(void)
{
    TAP_RUN(test_journal_stream_parse);
    TAP_RUN(test_journal_priorities);
    TAP_RUN(test_timestamps_otherwise);
    TAP_RUN(test_one_line);
    TAP_RUN(test_json_line_escaping);
    TAP_RUN(test_json_format);
    TAP_RUN(test_json_journal);
    TAP_RUN(test_sd_notify);
    return tap_done();
}
