/*
 * membership.h - the membership library (membership/): cluster semantics,
 * a library with no main. The daemon's configuration, persistent node
 * identity, node metadata (NodeMeta), host sampling, status rows and their
 * text/JSON renderings, the control commands (their protocol and request
 * validation; the socket is daemon/ctl.c), and the versioned cluster
 * configuration with its lifecycle (create, join, delete and the key
 * rotation, promote, sync). Depends on common/, gossip/ and net/.
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
 * is an error naming the line. SIGHUP reloads the file: the keys marked
 * "Reloads live" (PMM_CONF_LIVE in config.c's table) change at once, a
 * change to any other is logged as needing a restart. Keys:
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
 *       /metrics (see daemon/daemon.h).
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
 *       Reloads live.
 *   status_token_file = /etc/pmgcm/status.token
 *       The bearer token for `token` (required then): the file's first
 *       line, 16..256 characters of [A-Za-z0-9._~+/=-]; the file must not
 *       be readable by everyone. Read at start and at every reload.
 *       Reloads live.
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
 *       error | warn | info | debug (default info). Reloads live.
 *   log_format = text
 *       text | json (default text): json writes one object per line,
 *       {"time","level","subsystem","message"}. Reloads live.
 *   meta_interval_ms = 5000
 *       How often uptime, load, memory and disk usage are sampled; they are
 *       gossiped only when they changed (100..3600000). Reloads live.
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
 *   db_snapshot_jobs = 4
 *       Tables a joining node (one without loaded data) loads at once,
 *       each over a connection of its own on both nodes (1..4; 1: one
 *       transaction, as a node with loaded data always does).
 *   files_dir = /etc/pmg
 *       Optional directory of master-owned files mirrored to every node.
 *   files_reload = systemctl reload pmg-smtp-filter
 *       Optional shell command run after mirrored files changed. Reloads
 *       live.
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
 *   {"cmd":"update-fingerprints"[,"cid":CID,"fingerprint":FP]}
 *                                             master: probe every node's
 *                                             certificate / pin one that
 *                                             the admin confirmed
 * (the commands, their arguments and who may call them are the table
 * below: pmm_ctl_cmds[])
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
 *   update-fingerprints  without cid: {"ok":true,"nodes":[{"cid":N,
 *                "name":S,"ip":S,"state":"unchanged"|"changed"|"updated"
 *                |"unreachable","fingerprint":PINNED[,"presented":FP]
 *                [,"error":S]}...],"changed":N} (this node's own entry is
 *                refreshed: "updated"; others are only reported); with
 *                cid: {"ok":true,"cid":N,"fingerprint":FP,"old":FP,
 *                "updated":BOOL}
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

#include "common/common.h"
#include "gossip/gossip.h"
#include "net/net.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PMM_DB_SYNC_OFF 0
#define PMM_DB_SYNC_ONE 1
#define PMM_DB_SYNC_MAJORITY 2

/* ---- configuration ------------------------------------------------------ */
#define PMM_CONF_LINE_MAX 4096
#define PMM_CONF_FILE_MAX (256 * 1024)
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
    pmm_log_format log_format;    /* text (default) or json */
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
    uint32_t db_snapshot_jobs;             /* 1..4, 4 */

    /* mirrored config files (files.c): empty files_dir = off */
    char files_dir[PMM_PATH_MAX];
    char files_reload[PMM_DB_STR_MAX + 1]; /* shell command, may be empty */
    uint32_t files_max_bytes;              /* per file, 1 MiB */
    uint32_t files_trash_max_files;        /* trash bound, 1000 files */
    uint32_t files_trash_max_bytes;        /* trash bound, 64 MiB */
} pmm_config;

/* ---- the schema: one entry per key (config.c's table) ------------------
 * The table drives the parser, the defaults, --check-config and the
 * reload (SIGHUP); test_mconfig holds the README, pmgclusterd(8) and
 * contrib/pmgclusterd.conf to it. */
typedef enum pmm_conf_type {
    PMM_CONF_NAME,  /* a node name: 1..64 of [A-Za-z0-9._-] */
    PMM_CONF_ADDR,  /* ip, ip:port or [ipv6]:port (port 7946) */
    PMM_CONF_IP,    /* a bare IP, brackets allowed for IPv6 */
    PMM_CONF_PATH,  /* absolute, no control characters, < size */
    PMM_CONF_LABEL, /* 0..64 printable ASCII */
    PMM_CONF_STR,   /* printable text, < size */
    PMM_CONF_U32,   /* decimal in [min, max] (uint32_t) */
    PMM_CONF_PORT,  /* decimal in [min, max] (uint16_t) */
    PMM_CONF_ENUM,  /* one of choices, stored as its index (int) */
    PMM_CONF_PEERS, /* addresses, blank/comma separated (peers, n_peers) */
} pmm_conf_type;

