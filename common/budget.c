/*
 * budget.c - the process-wide memory budget for unauthenticated input
 * (common.h: gsp_budget_*, prefixed as in gossip/ where it was born).
 * Lock-free: one atomic counter of bytes in use, a compare-and-swap loop
 * so a take never overshoots the limit.
 */
#include "common/common.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

struct gsp_budget {
    size_t limit;
    atomic_size_t used;
    atomic_size_t peak;
    atomic_uint_least64_t refused;
};

gsp_budget *gsp_budget_new(size_t limit)
{
    gsp_budget *b;

    if (limit == 0) {
        errno = EINVAL;
        return NULL;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        errno = ENOMEM;
        return NULL;
    }
    b->limit = limit;
    atomic_init(&b->used, 0);
    atomic_init(&b->peak, 0);
    atomic_init(&b->refused, 0);
    return b;
}

void gsp_budget_free(gsp_budget *b)
{
    free(b);
}

int gsp_budget_take(gsp_budget *b, size_t n)
{
    size_t cur, next, pk;

    if (!b || n == 0)
        return 0;
    cur = atomic_load(&b->used);
    do {
        if (n > b->limit || cur > b->limit - n) {
            atomic_fetch_add(&b->refused, 1);
            return -ENOBUFS;
        }
        next = cur + n;
    } while (!atomic_compare_exchange_weak(&b->used, &cur, next));
    pk = atomic_load(&b->peak);
    while (next > pk && !atomic_compare_exchange_weak(&b->peak, &pk, next))
        ;
    return 0;
}

void gsp_budget_give(gsp_budget *b, size_t n)
{
    size_t cur;

    if (!b || n == 0)
        return;
    cur = atomic_load(&b->used);
    /* never wrap below zero, whatever a buggy caller gives back */
    while (!atomic_compare_exchange_weak(&b->used, &cur,
                                         cur >= n ? cur - n : 0))
        ;
}

void gsp_budget_get(const gsp_budget *b, gsp_budget_stats *out)
{
    if (!b) {
        *out = (gsp_budget_stats){0};
        return;
    }
    out->limit = b->limit;
    out->used = atomic_load(&((gsp_budget *)b)->used);
    out->peak = atomic_load(&((gsp_budget *)b)->peak);
    out->refused = atomic_load(&((gsp_budget *)b)->refused);
}
