/*
 * internal.h - shared internals of the store library (not installed).
 */
#ifndef PMGCM_STORE_INTERNAL_H
#define PMGCM_STORE_INTERNAL_H

#include "store/store.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <uv.h>

/* libpq is loaded at the first connection (store/pq.c): 0, or -ELIBACC
 * with the loader's message in err. Thread safe; loads once. */
int pst_pq_load(char *err, size_t errlen);
bool pst_pq_loaded(void);

typedef struct pst_job pst_job;

/* A unit of database work: run() on a worker thread with that worker's
 * connection (NULL if it cannot connect: run must report an error), then
 * done() on the loop. The job is owned by its submitter. */
struct pst_job {
    pst_store *st;
    void (*run)(pst_job *j, PGconn *c);
    void (*done)(pst_job *j);
    pst_job *next;
    int rc;
    char err[256];
    bool cancelled; /* set by the loop; done() still runs */
    /* the statements prepared on the worker's connection (set by the
     * worker before run; pst_exec_prepared), NULL elsewhere */
    unsigned *prepared;
};

/* A bounded queue of byte buffers between a thread and the loop. */
typedef struct pst_buf {
    struct pst_buf *next;
    size_t len;
    uint8_t data[];
} pst_buf;

typedef struct pst_pipe {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pst_buf *head, *tail;
    size_t bytes, max_bytes;
    bool closed;   /* producer finished (eof) or consumer gone */
    bool aborted;  /* consumer gone: producer stops */
} pst_pipe;

void pst_pipe_init(pst_pipe *p, size_t max_bytes);
void pst_pipe_destroy(pst_pipe *p);
/* Producer: blocks while full; -ECANCELED once aborted. Takes b. */
int pst_pipe_put(pst_pipe *p, pst_buf *b);
/* Consumer, blocking (thread side): NULL at eof/abort. */
pst_buf *pst_pipe_get(pst_pipe *p);
/* Consumer, non-blocking (loop side): NULL if empty; *eof set at eof. */
pst_buf *pst_pipe_try_get(pst_pipe *p, bool *eof);
size_t pst_pipe_bytes(pst_pipe *p);
void pst_pipe_eof(pst_pipe *p);
void pst_pipe_abort(pst_pipe *p);
pst_buf *pst_buf_new(const void *data, size_t len);

typedef struct pst_worker {
    pst_store *st;
    uv_thread_t tid;
    PGconn *conn;
    unsigned prepared; /* PST_PREP_* bits prepared on conn */
    bool started;
    char tag[16]; /* its replication origin: "w<i>" */
} pst_worker;

/* Statements a connection prepares once (pst_exec_prepared, or
 * pst_sql_prepare for those run by name in a string of several): a job
 * run for every change batch need not parse and plan them each time. Bits
 * of pst_worker.prepared; PST_PREP_CAPTURE of the capture's session. */
enum {
    PST_PREP_READ_LOG = 0,
    PST_PREP_READ_OLOG = 1,
    PST_PREP_APPLY = 2,   /* apply.c's statements (SQL PREPARE, by name) */
    PST_PREP_CAPTURE = 3, /* capture.c's, on its own session */
    PST_PREP_N
};

struct pst_session;

#define PST_ORIGINS_MAX 64

/* The local replicated set: each table's name as pmgcm.tables holds it
 * (format('%I.%I', schema, table), so already a quoted identifier) and
 * whether it is a per-origin table. Table names that arrive from the
 * network (changes, snapshot table lists) are only ever looked up here:
 * what goes into SQL is the local entry, never the received text. */
typedef struct pst_tabname {
    char *name;
    bool origin;
} pst_tabname;

typedef struct pst_tableset {
    size_t n, cap;
    pst_tabname *t;
} pst_tableset;

/* A new empty set (NULL: out of memory). */
pst_tableset *pst_tableset_new(void);
/* Appends name (copied). 0, -EINVAL (NULL, empty, over 1024 bytes),
 * -EEXIST, -ENOMEM. */
int pst_tableset_add(pst_tableset *ts, const char *name, bool origin);
/* A deep copy (NULL: out of memory or ts NULL). */
pst_tableset *pst_tableset_dup(const pst_tableset *ts);
void pst_tableset_free(pst_tableset *ts);
/* The index of the entry whose name is byte for byte `name`, else -1
 * (also for NULL, a NULL set, or a name over 1024 bytes). */