#define PMM_CONF_REQUIRED 0x1u    /* the file must set it */
#define PMM_CONF_LIVE 0x2u        /* SIGHUP applies a change at once */
#define PMM_CONF_EMPTY 0x4u       /* "key =" is a value (the empty one) */
#define PMM_CONF_NO_WILDCARD 0x8u /* ADDR: 0.0.0.0 and :: refused */

typedef struct pmm_conf_key {
    const char *name;
    pmm_conf_type type;
    unsigned flags;              /* PMM_CONF_* */
    size_t off, size;            /* the field in pmm_config */
    uint32_t min, max;           /* U32, PORT */
    const char *const *choices;  /* ENUM: NULL-terminated, value = index */
    const char *def;             /* the default as a file would write it;
                                  * NULL: empty, or computed (advertise,
                                  * status_bind) */
    const char *doc;             /* one line */
} pmm_conf_key;

/* The table (static) and its length in *n (n may be NULL). */
const pmm_conf_key *pmm_config_keys(size_t *n);
/* The entry of a key by name, or NULL. */
const pmm_conf_key *pmm_config_key_find(const char *name);

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
/* The i-th key the parser knows (a static string), NULL past the last:
 * test_mconfig holds the README, pmgclusterd(8) and contrib/pmgclusterd.conf
 * to this list. */
const char *pmm_config_key(size_t i);
/* The keys whose values differ between a and b (two parsed configs): bit i
 * stands for the i-th key (pmm_config_keys). */
uint64_t pmm_config_diff(const pmm_config *a, const pmm_config *b);
/* A reload: copies into running the PMM_CONF_LIVE keys whose values next
 * (a parsed config) changes; every other key keeps its running value (a
 * restart applies it). Returns pmm_config_diff(running, next) as it was
 * before the copy: the changed keys, live or not. running stays a valid
 * config: no check of config_finish ties a live key to one that is not. */
uint64_t pmm_config_apply_live(pmm_config *running, const pmm_config *next);
/* Key k's value in c as a file would write it, for a log (printable, cut
 * to len): 0; 1 when it is not shown (free text such as db_conninfo may
 * hold a password; peers is a list); -EINVAL when len is 0. */
int pmm_config_value_str(const pmm_config *c, const pmm_conf_key *k,
                         char *buf, size_t len);

/* ---- persistent state in data_dir --------------------------------------- */
#define PMM_STATE_PEERS_MAX 256

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
    uint32_t proto_min, proto_max; /* node API protocol range (decode:
                          * 1..1 when absent, an old build) */
    char build[PMM_BUILD_VERSION_MAX + 1]; /* build version, "" unknown */
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

/* `pmgcm create` refuses a join password shorter than this many
 * characters (the join throttle slows guessing; it cannot make a short
 * password strong). Join itself takes whatever the cluster was made
 * with. */
#define PMM_CREATE_PASSWORD_MIN 12
/* ---- status rows ---------------------------------------------------------- */
#define PMM_STATUS_REASON_MAX 191
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
    /* why the row is not A (pmm_status_reasons; "" for A), when it was
     * last seen alive (seconds ago, -1 unknown: never seen alive by this
     * daemon, or A), and removed: this node's own row after it was
     * deleted from the cluster */
    char reason[PMM_STATUS_REASON_MAX + 1];
    int64_t last_seen;
    bool removed;
    /* the node's build version ("" unknown: no metadata, or a build from
     * before versioning) and node API protocol range (1..1 for such an
     * old build; 0..0 without metadata) */
    char version[PMM_BUILD_VERSION_MAX + 1];
    uint32_t proto_min, proto_max;
} pmm_status_row;

char pmm_state_letter(gsp_state s);
/* After rows are built: lag of every store row against the master's row
 * (at least what the node itself says), and 'S' for an alive node whose
 * store is not in sync (idle counts as in sync only outside a cluster,
 * role "-"). */
void pmm_status_db_finish(pmm_status_row *rows, size_t n);
/* Builds a row from a member; now_unix is the wall clock of the reader.
 * Dead and left members keep their last load/mem/disk but no uptime
 * (pmm_status_reasons then drops those stale figures); last_seen -1. */
