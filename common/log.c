/*
 * log.c - "LEVEL subsystem: message" lines on stderr.
 *
 * When stderr is the journal (systemd sets JOURNAL_STREAM=DEV:INODE of the
 * stream it connected; sd-daemon(3)), each line starts with "<N>", the
 * syslog priority, which journald strips and stores (journalctl -p works);
 * journald adds the time. Otherwise each line starts with the UTC time,
 * "2026-12-02T06:40:01.123Z ".
 *
 * log_format = json makes each line one JSON object instead,
 * {"time":"2026-12-02T06:40:01.123Z","level":"warn","subsystem":"files",
 * "message":"..."}, still behind "<N>" when stderr is the journal.
 */
#include "common/common.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* both read by every thread that logs, set on the loop at start and reload */
static _Atomic pmm_log_level cur_level = PMM_LOG_INFO;
static _Atomic int cur_format = PMM_LOG_TEXT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
/* syslog priorities: LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG */
static const int level_prio[] = {3, 4, 6, 7};

static pthread_once_t journal_once = PTHREAD_ONCE_INIT;
static bool to_journal;

int pmm_log_journal_stream(const char *env, int fd)
{
    unsigned long long dev, ino;
    int off = 0;
    struct stat st;

    if (env == NULL || sscanf(env, "%llu:%llu%n", &dev, &ino, &off) != 2 ||
        env[off] != '\0')
        return 0;
    if (fstat(fd, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev &&
           (unsigned long long)st.st_ino == ino;
}

static void journal_detect(void)
{
    to_journal = pmm_log_journal_stream(getenv("JOURNAL_STREAM"),
                                        STDERR_FILENO) == 1;
}

void pmm_log_set_level(pmm_log_level lvl)
{
    if (lvl >= PMM_LOG_ERROR && lvl <= PMM_LOG_DEBUG)
        cur_level = lvl;
}

void pmm_log_set_format(pmm_log_format fmt)
{
    if (fmt == PMM_LOG_TEXT || fmt == PMM_LOG_JSON)
        cur_format = fmt;
}

pmm_log_format pmm_log_get_format(void)
{
    return (pmm_log_format)cur_format;
}

pmm_log_level pmm_log_get_level(void)
{
    return cur_level;
}

const char *pmm_log_level_name(pmm_log_level lvl)
{
    if (lvl < PMM_LOG_ERROR || lvl > PMM_LOG_DEBUG)
        return "?";
    return level_names[lvl];
}

int pmm_log_level_parse(const char *s, pmm_log_level *out)
{
    for (int i = 0; i <= PMM_LOG_DEBUG; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (pmm_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* "2026-12-02T06:40:01.123Z" (UTC, milliseconds) into when, or "" */
static void utc_now(char *when, size_t len)
{
    struct timespec ts;
    struct tm tm;

    when[0] = '\0';
    if (clock_gettime(CLOCK_REALTIME, &ts) == 0 &&
        gmtime_r(&ts.tv_sec, &tm) != NULL) {
        size_t k = strftime(when, len, "%Y-%m-%dT%H:%M:%S", &tm);
        if (k > 0)
            snprintf(when + k, len - k, ".%03ldZ", ts.tv_nsec / 1000000);
    }
}

/* One JSON object (no newline) into b: every string escaped by
 * pmm_json_str (quotes, backslashes, control characters; invalid UTF-8
 * becomes U+FFFD). Written by hand on purpose, the one JSON writer not
 * through jansson (common/reply.c and the rest build json_t values): a log
 * line is written from every thread, also when memory is short, and must
 * not cost a tree of allocations; four fixed members need no library. */
static void json_line(pmm_buf *b, const char *prefix, const char *when,
                      pmm_log_level lvl, const char *subsys, const char *msg)
{
    const char *name = pmm_log_level_name(lvl);

    pmm_buf_puts(b, prefix);
    pmm_buf_puts(b, "{\"time\":");
    pmm_json_str(b, when, strlen(when));
    pmm_buf_puts(b, ",\"level\":");
    pmm_json_str(b, name, strlen(name));
    pmm_buf_puts(b, ",\"subsystem\":");
    pmm_json_str(b, subsys, strlen(subsys));
    pmm_buf_puts(b, ",\"message\":");
    pmm_json_str(b, msg, strlen(msg));
    pmm_buf_puts(b, "}\n");
}

int pmm_log_json_line(char *out, size_t cap, const char *when,
                      pmm_log_level lvl, const char *subsys, const char *msg)
{
    pmm_buf b;
    int rc;

    if (out == NULL || cap == 0 || when == NULL || subsys == NULL ||
        msg == NULL || lvl < PMM_LOG_ERROR || lvl > PMM_LOG_DEBUG)
        return -EINVAL;
    pmm_buf_init(&b, cap - 1);
    json_line(&b, "", when, lvl, subsys, msg);
    rc = b.err;
    if (rc == 0)
        memcpy(out, b.p, b.len + 1);
    pmm_buf_free(&b);
    return rc;
}

void pmm_log(pmm_log_level lvl, const char *subsys, const char *fmt, ...)
{
    char msg[1024];
    char when[32];
    char prio[8] = "";
    va_list ap;
    bool json = cur_format == PMM_LOG_JSON;

    if (lvl > cur_level)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* libpq's messages end in a newline and continue on tab-indented
     * lines: trailing blanks go, a newline or tab inside is a blank */
    for (size_t n = strlen(msg); n > 0 && (msg[n - 1] == '\n' ||
         msg[n - 1] == '\r' || msg[n - 1] == ' ' || msg[n - 1] == '\t');)
        msg[--n] = '\0';
    /* names and addresses can come from the network: no control chars,
     * one line per call (JSON escapes the others itself) */
    for (char *q = msg; *q != '\0'; q++)
        if (*q == '\n' || *q == '\t')
            *q = ' ';
        else if (!json && ((unsigned char)*q < 0x20 || *q == 0x7f))
            *q = '?';
    pthread_once(&journal_once, journal_detect);
    if (to_journal)
        snprintf(prio, sizeof(prio), "<%d>", level_prio[lvl]);
    if (json) {
        pmm_buf b;
        utc_now(when, sizeof(when));
        /* at most 6 bytes per byte of msg (\u00XX), 3 per invalid one */
        pmm_buf_init(&b, 8192);
        json_line(&b, prio, when, lvl, subsys, msg);
        if (b.err == 0) {
            /* one write per line so concurrent writers do not interleave */
            fputs(b.p, stderr);
            pmm_buf_free(&b);
            return;
        }
        pmm_buf_free(&b);
        /* out of memory: the text line below, control characters '?' */
        for (char *q = msg; *q != '\0'; q++)
            if ((unsigned char)*q < 0x20 || *q == 0x7f)
                *q = '?';
    }
    /* one write per line so concurrent writers do not interleave */
    if (to_journal) {
        fprintf(stderr, "%s%s %s: %s\n", prio, pmm_log_level_name(lvl),
                subsys, msg);
    } else {
        utc_now(when, sizeof(when));
        fprintf(stderr, "%s%s%s %s: %s\n", when, when[0] ? " " : "",
                pmm_log_level_name(lvl), subsys, msg);
    }
}

int pmm_sd_notify(const char *state)
{
    const char *e = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    size_t n;
    int fd, rc = 0;

    if (e == NULL || e[0] == '\0')
        return 0;
    n = strlen(e);
    if ((e[0] != '/' && e[0] != '@') || n < 2 || n >= sizeof(sa.sun_path))
        return -EINVAL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, e, n);
    if (e[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: the length says where it ends */
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT,
               (const struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
        rc = -errno;
    close(fd);
    return rc;
}
