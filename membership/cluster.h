/*
 * cluster.h - the versioned cluster configuration (internal header of the
 * membership library, prefix pmm_cluster_ / pmm_lc_).
 *
 * A config is {cluster_id, epoch, version, master_cid, maxcid, nodes[],
 * join password hash, gossip keyring}. Configs are ordered by
 * (epoch, version): only the master bumps version, promote bumps epoch.
 * It is persisted in data_dir/cluster.conf (protobuf, mode 0600, written
 * atomically) and moved between nodes only over pinned TLS.
 */
#ifndef PMGCM_MEMBERSHIP_CLUSTER_H
#define PMGCM_MEMBERSHIP_CLUSTER_H

#include "gossip/gossip.h"
#include "membership/membership.h"
#include "net/net.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PMM_CLUSTER_FILE "cluster.conf"
#define PMM_CLUSTER_NODES_MAX 1024
#define PMM_CLUSTER_CID_MAX 65535
#define PMM_SALT_LEN 16
#define PMM_HASH_LEN 32
#define PMM_PBKDF2_ITER 100000
#define PMM_PASSWORD_MAX 1024
#define PMM_IP_STR_MAX 46
#define PMM_DEFAULT_API_PORT 7947
#define PMM_ANNOUNCE_KEY 1
#define PMM_PURGED_MAX 64 /* gossip user-broadcast key of announcements */

typedef struct pmm_cnode {
    uint32_t cid;
    char name[GSP_NAME_MAX + 1];
    char ip[PMM_IP_STR_MAX + 1];
    uint16_t gossip_port;
    uint16_t api_port;
    gsp_id node_id;
    char fp[PMM_TLS_FP_STR_SIZE];
    bool master;
} pmm_cnode;

typedef struct pmm_cluster {
    uint8_t cluster_id[16];
    uint64_t epoch, version;
    uint32_t master_cid, maxcid;
    pmm_cnode *nodes; /* owned */
    size_t n_nodes;
    uint8_t salt[PMM_SALT_LEN];
    uint8_t hash[PMM_HASH_LEN];
    uint32_t iter;
    uint8_t keys[GSP_KEYRING_MAX][GSP_KEY_LEN];
    size_t n_keys;
    bool has_files_digest;          /* the master published mirrored files */
    uint8_t files_digest[PMM_HASH_LEN]; /* their manifest digest (files.h) */
    uint32_t purged[PMM_PURGED_MAX]; /* cids deleted with --purge (newest
                                        last; the oldest drop out) */
    size_t n_purged;
} pmm_cluster;

/* Frees c's node array and zeroes c (keys included). */
void pmm_cluster_clear(pmm_cluster *c);
/* Deep copy into dst (cleared first). 0 or -ENOMEM. */
int pmm_cluster_copy(pmm_cluster *dst, const pmm_cluster *src);
/* Checks every invariant; writes a reason into err. 0 or -EINVAL.
 * need_keys: a config that carries no keyring is invalid. */
int pmm_cluster_validate(const pmm_cluster *c, bool need_keys, char *err,
                         size_t errlen);
/* (epoch, version) order: <0, 0, >0. */
int pmm_cluster_cmp(const pmm_cluster *a, const pmm_cluster *b);

/* Protobuf image (keys included only if with_keys). *buf malloc'ed, the
 * caller frees. 0, -ENOMEM. */
int pmm_cluster_encode(const pmm_cluster *c, bool with_keys, uint8_t **buf,
                       size_t *len);
/* Decodes and validates into out (only written on success). 0 or -EINVAL
 * with a reason in err. */
int pmm_cluster_decode(pmm_cluster *out, const uint8_t *buf, size_t len,
                       bool need_keys, char *err, size_t errlen);
/* Protobuf <-> model for embedding in other messages (cluster.pb-c.h).
 * to_pb: *pb points into c (do not free its fields); free with
 * pmm_cluster_pb_free. */
struct Pmgcm__Cluster__Config;
int pmm_cluster_to_pb(const pmm_cluster *c, bool with_keys,
                      struct Pmgcm__Cluster__Config **pb);
