/*
 * precheck.h - what `pmgcm promote` checks before it changes anything
 * (internal header of the membership library, prefix pmm_promote_).
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
 * and whatever it needs in the view (filled by lifecycle.c promote_view).
 */
#ifndef PMGCM_DAEMON_PRECHECK_H
#define PMGCM_DAEMON_PRECHECK_H

#include "membership/membership.h"
#include "store/store.h"

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

#endif
