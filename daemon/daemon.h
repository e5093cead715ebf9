/*
 * daemon.h - the pmgclusterd library (daemon/): what the composition root
 * pmgclusterd.c puts together, in one header:
 *   - the status port and the HAProxy agent port (http.c, pmm_http_);
 *   - the control socket that carries the control commands (ctl.c,
 *     pmm_ctl_; the commands themselves: membership.h);
 *   - promote's checks (precheck.c, pmm_promote_);
 *   - the replication glue, the one place that knows both the store and
 *     the node API (repl.c, pmm_repl_).
 *
 * ==== the status and agent ports (http.c) ====================================
 *
 * Both servers run on the daemon's libuv loop, never block, and never hold
 * more than PMM_HTTP_CONNS_MAX connections (plus the ones being closed),
 * nor more than PMM_HTTP_PER_SRC_MAX from one address. Neither cap ever
 * turns a newcomer away: room is made by dropping a connection (see
 * net/guard.h): at the per-address cap that address's own; at the
 * global cap one of the address holding the most. Within the chosen
 * address an answered connection waiting for the client's EOF goes first,
 * then one still sending its request (it gets a 408), then one whose
 * answer is still being written, oldest first. A health checker that
 * opens one connection at a time therefore keeps being answered while
 * others hold every slot. The memory held for a connection (its request
 * buffer, its answer) is taken from the daemon's budget for
 * unauthenticated input (opts.budget); what does not fit makes room the
 * same way, or gets a 503.
 *
 * ---- the status port -------------------------------------------------------
 *
 * One request per connection: the answer always carries Content-Length and
 * "Connection: close", then the server half-closes, discards whatever else
 * the client sends (a pipelined request is not answered) and closes at the
 * client's EOF or PMM_HTTP_LINGER_MS after the answer was written (an
 * answer not taken within PMM_HTTP_ANSWER_MS is dropped). HTTP/1.0 and HTTP/1.1 (any 1.x;
 * a missing Host header is tolerated, HAProxy's default check sends none),
 * origin-form ("/readyz?verbose"), absolute-form ("http://h/readyz") and,
 * for OPTIONS, "*". Request bodies are never read (Content-Length is
 * accepted and ignored; Transfer-Encoding is refused).
 *
 *   GET /livez          200 "ok" while the event loop runs (depends on
 *                       nothing else: it is answered from the loop)
 *   GET /readyz         200 "ok" when every readiness check passes, else
 *   OPTIONS /           503 listing the failing checks:
 *   OPTIONS *             "[-]drain failed: draining (pmgcm undrain)"
 *                       checks: running, cluster, membership, config, drain
 *   GET /readyz/NAME    one check only (404 for an unknown NAME)
 *       ?verbose        every check, "[+]name ok" / "[-]name failed: why",
 *                       and a last line "readyz check passed|failed"
 *       ?exclude=NAME   skip a check (repeatable)
 *   GET /health         Consul: 200 passing, 429 warning, 503 critical;
 *                       the readiness checks (config behind is a warning
 *                       there) plus warnings: peers (suspect or dead nodes),
 *                       quorum (no majority of the nodes alive),
 *                       local_health (Lifeguard score above 0)
 *   GET /status         the control socket's status answer (JSON)
 *   GET /metrics        Prometheus text format 0.0.4
 *   GET /               the cluster panel: a page polling /status, with
 *   GET /panel.css      its style and script (daemon/panel.h), under
 *   GET /panel.js       /status's access rule, with a strict CSP
 * /status, the panel and /metrics follow the source's access rules
 * (pmm_http_access: status_access, metrics_access in the config): local
 * answers 403 to a client that is not on this host (loopback, or a
 * connection from the same address it reached: the node itself);
 * token answers 401 (WWW-Authenticate: Bearer) unless the request carries
 * "Authorization: Bearer TOKEN" (compared in constant time). /livez,
 * /readyz, /health and the agent port are always open.
 *
 * HEAD answers like GET without the body; OPTIONS like GET (plus Allow).
 * Any other method on a known path: 405 (Allow: GET, HEAD, OPTIONS); an
 * unknown path: 404. Malformed requests: 400; request line longer than
 * PMM_HTTP_LINE_MAX: 414; head longer than PMM_HTTP_HEAD_MAX or more than
 * PMM_HTTP_HEADERS_MAX header lines: 431; HTTP/2+ or 0.x: 505;
 * Transfer-Encoding: 501. A head not complete within PMM_HTTP_READ_MS of
 * the connect: 408 (so a client sending a byte at a time is done within
 * PMM_HTTP_READ_MS). A connection dropped at a cap while still sending its
 * request gets a 408 too; when the budget cannot hold a newcomer even
 * after making room, it gets 503 and is closed.
 *
 * ---- the agent port ------------------------------------------------------
 *
 * On connect, writes one line and closes (whatever the client sends, e.g.
 * HAProxy's agent-send, is read and ignored):
 *   "up ready 100%\n"         ready (readyz says 200)
 *   "up drain\n"              drained (pmgcm drain), otherwise ready:
 *                             HAProxy DRAIN (persistent traffic only)
 *   "maint\n"                 outside a cluster (not created or joined)
 *   "down #<check>: <why>\n"  another readiness check fails (the first);
 *                             "drain down #..." when also drained
 * HAProxy takes a word starting with '#' as the start of the description,
 * hence the blank in "down #why"; only the agent can undo what it set, so
 * the operational word (up/down) is always sent with the admin one.
 */
