/*
 * json.c - bounded growable buffer, JSON string writer and the bounded
 * JSON reader (RFC 8259, parsed by jansson) for the control protocol.
 */
#include "common/common.h"

#include <errno.h>
#include <jansson.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
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

static void jz_ready(void);

json_t *pmm_jstr(const char *s, size_t n)
{
    /* the copy jansson keeps is zeroed when freed (a password, a key) */
    jz_ready();
    if (pmm_utf8_valid(s, n)) return json_stringn(s, n);
    /* each invalid byte becomes U+FFFD (3 bytes) */
    char *clean = malloc(3 * n + 1);
    if (clean == NULL) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t sl = utf8_seq((const unsigned char *)s + i, n - i);
        if (sl == 0) {
            memcpy(clean + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(clean + o, s + i, sl);
            o += sl;
            i += sl;
        }
    }
    json_t *v = json_stringn(clean, o);
    explicit_bzero(clean, o);
    free(clean);
    return v;
}

json_t *pmm_jstrz(const char *s)
{
    return pmm_jstr(s, strlen(s));
}

json_t *pmm_jadd(json_t *o, const char *key, json_t *v)
{
    if (o == NULL || v == NULL) {
        json_decref(o);
        json_decref(v);
        return NULL;
    }
    if (json_object_set_new(o, key, v) != 0) { /* v released */
        json_decref(o);
        return NULL;
    }
    return o;
}

static int put_cb(const char *buf, size_t size, void *data)
{
    return pmm_buf_add(data, buf, size) == 0 ? 0 : -1;
}

int pmm_json_put(pmm_buf *b, json_t *v)
{
    if (v == NULL) return -ENOMEM;
    /* reals with 15 significant digits: 0.29 stays "0.29" */
    int rc = json_dump_callback(v, put_cb, b,
                                JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(v);
    if (rc != 0) return b->err ? b->err : -ENOMEM;
    return b->err;
}

int pmm_json_indent(pmm_buf *b, const char *s, size_t n)
{
    json_error_t je;
    json_t *v;

    jz_ready(); /* the text may hold a key: freed memory is wiped */
    v = json_loadb(s, n, JSON_DECODE_ANY, &je);
    if (v == NULL) return -EINVAL;
    int rc = json_dump_callback(v, put_cb, b,
                                JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    json_decref(v);
    if (rc != 0) return b->err ? b->err : -ENOMEM;
    return pmm_buf_puts(b, "\n");
}

int pmm_json_put_safe(pmm_buf *b, json_t *v)
{
    if (v == NULL) return -ENOMEM;
    char *text = json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(v);
    if (text == NULL) return -ENOMEM;
    const char *s = text;
    while (*s) {
        size_t run = strcspn(s, "<>&'");
        pmm_buf_add(b, s, run);
        s += run;
        if (*s) {
            pmm_buf_printf(b, "\\u%04x", (unsigned)(unsigned char)*s);
            s++;
        }
    }
    json_free_t jfree;
    json_get_alloc_funcs(NULL, &jfree);
    jfree(text);
    return b->err;
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
/*
 * Parsing is jansson's (Debian's libjansson, maintained and fuzzed): its
 * tree is turned into our bounded pmm_json tree, which the callers walk.
 * What jansson does not bound is bounded here: the input size, the number
 * of values (counted on the text before jansson sees it) and the depth.
 */

/* bound on values in one document (memory: ~80 bytes each here, ~100 in
 * jansson's tree) */
#define JSON_MAX_NODES 262144

/* jansson's memory is zeroed before it is freed: a parsed string (and the
 * lexer's buffer) may have held a password. Set once, for the process. */
static void *jz_malloc(size_t n) { return malloc(n); }
static void jz_free(void *p)
{
    if (p != NULL) explicit_bzero(p, malloc_usable_size(p));
    free(p);
}
static pthread_once_t jz_once = PTHREAD_ONCE_INIT;
static void jz_init(void) { json_set_alloc_funcs(jz_malloc, jz_free); }
/* Before the first value is built or parsed. A value allocated earlier
 * by jansson's default malloc is still freed correctly (jz_malloc is
 * malloc). */
static void jz_ready(void) { pthread_once(&jz_once, jz_init); }

/* A cheap pass over text before jansson sees it: an upper bound on the
 * values (every value but the first follows a ',' or opens an
 * array/object, outside strings) and the deepest nesting. -E2BIG with the
 * message, or 0. */
static int prescan(const char *s, size_t n, char *err, size_t errlen);

static void set_err(char *err, size_t errlen, const char *msg, size_t pos)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s at byte %zu", msg, pos);
}

static int prescan(const char *s, size_t n, char *err, size_t errlen)
{
    size_t values = 1;
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > PMM_JSON_MAX_DEPTH) {
                set_err(err, errlen, "nested too deeply", i);
                return -E2BIG;
            }
            values++;
        } else if (c == ']' || c == '}') {
            depth--;
        } else if (c == ',') {
            values++;
        }
        if (values > JSON_MAX_NODES) {
            set_err(err, errlen, "too many values", i);
            return -E2BIG;
        }
    }
    return 0;
}

/* The key a duplicate-key error stopped at: the last string that ends
 * before pos (jansson stops right after it). Copied printable into buf. */
