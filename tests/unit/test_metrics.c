/*
 * test_metrics.c - the /metrics table (daemon/metrics.c): names, types and
 * help in Prometheus' rules, every metric written in the table's order
 * (the db ones only with a database), and every metric in
 * pmgclusterd(8), which names none the table lacks.
 */
#include "daemon/daemon.h"
#include "tests/tap.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool name_ok(const char *s, bool metric)
{
    if (s == NULL || !(isalpha((unsigned char)*s) || *s == '_' ||
                       (metric && *s == ':')))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_' ||
              (metric && *s == ':')))
            return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void test_table(void)
{
    size_t n;
    const pmm_metric *t = pmm_metrics_table(&n);

    REQUIRE(t != NULL);
    CHECK(n >= 70);
    for (size_t i = 0; i < n; i++) {
        const pmm_metric *m = &t[i];
        CHECK(name_ok(m->name, true));
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(t[j].name, m->name) != 0);
        CHECK(m->type != NULL && (strcmp(m->type, "gauge") == 0 ||
                                  strcmp(m->type, "counter") == 0));
        /* counters and only counters end in _total */
        CHECK((strcmp(m->type, "counter") == 0) == ends_with(m->name,
                                                             "_total"));
        /* HELP is one line: no newline, no backslash to escape */
        CHECK(m->help != NULL && strlen(m->help) > 10 &&
              strpbrk(m->help, "\n\\") == NULL);
        CHECK(m->get != NULL);
        CHECK((m->label == NULL) == (m->values == NULL));
        if (m->label != NULL) {
            CHECK(name_ok(m->label, false) && strncmp(m->label, "__", 2));
            CHECK(m->values[0] != NULL);
            for (size_t j = 0; m->values[j] != NULL; j++)
                CHECK(strpbrk(m->values[j], "\"\\\n") == NULL);
        }
        if (m->flags & PMM_METRIC_DB)
            CHECK(strncmp(m->name, "pmgcm_db_", 9) == 0);
        else
            CHECK(strncmp(m->name, "pmgcm_db_", 9) != 0);
        if (!name_ok(m->name, true))
            printf("#   bad name %s\n", m->name);
    }
}

static void fill(pmm_http_view *v, bool db)
{
    memset(v, 0, sizeof(*v));
    v->now = 1700000000;
    v->start_time = 1699990000;
    v->in_cluster = v->self_alive = v->config_synced = true;
    v->n_alive = 3;
    v->gossip.drop_misdirected = 11;
    v->budget.limit = 1u << 20;
    v->has_db = db;
    v->db_in_sync = true;
    v->db_seq = 5;
    v->db_head_seq = 9;
    v->db_lag_seconds = 0.25;
    v->db_slot_safe = db ? 4096 : -1;
    v->join_refused_full = 4;
}

/* positions of every metric's HELP line in out, in the table's order */
static void check_order(const char *out, bool db)
{
    size_t n;
    const pmm_metric *t = pmm_metrics_table(&n);
    const char *prev = out;

    for (size_t i = 0; i < n; i++) {
        char help[512], type[160];
        snprintf(help, sizeof(help), "# HELP %s %s\n", t[i].name, t[i].help);
        snprintf(type, sizeof(type), "# TYPE %s %s\n", t[i].name, t[i].type);
        const char *h = strstr(out, help);
        if ((t[i].flags & PMM_METRIC_DB) && !db) {
            CHECK(h == NULL);
            continue;
        }
        if (h == NULL || h < prev) {
            printf("#   %s missing or out of order\n", t[i].name);
            CHECK(0);
            continue;
        }
        CHECK(strncmp(h + strlen(help), type, strlen(type)) == 0);
        CHECK(strstr(h + 1, help) == NULL); /* once */
        prev = h;
    }
}

