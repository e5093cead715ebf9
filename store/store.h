/*
 * store.h - the replicated PostgreSQL store of pmgcm (public header of the
 * store library, prefix pst_).
 *
 * One PostgreSQL database per node, reached with a libpq conninfo. The
 * replicated set is every table with a primary key in the configured
 * schemas minus an exclusion list. The store keeps its own schema `pmgcm`
 * in that database:
 *
 *   pmgcm.state      one row: role ('none' | 'master' | 'replica'), master
 *                    name, epoch, seq (last applied change), recv_seq (last
 *                    change held in the log), loaded, snapshots (count)
 *   pmgcm.capture    changes committed on the master, not yet numbered
 *   pmgcm.log        the ordered change log: (epoch, seq) positions
 *   pmgcm.epochs     where each epoch (master term) started
 *   pmgcm.divergence changes this node holds that the cluster never got
 *   pmgcm.tables     the replicated set and its generated apply statements
 *
 * Capture: one trigger per replicated table (rows and TRUNCATE). On the
 * master it copies the change into pmgcm.capture and NOTIFYs; on any other
 * node of a cluster it raises "... write on the master (NAME)"; outside a
 * cluster (role 'none') it lets the write through uncaptured. The store's
 * own sessions run with session_replication_role = replica, so triggers do
 * not fire for them.
 *
 * Numbering (master): woken by the NOTIFY (delivered at commit), the store
 * moves every visible pmgcm.capture row into pmgcm.log in one transaction,
 * numbered seq+1.. in capture order under the current epoch. A transaction
 * that commits after a higher-numbered capture row's transaction is simply
 * seen by a later numbering pass: nothing is skipped, because the pass
 * deletes what it numbers instead of remembering "the largest id seen".
 * Each pass's last entry has last = true; a pass holds whole transactions.
 *
 * Apply (other nodes): received entries are inserted into pmgcm.log and,
 * up to the last complete pass, applied, with pmgcm.state updated, all in
 * one transaction (exactly once across crashes).
 *
 * Threads: all libpq work runs on the store's worker threads (blocking
 * libpq, one connection each) or on a per-snapshot thread; the loop thread
 * only posts jobs and gets results through a uv_async. LISTEN runs on an
 * extra non-blocking connection under uv_poll.
 *
 * Streams: pst_session is a transport-agnostic stream endpoint (sans-IO
 * towards the network): the caller feeds frames in and sends the frames
 * the session gives it (see pst_link). Membership carries them over the
 * nodes' pinned TLS channel.
 *
 * All functions run on the loop thread. Return 0 or a negative errno (or
 * PST_E* below -700). Ownership is stated next to each function.
 */
#ifndef PMGCM_STORE_STORE_H
#define PMGCM_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;

/* Project error codes -701..-799, listed with every range in common.h
 * (PMM_ERRNO_MAP):
 *   PST_ENEEDSNAP  the upstream no longer holds our range
 *   PST_EDIVERGED  we held changes the cluster never got
 *   PST_ESCHEMA    table definitions differ
 *   PST_EREMOTE    the peer reported an error
 *   PST_EDB        the database failed (message in info.error)
 *   PST_EPROTO     malformed or unexpected stream message
 *   PST_EAHEAD     the upstream is behind us */

/* The pmgcm schema version this build installs and migrates to
 * (schema.c; store/sql/migrate_N.sql). A database whose schema is newer
 * is refused: pst_info.fatal, the daemon exits. */
#define PST_SCHEMA_VERSION 2

/* `pmgcm detach` (detach.c; blocking, for a program without a loop): the
 * database at conninfo leaves its cluster's state, so that a restored
 * dump of a node takes writes again with no daemon: pmgcm.state's role
 * none (no master, cid 0, no cluster), the write guard's triggers
 * dropped, the fence at 2 (outside a cluster), inactive pmgcm slots
 * dropped; data, log and positions kept. Refused with -EBUSY (err names
 * who) while a daemon uses the database (its sessions or an active slot)
 * unless force. What was done, line by line, into report (cap replen).
 * 0, -EBUSY, -EINVAL, PST_EDB (err). A database without the pmgcm schema
 * is left alone (0, report says so). */
int pst_detach(const char *conninfo, bool force, char *report, size_t replen,
               char *err, size_t errlen);

/* Static text for 0, -errno and every project code (pmm_strerror). */
const char *pst_strerror(int err);

typedef struct pst_pos {
    uint64_t epoch, seq;
} pst_pos;

/* Order by (epoch, seq). */
int pst_pos_cmp(pst_pos a, pst_pos b);

