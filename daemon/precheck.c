/*
 * precheck.c - the checks `pmgcm promote` runs before it changes anything
 * (daemon.h), and the view they look at.
 */
#include "daemon/daemon.h"

#include <stdio.h>
#include <string.h>

const pmm_promote_peer *pmm_promote_best(const pmm_promote_view *v,
                                         bool live_only)
{
    const pmm_promote_peer *best = NULL;

    for (size_t i = 0; i < v->n_peers; i++) {
        const pmm_promote_peer *p = &v->peers[i];
        if (!p->has_db || !p->loaded || (live_only && !p->live))
            continue;
        if (best == NULL || pst_pos_cmp(p->pos, best->pos) > 0)
            best = p;
    }
    return best;
}

/* "node2 (cid 2) at 1/20003" */
static const char *peer_words(const pmm_promote_peer *p, char *buf,
                              size_t len)
{
    snprintf(buf, len, "%s (cid %u) at %llu/%llu", p->name, p->cid,
             (unsigned long long)p->pos.epoch,
             (unsigned long long)p->pos.seq);
    return buf;
}

/* Where the cluster's data is, for a refusal: the live node with the most
 * advanced data, else the last known one. */
static void where_data_is(const pmm_promote_view *v, char *buf, size_t len)
{
    const pmm_promote_peer *live = pmm_promote_best(v, true);
    const pmm_promote_peer *any = pmm_promote_best(v, false);
    char w[160];

    if (live != NULL)
        snprintf(buf, len, "the live node with the most advanced data is %s:"
                 " promote that one", peer_words(live, w, sizeof(w)));
    else if (any != NULL)
        snprintf(buf, len, "no live node holds loaded data; the most advanced"
                 " one last seen is %s, not alive: start it and promote it,"
                 " or see 'Disaster recovery' (--accept-data-loss)",
                 peer_words(any, w, sizeof(w)));
    else
        snprintf(buf, len, "no node is known to hold loaded data; see"
                 " 'Disaster recovery' (--accept-data-loss)");
}

/* The database answers (not overridable: a master must take writes). */
static int check_database(const pmm_promote_view *v, char *why, size_t len,
                          char *lost, size_t lostlen)
{
    (void)lost;
    (void)lostlen;
    if (!v->has_db)
        return 0;
    if (v->db.db_down) {
        snprintf(why, len, "this node's database is down (%.160s): start it"
                 " first", v->db.error);
        return 1;
    }
    if (!v->db.ready) {
        snprintf(why, len, "this node's database is not set up yet%s%.160s",
                 v->db.error[0] ? ": " : "", v->db.error);
        return 1;
    }
    return 0;
}

/* A snapshot is in (promote would make partial or no data the truth). */
static int check_loaded(const pmm_promote_view *v, char *why, size_t len,
                        char *lost, size_t lostlen)
{
    char where[400], w[160];
    const pmm_promote_peer *best;

    if (!v->has_db || (v->db.loaded && v->db.state != PST_LOADING))
        return 0;
    where_data_is(v, where, sizeof(where));
    if (v->db.state == PST_LOADING)
        snprintf(why, len, "this node's data is not loaded (loading a "
                 "snapshot: %u %%): promoting it would replace the "
                 "cluster's data with a partial copy; %s", v->db.load_pct,
                 where);
    else
        snprintf(why, len, "this node's data is not loaded (no snapshot "
                 "yet, or it kept changes committed here while it was not "
                 "the master and waits for its resync): promoting it would "
                 "replace the cluster's data with what this node holds; %s",
                 where);
    best = pmm_promote_best(v, false);
    if (best != NULL)
        snprintf(lost, lostlen, "this node holds no loaded data; %s holds "
                 "the cluster's data: every node that follows this one "
                 "replaces its tables with this node's (their rows are kept "
                 "in backup schemas: pmgcm backups)",
                 peer_words(best, w, sizeof(w)));
    else
        snprintf(lost, lostlen, "this node holds no loaded data: every node "
                 "that follows it replaces its tables with this node's "
                 "(their rows are kept in backup schemas: pmgcm backups)");
    return 1;
}

/* Not behind a live node by more than a stream in flight. */
static int check_caught_up(const pmm_promote_view *v, char *why, size_t len,
                           char *lost, size_t lostlen)
{
    const pmm_promote_peer *best;
    char w[160];
    pst_pos me;

    if (!v->has_db || !v->db.loaded)
        return 0;
    best = pmm_promote_best(v, true);
    me = v->db.pos;
    if (best == NULL || pst_pos_cmp(best->pos, me) <= 0)
        return 0;
    if (best->pos.epoch == me.epoch &&
        best->pos.seq - me.seq <= PST_SYNC_LAG_MAX)
        return 0; /* the promote's catch-up fetches that much first */
    if (best->pos.epoch == me.epoch)
        snprintf(why, len, "this node is %llu changes behind %s (this node "
                 "at %llu/%llu); retry when `pmgcm status` shows it A, or "
                 "promote %s",
                 (unsigned long long)(best->pos.seq - me.seq),
                 peer_words(best, w, sizeof(w)),
                 (unsigned long long)me.epoch, (unsigned long long)me.seq,
                 best->name);
    else
        snprintf(why, len, "this node's data is of an older term than %s "
                 "(this node at %llu/%llu); retry when `pmgcm status` shows "
                 "it A, or promote %s",
                 peer_words(best, w, sizeof(w)),
                 (unsigned long long)me.epoch, (unsigned long long)me.seq,
                 best->name);
    snprintf(lost, lostlen, "this node is at %llu/%llu, %s: the changes it "
             "lacks are lost to the cluster (the nodes that hold them keep "
             "them in backups when they resync: pmgcm backups)",
             (unsigned long long)me.epoch, (unsigned long long)me.seq,
             peer_words(best, w, sizeof(w)));
    return 1;
}

