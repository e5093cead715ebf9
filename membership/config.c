/*
 * config.c - pmgclusterd configuration file parser (format: membership.h).
 */
#include "membership/membership.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- value parsers: return NULL on success or a static reason ---------- */

static bool name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static const char *parse_name(const char *v, char *out)
{
    size_t n = strlen(v);

    if (n == 0 || n > GSP_NAME_MAX)
        return "must be 1..64 characters";
    for (size_t i = 0; i < n; i++)
        if (!name_char_ok(v[i]))
            return "may only contain letters, digits, '.', '_' and '-'";
    memcpy(out, v, n + 1);
    return NULL;
}

static bool addr_is_wildcard(const gsp_addr *a)
{
    size_t n = a->family == 4 ? 4 : 16;

    for (size_t i = 0; i < n; i++)
        if (a->ip[i] != 0)
            return false;
    return true;
}

static const char *parse_addr(const char *v, gsp_addr *out)
{
    if (gsp_addr_parse(out, v, PMM_DEFAULT_PORT) != 0)
        return "is not an address (ip, ip:port or [ipv6]:port)";
    return NULL;
}

/* A bare IP: "10.0.0.1", "fd00::1" or "[fd00::1]"; no port. */
static const char *parse_ip(const char *v, gsp_addr *out)
{
    char ip[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(v);
    gsp_addr a;

    memset(&a, 0, sizeof(a));
    if (n >= 2 && v[0] == '[' && v[n - 1] == ']') {
        v++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof(ip))
        return "is not an IP address (no port: set status_port)";
    memcpy(ip, v, n);
    ip[n] = '\0';
    if (inet_pton(AF_INET, ip, a.ip) == 1)
        a.family = 4;
    else if (inet_pton(AF_INET6, ip, a.ip) == 1)
        a.family = 6;
    else
        return "is not an IP address (no port: set status_port)";
    *out = a;
    return NULL;
}

static const char *parse_path(const char *v, char *out, size_t cap)
{
    size_t n = strlen(v);

    if (n == 0)
        return "must not be empty";
    if (v[0] != '/')
        return "must be an absolute path";
    if (n >= cap)
        return "is too long";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return "contains a control character";
    memcpy(out, v, n + 1);
    return NULL;
}

static const char *parse_label(const char *v, char *out)
{
    size_t n = strlen(v);

    if (n > GSP_LABEL_MAX)
        return "is longer than 64 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] >= 0x7f)
            return "may only contain printable ASCII";
    memcpy(out, v, n + 1);
    return NULL;
}

static const char *parse_u32(const char *v, uint32_t lo, uint32_t hi,
                             uint32_t *out)
{
    uint64_t x = 0;
    size_t n = strlen(v);

    if (n == 0 || n > 10)
        return "is not a number";
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return "is not a number";
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (x < lo || x > hi)
        return "is out of range";
    *out = (uint32_t)x;
    return NULL;
}

static const char *parse_peers(char *v, gsp_addr *out, size_t *n_out)
{
    size_t n = 0;
    char *save = NULL;

    for (char *tok = strtok_r(v, " \t,", &save); tok != NULL;
         tok = strtok_r(NULL, " \t,", &save)) {
        gsp_addr a;
        bool dup = false;

        if (gsp_addr_parse(&a, tok, PMM_DEFAULT_PORT) != 0)
            return "contains something that is not an address";
        if (addr_is_wildcard(&a))
            return "contains a wildcard address";
        for (size_t i = 0; i < n; i++)
            dup = dup || gsp_addr_eq(&out[i], &a);
        if (dup)
            continue;
        if (n == PMM_PEERS_MAX)
            return "lists more than 64 addresses";
        out[n++] = a;
    }
    *n_out = n;
    return NULL;
}

/* A free-form string value (conninfo, command, lists): printable, bounded. */
static const char *parse_str(const char *v, char *out, size_t size)
{
    size_t n = strlen(v);
    if (n >= size)
        return "is too long";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return "must not contain control characters";
    memcpy(out, v, n + 1);
    return NULL;
}

/* ---- the schema: every key, written once ----------------------------------
 * Each key's type, bounds, default, whether SIGHUP applies it live, and
 * its line of documentation. The parser, the defaults, --check-config and
 * the reload (pmm_config_apply_live) all read this table; test_mconfig
 * holds the README, pmgclusterd(8) and contrib/pmgclusterd.conf to it. */

enum {
    K_NAME, K_BIND, K_ADVERTISE, K_DATA_DIR, K_CONTROL_SOCKET, K_KEY_FILE,
    K_LABEL, K_PEERS, K_LOG_LEVEL, K_META_INTERVAL,
    K_PROBE_INTERVAL, K_PROBE_TIMEOUT, K_PROBE_QUIET, K_INDIRECT, K_SUSP_MULT,
    K_SUSP_MAX_MULT, K_RETRANSMIT, K_GOSSIP_INTERVAL, K_GOSSIP_NODES,
    K_PUSHPULL, K_REJOIN, K_API_PORT, K_STATUS_BIND, K_STATUS_PORT,
    K_AGENT_PORT, K_DB_CONNINFO, K_DB_SCHEMAS, K_DB_EXCLUDE,
    K_DB_RETENTION, K_DB_ORIGIN, K_DB_SYNC, K_DB_SNAP_JOBS, K_FILES_DIR,
    K_FILES_RELOAD, K_FILES_MAX, K_STATUS_ACCESS, K_METRICS_ACCESS, K_STATUS_TOKEN,
    K_UNAUTH_BUDGET, K_FILES_TRASH_FILES, K_FILES_TRASH_BYTES, K_LOG_FORMAT,
    K_COUNT
};
_Static_assert(K_COUNT <= 64, "pmm_config_diff returns a 64-bit mask");
_Static_assert(sizeof(pmm_log_level) == sizeof(int) &&
                   sizeof(pmm_access) == sizeof(int) &&
                   sizeof(pmm_log_format) == sizeof(int),
               "enum keys are stored as int");

static const char *const log_levels[] = {"error", "warn", "info", "debug",
                                         NULL};
static const char *const log_formats[] = {"text", "json", NULL};
static const char *const accesses[] = {"open", "local", "token", NULL};
static const char *const db_syncs[] = {"off", "one", "majority", NULL};

#define F(field) offsetof(pmm_config, field), sizeof(((pmm_config *)0)->field)
#define REQ PMM_CONF_REQUIRED
#define LIVE PMM_CONF_LIVE

static const pmm_conf_key keys[K_COUNT] = {
    [K_NAME] = {"name", PMM_CONF_NAME, REQ, F(name), 0, 0, NULL, NULL,
                "this node's name, 1..64 characters of A-Z a-z 0-9 . _ -"},
    [K_BIND] = {"bind", PMM_CONF_ADDR, REQ, F(bind), 0, 0, NULL, NULL,
                "gossip address, UDP and TCP: ip, ip:port or [ipv6]:port "
                "(port 7946)"},
    [K_ADVERTISE] = {"advertise", PMM_CONF_ADDR, PMM_CONF_NO_WILDCARD,
                     F(advertise), 0, 0, NULL, NULL,
                     "the address other nodes reach this one at (default: "
                     "bind; required when bind is a wildcard)"},
    [K_DATA_DIR] = {"data_dir", PMM_CONF_PATH, REQ, F(data_dir), 0, 0, NULL,
                    NULL, "absolute: node id, generation, peers, cluster "
                    "config and keyring, TLS key"},
    [K_CONTROL_SOCKET] = {"control_socket", PMM_CONF_PATH, 0,
                          F(control_socket), 0, 0, NULL, PMM_DEFAULT_SOCKET,
                          "absolute, at most 107 bytes: the Unix socket of "
                          "pmgcm"},
    [K_KEY_FILE] = {"key_file", PMM_CONF_PATH, 0, F(key_file), 0, 0, NULL,
                    NULL, "absolute: a gossip keyring for a cluster formed "
                    "by a shared key and peers alone"},
    [K_LABEL] = {"label", PMM_CONF_LABEL, PMM_CONF_EMPTY, F(label), 0, 0,
                 NULL, PMM_DEFAULT_LABEL,
                 "0..64 printable characters bound into every packet"},
    [K_PEERS] = {"peers", PMM_CONF_PEERS, PMM_CONF_EMPTY, F(peers), 0, 0,
                 NULL, NULL, "addresses contacted at start and while they "
                 "are not alive members (at most 64)"},
    [K_LOG_LEVEL] = {"log_level", PMM_CONF_ENUM, LIVE, F(log_level), 0, 0,
                     log_levels, "info", "error, warn, info or debug"},
    [K_LOG_FORMAT] = {"log_format", PMM_CONF_ENUM, LIVE, F(log_format), 0,
                      0, log_formats, "text",
                      "text (one line per event) or json (one object per "
                      "line)"},
    [K_META_INTERVAL] = {"meta_interval_ms", PMM_CONF_U32, LIVE,
                         F(meta_interval_ms), 100, 3600000, NULL, "5000",
                         "how often uptime, load, memory and disk are "
                         "sampled"},
    [K_API_PORT] = {"api_port", PMM_CONF_PORT, 0, F(api_port), 1, 65535,
                    NULL, "7947", "TCP port of the TLS node API on bind's "
                    "address"},
    [K_STATUS_BIND] = {"status_bind", PMM_CONF_IP, 0, F(status_bind), 0, 0,
                       NULL, NULL, "IP of the status and agent ports "
                       "(default: bind's IP)"},
    [K_STATUS_PORT] = {"status_port", PMM_CONF_PORT, 0, F(status_port), 0,
                       65535, NULL, "7948", "HTTP status port (0: off)"},
    [K_AGENT_PORT] = {"agent_port", PMM_CONF_PORT, 0, F(agent_port), 0,
                      65535, NULL, "7949", "HAProxy agent-check port (0: "
                      "off)"},
    [K_STATUS_ACCESS] = {"status_access", PMM_CONF_ENUM, LIVE,
                         F(status_access), 0, 0, accesses, "open",
                         "who may read /status: open, local or token"},
    [K_METRICS_ACCESS] = {"metrics_access", PMM_CONF_ENUM, LIVE,
                          F(metrics_access), 0, 0, accesses, "open",
                          "who may read /metrics: open, local or token"},
    [K_STATUS_TOKEN] = {"status_token_file", PMM_CONF_PATH, LIVE,
                        F(status_token_file), 0, 0, NULL, NULL,
                        "absolute: the bearer token of token access (read "
                        "at start and at every reload)"},
    [K_UNAUTH_BUDGET] = {"unauth_budget_bytes", PMM_CONF_U32, 0,
                         F(unauth_budget_bytes), PMM_UNAUTH_BUDGET_MIN,
                         PMM_UNAUTH_BUDGET_MAX, NULL, "33554432",
                         "memory for input nobody has authenticated yet"},
    [K_DB_CONNINFO] = {"db_conninfo", PMM_CONF_STR, 0, F(db_conninfo), 0, 0,
                       NULL, NULL, "libpq conninfo of this node's "
                       "PostgreSQL (empty: no replicated data)"},
    [K_DB_SCHEMAS] = {"db_schemas", PMM_CONF_STR, 0, F(db_schemas), 0, 0,
                      NULL, "public", "comma-separated schemas whose "
                      "tables are replicated"},
    [K_DB_EXCLUDE] = {"db_exclude", PMM_CONF_STR, 0, F(db_exclude), 0, 0,
                      NULL, NULL, "comma-separated schema.table names left "
                      "out of replication"},
    [K_DB_RETENTION] = {"db_log_retention_s", PMM_CONF_U32, 0,
                        F(db_log_retention_s), 1, 365u * 86400u, NULL,
                        "3600", "how long every node keeps the change log"},
    [K_DB_ORIGIN] = {"db_origin_tables", PMM_CONF_STR, 0,
                     F(db_origin_tables), 0, 0, NULL, NULL,
                     "per-origin tables, schema.table:column, ..."},
    [K_DB_SYNC] = {"db_sync", PMM_CONF_ENUM, 0, F(db_sync), 0, 0, db_syncs,
                   "off", "off, one or majority: followers holding a "
                   "change before its commit returns"},
    [K_DB_SNAP_JOBS] = {"db_snapshot_jobs", PMM_CONF_U32, 0,
                        F(db_snapshot_jobs), 1, 4, NULL, "4",
                        "tables a joining node loads at once, each over a "
                        "connection of its own"},
    [K_FILES_DIR] = {"files_dir", PMM_CONF_PATH, 0, F(files_dir), 0, 0,
                     NULL, NULL, "absolute: the directory of master-owned "
                     "files mirrored to every node"},
    [K_FILES_RELOAD] = {"files_reload", PMM_CONF_STR, LIVE, F(files_reload),
                        0, 0, NULL, NULL, "shell command run after mirrored "
                        "files changed"},
    [K_FILES_MAX] = {"files_max_bytes", PMM_CONF_U32, 0, F(files_max_bytes),
                     1, 64u << 20, NULL, "1048576",
                     "the largest mirrored file"},
    [K_FILES_TRASH_FILES] = {"files_trash_max_files", PMM_CONF_U32, 0,
                             F(files_trash_max_files), 1, 1000000, NULL,
                             "1000", "files kept in data_dir/files-trash"},
    [K_FILES_TRASH_BYTES] = {"files_trash_max_bytes", PMM_CONF_U32, 0,
                             F(files_trash_max_bytes), 1, UINT32_MAX, NULL,
                             "67108864", "bytes kept in data_dir/files-trash"},
    [K_PROBE_INTERVAL] = {"probe_interval_ms", PMM_CONF_U32, 0,
                          F(gossip.probe_interval_ms), 10, 600000, NULL,
                          "200", "one probe per interval after a failure; "
                          "the base of suspicion"},
    [K_PROBE_TIMEOUT] = {"probe_timeout_ms", PMM_CONF_U32, 0,
                         F(gossip.probe_timeout_ms), 1, 600000, NULL, "100",
                         "direct ack deadline (< probe_interval_ms)"},
    [K_PROBE_QUIET] = {"probe_quiet_interval_ms", PMM_CONF_U32, 0,
                       F(gossip.probe_quiet_interval_ms), 0, 600000, NULL,
                       "600", "one probe per interval while nothing failed "
                       "(0: never relax)"},
    [K_INDIRECT] = {"indirect_checks", PMM_CONF_U32, 0,
                    F(gossip.indirect_checks), 0, 16, NULL, "3",
                    "peers asked to probe for us when a probe fails"},
    [K_SUSP_MULT] = {"suspicion_mult", PMM_CONF_U32, 0,
                     F(gossip.suspicion_mult), 1, 100, NULL, "3",
                     "suspicion timeout multiplier"},
    [K_SUSP_MAX_MULT] = {"suspicion_max_mult", PMM_CONF_U32, 0,
                         F(gossip.suspicion_max_mult), 1, 100, NULL, "6",
                         "longest suspicion = max_mult * shortest"},
    [K_RETRANSMIT] = {"retransmit_mult", PMM_CONF_U32, 0,
                      F(gossip.retransmit_mult), 1, 100, NULL, "4",
                      "each update is sent mult * ceil(log10(N+1)) times"},
    [K_GOSSIP_INTERVAL] = {"gossip_interval_ms", PMM_CONF_U32, 0,
                           F(gossip.gossip_interval_ms), 10, 600000, NULL,
                           "200", "fan-out interval of pending updates"},
    [K_GOSSIP_NODES] = {"gossip_nodes", PMM_CONF_U32, 0,
                        F(gossip.gossip_nodes), 1, 64, NULL, "3",
                        "peers per gossip round"},
    [K_PUSHPULL] = {"pushpull_interval_ms", PMM_CONF_U32, 0,
                    F(gossip.pushpull_interval_ms), 100, 86400000, NULL,
                    "30000", "TCP anti-entropy interval"},
    [K_REJOIN] = {"rejoin_interval_ms", PMM_CONF_U32, 0,
                  F(gossip.rejoin_interval_ms), 100, 86400000, NULL, "10000",
                  "re-contact a dead member or an absent seed"},
};

#undef F
#undef REQ
#undef LIVE

const pmm_conf_key *pmm_config_keys(size_t *n)
{
    if (n != NULL)
        *n = K_COUNT;
    return keys;
}

const pmm_conf_key *pmm_config_key_find(const char *name)
{
    for (size_t i = 0; i < K_COUNT; i++)
        if (strcmp(name, keys[i].name) == 0)
            return &keys[i];
    return NULL;
}

const char *pmm_config_key(size_t i)
{
    return i < K_COUNT ? keys[i].name : NULL;
}

/* "must be a, b or c" from an ENUM's choices */
static const char *enum_why(const char *const *choices, char *buf,
                            size_t len)
{
    size_t n = 0, off;

    while (choices[n] != NULL)
        n++;
    off = (size_t)snprintf(buf, len, "must be");
    for (size_t i = 0; i < n && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s",
                                i == 0 ? " " : i + 1 == n ? " or " : ", ",
                                choices[i]);
    return buf;
}

/* Parses value v of key k into c (the field the table names). NULL on
 * success or why v is refused ("is out of range"); buf may hold it. */
static const char *apply_key(pmm_config *c, const pmm_conf_key *k, char *v,
                             char *buf, size_t len)
{
    char *field = (char *)c + k->off;
    const char *why;

    switch (k->type) {
    case PMM_CONF_NAME:
        return parse_name(v, field);
    case PMM_CONF_ADDR:
        why = parse_addr(v, (gsp_addr *)field);
        if (why == NULL && (k->flags & PMM_CONF_NO_WILDCARD) &&
            addr_is_wildcard((gsp_addr *)field))
            why = "must not be a wildcard address";
        return why;
    case PMM_CONF_IP:
        return parse_ip(v, (gsp_addr *)field);
    case PMM_CONF_PATH:
        return parse_path(v, field, k->size);
    case PMM_CONF_LABEL:
        return parse_label(v, field);
    case PMM_CONF_STR:
        return parse_str(v, field, k->size);
    case PMM_CONF_U32:
    case PMM_CONF_PORT: {
        uint32_t x;
        why = parse_u32(v, k->min, k->max, &x);
        if (why != NULL)
            return why;
        if (k->type == PMM_CONF_PORT) {
            uint16_t p = (uint16_t)x;
            memcpy(field, &p, sizeof(p));
        } else {
            memcpy(field, &x, sizeof(x));
        }
        return NULL;
    }
    case PMM_CONF_ENUM:
        for (int i = 0; k->choices[i] != NULL; i++) {
            if (strcmp(v, k->choices[i]) == 0) {
                memcpy(field, &i, sizeof(i));
                return NULL;
            }
        }
        return enum_why(k->choices, buf, len);
    case PMM_CONF_PEERS:
        return parse_peers(v, c->peers, &c->n_peers);
    }
    return "is not handled";
}

void pmm_config_default(pmm_config *cfg)
{
    char buf[PMM_DB_STR_MAX + 1], why[96];

    memset(cfg, 0, sizeof(*cfg));
    /* what the file cannot set (packet size, stream bounds, ...) */
    gsp_config_default(&cfg->gossip);
    for (size_t i = 0; i < K_COUNT; i++) {
        if (keys[i].def == NULL)
            continue;
        /* the defaults are values of their keys (test_mconfig parses
         * each): a copy, since a parser may cut its input */
        snprintf(buf, sizeof(buf), "%s", keys[i].def);
        (void)apply_key(cfg, &keys[i], buf, why, sizeof(why));
    }
}

/* true when key k holds the same value in a and b */
static bool key_equal(const pmm_conf_key *k, const pmm_config *a,
                      const pmm_config *b)
{
    const char *fa = (const char *)a + k->off, *fb = (const char *)b + k->off;

    switch (k->type) {
    case PMM_CONF_NAME:
    case PMM_CONF_PATH:
    case PMM_CONF_LABEL:
    case PMM_CONF_STR:
        return strncmp(fa, fb, k->size) == 0;
    case PMM_CONF_ADDR:
    case PMM_CONF_IP:
        return gsp_addr_eq((const gsp_addr *)fa, (const gsp_addr *)fb);
    case PMM_CONF_PEERS:
        if (a->n_peers != b->n_peers)
            return false;
        for (size_t i = 0; i < a->n_peers; i++)
            if (!gsp_addr_eq(&a->peers[i], &b->peers[i]))
                return false;
        return true;
    case PMM_CONF_U32:
    case PMM_CONF_PORT:
    case PMM_CONF_ENUM:
        return memcmp(fa, fb, k->size) == 0;
    }
    return false;
}

uint64_t pmm_config_diff(const pmm_config *a, const pmm_config *b)
{
    uint64_t mask = 0;

    for (size_t i = 0; i < K_COUNT; i++)
        if (!key_equal(&keys[i], a, b))
            mask |= UINT64_C(1) << i;
    return mask;
}

int pmm_config_value_str(const pmm_config *c, const pmm_conf_key *k,
                         char *buf, size_t len)
{
    const char *field = (const char *)c + k->off;

    if (len == 0)
        return -EINVAL;
    buf[0] = '\0';
    switch (k->type) {
    case PMM_CONF_U32:
    case PMM_CONF_PORT: {
        uint32_t x;
        if (k->type == PMM_CONF_PORT) {
            uint16_t p;
            memcpy(&p, field, sizeof(p));
            x = p;
        } else {
            memcpy(&x, field, sizeof(x));
        }
        snprintf(buf, len, "%u", (unsigned)x);
        return 0;
    }
    case PMM_CONF_ENUM: {
        int i;
        memcpy(&i, field, sizeof(i));
        for (int j = 0; k->choices[j] != NULL; j++)
            if (j == i) {
                snprintf(buf, len, "%s", k->choices[j]);
                return 0;
            }
        snprintf(buf, len, "?");
        return 0;
    }
    case PMM_CONF_ADDR:
        gsp_addr_str((const gsp_addr *)field, buf, len);
        return 0;
    case PMM_CONF_IP:
        gsp_addr_ip_str((const gsp_addr *)field, buf, len);
        return 0;
    case PMM_CONF_NAME:
    case PMM_CONF_LABEL:
    case PMM_CONF_PATH:
        pmm_printable(buf, len, field);
        return 0;
    case PMM_CONF_STR:   /* db_conninfo may hold a password */
    case PMM_CONF_PEERS:
        return 1;
    }
    return 1;
}

uint64_t pmm_config_apply_live(pmm_config *running, const pmm_config *next)
{
    uint64_t changed = pmm_config_diff(running, next);

    for (size_t i = 0; i < K_COUNT; i++) {
        const pmm_conf_key *k = &keys[i];
        if (!(changed & (UINT64_C(1) << i)) || !(k->flags & PMM_CONF_LIVE))
            continue;
        /* no live key is PEERS: one field each */
        memcpy((char *)running + k->off, (const char *)next + k->off,
               k->size);
    }
    return changed;
}

/* Two listeners can collide: the same IP, or either a wildcard. */
static bool ips_overlap(const gsp_addr *a, const gsp_addr *b)
{
    if (addr_is_wildcard(a) || addr_is_wildcard(b))
        return true;
    return a->family == b->family &&
           memcmp(a->ip, b->ip, a->family == 4 ? 4 : 16) == 0;
}

/* The TCP ports this node listens on must not collide. NULL or a
 * message. */
static const char *ports_clash(const pmm_config *c, char *buf, size_t len)
{
    struct {
        const char *name;
        uint16_t port;
        const gsp_addr *ip;
    } l[4] = {
        {"the gossip port (bind)", c->bind.port, &c->bind},
        {"api_port", c->api_port, &c->bind},
        {"status_port", c->status_port, &c->status_bind},
        {"agent_port", c->agent_port, &c->status_bind},
    };

    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (l[i].port != 0 && l[i].port == l[j].port &&
                ips_overlap(l[i].ip, l[j].ip)) {
                snprintf(buf, len, "%s and %s are both %u", l[j].name,
                         l[i].name, (unsigned)l[i].port);
                return buf;
            }
    return NULL;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* One line (NUL-terminated, n bytes, its CR kept) into c: blank lines and
 * comments are skipped; "key = value" is looked up and applied. line_of
 * records where each key was set. 0 or -EINVAL with "line N: ..." in err. */
static int config_line(pmm_config *c, char *line, size_t n, unsigned line_no,
                       int line_of[K_COUNT], char *err, size_t errlen)
{
    char *k, *v, *eq, *p;
    int key = -1;
    const char *why;
    char whybuf[96];

    if (memchr(line, '\0', n) != NULL) {
        return pmm_errf(err, errlen, -EINVAL, "line %u: contains a NUL byte",
                  line_no);
    }
    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';

    k = line;
    while (is_blank(*k))
        k++;
    if (*k == '\0' || *k == '#')
        return 0;
    eq = strchr(k, '=');
    if (eq == NULL) {
        return pmm_errf(err, errlen, -EINVAL,
                  "line %u: expected 'key = value'", line_no);
    }
    v = eq + 1;
    p = eq;
    while (p > k && is_blank(p[-1]))
        p--;
    *p = '\0';
    while (is_blank(*v))
        v++;
    /* " # comment" after the value */
    for (p = v; *p != '\0'; p++) {
        if (*p == '#' && p > v && is_blank(p[-1])) {
            *p = '\0';
            break;
        }
    }
    p = v + strlen(v);
    while (p > v && is_blank(p[-1]))
        p--;
    *p = '\0';

    for (int i = 0; i < K_COUNT; i++)
        if (strcmp(k, keys[i].name) == 0)
            key = i;
    if (key < 0) {
        char shown[68];
        /* never echo control characters or megabytes of garbage */
        size_t m = 0;
        for (; k[m] != '\0' && m < 64; m++)
            shown[m] = ((unsigned char)k[m] < 0x20 ||
                        (unsigned char)k[m] >= 0x7f) ? '?' : k[m];
        shown[m] = '\0';
        return pmm_errf(err, errlen, -EINVAL, "line %u: unknown key '%s'%s",
                  line_no, shown, k[m] != '\0' ? "..." : "");
    }
    if (line_of[key] != 0) {
        return pmm_errf(err, errlen, -EINVAL,
                  "line %u: duplicate key '%s' (first set on line %d)",
                  line_no, keys[key].name, line_of[key]);
    }
    line_of[key] = (int)line_no;
    if (*v == '\0' && !(keys[key].flags & PMM_CONF_EMPTY)) {
        return pmm_errf(err, errlen, -EINVAL, "line %u: %s: missing value",
                  line_no, keys[key].name);
    }
    why = apply_key(c, &keys[key], v, whybuf, sizeof(whybuf));
    if (why != NULL) {
        return pmm_errf(err, errlen, -EINVAL, "line %u: %s %s", line_no,
                  keys[key].name, why);
    }
    return 0;
}

/* What only the whole file can say: required keys, the defaults that
 * follow other keys, ports that clash, settings that go together. */
static int config_finish(pmm_config *c, const int line_of[K_COUNT],
                         char *err, size_t errlen)
{
    {
        /* every missing key in one message: a first start with the
         * shipped file names all the keys to set at once */
        const char *miss[3];
        size_t n_miss = 0;
        for (size_t i = 0; i < K_COUNT; i++)
            if ((keys[i].flags & PMM_CONF_REQUIRED) && line_of[i] == 0 &&
                n_miss < 3)
                miss[n_miss++] = keys[i].name;
        if (n_miss == 1) {
            return pmm_errf(err, errlen, -EINVAL,
                            "missing required key '%s': set it (man 8 "
                            "pmgclusterd)", miss[0]);
        }
        if (n_miss > 1) {
            return pmm_errf(err, errlen, -EINVAL,
                            "missing required keys '%s'%s%s%s and '%s': set "
                            "them (man 8 pmgclusterd)", miss[0],
                            n_miss == 3 ? ", '" : "",
                            n_miss == 3 ? miss[1] : "",
                            n_miss == 3 ? "'" : "", miss[n_miss - 1]);
        }
    }
    if (line_of[K_ADVERTISE] == 0) {
        if (addr_is_wildcard(&c->bind)) {
            return pmm_errf(err, errlen, -EINVAL,
                      "line %d: bind is a wildcard address: set advertise "
                      "to the address other nodes should use",
                      line_of[K_BIND]);
        }
        c->advertise = c->bind;
    }
    if (line_of[K_STATUS_BIND] == 0) {
        c->status_bind = c->bind;
        c->status_bind.port = 0;
    }
    {
        char why[128];
        int ln = line_of[K_AGENT_PORT] > line_of[K_STATUS_PORT]
                     ? line_of[K_AGENT_PORT] : line_of[K_STATUS_PORT];
        if (line_of[K_API_PORT] > ln)
            ln = line_of[K_API_PORT];
        if (line_of[K_STATUS_BIND] > ln)
            ln = line_of[K_STATUS_BIND];
        if (ln == 0)
            ln = line_of[K_BIND];
        if (ports_clash(c, why, sizeof(why)) != NULL) {
            return pmm_errf(err, errlen, -EINVAL, "line %d: %s", ln, why);
        }
    }
    if ((c->status_access == PMM_ACCESS_TOKEN ||
         c->metrics_access == PMM_ACCESS_TOKEN) &&
        c->status_token_file[0] == '\0') {
        return pmm_errf(err, errlen, -EINVAL,
                      "line %d: %s = token needs status_token_file (the "
                      "file holding the token)",
                      c->status_access == PMM_ACCESS_TOKEN
                          ? line_of[K_STATUS_ACCESS]
                          : line_of[K_METRICS_ACCESS],
                      c->status_access == PMM_ACCESS_TOKEN ? "status_access"
                                                           : "metrics_access");
    }
    if (c->gossip.probe_timeout_ms >= c->gossip.probe_interval_ms) {
        return pmm_errf(err, errlen, -EINVAL,
                  "line %d: probe_timeout_ms (%u) must be smaller than "
                  "probe_interval_ms (%u)",
                  line_of[K_PROBE_TIMEOUT] ? line_of[K_PROBE_TIMEOUT]
                                           : line_of[K_PROBE_INTERVAL],
                  (unsigned)c->gossip.probe_timeout_ms,
                  (unsigned)c->gossip.probe_interval_ms);
    }
    return 0;
}

int pmm_config_parse(pmm_config *out, const char *text, size_t len,
                     char *err, size_t errlen)
{
    pmm_config *c;
    unsigned line_no = 0;
    int line_of[K_COUNT] = {0};
    size_t pos = 0;
    char line[PMM_CONF_LINE_MAX + 1];
    int rc = 0;

    if (len > PMM_CONF_FILE_MAX)
        return pmm_errf(err, errlen, -E2BIG, "file is larger than %u bytes",
                    (unsigned)PMM_CONF_FILE_MAX);
    c = malloc(sizeof(*c));
    if (c == NULL)
        return pmm_errf(err, errlen, -ENOMEM, "out of memory");
    pmm_config_default(c);

    while (pos < len && rc == 0) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - text) : len;
        size_t n = end - pos;

        line_no++;
        if (n > PMM_CONF_LINE_MAX) {
            rc = pmm_errf(err, errlen, -EINVAL, "line %u: longer than %u bytes",
                      line_no, (unsigned)PMM_CONF_LINE_MAX);
            break;
        }
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos = end + 1;
        rc = config_line(c, line, n, line_no, line_of, err, errlen);
    }
    if (rc == 0)
        rc = config_finish(c, line_of, err, errlen);
    if (rc == 0)
        *out = *c;
    free(c);
    return rc;
}

