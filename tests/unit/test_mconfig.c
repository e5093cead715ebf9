/*
 * test_mconfig.c - pmgclusterd configuration parser: every key, every
 * rejection.
 */
#include "membership/membership.h"
#include "tests/tap.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define BASE                                                                  \
    "name = node1\n"                                                          \
    "bind = 10.0.0.1:7946\n"                                                  \
    "data_dir = /var/lib/pmgcm\n"                                             \
    "key_file = /etc/pmgcm/gossip.key\n"

static char err[512];

static int parse(pmm_config *c, const char *text)
{
    err[0] = '\0';
    return pmm_config_parse(c, text, strlen(text), err, sizeof(err));
}

/* rejects text, and the message contains `want` */
static int rejects(const char *text, const char *want)
{
    pmm_config c;
    int rc = parse(&c, text);

    if (rc == 0) {
        printf("#   accepted: %s\n", text);
        return 0;
    }
    if (strstr(err, want) == NULL) {
        printf("#   message '%s' lacks '%s'\n", err, want);
        return 0;
    }
    return 1;
}

static void test_minimal_defaults(void)
{
    pmm_config c;
    gsp_config g;
    char a[64];

    REQUIRE(parse(&c, BASE) == 0);
    gsp_config_default(&g);
    CHECK(strcmp(c.name, "node1") == 0);
    CHECK(strcmp(gsp_addr_str(&c.bind, a, sizeof(a)), "10.0.0.1:7946") == 0);
    CHECK(gsp_addr_eq(&c.advertise, &c.bind));
    CHECK(strcmp(c.data_dir, "/var/lib/pmgcm") == 0);
    CHECK(strcmp(c.key_file, "/etc/pmgcm/gossip.key") == 0);
    CHECK(strcmp(c.control_socket, "/run/pmgcm/pmgcm.sock") == 0);
    CHECK(strcmp(c.label, "pmgcm") == 0);
    CHECK_EQ_INT(c.n_peers, 0);
    CHECK_EQ_INT(c.log_level, PMM_LOG_INFO);
    CHECK_EQ_INT(c.meta_interval_ms, 5000);
    CHECK(memcmp(&c.gossip, &g, sizeof(g)) == 0);
}

static void test_every_key(void)
{
    pmm_config c;
    char a[64];
    const char *text =
        "# a comment\n"
        "\n"
        "   # indented comment\n"
        "name = mx-2.example_com\n"
        "bind = 0.0.0.0:7000\n"
        "advertise = 192.168.1.5:7001   # trailing comment\n"
        "data_dir = /tmp/x y\n"
        "control_socket = /tmp/s.sock\n"
        "key_file = /etc/k\n"
        "label = prod cluster\n"
        "peers = 10.0.0.2:7946, 10.0.0.3 ,[::1]:8000\t10.0.0.2:7946\n"
        "log_level = debug\n"
        "meta_interval_ms = 250\n"
        "probe_interval_ms = 1000\r\n"
        "probe_timeout_ms = 300\n"
        "indirect_checks = 5\n"
        "suspicion_mult = 6\n"
        "suspicion_max_mult = 7\n"
        "retransmit_mult = 3\n"
        "gossip_interval_ms = 150\n"
        "gossip_nodes = 4\n"
        "pushpull_interval_ms = 60000\n"
        "rejoin_interval_ms = 20000\n";

    REQUIRE(parse(&c, text) == 0);
    CHECK(strcmp(c.name, "mx-2.example_com") == 0);
    CHECK(strcmp(gsp_addr_str(&c.bind, a, sizeof(a)), "0.0.0.0:7000") == 0);
    CHECK(strcmp(gsp_addr_str(&c.advertise, a, sizeof(a)),
                 "192.168.1.5:7001") == 0);
    CHECK(strcmp(c.data_dir, "/tmp/x y") == 0);
    CHECK(strcmp(c.control_socket, "/tmp/s.sock") == 0);
    CHECK(strcmp(c.key_file, "/etc/k") == 0);
    CHECK(strcmp(c.label, "prod cluster") == 0);
    REQUIRE(c.n_peers == 3); /* the duplicate is dropped */
    CHECK(strcmp(gsp_addr_str(&c.peers[0], a, sizeof(a)), "10.0.0.2:7946") == 0);
    CHECK(strcmp(gsp_addr_str(&c.peers[1], a, sizeof(a)), "10.0.0.3:7946") == 0);
    CHECK(strcmp(gsp_addr_str(&c.peers[2], a, sizeof(a)), "[::1]:8000") == 0);
    CHECK_EQ_INT(c.log_level, PMM_LOG_DEBUG);
    CHECK_EQ_INT(c.meta_interval_ms, 250);
    CHECK_EQ_INT(c.gossip.probe_interval_ms, 1000);
    CHECK_EQ_INT(c.gossip.probe_timeout_ms, 300);
    CHECK_EQ_INT(c.gossip.indirect_checks, 5);
    CHECK_EQ_INT(c.gossip.suspicion_mult, 6);
    CHECK_EQ_INT(c.gossip.suspicion_max_mult, 7);
    CHECK_EQ_INT(c.gossip.retransmit_mult, 3);
    CHECK_EQ_INT(c.gossip.gossip_interval_ms, 150);
    CHECK_EQ_INT(c.gossip.gossip_nodes, 4);
    CHECK_EQ_INT(c.gossip.pushpull_interval_ms, 60000);
    CHECK_EQ_INT(c.gossip.rejoin_interval_ms, 20000);
}