/* The mirrored files are in sync (a files_dir out of sync never becomes
 * the truth). Overridable: the new master then publishes nothing it was
 * not told to (files.h: it holds its directory for `pmgcm files publish
 * --confirm`), so nothing is removed on the nodes meanwhile. */
static int check_files(const pmm_promote_view *v, char *why, size_t len,
                       char *lost, size_t lostlen)
{
    if (!v->files_rc)
        return 0;
    snprintf(why, len, "%s", v->files_why);
    snprintf(lost, lostlen, "this node's files_dir does not hold the "
             "cluster's mirrored files: as master it publishes no files "
             "until an admin runs `pmgcm files publish --confirm` (or copies "
             "the files from a node that has them); the nodes keep theirs "
             "meanwhile");
    return 1;
}

const pmm_promote_check pmm_promote_checks[] = {
    {"database", false, false, check_database},
    {"data loaded", true, false, check_loaded},
    {"caught up", true, true, check_caught_up},
    {"files in sync", true, false, check_files},
};
const size_t pmm_promote_n_checks =
    sizeof(pmm_promote_checks) / sizeof(pmm_promote_checks[0]);

int pmm_promote_precheck(const pmm_promote_view *v, bool accept, char *why,
                         size_t len, char *lost, size_t lostlen,
                         const pmm_promote_check **failed)
{
    why[0] = '\0';
    lost[0] = '\0';
    if (failed) *failed = NULL;
    for (size_t i = 0; i < pmm_promote_n_checks; i++) {
        const pmm_promote_check *c = &pmm_promote_checks[i];
        char w[1024], l[512];

        w[0] = l[0] = '\0';
        if (c->run(v, w, sizeof(w), l, sizeof(l)) == 0)
            continue;
        if (accept && c->overridable) {
            size_t n = strlen(lost);
            if (l[0] != '\0' && n + 3 < lostlen)
                snprintf(lost + n, lostlen - n, "%s%s", n ? "; " : "", l);
            continue;
        }
        snprintf(why, len, "refused (%s): %s", c->name, w);
        if (failed) *failed = c;
        return 1;
    }
    return 0;
}

/* ---- the view: this node's store and files, the others' gossip ---- */

/* The files check's refusal (files.h pmm_files_promote_ready): 0, or the
 * reason in why, which names the live nodes whose files_dir is in sync
 * (from their gossiped metadata). */
static int files_ready(const pmm_files *f, const pmm_cluster *cl,
                       const pmm_cnode *me, gsp_core *core, char *why,
                       size_t len)
{
    int rc = pmm_files_promote_ready(f, cl, why, len);
    if (!rc) return 0;
    uint64_t tag = pmm_files_digest_tag(cl->files_digest);
    size_t o = strlen(why), named = 0;
    for (size_t i = 0; i < cl->n_nodes && o < len; i++) {
        const pmm_cnode *n = &cl->nodes[i];
        gsp_member m;
        pmm_meta meta;
        if (n == me || gsp_core_get(core, &n->node_id, &m) ||
            m.state != GSP_ALIVE || !m.meta_len ||
            pmm_meta_decode(&meta, m.meta, m.meta_len) ||
            meta.files_sync != tag)
            continue;
        o += (size_t)snprintf(why + o, len - o, "%s%s (cid %u)",
                              named ? ", " : "; in sync: ", n->name, n->cid);
        named++;
    }
    if (!named && o < len)
        snprintf(why + o, len - o, "; no live node reports its files in "
                 "sync");
    return rc;
}

void pmm_promote_view_fill(pmm_promote_view *v, const pmm_cluster *cl,
                           const gsp_id *self, gsp_core *core,
                           const struct pmm_repl *r, const pmm_files *f)
{
    memset(v, 0, sizeof(*v));
    if (r) {
        v->has_db = true;
        pmm_repl_info(r, &v->db);
    }
    const pmm_cnode *me = pmm_cluster_by_id(cl, self);
    for (size_t i = 0; i < cl->n_nodes && v->n_peers < PMM_PROMOTE_PEERS_MAX;
         i++) {
        const pmm_cnode *n = &cl->nodes[i];
        gsp_member gm;
        pmm_meta meta;
        if (n == me) continue;
        pmm_promote_peer *p = &v->peers[v->n_peers++];
        snprintf(p->name, sizeof(p->name), "%s", n->name);
        p->cid = n->cid;
        if (gsp_core_get(core, &n->node_id, &gm) != 0) continue;
        p->live = gm.state == GSP_ALIVE || gm.state == GSP_SUSPECT;
        if (!gm.meta || pmm_meta_decode(&meta, gm.meta, gm.meta_len) != 0 ||
            !meta.db_state)
            continue;
        p->has_db = true;
        p->loaded = meta.db_loaded;
        snprintf(p->db_state, sizeof(p->db_state), "%s",
                 pst_state_name((pst_state)meta.db_state));
        p->pos.epoch = meta.db_epoch;
        p->pos.seq = meta.db_seq;
    }
    v->files_rc = files_ready(f, cl, me, core, v->files_why,
                              sizeof(v->files_why));
}
