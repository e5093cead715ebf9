/*
 * panel.c - the cluster panel's files and the ring of recent membership
 * events (panel.h).
 */
#include "daemon/panel.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* generated into the build tree by daemon/embed.sh from daemon/panel.html,
 * panel.css and panel.js: each array ends with a NUL that is not served */
#include "daemon/panel_files.h"

#define FILE_OF(arr) (arr), sizeof(arr) - 1

static const pmm_panel_file files[] = {
    {"/", "text/html; charset=utf-8", FILE_OF(pmm_panel_html)},
    {"/panel.css", "text/css; charset=utf-8", FILE_OF(pmm_panel_css)},
    {"/panel.js", "text/javascript; charset=utf-8", FILE_OF(pmm_panel_js)},
};

const pmm_panel_file *pmm_panel_find(const char *path)
{
    if (path == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (strcmp(path, files[i].path) == 0)
            return &files[i];
    return NULL;
}

/* ---- events ---------------------------------------------------------------- */

void pmm_events_init(pmm_events *r)
{
    memset(r, 0, sizeof(*r));
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

void pmm_events_add(pmm_events *r, int64_t at, const char *kind,
                    const char *name, uint32_t cid, const char *detail)
{
    pmm_event *e = &r->ev[r->next];

    memset(e, 0, sizeof(*e));
    e->seq = ++r->seq;
    e->at = at;
    e->cid = cid;
    copy_str(e->kind, sizeof(e->kind), kind);
    copy_str(e->name, sizeof(e->name), name);
    copy_str(e->detail, sizeof(e->detail), detail);
    r->next = (r->next + 1) % PMM_EVENTS_MAX;
    if (r->n < PMM_EVENTS_MAX)
        r->n++;
}

json_t *pmm_events_array(const pmm_events *r)
{
    size_t first = (r->next + PMM_EVENTS_MAX - r->n) % PMM_EVENTS_MAX;
    json_t *arr = json_array();

    for (size_t k = 0; arr != NULL && k < r->n; k++) {
        const pmm_event *e = &r->ev[(first + k) % PMM_EVENTS_MAX];
        if (json_array_append_new(
                arr, json_pack("{s:I, s:I, s:o, s:o, s:I, s:o}", "seq",
                               (json_int_t)e->seq, "time", (json_int_t)e->at,
                               "kind", pmm_jstr(e->kind, strlen(e->kind)),
                               "name", pmm_jstr(e->name, strlen(e->name)),
                               "cid", (json_int_t)e->cid, "detail",
                               pmm_jstr(e->detail, strlen(e->detail)))) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

int pmm_events_json(const pmm_events *r, pmm_buf *b)
{
    return pmm_json_put_safe(b, pmm_events_array(r));
}