#ifndef PMGCM_DAEMON_H
#define PMGCM_DAEMON_H

#include "files/files.h"
#include "membership/membership.h"
#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PMM_HTTP_HEAD_MAX 8192      /* request line + headers + blank line */
#define PMM_HTTP_LINE_MAX 4096      /* request line alone */
#define PMM_HTTP_HEADERS_MAX 64     /* header lines */
#define PMM_HTTP_PATH_MAX 255       /* longer paths are unknown: 404 */
#define PMM_HTTP_QUERY_MAX 511      /* longer query strings: 414 */
#define PMM_HTTP_CONNS_MAX 64       /* connections at once, per server */
#define PMM_HTTP_PER_SRC_MAX 8      /* ... of them from one address */
#define PMM_HTTP_READ_MS 5000       /* whole request head, from connect */
#define PMM_HTTP_ANSWER_MS 10000    /* answer taken by the client */
#define PMM_HTTP_LINGER_MS 1000     /* then the client's EOF awaited */
#define PMM_HTTP_DISCARD_MAX (4u << 20) /* bytes read after the request */
#define PMM_HTTP_AUTH_MAX 300       /* Authorization header value kept */

/* ---- requests (pure) ------------------------------------------------------ */
typedef enum pmm_http_method {
    PMM_HTTP_GET = 1,
    PMM_HTTP_HEAD,
    PMM_HTTP_OPTIONS,
    PMM_HTTP_OTHER, /* a valid token we do not serve: 405 (or 404) */
} pmm_http_method;

typedef struct pmm_http_req {
    pmm_http_method method;
    int minor;                          /* HTTP/1.<minor>: 0 or 1 (or more) */
    bool asterisk;                      /* request target "*" */
    bool path_too_long;                 /* > PMM_HTTP_PATH_MAX: unknown */
    char path[PMM_HTTP_PATH_MAX + 1];   /* without the query */
    char query[PMM_HTTP_QUERY_MAX + 1]; /* after '?', may be "" */
    /* the Authorization header's value ("" if none; auth_too_long when
     * longer than PMM_HTTP_AUTH_MAX: never a valid token) */
    char auth[PMM_HTTP_AUTH_MAX + 1];
    bool auth_too_long;
    /* set by the server, not the parser: the client is on this host */
    bool peer_local;
} pmm_http_req;

