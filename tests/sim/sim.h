/*
 * sim.h - a deterministic simulator for the real sans-IO gossip core.
 *
 * Thousands of gsp_core instances run in one process on a virtual clock that
 * jumps to the next event, over a virtual network that carries every
 * GSP_OUT_UDP datagram and GSP_OUT_STREAM request. Nothing here reads a real
 * clock or a real socket, so the same seed and the same scenario always give
 * the same event trace (proved by sim_hash(): a running 64-bit hash of every
 * delivered event and every member_changed callback).
 *
 * Time: the simulator counts microseconds (so latency jitter orders packets
 * finer than the core's milliseconds); cores are given now_ms = now_us/1000.
 *
 * Network model:
 *   - UDP: per-packet loss (global, per node in/out, per link), latency =
 *     fixed + jitter (uniform or exponential) + per-node extra, duplication;
 *     reordering falls out of jitter. Partitions (groups) and one-way cuts
 *     drop everything, TCP included.
 *   - TCP (GSP_OUT_STREAM): connect (SYN / SYN-ACK) + request, then the
 *     target's gsp_core_stream_request, then the reply back to the source's
 *     gsp_core_stream_result. Segments see the same loss as UDP and each loss
 *     costs a retransmission timeout (1 s for SYN/SYN-ACK, 200 ms for data,
 *     doubling), so TCP under 10 % loss is slow but reliable, as in Linux. A
 *     target that is down, cut off or too slow: ok=false after timeout_ms.
 *   - Node pause (CPU stall): timers and receive queue freeze; arriving
 *     datagrams queue up to a socket buffer's worth of bytes (the rest are
 *     dropped, as the kernel would); on resume the backlog is delivered in
 *     order at the resume time, then timers run.
 *   - Crash frees the core; restart creates a new core with the same id and
 *     generation + 1 that joins its seeds; restart may move the node to a new
 *     address (the old address then answers nothing).
 *
 * Addresses: node i lives at 10+v . i>>16 . i>>8 . i : 7946, v = its address
 * version (bumped by an address change). Ids: bytes 0..3 = i (big endian),
 * bytes 4..15 from the seeded PRNG.
 */
#ifndef PMGCM_SIM_H
#define PMGCM_SIM_H

#include "gossip/gossip.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sim sim;

enum { SIM_JITTER_UNIFORM = 0, SIM_JITTER_EXP = 1 };

typedef struct sim_opts {
    uint64_t seed;
    size_t max_nodes;          /* node slots (ids/addresses 0..max_nodes-1) */
    gsp_config cfg;            /* gsp_config_default unless changed         */
    uint32_t lat_us;           /* fixed one-way latency, default 300        */
    uint32_t jitter_us;        /* jitter scale, default 200                 */
    int jitter_kind;           /* SIM_JITTER_UNIFORM (default) or _EXP      */
    double loss;               /* global packet loss probability            */
    double dup;                /* duplication probability (UDP)             */
    uint32_t udp_rcvbuf;       /* a paused node's socket buffer, bytes      */
    uint32_t n_seeds;          /* seeds = nodes 0..n_seeds-1, default 3     */
    uint32_t join_seeds;       /* a starting node joins this many seeds (0 = all) */
    uint32_t clock_skew_us;    /* each node's wall clock is off by a fixed
                                  amount uniform in +-this (whole ms),
                                  default 5000 (NTP on a LAN)             */
    bool keyring;              /* seal with a real per-node gsp_keyring      */
    bool crash_refuses;        /* a crashed node's host answers TCP with RST */
    bool check_wire;           /* decode every delivered plaintext datagram
                                  and count records repeated in one packet */
    bool trace;                /* print every delivered event and change    */
    FILE *trace_out;           /* default stdout                            */
} sim_opts;

void sim_opts_default(sim_opts *o);

/* Returns NULL on ENOMEM/EINVAL. */
sim *sim_new(const sim_opts *o);
void sim_free(sim *s);

