/*
 * pmgclusterd.c - the pmgcm cluster daemon: gossip membership, node
 * metadata, persisted peers, the control socket for `pmgcm`, the status
 * port and the HAProxy agent port (daemon/daemon.h), and draining.
 *
 *   pmgclusterd --config FILE [--foreground]
 *   pmgclusterd --check-config FILE
 *
 * SIGTERM leaves the cluster and exits; SIGHUP reloads FILE (the keys the
 * config table marks live change at once, see reload_start).
 *
 * Everything runs on one libuv loop; blocking work (sampling /proc, writing
 * the peers and draining files) runs on libuv's thread pool.
 */
#include "membership/membership.h"
#include "daemon/daemon.h"
#include "daemon/panel.h"
#include "files/files.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define PEERS_DEBOUNCE_MS 1000
/* Host figures are re-gossiped when they move this much, or after
 * META_REFRESH_S anyway: a load that wobbles by 0.01 every sample must not
 * keep every node's gossip fan-out busy (idle cost). */
#define META_LOAD_STEP 25 /* x100: 0.25, or a fifth of the load if more */
#define META_MEM_STEP 2   /* percent points */
/* push-pull repairs a missed update anyway; each refresh is a gossip wave
 * through the cluster (about a quarter of an idle 30-node cluster's
 * wake-ups at 300 s) */
#define META_REFRESH_S 3600
#define LEAVE_MAX_MS 1000
#define LEAVE_POLL_MS 20
#define HTTP_RETRY_MS 10000 /* a status/agent port that could not listen */
#define DRAIN_FILE "draining"
#define PMM_STATUS_TOKEN_MIN 16
#define PMM_STATUS_TOKEN_MAX 256
/* exit status for a configuration the daemon cannot start with
 * (sysexits.h EX_CONFIG): pmgclusterd.service does not restart on it */
#define EXIT_CONFIG 78

/* a drain/undrain request waiting for data_dir/draining to say so */
typedef struct drain_waiter {
    pmm_ctl_req *req;
    bool want;
    bool changed;
    struct drain_waiter *next;
} drain_waiter;

typedef struct node {
    uv_loop_t loop;
    pmm_config cfg;
    gsp_keyring *kr;
    gsp_uv *u;
    pmm_ctl *ctl;
    pmm_api *api;     /* the node API (TLS): lc, repl and files serve there */
    pmm_lc *lc;
    pmm_files *files; /* mirrored config files; NULL without files_dir */
    pmm_repl *repl;   /* the replicated database; NULL without db_conninfo */
    uv_timer_t db_meta_timer; /* store changes reach the metadata <= 1/s */
    /* wait-sync requests not answered yet (each by its due time, at most
     * one per control client) and the timer of the earliest */
    struct {
        pmm_ctl_req *req;
        uint64_t due;
    } waits[PMM_CTL_CLIENTS_MAX];
    size_t n_waits;
    uv_timer_t wait_timer;
    int lock_fd;
    gsp_id id;
    char id_hex[2 * GSP_ID_LEN + 1];
    uint64_t gen;

    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t meta_timer, peers_timer, leave_timer;

    /* metadata sampling (uv_queue_work) */
    uv_work_t meta_work;
    bool meta_busy;
    int meta_rc;
    bool meta_failing;
    pmm_sysinfo sample;
    pmm_sysinfo sample_work; /* the worker's (meta_work_cb); copied into
                              * sample on the loop */
    uint64_t start_time;
    /* host figures last put into the gossiped metadata */
    uint32_t pub_load1, pub_mem, pub_disk;
    uint64_t pub_at;
    uint8_t meta_buf[GSP_META_MAX];
    size_t meta_len;

    /* peers file (uv_queue_work) */
    uv_work_t peers_work;
    bool peers_busy;
    bool peers_dirty;
    int peers_rc;
    gsp_addr peers_saved[PMM_STATE_PEERS_MAX];
    size_t n_saved;
    gsp_addr peers_next[PMM_STATE_PEERS_MAX];
    size_t n_next;
    /* the peers joined at start: remembered and configured ones */
    gsp_addr join_peers[PMM_STATE_PEERS_MAX + PMM_PEERS_MAX];
    size_t n_join_peers;

    /* memory for unauthenticated input (unauth_budget_bytes): the status
     * and agent ports, the node API's handshakes, gossip TCP frames */
    gsp_budget *budget;
    /* who may read /status and /metrics (the token from
     * status_token_file) */
    pmm_http_access access;
    char status_token[PMM_STATUS_TOKEN_MAX + 1];

    /* status and agent ports */
    pmm_http *http, *agent;
    bool http_failed, agent_failed; /* logged once, retried quietly */
    uv_timer_t http_retry_timer;
    int64_t started_unix;
    /* the node API protocol range this node speaks (net.h PMM_PROTO_*;
     * tests: PMGCLUSTERD_TEST_PROTO="MIN-MAX") */
    uint32_t proto_min, proto_max;
    int exit_code; /* set before a shutdown the daemon decided itself */

    /* draining, persisted in data_dir/draining (uv_queue_work) */
    bool draining;
    bool drain_on_disk;   /* what the file says, as far as we know */
    bool drain_busy;
    bool drain_writing;   /* the state the work in flight writes */
    int drain_rc;
    uv_work_t drain_work;
    drain_waiter *drain_waiters;

    /* when each member that is not alive was last seen alive (wall
     * clock): an entry is made as a member leaves the alive state and
     * dropped when it is alive again; at most LAST_SEEN_MAX (beyond that
     * status says "not seen alive since this daemon started") */
    struct last_seen {
        gsp_id id;
        int64_t at;
    } *seen;
    size_t n_seen, cap_seen;

    /* the cluster panel's timeline (daemon/panel.h, /status "events"):
     * recent membership events, and the config they were last compared
     * with (its nodes without keys, its master, a hash of its keyring) */
    pmm_events events;
    pmm_cnode *ev_nodes;
    size_t ev_n;
    uint32_t ev_master;
    uint64_t ev_keys, ev_key0; /* all keys, the sealing one */
    size_t ev_nkeys;
    bool ev_have;

    /* reload (SIGHUP): the file is read and parsed on a worker */
    const char *config_path;
    struct reload_job *reload;   /* in flight, or NULL */
    bool reload_again;           /* a SIGHUP came while one was in flight */

    /* shutdown */
    bool stopping;
    bool closed;
    uint64_t leave_start;
} node;

#define LAST_SEEN_MAX 4096

static gsp_core *node_core(node *n)
{
    return n->u != NULL ? gsp_uv_core(n->u) : NULL;
}

/* ---- member changes -------------------------------------------------------- */

static void peers_timer_cb(uv_timer_t *t);

/* Debounced: the peers file is looked at PEERS_DEBOUNCE_MS after the first
 * change, however many changes follow in that window. */
static void schedule_peers_save(node *n)
{
    if (n->stopping || n->closed)
        return;
    if (!uv_is_active((uv_handle_t *)&n->peers_timer))
        uv_timer_start(&n->peers_timer, peers_timer_cb, PEERS_DEBOUNCE_MS, 0);
}

static struct last_seen *seen_find(node *n, const gsp_id *id)
{
    for (size_t i = 0; i < n->n_seen; i++)
        if (memcmp(&n->seen[i].id, id, sizeof(*id)) == 0)
            return &n->seen[i];
    return NULL;
}

/* Keeps n->seen: a member that stops being alive was last seen now; one
 * alive again needs no entry. */
static void seen_update(node *n, const gsp_member *m, gsp_state old,
                        bool is_new)
{
    struct last_seen *e = seen_find(n, &m->id);

    if (m->state == GSP_ALIVE) {
        if (e != NULL)
            *e = n->seen[--n->n_seen];
        return;
    }
    if (e != NULL || is_new || old != GSP_ALIVE)
        return; /* known since it left, or never seen alive by us */
    if (n->n_seen == n->cap_seen) {
        size_t ncap = n->cap_seen ? n->cap_seen * 2 : 16;
        struct last_seen *ns;
        if (ncap > LAST_SEEN_MAX)
            return;
        ns = realloc(n->seen, ncap * sizeof(*ns));
        if (ns == NULL)
            return;
        n->seen = ns;
        n->cap_seen = ncap;
    }
    n->seen[n->n_seen].id = m->id;
    n->seen[n->n_seen].at = (int64_t)time(NULL);
    n->n_seen++;
}

/* The panel's timeline: a member's new state. */
static void event_member(node *n, const gsp_member *m, gsp_state old,
                         bool is_new)
{
    const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
    const pmm_cnode *c = cl != NULL ? pmm_cluster_by_id(cl, &m->id) : NULL;
    char detail[PMM_EVENT_DETAIL_MAX];

    if (m->is_self || (!is_new && old == m->state))
        return;
    if (is_new)
        snprintf(detail, sizeof(detail), "new member");
    else
        snprintf(detail, sizeof(detail), "was %s", gsp_state_name(old));
    pmm_events_add(&n->events, (int64_t)time(NULL), gsp_state_name(m->state),
                   m->name, c != NULL ? c->cid : 0, detail);
}

static uint64_t keys_hash(const pmm_cluster *cl, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: a change detector */

    for (size_t k = 0; k < n && k < cl->n_keys; k++)
        for (size_t i = 0; i < GSP_KEY_LEN; i++) {
            h ^= cl->keys[k][i];
            h *= 1099511628211ULL;
        }
    return h ^ n;
}

static const pmm_cnode *cnode_in(const pmm_cnode *a, size_t n, uint32_t cid,
                                 const gsp_id *id)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].cid == cid && memcmp(&a[i].node_id, id, sizeof(*id)) == 0)
            return &a[i];
    return NULL;
}

/* The panel's timeline: what a new cluster config changed (nodes added and
 * deleted, a new master, a new keyring). The first config seen, and one
 * after leaving a cluster, only set the baseline. */
static void event_config(node *n)
{
    const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
    int64_t now = (int64_t)time(NULL);
    char d[PMM_EVENT_DETAIL_MAX];
    pmm_cnode *copy = NULL;

    if (cl == NULL)
        return;
    if (n->ev_have && n->ev_n > 0 && cl->n_nodes > 0) {
        for (size_t i = 0; i < n->ev_n; i++)
            if (cnode_in(cl->nodes, cl->n_nodes, n->ev_nodes[i].cid,
                         &n->ev_nodes[i].node_id) == NULL)
                pmm_events_add(&n->events, now, "deleted",
                               n->ev_nodes[i].name, n->ev_nodes[i].cid,
                               "removed from the cluster config");
        for (size_t i = 0; i < cl->n_nodes; i++)
            if (cnode_in(n->ev_nodes, n->ev_n, cl->nodes[i].cid,
                         &cl->nodes[i].node_id) == NULL) {
                snprintf(d, sizeof(d), "joined (%s)", cl->nodes[i].ip);
                pmm_events_add(&n->events, now, "joined",
                               cl->nodes[i].name, cl->nodes[i].cid, d);
            }
        if (cl->master_cid != n->ev_master) {
            const char *name = "";
            for (size_t i = 0; i < cl->n_nodes; i++)
                if (cl->nodes[i].cid == cl->master_cid)
                    name = cl->nodes[i].name;
            snprintf(d, sizeof(d), "new master (was cid %u), epoch %llu",
                     n->ev_master, (unsigned long long)cl->epoch);
            pmm_events_add(&n->events, now, "promoted", name,
                           cl->master_cid, d);
        }
        if (keys_hash(cl, cl->n_keys) != n->ev_keys && cl->n_keys > 0) {
            const char *what = keys_hash(cl, 1) != n->ev_key0
                                   ? "a new key seals gossip"
                               : cl->n_keys > n->ev_nkeys ? "a new key added"
                               : cl->n_keys < n->ev_nkeys ? "an old key dropped"
                                                          : "keyring changed";
            snprintf(d, sizeof(d), "%s (%zu key(s))", what, cl->n_keys);
            pmm_events_add(&n->events, now, "key rotated", "", 0, d);
        }
    }
    if (cl->n_nodes > 0) {
        copy = malloc(cl->n_nodes * sizeof(*copy));
        if (copy == NULL)
            return; /* the old baseline stays */
        memcpy(copy, cl->nodes, cl->n_nodes * sizeof(*copy));
    }
    free(n->ev_nodes);
    n->ev_nodes = copy;
    n->ev_n = cl->n_nodes;
    n->ev_master = cl->master_cid;
    n->ev_keys = keys_hash(cl, cl->n_keys);
    n->ev_key0 = keys_hash(cl, 1);
    n->ev_nkeys = cl->n_keys;
    n->ev_have = true;
}