/* Looks for the end of a request head (an empty line, CRLF or bare LF) in
 * buf[0..len), starting the search near `from` (bytes before it were
 * searched already). Returns the head's length including the empty line,
 * or 0 when it is not there yet. */
size_t pmm_http_head_end(const char *buf, size_t len, size_t from);

/* Checks what has arrived of a head so far, without waiting for the rest:
 * 0 (fine so far), or -400 (the start is not an HTTP request line, e.g.
 * TLS or binary garbage), -414 (request line too long), -431 (head too
 * long). */
int pmm_http_precheck(const char *buf, size_t len);

/* Parses a request head. Returns the head's length (> 0) with *req filled,
 * 0 when more bytes are needed, or -STATUS for an answer to give before
 * closing: -400, -414, -431, -501, -505. Leading empty lines are skipped
 * (RFC 9112 2.2). Pure. */
int pmm_http_parse(const char *buf, size_t len, pmm_http_req *req);

/* ---- what the answers are made of ------------------------------------------- */
typedef struct pmm_http_stats {
    uint64_t connections;     /* accepted */
    uint64_t requests;        /* answered (any status) */
    uint64_t bad_requests;    /* 400, 414, 431, 501, 505 */
    uint64_t timeouts;        /* 408: head not complete in time */
    uint64_t evicted;         /* dropped at a cap to make room */
    uint64_t rejected;        /* 503: no room could be made */
    uint64_t denied;          /* 401/403: /status or /metrics refused */
    uint32_t open;            /* connections now */
} pmm_http_stats;

/* A snapshot of the node, taken on the loop for every answer. */
typedef struct pmm_http_view {
    int64_t now;              /* unix seconds (Date header) */
    int64_t start_time;       /* daemon start, unix seconds */
    bool stopping;            /* leaving the cluster, shutting down */
    bool in_cluster;          /* created or joined */
    bool self_alive;          /* we are an alive gossip member */
    bool is_master;
    bool config_synced;       /* pmm_lc_config_synced */
    bool draining;            /* pmgcm drain */
    uint32_t cid;             /* 0 outside a cluster */
    uint32_t master_cid;
    uint64_t epoch, version;  /* the config this node holds */
    /* the cluster's nodes as /status shows them, this node included */
    uint32_t n_nodes, n_alive, n_suspect, n_dead, n_left;
    uint32_t gossip_members;  /* every gossip member, this node included */
    uint32_t local_health;    /* Lifeguard awareness score, 0 = healthy */
    gsp_stats gossip;
    pmm_http_stats http;      /* the status port's own counters */
    pmm_http_stats agent;     /* the agent port's */
    gsp_budget_stats budget;  /* memory for unauthenticated input */
    /* the node API (TLS) and the join throttle */
    uint32_t api_handshakes, api_node_streams, api_streams_max, api_joiners;
    uint64_t api_handshakes_evicted, api_handshake_timeouts, api_dropped;
    uint64_t join_failures, join_refused_busy, join_refused_global;
    uint64_t join_refused_full;
    uint32_t join_budget_left;
    /* the replicated database (store/store.h), when configured */
    bool has_db;
    bool db_in_sync;          /* loaded and caught up (or master) */
    char db_state[16];
    char db_error[256];
    uint64_t db_epoch, db_seq, db_head_seq;
    double db_lag_seconds;
    uint64_t db_applied, db_captured, db_snapshots, db_divergent;
    uint64_t db_frames_direct;
    /* capture: the node's replication slot; db_sync */
    bool db_capturing;
    int64_t db_wal_retained;  /* bytes of WAL the slot holds back */
    int64_t db_slot_safe;     /* bytes before it is lost, -1 unbounded */
    uint64_t db_slot_repairs;
    uint32_t db_sync_need, db_sync_have;
    uint64_t db_sync_waiting;
} pmm_http_view;

