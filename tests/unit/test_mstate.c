/*
 * test_mstate.c - persistent identity in data_dir: generation bumps,
 * node_id creation/reuse, peers file, corrupt files.
 */
#include "membership/membership.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static char err[512];

static void put(const char *name, const char *text)
{
    char p[128];
    FILE *f;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    f = fopen(p, "w");
    if (f != NULL) {
        fputs(text, f);
        fclose(f);
    }
}

static int get(const char *name, char *buf, size_t cap)
{
    char p[128];
    FILE *f;
    size_t n;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    f = fopen(p, "r");
    if (f == NULL)
        return -1;
    n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return 0;
}

static void rm(const char *name)
{
    char p[128];

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    unlink(p);
}

static void test_generation_bumps(void)
{
    uint64_t g = 0;
    char buf[64];
    struct stat st;
    char p[128];

    rm("generation");
    for (uint64_t start = 1; start <= 3; start++) {
        CHECK(pmm_state_bump_generation(dir, &g, err, sizeof(err)) == 0);
        CHECK_EQ_INT(g, start);
    }
    REQUIRE(get("generation", buf, sizeof(buf)) == 0);
    CHECK(strcmp(buf, "3\n") == 0);
    snprintf(p, sizeof(p), "%s/generation", dir);
    REQUIRE(stat(p, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    snprintf(p, sizeof(p), "%s/.generation.tmp", dir);
    CHECK(access(p, F_OK) != 0); /* no temp file left behind */
}

static void test_generation_corrupt(void)
{
    static const char *const bad[] = {
        "abc\n", "", "\n", "12x\n", "-1\n", "1 2\n",
        "99999999999999999999999\n", "18446744073709551616\n",
    };
    uint64_t g = 77;
    char buf[64];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        put("generation", bad[i]);
        err[0] = '\0';
        CHECK(pmm_state_bump_generation(dir, &g, err, sizeof(err)) == -EINVAL);
        CHECK(strstr(err, "generation: corrupt") != NULL);
        CHECK_EQ_INT(g, 77);
        /* the corrupt file is left for the admin, not overwritten */
        REQUIRE(get("generation", buf, sizeof(buf)) == 0);
        CHECK(strcmp(buf, bad[i]) == 0);
    }
    put("generation", "18446744073709551615\n");
    CHECK(pmm_state_bump_generation(dir, &g, err, sizeof(err)) == -EOVERFLOW);
    put("generation", "41");       /* no newline is fine */
    CHECK(pmm_state_bump_generation(dir, &g, err, sizeof(err)) == 0);
    CHECK_EQ_INT(g, 42);
    {
        /* oversized */
        char big[5000];
        memset(big, '1', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        put("generation", big);
        CHECK(pmm_state_bump_generation(dir, &g, err, sizeof(err)) == -EINVAL);
    }
    rm("generation");
}

static void test_node_id(void)
{
    gsp_id a, b;
    bool created = false;
    char buf[64], hex[40];

    rm("node_id");
    CHECK(pmm_state_node_id(dir, &a, &created, err, sizeof(err)) == 0);
    CHECK(created);
    REQUIRE(get("node_id", buf, sizeof(buf)) == 0);
    CHECK_EQ_INT(strlen(buf), 33);
    CHECK(strcmp(buf, strcat(gsp_id_str(&a, hex, sizeof(hex)), "\n")) == 0);
    CHECK(pmm_state_node_id(dir, &b, &created, err, sizeof(err)) == 0);
    CHECK(!created);
    CHECK(memcmp(&a, &b, sizeof(a)) == 0);

    /* corrupt: never replaced */
    put("node_id", "not-hex\n");
    CHECK(pmm_state_node_id(dir, &b, &created, err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "node_id: corrupt") != NULL);
    REQUIRE(get("node_id", buf, sizeof(buf)) == 0);
    CHECK(strcmp(buf, "not-hex\n") == 0);
    put("node_id", "00112233445566778899aabbccddeeff00\n");
    CHECK(pmm_state_node_id(dir, &b, &created, err, sizeof(err)) == -EINVAL);
    put("node_id", "00112233445566778899AABBCCDDEEFF\r\n");
    CHECK(pmm_state_node_id(dir, &b, &created, err, sizeof(err)) == 0);
    CHECK(b.b[0] == 0x00 && b.b[15] == 0xff);
    rm("node_id");
}

static void test_peers(void)
{
    gsp_addr in[3], out[8];
    size_t n = 99, bad = 99;
    char buf[512], a[64];

    rm("peers");
    CHECK(pmm_state_read_peers(dir, out, 8, &n, &bad) == 0);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(bad, 0);
    REQUIRE(gsp_addr_parse(&in[0], "10.0.0.2:7946", 7946) == 0);
    REQUIRE(gsp_addr_parse(&in[1], "[fd00::3]:7000", 7946) == 0);
    REQUIRE(gsp_addr_parse(&in[2], "10.0.0.4:1", 7946) == 0);
    CHECK(pmm_state_write_peers(dir, in, 3) == 0);
    REQUIRE(get("peers", buf, sizeof(buf)) == 0);
    CHECK(strstr(buf, "10.0.0.2:7946\n[fd00::3]:7000\n10.0.0.4:1\n") != NULL);
    CHECK(pmm_state_read_peers(dir, out, 8, &n, &bad) == 0);
    REQUIRE(n == 3);
    for (size_t i = 0; i < 3; i++)
        CHECK(gsp_addr_eq(&in[i], &out[i]));
    /* junk lines are skipped and counted, duplicates dropped, max kept */
    put("peers", "# c\n\n10.0.0.9\nbanana\n10.0.0.9:7946\r\n  10.0.0.8:1\n"
                 "10.0.0.7:99999\n10.0.0.6\n10.0.0.5\n");
    CHECK(pmm_state_read_peers(dir, out, 3, &n, &bad) == 0);
    REQUIRE(n == 3);
    CHECK_EQ_INT(bad, 2);
    CHECK(strcmp(gsp_addr_str(&out[0], a, sizeof(a)), "10.0.0.9:7946") == 0);
    CHECK(strcmp(gsp_addr_str(&out[1], a, sizeof(a)), "10.0.0.8:1") == 0);
    CHECK(strcmp(gsp_addr_str(&out[2], a, sizeof(a)), "10.0.0.6:7946") == 0);
    {
        const char nul[] = "10.0.0.1\0garbage\n10.0.0.2\n";
        char p[128];
        int fd;
        snprintf(p, sizeof(p), "%s/peers", dir);
        fd = open(p, O_WRONLY | O_TRUNC);
        REQUIRE(fd >= 0);
        REQUIRE(write(fd, nul, sizeof(nul) - 1) == (ssize_t)sizeof(nul) - 1);
        close(fd);
        CHECK(pmm_state_read_peers(dir, out, 8, &n, &bad) == 0);
        CHECK_EQ_INT(n, 1);
        CHECK_EQ_INT(bad, 1);
    }
    rm("peers");
}

static void test_mkdir(void)
{
    char p[128];
    struct stat st;

    snprintf(p, sizeof(p), "%s/a/b/c/", dir);
    CHECK(pmm_mkdir_p(p, 0700) == 0);
    CHECK(pmm_mkdir_p(p, 0700) == 0); /* exists: fine */
    snprintf(p, sizeof(p), "%s/a/b/c", dir);
    REQUIRE(stat(p, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0700);
    rmdir(p);
    snprintf(p, sizeof(p), "%s/a/b", dir);
    rmdir(p);
    snprintf(p, sizeof(p), "%s/a", dir);
    rmdir(p);
    put("file", "x");
    snprintf(p, sizeof(p), "%s/file", dir);
    CHECK(pmm_mkdir_p(p, 0700) == -ENOTDIR);
    rm("file");
}

static void test_lock(void)
{
    int fd = -1, fd2 = -1;

    CHECK(pmm_state_lock(dir, &fd, err, sizeof(err)) == 0);
    CHECK(fd >= 0);
    CHECK(pmm_state_lock(dir, &fd2, err, sizeof(err)) == -EBUSY);
    CHECK(strstr(err, "in use by another pmgclusterd") != NULL);
    CHECK_EQ_INT(fd2, -1);
    close(fd);
    CHECK(pmm_state_lock(dir, &fd2, err, sizeof(err)) == 0);
    close(fd2);
    rm("lock");
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/test_mstate.XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    umask(022);
    TAP_RUN(test_generation_bumps);
    TAP_RUN(test_generation_corrupt);
    TAP_RUN(test_node_id);
    TAP_RUN(test_peers);
    TAP_RUN(test_mkdir);
    TAP_RUN(test_lock);
    rmdir(dir);
    return tap_done();
}
