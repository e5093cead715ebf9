/*
 * core.c - the sans-IO SWIM core with Lifeguard extensions.
 *
 * Time and packets go in (gsp_core_recv, gsp_core_stream_*, gsp_core_tick);
 * packets, stream requests and the next deadline come out (gsp_core_pop_out,
 * gsp_core_next_deadline). No clock is read and no socket is touched here.
 *
 * Wire: a UDP packet is one Packet message. The header part (sender id and
 * at most one of ping/ack/ping_req/nack) is packed with protobuf-c; queued
 * updates are kept pre-packed and appended as raw `repeated` fields, which
 * protobuf defines as equivalent to one message with all fields.
 *
 * Replay protection: every Packet and Stream we send carries (gen, seq): our
 * incarnation generation and a counter per channel (datagrams, stream
 * frames). Per member and channel we keep a replay window (rwin): the
 * highest (gen, seq) accepted and a bitmap of the 64 seqs below it. Input
 * whose (gen, seq) is lower than the window, older than it or already in it
 * is dropped (drop_replay) before anything in it is looked at.
 *
 * Receiver binding: every Packet and Stream we send names its receiver
 * (`to`, its id; a join push-pull to a seed address names the address
 * dialled instead). Input for another node is dropped (drop_misdirected)
 * first of all, so a packet is accepted only where it was sent. An ack
 * counts only from the node probed or a relay we asked (probe.relays).
 */
#include "gossip/gossip.h"
#include "gossip/gossip.pb-c.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RELAY_MAX 64
#define USER_KEYS_MAX 1024
#define QUEUE_MAX 8192
#define OUTQ_MAX 65536
#define SUSP_FROM_MAX 16
#define GOSSIP_TO_DEAD_MS 30000
#define UDP_SLACK 256
#define RELAYS_ASKED_MAX 16 /* indirect_checks above this ask this many */

typedef Pmgcm__Gossip__Member PbMember;
typedef Pmgcm__Gossip__UserMsg PbUser;
typedef Pmgcm__Gossip__Packet PbPacket;
typedef Pmgcm__Gossip__Stream PbStream;

/* Replay window: top = highest seq accepted under gen (0 = none yet); bit i
 * of bits set = seq top - i accepted. */
#define RWIN_BITS 64
typedef struct rwin {
    uint64_t gen, top, bits;
} rwin;

/* An immutable alive record: a member's name, address and metadata, and
 * the packed Member (state alive, incarnation inc) that announces them.
 * Reference counted by members and queued broadcasts. With a pool
 * (gsp_pool) one copy is shared by every core of the process that holds
 * it: the simulator's N cores would otherwise keep N copies each. */
typedef struct arec arec;
struct arec {
    arec *next;     /* pool chain */
    gsp_pool *pool; /* NULL: private to one core */
    uint32_t refs;
    uint32_t hash;
    gsp_inc inc;
    gsp_addr addr;
    uint16_t meta_len, pk_len;
    uint8_t name_len;
    uint8_t data[]; /* name, NUL, meta, packed Member */
};
#define AREC_NAME(r) ((const char *)(r)->data)
#define AREC_META(r) ((r)->data + (r)->name_len + 1)
#define AREC_PK(r) ((r)->data + (r)->name_len + 1 + (r)->meta_len)

/* Bump allocator for decoding one datagram or stream frame (protobuf-c
 * allocates every submessage): freed at once after it. The first block is
 * kept for the next one; more are chained while a big frame needs them.
 * Owned by the core, or by the pool its cores share (one thread). */
#define SCRATCH_CAP 65536
typedef struct sblock sblock;
struct sblock {
    sblock *next;
    size_t cap, used;
    max_align_t data[];
};
typedef struct scratch {
    sblock *head, *cur;
    bool busy;
} scratch;

struct gsp_pool {
    arec **ht; /* chained on next; cap a power of two */
    size_t cap, n, bytes;
    scratch sc;
};

/* A member record, kept compact: the simulator holds N^2 of them. */
typedef struct member {
    gsp_id id;
    gsp_inc inc;
    uint64_t state_since;
    arec *rec;     /* name, address, metadata; never NULL */
    rwin rw_udp;   /* replay window for its datagrams */
    rwin *rw_tcp;  /* ... for its stream frames (made at the first one) */
    uint32_t slot; /* index in the slab */
    uint32_t si;   /* index in c->susp while suspect */
    uint32_t pi;   /* position in c->ring while in_ring */
    uint8_t state;
    bool is_self;
    bool in_ring;  /* in c->ring (alive or suspect at its last rebuild) */
} member;

/* Suspicion of one member (while it is suspect). */
typedef struct susp {
    member *m;
    uint64_t start, deadline, min, max;
    uint32_t k, confirms, n_from;
    gsp_id from[SUSP_FROM_MAX];
} susp;

#define MCHUNK 256 /* members per slab chunk: addresses never move */
typedef struct hslot {
    uint32_t tag;  /* high bits of the id hash */
    uint32_t slot; /* slab index + 1; 0 = empty */
} hslot;

/* Broadcast queue (as memberlist's transmit-limited queue): entries sit in
 * one list per transmit count, so a packet is filled by walking the lists
 * from 0 transmits up (newest first at 0), never by sorting the queue; a
 * hash on the subject (member id or user key) finds the entry a newer
 * update replaces. */
#define BQ_BUCKETS 64 /* transmit counts; the retransmit limit is capped here */
#ifndef NEWS_LIMIT
#define NEWS_LIMIT 4
#endif
typedef struct bcast bcast;
struct bcast {
    bcast *prev, *next; /* list of its transmit count */
    bcast *hnext;       /* hash chain */
    bcast *mnext;       /* packet being built: entries that went into it */
    arec *rec;          /* a member's alive record (shared), or NULL */
    gsp_id id;          /* member updates: about whom */
    uint32_t key;       /* user broadcasts: key */
    uint32_t len;
    uint32_t pkt;       /* serial of the last packet it went into */
    uint16_t transmits;
    bool is_user;
    bool news;          /* announces a member new to us (see bq_heard) */
    uint8_t buf[];      /* packed Member / UserMsg, unless rec */
};
#define BC_DATA(b) ((b)->rec ? AREC_PK((b)->rec) : (b)->buf)

typedef struct bqueue {
    bcast *head[BQ_BUCKETS], *tail[BQ_BUCKETS];
    bcast **ht; /* chained on hnext, ht_cap a power of two */
    size_t ht_cap;
    size_t n;
    size_t n_news;  /* entries with news set */
    bool settled;   /* the last news entry retired (see news_settled) */
} bqueue;

typedef struct relay {
    bool used;
    uint32_t my_seq, their_seq;
    gsp_addr requester;
    gsp_id requester_id; /* who asked: our ack/nack goes to it alone */
    gsp_id target;       /* whom we ping: only its ack is forwarded */
    uint64_t deadline;
} relay;

typedef struct user_rec {
    uint32_t key;
    uint64_t version;
    uint8_t *data;
    size_t len;
} user_rec;

#define PS_FULL 1   /* join: full state both ways */
#define PS_PING 2   /* TCP fallback probe */
#define PS_DIGEST 3 /* periodic push-pull by digest */
#define PS_PUSH 4   /* second half of a digest push-pull */
typedef struct pending_stream {
    uint64_t id;
    int kind;         /* PS_* */
    uint32_t seq;     /* PS_PING: the probe */
    uint32_t buckets; /* PS_DIGEST: the summary's bucket count */
    gsp_addr addr;    /* the peer */
    bool has_peer;    /* sent to a known member: the reply must be its */
    gsp_id peer;
} pending_stream;

struct gsp_core {
    gsp_config cfg;
    gsp_callbacks cb;
    gsp_keyring *kr;
    member *self;
    bool leaving;

    gsp_pool *pool;  /* shared records, or NULL */
    scratch own_sc; /* decode scratch without a pool */
    scratch *st_sc; /* the open stream frame's scratch (or NULL) */
    ProtobufCAllocator st_al;

    member **chunks; /* slab of member records */
    size_t n_chunks, slab_used;
    uint32_t *slab_free;
    size_t n_free, cap_free;
    member **members;
    size_t n_members, cap_members;
    hslot *ht;
    size_t ht_cap;
    size_t n_by_state[4];

    /* The probe ring (see "the probe schedule"): members alive or
     * suspect, self included, in the order of a hash of their id; rebuilt
     * lazily when ring_dirty (at most once per probe). */
    member **ring;
    size_t ring_n, ring_cap;
    bool ring_dirty;
    int64_t wall_off; /* wall clock - core clock, ms (gsp_core_set_wallclock) */
    struct {
        bool valid;
        gsp_id target;
        uint64_t at;   /* core time it is due */
        int64_t wall;  /* its wall time */
        uint32_t period; /* the period it was computed with */
    } sched;           /* our next slot of the schedule */
    int64_t last_slot; /* wall time - wall_off of the last slot probed */
    bool slot_done;    /* last_slot is set */

    susp *susp;
    size_t n_susp, cap_susp;

    uint64_t rng;
    uint32_t seq;
    uint32_t awareness;

    struct {
        bool active, indirect_sent;
        uint32_t seq;
        gsp_id target;
        uint64_t start, direct_deadline, end_deadline;
        uint32_t nacks_expected, nacks;
        gsp_id relays[RELAYS_ASKED_MAX]; /* asked to ping for us */
        uint32_t n_relays;
    } probe;
    /* A failed probe of a member we hold alive is verified before it
     * becomes a suspicion: direct pings for one more probe interval, and
     * a late ack of the probe counts. */
    struct {
        bool active, second_sent;
        uint32_t seq, probe_seq;
        gsp_id target;
        uint64_t failed_at, second_at, deadline;
        gsp_id relays[RELAYS_ASKED_MAX]; /* the failed probe's relays: */
        uint32_t n_relays;               /* their late acks count too */
    } verify;
    uint64_t tight_until; /* probe at probe_interval_ms until then */
    uint64_t sync_late;   /* a push-pull due then (0: none), see settled */
    bool prio_set;        /* probe prio next: a suspicion we heard of */
    gsp_id prio;

    uint64_t next_probe, next_gossip, next_pushpull, next_rejoin, next_reap;
    uint32_t alone_backoff_ms; /* re-join backoff while nobody is alive */
    uint64_t now;

    bqueue mq, uq;
    uint64_t pkt_serial; /* packets built by send_packet */
    uint64_t tx_seq_udp, tx_seq_tcp; /* replay counters we send (last used) */

    relay relays[RELAY_MAX];
    user_rec *users;
    size_t n_users, cap_users;
    gsp_addr *seeds;
    size_t n_seeds;

    pending_stream *streams;
    size_t n_streams, cap_streams;
    uint64_t next_req_id;

    gsp_out *outq;
    size_t out_head, out_n, out_cap;

    uint8_t *pkt;   /* plaintext packet scratch, packet_size bytes */
    uint8_t *rxbuf; /* decrypted datagram scratch */
    size_t rx_cap;

    gsp_stats st;
};

/* ---- small helpers ------------------------------------------------------ */

const char *gsp_state_name(gsp_state s)
{
    switch (s) {
    case GSP_ALIVE: return "alive";
    case GSP_SUSPECT: return "suspect";
    case GSP_DEAD: return "dead";
    case GSP_LEFT: return "left";
    }
    return "unknown";
}

int gsp_inc_cmp(gsp_inc a, gsp_inc b)
{
    if (a.gen != b.gen) return a.gen < b.gen ? -1 : 1;
    if (a.ver != b.ver) return a.ver < b.ver ? -1 : 1;
    return 0;
}

void gsp_config_default(gsp_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->probe_interval_ms = 200;
    cfg->probe_timeout_ms = 100;
    cfg->probe_quiet_interval_ms = 600;
    cfg->indirect_checks = 3;
    cfg->suspicion_mult = 3;
    cfg->suspicion_max_mult = 6;
    cfg->retransmit_mult = 4;
    cfg->gossip_interval_ms = 200;
    cfg->gossip_nodes = 3;
    cfg->pushpull_interval_ms = 30000;
    cfg->rejoin_interval_ms = 10000;
    cfg->awareness_max = 8;
    cfg->reap_dead_ms = 0;
    cfg->reap_left_ms = 0;
    cfg->packet_size = 1400;
    cfg->user_share_pct = 25;
    cfg->max_stream_bytes = 4u << 20;
}

/* libm is not linked into the daemon (its pages cost an idle daemon about
 * 0.5 MB of memory for four functions): integer logarithms where the
 * formulas round anyway, and a natural logarithm from the IEEE-754 bits
 * and the atanh series, good to 1e-15, where they do not. */
static uint32_t ceil_log10(uint64_t n) /* smallest d with 10^d >= n */
{
    uint32_t d = 0;
    for (uint64_t p = 1; p < n && d < 19; p *= 10) d++;
    return d;
}

static uint32_t ceil_log2(uint64_t n) /* smallest d with 2^d >= n */
{
    uint32_t d = 0;
    while (d < 63 && (1ULL << d) < n) d++;
    return d;
}

static double ln(double x) /* x >= 1, finite */
{
    uint64_t b;
    double m;
    memcpy(&b, &x, sizeof(b));
    int e = (int)((b >> 52) & 0x7ff) - 1022; /* x = m 2^e, m in [0.5, 1) */
    b = (b & ~(0x7ffULL << 52)) | (1022ULL << 52);
    memcpy(&m, &b, sizeof(m));
    if (m < 0.70710678118654752440) { /* m in [1/sqrt 2, sqrt 2): exact */
        m *= 2;                         /* for powers of two */
        e--;
    }
    double z = (m - 1) / (m + 1), z2 = z * z, t = z, s = 0;
    for (int i = 1; i < 40; i += 2) {
        s += t / i;
        t *= z2;
    }
    return 2 * s + e * 0.693147180559945309417;
}

uint32_t gsp_retransmit_limit(uint32_t mult, size_t n)
{
    uint32_t l = ceil_log10((uint64_t)n + 1);
    return mult * (l < 1 ? 1 : l);
}

uint64_t gsp_suspicion_timeout(uint64_t min_ms, uint64_t max_ms,
                               uint32_t k, uint32_t confirms)
{
    if (k < 1 || max_ms <= min_ms) return min_ms;
    double frac = ln((double)confirms + 1.0) / ln((double)k + 1.0);
    double t = (double)max_ms - frac * (double)(max_ms - min_ms);
    if (t < (double)min_ms) t = (double)min_ms;
    return (uint64_t)t; /* >= 0: truncation is floor */
}

static uint64_t rnd(gsp_core *c)
{
    /* splitmix64 */
    uint64_t z = (c->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(gsp_core *c, uint64_t n)
{
    return n ? rnd(c) % n : 0;
}

static bool id_eq(const gsp_id *a, const gsp_id *b)
{
    return memcmp(a->b, b->b, GSP_ID_LEN) == 0;
}

static size_t id_hash(const gsp_id *id)
{
    uint64_t h;
    memcpy(&h, id->b, 8);
    uint64_t h2;
    memcpy(&h2, id->b + 8, 8);
    h ^= h2 * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    return (size_t)h;
}

static size_t live_count(const gsp_core *c)
{
    return c->n_by_state[GSP_ALIVE] + c->n_by_state[GSP_SUSPECT];
}

static uint32_t scale(const gsp_core *c, uint32_t ms)
{
    return ms * (c->awareness + 1);
}

static void awareness_add(gsp_core *c, int delta)
{
    int a = (int)c->awareness + delta;
    int max = c->cfg.awareness_max ? (int)c->cfg.awareness_max - 1 : 0;
    if (a < 0) a = 0;
    if (a > max) a = max;
    c->awareness = (uint32_t)a;
}

/* ---- replay windows ----------------------------------------------------- */

/* Would (gen, seq) be a replay for window w? A member we hold no window for
 * (w NULL or empty) accepts anything: first contact. */
static bool rwin_replayed(const rwin *w, uint64_t gen, uint64_t seq)
{
    if (!w || !w->top) return false;
    if (gen != w->gen) return gen < w->gen; /* a newer life starts afresh */
    if (seq > w->top) return false;
    if (w->top - seq >= RWIN_BITS) return true;
    return (w->bits >> (w->top - seq)) & 1;
}

/* Records an accepted (gen, seq). */
static void rwin_mark(rwin *w, uint64_t gen, uint64_t seq)
{
    if (!seq) return;
    if (!w->top || gen > w->gen) {
        w->gen = gen;
        w->top = seq;
        w->bits = 1;
    } else if (gen == w->gen) {
        if (seq > w->top) {
            uint64_t d = seq - w->top;
            w->bits = d >= RWIN_BITS ? 1 : (w->bits << d) | 1;
            w->top = seq;
        } else if (w->top - seq < RWIN_BITS) {
            w->bits |= 1ULL << (w->top - seq);
        }
    }
}

/* Sets from, gen, seq and the receiver on a Stream frame we are about to
 * send: to_id when we know who it is for, else to_addr (a join by address).
 * The pointers must stay valid until the frame is packed. */
static void stamp_stream(gsp_core *c, PbStream *s, const gsp_id *to_id,
                         const gsp_addr *to_addr)
{
    s->from.data = c->self->id.b;
    s->from.len = GSP_ID_LEN;
    s->has_gen = 1;
    s->gen = c->self->inc.gen;
    s->has_seq = 1;
    s->seq = ++c->tx_seq_tcp;
    if (to_id) {
        s->has_to = 1;
        s->to.data = (uint8_t *)to_id->b;
        s->to.len = GSP_ID_LEN;
    } else if (to_addr) {
        s->has_to_ip = 1;
        s->to_ip.data = (uint8_t *)to_addr->ip;
        s->to_ip.len = to_addr->family == 6 ? 16 : 4;
        s->has_to_port = 1;
        s->to_port = to_addr->port;
    }
}

/* The same address, an IPv4-mapped IPv6 address equal to its IPv4 form. */
static bool addr_same(const gsp_addr *a, const gsp_addr *b)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                       0xff, 0xff};
    gsp_addr x = *a, y = *b;
    if (x.family == 6 && !memcmp(x.ip, mapped, 12)) {
        x.family = 4;
        memmove(x.ip, x.ip + 12, 4);
    }
    if (y.family == 6 && !memcmp(y.ip, mapped, 12)) {
        y.family = 4;
        memmove(y.ip, y.ip + 12, 4);
    }
    return gsp_addr_eq(&x, &y);
}

