/*
 * crypto.c - the gossip keyring: AES-256-GCM packet sealing (mbedTLS).
 *
 * Sealed blob:  version (1) || nonce (12) || ciphertext || tag (16)
 * AAD:          version byte || label bytes
 * Nonce:        4 bytes fixed per keyring || 64-bit big-endian counter
 *
 * Both the 4-byte prefix and the counter's start value are drawn at random
 * when the keyring is created, and the counter is incremented per seal, so a
 * keyring never repeats a nonce (2^64 seals) and two keyrings sharing a key
 * (every node of the cluster, every restart) collide only if 96 random bits
 * land in overlapping counter ranges.
 *
 * Each key keeps its own prepared GCM context (AES key schedule and GHASH
 * tables), so gsp_seal/gsp_open do no allocation and no key setup.
 *
 * A keyring is not thread safe (gsp_seal advances the counter and the GCM
 * contexts carry per-operation state): use it from one thread, or lock.
 * gsp_random is thread safe.
 */
#include "gossip/gossip.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/base64.h>
#include <mbedtls/gcm.h>
#include <mbedtls/platform_util.h>

#define SEAL_VERSION 1
#define NONCE_LEN 12
#define TAG_LEN 16
#define HDR_LEN (1 + NONCE_LEN)

#define KEYFILE_MAX (64 * 1024) /* bytes; larger files: -EFBIG */
#define KEYFILE_LINE_MAX 1024   /* bytes per line, comments included */

struct key_slot {
    bool used;
    uint8_t key[GSP_KEY_LEN];
    mbedtls_gcm_context gcm;
};

struct gsp_keyring {
    /* Slots never move (GCM contexts hold heap state); order[] lists the
     * slot indices of installed keys, order[0] being the sealing key. */
    struct key_slot slot[GSP_KEYRING_MAX];
    uint8_t order[GSP_KEYRING_MAX];
    size_t n;
    uint8_t aad[1 + GSP_LABEL_MAX]; /* version byte || label */
    size_t aad_len;
    uint8_t nonce_prefix[4];
    uint64_t counter;
};

/* ---- process-wide random source: common's, the one generator ------------ */

int gsp_random(void *buf, size_t len)
{
    return pmm_random(buf, len);
}

/* ---- keyring -------------------------------------------------------------- */