/* Who may read /status and /metrics (see the top of this header). */
typedef struct pmm_http_access {
    pmm_access status, metrics;
    const char *token; /* the bearer token (NUL-terminated), for TOKEN */
} pmm_http_access;

typedef struct pmm_http_source {
    void *ud;
    /* fills a snapshot (zeroed before the call) */
    void (*view)(void *ud, pmm_http_view *v);
    /* appends the /status document (one JSON object, '\n' ended); 0 or
     * -errno */
    int (*status_json)(void *ud, pmm_buf *out);
    /* NULL: both open. Not copied: must outlive the servers. */
    const pmm_http_access *access;
} pmm_http_source;

/* ---- checks ---------------------------------------------------------------- */
typedef enum pmm_http_level {
    PMM_HTTP_OK = 0,
    PMM_HTTP_WARN,     /* /health 429; readyz unaffected */
    PMM_HTTP_NOTREADY, /* readyz 503; /health only a warning (429) */
    PMM_HTTP_CRIT,     /* readyz 503; /health 503 */
} pmm_http_level;

#define PMM_HTTP_CHECKS_MAX 12
#define PMM_HTTP_WHY_MAX 120

typedef struct pmm_http_check {
    const char *name;
    bool readiness;              /* one of readyz's checks */
    pmm_http_level level;        /* PMM_HTTP_OK when it passes */
    char why[PMM_HTTP_WHY_MAX];  /* "" when it passes */
} pmm_http_check;

/* Every check, in a fixed order (readiness ones first). Returns the count. */
size_t pmm_http_checks(const pmm_http_view *v, pmm_http_check *out);
/* The agent line ('\n' ended) into buf (cap >= 160 always suffices). */
void pmm_http_agent_line(const pmm_http_view *v, char *buf, size_t cap);

/* Builds the whole answer (status line, headers, body unless HEAD) to req.
 * Returns the HTTP status. Takes a view and, for /status, the document
 * from src; src->access decides who gets /status and /metrics (with
 * req->peer_local and req->auth). Pure but for src's callbacks. */
int pmm_http_respond(pmm_buf *out, const pmm_http_req *req,
                     const pmm_http_source *src);
/* An error answer (400, 404, 408, 414, 431, 501, 503, 505, ...) with a
 * one-line text body. */
void pmm_http_error(pmm_buf *out, int status, int64_t now, bool head);
/* "OK", "Not Found", ... ("Unknown" for anything else) */
const char *pmm_http_reason(int status);

/* ---- /metrics: one table of every metric (metrics.c) ------------------------- */
typedef struct pmm_metric_in {
    const pmm_http_view *v;
    bool ready;               /* /readyz would answer 200 */
} pmm_metric_in;

typedef struct pmm_metric_val {
    uint64_t u;               /* the sample, or ... */
    double d;                 /* ... this one for PMM_METRIC_SECONDS */
} pmm_metric_val;

#define PMM_METRIC_DB 0x1u      /* only when the node has a database */
#define PMM_METRIC_SECONDS 0x2u /* d, written with 3 decimals */

typedef struct pmm_metric {
    const char *name;
    const char *type;           /* "gauge" or "counter" */
    const char *help;           /* one line */
    const char *label;          /* a label's name, or NULL: one sample */
    const char *const *values;  /* its values, NULL-terminated: a sample
                                 * each, in this order */
    unsigned flags;             /* PMM_METRIC_* */
    /* sample i (values[i]) into *out; false leaves it out (and the whole
     * metric when i is 0) */
    bool (*get)(const pmm_metric_in *in, size_t i, pmm_metric_val *out);
} pmm_metric;

/* The table (static), in the order /metrics writes it; *n its length. */
const pmm_metric *pmm_metrics_table(size_t *n);
/* Appends /metrics' body for v (Prometheus text format 0.0.4) to b. */
void pmm_metrics_write(pmm_buf *b, const pmm_http_view *v);

