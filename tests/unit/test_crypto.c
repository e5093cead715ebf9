/* Unit tests for gossip/crypto.c: keyring, seal/open, key files, random. */
#include "gossip/gossip.h"
#include "tests/tap.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mbedtls/base64.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t xrand(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void fill(uint8_t *p, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 31 + (i >> 8));
}

static void mkkey(uint8_t key[GSP_KEY_LEN], uint8_t v)
{
    for (size_t i = 0; i < GSP_KEY_LEN; i++)
        key[i] = (uint8_t)(v * 7 + i);
}

static gsp_keyring *ring_with(const char *label, const uint8_t *key)
{
    gsp_keyring *kr = gsp_keyring_new(label);
    if (kr != NULL && key != NULL && gsp_keyring_add(kr, key) != 0) {
        gsp_keyring_free(kr);
        return NULL;
    }
    return kr;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/* Seal then open; returns true when the plaintext comes back. */
static bool seal_open(gsp_keyring *s, gsp_keyring *o, const uint8_t *in,
                      size_t n)
{
    uint8_t *sealed = malloc(n + GSP_SEAL_OVERHEAD);
    uint8_t *plain = malloc(n + 1);
    size_t slen = 0, plen = 1234;
    bool ok = false;

    if (sealed == NULL || plain == NULL)
        goto out;
    if (gsp_seal(s, in, n, sealed, n + GSP_SEAL_OVERHEAD, &slen) != 0 ||
        slen != n + GSP_SEAL_OVERHEAD)
        goto out;
    ok = gsp_open(o, sealed, slen, plain, n + 1, &plen) == 0 && plen == n &&
         (n == 0 || memcmp(plain, in, n) == 0);
out:
    free(sealed);
    free(plain);
    return ok;
}

static void test_roundtrip(void)
{
    static const size_t sizes[] = {0, 1, 1400, 65536};
    uint8_t k[GSP_KEY_LEN];
    gsp_keyring *kr;

    mkkey(k, 1);
    kr = ring_with("cluster-a", k);
    REQUIRE(kr != NULL);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i];
        uint8_t *in = malloc(n + 1);
        uint8_t *sealed = malloc(n + GSP_SEAL_OVERHEAD);
        uint8_t *plain = malloc(n + 1);
        size_t slen = 0, plen = 0;

        REQUIRE(in != NULL && sealed != NULL && plain != NULL);
        fill(in, n, (uint8_t)i);
        CHECK_EQ_INT(gsp_seal(kr, in, n, sealed, n + GSP_SEAL_OVERHEAD,
                              &slen), 0);
        CHECK_EQ_INT(slen, n + GSP_SEAL_OVERHEAD);
        CHECK_EQ_INT(sealed[0], 1);
        if (n >= 16)
            CHECK(memcmp(sealed + 13, in, 16) != 0); /* not plaintext */
        /* out exactly the plaintext size */
        CHECK_EQ_INT(gsp_open(kr, sealed, slen, n ? plain : NULL, n, &plen), 0);
        CHECK_EQ_INT(plen, n);
        CHECK(n == 0 || memcmp(plain, in, n) == 0);
        free(in);
        free(sealed);
        free(plain);
    }
    gsp_keyring_free(kr);
}

static void test_inplace_seal(void)
{
    uint8_t k[GSP_KEY_LEN], buf[13 + 300 + 16], ref[300], plain[300];
    size_t slen = 0, plen = 0;
    gsp_keyring *kr;

    mkkey(k, 2);
    kr = ring_with("", k);
    REQUIRE(kr != NULL);
    fill(ref, sizeof(ref), 9);
    memcpy(buf + 13, ref, sizeof(ref));
    CHECK_EQ_INT(gsp_seal(kr, buf + 13, sizeof(ref), buf, sizeof(buf), &slen), 0);
    CHECK_EQ_INT(gsp_open(kr, buf, slen, plain, sizeof(plain), &plen), 0);
    CHECK(plen == sizeof(ref) && memcmp(plain, ref, sizeof(ref)) == 0);
    /* other overlaps are refused */
    CHECK_EQ_INT(gsp_seal(kr, buf + 1, 100, buf, sizeof(buf), &slen), -EINVAL);
    CHECK_EQ_INT(gsp_open(kr, buf, slen, buf, sizeof(buf), &plen), -EINVAL);
    gsp_keyring_free(kr);
}

