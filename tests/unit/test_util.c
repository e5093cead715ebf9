/* Unit tests for gossip/util.c: addresses, ids, error strings. */
#include "gossip/gossip.h"
#include "tests/tap.h"

#include <errno.h>

/* Parses s, formats it back and compares with want (NULL: same as s). */
static int roundtrip(const char *s, uint16_t def, const char *want)
{
    gsp_addr a, b;
    char buf[64];

    if (gsp_addr_parse(&a, s, def) != 0)
        return 0;
    gsp_addr_str(&a, buf, sizeof(buf));
    if (strcmp(buf, want != NULL ? want : s) != 0) {
        printf("#   '%s' formatted as '%s'\n", s, buf);
        return 0;
    }
    /* the formatted string parses back to an equal address */
    return gsp_addr_parse(&b, buf, 1) == 0 && gsp_addr_eq(&a, &b);
}

static void test_addr_v4(void)
{
    gsp_addr a;
    char buf[64];

    CHECK_EQ_INT(gsp_addr_parse(&a, "1.2.3.4:7946", 1), 0);
    CHECK_EQ_INT(a.family, 4);
    CHECK(a.ip[0] == 1 && a.ip[1] == 2 && a.ip[2] == 3 && a.ip[3] == 4);
    CHECK_EQ_INT(a.port, 7946);
    CHECK(strcmp(gsp_addr_ip_str(&a, buf, 48), "1.2.3.4") == 0);

    CHECK_EQ_INT(gsp_addr_parse(&a, "10.0.0.1", 7946), 0);
    CHECK_EQ_INT(a.family, 4);
    CHECK_EQ_INT(a.port, 7946);

    CHECK(roundtrip("1.2.3.4:7946", 1, NULL));
    CHECK(roundtrip("255.255.255.255:65535", 1, NULL));
    CHECK(roundtrip("0.0.0.0:1", 1, NULL));
    CHECK(roundtrip("192.168.1.10", 7946, "192.168.1.10:7946"));
    CHECK(roundtrip("127.0.0.1:00080", 1, "127.0.0.1:80"));
}

