/*
 * repl.h - the store's streams over the node API (internal header of the
 * membership library, prefix pmm_repl_).
 *
 * repl decides, from the cluster config and gossip, what this node's store
 * does (store/store.h):
 *   - outside a cluster: role 'none';
 *   - master: first catches up from the most advanced live peer (POSITION
 *     to every live node, SUBSCRIBE to the best until level), then numbers
 *     changes under the config's epoch;
 *   - any other node: a snapshot from the master when it holds no loaded
 *     data (join, divergence, a gap beyond the upstream's retention), else
 *     SUBSCRIBE to the master; reconnects with backoff.
 * Every stream is one TLS connection to a peer's node API whose first
 * frame is a Request{STORE, store = Open}; the server answers with one
 * Response (ok or why not) and then the store's frames.
 */
#ifndef PMGCM_DAEMON_REPL_H
#define PMGCM_DAEMON_REPL_H

#include "membership/cluster.h"
#include "store/store.h"

typedef struct pmm_repl pmm_repl;

typedef struct pmm_repl_env {
    struct uv_loop_s *loop;
    const pmm_config *cfg;
    pmm_lc *lc;
    gsp_uv *u;
    void (*changed)(void *ud); /* store state changed (status, meta) */
    void *ud;
} pmm_repl_env;

/* Starts the store when cfg->db_conninfo is set (else *out = NULL, 0).
 * 0 or -errno with a reason in err. */
int pmm_repl_start(pmm_repl **out, const pmm_repl_env *env, char *err,
                   size_t errlen);
/* Ends every stream and closes the store. NULL ok. */
void pmm_repl_close(pmm_repl *r);
/* The cluster config or gossip view changed: re-decide. */
void pmm_repl_cluster_changed(pmm_repl *r);
/* The store's state (zeroed, state PST_OFF, when r is NULL). */
void pmm_repl_info(const pmm_repl *r, pst_info *out);
/* This node's replicated table definitions (pst_schema), or NULL without
 * a store or before its database is ready. */
const char *pmm_repl_schema(const pmm_repl *r);
/* Per-origin positions (store/store.h pst_get_origins); 0 when r NULL. */
size_t pmm_repl_origins(const pmm_repl *r, pst_origin *out, size_t max);

/* Records a note in the store's pmgcm.backups (pst_note); r NULL: no-op. */
void pmm_repl_note(pmm_repl *r, const char *kind, const char *text);
/* pmgcm backups (pst_backups): clear NULL lists. -ENODEV without a store. */
int pmm_repl_backups(pmm_repl *r, const char *clear, pst_backups_fn done,
                     void *ud);

/* Server side, called by lifecycle.c for a STORE request on connection c:
 * answers ok and returns the stream object that owns c from now on (its
 * frames, writable and close go to the three functions below), or NULL
 * with a reason in why (the caller answers with it). */
void *pmm_repl_serve(pmm_repl *r, pmm_tls_conn *c, const uint8_t *open,
                     size_t len, char *why, size_t whylen);
void pmm_repl_srv_frame(void *stream, const uint8_t *data, size_t len);
void pmm_repl_srv_writable(void *stream);
/* The connection closed: frees the stream. */
void pmm_repl_srv_close(void *stream);

#endif
