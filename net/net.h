/*
 * net.h - the net library (net/): how nodes talk to each other besides
 * gossip. Depends on common/ only.
 *   - the secure channel (tls.c, pmm_tls_): node TLS identity (ECDSA P-256
 *     key and self-signed certificate), SHA-256 certificate fingerprints,
 *     and framed TLS 1.2 connections over libuv with certificates pinned
 *     by fingerprint (no CA);
 *   - the limits on unauthenticated peers (guard.c, pmm_src_, pmm_guard_,
 *     pmm_rate_, pmm_thr_): eviction choice, connection rates, the join
 *     throttle;
 *   - the node API (api.c, pmm_api_): a server on the TLS channel where
 *     services register {request kind, who may call, handler}, and its
 *     client side (one request, one answer).
 *
 * ==== the secure channel (tls.c) ===============================================
 *
 * Everything is prefixed pmm_tls_. Functions return 0 or a negative errno,
 * or a PMM_TLS_E* project code (below -500) where errno has none; see
 * pmm_tls_strerror. Ownership is stated next to each function. Everything
 * that comes from disk or the network is bounded and validated before use.
 *
 * ---- the channel ---------------------------------------------------------
 *
 * TLS 1.2 only, ECDHE-ECDSA-AES256-GCM-SHA384 / ECDHE-ECDSA-AES128-GCM-SHA256.
 * Mutual authentication: both sides present their certificate; nobody
 * checks a CA chain, names or dates. Trust is the SHA-256 fingerprint of
 * the peer's certificate, decided by the caller:
 *   - a server calls cb->verify for every connection whose handshake
 *     completed, with the client's fingerprint; the application answers
 *     "known node", "unauthenticated joiner" or "refuse" (now or later).
 *     A client that presents no certificate never reaches verify: it is
 *     refused with PMM_TLS_ENOCERT;
 *   - a client either pins the server's fingerprint (pmm_tls_connect's
 *     `expected`; a mismatch aborts the handshake with PMM_TLS_EFINGERPRINT
 *     before the client has sent its own certificate or any data), or,
 *     with expected == NULL, is asked through cb->verify to approve the
 *     server's fingerprint (the "show it and ask yes/no" path of join).
 * A refusal is sent to the peer as a TLS access_denied alert: the refused
 * side's close reason is PMM_TLS_EDENIED, the refusing side's
 * PMM_TLS_EREFUSED.
 *
 * Frames: a 4-byte big-endian length then that many bytes, inside TLS,
 * any number per connection in both directions. A frame longer than the
 * connection's max_frame is refused on send (PMM_TLS_ETOOBIG, connection
 * kept) and, when received, closes the connection with PMM_TLS_ETOOBIG on
 * both sides (a record_overflow alert tells the sender).
 *
 * Backpressure: pmm_tls_conn_queued() counts frame bytes (4 + payload)
 * accepted by send but not yet handed to the kernel. A send that would take
 * it past max_queued returns -EAGAIN (nothing queued); once it has fallen
 * to max_queued / 2 again, cb->writable fires once. A single frame is always
 * accepted when nothing is queued, so queued <= max(max_queued, 4 +
 * max_frame). Besides the queue a connection holds a fixed amount of memory
 * (a 64 KiB input buffer, two 64 KiB ciphertext buffers, a 16 KiB staging
 * buffer, mbedTLS's two ~16.7 KiB record buffers) plus the frame being
 * received (at most max_frame: lower it in verify for joiners).
 *
 * Reading is paused while a verify decision is pending and while the
 * application has paused it (pmm_tls_conn_pause), so a slow consumer
 * pushes back on its peer through TCP flow control.
 *
 * Callbacks and re-entrancy: callbacks only run from the loop, never from
 * inside a pmm_tls_* call. Any pmm_tls_conn_* function (send, close,
 * pause, ...) may be called from inside any callback, including on the
 * connection the callback is about. A connection object stays valid until
 * its close callback has returned; calls on a closing connection are
 * harmless (they return -ESHUTDOWN or do nothing).
 *
 * Close: cb->close fires exactly once per connection the application has
 * seen (every client connection pmm_tls_connect returned; every server
 * connection that reached cb->verify), as its last callback, after all its
 * libuv handles are closed and before its memory is freed. Reasons: 0
 * (graceful: either side closed with close_notify), -ETIMEDOUT (connect,
 * handshake or idle timeout), -ECONNRESET (peer vanished without
 * close_notify), -ECONNABORTED (pmm_tls_conn_abort), any -errno from the
 * socket, or a PMM_TLS_E* code.
 *
 * The application must ignore SIGPIPE (libuv writes to sockets with
 * write(2)). Everything runs on one thread: the loop's.
 */
#ifndef PMGCM_NET_H
#define PMGCM_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;
struct sockaddr;
struct sockaddr_storage;

