/*
 * command.c - the control commands pmgcm sends to pmgclusterd: their
 * table and the validation of one request line (pure, no sockets; the
 * protocol is in membership.h, the socket that carries it in daemon/ctl.c).
 */
#include "membership/membership.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- request parsing (pure) -------------------------------------------- */

typedef enum arg_type {
    ARG_IP,     /* a bare IPv4/IPv6 literal */
    ARG_TARGET, /* the same, optionally with a port: IP:PORT, [IPv6]:PORT */
    ARG_FP,
    ARG_PASSWORD,
    ARG_CID,
    ARG_BOOL,
    ARG_WORD,   /* 1..32 bytes of [a-z0-9_-] */
} arg_type;

typedef struct arg_spec {
    const char *key;
    arg_type type;
    bool required;
} arg_spec;

#define CTL_ARGS_MAX 3

typedef struct cmd_spec {
    const char *name;
    bool legacy_word; /* also accepted as a bare word */
    arg_spec args[CTL_ARGS_MAX];
} cmd_spec;

static const cmd_spec cmd_specs[] = {
    {"status", true, {{NULL}}},
    {"ping", true, {{NULL}}},
    {"create", false, {{"password", ARG_PASSWORD, true}}},
    {"fingerprint", false, {{"ip", ARG_TARGET, true}}},
    {"join", false,
     {{"ip", ARG_TARGET, true},
      {"fingerprint", ARG_FP, true},
      {"password", ARG_PASSWORD, true}}},
    {"join-cmd", false, {{NULL}}},
    {"delete", false, {{"cid", ARG_CID, true}, {"purge", ARG_BOOL, false}}},
    {"promote", false,
     {{"force", ARG_BOOL, false}, {"accept_data_loss", ARG_BOOL, false}}},
    {"backups", false, {{"sub", ARG_WORD, false}, {"id", ARG_WORD, false}}},
    {"sync", false, {{"master_ip", ARG_IP, false}}},
    {"files-publish", false, {{"confirm", ARG_BOOL, false}}},
    {"drain", false, {{NULL}}},
    {"undrain", false, {{NULL}}},
};


/* s for an error message: itself when short and printable ASCII, else
 * NULL. */
static const char *quotable(const char *s, size_t n)
{
    if (n == 0 || n > 32 || strlen(s) != n)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e ||
            s[i] == '\'' || s[i] == '"' || s[i] == '\\')
            return NULL;
    return s;
}

static bool ip_literal_ok(const pmm_json *v)
{
    unsigned char a[16];

    if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
        v->str_len >= INET6_ADDRSTRLEN || strlen(v->str) != v->str_len)
        return false;
    return inet_pton(AF_INET, v->str, a) == 1 ||
           inet_pton(AF_INET6, v->str, a) == 1;
}

/* What the daemon's node API address may look like (gsp_addr_parse, port
 * 1..65535, the default port when none is given). */
static bool target_ok(const pmm_json *v)
{
    gsp_addr a;

    if (v->type != PMM_JSON_STRING || v->str_len == 0 || v->str_len > 64 ||
        strlen(v->str) != v->str_len)
        return false;
    return gsp_addr_parse(&a, v->str, 1) == 0;
}

static int check_arg(const cmd_spec *cs, const arg_spec *as,
                     const pmm_json *v, char *err, size_t errlen)
{
    switch (as->type) {
    case ARG_IP:
        if (!ip_literal_ok(v))
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be an IPv4 or IPv6 address",
                        cs->name, as->key);
        return 0;
    case ARG_TARGET:
        if (!target_ok(v))
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be an IPv4 or IPv6 address, "
                        "optionally with a port (IP:PORT, [IPv6]:PORT)",
                        cs->name, as->key);
        return 0;
    case ARG_FP:
        if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
            v->str_len > PMM_CTL_FP_MAX)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be a string of 1 to %d characters",
                        cs->name, as->key, PMM_CTL_FP_MAX);
        for (size_t i = 0; i < v->str_len; i++)
            if ((unsigned char)v->str[i] < 0x21 ||
                (unsigned char)v->str[i] > 0x7e)
                return pmm_errf(err, errlen, -EINVAL,
                            "%s: \"%s\" must be printable ASCII without "
                            "spaces", cs->name, as->key);
        return 0;
    case ARG_PASSWORD:
        if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
            v->str_len > PMM_CTL_PASSWORD_MAX)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be a string of 1 to %d bytes",
                        cs->name, as->key, PMM_CTL_PASSWORD_MAX);
        for (size_t i = 0; i < v->str_len; i++)
            if ((unsigned char)v->str[i] < 0x20 || v->str[i] == 0x7f)
                return pmm_errf(err, errlen, -EINVAL,
                            "%s: \"%s\" must not contain control characters",
                            cs->name, as->key);
        return 0;
    case ARG_CID:
        if (v->type != PMM_JSON_NUMBER || !(v->num >= 1 && v->num <= 65535) ||
            v->num != (double)(int64_t)v->num) /* in range: no libm */
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be an integer from 1 to 65535",
                        cs->name, as->key);
        return 0;
    case ARG_BOOL:
        if (v->type != PMM_JSON_BOOL)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be true or false", cs->name, as->key);
        return 0;
    case ARG_WORD:
        if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
            v->str_len > 32 || strlen(v->str) != v->str_len ||
            strspn(v->str, "abcdefghijklmnopqrstuvwxyz0123456789_-") !=
                v->str_len)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be 1 to 32 characters of a-z, "
                        "0-9, _ and -", cs->name, as->key);
        return 0;
    }
    return pmm_errf(err, errlen, -EINVAL, "internal error");
}

