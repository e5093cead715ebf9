/*
 * test_files.c - mirrored config files (files/files.c): path rules,
 * the manifest digest, the node's diff, the FILES answer (round trip and
 * hostile answers), scans (what is left out and why, the SHA-256 cache),
 * atomic writes that never follow a symlink, removals that take emptied
 * directories along, chunked reads, the digest in the cluster config, the
 * "most of the manifest" rule, the trash's bounds and its files, and the
 * manifest's text form on disk (round trip, corrupt files refused).
 */
#include "files/files.h"
#include "membership/cluster.pb-c.h"
#include "tests/tap.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[128];

static void mkent(pmm_file_ent *e, const char *name, uint64_t size,
                  uint32_t mode, uint8_t fill)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->size = size;
    e->mode = mode;
    memset(e->sha, fill, sizeof(e->sha));
}

static void put(const char *rel, const char *data, mode_t mode)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs(data, f);
    fclose(f);
    chmod(p, mode);
}

static bool exists(const char *rel)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", tmpdir, rel);
    return lstat(p, &st) == 0;
}

static void test_names(void)
{
    CHECK(pmm_files_name_ok("main.cf"));
    CHECK(pmm_files_name_ok("templates/spam.tt"));
    CHECK(pmm_files_name_ok("dkim/pmg@example.com,v=1:x+y_z-0.private"));
    CHECK(pmm_files_name_ok("a/b/c/d/e/f/g/h/file")); /* 8 levels */
    CHECK(!pmm_files_name_ok("a/b/c/d/e/f/g/h/i/file")); /* 9 levels */
    CHECK(!pmm_files_name_ok(""));
    CHECK(!pmm_files_name_ok(NULL));
    CHECK(!pmm_files_name_ok("/etc/passwd"));
    CHECK(!pmm_files_name_ok("a//b"));
    CHECK(!pmm_files_name_ok("a/"));
    CHECK(!pmm_files_name_ok("../x"));
    CHECK(!pmm_files_name_ok("a/../b"));
    CHECK(!pmm_files_name_ok("a/./b"));
    CHECK(!pmm_files_name_ok(".hidden"));
    CHECK(!pmm_files_name_ok("dir/.pmgcm-1-2.tmp"));
    CHECK(!pmm_files_name_ok("x~"));
    CHECK(!pmm_files_name_ok("x.swp"));
    CHECK(!pmm_files_name_ok("sp ace"));
    CHECK(!pmm_files_name_ok("tab\tx"));
    CHECK(!pmm_files_name_ok("caf\xc3\xa9"));
    char longn[300];
    memset(longn, 'a', sizeof(longn));
    longn[PMM_FILES_NAME_MAX] = 0;
    CHECK(pmm_files_name_ok(longn));
    longn[PMM_FILES_NAME_MAX] = 'a';
    longn[PMM_FILES_NAME_MAX + 1] = 0;
    CHECK(!pmm_files_name_ok(longn));
    CHECK(pmm_files_name_skipped(".keep"));
    CHECK(pmm_files_name_skipped("main.cf~"));
    CHECK(pmm_files_name_skipped("x.tmp"));
    CHECK(!pmm_files_name_skipped("main.cf"));
}

static void test_digest(void)
{
    /* the empty manifest: SHA-256 of the tag alone */
    uint8_t d[PMM_HASH_LEN], want[PMM_HASH_LEN];
    pmm_files_digest(NULL, 0, d);
    mbedtls_sha256_ret((const uint8_t *)"pmgcm-files-1\n", 14, want, 0);
    CHECK(!memcmp(d, want, sizeof(d)));

    pmm_files_manifest a = {0}, b = {0};
    a.ents = calloc(3, sizeof(*a.ents));
    b.ents = calloc(3, sizeof(*b.ents));
    REQUIRE(a.ents && b.ents);
    mkent(&a.ents[0], "b", 10, 0644, 1);
    mkent(&a.ents[1], "a/x", 20, 0600, 2);
    mkent(&a.ents[2], "c", 30, 0644, 3);
    b.ents[0] = a.ents[2];
    b.ents[1] = a.ents[0];
    b.ents[2] = a.ents[1];
    a.n = b.n = 3;
    b.ents[0].ino = 99; /* cache fields do not count */
    CHECK_EQ_INT(pmm_files_manifest_finish(&a), 0);
    CHECK_EQ_INT(pmm_files_manifest_finish(&b), 0);
    CHECK(!memcmp(a.digest, b.digest, PMM_HASH_LEN));
    CHECK_EQ_INT(a.bytes, 60);
    CHECK(!strcmp(a.ents[0].name, "a/x"));
    CHECK(pmm_files_find(&a, "c") == &a.ents[2]);
    CHECK(pmm_files_find(&a, "d") == NULL);

    /* any field changes the digest */
    uint8_t before[PMM_HASH_LEN];
    memcpy(before, a.digest, sizeof(before));
    b.ents[1].mode = 0640;
    pmm_files_manifest_finish(&b);
    CHECK(memcmp(before, b.digest, PMM_HASH_LEN));
    b.ents[1].mode = a.ents[1].mode;
    b.ents[1].size++;
    pmm_files_manifest_finish(&b);
    CHECK(memcmp(before, b.digest, PMM_HASH_LEN));
    b.ents[1].size--;
    b.ents[1].sha[5] ^= 1;
    pmm_files_manifest_finish(&b);
    CHECK(memcmp(before, b.digest, PMM_HASH_LEN));
    b.ents[1].sha[5] ^= 1;
    pmm_files_manifest_finish(&b);
    CHECK(!memcmp(before, b.digest, PMM_HASH_LEN));

    /* a name twice is refused */
    snprintf(b.ents[1].name, sizeof(b.ents[1].name), "%s", b.ents[0].name);
    CHECK_EQ_INT(pmm_files_manifest_finish(&b), -EINVAL);

    pmm_files_manifest c = {0};
    CHECK_EQ_INT(pmm_files_manifest_copy(&c, &a), 0);
    CHECK(c.ents != a.ents && c.n == 3 && !memcmp(c.digest, a.digest, 32));
    pmm_files_manifest_clear(&a);
    pmm_files_manifest_clear(&b);
    pmm_files_manifest_clear(&c);
    CHECK(a.ents == NULL && a.n == 0);
}

