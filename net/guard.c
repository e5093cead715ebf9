/*
 * guard.c - sources, eviction choice and the join throttle (guard.h).
 */
#include "net/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ---- sources ---------------------------------------------------------------- */

void pmm_src_from_sa(pmm_src *out, const struct sockaddr *sa)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                       0xff, 0xff};

    memset(out, 0, sizeof(*out));
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        out->family = 4;
        memcpy(out->ip, &s4->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *b = (const uint8_t *)&s6->sin6_addr;
        if (memcmp(b, mapped, 12) == 0) {
            out->family = 4;
            memcpy(out->ip, b + 12, 4);
        } else {
            out->family = 6;
            memcpy(out->ip, b, 16);
        }
    }
}

void pmm_src_group(pmm_src *out, const pmm_src *in)
{
    pmm_src g = *in;

    if (g.family == 4)
        memset(g.ip + 3, 0, 13);
    else if (g.family == 6)
        memset(g.ip + 8, 0, 8);
    *out = g;
}

bool pmm_src_eq(const pmm_src *a, const pmm_src *b)
{
    return a->family == b->family && memcmp(a->ip, b->ip, 16) == 0;
}

bool pmm_src_loopback(const pmm_src *s)
{
    static const uint8_t one[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 1};

    if (s->family == 4)
        return s->ip[0] == 127;
    return s->family == 6 && memcmp(s->ip, one, 16) == 0;
}

char *pmm_src_str(const pmm_src *s, bool group, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    pmm_src g;

    if (len == 0)
        return buf;
    if (s->family != 4 && s->family != 6) {
        snprintf(buf, len, "(unknown)");
        return buf;
    }
    if (group)
        pmm_src_group(&g, s);
    else
        g = *s;
    if (inet_ntop(g.family == 4 ? AF_INET : AF_INET6, g.ip, ip,
                  sizeof(ip)) == NULL)
        snprintf(ip, sizeof(ip), "?");
    if (group)
        snprintf(buf, len, "%s/%d", ip, g.family == 4 ? 24 : 64);
    else
        snprintf(buf, len, "%s", ip);
    return buf;
}

/* ---- eviction ------------------------------------------------------------------ */

size_t pmm_guard_count(const pmm_guard_ent *e, size_t n, const pmm_src *src)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++)
        if (pmm_src_eq(&e[i].src, src))
            c++;
    return c;
}

/* the better victim of two candidates of one source: lower class, older */
static bool better(const pmm_guard_ent *a, const pmm_guard_ent *b)
{
    if (a->cls != b->cls)
        return a->cls < b->cls;
    return a->seq < b->seq;
}

size_t pmm_guard_victim_of(const pmm_guard_ent *e, size_t n, size_t skip,
                           const pmm_src *src)
{
    size_t best = n;

    for (size_t i = 0; i < n; i++) {
        if (i == skip || e[i].cls < 0 || !pmm_src_eq(&e[i].src, src))
            continue;
        if (best == n || better(&e[i], &e[best]))
            best = i;
    }
    return best;
}

size_t pmm_guard_victim(const pmm_guard_ent *e, size_t n, size_t skip)
{
    size_t best = n, best_count = 0;
    uint32_t best_rate = 0;

    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        bool seen = false;

        if (i == skip || e[i].cls < 0)
            continue;
        /* each source once: at its first droppable entry */
        for (size_t k = 0; k < i && !seen; k++)
            if (k != skip && e[k].cls >= 0 && pmm_src_eq(&e[k].src, &e[i].src))
                seen = true;
        if (seen)
            continue;
        for (size_t k = 0; k < n; k++)
            if (k != skip && e[k].cls >= 0 && pmm_src_eq(&e[k].src, &e[i].src))
                c++;
        {
            size_t v = pmm_guard_victim_of(e, n, skip, &e[i].src);
            /* the heaviest source; between equals the busier one lately,
             * then the better victim */
            if (best == n || c > best_count ||
                (c == best_count && e[i].rate > best_rate) ||
                (c == best_count && e[i].rate == best_rate &&
                 better(&e[v], &e[best]))) {
                best = v;
                best_count = c;
                best_rate = e[i].rate;
            }
        }
    }
    return best;
}

/* ---- recent connections per source ------------------------------------------ */

typedef struct rate_ent {
    pmm_src src;
    uint64_t win;      /* the window's number (now / window_ms) */
    uint32_t cur, prev;
    bool used;
} rate_ent;

struct pmm_rate {
    uint32_t slots, window_ms;
    rate_ent *e;
};

