/*
 * gen_corpus.c - writes the seed corpora of the fuzz targets:
 *
 *   tests/fuzz/gen_corpus DIR      (DIR/TARGET/NAME for every seed)
 *
 * The gossip seeds are what real cores say to each other (a peer joining
 * the fuzzed core's identity, probing it, gossiping a third node, user
 * broadcasts, metadata, leaving), captured from an in-process exchange;
 * the protobuf seeds are valid messages of every kind built with the
 * project's encoders; the text seeds are valid files and requests and
 * their classic edge cases. Deterministic: same output every run (the
 * sealed gossip seeds aside: their nonces are random).
 */
#include "tests/fuzz/fuzz.h"
#include "gossip/gossip.h"
#include "membership/membership.h"
#include "membership/cluster.pb-c.h"
#include "store/store.pb-c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static const char *outdir;

static void put(const char *target, const char *name, const void *data,
                size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", outdir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static void put_str(const char *target, const char *name, const char *s)
{
    put(target, name, s, strlen(s));
}

/* ---- framed inputs (fuzz.h) ------------------------------------------------ */
typedef struct frames {
    uint8_t *p;
    size_t len, cap;
} frames;

static void fr_raw(frames *f, const void *d, size_t n)
{
    if (f->len + n > f->cap) {
        f->cap = (f->len + n) * 2 + 64;
        f->p = realloc(f->p, f->cap);
        if (!f->p) abort();
    }
    memcpy(f->p + f->len, d, n);
    f->len += n;
}

static void fr_add(frames *f, const void *d, size_t n)
{
    uint8_t h[2] = {(uint8_t)(n & 0xff), (uint8_t)(n >> 8)};
    if (n > 0xffff) abort();
    fr_raw(f, h, 2);
    fr_raw(f, d, n);
}

static void fr_start(frames *f, uint8_t mode)
{
    f->len = 0;
    fr_raw(f, &mode, 1);
}

/* ---- frame (the TCP frame reader) ------------------------------------------- */
/* Input: [max index][budget index] then frames = the pieces read. */
static void frame_seed(const char *name, uint8_t max_i, uint8_t budget_i,
                       uint32_t len, size_t body, size_t piece, bool hdr_bytes)
{
    frames f = {0};
    uint8_t mode[2] = {max_i, budget_i};
    f.len = 0;
    fr_raw(&f, mode, 2);
    uint8_t h[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16),
                    (uint8_t)(len >> 8), (uint8_t)len};
    if (hdr_bytes) {
        for (int i = 0; i < 4; i++) fr_add(&f, h + i, 1);
    } else {
        fr_add(&f, h, 4);
    }
    uint8_t *d = malloc(piece ? piece : 1);
    if (!d) abort();
    for (size_t off = 0; off < body; off += piece) {
        size_t k = body - off < piece ? body - off : piece;
        for (size_t i = 0; i < k; i++) d[i] = (uint8_t)(off + i);
        fr_add(&f, d, k);
    }
    free(d);
    put("frame", name, f.p, f.len);
    free(f.p);
}

static void frame_seeds(void)
{
    /* max: 1, 100, 70000, 4 MiB; budget: 4096, 20000, 300000, 64 MiB */
    frame_seed("whole-50", 1, 1, 50, 50, 50, false);
    frame_seed("header-bytes-pieces", 2, 2, 9000, 9000, 333, true);
    frame_seed("too-long", 1, 1, 101, 0, 1, false);
    frame_seed("zero", 2, 2, 0, 0, 1, false);
    frame_seed("budget-runs-out", 2, 0, 60000, 10000, 1000, false);
    frame_seed("short-of-announced", 3, 3, 4u << 20, 20000, 4096, false);
    frame_seed("grows-150k", 3, 3, 150000, 150000, 65535, false);
}

/* ---- gossip ------------------------------------------------------------------ */
#define MAXPK 256
typedef struct pk {
    uint8_t *d;
    size_t n;
} pk;

typedef struct node {
    gsp_core *c;
    gsp_addr addr;
} node;

static pk udp_to_self[MAXPK];   /* P -> S datagrams (plaintext) */
static size_t n_udp;
static pk stream_req;           /* P's push-pull request to S */
static pk stream_reply;         /* P's answer to S's push-pull */
static pk stream_ping;          /* a TCP fallback ping from P to S */

static void keep(pk *k, const uint8_t *d, size_t n)
{
    k->d = malloc(n ? n : 1);
    if (!k->d) abort();
    memcpy(k->d, d, n);
    k->n = n;
}