void pmm_status_row_from_member(pmm_status_row *r, const gsp_member *m,
                                int64_t now_unix);
/* After pmm_status_db_finish: each row's reason from its state, last_seen
 * (an alive node whose protocol range does not overlap the self row's:
 * "protocol versions A..B do not overlap ours (C..D): ...")
 * and store (D: "ERROR: unreachable, last seen 2m13s ago" as PMG prints a
 * node it cannot reach; ?: suspect; L: left; S: the store's reason), and
 * no LOAD/MEM/DISK/UPTIME for a D or L row (stale). removed_why (NULL:
 * not removed) marks the self row removed from the cluster removed_ago
 * seconds ago, and says so in its reason. Rows must have last_seen set
 * (-1 unknown). */
void pmm_status_reasons(pmm_status_row *rows, size_t n,
                        const char *removed_why, int64_t removed_ago);
/* "45s", "2m13s", "3h05m", "2d04h"; "?" for a negative value. Returns
 * buf (len >= 32 is always enough). */
char *pmm_format_ago(int64_t secs, char *buf, size_t len);
/* Sorts by name, then id. */
void pmm_status_sort(pmm_status_row *rows, size_t n);
/* "HH:MM", "1 day HH:MM", "N days HH:MM"; "-" for a negative value.
 * Returns buf (len >= 32 is always enough). */
char *pmm_format_uptime(int64_t secs, char *buf, size_t len);
/* PMG's table: header then one line per row (rows printed as given); a
 * row with a reason carries it after the DISK column (two spaces), so the
 * columns stay PMG's. */
int pmm_status_render_text(pmm_buf *b, const pmm_status_row *rows, size_t n);
/* Below the table, only while builds differ (a rolling upgrade): one line
 * "versions: 0.1.0+abc (node1, node2); before versioning (node3)". */
/* JSON array of objects: name, cid, ip, role, state, uptime, load, mem,
 * disk (null when unknown), id, gossip_state, port, self, and db
 * ({state, reason, epoch, seq, lag_changes, lag_seconds, kept:
 * {backups, divergence}, origins}) when has_db, reason ("" for A),
 * last_seen (seconds ago, null unknown), removed: true on a removed
 * node's own row, and once its metadata was read, version (null: a build
 * from before versioning) and protocol ({min, max}). */
int pmm_status_write_json(pmm_buf *b, const pmm_status_row *rows, size_t n);
/* The same array as a new json_t (NULL: out of memory). */
json_t *pmm_status_rows_json(const pmm_status_row *rows, size_t n);
/* Reads such an array back (validating every field). *rows is malloc'd. */
int pmm_status_from_json(const pmm_json *arr, pmm_status_row **rows,
                         size_t *n, char *err, size_t errlen);

/* ---- control commands (command.c; the socket: daemon/ctl.c) --------- */
#define PMM_CTL_REQ_MAX 4096
#define PMM_CTL_CLIENTS_MAX 32
#define PMM_CTL_IDLE_MS 5000
#define PMM_CTL_PENDING_MS 120000
/* wait-sync (a step of `pmgcm join`'s wait): the daemon answers
 * {"ok":true,"state":S} the moment its store's state becomes in-sync, or
 * with the state it has after this long, whichever is first; a node
 * without a replicated database answers at once (state absent) */
#define PMM_WAIT_SYNC_MS 250
#define PMM_CTL_PASSWORD_MAX 1024
#define PMM_CTL_FP_MAX 128
#define PMM_CTL_ERR_MAX 256 /* an error message written by the parser */