/* ---- alive records and the pool ------------------------------------------ */

static uint32_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return (uint32_t)(h ^ (h >> 32));
}

static void sc_release(scratch *sc);

gsp_pool *gsp_pool_new(void)
{
    gsp_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->cap = 1024;
    p->ht = calloc(p->cap, sizeof(*p->ht));
    if (!p->ht) {
        free(p);
        return NULL;
    }
    return p;
}

void gsp_pool_free(gsp_pool *p)
{
    if (!p) return;
    /* every core is gone, so every record is too; free leftovers anyway */
    for (size_t i = 0; i < p->cap; i++) {
        for (arec *r = p->ht[i], *nx; r; r = nx) {
            nx = r->next;
            free(r);
        }
    }
    free(p->ht);
    sc_release(&p->sc);
    free(p);
}

void gsp_pool_stats(const gsp_pool *p, size_t *records, size_t *bytes)
{
    if (records) *records = p ? p->n : 0;
    if (bytes) *bytes = p ? p->bytes : 0;
}

static void pool_add(gsp_pool *p, arec *r)
{
    if (p->n + 1 > p->cap) {
        size_t cap = p->cap * 2;
        arec **ht = calloc(cap, sizeof(*ht));
        if (ht) {
            for (size_t i = 0; i < p->cap; i++) {
                for (arec *x = p->ht[i], *nx; x; x = nx) {
                    nx = x->next;
                    x->next = ht[x->hash & (cap - 1)];
                    ht[x->hash & (cap - 1)] = x;
                }
            }
            free(p->ht);
            p->ht = ht;
            p->cap = cap;
        }
    }
    r->pool = p;
    r->next = p->ht[r->hash & (p->cap - 1)];
    p->ht[r->hash & (p->cap - 1)] = r;
    p->n++;
    p->bytes += sizeof(*r) + r->name_len + 1 + r->meta_len + r->pk_len;
}

static arec *pool_find(gsp_pool *p, uint32_t hash, const uint8_t *pk,
                       size_t len)
{
    for (arec *r = p->ht[hash & (p->cap - 1)]; r; r = r->next)
        if (r->hash == hash && r->pk_len == len && !memcmp(AREC_PK(r), pk, len))
            return r;
    return NULL;
}

static void arec_unref(arec *r)
{
    if (!r || --r->refs) return;
    gsp_pool *p = r->pool;
    if (p) {
        arec **pp = &p->ht[r->hash & (p->cap - 1)];
        while (*pp != r) pp = &(*pp)->next;
        *pp = r->next;
        p->n--;
        p->bytes -= sizeof(*r) + r->name_len + 1 + r->meta_len + r->pk_len;
    }
    free(r);
}

static void addr_to_pb(const gsp_addr *a, PbMember *pm);

/* Makes m->rec the record of m at its incarnation with these attributes
 * (found in the pool, or made). name and meta may point into the old
 * record. 0 or -ENOMEM (m->rec unchanged). */
static int member_set_rec(gsp_core *c, member *m, const gsp_addr *addr,
                          const char *name, const uint8_t *meta,
                          size_t meta_len)
{
    PbMember pm;
    pmgcm__gossip__member__init(&pm);
    pm.id.data = m->id.b;
    pm.id.len = GSP_ID_LEN;
    pm.state = GSP_ALIVE;
    pm.gen = m->inc.gen;
    pm.ver = m->inc.ver;
    pm.name = (char *)name;
    if (addr->family) addr_to_pb(addr, &pm);
    if (meta_len) {
        pm.has_meta = 1;
        pm.meta.data = (uint8_t *)meta;
        pm.meta.len = meta_len;
    }
    size_t pk = pmgcm__gossip__member__get_packed_size(&pm);
    uint8_t stack[1024];
    uint8_t *tmp = pk <= sizeof(stack) ? stack : malloc(pk);
    if (!tmp) return -ENOMEM;
    pmgcm__gossip__member__pack(&pm, tmp);
    uint32_t h = hash_bytes(tmp, pk);
    arec *r = c->pool ? pool_find(c->pool, h, tmp, pk) : NULL;
    if (r) {
        r->refs++;
    } else {
        size_t nl = strlen(name);
        r = malloc(sizeof(*r) + nl + 1 + meta_len + pk);
        if (!r) {
            if (tmp != stack) free(tmp);
            return -ENOMEM;
        }
        r->next = NULL;
        r->pool = NULL;
        r->refs = 1;
        r->hash = h;
        r->inc = m->inc;
        r->addr = *addr;
        r->name_len = (uint8_t)nl;
        r->meta_len = (uint16_t)meta_len;
        r->pk_len = (uint16_t)pk;
        memcpy(r->data, name, nl + 1);
        if (meta_len) memcpy(r->data + nl + 1, meta, meta_len);
        memcpy(r->data + nl + 1 + meta_len, tmp, pk);
        if (c->pool) pool_add(c->pool, r);
    }
    if (tmp != stack) free(tmp);
    arec_unref(m->rec);
    m->rec = r;
    return 0;
}

/* m->rec at m's current incarnation (a suspicion or death at a higher
 * incarnation moves m->inc without new attributes). */
static int member_rec_current(gsp_core *c, member *m)
{
    arec *r = m->rec;
    if (gsp_inc_cmp(r->inc, m->inc) == 0) return 0;
    return member_set_rec(c, m, &r->addr, AREC_NAME(r), AREC_META(r),
                          r->meta_len);
}

static const gsp_addr *maddr(const member *m)
{
    return &m->rec->addr;
}

/* ---- decode scratch ------------------------------------------------------ */

static sblock *sblock_new(size_t cap)
{
    sblock *b = malloc(sizeof(*b) + cap);
    if (b) {
        b->next = NULL;
        b->cap = cap;
        b->used = 0;
    }
    return b;
}

static void *sc_alloc(void *ud, size_t size)
{
    scratch *sc = ud;
    size = (size + 15) & ~(size_t)15;
    sblock *b = sc->cur;
    if (size > b->cap - b->used) {
        sblock *n = sblock_new(size > SCRATCH_CAP ? size : SCRATCH_CAP);
        if (!n) return NULL;
        b->next = n;
        sc->cur = b = n;
    }
    void *p = (uint8_t *)b->data + b->used;
    b->used += size;
    return p;
}

static void sc_free(void *ud, void *p)
{
    (void)ud;
    (void)p; /* everything goes at once in sc_give */
}

/* Takes the scratch arena for one decode: it and *a set, or NULL (use the
 * default allocator) when it is busy or cannot be made. */
static scratch *sc_take(gsp_core *c, ProtobufCAllocator *a)
{
    scratch *sc = c->pool ? &c->pool->sc : &c->own_sc;
    if (sc->busy) return NULL;
    if (!sc->head && !(sc->head = sblock_new(SCRATCH_CAP))) return NULL;
    sc->busy = true;
    sc->head->used = 0;
    sc->cur = sc->head;
    a->alloc = sc_alloc;
    a->free = sc_free;
    a->allocator_data = sc;
    return sc;
}

static void sc_give(scratch *sc)
{
    if (!sc) return;
    for (sblock *b = sc->head->next, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    sc->head->next = NULL;
    sc->busy = false;
}

static void sc_release(scratch *sc)
{
    if (sc->head) sc_give(sc);
    free(sc->head);
    sc->head = NULL;
}

/* ---- member table ------------------------------------------------------- */

static member *slab_at(const gsp_core *c, uint32_t slot)
{
    return &c->chunks[slot / MCHUNK][slot % MCHUNK];
}

static uint32_t id_tag(const gsp_id *id)
{
    return (uint32_t)((uint64_t)id_hash(id) >> 32);
}

static member *find(const gsp_core *c, const gsp_id *id)
{
    if (!c->ht_cap) return NULL;
    size_t mask = c->ht_cap - 1;
    uint32_t tag = id_tag(id);
    for (size_t i = id_hash(id) & mask;; i = (i + 1) & mask) {
        const hslot *h = &c->ht[i];
        if (!h->slot) return NULL;
        if (h->tag == tag) {
            member *m = slab_at(c, h->slot - 1);
            if (id_eq(&m->id, id)) return m;
        }
    }
}

static void ht_put(hslot *ht, size_t cap, const member *m)
{
    size_t i = id_hash(&m->id) & (cap - 1);
    while (ht[i].slot) i = (i + 1) & (cap - 1);
    ht[i].tag = id_tag(&m->id);
    ht[i].slot = m->slot + 1;
}

/* Load kept at most 0.7 (linear probing). */
static int ht_rebuild(gsp_core *c, size_t want)
{
    size_t cap = 16;
    while (cap * 7 < want * 10) cap <<= 1;
    hslot *ht = calloc(cap, sizeof(*ht));
    if (!ht) return -ENOMEM;
    for (size_t j = 0; j < c->n_members; j++) ht_put(ht, cap, c->members[j]);
    free(c->ht);
    c->ht = ht;
    c->ht_cap = cap;
    return 0;
}

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need) n *= 2;
    void *p = realloc(*v, n * elem);
    if (!p) return -ENOMEM;
    *v = p;
    *cap = n;
    return 0;
}

static member *slab_get(gsp_core *c)
{
    uint32_t slot;
    if (c->n_free) {
        slot = c->slab_free[--c->n_free];
    } else {
        if (c->slab_used == c->n_chunks * MCHUNK) {
            member **ch = realloc(c->chunks, (c->n_chunks + 1) * sizeof(*ch));
            if (!ch) return NULL;
            c->chunks = ch;
            if (!(ch[c->n_chunks] = malloc(MCHUNK * sizeof(member))))
                return NULL;
            c->n_chunks++;
        }
        slot = (uint32_t)c->slab_used++;
    }
    member *m = slab_at(c, slot);
    memset(m, 0, sizeof(*m));
    m->slot = slot;
    return m;
}

static void slab_put(gsp_core *c, member *m)
{
    if (grow((void **)&c->slab_free, &c->cap_free, c->n_free + 1,
             sizeof(*c->slab_free)) == 0)
        c->slab_free[c->n_free++] = m->slot;
}

static susp *susp_of(gsp_core *c, const member *m)
{
    return &c->susp[m->si];
}

static void susp_remove(gsp_core *c, member *m)
{
    size_t i = m->si;
    if (i >= c->n_susp || c->susp[i].m != m) return;
    c->susp[i] = c->susp[--c->n_susp];
    if (i < c->n_susp) c->susp[i].m->si = (uint32_t)i;
}

static bool is_live(int s)
{
    return s == GSP_ALIVE || s == GSP_SUSPECT;
}

static void set_state(gsp_core *c, member *m, gsp_state s)
{
    if (m->state == s) return;
    if (is_live(m->state) != is_live(s)) c->ring_dirty = true;
    if (m->state == GSP_SUSPECT) susp_remove(c, m);
    if (s == GSP_SUSPECT) {
        if (grow((void **)&c->susp, &c->cap_susp, c->n_susp + 1,
                 sizeof(*c->susp)))
            return; /* stays as it is: nothing to time out without memory */
        memset(&c->susp[c->n_susp], 0, sizeof(*c->susp));
        c->susp[c->n_susp].m = m;
        m->si = (uint32_t)c->n_susp++;
    }
    c->n_by_state[m->state]--;
    c->n_by_state[s]++;
    m->state = (uint8_t)s;
    m->state_since = c->now;
}

/* Adds a member (alive, dead or left: never suspect) with its record. */
static member *add_member(gsp_core *c, const gsp_id *id, gsp_state s,
                          gsp_inc inc, const gsp_addr *addr, const char *name,
                          const uint8_t *meta, size_t meta_len)
{
    if (s == GSP_SUSPECT) s = GSP_ALIVE;
    if (grow((void **)&c->members, &c->cap_members, c->n_members + 1,
             sizeof(*c->members)))
        return NULL;
    if (grow((void **)&c->ring, &c->ring_cap, c->n_members + 1,
             sizeof(*c->ring)))
        return NULL;
    if ((c->n_members + 1) * 10 > c->ht_cap * 7 &&
        ht_rebuild(c, c->n_members + 1))
        return NULL;
    member *m = slab_get(c);
    if (!m) return NULL;
    m->id = *id;
    m->inc = inc;
    if (member_set_rec(c, m, addr, name, meta, meta_len)) {
        slab_put(c, m);
        return NULL;
    }
    m->state = (uint8_t)s;
    m->state_since = c->now;
    c->members[c->n_members++] = m;
    c->n_by_state[s]++;
    ht_put(c->ht, c->ht_cap, m);
    m->in_ring = false;
    if (is_live(s)) c->ring_dirty = true;
    return m;
}

static void member_release(member *m)
{
    arec_unref(m->rec);
    m->rec = NULL;
    free(m->rw_tcp);
    m->rw_tcp = NULL;
}

static void remove_member(gsp_core *c, member *m)
{
    if (m->state == GSP_SUSPECT) susp_remove(c, m);
    c->n_by_state[m->state]--;
    for (size_t i = 0; i < c->n_members; i++) {
        if (c->members[i] == m) {
            c->members[i] = c->members[--c->n_members];
            break;
        }
    }
    if (m->in_ring) {
        /* a hole until the next rebuild (the ring holds no freed record) */
        c->ring[m->pi] = NULL;
        c->ring_dirty = true;
    }
    member_release(m);
    slab_put(c, m);
    ht_rebuild(c, c->n_members ? c->n_members : 1);
}

static void to_view(const member *m, gsp_member *v)
{
    memset(v, 0, sizeof(*v));
    v->id = m->id;
    memcpy(v->name, AREC_NAME(m->rec), m->rec->name_len + 1);
    v->addr = m->rec->addr;
    v->inc = m->inc;
    v->state = (gsp_state)m->state;
    v->state_since_ms = m->state_since;
    v->meta = m->rec->meta_len ? AREC_META(m->rec) : NULL;
    v->meta_len = m->rec->meta_len;
    v->is_self = m->is_self;
}

static void notify(gsp_core *c, member *m, gsp_state old, bool is_new)
{
    if (!c->cb.member_changed) return;
    gsp_member v;
    to_view(m, &v);
    c->cb.member_changed(c->cb.ud, &v, old, is_new);
}

/* ---- output queue ------------------------------------------------------- */

static void out_push(gsp_core *c, gsp_out *o)
{
    if (c->out_n == c->out_cap) {
        if (c->out_cap >= OUTQ_MAX) {
            free(o->data);
            c->st.drop_other++;
            return;
        }
        size_t ncap = c->out_cap ? c->out_cap * 2 : 64;
        gsp_out *q = malloc(ncap * sizeof(*q));
        if (!q) {
            free(o->data);
            return;
        }
        for (size_t i = 0; i < c->out_n; i++)
            q[i] = c->outq[(c->out_head + i) % c->out_cap];
        free(c->outq);
        c->outq = q;
        c->out_head = 0;
        c->out_cap = ncap;
    }
    c->outq[(c->out_head + c->out_n) % c->out_cap] = *o;
    c->out_n++;
}

int gsp_core_pop_out(gsp_core *c, gsp_out *out)
{
    if (!c->out_n) return 0;
    *out = c->outq[c->out_head];
    c->out_head = (c->out_head + 1) % c->out_cap;
    c->out_n--;
    return 1;
}

/* Seals (when a keyring is set) and queues plaintext p as a datagram/frame. */
static int emit(gsp_core *c, gsp_out_kind kind, const gsp_addr *to,
                const uint8_t *p, size_t len, uint64_t req_id,
                uint32_t timeout_ms)
{
    gsp_out o = {.kind = kind, .addr = *to, .req_id = req_id,
                 .timeout_ms = timeout_ms};
    size_t cap = len + GSP_SEAL_OVERHEAD;
    o.data = malloc(cap ? cap : 1);
    if (!o.data) return -ENOMEM;
    if (c->kr) {
        int rc = gsp_seal(c->kr, p, len, o.data, cap, &o.len);
        if (rc) {
            free(o.data);
            return rc;
        }
    } else {
        memcpy(o.data, p, len);
        o.len = len;
    }
    if (kind == GSP_OUT_UDP) {
        c->st.udp_out++;
        c->st.bytes_out += o.len;
    } else {
        c->st.streams_out++;
        c->st.bytes_out += o.len;
    }
    out_push(c, &o);
    return 0;
}