static void member_changed(void *ud, const gsp_member *m, gsp_state old,
                           bool is_new)
{
    node *n = ud;
    char a[64];
    pmm_log_level lvl;

    if (!m->is_self)
        seen_update(n, m, old, is_new);
    event_member(n, m, old, is_new);
    gsp_addr_str(&m->addr, a, sizeof(a));
    if (m->is_self) {
        pmm_log(PMM_LOG_DEBUG, "gossip", "self %s (%s) %s", m->name, a,
                gsp_state_name(m->state));
        return;
    }
    lvl = (m->state == GSP_SUSPECT || m->state == GSP_DEAD) ? PMM_LOG_WARN
                                                             : PMM_LOG_INFO;
    if (is_new)
        pmm_log(lvl, "gossip", "%s (%s) %s (new member)", m->name, a,
                gsp_state_name(m->state));
    else if (old != m->state)
        pmm_log(lvl, "gossip", "%s (%s) %s (was %s)", m->name, a,
                gsp_state_name(m->state), gsp_state_name(old));
    else
        pmm_log(PMM_LOG_DEBUG, "gossip", "%s (%s) updated", m->name, a);
    schedule_peers_save(n);
}

/* ---- peers file ------------------------------------------------------------- */

static int addr_cmp(const void *x, const void *y)
{
    const gsp_addr *a = x, *b = y;
    int c;

    if (a->family != b->family)
        return a->family < b->family ? -1 : 1;
    c = memcmp(a->ip, b->ip, a->family == 4 ? 4 : 16);
    if (c != 0)
        return c;
    return a->port < b->port ? -1 : a->port > b->port;
}

typedef struct collect {
    gsp_addr *out;
    size_t n, max;
} collect;

static int collect_alive(void *ud, const gsp_member *m)
{
    collect *c = ud;

    if (m->is_self || (m->state != GSP_ALIVE && m->state != GSP_SUSPECT))
        return 0;
    for (size_t i = 0; i < c->n; i++)
        if (gsp_addr_eq(&c->out[i], &m->addr))
            return 0;
    if (c->n < c->max)
        c->out[c->n++] = m->addr;
    return 0;
}

static bool addr_set_eq(const gsp_addr *a, size_t na, const gsp_addr *b,
                        size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!gsp_addr_eq(&a[i], &b[i]))
            return false;
    return true;
}

static void peers_work_cb(uv_work_t *w)
{
    node *n = w->data;

    n->peers_rc = pmm_state_write_peers(n->cfg.data_dir, n->peers_next,
                                        n->n_next);
}

static void peers_after_cb(uv_work_t *w, int status)
{
    node *n = w->data;

    n->peers_busy = false;
    if (status == UV_ECANCELED)
        return;
    if (n->peers_rc != 0) {
        pmm_log(PMM_LOG_WARN, "state", "cannot write %s/peers: %s",
                n->cfg.data_dir, strerror(-n->peers_rc));
    } else {
        memcpy(n->peers_saved, n->peers_next, n->n_next * sizeof(gsp_addr));
        n->n_saved = n->n_next;
        pmm_log(PMM_LOG_DEBUG, "state", "saved %zu peer address(es)",
                n->n_saved);
    }
    if (n->peers_dirty && !n->stopping) {
        n->peers_dirty = false;
        uv_timer_start(&n->peers_timer, peers_timer_cb, PEERS_DEBOUNCE_MS, 0);
    }
}

static void peers_timer_cb(uv_timer_t *t)
{
    node *n = t->data;
    collect c = {.out = n->peers_next, .max = PMM_STATE_PEERS_MAX};
    gsp_core *core = node_core(n);
    int rc;

    if (n->stopping || core == NULL)
        return;
    if (n->peers_busy) {
        n->peers_dirty = true;
        return;
    }
    gsp_core_foreach(core, collect_alive, &c);
    /* an isolated node keeps its last peers: they are how it gets back */
    if (c.n == 0)
        return;
    qsort(n->peers_next, c.n, sizeof(gsp_addr), addr_cmp);
    if (addr_set_eq(n->peers_next, c.n, n->peers_saved, n->n_saved))
        return;
    n->n_next = c.n;
    n->peers_busy = true;
    n->peers_work.data = n;
    rc = uv_queue_work(&n->loop, &n->peers_work, peers_work_cb,
                       peers_after_cb);
    if (rc != 0) {
        n->peers_busy = false;
        pmm_log(PMM_LOG_WARN, "state", "cannot queue peers write: %s",
                uv_strerror(rc));
    }
}

/* ---- metadata ------------------------------------------------------------------ */

/* Encodes n->sample into n->meta_buf; returns true if it changed. */
/* A store reason as gossip carries it: printable ASCII, bounded. */
#define meta_reason(dst, cap, src) pmm_printable(dst, cap, src)

static bool meta_from_sample(node *n)
{
    pmm_meta m;
    uint8_t buf[GSP_META_MAX];
    size_t len = 0;
    uint64_t now = (uint64_t)time(NULL), st;
    int rc;

    /* boot time = now - uptime jitters by a second between samples: keep
     * the previous value unless it moved by more than 2 s */
    st = now > (uint64_t)n->sample.uptime_s ? now - (uint64_t)n->sample.uptime_s
                                            : 0;
    if (n->start_time == 0 || st > n->start_time + 2 ||
        st + 2 < n->start_time)
        n->start_time = st;
    memset(&m, 0, sizeof(m));
    m.start_time = n->start_time;
    {
        uint32_t dl = n->sample.load1 > n->pub_load1
                          ? n->sample.load1 - n->pub_load1
                          : n->pub_load1 - n->sample.load1;
        uint32_t dm = n->sample.mem_pct > n->pub_mem
                          ? n->sample.mem_pct - n->pub_mem
                          : n->pub_mem - n->sample.mem_pct;
        /* a busy host's load wobbles by more than 0.25 all the time:
         * the step grows with the load (20 %) */
        uint32_t load_step = n->pub_load1 / 5 > META_LOAD_STEP
                                 ? n->pub_load1 / 5 : META_LOAD_STEP;
        if (n->pub_at == 0 || now >= n->pub_at + META_REFRESH_S ||
            dl >= load_step || dm >= META_MEM_STEP ||
            n->sample.disk_pct != n->pub_disk) {
            n->pub_load1 = n->sample.load1;
            n->pub_mem = n->sample.mem_pct;
            n->pub_disk = n->sample.disk_pct;
            n->pub_at = now;
        }
    }
    m.load1 = n->pub_load1;
    m.mem_pct = n->pub_mem;
    m.disk_pct = n->pub_disk;
    {
        const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
        const pmm_cnode *me = cl ? pmm_cluster_by_id(cl, &n->id) : NULL;
        m.cid = me ? me->cid : 0;
        strcpy(m.role, me ? (me->master ? "master" : "node") : "-");
        m.cfg_epoch = cl ? cl->epoch : 0;
        m.cfg_version = cl ? cl->version : 0;
    }
    m.files_sync = pmm_files_sync_tag(n->files);
    m.proto_min = n->proto_min;
    m.proto_max = n->proto_max;
    snprintf(m.build, sizeof(m.build), "%s", pmm_build_version);
    if (n->repl != NULL) {
        pst_info si;
        pmm_repl_info(n->repl, &si);
        m.db_state = (uint32_t)si.state;
        m.db_epoch = si.pos.epoch;
        m.db_seq = si.pos.seq;
        m.db_ts_ms = si.pos_ts_us > 0 ? (uint64_t)si.pos_ts_us / 1000 : 0;
        meta_reason(m.db_reason, sizeof(m.db_reason), si.reason);
        m.db_lag = si.lag;
        m.db_kept = si.kept_backups;
        m.db_divergence = si.kept_divergence;
        m.db_loaded = si.loaded;
        pst_origin og[PMM_META_ORIGINS_MAX];
        size_t no = pmm_repl_origins(n->repl, og, PMM_META_ORIGINS_MAX);
        if (no > PMM_META_ORIGINS_MAX)
            no = PMM_META_ORIGINS_MAX;
        m.n_origins = (uint32_t)no;
        for (size_t i = 0; i < no; i++) {
            m.origins[i].cid = og[i].origin;
            m.origins[i].seq = og[i].seq;
        }
    } else if (n->cfg.db_conninfo[0] != '\0') {
        /* the store is not started yet: nothing about the database is
         * known, which is not in sync (never A before it is checked) */
        m.db_state = (uint32_t)PST_CONNECTING;
        snprintf(m.db_reason, sizeof(m.db_reason),
                 "starting: the database is not checked yet");
    }
    rc = pmm_meta_encode(&m, buf, sizeof(buf), &len);
    if (rc != 0) {
        pmm_log(PMM_LOG_WARN, "meta", "cannot encode metadata: %s",
                strerror(-rc));
        return false;
    }
    if (len == n->meta_len && memcmp(buf, n->meta_buf, len) == 0)
        return false;
    memcpy(n->meta_buf, buf, len);
    n->meta_len = len;
    return true;
}

static void meta_work_cb(uv_work_t *w)
{
    node *n = w->data;

    n->meta_rc = pmm_sysinfo_sample(&n->sample_work);
}

static void meta_after_cb(uv_work_t *w, int status)
{
    node *n = w->data;
    gsp_core *core = node_core(n);
    int rc;

    n->meta_busy = false;
    if (status == UV_ECANCELED || n->stopping || core == NULL)
        return;
    if (n->meta_rc != 0) {
        if (!n->meta_failing)
            pmm_log(PMM_LOG_WARN, "meta", "cannot sample host status: %s",
                    strerror(-n->meta_rc));
        n->meta_failing = true;
        return;
    }
    if (n->meta_failing)
        pmm_log(PMM_LOG_INFO, "meta", "host status sampling works again");
    n->meta_failing = false;
    /* the loop reads sample at any time (store changes): the worker
     * filled its own copy */
    n->sample = n->sample_work;
    if (!meta_from_sample(n))
        return;
    rc = gsp_core_set_meta(core, gsp_uv_now(n->u), n->meta_buf, n->meta_len);
    if (rc != 0) {
        pmm_log(PMM_LOG_WARN, "meta", "gsp_core_set_meta: %s",
                gsp_strerror(rc));
        return;
    }
    gsp_uv_kick(n->u);
}

static void meta_timer_cb(uv_timer_t *t)
{
    node *n = t->data;
    int rc;

    if (n->meta_busy || n->stopping)
        return;
    n->meta_busy = true;
    n->meta_work.data = n;
    rc = uv_queue_work(&n->loop, &n->meta_work, meta_work_cb, meta_after_cb);
    if (rc != 0)
        n->meta_busy = false;
}

/* The cluster config changed: gossip our new cid/role/config version now,
 * so the master's key rotation sees it without waiting for a sample. */
static void cluster_changed(void *ud)
{
    node *n = ud;
    gsp_core *core = node_core(n);

    event_config(n);
    if (!n->stopping) {
        pmm_files_kick(n->files);
        pmm_repl_cluster_changed(n->repl);
    }

    if (core == NULL || n->stopping || !meta_from_sample(n))
        return;
    if (gsp_core_set_meta(core, gsp_uv_now(n->u), n->meta_buf,
                          n->meta_len) == 0)
        gsp_uv_kick(n->u);
}

static void db_meta_cb(uv_timer_t *t)
{
    node *n = t->data;
    gsp_core *core = node_core(n);

    if (core == NULL || n->stopping || !meta_from_sample(n))
        return;
    if (gsp_core_set_meta(core, gsp_uv_now(n->u), n->meta_buf,
                          n->meta_len) == 0)
        gsp_uv_kick(n->u);
}

static void begin_shutdown(node *n, const char *why);

static void waits_answer(node *n, bool all);

static void wait_timer_cb(uv_timer_t *t)
{
    waits_answer(t->data, false);
}

/* Answers the wait-sync requests that are due: all of them when `all`, the
 * store is in sync, or there is no store (then without a state); the rest
 * wait for the timer or the store's next change. */
static void waits_answer(node *n, bool all)
{
    pst_info si;
    bool have = n->repl != NULL;
    if (have) pmm_repl_info(n->repl, &si);
    bool done = all || !have || si.state == PST_IN_SYNC;
    uint64_t now = uv_now(&n->loop), next = UINT64_MAX;
    size_t k = 0;
    for (size_t i = 0; i < n->n_waits; i++) {
        if (done || now >= n->waits[i].due) {
            json_t *o = json_object();
            if (have)
                o = pmm_jadd(o, "state", pmm_jstrz(pst_state_name(si.state)));
            pmm_ctl_reply_ok_with(n->waits[i].req, o);
            continue;
        }
        if (n->waits[i].due < next) next = n->waits[i].due;
        n->waits[k++] = n->waits[i];
    }
    n->n_waits = k;
    if (k) uv_timer_start(&n->wait_timer, wait_timer_cb, next - now, 0);
    else uv_timer_stop(&n->wait_timer);
}

