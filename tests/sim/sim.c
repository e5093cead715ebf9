/*
 * sim.c - deterministic simulator for the gossip core: virtual clock,
 * virtual network, node faults. See sim.h for the model.
 *
 * Scheduling: two binary heaps. Messages (datagrams, stream steps) sit in a
 * heap ordered by (time, sequence number); node timers sit in an indexed
 * heap keyed by each core's gsp_core_next_deadline (one entry per node,
 * re-keyed after every call into that core). The clock jumps to the smaller
 * of the two tops; on a tie the message goes first. Every random decision
 * comes from one xoshiro256** stream seeded from opts.seed, in event order,
 * so a run is a pure function of (seed, scenario).
 */
#include "tests/sim/sim.h"
#include "gossip/gossip.pb-c.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PORT 7946
#define NO_POS UINT32_MAX
#define TCP_MSS 1448
#define SYN_RTO_US 1000000u
#define DATA_RTO_US 200000u

enum { EV_UDP = 1, EV_SREQ, EV_SREP, EV_SFAIL, EV_STMO };

typedef struct stream_rec {
    uint32_t src, src_life;
    uint64_t req_id;
    uint64_t timeout_at;
    int refs;
    bool resolved;
} stream_rec;

typedef struct ev ev;
struct ev {
    ev *next; /* free list / backlog */
    uint8_t kind;
    uint32_t src, dst;
    uint32_t dst_ver; /* UDP/SREQ: the address version it was sent to */
    gsp_addr from;
    uint8_t *data;
    size_t len;
    stream_rec *st;
};

typedef struct hent {
    uint64_t t, seq;
    ev *e;
} hent;

typedef struct node {
    sim *s;
    uint32_t idx;
    gsp_core *core;
    gsp_keyring *kr;
    gsp_id id;
    uint32_t addr_ver;
    uint64_t gen;
    uint32_t life;
    bool up, paused;
    double loss_in, loss_out;
    uint32_t extra_us;
    int64_t skew_ms; /* its wall clock minus the virtual one */
    int group;
    ev *bl_head, *bl_tail;
    size_t bl_udp_bytes;
    uint64_t bytes_sent;
    uint64_t user_ver;
    uint64_t stuck_ms; /* ms + 1 of the last tick that left a due deadline */
    uint32_t stuck_run;
} node;

typedef struct link {
    uint64_t key;
    float loss;
    uint8_t cut;
    uint8_t used;
} link;

struct sim {
    sim_opts o;
    uint64_t rng[4];
    uint64_t now; /* us */
    uint64_t seq;
    uint64_t hash;

    node *nodes;
    size_t n, n_up;

    hent *mh;
    size_t mh_n, mh_cap;

    uint32_t *th;   /* heap of node indices */
    uint32_t *tpos; /* node -> heap position */
    uint64_t *tkey;
    size_t th_n;

    ev *ev_free;

    link *links;
    size_t links_cap, links_n;
    bool partitioned;

    uint32_t *cnt;        /* [subj*4 + state] */
    uint64_t *first_mark; /* [subj*4 + state], ms */

    uint32_t watch_key;
    bool watching;

    uint8_t key0[GSP_KEY_LEN];
    gsp_pool *pool; /* member records shared by every core */

    sim_counters c;
    bool have_false_dead;
    uint64_t fd_t;
    size_t fd_obs, fd_subj;

    sim_change_fn hook;
    void *hook_ud;
    sim_udp_fn udp_hook;
    void *udp_hook_ud;
};

/* ---- PRNG (xoshiro256**) and hashing ------------------------------------- */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rnd(sim *s)
{
    uint64_t *r = s->rng;
    uint64_t res = rotl(r[1] * 5, 7) * 9;
    uint64_t t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = rotl(r[3], 45);
    return res;
}

static double rnd_double(sim *s)
{
    return (double)(rnd(s) >> 11) * (1.0 / 9007199254740992.0);
}

static bool chance(sim *s, double p)
{
    return p > 0 && rnd_double(s) < p;
}

static inline uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdULL;
    return h ^ (h >> 33);
}

static uint64_t hash_bytes(const uint8_t *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        h = (h ^ v) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    uint64_t v = 0;
    for (; i < len; i++) v = v << 8 | p[i];
    return mix(h, v);
}

void sim_hash_mix(sim *s, uint64_t v)
{
    s->hash = mix(s->hash, v);
}

/* ---- options, addresses -------------------------------------------------- */

void sim_opts_default(sim_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->seed = 1;
    o->max_nodes = 100;
    gsp_config_default(&o->cfg);
    o->lat_us = 300;
    o->jitter_us = 200;
    o->jitter_kind = SIM_JITTER_UNIFORM;
    o->udp_rcvbuf = 212992;
    o->n_seeds = 3;
    o->join_seeds = 0;
    o->clock_skew_us = 5000;
}

static void make_addr(const node *nd, gsp_addr *a)
{
    memset(a, 0, sizeof(*a));
    a->family = 4;
    a->ip[0] = (uint8_t)(10 + nd->addr_ver);
    a->ip[1] = (uint8_t)(nd->idx >> 16);
    a->ip[2] = (uint8_t)(nd->idx >> 8);
    a->ip[3] = (uint8_t)nd->idx;
    a->port = PORT;
}

/* Maps an address to a node slot and the address version; -1 if none. */
static long resolve(const sim *s, const gsp_addr *a, uint32_t *ver)
{
    if (a->family != 4 || a->port != PORT || a->ip[0] < 10) return -1;
    size_t i = (size_t)a->ip[1] << 16 | (size_t)a->ip[2] << 8 | a->ip[3];
    if (i >= s->n) return -1;
    *ver = (uint32_t)a->ip[0] - 10;
    return (long)i;
}

static long id_to_idx(const sim *s, const gsp_id *id)
{
    size_t i = (size_t)id->b[0] << 24 | (size_t)id->b[1] << 16 |
               (size_t)id->b[2] << 8 | id->b[3];
    if (i >= s->n || memcmp(s->nodes[i].id.b, id->b, GSP_ID_LEN)) return -1;
    return (long)i;
}

/* ---- message heap ---------------------------------------------------------- */

