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

/* ---- the table ------------------------------------------------------------
 * Read the header (membership.h, "the control-command table") before
 * adding a row: it says what else a new command needs. */

#define O(x) PMM_OPT(PMM_OPT_##x)

const pmm_cli_opt pmm_cli_opts[PMM_OPT_COUNT] = {
    [PMM_OPT_SOCKET] = {"socket", "PATH", 0,
                        "pmgclusterd's socket (default: "
                        "$PMGCM_SOCKET, else " PMM_DEFAULT_SOCKET ")"},
    [PMM_OPT_HOST] = {"host", "HOST[:PORT]", 0,
                      "status only: ask that node's status port over HTTP"},
    [PMM_OPT_TOKEN_FILE] = {"token-file", "FILE", 0,
                            "with --host: the status port's bearer token"},
    [PMM_OPT_OUTPUT_FORMAT] = {"output-format", "text|json|json-pretty", 0,
                               "how answers are printed (default text)"},
    [PMM_OPT_HELP] = {"help", NULL, 'h', "show the help and exit"},
    [PMM_OPT_VERSION] = {"version", NULL, 0, "print the version and exit"},
    [PMM_OPT_PASSWORD_FILE] = {"password-file", "FILE", 0,
                               "the join password on FILE's first line "
                               "(not world-readable)"},
    [PMM_OPT_FINGERPRINT] = {"fingerprint", "FP", 0,
                             "the master's certificate fingerprint "
                             "(join-cmd prints it)"},
    [PMM_OPT_YES] = {"yes", NULL, 0,
                     "accept the fingerprint shown without asking"},
    [PMM_OPT_NO_WAIT] = {"no-wait", NULL, 0,
                         "return once a member; do not wait for the data"},
    [PMM_OPT_PURGE] = {"purge", NULL, 0,
                       "also remove its per-origin rows on every node"},
    [PMM_OPT_FORCE] = {"force", NULL, 0,
                       "even while the current master is alive"},
    [PMM_OPT_ACCEPT_DATA_LOSS] = {"accept-data-loss", NULL, 0,
                                  "even with this node's data incomplete"},
    [PMM_OPT_MASTER_IP] = {"master-ip", "IP", 0,
                           "the new master's address"},
    [PMM_OPT_MASTER_IP_PMG] = {"master_ip", "IP", 0,
                               "the same (PMG's spelling)"},
    [PMM_OPT_CONFIRM] = {"confirm", NULL, 0,
                         "really do it (without: only say what it would do)"},
    [PMM_OPT_DB] = {"db", "CONNINFO", 0,
                    "detach: this database (libpq conninfo)"},
    [PMM_OPT_CONFIG] = {"config", "FILE", 0,
                        "detach: the database of this daemon config"},
};

