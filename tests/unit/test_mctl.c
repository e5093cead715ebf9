/*
 * test_mctl.c - control protocol: request parsing and validation (every
 * command, every bad argument, legacy words, bounds, garbage, depth
 * bombs), the JSON reader details it relies on, and a live control socket
 * (synchronous and later answers, a client gone before its answer, the
 * pending cap, shutdown with a request pending, bounds, stale socket, mode,
 * peer credentials, client cap, idle timeout, clean close).
 */
#include "daemon/daemon.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* A test point that may be skipped: set skip_reason inside it. */
static const char *skip_reason;
#define TAP_RUN_SKIPPABLE(fn)                                                 \
    do {                                                                      \
        skip_reason = NULL;                                                   \
        tap_cur_failed_ = 0;                                                  \
        fn();                                                                 \
        tap_n_++;                                                             \
        if (tap_cur_failed_)                                                  \
            tap_failed_points_++;                                             \
        if (skip_reason != NULL && !tap_cur_failed_)                          \
            printf("ok %d - %s # SKIP %s\n", tap_n_, #fn, skip_reason);       \
        else                                                                  \
            printf("%s %d - %s\n", tap_cur_failed_ ? "not ok" : "ok",         \
                   tap_n_, #fn);                                              \
        fflush(stdout);                                                       \
    } while (0)

/* ---- parsing ------------------------------------------------------------------ */

/* Parses s; on success checks the command name, else the error code and
 * that the message contains want. */
static bool parses(const char *s, const char *want_cmd)
{
    const char *cmd = NULL;
    pmm_json *args = (pmm_json *)1;
    char err[PMM_CTL_ERR_MAX] = "";
    int rc = pmm_ctl_parse_request(s, strlen(s), &cmd, &args, err,
                                   sizeof(err));
    bool ok = rc == 0 && cmd != NULL && strcmp(cmd, want_cmd) == 0 &&
              args != NULL && args->type == PMM_JSON_OBJECT;

    if (!ok)
        printf("#   '%s' -> rc %d err '%s'\n", s, rc, err);
    if (rc == 0)
        pmm_json_free(args);
    return ok;
}

static bool refused(const char *s, size_t len, int want_rc,
                    const char *want_msg)
{
    const char *cmd = NULL;
    pmm_json *args = (pmm_json *)1;
    char err[PMM_CTL_ERR_MAX] = "";
    int rc = pmm_ctl_parse_request(s, len, &cmd, &args, err, sizeof(err));
    bool ok = rc == want_rc && args == NULL && strstr(err, want_msg) != NULL;

    if (!ok)
        printf("#   '%.60s' -> rc %d err '%s' (want %d '%s')\n", s, rc, err,
               want_rc, want_msg);
    if (rc == 0)
        pmm_json_free(args);
    return ok;
}
#define REFUSED(s, rc, msg) refused((s), strlen(s), (rc), (msg))

static void test_parse_legacy(void)
{
    const char *cmd = NULL;
    pmm_json *args = NULL;
    char err[PMM_CTL_ERR_MAX];
    char big[PMM_CTL_REQ_MAX + 2];

    CHECK(pmm_ctl_parse_request("status\n", 7, &cmd, &args, err,
                                sizeof(err)) == 0);
    CHECK(cmd != NULL && strcmp(cmd, "status") == 0);
    /* legacy words get an empty object */
    CHECK(args != NULL && args->type == PMM_JSON_OBJECT &&
          args->n_child == 0 && args->child == NULL);
    pmm_json_free(args);
    CHECK(parses("ping", "ping"));
    CHECK(parses("  status \r\n", "status"));
    CHECK(parses("ping\r\n", "ping"));

    CHECK(refused("", 0, -EINVAL, "empty request"));
    CHECK(REFUSED("\n", -EINVAL, "empty request"));
    CHECK(REFUSED("   \r\n", -EINVAL, "empty request"));
    CHECK(REFUSED("statu\n", -ENOENT, "unknown command"));
    CHECK(REFUSED("status2\n", -ENOENT, "unknown command"));
    CHECK(REFUSED("STATUS\n", -ENOENT, "unknown command"));
    CHECK(REFUSED("status json\n", -ENOENT, "unknown command"));
    /* only status and ping are words; the rest need JSON */
    CHECK(REFUSED("join\n", -ENOENT, "unknown command"));
    CHECK(REFUSED("join-cmd\n", -ENOENT, "unknown command"));
    CHECK(REFUSED("create\n", -ENOENT, "unknown command"));
    CHECK(refused("status\0x\n", 9, -EINVAL, "control byte"));
    CHECK(REFUSED("st\tatus\n", -EINVAL, "control byte"));
    CHECK(REFUSED("status\x7f\n", -EINVAL, "control byte"));
    CHECK(REFUSED("status\xff\n", -EINVAL, "non-ASCII"));
    CHECK(REFUSED("sta\ntus\n", -EINVAL, "control byte"));
    CHECK(REFUSED("status\n\n", -EINVAL, "control byte"));

    memset(big, ' ', sizeof(big));
    memcpy(big + PMM_CTL_REQ_MAX - 7, "status\n", 7);
    CHECK(pmm_ctl_parse_request(big, PMM_CTL_REQ_MAX, &cmd, &args, err,
                                sizeof(err)) == 0);
    pmm_json_free(args);
    memset(big, 'a', sizeof(big));
    big[PMM_CTL_REQ_MAX - 1] = '\n';
    CHECK(refused(big, PMM_CTL_REQ_MAX, -ENOENT, "unknown command"));
    CHECK(refused(big, PMM_CTL_REQ_MAX + 1, -E2BIG, "request too long"));
    CHECK(refused(big, PMM_CTL_REQ_MAX + 2, -E2BIG, "request too long"));
}

static void test_parse_good(void)
{
    const char *cmd = NULL;
    pmm_json *args = NULL;
    char err[PMM_CTL_ERR_MAX];
    const char *join = "{\"cmd\":\"join\",\"ip\":\"10.0.0.1\","
                       "\"fingerprint\":\"AB:CD:EF\",\"password\":"
                       "\"s\\u00e9cr\\\"et\"}\n";
    char pw[2 * PMM_CTL_PASSWORD_MAX + 64];

    CHECK(parses("{\"cmd\":\"status\"}", "status"));
    CHECK(parses("{\"cmd\":\"ping\"}\n", "ping"));
    CHECK(parses("  { \"cmd\" : \"status\" }  \r\n", "status"));
    CHECK(parses("{\"cmd\":\"create\",\"password\":\"x\"}", "create"));
    CHECK(parses("{\"password\":\"p w\",\"cmd\":\"create\"}", "create"));
    CHECK(parses("{\"cmd\":\"fingerprint\",\"ip\":\"10.0.0.1\"}",
                 "fingerprint"));
    CHECK(parses("{\"cmd\":\"fingerprint\",\"ip\":\"fd00::1\"}",
                 "fingerprint"));
    CHECK(parses("{\"cmd\":\"fingerprint\",\"ip\":\"::ffff:10.1.2.3\"}",
                 "fingerprint"));
    CHECK(parses("{\"cmd\":\"join-cmd\"}", "join-cmd"));
    CHECK(parses("{\"cmd\":\"delete\",\"cid\":3}", "delete"));
    CHECK(parses("{\"cmd\":\"delete\",\"cid\":1}", "delete"));
    CHECK(parses("{\"cmd\":\"delete\",\"cid\":65535}", "delete"));
    CHECK(parses("{\"cmd\":\"delete\",\"cid\":3.0}", "delete"));
    CHECK(parses("{\"cmd\":\"promote\"}", "promote"));
    CHECK(parses("{\"cmd\":\"promote\",\"force\":false}", "promote"));
    CHECK(parses("{\"cmd\":\"promote\",\"force\":true}", "promote"));
    CHECK(parses("{\"cmd\":\"sync\"}", "sync"));
    CHECK(parses("{\"cmd\":\"sync\",\"master_ip\":\"10.0.0.2\"}", "sync"));
    CHECK(parses(join, "join"));
    CHECK(parses("{\"cmd\":\"update-fingerprints\"}", "update-fingerprints"));
    CHECK(parses("{\"cmd\":\"update-fingerprints\",\"cid\":2,"
                 "\"fingerprint\":\"AB:CD\"}", "update-fingerprints"));
    CHECK(parses("{\"cmd\":\"files-publish\",\"confirm\":true}",
                 "files-publish"));
    /* the table's pmgcm-only commands are no requests */
    CHECK(REFUSED("{\"cmd\":\"keygen\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"help\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"files\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"update-fingerprints\",\"cid\":0,"
                  "\"fingerprint\":\"AB\"}", -EINVAL,
                  "update-fingerprints: \"cid\" must be an integer"));
    CHECK(REFUSED("{\"cmd\":\"update-fingerprints\",\"fingerprint\":"
                  "\"A B\"}", -EINVAL, "printable ASCII"));

    /* the handler gets the whole object, decoded */
    REQUIRE(pmm_ctl_parse_request(join, strlen(join), &cmd, &args, err,
                                  sizeof(err)) == 0);
    CHECK(strcmp(cmd, "join") == 0);
    CHECK(strcmp(pmm_json_get(args, "ip")->str, "10.0.0.1") == 0);
    CHECK(strcmp(pmm_json_get(args, "fingerprint")->str, "AB:CD:EF") == 0);
    CHECK(strcmp(pmm_json_get(args, "password")->str, "s\xc3\xa9" "cr\"et") ==
          0);
    CHECK(strcmp(pmm_json_get(args, "cmd")->str, "join") == 0);
    pmm_json_free(args);

    /* a 1024-byte password of quotes still fits in one request */
    {
        const char *pre = "{\"cmd\":\"create\",\"password\":\"";
        size_t o = strlen(pre);
        memcpy(pw, pre, o);
        for (int i = 0; i < PMM_CTL_PASSWORD_MAX; i++) {
            pw[o++] = '\\';
            pw[o++] = '"';
        }
        memcpy(pw + o, "\"}\n", 4);
        (void)o;
    }
    /* 28 + 2048 + 3 bytes */
    CHECK(parses(pw, "create"));
}

static void test_parse_bad(void)
{
    char buf[8192];
    size_t o;

    /* not JSON / not an object */
    CHECK(REFUSED("{", -EINVAL, "bad request"));
    CHECK(REFUSED("{cmd:status}", -EINVAL, "bad request"));
    CHECK(REFUSED("{\"cmd\":\"status\"", -EINVAL, "bad request"));
    CHECK(REFUSED("{\"cmd\":\"status\"}}", -EINVAL, "trailing data"));
    CHECK(REFUSED("{\"cmd\":\"status\"} {\"cmd\":\"ping\"}", -EINVAL,
                  "trailing data"));
    CHECK(REFUSED("{\"cmd\":'status'}", -EINVAL, "bad request"));
    CHECK(REFUSED("[\"status\"]", -EINVAL, "must be a JSON object"));
    CHECK(REFUSED("[]", -EINVAL, "must be a JSON object"));
    CHECK(REFUSED("{\"cmd\":\"st\xff\"}", -EINVAL, "invalid UTF-8"));
    CHECK(REFUSED("{\"cmd\":\"st\xc3\"}", -EINVAL, "invalid UTF-8"));
    CHECK(REFUSED("{\"cmd\":\"status\",\t\"x\":1}", -EINVAL, "control byte"));
    CHECK(REFUSED("\x01\x02garbage", -EINVAL, "control byte"));
    CHECK(REFUSED("GET / HTTP/1.1", -ENOENT, "unknown command"));

    /* depth bombs: arrays, objects, and under a valid command */
    o = 0;
    for (int i = 0; i < 2000; i++)
        buf[o++] = '[';
    buf[o] = '\0';
    CHECK(REFUSED(buf, -EINVAL, "nested too deeply"));
    o = 0;
    for (int i = 0; i < 800; i++) {
        memcpy(buf + o, "{\"a\":", 5);
        o += 5;
    }
    buf[o] = '\0';
    CHECK(REFUSED(buf, -EINVAL, "nested too deeply"));
    o = (size_t)snprintf(buf, sizeof(buf), "{\"cmd\":\"status\",\"x\":");
    for (int i = 0; i < 40; i++)
        buf[o++] = '[';
    for (int i = 0; i < 40; i++)
        buf[o++] = ']';
    buf[o++] = '}';
    buf[o] = '\0';
    CHECK(REFUSED(buf, -EINVAL, "nested too deeply"));
    /* shallow enough to parse: refused as an unknown argument */
    o = (size_t)snprintf(buf, sizeof(buf), "{\"cmd\":\"status\",\"x\":");
    for (int i = 0; i < 20; i++)
        buf[o++] = '[';
    for (int i = 0; i < 20; i++)
        buf[o++] = ']';
    buf[o++] = '}';
    buf[o] = '\0';
    CHECK(REFUSED(buf, -EINVAL, "status: unknown argument \"x\""));

    /* cmd */
    CHECK(REFUSED("{}", -EINVAL, "missing \"cmd\""));
    CHECK(REFUSED("{\"ip\":\"10.0.0.1\"}", -EINVAL, "missing \"cmd\""));
    CHECK(REFUSED("{\"cmd\":1}", -EINVAL, "\"cmd\" must be a string"));
    CHECK(REFUSED("{\"cmd\":null}", -EINVAL, "\"cmd\" must be a string"));
    CHECK(REFUSED("{\"cmd\":[\"status\"]}", -EINVAL,
                  "\"cmd\" must be a string"));
    CHECK(REFUSED("{\"cmd\":\"nope\"}", -ENOENT, "unknown command \"nope\""));
    CHECK(REFUSED("{\"cmd\":\"STATUS\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"status\\u0000\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"a\\\"b\"}", -ENOENT, "unknown command"));
    CHECK(REFUSED("{\"cmd\":\"status\",\"cmd\":\"status\"}", -EINVAL,
                  "\"cmd\" given twice"));
    CHECK(REFUSED("{\"cmd\":\"status\",\"cmd\":\"join\"}", -EINVAL,
                  "\"cmd\" given twice"));
    CHECK(REFUSED("{\"cmd\":\"status\",\"cmd\\u0000x\":\"join\"}", -EINVAL,
                  "NUL in object key"));

    /* unknown and repeated arguments */
    CHECK(REFUSED("{\"cmd\":\"ping\",\"x\":1}", -EINVAL,
                  "ping: unknown argument \"x\""));
    CHECK(REFUSED("{\"cmd\":\"join-cmd\",\"ip\":\"10.0.0.1\"}", -EINVAL,
                  "join-cmd: unknown argument \"ip\""));
    CHECK(REFUSED("{\"cmd\":\"delete\",\"cid\":3,\"force\":true}", -EINVAL,
                  "delete: unknown argument \"force\""));
    CHECK(REFUSED("{\"cmd\":\"sync\",\"master-ip\":\"10.0.0.2\"}", -EINVAL,
                  "sync: unknown argument \"master-ip\""));
    CHECK(REFUSED("{\"cmd\":\"ping\",\"a b\":1}", -EINVAL,
                  "ping: unknown argument"));
    /* (the JSON reader refuses a duplicate key before the command sees it:
     * jansson would keep only the last) */
    CHECK(REFUSED("{\"cmd\":\"delete\",\"cid\":3,\"cid\":4}", -EINVAL,
                  "\"cid\" given twice"));
    CHECK(REFUSED("{\"cmd\":\"delete\",\"cid\":3,\"x\\\"y\":1,\"x\\\"y\":2}",
                  -EINVAL, "given twice"));

    /* missing required arguments */
    CHECK(REFUSED("{\"cmd\":\"create\"}", -EINVAL,
                  "create: missing \"password\""));
    CHECK(REFUSED("{\"cmd\":\"fingerprint\"}", -EINVAL,
                  "fingerprint: missing \"ip\""));
    CHECK(REFUSED("{\"cmd\":\"join\",\"fingerprint\":\"AB\",\"password\":"
                  "\"x\"}", -EINVAL, "join: missing \"ip\""));
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"password\":"
                  "\"x\"}", -EINVAL, "join: missing \"fingerprint\""));
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"fingerprint\":"
                  "\"AB\"}", -EINVAL, "join: missing \"password\""));
    CHECK(REFUSED("{\"cmd\":\"delete\"}", -EINVAL, "delete: missing \"cid\""));

    /* ip (a master address, port allowed) / master_ip (bare IP) */
    {
        static const char *bad_ips[] = {
            "1", "\"\"", "\"10.0.0\"", "\"10.0.0.256\"", "\"fe80::1%eth0\"",
            "\"localhost\"", "\" 10.0.0.1\"", "\"10.0.0.1\\u0000\"", "null",
            "true", "[\"10.0.0.1\"]", "{\"ip\":\"10.0.0.1\"}", "\"010.0.0.1\"",
            "\"1111:2222:3333:4444:5555:6666:7777:8888:9999\"",
            "\"10.0.0.1:0\"", "\"10.0.0.1:65536\"", "\"10.0.0.1:\"",
            "\"10.0.0.1:80x\"", "\"[::1\"", "\"[10.0.0.1]:7947\"",
            "\"[::1]:\"", "\"mail.example.com:7947\"",
        };
        static const char *ports[] = {
            "\"10.0.0.1:7957\"", "\"[fd00::1]:7957\"", "\"[::1]\"",
        };
        for (size_t i = 0; i < sizeof(bad_ips) / sizeof(bad_ips[0]); i++) {
            snprintf(buf, sizeof(buf), "{\"cmd\":\"fingerprint\",\"ip\":%s}",
                     bad_ips[i]);
            CHECK(REFUSED(buf, -EINVAL,
                          "fingerprint: \"ip\" must be an IPv4 or IPv6 "
                          "address, optionally with a port"));
            snprintf(buf, sizeof(buf), "{\"cmd\":\"sync\",\"master_ip\":%s}",
                     bad_ips[i]);
            CHECK(REFUSED(buf, -EINVAL,
                          "sync: \"master_ip\" must be an IPv4 or IPv6 "
                          "address"));
            snprintf(buf, sizeof(buf),
                     "{\"cmd\":\"join\",\"ip\":%s,\"fingerprint\":\"AB\","
                     "\"password\":\"x\"}", bad_ips[i]);
            CHECK(REFUSED(buf, -EINVAL, "join: \"ip\" must be"));
        }
        /* a port is for the master's node API only */
        for (size_t i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
            snprintf(buf, sizeof(buf), "{\"cmd\":\"fingerprint\",\"ip\":%s}",
                     ports[i]);
            CHECK(parses(buf, "fingerprint"));
            snprintf(buf, sizeof(buf),
                     "{\"cmd\":\"join\",\"ip\":%s,\"fingerprint\":\"AB\","
                     "\"password\":\"x\"}", ports[i]);
            CHECK(parses(buf, "join"));
            snprintf(buf, sizeof(buf), "{\"cmd\":\"sync\",\"master_ip\":%s}",
                     ports[i]);
            CHECK(REFUSED(buf, -EINVAL,
                          "sync: \"master_ip\" must be an IPv4 or IPv6 "
                          "address"));
        }
    }

    /* fingerprint */
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"fingerprint\":1,"
                  "\"password\":\"x\"}", -EINVAL,
                  "join: \"fingerprint\" must be a string of 1 to 128"));
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"fingerprint\":"
                  "\"\",\"password\":\"x\"}", -EINVAL,
                  "join: \"fingerprint\" must be a string of 1 to 128"));
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"fingerprint\":"
                  "\"AB CD\",\"password\":\"x\"}", -EINVAL,
                  "join: \"fingerprint\" must be printable ASCII"));
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"fingerprint\":"
                  "\"AB\\u00e9\",\"password\":\"x\"}", -EINVAL,
                  "join: \"fingerprint\" must be printable ASCII"));
    CHECK(REFUSED("{\"cmd\":\"join\",\"ip\":\"10.0.0.1\",\"fingerprint\":"
                  "\"AB\\u0000\",\"password\":\"x\"}", -EINVAL,
                  "join: \"fingerprint\" must be printable ASCII"));
    o = (size_t)snprintf(buf, sizeof(buf),
                         "{\"cmd\":\"join\",\"ip\":\"10.0.0.1\","
                         "\"password\":\"x\",\"fingerprint\":\"");
    memset(buf + o, 'A', PMM_CTL_FP_MAX);
    memcpy(buf + o + PMM_CTL_FP_MAX, "\"}", 3);
    CHECK(parses(buf, "join"));
    memset(buf + o, 'A', PMM_CTL_FP_MAX + 1);
    memcpy(buf + o + PMM_CTL_FP_MAX + 1, "\"}", 3);
    CHECK(REFUSED(buf, -EINVAL, "\"fingerprint\" must be a string of 1 to "
                                "128"));

    /* password */
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":\"\"}", -EINVAL,
                  "create: \"password\" must be a string of 1 to 1024 bytes"));
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":1234}", -EINVAL,
                  "create: \"password\" must be a string of 1 to 1024 bytes"));
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":null}", -EINVAL,
                  "create: \"password\" must be a string"));
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":[\"x\"]}", -EINVAL,
                  "create: \"password\" must be a string"));
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":\"a\\u0000b\"}", -EINVAL,
                  "create: \"password\" must not contain control"));
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":\"a\\tb\"}", -EINVAL,
                  "create: \"password\" must not contain control"));
    CHECK(REFUSED("{\"cmd\":\"create\",\"password\":\"a\\u007fb\"}", -EINVAL,
                  "create: \"password\" must not contain control"));
    o = (size_t)snprintf(buf, sizeof(buf),
                         "{\"cmd\":\"create\",\"password\":\"");
    memset(buf + o, 'p', PMM_CTL_PASSWORD_MAX);
    memcpy(buf + o + PMM_CTL_PASSWORD_MAX, "\"}", 3);
    CHECK(parses(buf, "create"));
    memset(buf + o, 'p', PMM_CTL_PASSWORD_MAX + 1);
    memcpy(buf + o + PMM_CTL_PASSWORD_MAX + 1, "\"}", 3);
    CHECK(REFUSED(buf, -EINVAL, "\"password\" must be a string of 1 to 1024"));
    /* 1024 characters but 2048 bytes */
    o = (size_t)snprintf(buf, sizeof(buf),
                         "{\"cmd\":\"create\",\"password\":\"");
    for (int i = 0; i < PMM_CTL_PASSWORD_MAX; i++) {
        buf[o++] = '\xc3';
        buf[o++] = '\xa9';
    }
    memcpy(buf + o, "\"}", 3);
    CHECK(REFUSED(buf, -EINVAL, "\"password\" must be a string of 1 to 1024"));

    /* cid */
    {
        static const char *bad_cids[] = {
            "0", "65536", "-1", "1.5", "\"3\"", "true", "null", "1e10",
            "-0.5", "[3]", "99999999999999999999",
        };
        for (size_t i = 0; i < sizeof(bad_cids) / sizeof(bad_cids[0]); i++) {
            snprintf(buf, sizeof(buf), "{\"cmd\":\"delete\",\"cid\":%s}",
                     bad_cids[i]);
            CHECK(REFUSED(buf, -EINVAL,
                          "delete: \"cid\" must be an integer from 1 to "
                          "65535"));
        }
    }
    CHECK(REFUSED("{\"cmd\":\"delete\",\"cid\":1e999}", -EINVAL,
                  "bad request: number out of range"));

    /* force */
    CHECK(REFUSED("{\"cmd\":\"promote\",\"force\":\"yes\"}", -EINVAL,
                  "promote: \"force\" must be true or false"));
    CHECK(REFUSED("{\"cmd\":\"promote\",\"force\":1}", -EINVAL,
                  "promote: \"force\" must be true or false"));
    CHECK(REFUSED("{\"cmd\":\"promote\",\"force\":null}", -EINVAL,
                  "promote: \"force\" must be true or false"));

    /* over the line limit, even as valid JSON */
    o = (size_t)snprintf(buf, sizeof(buf),
                         "{\"cmd\":\"create\",\"password\":\"");
    memset(buf + o, ' ', PMM_CTL_REQ_MAX);
    memcpy(buf + o + PMM_CTL_REQ_MAX, "\"}\n", 4);
    CHECK(REFUSED(buf, -E2BIG, "request too long"));
}