/* ---- project error codes -----------------------------------------------
 * -560..-599, listed with every range in common.h (PMM_ERRNO_MAP):
 *   PMM_TLS_EFINGERPRINT  peer certificate is not the pinned one
 *   PMM_TLS_ENOCERT       peer presented no certificate
 *   PMM_TLS_EREFUSED      we refused the peer (verify said no)
 *   PMM_TLS_EDENIED       the peer refused us (access_denied)
 *   PMM_TLS_EHANDSHAKE    TLS handshake failed (protocol, alert)
 *   PMM_TLS_ETOOBIG       frame larger than max_frame
 *   PMM_TLS_ECORRUPT      identity files unreadable/incomplete
 *   PMM_TLS_EEVICTED      unfinished handshake dropped for room */

/* Static string for 0, -errno and every project code (pmm_strerror);
 * never NULL. */
const char *pmm_tls_strerror(int err);

/* ---- fingerprints ---------------------------------------------------------- */
#define PMM_TLS_FP_LEN 32       /* SHA-256                                  */
#define PMM_TLS_FP_STR_LEN 95   /* "AB:CD:..:EF" (32 pairs, 31 colons)      */
#define PMM_TLS_FP_STR_SIZE 96  /* with the terminating NUL                 */

typedef struct pmm_tls_fp {
    uint8_t b[PMM_TLS_FP_LEN];
} pmm_tls_fp;

/* SHA-256 of a DER certificate. Returns 0, -EINVAL (der NULL or len 0),
 * -EIO. */
int pmm_tls_fingerprint(const uint8_t *der, size_t der_len, pmm_tls_fp *out);
/* Formats as PMG does: uppercase hex pairs joined by ':' (95 characters).
 * len >= PMM_TLS_FP_STR_SIZE. Returns buf. */
char *pmm_tls_fp_str(const pmm_tls_fp *fp, char *buf, size_t len);
/* Parses 64 hex digits, either case, either all 32 pairs separated by single
 * ':' (95 characters) or no separators at all (64 characters). Anything
 * else (whitespace, partial colons, other separators, wrong length) is
 * -EINVAL and *out is left unchanged. */
int pmm_tls_fp_parse(pmm_tls_fp *out, const char *s);
/* Constant-time comparison. */
bool pmm_tls_fp_eq(const pmm_tls_fp *a, const pmm_tls_fp *b);
/* Compares two fingerprint strings in any accepted form: 1 equal,
 * 0 different, -EINVAL if either does not parse. */
int pmm_tls_fp_str_eq(const char *a, const char *b);

/* ---- node identity ------------------------------------------------------- */
#define PMM_TLS_KEY_FILE "node.key"
#define PMM_TLS_CRT_FILE "node.crt"
#define PMM_TLS_CN_MAX 64

typedef struct pmm_tls_identity pmm_tls_identity;

/* Generates an ECDSA P-256 key and a self-signed X.509 v3 certificate
 * (subject = issuer = CN=<cn>, random 128-bit serial, valid from a day ago
 * for 100 years, ECDSA-SHA256, keyUsage digitalSignature) and writes
 * dir/node.key (PEM, mode 0600) and dir/node.crt (PEM, mode 0644), each
 * atomically (temp file in dir, fsync, link into place, fsync dir).
 * dir must exist. cn: 1..PMM_TLS_CN_MAX characters of [A-Za-z0-9._-].
 * Synchronous and slow-ish (milliseconds): call it outside the event loop.
 * Returns 0; -EEXIST if either file already exists (nothing is touched);
 * -EINVAL (bad cn); -ENOMEM; -EIO (mbedTLS failure); -errno from the file
 * system. If writing node.crt fails, the node.key just written is removed;
 * a crash between the two leaves node.key alone, which load reports as
 * PMM_TLS_ECORRUPT and create as -EEXIST (remove it by hand). */
int pmm_tls_identity_create(const char *dir, const char *cn);

/* Loads dir/node.key and dir/node.crt. Returns 0 and *out (the caller owns
 * one reference: pmm_tls_identity_free); -ENOENT if neither file exists
 * (no identity yet); PMM_TLS_ECORRUPT if only one exists, either is larger
 * than 16 KiB or does not parse, the key is not ECDSA P-256, or the key does
 * not belong to the certificate; -ENOMEM; other -errno from the file system.
 * *out is untouched on error. */
int pmm_tls_identity_load(const char *dir, pmm_tls_identity **out);
/* Drops one reference. Servers and connections hold their own reference, so
 * the caller may free its identity while they still use it. NULL is ok. */
void pmm_tls_identity_free(pmm_tls_identity *id);
/* Views valid while the identity lives. */
const pmm_tls_fp *pmm_tls_identity_fp(const pmm_tls_identity *id);
const char *pmm_tls_identity_fp_str(const pmm_tls_identity *id);
const char *pmm_tls_identity_cn(const pmm_tls_identity *id);