static bool key_eq(const uint8_t *a, const uint8_t *b)
{
    uint8_t d = 0;

    for (size_t i = 0; i < GSP_KEY_LEN; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* Position of key in order[], or -1. */
static int find_key(const gsp_keyring *kr, const uint8_t *key)
{
    for (size_t i = 0; i < kr->n; i++)
        if (key_eq(kr->slot[kr->order[i]].key, key))
            return (int)i;
    return -1;
}

static void slot_clear(struct key_slot *s)
{
    mbedtls_gcm_free(&s->gcm);
    mbedtls_platform_zeroize(s->key, sizeof(s->key));
    s->used = false;
}

gsp_keyring *gsp_keyring_new(const char *label)
{
    gsp_keyring *kr;
    uint8_t rnd[sizeof(kr->nonce_prefix) + 8];
    size_t label_len;

    if (label == NULL) {
        errno = EINVAL;
        return NULL;
    }
    label_len = strnlen(label, GSP_LABEL_MAX + 1);
    if (label_len > GSP_LABEL_MAX) {
        errno = EINVAL;
        return NULL;
    }
    kr = calloc(1, sizeof(*kr));
    if (kr == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    kr->aad[0] = SEAL_VERSION;
    memcpy(kr->aad + 1, label, label_len);
    kr->aad_len = 1 + label_len;

    if (gsp_random(rnd, sizeof(rnd)) != 0) {
        free(kr);
        errno = EIO;
        return NULL;
    }
    memcpy(kr->nonce_prefix, rnd, sizeof(kr->nonce_prefix));
    for (size_t i = 0; i < 8; i++)
        kr->counter = kr->counter << 8 | rnd[sizeof(kr->nonce_prefix) + i];
    mbedtls_platform_zeroize(rnd, sizeof(rnd));
    return kr;
}

void gsp_keyring_free(gsp_keyring *kr)
{
    if (kr == NULL)
        return;
    for (size_t i = 0; i < GSP_KEYRING_MAX; i++)
        if (kr->slot[i].used)
            slot_clear(&kr->slot[i]);
    mbedtls_platform_zeroize(kr, sizeof(*kr));
    free(kr);
}

int gsp_keyring_add(gsp_keyring *kr, const uint8_t key[GSP_KEY_LEN])
{
    struct key_slot *s = NULL;
    size_t idx;
    int rc;

    if (kr == NULL || key == NULL)
        return -EINVAL;
    if (find_key(kr, key) >= 0)
        return -EEXIST;
    if (kr->n >= GSP_KEYRING_MAX)
        return -ENOSPC;
    for (idx = 0; idx < GSP_KEYRING_MAX; idx++) {
        if (!kr->slot[idx].used) {
            s = &kr->slot[idx];
            break;
        }
    }
    if (s == NULL)
        return -ENOSPC; /* unreachable: n < MAX means a free slot */

    mbedtls_gcm_init(&s->gcm);
    rc = mbedtls_gcm_setkey(&s->gcm, MBEDTLS_CIPHER_ID_AES, key,
                            GSP_KEY_LEN * 8);
    if (rc != 0) {
        mbedtls_gcm_free(&s->gcm);
        return rc == MBEDTLS_ERR_CIPHER_ALLOC_FAILED ? -ENOMEM : -EIO;
    }
    memcpy(s->key, key, GSP_KEY_LEN);
    s->used = true;
    kr->order[kr->n++] = (uint8_t)idx;
    return 0;
}

int gsp_keyring_use(gsp_keyring *kr, const uint8_t key[GSP_KEY_LEN])
{
    int pos;
    uint8_t idx;

    if (kr == NULL || key == NULL)
        return -EINVAL;
    pos = find_key(kr, key);
    if (pos < 0)
        return -ENOENT;
    idx = kr->order[pos];
    memmove(kr->order + 1, kr->order, (size_t)pos);
    kr->order[0] = idx;
    return 0;
}

int gsp_keyring_remove(gsp_keyring *kr, const uint8_t key[GSP_KEY_LEN])
{
    int pos;

    if (kr == NULL || key == NULL)
        return -EINVAL;
    pos = find_key(kr, key);
    if (pos < 0)
        return -ENOENT;
    if (pos == 0)
        return -EBUSY;
    slot_clear(&kr->slot[kr->order[pos]]);
    memmove(kr->order + pos, kr->order + pos + 1, kr->n - (size_t)pos - 1);
    kr->n--;
    return 0;
}

size_t gsp_keyring_count(const gsp_keyring *kr)
{
    return kr != NULL ? kr->n : 0;
}

int gsp_keyring_get(const gsp_keyring *kr, size_t i, uint8_t out[GSP_KEY_LEN])
{
    if (kr == NULL || out == NULL)
        return -EINVAL;
    if (i >= kr->n)
        return -ENOENT;
    memcpy(out, kr->slot[kr->order[i]].key, GSP_KEY_LEN);
    return 0;
}

static bool overlaps(const void *a, size_t alen, const void *b, size_t blen)
{
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;

    if (alen == 0 || blen == 0)
        return false;
    return pa < pb + blen && pb < pa + alen;
}

/* in may be exactly out + GSP_SEAL_OVERHEAD - 16 (in-place sealing: build the
 * plaintext after a 13-byte gap); any other overlap is rejected. */
int gsp_seal(gsp_keyring *kr, const uint8_t *in, size_t in_len,
             uint8_t *out, size_t out_cap, size_t *out_len)
{
    struct key_slot *s;
    uint8_t *nonce;
    uint64_t ctr;

    if (kr == NULL || out == NULL || out_len == NULL ||
        (in == NULL && in_len > 0))
        return -EINVAL;
    if (kr->n == 0)
        return -ENOKEY;
    if (in_len > SIZE_MAX - GSP_SEAL_OVERHEAD ||
        out_cap < in_len + GSP_SEAL_OVERHEAD)
        return -ENOSPC;
    if (in != out + HDR_LEN &&
        overlaps(in, in_len, out, in_len + GSP_SEAL_OVERHEAD))
        return -EINVAL;

    s = &kr->slot[kr->order[0]];
    ctr = kr->counter++;
    out[0] = SEAL_VERSION;
    nonce = out + 1;
    memcpy(nonce, kr->nonce_prefix, sizeof(kr->nonce_prefix));
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(ctr >> (56 - 8 * i));

    if (mbedtls_gcm_crypt_and_tag(&s->gcm, MBEDTLS_GCM_ENCRYPT, in_len,
                                  nonce, NONCE_LEN, kr->aad, kr->aad_len,
                                  in, out + HDR_LEN, TAG_LEN,
                                  out + HDR_LEN + in_len) != 0) {
        mbedtls_platform_zeroize(out, in_len + GSP_SEAL_OVERHEAD);
        return -EIO;
    }
    *out_len = in_len + GSP_SEAL_OVERHEAD;
    return 0;
}

/* in and out must not overlap (a failed key would wipe the ciphertext). */
int gsp_open(gsp_keyring *kr, const uint8_t *in, size_t in_len,
             uint8_t *out, size_t out_cap, size_t *out_len)
{
    const uint8_t *nonce, *ct, *tag;
    size_t pt_len;

    if (out_len != NULL)
        *out_len = 0;
    if (kr == NULL || out_len == NULL || (in == NULL && in_len > 0) ||
        (out == NULL && out_cap > 0))
        return -EINVAL;
    if (in_len < GSP_SEAL_OVERHEAD || in[0] != SEAL_VERSION)
        return GSP_EDECRYPT;
    pt_len = in_len - GSP_SEAL_OVERHEAD;
    if (out_cap < pt_len)
        return GSP_EDECRYPT;
    if (overlaps(in, in_len, out, pt_len))
        return -EINVAL;

    nonce = in + 1;
    ct = in + HDR_LEN;
    tag = ct + pt_len;
    for (size_t i = 0; i < kr->n; i++) {
        struct key_slot *s = &kr->slot[kr->order[i]];
        if (mbedtls_gcm_auth_decrypt(&s->gcm, pt_len, nonce, NONCE_LEN,
                                     kr->aad, kr->aad_len, tag, TAG_LEN, ct,
                                     out) == 0) {
            *out_len = pt_len;
            return 0;
        }
    }
    if (pt_len > 0 && kr->n > 0)
        mbedtls_platform_zeroize(out, pt_len);
    return GSP_EDECRYPT;
}

/* ---- key files -------------------------------------------------------------- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* One trimmed token (no whitespace, no '#') into key. 0 or -EINVAL. */
static int parse_key(const char *tok, size_t len, uint8_t key[GSP_KEY_LEN])
{
    if (len == 2 * GSP_KEY_LEN)
        return pmm_hex_decode(tok, GSP_KEY_LEN, key);
    if (len == 44) {
        uint8_t enc[45];
        size_t olen = 0, elen = 0;
        int ok;

        if (mbedtls_base64_decode(key, GSP_KEY_LEN, &olen,
                                  (const unsigned char *)tok, len) != 0 ||
            olen != GSP_KEY_LEN)
            return -EINVAL;
        /* Accept only the canonical encoding (unused bits zero). */
        ok = mbedtls_base64_encode(enc, sizeof(enc), &elen, key,
                                   GSP_KEY_LEN) == 0 &&
             elen == len && memcmp(enc, tok, len) == 0;
        mbedtls_platform_zeroize(enc, sizeof(enc));
        return ok ? 0 : -EINVAL;
    }
    return -EINVAL;
}

/* Reads at most KEYFILE_MAX bytes of path into a new buffer. */
static int read_bounded(const char *path, char **buf_out, size_t *len_out)
{
    struct stat st;
    char *buf;
    size_t len = 0;
    int fd, rc = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return -EISDIR;
    }
    if (S_ISREG(st.st_mode) && st.st_size > KEYFILE_MAX) {
        close(fd);
        return -EFBIG;
    }
    buf = malloc(KEYFILE_MAX + 1);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    rc = pmm_read_fd(fd, buf, KEYFILE_MAX + 1, &len);
    close(fd);
    if (rc != 0) {
        mbedtls_platform_zeroize(buf, len);
        free(buf);
        return rc;
    }
    *buf_out = buf;
    *len_out = len;
    return 0;
}

/* Parses every line; keys[] gets the distinct keys in file order. */
static int parse_keyfile(const char *buf, size_t len,
                         uint8_t keys[GSP_KEYRING_MAX][GSP_KEY_LEN],
                         size_t *nkeys, int *bad_line)
{
    size_t pos = 0, n = 0;
    int line = 0;

    while (pos < len) {
        const char *p = buf + pos, *end, *nl;
        size_t llen, b, e;
        uint8_t key[GSP_KEY_LEN];
        bool dup = false;

        line++;
        nl = memchr(p, '\n', len - pos);
        llen = nl != NULL ? (size_t)(nl - p) : len - pos;
        pos += llen + (nl != NULL);

        if (llen > KEYFILE_LINE_MAX || memchr(p, '\0', llen) != NULL)
            goto bad;
        end = memchr(p, '#', llen);
        e = end != NULL ? (size_t)(end - p) : llen;
        for (b = 0; b < e && is_space(p[b]); b++)
            ;
        while (e > b && is_space(p[e - 1]))
            e--;
        if (e == b)
            continue; /* blank or comment */
        for (size_t i = b; i < e; i++)
            if (is_space(p[i]))
                goto bad;
        if (parse_key(p + b, e - b, key) != 0)
            goto bad;

        for (size_t i = 0; i < n; i++)
            dup = dup || key_eq(keys[i], key);
        if (!dup) {
            if (n == GSP_KEYRING_MAX) {
                mbedtls_platform_zeroize(key, sizeof(key));
                *bad_line = line;
                return -ENOSPC;
            }
            memcpy(keys[n++], key, GSP_KEY_LEN);
        }
        mbedtls_platform_zeroize(key, sizeof(key));
        continue;
bad:
        mbedtls_platform_zeroize(key, sizeof(key));
        *bad_line = line;
        return -EINVAL;
    }
    *nkeys = n;
    return 0;
}

int gsp_keyring_load_file(gsp_keyring *kr, const char *path, int *bad_line)
{
    uint8_t keys[GSP_KEYRING_MAX][GSP_KEY_LEN];
    uint8_t saved_order[GSP_KEYRING_MAX];
    size_t saved_n, nkeys = 0, fresh = 0;
    int line = 0, rc;
    char *buf = NULL;
    size_t len = 0;

    if (bad_line != NULL)
        *bad_line = 0;
    if (kr == NULL || path == NULL)
        return -EINVAL;

    rc = read_bounded(path, &buf, &len);
    if (rc != 0)
        return rc;
    rc = parse_keyfile(buf, len, keys, &nkeys, &line);
    mbedtls_platform_zeroize(buf, len);
    free(buf);
    if (rc != 0 || nkeys == 0)
        goto out; /* a file without keys changes nothing; callers check
                     gsp_keyring_count() */

    for (size_t i = 0; i < nkeys; i++)
        fresh += find_key(kr, keys[i]) < 0;
    if (kr->n + fresh > GSP_KEYRING_MAX) {
        rc = -ENOSPC;
        goto out;
    }

    /* Add the new keys; undo them all if one fails (ENOMEM). */
    saved_n = kr->n;
    memcpy(saved_order, kr->order, sizeof(saved_order));
    for (size_t i = 0; i < nkeys; i++) {
        if (find_key(kr, keys[i]) >= 0)
            continue;
        rc = gsp_keyring_add(kr, keys[i]);
        if (rc != 0) {
            for (size_t j = saved_n; j < kr->n; j++)
                slot_clear(&kr->slot[kr->order[j]]);
            kr->n = saved_n;
            memcpy(kr->order, saved_order, sizeof(saved_order));
            goto out;
        }
    }
    rc = gsp_keyring_use(kr, keys[0]);
out:
    mbedtls_platform_zeroize(keys, sizeof(keys));
    if (bad_line != NULL)
        *bad_line = line;
    return rc;
}
