/*
 * state.c - persistent node identity in data_dir: node_id, generation,
 * peers. All writes are atomic (temp file, fsync, rename, fsync dir).
 */
#include "membership/membership.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define SMALL_FILE_MAX 4096
#define PEERS_FILE_MAX (64 * 1024)

/* Reads dir/name into buf (NUL-terminated). -ENOENT if missing, -EFBIG if
 * larger than cap-1 bytes. */
static int read_small(const char *dir, const char *name, char *buf,
                      size_t cap, size_t *len)
{
    char path[PMM_PATH_MAX + 80];

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >=
        sizeof(path))
        return -ENAMETOOLONG;
    return pmm_read_small(path, buf, cap, len);
}

/* Strips one trailing "\n" (or "\r\n"); returns false if any other byte
 * outside [0-9a-zA-Z] is present. */
static bool chomp_token(char *s, size_t *len)
{
    size_t n = *len;

    if (n > 0 && s[n - 1] == '\n')
        s[--n] = '\0';
    if (n > 0 && s[n - 1] == '\r')
        s[--n] = '\0';
    if (strlen(s) != n)
        return false; /* embedded NUL */
    *len = n;
    return true;
}

int pmm_state_lock(const char *dir, int *fd_out, char *err, size_t errlen)
{
    char path[PMM_PATH_MAX + 80];
    int fd;

    if ((size_t)snprintf(path, sizeof(path), "%s/lock", dir) >= sizeof(path))
        return pmm_errf(err, errlen, -ENAMETOOLONG, "%s: path too long", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return pmm_errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return pmm_errf(err, errlen, -EBUSY,
                        "data_dir %s is in use by another pmgclusterd", dir);
        return pmm_errf(err, errlen, -e, "%s: %s", path, strerror(e));
    }
    *fd_out = fd;
    return 0;
}

int pmm_state_node_id(const char *dir, gsp_id *out, bool *created,
                      char *err, size_t errlen)
{
    char buf[SMALL_FILE_MAX], hex[2 * GSP_ID_LEN + 2];
    size_t len = 0;
    gsp_id id;
    int rc;

    rc = read_small(dir, "node_id", buf, sizeof(buf), &len);
    if (rc == 0) {
        if (!chomp_token(buf, &len) || gsp_id_parse(&id, buf) != 0)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s/node_id: corrupt (expected 32 hex characters); "
                        "fix or remove it (removing gives this node a new "
                        "identity)", dir);
        *out = id;
        if (created != NULL)
            *created = false;
        return 0;
    }
    if (rc == -EFBIG)
        return pmm_errf(err, errlen, -EINVAL, "%s/node_id: corrupt (too large)",
                    dir);
    if (rc != -ENOENT)
        return pmm_errf(err, errlen, rc, "%s/node_id: %s", dir, strerror(-rc));

    rc = gsp_random(id.b, sizeof(id.b));
    if (rc != 0)
        return pmm_errf(err, errlen, rc, "cannot generate a node id: %s",
                    gsp_strerror(rc));
    gsp_id_str(&id, hex, sizeof(hex));
    len = strlen(hex);
    hex[len++] = '\n';
    rc = pmm_write_file_atomic(dir, "node_id", hex, len, 0600);
    if (rc != 0)
        return pmm_errf(err, errlen, rc, "%s/node_id: %s", dir, strerror(-rc));
    *out = id;
    if (created != NULL)
        *created = true;
    return 0;
}

int pmm_state_bump_generation(const char *dir, uint64_t *out, char *err,
                              size_t errlen)
{
    char buf[SMALL_FILE_MAX];
    size_t len = 0;
    uint64_t gen = 0;
    int rc;

    rc = read_small(dir, "generation", buf, sizeof(buf), &len);
    if (rc == 0) {
        bool ok = chomp_token(buf, &len) && len > 0 && len <= 20;
        for (size_t i = 0; ok && i < len; i++) {
            unsigned d = (unsigned)(buf[i] - '0');
            if (d > 9 || gen > (UINT64_MAX - d) / 10)
                ok = false;
            else
                gen = gen * 10 + d;
        }
        if (!ok)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s/generation: corrupt (expected a decimal "
                        "number); fix it by hand to a value higher than "
                        "any this node used before", dir);
    } else if (rc == -EFBIG) {
        return pmm_errf(err, errlen, -EINVAL,
                    "%s/generation: corrupt (too large)", dir);
    } else if (rc != -ENOENT) {
        return pmm_errf(err, errlen, rc, "%s/generation: %s", dir,
                    strerror(-rc));
    }
    if (gen == UINT64_MAX)
        return pmm_errf(err, errlen, -EOVERFLOW,
                    "%s/generation: cannot be incremented", dir);
    gen++;
    len = (size_t)snprintf(buf, sizeof(buf), "%llu\n",
                           (unsigned long long)gen);
    rc = pmm_write_file_atomic(dir, "generation", buf, len, 0600);
    if (rc != 0)
        return pmm_errf(err, errlen, rc, "%s/generation: %s", dir,
                    strerror(-rc));
    *out = gen;
    return 0;
}

int pmm_state_read_peers(const char *dir, gsp_addr *out, size_t max,
                         size_t *n_out, size_t *bad_out)
{
    char *buf;
    size_t len = 0, n = 0, bad = 0, pos = 0;
    int rc;

    *n_out = 0;
    if (bad_out != NULL)
        *bad_out = 0;
    buf = malloc(PEERS_FILE_MAX + 1);
    if (buf == NULL)
        return -ENOMEM;
    rc = read_small(dir, "peers", buf, PEERS_FILE_MAX + 1, &len);
    if (rc == -ENOENT) {
        free(buf);
        return 0;
    }
    if (rc != 0) {
        free(buf);
        return rc;
    }
    while (pos < len) {
        char *line = buf + pos;
        char *nl = memchr(line, '\n', len - pos);
        size_t l = nl != NULL ? (size_t)(nl - line) : len - pos;
        gsp_addr a;
        bool dup = false;

        pos += l + 1;
        if (memchr(line, '\0', l) != NULL) {
            bad++;
            continue;
        }
        line[l] = '\0';
        if (l > 0 && line[l - 1] == '\r')
            line[--l] = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        if (*line == '\0' || *line == '#')
            continue;
        if (gsp_addr_parse(&a, line, PMM_DEFAULT_PORT) != 0) {
            bad++;
            continue;
        }
        for (size_t i = 0; i < n; i++)
            dup = dup || gsp_addr_eq(&out[i], &a);
        if (dup)
            continue;
        if (n == max)
            break;
        out[n++] = a;
    }
    free(buf);
    *n_out = n;
    if (bad_out != NULL)
        *bad_out = bad;
    return 0;
}

int pmm_state_write_peers(const char *dir, const gsp_addr *addrs, size_t n)
{
    pmm_buf b;
    char s[80];
    int rc;

    pmm_buf_init(&b, PEERS_FILE_MAX);
    pmm_buf_puts(&b, "# pmgclusterd: alive peers, rewritten automatically\n");
    for (size_t i = 0; i < n; i++) {
        gsp_addr_str(&addrs[i], s, sizeof(s));
        pmm_buf_printf(&b, "%s\n", s);
    }
    rc = b.err;
    if (rc == 0)
        rc = pmm_write_file_atomic(dir, "peers", b.p, b.len, 0600);
    pmm_buf_free(&b);
    return rc;
}