static bool hless(const hent *a, const hent *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static ev *ev_new(sim *s)
{
    ev *e = s->ev_free;
    if (e) s->ev_free = e->next;
    else e = malloc(sizeof(*e));
    if (!e) abort();
    memset(e, 0, sizeof(*e));
    return e;
}

static void ev_release(sim *s, ev *e)
{
    free(e->data);
    e->data = NULL;
    if (e->st && --e->st->refs == 0) free(e->st);
    e->st = NULL;
    e->next = s->ev_free;
    s->ev_free = e;
}

static void mh_push(sim *s, uint64_t t, ev *e)
{
    if (s->mh_n == s->mh_cap) {
        size_t nc = s->mh_cap ? s->mh_cap * 2 : 4096;
        hent *h = realloc(s->mh, nc * sizeof(*h));
        if (!h) abort();
        s->mh = h;
        s->mh_cap = nc;
    }
    if (e->st) e->st->refs++;
    hent x = {.t = t, .seq = ++s->seq, .e = e};
    size_t i = s->mh_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&x, &s->mh[p])) break;
        s->mh[i] = s->mh[p];
        i = p;
    }
    s->mh[i] = x;
}

static hent mh_pop(sim *s)
{
    hent top = s->mh[0];
    hent x = s->mh[--s->mh_n];
    size_t i = 0, n = s->mh_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hent *best = &x;
        if (l < n && hless(&s->mh[l], best)) {
            m = l;
            best = &s->mh[l];
        }
        if (r < n && hless(&s->mh[r], best)) m = r;
        if (m == i) break;
        s->mh[i] = s->mh[m];
        i = m;
    }
    if (n) s->mh[i] = x;
    return top;
}

/* ---- timer heap (indexed) ------------------------------------------------ */

static bool tless(const sim *s, uint32_t a, uint32_t b)
{
    return s->tkey[a] < s->tkey[b] || (s->tkey[a] == s->tkey[b] && a < b);
}

static void th_swap(sim *s, size_t i, size_t j)
{
    uint32_t a = s->th[i], b = s->th[j];
    s->th[i] = b;
    s->th[j] = a;
    s->tpos[b] = (uint32_t)i;
    s->tpos[a] = (uint32_t)j;
}

static void th_up(sim *s, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!tless(s, s->th[i], s->th[p])) break;
        th_swap(s, i, p);
        i = p;
    }
}

static void th_down(sim *s, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->th_n && tless(s, s->th[l], s->th[m])) m = l;
        if (r < s->th_n && tless(s, s->th[r], s->th[m])) m = r;
        if (m == i) return;
        th_swap(s, i, m);
        i = m;
    }
}

static void timer_remove(sim *s, uint32_t n)
{
    uint32_t p = s->tpos[n];
    if (p == NO_POS) return;
    s->tpos[n] = NO_POS;
    s->th_n--;
    if (p != s->th_n) {
        uint32_t last = s->th[s->th_n];
        s->th[p] = last;
        s->tpos[last] = p;
        th_up(s, p);
        th_down(s, s->tpos[last]);
    }
}

static void timer_set(sim *s, uint32_t n, uint64_t t)
{
    uint32_t p = s->tpos[n];
    if (p == NO_POS) {
        s->tkey[n] = t;
        p = (uint32_t)s->th_n++;
        s->th[p] = n;
        s->tpos[n] = p;
        th_up(s, p);
        return;
    }
    uint64_t old = s->tkey[n];
    s->tkey[n] = t;
    if (t < old) th_up(s, p);
    else if (t > old) th_down(s, p);
}

/* ---- links --------------------------------------------------------------- */

static link *link_get(sim *s, size_t a, size_t b, bool create)
{
    uint64_t key = (uint64_t)a << 32 | b;
    if (s->links_cap) {
        size_t mask = s->links_cap - 1;
        uint64_t h = key * 0x9e3779b97f4a7c15ULL;
        for (size_t i = (size_t)(h >> 20) & mask;; i = (i + 1) & mask) {
            if (!s->links[i].used) break;
            if (s->links[i].key == key) return &s->links[i];
        }
    }
    if (!create) return NULL;
    if ((s->links_n + 1) * 2 > s->links_cap) {
        size_t nc = s->links_cap ? s->links_cap * 2 : 64;
        link *nl = calloc(nc, sizeof(*nl));
        if (!nl) abort();
        for (size_t j = 0; j < s->links_cap; j++) {
            if (!s->links[j].used) continue;
            uint64_t h = s->links[j].key * 0x9e3779b97f4a7c15ULL;
            size_t i = (size_t)(h >> 20) & (nc - 1);
            while (nl[i].used) i = (i + 1) & (nc - 1);
            nl[i] = s->links[j];
        }
        free(s->links);
        s->links = nl;
        s->links_cap = nc;
    }
    uint64_t h = key * 0x9e3779b97f4a7c15ULL;
    size_t i = (size_t)(h >> 20) & (s->links_cap - 1);
    while (s->links[i].used) i = (i + 1) & (s->links_cap - 1);
    s->links[i].used = 1;
    s->links[i].key = key;
    s->links[i].loss = 0;
    s->links[i].cut = 0;
    s->links_n++;
    return &s->links[i];
}

static bool blocked(sim *s, size_t a, size_t b)
{
    if (s->partitioned && s->nodes[a].group != s->nodes[b].group) return true;
    if (s->links_n) {
        link *l = link_get(s, a, b, false);
        if (l && l->cut) return true;
    }
    return false;
}

static double loss_prob(sim *s, size_t a, size_t b)
{
    double keep = (1.0 - s->o.loss) * (1.0 - s->nodes[a].loss_out) *
                  (1.0 - s->nodes[b].loss_in);
    if (s->links_n) {
        link *l = link_get(s, a, b, false);
        if (l) keep *= 1.0 - l->loss;
    }
    return 1.0 - keep;
}

static uint64_t one_way(sim *s, size_t a, size_t b)
{
    uint64_t d = s->o.lat_us + s->nodes[a].extra_us + s->nodes[b].extra_us;
    if (s->o.jitter_us) {
        if (s->o.jitter_kind == SIM_JITTER_EXP) {
            double u = rnd_double(s);
            double x = -log(1.0 - u) * s->o.jitter_us;
            if (x > 100.0 * s->o.jitter_us) x = 100.0 * s->o.jitter_us;
            d += (uint64_t)x;
        } else {
            d += rnd(s) % ((uint64_t)s->o.jitter_us + 1);
        }
    }
    return d;
}

