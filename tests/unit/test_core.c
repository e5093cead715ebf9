/*
 * test_core.c - unit tests of the sans-IO gossip core: transitions,
 * incarnation ordering, suspicion arithmetic, retransmit limits, codec,
 * and hostile input. A tiny lock-step network (5 ms steps) drives a few
 * real cores; the large-scale behaviour is tested by tests/sim.
 */
#include "gossip/gossip.h"
#include "gossip/gossip.pb-c.h"
#include "tests/tap.h"

#include <errno.h>

#define MAXN 8
#define STEP 5

typedef struct pkt {
    int dst;
    gsp_addr from;
    uint8_t *data;
    size_t len;
    uint64_t at;
} pkt;

typedef struct tnode {
    gsp_core *c;
    gsp_id id;
    gsp_addr addr;
    gsp_keyring *kr;
    uint64_t gen;
    bool down;     /* crashed: sends and receives nothing */
    bool deaf;     /* receives nothing (one-way cut) */
    int changes;
} tnode;

static tnode T[MAXN];
static int NN;
static uint64_t NOW;
static pkt Q[4096];
static int QN;
static uint8_t KEY1[GSP_KEY_LEN], KEY2[GSP_KEY_LEN];

/* Wiretap (replay tests): copies of what node TAP_SRC sends node TAP_DST,
 * datagrams and stream requests, as they go out. TAP_SRC < 0: off. */
#define TAP_MAX 64
typedef struct tapped {
    gsp_out_kind kind;
    int src, dst;
    uint8_t *data;
    size_t len;
} tapped;
static int TAP_SRC = -1, TAP_DST = -1;
static bool TAP_ALL; /* every datagram of every node (ack tests) */
static tapped TAPQ[TAP_MAX];
static int TAPN;
static uint32_t INDIRECT; /* indirect_checks for new nodes (0: default) */

/* Direct pings seen on the wire (plaintext nets), per member pinged or
 * pinging (a ping from a member is its partner's check of it: see
 * ping_is_check in core.c): the time of the last one and the longest gap
 * between two (schedule tests). */
static bool PING_WATCH;
static uint64_t PING_LAST[MAXN], PING_GAP[MAXN];

static void ping_mark(int i)
{
    if (PING_LAST[i] && NOW - PING_LAST[i] > PING_GAP[i])
        PING_GAP[i] = NOW - PING_LAST[i];
    PING_LAST[i] = NOW;
}

static void watch_ping(int src, int dst, const gsp_out *o)
{
    if (!PING_WATCH || o->kind != GSP_OUT_UDP || dst < 0) return;
    Pmgcm__Gossip__Packet *p = pmgcm__gossip__packet__unpack(NULL, o->len,
                                                             o->data);
    if (!p) return;
    if (p->ping && !p->ping->indirect && p->ping->target.len == GSP_ID_LEN &&
        !memcmp(p->ping->target.data, T[dst].id.b, GSP_ID_LEN)) {
        ping_mark(dst);
        ping_mark(src);
    }
    pmgcm__gossip__packet__free_unpacked(p, NULL);
}

static void tap(int src, int dst, const gsp_out *o)
{
    watch_ping(src, dst, o);
    if (TAPN >= TAP_MAX) return;
    if (TAP_ALL ? o->kind != GSP_OUT_UDP
                : src != TAP_SRC || dst != TAP_DST)
        return;
    TAPQ[TAPN].kind = o->kind;
    TAPQ[TAPN].src = src;
    TAPQ[TAPN].dst = dst;
    TAPQ[TAPN].data = malloc(o->len);
    if (!TAPQ[TAPN].data) abort();
    memcpy(TAPQ[TAPN].data, o->data, o->len);
    TAPQ[TAPN++].len = o->len;
}

static void tap_reset(int src, int dst)
{
    for (int i = 0; i < TAPN; i++) free(TAPQ[i].data);
    TAPN = 0;
    TAP_SRC = src;
    TAP_DST = dst;
    TAP_ALL = false;
}

static void on_change(void *ud, const gsp_member *m, gsp_state old, bool is_new)
{
    ((tnode *)ud)->changes++;
}

static int find_node(const gsp_addr *a)
{
    for (int i = 0; i < NN; i++)
        if (gsp_addr_eq(&T[i].addr, a)) return i;
    return -1;
}

static void node_start(int i, uint64_t gen)
{
    gsp_config cfg;
    gsp_config_default(&cfg);
    if (INDIRECT) cfg.indirect_checks = INDIRECT;
    gsp_callbacks cb = {.ud = &T[i], .member_changed = on_change};
    char name[16];
    snprintf(name, sizeof(name), "n%d", i);
    T[i].gen = gen;
    T[i].down = false;
    int rc = gsp_core_new(&T[i].c, &cfg, &T[i].id, name, &T[i].addr, gen,
                          T[i].kr, 1000 + i + gen * 77, NOW, &cb);
    if (rc) abort();
}

static void net_init(int n, bool keyed)
{
    memset(T, 0, sizeof(T));
    NN = n;
    NOW = 1000000;
    QN = 0;
    memset(KEY1, 0x11, sizeof(KEY1));
    memset(KEY2, 0x22, sizeof(KEY2));
    for (int i = 0; i < n; i++) {
        memset(T[i].id.b, 0, GSP_ID_LEN);
        T[i].id.b[0] = (uint8_t)(0xA0 + i);
        T[i].id.b[15] = (uint8_t)i;
        char a[32];
        snprintf(a, sizeof(a), "10.0.0.%d:7946", i + 1);
        gsp_addr_parse(&T[i].addr, a, 7946);
        if (keyed) {
            T[i].kr = gsp_keyring_new("test");
            gsp_keyring_add(T[i].kr, KEY1);
        }
        node_start(i, 1);
    }
}

static void net_free(void)
{
    for (int i = 0; i < NN; i++) {
        gsp_core_free(T[i].c);
        gsp_keyring_free(T[i].kr);
    }
    for (int i = 0; i < QN; i++) free(Q[i].data);
    QN = 0;
}

/* Moves every node's output onto the wire (or straight into streams). */
static void pump(void)
{
    for (int i = 0; i < NN; i++) {
        gsp_out o;
        while (gsp_core_pop_out(T[i].c, &o)) {
            int d = find_node(&o.addr);
            bool reach = !T[i].down && d >= 0 && !T[d].down && !T[d].deaf;
            tap(i, d, &o);
            if (o.kind == GSP_OUT_UDP) {
                if (reach && QN < 4096) {
                    Q[QN++] = (pkt){.dst = d, .from = T[i].addr,
                                    .data = o.data, .len = o.len,
                                    .at = NOW + 1};
                    continue;
                }
                free(o.data);
            } else {
                uint8_t *r = NULL;
                size_t rl = 0;
                if (reach)
                    gsp_core_stream_request(T[d].c, NOW, &T[i].addr,
                                            &T[d].addr, o.data, o.len, &r,
                                            &rl);
                gsp_core_stream_result(T[i].c, NOW, o.req_id,
                                       reach && r != NULL, r, rl);
                free(r);
                free(o.data);
            }
        }
    }
}

