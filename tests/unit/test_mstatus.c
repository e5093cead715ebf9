/*
 * test_mstatus.c - uptime formatter, PMG status table, JSON writer
 * (escaping) and reader, rows from gossip members; promote's checks.
 */
#include "membership/membership.h"
#include "daemon/daemon.h"
#include "tests/tap.h"

#include <errno.h>
#include <math.h>

static const char *up(int64_t s)
{
    static char buf[32];
    return pmm_format_uptime(s, buf, sizeof(buf));
}

static void test_uptime(void)
{
    CHECK(strcmp(up(0), "00:00") == 0);
    CHECK(strcmp(up(59), "00:00") == 0);
    CHECK(strcmp(up(60), "00:01") == 0);
    CHECK(strcmp(up(3599), "00:59") == 0);
    CHECK(strcmp(up(3600), "01:00") == 0);
    CHECK(strcmp(up(86399), "23:59") == 0);
    CHECK(strcmp(up(86400), "1 day 00:00") == 0);
    CHECK(strcmp(up(86400 + 21 * 3600 + 18 * 60 + 5), "1 day 21:18") == 0);
    CHECK(strcmp(up(2 * 86400), "2 days 00:00") == 0);
    CHECK(strcmp(up(400 * 86400 + 3600 + 60), "400 days 01:01") == 0);
    CHECK(strcmp(up(-1), "-") == 0);
    CHECK(strcmp(up(INT64_MAX), "106751991167300 days 15:30") == 0);
}

static pmm_status_row row(const char *name, uint32_t cid, const char *ip,
                          const char *role, char state, int64_t uptime,
                          double load, int mem, int disk)
{
    pmm_status_row r;

    memset(&r, 0, sizeof(r));
    snprintf(r.name, sizeof(r.name), "%s", name);
    r.cid = cid;
    snprintf(r.ip, sizeof(r.ip), "%s", ip);
    snprintf(r.role, sizeof(r.role), "%s", role);
    r.state = state;
    r.uptime = uptime;
    r.load = load;
    r.mem = mem;
    r.disk = disk;
    snprintf(r.id, sizeof(r.id), "00112233445566778899aabbccddeeff");
    snprintf(r.gossip_state, sizeof(r.gossip_state), "alive");
    r.port = 7946;
    r.last_seen = -1;
    return r;
}

#define HEADER                                                                \
    "NAME(CID)--------------IPADDRESS----ROLE-STATE---------UPTIME---LOAD-" \
    "---MEM---DISK\n"

static void test_table(void)
{
    pmm_status_row rows[4];
    pmm_buf b;
    const char *want =
        HEADER
        "pmg5(1)              192.168.2.127   master A     1 day 21:18   0.30    80%    41%\n"
        "node2(0)             10.0.0.2        -      ?           00:05  12.00     0%   100%\n"
        "gone(0)              10.0.0.3        -      D               -   1.50     7%     9%\n"
        "new(0)               10.0.0.4        -      L               -      -      -      -\n";

    rows[0] = row("pmg5", 1, "192.168.2.127", "master", 'A',
                  86400 + 21 * 3600 + 18 * 60, 0.3, 80, 41);
    rows[1] = row("node2", 0, "10.0.0.2", "-", '?', 300, 12, 0, 100);
    rows[2] = row("gone", 0, "10.0.0.3", "-", 'D', -1, 1.5, 7, 9);
    rows[3] = row("new", 0, "10.0.0.4", "-", 'L', -1, -1, -1, -1);
    pmm_buf_init(&b, 1 << 20);
    CHECK(pmm_status_render_text(&b, rows, 4) == 0);
    REQUIRE(b.p != NULL);
    CHECK(strcmp(b.p, want) == 0);
    if (strcmp(b.p, want) != 0)
        printf("# got:\n%s", b.p);
    /* every row ends exactly under DISK, like the header */
    for (const char *l = b.p; *l != '\0';) {
        const char *nl = strchr(l, '\n');
        CHECK_EQ_INT(nl - l, strlen(HEADER) - 1);
        l = nl + 1;
    }
    /* empty cluster: header only */
    pmm_buf_reset(&b);
    CHECK(pmm_status_render_text(&b, rows, 0) == 0);
    CHECK(strcmp(b.p, HEADER) == 0);
    /* hostile name: no control bytes reach the terminal */
    rows[0] = row("evil\x1b[2J\n", 0, "10.0.0.1", "-", 'A', 0, 0, 0, 0);
    pmm_buf_reset(&b);
    CHECK(pmm_status_render_text(&b, rows, 1) == 0);
    CHECK(strstr(b.p, "evil?[2J?(0)") != NULL);
    CHECK(strchr(b.p, '\x1b') == NULL);
    pmm_buf_free(&b);
}

static void test_sort(void)
{
    pmm_status_row rows[3];

    rows[0] = row("node3", 0, "", "-", 'A', 0, 0, 0, 0);
    rows[1] = row("node1", 0, "", "-", 'A', 0, 0, 0, 0);
    rows[2] = row("node2", 0, "", "-", 'A', 0, 0, 0, 0);
    pmm_status_sort(rows, 3);
    CHECK(strcmp(rows[0].name, "node1") == 0);
    CHECK(strcmp(rows[1].name, "node2") == 0);
    CHECK(strcmp(rows[2].name, "node3") == 0);
}