static void test_diff(void)
{
    pmm_files_manifest l = {0}, r = {0};
    l.ents = calloc(5, sizeof(*l.ents));
    r.ents = calloc(5, sizeof(*r.ents));
    REQUIRE(l.ents && r.ents);
    mkent(&l.ents[0], "a", 1, 0644, 1);     /* only local: delete */
    mkent(&l.ents[1], "b", 1, 0644, 2);     /* same */
    mkent(&l.ents[2], "c", 1, 0644, 3);     /* content differs */
    mkent(&l.ents[3], "d", 1, 0644, 4);     /* oversize locally */
    l.ents[3].oversize = true;
    mkent(&l.ents[4], "f", 1, 0600, 6);     /* mode differs */
    l.n = 5;
    mkent(&r.ents[0], "b", 1, 0644, 2);
    mkent(&r.ents[1], "c", 1, 0644, 33);
    mkent(&r.ents[2], "d", 1, 0644, 4);
    mkent(&r.ents[3], "e", 1, 0644, 5);     /* only remote: fetch */
    mkent(&r.ents[4], "f", 1, 0644, 6);
    r.n = 5;
    size_t *f, nf, *d, nd;
    CHECK_EQ_INT(pmm_files_diff(&l, &r, &f, &nf, &d, &nd), 0);
    REQUIRE(nf == 4 && nd == 1);
    CHECK(!strcmp(r.ents[f[0]].name, "c"));
    CHECK(!strcmp(r.ents[f[1]].name, "d"));
    CHECK(!strcmp(r.ents[f[2]].name, "e"));
    CHECK(!strcmp(r.ents[f[3]].name, "f"));
    CHECK(!strcmp(l.ents[d[0]].name, "a"));
    free(f);
    free(d);
    /* identical: nothing to do */
    CHECK_EQ_INT(pmm_files_diff(&r, &r, &f, &nf, &d, &nd), 0);
    CHECK(nf == 0 && nd == 0 && f == NULL && d == NULL);
    /* empty remote: delete everything */
    pmm_files_manifest e = {0};
    CHECK_EQ_INT(pmm_files_diff(&l, &e, &f, &nf, &d, &nd), 0);
    CHECK(nf == 0 && nd == 5);
    free(d);
    pmm_files_manifest_clear(&l);
    pmm_files_manifest_clear(&r);
}

/* packs and unpacks resp (like the network does), then reads it back */
static int via_wire(Pmgcm__Cluster__Response *resp, pmm_files_manifest *out,
                    char *why, size_t len)
{
    size_t n = pmgcm__cluster__response__get_packed_size(resp);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return -ENOMEM;
    pmgcm__cluster__response__pack(resp, buf);
    Pmgcm__Cluster__Response *u =
        pmgcm__cluster__response__unpack(NULL, n, buf);
    free(buf);
    if (!u) return -EPROTO;
    int rc = pmm_files_from_resp(out, u, why, len);
    pmgcm__cluster__response__free_unpacked(u, NULL);
    return rc;
}

