/*
 * gossip.h - pmgcm gossip library: a sans-IO SWIM/Lifeguard core, the packet
 * keyring (AES-256-GCM), and a libuv adapter.
 *
 * The core never does I/O and never reads a clock. Time (milliseconds on any
 * monotonic scale, and the wall clock for the probe schedule:
 * gsp_core_set_wallclock) and packets go in; packets to send, TCP stream
 * requests and the next deadline come out. The same core runs under libuv (gsp_uv_*) and
 * under the deterministic simulator in tests/sim.
 *
 * Conventions: functions return 0 or a negative errno (GSP_E* below -500 where
 * errno has none). Ownership is stated next to each function. Every byte that
 * comes from the network is bounded and validated before it is used.
 */
#ifndef PMGCM_GOSSIP_H
#define PMGCM_GOSSIP_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- project error codes (errno has none for these) -------------------
 * GSP_EDECRYPT (no key in the ring opens the packet), GSP_EDECODE
 * (packet/frame is not a valid message), GSP_ETOOBIG (input exceeds a
 * configured bound), GSP_ESELF (packet claims to come from our own id),
 * GSP_EREPLAY (packet/frame seen before or too old), GSP_EMISDIRECTED
 * (packet/frame addressed to another node): -501..-559, listed with every
 * range in common.h (PMM_ERRNO_MAP). */
const char *gsp_strerror(int err); /* pmm_strerror: static, never NULL */

/* ---- identity and addresses ------------------------------------------- */
#define GSP_ID_LEN 16
typedef struct gsp_id {
    uint8_t b[GSP_ID_LEN];
} gsp_id;

/* IPv4 or IPv6 address plus port; family is 4 or 6, 0 = unset. */
typedef struct gsp_addr {
    uint8_t family;
    uint8_t ip[16]; /* IPv4 uses the first 4 bytes */
    uint16_t port;
} gsp_addr;

/* "1.2.3.4:7946", "[::1]:7946". Returns 0 or -EINVAL. */
int gsp_addr_parse(gsp_addr *out, const char *str, uint16_t default_port);
/* Writes "ip:port" (or "[ip6]:port") into buf; returns buf. len >= 64. */
char *gsp_addr_str(const gsp_addr *a, char *buf, size_t len);
/* Only the IP part. len >= 48. */
char *gsp_addr_ip_str(const gsp_addr *a, char *buf, size_t len);
bool gsp_addr_eq(const gsp_addr *a, const gsp_addr *b);

int gsp_id_parse(gsp_id *out, const char *hex32); /* 32 hex chars; 0/-EINVAL */
char *gsp_id_str(const gsp_id *id, char *buf, size_t len); /* len >= 33 */

/* Incarnation: generation is persisted and bumped at every start, version
 * is bumped by refutations and metadata changes. Ordered lexicographically. */
typedef struct gsp_inc {
    uint64_t gen;
    uint64_t ver;
} gsp_inc;
int gsp_inc_cmp(gsp_inc a, gsp_inc b); /* <0, 0, >0 */

/* ---- keyring: AES-256-GCM, first key seals, all keys open --------------- */
#define GSP_KEY_LEN 32
#define GSP_KEYRING_MAX 8
#define GSP_SEAL_OVERHEAD (1 + 12 + 16) /* version byte, nonce, tag */
#define GSP_LABEL_MAX 64

typedef struct gsp_keyring gsp_keyring;

/* label: cluster label bound into every packet as associated data (may be
 * "", at most GSP_LABEL_MAX bytes). Returns NULL with errno set
 * (EINVAL, ENOMEM, EIO).
 * Caller owns the result; free with gsp_keyring_free. */