pmm_rate *pmm_rate_new(uint32_t slots, uint32_t window_ms)
{
    pmm_rate *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->slots = slots ? slots : 256;
    r->window_ms = window_ms ? window_ms : 1000;
    r->e = calloc(r->slots, sizeof(*r->e));
    if (r->e == NULL) {
        free(r);
        return NULL;
    }
    return r;
}

void pmm_rate_free(pmm_rate *r)
{
    if (r == NULL)
        return;
    free(r->e);
    free(r);
}

static uint32_t src_hash(const pmm_src *s)
{
    uint32_t h = 2166136261u ^ s->family;

    for (int i = 0; i < 16; i++)
        h = (h ^ s->ip[i]) * 16777619u;
    return h;
}

/* the entry's count as of window w */
static uint32_t rate_of(const rate_ent *x, uint64_t w)
{
    if (!x->used || x->win + 1 < w)
        return 0;
    if (x->win + 1 == w)
        return x->cur;
    return x->cur + x->prev;
}

#define RATE_PROBE 8

uint32_t pmm_rate_get(const pmm_rate *r, const pmm_src *s, uint64_t now_ms)
{
    uint64_t w = now_ms / r->window_ms;
    uint32_t h = src_hash(s);

    for (uint32_t k = 0; k < RATE_PROBE; k++) {
        const rate_ent *x = &r->e[(h + k) % r->slots];
        if (x->used && pmm_src_eq(&x->src, s))
            return rate_of(x, w);
    }
    return 0;
}

uint32_t pmm_rate_hit(pmm_rate *r, const pmm_src *s, uint64_t now_ms)
{
    uint64_t w = now_ms / r->window_ms;
    uint32_t h = src_hash(s);
    rate_ent *x = NULL, *quiet = NULL;

    for (uint32_t k = 0; k < RATE_PROBE; k++) {
        rate_ent *y = &r->e[(h + k) % r->slots];
        if (y->used && pmm_src_eq(&y->src, s)) {
            x = y;
            break;
        }
        if (quiet == NULL || rate_of(y, w) < rate_of(quiet, w))
            quiet = y;
    }
    if (x == NULL) {
        x = quiet;
        memset(x, 0, sizeof(*x));
        x->used = true;
        x->src = *s;
        x->win = w;
    }
    if (x->win != w) {
        x->prev = x->win + 1 == w ? x->cur : 0;
        x->cur = 0;
        x->win = w;
    }
    if (x->cur < UINT32_MAX)
        x->cur++;
    return x->cur + x->prev;
}

/* ---- join throttle -------------------------------------------------------------- */

typedef struct thr_slot {
    pmm_src group;
    bool used;
    bool busy;
    bool failed;   /* the attempt in flight had a wrong password */
    uint32_t fails;
    uint64_t last; /* last attempt's start or end */
} thr_slot;

struct pmm_thr {
    pmm_thr_cfg cfg;
    thr_slot *s;
    uint32_t tokens;
    uint64_t refill_at; /* time the bucket was last topped up */
    uint64_t failures, refused_global, refused_full, refused_busy;
};

void pmm_thr_cfg_default(pmm_thr_cfg *c)
{
    c->slots = 256;
    c->base_ms = 250;
    c->max_ms = 8000;
    c->burst = 20;
    c->refill_ms = 3000;
    c->forget_ms = 600000;
}

