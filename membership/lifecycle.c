/*
 * lifecycle.c - create, join, join-cmd, delete, promote, sync: the
 * versioned cluster config, its announcement over gossip and its transfer
 * over pinned TLS, and the gossip key rotation that follows a delete.
 *
 * Everything runs on the daemon's loop. The slow parts run on libuv's
 * thread pool: PBKDF2 (tens of ms) and every write of cluster.conf (fsync).
 * A config change is made in memory, written, and only then announced or
 * answered, so nothing is promised that a crash could take back.
 *
 * The requests lifecycle serves on the node API (net/net.h; TLS, one
 * Request frame -> one Response frame):
 *   JOIN    from anybody (unauthenticated certificate) to the master;
 *           password checked, cid assigned, config + keyring returned.
 *   FETCH   from a node of the config: the config + keyring.
 *   REMOVED from the master to a deleted node: stop taking part.
 * Lifecycle is also the node API's gate: the certificates of the config's
 * nodes are the known ones.
 */
#include "membership/membership.h"
#include "membership/cluster.pb-c.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#define HEAL_INTERVAL_MS 5000
#define ROT_WAIT_MS 10000
typedef Pmgcm__Cluster__Request Req;
typedef Pmgcm__Cluster__Response Resp;

typedef struct op op;
typedef void (*op_done_fn)(op *o, int rc, const Resp *resp);

/* an outgoing request (a node API call): what it is for */
struct op {
    pmm_lc *lc;
    op *next;
    pmm_api_call *call;
    op_done_fn done;
    pmm_tls_fp seen_fp; /* the server's fingerprint (fingerprint probe) */
    bool got_fp;
    pmm_ctl_req *ctl;
    char target[80];
    uint32_t cid;     /* fetch: node asked; delete: node removed */
    int attempt;      /* fetch: index into the node list */
    char want_ip[PMM_IP_STR_MAX + 1]; /* sync --master-ip */
    pmm_lc_resp_fn ext_fn; /* pmm_lc_call_master: always called once */
    void *ext_ud;
    void *ud;         /* update-fingerprints: its probe round */
    bool always;      /* done is called also while lc closes */
};

typedef struct save_waiter {
    void (*fn)(pmm_lc *lc, int rc, void *arg);
    void *arg;
    struct save_waiter *next;
} save_waiter;


struct pmm_lc {
    pmm_lc_env env;
    uv_loop_t *loop;
    char data_dir[PMM_PATH_MAX];
    pmm_api *api;
    bool in_cluster;
    pmm_cluster cl;
    bool closing;
    /* removed from the cluster since this daemon started (for status):
     * why, and when (wall clock); removed_at 0 = never */
    char removed_why[PMM_LC_REMOVED_WHY_MAX + 1];
    int64_t removed_at;
    op *ops;

    /* cluster.conf writes: one at a time, latest state wins */
    bool save_busy;
    bool save_remove; /* the next write removes the file instead */
    bool save_again;  /* state changed while a write was in flight */
    save_waiter *waiting, *inflight;

    pmm_thr *thr; /* the join throttle (net.h), made at the first join */

    /* newest config position announced by anyone (ours included) */
    uint64_t seen_epoch, seen_version;

    /* fetching newer configs */
    bool fetching;
    bool fetch_again;
    uint32_t fetch_hint_cid;

    /* delete: staged gossip key rotation */
    int rot_stage; /* 0 none, 1 new key installed, 2 switched */
    uint64_t rot_version;
    uint64_t rot_deadline;
    pmm_ctl_req *rot_ctl;
    uint32_t rot_cid;

    uv_timer_t heal_timer;
    uint64_t last_drops;
    uint32_t heal_rr;
    int refs; /* outstanding work, timers and requests */
    uint64_t next_heal_ms;

    char promote_lost[600]; /* promote --accept-data-loss: what is lost */
    /* a promote waiting for this node to catch up (promote_step) */
    uv_timer_t promo_timer;
    pmm_ctl_req *promo_ctl;
    bool promo_force, promo_accept, promo_said;
    bool promo_moved; /* the position moved since the promote began */
    uint64_t promo_deadline, promo_moved_at, promo_seq;
};

static void lc_unref(pmm_lc *lc);

#define lc_log(l, ...) pmm_log(l, "cluster", __VA_ARGS__)

static gsp_core *core(pmm_lc *lc)
{
    return gsp_uv_core(lc->env.u);
}

static uint64_t now_ms(pmm_lc *lc)
{
    return uv_now(lc->loop);
}

static void changed(pmm_lc *lc)
{
    if (lc->env.changed) lc->env.changed(lc->env.ud);
}

static const pmm_cnode *self_node(const pmm_lc *lc)
{
    return lc->in_cluster ? pmm_cluster_by_id(&lc->cl, &lc->env.node_id)
                          : NULL;
}

static bool is_master(const pmm_lc *lc)
{
    const pmm_cnode *s = self_node(lc);
    return s && s->master;
}

static void self_ip(const pmm_lc *lc, char *buf, size_t len)
{
    gsp_addr_ip_str(&lc->env.cfg->advertise, buf, len);
}

/* ---- keyring and seeds follow the config ---------------------------------- */

static void install_keys(pmm_lc *lc)
{
    gsp_keyring *kr = lc->env.kr;
    for (size_t i = 0; i < lc->cl.n_keys; i++) gsp_keyring_add(kr, lc->cl.keys[i]);
    gsp_keyring_use(kr, lc->cl.keys[0]);
    for (size_t i = gsp_keyring_count(kr); i-- > 0;) {
        uint8_t k[GSP_KEY_LEN];
        if (gsp_keyring_get(kr, i, k)) continue;
        bool keep = false;
        for (size_t j = 0; j < lc->cl.n_keys; j++)
            keep |= !memcmp(k, lc->cl.keys[j], GSP_KEY_LEN);
        if (!keep) gsp_keyring_remove(kr, k);
        memset(k, 0, sizeof(k));
    }
}

static size_t node_gossip_addrs(const pmm_lc *lc, gsp_addr *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < lc->cl.n_nodes && n < max; i++) {
        const pmm_cnode *c = &lc->cl.nodes[i];
        if (!memcmp(&c->node_id, &lc->env.node_id, sizeof(gsp_id))) continue;
        if (gsp_addr_parse(&out[n], c->ip, c->gossip_port) == 0) n++;
    }
    return n;
}

static void set_seeds(pmm_lc *lc, bool join_now)
{
    gsp_addr *a = calloc(lc->cl.n_nodes + 1, sizeof(*a));
    if (!a) return;
    size_t n = node_gossip_addrs(lc, a, lc->cl.n_nodes);
    gsp_core_set_seeds(core(lc), a, n);
    if (join_now && n) gsp_core_join(core(lc), now_ms(lc), a, n);
    free(a);
    gsp_uv_kick(lc->env.u);
}

/* ---- persistence (worker thread) ------------------------------------------- */

typedef struct save_job {
    uv_work_t w;
    pmm_lc *lc;
    pmm_cluster snap;
    bool remove;
    int rc;
} save_job;

static void save_start(pmm_lc *lc);

static void save_work(uv_work_t *w)
{
    save_job *j = w->data;
    j->rc = j->remove ? pmm_cluster_remove_file(j->lc->data_dir)
                      : pmm_cluster_save(j->lc->data_dir, &j->snap);
}

static void save_after(uv_work_t *w, int status)
{
    save_job *j = w->data;
    pmm_lc *lc = j->lc;
    int rc = status ? status : j->rc;
    pmm_cluster_clear(&j->snap);
    free(j);
    lc->save_busy = false;
    if (rc) lc_log(PMM_LOG_ERROR, "writing %s/%s failed: %s", lc->data_dir,
                   PMM_CLUSTER_FILE, strerror(-rc));
    save_waiter *ws = lc->inflight;
    lc->inflight = NULL;
    while (ws) {
        save_waiter *n = ws->next;
        ws->fn(lc, lc->closing ? -ECANCELED : rc, ws->arg);
        free(ws);
        ws = n;
    }
    if ((lc->waiting || lc->save_again) && !lc->closing) {
        lc->save_again = false;
        save_start(lc);
    } else if (lc->closing) {
        for (ws = lc->waiting; ws;) {
            save_waiter *n = ws->next;
            ws->fn(lc, -ECANCELED, ws->arg);
            free(ws);
            ws = n;
        }
        lc->waiting = NULL;
    }
    lc_unref(lc);
}

static void save_start(pmm_lc *lc)
{
    save_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->lc = lc;
    j->w.data = j;
    j->remove = lc->save_remove || !lc->in_cluster;
    if (!j->remove && pmm_cluster_copy(&j->snap, &lc->cl)) {
        free(j);
        return;
    }
    lc->save_remove = false;
    lc->save_busy = true;
    lc->inflight = lc->waiting;
    lc->waiting = NULL;
    lc->refs++;
    if (uv_queue_work(lc->loop, &j->w, save_work, save_after)) {
        j->rc = -EIO;
        save_after(&j->w, -EIO);
    }
}

/* Persists the current in-memory state (or removes the file when out of a
 * cluster); fn (may be NULL) runs after a write that includes it, with
 * rc = -ECANCELED when the daemon is shutting down. */
static void save(pmm_lc *lc, void (*fn)(pmm_lc *, int, void *), void *arg)
{
    if (fn) {
        save_waiter *w = calloc(1, sizeof(*w));
        if (!w) {
            fn(lc, -ENOMEM, arg);
            return;
        }
        w->fn = fn;
        w->arg = arg;
        save_waiter **p = &lc->waiting;
        while (*p) p = &(*p)->next;
        *p = w;
    }
    if (lc->save_busy) lc->save_again = true;
    else save_start(lc);
}

/* ---- announcements ------------------------------------------------------------ */

static void announce(pmm_lc *lc)
{
    if (!lc->in_cluster) return;
    Pmgcm__Cluster__Announce a = PMGCM__CLUSTER__ANNOUNCE__INIT;
    a.cluster_id.data = lc->cl.cluster_id;
    a.cluster_id.len = sizeof(lc->cl.cluster_id);
    a.epoch = lc->cl.epoch;
    a.version = lc->cl.version;
    a.master_cid = lc->cl.master_cid;
    const pmm_cnode *s = self_node(lc);
    a.from_cid = s ? s->cid : 0;
    uint8_t buf[128];
    size_t len = pmgcm__cluster__announce__pack(&a, buf);
    gsp_core_broadcast(core(lc), PMM_ANNOUNCE_KEY,
                       (lc->cl.epoch << 32) | lc->cl.version, buf, len);
    gsp_uv_kick(lc->env.u);
}

/* ---- outgoing requests (node API calls) ------------------------------------------- */

static void op_free(op *o)
{
    pmm_lc *lc = o->lc;
    for (op **p = &lc->ops; *p; p = &(*p)->next) {
        if (*p == o) {
            *p = o->next;
            break;
        }
    }
    free(o);
    lc_unref(lc);
}

static void op_finish(op *o, int rc, const Resp *resp)
{
    if (o->ext_fn) {
        bool c = o->lc->closing;
        o->ext_fn(o->ext_ud, c ? -ECANCELED : rc, c ? NULL : resp);
        return;
    }
    if (o->done && o->always && o->lc->closing) o->done(o, -ECANCELED, NULL);
    else if (o->done && !o->lc->closing) o->done(o, rc, resp);
}