gsp_keyring *gsp_keyring_new(const char *label);
void gsp_keyring_free(gsp_keyring *kr);
/* Adds a key at the end. 0, -EEXIST (already installed), -ENOSPC. */
int gsp_keyring_add(gsp_keyring *kr, const uint8_t key[GSP_KEY_LEN]);
/* Makes an installed key the sealing (first) key. 0 or -ENOENT. */
int gsp_keyring_use(gsp_keyring *kr, const uint8_t key[GSP_KEY_LEN]);
/* Removes a key; refuses the sealing key (-EBUSY). 0, -ENOENT, -EBUSY. */
int gsp_keyring_remove(gsp_keyring *kr, const uint8_t key[GSP_KEY_LEN]);
size_t gsp_keyring_count(const gsp_keyring *kr);
/* Copies key i (0 = sealing key) into out. 0 or -ENOENT. */
int gsp_keyring_get(const gsp_keyring *kr, size_t i, uint8_t out[GSP_KEY_LEN]);

/* Seal: out must hold in_len + GSP_SEAL_OVERHEAD bytes. *out_len set.
 * Returns 0, -ENOKEY (empty ring), -ENOSPC (out too small), -EIO. */
int gsp_seal(gsp_keyring *kr, const uint8_t *in, size_t in_len,
             uint8_t *out, size_t out_cap, size_t *out_len);
/* Open: out must hold in_len - GSP_SEAL_OVERHEAD bytes. Tries every key.
 * Returns 0 or GSP_EDECRYPT (no key opens it, bad tag, wrong label,
 * truncated, out too small); on failure *out_len is 0 and out is zeroed.
 * A keyring is not thread safe: use it from one thread. Sealing in place
 * is allowed when in == out + 13; any other overlap is -EINVAL. */
int gsp_open(gsp_keyring *kr, const uint8_t *in, size_t in_len,
             uint8_t *out, size_t out_cap, size_t *out_len);

/* Key files: one key per line as 64 hex chars (or 44-char base64);
 * '#' comments and blank lines ignored; first key is the sealing key.
 * Keys are merged into the ring (new ones added, the file's first key
 * becomes the sealing key); a file with no keys changes nothing. Returns 0,
 * -ENOENT, -EISDIR, -EFBIG (over 64 KiB), -ENOMEM, -EINVAL (with the line
 * in *bad_line if not NULL), -ENOSPC (more than GSP_KEYRING_MAX keys; line
 * set when the file itself holds too many). Nothing is added on error. */
int gsp_keyring_load_file(gsp_keyring *kr, const char *path, int *bad_line);
/* Fills buf with fresh random bytes from the process's one generator
 * (common.h pmm_random: mbedTLS CTR-DRBG, thread safe, reseeded after
 * fork). 0, -EINVAL or -EIO. */
int gsp_random(void *buf, size_t len);

/* ---- configuration ------------------------------------------------------ */
typedef struct gsp_config {
    uint32_t probe_interval_ms;   /* 200: one probe per interval after a
                                     failure, and the base of suspicion
                                     timeouts; a probe lasts this long, or
                                     2 * probe_timeout_ms + 50 if more     */
    uint32_t probe_timeout_ms;    /* 100: direct ack deadline              */
    uint32_t probe_quiet_interval_ms; /* 600: one probe per interval while
                                     nothing failed for 10 s (0 or below
                                     probe_interval_ms: no relaxing)       */
    uint32_t indirect_checks;     /* 3: k peers asked to ping for us       */
    uint32_t suspicion_mult;      /* 3: suspicion min = mult*max(1,log10 N)*interval */
    uint32_t suspicion_max_mult;  /* 6: suspicion max = max_mult * min     */
    uint32_t retransmit_mult;     /* 4: lambda in lambda*ceil(log10(N+1))  */
    uint32_t gossip_interval_ms;  /* 200: fan-out of pending updates       */
    uint32_t gossip_nodes;        /* 3                                      */
    uint32_t pushpull_interval_ms;/* 30000, scaled up above 32 nodes        */
    uint32_t rejoin_interval_ms;  /* 10000: contact a dead/seed peer        */
    uint32_t awareness_max;       /* 8: Lifeguard local health max         */
    uint32_t reap_dead_ms;        /* 0 = keep dead members forever          */
    uint32_t reap_left_ms;        /* 0 = keep left members forever          */
    uint32_t packet_size;         /* 1400: max UDP payload before sealing  */
    uint32_t user_share_pct;      /* 25: share of every packet reserved for user broadcasts */
    uint32_t max_stream_bytes;    /* 4 MiB: bound for one TCP frame         */
} gsp_config;

