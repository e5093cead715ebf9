/*
 * membership.h - pmgcm membership library: daemon configuration, persistent
 * node identity, node metadata (NodeMeta), status rows and their text/JSON
 * renderings, a small bounded JSON writer/reader, and the control socket.
 *
 * Everything exported is prefixed pmm_. Functions return 0 or a negative
 * errno unless stated otherwise. Every input from disk, network or user is
 * bounded and validated before use; on error the output is left unchanged
 * (or zeroed) and a human-readable message is written into err when given.
 *
 * ---- configuration file (pmgclusterd --config FILE) -----------------------
 *
 * Lines of `key = value`. Blank lines and lines whose first non-blank
 * character is '#' are ignored; " #..." after a value is a comment too.
 * Lines are at most PMM_CONF_LINE_MAX bytes, the file at most
 * PMM_CONF_FILE_MAX bytes. An unknown key, a key given twice or a bad value
 * is an error naming the line. Keys:
 *
 *   name = node1
 *       Required. This node's name: 1..64 characters from [A-Za-z0-9._-].
 *   bind = 10.0.0.1:7946
 *       Required. Address for gossip, UDP and TCP on the same port.
 *       "ip", "ip:port" or "[ipv6]:port"; the port defaults to 7946.
 *   advertise = 10.0.0.1:7946
 *       Optional. Address other nodes use to reach this node; defaults to
 *       bind. Required when bind is 0.0.0.0 or [::]. Must not be a wildcard.
 *   data_dir = /var/lib/pmgcm
 *       Required, absolute. Holds node_id, generation and peers; created
 *       with mode 0700 if missing.
 *   control_socket = /run/pmgcm/pmgcm.sock
 *       Optional, absolute (default /run/pmgcm/pmgcm.sock; at most 107
 *       bytes). Unix socket of `pmgcm`; created mode 0600, its parent
 *       directory 0755 if missing.
 *   key_file = /etc/pmgcm/gossip.key
 *       Optional, absolute. Gossip keyring for a cluster formed by shared
 *       key and peers alone (no `pmgcm create`): one key per line, 64 hex
 *       chars (or 44 base64 chars); the first key seals, all keys open.
 *       `pmgcm keygen` prints a fresh key. Once the node is in a cluster
 *       made with `pmgcm create`/`join`, the cluster's own keyring (in
 *       data_dir/cluster.conf, rotated by `pmgcm delete`) is used instead.
 *       Without either, gossip runs under a random private key: the node
 *       talks to nobody until it creates or joins a cluster.
 *   api_port = 7947
 *       Optional (default 7947). TCP port of the TLS node API (join, config
 *       fetch, removal) on the bind address; `pmgcm join IP` uses it.
 *   status_bind = 10.0.0.1
 *       Optional IP (no port; IPv6 with or without brackets; 0.0.0.0 or ::
 *       for every address) of the status port and the agent port. Default:
 *       the IP of bind.
 *   status_port = 7948
 *       Optional (default 7948; 0 disables). Plain HTTP/1.x status port for
 *       load balancers and monitoring: /livez, /readyz, /health, /status,
 *       /metrics (see membership/http.h).
 *   agent_port = 7949
 *       Optional (default 7949; 0 disables). HAProxy agent-check port:
 *       writes one line ("up ready 100%", "up drain", "maint", "down #why")
 *       and closes.
 *   The gossip port, api_port, status_port and agent_port must differ
 *   where their addresses overlap (the same IP, or a wildcard).
 *   status_access = open
 *   metrics_access = open
 *       Optional: who may read /status (the cluster's topology, addresses,
 *       fingerprint, file paths) and /metrics on the status port: open
 *       (default: anyone who reaches the port), local (clients on this
 *       host only: 127.0.0.0/8, ::1, or from the address they connect
 *       to; others get 403), or token (a
 *       client must send "Authorization: Bearer TOKEN"; others get 401).
 *       /livez, /readyz, /health and the agent port are always open.
 *   status_token_file = /etc/pmgcm/status.token
 *       The bearer token for `token` (required then): the file's first
 *       line, 16..256 characters of [A-Za-z0-9._~+/=-]; the file must not
 *       be readable by everyone. Read at start.
 *   unauth_budget_bytes = 33554432
 *       Optional (default 32 MiB; 1 MiB..1 GiB). One budget for the memory
 *       held for input nobody has authenticated yet: requests on the
 *       status and agent ports (and their answers), TLS handshakes on the
 *       node API, gossip TCP frames before they are opened. What would go
 *       over it is refused or makes room by dropping the oldest of its
 *       kind; the daemon's memory for them never grows past it.
 *   label = pmgcm
 *       Optional cluster label bound into every packet as AEAD associated
 *       data (default "pmgcm"; 0..64 printable characters; `label =` with
 *       nothing after it means the empty label). Nodes with different labels
 *       cannot talk to each other.
 *   peers = 10.0.0.2:7946 10.0.0.3:7946
 *       Optional. Addresses (separated by whitespace and/or commas, at most
 *       PMM_PEERS_MAX) contacted at start together with the peers this node
 *       remembered in data_dir/peers, and re-contacted periodically while
 *       they are not alive members.
 *   log_level = info
 *       error | warn | info | debug (default info).
 *   meta_interval_ms = 5000
 *       How often uptime, load, memory and disk usage are sampled; they are
 *       gossiped only when they changed (100..3600000).
 *
 *   db_conninfo = host=/run/postgresql dbname=pmg user=postgres
 *       Optional libpq conninfo of this node's PostgreSQL database; empty
 *       (the default) means no replicated data (store/store.h). The role
 *       must be a superuser (the apply session sets
 *       session_replication_role).
 *   db_schemas = public
 *       Comma-separated schemas whose tables with a primary key are
 *       replicated (default "public").
 *   db_exclude = public.local_cache, public.stats
 *       Comma-separated schema.table names left out of replication.
 *   db_log_retention_s = 3600
 *       How long every node keeps the change log (1..31536000 s); a node
 *       that was away longer gets a snapshot instead of deltas.
 *   db_origin_tables = public.quarantine:cid, public.stats:cid
 *       Per-origin tables: every node writes only rows whose column holds
 *       its own cid; those rows flow from every node to every node (also
 *       while the master is down). The column must be part of the primary
 *       key.
 *   db_sync = off
 *       off | one | majority: a commit on the master returns only once
 *       that many other nodes (one; majority = half the cluster's nodes,
 *       rounded down) hold the change (PostgreSQL's synchronous
 *       replication, through synchronous_standby_names). With too few
 *       followers connected commits wait (status says so).
 *   files_dir = /etc/pmg
 *       Optional directory of master-owned files mirrored to every node.
 *   files_reload = systemctl reload pmg-smtp-filter
 *       Optional shell command run after mirrored files changed.
 *   files_max_bytes = 1048576
 *       Largest mirrored file (1..67108864 bytes, default 1 MiB).
 *   files_trash_max_files = 1000
 *   files_trash_max_bytes = 67108864
 *       Bounds of data_dir/files-trash, where files that mirroring removes
 *       or replaces are kept (1..1000000 files, 1..4294967295 bytes); the
 *       oldest sync events are deleted first.
 *
 *   Gossip tuning, mapped 1:1 onto gsp_config (defaults: gsp_config_default):
 *   probe_interval_ms     (10..600000)    one probe per interval after a
 *                                         failure; a probe's length and the
 *                                         base of suspicion timeouts
 *   probe_timeout_ms      (1..600000)     direct ack deadline; must be
 *                                         smaller than probe_interval_ms
 *   probe_quiet_interval_ms (0..600000)   one probe per interval while
 *                                         nothing failed (0: no relaxing)
 *   indirect_checks       (0..16)         peers asked to probe for us
 *   suspicion_mult        (1..100)        suspicion timeout multiplier
 *   suspicion_max_mult    (1..100)        max suspicion = max_mult * min
 *   retransmit_mult       (1..100)        lambda: retransmits per update
 *   gossip_interval_ms    (10..600000)    fan-out interval of updates
 *   gossip_nodes          (1..64)         peers per gossip round
 *   pushpull_interval_ms  (100..86400000) full-state TCP sync interval
 *   rejoin_interval_ms    (100..86400000) re-contact seeds / dead peers
 *
 * ---- files in data_dir ------------------------------------------------------
 *
 *   lock        held (flock) by the running daemon.
 *   node_id     32 hex chars: this node's persistent gossip id (created once).
 *   generation  decimal: bumped (read, +1, written atomically) at every start.
 *   cluster.conf  the cluster config (protobuf, mode 0600): nodes, cids,
 *               epoch/version, join password hash, gossip keyring.
 *   tls/        node.key (0600) and node.crt: this node's TLS identity,
 *               created at first start; its SHA-256 is the fingerprint.
 *   peers       addresses of alive members, one per line; rewritten
 *               atomically (debounced) when that set changes. Never rewritten
 *               with an empty set, so an isolated node keeps its last peers.
 *   files.manifest  mirrored files: the last manifest this node synced
 *               to (the master: published), text (files.h).
 *   files-trash/  mirrored files that mirroring removed or replaced, one
 *               directory per sync event (files.h), bounded by
 *               files_trash_max_files / files_trash_max_bytes.
 *   draining    exists while the node is drained (`pmgcm drain`, removed by
 *               `pmgcm undrain`); read at start, so a drain survives a
 *               restart. Its text is for humans only.
 *
 * ---- control protocol (pmgcm <-> pmgclusterd) --------------------------------
 *
 * Unix stream socket, created mode 0600; only root and the daemon's own uid
 * may connect (SO_PEERCRED; others get "permission denied"). The client
 * sends ONE request line (at most PMM_CTL_REQ_MAX bytes including the '\n';
 * the line may also end at EOF) and gets ONE answer: a JSON object followed
 * by '\n', then the daemon closes the connection.
 *
 * A request is a legacy word, "status" or "ping" (printable ASCII,
 * surrounding spaces ignored), or a JSON object with a "cmd" string and the
 * command's arguments. No control bytes anywhere in the line; non-ASCII
 * only inside JSON strings (valid UTF-8).
 *   {"cmd":"status"}                          = the word "status"
 *   {"cmd":"ping"}                            = the word "ping"
 *   {"cmd":"create","password":PW}
 *   {"cmd":"fingerprint","ip":TARGET}         fetch a master's TLS cert
 *                                             fingerprint (join prompt)
 *   {"cmd":"join","ip":TARGET,"fingerprint":FP,"password":PW}
 *   {"cmd":"join-cmd"}
 *   {"cmd":"delete","cid":CID}
 *   {"cmd":"promote"[,"force":BOOL]}          force defaults to false
 *   {"cmd":"sync"[,"master_ip":IP]}
 *   {"cmd":"files-publish"[,"confirm":BOOL]}  publish the mirrored files
 *                                             the master holds for
 *                                             confirmation (files.h)
 *   {"cmd":"drain"}                           stop taking new traffic
 *   {"cmd":"undrain"}                         take traffic again
 * Arguments, all checked before any handler runs:
 *   IP   string: an IPv4 or IPv6 literal (no port, no brackets, no zone)
 *   TARGET  string: IP, or IP:PORT / [IPv6]:PORT (port 1..65535) for a
 *        master whose node API is not on the default port (what join-cmd
 *        prints then)
 *   FP   string: 1..PMM_CTL_FP_MAX printable ASCII characters, no spaces
 *        (its format, colon-hex SHA-256, is the lifecycle's to check)
 *   PW   string: 1..PMM_CTL_PASSWORD_MAX bytes of UTF-8, no control
 *        characters
 *   CID  integer 1..65535
 *   BOOL true or false
 * A missing required argument, an unknown or repeated member, a wrong
 * type or a value out of bounds is refused with a message naming it.
 *
 * Answers: {"ok":true,...} or {"ok":false,"error":"human readable"}.
 *   status       {"ok":true,"node":"node1","id":"<32 hex>","generation":N,
 *                 "time":<unix>,"members":[ROW...]}   (ROWs sorted by name;
 *                 ROW is the object written by pmm_status_write_json)
 *                 [,"cluster":{"cluster_id":HEX,"epoch":E,"version":V,
 *                 "master_cid":C}] (in a cluster),"gossip":{counters},
 *                 "fingerprint":FP,"draining":BOOL,"ready":BOOL (what the
 *                 status port's /readyz says); the status port's /status
 *                 serves the same object
 *   ping         {"ok":true}
 *   create       {"ok":true,"cid":1,"fingerprint":"AB:CD:..."}
 *   fingerprint  {"ok":true,"fingerprint":"AB:CD:..."}
 *   join         {"ok":true,"cid":N}
 *   join-cmd     {"ok":true,"command":"pmgcm join IP --fingerprint FP"}
 *   delete       {"ok":true,"cid":N[,"key_rotated":true]}
 *   promote      {"ok":true,"cid":N,"epoch":E}
 *   files-publish  {"ok":true,"digest":HEX,"files":N,"dropped":N} once
 *                published; without "confirm":true (or with nothing held)
 *                an error that says what is held and why
 *   sync         {"ok":true[,"epoch":E,"version":V,"master_cid":C,
 *                 "updated":BOOL][,"master_ip":IP]}
 *   drain, undrain  {"ok":true,"draining":BOOL,"changed":BOOL,
 *                 "persisted":BOOL,"message":"..."}: draining makes the
 *                 status port's /readyz answer 503 and the agent port say
 *                 "drain" while the node stays in the cluster; it is kept
 *                 in data_dir/draining across restarts ("persisted":false
 *                 when that file could not be written or removed: the
 *                 change then holds only until the daemon stops).
 * Any ok answer may carry "message": a sentence that `pmgcm` prints in
 * text mode instead of its own. Refusals of the server itself:
 *   "request too long", "empty request", "request contains a control
 *   byte", "unknown command", "bad request: <JSON error>", "permission
 *   denied", "timed out" (no answer within PMM_CTL_PENDING_MS),
 *   "pmgclusterd is shutting down", "internal error".
 * Clients idle for PMM_CTL_IDLE_MS (before their request is complete) are
 * dropped; a request being handled is not idle (cap PMM_CTL_PENDING_MS).
 * At most PMM_CTL_CLIENTS_MAX connections are served at once.
 */