static void dctl_wait_sync(node *n, pmm_ctl_req *req, const char *cmd,
                           const pmm_json *args)
{
    (void)cmd, (void)args;
    if (n->n_waits == PMM_CTL_CLIENTS_MAX) { /* more than ctl serves */
        pmm_ctl_reply_error(req, "too many waits");
        return;
    }
    n->waits[n->n_waits].req = req;
    n->waits[n->n_waits].due = uv_now(&n->loop) + PMM_WAIT_SYNC_MS;
    n->n_waits++;
    waits_answer(n, n->stopping);
}

/* The store's state changed: into the metadata within a second (a store
 * that refuses the database for good stops the daemon); wait-sync
 * requests learn it at once. */
static void store_changed(void *ud)
{
    node *n = ud;

    if (n->n_waits) waits_answer(n, false);

    if (!n->stopping && n->repl != NULL) {
        pst_info si;
        pmm_repl_info(n->repl, &si);
        if (si.fatal) {
            /* the database's schema is newer than this build: running on
             * would be guessing; exit 78 (the unit does not restart) */
            pmm_log(PMM_LOG_ERROR, "store", "refusing to run: %s",
                    si.error);
            n->exit_code = EXIT_CONFIG;
            begin_shutdown(n, "the database's schema is newer than this "
                              "build");
            return;
        }
    }

    if (!n->stopping && !uv_is_active((uv_handle_t *)&n->db_meta_timer))
        uv_timer_start(&n->db_meta_timer, db_meta_cb, 1000, 0);
}

static void user_msg(void *ud, uint32_t key, uint64_t version,
                     const uint8_t *data, size_t len)
{
    node *n = ud;

    if (n->lc != NULL && !n->stopping)
        pmm_lc_user_msg(n->lc, key, version, data, len);
}

/* ---- what lifecycle asks the rest of the node ------------------------------------- */

/* this node's replicated table definitions, sent with a join */
static const char *lc_schema(void *ud)
{
    node *n = ud;
    return pmm_repl_schema(n->repl);
}

/* on the master: a joiner's table definitions against ours */
static int lc_schema_diff(void *ud, const char *theirs, char *d, size_t len)
{
    node *n = ud;
    const char *ours = pmm_repl_schema(n->repl);
    if (ours == NULL || strcmp(theirs, ours) == 0)
        return 0;
    if (d != NULL && len > 0)
        pst_schema_diff(theirs, ours, d, len);
    return 1;
}

/* promote's checks (precheck.c) on what this node knows now */
static int lc_promote_check(void *ud, bool accept, char *why, size_t whylen,
                            char *lost, size_t lostlen, bool *waitable,
                            uint64_t *progress)
{
    node *n = ud;
    const pmm_cluster *cl = pmm_lc_cluster(n->lc);
    const pmm_promote_check *failed = NULL;
    pmm_promote_view *v;
    int bad;

    if (cl == NULL)
        return pmm_errf(why, whylen, -ENOENT, "no cluster defined");
    v = malloc(sizeof(*v));
    if (v == NULL)
        return pmm_errf(why, whylen, -ENOMEM, "out of memory");
    pmm_promote_view_fill(v, cl, &n->id, node_core(n), n->repl, n->files);
    *progress = v->db.pos.seq;
    bad = pmm_promote_precheck(v, accept, why, whylen, lost, lostlen,
                               &failed);
    free(v);
    *waitable = bad && failed != NULL && failed->waitable;
    return bad;
}

/* what promote --accept-data-loss lost, kept in the store */
static void lc_note(void *ud, const char *kind, const char *text)
{
    node *n = ud;
    pmm_repl_note(n->repl, kind, text);
}

/* ---- control socket ------------------------------------------------------------ */

typedef struct rows_acc {
    pmm_status_row *rows;
    size_t n, cap;
    int64_t now;
    int err;
    struct node *n_ptr; /* for last-seen times */
} rows_acc;

static int grow_rows(rows_acc *a)
{
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 16;
        pmm_status_row *nr = realloc(a->rows, ncap * sizeof(*nr));
        if (nr == NULL) {
            a->err = -ENOMEM;
            return -1;
        }
        a->rows = nr;
        a->cap = ncap;
    }
    return 0;
}

/* In a cluster, the rows are the config's nodes: cid and role from the
 * config, state and figures from gossip; a node gossip has never seen is
 * dead; gossip members outside the config are not shown. */
static void apply_cluster(rows_acc *a, const pmm_cluster *cl)
{
    size_t keep = 0;
    for (size_t i = 0; i < a->n; i++) {
        pmm_status_row *r = &a->rows[i];
        gsp_id id;
        const pmm_cnode *c = gsp_id_parse(&id, r->id) == 0
                                 ? pmm_cluster_by_id(cl, &id) : NULL;
        if (c == NULL)
            continue;
        r->cid = c->cid;
        snprintf(r->role, sizeof(r->role), "%s", c->master ? "master" : "node");
        a->rows[keep++] = *r;
    }
    a->n = keep;
    for (size_t j = 0; j < cl->n_nodes; j++) {
        const pmm_cnode *c = &cl->nodes[j];
        char hex[2 * GSP_ID_LEN + 1];
        bool seen = false;
        gsp_id_str(&c->node_id, hex, sizeof(hex));
        for (size_t i = 0; i < a->n && !seen; i++)
            seen = strcmp(a->rows[i].id, hex) == 0;
        if (seen || grow_rows(a))
            continue;
        pmm_status_row *r = &a->rows[a->n++];
        memset(r, 0, sizeof(*r));
        snprintf(r->name, sizeof(r->name), "%s", c->name);
        snprintf(r->id, sizeof(r->id), "%s", hex);
        snprintf(r->ip, sizeof(r->ip), "%s", c->ip);
        snprintf(r->role, sizeof(r->role), "%s", c->master ? "master" : "node");
        snprintf(r->gossip_state, sizeof(r->gossip_state), "%s", "unknown");
        r->cid = c->cid;
        r->port = c->gossip_port;
        r->state = 'D';
        r->uptime = -1;
        r->last_seen = -1;
        r->load = -1;
        r->mem = -1;
        r->disk = -1;
    }
}

static int collect_row(void *ud, const gsp_member *m)
{
    rows_acc *a = ud;

    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 16;
        pmm_status_row *nr = realloc(a->rows, ncap * sizeof(*nr));
        if (nr == NULL) {
            a->err = -ENOMEM;
            return 1;
        }
        a->rows = nr;
        a->cap = ncap;
    }
    pmm_status_row *r = &a->rows[a->n++];
    pmm_status_row_from_member(r, m, a->now);
    if (m->state != GSP_ALIVE && !m->is_self) {
        const struct last_seen *e = seen_find(a->n_ptr, &m->id);
        if (e != NULL)
            r->last_seen = a->now > e->at ? a->now - e->at : 0;
    }
    return 0;
}

/* The rows `pmgcm status` shows (sorted). 0, -ENOMEM, or -EAGAIN before
 * gossip runs. acc->rows is the caller's to free. */
static int build_rows(node *n, rows_acc *acc)
{
    gsp_core *core = node_core(n);
    const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;

    memset(acc, 0, sizeof(*acc));
    acc->now = (int64_t)time(NULL);
    acc->n_ptr = n;
    if (core == NULL)
        return -EAGAIN;
    gsp_core_foreach(core, collect_row, acc);
    if (acc->err == 0 && cl != NULL)
        apply_cluster(acc, cl);
    if (acc->err != 0)
        return acc->err;
    if (n->repl != NULL) {
        /* our own store: fresher than our gossiped metadata */
        pst_info si;
        pmm_repl_info(n->repl, &si);
        for (size_t i = 0; i < acc->n; i++) {
            pmm_status_row *r = &acc->rows[i];
            if (!r->self)
                continue;
            r->has_db = true;
            snprintf(r->db_state, sizeof(r->db_state), "%s",
                     pst_state_name(si.state));
            r->db_epoch = si.pos.epoch;
            r->db_seq = si.pos.seq;
            r->db_ts_ms = si.pos_ts_us > 0 ? (uint64_t)si.pos_ts_us / 1000 : 0;
            meta_reason(r->db_reason, sizeof(r->db_reason), si.reason);
            r->db_lag = si.lag;
            r->db_kept = si.kept_backups;
            r->db_divergence = si.kept_divergence;
            pst_origin og[PMM_META_ORIGINS_MAX];
            size_t no = pmm_repl_origins(n->repl, og, PMM_META_ORIGINS_MAX);
            if (no > PMM_META_ORIGINS_MAX)
                no = PMM_META_ORIGINS_MAX;
            r->n_origins = (uint32_t)no;
            for (size_t k = 0; k < no; k++) {
                r->origins[k].cid = og[k].origin;
                r->origins[k].seq = og[k].seq;
            }
        }
    }
    pmm_status_db_finish(acc->rows, acc->n);
    {
        const char *why = NULL;
        int64_t at = 0;
        if (!pmm_lc_removed(n->lc, &why, &at))
            why = NULL;
        pmm_status_reasons(acc->rows, acc->n, why,
                           acc->now > at ? acc->now - at : 0);
    }
    pmm_status_sort(acc->rows, acc->n);
    return 0;
}

/* ---- status and agent ports ------------------------------------------------------ */

/* A snapshot for the status and agent ports (daemon/daemon.h). */
static void http_view(void *ud, pmm_http_view *v)
{
    node *n = ud;
    gsp_core *core = node_core(n);
    const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
    rows_acc acc;

    v->now = (int64_t)time(NULL);
    v->start_time = n->started_unix;
    gsp_budget_get(n->budget, &v->budget);
    if (n->agent != NULL)
        pmm_http_get_stats(n->agent, &v->agent);
    if (n->lc != NULL) {
        pmm_api_stats as;
        pmm_thr_stats js;
        pmm_api_get_stats(n->api, &as);
        pmm_lc_join_stats(n->lc, &js);
        v->api_handshakes = as.tls.handshakes;
        v->api_handshakes_evicted = as.tls.handshakes_evicted;
        v->api_handshake_timeouts = as.tls.handshake_timeouts;
        v->api_dropped = as.tls.dropped;
        v->api_node_streams = as.node_streams;
        v->api_streams_max = as.streams_max;
        v->api_joiners = as.joiners;
        v->join_failures = js.failures;
        v->join_refused_busy = js.refused_busy;
        v->join_refused_global = js.refused_global;
        v->join_refused_full = js.refused_full;
        v->join_budget_left = js.tokens;
    }
    v->stopping = n->stopping;
    v->draining = n->draining;
    if (core != NULL) {
        gsp_member m;
        v->self_alive = !n->stopping && gsp_core_get(core, &n->id, &m) == 0 &&
                        m.state == GSP_ALIVE;
        gsp_core_stats(core, &v->gossip);
        v->local_health = gsp_core_health(core);
        v->gossip_members = (uint32_t)gsp_core_count(
            core, 1 << GSP_ALIVE | 1 << GSP_SUSPECT | 1 << GSP_DEAD |
                      1 << GSP_LEFT);
    }
    if (cl != NULL) {
        const pmm_cnode *me = pmm_cluster_by_id(cl, &n->id);
        v->in_cluster = me != NULL;
        v->cid = me != NULL ? me->cid : 0;
        v->is_master = me != NULL && me->master;
        v->master_cid = cl->master_cid;
        v->epoch = cl->epoch;
        v->version = cl->version;
        v->config_synced = pmm_lc_config_synced(n->lc);
    }
    if (n->repl != NULL) {
        pst_info si;
        pmm_repl_info(n->repl, &si);
        v->has_db = true;
        v->db_in_sync = si.state == PST_IN_SYNC;
        snprintf(v->db_state, sizeof(v->db_state), "%s",
                 pst_state_name(si.state));
        snprintf(v->db_error, sizeof(v->db_error), "%s",
                 si.reason[0] ? si.reason : si.error);
        v->db_epoch = si.pos.epoch;
        v->db_seq = si.pos.seq;
        v->db_head_seq = si.pos.seq + si.lag;
        v->db_lag_seconds = si.head_ts_us > si.pos_ts_us
                                ? (double)(si.head_ts_us - si.pos_ts_us) / 1e6
                                : 0;
        v->db_applied = si.applied_total;
        v->db_captured = si.captured_total;
        v->db_frames_direct = si.served_direct;
        v->db_capturing = si.capturing;
        v->db_wal_retained = si.wal_retained;
        v->db_slot_safe = si.slot_safe;
        v->db_slot_repairs = si.slot_repairs;
        v->db_sync_need = si.sync_need;
        v->db_sync_have = si.sync_have;
        v->db_sync_waiting = si.sync_waiting;
        v->db_snapshots = si.snapshots;
        v->db_divergent = si.divergent_total;
    }
    if (build_rows(n, &acc) == 0) {
        for (size_t i = 0; i < acc.n; i++) {
            switch (acc.rows[i].state) {
            case 'A':
            case 'S':
                v->n_alive++;
                break;
            case '?':
                v->n_suspect++;
                break;
            case 'D':
                v->n_dead++;
                break;
            case 'L':
                v->n_left++;
                break;
            }
        }
        v->n_nodes = (uint32_t)acc.n;
    }
    free(acc.rows);
    if (n->http != NULL)
        pmm_http_get_stats(n->http, &v->http);
}