/* ---- encoding ----------------------------------------------------------- */

static size_t varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t put_varint(uint8_t *p, size_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static size_t field_len(size_t len)
{
    return 1 + varint_len(len) + len;
}

/* Appends a length-delimited field (tag < 16). Caller checked the room. */
static size_t put_field(uint8_t *p, unsigned tag, const uint8_t *d, size_t len)
{
    size_t n = 0;
    p[n++] = (uint8_t)((tag << 3) | 2);
    n += put_varint(p + n, len);
    memcpy(p + n, d, len);
    return n + len;
}

static void addr_to_pb(const gsp_addr *a, PbMember *pm)
{
    pm->has_ip = 1;
    pm->ip.data = (uint8_t *)a->ip;
    pm->ip.len = a->family == 6 ? 16 : 4;
    pm->has_port = 1;
    pm->port = a->port;
}

/* Fills pm describing m in state s (full: name/addr/meta too). */
static void member_to_pb(const member *m, gsp_state s, const gsp_id *from,
                         bool full, PbMember *pm)
{
    pmgcm__gossip__member__init(pm);
    pm->id.data = (uint8_t *)m->id.b;
    pm->id.len = GSP_ID_LEN;
    pm->state = s;
    pm->gen = m->inc.gen;
    pm->ver = m->inc.ver;
    if (full || s == GSP_ALIVE) {
        const arec *r = m->rec;
        pm->name = (char *)AREC_NAME(r);
        if (r->addr.family) addr_to_pb(&r->addr, pm);
        if (r->meta_len) {
            pm->has_meta = 1;
            pm->meta.data = (uint8_t *)AREC_META(r);
            pm->meta.len = r->meta_len;
        }
    }
    if (from) {
        pm->has_from = 1;
        pm->from.data = (uint8_t *)from->b;
        pm->from.len = GSP_ID_LEN;
    }
}

/* ---- broadcast queues --------------------------------------------------- */

static size_t bq_hash(bool is_user, const gsp_id *id, uint32_t key)
{
    return is_user ? (size_t)(key * 0x9e3779b97f4a7c15ULL >> 17) : id_hash(id);
}

static bool bq_same(const bcast *b, bool is_user, const gsp_id *id,
                    uint32_t key)
{
    return b->is_user == is_user &&
           (is_user ? b->key == key : id_eq(&b->id, id));
}

static void bq_link(bqueue *q, bcast *b, bool at_head)
{
    uint32_t t = b->transmits;
    if (at_head) {
        b->prev = NULL;
        b->next = q->head[t];
        if (q->head[t]) q->head[t]->prev = b;
        else q->tail[t] = b;
        q->head[t] = b;
    } else {
        b->next = NULL;
        b->prev = q->tail[t];
        if (q->tail[t]) q->tail[t]->next = b;
        else q->head[t] = b;
        q->tail[t] = b;
    }
}

static void bq_unlink(bqueue *q, bcast *b)
{
    uint32_t t = b->transmits;
    if (b->prev) b->prev->next = b->next;
    else q->head[t] = b->next;
    if (b->next) b->next->prev = b->prev;
    else q->tail[t] = b->prev;
    b->prev = b->next = NULL;
}

/* Drops an entry that is in no list any more. */
static void bq_forget(bqueue *q, bcast *b)
{
    bcast **pp = &q->ht[bq_hash(b->is_user, &b->id, b->key) & (q->ht_cap - 1)];
    while (*pp != b) pp = &(*pp)->hnext;
    *pp = b->hnext;
    q->n--;
    if (b->news && --q->n_news == 0) q->settled = true;
    arec_unref(b->rec);
    free(b);
}

/* A join wave grows the table to the number of members; an empty queue
 * gives it back (the simulator's N cores would hold N of them). Not from
 * bq_forget: bq_push removes an entry and goes on with the table. */
static void bq_shrink(bqueue *q)
{
    if (q->n || q->ht_cap <= 64) return;
    free(q->ht);
    q->ht = NULL;
    q->ht_cap = 0;
}

static void bq_remove(bqueue *q, bcast *b)
{
    bq_unlink(q, b);
    bq_forget(q, b);
}

static int bq_ht_grow(bqueue *q)
{
    size_t cap = q->ht_cap ? q->ht_cap * 2 : 64;
    bcast **ht = calloc(cap, sizeof(*ht));
    if (!ht) return -ENOMEM;
    for (size_t i = 0; i < q->ht_cap; i++) {
        for (bcast *b = q->ht[i], *nx; b; b = nx) {
            nx = b->hnext;
            size_t h = bq_hash(b->is_user, &b->id, b->key) & (cap - 1);
            b->hnext = ht[h];
            ht[h] = b;
        }
    }
    free(q->ht);
    q->ht = ht;
    q->ht_cap = cap;
    return 0;
}

static void bq_clear(bqueue *q)
{
    for (int t = 0; t < BQ_BUCKETS; t++) {
        for (bcast *b = q->head[t], *nx; b; b = nx) {
            nx = b->next;
            arec_unref(b->rec);
            free(b);
        }
        q->head[t] = q->tail[t] = NULL;
    }
    free(q->ht);
    q->ht = NULL;
    q->ht_cap = 0;
    q->n = 0;
    q->n_news = 0;
}

/* Queues a packed record at 0 transmits, ahead of older ones: rec's (a
 * reference is taken) or buf (copied). The newest about a node (or key)
 * replaces the older. */
static bcast *bq_push(bqueue *q, bool is_user, const gsp_id *id,
                      uint32_t key, arec *rec, const uint8_t *buf, size_t len)
{
    if ((q->n + 1) * 2 > q->ht_cap && bq_ht_grow(q)) return NULL;
    size_t h = bq_hash(is_user, id, key) & (q->ht_cap - 1);
    for (bcast *b = q->ht[h]; b; b = b->hnext) {
        if (bq_same(b, is_user, id, key)) {
            bq_remove(q, b);
            break;
        }
    }
    if (q->n >= QUEUE_MAX) {
        /* drop the most transmitted (oldest on ties) */
        for (int t = BQ_BUCKETS - 1; t >= 0; t--) {
            if (q->tail[t]) {
                bq_remove(q, q->tail[t]);
                break;
            }
        }
    }
    bcast *b = calloc(1, sizeof(*b) + (rec ? 0 : len));
    if (!b) return NULL;
    b->is_user = is_user;
    if (id) b->id = *id;
    b->key = key;
    if (rec) {
        rec->refs++;
        b->rec = rec;
        b->len = rec->pk_len;
    } else {
        b->len = (uint32_t)len;
        memcpy(b->buf, buf, len);
    }
    b->hnext = q->ht[h];
    q->ht[h] = b;
    q->n++;
    bq_link(q, b, true);
    return b;
}

static bcast *queue_member(gsp_core *c, member *m, gsp_state s,
                           const gsp_id *from)
{
    if (s == GSP_ALIVE && !from) {
        /* the shared record is exactly this update */
        if (member_rec_current(c, m)) return NULL;
        return bq_push(&c->mq, false, &m->id, 0, m->rec, NULL, 0);
    }
    PbMember pm;
    member_to_pb(m, s, from, false, &pm);
    size_t len = pmgcm__gossip__member__get_packed_size(&pm);
    uint8_t stackbuf[1024];
    uint8_t *buf = len <= sizeof(stackbuf) ? stackbuf : malloc(len);
    if (!buf) return NULL;
    pmgcm__gossip__member__pack(&pm, buf);
    bcast *b = bq_push(&c->mq, false, &m->id, 0, NULL, buf, len);
    if (buf != stackbuf) free(buf);
    return b;
}

static uint32_t bq_limit(const gsp_core *c)
{
    uint32_t limit = gsp_retransmit_limit(c->cfg.retransmit_mult,
                                          live_count(c));
    return limit > BQ_BUCKETS ? BQ_BUCKETS : limit ? limit : 1;
}

/* We heard the update we are spreading about a new member from someone
 * else: it is spreading without us too, so that counts as one of our
 * transmissions (rumor mongering with feedback). A mass join would
 * otherwise cost every node limit sends of every joiner's record, N^2
 * log N records in all; what this drops is left to push-pull, whose
 * digest exchange is cheap. Only joins: refutations, suspicions, deaths
 * and user broadcasts keep their whole budget. */
static void bq_heard(gsp_core *c, const gsp_id *id)
{
    bqueue *q = &c->mq;
    if (!q->ht_cap) return;
    bcast *b = q->ht[bq_hash(false, id, 0) & (q->ht_cap - 1)];
    while (b && !bq_same(b, false, id, 0)) b = b->hnext;
    if (!b || !b->news) return;
    bq_unlink(q, b);
    if (++b->transmits >= bq_limit(c)) bq_forget(q, b);
    else bq_link(q, b, false);
}

/* Appends queued items (fewest transmits first, newest first among those
 * never sent) into p while they fit in *room; returns bytes written. Walks
 * the per-count lists in order and stops once the packet is (nearly)
 * full, so a packet costs O(what it carries), not O(queue). */
static size_t fill(gsp_core *c, bqueue *q, unsigned tag, uint8_t *p,
                   size_t room)
{
    if (!q->n) bq_shrink(q);
    if (!q->n || room < 3) return 0;
    uint32_t limit = bq_limit(c);
    size_t used = 0;
    unsigned misses = 0;
    bcast *moved = NULL, **mtail = &moved;
    for (uint32_t t = 0; t < limit && room - used >= 3 && misses < 8; t++) {
        for (bcast *b = q->head[t]; b && room - used >= 3; b = b->next) {
            if (b->pkt == (uint32_t)c->pkt_serial) continue;
            size_t fl = field_len(b->len);
            if (fl > room - used) {
                if (++misses >= 8) break; /* the rest will not fit either */
                continue;
            }
            used += put_field(p + used, tag, BC_DATA(b), b->len);
            /* once per packet: uq is filled twice */
            b->pkt = (uint32_t)c->pkt_serial;
            c->st.updates_sent++;
            b->mnext = NULL;
            *mtail = b;
            mtail = &b->mnext;
        }
    }
    /* sent entries move up one count (to the back of it), or retire */
    for (bcast *b = moved, *nx; b; b = nx) {
        nx = b->mnext;
        bq_unlink(q, b);
        if (++b->transmits >= (b->news && limit > NEWS_LIMIT ? NEWS_LIMIT : limit))
            bq_forget(q, b);
        else bq_link(q, b, false);
    }
    /* the limit shrinks when members leave: retire what passed it */
    for (uint32_t t = limit; t < BQ_BUCKETS; t++)
        while (q->head[t]) bq_remove(q, q->head[t]);
    bq_shrink(q);
    return used;
}

/* Builds and sends one UDP packet to node to_id at address to: header
 * message + piggybacked updates. extra, if set, is a member record that
 * goes first (buddy / refutation). */
static void send_packet(gsp_core *c, const gsp_addr *to, const gsp_id *to_id,
                        PbPacket *hdr, const PbMember *extra)
{
    hdr->from.data = c->self->id.b;
    hdr->from.len = GSP_ID_LEN;
    hdr->has_to = 1;
    hdr->to.data = (uint8_t *)to_id->b;
    hdr->to.len = GSP_ID_LEN;
    hdr->has_gen = 1;
    hdr->gen = c->self->inc.gen;
    hdr->has_seq = 1;
    hdr->seq = ++c->tx_seq_udp;
    size_t cap = c->cfg.packet_size;
    size_t hlen = pmgcm__gossip__packet__get_packed_size(hdr);
    if (hlen > cap) return;
    uint8_t *p = c->pkt;
    size_t n = pmgcm__gossip__packet__pack(hdr, p);
    if (extra) {
        size_t el = pmgcm__gossip__member__get_packed_size(extra);
        if (field_len(el) <= cap - n) {
            p[n++] = (6 << 3) | 2;
            n += put_varint(p + n, el);
            n += pmgcm__gossip__member__pack(extra, p + n);
        }
    }
    size_t room = cap - n;
    size_t ushare = room * c->cfg.user_share_pct / 100;
    c->pkt_serial++;
    n += fill(c, &c->uq, 7, p + n, ushare);
    n += fill(c, &c->mq, 6, p + n, cap - n);
    n += fill(c, &c->uq, 7, p + n, cap - n);
    emit(c, GSP_OUT_UDP, to, p, n, 0, 0);
}

/* ---- state transitions -------------------------------------------------- */

typedef struct upd {
    gsp_id id;
    gsp_state state;
    gsp_inc inc;
    const char *name;
    bool has_addr;
    gsp_addr addr;
    const uint8_t *meta;
    size_t meta_len;
    bool has_meta;
    bool has_from;
    gsp_id from;
    uint64_t since; /* suspect: the timer runs from here (0: now) */
} upd;

static void tighten(gsp_core *c);
static void gossip_soon(gsp_core *c);

static void refute(gsp_core *c, gsp_inc accused)
{
    member *s = c->self;
    if (gsp_inc_cmp(accused, s->inc) > 0) {
        /* newer than anything this life said: a record of an earlier life
         * whose generation we lost (a restored data dir). Start a new
         * generation above it, which also starts new replay windows (the
         * others hold that life's seqs under its gen, which ours would
         * repeat). */
        s->inc.gen = accused.gen + 1;
        s->inc.ver = 0;
    } else {
        s->inc.ver++;
    }
    c->st.refutations++;
    awareness_add(c, 1);
    queue_member(c, s, GSP_ALIVE, NULL);
    gossip_soon(c);
}

static void suspicion_update_deadline(susp *sp)
{
    sp->deadline = sp->start + gsp_suspicion_timeout(sp->min, sp->max, sp->k,
                                                     sp->confirms);
}

void gsp_core_suspicion_bounds(const gsp_core *c, uint64_t *min_ms,
                               uint64_t *max_ms)
{
    double n = (double)live_count(c);
    double f = n > 1 ? ln(n) / 2.30258509299404568402 : 0; /* log10 */
    if (f < 1) f = 1;
    uint64_t mn = (uint64_t)(c->cfg.suspicion_mult * f *
                             c->cfg.probe_interval_ms);
    if (min_ms) *min_ms = mn;
    if (max_ms) *max_ms = mn * c->cfg.suspicion_max_mult;
}

static void start_suspicion(gsp_core *c, member *m, const gsp_id *from,
                            uint64_t since)
{
    susp *sp = susp_of(c, m);
    gsp_core_suspicion_bounds(c, &sp->min, &sp->max);
    size_t n = live_count(c);
    uint32_t k = c->cfg.suspicion_mult > 2 ? c->cfg.suspicion_mult - 2 : 0;
    if (n < 2 + (size_t)k) k = n > 2 ? (uint32_t)(n - 2) : 0;
    sp->k = k;
    sp->confirms = 0;
    sp->start = since && since < c->now ? since : c->now;
    sp->n_from = 0;
    if (from) sp->from[sp->n_from++] = *from;
    suspicion_update_deadline(sp);
}

/* quiet: a member we learn of from a push-pull is not gossiped on (the
 * exchange itself is anti-entropy; a joiner that re-gossiped the alive
 * records of all N members it learned would flood the cluster with N
 * records per join). News about members we know is still gossiped. */
static void on_alive(gsp_core *c, const upd *u, bool quiet)
{
    member *m = find(c, &u->id);
    if (m && m->is_self) {
        /* someone claims a newer life of ours: a stale record from before a
         * restart that lost our generation; out-bid it */
        if (!c->leaving && gsp_inc_cmp(u->inc, m->inc) > 0) refute(c, u->inc);
        return;
    }
    if (!u->has_addr) return;
    if (!m) {
        m = add_member(c, &u->id, GSP_ALIVE, u->inc, &u->addr,
                       u->name ? u->name : "", u->has_meta ? u->meta : NULL,
                       u->has_meta ? u->meta_len : 0);
        if (!m) return;
        if (!quiet) {
            bcast *b = queue_member(c, m, GSP_ALIVE, NULL);
            if (b) {
                b->news = true;
                c->mq.n_news++;
            }
        }
        notify(c, m, GSP_ALIVE, true);
        return;
    }
    if (gsp_inc_cmp(u->inc, m->inc) == 0 && m->state == GSP_ALIVE)
        bq_heard(c, &m->id);
    if (gsp_inc_cmp(u->inc, m->inc) <= 0) return;
    gsp_state old = (gsp_state)m->state;
    gsp_inc prev = m->inc;
    const arec *r = m->rec;
    m->inc = u->inc;
    if (member_set_rec(c, m, &u->addr, u->name ? u->name : AREC_NAME(r),
                       u->has_meta ? u->meta : AREC_META(r),
                       u->has_meta ? u->meta_len : r->meta_len)) {
        m->inc = prev;
        return;
    }
    set_state(c, m, GSP_ALIVE);
    queue_member(c, m, GSP_ALIVE, NULL);
    notify(c, m, old, false);
}

static void on_suspect(gsp_core *c, const upd *u)
{
    member *m = find(c, &u->id);
    if (!m) return;
    if (gsp_inc_cmp(u->inc, m->inc) < 0) return;
    if (m->is_self) {
        if (!c->leaving) refute(c, u->inc);
        return;
    }
    if (m->state == GSP_DEAD || m->state == GSP_LEFT) return;
    const gsp_id *from = u->has_from ? &u->from : NULL;
    if (m->state == GSP_SUSPECT && gsp_inc_cmp(u->inc, m->inc) > 0) {
        /* it refuted the suspicion we hold (we missed that) and is suspected
         * again: a new suspicion with a fresh timer, not a confirmation that
         * would shrink the old timer into the past */
        m->inc = u->inc;
        start_suspicion(c, m, from, u->since);
        c->st.suspicions++;
        queue_member(c, m, GSP_SUSPECT, from ? from : &c->self->id);
        return;
    }
    if (m->state == GSP_SUSPECT) {
        if (!from) return;
        susp *sp = susp_of(c, m);
        for (uint32_t i = 0; i < sp->n_from; i++)
            if (id_eq(&sp->from[i], from)) return;
        if (sp->n_from < SUSP_FROM_MAX) sp->from[sp->n_from++] = *from;
        if (sp->confirms < sp->k) {
            sp->confirms++;
            suspicion_update_deadline(sp);
        }
        queue_member(c, m, GSP_SUSPECT, from);
        return;
    }
    gsp_state old = (gsp_state)m->state;
    set_state(c, m, GSP_SUSPECT);
    if (m->state != GSP_SUSPECT) return; /* no memory for the timer */
    m->inc = u->inc;
    start_suspicion(c, m, from, u->since);
    c->st.suspicions++;
    queue_member(c, m, GSP_SUSPECT, from ? from : &c->self->id);
    if (from && !id_eq(from, &c->self->id)) {
        /* somebody else's failed probe: probe at full pace, and some of
         * us (about twice indirect_checks of the cluster, so that nobody
         * checking is rare: e^-6) check it at once; our ping carries the
         * suspicion (buddy), so a live suspect refutes within a round
         * trip, and a dead one is confirmed (without a confirmation the
         * timer runs to its maximum) */
        tighten(c);
        size_t n = live_count(c), want = 2 * (size_t)c->cfg.indirect_checks;
        if (n <= 2 + want || rnd_below(c, n - 2) < want) {
            c->prio_set = true;
            c->prio = m->id;
            if (!c->probe.active && c->next_probe > c->now)
                c->next_probe = c->now;
        }
    }
    notify(c, m, old, false);
}

static void on_dead(gsp_core *c, const upd *u)
{
    member *m = find(c, &u->id);
    if (!m) return;
    if (gsp_inc_cmp(u->inc, m->inc) < 0) return;
    if (m->state == GSP_DEAD || m->state == GSP_LEFT) return;
    if (m->is_self) {
        if (!c->leaving) refute(c, u->inc);
        return;
    }
    bool left = u->state == GSP_LEFT && u->has_from && id_eq(&u->from, &u->id);
    gsp_state old = (gsp_state)m->state;
    m->inc = u->inc;
    set_state(c, m, left ? GSP_LEFT : GSP_DEAD);
    queue_member(c, m, (gsp_state)m->state,
                 u->has_from ? &u->from : &c->self->id);
    gossip_soon(c);
    if (!left) tighten(c);
    notify(c, m, old, false);
}

/* A dead or left record from a push-pull about a node we never heard of:
 * remember it so `status` shows it (it is not probed). */
static void insert_gone(gsp_core *c, const upd *u)
{
    if (!u->has_addr || find(c, &u->id)) return;
    member *m = add_member(c, &u->id, u->state, u->inc, &u->addr,
                           u->name ? u->name : "",
                           u->has_meta ? u->meta : NULL,
                           u->has_meta ? u->meta_len : 0);
    if (!m) return;
    notify(c, m, u->state, true);
}

/* ---- validation of decoded messages ------------------------------------- */

static bool printable(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char ch = (unsigned char)s[n];
        if (n >= max || ch < 0x20 || ch > 0x7e) return false;
    }
    return true;
}