static void mk_core(node *nd, uint8_t idb, uint8_t ip4, const char *name)
{
    gsp_config cfg;
    gsp_config_default(&cfg);
    gsp_id id;
    memset(id.b, idb, sizeof(id.b));
    nd->addr = (gsp_addr){.family = 4, .ip = {10, 0, 0, ip4}, .port = 7946};
    if (gsp_core_new(&nd->c, &cfg, &id, name, &nd->addr, 3, NULL, idb, 1000,
                     NULL))
        abort();
    uint8_t meta[GSP_META_MAX];
    size_t ml = 0;
    pmm_meta m = {.start_time = 1700000000, .load1 = 25, .mem_pct = 40,
                  .disk_pct = 10, .cid = ip4, .cfg_epoch = 1, .cfg_version = 2};
    snprintf(m.role, sizeof(m.role), "%s", ip4 == 2 ? "master" : "node");
    if (pmm_meta_encode(&m, meta, sizeof(meta), &ml)) abort();
    gsp_core_set_meta(nd->c, 1000, meta, ml);
}

/* Delivers everything queued between the nodes; records what P sends S. */
static void pump(node *nodes, size_t nn, uint64_t now, node *P, node *S)
{
    for (int round = 0; round < 8; round++) {
        bool any = false;
        for (size_t i = 0; i < nn; i++) {
            gsp_out o;
            while (gsp_core_pop_out(nodes[i].c, &o) == 1) {
                any = true;
                node *to = NULL;
                for (size_t k = 0; k < nn; k++)
                    if (gsp_addr_eq(&nodes[k].addr, &o.addr)) to = &nodes[k];
                if (to && o.kind == GSP_OUT_UDP) {
                    if (&nodes[i] == P && to == S && n_udp < MAXPK)
                        keep(&udp_to_self[n_udp++], o.data, o.len);
                    gsp_core_recv(to->c, now, &nodes[i].addr, o.data, o.len);
                } else if (to && o.kind == GSP_OUT_STREAM) {
                    uint8_t *reply = NULL;
                    size_t rl = 0;
                    if (&nodes[i] == P && to == S) {
                        /* the first push-pull, then a TCP ping */
                        if (!stream_req.d) keep(&stream_req, o.data, o.len);
                        else if (!stream_ping.d && o.len < 100)
                            keep(&stream_ping, o.data, o.len);
                    }
                    gsp_core_stream_request(to->c, now, &nodes[i].addr,
                                            &to->addr, o.data, o.len, &reply,
                                            &rl);
                    if (&nodes[i] == S && to == P && reply && !stream_reply.d)
                        keep(&stream_reply, reply, rl);
                    gsp_core_stream_result(nodes[i].c, now, o.req_id,
                                           reply != NULL, reply, rl);
                    free(reply);
                }
                free(o.data);
            }
        }
        if (!any) break;
    }
}

static void gossip_exchange(void)
{
    node nodes[3];
    mk_core(&nodes[0], FZ_SELF_ID_BYTE, 1, "fuzz");
    mk_core(&nodes[1], FZ_PEER_ID_BYTE, 2, "peer");
    mk_core(&nodes[2], 0x33, 3, "third");
    node *S = &nodes[0], *P = &nodes[1];
    uint64_t now = 1000;
    gsp_core_join(P->c, now, &S->addr, 1);
    gsp_core_join(nodes[2].c, now, &P->addr, 1);
    pump(nodes, 3, now, P, S);
    gsp_core_join(S->c, now, &P->addr, 1);
    pump(nodes, 3, now, P, S);
    for (int t = 0; t < 60; t++) {
        now += 100;
        if (t == 10) gsp_core_broadcast(P->c, 1, 5, (const uint8_t *)"hello", 5);
        if (t == 20) gsp_core_broadcast(nodes[2].c, 2, 9, (const uint8_t *)"x", 1);
        if (t == 40) gsp_core_leave(nodes[2].c, now);
        for (int i = 0; i < 3; i++) gsp_core_tick(nodes[i].c, now);
        pump(nodes, 3, now, P, S);
    }
    /* the third node dies: P suspects it */
    for (int t = 0; t < 30; t++) {
        now += 200;
        gsp_core_tick(P->c, now);
        gsp_core_tick(S->c, now);
        pump(nodes, 2, now, P, S);
    }
    gsp_core_leave(P->c, now);
    for (int t = 0; t < 10; t++) {
        now += 100;
        gsp_core_tick(P->c, now);
        pump(nodes, 2, now, P, S);
    }
    for (int i = 0; i < 3; i++) gsp_core_free(nodes[i].c);
}

static void sealed_frame(frames *f, gsp_keyring *kr, const pk *k)
{
    uint8_t *s = malloc(k->n + GSP_SEAL_OVERHEAD);
    size_t sl = 0;
    if (!s || gsp_seal(kr, k->d, k->n, s, k->n + GSP_SEAL_OVERHEAD, &sl))
        abort();
    fr_add(f, s, sl);
    free(s);
}