/* The call's outcome, exactly once: the op ends here. */
static void op_called(pmm_api_call *c, int rc, const uint8_t *data,
                      size_t len, void *ud)
{
    op *o = ud;
    o->call = NULL;
    o->got_fp = pmm_api_call_peer(c, &o->seen_fp) == 0;
    if (rc) {
        op_finish(o, rc, NULL);
    } else {
        Resp *r = pmgcm__cluster__response__unpack(NULL, len, data);
        if (!r) {
            op_finish(o, -EPROTO, NULL);
        } else {
            op_finish(o, 0, r);
            pmgcm__cluster__response__free_unpacked(r, NULL);
        }
    }
    op_free(o);
}

/* Starts a request to ip:port pinned to expected_fp; expected_fp NULL (and
 * req NULL): a fingerprint probe. The request message is packed here. 0
 * or -errno (then done was not called and o is freed). */
static int op_start(pmm_lc *lc, op *o, const char *ip, uint16_t port,
                    const char *expected_fp, const Req *req)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(o->target, sizeof(o->target), "%s:%u", ip, port);
    o->lc = lc;
    int rc = 0;
    pmm_tls_fp fp;
    if (expected_fp && pmm_tls_fp_parse(&fp, expected_fp)) rc = -EINVAL;
    if (!rc && req) {
        len = pmgcm__cluster__request__get_packed_size(req);
        buf = malloc(len ? len : 1);
        if (!buf) rc = -ENOMEM;
        else pmgcm__cluster__request__pack(req, buf);
    }
    if (rc) {
        free(buf);
        free(o);
        return rc;
    }
    o->next = lc->ops;
    lc->ops = o;
    lc->refs++;
    rc = pmm_api_call_start(lc->api, ip, port, expected_fp ? &fp : NULL, buf,
                            len, op_called, o, &o->call);
    free(buf);
    if (rc) {
        op_free(o);
        return rc;
    }
    return 0;
}

/* ---- adopting a newer config ---------------------------------------------------------- */

static void removed_from_cluster(pmm_lc *lc, const char *why);

static void after_adopt_save(pmm_lc *lc, int rc, void *arg)
{
    (void)arg;
    if (rc == -ECANCELED) return;
    if (rc == 0) changed(lc);
}

/* Takes ownership of nc's contents on success. Returns 1 adopted, 0 not
 * newer, <0 refused. */
static int adopt(pmm_lc *lc, pmm_cluster *nc, const char *from)
{
    if (!lc->in_cluster) return -ENOENT;
    if (memcmp(nc->cluster_id, lc->cl.cluster_id, sizeof(nc->cluster_id))) {
        lc_log(PMM_LOG_WARN, "ignoring config from %s: another cluster", from);
        return -EXDEV;
    }
    if (pmm_cluster_cmp(nc, &lc->cl) <= 0) return 0;
    const pmm_cnode *me = pmm_cluster_by_id(nc, &lc->env.node_id);
    if (!me) {
        pmm_cluster_clear(nc);
        removed_from_cluster(lc, "this node is not in the newer config");
        return 1;
    }
    bool was_master = is_master(lc);
    uint64_t old_epoch = lc->cl.epoch;
    pmm_cluster_clear(&lc->cl);
    lc->cl = *nc;
    memset(nc, 0, sizeof(*nc));
    install_keys(lc);
    set_seeds(lc, false);
    const pmm_cnode *m = pmm_cluster_master(&lc->cl);
    lc_log(PMM_LOG_INFO, "adopted config epoch %llu version %llu from %s "
           "(master %s, cid %u)", (unsigned long long)lc->cl.epoch,
           (unsigned long long)lc->cl.version, from, m ? m->name : "?",
           lc->cl.master_cid);
    if (was_master && !is_master(lc)) {
        lc_log(PMM_LOG_WARN, "stepping down: %s (cid %u) is master under "
               "epoch %llu (ours was %llu)", m ? m->name : "?",
               lc->cl.master_cid, (unsigned long long)lc->cl.epoch,
               (unsigned long long)old_epoch);
        if (lc->rot_stage) {
            lc->rot_stage = 0;
            if (lc->rot_ctl) {
                pmm_ctl_reply_error(lc->rot_ctl,
                                    "this node stepped down during the key "
                                    "rotation; the new master finishes it");
                lc->rot_ctl = NULL;
            }
        }
    }
    save(lc, after_adopt_save, NULL);
    changed(lc);
    return 1;
}

/* ---- fetch (announcements, self-healing, sync) ------------------------------------ */

static void fetch_next(pmm_lc *lc, op *prev);
static void fetch_from(pmm_lc *lc, const pmm_cnode *n, int attempt,
                       pmm_ctl_req *ctl, const char *want_ip);

static void sync_reply(pmm_lc *lc, pmm_ctl_req *ctl, int adopted)
{
    /* epoch and version are at most UINT32_MAX (cluster.c) */
    pmm_ctl_reply_ok_with(
        ctl, json_pack("{s:I, s:I, s:I, s:b}", "epoch",
                       (json_int_t)lc->cl.epoch, "version",
                       (json_int_t)lc->cl.version, "master_cid",
                       (json_int_t)lc->cl.master_cid, "updated", adopted > 0));
}

static void fetch_done(op *o, int rc, const Resp *resp)
{
    pmm_lc *lc = o->lc;
    if (rc == 0 && resp && !resp->ok) {
        const char *e = resp->error ? resp->error : "refused";
        lc_log(PMM_LOG_WARN, "fetch from %s refused: %s", o->target, e);
        /* only the master of our config speaks for it: any other node
         * may hold an older config that does not list us yet */
        const pmm_cnode *m = pmm_cluster_master(&lc->cl);
        if (strstr(e, "not a member") && m && m->cid == o->cid) {
            /* the pinned master of our own config says we are gone */
            if (o->ctl) pmm_ctl_reply_error(o->ctl, "%s: %s", o->target, e);
            o->ctl = NULL;
            lc->fetching = false;
            removed_from_cluster(lc, "the master says so");
            return;
        }
        if (o->want_ip[0]) {
            if (o->ctl) pmm_ctl_reply_error(o->ctl, "%s: %s", o->target, e);
            o->ctl = NULL;
            lc->fetching = false;
            return;
        }
        rc = -EPERM;
    }
    if (rc == 0 && resp && resp->config) {
        pmm_cluster nc;
        memset(&nc, 0, sizeof(nc));
        char why[160];
        int r = pmm_cluster_from_pb(&nc, resp->config, true, why, sizeof(why));
        if (r) {
            lc_log(PMM_LOG_WARN, "bad config from %s: %s", o->target, why);
            rc = -EPROTO;
        } else if (o->want_ip[0]) {
            /* sync --master-ip: the target must be master under a config
             * at least as new as ours, in a newer or the same epoch */
            const pmm_cnode *m = pmm_cluster_master(&nc);
            if (!m || strcmp(m->ip, o->want_ip) ||
                pmm_cluster_cmp(&nc, &lc->cl) < 0) {
                if (o->ctl)
                    pmm_ctl_reply_error(o->ctl,
                                        "%s is not the master under a newer "
                                        "epoch (it reports epoch %llu, master "
                                        "cid %u; we have epoch %llu)",
                                        o->want_ip,
                                        (unsigned long long)nc.epoch,
                                        nc.master_cid,
                                        (unsigned long long)lc->cl.epoch);
                o->ctl = NULL;
                pmm_cluster_clear(&nc);
                lc->fetching = false;
                return;
            }
            int a = adopt(lc, &nc, o->target);
            pmm_cluster_clear(&nc);
            if (o->ctl) sync_reply(lc, o->ctl, a);
            o->ctl = NULL;
            lc->fetching = false;
            return;
        } else {
            int a = adopt(lc, &nc, o->target);
            pmm_cluster_clear(&nc);
            if (o->ctl) sync_reply(lc, o->ctl, a);
            o->ctl = NULL;
            lc->fetching = false;
            if (lc->fetch_again) {
                lc->fetch_again = false;
                fetch_next(lc, NULL);
            }
            return;
        }
    }
    if (rc) {
        lc_log(PMM_LOG_DEBUG, "fetch from %s failed: %s", o->target,
               pmm_strerror(rc));
        if (o->want_ip[0]) {
            if (o->ctl)
                pmm_ctl_reply_error(o->ctl, "cannot fetch from %s: %s",
                                    o->target, pmm_strerror(rc));
            o->ctl = NULL;
            lc->fetching = false;
            return;
        }
        fetch_next(lc, o);
    }
}

/* Tries the next node: the hinted one / master first, then the others. */
static void fetch_next(pmm_lc *lc, op *prev)
{
    if (!lc->in_cluster) {
        lc->fetching = false;
        return;
    }
    int attempt = prev ? prev->attempt + 1 : 0;
    pmm_ctl_req *ctl = prev ? prev->ctl : NULL;
    if (prev) prev->ctl = NULL;
    /* order: hinted cid, master, then every other node */
    size_t n = lc->cl.n_nodes;
    const pmm_cnode *order[PMM_CLUSTER_NODES_MAX + 2];
    size_t k = 0;
    const pmm_cnode *h = pmm_cluster_by_cid(&lc->cl, lc->fetch_hint_cid);
    const pmm_cnode *m = pmm_cluster_master(&lc->cl);
    const pmm_cnode *me = self_node(lc);
    if (h && h != me) order[k++] = h;
    if (m && m != me && m != h) order[k++] = m;
    for (size_t i = 0; i < n; i++) {
        const pmm_cnode *c = &lc->cl.nodes[i];
        if (c != me && c != h && c != m) order[k++] = c;
    }
    if ((size_t)attempt >= k) {
        lc->fetching = false;
        if (ctl) pmm_ctl_reply_error(ctl, "no cluster node could be reached");
        return;
    }
    fetch_from(lc, order[attempt], attempt, ctl, NULL);
}

static void fetch_from(pmm_lc *lc, const pmm_cnode *n, int attempt,
                       pmm_ctl_req *ctl, const char *want_ip)
{
    op *o = calloc(1, sizeof(*o));
    if (!o) {
        lc->fetching = false;
        if (ctl) pmm_ctl_reply_error(ctl, "out of memory");
        return;
    }
    o->done = fetch_done;
    o->attempt = attempt;
    o->ctl = ctl;
    o->cid = n->cid;
    if (want_ip) snprintf(o->want_ip, sizeof(o->want_ip), "%s", want_ip);
    Req r = PMGCM__CLUSTER__REQUEST__INIT;
    r.kind = PMGCM__CLUSTER__REQUEST__KIND__FETCH;
    lc->fetching = true;
    op tmp = *o; /* for the failure path: attempt and ctl survive */
    int rc = op_start(lc, o, n->ip, n->api_port, n->fp, &r);
    if (rc) {
        tmp.lc = lc;
        if (want_ip) {
            lc->fetching = false;
            if (ctl) pmm_ctl_reply_error(ctl, "cannot connect to %s: %s",
                                         n->ip, strerror(-rc));
            return;
        }
        fetch_next(lc, &tmp);
    }
}

static void fetch_newer(pmm_lc *lc, uint32_t hint_cid)
{
    lc->fetch_hint_cid = hint_cid;
    if (lc->fetching) {
        lc->fetch_again = true;
        return;
    }
    fetch_next(lc, NULL);
}

void pmm_lc_user_msg(pmm_lc *lc, uint32_t key, uint64_t version,
                     const uint8_t *data, size_t len)
{
    if (key != PMM_ANNOUNCE_KEY || !lc->in_cluster || lc->closing) return;
    Pmgcm__Cluster__Announce *a =
        pmgcm__cluster__announce__unpack(NULL, len, data);
    if (!a) return;
    if (a->cluster_id.len == sizeof(lc->cl.cluster_id) &&
        !memcmp(a->cluster_id.data, lc->cl.cluster_id,
                sizeof(lc->cl.cluster_id)) &&
        (a->epoch > lc->cl.epoch ||
         (a->epoch == lc->cl.epoch && a->version > lc->cl.version))) {
        if (a->epoch > lc->seen_epoch ||
            (a->epoch == lc->seen_epoch && a->version > lc->seen_version)) {
            lc->seen_epoch = a->epoch;
            lc->seen_version = a->version;
        }
        lc_log(PMM_LOG_INFO, "config epoch %llu version %llu announced by cid "
               "%u; fetching", (unsigned long long)a->epoch,
               (unsigned long long)a->version, a->from_cid);
        fetch_newer(lc, a->from_cid);
    }
    pmgcm__cluster__announce__free_unpacked(a, NULL);
}

