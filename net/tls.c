/*
 * tls.c - node identity, fingerprints and the framed TLS 1.2 channel over
 * libuv (see tls.h).
 *
 * mbedTLS never touches a socket here: its BIO callbacks read from a memory
 * buffer that uv_read fills and write into a memory buffer that uv_write
 * drains, returning MBEDTLS_ERR_SSL_WANT_READ / WANT_WRITE when the buffer
 * is empty / full. Every event (bytes arrived, write done, timer, a deferred
 * kick) runs step(), which advances the handshake, decrypts and delivers
 * frames, encrypts queued frames and moves the close sequence along.
 *
 * Peer authentication: authmode OPTIONAL with our own f_vrfy. mbedTLS 2.28
 * with VERIFY_REQUIRED insists on a CA chain (MBEDTLS_ERR_SSL_CA_CHAIN_
 * REQUIRED); with OPTIONAL it ignores chain failures (NOT_TRUSTED for a
 * self-signed cert) but still treats a non-zero return of f_vrfy as fatal.
 * f_vrfy records the leaf's fingerprint (depth 0) and, for a pinned client,
 * fails the handshake on a mismatch. OPTIONAL also lets a client without a
 * certificate complete the handshake (verify_result BADCERT_MISSING and
 * f_vrfy never called), so "no fingerprint recorded" is checked after the
 * handshake and refused as PMM_TLS_ENOCERT.
 *
 * Lifetime: a connection is freed only when its three handles (tcp, timer,
 * idle kick) are closed and no callback of ours is on the stack (depth 0);
 * the user's close callback runs just before that.
 */
#include "net/net.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#define FILE_MAX (16 * 1024)
#define INBUF_CAP (64 * 1024)
#define CIPHER_CAP (64 * 1024)
#define STAGE_CAP 16384 /* one TLS record's plaintext */

/* ======================================================================
 * errors
 * ====================================================================== */

const char *pmm_tls_strerror(int err)
{
    return pmm_strerror(err);
}

/* ======================================================================
 * randomness: the process's one generator (common.h pmm_random)
 * ====================================================================== */

/* mbedTLS's f_rng: common's generator */
static int rng(void *unused, unsigned char *out, size_t len)
{
    (void)unused;
    return pmm_random(out, len) == 0
               ? 0 : MBEDTLS_ERR_CTR_DRBG_ENTROPY_SOURCE_FAILED;
}

/* ======================================================================
 * fingerprints
 * ====================================================================== */

int pmm_tls_fingerprint(const uint8_t *der, size_t der_len, pmm_tls_fp *out)
{
    if (der == NULL || der_len == 0 || out == NULL)
        return -EINVAL;
    if (mbedtls_sha256_ret(der, der_len, out->b, 0) != 0)
        return -EIO;
    return 0;
}

char *pmm_tls_fp_str(const pmm_tls_fp *fp, char *buf, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (buf == NULL || len == 0)
        return buf;
    if (len < PMM_TLS_FP_STR_SIZE) {
        buf[0] = '\0';
        return buf;
    }
    char *p = buf;
    for (size_t i = 0; i < PMM_TLS_FP_LEN; i++) {
        if (i)
            *p++ = ':';
        *p++ = hex[fp->b[i] >> 4];
        *p++ = hex[fp->b[i] & 15];
    }
    *p = '\0';
    return buf;
}

int pmm_tls_fp_parse(pmm_tls_fp *out, const char *s)
{
    if (out == NULL || s == NULL)
        return -EINVAL;
    size_t n = strnlen(s, PMM_TLS_FP_STR_SIZE);
    bool colons;
    if (n == PMM_TLS_FP_STR_LEN)
        colons = true;
    else if (n == 2 * PMM_TLS_FP_LEN)
        colons = false;
    else
        return -EINVAL;
    pmm_tls_fp fp;
    const char *p = s;
    for (size_t i = 0; i < PMM_TLS_FP_LEN; i++) {
        if (colons && i > 0) {
            if (*p != ':')
                return -EINVAL;
            p++;
        }
        int hi = pmm_hexval(p[0]), lo = pmm_hexval(p[1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        fp.b[i] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    *out = fp;
    return 0;
}

bool pmm_tls_fp_eq(const pmm_tls_fp *a, const pmm_tls_fp *b)
{
    uint8_t d = 0;
    for (size_t i = 0; i < PMM_TLS_FP_LEN; i++)
        d |= a->b[i] ^ b->b[i];
    return d == 0;
}

int pmm_tls_fp_str_eq(const char *a, const char *b)
{
    pmm_tls_fp fa, fb;
    if (pmm_tls_fp_parse(&fa, a) != 0 || pmm_tls_fp_parse(&fb, b) != 0)
        return -EINVAL;
    return pmm_tls_fp_eq(&fa, &fb) ? 1 : 0;
}

/* ======================================================================
 * identity
 * ====================================================================== */

struct pmm_tls_identity {
    int refs;
    mbedtls_pk_context key;
    mbedtls_x509_crt crt;
    pmm_tls_fp fp;
    char fp_str[PMM_TLS_FP_STR_SIZE];
    char cn[PMM_TLS_CN_MAX + 1];
};

static bool cn_valid(const char *cn)
{
    if (cn == NULL)
        return false;
    size_t n = strnlen(cn, PMM_TLS_CN_MAX + 1);
    if (n == 0 || n > PMM_TLS_CN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = cn[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-'))
            return false;
    }
    return true;
}

static int path_join(char *out, size_t cap, const char *dir,
                     const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    return 0;
}

/* Writes dir/name atomically and without clobbering: a temp file in dir,
 * fsync, link(2) to the final name (EEXIST if something is there), unlink
 * the temp name. The caller fsyncs dir. */
static int write_new_file(const char *dir, const char *name, const void *data,
                          size_t len, mode_t mode)
{
    char tmp[4096], dst[4096];
    int rc = path_join(dst, sizeof dst, dir, name);
    if (rc)
        return rc;
    int n = snprintf(tmp, sizeof tmp, "%s/.%s.XXXXXX", dir, name);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return -ENAMETOOLONG;
    int fd = mkstemp(tmp);
    if (fd < 0)
        return -errno;
    rc = pmm_write_close(fd, mode, data, len);
    if (rc == 0 && link(tmp, dst) != 0)
        rc = -errno;
    unlink(tmp);
    return rc;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) != 0 ? -errno : 0;
    close(fd);
    return rc;
}

static int exists(const char *dir, const char *name)
{
    char p[4096];
    int rc = path_join(p, sizeof p, dir, name);
    if (rc)
        return rc;
    struct stat st;
    if (lstat(p, &st) == 0)
        return 1;
    return errno == ENOENT ? 0 : -errno;
}

static void fmt_time(char out[32], time_t t)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 32, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int pmm_tls_identity_create(const char *dir, const char *cn)
{
    if (dir == NULL || !cn_valid(cn))
        return -EINVAL;
    int e1 = exists(dir, PMM_TLS_KEY_FILE), e2 = exists(dir, PMM_TLS_CRT_FILE);
    if (e1 < 0)
        return e1;
    if (e2 < 0)
        return e2;
    if (e1 || e2)
        return -EEXIST;

    int rc = 0;
    mbedtls_pk_context key;
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    mbedtls_pk_init(&key);
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    unsigned char *kbuf = calloc(1, FILE_MAX), *cbuf = calloc(1, FILE_MAX);
    if (kbuf == NULL || cbuf == NULL) {
        rc = -ENOMEM;
        goto out;
    }

    if (mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY)) ||
        mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key), rng,
                            NULL) ||
        mbedtls_pk_write_key_pem(&key, kbuf, FILE_MAX)) {
        rc = -EIO;
        goto out;
    }

    uint8_t sb[16];
    if (rng(NULL, sb, sizeof sb)) {
        rc = -EIO;
        goto out;
    }
    sb[0] &= 0x7f; /* positive */
    sb[0] |= 0x40; /* and full length */
    char subject[PMM_TLS_CN_MAX + 8];
    snprintf(subject, sizeof subject, "CN=%s", cn);
    char from[32], to[32];
    time_t now = time(NULL) - 86400;
    struct tm tm;
    gmtime_r(&now, &tm);
    fmt_time(from, now);
    /* same moment 100 years later (Feb 29 becomes Feb 28) */
    snprintf(to, sizeof to, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 2000,
             tm.tm_mon + 1,
             (tm.tm_mon == 1 && tm.tm_mday == 29) ? 28 : tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);

    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, &key);
    mbedtls_x509write_crt_set_issuer_key(&w, &key);
    if (mbedtls_mpi_read_binary(&serial, sb, sizeof sb) ||
        mbedtls_x509write_crt_set_serial(&w, &serial) ||
        mbedtls_x509write_crt_set_subject_name(&w, subject) ||
        mbedtls_x509write_crt_set_issuer_name(&w, subject) ||
        mbedtls_x509write_crt_set_validity(&w, from, to) ||
        mbedtls_x509write_crt_set_basic_constraints(&w, 0, -1) ||
        mbedtls_x509write_crt_set_key_usage(&w,
                                            MBEDTLS_X509_KU_DIGITAL_SIGNATURE) ||
        mbedtls_x509write_crt_set_subject_key_identifier(&w) ||
        mbedtls_x509write_crt_pem(&w, cbuf, FILE_MAX, rng, NULL)) {
        rc = -EIO;
        goto out;
    }

    rc = write_new_file(dir, PMM_TLS_KEY_FILE, kbuf,
                        strlen((char *)kbuf), 0600);
    if (rc)
        goto out;
    rc = write_new_file(dir, PMM_TLS_CRT_FILE, cbuf,
                        strlen((char *)cbuf), 0644);
    if (rc) {
        char p[4096];
        if (path_join(p, sizeof p, dir, PMM_TLS_KEY_FILE) == 0)
            unlink(p);
        goto out;
    }
    rc = fsync_dir(dir);