static void gossip_seeds(void)
{
    gossip_exchange();
    if (n_udp < 4 || !stream_req.d || !stream_reply.d) {
        fprintf(stderr, "gen_corpus: gossip exchange too short (%zu)\n", n_udp);
        exit(1);
    }
    gsp_keyring *kr = gsp_keyring_new(FZ_LABEL);
    if (!kr || gsp_keyring_add(kr, FZ_KEY)) abort();
    frames f = {0};
    char name[64];
    static const uint8_t udp_modes[] = {FZ_G_UDP_PLAIN, FZ_G_UDP_OPENED};
    for (size_t m = 0; m < 2; m++) {
        /* the whole conversation, in chunks of 12 datagrams */
        for (size_t i = 0; i < n_udp; i += 12) {
            fr_start(&f, udp_modes[m]);
            for (size_t k = i; k < n_udp && k < i + 12; k++)
                fr_add(&f, udp_to_self[k].d, udp_to_self[k].n);
            snprintf(name, sizeof(name), "udp-m%u-seq%03zu", udp_modes[m], i);
            put("gossip", name, f.p, f.len);
        }
    }
    /* sealed, fed raw: a few real ones, then a tampered and a short one */
    fr_start(&f, FZ_G_UDP_SEALED);
    for (size_t k = 0; k < n_udp && k < 6; k++) sealed_frame(&f, kr, &udp_to_self[k]);
    put("gossip", "udp-sealed-valid", f.p, f.len);
    fr_start(&f, FZ_G_UDP_SEALED);
    sealed_frame(&f, kr, &udp_to_self[0]);
    f.p[f.len - 1] ^= 1;
    fr_add(&f, "\x01\x02\x03", 3);
    fr_add(&f, "", 0);
    put("gossip", "udp-sealed-bad", f.p, f.len);
    /* streams */
    static const uint8_t st_modes[] = {FZ_G_STREAM_PLAIN, FZ_G_STREAM_OPENED};
    for (size_t m = 0; m < 2; m++) {
        fr_start(&f, st_modes[m]);
        fr_add(&f, stream_req.d, stream_req.n);
        snprintf(name, sizeof(name), "stream-m%u-pushpull", st_modes[m]);
        put("gossip", name, f.p, f.len);
        if (stream_ping.d) {
            fr_start(&f, st_modes[m]);
            fr_add(&f, stream_ping.d, stream_ping.n);
            snprintf(name, sizeof(name), "stream-m%u-ping", st_modes[m]);
            put("gossip", name, f.p, f.len);
        }
    }
    fr_start(&f, FZ_G_STREAM_SEALED);
    sealed_frame(&f, kr, &stream_req);
    put("gossip", "stream-sealed-pushpull", f.p, f.len);
    fr_start(&f, FZ_G_RESULT);
    fr_add(&f, stream_reply.d, stream_reply.n);
    for (size_t k = 0; k < n_udp && k < 6; k++)
        fr_add(&f, udp_to_self[k].d, udp_to_self[k].n);
    put("gossip", "result-pushpull", f.p, f.len);
    /* edge cases */
    for (uint8_t m = 0; m < FZ_GOSSIP_MODES; m++) {
        uint8_t e[3] = {m, 0, 0};
        snprintf(name, sizeof(name), "edge-m%u-empty", m);
        put("gossip", name, e, 3);
    }
    put("gossip", "edge-nothing", "", 0);
    free(f.p);
    gsp_keyring_free(kr);
    for (size_t i = 0; i < n_udp; i++) free(udp_to_self[i].d);
    free(stream_req.d);
    free(stream_reply.d);
    free(stream_ping.d);
}

/* ---- cluster ----------------------------------------------------------------- */
static void mk_cluster(pmm_cluster *c, size_t n, size_t keys)
{
    memset(c, 0, sizeof(*c));
    for (size_t i = 0; i < sizeof(c->cluster_id); i++)
        c->cluster_id[i] = (uint8_t)(0xC0 + i);
    c->epoch = 3;
    c->version = 17;
    c->master_cid = 1;
    c->maxcid = (uint32_t)n + 2;
    c->nodes = calloc(n, sizeof(*c->nodes));
    if (!c->nodes) abort();
    c->n_nodes = n;
    for (size_t i = 0; i < n; i++) {
        pmm_cnode *nd = &c->nodes[i];
        nd->cid = (uint32_t)i + 1;
        snprintf(nd->name, sizeof(nd->name), "pmg%zu", i + 1);
        if (i == 2) snprintf(nd->ip, sizeof(nd->ip), "fd00::%zu", i + 1);
        else snprintf(nd->ip, sizeof(nd->ip), "10.0.0.%zu", i + 1);
        nd->gossip_port = 7946;
        nd->api_port = 7947;
        memset(nd->node_id.b, (int)i + 1, GSP_ID_LEN);
        pmm_tls_fp fp;
        memset(fp.b, 0x10 + (int)i, sizeof(fp.b));
        pmm_tls_fp_str(&fp, nd->fp, sizeof(nd->fp));
        nd->master = i == 0;
    }
    memset(c->salt, 0x5A, sizeof(c->salt));
    memset(c->hash, 0x6B, sizeof(c->hash));
    c->iter = PMM_PBKDF2_ITER;
    for (size_t k = 0; k < keys; k++) memset(c->keys[k], 0x70 + (int)k, GSP_KEY_LEN);
    c->n_keys = keys;
}