/* ---- the control-command table (command.c: pmm_ctl_cmds[]) ----------------
 * ONE row per command, read by everyone who needs to know the commands:
 *   - the daemon's request validation (pmm_ctl_parse_request: the row's
 *     `wire` name and `args`) and its dispatch (daemon/pmgclusterd.c
 *     ctl_handlers[], indexed by the row's id);
 *   - pmgcm's parser (getopt_long over pmm_cli_opts[], each command's
 *     allowed `opts` and positional `min_pos`..`max_pos`), its usage text
 *     and `pmgcm help [CMD]` (`synopsis`, `help`, `who`), and its
 *     membership check before join's prompts (`who` == PMM_CTL_OUTSIDE);
 *   - tests/unit/test_mcli.c, which checks that doc/pmgcm.1, the README,
 *     contrib/pmgcm.bash-completion and `pmgcm help` name every command
 *     and option of the table (so they cannot drift).
 * Adding a command (say `pmgcm detach`):
 *   1. add PMM_CMD_DETACH to pmm_ctl_id (before PMM_CMD_COUNT) and its row
 *      to pmm_ctl_cmds[] in command.c: {"detach", "detach", who, ...,
 *      {wire args}, PMM_OPT_* bits, "synopsis", "one line of help"};
 *      a new option is one more row in pmm_cli_opts[] and a PMM_OPT_ bit;
 *   2. its daemon handler: one entry in ctl_handlers[] (pmgclusterd.c),
 *      and its pmgcm side: one entry in cli_cmds[] (cli/pmgcm.c); both
 *      arrays are indexed by the id, and test_mcli/test_mctl fail while a
 *      wire command lacks either;
 *   3. a paragraph in doc/pmgcm.1, the word in the completion's command
 *      list, a line in the README's CLI section (test_mcli says which
 *      one is missing). */
typedef enum pmm_ctl_id {
    PMM_CMD_STATUS,
    PMM_CMD_PING,
    PMM_CMD_CREATE,
    PMM_CMD_FINGERPRINT,
    PMM_CMD_JOIN,
    PMM_CMD_JOIN_CMD,
    PMM_CMD_DELETE,
    PMM_CMD_PROMOTE,
    PMM_CMD_BACKUPS,
    PMM_CMD_SYNC,
    PMM_CMD_FILES,
    PMM_CMD_DRAIN,
    PMM_CMD_UNDRAIN,
    PMM_CMD_UPDATE_FP,
    PMM_CMD_WAIT_SYNC,
    PMM_CMD_DETACH,
    PMM_CMD_KEYGEN,
    PMM_CMD_HELP,
    PMM_CMD_COUNT
} pmm_ctl_id;

/* The value types of a request's arguments (checked before any handler
 * runs; see the protocol above). */
typedef enum pmm_ctl_arg_type {
    PMM_ARG_IP,       /* a bare IPv4/IPv6 literal */
    PMM_ARG_TARGET,   /* the same, optionally with a port */
    PMM_ARG_FP,
    PMM_ARG_PASSWORD,
    PMM_ARG_CID,
    PMM_ARG_BOOL,
    PMM_ARG_WORD,     /* 1..32 bytes of [a-z0-9_-] */
} pmm_ctl_arg_type;

typedef struct pmm_ctl_arg {
    const char *key;
    pmm_ctl_arg_type type;
    bool required;
} pmm_ctl_arg;

/* Who may call a command: where it makes sense. The daemon's handlers
 * refuse the wrong place with their own words; pmgcm reads it for help
 * and to check membership before join's prompts. */
typedef enum pmm_ctl_who {
    PMM_CTL_ANY,     /* any node, in a cluster or not */
    PMM_CTL_MEMBER,  /* a node of a cluster */
    PMM_CTL_MASTER,  /* the cluster's master */
    PMM_CTL_OUTSIDE, /* a node in no cluster (create, join) */
    PMM_CTL_LOCAL,   /* pmgcm alone, no daemon asked (keygen, help) */
    PMM_CTL_WIRE,    /* a request pmgcm sends as a step of another
                      * command, not a command of its own (ping,
                      * fingerprint) */
} pmm_ctl_who;

/* pmgcm's options (pmm_cli_opts[] is indexed by these bit numbers). */
typedef enum pmm_opt_id {
    PMM_OPT_SOCKET,
    PMM_OPT_HOST,
    PMM_OPT_TOKEN_FILE,
    PMM_OPT_OUTPUT_FORMAT,
    PMM_OPT_HELP,
    PMM_OPT_VERSION,
    PMM_OPT_PASSWORD_FILE,
    PMM_OPT_FINGERPRINT,
    PMM_OPT_YES,
    PMM_OPT_NO_WAIT,
    PMM_OPT_PURGE,
    PMM_OPT_FORCE,
    PMM_OPT_ACCEPT_DATA_LOSS,
    PMM_OPT_MASTER_IP,
    PMM_OPT_MASTER_IP_PMG, /* --master_ip, PMG's spelling */
    PMM_OPT_CONFIRM,
    PMM_OPT_DB,
    PMM_OPT_CONFIG,
    PMM_OPT_COUNT
} pmm_opt_id;
#define PMM_OPT(id) (1u << (id))
/* the options every command takes */
#define PMM_OPTS_GLOBAL                                                    \
    (PMM_OPT(PMM_OPT_SOCKET) | PMM_OPT(PMM_OPT_HOST) |                     \
     PMM_OPT(PMM_OPT_TOKEN_FILE) | PMM_OPT(PMM_OPT_OUTPUT_FORMAT) |        \
     PMM_OPT(PMM_OPT_HELP) | PMM_OPT(PMM_OPT_VERSION))