static void test_small_things(void)
{
    pmm_config c;
    char a[64];

    /* default port, empty label, empty peers, no trailing newline */
    REQUIRE(parse(&c, BASE "label =\npeers =\nbind2_is_not_here = 1") != 0);
    CHECK(strstr(err, "line 7: unknown key 'bind2_is_not_here'") != NULL);
    REQUIRE(parse(&c, "name=a\nbind=10.1.1.1\ndata_dir=/d\nkey_file=/k\n"
                      "label =\npeers =") == 0);
    CHECK(strcmp(gsp_addr_str(&c.bind, a, sizeof(a)), "10.1.1.1:7946") == 0);
    CHECK(strcmp(c.label, "") == 0);
    CHECK_EQ_INT(c.n_peers, 0);
    /* the longest name is fine */
    REQUIRE(parse(&c, "name = "
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
                      "bind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n") == 0);
    CHECK_EQ_INT(strlen(c.name), 64);
    /* ipv6 bind */
    REQUIRE(parse(&c, "name = n\nbind = [fd00::1]:7946\ndata_dir = /d\n"
                      "key_file = /k\n") == 0);
    CHECK_EQ_INT(c.bind.family, 6);
}

static void test_missing_required(void)
{
    CHECK(rejects("bind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n",
                  "missing required key 'name'"));
    CHECK(rejects("name = n\ndata_dir = /d\nkey_file = /k\n",
                  "missing required key 'bind'"));
    CHECK(rejects("name = n\nbind = 10.0.0.1\nkey_file = /k\n",
                  "missing required key 'data_dir'"));
    /* key_file is optional: a node that will create or join a cluster
     * gets its keyring from the cluster config */
    {
        pmm_config c;
        CHECK(parse(&c, "name = n\nbind = 10.0.0.1\ndata_dir = /d\n") == 0);
        CHECK(c.key_file[0] == '\0');
        CHECK_EQ_INT(c.api_port, 7947);
        CHECK(parse(&c, "name = n\nbind = 10.0.0.1\ndata_dir = /d\n"
                        "api_port = 8007\n") == 0);
        CHECK_EQ_INT(c.api_port, 8007);
    }
    CHECK(rejects("name = n\nbind = 10.0.0.1\ndata_dir = /d\napi_port = 0\n",
                  "api_port"));
    CHECK(rejects("name = n\nbind = 10.0.0.1\ndata_dir = /d\napi_port = 70000\n",
                  "api_port"));
    CHECK(rejects("", "missing required key"));
    /* the shipped file sets only data_dir: both keys named at once */
    CHECK(rejects("data_dir = /var/lib/pmgcm\n",
                  "missing required keys 'name' and 'bind': set them"));
    CHECK(rejects("# nothing\n",
                  "missing required keys 'name', 'bind' and 'data_dir'"));
    CHECK(rejects("# only a comment\n", "missing required key"));
}

static void test_bad_values(void)
{
    /* names */
    CHECK(rejects(BASE "name = x\n", "line 5: duplicate key 'name'"));
    CHECK(rejects("name = bad name\nbind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n",
                  "line 1: name may only contain"));
    CHECK(rejects("name = a/b\nbind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n",
                  "line 1: name"));
    CHECK(rejects("name = n\xc3\xa9\nbind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n",
                  "line 1: name"));
    CHECK(rejects("name = "
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
                  "bind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n",
                  "line 1: name must be 1..64"));
    CHECK(rejects("name =\nbind = 10.0.0.1\ndata_dir = /d\nkey_file = /k\n",
                  "line 1: name: missing value"));
    /* addresses */
    CHECK(rejects("name = n\nbind = 10.0.0.300:7946\ndata_dir = /d\nkey_file = /k\n",
                  "line 2: bind is not an address"));
    CHECK(rejects("name = n\nbind = 10.0.0.1:0\ndata_dir = /d\nkey_file = /k\n",
                  "line 2: bind is not an address"));
    CHECK(rejects("name = n\nbind = 10.0.0.1:65536\ndata_dir = /d\nkey_file = /k\n",
                  "line 2: bind"));
    CHECK(rejects("name = n\nbind = host.example:7946\ndata_dir = /d\nkey_file = /k\n",
                  "line 2: bind"));
    CHECK(rejects("name = n\nbind = 0.0.0.0:7946\ndata_dir = /d\nkey_file = /k\n",
                  "line 2: bind is a wildcard address: set advertise"));
    CHECK(rejects("name = n\nbind = [::]:7946\ndata_dir = /d\nkey_file = /k\n",
                  "set advertise"));
    CHECK(rejects(BASE "advertise = 0.0.0.0:7946\n",
                  "line 5: advertise must not be a wildcard"));
    CHECK(rejects(BASE "advertise = nope\n", "line 5: advertise is not an address"));
    CHECK(rejects(BASE "peers = 10.0.0.2 banana\n",
                  "line 5: peers contains something that is not an address"));
    CHECK(rejects(BASE "peers = 0.0.0.0\n", "line 5: peers contains a wildcard"));
    {
        char big[PMM_CONF_LINE_MAX];
        int off = snprintf(big, sizeof(big), "%speers =", BASE);
        for (int i = 0; i < 65; i++)
            off += snprintf(big + off, sizeof(big) - (size_t)off, " 10.0.1.%d", i);
        CHECK(rejects(big, "line 5: peers lists more than 64"));
    }
    /* paths */
    CHECK(rejects("name = n\nbind = 10.0.0.1\ndata_dir = relative\nkey_file = /k\n",
                  "line 3: data_dir must be an absolute path"));
    CHECK(rejects(BASE "key_file = /other\n", "line 5: duplicate key 'key_file'"));
    CHECK(rejects(BASE "control_socket = /tmp/"
                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\n",
                  "line 5: control_socket is too long"));
    CHECK(rejects(BASE "control_socket = /tmp/a\x01.sock\n",
                  "line 5: control_socket contains a control character"));
    /* label, log level */
    CHECK(rejects(BASE "label = "
                       "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
                  "line 5: label is longer than 64"));
    CHECK(rejects(BASE "label = caf\xc3\xa9\n", "line 5: label may only"));
    CHECK(rejects(BASE "log_level = verbose\n", "line 5: log_level must be"));
    /* numbers */
    CHECK(rejects(BASE "meta_interval_ms = 99\n", "line 5: meta_interval_ms is out of range"));
    CHECK(rejects(BASE "meta_interval_ms = -5\n", "line 5: meta_interval_ms is not a number"));
    CHECK(rejects(BASE "meta_interval_ms = 5s\n", "is not a number"));
    CHECK(rejects(BASE "meta_interval_ms = 99999999999\n", "is not a number"));
    CHECK(rejects(BASE "probe_interval_ms = 5\n", "out of range"));
    CHECK(rejects(BASE "indirect_checks = 17\n", "out of range"));
    CHECK(rejects(BASE "gossip_nodes = 0\n", "out of range"));
    CHECK(rejects(BASE "suspicion_mult = 0\n", "out of range"));
    CHECK(rejects(BASE "suspicion_max_mult = 101\n", "out of range"));
    CHECK(rejects(BASE "retransmit_mult = 0\n", "out of range"));
    CHECK(rejects(BASE "gossip_interval_ms = 1\n", "out of range"));
    CHECK(rejects(BASE "pushpull_interval_ms = 1\n", "out of range"));
    CHECK(rejects(BASE "rejoin_interval_ms = 0\n", "out of range"));
    CHECK(rejects(BASE "probe_interval_ms = 100\nprobe_timeout_ms = 100\n",
                  "line 6: probe_timeout_ms (100) must be smaller"));
    /* the mirrored files' trash: at least one file and one byte */
    CHECK(rejects(BASE "files_trash_max_files = 0\n", "out of range"));
    CHECK(rejects(BASE "files_trash_max_files = 1000001\n", "out of range"));
    CHECK(rejects(BASE "files_trash_max_bytes = 0\n", "out of range"));
    CHECK(rejects(BASE "files_trash_max_bytes = 4294967296\n", "line 5"));
}