/* The request object's members against the command's spec. */
static int check_args(const cmd_spec *cs, const pmm_json *obj, char *err,
                      size_t errlen)
{
    bool seen[CTL_ARGS_MAX] = {false};
    bool seen_cmd = false;
    int rc;

    for (const pmm_json *m = obj->child; m != NULL; m = m->next) {
        const arg_spec *as = NULL;
        size_t k = 0;

        if (strcmp(m->key, "cmd") == 0) {
            if (seen_cmd)
                return pmm_errf(err, errlen, -EINVAL, "\"cmd\" given twice");
            seen_cmd = true;
            continue;
        }
        for (; k < CTL_ARGS_MAX && cs->args[k].key != NULL; k++)
            if (strcmp(cs->args[k].key, m->key) == 0) {
                as = &cs->args[k];
                break;
            }
        if (as == NULL) {
            const char *q = quotable(m->key, strlen(m->key));
            if (q != NULL)
                return pmm_errf(err, errlen, -EINVAL,
                            "%s: unknown argument \"%s\"", cs->name, q);
            return pmm_errf(err, errlen, -EINVAL, "%s: unknown argument",
                        cs->name);
        }
        if (seen[k])
            return pmm_errf(err, errlen, -EINVAL, "%s: \"%s\" given twice",
                        cs->name, as->key);
        seen[k] = true;
        rc = check_arg(cs, as, m, err, errlen);
        if (rc != 0)
            return rc;
    }
    for (size_t k = 0; k < CTL_ARGS_MAX && cs->args[k].key != NULL; k++)
        if (cs->args[k].required && !seen[k])
            return pmm_errf(err, errlen, -EINVAL, "%s: missing \"%s\"", cs->name,
                        cs->args[k].key);
    return 0;
}

static int parse_json_request(const char *s, size_t n, const char **cmd,
                              pmm_json **args, char *err, size_t errlen)
{
    char jerr[128];
    pmm_json *j = NULL;
    const pmm_json *c;
    const cmd_spec *cs = NULL;
    int rc;

    rc = pmm_json_parse(s, n, &j, jerr, sizeof(jerr));
    if (rc == -ENOMEM)
        return pmm_errf(err, errlen, rc, "out of memory");
    if (rc != 0)
        return pmm_errf(err, errlen, -EINVAL, "bad request: %s", jerr);
    if (j->type != PMM_JSON_OBJECT) {
        pmm_json_free(j);
        return pmm_errf(err, errlen, -EINVAL,
                    "request must be a JSON object with a \"cmd\"");
    }
    c = pmm_json_get(j, "cmd");
    if (c == NULL) {
        rc = pmm_errf(err, errlen, -EINVAL, "missing \"cmd\"");
        goto fail;
    }
    if (c->type != PMM_JSON_STRING) {
        rc = pmm_errf(err, errlen, -EINVAL, "\"cmd\" must be a string");
        goto fail;
    }
    for (size_t i = 0; i < sizeof(cmd_specs) / sizeof(cmd_specs[0]); i++)
        if (strlen(cmd_specs[i].name) == c->str_len &&
            memcmp(cmd_specs[i].name, c->str, c->str_len) == 0) {
            cs = &cmd_specs[i];
            break;
        }
    if (cs == NULL) {
        const char *q = quotable(c->str, c->str_len);
        if (q != NULL)
            rc = pmm_errf(err, errlen, -ENOENT, "unknown command \"%s\"", q);
        else
            rc = pmm_errf(err, errlen, -ENOENT, "unknown command");
        goto fail;
    }
    rc = check_args(cs, j, err, errlen);
    if (rc != 0)
        goto fail;
    *cmd = cs->name;
    *args = j;
    return 0;
fail:
    pmm_json_free(j);
    return rc;
}

int pmm_ctl_parse_request(const char *buf, size_t len, const char **cmd,
                          pmm_json **args, char *err, size_t errlen)
{
    size_t s = 0, e;

    *args = NULL;
    if (len > PMM_CTL_REQ_MAX)
        return pmm_errf(err, errlen, -E2BIG, "request too long");
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 || c == 0x7f)
            return pmm_errf(err, errlen, -EINVAL,
                        "request contains a control byte");
    }
    while (s < len && buf[s] == ' ')
        s++;
    e = len;
    while (e > s && buf[e - 1] == ' ')
        e--;
    if (e == s)
        return pmm_errf(err, errlen, -EINVAL, "empty request");
    if (buf[s] == '{' || buf[s] == '[')
        return parse_json_request(buf + s, e - s, cmd, args, err, errlen);
    for (size_t i = s; i < e; i++)
        if ((unsigned char)buf[i] >= 0x80)
            return pmm_errf(err, errlen, -EINVAL,
                        "request contains a non-ASCII byte outside JSON");
    for (size_t i = 0; i < sizeof(cmd_specs) / sizeof(cmd_specs[0]); i++) {
        if (cmd_specs[i].legacy_word && strlen(cmd_specs[i].name) == e - s &&
            memcmp(cmd_specs[i].name, buf + s, e - s) == 0) {
            pmm_json *o = calloc(1, sizeof(*o));
            if (o == NULL)
                return pmm_errf(err, errlen, -ENOMEM, "out of memory");
            o->type = PMM_JSON_OBJECT;
            *cmd = cmd_specs[i].name;
            *args = o;
            return 0;
        }
    }
    return pmm_errf(err, errlen, -ENOENT, "unknown command");
}
