/*
 * files.c - mirrored config files (files/files.h): manifests, scans,
 * atomic writes, the master's FILES / FILE_GET answers, the nodes' sync
 * rounds and the reload command.
 *
 * Threads: everything that touches files_dir (scans, reads for FILE_GET,
 * writes, removals, SHA-256 of received data) runs on libuv's thread pool;
 * the loop thread only moves manifests and buffers around. One round at a
 * time: scan, then (master) publish the digest, or (node) FILES, FILE_GET
 * per file, write, remove, reload.
 */
#include "files/files.h"
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
#define EVENT_MAX (PMM_PATH_MAX + 160) /* a trash event directory */

typedef Pmgcm__Cluster__Request Req;
typedef Pmgcm__Cluster__Response Resp;
typedef Pmgcm__Cluster__FileEntry FileEntry;

/* lowercase hex of n bytes into out (2n + 1) */
#define hex(b, n, out) pmm_hex_encode(b, n, out, false)

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

bool pmm_files_mass_drop(const pmm_files_manifest *prev,
                         const pmm_files_manifest *next, size_t *dropped)
{
    size_t d = 0, i = 0, j = 0;
    while (i < prev->n) {
        int c = j == next->n ? -1
                             : strcmp(prev->ents[i].name, next->ents[j].name);
        if (c < 0) {
            d++;
            i++;
        } else if (c > 0) {
            j++;
        } else {
            i++;
            j++;
        }
    }
    if (dropped) *dropped = d;
    return d >= PMM_FILES_DROP_MIN && 2 * d > prev->n;
}

size_t pmm_files_trash_evict(const uint64_t *files, const uint64_t *bytes,
                             size_t n, uint64_t max_files, uint64_t max_bytes)
{
    uint64_t tf = 0, tb = 0;
    for (size_t i = 0; i < n; i++) {
        tf += files[i];
        tb += bytes[i];
    }
    size_t k = 0;
    while (k + 1 < n && (tf > max_files || tb > max_bytes)) {
        tf -= files[k];
        tb -= bytes[k];
        k++;
    }
    return k;
}

int pmm_files_manifest_union(pmm_files_manifest *out,
                             const pmm_files_manifest *a,
                             const pmm_files_manifest *b)
{
    size_t n = 0, i = 0, j = 0;
    pmm_file_ent *e = malloc((a->n + b->n ? a->n + b->n : 1) * sizeof(*e));
    if (!e) return -ENOMEM;
    while (i < a->n || j < b->n) {
        int c = i == a->n   ? 1
                : j == b->n ? -1
                            : strcmp(a->ents[i].name, b->ents[j].name);
        if (c < 0) e[n++] = a->ents[i++];
        else if (c > 0) e[n++] = b->ents[j++];
        else {
            e[n++] = b->ents[j++];
            i++;
        }
    }
    if (n > PMM_FILES_COUNT_MAX) {
        free(e);
        return -E2BIG;
    }
    pmm_files_manifest m = {.ents = e, .n = n};
    int rc = pmm_files_manifest_finish(&m);
    if (rc) {
        free(e);
        return rc;
    }
    pmm_files_manifest_clear(out);
    *out = m;
    return 0;
}

/* ---- the manifest's text form (data_dir/files.manifest) ----------------------------- */

#define MANIFEST_MAGIC "pmgcm-files-manifest 1\n"
/* the longest line: 64 hex, size, mode, name */
#define MANIFEST_LINE_MAX (2 * PMM_HASH_LEN + 1 + 20 + 1 + 4 + 1 + \
                           PMM_FILES_NAME_MAX + 1)
#define MANIFEST_TEXT_MAX (64 + 80 + PMM_FILES_COUNT_MAX * MANIFEST_LINE_MAX)

int pmm_files_manifest_format(const pmm_files_manifest *m, pmm_buf *b)
{
    char h[2 * PMM_HASH_LEN + 1];
    pmm_buf_puts(b, MANIFEST_MAGIC);
    hex(m->digest, PMM_HASH_LEN, h);
    pmm_buf_printf(b, "digest %s\n", h);
    for (size_t i = 0; i < m->n; i++) {
        hex(m->ents[i].sha, PMM_HASH_LEN, h);
        pmm_buf_printf(b, "%s %llu %04o %s\n", h,
                       (unsigned long long)m->ents[i].size,
                       (unsigned)m->ents[i].mode & 0777, m->ents[i].name);
    }
    return b->err;
}


int pmm_files_manifest_parse(pmm_files_manifest *out, const char *text,
                             size_t len, char *err, size_t errlen)
{
    size_t ml = strlen(MANIFEST_MAGIC);
    if (len > MANIFEST_TEXT_MAX)
        return pmm_errf(err, errlen, -EINVAL, "too long (%zu bytes)", len);
    if (len < ml || memcmp(text, MANIFEST_MAGIC, ml))
        return pmm_errf(err, errlen, -EINVAL, "not a manifest (first line)");
    const char *p = text + ml, *end = text + len;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    uint8_t want[PMM_HASH_LEN];
    if (!nl || nl - p != 7 + 2 * PMM_HASH_LEN || memcmp(p, "digest ", 7) ||
        pmm_hex_decode(p + 7, PMM_HASH_LEN, want))
        return pmm_errf(err, errlen, -EINVAL, "bad digest line");
    p = nl + 1;
    pmm_files_manifest m;
    memset(&m, 0, sizeof(m));
    size_t cap = 0;
    int rc = 0;
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            rc = pmm_errf(err, errlen, -EINVAL, "entry %zu: no end of line",
                          m.n);
            break;
        }
        size_t l = (size_t)(nl - p);
        char line[MANIFEST_LINE_MAX + 1];
        if (l > MANIFEST_LINE_MAX || memchr(p, 0, l)) {
            rc = pmm_errf(err, errlen, -EINVAL, "entry %zu: bad line", m.n);
            break;
        }
        memcpy(line, p, l);
        line[l] = 0;
        p = nl + 1;
        if (m.n >= PMM_FILES_COUNT_MAX) {
            rc = pmm_errf(err, errlen, -EINVAL, "more than %d files",
                          PMM_FILES_COUNT_MAX);
            break;
        }
        if (m.n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            pmm_file_ent *v = realloc(m.ents, nc * sizeof(*v));
            if (!v) {
                rc = -ENOMEM;
                break;
            }
            m.ents = v;
            cap = nc;
        }
        pmm_file_ent *e = &m.ents[m.n];
        memset(e, 0, sizeof(*e));
        char *sz = line + 2 * PMM_HASH_LEN + 1, *md, *nm, *q;
        if (l < 2 * PMM_HASH_LEN + 6 || line[2 * PMM_HASH_LEN] != ' ' ||
            pmm_hex_decode(line, PMM_HASH_LEN, e->sha) ||
            !(md = strchr(sz, ' ')) || !(nm = strchr(md + 1, ' '))) {
            rc = pmm_errf(err, errlen, -EINVAL, "entry %zu: bad line", m.n);
            break;
        }
        *md++ = 0;
        *nm++ = 0;
        errno = 0;
        unsigned long long size = strtoull(sz, &q, 10);
        bool bad = errno || !*sz || *q || size > PMM_FILES_SIZE_MAX ||
                   strspn(sz, "0123456789") != strlen(sz);
        unsigned long mode = strtoul(md, &q, 8);
        bad = bad || !*md || *q || mode > 0777 ||
              strspn(md, "01234567") != strlen(md);
        if (bad || !pmm_files_name_ok(nm) ||
            (m.n && strcmp(m.ents[m.n - 1].name, nm) >= 0)) {
            rc = pmm_errf(err, errlen, -EINVAL, "entry %zu: bad size, mode "
                          "or name, or not sorted", m.n);
            break;
        }
        e->size = size;
        e->mode = (uint32_t)mode;
        snprintf(e->name, sizeof(e->name), "%s", nm);
        m.bytes += e->size;
        m.n++;
    }
    if (!rc) {
        pmm_files_digest(m.ents, m.n, m.digest);
        if (memcmp(m.digest, want, PMM_HASH_LEN))
            rc = pmm_errf(err, errlen, -EINVAL, "the digest does not match "
                          "the entries");
    }
    if (rc) {
        free(m.ents);
        return rc;
    }
    pmm_files_manifest_clear(out);
    *out = m;
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