static void test_json_escape(void)
{
    pmm_buf b;

    pmm_buf_init(&b, 4096);
    pmm_json_str(&b, "a\"b\\c/d", 7);
    CHECK(strcmp(b.p, "\"a\\\"b\\\\c/d\"") == 0);
    pmm_buf_reset(&b);
    pmm_json_str(&b, "\n\r\t\b\f\x01\x1f\x7f", 8);
    CHECK(strcmp(b.p, "\"\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f\"") == 0);
    pmm_buf_reset(&b);
    pmm_json_str(&b, "nul\0x", 5);
    CHECK(strcmp(b.p, "\"nul\\u0000x\"") == 0);
    pmm_buf_reset(&b);
    /* valid UTF-8 passes, invalid bytes become U+FFFD */
    pmm_json_str(&b, "caf\xc3\xa9 \xff \xc3 \xed\xa0\x80 \xf0\x9f\x98\x80", 18);
    CHECK(strcmp(b.p, "\"caf\xc3\xa9 \\ufffd \\ufffd \\ufffd\\ufffd\\ufffd "
                      "\xf0\x9f\x98\x80\"") == 0);
    pmm_buf_reset(&b);
    pmm_json_str(&b, "", 0);
    CHECK(strcmp(b.p, "\"\"") == 0);
    pmm_buf_reset(&b);
    /* the jansson writer: the same strings, as values of an object */
    json_t *o = json_object();
    json_object_set_new(o, "q", pmm_jstr("a\"b\\c/d", 7));
    json_object_set_new(o, "nul", pmm_jstr("nul\0x", 5));
    json_object_set_new(o, "u", pmm_jstr("caf\xc3\xa9 \xff \xc3 \xed\xa0\x80 "
                                          "\xf0\x9f\x98\x80", 18));
    json_object_set_new(o, "n", json_integer(-3));
    CHECK(pmm_json_put(&b, o) == 0);
    CHECK(strcmp(b.p, "{\"q\":\"a\\\"b\\\\c/d\",\"nul\":\"nul\\u0000x\","
                      "\"u\":\"caf\xc3\xa9 \xef\xbf\xbd \xef\xbf\xbd "
                      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xf0\x9f\x98\x80\","
                      "\"n\":-3}") == 0);
    /* what it writes, the reader reads back */
    pmm_json *j = NULL;
    char err[128];
    REQUIRE(pmm_json_parse(b.p, b.len, &j, err, sizeof(err)) == 0);
    const pmm_json *nul = pmm_json_get(j, "nul");
    CHECK(nul && nul->str_len == 5 && memcmp(nul->str, "nul\0x", 5) == 0);
    pmm_json_free(j);
    CHECK(pmm_json_put(&b, NULL) == -ENOMEM);
    /* a full buffer is an error, and v is released anyway (valgrind) */
    pmm_buf small;
    pmm_buf_init(&small, 4);
    CHECK(pmm_json_put(&small, json_pack("{s:s}", "key", "long value")) != 0);
    pmm_buf_free(&small);
    pmm_buf_free(&b);
}

static void test_buf_bounds(void)
{
    pmm_buf b;

    pmm_buf_init(&b, 8);
    CHECK(pmm_buf_puts(&b, "12345678") == 0);
    CHECK(pmm_buf_puts(&b, "9") == -E2BIG);
    CHECK(pmm_buf_puts(&b, "") == -E2BIG); /* sticky */
    CHECK(pmm_buf_printf(&b, "%d", 1) == -E2BIG);
    pmm_buf_reset(&b);
    CHECK(pmm_buf_printf(&b, "%s-%d", "ab", 42) == 0);
    CHECK(strcmp(b.p, "ab-42") == 0);
    CHECK(pmm_buf_printf(&b, "%s", "long!") == -E2BIG);
    pmm_buf_free(&b);
}

static void test_json_roundtrip(void)
{
    pmm_status_row rows[3], *back = NULL;
    pmm_buf b;
    pmm_json *doc = NULL;
    size_t n = 0;
    char err[256];

    rows[0] = row("q\"uo\\te\x01\n", 7, "fd00::1", "master", 'A', 123456,
                  2.5, 80, 41);
    rows[0].self = true;
    rows[1] = row("b", 0, "10.0.0.2", "-", 'D', -1, -1, -1, -1);
    rows[2] = row("c", 4294967295u, "10.0.0.3", "-", '?', 0, 0, 0, 100);
    pmm_buf_init(&b, 1 << 20);
    CHECK(pmm_status_write_json(&b, rows, 3) == 0);
    CHECK(strstr(b.p, "\"name\":\"q\\\"uo\\\\te\\u0001\\n\",\"cid\":7,"
                      "\"ip\":\"fd00::1\",\"role\":\"master\",\"state\":\"A\","
                      "\"uptime\":123456,\"load\":2.5,\"mem\":80,\"disk\":41,")
          != NULL);
    CHECK(strstr(b.p, "\"uptime\":null,\"load\":null,\"mem\":null,"
                      "\"disk\":null") != NULL);
    CHECK(strstr(b.p, "\"state\":\"?\"") != NULL);
    REQUIRE(pmm_json_parse(b.p, b.len, &doc, err, sizeof(err)) == 0);
    REQUIRE(pmm_status_from_json(doc, &back, &n, err, sizeof(err)) == 0);
    REQUIRE(n == 3);
    CHECK(strcmp(back[0].name, rows[0].name) == 0);
    CHECK_EQ_INT(back[0].cid, 7);
    CHECK(strcmp(back[0].ip, "fd00::1") == 0);
    CHECK(strcmp(back[0].role, "master") == 0);
    CHECK_EQ_INT(back[0].state, 'A');
    CHECK_EQ_INT(back[0].uptime, 123456);
    CHECK(fabs(back[0].load - 2.5) < 1e-9);
    CHECK_EQ_INT(back[0].mem, 80);
    CHECK_EQ_INT(back[0].disk, 41);
    CHECK(back[0].self);
    CHECK_EQ_INT(back[0].port, 7946);
    CHECK(strcmp(back[0].id, "00112233445566778899aabbccddeeff") == 0);
    CHECK_EQ_INT(back[1].uptime, -1);
    CHECK(back[1].load < 0);
    CHECK_EQ_INT(back[1].mem, -1);
    CHECK_EQ_INT(back[1].disk, -1);
    CHECK_EQ_INT(back[2].cid, 4294967295u);
    CHECK_EQ_INT(back[2].state, '?');
    free(back);
    pmm_json_free(doc);
    pmm_buf_free(&b);
}

/* jansson's allocator for test_rows_json_oom: fails the oom_at-th call */
static long oom_n, oom_at;
static void *oom_malloc(size_t n)
{
    return ++oom_n == oom_at ? NULL : malloc(n);
}

/* Out of memory at any point of building the rows' JSON: either the whole
 * answer or none (NULL), never a member or a part of one silently left
 * out (a status that lies). Every allocation is failed in turn. */
