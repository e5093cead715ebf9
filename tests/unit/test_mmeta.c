/*
 * test_mmeta.c - NodeMeta encode/decode, rejection of truncated and
 * garbage metadata, /proc parsers and a live host sample.
 */
#include "membership/membership.h"
#include "tests/tap.h"

#include <errno.h>

static pmm_meta sample_meta(void)
{
    pmm_meta m;

    memset(&m, 0, sizeof(m));
    m.start_time = 1700000000;
    m.load1 = 123;
    m.mem_pct = 80;
    m.disk_pct = 41;
    m.cid = 3;
    strcpy(m.role, "master");
    return m;
}

static void test_roundtrip(void)
{
    pmm_meta m = sample_meta(), back;
    uint8_t buf[GSP_META_MAX];
    size_t len = 0;

    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    CHECK(len > 0 && len < 64);
    memset(&back, 0x5a, sizeof(back));
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK_EQ_INT(back.start_time, 1700000000);
    CHECK_EQ_INT(back.load1, 123);
    CHECK_EQ_INT(back.mem_pct, 80);
    CHECK_EQ_INT(back.disk_pct, 41);
    CHECK_EQ_INT(back.cid, 3);
    CHECK(strcmp(back.role, "master") == 0);
    /* extremes */
    m.start_time = UINT64_MAX;
    m.load1 = 0;
    m.mem_pct = 100;
    m.disk_pct = 0;
    m.cid = UINT32_MAX;
    strcpy(m.role, "-");
    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK(back.start_time == UINT64_MAX);
    CHECK(back.cid == UINT32_MAX);
    CHECK(strcmp(back.role, "-") == 0);
    CHECK(back.files_sync == 0); /* absent: not in sync */
    /* the mirrored files' sync tag */
    m.files_sync = 0x0123456789abcdefull;
    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK(back.files_sync == 0x0123456789abcdefull);
}

/* The store's fields: reason, own lag, kept data; the reason is dropped
 * before the metadata would be too large, never the rest. */
static void test_db_fields(void)
{
    pmm_meta m = sample_meta(), back;
    uint8_t buf[GSP_META_MAX];
    size_t len = 0;

    m.db_state = 4;
    m.db_epoch = 7;
    m.db_seq = 63600;
    snprintf(m.db_reason, sizeof(m.db_reason),
             "behind the master by 55000 changes");
    m.db_lag = 55000;
    m.db_kept = 2;
    m.db_divergence = 20003;
    m.db_loaded = true;
    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK(strcmp(back.db_reason, "behind the master by 55000 changes") == 0);
    CHECK(back.db_lag == 55000);
    CHECK_EQ_INT(back.db_kept, 2);
    CHECK(back.db_divergence == 20003);
    CHECK(back.db_loaded);
    /* every origin slot used (cids of up to 65535, positions of 2^40)
     * and the longest reason: the reason goes, the rest stays */
    m.n_origins = PMM_META_ORIGINS_MAX;
    for (uint32_t i = 0; i < m.n_origins; i++) {
        m.origins[i].cid = 65535 - i;
        m.origins[i].seq = (1ull << 40) - i;
    }
    memset(m.db_reason, 'x', PMM_DB_REASON_MAX);
    m.db_reason[PMM_DB_REASON_MAX] = '\0';
    m.db_lag = 1ull << 40;
    m.db_divergence = 1ull << 40;
    m.db_kept = 1000;
    m.db_seq = m.db_ts_ms = 1ull << 41;
    m.db_epoch = 1u << 20;
    m.cfg_epoch = m.cfg_version = 1u << 20;
    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    CHECK(len <= GSP_META_MAX);
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK_EQ_INT(back.n_origins, PMM_META_ORIGINS_MAX);
    CHECK(back.db_lag == 1ull << 40);
    CHECK(back.db_reason[0] == '\0' ||
          strlen(back.db_reason) == PMM_DB_REASON_MAX);
    /* a reason with a control character is refused */
    m = sample_meta();
    m.db_state = 4;
    snprintf(m.db_reason, sizeof(m.db_reason), "behind\n");
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
}