/* The JSON reader details the protocol relies on. */
static void test_json_details(void)
{
    pmm_json *j = NULL;
    pmm_buf b;
    char err[128];
    char *p0;

    CHECK(pmm_json_parse("{\"a\\u0000\":1}", 13, &j, err, sizeof(err)) ==
          -EINVAL);
    CHECK(strstr(err, "NUL in object key") != NULL);
    CHECK(pmm_json_parse("{\"a\":\"x\\u0000y\"}", 16, &j, err,
                         sizeof(err)) == 0);
    CHECK(j != NULL && pmm_json_get(j, "a")->str_len == 3);
    pmm_json_free(j);

    /* empty strings are empty C strings too */
    {
        const char *doc = "{\"a\":\"\",\"\":1}";
        CHECK(pmm_json_parse(doc, strlen(doc), &j, err, sizeof(err)) == 0);
    }
    CHECK(j != NULL && pmm_json_get(j, "a")->str_len == 0 &&
          strlen(pmm_json_get(j, "a")->str) == 0 &&
          pmm_json_get(j, "") != NULL);
    pmm_json_free(j);
    pmm_buf_init(&b, 64);
    CHECK(pmm_buf_reserve(&b, 32) == 0 && b.p != NULL && b.p[0] == '\0');
    pmm_buf_free(&b);

    CHECK(pmm_utf8_valid("", 0));
    CHECK(pmm_utf8_valid("abc\xc3\xa9", 5));
    CHECK(!pmm_utf8_valid("\xc3", 1));
    CHECK(!pmm_utf8_valid("\xc0\x80", 2));       /* overlong NUL */
    CHECK(!pmm_utf8_valid("\xed\xa0\x80", 3));   /* surrogate */
    CHECK(!pmm_utf8_valid("\xff", 1));

    /* reserve: adding up to the reserved size never moves the buffer */
    pmm_buf_init(&b, 8192);
    CHECK(pmm_buf_reserve(&b, 4096) == 0);
    p0 = b.p;
    for (int i = 0; i < 64; i++)
        pmm_buf_add(&b, "0123456789abcdef0123456789abcdef0123456789abcdef"
                        "0123456789abcdef", 64);
    CHECK(b.p == p0 && b.len == 4096 && b.err == 0);
    pmm_buf_wipe(&b);
    CHECK(b.p == NULL && b.len == 0 && b.cap == 0);
    pmm_buf_init(&b, 16);
    CHECK(pmm_buf_reserve(&b, 17) == -E2BIG);
    pmm_buf_wipe(&b);

    /* a status row in state S (syncing) reads back */
    {
        const char *row = "[{\"name\":\"n\",\"cid\":2,\"ip\":\"10.0.0.2\","
                          "\"role\":\"node\",\"state\":\"S\",\"uptime\":5,"
                          "\"load\":0.5,\"mem\":1,\"disk\":2}]";
        pmm_status_row *rows = NULL;
        size_t n = 0;
        REQUIRE(pmm_json_parse(row, strlen(row), &j, err, sizeof(err)) == 0);
        CHECK(pmm_status_from_json(j, &rows, &n, err, sizeof(err)) == 0);
        CHECK(n == 1 && rows != NULL && rows[0].state == 'S' &&
              rows[0].cid == 2 && strcmp(rows[0].role, "node") == 0);
        free(rows);
        pmm_json_free(j);
    }
}