static int pb_addr(const ProtobufCBinaryData *ip, uint32_t port, gsp_addr *a)
{
    if ((ip->len != 4 && ip->len != 16) || port == 0 || port > 65535)
        return -1;
    memset(a, 0, sizeof(*a));
    a->family = ip->len == 4 ? 4 : 6;
    memcpy(a->ip, ip->data, ip->len);
    a->port = (uint16_t)port;
    return 0;
}

static int pb_to_upd(const PbMember *pm, upd *u)
{
    memset(u, 0, sizeof(*u));
    if (pm->id.len != GSP_ID_LEN || pm->state > GSP_LEFT) return -1;
    memcpy(u->id.b, pm->id.data, GSP_ID_LEN);
    u->state = (gsp_state)pm->state;
    u->inc.gen = pm->gen;
    u->inc.ver = pm->ver;
    if (pm->name) {
        if (!printable(pm->name, GSP_NAME_MAX)) return -1;
        u->name = pm->name;
    }
    if (pm->has_ip || pm->has_port) {
        if (!pm->has_ip || !pm->has_port ||
            pb_addr(&pm->ip, pm->port, &u->addr))
            return -1;
        u->has_addr = true;
    }
    if (pm->has_meta) {
        if (pm->meta.len > GSP_META_MAX) return -1;
        u->has_meta = true;
        u->meta = pm->meta.data;
        u->meta_len = pm->meta.len;
    }
    if (pm->has_from) {
        if (pm->from.len != GSP_ID_LEN) return -1;
        u->has_from = true;
        memcpy(u->from.b, pm->from.data, GSP_ID_LEN);
    }
    if (u->state == GSP_ALIVE && !u->has_addr) return -1;
    return 0;
}

static int check_user(const PbUser *um)
{
    return um->data.len <= GSP_META_MAX ? 0 : -1;
}

static void apply_user(gsp_core *c, uint32_t key, uint64_t version,
                       const uint8_t *data, size_t len, bool local)
{
    user_rec *r = NULL;
    for (size_t i = 0; i < c->n_users; i++)
        if (c->users[i].key == key) r = &c->users[i];
    if (r && version <= r->version) return;
    if (!r) {
        if (c->n_users >= USER_KEYS_MAX ||
            grow((void **)&c->users, &c->cap_users, c->n_users + 1,
                 sizeof(*c->users))) {
            c->st.drop_other++;
            return;
        }
        r = &c->users[c->n_users++];
        memset(r, 0, sizeof(*r));
        r->key = key;
    }
    uint8_t *d = malloc(len ? len : 1);
    if (!d) return;
    memcpy(d, data, len);
    free(r->data);
    r->data = d;
    r->len = len;
    r->version = version;

    PbUser um = PMGCM__GOSSIP__USER_MSG__INIT;
    um.key = key;
    um.version = version;
    um.data.data = d;
    um.data.len = len;
    size_t pl = pmgcm__gossip__user_msg__get_packed_size(&um);
    uint8_t *buf = malloc(pl ? pl : 1);
    if (buf) {
        pmgcm__gossip__user_msg__pack(&um, buf);
        bq_push(&c->uq, true, NULL, key, NULL, buf, pl);
        free(buf);
    }
    if (!local) {
        c->st.user_msgs_delivered++;
        if (c->cb.user_msg) c->cb.user_msg(c->cb.ud, key, version, d, len);
    }
}

static void apply_update(gsp_core *c, const upd *u)
{
    switch (u->state) {
    case GSP_ALIVE: on_alive(c, u, false); break;
    case GSP_SUSPECT: on_suspect(c, u); break;
    case GSP_DEAD:
    case GSP_LEFT: on_dead(c, u); break;
    }
}

/* ---- probing ------------------------------------------------------------ */

/* Pacing: one probe per probe_quiet_interval_ms while everything is quiet,
 * one per probe_interval_ms for TIGHT_HOLD_MS after anything failed (a
 * probe of ours, a suspicion or a death we heard of), so an idle cluster
 * wakes up less and a failure is confirmed at full speed. An unhealthy
 * node (Lifeguard local health) probes in fewer periods (see sched_next). */
#define TIGHT_HOLD_MS 10000

/* The probe period, unscaled: the schedule's period length. */
static uint32_t probe_period(const gsp_core *c)
{
    uint32_t iv = c->cfg.probe_interval_ms;
    if (c->cfg.probe_quiet_interval_ms > iv && c->now >= c->tight_until &&
        !c->n_susp && !c->verify.active)
        iv = c->cfg.probe_quiet_interval_ms;
    return iv;
}

static uint32_t probe_iv(const gsp_core *c)
{
    return scale(c, probe_period(c));
}

/* A probe's length (and its verification's): the probe interval, but
 * long enough for the relays' nacks (they wait probe_timeout_ms for the
 * target after our probe_timeout_ms): a prober that heard no nack accuses
 * nobody. */
static uint32_t probe_len(const gsp_core *c)
{
    uint32_t len = c->cfg.probe_interval_ms, nack = 2 * c->cfg.probe_timeout_ms + 50;
    return scale(c, len > nack ? len : nack);
}

/* ---- the probe schedule -------------------------------------------------
 * Who probes whom, and when, is coordinated, so that every member is probed
 * in every period (with each node picking from its own shuffled list, a
 * given member went unprobed for a period with a chance of ~1/e, and the
 * first probe of a crashed node had a geometric tail: at N = 30, 0.5 to
 * 3 s). Every node orders the live members (alive or suspect, itself
 * included: m of them) by a hash of their id, the ring, and numbers the
 * periods by the wall clock: period g = floor(wall / P) (P: probe_period).
 * In period g the ring is paired as in a round-robin tournament (the circle
 * method), round r = g mod C, C = m - 1 (m even) or m (m odd):
 *   m even: m-1 meets r, and i != r meets (2r - i) mod C;
 *   m odd:  i != r meets (2r - i) mod C, and r meets r+1 (which so meets
 *           two members in that period);
 * the two of a pair probe each other. So every member is probed in every
 * period, and a node meets every other once in C periods, as it did going
 * round a list. A pair at circle distance d = |i - r| (0 for m-1's pair and
 * for r's) has its slot d P / S into the period (S = (C + 1) / 2 slots); a
 * member's distance moves by at most 1 from one period to the next, so its
 * probes come P +- P/S apart. The lower of a pair pings at the slot, and
 * that ping is the other's check of it (ping_is_check): a ping and its ack
 * check the pair both ways, three wake-ups; the higher one pings by itself
 * sched_reply() after the slot if no ping came (the lower one is dead, or
 * their clocks differ).
 *
 * Clocks that disagree only move slots: each node takes its own slots of
 * every period by its own clock, so every member is still probed once per
 * period, at most twice the skew later; a node whose clock is far off
 * probes at random times, not less (it still meets everybody once per C
 * periods). Views that disagree (a death or a join not yet known
 * everywhere) pair some nodes differently for a moment: each still probes
 * once per period. On top of the schedule: prio probes (a suspicion somebody
 * else raised). After a failure the period is probe_interval_ms everywhere
 * (every node tightens within a gossip wave); an unhealthy node skips
 * `awareness` periods after each probe. */

/* How long the higher member of a pair waits for the lower one's ping (it
 * then probes by itself); also how early a probe may start when something
 * else woke the node. */
static uint32_t sched_reply(const gsp_core *c)
{
    uint32_t d = c->cfg.probe_timeout_ms / 2;
    return d ? d : 1;
}

static uint64_t ring_key(const gsp_id *id)
{
    /* byte order fixed: every node of every architecture agrees */
    uint64_t a = 0, b = 0;
    for (int i = 0; i < 8; i++) {
        a = a << 8 | id->b[i];
        b = b << 8 | id->b[8 + i];
    }
    uint64_t z = a ^ (b * 0x9e3779b97f4a7c15ULL) ^ 0x243f6a8885a308d3ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int ring_cmp(const member *a, const member *b)
{
    uint64_t ka = ring_key(&a->id), kb = ring_key(&b->id);
    if (ka != kb) return ka < kb ? -1 : 1;
    return memcmp(a->id.b, b->id.b, GSP_ID_LEN);
}

static int ring_qcmp(const void *a, const void *b)
{
    return ring_cmp(*(member *const *)a, *(member *const *)b);
}

/* Brings the ring up to date after members joined, died or left: the
 * survivors keep their order, the k new ones are sorted and merged in:
 * O(n + k log k), at most once per probe. On ENOMEM the ring holds the
 * survivors and stays dirty. */
static void ring_rebuild(gsp_core *c)
{
    if (!c->ring_dirty) return;
    size_t w = 0, k = 0;
    for (size_t i = 0; i < c->ring_n; i++) {
        member *m = c->ring[i];
        if (!m) continue;
        if (is_live(m->state))
            c->ring[w++] = m;
        else
            m->in_ring = false;
    }
    for (size_t i = 0; i < c->n_members; i++)
        if (is_live(c->members[i]->state) && !c->members[i]->in_ring) k++;
    member **add = k ? malloc(k * sizeof(*add)) : NULL;
    if (add) {
        size_t j = 0;
        for (size_t i = 0; i < c->n_members && j < k; i++) {
            member *m = c->members[i];
            if (is_live(m->state) && !m->in_ring) add[j++] = m;
        }
        qsort(add, k, sizeof(*add), ring_qcmp);
        /* merge from the back (the ring has room for every member): each
         * new one's place by binary search, the ones above it moved up */
        size_t i = w;
        while (j) {
            member *m = add[--j];
            size_t lo = 0, hi = i;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (ring_cmp(c->ring[mid], m) > 0)
                    hi = mid;
                else
                    lo = mid + 1;
            }
            memmove(&c->ring[lo + j + 1], &c->ring[lo],
                    (i - lo) * sizeof(*c->ring));
            c->ring[lo + j] = m;
            i = lo;
        }
        free(add);
        w += k;
    }
    c->ring_n = w;
    for (size_t i = 0; i < w; i++) {
        c->ring[i]->pi = (uint32_t)i;
        c->ring[i]->in_ring = true;
    }
    c->ring_dirty = k && !add;
}

static int64_t floor_div(int64_t a, int64_t b) /* b > 0 */
{
    int64_t q = a / b;
    return (a % b && a < 0) ? q - 1 : q;
}

typedef struct pslot {
    int64_t wall;
    const member *t;
} pslot;

/* Our slots of period g (of P ms) in the ring as it is: 0, 1 or 2. */
static size_t own_slots(const gsp_core *c, int64_t g, int64_t P, pslot out[2])
{
    const member *self = c->self;
    size_t m = c->ring_n;
    if (m < 2 || !self->in_ring || self->pi >= m || c->ring[self->pi] != self)
        return 0;
    size_t C = m % 2 ? m : m - 1, S = (C + 1) / 2;
    size_t p = self->pi, r = (size_t)(g - floor_div(g, (int64_t)C) * (int64_t)C);
    size_t part[2], dist[2], n = 0;
    if (m % 2 == 0 && p == m - 1) {
        part[n] = r, dist[n++] = 0;
    } else if (p == r) {
        part[n] = m % 2 ? (r + 1) % C : m - 1, dist[n++] = 0;
    } else {
        size_t d = p > r ? p - r : r - p;
        part[n] = (2 * r + C - p) % C, dist[n++] = d < C - d ? d : C - d;
        if (m % 2 && p == (r + 1) % C) part[n] = r, dist[n++] = 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const member *t = c->ring[part[i]];
        if (!t || t == self || !is_live(t->state)) continue;
        out[k].wall = g * P + (int64_t)dist[i] * P / (int64_t)S;
        if (part[i] < p) out[k].wall += sched_reply(c); /* it pings first */
        out[k++].t = t;
    }
    if (k == 2 && out[1].wall <= out[0].wall) {
        pslot t = out[0];
        out[0] = out[1];
        out[1] = t;
        if (out[1].wall == out[0].wall) out[1].wall++;
    }
    return k;
}

/* Sets c->sched to our first slot after the last one we probed (skipping
 * `awareness` periods after it: an unhealthy node probes less) and at most
 * a period old. Invalid when there is nobody to probe. fresh: bring the
 * ring up to date first (when a probe starts); planning when the next one
 * starts makes do with the ring as it is (while members join by the
 * hundred, the rebuild at every probe's end cost a fifth more CPU). */