/* Extra delay from TCP retransmissions of one flight. */
static uint64_t retrans(sim *s, double p, size_t segs, uint64_t rto0)
{
    if (p <= 0) return 0;
    if (segs > 8) segs = 8;
    uint64_t worst = 0;
    for (size_t i = 0; i < segs; i++) {
        uint64_t rto = rto0, extra = 0;
        for (int k = 0; k < 6 && chance(s, p); k++) {
            extra += rto;
            rto *= 2;
        }
        if (extra > worst) worst = extra;
    }
    return worst;
}

static uint64_t tcp_flight(sim *s, size_t a, size_t b, size_t len)
{
    size_t segs = (len + TCP_MSS - 1) / TCP_MSS;
    if (!segs) segs = 1;
    return one_way(s, a, b) + len / 125 /* 1 Gbit/s */ +
           retrans(s, loss_prob(s, a, b), segs, DATA_RTO_US);
}

/* ---- tracing ------------------------------------------------------------- */

static FILE *tout(sim *s)
{
    return s->o.trace_out ? s->o.trace_out : stdout;
}

static const char *kind_name(int k)
{
    switch (k) {
    case EV_UDP: return "udp";
    case EV_SREQ: return "tcp-req";
    case EV_SREP: return "tcp-reply";
    case EV_SFAIL: return "tcp-fail";
    case EV_STMO: return "tcp-timeout";
    }
    return "?";
}

static long id_to_idx(const sim *s, const gsp_id *id);

static void trace_member(sim *s, const Pmgcm__Gossip__Member *m)
{
    FILE *f = tout(s);
    gsp_id id;
    long i = -1;
    if (m->id.len == GSP_ID_LEN) {
        memcpy(id.b, m->id.data, GSP_ID_LEN);
        i = id_to_idx(s, &id);
    }
    fprintf(f, " %ld:%s(%llu.%llu", i,
            gsp_state_name((gsp_state)(m->state & 3)),
            (unsigned long long)m->gen, (unsigned long long)m->ver);
    if (m->has_from && m->from.len == GSP_ID_LEN) {
        memcpy(id.b, m->from.data, GSP_ID_LEN);
        fprintf(f, " by %ld", id_to_idx(s, &id));
    }
    fputc(')', f);
}

/* --trace: decodes a plaintext datagram or stream frame. */
static void trace_payload(sim *s, const ev *e)
{
    FILE *f = tout(s);
    if (s->o.keyring || !e->data) {
        fputc('\n', f);
        return;
    }
    if (e->kind == EV_UDP) {
        Pmgcm__Gossip__Packet *p =
            pmgcm__gossip__packet__unpack(NULL, e->len, e->data);
        if (!p) {
            fprintf(f, " (undecodable)\n");
            return;
        }
        if (p->ping) fprintf(f, " ping#%u%s", p->ping->seq,
                             p->ping->indirect ? "(indirect)" : "");
        if (p->ack) fprintf(f, " ack#%u", p->ack->seq);
        if (p->nack) fprintf(f, " nack#%u", p->nack->seq);
        if (p->ping_req) fprintf(f, " ping-req#%u", p->ping_req->seq);
        for (size_t i = 0; i < p->n_updates; i++)
            trace_member(s, p->updates[i]);
        for (size_t i = 0; i < p->n_user; i++)
            fprintf(f, " user(%u v%llu)", p->user[i]->key,
                    (unsigned long long)p->user[i]->version);
        pmgcm__gossip__packet__free_unpacked(p, NULL);
    } else {
        Pmgcm__Gossip__Stream *p =
            pmgcm__gossip__stream__unpack(NULL, e->len, e->data);
        if (!p) {
            fprintf(f, " (undecodable)\n");
            return;
        }
        fprintf(f, " kind=%d%s members=%zu user=%zu", (int)p->kind,
                p->join ? " join" : "", p->n_members, p->n_user);
        pmgcm__gossip__stream__free_unpacked(p, NULL);
    }
    fputc('\n', f);
}

/* opts.check_wire: one datagram must not carry the same user record twice
 * (each copy costs a retransmission). */
static void check_wire(sim *s, const ev *e)
{
    Pmgcm__Gossip__Packet *p =
        pmgcm__gossip__packet__unpack(NULL, e->len, e->data);
    if (!p) return;
    for (size_t i = 0; i < p->n_user; i++)
        for (size_t j = 0; j < i; j++)
            if (p->user[i]->key == p->user[j]->key &&
                p->user[i]->version == p->user[j]->version) {
                s->c.wire_dup_user++;
                i = p->n_user;
                break;
            }
    pmgcm__gossip__packet__free_unpacked(p, NULL);
}

static void hash_event(sim *s, const ev *e, uint32_t src, uint32_t dst)
{
    uint64_t h = mix(s->now, e->kind);
    h = mix(h, (uint64_t)src << 32 | dst);
    h = mix(h, e->len);
    /* sealed bytes carry random nonces: only plaintext is hashed by value */
    if (e->data && !s->o.keyring) h = mix(h, hash_bytes(e->data, e->len));
    s->hash = mix(s->hash, h);
    if (s->o.trace)
    {
        fprintf(tout(s), "%12.6f %-11s %u -> %u len=%zu", s->now / 1e6,
                kind_name(e->kind), src, dst, e->len);
        trace_payload(s, e);
    }
}

/* ---- callbacks ------------------------------------------------------------- */