static void step(void)
{
    NOW += STEP;
    for (int q = 0; q < QN;) {
        if (Q[q].at <= NOW) {
            pkt p = Q[q];
            Q[q] = Q[--QN];
            if (!T[p.dst].down && !T[p.dst].deaf)
                gsp_core_recv(T[p.dst].c, NOW, &p.from, p.data, p.len);
            free(p.data);
        } else {
            q++;
        }
    }
    for (int i = 0; i < NN; i++)
        if (!T[i].down && gsp_core_next_deadline(T[i].c) <= NOW)
            gsp_core_tick(T[i].c, NOW);
    pump();
}

static gsp_state state_of(int observer, int subject)
{
    gsp_member m;
    if (gsp_core_get(T[observer].c, &T[subject].id, &m)) return (gsp_state)-1;
    return m.state;
}

/* Runs until every live node other than `subject` sees it in state s. */
static int run_until_all_see(int subject, gsp_state s, uint64_t max_ms)
{
    uint64_t end = NOW + max_ms, start = NOW;
    for (;;) {
        bool ok = true;
        for (int i = 0; i < NN; i++)
            if (i != subject && !T[i].down && state_of(i, subject) != s)
                ok = false;
        if (ok) return (int)(NOW - start);
        if (NOW >= end) return -1;
        step();
    }
}

static bool all_alive(void)
{
    for (int i = 0; i < NN; i++)
        for (int j = 0; j < NN; j++)
            if (!T[i].down && !T[j].down && state_of(i, j) != GSP_ALIVE)
                return false;
    return true;
}

static int run_until_all_alive(uint64_t max_ms)
{
    uint64_t end = NOW + max_ms, start = NOW;
    while (!all_alive()) {
        if (NOW >= end) return -1;
        step();
    }
    return (int)(NOW - start);
}

static void join_all(void)
{
    for (int i = 1; i < NN; i++) gsp_core_join(T[i].c, NOW, &T[0].addr, 1);
    pump();
}

/* ---- pure arithmetic ---------------------------------------------------- */

static void test_incarnation_order(void)
{
    gsp_inc a = {1, 5}, b = {2, 0}, c = {1, 6};
    CHECK(gsp_inc_cmp(a, b) < 0);
    CHECK(gsp_inc_cmp(b, a) > 0);
    CHECK(gsp_inc_cmp(a, c) < 0);
    CHECK(gsp_inc_cmp(a, a) == 0);
    /* a restart (generation bump) beats any version of the old life */
    gsp_inc old = {7, UINT64_MAX}, fresh = {8, 0};
    CHECK(gsp_inc_cmp(fresh, old) > 0);
}

static void test_retransmit_limit(void)
{
    CHECK_EQ_INT(gsp_retransmit_limit(4, 1), 4);   /* ceil(log10 2) = 1 */
    CHECK_EQ_INT(gsp_retransmit_limit(4, 9), 4);   /* log10 10 = 1 */
    CHECK_EQ_INT(gsp_retransmit_limit(4, 10), 8);  /* ceil(log10 11) = 2 */
    CHECK_EQ_INT(gsp_retransmit_limit(4, 1000), 16);
    CHECK_EQ_INT(gsp_retransmit_limit(3, 0), 3);   /* never below mult */
}

static void test_suspicion_timeout(void)
{
    /* no confirmations expected: minimum at once */
    CHECK_EQ_INT(gsp_suspicion_timeout(2000, 12000, 0, 0), 2000);
    /* none received yet: maximum */
    CHECK_EQ_INT(gsp_suspicion_timeout(2000, 12000, 3, 0), 12000);
    /* all received: minimum */
    CHECK_EQ_INT(gsp_suspicion_timeout(2000, 12000, 3, 3), 2000);
    /* one of three: max - log(2)/log(4) * (max - min) = max - 0.5*range */
    CHECK_EQ_INT(gsp_suspicion_timeout(2000, 12000, 3, 1), 7000);
    /* more than expected never goes below the minimum */
    CHECK_EQ_INT(gsp_suspicion_timeout(2000, 12000, 3, 9), 2000);
    /* monotonic in confirmations */
    uint64_t prev = UINT64_MAX;
    for (uint32_t k = 0; k <= 5; k++) {
        uint64_t t = gsp_suspicion_timeout(1000, 6000, 5, k);
        CHECK(t <= prev);
        prev = t;
    }
}

static void test_suspicion_bounds_scale_with_n(void)
{
    net_init(3, false);
    uint64_t mn, mx;
    gsp_config cfg;
    gsp_config_default(&cfg);
    gsp_core_suspicion_bounds(T[0].c, &mn, &mx);
    /* one member known: mult * max(1, log10 1) * probe interval */
    CHECK_EQ_INT(mn, (uint64_t)cfg.suspicion_mult * cfg.probe_interval_ms);
    CHECK_EQ_INT(mx, mn * cfg.suspicion_max_mult);
    net_free();
}

/* ---- transitions on a small network ------------------------------------- */

static void test_join_all_alive(void)
{
    net_init(5, true);
    join_all();
    int t = run_until_all_alive(5000);
    CHECK(t >= 0);
    for (int i = 0; i < NN; i++)
        CHECK_EQ_INT(gsp_core_count(T[i].c, 1 << GSP_ALIVE), 5);
    net_free();
}