out:
    if (kbuf)
        mbedtls_platform_zeroize(kbuf, FILE_MAX);
    free(kbuf);
    free(cbuf);
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&w);
    mbedtls_pk_free(&key);
    return rc;
}

/* Reads a whole file (at most FILE_MAX bytes) NUL-terminated, as mbedTLS's
 * PEM parsers want. -ENOENT, PMM_TLS_ECORRUPT (too big), -errno. */
static int read_small(const char *dir, const char *name, unsigned char **out,
                      size_t *len)
{
    char p[4096];
    int rc = path_join(p, sizeof p, dir, name);
    if (rc)
        return rc;
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > FILE_MAX) {
        close(fd);
        return PMM_TLS_ECORRUPT;
    }
    unsigned char *buf = malloc(FILE_MAX + 1);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    rc = pmm_read_fd(fd, buf, FILE_MAX + 1, &got);
    if (rc == -EFBIG)
        rc = PMM_TLS_ECORRUPT;
    close(fd);
    if (rc) {
        mbedtls_platform_zeroize(buf, FILE_MAX + 1);
        free(buf);
        return rc;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got + 1; /* mbedTLS counts the NUL of PEM input */
    return 0;
}

int pmm_tls_identity_load(const char *dir, pmm_tls_identity **out)
{
    if (dir == NULL || out == NULL)
        return -EINVAL;
    unsigned char *kbuf = NULL, *cbuf = NULL;
    size_t klen = 0, clen = 0;
    int rk = read_small(dir, PMM_TLS_KEY_FILE, &kbuf, &klen);
    int rcr = read_small(dir, PMM_TLS_CRT_FILE, &cbuf, &clen);
    int rc = 0;
    pmm_tls_identity *id = NULL;
    if (rk == -ENOENT && rcr == -ENOENT) {
        rc = -ENOENT;
        goto out;
    }
    if (rk == -ENOENT || rcr == -ENOENT) {
        rc = PMM_TLS_ECORRUPT; /* one half of an identity */
        goto out;
    }
    if (rk || rcr) {
        rc = rk ? rk : rcr;
        goto out;
    }
    id = calloc(1, sizeof *id);
    if (id == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    id->refs = 1;
    mbedtls_pk_init(&id->key);
    mbedtls_x509_crt_init(&id->crt);
    if (mbedtls_pk_parse_key(&id->key, kbuf, klen, NULL, 0) != 0 ||
        mbedtls_x509_crt_parse(&id->crt, cbuf, clen) != 0 ||
        id->crt.next != NULL ||
        mbedtls_pk_get_type(&id->key) != MBEDTLS_PK_ECKEY ||
        mbedtls_pk_ec(id->key)->grp.id != MBEDTLS_ECP_DP_SECP256R1 ||
        mbedtls_pk_check_pair(&id->crt.pk, &id->key) != 0) {
        rc = PMM_TLS_ECORRUPT;
        goto out;
    }
    rc = pmm_tls_fingerprint(id->crt.raw.p, id->crt.raw.len, &id->fp);
    if (rc)
        goto out;
    pmm_tls_fp_str(&id->fp, id->fp_str, sizeof id->fp_str);
    /* the CN, for logs; whatever the certificate says, bounded */
    for (const mbedtls_x509_name *n = &id->crt.subject; n; n = n->next) {
        if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0) {
            size_t l = n->val.len < PMM_TLS_CN_MAX ? n->val.len
                                                   : PMM_TLS_CN_MAX;
            memcpy(id->cn, n->val.p, l);
            id->cn[l] = '\0';
            break;
        }
    }
out:
    if (kbuf) {
        mbedtls_platform_zeroize(kbuf, klen);
        free(kbuf);
    }
    free(cbuf);
    if (rc) {
        if (id) {
            mbedtls_pk_free(&id->key);
            mbedtls_x509_crt_free(&id->crt);
            free(id);
        }
        return rc;
    }
    *out = id;
    return 0;
}

static pmm_tls_identity *identity_ref(pmm_tls_identity *id)
{
    if (id)
        id->refs++;
    return id;
}

void pmm_tls_identity_free(pmm_tls_identity *id)
{
    if (id == NULL || --id->refs > 0)
        return;
    mbedtls_pk_free(&id->key);
    mbedtls_x509_crt_free(&id->crt);
    free(id);
}

const pmm_tls_fp *pmm_tls_identity_fp(const pmm_tls_identity *id)
{
    return &id->fp;
}

const char *pmm_tls_identity_fp_str(const pmm_tls_identity *id)
{
    return id->fp_str;
}

const char *pmm_tls_identity_cn(const pmm_tls_identity *id)
{
    return id->cn;
}

