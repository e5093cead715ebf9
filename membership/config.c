/*
 * config.c - pmgclusterd configuration file parser (format: membership.h).
 */
#include "membership/membership.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void pmm_config_default(pmm_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->control_socket, sizeof(cfg->control_socket), "%s",
             PMM_DEFAULT_SOCKET);
    snprintf(cfg->label, sizeof(cfg->label), "%s", PMM_DEFAULT_LABEL);
    cfg->log_level = PMM_LOG_INFO;
    cfg->meta_interval_ms = 5000;
    cfg->api_port = 7947;
    cfg->status_port = PMM_DEFAULT_STATUS_PORT;
    cfg->agent_port = PMM_DEFAULT_AGENT_PORT;
    cfg->unauth_budget_bytes = PMM_DEFAULT_UNAUTH_BUDGET;
    gsp_config_default(&cfg->gossip);
    snprintf(cfg->db_schemas, sizeof(cfg->db_schemas), "public");
    cfg->db_log_retention_s = 3600;
    cfg->files_max_bytes = 1u << 20;
    cfg->files_trash_max_files = 1000;
    cfg->files_trash_max_bytes = 64u << 20;
}

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

/* ---- keys ----------------------------------------------------------------- */

enum {
    K_NAME, K_BIND, K_ADVERTISE, K_DATA_DIR, K_CONTROL_SOCKET, K_KEY_FILE,
    K_LABEL, K_PEERS, K_LOG_LEVEL, K_META_INTERVAL,
    K_PROBE_INTERVAL, K_PROBE_TIMEOUT, K_PROBE_QUIET, K_INDIRECT, K_SUSP_MULT,
    K_SUSP_MAX_MULT, K_RETRANSMIT, K_GOSSIP_INTERVAL, K_GOSSIP_NODES,
    K_PUSHPULL, K_REJOIN, K_API_PORT, K_STATUS_BIND, K_STATUS_PORT,
    K_AGENT_PORT, K_DB_CONNINFO, K_DB_SCHEMAS, K_DB_EXCLUDE,
    K_DB_RETENTION, K_DB_ORIGIN, K_DB_SYNC, K_FILES_DIR, K_FILES_RELOAD,
    K_FILES_MAX, K_STATUS_ACCESS, K_METRICS_ACCESS, K_STATUS_TOKEN,
    K_UNAUTH_BUDGET, K_FILES_TRASH_FILES, K_FILES_TRASH_BYTES, K_COUNT
};

static const char *const key_names[K_COUNT] = {
    [K_NAME] = "name",
    [K_BIND] = "bind",
    [K_ADVERTISE] = "advertise",
    [K_DATA_DIR] = "data_dir",
    [K_CONTROL_SOCKET] = "control_socket",
    [K_KEY_FILE] = "key_file",
    [K_LABEL] = "label",
    [K_PEERS] = "peers",
    [K_LOG_LEVEL] = "log_level",
    [K_META_INTERVAL] = "meta_interval_ms",
    [K_PROBE_INTERVAL] = "probe_interval_ms",
    [K_PROBE_TIMEOUT] = "probe_timeout_ms",
    [K_PROBE_QUIET] = "probe_quiet_interval_ms",
    [K_INDIRECT] = "indirect_checks",
    [K_SUSP_MULT] = "suspicion_mult",
    [K_SUSP_MAX_MULT] = "suspicion_max_mult",
    [K_RETRANSMIT] = "retransmit_mult",
    [K_GOSSIP_INTERVAL] = "gossip_interval_ms",
    [K_GOSSIP_NODES] = "gossip_nodes",
    [K_PUSHPULL] = "pushpull_interval_ms",
    [K_REJOIN] = "rejoin_interval_ms",
    [K_API_PORT] = "api_port",
    [K_STATUS_BIND] = "status_bind",
    [K_STATUS_PORT] = "status_port",
    [K_AGENT_PORT] = "agent_port",
    [K_DB_CONNINFO] = "db_conninfo",
    [K_DB_SCHEMAS] = "db_schemas",
    [K_DB_EXCLUDE] = "db_exclude",
    [K_DB_RETENTION] = "db_log_retention_s",
    [K_DB_ORIGIN] = "db_origin_tables",
    [K_DB_SYNC] = "db_sync",
    [K_FILES_DIR] = "files_dir",
    [K_FILES_RELOAD] = "files_reload",
    [K_FILES_MAX] = "files_max_bytes",
    [K_STATUS_ACCESS] = "status_access",
    [K_METRICS_ACCESS] = "metrics_access",
    [K_STATUS_TOKEN] = "status_token_file",
    [K_UNAUTH_BUDGET] = "unauth_budget_bytes",
    [K_FILES_TRASH_FILES] = "files_trash_max_files",
    [K_FILES_TRASH_BYTES] = "files_trash_max_bytes",
};

const char *pmm_config_key(size_t i)
{
    return i < K_COUNT ? key_names[i] : NULL;
}