/* ---- servers on the loop --------------------------------------------------------- */
struct uv_loop_s;
struct sockaddr;
typedef struct pmm_http pmm_http;

typedef enum pmm_http_kind {
    PMM_HTTP_STATUS = 1, /* the HTTP status port */
    PMM_HTTP_AGENT,      /* the agent-check port */
} pmm_http_kind;

typedef struct pmm_http_opts {
    uint32_t max_conns;   /* PMM_HTTP_CONNS_MAX */
    uint32_t max_per_src; /* PMM_HTTP_PER_SRC_MAX */
    uint32_t read_ms;     /* PMM_HTTP_READ_MS */
    uint32_t answer_ms;   /* PMM_HTTP_ANSWER_MS */
    uint32_t linger_ms;   /* PMM_HTTP_LINGER_MS */
    gsp_budget *budget;   /* NULL: unlimited; not owned, must outlive h */
} pmm_http_opts;

void pmm_http_opts_default(pmm_http_opts *o);
/* Listens on sa (port 0: any, see pmm_http_port). src is copied; its
 * callbacks run on the loop. o may be NULL (defaults). 0 or -errno with a
 * message in err. */
int pmm_http_start(pmm_http **out, struct uv_loop_s *loop,
                   const struct sockaddr *sa, pmm_http_kind kind,
                   const pmm_http_source *src, const pmm_http_opts *o,
                   char *err, size_t errlen);
/* The port it listens on. */
uint16_t pmm_http_port(const pmm_http *h);
void pmm_http_get_stats(const pmm_http *h, pmm_http_stats *st);
/* Stops listening and drops every connection; h is freed once libuv has
 * closed its handles. */
void pmm_http_close(pmm_http *h);

/* ==== the control socket (ctl.c) =============================================
 * Carries the control commands (protocol and request validation:
 * membership.h, command.c) to the daemon's handler. */
struct uv_loop_s;
typedef struct pmm_ctl pmm_ctl;
/* Called on the loop thread for every valid request. cmd is the canonical
 * name; args is the parsed request object (never NULL; {} for a legacy
 * word; its strings are wiped after the call): both are valid only during
 * the call, copy what you keep. The handler must answer req exactly once,
 * now or later, with pmm_ctl_reply*(). */
typedef void (*pmm_ctl_handler)(void *ud, pmm_ctl_req *req, const char *cmd,
                                const pmm_json *args);

/* Creates the listening socket at path (see the protocol above). The
 * process must ignore SIGPIPE: libuv writes without MSG_NOSIGNAL, and a
 * client that left before its answer would otherwise kill it. */
int pmm_ctl_start(pmm_ctl **out, struct uv_loop_s *loop, const char *path,
                  pmm_ctl_handler handler, void *ud, char *err,
                  size_t errlen);
/* How long a request may stay unanswered before its client gets "timed
 * out" (default PMM_CTL_PENDING_MS; for tests). Applies to requests
 * received afterwards. */
void pmm_ctl_set_pending_timeout_ms(pmm_ctl *c, uint64_t ms);
/* The uid served besides root (default: geteuid() at start). */
void pmm_ctl_set_peer_uid(pmm_ctl *c, uid_t uid);
/* Stops listening and removes the socket file. Clients waiting for an
 * answer get "pmgclusterd is shutting down", the others are dropped; their
 * pmm_ctl_req stay valid until answered (the answer is then discarded).
 * The pmm_ctl is freed once libuv has closed its handles. */
void pmm_ctl_close(pmm_ctl *c);

