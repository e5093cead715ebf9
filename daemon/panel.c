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

/* A JSON string with markup characters escaped too. The text goes through
 * pmm_json_str (quotes, backslashes, control bytes, invalid UTF-8) piece
 * by piece between the characters it leaves alone. */
static void json_str_safe(pmm_buf *b, const char *s)
{
    size_t n = strlen(s), i = 0;

    pmm_buf_add(b, "\"", 1);
    while (i < n) {
        size_t run = strcspn(s + i, "<>&'");
        if (run > 0) {
            pmm_buf cut;
            /* pmm_json_str quotes: write into a scratch, drop them */
            pmm_buf_init(&cut, 4 * run + 16);
            pmm_json_str(&cut, s + i, run);
            if (cut.err == 0 && cut.len >= 2)
                pmm_buf_add(b, cut.p + 1, cut.len - 2);
            else
                b->err = b->err ? b->err : -EINVAL;
            pmm_buf_free(&cut);
            i += run;
        }
        if (i < n) {
            pmm_buf_printf(b, "\\u%04x", (unsigned)(unsigned char)s[i]);
            i++;
        }
    }
    pmm_buf_add(b, "\"", 1);
}

int pmm_events_json(const pmm_events *r, pmm_buf *b)
{
    size_t first = (r->next + PMM_EVENTS_MAX - r->n) % PMM_EVENTS_MAX;

    pmm_buf_puts(b, "[");
    for (size_t k = 0; k < r->n; k++) {
        const pmm_event *e = &r->ev[(first + k) % PMM_EVENTS_MAX];

        pmm_buf_printf(b, "%s{\"seq\":%" PRIu64 ",\"time\":%" PRId64
                          ",\"kind\":", k ? "," : "", e->seq, e->at);
        json_str_safe(b, e->kind);
        pmm_buf_puts(b, ",\"name\":");
        json_str_safe(b, e->name);
        pmm_buf_printf(b, ",\"cid\":%" PRIu32 ",\"detail\":", e->cid);
        json_str_safe(b, e->detail);
        pmm_buf_puts(b, "}");
    }
    pmm_buf_puts(b, "]");
    return b->err;
}