static void test_error_reply(void)
{
    pmm_buf b;

    pmm_buf_init(&b, 1024);
    CHECK(pmm_ctl_error_reply(&b, "bad \"thing\"\n") == 0);
    CHECK(strcmp(b.p, "{\"ok\":false,\"error\":\"bad \\\"thing\\\"\\n\"}\n") == 0);
    pmm_buf_free(&b);
}

/* The answers are written by jansson (common/reply.c): members in the
 * order given, hostile strings escaped, bytes that are not UTF-8 turned
 * into U+FFFD, and every answer parses back to what was put in. */
static bool reparses(const pmm_buf *b, const char *key, const char *want)
{
    pmm_json *j = NULL;
    char err[128];
    bool ok = b->len > 0 && b->p[b->len - 1] == '\n' &&
              memchr(b->p, '\n', b->len) == b->p + b->len - 1 &&
              pmm_json_parse(b->p, b->len, &j, err, sizeof(err)) == 0;
    const pmm_json *v = ok ? pmm_json_get(j, key) : NULL;

    ok = v != NULL && v->type == PMM_JSON_STRING &&
         v->str_len == strlen(want) && memcmp(v->str, want, v->str_len) == 0;
    if (!ok)
        printf("#   %s did not parse back to %s: %s", key, want,
               b->p ? b->p : "(nothing)");
    pmm_json_free(j);
    return ok;
}