static void sched_next(gsp_core *c, bool fresh)
{
    if (fresh) ring_rebuild(c);
    c->sched.valid = false;
    int64_t P = probe_period(c);
    int64_t wall = (int64_t)c->now + c->wall_off, from = wall - P;
    if (c->slot_done) {
        int64_t last = c->last_slot + c->wall_off + (int64_t)c->awareness * P;
        if (last > from) from = last;
    }
    int64_t g0 = floor_div(from, P);
    pslot best = {0, NULL};
    for (int64_t g = g0 - 1; g <= g0 + 2; g++) {
        pslot sl[2];
        size_t k = own_slots(c, g, P, sl);
        for (size_t i = 0; i < k; i++)
            if (sl[i].wall > from && (!best.t || sl[i].wall < best.wall))
                best = sl[i];
    }
    if (!best.t) return;
    c->sched.valid = true;
    c->sched.target = best.t->id;
    c->sched.wall = best.wall;
    c->sched.period = (uint32_t)P;
    int64_t at = best.wall - c->wall_off;
    c->sched.at = at > (int64_t)c->now ? (uint64_t)at : c->now;
}

/* Our slot is being probed now (by us, or in an ack): the next one
 * follows it. */
static void take_slot(gsp_core *c)
{
    c->last_slot = c->sched.wall - c->wall_off;
    c->slot_done = true;
    c->sched.valid = false;
}

/* When the next probe starts: now for a prio probe, else our next slot. */
static void plan_probe(gsp_core *c)
{
    if (c->prio_set) {
        c->next_probe = c->now;
        return;
    }
    sched_next(c, false);
    c->next_probe = c->sched.valid ? c->sched.at : c->now + probe_iv(c);
}

static void tighten(gsp_core *c)
{
    c->tight_until = c->now + TIGHT_HOLD_MS;
    if (!c->probe.active && c->sched.valid &&
        c->sched.period > probe_period(c)) {
        /* shorter periods from now on: our next slot is sooner */
        uint64_t before = c->next_probe;
        plan_probe(c);
        if (before < c->next_probe) c->next_probe = before;
    }
}

/* Updates go out at once rather than at the next gossip tick (a death, a
 * refutation: the sooner everyone has them the better). */
static void gossip_soon(gsp_core *c)
{
    if (c->next_gossip > c->now) c->next_gossip = c->now;
}

static void fill_ping(gsp_core *c, Pmgcm__Gossip__Ping *ping,
                      const member *target, uint32_t seq, bool indirect)
{
    (void)c;
    pmgcm__gossip__ping__init(ping);
    ping->seq = seq;
    ping->target.data = (uint8_t *)target->id.b;
    ping->target.len = GSP_ID_LEN;
    if (indirect) {
        ping->has_indirect = 1;
        ping->indirect = 1;
    }
}

static void send_ping(gsp_core *c, const member *target, uint32_t seq,
                      bool indirect, const gsp_addr *to)
{
    PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
    Pmgcm__Gossip__Ping ping;
    fill_ping(c, &ping, target, seq, indirect);
    hdr.ping = &ping;
    PbMember buddy;
    const PbMember *extra = NULL;
    if (target->state == GSP_SUSPECT) {
        /* Lifeguard buddy system: tell the suspect so it can refute */
        member_to_pb(target, GSP_SUSPECT, &c->self->id, false, &buddy);
        extra = &buddy;
    }
    send_packet(c, to, &target->id, &hdr, extra);
}

/* Makes t the active probe (the caller sends the ping). */
static void begin_probe(gsp_core *c, const member *t)
{
    c->probe.active = true;
    c->probe.indirect_sent = false;
    c->probe.seq = ++c->seq;
    c->probe.target = t->id;
    c->probe.start = c->now;
    c->probe.direct_deadline = c->now + scale(c, c->cfg.probe_timeout_ms);
    c->probe.end_deadline = c->now + probe_len(c);
    c->probe.nacks = c->probe.nacks_expected = 0;
    c->probe.n_relays = 0;
    c->st.probes++;
}

/* Starts a probe: of a suspect somebody else accused (prio) at once, else
 * of our next slot's member if the slot is due within `early` ms (the
 * schedule is brought up to date first: it may have moved). */
static void start_probe(gsp_core *c, uint64_t early)
{
    if (c->prio_set) {
        /* a member somebody suspects: an independent check, now */
        c->prio_set = false;
        member *m = find(c, &c->prio);
        if (m && !m->is_self && is_live(m->state)) {
            begin_probe(c, m);
            send_ping(c, m, c->probe.seq, false, maddr(m));
            return;
        }
    }
    sched_next(c, true);
    member *t = c->sched.valid ? find(c, &c->sched.target) : NULL;
    if (!t) {
        c->next_probe = c->now + probe_iv(c);
        return;
    }
    if (c->sched.at > c->now + early) {
        c->next_probe = c->sched.at;
        return;
    }
    take_slot(c);
    begin_probe(c, t);
    send_ping(c, t, c->probe.seq, false, maddr(t));
}

/* A probe due within sched_reply() starts now if something else woke us
 * up (fewer wake-ups for the same probe rate; the slots stay where they
 * are). */
static bool probe_due_soon(const gsp_core *c)
{
    return !c->leaving && !c->probe.active &&
           c->now + sched_reply(c) >= c->next_probe;
}
static void start_verify(gsp_core *c, member *m)
{
    c->verify.active = true;
    c->verify.second_sent = false;
    c->verify.seq = ++c->seq;
    c->verify.probe_seq = c->probe.seq;
    c->verify.target = m->id;
    c->verify.n_relays = c->probe.n_relays;
    memcpy(c->verify.relays, c->probe.relays,
           c->probe.n_relays * sizeof(c->probe.relays[0]));
    c->verify.failed_at = c->now;
    uint32_t d = probe_len(c);
    c->verify.second_at = c->now + d / 2;
    c->verify.deadline = c->now + d;
    send_ping(c, m, c->verify.seq, false, maddr(m));
}

/* Our own check of m failed (or confirms a suspicion we hold): suspect it,
 * the timer running from `since`, and tell the first accuser directly, so
 * its timer shrinks without waiting for the gossip. */
static void suspect_failed(gsp_core *c, member *m, uint64_t since)
{
    bool confirming = m->state == GSP_SUSPECT;
    upd u = {.id = m->id, .state = GSP_SUSPECT, .inc = m->inc,
             .has_from = true, .from = c->self->id, .since = since};
    on_suspect(c, &u);
    if (!confirming || m->state != GSP_SUSPECT) return;
    const susp *sp = susp_of(c, m);
    member *acc = sp->n_from ? find(c, &sp->from[0]) : NULL;
    if (acc && !acc->is_self && acc->state == GSP_ALIVE) {
        PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
        PbMember rec;
        member_to_pb(m, GSP_SUSPECT, &c->self->id, false, &rec);
        send_packet(c, maddr(acc), &acc->id, &hdr, &rec);
    }
}

static void finish_probe(gsp_core *c, bool ok)
{
    c->probe.active = false;
    if (ok) {
        awareness_add(c, -1);
    } else {
        uint32_t e = c->probe.nacks_expected;
        awareness_add(c, e ? (int)(e - (c->probe.nacks < e ? c->probe.nacks : e))
                           : 1);
        c->st.probe_fails++;
        tighten(c);
        member *m = find(c, &c->probe.target);
        if (e && !c->probe.nacks) {
            /* nobody we asked answered either, not even with a nack: we
             * are the one cut off (Lifeguard), so accuse nobody */
        } else if (m && m->state == GSP_ALIVE && !c->verify.active) {
            start_verify(c, m);
        } else if (m && (m->state == GSP_ALIVE || m->state == GSP_SUSPECT)) {
            suspect_failed(c, m, c->now);
        }
    }
    plan_probe(c);
}

static void verify_tick(gsp_core *c)
{
    if (!c->verify.active) return;
    member *m = find(c, &c->verify.target);
    if (!m || (m->state != GSP_ALIVE && m->state != GSP_SUSPECT)) {
        c->verify.active = false;
        return;
    }
    if (c->now >= c->verify.deadline) {
        c->verify.active = false;
        /* the timer runs from the failed probe (the verification must not
         * slow detection), but only for a healthy prober: an unhealthy
         * one's verification is stretched by its local health, and
         * backdating by that much would leave the suspect too little time
         * to refute (a false death at 20 % loss, simbench seed 5) */
        suspect_failed(c, m, c->awareness ? c->now : c->verify.failed_at);
    } else if (!c->verify.second_sent && c->now >= c->verify.second_at) {
        c->verify.second_sent = true;
        send_ping(c, m, c->verify.seq, false, maddr(m));
    }
}

/* An ack (or a late one of the probe that failed) for the verification. */
/* An ack of seq from node `from` ends a verification: an ack of a verify
 * ping from its target, of the failed probe from its target or a relay
 * it asked (the ack rule). */
static bool verify_ack(gsp_core *c, uint32_t seq, const gsp_id *from)
{
    if (!c->verify.active ||
        (seq != c->verify.seq && seq != c->verify.probe_seq))
        return false;
    bool ok = id_eq(from, &c->verify.target);
    for (uint32_t i = 0; !ok && seq == c->verify.probe_seq &&
                         i < c->verify.n_relays; i++)
        ok = id_eq(from, &c->verify.relays[i]);
    if (!ok) {
        c->st.acks_ignored++;
        return true; /* taken: not a relay's to forward either */
    }
    c->verify.active = false;
    return true;
}

static void indirect_probe(gsp_core *c)
{
    member *t = find(c, &c->probe.target);
    c->probe.indirect_sent = true;
    if (!t) return;
    PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
    Pmgcm__Gossip__PingReq pr = PMGCM__GOSSIP__PING_REQ__INIT;
    pr.seq = c->probe.seq;
    pr.target.data = t->id.b;
    pr.target.len = GSP_ID_LEN;
    pr.ip.data = (uint8_t *)maddr(t)->ip;
    pr.ip.len = maddr(t)->family == 6 ? 16 : 4;
    pr.port = maddr(t)->port;
    hdr.ping_req = &pr;
    uint32_t want = c->cfg.indirect_checks, sent = 0;
    if (want > RELAYS_ASKED_MAX) want = RELAYS_ASKED_MAX;
    size_t cand = c->n_members;
    member *picked[RELAYS_ASKED_MAX];
    for (size_t tries = 0; sent < want && tries < 4 * cand + 8; tries++) {
        member *m = c->members[rnd_below(c, cand)];
        if (m->is_self || m == t || m->state != GSP_ALIVE) continue;
        bool dup = false;
        for (uint32_t i = 0; i < sent; i++) dup |= picked[i] == m;
        if (dup) continue;
        picked[sent] = m;
        c->probe.relays[sent++] = m->id; /* their acks count from now on */
        send_packet(c, maddr(m), &m->id, &hdr, NULL);
    }
    c->probe.n_relays = sent;
    c->probe.nacks_expected = sent;
    c->st.indirect_probes += sent;

    /* TCP fallback probe, in parallel */
    PbStream s = PMGCM__GOSSIP__STREAM__INIT;
    Pmgcm__Gossip__Ping ping = PMGCM__GOSSIP__PING__INIT;
    s.kind = PMGCM__GOSSIP__STREAM__KIND__PING;
    stamp_stream(c, &s, &t->id, NULL);
    ping.seq = c->probe.seq;
    ping.target.data = t->id.b;
    ping.target.len = GSP_ID_LEN;
    s.ping = &ping;
    size_t len = pmgcm__gossip__stream__get_packed_size(&s);
    uint8_t *buf = malloc(len);
    if (!buf) return;
    pmgcm__gossip__stream__pack(&s, buf);
    if (grow((void **)&c->streams, &c->cap_streams, c->n_streams + 1,
             sizeof(*c->streams)) == 0) {
        uint64_t id = ++c->next_req_id;
        uint64_t left = c->probe.end_deadline > c->now
                            ? c->probe.end_deadline - c->now : 1;
        if (emit(c, GSP_OUT_STREAM, maddr(t), buf, len, id,
                 (uint32_t)left) == 0) {
            c->streams[c->n_streams++] =
                (pending_stream){.id = id, .kind = PS_PING,
                                 .seq = c->probe.seq,
                                 .has_peer = true, .peer = t->id};
            c->st.tcp_fallback_probes++;
        }
    }
    free(buf);
}

/* ---- push-pull ---------------------------------------------------------- */

/* A join exchanges full states (the joiner knows nobody; the one it joins
 * learns it). The periodic exchange goes by digest: the members are split
 * into buckets by a hash of their id, each bucket summarised by the XOR of
 * its members' (id, incarnation, state) hashes; the peer answers with its
 * records of the buckets that differ, and the requester pushes back what
 * the peer lacks. Two views that agree cost one summary and an empty
 * answer, so the bytes of a push-pull grow with N/16 * 8 bytes, not with
 * N full records. */
#define DIGEST_PER_BUCKET 16
#define DIGEST_MAX_BUCKETS 65536

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Independent of the host's byte order: both ends must agree. */
static uint32_t digest_bucket(const gsp_id *id, uint32_t buckets)
{
    return (uint32_t)(mix64(le64(id->b) ^ mix64(le64(id->b + 8))) >> 17) &
           (buckets - 1);
}

static uint64_t digest_member(const gsp_id *id, gsp_inc inc, unsigned state)
{
    uint64_t h = mix64(le64(id->b) + 0x9e3779b97f4a7c15ULL);
    h = mix64(h ^ le64(id->b + 8));
    h = mix64(h ^ inc.gen);
    h = mix64(h ^ inc.ver);
    return mix64(h ^ (state + 1));
}

static uint64_t digest_users(const gsp_core *c)
{
    uint64_t h = 0;
    for (size_t i = 0; i < c->n_users; i++)
        h ^= mix64(mix64(c->users[i].key + 1ULL) ^ c->users[i].version);
    return h;
}

static uint32_t digest_buckets_for(size_t n)
{
    uint32_t k = 1;
    while (k < DIGEST_MAX_BUCKETS && (size_t)k * DIGEST_PER_BUCKET < n) k <<= 1;
    return k;
}

/* h[buckets]: our summary. */
static void digest_fill(const gsp_core *c, uint32_t buckets, uint64_t *h)
{
    memset(h, 0, buckets * sizeof(*h));
    for (size_t i = 0; i < c->n_members; i++) {
        const member *m = c->members[i];
        h[digest_bucket(&m->id, buckets)] ^=
            digest_member(&m->id, m->inc, m->state);
    }
}

static bool bq_has(const bqueue *q, const gsp_id *id)
{
    if (!q->ht_cap) return false;
    for (const bcast *b = q->ht[bq_hash(false, id, 0) & (q->ht_cap - 1)]; b;
         b = b->hnext)
        if (bq_same(b, false, id, 0)) return true;
    return false;
}

/* A growable output buffer for a push-pull frame. */
typedef struct obuf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} obuf;

static uint8_t *ob_room(obuf *o, size_t n)
{
    if (o->oom) return NULL;
    if (n > o->cap - o->len) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap - o->len < n) cap *= 2;
        uint8_t *p = realloc(o->p, cap);
        if (!p) {
            o->oom = true;
            return NULL;
        }
        o->p = p;
        o->cap = cap;
    }
    return o->p + o->len;
}

/* Appends a length-delimited field: tag (< 16), then head and tail. */
static void ob_field(obuf *o, unsigned tag, const uint8_t *head, size_t hl,
                     const uint8_t *tail, size_t tl)
{
    uint8_t *w = ob_room(o, 1 + 10 + hl + tl);
    if (!w) return;
    size_t n = 0;
    w[n++] = (uint8_t)((tag << 3) | 2);
    n += put_varint(w + n, hl + tl);
    memcpy(w + n, head, hl);
    if (tl) memcpy(w + n + hl, tail, tl);
    o->len += n + hl + tl;
}

/* Appends m's full record (a Stream's `members`): an alive record at the
 * current incarnation is the shared packed one. */
static void ob_member(gsp_core *c, obuf *o, member *m)
{
    if (m->state == GSP_ALIVE && member_rec_current(c, m) == 0) {
        ob_field(o, 4, AREC_PK(m->rec), m->rec->pk_len, NULL, 0);
        return;
    }
    PbMember pm;
    const gsp_id *from = m->state == GSP_LEFT ? &m->id : NULL;
    member_to_pb(m, (gsp_state)m->state, from, true, &pm);
    uint8_t tmp[1024];
    size_t n = pmgcm__gossip__member__get_packed_size(&pm);
    if (n > sizeof(tmp)) {
        o->oom = true; /* cannot happen: name, address and meta are bounded */
        return;
    }
    pmgcm__gossip__member__pack(&pm, tmp);
    ob_field(o, 4, tmp, n, NULL, 0);
}

/* Packs a push-pull frame for to_id (or, a join by address, for whoever
 * is at to_addr): the header fields set in s, then the members
 * pick(c, m, ud) selects (NULL: all) and, with users, every user
 * broadcast. Caller frees the result. */