int pst_tableset_find(const pst_tableset *ts, const char *name);
/* A received name made safe for a log line: at most cap-1 bytes, control
 * and non-ASCII bytes as '?', "..." when cut. Returns buf. */
const char *pst_safe_name(const char *name, char *buf, size_t cap);

struct pst_store {
    uv_loop_t *loop;
    pst_events ev;
    char *conninfo;
    char *schemas;
    char *exclude;
    char *origin_tables;
    uint32_t retention_s;
    uint32_t snap_jobs;     /* a join's loaders, 1..PST_SNAP_JOBS */

    /* the local replicated set (loop only; replaced at setup) */
    pst_tableset *tables;

    /* per-origin positions (loop only): origin cid -> last applied */
    pst_origin opos[PST_ORIGINS_MAX];
    size_t n_opos;

    /* worker pool */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pst_job *q_head, *q_tail;
    pst_job *done_head;
    bool stopping;
    pst_worker *workers;
    size_t n_workers;
    uv_async_t async;

    /* state (loop only) */
    pst_info info;
    char *schema_text;          /* canonical table definitions */
    bool setup_busy, apply_busy, trim_busy, repair_busy, repair_again;
    bool vacuum_busy, kept_busy, kept_again;
    uint64_t last_vacuum_ms, last_check_ms;
    uv_timer_t timer;           /* setup retry, checks, trim */
    uint64_t last_trim_ms;
    uint32_t self_cid;
    int closing;

    /* database check (every tick): the last one failed */
    bool ping_busy, db_down;
    uint64_t ping_run_ms; /* atomic: when a worker began the check, 0 */
    char db_error[160];
    /* the current master's announced head (pst_set_master_head) */
    pst_pos master_head;

    /* role requests, applied in order */
    struct role_req *roles_head, *roles_tail;
    bool role_busy;
    bool want_master;
    /* What orders the writers of pmgcm.state.loaded, whose results reach
     * the loop in any order (workers, the capture thread). unload_gen
     * (atomic) is bumped by a transaction that marks the data not loaded
     * while it holds the state row, before its commit (the capture, an
     * upstream's DIVERGED); one that reads loaded with the row locked
     * (a role job, a snapshot load) notes it. loaded_gen (loop): the
     * newest of those that info.loaded reflects: an older result is not
     * applied over a newer one (pst_loaded_read, pst_unloaded). */
    uint64_t unload_gen, loaded_gen;

    /* the capture thread (capture.c) */
    struct pst_capture *cap;
    /* under mu: the capture paused for a parallel load (pst_capture_hold)
     * and the running transactions it saw last (pg_snapshot text) */
    char *hold_snap;

    /* db_sync (session.c, schema.c) */
    uint32_t sync_need;   /* asked for (pst_set_sync) */
    bool sync_short;      /* fewer followers than needed: logged */
    bool ssn_busy, ssn_want, ssn_again; /* synchronous_standby_names */
    bool ssn_checked;     /* the setting was looked at in this run */
    bool checks_pending, checks_busy; /* write checks still to follow */

    struct pst_session *sessions;
    int refs; /* handles still closing */
    int snap_threads; /* snapshot threads running (atomic) */

    /* The capture's progress, for snapshot servers (atomics; capture.c
     * writes, snapshot.c reads): every transaction whose commit record
     * ends at or before cap_done_lsn was classified and what became of it
     * is committed (numbered into the log, or kept in pmgcm.divergence
     * with the data marked not loaded); cap_div_gen counts the capture's
     * commits that kept divergence (bumped before cap_done_lsn moves past
     * them); cap_want_lsn: a snapshot waits for cap_done_lsn to reach it,
     * so the capture asks the walsender how far it has read. */
    uint64_t cap_done_lsn, cap_div_gen, cap_want_lsn;
};

