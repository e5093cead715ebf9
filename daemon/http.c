/*
 * http.c - the status port (HTTP/1.x) and the HAProxy agent port of
 * pmgclusterd (protocol and limits: http.h).
 *
 * The request parser, the checks and the answers are pure functions; the
 * servers below them only move bytes. A connection is READING (its head
 * arrives into a fixed PMM_HTTP_HEAD_MAX buffer under one absolute
 * deadline), then ANSWERING (the answer is written, the write side shut
 * down, and what the client still sends is read and thrown away until its
 * EOF or a second deadline), then closed. Nothing waits on a client: a
 * slow or hostile one only ever costs its own buffer and a timer.
 */
#include "daemon/daemon.h"
#include "daemon/panel.h"
#include "net/net.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* ---- request parsing ----------------------------------------------------- */

/* RFC 9110 tchar */
static bool tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
        (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static size_t skip_blank_lines(const char *buf, size_t len)
{
    size_t i = 0;

    while (i < len && (buf[i] == '\r' || buf[i] == '\n'))
        i++;
    return i;
}

size_t pmm_http_head_end(const char *buf, size_t len, size_t from)
{
    size_t skip = skip_blank_lines(buf, len);
    size_t i = from > 3 ? from - 3 : 0;

    if (i < skip)
        i = skip;
    for (; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

#define METHOD_MAX 32

/* The request line s[0..n) (without its line end). 0 or -STATUS. */
static int parse_request_line(const char *s, size_t n, pmm_http_req *req)
{
    size_t i = 0, m, t0, t1;
    const char *v;

    while (i < n && tchar((unsigned char)s[i]))
        i++;
    m = i;
    if (m == 0 || i == n || s[i] != ' ')
        return -400;
    if (m > METHOD_MAX)
        return -501;
    if (m == 3 && memcmp(s, "GET", 3) == 0)
        req->method = PMM_HTTP_GET;
    else if (m == 4 && memcmp(s, "HEAD", 4) == 0)
        req->method = PMM_HTTP_HEAD;
    else if (m == 7 && memcmp(s, "OPTIONS", 7) == 0)
        req->method = PMM_HTTP_OPTIONS;
    else
        req->method = PMM_HTTP_OTHER;
    t0 = ++i;
    while (i < n && (unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f)
        i++;
    t1 = i;
    if (t1 == t0 || i == n || s[i] != ' ')
        return -400;
    i++;
    /* "HTTP/" DIGIT "." DIGIT, then the end of the line */
    v = s + i;
    if (n - i != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' ||
        v[5] > '9' || v[6] != '.' || v[7] < '0' || v[7] > '9')
        return -400;
    if (v[5] != '1')
        return -505;
    req->minor = v[7] - '0';

    /* the request target */
    {
        const char *t = s + t0;
        size_t tl = t1 - t0, p = 0, q;

        req->asterisk = false;
        req->path_too_long = false;
        req->path[0] = '\0';
        req->query[0] = '\0';
        if (tl == 1 && t[0] == '*') {
            req->asterisk = true;
            return 0;
        }
        if (tl >= 7 && (strncasecmp(t, "http://", 7) == 0 ||
                        (tl >= 8 && strncasecmp(t, "https://", 8) == 0))) {
            /* absolute-form: drop scheme and authority */
            p = t[4] == ':' ? 7 : 8;
            while (p < tl && t[p] != '/' && t[p] != '?')
                p++;
            if (p == tl || t[p] == '?') {
                /* "http://host" or "http://host?x": the path is "/" */
                req->path[0] = '/';
                req->path[1] = '\0';
                if (p < tl) {
                    if (tl - p - 1 > PMM_HTTP_QUERY_MAX)
                        return -414;
                    memcpy(req->query, t + p + 1, tl - p - 1);
                    req->query[tl - p - 1] = '\0';
                }
                return 0;
            }
        } else if (t[0] != '/') {
            return -400;
        }
        for (q = p; q < tl && t[q] != '?'; q++)
            ;
        if (q - p > PMM_HTTP_PATH_MAX) {
            req->path_too_long = true;
        } else {
            memcpy(req->path, t + p, q - p);
            req->path[q - p] = '\0';
        }
        if (q < tl) {
            if (tl - q - 1 > PMM_HTTP_QUERY_MAX)
                return -414;
            memcpy(req->query, t + q + 1, tl - q - 1);
            req->query[tl - q - 1] = '\0';
        }
    }
    return 0;
}

int pmm_http_precheck(const char *buf, size_t len)
{
    size_t s = skip_blank_lines(buf, len), i, end;
    const char *nl;
    pmm_http_req scratch;

    if (len > PMM_HTTP_HEAD_MAX)
        return -431;
    if (s == len)
        return 0;
    nl = memchr(buf + s, '\n', len - s);
    end = nl != NULL ? (size_t)(nl - buf) : len;
    if (end - s > PMM_HTTP_LINE_MAX)
        return -414;
    if (nl != NULL) {
        if (end > s && buf[end - 1] == '\r')
            end--;
        return parse_request_line(buf + s, end - s, &scratch);
    }
    /* incomplete line: the method must be a token followed by a space,
     * and nothing may be a control byte */
    for (i = s; i < len && tchar((unsigned char)buf[i]); i++)
        ;
    if (i < len && buf[i] != ' ')
        return -400;
    if (i - s > METHOD_MAX)
        return -501;
    for (; i < len; i++)
        if ((unsigned char)buf[i] < 0x20 && buf[i] != '\r')
            return -400;
    return 0;
}

/* One header line h[0..n) (no line end). 0 or -STATUS; content-length,
 * transfer-encoding and authorization are looked at. */
static int parse_header(const char *h, size_t n, long long *clen,
                        pmm_http_req *req)
{
    size_t i = 0, v;

    if (n > 0 && (h[0] == ' ' || h[0] == '\t'))
        return -400; /* obsolete line folding */
    while (i < n && tchar((unsigned char)h[i]))
        i++;
    if (i == 0 || i == n || h[i] != ':')
        return -400;
    for (size_t k = i + 1; k < n; k++) {
        unsigned char c = (unsigned char)h[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return -400;
    }
    v = i + 1;
    while (v < n && (h[v] == ' ' || h[v] == '\t'))
        v++;
    while (n > v && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    if (i == 17 && strncasecmp(h, "transfer-encoding", 17) == 0)
        return -501;
    if (i == 13 && strncasecmp(h, "authorization", 13) == 0) {
        /* a second one is a bad request: which one counts? */
        if (req->auth[0] != '\0' || req->auth_too_long)
            return -400;
        if (n - v > PMM_HTTP_AUTH_MAX || n == v) {
            req->auth_too_long = n > v;
        } else {
            memcpy(req->auth, h + v, n - v);
            req->auth[n - v] = '\0';
        }
    }
    if (i == 14 && strncasecmp(h, "content-length", 14) == 0) {
        long long x = 0;
        if (v == n || n - v > 15)
            return -400;
        for (size_t k = v; k < n; k++) {
            if (h[k] < '0' || h[k] > '9')
                return -400;
            x = x * 10 + (h[k] - '0');
        }
        if (*clen >= 0 && *clen != x)
            return -400;
        *clen = x;
    }
    return 0;
}

int pmm_http_parse(const char *buf, size_t len, pmm_http_req *req)
{
    size_t s, end, pos, n_headers = 0;
    long long clen = -1;
    int rc;

    memset(req, 0, sizeof(*req));
    end = pmm_http_head_end(buf, len, 0);
    s = end != 0 ? end : len;
    rc = pmm_http_precheck(buf, s < PMM_HTTP_HEAD_MAX ? s : PMM_HTTP_HEAD_MAX);
    if (rc != 0)
        return rc;
    if (end == 0)
        return len >= PMM_HTTP_HEAD_MAX ? -431 : 0;
    if (end > PMM_HTTP_HEAD_MAX)
        return -431;
    s = skip_blank_lines(buf, end);
    pos = s;
    /* every line of the head, the request line first */
    while (pos < end) {
        const char *nl = memchr(buf + pos, '\n', end - pos);
        size_t e = (size_t)(nl - buf), ll = e - pos;

        if (ll > 0 && buf[e - 1] == '\r')
            ll--;
        if (memchr(buf + pos, '\r', ll) != NULL)
            return -400; /* a bare CR inside a line */
        if (pos == s) {
            rc = parse_request_line(buf + pos, ll, req);
        } else if (ll == 0) {
            break; /* the empty line: done */
        } else {
            if (++n_headers > PMM_HTTP_HEADERS_MAX)
                return -431;
            rc = parse_header(buf + pos, ll, &clen, req);
        }
        if (rc != 0)
            return rc;
        pos = e + 1;
    }
    if (req->asterisk && req->method != PMM_HTTP_OPTIONS)
        return -400;
    return (int)end;
}

/* ---- answers ----------------------------------------------------------------- */

const char *pmm_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

#define CT_TEXT "text/plain; charset=utf-8"
#define CT_JSON "application/json"
#define CT_PROM "text/plain; version=0.0.4; charset=utf-8"
#define ALLOW "GET, HEAD, OPTIONS"

/* IMF-fixdate, independent of the locale */
static void http_date(int64_t now, char *buf, size_t len)
{
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu",
                                     "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May",
                                     "Jun", "Jul", "Aug", "Sep", "Oct",
                                     "Nov", "Dec"};
    time_t t = (time_t)now;
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL) {
        snprintf(buf, len, "Thu, 01 Jan 1970 00:00:00 GMT");
        return;
    }
    snprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d GMT",
             wd[tm.tm_wday % 7], tm.tm_mday, mo[tm.tm_mon % 12],
             tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Status line, headers, and (unless head) the body. */
static void put_answer(pmm_buf *out, int status, const char *ctype,
                       const char *extra, int64_t now, const char *body,
                       size_t blen, bool head)
{
    char date[64];

    http_date(now, date, sizeof(date));
    pmm_buf_printf(out,
                   "HTTP/1.1 %d %s\r\n"
                   "Content-Type: %s\r\n"
                   "Content-Length: %zu\r\n"
                   "Cache-Control: no-store\r\n"
                   "X-Content-Type-Options: nosniff\r\n"
                   "Connection: close\r\n"
                   "Date: %s\r\n"
                   "%s"
                   "\r\n",
                   status, pmm_http_reason(status), ctype, blen, date,
                   extra != NULL ? extra : "");
    if (!head && blen > 0)
        pmm_buf_add(out, body, blen);
}

void pmm_http_error(pmm_buf *out, int status, int64_t now, bool head)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "%d %s\n", status,
                     pmm_http_reason(status));

    put_answer(out, status, CT_TEXT,
               status == 405   ? "Allow: " ALLOW "\r\n"
               : status == 401 ? "WWW-Authenticate: Bearer realm=\"pmgcm\"\r\n"
                               : NULL,
               now, body, (size_t)n,
               head);
}

/* ---- checks ---------------------------------------------------------------------- */

static pmm_http_check *add_check(pmm_http_check *out, size_t *n,
                                 const char *name, bool readiness)
{
    pmm_http_check *c = &out[(*n)++];

    c->name = name;
    c->readiness = readiness;
    c->level = PMM_HTTP_OK;
    c->why[0] = '\0';
    return c;
}

static void fail_check(pmm_http_check *c, pmm_http_level lvl,
                       const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail_check(pmm_http_check *c, pmm_http_level lvl,
                       const char *fmt, ...)
{
    va_list ap;

    c->level = lvl;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
}

size_t pmm_http_checks(const pmm_http_view *v, pmm_http_check *out)
{
    size_t n = 0;
    pmm_http_check *c;

    c = add_check(out, &n, "running", true);
    if (v->stopping)
        fail_check(c, PMM_HTTP_CRIT, "shutting down");
    c = add_check(out, &n, "cluster", true);
    if (!v->in_cluster)
        fail_check(c, PMM_HTTP_CRIT,
                   "not in a cluster (pmgcm create or pmgcm join)");
    c = add_check(out, &n, "membership", true);
    if (!v->self_alive)
        fail_check(c, PMM_HTTP_CRIT, "not an alive gossip member");
    c = add_check(out, &n, "config", true);
    if (v->in_cluster && !v->is_master && !v->config_synced)
        fail_check(c, PMM_HTTP_NOTREADY,
                   "behind: holds epoch %" PRIu64 " version %" PRIu64
                   ", a newer one was announced",
                   v->epoch, v->version);
    c = add_check(out, &n, "data", true);
    if (v->has_db && v->in_cluster && !v->db_in_sync)
        fail_check(c, PMM_HTTP_NOTREADY, "database %s at %" PRIu64
                   " of %" PRIu64 "%s%s", v->db_state, v->db_seq,
                   v->db_head_seq, v->db_error[0] ? ": " : "", v->db_error);
    c = add_check(out, &n, "drain", true);
    if (v->draining)
        fail_check(c, PMM_HTTP_CRIT, "draining (pmgcm undrain)");

    /* /health only: warnings */
    c = add_check(out, &n, "peers", false);
    if (v->in_cluster && (v->n_suspect > 0 || v->n_dead > 0)) {
        if (v->n_suspect > 0 && v->n_dead > 0)
            fail_check(c, PMM_HTTP_WARN, "%u suspect, %u dead of %u nodes",
                       v->n_suspect, v->n_dead, v->n_nodes);
        else if (v->n_suspect > 0)
            fail_check(c, PMM_HTTP_WARN, "%u suspect of %u nodes",
                       v->n_suspect, v->n_nodes);
        else
            fail_check(c, PMM_HTTP_WARN, "%u dead of %u nodes", v->n_dead,
                       v->n_nodes);
    }
    c = add_check(out, &n, "quorum", false);
    /* left nodes are on their way out: they do not count */
    if (v->in_cluster && v->n_nodes > v->n_left &&
        2 * v->n_alive <= v->n_nodes - v->n_left)
        fail_check(c, PMM_HTTP_WARN, "only %u of %u nodes alive",
                   v->n_alive, v->n_nodes - v->n_left);
    c = add_check(out, &n, "local_health", false);
    if (v->local_health > 0)
        fail_check(c, PMM_HTTP_WARN,
                   "Lifeguard score %u (this node answers probes late)",
                   v->local_health);
    return n;
}

/* HAProxy reads words separated by blanks or commas; a word that starts
 * with '#' starts the description (the rest of the line), so the reason
 * goes after "down #" (a "down#why" word would be an unknown word, not
 * "down"). The operational word (up/down) and the admin word
 * (ready/drain/maint) are both sent whenever they are known: only the
 * agent can undo what the agent set (a "down" sent while stopping must be
 * undone by an "up" after the restart, also while drained). */
void pmm_http_agent_line(const pmm_http_view *v, char *buf, size_t cap)
{
    pmm_http_check ch[PMM_HTTP_CHECKS_MAX];
    size_t n = pmm_http_checks(v, ch);
    const pmm_http_check *fail = NULL;

    if (!v->in_cluster && !v->draining && !v->stopping) {
        snprintf(buf, cap, "maint\n");
        return;
    }
    for (size_t i = 0; i < n && fail == NULL; i++)
        if (ch[i].readiness && ch[i].level != PMM_HTTP_OK &&
            strcmp(ch[i].name, "drain") != 0)
            fail = &ch[i];
    if (fail != NULL)
        snprintf(buf, cap, "%sdown #%s: %s\n", v->draining ? "drain " : "",
                 fail->name, fail->why);
    else if (v->draining)
        snprintf(buf, cap, "up drain\n");
    else
        snprintf(buf, cap, "up ready 100%%\n");
}

/* ---- the pages ------------------------------------------------------------------------- */

/* The query's parameters: verbose, and exclude=NAME (up to 8). */
typedef struct query {
    bool verbose;
    char exclude[PMM_HTTP_CHECKS_MAX][24];
    size_t n_exclude;
} query;

static void parse_query(const char *q, query *out)
{
    memset(out, 0, sizeof(*out));
    while (*q != '\0') {
        size_t n = strcspn(q, "&;");
        const char *eq = memchr(q, '=', n);
        size_t kl = eq ? (size_t)(eq - q) : n;
        const char *val = eq ? eq + 1 : q + n;
        size_t vl = eq ? n - kl - 1 : 0;

        if (kl == 7 && memcmp(q, "verbose", 7) == 0)
            out->verbose = !(vl == 1 && val[0] == '0') &&
                           !(vl == 5 && memcmp(val, "false", 5) == 0);
        else if (kl == 7 && memcmp(q, "exclude", 7) == 0 && vl > 0 &&
                 vl < sizeof(out->exclude[0]) &&
                 out->n_exclude < PMM_HTTP_CHECKS_MAX) {
            memcpy(out->exclude[out->n_exclude], val, vl);
            out->exclude[out->n_exclude++][vl] = '\0';
        }
        q += n;
        if (*q != '\0')
            q++;
    }
}

static bool excluded(const query *q, const char *name)
{
    for (size_t i = 0; i < q->n_exclude; i++)
        if (strcmp(q->exclude[i], name) == 0)
            return true;
    return false;
}

static void check_line(pmm_buf *b, const pmm_http_check *c, bool health)
{
    if (c->level == PMM_HTTP_OK)
        pmm_buf_printf(b, "[+]%s ok\n", c->name);
    else if (health && c->level != PMM_HTTP_CRIT)
        pmm_buf_printf(b, "[!]%s warning: %s\n", c->name, c->why);
    else
        pmm_buf_printf(b, "[-]%s failed: %s\n", c->name, c->why);
}

/* /readyz, /readyz/NAME (one: that name, or NULL). 200, 503 or 404. */
static int page_readyz(pmm_buf *body, const pmm_http_view *v, const query *q,
                       const char *one)
{
    pmm_http_check ch[PMM_HTTP_CHECKS_MAX];
    size_t n = pmm_http_checks(v, ch);
    bool ok = true, found = false;

    for (size_t i = 0; i < n; i++) {
        if (!ch[i].readiness || (one == NULL && excluded(q, ch[i].name)))
            continue;
        if (one != NULL && strcmp(one, ch[i].name) != 0)
            continue;
        found = true;
        if (ch[i].level != PMM_HTTP_OK)
            ok = false;
    }
    if (one != NULL && !found)
        return 404;
    for (size_t i = 0; i < n; i++) {
        if (!ch[i].readiness || (one == NULL && excluded(q, ch[i].name)))
            continue;
        if (one != NULL && strcmp(one, ch[i].name) != 0)
            continue;
        if (q->verbose || ch[i].level != PMM_HTTP_OK)
            check_line(body, &ch[i], false);
    }
    if (q->verbose)
        pmm_buf_printf(body, "readyz check %s\n", ok ? "passed" : "failed");
    else if (ok)
        pmm_buf_puts(body, "ok\n");
    else if (one == NULL)
        pmm_buf_puts(body, "readyz check failed\n");
    return ok ? 200 : 503;
}

/* /health: 200 passing, 429 warning, 503 critical */
static int page_health(pmm_buf *body, const pmm_http_view *v)
{
    pmm_http_check ch[PMM_HTTP_CHECKS_MAX];
    size_t n = pmm_http_checks(v, ch);
    pmm_http_level worst = PMM_HTTP_OK;

    for (size_t i = 0; i < n; i++)
        if (ch[i].level > worst)
            worst = ch[i].level;
    pmm_buf_puts(body, worst == PMM_HTTP_OK     ? "passing\n"
                       : worst == PMM_HTTP_CRIT ? "critical\n"
                                                : "warning\n");
    for (size_t i = 0; i < n; i++)
        check_line(body, &ch[i], true);
    return worst == PMM_HTTP_OK ? 200 : worst == PMM_HTTP_CRIT ? 503 : 429;
}

/* "Bearer TOKEN" against the token, in constant time (for equal
 * lengths; the length itself is not secret enough to hide). */
static bool bearer_ok(const pmm_http_req *req, const char *token)
{
    const char *a = req->auth;
    size_t n, tl;
    unsigned char d = 0;

    if (token == NULL || token[0] == '\0' || req->auth_too_long ||
        strncasecmp(a, "bearer ", 7) != 0)
        return false;
    a += 7;
    while (*a == ' ')
        a++;
    n = strlen(a);
    tl = strlen(token);
    if (n != tl)
        return false;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(a[i] ^ token[i]);
    return d == 0;
}

/* 0 when the client may read the page, else 401 or 403 */
static int access_denied(const pmm_http_access *acc, const pmm_http_req *req,
                         bool status_page)
{
    pmm_access a;

    if (acc == NULL)
        return 0;
    a = status_page ? acc->status : acc->metrics;
    if (a == PMM_ACCESS_LOCAL && !req->peer_local)
        return 403;
    if (a == PMM_ACCESS_TOKEN && !bearer_ok(req, acc->token))
        return 401;
    return 0;
}

int pmm_http_respond(pmm_buf *out, const pmm_http_req *req,
                     const pmm_http_source *src)
{
    pmm_http_view v;
    pmm_buf body;
    query q;
    const char *ctype = CT_TEXT;
    const char *p = req->path;
    const pmm_panel_file *pf = NULL;
    char extra[sizeof(PMM_PANEL_HEADERS) + 32] = "";
    bool head = req->method == PMM_HTTP_HEAD;
    bool allow = req->method == PMM_HTTP_OPTIONS;
    int status;
    enum { P_NONE, P_LIVEZ, P_READYZ, P_READYZ_ONE, P_HEALTH, P_STATUS,
           P_METRICS, P_PANEL } page = P_NONE;

    memset(&v, 0, sizeof(v));
    if (src != NULL && src->view != NULL)
        src->view(src->ud, &v);
    /* GET / is the cluster panel (panel.h); OPTIONS / stays readiness
     * (HAProxy's default httpchk) */
    if (!req->asterisk && !(allow && strcmp(p, "/") == 0) &&
        (pf = pmm_panel_find(p)) != NULL)
        page = P_PANEL;
    else if (req->asterisk || strcmp(p, "/") == 0 ||
             strcmp(p, "/readyz") == 0)
        page = P_READYZ;
    else if (strcmp(p, "/livez") == 0)
        page = P_LIVEZ;
    else if (strncmp(p, "/readyz/", 8) == 0 && p[8] != '\0')
        page = P_READYZ_ONE;
    else if (strcmp(p, "/health") == 0)
        page = P_HEALTH;
    else if (strcmp(p, "/status") == 0)
        page = P_STATUS;
    else if (strcmp(p, "/metrics") == 0)
        page = P_METRICS;
    if (req->path_too_long)
        page = P_NONE;
    if (page == P_NONE) {
        pmm_http_error(out, 404, v.now, head);
        return 404;
    }
    if (req->method == PMM_HTTP_OTHER) {
        pmm_http_error(out, 405, v.now, false);
        return 405;
    }
    if (page == P_STATUS || page == P_METRICS || page == P_PANEL) {
        int deny = access_denied(src != NULL ? src->access : NULL, req,
                                 page != P_METRICS);
        if (deny != 0) {
            pmm_http_error(out, deny, v.now, head);
            return deny;
        }
    }
    parse_query(req->query, &q);
    pmm_buf_init(&body, PMM_CTL_REPLY_MAX);
    switch (page) {
    case P_LIVEZ:
        status = 200;
        pmm_buf_puts(&body, q.verbose ? "[+]loop ok\nlivez check passed\n"
                                      : "ok\n");
        break;
    case P_READYZ:
        status = page_readyz(&body, &v, &q, NULL);
        break;
    case P_READYZ_ONE:
        status = page_readyz(&body, &v, &q, p + 8);
        if (status == 404) {
            pmm_buf_free(&body);
            pmm_http_error(out, 404, v.now, head);
            return 404;
        }
        break;
    case P_HEALTH:
        status = page_health(&body, &v);
        break;
    case P_STATUS:
        ctype = CT_JSON;
        status = 200;
        if (src == NULL || src->status_json == NULL ||
            src->status_json(src->ud, &body) != 0)
            status = 500;
        break;
    case P_METRICS:
        ctype = CT_PROM;
        status = 200;
        pmm_metrics_write(&body, &v);
        break;
    case P_PANEL:
        ctype = pf->ctype;
        status = 200;
        pmm_buf_add(&body, pf->data, pf->len);
        snprintf(extra, sizeof(extra), "%s", PMM_PANEL_HEADERS);
        break;
    default:
        status = 500;
        break;
    }
    if (body.err != 0 || status == 500) {
        pmm_buf_free(&body);
        pmm_http_error(out, 500, v.now, head);
        return 500;
    }
    if (allow)
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), "%s",
                 "Allow: " ALLOW "\r\n");
    put_answer(out, status, ctype, extra, v.now, body.p ? body.p : "",
               body.len, head);
    pmm_buf_free(&body);
    return status;
}

/* ---- servers ------------------------------------------------------------------------------ */

typedef enum cstate {
    C_READING,
    C_ANSWERING,
    C_CLOSING,
} cstate;

typedef struct conn conn;
struct conn {
    pmm_http *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    int open_handles;
    cstate st;
    bool line_done; /* the request line is complete (and prechecked) */
    bool shut;      /* answer written, write side shut down */
    bool eof;       /* the client closed its side */
    size_t len;     /* bytes in buf */
    size_t skipped; /* empty lines before the request line */
    size_t discarded;
    char *buf;      /* PMM_HTTP_HEAD_MAX (status port only) */
    pmm_buf out;
    size_t charged_buf;  /* budget held for buf (given back when freed) */
    size_t charged_rest; /* for the connection and its answer (at free) */
    pmm_src src;
    bool local;     /* the client is on this host */
    uint64_t seq;
    conn *prev, *next; /* accept order: srv->first is the oldest */
};

struct pmm_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    pmm_http_kind kind;
    pmm_http_source src;
    pmm_http_opts opts;
    conn *first, *last;
    uint32_t n_live;   /* connections not closing */
    uint32_t n_alloc;  /* connections not freed yet */
    pmm_http_stats st;
    bool closing;
    bool listener_closed;
    uint16_t port;
    uint64_t seq;
    pmm_guard_ent *ents; /* scratch for the eviction choice: max_conns + 2 */
    conn **econn;
    /* at most ACCEPT_BURST accepts per loop turn (libuv would accept
     * until the backlog is empty, and a flood refilling it as fast as
     * connections are dropped would hold the loop) */
    uv_idle_t accept_idle;
    uint32_t burst;
    bool accept_pending;
    bool idle_closed;
    pmm_rate *rate; /* recent connections per address */
    char scratch[16384]; /* where discarded bytes go */
};
#define ACCEPT_BURST 32

static const char *kind_name(const pmm_http *h)
{
    return h->kind == PMM_HTTP_AGENT ? "agent" : "status";
}

void pmm_http_opts_default(pmm_http_opts *o)
{
    o->max_conns = PMM_HTTP_CONNS_MAX;
    o->max_per_src = PMM_HTTP_PER_SRC_MAX;
    o->read_ms = PMM_HTTP_READ_MS;
    o->answer_ms = PMM_HTTP_ANSWER_MS;
    o->linger_ms = PMM_HTTP_LINGER_MS;
    o->budget = NULL;
}

static void srv_free(pmm_http *h)
{
    pmm_rate_free(h->rate);
    free(h->ents);
    free(h->econn);
    free(h);
}

static void srv_maybe_free(pmm_http *h)
{
    if (h->closing && h->listener_closed && h->idle_closed && h->n_alloc == 0)
        srv_free(h);
}

static void conn_free_buf(conn *c)
{
    free(c->buf);
    c->buf = NULL;
    gsp_budget_give(c->srv->opts.budget, c->charged_buf);
    c->charged_buf = 0;
}

static void conn_closed_cb(uv_handle_t *hd)
{
    conn *c = hd->data;
    pmm_http *h = c->srv;

    if (--c->open_handles > 0)
        return;
    conn_free_buf(c);
    pmm_buf_free(&c->out);
    gsp_budget_give(h->opts.budget, c->charged_rest);
    free(c);
    h->n_alloc--;
    srv_maybe_free(h);
}

static void conn_close(conn *c)
{
    pmm_http *h = c->srv;

    if (c->st == C_CLOSING)
        return;
    c->st = C_CLOSING;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        h->first = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        h->last = c->prev;
    c->prev = c->next = NULL;
    h->n_live--;
    /* libuv reads nothing more into it once the handle is closing */
    conn_free_buf(c);
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

static void conn_written_cb(uv_write_t *w, int status)
{
    conn *c = w->data;

    if (status != 0 && c->st != C_CLOSING)
        conn_close(c);
}

static void conn_timer_cb(uv_timer_t *t);

/* The answer is written and the write side shut down: the client's EOF is
 * awaited for linger_ms at most (its late bytes are read and thrown away,
 * so closing does not reset the connection under the answer). */
static void conn_shutdown_cb(uv_shutdown_t *s, int status)
{
    conn *c = s->data;

    if (c->st == C_CLOSING)
        return;
    c->shut = true;
    if (status != 0 || c->eof) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, conn_timer_cb, c->srv->opts.linger_ms, 0);
}

/* Sends c->out, shuts the write side down (the answer must be taken within
 * answer_ms), then lingers (conn_shutdown_cb). */
static void conn_answer(conn *c)
{
    pmm_http *h = c->srv;
    uv_buf_t b;

    if (c->st != C_READING)
        return;
    c->st = C_ANSWERING;
    h->st.requests++;
    conn_free_buf(c);
    uv_timer_start(&c->timer, conn_timer_cb, h->opts.answer_ms, 0);
    if (c->out.err != 0 || c->out.len == 0) {
        conn_close(c);
        return;
    }
    b = uv_buf_init(c->out.p, (unsigned)c->out.len);
    c->wreq.data = c;
    c->sreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1,
                 conn_written_cb) != 0 ||
        uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, conn_shutdown_cb) != 0)
        conn_close(c);
}