/* ---- leaving the cluster (deleted) --------------------------------------------- */

static uv_timer_t *unleave_timer_new(pmm_lc *lc);

static void removed_from_cluster(pmm_lc *lc, const char *why)
{
    if (!lc->in_cluster) return;
    lc_log(PMM_LOG_WARN, "removed from cluster (%s): stopping to take part",
           why);
    snprintf(lc->removed_why, sizeof(lc->removed_why), "%s", why);
    lc->removed_at = (int64_t)time(NULL);
    /* say goodbye while the old key still works, then go dark with a fresh
     * random key that nobody else has */
    gsp_core_leave(core(lc), now_ms(lc));
    gsp_uv_kick(lc->env.u);
    lc->in_cluster = false;
    lc->rot_stage = 0;
    pmm_cluster_clear(&lc->cl);
    gsp_core_set_seeds(core(lc), NULL, 0);
    lc->save_remove = true;
    save(lc, NULL, NULL);
    unleave_timer_new(lc);
    changed(lc);
}

static void unleave_close_cb(uv_handle_t *h)
{
    pmm_lc *lc = h->data;
    free(h);
    lc_unref(lc);
}

static void unleave_cb(uv_timer_t *t)
{
    pmm_lc *lc = t->data;
    if (!lc->in_cluster && !lc->closing) {
        uint8_t k[GSP_KEY_LEN];
        if (gsp_random(k, sizeof(k)) == 0) {
            gsp_keyring *kr = lc->env.kr;
            gsp_keyring_add(kr, k);
            gsp_keyring_use(kr, k);
            for (size_t i = gsp_keyring_count(kr); i-- > 1;) {
                uint8_t o[GSP_KEY_LEN];
                if (gsp_keyring_get(kr, i, o) == 0) gsp_keyring_remove(kr, o);
            }
            memset(k, 0, sizeof(k));
        }
        gsp_core_unleave(core(lc), now_ms(lc));
        gsp_uv_kick(lc->env.u);
    }
    uv_close((uv_handle_t *)t, unleave_close_cb);
}

static uv_timer_t *unleave_timer_new(pmm_lc *lc)
{
    uv_timer_t *t = malloc(sizeof(*t));
    if (!t) return NULL;
    uv_timer_init(lc->loop, t);
    t->data = lc;
    lc->refs++;
    uv_timer_start(t, unleave_cb, 1500, 0);
    return t;
}

/* ---- the node API server ----------------------------------------------------------- */

void pmm_lc_api_reply(pmm_api_req *r, const Resp *resp)
{
    size_t len = pmgcm__cluster__response__get_packed_size(resp);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        pmm_api_refuse(r, "out of memory");
        return;
    }
    pmgcm__cluster__response__pack(resp, buf);
    pmm_api_reply(r, buf, len);
    free(buf);
}

/* Answers r (and frees it): ok or the error, a config with or without its
 * keys, a cid. */
static void api_answer(pmm_api_req *r, bool ok, const char *error,
                       const pmm_cluster *cfg, bool with_keys, uint32_t cid)
{
    Resp resp = PMGCM__CLUSTER__RESPONSE__INIT;
    resp.ok = ok;
    resp.error = (char *)error;
    Pmgcm__Cluster__Config *pc = NULL;
    if (cfg && pmm_cluster_to_pb(cfg, with_keys, &pc) == 0) resp.config = pc;
    if (cid) {
        resp.has_cid = 1;
        resp.cid = cid;
    }
    pmm_lc_api_reply(r, &resp);
    pmm_cluster_pb_free(pc);
}

typedef struct join_job {
    uv_work_t w;
    uv_timer_t delay;
    pmm_lc *lc;
    pmm_api_req *r;
    char password[PMM_PASSWORD_MAX + 1];
    uint8_t salt[PMM_SALT_LEN];
    uint32_t iter;
    uint8_t hash[PMM_HASH_LEN];
    int rc;
    pmm_cnode cand;
    uint32_t thr_slot; /* the throttle's attempt (pmm_thr_begin) */
    char *schema; /* the joiner's table definitions, or NULL */
} join_job;

static void join_job_free(join_job *j)
{
    memset(j->password, 0, sizeof(j->password));
    free(j->schema);
    free(j);
}

typedef struct join_saved {
    pmm_api_req *r;
    uint32_t cid;
} join_saved;

static void join_after_save(pmm_lc *lc, int rc, void *arg)
{
    join_saved *js = arg;
    pmm_api_req *r = js->r;
    if (rc == -ECANCELED) {
        free(js);
        pmm_api_refuse(r, "the master is shutting down");
        return;
    }
    if (rc) {
        api_answer(r, false, "the master could not write its config", NULL,
                   false, 0);
    } else {
        api_answer(r, true, NULL, &lc->cl, true, js->cid);
        announce(lc);
        changed(lc);
    }
    free(js);
}

static void join_delay_closed(uv_handle_t *h)
{
    join_job *j = h->data;
    pmm_lc *lc = j->lc;
    join_job_free(j);
    lc_unref(lc);
}

static void join_delay_done(uv_timer_t *t)
{
    join_job *j = t->data;
    pmm_thr_end(j->lc->thr, j->thr_slot, false, now_ms(j->lc));
    api_answer(j->r, false, "wrong password", NULL, false, 0);
    uv_close((uv_handle_t *)&j->delay, join_delay_closed);
}

static void join_hash_work(uv_work_t *w)
{
    join_job *j = w->data;
    j->rc = pmm_password_hash(j->password, j->salt, j->iter, j->hash);
}

static void join_hash_body(join_job *j, int status, pmm_lc *lc)
{
    pmm_api_req *r = j->r;
    if (status || j->rc || lc->closing) {
        pmm_thr_end(lc->thr, j->thr_slot, false, now_ms(lc));
        api_answer(r, false, "internal error", NULL, false, 0);
        join_job_free(j);
        return;
    }
    /* the cluster may have changed while we hashed: check again */
    const char *why = NULL;
    char eb[160], sbuf[800];
    if (!is_master(lc)) {
        why = "this node is no longer the master";
    } else if (!pmm_password_match(j->hash, lc->cl.hash)) {
        uint32_t fails = 0;
        uint64_t d = pmm_thr_fail(lc->thr, j->thr_slot, now_ms(lc), &fails);
        pmm_thr_stats ts;
        char grp[64];
        pmm_thr_stats_get(lc->thr, now_ms(lc), &ts);
        pmm_src_str(pmm_api_req_src(r), true, grp, sizeof(grp));
        lc_log(PMM_LOG_WARN, "join from %s: wrong password (attempt %u, "
               "answer delayed %llu ms) [attempts counted for %s; %u more "
               "wrong passwords from anywhere before the master pauses "
               "joins]", pmm_api_req_ip(r), fails, (unsigned long long)d, grp,
               ts.tokens);
        uv_timer_init(lc->loop, &j->delay);
        j->delay.data = j;
        lc->refs++;
        uv_timer_start(&j->delay, join_delay_done, d, 0);
        return; /* the group stays busy until the delay ends */
    } else {
        const pmm_cnode *c;
        if ((c = pmm_cluster_by_name(&lc->cl, j->cand.name))) {
            snprintf(eb, sizeof(eb), "a node named %s is already in the "
                     "cluster (cid %u)", c->name, c->cid);
            why = eb;
        } else if ((c = pmm_cluster_by_ip(&lc->cl, j->cand.ip))) {
            snprintf(eb, sizeof(eb), "IP %s is already used by %s (cid %u)",
                     c->ip, c->name, c->cid);
            why = eb;
        } else if ((c = pmm_cluster_by_id(&lc->cl, &j->cand.node_id))) {
            snprintf(eb, sizeof(eb), "this node is already in the cluster as "
                     "%s (cid %u)", c->name, c->cid);
            why = eb;
        } else if (j->schema && lc->env.schema_diff &&
                   lc->env.schema_diff(lc->env.ud, j->schema, NULL, 0)) {
            /* told only to a joiner that knows the password */
            char d[600];
            lc->env.schema_diff(lc->env.ud, j->schema, d, sizeof(d));
            lc_log(PMM_LOG_WARN, "join of %s refused: schema mismatch: %s",
                   j->cand.name, d);
            snprintf(sbuf, sizeof(sbuf), "schema mismatch: %s (nothing was "
                     "changed; make the table definitions equal, then join "
                     "again)", d);
            why = sbuf;
        }
    }
    /* the password was right: the group's count starts again (unless
     * the master changed under us: then there was no verdict) */
    pmm_thr_end(lc->thr, j->thr_slot, is_master(lc), now_ms(lc));
    if (why) {
        api_answer(r, false, why, NULL, false, 0);
        join_job_free(j);
        return;
    }
    uint32_t cid;
    if (pmm_cluster_add(&lc->cl, &j->cand, &cid)) {
        api_answer(r, false, "the cluster is full", NULL, false, 0);
        join_job_free(j);
        return;
    }
    lc->cl.version++;
    lc_log(PMM_LOG_INFO, "node %s (%s) joined as cid %u; config version %llu",
           j->cand.name, j->cand.ip, cid, (unsigned long long)lc->cl.version);
    join_saved *js = calloc(1, sizeof(*js));
    if (!js) {
        api_answer(r, false, "internal error", NULL, false, 0);
        join_job_free(j);
        return;
    }
    js->r = r;
    js->cid = cid;
    join_job_free(j);
    save(lc, join_after_save, js);
}

/* the work's reference on lc is dropped after the body ran */
static void join_hash_after(uv_work_t *w, int status)
{
    join_job *j = w->data;
    pmm_lc *lc = j->lc;
    join_hash_body(j, status, lc);
    lc_unref(lc);
}