/* Fills the defaults documented above. */
void gsp_config_default(gsp_config *cfg);

/* ---- the sans-IO core --------------------------------------------------- */
typedef enum gsp_state {
    GSP_ALIVE = 0,
    GSP_SUSPECT = 1,
    GSP_DEAD = 2,
    GSP_LEFT = 3,
} gsp_state;
const char *gsp_state_name(gsp_state s); /* "alive", "suspect", ... */

#define GSP_NAME_MAX 64
#define GSP_META_MAX 512

/* A read-only view of one member. Pointers are valid until the next call
 * into the core that takes a non-const core pointer. */
typedef struct gsp_member {
    gsp_id id;
    char name[GSP_NAME_MAX + 1];
    gsp_addr addr;
    gsp_inc inc;
    gsp_state state;
    uint64_t state_since_ms;  /* core time of the last state change      */
    const uint8_t *meta;
    size_t meta_len;
    bool is_self;
} gsp_member;

typedef struct gsp_core gsp_core;

typedef struct gsp_callbacks {
    void *ud;
    /* A member appeared or changed state, address or metadata. */
    void (*member_changed)(void *ud, const gsp_member *m, gsp_state old_state,
                           bool is_new);
    /* A user broadcast with a newer version than we had arrived. */
    void (*user_msg)(void *ud, uint32_t key, uint64_t version,
                     const uint8_t *data, size_t len);
} gsp_callbacks;

/* Creates a core for node `self` at `addr` with generation `gen` (persist
 * and bump it at every start). keyring may be NULL (plaintext: only for the
 * simulator and tests); the core does not own it and it must outlive the
 * core. seed drives the core's PRNG (probe order, fan-out targets).
 * Returns 0 and *out (caller frees with gsp_core_free), -EINVAL, -ENOMEM. */
int gsp_core_new(gsp_core **out, const gsp_config *cfg, const gsp_id *self,
                 const char *name, const gsp_addr *addr, uint64_t gen,
                 gsp_keyring *keyring, uint64_t seed, uint64_t now_ms,
                 const gsp_callbacks *cb);
void gsp_core_free(gsp_core *c);

/* A pool of immutable member records (name, address, metadata and their
 * packed announcement) that cores in one process share instead of each
 * keeping its own copy: the simulator runs thousands of cores, each with a
 * record of every node. A daemon (one core) needs none. Not thread safe:
 * cores sharing a pool are driven from one thread. */
typedef struct gsp_pool gsp_pool;
gsp_pool *gsp_pool_new(void); /* NULL on ENOMEM; free with gsp_pool_free */
/* Frees the pool; every core that used it must be freed before. */
void gsp_pool_free(gsp_pool *p);
/* Records held and their bytes (either pointer may be NULL). */
void gsp_pool_stats(const gsp_pool *p, size_t *records, size_t *bytes);
/* Makes core c keep its records in pool (NULL: private). Call right after
 * gsp_core_new, before any traffic: 0, -EBUSY (it already knows others),
 * -ENOMEM. The pool must outlive the core. */
int gsp_core_set_pool(gsp_core *c, gsp_pool *pool);

/* Sets this node's metadata (copied; at most GSP_META_MAX bytes). A change
 * bumps the incarnation version and is gossiped. 0, -E2BIG, -ENOMEM. */
int gsp_core_set_meta(gsp_core *c, uint64_t now_ms, const uint8_t *meta,
                      size_t len);

/* Contact these addresses with a TCP push-pull (seeds, known peers). */
int gsp_core_join(gsp_core *c, uint64_t now_ms, const gsp_addr *addrs,
                  size_t n);