static void test_crash_suspect_dead_restart(void)
{
    net_init(5, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    T[4].down = true;
    /* suspect first: some node must pass through SUSPECT */
    bool seen_suspect = false;
    uint64_t end = NOW + 20000;
    while (NOW < end && !seen_suspect) {
        step();
        for (int i = 0; i < 4; i++) seen_suspect |= state_of(i, 4) == GSP_SUSPECT;
    }
    CHECK(seen_suspect);
    /* bound: a probe round over 4 peers (4 x 400 ms) + max suspicion
     * (7.2 s at N=5) + dissemination; generous 15 s */
    int t = run_until_all_see(4, GSP_DEAD, 15000);
    CHECK(t >= 0);
    gsp_stats st;
    gsp_core_stats(T[0].c, &st);
    CHECK(st.probes > 0);

    /* restart with a bumped generation: alive everywhere without a command
     * other than its own join to a seed */
    gsp_core_free(T[4].c);
    node_start(4, 2);
    gsp_core_join(T[4].c, NOW, &T[0].addr, 1);
    pump();
    CHECK(run_until_all_see(4, GSP_ALIVE, 5000) >= 0);
    gsp_member m;
    REQUIRE(gsp_core_get(T[0].c, &T[4].id, &m) == 0);
    CHECK_EQ_INT(m.inc.gen, 2);
    net_free();
}

static void test_restart_rejoins_via_seeds(void)
{
    /* a restarted node with only seeds configured (no explicit join) comes
     * back through the periodic re-join */
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    T[2].down = true;
    REQUIRE(run_until_all_see(2, GSP_DEAD, 20000) >= 0);
    gsp_core_free(T[2].c);
    node_start(2, 2);
    gsp_core_set_seeds(T[2].c, &T[0].addr, 1);
    CHECK(run_until_all_alive(15000) >= 0);
    net_free();
}

static void test_refute_suspicion(void)
{
    /* node 2 cannot hear anyone for a while (deaf): it is suspected, then
     * hears again before the suspicion expires and refutes */
    net_init(4, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    gsp_member before;
    REQUIRE(gsp_core_get(T[0].c, &T[2].id, &before) == 0);
    T[2].deaf = true;
    uint64_t end = NOW + 10000;
    bool suspected = false;
    while (NOW < end && !suspected) {
        step();
        suspected = state_of(0, 2) == GSP_SUSPECT || state_of(1, 2) == GSP_SUSPECT ||
                    state_of(3, 2) == GSP_SUSPECT;
    }
    REQUIRE(suspected);
    T[2].deaf = false;
    CHECK(run_until_all_alive(5000) >= 0);
    gsp_member after;
    REQUIRE(gsp_core_get(T[0].c, &T[2].id, &after) == 0);
    /* the refutation bumped the version, not the generation */
    CHECK_EQ_INT(after.inc.gen, before.inc.gen);
    CHECK(after.inc.ver > before.inc.ver);
    gsp_stats st;
    gsp_core_stats(T[2].c, &st);
    CHECK(st.refutations >= 1);
    CHECK(st.deaths_declared == 0);
    net_free();
}

static void test_dead_node_returns_by_refuting(void)
{
    /* a stall past the suspicion timeout (a SIGSTOP): declared dead; on
     * resume it learns it was declared dead and refutes */
    net_init(4, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    T[3].down = true; /* frozen: no ticks, nothing in or out */
    REQUIRE(run_until_all_see(3, GSP_DEAD, 20000) >= 0);
    T[3].down = false;
    CHECK(run_until_all_alive(8000) >= 0);
    gsp_member m;
    REQUIRE(gsp_core_get(T[0].c, &T[3].id, &m) == 0);
    CHECK_EQ_INT(m.inc.gen, 1); /* same life: it refuted */
    net_free();
}

static void test_graceful_leave(void)
{
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    gsp_core_leave(T[1].c, NOW);
    pump();
    int t = run_until_all_see(1, GSP_LEFT, 3000);
    CHECK(t >= 0);
    gsp_stats st;
    gsp_core_stats(T[0].c, &st);
    CHECK_EQ_INT(st.deaths_declared, 0);
    /* left is not dead: after a long while it stays left */
    T[1].down = true;
    for (int i = 0; i < 4000; i++) step();
    CHECK(state_of(0, 1) == GSP_LEFT);
    CHECK(state_of(2, 1) == GSP_LEFT);
    net_free();
}

static void test_meta_spreads_and_retransmit_limit(void)
{
    net_init(4, false);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 400; i++) step(); /* drain join chatter */
    REQUIRE(gsp_core_pending_updates(T[0].c) == 0);
    gsp_stats a, b;
    gsp_core_stats(T[0].c, &a);
    const uint8_t meta[] = "load=0.30";
    CHECK_EQ_INT(gsp_core_set_meta(T[0].c, NOW, meta, sizeof(meta)), 0);
    CHECK(gsp_core_pending_updates(T[0].c) == 1);
    for (int i = 0; i < 1000 && gsp_core_pending_updates(T[0].c); i++) step();
    CHECK_EQ_INT(gsp_core_pending_updates(T[0].c), 0);
    gsp_core_stats(T[0].c, &b);
    /* N=4: 4 * ceil(log10 5) = 4 transmissions of our own update, plus
     * at most a few re-broadcasts of other nodes' news */
    CHECK(b.updates_sent - a.updates_sent >= 4);
    for (int i = 1; i < NN; i++) {
        gsp_member m;
        REQUIRE(gsp_core_get(T[i].c, &T[0].id, &m) == 0);
        CHECK_EQ_INT(m.meta_len, sizeof(meta));
        CHECK(m.meta && !memcmp(m.meta, meta, sizeof(meta)));
    }
    uint8_t big[GSP_META_MAX + 1] = {0};
    CHECK_EQ_INT(gsp_core_set_meta(T[0].c, NOW, big, sizeof(big)), -E2BIG);
    net_free();
}

static int got_user;
static void on_user(void *ud, uint32_t key, uint64_t v, const uint8_t *d,
                    size_t len)
{
    if (key == 7 && v == 3 && len == 5 && !memcmp(d, "hello", 5)) got_user++;
}

static void test_user_broadcast(void)
{
    net_init(5, true);
    for (int i = 0; i < NN; i++) {
        gsp_core_free(T[i].c);
        gsp_config cfg;
        gsp_config_default(&cfg);
        gsp_callbacks cb = {.ud = &T[i], .user_msg = on_user};
        REQUIRE(gsp_core_new(&T[i].c, &cfg, &T[i].id, "u", &T[i].addr, 1,
                             T[i].kr, i, NOW, &cb) == 0);
    }
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    got_user = 0;
    CHECK_EQ_INT(gsp_core_broadcast(T[2].c, 7, 3, (const uint8_t *)"hello", 5), 0);
    CHECK_EQ_INT(gsp_core_broadcast(T[2].c, 7, 2, (const uint8_t *)"old", 3),
                 -EALREADY);
    for (int i = 0; i < 400 && got_user < 4; i++) step();
    CHECK_EQ_INT(got_user, 4); /* everyone but the sender, exactly once */
    for (int i = 0; i < 400; i++) step();
    CHECK_EQ_INT(got_user, 4);
    net_free();
}

/* ---- codec -------------------------------------------------------------- */

static void test_codec_ping_ack_roundtrip(void)
{
    net_init(2, false);
    join_all();
    REQUIRE(run_until_all_alive(3000) >= 0);
    for (int i = 0; i < 200; i++) step();
    /* run until node 0 emits a ping and decode it with protobuf-c */
    bool seen_ping = false;
    for (int i = 0; i < 400 && !seen_ping; i++) {
        NOW += STEP;
        if (gsp_core_next_deadline(T[0].c) <= NOW) gsp_core_tick(T[0].c, NOW);
        gsp_out o;
        while (gsp_core_pop_out(T[0].c, &o)) {
            if (o.kind == GSP_OUT_UDP) {
                Pmgcm__Gossip__Packet *p =
                    pmgcm__gossip__packet__unpack(NULL, o.len, o.data);
                if (p && p->ping) {
                    seen_ping = true;
                    CHECK(p->from.len == GSP_ID_LEN &&
                          !memcmp(p->from.data, T[0].id.b, GSP_ID_LEN));
                    CHECK(p->ping->target.len == GSP_ID_LEN &&
                          !memcmp(p->ping->target.data, T[1].id.b, GSP_ID_LEN));
                    /* node 1 answers with an ack of the same seq */
                    CHECK_EQ_INT(gsp_core_recv(T[1].c, NOW, &T[0].addr,
                                               o.data, o.len), 0);
                    gsp_out a;
                    bool acked = false;
                    while (gsp_core_pop_out(T[1].c, &a)) {
                        Pmgcm__Gossip__Packet *q =
                            pmgcm__gossip__packet__unpack(NULL, a.len, a.data);
                        if (q && q->ack && q->ack->seq == p->ping->seq)
                            acked = true;
                        if (q) pmgcm__gossip__packet__free_unpacked(q, NULL);
                        free(a.data);
                    }
                    CHECK(acked);
                }
                if (p) pmgcm__gossip__packet__free_unpacked(p, NULL);
            }
            free(o.data);
        }
    }
    CHECK(seen_ping);
    net_free();
}

/* ---- hostile input ------------------------------------------------------ */

typedef struct snap {
    gsp_id id[MAXN];
    gsp_state st[MAXN];
    gsp_inc inc[MAXN];
    int n;
} snap;

static int snap_fn(void *ud, const gsp_member *m)
{
    snap *s = ud;
    s->id[s->n] = m->id;
    s->st[s->n] = m->state;
    s->inc[s->n] = m->inc;
    s->n++;
    return s->n >= MAXN;
}

static bool snap_eq(const snap *a, const snap *b)
{
    if (a->n != b->n) return false;
    for (int i = 0; i < a->n; i++)
        if (memcmp(&a->id[i], &b->id[i], sizeof(gsp_id)) || a->st[i] != b->st[i] ||
            gsp_inc_cmp(a->inc[i], b->inc[i]))
            return false;
    return true;
}

static uint64_t xs = 88172645463325252ULL;
static uint64_t xr(void)
{
    xs ^= xs << 13;
    xs ^= xs >> 7;
    xs ^= xs << 17;
    return xs;
}

static void test_bad_input_dropped_and_counted(void)
{
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    /* capture a genuine sealed packet from node 1 to node 0 */
    uint8_t good[2048];
    size_t glen = 0;
    for (int i = 0; i < 2000 && !glen; i++) {
        NOW += STEP;
        if (gsp_core_next_deadline(T[1].c) <= NOW) gsp_core_tick(T[1].c, NOW);
        gsp_out o;
        while (gsp_core_pop_out(T[1].c, &o)) {
            if (!glen && o.kind == GSP_OUT_UDP && o.len <= sizeof(good) &&
                gsp_addr_eq(&o.addr, &T[0].addr)) {
                memcpy(good, o.data, o.len);
                glen = o.len;
            }
            free(o.data);
        }
    }
    REQUIRE(glen > GSP_SEAL_OVERHEAD);
    gsp_core *c = T[0].c;
    snap before = {0}, after = {0};
    gsp_core_foreach(c, snap_fn, &before);
    gsp_stats s0, s1;
    gsp_core_stats(c, &s0);
    int n_bad = 0;
    uint8_t buf[70000];

    /* every truncation */
    for (size_t l = 0; l < glen; l++) {
        int rc = gsp_core_recv(c, NOW, &T[1].addr, good, l);
        CHECK(rc == GSP_EDECRYPT);
        n_bad++;
    }
    /* every single-bit flip */
    for (size_t bit = 0; bit < glen * 8; bit++) {
        memcpy(buf, good, glen);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, glen) == GSP_EDECRYPT);
        n_bad++;
    }
    /* random garbage */
    for (int i = 0; i < 2000; i++) {
        size_t l = xr() % 1600; /* below the size bound */
        for (size_t k = 0; k < l; k++) buf[k] = (uint8_t)xr();
        CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, l) == GSP_EDECRYPT);
        n_bad++;
    }
    /* oversized */
    memset(buf, 0xAB, sizeof(buf));
    CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, sizeof(buf)) == GSP_ETOOBIG);
    /* a well-formed packet sealed under a foreign key */
    gsp_keyring *foreign = gsp_keyring_new("test");
    gsp_keyring_add(foreign, KEY2);
    uint8_t plain[64] = {0x0a, 0x10};
    memcpy(plain + 2, T[1].id.b, 16);
    size_t sl;
    REQUIRE(gsp_seal(foreign, plain, 18, buf, sizeof(buf), &sl) == 0);
    CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, sl) == GSP_EDECRYPT);
    /* the same under the right key but a different cluster label */
    gsp_keyring *other_label = gsp_keyring_new("other-cluster");
    gsp_keyring_add(other_label, KEY1);
    REQUIRE(gsp_seal(other_label, plain, 18, buf, sizeof(buf), &sl) == 0);
    CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, sl) == GSP_EDECRYPT);
    /* valid seal, garbage inside: decode error, not a crash */
    gsp_keyring *right = gsp_keyring_new("test");
    gsp_keyring_add(right, KEY1);
    int decode_bad = 0;
    for (int i = 0; i < 2000; i++) {
        size_t l = xr() % 600;
        for (size_t k = 0; k < l; k++) plain[k % 64] = (uint8_t)xr();
        uint8_t junk[700];
        for (size_t k = 0; k < l; k++) junk[k] = (uint8_t)xr();
        REQUIRE(gsp_seal(right, junk, l, buf, sizeof(buf), &sl) == 0);
        int rc = gsp_core_recv(c, NOW, &T[1].addr, buf, sl);
        CHECK(rc == GSP_EDECODE || rc == GSP_EMISDIRECTED || rc == 0);
        decode_bad += rc == GSP_EDECODE;
    }
    CHECK(decode_bad > 1500);
    /* a packet claiming to come from ourselves */
    Pmgcm__Gossip__Packet sp = PMGCM__GOSSIP__PACKET__INIT;
    sp.from.data = T[0].id.b;
    sp.from.len = GSP_ID_LEN;
    uint8_t pb[64];
    size_t pl = pmgcm__gossip__packet__pack(&sp, pb);
    REQUIRE(gsp_seal(right, pb, pl, buf, sizeof(buf), &sl) == 0);
    CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, sl) == GSP_ESELF);
    /* a bad stream frame */
    uint8_t *rep = (uint8_t *)1;
    size_t rl = 1;
    CHECK(gsp_core_stream_request(c, NOW, &T[1].addr, NULL, good, glen - 1,
                                  &rep, &rl) == GSP_EDECRYPT);
    CHECK(rep == NULL && rl == 0);

    gsp_core_stats(c, &s1);
    CHECK(s1.drop_decrypt - s0.drop_decrypt >= (uint64_t)n_bad + 3);
    CHECK_EQ_INT(s1.drop_toobig - s0.drop_toobig, 1);
    CHECK(s1.drop_decode - s0.drop_decode == (uint64_t)decode_bad);
    CHECK_EQ_INT(s1.drop_self - s0.drop_self, 1);
    gsp_core_foreach(c, snap_fn, &after);
    CHECK(snap_eq(&before, &after));
    /* and the genuine packet still works */
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, good, glen), 0);
    gsp_keyring_free(foreign);
    gsp_keyring_free(other_label);
    gsp_keyring_free(right);
    net_free();
}