static void test_rows_json_oom(void)
{
    pmm_status_row rows[2];
    rows[0] = row("m", 1, "10.0.0.1", "master", 'A', 10, 0.5, 1, 1);
    rows[1] = row("f", 2, "10.0.0.2", "node", 'A', 10, 0.5, 1, 1);
    for (int i = 0; i < 2; i++) {
        rows[i].has_db = true;
        snprintf(rows[i].db_state, sizeof(rows[i].db_state), "in-sync");
        rows[i].proto_min = rows[i].proto_max = 1;
        rows[i].removed = i == 1;
    }
    rows[1].n_origins = 2;
    rows[1].origins[0].cid = 1;
    rows[1].origins[1].cid = 2;
    json_decref(pmm_jstrz("")); /* the project's allocator is set first */
    json_t *full = pmm_status_rows_json(rows, 2);
    REQUIRE(full != NULL);
    char *want = json_dumps(full, JSON_COMPACT | JSON_SORT_KEYS);
    REQUIRE(want != NULL);
    json_decref(full);
    json_malloc_t om;
    json_free_t of;
    json_get_alloc_funcs(&om, &of);
    long nulls = 0, calls = 0;
    for (oom_at = 1;; oom_at++) {
        oom_n = 0;
        json_set_alloc_funcs(oom_malloc, of);
        json_t *j = pmm_status_rows_json(rows, 2);
        json_set_alloc_funcs(om, of);
        if (j == NULL) {
            nulls++;
            continue;
        }
        char *got = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(j);
        CHECK(got != NULL && strcmp(got, want) == 0);
        if (got && strcmp(got, want) != 0)
            printf("#   allocation %ld failed: %s\n#   instead of %s\n", oom_at,
                   got, want);
        free(got);
        calls = oom_n;
        if (oom_at > oom_n) break; /* no allocation failed any more */
    }
    printf("# %ld allocations; each failed in turn gave no answer %ld times\n",
           calls, nulls);
    CHECK(nulls > 10);
    free(want);
}

/* The store's columns: lag against the alive master, 'S' while not in
 * sync, and the db object through JSON and back. */
static void test_db_rows(void)
{
    pmm_status_row rows[4], *back = NULL;
    pmm_buf b;
    pmm_json *doc = NULL;
    size_t n = 0;
    char err[256];

    rows[0] = row("m", 1, "10.0.0.1", "master", 'A', 10, 0, 1, 1);
    rows[1] = row("f", 2, "10.0.0.2", "node", 'A', 10, 0, 1, 1);
    rows[2] = row("l", 3, "10.0.0.3", "node", 'A', 10, 0, 1, 1);
    rows[3] = row("d", 4, "10.0.0.4", "node", 'D', -1, -1, -1, -1);
    const char *st[4] = {"in-sync", "in-sync", "loading", "catching-up"};
    uint64_t seq[4] = {1000, 1000, 0, 900};
    for (int i = 0; i < 4; i++) {
        rows[i].has_db = true;
        snprintf(rows[i].db_state, sizeof(rows[i].db_state), "%s", st[i]);
        rows[i].db_epoch = 2;
        rows[i].db_seq = seq[i];
        rows[i].db_ts_ms = 1000000 + seq[i];
    }
    snprintf(rows[2].db_reason, sizeof(rows[2].db_reason),
             "loading a snapshot: 43 %%");
    rows[2].db_kept = 1;
    rows[2].db_divergence = 7;
    rows[3].db_lag = 60; /* its own view: less than the master's row says */
    pmm_status_db_finish(rows, 4);
    CHECK_EQ_INT(rows[0].state, 'A');
    CHECK_EQ_INT(rows[1].state, 'A');
    CHECK_EQ_INT(rows[2].state, 'S');  /* loading: syncing */
    CHECK_EQ_INT(rows[3].state, 'D');  /* dead stays dead */
    CHECK_EQ_INT(rows[1].lag_changes, 0);
    CHECK_EQ_INT(rows[2].lag_changes, 1000);
    CHECK_EQ_INT(rows[3].lag_changes, 100);
    CHECK(fabs(rows[3].lag_seconds - 0.1) < 1e-9);
    pmm_buf_init(&b, 1 << 20);
    CHECK(pmm_status_write_json(&b, rows, 4) == 0);
    CHECK(strstr(b.p, "\"db\":{\"state\":\"catching-up\",\"reason\":\"\","
                      "\"kept\":{\"backups\":0,\"divergence\":0},\"epoch\":2,"
                      "\"seq\":900,\"lag_changes\":100,"
                      "\"lag_seconds\":0.1,\"origins\":[]}") != NULL);
    CHECK(strstr(b.p, "\"reason\":\"loading a snapshot: 43 %\","
                      "\"kept\":{\"backups\":1,\"divergence\":7}") != NULL);
    REQUIRE(pmm_json_parse(b.p, b.len, &doc, err, sizeof(err)) == 0);
    REQUIRE(pmm_status_from_json(doc, &back, &n, err, sizeof(err)) == 0);
    REQUIRE(n == 4);
    CHECK(back[3].has_db);
    CHECK(strcmp(back[3].db_state, "catching-up") == 0);
    CHECK_EQ_INT(back[3].db_seq, 900);
    CHECK_EQ_INT(back[3].lag_changes, 100);
    CHECK_EQ_INT(back[2].state, 'S');
    CHECK(strcmp(back[2].db_reason, "loading a snapshot: 43 %") == 0);
    CHECK_EQ_INT(back[2].db_kept, 1);
    CHECK_EQ_INT(back[2].db_divergence, 7);
    free(back);
    pmm_json_free(doc);
    pmm_buf_free(&b);
    /* the text table: PMG's lines, why a node is S on its row, then what
     * a node keeps */
    pmm_status_reasons(rows, 4, NULL, 0);
    pmm_buf_init(&b, 1 << 20);
    CHECK(pmm_status_render_text(&b, rows, 4) == 0);
    CHECK(strstr(b.p, "node   S           00:00   0.00     1%     1%  "
                      "loading a snapshot: 43 %\n") != NULL);
    CHECK(strstr(b.p, "note: l is S") == NULL);
    CHECK(strstr(b.p, "note: l keeps 1 backup record(s) and 7 divergence") !=
          NULL);
    pmm_buf_free(&b);
    /* a node's own view of its lag, when larger, wins */
    rows[3].state = 'A';
    rows[3].db_lag = 5000;
    rows[3].lag_changes = 0;
    pmm_status_db_finish(rows, 4);
    CHECK_EQ_INT(rows[3].lag_changes, 5000);
    CHECK_EQ_INT(rows[3].state, 'S');
    /* idle: in sync outside a cluster only */
    snprintf(rows[1].db_state, sizeof(rows[1].db_state), "idle");
    rows[1].state = 'A';
    pmm_status_db_finish(rows, 4);
    CHECK_EQ_INT(rows[1].state, 'S');
    snprintf(rows[1].role, sizeof(rows[1].role), "-");
    rows[1].state = 'A';
    pmm_status_db_finish(rows, 4);
    CHECK_EQ_INT(rows[1].state, 'A');
    /* a row without a store has no db object */
    rows[0].has_db = false;
    pmm_buf_init(&b, 1 << 20);
    CHECK(pmm_status_write_json(&b, rows, 1) == 0);
    CHECK(strstr(b.p, "\"db\"") == NULL);
    pmm_buf_free(&b);
}