static const char *parse_access(const char *v, pmm_access *out)
{
    if (strcmp(v, "open") == 0)
        *out = PMM_ACCESS_OPEN;
    else if (strcmp(v, "local") == 0)
        *out = PMM_ACCESS_LOCAL;
    else if (strcmp(v, "token") == 0)
        *out = PMM_ACCESS_TOKEN;
    else
        return "must be open, local or token";
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

static const char *apply_key(pmm_config *c, int k, char *v)
{
    gsp_config *g = &c->gossip;

    switch (k) {
    case K_NAME:
        return parse_name(v, c->name);
    case K_BIND:
        return parse_addr(v, &c->bind);
    case K_ADVERTISE: {
        const char *why = parse_addr(v, &c->advertise);
        if (why == NULL && addr_is_wildcard(&c->advertise))
            why = "must not be a wildcard address";
        return why;
    }
    case K_DATA_DIR:
        return parse_path(v, c->data_dir, sizeof(c->data_dir));
    case K_CONTROL_SOCKET:
        return parse_path(v, c->control_socket, sizeof(c->control_socket));
    case K_KEY_FILE:
        return parse_path(v, c->key_file, sizeof(c->key_file));
    case K_LABEL:
        return parse_label(v, c->label);
    case K_PEERS:
        return parse_peers(v, c->peers, &c->n_peers);
    case K_LOG_LEVEL:
        if (pmm_log_level_parse(v, &c->log_level) != 0)
            return "must be error, warn, info or debug";
        return NULL;
    case K_META_INTERVAL:
        return parse_u32(v, 100, 3600000, &c->meta_interval_ms);
    case K_API_PORT: {
        uint32_t port;
        const char *why = parse_u32(v, 1, 65535, &port);
        if (why == NULL) c->api_port = (uint16_t)port;
        return why;
    }
    case K_STATUS_BIND:
        return parse_ip(v, &c->status_bind);
    case K_STATUS_PORT:
    case K_AGENT_PORT: {
        uint32_t port;
        const char *why = parse_u32(v, 0, 65535, &port);
        if (why == NULL && k == K_STATUS_PORT)
            c->status_port = (uint16_t)port;
        else if (why == NULL)
            c->agent_port = (uint16_t)port;
        return why;
    }
    case K_DB_CONNINFO:
        return parse_str(v, c->db_conninfo, sizeof(c->db_conninfo));
    case K_DB_SCHEMAS:
        return parse_str(v, c->db_schemas, sizeof(c->db_schemas));
    case K_DB_EXCLUDE:
        return parse_str(v, c->db_exclude, sizeof(c->db_exclude));
    case K_DB_RETENTION:
        return parse_u32(v, 1, 365u * 86400u, &c->db_log_retention_s);
    case K_DB_ORIGIN:
        return parse_str(v, c->db_origin_tables, sizeof(c->db_origin_tables));
    case K_DB_SYNC:
        if (strcmp(v, "off") == 0) c->db_sync = PMM_DB_SYNC_OFF;
        else if (strcmp(v, "one") == 0) c->db_sync = PMM_DB_SYNC_ONE;
        else if (strcmp(v, "majority") == 0) c->db_sync = PMM_DB_SYNC_MAJORITY;
        else return "must be off, one or majority";
        return NULL;
    case K_FILES_DIR:
        return parse_path(v, c->files_dir, sizeof(c->files_dir));
    case K_FILES_RELOAD:
        return parse_str(v, c->files_reload, sizeof(c->files_reload));
    case K_FILES_MAX:
        return parse_u32(v, 1, 64u << 20, &c->files_max_bytes);
    case K_STATUS_ACCESS:
        return parse_access(v, &c->status_access);
    case K_METRICS_ACCESS:
        return parse_access(v, &c->metrics_access);
    case K_STATUS_TOKEN:
        return parse_path(v, c->status_token_file,
                          sizeof(c->status_token_file));
    case K_UNAUTH_BUDGET:
        return parse_u32(v, PMM_UNAUTH_BUDGET_MIN, PMM_UNAUTH_BUDGET_MAX,
                         &c->unauth_budget_bytes);
    case K_FILES_TRASH_FILES:
        return parse_u32(v, 1, 1000000, &c->files_trash_max_files);
    case K_FILES_TRASH_BYTES:
        return parse_u32(v, 1, UINT32_MAX, &c->files_trash_max_bytes);
    case K_PROBE_INTERVAL:
        return parse_u32(v, 10, 600000, &g->probe_interval_ms);
    case K_PROBE_TIMEOUT:
        return parse_u32(v, 1, 600000, &g->probe_timeout_ms);
    case K_PROBE_QUIET:
        return parse_u32(v, 0, 600000, &g->probe_quiet_interval_ms);
    case K_INDIRECT:
        return parse_u32(v, 0, 16, &g->indirect_checks);
    case K_SUSP_MULT:
        return parse_u32(v, 1, 100, &g->suspicion_mult);
    case K_SUSP_MAX_MULT:
        return parse_u32(v, 1, 100, &g->suspicion_max_mult);
    case K_RETRANSMIT:
        return parse_u32(v, 1, 100, &g->retransmit_mult);
    case K_GOSSIP_INTERVAL:
        return parse_u32(v, 10, 600000, &g->gossip_interval_ms);
    case K_GOSSIP_NODES:
        return parse_u32(v, 1, 64, &g->gossip_nodes);
    case K_PUSHPULL:
        return parse_u32(v, 100, 86400000, &g->pushpull_interval_ms);
    case K_REJOIN:
        return parse_u32(v, 100, 86400000, &g->rejoin_interval_ms);
    default:
        return "is not handled";
    }
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
        if (strcmp(k, key_names[i]) == 0)
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
                  line_no, key_names[key], line_of[key]);
    }
    line_of[key] = (int)line_no;
    if (*v == '\0' && key != K_LABEL && key != K_PEERS) {
        return pmm_errf(err, errlen, -EINVAL, "line %u: %s: missing value",
                  line_no, key_names[key]);
    }
    why = apply_key(c, key, v);
    if (why != NULL) {
        return pmm_errf(err, errlen, -EINVAL, "line %u: %s %s", line_no,
                  key_names[key], why);
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
        static const int required[] = {K_NAME, K_BIND, K_DATA_DIR};
        const char *miss[3];
        size_t n_miss = 0;
        for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
            if (line_of[required[i]] == 0)
                miss[n_miss++] = key_names[required[i]];
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
