/*
 * fuzz_frame.c - the gossip TCP frame reader (gossip/frame.c), as the libuv
 * adapter drives it: bytes in arbitrary pieces, a memory budget that may
 * run out, a bound on the announced length.
 *
 * Input: byte 0 picks the bound (max) and byte 1 the budget; the rest is a
 * sequence of frames (fuzz.h): each frame is one read's worth of bytes,
 * delivered through gsp_frame_space/gsp_frame_commit in pieces no larger
 * than the room offered. Aborts when an invariant breaks: the budget holds
 * exactly the buffer's capacity and never more than its limit, the buffer
 * never grows past the announced length, by more than GSP_FRAME_MAX_STEP
 * at once or to more than twice what arrived (plus the first 4 KiB), a
 * length above max or of 0 is refused before anything is allocated, a
 * complete frame holds exactly the bytes sent, and freeing gives every
 * byte back.
 */
#include "tests/fuzz/fuzz.h"
#include "gossip/gossip.h"

#include <errno.h>
#include <stdlib.h>

static const size_t MAXES[4] = {1, 100, 70000, 4u << 20};
static const size_t BUDGETS[4] = {4096, 20000, 300000, 64u << 20};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t max = MAXES[data[0] & 3];
    size_t limit = BUDGETS[data[1] & 3];
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    gsp_budget *b = gsp_budget_new(limit);
    if (!b) abort();
    gsp_frame f;
    gsp_frame_init(&f, max, b);
    uint8_t *copy = NULL; /* what was fed to the frame body, to compare */
    size_t copy_len = 0;
    uint32_t announced = 0;
    const uint8_t *chunk;
    size_t clen;
    bool done = false, failed = false;
    while (!done && !failed && fz_frame(&p, &n, &chunk, &clen)) {
        while (clen && !done && !failed) {
            uint8_t *dst;
            size_t room, prev_cap = f.cap;
            int rc = gsp_frame_space(&f, &dst, &room);
            gsp_budget_stats bs;
            gsp_budget_get(b, &bs);
            if (bs.used != f.cap || bs.used > limit) abort();
            if (rc == -ENOBUFS || rc == -ENOMEM) {
                if (f.cap != prev_cap) abort(); /* nothing changed */
                failed = true;
                break;
            }
            if (rc) abort(); /* -EALREADY only after completion */
            if (room == 0) abort();
            if (f.hdr_got == 4) {
                if (f.cap > f.need) abort();
                if (f.cap - prev_cap > GSP_FRAME_MAX_STEP) abort();
                if (f.cap > 2 * f.got + GSP_FRAME_MIN_ALLOC) abort();
            }
            size_t k = room < clen ? room : clen;
            bool body = f.hdr_got == 4;
            memcpy(dst, chunk, k);
            if (body) {
                uint8_t *nc = realloc(copy, copy_len + k);
                if (!nc) abort();
                copy = nc;
                memcpy(copy + copy_len, chunk, k);
                copy_len += k;
            }
            rc = gsp_frame_commit(&f, k);
            chunk += k;
            clen -= k;
            if (!body && f.hdr_got == 4) {
                announced = (uint32_t)f.hdr[0] << 24 | (uint32_t)f.hdr[1] << 16 |
                            (uint32_t)f.hdr[2] << 8 | f.hdr[3];
                bool ok = announced > 0 && announced <= max;
                if (ok != (rc == 0)) abort();
                if (!ok && (rc != GSP_ETOOBIG || f.buf || f.cap)) abort();
                if (!ok) failed = true;
            } else if (rc == 1) {
                if (f.got != announced || copy_len != announced ||
                    memcmp(f.buf, copy, announced))
                    abort();
                done = true;
            } else if (rc != 0) {
                abort();
            }
        }
    }
    if (done) {
        uint8_t *dst;
        size_t room;
        if (gsp_frame_space(&f, &dst, &room) != -EALREADY) abort();
    }
    /* one byte too many is refused */
    if (f.hdr_got == 4 && f.got < f.need && f.cap > f.got &&
        gsp_frame_commit(&f, f.cap - f.got + 1) != -EINVAL)
        abort();
    gsp_frame_free(&f);
    gsp_budget_stats bs;
    gsp_budget_get(b, &bs);
    if (bs.used != 0 || bs.peak > limit) abort();
    free(copy);
    gsp_budget_free(b);
    return 0;
}