static const char *ago(int64_t s)
{
    static char buf[32];
    return pmm_format_ago(s, buf, sizeof(buf));
}

/* Why a node is not A: on its row after DISK (PMG's columns untouched),
 * in the JSON (reason, last_seen, removed), and back through the reader;
 * a dead or departed node's figures are not shown. */
static void test_reasons(void)
{
    pmm_status_row rows[7], *back = NULL;
    pmm_buf b;
    pmm_json *doc = NULL;
    size_t n = 0;
    char err[256];
    const char *want =
        HEADER
        "pmg5(1)              192.168.2.127   master A     1 day 21:18   0.30    80%    41%\n"
        "sus(2)               10.0.0.2        node   ?           00:05   0.20    10%    20%  suspect: missed probes, nobody refuted it yet; last seen 4s ago\n"
        "dead(3)              10.0.0.3        node   D               -      -      -      -  ERROR: unreachable (dead); last seen 2m13s ago\n"
        "never(4)             10.0.0.4        node   D               -      -      -      -  ERROR: unreachable: never heard from since this daemon started\n"
        "gone(5)              10.0.0.5        node   L               -      -      -      -  left: stopped gracefully; last seen 1h01m ago\n"
        "lost(6)              10.0.0.6        node   D               -      -      -      -  ERROR: unreachable (dead); not seen alive since this daemon started\n"
        "sync(7)              10.0.0.7        node   S           00:10   0.10     5%     6%  database not in sync (catching-up)\n";

    CHECK(strcmp(ago(0), "0s") == 0);
    CHECK(strcmp(ago(59), "59s") == 0);
    CHECK(strcmp(ago(133), "2m13s") == 0);
    CHECK(strcmp(ago(3660), "1h01m") == 0);
    CHECK(strcmp(ago(2 * 86400 + 4 * 3600 + 59), "2d04h") == 0);
    CHECK(strcmp(ago(-1), "?") == 0);
    CHECK(strcmp(ago(INT64_MAX), "106751991167300d15h") == 0);

    rows[0] = row("pmg5", 1, "192.168.2.127", "master", 'A',
                  86400 + 21 * 3600 + 18 * 60, 0.3, 80, 41);
    rows[0].last_seen = 99; /* an alive row has no last seen */
    rows[1] = row("sus", 2, "10.0.0.2", "node", '?', 300, 0.2, 10, 20);
    rows[1].last_seen = 4;
    /* dead: its last gossiped figures are stale and must not show */
    rows[2] = row("dead", 3, "10.0.0.3", "node", 'D', 300, 1.5, 7, 9);
    rows[2].last_seen = 133;
    snprintf(rows[2].gossip_state, sizeof(rows[2].gossip_state), "dead");
    rows[3] = row("never", 4, "10.0.0.4", "node", 'D', -1, -1, -1, -1);
    snprintf(rows[3].gossip_state, sizeof(rows[3].gossip_state), "unknown");
    rows[4] = row("gone", 5, "10.0.0.5", "node", 'L', -1, 0.5, 3, 4);
    rows[4].last_seen = 3660;
    snprintf(rows[4].gossip_state, sizeof(rows[4].gossip_state), "left");
    rows[5] = row("lost", 6, "10.0.0.6", "node", 'D', -1, 0.5, 3, 4);
    snprintf(rows[5].gossip_state, sizeof(rows[5].gossip_state), "dead");
    rows[6] = row("sync", 7, "10.0.0.7", "node", 'S', 600, 0.1, 5, 6);
    rows[6].has_db = true;
    snprintf(rows[6].db_state, sizeof(rows[6].db_state), "catching-up");
    pmm_status_reasons(rows, 7, NULL, 0);
    CHECK(rows[0].reason[0] == '\0');
    CHECK_EQ_INT(rows[0].last_seen, -1);
    CHECK_EQ_INT(rows[2].mem, -1);
    CHECK(rows[2].load < 0);
    CHECK_EQ_INT(rows[2].uptime, -1);
    CHECK_EQ_INT(rows[4].disk, -1);
    CHECK(!rows[0].removed && !rows[2].removed);

    pmm_buf_init(&b, 1 << 20);
    CHECK(pmm_status_render_text(&b, rows, 7) == 0);
    REQUIRE(b.p != NULL);
    CHECK(strcmp(b.p, want) == 0);
    if (strcmp(b.p, want) != 0)
        printf("# got:\n%s", b.p);
    /* PMG's columns are untouched: DISK ends where the header ends, the
     * fourth word is the state letter */
    for (const char *l = strchr(b.p, '\n') + 1; *l != '\0';) {
        const char *nl = strchr(l, '\n');
        size_t w = strlen(HEADER) - 1;
        CHECK((size_t)(nl - l) == w || ((size_t)(nl - l) > w + 2 &&
                                        l[w] == ' ' && l[w + 1] == ' '));
        CHECK(l[w - 1] == '%' || l[w - 1] == '-');
        l = nl + 1;
    }

    CHECK(pmm_status_write_json(&b, rows, 0) == 0); /* (appends "[]") */
    pmm_buf_reset(&b);
    CHECK(pmm_status_write_json(&b, rows, 7) == 0);
    CHECK(strstr(b.p, "\"name\":\"pmg5\",") != NULL);
    CHECK(strstr(b.p, "\"self\":false,\"reason\":\"\",\"last_seen\":null}") !=
          NULL);
    CHECK(strstr(b.p, "\"state\":\"D\",\"uptime\":null,\"load\":null,"
                      "\"mem\":null,\"disk\":null") != NULL);
    CHECK(strstr(b.p, "\"reason\":\"ERROR: unreachable (dead); last seen "
                      "2m13s ago\",\"last_seen\":133}") != NULL);
    CHECK(strstr(b.p, "\"removed\"") == NULL);
    REQUIRE(pmm_json_parse(b.p, b.len, &doc, err, sizeof(err)) == 0);
    REQUIRE(pmm_status_from_json(doc, &back, &n, err, sizeof(err)) == 0);
    REQUIRE(n == 7);
    for (size_t i = 0; i < n; i++) {
        CHECK(strcmp(back[i].reason, rows[i].reason) == 0);
        CHECK_EQ_INT(back[i].last_seen, rows[i].last_seen);
        CHECK(!back[i].removed);
    }
    /* the CLI prints what it read: the same table */
    {
        pmm_buf t;
        pmm_buf_init(&t, 1 << 20);
        CHECK(pmm_status_render_text(&t, back, n) == 0);
        CHECK(t.p != NULL && strcmp(t.p, want) == 0);
        pmm_buf_free(&t);
    }
    free(back);
    back = NULL;
    pmm_json_free(doc);
    doc = NULL;

    /* a node deleted from its cluster: its own row says so */
    rows[1].self = true;
    pmm_status_reasons(rows, 7, "deleted by the master", 125);
    CHECK(rows[1].removed);
    CHECK(!rows[0].removed && !rows[2].removed);
    CHECK(strcmp(rows[1].reason, "removed from the cluster 2m05s ago "
                                 "(deleted by the master): takes no part; "
                                 "pmgcm join or create to take part "
                                 "again") == 0);
    pmm_buf_reset(&b);
    CHECK(pmm_status_render_text(&b, rows, 7) == 0);
    CHECK(strstr(b.p, "  removed from the cluster 2m05s ago (deleted by "
                      "the master)") != NULL);
    pmm_buf_reset(&b);
    CHECK(pmm_status_write_json(&b, rows, 7) == 0);
    CHECK(strstr(b.p, ",\"last_seen\":4,\"removed\":true}") != NULL);
    REQUIRE(pmm_json_parse(b.p, b.len, &doc, err, sizeof(err)) == 0);
    REQUIRE(pmm_status_from_json(doc, &back, &n, err, sizeof(err)) == 0);
    CHECK(back[1].removed && !back[0].removed);
    free(back);
    back = NULL;
    pmm_json_free(doc);
    doc = NULL;

    /* a hostile reason (from a peer's gossiped store reason) cannot
     * drive the terminal */
    rows[6].state = 'S';
    snprintf(rows[6].db_reason, sizeof(rows[6].db_reason), "x\x1b[2Jy\n");
    pmm_status_reasons(rows, 7, NULL, 0);
    pmm_buf_reset(&b);
    CHECK(pmm_status_render_text(&b, rows, 7) == 0);
    CHECK(strchr(b.p, '\x1b') == NULL);
    CHECK(strstr(b.p, "  x?[2Jy?\n") != NULL);
    pmm_buf_free(&b);

    /* the reader refuses bad new fields */
    static const char *const bad[] = {
        "[{\"name\":\"a\",\"cid\":1,\"ip\":\"1\",\"role\":\"-\",\"state\":\"D\","
        "\"uptime\":null,\"load\":null,\"mem\":null,\"disk\":null,"
        "\"last_seen\":-1}]",
        "[{\"name\":\"a\",\"cid\":1,\"ip\":\"1\",\"role\":\"-\",\"state\":\"D\","
        "\"uptime\":null,\"load\":null,\"mem\":null,\"disk\":null,"
        "\"last_seen\":\"1\"}]",
        "[{\"name\":\"a\",\"cid\":1,\"ip\":\"1\",\"role\":\"-\",\"state\":\"D\","
        "\"uptime\":null,\"load\":null,\"mem\":null,\"disk\":null,"
        "\"last_seen\":1.5}]",
        "[{\"name\":\"a\",\"cid\":1,\"ip\":\"1\",\"role\":\"-\",\"state\":\"D\","
        "\"uptime\":null,\"load\":null,\"mem\":null,\"disk\":null,"
        "\"removed\":1}]",
        "[{\"name\":\"a\",\"cid\":1,\"ip\":\"1\",\"role\":\"-\",\"state\":\"D\","
        "\"uptime\":null,\"load\":null,\"mem\":null,\"disk\":null,"
        "\"reason\":7}]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        REQUIRE(pmm_json_parse(bad[i], strlen(bad[i]), &doc, err,
                               sizeof(err)) == 0);
        CHECK(pmm_status_from_json(doc, &back, &n, err, sizeof(err)) ==
              -EINVAL);
        CHECK(back == NULL);
        pmm_json_free(doc);
        doc = NULL;
    }
    /* a reason longer than a row holds is refused, not cut */
    {
        char big[1024];
        int k = snprintf(big, sizeof(big),
                         "[{\"name\":\"a\",\"cid\":1,\"ip\":\"1\",\"role\":"
                         "\"-\",\"state\":\"D\",\"uptime\":null,\"load\":"
                         "null,\"mem\":null,\"disk\":null,\"reason\":\"");
        memset(big + k, 'r', PMM_STATUS_REASON_MAX + 1);
        snprintf(big + k + PMM_STATUS_REASON_MAX + 1,
                 sizeof(big) - (size_t)k - PMM_STATUS_REASON_MAX - 1,
                 "\"}]");
        REQUIRE(pmm_json_parse(big, strlen(big), &doc, err, sizeof(err)) ==
                0);
        CHECK(pmm_status_from_json(doc, &back, &n, err, sizeof(err)) ==
              -EINVAL);
        CHECK(strstr(err, "'reason'") != NULL);
        pmm_json_free(doc);
    }
}