static void conn_error(conn *c, int status)
{
    pmm_http *h = c->srv;

    if (status == 408)
        h->st.timeouts++;
    else
        h->st.bad_requests++;
    pmm_log(PMM_LOG_DEBUG, "http", "%s port: answered %d %s", kind_name(h),
            status, pmm_http_reason(status));
    pmm_buf_reset(&c->out);
    pmm_http_error(&c->out, status, (int64_t)time(NULL), false);
    conn_answer(c);
}

static void conn_timer_cb(uv_timer_t *t)
{
    conn *c = t->data;

    if (c->st == C_READING)
        conn_error(c, 408);
    else
        conn_close(c);
}

static void conn_alloc_cb(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    conn *c = hd->data;

    (void)suggested;
    if (c->st == C_READING && c->buf != NULL && c->len < PMM_HTTP_HEAD_MAX)
        *buf = uv_buf_init(c->buf + c->len,
                           (unsigned)(PMM_HTTP_HEAD_MAX - c->len));
    else
        *buf = uv_buf_init(c->srv->scratch, sizeof(c->srv->scratch));
}

/* ---- room: caps and the budget ------------------------------------------------------------- */

/* lower goes first: answered and lingering, reading, being written to */
static int conn_class(const conn *c)
{
    if (c->st == C_ANSWERING)
        return c->shut ? 0 : 2;
    return 1;
}