static uint8_t *build_frame(gsp_core *c, PbStream *s, const gsp_id *to_id,
                            const gsp_addr *to_addr,
                            bool (*pick)(gsp_core *, member *, void *),
                            void *ud, bool users, size_t *out_len)
{
    s->kind = PMGCM__GOSSIP__STREAM__KIND__PUSHPULL;
    stamp_stream(c, s, to_id, to_addr);
    obuf o = {0};
    size_t hl = pmgcm__gossip__stream__get_packed_size(s);
    uint8_t *w = ob_room(&o, hl);
    if (w) o.len = pmgcm__gossip__stream__pack(s, w);
    for (size_t i = 0; i < c->n_members; i++) {
        member *m = c->members[i];
        if (!pick || pick(c, m, ud)) ob_member(c, &o, m);
    }
    for (size_t i = 0; users && i < c->n_users; i++) {
        PbUser um = PMGCM__GOSSIP__USER_MSG__INIT;
        um.key = c->users[i].key;
        um.version = c->users[i].version;
        um.data.data = c->users[i].data;
        um.data.len = c->users[i].len;
        uint8_t tmp[GSP_META_MAX + 32];
        size_t n = pmgcm__gossip__user_msg__pack(&um, tmp);
        ob_field(&o, 5, tmp, n, NULL, 0);
    }
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *out_len = o.len;
    return o.p;
}

/* Our full state (a join, or an answer to one) for to_id, or (a join by
 * address) for whoever is at to_addr. */
static uint8_t *build_state(gsp_core *c, bool join, const gsp_id *to_id,
                            const gsp_addr *to_addr, size_t *out_len)
{
    PbStream s = PMGCM__GOSSIP__STREAM__INIT;
    if (join) {
        s.has_join = 1;
        s.join = 1;
    }
    return build_frame(c, &s, to_id, to_addr, NULL, NULL, true, out_len);
}

static bool pick_self(gsp_core *c, member *m, void *ud)
{
    (void)ud;
    return m == c->self;
}

/* A digest request to to_id: our own record and the summary. */
static uint8_t *build_digest(gsp_core *c, uint32_t buckets,
                             const gsp_id *to_id, size_t *out_len)
{
    uint64_t *h = malloc(buckets * sizeof(*h));
    if (!h) return NULL;
    digest_fill(c, buckets, h);
    Pmgcm__Gossip__Digest d = PMGCM__GOSSIP__DIGEST__INIT;
    d.buckets = buckets;
    d.n_hash = buckets;
    d.hash = h;
    d.has_users = 1;
    d.users = digest_users(c);
    PbStream s = PMGCM__GOSSIP__STREAM__INIT;
    s.digest = &d;
    uint8_t *buf =
        build_frame(c, &s, to_id, NULL, pick_self, NULL, false, out_len);
    free(h);
    return buf;
}

typedef struct bucket_set {
    uint32_t buckets;
    uint8_t *bits; /* one per bucket */
} bucket_set;

static bool pick_bucket(gsp_core *c, member *m, void *ud)
{
    (void)c;
    bucket_set *bs = ud;
    uint32_t b = digest_bucket(&m->id, bs->buckets);
    return bs->bits[b >> 3] >> (b & 7) & 1;
}

/* Our answer to a digest: the records of the buckets that differ from the
 * request's summary, which buckets those are, our users summary and, if it
 * differs, our users. */
static uint8_t *build_diff(gsp_core *c, const Pmgcm__Gossip__Digest *rq,
                           const gsp_id *to_id, size_t *out_len)
{
    uint32_t k = rq->buckets;
    uint64_t *h = malloc(k * sizeof(*h));
    uint32_t *diff = malloc(k * sizeof(*diff));
    bucket_set bs = {.buckets = k, .bits = calloc((k + 7) / 8, 1)};
    uint8_t *buf = NULL;
    if (!h || !diff || !bs.bits) goto out;
    digest_fill(c, k, h);
    size_t nd = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (h[i] != rq->hash[i]) {
            diff[nd++] = i;
            bs.bits[i >> 3] |= (uint8_t)(1 << (i & 7));
        }
    }
    Pmgcm__Gossip__Digest d = PMGCM__GOSSIP__DIGEST__INIT;
    d.buckets = k;
    d.has_users = 1;
    d.users = digest_users(c);
    PbStream s = PMGCM__GOSSIP__STREAM__INIT;
    s.digest = &d;
    s.n_diff = nd;
    s.diff = diff;
    bool users = !rq->has_users || rq->users != d.users;
    buf = build_frame(c, &s, to_id, NULL, pick_bucket, &bs, users, out_len);
out:
    free(h);
    free(diff);
    free(bs.bits);
    return buf;
}

static void send_frame(gsp_core *c, const gsp_addr *to, uint8_t *buf,
                       size_t len, pending_stream ps)
{
    if (!buf) return;
    if (len + GSP_SEAL_OVERHEAD <= c->cfg.max_stream_bytes &&
        grow((void **)&c->streams, &c->cap_streams, c->n_streams + 1,
             sizeof(*c->streams)) == 0) {
        ps.id = ++c->next_req_id;
        ps.addr = *to;
        if (emit(c, GSP_OUT_STREAM, to, buf, len, ps.id, 10000) == 0)
            c->streams[c->n_streams++] = ps;
    }
    free(buf);
}

/* A push-pull to member to_id at `to`, or (to_id NULL: a seed) a join
 * to whoever is at that address. */
static void start_pushpull(gsp_core *c, const gsp_addr *to,
                           const gsp_id *to_id, bool join)
{
    size_t len = 0;
    uint8_t *buf;
    pending_stream ps = {.kind = PS_FULL};
    if (to_id) {
        ps.has_peer = true;
        ps.peer = *to_id;
    }
    if (join || !to_id) {
        buf = build_state(c, true, to_id, to, &len);
        send_frame(c, to, buf, len, ps);
        return;
    }
    uint32_t k = digest_buckets_for(c->n_members);
    buf = build_digest(c, k, to_id, &len);
    ps.kind = PS_DIGEST;
    ps.buckets = k;
    send_frame(c, to, buf, len, ps);
}

/* Validates every record first; applies only if all are well formed. */
static int merge_state(gsp_core *c, const PbStream *s)
{
    if (s->n_members > 1000000) return GSP_EDECODE;
    size_t usz = (s->n_members ? s->n_members : 1) * sizeof(upd);
    upd *us = c->st_sc ? sc_alloc(c->st_sc, usz) : malloc(usz);
    if (!us) return -ENOMEM;
    for (size_t i = 0; i < s->n_members; i++) {
        if (pb_to_upd(s->members[i], &us[i])) {
            if (!c->st_sc) free(us);
            return GSP_EDECODE;
        }
    }
    for (size_t i = 0; i < s->n_user; i++) {
        if (check_user(s->user[i])) {
            if (!c->st_sc) free(us);
            return GSP_EDECODE;
        }
    }
    gsp_id sender;
    memcpy(sender.b, s->from.data, GSP_ID_LEN);
    for (size_t i = 0; i < s->n_members; i++) {
        upd *u = &us[i];
        member *m = find(c, &u->id);
        switch (u->state) {
        case GSP_ALIVE:
            /* pass on the sender's own record (a joiner); the rest is
             * old news, or news the sender spreads anyway */
            on_alive(c, u, !id_eq(&u->id, &sender));
            break;
        case GSP_SUSPECT:
            if (!u->has_from) {
                u->has_from = true;
                u->from = sender;
            }
            on_suspect(c, u);
            break;
        case GSP_DEAD:
        case GSP_LEFT:
            if (!m) {
                insert_gone(c, u);
            } else if (u->state == GSP_LEFT || m->is_self) {
                on_dead(c, u);
            } else {
                /* a remote "dead" is only a suspicion here: if the node
                 * lives it will refute */
                u->state = GSP_SUSPECT;
                u->has_from = true;
                u->from = sender;
                on_suspect(c, u);
            }
            break;
        }
    }
    if (!c->st_sc) free(us);
    for (size_t i = 0; i < s->n_user; i++)
        apply_user(c, s->user[i]->key, s->user[i]->version,
                   s->user[i]->data.data, s->user[i]->data.len, false);
    return 0;
}

/* Is a decoded frame for us? A reply (ps set: the request it answers)
 * names us and comes from the member asked; a request names us, or is a
 * join push-pull sent to our advertised address or to `local`. */
static bool stream_for_us(const gsp_core *c, const PbStream *s,
                          const pending_stream *ps, const gsp_addr *local)
{
    if (s->has_to)
        return s->to.len == GSP_ID_LEN &&
               !memcmp(s->to.data, c->self->id.b, GSP_ID_LEN) &&
               (!ps || !ps->has_peer ||
                !memcmp(s->from.data, ps->peer.b, GSP_ID_LEN));
    if (ps || s->kind != PMGCM__GOSSIP__STREAM__KIND__PUSHPULL || !s->join ||
        !s->has_to_ip || !s->has_to_port)
        return false;
    gsp_addr dialled;
    if (pb_addr(&s->to_ip, s->to_port, &dialled)) return false;
    return addr_same(&dialled, maddr(c->self)) ||
           (local && addr_same(&dialled, local));
}

/* Frees a frame open_stream returned (s may be NULL). */
static void close_stream(gsp_core *c, PbStream *s)
{
    if (s)
        pmgcm__gossip__stream__free_unpacked(s, c->st_sc ? &c->st_al : NULL);
    sc_give(c->st_sc);
    c->st_sc = NULL;
}

static PbStream *open_stream(gsp_core *c, const uint8_t *in, size_t len,
                             const pending_stream *ps, const gsp_addr *local,
                             int *err)
{
    *err = 0;
    if (len > c->cfg.max_stream_bytes) {
        c->st.drop_toobig++;
        *err = GSP_ETOOBIG;
        return NULL;
    }
    const uint8_t *plain = in;
    uint8_t *tmp = NULL;
    size_t plen = len;
    if (c->kr) {
        tmp = malloc(len ? len : 1);
        if (!tmp) {
            *err = -ENOMEM;
            return NULL;
        }
        if (gsp_open(c->kr, in, len, tmp, len, &plen)) {
            free(tmp);
            c->st.drop_decrypt++;
            *err = GSP_EDECRYPT;
            return NULL;
        }
        plain = tmp;
    }
    c->st_sc = sc_take(c, &c->st_al);
    PbStream *s = pmgcm__gossip__stream__unpack(c->st_sc ? &c->st_al : NULL,
                                                plen, plain);
    free(tmp);
    if (!s || s->from.len != GSP_ID_LEN ||
        (s->ping && s->ping->target.len != GSP_ID_LEN)) {
        close_stream(c, s);
        c->st.drop_decode++;
        *err = GSP_EDECODE;
        return NULL;
    }
    if (!memcmp(s->from.data, c->self->id.b, GSP_ID_LEN)) {
        close_stream(c, s);
        c->st.drop_self++;
        *err = GSP_ESELF;
        return NULL;
    }
    if (!stream_for_us(c, s, ps, local)) {
        close_stream(c, s);
        c->st.drop_misdirected++;
        *err = GSP_EMISDIRECTED;
        return NULL;
    }
    if (s->has_seq) {
        gsp_id sid;
        memcpy(sid.b, s->from.data, GSP_ID_LEN);
        member *m = find(c, &sid);
        if (rwin_replayed(m ? m->rw_tcp : NULL, s->gen, s->seq)) {
            close_stream(c, s);
            c->st.drop_replay++;
            *err = GSP_EREPLAY;
            return NULL;
        }
    }
    return s;
}

/* Records an accepted frame's (gen, seq) once it was processed (a join
 * push-pull introduces its sender). */
static void stream_mark(gsp_core *c, const PbStream *s)
{
    if (!s->has_seq) return;
    gsp_id sid;
    memcpy(sid.b, s->from.data, GSP_ID_LEN);
    member *m = find(c, &sid);
    if (m && !m->rw_tcp) m->rw_tcp = calloc(1, sizeof(*m->rw_tcp));
    if (m && m->rw_tcp) rwin_mark(m->rw_tcp, s->gen, s->seq);
}

/* Seals plaintext into a freshly allocated buffer (for stream replies). */
static int seal_alloc(gsp_core *c, const uint8_t *p, size_t len,
                      uint8_t **out, size_t *out_len)
{
    size_t cap = len + GSP_SEAL_OVERHEAD;
    uint8_t *b = malloc(cap);
    if (!b) return -ENOMEM;
    if (c->kr) {
        int rc = gsp_seal(c->kr, p, len, b, cap, out_len);
        if (rc) {
            free(b);
            return rc;
        }
    } else {
        memcpy(b, p, len);
        *out_len = len;
    }
    *out = b;
    return 0;
}

/* A digest answer names at most every bucket, each once and in range. */
static bool valid_diff(const PbStream *s, uint32_t buckets)
{
    if (!s->digest || s->n_diff > buckets) return false;
    for (size_t i = 0; i < s->n_diff; i++)
        if (s->diff[i] >= buckets) return false;
    return true;
}

typedef struct seen_rec {
    gsp_id id;
    uint64_t h;
    bool used;
} seen_rec;

typedef struct push_ctx {
    bucket_set bs;
    seen_rec *seen;
    size_t cap;
} push_ctx;

/* In a bucket that differed, and the peer sent no record of it or an
 * other one than ours (after merging theirs, ours is at least as new). */
static bool pick_push(gsp_core *c, member *m, void *ud)
{
    push_ctx *p = ud;
    if (!pick_bucket(c, m, &p->bs)) return false;
    uint64_t h = digest_member(&m->id, m->inc, m->state);
    for (size_t i = id_hash(&m->id) & (p->cap - 1);; i = (i + 1) & (p->cap - 1)) {
        if (!p->seen[i].used) return true;
        if (id_eq(&p->seen[i].id, &m->id)) return p->seen[i].h != h;
    }
}

/* The requester's half after a digest answer: push what the peer lacks. */
static void push_back(gsp_core *c, const pending_stream *rq,
                      const PbStream *r)
{
    bool users = r->digest->has_users && r->digest->users != digest_users(c);
    if (!r->n_diff && !users) return;
    uint32_t buckets = rq->buckets;
    push_ctx p = {.bs = {.buckets = buckets,
                         .bits = calloc((buckets + 7) / 8, 1)}};
    p.cap = 16;
    while (p.cap < 2 * r->n_members) p.cap <<= 1;
    p.seen = calloc(p.cap, sizeof(*p.seen));
    if (p.bs.bits && p.seen) {
        for (size_t i = 0; i < r->n_diff; i++)
            p.bs.bits[r->diff[i] >> 3] |= (uint8_t)(1 << (r->diff[i] & 7));
        for (size_t i = 0; i < r->n_members; i++) {
            const PbMember *pm = r->members[i];
            gsp_id id;
            memcpy(id.b, pm->id.data, GSP_ID_LEN); /* checked by the merge */
            size_t j = id_hash(&id) & (p.cap - 1);
            while (p.seen[j].used && !id_eq(&p.seen[j].id, &id))
                j = (j + 1) & (p.cap - 1);
            p.seen[j] = (seen_rec){.id = id, .used = true,
                                   .h = digest_member(&id, (gsp_inc){pm->gen, pm->ver},
                                                      pm->state)};
        }
        bool any = users;
        for (size_t i = 0; !any && i < c->n_members; i++)
            any = pick_push(c, c->members[i], &p);
        if (any) {
            PbStream s = PMGCM__GOSSIP__STREAM__INIT;
            s.has_push = 1;
            s.push = 1;
            size_t len = 0;
            uint8_t *buf = build_frame(c, &s, &rq->peer, NULL, pick_push, &p,
                                       users, &len);
            send_frame(c, &rq->addr, buf, len,
                       (pending_stream){.kind = PS_PUSH, .has_peer = true,
                                        .peer = rq->peer});
        }
    }
    free(p.bs.bits);
    free(p.seen);
}

/* After a join exchange: announce ourselves (everyone the peer told us of
 * learns us sooner than through it alone), and sync again once the joins
 * in flight have spread, to catch what we missed meanwhile. */
static void joined(gsp_core *c)
{
    if (c->leaving) return;
    if (!bq_has(&c->mq, &c->self->id)) queue_member(c, c->self, GSP_ALIVE, NULL);
    uint64_t iv = c->cfg.pushpull_interval_ms;
    uint64_t t = c->now + iv / 4 + rnd_below(c, iv / 4 + 1);
    if (t < c->next_pushpull) c->next_pushpull = t;
}

