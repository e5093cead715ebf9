/*
 * test_store.c - the store library's parts that need no database: position
 * order, names, the bounded pipe between a thread and the loop, and a store
 * whose database cannot be reached (it must say why, refuse streams, and
 * close cleanly). The replication itself is tested end to end against real
 * PostgreSQL servers in tests/integration/store.sh.
 */
#include "store/internal.h"
#include "store/store.pb-c.h"
#include "tests/tap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static void test_pos_cmp(void)
{
    pst_pos a = {1, 10}, b = {1, 11}, c = {2, 1};
    CHECK(pst_pos_cmp(a, b) < 0);
    CHECK(pst_pos_cmp(b, a) > 0);
    CHECK(pst_pos_cmp(b, c) < 0); /* a later epoch wins over a larger seq */
    CHECK_EQ_INT(pst_pos_cmp(c, c), 0);
}

static void test_names(void)
{
    CHECK(strcmp(pst_state_name(PST_IN_SYNC), "in-sync") == 0);
    CHECK(strcmp(pst_state_name(PST_CATCHING_UP), "catching-up") == 0);
    CHECK(strcmp(pst_state_name((pst_state)99), "?") == 0);
    CHECK(strstr(pst_strerror(PST_ESCHEMA), "definitions") != NULL);
    CHECK(strstr(pst_strerror(-ENOMEM), "memory") != NULL);
}

typedef struct prod {
    pst_pipe *p;
    int n, sent;
    int rc;
} prod;

static void producer(void *arg)
{
    prod *pr = arg;
    for (int i = 0; i < pr->n; i++) {
        uint32_t v = (uint32_t)i;
        pst_buf *b = pst_buf_new(&v, sizeof(v));
        if (!b) break;
        pr->rc = pst_pipe_put(pr->p, b);
        if (pr->rc) break;
        pr->sent++;
    }
    pst_pipe_eof(pr->p);
}

static void test_pipe_order_and_bound(void)
{
    pst_pipe p;
    pst_pipe_init(&p, 64); /* 16 buffers of 4 bytes */
    prod pr = {&p, 5000, 0, 0};
    uv_thread_t t;
    REQUIRE(uv_thread_create(&t, producer, &pr) == 0);
    int got = 0;
    bool order = true, bounded = true;
    pst_buf *b;
    while ((b = pst_pipe_get(&p)) != NULL) {
        uint32_t v;
        memcpy(&v, b->data, sizeof(v));
        if (v != (uint32_t)got) order = false;
        got++;
        free(b);
        if (pst_pipe_bytes(&p) > 64) bounded = false;
    }
    uv_thread_join(&t);
    CHECK_EQ_INT(got, 5000);
    CHECK_EQ_INT(pr.sent, 5000);
    CHECK(order);
    CHECK(bounded);
    pst_pipe_destroy(&p);
}

static void test_pipe_abort_unblocks_producer(void)
{
    pst_pipe p;
    pst_pipe_init(&p, 8);
    prod pr = {&p, 1000, 0, 0};
    uv_thread_t t;
    REQUIRE(uv_thread_create(&t, producer, &pr) == 0);
    /* nobody reads: the producer blocks after two buffers until abort */
    bool eof = false;
    for (int i = 0; i < 2000 && pst_pipe_bytes(&p) < 8; i++) uv_sleep(1);
    CHECK(pst_pipe_bytes(&p) == 8);
    pst_pipe_abort(&p);
    uv_thread_join(&t);
    CHECK_EQ_INT(pr.rc, -ECANCELED);
    CHECK(pr.sent == 2);
    CHECK(pst_pipe_get(&p) == NULL); /* aborted: nothing more is handed out */
    (void)eof;
    pst_pipe_destroy(&p);
}

static int changed_calls;
static void on_changed(void *ud)
{
    (void)ud;
    changed_calls++;
}
static void on_log(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    (void)msg;
}

static void deadline_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static int send_none(void *ud, const uint8_t *b, size_t n)
{
    (void)ud;
    (void)b;
    (void)n;
    return 0;
}