/* ---- the manifest on disk, the trash (blocking) ------------------------------------ */

int pmm_files_manifest_save(const char *data_dir, const char *file,
                            const pmm_files_manifest *m)
{
    pmm_buf b;
    pmm_buf_init(&b, MANIFEST_TEXT_MAX);
    int rc = pmm_files_manifest_format(m, &b);
    if (!rc) rc = pmm_write_file_atomic(data_dir, file, b.p, b.len, 0600);
    pmm_buf_free(&b);
    return rc;
}

int pmm_files_manifest_load(const char *data_dir, const char *file,
                            pmm_files_manifest *out, char *err, size_t errlen)
{
    char path[PMM_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/%s", data_dir, file);
    char *buf = malloc(MANIFEST_TEXT_MAX + 2);
    if (!buf) return -ENOMEM;
    size_t len = 0;
    int rc = pmm_read_small(path, buf, MANIFEST_TEXT_MAX + 2, &len);
    if (rc == -EFBIG)
        rc = pmm_errf(err, errlen, -EINVAL, "%s: too long", path);
    else if (rc && rc != -ENOENT)
        pmm_errf(err, errlen, rc, "%s: %s", path, strerror(-rc));
    else if (!rc)
        rc = pmm_files_manifest_parse(out, buf, len, err, errlen);
    free(buf);
    return rc;
}

/* Copies the open regular file in (st) to a new file base in dfd. */
static int copy_into(int in, const struct stat *st, int dfd, const char *base)
{
    int out = openat(dfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
                                    O_CLOEXEC, st->st_mode & 0777);
    if (out < 0) return -errno;
    enum { BUFSZ = 64 * 1024 };
    uint8_t *buf = malloc(BUFSZ);
    int rc = buf ? 0 : -ENOMEM;
    while (!rc) {
        ssize_t r = read(in, buf, BUFSZ);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = -errno;
        if (r <= 0) break;
        for (ssize_t o = 0; !rc && o < r;) {
            ssize_t w = write(out, buf + o, (size_t)(r - o));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) rc = -errno;
            else o += w;
        }
    }
    free(buf);
    if (!rc && fsync(out)) rc = -errno;
    if (close(out) && !rc) rc = -errno;
    if (rc) unlinkat(dfd, base, 0);
    return rc;
}

static void trash_note(const char *event, const char *why, const char *name)
{
    char p[EVENT_MAX + 32];
    snprintf(p, sizeof(p), "%s/" PMM_FILES_TRASH_INFO, event);
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC,
                  0600);
    if (fd < 0) return;
    char line[PMM_FILES_NAME_MAX + 64];
    int n = snprintf(line, sizeof(line), "%s %s\n", why, name);
    if (n > 0 && write(fd, line, (size_t)n) < 0) { /* a note only */
    }
    fsync(fd);
    close(fd);
}

int pmm_files_trash_keep(const char *dir, const char *name, const char *event,
                         const char *why, uint64_t max_copy)
{
    if (!pmm_files_name_ok(name)) return -EINVAL;
    int sfd;
    const char *sbase;
    int rc = open_parent(dir, name, false, &sfd, &sbase);
    if (rc == -ENOENT || rc == -ENOTDIR || rc == -ELOOP) return 0;
    if (rc) return rc;
    struct stat st;
    if (fstatat(sfd, sbase, &st, AT_SYMLINK_NOFOLLOW)) {
        rc = errno == ENOENT ? 0 : -errno;
        close(sfd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        close(sfd);
        return 0; /* a directory or a special file: not mirrored data */
    }
    /* the trash and the event: private (mirrored files may be secrets) */
    if (strlen(event) >= EVENT_MAX) {
        close(sfd);
        return -ENAMETOOLONG;
    }
    char root[EVENT_MAX];
    snprintf(root, sizeof(root), "%s", event);
    char *slash = strrchr(root, '/');
    if (slash && slash != root) {
        *slash = 0;
        rc = pmm_mkdir_p(root, 0700);
        if (rc) {
            close(sfd);
            return rc;
        }
    }
    /* a name that collides inside this event (a file where another needs a
     * directory): the next free "<event>.N" */
    char ev[EVENT_MAX + 8];
    for (int k = 0; k < 10; k++) {
        if (k) snprintf(ev, sizeof(ev), "%s.%d", event, k);
        else snprintf(ev, sizeof(ev), "%s", event);
        if (mkdir(ev, 0700) && errno != EEXIST) {
            rc = -errno;
            break;
        }
        int dfd;
        const char *dbase;
        rc = open_parent(ev, name, true, &dfd, &dbase);
        if (rc == -ENOTDIR || rc == -EIO || rc == -EEXIST) continue;
        if (rc) break;
        bool none = false; /* gone meanwhile: nothing to keep */
        if (linkat(sfd, sbase, dfd, dbase, 0) == 0) {
            rc = 0;
        } else if (errno == EEXIST) {
            close(dfd);
            rc = -EEXIST;
            continue;
        } else if (errno == EXDEV || errno == EPERM || errno == EMLINK) {
            if ((uint64_t)st.st_size > max_copy) {
                rc = -EFBIG;
            } else {
                int in = openat(sfd, sbase, O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
                                                O_NONBLOCK | O_NOCTTY);
                struct stat ist;
                if (in < 0) {
                    rc = errno == ENOENT || errno == ELOOP ? 0 : -errno;
                    none = !rc;
                } else if (fstat(in, &ist) || !S_ISREG(ist.st_mode)) {
                    rc = 0;
                    none = true;
                } else {
                    rc = copy_into(in, &ist, dfd, dbase);
                }
                if (in >= 0) close(in);
            }
        } else {
            rc = errno == ENOENT ? 0 : -errno;
            none = !rc;
        }
        if (none) {
            close(dfd);
            break;
        }
        if (!rc) fsync(dfd);
        close(dfd);
        if (!rc) {
            trash_note(ev, why, name);
            rc = 1;
        }
        break;
    }
    close(sfd);
    return rc;
}

/* Counts the files and bytes below the directory fd (consumed). */
static void count_tree(int fd, uint64_t *files, uint64_t *bytes, int depth)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !strcmp(de->d_name, PMM_FILES_TRASH_INFO))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
        if (S_ISDIR(st.st_mode) && depth < PMM_FILES_DEPTH_MAX + 2) {
            int c = openat(dirfd(d), de->d_name,
                           O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (c >= 0) count_tree(c, files, bytes, depth + 1);
        } else if (!S_ISDIR(st.st_mode)) {
            (*files)++;
            *bytes += (uint64_t)st.st_size;
        }
    }
    closedir(d);
}