static void test_resp(void)
{
    pmm_files_manifest m = {0}, got = {0};
    m.ents = calloc(3, sizeof(*m.ents));
    REQUIRE(m.ents);
    mkent(&m.ents[0], "main.cf", 100, 0644, 7);
    mkent(&m.ents[1], "dkim/k.private", 50, 0600, 8);
    mkent(&m.ents[2], "empty", 0, 0644, 9);
    m.n = 3;
    REQUIRE(pmm_files_manifest_finish(&m) == 0);
    Pmgcm__Cluster__Response r = PMGCM__CLUSTER__RESPONSE__INIT;
    r.ok = 1;
    REQUIRE(pmm_files_to_resp(&m, &r) == 0);
    char why[200];
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), 0);
    CHECK(got.n == 3 && !memcmp(got.digest, m.digest, PMM_HASH_LEN));
    CHECK(got.n == 3 && !strcmp(got.ents[1].name, m.ents[1].name) &&
          got.ents[1].mode == m.ents[1].mode &&
          got.ents[1].size == m.ents[1].size &&
          !memcmp(got.ents[1].sha, m.ents[1].sha, PMM_HASH_LEN));

    /* hostile answers; got stays as it was */
    Pmgcm__Cluster__FileEntry *e1 = r.files[1];
    char *name = e1->name;
    e1->name = "../../etc/shadow";
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    e1->name = (char *)"a"; /* now before entry 0: unsorted */
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    e1->name = r.files[0]->name; /* the same name twice */
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    e1->name = name;
    e1->mode = 04755;
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    e1->mode = m.ents[1].mode;
    e1->size = (uint64_t)PMM_FILES_SIZE_MAX + 1;
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    e1->size = m.ents[1].size;
    e1->sha256.len = 31;
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    e1->sha256.len = 32;
    e1->size++; /* the digest no longer matches the entries */
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    CHECK(strstr(why, "digest") != NULL);
    e1->size--;
    r.has_files_digest = 0;
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), -EINVAL);
    r.has_files_digest = 1;
    size_t n = r.n_files;
    r.n_files = PMM_FILES_COUNT_MAX + 1; /* refused before any entry is read */
    CHECK_EQ_INT(pmm_files_from_resp(&got, &r, why, sizeof(why)), -EINVAL);
    r.n_files = n;
    CHECK_EQ_INT(via_wire(&r, &got, why, sizeof(why)), 0);
    CHECK(got.n == 3 && !memcmp(got.digest, m.digest, PMM_HASH_LEN));
    pmm_files_resp_free(&r);

    /* the empty manifest travels too */
    pmm_files_manifest none = {0};
    pmm_files_manifest_finish(&none);
    Pmgcm__Cluster__Response r2 = PMGCM__CLUSTER__RESPONSE__INIT;
    REQUIRE(pmm_files_to_resp(&none, &r2) == 0);
    CHECK_EQ_INT(via_wire(&r2, &got, why, sizeof(why)), 0);
    CHECK(got.n == 0 && !memcmp(got.digest, none.digest, PMM_HASH_LEN));
    pmm_files_resp_free(&r2);
    pmm_files_manifest_clear(&m);
    pmm_files_manifest_clear(&got);
}

static bool has_err(const pmm_files_errs *e, const char *part)
{
    for (size_t i = 0; i < e->n; i++)
        if (strstr(e->msg[i], part)) return true;
    return false;
}

