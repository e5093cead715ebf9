/*
 * guard.h - bounds on what unauthenticated peers may make this daemon hold
 * (internal header of the membership library, prefixes pmm_src_,
 * pmm_guard_ and pmm_thr_). Pure code: no sockets, no clock (time comes in
 * as an argument), so every rule is tested without a network.
 *
 * ---- sources ---------------------------------------------------------------
 * A source is a peer's IP. For the connection caps of the status, agent and
 * node API ports every address counts on its own; for the join throttle
 * addresses are grouped the way an attacker gets them: an IPv4 /24 or an
 * IPv6 /64 is one source (an IPv4-mapped IPv6 address is IPv4).
 *
 * ---- eviction ----------------------------------------------------------------
 * A server that holds at most N connections for unauthenticated peers makes
 * room for a newcomer by dropping one it holds, never by refusing everyone
 * new: pmm_guard_victim chooses it. The source holding the most
 * connections loses one (a flood from few addresses only churns its own
 * slots; a health checker holding one connection is the last to go), and
 * within that source the lowest class (for the status port: answered and
 * lingering < reading a request < being written to), then the oldest.
 *
 * ---- the join throttle ---------------------------------------------------------
 * The master checks a join password only for a source group (/24, /64)
 * that has no other attempt in flight, and only while the cluster-wide
 * budget of failed attempts has room (a token bucket: `burst` failures at
 * once, one more every `refill_ms`; an attempt in flight holds a token, a
 * right password gives it back). A wrong password's answer is delayed
 * base_ms << fails (capped at max_ms) and the group stays busy meanwhile.
 * A group's failure count is forgotten only after it has been quiet for
 * forget_ms; a group with an attempt in flight is never forgotten. When
 * every slot of the table holds a group that may not be forgotten yet, a new
 * group is refused (PMM_THR_FULL) instead of any state being dropped, so no
 * number of addresses resets anyone's delay.
 */
#ifndef PMGCM_NET_GUARD_H
#define PMGCM_NET_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* ---- sources ----------------------------------------------------------------- */
typedef struct pmm_src {
    uint8_t family; /* 4, 6, or 0 (unknown: every unknown source is one) */
    uint8_t ip[16]; /* 4 or 16 bytes used, the rest zero */
} pmm_src;

/* The peer address of sa (AF_INET / AF_INET6; an IPv4-mapped IPv6 address
 * becomes IPv4; NULL or another family: family 0). Never fails. */
void pmm_src_from_sa(pmm_src *out, const struct sockaddr *sa);
/* in masked to its group: an IPv4 /24, an IPv6 /64. out may be in. */
void pmm_src_group(pmm_src *out, const pmm_src *in);
bool pmm_src_eq(const pmm_src *a, const pmm_src *b);
/* 127.0.0.0/8 or ::1 */
bool pmm_src_loopback(const pmm_src *s);
/* "10.0.0.1", "fd00::1"; a group (masked) with its prefix when `group`:
 * "10.0.0.0/24", "fd00::/64". len >= 64 always suffices. Returns buf. */
char *pmm_src_str(const pmm_src *s, bool group, char *buf, size_t len);

/* ---- eviction ---------------------------------------------------------------- */
typedef struct pmm_guard_ent {
    pmm_src src;
    int cls;       /* lower goes first */
    uint64_t seq;  /* accept order: lower is older */
    uint32_t rate; /* the source's recent connections (pmm_rate): between
                      sources holding as many, the busier one goes */
} pmm_guard_ent;

/* How many of e[0..n) come from src. */
size_t pmm_guard_count(const pmm_guard_ent *e, size_t n, const pmm_src *src);
/* The entry to drop among e[0..n), skipping index `skip` (the newcomer;
 * n or more for none) and entries with cls < 0 (protected): the heaviest
 * source's lowest class, oldest first. Returns its index, or n when there
 * is nothing to drop. O(n^2); n is a connection cap (tens to hundreds). */
size_t pmm_guard_victim(const pmm_guard_ent *e, size_t n, size_t skip);
/* The same, among the entries of one source only (its own per-source cap
 * is reached): lowest class, oldest first; n when none. */