static void on_member(void *ud, const gsp_member *m, gsp_state old, bool is_new)
{
    node *obs = ud;
    sim *s = obs->s;
    s->c.changes++;
    long subj = id_to_idx(s, &m->id);
    gsp_state st = m->state;
    s->hash = mix(s->hash, mix(s->now, (uint64_t)obs->idx << 32 |
                                           (uint32_t)subj));
    s->hash = mix(s->hash, (uint64_t)st << 8 | (uint64_t)old << 1 | is_new);
    if (s->o.trace)
        fprintf(tout(s), "%12.6f view %u: node %ld %s%s -> %s\n",
                s->now / 1e6, obs->idx, subj, is_new ? "new " : "",
                gsp_state_name(old), gsp_state_name(st));
    if (subj < 0 || (unsigned)st > GSP_LEFT) return;
    uint32_t *c = &s->cnt[(size_t)subj * 4];
    if (is_new) {
        c[st]++;
    } else if (old != st) {
        c[old]--;
        c[st]++;
    }
    if (is_new || old != st) {
        uint64_t *fm = &s->first_mark[(size_t)subj * 4 + st];
        if (*fm == UINT64_MAX) *fm = s->now / 1000;
        if (s->nodes[subj].up) {
            if (st == GSP_DEAD) {
                s->c.dead_marks_up++;
                if (!s->have_false_dead) {
                    s->have_false_dead = true;
                    s->fd_t = s->now / 1000;
                    s->fd_obs = obs->idx;
                    s->fd_subj = (size_t)subj;
                }
            } else if (st == GSP_SUSPECT) {
                s->c.suspect_marks_up++;
            }
        }
    }
    if (s->hook)
        s->hook(s->hook_ud, s, obs->idx, (size_t)subj, old, st, is_new);
}

static void on_user(void *ud, uint32_t key, uint64_t version,
                    const uint8_t *data, size_t len)
{
    node *nd = ud;
    sim *s = nd->s;
    s->c.user_deliveries++;
    s->hash = mix(s->hash, mix(mix(s->now, nd->idx), (uint64_t)key << 32 ^
                                                         version ^ len));
    if (s->o.trace)
        fprintf(tout(s), "%12.6f user %u: key %u version %llu len %zu\n",
                s->now / 1e6, nd->idx, key, (unsigned long long)version,
                len);
    if (s->watching && key == s->watch_key && version > nd->user_ver)
        nd->user_ver = version;
}

/* ---- routing core output --------------------------------------------------- */

static void deliver(sim *s, ev *e);

static void route_udp(sim *s, node *a, gsp_out *o)
{
    s->c.udp_sent++;
    s->c.udp_bytes += o->len;
    a->bytes_sent += o->len;
    uint32_t ver;
    long b = resolve(s, &o->addr, &ver);
    if (s->udp_hook && b >= 0)
        s->udp_hook(s->udp_hook_ud, s, a->idx, (size_t)b, o->data, o->len);
    if (b < 0 || blocked(s, a->idx, (size_t)b) ||
        chance(s, loss_prob(s, a->idx, (size_t)b))) {
        s->c.udp_dropped++;
        free(o->data);
        return;
    }
    int copies = chance(s, s->o.dup) ? 2 : 1;
    for (int k = 0; k < copies; k++) {
        ev *e = ev_new(s);
        e->kind = EV_UDP;
        e->src = a->idx;
        e->dst = (uint32_t)b;
        e->dst_ver = ver;
        make_addr(a, &e->from);
        e->len = o->len;
        if (k == 0) {
            e->data = o->data;
        } else {
            s->c.udp_dup++;
            e->data = malloc(o->len ? o->len : 1);
            if (!e->data) abort();
            memcpy(e->data, o->data, o->len);
        }
        mh_push(s, s->now + one_way(s, a->idx, (size_t)b), e);
    }
}

static void route_stream(sim *s, node *a, gsp_out *o)
{
    s->c.streams++;
    s->c.stream_bytes += o->len;
    a->bytes_sent += o->len;
    stream_rec *st = calloc(1, sizeof(*st));
    if (!st) abort();
    st->src = a->idx;
    st->src_life = a->life;
    st->req_id = o->req_id;
    st->timeout_at = s->now + (uint64_t)(o->timeout_ms ? o->timeout_ms : 5000) * 1000;
    ev *t = ev_new(s);
    t->kind = EV_STMO;
    t->st = st;
    t->src = t->dst = a->idx;
    mh_push(s, st->timeout_at, t);

    uint32_t ver;
    long b = resolve(s, &o->addr, &ver);
    bool reach = b >= 0 && !blocked(s, a->idx, (size_t)b) &&
                 !blocked(s, (size_t)b, a->idx);
    if (!reach || !s->nodes[b].up || s->nodes[b].addr_ver != ver) {
        if (reach && s->o.crash_refuses) {
            ev *f = ev_new(s);
            f->kind = EV_SFAIL;
            f->st = st;
            f->src = (uint32_t)b;
            f->dst = a->idx;
            mh_push(s, s->now + one_way(s, a->idx, (size_t)b) +
                           one_way(s, (size_t)b, a->idx), f);
        }
        free(o->data);
        return;
    }
    /* SYN, SYN-ACK (1 s RTO each), then the request flight */
    uint64_t d = one_way(s, a->idx, (size_t)b) +
                 retrans(s, loss_prob(s, a->idx, (size_t)b), 1, SYN_RTO_US) +
                 one_way(s, (size_t)b, a->idx) +
                 retrans(s, loss_prob(s, (size_t)b, a->idx), 1, SYN_RTO_US) +
                 tcp_flight(s, a->idx, (size_t)b, o->len);
    ev *e = ev_new(s);
    e->kind = EV_SREQ;
    e->st = st;
    e->src = a->idx;
    e->dst = (uint32_t)b;
    e->dst_ver = ver;
    make_addr(a, &e->from);
    e->data = o->data;
    e->len = o->len;
    mh_push(s, s->now + d, e);
}

static void after_call(sim *s, node *a)
{
    gsp_out o;
    while (a->core && gsp_core_pop_out(a->core, &o)) {
        if (o.kind == GSP_OUT_UDP) route_udp(s, a, &o);
        else if (o.kind == GSP_OUT_STREAM) route_stream(s, a, &o);
        else free(o.data);
    }
    if (!a->core || a->paused) return;
    uint64_t d = gsp_core_next_deadline(a->core);
    uint64_t t = d > UINT64_MAX / 1000 ? UINT64_MAX : d * 1000;
    if (t < s->now) t = s->now;
    timer_set(s, a->idx, t);
}