int pmm_config_load(pmm_config *cfg, const char *path, char *err,
                    size_t errlen)
{
    char msg[512];
    char *buf = NULL;
    struct stat st;
    ssize_t r;
    size_t len = 0;
    int fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return pmm_errf(err, errlen, -errno, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pmm_errf(err, errlen, -EINVAL, "%s: not a regular file", path);
    }
    if (st.st_size > PMM_CONF_FILE_MAX) {
        close(fd);
        return pmm_errf(err, errlen, -E2BIG, "%s: larger than %u bytes", path,
                    (unsigned)PMM_CONF_FILE_MAX);
    }
    buf = malloc(PMM_CONF_FILE_MAX + 1);
    if (buf == NULL) {
        close(fd);
        return pmm_errf(err, errlen, -ENOMEM, "%s: out of memory", path);
    }
    /* read at most one byte more than the bound, to notice growth */
    while (len <= PMM_CONF_FILE_MAX) {
        r = read(fd, buf + len, PMM_CONF_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            close(fd);
            free(buf);
            return pmm_errf(err, errlen, rc, "%s: %s", path, strerror(-rc));
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    rc = pmm_config_parse(cfg, buf, len, msg, sizeof(msg));
    free(buf);
    if (rc != 0) {
        /* "line N: x" -> "path:N: x" */
        unsigned ln;
        int off = 0;
        if (sscanf(msg, "line %u: %n", &ln, &off) == 1 && off > 0)
            return pmm_errf(err, errlen, rc, "%s:%u: %s", path, ln, msg + off);
        return pmm_errf(err, errlen, rc, "%s: %s", path, msg);
    }
    return 0;
}
