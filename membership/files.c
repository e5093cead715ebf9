/*
 * files.c - mirrored config files (membership/files.h): manifests, scans,
 * atomic writes, the master's FILES / FILE_GET answers, the nodes' sync
 * rounds and the reload command.
 *
 * Threads: everything that touches files_dir (scans, reads for FILE_GET,
 * writes, removals, SHA-256 of received data) runs on libuv's thread pool;
 * the loop thread only moves manifests and buffers around. One round at a
 * time: scan, then (master) publish the digest, or (node) FILES, FILE_GET
 * per file, write, remove, reload.
 */
#include "membership/files.h"
#include "membership/cluster.pb-c.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <mbedtls/sha256.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

extern char **environ;

#define DIGEST_TAG "pmgcm-files-1\n"
#define TMP_PREFIX ".pmgcm-"
#define TMP_SUFFIX ".tmp"
#define RACY_NS 2000000000LL /* a file changed this recently is re-hashed */
#define ENV_MAX 4096

typedef Pmgcm__Cluster__Request Req;
typedef Pmgcm__Cluster__Response Resp;
typedef Pmgcm__Cluster__FileEntry FileEntry;

/* ---- names ------------------------------------------------------------------ */

static bool comp_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '+' ||
           c == '@' || c == '=' || c == ',' || c == ':' || c == '-';
}

static bool ends_with(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);
    return n >= k && !memcmp(s + n - k, suf, k);
}

static bool skipped_n(const char *b, size_t n)
{
    return n == 0 || b[0] == '.' || b[n - 1] == '~' ||
           ends_with(b, n, ".tmp") || ends_with(b, n, ".swp");
}

bool pmm_files_name_skipped(const char *base)
{
    return skipped_n(base, strlen(base));
}

static bool comp_ok(const char *c, size_t n)
{
    if (skipped_n(c, n)) return false;
    for (size_t i = 0; i < n; i++)
        if (!comp_char_ok((unsigned char)c[i])) return false;
    return true;
}

bool pmm_files_name_ok(const char *name)
{
    if (!name) return false;
    size_t n = strnlen(name, PMM_FILES_NAME_MAX + 1);
    if (n == 0 || n > PMM_FILES_NAME_MAX) return false;
    size_t comps = 0;
    const char *p = name;
    for (;;) {
        const char *e = strchr(p, '/');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (!comp_ok(p, l) || ++comps > PMM_FILES_DEPTH_MAX + 1) return false;
        if (!e) return true;
        p = e + 1;
    }
}

/* ---- manifests ----------------------------------------------------------------- */

static void put_be(uint8_t *b, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
}

void pmm_files_digest(const pmm_file_ent *e, size_t n,
                      uint8_t out[PMM_HASH_LEN])
{
    mbedtls_sha256_context c;
    mbedtls_sha256_init(&c);
    mbedtls_sha256_starts_ret(&c, 0);
    mbedtls_sha256_update_ret(&c, (const uint8_t *)DIGEST_TAG,
                              strlen(DIGEST_TAG));
    for (size_t i = 0; i < n; i++) {
        uint8_t num[12];
        mbedtls_sha256_update_ret(&c, (const uint8_t *)e[i].name,
                                  strlen(e[i].name) + 1);
        put_be(num, e[i].size, 8);
        put_be(num + 8, e[i].mode, 4);
        mbedtls_sha256_update_ret(&c, num, sizeof(num));
        mbedtls_sha256_update_ret(&c, e[i].sha, PMM_HASH_LEN);
    }
    mbedtls_sha256_finish_ret(&c, out);
    mbedtls_sha256_free(&c);
}

static int ent_cmp(const void *a, const void *b)
{
    return strcmp(((const pmm_file_ent *)a)->name,
                  ((const pmm_file_ent *)b)->name);
}

int pmm_files_manifest_finish(pmm_files_manifest *m)
{
    if (m->n) qsort(m->ents, m->n, sizeof(*m->ents), ent_cmp);
    m->bytes = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (i && !strcmp(m->ents[i - 1].name, m->ents[i].name)) return -EINVAL;
        m->bytes += m->ents[i].size;
    }
    pmm_files_digest(m->ents, m->n, m->digest);
    return 0;
}

const pmm_file_ent *pmm_files_find(const pmm_files_manifest *m,
                                   const char *name)
{
    if (!m || !m->n) return NULL;
    pmm_file_ent key;
    snprintf(key.name, sizeof(key.name), "%s", name);
    return bsearch(&key, m->ents, m->n, sizeof(*m->ents), ent_cmp);
}

void pmm_files_manifest_clear(pmm_files_manifest *m)
{
    free(m->ents);
    memset(m, 0, sizeof(*m));
}

int pmm_files_manifest_copy(pmm_files_manifest *dst,
                            const pmm_files_manifest *src)
{
    pmm_file_ent *e = NULL;
    if (src->n) {
        e = malloc(src->n * sizeof(*e));
        if (!e) return -ENOMEM;
        memcpy(e, src->ents, src->n * sizeof(*e));
    }
    pmm_files_manifest_clear(dst);
    *dst = *src;
    dst->ents = e;
    return 0;
}

int pmm_files_diff(const pmm_files_manifest *local,
                   const pmm_files_manifest *remote, size_t **fetch,
                   size_t *n_fetch, size_t **del, size_t *n_del)
{
    *fetch = *del = NULL;
    *n_fetch = *n_del = 0;
    size_t *f = remote->n ? malloc(remote->n * sizeof(*f)) : NULL;
    size_t *d = local->n ? malloc(local->n * sizeof(*d)) : NULL;
    if ((remote->n && !f) || (local->n && !d)) {
        free(f);
        free(d);
        return -ENOMEM;
    }
    size_t i = 0, j = 0, nf = 0, nd = 0;
    while (i < local->n || j < remote->n) {
        int c = i == local->n    ? 1
                : j == remote->n ? -1
                                 : strcmp(local->ents[i].name,
                                          remote->ents[j].name);
        if (c < 0) {
            d[nd++] = i++;
        } else if (c > 0) {
            f[nf++] = j++;
        } else {
            const pmm_file_ent *l = &local->ents[i], *r = &remote->ents[j];
            if (l->oversize || l->size != r->size || l->mode != r->mode ||
                memcmp(l->sha, r->sha, PMM_HASH_LEN))
                f[nf++] = j;
            i++;
            j++;
        }
    }
    if (!nf) {
        free(f);
        f = NULL;
    }
    if (!nd) {
        free(d);
        d = NULL;
    }
    *fetch = f;
    *n_fetch = nf;
    *del = d;
    *n_del = nd;
    return 0;
}

/* ---- the FILES answer ------------------------------------------------------------ */