static void test_ok_reply(void)
{
    /* quotes, backslash, every kind of control character (jansson writes
     * \u001F where pmm_json_str wrote \u001f), markup, DEL (as it is; was
     * \u007f), a valid 2-byte sequence, then bytes that are not UTF-8: a
     * lone continuation byte, a cut 3-byte sequence, an overlong '/', a
     * surrogate, 0xff (raw U+FFFD; was \ufffd) */
    static const char hostile[] =
        "a\"b\\c\n\r\t\b\f\x01\x1f</script><script>&'\x7f\xc3\xa9"
        "|\x80|\xe2\x82|\xc0\xaf|\xed\xa0\x80|\xff";
    static const char written[] =
        "a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001F</script><script>&'\x7f"
        "\xc3\xa9|\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf"
        "\xbd|\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd";
    static const char parsed[] =
        "a\"b\\c\n\r\t\b\f\x01\x1f</script><script>&'\x7f\xc3\xa9"
        "|\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd";
    char want[512];
    pmm_buf b;

    pmm_buf_init(&b, 4096);
    /* members after "ok", in the order given */
    CHECK(pmm_ctl_ok_reply(&b, json_pack("{s:I, s:o, s:b, s:[]}", "cid",
                                         (json_int_t)4294967295u, "name",
                                         pmm_jstrz("pmg5"), "updated", 0,
                                         "nodes")) == 0);
    CHECK(strcmp(b.p, "{\"ok\":true,\"cid\":4294967295,\"name\":\"pmg5\","
                      "\"updated\":false,\"nodes\":[]}\n") == 0);
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_ok_reply(&b, json_object()) == 0);
    CHECK(strcmp(b.p, "{\"ok\":true}\n") == 0);

    /* a hostile name: escaped, not-UTF-8 bytes replaced, valid JSON */
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_ok_reply(&b, json_pack("{s:o}", "name",
                                         pmm_jstr(hostile,
                                                  sizeof(hostile) - 1))) ==
          0);
    snprintf(want, sizeof(want), "{\"ok\":true,\"name\":\"%s\"}\n", written);
    CHECK(strcmp(b.p, want) == 0);
    if (strcmp(b.p, want) != 0)
        printf("#   got  %s#   want %s", b.p, want);
    CHECK(reparses(&b, "name", parsed));
    /* a NUL inside: kept as \u0000 */
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_ok_reply(&b, json_pack("{s:o}", "k",
                                         pmm_jstr("a\0b", 3))) == 0);
    CHECK(strcmp(b.p, "{\"ok\":true,\"k\":\"a\\u0000b\"}\n") == 0);

    /* the same in an error */
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_error_reply(&b, hostile) == 0);
    snprintf(want, sizeof(want), "{\"ok\":false,\"error\":\"%s\"}\n",
             written);
    CHECK(strcmp(b.p, want) == 0);
    CHECK(reparses(&b, "error", parsed));

    /* a constructor that failed (NULL), a non-object, an "ok" member:
     * refused, the reference released (ASan/valgrind see no leak), the
     * error left in b->err */
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_ok_reply(&b, NULL) == -ENOMEM);
    CHECK(b.err == -ENOMEM);
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_ok_reply(&b, json_pack("[i]", 1)) == -EINVAL);
    CHECK(b.err == -EINVAL && b.len == 0);
    pmm_buf_reset(&b);
    CHECK(pmm_ctl_ok_reply(&b, json_pack("{s:b}", "ok", 0)) == -EINVAL);
    pmm_buf_reset(&b);
    /* json_pack with a NULL "o" in the middle: NULL, the others released
     * (the contract the callers rely on) */
    CHECK(json_pack("{s:o, s:o, s:o}", "a", pmm_jstrz("x"), "b", NULL, "c",
                    pmm_jstrz("y")) == NULL);
    /* pmm_jadd: a NULL anywhere in the chain gives NULL, nothing leaks */
    CHECK(pmm_jadd(pmm_jadd(json_object(), "a", NULL), "b",
                   pmm_jstrz("x")) == NULL);
    CHECK(pmm_jadd(NULL, "a", pmm_jstrz("x")) == NULL);
    {
        json_t *o = pmm_jadd(pmm_jadd(json_object(), "a", json_true()), "b",
                             pmm_jstrz("x"));
        CHECK(pmm_ctl_ok_reply(&b, o) == 0);
        CHECK(strcmp(b.p, "{\"ok\":true,\"a\":true,\"b\":\"x\"}\n") == 0);
    }
    /* too long for the buffer: -E2BIG, no partial answer is sent (the
     * callers check the return value) */
    {
        char big[5000];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        pmm_buf_reset(&b);
        CHECK(pmm_ctl_ok_reply(&b, json_pack("{s:o}", "m", pmm_jstrz(big)))
              == -E2BIG);
        CHECK(b.err == -E2BIG);
    }
    pmm_buf_free(&b);
}

