/*
 * fuzz_http.c - the status port's request parser (daemon/http.c):
 * pmm_http_precheck on every prefix the server could have seen, the head
 * search from every resume point the reader uses, pmm_http_parse, and for
 * a parsed request the whole answer (pmm_http_respond: routing, the
 * readyz/health query strings) from a fixed node view, under every access
 * rule for /status and /metrics (open, local, token; the Authorization
 * header's value is bounded and never gives a token it does not hold).
 */
#include "tests/fuzz/fuzz.h"
#include "daemon/daemon.h"

#include <stdio.h>
#include <stdlib.h>

static size_t sink;

static void view_cb(void *ud, pmm_http_view *v)
{
    (void)ud;
    v->now = 1700000000;
    v->start_time = 1699990000;
    v->in_cluster = true;
    v->self_alive = true;
    v->config_synced = true;
    v->cid = 2;
    v->master_cid = 1;
    v->epoch = 1;
    v->version = 7;
    v->n_nodes = 3;
    v->n_alive = 2;
    v->n_suspect = 1;
    v->gossip_members = 3;
    v->local_health = 1;
    v->has_db = true;
    snprintf(v->db_state, sizeof(v->db_state), "catching-up");
    snprintf(v->db_error, sizeof(v->db_error), "behind");
    v->db_seq = 10;
    v->db_head_seq = 12;
    v->db_lag_seconds = 1.5;
}

static int status_cb(void *ud, pmm_buf *out)
{
    (void)ud;
    return pmm_buf_puts(out, "{\"ok\":true,\"nodes\":[]}\n");
}

static const pmm_http_source src = {NULL, view_cb, status_cb, NULL};
static const char token[] = "fuzz-token-0123456789";
static const pmm_http_access acc_local = {PMM_ACCESS_LOCAL, PMM_ACCESS_LOCAL,
                                          NULL};
static const pmm_http_access acc_token = {PMM_ACCESS_TOKEN, PMM_ACCESS_TOKEN,
                                          token};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    /* what the reader does as bytes arrive: precheck, then look for the
     * end of the head from where the last search stopped */
    size_t full = pmm_http_head_end(buf, size, 0);
    if (full > size) abort();
    size_t step = size / 7 + 1;
    size_t searched = 0, found = 0;
    for (size_t have = 0; have < size && !found;) {
        have += step;
        if (have > size) have = size;
        sink += (size_t)pmm_http_precheck(buf, have);
        found = pmm_http_head_end(buf, have, searched);
        if (found > have) abort();
        searched = have;
    }
    /* finding the end in pieces gives the same head as in one go */
    if (found != full) abort();
    sink += (size_t)pmm_http_precheck(buf, size);

    pmm_http_req req;
    memset(&req, 0xa5, sizeof(req));
    int rc = pmm_http_parse(buf, size, &req);
    if (rc > (int)size) abort();
    if (rc > 0) {
        if (strlen(req.path) > PMM_HTTP_PATH_MAX ||
            strlen(req.query) > PMM_HTTP_QUERY_MAX)
            abort();
        if (strlen(req.auth) > PMM_HTTP_AUTH_MAX)
            abort();
        pmm_buf out;
        pmm_buf_init(&out, 1u << 20);
        int status = pmm_http_respond(&out, &req, &src);
        sink += (size_t)status + out.len;
        pmm_buf_free(&out);
        /* the access rules: a refusal never carries the page, and the
         * token is accepted only when the header holds exactly it */
        for (int k = 0; k < 3; k++) {
            pmm_http_source s2 = src;
            s2.access = &acc_token;
            req.peer_local = k == 1;
            if (k == 2)
                s2.access = &acc_local;
            pmm_buf_init(&out, 1u << 20);
            status = pmm_http_respond(&out, &req, &s2);
            if ((status == 401 || status == 403) && out.p != NULL &&
                (strstr(out.p, "nodes") || strstr(out.p, "pmgcm_build")))
                abort();
            if (k < 2 && status == 200 &&
                (strcmp(req.path, "/status") == 0 ||
                 strcmp(req.path, "/metrics") == 0) &&
                strstr(req.auth, token) == NULL)
                abort();
            sink += (size_t)status + out.len;
            pmm_buf_free(&out);
        }
    } else if (rc < 0) {
        pmm_buf out;
        pmm_buf_init(&out, 1u << 20);
        pmm_http_error(&out, -rc, 1700000000, false);
        sink += out.len + strlen(pmm_http_reason(-rc));
        pmm_buf_free(&out);
    }
    return 0;
}