typedef struct pmm_cli_opt {
    const char *name;    /* without the dashes: "password-file" */
    const char *metavar; /* its value ("FILE"), NULL for a flag */
    int short_name;      /* 'h', or 0 */
    const char *help;    /* one line (under 60 columns) */
} pmm_cli_opt;
extern const pmm_cli_opt pmm_cli_opts[PMM_OPT_COUNT];

#define PMM_CTL_ARGS_MAX 3
typedef struct pmm_ctl_cmd {
    pmm_ctl_id id;
    const char *name;     /* pmgcm's word ("files"); NULL: wire only */
    const char *wire;     /* the request's "cmd" ("files-publish"); NULL:
                           * pmgcm alone (keygen, help) */
    bool legacy_word;     /* the request may be this bare word */
    pmm_ctl_who who;
    pmm_ctl_arg args[PMM_CTL_ARGS_MAX]; /* the request's arguments */
    int min_pos, max_pos; /* pmgcm's positional arguments */
    unsigned opts;        /* PMM_OPT() bits besides PMM_OPTS_GLOBAL */
    const char *synopsis; /* after the name: "<master_ip> [--yes]" */
    const char *help;     /* one line (under 60 columns) */
} pmm_ctl_cmd;
extern const pmm_ctl_cmd pmm_ctl_cmds[PMM_CMD_COUNT];

/* The row of pmgcm word name / of a request's "cmd", or NULL. */
const pmm_ctl_cmd *pmm_ctl_cmd_by_name(const char *name);
const pmm_ctl_cmd *pmm_ctl_cmd_by_wire(const char *wire);
/* Words for `who` ("any node", "the master", ...), for help texts. */
const char *pmm_ctl_who_str(pmm_ctl_who who);

/* Parses and validates one request line (with or without its trailing
 * "\n" / "\r\n"); pure, no sockets. On success returns 0, *cmd = the
 * command's canonical name (a static string, e.g. "join") and *args = the
 * request object ({} for a legacy word; free with pmm_json_free). On error
 * *args is NULL, err gets the message for the client, and the result is
 * -E2BIG (too long), -ENOENT (unknown command), -EINVAL (anything else
 * wrong) or -ENOMEM. */
int pmm_ctl_parse_request(const char *buf, size_t len, const char **cmd,
                          pmm_json **args, char *err, size_t errlen);
/* ==== the cluster configuration and its lifecycle ============================
 * The versioned cluster configuration (cluster.c, prefix pmm_cluster_) and
 * its lifecycle (lifecycle.c, prefix pmm_lc_).
 *
 * A config is {cluster_id, epoch, version, master_cid, maxcid, nodes[],
 * join password hash, gossip keyring}. Configs are ordered by
 * (epoch, version): only the master bumps version, promote bumps epoch.
 * It is persisted in data_dir/cluster.conf (protobuf, mode 0600, written
 * atomically) and moved between nodes only over pinned TLS.
 
 */
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
/* True when this node was removed from its cluster (deleted by the master,
 * or not in a newer config) since the daemon started and has not created
 * or joined one since: *why (owned by lc, valid until the next callback
 * into lc) and *at (wall clock, seconds) say why and when. Either may be
 * NULL. Not kept across restarts. */
#define PMM_LC_REMOVED_WHY_MAX 95
bool pmm_lc_removed(const pmm_lc *lc, const char **why, int64_t *at);
/* This node's TLS certificate fingerprint ("AB:CD:..."). */
const char *pmm_lc_fingerprint(const pmm_lc *lc);
/* The line a new node runs to join the cluster whose master is m, as
 * `pmgcm join-cmd` prints it: "pmgcm join IP[:PORT] --fingerprint FP"
 * (the port only when not PMM_DEFAULT_API_PORT). Cut to fit buf. */
void pmm_join_command(const pmm_cnode *m, char *buf, size_t len);
/* The join throttle's figures (for /metrics and status; the node API's
 * own: pmm_api_get_stats). */
void pmm_lc_join_stats(pmm_lc *lc, pmm_thr_stats *out);

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

#ifdef __cplusplus
}
#endif
#endif