/* Ready as /readyz says it; why = the first failing check when not. */
static bool node_ready(node *n, char *why, size_t len)
{
    pmm_http_view v;
    pmm_http_check ch[PMM_HTTP_CHECKS_MAX];
    size_t k;

    memset(&v, 0, sizeof(v));
    http_view(n, &v);
    k = pmm_http_checks(&v, ch);
    for (size_t i = 0; i < k; i++)
        if (ch[i].readiness && ch[i].level != PMM_HTTP_OK) {
            if (why != NULL)
                snprintf(why, len, "%s: %s", ch[i].name, ch[i].why);
            return false;
        }
    if (why != NULL && len > 0)
        why[0] = '\0';
    return true;
}

/* Counters as a JSON object: {"name": value, ...} in this order. */
typedef struct jkv {
    const char *k;
    uint64_t v;
} jkv;

static json_t *kv_object(const jkv *kv, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < n; i++)
        json_object_set_new(o, kv[i].k, json_integer((json_int_t)kv[i].v));
    return o;
}
#define KV_OBJECT(a) kv_object((a), sizeof(a) / sizeof((a)[0]))

static json_t *gossip_json(node *n)
{
    gsp_core *core = node_core(n);
    gsp_stats st;
    gsp_uv_stats us;
    gsp_budget_stats bs;
    gsp_core_stats(core, &st);
    gsp_uv_get_stats(n->u, &us);
    gsp_budget_get(n->budget, &bs);
    const jkv kv[] = {
        {"udp_in", st.udp_in},
        {"udp_out", st.udp_out},
        {"drop_decrypt", st.drop_decrypt},
        {"drop_decode", st.drop_decode},
        {"drop_toobig", st.drop_toobig},
        {"drop_replay", st.drop_replay},
        {"probes", st.probes},
        {"suspicions", st.suspicions},
        {"refutations", st.refutations},
        {"health", gsp_core_health(core)},
        /* the TCP side and the memory budget */
        {"drop_misdirected", st.drop_misdirected},
        {"acks_ignored", st.acks_ignored},
        {"deaths_declared", st.deaths_declared},
        {"streams_in", st.streams_in},
        {"streams_out", st.streams_out},
        {"stream_failures", st.stream_failures},
        {"tcp_in_open", us.in_open},
        {"tcp_out_open", us.out_open},
        {"tcp_in_accepted", us.in_accepted},
        {"tcp_in_refused_addr", us.in_refused_addr},
        {"tcp_in_refused_full", us.in_refused_full},
        {"tcp_in_evicted", us.in_evicted},
        {"tcp_in_timeouts", us.in_timeouts},
        {"tcp_frames_too_big", us.frames_too_big},
        {"tcp_budget_refused", us.budget_refused},
        {"tcp_out_refused", us.out_refused},
        {"tcp_in_throttled", us.in_throttled},
        {"budget_limit", bs.limit},
        {"budget_used", bs.used},
        {"budget_peak", bs.peak},
        {"budget_refused", bs.refused},
    };
    return KV_OBJECT(kv);
}

static json_t *guard_json(node *n)
{
    pmm_api_stats as;
    pmm_thr_stats js;
    gsp_budget_stats bs;
    pmm_api_get_stats(n->api, &as);
    pmm_lc_join_stats(n->lc, &js);
    gsp_budget_get(n->budget, &bs);
    const jkv kv[] = {
        {"unauth_bytes", bs.used},
        {"unauth_peak", bs.peak},
        {"unauth_limit", bs.limit},
        {"unauth_refused", bs.refused},
        {"api_handshakes", as.tls.handshakes},
        {"api_handshakes_peak", as.tls.handshakes_peak},
        {"api_handshakes_evicted", as.tls.handshakes_evicted},
        {"api_handshake_timeouts", as.tls.handshake_timeouts},
        {"api_dropped", as.tls.dropped},
        {"api_node_streams", as.node_streams},
        {"api_node_streams_max", as.streams_max},
        {"api_joiners", as.joiners},
        {"api_refused_streams", as.refused_streams},
        {"api_refused_joiners", as.refused_joiners},
        {"join_wrong_passwords", js.failures},
        {"join_budget_left", js.tokens},
        {"join_groups", js.groups},
        {"join_refused_busy", js.refused_busy},
        {"join_refused_budget", js.refused_global},
        {"join_refused_full", js.refused_full},
    };
    return KV_OBJECT(kv);
}

static json_t *store_json(node *n)
{
    pst_info si;
    pmm_repl_info(n->repl, &si);
    const jkv snap[] = {
        {"rows", si.snap_rows},
        {"bytes", si.snap_bytes},
        {"est_rows", si.snap_est_rows},
        {"est_bytes", si.snap_est_bytes},
        {"tables", si.snap_tables},
        {"tables_done", si.snap_tables_done},
        {"elapsed_ms",
         si.snap_started_ms ? uv_now(&n->loop) - si.snap_started_ms : 0},
    };
    json_t *o = json_pack(
        "{s:o, s:o, s:o, s:b, s:I, s:I, s:{s:I, s:I, s:I},"
        " s:{s:o, s:b, s:I, s:I, s:I}, s:{s:I, s:I, s:b, s:I}}",
        "state", pmm_jstrz(pst_state_name(si.state)), "error", pmm_jstrz(si.error),
        "reason", pmm_jstrz(si.reason), "db_down", si.db_down, "lag",
        (json_int_t)si.lag, "sync_lag_max", (json_int_t)PST_SYNC_LAG_MAX,
        "kept", "backups", (json_int_t)si.kept_backups, "rows",
        (json_int_t)si.kept_rows, "divergence",
        (json_int_t)si.kept_divergence,
        "capture", "slot_status", pmm_jstrz(si.slot_status), "streaming",
        si.capturing, "wal_retained_bytes", (json_int_t)si.wal_retained,
        "slot_safe_bytes", (json_int_t)si.slot_safe, "slot_repairs",
        (json_int_t)si.slot_repairs,
        "sync", "need", (json_int_t)si.sync_need, "have",
        (json_int_t)si.sync_have, "active", si.sync_active, "waiting",
        (json_int_t)si.sync_waiting);
    if (o == NULL) return NULL;
    const jkv pos[] = {
        {"epoch", si.pos.epoch},
        {"seq", si.pos.seq},
        {"recv_seq", si.recv_seq},
        {"head_seq", si.head.seq},
        {"snapshots", si.snapshots},
        {"applied", si.applied_total},
        {"captured", si.captured_total},
        {"frames_direct", si.served_direct},
        {"divergent", si.divergent_total},
        {"tables", si.n_tables},
    };
    json_object_set_new(o, "loaded", json_boolean(si.loaded));
    json_object_set_new(o, "master", json_boolean(si.master));
    for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
        json_object_set_new(o, pos[i].k, json_integer((json_int_t)pos[i].v));
    json_object_set_new(o, "schema", pmm_jstrz(si.schema_digest));
    json_object_set_new(o, "snapshot", KV_OBJECT(snap));
    return o;
}

/* The status answer: the control socket's and the status port's /status,
 * one JSON object and a newline, '<', '>', '&' and '\'' escaped (see
 * pmm_json_put_safe). 0 or -errno. */
static int status_json(node *n, pmm_buf *reply)
{
    const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
    rows_acc acc;
    int rc = build_rows(n, &acc);

    if (rc != 0) {
        free(acc.rows);
        return rc;
    }
    json_t *o = json_pack("{s:b, s:o, s:s, s:I, s:I, s:o}", "ok", 1, "node",
                          pmm_jstrz(n->cfg.name), "id", n->id_hex, "generation",
                          (json_int_t)n->gen, "time", (json_int_t)acc.now,
                          "members", pmm_status_rows_json(acc.rows, acc.n));
    free(acc.rows);
    if (o == NULL) return -ENOMEM;
    if (cl != NULL) {
        char cid_hex[33];
        for (size_t i = 0; i < sizeof(cl->cluster_id); i++)
            snprintf(cid_hex + 2 * i, 3, "%02x", cl->cluster_id[i]);
        json_object_set_new(
            o, "cluster",
            json_pack("{s:s, s:I, s:I, s:I}", "cluster_id", cid_hex,
                      "epoch", (json_int_t)cl->epoch, "version",
                      (json_int_t)cl->version, "master_cid",
                      (json_int_t)cl->master_cid));
    }
    json_object_set_new(o, "gossip", gossip_json(n));
    if (n->lc != NULL) {
        json_object_set_new(o, "fingerprint",
                            pmm_jstrz(pmm_lc_fingerprint(n->lc)));
        json_object_set_new(o, "guard", guard_json(n));
    }
    if (n->files != NULL)
        json_object_set_new(o, "files", pmm_files_status(n->files));
    if (n->repl != NULL) json_object_set_new(o, "store", store_json(n));
    if (cl != NULL) {
        /* the panel's "Add" line: on the master only */
        const pmm_cnode *m = pmm_cluster_master(cl);
        if (m != NULL && memcmp(&m->node_id, &n->id, sizeof(n->id)) == 0) {
            char cmd[300];
            pmm_join_command(m, cmd, sizeof(cmd));
            json_object_set_new(o, "join_command", pmm_jstrz(cmd));
        }
    }
    json_object_set_new(o, "events", pmm_events_array(&n->events));
    json_object_set_new(o, "draining", json_boolean(n->draining));
    json_object_set_new(o, "ready", json_boolean(node_ready(n, NULL, 0)));
    rc = pmm_json_put_safe(reply, o);
    if (rc == 0) rc = pmm_buf_puts(reply, "\n");
    return rc ? rc : reply->err;
}

static int http_status_json(void *ud, pmm_buf *out)
{
    return status_json(ud, out);
}

/* Starts what is configured and not running. A port that cannot listen
 * (in use, address not there yet) does not stop the daemon: gossip and
 * the cluster go on, the error is logged once, and it is retried every
 * HTTP_RETRY_MS (a load balancer meanwhile sees the node as down). */
static void http_listen_all(node *n)
{
    const pmm_http_source src = {.ud = n, .view = http_view,
                                 .status_json = http_status_json,
                                 .access = &n->access};
    pmm_http_opts o;
    struct {
        pmm_http **h;
        bool *failed;
        uint16_t port;
        pmm_http_kind kind;
        const char *what;
    } l[2] = {
        {&n->http, &n->http_failed, n->cfg.status_port, PMM_HTTP_STATUS,
         "status port (HTTP)"},
        {&n->agent, &n->agent_failed, n->cfg.agent_port, PMM_HTTP_AGENT,
         "agent port (HAProxy agent-check)"},
    };
    bool missing = false;

    if (n->stopping)
        return;
    for (int i = 0; i < 2; i++) {
        struct sockaddr_storage ss;
        char err[160], ip[64];
        int rc;

        if (l[i].port == 0 || *l[i].h != NULL)
            continue;
        pmm_sockaddr_raw(&ss, n->cfg.status_bind.family, n->cfg.status_bind.ip,
                         l[i].port);
        gsp_addr_ip_str(&n->cfg.status_bind, ip, sizeof(ip));
        pmm_http_opts_default(&o);
        o.budget = n->budget;
        rc = pmm_http_start(l[i].h, &n->loop, (struct sockaddr *)&ss,
                            l[i].kind, &src, &o, err, sizeof(err));
        if (rc != 0) {
            *l[i].h = NULL;
            missing = true;
            pmm_log(*l[i].failed ? PMM_LOG_DEBUG : PMM_LOG_ERROR, "http",
                    "%s on %s%s%s:%u: %s (retrying every %d s)", l[i].what,
                    n->cfg.status_bind.family == 6 ? "[" : "", ip,
                    n->cfg.status_bind.family == 6 ? "]" : "", l[i].port,
                    err, HTTP_RETRY_MS / 1000);
            *l[i].failed = true;
            continue;
        }
        pmm_log(PMM_LOG_INFO, "http", "%s on %s%s%s:%u%s", l[i].what,
                n->cfg.status_bind.family == 6 ? "[" : "", ip,
                n->cfg.status_bind.family == 6 ? "]" : "", l[i].port,
                *l[i].failed ? " (at last)" : "");
        *l[i].failed = false;
    }
    if (!missing)
        uv_timer_stop(&n->http_retry_timer);
}

static void http_retry_cb(uv_timer_t *t)
{
    http_listen_all(t->data);
}

