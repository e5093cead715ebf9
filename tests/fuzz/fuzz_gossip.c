/*
 * fuzz_gossip.c - gossip packet and stream decode (gossip/core.c).
 *
 * Each input makes a fresh core (fixed id, seed and clock) and feeds it a
 * sequence of frames, chosen by the first byte (fuzz.h FZ_G_*): UDP
 * datagrams through gsp_core_recv, TCP stream requests through
 * gsp_core_stream_request, or replies to the core's own push-pull through
 * gsp_core_stream_result; plaintext, sealed here with the ring's key so the
 * decoder behind AES-GCM is reached, or raw into a keyed core. Timers run
 * between frames and every output is drained, so what a packet changed is
 * used (probes, acks, gossip, push-pull replies).
 */
#include "tests/fuzz/fuzz.h"
#include "gossip/gossip.h"

#include <stdbool.h>
#include <stdlib.h>

static uint64_t sink; /* keeps the reads of callback data */

static void on_member(void *ud, const gsp_member *m, gsp_state old, bool is_new)
{
    (void)ud;
    sink += (uint64_t)old + is_new + m->state + strlen(m->name);
    for (size_t i = 0; i < m->meta_len; i++) sink += m->meta[i];
}

static void on_user(void *ud, uint32_t key, uint64_t version,
                    const uint8_t *data, size_t len)
{
    (void)ud;
    sink += key + version;
    for (size_t i = 0; i < len; i++) sink += data[i];
}

static int visit(void *ud, const gsp_member *m)
{
    (void)ud;
    sink += m->inc.gen + m->inc.ver + m->state + strlen(m->name);
    for (size_t i = 0; i < m->meta_len; i++) sink += m->meta[i];
    return 0;
}

/* Pops every output; the ids of stream requests (push-pull, TCP ping) go
 * into ids (up to max). */
static size_t drain(gsp_core *c, uint64_t *ids, size_t max)
{
    size_t n = 0;
    gsp_out o;
    while (gsp_core_pop_out(c, &o) == 1) {
        if (o.kind == GSP_OUT_STREAM && n < max) ids[n++] = o.req_id;
        sink += o.len;
        free(o.data);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] % FZ_GOSSIP_MODES;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    bool keyed = mode != FZ_G_UDP_PLAIN && mode != FZ_G_STREAM_PLAIN;
    bool seal_here = mode == FZ_G_UDP_OPENED || mode == FZ_G_STREAM_OPENED ||
                     mode == FZ_G_RESULT;

    gsp_keyring *kr = NULL;
    if (keyed) {
        kr = gsp_keyring_new(FZ_LABEL);
        if (!kr) abort();
        if (gsp_keyring_add(kr, FZ_KEY)) abort();
    }
    gsp_config cfg;
    gsp_config_default(&cfg);
    gsp_id self;
    memset(self.b, FZ_SELF_ID_BYTE, sizeof(self.b));
    gsp_addr addr = {.family = 4, .ip = {10, 0, 0, 1}, .port = 7946};
    gsp_addr from = {.family = 4, .ip = {10, 0, 0, 2}, .port = 7946};
    gsp_callbacks cb = {.member_changed = on_member, .user_msg = on_user};
    uint64_t now = 1000;
    gsp_core *c = NULL;
    if (gsp_core_new(&c, &cfg, &self, "fuzz", &addr, 3, kr, 42, now, &cb))
        abort();
    static const uint8_t meta[] = {1, 2, 3};
    gsp_core_set_meta(c, now, meta, sizeof(meta));

    uint64_t ids[16];
    size_t n_ids = 0, next_id = 0;
    if (mode == FZ_G_RESULT) {
        gsp_core_join(c, now, &from, 1);
        n_ids = drain(c, ids, 16);
    }

    const uint8_t *f;
    size_t flen;
    uint8_t *sealed = NULL;
    while (fz_frame(&p, &n, &f, &flen)) {
        const uint8_t *in = f;
        size_t in_len = flen;
        if (seal_here) {
            free(sealed);
            sealed = malloc(flen + GSP_SEAL_OVERHEAD);
            if (!sealed) abort();
            if (gsp_seal(kr, f, flen, sealed, flen + GSP_SEAL_OVERHEAD,
                         &in_len))
                abort();
            in = sealed;
        }
        switch (mode) {
        case FZ_G_UDP_PLAIN:
        case FZ_G_UDP_OPENED:
        case FZ_G_UDP_SEALED:
            gsp_core_recv(c, now, &from, in, in_len);
            break;
        case FZ_G_STREAM_PLAIN:
        case FZ_G_STREAM_OPENED:
        case FZ_G_STREAM_SEALED: {
            uint8_t *reply = NULL;
            size_t reply_len = 0;
            gsp_core_stream_request(c, now, &from, &addr, in, in_len,
                                    &reply, &reply_len);
            if (reply_len && !reply) abort();
            free(reply);
            break;
        }
        case FZ_G_RESULT:
            if (next_id < n_ids)
                gsp_core_stream_result(c, now, ids[next_id++], true, in,
                                       in_len);
            else
                gsp_core_recv(c, now, &from, in, in_len);
            break;
        }
        now += 97;
        gsp_core_tick(c, now);
        uint64_t more[16];
        size_t k = drain(c, more, 16);
        for (size_t i = 0; i < k && n_ids < 16; i++) ids[n_ids++] = more[i];
    }
    free(sealed);
    /* let suspicion and reaping timers fire on what was learnt */
    for (int i = 0; i < 20; i++) {
        now += 1000;
        gsp_core_tick(c, now);
        drain(c, ids, 0);
    }
    gsp_core_foreach(c, visit, NULL);
    gsp_stats st;
    gsp_core_stats(c, &st);
    sink += st.drop_decode + gsp_core_count(c, 0xf) +
            gsp_core_pending_updates(c) + gsp_core_health(c);
    gsp_core_free(c);
    gsp_keyring_free(kr);
    return 0;
}