static void do_tick(sim *s, node *a)
{
    uint64_t ms = s->now / 1000;
    s->c.ticks++;
    s->c.events++;
    gsp_core_tick(a->core, ms);
    gsp_out o;
    while (gsp_core_pop_out(a->core, &o)) {
        if (o.kind == GSP_OUT_UDP) route_udp(s, a, &o);
        else if (o.kind == GSP_OUT_STREAM) route_stream(s, a, &o);
        else free(o.data);
    }
    uint64_t d = gsp_core_next_deadline(a->core);
    if (d <= ms) {
        /* A deadline already due right after a tick: legitimate once (e.g.
         * a confirmation that arrived during this tick shrank a suspicion
         * timeout into the past), so tick again at once, as libuv would
         * with a 0 ms timer. Repeatedly at the same instant: a busy loop. */
        if (a->stuck_ms == ms + 1) {
            a->stuck_run++;
        } else {
            a->stuck_ms = ms + 1;
            a->stuck_run = 1;
        }
        if (a->stuck_run > 3) {
            s->c.stuck_deadlines++;
            d = ms + 1;
        } else {
            timer_set(s, a->idx, s->now);
            return;
        }
    }
    timer_set(s, a->idx, d > UINT64_MAX / 1000 ? UINT64_MAX : d * 1000);
}

/* ---- delivery ----------------------------------------------------------- */

static void backlog_add(sim *s, node *nd, ev *e)
{
    if (e->kind == EV_UDP) {
        if (nd->bl_udp_bytes + e->len > s->o.udp_rcvbuf) {
            s->c.backlog_dropped++;
            ev_release(s, e);
            return;
        }
        nd->bl_udp_bytes += e->len;
    }
    e->next = NULL;
    if (nd->bl_tail) nd->bl_tail->next = e;
    else nd->bl_head = e;
    nd->bl_tail = e;
}

static void deliver(sim *s, ev *e)
{
    uint64_t ms = s->now / 1000;
    if (e->kind == EV_UDP || e->kind == EV_SREQ) {
        node *b = &s->nodes[e->dst];
        if (!b->up || b->addr_ver != e->dst_ver) {
            if (e->kind == EV_UDP) s->c.udp_dropped++;
            ev_release(s, e);
            return;
        }
        if (b->paused) {
            backlog_add(s, b, e);
            return;
        }
        s->c.events++;
        hash_event(s, e, e->src, e->dst);
        if (e->kind == EV_UDP) {
            s->c.udp_delivered++;
            if (s->o.check_wire && !s->o.keyring) check_wire(s, e);
            if (gsp_core_recv(b->core, ms, &e->from, e->data, e->len) < 0)
                s->c.recv_errors++;
            after_call(s, b);
            ev_release(s, e);
            return;
        }
        uint8_t *reply = NULL;
        size_t rlen = 0;
        stream_rec *st = e->st;
        gsp_addr local; /* the address the connection arrived on */
        sim_addr(s, b->idx, &local);
        if (gsp_core_stream_request(b->core, ms, &e->from, &local, e->data,
                                    e->len, &reply, &rlen) < 0)
            s->c.stream_request_errors++;
        after_call(s, b);
        size_t a = st->src;
        if (blocked(s, b->idx, a)) {
            free(reply);
        } else if (reply) {
            uint64_t t = s->now + tcp_flight(s, b->idx, a, rlen);
            s->c.stream_bytes += rlen;
            b->bytes_sent += rlen;
            if (t < st->timeout_at) {
                ev *r = ev_new(s);
                r->kind = EV_SREP;
                r->st = st;
                r->src = b->idx;
                r->dst = (uint32_t)a;
                r->data = reply;
                r->len = rlen;
                mh_push(s, t, r);
            } else {
                free(reply);
            }
        } else {
            ev *f = ev_new(s);
            f->kind = EV_SFAIL;
            f->st = st;
            f->src = b->idx;
            f->dst = (uint32_t)a;
            mh_push(s, s->now + one_way(s, b->idx, a), f);
        }
        ev_release(s, e);
        return;
    }
    /* stream outcome for the requester */
    stream_rec *st = e->st;
    node *a = &s->nodes[st->src];
    if (!a->up || a->life != st->src_life || st->resolved) {
        ev_release(s, e);
        return;
    }
    if (a->paused) {
        backlog_add(s, a, e);
        return;
    }
    st->resolved = true;
    s->c.events++;
    hash_event(s, e, e->src, a->idx);
    bool ok = e->kind == EV_SREP;
    if (!ok) s->c.stream_fail++;
    gsp_core_stream_result(a->core, ms, st->req_id, ok, ok ? e->data : NULL,
                           ok ? e->len : 0);
    after_call(s, a);
    ev_release(s, e);
}

/* ---- the loop --------------------------------------------------------------- */

static bool step(sim *s, uint64_t limit)
{
    uint64_t tm = s->mh_n ? s->mh[0].t : UINT64_MAX;
    uint64_t tt = s->th_n ? s->tkey[s->th[0]] : UINT64_MAX;
    if (tm == UINT64_MAX && tt == UINT64_MAX) return false;
    if (tm <= tt) {
        if (tm > limit) return false;
        hent h = mh_pop(s);
        if (h.t > s->now) s->now = h.t;
        deliver(s, h.e);
    } else {
        if (tt > limit) return false;
        uint32_t n = s->th[0];
        if (tt > s->now) s->now = tt;
        do_tick(s, &s->nodes[n]);
    }
    return true;
}

void sim_run_until(sim *s, uint64_t t_ms)
{
    uint64_t limit = t_ms * 1000;
    while (step(s, limit)) {}
    if (limit > s->now) s->now = limit;
}

void sim_run_for(sim *s, uint64_t ms)
{
    sim_run_until(s, s->now / 1000 + ms);
}

bool sim_run_until_cond(sim *s, uint64_t t_max_ms, uint64_t check_ms,
                        bool (*cond)(sim *, void *), void *ud)
{
    if (!check_ms) check_ms = 100;
    for (;;) {
        if (cond(s, ud)) return true;
        uint64_t now = s->now / 1000;
        if (now >= t_max_ms) return false;
        uint64_t next = now + check_ms;
        if (next > t_max_ms) next = t_max_ms;
        sim_run_until(s, next);
    }
}

uint64_t sim_now_us(const sim *s)
{
    return s->now;
}

uint64_t sim_now_ms(const sim *s)
{
    return s->now / 1000;
}

/* ---- lifecycle ----------------------------------------------------------- */