const pmm_ctl_cmd pmm_ctl_cmds[PMM_CMD_COUNT] = {
    [PMM_CMD_STATUS] = {PMM_CMD_STATUS, "status", "status", true, PMM_CTL_ANY,
                        {{NULL}}, 0, 0, 0, "",
                        "show every cluster node as this node sees it"},
    [PMM_CMD_PING] = {PMM_CMD_PING, NULL, "ping", true, PMM_CTL_WIRE,
                      {{NULL}}, 0, 0, 0, "", "is the daemon there"},
    [PMM_CMD_CREATE] = {PMM_CMD_CREATE, "create", "create", false,
                        PMM_CTL_OUTSIDE,
                        {{"password", PMM_ARG_PASSWORD, true}}, 0, 0,
                        O(PASSWORD_FILE), "[--password-file FILE]",
                        "create a cluster; this node becomes master (cid 1)"},
    [PMM_CMD_FINGERPRINT] = {PMM_CMD_FINGERPRINT, NULL, "fingerprint", false,
                             PMM_CTL_WIRE,
                             {{"ip", PMM_ARG_TARGET, true}}, 0, 0, 0, "",
                             "fetch a master's certificate fingerprint"},
    [PMM_CMD_JOIN] = {PMM_CMD_JOIN, "join", "join", false, PMM_CTL_OUTSIDE,
                      {{"ip", PMM_ARG_TARGET, true},
                       {"fingerprint", PMM_ARG_FP, true},
                       {"password", PMM_ARG_PASSWORD, true}},
                      1, 1,
                      O(PASSWORD_FILE) | O(FINGERPRINT) | O(YES) | O(NO_WAIT),
                      "<master_ip> [--fingerprint FP] [--password-file FILE] "
                      "[--yes] [--no-wait]",
                      "join the cluster of the master at <master_ip>"},
    [PMM_CMD_JOIN_CMD] = {PMM_CMD_JOIN_CMD, "join-cmd", "join-cmd", false,
                          PMM_CTL_MEMBER, {{NULL}}, 0, 0, 0, "",
                          "print the join command to run on a new node"},
    [PMM_CMD_DELETE] = {PMM_CMD_DELETE, "delete", "delete", false,
                        PMM_CTL_MASTER,
                        {{"cid", PMM_ARG_CID, true},
                         {"purge", PMM_ARG_BOOL, false}},
                        1, 1, O(PURGE), "<cid> [--purge]",
                        "remove a node from the cluster"},
    [PMM_CMD_PROMOTE] = {PMM_CMD_PROMOTE, "promote", "promote", false,
                         PMM_CTL_MEMBER,
                         {{"force", PMM_ARG_BOOL, false},
                          {"accept_data_loss", PMM_ARG_BOOL, false}},
                         0, 0, O(FORCE) | O(ACCEPT_DATA_LOSS),
                         "[--force] [--accept-data-loss]",
                         "make this node the master (new epoch)"},
    [PMM_CMD_BACKUPS] = {PMM_CMD_BACKUPS, "backups", "backups", false,
                         PMM_CTL_ANY,
                         {{"sub", PMM_ARG_WORD, false},
                          {"id", PMM_ARG_WORD, false}},
                         0, 2, 0, "[list | clear ID|divergence]",
                         "data kept instead of destroyed; clear when handled"},
    [PMM_CMD_SYNC] = {PMM_CMD_SYNC, "sync", "sync", false, PMM_CTL_MEMBER,
                      {{"master_ip", PMM_ARG_IP, false}}, 0, 0,
                      O(MASTER_IP) | O(MASTER_IP_PMG), "[--master-ip IP]",
                      "fetch the cluster config now (from a new master)"},
    [PMM_CMD_FILES] = {PMM_CMD_FILES, "files", "files-publish", false,
                       PMM_CTL_MASTER, {{"confirm", PMM_ARG_BOOL, false}},
                       1, 1, O(CONFIRM), "publish [--confirm]",
                       "publish the mirrored files the master holds"},
    [PMM_CMD_DRAIN] = {PMM_CMD_DRAIN, "drain", "drain", false, PMM_CTL_ANY,
                       {{NULL}}, 0, 0, 0, "",
                       "take this node out of load balancers' rotation"},
    [PMM_CMD_UNDRAIN] = {PMM_CMD_UNDRAIN, "undrain", "undrain", false,
                         PMM_CTL_ANY, {{NULL}}, 0, 0, 0, "",
                         "put this node back into rotation"},
    [PMM_CMD_UPDATE_FP] = {PMM_CMD_UPDATE_FP, "update-fingerprints",
                           "update-fingerprints", false, PMM_CTL_MASTER,
                           {{"cid", PMM_ARG_CID, false},
                            {"fingerprint", PMM_ARG_FP, false}},
                           0, 0, O(YES), "[--yes]",
                           "re-read the nodes' certificate fingerprints"},
    [PMM_CMD_WAIT_SYNC] = {PMM_CMD_WAIT_SYNC, NULL, "wait-sync", false,
                           PMM_CTL_WIRE, {{NULL}}, 0, 0, 0, "",
                           "answer once this node's data is in sync"},
    [PMM_CMD_DETACH] = {PMM_CMD_DETACH, "detach", NULL, false, PMM_CTL_LOCAL,
                        {{NULL}}, 0, 0, O(DB) | O(CONFIG) | O(FORCE),
                        "[--db CONNINFO | --config FILE] [--force]",
                        "take a restored database out of its cluster"},
    [PMM_CMD_KEYGEN] = {PMM_CMD_KEYGEN, "keygen", NULL, false, PMM_CTL_LOCAL,
                        {{NULL}}, 0, 0, 0, "",
                        "print a new random gossip key (for key_file)"},
    [PMM_CMD_HELP] = {PMM_CMD_HELP, "help", NULL, false, PMM_CTL_LOCAL,
                      {{NULL}}, 0, 1, 0, "[COMMAND]",
                      "list the commands, or show one command's help"},
};

#undef O

const pmm_ctl_cmd *pmm_ctl_cmd_by_name(const char *name)
{
    for (size_t i = 0; i < PMM_CMD_COUNT; i++)
        if (pmm_ctl_cmds[i].name != NULL &&
            strcmp(pmm_ctl_cmds[i].name, name) == 0)
            return &pmm_ctl_cmds[i];
    return NULL;
}

/* wire is n bytes, not necessarily NUL-terminated */
static const pmm_ctl_cmd *by_wire(const char *wire, size_t n)
{
    for (size_t i = 0; i < PMM_CMD_COUNT; i++)
        if (pmm_ctl_cmds[i].wire != NULL &&
            strlen(pmm_ctl_cmds[i].wire) == n &&
            memcmp(pmm_ctl_cmds[i].wire, wire, n) == 0)
            return &pmm_ctl_cmds[i];
    return NULL;
}

const pmm_ctl_cmd *pmm_ctl_cmd_by_wire(const char *wire)
{
    return by_wire(wire, strlen(wire));
}

