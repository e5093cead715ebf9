/*
 * file.c - small-file helpers: mkdir -p, atomic writes (temp file, fsync,
 * rename, fsync dir), bounded reads, and the error-message formatter.
 */
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int pmm_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int pmm_mkdir_p(const char *path, mode_t mode)
{
    char buf[PMM_PATH_MAX];
    size_t n = strlen(path);
    struct stat st;

    if (n == 0 || n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, i == n ? mode : 0755) != 0 && errno != EEXIST)
            return -errno;
        if (i != n)
            buf[i] = '/';
    }
    if (stat(buf, &st) != 0)
        return -errno;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    return 0;
}

int pmm_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int pmm_write_close(int fd, mode_t mode, const void *data, size_t len)
{
    int rc = fchmod(fd, mode) != 0 ? -errno : 0;

    if (rc == 0)
        rc = pmm_write_all(fd, data, len);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    return rc;
}

int pmm_write_file_atomic(const char *dir, const char *name,
                          const void *data, size_t len, mode_t mode)
{
    char tmp[PMM_PATH_MAX + 80], dst[PMM_PATH_MAX + 80];
    int fd, dfd, rc;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >=
            sizeof(tmp) ||
        (size_t)snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= sizeof(dst))
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
              mode);
    if (fd < 0)
        return -errno;
    /* a temp file left by a crash keeps its old mode through O_TRUNC:
     * pmm_write_close sets the intended one explicitly */
    rc = pmm_write_close(fd, mode, data, len);
    if (rc == 0 && rename(tmp, dst) != 0)
        rc = -errno;
    if (rc != 0) {
        unlink(tmp);
        return rc;
    }
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    if (fsync(dfd) != 0)
        rc = -errno;
    close(dfd);
    return rc;
}

int pmm_read_fd(int fd, void *buf, size_t cap, size_t *len)
{
    char *p = buf;
    size_t n = 0;

    *len = 0;
    for (;;) {
        ssize_t r = read(fd, p + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        n += (size_t)r;
        *len = n;
        if (n == cap)
            return -EFBIG;
    }
    return 0;
}

int pmm_read_small(const char *path, char *buf, size_t cap, size_t *len)
{
    size_t n = 0;
    int fd, rc;

    if (cap == 0)
        return -EINVAL;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    rc = pmm_read_fd(fd, buf, cap, &n);
    close(fd);
    if (rc != 0)
        return rc;
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return 0;
}