static void handle_join(pmm_lc *lc, pmm_api_req *r, const Req *q)
{
    const Pmgcm__Cluster__JoinRequest *jr = q->join;
    char eb[200];
    if (!lc->in_cluster) {
        api_answer(r, false, "no cluster is defined on this node", NULL,
                    false, 0);
        return;
    }
    if (!is_master(lc)) {
        const pmm_cnode *m = pmm_cluster_master(&lc->cl);
        snprintf(eb, sizeof(eb), "this node is not the master; the master is "
                 "%s (%s)", m ? m->name : "?", m ? m->ip : "?");
        api_answer(r, false, eb, NULL, false, 0);
        return;
    }
    if (!jr || !jr->password || !jr->name || !jr->ip ||
        strlen(jr->password) > PMM_PASSWORD_MAX ||
        jr->node_id.len != GSP_ID_LEN || !jr->gossip_port ||
        jr->gossip_port > 65535 || !jr->api_port || jr->api_port > 65535 ||
        strlen(jr->name) > GSP_NAME_MAX || !pmm_ip_literal_ok(jr->ip)) {
        api_answer(r, false, "malformed join request", NULL, false, 0);
        return;
    }
    if (!lc->thr && !(lc->thr = pmm_thr_new(NULL, now_ms(lc)))) {
        api_answer(r, false, "internal error", NULL, false, 0);
        return;
    }
    join_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_answer(r, false, "internal error", NULL, false, 0);
        return;
    }
    j->lc = lc;
    j->r = r;
    snprintf(j->password, sizeof(j->password), "%s", jr->password);
    memcpy(j->salt, lc->cl.salt, PMM_SALT_LEN);
    j->iter = lc->cl.iter;
    pmm_cnode *c = &j->cand;
    snprintf(c->name, sizeof(c->name), "%s", jr->name);
    snprintf(c->ip, sizeof(c->ip), "%s", jr->ip);
    c->gossip_port = (uint16_t)jr->gossip_port;
    c->api_port = (uint16_t)jr->api_port;
    memcpy(c->node_id.b, jr->node_id.data, GSP_ID_LEN);
    if (jr->schema) j->schema = strdup(jr->schema); /* NULL: not compared */
    pmm_tls_fp fp;
    pmm_api_req_peer_fp(r, &fp);
    pmm_tls_fp_str(&fp, c->fp, sizeof(c->fp));
    /* validate the candidate as part of a config before any work */
    pmm_cluster probe;
    memset(&probe, 0, sizeof(probe));
    if (pmm_cluster_copy(&probe, &lc->cl) == 0) {
        uint32_t tmp;
        if (pmm_cluster_add(&probe, c, &tmp) == 0) {
            char why[160];
            /* name/ip/id clashes are reported after the password check */
            const pmm_cnode *clash = pmm_cluster_by_name(&lc->cl, c->name);
            if (!clash) clash = pmm_cluster_by_ip(&lc->cl, c->ip);
            if (!clash) clash = pmm_cluster_by_id(&lc->cl, &c->node_id);
            if (!clash && pmm_cluster_validate(&probe, true, why, sizeof(why))) {
                pmm_cluster_clear(&probe);
                join_job_free(j);
                snprintf(eb, sizeof(eb), "invalid join request: %s", why);
                api_answer(r, false, eb, NULL, false, 0);
                return;
            }
        }
        pmm_cluster_clear(&probe);
    }
    /* the throttle: one attempt at a time per /24 (/64), within the
     * cluster-wide budget of failures */
    eb[0] = '\0';
    {
        uint64_t retry = 0;
        char grp[64];
        pmm_src_str(pmm_api_req_src(r), true, grp, sizeof(grp));
        switch (pmm_thr_begin(lc->thr, pmm_api_req_src(r), now_ms(lc),
                              &j->thr_slot,
                              &retry)) {
        case PMM_THR_GO:
            break;
        case PMM_THR_BUSY:
            snprintf(eb, sizeof(eb), "another join attempt from this "
                     "address (%s) is in progress; retry later", grp);
            break;
        case PMM_THR_GLOBAL:
            snprintf(eb, sizeof(eb), "too many wrong join passwords on this "
                     "master recently (from any address); retry in %llu s",
                     (unsigned long long)(retry + 999) / 1000);
            lc_log(PMM_LOG_WARN, "join from %s refused: the cluster-wide "
                   "budget of wrong passwords is spent", pmm_api_req_ip(r));
            break;
        case PMM_THR_FULL:
            snprintf(eb, sizeof(eb), "too many addresses are trying join "
                     "passwords on this master; retry in %llu s",
                     (unsigned long long)(retry + 999) / 1000);
            lc_log(PMM_LOG_WARN, "join from %s refused: every throttle slot "
                   "holds a recently failing address", pmm_api_req_ip(r));
            break;
        }
        if (eb[0] != '\0') {
            join_job_free(j);
            api_answer(r, false, eb, NULL, false, 0);
            return;
        }
    }
    j->w.data = j;
    lc->refs++;
    if (uv_queue_work(lc->loop, &j->w, join_hash_work, join_hash_after)) {
        lc_unref(lc);
        pmm_thr_end(lc->thr, j->thr_slot, false, now_ms(lc));
        join_job_free(j);
        api_answer(r, false, "internal error", NULL, false, 0);
    }
}

static void handle_removed(pmm_lc *lc, pmm_api_req *r)
{
    const pmm_cnode *m = pmm_cluster_master(&lc->cl);
    pmm_tls_fp fp;
    char fps[PMM_TLS_FP_STR_SIZE] = "";
    if (pmm_api_req_peer_fp(r, &fp) == 0)
        pmm_tls_fp_str(&fp, fps, sizeof(fps));
    if (!m || pmm_tls_fp_str_eq(m->fp, fps) != 1) {
        api_answer(r, false, "only the master can remove this node", NULL,
                   false, 0);
        return;
    }
    api_answer(r, true, NULL, NULL, false, 0);
    removed_from_cluster(lc, "deleted by the master");
}

/* The request in frame, or NULL with r answered. */
static Req *api_unpack(pmm_api_req *r, const uint8_t *frame, size_t len)
{
    Req *q = pmgcm__cluster__request__unpack(NULL, len, frame);
    if (!q) api_answer(r, false, "malformed request", NULL, false, 0);
    return q;
}

static void on_join(void *ud, pmm_api_req *r, const uint8_t *frame,
                    size_t len)
{
    Req *q = api_unpack(r, frame, len);
    if (!q) return;
    handle_join(ud, r, q);
    pmgcm__cluster__request__free_unpacked(q, NULL);
}

static void on_fetch(void *ud, pmm_api_req *r, const uint8_t *frame,
                     size_t len)
{
    pmm_lc *lc = ud;
    (void)frame;
    (void)len;
    if (!lc->in_cluster)
        api_answer(r, false, "no cluster is defined on this node", NULL,
                   false, 0);
    else if (!pmm_api_req_member(r))
        api_answer(r, false, "not a member of this cluster", NULL, false, 0);
    else
        api_answer(r, true, NULL, &lc->cl, true, 0);
}

static void on_removed(void *ud, pmm_api_req *r, const uint8_t *frame,
                       size_t len)
{
    pmm_lc *lc = ud;
    (void)frame;
    (void)len;
    if (!lc->in_cluster || !pmm_api_req_member(r))
        api_answer(r, false, "refused", NULL, false, 0);
    else
        handle_removed(lc, r);
}

/* The gate of the node API: the config's nodes are the known ones. */
static bool gate_known(void *ud, const char *fp)
{
    pmm_lc *lc = ud;
    return lc->in_cluster && pmm_cluster_by_fp(&lc->cl, fp);
}

static size_t gate_nodes(void *ud)
{
    pmm_lc *lc = ud;
    return lc->in_cluster ? lc->cl.n_nodes : 1;
}

/* ---- control commands ------------------------------------------------------------ */

typedef struct create_job {
    uv_work_t w;
    pmm_lc *lc;
    pmm_ctl_req *ctl;
    char password[PMM_PASSWORD_MAX + 1];
    pmm_cluster cl;
    int rc;
} create_job;

static void create_work(uv_work_t *w)
{
    create_job *j = w->data;
    j->rc = pmm_password_hash(j->password, j->cl.salt, j->cl.iter, j->cl.hash);
    memset(j->password, 0, sizeof(j->password));
}

static void create_saved(pmm_lc *lc, int rc, void *arg)
{
    pmm_ctl_req *ctl = arg;
    if (rc == -ECANCELED) return;
    if (rc) {
        lc->in_cluster = false;
        pmm_cluster_clear(&lc->cl);
        pmm_ctl_reply_error(ctl, "cannot write %s/%s: %s", lc->data_dir,
                            PMM_CLUSTER_FILE, strerror(-rc));
        return;
    }
    install_keys(lc);
    set_seeds(lc, false);
    announce(lc);
    changed(lc);
    lc_log(PMM_LOG_INFO, "cluster created; this node is master (cid 1)");
    pmm_ctl_reply_ok_with(ctl, json_pack("{s:i, s:o}", "cid", 1,
                                         "fingerprint",
                                         pmm_jstrz(pmm_lc_fingerprint(lc))));
}

static void create_body(create_job *j, int status, pmm_lc *lc)
{
    if (status || j->rc || lc->closing) {
        if (!lc->closing) pmm_ctl_reply_error(j->ctl, "hashing the password failed");
        pmm_cluster_clear(&j->cl);
        free(j);
        return;
    }
    if (lc->in_cluster) {
        pmm_ctl_reply_error(j->ctl, "cluster already defined");
        pmm_cluster_clear(&j->cl);
        free(j);
        return;
    }
    lc->cl = j->cl;
    lc->in_cluster = true;
    pmm_ctl_req *ctl = j->ctl;
    free(j);
    save(lc, create_saved, ctl);
}

static void create_after(uv_work_t *w, int status)
{
    create_job *j = w->data;
    pmm_lc *lc = j->lc;
    create_body(j, status, lc);
    lc_unref(lc);
}

static void cmd_create(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *pw = pmm_json_get(args, "password");
    if (lc->in_cluster) {
        pmm_ctl_reply_error(ctl, "cluster already defined");
        return;
    }
    if (!pw || pw->type != PMM_JSON_STRING || !pw->str_len ||
        pw->str_len > PMM_PASSWORD_MAX || strlen(pw->str) != pw->str_len) {
        pmm_ctl_reply_error(ctl, "a join password of 1 to %d bytes is needed",
                            PMM_PASSWORD_MAX);
        return;
    }
    if (pmm_utf8_chars(pw->str, pw->str_len) < PMM_CREATE_PASSWORD_MIN) {
        pmm_ctl_reply_error(ctl, "the join password is too short: it has %zu "
                            "characters, at least %d are needed (anyone who "
                            "reaches the node API can try passwords)",
                            pmm_utf8_chars(pw->str, pw->str_len),
                            PMM_CREATE_PASSWORD_MIN);
        return;
    }
    create_job *j = calloc(1, sizeof(*j));
    if (!j) {
        pmm_ctl_reply_error(ctl, "out of memory");
        return;
    }
    j->lc = lc;
    j->ctl = ctl;
    snprintf(j->password, sizeof(j->password), "%s", pw->str);
    pmm_cluster *c = &j->cl;
    c->nodes = calloc(1, sizeof(*c->nodes));
    if (!c->nodes || gsp_random(c->cluster_id, sizeof(c->cluster_id)) ||
        gsp_random(c->salt, sizeof(c->salt)) ||
        gsp_random(c->keys[0], GSP_KEY_LEN)) {
        pmm_cluster_clear(c);
        free(j);
        pmm_ctl_reply_error(ctl, "cannot generate cluster secrets");
        return;
    }
    c->n_keys = 1;
    c->epoch = 1;
    c->version = 1;
    c->master_cid = 1;
    c->maxcid = 1;
    c->iter = PMM_PBKDF2_ITER;
    c->n_nodes = 1;
    pmm_cnode *n = &c->nodes[0];
    n->cid = 1;
    n->master = true;
    snprintf(n->name, sizeof(n->name), "%s", lc->env.cfg->name);
    self_ip(lc, n->ip, sizeof(n->ip));
    n->gossip_port = lc->env.cfg->advertise.port;
    n->api_port = lc->env.api_port;
    n->node_id = lc->env.node_id;
    snprintf(n->fp, sizeof(n->fp), "%s", pmm_lc_fingerprint(lc));
    j->w.data = j;
    lc->refs++;
    if (uv_queue_work(lc->loop, &j->w, create_work, create_after)) {
        lc_unref(lc);
        pmm_cluster_clear(c);
        free(j);
        pmm_ctl_reply_error(ctl, "cannot start the password hash");
    }
}

/* "1.2.3.4", "1.2.3.4:7947", "[::1]:7947", "::1" -> ip + port */
static int parse_target(const char *s, char *ip, size_t iplen, uint16_t *port)
{
    gsp_addr a;
    if (gsp_addr_parse(&a, s, PMM_DEFAULT_API_PORT)) return -EINVAL;
    gsp_addr_ip_str(&a, ip, iplen);
    *port = a.port;
    return 0;
}