/* ---- replay protection ---------------------------------------------------- */

/* First tapped item of kind k at or after index *from; -1 if none. */
static int tapped_next(gsp_out_kind k, int from)
{
    for (int i = from; i < TAPN; i++)
        if (TAPQ[i].kind == k) return i;
    return -1;
}

static uint64_t replays(int i)
{
    gsp_stats st;
    gsp_core_stats(T[i].c, &st);
    return st.drop_replay;
}

static void test_replayed_packet_dropped(void)
{
    /* datagrams node 1 sent node 0, recorded on the wire and sent again:
     * right after (duplicate) and later (older than the window) */
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    tap_reset(1, 0);
    while (tapped_next(GSP_OUT_UDP, 0) < 0) step();
    for (int i = 0; i < 4; i++) step(); /* delivered */
    TAP_SRC = -1;
    int k = tapped_next(GSP_OUT_UDP, 0);
    gsp_core *c = T[0].c;
    snap before = {0}, after = {0};
    gsp_core_foreach(c, snap_fn, &before);
    int changes = T[0].changes;
    uint64_t r0 = replays(0);
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[k].data,
                               TAPQ[k].len), GSP_EREPLAY);
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[k].data,
                               TAPQ[k].len), GSP_EREPLAY);
    CHECK_EQ_INT(replays(0) - r0, 2);
    /* a bit-flipped copy is no replay: it does not open */
    TAPQ[k].data[TAPQ[k].len / 2] ^= 4;
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[k].data,
                               TAPQ[k].len), GSP_EDECRYPT);
    TAPQ[k].data[TAPQ[k].len / 2] ^= 4;
    /* 60 s later: far older than the window */
    for (int i = 0; i < 12000; i++) step();
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[k].data,
                               TAPQ[k].len), GSP_EREPLAY);
    CHECK_EQ_INT(replays(0) - r0, 3);
    gsp_core_foreach(c, snap_fn, &after);
    CHECK(snap_eq(&before, &after));
    CHECK_EQ_INT(T[0].changes, changes);
    /* nothing genuine was taken for a replay */
    CHECK_EQ_INT(replays(1), 0);
    CHECK_EQ_INT(replays(2), 0);
    tap_reset(-1, -1);
    net_free();
}