/* Remember addresses to re-contact periodically while they are not alive
 * members (partition healing). Copied; replaces the previous list. */
int gsp_core_set_seeds(gsp_core *c, const gsp_addr *addrs, size_t n);

/* Announce a graceful leave: gossips LEFT about ourselves. Keep driving the
 * core for a moment (e.g. until gsp_core_pending_updates()==0 or ~1 s). */
int gsp_core_leave(gsp_core *c, uint64_t now_ms);

/* Undo a leave (a node removed from one cluster that will join another):
 * alive again under a higher version. 0 or -EALREADY if not leaving. */
int gsp_core_unleave(gsp_core *c, uint64_t now_ms);

/* Queue a cluster-wide user broadcast. Per key, a higher version replaces a
 * lower one everywhere. data copied, at most GSP_META_MAX bytes. */
int gsp_core_broadcast(gsp_core *c, uint32_t key, uint64_t version,
                       const uint8_t *data, size_t len);

/* Feed one received UDP datagram (sealed if a keyring is set). Bad input
 * is dropped, counted in stats, and never changes membership: the return
 * value says why (GSP_EDECRYPT, GSP_EDECODE, GSP_ETOOBIG, GSP_EREPLAY...).
 *
 * Replay protection (wire change, gossip.proto): every Packet and Stream
 * frame carries, inside the seal, the sender's id, `gen` (its incarnation
 * generation at send time, bumped at every start) and `seq` (a counter
 * from 1 per process and channel: one for datagrams, one for stream
 * frames). For each member and channel the core keeps the highest (gen,
 * seq) accepted and a 64-entry window below it (as IPsec/WireGuard do), and
 * drops, counted as drop_replay, before looking at anything else in it:
 * a lower gen (a packet from an earlier life), a seq 64 or more below the
 * highest (too old) and a seq already accepted (a duplicate). A higher gen
 * (a restarted node) is accepted at once and starts a new window. No clock
 * is involved, so clock skew does not matter. Limits: a sender we hold no
 * record of (first contact, or after our own restart) is accepted, since
 * there is nothing to compare with (old records it might replay lose to the
 * newer incarnations the cluster holds; with the receiver binding below,
 * only packets that were sent to this very node can be replayed so);
 * input without seq is not checked (nodes from before it lack the receiver
 * binding too, so nothing they send is taken). A node whose generation went
 * backwards (a restored data dir) is dropped as a replay until it refutes
 * its own newer record, which moves it to a generation above it.
 *
 * Receiver binding (wire change, gossip.proto): every Packet and Stream
 * frame also names, inside the seal, the node it is for: `to`, the
 * receiver's id. A datagram or frame for another node (a packet recorded on
 * its way to B and sent to C) or without a receiver is dropped, counted as
 * drop_misdirected (GSP_EMISDIRECTED), before anything in it is looked at,
 * and before it touches the replay window. The one exception is a join
 * push-pull request to a seed address, whose sender cannot know who lives
 * there: it names the address it was sent to, and is taken only at that
 * address (our advertised address, or the local address the connection
 * arrived on: gsp_core_stream_request's `local`). A reply must name us and
 * come from the node we asked (when we asked a known member).
 *
 * Acks: an ack for the current probe counts only when it comes from the
 * probed node, or, once the probe went indirect, from one of the relays we
 * asked (PingReq); a relay forwards an ack only from the target it was
 * asked to ping; nacks count only from relays asked. Any other ack or nack
 * is ignored (acks_ignored): a third party that learnt a probe's seq cannot
 * make a dead node look alive. */
int gsp_core_recv(gsp_core *c, uint64_t now_ms, const gsp_addr *from,
                  const uint8_t *pkt, size_t len);