static pmm_promote_peer peer(const char *name, uint32_t cid, bool live,
                              bool loaded, uint64_t epoch, uint64_t seq)
{
    pmm_promote_peer p;
    memset(&p, 0, sizeof(p));
    snprintf(p.name, sizeof(p.name), "%s", name);
    p.cid = cid;
    p.live = live;
    p.has_db = true;
    p.loaded = loaded;
    p.pos = (pst_pos){epoch, seq};
    return p;
}

/* promote's checks: what is refused, with which words, and what
 * --accept-data-loss lets through (and says is lost) */
static void test_promote_checks(void)
{
    static pmm_promote_view v;
    char why[1200], lost[600];

    /* no store: nothing to check */
    memset(&v, 0, sizeof(v));
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 0);
    CHECK(why[0] == 0 && lost[0] == 0);
    /* the case: a joiner whose snapshot is not in, the master
     * dead, node2 live with the data */
    memset(&v, 0, sizeof(v));
    v.has_db = true;
    v.db.ready = true;
    v.db.state = PST_LOADING;
    v.db.load_pct = 43;
    v.peers[v.n_peers++] = peer("node1", 1, false, true, 1, 20003);
    v.peers[v.n_peers++] = peer("node2", 2, true, true, 1, 20002);
    v.peers[v.n_peers++] = peer("node3", 3, true, false, 0, 0);
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 1);
    CHECK(strstr(why, "not loaded") != NULL);
    CHECK(strstr(why, "43 %") != NULL);
    CHECK(strstr(why, "node2 (cid 2) at 1/20002") != NULL);
    CHECK(strstr(why, "node1") == NULL); /* dead: not the one to promote */
    CHECK(pmm_promote_best(&v, true) == &v.peers[1]);
    CHECK(pmm_promote_best(&v, false) == &v.peers[0]);
    /* nobody live with data: the last known one, and the way out */
    v.peers[1].live = false;
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 1);
    CHECK(strstr(why, "no live node holds loaded data") != NULL);
    CHECK(strstr(why, "node1 (cid 1) at 1/20003") != NULL);
    CHECK(strstr(why, "accept-data-loss") != NULL);
    /* --accept-data-loss: proceeds, says what is lost */
    CHECK_EQ_INT(pmm_promote_precheck(&v, true, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 0);
    CHECK(strstr(lost, "no loaded data") != NULL);
    CHECK(strstr(lost, "node1 (cid 1) at 1/20003") != NULL);
    /* loaded but far behind a live node */
    v.db.state = PST_CATCHING_UP;
    v.db.loaded = true;
    v.db.pos = (pst_pos){1, 10000};
    v.peers[1].live = true;
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 1);
    CHECK(strstr(why, "caught up") != NULL);
    CHECK(strstr(why, "10002 changes behind node2") != NULL);
    CHECK_EQ_INT(pmm_promote_precheck(&v, true, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 0);
    CHECK(strstr(lost, "at 1/10000") != NULL);
    /* within a stream in flight: the promote's catch-up fetches it */
    v.db.pos = (pst_pos){1, 20002 - PST_SYNC_LAG_MAX};
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 0);
    /* an older term than a live node's */
    v.db.pos = (pst_pos){1, 30000};
    v.peers[1].pos = (pst_pos){2, 25000};
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 1);
    CHECK(strstr(why, "older term") != NULL);
    /* ahead of everyone: fine */
    v.db.pos = (pst_pos){2, 25001};
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 0);
    /* mirrored files out of sync: refused with files.h's words; with
     * --accept-data-loss it goes on, saying the new master holds its
     * files */
    v.files_rc = -11;
    snprintf(v.files_why, sizeof(v.files_why), "files_dir /etc/pmg is not "
             "in sync with the cluster's mirrored files (...); in sync: "
             "node2 (cid 2)");
    CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 1);
    CHECK(strstr(why, "refused (files in sync): files_dir /etc/pmg is not "
                      "in sync") != NULL);
    CHECK(strstr(why, "in sync: node2 (cid 2)") != NULL);
    CHECK_EQ_INT(pmm_promote_precheck(&v, true, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 0);
    CHECK(strstr(lost, "pmgcm files publish --confirm") != NULL);
    v.files_rc = 0;
    /* the database down: refused, even with --accept-data-loss */
    v.db.db_down = true;
    snprintf(v.db.error, sizeof(v.db.error), "connection refused");
    CHECK_EQ_INT(pmm_promote_precheck(&v, true, why, sizeof(why), lost,
                                      sizeof(lost), NULL), 1);
    CHECK(strstr(why, "database is down (connection refused)") != NULL);
    /* the failing check is reported: behind is the one that may wait */
    {
        const pmm_promote_check *f = NULL;
        v.db.db_down = false;
        v.db.pos = (pst_pos){1, 100};
        v.peers[1].pos = (pst_pos){1, 20002};
        CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                          sizeof(lost), &f), 1);
        REQUIRE(f != NULL);
        CHECK(strcmp(f->name, "caught up") == 0 && f->waitable);
        v.db.loaded = false;
        CHECK_EQ_INT(pmm_promote_precheck(&v, false, why, sizeof(why), lost,
                                          sizeof(lost), &f), 1);
        REQUIRE(f != NULL);
        CHECK(strcmp(f->name, "data loaded") == 0 && !f->waitable);
    }
    /* the table: named checks, in order */
    REQUIRE(pmm_promote_n_checks >= 3);
    CHECK(strcmp(pmm_promote_checks[0].name, "database") == 0);
    CHECK(!pmm_promote_checks[0].overridable);
}