int pmm_files_to_resp(const pmm_files_manifest *m, Resp *resp)
{
    resp->n_files = 0;
    resp->files = NULL;
    if (m->n) {
        /* one block: the pointer array, then the entries */
        size_t sz = m->n * (sizeof(FileEntry *) + sizeof(FileEntry));
        FileEntry **p = malloc(sz);
        if (!p) return -ENOMEM;
        FileEntry *e = (FileEntry *)(p + m->n);
        for (size_t i = 0; i < m->n; i++) {
            pmgcm__cluster__file_entry__init(&e[i]);
            e[i].name = (char *)m->ents[i].name;
            e[i].size = m->ents[i].size;
            e[i].mode = m->ents[i].mode;
            e[i].sha256.data = (uint8_t *)m->ents[i].sha;
            e[i].sha256.len = PMM_HASH_LEN;
            p[i] = &e[i];
        }
        resp->files = p;
        resp->n_files = m->n;
    }
    resp->has_files_digest = 1;
    resp->files_digest.data = (uint8_t *)m->digest;
    resp->files_digest.len = PMM_HASH_LEN;
    return 0;
}

void pmm_files_resp_free(Resp *resp)
{
    free(resp->files);
    resp->files = NULL;
    resp->n_files = 0;
}

int pmm_files_from_resp(pmm_files_manifest *out, const Resp *resp, char *err,
                        size_t errlen)
{
    if (!resp->has_files_digest || resp->files_digest.len != PMM_HASH_LEN)
        return pmm_errf(err, errlen, -EINVAL, "no manifest digest");
    if (resp->n_files > PMM_FILES_COUNT_MAX)
        return pmm_errf(err, errlen, -EINVAL, "%zu files (at most %d)",
                        resp->n_files, PMM_FILES_COUNT_MAX);
    pmm_files_manifest m;
    memset(&m, 0, sizeof(m));
    if (resp->n_files) {
        m.ents = calloc(resp->n_files, sizeof(*m.ents));
        if (!m.ents) return -ENOMEM;
    }
    for (size_t i = 0; i < resp->n_files; i++) {
        const FileEntry *e = resp->files[i];
        pmm_file_ent *d = &m.ents[i];
        if (!e || !pmm_files_name_ok(e->name)) {
            pmm_files_manifest_clear(&m);
            return pmm_errf(err, errlen, -EINVAL, "entry %zu: bad name", i);
        }
        if (i && strcmp(m.ents[i - 1].name, e->name) >= 0) {
            pmm_files_manifest_clear(&m);
            return pmm_errf(err, errlen, -EINVAL, "entry %zu: not sorted", i);
        }
        if (e->size > PMM_FILES_SIZE_MAX || e->mode > 0777 ||
            e->sha256.len != PMM_HASH_LEN) {
            pmm_files_manifest_clear(&m);
            return pmm_errf(err, errlen, -EINVAL, "%s: bad size, mode or hash",
                            e->name);
        }
        snprintf(d->name, sizeof(d->name), "%s", e->name);
        d->size = e->size;
        d->mode = e->mode;
        memcpy(d->sha, e->sha256.data, PMM_HASH_LEN);
        m.bytes += d->size;
    }
    m.n = resp->n_files;
    pmm_files_digest(m.ents, m.n, m.digest);
    if (memcmp(m.digest, resp->files_digest.data, PMM_HASH_LEN)) {
        pmm_files_manifest_clear(&m);
        return pmm_errf(err, errlen, -EINVAL, "digest does not match the "
                        "entries");
    }
    pmm_files_manifest_clear(out);
    *out = m;
    return 0;
}

/* ---- scanning (blocking) ----------------------------------------------------------- */

static void errs_add(pmm_files_errs *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void errs_add(pmm_files_errs *e, const char *fmt, ...)
{
    if (!e) return;
    e->total++;
    if (e->n >= PMM_FILES_ERRORS_MAX) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg[e->n++], PMM_FILES_ERROR_LEN, fmt, ap);
    va_end(ap);
}

typedef struct scan_ctx {
    uint32_t max;
    bool node_side;
    const pmm_files_manifest *prev;
    pmm_file_ent *ents;
    size_t n, cap;
    pmm_files_errs *errs;
    int64_t now_ns;
} scan_ctx;

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000LL + t->tv_nsec;
}

static bool same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
           a->st_size == b->st_size &&
           ts_ns(&a->st_mtim) == ts_ns(&b->st_mtim) &&
           ts_ns(&a->st_ctim) == ts_ns(&b->st_ctim);
}

/* SHA-256 of the file base in dfd, which fstatat described as st0. */
static int hash_file(scan_ctx *x, int dfd, const char *base, const char *rel,
                     const struct stat *st0, uint8_t sha[PMM_HASH_LEN])
{
    int fd = openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
                                   O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ELOOP) return -EAGAIN; /* replaced meanwhile */
        errs_add(x->errs, "%s: cannot open: %s", rel, strerror(e));
        return -e;
    }
    struct stat a, b;
    if (fstat(fd, &a) || !S_ISREG(a.st_mode) || !same_stat(&a, st0)) {
        close(fd);
        return -EAGAIN;
    }
    enum { BUFSZ = 64 * 1024 };
    uint8_t *buf = malloc(BUFSZ);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    mbedtls_sha256_context c;
    mbedtls_sha256_init(&c);
    mbedtls_sha256_starts_ret(&c, 0);
    uint64_t total = 0;
    int rc = 0;
    for (;;) {
        ssize_t r = read(fd, buf, BUFSZ);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = -errno;
            errs_add(x->errs, "%s: cannot read: %s", rel, strerror(errno));
            break;
        }
        if (r == 0) break;
        total += (uint64_t)r;
        if (total > (uint64_t)a.st_size) {
            rc = -EAGAIN; /* grew while we read */
            break;
        }
        mbedtls_sha256_update_ret(&c, buf, (size_t)r);
    }
    if (!rc && (fstat(fd, &b) || !same_stat(&a, &b) ||
                total != (uint64_t)a.st_size))
        rc = -EAGAIN;
    if (!rc) mbedtls_sha256_finish_ret(&c, sha);
    mbedtls_sha256_free(&c);
    free(buf);
    close(fd);
    return rc;
}

static int add_file(scan_ctx *x, int dfd, const char *base, const char *rel,
                    const struct stat *st)
{
    if (x->n >= PMM_FILES_COUNT_MAX) {
        errs_add(x->errs, "more than %d files: nothing is mirrored",
                 PMM_FILES_COUNT_MAX);
        return -E2BIG;
    }
    bool over = (uint64_t)st->st_size > x->max;
    if (over && !x->node_side) {
        errs_add(x->errs, "%s: %lld bytes is over files_max_bytes (%u): not "
                 "mirrored", rel, (long long)st->st_size, x->max);
        return 0;
    }
    if (x->n == x->cap) {
        size_t nc = x->cap ? x->cap * 2 : 64;
        pmm_file_ent *v = realloc(x->ents, nc * sizeof(*v));
        if (!v) return -ENOMEM;
        x->ents = v;
        x->cap = nc;
    }
    pmm_file_ent *e = &x->ents[x->n];
    memset(e, 0, sizeof(*e));
    size_t rl = strlen(rel);
    if (rl >= sizeof(e->name)) return -ENAMETOOLONG;
    memcpy(e->name, rel, rl + 1);
    e->size = (uint64_t)st->st_size;
    e->mode = st->st_mode & 0777;
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->mtime_ns = ts_ns(&st->st_mtim);
    e->ctime_ns = ts_ns(&st->st_ctim);
    int64_t newest = e->mtime_ns > e->ctime_ns ? e->mtime_ns : e->ctime_ns;
    e->cacheable = x->now_ns - newest > RACY_NS;
    if (over) {
        e->oversize = true;
        x->n++;
        return 0;
    }
    const pmm_file_ent *p = pmm_files_find(x->prev, rel);
    if (p && p->cacheable && !p->oversize && p->dev == e->dev &&
        p->ino == e->ino && p->size == e->size && p->mtime_ns == e->mtime_ns &&
        p->ctime_ns == e->ctime_ns) {
        memcpy(e->sha, p->sha, PMM_HASH_LEN);
    } else {
        int rc = hash_file(x, dfd, base, rel, st, e->sha);
        if (rc) return rc;
    }
    x->n++;
    return 0;
}