/* ======================================================================
 * connections
 * ====================================================================== */

void pmm_tls_opts_default(pmm_tls_opts *o)
{
    o->max_frame = 16u * 1024 * 1024;
    o->max_queued = 4u * 1024 * 1024;
    o->idle_timeout_ms = 60000;
    o->handshake_timeout_ms = 10000;
    o->linger_ms = 2000;
    o->max_conns = 256;
    o->max_handshakes = 32;
    o->max_handshakes_per_src = 4;
    o->budget = NULL;
}

typedef enum cstate {
    ST_CONNECTING, /* client: TCP connect in progress                 */
    ST_HANDSHAKE,
    ST_PENDING,    /* verify said DEFER                                */
    ST_OPEN,
    ST_CLOSING,    /* flushing / close_notify / shutdown / draining    */
    ST_DEAD,       /* handles closing; waiting to be freed             */
} cstate;

typedef struct outq {
    struct outq *next;
    uint8_t hdr[4];
    uint8_t *data; /* owned */
    size_t len;
    size_t off; /* bytes of hdr+data already staged */
} outq;

typedef struct cbuf {
    uint8_t *p;
    size_t len;
    size_t plain; /* frame bytes whose ciphertext ends in this buffer */
} cbuf;

struct pmm_tls_conn {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_idle_t kick;
    uv_connect_t creq;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    int handles; /* initialised handles not yet closed */
    int depth;   /* our callbacks on the stack */

    cstate state;
    bool client;
    bool visible; /* the application knows it: close cb due */
    bool dirty;   /* an API call inside a callback asked for another pass */
    pmm_tls_server *srv;
    pmm_tls_conn *prev, *next; /* in srv->conns */
    struct sockaddr_storage peer_addr;
    bool have_peer_addr;
    /* server side, until verify: an unfinished handshake */
    bool in_hs;
    pmm_src src;
    uint64_t seq;
    struct gsp_budget *hs_budget;
    size_t charged;

    pmm_tls_identity *id;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    bool ssl_ready;
    bool handshake_done;

    pmm_tls_callbacks cb;
    void *ud;
    pmm_tls_opts opts;

    bool have_pin;
    pmm_tls_fp pin;
    bool fp_seen;
    pmm_tls_fp peer_fp;
    int vrfy_err;
    pmm_tls_verdict kind;
    int decision; /* -1 none, else a verdict given by pmm_tls_conn_decide */

    int reason;
    bool reason_set;

    /* input */
    uint8_t *inbuf;
    size_t in_len, in_off;
    bool eof, reading, paused;
    uint8_t hdr[4];
    size_t hdr_got;
    bool in_frame;
    uint8_t *frame;
    size_t frame_len, frame_got;

    /* output */
    outq *q_head, *q_tail;
    uint8_t *stage;
    size_t stage_len, stage_off;
    size_t queued;
    cbuf pend, infl;
    bool writing;
    bool want_writable;

    /* closing */
    bool flush_queue, notify, notify_sent, shutdown_started, shutdown_done;
    uint64_t deadline;   /* connect/handshake deadline, or linger end */
    uint64_t last_activity;
    uint64_t timer_due;
};

struct pmm_tls_server {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    pmm_tls_identity *id;
    pmm_tls_callbacks cb;
    pmm_tls_opts opts;
    pmm_tls_conn *conns;
    size_t n_conns;
    size_t n_hs;  /* unfinished handshakes among conns */
    uint64_t seq;
    pmm_tls_server_stats st;
    pmm_guard_ent *ents; /* scratch for the eviction choice */
    pmm_tls_conn **econn;
    size_t n_ents;
    /* at most ACCEPT_BURST accepts per loop turn: libuv accepts until the
     * backlog is empty, and a flood that refills it as fast as we drop
     * its connections would keep the loop from everything else */
    uv_idle_t accept_idle;
    uint32_t burst;
    bool accept_pending;
    int open_handles;
    pmm_rate *rate; /* recent connections per address (tie-breaker) */
};
#define ACCEPT_BURST 32

static void step(pmm_tls_conn *c);
static void enter_closing(pmm_tls_conn *c, int reason, bool flush,
                          bool notify, int alert);
static void close_handles(pmm_tls_conn *c, int reason);
static void on_kick(uv_idle_t *h);

/* ChaCha20-Poly1305 first: mbedTLS 2.28 runs it at about 500 MB/s per
 * core where its AES-GCM (AES-NI and PCLMUL one block at a time) runs at
 * 280-300 MB/s, and a snapshot or a delta stream is mostly this; both
 * ends are ours and offer the same list, the first wins. The AES-GCM
 * suites stay for peers built before it. */
static const int suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    0,
};
static const mbedtls_ecp_group_id curves[] = {
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};
static const int sig_hashes[] = {
    MBEDTLS_MD_SHA512,
    MBEDTLS_MD_SHA384,
    MBEDTLS_MD_SHA256,
    MBEDTLS_MD_NONE,
};

static void set_reason(pmm_tls_conn *c, int reason)
{
    if (!c->reason_set) {
        c->reason = reason;
        c->reason_set = true;
    }
}

static void kick(pmm_tls_conn *c)
{
    if (c->depth > 0) {
        c->dirty = true;
        return;
    }
    if (c->state != ST_DEAD)
        uv_idle_start(&c->kick, on_kick);
}

/* ---- BIO --------------------------------------------------------------- */

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    pmm_tls_conn *c = ctx;
    if (c->pend.p == NULL) {
        c->pend.p = malloc(CIPHER_CAP);
        if (c->pend.p == NULL)
            return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    }
    size_t room = CIPHER_CAP - c->pend.len;
    if (room == 0)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    size_t n = len < room ? len : room;
    memcpy(c->pend.p + c->pend.len, buf, n);
    c->pend.len += n;
    return (int)n;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    pmm_tls_conn *c = ctx;
    size_t have = c->in_len - c->in_off;
    if (have == 0)
        return c->eof ? 0 : MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = len < have ? len : have;
    memcpy(buf, c->inbuf + c->in_off, n);
    c->in_off += n;
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    return (int)n;
}

static int vrfy(void *ctx, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    pmm_tls_conn *c = ctx;
    if (depth != 0)
        return 0; /* only the leaf matters: nobody is a CA here */
    if (pmm_tls_fingerprint(crt->raw.p, crt->raw.len, &c->peer_fp) != 0) {
        c->vrfy_err = PMM_TLS_EHANDSHAKE;
        return MBEDTLS_ERR_X509_FATAL_ERROR;
    }
    c->fp_seen = true;
    if (c->have_pin) {
        if (!pmm_tls_fp_eq(&c->pin, &c->peer_fp)) {
            c->vrfy_err = PMM_TLS_EFINGERPRINT;
            return MBEDTLS_ERR_X509_FATAL_ERROR;
        }
        *flags = 0; /* pinned: trusted */
    }
    return 0;
}

