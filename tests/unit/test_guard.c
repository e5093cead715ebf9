/*
 * test_guard.c - net/net.h without a network: sources and their
 * groups (/24, /64, IPv4-mapped IPv6), the eviction choice (heaviest
 * source first, then the lowest class, then the oldest; protected entries
 * never), and the join throttle on a simulated clock: per-group delays
 * that no number of other addresses can reset, a full table that refuses
 * new groups instead of forgetting old ones, attempts in flight never
 * dropped, the cluster-wide budget of failures (also across 200
 * addresses), and the quiet time after which a group starts afresh.
 */
#include "net/net.h"
#include "tests/tap.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static pmm_src v4(const char *s)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    pmm_src r;

    inet_pton(AF_INET, s, &sa.sin_addr);
    pmm_src_from_sa(&r, (struct sockaddr *)&sa);
    return r;
}

static pmm_src v6(const char *s)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    pmm_src r;

    inet_pton(AF_INET6, s, &sa.sin6_addr);
    pmm_src_from_sa(&r, (struct sockaddr *)&sa);
    return r;
}

static void test_sources(void)
{
    pmm_src a = v4("10.1.2.3"), b = v4("10.1.2.200"), c = v4("10.1.3.3");
    pmm_src m = v6("::ffff:10.1.2.3"), x = v6("fd00:1:2:3:4::1"),
            y = v6("fd00:1:2:3:ffff::9"), z = v6("fd00:1:2:4::1");
    pmm_src ga, gb, gc, gx, gy, gz, un;
    char buf[64];

    CHECK_EQ_INT(a.family, 4);
    CHECK(pmm_src_eq(&a, &m)); /* IPv4-mapped is IPv4 */
    CHECK(!pmm_src_eq(&a, &b));
    pmm_src_group(&ga, &a);
    pmm_src_group(&gb, &b);
    pmm_src_group(&gc, &c);
    CHECK(pmm_src_eq(&ga, &gb));
    CHECK(!pmm_src_eq(&ga, &gc));
    CHECK(strcmp(pmm_src_str(&a, false, buf, sizeof(buf)), "10.1.2.3") == 0);
    CHECK(strcmp(pmm_src_str(&b, true, buf, sizeof(buf)), "10.1.2.0/24") == 0);
    CHECK_EQ_INT(x.family, 6);
    pmm_src_group(&gx, &x);
    pmm_src_group(&gy, &y);
    pmm_src_group(&gz, &z);
    CHECK(pmm_src_eq(&gx, &gy));
    CHECK(!pmm_src_eq(&gx, &gz));
    CHECK(strcmp(pmm_src_str(&y, true, buf, sizeof(buf)), "fd00:1:2:3::/64") ==
          0);
    CHECK(pmm_src_loopback(&(pmm_src){4, {127, 0, 0, 9}}));
    CHECK(pmm_src_loopback(&(pmm_src){6, {[15] = 1}}));
    CHECK(!pmm_src_loopback(&a));
    CHECK(!pmm_src_loopback(&x));
    pmm_src_from_sa(&un, NULL);
    CHECK_EQ_INT(un.family, 0);
    CHECK(strcmp(pmm_src_str(&un, false, buf, sizeof(buf)), "(unknown)") == 0);
}

