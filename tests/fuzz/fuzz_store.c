/*
 * fuzz_store.c - the store's stream messages (store/store.proto): the
 * snapshot and delta stream (Msg) and the opening message (Open).
 *
 * Every input is unpacked as an Open and as a Msg; a message that unpacks
 * is walked like its consumers read it and must re-pack to an image that
 * unpacks and packs to the same bytes. The first byte then picks which
 * real stream endpoint (store/session.c) gets the rest, on a store whose
 * database cannot be reached but that is marked ready (as after setup):
 *   0  pst_server with the rest as the opening message
 *   1  a SUBSCRIBE client session fed the rest as frames (fuzz.h format)
 *   2  a POSITION client session fed the rest as frames
 *   3  frames only unpacked and walked
 * Frames whose handling needs the database (CHANGES with entries and
 * DIVERGED are applied on a worker thread; the Open of a snapshot starts a
 * thread that reads the database) are only unpacked: the loop is never
 * run, so no worker ever sees fuzzed data and each input is deterministic.
 */
#include "tests/fuzz/fuzz.h"
#include "store/internal.h"
#include "store/store.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static size_t sink;
static uv_loop_t loop;
static pst_store *store;
static pst_info ready_info;

static void fin(void)
{
    pst_close(store);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

static void init(void)
{
    if (store) return;
    if (uv_loop_init(&loop)) abort();
    pst_config cfg = {
        .conninfo = "host=/nonexistent-pmgcm-fuzz dbname=x connect_timeout=1",
        .workers = 1,
    };
    if (pst_open(&loop, &cfg, NULL, &store)) abort();
    store->info.ready = true;
    store->info.loaded = true;
    store->info.state = PST_CATCHING_UP;
    store->info.pos = (pst_pos){3, 100};
    store->info.recv_seq = 100;
    ready_info = store->info;
    atexit(fin);
}

static int link_send(void *ud, const uint8_t *buf, size_t len)
{
    (void)ud;
    for (size_t i = 0; i < len; i++) sink += buf[i];
    return 0;
}

static void link_pause(void *ud, bool paused)
{
    (void)ud;
    sink += paused;
}

static void link_end(void *ud, int rc, const char *why)
{
    (void)ud;
    sink += (size_t)rc + strlen(why);
}

static const pst_link fz_link = {
    .send = link_send, .pause = link_pause, .end = link_end};

static void walk_msg(const Pmgcm__Store__Msg *m)
{
    for (size_t i = 0; i < m->n_changes; i++) {
        const Pmgcm__Store__Change *c = m->changes[i];
        sink += c->epoch + c->seq + c->op + (size_t)c->ts_us + c->last;
        if (c->tbl) sink += strlen(c->tbl);
        if (c->old) sink += strlen(c->old);
        if (c->new_) sink += strlen(c->new_);
    }
    if (m->head) sink += m->head->epoch + m->head->seq;
    if (m->fork) sink += m->fork->epoch + m->fork->seq;
    for (size_t i = 0; i < m->n_epochs; i++)
        sink += m->epochs[i]->epoch + m->epochs[i]->master_cid;
    for (size_t i = 0; i < m->n_tables; i++)
        sink += strlen(m->tables[i]->name) + m->tables[i]->est_rows;
    if (m->schema) sink += strlen(m->schema);
    if (m->name) sink += strlen(m->name);
    if (m->error) sink += strlen(m->error);
    if (m->has_data)
        for (size_t i = 0; i < m->data.len; i++) sink += m->data.data[i];
}

/* pack -> unpack -> pack gives the same bytes.
 * QUIRK (protobuf-c 1.4.1, not ours): an unknown field numbered 0, written
 * as an overlong tag (80 00), is accepted and kept, and pack writes it back
 * as the tag 00 that unpack refuses; so a re-packed image may not unpack
 * (corpus/store/regress-unknown-field-0). Nothing in pmgcm re-packs a
 * received message, so only a re-pack that does unpack is compared. */
static void msg_roundtrip(const Pmgcm__Store__Msg *m)
{
    size_t n1 = pmgcm__store__msg__get_packed_size(m);
    uint8_t *b1 = malloc(n1 ? n1 : 1);
    if (!b1 || pmgcm__store__msg__pack(m, b1) != n1) abort();
    Pmgcm__Store__Msg *m2 = pmgcm__store__msg__unpack(NULL, n1, b1);
    if (!m2) { /* see QUIRK above */
        free(b1);
        return;
    }
    size_t n2 = pmgcm__store__msg__get_packed_size(m2);
    uint8_t *b2 = malloc(n2 ? n2 : 1);
    if (!b2 || pmgcm__store__msg__pack(m2, b2) != n2) abort();
    if (n1 != n2 || memcmp(b1, b2, n1) != 0) abort();
    pmgcm__store__msg__free_unpacked(m2, NULL);
    free(b1);
    free(b2);
}

static void open_roundtrip(const Pmgcm__Store__Open *o)
{
    size_t n1 = pmgcm__store__open__get_packed_size(o);
    uint8_t *b1 = malloc(n1 ? n1 : 1);
    if (!b1 || pmgcm__store__open__pack(o, b1) != n1) abort();
    Pmgcm__Store__Open *o2 = pmgcm__store__open__unpack(NULL, n1, b1);
    if (!o2) { /* see QUIRK above */
        free(b1);
        return;
    }
    if (o2->kind != o->kind || o2->has_cid != o->has_cid ||
        (o->from && (!o2->from || o2->from->seq != o->from->seq)))
        abort();
    pmgcm__store__open__free_unpacked(o2, NULL);
    free(b1);
}

/* Unpacks and walks one frame; returns whether a client session may have
 * it (its handling stays on the loop thread). */
static bool frame_ok_for_session(const uint8_t *f, size_t len)
{
    Pmgcm__Store__Msg *m = pmgcm__store__msg__unpack(NULL, len, f);
    if (!m) return true; /* malformed: the session ends on it */
    walk_msg(m);
    msg_roundtrip(m);
    bool ok = !((m->kind == PMGCM__STORE__MSG__KIND__CHANGES &&
                 m->n_changes > 0) ||
                (m->kind == PMGCM__STORE__MSG__KIND__DIVERGED && m->fork));
    pmgcm__store__msg__free_unpacked(m, NULL);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init();
    store->info = ready_info;

    Pmgcm__Store__Open *o = pmgcm__store__open__unpack(NULL, size, data);
    if (o) {
        if (o->schema) sink += strlen(o->schema);
        open_roundtrip(o);
        pmgcm__store__open__free_unpacked(o, NULL);
    }
    Pmgcm__Store__Msg *m = pmgcm__store__msg__unpack(NULL, size, data);
    if (m) {
        walk_msg(m);
        msg_roundtrip(m);
        pmgcm__store__msg__free_unpacked(m, NULL);
    }
    if (size < 1) return 0;

    int mode = data[0] % 4;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    pst_session *s = NULL;
    if (mode == 0) {
        o = pmgcm__store__open__unpack(NULL, n, p);
        bool snapshot = o && o->kind == PMGCM__STORE__OPEN__KIND__SNAPSHOT;
        if (o) pmgcm__store__open__free_unpacked(o, NULL);
        if (!snapshot && pst_server(store, p, n, &fz_link, &s) == 0)
            pst_session_frame(s, p, n); /* a client must send nothing */
        pst_session_free(s);
        return 0;
    }
    if (mode == 1 || mode == 2) {
        uint8_t *open = NULL;
        size_t open_len = 0;
        if (pst_client(store, mode == 1 ? PST_SUBSCRIBE : PST_POSITION, 7,
                       &fz_link, &open, &open_len, &s) != 0)
            abort();
        free(open);
    }
    const uint8_t *f;
    size_t flen;
    while (fz_frame(&p, &n, &f, &flen)) {
        bool ok = frame_ok_for_session(f, flen);
        if (s && ok) pst_session_frame(s, f, flen);
    }
    if (s) {
        pst_session_eof(s);
        sink += pst_session_peer_pos(s).seq;
        pst_session_free(s);
    }
    return 0;
}