static void test_encode_rejects(void)
{
    pmm_meta m = sample_meta();
    uint8_t buf[GSP_META_MAX];
    size_t len = 0;

    m.mem_pct = 101;
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
    m = sample_meta();
    m.role[0] = '\0';
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
    m = sample_meta();
    strcpy(m.role, "a b");
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
    m = sample_meta();
    CHECK(pmm_meta_encode(&m, buf, 4, &len) == -ENOSPC);
}

static void test_decode_rejects(void)
{
    pmm_meta m = sample_meta(), back;
    uint8_t buf[GSP_META_MAX], junk[GSP_META_MAX + 8];
    size_t len = 0;
    uint32_t x = 12345;

    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    /* every truncation fails cleanly (required fields or a cut varint) */
    for (size_t cut = 0; cut < len; cut++) {
        int rc = pmm_meta_decode(&back, buf, cut);
        /* a cut inside the optional role/cid tail may still decode, but
         * only to something valid */
        if (rc == 0)
            CHECK(back.mem_pct <= 100 && back.disk_pct <= 100);
        else
            CHECK_EQ_INT(rc, GSP_EDECODE);
    }
    CHECK(pmm_meta_decode(&back, NULL, 0) == GSP_EDECODE);
    CHECK(pmm_meta_decode(&back, buf, 0) == GSP_EDECODE);
    /* too large */
    memset(junk, 0, sizeof(junk));
    CHECK(pmm_meta_decode(&back, junk, GSP_META_MAX + 1) == GSP_EDECODE);
    /* pseudo-random garbage never crashes, never yields invalid values */
    for (int round = 0; round < 20000; round++) {
        size_t n = 1 + (size_t)(round % 64);
        for (size_t i = 0; i < n; i++) {
            x = x * 1103515245u + 12345u;
            junk[i] = (uint8_t)(x >> 16);
        }
        if (pmm_meta_decode(&back, junk, n) == 0) {
            CHECK(back.mem_pct <= 100);
            CHECK(back.disk_pct <= 100);
            CHECK(strlen(back.role) >= 1 && strlen(back.role) <= PMM_ROLE_MAX);
        }
    }
    /* bit flips of a valid message */
    for (size_t i = 0; i < len * 8; i++) {
        memcpy(junk, buf, len);
        junk[i / 8] ^= (uint8_t)(1u << (i % 8));
        if (pmm_meta_decode(&back, junk, len) == 0)
            CHECK(back.mem_pct <= 100 && back.disk_pct <= 100);
    }
    /* hand-made: mem_pct = 200 (field 3, varint) */
    {
        const uint8_t bad[] = {0x08, 0x01, 0x10, 0x01, 0x18, 0xc8, 0x01,
                               0x20, 0x01};
        CHECK(pmm_meta_decode(&back, bad, sizeof(bad)) == GSP_EDECODE);
        const uint8_t ok[] = {0x08, 0x01, 0x10, 0x01, 0x18, 0x32, 0x20, 0x01};
        CHECK(pmm_meta_decode(&back, ok, sizeof(ok)) == 0);
        CHECK_EQ_INT(back.mem_pct, 50);
        CHECK(strcmp(back.role, "-") == 0); /* absent role */
        /* role with a control character (field 6, length 2: "\x01x") */
        const uint8_t badrole[] = {0x08, 0x01, 0x10, 0x01, 0x18, 0x32, 0x20,
                                   0x01, 0x32, 0x02, 0x01, 'x'};
        CHECK(pmm_meta_decode(&back, badrole, sizeof(badrole)) == GSP_EDECODE);
    }
}