static void test_files_trash_keys(void)
{
    pmm_config c;
    REQUIRE(parse(&c, BASE) == 0);
    CHECK_EQ_INT(c.files_trash_max_files, 1000);
    CHECK_EQ_INT(c.files_trash_max_bytes, 64u << 20);
    REQUIRE(parse(&c, BASE "files_dir = /etc/pmg\nfiles_trash_max_files = 1\n"
                          "files_trash_max_bytes = 4294967295\n") == 0);
    CHECK_EQ_INT(c.files_trash_max_files, 1);
    CHECK_EQ_INT(c.files_trash_max_bytes, 4294967295u);
}

/* the hostile-input keys: the budget and who may read /status, /metrics */
static void test_guard_keys(void)
{
    pmm_config c;

    REQUIRE(parse(&c, BASE) == 0);
    CHECK_EQ_INT(c.unauth_budget_bytes, 32u << 20);
    CHECK_EQ_INT(c.status_access, PMM_ACCESS_OPEN);
    CHECK_EQ_INT(c.metrics_access, PMM_ACCESS_OPEN);
    CHECK(c.status_token_file[0] == '\0');
    REQUIRE(parse(&c, BASE "unauth_budget_bytes = 1048576\n"
                           "status_access = token\n"
                           "metrics_access = local\n"
                           "status_token_file = /etc/pmgcm/status.token\n") ==
            0);
    CHECK_EQ_INT(c.unauth_budget_bytes, 1048576);
    CHECK_EQ_INT(c.status_access, PMM_ACCESS_TOKEN);
    CHECK_EQ_INT(c.metrics_access, PMM_ACCESS_LOCAL);
    CHECK(strcmp(c.status_token_file, "/etc/pmgcm/status.token") == 0);
    REQUIRE(parse(&c, BASE "metrics_access = token\n"
                           "status_token_file = /t\n") == 0);
    CHECK_EQ_INT(c.status_access, PMM_ACCESS_OPEN);
    CHECK(rejects(BASE "unauth_budget_bytes = 1048575\n",
                  "line 5: unauth_budget_bytes is out of range"));
    CHECK(rejects(BASE "unauth_budget_bytes = 1073741825\n", "out of range"));
    CHECK(rejects(BASE "unauth_budget_bytes = 32M\n", "is not a number"));
    CHECK(rejects(BASE "status_access = private\n",
                  "line 5: status_access must be open, local or token"));
    CHECK(rejects(BASE "metrics_access = Local\n", "must be open, local or"));
    CHECK(rejects(BASE "status_access = token\n",
                  "line 5: status_access = token needs status_token_file"));
    CHECK(rejects(BASE "status_access = local\nmetrics_access = token\n",
                  "line 6: metrics_access = token needs status_token_file"));
    CHECK(rejects(BASE "status_token_file = token.txt\n",
                  "line 5: status_token_file must be an absolute path"));
}