const char *pmm_ctl_who_str(pmm_ctl_who who)
{
    switch (who) {
    case PMM_CTL_ANY: return "any node";
    case PMM_CTL_MEMBER: return "a node of a cluster";
    case PMM_CTL_MASTER: return "the master";
    case PMM_CTL_OUTSIDE: return "a node in no cluster yet";
    case PMM_CTL_LOCAL: return "anywhere (no daemon asked)";
    case PMM_CTL_WIRE: return "the daemon (a step of another command)";
    }
    return "?";
}

/* ---- request parsing (pure) -------------------------------------------- */

typedef pmm_ctl_cmd cmd_spec;
typedef pmm_ctl_arg arg_spec;

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
    case PMM_ARG_IP:
        if (!ip_literal_ok(v))
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be an IPv4 or IPv6 address",
                        cs->wire, as->key);
        return 0;
    case PMM_ARG_TARGET:
        if (!target_ok(v))
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be an IPv4 or IPv6 address, "
                        "optionally with a port (IP:PORT, [IPv6]:PORT)",
                        cs->wire, as->key);
        return 0;
    case PMM_ARG_FP:
        if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
            v->str_len > PMM_CTL_FP_MAX)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be a string of 1 to %d characters",
                        cs->wire, as->key, PMM_CTL_FP_MAX);
        for (size_t i = 0; i < v->str_len; i++)
            if ((unsigned char)v->str[i] < 0x21 ||
                (unsigned char)v->str[i] > 0x7e)
                return pmm_errf(err, errlen, -EINVAL,
                            "%s: \"%s\" must be printable ASCII without "
                            "spaces", cs->wire, as->key);
        return 0;
    case PMM_ARG_PASSWORD:
        if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
            v->str_len > PMM_CTL_PASSWORD_MAX)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be a string of 1 to %d bytes",
                        cs->wire, as->key, PMM_CTL_PASSWORD_MAX);
        for (size_t i = 0; i < v->str_len; i++)
            if ((unsigned char)v->str[i] < 0x20 || v->str[i] == 0x7f)
                return pmm_errf(err, errlen, -EINVAL,
                            "%s: \"%s\" must not contain control characters",
                            cs->wire, as->key);
        return 0;
    case PMM_ARG_CID:
        if (v->type != PMM_JSON_NUMBER || !(v->num >= 1 && v->num <= 65535) ||
            v->num != (double)(int64_t)v->num) /* in range: no libm */
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be an integer from 1 to 65535",
                        cs->wire, as->key);
        return 0;
    case PMM_ARG_BOOL:
        if (v->type != PMM_JSON_BOOL)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be true or false", cs->wire, as->key);
        return 0;
    case PMM_ARG_WORD:
        if (v->type != PMM_JSON_STRING || v->str_len == 0 ||
            v->str_len > 32 || strlen(v->str) != v->str_len ||
            strspn(v->str, "abcdefghijklmnopqrstuvwxyz0123456789_-") !=
                v->str_len)
            return pmm_errf(err, errlen, -EINVAL,
                        "%s: \"%s\" must be 1 to 32 characters of a-z, "
                        "0-9, _ and -", cs->wire, as->key);
        return 0;
    }
    return pmm_errf(err, errlen, -EINVAL, "internal error");
}

/* The request object's members against the command's spec. */
static int check_args(const cmd_spec *cs, const pmm_json *obj, char *err,
                      size_t errlen)
{
    bool seen[PMM_CTL_ARGS_MAX] = {false};
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
        for (; k < PMM_CTL_ARGS_MAX && cs->args[k].key != NULL; k++)
            if (strcmp(cs->args[k].key, m->key) == 0) {
                as = &cs->args[k];
                break;
            }
        if (as == NULL) {
            const char *q = quotable(m->key, strlen(m->key));
            if (q != NULL)
                return pmm_errf(err, errlen, -EINVAL,
                            "%s: unknown argument \"%s\"", cs->wire, q);
            return pmm_errf(err, errlen, -EINVAL, "%s: unknown argument",
                        cs->wire);
        }
        if (seen[k])
            return pmm_errf(err, errlen, -EINVAL, "%s: \"%s\" given twice",
                        cs->wire, as->key);
        seen[k] = true;
        rc = check_arg(cs, as, m, err, errlen);
        if (rc != 0)
            return rc;
    }
    for (size_t k = 0; k < PMM_CTL_ARGS_MAX && cs->args[k].key != NULL; k++)
        if (cs->args[k].required && !seen[k])
            return pmm_errf(err, errlen, -EINVAL, "%s: missing \"%s\"", cs->wire,
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
    cs = by_wire(c->str, c->str_len);
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
    *cmd = cs->wire;
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
    {
        const cmd_spec *cs = by_wire(buf + s, e - s);
        if (cs != NULL && cs->legacy_word) {
            pmm_json *o = calloc(1, sizeof(*o));
            if (o == NULL)
                return pmm_errf(err, errlen, -ENOMEM, "out of memory");
            o->type = PMM_JSON_OBJECT;
            *cmd = cs->wire;
            *args = o;
            return 0;
        }
    }
    return pmm_errf(err, errlen, -ENOENT, "unknown command");
}