/* rm -r of the directory name in dfd (never follows symlinks). */
static int remove_tree(int dfd, const char *name, int depth)
{
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return unlinkat(dfd, name, 0) && errno != ENOENT ? -errno : 0;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
        if (S_ISDIR(st.st_mode) && depth < 32)
            rc = remove_tree(dirfd(d), de->d_name, depth + 1);
        else if (unlinkat(dirfd(d), de->d_name, 0) && errno != ENOENT)
            rc = -errno;
        if (rc) break;
    }
    closedir(d);
    if (!rc && unlinkat(dfd, name, AT_REMOVEDIR) && errno != ENOENT)
        rc = -errno;
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int pmm_files_trash_tidy(const char *trash, uint64_t max_files,
                         uint64_t max_bytes, pmm_files_trash_stats *st)
{
    memset(st, 0, sizeof(*st));
    int fd = open(trash, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            char **v = realloc(names, nc * sizeof(*v));
            if (!v) {
                rc = -ENOMEM;
                break;
            }
            names = v;
            cap = nc;
        }
        if (!(names[n] = strdup(de->d_name))) {
            rc = -ENOMEM;
            break;
        }
        n++;
    }
    uint64_t *files = n ? calloc(n, sizeof(*files)) : NULL;
    uint64_t *bytes = n ? calloc(n, sizeof(*bytes)) : NULL;
    if (!rc && n && (!files || !bytes)) rc = -ENOMEM;
    if (!rc && n) {
        qsort(names, n, sizeof(*names), name_cmp);
        for (size_t i = 0; i < n; i++) {
            struct stat sb;
            if (fstatat(dirfd(d), names[i], &sb, AT_SYMLINK_NOFOLLOW)) continue;
            if (S_ISDIR(sb.st_mode)) {
                int c = openat(dirfd(d), names[i],
                               O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (c >= 0) count_tree(c, &files[i], &bytes[i], 0);
            } else {
                files[i] = 1;
                bytes[i] = (uint64_t)sb.st_size;
            }
        }
        size_t k = pmm_files_trash_evict(files, bytes, n, max_files, max_bytes);
        for (size_t i = 0; i < k; i++) {
            int r = remove_tree(dirfd(d), names[i], 0);
            if (r && !rc) rc = r;
            if (!r) st->evicted++;
        }
        for (size_t i = k; i < n; i++) {
            st->events++;
            st->files += files[i];
            st->bytes += bytes[i];
        }
        if (k < n) snprintf(st->newest, sizeof(st->newest), "%s", names[n - 1]);
        if (k) fsync(dirfd(d));
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    free(files);
    free(bytes);
    closedir(d);
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

enum { HOLD_NONE, HOLD_DROP, HOLD_UNKNOWN };

struct pmm_files {
    uv_loop_t *loop;
    const pmm_config *cfg;
    pmm_lc *lc;
    pmm_api *api;
    gsp_id node_id;
    void (*changed)(void *ud);
    void *ud;
    char dir[PMM_PATH_MAX];
    char data_dir[PMM_PATH_MAX];
    char trash[PMM_PATH_MAX + 32];
    uint32_t max_bytes;
    uint64_t trash_max_files, trash_max_bytes;
    uv_timer_t timer;
    bool closing;
    int refs; /* the timer, work, calls, FILE_GET reads, reload runs */

    /* the current round (one at a time; the start-up load counts as one) */
    bool busy;
    bool again;           /* kicked during a round */
    bool round_master;
    bool loaded;          /* data_dir/files.manifest read */
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

    /* the last manifest this node synced to (the master: published);
     * saved in data_dir/files.manifest */
    pmm_files_manifest prev;
    bool have_prev;
    /* node: every file of the manifests it began to sync to since then
     * (a round cut short may have written some): data_dir/files.pending */
    pmm_files_manifest pending;
    bool have_pending;
    bool pending_done;    /* this round ended in sync: drop pending */

    /* this node's files_dir holds the published manifest insync_digest */
    bool in_sync;
    uint8_t insync_digest[PMM_HASH_LEN];

    /* node: files no manifest it held listed: kept, never removed */
    size_t n_unmanaged;
    char unmanaged[PMM_FILES_NAMES_SHOWN][PMM_FILES_NAME_MAX + 1];
    uint8_t unmanaged_sig[PMM_HASH_LEN]; /* logged once per set */

    /* master: what FILES answers (the published manifest) */
    pmm_files_manifest served;
    bool have_served;
    uint32_t serving;

    /* master: a manifest held for confirmation */
    int held;             /* HOLD_* */
    uint8_t held_digest[PMM_HASH_LEN];
    uint8_t held_logged[PMM_HASH_LEN];
    size_t held_n, held_of, held_dropped, held_nnames;
    char held_names[PMM_FILES_NAMES_SHOWN][PMM_FILES_NAME_MAX + 1];
    bool confirm;         /* an admin confirmed confirm_digest */
    uint8_t confirm_digest[PMM_HASH_LEN];
    pmm_ctl_req *confirm_req; /* answered by the round confirm_armed */
    bool confirm_armed;

    /* node round */
    pmm_files_manifest remote;
    size_t *fetch, n_fetch, fetch_i;
    size_t *del, n_del;
    uint8_t *fbuf;
    uint64_t fhave;
    uint32_t n_written, n_removed, n_trashed;
    char event[EVENT_MAX]; /* this round's trash event directory */

    /* the trash */
    pmm_files_trash_stats tstats;
    bool have_tstats;
    uint64_t evicted;     /* events evicted since start */
    uint64_t trashed;     /* files kept in the trash since start */

    /* reload command */
    reload_run *run;
    bool reload_again;
    uint64_t reload_runs;
    bool have_exit;
    int64_t last_exit;
    int last_signal;
};

#define files_log(l, ...) pmm_log(l, "files", __VA_ARGS__)

#define err_str(rc) pmm_strerror(rc)

static void files_unref(pmm_files *f)
{
    if (--f->refs > 0 || !f->closing) return;
    pmm_files_manifest_clear(&f->local);
    pmm_files_manifest_clear(&f->served);
    pmm_files_manifest_clear(&f->remote);
    pmm_files_manifest_clear(&f->prev);
    pmm_files_manifest_clear(&f->pending);
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

uint64_t pmm_files_digest_tag(const uint8_t digest[PMM_HASH_LEN])
{
    uint64_t t = 0;
    for (int i = 0; i < 8; i++) t = t << 8 | digest[i];
    return t ? t : 1; /* 0 means "not in sync" */
}

static void set_in_sync(pmm_files *f, bool yes, const uint8_t *digest)
{
    bool was = f->in_sync;
    uint8_t old[PMM_HASH_LEN];
    memcpy(old, f->insync_digest, PMM_HASH_LEN);
    f->in_sync = yes;
    if (yes) memcpy(f->insync_digest, digest, PMM_HASH_LEN);
    if ((was != yes || (yes && memcmp(old, digest, PMM_HASH_LEN))) &&
        f->changed && !f->closing)
        f->changed(f->ud);
}

/* A copy of m without the scan's cache fields, as prev. */
static int prev_set(pmm_files *f, const pmm_files_manifest *m)
{
    int rc = pmm_files_manifest_copy(&f->prev, m);
    if (rc) return rc;
    for (size_t i = 0; i < f->prev.n; i++) {
        pmm_file_ent *e = &f->prev.ents[i];
        e->dev = e->ino = 0;
        e->mtime_ns = e->ctime_ns = 0;
        e->cacheable = e->oversize = false;
    }
    f->have_prev = true;
    return 0;
}

static bool prev_is(const pmm_files *f, const uint8_t digest[PMM_HASH_LEN])
{
    return f->have_prev && !memcmp(f->prev.digest, digest, PMM_HASH_LEN);
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

/* ---- rounds ---------------------------------------------------------------------------- */

static void round_start(pmm_files *f, bool forced);

/* Answers a pending `pmgcm files publish --confirm`: ok (its members;
 * reference taken) when given, else the error fmt. */
static void confirm_reply(pmm_files *f, json_t *ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void confirm_reply(pmm_files *f, json_t *ok, const char *fmt, ...)
{
    pmm_ctl_req *req = f->confirm_req;
    f->confirm_req = NULL;
    f->confirm_armed = false;
    f->confirm = false;
    if (ok) {
        pmm_ctl_reply_ok_with(req, ok); /* req NULL: ok released only */
        return;
    }
    if (!req || !fmt) return;
    char msg[PMM_FILES_ERROR_LEN + 200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pmm_ctl_reply_error(req, "%s", msg);
}

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
    f->trashed += f->n_trashed;
    f->n_written = f->n_removed = f->n_trashed = 0;
    f->event[0] = 0;
}

/* The round is over; runs the next one when kicked meanwhile. */
static void round_end(pmm_files *f)
{
    f->busy = false;
    round_reset(f);
    if (f->confirm_armed && !f->again)
        confirm_reply(f, NULL, "nothing published: %s",
                      f->last_err[0] ? f->last_err
                                     : "this node's round did not publish "
                                       "(is it still the master?)");
    f->confirm_armed = false;
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
        set_in_sync(f, false, NULL);
    }
    f->again = false;
    round_end(f);
}

/* ---- the end of a round: files.manifest and the trash (worker) ---- */

typedef struct fin_job {
    uv_work_t w;
    pmm_files *f;
    char data_dir[PMM_PATH_MAX];
    char trash[PMM_PATH_MAX + 32];
    bool load, save, tidy;
    bool save_pending, drop_pending;
    pmm_files_manifest m; /* to save, or loaded */
    pmm_files_manifest pm; /* pending: to save, or loaded */
    int rc_pending;
    uint64_t maxf, maxb;
    pmm_files_trash_stats st;
    int rc_load, rc_save, rc_tidy;
    char err[PMM_FILES_ERROR_LEN];
} fin_job;

static void fin_work(uv_work_t *w)
{
    fin_job *j = w->data;
    if (j->load) {
        j->rc_load = pmm_files_manifest_load(j->data_dir,
                                             PMM_FILES_MANIFEST_FILE, &j->m,
                                             j->err, sizeof(j->err));
        char e2[PMM_FILES_ERROR_LEN];
        j->rc_pending = pmm_files_manifest_load(
            j->data_dir, PMM_FILES_PENDING_FILE, &j->pm, e2, sizeof(e2));
    }
    if (j->save)
        j->rc_save = pmm_files_manifest_save(j->data_dir,
                                             PMM_FILES_MANIFEST_FILE, &j->m);
    if (j->save_pending)
        j->rc_pending = pmm_files_manifest_save(
            j->data_dir, PMM_FILES_PENDING_FILE, &j->pm);
    if (j->drop_pending) {
        char p[PMM_PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s/%s", j->data_dir, PMM_FILES_PENDING_FILE);
        j->rc_pending = unlink(p) && errno != ENOENT ? -errno : 0;
    }
    if (j->tidy)
        j->rc_tidy = pmm_files_trash_tidy(j->trash, j->maxf, j->maxb, &j->st);
}

static void fin_after(uv_work_t *w, int status)
{
    fin_job *j = w->data;
    pmm_files *f = j->f;
    if (!f->closing) {
        if (j->load) {
            char d[2 * PMM_HASH_LEN + 1];
            if (!status && !j->rc_load) {
                pmm_files_manifest_clear(&f->prev);
                f->prev = j->m;
                memset(&j->m, 0, sizeof(j->m));
                f->have_prev = true;
                hex(f->prev.digest, PMM_HASH_LEN, d);
                files_log(PMM_LOG_INFO, "last manifest in sync: %.16s (%zu "
                          "files)", d, f->prev.n);
            } else if (status || j->rc_load != -ENOENT) {
                files_log(PMM_LOG_WARN, "%s; ignored: this node removes no "
                          "mirrored file until it has synced again, and as "
                          "master publishes nothing new without "
                          "confirmation", status ? "load cancelled" : j->err);
            }
            if (!status && !j->rc_pending) {
                pmm_files_manifest_clear(&f->pending);
                f->pending = j->pm;
                memset(&j->pm, 0, sizeof(j->pm));
                f->have_pending = true;
            }
            f->loaded = true;
        }
        if ((j->save_pending || j->drop_pending) && (status || j->rc_pending))
            files_log(PMM_LOG_ERROR, "cannot %s %s/%s: %s",
                      j->save_pending ? "save" : "remove", f->data_dir,
                      PMM_FILES_PENDING_FILE,
                      strerror(status ? ECANCELED : -j->rc_pending));
        if (j->save && (status || j->rc_save))
            files_log(PMM_LOG_ERROR, "cannot save %s/%s: %s", f->data_dir,
                      PMM_FILES_MANIFEST_FILE,
                      strerror(status ? ECANCELED : -j->rc_save));
        if (j->tidy && !status) {
            if (j->rc_tidy)
                files_log(PMM_LOG_WARN, "trash %s: %s", f->trash,
                          strerror(-j->rc_tidy));
            f->tstats = j->st;
            f->have_tstats = true;
            f->evicted += j->st.evicted;
            if (j->st.evicted)
                files_log(PMM_LOG_INFO, "trash %s: %llu oldest event(s) "
                          "deleted (bounds: %llu files, %llu bytes); it "
                          "holds %llu file(s), %llu bytes", f->trash,
                          (unsigned long long)j->st.evicted,
                          (unsigned long long)f->trash_max_files,
                          (unsigned long long)f->trash_max_bytes,
                          (unsigned long long)j->st.files,
                          (unsigned long long)j->st.bytes);
        }
        round_end(f);
    }
    pmm_files_manifest_clear(&j->m);
    pmm_files_manifest_clear(&j->pm);
    free(j);
    files_unref(f);
}

/* Ends the round once prev is saved (save) and the trash tidied (tidy)
 * on a worker thread; load: the start-up read of files.manifest (and
 * files.pending). A round that ends with prev saved also drops pending. */
static void round_finish(pmm_files *f, bool load, bool save, bool tidy)
{
    bool drop = f->have_pending && (save || f->pending_done);
    f->pending_done = false;
    if (drop) {
        pmm_files_manifest_clear(&f->pending);
        f->have_pending = false;
    }
    if (!load && !save && !tidy) {
        round_end(f);
        return;
    }
    fin_job *j = calloc(1, sizeof(*j));
    if (!j || (save && pmm_files_manifest_copy(&j->m, &f->prev))) {
        free(j);
        files_log(PMM_LOG_ERROR, "out of memory saving the manifest");
        f->loaded = true;
        round_end(f);
        return;
    }
    j->f = f;
    j->w.data = j;
    j->load = load;
    j->save = save;
    j->drop_pending = drop;
    j->tidy = tidy;
    j->maxf = f->trash_max_files;
    j->maxb = f->trash_max_bytes;
    snprintf(j->data_dir, sizeof(j->data_dir), "%s", f->data_dir);
    snprintf(j->trash, sizeof(j->trash), "%s", f->trash);
    f->refs++;
    if (uv_queue_work(f->loop, &j->w, fin_work, fin_after)) {
        f->refs--;
        pmm_files_manifest_clear(&j->m);
        free(j);
        f->loaded = true;
        round_end(f);
    }
}

/* node: written and removed files are done (or there was nothing to do);
 * remote is what this node now holds */
static void node_done(pmm_files *f)
{
    uint32_t w = f->n_written, r = f->n_removed, t = f->n_trashed;
    char d[2 * PMM_HASH_LEN + 1];
    hex(f->remote.digest, PMM_HASH_LEN, d);
    const pmm_cluster *cl;
    self_in(f, &cl);
    round_ok(f);
    bool save = !prev_is(f, f->remote.digest) && !prev_set(f, &f->remote);
    f->pending_done = true;
    set_in_sync(f, cl && cl->has_files_digest && !f->rerrs.total &&
                       !memcmp(cl->files_digest, f->remote.digest,
                               PMM_HASH_LEN),
                f->remote.digest);
    if (w || r) {
        files_log(PMM_LOG_INFO, "%s: %u file(s) written, %u removed: now the "
                  "master's manifest %.16s (%zu files)%s%s%s", f->dir, w, r,
                  d, f->remote.n, t ? "; the versions replaced or removed "
                  "are kept in " : "", t ? f->event : "", t ? "/" : "");
        reload_start(f);
        f->again = true; /* rescan: confirm what is on disk now */
    }
    round_finish(f, false, save, t > 0);
}

/* ---- node: removing ---- */

typedef struct del_job {
    uv_work_t w;
    pmm_files *f;
    char dir[PMM_PATH_MAX];
    char event[EVENT_MAX];
    uint64_t max_copy;
    char (*names)[PMM_FILES_NAME_MAX + 1];
    size_t n, done, kept;
    int rc;
    bool keep_failed;
    char bad[PMM_FILES_NAME_MAX + 1];
} del_job;

static void del_work(uv_work_t *w)
{
    del_job *j = w->data;
    for (size_t i = 0; i < j->n; i++) {
        /* never removed without a copy in the trash */
        int rc = pmm_files_trash_keep(j->dir, j->names[i], j->event, "removed",
                                      j->max_copy);
        if (rc >= 0) {
            j->kept += (size_t)rc;
            rc = pmm_files_remove(j->dir, j->names[i]);
            if (!rc) j->done++;
        } else if (!j->rc) {
            j->keep_failed = true;
        }
        if (rc < 0 && !j->rc) {
            j->rc = rc;
            snprintf(j->bad, sizeof(j->bad), "%s", j->names[i]);
        }
    }
}

static void del_after(uv_work_t *w, int status)
{
    del_job *j = w->data;
    pmm_files *f = j->f;
    if (!f->closing) {
        f->n_removed += (uint32_t)j->done;
        f->n_trashed += (uint32_t)j->kept;
        if (status)
            round_fail(f, "removing files: cancelled");
        else if (j->keep_failed)
            round_fail(f, "cannot keep %s/%s in the trash (%s): not removed",
                       f->dir, j->bad, strerror(-j->rc));
        else if (j->rc)
            round_fail(f, "cannot remove %s/%s: %s", f->dir, j->bad,
                       strerror(-j->rc));
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
    snprintf(j->event, sizeof(j->event), "%s", f->event);
    j->max_copy = f->trash_max_bytes;
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
    char event[EVENT_MAX];
    uint64_t max_copy;
    pmm_file_ent e;
    uint8_t *data; /* owned */
    int rc;
    size_t kept;
    bool keep_failed;
    char bad[PMM_FILES_NAME_MAX + 1];
} write_job;

/* 1: dir/name is a regular file of size bytes with this SHA-256; 0: it is
 * a regular file with other content; -1: there is no regular file. */
static int same_content(const char *dir, const char *name, uint64_t size,
                        const uint8_t sha[PMM_HASH_LEN])
{
    int dfd;
    const char *base;
    if (open_parent(dir, name, false, &dfd, &base)) return -1;
    struct stat st;
    int res = 0;
    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) || !S_ISREG(st.st_mode)) {
        res = -1;
    } else if ((uint64_t)st.st_size == size) {
        scan_ctx x;
        memset(&x, 0, sizeof(x));
        uint8_t got[PMM_HASH_LEN];
        /* changed while read (-EAGAIN) or unreadable: "differs", and the
         * trash keeps whatever is there */
        if (!hash_file(&x, dfd, base, name, &st, got))
            res = !memcmp(got, sha, PMM_HASH_LEN);
    }
    close(dfd);
    return res;
}

/* Keeps dir/path in the trash when it is a regular file (j's event). */
static bool write_keep(write_job *j, const char *path, const char *why)
{
    int rc = pmm_files_trash_keep(j->dir, path, j->event, why, j->max_copy);
    if (rc < 0) {
        j->rc = rc;
        j->keep_failed = true;
        snprintf(j->bad, sizeof(j->bad), "%s", path);
        return false;
    }
    j->kept += (size_t)rc;
    return true;
}

static void write_work(uv_work_t *w)
{
    write_job *j = w->data;
    uint8_t sha[PMM_HASH_LEN];
    if (mbedtls_sha256_ret(j->data, j->e.size, sha, 0) ||
        memcmp(sha, j->e.sha, PMM_HASH_LEN)) {
        j->rc = -EBADMSG;
        return;
    }
    /* a file where the new one needs a directory: kept first */
    char pre[PMM_FILES_NAME_MAX + 1];
    for (const char *s = strchr(j->e.name, '/'); s; s = strchr(s + 1, '/')) {
        snprintf(pre, sizeof(pre), "%.*s", (int)(s - j->e.name), j->e.name);
        if (!write_keep(j, pre, "replaced-by-directory")) return;
    }
    /* the file itself, unless it already holds these bytes */
    if (same_content(j->dir, j->e.name, j->e.size, j->e.sha) == 0 &&
        !write_keep(j, j->e.name, "replaced"))
        return;
    j->rc = pmm_files_write(j->dir, j->e.name, j->data, j->e.size, j->e.mode);
}

static void write_after(uv_work_t *w, int status)
{
    write_job *j = w->data;
    pmm_files *f = j->f;
    if (!f->closing) {
        f->n_trashed += (uint32_t)j->kept;
        if (status)
            round_fail(f, "writing %s/%s: cancelled", f->dir, j->e.name);
        else if (j->rc == -EBADMSG)
            round_fail(f, "%s: the data received from the master does not "
                       "match its SHA-256; retrying", j->e.name);
        else if (j->keep_failed)
            round_fail(f, "cannot keep %s/%s in the trash (%s): not "
                       "replaced", f->dir, j->bad, strerror(-j->rc));
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
                snprintf(j->event, sizeof(j->event), "%s", f->event);
                j->max_copy = f->trash_max_bytes;
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

/* "a, b, c" of n names (at most PMM_FILES_NAMES_SHOWN kept), "..." when
 * there are more */
static void names_line(char *out, size_t len,
                       char (*names)[PMM_FILES_NAME_MAX + 1], size_t kept,
                       size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < kept && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "",
                              names[i]);
    if (n > kept && o < len) snprintf(out + o, len - o, ", ...");
}

/* node: before it writes or removes anything for remote, every file of
 * remote joins pending (saved first): if the round is cut short, the files
 * it wrote stay removable (they are mirrored, not the node's own). Then
 * fetching starts. */
typedef struct pend_job {
    uv_work_t w;
    pmm_files *f;
    char data_dir[PMM_PATH_MAX];
    pmm_files_manifest m;
    int rc;
} pend_job;

static void pend_work(uv_work_t *w)
{
    pend_job *j = w->data;
    j->rc = pmm_files_manifest_save(j->data_dir, PMM_FILES_PENDING_FILE,
                                    &j->m);
}

static void pend_after(uv_work_t *w, int status)
{
    pend_job *j = w->data;
    pmm_files *f = j->f;
    if (!f->closing) {
        if (status || j->rc)
            /* the files would only be kept as unmanaged: not fatal */
            files_log(PMM_LOG_ERROR, "cannot save %s/%s: %s", f->data_dir,
                      PMM_FILES_PENDING_FILE,
                      strerror(status ? ECANCELED : -j->rc));
        fetch_next(f);
    }
    pmm_files_manifest_clear(&j->m);
    free(j);
    files_unref(f);
}

static void node_pending(pmm_files *f)
{
    pmm_files_manifest u;
    memset(&u, 0, sizeof(u));
    int rc = f->have_pending
                 ? pmm_files_manifest_union(&u, &f->pending, &f->remote)
                 : pmm_files_manifest_copy(&u, &f->remote);
    if (rc == -E2BIG) rc = pmm_files_manifest_copy(&u, &f->remote);
    if (rc) {
        pmm_files_manifest_clear(&u);
        fetch_next(f);
        return;
    }
    if (f->have_pending && !memcmp(u.digest, f->pending.digest, PMM_HASH_LEN)) {
        pmm_files_manifest_clear(&u);
        fetch_next(f); /* nothing new */
        return;
    }
    pmm_files_manifest_clear(&f->pending);
    f->pending = u;
    f->have_pending = true;
    pend_job *j = calloc(1, sizeof(*j));
    if (!j || pmm_files_manifest_copy(&j->m, &f->pending)) {
        free(j);
        fetch_next(f);
        return;
    }
    j->f = f;
    j->w.data = j;
    snprintf(j->data_dir, sizeof(j->data_dir), "%s", f->data_dir);
    f->refs++;
    if (uv_queue_work(f->loop, &j->w, pend_work, pend_after)) {
        f->refs--;
        pmm_files_manifest_clear(&j->m);
        free(j);
        fetch_next(f);
    }
}

/* node: remote (the master's manifest) against local: what to fetch,
 * what to remove (only files the last manifest in sync listed), what to
 * leave alone */
static void node_plan(pmm_files *f)
{
    if (pmm_files_diff(&f->local, &f->remote, &f->fetch, &f->n_fetch,
                       &f->del, &f->n_del)) {
        round_fail(f, "out of memory");
        return;
    }
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
    /* a file no manifest this node synced to listed is not ours to remove */
    mbedtls_sha256_context c;
    mbedtls_sha256_init(&c);
    mbedtls_sha256_starts_ret(&c, 0);
    size_t nu = 0;
    k = 0;
    for (size_t i = 0; i < f->n_del; i++) {
        const char *name = f->local.ents[f->del[i]].name;
        if ((f->have_prev && pmm_files_find(&f->prev, name)) ||
            (f->have_pending && pmm_files_find(&f->pending, name))) {
            f->del[k++] = f->del[i];
            continue;
        }
        if (nu < PMM_FILES_NAMES_SHOWN)
            snprintf(f->unmanaged[nu], sizeof(f->unmanaged[nu]), "%s", name);
        nu++;
        mbedtls_sha256_update_ret(&c, (const uint8_t *)name, strlen(name) + 1);
    }
    f->n_del = k;
    f->n_unmanaged = nu;
    uint8_t sig[PMM_HASH_LEN];
    mbedtls_sha256_finish_ret(&c, sig);
    mbedtls_sha256_free(&c);
    if (memcmp(sig, f->unmanaged_sig, PMM_HASH_LEN)) {
        memcpy(f->unmanaged_sig, sig, PMM_HASH_LEN);
        if (nu) {
            char line[PMM_FILES_ERROR_LEN];
            names_line(line, sizeof(line), f->unmanaged,
                       nu < PMM_FILES_NAMES_SHOWN ? nu : PMM_FILES_NAMES_SHOWN,
                       nu);
            files_log(PMM_LOG_WARN, "%s: %zu file(s) that no manifest this "
                      "node synced to listed are left alone (never removed "
                      "by mirroring): %s", f->dir, nu, line);
        }
    }
    if (!f->n_fetch && !f->n_del) {
        node_done(f); /* in sync, the unmanaged files aside */
        return;
    }
    set_in_sync(f, false, NULL);
    files_log(PMM_LOG_INFO, "%s differs from the master: %zu file(s) to "
              "fetch, %zu to remove", f->dir, f->n_fetch, f->n_del);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(f->event, sizeof(f->event),
             "%s/%04d%02d%02dT%02d%02d%02d.%03ldZ", f->trash,
             (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100,
             tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100,
             tm.tm_sec % 100, (ts.tv_nsec / 1000000) % 1000);
    node_pending(f); /* then fetch_next */
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
    } else {
        node_plan(f);
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

/* master: local is not what is published and must not be published
 * without confirmation */
static void master_hold(pmm_files *f, int why, size_t dropped)
{
    const pmm_files_manifest *l = &f->local;
    f->held = why;
    memcpy(f->held_digest, l->digest, PMM_HASH_LEN);
    f->held_n = l->n;
    f->held_of = f->have_prev ? f->prev.n : 0;
    f->held_dropped = dropped;
    f->held_nnames = 0;
    for (size_t i = 0; why == HOLD_DROP && i < f->prev.n &&
                       f->held_nnames < PMM_FILES_NAMES_SHOWN;
         i++)
        if (!pmm_files_find(l, f->prev.ents[i].name))
            snprintf(f->held_names[f->held_nnames++], PMM_FILES_NAME_MAX + 1,
                     "%s", f->prev.ents[i].name);
    if (!memcmp(f->held_logged, l->digest, PMM_HASH_LEN)) return;
    memcpy(f->held_logged, l->digest, PMM_HASH_LEN);
    char d[2 * PMM_HASH_LEN + 1], line[PMM_FILES_ERROR_LEN];
    hex(l->digest, PMM_HASH_LEN, d);
    if (why == HOLD_DROP) {
        names_line(line, sizeof(line), f->held_names, f->held_nnames,
                   dropped);
        files_log(PMM_LOG_WARN, "%s: not publishing: the directory now "
                  "drops %zu of the %zu published files (%s); restore them, "
                  "or publish it (manifest %.16s, %zu files) with `pmgcm "
                  "files publish --confirm` (the nodes keep what it drops in "
                  "their trash)", f->dir, dropped, f->held_of, line, d, l->n);
    } else {
        const pmm_cluster *cl;
        self_in(f, &cl);
        char p[2 * PMM_HASH_LEN + 1] = "?";
        if (cl && cl->has_files_digest) hex(cl->files_digest, PMM_HASH_LEN, p);
        files_log(PMM_LOG_WARN, "%s: not publishing: this node does not "
                  "hold the published manifest %.16s (promoted while its "
                  "files_dir was not in sync?); copy the files from a node "
                  "that is in sync, or publish this directory (manifest "
                  "%.16s, %zu files) with `pmgcm files publish --confirm`",
                  f->dir, p, d, l->n);
    }
}

static void master_publish(pmm_files *f)
{
    memset(&f->rerrs, 0, sizeof(f->rerrs)); /* a node's view only */
    memset(&f->unmanaged_sig, 0, sizeof(f->unmanaged_sig));
    f->n_unmanaged = 0;
    const pmm_cluster *cl;
    self_in(f, &cl);
    if (!cl) {
        round_end(f);
        return;
    }
    const pmm_files_manifest *l = &f->local;
    char d[2 * PMM_HASH_LEN + 1];
    hex(l->digest, PMM_HASH_LEN, d);
    bool pub = cl->has_files_digest;
    if (pub && !memcmp(cl->files_digest, l->digest, PMM_HASH_LEN)) {
        /* the published manifest: nothing new (restored files end a hold) */
        if (f->held)
            files_log(PMM_LOG_INFO, "%s holds the published manifest again: "
                      "nothing held for confirmation", f->dir);
        f->held = HOLD_NONE;
        if (f->confirm_armed)
            confirm_reply(f, NULL, "nothing to publish: %s holds the "
                          "published manifest %.16s again", f->dir, d);
        if ((!f->have_served ||
             memcmp(f->served.digest, l->digest, PMM_HASH_LEN)) &&
            !pmm_files_manifest_copy(&f->served, l))
            f->have_served = true;
        set_in_sync(f, true, l->digest);
        bool save = !prev_is(f, l->digest) && !prev_set(f, l);
        round_ok(f);
        round_finish(f, false, save, false);
        return;
    }
    set_in_sync(f, false, NULL);
    bool confirmed = f->confirm &&
                     !memcmp(f->confirm_digest, l->digest, PMM_HASH_LEN);
    if (pub && !confirmed) {
        size_t dropped = 0;
        int why = HOLD_NONE;
        if (!prev_is(f, cl->files_digest)) why = HOLD_UNKNOWN;
        else if (pmm_files_mass_drop(&f->prev, l, &dropped)) why = HOLD_DROP;
        if (why) {
            master_hold(f, why, dropped);
            /* FILES answers what is published, when this node knows it */
            if (why == HOLD_DROP &&
                (!f->have_served ||
                 memcmp(f->served.digest, f->prev.digest, PMM_HASH_LEN)) &&
                !pmm_files_manifest_copy(&f->served, &f->prev))
                f->have_served = true;
            if (f->confirm_armed)
                confirm_reply(f, NULL, "nothing published: %s changed since "
                              "it was held; it now %s: check it and confirm "
                              "again", f->dir, why == HOLD_DROP
                              ? "drops most of the published files"
                              : "is another manifest");
            round_ok(f);
            round_end(f);
            return;
        }
    }
    int rc = pmm_lc_set_files_digest(f->lc, l->digest);
    if (rc == -EBUSY) {
        files_log(PMM_LOG_DEBUG, "a key rotation runs: publishing later");
        round_ok(f);
        round_end(f);
        return;
    }
    if (rc && rc != -EPERM && rc != -ENOENT) {
        round_fail(f, "cannot publish the files digest: %s", strerror(-rc));
        return;
    }
    if (rc) {
        round_end(f);
        return;
    }
    if (f->held)
        files_log(PMM_LOG_WARN, "%s: published manifest %.16s (%zu files) "
                  "on an admin's confirmation%s", f->dir, d, l->n,
                  f->held == HOLD_DROP ? "; it dropped most of the files "
                  "published before: the nodes keep them in their trash"
                  : "");
    if (f->confirm_armed) {
        json_t *ok = json_pack("{s:o, s:I, s:I}", "digest", pmm_jstrz(d),
                               "files", (json_int_t)l->n, "dropped",
                               (json_int_t)f->held_dropped);
        confirm_reply(f, ok, "published, but out of memory for the "
                      "answer");
    }
    f->held = HOLD_NONE;
    f->confirm = false;
    if (!pmm_files_manifest_copy(&f->served, l)) f->have_served = true;
    else f->have_served = false;
    set_in_sync(f, true, l->digest);
    bool save = !prev_set(f, l);
    round_ok(f);
    round_finish(f, false, save, false);
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
        /* exactly the published manifest */
        f->round_master = false;
        memset(&f->rerrs, 0, sizeof(f->rerrs));
        f->n_unmanaged = 0;
        memset(&f->unmanaged_sig, 0, sizeof(f->unmanaged_sig));
        round_ok(f);
        set_in_sync(f, true, f->local.digest);
        bool save = !prev_is(f, f->local.digest) && !prev_set(f, &f->local);
        f->pending_done = true;
        round_finish(f, false, save, false);
    } else if (prev_is(f, cl->files_digest)) {
        /* the published manifest is the one this node synced to: compare
         * with it, ask the master only for the files that differ */
        f->round_master = false;
        if (pmm_files_manifest_copy(&f->remote, &f->prev))
            round_fail(f, "out of memory");
        else
            node_plan(f);
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
    if (!f->loaded) return; /* the load's end starts the first round */
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
    if (f->confirm_req) f->confirm_armed = true;
    f->refs++;
    if (uv_queue_work(f->loop, &j->w, scan_work, scan_after)) {
        f->refs--;
        f->local = j->prev;
        free(j);
        f->busy = false;
        f->confirm_armed = false;
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
    pmm_api_req *sr;
    char dir[PMM_PATH_MAX];
    pmm_file_ent e;
    uint64_t off;
    size_t len, got;
    uint8_t *buf;
    int rc;
} serve_job;

static void reply_error(pmm_api_req *sr, const char *msg)
{
    Resp r = PMGCM__CLUSTER__RESPONSE__INIT;
    r.ok = 0;
    r.error = (char *)msg;
    pmm_lc_api_reply(sr, &r);
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
        pmm_lc_api_reply(j->sr, &r);
    }
    free(j->buf);
    free(j);
    files_unref(f);
}

static void serve_req(pmm_files *f, pmm_api_req *sr, const Req *req);

/* FILES and FILE_GET from member nodes (the node API, net.h) */
static void serve(void *ud, pmm_api_req *sr, const uint8_t *frame,
                  size_t len)
{
    Req *req = pmgcm__cluster__request__unpack(NULL, len, frame);
    if (!req) {
        reply_error(sr, "malformed request");
        return;
    }
    serve_req(ud, sr, req);
    pmgcm__cluster__request__free_unpacked(req, NULL);
}

static void serve_req(pmm_files *f, pmm_api_req *sr, const Req *req)
{
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    if (!me || !me->master) {
        reply_error(sr, "this node is not the master");
        return;
    }
    if (!f->have_served) {
        reply_error(sr, f->held ? "the master holds its files for an "
                    "admin's confirmation; retry"
                    : "the master has not scanned its files yet; retry");
        return;
    }
    if (req->kind == PMGCM__CLUSTER__REQUEST__KIND__FILES) {
        Resp r = PMGCM__CLUSTER__RESPONSE__INIT;
        r.ok = 1;
        if (pmm_files_to_resp(&f->served, &r)) {
            reply_error(sr, "out of memory");
            return;
        }
        pmm_lc_api_reply(sr, &r);
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

static void errs_json(json_t *arr, const pmm_files_errs *e)
{
    for (size_t i = 0; i < e->n; i++)
        json_array_append_new(arr, pmm_jstr(e->msg[i], strlen(e->msg[i])));
}

static json_t *names_json(char (*names)[PMM_FILES_NAME_MAX + 1], size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, pmm_jstr(names[i], strlen(names[i])));
    return arr;
}

/* A digest as hex, or JSON null. */
static json_t *digest_json(bool have, const uint8_t *dg)
{
    if (!have) return json_null();
    char d[2 * PMM_HASH_LEN + 1];
    hex(dg, PMM_HASH_LEN, d);
    return json_string(d);
}

static json_t *opt_str(const char *s)
{
    return s[0] ? pmm_jstr(s, strlen(s)) : json_null();
}

static bool synced_now(const pmm_files *f, const pmm_cluster *cl)
{
    return f->in_sync && cl && cl->has_files_digest &&
           !memcmp(cl->files_digest, f->insync_digest, PMM_HASH_LEN);
}

json_t *pmm_files_status(const pmm_files *f)
{
    if (!f) return NULL;
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    json_t *errors = json_array();
    if (errors) {
        errs_json(errors, &f->errs);
        errs_json(errors, &f->rerrs);
    }
    json_t *held = json_null();
    if (f->held)
        held = json_pack(
            "{s:o, s:s, s:I, s:I, s:I, s:o, s:s}",
            "digest", digest_json(true, f->held_digest),
            "reason", f->held == HOLD_DROP
                          ? "drops most of the published files"
                          : "this node does not hold the published manifest",
            "files", (json_int_t)f->held_n,
            "published_files", (json_int_t)f->held_of,
            "dropped", (json_int_t)f->held_dropped,
            "dropped_names",
            names_json((char(*)[PMM_FILES_NAME_MAX + 1])f->held_names,
                       f->held_nnames),
            "confirm", "pmgcm files publish --confirm");
    json_t *last_exit = !f->have_exit ? json_null()
                        : f->last_signal
                            ? json_sprintf("signal %d", f->last_signal)
                            : json_integer((json_int_t)f->last_exit);
    size_t shown = f->n_unmanaged < PMM_FILES_NAMES_SHOWN
                       ? f->n_unmanaged
                       : PMM_FILES_NAMES_SHOWN;
    json_t *st = json_pack(
        "{s:o, s:s, s:o, s:o, s:o, s:b, s:I, s:I, s:I, s:I, s:o, s:o,"
        " s:{s:I, s:o}, s:o, s:{s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o},"
        " s:{s:b, s:I, s:b, s:o}}",
        "dir", pmm_jstr(f->dir, strlen(f->dir)),
        "role", !me ? "-" : me->master ? "master" : "node",
        "published", digest_json(cl && cl->has_files_digest,
                                 cl ? cl->files_digest : NULL),
        "local", digest_json(f->have_scan, f->scan_digest),
        "last_synced", digest_json(f->have_prev, f->prev.digest),
        "synced", synced_now(f, cl),
        "count", (json_int_t)f->scan_n,
        "bytes", (json_int_t)f->scan_bytes,
        "max_bytes", (json_int_t)f->max_bytes,
        "problems", (json_int_t)(f->errs.total + f->rerrs.total),
        "errors", errors,
        "last_error", opt_str(f->last_err),
        "unmanaged",
            "count", (json_int_t)f->n_unmanaged,
            "names", names_json((char(*)[PMM_FILES_NAME_MAX + 1])f->unmanaged,
                                shown),
        "held", held,
        "trash",
            "dir", pmm_jstr(f->trash, strlen(f->trash)),
            "events", (json_int_t)f->tstats.events,
            "files", (json_int_t)f->tstats.files,
            "bytes", (json_int_t)f->tstats.bytes,
            "max_files", (json_int_t)f->trash_max_files,
            "max_bytes", (json_int_t)f->trash_max_bytes,
            "kept", (json_int_t)f->trashed,
            "evicted", (json_int_t)f->evicted,
            "newest", opt_str(f->tstats.newest),
        "reload",
            "configured", f->cfg->files_reload[0] != '\0',
            "runs", (json_int_t)f->reload_runs,
            "running", f->run != NULL,
            "last_exit", last_exit);
    return st;
}

/* ---- promote, metadata, `pmgcm files publish` ------------------------------------------- */

int pmm_files_promote_ready(const pmm_files *f, const pmm_cluster *cl,
                            char *why, size_t len)
{
    if (!cl || !cl->has_files_digest) return 0;
    char p[2 * PMM_HASH_LEN + 1], d[2 * PMM_HASH_LEN + 1];
    hex(cl->files_digest, PMM_HASH_LEN, p);
    if (!f)
        return pmm_errf(why, len, -EAGAIN, "the cluster mirrors files "
                        "(manifest %.16s) but this node has no files_dir",
                        p);
    if (synced_now(f, cl)) return 0;
    if (f->have_prev) hex(f->prev.digest, PMM_HASH_LEN, d);
    return pmm_errf(why, len, -EAGAIN, "files_dir %s is not in sync with "
                    "the cluster's mirrored files (published manifest %.16s; "
                    "this node %s%.16s%s%s%s)", f->dir, p,
                    !f->loaded ? "has not read its state yet"
                    : !f->have_prev ? "never synced"
                                    : "was last in sync with manifest ",
                    f->loaded && f->have_prev ? d : "",
                    f->last_err[0] ? ": " : "", f->last_err,
                    f->busy && !f->last_err[0] ? "; a sync is running" : "");
}

uint64_t pmm_files_sync_tag(const pmm_files *f)
{
    if (!f) return 0;
    const pmm_cluster *cl;
    self_in(f, &cl);
    return synced_now(f, cl) ? pmm_files_digest_tag(f->insync_digest) : 0;
}

void pmm_files_ctl_publish(pmm_files *f, pmm_ctl_req *req, bool confirm)
{
    if (!f) {
        pmm_ctl_reply_error(req, "no files_dir on this node: nothing to "
                            "publish");
        return;
    }
    const pmm_cluster *cl;
    const pmm_cnode *me = self_in(f, &cl);
    if (!me) {
        pmm_ctl_reply_error(req, "no cluster defined");
        return;
    }
    if (!me->master) {
        const pmm_cnode *m = pmm_cluster_master(cl);
        pmm_ctl_reply_error(req, "only the master publishes files; the master "
                            "is %s", m ? m->name : "unknown");
        return;
    }
    char d[2 * PMM_HASH_LEN + 1];
    if (!f->held) {
        if (cl->has_files_digest) hex(cl->files_digest, PMM_HASH_LEN, d);
        pmm_ctl_reply_error(req, "nothing is held for confirmation: %s is "
                            "published as it is (manifest %.16s)", f->dir,
                            cl->has_files_digest ? d : "none yet");
        return;
    }
    hex(f->held_digest, PMM_HASH_LEN, d);
    if (!confirm) {
        char line[PMM_FILES_ERROR_LEN];
        names_line(line, sizeof(line),
                   (char(*)[PMM_FILES_NAME_MAX + 1])f->held_names,
                   f->held_nnames, f->held_dropped);
        if (f->held == HOLD_DROP)
            pmm_ctl_reply_error(req, "held: %s (manifest %.16s, %zu files) "
                                "drops %zu of the %zu published files (%s); "
                                "`pmgcm files publish --confirm` publishes "
                                "it, and the nodes keep what it drops in "
                                "their trash", f->dir, d, f->held_n,
                                f->held_dropped, f->held_of, line);
        else
            pmm_ctl_reply_error(req, "held: this node does not hold the "
                                "published manifest; `pmgcm files publish "
                                "--confirm` publishes %s as it is (manifest "
                                "%.16s, %zu files), and the nodes keep what "
                                "it drops in their trash", f->dir, d,
                                f->held_n);
        return;
    }
    if (f->confirm_req) {
        pmm_ctl_reply_error(req, "a confirmation is already running");
        return;
    }
    f->confirm = true;
    memcpy(f->confirm_digest, f->held_digest, PMM_HASH_LEN);
    f->confirm_req = req;
    round_start(f, true);
}

/* ---- start / close ------------------------------------------------------------------------ */

/* FILES and FILE_GET on the node API: to fn, or refused (fn NULL). */
static void files_register(pmm_api *api, pmm_api_handler fn, pmm_files *f)
{
    static const char off[] = "no mirrored files on this node";
    pmm_api_register(api, PMGCM__CLUSTER__REQUEST__KIND__FILES,
                     PMM_API_MEMBER, fn, f, off);
    pmm_api_register(api, PMGCM__CLUSTER__REQUEST__KIND__FILE_GET,
                     PMM_API_MEMBER, fn, f, off);
}

int pmm_files_start(pmm_files **out, const pmm_files_env *env, char *err,
                    size_t errlen)
{
    *out = NULL;
    const pmm_config *cfg = env->cfg;
    if (!cfg->files_dir[0]) {
        files_register(env->api, NULL, NULL);
        return 0;
    }
    if (cfg->files_dir[0] != '/')
        return pmm_errf(err, errlen, -EINVAL, "files_dir must be absolute");
    pmm_files *f = calloc(1, sizeof(*f));
    if (!f) return -ENOMEM;
    f->loop = env->loop;
    f->cfg = cfg;
    f->lc = env->lc;
    f->api = env->api;
    f->node_id = env->node_id;
    f->changed = env->changed;
    f->ud = env->ud;
    snprintf(f->dir, sizeof(f->dir), "%s", cfg->files_dir);
    size_t l = strlen(f->dir);
    while (l > 1 && f->dir[l - 1] == '/') f->dir[--l] = 0;
    snprintf(f->data_dir, sizeof(f->data_dir), "%s", cfg->data_dir);
    snprintf(f->trash, sizeof(f->trash), "%s/%s", cfg->data_dir,
             PMM_FILES_TRASH_DIR);
    f->max_bytes = cfg->files_max_bytes ? cfg->files_max_bytes : (1u << 20);
    if (f->max_bytes > PMM_FILES_SIZE_MAX) f->max_bytes = PMM_FILES_SIZE_MAX;
    f->trash_max_files = cfg->files_trash_max_files
                             ? cfg->files_trash_max_files
                             : PMM_FILES_TRASH_FILES;
    f->trash_max_bytes = cfg->files_trash_max_bytes
                             ? cfg->files_trash_max_bytes
                             : PMM_FILES_TRASH_BYTES;
    uv_timer_init(f->loop, &f->timer);
    f->timer.data = f;
    f->refs = 1;
    uv_timer_start(&f->timer, timer_cb, PMM_FILES_SCAN_MS, PMM_FILES_SCAN_MS);
    files_register(f->api, serve, f);
    files_log(PMM_LOG_INFO, "mirroring %s (files up to %u bytes; trash %s: "
              "%llu files, %llu bytes at most%s%s)", f->dir, f->max_bytes,
              f->trash, (unsigned long long)f->trash_max_files,
              (unsigned long long)f->trash_max_bytes,
              cfg->files_reload[0] ? "; reload: " : "", cfg->files_reload);
    /* A read-only files_dir (or the directory it is to be made in) is
     * almost always a sandbox: pmgclusterd.service's ProtectSystem=strict
     * leaves only data_dir and /etc/pmg writable. Said once, at start,
     * with the fix (blocking is fine: the loop does not run yet). */
    {
        char probe[PMM_PATH_MAX];
        snprintf(probe, sizeof(probe), "%s", f->dir);
        while (access(probe, F_OK) != 0 && errno == ENOENT) {
            char *sl = strrchr(probe, '/');
            if (sl == NULL || sl == probe) {
                snprintf(probe, sizeof(probe), "/");
                break;
            }
            *sl = 0;
        }
        if (access(probe, W_OK) != 0 && errno == EROFS)
            files_log(PMM_LOG_ERROR, "%s is on a read-only file system here, "
                      "so this node cannot mirror into %s: under "
                      "pmgclusterd.service add `ReadWritePaths=%s` in "
                      "`systemctl edit pmgclusterd` (only /etc/pmg is "
                      "writable by default)", probe, f->dir, f->dir);
    }
    /* read files.manifest and count the trash first; then the first round */
    f->busy = true;
    f->again = true;
    round_finish(f, true, false, true);
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
    if (f->confirm_req) {
        pmm_ctl_reply_error(f->confirm_req, "daemon shutting down");
        f->confirm_req = NULL;
    }
    f->closing = true;
    files_register(f->api, NULL, NULL);
    if (f->run) run_close(f->run); /* the command itself runs on */
    uv_close((uv_handle_t *)&f->timer, timer_closed);
}
