/*
 * cluster.c - the cluster configuration model: validation, ordering,
 * protobuf encoding, persistence, and the join password hash.
 */
#include "membership/membership.h"
#include "membership/cluster.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <mbedtls/md.h>
#include <mbedtls/pkcs5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLUSTER_FILE_MAX (4u << 20)


void pmm_cluster_clear(pmm_cluster *c)
{
    free(c->nodes);
    memset(c, 0, sizeof(*c));
}

int pmm_cluster_copy(pmm_cluster *dst, const pmm_cluster *src)
{
    pmm_cnode *n = NULL;
    if (src->n_nodes) {
        n = malloc(src->n_nodes * sizeof(*n));
        if (!n) return -ENOMEM;
        memcpy(n, src->nodes, src->n_nodes * sizeof(*n));
    }
    pmm_cluster_clear(dst);
    *dst = *src;
    dst->nodes = n;
    return 0;
}

int pmm_cluster_cmp(const pmm_cluster *a, const pmm_cluster *b)
{
    if (a->epoch != b->epoch) return a->epoch < b->epoch ? -1 : 1;
    if (a->version != b->version) return a->version < b->version ? -1 : 1;
    return 0;
}

bool pmm_ip_literal_ok(const char *ip)
{
    /* a bare IPv4 or IPv6 literal: no port, no brackets */
    gsp_addr a;
    if (!ip || strchr(ip, '[') || gsp_addr_parse(&a, ip, 1)) return false;
    return a.family == 6 || !strchr(ip, ':');
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > GSP_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

int pmm_cluster_validate(const pmm_cluster *c, bool need_keys, char *err,
                         size_t errlen)
{
    if (c->epoch < 1 || c->version < 1 || c->epoch > UINT32_MAX ||
        c->version > UINT32_MAX)
        return pmm_errf(err, errlen, -EINVAL, "epoch/version out of range");
    if (c->n_nodes < 1 || c->n_nodes > PMM_CLUSTER_NODES_MAX)
        return pmm_errf(err, errlen, -EINVAL, "%zu nodes", c->n_nodes);
    if (c->maxcid < 1 || c->maxcid > PMM_CLUSTER_CID_MAX)
        return pmm_errf(err, errlen, -EINVAL, "maxcid %u out of range", c->maxcid);
    if (c->iter < 1000 || c->iter > 10000000)
        return pmm_errf(err, errlen, -EINVAL, "password hash iterations %u", c->iter);
    if (c->n_keys > GSP_KEYRING_MAX || (need_keys && c->n_keys < 1))
        return pmm_errf(err, errlen, -EINVAL, "%zu gossip keys", c->n_keys);
    size_t masters = 0;
    for (size_t i = 0; i < c->n_nodes; i++) {
        const pmm_cnode *n = &c->nodes[i];
        if (n->cid < 1 || n->cid > c->maxcid)
            return pmm_errf(err, errlen, -EINVAL, "node cid %u out of range", n->cid);
        if (!name_ok(n->name))
            return pmm_errf(err, errlen, -EINVAL, "cid %u: bad name", n->cid);
        if (!pmm_ip_literal_ok(n->ip))
            return pmm_errf(err, errlen, -EINVAL, "cid %u: bad ip '%s'", n->cid, n->ip);
        if (!n->gossip_port || !n->api_port)
            return pmm_errf(err, errlen, -EINVAL, "cid %u: bad port", n->cid);
        pmm_tls_fp fp;
        if (pmm_tls_fp_parse(&fp, n->fp))
            return pmm_errf(err, errlen, -EINVAL, "cid %u: bad fingerprint", n->cid);
        if (n->master != (n->cid == c->master_cid))
            return pmm_errf(err, errlen, -EINVAL, "cid %u: role disagrees with master %u",
                        n->cid, c->master_cid);
        masters += n->master;
        for (size_t j = 0; j < i; j++) {
            const pmm_cnode *o = &c->nodes[j];
            if (o->cid == n->cid) return pmm_errf(err, errlen, -EINVAL, "cid %u twice", n->cid);
            if (!strcmp(o->name, n->name))
                return pmm_errf(err, errlen, -EINVAL, "name %s twice", n->name);
            if (!strcmp(o->ip, n->ip) && o->gossip_port == n->gossip_port)
                return pmm_errf(err, errlen, -EINVAL, "address %s twice", n->ip);
            if (!memcmp(&o->node_id, &n->node_id, sizeof(gsp_id)))
                return pmm_errf(err, errlen, -EINVAL, "node id of cid %u twice", n->cid);
        }
    }
    if (masters != 1)
        return pmm_errf(err, errlen, -EINVAL, "master cid %u is not a node", c->master_cid);
    return 0;
}

/* ---- protobuf ------------------------------------------------------------- */

typedef struct pb_hold {
    Pmgcm__Cluster__Config cfg;
    Pmgcm__Cluster__Node *nodes;
    Pmgcm__Cluster__Node **np;
    ProtobufCBinaryData keys[GSP_KEYRING_MAX];
} pb_hold;

int pmm_cluster_to_pb(const pmm_cluster *c, bool with_keys,
                      Pmgcm__Cluster__Config **out)
{
    pb_hold *h = calloc(1, sizeof(*h));
    if (!h) return -ENOMEM;
    size_t nn = c->n_nodes ? c->n_nodes : 1;
    h->nodes = calloc(nn, sizeof(*h->nodes));
    h->np = calloc(nn, sizeof(*h->np));
    if (!h->nodes || !h->np) {
        free(h->nodes);
        free(h->np);
        free(h);
        return -ENOMEM;
    }
    Pmgcm__Cluster__Config *p = &h->cfg;
    pmgcm__cluster__config__init(p);
    p->cluster_id.data = (uint8_t *)c->cluster_id;
    p->cluster_id.len = sizeof(c->cluster_id);
    p->epoch = c->epoch;
    p->version = c->version;
    p->master_cid = c->master_cid;
    p->maxcid = c->maxcid;
    for (size_t i = 0; i < c->n_nodes; i++) {
        Pmgcm__Cluster__Node *n = &h->nodes[i];
        const pmm_cnode *m = &c->nodes[i];
        pmgcm__cluster__node__init(n);
        n->cid = m->cid;
        n->name = (char *)m->name;
        n->ip = (char *)m->ip;
        n->gossip_port = m->gossip_port;
        n->api_port = m->api_port;
        n->node_id.data = (uint8_t *)m->node_id.b;
        n->node_id.len = GSP_ID_LEN;
        n->fingerprint = (char *)m->fp;
        n->role = m->master ? 1 : 0;
        h->np[i] = n;
    }
    p->n_nodes = c->n_nodes;
    p->nodes = h->np;
    p->join_salt.data = (uint8_t *)c->salt;
    p->join_salt.len = PMM_SALT_LEN;
    p->join_hash.data = (uint8_t *)c->hash;
    p->join_hash.len = PMM_HASH_LEN;
    p->join_iter = c->iter;
    if (with_keys) {
        for (size_t i = 0; i < c->n_keys; i++) {
            h->keys[i].data = (uint8_t *)c->keys[i];
            h->keys[i].len = GSP_KEY_LEN;
        }
        p->n_keys = c->n_keys;
        p->keys = h->keys;
    }
    if (c->has_files_digest) {
        p->has_files_digest = 1;
        p->files_digest.data = (uint8_t *)c->files_digest;
        p->files_digest.len = PMM_HASH_LEN;
    }
    p->n_purged = c->n_purged;
    p->purged = (uint32_t *)c->purged;
    *out = p;
    return 0;
}

void pmm_cluster_pb_free(Pmgcm__Cluster__Config *pb)
{
    if (!pb) return;
    pb_hold *h = (pb_hold *)pb; /* cfg is the first member */
    free(h->nodes);
    free(h->np);
    free(h);
}

static bool copy_str(char *dst, size_t cap, const char *src)
{
    if (!src) return false;
    size_t n = strnlen(src, cap);
    if (n >= cap) return false;
    memcpy(dst, src, n + 1);
    return true;
}

int pmm_cluster_from_pb(pmm_cluster *out, const Pmgcm__Cluster__Config *p,
                        bool need_keys, char *err, size_t errlen)
{
    pmm_cluster c;
    memset(&c, 0, sizeof(c));
    if (p->cluster_id.len != sizeof(c.cluster_id))
        return pmm_errf(err, errlen, -EINVAL, "bad cluster id");
    if (p->n_nodes < 1 || p->n_nodes > PMM_CLUSTER_NODES_MAX)
        return pmm_errf(err, errlen, -EINVAL, "%zu nodes", p->n_nodes);
    if (p->join_salt.len != PMM_SALT_LEN || p->join_hash.len != PMM_HASH_LEN)
        return pmm_errf(err, errlen, -EINVAL, "bad password hash");
    if (p->n_keys > GSP_KEYRING_MAX)
        return pmm_errf(err, errlen, -EINVAL, "%zu gossip keys", p->n_keys);
    memcpy(c.cluster_id, p->cluster_id.data, sizeof(c.cluster_id));
    c.epoch = p->epoch;
    c.version = p->version;
    c.master_cid = p->master_cid;
    c.maxcid = p->maxcid;
    memcpy(c.salt, p->join_salt.data, PMM_SALT_LEN);
    memcpy(c.hash, p->join_hash.data, PMM_HASH_LEN);
    c.iter = p->join_iter;
    for (size_t i = 0; i < p->n_keys; i++) {
        if (p->keys[i].len != GSP_KEY_LEN)
            return pmm_errf(err, errlen, -EINVAL, "bad gossip key");
        memcpy(c.keys[i], p->keys[i].data, GSP_KEY_LEN);
    }
    c.n_keys = p->n_keys;
    if (p->has_files_digest) {
        if (p->files_digest.len != PMM_HASH_LEN)
            return pmm_errf(err, errlen, -EINVAL, "bad files digest");
        memcpy(c.files_digest, p->files_digest.data, PMM_HASH_LEN);
        c.has_files_digest = true;
    }
    if (p->n_purged > PMM_PURGED_MAX)
        return pmm_errf(err, errlen, -EINVAL, "too many purged cids");
    for (size_t i = 0; i < p->n_purged; i++) {
        if (p->purged[i] == 0 || p->purged[i] > PMM_CLUSTER_CID_MAX)
            return pmm_errf(err, errlen, -EINVAL, "bad purged cid");
        c.purged[i] = p->purged[i];
    }
    c.n_purged = p->n_purged;
    c.nodes = calloc(p->n_nodes, sizeof(*c.nodes));
    if (!c.nodes) return -ENOMEM;
    c.n_nodes = p->n_nodes;
    for (size_t i = 0; i < p->n_nodes; i++) {
        const Pmgcm__Cluster__Node *n = p->nodes[i];
        pmm_cnode *m = &c.nodes[i];
        m->cid = n->cid;
        if (!copy_str(m->name, sizeof(m->name), n->name) ||
            !copy_str(m->ip, sizeof(m->ip), n->ip) ||
            !copy_str(m->fp, sizeof(m->fp), n->fingerprint) ||
            n->node_id.len != GSP_ID_LEN || n->gossip_port > 65535 ||
            n->api_port > 65535 || n->role > 1) {
            pmm_cluster_clear(&c);
            return pmm_errf(err, errlen, -EINVAL, "node %zu malformed", i);
        }
        m->gossip_port = (uint16_t)n->gossip_port;
        m->api_port = (uint16_t)n->api_port;
        memcpy(m->node_id.b, n->node_id.data, GSP_ID_LEN);
        m->master = n->role == 1;
    }
    int rc = pmm_cluster_validate(&c, need_keys, err, errlen);
    if (rc) {
        pmm_cluster_clear(&c);
        return rc;
    }
    pmm_cluster_clear(out);
    *out = c;
    return 0;
}

int pmm_cluster_encode(const pmm_cluster *c, bool with_keys, uint8_t **buf,
                       size_t *len)
{
    Pmgcm__Cluster__Config *p;
    int rc = pmm_cluster_to_pb(c, with_keys, &p);
    if (rc) return rc;
    *len = pmgcm__cluster__config__get_packed_size(p);
    *buf = malloc(*len ? *len : 1);
    if (!*buf) {
        pmm_cluster_pb_free(p);
        return -ENOMEM;
    }
    pmgcm__cluster__config__pack(p, *buf);
    pmm_cluster_pb_free(p);
    return 0;
}

int pmm_cluster_decode(pmm_cluster *out, const uint8_t *buf, size_t len,
                       bool need_keys, char *err, size_t errlen)
{
    if (len > CLUSTER_FILE_MAX) return pmm_errf(err, errlen, -EINVAL, "too large");
    Pmgcm__Cluster__Config *p =
        pmgcm__cluster__config__unpack(NULL, len, buf);
    if (!p) return pmm_errf(err, errlen, -EINVAL, "not a cluster config");
    int rc = pmm_cluster_from_pb(out, p, need_keys, err, errlen);
    pmgcm__cluster__config__free_unpacked(p, NULL);
    return rc;
}

/* ---- files ---------------------------------------------------------------- */

int pmm_cluster_load(const char *dir, pmm_cluster *out, char *err,
                     size_t errlen)
{
    char path[PMM_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/%s", dir, PMM_CLUSTER_FILE);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return -ENOENT;
        int e = errno;
        pmm_errf(err, errlen, -EINVAL, "%s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) ||
        st.st_size > CLUSTER_FILE_MAX) {
        close(fd);
        return pmm_errf(err, errlen, -EINVAL, "%s: not a regular file of sane size", path);
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    int rc;
    if (got != len) {
        rc = pmm_errf(err, errlen, -EINVAL, "%s: short read", path);
    } else {
        char why[160] = "";
        rc = pmm_cluster_decode(out, buf, len, true, why, sizeof(why));
        if (rc) pmm_errf(err, errlen, -EINVAL, "%s: %s", path, why);
    }
    memset(buf, 0, len);
    free(buf);
    return rc;
}

int pmm_cluster_save(const char *dir, const pmm_cluster *c)
{
    uint8_t *buf;
    size_t len;
    int rc = pmm_cluster_encode(c, true, &buf, &len);
    if (rc) return rc;
    /* a temp file left by a crash keeps its mode through O_TRUNC: remove
     * it, so the keyring is never written into a file others can read */
    char tmp[PMM_PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, PMM_CLUSTER_FILE);
    unlink(tmp);
    rc = pmm_write_file_atomic(dir, PMM_CLUSTER_FILE, buf, len, 0600);
    memset(buf, 0, len);
    free(buf);
    return rc;
}

int pmm_cluster_remove_file(const char *dir)
{
    char path[PMM_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/%s", dir, PMM_CLUSTER_FILE);
    if (unlink(path) && errno != ENOENT) return -errno;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* ---- queries and edits ------------------------------------------------------ */

const pmm_cnode *pmm_cluster_by_cid(const pmm_cluster *c, uint32_t cid)
{
    for (size_t i = 0; c && i < c->n_nodes; i++)
        if (c->nodes[i].cid == cid) return &c->nodes[i];
    return NULL;
}

const pmm_cnode *pmm_cluster_by_id(const pmm_cluster *c, const gsp_id *id)
{
    for (size_t i = 0; c && i < c->n_nodes; i++)
        if (!memcmp(&c->nodes[i].node_id, id, sizeof(*id))) return &c->nodes[i];
    return NULL;
}

const pmm_cnode *pmm_cluster_by_name(const pmm_cluster *c, const char *n)
{
    for (size_t i = 0; c && i < c->n_nodes; i++)
        if (!strcmp(c->nodes[i].name, n)) return &c->nodes[i];
    return NULL;
}

const pmm_cnode *pmm_cluster_by_ip(const pmm_cluster *c, const char *ip)
{
    for (size_t i = 0; c && i < c->n_nodes; i++)
        if (!strcmp(c->nodes[i].ip, ip)) return &c->nodes[i];
    return NULL;
}

const pmm_cnode *pmm_cluster_by_fp(const pmm_cluster *c, const char *fp)
{
    for (size_t i = 0; c && i < c->n_nodes; i++)
        if (pmm_tls_fp_str_eq(c->nodes[i].fp, fp) == 1) return &c->nodes[i];
    return NULL;
}

const pmm_cnode *pmm_cluster_master(const pmm_cluster *c)
{
    return pmm_cluster_by_cid(c, c ? c->master_cid : 0);
}

int pmm_cluster_add(pmm_cluster *c, const pmm_cnode *n, uint32_t *cid)
{
    if (c->n_nodes >= PMM_CLUSTER_NODES_MAX || c->maxcid >= PMM_CLUSTER_CID_MAX)
        return -ENOSPC;
    pmm_cnode *v = realloc(c->nodes, (c->n_nodes + 1) * sizeof(*v));
    if (!v) return -ENOMEM;
    c->nodes = v;
    pmm_cnode *m = &c->nodes[c->n_nodes++];
    *m = *n;
    m->cid = ++c->maxcid;
    m->master = false;
    if (cid) *cid = m->cid;
    return 0;
}

int pmm_cluster_remove(pmm_cluster *c, uint32_t cid)
{
    for (size_t i = 0; i < c->n_nodes; i++) {
        if (c->nodes[i].cid == cid) {
            memmove(&c->nodes[i], &c->nodes[i + 1],
                    (c->n_nodes - i - 1) * sizeof(*c->nodes));
            c->n_nodes--;
            return 0;
        }
    }
    return -ENOENT;
}

int pmm_cluster_set_master(pmm_cluster *c, uint32_t cid)
{
    if (!pmm_cluster_by_cid(c, cid)) return -ENOENT;
    c->master_cid = cid;
    for (size_t i = 0; i < c->n_nodes; i++)
        c->nodes[i].master = c->nodes[i].cid == cid;
    return 0;
}

/* ---- password ------------------------------------------------------------------ */

int pmm_password_hash(const char *pw, const uint8_t salt[PMM_SALT_LEN],
                      uint32_t iter, uint8_t out[PMM_HASH_LEN])
{
    mbedtls_md_context_t md;
    mbedtls_md_init(&md);
    int rc = mbedtls_md_setup(&md, mbedtls_md_info_from_type(MBEDTLS_MD_SHA256),
                              1);
    if (rc == 0)
        rc = mbedtls_pkcs5_pbkdf2_hmac(&md, (const unsigned char *)pw,
                                       strlen(pw), salt, PMM_SALT_LEN, iter,
                                       PMM_HASH_LEN, out);
    mbedtls_md_free(&md);
    return rc ? -EIO : 0;
}

bool pmm_password_match(const uint8_t a[PMM_HASH_LEN],
                        const uint8_t b[PMM_HASH_LEN])
{
    uint8_t d = 0;
    for (size_t i = 0; i < PMM_HASH_LEN; i++) d |= a[i] ^ b[i];
    return d == 0;
}
