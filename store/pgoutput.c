/*
 * pgoutput.c - sans-IO decoder for the walsender's CopyData framing and the
 * pgoutput plugin's messages (store/pgoutput.h).
 */
#include "store/pgoutput.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a bounds-checked reader ----------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    size_t n;
    bool bad;
} rd;

static bool need(rd *r, size_t k)
{
    if (r->bad || r->n < k) {
        r->bad = true;
        return false;
    }
    return true;
}

static uint8_t u8(rd *r)
{
    if (!need(r, 1)) return 0;
    uint8_t v = r->p[0];
    r->p++, r->n--;
    return v;
}

static uint16_t u16(rd *r)
{
    if (!need(r, 2)) return 0;
    uint16_t v = (uint16_t)((uint16_t)r->p[0] << 8 | r->p[1]);
    r->p += 2, r->n -= 2;
    return v;
}

static uint32_t u32(rd *r)
{
    if (!need(r, 4)) return 0;
    uint32_t v = (uint32_t)r->p[0] << 24 | (uint32_t)r->p[1] << 16 |
                 (uint32_t)r->p[2] << 8 | r->p[3];
    r->p += 4, r->n -= 4;
    return v;
}

static uint64_t u64(rd *r)
{
    uint64_t hi = u32(r);
    return hi << 32 | u32(r);
}

/* A NUL-terminated string inside the message: returns it (borrowed) and
 * its length; NULL when there is no NUL or it is longer than max. */
static const char *cstr(rd *r, size_t max, size_t *len)
{
    if (r->bad) return NULL;
    const uint8_t *z = memchr(r->p, 0, r->n);
    if (!z || (size_t)(z - r->p) > max) {
        r->bad = true;
        return NULL;
    }
    const char *s = (const char *)r->p;
    *len = (size_t)(z - r->p);
    r->n -= *len + 1;
    r->p = z + 1;
    return s;
}

static void put64(uint8_t *o, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        o[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* ---- CopyData framing ------------------------------------------------------ */

int pst_pgo_copy_parse(const uint8_t *buf, size_t len, pst_pgo_copy *out)
{
    rd r = {buf, len, false};
    memset(out, 0, sizeof(*out));
    out->kind = (char)u8(&r);
    switch (out->kind) {
    case 'w':
        out->wal_start = u64(&r);
        out->wal_end = u64(&r);
        out->send_time = (int64_t)u64(&r);
        if (r.bad) return -EPROTO;
        out->data = r.p;
        out->len = r.n;
        return 0;
    case 'k':
        out->wal_end = u64(&r);
        out->send_time = (int64_t)u64(&r);
        out->reply = u8(&r) != 0;
        if (r.bad || r.n != 0) return -EPROTO;
        return 0;
    default:
        return -EPROTO;
    }
}

void pst_pgo_feedback(uint8_t out[PST_PGO_FEEDBACK_LEN], uint64_t write_lsn,
                      uint64_t flush_lsn, uint64_t apply_lsn,
                      int64_t now_pg_us, bool reply)
{
    out[0] = 'r';
    put64(out + 1, write_lsn);
    put64(out + 9, flush_lsn);
    put64(out + 17, apply_lsn);
    put64(out + 25, (uint64_t)now_pg_us);
    out[33] = reply ? 1 : 0;
}

char *pst_pgo_lsn_str(uint64_t lsn, char *buf, size_t len)
{
    snprintf(buf, len, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32),
             (uint32_t)lsn);
    return buf;
}

int pst_pgo_lsn_parse(const char *s, uint64_t *out)
{
    uint64_t part[2] = {0, 0};
    int k = 0;
    size_t digits = 0;
    for (; *s; s++) {
        int v;
        if (*s == '/') {
            if (k == 1 || digits == 0) return -EINVAL;
            k = 1;
            digits = 0;
            continue;
        }
        if (*s >= '0' && *s <= '9') v = *s - '0';
        else if (*s >= 'a' && *s <= 'f') v = *s - 'a' + 10;
        else if (*s >= 'A' && *s <= 'F') v = *s - 'A' + 10;
        else return -EINVAL;
        if (++digits > 8) return -EINVAL;
        part[k] = part[k] << 4 | (uint64_t)v;
    }
    if (k != 1 || digits == 0) return -EINVAL;
    *out = part[0] << 32 | part[1];
    return 0;
}

/* ---- relation cache ---------------------------------------------------------- */

struct pst_pgo {
    pst_pgo_rel **rels; /* sorted by oid */
    size_t n, cap;
    const pst_pgo_rel **trunc; /* scratch for TRUNCATE */
    size_t trunc_cap;
    char name[PST_PGO_MAX_NAME * 4 + 1]; /* ORIGIN name / MESSAGE prefix */
};

pst_pgo *pst_pgo_new(void)
{
    pst_pgo *d = calloc(1, sizeof(*d));
    if (!d) errno = ENOMEM;
    return d;
}

static void rel_free(pst_pgo_rel *r)
{
    if (!r) return;
    for (uint32_t i = 0; i < r->natts; i++) free(r->atts[i].name);
    free(r->atts);
    free(r->nspname);
    free(r->relname);
    free(r);
}

void pst_pgo_free(pst_pgo *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) rel_free(d->rels[i]);
    free(d->rels);
    free(d->trunc);
    free(d);
}