static void test_replay_window_reorder(void)
{
    /* two datagrams from node 1 held back and delivered in reverse order:
     * both accepted (inside the window), each only once */
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    tap_reset(1, 0);
    T[0].deaf = true; /* the originals are lost; we deliver the copies */
    int a = -1, b = -1;
    while (b < 0 && TAPN < TAP_MAX) { /* two datagrams (not stream frames) */
        step();
        a = tapped_next(GSP_OUT_UDP, 0);
        b = a < 0 ? -1 : tapped_next(GSP_OUT_UDP, a + 1);
    }
    REQUIRE(b >= 0);
    T[0].deaf = false;
    TAP_SRC = -1;
    gsp_core *c = T[0].c;
    uint64_t r0 = replays(0);
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[b].data,
                               TAPQ[b].len), 0);
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[a].data,
                               TAPQ[a].len), 0);
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[a].data,
                               TAPQ[a].len), GSP_EREPLAY);
    CHECK_EQ_INT(gsp_core_recv(c, NOW, &T[1].addr, TAPQ[b].data,
                               TAPQ[b].len), GSP_EREPLAY);
    CHECK_EQ_INT(replays(0) - r0, 2);
    tap_reset(-1, -1);
    net_free();
}

static void test_replayed_stream_dropped(void)
{
    /* a push-pull request frame recorded and sent again on a new TCP
     * connection: no merge, no reply (which would carry our state) */
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    tap_reset(1, 0);
    gsp_core_join(T[1].c, NOW, &T[0].addr, 1); /* a push-pull to node 0 */
    pump();
    TAP_SRC = -1;
    int k = tapped_next(GSP_OUT_STREAM, 0);
    REQUIRE(k >= 0);
    uint8_t *rep = (uint8_t *)1;
    size_t rl = 1;
    uint64_t r0 = replays(0);
    CHECK_EQ_INT(gsp_core_stream_request(T[0].c, NOW, &T[1].addr,
                                         &T[0].addr, TAPQ[k].data,
                                         TAPQ[k].len, &rep, &rl),
                 GSP_EREPLAY);
    CHECK(rep == NULL && rl == 0);
    CHECK_EQ_INT(replays(0) - r0, 1);
    /* genuine stream traffic still flows */
    gsp_core_join(T[1].c, NOW, &T[0].addr, 1);
    pump();
    CHECK_EQ_INT(replays(0) - r0, 1);
    CHECK_EQ_INT(replays(1), 0);
    tap_reset(-1, -1);
    net_free();
}

static void test_restart_accepted_old_life_dropped(void)
{
    /* node 1 restarts (generation 2): accepted at once; datagrams of its
     * first life are dropped from then on */
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    tap_reset(1, 0);
    while (tapped_next(GSP_OUT_UDP, 0) < 0) step();
    for (int i = 0; i < 4; i++) step();
    TAP_SRC = -1;
    int k = tapped_next(GSP_OUT_UDP, 0);
    uint8_t old[2048];
    size_t old_len = TAPQ[k].len;
    REQUIRE(old_len <= sizeof(old));
    memcpy(old, TAPQ[k].data, old_len);
    tap_reset(-1, -1);

    gsp_core_free(T[1].c);
    node_start(1, 2);
    gsp_core_join(T[1].c, NOW, &T[0].addr, 1);
    pump(); /* the join push-pull: node 0 takes the new life at once */
    gsp_member m;
    REQUIRE(gsp_core_get(T[0].c, &T[1].id, &m) == 0);
    CHECK_EQ_INT(m.inc.gen, 2);
    CHECK(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 400; i++) step();
    CHECK_EQ_INT(replays(0), 0);
    CHECK_EQ_INT(replays(2), 0);
    CHECK_EQ_INT(gsp_core_recv(T[0].c, NOW, &T[1].addr, old, old_len),
                 GSP_EREPLAY);
    CHECK_EQ_INT(replays(0), 1);
    REQUIRE(gsp_core_get(T[0].c, &T[1].id, &m) == 0);
    CHECK_EQ_INT(m.inc.gen, 2);
    CHECK_EQ_INT(m.state, GSP_ALIVE);
    net_free();
}

static void test_generation_gone_backwards_recovers(void)
{
    /* node 1 ran as generation 5, then comes back as generation 2 (its data
     * dir restored from a backup): the others drop its datagrams as from an
     * earlier life until it refutes its own newer record, which moves it
     * to generation 6; then everyone sees it alive again */
    net_init(3, true);
    gsp_core_free(T[1].c);
    node_start(1, 5);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    gsp_core_free(T[1].c);
    node_start(1, 2);
    gsp_core_join(T[1].c, NOW, &T[0].addr, 1);
    pump();
    CHECK(replays(0) >= 1); /* its join push-pull was taken for a replay */
    CHECK(run_until_all_alive(30000) >= 0);
    for (int i = 0; i < 1000; i++) step();
    CHECK(all_alive());
    gsp_member m;
    REQUIRE(gsp_core_get(T[0].c, &T[1].id, &m) == 0);
    CHECK(m.inc.gen >= 6);
    REQUIRE(gsp_core_get(T[1].c, &T[1].id, &m) == 0);
    CHECK(m.inc.gen >= 6);
    net_free();
}


/* ---- receiver binding ------------------------------------------------------- */

static uint64_t misdirected(int i)
{
    gsp_stats st;
    gsp_core_stats(T[i].c, &st);
    return st.drop_misdirected;
}