void pmm_cluster_pb_free(struct Pmgcm__Cluster__Config *pb);
int pmm_cluster_from_pb(pmm_cluster *out,
                        const struct Pmgcm__Cluster__Config *pb,
                        bool need_keys, char *err, size_t errlen);

/* Reads dir/cluster.conf: 0, -ENOENT (no cluster), -EINVAL (corrupt, with
 * a reason). Blocking: startup or a worker thread. */
int pmm_cluster_load(const char *dir, pmm_cluster *out, char *err,
                     size_t errlen);
/* Writes dir/cluster.conf atomically, mode 0600. Blocking. */
int pmm_cluster_save(const char *dir, const pmm_cluster *c);
/* Removes dir/cluster.conf (a deleted node). Blocking. */
int pmm_cluster_remove_file(const char *dir);

/* A bare IPv4/IPv6 literal (no port, no brackets). */
bool pmm_ip_literal_ok(const char *ip);

const pmm_cnode *pmm_cluster_by_cid(const pmm_cluster *c, uint32_t cid);
const pmm_cnode *pmm_cluster_by_id(const pmm_cluster *c, const gsp_id *id);
const pmm_cnode *pmm_cluster_by_name(const pmm_cluster *c, const char *n);
const pmm_cnode *pmm_cluster_by_ip(const pmm_cluster *c, const char *ip);
const pmm_cnode *pmm_cluster_by_fp(const pmm_cluster *c, const char *fp);
const pmm_cnode *pmm_cluster_master(const pmm_cluster *c);

/* Adds n with cid = ++maxcid (n->cid and n->master are ignored); *cid out.
 * Does not bump version. 0, -ENOMEM, -ENOSPC. */
int pmm_cluster_add(pmm_cluster *c, const pmm_cnode *n, uint32_t *cid);
/* Removes the node with this cid. 0 or -ENOENT. */
int pmm_cluster_remove(pmm_cluster *c, uint32_t cid);
/* Makes cid the master (roles follow). 0 or -ENOENT. */
int pmm_cluster_set_master(pmm_cluster *c, uint32_t cid);

/* PBKDF2-HMAC-SHA256. Slow by design (~tens of ms at the default
 * iterations): call from a worker thread. 0 or -EIO. */
int pmm_password_hash(const char *pw, const uint8_t salt[PMM_SALT_LEN],
                      uint32_t iter, uint8_t out[PMM_HASH_LEN]);
/* Constant-time comparison of a computed hash with the stored one. */
bool pmm_password_match(const uint8_t a[PMM_HASH_LEN],
                        const uint8_t b[PMM_HASH_LEN]);

/* ---- lifecycle (lifecycle.c): runs in the daemon on the loop ------------ */
typedef struct pmm_lc pmm_lc;

typedef struct pmm_lc_env {
    struct uv_loop_s *loop;
    const pmm_config *cfg;   /* daemon config (name, advertise, data_dir) */
    uint16_t api_port;       /* TLS node API port (on the advertise IP) */
    gsp_id node_id;
    gsp_keyring *kr;         /* the gossip keyring; lifecycle edits it */
    gsp_uv *u;               /* the gossip adapter (core access, kick) */
    /* the node API (net.h): lifecycle serves JOIN, FETCH and REMOVED on
     * it, is its gate, and calls other nodes through it; must outlive lc */
    pmm_api *api;
    /* called after the cluster config changed (status, meta refresh) */
    void (*changed)(void *ud);
    /* What the rest of the node knows (each may be NULL):
     * schema: this node's replicated table definitions, sent with a join
     *   (NULL: none);
     * schema_diff: on the master, a joiner's definitions against ours:
     *   0 equal (or nothing to compare), else 1 with the difference in
     *   words in d (d may be NULL: only the verdict);
     * promote_check: what `pmgcm promote` checks before it changes
     *   anything (daemon/precheck.c): 0 it may go on (lost: what
     *   --accept-data-loss gives up, "" when nothing); 1 refused, why in
     *   words, *waitable when the node mends it by itself (catching up)
     *   with *progress a position that moves meanwhile; <0 refused
     *   (why);
     * note: records what promote --accept-data-loss lost (the store's
     *   pmgcm.backups). */
    const char *(*schema)(void *ud);
    int (*schema_diff)(void *ud, const char *theirs, char *d, size_t len);
    int (*promote_check)(void *ud, bool accept, char *why, size_t whylen,
                         char *lost, size_t lostlen, bool *waitable,
                         uint64_t *progress);
    void (*note)(void *ud, const char *kind, const char *text);
    void *ud;
} pmm_lc_env;