/* Index of oid, or where it would go (*found false). */
static size_t rel_find(const pst_pgo *d, uint32_t oid, bool *found)
{
    size_t lo = 0, hi = d->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->rels[mid]->oid < oid) lo = mid + 1;
        else hi = mid;
    }
    *found = lo < d->n && d->rels[lo]->oid == oid;
    return lo;
}

const pst_pgo_rel *pst_pgo_relation(const pst_pgo *d, uint32_t oid)
{
    bool f;
    size_t i = rel_find(d, oid, &f);
    return f ? d->rels[i] : NULL;
}

static char *dupn(const char *s, size_t n)
{
    char *o = malloc(n + 1);
    if (o) {
        memcpy(o, s, n);
        o[n] = 0;
    }
    return o;
}

static int decode_relation(pst_pgo *d, rd *r, pst_pgo_msg *m)
{
    size_t ln;
    pst_pgo_rel *rel = calloc(1, sizeof(*rel));
    if (!rel) return -ENOMEM;
    int rc = -EPROTO;
    rel->oid = u32(r);
    const char *ns = cstr(r, PST_PGO_MAX_NAME * 4, &ln);
    if (ns && !(rel->nspname = dupn(ns, ln))) goto nomem;
    const char *nm = cstr(r, PST_PGO_MAX_NAME * 4, &ln);
    if (nm && !(rel->relname = dupn(nm, ln))) goto nomem;
    rel->replident = (char)u8(r);
    uint16_t natts = u16(r);
    if (r->bad || rel->oid == 0) goto fail;
    if (natts > PST_PGO_MAX_ATTS) {
        rc = -E2BIG;
        goto fail;
    }
    /* each attribute takes at least 10 bytes: check before allocating */
    if ((size_t)natts * 10 > r->n) goto fail;
    if (natts) {
        rel->atts = calloc(natts, sizeof(*rel->atts));
        if (!rel->atts) goto nomem;
    }
    for (uint16_t i = 0; i < natts; i++) {
        pst_pgo_att *a = &rel->atts[i];
        uint8_t flags = u8(r);
        const char *an = cstr(r, PST_PGO_MAX_NAME * 4, &ln);
        if (!an) goto fail;
        if (!(a->name = dupn(an, ln))) goto nomem;
        rel->natts = (uint32_t)i + 1;
        a->key = (flags & 1) != 0;
        a->typoid = u32(r);
        a->typmod = (int32_t)u32(r);
    }
    if (r->bad || r->n != 0) goto fail;
    bool found;
    size_t at = rel_find(d, rel->oid, &found);
    if (found) {
        rel_free(d->rels[at]);
        d->rels[at] = rel;
    } else {
        if (d->n >= PST_PGO_MAX_RELS) {
            rc = -E2BIG;
            goto fail;
        }
        if (d->n == d->cap) {
            size_t nc = d->cap ? d->cap * 2 : 16;
            pst_pgo_rel **nr = realloc(d->rels, nc * sizeof(*nr));
            if (!nr) goto nomem;
            d->rels = nr;
            d->cap = nc;
        }
        memmove(d->rels + at + 1, d->rels + at, (d->n - at) * sizeof(*d->rels));
        d->rels[at] = rel;
        d->n++;
    }
    m->rel = rel;
    return 0;
nomem:
    rc = -ENOMEM;
fail:
    rel_free(rel);
    return rc;
}

/* ---- JSON rendering ------------------------------------------------------------ */

typedef struct jb {
    char *s;
    size_t len, cap;
    bool oom;
} jb;

static bool jb_grow(char **buf, size_t *cap, size_t need_len)
{
    if (need_len <= *cap) return true;
    size_t nc = *cap ? *cap : 64;
    while (nc < need_len) {
        if (nc > SIZE_MAX / 2) return false;
        nc *= 2;
    }
    char *n = realloc(*buf, nc);
    if (!n) return false;
    *buf = n;
    *cap = nc;
    return true;
}