/* Handle one inbound TCP request frame (sealed); writes the sealed reply
 * into a buffer the core allocates (*reply, caller frees with free()).
 * A request that needs no reply sets *reply = NULL, *reply_len = 0.
 * local: the address the connection arrived on (NULL if unknown): a join
 * push-pull by address is taken when it was sent to this address or to our
 * advertised one (see "receiver binding" above). */
int gsp_core_stream_request(gsp_core *c, uint64_t now_ms,
                            const gsp_addr *from, const gsp_addr *local,
                            const uint8_t *req, size_t len, uint8_t **reply,
                            size_t *reply_len);

/* Result of an outbound stream request the core asked for (see
 * GSP_OUT_STREAM). reply NULL/len 0 with ok=false = connect/IO failure. */
int gsp_core_stream_result(gsp_core *c, uint64_t now_ms, uint64_t req_id,
                           bool ok, const uint8_t *reply, size_t len);

/* The wall clock (ms since the epoch: CLOCK_REALTIME) at core time now_ms.
 * Nodes number their probe periods by it, so that every member is probed
 * in every period (see "the probe schedule" in core.c); clocks that
 * disagree (no NTP) only make the probes' timing random again, never
 * rarer. Call it at start and at will (the adapter: before every tick); a
 * step of the clock is harmless. Without it the core clock stands for the
 * wall clock. */
void gsp_core_set_wallclock(gsp_core *c, uint64_t now_ms, uint64_t wall_ms);

/* Run timers due at now_ms. */
void gsp_core_tick(gsp_core *c, uint64_t now_ms);

/* Earliest time gsp_core_tick must be called again. */
uint64_t gsp_core_next_deadline(const gsp_core *c);

/* The configuration the core runs with (max_stream_bytes bounds TCP
 * frames in the adapter). Valid as long as the core. */
const gsp_config *gsp_core_config(const gsp_core *c);

/* Output queue. */
typedef enum gsp_out_kind {
    GSP_OUT_UDP = 1,    /* send data to addr as one datagram              */
    GSP_OUT_STREAM = 2, /* open TCP to addr, send framed data, read one
                           framed reply, report with gsp_core_stream_result
                           (req_id), giving up after timeout_ms           */
} gsp_out_kind;

typedef struct gsp_out {
    gsp_out_kind kind;
    gsp_addr addr;
    uint8_t *data; /* owned by the caller after gsp_core_pop_out: free() */
    size_t len;
    uint64_t req_id;
    uint32_t timeout_ms;
} gsp_out;

/* Takes the next output. Returns 1 with *out filled, 0 when empty. */
int gsp_core_pop_out(gsp_core *c, gsp_out *out);

/* Iterate members (self included). Stops early if fn returns non-zero. */
void gsp_core_foreach(gsp_core *c,
                      int (*fn)(void *ud, const gsp_member *m), void *ud);
/* Finds a member by id: 0 and *out filled, or -ENOENT. */
int gsp_core_get(gsp_core *c, const gsp_id *id, gsp_member *out);
size_t gsp_core_count(const gsp_core *c, int state_mask); /* 1<<GSP_ALIVE|... */
size_t gsp_core_pending_updates(const gsp_core *c);
uint32_t gsp_core_health(const gsp_core *c); /* Lifeguard awareness score */
/* Current suspicion timeouts (ms) for the present member count. */
void gsp_core_suspicion_bounds(const gsp_core *c, uint64_t *min_ms,
                               uint64_t *max_ms);

typedef struct gsp_stats {
    uint64_t udp_in, udp_out, bytes_in, bytes_out;
    uint64_t streams_in, streams_out, stream_failures;
    uint64_t probes, probe_fails, indirect_probes, tcp_fallback_probes;
    uint64_t suspicions, refutations, deaths_declared;
    uint64_t drop_decrypt, drop_decode, drop_toobig, drop_self, drop_other;
    uint64_t drop_replay; /* replayed or too old: see "replay protection" */
    uint64_t drop_misdirected; /* addressed to another node: see
                                  "receiver binding" (gsp_core_recv) */
    uint64_t acks_ignored; /* ack/nack from a node that was not asked */
    uint64_t updates_sent, user_msgs_delivered;
} gsp_stats;
void gsp_core_stats(const gsp_core *c, gsp_stats *out);