static void fp_probe_done(op *o, int rc, const Resp *resp)
{
    char buf[PMM_TLS_FP_STR_SIZE];
    if (o->got_fp) {
        pmm_tls_fp_str(&o->seen_fp, buf, sizeof(buf));
        pmm_ctl_reply_ok_with(o->ctl, json_pack("{s:o}", "fingerprint",
                                                pmm_jstrz(buf)));
    } else {
        pmm_ctl_reply_error(o->ctl, "cannot reach %s: %s", o->target,
                            pmm_strerror(rc));
    }
    o->ctl = NULL;
}

static void cmd_fingerprint(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *ipj = pmm_json_get(args, "ip");
    char ip[PMM_IP_STR_MAX + 1];
    uint16_t port;
    if (!ipj || ipj->type != PMM_JSON_STRING ||
        parse_target(ipj->str, ip, sizeof(ip), &port)) {
        pmm_ctl_reply_error(ctl, "bad master address");
        return;
    }
    op *o = calloc(1, sizeof(*o));
    if (!o) {
        pmm_ctl_reply_error(ctl, "out of memory");
        return;
    }
    o->ctl = ctl;
    o->done = fp_probe_done;
    int rc = op_start(lc, o, ip, port, NULL, NULL);
    if (rc) pmm_ctl_reply_error(ctl, "cannot connect to %s: %s", ip, strerror(-rc));
}

typedef struct join_ctx {
    char master_ip[PMM_IP_STR_MAX + 1];
} join_ctx;

static void joined_saved(pmm_lc *lc, int rc, void *arg)
{
    pmm_ctl_req *ctl = arg;
    if (rc == -ECANCELED) return;
    if (rc) {
        pmm_ctl_reply_error(ctl, "joined, but cannot write %s/%s: %s",
                            lc->data_dir, PMM_CLUSTER_FILE, strerror(-rc));
        return;
    }
    const pmm_cnode *me = self_node(lc);
    pmm_ctl_reply_ok_with(ctl, json_pack("{s:I}", "cid",
                                         (json_int_t)(me ? me->cid : 0)));
}

static void join_done(op *o, int rc, const Resp *resp)
{
    pmm_lc *lc = o->lc;
    pmm_ctl_req *ctl = o->ctl;
    o->ctl = NULL;
    if (rc) {
        if (rc == PMM_TLS_EFINGERPRINT) {
            char seen[PMM_TLS_FP_STR_SIZE] = "?";
            if (o->got_fp) pmm_tls_fp_str(&o->seen_fp, seen, sizeof(seen));
            pmm_ctl_reply_error(ctl, "fingerprint mismatch: %s presented a "
                                "certificate with a different fingerprint",
                                o->target);
        } else {
            pmm_ctl_reply_error(ctl, "cannot reach the master at %s: %s",
                                o->target, pmm_strerror(rc));
        }
        return;
    }
    if (!resp->ok || !resp->config) {
        pmm_ctl_reply_error(ctl, "join refused by %s: %s", o->target,
                            resp->error ? resp->error : "no reason given");
        return;
    }
    if (lc->in_cluster) {
        pmm_ctl_reply_error(ctl, "cluster already defined");
        return;
    }
    pmm_cluster nc;
    memset(&nc, 0, sizeof(nc));
    char why[160];
    if (pmm_cluster_from_pb(&nc, resp->config, true, why, sizeof(why))) {
        pmm_ctl_reply_error(ctl, "the master sent an invalid config: %s", why);
        return;
    }
    const pmm_cnode *me = pmm_cluster_by_id(&nc, &lc->env.node_id);
    if (!me) {
        pmm_cluster_clear(&nc);
        pmm_ctl_reply_error(ctl, "the master's config does not list this node");
        return;
    }
    lc->cl = nc;
    lc->in_cluster = true;
    lc_log(PMM_LOG_INFO, "joined cluster as cid %u (config epoch %llu "
           "version %llu)", me->cid, (unsigned long long)nc.epoch,
           (unsigned long long)nc.version);
    install_keys(lc);
    set_seeds(lc, true);
    changed(lc);
    save(lc, joined_saved, ctl);
}

static void cmd_join(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *ipj = pmm_json_get(args, "ip");
    const pmm_json *fpj = pmm_json_get(args, "fingerprint");
    const pmm_json *pw = pmm_json_get(args, "password");
    char ip[PMM_IP_STR_MAX + 1];
    uint16_t port;
    pmm_tls_fp fp;
    if (lc->in_cluster) {
        pmm_ctl_reply_error(ctl, "cluster already defined on this node");
        return;
    }
    if (!ipj || ipj->type != PMM_JSON_STRING ||
        parse_target(ipj->str, ip, sizeof(ip), &port)) {
        pmm_ctl_reply_error(ctl, "bad master address");
        return;
    }
    if (!fpj || fpj->type != PMM_JSON_STRING || pmm_tls_fp_parse(&fp, fpj->str)) {
        pmm_ctl_reply_error(ctl, "bad fingerprint: expected 32 colon-separated "
                            "hex pairs");
        return;
    }
    if (!pw || pw->type != PMM_JSON_STRING || !pw->str_len ||
        pw->str_len > PMM_PASSWORD_MAX || strlen(pw->str) != pw->str_len) {
        pmm_ctl_reply_error(ctl, "a join password is needed");
        return;
    }
    op *o = calloc(1, sizeof(*o));
    if (!o) {
        pmm_ctl_reply_error(ctl, "out of memory");
        return;
    }
    o->ctl = ctl;
    o->done = join_done;
    Req r = PMGCM__CLUSTER__REQUEST__INIT;
    Pmgcm__Cluster__JoinRequest jr = PMGCM__CLUSTER__JOIN_REQUEST__INIT;
    r.kind = PMGCM__CLUSTER__REQUEST__KIND__JOIN;
    r.join = &jr;
    char myip[PMM_IP_STR_MAX + 1];
    self_ip(lc, myip, sizeof(myip));
    jr.password = pw->str;
    jr.name = (char *)lc->env.cfg->name;
    jr.ip = myip;
    jr.gossip_port = lc->env.cfg->advertise.port;
    jr.api_port = lc->env.api_port;
    jr.node_id.data = lc->env.node_id.b;
    jr.node_id.len = GSP_ID_LEN;
    /* our replicated tables, for the master to compare before admitting
     * us (a joiner's request is small: large schemas are checked at the
     * snapshot instead) */
    const char *schema = lc->env.schema ? lc->env.schema(lc->env.ud) : NULL;
    if (schema && strlen(schema) <= 48 * 1024) jr.schema = (char *)schema;
    char fps[PMM_TLS_FP_STR_SIZE];
    pmm_tls_fp_str(&fp, fps, sizeof(fps));
    int rc = op_start(lc, o, ip, port, fps, &r);
    if (rc) pmm_ctl_reply_error(ctl, "cannot connect to %s: %s", ip, strerror(-rc));
}

void pmm_join_command(const pmm_cnode *m, char *buf, size_t len)
{
    char target[80];
    if (m->api_port == PMM_DEFAULT_API_PORT)
        snprintf(target, sizeof(target), "%s", m->ip);
    else if (strchr(m->ip, ':'))
        snprintf(target, sizeof(target), "[%s]:%u", m->ip, m->api_port);
    else
        snprintf(target, sizeof(target), "%s:%u", m->ip, m->api_port);
    snprintf(buf, len, "pmgcm join %s --fingerprint %s", target, m->fp);
}

static void cmd_join_cmd(pmm_lc *lc, pmm_ctl_req *ctl)
{
    const pmm_cnode *m = lc->in_cluster ? pmm_cluster_master(&lc->cl) : NULL;
    if (!m) {
        pmm_ctl_reply_error(ctl, "no cluster defined");
        return;
    }
    char cmd[300];
    pmm_join_command(m, cmd, sizeof(cmd));
    pmm_ctl_reply_ok_with(ctl, json_pack("{s:o}", "command", pmm_jstrz(cmd)));
}

/* ---- update-fingerprints ------------------------------------------------------ */

/* {"cmd":"update-fingerprints"} on the master: this node's own entry is
 * refreshed from its own identity (no network: safe), every other node is
 * probed over its node API and what its certificate says now is reported,
 * never pinned: a certificate seen over the network proves nothing (anyone
 * answering on that address could show one, and a pinned fingerprint
 * lets its holder in as a member). pmgcm shows the changes, the admin
 * confirms each against the node itself, and pmgcm then sends
 * {"cmd":"update-fingerprints","cid":N,"fingerprint":FP}, which pins
 * exactly what was confirmed. */

typedef struct upfp_node {
    uint32_t cid;
    char name[GSP_NAME_MAX + 1];
    char ip[PMM_IP_STR_MAX + 1];
    char old_fp[PMM_TLS_FP_STR_SIZE];
    char new_fp[PMM_TLS_FP_STR_SIZE];
    const char *state; /* "unchanged" "changed" "updated" "unreachable" */
    char error[96];
} upfp_node;

typedef struct upfp_round {
    pmm_ctl_req *ctl;
    size_t n, pending;
    bool self_updated;
    upfp_node nodes[];
} upfp_round;

static void upfp_reply(pmm_lc *lc, upfp_round *r)
{
    json_t *nodes = json_array();
    size_t changed_n = 0;

    (void)lc;
    for (size_t i = 0; i < r->n && nodes != NULL; i++) {
        const upfp_node *u = &r->nodes[i];
        if (strcmp(u->state, "changed") == 0) changed_n++;
        json_t *o = json_pack("{s:I, s:o, s:o, s:s, s:o}", "cid",
                              (json_int_t)u->cid, "name", pmm_jstrz(u->name),
                              "ip", pmm_jstrz(u->ip), "state", u->state,
                              "fingerprint", pmm_jstrz(u->old_fp));
        if (u->new_fp[0])
            o = pmm_jadd(o, "presented", pmm_jstrz(u->new_fp));
        if (u->error[0])
            o = pmm_jadd(o, "error", pmm_jstrz(u->error));
        if (json_array_append_new(nodes, o) != 0) { /* o released */
            json_decref(nodes);
            nodes = NULL;
        }
    }
    /* NULL nodes: json_pack fails, the answer says "out of memory" */
    pmm_ctl_reply_ok_with(r->ctl, json_pack("{s:o, s:I}", "nodes", nodes,
                                            "changed",
                                            (json_int_t)changed_n));
    free(r);
}

static void upfp_self_saved(pmm_lc *lc, int rc, void *arg)
{
    upfp_round *r = arg;
    if (rc == -ECANCELED) {
        pmm_ctl_reply_error(r->ctl, "pmgclusterd is shutting down");
        free(r);
        return;
    }
    if (rc) {
        pmm_ctl_reply_error(r->ctl, "cannot write %s/%s: %s", lc->data_dir,
                            PMM_CLUSTER_FILE, strerror(-rc));
        free(r);
        return;
    }
    announce(lc);
    changed(lc);
    upfp_reply(lc, r);
}

static void upfp_round_done(pmm_lc *lc, upfp_round *r)
{
    if (r->self_updated) {
        save(lc, upfp_self_saved, r);
        return;
    }
    upfp_reply(lc, r);
}