/* ---- clock ---------------------------------------------------------------- */
uint64_t sim_now_us(const sim *s);
uint64_t sim_now_ms(const sim *s);
/* Processes every event due up to t (virtual ms). */
void sim_run_until(sim *s, uint64_t t_ms);
void sim_run_for(sim *s, uint64_t ms);
/* Runs until cond(s, ud) holds (checked every check_ms of virtual time and
 * at the start) or until t_max_ms. Returns true if cond held; the clock is
 * then at the first check that saw it. */
bool sim_run_until_cond(sim *s, uint64_t t_max_ms, uint64_t check_ms,
                        bool (*cond)(sim *s, void *ud), void *ud);

/* ---- nodes ---------------------------------------------------------------- */
size_t sim_max_nodes(const sim *s);
/* Starts node i (never started or crashed): a new core with generation+1
 * that sets the seed list and joins the seeds. new_addr: move to a new
 * address first. 0 or negative errno. */
int sim_start(sim *s, size_t i, bool new_addr);
/* Starts nodes [from, to) one every stagger_us (runs the clock meanwhile). */
void sim_start_range(sim *s, size_t from, size_t to, uint64_t stagger_us);
void sim_crash(sim *s, size_t i);
/* crash + start (generation+1), optionally at a new address. */
int sim_restart(sim *s, size_t i, bool new_addr);
void sim_pause(sim *s, size_t i);
void sim_resume(sim *s, size_t i);
int sim_leave(sim *s, size_t i);
bool sim_is_up(const sim *s, size_t i);     /* started and not crashed */
bool sim_is_paused(const sim *s, size_t i);
size_t sim_n_up(const sim *s);
gsp_core *sim_core(sim *s, size_t i);        /* NULL when down */
void sim_id(const sim *s, size_t i, gsp_id *out);
void sim_addr(const sim *s, size_t i, gsp_addr *out);
uint64_t sim_gen(const sim *s, size_t i);

/* Delivers a crafted plaintext (or sealed) datagram to node dst now, as if
 * sent by node src (its current address). For regression scenarios that
 * need one exact message. 0 or -EINVAL. */
int sim_inject_udp(sim *s, size_t dst, size_t src, const uint8_t *data,
                   size_t len);

/* ---- network -------------------------------------------------------------- */
void sim_set_loss(sim *s, double p);
void sim_set_dup(sim *s, double p);
void sim_set_latency(sim *s, uint32_t lat_us, uint32_t jitter_us, int kind);
void sim_set_node_loss(sim *s, size_t i, double in, double out);
void sim_set_node_delay(sim *s, size_t i, uint32_t extra_us);
/* Node i's wall clock runs skew_ms ahead of virtual time (negative:
 * behind); the cores number their probe periods by it (see
 * gsp_core_set_wallclock). Also for nodes not started yet. */
void sim_set_clock_skew(sim *s, size_t i, int64_t skew_ms);
int64_t sim_clock_skew(const sim *s, size_t i);
void sim_set_link_loss(sim *s, size_t from, size_t to, double p);
/* Cuts (or restores) the link from -> to only. */
void sim_cut(sim *s, size_t from, size_t to, bool cut);
void sim_cut2(sim *s, size_t a, size_t b, bool cut); /* both directions */
/* group[i] for every slot; nodes in different groups cannot talk. */
void sim_partition(sim *s, const int *group);
void sim_heal(sim *s);

/* ---- keyrings (opts.keyring) ---------------------------------------------- */
/* Every node starts with the same initial key (derived from the seed). */
void sim_initial_key(const sim *s, uint8_t key[GSP_KEY_LEN]);
int sim_key_add(sim *s, size_t i, const uint8_t key[GSP_KEY_LEN]);
int sim_key_use(sim *s, size_t i, const uint8_t key[GSP_KEY_LEN]);
int sim_key_remove(sim *s, size_t i, const uint8_t key[GSP_KEY_LEN]);

/* ---- user broadcasts ------------------------------------------------------ */
/* Watches user key `key`: sim_user_have() counts up nodes whose latest
 * delivered version of it is >= version. */
