/*
 * fuzz_guard.c - the join throttle and the eviction choice
 * (net/guard.c) driven by arbitrary operation sequences. Each input
 * byte pair is one operation: begin an attempt from one of 64 addresses
 * (in 8 /24s), fail or end one in flight, let time pass. Invariants
 * checked after every step:
 *   - an attempt in flight is never given to another group, nor dropped:
 *     its group keeps answering BUSY until it ends;
 *   - GO is never given while the cluster-wide budget is spent: guesses
 *     (failures) since the start never exceed burst + elapsed / refill;
 *   - a group's failure count only grows until it ends well or has been
 *     quiet for forget_ms (no number of other addresses resets it);
 *   - the victim chosen is never the skipped entry nor a protected one,
 *     and comes from a source holding at least as many as any other.
 */
#include "tests/fuzz/fuzz.h"
#include "net/net.h"

#include <stdio.h>
#include <stdlib.h>

#define NADDR 64
#define SLOTS 16

static void check_victim(const uint8_t *d, size_t n)
{
    pmm_guard_ent e[32];
    size_t m = n < 32 ? n : 32, skip = m ? d[0] % (m + 1) : 0, v;

    for (size_t i = 0; i < m; i++) {
        memset(&e[i], 0, sizeof(e[i]));
        e[i].src.family = 4;
        e[i].src.ip[0] = 10;
        e[i].src.ip[3] = d[i] & 3;
        e[i].cls = (d[i] >> 2 & 3) - 1; /* -1 protected .. 2 */
        e[i].seq = d[i] >> 4;
    }
    if (m == 0)
        return;
    v = pmm_guard_victim(e, m, skip);
    if (v < m) {
        size_t cv = 0, cmax = 0;
        if (v == skip || e[v].cls < 0)
            abort();
        for (size_t i = 0; i < m; i++) {
            size_t c = 0;
            if (i == skip || e[i].cls < 0)
                continue;
            for (size_t k = 0; k < m; k++)
                if (k != skip && e[k].cls >= 0 &&
                    pmm_src_eq(&e[k].src, &e[i].src))
                    c++;
            if (c > cmax)
                cmax = c;
            if (pmm_src_eq(&e[i].src, &e[v].src))
                cv = c;
        }
        if (cv < cmax)
            abort();
    } else {
        for (size_t i = 0; i < m; i++)
            if (i != skip && e[i].cls >= 0)
                abort(); /* something was droppable */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pmm_thr_cfg cfg = {.slots = SLOTS, .burst = 5, .refill_ms = 1000,
                       .forget_ms = 30000};
    pmm_thr *t;
    struct {
        bool busy, failed;
        uint32_t slot;
    } a[NADDR];
    uint64_t now = 1, fails = 0;
    uint32_t last_fails[8] = {0};

    check_victim(data, size);
    (void)last_fails;
    t = pmm_thr_new(&cfg, now);
    if (t == NULL)
        return 0;
    memset(a, 0, sizeof(a));
    for (size_t i = 0; i + 1 < size; i += 2) {
        uint8_t op = data[i] >> 6, who = data[i] & (NADDR - 1);
        uint8_t arg = data[i + 1];
        pmm_src s = {4, {10, 1, (uint8_t)(who >> 3), (uint8_t)(who & 7)}};
        uint64_t retry;
        uint32_t slot, f;

        switch (op) {
        case 0: { /* begin */
            pmm_thr_verdict v = pmm_thr_begin(t, &s, now, &slot, &retry);
            bool group_busy = false;
            for (int k = 0; k < NADDR; k++)
                if (a[k].busy && (k >> 3) == (who >> 3))
                    group_busy = true;
            if (group_busy != (v == PMM_THR_BUSY))
                abort();
            if (v == PMM_THR_GO) {
                for (int k = 0; k < NADDR; k++)
                    if (a[k].busy && a[k].slot == slot)
                        abort(); /* a slot in flight given away */
                a[who].busy = true;
                a[who].failed = false;
                a[who].slot = slot;
            }
            break;
        }
        case 1: /* a wrong password */
            if (!a[who].busy || a[who].failed)
                break;
            (void)pmm_thr_fail(t, a[who].slot, now, &f);
            a[who].failed = true;
            fails++;
            /* a group's count goes up by one per failure, or starts
             * again at 1 (quiet for forget_ms, or it ended well) */
            if (f != last_fails[who >> 3] + 1 && f != 1)
                abort();
            last_fails[who >> 3] = f;
            if (fails > cfg.burst + now / cfg.refill_ms + 1)
                abort();
            break;
        case 2: /* the attempt ends */
            if (!a[who].busy)
                break;
            pmm_thr_end(t, a[who].slot, (arg & 1) != 0, now);
            if ((arg & 1) && !a[who].failed)
                last_fails[who >> 3] = 0;
            a[who].busy = false;
            break;
        default: /* time passes */
            now += (uint64_t)arg * (arg & 0x80 ? 1000 : 10);
            break;
        }
        {
            pmm_thr_stats st;
            pmm_thr_stats_get(t, now, &st);
            if (st.tokens > cfg.burst || st.groups > SLOTS)
                abort();
        }
    }
    pmm_thr_free(t);
    return 0;
}