sim *sim_new(const sim_opts *o)
{
    if (!o->max_nodes || o->max_nodes > (1u << 24)) return NULL;
    sim *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->o = *o;
    s->n = o->max_nodes;
    uint64_t x = o->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix(&x);
    s->hash = mix(0x6a09e667f3bcc908ULL, o->seed);
    s->nodes = calloc(s->n, sizeof(*s->nodes));
    s->th = calloc(s->n, sizeof(*s->th));
    s->tpos = malloc(s->n * sizeof(*s->tpos));
    s->tkey = calloc(s->n, sizeof(*s->tkey));
    s->cnt = calloc(s->n * 4, sizeof(*s->cnt));
    s->first_mark = malloc(s->n * 4 * sizeof(*s->first_mark));
    s->pool = gsp_pool_new();
    if (!s->nodes || !s->th || !s->tpos || !s->tkey || !s->cnt ||
        !s->first_mark || !s->pool) {
        sim_free(s);
        return NULL;
    }
    for (size_t i = 0; i < 4 * s->n; i++) s->first_mark[i] = UINT64_MAX;
    for (int i = 0; i < GSP_KEY_LEN; i++) s->key0[i] = (uint8_t)rnd(s);
    for (size_t i = 0; i < s->n; i++) {
        node *nd = &s->nodes[i];
        nd->s = s;
        nd->idx = (uint32_t)i;
        s->tpos[i] = NO_POS;
        nd->id.b[0] = (uint8_t)(i >> 24);
        nd->id.b[1] = (uint8_t)(i >> 16);
        nd->id.b[2] = (uint8_t)(i >> 8);
        nd->id.b[3] = (uint8_t)i;
        uint64_t r1 = rnd(s), r2 = rnd(s);
        memcpy(nd->id.b + 4, &r1, 8);
        memcpy(nd->id.b + 12, &r2, 4);
        /* its clock's error: uniform in +-clock_skew_us, from a stream of
         * its own (the network's draws do not move with it) */
        uint64_t sx = o->seed ^ 0x736b6577ULL ^ (uint64_t)i << 20;
        uint64_t span = 2 * (uint64_t)o->clock_skew_us + 1;
        nd->skew_ms = ((int64_t)(splitmix(&sx) % span) -
                       (int64_t)o->clock_skew_us) / 1000;
    }
    return s;
}

static void backlog_free(sim *s, node *nd)
{
    ev *e = nd->bl_head;
    while (e) {
        ev *n = e->next;
        ev_release(s, e);
        e = n;
    }
    nd->bl_head = nd->bl_tail = NULL;
    nd->bl_udp_bytes = 0;
}

void sim_free(sim *s)
{
    if (!s) return;
    for (size_t i = 0; s->nodes && i < s->n; i++) {
        node *nd = &s->nodes[i];
        backlog_free(s, nd);
        gsp_core_free(nd->core);
        gsp_keyring_free(nd->kr);
    }
    for (size_t i = 0; i < s->mh_n; i++) ev_release(s, s->mh[i].e);
    while (s->ev_free) {
        ev *e = s->ev_free;
        s->ev_free = e->next;
        free(e);
    }
    free(s->mh);
    free(s->nodes);
    free(s->th);
    free(s->tpos);
    free(s->tkey);
    free(s->cnt);
    free(s->first_mark);
    free(s->links);
    gsp_pool_free(s->pool);
    free(s);
}

size_t sim_max_nodes(const sim *s)
{
    return s->n;
}

/* A node's wall clock: a fixed epoch (the cores see realistic numbers)
 * plus virtual time plus its skew. */
#define SIM_WALL_BASE 1764633600000ULL /* 2025-12-02 00:00 UTC, ms */
static uint64_t wall_ms(const sim *s, const node *nd)
{
    return (uint64_t)((int64_t)(SIM_WALL_BASE + s->now / 1000) + nd->skew_ms);
}

static uint64_t core_seed(const sim *s, size_t i, uint64_t gen)
{
    uint64_t x = s->o.seed ^ (0xa0761d6478bd642fULL * (i + 1));
    x ^= gen * 0xe7037ed1a0b428dbULL;
    return splitmix(&x);
}

int sim_start(sim *s, size_t i, bool new_addr)
{
    if (i >= s->n) return -EINVAL;
    node *nd = &s->nodes[i];
    if (nd->up) return -EBUSY;
    if (s->o.keyring && !nd->kr) {
        nd->kr = gsp_keyring_new("pmgsim");
        if (!nd->kr || gsp_keyring_add(nd->kr, s->key0)) return -ENOMEM;
    }
    if (new_addr) nd->addr_ver++;
    nd->gen++;
    nd->life++;
    gsp_addr a;
    make_addr(nd, &a);
    char name[32];
    snprintf(name, sizeof(name), "n%zu", i);
    gsp_callbacks cb = {.ud = nd, .member_changed = on_member,
                        .user_msg = on_user};
    int rc = gsp_core_new(&nd->core, &s->o.cfg, &nd->id, name, &a, nd->gen,
                          s->o.keyring ? nd->kr : NULL,
                          core_seed(s, i, nd->gen), s->now / 1000, &cb);
    if (rc) return rc;
    gsp_core_set_wallclock(nd->core, s->now / 1000, wall_ms(s, nd));
    rc = gsp_core_set_pool(nd->core, s->pool);
    if (rc) {
        gsp_core_free(nd->core);
        nd->core = NULL;
        return rc;
    }
    nd->up = true;
    nd->paused = false;
    nd->user_ver = 0;
    s->n_up++;
    s->hash = mix(s->hash, mix(s->now, 0x5354415254ULL ^ i ^ nd->gen << 32));
    if (s->o.trace)
        fprintf(tout(s), "%12.6f start %zu gen %llu addr v%u\n",
                s->now / 1e6, i, (unsigned long long)nd->gen,
                nd->addr_ver);

    size_t ns = s->o.n_seeds < s->n ? s->o.n_seeds : s->n;
    gsp_addr seeds[64];
    if (ns > 64) ns = 64;
    for (size_t k = 0; k < ns; k++) {
        node tmp = {.idx = (uint32_t)k, .addr_ver = 0};
        make_addr(&tmp, &seeds[k]);
    }
    gsp_core_set_seeds(nd->core, seeds, ns);
    size_t nj = s->o.join_seeds && s->o.join_seeds < ns ? s->o.join_seeds : ns;
    gsp_core_join(nd->core, s->now / 1000, seeds, nj);
    after_call(s, nd);
    return 0;
}