static void test_syntax(void)
{
    CHECK(rejects(BASE "just some words\n", "line 5: expected 'key = value'"));
    CHECK(rejects(BASE "= value\n", "line 5: unknown key ''"));
    CHECK(rejects(BASE "Name = x\n", "line 5: unknown key 'Name'"));
    CHECK(rejects(BASE "colour = blue\n", "line 5: unknown key 'colour'"));
    CHECK(rejects(BASE "\x1b[31m = red\n", "unknown key '?[31m'"));
    {
        static char big[PMM_CONF_LINE_MAX + 256];
        memset(big, 0, sizeof(big));
        strcpy(big, BASE "label = ");
        memset(big + strlen(big), 'x', PMM_CONF_LINE_MAX);
        CHECK(rejects(big, "line 5: longer than 4096 bytes"));
    }
    {
        const char text[] = "name = n\0x\nbind = 10.0.0.1\n";
        pmm_config c;
        CHECK(pmm_config_parse(&c, text, sizeof(text) - 1, err, sizeof(err)) != 0);
        CHECK(strstr(err, "line 1: contains a NUL") != NULL);
    }
    {
        pmm_config c;
        char *huge = calloc(1, PMM_CONF_FILE_MAX + 2);
        REQUIRE(huge != NULL);
        memset(huge, '\n', PMM_CONF_FILE_MAX + 1);
        CHECK(pmm_config_parse(&c, huge, PMM_CONF_FILE_MAX + 1, err,
                               sizeof(err)) == -E2BIG);
        free(huge);
    }
}

static void test_output_untouched_on_error(void)
{
    pmm_config c;

    memset(&c, 0x5a, sizeof(c));
    CHECK(parse(&c, BASE "bogus = 1\n") != 0);
    CHECK(((unsigned char *)&c)[0] == 0x5a);
    CHECK(((unsigned char *)&c)[sizeof(c) - 1] == 0x5a);
}

/* db_sync: off (default), one, majority; anything else named */
static void test_db_sync(void)
{
    pmm_config c;
    REQUIRE(parse(&c, BASE) == 0);
    CHECK_EQ_INT(c.db_sync, PMM_DB_SYNC_OFF);
    REQUIRE(parse(&c, BASE "db_sync = one\n") == 0);
    CHECK_EQ_INT(c.db_sync, PMM_DB_SYNC_ONE);
    REQUIRE(parse(&c, BASE "db_sync = majority\n") == 0);
    CHECK_EQ_INT(c.db_sync, PMM_DB_SYNC_MAJORITY);
    REQUIRE(parse(&c, BASE "db_sync = off\n") == 0);
    CHECK_EQ_INT(c.db_sync, PMM_DB_SYNC_OFF);
    CHECK(rejects(BASE "db_sync = all\n", "db_sync must be off, one or majority"));
    CHECK(rejects(BASE "db_sync = ONE\n", "db_sync must be off, one or majority"));
    CHECK(rejects(BASE "db_sync =\n", "db_sync: missing value"));
}

static void test_load_file(void)
{
    char path[] = "/tmp/test_mconfig.XXXXXX";
    pmm_config c;
    int fd = mkstemp(path);
    const char text[] = BASE "colour = blue\n";

    REQUIRE(fd >= 0);
    REQUIRE(write(fd, text, sizeof(text) - 1) == (ssize_t)sizeof(text) - 1);
    close(fd);
    CHECK(pmm_config_load(&c, path, err, sizeof(err)) == -EINVAL);
    {
        char want[128];
        snprintf(want, sizeof(want), "%s:5: unknown key 'colour'", path);
        CHECK(strcmp(err, want) == 0);
    }
    fd = open(path, O_WRONLY | O_TRUNC);
    REQUIRE(fd >= 0);
    REQUIRE(write(fd, BASE, strlen(BASE)) == (ssize_t)strlen(BASE));
    close(fd);
    CHECK(pmm_config_load(&c, path, err, sizeof(err)) == 0);
    unlink(path);
    CHECK(pmm_config_load(&c, path, err, sizeof(err)) == -ENOENT);
    CHECK(strstr(err, "No such file") != NULL);
    CHECK(pmm_config_load(&c, "/tmp", err, sizeof(err)) != 0);
}

/* ---- the schema table: every key through the same checks ----------------- */

/* A config whose line 4 is "key = value" (the required keys on lines 1..3,
 * or, for a required key, its own line 4 in place of the first three's
 * one), plus `extra` lines after it. */
static void with_key(char *out, size_t cap, const char *key,
                     const char *value, const char *extra)
{
    const char *req[3][2] = {{"name", "node1"},
                             {"bind", "10.0.0.1:7946"},
                             {"data_dir", "/var/lib/pmgcm"}};
    size_t off = 0;

    out[0] = '\0';
    for (int i = 0; i < 3; i++)
        if (strcmp(req[i][0], key) != 0)
            off += (size_t)snprintf(out + off, cap - off, "%s = %s\n",
                                    req[i][0], req[i][1]);
        else
            off += (size_t)snprintf(out + off, cap - off, "# %s below\n",
                                    key);
    snprintf(out + off, cap - off, "%s = %s\n%s", key, value,
             extra ? extra : "");
}

/* what a key needs beside it to make a whole config */
static const char *companions(const pmm_conf_key *k, const char *value)
{
    if (k->type == PMM_CONF_ENUM && strcmp(value, "token") == 0)
        return "status_token_file = /etc/pmgcm/status.token\n";
    if (strcmp(k->name, "probe_timeout_ms") == 0)
        return "probe_interval_ms = 600000\n";
    if (strcmp(k->name, "probe_interval_ms") == 0)
        return "probe_timeout_ms = 1\n";
    return NULL;
}