static void put_request(const char *name, const Pmgcm__Cluster__Request *r)
{
    size_t n = pmgcm__cluster__request__get_packed_size(r);
    uint8_t *b = malloc(n + 1);
    pmgcm__cluster__request__pack(r, b);
    put("cluster", name, b, n);
    free(b);
}

static void put_response(const char *name, const Pmgcm__Cluster__Response *r)
{
    size_t n = pmgcm__cluster__response__get_packed_size(r);
    uint8_t *b = malloc(n + 1);
    pmgcm__cluster__response__pack(r, b);
    put("cluster", name, b, n);
    free(b);
}

static void cluster_seeds(void)
{
    pmm_cluster c;
    uint8_t *buf;
    size_t len;
    char name[64];
    for (size_t keys = 0; keys <= 2; keys++) {
        mk_cluster(&c, 3, keys);
        if (keys == 2) {
            c.has_files_digest = true;
            memset(c.files_digest, 0x42, sizeof(c.files_digest));
        }
        if (pmm_cluster_encode(&c, true, &buf, &len)) abort();
        snprintf(name, sizeof(name), "config-3nodes-%zukeys", keys);
        put("cluster", name, buf, len);
        free(buf);
        pmm_cluster_clear(&c);
    }
    mk_cluster(&c, 1, 1);
    if (pmm_cluster_encode(&c, true, &buf, &len)) abort();
    put("cluster", "config-1node", buf, len);
    free(buf);

    /* requests */
    Pmgcm__Cluster__Request rq = PMGCM__CLUSTER__REQUEST__INIT;
    Pmgcm__Cluster__JoinRequest jr = PMGCM__CLUSTER__JOIN_REQUEST__INIT;
    uint8_t nid[GSP_ID_LEN];
    memset(nid, 0x44, sizeof(nid));
    jr.password = "secret";
    jr.name = "pmg4";
    jr.ip = "10.0.0.4";
    jr.gossip_port = 7946;
    jr.api_port = 7947;
    jr.node_id.data = nid;
    jr.node_id.len = sizeof(nid);
    rq.kind = PMGCM__CLUSTER__REQUEST__KIND__JOIN;
    rq.join = &jr;
    put_request("req-join", &rq);
    rq.join = NULL;
    rq.kind = PMGCM__CLUSTER__REQUEST__KIND__FETCH;
    put_request("req-fetch", &rq);
    Pmgcm__Cluster__Config *pb = NULL;
    mk_cluster(&c, 3, 0);
    if (pmm_cluster_to_pb(&c, false, &pb)) abort();
    rq.kind = PMGCM__CLUSTER__REQUEST__KIND__REMOVED;
    rq.config = pb;
    put_request("req-removed", &rq);
    rq.config = NULL;
    rq.kind = PMGCM__CLUSTER__REQUEST__KIND__STORE;
    rq.has_store = true;
    rq.store.data = (uint8_t *)"\x08\x01\x12\x04\x08\x03\x10\x64\x20\x07";
    rq.store.len = 10;
    put_request("req-store", &rq);
    rq.has_store = false;
    rq.kind = PMGCM__CLUSTER__REQUEST__KIND__FILES;
    put_request("req-files", &rq);
    rq.kind = PMGCM__CLUSTER__REQUEST__KIND__FILE_GET;
    rq.file_name = "pmg/pmg.conf";
    rq.has_file_offset = true;
    rq.file_offset = 65536;
    put_request("req-file-get", &rq);

    /* responses */
    Pmgcm__Cluster__Response rs = PMGCM__CLUSTER__RESPONSE__INIT;
    rs.ok = true;
    rs.config = pb;
    rs.has_cid = true;
    rs.cid = 4;
    put_response("resp-join", &rs);
    rs.config = NULL;
    rs.has_cid = false;
    rs.ok = false;
    rs.error = "wrong password";
    put_response("resp-error", &rs);
    rs.error = NULL;
    rs.ok = true;
    Pmgcm__Cluster__FileEntry fe[2] = {PMGCM__CLUSTER__FILE_ENTRY__INIT,
                                       PMGCM__CLUSTER__FILE_ENTRY__INIT};
    Pmgcm__Cluster__FileEntry *fep[2] = {&fe[0], &fe[1]};
    uint8_t sha[32];
    memset(sha, 0x99, sizeof(sha));
    fe[0].name = "a.conf";
    fe[0].size = 10;
    fe[0].mode = 0644;
    fe[0].sha256.data = sha;
    fe[0].sha256.len = 32;
    fe[1] = fe[0];
    fe[1].name = "dir/b.pem";
    fe[1].mode = 0600;
    rs.n_files = 2;
    rs.files = fep;
    rs.has_files_digest = true;
    rs.files_digest.data = sha;
    rs.files_digest.len = 32;
    put_response("resp-files", &rs);
    rs.n_files = 0;
    rs.files = NULL;
    rs.has_files_digest = false;
    rs.has_file_data = true;
    rs.file_data.data = (uint8_t *)"line one\nline two\n";
    rs.file_data.len = 18;
    rs.has_file_size = true;
    rs.file_size = 18;
    rs.has_file_sha256 = true;
    rs.file_sha256.data = sha;
    rs.file_sha256.len = 32;
    put_response("resp-file-get", &rs);
    pmm_cluster_pb_free(pb);
    pmm_cluster_clear(&c);

    Pmgcm__Cluster__Announce an = PMGCM__CLUSTER__ANNOUNCE__INIT;
    uint8_t cid[16];
    memset(cid, 0xC0, sizeof(cid));
    an.cluster_id.data = cid;
    an.cluster_id.len = 16;
    an.epoch = 3;
    an.version = 18;
    an.master_cid = 1;
    an.from_cid = 2;
    len = pmgcm__cluster__announce__get_packed_size(&an);
    buf = malloc(len);
    pmgcm__cluster__announce__pack(&an, buf);
    put("cluster", "announce", buf, len);
    free(buf);
    put("cluster", "edge-empty", "", 0);
}

