/*
 * json.c - bounded growable buffer, JSON string writer and a small bounded
 * JSON reader (RFC 8259) for the control protocol.
 */
#include "common/common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pmm_buf ---------------------------------------------------------------- */

void pmm_buf_init(pmm_buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void pmm_buf_free(pmm_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->err = 0;
}

void pmm_buf_reset(pmm_buf *b)
{
    b->len = 0;
    b->err = 0;
    if (b->p != NULL)
        b->p[0] = '\0';
}

static int buf_reserve(pmm_buf *b, size_t extra)
{
    size_t need, ncap;
    char *np;

    if (b->err != 0)
        return b->err;
    if (extra > b->max || b->len > b->max - extra)
        return b->err = -E2BIG;
    need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    ncap = b->cap ? b->cap : 256;
    while (ncap < need)
        ncap *= 2;
    np = realloc(b->p, ncap);
    if (np == NULL)
        return b->err = -ENOMEM;
    b->p = np;
    b->cap = ncap;
    return 0;
}

int pmm_buf_reserve(pmm_buf *b, size_t extra)
{
    int rc = buf_reserve(b, extra);

    if (rc == 0)
        b->p[b->len] = '\0'; /* stays a string even if nothing is added */
    return rc;
}

void pmm_buf_wipe(pmm_buf *b)
{
    if (b->p != NULL)
        explicit_bzero(b->p, b->cap);
    pmm_buf_free(b);
}

int pmm_buf_add(pmm_buf *b, const void *data, size_t n)
{
    int rc = buf_reserve(b, n);

    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int pmm_buf_puts(pmm_buf *b, const char *s)
{
    return pmm_buf_add(b, s, strlen(s));
}

int pmm_buf_printf(pmm_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n, rc;

    if (b->err != 0)
        return b->err;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return b->err = -EINVAL;
    rc = buf_reserve(b, (size_t)n);
    if (rc != 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* ---- writer ------------------------------------------------------------------- */

/* Length of a valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void pmm_printable(char *dst, size_t cap, const char *src)
{
    size_t i = 0;

    if (cap == 0)
        return;
    for (; src[i] != '\0' && i + 1 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    dst[i] = '\0';
}

size_t pmm_utf8_chars(const char *s, size_t n)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            c++;
    return c;
}

bool pmm_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;

    while (i < n) {
        size_t sl = utf8_seq(s + i, n - i);
        if (sl == 0)
            return false;
        i += sl;
    }
    return true;
}

int pmm_json_str(pmm_buf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;

    pmm_buf_add(b, "\"", 1);
    while (i < n) {
        unsigned c = s[i];
        const char *esc = NULL;
        char ubuf[8];
        size_t sl;

        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20 || c == 0x7f) {
            snprintf(ubuf, sizeof(ubuf), "\\u%04x", c);
            esc = ubuf;
        }
        if (esc != NULL) {
            pmm_buf_add(b, s + i - run, run);
            run = 0;
            pmm_buf_puts(b, esc);
            i++;
            continue;
        }
        sl = utf8_seq(s + i, n - i);
        if (sl == 0) {
            pmm_buf_add(b, s + i - run, run);
            run = 0;
            pmm_buf_puts(b, "\\ufffd");
            i++;
            continue;
        }
        run += sl;
        i += sl;
    }
    pmm_buf_add(b, s + i - run, run);
    return pmm_buf_add(b, "\"", 1);
}

/* ---- reader ------------------------------------------------------------------- */

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int rc;
    size_t nodes;
} parser;

/* bound on values in one document (memory: ~80 bytes each) */
#define JSON_MAX_NODES 262144

static void perr(parser *p, int rc, const char *msg)
{
    if (p->rc != 0)
        return;
    p->rc = rc;
    if (p->err != NULL && p->errlen > 0)
        snprintf(p->err, p->errlen, "%s at byte %zu", msg, p->pos);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len &&
           (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
            p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

void pmm_json_free(pmm_json *j)
{
    while (j != NULL) {
        pmm_json *next = j->next;
        pmm_json_free(j->child);
        if (j->str != NULL)
            explicit_bzero(j->str, j->str_len); /* may be a password */
        free(j->str);
        free(j->key);
        free(j);
        j = next;
    }
}

static int hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;

    for (int i = 0; i < 4; i++) {
        int d = pmm_hexval(s[i]);
        if (d < 0)
            return -1;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

static void put_utf8(pmm_buf *b, uint32_t cp)
{
    unsigned char u[4];
    size_t n;

    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xc0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xe0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xf0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    pmm_buf_add(b, u, n);
}

/* Parses a string at p->pos (which is '"'); returns malloc'd UTF-8. */
static char *parse_string(parser *p, size_t *out_len)
{
    pmm_buf b;
    size_t end = p->pos + 1;

    /* One allocation, never grown: no stale copies of a secret are left
     * behind by realloc. Escapes only shrink, so the raw length up to the
     * closing quote bounds the decoded length. */
    while (end < p->len && p->s[end] != '"')
        end += p->s[end] == '\\' ? 2 : 1;
    pmm_buf_init(&b, p->len);
    if (buf_reserve(&b, (end < p->len ? end : p->len) - p->pos) != 0) {
        perr(p, b.err, "out of memory");
        return NULL;
    }
    b.p[0] = '\0'; /* "" adds nothing */
    p->pos++; /* opening quote */
    for (;;) {
        unsigned char c;
        if (p->pos >= p->len) {
            perr(p, -EINVAL, "unterminated string");
            goto fail;
        }
        c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) {
            perr(p, -EINVAL, "control character in string");
            goto fail;
        }
        if (c == '\\') {
            char e;
            if (p->pos + 1 >= p->len) {
                perr(p, -EINVAL, "unterminated escape");
                goto fail;
            }
            e = p->s[p->pos + 1];
            p->pos += 2;
            switch (e) {
            case '"': pmm_buf_add(&b, "\"", 1); break;
            case '\\': pmm_buf_add(&b, "\\", 1); break;
            case '/': pmm_buf_add(&b, "/", 1); break;
            case 'b': pmm_buf_add(&b, "\b", 1); break;
            case 'f': pmm_buf_add(&b, "\f", 1); break;
            case 'n': pmm_buf_add(&b, "\n", 1); break;
            case 'r': pmm_buf_add(&b, "\r", 1); break;
            case 't': pmm_buf_add(&b, "\t", 1); break;
            case 'u': {
                uint32_t cp, lo;
                if (p->pos + 4 > p->len || hex4(p->s + p->pos, &cp) != 0) {
                    perr(p, -EINVAL, "bad \\u escape");
                    goto fail;
                }
                p->pos += 4;
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (p->pos + 6 <= p->len && p->s[p->pos] == '\\' &&
                        p->s[p->pos + 1] == 'u' &&
                        hex4(p->s + p->pos + 2, &lo) == 0 && lo >= 0xdc00 &&
                        lo <= 0xdfff) {
                        p->pos += 6;
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    } else {
                        cp = 0xfffd; /* lone high surrogate */
                    }
                } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                    cp = 0xfffd; /* lone low surrogate */
                }
                put_utf8(&b, cp);
                break;
            }
            default:
                perr(p, -EINVAL, "bad escape");
                goto fail;
            }
            continue;
        }
        {
            size_t sl = utf8_seq((const unsigned char *)p->s + p->pos,
                                 p->len - p->pos);
            if (sl == 0) {
                perr(p, -EINVAL, "invalid UTF-8 in string");
                goto fail;
            }
            pmm_buf_add(&b, p->s + p->pos, sl);
            p->pos += sl;
        }
    }
    if (b.err != 0) {
        perr(p, b.err, "out of memory");
        goto fail;
    }
    if (b.p == NULL) {
        b.p = calloc(1, 1);
        if (b.p == NULL) {
            perr(p, -ENOMEM, "out of memory");
            return NULL;
        }
    }
    *out_len = b.len;
    return b.p;
fail:
    pmm_buf_wipe(&b);
    return NULL;
}

static int parse_number(parser *p, double *out)
{
    size_t start = p->pos, n;
    char tmp[64];
    char *end;

    if (p->pos < p->len && p->s[p->pos] == '-')
        p->pos++;
    if (p->pos >= p->len)
        goto bad;
    if (p->s[p->pos] == '0') {
        p->pos++;
    } else if (p->s[p->pos] >= '1' && p->s[p->pos] <= '9') {
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    } else {
        goto bad;
    }
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            goto bad;
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            goto bad;
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    n = p->pos - start;
    if (n >= sizeof(tmp)) {
        perr(p, -EINVAL, "number too long");
        return -1;
    }
    memcpy(tmp, p->s + start, n);
    tmp[n] = '\0';
    *out = strtod(tmp, &end);
    if (*end != '\0' || !isfinite(*out)) {
        perr(p, -EINVAL, "number out of range");
        return -1;
    }
    return 0;
bad:
    perr(p, -EINVAL, "bad number");
    return -1;
}

static bool match_lit(parser *p, const char *lit)
{
    size_t n = strlen(lit);

    if (p->len - p->pos < n || memcmp(p->s + p->pos, lit, n) != 0)
        return false;
    p->pos += n;
    return true;
}

static pmm_json *parse_value(parser *p, int depth)
{
    pmm_json *j;
    char c;

    skip_ws(p);
    if (p->pos >= p->len) {
        perr(p, -EINVAL, "unexpected end of input");
        return NULL;
    }
    if (depth > PMM_JSON_MAX_DEPTH) {
        perr(p, -E2BIG, "nested too deeply");
        return NULL;
    }
    if (++p->nodes > JSON_MAX_NODES) {
        perr(p, -E2BIG, "too many values");
        return NULL;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        perr(p, -ENOMEM, "out of memory");
        return NULL;
    }
    c = p->s[p->pos];
    if (c == '{' || c == '[') {
        bool obj = c == '{';
        char close = obj ? '}' : ']';
        pmm_json **tail = &j->child;

        j->type = obj ? PMM_JSON_OBJECT : PMM_JSON_ARRAY;
        p->pos++;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return j;
        }
        for (;;) {
            char *key = NULL;
            size_t klen;
            pmm_json *v;

            skip_ws(p);
            if (obj) {
                if (p->pos >= p->len || p->s[p->pos] != '"') {
                    perr(p, -EINVAL, "expected object key");
                    goto fail;
                }
                key = parse_string(p, &klen);
                if (key == NULL)
                    goto fail;
                if (strlen(key) != klen) {
                    free(key);
                    perr(p, -EINVAL, "NUL in object key");
                    goto fail;
                }
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ':') {
                    free(key);
                    perr(p, -EINVAL, "expected ':'");
                    goto fail;
                }
                p->pos++;
            }
            v = parse_value(p, depth + 1);
            if (v == NULL) {
                free(key);
                goto fail;
            }
            v->key = key;
            *tail = v;
            tail = &v->next;
            j->n_child++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->pos < p->len && p->s[p->pos] == close) {
                p->pos++;
                return j;
            }
            perr(p, -EINVAL, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            goto fail;
        }
    }
    if (c == '"') {
        j->type = PMM_JSON_STRING;
        j->str = parse_string(p, &j->str_len);
        if (j->str == NULL)
            goto fail;
        return j;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        j->type = PMM_JSON_NUMBER;
        if (parse_number(p, &j->num) != 0)
            goto fail;
        return j;
    }
    if (match_lit(p, "true")) {
        j->type = PMM_JSON_BOOL;
        j->b = true;
        return j;
    }
    if (match_lit(p, "false")) {
        j->type = PMM_JSON_BOOL;
        return j;
    }
    if (match_lit(p, "null")) {
        j->type = PMM_JSON_NULL;
        return j;
    }
    perr(p, -EINVAL, "unexpected character");
fail:
    pmm_json_free(j);
    return NULL;
}

int pmm_json_parse(const char *text, size_t len, pmm_json **out, char *err,
                   size_t errlen)
{
    parser p = {.s = text, .len = len, .err = err, .errlen = errlen};
    pmm_json *j;

    *out = NULL;
    if (len > PMM_JSON_MAX_INPUT) {
        perr(&p, -E2BIG, "document too large");
        return p.rc;
    }
    j = parse_value(&p, 0);
    if (j == NULL)
        return p.rc != 0 ? p.rc : -EINVAL;
    skip_ws(&p);
    if (p.pos != p.len) {
        perr(&p, -EINVAL, "trailing data");
        pmm_json_free(j);
        return p.rc;
    }
    *out = j;
    return 0;
}

const pmm_json *pmm_json_get(const pmm_json *obj, const char *key)
{
    if (obj == NULL || obj->type != PMM_JSON_OBJECT)
        return NULL;
    for (const pmm_json *c = obj->child; c != NULL; c = c->next)
        if (c->key != NULL && strcmp(c->key, key) == 0)
            return c;
    return NULL;
}