/* ---- live socket ------------------------------------------------------------ */

static char dir[64], sock_path[96];
static int handler_calls;
static uv_loop_t *live_loop;
static pmm_ctl_req *held_req; /* "delete": answered only after close */
static int late_timers;       /* pending "later" timers */

typedef struct later {
    uv_timer_t t;
    pmm_ctl_req *req;
    char json[128];
} later;

static void later_closed(uv_handle_t *h)
{
    free(h->data);
}

static void later_cb(uv_timer_t *t)
{
    later *l = t->data;

    pmm_ctl_reply(l->req, l->json, strlen(l->json));
    late_timers--;
    uv_close((uv_handle_t *)t, later_closed);
}

static void reply_later(pmm_ctl_req *req, uint64_t ms, const char *json)
{
    later *l = calloc(1, sizeof(*l));

    if (l == NULL) {
        pmm_ctl_reply_error(req, "out of memory");
        return;
    }
    l->req = req;
    snprintf(l->json, sizeof(l->json), "%s", json);
    uv_timer_init(live_loop, &l->t);
    l->t.data = l;
    late_timers++;
    uv_timer_start(&l->t, later_cb, ms, 0);
}

static void handler(void *ud, pmm_ctl_req *req, const char *cmd,
                    const pmm_json *args)
{
    handler_calls++;
    if (args == NULL || args->type != PMM_JSON_OBJECT) {
        pmm_ctl_reply_error(req, "test: args missing");
        return;
    }
    if (strcmp(cmd, "status") == 0) {
        const char *s = "{\"ok\":true,\"members\":[]}";
        pmm_ctl_reply(req, s, strlen(s)); /* '\n' added */
    } else if (strcmp(cmd, "ping") == 0) {
        pmm_ctl_reply(req, NULL, 0); /* the generic error path */
    } else if (strcmp(cmd, "join") == 0) {
        pmm_ctl_reply_error(req, "wrong password for %s",
                            pmm_json_get(args, "ip")->str);
    } else if (strcmp(cmd, "fingerprint") == 0) {
        pmm_ctl_reply_ok_with(req, json_pack("{s:s}", "fingerprint",
                                             "AB:CD"));
    } else if (strcmp(cmd, "join-cmd") == 0) {
        reply_later(req, 100, "{\"ok\":true,\"command\":\"x\"}\n");
    } else if (strcmp(cmd, "create") == 0) {
        /* longer than the idle timeout: a pending request is not idle */
        reply_later(req, PMM_CTL_IDLE_MS + 1500, "{\"ok\":true,\"cid\":1}");
    } else if (strcmp(cmd, "promote") == 0) {
        /* its client is gone by then */
        reply_later(req, 300, "{\"ok\":true}");
    } else if (strcmp(cmd, "delete") == 0) {
        held_req = req;
    } else if (strcmp(cmd, "sync") == 0) {
        /* for the pending cap test: answered after the cap */
        reply_later(req, 1000, "{\"ok\":true}");
    } else {
        pmm_ctl_reply_ok(req);
    }
}