void sim_start_range(sim *s, size_t from, size_t to, uint64_t stagger_us)
{
    for (size_t i = from; i < to && i < s->n; i++) {
        if (stagger_us && i > from) {
            uint64_t t = s->now + stagger_us;
            while (step(s, t)) {}
            if (t > s->now) s->now = t;
        }
        sim_start(s, i, false);
    }
}

static int unview(void *ud, const gsp_member *m)
{
    sim *s = ud;
    if (m->is_self) return 0;
    long subj = id_to_idx(s, &m->id);
    if (subj >= 0 && (unsigned)m->state <= GSP_LEFT)
        s->cnt[(size_t)subj * 4 + m->state]--;
    return 0;
}

void sim_crash(sim *s, size_t i)
{
    if (i >= s->n || !s->nodes[i].up) return;
    node *nd = &s->nodes[i];
    gsp_core_foreach(nd->core, unview, s);
    gsp_core_free(nd->core);
    nd->core = NULL;
    nd->up = false;
    nd->paused = false;
    nd->life++;
    s->n_up--;
    backlog_free(s, nd);
    timer_remove(s, nd->idx);
    s->hash = mix(s->hash, mix(s->now, 0x4352415348ULL ^ i));
    if (s->o.trace)
        fprintf(tout(s), "%12.6f crash %zu\n", s->now / 1e6, i);
}

int sim_restart(sim *s, size_t i, bool new_addr)
{
    sim_crash(s, i);
    return sim_start(s, i, new_addr);
}

void sim_pause(sim *s, size_t i)
{
    if (i >= s->n || !s->nodes[i].up || s->nodes[i].paused) return;
    s->nodes[i].paused = true;
    timer_remove(s, (uint32_t)i);
    s->hash = mix(s->hash, mix(s->now, 0x5041555345ULL ^ i));
    if (s->o.trace)
        fprintf(tout(s), "%12.6f pause %zu\n", s->now / 1e6, i);
}

void sim_resume(sim *s, size_t i)
{
    if (i >= s->n || !s->nodes[i].up || !s->nodes[i].paused) return;
    node *nd = &s->nodes[i];
    nd->paused = false;
    s->hash = mix(s->hash, mix(s->now, 0x524553554dULL ^ i));
    if (s->o.trace)
        fprintf(tout(s), "%12.6f resume %zu\n", s->now / 1e6, i);
    ev *e = nd->bl_head;
    nd->bl_head = nd->bl_tail = NULL;
    nd->bl_udp_bytes = 0;
    while (e) {
        ev *n = e->next;
        e->next = NULL;
        if (nd->up && !nd->paused) deliver(s, e);
        else if (nd->up) backlog_add(s, nd, e);
        else ev_release(s, e);
        e = n;
    }
    if (nd->up && !nd->paused) do_tick(s, nd);
}

int sim_leave(sim *s, size_t i)
{
    if (i >= s->n || !s->nodes[i].up) return -ENOENT;
    node *nd = &s->nodes[i];
    int rc = gsp_core_leave(nd->core, s->now / 1000);
    after_call(s, nd);
    return rc;
}

bool sim_is_up(const sim *s, size_t i)
{
    return i < s->n && s->nodes[i].up;
}

bool sim_is_paused(const sim *s, size_t i)
{
    return i < s->n && s->nodes[i].paused;
}

size_t sim_n_up(const sim *s)
{
    return s->n_up;
}

gsp_core *sim_core(sim *s, size_t i)
{
    return i < s->n ? s->nodes[i].core : NULL;
}

void sim_id(const sim *s, size_t i, gsp_id *out)
{
    *out = s->nodes[i].id;
}

void sim_addr(const sim *s, size_t i, gsp_addr *out)
{
    make_addr(&s->nodes[i], out);
}

uint64_t sim_gen(const sim *s, size_t i)
{
    return s->nodes[i].gen;
}

int sim_inject_udp(sim *s, size_t dst, size_t src, const uint8_t *data,
                   size_t len)
{
    if (dst >= s->n || src >= s->n) return -EINVAL;
    ev *e = ev_new(s);
    e->kind = EV_UDP;
    e->src = (uint32_t)src;
    e->dst = (uint32_t)dst;
    e->dst_ver = s->nodes[dst].addr_ver;
    make_addr(&s->nodes[src], &e->from);
    e->data = malloc(len ? len : 1);
    if (!e->data) abort();
    memcpy(e->data, data, len);
    e->len = len;
    mh_push(s, s->now, e);
    return 0;
}

/* ---- network knobs ------------------------------------------------------- */

void sim_set_loss(sim *s, double p)
{
    s->o.loss = p;
}

void sim_set_dup(sim *s, double p)
{
    s->o.dup = p;
}

void sim_set_latency(sim *s, uint32_t lat_us, uint32_t jitter_us, int kind)
{
    s->o.lat_us = lat_us;
    s->o.jitter_us = jitter_us;
    s->o.jitter_kind = kind;
}

void sim_set_node_loss(sim *s, size_t i, double in, double out)
{
    s->nodes[i].loss_in = in;
    s->nodes[i].loss_out = out;
}

void sim_set_clock_skew(sim *s, size_t i, int64_t skew_ms)
{
    node *nd = &s->nodes[i];
    nd->skew_ms = skew_ms;
    if (nd->up) gsp_core_set_wallclock(nd->core, s->now / 1000, wall_ms(s, nd));
}

int64_t sim_clock_skew(const sim *s, size_t i)
{
    return s->nodes[i].skew_ms;
}

void sim_set_node_delay(sim *s, size_t i, uint32_t extra_us)
{
    s->nodes[i].extra_us = extra_us;
}

void sim_set_link_loss(sim *s, size_t from, size_t to, double p)
{
    link_get(s, from, to, true)->loss = (float)p;
}