static int ssl_setup(pmm_tls_conn *c, int endpoint)
{
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_ssl_init(&c->ssl);
    c->ssl_ready = true;
    if (mbedtls_ssl_config_defaults(&c->conf, endpoint,
                                    MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        return -ENOMEM;
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&c->conf, suites);
    mbedtls_ssl_conf_curves(&c->conf, curves);
    mbedtls_ssl_conf_sig_hashes(&c->conf, sig_hashes);
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
    mbedtls_ssl_conf_verify(&c->conf, vrfy, c);
    mbedtls_ssl_conf_rng(&c->conf, rng, NULL);
    mbedtls_ssl_conf_renegotiation(&c->conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    if (c->id &&
        mbedtls_ssl_conf_own_cert(&c->conf, &c->id->crt, &c->id->key) != 0)
        return -ENOMEM;
    if (mbedtls_ssl_setup(&c->ssl, &c->conf) != 0)
        return -ENOMEM;
    /* Explicitly "no host name to check": we pin fingerprints. (Later
     * mbedTLS versions refuse to verify a server without this call.) */
    if (endpoint == MBEDTLS_SSL_IS_CLIENT &&
        mbedtls_ssl_set_hostname(&c->ssl, NULL) != 0)
        return -ENOMEM;
    mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
    return 0;
}

/* ---- lifetime ------------------------------------------------------------ */

static void free_queue(pmm_tls_conn *c)
{
    outq *q = c->q_head;
    while (q) {
        outq *n = q->next;
        free(q->data);
        free(q);
        q = n;
    }
    c->q_head = c->q_tail = NULL;
    c->stage_len = c->stage_off = 0;
}

/* The handshake is over (verified, failed or dropped): it no longer
 * counts against the handshake slots nor holds budget. */
static void hs_end(pmm_tls_conn *c)
{
    if (!c->in_hs)
        return;
    c->in_hs = false;
    if (c->srv != NULL && c->srv->n_hs > 0)
        c->srv->n_hs--;
    gsp_budget_give(c->hs_budget, c->charged);
    c->charged = 0;
}

static void srv_unlink(pmm_tls_conn *c)
{
    pmm_tls_server *s = c->srv;
    if (s == NULL)
        return;
    hs_end(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->n_conns--;
    c->srv = NULL;
}

static void finish(pmm_tls_conn *c)
{
    c->depth = 1; /* nothing below may free c again */
    int reason = c->reason_set ? c->reason : 0;
    if (c->visible) {
        if (c->cb.close)
            c->cb.close(c, reason, c->ud);
    } else if (c->srv && c->cb.failed) {
        c->cb.failed(c->cb.ud,
                     c->have_peer_addr ? (struct sockaddr *)&c->peer_addr
                                       : NULL,
                     reason);
    }
    srv_unlink(c);
    free_queue(c);
    free(c->stage);
    free(c->pend.p);
    free(c->infl.p);
    free(c->inbuf);
    free(c->frame);
    if (c->ssl_ready) {
        mbedtls_ssl_free(&c->ssl);
        mbedtls_ssl_config_free(&c->conf);
    }
    pmm_tls_identity_free(c->id);
    free(c);
}

static void enter(pmm_tls_conn *c)
{
    c->depth++;
}

static void leave(pmm_tls_conn *c)
{
    if (--c->depth == 0 && c->state == ST_DEAD && c->handles == 0)
        finish(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    pmm_tls_conn *c = h->data;
    c->handles--;
    if (c->handles == 0 && c->depth == 0)
        finish(c);
}

/* Immediate teardown. A graceful close (reason 0) that is cut short while
 * frames or the close_notify were still unsent reports the new reason
 * instead: the application must not believe everything went out. */
static void close_handles(pmm_tls_conn *c, int reason)
{
    if (c->state == ST_DEAD)
        return;
    if (c->reason_set && c->reason == 0 && reason != 0 &&
        (c->queued > 0 || c->pend.len > 0 || c->writing ||
         (c->notify && !c->notify_sent)))
        c->reason = reason;
    set_reason(c, reason);
    c->state = ST_DEAD;
    c->reading = false;
    hs_end(c);
    free_queue(c);
    c->queued = 0;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->kick, on_handle_closed);
}

/* ---- timers and reading ------------------------------------------------ */

static void on_timer(uv_timer_t *t);

static void update_timer(pmm_tls_conn *c)
{
    uint64_t due = 0;
    switch (c->state) {
    case ST_CONNECTING:
    case ST_HANDSHAKE:
    case ST_CLOSING:
        due = c->deadline;
        break;
    case ST_PENDING:
    case ST_OPEN:
        if (c->opts.idle_timeout_ms)
            due = c->last_activity + c->opts.idle_timeout_ms;
        break;
    case ST_DEAD:
        return;
    }
    if (due == c->timer_due)
        return;
    c->timer_due = due;
    if (due == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uint64_t now = uv_now(c->loop);
    uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    pmm_tls_conn *c = t->data;
    uint64_t now = uv_now(c->loop);
    enter(c);
    c->timer_due = 0;
    switch (c->state) {
    case ST_CONNECTING:
    case ST_HANDSHAKE:
        if (c->in_hs && c->srv != NULL)
            c->srv->st.handshake_timeouts++;
        close_handles(c, -ETIMEDOUT);
        break;
    case ST_CLOSING:
        close_handles(c, -ETIMEDOUT); /* linger over: drop it */
        break;
    case ST_PENDING:
    case ST_OPEN:
        if (c->paused && c->state == ST_OPEN) {
            c->last_activity = now;
        } else if (c->opts.idle_timeout_ms &&
                   now >= c->last_activity + c->opts.idle_timeout_ms) {
            enter_closing(c, -ETIMEDOUT, false, true, -1);
            step(c);
        }
        break;
    case ST_DEAD:
        break;
    }
    update_timer(c);
    leave(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    pmm_tls_conn *c = h->data;
    (void)hint;
    if (c->inbuf == NULL)
        c->inbuf = malloc(INBUF_CAP);
    if (c->inbuf == NULL) {
        *buf = uv_buf_init(NULL, 0);
        return;
    }
    if (c->in_off) {
        memmove(c->inbuf, c->inbuf + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    *buf = uv_buf_init((char *)c->inbuf + c->in_len,
                       (unsigned)(INBUF_CAP - c->in_len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void update_reading(pmm_tls_conn *c)
{
    bool want;
    switch (c->state) {
    case ST_HANDSHAKE:
        want = true;
        break;
    case ST_OPEN:
        want = !c->paused;
        break;
    case ST_CLOSING:
        want = true; /* drain and discard, so close() does not RST */
        break;
    default:
        want = false;
        break;
    }
    if (c->eof)
        want = false;
    if (want == c->reading)
        return;
    if (want) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc) {
            close_handles(c, rc);
            return;
        }
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = want;
}

/* ---- the close sequence -------------------------------------------------- */

static void drop_rx(pmm_tls_conn *c)
{
    free(c->frame);
    c->frame = NULL;
    c->in_frame = false;
    c->hdr_got = 0;
}

/* Starts closing: reason (kept if one is set), whether queued frames are
 * still flushed, whether close_notify is sent, and an optional fatal alert
 * (-1 = none) sent first. */
static void enter_closing(pmm_tls_conn *c, int reason, bool flush,
                          bool notify, int alert)
{
    if (c->state == ST_CLOSING || c->state == ST_DEAD)
        return;
    set_reason(c, reason);
    bool was_connecting = c->state == ST_CONNECTING;
    c->state = ST_CLOSING;
    c->flush_queue = flush && c->handshake_done;
    c->notify = notify && c->handshake_done;
    c->want_writable = false;
    drop_rx(c);
    if (!c->flush_queue) {
        free_queue(c);
        /* what is already encrypted still goes out */
        c->queued = c->pend.plain + c->infl.plain;
    }
    if (was_connecting) {
        close_handles(c, reason);
        return;
    }
    if (alert >= 0 && c->ssl_ready)
        (void)mbedtls_ssl_send_alert_message(
            &c->ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL, (unsigned char)alert);
    c->deadline = uv_now(c->loop) + c->opts.linger_ms;
    c->dirty = true;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    pmm_tls_conn *c = req->data;
    enter(c);
    c->shutdown_done = true;
    if (c->state != ST_DEAD) {
        if (status < 0 || c->eof)
            close_handles(c, 0);
        else
            update_reading(c); /* wait for the peer's EOF, or linger */
    }
    leave(c);
}

static void close_progress(pmm_tls_conn *c)
{
    if (c->state != ST_CLOSING)
        return;
    if (c->flush_queue && (c->q_head || c->stage_off < c->stage_len))
        return; /* write_side is still encrypting */
    if (c->notify && !c->notify_sent) {
        int r = mbedtls_ssl_close_notify(&c->ssl);
        if (r == MBEDTLS_ERR_SSL_WANT_WRITE)
            return;
        c->notify_sent = true;
    }
    if (c->writing || c->pend.len)
        return;
    if (c->shutdown_started)
        return;
    c->shutdown_started = true;
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        close_handles(c, 0);
}

/* ---- writing ------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status);

static void start_write(pmm_tls_conn *c)
{
    if (c->writing || c->pend.len == 0 || c->state == ST_DEAD)
        return;
    cbuf t = c->infl;
    c->infl = c->pend;
    c->pend = t;
    c->pend.len = 0;
    c->pend.plain = 0;
    uv_buf_t b = uv_buf_init((char *)c->infl.p, (unsigned)c->infl.len);
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc) {
        close_handles(c, rc);
        return;
    }
    c->writing = true;
}

/* Copies queued frames into the staging buffer (one record's worth). */
static void refill_stage(pmm_tls_conn *c)
{
    c->stage_len = c->stage_off = 0;
    while (c->q_head && c->stage_len < STAGE_CAP) {
        outq *q = c->q_head;
        size_t total = 4 + q->len;
        size_t n = total - q->off;
        if (n > STAGE_CAP - c->stage_len)
            n = STAGE_CAP - c->stage_len;
        size_t done = 0;
        while (done < n) {
            size_t pos = q->off + done;
            size_t chunk;
            const uint8_t *src;
            if (pos < 4) {
                src = q->hdr + pos;
                chunk = 4 - pos;
            } else {
                src = q->data + (pos - 4);
                chunk = total - pos;
            }
            if (chunk > n - done)
                chunk = n - done;
            memcpy(c->stage + c->stage_len, src, chunk);
            c->stage_len += chunk;
            done += chunk;
        }
        q->off += n;
        if (q->off == total) {
            c->q_head = q->next;
            if (c->q_head == NULL)
                c->q_tail = NULL;
            free(q->data);
            free(q);
        }
    }
}

static void write_side(pmm_tls_conn *c)
{
    bool encrypt = c->state == ST_OPEN ||
                   (c->state == ST_CLOSING && c->flush_queue);
    while (encrypt) {
        if (c->stage_off == c->stage_len) {
            if (c->q_head == NULL)
                break;
            refill_stage(c);
        }
        int r = mbedtls_ssl_write(&c->ssl, c->stage + c->stage_off,
                                  c->stage_len - c->stage_off);
        if (r > 0) {
            c->stage_off += (size_t)r;
            c->pend.plain += (size_t)r;
            continue;
        }
        if (r == MBEDTLS_ERR_SSL_WANT_WRITE || r == MBEDTLS_ERR_SSL_WANT_READ)
            break;
        enter_closing(c, -EPROTO, false, false, -1);
        break;
    }
    close_progress(c);
    start_write(c);
}

static void on_write(uv_write_t *req, int status)
{
    pmm_tls_conn *c = req->data;
    enter(c);
    c->writing = false;
    size_t done = c->infl.plain;
    c->infl.len = 0;
    c->infl.plain = 0;
    if (c->state != ST_DEAD) {
        if (status < 0) {
            close_handles(c, status);
        } else {
            c->queued = c->queued > done ? c->queued - done : 0;
            c->last_activity = uv_now(c->loop);
            step(c);
        }
    }
    leave(c);
}

static int send_frame(pmm_tls_conn *c, uint8_t *data, size_t len,
                      bool owned)
{
    if (c == NULL || (data == NULL && len > 0))
        return -EINVAL;
    if (c->state == ST_CLOSING || c->state == ST_DEAD)
        return -ESHUTDOWN;
    if (c->state != ST_OPEN)
        return -ENOTCONN;
    if (len > c->opts.max_frame)
        return PMM_TLS_ETOOBIG;
    if (c->queued > 0 && c->queued + 4 + len > c->opts.max_queued) {
        c->want_writable = true;
        return -EAGAIN;
    }
    if (c->stage == NULL && (c->stage = malloc(STAGE_CAP)) == NULL)
        return -ENOMEM;
    outq *q = calloc(1, sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    if (owned || len == 0) {
        q->data = owned ? data : NULL;
    } else {
        q->data = malloc(len);
        if (q->data == NULL) {
            free(q);
            return -ENOMEM;
        }
        memcpy(q->data, data, len);
    }
    q->len = len;
    q->hdr[0] = (uint8_t)(len >> 24);
    q->hdr[1] = (uint8_t)(len >> 16);
    q->hdr[2] = (uint8_t)(len >> 8);
    q->hdr[3] = (uint8_t)len;
    if (c->q_tail)
        c->q_tail->next = q;
    else
        c->q_head = q;
    c->q_tail = q;
    c->queued += 4 + len;
    if (c->depth > 0) {
        c->dirty = true;
    } else {
        /* encrypt and start writing now; no user callback runs here */
        enter(c);
        write_side(c);
        update_reading(c);
        update_timer(c);
        leave(c);
    }
    return 0;
}

int pmm_tls_send(pmm_tls_conn *c, const void *data, size_t len)
{
    return send_frame(c, (uint8_t *)(uintptr_t)data, len, false);
}

int pmm_tls_send_owned(pmm_tls_conn *c, void *data, size_t len)
{
    return send_frame(c, data, len, true);
}

size_t pmm_tls_conn_queued(const pmm_tls_conn *c)
{
    return c->queued;
}

/* ---- reading ------------------------------------------------------------ */

/* Maps an mbedTLS error (not WANT_*) to our codes. */
static int map_ssl_error(pmm_tls_conn *c, int r)
{
    if (r == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
        /* mbedTLS 2.28 leaves the alert in in_msg[0..1] */
        switch (c->ssl.in_msg[1]) {
        case MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED:
            return PMM_TLS_EDENIED;
        case MBEDTLS_SSL_ALERT_MSG_RECORD_OVERFLOW:
            return PMM_TLS_ETOOBIG;
        default:
            return c->handshake_done ? -EPROTO : PMM_TLS_EHANDSHAKE;
        }
    }
    if (r == MBEDTLS_ERR_SSL_CONN_EOF || r == 0)
        return -ECONNRESET;
    if (r == MBEDTLS_ERR_SSL_ALLOC_FAILED)
        return -ENOMEM;
    return c->handshake_done ? -EPROTO : PMM_TLS_EHANDSHAKE;
}

static void deliver(pmm_tls_conn *c, const uint8_t *data, size_t len)
{
    static const uint8_t empty[1];
    if (c->cb.frame)
        c->cb.frame(c, data ? data : empty, len, c->ud);
}

static void read_side(pmm_tls_conn *c)
{
    while (c->state == ST_OPEN && !c->paused) {
        int r;
        if (!c->in_frame) {
            r = mbedtls_ssl_read(&c->ssl, c->hdr + c->hdr_got,
                                 4 - c->hdr_got);
            if (r > 0) {
                c->hdr_got += (size_t)r;
                if (c->hdr_got < 4)
                    continue;
                c->hdr_got = 0;
                size_t len = (size_t)c->hdr[0] << 24 |
                             (size_t)c->hdr[1] << 16 |
                             (size_t)c->hdr[2] << 8 | c->hdr[3];
                if (len > c->opts.max_frame) {
                    enter_closing(c, PMM_TLS_ETOOBIG, false, false,
                                  MBEDTLS_SSL_ALERT_MSG_RECORD_OVERFLOW);
                    return;
                }
                if (len == 0) {
                    deliver(c, NULL, 0);
                    continue;
                }
                c->frame = malloc(len);
                if (c->frame == NULL) {
                    enter_closing(c, -ENOMEM, false, false,
                                  MBEDTLS_SSL_ALERT_MSG_INTERNAL_ERROR);
                    return;
                }
                c->frame_len = len;
                c->frame_got = 0;
                c->in_frame = true;
                continue;
            }
        } else {
            r = mbedtls_ssl_read(&c->ssl, c->frame + c->frame_got,
                                 c->frame_len - c->frame_got);
            if (r > 0) {
                c->frame_got += (size_t)r;
                if (c->frame_got < c->frame_len)
                    continue;
                uint8_t *f = c->frame;
                size_t len = c->frame_len;
                c->frame = NULL;
                c->in_frame = false;
                deliver(c, f, len);
                free(f);
                continue;
            }
        }
        if (r == MBEDTLS_ERR_SSL_WANT_READ && c->in_off < c->in_len)
            continue; /* a record that carried no data (ignored alert,
                         refused renegotiation): more input is waiting */
        if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
            return;
        if (r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
            enter_closing(c, 0, true, true, -1);
            return;
        }
        enter_closing(c, map_ssl_error(c, r), false, false, -1);
        return;
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    pmm_tls_conn *c = s->data;
    (void)buf;
    enter(c);
    if (c->state == ST_DEAD) {
        /* nothing */
    } else if (nread > 0) {
        c->last_activity = uv_now(c->loop);
        if (c->state == ST_CLOSING)
            c->in_len = c->in_off = 0; /* discard */
        else
            c->in_len += (size_t)nread;
        step(c);
    } else if (nread == UV_EOF) {
        c->eof = true;
        c->reading = false;
        uv_read_stop(s);
        if (c->state == ST_CLOSING) {
            if (c->shutdown_done)
                close_handles(c, 0);
        } else {
            step(c); /* lets mbedTLS see the EOF */
            if (c->state != ST_CLOSING && c->state != ST_DEAD)
                enter_closing(c, -ECONNRESET, false, false, -1);
            step(c);
        }
    } else if (nread == UV_ENOBUFS) {
        /* input buffer full: only possible while we are not consuming */
        c->reading = false;
        uv_read_stop(s);
    } else if (nread < 0) {
        close_handles(c, (int)nread);
    }
    leave(c);
}

/* ---- handshake and verdicts --------------------------------------------- */

static void apply_verdict(pmm_tls_conn *c, int v)
{
    switch (v) {
    case PMM_TLS_ACCEPT_NODE:
    case PMM_TLS_ACCEPT_JOINER:
        c->kind = (pmm_tls_verdict)v;
        c->state = ST_OPEN;
        c->last_activity = uv_now(c->loop);
        if (c->cb.open)
            c->cb.open(c, c->ud);
        break;
    case PMM_TLS_DEFER:
        c->state = ST_PENDING;
        c->last_activity = uv_now(c->loop);
        break;
    default:
        enter_closing(c, PMM_TLS_EREFUSED, false, false,
                      MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED);
        break;
    }
}

static void handshake_done(pmm_tls_conn *c)
{
    c->handshake_done = true;
    hs_end(c);
    if (!c->fp_seen) {
        enter_closing(c, PMM_TLS_ENOCERT, false, false,
                      MBEDTLS_SSL_ALERT_MSG_ACCESS_DENIED);
        return;
    }
    if (c->client && c->have_pin && c->cb.verify == NULL) {
        apply_verdict(c, PMM_TLS_ACCEPT_NODE);
        return;
    }
    c->visible = true;
    c->state = ST_PENDING; /* while verify runs: no reading, no sending */
    int v = c->cb.verify(c, &c->peer_fp, c->ud);
    if (c->state != ST_PENDING || c->decision >= 0)
        return; /* closed (or decided) from inside verify */
    apply_verdict(c, v);
}

static void do_handshake(pmm_tls_conn *c)
{
    int r = mbedtls_ssl_handshake(&c->ssl);
    if (r == 0) {
        handshake_done(c);
        return;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
        return;
    int err = c->vrfy_err ? c->vrfy_err : map_ssl_error(c, r);
    enter_closing(c, err, false, false, -1);
}

/* One pass over everything that may have become possible. Runs with
 * depth > 0; loops while callbacks asked for more. */
static void step(pmm_tls_conn *c)
{
    int guard = 0;
    do {
        c->dirty = false;
        if (c->state == ST_HANDSHAKE)
            do_handshake(c);
        if (c->state == ST_PENDING && c->decision >= 0) {
            int v = c->decision;
            c->decision = -1;
            apply_verdict(c, v == PMM_TLS_DEFER ? PMM_TLS_REFUSE : v);
        }
        if (c->state == ST_OPEN)
            read_side(c);
        if (c->state != ST_DEAD)
            write_side(c); /* handshake records, frames, alerts, close */
        if (c->state == ST_OPEN && c->want_writable &&
            c->queued <= c->opts.max_queued / 2) {
            c->want_writable = false;
            if (c->cb.writable)
                c->cb.writable(c, c->ud);
        }
    } while (c->dirty && c->state != ST_DEAD && ++guard < 1000);
    if (c->dirty && c->state != ST_DEAD)
        uv_idle_start(&c->kick, on_kick); /* finish on the next turn */
    update_reading(c);
    update_timer(c);
}

static void on_kick(uv_idle_t *h)
{
    pmm_tls_conn *c = h->data;
    uv_idle_stop(h);
    enter(c);
    if (c->state != ST_DEAD)
        step(c);
    leave(c);
}

/* ---- construction --------------------------------------------------------- */

static pmm_tls_conn *conn_new(uv_loop_t *loop, pmm_tls_identity *id,
                              const pmm_tls_callbacks *cb,
                              const pmm_tls_opts *opts)
{
    pmm_tls_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->id = identity_ref(id);
    c->cb = *cb;
    c->ud = cb->ud;
    if (opts)
        c->opts = *opts;
    else
        pmm_tls_opts_default(&c->opts);
    if (c->opts.max_queued == 0)
        c->opts.max_queued = 1;
    c->decision = -1;
    c->kind = PMM_TLS_REFUSE;
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    uv_idle_init(loop, &c->kick);
    c->tcp.data = c->timer.data = c->kick.data = c;
    c->handles = 3;
    c->last_activity = uv_now(loop);
    return c;
}

/* Frees a connection that never ran (handles closed, no callbacks). */
static void conn_discard(pmm_tls_conn *c)
{
    c->visible = false;
    c->srv = NULL;
    close_handles(c, 0);
}

static void on_connect(uv_connect_t *req, int status)
{
    pmm_tls_conn *c = req->data;
    enter(c);
    if (c->state == ST_CONNECTING) {
        if (status < 0) {
            close_handles(c, status);
        } else {
            uv_tcp_nodelay(&c->tcp, 1);
            c->state = ST_HANDSHAKE;
            step(c);
        }
    }
    leave(c);
}

int pmm_tls_connect(pmm_tls_conn **out, struct uv_loop_s *loop,
                    const struct sockaddr *addr, pmm_tls_identity *id,
                    const pmm_tls_fp *expected, const pmm_tls_callbacks *cb,
                    uint32_t timeout_ms, const pmm_tls_opts *opts)
{
    if (out == NULL || loop == NULL || addr == NULL || cb == NULL ||
        (expected == NULL && cb->verify == NULL))
        return -EINVAL;
    pmm_tls_conn *c = conn_new(loop, id, cb, opts);
    if (c == NULL)
        return -ENOMEM;
    c->client = true;
    c->state = ST_CONNECTING;
    if (expected) {
        c->have_pin = true;
        c->pin = *expected;
    }
    int rc = ssl_setup(c, MBEDTLS_SSL_IS_CLIENT);
    if (rc == 0) {
        c->creq.data = c;
        rc = uv_tcp_connect(&c->creq, &c->tcp, addr, on_connect);
    }
    if (rc) {
        conn_discard(c);
        return rc;
    }
    size_t alen = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    memcpy(&c->peer_addr, addr, alen);
    c->have_peer_addr = true;
    c->visible = true;
    c->deadline = uv_now(loop) +
                  (timeout_ms ? timeout_ms : c->opts.handshake_timeout_ms);
    update_timer(c);
    *out = c;
    return 0;
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void on_server_closed(uv_handle_t *h)
{
    pmm_tls_server *s = h->data;
    if (--s->open_handles > 0)
        return;
    pmm_tls_identity_free(s->id);
    pmm_rate_free(s->rate);
    free(s->ents);
    free(s->econn);
    free(s);
}

/* The unfinished handshake to drop for `newcomer` (never itself): among
 * src's (its per-address cap) or among all (guard.h). NULL if none. */
static pmm_tls_conn *hs_victim(pmm_tls_server *s, const pmm_tls_conn *newcomer,
                               const pmm_src *src)
{
    size_t n = 0, skip = SIZE_MAX, v;

    for (pmm_tls_conn *o = s->conns; o != NULL && n < s->n_ents;
         o = o->next) {
        if (!o->in_hs || o->state != ST_HANDSHAKE)
            continue;
        s->ents[n].src = o->src;
        s->ents[n].cls = 0;
        s->ents[n].seq = o->seq;
        s->ents[n].rate = pmm_rate_get(s->rate, &o->src, uv_now(s->loop));
        s->econn[n] = o;
        if (o == newcomer)
            skip = n;
        n++;
    }
    v = src != NULL ? pmm_guard_victim_of(s->ents, n, skip, src)
                    : pmm_guard_victim(s->ents, n, skip);
    return v < n ? s->econn[v] : NULL;
}

static bool hs_evict(pmm_tls_server *s, pmm_tls_conn *newcomer,
                     const pmm_src *src)
{
    pmm_tls_conn *v = hs_victim(s, newcomer, src);

    if (v == NULL)
        return false;
    s->st.handshakes_evicted++;
    close_handles(v, PMM_TLS_EEVICTED);
    return true;
}

static size_t hs_count_src(const pmm_tls_server *s, const pmm_tls_conn *c)
{
    size_t n = 0;

    for (const pmm_tls_conn *o = s->conns; o != NULL; o = o->next)
        if (o != c && o->in_hs && o->state == ST_HANDSHAKE &&
            pmm_src_eq(&o->src, &c->src))
            n++;
    return n;
}

static void do_accept(pmm_tls_server *s)
{
    uv_stream_t *ls = (uv_stream_t *)&s->tcp;
    pmm_tls_conn *c = conn_new(s->loop, s->id, &s->cb, &s->opts);
    if (c == NULL) {
        /* still take it off the backlog */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t && uv_tcp_init(s->loop, t) == 0) {
            (void)uv_accept(ls, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, free_handle);
        } else {
            free(t);
        }
        return;
    }
    enter(c);
    c->srv = s;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        close_handles(c, -ECONNABORTED);
        leave(c);
        return;
    }
    s->st.accepted++;
    int alen = sizeof c->peer_addr;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer_addr,
                           &alen) == 0)
        c->have_peer_addr = true;
    pmm_src_from_sa(&c->src, c->have_peer_addr
                                 ? (struct sockaddr *)&c->peer_addr
                                 : NULL);
    c->seq = ++s->seq;
    pmm_rate_hit(s->rate, &c->src, uv_now(s->loop));
    c->in_hs = true;
    c->hs_budget = s->opts.budget;
    s->n_hs++;
    /* room: this address's own unfinished handshakes first, then the
     * address holding the most; over max_conns only a handshake can go */
    if (hs_count_src(s, c) >= s->opts.max_handshakes_per_src)
        hs_evict(s, c, &c->src);
    if (s->n_hs > s->opts.max_handshakes)
        hs_evict(s, c, NULL);
    if (s->n_conns > s->opts.max_conns && !hs_evict(s, c, NULL)) {
        s->st.dropped++;
        close_handles(c, -EMFILE);
        leave(c);
        return;
    }
    for (int tries = 0;
         gsp_budget_take(s->opts.budget, PMM_TLS_HANDSHAKE_COST) != 0;
         tries++) {
        if (tries >= 4 || !hs_evict(s, c, NULL)) {
            s->st.dropped++;
            close_handles(c, -ENOBUFS);
            leave(c);
            return;
        }
    }
    c->charged = PMM_TLS_HANDSHAKE_COST;
    if (s->n_hs > s->st.handshakes_peak)
        s->st.handshakes_peak = (uint32_t)s->n_hs;
    int rc = ssl_setup(c, MBEDTLS_SSL_IS_SERVER);
    if (rc) {
        close_handles(c, rc);
        leave(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = ST_HANDSHAKE;
    c->deadline = uv_now(s->loop) + c->opts.handshake_timeout_ms;
    step(c);
    leave(c);
}

/* Once per loop turn while accepting: a new burst may start, and the
 * connection held back last turn is taken (uv_accept resumes the
 * listener). */
static void on_accept_idle(uv_idle_t *h)
{
    pmm_tls_server *s = h->data;
    s->burst = 0;
    if (s->accept_pending) {
        s->accept_pending = false;
        s->burst++;
        do_accept(s);
    } else {
        uv_idle_stop(h);
    }
}

static void on_connection(uv_stream_t *ls, int status)
{
    pmm_tls_server *s = ls->data;
    if (status < 0)
        return;
    if (s->burst >= ACCEPT_BURST) {
        /* not accepted: libuv stops watching the listener until the
         * next turn's uv_accept */
        s->accept_pending = true;
        return;
    }
    s->burst++;
    uv_idle_start(&s->accept_idle, on_accept_idle);
    do_accept(s);
}

int pmm_tls_server_start(pmm_tls_server **out, struct uv_loop_s *loop,
                         const struct sockaddr *bind_addr,
                         pmm_tls_identity *id, const pmm_tls_callbacks *cb,
                         const pmm_tls_opts *opts)
{
    if (out == NULL || loop == NULL || bind_addr == NULL || id == NULL ||
        cb == NULL || cb->verify == NULL)
        return -EINVAL;
    pmm_tls_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->loop = loop;
    s->cb = *cb;
    if (opts)
        s->opts = *opts;
    else
        pmm_tls_opts_default(&s->opts);
    if (s->opts.max_handshakes == 0)
        s->opts.max_handshakes = 1;
    if (s->opts.max_handshakes_per_src == 0)
        s->opts.max_handshakes_per_src = s->opts.max_handshakes;
    /* room for every unfinished handshake there can be */
    s->n_ents = (size_t)s->opts.max_handshakes + 2;
    if (s->n_ents > (size_t)s->opts.max_conns + 2)
        s->n_ents = (size_t)s->opts.max_conns + 2;
    s->ents = calloc(s->n_ents, sizeof *s->ents);
    s->econn = calloc(s->n_ents, sizeof *s->econn);
    s->rate = pmm_rate_new(256, 1000);
    if (s->ents == NULL || s->econn == NULL || s->rate == NULL) {
        pmm_rate_free(s->rate);
        free(s->ents);
        free(s->econn);
        free(s);
        return -ENOMEM;
    }
    int rc = uv_tcp_init(loop, &s->tcp);
    if (rc) {
        pmm_rate_free(s->rate);
        free(s->ents);
        free(s->econn);
        free(s);
        return rc;
    }
    s->tcp.data = s;
    uv_idle_init(loop, &s->accept_idle);
    s->accept_idle.data = s;
    s->open_handles = 2;
    rc = uv_tcp_bind(&s->tcp, bind_addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->tcp, 511, on_connection);
    if (rc) {
        /* frees s */
        uv_close((uv_handle_t *)&s->accept_idle, on_server_closed);
        uv_close((uv_handle_t *)&s->tcp, on_server_closed);
        return rc;
    }
    s->id = identity_ref(id);
    *out = s;
    return 0;
}

int pmm_tls_server_addr(const pmm_tls_server *s, struct sockaddr_storage *out)
{
    int len = sizeof *out;
    return uv_tcp_getsockname(&s->tcp, (struct sockaddr *)out, &len);
}

size_t pmm_tls_server_conns(const pmm_tls_server *s)
{
    return s->n_conns;
}

void pmm_tls_server_get_stats(const pmm_tls_server *s,
                              pmm_tls_server_stats *out)
{
    *out = s->st;
    out->handshakes = (uint32_t)s->n_hs;
}

void pmm_tls_server_close(pmm_tls_server *s)
{
    if (s == NULL)
        return;
    pmm_tls_conn *c = s->conns;
    while (c) {
        pmm_tls_conn *n = c->next;
        c->srv = NULL;
        c->prev = c->next = NULL;
        if (c->visible)
            pmm_tls_conn_close(c);
        else
            close_handles(c, -ECANCELED);
        c = n;
    }
    s->conns = NULL;
    s->n_conns = 0;
    uv_close((uv_handle_t *)&s->accept_idle, on_server_closed);
    uv_close((uv_handle_t *)&s->tcp, on_server_closed);
}

/* ---- the rest of the API -------------------------------------------------- */

void pmm_tls_conn_close(pmm_tls_conn *c)
{
    if (c == NULL || c->state == ST_CLOSING || c->state == ST_DEAD)
        return;
    if (c->state == ST_CONNECTING) {
        close_handles(c, 0);
        return;
    }
    enter_closing(c, 0, true, true, -1);
    kick(c);
}

void pmm_tls_conn_abort(pmm_tls_conn *c)
{
    if (c == NULL || c->state == ST_DEAD)
        return;
    close_handles(c, -ECONNABORTED);
}

int pmm_tls_conn_decide(pmm_tls_conn *c, pmm_tls_verdict v)
{
    if (c == NULL || (v != PMM_TLS_ACCEPT_NODE && v != PMM_TLS_ACCEPT_JOINER &&
                      v != PMM_TLS_REFUSE))
        return -EINVAL;
    if (c->state == ST_CLOSING || c->state == ST_DEAD)
        return -ESHUTDOWN;
    if (c->state != ST_PENDING || c->decision >= 0)
        return -EALREADY;
    c->decision = (int)v;
    kick(c);
    return 0;
}

void pmm_tls_conn_pause(pmm_tls_conn *c)
{
    if (c == NULL || c->paused)
        return;
    c->paused = true;
    kick(c);
}

void pmm_tls_conn_resume(pmm_tls_conn *c)
{
    if (c == NULL || !c->paused)
        return;
    c->paused = false;
    c->last_activity = uv_now(c->loop);
    kick(c);
}

void pmm_tls_conn_set_ud(pmm_tls_conn *c, void *ud)
{
    c->ud = ud;
}

void *pmm_tls_conn_ud(const pmm_tls_conn *c)
{
    return c->ud;
}

void pmm_tls_conn_set_max_frame(pmm_tls_conn *c, uint32_t max_frame)
{
    c->opts.max_frame = max_frame;
}

void pmm_tls_conn_set_max_queued(pmm_tls_conn *c, size_t max_queued)
{
    c->opts.max_queued = max_queued ? max_queued : 1;
    kick(c); /* a larger bound may make us writable */
}

void pmm_tls_conn_set_idle_timeout(pmm_tls_conn *c, uint32_t ms)
{
    c->opts.idle_timeout_ms = ms;
    c->timer_due = 0; /* force re-arming */
    kick(c);
}

int pmm_tls_conn_peer_fp(const pmm_tls_conn *c, pmm_tls_fp *out)
{
    if (!c->handshake_done || !c->fp_seen)
        return -ENOTCONN;
    *out = c->peer_fp;
    return 0;
}

int pmm_tls_conn_peer_addr(const pmm_tls_conn *c,
                           struct sockaddr_storage *out)
{
    if (!c->have_peer_addr)
        return -ENOTCONN;
    *out = c->peer_addr;
    return 0;
}

const char *pmm_tls_conn_suite(const pmm_tls_conn *c)
{
    const char *s = mbedtls_ssl_get_ciphersuite(&c->ssl);
    return s ? s : "";
}

pmm_tls_verdict pmm_tls_conn_peer_kind(const pmm_tls_conn *c)
{
    return c->kind;
}

bool pmm_tls_conn_is_client(const pmm_tls_conn *c)
{
    return c->client;
}