/* Pure helpers, exposed for tests and the simulator. */
uint32_t gsp_retransmit_limit(uint32_t mult, size_t n);
uint64_t gsp_suspicion_timeout(uint64_t min_ms, uint64_t max_ms,
                               uint32_t expected_confirms, uint32_t confirms);

/* The memory budget for unauthenticated input (gsp_budget_*) is in
 * common/common.h. */

/* ---- TCP frame reader ----------------------------------------------------
 * A gossip TCP frame is a 4-byte big-endian length followed by that many
 * (sealed) bytes. The reader takes bytes as they arrive: the length is
 * checked against `max` (what the receiver accepts: the core's
 * max_stream_bytes) before anything is allocated, and the buffer grows
 * with the bytes that actually arrived (doubling from 4 KiB, at most 1 MiB
 * at a time, never past the announced length), so a peer that announces
 * a large frame and sends little holds little. Every byte of buffer is
 * taken from the budget first (gsp_budget_take) and given back by
 * gsp_frame_free. Not thread safe; one reader per connection. */
typedef struct gsp_frame {
    uint8_t hdr[4];
    size_t hdr_got;
    uint8_t *buf;      /* the frame's bytes; owned by the reader        */
    size_t need;       /* announced length (0 until the header is in)   */
    size_t got;        /* bytes of the frame received so far            */
    size_t cap;        /* bytes allocated = bytes taken from budget     */
    size_t max;
    gsp_budget *budget;
} gsp_frame;
#define GSP_FRAME_MIN_ALLOC 4096
#define GSP_FRAME_MAX_STEP (1u << 20)

/* max > 0 (a frame longer than max is refused); budget may be NULL. */
void gsp_frame_init(gsp_frame *f, size_t max, gsp_budget *budget);
/* Where the next bytes go: *p and *room (> 0; never more than the frame
 * still needs, so a reader never consumes bytes past its frame). Grows the
 * buffer when it is full. Returns 0, -ENOBUFS (the budget refused the
 * growth: nothing changed, the caller may free memory elsewhere and call
 * again), -ENOMEM, or -EALREADY (the frame is complete). */
int gsp_frame_space(gsp_frame *f, uint8_t **p, size_t *room);
/* n bytes (n <= *room of the last gsp_frame_space) were written at *p.
 * Returns 1 when the frame is complete (f->buf holds f->need bytes), 0
 * when more is needed, GSP_ETOOBIG when the header just completed
 * announces 0 bytes or more than max (nothing was allocated), -EINVAL if
 * n is more than the room given. */
int gsp_frame_commit(gsp_frame *f, size_t n);
/* Frees the buffer and gives its bytes back to the budget; the reader can
 * be initialised again. */
void gsp_frame_free(gsp_frame *f);

/* ---- libuv adapter ------------------------------------------------------ */
struct uv_loop_s;
typedef struct gsp_uv gsp_uv;