/* Scans the directory fd (consumed) whose relative path is rel ("" for
 * the top). */
static int scan_dir(scan_ctx *x, int fd, const char *rel, int depth)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return -e;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) rc = -errno;
            break;
        }
        const char *b = de->d_name;
        size_t bl = strlen(b);
        if (!strcmp(b, ".") || !strcmp(b, "..")) continue;
        if (skipped_n(b, bl)) {
            if (x->node_side && !strncmp(b, TMP_PREFIX, strlen(TMP_PREFIX)) &&
                ends_with(b, bl, TMP_SUFFIX))
                unlinkat(dirfd(d), b, 0); /* ours, left by a crash */
            continue;
        }
        char path[PMM_FILES_NAME_MAX + 2];
        size_t rl = strlen(rel);
        if (rl + 1 + bl > PMM_FILES_NAME_MAX) {
            errs_add(x->errs, "%s%s%.64s...: path longer than %d bytes: not "
                     "mirrored", rel, rl ? "/" : "", b, PMM_FILES_NAME_MAX);
            continue;
        }
        memcpy(path, rel, rl);
        if (rl) path[rl++] = '/';
        memcpy(path + rl, b, bl + 1);
        if (!comp_ok(b, bl)) {
            errs_add(x->errs, "%s: name has characters other than "
                     "[A-Za-z0-9._+@=,:-]: not mirrored", path);
            continue;
        }
        struct stat st;
        if (fstatat(dirfd(d), b, &st, AT_SYMLINK_NOFOLLOW)) {
            if (errno == ENOENT) continue;
            rc = -errno;
            errs_add(x->errs, "%s: %s", path, strerror(errno));
            break;
        }
        if (S_ISLNK(st.st_mode)) {
            errs_add(x->errs, "%s: is a symlink: not mirrored", path);
        } else if (S_ISDIR(st.st_mode)) {
            if (depth >= PMM_FILES_DEPTH_MAX) {
                errs_add(x->errs, "%s: directory nested deeper than %d "
                         "levels: not mirrored", path, PMM_FILES_DEPTH_MAX);
                continue;
            }
            int cfd = openat(dirfd(d), b, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
                                              O_CLOEXEC);
            if (cfd < 0) {
                if (errno == ENOENT) continue;
                rc = errno == ELOOP || errno == ENOTDIR ? -EAGAIN : -errno;
                if (rc != -EAGAIN)
                    errs_add(x->errs, "%s: %s", path, strerror(errno));
                break;
            }
            rc = scan_dir(x, cfd, path, depth + 1);
            if (rc) break;
        } else if (S_ISREG(st.st_mode)) {
            rc = add_file(x, dirfd(d), b, path, &st);
            if (rc) break;
        } else {
            errs_add(x->errs, "%s: not a regular file: not mirrored", path);
        }
    }
    closedir(d);
    return rc;
}

int pmm_files_scan(const char *dir, uint32_t max_bytes, bool node_side,
                   const pmm_files_manifest *prev, pmm_files_manifest *out,
                   pmm_files_errs *errs)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        errs_add(errs, "%s: %s", dir, strerror(e));
        return -e;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    scan_ctx x = {.max = max_bytes, .node_side = node_side, .prev = prev,
                  .errs = errs, .now_ns = ts_ns(&now)};
    int rc = scan_dir(&x, fd, "", 0);
    if (rc) {
        free(x.ents);
        return rc;
    }
    pmm_files_manifest m = {.ents = x.ents, .n = x.n};
    rc = pmm_files_manifest_finish(&m);
    if (rc) {
        free(x.ents);
        return rc;
    }
    pmm_files_manifest_clear(out);
    *out = m;
    return 0;
}

/* ---- writing, removing, reading (blocking) ------------------------------------------ */

/* Opens the directory holding name's last component (*base points into
 * name). create: missing directories are made 0755 and a non-directory in
 * the way is removed. Never follows a symlink below dir. */
static int open_parent(const char *dir, const char *name, bool create,
                       int *out, const char **base)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && create && errno == ENOENT) {
        int rc = pmm_mkdir_p(dir, 0755);
        if (rc) return rc;
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    if (fd < 0) return -errno;
    const char *p = name;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (!slash) break;
        char comp[PMM_FILES_NAME_MAX + 1];
        size_t l = (size_t)(slash - p);
        if (l == 0 || l > PMM_FILES_NAME_MAX) {
            close(fd);
            return -EINVAL;
        }
        memcpy(comp, p, l);
        comp[l] = 0;
        int c = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (c < 0 && create) {
            struct stat st;
            int rc = 0;
            if (fstatat(fd, comp, &st, AT_SYMLINK_NOFOLLOW) == 0) {
                if (S_ISDIR(st.st_mode)) rc = -EIO; /* unopenable directory */
                else if (unlinkat(fd, comp, 0) && errno != ENOENT) rc = -errno;
            } else if (errno != ENOENT) {
                rc = -errno;
            }
            if (!rc && mkdirat(fd, comp, 0755) && errno != EEXIST) rc = -errno;
            if (!rc) fsync(fd);
            if (rc) {
                close(fd);
                return rc;
            }
            c = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (c < 0) {
            int rc = -errno;
            close(fd);
            return rc;
        }
        close(fd);
        fd = c;
        p = slash + 1;
    }
    *out = fd;
    *base = p;
    return 0;
}

int pmm_files_write(const char *dir, const char *name, const void *data,
                    size_t len, uint32_t mode)
{
    static unsigned counter;
    if (!pmm_files_name_ok(name)) return -EINVAL;
    int dfd;
    const char *base;
    int rc = open_parent(dir, name, true, &dfd, &base);
    if (rc) return rc;
    char tmp[64];
    snprintf(tmp, sizeof(tmp), TMP_PREFIX "%ld-%u" TMP_SUFFIX, (long)getpid(),
             __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
                                  O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        unlinkat(dfd, tmp, 0);
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
                                  O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        rc = -errno;
        close(dfd);
        return rc;
    }
    if (fchmod(fd, mode & 0777)) rc = -errno;
    const uint8_t *p = data;
    size_t left = len;
    while (!rc && left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) rc = -errno;
        else {
            p += w;
            left -= (size_t)w;
        }
    }
    if (!rc && fsync(fd)) rc = -errno;
    if (close(fd) && !rc) rc = -errno;
    if (!rc && renameat(dfd, tmp, dfd, base)) rc = -errno;
    if (rc) unlinkat(dfd, tmp, 0);
    else if (fsync(dfd)) rc = -errno;
    close(dfd);
    return rc;
}

