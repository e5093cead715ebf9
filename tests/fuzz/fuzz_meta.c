/*
 * fuzz_meta.c - node metadata as it arrives in gossip (membership/meta.c,
 * pmm_meta_decode) and the status row built from a member carrying it
 * (pmm_status_row_from_member). Accepted metadata must re-encode and
 * decode to the same values (the store's position only with a store
 * state: without one it is not sent).
 */
#include "tests/fuzz/fuzz.h"
#include "membership/membership.h"

#include <stdlib.h>

static size_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pmm_meta m, m2;
    memset(&m, 0x5a, sizeof(m));
    if (pmm_meta_decode(&m, data, size) == 0) {
        if (m.mem_pct > 100 || m.disk_pct > 100 ||
            memchr(m.role, 0, sizeof(m.role)) == NULL)
            abort();
        uint8_t buf[GSP_META_MAX];
        size_t len = 0;
        if (pmm_meta_encode(&m, buf, sizeof(buf), &len) != 0) abort();
        memset(&m2, 0, sizeof(m2));
        if (pmm_meta_decode(&m2, buf, len) != 0) abort();
        if (m2.start_time != m.start_time || m2.load1 != m.load1 ||
            m2.cid != m.cid || strcmp(m2.role, m.role) != 0 ||
            m2.cfg_epoch != m.cfg_epoch || m2.db_state != m.db_state ||
            /* the store's position is only sent with a store state */
            (m.db_state && m2.db_seq != m.db_seq))
            abort();
    }
    for (int st = GSP_ALIVE; st <= GSP_LEFT; st++) {
        gsp_member mem;
        memset(&mem, 0, sizeof(mem));
        memset(mem.id.b, 7, sizeof(mem.id.b));
        memcpy(mem.name, "node", 5);
        mem.addr = (gsp_addr){.family = 4, .ip = {10, 0, 0, 3}, .port = 7946};
        mem.inc = (gsp_inc){1, 2};
        mem.state = (gsp_state)st;
        mem.meta = size ? data : NULL;
        mem.meta_len = size;
        pmm_status_row r;
        pmm_status_row_from_member(&r, &mem, 1700000000);
        pmm_status_db_finish(&r, 1);
        char up[32];
        sink += strlen(pmm_format_uptime(r.uptime, up, sizeof(up))) +
                (size_t)r.mem + strlen(r.role);
        pmm_buf b;
        pmm_buf_init(&b, 1u << 20);
        pmm_status_render_text(&b, &r, 1);
        pmm_status_write_json(&b, &r, 1);
        sink += b.len;
        pmm_buf_free(&b);
    }
    return 0;
}