static void test_addr_v6(void)
{
    gsp_addr a;
    char buf[64];

    CHECK_EQ_INT(gsp_addr_parse(&a, "[::1]:7946", 1), 0);
    CHECK_EQ_INT(a.family, 6);
    CHECK_EQ_INT(a.port, 7946);
    CHECK_EQ_INT(a.ip[15], 1);
    CHECK(strcmp(gsp_addr_ip_str(&a, buf, 48), "::1") == 0);

    /* bare IPv6: default port; "::1:7946" is itself an address */
    CHECK_EQ_INT(gsp_addr_parse(&a, "::1", 7946), 0);
    CHECK_EQ_INT(a.family, 6);
    CHECK_EQ_INT(a.port, 7946);
    CHECK_EQ_INT(gsp_addr_parse(&a, "::1:7946", 42), 0);
    CHECK_EQ_INT(a.family, 6);
    CHECK_EQ_INT(a.port, 42);
    CHECK_EQ_INT(gsp_addr_parse(&a, "[fe80::2]", 7946), 0);
    CHECK_EQ_INT(a.port, 7946);

    CHECK(roundtrip("[::1]:7946", 1, NULL));
    CHECK(roundtrip("[2001:db8::1]:1", 1, NULL));
    CHECK(roundtrip("[2001:DB8:0:0:0:0:0:1]:80", 1, "[2001:db8::1]:80"));
    CHECK(roundtrip("2001:db8::7", 7946, "[2001:db8::7]:7946"));
    CHECK(roundtrip("[::ffff:1.2.3.4]:5", 1, NULL));
    /* longest textual form */
    CHECK(roundtrip("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535",
                    1, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"));
}

static void test_addr_reject(void)
{
    static const char *bad[] = {
        "", ":", ":7946", "[]", "[]:7946", "[::1", "::1]", "[::1]:",
        "[::1]x", "[::1]:7946x", "[::1]:0", "[::1]:65536", "[1.2.3.4]:80",
        "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:99999",
        "1.2.3.4:123456", "1.2.3.4:-1", "1.2.3.4:+80", "1.2.3.4: 80",
        "1.2.3.4:80 ", " 1.2.3.4:80", "1.2.3.4:80x", "1.2.3.4x",
        "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4:80:90", "localhost",
        "localhost:7946", "garbage", "fe80::1%eth0", "[fe80::1%eth0]:1",
        ":::", "1::2::3", "[::1]:7946:1", "1.2.3.4\n",
        "11111111111111111111111111111111111111111111111111111111111111111111",
    };
    gsp_addr a, orig;

    memset(&orig, 0xA5, sizeof(orig));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        a = orig;
        int rc = gsp_addr_parse(&a, bad[i], 7946);
        if (rc != -EINVAL)
            printf("#   accepted '%s' (rc %d)\n", bad[i], rc);
        CHECK_EQ_INT(rc, -EINVAL);
        CHECK(memcmp(&a, &orig, sizeof(a)) == 0); /* untouched */
    }
    CHECK_EQ_INT(gsp_addr_parse(NULL, "1.2.3.4", 1), -EINVAL);
    CHECK_EQ_INT(gsp_addr_parse(&a, NULL, 1), -EINVAL);
}

static void test_addr_eq_and_str(void)
{
    gsp_addr a, b;
    char buf[64];

    REQUIRE(gsp_addr_parse(&a, "1.2.3.4:7946", 1) == 0);
    REQUIRE(gsp_addr_parse(&b, "1.2.3.4:7946", 1) == 0);
    CHECK(gsp_addr_eq(&a, &b));
    b.ip[10] = 99; /* beyond the IPv4 length: ignored */
    CHECK(gsp_addr_eq(&a, &b));
    b.port = 7947;
    CHECK(!gsp_addr_eq(&a, &b));
    REQUIRE(gsp_addr_parse(&b, "1.2.3.5:7946", 1) == 0);
    CHECK(!gsp_addr_eq(&a, &b));
    REQUIRE(gsp_addr_parse(&b, "[::1.2.3.4]:7946", 1) == 0);
    CHECK(!gsp_addr_eq(&a, &b)); /* different family */
    REQUIRE(gsp_addr_parse(&a, "[::1]:1", 1) == 0);
    REQUIRE(gsp_addr_parse(&b, "[::2]:1", 1) == 0);
    CHECK(!gsp_addr_eq(&a, &b));
    CHECK(gsp_addr_eq(NULL, NULL));
    CHECK(!gsp_addr_eq(&a, NULL));

    /* unset address and short buffers never overflow */
    memset(&a, 0, sizeof(a));
    CHECK(strcmp(gsp_addr_str(&a, buf, sizeof(buf)), "(none)") == 0);
    CHECK(strcmp(gsp_addr_ip_str(&a, buf, sizeof(buf)), "(none)") == 0);
    REQUIRE(gsp_addr_parse(&a, "[2001:db8::1]:7946", 1) == 0);
    memset(buf, 'x', sizeof(buf));
    gsp_addr_str(&a, buf, 8);
    CHECK(strcmp(buf, "[2001:d") == 0);
    CHECK(buf[8] == 'x');
}

static void test_id(void)
{
    gsp_id id, orig;
    char buf[33];

    CHECK_EQ_INT(gsp_id_parse(&id, "00112233445566778899aabbccddeeff"), 0);
    CHECK(id.b[0] == 0x00 && id.b[1] == 0x11 && id.b[15] == 0xff);
    CHECK(strcmp(gsp_id_str(&id, buf, sizeof(buf)),
                 "00112233445566778899aabbccddeeff") == 0);
    CHECK_EQ_INT(gsp_id_parse(&id, "00112233445566778899AABBCCDDEEFF"), 0);
    CHECK(strcmp(gsp_id_str(&id, buf, sizeof(buf)),
                 "00112233445566778899aabbccddeeff") == 0);
    CHECK_EQ_INT(gsp_id_parse(&id, "0123456789AbCdEf0123456789aBcDeF"), 0);
    CHECK(strcmp(gsp_id_str(&id, buf, sizeof(buf)),
                 "0123456789abcdef0123456789abcdef") == 0);

    memset(&orig, 0x5A, sizeof(orig));
    static const char *bad[] = {
        "", "0", "00112233445566778899aabbccddeef",
        "00112233445566778899aabbccddeeff0",
        "00112233445566778899aabbccddeefg",
        "g0112233445566778899aabbccddeeff",
        " 0112233445566778899aabbccddeeff",
        "00112233445566778899aabbccddeef ",
        "0x112233445566778899aabbccddeeff",
        "00112233-4455-6677-8899-aabbccdd",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        id = orig;
        CHECK_EQ_INT(gsp_id_parse(&id, bad[i]), -EINVAL);
        CHECK(memcmp(&id, &orig, sizeof(id)) == 0);
    }
    CHECK_EQ_INT(gsp_id_parse(&id, NULL), -EINVAL);

    /* every byte value survives a round trip */
    for (int v = 0; v < 256; v++) {
        gsp_id x, y;
        memset(&x, v, sizeof(x));
        x.b[0] = (uint8_t)(255 - v);
        gsp_id_str(&x, buf, sizeof(buf));
        CHECK_EQ_INT(strlen(buf), 32);
        CHECK_EQ_INT(gsp_id_parse(&y, buf), 0);
        CHECK(memcmp(&x, &y, sizeof(x)) == 0);
    }

    /* too small a buffer: empty string, no overflow */
    memset(buf, 'x', sizeof(buf));
    gsp_id_str(&id, buf, 32);
    CHECK(buf[0] == '\0' && buf[1] == 'x');
}

static void test_strerror(void)
{
    const int codes[] = {GSP_EDECRYPT, GSP_EDECODE, GSP_ETOOBIG, GSP_ESELF};

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const char *s = gsp_strerror(codes[i]);
        CHECK(s != NULL && s[0] != '\0');
        CHECK(strncmp(s, "Unknown error", 13) != 0);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(s, gsp_strerror(codes[j])) != 0);
    }
    CHECK(strcmp(gsp_strerror(-ENOENT), strerror(ENOENT)) == 0);
    CHECK(strcmp(gsp_strerror(-EINVAL), strerror(EINVAL)) == 0);
    CHECK(gsp_strerror(0) != NULL);
    CHECK(gsp_strerror(-99999) != NULL);
    CHECK(gsp_strerror(-505) != NULL);
    CHECK(gsp_strerror(-2147483647 - 1) != NULL);
    CHECK(gsp_strerror(42) != NULL);
}

