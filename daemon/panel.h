/*
 * panel.h - the cluster panel on the status port (panel.c): the page's
 * static files, built into the daemon from daemon/panel.html, panel.css
 * and panel.js (daemon/embed.sh turns them into a C array at build time),
 * and the bounded ring of recent membership events the page shows
 * (written into /status as "events").
 *
 *   GET /             panel.html   text/html
 *   GET /panel.css    panel.css    text/css
 *   GET /panel.js     panel.js     text/javascript
 *
 * The files hold no cluster data: the page reads /status from the same
 * origin (fetch, every PMM_PANEL_REFRESH_MS) and builds its DOM with
 * textContent only. Every panel answer carries PMM_PANEL_HEADERS: a strict
 * Content-Security-Policy (scripts, styles and fetches from the same
 * origin only, no inline code, no frames, no forms), nosniff, no referrer.
 * http.c serves them under the access rule of /status (status_access).
 */
#ifndef PMGCM_DAEMON_PANEL_H
#define PMGCM_DAEMON_PANEL_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>

#define PMM_PANEL_REFRESH_MS 2000 /* the page polls /status this often */

#define PMM_PANEL_CSP                                                    \
    "default-src 'none'; script-src 'self'; style-src 'self'; "          \
    "connect-src 'self'; img-src 'self'; base-uri 'none'; "              \
    "form-action 'none'; frame-ancestors 'none'"
#define PMM_PANEL_HEADERS                                                \
    "Content-Security-Policy: " PMM_PANEL_CSP "\r\n"                     \
    "X-Content-Type-Options: nosniff\r\n"                                \
    "X-Frame-Options: DENY\r\n"                                          \
    "Referrer-Policy: no-referrer\r\n"

typedef struct pmm_panel_file {
    const char *path;  /* "/", "/panel.css", "/panel.js" */
    const char *ctype; /* with charset */
    const unsigned char *data; /* static, never freed */
    size_t len;
} pmm_panel_file;

/* The panel file served at path (without the query), or NULL. */
const pmm_panel_file *pmm_panel_find(const char *path);

/* ---- recent membership events ------------------------------------------ */

#define PMM_EVENTS_MAX 64      /* the ring keeps the newest this many */
#define PMM_EVENT_KIND_MAX 16  /* "suspect", "dead", "key rotated" ... */
#define PMM_EVENT_NAME_MAX 64  /* a node name (GSP_NAME_MAX) */
#define PMM_EVENT_DETAIL_MAX 96

typedef struct pmm_event {
    uint64_t seq;   /* 1, 2, ... since the daemon started */
    int64_t at;     /* unix seconds */
    uint32_t cid;   /* 0 when unknown */
    char kind[PMM_EVENT_KIND_MAX];
    char name[PMM_EVENT_NAME_MAX + 1];
    char detail[PMM_EVENT_DETAIL_MAX];
} pmm_event;

typedef struct pmm_events {
    pmm_event ev[PMM_EVENTS_MAX];
    size_t next;  /* slot the next event goes to */
    size_t n;     /* events held, <= PMM_EVENTS_MAX */
    uint64_t seq; /* of the newest */
} pmm_events;

/* Zero it (or memset 0): an empty ring. */
void pmm_events_init(pmm_events *r);
/* Adds one event, dropping the oldest when full. kind, name and detail
 * are copied (cut to fit; name and detail may be NULL). */
void pmm_events_add(pmm_events *r, int64_t at, const char *kind,
                    const char *name, uint32_t cid, const char *detail);
/* Appends a JSON array, oldest first: [{"seq":N,"time":T,"kind":"dead",
 * "name":"node3","cid":3,"detail":"..."}]. Strings are escaped for JSON
 * and '<', '>', '&' and '\'' as \u00XX besides, so no name ever shows raw
 * markup even to a client that sniffs. Returns b->err. */
int pmm_events_json(const pmm_events *r, pmm_buf *b);
/* The same array as a new json_t (NULL: out of memory); write it with
 * pmm_json_put_safe for the markup escapes. */
json_t *pmm_events_array(const pmm_events *r);

#endif