static void test_unreachable_database(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    pst_config cfg = {.conninfo = "host=/nonexistent-pmgcm-test dbname=x "
                                  "connect_timeout=2",
                      .workers = 2};
    pst_events ev = {.changed = on_changed, .log = on_log};
    pst_store *st = NULL;
    REQUIRE(pst_open(&loop, &cfg, &ev, &st) == 0);
    bool late = false;
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = &late;
    uv_timer_start(&t, deadline_cb, 10000, 0);
    pst_info in;
    do {
        uv_run(&loop, UV_RUN_ONCE);
        pst_get_info(st, &in);
    } while (!late && in.error[0] == '\0');
    CHECK(!late);
    CHECK(!in.ready);
    CHECK_EQ_INT(in.state, PST_CONNECTING);
    CHECK(strstr(in.error, "nonexistent-pmgcm-test") != NULL ||
          strstr(in.error, "connect") != NULL);
    CHECK(changed_calls > 0);
    /* streams are refused until the database is ready */
    pst_link l = {.send = send_none};
    pst_session *s = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    CHECK_EQ_INT(pst_client(st, PST_SUBSCRIBE, 1, &l, &buf, &len, &s), -EAGAIN);
    CHECK_EQ_INT(pst_server(st, (const uint8_t *)"", 0, &l, &s), -EAGAIN);
    /* bad arguments */
    pst_store *st2 = NULL;
    pst_config empty = {.conninfo = ""};
    CHECK_EQ_INT(pst_open(&loop, &empty, &ev, &st2), -EINVAL);
    pst_close(st);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Table names from the network are only looked up, byte for byte. */
static void test_tableset(void)
{
    pst_tableset *ts = pst_tableset_new();
    REQUIRE(ts != NULL);
    CHECK_EQ_INT(pst_tableset_add(ts, "public.mail", false), 0);
    CHECK_EQ_INT(pst_tableset_add(ts, "public.\"odd name\"", false), 0);
    CHECK_EQ_INT(pst_tableset_add(ts, "public.quarantine", true), 0);
    CHECK_EQ_INT(pst_tableset_add(ts, "public.mail", false), -EEXIST);
    CHECK_EQ_INT(pst_tableset_add(ts, "", false), -EINVAL);
    CHECK_EQ_INT(pst_tableset_add(ts, NULL, false), -EINVAL);
    char big[1100];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    CHECK_EQ_INT(pst_tableset_add(ts, big, false), -EINVAL);
    CHECK_EQ_INT(pst_tableset_find(ts, "public.mail"), 0);
    CHECK_EQ_INT(pst_tableset_find(ts, "public.\"odd name\""), 1);
    CHECK_EQ_INT(pst_tableset_find(ts, "public.quarantine"), 2);
    CHECK(ts->t[2].origin && !ts->t[0].origin);
    static const char *const hostile[] = {
        "public.mail; COPY x TO PROGRAM 'touch /tmp/pwn'",
        "public.mail, public.rules CASCADE",
        "public.mail CASCADE",
        "PUBLIC.MAIL",
        "public.mail ",
        " public.mail",
        "\"public\".\"mail\"",
        "public.\"odd name\"; DROP TABLE public.mail",
        "public.mail\n",
        "public.mai",
        "public.mail--",
        "(SELECT 1)",
        "",
    };
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++)
        CHECK_EQ_INT(pst_tableset_find(ts, hostile[i]), -1);
    CHECK_EQ_INT(pst_tableset_find(ts, NULL), -1);
    CHECK_EQ_INT(pst_tableset_find(NULL, "public.mail"), -1);
    CHECK_EQ_INT(pst_tableset_find(ts, big), -1);
    pst_tableset *d = pst_tableset_dup(ts);
    REQUIRE(d != NULL);
    CHECK_EQ_INT((int)d->n, 3);
    CHECK_EQ_INT(pst_tableset_find(d, "public.quarantine"), 2);
    CHECK(d->t[2].origin);
    pst_tableset_free(d);
    pst_tableset_free(ts);
    pst_tableset_free(NULL);
    char nb[16];
    CHECK(strcmp(pst_safe_name("a\nb\x1b[31m", nb, sizeof(nb)), "a?b?[31m") == 0);
    CHECK(strcmp(pst_safe_name("public.mail; COPY x", nb, sizeof(nb)),
                 "public.mail;...") == 0);
    CHECK(strcmp(pst_safe_name(NULL, nb, sizeof(nb)), "(none)") == 0);
}

typedef struct ended {
    int calls, rc;
    char why[256];
} ended;

static void end_rec(void *ud, int rc, const char *why)
{
    ended *e = ud;
    e->calls++;
    e->rc = rc;
    snprintf(e->why, sizeof(e->why), "%s", why ? why : "");
}