#ifndef PMGCM_MEMBERSHIP_H
#define PMGCM_MEMBERSHIP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "gossip/gossip.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PMM_DB_SYNC_OFF 0
#define PMM_DB_SYNC_ONE 1
#define PMM_DB_SYNC_MAJORITY 2

/* ---- logging: "LEVEL subsystem: message" on stderr -------------------- */
typedef enum pmm_log_level {
    PMM_LOG_ERROR = 0,
    PMM_LOG_WARN = 1,
    PMM_LOG_INFO = 2,
    PMM_LOG_DEBUG = 3,
} pmm_log_level;

void pmm_log_set_level(pmm_log_level lvl);
pmm_log_level pmm_log_get_level(void);
const char *pmm_log_level_name(pmm_log_level lvl); /* "error", "warn", ... */
int pmm_log_level_parse(const char *s, pmm_log_level *out); /* 0/-EINVAL */
/* One line on stderr: "<N>LEVEL subsystem: message" when stderr is the
 * journal (JOURNAL_STREAM names it; N is the syslog priority), else
 * "YYYY-MM-DDTHH:MM:SS.mmmZ LEVEL subsystem: message" (UTC). Control
 * characters in the message become '?' (a newline or tab a blank; trailing
 * blanks are dropped). Thread-safe. */