static void test_label_mismatch(void)
{
    uint8_t k[GSP_KEY_LEN], in[100];
    gsp_keyring *a, *b, *c, *d;
    char label[GSP_LABEL_MAX + 2];

    mkkey(k, 3);
    fill(in, sizeof(in), 1);
    a = ring_with("alpha", k);
    b = ring_with("beta", k);
    c = ring_with("", k);
    d = ring_with("alpha", k);
    REQUIRE(a && b && c && d);
    CHECK(seal_open(a, d, in, sizeof(in)));
    CHECK(!seal_open(a, b, in, sizeof(in)));
    CHECK(!seal_open(b, a, in, sizeof(in)));
    CHECK(!seal_open(a, c, in, sizeof(in)));
    CHECK(!seal_open(c, a, in, sizeof(in)));
    CHECK(!seal_open(c, b, in, 0));
    gsp_keyring_free(a);
    gsp_keyring_free(b);
    gsp_keyring_free(c);
    gsp_keyring_free(d);

    memset(label, 'x', sizeof(label));
    label[GSP_LABEL_MAX] = '\0';
    a = gsp_keyring_new(label);
    CHECK(a != NULL);
    gsp_keyring_free(a);
    label[GSP_LABEL_MAX] = 'x';
    label[GSP_LABEL_MAX + 1] = '\0';
    errno = 0;
    CHECK(gsp_keyring_new(label) == NULL);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK(gsp_keyring_new(NULL) == NULL);
    gsp_keyring_free(NULL);
}

static void test_wrong_key(void)
{
    uint8_t k1[GSP_KEY_LEN], k2[GSP_KEY_LEN], in[64];
    gsp_keyring *a, *b, *empty;

    mkkey(k1, 4);
    memcpy(k2, k1, sizeof(k2));
    k2[31] ^= 1; /* one bit apart */
    fill(in, sizeof(in), 2);
    a = ring_with("l", k1);
    b = ring_with("l", k2);
    empty = gsp_keyring_new("l");
    REQUIRE(a && b && empty);
    CHECK(seal_open(a, a, in, sizeof(in)));
    CHECK(!seal_open(a, b, in, sizeof(in)));
    CHECK(!seal_open(b, a, in, sizeof(in)));
    CHECK(!seal_open(a, empty, in, sizeof(in)));
    gsp_keyring_free(a);
    gsp_keyring_free(b);
    gsp_keyring_free(empty);
}