/* A frame of one change: op on table tbl (seq 101). */
static size_t change_frame(uint8_t *buf, size_t cap, char op, const char *tbl)
{
    Pmgcm__Store__Msg m = PMGCM__STORE__MSG__INIT;
    Pmgcm__Store__Change c = PMGCM__STORE__CHANGE__INIT;
    Pmgcm__Store__Change *cp[1] = {&c};
    c.seq = 101;
    c.epoch = 3;
    c.op = (uint8_t)op;
    c.tbl = (char *)tbl;
    c.new_ = (char *)"{\"id\": 1}";
    c.last = true;
    m.kind = PMGCM__STORE__MSG__KIND__CHANGES;
    m.n_changes = 1;
    m.changes = cp;
    size_t n = pmgcm__store__msg__get_packed_size(&m);
    if (n > cap) return 0;
    return pmgcm__store__msg__pack(&m, buf);
}

/* A hostile upstream's change naming a table outside the local set ends
 * the stream on the loop, before any database work is queued, with the
 * refusal in the store's status. */
static void test_hostile_change_refused(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    pst_config cfg = {.conninfo = "host=/nonexistent-pmgcm-test dbname=x "
                                  "connect_timeout=2",
                      .workers = 1};
    pst_events ev = {.changed = on_changed, .log = on_log};
    pst_store *st = NULL;
    REQUIRE(pst_open(&loop, &cfg, &ev, &st) == 0);
    /* the first setup fails (no database); then, as after a setup:
     * ready, loaded, our set known */
    bool late = false;
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = &late;
    uv_timer_start(&t, deadline_cb, 20000, 0);
    while (!late && st->info.error[0] == '\0') uv_run(&loop, UV_RUN_ONCE);
    CHECK(!late);
    uv_close((uv_handle_t *)&t, NULL);
    st->info.ready = true;
    st->info.loaded = true;
    st->info.state = PST_CATCHING_UP;
    st->info.pos = (pst_pos){3, 100};
    st->info.recv_seq = 100;
    st->tables = pst_tableset_new();
    REQUIRE(st->tables != NULL);
    REQUIRE(pst_tableset_add(st->tables, "public.mail", false) == 0);
    REQUIRE(pst_tableset_add(st->tables, "public.quarantine", true) == 0);
    static const struct {
        char op;
        const char *tbl;
    } bad[] = {
        {'T', "public.mail; COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwn'"},
        {'I', "public.mail; DROP TABLE public.mail"},
        {'T', "public.mail, public.quarantine CASCADE"},
        {'D', "pg_catalog.pg_authid"},
        {'I', "public.quarantine"}, /* per-origin: not in this stream */
        {'U', NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ended e = {0};
        pst_link l = {.send = send_none, .end = end_rec, .ud = &e};
        pst_session *s = NULL;
        uint8_t *open = NULL, frame[512];
        size_t olen = 0;
        REQUIRE(pst_client(st, PST_SUBSCRIBE, 2, &l, &open, &olen, &s) == 0);
        free(open);
        size_t n = change_frame(frame, sizeof(frame), bad[i].op, bad[i].tbl);
        REQUIRE(n > 0);
        st->info.error[0] = 0;
        pst_session_frame(s, frame, n);
        CHECK(!st->apply_busy);     /* nothing went to a worker */
        for (int k = 0; k < 100 && !e.calls; k++) uv_run(&loop, UV_RUN_NOWAIT);
        CHECK_EQ_INT(e.calls, 1);
        CHECK_EQ_INT(e.rc, PST_ESCHEMA);
        CHECK(strstr(st->info.error, "not replicated here") != NULL);
        CHECK(strchr(st->info.error, '\n') == NULL);
        pst_session_free(s);
    }
    pst_close(st);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Is loaded data at a position a prefix of a snapshot's history? */
static void test_lineage(void)
{
    /* terms: 1 from seq 1, 2 from seq 500, 4 from seq 900 */
    pst_pos ep[3] = {{1, 1}, {2, 500}, {4, 900}};
    pst_pos head = {4, 1000};
    CHECK(pst_lineage_prefix(true, (pst_pos){1, 300}, ep, 3, head));
    CHECK(pst_lineage_prefix(true, (pst_pos){1, 499}, ep, 3, head));
    CHECK(pst_lineage_prefix(true, (pst_pos){2, 500}, ep, 3, head));
    CHECK(pst_lineage_prefix(true, (pst_pos){4, 1000}, ep, 3, head));
    CHECK(pst_lineage_prefix(true, (pst_pos){0, 0}, ep, 3, head));
    /* not loaded: never known */
    CHECK(!pst_lineage_prefix(false, (pst_pos){1, 300}, ep, 3, head));
    /* term 1 went on past seq 499 here, the cluster's term 2 began at 500 */
    CHECK(!pst_lineage_prefix(true, (pst_pos){1, 500}, ep, 3, head));
    CHECK(!pst_lineage_prefix(true, (pst_pos){1, 20003}, ep, 3, head));
    /* a term the snapshot's history does not have */
    CHECK(!pst_lineage_prefix(true, (pst_pos){3, 950}, ep, 3, head));
    /* past the snapshot's head */
    CHECK(!pst_lineage_prefix(true, (pst_pos){4, 1001}, ep, 3, head));
    /* the case: a not-loaded node promoted, epoch 2 from seq 1 */
    pst_pos e2[2] = {{1, 1}, {2, 1}};
    CHECK(!pst_lineage_prefix(true, (pst_pos){1, 20003}, e2, 2,
                              (pst_pos){2, 5}));
    CHECK(!pst_lineage_prefix(true, (pst_pos){1, 1}, e2, 2, (pst_pos){2, 5}));
    /* no terms at all */
    CHECK(!pst_lineage_prefix(true, (pst_pos){1, 3}, NULL, 0,
                              (pst_pos){1, 5}));
}

/* The reason a node is not in sync, in words. */
static void test_reason(void)
{
    pst_info in;
    char b[112];
    memset(&in, 0, sizeof(in));
    in.ready = true;
    in.state = PST_CONNECTING;
    in.db_down = true;
    snprintf(in.error, sizeof(in.error), "connection to server on socket "
             "\"/tmp/x/.s.PGSQL.5432\" failed: No such file or directory\n"
             "\tIs the server running locally?");
    pst_reason(&in, b, sizeof(b));
    CHECK(strncmp(b, "database down: No such file or directory (connection",
                  52) == 0);
    CHECK(strchr(b, '\n') == NULL);
    in.db_down = false;
    in.ready = false;
    snprintf(in.error, sizeof(in.error), "database: could not connect");
    CHECK(strcmp(pst_reason(&in, b, sizeof(b)),
                 "database not ready: could not connect") == 0);
    in.ready = true;
    in.state = PST_LOADING;
    in.load_pct = 43;
    CHECK(strcmp(pst_reason(&in, b, sizeof(b)),
                 "loading a snapshot: 43 %") == 0);
    in.state = PST_CATCHING_UP;
    in.loaded = true;
    in.lag = 55000;
    in.error[0] = 0;
    CHECK(strcmp(pst_reason(&in, b, sizeof(b)),
                 "behind the master by 55000 changes") == 0);
    in.lag = PST_SYNC_LAG_MAX;
    CHECK(strcmp(pst_reason(&in, b, sizeof(b)),
                 "not following the master yet") == 0);
    in.loaded = false;
    CHECK(strncmp(pst_reason(&in, b, sizeof(b)), "data not loaded", 15) == 0);
    in.state = PST_IN_SYNC;
    CHECK(strcmp(pst_reason(&in, b, sizeof(b)), "") == 0);
}

/* The SQL built into the library (store/sql2c.sh) is each file under
 * store/sql byte for byte: quotes, backslashes, percent signs and blank
 * lines survive the generator. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    *len = n;
    return buf;
}

static void test_sql_built_in(void)
{
    const char *top = getenv("abs_top_srcdir");
    if (!top) top = ".";
    static const struct {
        const char *file;
        const char *text;
    } sql[] = {
        {"setup.sql", pst_sql_setup},
        {"tables.sql", pst_sql_tables},
        {"origin_tables.sql", pst_sql_origin_tables},
        {"migrate_2.sql", pst_sql_migrate_2},
    };
    for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/store/sql/%s", top, sql[i].file);
        size_t len = 0;
        char *want = slurp(path, &len);
        REQUIRE(want != NULL);
        CHECK(len > 100);
        CHECK_EQ_INT((long)strlen(sql[i].text), (long)len);
        CHECK(strcmp(sql[i].text, want) == 0);
        free(want);
    }
    /* the generator's escapes: a quote and a backslash come through */
    CHECK(strstr(pst_sql_setup, "\"char\"") != NULL);
    CHECK(strstr(pst_sql_tables, "format('%I.%I'") != NULL);
}

int main(void)
{
    TAP_RUN(test_pos_cmp);
    TAP_RUN(test_names);
    TAP_RUN(test_pipe_order_and_bound);
    TAP_RUN(test_pipe_abort_unblocks_producer);
    TAP_RUN(test_unreachable_database);
    TAP_RUN(test_tableset);
    TAP_RUN(test_hostile_change_refused);
    TAP_RUN(test_lineage);
    TAP_RUN(test_reason);
    TAP_RUN(test_sql_built_in);
    return tap_done();
}