int pmm_files_remove(const char *dir, const char *name)
{
    if (!pmm_files_name_ok(name)) return -EINVAL;
    int dfd;
    const char *base;
    int rc = open_parent(dir, name, false, &dfd, &base);
    if (rc == -ENOENT || rc == -ENOTDIR || rc == -ELOOP) return 0;
    if (rc) return rc;
    if (unlinkat(dfd, base, 0) && errno != ENOENT) rc = -errno;
    fsync(dfd);
    close(dfd);
    if (rc) return rc;
    /* the directories this emptied, deepest first */
    char path[PMM_FILES_NAME_MAX + 1];
    snprintf(path, sizeof(path), "%s", name);
    char *slash;
    while ((slash = strrchr(path, '/'))) {
        *slash = 0;
        if (open_parent(dir, path, false, &dfd, &base)) break;
        int r = unlinkat(dfd, base, AT_REMOVEDIR);
        if (!r) fsync(dfd);
        close(dfd);
        if (r) break; /* not empty (or gone): stop */
    }
    return 0;
}

int pmm_files_read_chunk(const char *dir, const char *name, uint64_t off,
                         uint8_t *buf, size_t len, uint64_t want_size,
                         size_t *got)
{
    *got = 0;
    if (!pmm_files_name_ok(name)) return -EINVAL;
    int dfd;
    const char *base;
    int rc = open_parent(dir, name, false, &dfd, &base);
    if (rc) return rc == -ENOENT || rc == -ENOTDIR || rc == -ELOOP ? -ESTALE : rc;
    int fd = openat(dfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
                                   O_NOCTTY);
    rc = fd < 0 ? (errno == ENOENT || errno == ELOOP ? -ESTALE : -errno) : 0;
    close(dfd);
    if (rc) return rc;
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size != want_size) {
        close(fd);
        return -ESTALE;
    }
    size_t n = 0;
    while (n < len) {
        ssize_t r = pread(fd, buf + n, len - n, (off_t)(off + n));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = -errno;
            break;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    *got = n;
    return rc;
}

/* ---- the daemon's mirror ------------------------------------------------------------- */

typedef struct reload_run {
    uv_process_t proc;
    uv_timer_t timer;
    pmm_files *f;
    int handles; /* open libuv handles; freed at 0 */
    char **env;
} reload_run;

struct pmm_files {
    uv_loop_t *loop;
    const pmm_config *cfg;
    pmm_lc *lc;
    gsp_id node_id;
    char dir[PMM_PATH_MAX];
    uint32_t max_bytes;
    uv_timer_t timer;
    bool closing;
    int refs; /* the timer, work, calls, FILE_GET reads, reload runs */

    /* the current round (one at a time) */
    bool busy;
    bool again;           /* kicked during a round */
    bool round_master;
    uint64_t next_try_ms; /* back-off after a failed node round */
    uint32_t fail_streak;
    char last_err[PMM_FILES_ERROR_LEN]; /* a failed round (logged once) */

    /* the last scan of our own files_dir: also the SHA-256 cache; moved
     * into the scan job while one runs */
    pmm_files_manifest local;
    bool have_scan;
    uint8_t scan_digest[PMM_HASH_LEN];
    size_t scan_n;
    uint64_t scan_bytes;
    pmm_files_errs errs;  /* what the last scan left out */
    pmm_files_errs rerrs; /* master's files this node will not take */

    /* master: what FILES answers (a copy of the last good scan) */
    pmm_files_manifest served;
    bool have_served;
    uint32_t serving;

    /* node round */
    pmm_files_manifest remote;
    size_t *fetch, n_fetch, fetch_i;
    size_t *del, n_del;
    uint8_t *fbuf;
    uint64_t fhave;
    uint32_t n_written, n_removed;

    /* reload command */
    reload_run *run;
    bool reload_again;
    uint64_t reload_runs;
    bool have_exit;
    int64_t last_exit;
    int last_signal;
};