static int from_json_fails(const char *text, const char *want)
{
    pmm_json *doc = NULL;
    pmm_status_row *rows = NULL;
    size_t n = 0;
    char err[256] = "";
    int ok = 1;

    if (pmm_json_parse(text, strlen(text), &doc, err, sizeof(err)) != 0)
        return 0;
    if (pmm_status_from_json(doc, &rows, &n, err, sizeof(err)) == 0) {
        printf("#   accepted %s\n", text);
        ok = 0;
    } else if (strstr(err, want) == NULL) {
        printf("#   '%s' lacks '%s'\n", err, want);
        ok = 0;
    }
    free(rows);
    pmm_json_free(doc);
    return ok;
}

#define GOOD_ROW_TAIL "\"uptime\":1,\"load\":0,\"mem\":1,\"disk\":1}]"

static void test_rows_validation(void)
{
    CHECK(from_json_fails("{}", "not an array"));
    CHECK(from_json_fails("[1]", "member 1: missing or invalid 'member'"));
    CHECK(from_json_fails("[{\"cid\":0,\"ip\":\"x\",\"role\":\"-\",\"state\":\"A\","
                          GOOD_ROW_TAIL, "'name'"));
    CHECK(from_json_fails("[{\"name\":\"\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\"," GOOD_ROW_TAIL, "'name'"));
    CHECK(from_json_fails("[{\"name\":\"a\\u0000b\",\"cid\":0,\"ip\":\"x\","
                          "\"role\":\"-\",\"state\":\"A\"," GOOD_ROW_TAIL, "'name'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":-1,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\"," GOOD_ROW_TAIL, "'cid'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":1.5,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\"," GOOD_ROW_TAIL, "'cid'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":4294967296,\"ip\":\"x\","
                          "\"role\":\"-\",\"state\":\"A\"," GOOD_ROW_TAIL, "'cid'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"X\"," GOOD_ROW_TAIL, "'state'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"AA\"," GOOD_ROW_TAIL, "'state'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\",\"uptime\":-5,\"load\":0,\"mem\":1,"
                          "\"disk\":1}]", "'uptime'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\",\"uptime\":5,\"load\":\"1\",\"mem\":1,"
                          "\"disk\":1}]", "'load'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\",\"uptime\":5,\"load\":1,\"mem\":101,"
                          "\"disk\":1}]", "'mem'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\",\"uptime\":5,\"load\":1,\"mem\":1}]",
                          "'disk'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":"
                          "\"12345678901234567\",\"state\":\"A\"," GOOD_ROW_TAIL,
                          "'role'"));
    CHECK(from_json_fails("[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                          "\"state\":\"A\",\"uptime\":1,\"load\":0,\"mem\":1,"
                          "\"disk\":1,\"port\":70000}]", "'port'"));
    /* unknown keys are ignored: newer daemons may add some */
    {
        const char *t = "[{\"name\":\"a\",\"cid\":0,\"ip\":\"x\",\"role\":\"-\","
                        "\"state\":\"L\",\"future\":[1,{}]," GOOD_ROW_TAIL;
        pmm_json *doc = NULL;
        pmm_status_row *rows = NULL;
        size_t n = 0;
        char err[128];
        REQUIRE(pmm_json_parse(t, strlen(t), &doc, err, sizeof(err)) == 0);
        CHECK(pmm_status_from_json(doc, &rows, &n, err, sizeof(err)) == 0);
        CHECK_EQ_INT(n, 1);
        free(rows);
        pmm_json_free(doc);
    }
}

