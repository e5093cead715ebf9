/*
 * tls.h - the node-to-node secure channel of the membership library
 * (internal header): node TLS identity (ECDSA P-256 key and self-signed
 * certificate), SHA-256 certificate fingerprints, and framed TLS 1.2
 * connections over libuv with certificates pinned by fingerprint (no CA).
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
#ifndef PMGCM_NET_TLS_H
#define PMGCM_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s;
struct sockaddr;
struct sockaddr_storage;

/* ---- project error codes ----------------------------------------------- */
#define PMM_TLS_EFINGERPRINT (-560) /* peer certificate is not the pinned one */
#define PMM_TLS_ENOCERT      (-561) /* peer presented no certificate         */
#define PMM_TLS_EREFUSED     (-562) /* we refused the peer (verify said no)  */
#define PMM_TLS_EDENIED      (-563) /* the peer refused us (access_denied)   */
#define PMM_TLS_EHANDSHAKE   (-564) /* TLS handshake failed (protocol, alert) */
#define PMM_TLS_ETOOBIG      (-565) /* frame larger than max_frame           */
#define PMM_TLS_ECORRUPT     (-566) /* identity files unreadable/incomplete  */
#define PMM_TLS_EEVICTED     (-567) /* unfinished handshake dropped for room  */

/* Static string for 0, -errno and PMM_TLS_E*; never NULL. */
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
/* The verdict the connection was accepted under (ACCEPT_NODE/_JOINER), or
 * PMM_TLS_REFUSE before that. */
pmm_tls_verdict pmm_tls_conn_peer_kind(const pmm_tls_conn *c);
bool pmm_tls_conn_is_client(const pmm_tls_conn *c);

#ifdef __cplusplus
}
#endif
#endif