static void upfp_probe_done(op *o, int rc, const Resp *resp)
{
    upfp_round *r = o->ud;
    upfp_node *u = &r->nodes[o->attempt];
    (void)resp;
    if (rc == -ECANCELED) {
        u->state = "unreachable";
        snprintf(u->error, sizeof(u->error), "pmgclusterd is shutting down");
    } else if (o->got_fp) {
        pmm_tls_fp_str(&o->seen_fp, u->new_fp, sizeof(u->new_fp));
        u->state = pmm_tls_fp_str_eq(u->old_fp, u->new_fp) == 1 ? "unchanged"
                                                                 : "changed";
        if (strcmp(u->state, "unchanged") == 0) u->new_fp[0] = '\0';
    } else {
        u->state = "unreachable";
        snprintf(u->error, sizeof(u->error), "%s", pmm_strerror(rc));
    }
    if (--r->pending > 0) return;
    if (o->lc->closing) {
        pmm_ctl_reply_error(r->ctl, "pmgclusterd is shutting down");
        free(r);
        return;
    }
    upfp_round_done(o->lc, r);
}

typedef struct upfp_set {
    pmm_ctl_req *ctl;
    uint32_t cid;
    char old_fp[PMM_TLS_FP_STR_SIZE], new_fp[PMM_TLS_FP_STR_SIZE];
} upfp_set;

static void upfp_set_saved(pmm_lc *lc, int rc, void *arg)
{
    upfp_set *st = arg;
    if (rc == -ECANCELED) {
        pmm_ctl_reply_error(st->ctl, "pmgclusterd is shutting down");
    } else if (rc) {
        pmm_ctl_reply_error(st->ctl, "cannot write %s/%s: %s", lc->data_dir,
                            PMM_CLUSTER_FILE, strerror(-rc));
    } else {
        announce(lc);
        changed(lc);
        lc_log(PMM_LOG_INFO, "update-fingerprints: node cid %u pinned to %s "
               "(was %s)", st->cid, st->new_fp, st->old_fp);
        pmm_ctl_reply_ok_with(
            st->ctl, json_pack("{s:I, s:o, s:o, s:b}", "cid",
                               (json_int_t)st->cid, "fingerprint",
                               pmm_jstrz(st->new_fp), "old",
                               pmm_jstrz(st->old_fp), "updated", 1));
    }
    free(st);
}

/* {"cid":N,"fingerprint":FP}: pin what the admin confirmed */
static void upfp_set_one(pmm_lc *lc, pmm_ctl_req *ctl, uint32_t cid,
                         const char *fps)
{
    pmm_tls_fp fp;
    pmm_cnode *n = NULL;
    upfp_set *st;

    if (pmm_tls_fp_parse(&fp, fps)) {
        pmm_ctl_reply_error(ctl, "update-fingerprints: bad fingerprint (32 "
                            "hex pairs joined by ':')");
        return;
    }
    for (size_t i = 0; i < lc->cl.n_nodes; i++)
        if (lc->cl.nodes[i].cid == cid) n = &lc->cl.nodes[i];
    if (!n) {
        pmm_ctl_reply_error(ctl, "no node with cid %u", cid);
        return;
    }
    if (n == self_node(lc)) {
        pmm_ctl_reply_error(ctl, "cid %u is this node: its fingerprint is "
                            "read from its own certificate (run "
                            "update-fingerprints without a cid)", cid);
        return;
    }
    st = calloc(1, sizeof(*st));
    if (!st) {
        pmm_ctl_reply_error(ctl, "out of memory");
        return;
    }
    st->ctl = ctl;
    st->cid = cid;
    snprintf(st->old_fp, sizeof(st->old_fp), "%s", n->fp);
    pmm_tls_fp_str(&fp, st->new_fp, sizeof(st->new_fp));
    if (pmm_tls_fp_str_eq(n->fp, st->new_fp) == 1) {
        pmm_ctl_reply_ok_with(
            ctl, json_pack("{s:I, s:o, s:b}", "cid", (json_int_t)cid,
                           "fingerprint", pmm_jstrz(st->new_fp), "updated",
                           0));
        free(st);
        return;
    }
    snprintf(n->fp, sizeof(n->fp), "%s", st->new_fp);
    lc->cl.version++;
    save(lc, upfp_set_saved, st);
}

static void cmd_update_fp(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *cj = pmm_json_get(args, "cid");
    const pmm_json *fj = pmm_json_get(args, "fingerprint");

    if (!lc->in_cluster) {
        pmm_ctl_reply_error(ctl, "no cluster defined");
        return;
    }
    if (!is_master(lc)) {
        const pmm_cnode *m = pmm_cluster_master(&lc->cl);
        pmm_ctl_reply_error(ctl, "only the master can update fingerprints; "
                            "the master is %s (%s)", m ? m->name : "?",
                            m ? m->ip : "?");
        return;
    }
    if (lc->rot_stage) {
        pmm_ctl_reply_error(ctl, "a key rotation is still in progress; retry "
                            "in a few seconds");
        return;
    }
    if ((cj == NULL) != (fj == NULL)) {
        pmm_ctl_reply_error(ctl, "update-fingerprints: \"cid\" and "
                            "\"fingerprint\" go together");
        return;
    }
    if (cj) {
        upfp_set_one(lc, ctl, (uint32_t)cj->num, fj->str);
        return;
    }
    upfp_round *r = calloc(1, sizeof(*r) + lc->cl.n_nodes * sizeof(upfp_node));
    if (!r) {
        pmm_ctl_reply_error(ctl, "out of memory");
        return;
    }
    r->ctl = ctl;
    r->n = lc->cl.n_nodes;
    r->pending = 1; /* held until every probe started */
    for (size_t i = 0; i < lc->cl.n_nodes; i++) {
        pmm_cnode *n = &lc->cl.nodes[i];
        upfp_node *u = &r->nodes[i];
        u->cid = n->cid;
        snprintf(u->name, sizeof(u->name), "%s", n->name);
        snprintf(u->ip, sizeof(u->ip), "%s", n->ip);
        snprintf(u->old_fp, sizeof(u->old_fp), "%s", n->fp);
        u->state = "unreachable";
        if (n == self_node(lc)) {
            const char *mine = pmm_lc_fingerprint(lc);
            if (mine && pmm_tls_fp_str_eq(n->fp, mine) != 1) {
                snprintf(u->new_fp, sizeof(u->new_fp), "%s", mine);
                snprintf(n->fp, sizeof(n->fp), "%s", mine);
                u->state = "updated";
                r->self_updated = true;
                lc_log(PMM_LOG_INFO, "update-fingerprints: this node's own "
                       "entry now %s (was %s)", mine, u->old_fp);
            } else {
                u->state = "unchanged";
            }
            continue;
        }
        op *o = calloc(1, sizeof(*o));
        if (!o) {
            snprintf(u->error, sizeof(u->error), "out of memory");
            continue;
        }
        o->done = upfp_probe_done;
        o->always = true;
        o->ud = r;
        o->attempt = (int)i;
        r->pending++;
        int rc = op_start(lc, o, n->ip, n->api_port, NULL, NULL);
        if (rc) {
            r->pending--;
            snprintf(u->error, sizeof(u->error), "%s", strerror(-rc));
        }
    }
    if (r->self_updated) lc->cl.version++;
    if (--r->pending == 0) upfp_round_done(lc, r);
}

/* ---- delete and the key rotation ----------------------------------------------- */

static void rot_step(pmm_lc *lc);
static void heal_fast(pmm_lc *lc);

static void tell_removed_done(op *o, int rc, const Resp *resp)
{
    if (rc == 0 && resp && resp->ok)
        lc_log(PMM_LOG_INFO, "deleted node at %s acknowledged its removal",
               o->target);
    else
        lc_log(PMM_LOG_INFO, "deleted node at %s was not told (%s); it is "
               "locked out by the key rotation", o->target,
               rc ? strerror(rc < -500 ? EIO : -rc) : "refused");
}

typedef struct del_ctx {
    pmm_ctl_req *ctl;
    pmm_cnode gone;
} del_ctx;

static void rot_saved(pmm_lc *lc, int rc, void *arg)
{
    (void)arg;
    if (rc == -ECANCELED) return;
    if (rc) {
        lc_log(PMM_LOG_ERROR, "key rotation: cannot write config");
        return;
    }
    install_keys(lc);
    announce(lc);
    changed(lc);
    lc->rot_version = lc->cl.version;
    lc->rot_deadline = now_ms(lc) + ROT_WAIT_MS;
    if (!lc->rot_stage && lc->rot_ctl) {
        lc_log(PMM_LOG_INFO, "node cid %u deleted; gossip key rotated",
               lc->rot_cid);
        pmm_ctl_reply_ok_with(lc->rot_ctl,
                              json_pack("{s:I, s:b}", "cid",
                                        (json_int_t)lc->rot_cid,
                                        "key_rotated", 1));
        lc->rot_ctl = NULL;
    }
}

static void delete_saved(pmm_lc *lc, int rc, void *arg)
{
    del_ctx *d = arg;
    if (rc == -ECANCELED) {
        free(d);
        return;
    }
    if (rc) {
        pmm_ctl_reply_error(d->ctl, "cannot write the config: %s", strerror(-rc));
        free(d);
        return;
    }
    install_keys(lc);
    set_seeds(lc, false);
    announce(lc);
    changed(lc);
    lc->rot_stage = 1;
    lc->rot_version = lc->cl.version;
    lc->rot_deadline = now_ms(lc) + ROT_WAIT_MS;
    heal_fast(lc);
    lc->rot_ctl = d->ctl;
    lc->rot_cid = d->gone.cid;
    /* tell the deleted node, pinned to its own certificate */
    op *o = calloc(1, sizeof(*o));
    if (o) {
        Req r = PMGCM__CLUSTER__REQUEST__INIT;
        r.kind = PMGCM__CLUSTER__REQUEST__KIND__REMOVED;
        o->done = tell_removed_done;
        op_start(lc, o, d->gone.ip, d->gone.api_port, d->gone.fp, &r);
    }
    free(d);
}

static void cmd_delete(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *cj = pmm_json_get(args, "cid");
    if (!lc->in_cluster) {
        pmm_ctl_reply_error(ctl, "no cluster defined");
        return;
    }
    if (!is_master(lc)) {
        const pmm_cnode *m = pmm_cluster_master(&lc->cl);
        pmm_ctl_reply_error(ctl, "only the master can delete nodes; the master "
                            "is %s (%s)", m ? m->name : "?", m ? m->ip : "?");
        return;
    }
    if (!cj || cj->type != PMM_JSON_NUMBER || cj->num < 1 ||
        cj->num > PMM_CLUSTER_CID_MAX || cj->num != (double)(uint32_t)cj->num) {
        pmm_ctl_reply_error(ctl, "bad cid");
        return;
    }
    uint32_t cid = (uint32_t)cj->num;
    if (cid == lc->cl.master_cid) {
        pmm_ctl_reply_error(ctl, "cannot delete the master (cid %u)", cid);
        return;
    }
    const pmm_cnode *n = pmm_cluster_by_cid(&lc->cl, cid);
    if (!n) {
        pmm_ctl_reply_error(ctl, "no node with cid %u", cid);
        return;
    }
    if (lc->rot_stage) {
        pmm_ctl_reply_error(ctl, "a key rotation is still in progress; retry "
                            "in a few seconds");
        return;
    }
    if (lc->cl.n_keys >= GSP_KEYRING_MAX) {
        pmm_ctl_reply_error(ctl, "keyring full");
        return;
    }
    del_ctx *d = calloc(1, sizeof(*d));
    uint8_t k[GSP_KEY_LEN];
    if (!d || gsp_random(k, sizeof(k))) {
        free(d);
        pmm_ctl_reply_error(ctl, "cannot generate a new key");
        return;
    }
    const pmm_json *pj = pmm_json_get(args, "purge");
    bool purge = pj && pj->type == PMM_JSON_BOOL && pj->b;
    d->ctl = ctl;
    d->gone = *n;
    pmm_cluster_remove(&lc->cl, cid);
    if (purge) {
        /* every node removes that node's per-origin rows (repl.c) */
        if (lc->cl.n_purged == PMM_PURGED_MAX) {
            memmove(lc->cl.purged, lc->cl.purged + 1,
                    (PMM_PURGED_MAX - 1) * sizeof(lc->cl.purged[0]));
            lc->cl.n_purged--;
        }
        lc->cl.purged[lc->cl.n_purged++] = cid;
    }
    /* stage 1: everyone gets the new key, the old one still seals */
    memcpy(lc->cl.keys[lc->cl.n_keys++], k, GSP_KEY_LEN);
    memset(k, 0, sizeof(k));
    lc->cl.version++;
    lc_log(PMM_LOG_INFO, "deleting %s (cid %u)%s; rotating the gossip key",
           d->gone.name, cid, purge ? " and purging its rows" : "");
    save(lc, delete_saved, d);
}