/* ---- store ------------------------------------------------------------------- */
static size_t pack_msg(const Pmgcm__Store__Msg *m, uint8_t **out)
{
    size_t n = pmgcm__store__msg__get_packed_size(m);
    *out = malloc(n + 1);
    if (!*out) abort();
    pmgcm__store__msg__pack(m, *out);
    return n;
}

static void store_seeds(void)
{
    frames f = {0};
    uint8_t *b;
    size_t n;
    /* opening messages (mode 0 + Open) */
    Pmgcm__Store__Open o = PMGCM__STORE__OPEN__INIT;
    Pmgcm__Store__Pos from = PMGCM__STORE__POS__INIT;
    from.epoch = 3;
    from.seq = 100;
    static const struct { int kind; const char *name; } opens[] = {
        {PMGCM__STORE__OPEN__KIND__SUBSCRIBE, "open-subscribe"},
        {PMGCM__STORE__OPEN__KIND__POSITION, "open-position"},
        {PMGCM__STORE__OPEN__KIND__SNAPSHOT, "open-snapshot"},
    };
    for (size_t i = 0; i < 3; i++) {
        o.kind = (Pmgcm__Store__Open__Kind)opens[i].kind;
        o.from = opens[i].kind == PMGCM__STORE__OPEN__KIND__SUBSCRIBE ? &from : NULL;
        o.schema = opens[i].kind == PMGCM__STORE__OPEN__KIND__SNAPSHOT
                       ? "public.t(id integer primary key, v text)" : NULL;
        o.has_cid = true;
        o.cid = 7;
        n = pmgcm__store__open__get_packed_size(&o);
        b = malloc(n);
        pmgcm__store__open__pack(&o, b);
        fr_start(&f, 0);
        fr_raw(&f, b, n);
        put("store", opens[i].name, f.p, f.len);
        free(b);
    }

    /* delta stream messages */
    Pmgcm__Store__Change ch[3] = {PMGCM__STORE__CHANGE__INIT,
                                  PMGCM__STORE__CHANGE__INIT,
                                  PMGCM__STORE__CHANGE__INIT};
    Pmgcm__Store__Change *chp[3] = {&ch[0], &ch[1], &ch[2]};
    for (int i = 0; i < 3; i++) {
        ch[i].epoch = 3;
        ch[i].seq = 101 + (uint64_t)i;
        ch[i].ts_us = 1700000000000000 + i;
        ch[i].has_origin = true;
        ch[i].origin = 1;
    }
    ch[0].op = 'I';
    ch[0].tbl = "public.t";
    ch[0].new_ = "{\"id\": 1, \"v\": \"a\\tb\"}";
    ch[1].op = 'U';
    ch[1].tbl = "public.t";
    ch[1].old = "{\"id\": 1}";
    ch[1].new_ = "{\"id\": 1, \"v\": \"c\"}";
    ch[2].op = 'D';
    ch[2].tbl = "public.t";
    ch[2].old = "{\"id\": 1}";
    ch[2].last = true;
    Pmgcm__Store__Pos head = PMGCM__STORE__POS__INIT;
    head.epoch = 3;
    head.seq = 103;

    Pmgcm__Store__Msg m = PMGCM__STORE__MSG__INIT;
    m.kind = PMGCM__STORE__MSG__KIND__CHANGES;
    m.n_changes = 3;
    m.changes = chp;
    n = pack_msg(&m, &b);
    put("store", "msg-changes", b, n);
    uint8_t *changes = b;
    size_t changes_len = n;

    Pmgcm__Store__Msg hm = PMGCM__STORE__MSG__INIT;
    hm.kind = PMGCM__STORE__MSG__KIND__HEAD;
    hm.head = &head;
    hm.has_head_ts_us = true;
    hm.head_ts_us = 1700000000000002;
    hm.has_master = true;
    hm.master = true;
    uint8_t *headb;
    size_t head_len = pack_msg(&hm, &headb);
    put("store", "msg-head", headb, head_len);

    /* a subscription: head, changes, head, an error */
    Pmgcm__Store__Msg em = PMGCM__STORE__MSG__INIT;
    em.kind = PMGCM__STORE__MSG__KIND__ERROR;
    em.error = "the master is shutting down";
    uint8_t *errb;
    size_t err_len = pack_msg(&em, &errb);
    fr_start(&f, 1);
    fr_add(&f, headb, head_len);
    fr_add(&f, changes, changes_len);
    fr_add(&f, headb, head_len);
    fr_add(&f, errb, err_len);
    put("store", "sub-head-changes-error", f.p, f.len);

    Pmgcm__Store__Msg nm = PMGCM__STORE__MSG__INIT;
    nm.kind = PMGCM__STORE__MSG__KIND__NEED_SNAPSHOT;
    n = pack_msg(&nm, &b);
    fr_start(&f, 1);
    fr_add(&f, headb, head_len);
    fr_add(&f, b, n);
    put("store", "sub-need-snapshot", f.p, f.len);
    free(b);

    Pmgcm__Store__Msg dm = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Pos fork = PMGCM__STORE__POS__INIT;
    fork.epoch = 2;
    fork.seq = 90;
    dm.kind = PMGCM__STORE__MSG__KIND__DIVERGED;
    dm.fork = &fork;
    n = pack_msg(&dm, &b);
    put("store", "msg-diverged", b, n);
    fr_start(&f, 3);
    fr_add(&f, b, n);
    put("store", "frames-diverged", f.p, f.len);
    free(b);

    Pmgcm__Store__Msg pm = PMGCM__STORE__MSG__INIT;
    pm.kind = PMGCM__STORE__MSG__KIND__POSITION;
    pm.head = &head;
    n = pack_msg(&pm, &b);
    fr_start(&f, 2);
    fr_add(&f, b, n);
    put("store", "position-answer", f.p, f.len);
    fr_start(&f, 2);
    fr_add(&f, errb, err_len);
    put("store", "position-error", f.p, f.len);
    free(b);

    /* a snapshot: begin, table, data, end */
    Pmgcm__Store__Epoch ep = PMGCM__STORE__EPOCH__INIT;
    Pmgcm__Store__Epoch *epp[1] = {&ep};
    ep.epoch = 3;
    ep.start_seq = 50;
    ep.master_cid = 1;
    Pmgcm__Store__TableInfo ti = PMGCM__STORE__TABLE_INFO__INIT;
    Pmgcm__Store__TableInfo *tip[1] = {&ti};
    ti.name = "public.t";
    ti.est_rows = 2;
    ti.est_bytes = 20;
    Pmgcm__Store__Msg sb = PMGCM__STORE__MSG__INIT;
    sb.kind = PMGCM__STORE__MSG__KIND__SNAP_BEGIN;
    sb.head = &head;
    sb.n_epochs = 1;
    sb.epochs = epp;
    sb.n_tables = 1;
    sb.tables = tip;
    sb.schema = "public.t(id integer primary key, v text)";
    Pmgcm__Store__Msg st = PMGCM__STORE__MSG__INIT;
    st.kind = PMGCM__STORE__MSG__KIND__SNAP_TABLE;
    st.name = "public.t";
    Pmgcm__Store__Msg sd = PMGCM__STORE__MSG__INIT;
    sd.kind = PMGCM__STORE__MSG__KIND__SNAP_DATA;
    sd.has_data = true;
    sd.data.data = (uint8_t *)"1\ta\n2\t\\N\n";
    sd.data.len = 10;
    Pmgcm__Store__Msg se = PMGCM__STORE__MSG__INIT;
    se.kind = PMGCM__STORE__MSG__KIND__SNAP_END;
    se.has_rows = true;
    se.rows = 2;
    se.has_bytes = true;
    se.bytes = 10;
    const Pmgcm__Store__Msg *snap[4] = {&sb, &st, &sd, &se};
    fr_start(&f, 3);
    for (int i = 0; i < 4; i++) {
        n = pack_msg(snap[i], &b);
        fr_add(&f, b, n);
        if (i == 0) put("store", "msg-snap-begin", b, n);
        free(b);
    }
    put("store", "frames-snapshot", f.p, f.len);
    put("store", "edge-empty", "", 0);
    put("store", "edge-mode1-empty-frame", "\x01\x00\x00", 3);
    free(changes);
    free(headb);
    free(errb);
    free(f.p);
}