static int parses(const char *text)
{
    pmm_json *j = NULL;
    char err[128];
    int rc = pmm_json_parse(text, strlen(text), &j, err, sizeof(err));

    pmm_json_free(j);
    return rc == 0;
}

static void test_json_reader(void)
{
    pmm_json *j = NULL;
    char err[128];
    const char *t = " {\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\\/\"],"
                    " \"b\": {}, \"c\": []} ";
    const pmm_json *a, *e;

    REQUIRE(pmm_json_parse(t, strlen(t), &j, err, sizeof(err)) == 0);
    a = pmm_json_get(j, "a");
    REQUIRE(a != NULL && a->type == PMM_JSON_ARRAY && a->n_child == 6);
    e = a->child;
    CHECK(e->type == PMM_JSON_NUMBER && e->num == 1);
    e = e->next;
    CHECK(e->type == PMM_JSON_NUMBER && e->num == -2500);
    e = e->next;
    CHECK(e->type == PMM_JSON_BOOL && e->b);
    e = e->next;
    CHECK(e->type == PMM_JSON_BOOL && !e->b);
    e = e->next;
    CHECK(e->type == PMM_JSON_NULL);
    e = e->next;
    CHECK(e->type == PMM_JSON_STRING &&
          strcmp(e->str, "x\xc3\xa9\xf0\x9f\x98\x80/") == 0);
    CHECK(pmm_json_get(j, "b")->type == PMM_JSON_OBJECT);
    CHECK(pmm_json_get(j, "c")->n_child == 0);
    CHECK(pmm_json_get(j, "zz") == NULL);
    CHECK(pmm_json_get(a, "a") == NULL); /* not an object */
    pmm_json_free(j);

    CHECK(parses("0"));
    CHECK(parses("\"\""));
    CHECK(!parses(""));
    CHECK(!parses("   "));
    CHECK(!parses("{"));
    CHECK(!parses("[1,]"));
    CHECK(!parses("{\"a\":1,}"));
    CHECK(!parses("{\"a\" 1}"));
    CHECK(!parses("{1:1}"));
    CHECK(!parses("01"));
    CHECK(!parses("1."));
    CHECK(!parses("-"));
    CHECK(!parses("1e"));
    CHECK(!parses("+1"));
    CHECK(!parses("1e999"));
    CHECK(!parses("tru"));
    CHECK(!parses("nul"));
    CHECK(!parses("\"abc"));
    CHECK(!parses("\"a\nb\""));
    CHECK(!parses("\"\\x\""));
    CHECK(!parses("\"\\u12\""));
    CHECK(!parses("\"\xff\""));
    CHECK(!parses("[] []"));
    CHECK(!parses("[1] x"));
    /* depth bound */
    {
        char deep[200];
        memset(deep, '[', 100);
        memset(deep + 100, ']', 100);
        CHECK(pmm_json_parse(deep, 200, &j, err, sizeof(err)) == -E2BIG);
        CHECK(j == NULL);
        memset(deep, '[', 30);
        memset(deep + 30, ']', 30);
        CHECK(pmm_json_parse(deep, 60, &j, err, sizeof(err)) == 0);
        pmm_json_free(j);
    }
    /* error message carries a position */
    CHECK(pmm_json_parse("[1,?]", 5, &j, err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "at byte 3") != NULL);
    /* value count bound */
    {
        size_t len = 2 * 300000 + 1;
        char *big = malloc(len + 1);
        REQUIRE(big != NULL);
        big[0] = '[';
        for (size_t i = 0; i < 300000; i++) {
            big[1 + 2 * i] = '0';
            big[2 + 2 * i] = ',';
        }
        big[len - 1] = ']';
        big[len] = '\0';
        CHECK(pmm_json_parse(big, len, &j, err, sizeof(err)) == -E2BIG);
        free(big);
    }
}