static void test_bit_flips(void)
{
    uint8_t k[GSP_KEY_LEN], in[200], sealed[200 + GSP_SEAL_OVERHEAD];
    uint8_t plain[256];
    size_t slen = 0, plen;
    gsp_keyring *kr;
    int opened = 0, unzeroed = 0;

    mkkey(k, 5);
    kr = ring_with("flip", k);
    REQUIRE(kr != NULL);
    /* a second key so every flip is tried against two keys */
    k[0] ^= 0xff;
    REQUIRE(gsp_keyring_add(kr, k) == 0);
    fill(in, sizeof(in), 3);
    REQUIRE(gsp_seal(kr, in, sizeof(in), sealed, sizeof(sealed), &slen) == 0);
    REQUIRE(gsp_open(kr, sealed, slen, plain, sizeof(plain), &plen) == 0);
    for (size_t bit = 0; bit < slen * 8; bit++) {
        sealed[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        memset(plain, 0xEE, sizeof(plain));
        plen = 77;
        int rc = gsp_open(kr, sealed, slen, plain, sizeof(plain), &plen);
        if (rc != GSP_EDECRYPT)
            opened++;
        /* nothing a caller could trust is left behind */
        if (!all_zero(plain, sizeof(in)) && !(bit < 8 && plain[0] == 0xEE))
            unzeroed++;
        if (plen != 0)
            unzeroed++;
        sealed[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    CHECK_EQ_INT(opened, 0);
    CHECK_EQ_INT(unzeroed, 0);
    /* the untouched packet still opens */
    CHECK_EQ_INT(gsp_open(kr, sealed, slen, plain, sizeof(plain), &plen), 0);
    CHECK(plen == sizeof(in) && memcmp(plain, in, sizeof(in)) == 0);
    gsp_keyring_free(kr);
}

/* The receiver binding (gossip.proto `to`) lives inside the sealed
 * plaintext. AES-GCM's cipher is a stream: flipping ciphertext bits flips
 * the same plaintext bits, so without the tag an attacker who knows where
 * the receiver id sits could turn "for B" into "for C" by XOR-ing B ^ C
 * in. The tag must refuse exactly that, and the splice of one packet's
 * nonce and tag onto another's ciphertext. */
static void test_retarget_refused(void)
{
    uint8_t k[GSP_KEY_LEN], pt[64], a[64 + GSP_SEAL_OVERHEAD],
        b[64 + GSP_SEAL_OVERHEAD], out[128];
    uint8_t idb[16], idc[16];
    size_t la = 0, lb = 0, plen = 0;
    const size_t at = 1 + 12 + 20; /* the receiver id at plaintext offset 20 */

    mkkey(k, 11);
    gsp_keyring *kr = ring_with("bind", k);
    REQUIRE(kr != NULL);
    memset(idb, 0xB0, sizeof(idb));
    memset(idc, 0xC0, sizeof(idc));
    fill(pt, sizeof(pt), 9);
    memcpy(pt + 20, idb, 16);
    REQUIRE(gsp_seal(kr, pt, sizeof(pt), a, sizeof(a), &la) == 0);
    /* rewrite the receiver: B -> C in the ciphertext */
    memcpy(b, a, la);
    for (size_t i = 0; i < 16; i++) b[at + i] ^= (uint8_t)(idb[i] ^ idc[i]);
    CHECK_EQ_INT(gsp_open(kr, b, la, out, sizeof(out), &plen), GSP_EDECRYPT);
    CHECK_EQ_INT(plen, 0);
    /* ... and with the tag of another packet for C sealed under the same
     * key: a tag belongs to its own nonce */
    uint8_t ptc[64];
    memcpy(ptc, pt, sizeof(ptc));
    memcpy(ptc + 20, idc, 16);
    REQUIRE(gsp_seal(kr, ptc, sizeof(ptc), b, sizeof(b), &lb) == 0);
    uint8_t splice[64 + GSP_SEAL_OVERHEAD];
    memcpy(splice, a, la);                          /* A's nonce ...   */
    memcpy(splice + 13, b + 13, sizeof(ptc));       /* C's ciphertext  */
    memcpy(splice + 13 + 64, b + 13 + 64, 16);      /* C's tag         */
    CHECK_EQ_INT(gsp_open(kr, splice, la, out, sizeof(out), &plen),
                 GSP_EDECRYPT);
    memcpy(splice, b, 13);                          /* C's nonce ...   */
    memcpy(splice + 13 + 64, a + 13 + 64, 16);      /* A's tag         */
    CHECK_EQ_INT(gsp_open(kr, splice, la, out, sizeof(out), &plen),
                 GSP_EDECRYPT);
    /* both originals open, each naming its own receiver */
    CHECK_EQ_INT(gsp_open(kr, a, la, out, sizeof(out), &plen), 0);
    CHECK(plen == 64 && !memcmp(out + 20, idb, 16));
    CHECK_EQ_INT(gsp_open(kr, b, lb, out, sizeof(out), &plen), 0);
    CHECK(plen == 64 && !memcmp(out + 20, idc, 16));
    gsp_keyring_free(kr);
}

static void test_truncation(void)
{
    uint8_t k[GSP_KEY_LEN], in[200], sealed[200 + GSP_SEAL_OVERHEAD + 1];
    uint8_t plain[256];
    size_t slen = 0, plen;
    gsp_keyring *kr;
    int opened = 0;

    mkkey(k, 6);
    kr = ring_with("trunc", k);
    REQUIRE(kr != NULL);
    fill(in, sizeof(in), 4);
    REQUIRE(gsp_seal(kr, in, sizeof(in), sealed, sizeof(sealed), &slen) == 0);
    for (size_t n = 0; n < slen; n++) {
        if (gsp_open(kr, sealed, n, plain, sizeof(plain), &plen) != GSP_EDECRYPT)
            opened++;
        /* a truncated copy in its own exact-size buffer (ASan bounds) */
        uint8_t *copy = malloc(n ? n : 1);
        REQUIRE(copy != NULL);
        memcpy(copy, sealed, n);
        if (gsp_open(kr, copy, n, plain, sizeof(plain), &plen) != GSP_EDECRYPT)
            opened++;
        /* dropping bytes from the front fails too */
        if (gsp_open(kr, sealed + (slen - n), n, plain, sizeof(plain),
                     &plen) != GSP_EDECRYPT)
            opened++;
        free(copy);
    }
    sealed[slen] = 0; /* one byte appended */
    if (gsp_open(kr, sealed, slen + 1, plain, sizeof(plain), &plen) != GSP_EDECRYPT)
        opened++;
    CHECK_EQ_INT(opened, 0);
    /* out one byte too small: refused, not truncated */
    CHECK_EQ_INT(gsp_open(kr, sealed, slen, plain, sizeof(in) - 1, &plen),
                 GSP_EDECRYPT);
    CHECK_EQ_INT(plen, 0);
    CHECK_EQ_INT(gsp_open(kr, sealed, slen, plain, sizeof(in), &plen), 0);
    gsp_keyring_free(kr);
}

static void test_garbage(void)
{
    uint8_t k[GSP_KEY_LEN], plain[2048];
    gsp_keyring *kr;
    int opened = 0;

    mkkey(k, 7);
    kr = ring_with("garbage", k);
    REQUIRE(kr != NULL);
    k[1] ^= 0x80;
    REQUIRE(gsp_keyring_add(kr, k) == 0);
    rng_state = 0x0123456789ABCDEFull;
    for (int i = 0; i < 10000; i++) {
        size_t n = (size_t)(xrand() % 2001), plen;
        uint8_t *buf = malloc(n ? n : 1);

        REQUIRE(buf != NULL);
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)xrand();
        if (n > 0 && (i & 1))
            buf[0] = 1; /* valid version byte: reach the tag check */
        if (gsp_open(kr, buf, n, plain, sizeof(plain), &plen) != GSP_EDECRYPT)
            opened++;
        free(buf);
    }
    CHECK_EQ_INT(opened, 0);
    gsp_keyring_free(kr);
}

static void test_rotation(void)
{
    uint8_t k1[GSP_KEY_LEN], k2[GSP_KEY_LEN], got[GSP_KEY_LEN], in[50];
    gsp_keyring *a, *b;

    mkkey(k1, 10);
    mkkey(k2, 11);
    fill(in, sizeof(in), 5);
    a = ring_with("rot", k1);
    b = ring_with("rot", k1);
    REQUIRE(a && b);
    REQUIRE(gsp_keyring_add(b, k2) == 0);
    CHECK_EQ_INT(gsp_keyring_count(b), 2);

    /* B seals with k1 (first key) */
    CHECK(seal_open(b, a, in, sizeof(in)));
    CHECK(seal_open(a, b, in, sizeof(in)));

    /* B switches to k2: A cannot open until it learns k2 */
    CHECK_EQ_INT(gsp_keyring_use(b, k2), 0);
    CHECK_EQ_INT(gsp_keyring_get(b, 0, got), 0);
    CHECK(memcmp(got, k2, GSP_KEY_LEN) == 0);
    CHECK_EQ_INT(gsp_keyring_get(b, 1, got), 0);
    CHECK(memcmp(got, k1, GSP_KEY_LEN) == 0);
    CHECK(!seal_open(b, a, in, sizeof(in)));
    CHECK(seal_open(a, b, in, sizeof(in))); /* B still opens k1 */
    CHECK_EQ_INT(gsp_keyring_add(a, k2), 0);
    CHECK(seal_open(b, a, in, sizeof(in)));
    CHECK(seal_open(a, b, in, sizeof(in))); /* A still seals with k1 */

    /* retire k1 everywhere */
    CHECK_EQ_INT(gsp_keyring_use(a, k2), 0);
    CHECK_EQ_INT(gsp_keyring_remove(a, k1), 0);
    CHECK_EQ_INT(gsp_keyring_remove(b, k1), 0);
    CHECK_EQ_INT(gsp_keyring_count(a), 1);
    CHECK(seal_open(a, b, in, sizeof(in)));
    CHECK(seal_open(b, a, in, sizeof(in)));

    /* a ring still holding only k1 is locked out */
    gsp_keyring *old = ring_with("rot", k1);
    REQUIRE(old != NULL);
    CHECK(!seal_open(a, old, in, sizeof(in)));
    CHECK(!seal_open(old, a, in, sizeof(in)));
    gsp_keyring_free(old);
    gsp_keyring_free(a);
    gsp_keyring_free(b);
}

static void test_ring_errors(void)
{
    uint8_t keys[GSP_KEYRING_MAX + 1][GSP_KEY_LEN], got[GSP_KEY_LEN];
    uint8_t in[10] = {0}, out[64];
    size_t olen;
    gsp_keyring *kr = gsp_keyring_new("err");

    REQUIRE(kr != NULL);
    for (int i = 0; i <= GSP_KEYRING_MAX; i++)
        mkkey(keys[i], (uint8_t)(20 + i));

    CHECK_EQ_INT(gsp_keyring_count(kr), 0);
    CHECK_EQ_INT(gsp_seal(kr, in, sizeof(in), out, sizeof(out), &olen), -ENOKEY);
    CHECK_EQ_INT(gsp_keyring_get(kr, 0, got), -ENOENT);
    CHECK_EQ_INT(gsp_keyring_use(kr, keys[0]), -ENOENT);
    CHECK_EQ_INT(gsp_keyring_remove(kr, keys[0]), -ENOENT);

    for (int i = 0; i < GSP_KEYRING_MAX; i++)
        CHECK_EQ_INT(gsp_keyring_add(kr, keys[i]), 0);
    CHECK_EQ_INT(gsp_keyring_add(kr, keys[3]), -EEXIST);
    CHECK_EQ_INT(gsp_keyring_add(kr, keys[GSP_KEYRING_MAX]), -ENOSPC);
    CHECK_EQ_INT(gsp_keyring_count(kr), GSP_KEYRING_MAX);
    CHECK_EQ_INT(gsp_keyring_get(kr, GSP_KEYRING_MAX, got), -ENOENT);
    CHECK_EQ_INT(gsp_keyring_use(kr, keys[GSP_KEYRING_MAX]), -ENOENT);
    CHECK_EQ_INT(gsp_keyring_remove(kr, keys[GSP_KEYRING_MAX]), -ENOENT);

    /* the sealing key cannot be removed */
    CHECK_EQ_INT(gsp_keyring_remove(kr, keys[0]), -EBUSY);
    CHECK_EQ_INT(gsp_keyring_use(kr, keys[5]), 0);
    CHECK_EQ_INT(gsp_keyring_remove(kr, keys[5]), -EBUSY);
    CHECK_EQ_INT(gsp_keyring_remove(kr, keys[0]), 0);
    CHECK_EQ_INT(gsp_keyring_remove(kr, keys[0]), -ENOENT);
    CHECK_EQ_INT(gsp_keyring_count(kr), GSP_KEYRING_MAX - 1);
    /* order: 5 first, then the rest in insertion order */
    static const int want[] = {5, 1, 2, 3, 4, 6, 7};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        CHECK_EQ_INT(gsp_keyring_get(kr, i, got), 0);
        CHECK(memcmp(got, keys[want[i]], GSP_KEY_LEN) == 0);
    }
    /* the freed slot is reusable */
    CHECK_EQ_INT(gsp_keyring_add(kr, keys[GSP_KEYRING_MAX]), 0);
    CHECK_EQ_INT(gsp_keyring_get(kr, GSP_KEYRING_MAX - 1, got), 0);
    CHECK(memcmp(got, keys[GSP_KEYRING_MAX], GSP_KEY_LEN) == 0);
    CHECK(seal_open(kr, kr, in, sizeof(in)));

    /* seal: out too small */
    CHECK_EQ_INT(gsp_seal(kr, in, sizeof(in), out,
                          sizeof(in) + GSP_SEAL_OVERHEAD - 1, &olen), -ENOSPC);
    CHECK_EQ_INT(gsp_seal(kr, in, sizeof(in), out,
                          sizeof(in) + GSP_SEAL_OVERHEAD, &olen), 0);
    CHECK_EQ_INT(gsp_keyring_count(NULL), 0);
    CHECK_EQ_INT(gsp_keyring_add(NULL, keys[0]), -EINVAL);
    gsp_keyring_free(kr);
}

static void test_nonces(void)
{
    uint8_t k[GSP_KEY_LEN], in[32] = {0}, s1[64], s2[64], s3[64];
    size_t l1, l2, l3;
    gsp_keyring *a, *b;

    mkkey(k, 40);
    a = ring_with("n", k);
    b = ring_with("n", k);
    REQUIRE(a && b);
    REQUIRE(gsp_seal(a, in, sizeof(in), s1, sizeof(s1), &l1) == 0);
    REQUIRE(gsp_seal(a, in, sizeof(in), s2, sizeof(s2), &l2) == 0);
    REQUIRE(gsp_seal(b, in, sizeof(in), s3, sizeof(s3), &l3) == 0);
    CHECK(memcmp(s1 + 1, s2 + 1, 12) != 0);
    CHECK(memcmp(s1 + 13, s2 + 13, l1 - 13) != 0);
    /* same 4-byte prefix, big-endian counter + 1 */
    CHECK(memcmp(s1 + 1, s2 + 1, 4) == 0);
    uint64_t c1 = 0, c2 = 0;
    for (int i = 0; i < 8; i++) {
        c1 = c1 << 8 | s1[5 + i];
        c2 = c2 << 8 | s2[5 + i];
    }
    CHECK(c2 == c1 + 1);
    /* another keyring with the same key starts elsewhere */
    CHECK(memcmp(s1 + 1, s3 + 1, 12) != 0);
    CHECK(memcmp(s2 + 1, s3 + 1, 12) != 0);

    /* many seals: all distinct nonces */
    enum { N = 1000 };
    static uint8_t seen[N][12];
    int dups = 0;
    for (int i = 0; i < N; i++) {
        REQUIRE(gsp_seal(a, in, 0, s1, sizeof(s1), &l1) == 0);
        memcpy(seen[i], s1 + 1, 12);
        if (i > 0 && memcmp(seen[i], seen[i - 1], 12) == 0)
            dups++;
    }
    CHECK_EQ_INT(dups, 0);
    gsp_keyring_free(a);
    gsp_keyring_free(b);
}

/* ---- key files ------------------------------------------------------------ */

static char tmpdir[256];

static const char *write_file(const char *name, const char *text, size_t len)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    if (f == NULL)
        return NULL;
    if (len > 0 && fwrite(text, 1, len, f) != len) {
        fclose(f);
        return NULL;
    }
    fclose(f);
    return path;
}