/* ---- text targets -------------------------------------------------------------- */
static void config_seeds(void)
{
    put_str("config", "minimal", "name = pmg1\nbind = 192.168.2.127:7946\n"
                                 "data_dir = /var/lib/pmgcm\n");
    put_str("config", "full",
            "# a full file\n"
            "name = pmg-1.example_x\n"
            "bind = 0.0.0.0\n"
            "advertise = 10.0.0.1:7946  # the public address\n"
            "data_dir = /var/lib/pmgcm\n"
            "control_socket = /run/pmgcm/pmgcm.sock\n"
            "key_file = /etc/pmgcm/keys\n"
            "label = prod\n"
            "peers = 10.0.0.2, 10.0.0.3:7000, [fd00::4]:7946\n"
            "log_level = debug\n"
            "meta_interval_ms = 5000\n"
            "probe_interval_ms = 500\nprobe_timeout_ms = 200\n"
            "indirect_checks = 2\nsuspicion_mult = 4\nsuspicion_max_mult = 5\n"
            "retransmit_mult = 3\ngossip_interval_ms = 100\ngossip_nodes = 4\n"
            "pushpull_interval_ms = 20000\nrejoin_interval_ms = 5000\n"
            "api_port = 7947\nstatus_bind = ::\nstatus_port = 0\n"
            "agent_port = 9000\n"
            "db_conninfo = host=/run/postgresql dbname=pmg\n"
            "db_schemas = public, audit\ndb_exclude = public.cache\n"
            "db_log_retention_s = 7200\n"
            "db_origin_tables = public.t\n"
            "files_dir = /etc/pmg/cluster\nfiles_reload = systemctl reload pmgproxy\n"
            "files_max_bytes = 2097152\n");
    put_str("config", "crlf-tabs", "name=pmg1\r\n\tbind =\t[::1]:7946\r\n"
                                   "data_dir = /tmp/x\r\n");
    put_str("config", "dup-key", "name = a\nname = b\n");
    put_str("config", "unknown-key", "nam = a\n");
    put_str("config", "no-equals", "name\n");
    put_str("config", "bad-values", "name = a b\nbind = 1.2.3.4:99999\n"
                                    "probe_interval_ms = -1\n");
    put("config", "nul-in-value", "name = a\0b\nbind = 1.2.3.4\n", 27);
    put_str("config", "empty", "");
    put_str("config", "comments-only", "# nothing\n   # here\n\n");
}