/* ---- connections ------------------------------------------------------------ */
typedef struct pmm_tls_conn pmm_tls_conn;
typedef struct pmm_tls_server pmm_tls_server;

typedef struct pmm_tls_opts {
    uint32_t max_frame;            /* 16 MiB: largest frame sent or received */
    size_t max_queued;             /* 4 MiB: outgoing bound, see above       */
    uint32_t idle_timeout_ms;      /* 60000: nothing read or written for
                                      this long closes (0 = never)          */
    uint32_t handshake_timeout_ms; /* 10000: server side: TCP accept to
                                      verify (clients: pmm_tls_connect's
                                      timeout_ms)                           */
    uint32_t linger_ms;            /* 2000: bound on a graceful close's
                                      flush before the socket is dropped   */
    uint32_t max_conns;            /* 256: server only: concurrent
                                      connections; over it a new one makes
                                      room by dropping an unfinished
                                      handshake, else it is dropped at once */
    /* Server only: unfinished handshakes (TCP accept to verify) are the
     * part anybody can open. At most max_handshakes at once, at most
     * max_handshakes_per_src from one address; a newcomer never waits or is
     * refused for them: the oldest unfinished handshake of its own address
     * (at the per-address cap), else of the address holding the most, is
     * dropped (PMM_TLS_EEVICTED) to make room. Each one holds
     * PMM_TLS_HANDSHAKE_COST bytes of budget (NULL: unlimited) until its
     * verify (or its end); when the budget says no even after a few such
     * drops, the newcomer is dropped (-ENOBUFS). Established connections
     * do not count here: they are the application's to bound (verify). */
    uint32_t max_handshakes;       /* 32 */
    uint32_t max_handshakes_per_src; /* 4 */
    struct gsp_budget *budget;     /* NULL; not owned, must outlive s */
} pmm_tls_opts;

/* What one unfinished server-side handshake may hold: the connection, its
 * input buffer, its two ciphertext buffers and mbedTLS's record buffers. */
#define PMM_TLS_HANDSHAKE_COST (256u * 1024)

/* Fills the defaults documented above. */
void pmm_tls_opts_default(pmm_tls_opts *o);

/* Verdicts returned by cb->verify or given to pmm_tls_conn_decide. */
typedef enum pmm_tls_verdict {
    PMM_TLS_REFUSE = 0,        /* close: access_denied to the peer          */
    PMM_TLS_ACCEPT_NODE = 1,   /* a known cluster node                       */
    PMM_TLS_ACCEPT_JOINER = 2, /* accepted but unauthenticated (join)        */
    PMM_TLS_DEFER = 3,         /* decide later with pmm_tls_conn_decide; until
                                  then nothing is read or sent, and the idle
                                  timeout runs                               */
} pmm_tls_verdict;

/* Callbacks; every member may be NULL except where said. `ud` is the
 * connection's user pointer: initially cb->ud, changed by
 * pmm_tls_conn_set_ud. The struct is copied. */
typedef struct pmm_tls_callbacks {
    void *ud;
    /* Handshake done; peer's certificate fingerprint. Returns a
     * pmm_tls_verdict. Required for servers and for clients without a
     * pinned fingerprint; for a pinned client it is called (when set) only
     * after the pin matched. */
    int (*verify)(pmm_tls_conn *c, const pmm_tls_fp *peer, void *ud);
    /* Accepted: frames may now be sent and will be received. */
    void (*open)(pmm_tls_conn *c, void *ud);
    /* One complete frame. data (never NULL, even for len 0) is valid only
     * during the call. */
    void (*frame)(pmm_tls_conn *c, const uint8_t *data, size_t len, void *ud);
    /* After a send returned -EAGAIN: the queue has drained to
     * max_queued / 2. Fires once per -EAGAIN episode. */
    void (*writable)(pmm_tls_conn *c, void *ud);
    /* Last callback, exactly once; c is freed when it returns. */
    void (*close)(pmm_tls_conn *c, int reason, void *ud);
    /* Server only, for logs: a connection the application never saw
     * (handshake failed or timed out, no client certificate, over
     * max_conns) was dropped. peer may be NULL if unknown. */
    void (*failed)(void *ud, const struct sockaddr *peer, int reason);
} pmm_tls_callbacks;

/* Listens on bind_addr (IPv4 or IPv6; port 0 = ephemeral, see
 * pmm_tls_server_addr). Takes its own reference on id. cb->verify required.
 * opts NULL = defaults; copied. Returns 0 and *out, -EINVAL, -ENOMEM, or
 * the bind/listen error (-EADDRINUSE, ...). */