static void test_cross_receiver_replay_dropped(void)
{
    /* datagrams node 1 sent node 0, recorded and sent to node 2 (which
     * knows node 1 and has never seen them): dropped as addressed to
     * another node, counted, nothing changes; then the same at node 0
     * itself is an ordinary replay */
    net_init(3, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    tap_reset(1, 0);
    while (TAPN < 6) step();
    for (int i = 0; i < 4; i++) step();
    TAP_SRC = -1;
    int n = 0;
    for (int k = 0; k < TAPN; k++) n += TAPQ[k].kind == GSP_OUT_UDP;
    REQUIRE(n >= 3);
    snap before = {0}, after = {0};
    gsp_core_foreach(T[2].c, snap_fn, &before);
    int changes = T[2].changes;
    uint64_t m0 = misdirected(2), r0 = replays(2);
    for (int k = 0; k < TAPN; k++) {
        if (TAPQ[k].kind != GSP_OUT_UDP) continue;
        CHECK_EQ_INT(gsp_core_recv(T[2].c, NOW, &T[1].addr, TAPQ[k].data,
                                   TAPQ[k].len), GSP_EMISDIRECTED);
    }
    CHECK_EQ_INT(misdirected(2) - m0, n);
    CHECK_EQ_INT(replays(2), r0); /* never reached the replay window */
    gsp_core_foreach(T[2].c, snap_fn, &after);
    CHECK(snap_eq(&before, &after));
    CHECK_EQ_INT(T[2].changes, changes);
    /* where they were sent, they are plain replays */
    int k = tapped_next(GSP_OUT_UDP, 0);
    CHECK_EQ_INT(gsp_core_recv(T[0].c, NOW, &T[1].addr, TAPQ[k].data,
                               TAPQ[k].len), GSP_EREPLAY);
    /* genuine traffic was never taken for misdirected */
    for (int i = 0; i < 400; i++) step();
    CHECK_EQ_INT(misdirected(0), 0);
    CHECK_EQ_INT(misdirected(1), 0);
    CHECK_EQ_INT(misdirected(2) - m0, n);
    CHECK(all_alive());
    tap_reset(-1, -1);
    net_free();
}

/* Takes node i's next stream request off its queue (not delivered). */
static bool pop_stream(int i, gsp_out *o)
{
    gsp_out x;
    bool got = false;
    while (gsp_core_pop_out(T[i].c, &x)) {
        if (!got && x.kind == GSP_OUT_STREAM) {
            *o = x;
            got = true;
        } else {
            free(x.data);
        }
    }
    return got;
}

static void test_cross_receiver_stream_dropped(void)
{
    /* TCP frames: a join push-pull node 1 sent node 0's address, and node
     * 0's reply to node 1, recorded and used elsewhere */
    net_init(4, true);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    gsp_out req, req2;
    REQUIRE(gsp_core_join(T[1].c, NOW, &T[0].addr, 1) == 0);
    REQUIRE(pop_stream(1, &req));
    /* node 2 is not at the address it was sent to: dropped, no reply */
    uint8_t *rep = (uint8_t *)1;
    size_t rl = 1;
    uint64_t m0 = misdirected(2);
    CHECK_EQ_INT(gsp_core_stream_request(T[2].c, NOW, &T[1].addr, &T[2].addr,
                                         req.data, req.len, &rep, &rl),
                 GSP_EMISDIRECTED);
    CHECK(rep == NULL && rl == 0);
    CHECK_EQ_INT(misdirected(2) - m0, 1);
    /* node 0 takes it (sent to its address) and answers node 1 */
    CHECK_EQ_INT(gsp_core_stream_request(T[0].c, NOW, &T[1].addr, &T[0].addr,
                                         req.data, req.len, &rep, &rl), 0);
    REQUIRE(rep != NULL);
    /* the reply, for node 1, sent to node 3 as a request: dropped */
    uint8_t *r2 = (uint8_t *)1;
    size_t rl2 = 1;
    uint64_t m3 = misdirected(3);
    CHECK_EQ_INT(gsp_core_stream_request(T[3].c, NOW, &T[0].addr, &T[3].addr,
                                         rep, rl, &r2, &rl2),
                 GSP_EMISDIRECTED);
    CHECK(r2 == NULL);
    /* ... or as the answer to node 3's own push-pull to node 0 (an
     * on-path attacker swapping replies): dropped */
    REQUIRE(gsp_core_join(T[3].c, NOW, &T[0].addr, 1) == 0);
    REQUIRE(pop_stream(3, &req2));
    CHECK_EQ_INT(gsp_core_stream_result(T[3].c, NOW, req2.req_id, true, rep,
                                        rl), GSP_EMISDIRECTED);
    CHECK_EQ_INT(misdirected(3) - m3, 2);
    /* node 1 itself takes it */
    CHECK_EQ_INT(gsp_core_stream_result(T[1].c, NOW, req.req_id, true, rep,
                                        rl), 0);
    free(rep);
    free(req.data);
    free(req2.data);
    CHECK_EQ_INT(misdirected(0), 0);
    CHECK_EQ_INT(misdirected(1), 0);
    net_free();
}

static void test_join_by_address_bound(void)
{
    /* a join to an address the receiver does not advertise (an alias of
     * the host): taken when the connection arrived on that address, not
     * when it came in elsewhere */
    net_init(2, true);
    gsp_addr alias;
    gsp_addr_parse(&alias, "10.9.9.9:7946", 7946);
    REQUIRE(gsp_core_join(T[1].c, NOW, &alias, 1) == 0);
    gsp_out req;
    REQUIRE(pop_stream(1, &req));
    uint8_t *rep = (uint8_t *)1;
    size_t rl = 1;
    CHECK_EQ_INT(gsp_core_stream_request(T[0].c, NOW, &T[1].addr, NULL,
                                         req.data, req.len, &rep, &rl),
                 GSP_EMISDIRECTED);
    CHECK_EQ_INT(gsp_core_stream_request(T[0].c, NOW, &T[1].addr,
                                         &T[0].addr, req.data, req.len,
                                         &rep, &rl), GSP_EMISDIRECTED);
    CHECK(rep == NULL);
    CHECK_EQ_INT(gsp_core_stream_request(T[0].c, NOW, &T[1].addr, &alias,
                                         req.data, req.len, &rep, &rl), 0);
    CHECK(rep != NULL);
    CHECK_EQ_INT(gsp_core_stream_result(T[1].c, NOW, req.req_id, true, rep,
                                        rl), 0);
    CHECK_EQ_INT(gsp_core_count(T[0].c, 1 << GSP_ALIVE), 2);
    CHECK_EQ_INT(gsp_core_count(T[1].c, 1 << GSP_ALIVE), 2);
    CHECK_EQ_INT(misdirected(0), 2);
    free(rep);
    free(req.data);
    net_free();
}

/* ---- who may ack -------------------------------------------------------------- */

static uint64_t acks_ignored(int i)
{
    gsp_stats st;
    gsp_core_stats(T[i].c, &st);
    return st.acks_ignored;
}

static uint64_t probe_fails(int i)
{
    gsp_stats st;
    gsp_core_stats(T[i].c, &st);
    return st.probe_fails;
}

/* A plaintext datagram from node `from` to node `to` that acks (or nacks)
 * seq; no replay counter (not checked). Delivered at once. */
static int forge_ack(int from, int to, uint32_t seq, bool nack)
{
    Pmgcm__Gossip__Packet p = PMGCM__GOSSIP__PACKET__INIT;
    Pmgcm__Gossip__Ack ack = PMGCM__GOSSIP__ACK__INIT;
    Pmgcm__Gossip__Nack nk = PMGCM__GOSSIP__NACK__INIT;
    p.from.data = T[from].id.b;
    p.from.len = GSP_ID_LEN;
    p.has_to = 1;
    p.to.data = T[to].id.b;
    p.to.len = GSP_ID_LEN;
    if (nack) {
        nk.seq = seq;
        p.nack = &nk;
    } else {
        ack.seq = seq;
        p.ack = &ack;
    }
    uint8_t buf[128];
    size_t len = pmgcm__gossip__packet__pack(&p, buf);
    return gsp_core_recv(T[to].c, NOW, &T[from].addr, buf, len);
}

/* Decodes tapped datagram k (plaintext). Caller frees. */
static Pmgcm__Gossip__Packet *tapped_pkt(int k)
{
    return pmgcm__gossip__packet__unpack(NULL, TAPQ[k].len, TAPQ[k].data);
}

/* Steps until node 0 pings node 1 directly; returns the probe's seq. */
static bool await_probe_of_1(uint32_t *seq)
{
    tap_reset(-1, -1);
    TAP_ALL = true;
    for (int i = 0; i < 2000; i++) {
        step();
        for (int k = 0; k < TAPN; k++) {
            if (TAPQ[k].src != 0 || TAPQ[k].dst != 1) continue;
            Pmgcm__Gossip__Packet *p = tapped_pkt(k);
            bool hit = p && p->ping && !p->ping->indirect;
            if (hit) *seq = p->ping->seq;
            if (p) pmgcm__gossip__packet__free_unpacked(p, NULL);
            if (hit) return true;
        }
        tap_reset(-1, -1);
        TAP_ALL = true;
    }
    return false;
}

/* Steps until node 0 asks a relay (PingReq for seq); returns its index. */
static int await_relay(uint32_t seq)
{
    for (int i = 0; i < 400; i++) {
        for (int k = 0; k < TAPN; k++) {
            if (TAPQ[k].src != 0) continue;
            Pmgcm__Gossip__Packet *p = tapped_pkt(k);
            int r = p && p->ping_req && p->ping_req->seq == seq ? TAPQ[k].dst
                                                                 : -1;
            if (p) pmgcm__gossip__packet__free_unpacked(p, NULL);
            if (r >= 0) return r;
        }
        step();
    }
    return -1;
}

static void test_forged_ack_ignored(void)
{
    /* node 1 is down; node 0 probes it. Acks for the probe's seq from a
     * third party (node 2 before anyone was asked to relay; the node not
     * asked once one was) change nothing: the probe fails */
    INDIRECT = 1;
    net_init(4, false);
    INDIRECT = 0;
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    T[1].down = true;
    uint32_t seq = 0;
    REQUIRE(await_probe_of_1(&seq));
    uint64_t f0 = probe_fails(0), i0 = acks_ignored(0);
    CHECK_EQ_INT(forge_ack(2, 0, seq, false), 0);
    CHECK_EQ_INT(forge_ack(3, 0, seq, false), 0);
    CHECK_EQ_INT(acks_ignored(0) - i0, 2);
    int relay = await_relay(seq);
    REQUIRE(relay == 2 || relay == 3);
    int other = relay == 2 ? 3 : 2;
    CHECK_EQ_INT(forge_ack(other, 0, seq, false), 0);
    CHECK_EQ_INT(forge_ack(other, 0, seq, true), 0); /* nor a nack */
    CHECK_EQ_INT(acks_ignored(0) - i0, 4);
    for (int i = 0; i < 200 && probe_fails(0) == f0; i++) step();
    CHECK_EQ_INT(probe_fails(0) - f0, 1);
    gsp_stats st;
    gsp_core_stats(T[0].c, &st);
    CHECK(st.suspicions >= 1);
    tap_reset(-1, -1);
    net_free();
}

static void test_relay_ack_only_when_asked(void)
{
    /* the same probe; the relay node 0 asked acks: that counts (the probe
     * succeeds although node 1 never answered node 0). And a relay
     * forwards an ack only from the node it was asked to ping. */
    INDIRECT = 1;
    net_init(4, false);
    INDIRECT = 0;
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 200; i++) step();
    T[1].down = true;
    uint32_t seq = 0;
    REQUIRE(await_probe_of_1(&seq));
    uint64_t f0 = probe_fails(0), i0 = acks_ignored(0);
    CHECK_EQ_INT(forge_ack(2, 0, seq, false), 0); /* nobody asked yet */
    CHECK_EQ_INT(acks_ignored(0) - i0, 1);
    int relay = await_relay(seq);
    REQUIRE(relay == 2 || relay == 3);
    int other = relay == 2 ? 3 : 2;
    /* the relay pings node 1 with a seq of its own; an ack for it from
     * anyone but node 1 is not forwarded */
    uint32_t rseq = 0;
    bool got = false;
    for (int i = 0; i < 20 && !got; i++) {
        for (int k = 0; k < TAPN && !got; k++) {
            if (TAPQ[k].src != relay || TAPQ[k].dst != 1) continue;
            Pmgcm__Gossip__Packet *p = tapped_pkt(k);
            if (p && p->ping && p->ping->indirect) {
                rseq = p->ping->seq;
                got = true;
            }
            if (p) pmgcm__gossip__packet__free_unpacked(p, NULL);
        }
        if (!got) step();
    }
    REQUIRE(got);
    uint64_t ri0 = acks_ignored(relay);
    CHECK_EQ_INT(forge_ack(other, relay, rseq, false), 0);
    CHECK_EQ_INT(acks_ignored(relay) - ri0, 1);
    /* the relay's own ack (as if node 1 had answered it) counts */
    CHECK_EQ_INT(forge_ack(relay, 0, seq, false), 0);
    CHECK_EQ_INT(acks_ignored(0) - i0, 1);
    /* the probe is over: it did not fail. Stepping on until node 0 pings
     * node 1 again (its next probe, or a verification had this one failed;
     * a fixed wait would also take in the next probe of the node still
     * down, and that one fails) */
    tap_reset(-1, -1);
    TAP_ALL = true;
    bool again = false;
    for (int i = 0; i < 400 && !again; i++) {
        step();
        for (int k = 0; k < TAPN && !again; k++) {
            if (TAPQ[k].src != 0 || TAPQ[k].dst != 1) continue;
            Pmgcm__Gossip__Packet *p = tapped_pkt(k);
            again = p && p->ping && !p->ping->indirect && p->ping->seq != seq;
            if (p) pmgcm__gossip__packet__free_unpacked(p, NULL);
        }
        if (!again) {
            tap_reset(-1, -1);
            TAP_ALL = true;
        }
    }
    CHECK(again);
    CHECK_EQ_INT(probe_fails(0), f0);
    tap_reset(-1, -1);
    net_free();
}