static void test_output(void)
{
    pmm_http_view v;
    pmm_buf b;

    fill(&v, true);
    pmm_buf_init(&b, 1 << 20);
    pmm_metrics_write(&b, &v);
    REQUIRE(b.err == 0 && b.p != NULL);
    check_order(b.p, true);
    CHECK(strstr(b.p, "\npmgcm_db_lag_seconds 0.250\n") != NULL);
    CHECK(strstr(b.p, "\npmgcm_db_lag_changes 4\n") != NULL);
    CHECK(strstr(b.p, "\npmgcm_db_slot_safe_wal_bytes 4096\n") != NULL);
    CHECK(strstr(b.p, "\npmgcm_gossip_packets_dropped_total{reason="
                      "\"misdirected\"} 11\n") != NULL);
    CHECK(strstr(b.p, "\npmgcm_join_refused_total{reason=\"full\"} 4\n") !=
          NULL);
    CHECK(strstr(b.p, "\npmgcm_cluster_nodes{state=\"alive\"} 3\n") != NULL);
    CHECK(strstr(b.p, "\npmgcm_unauth_memory_limit_bytes 1048576\n") != NULL);
    pmm_buf_free(&b);

    /* no database: no pmgcm_db_ at all; slot_safe unbounded: left out */
    fill(&v, false);
    pmm_buf_init(&b, 1 << 20);
    pmm_metrics_write(&b, &v);
    REQUIRE(b.err == 0 && b.p != NULL);
    check_order(b.p, false);
    CHECK(strstr(b.p, "pmgcm_db_") == NULL);
    pmm_buf_free(&b);
    fill(&v, true);
    v.db_slot_safe = -1;
    pmm_buf_init(&b, 1 << 20);
    pmm_metrics_write(&b, &v);
    CHECK(strstr(b.p, "pmgcm_db_slot_safe_wal_bytes") == NULL);
    CHECK(strstr(b.p, "pmgcm_db_slot_repairs_total") != NULL);
    pmm_buf_free(&b);
}


static bool word_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* Every metric of the table appears in pmgclusterd(8) as a word (troff
 * writes '-' as "\-", never inside a name), with its label's name when it
 * has one; every pmgcm_* word of the page that looks like a metric (not a
 * prefix ending in '_') is one of the table's. */
static void test_documented(void)
{
    char *man = tap_read_doc("doc/pmgclusterd.8");
    size_t n;
    const pmm_metric *t = pmm_metrics_table(&n);

    REQUIRE(man != NULL);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(t[i].name);
        bool found = false;
        for (const char *p = man; (p = strstr(p, t[i].name)) != NULL; p++) {
            if ((p == man || !word_char(p[-1])) && !word_char(p[l])) {
                found = true;
                if (t[i].label != NULL) {
                    char want[64];
                    snprintf(want, sizeof(want), "{%s=", t[i].label);
                    found = strncmp(p + l, want, strlen(want)) == 0;
                }
                if (found)
                    break;
            }
        }
        if (!found)
            printf("#   doc/pmgclusterd.8 lacks %s%s%s\n", t[i].name,
                   t[i].label ? " with its label " : "",
                   t[i].label ? t[i].label : "");
        CHECK(found);
    }
    for (const char *p = man; (p = strstr(p, "pmgcm_")) != NULL; p++) {
        char w[96];
        size_t k = 0;
        if (p > man && word_char(p[-1]))
            continue;
        while (word_char(p[k]) && k + 1 < sizeof(w)) {
            w[k] = p[k];
            k++;
        }
        w[k] = '\0';
        if (w[k - 1] == '_' || isdigit((unsigned char)w[6]))
            continue; /* a prefix (pmgcm_db_*, slot names pmgcm_OID) */
        bool known = false;
        for (size_t i = 0; i < n && !known; i++)
            known = strcmp(t[i].name, w) == 0;
        if (!known)
            printf("#   doc/pmgclusterd.8 names %s, not in the table\n", w);
        CHECK(known);
    }
    free(man);
}

int main(void)
{
    TAP_RUN(test_table);
    TAP_RUN(test_output);
    TAP_RUN(test_documented);
    return tap_done();
}