/* Have all live nodes of the config reached rot_version? */
static bool all_caught_up(pmm_lc *lc)
{
    for (size_t i = 0; i < lc->cl.n_nodes; i++) {
        const pmm_cnode *n = &lc->cl.nodes[i];
        if (n->master) continue;
        gsp_member m;
        if (gsp_core_get(core(lc), &n->node_id, &m) || m.state != GSP_ALIVE)
            continue; /* not live: it fetches when it returns */
        pmm_meta meta;
        if (!m.meta_len || pmm_meta_decode(&meta, m.meta, m.meta_len))
            return false;
        if (meta.cfg_epoch < lc->cl.epoch ||
            (meta.cfg_epoch == lc->cl.epoch && meta.cfg_version < lc->rot_version))
            return false;
    }
    return true;
}

static void rot_step(pmm_lc *lc)
{
    if (!lc->rot_stage || lc->save_busy || !is_master(lc)) return;
    if (lc->cl.version != lc->rot_version) return; /* write pending */
    bool ready = all_caught_up(lc);
    if (!ready && now_ms(lc) < lc->rot_deadline) return;
    if (!ready)
        lc_log(PMM_LOG_WARN, "key rotation: not every live node confirmed "
               "config version %llu within %d s; continuing",
               (unsigned long long)lc->rot_version, ROT_WAIT_MS / 1000);
    if (lc->rot_stage == 1) {
        /* stage 2: the new key seals, the old one still opens */
        uint8_t nk[GSP_KEY_LEN];
        memcpy(nk, lc->cl.keys[lc->cl.n_keys - 1], GSP_KEY_LEN);
        memmove(lc->cl.keys[1], lc->cl.keys[0],
                (lc->cl.n_keys - 1) * GSP_KEY_LEN);
        memcpy(lc->cl.keys[0], nk, GSP_KEY_LEN);
        memset(nk, 0, sizeof(nk));
        lc->rot_stage = 2;
    } else {
        /* stage 3: only the new key */
        lc->cl.n_keys = 1;
        lc->rot_stage = 0;
    }
    lc->cl.version++;
    lc->rot_version = lc->cl.version;
    save(lc, rot_saved, NULL);
}

/* ---- promote and sync ---------------------------------------------------------- */

/* A key rotation cut short -- the master restarted or another node was
 * promoted in the middle of it -- leaves more than one key in the ring,
 * among them a key the deleted node knows, for good. The master finishes
 * it from scratch with a fresh key: stage 1 again, every key in the ring
 * keeps opening until the fresh one seals, then only the fresh one. */
static void rot_resume(pmm_lc *lc)
{
    uint8_t k[GSP_KEY_LEN];
    if (!is_master(lc) || lc->rot_stage || lc->cl.n_keys < 2) return;
    if (lc->cl.n_keys >= GSP_KEYRING_MAX || gsp_random(k, sizeof(k))) {
        lc_log(PMM_LOG_ERROR, "cannot finish an interrupted key rotation");
        return;
    }
    memcpy(lc->cl.keys[lc->cl.n_keys++], k, GSP_KEY_LEN);
    memset(k, 0, sizeof(k));
    lc->cl.version++;
    lc->rot_stage = 1;
    lc->rot_version = lc->cl.version;
    lc->rot_deadline = now_ms(lc) + ROT_WAIT_MS;
    heal_fast(lc);
    lc->rot_ctl = NULL;
    lc_log(PMM_LOG_WARN, "finishing an interrupted gossip key rotation with "
           "a fresh key");
    save(lc, rot_saved, NULL);
}

static void promote_saved(pmm_lc *lc, int rc, void *arg)
{
    pmm_ctl_req *ctl = arg;
    if (rc == -ECANCELED) return;
    if (rc) {
        pmm_ctl_reply_error(ctl, "cannot write the config: %s", strerror(-rc));
        return;
    }
    announce(lc);
    changed(lc);
    rot_resume(lc);
    json_t *m = json_pack("{s:I, s:I}", "epoch", (json_int_t)lc->cl.epoch,
                          "cid", (json_int_t)lc->cl.master_cid);
    if (lc->promote_lost[0])
        m = pmm_jadd(m, "lost", pmm_jstrz(lc->promote_lost));
    pmm_ctl_reply_ok_with(ctl, m);
}

/* A promote whose only obstacle is that this node is behind a live node
 * waits while it catches up (it does by itself: it follows the master, or
 * the most advanced live node while the master is down), at most
 * PROMOTE_WAIT_MS, and gives up when its position, once it began to move,
 * stops moving for PROMOTE_STUCK_MS: then it cannot catch up from that
 * node, and promote refuses (a position that never moves is refused at
 * PROMOTE_WAIT_MS). */
#define PROMOTE_WAIT_MS 60000
#define PROMOTE_STUCK_MS 5000
#define PROMOTE_POLL_MS 300

static void promote_step(pmm_lc *lc);

static void promo_timer_cb(uv_timer_t *t)
{
    pmm_lc *lc = t->data;
    if (!lc->closing && lc->promo_ctl) promote_step(lc);
}

