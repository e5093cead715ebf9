/*
 * pmgclusterd.c - the pmgcm cluster daemon: gossip membership, node
 * metadata, persisted peers, and the control socket for `pmgcm status`.
 *
 *   pmgclusterd --config FILE [--foreground]
 *
 * Everything runs on one libuv loop; blocking work (sampling /proc, writing
 * the peers file) runs on libuv's thread pool.
 */
#include "membership/membership.h"
#include "membership/cluster.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define PEERS_DEBOUNCE_MS 1000
#define LEAVE_MAX_MS 1000
#define LEAVE_POLL_MS 20

typedef struct node {
    uv_loop_t loop;
    pmm_config cfg;
    gsp_keyring *kr;
    gsp_uv *u;
    pmm_ctl *ctl;
    pmm_lc *lc;
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
    uint64_t start_time;
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

    /* shutdown */
    bool stopping;
    bool closed;
    uint64_t leave_start;
} node;

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

static void member_changed(void *ud, const gsp_member *m, gsp_state old,
                           bool is_new)
{
    node *n = ud;
    char a[64];
    pmm_log_level lvl;

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
    m.load1 = n->sample.load1;
    m.mem_pct = n->sample.mem_pct;
    m.disk_pct = n->sample.disk_pct;
    {
        const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
        const pmm_cnode *me = cl ? pmm_cluster_by_id(cl, &n->id) : NULL;
        m.cid = me ? me->cid : 0;
        strcpy(m.role, me ? (me->master ? "master" : "node") : "-");
        m.cfg_epoch = cl ? cl->epoch : 0;
        m.cfg_version = cl ? cl->version : 0;
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

    n->meta_rc = pmm_sysinfo_sample(&n->sample);
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

    if (core == NULL || n->stopping || !meta_from_sample(n))
        return;
    if (gsp_core_set_meta(core, gsp_uv_now(n->u), n->meta_buf,
                          n->meta_len) == 0)
        gsp_uv_kick(n->u);
}

static void user_msg(void *ud, uint32_t key, uint64_t version,
                     const uint8_t *data, size_t len)
{
    node *n = ud;

    if (n->lc != NULL && !n->stopping)
        pmm_lc_user_msg(n->lc, key, version, data, len);
}

/* ---- control socket ------------------------------------------------------------ */

typedef struct rows_acc {
    pmm_status_row *rows;
    size_t n, cap;
    int64_t now;
    int err;
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
    pmm_status_row_from_member(&a->rows[a->n++], m, a->now);
    return 0;
}

static void ctl_handler(void *ud, pmm_ctl_req *req, const char *cmd,
                        const pmm_json *args)
{
    node *n = ud;
    gsp_core *core = node_core(n);
    rows_acc acc = {.now = (int64_t)time(NULL)};
    pmm_buf reply;

    (void)args;
    if (strcmp(cmd, "ping") == 0) {
        pmm_ctl_reply_ok(req, NULL);
        return;
    }
    if (strcmp(cmd, "status") != 0) {
        if (n->lc == NULL || n->stopping)
            pmm_ctl_reply_error(req, "the daemon is not ready");
        else
            pmm_lc_ctl(n->lc, req, cmd, args);
        return;
    }
    if (core == NULL) {
        pmm_ctl_reply_error(req, "gossip is not running yet");
        return;
    }
    gsp_core_foreach(core, collect_row, &acc);
    if (acc.err != 0) {
        free(acc.rows);
        pmm_ctl_reply_error(req, "out of memory");
        return;
    }
    const pmm_cluster *cl = n->lc ? pmm_lc_cluster(n->lc) : NULL;
    if (cl != NULL)
        apply_cluster(&acc, cl);
    if (acc.err != 0) {
        free(acc.rows);
        pmm_ctl_reply_error(req, "out of memory");
        return;
    }
    pmm_status_sort(acc.rows, acc.n);
    pmm_buf_init(&reply, PMM_CTL_REPLY_MAX);
    pmm_buf_puts(&reply, "{\"ok\":true,\"node\":");
    pmm_json_str(&reply, n->cfg.name, strlen(n->cfg.name));
    pmm_buf_printf(&reply, ",\"id\":\"%s\",\"generation\":%llu,\"time\":%lld,"
                           "\"members\":",
                   n->id_hex, (unsigned long long)n->gen, (long long)acc.now);
    pmm_status_write_json(&reply, acc.rows, acc.n);
    if (cl != NULL) {
        char cid_hex[33];
        for (size_t i = 0; i < sizeof(cl->cluster_id); i++)
            snprintf(cid_hex + 2 * i, 3, "%02x", cl->cluster_id[i]);
        pmm_buf_printf(&reply, ",\"cluster\":{\"cluster_id\":\"%s\","
                               "\"epoch\":%llu,\"version\":%llu,"
                               "\"master_cid\":%u}", cid_hex,
                       (unsigned long long)cl->epoch,
                       (unsigned long long)cl->version, cl->master_cid);
    }
    {
        gsp_stats st;
        gsp_core_stats(core, &st);
        pmm_buf_printf(&reply, ",\"gossip\":{\"udp_in\":%llu,\"udp_out\":%llu,"
                       "\"drop_decrypt\":%llu,\"drop_decode\":%llu,"
                       "\"drop_toobig\":%llu,\"probes\":%llu,"
                       "\"suspicions\":%llu,\"refutations\":%llu,"
                       "\"health\":%u}",
                       (unsigned long long)st.udp_in,
                       (unsigned long long)st.udp_out,
                       (unsigned long long)st.drop_decrypt,
                       (unsigned long long)st.drop_decode,
                       (unsigned long long)st.drop_toobig,
                       (unsigned long long)st.probes,
                       (unsigned long long)st.suspicions,
                       (unsigned long long)st.refutations,
                       gsp_core_health(core));
    }
    if (n->lc != NULL) {
        pmm_buf_puts(&reply, ",\"fingerprint\":");
        const char *fp = pmm_lc_fingerprint(n->lc);
        pmm_json_str(&reply, fp, strlen(fp));
    }
    pmm_buf_puts(&reply, "}\n");
    free(acc.rows);
    if (reply.err != 0)
        pmm_ctl_reply_error(req, "status answer: %s", strerror(-reply.err));
    else
        pmm_ctl_reply(req, reply.p, reply.len);
    pmm_buf_free(&reply);
}

/* ---- shutdown ------------------------------------------------------------------- */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Closes every handle; the loop then runs dry. */
static void node_close_all(node *n)
{
    if (n->closed)
        return;
    n->closed = true;
    n->stopping = true;
    close_handle((uv_handle_t *)&n->sig_term);
    close_handle((uv_handle_t *)&n->sig_int);
    close_handle((uv_handle_t *)&n->sig_hup);
    close_handle((uv_handle_t *)&n->meta_timer);
    close_handle((uv_handle_t *)&n->peers_timer);
    close_handle((uv_handle_t *)&n->leave_timer);
    if (n->meta_busy)
        uv_cancel((uv_req_t *)&n->meta_work);
    /* a peers write in flight is left to finish: it is atomic anyway */
    if (n->lc != NULL) {
        pmm_lc_close(n->lc);
        n->lc = NULL;
    }
    if (n->ctl != NULL) {
        pmm_ctl_close(n->ctl);
        n->ctl = NULL;
    }
    if (n->u != NULL) {
        gsp_uv_close(n->u);
        n->u = NULL;
    }
}

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
    uv_timer_stop(&n->meta_timer);
    uv_timer_stop(&n->peers_timer);
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

static void signal_cb(uv_signal_t *s, int signum)
{
    node *n = s->data;

    if (signum == SIGHUP) {
        pmm_log(PMM_LOG_INFO, "daemon",
                "SIGHUP ignored (configuration reload is not supported yet)");
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
            "       pmgclusterd --version | --help\n"
            "\n"
            "Runs the pmgcm cluster daemon (gossip membership, node status,\n"
            "control socket for `pmgcm`). Logs go to stderr. It always runs\n"
            "in the foreground (use systemd to supervise it).\n"
            "\n"
            "  -c, --config FILE   configuration file (see membership.h)\n"
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

static int node_start(node *n)
{
    gsp_config *g = &n->cfg.gossip;
    gsp_callbacks cb = {.ud = n, .member_changed = member_changed,
                        .user_msg = user_msg};
    gsp_core *core = NULL;
    gsp_addr peers[PMM_STATE_PEERS_MAX + PMM_PEERS_MAX];
    size_t n_peers = 0, n_file = 0, bad = 0;
    uint64_t seed;
    char err[512], a1[64], a2[64];
    bool created = false;
    int rc, bad_line = 0;

    /* keyring */
    n->kr = gsp_keyring_new(n->cfg.label);
    if (n->kr == NULL) {
        pmm_log(PMM_LOG_ERROR, "daemon", "cannot create keyring");
        return -ENOMEM;
    }
    if (n->cfg.key_file[0] == '\0') {
        /* no shared key: a private random one until create/join brings the
         * cluster's keyring */
        uint8_t k[GSP_KEY_LEN];
        rc = gsp_random(k, sizeof(k));
        if (rc == 0)
            rc = gsp_keyring_add(n->kr, k);
        memset(k, 0, sizeof(k));
        if (rc != 0) {
            pmm_log(PMM_LOG_ERROR, "daemon", "cannot make a gossip key: %s",
                    gsp_strerror(rc));
            return rc;
        }
    } else {
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
    }

    /* identity */
    rc = pmm_mkdir_p(n->cfg.data_dir, 0700);
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "data_dir %s: %s", n->cfg.data_dir,
                strerror(-rc));
        return rc;
    }
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
    n_peers = n_file;
    for (size_t i = 0; i < n->cfg.n_peers; i++)
        if (!addr_in(peers, n_peers, &n->cfg.peers[i]))
            peers[n_peers++] = n->cfg.peers[i];
    /* never join ourselves */
    for (size_t i = 0; i < n_peers;) {
        if (gsp_addr_eq(&peers[i], &n->cfg.advertise) ||
            gsp_addr_eq(&peers[i], &n->cfg.bind))
            peers[i] = peers[--n_peers];
        else
            i++;
    }

    pmm_log(PMM_LOG_INFO, "daemon",
            "pmgclusterd %s: node %s id %s%s generation %llu, bind %s, "
            "advertise %s", PACKAGE_VERSION, n->cfg.name, n->id_hex,
            created ? " (new)" : "", (unsigned long long)n->gen,
            gsp_addr_str(&n->cfg.bind, a1, sizeof(a1)),
            gsp_addr_str(&n->cfg.advertise, a2, sizeof(a2)));

    /* first metadata sample: blocking is fine before the loop runs */
    rc = pmm_sysinfo_sample(&n->sample);
    if (rc != 0) {
        pmm_log(PMM_LOG_WARN, "meta", "cannot sample host status: %s",
                strerror(-rc));
        n->meta_failing = true;
    } else {
        meta_from_sample(n);
    }

    /* gossip */
    rc = gsp_random(&seed, sizeof(seed));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "daemon", "gsp_random: %s", gsp_strerror(rc));
        return rc;
    }
    uv_update_time(&n->loop);
    rc = gsp_core_new(&core, g, &n->id, n->cfg.name, &n->cfg.advertise,
                      n->gen, n->kr, seed, uv_now(&n->loop), &cb);
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

    /* control socket */
    rc = pmm_ctl_start(&n->ctl, &n->loop, n->cfg.control_socket, ctl_handler,
                       n, err, sizeof(err));
    if (rc != 0) {
        pmm_log(PMM_LOG_ERROR, "ctl", "%s", err);
        n->ctl = NULL;
        return rc;
    }
    pmm_log(PMM_LOG_INFO, "ctl", "listening on %s", n->cfg.control_socket);

    /* join: persisted peers + configured peers; the same list is kept as
     * seeds so the core re-contacts them while they are not alive */
    core = gsp_uv_core(n->u);
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

    /* cluster lifecycle: config, TLS node API, keyring, seeds */
    {
        pmm_lc_env env = {.loop = &n->loop, .cfg = &n->cfg,
                          .api_port = n->cfg.api_port, .node_id = n->id,
                          .kr = n->kr, .u = n->u,
                          .changed = cluster_changed, .ud = n};
        rc = pmm_lc_start(&n->lc, &env, err, sizeof(err));
        if (rc != 0) {
            pmm_log(PMM_LOG_ERROR, "cluster", "%s", err);
            n->lc = NULL;
            return rc;
        }
        pmm_log(PMM_LOG_INFO, "cluster", "node API (TLS) on port %u, "
                "fingerprint %s", n->cfg.api_port, pmm_lc_fingerprint(n->lc));
        cluster_changed(n);
    }

    uv_timer_start(&n->meta_timer, meta_timer_cb, n->cfg.meta_interval_ms,
                   n->cfg.meta_interval_ms);
    uv_signal_start(&n->sig_term, signal_cb, SIGTERM);
    uv_signal_start(&n->sig_int, signal_cb, SIGINT);
    uv_signal_start(&n->sig_hup, signal_cb, SIGHUP);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"foreground", no_argument, NULL, 'f'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config = NULL;
    char err[768];
    node *n;
    int c, rc, exit_code = 0;

    while ((c = getopt_long(argc, argv, "c:fVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'f':
            break;
        case 'V':
            printf("pmgclusterd %s\n", PACKAGE_VERSION);
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
    rc = pmm_config_load(&n->cfg, config, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "error config: %s\n", err);
        free(n);
        return 1;
    }
    pmm_log_set_level(n->cfg.log_level);
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
    uv_timer_init(&n->loop, &n->peers_timer);
    uv_timer_init(&n->loop, &n->leave_timer);
    n->sig_term.data = n->sig_int.data = n->sig_hup.data = n;
    n->meta_timer.data = n->peers_timer.data = n->leave_timer.data = n;

    rc = node_start(n);
    if (rc != 0)
        exit_code = 1;
    else
        pmm_log(PMM_LOG_INFO, "daemon", "running");
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
    if (n->lock_fd >= 0)
        close(n->lock_fd);
    free(n);
    if (exit_code == 0)
        pmm_log(PMM_LOG_INFO, "daemon", "stopped");
    return exit_code;
}