int gsp_core_stream_request(gsp_core *c, uint64_t now_ms,
                            const gsp_addr *from, const gsp_addr *local,
                            const uint8_t *req, size_t len, uint8_t **reply,
                            size_t *reply_len)
{
    (void)from;
    *reply = NULL;
    *reply_len = 0;
    if (now_ms > c->now) c->now = now_ms;
    c->st.streams_in++;
    c->st.bytes_in += len;
    int err;
    PbStream *s = open_stream(c, req, len, NULL, local, &err);
    if (!s) return err;
    gsp_id sid; /* the requester: our reply is for it alone */
    memcpy(sid.b, s->from.data, GSP_ID_LEN);
    int rc = 0;
    if (s->kind == PMGCM__GOSSIP__STREAM__KIND__PUSHPULL) {
        const Pmgcm__Gossip__Digest *d = s->push ? NULL : s->digest;
        if (d && (d->buckets == 0 || d->buckets > DIGEST_MAX_BUCKETS ||
                  (d->buckets & (d->buckets - 1)) ||
                  d->n_hash != d->buckets))
            rc = GSP_EDECODE;
        else
            rc = merge_state(c, s);
        if (rc == 0) {
            size_t plen;
            uint8_t *p;
            if (s->push) {
                /* the second half of a digest exchange: an empty answer */
                PbStream r = PMGCM__GOSSIP__STREAM__INIT;
                bucket_set none = {.buckets = 1, .bits = (uint8_t[1]){0}};
                p = build_frame(c, &r, &sid, NULL, pick_bucket, &none, false,
                                &plen);
            } else if (d) {
                p = build_diff(c, d, &sid, &plen);
            } else {
                p = build_state(c, false, &sid, NULL, &plen);
            }
            if (!p) {
                rc = -ENOMEM;
            } else {
                rc = seal_alloc(c, p, plen, reply, reply_len);
                free(p);
            }
        } else if (rc == GSP_EDECODE) {
            c->st.drop_decode++;
        }
    } else if (s->kind == PMGCM__GOSSIP__STREAM__KIND__PING && s->ping) {
        if (!memcmp(s->ping->target.data, c->self->id.b, GSP_ID_LEN)) {
            PbStream r = PMGCM__GOSSIP__STREAM__INIT;
            Pmgcm__Gossip__Ack ack = PMGCM__GOSSIP__ACK__INIT;
            r.kind = PMGCM__GOSSIP__STREAM__KIND__ACK;
            stamp_stream(c, &r, &sid, NULL);
            ack.seq = s->ping->seq;
            r.ack = &ack;
            uint8_t p[128];
            size_t plen = pmgcm__gossip__stream__pack(&r, p);
            rc = seal_alloc(c, p, plen, reply, reply_len);
        }
    } else {
        c->st.drop_decode++;
        rc = GSP_EDECODE;
    }
    if (rc != GSP_EDECODE) stream_mark(c, s);
    close_stream(c, s);
    return rc;
}

int gsp_core_stream_result(gsp_core *c, uint64_t now_ms, uint64_t req_id,
                           bool ok, const uint8_t *reply, size_t len)
{
    if (now_ms > c->now) c->now = now_ms;
    size_t i;
    for (i = 0; i < c->n_streams; i++)
        if (c->streams[i].id == req_id) break;
    if (i == c->n_streams) return -ENOENT;
    pending_stream ps = c->streams[i];
    c->streams[i] = c->streams[--c->n_streams];
    if (!ok) {
        c->st.stream_failures++;
        return 0;
    }
    c->st.bytes_in += len;
    int err;
    PbStream *s = open_stream(c, reply, len, &ps, NULL, &err);
    if (!s) return err;
    int rc = 0;
    if ((ps.kind == PS_FULL || ps.kind == PS_DIGEST) &&
        s->kind == PMGCM__GOSSIP__STREAM__KIND__PUSHPULL) {
        if (ps.kind == PS_DIGEST && !valid_diff(s, ps.buckets))
            rc = GSP_EDECODE;
        else
            rc = merge_state(c, s);
        if (rc == GSP_EDECODE) c->st.drop_decode++;
        if (rc == 0 && ps.kind == PS_DIGEST) push_back(c, &ps, s);
        if (rc == 0 && ps.kind == PS_FULL) joined(c);
    } else if (ps.kind == PS_PING && s->kind == PMGCM__GOSSIP__STREAM__KIND__ACK &&
               s->ack) {
        if (c->probe.active && s->ack->seq == c->probe.seq &&
            s->ack->seq == ps.seq)
            finish_probe(c, true);
        else if (s->ack->seq == ps.seq)
            verify_ack(c, ps.seq, &ps.peer);
    }
    if (rc != GSP_EDECODE) stream_mark(c, s);
    close_stream(c, s);
    return rc;
}

/* ---- UDP input ---------------------------------------------------------- */

/* A ping from the member our next slot is for (the lower of a pair pings
 * first: see "the probe schedule") is that slot's check: a sealed, fresh
 * (replay-checked) ping from it shows it alive and able to reach us as well
 * as an ack would, so we answer it and send no ping of our own: three
 * wake-ups (its timer, our receive of its ping, its receive of our ack)
 * check the pair both ways, where a probe each way took four, or six. If it
 * is dead it does not ping, and we probe it sched_reply() after the slot.
 * Only within half a period of the slot. */
static void ping_is_check(gsp_core *c, const member *sender)
{
    if (!sender || sender->is_self || sender->state != GSP_ALIVE ||
        c->leaving || !c->sched.valid ||
        !id_eq(&c->sched.target, &sender->id) ||
        c->sched.at > c->now + probe_iv(c) / 2)
        return;
    take_slot(c);
    if (!c->probe.active) plan_probe(c);
}

static void send_ack(gsp_core *c, const gsp_addr *to, const gsp_id *to_id,
                     uint32_t seq, member *sender)
{
    PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
    Pmgcm__Gossip__Ack ack = PMGCM__GOSSIP__ACK__INIT;
    ack.seq = seq;
    hdr.ack = &ack;
    PbMember rec;
    const PbMember *extra = NULL;
    if (sender && !sender->is_self && sender->state != GSP_ALIVE) {
        /* the sender talks to us while we think it suspect/dead: tell it,
         * so it refutes at once */
        member_to_pb(sender, sender->state == GSP_LEFT ? GSP_DEAD
                                                        : sender->state,
                     &c->self->id, false, &rec);
        extra = &rec;
    }
    send_packet(c, to, to_id, &hdr, extra);
}

static void handle_ping_req(gsp_core *c, const Pmgcm__Gossip__PingReq *pr,
                            const gsp_addr *requester,
                            const gsp_id *requester_id)
{
    gsp_addr ta;
    if (pb_addr(&pr->ip, pr->port, &ta)) return;
    relay *r = NULL;
    for (size_t i = 0; i < RELAY_MAX; i++) {
        if (!c->relays[i].used) {
            r = &c->relays[i];
            break;
        }
    }
    if (!r) {
        c->st.drop_other++;
        return;
    }
    r->used = true;
    r->my_seq = ++c->seq;
    r->their_seq = pr->seq;
    r->requester = *requester;
    r->requester_id = *requester_id;
    r->deadline = c->now + c->cfg.probe_timeout_ms;
    member tmp;
    memset(&tmp, 0, sizeof(tmp));
    memcpy(tmp.id.b, pr->target.data, GSP_ID_LEN);
    r->target = tmp.id;
    member *t = find(c, &tmp.id);
    send_ping(c, t ? t : &tmp, r->my_seq, true, &ta);
}

/* Was id asked to ping the current probe's target for us? */
static bool probe_relay(const gsp_core *c, const gsp_id *id)
{
    for (uint32_t i = 0; i < c->probe.n_relays; i++)
        if (id_eq(&c->probe.relays[i], id)) return true;
    return false;
}

/* What one received packet is, once opened and checked: the handlers below
 * take it apart, one message kind each (memberlist's net.go shape). */
typedef struct rx {
    const PbPacket *p;
    const gsp_addr *from;
    gsp_id sid;     /* the sender's id */
    member *sender; /* NULL: not (yet) a member */
    const upd *us;  /* p->n_updates decoded records */
} rx;

/* Decrypt (with a keyring) and unpack pkt. On success *out is the packet
 * (free with pmgcm__gossip__packet__free_unpacked(*out, *alp)) and *scp
 * the scratch it lives in (sc_give). GSP_ETOOBIG, GSP_EDECRYPT,
 * GSP_EDECODE. */
static int rx_open(gsp_core *c, const uint8_t *pkt, size_t len,
                   ProtobufCAllocator *al, ProtobufCAllocator **alp,
                   scratch **scp, PbPacket **out)
{
    if (len > c->rx_cap) {
        c->st.drop_toobig++;
        return GSP_ETOOBIG;
    }
    const uint8_t *plain = pkt;
    size_t plen = len;
    if (c->kr) {
        if (gsp_open(c->kr, pkt, len, c->rxbuf, c->rx_cap, &plen)) {
            c->st.drop_decrypt++;
            return GSP_EDECRYPT;
        }
        plain = c->rxbuf;
    }
    *alp = al;
    *scp = sc_take(c, al);
    if (!*scp) *alp = NULL;
    *out = pmgcm__gossip__packet__unpack(*alp, plen, plain);
    if (!*out) {
        sc_give(*scp);
        c->st.drop_decode++;
        return GSP_EDECODE;
    }
    return 0;
}

/* Is the packet well-formed, from another node, addressed to us, and not a
 * replay? 0 or the GSP_E* code (counted). */
static int rx_check(gsp_core *c, const PbPacket *p, gsp_id *sid)
{
    if (p->from.len != GSP_ID_LEN ||
        (p->ping && p->ping->target.len != GSP_ID_LEN) ||
        (p->ping_req && p->ping_req->target.len != GSP_ID_LEN) ||
        (p->has_to && p->to.len != GSP_ID_LEN)) {
        c->st.drop_decode++;
        return GSP_EDECODE;
    }
    if (!memcmp(p->from.data, c->self->id.b, GSP_ID_LEN)) {
        c->st.drop_self++;
        return GSP_ESELF;
    }
    if (!p->has_to || memcmp(p->to.data, c->self->id.b, GSP_ID_LEN)) {
        /* for another node (recorded on its way there), or unaddressed */
        c->st.drop_misdirected++;
        return GSP_EMISDIRECTED;
    }
    memcpy(sid->b, p->from.data, GSP_ID_LEN);
    member *sender = find(c, sid);
    if (p->has_seq &&
        rwin_replayed(sender ? &sender->rw_udp : NULL, p->gen, p->seq)) {
        c->st.drop_replay++;
        return GSP_EREPLAY;
    }
    return 0;
}

/* Decode every membership record and user message into us[] (p->n_updates
 * slots) before applying any: one bad record drops the whole packet. */
static int rx_decode(gsp_core *c, const PbPacket *p, upd *us)
{
    for (size_t i = 0; i < p->n_updates; i++)
        if (pb_to_upd(p->updates[i], &us[i])) {
            c->st.drop_decode++;
            return GSP_EDECODE;
        }
    for (size_t i = 0; i < p->n_user; i++)
        if (check_user(p->user[i])) {
            c->st.drop_decode++;
            return GSP_EDECODE;
        }
    return 0;
}

/* Records first: a refutation riding on an ack must count. */
static void rx_apply(gsp_core *c, const rx *r)
{
    const PbPacket *p = r->p;
    for (size_t i = 0; i < p->n_updates; i++) apply_update(c, &r->us[i]);
    for (size_t i = 0; i < p->n_user; i++)
        apply_user(c, p->user[i]->key, p->user[i]->version,
                   p->user[i]->data.data, p->user[i]->data.len, false);
}

/* A suspect/dead record older than the alive one we hold: the sender
 * missed a refutation (gossip reaches everyone only with high probability)
 * and its suspicion timer would declare a live node dead. Answer it with
 * the newer record. */
static void rx_correct_stale(gsp_core *c, const rx *r)
{
    for (size_t i = 0; i < r->p->n_updates && !c->leaving; i++) {
        const upd *u = &r->us[i];
        if (u->state != GSP_SUSPECT && u->state != GSP_DEAD) continue;
        member *m = find(c, &u->id);
        if (m && m->state == GSP_ALIVE && gsp_inc_cmp(u->inc, m->inc) < 0) {
            PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
            PbMember rec;
            member_to_pb(m, GSP_ALIVE, NULL, false, &rec);
            send_packet(c, r->from, &r->sid, &hdr, &rec);
            break;
        }
    }
}

/* A ping for us: ack it. */
static void rx_ping(gsp_core *c, const rx *r)
{
    if (!memcmp(r->p->ping->target.data, c->self->id.b, GSP_ID_LEN)) {
        ping_is_check(c, r->sender);
        send_ack(c, r->from, &r->sid, r->p->ping->seq, r->sender);
    }
}

/* A member we hold suspect or dead talks to us (not with a ping: send_ack
 * does this for pings): tell it, so it refutes (or corrects us if we
 * missed its refutation); not if its packet carried a record about us,
 * which already is such a notice (no ping-pong). */
static void rx_notify_suspected(gsp_core *c, const rx *r)
{
    member *s = r->sender;
    if (!s || (s->state != GSP_SUSPECT && s->state != GSP_DEAD) ||
        c->leaving)
        return;
    for (size_t i = 0; i < r->p->n_updates; i++)
        if (id_eq(&r->us[i].id, &c->self->id)) return;
    PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
    PbMember rec;
    member_to_pb(s, s->state, &c->self->id, false, &rec);
    send_packet(c, r->from, &r->sid, &hdr, &rec);
}

/* An ack: of our probe (only the node probed, or a relay we asked, can
 * vouch), of a probe that already failed (its target answered after all),
 * or of a ping we relay for another member (passed back to it). */
static void rx_ack(gsp_core *c, const rx *r)
{
    uint32_t seq = r->p->ack->seq;
    if (c->probe.active && seq == c->probe.seq) {
        if (id_eq(&r->sid, &c->probe.target) || probe_relay(c, &r->sid))
            finish_probe(c, true);
        else
            c->st.acks_ignored++;
        return;
    }
    if (verify_ack(c, seq, &r->sid)) return;
    for (size_t i = 0; i < RELAY_MAX; i++) {
        relay *rl = &c->relays[i];
        if (!rl->used || rl->my_seq != seq) continue;
        if (!id_eq(&r->sid, &rl->target)) {
            c->st.acks_ignored++;
            return;
        }
        rl->used = false;
        PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
        Pmgcm__Gossip__Ack ack = PMGCM__GOSSIP__ACK__INIT;
        ack.seq = rl->their_seq;
        hdr.ack = &ack;
        send_packet(c, &rl->requester, &rl->requester_id, &hdr, NULL);
        return;
    }
}

/* A nack from a relay we asked: counted for Lifeguard's awareness. */
static void rx_nack(gsp_core *c, const rx *r)
{
    if (!c->probe.active || r->p->nack->seq != c->probe.seq) return;
    if (probe_relay(c, &r->sid))
        c->probe.nacks++;
    else
        c->st.acks_ignored++;
}

static void rx_ping_req(gsp_core *c, const rx *r)
{
    handle_ping_req(c, r->p->ping_req, r->from, &r->sid);
}

/* One packet may carry several message kinds (records on everything; an
 * ack with a ping from nodes before the probe schedule, which coupled their
 * next probe so): each present kind goes to its handler, in this order. */
static bool has_ping(const PbPacket *p) { return p->ping != NULL; }
static bool no_ping(const PbPacket *p) { return p->ping == NULL; }
static bool has_ack(const PbPacket *p) { return p->ack != NULL; }
static bool has_nack(const PbPacket *p) { return p->nack != NULL; }
static bool has_ping_req(const PbPacket *p) { return p->ping_req != NULL; }

static const struct {
    bool (*present)(const PbPacket *p);
    void (*handle)(gsp_core *c, const rx *r);
} rx_handlers[] = {
    {has_ping, rx_ping},
    {no_ping, rx_notify_suspected},
    {has_ack, rx_ack},
    {has_nack, rx_nack},
    {has_ping_req, rx_ping_req},
};

int gsp_core_recv(gsp_core *c, uint64_t now_ms, const gsp_addr *from,
                  const uint8_t *pkt, size_t len)
{
    if (now_ms > c->now) c->now = now_ms;
    c->st.udp_in++;
    c->st.bytes_in += len;
    ProtobufCAllocator al, *alp = NULL;
    scratch *sc = NULL;
    PbPacket *p = NULL;
    int rc = rx_open(c, pkt, len, &al, &alp, &sc, &p);
    if (rc) return rc;
    rx r = {.p = p, .from = from};
    upd *us = NULL;
    rc = rx_check(c, p, &r.sid);
    if (rc) goto done;
    size_t nu = p->n_updates ? p->n_updates : 1;
    /* (sc_alloc's memory goes with the scratch: see done) */
    us = alp ? sc_alloc(sc, nu * sizeof(*us)) : malloc(nu * sizeof(*us));
    if (!us) {
        rc = -ENOMEM;
        goto done;
    }
    rc = rx_decode(c, p, us);
    if (rc) goto done;
    r.us = us;
    rx_apply(c, &r);
    rx_correct_stale(c, &r);
    /* the packet may have introduced its sender: record its seq now */
    r.sender = find(c, &r.sid);
    if (r.sender && p->has_seq) rwin_mark(&r.sender->rw_udp, p->gen, p->seq);
    for (size_t i = 0; i < sizeof(rx_handlers) / sizeof(rx_handlers[0]); i++)
        if (rx_handlers[i].present(p)) rx_handlers[i].handle(c, &r);
    /* awake anyway: a probe due soon starts now */
    if (probe_due_soon(c)) start_probe(c, sched_reply(c));
done:
    if (!alp) free(us);
    pmgcm__gossip__packet__free_unpacked(p, alp);
    sc_give(sc);
    return rc;
}

/* ---- timers ------------------------------------------------------------- */