/* The connection to drop for `newcomer` (never itself): among `only`'s
 * (its per-address cap) or among all (see guard.h). NULL if none. */
static conn *pick_victim(pmm_http *h, const conn *newcomer,
                         const pmm_src *only)
{
    size_t n = 0, skip = SIZE_MAX, v;
    uint64_t now = uv_now(h->loop);

    for (conn *o = h->first; o != NULL && n < h->opts.max_conns + 2;
         o = o->next) {
        h->ents[n].src = o->src;
        h->ents[n].cls = conn_class(o);
        h->ents[n].seq = o->seq;
        h->ents[n].rate = pmm_rate_get(h->rate, &o->src, now);
        h->econn[n] = o;
        if (o == newcomer)
            skip = n;
        n++;
    }
    v = only != NULL ? pmm_guard_victim_of(h->ents, n, skip, only)
                     : pmm_guard_victim(h->ents, n, skip);
    return v < n ? h->econn[v] : NULL;
}

/* Best effort, without waiting: a short answer to a connection that is
 * closed right away. */
static void conn_blurt(conn *c, int status)
{
    pmm_buf b;
    uv_buf_t ub;

    pmm_buf_init(&b, 1024);
    pmm_http_error(&b, status, (int64_t)time(NULL), false);
    if (b.err == 0) {
        ub = uv_buf_init(b.p, (unsigned)b.len);
        (void)uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
    }
    pmm_buf_free(&b);
}