static void test_bad_records_never_change_membership(void)
{
    /* plaintext core: well-formed packets with invalid member records
     * (short ids, bad state, alive without address, oversize meta, control
     * characters in names) are rejected whole */
    net_init(2, false);
    join_all();
    REQUIRE(run_until_all_alive(3000) >= 0);
    gsp_core *c = T[0].c;
    snap before = {0}, after = {0};
    gsp_core_foreach(c, snap_fn, &before);
    uint8_t idb[GSP_ID_LEN], ip[4] = {10, 0, 0, 9}, bigmeta[GSP_META_MAX + 1];
    memset(idb, 0x55, sizeof(idb));
    memset(bigmeta, 0, sizeof(bigmeta));
    for (int variant = 0; variant < 6; variant++) {
        Pmgcm__Gossip__Member m = PMGCM__GOSSIP__MEMBER__INIT;
        m.id.data = idb;
        m.id.len = GSP_ID_LEN;
        m.state = GSP_ALIVE;
        m.gen = 9;
        m.has_ip = m.has_port = 1;
        m.ip.data = ip;
        m.ip.len = 4;
        m.port = 7946;
        m.name = (char *)"evil";
        switch (variant) {
        case 0: m.id.len = 15; break;
        case 1: m.state = 9; break;
        case 2: m.has_ip = m.has_port = 0; break;
        case 3: m.has_meta = 1; m.meta.data = bigmeta; m.meta.len = sizeof(bigmeta); break;
        case 4: m.name = (char *)"bad\nname"; break;
        case 5: m.port = 0; break;
        }
        Pmgcm__Gossip__Member *ms[1] = {&m};
        Pmgcm__Gossip__Packet p = PMGCM__GOSSIP__PACKET__INIT;
        p.from.data = T[1].id.b;
        p.from.len = GSP_ID_LEN;
        p.has_to = 1;
        p.to.data = T[0].id.b;
        p.to.len = GSP_ID_LEN;
        p.n_updates = 1;
        p.updates = ms;
        uint8_t buf[2048];
        size_t l = pmgcm__gossip__packet__pack(&p, buf);
        CHECK(gsp_core_recv(c, NOW, &T[1].addr, buf, l) == GSP_EDECODE);
    }
    gsp_core_foreach(c, snap_fn, &after);
    CHECK(snap_eq(&before, &after));
    net_free();
}

