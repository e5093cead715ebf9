/*
 * test_store.c - the store library's parts that need no database: position
 * order, names, the bounded pipe between a thread and the loop, and a store
 * whose database cannot be reached (it must say why, refuse streams, and
 * close cleanly). The replication itself is tested end to end against real
 * PostgreSQL servers in tests/integration/store.sh.
 */
#include "store/internal.h"
#include "tests/tap.h"

#include <errno.h>
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

int main(void)
{
    TAP_RUN(test_pos_cmp);
    TAP_RUN(test_names);
    TAP_RUN(test_pipe_order_and_bound);
    TAP_RUN(test_pipe_abort_unblocks_producer);
    TAP_RUN(test_unreachable_database);
    return tap_done();
}