static void test_victim(void)
{
    pmm_guard_ent e[8];
    pmm_src atk = v4("10.0.0.66"), hc = v4("10.0.0.1"), o = v4("10.0.0.2");
    size_t n = 0;

    /* the health checker's one connection is the oldest of all */
    e[n++] = (pmm_guard_ent){hc, 1, 1, 0};
    e[n++] = (pmm_guard_ent){atk, 1, 2, 0};
    e[n++] = (pmm_guard_ent){atk, 0, 5, 0}; /* answered, lingering */
    e[n++] = (pmm_guard_ent){atk, 1, 3, 0};
    e[n++] = (pmm_guard_ent){o, 0, 4, 0};
    e[n++] = (pmm_guard_ent){hc, 1, 9, 0}; /* the newcomer */
    CHECK_EQ_INT(pmm_guard_count(e, n, &atk), 3);
    /* the heaviest source (the attacker) loses its lowest class first */
    CHECK_EQ_INT(pmm_guard_victim(e, n, 5), 2);
    e[2].cls = -1; /* protected: then its oldest reading one */
    CHECK_EQ_INT(pmm_guard_victim(e, n, 5), 1);
    /* a source's own cap: its own entries only, never the newcomer */
    CHECK_EQ_INT(pmm_guard_victim_of(e, n, 5, &hc), 0);
    CHECK_EQ_INT(pmm_guard_victim_of(e, n, 0, &hc), 5);
    /* equal sources: the better victim (lower class, then older) */
    {
        pmm_guard_ent f[3] = {{hc, 1, 1, 0}, {o, 0, 7, 0}, {atk, 1, 2, 0}};
        CHECK_EQ_INT(pmm_guard_victim(f, 3, 3), 1);
        f[1].cls = 1;
        CHECK_EQ_INT(pmm_guard_victim(f, 3, 3), 0);
        CHECK_EQ_INT(pmm_guard_victim(f, 3, 0), 2);
    }
    /* one connection each (a flood from many addresses): the address
     * that opened the most lately goes, even if the checker's is older */
    {
        pmm_guard_ent f[4] = {{hc, 1, 1, 3}, {o, 1, 5, 240}, {atk, 1, 4, 180},
                              {hc, 1, 9, 3}};
        CHECK_EQ_INT(pmm_guard_victim(f, 4, 3), 1);
    }
    /* nothing droppable */
    {
        pmm_guard_ent g[2] = {{hc, -1, 1, 0}, {o, 1, 2, 0}};
        CHECK_EQ_INT(pmm_guard_victim(g, 2, 1), 2);
        CHECK_EQ_INT(pmm_guard_victim(g, 0, 9), 0);
    }
}

/* one failed attempt from addr at *now; returns the delay, or -verdict */
static long long fail_once(pmm_thr *t, pmm_src a, uint64_t now)
{
    uint32_t slot;
    uint64_t retry;
    pmm_thr_verdict v = pmm_thr_begin(t, &a, now, &slot, &retry);
    uint64_t d;

    if (v != PMM_THR_GO)
        return -(long long)v;
    d = pmm_thr_fail(t, slot, now, NULL);
    pmm_thr_end(t, slot, false, now + d);
    return (long long)d;
}

static void test_rate(void)
{
    pmm_rate *r = pmm_rate_new(8, 1000);
    pmm_src a = v4("10.0.0.1"), b = v4("10.0.0.2");
    uint32_t n = 0;

    REQUIRE(r != NULL);
    for (int i = 0; i < 50; i++)
        n = pmm_rate_hit(r, &a, 100 + (uint64_t)i);
    CHECK_EQ_INT(n, 50);
    CHECK_EQ_INT(pmm_rate_hit(r, &b, 200), 1);
    CHECK_EQ_INT(pmm_rate_get(r, &a, 900), 50);
    /* the next window still remembers the last one, the one after not */
    CHECK_EQ_INT(pmm_rate_hit(r, &a, 1500), 51);
    CHECK_EQ_INT(pmm_rate_get(r, &a, 2500), 1);
    CHECK_EQ_INT(pmm_rate_get(r, &a, 3500), 0);
    /* a full table replaces its quietest entry */
    for (int i = 0; i < 40; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "10.1.0.%d", i);
        pmm_src x = v4(ip);
        pmm_rate_hit(r, &x, 4000);
    }
    {
        pmm_src z = v4("10.9.9.9");
        CHECK_EQ_INT(pmm_rate_get(r, &z, 4000), 0);
    }
    pmm_rate_free(r);
}