int pmm_tls_server_start(pmm_tls_server **out, struct uv_loop_s *loop,
                         const struct sockaddr *bind_addr,
                         pmm_tls_identity *id, const pmm_tls_callbacks *cb,
                         const pmm_tls_opts *opts);
/* The bound address (useful with port 0). 0 or -errno. */
int pmm_tls_server_addr(const pmm_tls_server *s, struct sockaddr_storage *out);
/* Connections currently alive (in handshake, pending, open or closing). */
size_t pmm_tls_server_conns(const pmm_tls_server *s);
typedef struct pmm_tls_server_stats {
    uint64_t accepted;           /* TCP connections accepted */
    uint64_t handshakes_evicted; /* dropped to make room (EEVICTED) */
    uint64_t handshake_timeouts; /* not done within handshake_timeout_ms */
    uint64_t dropped;            /* over max_conns or the budget: at once */
    uint32_t handshakes;         /* unfinished now */
    uint32_t handshakes_peak;    /* most at once */
} pmm_tls_server_stats;
void pmm_tls_server_get_stats(const pmm_tls_server *s,
                              pmm_tls_server_stats *out);
/* Stops listening; drops handshakes in progress; closes (gracefully) every
 * connection the application has seen, whose close callbacks follow. The
 * server is freed asynchronously: s is invalid after this call. NULL ok. */
void pmm_tls_server_close(pmm_tls_server *s);

/* Connects to addr and runs the handshake. id may be NULL (no client
 * certificate: every pmm_tls server refuses that; for tests and probes).
 * expected: the server's pinned fingerprint, or NULL to have cb->verify
 * approve it (then cb->verify is required). timeout_ms (0 = the opts'
 * handshake_timeout_ms) bounds TCP connect + handshake; -ETIMEDOUT. opts
 * NULL = defaults. Returns 0 and *out -- from then on cb->close fires
 * exactly once, also when the connect fails -- or -EINVAL, -ENOMEM, or a
 * synchronous connect error (then no callback fires). */
int pmm_tls_connect(pmm_tls_conn **out, struct uv_loop_s *loop,
                    const struct sockaddr *addr, pmm_tls_identity *id,
                    const pmm_tls_fp *expected, const pmm_tls_callbacks *cb,
                    uint32_t timeout_ms, const pmm_tls_opts *opts);

/* Sends one frame, copying data (len may be 0; data may then be NULL).
 * Returns 0; -ENOTCONN (not open yet); -ESHUTDOWN (closing or closed);
 * PMM_TLS_ETOOBIG (len > max_frame; the connection stays open); -EAGAIN
 * (max_queued reached: retry after cb->writable); -ENOMEM. */
int pmm_tls_send(pmm_tls_conn *c, const void *data, size_t len);
/* Same, taking ownership of data (malloc'ed; freed with free() once
 * written or when the connection closes) on success only: on error the
 * caller still owns it (so it can retry after -EAGAIN). */
int pmm_tls_send_owned(pmm_tls_conn *c, void *data, size_t len);
/* Frame bytes queued and not yet handed to the kernel. */
size_t pmm_tls_conn_queued(const pmm_tls_conn *c);

/* Graceful close: stops delivering frames, flushes what is queued (bounded
 * by linger_ms), sends close_notify, shuts the socket down. cb->close
 * follows with reason 0 (unless an error came first). Idempotent. */
void pmm_tls_conn_close(pmm_tls_conn *c);
/* Immediate close: drops the queue, no close_notify. cb->close follows with
 * -ECONNABORTED (unless a reason was already set). Idempotent. */
void pmm_tls_conn_abort(pmm_tls_conn *c);

/* Answers a PMM_TLS_DEFER'ed verify (ACCEPT_NODE, ACCEPT_JOINER or
 * REFUSE). open (or the close) follows from the loop. Returns 0, -EINVAL,
 * -EALREADY (nothing pending), -ESHUTDOWN. */
int pmm_tls_conn_decide(pmm_tls_conn *c, pmm_tls_verdict v);
/* Stops / restarts reading and delivering frames (no frame callback fires
 * while paused; the peer's sends back up). While paused the idle timeout
 * does not run. Resume delivers buffered frames from the loop. */
void pmm_tls_conn_pause(pmm_tls_conn *c);
void pmm_tls_conn_resume(pmm_tls_conn *c);

void pmm_tls_conn_set_ud(pmm_tls_conn *c, void *ud);
void *pmm_tls_conn_ud(const pmm_tls_conn *c);
/* Per-connection limits, effective immediately (a frame already being
 * received keeps the limit it was accepted under). max_frame >= 0;
 * max_queued >= 1; idle 0 = never. */
void pmm_tls_conn_set_max_frame(pmm_tls_conn *c, uint32_t max_frame);
void pmm_tls_conn_set_max_queued(pmm_tls_conn *c, size_t max_queued);
void pmm_tls_conn_set_idle_timeout(pmm_tls_conn *c, uint32_t ms);