/* ---- draining ------------------------------------------------------------------------ */

/* Writes or removes data_dir/draining (thread pool). */
static void drain_work_cb(uv_work_t *w)
{
    node *n = w->data;
    char path[PMM_PATH_MAX + 16];
    int dfd;

    if (n->drain_writing) {
        char text[128];
        time_t now = time(NULL);
        struct tm tm;
        int len;
        gmtime_r(&now, &tm);
        len = snprintf(text, sizeof(text),
                       "drained with pmgcm drain at %04d-%02d-%02dT%02d:%02d:"
                       "%02dZ; pmgcm undrain removes this file\n",
                       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec);
        n->drain_rc = pmm_write_file_atomic(n->cfg.data_dir, DRAIN_FILE, text,
                                            (size_t)len, 0644);
        return;
    }
    snprintf(path, sizeof(path), "%s/%s", n->cfg.data_dir, DRAIN_FILE);
    if (unlink(path) != 0 && errno != ENOENT) {
        n->drain_rc = -errno;
        return;
    }
    n->drain_rc = 0;
    dfd = open(n->cfg.data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        n->drain_rc = -errno;
        return;
    }
    if (fsync(dfd) != 0)
        n->drain_rc = -errno;
    close(dfd);
}

static void drain_reply(node *n, drain_waiter *w, bool persisted, int rc)
{
    char msg[512], why[200];
    int o;

    if (w->want && w->changed)
        o = snprintf(msg, sizeof(msg),
                     "node drained: /readyz answers 503 and the agent port "
                     "says \"up drain\", so load balancers send no new "
                     "connections; it stays in the cluster (pmgcm undrain "
                     "ends it)");
    else if (w->want)
        o = snprintf(msg, sizeof(msg), "node was already draining");
    else if (w->changed && node_ready(n, why, sizeof(why)))
        o = snprintf(msg, sizeof(msg),
                     "node undrained: ready, load balancers send it traffic "
                     "again");
    else if (w->changed)
        o = snprintf(msg, sizeof(msg),
                     "node undrained, but not ready yet (%s)", why);
    else
        o = snprintf(msg, sizeof(msg), "node was not draining");
    if (!persisted && o > 0 && (size_t)o < sizeof(msg))
        snprintf(msg + o, sizeof(msg) - (size_t)o,
                 "; WARNING: %s %s/%s failed (%s): this holds only until "
                 "the daemon stops", w->want ? "writing" : "removing",
                 n->cfg.data_dir, DRAIN_FILE, strerror(-rc));
    pmm_ctl_reply_ok_with(w->req,
                          json_pack("{s:b, s:b, s:b, s:o}", "draining",
                                    w->want, "changed", w->changed,
                                    "persisted", persisted, "message",
                                    pmm_jstrz(msg)));
}

static void drain_start_work(node *n, bool want);

static void drain_after_cb(uv_work_t *w, int status)
{
    node *n = w->data;
    bool written = n->drain_writing;
    int rc = status != 0 ? status : n->drain_rc;
    drain_waiter **pp = &n->drain_waiters;

    n->drain_busy = false;
    if (rc == 0)
        n->drain_on_disk = written;
    else
        pmm_log(PMM_LOG_ERROR, "drain", "cannot %s %s/%s: %s",
                written ? "write" : "remove", n->cfg.data_dir, DRAIN_FILE,
                rc == UV_ECANCELED ? "cancelled" : strerror(-rc));
    while (*pp != NULL) {
        drain_waiter *dw = *pp;
        if (dw->want != written) {
            pp = &dw->next;
            continue;
        }
        *pp = dw->next;
        drain_reply(n, dw, rc == 0, rc);
        free(dw);
    }
    /* the state changed again while the file was being written */
    if (n->drain_waiters != NULL)
        drain_start_work(n, n->draining);
}

static void drain_start_work(node *n, bool want)
{
    int rc;

    n->drain_busy = true;
    n->drain_writing = want;
    n->drain_work.data = n;
    rc = uv_queue_work(&n->loop, &n->drain_work, drain_work_cb,
                       drain_after_cb);
    if (rc != 0) {
        n->drain_busy = false;
        n->drain_rc = rc;
        /* answer everybody: not persisted */
        while (n->drain_waiters != NULL) {
            drain_waiter *dw = n->drain_waiters;
            n->drain_waiters = dw->next;
            drain_reply(n, dw, false, rc);
            free(dw);
        }
    }
}

static void ctl_drain(node *n, pmm_ctl_req *req, bool want)
{
    drain_waiter *w;
    bool changed = n->draining != want;

    if (changed) {
        n->draining = want;
        pmm_log(PMM_LOG_INFO, "drain",
                want ? "draining: /readyz answers 503, the agent port says "
                       "\"up drain\" (pmgcm undrain ends it)"
                     : "undrained: taking traffic again when ready");
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        pmm_ctl_reply_error(req, "out of memory");
        return;
    }
    w->req = req;
    w->want = want;
    w->changed = changed;
    if (!changed && !n->drain_busy && n->drain_on_disk == want) {
        drain_reply(n, w, true, 0);
        free(w);
        return;
    }
    w->next = n->drain_waiters;
    n->drain_waiters = w;
    if (!n->drain_busy)
        drain_start_work(n, want);
}

/* At start: data_dir/draining from an earlier `pmgcm drain`. */
static void drain_load(node *n)
{
    char path[PMM_PATH_MAX + 16];

    snprintf(path, sizeof(path), "%s/%s", n->cfg.data_dir, DRAIN_FILE);
    if (access(path, F_OK) == 0) {
        n->draining = n->drain_on_disk = true;
        pmm_log(PMM_LOG_WARN, "drain",
                "%s exists: this node stays drained (readyz 503, agent "
                "\"up drain\") until `pmgcm undrain`", path);
    }
}

/* ---- control socket requests ------------------------------------------------------ */

/* ---- pmgcm backups: the data the store kept instead of destroying ---------------- */

/* text: the store's list, one object {"backups":[...],"divergence":N}
 * that PostgreSQL wrote (store/backup.c), read back here so that the
 * answer is written as every other one is. */
static void backups_list_done(void *ud, int rc, const char *text)
{
    pmm_ctl_req *req = ud;
    json_error_t je;
    json_t *members;

    if (rc != 0) {
        pmm_ctl_reply_error(req, "%s", text);
        return;
    }
    /* the store's list is one JSON object (written by PostgreSQL) */
    members = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (members == NULL)
        pmm_ctl_reply_error(req, "backups: the store's list is not JSON "
                            "(%s)", je.text);
    else
        pmm_ctl_reply_ok_with(req, members);
}

static void backups_clear_done(void *ud, int rc, const char *text)
{
    pmm_ctl_req *req = ud;

    if (rc != 0) {
        pmm_ctl_reply_error(req, "%s", text);
        return;
    }
    pmm_ctl_reply_ok_with(req, json_pack("{s:o}", "message",
                                         pmm_jstrz(text)));
}

/* {"cmd":"backups","sub":"list"|"clear","id":"ID"|"divergence"} */
static const struct backups_sub {
    const char *name;
    bool needs_id;
    pst_backups_fn done;
} backups_subs[] = {
    {"list", false, backups_list_done},
    {"clear", true, backups_clear_done},
};

static void ctl_backups(node *n, pmm_ctl_req *req, const pmm_json *args)
{
    const pmm_json *sj = pmm_json_get(args, "sub");
    const pmm_json *ij = pmm_json_get(args, "id");
    const char *sub = sj != NULL && sj->type == PMM_JSON_STRING ? sj->str
                                                                : "list";
    const struct backups_sub *bs = NULL;
    int rc;

    for (size_t i = 0; i < sizeof(backups_subs) / sizeof(backups_subs[0]); i++)
        if (strcmp(backups_subs[i].name, sub) == 0)
            bs = &backups_subs[i];
    if (bs == NULL) {
        pmm_ctl_reply_error(req, "backups: unknown subcommand (list, clear)");
        return;
    }
    if (bs->needs_id && (ij == NULL || ij->type != PMM_JSON_STRING)) {
        pmm_ctl_reply_error(req, "backups %s: which one (an id, or "
                            "divergence)", bs->name);
        return;
    }
    if (n->repl == NULL) {
        pmm_ctl_reply_error(req, "no replicated database on this node "
                            "(db_conninfo)");
        return;
    }
    rc = pmm_repl_backups(n->repl, bs->needs_id ? ij->str : NULL, bs->done,
                          req);
    if (rc == -EINVAL)
        pmm_ctl_reply_error(req, "backups %s: '%.40s' is neither an id nor "
                            "divergence", bs->name, ij->str);
    else if (rc == -EAGAIN)
        pmm_ctl_reply_error(req, "the database is not ready on this node");
    else if (rc != 0)
        pmm_ctl_reply_error(req, "backups: %s", strerror(-rc));
}

/* One handler per wire command of the shared table (membership.h,
 * pmm_ctl_cmds[]), indexed by its id: the request was validated against
 * the row's arguments before it gets here. */
typedef void (*dctl_fn)(node *n, pmm_ctl_req *req, const char *cmd,
                        const pmm_json *args);

static void dctl_ping(node *n, pmm_ctl_req *req, const char *cmd,
                      const pmm_json *args)
{
    (void)n, (void)cmd, (void)args;
    pmm_ctl_reply_ok(req);
}

static void dctl_drain(node *n, pmm_ctl_req *req, const char *cmd,
                       const pmm_json *args)
{
    (void)args;
    if (n->stopping)
        pmm_ctl_reply_error(req, "the daemon is shutting down");
    else
        ctl_drain(n, req, strcmp(cmd, "drain") == 0);
}

static void dctl_backups(node *n, pmm_ctl_req *req, const char *cmd,
                         const pmm_json *args)
{
    (void)cmd;
    if (n->stopping)
        pmm_ctl_reply_error(req, "the daemon is shutting down");
    else
        ctl_backups(n, req, args);
}

static void dctl_files(node *n, pmm_ctl_req *req, const char *cmd,
                       const pmm_json *args)
{
    const pmm_json *cj = pmm_json_get(args, "confirm");

    (void)cmd;
    if (n->stopping)
        pmm_ctl_reply_error(req, "the daemon is shutting down");
    else
        pmm_files_ctl_publish(n->files, req,
                              cj && cj->type == PMM_JSON_BOOL && cj->b);
}

/* the cluster lifecycle's commands (membership/lifecycle.c) */
static void dctl_lc(node *n, pmm_ctl_req *req, const char *cmd,
                    const pmm_json *args)
{
    if (n->lc == NULL || n->stopping)
        pmm_ctl_reply_error(req, "the daemon is not ready");
    else
        pmm_lc_ctl(n->lc, req, cmd, args);
}

static void dctl_status(node *n, pmm_ctl_req *req, const char *cmd,
                        const pmm_json *args)
{
    pmm_buf reply;
    int rc;

    (void)cmd, (void)args;
    pmm_buf_init(&reply, PMM_CTL_REPLY_MAX);
    rc = status_json(n, &reply);
    if (rc == -EAGAIN)
        pmm_ctl_reply_error(req, "gossip is not running yet");
    else if (rc == -ENOMEM)
        pmm_ctl_reply_error(req, "out of memory");
    else if (rc != 0)
        pmm_ctl_reply_error(req, "status answer: %s", strerror(-rc));
    else
        pmm_ctl_reply(req, reply.p, reply.len);
    pmm_buf_free(&reply);
}

static const dctl_fn ctl_handlers[PMM_CMD_COUNT] = {
    [PMM_CMD_STATUS] = dctl_status,
    [PMM_CMD_PING] = dctl_ping,
    [PMM_CMD_CREATE] = dctl_lc,
    [PMM_CMD_FINGERPRINT] = dctl_lc,
    [PMM_CMD_JOIN] = dctl_lc,
    [PMM_CMD_JOIN_CMD] = dctl_lc,
    [PMM_CMD_DELETE] = dctl_lc,
    [PMM_CMD_PROMOTE] = dctl_lc,
    [PMM_CMD_BACKUPS] = dctl_backups,
    [PMM_CMD_SYNC] = dctl_lc,
    [PMM_CMD_FILES] = dctl_files,
    [PMM_CMD_DRAIN] = dctl_drain,
    [PMM_CMD_UNDRAIN] = dctl_drain,
    [PMM_CMD_UPDATE_FP] = dctl_lc,
    [PMM_CMD_WAIT_SYNC] = dctl_wait_sync,
};

static void ctl_handler(void *ud, pmm_ctl_req *req, const char *cmd,
                        const pmm_json *args)
{
    const pmm_ctl_cmd *c = pmm_ctl_cmd_by_wire(cmd);

    if (c == NULL || ctl_handlers[c->id] == NULL) {
        pmm_ctl_reply_error(req, "unknown command");
        return;
    }
    ctl_handlers[c->id](ud, req, cmd, args);
}