/* a value key k accepts that is not its default */
static const char *sample(const pmm_conf_key *k, char *buf, size_t cap)
{
    switch (k->type) {
    case PMM_CONF_U32:
    case PMM_CONF_PORT:
        if (strcmp(k->name, "probe_interval_ms") == 0)
            return "300"; /* the timeout (100) must stay below it */
        if (strcmp(k->name, "probe_timeout_ms") == 0)
            return "50";
        snprintf(buf, cap, "%u",
                 (unsigned)(k->def && strtoul(k->def, NULL, 10) == k->max
                                ? k->min : k->max));
        return buf;
    case PMM_CONF_ENUM:
        return k->def && strcmp(k->def, k->choices[1]) == 0 ? k->choices[0]
                                                            : k->choices[1];
    case PMM_CONF_PATH: return "/x/changed";
    case PMM_CONF_ADDR: return "10.0.0.1:7000";
    case PMM_CONF_IP: return "10.0.0.7";
    case PMM_CONF_PEERS: return "10.0.0.8";
    default: return "changed";
    }
}

static uint32_t field_u32(const pmm_config *c, const pmm_conf_key *k)
{
    if (k->type == PMM_CONF_PORT) {
        uint16_t p;
        memcpy(&p, (const char *)c + k->off, sizeof(p));
        return p;
    }
    uint32_t x;
    memcpy(&x, (const char *)c + k->off, sizeof(x));
    return x;
}

/* the table itself: names unique and in the parser's style, every entry
 * documented, bounds sane, the field inside pmm_config */
static void test_schema_table(void)
{
    size_t n;
    const pmm_conf_key *t = pmm_config_keys(&n);
    size_t live = 0, req = 0;

    REQUIRE(t != NULL);
    CHECK(n >= 41);
    CHECK(pmm_config_key(n) == NULL);
    for (size_t i = 0; i < n; i++) {
        const pmm_conf_key *k = &t[i];
        CHECK(k->name != NULL && k->name[0] != '\0');
        CHECK(strcmp(pmm_config_key(i), k->name) == 0);
        CHECK(pmm_config_key_find(k->name) == k);
        for (const char *p = k->name; *p; p++)
            CHECK(islower((unsigned char)*p) || *p == '_');
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(t[j].name, k->name) != 0);
        CHECK(k->doc != NULL && strlen(k->doc) > 10 && !strchr(k->doc, '\n'));
        CHECK(k->off + k->size <= sizeof(pmm_config));
        CHECK(k->size > 0);
        if (k->type == PMM_CONF_U32 || k->type == PMM_CONF_PORT)
            CHECK(k->min <= k->max);
        if (k->type == PMM_CONF_PORT)
            CHECK(k->max <= 65535);
        if (k->type == PMM_CONF_ENUM)
            CHECK(k->choices != NULL && k->choices[0] && k->choices[1]);
        /* a required key has no default; a live one is never required */
        if (k->flags & PMM_CONF_REQUIRED) {
            CHECK(k->def == NULL);
            CHECK(!(k->flags & PMM_CONF_LIVE));
            req++;
        }
        if (k->flags & PMM_CONF_LIVE) {
            /* no live key is a list (pmm_config_apply_live copies one
             * field) */
            CHECK(k->type != PMM_CONF_PEERS);
            live++;
        }
    }
    CHECK_EQ_INT(req, 3);
    CHECK(live >= 7);
    CHECK(pmm_config_key_find("colour") == NULL);
    CHECK(pmm_config_key_find("") == NULL);
}

/* every default is a value its key accepts, and pmm_config_default
 * holds exactly it */
static void test_schema_defaults(void)
{
    size_t n;
    const pmm_conf_key *t = pmm_config_keys(&n);
    pmm_config d, c;
    char text[8192];

    pmm_config_default(&d);
    for (size_t i = 0; i < n; i++) {
        const pmm_conf_key *k = &t[i];
        if (k->def == NULL)
            continue;
        with_key(text, sizeof(text), k->name, k->def, companions(k, k->def));
        if (parse(&c, text) != 0) {
            printf("#   default of %s refused: %s\n", k->name, err);
            CHECK(0);
            continue;
        }
        if (k->type == PMM_CONF_U32 || k->type == PMM_CONF_PORT ||
            k->type == PMM_CONF_ENUM)
            CHECK(memcmp((char *)&c + k->off, (char *)&d + k->off,
                         k->size) == 0);
        else
            CHECK(strcmp((char *)&c + k->off, (char *)&d + k->off) == 0);
        if (k->type == PMM_CONF_U32)
            CHECK_EQ_INT(field_u32(&d, k), strtoul(k->def, NULL, 10));
    }
}

/* every key: its values land in its field, its bounds hold, a bad value
 * and a missing one are refused naming line 4 and the key, a second
 * setting names both lines */