void pst_log(pst_store *st, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pst_changed(pst_store *st);
/* Queues j (j->st, run, done set by the caller). */
void pst_submit(pst_store *st, pst_job *j);
void pst_set_error(pst_store *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* backup.c */
/* Whether loaded data at pos is a prefix of the lineage whose terms
 * started at epochs[i] = {epoch, start seq} and whose head is head: the
 * term covering pos.seq there is pos.epoch, and pos is not past head.
 * Pure. */
bool pst_lineage_prefix(bool loaded, pst_pos pos, const pst_pos *epochs,
                        size_t n, pst_pos head);
/* In the snapshot load's transaction, before the tables are replaced: a
 * pmgcm.backups record, a schema (its name into schema) and a copy of
 * every table of ts (per-origin ones: the other origins' rows). */
int pst_backup_begin(PGconn *c, const pst_tableset *ts, uint32_t self_cid,
                     const char *why, char *schema, size_t schemalen,
                     char *err, size_t el);
/* After the new data is in: rows the new data holds identically leave the
 * backup, empty tables (and an empty backup) go; *rows, *tables kept. */
int pst_backup_end(PGconn *c, const pst_tableset *ts, const char *schema,
                   uint64_t *rows, uint32_t *tables, char *err, size_t el);
void pst_start_kept(pst_store *st);

/* sql.c (generated from store/sql/NAME.sql by store/sql2c.sh) */
extern const char pst_sql_setup[];         /* the pmgcm schema             */
extern const char pst_sql_tables[];        /* the replicated set ($1, $2)  */
extern const char pst_sql_origin_tables[]; /* db_origin_tables ($1)        */
extern const char pst_sql_migrate_2[];     /* schema version 1 -> 2        */

/* role.c */
void pst_roles_kick(pst_store *st);
void pst_roles_free(pst_store *st);
void pst_start_trim(pst_store *st);
/* PQexecParams with text parameters: 0 (*out the result when out is not
 * NULL: the caller clears it) or PST_EDB (message in err). */
int pst_q1(PGconn *c, const char *sql, int n, const char *const *pv,
           PGresult **out, char *err, size_t errlen);
/* sql (n text parameters, always the same text for id < PST_PREP_N) as
 * prepared statement id on c: prepared first when bit id of *prepared is
 * clear (the bit set once it is); with prepared NULL, PQexecParams. The
 * result as PQexecParams' (the caller clears it; a failed preparation's
 * result is returned instead). */
PGresult *pst_exec_prepared(PGconn *c, unsigned *prepared, int id,
                            const char *sql, int n, const char *const *pv);
/* The SQL PREPARE statements in stmts run on c unless bit id of *prepared
 * says they did (set once they have): for statements executed by name
 * (EXECUTE) in a string of several, one round trip. prepared must not be
 * NULL (a job's is set by its worker). 0 or PST_EDB (then every statement
 * of c is deallocated and *prepared is 0). */
int pst_sql_prepare(PGconn *c, unsigned *prepared, int id, const char *stmts,
                    char *err, size_t errlen);

/* schema.c */
/* The pmgcm schema's version in the database: 0 none (a fresh database),
 * 1 an install from before versioning, else pmgcm.schema's row. 0 or
 * PST_EDB. */
int pst_schema_version(PGconn *c, int *out, char *err, size_t el);
/* Installs or checks the pmgcm schema, the slot and the checks, and reads
 * the state: info's positions and loaded (as of *loaded_gen:
 * pst_loaded_read), opos, the replicated set (*tables, the caller's). */
int pst_db_setup(PGconn *c, pst_store *st, char *err, size_t errlen,
                 char **schema_text, pst_info *info, uint64_t *loaded_gen,
                 pst_origin *opos, size_t *n_opos, pst_tableset **tables,
                 bool *checks_pending);
int pst_schema_text(PGconn *c, pst_store *st, char **out, char *err,
                    size_t errlen);
/* the full setup while not ready; the cheap re-read of the definitions
 * (every few seconds) once ready */
void pst_setup_start(pst_store *st);
void pst_setup_check(pst_store *st);
/* the write checks for this role: none on a master's replicated tables, a
 * statement check elsewhere, a row check on per-origin tables (in the
 * caller's transaction) */
int pst_checks_set(PGconn *c, bool master, char *err, size_t el);
/* The same inside a savepoint with a 2 s lock timeout: when the tables'
 * locks are not to be had (writers waiting for db_sync hold them) the
 * caller's transaction goes on without, *pending set: pst_checks_retry
 * adds them later (the capture's divergence covers the meantime). */
int pst_checks_try(PGconn *c, bool master, bool *pending, char *err,
                   size_t el);
void pst_checks_retry(pst_store *st);
/* the slot is gone or lost: make a new one and resync cleanly (a job) */
void pst_slot_repair(pst_store *st);
void pst_start_vacuum(pst_store *st);
/* Sets up this session's replication origin "pmgcm_<db oid>_<tag>"
 * (created when missing): what it commits is not captured again. A tag
 * "@name" is server-wide: "pmgcm_<name>" (PostgreSQL keeps a replication
 * state for each origin ever set up, max_replication_slots of them for the
 * whole server: names shared by every database use fewer). */
int pst_origin_setup(PGconn *c, const char *tag, char *err, size_t el);

/* capture.c */
typedef struct pst_capture pst_capture;
/* The capture thread's state (pst_open; 0 or -ENOMEM); the thread itself
 * starts at the first successful setup (pst_capture_run) and stops in
 * pst_close (pst_capture_stop joins it). */
int pst_capture_start(pst_store *st);
void pst_capture_run(pst_store *st);
void pst_capture_stop(pst_store *st);
/* the role or the slot changed: look again now */
void pst_capture_poke(pst_store *st);
/* changes decoded while the database says master are numbered only while
 * on: the loop confirmed the master role in this run (role.c) */
void pst_capture_numbering(pst_store *st, bool on);
/* db_sync: the flush position reported to PostgreSQL waits until `need`
 * followers hold the log up to `acked` (need 0: off) */
void pst_capture_set_sync(pst_store *st, uint32_t need, uint64_t acked);
/* on the loop (async callback): what the thread numbered, its errors; the
 * CHANGES frames it made go to the serve sessions waiting for exactly
 * them (pst_serve_offer) */
void pst_capture_poll(pst_store *st);
/* A worker or the capture thread, in a transaction that marks the data
 * not loaded and holds the pmgcm.state row, before its commit: the
 * generation of that verdict. */
uint64_t pst_unload_bump(pst_store *st);
/* Any thread, the pmgcm.state row locked: the generation its loaded
 * value reflects. */
uint64_t pst_unload_gen(pst_store *st);
/* On the loop: info.loaded = loaded, read with the state row locked at
 * generation gen (pst_unload_gen), unless a "not loaded" of a later
 * generation is already applied. Whether it was applied. */
bool pst_loaded_read(pst_store *st, bool loaded, uint64_t gen);
/* On the loop: info.loaded = false, the verdict of generation gen
 * (pst_unload_bump), unless a read that saw it is already applied.
 * Whether it was applied. */
bool pst_unloaded(pst_store *st, uint64_t gen);
/* on the loop: a parallel snapshot load asks the capture to pause (on) or
 * to go on (off). Paused, the thread sets st->hold_snap (under st->mu):
 * the running transactions when it last looked, everything committed
 * after which is still to be decoded (capture.c hold_step). */
void pst_capture_hold(pst_store *st, bool on);
/* Any thread: a snapshot server needs st->cap_done_lsn at or past lsn;
 * the capture thread (when there is one) is woken to find out. */
void pst_capture_want(pst_store *st, uint64_t lsn);
/* Any thread: whether a capture thread runs (st->cap, under st->mu). */
bool pst_capture_running(pst_store *st);
/* The WAL position everything committed so far is complete at: the
 * insert position, or the start of its page when only the page's header
 * lies before it (no record ends between the two, and a walsender that
 * read everything reports the record's end, not the header's). */
uint64_t pst_wal_floor(uint64_t lsn, uint64_t page, uint64_t seg);
/* A worker thread: that position now, read on c (pst_wal_floor applied).
 * 0, or PST_EDB with err set. */
int pst_capture_wal_now(PGconn *c, uint64_t *lsn, char *err, size_t el);
/* A worker thread: waits until the capture has classified every commit
 * that ends at or before lsn (st->cap_done_lsn), polling every 2 ms.
 * stop(ud), when given, is asked on each round. 0, -ETIMEDOUT, or
 * -ECANCELED (stop said so). */
int pst_capture_wait(pst_store *st, uint64_t lsn, uint64_t timeout_ms,
                     bool (*stop)(void *ud), void *ud);
/* slots (any thread, blocking libpq): "pmgcm_<database oid>" */
int pst_slot_name(PGconn *c, char *buf, size_t len, char *err, size_t el);
/* A new connection, checked (store.c): NULL with err set when it failed
 * (c is finished), else c with notices quiet. Takes ownership of c. */
PGconn *pst_conn_ready(PGconn *c, char *err, size_t el);
PGconn *pst_repl_connect(const char *conninfo, const char *appname,
                         char *err, size_t el);
int pst_slot_info(PGconn *c, const char *slot, bool *exists, bool *lost,
                  char *err, size_t el);
int pst_slot_create(const char *conninfo, const char *slot, char *err,
                    size_t el);
/* terminates the slot's walsender, then drops it */
int pst_slot_drop(PGconn *c, const char *slot, char *err, size_t el);

/* store.c */
/* the entry for origin o (created when create), or NULL */
pst_origin *pst_opos(pst_store *st, uint32_t o, bool create);
/* drops a reference on st (closing handles); the last one frees it */
void pst_unref(pst_store *st);
/* helpers for jobs run on worker threads */
int pst_exec(PGconn *c, const char *sql, char *err, size_t errlen);
void pst_pgerr(PGconn *c, PGresult *r, char *err, size_t errlen);
/* COPY text of one value into *p (escapes \\, tab, newline, CR; NULL as
 * \\N); the caller sized the buffer (2 bytes per input byte). */
void pst_copy_esc(char **p, const char *s);

/* COPY rows being written (capture.c's log, own-origin log and divergence
 * rows; apply.c's log rows). The buffer is its user's: free(b->p). */
typedef struct pst_wbuf {
    char *p;
    size_t len, cap;
} pst_wbuf;
/* Room for n more bytes (and a NUL after them): 0 or -ENOMEM. */
int pst_wb_reserve(pst_wbuf *b, size_t n);
/* COPY's binary format (pmgcm.log and pmgcm.olog go in by it: the server
 * parses no numbers, timestamps or escapes, texts go as they are, jsonb as
 * a version byte and the text): a buffer starts with this header, each
 * row with its field count (pst_wb_be(b, n, 2)), and the rows end with
 * pst_wb_be(b, 0xffff, 2). The writers below need the room reserved. */
extern const char pst_copy_bin_head[19];
/* v's n low bytes, big-endian. */
static inline void pst_wb_be(pst_wbuf *b, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) b->p[b->len++] = (char)(v >> (8 * i));
}
/* A number field: its length n, then v in n bytes. */
static inline void pst_wb_num(pst_wbuf *b, uint64_t v, int n)
{
    pst_wb_be(b, (uint64_t)n, 4);
    pst_wb_be(b, v, n);
}
/* A text field of n bytes, or NULL (length -1); a jsonb one (json) with
 * the format's version byte first. */
static inline void pst_wb_bin_text(pst_wbuf *b, const char *s, size_t n,
                                   bool json)
{
    if (!s) {
        pst_wb_be(b, 0xffffffffu, 4);
        return;
    }
    pst_wb_be(b, n + json, 4);
    if (json) b->p[b->len++] = 1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
}
/* unix_us as timestamptz text in UTC, "2026-12-02 03:10:11.123456+00",
 * into buf (len bytes, 32 are enough). */
void pst_ts_text(int64_t unix_us, char *buf, size_t len);
/* b's bytes as the data of `sql`, a COPY ... FROM STDIN, on c (a worker's
 * connection): 0, PST_EDB (why in err) or -EFBIG (over 2 GB). */
int pst_copy_in(PGconn *c, const char *sql, const pst_wbuf *b, char *err,
                size_t el);
/* The per-origin tables: rows (tbl, quote_ident(col)) of pmgcm.otables,
 * local names; the caller PQclears it. NULL with err set. */
PGresult *pst_otables(PGconn *c, char *err, size_t errlen);
/* In such a result, the origin column (quoted) of table tbl, or NULL. */
const char *pst_otable_col(const PGresult *ro, const char *tbl);
/* Into buf: " WHERE col::text IS DISTINCT FROM 'cid'", which selects a
 * per-origin table's rows of every origin but cid (col quoted, as
 * pst_otable_col gives it; PST_OTHERS_LEN holds any); "" when col is NULL
 * (every row). 0 or -ENAMETOOLONG. */
#define PST_OTHERS_LEN 200
int pst_others_where(char *buf, size_t len, const char *col, uint32_t cid);
/* A store session (session_replication_role = replica, ISO dates,
 * synchronous_commit = local, ...); with origin_tag, under that
 * replication origin (pst_origin_setup). NULL with err set. */
PGconn *pst_connect(const char *conninfo, const char *origin_tag, char *err,
                    size_t errlen);
void pst_notice_quiet(void *arg, const char *msg);
int64_t pst_now_us(void);
uint64_t pst_mono_ms(void);

/* ---- sessions (session.c, serve.c, apply.c, snapshot.c) ------------------------ */

typedef struct pst_snap pst_snap;

struct pst_session {
    pst_store *st;
    pst_link link;
    pst_session *next;
    bool server;
    pst_open_kind kind;
    bool ended;
    uint32_t cid;

    /* frames waiting for the transport */
    pst_buf *out_head, *out_tail;
    bool blocked;

    /* server subscribe */
    pst_pos from;      /* last entry sent */
    bool checked;      /* first read done (range validated) */
    bool recheck;      /* the client was at or past our head when checked:
                        * its position is not known to be on our history
                        * (a new master still catching up), so the next
                        * read checks again (a new epoch that starts at or
                        * before it is a fork) */
    bool reading;
    bool wait_head;    /* client ahead: wait */
    uint64_t last_send_ms;
    pst_pos req_from;

    /* client subscribe: frames to apply, in order */
    pst_buf *ap_head, *ap_tail;
    size_t ap_n;
    bool paused;
    bool applying;

    /* snapshots (either side) */
    pst_snap *sn;

    pst_pos peer_pos;
    uint32_t origin; /* OSUBSCRIBE: whose changes */
    char *schema; /* server snapshot: the client's schema text */
    bool heard;   /* client subscribe: the upstream answered */
    bool end_delivered;
    int end_rc;
    char end_why[256];
    /* db_sync: server: the client holds the log up to here; client: the
     * server takes ACKs, and the last one sent */
    uint64_t acked;
    bool acks_ok;
};

/* session.c */
void pst_session_poll_all(pst_store *st);
void pst_sessions_close_all(pst_store *st);
void pst_sessions_head(pst_store *st);
bool pst_following(const pst_store *st);
pst_session *pst_sess_new(pst_store *st, const pst_link *link, bool server);
void pst_sess_list_remove(pst_session *s);
/* Deferred end: link->end is delivered from the store's async callback. */
void pst_sess_end(pst_session *s, int rc, const char *why);
bool pst_sess_alive(pst_store *st, pst_session *s);
/* Sends a frame, or queues it while the transport is full. */
int pst_sess_send_raw(pst_session *s, const uint8_t *buf, size_t len);
struct Pmgcm__Store__Msg;
int pst_sess_send_msg(pst_session *s, const struct Pmgcm__Store__Msg *m);
void pst_sess_send_error(pst_session *s, const char *err);
void pst_sess_send_head(pst_session *s);
uint64_t pst_origin_head(pst_store *st, uint32_t o);

/* db_sync: recompute what enough followers hold, tell the capture */
void pst_sync_update(pst_store *st);
/* db_sync: synchronous_standby_names follows (master and need) (capture.c) */
void pst_sync_apply(pst_store *st);

/* serve.c */
void pst_serve_pump(pst_session *s);
/* A CHANGES frame (at most PST_FRAME_BYTES of row data) as serve would
 * read it from the log: entries from + 1 .. to.seq, which the capture has
 * just committed (capture.c makes them on its thread; the loop owns them
 * after pst_capture_poll). */
#define PST_FRAME_BYTES (4u << 20)
typedef struct pst_cframe {
    struct pst_cframe *next;
    uint64_t from; /* the entry before the first */
    pst_pos to;    /* the last entry */
    size_t len;
    uint8_t data[];
} pst_cframe;
/* On the loop: f goes to every subscriber session that is exactly at
 * f->from and waits for nothing else (checked, not to be checked again,
 * no read in flight, transport not full); the others read the log as
 * before. f is not kept. */
void pst_serve_offer(pst_store *st, const pst_cframe *f);

/* apply.c */
/* A frame from the upstream of a SUBSCRIBE / OSUBSCRIBE session. */
void pst_apply_dispatch(pst_session *s, const uint8_t *buf, size_t len);
void pst_apply_pump(pst_session *s);

/* snapshot.c */
/* Tables a snapshot copies (server) or loads (client, when the node holds
 * no loaded data) at once, each in a connection of its own. */
#define PST_SNAP_JOBS 4u
/* Starts the snapshot thread of session s (server: copies; client:
 * loads). jobs: the client's Open.jobs (server) or what the client asked
 * for (client); 1 = one table after the other. lz4: the client's Open.lz4
 * (server: SNAP_DATA is sent compressed) or what the client asked for
 * (client: compressed SNAP_DATA is accepted; uncompressed always is). NULL
 * when out of memory or no thread. */
pst_snap *pst_snap_start(pst_session *s, bool server, const char *schema,
                         unsigned jobs, bool lz4);
/* Never waits: a running thread is told to stop and frees sn itself. */
void pst_snap_free(pst_snap *sn);
void pst_snap_abort(pst_snap *sn);
void pst_snap_eof(pst_snap *sn);
void pst_snap_client_poll(pst_session *s);
void pst_snap_client_frame(pst_session *s, const uint8_t *buf, size_t len);
void pst_snap_server_pump(pst_session *s);

#endif