static int connect_sock(void)
{
    struct sockaddr_un sa;
    struct timeval tv = {.tv_sec = 15};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;

    for (;;) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n == cap - 1)
            break;
    }
    buf[n] = '\0';
    return n;
}

/* one request, whole answer */
static void ask(const void *req, size_t len, bool half_close, char *out,
                size_t cap)
{
    int fd = connect_sock();

    out[0] = '\0';
    if (fd < 0)
        return;
    /* the server may answer (e.g. "permission denied") and close before
     * the request is written: no SIGPIPE, and read the answer anyway */
    if (len > 0)
        (void)!send(fd, req, len, MSG_NOSIGNAL);
    if (half_close)
        shutdown(fd, SHUT_WR);
    read_all(fd, out, cap);
    close(fd);
}
#define ASK(s, out) ask((s), strlen(s), false, (out), sizeof(out))

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct results {
    char status[256], ping[256], unknown[256], empty[256], eof_req[256];
    char toolong[256], exact_max[256], split[256];
    char json_status[256], join[256], fp[256], later[256];
    char bad_cmd[256], bad_arg[256], bomb[256], garbage[256];
    char created[256], deleted[256];
    double later_s, created_s;
    int capped_eof, capped_total;
    double idle_s;
    bool idle_eof;
} results;

static results res;
static uv_async_t done_async;