static void test_schema_every_key(void)
{
    size_t n;
    const pmm_conf_key *t = pmm_config_keys(&n);
    pmm_config c;
    char text[8192], want[160], v[1200];

    for (size_t i = 0; i < n; i++) {
        const pmm_conf_key *k = &t[i];
        const char *field = (const char *)&c + k->off;

        /* missing value */
        with_key(text, sizeof(text), k->name, "", NULL);
        if (k->flags & PMM_CONF_EMPTY) {
            CHECK(parse(&c, text) == 0);
        } else {
            snprintf(want, sizeof(want), "line 4: %s: missing value",
                     k->name);
            CHECK(rejects(text, want));
        }
        /* twice */
        with_key(text, sizeof(text), k->name, sample(k, v, sizeof(v)), NULL);
        {
            char twice[8400];
            snprintf(twice, sizeof(twice), "%s%s = y\n", text, k->name);
            snprintf(want, sizeof(want), "line 5: duplicate key '%s' "
                     "(first set on line 4)", k->name);
            CHECK(rejects(twice, want));
        }
        switch (k->type) {
        case PMM_CONF_U32:
        case PMM_CONF_PORT: {
            uint32_t b[2] = {k->min, k->max};
            for (int j = 0; j < 2; j++) {
                snprintf(v, sizeof(v), "%u", (unsigned)b[j]);
                with_key(text, sizeof(text), k->name, v, companions(k, v));
                if (parse(&c, text) == 0) {
                    CHECK_EQ_INT(field_u32(&c, k), b[j]);
                } else {
                    /* only a rule between two keys may refuse a bound */
                    CHECK(strstr(err, "out of range") == NULL);
                    CHECK(strstr(err, "must be smaller") != NULL);
                }
            }
            snprintf(v, sizeof(v), "%llu", (unsigned long long)k->max + 1);
            with_key(text, sizeof(text), k->name, v, NULL);
            snprintf(want, sizeof(want), "line 4: %s is out of range",
                     k->name);
            CHECK(rejects(text, want));
            if (k->min > 0) {
                snprintf(v, sizeof(v), "%u", (unsigned)k->min - 1);
                with_key(text, sizeof(text), k->name, v, NULL);
                CHECK(rejects(text, want));
            }
            snprintf(want, sizeof(want), "line 4: %s is not a number",
                     k->name);
            with_key(text, sizeof(text), k->name, "12x", NULL);
            CHECK(rejects(text, want));
            with_key(text, sizeof(text), k->name, "-1", NULL);
            CHECK(rejects(text, want));
            with_key(text, sizeof(text), k->name, "0x10", NULL);
            CHECK(rejects(text, want));
            break;
        }
        case PMM_CONF_ENUM: {
            size_t m = 0;
            char list[128] = "must be";
            for (; k->choices[m] != NULL; m++) {
                with_key(text, sizeof(text), k->name, k->choices[m],
                         companions(k, k->choices[m]));
                REQUIRE(parse(&c, text) == 0);
                int got;
                memcpy(&got, field, sizeof(got));
                CHECK_EQ_INT(got, m);
            }
            for (size_t j = 0; j < m; j++)
                snprintf(list + strlen(list), sizeof(list) - strlen(list),
                         "%s%s", j == 0 ? " " : j + 1 == m ? " or " : ", ",
                         k->choices[j]);
            snprintf(want, sizeof(want), "line 4: %s %s", k->name, list);
            with_key(text, sizeof(text), k->name, "bogus", NULL);
            CHECK(rejects(text, want));
            /* case matters */
            snprintf(v, sizeof(v), "%s", k->choices[0]);
            v[0] = (char)toupper((unsigned char)v[0]);
            with_key(text, sizeof(text), k->name, v, NULL);
            CHECK(rejects(text, want));
            break;
        }
        case PMM_CONF_PATH:
        case PMM_CONF_STR: {
            size_t len = k->size - 1;
            v[0] = '/';
            memset(v + 1, 'a', len - 1);
            v[len] = '\0';
            with_key(text, sizeof(text), k->name, v, NULL);
            CHECK(parse(&c, text) == 0);
            CHECK(strcmp(field, v) == 0);
            v[len] = 'a';
            v[len + 1] = '\0';
            with_key(text, sizeof(text), k->name, v, NULL);
            snprintf(want, sizeof(want), "line 4: %s is too long", k->name);
            CHECK(rejects(text, want));
            with_key(text, sizeof(text), k->name, "/a\x01b", NULL);
            snprintf(want, sizeof(want), "line 4: %s ", k->name);
            CHECK(rejects(text, want));
            if (k->type == PMM_CONF_PATH) {
                with_key(text, sizeof(text), k->name, "relative/x", NULL);
                snprintf(want, sizeof(want),
                         "line 4: %s must be an absolute path", k->name);
                CHECK(rejects(text, want));
            }
            break;
        }
        case PMM_CONF_ADDR:
        case PMM_CONF_IP:
        case PMM_CONF_PEERS:
            with_key(text, sizeof(text), k->name, "10.0.0.300", NULL);
            snprintf(want, sizeof(want), "line 4: %s ", k->name);
            CHECK(rejects(text, want));
            with_key(text, sizeof(text), k->name, "10.0.0.9", NULL);
            CHECK(parse(&c, text) == 0);
            break;
        case PMM_CONF_NAME:
        case PMM_CONF_LABEL:
            with_key(text, sizeof(text), k->name, "caf\xc3\xa9", NULL);
            snprintf(want, sizeof(want), "line 4: %s ", k->name);
            CHECK(rejects(text, want));
            with_key(text, sizeof(text), k->name, "ok-1.x_y", NULL);
            CHECK(parse(&c, text) == 0);
            CHECK(strcmp(field, "ok-1.x_y") == 0);
            break;
        }
    }
}

/* the reload: which keys changed, which of them apply live; the running
 * config takes exactly the live ones */