static void test_scan(void)
{
    char p[512];
    put("main.cf", "hello\n", 0640);
    snprintf(p, sizeof(p), "%s/sub", tmpdir);
    mkdir(p, 0755);
    put("sub/t.tt", "template\n", 0644);
    put(".hidden", "x", 0644);
    put("backup~", "x", 0644);
    put(".pmgcm-1-1.tmp", "stale temp", 0600);
    put("big", "0123456789abcdef", 0644); /* 16 bytes */
    put("bad name", "x", 0644);
    snprintf(p, sizeof(p), "%s/link", tmpdir);
    CHECK(symlink("/etc/passwd", p) == 0);
    snprintf(p, sizeof(p), "%s/fifo", tmpdir);
    CHECK(mkfifo(p, 0600) == 0);

    pmm_files_manifest m = {0};
    pmm_files_errs errs = {0};
    CHECK_EQ_INT(pmm_files_scan(tmpdir, 10, false, NULL, &m, &errs), 0);
    REQUIRE(m.n == 2);
    CHECK(!strcmp(m.ents[0].name, "main.cf") && m.ents[0].mode == 0640 &&
          m.ents[0].size == 6);
    CHECK(!strcmp(m.ents[1].name, "sub/t.tt"));
    uint8_t sha[PMM_HASH_LEN];
    mbedtls_sha256_ret((const uint8_t *)"hello\n", 6, sha, 0);
    CHECK(!memcmp(m.ents[0].sha, sha, PMM_HASH_LEN));
    CHECK(has_err(&errs, "big: 16 bytes is over files_max_bytes (10): not mirrored"));
    CHECK(has_err(&errs, "link: is a symlink: not mirrored"));
    CHECK(has_err(&errs, "fifo: not a regular file: not mirrored"));
    CHECK(has_err(&errs, "bad name: name has characters other than"));
    CHECK_EQ_INT(errs.total, 4);
    CHECK(exists(".pmgcm-1-1.tmp")); /* the master side leaves it */

    /* node side: the oversize file is listed (to be replaced), our stale
     * temp file is removed */
    pmm_files_manifest nm = {0};
    memset(&errs, 0, sizeof(errs));
    CHECK_EQ_INT(pmm_files_scan(tmpdir, 10, true, NULL, &nm, &errs), 0);
    const pmm_file_ent *big = pmm_files_find(&nm, "big");
    CHECK(nm.n == 3 && big && big->oversize && big->size == 16);
    CHECK(!exists(".pmgcm-1-1.tmp"));
    CHECK(exists(".hidden") && exists("backup~"));
    pmm_files_manifest_clear(&nm);

    /* the cache: an unchanged, old enough file keeps the SHA-256 of prev
     * (a fake one here proves it was not re-read) */
    snprintf(p, sizeof(p), "%s/main.cf", tmpdir);
    struct timespec old[2] = {{1000000000, 0}, {1000000000, 0}};
    CHECK(utimensat(AT_FDCWD, p, old, 0) == 0);
    pmm_files_manifest m2 = {0};
    CHECK_EQ_INT(pmm_files_scan(tmpdir, 10, false, NULL, &m2, NULL), 0);
    /* ctime is now, so not cacheable yet: fake it */
    REQUIRE(m2.n == 2);
    m2.ents[0].cacheable = true;
    memset(m2.ents[0].sha, 0xEE, PMM_HASH_LEN);
    pmm_files_manifest m3 = {0};
    CHECK_EQ_INT(pmm_files_scan(tmpdir, 10, false, &m2, &m3, NULL), 0);
    CHECK(m3.n == 2 && m3.ents[0].sha[0] == 0xEE);
    /* a changed file is read again (ctime moves) */
    put("main.cf", "hello\n", 0640);
    pmm_files_manifest m4 = {0};
    CHECK_EQ_INT(pmm_files_scan(tmpdir, 10, false, &m2, &m4, NULL), 0);
    CHECK(m4.n == 2 && !memcmp(m4.ents[0].sha, sha, PMM_HASH_LEN));

    /* a missing directory */
    memset(&errs, 0, sizeof(errs));
    pmm_files_manifest m5 = {0};
    snprintf(p, sizeof(p), "%s/nope", tmpdir);
    CHECK_EQ_INT(pmm_files_scan(p, 10, false, NULL, &m5, &errs), -ENOENT);
    CHECK(m5.ents == NULL && errs.total == 1);

    snprintf(p, sizeof(p), "%s/link", tmpdir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/fifo", tmpdir);
    unlink(p);
    pmm_files_manifest_clear(&m);
    pmm_files_manifest_clear(&m2);
    pmm_files_manifest_clear(&m3);
    pmm_files_manifest_clear(&m4);
}

static void test_write_remove_read(void)
{
    char dir[256], p[512], out[256];
    struct stat st;
    snprintf(dir, sizeof(dir), "%s/mirror", tmpdir);
    /* the mirror directory itself is created */
    CHECK_EQ_INT(pmm_files_write(dir, "a/b/c.txt", "abc", 3, 0640), 0);
    snprintf(p, sizeof(p), "%s/a/b/c.txt", dir);
    CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0640 && st.st_size == 3);
    CHECK_EQ_INT(pmm_files_write(dir, "a/b/c.txt", "abcdef", 6, 0600), 0);
    CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_size == 6);
    CHECK_EQ_INT(pmm_files_write(dir, "../escape", "x", 1, 0644), -EINVAL);

    /* a symlink where a directory belongs is replaced, never followed */
    snprintf(out, sizeof(out), "%s/outside", tmpdir);
    mkdir(out, 0755);
    snprintf(p, sizeof(p), "%s/ln", dir);
    CHECK(symlink(out, p) == 0);
    CHECK_EQ_INT(pmm_files_write(dir, "ln/f", "data", 4, 0644), 0);
    CHECK(!exists("outside/f"));
    snprintf(p, sizeof(p), "%s/ln", dir);
    CHECK(lstat(p, &st) == 0 && S_ISDIR(st.st_mode));
    /* a symlink at the file's own place is replaced too */
    snprintf(p, sizeof(p), "%s/tgt", dir);
    snprintf(out, sizeof(out), "%s/outside/target", tmpdir);
    put("outside/target", "keep", 0644);
    CHECK(symlink(out, p) == 0);
    CHECK_EQ_INT(pmm_files_write(dir, "tgt", "new", 3, 0644), 0);
    CHECK(lstat(p, &st) == 0 && S_ISREG(st.st_mode));
    CHECK(stat(out, &st) == 0 && st.st_size == 4); /* untouched */

    /* chunked reads */
    uint8_t buf[8];
    size_t got;
    CHECK_EQ_INT(pmm_files_read_chunk(dir, "a/b/c.txt", 2, buf, 3, 6, &got), 0);
    CHECK(got == 3 && !memcmp(buf, "cde", 3));
    CHECK_EQ_INT(pmm_files_read_chunk(dir, "a/b/c.txt", 4, buf, 8, 6, &got), 0);
    CHECK(got == 2 && !memcmp(buf, "ef", 2));
    CHECK_EQ_INT(pmm_files_read_chunk(dir, "a/b/c.txt", 0, buf, 3, 7, &got),
                 -ESTALE);
    CHECK_EQ_INT(pmm_files_read_chunk(dir, "gone", 0, buf, 3, 7, &got), -ESTALE);

    /* removal takes the emptied directories along, not dir itself */
    CHECK_EQ_INT(pmm_files_write(dir, "a/keep", "k", 1, 0644), 0);
    CHECK_EQ_INT(pmm_files_remove(dir, "a/b/c.txt"), 0);
    CHECK(!exists("mirror/a/b") && exists("mirror/a/keep"));
    CHECK_EQ_INT(pmm_files_remove(dir, "a/keep"), 0);
    CHECK(!exists("mirror/a") && exists("mirror"));
    CHECK_EQ_INT(pmm_files_remove(dir, "a/keep"), 0); /* already gone */
    CHECK_EQ_INT(pmm_files_remove(dir, "no/such/dir/file"), 0);

    /* nothing left behind: no temp files */
    pmm_files_manifest m = {0};
    CHECK_EQ_INT(pmm_files_scan(dir, 1024, false, NULL, &m, NULL), 0);
    CHECK_EQ_INT(m.n, 2); /* ln/f, tgt */
    pmm_files_manifest_clear(&m);
}