static void http_seeds(void)
{
    static const char *reqs[][2] = {
        {"get-readyz", "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"get-readyz-verbose", "GET /readyz?verbose&exclude=drain&exclude=config HTTP/1.1\r\n\r\n"},
        {"get-readyz-check", "GET /readyz/membership HTTP/1.0\r\n\r\n"},
        {"get-livez", "GET /livez HTTP/1.0\n\n"},
        {"get-health", "GET /health HTTP/1.1\r\nUser-Agent: Consul\r\n\r\n"},
        {"get-status", "GET /status HTTP/1.1\r\nAccept: */*\r\n\r\n"},
        {"get-metrics", "GET /metrics HTTP/1.1\r\nHost: a:7948\r\nAccept-Encoding: gzip\r\n\r\n"},
        {"head-root", "HEAD / HTTP/1.1\r\n\r\n"},
        {"options-star", "OPTIONS * HTTP/1.1\r\n\r\n"},
        {"absolute-form", "GET http://h:7948/readyz HTTP/1.1\r\n\r\n"},
        {"post-405", "POST /readyz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"},
        {"leading-blank", "\r\n\r\nGET /livez HTTP/1.1\r\n\r\n"},
        {"http2", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
        {"chunked", "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"},
        {"http09", "GET /\r\n\r\n"},
        {"tls-hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
        {"no-end", "GET /readyz HTTP/1.1\r\nHost: x\r\n"},
        {"folded", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"},
        {"pct", "GET /ready%7a?%00 HTTP/1.1\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
        put_str("http", reqs[i][0], reqs[i][1]);
    /* long request line and too many headers */
    pmm_buf b;
    pmm_buf_init(&b, 1 << 20);
    pmm_buf_puts(&b, "GET /");
    for (int i = 0; i < 300; i++) pmm_buf_puts(&b, "a");
    pmm_buf_puts(&b, "?");
    for (int i = 0; i < 600; i++) pmm_buf_puts(&b, "q");
    pmm_buf_puts(&b, " HTTP/1.1\r\n");
    for (int i = 0; i < 70; i++) pmm_buf_printf(&b, "H%d: v\r\n", i);
    pmm_buf_puts(&b, "\r\n");
    put("http", "long-everything", b.p, b.len);
    pmm_buf_free(&b);
}

static void ctl_seeds(void)
{
    static const char *reqs[][2] = {
        {"status", "{\"cmd\":\"status\"}\n"},
        {"status-word", "status\n"},
        {"ping-word-crlf", "ping\r\n"},
        {"create", "{\"cmd\":\"create\",\"password\":\"s3cret \\u00e9\"}"},
        {"fingerprint", "{\"cmd\":\"fingerprint\",\"ip\":\"10.0.0.1:7947\"}"},
        {"join", "{\"cmd\":\"join\",\"ip\":\"[fd00::1]:7947\",\"fingerprint\":"
                 "\"AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\","
                 "\"password\":\"pw\"}\n"},
        {"join-cmd", "{\"cmd\":\"join-cmd\"}"},
        {"delete", "{\"cmd\":\"delete\",\"cid\":3}"},
        {"promote", "{\"cmd\":\"promote\",\"force\":true}"},
        {"sync", "{\"cmd\":\"sync\",\"master_ip\":\"10.0.0.1\"}"},
        {"files-publish", "{\"cmd\":\"files-publish\",\"confirm\":true}"},
        {"drain", "drain"},
        {"undrain", "{\"cmd\":\"undrain\"}"},
        {"unknown", "{\"cmd\":\"reboot\"}"},
        {"extra-arg", "{\"cmd\":\"status\",\"x\":1}"},
        {"bad-type", "{\"cmd\":\"delete\",\"cid\":\"3\"}"},
        {"not-object", "[\"status\"]"},
        {"dup-cmd", "{\"cmd\":\"status\",\"cmd\":\"drain\"}"},
        {"nul-key", "{\"cmd\":\"status\",\"a\\u0000b\":1}"},
        {"two-lines", "status\nping\n"},
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++)
        put_str("ctl", reqs[i][0], reqs[i][1]);
}

static void json_seeds(void)
{
    /* a real status answer */
    pmm_status_row r[2];
    memset(r, 0, sizeof(r));
    for (int i = 0; i < 2; i++) {
        snprintf(r[i].name, sizeof(r[i].name), "pmg%d", i + 1);
        snprintf(r[i].id, sizeof(r[i].id), "%032x", i + 1);
        r[i].cid = (uint32_t)i + 1;
        snprintf(r[i].ip, sizeof(r[i].ip), "10.0.0.%d", i + 1);
        r[i].port = 7946;
        snprintf(r[i].role, sizeof(r[i].role), "%s", i ? "node" : "master");
        r[i].state = i ? 'D' : 'A';
        snprintf(r[i].gossip_state, sizeof(r[i].gossip_state), "%s",
                 i ? "dead" : "alive");
        r[i].self = i == 0;
        r[i].has_meta = true;
        r[i].uptime = i ? -1 : 86500;
        r[i].load = i ? -1 : 0.25;
        r[i].mem = 40;
        r[i].disk = i ? -1 : 12;
        r[i].has_db = i == 0;
        snprintf(r[i].db_state, sizeof(r[i].db_state), "in-sync");
        r[i].db_epoch = 3;
        r[i].db_seq = 100;
    }
    pmm_buf b;
    pmm_buf_init(&b, 1 << 20);
    if (pmm_status_write_json(&b, r, 2)) abort();
    put("json", "status-rows", b.p, b.len);
    pmm_buf_free(&b);
    static const char *docs[][2] = {
        {"scalars", "[null, true, false, 0, -0, 1.5e300, -1E-300, 123456789012345678901234567890]"},
        {"strings", "{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\",\"\":\"\"}"},
        {"lone-surrogate", "\"\\ud800\""},
        {"nul-escape", "\"a\\u0000b\""},
        {"nested", "[[[[[[[[[[[[[[[[{\"a\":[{}]}]]]]]]]]]]]]]]]"},
        {"too-deep", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"},
        {"trailing", "{} x"},
        {"utf8-bad", "\"\xc0\xaf\xed\xa0\x80\""},
        {"ok-reply", "{\"ok\":true,\"cid\":3,\"nodes\":[{\"name\":\"a\"}]}\n"},
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++)
        put_str("json", docs[i][0], docs[i][1]);
}

static void meta_seeds(void)
{
    pmm_meta m = {.start_time = 1700000000, .load1 = 125, .mem_pct = 55,
                  .disk_pct = 20, .cid = 2, .cfg_epoch = 3, .cfg_version = 17,
                  .db_state = 5, .db_epoch = 3, .db_seq = 100,
                  .db_ts_ms = 1700000000123};
    snprintf(m.role, sizeof(m.role), "master");
    uint8_t buf[GSP_META_MAX];
    size_t len;
    if (pmm_meta_encode(&m, buf, sizeof(buf), &len)) abort();
    put("meta", "master-with-db", buf, len);
    pmm_meta n = {.start_time = 1, .mem_pct = 100, .disk_pct = 100};
    snprintf(n.role, sizeof(n.role), "-");
    if (pmm_meta_encode(&n, buf, sizeof(buf), &len)) abort();
    put("meta", "outside-cluster", buf, len);
    m.files_sync = 0x8eef069d74bbf339ull; /* mirrored files in sync */
    if (pmm_meta_encode(&m, buf, sizeof(buf), &len)) abort();
    put("meta", "files-in-sync", buf, len);
    put("meta", "empty", "", 0);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus DIR\n");
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        perror(outdir);
        return 1;
    }
    gossip_seeds();
    frame_seeds();
    cluster_seeds();
    store_seeds();
    config_seeds();
    http_seeds();
    ctl_seeds();
    json_seeds();
    meta_seeds();
    return 0;
}