static void test_reload_diff(void)
{
    pmm_config run, next, before;
    size_t n;
    const pmm_conf_key *t = pmm_config_keys(&n);
    uint64_t live_mask = 0, m;

    for (size_t i = 0; i < n; i++)
        if (t[i].flags & PMM_CONF_LIVE)
            live_mask |= UINT64_C(1) << i;
    REQUIRE(parse(&run, BASE "log_level = info\nstatus_port = 7948\n") == 0);
    REQUIRE(parse(&next, BASE "log_level = info\nstatus_port = 7948\n") == 0);
    CHECK(pmm_config_diff(&run, &next) == 0);
    /* comments, order and blanks do not count; a default written out is
     * no change */
    REQUIRE(parse(&next, "# moved\nstatus_port=7948\n" BASE "\n") == 0);
    CHECK(pmm_config_diff(&run, &next) == 0);

    /* one live key, one restart key, one computed default (advertise
     * follows bind) */
    REQUIRE(parse(&next, "name = node1\nbind = 10.0.0.2:7946\n"
                         "data_dir = /var/lib/pmgcm\n"
                         "key_file = /etc/pmgcm/gossip.key\n"
                         "log_level = debug\nlog_format = json\n"
                         "status_access = local\n"
                         "files_reload = /bin/true\n"
                         "meta_interval_ms = 1000\n"
                         "probe_interval_ms = 300\n") == 0);
    m = pmm_config_diff(&run, &next);
    {
        const char *want[] = {"bind", "advertise", "log_level",
                              "log_format", "status_access", "files_reload",
                              "meta_interval_ms", "probe_interval_ms",
                              "status_bind"};
        uint64_t w = 0;
        for (size_t j = 0; j < sizeof(want) / sizeof(want[0]); j++) {
            const pmm_conf_key *k = pmm_config_key_find(want[j]);
            REQUIRE(k != NULL);
            w |= UINT64_C(1) << (size_t)(k - t);
        }
        CHECK(m == w);
        if (m != w)
            for (size_t i = 0; i < n; i++)
                if (((m ^ w) >> i) & 1)
                    printf("#   differs: %s\n", t[i].name);
    }
    before = run;
    CHECK(pmm_config_apply_live(&run, &next) == m);
    /* the live ones moved, the others stayed */
    CHECK_EQ_INT(run.log_level, PMM_LOG_DEBUG);
    CHECK_EQ_INT(run.log_format, PMM_LOG_JSON);
    CHECK_EQ_INT(run.status_access, PMM_ACCESS_LOCAL);
    CHECK(strcmp(run.files_reload, "/bin/true") == 0);
    CHECK_EQ_INT(run.meta_interval_ms, 1000);
    CHECK(gsp_addr_eq(&run.bind, &before.bind));
    CHECK(gsp_addr_eq(&run.advertise, &before.advertise));
    CHECK_EQ_INT(run.gossip.probe_interval_ms, 200);
    /* what is left differs only by restart keys */
    CHECK((pmm_config_diff(&run, &next) & live_mask) == 0);
    CHECK(pmm_config_diff(&run, &next) == (m & ~live_mask));
    CHECK(pmm_config_diff(&run, &before) == (m & live_mask));
    /* applying again changes nothing more */
    before = run;
    CHECK(pmm_config_apply_live(&run, &next) == (m & ~live_mask));
    CHECK(pmm_config_diff(&run, &before) == 0);

    /* every key: a change to it alone is seen, and applied iff live */
    for (size_t i = 0; i < n; i++) {
        const pmm_conf_key *k = &t[i];
        char text[8192];
        char vb[32];
        const char *v = sample(k, vb, sizeof(vb));
        with_key(text, sizeof(text), k->name, v, companions(k, v));
        REQUIRE(parse(&run, "name = node1\nbind = 10.0.0.1:7946\n"
                            "data_dir = /var/lib/pmgcm\n") == 0);
        if (parse(&next, text) != 0) {
            printf("#   %s = %s: %s\n", k->name, v, err);
            CHECK(0);
            continue;
        }
        m = pmm_config_diff(&run, &next);
        CHECK((m >> i) & 1);
        before = run;
        pmm_config_apply_live(&run, &next);
        CHECK((((pmm_config_diff(&run, &before) >> i) & 1) != 0) ==
              ((k->flags & PMM_CONF_LIVE) != 0));
    }
}

/* ---- the parser's keys against their documentation --------------------- */


/* The key a line names in a file's style, copied into key (empty when the
 * line names none). prefix: what precedes the key ("" or ".BI "), with
 * comment: a leading '#' may come first; then the key, blanks, and after
 * them the text `after` (README and contrib: "=", the man page: "\" = "). */
static void line_key(const char *line, size_t len, const char *prefix,
                     bool comment, const char *after, char *key, size_t ksz)
{
    size_t i = 0, k = 0, pl = strlen(prefix), al = strlen(after);

    key[0] = '\0';
    while (i < len && line[i] == ' ') i++;
    if (comment && i < len && line[i] == '#') i++;
    if (len - i < pl || memcmp(line + i, prefix, pl) != 0) return;
    i += pl;
    while (i < len && k + 1 < ksz &&
           (islower((unsigned char)line[i]) || line[i] == '_'))
        key[k++] = line[i++];
    key[k] = '\0';
    if (k == 0 || (i < len && line[i] != ' ')) {
        key[0] = '\0';
        return;
    }
    while (i < len && line[i] == ' ') i++;
    if (len - i < al || memcmp(line + i, after, al) != 0) key[0] = '\0';
}

static bool known_key(const char *k)
{
    for (size_t i = 0; pmm_config_key(i); i++)
        if (strcmp(pmm_config_key(i), k) == 0) return true;
    return false;
}

/* Every key the parser knows has a line of its own in doc (one written as
 * the style says); with strict, every such line names a key the parser
 * knows (nothing stale). Returns how many keys lack their line. */
static int doc_keys(const char *rel, const char *prefix, bool comment,
                    const char *after, bool strict)
{
    char *text = tap_read_doc(rel);
    int missing = 0;
    char k[64];

    if (!text) return -1;
    for (size_t i = 0; pmm_config_key(i); i++) {
        const char *want = pmm_config_key(i);
        bool found = false;
        for (const char *l = text; *l && !found;) {
            const char *e = strchr(l, '\n');
            size_t n = e ? (size_t)(e - l) : strlen(l);
            line_key(l, n, prefix, comment, after, k, sizeof(k));
            found = strcmp(k, want) == 0;
            l += n + (e ? 1 : 0);
        }
        if (!found) {
            printf("#   %s: no line for the key %s\n", rel, want);
            missing++;
        }
    }
    for (const char *l = text; strict && *l;) {
        const char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        line_key(l, n, prefix, comment, after, k, sizeof(k));
        if (k[0] && !known_key(k)) {
            printf("#   %s: '%.*s' names no key of the parser\n", rel,
                   (int)n, l);
            missing++;
        }
        l += n + (e ? 1 : 0);
    }
    free(text);
    return missing;
}