static const char *write_str(const char *name, const char *text)
{
    return write_file(name, text, strlen(text));
}

static void hex_of(const uint8_t *k, char *out, bool upper)
{
    const char *d = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    for (size_t i = 0; i < GSP_KEY_LEN; i++) {
        out[2 * i] = d[k[i] >> 4];
        out[2 * i + 1] = d[k[i] & 15];
    }
    out[2 * GSP_KEY_LEN] = '\0';
}

static void b64_of(const uint8_t *k, char *out)
{
    size_t olen;
    mbedtls_base64_encode((unsigned char *)out, 45, &olen, k, GSP_KEY_LEN);
    out[44] = '\0';
}

/* Snapshot of a ring's keys, in order. */
struct snap {
    size_t n;
    uint8_t k[GSP_KEYRING_MAX][GSP_KEY_LEN];
};

static void snap(const gsp_keyring *kr, struct snap *s)
{
    memset(s, 0, sizeof(*s));
    s->n = gsp_keyring_count(kr);
    for (size_t i = 0; i < s->n; i++)
        gsp_keyring_get(kr, i, s->k[i]);
}

static bool same(const struct snap *a, const struct snap *b)
{
    return a->n == b->n && memcmp(a->k, b->k, sizeof(a->k)) == 0;
}

static void test_load_file(void)
{
    uint8_t k1[GSP_KEY_LEN], k2[GSP_KEY_LEN], k3[GSP_KEY_LEN];
    uint8_t got[GSP_KEY_LEN];
    char h1[65], h2u[65], b3[45], text[1024];
    const char *path;
    gsp_keyring *kr;
    int bad = -1;

    mkkey(k1, 50);
    mkkey(k2, 51);
    memset(k3, 0xfb, sizeof(k3)); /* base64 with '+' and '/' */
    k3[0] = 0xff;
    hex_of(k1, h1, false);
    hex_of(k2, h2u, true);
    b64_of(k3, b3);

    snprintf(text, sizeof(text),
             "# cluster keys\n"
             "\n"
             "   %s  \n"
             "\t# old key, still accepted\n"
             "%s\r\n"
             "%s # trailing comment\n"
             "%s\n" /* duplicate: ignored */
             "   \n"
             "# no newline at the end",
             b3, h1, h2u, h1);
    path = write_str("keys", text);
    REQUIRE(path != NULL);
    kr = gsp_keyring_new("file");
    REQUIRE(kr != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), 0);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(gsp_keyring_count(kr), 3);
    CHECK(gsp_keyring_get(kr, 0, got) == 0 && memcmp(got, k3, 32) == 0);
    CHECK(gsp_keyring_get(kr, 1, got) == 0 && memcmp(got, k1, 32) == 0);
    CHECK(gsp_keyring_get(kr, 2, got) == 0 && memcmp(got, k2, 32) == 0);
    /* loading the same file again changes nothing */
    struct snap before, after;
    snap(kr, &before);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, NULL), 0);
    snap(kr, &after);
    CHECK(same(&before, &after));

    /* a bad line: error with its number, ring unchanged */
    static const char *bad_lines[] = {
        "0123",                      /* too short */
        "zz",                        /* garbage */
        "%s0",                       /* 65 hex */
        "%.63s",                     /* 63 hex */
        "%.62sgg",                   /* non-hex */
        "%.32s %.32s",               /* split by a space */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", /* non-canonical */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", /* 31 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*=", /* bad char */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  /* 43 chars */
    };
    for (size_t i = 0; i < sizeof(bad_lines) / sizeof(bad_lines[0]); i++) {
        char line[200];
        uint8_t k4[GSP_KEY_LEN];
        char h4[65];

        mkkey(k4, (uint8_t)(60 + i));
        hex_of(k4, h4, false);
        snprintf(line, sizeof(line), bad_lines[i], h4, h4 + 32);
        snprintf(text, sizeof(text), "# new keys\n%s\n\n%s\n# x\n", h4, line);
        path = write_str("bad", text);
        REQUIRE(path != NULL);
        bad = -1;
        CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), -EINVAL);
        if (bad != 4)
            printf("#   line '%s': bad_line %d\n", line, bad);
        CHECK_EQ_INT(bad, 4);
        snap(kr, &after);
        CHECK(same(&before, &after));
    }

    /* a line with a NUL byte */
    path = write_file("nul", "# a\n\0\n", 6);
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), -EINVAL);
    CHECK_EQ_INT(bad, 2);
    /* an over-long line, even a comment */
    char longline[1500];
    memset(longline, '#', sizeof(longline));
    path = write_file("long", longline, sizeof(longline));
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), -EINVAL);
    CHECK_EQ_INT(bad, 1);
    /* no key at all: success, nothing changes (callers check the count) */
    path = write_str("empty", "# nothing here\n\n");
    REQUIRE(path != NULL);
    bad = -1;
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), 0);
    CHECK_EQ_INT(bad, 0);
    path = write_str("empty0", "");
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), 0);
    gsp_keyring *none = gsp_keyring_new("file");
    REQUIRE(none != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(none, path, &bad), 0);
    CHECK_EQ_INT(gsp_keyring_count(none), 0);
    gsp_keyring_free(none);

    /* missing file, directory */
    snprintf(text, sizeof(text), "%s/does-not-exist", tmpdir);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, text, &bad), -ENOENT);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, tmpdir, &bad), -EISDIR);
    snap(kr, &after);
    CHECK(same(&before, &after));
    gsp_keyring_free(kr);
}