/* Every wire command of the table has its handler here: checked at start
 * (a command added to the table without one stops the daemon in every
 * test that starts it). 0 or -ENOSYS with the command named in the log. */
static int ctl_handlers_complete(void)
{
    for (size_t i = 0; i < PMM_CMD_COUNT; i++)
        if (pmm_ctl_cmds[i].wire != NULL && ctl_handlers[i] == NULL) {
            pmm_log(PMM_LOG_ERROR, "ctl", "control command '%s' has no "
                    "handler in ctl_handlers[] (daemon/pmgclusterd.c)",
                    pmm_ctl_cmds[i].wire);
            return -ENOSYS;
        }
    return 0;
}

/* ---- shutdown ------------------------------------------------------------------- */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void node_close_all(node *n);

static void leave_timer_cb(uv_timer_t *t)
{
    node *n = t->data;
    gsp_core *core = node_core(n);

    if (core != NULL && gsp_core_pending_updates(core) > 0 &&
        uv_now(&n->loop) - n->leave_start < LEAVE_MAX_MS)
        return;
    pmm_log(PMM_LOG_INFO, "daemon", "left the cluster, shutting down");
    node_close_all(n);
}

static void begin_shutdown(node *n, const char *why)
{
    gsp_core *core = node_core(n);
    int rc;

    n->stopping = true;
    pmm_log(PMM_LOG_INFO, "daemon", "%s: leaving the cluster", why);
    rc = pmm_sd_notify("STOPPING=1");
    if (rc != 0)
        pmm_log(PMM_LOG_WARN, "daemon", "sd_notify STOPPING=1: %s",
                strerror(-rc));
    uv_timer_stop(&n->meta_timer);
    uv_timer_stop(&n->peers_timer);
    uv_timer_stop(&n->http_retry_timer);
    if (core == NULL) {
        node_close_all(n);
        return;
    }
    rc = gsp_core_leave(core, gsp_uv_now(n->u));
    if (rc != 0)
        pmm_log(PMM_LOG_WARN, "gossip", "leave: %s", gsp_strerror(rc));
    gsp_uv_kick(n->u);
    n->leave_start = uv_now(&n->loop);
    uv_timer_start(&n->leave_timer, leave_timer_cb, LEAVE_POLL_MS,
                   LEAVE_POLL_MS);
}

/* The bearer token of status_access / metrics_access = token: the first
 * line of path, which must not be readable by everyone, into out (cap >
 * PMM_STATUS_TOKEN_MAX). Blocking (a small file): at start, and on a
 * worker at a reload. 0, or -errno with the message in err. */
static int status_token_read(const char *path, char *out, size_t cap,
                             char *err, size_t errlen)
{
    char buf[PMM_STATUS_TOKEN_MAX + 8];
    struct stat st;
    size_t len = 0, i;
    int rc;

    if (cap <= PMM_STATUS_TOKEN_MAX)
        return pmm_errf(err, errlen, -EINVAL, "status_token_file %s: no "
                        "room", path);
    if (stat(path, &st) != 0) {
        rc = -errno;
        return pmm_errf(err, errlen, rc, "status_token_file %s: %s", path,
                        strerror(-rc));
    }
    if (!S_ISREG(st.st_mode))
        return pmm_errf(err, errlen, -EINVAL, "status_token_file %s is not "
                        "a regular file", path);
    if (st.st_mode & S_IROTH)
        return pmm_errf(err, errlen, -EPERM, "status_token_file %s is "
                        "readable by everyone (mode %04o): chmod o-r %s",
                        path, (unsigned)(st.st_mode & 07777), path);
    rc = pmm_read_small(path, buf, sizeof(buf), &len);
    if (rc == -EFBIG)
        return pmm_errf(err, errlen, -EINVAL, "status_token_file %s: the "
                        "token must be at most %d characters", path,
                        PMM_STATUS_TOKEN_MAX);
    if (rc != 0)
        return pmm_errf(err, errlen, rc, "status_token_file %s: %s", path,
                        strerror(-rc));
    len = strcspn(buf, "\r\n");
    buf[len] = '\0';
    for (i = 0; i < len; i++) {
        char c = buf[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || strchr("._~+/=-", c) != NULL))
            break;
    }
    if (len < PMM_STATUS_TOKEN_MIN || len > PMM_STATUS_TOKEN_MAX ||
        i < len) {
        memset(buf, 0, sizeof(buf));
        return pmm_errf(err, errlen, -EINVAL, "status_token_file %s: the "
                        "first line must be the token: %d to %d characters "
                        "of A-Z a-z 0-9 . _ ~ + / = - (e.g. openssl rand "
                        "-hex 24)", path, PMM_STATUS_TOKEN_MIN,
                        PMM_STATUS_TOKEN_MAX);
    }
    memcpy(out, buf, len + 1);
    memset(buf, 0, sizeof(buf));
    return 0;
}

static bool wants_token(const pmm_config *c)
{
    return c->status_access == PMM_ACCESS_TOKEN ||
           c->metrics_access == PMM_ACCESS_TOKEN;
}

/* who may read /status and /metrics, from the config and the token */
static void access_set(node *n)
{
    n->access.status = n->cfg.status_access;
    n->access.metrics = n->cfg.metrics_access;
    n->access.token = wants_token(&n->cfg) ? n->status_token : NULL;
}

static int load_status_token(node *n)
{
    char err[PMM_PATH_MAX + 200];
    int rc;

    memset(n->status_token, 0, sizeof(n->status_token));
    if (wants_token(&n->cfg)) {
        rc = status_token_read(n->cfg.status_token_file, n->status_token,
                               sizeof(n->status_token), err, sizeof(err));
        if (rc != 0) {
            pmm_log(PMM_LOG_ERROR, "http", "%s", err);
            return rc;
        }
    }
    access_set(n);
    return 0;
}

/* ---- reload (SIGHUP) ------------------------------------------------------------
 * The file is read and parsed on a worker (bounded: PMM_CONF_FILE_MAX),
 * with the status token when token access is asked for. Back on the loop
 * the keys the table marks live are applied at once; a changed key that
 * needs a restart is named in the log and keeps its running value; a file
 * that does not parse (or a token that cannot be read) changes nothing.
 * systemd hears RELOADING=1 at the start and READY=1 at the end. */
typedef struct reload_job {
    uv_work_t work;
    node *n;
    pmm_config cfg;                          /* what the file says */
    int rc;
    char err[768];
    char token[PMM_STATUS_TOKEN_MAX + 1];    /* when cfg wants one */
} reload_job;

static void reload_work_cb(uv_work_t *w)
{
    reload_job *j = w->data;

    j->rc = pmm_config_load(&j->cfg, j->n->config_path, j->err,
                            sizeof(j->err));
    if (j->rc == 0 && wants_token(&j->cfg))
        j->rc = status_token_read(j->cfg.status_token_file, j->token,
                                  sizeof(j->token), j->err, sizeof(j->err));
}

/* "name, name (old -> new), ..." of the keys in mask into buf */
static void keys_list(char *buf, size_t len, uint64_t mask,
                      const pmm_config *old, const pmm_config *now)
{
    size_t nk, off = 0;
    const pmm_conf_key *t = pmm_config_keys(&nk);

    buf[0] = '\0';
    for (size_t i = 0; i < nk && off < len; i++) {
        char a[80], b[80];
        if (!((mask >> i) & 1))
            continue;
        if (pmm_config_value_str(old, &t[i], a, sizeof(a)) == 0 &&
            pmm_config_value_str(now, &t[i], b, sizeof(b)) == 0)
            off += (size_t)snprintf(buf + off, len - off, "%s%s (%s -> %s)",
                                    off ? ", " : "", t[i].name, a, b);
        else
            off += (size_t)snprintf(buf + off, len - off, "%s%s",
                                    off ? ", " : "", t[i].name);
    }
}

static void reload_start(node *n);

static void reload_notify_ready(node *n, const char *how)
{
    char msg[160];
    int rc;

    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=node %s, %s", n->cfg.name,
             how);
    rc = pmm_sd_notify(msg);
    if (rc != 0)
        pmm_log(PMM_LOG_WARN, "daemon", "sd_notify READY=1: %s",
                strerror(-rc));
}

static void reload_after_cb(uv_work_t *w, int status)
{
    reload_job *j = w->data;
    node *n = j->n;
    pmm_config old;
    uint64_t changed, live = 0;
    size_t nk;
    const pmm_conf_key *t = pmm_config_keys(&nk);
    char list[1024];

    n->reload = NULL;
    if (n->stopping || status != 0) {
        memset(j->token, 0, sizeof(j->token));
        free(j);
        return;
    }
    if (j->rc != 0) {
        pmm_log(PMM_LOG_ERROR, "config", "reload: %s; still running with "
                "the previous configuration", j->err);
        reload_notify_ready(n, "reload failed (see the log)");
        goto done;
    }
    old = n->cfg;
    changed = pmm_config_apply_live(&n->cfg, &j->cfg);
    for (size_t i = 0; i < nk; i++)
        if (t[i].flags & PMM_CONF_LIVE)
            live |= UINT64_C(1) << i;
    /* what the live keys drive */
    if (n->cfg.log_level != old.log_level)
        pmm_log_set_level(n->cfg.log_level);
    if (n->cfg.log_format != old.log_format)
        pmm_log_set_format(n->cfg.log_format);
    if (wants_token(&n->cfg) &&
        strcmp(j->token, n->status_token) != 0) {
        /* the same path may hold a new token: it counts as a change */
        memcpy(n->status_token, j->token, sizeof(n->status_token));
        pmm_log(PMM_LOG_INFO, "config", "reload: the status token from %s "
                "is in use", n->cfg.status_token_file);
    }
    if (!wants_token(&n->cfg))
        memset(n->status_token, 0, sizeof(n->status_token));
    access_set(n);
    if (n->cfg.meta_interval_ms != old.meta_interval_ms)
        uv_timer_start(&n->meta_timer, meta_timer_cb, n->cfg.meta_interval_ms,
                       n->cfg.meta_interval_ms);
    /* files_reload: files/ reads it from n->cfg at every run */
    if (changed & live) {
        keys_list(list, sizeof(list), changed & live, &old, &n->cfg);
        pmm_log(PMM_LOG_INFO, "config", "reload: applied %s", list);
    }
    if (changed & ~live) {
        keys_list(list, sizeof(list), changed & ~live, &n->cfg, &j->cfg);
        pmm_log(PMM_LOG_WARN, "config", "reload: %s changed in %s: %s a "
                "restart (systemctl restart pmgclusterd); running with the "
                "previous value%s until then", list, n->config_path,
                (changed & ~live) & ((changed & ~live) - 1) ? "they need"
                                                           : "it needs",
                (changed & ~live) & ((changed & ~live) - 1) ? "s" : "");
    }
    if (changed == 0)
        pmm_log(PMM_LOG_INFO, "config", "reload: %s: no change",
                n->config_path);
    reload_notify_ready(n, changed & ~live ? "reloaded; some changes need "
                                             "a restart"
                                           : "reloaded");
done:
    memset(j->token, 0, sizeof(j->token));
    free(j);
    if (n->reload_again) {
        n->reload_again = false;
        reload_start(n);
    }
}

static void reload_start(node *n)
{
    reload_job *j;
    struct timespec ts;
    char msg[128];
    int rc;

    if (n->stopping)
        return;
    if (n->reload != NULL) {
        n->reload_again = true;
        pmm_log(PMM_LOG_INFO, "config", "SIGHUP: a reload is under way; "
                "another one follows it");
        return;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        pmm_log(PMM_LOG_ERROR, "config", "reload: out of memory; still "
                "running with the previous configuration");
        return;
    }
    j->n = n;
    j->work.data = j;
    /* systemd 253+ wants the time with RELOADING=1 (older ones ignore
     * it); READY=1 ends the reload */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu\n"
             "STATUS=reloading %s",
             (unsigned long long)ts.tv_sec * 1000000ull +
                 (unsigned long long)ts.tv_nsec / 1000ull,
             "the configuration");
    rc = pmm_sd_notify(msg);
    if (rc != 0)
        pmm_log(PMM_LOG_WARN, "daemon", "sd_notify RELOADING=1: %s",
                strerror(-rc));
    pmm_log(PMM_LOG_INFO, "config", "SIGHUP: reloading %s", n->config_path);
    rc = uv_queue_work(&n->loop, &j->work, reload_work_cb, reload_after_cb);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "config", "reload: %s; still running with "
                "the previous configuration", uv_strerror(rc));
        free(j);
        reload_notify_ready(n, "reload failed (see the log)");
        return;
    }
    n->reload = j;
}

