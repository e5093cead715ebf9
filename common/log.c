/*
 * log.c - "LEVEL subsystem: message" lines on stderr.
 *
 * When stderr is the journal (systemd sets JOURNAL_STREAM=DEV:INODE of the
 * stream it connected; sd-daemon(3)), each line starts with "<N>", the
 * syslog priority, which journald strips and stores (journalctl -p works);
 * journald adds the time. Otherwise each line starts with the UTC time,
 * "2026-12-02T06:40:01.123Z ".
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

static pmm_log_level cur_level = PMM_LOG_INFO;

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

void pmm_log(pmm_log_level lvl, const char *subsys, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

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
     * one line per call */
    for (char *q = msg; *q != '\0'; q++)
        if (*q == '\n' || *q == '\t')
            *q = ' ';
        else if ((unsigned char)*q < 0x20 || *q == 0x7f)
            *q = '?';
    pthread_once(&journal_once, journal_detect);
    /* one write per line so concurrent writers do not interleave */
    if (to_journal) {
        fprintf(stderr, "<%d>%s %s: %s\n", level_prio[lvl],
                pmm_log_level_name(lvl), subsys, msg);
    } else {
        struct timespec ts;
        struct tm tm;
        char when[32] = "";
        if (clock_gettime(CLOCK_REALTIME, &ts) == 0 &&
            gmtime_r(&ts.tv_sec, &tm) != NULL) {
            size_t k = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
            snprintf(when + k, sizeof(when) - k, ".%03ldZ ",
                     ts.tv_nsec / 1000000);
        }
        fprintf(stderr, "%s%s %s: %s\n", when, pmm_log_level_name(lvl),
                subsys, msg);
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