static void test_load_file_bounds(void)
{
    enum { LIMIT = 64 * 1024 };
    char *big = malloc(LIMIT + 1);
    uint8_t k[GSP_KEY_LEN], got[GSP_KEY_LEN];
    char h[65], text[GSP_KEYRING_MAX * 70 + 200];
    const char *path;
    gsp_keyring *kr = gsp_keyring_new("bounds");
    struct snap before, after;
    size_t off = 0;
    int bad;

    REQUIRE(big != NULL && kr != NULL);
    mkkey(k, 90);
    hex_of(k, h, false);

    /* exactly at the limit: accepted (comment lines then the key) */
    memset(big, '#', LIMIT);
    for (size_t i = 100; i < LIMIT; i += 100)
        big[i] = '\n';
    memcpy(big + LIMIT - 65, "\n", 1);
    memcpy(big + LIMIT - 64, h, 64);
    path = write_file("limit", big, LIMIT);
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), 0);
    CHECK(gsp_keyring_get(kr, 0, got) == 0 && memcmp(got, k, 32) == 0);

    /* one byte more: -EFBIG, ring unchanged */
    snap(kr, &before);
    big[LIMIT] = '\n';
    path = write_file("over", big, LIMIT + 1);
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), -EFBIG);
    snap(kr, &after);
    CHECK(same(&before, &after));
    free(big);

    /* more keys than fit in a ring */
    for (int i = 0; i <= GSP_KEYRING_MAX; i++) {
        uint8_t ki[GSP_KEY_LEN];
        mkkey(ki, (uint8_t)(100 + i));
        hex_of(ki, h, false);
        off += (size_t)snprintf(text + off, sizeof(text) - off, "%s\n", h);
    }
    path = write_str("toomany", text);
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), -ENOSPC);
    CHECK_EQ_INT(bad, GSP_KEYRING_MAX + 1);
    snap(kr, &after);
    CHECK(same(&before, &after));

    /* exactly 8 in the file, but the ring already holds another key */
    text[GSP_KEYRING_MAX * 65] = '\0';
    path = write_str("eight", text);
    REQUIRE(path != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, path, &bad), -ENOSPC);
    snap(kr, &after);
    CHECK(same(&before, &after));
    /* into an empty ring they fit */
    gsp_keyring *fresh = gsp_keyring_new("bounds");
    REQUIRE(fresh != NULL);
    CHECK_EQ_INT(gsp_keyring_load_file(fresh, path, &bad), 0);
    CHECK_EQ_INT(gsp_keyring_count(fresh), GSP_KEYRING_MAX);
    gsp_keyring_free(fresh);

    /* non-regular files: the read itself is bounded */
    CHECK_EQ_INT(gsp_keyring_load_file(kr, "/dev/null", &bad), 0);
    CHECK_EQ_INT(gsp_keyring_load_file(kr, "/dev/zero", &bad), -EFBIG);
    snap(kr, &after);
    CHECK(same(&before, &after));
    gsp_keyring_free(kr);
}