/* ==== promote's checks (precheck.c) ==========================================
 * What `pmgcm promote` checks before it changes anything (prefix
 * pmm_promote_).
 *
 * A promote makes this node's data the cluster's truth: every other node
 * follows it and replaces what it holds by this node's data. So it is
 * refused, with and without --force (which only overrides "the master is
 * alive or suspected"), while this node's data is incomplete. The checks
 * are a table (pmm_promote_checks), one entry per check, run in order on a
 * plain snapshot of what this node knows (pmm_promote_view: its store and
 * every other node's gossiped position), so they are pure and unit tested
 * (tests/unit/test_mstatus). A check marked overridable is skipped by the
 * disaster-recovery flag --accept-data-loss, which reports instead what
 * the cluster loses.
 *
 * To add a check: a function of the view, a row in the table (precheck.c),
 * and whatever it needs in the view (pmm_promote_view_fill).
 */
#define PMM_PROMOTE_PEERS_MAX 256

/* Another node of the cluster config, as gossip shows it. */
typedef struct pmm_promote_peer {
    char name[GSP_NAME_MAX + 1];
    uint32_t cid;
    bool live;       /* alive or suspect */
    bool has_db;     /* gossips a store */
    bool loaded;     /* its store holds loaded data */
    char db_state[16];
    pst_pos pos;     /* its last applied change */
} pmm_promote_peer;

typedef struct pmm_promote_view {
    /* this node's store (has_db false: no replicated database) */
    bool has_db;
    pst_info db;
    pmm_promote_peer peers[PMM_PROMOTE_PEERS_MAX];
    size_t n_peers;
    /* mirrored files (files.h pmm_files_promote_ready): files_rc != 0
     * while the cluster mirrors files and this node's files_dir does not
     * hold them; files_why says why, and which live nodes do */
    int files_rc;
    char files_why[700];
} pmm_promote_view;

typedef struct pmm_promote_check {
    const char *name;
    bool overridable; /* --accept-data-loss proceeds despite it */
    bool waitable;    /* the node mends it by itself (catching up): the
                         promote may wait while that progresses */
    /* 0 passes; 1 fails, why in words (what is missing, what to do);
     * lost: with --accept-data-loss, what the cluster loses */
    int (*run)(const pmm_promote_view *v, char *why, size_t len,
               char *lost, size_t lostlen);
} pmm_promote_check;

extern const pmm_promote_check pmm_promote_checks[];
extern const size_t pmm_promote_n_checks;

/* The peer with the most advanced data ((epoch, seq) order) among those
 * with loaded data, live ones only when live_only; NULL when none. */
const pmm_promote_peer *pmm_promote_best(const pmm_promote_view *v,
                                         bool live_only);

/* Runs the checks in order. Returns 0 when promote may go on; else 1 with
 * the first failing check's words in why and the check in *failed (may be
 * NULL). With accept, overridable failures do not count: their "what is
 * lost" texts are joined into lost ("" when nothing is). why and lost are
 * always NUL-terminated. */
int pmm_promote_precheck(const pmm_promote_view *v, bool accept, char *why,
                         size_t len, char *lost, size_t lostlen,
                         const pmm_promote_check **failed);

/* What promote's checks look at: this node's store (r; NULL: none) and
 * files (f; NULL: none), every other node of the config cl as gossip (core)
 * shows it. self is this node's gossip id. */
struct pmm_repl;
void pmm_promote_view_fill(pmm_promote_view *v, const pmm_cluster *cl,
                           const gsp_id *self, gsp_core *core,
                           const struct pmm_repl *r, const pmm_files *f);

/* ==== the replication glue (repl.c) ==========================================
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
typedef struct pmm_repl pmm_repl;

typedef struct pmm_repl_env {
    struct uv_loop_s *loop;
    const pmm_config *cfg;
    pmm_lc *lc;          /* the cluster config; must outlive r */
    pmm_api *api;        /* STORE requests are served there, streams opened
                          * with its identity; must outlive r */
    gsp_uv *u;
    void (*changed)(void *ud); /* store state changed (status, meta) */
    void *ud;
} pmm_repl_env;

/* Starts the store when cfg->db_conninfo is set and serves STORE requests
 * on the node API (else *out = NULL, 0, and they are refused: "no
 * replicated database on this node"). 0 or -errno with a reason in err. */
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

#endif