static void dup_key(const char *s, size_t pos, char *buf, size_t cap)
{
    buf[0] = '\0';
    size_t end = pos;
    while (end > 0 && s[end - 1] != '"') end--;
    if (end == 0) return;
    size_t b = end - 1; /* closing quote */
    while (b > 0 && !(s[b - 1] == '"' && (b < 2 || s[b - 2] != '\\'))) b--;
    if (b == 0 || b >= end - 1) return;
    size_t n = end - 1 - b;
    char raw[64];
    if (n >= sizeof(raw)) return;
    memcpy(raw, s + b, n);
    raw[n] = '\0';
    pmm_printable(buf, cap, raw);
}

/* The message for a jansson error, in the words the callers and tests
 * know; rc gets the errno. */
static const char *jerr_text(const json_error_t *e, int *rc)
{
    *rc = -EINVAL;
    switch (json_error_code(e)) {
    case json_error_out_of_memory:
        *rc = -ENOMEM;
        return "out of memory";
    case json_error_stack_overflow:
        *rc = -E2BIG;
        return "nested too deeply";
    case json_error_premature_end_of_input:
        return "unexpected end of input";
    case json_error_end_of_input_expected:
        return "trailing data";
    case json_error_null_byte_in_key:
        return "NUL in object key";
    case json_error_invalid_utf8:
        return "invalid UTF-8";
    case json_error_numeric_overflow:
        return "number out of range";
    case json_error_duplicate_key:
        return "duplicate object key";
    default:
        return e->text[0] ? e->text : "invalid JSON";
    }
}

/* Our tree for jansson's value v at depth; NULL with *rc and err set. */
static pmm_json *from_jansson(json_t *v, int depth, int *rc, char *err,
                              size_t errlen)
{
    if (depth > PMM_JSON_MAX_DEPTH) {
        *rc = -E2BIG;
        set_err(err, errlen, "nested too deeply", 0);
        return NULL;
    }
    pmm_json *j = calloc(1, sizeof(*j));
    if (j == NULL) goto oom;
    switch (json_typeof(v)) {
    case JSON_NULL:
        j->type = PMM_JSON_NULL;
        return j;
    case JSON_TRUE:
    case JSON_FALSE:
        j->type = PMM_JSON_BOOL;
        j->b = json_is_true(v);
        return j;
    case JSON_INTEGER:
    case JSON_REAL:
        j->type = PMM_JSON_NUMBER;
        j->num = json_number_value(v);
        if (!isfinite(j->num)) {
            *rc = -EINVAL;
            set_err(err, errlen, "number out of range", 0);
            pmm_json_free(j);
            return NULL;
        }
        return j;
    case JSON_STRING:
        j->type = PMM_JSON_STRING;
        j->str_len = json_string_length(v);
        j->str = malloc(j->str_len + 1);
        if (j->str == NULL) goto oom;
        memcpy(j->str, json_string_value(v), j->str_len);
        j->str[j->str_len] = '\0';
        return j;
    case JSON_ARRAY:
    case JSON_OBJECT:
        break;
    }
    pmm_json **tail = &j->child;
    if (json_is_array(v)) {
        j->type = PMM_JSON_ARRAY;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            pmm_json *c = from_jansson(e, depth + 1, rc, err, errlen);
            if (c == NULL) goto fail;
            *tail = c;
            tail = &c->next;
            j->n_child++;
        }
        return j;
    }
    j->type = PMM_JSON_OBJECT;
    const char *k;
    json_t *e;
    json_object_foreach(v, k, e) {
        pmm_json *c = from_jansson(e, depth + 1, rc, err, errlen);
        if (c == NULL) goto fail;
        *tail = c;
        tail = &c->next;
        j->n_child++;
        c->key = strdup(k);
        if (c->key == NULL) goto oom;
    }
    return j;
oom:
    *rc = -ENOMEM;
    set_err(err, errlen, "out of memory", 0);
fail:
    pmm_json_free(j);
    return NULL;
}

int pmm_json_parse(const char *text, size_t len, pmm_json **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (len > PMM_JSON_MAX_INPUT) {
        set_err(err, errlen, "document too large", 0);
        return -E2BIG;
    }
    int rc = prescan(text, len, err, errlen);
    if (rc != 0) return rc;
    pthread_once(&jz_once, jz_init);
    json_error_t je;
    /* numbers as doubles (as before: no overflow error for a long
     * integer); \u0000 allowed in values (kept, str_len counts it), refused
     * in keys; a duplicate key refused (which one would count?) */
    json_t *v = json_loadb(text, len,
                           JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL |
                               JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES,
                           &je);
    if (v == NULL) {
        /* jansson's position is just past the byte that failed */
        size_t pos = je.position > 0 ? (size_t)je.position - 1 : 0;
        const char *msg = jerr_text(&je, &rc);
        if (json_error_code(&je) == json_error_duplicate_key) {
            char key[64], m[96];
            dup_key(text, pos + 1 <= len ? pos + 1 : len, key, sizeof(key));
            snprintf(m, sizeof(m), "\"%s\" given twice", key);
            set_err(err, errlen, m, pos);
        } else {
            set_err(err, errlen, msg, pos);
        }
        return rc;
    }
    pmm_json *j = from_jansson(v, 0, &rc, err, errlen);
    json_decref(v);
    if (j == NULL) return rc ? rc : -EINVAL;
    *out = j;
    return 0;
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

const pmm_json *pmm_json_get(const pmm_json *obj, const char *key)
{
    if (obj == NULL || obj->type != PMM_JSON_OBJECT)
        return NULL;
    for (const pmm_json *c = obj->child; c != NULL; c = c->next)
        if (c->key != NULL && strcmp(c->key, key) == 0)
            return c;
    return NULL;
}