typedef enum pst_state {
    PST_OFF = 0,      /* not configured                                  */
    PST_CONNECTING,   /* database not reachable yet / being set up       */
    PST_IDLE,         /* set up, not in a cluster (role 'none')          */
    PST_LOADING,      /* loading a snapshot                               */
    PST_CATCHING_UP,  /* behind the upstream, or no upstream yet         */
    PST_IN_SYNC,      /* master, or caught up with the upstream          */
    PST_DIVERGED,     /* recording divergent changes before a resync     */
    PST_ERROR,        /* stuck on an error (info.error), retrying        */
} pst_state;

/* "off", "connecting", "idle", "loading", "catching-up", "in-sync",
 * "diverged", "error". */
const char *pst_state_name(pst_state s);

typedef struct pst_config {
    const char *conninfo;     /* libpq conninfo; copied                   */
    const char *schemas;      /* comma list, NULL = "public"; copied      */
    const char *exclude;      /* comma list of schema.table; copied       */
    uint32_t retention_s;     /* change log kept on every node            */
    const char *origin_tables;/* "schema.table:column, ..." (per-origin
                                 tables, see below); copied               */
    uint32_t workers;         /* worker threads (0 = 4)                   */
    uint32_t snapshot_jobs;   /* tables a join loads at once, each in a
                                 connection of its own: 1..4 (0 = 4)     */
    uint32_t tick_ms;         /* the housekeeping timer (pings, retries,
                                 checks, trims), first fire included: 0 =
                                 every 1 s, the first after 2 s. A test
                                 sets it long to see that nothing waits
                                 for it                                   */
} pst_config;

typedef struct pst_events {
    /* something in pst_info changed (state, position, head) */
    void (*changed)(void *ud);
    /* one log line: level 0 error, 1 warn, 2 info, 3 debug */
    void (*log)(void *ud, int level, const char *msg);
    void *ud;
} pst_events;

typedef struct pst_store pst_store;

/* Starts the store: worker threads, then (asynchronously, retried every
 * 2 s while the database is unreachable) installs the pmgcm schema,
 * discovers the replicated set, installs the triggers and reads the
 * state. cfg and ev are copied. 0 and *out, -EINVAL, -ENOMEM. */
int pst_open(struct uv_loop_s *loop, const pst_config *cfg,
             const pst_events *ev, pst_store **out);
/* Stops everything: sessions end (their links' close fire), threads are
 * joined (a running statement is cancelled), connections closed, st is
 * freed. Blocks the loop for at most the time a cancel takes. NULL ok. */
void pst_close(pst_store *st);

typedef struct pst_info {
    pst_state state;
    bool ready;            /* schema installed and state read            */
    bool master;           /* role 'master' and numbering changes        */
    bool loaded;           /* holds a snapshot (or created the cluster)  */
    pst_pos pos;           /* last applied change                        */
    uint64_t recv_seq;     /* last change held in the log                */
    pst_pos head;          /* newest upstream position we know (master:
                              = pos)                                     */
    int64_t pos_ts_us;     /* capture time of the last applied change   */
    int64_t head_ts_us;    /* capture time of head                       */
    uint64_t snapshots;    /* snapshots loaded (pmgcm.state.snapshots)   */
    uint64_t applied_total, captured_total, divergent_total;
    uint64_t served_direct; /* master: CHANGES frames sent to followers as
                               the capture committed them, without a read
                               of the log                                */
    size_t n_tables;
    size_t n_origin_tables;
    /* snapshot being loaded */
    uint64_t snap_rows, snap_bytes, snap_est_rows, snap_est_bytes;
    uint32_t snap_tables_done, snap_tables;
    uint64_t snap_started_ms;
    char error[256];       /* last error, "" if none                     */
    bool fatal;            /* refused for good (the database's schema is
                              newer than this build): error says why,
                              nothing is retried                         */
    char schema_digest[17];/* first 16 hex digits of SHA-256(schema)    */
    /* computed by pst_get_info: */
    bool db_down;          /* the last database check failed (error)    */
    uint64_t lag;          /* changes behind the newest head known (the
                              upstream's frames, the master's gossip)   */
    uint32_t load_pct;     /* snapshot being loaded: percent done       */
    char reason[112];      /* why state is not in-sync, "" when it is   */
    /* data kept instead of being destroyed (pmgcm.backups, divergence) */
    uint32_t kept_backups; /* records in pmgcm.backups                  */
    uint64_t kept_rows;    /* rows in their backup schemas              */
    uint64_t kept_divergence; /* rows in pmgcm.divergence               */
    /* capture through logical decoding (the node's slot) */
    bool capturing;        /* the slot is being streamed                */
    int64_t wal_retained;  /* bytes of WAL the slot holds back          */
    char slot_status[16];  /* pg_replication_slots.wal_status, "" none  */
    int64_t slot_safe;     /* safe_wal_size: bytes before the slot is
                              lost, -1 when unbounded                   */
    uint64_t slot_repairs; /* slots found lost and re-made (resyncs)    */
    uint64_t sync_waiting; /* db_sync: commits held for acknowledgement */
    uint32_t sync_need;    /* db_sync: followers that must hold a change
                              before its commit returns (0: off)         */
    uint32_t sync_have;    /* followers acknowledging now                */
    bool sync_active;      /* synchronous_standby_names names us          */
} pst_info;

