/*
 * frame.c - the incremental gossip TCP frame reader (gossip.h: gsp_frame_*).
 *
 * Length first, bounded by what the receiver accepts; then a buffer that
 * grows with the bytes that arrived, each growth taken from the memory
 * budget for unauthenticated input before it is allocated.
 */
#include "gossip/gossip.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void gsp_frame_init(gsp_frame *f, size_t max, gsp_budget *budget)
{
    memset(f, 0, sizeof(*f));
    f->max = max;
    f->budget = budget;
}

/* The capacity to grow to from f->cap: double (at least the minimum), at
 * most one step more, never past the announced length. */
static size_t next_cap(const gsp_frame *f)
{
    size_t c = f->cap ? f->cap * 2 : GSP_FRAME_MIN_ALLOC;
    if (c - f->cap > GSP_FRAME_MAX_STEP) c = f->cap + GSP_FRAME_MAX_STEP;
    if (c > f->need) c = f->need;
    return c;
}

int gsp_frame_space(gsp_frame *f, uint8_t **p, size_t *room)
{
    if (f->hdr_got < sizeof(f->hdr)) {
        *p = f->hdr + f->hdr_got;
        *room = sizeof(f->hdr) - f->hdr_got;
        return 0;
    }
    if (f->got >= f->need) return -EALREADY;
    if (f->got == f->cap) {
        size_t nc = next_cap(f);
        int rc = gsp_budget_take(f->budget, nc - f->cap);
        if (rc) return rc;
        uint8_t *nb = realloc(f->buf, nc);
        if (!nb) {
            gsp_budget_give(f->budget, nc - f->cap);
            return -ENOMEM;
        }
        f->buf = nb;
        f->cap = nc;
    }
    *p = f->buf + f->got;
    *room = f->cap - f->got;
    return 0;
}

int gsp_frame_commit(gsp_frame *f, size_t n)
{
    if (f->hdr_got < sizeof(f->hdr)) {
        if (n > sizeof(f->hdr) - f->hdr_got) return -EINVAL;
        f->hdr_got += n;
        if (f->hdr_got < sizeof(f->hdr)) return 0;
        size_t len = ((size_t)f->hdr[0] << 24) | ((size_t)f->hdr[1] << 16) |
                     ((size_t)f->hdr[2] << 8) | f->hdr[3];
        if (len == 0 || len > f->max) return GSP_ETOOBIG;
        f->need = len;
        return 0;
    }
    if (n > f->cap - f->got) return -EINVAL;
    f->got += n;
    return f->got == f->need ? 1 : 0;
}

void gsp_frame_free(gsp_frame *f)
{
    free(f->buf);
    gsp_budget_give(f->budget, f->cap);
    f->buf = NULL;
    f->cap = f->got = f->need = f->hdr_got = 0;
}