/* ---- the probe schedule ---------------------------------------------------- */

/* Every member is checked in every period (gossip/core.c, "the probe
 * schedule"): pinged, or pinging its partner; so a member's direct pings
 * (to it or from it) come at most P + P/S + probe_timeout apart (S =
 * ceil(n/2) slots per period), n odd and even; a node sends one or two
 * probes per period, or none (its partner's ping checked it). skew_ms:
 * node 0's clock is off by that much. */
static void schedule_run(int n, int64_t skew_ms)
{
    net_init(n, false);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 12000 / STEP; i++) step(); /* quiet: no failure */
    if (skew_ms)
        gsp_core_set_wallclock(T[0].c, NOW, (uint64_t)((int64_t)NOW + skew_ms));
    for (int i = 0; i < 1000 / STEP; i++) step();
    memset(PING_LAST, 0, sizeof(PING_LAST));
    memset(PING_GAP, 0, sizeof(PING_GAP));
    uint64_t probes0 = 0, probes1 = 0;
    for (int i = 0; i < n; i++) {
        gsp_stats st;
        gsp_core_stats(T[i].c, &st);
        probes0 += st.probes;
    }
    PING_WATCH = true;
    const uint64_t periods = 40, P = 600;
    for (uint64_t t = 0; t < periods * P / STEP; t++) step();
    PING_WATCH = false;
    uint64_t S = (uint64_t)(n + 1) / 2;
    uint64_t bound = P + P / S + 100 + 2 * STEP +
                     2 * (uint64_t)(skew_ms < 0 ? -skew_ms : skew_ms);
    for (int i = 0; i < n; i++) {
        gsp_stats st;
        gsp_core_stats(T[i].c, &st);
        probes1 += st.probes;
        CHECK(PING_LAST[i] != 0);
        CHECK(PING_GAP[i] <= bound);
        if (PING_GAP[i] > bound)
            fprintf(stderr, "# n=%d skew %lld: node %d pinged %llu ms apart "
                            "(bound %llu)\n", n, (long long)skew_ms, i,
                    (unsigned long long)PING_GAP[i],
                    (unsigned long long)bound);
    }
    /* a probe per pair and period at least, at most two per node */
    CHECK(probes1 - probes0 >= (periods - 1) * (uint64_t)n / 2);
    CHECK(probes1 - probes0 <= (periods + 1) * 2 * (uint64_t)n);
    CHECK(all_alive());
    net_free();
}

static void test_schedule_covers_every_period(void)
{
    schedule_run(5, 0);
    schedule_run(6, 0);
    schedule_run(8, 0);
    schedule_run(6, 30); /* NTP-sized error: the slots move, no more */
}

/* A clock far off (or stepped back an hour) takes slots at other times:
 * that node still probes once per period, nobody stops probing. */
static void test_schedule_clock_far_off(void)
{
    net_init(5, false);
    join_all();
    REQUIRE(run_until_all_alive(5000) >= 0);
    for (int i = 0; i < 2000 / STEP; i++) step();
    gsp_core_set_wallclock(T[1].c, NOW, NOW - 3600000); /* stepped back */
    gsp_core_set_wallclock(T[2].c, NOW, NOW + 7777);
    gsp_stats a[5], b[5];
    for (int i = 0; i < 5; i++) gsp_core_stats(T[i].c, &a[i]);
    for (int i = 0; i < 6000 / STEP; i++) step();
    for (int i = 0; i < 5; i++) {
        gsp_core_stats(T[i].c, &b[i]);
        /* 10 periods of 600 ms: a probe in some of them (a node whose
         * partner pings first probes nobody), at most two in each */
        CHECK(b[i].probes - a[i].probes >= 3);
        CHECK(b[i].probes - a[i].probes <= 22);
    }
    CHECK(all_alive());
    net_free();
}

int main(void)
{
    TAP_RUN(test_incarnation_order);
    TAP_RUN(test_retransmit_limit);
    TAP_RUN(test_suspicion_timeout);
    TAP_RUN(test_suspicion_bounds_scale_with_n);
    TAP_RUN(test_join_all_alive);
    TAP_RUN(test_crash_suspect_dead_restart);
    TAP_RUN(test_restart_rejoins_via_seeds);
    TAP_RUN(test_refute_suspicion);
    TAP_RUN(test_dead_node_returns_by_refuting);
    TAP_RUN(test_graceful_leave);
    TAP_RUN(test_meta_spreads_and_retransmit_limit);
    TAP_RUN(test_user_broadcast);
    TAP_RUN(test_codec_ping_ack_roundtrip);
    TAP_RUN(test_bad_input_dropped_and_counted);
    TAP_RUN(test_bad_records_never_change_membership);
    TAP_RUN(test_replayed_packet_dropped);
    TAP_RUN(test_replay_window_reorder);
    TAP_RUN(test_replayed_stream_dropped);
    TAP_RUN(test_restart_accepted_old_life_dropped);
    TAP_RUN(test_generation_gone_backwards_recovers);
    TAP_RUN(test_cross_receiver_replay_dropped);
    TAP_RUN(test_cross_receiver_stream_dropped);
    TAP_RUN(test_join_by_address_bound);
    TAP_RUN(test_forged_ack_ignored);
    TAP_RUN(test_relay_ack_only_when_asked);
    TAP_RUN(test_schedule_covers_every_period);
    TAP_RUN(test_schedule_clock_far_off);
    return tap_done();
}