static void signal_cb(uv_signal_t *s, int signum)
{
    node *n = s->data;

    if (signum == SIGHUP) {
        if (n->stopping)
            pmm_log(PMM_LOG_INFO, "config", "SIGHUP ignored: shutting down");
        else
            reload_start(n);
        return;
    }
    if (n->stopping) {
        pmm_log(PMM_LOG_INFO, "daemon", "%s again: exiting now",
                strsignal(signum));
        node_close_all(n);
        return;
    }
    begin_shutdown(n, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- startup ------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pmgclusterd --config FILE [--foreground]\n"
            "       pmgclusterd --check-config FILE\n"
            "       pmgclusterd --version | --help\n"
            "\n"
            "Runs the pmgcm cluster daemon (gossip membership, cluster\n"
            "config, node status, control socket for `pmgcm`, status port\n"
            "and HAProxy agent port). Logs go to stderr. It always runs in\n"
            "the foreground (use systemd to supervise it). See\n"
            "pmgclusterd(8). Exits 78 when the configuration is bad.\n"
            "SIGHUP reloads FILE: some keys change live, the log names\n"
            "the ones that need a restart.\n"
            "\n"
            "  -c, --config FILE   configuration file (pmgclusterd(8))\n"
            "  -t, --check-config FILE\n"
            "                      check FILE and exit: 0 if the daemon would\n"
            "                      start with it, else 1 and what is wrong\n"
            "  -f, --foreground    accepted for compatibility\n"
            "  -V, --version       print the version and exit\n"
            "  -h, --help          print this help and exit\n");
}

static bool addr_in(const gsp_addr *set, size_t n, const gsp_addr *a)
{
    for (size_t i = 0; i < n; i++)
        if (gsp_addr_eq(&set[i], a))
            return true;
    return false;
}

/* data_dir holds the cluster's keys (keyring, TLS key, the join
 * password's hash): nobody but its owner may look inside. An existing
 * directory with a wider mode is made 0700; if that is not possible the
 * daemon refuses to start. */
static int data_dir_private(const char *dir)
{
    struct stat st;

    if (lstat(dir, &st) != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "data_dir %s: %s", dir,
                strerror(errno));
        return -errno;
    }
    if (!S_ISDIR(st.st_mode)) {
        pmm_log(PMM_LOG_ERROR, "daemon", "data_dir %s is not a directory "
                "(a symlink is not accepted either)", dir);
        return -ENOTDIR;
    }
    if ((st.st_mode & 077) == 0)
        return 0;
    if (chmod(dir, 0700) != 0) {
        int e = errno;
        pmm_log(PMM_LOG_ERROR, "daemon", "data_dir %s has mode %04o (other "
                "users can read the cluster's keys in it) and cannot be made "
                "0700: %s; run: chmod 700 %s", dir,
                (unsigned)(st.st_mode & 07777), strerror(e), dir);
        return -e;
    }
    pmm_log(PMM_LOG_WARN, "daemon", "data_dir %s had mode %04o: made 0700 "
            "(it holds the cluster's keys)", dir,
            (unsigned)(st.st_mode & 07777));
    return 0;
}

/* ---- startup and shutdown: named stages ------------------------------------------ */

/* one memory budget for everything unauthenticated; who may read the
 * status port */
static int stage_limits(node *n)
{
    n->budget = gsp_budget_new(n->cfg.unauth_budget_bytes);
    if (n->budget == NULL) {
        pmm_log(PMM_LOG_ERROR, "daemon", "cannot create the memory budget");
        return -ENOMEM;
    }
    return load_status_token(n);
}

/* the gossip keyring: key_file, or a private random key until create or
 * join brings the cluster's keyring */
static int stage_keyring(node *n)
{
    int rc, bad_line = 0;

    n->kr = gsp_keyring_new(n->cfg.label);
    if (n->kr == NULL) {
        pmm_log(PMM_LOG_ERROR, "daemon", "cannot create keyring");
        return -ENOMEM;
    }
    if (n->cfg.key_file[0] == '\0') {
        uint8_t k[GSP_KEY_LEN];
        rc = gsp_random(k, sizeof(k));
        if (rc == 0)
            rc = gsp_keyring_add(n->kr, k);
        memset(k, 0, sizeof(k));
        if (rc != 0)
            pmm_log(PMM_LOG_ERROR, "daemon", "cannot make a gossip key: %s",
                    gsp_strerror(rc));
        return rc;
    }
    rc = gsp_keyring_load_file(n->kr, n->cfg.key_file, &bad_line);
    if (rc == -EINVAL && bad_line > 0) {
        pmm_log(PMM_LOG_ERROR, "daemon",
                "key file %s, line %d: not a key (expected 64 hex or 44 "
                "base64 characters)", n->cfg.key_file, bad_line);
        return rc;
    }
    if (rc == -ENOSPC) {
        pmm_log(PMM_LOG_ERROR, "daemon", "key file %s: more than %d keys",
                n->cfg.key_file, GSP_KEYRING_MAX);
        return rc;
    }
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "key file %s: %s", n->cfg.key_file,
                gsp_strerror(rc));
        return rc;
    }
    if (gsp_keyring_count(n->kr) == 0) {
        pmm_log(PMM_LOG_ERROR, "daemon",
                "key file %s: no key in it (create one with `pmgcm keygen`)",
                n->cfg.key_file);
        return -ENOKEY;
    }
    return 0;
}

/* data_dir (private, locked), the node id, the generation; the peers to
 * join: remembered ones and configured ones, never ourselves */
static int stage_identity(node *n)
{
    gsp_addr *peers = n->join_peers;
    size_t n_file = 0, bad = 0;
    char err[512], a1[64], a2[64];
    bool created = false;
    int rc;

    rc = pmm_mkdir_p(n->cfg.data_dir, 0700);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "data_dir %s: %s", n->cfg.data_dir,
                strerror(-rc));
        return rc;
    }
    rc = data_dir_private(n->cfg.data_dir);
    if (rc != 0)
        return rc;
    rc = pmm_state_lock(n->cfg.data_dir, &n->lock_fd, err, sizeof(err));
    if (rc == 0)
        rc = pmm_state_node_id(n->cfg.data_dir, &n->id, &created, err,
                               sizeof(err));
    if (rc == 0)
        rc = pmm_state_bump_generation(n->cfg.data_dir, &n->gen, err,
                                       sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "state", "%s", err);
        return rc;
    }
    gsp_id_str(&n->id, n->id_hex, sizeof(n->id_hex));
    rc = pmm_state_read_peers(n->cfg.data_dir, peers, PMM_STATE_PEERS_MAX,
                              &n_file, &bad);
    if (rc != 0)
        pmm_log(PMM_LOG_WARN, "state", "%s/peers: %s (ignored)",
                n->cfg.data_dir, strerror(-rc));
    if (bad > 0)
        pmm_log(PMM_LOG_WARN, "state", "%s/peers: %zu bad line(s) ignored",
                n->cfg.data_dir, bad);
    memcpy(n->peers_saved, peers, n_file * sizeof(gsp_addr));
    n->n_saved = n_file;
    qsort(n->peers_saved, n->n_saved, sizeof(gsp_addr), addr_cmp);
    n->n_join_peers = n_file;
    for (size_t i = 0; i < n->cfg.n_peers; i++)
        if (!addr_in(peers, n->n_join_peers, &n->cfg.peers[i]))
            peers[n->n_join_peers++] = n->cfg.peers[i];
    /* never join ourselves */
    for (size_t i = 0; i < n->n_join_peers;) {
        if (gsp_addr_eq(&peers[i], &n->cfg.advertise) ||
            gsp_addr_eq(&peers[i], &n->cfg.bind))
            peers[i] = peers[--n->n_join_peers];
        else
            i++;
    }

    pmm_log(PMM_LOG_INFO, "daemon",
            "pmgclusterd %s (protocol %u..%u): node %s id %s%s generation "
            "%llu, bind %s, advertise %s", pmm_build_version, n->proto_min,
            n->proto_max, n->cfg.name, n->id_hex,
            created ? " (new)" : "", (unsigned long long)n->gen,
            gsp_addr_str(&n->cfg.bind, a1, sizeof(a1)),
            gsp_addr_str(&n->cfg.advertise, a2, sizeof(a2)));
    return 0;
}

/* the first metadata sample: blocking is fine before the loop runs */
static int stage_metadata(node *n)
{
    int rc = pmm_sysinfo_sample(&n->sample);
    if (rc != 0) {
        pmm_log(PMM_LOG_WARN, "meta", "cannot sample host status: %s",
                strerror(-rc));
        n->meta_failing = true;
    } else {
        meta_from_sample(n);
    }
    return 0;
}

static void stop_metadata(node *n)
{
    if (n->meta_busy)
        uv_cancel((uv_req_t *)&n->meta_work);
    /* a peers write in flight is left to finish: it is atomic anyway */
}

/* the gossip core and its libuv adapter on the bind address */
static int stage_gossip(node *n)
{
    gsp_callbacks cb = {.ud = n, .member_changed = member_changed,
                        .user_msg = user_msg};
    gsp_core *core = NULL;
    uint64_t seed;
    char a1[64];
    int rc;

    rc = gsp_random(&seed, sizeof(seed));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "gsp_random: %s", gsp_strerror(rc));
        return rc;
    }
    uv_update_time(&n->loop);
    rc = gsp_core_new(&core, &n->cfg.gossip, &n->id, n->cfg.name,
                      &n->cfg.advertise, n->gen, n->kr, seed,
                      uv_now(&n->loop), &cb);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "gossip", "cannot create the gossip core: %s",
                gsp_strerror(rc));
        return rc;
    }
    if (n->meta_len > 0) {
        rc = gsp_core_set_meta(core, uv_now(&n->loop), n->meta_buf,
                               n->meta_len);
        if (rc != 0)
            pmm_log(PMM_LOG_WARN, "meta", "gsp_core_set_meta: %s",
                    gsp_strerror(rc));
    }
    rc = gsp_uv_start(&n->u, &n->loop, core, &n->cfg.bind);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "gossip", "cannot listen on %s: %s",
                gsp_addr_str(&n->cfg.bind, a1, sizeof(a1)), gsp_strerror(rc));
        n->u = NULL;
        gsp_core_free(core);
        return rc;
    }
    /* gossip TCP frames take their buffers from the same budget */
    gsp_uv_set_budget(n->u, n->budget);
    return 0;
}

static void stop_gossip(node *n)
{
    if (n->u != NULL) {
        gsp_uv_close(n->u);
        n->u = NULL;
    }
}

static int stage_ctl(node *n)
{
    char err[512];
    int rc = ctl_handlers_complete();

    if (rc != 0)
        return rc;
    rc = pmm_ctl_start(&n->ctl, &n->loop, n->cfg.control_socket,
                       ctl_handler, n, err, sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "ctl", "%s", err);
        n->ctl = NULL;
        return rc;
    }
    pmm_log(PMM_LOG_INFO, "ctl", "listening on %s", n->cfg.control_socket);
    return 0;
}

static void stop_ctl(node *n)
{
    if (n->ctl != NULL) {
        pmm_ctl_close(n->ctl);
        n->ctl = NULL;
    }
}

/* join: persisted peers + configured peers; the same list is kept as seeds
 * so the core re-contacts them while they are not alive */
static int stage_join(node *n)
{
    gsp_core *core = gsp_uv_core(n->u);
    const gsp_addr *peers = n->join_peers;
    size_t n_peers = n->n_join_peers;
    char a1[64];
    int rc;

    if (n_peers > 0) {
        pmm_buf b;
        pmm_buf_init(&b, 4096);
        for (size_t i = 0; i < n_peers; i++)
            pmm_buf_printf(&b, "%s%s", i ? " " : "",
                           gsp_addr_str(&peers[i], a1, sizeof(a1)));
        pmm_log(PMM_LOG_INFO, "gossip", "joining %zu peer(s): %s", n_peers,
                b.err == 0 && b.p != NULL ? b.p : "(too many to list)");
        pmm_buf_free(&b);
        rc = gsp_core_join(core, gsp_uv_now(n->u), peers, n_peers);
        if (rc != 0)
            pmm_log(PMM_LOG_WARN, "gossip", "join: %s", gsp_strerror(rc));
    } else {
        pmm_log(PMM_LOG_INFO, "gossip",
                "no peers configured or remembered: waiting to be contacted");
    }
    rc = gsp_core_set_seeds(core, peers, n_peers);
    if (rc != 0)
        pmm_log(PMM_LOG_WARN, "gossip", "set_seeds: %s", gsp_strerror(rc));
    gsp_uv_kick(n->u);
    return 0;
}

/* the node API (TLS): this node's identity in data_dir/tls, the server on
 * the bind address */