/* Loads data_dir/cluster.conf (installing its keyring into env->kr and
 * its nodes as gossip seeds) and registers its requests with the node
 * API. 0 or -errno with a reason in err. */
int pmm_lc_start(pmm_lc **out, const pmm_lc_env *env, char *err,
                 size_t errlen);
/* Stops the API server and every connection; frees lc asynchronously. */
void pmm_lc_close(pmm_lc *lc);
/* Handles a control-socket command other than status/ping. */
void pmm_lc_ctl(pmm_lc *lc, pmm_ctl_req *req, const char *cmd,
                const pmm_json *args);
/* Gossip user broadcast callback (announcements). */
void pmm_lc_user_msg(pmm_lc *lc, uint32_t key, uint64_t version,
                     const uint8_t *data, size_t len);
/* The current config, or NULL outside a cluster. Valid until the next
 * callback into lc. */
const pmm_cluster *pmm_lc_cluster(const pmm_lc *lc);
/* In a cluster and holding the newest config anyone has announced. */
bool pmm_lc_config_synced(const pmm_lc *lc);
/* This node's TLS certificate fingerprint ("AB:CD:..."). */
const char *pmm_lc_fingerprint(const pmm_lc *lc);
/* What the node API holds for whom, and the join throttle (for /metrics
 * and status). */
typedef struct pmm_lc_guard {
    pmm_tls_server_stats api;  /* handshakes: now, peak, evicted, ... */
    uint32_t node_streams;     /* known nodes' connections now ... */
    uint32_t streams_max;      /* ... and the most allowed */
    uint32_t joiners;          /* unknown certificates past the handshake */
    uint64_t refused_streams, refused_joiners;
    pmm_thr_stats join;        /* the join throttle */
} pmm_lc_guard;
void pmm_lc_guard_stats(pmm_lc *lc, pmm_lc_guard *out);

/* ---- the node API's messages (cluster.proto Request, Response) ------------ */
struct Pmgcm__Cluster__Request;
struct Pmgcm__Cluster__Response;
/* Answers a node API request with resp (packed here; the caller keeps
 * ownership of resp); frees r (pmm_api_reply). Never touches lc. */
void pmm_lc_api_reply(pmm_api_req *r,
                      const struct Pmgcm__Cluster__Response *resp);
/* Outcome of pmm_lc_call_master: rc 0 and resp (valid only during the
 * call), or -errno with resp NULL (-ECANCELED: lc is closing). */
typedef void (*pmm_lc_resp_fn)(void *ud, int rc,
                               const struct Pmgcm__Cluster__Response *resp);
/* Sends req to the master of this node's config over TLS pinned to the
 * master's fingerprint. 0: fn is called exactly once, later; -errno (not
 * in a cluster, this node is the master, ...): fn is never called. */
int pmm_lc_call_master(pmm_lc *lc, const struct Pmgcm__Cluster__Request *req,
                       pmm_lc_resp_fn fn, void *ud);
/* Master only: publishes a new mirrored files digest in the config
 * (version + 1, written, then announced). 0 (also when unchanged),
 * -ENOENT outside a cluster, -EPERM not the master, -EBUSY during a key
 * rotation (retry later). */
int pmm_lc_set_files_digest(pmm_lc *lc, const uint8_t digest[PMM_HASH_LEN]);

#endif