static void gossip_round(gsp_core *c)
{
    if (!c->mq.n && !c->uq.n) return;
    uint32_t want = c->cfg.gossip_nodes, sent = 0;
    size_t n = c->n_members;
    member *picked[16];
    if (want > 16) want = 16;
    for (size_t tries = 0; sent < want && tries < 4 * n + 8 && n; tries++) {
        member *m = c->members[rnd_below(c, n)];
        if (m->is_self) continue;
        bool ok = m->state == GSP_ALIVE || m->state == GSP_SUSPECT ||
                  (m->state == GSP_DEAD &&
                   c->now - m->state_since < GOSSIP_TO_DEAD_MS);
        if (!ok) continue;
        bool dup = false;
        for (uint32_t i = 0; i < sent; i++) dup |= picked[i] == m;
        if (dup) continue;
        picked[sent++] = m;
        PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
        PbMember buddy;
        /* buddy system, as on probes: tell a suspect we suspect it, so it
         * refutes, or corrects us if it already refuted (we missed it) */
        if (m->state == GSP_SUSPECT)
            member_to_pb(m, GSP_SUSPECT, &c->self->id, false, &buddy);
        send_packet(c, maddr(m), &m->id, &hdr,
                    m->state == GSP_SUSPECT ? &buddy : NULL);
        if (!c->mq.n && !c->uq.n) break;
    }
}

static uint64_t pushpull_interval(const gsp_core *c)
{
    size_t n = live_count(c);
    uint64_t iv = c->cfg.pushpull_interval_ms;
    if (n > 32) iv *= (uint64_t)(ceil_log2(n) - 5) + 1;
    return iv;
}

static member *random_member(gsp_core *c, gsp_state s)
{
    size_t n = c->n_members;
    if (!c->n_by_state[s] || (s == GSP_ALIVE && c->n_by_state[s] < 2))
        return NULL;
    for (size_t tries = 0; tries < 4 * n + 8; tries++) {
        member *m = c->members[rnd_below(c, n)];
        if (!m->is_self && m->state == s) return m;
    }
    for (size_t i = 0; i < n; i++)
        if (!c->members[i]->is_self && c->members[i]->state == s)
            return c->members[i];
    return NULL;
}

static bool addr_is_live(const gsp_core *c, const gsp_addr *a)
{
    for (size_t i = 0; i < c->n_members; i++) {
        const member *m = c->members[i];
        if ((m->state == GSP_ALIVE || m->state == GSP_SUSPECT) &&
            gsp_addr_eq(maddr(m), a))
            return true;
    }
    return false;
}

static void rejoin_round(gsp_core *c)
{
    if (c->leaving) return;
    bool alone = live_count(c) <= 1;
    if (alone) {
        /* nobody alive: contact every seed */
        for (size_t i = 0; i < c->n_seeds; i++)
            if (!gsp_addr_eq(&c->seeds[i], maddr(c->self)))
                start_pushpull(c, &c->seeds[i], NULL, true);
    }
    /* one random dead member or seed that is not alive */
    size_t cand = c->n_by_state[GSP_DEAD] + c->n_seeds;
    if (!cand) return;
    size_t pick = (size_t)rnd_below(c, cand);
    if (pick < c->n_by_state[GSP_DEAD]) {
        member *m = random_member(c, GSP_DEAD);
        if (m) start_pushpull(c, maddr(m), &m->id, true);
    } else if (!alone) {
        const gsp_addr *a = &c->seeds[pick - c->n_by_state[GSP_DEAD]];
        if (!gsp_addr_eq(a, maddr(c->self)) && !addr_is_live(c, a))
            start_pushpull(c, a, NULL, true);
    }
}

static void reap(gsp_core *c)
{
    for (size_t i = c->n_members; i-- > 0;) {
        member *m = c->members[i];
        uint64_t age = c->now - m->state_since;
        if ((m->state == GSP_DEAD && c->cfg.reap_dead_ms &&
             age >= c->cfg.reap_dead_ms) ||
            (m->state == GSP_LEFT && c->cfg.reap_left_ms &&
             age >= c->cfg.reap_left_ms)) {
            if (c->probe.active && id_eq(&c->probe.target, &m->id))
                c->probe.active = false;
            remove_member(c, m);
        }
    }
}

void gsp_core_set_wallclock(gsp_core *c, uint64_t now_ms, uint64_t wall_ms)
{
    if (!c) return;
    if (now_ms > c->now) c->now = now_ms;
    /* both below 2^62 in any real use: no overflow */
    c->wall_off = (int64_t)(wall_ms & (UINT64_MAX >> 2)) -
                  (int64_t)(now_ms & (UINT64_MAX >> 2));
}

void gsp_core_tick(gsp_core *c, uint64_t now)
{
    if (now > c->now) c->now = now;
    now = c->now;

    /* suspicion timeouts */
    for (size_t i = c->n_susp; i-- > 0;) {
        if (i >= c->n_susp) continue;
        member *m = c->susp[i].m;
        if (c->susp[i].deadline <= now) {
            gsp_state old = (gsp_state)m->state;
            set_state(c, m, GSP_DEAD);
            c->st.deaths_declared++;
            queue_member(c, m, GSP_DEAD, &c->self->id);
            gossip_soon(c);
            tighten(c);
            notify(c, m, old, false);
        }
    }

    if (c->mq.settled) {
        /* the members that joined lately have been announced: sync with
         * a peer soon to catch the announcements we missed (the joins of a
         * mass start overlap, and a node not yet known to many is sent
         * few of them) */
        c->mq.settled = false;
        uint64_t g = c->cfg.gossip_interval_ms;
        uint64_t t = now + 5 * g + rnd_below(c, 10 * g);
        if (t < c->next_pushpull) c->next_pushpull = t;
        /* and once more when the whole wave has surely spread: a node
         * that missed an announcement has no other sign of it */
        c->sync_late = now + 50 * g + rnd_below(c, 50 * g);
    }

    /* indirect-probe relays that got no ack: nack the requester */
    for (size_t i = 0; i < RELAY_MAX; i++) {
        relay *r = &c->relays[i];
        if (r->used && r->deadline <= now) {
            r->used = false;
            PbPacket hdr = PMGCM__GOSSIP__PACKET__INIT;
            Pmgcm__Gossip__Nack nack = PMGCM__GOSSIP__NACK__INIT;
            nack.seq = r->their_seq;
            hdr.nack = &nack;
            send_packet(c, &r->requester, &r->requester_id, &hdr, NULL);
        }
    }

    if (!c->leaving) {
        if (c->probe.active) {
            member *t = find(c, &c->probe.target);
            if (!t || t->state == GSP_DEAD || t->state == GSP_LEFT) {
                c->probe.active = false;
                c->next_probe = now;
            } else {
                if (!c->probe.indirect_sent && now >= c->probe.direct_deadline)
                    indirect_probe(c);
                if (now >= c->probe.end_deadline) finish_probe(c, false);
            }
        }
        verify_tick(c);
        if (!c->probe.active && now >= c->next_probe) start_probe(c, 0);
    }

    if (now >= c->next_gossip) {
        gossip_round(c);
        c->next_gossip = now + c->cfg.gossip_interval_ms;
    }
    if (now >= c->next_pushpull) {
        member *m = c->leaving ? NULL : random_member(c, GSP_ALIVE);
        if (m) start_pushpull(c, maddr(m), &m->id, false);
        c->next_pushpull = now + pushpull_interval(c);
        if (c->sync_late) {
            if (c->sync_late > now && c->sync_late < c->next_pushpull)
                c->next_pushpull = c->sync_late;
            if (c->sync_late <= now || c->next_pushpull == c->sync_late)
                c->sync_late = 0;
        }
    }
    if (now >= c->next_rejoin) {
        rejoin_round(c);
        uint64_t iv = c->cfg.rejoin_interval_ms;
        if (live_count(c) <= 1 && c->n_seeds) {
            /* alone (first start before the seeds were up, or isolated):
             * try again soon, backing off 1 s, 2 s, 4 s ... up to the
             * configured interval */
            c->alone_backoff_ms = c->alone_backoff_ms
                                      ? c->alone_backoff_ms * 2 : 1000;
            if (c->alone_backoff_ms < iv) iv = c->alone_backoff_ms;
        } else {
            c->alone_backoff_ms = 0;
        }
        c->next_rejoin = now + iv;
    }
    if ((c->cfg.reap_dead_ms || c->cfg.reap_left_ms) && now >= c->next_reap) {
        reap(c);
        c->next_reap = now + 1000;
    }
}

uint64_t gsp_core_next_deadline(const gsp_core *c)
{
    uint64_t d = c->next_pushpull;
    if (c->next_rejoin < d) d = c->next_rejoin;
    if (!c->leaving) {
        if (c->probe.active) {
            if (!c->probe.indirect_sent && c->probe.direct_deadline < d)
                d = c->probe.direct_deadline;
            if (c->probe.end_deadline < d) d = c->probe.end_deadline;
        } else if (c->next_probe < d) {
            d = c->next_probe;
        }
        if (c->verify.active) {
            if (!c->verify.second_sent && c->verify.second_at < d)
                d = c->verify.second_at;
            if (c->verify.deadline < d) d = c->verify.deadline;
        }
    }
    if ((c->mq.n || c->uq.n) && c->next_gossip < d) d = c->next_gossip;
    for (size_t i = 0; i < c->n_susp; i++)
        if (c->susp[i].deadline < d) d = c->susp[i].deadline;
    for (size_t i = 0; i < RELAY_MAX; i++)
        if (c->relays[i].used && c->relays[i].deadline < d)
            d = c->relays[i].deadline;
    if ((c->cfg.reap_dead_ms || c->cfg.reap_left_ms) && c->next_reap < d)
        d = c->next_reap;
    return d;
}

/* ---- public API --------------------------------------------------------- */

int gsp_core_new(gsp_core **out, const gsp_config *cfg, const gsp_id *self,
                 const char *name, const gsp_addr *addr, uint64_t gen,
                 gsp_keyring *keyring, uint64_t seed, uint64_t now_ms,
                 const gsp_callbacks *cb)
{
    *out = NULL;
    if (!cfg || !self || !name || !addr || !addr->family ||
        !printable(name, GSP_NAME_MAX) || cfg->packet_size < 256 ||
        cfg->packet_size > 65000 || cfg->probe_interval_ms == 0 ||
        cfg->probe_timeout_ms == 0 || cfg->gossip_interval_ms == 0 ||
        cfg->pushpull_interval_ms == 0 || cfg->rejoin_interval_ms == 0 ||
        cfg->user_share_pct > 100 || cfg->max_stream_bytes < 4096)
        return -EINVAL;
    gsp_core *c = calloc(1, sizeof(*c));
    if (!c) return -ENOMEM;
    c->cfg = *cfg;
    if (cb) c->cb = *cb;
    c->kr = keyring;
    c->rng = seed ^ 0x5851f42d4c957f2dULL;
    c->now = now_ms;
    c->rx_cap = cfg->packet_size + GSP_SEAL_OVERHEAD + UDP_SLACK;
    c->pkt = malloc(cfg->packet_size);
    c->rxbuf = malloc(c->rx_cap);
    if (!c->pkt || !c->rxbuf || ht_rebuild(c, 8)) {
        gsp_core_free(c);
        return -ENOMEM;
    }
    member *m = add_member(c, self, GSP_ALIVE, (gsp_inc){gen, 0}, addr, name,
                           NULL, 0);
    if (!m) {
        gsp_core_free(c);
        return -ENOMEM;
    }
    m->is_self = true;
    c->self = m;
    /* the first tick looks for our slot (nobody to probe yet) */
    c->next_probe = now_ms + rnd_below(c, probe_iv(c));
    c->next_gossip = now_ms + cfg->gossip_interval_ms;
    c->next_pushpull = now_ms + cfg->pushpull_interval_ms / 2 +
                       rnd_below(c, cfg->pushpull_interval_ms);
    c->next_rejoin = now_ms + cfg->rejoin_interval_ms;
    c->next_reap = now_ms + 1000;
    *out = c;
    return 0;
}

void gsp_core_free(gsp_core *c)
{
    if (!c) return;
    bq_clear(&c->mq);
    bq_clear(&c->uq);
    for (size_t i = 0; i < c->n_members; i++) member_release(c->members[i]);
    for (size_t i = 0; i < c->n_chunks; i++) free(c->chunks[i]);
    free(c->chunks);
    free(c->slab_free);
    free(c->members);
    free(c->ht);
    free(c->ring);
    free(c->susp);
    sc_release(&c->own_sc);
    for (size_t i = 0; i < c->n_users; i++) free(c->users[i].data);
    free(c->users);
    free(c->seeds);
    free(c->streams);
    gsp_out o;
    while (gsp_core_pop_out(c, &o)) free(o.data);
    free(c->outq);
    free(c->pkt);
    free(c->rxbuf);
    free(c);
}

int gsp_core_set_pool(gsp_core *c, gsp_pool *pool)
{
    if (c->pool == pool) return 0;
    if (c->n_members > 1 || c->mq.n || c->uq.n) return -EBUSY;
    member *s = c->self;
    gsp_pool *old = c->pool;
    c->pool = pool;
    const arec *r = s->rec;
    arec *keep = s->rec;
    keep->refs++;
    int rc = member_set_rec(c, s, &r->addr, AREC_NAME(r), AREC_META(r),
                            r->meta_len);
    arec_unref(keep);
    if (rc) c->pool = old;
    return rc;
}

int gsp_core_set_meta(gsp_core *c, uint64_t now_ms, const uint8_t *meta,
                      size_t len)
{
    if (len > GSP_META_MAX) return -E2BIG;
    if (now_ms > c->now) c->now = now_ms;
    member *s = c->self;
    const arec *r = s->rec;
    if (len == r->meta_len && (!len || !memcmp(AREC_META(r), meta, len)))
        return 0;
    s->inc.ver++;
    if (member_set_rec(c, s, &r->addr, AREC_NAME(r), meta, len)) {
        s->inc.ver--;
        return -ENOMEM;
    }
    queue_member(c, s, GSP_ALIVE, NULL);
    return 0;
}

int gsp_core_join(gsp_core *c, uint64_t now_ms, const gsp_addr *addrs,
                  size_t n)
{
    if (now_ms > c->now) c->now = now_ms;
    for (size_t i = 0; i < n; i++)
        if (!gsp_addr_eq(&addrs[i], maddr(c->self)))
            start_pushpull(c, &addrs[i], NULL, true);
    return 0;
}

int gsp_core_set_seeds(gsp_core *c, const gsp_addr *addrs, size_t n)
{
    gsp_addr *s = NULL;
    if (n) {
        s = malloc(n * sizeof(*s));
        if (!s) return -ENOMEM;
        memcpy(s, addrs, n * sizeof(*s));
    }
    free(c->seeds);
    c->seeds = s;
    c->n_seeds = n;
    c->alone_backoff_ms = 0;
    if (n && live_count(c) <= 1 && c->next_rejoin > c->now + 1000)
        c->next_rejoin = c->now + 1000;
    return 0;
}

int gsp_core_leave(gsp_core *c, uint64_t now_ms)
{
    if (now_ms > c->now) c->now = now_ms;
    if (c->leaving) return 0;
    c->leaving = true;
    member *s = c->self;
    s->inc.ver++;
    set_state(c, s, GSP_LEFT);
    queue_member(c, s, GSP_LEFT, &s->id);
    /* push it out now rather than at the next gossip tick */
    c->next_gossip = c->now;
    return 0;
}

int gsp_core_unleave(gsp_core *c, uint64_t now_ms)
{
    if (now_ms > c->now) c->now = now_ms;
    if (!c->leaving) return -EALREADY;
    c->leaving = false;
    member *s = c->self;
    s->inc.ver++;
    set_state(c, s, GSP_ALIVE);
    queue_member(c, s, GSP_ALIVE, NULL);
    c->next_probe = c->now;
    return 0;
}

int gsp_core_broadcast(gsp_core *c, uint32_t key, uint64_t version,
                       const uint8_t *data, size_t len)
{
    if (len > GSP_META_MAX) return -E2BIG;
    for (size_t i = 0; i < c->n_users; i++)
        if (c->users[i].key == key && c->users[i].version >= version)
            return -EALREADY;
    apply_user(c, key, version, data, len, true);
    return 0;
}

void gsp_core_foreach(gsp_core *c, int (*fn)(void *, const gsp_member *),
                      void *ud)
{
    gsp_member v;
    for (size_t i = 0; i < c->n_members; i++) {
        to_view(c->members[i], &v);
        if (fn(ud, &v)) return;
    }
}

int gsp_core_get(gsp_core *c, const gsp_id *id, gsp_member *out)
{
    member *m = find(c, id);
    if (!m) return -ENOENT;
    to_view(m, out);
    return 0;
}

size_t gsp_core_count(const gsp_core *c, int mask)
{
    size_t n = 0;
    for (int s = 0; s < 4; s++)
        if (mask & (1 << s)) n += c->n_by_state[s];
    return n;
}

size_t gsp_core_pending_updates(const gsp_core *c)
{
    return c->mq.n + c->uq.n;
}

uint32_t gsp_core_health(const gsp_core *c)
{
    return c->awareness;
}

void gsp_core_stats(const gsp_core *c, gsp_stats *out)
{
    *out = c->st;
}

const gsp_config *gsp_core_config(const gsp_core *c)
{
    return &c->cfg;
}