static void test_proc_parsers(void)
{
    double up = -1;
    uint32_t v = 99;

    CHECK(pmm_parse_uptime("350735.47 234388.90\n", &up) == 0);
    CHECK(up > 350735.46 && up < 350735.48);
    CHECK(pmm_parse_uptime("12\n", &up) == 0);
    CHECK(pmm_parse_uptime("", &up) == -EINVAL);
    CHECK(pmm_parse_uptime("-5 1\n", &up) == -EINVAL);
    CHECK(pmm_parse_uptime("abc", &up) == -EINVAL);
    CHECK(pmm_parse_uptime("1e400 1", &up) == -EINVAL);
    CHECK(pmm_parse_uptime("5x", &up) == -EINVAL);

    CHECK(pmm_parse_loadavg("0.30 0.25 0.20 1/123 4567\n", &v) == 0);
    CHECK_EQ_INT(v, 30);
    CHECK(pmm_parse_loadavg("12.345 0 0 1/1 1\n", &v) == 0);
    CHECK_EQ_INT(v, 1235);
    CHECK(pmm_parse_loadavg("nan 1 1", &v) == -EINVAL);
    CHECK(pmm_parse_loadavg("", &v) == -EINVAL);

    CHECK(pmm_parse_meminfo("MemTotal:       16000000 kB\n"
                            "MemFree:         1000000 kB\n"
                            "MemAvailable:    4000000 kB\n", &v) == 0);
    CHECK_EQ_INT(v, 75);
    CHECK(pmm_parse_meminfo("MemTotal: 100 kB\nMemAvailable: 100 kB\n", &v) == 0);
    CHECK_EQ_INT(v, 0);
    CHECK(pmm_parse_meminfo("MemTotal: 100 kB\n", &v) == -EINVAL);
    CHECK(pmm_parse_meminfo("MemTotal: 0 kB\nMemAvailable: 0 kB\n", &v) == -EINVAL);
    CHECK(pmm_parse_meminfo("MemTotal: 10 kB\nMemAvailable: 20 kB\n", &v) == -EINVAL);
    CHECK(pmm_parse_meminfo("MemTotal: kB\nMemAvailable: 20 kB\n", &v) == -EINVAL);
    CHECK(pmm_parse_meminfo("XMemTotal: 10 kB\nMemAvailable: 2 kB\n", &v) == -EINVAL);
    CHECK(pmm_parse_meminfo("MemTotal: 99999999999999999999999 kB\n"
                            "MemAvailable: 2 kB\n", &v) == -EINVAL);
}

static void test_live_sample(void)
{
    pmm_sysinfo s;

    REQUIRE(pmm_sysinfo_sample(&s) == 0);
    CHECK(s.uptime_s > 0);
    CHECK(s.mem_pct <= 100);
    CHECK(s.disk_pct <= 100);
    printf("# uptime %.0f s, load %.2f, mem %u%%, disk %u%%\n", s.uptime_s,
           s.load1 / 100.0, s.mem_pct, s.disk_pct);
}

/* Versions: an old build's metadata (no range) reads as protocol 1..1,
 * a range and build round-trip, bad ones are refused both ways. */
static void test_versions(void)
{
    pmm_meta m = sample_meta(), back;
    uint8_t buf[GSP_META_MAX];
    size_t len = 0;

    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK_EQ_INT(back.proto_min, 1);
    CHECK_EQ_INT(back.proto_max, 1);
    CHECK(back.build[0] == '\0');
    m.proto_min = 2;
    m.proto_max = 5;
    strcpy(m.build, "0.2.0+g1234abc-dirty");
    REQUIRE(pmm_meta_encode(&m, buf, sizeof(buf), &len) == 0);
    REQUIRE(pmm_meta_decode(&back, buf, len) == 0);
    CHECK_EQ_INT(back.proto_min, 2);
    CHECK_EQ_INT(back.proto_max, 5);
    CHECK(strcmp(back.build, "0.2.0+g1234abc-dirty") == 0);
    m.proto_max = 1; /* max < min */
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
    m.proto_min = 0;
    m.proto_max = 3;
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
    m.proto_min = m.proto_max = 1;
    strcpy(m.build, "bad\nbuild");
    CHECK(pmm_meta_encode(&m, buf, sizeof(buf), &len) == -EINVAL);
    CHECK(pmm_proto_overlap(1, 1, 1, 2));
    CHECK(pmm_proto_overlap(2, 4, 4, 9));
    CHECK(!pmm_proto_overlap(1, 1, 2, 2));
    CHECK(!pmm_proto_overlap(3, 4, 1, 2));
}

int main(void)
{
    TAP_RUN(test_roundtrip);
    TAP_RUN(test_versions);
    TAP_RUN(test_db_fields);
    TAP_RUN(test_encode_rejects);
    TAP_RUN(test_decode_rejects);
    TAP_RUN(test_proc_parsers);
    TAP_RUN(test_live_sample);
    return tap_done();
}