static void test_row_from_member(void)
{
    gsp_member m;
    pmm_status_row r;
    pmm_meta meta;
    uint8_t buf[GSP_META_MAX];
    size_t len = 0;

    memset(&m, 0, sizeof(m));
    snprintf(m.name, sizeof(m.name), "node2");
    REQUIRE(gsp_addr_parse(&m.addr, "10.0.0.2:7947", 7946) == 0);
    m.id.b[0] = 0xab;
    m.state = GSP_ALIVE;
    /* no metadata yet */
    pmm_status_row_from_member(&r, &m, 1000000);
    CHECK(strcmp(r.name, "node2") == 0);
    CHECK(strcmp(r.ip, "10.0.0.2") == 0);
    CHECK_EQ_INT(r.port, 7947);
    CHECK(strncmp(r.id, "ab000000", 8) == 0);
    CHECK_EQ_INT(r.state, 'A');
    CHECK(strcmp(r.gossip_state, "alive") == 0);
    CHECK(strcmp(r.role, "-") == 0);
    CHECK_EQ_INT(r.uptime, -1);
    CHECK_EQ_INT(r.mem, -1);

    memset(&meta, 0, sizeof(meta));
    meta.start_time = 1000000 - 90061;
    meta.load1 = 30;
    meta.mem_pct = 80;
    meta.disk_pct = 41;
    strcpy(meta.role, "-");
    REQUIRE(pmm_meta_encode(&meta, buf, sizeof(buf), &len) == 0);
    m.meta = buf;
    m.meta_len = len;
    pmm_status_row_from_member(&r, &m, 1000000);
    CHECK_EQ_INT(r.uptime, 90061);
    CHECK(fabs(r.load - 0.30) < 1e-9);
    CHECK_EQ_INT(r.mem, 80);
    CHECK_EQ_INT(r.disk, 41);
    /* clock skew: start in the future is uptime 0, not negative */
    pmm_status_row_from_member(&r, &m, 1000000 - 90061 - 5);
    CHECK_EQ_INT(r.uptime, 0);
    /* suspect still has an uptime */
    m.state = GSP_SUSPECT;
    pmm_status_row_from_member(&r, &m, 1000000);
    CHECK_EQ_INT(r.state, '?');
    CHECK_EQ_INT(r.uptime, 90061);
    /* dead: last known values, no uptime */
    m.state = GSP_DEAD;
    pmm_status_row_from_member(&r, &m, 1000000);
    CHECK_EQ_INT(r.state, 'D');
    CHECK_EQ_INT(r.uptime, -1);
    CHECK_EQ_INT(r.mem, 80);
    m.state = GSP_LEFT;
    pmm_status_row_from_member(&r, &m, 1000000);
    CHECK_EQ_INT(r.state, 'L');
    /* garbage metadata: treated as none */
    m.state = GSP_ALIVE;
    buf[0] ^= 0xff;
    pmm_status_row_from_member(&r, &m, 1000000);
    CHECK_EQ_INT(r.mem, -1);
    CHECK(!r.has_meta);
}

/* Versions in status: the reason for a node whose protocol range does not
 * overlap ours, the JSON fields and their reading back, the text's
 * "versions:" line only while builds differ. */
static void test_versions(void)
{
    pmm_status_row rows[3];
    pmm_buf b;
    memset(rows, 0, sizeof(rows));
    for (int i = 0; i < 3; i++) {
        snprintf(rows[i].name, sizeof(rows[i].name), "node%d", i + 1);
        snprintf(rows[i].ip, sizeof(rows[i].ip), "10.0.0.%d", i + 1);
        strcpy(rows[i].role, "node");
        rows[i].state = 'A';
        rows[i].has_meta = true;
        rows[i].uptime = 60;
        rows[i].load = 0.5;
        rows[i].mem = 10;
        rows[i].disk = 20;
        rows[i].last_seen = -1;
        rows[i].proto_min = rows[i].proto_max = 1;
        strcpy(rows[i].version, "0.2.0+abc");
    }
    rows[0].self = true;
    pmm_status_reasons(rows, 3, NULL, 0);
    CHECK(rows[1].reason[0] == '\0' && rows[2].reason[0] == '\0');
    pmm_buf_init(&b, 4096);
    REQUIRE(pmm_status_render_text(&b, rows, 3) == 0);
    CHECK(strstr(b.p, "versions:") == NULL);
    pmm_buf_free(&b);

    rows[1].version[0] = '\0'; /* an old build: 1..1, no version */
    rows[2].proto_min = rows[2].proto_max = 2;
    strcpy(rows[2].version, "0.3.0");
    pmm_status_reasons(rows, 3, NULL, 0);
    CHECK(rows[1].reason[0] == '\0');
    CHECK(strstr(rows[2].reason, "protocol versions 2..2 (build 0.3.0) do "
                                 "not overlap ours (1..1)") != NULL);
    pmm_buf_init(&b, 4096);
    REQUIRE(pmm_status_render_text(&b, rows, 3) == 0);
    CHECK(strstr(b.p, "versions: 0.2.0+abc (node1); before versioning "
                         "(node2); 0.3.0 (node3)\n") != NULL);
    pmm_buf_free(&b);

    pmm_buf_init(&b, 8192);
    REQUIRE(pmm_status_write_json(&b, rows, 3) == 0);
    CHECK(strstr(b.p, "\"version\":\"0.2.0+abc\",\"protocol\":{\"min\":1,"
                         "\"max\":1}") != NULL);
    CHECK(strstr(b.p, "\"version\":null") != NULL);
    pmm_json *j = NULL;
    char err[128];
    REQUIRE(pmm_json_parse(b.p, b.len, &j, err, sizeof(err)) == 0);
    pmm_status_row *back = NULL;
    size_t n = 0;
    REQUIRE(pmm_status_from_json(j, &back, &n, err, sizeof(err)) == 0);
    CHECK_EQ_INT(n, 3);
    CHECK(strcmp(back[0].version, "0.2.0+abc") == 0);
    CHECK(back[1].version[0] == '\0');
    CHECK_EQ_INT(back[2].proto_min, 2);
    CHECK_EQ_INT(back[2].proto_max, 2);
    free(back);
    pmm_json_free(j);
    pmm_buf_free(&b);
}

int main(void)
{
    TAP_RUN(test_uptime);
    TAP_RUN(test_versions);
    TAP_RUN(test_table);
    TAP_RUN(test_sort);
    TAP_RUN(test_json_escape);
    TAP_RUN(test_buf_bounds);
    TAP_RUN(test_json_roundtrip);
    TAP_RUN(test_db_rows);
    TAP_RUN(test_reasons);
    TAP_RUN(test_promote_checks);
    TAP_RUN(test_rows_validation);
    TAP_RUN(test_rows_json_oom);
    TAP_RUN(test_json_reader);
    TAP_RUN(test_row_from_member);
    return tap_done();
}