static void *client_thread(void *arg)
{
    static char big[PMM_CTL_REQ_MAX + 100];
    double t0;
    int fd_create, fd_delete;

    ASK("status\n", res.status);
    ASK("ping\n", res.ping);
    ASK("hello\n", res.unknown);
    ASK("\n", res.empty);
    ask("status", 6, true, res.eof_req, sizeof(res.eof_req));
    memset(big, 'x', sizeof(big));
    ask(big, sizeof(big), false, res.toolong, sizeof(res.toolong));
    memset(big, ' ', PMM_CTL_REQ_MAX);
    memcpy(big + PMM_CTL_REQ_MAX - 7, "status\n", 7);
    ask(big, PMM_CTL_REQ_MAX, false, res.exact_max, sizeof(res.exact_max));
    {
        /* a request in pieces */
        int fd = connect_sock();
        if (fd >= 0) {
            if (write(fd, "sta", 3) == 3) {
                usleep(50000);
                if (write(fd, "tus\nignored", 11) == 11)
                    read_all(fd, res.split, sizeof(res.split));
            }
            close(fd);
        }
    }
    ASK("{\"cmd\":\"status\"}\n", res.json_status);
    ASK("{\"cmd\":\"join\",\"ip\":\"10.0.0.9\",\"fingerprint\":\"AB\","
        "\"password\":\"pw\"}\n", res.join);
    ASK("{\"cmd\":\"fingerprint\",\"ip\":\"fd00::9\"}\n", res.fp);
    t0 = now_s();
    ASK("{\"cmd\":\"join-cmd\"}\n", res.later);
    res.later_s = now_s() - t0;

    /* refused before the handler */
    ASK("{\"cmd\":\"nope\"}\n", res.bad_cmd);
    ASK("{\"cmd\":\"delete\",\"cid\":0}\n", res.bad_arg);
    memset(big, '[', 3000);
    big[3000] = '\n';
    ask(big, 3001, false, res.bomb, sizeof(res.bomb));
    {
        /* a TLS ClientHello's first bytes */
        static const char hello[] = "\x16\x03\x01\x02\x00\x01\x00\x01"
                                    "\xfc\x03\x03\n";
        ask(hello, sizeof(hello) - 1, false, res.garbage,
            sizeof(res.garbage));
    }

    /* a client gone before its (later) answer */
    {
        int fd = connect_sock();
        const char *r = "{\"cmd\":\"promote\"}\n";
        if (fd >= 0) {
            (void)!send(fd, r, strlen(r), MSG_NOSIGNAL);
            usleep(50000);
            close(fd);
        }
        usleep(400000); /* past the answer */
    }

    /* client cap: 40 idle connections, the ones over the cap are closed at
     * once (EOF), the rest are held until they idle out */
    {
        int fds[40];
        for (int i = 0; i < 40; i++)
            fds[i] = connect_sock();
        usleep(300000);
        for (int i = 0; i < 40; i++) {
            char c;
            ssize_t r;
            if (fds[i] < 0)
                continue;
            res.capped_total++;
            r = recv(fds[i], &c, 1, MSG_DONTWAIT);
            if (r == 0)
                res.capped_eof++;
        }
        for (int i = 0; i < 40; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        usleep(300000); /* let the server see those EOFs */
    }

    /* pending across the close: answered "shutting down" at close */
    fd_delete = connect_sock();
    if (fd_delete >= 0)
        (void)!send(fd_delete, "{\"cmd\":\"delete\",\"cid\":3}\n", 25,
                    MSG_NOSIGNAL);
    /* pending longer than the idle timeout, while an idle one idles out */
    t0 = now_s();
    fd_create = connect_sock();
    if (fd_create >= 0) {
        const char *r = "{\"cmd\":\"create\",\"password\":\"x\"}\n";
        (void)!send(fd_create, r, strlen(r), MSG_NOSIGNAL);
    }
    /* idle timeout */
    {
        double a = now_s();
        int fd = connect_sock();
        char c;
        if (fd >= 0) {
            res.idle_eof = read(fd, &c, 1) == 0;
            close(fd);
        }
        res.idle_s = now_s() - a;
    }
    if (fd_create >= 0) {
        read_all(fd_create, res.created, sizeof(res.created));
        res.created_s = now_s() - t0;
        close(fd_create);
    }
    uv_async_send(&done_async);
    if (fd_delete >= 0) {
        read_all(fd_delete, res.deleted, sizeof(res.deleted));
        close(fd_delete);
    }
    return NULL;
}

static pmm_ctl *live_ctl;

static void done_cb(uv_async_t *a)
{
    pmm_ctl_close(live_ctl);
    /* the handler answers after the server closed: only freed */
    if (held_req != NULL)
        pmm_ctl_reply_ok_with(held_req, json_pack("{s:i}", "cid", 3));
    held_req = NULL;
    uv_close((uv_handle_t *)a, NULL);
}

static void test_live_socket(void)
{
    uv_loop_t loop;
    pthread_t th;
    char err[256];
    struct stat st;

    REQUIRE(uv_loop_init(&loop) == 0);
    live_loop = &loop;
    REQUIRE(pmm_ctl_start(&live_ctl, &loop, sock_path, handler, NULL, err,
                          sizeof(err)) == 0);
    REQUIRE(stat(sock_path, &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    REQUIRE(uv_async_init(&loop, &done_async, done_cb) == 0);
    REQUIRE(pthread_create(&th, NULL, client_thread, NULL) == 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK(uv_loop_close(&loop) == 0);
    CHECK(access(sock_path, F_OK) != 0); /* removed at close */
    CHECK_EQ_INT(late_timers, 0);

    CHECK(strcmp(res.status, "{\"ok\":true,\"members\":[]}\n") == 0);
    CHECK(strcmp(res.ping, "{\"ok\":false,\"error\":\"internal error\"}\n") == 0);
    CHECK(strcmp(res.unknown, "{\"ok\":false,\"error\":\"unknown command\"}\n") == 0);
    CHECK(strcmp(res.empty, "{\"ok\":false,\"error\":\"empty request\"}\n") == 0);
    CHECK(strcmp(res.eof_req, res.status) == 0);
    CHECK(strcmp(res.toolong, "{\"ok\":false,\"error\":\"request too long\"}\n") == 0);
    CHECK(strcmp(res.exact_max, res.status) == 0);
    CHECK(strcmp(res.split, res.status) == 0);
    CHECK(strcmp(res.json_status, res.status) == 0);
    CHECK(strcmp(res.join, "{\"ok\":false,\"error\":\"wrong password for "
                           "10.0.0.9\"}\n") == 0);
    CHECK(strcmp(res.fp, "{\"ok\":true,\"fingerprint\":\"AB:CD\"}\n") == 0);
    CHECK(strcmp(res.later, "{\"ok\":true,\"command\":\"x\"}\n") == 0);
    printf("# later answer after %.3f s\n", res.later_s);
    CHECK(res.later_s >= 0.09 && res.later_s < 2);
    CHECK(strcmp(res.bad_cmd, "{\"ok\":false,\"error\":\"unknown command "
                              "\\\"nope\\\"\"}\n") == 0);
    CHECK(strcmp(res.bad_arg, "{\"ok\":false,\"error\":\"delete: \\\"cid\\\" "
                              "must be an integer from 1 to 65535\"}\n") == 0);
    CHECK(strstr(res.bomb, "nested too deeply") != NULL);
    CHECK(strcmp(res.garbage, "{\"ok\":false,\"error\":\"request contains a "
                              "control byte\"}\n") == 0);
    printf("# pending create answered after %.2f s (idle timeout %d ms)\n",
           res.created_s, PMM_CTL_IDLE_MS);
    CHECK(strcmp(res.created, "{\"ok\":true,\"cid\":1}\n") == 0);
    CHECK(res.created_s > PMM_CTL_IDLE_MS / 1000.0 + 1);
    CHECK(strcmp(res.deleted, "{\"ok\":false,\"error\":\"pmgclusterd is "
                              "shutting down\"}\n") == 0);
    printf("# capped: %d of %d connections closed at once\n", res.capped_eof,
           res.capped_total);
    CHECK_EQ_INT(res.capped_total, 40);
    CHECK_EQ_INT(res.capped_eof, 40 - PMM_CTL_CLIENTS_MAX);
    printf("# idle client dropped after %.2f s\n", res.idle_s);
    CHECK(res.idle_eof);
    CHECK(res.idle_s > PMM_CTL_IDLE_MS / 1000.0 - 0.5 &&
          res.idle_s < PMM_CTL_IDLE_MS / 1000.0 + 2);
    /* status x5, ping, join, fingerprint, join-cmd, promote, delete,
     * create: every valid request, and none of the refused ones */
    CHECK_EQ_INT(handler_calls, 12);
}

/* ---- the pending cap ------------------------------------------------------------ */

static pmm_ctl *cap_ctl;
static char cap_answer[256];
static double cap_s;

static void *cap_thread(void *arg)
{
    double t0 = now_s();

    ASK("{\"cmd\":\"sync\"}\n", cap_answer);
    cap_s = now_s() - t0;
    uv_async_send(&done_async);
    return NULL;
}

static void cap_done_cb(uv_async_t *a)
{
    pmm_ctl_close(cap_ctl);
    uv_close((uv_handle_t *)a, NULL);
}

static void test_pending_cap(void)
{
    uv_loop_t loop;
    pthread_t th;
    char err[256];

    REQUIRE(uv_loop_init(&loop) == 0);
    live_loop = &loop;
    REQUIRE(pmm_ctl_start(&cap_ctl, &loop, sock_path, handler, NULL, err,
                          sizeof(err)) == 0);
    pmm_ctl_set_pending_timeout_ms(cap_ctl, 300);
    REQUIRE(uv_async_init(&loop, &done_async, cap_done_cb) == 0);
    REQUIRE(pthread_create(&th, NULL, cap_thread, NULL) == 0);
    /* runs until the handler's late answer (at 1 s) has been made */
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK(uv_loop_close(&loop) == 0);
    CHECK_EQ_INT(late_timers, 0);
    printf("# unanswered request timed out after %.2f s\n", cap_s);
    CHECK(strcmp(cap_answer, "{\"ok\":false,\"error\":\"timed out\"}\n") == 0);
    CHECK(cap_s > 0.25 && cap_s < 0.9);
}

/* ---- peer credentials ------------------------------------------------------------ */

static pmm_ctl *cred_ctl;
static char cred_answer[256];
static int cred_connect_errno;
static const char *cred_skip;

/* As root: a child that becomes uid/gid 65534 asks (first through the
 * 0600 file mode, then with the mode opened up, to reach SO_PEERCRED).
 * Else: the server was told to serve another uid than ours. */
static void *cred_thread(void *arg)
{
    if (geteuid() == 0) {
        int up[2], down[2]; /* child -> parent, parent -> child */
        pid_t pid;
        if (pipe(up) != 0 || pipe(down) != 0) {
            cred_skip = "pipe failed";
            goto out;
        }
        pid = fork();
        if (pid == 0) {
            char out[512];
            int e1 = 0, fd;
            close(up[0]);
            close(down[1]);
            if (setgroups(0, NULL) != 0 || setgid(65534) != 0 ||
                setuid(65534) != 0 || getuid() != 65534) {
                snprintf(out, sizeof(out), "SETUID %s\n", strerror(errno));
                (void)!write(up[1], out, strlen(out));
                _exit(0);
            }
            /* the file mode (0600) stops it first */
            fd = connect_sock();
            if (fd >= 0)
                close(fd);
            else
                e1 = errno;
            snprintf(out, sizeof(out), "%d\n", e1);
            (void)!write(up[1], out, strlen(out));
            /* then, with the mode opened up, SO_PEERCRED */
            if (read(down[0], out, 1) != 1)
                _exit(1);
            ASK("status\n", out);
            (void)!write(up[1], out, strlen(out));
            _exit(0);
        }
        close(up[1]);
        close(down[0]);
        {
            char buf[600];
            size_t n = 0;
            /* first line: the setuid failure, or the connect errno */
            while (n < sizeof(buf) - 1 && read(up[0], buf + n, 1) == 1)
                if (buf[n++] == '\n')
                    break;
            buf[n] = '\0';
            if (strncmp(buf, "SETUID", 6) == 0) {
                static char why[160];
                buf[strcspn(buf, "\n")] = '\0';
                snprintf(why, sizeof(why),
                         "running as root but cannot become uid 65534 (%.60s), "
                         "so no refused peer can be made here", buf + 7);
                cred_skip = why;
            } else {
                cred_connect_errno = atoi(buf);
                chmod(sock_path, 0666);
                (void)!write(down[1], "g", 1);
                read_all(up[0], cred_answer, sizeof(cred_answer));
                chmod(sock_path, 0600);
            }
        }
        close(up[0]);
        close(down[1]);
        waitpid(pid, NULL, 0);
    } else {
        ASK("status\n", cred_answer);
    }
out:
    uv_async_send(&done_async);
    return NULL;
}

static void cred_done_cb(uv_async_t *a)
{
    pmm_ctl_close(cred_ctl);
    uv_close((uv_handle_t *)a, NULL);
}

static void test_peer_cred(void)
{
    uv_loop_t loop;
    pthread_t th;
    char err[256];

    REQUIRE(uv_loop_init(&loop) == 0);
    live_loop = &loop;
    REQUIRE(pmm_ctl_start(&cred_ctl, &loop, sock_path, handler, NULL, err,
                          sizeof(err)) == 0);
    if (geteuid() != 0)
        pmm_ctl_set_peer_uid(cred_ctl, geteuid() + 1); /* not us */
    REQUIRE(uv_async_init(&loop, &done_async, cred_done_cb) == 0);
    REQUIRE(pthread_create(&th, NULL, cred_thread, NULL) == 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK(uv_loop_close(&loop) == 0);
    if (cred_skip != NULL) {
        printf("# %s\n", cred_skip);
        skip_reason = cred_skip;
        return;
    }
    printf("# %s client got: %s", geteuid() == 0 ? "uid 65534" : "other-uid",
           cred_answer[0] ? cred_answer : "(nothing)\n");
    CHECK(strcmp(cred_answer,
                 "{\"ok\":false,\"error\":\"permission denied\"}\n") == 0);
    if (geteuid() == 0) {
        printf("# through mode 0600: %s\n", strerror(cred_connect_errno));
        CHECK_EQ_INT(cred_connect_errno, EACCES);
    }
}

static void test_stale_and_busy(void)
{
    uv_loop_t loop;
    pmm_ctl *c = NULL, *c2 = NULL;
    char err[256], path[160];
    struct sockaddr_un sa;
    int fd;

    REQUIRE(uv_loop_init(&loop) == 0);
    /* a stale socket file (nobody listening) is replaced */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    REQUIRE(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(fd);
    CHECK(pmm_ctl_start(&c, &loop, sock_path, handler, NULL, err,
                        sizeof(err)) == 0);
    /* a live one is not */
    CHECK(pmm_ctl_start(&c2, &loop, sock_path, handler, NULL, err,
                        sizeof(err)) == -EADDRINUSE);
    CHECK(strstr(err, "already listening") != NULL);
    pmm_ctl_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);

    /* a regular file is never removed */
    fd = open(sock_path, O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    close(fd);
    CHECK(pmm_ctl_start(&c2, &loop, sock_path, handler, NULL, err,
                        sizeof(err)) == -EEXIST);
    CHECK(strstr(err, "not a socket") != NULL);
    unlink(sock_path);

    /* parent directory created 0755 */
    snprintf(path, sizeof(path), "%s/sub/dir/x.sock", dir);
    c = NULL;
    CHECK(pmm_ctl_start(&c, &loop, path, handler, NULL, err, sizeof(err)) == 0);
    {
        struct stat st;
        char d[160];
        snprintf(d, sizeof(d), "%s/sub/dir", dir);
        CHECK(stat(d, &st) == 0 && (st.st_mode & 0777) == 0755);
    }
    if (c != NULL)
        pmm_ctl_close(c);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof(path), "%s/sub/dir", dir);
    rmdir(path);
    snprintf(path, sizeof(path), "%s/sub", dir);
    rmdir(path);

    /* bad paths */
    CHECK(pmm_ctl_start(&c2, &loop, "relative.sock", handler, NULL, err,
                        sizeof(err)) == -EINVAL);
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    CHECK(pmm_ctl_start(&c2, &loop, path, handler, NULL, err, sizeof(err)) ==
          -EINVAL);
    CHECK(uv_loop_close(&loop) == 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as pmgclusterd does (see pmm_ctl_start) */
    snprintf(dir, sizeof(dir), "/tmp/test_mctl.XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    chmod(dir, 0755); /* the uid-65534 child must reach the socket */
    snprintf(sock_path, sizeof(sock_path), "%s/ctl.sock", dir);
    TAP_RUN(test_parse_legacy);
    TAP_RUN(test_parse_good);
    TAP_RUN(test_parse_bad);
    TAP_RUN(test_json_details);
    TAP_RUN(test_error_reply);
    TAP_RUN(test_ok_reply);
    TAP_RUN(test_live_socket);
    TAP_RUN(test_pending_cap);
    TAP_RUN_SKIPPABLE(test_peer_cred);
    TAP_RUN(test_stale_and_busy);
    rmdir(dir);
    return tap_done();
}