/* A follower counts as in sync while it is at most this many changes
 * behind the newest head it knows (a busy master's stream in flight). */
#define PST_SYNC_LAG_MAX 500

/* A snapshot of the store's state: in-sync only when the database
 * answered its last check (every second) and, on any node but the master,
 * the data is loaded, followed, and at most PST_SYNC_LAG_MAX changes
 * behind the newest head known; reason says why not otherwise. */
void pst_get_info(const pst_store *st, pst_info *out);
/* The head the current master announces (its gossiped position), or
 * {0, 0} when there is none alive: a follower is behind by what it has
 * not applied of max(this, what its upstream's frames said). */
void pst_set_master_head(pst_store *st, pst_pos head);
/* The reason text pst_get_info would give for info (pure; exposed for
 * tests). Returns buf. */
const char *pst_reason(const pst_info *info, char *buf, size_t len);
/* The canonical text of the replicated set's definitions (one line per
 * table: "schema.table(col type, ...) pk(cols)"), or NULL before the
 * database is ready. Valid until the next callback into the store. */
const char *pst_schema(const pst_store *st);
/* The first difference between the master's and this node's schema text,
 * in words, into buf ("identical" when equal). Returns buf. */
const char *pst_schema_diff(const char *mine, const char *master, char *buf,
                            size_t len);

/* ---- data kept instead of destroyed -------------------------------------------
 * A snapshot that replaces tables whose data is not a prefix of the
 * snapshot's lineage (a node that never loaded, left the cluster, held
 * changes of another term, or is past the snapshot's head) first copies
 * what it replaces into a schema pmgcm_backup_<time>_<id> (one table per
 * replicated table, named like it, holding the rows the snapshot does not
 * hold identically), recorded in pmgcm.backups, logged with counts.
 * pmgcm.backups also holds notes (promote --accept-data-loss). pst_info's
 * kept_* count them and pmgcm.divergence until an admin clears them. */

/* Records a note (kind, text) in pmgcm.backups, asynchronously (an error
 * is logged). 0, -EINVAL, -ENOMEM. */
int pst_note(pst_store *st, const char *kind, const char *text);

/* done(ud, rc, text): rc 0 and text = list: one JSON object (written by
 * PostgreSQL) {"backups":[{id, created, kind, schema, tables, rows,
 * reason}], "divergence":N}; clear: a sentence; rc < 0 and text = why. text is valid
 * during the call. Runs on the loop (also with -ECANCELED at close). */
typedef void (*pst_backups_fn)(void *ud, int rc, const char *text);
/* clear NULL: list; an id: drop that backup (its schema) and its record;
 * "divergence": delete every pmgcm.divergence row. 0; -EINVAL (clear is
 * neither), -EAGAIN (database not ready), -ENOMEM. */
int pst_backups(pst_store *st, const char *clear, pst_backups_fn done,
                void *ud);

/* ---- per-origin tables ------------------------------------------------------
 * Tables named in origin_tables ("schema.table:column") hold every node's
 * own rows: the column is the cid of the node that wrote the row and must
 * be part of the primary key. On a node in a cluster, an ordinary session
 * may only write rows carrying this node's cid (anything else fails with
 * "... belongs to the node with cid N ..."; TRUNCATE is refused). Each
 * node numbers its own changes (pmgcm.olog, per-origin seq) and every node
 * follows every other node's origin stream directly (PST_OSUBSCRIBE), also
 * while the master is down; positions per origin live in pmgcm.opos,
 * updated in the same transaction as the applied rows. A snapshot carries
 * every origin's rows except the receiver's own, which it keeps. */
typedef struct pst_origin {
    uint32_t origin;   /* cid */
    uint64_t seq;      /* last change of that origin applied here (for
                          this node's own origin: numbered)            */
    uint64_t recv_seq; /* last held in pmgcm.olog                       */
    int64_t ts_us;     /* its capture time on the origin                */
} pst_origin;