static void test_throttle_delays_not_reset(void)
{
    pmm_thr_cfg c = {.slots = 64, .burst = 100000, .refill_ms = 1};
    pmm_thr *t = pmm_thr_new(&c, 0);
    pmm_src victim_net = v4("192.0.2.7");
    uint64_t now = 1000;
    long long d = 0, d_before;
    char ip[32];
    int full = 0;

    REQUIRE(t != NULL);
    for (int k = 0; k < 5; k++) {
        long long x = fail_once(t, victim_net, now);
        CHECK(x > d);
        d = x;
        now += (uint64_t)x;
    }
    d_before = d;
    CHECK_EQ_INT(d_before, 8000);
    /* 70 more addresses, each in a /24 of its own (the old table kept 64
     * addresses: the 65th pushed the oldest out) */
    for (int k = 0; k < 70; k++) {
        snprintf(ip, sizeof(ip), "198.%d.%d.1", 18 + k / 200, k % 200);
        if (fail_once(t, v4(ip), now) == -PMM_THR_FULL)
            full++;
        now += 10;
    }
    CHECK_EQ_INT(full, 70 - 63); /* 64 slots, one is the victim's */
    /* the victim's group still remembers: the next answer waits as long */
    CHECK_EQ_INT(fail_once(t, v4("192.0.2.99"), now), d_before);
    pmm_thr_free(t);
}

static void test_throttle_group_busy_and_never_evicted(void)
{
    pmm_thr_cfg c = {.slots = 2, .burst = 1000, .refill_ms = 1,
                     .forget_ms = 1000};
    pmm_thr *t = pmm_thr_new(&c, 0);
    uint32_t s1, s2, s3;
    uint64_t r;

    REQUIRE(t != NULL);
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {10, 0, 0, 1}}, 0, &s1, &r),
                 PMM_THR_GO);
    /* another address of the same /24 while the first is in flight */
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {10, 0, 0, 2}}, 1, &s3, &r),
                 PMM_THR_BUSY);
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {10, 0, 1, 1}}, 2, &s2, &r),
                 PMM_THR_GO);
    /* both slots in flight, and stay so for an hour: a third group is
     * refused, never given one of them */
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {10, 0, 2, 1}}, 3600000, &s3,
                               &r),
                 PMM_THR_FULL);
    CHECK(r > 0);
    /* the first ends with the right password: its slot is free again */
    pmm_thr_end(t, s1, true, 3600001);
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {10, 0, 2, 1}}, 3600002, &s3,
                               &r),
                 PMM_THR_GO);
    pmm_thr_end(t, s2, false, 3600003);
    pmm_thr_end(t, s3, false, 3600003);
    pmm_thr_free(t);
}

static void test_throttle_global_budget(void)
{
    pmm_thr_cfg c = {.burst = 5, .refill_ms = 1000};
    pmm_thr *t = pmm_thr_new(&c, 0);
    pmm_thr_stats st;
    uint32_t slot;
    uint64_t r;
    char ip[32];

    REQUIRE(t != NULL);
    for (int k = 0; k < 5; k++) {
        snprintf(ip, sizeof(ip), "203.0.%d.1", k);
        CHECK(fail_once(t, v4(ip), 100) > 0);
    }
    /* the sixth group, at once: the budget is spent */
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {203, 0, 9, 1}}, 100, &slot,
                               &r),
                 PMM_THR_GLOBAL);
    CHECK(r > 0 && r <= 1000);
    /* one token a second */
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {203, 0, 9, 1}}, 1000, &slot,
                               &r),
                 PMM_THR_GO);
    CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {203, 0, 10, 1}}, 1000, &slot,
                               &r),
                 PMM_THR_GLOBAL);
    /* an attempt that ends without a verdict (or a right password) gives
     * its token back */
    pmm_thr_stats_get(t, 1000, &st);
    CHECK_EQ_INT(st.tokens, 0);
    CHECK_EQ_INT(st.busy, 1);
    {
        uint32_t s9 = slot;
        CHECK_EQ_INT(pmm_thr_begin(t, &(pmm_src){4, {203, 0, 9, 1}}, 1000,
                                   &slot, &r),
                     PMM_THR_BUSY);
        pmm_thr_end(t, s9, true, 1001);
    }
    pmm_thr_stats_get(t, 1001, &st);
    CHECK_EQ_INT(st.tokens, 1);
    CHECK_EQ_INT(st.failures, 5);
    CHECK_EQ_INT(st.groups, 5);
    CHECK(st.refused_global >= 2);
    pmm_thr_free(t);
}

