/*
 * fuzz_json.c - the JSON reader (common/json.c, pmm_json_parse) and,
 * for an array, the status rows reader (pmm_status_from_json) the CLI uses
 * on the daemon's answers. Every string of a parsed tree is walked in full
 * (str_len bytes); accepted status rows must survive pmm_status_write_json
 * -> parse -> pmm_status_from_json with the same count.
 */
#include "tests/fuzz/fuzz.h"
#include "membership/membership.h"

#include <stdlib.h>

static size_t sink;

static void walk(const pmm_json *j, int depth)
{
    if (depth > PMM_JSON_MAX_DEPTH + 1) abort();
    if (j->type == PMM_JSON_STRING) {
        if (!j->str || j->str[j->str_len] != '\0') abort();
        for (size_t i = 0; i < j->str_len; i++) sink += (uint8_t)j->str[i];
        if (!pmm_utf8_valid(j->str, j->str_len)) abort();
    }
    size_t n = 0;
    for (const pmm_json *c = j->child; c; c = c->next) {
        if (j->type == PMM_JSON_OBJECT) {
            if (!c->key) abort();
            sink += strlen(c->key);
            if (pmm_json_get(j, c->key) == NULL) abort();
        }
        walk(c, depth + 1);
        n++;
    }
    if ((j->type == PMM_JSON_ARRAY || j->type == PMM_JSON_OBJECT) &&
        n != j->n_child)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pmm_json *j = NULL;
    char err[256] = "";
    int rc = pmm_json_parse((const char *)data, size, &j, err, sizeof(err));
    if (rc != 0) {
        if (j != NULL) abort();
        return 0;
    }
    walk(j, 0);
    if (j->type == PMM_JSON_ARRAY) {
        pmm_status_row *rows = NULL;
        size_t n = 0;
        if (pmm_status_from_json(j, &rows, &n, err, sizeof(err)) == 0) {
            pmm_buf b;
            pmm_buf_init(&b, 16u << 20);
            if (pmm_status_write_json(&b, rows, n) == 0) {
                pmm_json *j2 = NULL;
                pmm_status_row *rows2 = NULL;
                size_t n2 = 0;
                if (pmm_json_parse(b.p, b.len, &j2, err, sizeof(err)) != 0)
                    abort();
                if (pmm_status_from_json(j2, &rows2, &n2, err, sizeof(err)))
                    abort();
                if (n2 != n) abort();
                pmm_buf text;
                pmm_buf_init(&text, 16u << 20);
                pmm_status_sort(rows2, n2);
                pmm_status_render_text(&text, rows2, n2);
                sink += text.len;
                pmm_buf_free(&text);
                free(rows2);
                pmm_json_free(j2);
            }
            pmm_buf_free(&b);
            free(rows);
        }
    }
    pmm_json_free(j);
    return 0;
}