static void jb_put(jb *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (!jb_grow(&b->s, &b->cap, b->len + n + 1)) {
        b->oom = true;
        return;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

int pst_pgo_json_string(char **buf, size_t *len, size_t *cap, const char *s,
                        size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* worst case: every byte becomes \u00XX (6 bytes) plus quotes */
    if (n > (SIZE_MAX - 3 - *len) / 6) return -ENOMEM;
    if (!jb_grow(buf, cap, *len + n * 6 + 3)) return -ENOMEM;
    char *o = *buf + *len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        case '\b': *o++ = '\\'; *o++ = 'b'; break;
        case '\f': *o++ = '\\'; *o++ = 'f'; break;
        default:
            if (c < 0x20) {
                *o++ = '\\', *o++ = 'u', *o++ = '0', *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            } else {
                *o++ = (char)c;
            }
        }
    }
    *o++ = '"';
    *o = 0;
    *len = (size_t)(o - *buf);
    return 0;
}

static void jb_str(jb *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (pst_pgo_json_string(&b->s, &b->len, &b->cap, s, n) != 0) b->oom = true;
}

/* JSON number grammar (RFC 8259): -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-') i++;
    if (i >= n) return false;
    if (s[i] == '0') i++;
    else if (s[i] >= '1' && s[i] <= '9')
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
    else return false;
    if (i < n && s[i] == '.') {
        size_t d = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == d) return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') i++;
        if (i == d) return false;
    }
    return i == n;
}

/* type oids whose text form to_jsonb renders bare */
enum { OID_BOOL = 16, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23,
       OID_OID = 26, OID_JSON = 114, OID_FLOAT4 = 700, OID_FLOAT8 = 701,
       OID_NUMERIC = 1700, OID_JSONB = 3802 };

static void jb_value(jb *b, uint32_t typoid, const char *v, size_t n)
{
    switch (typoid) {
    case OID_BOOL:
        if (n == 1 && v[0] == 't') { jb_put(b, "true", 4); return; }
        if (n == 1 && v[0] == 'f') { jb_put(b, "false", 5); return; }
        break;
    case OID_INT2: case OID_INT4: case OID_INT8: case OID_FLOAT4:
    case OID_FLOAT8: case OID_NUMERIC:
        if (json_number(v, n)) { jb_put(b, v, n); return; }
        break; /* NaN, Infinity: a string, as to_jsonb does */
    case OID_JSON: case OID_JSONB:
        /* the server's own JSON text; an empty one would break the object */
        if (n > 0) { jb_put(b, v, n); return; }
        break;
    default:
        break;
    }
    jb_str(b, v, n);
}

/* TupleData into a JSON object. key_only: render only replica-identity
 * columns (what a 'K' tuple holds values for). */
static int decode_tuple(rd *r, const pst_pgo_rel *rel, char **json,
                        uint32_t *unchanged, bool key_only)
{
    uint16_t ncols = u16(r);
    if (r->bad) return -EPROTO;
    if (ncols != rel->natts) return -EPROTO;
    jb b = {0};
    bool first = true;
    jb_put(&b, "{", 1);
    for (uint16_t i = 0; i < ncols; i++) {
        const pst_pgo_att *a = &rel->atts[i];
        uint8_t k = u8(r);
        if (r->bad) break;
        if (k == 'u') {
            if (unchanged) (*unchanged)++;
            continue;
        }
        const char *val = NULL;
        uint32_t vlen = 0;
        if (k == 't' || k == 'b') {
            vlen = u32(r);
            if (!need(r, vlen)) break;
            val = (const char *)r->p;
            r->p += vlen, r->n -= vlen;
            if (k == 'b') { /* we never ask for binary */
                r->bad = true;
                break;
            }
        } else if (k != 'n') {
            r->bad = true;
            break;
        }
        /* a 'K' tuple sends null for every non-key column */
        if (key_only && !a->key) continue;
        if (!first) jb_put(&b, ",", 1);
        first = false;
        jb_str(&b, a->name, strlen(a->name));
        jb_put(&b, ":", 1);
        if (k == 'n') jb_put(&b, "null", 4);
        else jb_value(&b, a->typoid, val, vlen);
    }
    jb_put(&b, "}", 1);
    if (r->bad || b.oom) {
        free(b.s);
        return b.oom && !r->bad ? -ENOMEM : -EPROTO;
    }
    *json = b.s;
    return 0;
}

static const pst_pgo_rel *row_rel(pst_pgo *d, rd *r)
{
    uint32_t oid = u32(r);
    if (r->bad) return NULL;
    return pst_pgo_relation(d, oid);
}