void sim_cut(sim *s, size_t from, size_t to, bool cut)
{
    link_get(s, from, to, true)->cut = cut;
    s->hash = mix(s->hash, mix(s->now, (uint64_t)from << 33 | to << 1 | cut));
}

void sim_cut2(sim *s, size_t a, size_t b, bool cut)
{
    sim_cut(s, a, b, cut);
    sim_cut(s, b, a, cut);
}

void sim_partition(sim *s, const int *group)
{
    for (size_t i = 0; i < s->n; i++) s->nodes[i].group = group[i];
    s->partitioned = true;
    s->hash = mix(s->hash, mix(s->now, 0x5041525449ULL));
}

void sim_heal(sim *s)
{
    s->partitioned = false;
    s->hash = mix(s->hash, mix(s->now, 0x4845414cULL));
}

/* ---- keyrings -------------------------------------------------------------- */

void sim_initial_key(const sim *s, uint8_t key[GSP_KEY_LEN])
{
    memcpy(key, s->key0, GSP_KEY_LEN);
}

int sim_key_add(sim *s, size_t i, const uint8_t key[GSP_KEY_LEN])
{
    if (!s->nodes[i].kr) return -ENOENT;
    return gsp_keyring_add(s->nodes[i].kr, key);
}

int sim_key_use(sim *s, size_t i, const uint8_t key[GSP_KEY_LEN])
{
    if (!s->nodes[i].kr) return -ENOENT;
    return gsp_keyring_use(s->nodes[i].kr, key);
}

int sim_key_remove(sim *s, size_t i, const uint8_t key[GSP_KEY_LEN])
{
    if (!s->nodes[i].kr) return -ENOENT;
    return gsp_keyring_remove(s->nodes[i].kr, key);
}

/* ---- user broadcasts ------------------------------------------------------ */

void sim_watch_user_key(sim *s, uint32_t key)
{
    s->watching = true;
    s->watch_key = key;
    for (size_t i = 0; i < s->n; i++) s->nodes[i].user_ver = 0;
}

int sim_broadcast(sim *s, size_t i, uint32_t key, uint64_t version,
                  const void *data, size_t len)
{
    node *nd = &s->nodes[i];
    if (!nd->up) return -ENOENT;
    int rc = gsp_core_broadcast(nd->core, key, version, data, len);
    if (rc == 0 && s->watching && key == s->watch_key && version > nd->user_ver)
        nd->user_ver = version;
    s->hash = mix(s->hash, mix(s->now, (uint64_t)key << 32 ^ version ^ i));
    after_call(s, nd);
    return rc;
}

size_t sim_user_have(const sim *s, uint64_t version)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->nodes[i].up && s->nodes[i].user_ver >= version) n++;
    return n;
}

uint64_t sim_user_version(const sim *s, size_t i)
{
    return s->nodes[i].user_ver;
}

/* ---- views ----------------------------------------------------------------- */

uint32_t sim_view_count(const sim *s, size_t subj, gsp_state st)
{
    return s->cnt[subj * 4 + st];
}

bool sim_all_see(const sim *s, size_t subj, int mask)
{
    size_t want = s->n_up - (s->nodes[subj].up ? 1 : 0);
    size_t have = 0;
    for (int st = 0; st < 4; st++)
        if (mask & (1 << st)) have += s->cnt[subj * 4 + st];
    return have == want;
}

bool sim_converged(const sim *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->nodes[i].up && s->cnt[i * 4 + GSP_ALIVE] != s->n_up - 1)
            return false;
    return true;
}

typedef struct recount {
    sim *s;
    uint32_t *tmp;
} recount;

static int recount_fn(void *ud, const gsp_member *m)
{
    recount *r = ud;
    if (m->is_self) return 0;
    long subj = id_to_idx(r->s, &m->id);
    if (subj >= 0 && (unsigned)m->state <= GSP_LEFT)
        r->tmp[(size_t)subj * 4 + m->state]++;
    return 0;
}

size_t sim_verify_views(sim *s)
{
    recount r = {.s = s, .tmp = calloc(s->n * 4, sizeof(uint32_t))};
    if (!r.tmp) return SIZE_MAX;
    for (size_t i = 0; i < s->n; i++)
        if (s->nodes[i].up) gsp_core_foreach(s->nodes[i].core, recount_fn, &r);
    size_t bad = 0;
    for (size_t i = 0; i < s->n * 4; i++)
        if (r.tmp[i] != s->cnt[i]) bad++;
    free(r.tmp);
    return bad;
}

uint64_t sim_first_mark(const sim *s, size_t subj, gsp_state st)
{
    return s->first_mark[subj * 4 + st];
}

void sim_mark_reset(sim *s, size_t subj)
{
    for (int st = 0; st < 4; st++) s->first_mark[subj * 4 + st] = UINT64_MAX;
}

/* ---- counters --------------------------------------------------------------- */

void sim_get_counters(const sim *s, sim_counters *out)
{
    *out = s->c;
}

uint64_t sim_node_bytes(const sim *s, size_t i)
{
    return s->nodes[i].bytes_sent;
}

bool sim_first_false_dead(const sim *s, uint64_t *t_ms, size_t *obs,
                          size_t *subj)
{
    if (!s->have_false_dead) return false;
    if (t_ms) *t_ms = s->fd_t;
    if (obs) *obs = s->fd_obs;
    if (subj) *subj = s->fd_subj;
    return true;
}

void sim_reset_marks(sim *s)
{
    s->c.dead_marks_up = 0;
    s->c.suspect_marks_up = 0;
    s->have_false_dead = false;
}

uint64_t sim_hash(const sim *s)
{
    return s->hash;
}

void sim_on_udp(sim *s, sim_udp_fn fn, void *ud)
{
    s->udp_hook = fn;
    s->udp_hook_ud = ud;
}

void sim_on_change(sim *s, sim_change_fn fn, void *ud)
{
    s->hook = fn;
    s->hook_ud = ud;
}

gsp_pool *sim_pool(const sim *s)
{
    return s->pool;
}

uint64_t sim_stats_sum(const sim *s, size_t off)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (!s->nodes[i].up) continue;
        gsp_stats st;
        gsp_core_stats(s->nodes[i].core, &st);
        uint64_t v;
        memcpy(&v, (const char *)&st + off, sizeof(v));
        sum += v;
    }
    return sum;
}