size_t pmm_guard_victim_of(const pmm_guard_ent *e, size_t n, size_t skip,
                           const pmm_src *src);

/* ---- recent connections per source ------------------------------------------ */
/* How many connections each source opened lately (this window and the one
 * before, window_ms each), in a fixed table: a health checker opens a few
 * a second, a flood hundreds. A full table replaces its quietest entry
 * (approximate on purpose: it only breaks ties between sources). */
typedef struct pmm_rate pmm_rate;
pmm_rate *pmm_rate_new(uint32_t slots, uint32_t window_ms); /* NULL: ENOMEM */
void pmm_rate_free(pmm_rate *r);
/* Counts one connection from s; returns its recent count. */
uint32_t pmm_rate_hit(pmm_rate *r, const pmm_src *s, uint64_t now_ms);
/* Its recent count (0 when unknown). */
uint32_t pmm_rate_get(const pmm_rate *r, const pmm_src *s, uint64_t now_ms);

/* ---- join throttle ------------------------------------------------------------- */
typedef struct pmm_thr_cfg {
    uint32_t slots;     /* source groups tracked (256) */
    uint32_t base_ms;   /* delay of a wrong password's answer: base_ms <<
                           min(fails, 6) (250) ... */
    uint32_t max_ms;    /* ... capped at max_ms (8000) */
    uint32_t burst;     /* cluster-wide failed attempts at once (20) ... */
    uint32_t refill_ms; /* ... one more every refill_ms (3000) */
    uint32_t forget_ms; /* a quiet group is forgotten after (600000) */
} pmm_thr_cfg;

void pmm_thr_cfg_default(pmm_thr_cfg *c);

typedef enum pmm_thr_verdict {
    PMM_THR_GO = 0,    /* check the password; *slot is the attempt's */
    PMM_THR_BUSY,      /* this group has an attempt in flight */
    PMM_THR_GLOBAL,    /* the cluster-wide budget of failures is spent */
    PMM_THR_FULL,      /* every slot holds a group that may not be
                          forgotten yet */
} pmm_thr_verdict;

typedef struct pmm_thr pmm_thr;

/* cfg NULL = defaults; zero fields are replaced by their defaults. NULL on
 * out of memory. The caller owns the result (pmm_thr_free). */
pmm_thr *pmm_thr_new(const pmm_thr_cfg *cfg, uint64_t now_ms);
void pmm_thr_free(pmm_thr *t);
/* An attempt from addr (grouped here) at now_ms. GO: *slot names the
 * attempt until pmm_thr_end; the group is busy and one token is held.
 * Otherwise *retry_ms says when trying again makes sense (BUSY: 0, the
 * caller knows better). */
pmm_thr_verdict pmm_thr_begin(pmm_thr *t, const pmm_src *addr,
                              uint64_t now_ms, uint32_t *slot,
                              uint64_t *retry_ms);
/* The attempt in slot had a wrong password: its group's failure count
 * rises (into *fails, may be NULL) and the delay of its answer is
 * returned; the token stays spent; the group stays busy until
 * pmm_thr_end. */
uint64_t pmm_thr_fail(pmm_thr *t, uint32_t slot, uint64_t now_ms,
                      uint32_t *fails);
/* The attempt in slot is over. After pmm_thr_fail: only the group is
 * released. Otherwise its token is given back, and `ok` (the password was
 * right) clears the group's failures. */
void pmm_thr_end(pmm_thr *t, uint32_t slot, bool ok, uint64_t now_ms);

typedef struct pmm_thr_stats {
    uint32_t groups;     /* slots holding state (failures or in flight) */
    uint32_t busy;       /* attempts in flight */
    uint32_t tokens;     /* failures the budget allows right now */
    uint64_t failures;   /* wrong passwords, ever */
    uint64_t refused_global, refused_full, refused_busy;
} pmm_thr_stats;
void pmm_thr_stats_get(pmm_thr *t, uint64_t now_ms, pmm_thr_stats *out);

#endif