/* Peer certificate fingerprint, once the handshake has completed: 0 or
 * -ENOTCONN. */
int pmm_tls_conn_peer_fp(const pmm_tls_conn *c, pmm_tls_fp *out);
/* Peer address: 0 or -errno. */
int pmm_tls_conn_peer_addr(const pmm_tls_conn *c,
                           struct sockaddr_storage *out);
/* The negotiated cipher suite's name (static, mbedTLS's), "" before the
 * handshake completed. */
const char *pmm_tls_conn_suite(const pmm_tls_conn *c);
/* The verdict the connection was accepted under (ACCEPT_NODE/_JOINER), or
 * PMM_TLS_REFUSE before that. */
pmm_tls_verdict pmm_tls_conn_peer_kind(const pmm_tls_conn *c);
bool pmm_tls_conn_is_client(const pmm_tls_conn *c);

/* ==== limits on unauthenticated peers (guard.c) ===============================
 * Bounds on what unauthenticated peers may make this daemon hold
 * (prefixes pmm_src_, pmm_guard_, pmm_rate_ and pmm_thr_). Pure code: no sockets, no clock (time comes in
 * as an argument), so every rule is tested without a network.
 *
 * ---- sources ---------------------------------------------------------------
 * A source is a peer's IP. For the connection caps of the status, agent and
 * node API ports every address counts on its own; for the join throttle
 * addresses are grouped the way an attacker gets them: an IPv4 /24 or an
 * IPv6 /64 is one source (an IPv4-mapped IPv6 address is IPv4).
 *
 * ---- eviction ----------------------------------------------------------------
 * A server that holds at most N connections for unauthenticated peers makes
 * room for a newcomer by dropping one it holds, never by refusing everyone
 * new: pmm_guard_victim chooses it. The source holding the most
 * connections loses one (a flood from few addresses only churns its own
 * slots; a health checker holding one connection is the last to go), and
 * within that source the lowest class (for the status port: answered and
 * lingering < reading a request < being written to), then the oldest.
 *
 * ---- the join throttle ---------------------------------------------------------
 * The master checks a join password only for a source group (/24, /64)
 * that has no other attempt in flight, and only while the cluster-wide
 * budget of failed attempts has room (a token bucket: `burst` failures at
 * once, one more every `refill_ms`; an attempt in flight holds a token, a
 * right password gives it back). A wrong password's answer is delayed
 * base_ms << fails (capped at max_ms) and the group stays busy meanwhile.
 * A group's failure count is forgotten only after it has been quiet for
 * forget_ms; a group with an attempt in flight is never forgotten. When
 * every slot of the table holds a group that may not be forgotten yet, a new
 * group is refused (PMM_THR_FULL) instead of any state being dropped, so no
 * number of addresses resets anyone's delay.
 */

/* ---- sources ----------------------------------------------------------------- */
typedef struct pmm_src {
    uint8_t family; /* 4, 6, or 0 (unknown: every unknown source is one) */
    uint8_t ip[16]; /* 4 or 16 bytes used, the rest zero */
} pmm_src;

/* The peer address of sa (AF_INET / AF_INET6; an IPv4-mapped IPv6 address
 * becomes IPv4; NULL or another family: family 0). Never fails. */
void pmm_src_from_sa(pmm_src *out, const struct sockaddr *sa);
/* in masked to its group: an IPv4 /24, an IPv6 /64. out may be in. */
void pmm_src_group(pmm_src *out, const pmm_src *in);
bool pmm_src_eq(const pmm_src *a, const pmm_src *b);
/* 127.0.0.0/8 or ::1 */
bool pmm_src_loopback(const pmm_src *s);
/* "10.0.0.1", "fd00::1"; a group (masked) with its prefix when `group`:
 * "10.0.0.0/24", "fd00::/64". len >= 64 always suffices. Returns buf. */
char *pmm_src_str(const pmm_src *s, bool group, char *buf, size_t len);

/* ---- eviction ---------------------------------------------------------------- */
typedef struct pmm_guard_ent {
    pmm_src src;
    int cls;       /* lower goes first */
    uint64_t seq;  /* accept order: lower is older */
    uint32_t rate; /* the source's recent connections (pmm_rate): between
                      sources holding as many, the busier one goes */
} pmm_guard_ent;

/* How many of e[0..n) come from src. */
size_t pmm_guard_count(const pmm_guard_ent *e, size_t n, const pmm_src *src);
/* The entry to drop among e[0..n), skipping index `skip` (the newcomer;
 * n or more for none) and entries with cls < 0 (protected): the heaviest
 * source's lowest class, oldest first. Returns its index, or n when there
 * is nothing to drop. O(n^2); n is a connection cap (tens to hundreds). */