/* Binds UDP and TCP on addr (same port), drives the core from the loop.
 * Takes ownership of core (freed by gsp_uv_close). 0 or negative errno.
 *
 * TCP: one request frame and one reply frame per connection (see
 * gsp_frame). Inbound frames longer than the core's max_stream_bytes are
 * refused from their length alone; their buffers grow as bytes arrive and
 * are taken from the memory budget (gsp_uv_set_budget). Inbound and
 * outbound connections have separate caps (gsp_uv_limits), so a peer
 * holding every inbound slot never stops our own push-pulls and TCP
 * probes. An inbound connection is dropped (counted in gsp_uv_stats):
 *   - at once, if its source address already holds in_per_addr inbound
 *     connections (loopback sources are not capped per address: every
 *     local process shares one address; the total cap still holds);
 *   - when in_max inbound connections are open: of those still reading
 *     their request, the one that received most of a frame it has not
 *     finished (the oldest of those alike) makes room for the new one (a
 *     real peer sends its whole frame at once: a held connection is worth
 *     least); if every one is already being answered, the new one;
 *   - when its announced length is 0 or above max_stream_bytes;
 *   - when no byte arrives for idle_ms, or its request is not complete
 *     within request_ms (its reply must then be read within request_ms);
 *   - when the budget refuses its buffer: first inbound connections
 *     still reading (and older than it) are dropped to give their memory
 *     back, the one that received most first; if none is left, this one.
 * An outbound connection needing memory for its reply may likewise drop
 * inbound ones (never another outbound one). Inbound requests are read at
 * most in_bytes_per_s, all together (a token bucket): over it, reading
 * stops until the bucket refills and TCP flow control holds the senders
 * back, so a flood costs bounded CPU. A connection's first 4 KiB are not
 * counted, so a TCP probe or a small push-pull is read at once even while
 * held connections keep the bucket empty. */
int gsp_uv_start(gsp_uv **out, struct uv_loop_s *loop, gsp_core *core,
                 const gsp_addr *bind_addr);
gsp_core *gsp_uv_core(gsp_uv *u);

typedef struct gsp_uv_limits {
    uint32_t in_max;      /* 64: inbound TCP connections at once          */
    uint32_t in_per_addr; /* 8: inbound connections from one address      */
    uint32_t out_max;     /* 64: outbound TCP connections at once         */
    uint32_t idle_ms;     /* 2000: inbound: longest silence mid-request   */
    uint32_t request_ms;  /* 10000: inbound: the whole request, and again
                             for our reply to be read                     */
    bool cap_loopback;    /* false: loopback sources are not capped per
                             address (true: they are, as any other)      */
    uint32_t in_bytes_per_s; /* 16 MiB: inbound request bytes read per
                             second, all connections together (bursts of
                             a quarter second); over it, reading pauses  */
} gsp_uv_limits;
void gsp_uv_limits_default(gsp_uv_limits *l);
/* Takes effect at once (caps for new connections, timeouts at their next
 * check). 0 or -EINVAL (a zero field). */
int gsp_uv_set_limits(gsp_uv *u, const gsp_uv_limits *l);
/* The memory budget frame buffers are taken from (NULL: unlimited). Not
 * owned: it must outlive the gsp_uv (until gsp_uv_close's handles are
 * closed). A connection gives back to the budget it took from. */
void gsp_uv_set_budget(gsp_uv *u, gsp_budget *b);

typedef struct gsp_uv_stats {
    uint64_t in_open, out_open;   /* connections open now                */
    uint64_t in_accepted;         /* inbound connections accepted         */
    uint64_t in_refused_addr;     /* dropped: over the per-address cap    */
    uint64_t in_refused_full;     /* dropped: at the cap, none evictable  */
    uint64_t in_evicted;          /* dropped for a newer connection or to
                                     free memory for another one          */
    uint64_t in_timeouts;         /* dropped: idle or too slow            */
    uint64_t frames_too_big;      /* announced length above the maximum   */
    uint64_t budget_refused;      /* dropped: the budget had no room left */
    uint64_t out_refused;         /* outbound refused at its cap          */
    uint64_t in_throttled;        /* reads paused: over in_bytes_per_s    */
} gsp_uv_stats;
void gsp_uv_get_stats(const gsp_uv *u, gsp_uv_stats *out);
/* Call after mutating the core from outside (set_meta, join, broadcast...)
 * so queued output is flushed and the timer re-armed. */
void gsp_uv_kick(gsp_uv *u);
/* Current time in the core's scale (uv_now). */
uint64_t gsp_uv_now(gsp_uv *u);
/* Closes handles; the gsp_uv and its core are freed once libuv is done. */
void gsp_uv_close(gsp_uv *u);

#ifdef __cplusplus
}
#endif
#endif