/* Copies up to max entries; returns how many there are. */
size_t pst_get_origins(const pst_store *st, pst_origin *out, size_t max);
/* Removes every row of origin cid from the per-origin tables, its log and
 * its position (pmgcm delete --purge), locally. done as for roles. */
int pst_purge_origin(pst_store *st, uint32_t cid,
                     void (*done)(void *ud, int rc), void *ud);

/* Sets the role. master: number changes under `epoch` (a new epoch >
 * the current one starts a term: the log gets an epoch entry; entries
 * received but not applied are dropped). !master with in_cluster: refuse
 * ordinary writes, naming master_name; capture rows left from a term as
 * master are moved to pmgcm.divergence. !in_cluster: role 'none'.
 * done (may be NULL) runs on the loop with 0 or an error. Roles are
 * applied in call order. 0 or -ENOMEM. */
int pst_set_role(pst_store *st, bool in_cluster, bool master, uint64_t epoch,
                 uint32_t self_cid, const char *master_name,
                 const char *cluster, void (*done)(void *ud, int rc),
                 void *ud);

/* db_sync on the master: a commit returns only once `need` followers
 * hold the change (0: off). The store sets PostgreSQL's
 * synchronous_standby_names to its capture connection while master and
 * need > 0 (ALTER SYSTEM; resets it otherwise, if it is ours) and
 * reports its flush position only for what that many followers
 * acknowledged (their subscriptions send ACKs). With fewer followers
 * connected, commits wait: pst_info's sync_* say so. */
void pst_set_sync(pst_store *st, uint32_t need);

/* Marks the current data as the cluster's initial data (pmgcm create):
 * loaded = true. done as above. */
int pst_mark_loaded(pst_store *st, void (*done)(void *ud, int rc), void *ud);

/* ---- streams ------------------------------------------------------------ */

/* What a session needs from its transport. */
typedef struct pst_link {
    /* Sends one frame (copy it). 0; -EAGAIN: not sent, call
     * pst_session_writable when the transport drained; other -errno:
     * the transport is gone. */
    int (*send)(void *ud, const uint8_t *buf, size_t len);
    /* Client sessions: stop / restart delivering frames. */
    void (*pause)(void *ud, bool paused);
    /* The session has ended (rc 0 = done, or why); the caller closes the
     * transport and calls pst_session_free. Fires once, from the loop. */
    void (*end)(void *ud, int rc, const char *why);
    void *ud;
} pst_link;

typedef struct pst_session pst_session;

typedef enum pst_open_kind {
    PST_SUBSCRIBE = 1, /* changes after our position, live              */
    PST_SNAPSHOT = 2,  /* a full snapshot, then end                      */
    PST_POSITION = 3,  /* the peer's position, then end                  */
    PST_OSUBSCRIBE = 4,/* one origin's changes after our position, live  */
} pst_open_kind;

/* Client: builds the opening message for `kind` (malloc'ed into *buf;
 * the caller sends it inside its own request and frees it) and a session
 * that consumes the server's frames. 0, -ENOMEM, -EAGAIN (store not
 * ready). */
int pst_client(pst_store *st, pst_open_kind kind, uint32_t self_cid,
               const pst_link *link, uint8_t **buf, size_t *len,
               pst_session **out);
/* The same for PST_OSUBSCRIBE: the changes of origin `origin`. */
int pst_client_origin(pst_store *st, uint32_t origin, uint32_t self_cid,
                      const pst_link *link, uint8_t **buf, size_t *len,
                      pst_session **out);
/* Server: a session answering the opening message `open`. 0, -EINVAL
 * (malformed), -EAGAIN (store not ready), -ENOMEM. On success frames are
 * sent through link from the loop. */
int pst_server(pst_store *st, const uint8_t *open, size_t len,
               const pst_link *link, pst_session **out);
/* A frame from the peer (copied as needed). */
void pst_session_frame(pst_session *s, const uint8_t *buf, size_t len);
/* The transport closed gracefully: a snapshot being loaded finishes from
 * what arrived (end follows when it is committed or failed); any other
 * session ends with -ECONNRESET. */
void pst_session_eof(pst_session *s);
/* The transport accepted frames again after -EAGAIN. */
void pst_session_writable(pst_session *s);
/* Client POSITION: the peer's answer, valid after end(0). */
pst_pos pst_session_peer_pos(const pst_session *s);
/* Ends the session (no further link callbacks, end included) and frees
 * it; background work it started is cancelled and cleaned up later.
 * NULL ok. */
void pst_session_free(pst_session *s);

#ifdef __cplusplus
}
#endif
#endif