static void test_cluster_digest(void)
{
    pmm_cluster c;
    memset(&c, 0, sizeof(c));
    c.epoch = c.version = 1;
    c.master_cid = c.maxcid = 1;
    c.iter = PMM_PBKDF2_ITER;
    c.n_keys = 1;
    c.nodes = calloc(1, sizeof(*c.nodes));
    REQUIRE(c.nodes);
    c.n_nodes = 1;
    pmm_cnode *n = &c.nodes[0];
    n->cid = 1;
    n->master = true;
    snprintf(n->name, sizeof(n->name), "pmg1");
    snprintf(n->ip, sizeof(n->ip), "10.0.0.1");
    n->gossip_port = 7946;
    n->api_port = 7947;
    pmm_tls_fp fp;
    memset(fp.b, 0x11, sizeof(fp.b));
    pmm_tls_fp_str(&fp, n->fp, sizeof(n->fp));
    uint8_t *buf;
    size_t len;
    pmm_cluster d;
    memset(&d, 0, sizeof(d));
    char why[160];
    /* without: none after the round trip */
    REQUIRE(pmm_cluster_encode(&c, true, &buf, &len) == 0);
    CHECK_EQ_INT(pmm_cluster_decode(&d, buf, len, true, why, sizeof(why)), 0);
    CHECK(!d.has_files_digest);
    free(buf);
    /* with: the same digest */
    c.has_files_digest = true;
    memset(c.files_digest, 0xAB, PMM_HASH_LEN);
    REQUIRE(pmm_cluster_encode(&c, false, &buf, &len) == 0);
    CHECK_EQ_INT(pmm_cluster_decode(&d, buf, len, false, why, sizeof(why)), 0);
    CHECK(d.has_files_digest && !memcmp(d.files_digest, c.files_digest, 32));
    free(buf);
    /* a digest of the wrong length is refused */
    Pmgcm__Cluster__Config *pb;
    REQUIRE(pmm_cluster_to_pb(&c, true, &pb) == 0);
    pb->files_digest.len = 31;
    pmm_cluster e;
    memset(&e, 0, sizeof(e));
    CHECK_EQ_INT(pmm_cluster_from_pb(&e, pb, true, why, sizeof(why)), -EINVAL);
    pmm_cluster_pb_free(pb);
    /* copies carry it */
    pmm_cluster f;
    memset(&f, 0, sizeof(f));
    CHECK_EQ_INT(pmm_cluster_copy(&f, &c), 0);
    CHECK(f.has_files_digest && f.files_digest[31] == 0xAB);
    pmm_cluster_clear(&c);
    pmm_cluster_clear(&d);
    pmm_cluster_clear(&f);
}


/* a manifest of n files named f000.. (skipping the names in skip) */
static void mkman(pmm_files_manifest *m, size_t n, const char *skip)
{
    memset(m, 0, sizeof(*m));
    m->ents = calloc(n ? n : 1, sizeof(*m->ents));
    for (size_t i = 0; m->ents && i < n; i++) {
        char name[16];
        snprintf(name, sizeof(name), "f%03zu", i);
        if (skip && strstr(skip, name)) continue;
        mkent(&m->ents[m->n++], name, i, 0644, (uint8_t)i);
    }
    pmm_files_manifest_finish(m);
}

static void test_mass_drop(void)
{
    pmm_files_manifest a, b;
    size_t d = 99;
    mkman(&a, 10, NULL);
    /* 6 of 10 dropped: most */
    mkman(&b, 10, "f000 f001 f002 f003 f004 f005");
    CHECK(pmm_files_mass_drop(&a, &b, &d) && d == 6);
    pmm_files_manifest_clear(&b);
    /* exactly half is not "most" */
    mkman(&b, 10, "f000 f001 f002 f003 f004");
    CHECK(!pmm_files_mass_drop(&a, &b, &d) && d == 5);
    pmm_files_manifest_clear(&b);
    /* everything, and everything renamed (dropped + added) */
    memset(&b, 0, sizeof(b));
    CHECK(pmm_files_mass_drop(&a, &b, &d) && d == 10);
    mkman(&b, 20, "f000 f001 f002 f003 f004 f005 f006 f007 f008 f009");
    CHECK(pmm_files_mass_drop(&a, &b, &d) && d == 10);
    /* a superset drops nothing; b -> a drops the new ten */
    CHECK(!pmm_files_mass_drop(&a, &a, &d) && d == 0);
    CHECK(pmm_files_mass_drop(&b, &a, &d) && d == 10);
    pmm_files_manifest_clear(&a);
    pmm_files_manifest_clear(&b);
    /* few files: at least PMM_FILES_DROP_MIN (4) must go */
    mkman(&a, 3, NULL);
    memset(&b, 0, sizeof(b));
    CHECK(!pmm_files_mass_drop(&a, &b, &d) && d == 3);
    pmm_files_manifest_clear(&a);
    mkman(&a, 4, NULL);
    CHECK(pmm_files_mass_drop(&a, &b, &d) && d == 4);
    pmm_files_manifest_clear(&a);
    mkman(&a, 7, NULL);
    mkman(&b, 7, "f000 f001 f002 f003");
    CHECK(pmm_files_mass_drop(&a, &b, NULL)); /* 4 of 7 */
    pmm_files_manifest_clear(&b);
    mkman(&b, 7, "f000 f001 f002");
    CHECK(!pmm_files_mass_drop(&a, &b, &d) && d == 3); /* 3 of 7 */
    pmm_files_manifest_clear(&a);
    pmm_files_manifest_clear(&b);
    /* nothing published before: nothing dropped */
    memset(&a, 0, sizeof(a));
    mkman(&b, 5, NULL);
    CHECK(!pmm_files_mass_drop(&a, &b, &d) && d == 0);
    pmm_files_manifest_clear(&b);
}