/* 200 addresses (100 in one /24, 100 in /24s of their own) guessing as
 * fast as the master answers, for 10 simulated minutes: the guesses are
 * bounded by the cluster-wide budget, whatever the number of addresses */
static void test_throttle_200_addresses(void)
{
    pmm_thr *t = pmm_thr_new(NULL, 0);
    pmm_thr_cfg d;
    struct {
        pmm_src a;
        uint64_t free_at; /* its answer arrives */
        uint32_t slot;
        bool busy;
    } at[200];
    uint64_t guesses = 0, end = 600000;

    REQUIRE(t != NULL);
    pmm_thr_cfg_default(&d);
    for (int k = 0; k < 200; k++) {
        at[k].a = k < 100 ? (pmm_src){4, {10, 213, 0, (uint8_t)(100 + k)}}
                          : (pmm_src){4, {10, 220, (uint8_t)(k - 100), 1}};
        at[k].busy = false;
        at[k].free_at = 0;
    }
    for (uint64_t now = 0; now < end; now += 50) {
        for (int k = 0; k < 200; k++) {
            uint64_t r;
            if (at[k].busy) {
                if (now < at[k].free_at)
                    continue;
                pmm_thr_end(t, at[k].slot, false, now);
                at[k].busy = false;
            }
            if (pmm_thr_begin(t, &at[k].a, now, &at[k].slot, &r) !=
                PMM_THR_GO)
                continue;
            guesses++;
            at[k].free_at = now + pmm_thr_fail(t, at[k].slot, now, NULL);
            at[k].busy = true;
        }
    }
    printf("# 200 addresses, 10 simulated minutes: %llu guesses (%.3f/s; "
           "the budget: %u at once + one per %u ms)\n",
           (unsigned long long)guesses, guesses / 600.0, d.burst,
           d.refill_ms);
    CHECK(guesses <= d.burst + end / d.refill_ms);
    CHECK(guesses >= end / d.refill_ms); /* the budget is used, not stuck */
    pmm_thr_free(t);
}

static void test_throttle_forget(void)
{
    pmm_thr_cfg c = {.forget_ms = 60000, .burst = 1000, .refill_ms = 1};
    pmm_thr *t = pmm_thr_new(&c, 0);
    pmm_src a = v6("2001:db8:1:2::5"), b = v6("2001:db8:1:2:ffff::6");
    uint64_t now = 0;
    long long d1, d2, d3;

    REQUIRE(t != NULL);
    d1 = fail_once(t, a, now);
    now += 30000;
    d2 = fail_once(t, b, now); /* the same /64, 30 s later: still known */
    CHECK(d2 > d1);
    now += 100000;
    d3 = fail_once(t, a, now); /* quiet longer than forget_ms */
    CHECK_EQ_INT(d3, d1);
    pmm_thr_free(t);
}

int main(void)
{
    TAP_RUN(test_sources);
    TAP_RUN(test_victim);
    TAP_RUN(test_rate);
    TAP_RUN(test_throttle_delays_not_reset);
    TAP_RUN(test_throttle_group_busy_and_never_evicted);
    TAP_RUN(test_throttle_global_budget);
    TAP_RUN(test_throttle_200_addresses);
    TAP_RUN(test_throttle_forget);
    return tap_done();
}