static void evict(pmm_http *h, conn *v, const char *why)
{
    char ip[64];

    h->st.evicted++;
    if (v->st == C_READING && h->kind == PMM_HTTP_STATUS)
        conn_blurt(v, 408);
    pmm_log(PMM_LOG_DEBUG, "http", "%s port: dropped a connection from %s "
            "(%s)", kind_name(h), pmm_src_str(&v->src, false, ip, sizeof(ip)),
            why);
    conn_close(v);
}

/* n bytes from the budget for c, making room by dropping others if it
 * must (at most a few). 0 or -ENOBUFS. */
static int take_room(pmm_http *h, conn *c, size_t n)
{
    for (int tries = 0; gsp_budget_take(h->opts.budget, n) != 0; tries++) {
        conn *v = tries < 4 ? pick_victim(h, c, NULL) : NULL;
        if (v == NULL)
            return -ENOBUFS;
        evict(h, v, "memory budget");
    }
    return 0;
}

static size_t count_src(const pmm_http *h, const conn *c)
{
    size_t n = 0;

    for (const conn *o = h->first; o != NULL; o = o->next)
        if (o != c && pmm_src_eq(&o->src, &c->src))
            n++;
    return n;
}

/* New bytes at c->buf[c->len - n .. c->len). */
static void conn_got(conn *c, size_t n)
{
    pmm_http *h = c->srv;
    size_t before = c->len - n, end;
    pmm_http_req req;
    int rc;

    /* empty lines before the request line (RFC 9112 2.2) are dropped as
     * they come, but count against the head's bound */
    if (!c->line_done && before == 0) {
        size_t s = skip_blank_lines(c->buf, c->len);
        if (s > 0) {
            c->skipped += s;
            memmove(c->buf, c->buf + s, c->len - s);
            c->len -= s;
            before = 0;
            if (c->skipped > PMM_HTTP_HEAD_MAX) {
                conn_error(c, 400);
                return;
            }
        }
    }
    if (c->len == 0)
        return;
    if (!c->line_done) {
        rc = pmm_http_precheck(c->buf, c->len);
        if (rc < 0) {
            conn_error(c, -rc);
            return;
        }
        c->line_done = memchr(c->buf + before, '\n', c->len - before) != NULL;
    }
    end = pmm_http_head_end(c->buf, c->len, before);
    if (end == 0) {
        if (c->len + c->skipped >= PMM_HTTP_HEAD_MAX)
            conn_error(c, 431);
        return;
    }
    rc = pmm_http_parse(c->buf, end, &req);
    if (rc < 0) {
        conn_error(c, -rc);
        return;
    }
    if (rc == 0) { /* cannot happen: the head is complete */
        conn_error(c, 400);
        return;
    }
    req.peer_local = c->local;
    {
        int status = pmm_http_respond(&c->out, &req, &h->src);
        if (status == 401 || status == 403)
            h->st.denied++;
        pmm_log(PMM_LOG_DEBUG, "http", "status port: %s %s%s%s -> %d",
                req.method == PMM_HTTP_GET       ? "GET"
                : req.method == PMM_HTTP_HEAD    ? "HEAD"
                : req.method == PMM_HTTP_OPTIONS ? "OPTIONS"
                                                 : "(other)",
                req.asterisk ? "*" : req.path, req.query[0] ? "?" : "",
                req.query, status);
    }
    /* the answer is held until the client took it: it counts too */
    conn_free_buf(c);
    if (take_room(h, c, c->out.cap) != 0) {
        h->st.rejected++;
        pmm_buf_free(&c->out);
        pmm_buf_init(&c->out, 1024);
        pmm_http_error(&c->out, 503, (int64_t)time(NULL), false);
    } else {
        c->charged_rest += c->out.cap;
    }
    conn_answer(c);
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;

    (void)buf;
    if (c->st == C_CLOSING)
        return;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread == UV_EOF && c->st == C_ANSWERING) {
            c->eof = true;
            uv_read_stop(s);
            if (c->shut)
                conn_close(c);
            return;
        }
        if (nread == UV_EOF && c->st == C_READING && c->len > 0) {
            /* the client stopped sending in the middle of a head and
             * waits for an answer (printf 'GET /' | nc) */
            uv_read_stop(s);
            c->eof = true;
            conn_error(c, 400);
            return;
        }
        conn_close(c);
        return;
    }
    if (c->st == C_ANSWERING || c->buf == NULL) {
        c->discarded += (size_t)nread;
        if (c->discarded > PMM_HTTP_DISCARD_MAX)
            conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    conn_got(c, (size_t)nread);
}