static void test_union(void)
{
    pmm_files_manifest a, b, u = {0};
    mkman(&a, 6, "f004 f005");      /* f000..f003 */
    mkman(&b, 6, "f000 f001");      /* f002..f005 */
    b.ents[0].size = 99;            /* f002 differs: b's entry wins */
    pmm_files_manifest_finish(&b);
    CHECK_EQ_INT(pmm_files_manifest_union(&u, &a, &b), 0);
    REQUIRE(u.n == 6);
    for (size_t i = 0; i < 6; i++) {
        char name[16];
        snprintf(name, sizeof(name), "f%03zu", i);
        CHECK(!strcmp(u.ents[i].name, name));
    }
    CHECK(u.ents[2].size == 99);
    uint8_t d[PMM_HASH_LEN];
    pmm_files_digest(u.ents, u.n, d);
    CHECK(!memcmp(d, u.digest, PMM_HASH_LEN));
    /* with an empty side: the other one */
    pmm_files_manifest e = {0};
    CHECK_EQ_INT(pmm_files_manifest_union(&u, &e, &b), 0);
    CHECK(u.n == b.n && !memcmp(u.digest, b.digest, PMM_HASH_LEN));
    CHECK_EQ_INT(pmm_files_manifest_union(&u, &e, &e), 0);
    CHECK(u.n == 0);
    pmm_files_manifest_clear(&a);
    pmm_files_manifest_clear(&b);
    /* more than PMM_FILES_COUNT_MAX names: refused, out untouched */
    mkman(&a, PMM_FILES_COUNT_MAX, NULL);
    memset(&b, 0, sizeof(b));
    b.ents = calloc(1, sizeof(*b.ents));
    REQUIRE(b.ents);
    mkent(&b.ents[0], "zzz", 1, 0644, 1);
    b.n = 1;
    pmm_files_manifest_finish(&b);
    CHECK_EQ_INT(pmm_files_manifest_union(&u, &a, &b), -E2BIG);
    CHECK(u.n == 0);
    pmm_files_manifest_clear(&a);
    pmm_files_manifest_clear(&b);
    pmm_files_manifest_clear(&u);
}

static void test_trash_evict(void)
{
    uint64_t f[4] = {10, 20, 30, 40}, b[4] = {100, 200, 300, 400};
    /* within both bounds: nothing goes */
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 100, 1000), 0);
    /* files over: the oldest first, until the rest fits */
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 99, 1000), 1);
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 70, 1000), 2);
    /* bytes over */
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 100, 899), 2);
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 100, 700), 2);
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 100, 699), 3);
    /* the newest stays whole, even alone over a bound */
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 1, 1), 3);
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 1, 1, 1), 0);
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 0, 1, 1), 0);
    /* whichever bound is tighter wins */
    CHECK_EQ_INT(pmm_files_trash_evict(f, b, 4, 40, 100000), 3);
}