static void test_budget(void)
{
    gsp_budget_stats st;
    gsp_budget *b;

    CHECK(gsp_budget_new(0) == NULL);
    b = gsp_budget_new(100);
    CHECK(b != NULL);
    if (!b)
        return;
    CHECK(gsp_budget_take(b, 60) == 0);
    CHECK(gsp_budget_take(b, 41) == -ENOBUFS); /* would pass the limit */
    CHECK(gsp_budget_take(b, 40) == 0);        /* exactly at the limit */
    CHECK(gsp_budget_take(b, 1) == -ENOBUFS);
    CHECK(gsp_budget_take(b, 0) == 0);
    CHECK(gsp_budget_take(b, (size_t)-1) == -ENOBUFS); /* no wrap */
    gsp_budget_get(b, &st);
    CHECK(st.limit == 100 && st.used == 100 && st.peak == 100);
    CHECK(st.refused == 3);
    gsp_budget_give(b, 60);
    CHECK(gsp_budget_take(b, 50) == 0);
    gsp_budget_give(b, 1000); /* a buggy over-give floors at zero */
    gsp_budget_get(b, &st);
    CHECK(st.used == 0 && st.peak == 100);
    gsp_budget_free(b);
    /* NULL: unlimited, nothing counted */
    CHECK(gsp_budget_take(NULL, (size_t)1 << 40) == 0);
    gsp_budget_give(NULL, 5);
    gsp_budget_get(NULL, &st);
    CHECK(st.limit == 0 && st.used == 0 && st.refused == 0);
}

int main(void)
{
    TAP_RUN(test_addr_v4);
    TAP_RUN(test_addr_v6);
    TAP_RUN(test_addr_reject);
    TAP_RUN(test_addr_eq_and_str);
    TAP_RUN(test_id);
    TAP_RUN(test_strerror);
    TAP_RUN(test_budget);
    return tap_done();
}