static void srv_accept(pmm_http *h);

/* Once per loop turn while accepting: a new burst may start, and the
 * connection held back last turn is taken (uv_accept resumes the
 * listener). */
static void srv_accept_idle_cb(uv_idle_t *t)
{
    pmm_http *h = t->data;

    h->burst = 0;
    if (h->accept_pending) {
        h->accept_pending = false;
        h->burst++;
        srv_accept(h);
    } else {
        uv_idle_stop(t);
    }
}

static void srv_conn_cb(uv_stream_t *ls, int status)
{
    pmm_http *h = ls->data;

    if (status != 0) {
        pmm_log(PMM_LOG_WARN, "http", "%s port: accept: %s", kind_name(h),
                uv_strerror(status));
        return;
    }
    if (h->burst >= ACCEPT_BURST) {
        /* not accepted: libuv stops watching the listener until the next
         * turn's uv_accept */
        h->accept_pending = true;
        return;
    }
    h->burst++;
    uv_idle_start(&h->accept_idle, srv_accept_idle_cb);
    srv_accept(h);
}

static void srv_accept(pmm_http *h)
{
    uv_stream_t *ls = (uv_stream_t *)&h->listener;
    struct sockaddr_storage ss;
    int slen = sizeof(ss);
    size_t cost;
    conn *c, *v;

    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        pmm_log(PMM_LOG_ERROR, "http", "%s port: out of memory",
                kind_name(h));
        return;
    }
    c->srv = h;
    c->st = C_READING;
    c->seq = ++h->seq;
    pmm_buf_init(&c->out, PMM_CTL_REPLY_MAX + 4096);
    uv_tcp_init(h->loop, &c->tcp);
    uv_timer_init(h->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    h->n_alloc++;
    h->n_live++;
    /* linked last: the newest */
    c->prev = h->last;
    if (h->last != NULL)
        h->last->next = c;
    else
        h->first = c;
    h->last = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    h->st.connections++;
    memset(&ss, 0, sizeof(ss));
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &slen) == 0)
        pmm_src_from_sa(&c->src, (struct sockaddr *)&ss);
    pmm_rate_hit(h->rate, &c->src, uv_now(h->loop));
    /* on this host: loopback, or from the very address it came in on
     * (curl http://<this node's IP>:7948/status on the node itself) */
    c->local = pmm_src_loopback(&c->src);
    if (!c->local && c->src.family != 0) {
        pmm_src me;
        slen = sizeof(ss);
        memset(&ss, 0, sizeof(ss));
        if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &slen) == 0) {
            pmm_src_from_sa(&me, (struct sockaddr *)&ss);
            c->local = pmm_src_eq(&me, &c->src);
        }
    }
    /* this address's own cap: its own connection makes room */
    if (count_src(h, c) >= h->opts.max_per_src &&
        (v = pick_victim(h, c, &c->src)) != NULL)
        evict(h, v, "too many from one address");
    /* the server's cap: the address holding the most makes room */
    if (h->n_live > h->opts.max_conns) {
        v = pick_victim(h, c, NULL);
        if (v != NULL)
            evict(h, v, "connection cap");
    }
    cost = sizeof(conn) + (h->kind == PMM_HTTP_STATUS ? PMM_HTTP_HEAD_MAX : 0);
    if (h->n_live > h->opts.max_conns || take_room(h, c, cost) != 0) {
        h->st.rejected++;
        if (h->kind == PMM_HTTP_STATUS)
            conn_blurt(c, 503);
        conn_close(c);
        return;
    }
    c->charged_rest = sizeof(conn);
    c->charged_buf = cost - sizeof(conn);
    if (h->kind == PMM_HTTP_AGENT) {
        pmm_http_view view;
        char line[160];
        memset(&view, 0, sizeof(view));
        if (h->src.view != NULL)
            h->src.view(h->src.ud, &view);
        pmm_http_agent_line(&view, line, sizeof(line));
        pmm_buf_puts(&c->out, line);
        /* agent-send text, if HAProxy is configured to send any, is read
         * and thrown away */
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb,
                          conn_read_cb) != 0) {
            conn_close(c);
            return;
        }
        conn_answer(c);
        return;
    }
    c->buf = malloc(PMM_HTTP_HEAD_MAX);
    if (c->buf == NULL) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, conn_timer_cb, h->opts.read_ms, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc_cb,
                      conn_read_cb) != 0)
        conn_close(c);
}