static void test_manifest_text(void)
{
    pmm_files_manifest m = {0}, got = {0};
    m.ents = calloc(3, sizeof(*m.ents));
    REQUIRE(m.ents);
    mkent(&m.ents[0], "main.cf", 100, 0644, 7);
    mkent(&m.ents[1], "dkim/sel.private", 0, 0600, 8);
    mkent(&m.ents[2], "templates/a+b@c=d,e:f.tt", PMM_FILES_SIZE_MAX, 0755, 9);
    m.n = 3;
    CHECK_EQ_INT(pmm_files_manifest_finish(&m), 0);
    pmm_buf b;
    pmm_buf_init(&b, 1 << 20);
    CHECK_EQ_INT(pmm_files_manifest_format(&m, &b), 0);
    char why[200];
    CHECK_EQ_INT(pmm_files_manifest_parse(&got, b.p, b.len, why, sizeof(why)),
                 0);
    CHECK(got.n == 3 && !memcmp(got.digest, m.digest, PMM_HASH_LEN) &&
          got.bytes == m.bytes);
    CHECK(!strcmp(got.ents[1].name, "main.cf") && got.ents[1].mode == 0644 &&
          got.ents[1].size == 100 && got.ents[1].sha[5] == 7);
    /* an empty manifest round-trips too */
    pmm_files_manifest e = {0};
    pmm_files_manifest_finish(&e);
    pmm_buf_reset(&b);
    CHECK_EQ_INT(pmm_files_manifest_format(&e, &b), 0);
    CHECK_EQ_INT(pmm_files_manifest_parse(&got, b.p, b.len, why, sizeof(why)),
                 0);
    CHECK(got.n == 0 && !memcmp(got.digest, e.digest, PMM_HASH_LEN));
    /* corrupt ones: refused, got untouched */
    pmm_buf_reset(&b);
    pmm_files_manifest_format(&m, &b);
    const char *ok = b.p;
    size_t first = strchr(strchr(ok, '\n') + 1, '\n') - ok + 1; /* 2 lines */
    char t[4096];
    struct {
        const char *what, *text;
    } bad[] = {
        {"empty", ""},
        {"magic", "pmgcm-files-manifest 2\n"},
        {"digest", "pmgcm-files-manifest 1\ndigest 00\n"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        got.n = 77;
        CHECK_EQ_INT(pmm_files_manifest_parse(&got, bad[i].text,
                                              strlen(bad[i].text), why,
                                              sizeof(why)),
                     -EINVAL);
        CHECK(got.n == 77);
    }
    got.n = 0;
    /* entry lines: the good header, then a bad line */
    const char *lines[] = {
        "zz 1 0644 a\n",                                      /* hash */
        "%s 1 0644 ../a\n",                                   /* name */
        "%s 1 0644 .hidden\n",                                /* name */
        "%s 1 1000 a\n",                                      /* mode */
        "%s 99999999999999 0644 a\n",                         /* size */
        "%s -1 0644 a\n",                                     /* size */
        "%s 1 0644 a",                                        /* no \n */
        "%s 1 0644 b\n%s 1 0644 a\n",                         /* order */
        "%s 1 0644 a\n%s 1 0644 a\n",                         /* twice */
        "%s 1 0644 a b\n",                                    /* space */
        "%s 1 0644 a\n",                                      /* digest */
    };
    const char *h64 =
        "0101010101010101010101010101010101010101010101010101010101010101";
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        int o = snprintf(t, sizeof(t), "%.*s", (int)first, ok);
        snprintf(t + o, sizeof(t) - (size_t)o, lines[i], h64, h64);
        CHECK_EQ_INT(pmm_files_manifest_parse(&got, t, strlen(t), why,
                                              sizeof(why)),
                     -EINVAL);
    }
    /* a NUL in the text */
    memcpy(t, ok, b.len);
    t[first + 3] = 0;
    CHECK_EQ_INT(pmm_files_manifest_parse(&got, t, b.len, why, sizeof(why)),
                 -EINVAL);
    /* save / load in a data dir */
    char dd[256];
    snprintf(dd, sizeof(dd), "%s/data", tmpdir);
    mkdir(dd, 0700);
    pmm_files_manifest l = {0};
    CHECK_EQ_INT(pmm_files_manifest_load(dd, PMM_FILES_MANIFEST_FILE, &l, why,
                                         sizeof(why)),
                 -ENOENT);
    CHECK_EQ_INT(pmm_files_manifest_save(dd, PMM_FILES_MANIFEST_FILE, &m), 0);
    CHECK_EQ_INT(pmm_files_manifest_load(dd, PMM_FILES_MANIFEST_FILE, &l, why,
                                         sizeof(why)),
                 0);
    CHECK(l.n == 3 && !memcmp(l.digest, m.digest, PMM_HASH_LEN));
    struct stat st;
    snprintf(t, sizeof(t), "%s/" PMM_FILES_MANIFEST_FILE, dd);
    CHECK(stat(t, &st) == 0 && (st.st_mode & 0777) == 0600);
    FILE *fp = fopen(t, "r+");
    if (fp) {
        fseek(fp, -3, SEEK_END);
        fputc('X', fp); /* a name no longer matches the digest */
        fclose(fp);
    }
    CHECK_EQ_INT(pmm_files_manifest_load(dd, PMM_FILES_MANIFEST_FILE, &l, why,
                                         sizeof(why)),
                 -EINVAL);
    CHECK(l.n == 3);
    pmm_files_manifest_clear(&l);
    pmm_files_manifest_clear(&got);
    pmm_files_manifest_clear(&m);
    pmm_buf_free(&b);
}

