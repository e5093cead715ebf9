/*
 * log.c - "LEVEL subsystem: message" lines on stderr (journald adds time).
 */
#include "membership/membership.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static pmm_log_level cur_level = PMM_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

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
    /* names and addresses can come from the network: no control chars */
    for (char *q = msg; *q != '\0'; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            *q = '?';
    /* one write per line so concurrent writers do not interleave */
    fprintf(stderr, "%s %s: %s\n", pmm_log_level_name(lvl), subsys, msg);
}