static void listener_closed_cb(uv_handle_t *hd)
{
    pmm_http *h = hd->data;

    h->listener_closed = true;
    srv_maybe_free(h);
}

static void idle_closed_cb(uv_handle_t *hd)
{
    pmm_http *h = hd->data;

    h->idle_closed = true;
    srv_maybe_free(h);
}

int pmm_http_start(pmm_http **out, uv_loop_t *loop, const struct sockaddr *sa,
                   pmm_http_kind kind, const pmm_http_source *src,
                   const pmm_http_opts *o, char *err, size_t errlen)
{
    pmm_http *h;
    struct sockaddr_storage ss;
    int len = sizeof(ss), rc;

    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    h->loop = loop;
    h->kind = kind;
    if (src != NULL)
        h->src = *src;
    if (o != NULL)
        h->opts = *o;
    else
        pmm_http_opts_default(&h->opts);
    if (h->opts.max_conns == 0)
        h->opts.max_conns = 1;
    if (h->opts.max_per_src == 0)
        h->opts.max_per_src = h->opts.max_conns;
    h->ents = calloc(h->opts.max_conns + 2, sizeof(*h->ents));
    h->econn = calloc(h->opts.max_conns + 2, sizeof(*h->econn));
    h->rate = pmm_rate_new(4 * h->opts.max_conns, 1000);
    if (h->ents == NULL || h->econn == NULL || h->rate == NULL) {
        snprintf(err, errlen, "out of memory");
        srv_free(h);
        return -ENOMEM;
    }
    rc = uv_tcp_init(loop, &h->listener);
    if (rc != 0) {
        snprintf(err, errlen, "%s", uv_strerror(rc));
        srv_free(h);
        return rc;
    }
    h->listener.data = h;
    uv_idle_init(loop, &h->accept_idle);
    h->accept_idle.data = h;
    rc = uv_tcp_bind(&h->listener, sa, 0);
    if (rc == 0)
        /* a deep backlog: under a connection flood a checker's SYN
         * waits in it rather than being dropped (and retried after 1 s) */
        rc = uv_listen((uv_stream_t *)&h->listener, 511, srv_conn_cb);
    if (rc == 0)
        rc = uv_tcp_getsockname(&h->listener, (struct sockaddr *)&ss, &len);
    if (rc != 0) {
        snprintf(err, errlen, "%s", uv_strerror(rc));
        h->closing = true;
        uv_close((uv_handle_t *)&h->accept_idle, idle_closed_cb);
        uv_close((uv_handle_t *)&h->listener, listener_closed_cb);
        return rc;
    }
    h->port = ss.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    *out = h;
    return 0;
}

uint16_t pmm_http_port(const pmm_http *h)
{
    return h->port;
}

void pmm_http_get_stats(const pmm_http *h, pmm_http_stats *st)
{
    *st = h->st;
    st->open = h->n_live;
}

void pmm_http_close(pmm_http *h)
{
    if (h == NULL || h->closing)
        return;
    h->closing = true;
    while (h->first != NULL)
        conn_close(h->first);
    uv_close((uv_handle_t *)&h->accept_idle, idle_closed_cb);
    uv_close((uv_handle_t *)&h->listener, listener_closed_cb);
    srv_maybe_free(h);
}