static size_t count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;
    int c;
    if (!f) return 0;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static void test_trash(void)
{
    char dir[256], trash[256], ev[300], p[600];
    struct stat st;
    snprintf(dir, sizeof(dir), "%s/tmirror", tmpdir);
    snprintf(trash, sizeof(trash), "%s/ttrash", tmpdir);
    CHECK_EQ_INT(pmm_files_write(dir, "main.cf", "old main\n", 9, 0640), 0);
    CHECK_EQ_INT(pmm_files_write(dir, "sub/x.cf", "xx", 2, 0600), 0);
    /* kept: 1; a hard link or a copy with the same bytes and mode */
    snprintf(ev, sizeof(ev), "%s/20260101T000000.000Z", trash);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "main.cf", ev, "replaced", 1 << 20),
                 1);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "sub/x.cf", ev, "removed", 1 << 20),
                 1);
    snprintf(p, sizeof(p), "%s/main.cf", ev);
    CHECK(stat(p, &st) == 0 && st.st_size == 9 && (st.st_mode & 0777) == 0640);
    snprintf(p, sizeof(p), "%s/sub/x.cf", ev);
    CHECK(stat(p, &st) == 0 && st.st_size == 2);
    CHECK(stat(trash, &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK(stat(ev, &st) == 0 && (st.st_mode & 0777) == 0700);
    snprintf(p, sizeof(p), "%s/" PMM_FILES_TRASH_INFO, ev);
    CHECK_EQ_INT(count_lines(p), 2);
    /* the original, replaced or removed afterwards, stays in the trash */
    CHECK_EQ_INT(pmm_files_write(dir, "main.cf", "new", 3, 0644), 0);
    snprintf(p, sizeof(p), "%s/main.cf", ev);
    CHECK(stat(p, &st) == 0 && st.st_size == 9);
    /* nothing to keep: a missing file, a directory, a symlink, a bad name */
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "gone.cf", ev, "removed", 1 << 20),
                 0);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "sub", ev, "removed", 1 << 20), 0);
    snprintf(p, sizeof(p), "%s/ln.cf", dir);
    CHECK(symlink("/etc/passwd", p) == 0);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "ln.cf", ev, "removed", 1 << 20), 0);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "../x", ev, "removed", 1 << 20),
                 -EINVAL);
    /* the same name twice in one event: the next "<event>.N" */
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "main.cf", ev, "replaced", 1 << 20),
                 1);
    snprintf(p, sizeof(p), "%s.1/main.cf", ev);
    CHECK(stat(p, &st) == 0 && st.st_size == 3);
    /* a file named like a directory the event already has */
    char ev3[300];
    snprintf(ev3, sizeof(ev3), "%s/20260101T120000.000Z", trash);
    CHECK_EQ_INT(pmm_files_write(dir, "d/x", "x", 1, 0644), 0);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "d/x", ev3, "removed", 1 << 20), 1);
    CHECK_EQ_INT(pmm_files_remove(dir, "d/x"), 0);
    CHECK_EQ_INT(pmm_files_write(dir, "d", "dd", 2, 0644), 0);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "d", ev3, "removed", 1 << 20), 1);
    snprintf(p, sizeof(p), "%s.1/d", ev3);
    CHECK(stat(p, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 2);
    snprintf(p, sizeof(p), "%s/d/x", ev3);
    CHECK(stat(p, &st) == 0 && st.st_size == 1);
    /* tidy: counts, then evicts the oldest events */
    CHECK_EQ_INT(pmm_files_write(dir, "sub2", "file", 4, 0644), 0);
    char ev2[300];
    snprintf(ev2, sizeof(ev2), "%s/20260102T000000.000Z", trash);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "sub2", ev2, "removed", 1 << 20), 1);
    pmm_files_trash_stats ts;
    CHECK_EQ_INT(pmm_files_trash_tidy(trash, 100, 1 << 20, &ts), 0);
    /* events, oldest first: ev (2 files), ev.1 (1), ev3 (1), ev3.1 (1),
     * ev2 (1) */
    CHECK(ts.events == 5 && ts.files == 6 &&
          ts.bytes == 9 + 2 + 3 + 1 + 2 + 4 && ts.evicted == 0 &&
          !strcmp(ts.newest, "20260102T000000.000Z"));
    CHECK_EQ_INT(pmm_files_trash_tidy(trash, 4, 1 << 20, &ts), 0);
    CHECK(ts.evicted == 1 && ts.events == 4 && ts.files == 4);
    CHECK(stat(ev, &st) != 0 && stat(ev2, &st) == 0);
    CHECK_EQ_INT(pmm_files_trash_tidy(trash, 100, 6, &ts), 0); /* bytes */
    CHECK(ts.evicted == 2 && ts.events == 2 && ts.bytes == 2 + 4);
    CHECK_EQ_INT(pmm_files_trash_tidy(trash, 1, 1 << 20, &ts), 0);
    CHECK(ts.evicted == 1 && ts.events == 1 && ts.files == 1 && ts.bytes == 4);
    /* the newest is kept even alone over a bound */
    CHECK_EQ_INT(pmm_files_trash_tidy(trash, 0, 0, &ts), 0);
    CHECK(ts.evicted == 0 && ts.events == 1);
    /* no trash yet: empty */
    snprintf(p, sizeof(p), "%s/nothing-here", tmpdir);
    CHECK_EQ_INT(pmm_files_trash_tidy(p, 1, 1, &ts), 0);
    CHECK(ts.events == 0 && ts.files == 0 && !ts.newest[0]);
    /* a copy over max_copy bytes cannot be made (same filesystem: linked,
     * whatever its size) */
    CHECK_EQ_INT(pmm_files_write(dir, "big.cf", "0123456789", 10, 0644), 0);
    CHECK_EQ_INT(pmm_files_trash_keep(dir, "big.cf", ev2, "removed", 1), 1);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/pmgcm-test-files.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    TAP_RUN(test_names);
    TAP_RUN(test_digest);
    TAP_RUN(test_diff);
    TAP_RUN(test_resp);
    TAP_RUN(test_scan);
    TAP_RUN(test_write_remove_read);
    TAP_RUN(test_cluster_digest);
    TAP_RUN(test_mass_drop);
    TAP_RUN(test_union);
    TAP_RUN(test_trash_evict);
    TAP_RUN(test_manifest_text);
    TAP_RUN(test_trash);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("# could not remove %s\n", tmpdir);
    return tap_done();
}