/* ---- random --------------------------------------------------------------- */

static void *rand_thread(void *arg)
{
    uint8_t buf[64];
    long fails = 0;

    for (int i = 0; i < 2000; i++)
        if (gsp_random(buf, sizeof(buf)) != 0)
            fails++;
    return (void *)fails;
}

static void test_random(void)
{
    uint8_t a[32], b[32], big[5000];
    pthread_t t[4];
    long fails = 0;

    CHECK_EQ_INT(gsp_random(a, sizeof(a)), 0);
    CHECK_EQ_INT(gsp_random(b, sizeof(b)), 0);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    CHECK(!all_zero(a, sizeof(a)));
    CHECK_EQ_INT(gsp_random(NULL, 0), 0);
    CHECK_EQ_INT(gsp_random(NULL, 1), -EINVAL);
    memset(big, 0, sizeof(big));
    CHECK_EQ_INT(gsp_random(big, sizeof(big)), 0); /* > one DRBG request */
    CHECK(!all_zero(big + 4000, 1000));

    for (int i = 0; i < 4; i++)
        REQUIRE(pthread_create(&t[i], NULL, rand_thread, NULL) == 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        fails += (long)r;
    }
    CHECK_EQ_INT(fails, 0);

    /* parent and forked child do not share the stream */
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        uint8_t c[32];
        int rc = gsp_random(c, sizeof(c));
        ssize_t w = write(fds[1], c, sizeof(c));
        _exit(rc == 0 && w == (ssize_t)sizeof(c) ? 0 : 1);
    }
    close(fds[1]);
    CHECK_EQ_INT(gsp_random(a, sizeof(a)), 0);
    CHECK_EQ_INT(read(fds[0], b, sizeof(b)), sizeof(b));
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
}

static void rm_tmpdir(void)
{
    static const char *names[] = {"keys", "bad", "nul", "long", "empty",
                                  "empty0", "limit", "over", "toomany",
                                  "eight"};
    char p[512];

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
}

int main(void)
{
    const char *t = getenv("TMPDIR");

    snprintf(tmpdir, sizeof(tmpdir), "%s/test_crypto.XXXXXX",
             t != NULL && t[0] != '\0' ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }

    TAP_RUN(test_roundtrip);
    TAP_RUN(test_inplace_seal);
    TAP_RUN(test_label_mismatch);
    TAP_RUN(test_wrong_key);
    TAP_RUN(test_bit_flips);
    TAP_RUN(test_retarget_refused);
    TAP_RUN(test_truncation);
    TAP_RUN(test_garbage);
    TAP_RUN(test_rotation);
    TAP_RUN(test_ring_errors);
    TAP_RUN(test_nonces);
    TAP_RUN(test_load_file);
    TAP_RUN(test_load_file_bounds);
    TAP_RUN(test_random);
    rm_tmpdir();
    return tap_done();
}