static int stage_api(node *n)
{
    char tls_dir[PMM_PATH_MAX + 8], ip[48], err[512];
    snprintf(tls_dir, sizeof(tls_dir), "%s/tls", n->cfg.data_dir);
    gsp_addr_ip_str(&n->cfg.bind, ip, sizeof(ip));
    pmm_api_env aenv = {.loop = &n->loop, .tls_dir = tls_dir,
                        .cn = n->cfg.name, .ip = ip,
                        .port = n->cfg.api_port, .budget = n->budget};
    int rc = pmm_api_start(&n->api, &aenv, err, sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "cluster", "%s", err);
        n->api = NULL;
        return rc;
    }
    pmm_api_set_proto(n->api, n->proto_min, n->proto_max);
    return 0;
}

/* after everything that serves or calls there */
static void stop_api(node *n)
{
    pmm_api_close(n->api);
    n->api = NULL;
}

/* cluster lifecycle: config, keyring, seeds; its node API requests */
static int stage_cluster(node *n)
{
    char err[512];
    pmm_lc_env env = {.loop = &n->loop, .cfg = &n->cfg,
                      .api_port = n->cfg.api_port, .node_id = n->id,
                      .kr = n->kr, .u = n->u, .api = n->api,
                      .changed = cluster_changed,
                      .schema = lc_schema, .schema_diff = lc_schema_diff,
                      .promote_check = lc_promote_check,
                      .note = lc_note, .ud = n};
    int rc = pmm_lc_start(&n->lc, &env, err, sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "cluster", "%s", err);
        n->lc = NULL;
        return rc;
    }
    pmm_log(PMM_LOG_INFO, "cluster", "node API (TLS) on port %u, "
            "fingerprint %s", n->cfg.api_port, pmm_lc_fingerprint(n->lc));
    cluster_changed(n);
    return 0;
}

static void stop_cluster(node *n)
{
    if (n->lc != NULL) {
        pmm_lc_close(n->lc);
        n->lc = NULL;
    }
}

/* the replicated database (db_conninfo): needs the lifecycle */
static int stage_store(node *n)
{
    char err[512];
    pmm_repl_env renv = {.loop = &n->loop, .cfg = &n->cfg, .lc = n->lc,
                         .api = n->api, .u = n->u,
                         .changed = store_changed, .ud = n};
    int rc = pmm_repl_start(&n->repl, &renv, err, sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "store", "%s", err);
        return rc;
    }
    if (n->repl != NULL)
        pmm_log(PMM_LOG_INFO, "store", "replicating schemas \"%s\"%s%s",
                n->cfg.db_schemas, n->cfg.db_exclude[0] ? " except " : "",
                n->cfg.db_exclude);
    return 0;
}

static void stop_store(node *n)
{
    waits_answer(n, true); /* before the control socket closes */
    pmm_repl_close(n->repl); /* before lc and the node API */
    n->repl = NULL;
    close_handle((uv_handle_t *)&n->db_meta_timer);
    close_handle((uv_handle_t *)&n->wait_timer);
}

/* mirrored config files (files_dir): needs the lifecycle */
static int stage_files(node *n)
{
    char err[512];
    pmm_files_env fenv = {.loop = &n->loop, .cfg = &n->cfg, .lc = n->lc,
                          .api = n->api, .node_id = n->id,
                          .changed = store_changed, .ud = n};
    int rc = pmm_files_start(&n->files, &fenv, err, sizeof(err));
    if (rc != 0)
        pmm_log(PMM_LOG_ERROR, "files", "%s", err);
    return rc;
}

static void stop_files(node *n)
{
    pmm_files_close(n->files); /* before lc and the node API */
    n->files = NULL;
}

/* status and agent ports: after the lifecycle, whose state they show */
static int stage_ports(node *n)
{
    drain_load(n);
    http_listen_all(n);
    if (n->http_failed || n->agent_failed)
        uv_timer_start(&n->http_retry_timer, http_retry_cb, HTTP_RETRY_MS,
                       HTTP_RETRY_MS);
    return 0;
}

static void stop_ports(node *n)
{
    close_handle((uv_handle_t *)&n->http_retry_timer);
    if (n->http != NULL) {
        pmm_http_close(n->http);
        n->http = NULL;
    }
    if (n->agent != NULL) {
        pmm_http_close(n->agent);
        n->agent = NULL;
    }
}

/* The signals, first: the control socket answers before the later
 * stages are done (an identity is made, the store opens), and a SIGTERM
 * meanwhile used to end the daemon by the default action (exit 143, no
 * leave). Caught from the start, it is handled once the loop runs, when
 * every stage is up. (Closed by stop_run.) */
static int stage_signals(node *n)
{
    uv_signal_start(&n->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&n->sig_int, signal_cb, SIGINT);
    uv_signal_start(&n->sig_hup, signal_cb, SIGHUP);
    return 0;
}

/* the metadata timer */
static int stage_run(node *n)
{
    uv_timer_start(&n->meta_timer, meta_timer_cb, n->cfg.meta_interval_ms,
                   n->cfg.meta_interval_ms);
    return 0;
}

static void stop_run(node *n)
{
    close_handle((uv_handle_t *)&n->sig_term);
    close_handle((uv_handle_t *)&n->sig_int);
    close_handle((uv_handle_t *)&n->sig_hup);
    close_handle((uv_handle_t *)&n->meta_timer);
    close_handle((uv_handle_t *)&n->peers_timer);
    close_handle((uv_handle_t *)&n->leave_timer);
}

/* Started in this order; stopped in the reverse one (every stop, also of a
 * stage that never started: each stop is harmless then). */
typedef struct stage {
    const char *name;
    int (*start)(node *n);
    void (*stop)(node *n);
} stage;

static const stage stages[] = {
    {"signals", stage_signals, NULL},
    {"limits", stage_limits, NULL},
    {"keyring", stage_keyring, NULL},
    {"identity", stage_identity, NULL},
    {"metadata", stage_metadata, stop_metadata},
    {"gossip", stage_gossip, stop_gossip},
    {"control socket", stage_ctl, stop_ctl},
    {"join", stage_join, NULL},
    {"node API", stage_api, stop_api},
    {"cluster", stage_cluster, stop_cluster},
    {"store", stage_store, stop_store},
    {"files", stage_files, stop_files},
    {"ports", stage_ports, stop_ports},
    {"run", stage_run, stop_run},
};
#define N_STAGES (sizeof(stages) / sizeof(stages[0]))

static int node_start(node *n)
{
    for (size_t i = 0; i < N_STAGES; i++) {
        int rc = stages[i].start(n);
        if (rc != 0) {
            pmm_log(PMM_LOG_DEBUG, "daemon", "startup stopped at stage %s",
                    stages[i].name);
            return rc;
        }
    }
    return 0;
}

/* Closes every handle; the loop then runs dry. */
static void node_close_all(node *n)
{
    if (n->closed)
        return;
    n->closed = true;
    n->stopping = true;
    for (size_t i = N_STAGES; i-- > 0;)
        if (stages[i].stop != NULL)
            stages[i].stop(n);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", required_argument, NULL, 't'},
        {"foreground", no_argument, NULL, 'f'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *check = NULL;
    char err[768];
    node *n;
    int c, rc, exit_code = 0;

    /* Blocks of 64 KiB and more are mapped and unmapped on their own
     * (glibc would otherwise raise this threshold as they are freed and
     * serve them from the heap): what a dropped connection held goes back
     * to the kernel, and a growing frame buffer is moved by mremap, not
     * copied, so the RSS follows the memory budget for unauthenticated
     * input instead of the heap's high-water mark. */
    mallopt(M_MMAP_THRESHOLD, 64 * 1024);

    while ((c = getopt_long(argc, argv, "c:t:fVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 't':
            check = optarg;
            break;
        case 'f':
            break;
        case 'V':
            printf("pmgclusterd %s (protocol %u..%u)\n", pmm_build_version,
                   PMM_PROTO_MIN, PMM_PROTO_MAX);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "pmgclusterd: unexpected argument '%s'\n",
                argv[optind]);
        usage(stderr);
        return 2;
    }
    if (check != NULL) {
        pmm_config cc;
        if (config != NULL) {
            fprintf(stderr, "pmgclusterd: --check-config and --config "
                            "exclude each other\n");
            return 2;
        }
        rc = pmm_config_load(&cc, check, err, sizeof(err));
        if (rc != 0) {
            fprintf(stderr, "pmgclusterd: %s\n", err);
            return 1;
        }
        printf("%s: ok\n", check);
        return 0;
    }
    if (config == NULL) {
        fprintf(stderr, "pmgclusterd: --config FILE is required\n");
        usage(stderr);
        return 2;
    }

    n = calloc(1, sizeof(*n));
    if (n == NULL) {
        fprintf(stderr, "pmgclusterd: out of memory\n");
        return 1;
    }
    n->lock_fd = -1;
    /* An idle daemon stays lean: libuv's thread pool (sampling /proc,
     * writing files, hashing a join password) needs no more than two
     * threads here, and every thread costs a stack and a malloc arena
     * (the operator's UV_THREADPOOL_SIZE wins) */
    setenv("UV_THREADPOOL_SIZE", "2", 0);
    mallopt(M_ARENA_MAX, 2);
    n->config_path = config;
    rc = pmm_config_load(&n->cfg, config, err, sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "config", "%s", err);
        free(n);
        return EXIT_CONFIG;
    }
    pmm_log_set_level(n->cfg.log_level);
    pmm_log_set_format(n->cfg.log_format);
    signal(SIGPIPE, SIG_IGN);

    rc = uv_loop_init(&n->loop);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "uv_loop_init: %s", uv_strerror(rc));
        free(n);
        return 1;
    }
    uv_signal_init(&n->loop, &n->sig_term);
    uv_signal_init(&n->loop, &n->sig_int);
    uv_signal_init(&n->loop, &n->sig_hup);
    uv_timer_init(&n->loop, &n->meta_timer);
    uv_timer_init(&n->loop, &n->db_meta_timer);
    n->db_meta_timer.data = n;
    uv_timer_init(&n->loop, &n->wait_timer);
    n->wait_timer.data = n;
    uv_timer_init(&n->loop, &n->peers_timer);
    uv_timer_init(&n->loop, &n->leave_timer);
    uv_timer_init(&n->loop, &n->http_retry_timer);
    n->sig_term.data = n->sig_int.data = n->sig_hup.data = n;
    n->meta_timer.data = n->peers_timer.data = n->leave_timer.data = n;
    n->http_retry_timer.data = n;
    n->started_unix = (int64_t)time(NULL);
    n->proto_min = PMM_PROTO_MIN;
    n->proto_max = PMM_PROTO_MAX;
    {
        /* for tests only: speak another protocol range */
        const char *tp = getenv("PMGCLUSTERD_TEST_PROTO");
        unsigned lo, hi;
        char extra;
        if (tp != NULL && *tp) {
            if (sscanf(tp, "%u-%u%c", &lo, &hi, &extra) != 2 || lo == 0 ||
                hi < lo || hi > 1000) {
                pmm_log(PMM_LOG_ERROR, "daemon", "PMGCLUSTERD_TEST_PROTO="
                        "%s ignored: want MIN-MAX (1 <= MIN <= MAX <= 1000)",
                        tp);
            } else {
                n->proto_min = lo;
                n->proto_max = hi;
                pmm_log(PMM_LOG_WARN, "daemon", "PMGCLUSTERD_TEST_PROTO: "
                        "speaking protocol %u..%u (for tests)", lo, hi);
            }
        }
    }

    rc = node_start(n);
    if (rc != 0) {
        exit_code = 1;
    } else {
        pmm_log(PMM_LOG_INFO, "daemon", "running");
        /* Type=notify: systemd counts the daemon started from here on */
        char a[64];
        snprintf(err, sizeof(err), "READY=1\nSTATUS=node %s, gossip on %s",
                 n->cfg.name, gsp_addr_str(&n->cfg.bind, a, sizeof(a)));
        /* a failed notification is worth a warning, never a shutdown */
        int nrc = pmm_sd_notify(err);
        if (nrc != 0)
            pmm_log(PMM_LOG_WARN, "daemon", "sd_notify READY=1: %s",
                    strerror(-nrc));
    }
    if (rc != 0)
        node_close_all(n);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&n->loop);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "event loop still busy at exit: %s",
                uv_strerror(rc));
        exit_code = 1;
    }
    gsp_keyring_free(n->kr);
    gsp_budget_free(n->budget);
    free(n->seen);
    free(n->ev_nodes);
    memset(n->status_token, 0, sizeof(n->status_token));
    if (n->lock_fd >= 0)
        close(n->lock_fd);
    if (exit_code == 0 && n->exit_code != 0)
        exit_code = n->exit_code;
    free(n);
    if (exit_code == 0)
        pmm_log(PMM_LOG_INFO, "daemon", "stopped");
    return exit_code;
}