pmm_thr *pmm_thr_new(const pmm_thr_cfg *cfg, uint64_t now_ms)
{
    pmm_thr_cfg d;
    pmm_thr *t;

    pmm_thr_cfg_default(&d);
    if (cfg != NULL) {
        if (cfg->slots) d.slots = cfg->slots;
        if (cfg->base_ms) d.base_ms = cfg->base_ms;
        if (cfg->max_ms) d.max_ms = cfg->max_ms;
        if (cfg->burst) d.burst = cfg->burst;
        if (cfg->refill_ms) d.refill_ms = cfg->refill_ms;
        if (cfg->forget_ms) d.forget_ms = cfg->forget_ms;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->s = calloc(d.slots, sizeof(*t->s));
    if (t->s == NULL) {
        free(t);
        return NULL;
    }
    t->cfg = d;
    t->tokens = d.burst;
    t->refill_at = now_ms;
    return t;
}

void pmm_thr_free(pmm_thr *t)
{
    if (t == NULL)
        return;
    free(t->s);
    free(t);
}

static void refill(pmm_thr *t, uint64_t now)
{
    uint64_t n;

    if (now <= t->refill_at)
        return;
    n = (now - t->refill_at) / t->cfg.refill_ms;
    if (n == 0)
        return;
    if (t->tokens + n >= t->cfg.burst) {
        t->tokens = t->cfg.burst;
        t->refill_at = now;
    } else {
        t->tokens += (uint32_t)n;
        t->refill_at += n * t->cfg.refill_ms;
    }
}

/* a slot whose state may go: never used, no failures, or quiet long
 * enough; never one with an attempt in flight */
static bool reusable(const pmm_thr *t, const thr_slot *s, uint64_t now)
{
    if (!s->used)
        return true;
    if (s->busy)
        return false;
    return s->fails == 0 || now >= s->last + t->cfg.forget_ms;
}

pmm_thr_verdict pmm_thr_begin(pmm_thr *t, const pmm_src *addr,
                              uint64_t now_ms, uint32_t *slot,
                              uint64_t *retry_ms)
{
    pmm_src g;
    thr_slot *s = NULL, *free_slot = NULL;
    uint64_t soonest = UINT64_MAX;

    *retry_ms = 0;
    pmm_src_group(&g, addr);
    for (uint32_t i = 0; i < t->cfg.slots; i++) {
        thr_slot *x = &t->s[i];
        if (x->used && pmm_src_eq(&x->group, &g)) {
            s = x;
            break;
        }
        if (free_slot == NULL && reusable(t, x, now_ms))
            free_slot = x;
        if (x->used && !x->busy && x->last + t->cfg.forget_ms < soonest)
            soonest = x->last + t->cfg.forget_ms;
    }
    if (s != NULL && s->busy) {
        t->refused_busy++;
        return PMM_THR_BUSY;
    }
    refill(t, now_ms);
    if (t->tokens == 0) {
        t->refused_global++;
        *retry_ms = t->refill_at + t->cfg.refill_ms > now_ms
                        ? t->refill_at + t->cfg.refill_ms - now_ms
                        : 1;
        return PMM_THR_GLOBAL;
    }
    if (s == NULL) {
        if (free_slot == NULL) {
            t->refused_full++;
            *retry_ms = soonest == UINT64_MAX ? t->cfg.max_ms
                        : soonest > now_ms    ? soonest - now_ms
                                              : 1;
            return PMM_THR_FULL;
        }
        s = free_slot;
        memset(s, 0, sizeof(*s));
        s->used = true;
        s->group = g;
    } else if (s->fails > 0 && now_ms >= s->last + t->cfg.forget_ms) {
        s->fails = 0; /* quiet long enough: a fresh start */
    }
    t->tokens--;
    s->busy = true;
    s->failed = false;
    s->last = now_ms;
    *slot = (uint32_t)(s - t->s);
    return PMM_THR_GO;
}

uint64_t pmm_thr_fail(pmm_thr *t, uint32_t slot, uint64_t now_ms,
                      uint32_t *fails)
{
    thr_slot *s;
    uint64_t d;

    if (slot >= t->cfg.slots)
        return t->cfg.max_ms;
    s = &t->s[slot];
    if (!s->failed && s->fails < UINT32_MAX)
        s->fails++;
    s->failed = true;
    s->last = now_ms;
    t->failures++;
    if (fails != NULL)
        *fails = s->fails;
    d = (uint64_t)t->cfg.base_ms << (s->fails < 6 ? s->fails : 6);
    return d > t->cfg.max_ms ? t->cfg.max_ms : d;
}

void pmm_thr_end(pmm_thr *t, uint32_t slot, bool ok, uint64_t now_ms)
{
    thr_slot *s;

    if (slot >= t->cfg.slots)
        return;
    s = &t->s[slot];
    if (!s->busy)
        return;
    s->busy = false;
    s->last = now_ms;
    if (!s->failed) {
        refill(t, now_ms);
        if (t->tokens < t->cfg.burst)
            t->tokens++;
        if (ok)
            s->fails = 0;
    }
    s->failed = false;
    if (s->fails == 0)
        s->used = false; /* nothing worth keeping */
}

void pmm_thr_stats_get(pmm_thr *t, uint64_t now_ms, pmm_thr_stats *out)
{
    memset(out, 0, sizeof(*out));
    refill(t, now_ms);
    for (uint32_t i = 0; i < t->cfg.slots; i++) {
        const thr_slot *s = &t->s[i];
        if (!s->used)
            continue;
        if (s->busy)
            out->busy++;
        if (s->busy || !reusable(t, s, now_ms))
            out->groups++;
    }
    out->tokens = t->tokens;
    out->failures = t->failures;
    out->refused_global = t->refused_global;
    out->refused_full = t->refused_full;
    out->refused_busy = t->refused_busy;
}