void pmm_log(pmm_log_level lvl, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 1 if ENV (JOURNAL_STREAM's value, "DEV:INODE"; may be NULL) names the
 * stream open on FD, else 0. */
int pmm_log_journal_stream(const char *env, int fd);
/* sd_notify(3) by hand: sends STATE ("READY=1", "STOPPING=1", ...) as one
 * datagram to $NOTIFY_SOCKET (a path, or "@name" in the abstract
 * namespace) without blocking. 0 when sent or when NOTIFY_SOCKET is unset
 * (not under systemd), else a negative errno. */
int pmm_sd_notify(const char *state);

/* ---- configuration ------------------------------------------------------ */
#define PMM_CONF_LINE_MAX 4096
#define PMM_CONF_FILE_MAX (256 * 1024)
#define PMM_PATH_MAX 256
#define PMM_SOCKET_PATH_MAX 107 /* sun_path minus the NUL */
#define PMM_PEERS_MAX 64
#define PMM_DEFAULT_PORT 7946
#define PMM_DEFAULT_SOCKET "/run/pmgcm/pmgcm.sock"
#define PMM_DEFAULT_LABEL "pmgcm"
#define PMM_DEFAULT_STATUS_PORT 7948
#define PMM_DEFAULT_AGENT_PORT 7949
#define PMM_DEFAULT_UNAUTH_BUDGET (32u << 20)
#define PMM_UNAUTH_BUDGET_MIN (1u << 20)
#define PMM_UNAUTH_BUDGET_MAX (1u << 30)

/* Who may read /status and /metrics on the status port (status_access,
 * metrics_access). */
typedef enum pmm_access {
    PMM_ACCESS_OPEN = 0,  /* anyone who reaches the port */
    PMM_ACCESS_LOCAL,     /* clients on this host (loopback, own IP) */
    PMM_ACCESS_TOKEN,     /* "Authorization: Bearer <status_token_file>" */
} pmm_access;

#define PMM_DB_STR_MAX 1024

typedef struct pmm_config {
    char name[GSP_NAME_MAX + 1];
    gsp_addr bind;
    gsp_addr advertise;           /* = bind when not configured */
    char data_dir[PMM_PATH_MAX];
    char control_socket[PMM_SOCKET_PATH_MAX + 1];
    char key_file[PMM_PATH_MAX];
    char label[GSP_LABEL_MAX + 1];
    gsp_addr peers[PMM_PEERS_MAX];
    size_t n_peers;
    pmm_log_level log_level;
    uint32_t meta_interval_ms;
    uint16_t api_port;            /* TLS node API (join, config), 7947 */
    gsp_addr status_bind;         /* IP of the status and agent ports
                                   * (port 0); = bind's IP by default */
    uint16_t status_port;         /* HTTP status port, 7948; 0 = off */
    uint16_t agent_port;          /* HAProxy agent port, 7949; 0 = off */
    pmm_access status_access;     /* who may GET /status (open) */
    pmm_access metrics_access;    /* who may GET /metrics (open) */
    char status_token_file[PMM_PATH_MAX]; /* the bearer token, for token */
    uint32_t unauth_budget_bytes; /* memory for unauthenticated input */
    gsp_config gossip;

    /* store (store/store.h): empty db_conninfo = no replicated database */
    char db_conninfo[PMM_DB_STR_MAX + 1];
    char db_schemas[PMM_DB_STR_MAX + 1];   /* comma list, "public" */
    char db_exclude[PMM_DB_STR_MAX + 1];   /* comma list of schema.table */
    uint32_t db_log_retention_s;           /* change log kept, 3600 */
    char db_origin_tables[PMM_DB_STR_MAX + 1]; /* "schema.table:column, ..." */
    int db_sync;                           /* PMM_DB_SYNC_*, off */

    /* mirrored config files (files.c): empty files_dir = off */
    char files_dir[PMM_PATH_MAX];
    char files_reload[PMM_DB_STR_MAX + 1]; /* shell command, may be empty */
    uint32_t files_max_bytes;              /* per file, 1 MiB */
    uint32_t files_trash_max_files;        /* trash bound, 1000 files */
    uint32_t files_trash_max_bytes;        /* trash bound, 64 MiB */
} pmm_config;

/* Fills defaults (no name/bind/data_dir: those are required). */
void pmm_config_default(pmm_config *cfg);
/* Parses a whole file image (len bytes, need not be NUL-terminated).
 * On error returns -EINVAL (or -E2BIG for an oversized input) and writes
 * "line N: ..." into err. cfg is only written on success. */
int pmm_config_parse(pmm_config *cfg, const char *text, size_t len,
                     char *err, size_t errlen);
/* Reads and parses path; errors are "PATH: ..." / "PATH:N: ...". */
int pmm_config_load(pmm_config *cfg, const char *path, char *err,
                    size_t errlen);

/* ---- persistent state in data_dir --------------------------------------- */
#define PMM_STATE_PEERS_MAX 256

/* Formats a message into err (if err and errlen) and returns rc. */
int pmm_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Reads a whole small file into buf, NUL-terminated (*len may be NULL).
 * Does not follow a final symlink. 0, -errno, -EFBIG if it has cap-1 bytes
 * or more. Blocking. */
int pmm_read_small(const char *path, char *buf, size_t cap, size_t *len);
/* mkdir -p; the last component gets `mode`, missing parents 0755. */
int pmm_mkdir_p(const char *path, mode_t mode);
/* Writes dir/name atomically: dir/.name.tmp, fsync, rename, fsync(dir). */
int pmm_write_file_atomic(const char *dir, const char *name,
                          const void *data, size_t len, mode_t mode);
/* Takes an exclusive lock on dir/lock (flock) so two daemons never share
 * one identity; *fd stays open (and locked) until closed. -EBUSY if held. */
int pmm_state_lock(const char *dir, int *fd, char *err, size_t errlen);
/* Reads dir/node_id, or creates it (gsp_random) if missing; *created tells
 * which. A corrupt file is an error (-EINVAL), never replaced. */
int pmm_state_node_id(const char *dir, gsp_id *out, bool *created,
                      char *err, size_t errlen);
/* Reads dir/generation (missing = 0), adds one, writes it back atomically,
 * returns the new value in *out. Corrupt file: -EINVAL with a message. */
int pmm_state_bump_generation(const char *dir, uint64_t *out, char *err,
                              size_t errlen);
/* Reads dir/peers (missing = none). Invalid lines are skipped and counted
 * in *bad (may be NULL). At most max addresses; duplicates dropped. */
int pmm_state_read_peers(const char *dir, gsp_addr *out, size_t max,
                         size_t *n, size_t *bad);
/* Writes dir/peers atomically (blocking: call from a worker thread). */
int pmm_state_write_peers(const char *dir, const gsp_addr *addrs, size_t n);

/* ---- node metadata (meta.proto NodeMeta) -------------------------------- */
#define PMM_ROLE_MAX 16

#define PMM_META_ORIGINS_MAX 24
#define PMM_DB_REASON_MAX 111 /* printable ASCII */

typedef struct pmm_meta {
    uint64_t start_time; /* unix seconds: host boot time */
    uint32_t load1;      /* 1-minute load average x100 */
    uint32_t mem_pct;    /* 0..100 */
    uint32_t disk_pct;   /* 0..100, root filesystem */
    uint32_t cid;        /* 0 until the node is in a cluster */
    char role[PMM_ROLE_MAX + 1]; /* "master", "node", or "-" outside a cluster */
    uint64_t cfg_epoch;  /* cluster config (epoch, version) this node holds */
    uint64_t cfg_version;
    uint32_t db_state;   /* pst_state of the store; 0 = no store */
    uint64_t db_epoch, db_seq; /* last applied change */
    uint64_t db_ts_ms;   /* its capture time on the master (unix ms) */
    char db_reason[PMM_DB_REASON_MAX + 1]; /* why not in-sync, "" if it is */
    uint64_t db_lag;     /* changes behind the newest head it knows */
    uint32_t db_kept;    /* records in pmgcm.backups */
    uint64_t db_divergence; /* rows in pmgcm.divergence */
    bool db_loaded;      /* its store holds loaded data */
    uint64_t files_sync; /* mirrored files: tag of the published manifest
                          * files_dir is in sync with, 0 = not (files.h) */
    uint32_t n_origins;  /* per-origin positions (store/store.h) */
    struct {
        uint32_t cid;
        uint64_t seq;
    } origins[PMM_META_ORIGINS_MAX];
} pmm_meta;

/* Encodes into buf (cap >= GSP_META_MAX is always enough). 0, -EINVAL,
 * -ENOSPC. */
int pmm_meta_encode(const pmm_meta *m, uint8_t *buf, size_t cap,
                    size_t *len);
/* Decodes and validates (percentages <= 100, role printable). 0 or
 * GSP_EDECODE; *m untouched on error. */
int pmm_meta_decode(pmm_meta *m, const uint8_t *buf, size_t len);

/* ---- host sampling (blocking: call from a worker thread) ---------------- */
typedef struct pmm_sysinfo {
    double uptime_s;     /* /proc/uptime, first field */
    uint32_t load1;      /* /proc/loadavg x100 */
    uint32_t mem_pct;    /* (MemTotal - MemAvailable) / MemTotal */
    uint32_t disk_pct;   /* statvfs("/"): used / (used + avail), rounded up */
} pmm_sysinfo;

int pmm_sysinfo_sample(pmm_sysinfo *out);
/* Parsers for the text of the /proc files (exposed for tests). */
int pmm_parse_uptime(const char *text, double *uptime_s);
int pmm_parse_loadavg(const char *text, uint32_t *load1_x100);
int pmm_parse_meminfo(const char *text, uint32_t *mem_pct);

/* ---- bounded growable buffer --------------------------------------------- */
typedef struct pmm_buf {
    char *p;      /* NUL-terminated while not failed */
    size_t len;
    size_t cap;
    size_t max;   /* hard bound on len */
    int err;      /* sticky: first error (-ENOMEM / -E2BIG) */
} pmm_buf;

void pmm_buf_init(pmm_buf *b, size_t max);
void pmm_buf_free(pmm_buf *b);
void pmm_buf_reset(pmm_buf *b);
int pmm_buf_add(pmm_buf *b, const void *data, size_t n);
int pmm_buf_puts(pmm_buf *b, const char *s);
int pmm_buf_printf(pmm_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Makes room for extra more bytes (and the NUL) now, so that adding up to
 * that much never reallocates (used for buffers that will hold secrets). */
int pmm_buf_reserve(pmm_buf *b, size_t extra);
/* Zeroes the whole allocation, then frees it like pmm_buf_free. */
void pmm_buf_wipe(pmm_buf *b);

/* ---- JSON ---------------------------------------------------------------- */
/* Writes s (n bytes) as a JSON string with quotes; escapes '"', '\\' and
 * control characters; invalid UTF-8 bytes become U+FFFD. */
int pmm_json_str(pmm_buf *b, const char *s, size_t n);
/* True when s (n bytes) is valid UTF-8 (no overlongs, no surrogates). */
bool pmm_utf8_valid(const char *s, size_t n);
/* Characters (code points) in s (n bytes of valid UTF-8). */
size_t pmm_utf8_chars(const char *s, size_t n);

/* `pmgcm create` refuses a join password shorter than this many
 * characters (the join throttle slows guessing; it cannot make a short
 * password strong). Join itself takes whatever the cluster was made
 * with. */
#define PMM_CREATE_PASSWORD_MIN 12

#define PMM_JSON_MAX_INPUT (16u * 1024 * 1024)
#define PMM_JSON_MAX_DEPTH 32

typedef enum pmm_json_type {
    PMM_JSON_NULL,
    PMM_JSON_BOOL,
    PMM_JSON_NUMBER,
    PMM_JSON_STRING,
    PMM_JSON_ARRAY,
    PMM_JSON_OBJECT,
} pmm_json_type;

typedef struct pmm_json pmm_json;
struct pmm_json {
    pmm_json_type type;
    bool b;
    double num;
    char *str;          /* STRING: decoded UTF-8, NUL-terminated */
    size_t str_len;     /* may contain NULs (from \u0000) */
    char *key;          /* member of an OBJECT: its key */
    pmm_json *child;    /* ARRAY/OBJECT: first element */
    pmm_json *next;     /* next sibling */
    size_t n_child;
};

/* Parses one JSON document (RFC 8259, bounded: PMM_JSON_MAX_INPUT bytes,
 * PMM_JSON_MAX_DEPTH nesting). Trailing whitespace only; an object key
 * containing \u0000 is refused. Each string is decoded into one allocation
 * that is never grown. Returns 0 and *out (free with pmm_json_free),
 * -EINVAL with a message, -ENOMEM, -E2BIG. */
int pmm_json_parse(const char *text, size_t len, pmm_json **out, char *err,
                   size_t errlen);
/* Frees the tree; every string value is zeroed first (it may have been a
 * password). */
void pmm_json_free(pmm_json *j);
/* Object member by key (first match) or NULL. */
const pmm_json *pmm_json_get(const pmm_json *obj, const char *key);

/* ---- status rows ---------------------------------------------------------- */
typedef struct pmm_status_row {
    char name[GSP_NAME_MAX + 1];
    char id[2 * GSP_ID_LEN + 1];
    uint32_t cid;
    char ip[48];
    uint16_t port;
    char role[PMM_ROLE_MAX + 1];
    char state;              /* 'A' alive, '?' suspect, 'D' dead, 'L' left;
                              * 'S' (syncing, behind) is accepted from JSON */
    char gossip_state[16];   /* gsp_state_name() */
    bool self;
    bool has_meta;
    int64_t uptime;          /* seconds, -1 unknown */
    double load;             /* -1 unknown */
    int mem;                 /* percent, -1 unknown */
    int disk;                /* percent, -1 unknown */
    /* the store, when the node has one (has_db) */
    bool has_db;
    char db_state[16];       /* pst_state_name() */
    uint64_t db_epoch, db_seq;
    uint64_t db_ts_ms;
    char db_reason[PMM_DB_REASON_MAX + 1]; /* why not in-sync ("" if it is) */
    uint64_t db_lag;         /* behind, as the node itself knows it */
    uint32_t db_kept;        /* its pmgcm.backups records */
    uint64_t db_divergence;  /* its pmgcm.divergence rows */
    uint64_t lag_changes;    /* behind the master (filled by the caller) */
    double lag_seconds;
    /* per-origin positions and how far behind each origin's own head */
    uint32_t n_origins;
    struct {
        uint32_t cid;
        uint64_t seq, behind;
    } origins[PMM_META_ORIGINS_MAX];
} pmm_status_row;

char pmm_state_letter(gsp_state s);
/* After rows are built: lag of every store row against the master's row
 * (at least what the node itself says), and 'S' for an alive node whose
 * store is not in sync (idle counts as in sync only outside a cluster,
 * role "-"). */
void pmm_status_db_finish(pmm_status_row *rows, size_t n);
/* Builds a row from a member; now_unix is the wall clock of the reader.
 * Dead and left members keep their last load/mem/disk but no uptime. */
void pmm_status_row_from_member(pmm_status_row *r, const gsp_member *m,
                                int64_t now_unix);
/* Sorts by name, then id. */
void pmm_status_sort(pmm_status_row *rows, size_t n);
/* "HH:MM", "1 day HH:MM", "N days HH:MM"; "-" for a negative value.
 * Returns buf (len >= 32 is always enough). */
char *pmm_format_uptime(int64_t secs, char *buf, size_t len);
/* PMG's table: header then one line per row (rows printed as given). */
int pmm_status_render_text(pmm_buf *b, const pmm_status_row *rows, size_t n);
/* JSON array of objects: name, cid, ip, role, state, uptime, load, mem,
 * disk (null when unknown), id, gossip_state, port, self, and db
 * ({state, reason, epoch, seq, lag_changes, lag_seconds, kept:
 * {backups, divergence}, origins}) when has_db. */
int pmm_status_write_json(pmm_buf *b, const pmm_status_row *rows, size_t n);
/* Reads such an array back (validating every field). *rows is malloc'd. */
int pmm_status_from_json(const pmm_json *arr, pmm_status_row **rows,
                         size_t *n, char *err, size_t errlen);

/* ---- control socket ------------------------------------------------------- */
#define PMM_CTL_REQ_MAX 4096
#define PMM_CTL_CLIENTS_MAX 32
#define PMM_CTL_IDLE_MS 5000
#define PMM_CTL_PENDING_MS 120000
#define PMM_CTL_REPLY_MAX (16u * 1024 * 1024)
#define PMM_CTL_PASSWORD_MAX 1024
#define PMM_CTL_FP_MAX 128
#define PMM_CTL_ERR_MAX 256 /* an error message written by the parser */

/* Parses and validates one request line (with or without its trailing
 * "\n" / "\r\n"); pure, no sockets. On success returns 0, *cmd = the
 * command's canonical name (a static string, e.g. "join") and *args = the
 * request object ({} for a legacy word; free with pmm_json_free). On error
 * *args is NULL, err gets the message for the client, and the result is
 * -E2BIG (too long), -ENOENT (unknown command), -EINVAL (anything else
 * wrong) or -ENOMEM. */
int pmm_ctl_parse_request(const char *buf, size_t len, const char **cmd,
                          pmm_json **args, char *err, size_t errlen);
/* Appends {"ok":false,"error":"..."}\n */
int pmm_ctl_error_reply(pmm_buf *b, const char *msg);

struct uv_loop_s;
typedef struct pmm_ctl pmm_ctl;
typedef struct pmm_ctl_req pmm_ctl_req;
/* Called on the loop thread for every valid request. cmd is the canonical
 * name; args is the parsed request object (never NULL; {} for a legacy
 * word; its strings are wiped after the call): both are valid only during
 * the call, copy what you keep. The handler must answer req exactly once,
 * now or later, with pmm_ctl_reply*(). */
typedef void (*pmm_ctl_handler)(void *ud, pmm_ctl_req *req, const char *cmd,
                                const pmm_json *args);

/* Answers req with json (len bytes: one JSON object; a '\n' is appended
 * unless it ends with one) and frees req: req is invalid afterwards.
 * Loop thread only. The bytes are copied. Harmless when the client is gone,
 * has timed out or the server was closed: then req is only freed. */
void pmm_ctl_reply(pmm_ctl_req *req, const char *json, size_t len);
/* {"ok":false,"error":"<printf fmt, ...>"} */
void pmm_ctl_reply_error(pmm_ctl_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* {"ok":true} or {"ok":true,<extra_json_members>}, e.g. "\"cid\":3". */
void pmm_ctl_reply_ok(pmm_ctl_req *req, const char *extra_json_members);

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

#ifdef __cplusplus
}
#endif
#endif
