/*
 * sysinfo.c - host sampling for NodeMeta: /proc/uptime, /proc/loadavg,
 * /proc/meminfo and statvfs("/"). Blocking: run on a worker thread.
 */
#include "membership/membership.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define PROC_FILE_MAX 16384

/* Reads a whole small /proc file, NUL-terminated. */
static int read_proc(const char *path, char *buf, size_t cap)
{
    return pmm_read_small(path, buf, cap, NULL);
}

/* Non-negative decimal with an optional fraction; sets *end. */
static int parse_decimal(const char *s, double *out, const char **end)
{
    char *e;
    double v;

    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtod(s, &e);
    if (errno != 0 || e == s || !isfinite(v) || v < 0)
        return -EINVAL;
    *out = v;
    if (end != NULL)
        *end = e;
    return 0;
}

int pmm_parse_uptime(const char *text, double *uptime_s)
{
    double v;
    const char *end;

    if (parse_decimal(text, &v, &end) != 0 || (*end != ' ' && *end != '\n' &&
                                               *end != '\0'))
        return -EINVAL;
    if (v > 1e10) /* ~300 years */
        return -EINVAL;
    *uptime_s = v;
    return 0;
}

int pmm_parse_loadavg(const char *text, uint32_t *load1_x100)
{
    double v;
    const char *end;

    if (parse_decimal(text, &v, &end) != 0 || (*end != ' ' && *end != '\n' &&
                                               *end != '\0'))
        return -EINVAL;
    if (v > 1000000.0)
        return -EINVAL;
    *load1_x100 = (uint32_t)(v * 100.0 + 0.5); /* v >= 0; no libm lround */
    return 0;
}

/* Finds "Key:   123 kB" at the start of a line. */
static int meminfo_field(const char *text, const char *key, uint64_t *kb)
{
    size_t klen = strlen(key);
    const char *p = text;

    while (p != NULL && *p != '\0') {
        if (strncmp(p, key, klen) == 0 && p[klen] == ':') {
            const char *q = p + klen + 1;
            uint64_t v = 0;
            int digits = 0;
            while (*q == ' ' || *q == '\t')
                q++;
            while (*q >= '0' && *q <= '9' && digits < 19) {
                v = v * 10 + (uint64_t)(*q - '0');
                q++;
                digits++;
            }
            if (digits == 0 || (*q >= '0' && *q <= '9'))
                return -EINVAL;
            *kb = v;
            return 0;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return -ENOENT;
}

int pmm_parse_meminfo(const char *text, uint32_t *mem_pct)
{
    uint64_t total, avail;

    if (meminfo_field(text, "MemTotal", &total) != 0 ||
        meminfo_field(text, "MemAvailable", &avail) != 0 || total == 0 ||
        avail > total)
        return -EINVAL;
    *mem_pct = (uint32_t)(((total - avail) * 100 + total / 2) / total);
    return 0;
}

int pmm_sysinfo_sample(pmm_sysinfo *out)
{
    char *buf = malloc(PROC_FILE_MAX);
    struct statvfs vfs;
    pmm_sysinfo s;
    int rc;

    if (buf == NULL)
        return -ENOMEM;
    memset(&s, 0, sizeof(s));
    rc = read_proc("/proc/uptime", buf, PROC_FILE_MAX);
    if (rc == 0)
        rc = pmm_parse_uptime(buf, &s.uptime_s);
    if (rc == 0)
        rc = read_proc("/proc/loadavg", buf, PROC_FILE_MAX);
    if (rc == 0)
        rc = pmm_parse_loadavg(buf, &s.load1);
    if (rc == 0)
        rc = read_proc("/proc/meminfo", buf, PROC_FILE_MAX);
    if (rc == 0)
        rc = pmm_parse_meminfo(buf, &s.mem_pct);
    free(buf);
    if (rc != 0)
        return rc;
    if (statvfs("/", &vfs) != 0)
        return -errno;
    {
        /* like df: used / (used + available to unprivileged), rounded up */
        uint64_t used = (uint64_t)(vfs.f_blocks - vfs.f_bfree);
        uint64_t denom = used + (uint64_t)vfs.f_bavail;
        s.disk_pct = denom == 0 ? 0
                                : (uint32_t)((used * 100 + denom - 1) / denom);
        if (s.disk_pct > 100)
            s.disk_pct = 100;
    }
    *out = s;
    return 0;
}