static void promote_reply_error(pmm_lc *lc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void promote_reply_error(pmm_lc *lc, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    pmm_ctl_req *ctl = lc->promo_ctl;
    lc->promo_ctl = NULL;
    pmm_ctl_reply_error(ctl, "%s", msg);
}

static void cmd_promote(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *fj = pmm_json_get(args, "force");
    const pmm_json *aj = pmm_json_get(args, "accept_data_loss");
    if (lc->promo_ctl) {
        pmm_ctl_reply_error(ctl, "a promote is already waiting on this node");
        return;
    }
    lc->promo_ctl = ctl;
    lc->promo_force = fj && fj->type == PMM_JSON_BOOL && fj->b;
    lc->promo_accept = aj && aj->type == PMM_JSON_BOOL && aj->b;
    lc->promo_deadline = now_ms(lc) + PROMOTE_WAIT_MS;
    lc->promo_moved_at = now_ms(lc);
    lc->promo_seq = UINT64_MAX; /* the first step samples it */
    lc->promo_moved = false;
    lc->promo_said = false;
    promote_step(lc);
}

static void promote_step(pmm_lc *lc)
{
    bool force = lc->promo_force, accept = lc->promo_accept;
    if (!lc->in_cluster) {
        promote_reply_error(lc, "no cluster defined");
        return;
    }
    const pmm_cnode *me = self_node(lc);
    if (!me) {
        promote_reply_error(lc, "this node is not in the cluster config");
        return;
    }
    if (me->master) {
        promote_reply_error(lc, "this node is already the master");
        return;
    }
    /* this node's data must be complete (--force does not change that;
     * --accept-data-loss does, saying what is lost) */
    lc->promote_lost[0] = '\0';
    if (lc->env.promote_check) {
        char why[1100], lost[sizeof(lc->promote_lost)];
        bool waitable = false;
        uint64_t seq = 0;
        lost[0] = '\0';
        int bad = lc->env.promote_check(lc->env.ud, accept, why, sizeof(why),
                                        lost, sizeof(lost), &waitable, &seq);
        if (bad < 0) {
            promote_reply_error(lc, "%s", why);
            return;
        }
        if (bad && waitable) {
            /* behind a live node: wait while it catches up */
            uint64_t now = now_ms(lc);
            if (seq != lc->promo_seq) {
                if (lc->promo_seq != UINT64_MAX) lc->promo_moved = true;
                lc->promo_seq = seq;
                lc->promo_moved_at = now;
            }
            /* "stuck" only once the catch-up has begun: right after the
             * master died, the store first has to learn that (gossip) and
             * connect to the most advanced live node, which on a loaded
             * machine can take longer than PROMOTE_STUCK_MS */
            if (now < lc->promo_deadline &&
                (!lc->promo_moved ||
                 now - lc->promo_moved_at < PROMOTE_STUCK_MS)) {
                if (!lc->promo_said)
                    lc_log(PMM_LOG_INFO, "promote: waiting for this node to "
                           "catch up first: %s", why);
                lc->promo_said = true;
                uv_timer_start(&lc->promo_timer, promo_timer_cb,
                               PROMOTE_POLL_MS, 0);
                return;
            }
            lc_log(PMM_LOG_WARN, "promote %s (it did not catch up: %s)", why,
                   now >= lc->promo_deadline ? "still behind after 60 s"
                                             : "its position stopped moving");
            promote_reply_error(lc, "%s (it did not catch up: %s)", why,
                                now >= lc->promo_deadline
                                    ? "still behind after 60 s"
                                    : "its position stopped moving");
            return;
        }
        if (bad) {
            lc_log(PMM_LOG_WARN, "promote %s", why);
            promote_reply_error(lc, "%s", why);
            return;
        }
        snprintf(lc->promote_lost, sizeof(lc->promote_lost), "%s", lost);
    }
    const pmm_cnode *m = pmm_cluster_master(&lc->cl);
    gsp_member gm;
    if (m && !force && gsp_core_get(core(lc), &m->node_id, &gm) == 0 &&
        (gm.state == GSP_ALIVE || gm.state == GSP_SUSPECT)) {
        promote_reply_error(lc, "the master %s (cid %u) is %s; use --force "
                            "to promote anyway", m->name, m->cid,
                            gm.state == GSP_ALIVE ? "alive" : "only suspected");
        return;
    }
    if (lc->cl.epoch >= UINT32_MAX) {
        promote_reply_error(lc, "epoch exhausted");
        return;
    }
    pmm_ctl_req *ctl = lc->promo_ctl;
    lc->promo_ctl = NULL;
    uint32_t cid = me->cid;
    lc->cl.epoch++;
    lc->cl.version++;
    pmm_cluster_set_master(&lc->cl, cid);
    lc->rot_stage = 0;
    lc_log(PMM_LOG_WARN, "promoted: this node (cid %u) is master under epoch "
           "%llu%s%s", cid, (unsigned long long)lc->cl.epoch,
           force ? " (forced)" : "", accept ? " (--accept-data-loss)" : "");
    if (lc->promote_lost[0]) {
        /* logged, and kept in the store (status shows it until cleared) */
        lc_log(PMM_LOG_WARN, "promote --accept-data-loss: the cluster loses "
               "this: %s", lc->promote_lost);
        if (lc->env.note) lc->env.note(lc->env.ud, "promote", lc->promote_lost);
    }
    save(lc, promote_saved, ctl);
}

static void cmd_sync(pmm_lc *lc, pmm_ctl_req *ctl, const pmm_json *args)
{
    const pmm_json *mj = pmm_json_get(args, "master_ip");
    if (!lc->in_cluster) {
        pmm_ctl_reply_error(ctl, "no cluster defined");
        return;
    }
    if (mj && mj->type == PMM_JSON_STRING) {
        const pmm_cnode *n = pmm_cluster_by_ip(&lc->cl, mj->str);
        if (!n) {
            pmm_ctl_reply_error(ctl, "%s is not a node of this cluster", mj->str);
            return;
        }
        if (n == self_node(lc)) {
            pmm_ctl_reply_error(ctl, "%s is this node", mj->str);
            return;
        }
        fetch_from(lc, n, 0, ctl, n->ip);
        return;
    }
    if (is_master(lc) && lc->cl.n_nodes == 1) {
        sync_reply(lc, ctl, 0);
        return;
    }
    if (lc->fetching) {
        pmm_ctl_reply_error(ctl, "a fetch is already running; retry");
        return;
    }
    lc->fetch_hint_cid = lc->cl.master_cid;
    lc->fetching = true;
    op tmp;
    memset(&tmp, 0, sizeof(tmp));
    tmp.lc = lc;
    tmp.attempt = -1;
    tmp.ctl = ctl;
    fetch_next(lc, &tmp);
}

void pmm_lc_ctl(pmm_lc *lc, pmm_ctl_req *req, const char *cmd,
                const pmm_json *args)
{
    if (!strcmp(cmd, "create")) cmd_create(lc, req, args);
    else if (!strcmp(cmd, "fingerprint")) cmd_fingerprint(lc, req, args);
    else if (!strcmp(cmd, "join")) cmd_join(lc, req, args);
    else if (!strcmp(cmd, "join-cmd")) cmd_join_cmd(lc, req);
    else if (!strcmp(cmd, "delete")) cmd_delete(lc, req, args);
    else if (!strcmp(cmd, "promote")) cmd_promote(lc, req, args);
    else if (!strcmp(cmd, "sync")) cmd_sync(lc, req, args);
    else if (!strcmp(cmd, "update-fingerprints")) cmd_update_fp(lc, req, args);
    else pmm_ctl_reply_error(req, "unknown command '%s'", cmd);
}

/* ---- self-healing timer --------------------------------------------------------- */

static void heal_cb(uv_timer_t *t)
{
    pmm_lc *lc = t->data;
    if (!lc->in_cluster || lc->closing) return;
    rot_step(lc);
    gsp_stats st;
    gsp_core_stats(core(lc), &st);
    bool alone = gsp_core_count(core(lc), 1 << GSP_ALIVE) <= 1 &&
                 lc->cl.n_nodes > 1;
    bool drops = st.drop_decrypt > lc->last_drops + 20;
    lc->last_drops = st.drop_decrypt;
    /* nobody answers, or lots of packets we cannot open: our config (and
     * keyring) may be stale -- ask the config's nodes over TLS */
    if ((alone || drops) && !lc->fetching) {
        lc_log(PMM_LOG_DEBUG, "%s: fetching the config",
               alone ? "no live peer" : "undecryptable gossip");
        fetch_newer(lc, 0);
    }
}

/* The timer ticks every second while a key rotation runs (its steps wait
 * on other nodes) and every HEAL_INTERVAL_MS otherwise: an idle node wakes
 * up as rarely as it can. Healing itself runs every HEAL_INTERVAL_MS. */
static void heal_fast_cb(uv_timer_t *t)
{
    pmm_lc *lc = t->data;
    if (lc->closing) return;
    rot_step(lc);
    uint64_t now = now_ms(lc);
    if (now >= lc->next_heal_ms) {
        lc->next_heal_ms = now + HEAL_INTERVAL_MS;
        heal_cb(t);
    }
    uint64_t want = lc->rot_stage ? 1000 : HEAL_INTERVAL_MS;
    if (uv_timer_get_repeat(t) != want) uv_timer_start(t, heal_fast_cb, want, want);
}

/* A rotation started: check its steps every second. */
static void heal_fast(pmm_lc *lc)
{
    if (!lc->closing && uv_timer_get_repeat(&lc->heal_timer) != 1000)
        lc->next_heal_ms = uv_now(lc->loop) + HEAL_INTERVAL_MS;
    uv_timer_start(&lc->heal_timer, heal_fast_cb, 1000, HEAL_INTERVAL_MS);
}

/* ---- start / close ---------------------------------------------------------------- */

int pmm_lc_start(pmm_lc **out, const pmm_lc_env *env, char *err,
                 size_t errlen)
{
    *out = NULL;
    pmm_lc *lc = calloc(1, sizeof(*lc));
    if (!lc) return -ENOMEM;
    lc->env = *env;
    lc->loop = env->loop;
    lc->api = env->api;
    snprintf(lc->data_dir, sizeof(lc->data_dir), "%s", env->cfg->data_dir);
    char why[200] = "";
    int rc = pmm_cluster_load(lc->data_dir, &lc->cl, why, sizeof(why));
    if (rc == 0) {
        if (!pmm_cluster_by_id(&lc->cl, &env->node_id)) {
            snprintf(err, errlen, "%s/%s does not list this node's id",
                     lc->data_dir, PMM_CLUSTER_FILE);
            pmm_cluster_clear(&lc->cl);
            free(lc);
            return -EINVAL;
        }
        lc->in_cluster = true;
        install_keys(lc);
        set_seeds(lc, true);
        const pmm_cnode *me = self_node(lc);
        lc_log(PMM_LOG_INFO, "cluster config epoch %llu version %llu: this "
               "node is %s (cid %u)", (unsigned long long)lc->cl.epoch,
               (unsigned long long)lc->cl.version,
               me->master ? "master" : "a node", me->cid);
    } else if (rc != -ENOENT) {
        snprintf(err, errlen, "%s", why);
        free(lc);
        return rc;
    }
    /* the node API: lifecycle's requests, and who counts as a node */
    pmm_api_gate gate = {.known = gate_known, .nodes = gate_nodes, .ud = lc};
    pmm_api_set_gate(lc->api, &gate);
    pmm_api_register(lc->api, PMGCM__CLUSTER__REQUEST__KIND__JOIN,
                     PMM_API_ANYONE, on_join, lc, NULL);
    pmm_api_register(lc->api, PMGCM__CLUSTER__REQUEST__KIND__FETCH,
                     PMM_API_ANYONE, on_fetch, lc, NULL);
    pmm_api_register(lc->api, PMGCM__CLUSTER__REQUEST__KIND__REMOVED,
                     PMM_API_ANYONE, on_removed, lc, NULL);
    uv_timer_init(lc->loop, &lc->heal_timer);
    lc->heal_timer.data = lc;
    lc->refs++;
    uv_timer_init(lc->loop, &lc->promo_timer);
    lc->promo_timer.data = lc;
    lc->refs++;
    lc->next_heal_ms = uv_now(lc->loop) + HEAL_INTERVAL_MS;
    uv_timer_start(&lc->heal_timer, heal_fast_cb, 1000, HEAL_INTERVAL_MS);
    if (lc->in_cluster && is_master(lc)) announce(lc);
    if (lc->in_cluster) rot_resume(lc);
    *out = lc;
    return 0;
}

bool pmm_lc_config_synced(const pmm_lc *lc)
{
    if (!lc || !lc->in_cluster) return false;
    return lc->cl.epoch > lc->seen_epoch ||
           (lc->cl.epoch == lc->seen_epoch && lc->cl.version >= lc->seen_version);
}

bool pmm_lc_removed(const pmm_lc *lc, const char **why, int64_t *at)
{
    if (!lc || lc->in_cluster || lc->removed_at == 0) return false;
    if (why) *why = lc->removed_why;
    if (at) *at = lc->removed_at;
    return true;
}

const pmm_cluster *pmm_lc_cluster(const pmm_lc *lc)
{
    return lc && lc->in_cluster ? &lc->cl : NULL;
}

void pmm_lc_join_stats(pmm_lc *lc, pmm_thr_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!lc) return;
    if (lc->thr) {
        pmm_thr_stats_get(lc->thr, now_ms(lc), out);
    } else {
        pmm_thr_cfg d;
        pmm_thr_cfg_default(&d);
        out->tokens = d.burst;
    }
}

const char *pmm_lc_fingerprint(const pmm_lc *lc)
{
    return pmm_tls_identity_fp_str(pmm_api_identity(lc->api));
}

/* ---- what other services use (files.c) --------------------------------------- */

int pmm_lc_call_master(pmm_lc *lc, const Req *req, pmm_lc_resp_fn fn,
                       void *ud)
{
    if (!lc->in_cluster || lc->closing) return -ENOENT;
    const pmm_cnode *m = pmm_cluster_master(&lc->cl);
    if (!m) return -ENOENT;
    if (m == self_node(lc)) return -EALREADY;
    op *o = calloc(1, sizeof(*o));
    if (!o) return -ENOMEM;
    o->ext_fn = fn;
    o->ext_ud = ud;
    o->cid = m->cid;
    return op_start(lc, o, m->ip, m->api_port, m->fp, req);
}

static void files_digest_saved(pmm_lc *lc, int rc, void *arg)
{
    (void)arg;
    if (rc == -ECANCELED) return;
    if (rc) {
        lc_log(PMM_LOG_ERROR, "mirrored files: cannot write the config: %s",
               strerror(-rc));
        return;
    }
    announce(lc);
    changed(lc);
}

int pmm_lc_set_files_digest(pmm_lc *lc, const uint8_t digest[PMM_HASH_LEN])
{
    if (!lc->in_cluster || lc->closing) return -ENOENT;
    if (!is_master(lc)) return -EPERM;
    if (lc->cl.has_files_digest &&
        !memcmp(lc->cl.files_digest, digest, PMM_HASH_LEN))
        return 0;
    /* a rotation waits for every node to reach its own version */
    if (lc->rot_stage) return -EBUSY;
    if (lc->cl.version >= UINT32_MAX) return -EOVERFLOW;
    memcpy(lc->cl.files_digest, digest, PMM_HASH_LEN);
    lc->cl.has_files_digest = true;
    lc->cl.version++;
    lc_log(PMM_LOG_INFO, "mirrored files changed: config version %llu",
           (unsigned long long)lc->cl.version);
    save(lc, files_digest_saved, NULL);
    return 0;
}

static void lc_unref(pmm_lc *lc)
{
    lc->refs--;
    if (!lc->closing || lc->refs > 0) return;
    pmm_cluster_clear(&lc->cl);
    pmm_thr_free(lc->thr);
    free(lc);
}

static void heal_closed(uv_handle_t *h)
{
    lc_unref(h->data);
}

void pmm_lc_close(pmm_lc *lc)
{
    if (!lc || lc->closing) return;
    lc->closing = true;
    if (lc->rot_ctl) {
        pmm_ctl_reply_error(lc->rot_ctl, "daemon shutting down");
        lc->rot_ctl = NULL;
    }
    if (lc->promo_ctl) {
        pmm_ctl_reply_error(lc->promo_ctl, "daemon shutting down");
        lc->promo_ctl = NULL;
    }
    uv_close((uv_handle_t *)&lc->promo_timer, heal_closed);
    for (op *o = lc->ops; o; o = o->next) {
        if (o->ctl) {
            pmm_ctl_reply_error(o->ctl, "daemon shutting down");
            o->ctl = NULL;
        }
        pmm_api_call_abort(o->call);
    }
    /* the node API outlives lc: nothing of it may reach lc any more */
    pmm_api_set_gate(lc->api, NULL);
    pmm_api_register(lc->api, PMGCM__CLUSTER__REQUEST__KIND__JOIN,
                     PMM_API_ANYONE, NULL, NULL, "pmgclusterd is shutting down");
    pmm_api_register(lc->api, PMGCM__CLUSTER__REQUEST__KIND__FETCH,
                     PMM_API_ANYONE, NULL, NULL, "pmgclusterd is shutting down");
    pmm_api_register(lc->api, PMGCM__CLUSTER__REQUEST__KIND__REMOVED,
                     PMM_API_ANYONE, NULL, NULL, "pmgclusterd is shutting down");
    uv_close((uv_handle_t *)&lc->heal_timer, heal_closed);
}