/* ---- messages ----------------------------------------------------------------- */

void pst_pgo_msg_clear(pst_pgo_msg *m)
{
    free(m->old_json);
    free(m->new_json);
    memset(m, 0, sizeof(*m));
}

int pst_pgo_decode(pst_pgo *d, const uint8_t *buf, size_t len,
                   pst_pgo_msg *out)
{
    rd r = {buf, len, false};
    size_t ln;
    int rc;
    memset(out, 0, sizeof(*out));
    out->kind = (pst_pgo_kind)u8(&r);
    switch (out->kind) {
    case PST_PGO_BEGIN:
        out->lsn = u64(&r);
        out->ts = (int64_t)u64(&r);
        out->xid = u32(&r);
        break;
    case PST_PGO_COMMIT:
        (void)u8(&r); /* flags, unused */
        out->lsn = u64(&r);
        out->end_lsn = u64(&r);
        out->ts = (int64_t)u64(&r);
        break;
    case PST_PGO_ORIGIN: {
        out->lsn = u64(&r);
        const char *s = cstr(&r, sizeof(d->name) - 1, &ln);
        if (s) {
            memcpy(d->name, s, ln);
            d->name[ln] = 0;
            out->name = d->name;
        }
        break;
    }
    case PST_PGO_MESSAGE: {
        out->transactional = (u8(&r) & 1) != 0;
        out->lsn = u64(&r);
        const char *s = cstr(&r, sizeof(d->name) - 1, &ln);
        if (s) {
            memcpy(d->name, s, ln);
            d->name[ln] = 0;
            out->name = d->name;
        }
        uint32_t cl = u32(&r);
        if (!need(&r, cl)) break;
        out->content = r.p;
        out->content_len = cl;
        r.p += cl, r.n -= cl;
        break;
    }
    case PST_PGO_RELATION:
        rc = decode_relation(d, &r, out);
        if (rc) {
            memset(out, 0, sizeof(*out));
            return rc;
        }
        return 0;
    case PST_PGO_TYPE:
        (void)u32(&r);
        (void)cstr(&r, PST_PGO_MAX_NAME * 4, &ln);
        (void)cstr(&r, PST_PGO_MAX_NAME * 4, &ln);
        break;
    case PST_PGO_INSERT:
        if (!(out->rel = row_rel(d, &r)) || u8(&r) != 'N') return -EPROTO;
        if ((rc = decode_tuple(&r, out->rel, &out->new_json, NULL, false)))
            return rc;
        break;
    case PST_PGO_UPDATE: {
        if (!(out->rel = row_rel(d, &r))) return -EPROTO;
        uint8_t k = u8(&r);
        if (k == 'K' || k == 'O') {
            out->old_kind = (char)k;
            if ((rc = decode_tuple(&r, out->rel, &out->old_json, NULL,
                                   k == 'K')))
                return rc;
            k = u8(&r);
        }
        if (k != 'N') {
            pst_pgo_msg_clear(out);
            return -EPROTO;
        }
        if ((rc = decode_tuple(&r, out->rel, &out->new_json, &out->unchanged,
                               false))) {
            pst_pgo_msg_clear(out);
            return rc;
        }
        break;
    }
    case PST_PGO_DELETE: {
        if (!(out->rel = row_rel(d, &r))) return -EPROTO;
        uint8_t k = u8(&r);
        if (k != 'K' && k != 'O') return -EPROTO;
        out->old_kind = (char)k;
        if ((rc = decode_tuple(&r, out->rel, &out->old_json, NULL, k == 'K')))
            return rc;
        break;
    }
    case PST_PGO_TRUNCATE: {
        uint32_t n = u32(&r);
        out->trunc_flags = u8(&r);
        if (r.bad) return -EPROTO;
        if (n == 0) return -EPROTO;
        if (n > PST_PGO_MAX_TRUNC) return -E2BIG;
        if ((size_t)n * 4 != r.n) return -EPROTO;
        if (d->trunc_cap < n) {
            const pst_pgo_rel **t = realloc(d->trunc, n * sizeof(*t));
            if (!t) return -ENOMEM;
            d->trunc = t;
            d->trunc_cap = n;
        }
        for (uint32_t i = 0; i < n; i++) {
            d->trunc[i] = row_rel(d, &r);
            if (!d->trunc[i]) return -EPROTO;
        }
        out->n_rels = n;
        out->rels = d->trunc;
        break;
    }
    default:
        return -EPROTO;
    }
    if (r.bad || r.n != 0) {
        pst_pgo_msg_clear(out);
        return -EPROTO;
    }
    return 0;
}