size_t pmm_guard_victim(const pmm_guard_ent *e, size_t n, size_t skip);
/* The same, among the entries of one source only (its own per-source cap
 * is reached): lowest class, oldest first; n when none. */
size_t pmm_guard_victim_of(const pmm_guard_ent *e, size_t n, size_t skip,
                           const pmm_src *src);

/* ---- recent connections per source ------------------------------------------ */
/* How many connections each source opened lately (this window and the one
 * before, window_ms each), in a fixed table: a health checker opens a few
 * a second, a flood hundreds. A full table replaces its quietest entry
 * (approximate on purpose: it only breaks ties between sources). */
typedef struct pmm_rate pmm_rate;
pmm_rate *pmm_rate_new(uint32_t slots, uint32_t window_ms); /* NULL: ENOMEM */
void pmm_rate_free(pmm_rate *r);
/* Counts one connection from s; returns its recent count. */
uint32_t pmm_rate_hit(pmm_rate *r, const pmm_src *s, uint64_t now_ms);
/* Its recent count (0 when unknown). */
uint32_t pmm_rate_get(const pmm_rate *r, const pmm_src *s, uint64_t now_ms);

/* ---- join throttle ------------------------------------------------------------- */
typedef struct pmm_thr_cfg {
    uint32_t slots;     /* source groups tracked (256) */
    uint32_t base_ms;   /* delay of a wrong password's answer: base_ms <<
                           min(fails, 6) (250) ... */
    uint32_t max_ms;    /* ... capped at max_ms (8000) */
    uint32_t burst;     /* cluster-wide failed attempts at once (20) ... */
    uint32_t refill_ms; /* ... one more every refill_ms (3000) */
    uint32_t forget_ms; /* a quiet group is forgotten after (600000) */
} pmm_thr_cfg;

void pmm_thr_cfg_default(pmm_thr_cfg *c);

typedef enum pmm_thr_verdict {
    PMM_THR_GO = 0,    /* check the password; *slot is the attempt's */
    PMM_THR_BUSY,      /* this group has an attempt in flight */
    PMM_THR_GLOBAL,    /* the cluster-wide budget of failures is spent */
    PMM_THR_FULL,      /* every slot holds a group that may not be
                          forgotten yet */
} pmm_thr_verdict;

typedef struct pmm_thr pmm_thr;

/* cfg NULL = defaults; zero fields are replaced by their defaults. NULL on
 * out of memory. The caller owns the result (pmm_thr_free). */
pmm_thr *pmm_thr_new(const pmm_thr_cfg *cfg, uint64_t now_ms);
void pmm_thr_free(pmm_thr *t);
/* An attempt from addr (grouped here) at now_ms. GO: *slot names the
 * attempt until pmm_thr_end; the group is busy and one token is held.
 * Otherwise *retry_ms says when trying again makes sense (BUSY: 0, the
 * caller knows better). */
pmm_thr_verdict pmm_thr_begin(pmm_thr *t, const pmm_src *addr,
                              uint64_t now_ms, uint32_t *slot,
                              uint64_t *retry_ms);
/* The attempt in slot had a wrong password: its group's failure count
 * rises (into *fails, may be NULL) and the delay of its answer is
 * returned; the token stays spent; the group stays busy until
 * pmm_thr_end. */
uint64_t pmm_thr_fail(pmm_thr *t, uint32_t slot, uint64_t now_ms,
                      uint32_t *fails);
/* The attempt in slot is over. After pmm_thr_fail: only the group is
 * released. Otherwise its token is given back, and `ok` (the password was
 * right) clears the group's failures. */
void pmm_thr_end(pmm_thr *t, uint32_t slot, bool ok, uint64_t now_ms);

typedef struct pmm_thr_stats {
    uint32_t groups;     /* slots holding state (failures or in flight) */
    uint32_t busy;       /* attempts in flight */
    uint32_t tokens;     /* failures the budget allows right now */
    uint64_t failures;   /* wrong passwords, ever */
    uint64_t refused_global, refused_full, refused_busy;
} pmm_thr_stats;
void pmm_thr_stats_get(pmm_thr *t, uint64_t now_ms, pmm_thr_stats *out);