static void files_log(pmm_log_level l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void files_log(pmm_log_level l, const char *fmt, ...)
{
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    pmm_log(l, "files", "%s", buf);
}

static const char *err_str(int rc)
{
    if (rc <= -560 && rc >= -566) return pmm_tls_strerror(rc);
    return strerror(-rc);
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static void files_unref(pmm_files *f)
{
    if (--f->refs > 0 || !f->closing) return;
    pmm_files_manifest_clear(&f->local);
    pmm_files_manifest_clear(&f->served);
    pmm_files_manifest_clear(&f->remote);
    free(f->fetch);
    free(f->del);
    free(f->fbuf);
    free(f);
}

static const pmm_cnode *self_in(const pmm_files *f, const pmm_cluster **cl)
{
    *cl = f->closing ? NULL : pmm_lc_cluster(f->lc);
    return *cl ? pmm_cluster_by_id(*cl, &f->node_id) : NULL;
}

/* Logs the messages of now that were not in before (at level l). */
static void errs_log_new(const pmm_files_errs *before,
                         const pmm_files_errs *now, pmm_log_level l)
{
    for (size_t i = 0; i < now->n; i++) {
        bool seen = false;
        for (size_t j = 0; j < before->n && !seen; j++)
            seen = !strcmp(before->msg[j], now->msg[i]);
        if (!seen) files_log(l, "%s", now->msg[i]);
    }
    if (now->total > now->n && now->total != before->total)
        files_log(l, "%zu more problems not listed", now->total - now->n);
}

/* ---- reload -------------------------------------------------------------------------- */

static void reload_start(pmm_files *f);

static void run_closed(uv_handle_t *h)
{
    reload_run *r = h->data;
    if (--r->handles > 0) return;
    pmm_files *f = r->f;
    for (char **e = r->env; e && *e; e++)
        if (!strncmp(*e, "PMGCM_FILES_DIR=", 16)) free(*e);
    free(r->env);
    free(r);
    files_unref(f);
}

static void run_close(reload_run *r)
{
    if (r->f->run == r) r->f->run = NULL;
    if (!uv_is_closing((uv_handle_t *)&r->timer))
        uv_close((uv_handle_t *)&r->timer, run_closed);
    if (!uv_is_closing((uv_handle_t *)&r->proc))
        uv_close((uv_handle_t *)&r->proc, run_closed);
}

static void run_exit(uv_process_t *p, int64_t status, int sig)
{
    reload_run *r = p->data;
    pmm_files *f = r->f;
    f->have_exit = true;
    f->last_exit = status;
    f->last_signal = sig;
    if (sig)
        files_log(PMM_LOG_ERROR, "files_reload (pid %d) killed by signal %d",
                  p->pid, sig);
    else if (status)
        files_log(PMM_LOG_ERROR, "files_reload (pid %d) exited with status "
                  "%lld", p->pid, (long long)status);
    else
        files_log(PMM_LOG_INFO, "files_reload (pid %d) exited with status 0",
                  p->pid);
    run_close(r);
    if (f->reload_again && !f->closing) {
        f->reload_again = false;
        reload_start(f);
    }
}

static void run_timeout(uv_timer_t *t)
{
    reload_run *r = t->data;
    files_log(PMM_LOG_ERROR, "files_reload (pid %d) still running after %d s: "
              "killing it", r->proc.pid, PMM_FILES_RELOAD_TIMEOUT_MS / 1000);
    /* detached: it leads its own process group, take all of it */
    if (r->proc.pid > 0) kill(-r->proc.pid, SIGKILL);
}

static char **reload_env(const char *dir)
{
    size_t n = 0;
    while (environ && environ[n] && n < ENV_MAX) n++;
    char **env = calloc(n + 2, sizeof(*env));
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PMGCM_FILES_DIR=", 16)) env[k++] = environ[i];
    size_t l = strlen(dir) + 17;
    env[k] = malloc(l);
    if (!env[k]) {
        free(env);
        return NULL;
    }
    snprintf(env[k], l, "PMGCM_FILES_DIR=%s", dir);
    return env;
}

static void reload_start(pmm_files *f)
{
    if (f->closing || !f->cfg->files_reload[0]) return;
    if (f->run) {
        f->reload_again = true; /* once more after this one */
        return;
    }
    reload_run *r = calloc(1, sizeof(*r));
    if (!r) {
        files_log(PMM_LOG_ERROR, "cannot run files_reload: out of memory");
        return;
    }
    r->f = f;
    r->env = reload_env(f->dir);
    char *args[] = {"/bin/sh", "-c", (char *)f->cfg->files_reload, NULL};
    uv_stdio_container_t io[3];
    io[0].flags = UV_IGNORE;
    io[1].flags = UV_INHERIT_FD;
    io[1].data.fd = 1;
    io[2].flags = UV_INHERIT_FD;
    io[2].data.fd = 2;
    uv_process_options_t o;
    memset(&o, 0, sizeof(o));
    o.file = "/bin/sh";
    o.args = args;
    o.env = r->env;
    o.cwd = "/";
    o.exit_cb = run_exit;
    o.flags = UV_PROCESS_DETACHED;
    o.stdio = io;
    o.stdio_count = 3;
    f->refs++;
    r->proc.data = r;
    r->timer.data = r;
    int rc = uv_spawn(f->loop, &r->proc, &o);
    r->handles = 1;
    if (rc) {
        files_log(PMM_LOG_ERROR, "cannot run files_reload: %s", uv_strerror(rc));
        uv_close((uv_handle_t *)&r->proc, run_closed);
        return;
    }
    uv_timer_init(f->loop, &r->timer);
    r->handles = 2;
    uv_timer_start(&r->timer, run_timeout, PMM_FILES_RELOAD_TIMEOUT_MS, 0);
    f->run = r;
    f->reload_runs++;
    files_log(PMM_LOG_INFO, "running files_reload (pid %d): %s", r->proc.pid,
              f->cfg->files_reload);
}

/* ---- rounds ---------------------------------------------------------------------------- */

static void round_start(pmm_files *f, bool forced);

static void round_reset(pmm_files *f)
{
    pmm_files_manifest_clear(&f->remote);
    free(f->fetch);
    free(f->del);
    free(f->fbuf);
    f->fetch = f->del = NULL;
    f->fbuf = NULL;
    f->n_fetch = f->n_del = f->fetch_i = 0;
    f->fhave = 0;
    f->n_written = f->n_removed = 0;
}

/* The round is over; runs the next one when kicked meanwhile. */
static void round_end(pmm_files *f)
{
    f->busy = false;
    round_reset(f);
    if (f->again && !f->closing) {
        f->again = false;
        round_start(f, true);
    }
}

static void round_ok(pmm_files *f)
{
    f->fail_streak = 0;
    f->next_try_ms = 0;
    if (f->last_err[0]) {
        files_log(PMM_LOG_INFO, "%s: in sync again", f->dir);
        f->last_err[0] = 0;
    }
}

static void round_fail(pmm_files *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void round_fail(pmm_files *f, const char *fmt, ...)
{
    char msg[PMM_FILES_ERROR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (strcmp(msg, f->last_err)) {
        files_log(PMM_LOG_WARN, "%s", msg);
        snprintf(f->last_err, sizeof(f->last_err), "%s", msg);
    }
    if (!f->round_master) {
        uint64_t d = (uint64_t)PMM_FILES_SCAN_MS
                     << (f->fail_streak < 4 ? f->fail_streak : 4);
        if (d > PMM_FILES_RETRY_MAX_MS) d = PMM_FILES_RETRY_MAX_MS;
        f->fail_streak++;
        f->next_try_ms = uv_now(f->loop) + d;
    }
    f->again = false;
    round_end(f);
}

/* node: written and removed files are done; reload when anything moved */
static void node_done(pmm_files *f)
{
    uint32_t w = f->n_written, r = f->n_removed;
    char d[2 * PMM_HASH_LEN + 1];
    hex(f->remote.digest, PMM_HASH_LEN, d);
    round_ok(f);
    if (w || r) {
        files_log(PMM_LOG_INFO, "%s: %u file(s) written, %u removed: now the "
                  "master's manifest %.16s (%zu files)", f->dir, w, r, d,
                  f->remote.n);
        reload_start(f);
        f->again = true; /* rescan: confirm what is on disk now */
    }
    round_end(f);
}

/* ---- node: removing ---- */

typedef struct del_job {
    uv_work_t w;
    pmm_files *f;
    char dir[PMM_PATH_MAX];
    char (*names)[PMM_FILES_NAME_MAX + 1];
    size_t n, done;
    int rc;
    char bad[PMM_FILES_NAME_MAX + 1];
} del_job;

static void del_work(uv_work_t *w)
{
    del_job *j = w->data;
    for (size_t i = 0; i < j->n; i++) {
        int rc = pmm_files_remove(j->dir, j->names[i]);
        if (rc && !j->rc) {
            j->rc = rc;
            snprintf(j->bad, sizeof(j->bad), "%s", j->names[i]);
        }
        if (!rc) j->done++;
    }
}

static void del_after(uv_work_t *w, int status)
{
    del_job *j = w->data;
    pmm_files *f = j->f;
    if (!f->closing) {
        f->n_removed += (uint32_t)j->done;
        if (status || j->rc)
            round_fail(f, "cannot remove %s/%s: %s", f->dir, j->bad,
                       strerror(status ? ECANCELED : -j->rc));
        else
            node_done(f);
    }
    free(j->names);
    free(j);
    files_unref(f);
}

static void node_remove(pmm_files *f)
{
    if (!f->n_del) {
        node_done(f);
        return;
    }
    del_job *j = calloc(1, sizeof(*j));
    if (j) j->names = calloc(f->n_del, sizeof(*j->names));
    if (!j || !j->names) {
        if (j) free(j);
        round_fail(f, "out of memory");
        return;
    }
    j->f = f;
    j->w.data = j;
    snprintf(j->dir, sizeof(j->dir), "%s", f->dir);
    for (size_t i = 0; i < f->n_del; i++)
        snprintf(j->names[i], sizeof(j->names[i]), "%s",
                 f->local.ents[f->del[i]].name);
    j->n = f->n_del;
    f->refs++;
    if (uv_queue_work(f->loop, &j->w, del_work, del_after)) {
        f->refs--;
        free(j->names);
        free(j);
        round_fail(f, "cannot queue work");
    }
}

/* ---- node: fetching and writing ---- */

static void fetch_next(pmm_files *f);

typedef struct write_job {
    uv_work_t w;
    pmm_files *f;
    char dir[PMM_PATH_MAX];
    pmm_file_ent e;
    uint8_t *data; /* owned */
    int rc;
} write_job;

static void write_work(uv_work_t *w)
{
    write_job *j = w->data;
    uint8_t sha[PMM_HASH_LEN];
    if (mbedtls_sha256_ret(j->data, j->e.size, sha, 0) ||
        memcmp(sha, j->e.sha, PMM_HASH_LEN)) {
        j->rc = -EBADMSG;
        return;
    }
    j->rc = pmm_files_write(j->dir, j->e.name, j->data, j->e.size, j->e.mode);
}

static void write_after(uv_work_t *w, int status)
{
    write_job *j = w->data;
    pmm_files *f = j->f;
    if (!f->closing) {
        if (status)
            round_fail(f, "writing %s/%s: cancelled", f->dir, j->e.name);
        else if (j->rc == -EBADMSG)
            round_fail(f, "%s: the data received from the master does not "
                       "match its SHA-256; retrying", j->e.name);
        else if (j->rc)
            round_fail(f, "cannot write %s/%s: %s", f->dir, j->e.name,
                       strerror(-j->rc));
        else {
            f->n_written++;
            f->fetch_i++;
            fetch_next(f);
        }
    }
    free(j->data);
    free(j);
    files_unref(f);
}

static void chunk_request(pmm_files *f);

static void chunk_done(void *ud, int rc, const Resp *resp)
{
    pmm_files *f = ud;
    if (f->closing || rc == -ECANCELED) {
        files_unref(f);
        return;
    }
    const pmm_file_ent *e = &f->remote.ents[f->fetch[f->fetch_i]];
    if (rc) {
        round_fail(f, "cannot fetch %s from the master: %s", e->name,
                   err_str(rc));
    } else if (!resp->ok) {
        round_fail(f, "the master refused %s: %s", e->name,
                   resp->error ? resp->error : "no reason given");
    } else if (!resp->has_file_size || resp->file_size != e->size ||
               !resp->has_file_sha256 || resp->file_sha256.len != PMM_HASH_LEN ||
               memcmp(resp->file_sha256.data, e->sha, PMM_HASH_LEN)) {
        round_fail(f, "%s changed on the master; retrying", e->name);
    } else if (!resp->has_file_data ||
               resp->file_data.len > e->size - f->fhave ||
               (!resp->file_data.len && f->fhave < e->size)) {
        round_fail(f, "%s: the master sent a bad chunk", e->name);
    } else {
        if (resp->file_data.len)
            memcpy(f->fbuf + f->fhave, resp->file_data.data,
                   resp->file_data.len);
        f->fhave += resp->file_data.len;
        if (f->fhave < e->size) {
            chunk_request(f);
        } else {
            write_job *j = calloc(1, sizeof(*j));
            if (!j) {
                round_fail(f, "out of memory");
            } else {
                j->f = f;
                j->w.data = j;
                j->e = *e;
                j->data = f->fbuf;
                f->fbuf = NULL;
                snprintf(j->dir, sizeof(j->dir), "%s", f->dir);
                f->refs++;
                if (uv_queue_work(f->loop, &j->w, write_work, write_after)) {
                    f->refs--;
                    free(j->data);
                    free(j);
                    round_fail(f, "cannot queue work");
                }
            }
        }
    }
    files_unref(f);
}

static void chunk_request(pmm_files *f)
{
    const pmm_file_ent *e = &f->remote.ents[f->fetch[f->fetch_i]];
    Req r = PMGCM__CLUSTER__REQUEST__INIT;
    r.kind = PMGCM__CLUSTER__REQUEST__KIND__FILE_GET;
    r.file_name = (char *)e->name;
    r.has_file_offset = 1;
    r.file_offset = f->fhave;
    f->refs++;
    int rc = pmm_lc_call_master(f->lc, &r, chunk_done, f);
    if (rc) {
        f->refs--;
        round_fail(f, "cannot ask the master for %s: %s", e->name,
                   strerror(-rc));
    }
}

static void fetch_next(pmm_files *f)
{
    if (f->fetch_i >= f->n_fetch) {
        node_remove(f);
        return;
    }
    const pmm_file_ent *e = &f->remote.ents[f->fetch[f->fetch_i]];
    free(f->fbuf);
    f->fbuf = malloc(e->size ? e->size : 1);
    f->fhave = 0;
    if (!f->fbuf) {
        round_fail(f, "out of memory for %s (%llu bytes)", e->name,
                   (unsigned long long)e->size);
        return;
    }
    chunk_request(f);
}

static void list_done(void *ud, int rc, const Resp *resp)
{
    pmm_files *f = ud;
    if (f->closing || rc == -ECANCELED) {
        files_unref(f);
        return;
    }
    char why[200];
    if (rc) {
        round_fail(f, "cannot get the file list from the master: %s",
                   err_str(rc));
    } else if (!resp->ok) {
        round_fail(f, "the master did not give its file list: %s",
                   resp->error ? resp->error : "no reason given");
    } else if (pmm_files_from_resp(&f->remote, resp, why, sizeof(why))) {
        round_fail(f, "bad file list from the master: %s", why);
    } else if (pmm_files_diff(&f->local, &f->remote, &f->fetch, &f->n_fetch,
                              &f->del, &f->n_del)) {
        round_fail(f, "out of memory");
    } else {
        /* the master's files this node will not take (its own limit) */
        pmm_files_errs now;
        memset(&now, 0, sizeof(now));
        size_t k = 0;
        for (size_t i = 0; i < f->n_fetch; i++) {
            const pmm_file_ent *e = &f->remote.ents[f->fetch[i]];
            if (e->size > f->max_bytes)
                errs_add(&now, "%s: the master's copy has %llu bytes, over "
                         "this node's files_max_bytes (%u): not mirrored",
                         e->name, (unsigned long long)e->size, f->max_bytes);
            else
                f->fetch[k++] = f->fetch[i];
        }
        f->n_fetch = k;
        errs_log_new(&f->rerrs, &now, PMM_LOG_ERROR);
        f->rerrs = now;
        if (f->n_fetch || f->n_del)
            files_log(PMM_LOG_INFO, "%s differs from the master: %zu file(s) "
                      "to fetch, %zu to remove", f->dir, f->n_fetch, f->n_del);
        fetch_next(f);
    }
    files_unref(f);
}

/* ---- scanning our own directory ---- */

typedef struct scan_job {
    uv_work_t w;
    pmm_files *f;
    char dir[PMM_PATH_MAX];
    uint32_t max;
    bool node_side;
    pmm_files_manifest prev, out;
    pmm_files_errs errs;
    int rc;
} scan_job;

static void scan_work(uv_work_t *w)
{
    scan_job *j = w->data;
    if (j->node_side) {
        struct stat st;
        if (stat(j->dir, &st) && errno == ENOENT) pmm_mkdir_p(j->dir, 0755);
    }
    j->rc = pmm_files_scan(j->dir, j->max, j->node_side, &j->prev, &j->out,
                           &j->errs);
}

static void master_publish(pmm_files *f)
{
    int rc;
    memset(&f->rerrs, 0, sizeof(f->rerrs)); /* a node's view only */
    if (!f->have_served ||
        memcmp(f->served.digest, f->local.digest, PMM_HASH_LEN)) {
        rc = pmm_files_manifest_copy(&f->served, &f->local);
        if (rc) {
            round_fail(f, "out of memory");
            return;
        }
        f->have_served = true;
    }
    rc = pmm_lc_set_files_digest(f->lc, f->local.digest);
    if (rc == -EBUSY) {
        files_log(PMM_LOG_DEBUG, "a key rotation runs: publishing later");
    } else if (rc && rc != -EPERM && rc != -ENOENT) {
        round_fail(f, "cannot publish the files digest: %s", strerror(-rc));
        return;
    }
    round_ok(f);
    round_end(f);
}

static void scan_after(uv_work_t *w, int status)
{
    scan_job *j = w->data;
    pmm_files *f = j->f;
    int rc = status ? -ECANCELED : j->rc;
    if (rc == 0) {
        pmm_files_manifest_clear(&j->prev);
        f->local = j->out;
        memset(&j->out, 0, sizeof(j->out));
        f->have_scan = true;
        memcpy(f->scan_digest, f->local.digest, PMM_HASH_LEN);
        f->scan_n = f->local.n;
        f->scan_bytes = f->local.bytes;
    } else {
        f->local = j->prev; /* keep the cache */
        memset(&j->prev, 0, sizeof(j->prev));
    }
    if (f->closing) {
        free(j);
        files_unref(f);
        return;
    }
    /* problems are logged when they appear, at error level on the master
     * (its files are not mirrored), at warn level on a node */
    if (rc != -EAGAIN) {
        errs_log_new(&f->errs, &j->errs,
                     f->round_master ? PMM_LOG_ERROR : PMM_LOG_WARN);
        if (f->errs.total && !j->errs.total)
            files_log(PMM_LOG_INFO, "%s: no more problems", f->dir);
        f->errs = j->errs;
    }
    bool node_side = j->node_side;
    free(j);
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    if (rc == 0 && me && node_side == me->master) {
        /* promoted or stepped down during the scan: a node's scan lists
         * oversize files, a master's leaves them out; scan again */
        f->again = true;
        round_end(f);
    } else if (rc == -EAGAIN) {
        /* a file changed while we read it: publish nothing, look again */
        files_log(PMM_LOG_DEBUG, "%s changed during the scan", f->dir);
        f->again = true;
        round_end(f);
    } else if (rc) {
        round_fail(f, "%s: %s: nothing %s", f->dir,
                   rc == -E2BIG ? "too many files" : strerror(-rc),
                   f->round_master ? "published" : "mirrored");
    } else if (!me) {
        round_end(f);
    } else if (me->master) {
        f->round_master = true;
        master_publish(f);
    } else if (!cl->has_files_digest) {
        round_end(f);
    } else if (!memcmp(cl->files_digest, f->local.digest, PMM_HASH_LEN)) {
        round_ok(f);
        round_end(f);
    } else {
        f->round_master = false;
        Req r = PMGCM__CLUSTER__REQUEST__INIT;
        r.kind = PMGCM__CLUSTER__REQUEST__KIND__FILES;
        f->refs++;
        int e = pmm_lc_call_master(f->lc, &r, list_done, f);
        if (e) {
            f->refs--;
            round_fail(f, "cannot ask the master for its files: %s",
                       strerror(-e));
        }
    }
    files_unref(f);
}

static void round_start(pmm_files *f, bool forced)
{
    if (f->closing) return;
    if (f->busy) {
        f->again = true;
        return;
    }
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    if (!me) return; /* outside a cluster: nothing to mirror */
    if (!me->master && !cl->has_files_digest) return; /* nothing published */
    if (!me->master && !forced && uv_now(f->loop) < f->next_try_ms) return;
    scan_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->f = f;
    j->w.data = j;
    snprintf(j->dir, sizeof(j->dir), "%s", f->dir);
    j->max = f->max_bytes;
    j->node_side = !me->master;
    j->prev = f->local; /* the cache moves into the job */
    memset(&f->local, 0, sizeof(f->local));
    f->busy = true;
    f->round_master = me->master;
    f->refs++;
    if (uv_queue_work(f->loop, &j->w, scan_work, scan_after)) {
        f->refs--;
        f->local = j->prev;
        free(j);
        f->busy = false;
    }
}

static void timer_cb(uv_timer_t *t)
{
    round_start(t->data, false);
}

void pmm_files_kick(pmm_files *f)
{
    if (f) round_start(f, true);
}

/* ---- master: answering FILES and FILE_GET ---- */

typedef struct serve_job {
    uv_work_t w;
    pmm_files *f;
    pmm_lc_sreq *sr;
    char dir[PMM_PATH_MAX];
    pmm_file_ent e;
    uint64_t off;
    size_t len, got;
    uint8_t *buf;
    int rc;
} serve_job;

static void reply_error(pmm_lc_sreq *sr, const char *msg)
{
    Resp r = PMGCM__CLUSTER__RESPONSE__INIT;
    r.ok = 0;
    r.error = (char *)msg;
    pmm_lc_sreq_reply(sr, &r);
}

static void serve_work(uv_work_t *w)
{
    serve_job *j = w->data;
    j->buf = malloc(j->len ? j->len : 1);
    if (!j->buf) {
        j->rc = -ENOMEM;
        return;
    }
    j->rc = pmm_files_read_chunk(j->dir, j->e.name, j->off, j->buf, j->len,
                                 j->e.size, &j->got);
    if (!j->rc && j->got != j->len) j->rc = -ESTALE; /* shrunk meanwhile */
}

static void serve_after(uv_work_t *w, int status)
{
    serve_job *j = w->data;
    pmm_files *f = j->f;
    f->serving--;
    if (status || j->rc) {
        char msg[PMM_FILES_ERROR_LEN];
        int e = status ? ECANCELED : -j->rc;
        if (e == ESTALE)
            snprintf(msg, sizeof(msg), "%s changed on the master; retry",
                     j->e.name);
        else
            snprintf(msg, sizeof(msg), "cannot read %s: %s", j->e.name,
                     strerror(e));
        reply_error(j->sr, msg);
    } else {
        Resp r = PMGCM__CLUSTER__RESPONSE__INIT;
        r.ok = 1;
        r.has_file_data = 1;
        r.file_data.data = j->buf;
        r.file_data.len = j->got;
        r.has_file_size = 1;
        r.file_size = j->e.size;
        r.has_file_sha256 = 1;
        r.file_sha256.data = j->e.sha;
        r.file_sha256.len = PMM_HASH_LEN;
        pmm_lc_sreq_reply(j->sr, &r);
    }
    free(j->buf);
    free(j);
    files_unref(f);
}

static void serve(void *ud, pmm_lc_sreq *sr, const Req *req)
{
    pmm_files *f = ud;
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    if (!me || !me->master) {
        reply_error(sr, "this node is not the master");
        return;
    }
    if (!f->have_served) {
        reply_error(sr, "the master has not scanned its files yet; retry");
        return;
    }
    if (req->kind == PMGCM__CLUSTER__REQUEST__KIND__FILES) {
        Resp r = PMGCM__CLUSTER__RESPONSE__INIT;
        r.ok = 1;
        if (pmm_files_to_resp(&f->served, &r)) {
            reply_error(sr, "out of memory");
            return;
        }
        pmm_lc_sreq_reply(sr, &r);
        pmm_files_resp_free(&r);
        return;
    }
    /* FILE_GET: only what the manifest lists, never another path */
    const pmm_file_ent *e =
        req->file_name && pmm_files_name_ok(req->file_name)
            ? pmm_files_find(&f->served, req->file_name)
            : NULL;
    if (!e) {
        reply_error(sr, "no such file in the master's manifest");
        return;
    }
    uint64_t off = req->has_file_offset ? req->file_offset : 0;
    if (off > e->size) {
        reply_error(sr, "offset past the end of the file");
        return;
    }
    if (f->serving >= PMM_FILES_SERVE_MAX) {
        reply_error(sr, "the master is busy; retry");
        return;
    }
    serve_job *j = calloc(1, sizeof(*j));
    if (!j) {
        reply_error(sr, "out of memory");
        return;
    }
    j->f = f;
    j->sr = sr;
    j->w.data = j;
    j->e = *e;
    j->off = off;
    j->len = e->size - off > PMM_FILES_CHUNK ? PMM_FILES_CHUNK
                                             : (size_t)(e->size - off);
    snprintf(j->dir, sizeof(j->dir), "%s", f->dir);
    f->refs++;
    f->serving++;
    if (uv_queue_work(f->loop, &j->w, serve_work, serve_after)) {
        f->refs--;
        f->serving--;
        free(j);
        reply_error(sr, "internal error");
    }
}

/* ---- status ----------------------------------------------------------------------------- */

static void errs_json(pmm_buf *b, const pmm_files_errs *e, bool *first)
{
    for (size_t i = 0; i < e->n; i++) {
        pmm_buf_puts(b, *first ? "" : ",");
        pmm_json_str(b, e->msg[i], strlen(e->msg[i]));
        *first = false;
    }
}

int pmm_files_status_json(const pmm_files *f, pmm_buf *b)
{
    if (!f) return 0;
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    char d[2 * PMM_HASH_LEN + 1];
    pmm_buf_puts(b, ",\"files\":{\"dir\":");
    pmm_json_str(b, f->dir, strlen(f->dir));
    pmm_buf_printf(b, ",\"role\":\"%s\",\"published\":",
                   !me ? "-" : me->master ? "master" : "node");
    if (cl && cl->has_files_digest) {
        hex(cl->files_digest, PMM_HASH_LEN, d);
        pmm_buf_printf(b, "\"%s\"", d);
    } else {
        pmm_buf_puts(b, "null");
    }
    pmm_buf_puts(b, ",\"local\":");
    if (f->have_scan) {
        hex(f->scan_digest, PMM_HASH_LEN, d);
        pmm_buf_printf(b, "\"%s\"", d);
    } else {
        pmm_buf_puts(b, "null");
    }
    bool synced = cl && cl->has_files_digest && f->have_scan &&
                  !memcmp(cl->files_digest, f->scan_digest, PMM_HASH_LEN);
    pmm_buf_printf(b, ",\"synced\":%s,\"count\":%zu,\"bytes\":%llu,"
                   "\"max_bytes\":%u,\"problems\":%zu,\"errors\":[",
                   synced ? "true" : "false", f->scan_n,
                   (unsigned long long)f->scan_bytes, f->max_bytes,
                   f->errs.total + f->rerrs.total);
    bool first = true;
    errs_json(b, &f->errs, &first);
    errs_json(b, &f->rerrs, &first);
    pmm_buf_puts(b, "],\"last_error\":");
    if (f->last_err[0]) pmm_json_str(b, f->last_err, strlen(f->last_err));
    else pmm_buf_puts(b, "null");
    pmm_buf_printf(b, ",\"reload\":{\"configured\":%s,\"runs\":%llu,"
                   "\"running\":%s,\"last_exit\":",
                   f->cfg->files_reload[0] ? "true" : "false",
                   (unsigned long long)f->reload_runs,
                   f->run ? "true" : "false");
    if (!f->have_exit) pmm_buf_puts(b, "null");
    else if (f->last_signal) pmm_buf_printf(b, "\"signal %d\"", f->last_signal);
    else pmm_buf_printf(b, "%lld", (long long)f->last_exit);
    pmm_buf_puts(b, "}}");
    return b->err;
}

/* ---- start / close ------------------------------------------------------------------------ */

int pmm_files_start(pmm_files **out, const pmm_files_env *env, char *err,
                    size_t errlen)
{
    *out = NULL;
    const pmm_config *cfg = env->cfg;
    if (!cfg->files_dir[0]) return 0;
    if (cfg->files_dir[0] != '/')
        return pmm_errf(err, errlen, -EINVAL, "files_dir must be absolute");
    pmm_files *f = calloc(1, sizeof(*f));
    if (!f) return -ENOMEM;
    f->loop = env->loop;
    f->cfg = cfg;
    f->lc = env->lc;
    f->node_id = env->node_id;
    snprintf(f->dir, sizeof(f->dir), "%s", cfg->files_dir);
    size_t l = strlen(f->dir);
    while (l > 1 && f->dir[l - 1] == '/') f->dir[--l] = 0;
    f->max_bytes = cfg->files_max_bytes ? cfg->files_max_bytes : (1u << 20);
    if (f->max_bytes > PMM_FILES_SIZE_MAX) f->max_bytes = PMM_FILES_SIZE_MAX;
    uv_timer_init(f->loop, &f->timer);
    f->timer.data = f;
    f->refs = 1;
    uv_timer_start(&f->timer, timer_cb, PMM_FILES_SCAN_MS, PMM_FILES_SCAN_MS);
    pmm_lc_set_files_handler(f->lc, serve, f);
    files_log(PMM_LOG_INFO, "mirroring %s (files up to %u bytes%s%s)", f->dir,
              f->max_bytes, cfg->files_reload[0] ? "; reload: " : "",
              cfg->files_reload);
    round_start(f, true);
    *out = f;
    return 0;
}

static void timer_closed(uv_handle_t *h)
{
    files_unref(h->data);
}

void pmm_files_close(pmm_files *f)
{
    if (!f || f->closing) return;
    f->closing = true;
    pmm_lc_set_files_handler(f->lc, NULL, NULL);
    if (f->run) run_close(f->run); /* the command itself runs on */
    uv_close((uv_handle_t *)&f->timer, timer_closed);
}