/* README (the key = value examples), pmgclusterd(8) (.BI key " = ...")
 * and contrib/pmgclusterd.conf (#key = default) each show every key, and
 * the man page and the sample file show no key the parser lacks. */
static void test_keys_documented(void)
{
    size_t n = 0;
    while (pmm_config_key(n)) n++;
    CHECK(n >= 41); /* the keys of today; a new one comes with its docs */
    CHECK_EQ_INT(doc_keys("README.md", "", false, "=", false), 0);
    CHECK_EQ_INT(doc_keys("doc/pmgclusterd.8", ".BI ", false, "\" = ", true),
                 0);
    CHECK_EQ_INT(doc_keys("contrib/pmgclusterd.conf", "", true, "=", true),
                 0);
}

/* The man page marks exactly the live keys: the paragraph of each key
 * (from its ".BI key" line to the next .TP, .PP or .SH; keys joined by .TQ
 * share the text) says "Reloaded by SIGHUP" iff the table says live. The
 * README's "Reloading the configuration" paragraph names every live key
 * and, in its list of those that take effect, no other. */
static void test_reload_documented(void)
{
    char *man = tap_read_doc("doc/pmgclusterd.8");
    char *readme = tap_read_doc("README.md");
    size_t n;
    const pmm_conf_key *t = pmm_config_keys(&n);

    REQUIRE(man != NULL && readme != NULL);
    for (size_t i = 0; i < n; i++) {
        char head[96];
        const char *p, *end;
        bool live = (t[i].flags & PMM_CONF_LIVE) != 0, says;
        snprintf(head, sizeof(head), "\n.BI %s \"", t[i].name);
        p = strstr(man, head);
        if (p == NULL) {
            printf("#   man: no paragraph for %s\n", t[i].name);
            CHECK(0);
            continue;
        }
        p++;
        end = p;
        for (;;) {
            end = strchr(end, '\n');
            if (end == NULL || strncmp(end + 1, ".TP", 3) == 0 ||
                strncmp(end + 1, ".PP", 3) == 0 ||
                strncmp(end + 1, ".SH", 3) == 0)
                break;
            end++;
        }
        {
            size_t len = end ? (size_t)(end - p) : strlen(p);
            char *para = strndup(p, len);
            REQUIRE(para != NULL);
            says = strstr(para, "Reloaded by SIGHUP") != NULL;
            free(para);
        }
        if (says != live)
            printf("#   man: %s is %slive but its paragraph %s\n", t[i].name,
                   live ? "" : "not ",
                   says ? "says Reloaded by SIGHUP" : "does not say so");
        CHECK(says == live);
    }
    {
        const char *sec = strstr(readme, "**Reloading the configuration.**");
        const char *stop = sec ? strstr(sec, "Every other key needs a restart")
                               : NULL;
        REQUIRE(sec != NULL && stop != NULL);
        for (size_t i = 0; i < n; i++) {
            char q[80];
            const char *hit;
            snprintf(q, sizeof(q), "`%s`", t[i].name);
            hit = strstr(sec, q);
            bool listed = hit != NULL && hit < stop;
            if (listed != ((t[i].flags & PMM_CONF_LIVE) != 0))
                printf("#   README reload section: %s %s\n", t[i].name,
                       listed ? "listed but not live" : "live, not listed");
            CHECK(listed == ((t[i].flags & PMM_CONF_LIVE) != 0));
        }
    }
    free(man);
    free(readme);
}

/* contrib/pmgclusterd.conf with every "#key = value" line taken as set:
 * the sample values are ones the parser accepts, no key twice. */
static void test_contrib_parses(void)
{
    char *text = tap_read_doc("contrib/pmgclusterd.conf");
    char k[64];
    pmm_config c;
    size_t keys = 0;

    REQUIRE(text != NULL);
    for (char *l = text; *l;) {
        char *e = strchr(l, '\n');
        size_t n = e ? (size_t)(e - l) : strlen(l);
        line_key(l, n, "", true, "=", k, sizeof(k));
        if (k[0]) {
            char *h = strchr(l, '#');
            if (h && h < l + n && h < strchr(l, '=')) *h = ' ';
            keys++;
        }
        l += n + (e ? 1 : 0);
    }
    CHECK(keys >= 38);
    CHECK_EQ_INT(parse(&c, text), 0);
    if (err[0]) printf("#   %s\n", err);
    free(text);
}

int main(void)
{
    TAP_RUN(test_minimal_defaults);
    TAP_RUN(test_every_key);
    TAP_RUN(test_small_things);
    TAP_RUN(test_missing_required);
    TAP_RUN(test_bad_values);
    TAP_RUN(test_guard_keys);
    TAP_RUN(test_files_trash_keys);
    TAP_RUN(test_syntax);
    TAP_RUN(test_output_untouched_on_error);
    TAP_RUN(test_db_sync);
    TAP_RUN(test_load_file);
    TAP_RUN(test_schema_table);
    TAP_RUN(test_schema_defaults);
    TAP_RUN(test_schema_every_key);
    TAP_RUN(test_reload_diff);
    TAP_RUN(test_keys_documented);
    TAP_RUN(test_reload_documented);
    TAP_RUN(test_contrib_parses);
    return tap_done();
}