/* ==== the node API (api.c) ======================================================
 * A TLS server (the channel above) on the node's API port and its client
 * side, prefix pmm_api_. One request frame per connection, one answer
 * frame, then the connection closes -- unless the service turns the
 * connection into a stream (pmm_api_req_stream).
 *
 * Routing: a request's first protobuf field (number 1, a varint) is its
 * kind; every answer's fields 1 and 2 are ok (bool) and error (string)
 * (net/api.proto Head, Refusal; membership/cluster.proto Request and
 * Response follow it). Services register a handler per kind, with who may
 * call it:
 *   PMM_API_ANYONE  any peer past the TLS handshake, unauthenticated
 *                   joiners included (the handler checks what it needs);
 *   PMM_API_MEMBER  only a peer whose certificate the gate knows as one of
 *                   the cluster's nodes, at accept and again at the
 *                   request; others get "not a member of this cluster".
 * A kind nobody registered is refused ("unknown request"); a kind
 * registered without a handler is refused with the text given then (a
 * service that is off on this node: "no mirrored files on this node").
 * A frame that is no request at all: "malformed request".
 *
 * Who gets in: the gate (pmm_api_set_gate, normally the cluster
 * lifecycle) says whether a certificate belongs to a node of the cluster.
 * Known nodes may hold API_STREAMS_BASE + API_STREAMS_PER_NODE * nodes
 * connections at once; unknown certificates (joiners) at most 16, 2 per
 * address, their frames at most 64 KiB, idle at most 15 s; a newcomer
 * makes room by dropping an idle joiner (pmm_guard_victim: the address
 * holding the most, its oldest), never one whose request is being
 * handled. Unfinished TLS handshakes are bounded by the channel's
 * max_handshakes (32, 4 per address) and the memory budget.
 *
 * Everything runs on the loop thread; handlers and call callbacks run
 * from the loop, never from inside a pmm_api_* call. */
/* ---- protocol versions ----------------------------------------------------
 * The node API protocol this build speaks: every request carries the
 * range (pmm_api_call_start appends it), every node gossips it (NodeMeta), and a
 * peer whose range does not overlap ours is refused with both ranges in
 * words. A build from before versioning sends none and counts as 1..1.
 * Raise PMM_PROTO_MAX when a request or answer changes meaning; raise
 * PMM_PROTO_MIN when this build no longer speaks the old one (README
 * "Rolling upgrades"). */
#define PMM_PROTO_MIN 1
#define PMM_PROTO_MAX 1
/* Whether two ranges share a version (both ends inclusive). */
static inline bool pmm_proto_overlap(uint32_t amin, uint32_t amax,
                                     uint32_t bmin, uint32_t bmax)
{
    return amin <= bmax && bmin <= amax;
}

typedef struct pmm_api pmm_api;
typedef struct pmm_api_req pmm_api_req;
typedef struct pmm_api_call pmm_api_call;

typedef struct pmm_api_env {
    struct uv_loop_s *loop;
    /* where this node's TLS identity lives (node.key, node.crt; created
     * there, with cn as its name, when neither exists) */
    const char *tls_dir;
    const char *cn;
    /* the server's address: an IP literal and the port */
    const char *ip;
    uint16_t port;
    /* memory for unauthenticated input (TLS handshakes); NULL: unlimited;
     * not owned, must outlive the api */
    struct gsp_budget *budget;
} pmm_api_env;

/* Loads (or creates, logging its fingerprint) the TLS identity, then
 * listens. 0, or -errno / PMM_TLS_E* with a reason in err ("TLS identity
 * in DIR: ...", "node API on IP:PORT: ..."). */
int pmm_api_start(pmm_api **out, const pmm_api_env *env, char *err,
                  size_t errlen);
/* Stops listening, closes every connection, aborts every call (their
 * callbacks follow with -ECONNABORTED); frees a once libuv is done. Handlers
 * whose requests are pending may still answer them (the answer is
 * dropped). NULL ok. */
void pmm_api_close(pmm_api *a);
/* This node's TLS identity (borrowed; valid while a lives). */
pmm_tls_identity *pmm_api_identity(const pmm_api *a);

/* Says whether a certificate fingerprint ("AB:CD:..") belongs to a node of
 * the cluster (known) and how many nodes it has (nodes, 1 outside a
 * cluster). Without a gate every peer is a joiner. */
typedef struct pmm_api_gate {
    bool (*known)(void *ud, const char *fp);
    size_t (*nodes)(void *ud);
    void *ud;
} pmm_api_gate;
void pmm_api_set_gate(pmm_api *a, const pmm_api_gate *g); /* copied */

/* The protocol range this node speaks (default PMM_PROTO_MIN..MAX; tests
 * set others). Every call sends it: fields 30 and 31 (varints) appended
 * to the request, which every request message leaves unused; a request
 * whose range does not overlap ours is refused before its handler, naming
 * both ranges ("protocol versions do not overlap: ..."), and logged. A
 * request without them (an old build) counts as 1..1. 0 or -EINVAL
 * (min 0 or max < min). */
int pmm_api_set_proto(pmm_api *a, uint32_t min, uint32_t max);
/* Those two fields as bytes, for a request sent on a connection opened
 * without pmm_api_call_start (a store stream): appended to the packed
 * request. Returns their length (at most PMM_API_PROTO_FIELDS_MAX). */