void sim_watch_user_key(sim *s, uint32_t key);
int sim_broadcast(sim *s, size_t i, uint32_t key, uint64_t version,
                  const void *data, size_t len);
size_t sim_user_have(const sim *s, uint64_t version);
uint64_t sim_user_version(const sim *s, size_t i);

/* ---- views (what the cores believe), kept incrementally from callbacks ---- */
/* Number of up observers (other than subj) whose state for subj is st. */
uint32_t sim_view_count(const sim *s, size_t subj, gsp_state st);
/* Every up node other than subj sees subj in a state within mask. */
bool sim_all_see(const sim *s, size_t subj, int state_mask);
/* Every up node sees every other up node alive. */
bool sim_converged(const sim *s);
/* Recounts every view from the cores and compares with the incremental
 * counts; returns the number of mismatches (0 = consistent). */
size_t sim_verify_views(sim *s);
/* Virtual time (ms) of the first transition of anyone's view of subj into
 * st since the last sim_mark_reset(subj); UINT64_MAX if none. */
uint64_t sim_first_mark(const sim *s, size_t subj, gsp_state st);
void sim_mark_reset(sim *s, size_t subj);

/* ---- counters -------------------------------------------------------------- */
typedef struct sim_counters {
    uint64_t events;          /* delivered datagrams/stream steps + ticks   */
    uint64_t udp_sent, udp_delivered, udp_dropped, udp_dup;
    uint64_t udp_bytes;       /* bytes of datagrams sent                     */
    uint64_t streams, stream_fail, stream_bytes; /* requests + replies bytes */
    uint64_t backlog_dropped; /* datagrams dropped at a paused node          */
    uint64_t dead_marks_up;   /* a view turned DEAD while the subject was up */
    uint64_t suspect_marks_up;/* a view turned SUSPECT while subject was up  */
    uint64_t changes;         /* member_changed callbacks                    */
    uint64_t user_deliveries;
    uint64_t stuck_deadlines; /* busy loop: due again 4 ticks in a row      */
    uint64_t stream_request_errors; /* stream_request returned < 0           */
    uint64_t recv_errors;     /* gsp_core_recv returned < 0                  */
    uint64_t wire_dup_user;   /* check_wire: a user record twice in a packet */
    uint64_t ticks;
} sim_counters;
void sim_get_counters(const sim *s, sim_counters *out);
/* Bytes node i sent (UDP + TCP requests and replies) since it started. */
uint64_t sim_node_bytes(const sim *s, size_t i);
/* First "dead while up" mark since start: time (ms), observer, subject. */
bool sim_first_false_dead(const sim *s, uint64_t *t_ms, size_t *observer,
                          size_t *subj);
/* Resets dead_marks_up/suspect_marks_up and the first-false-dead record. */
void sim_reset_marks(sim *s);

uint64_t sim_hash(const sim *s);
/* Mixes a scenario-level value into the trace hash. */
void sim_hash_mix(sim *s, uint64_t v);

/* Optional hook called for every member_changed, after the bookkeeping. */
typedef void (*sim_change_fn)(void *ud, sim *s, size_t observer, size_t subj,
                              gsp_state old_state, gsp_state new_state,
                              bool is_new);
void sim_on_change(sim *s, sim_change_fn fn, void *ud);

/* Optional hook called for every datagram a core sends to an address a node
 * lives at, before loss (a wiretap: record packets to replay them with
 * sim_inject_udp). data is the bytes as sent (sealed with opts.keyring). */
typedef void (*sim_udp_fn)(void *ud, sim *s, size_t src, size_t dst,
                           const uint8_t *data, size_t len);
void sim_on_udp(sim *s, sim_udp_fn fn, void *ud);

/* The member-record pool every core of this simulation shares. */
gsp_pool *sim_pool(const sim *s);

/* Sum of a gsp_stats field over up nodes: offsetof(gsp_stats, field). */
uint64_t sim_stats_sum(const sim *s, size_t field_offset);

#ifdef __cplusplus
}
#endif
#endif