#define PMM_API_PROTO_FIELDS_MAX 14
size_t pmm_api_proto_fields(const pmm_api *a, uint8_t *out);

typedef enum pmm_api_who {
    PMM_API_ANYONE = 0,
    PMM_API_MEMBER = 1,
} pmm_api_who;

/* A request for a registered kind: frame is the whole request (len bytes,
 * valid only during the call). The handler must answer r exactly once,
 * now or later (pmm_api_reply, pmm_api_refuse, pmm_api_req_stream). */
typedef void (*pmm_api_handler)(void *ud, pmm_api_req *r,
                                const uint8_t *frame, size_t len);
/* Routes requests of this kind (1..255) to fn. fn NULL: refused with off
 * (NULL: "unknown request"). Registering again replaces the entry (a
 * service going away registers fn NULL). 0 or -EINVAL. */
int pmm_api_register(pmm_api *a, uint32_t kind, pmm_api_who who,
                     pmm_api_handler fn, void *ud, const char *off);

/* Sends resp (len bytes, copied) as the answer, closes the connection and
 * frees r. Harmless when the connection is gone (r is only freed). */
void pmm_api_reply(pmm_api_req *r, const void *resp, size_t len);
/* The same with {ok: false, error: why}. */
void pmm_api_refuse(pmm_api_req *r, const char *why);
/* The request's connection (NULL once it closed): to send on it before
 * handing it over to a stream. */
pmm_tls_conn *pmm_api_req_conn(const pmm_api_req *r);
/* The peer's address ("10.0.0.1"; "" when unknown), its source for the
 * guard's rules, and whether it was accepted as a known node. */
const char *pmm_api_req_ip(const pmm_api_req *r);
const pmm_src *pmm_api_req_src(const pmm_api_req *r);
bool pmm_api_req_member(const pmm_api_req *r);
/* The peer certificate's fingerprint: 0 or -ENOTCONN. */
int pmm_api_req_peer_fp(const pmm_api_req *r, pmm_tls_fp *out);

/* The connection becomes a stream: from now on its frames, writable and
 * close go to cb with `stream`; reading resumes. Frees r. Once the
 * connection closes, cb->close is the last call. The connection itself
 * was returned by pmm_api_req_conn. */
typedef struct pmm_api_stream_cb {
    void (*frame)(void *stream, const uint8_t *data, size_t len);
    void (*writable)(void *stream);
    void (*close)(void *stream);
} pmm_api_stream_cb;
void pmm_api_req_stream(pmm_api_req *r, const pmm_api_stream_cb *cb,
                        void *stream);

typedef struct pmm_api_stats {
    pmm_tls_server_stats tls;  /* handshakes: now, peak, evicted, ... */
    uint32_t node_streams;     /* known nodes' connections now ... */
    uint32_t streams_max;      /* ... and the most allowed */
    uint32_t joiners;          /* unknown certificates past the handshake */
    uint64_t refused_streams, refused_joiners;
} pmm_api_stats;
void pmm_api_get_stats(const pmm_api *a, pmm_api_stats *out);

/* ---- the client side ----------------------------------------------------- */
/* The outcome of a call: rc 0 and the answer (len bytes, valid only during
 * the call), or rc < 0 (-ETIMEDOUT, -ECONNREFUSED, PMM_TLS_EFINGERPRINT,
 * ...) and resp NULL. Called exactly once; c is freed after it returns. */
typedef void (*pmm_api_call_fn)(pmm_api_call *c, int rc, const uint8_t *resp,
                                size_t len, void *ud);
/* Calls: sends req (len bytes, copied) to ip:port over TLS pinned to
 * expected and waits for one answer (connect and handshake within 5 s;
 * idle 15 s).
 * expected NULL: a probe: no request is sent, the server's fingerprint is
 * recorded (pmm_api_call_peer) and the call ends with PMM_TLS_EREFUSED.
 * 0 and *out (may be NULL): fn follows exactly once; -errno (bad ip,
 * -ENOMEM, a synchronous connect error): fn is never called. */
int pmm_api_call_start(pmm_api *a, const char *ip, uint16_t port,
                       const pmm_tls_fp *expected, const void *req,
                       size_t len, pmm_api_call_fn fn, void *ud,
                       pmm_api_call **out);
/* "IP:PORT" of the call's server. */
const char *pmm_api_call_target(const pmm_api_call *c);
/* The server's fingerprint, once its handshake got that far: 0 or
 * -ENOENT. */
int pmm_api_call_peer(const pmm_api_call *c, pmm_tls_fp *out);
/* Drops the call: fn follows from the loop with -ECONNABORTED (unless it
 * already ran: then c must not be used at all). */
void pmm_api_call_abort(pmm_api_call *c);

#ifdef __cplusplus
}
#endif
#endif
