/*
 * role.c - roles (master, follower, out of a cluster), log retention,
 * purging a deleted origin.
 */
#define _GNU_SOURCE
#include "store/internal.h"
#include "store/pgoutput.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- purge an origin (pmgcm delete --purge) ---------------------------------- */

typedef struct purge_job {
    pst_job j;
    uint32_t cid;
    void (*done)(void *ud, int rc);
    void *ud;
} purge_job;

static void purge_run(pst_job *j, PGconn *c)
{
    purge_job *pj = (purge_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char cid[16];
    snprintf(cid, sizeof(cid), "%u", pj->cid);
    int rc = pst_exec(c, "BEGIN", err, el);
    if (rc) goto out;
    PGresult *r = pst_otables(c, err, el);
    if (!r) {
        rc = PST_EDB;
        goto out;
    }
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        char *q = NULL;
        if (asprintf(&q, "DELETE FROM %s WHERE %s::text = '%s'",
                     PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), cid) < 0) {
            rc = -ENOMEM;
            break;
        }
        rc = pst_exec(c, q, err, el);
        free(q);
    }
    PQclear(r);
    if (rc) goto out;
    const char *pv[1] = {cid};
    r = PQexecParams(c, "DELETE FROM pmgcm.olog WHERE origin = $1::int", 1,
                     NULL, pv, NULL, NULL, 0);
    PQclear(r);
    r = PQexecParams(c, "DELETE FROM pmgcm.opos WHERE origin = $1::int", 1,
                     NULL, pv, NULL, NULL, 0);
    PQclear(r);
    rc = pst_exec(c, "COMMIT", err, el);
out:
    j->rc = rc;
}

static void purge_done(pst_job *j)
{
    purge_job *pj = (purge_job *)j;
    pst_store *st = j->st;
    if (!st->closing) {
        if (j->rc) {
            pst_set_error(st, "purging the rows of cid %u: %s", pj->cid, j->err);
        } else {
            for (size_t i = 0; i < st->n_opos; i++)
                if (st->opos[i].origin == pj->cid) {
                    st->opos[i] = st->opos[--st->n_opos];
                    break;
                }
            pst_log(st, 2, "store: purged every row of the deleted node cid %u",
                    pj->cid);
            pst_changed(st);
        }
    }
    if (pj->done) pj->done(pj->ud, j->rc);
    free(pj);
}

int pst_purge_origin(pst_store *st, uint32_t cid,
                     void (*done)(void *ud, int rc), void *ud)
{
    purge_job *pj = calloc(1, sizeof(*pj));
    if (!pj) return -ENOMEM;
    pj->cid = cid;
    pj->done = done;
    pj->ud = ud;
    pj->j.run = purge_run;
    pj->j.done = purge_done;
    pst_submit(st, &pj->j);
    return 0;
}

/* ---- roles ---------------------------------------------------------------------------- */

typedef struct role_req {
    pst_job j;
    struct role_req *next_req;
    bool in_cluster, master, mark_loaded;
    uint64_t epoch;
    uint32_t cid;
    char master_name[128];
    char cluster[65];
    void (*done)(void *ud, int rc);
    void *ud;
    /* results */
    pst_pos pos;
    char warn[360];
    bool loaded;
    bool checks_pending;
    bool reset;
    /* st->unload_gen as it read pmgcm.state (role_done) */
    uint64_t gen0;
    /* made master with data not loaded, which it adopted (its log
     * emptied, every node resyncs from this one) */
    bool adopted;
} role_req;

int pst_q1(PGconn *c, const char *sql, int n, const char *const *pv,
              PGresult **out, char *err, size_t errlen)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, pv, NULL, NULL, 0);
    ExecStatusType s = PQresultStatus(r);
    if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, errlen);
        PQclear(r);
        return PST_EDB;
    }
    if (out) *out = r;
    else PQclear(r);
    return 0;
}

/* How long a node about to become master waits for its capture's verdict
 * on what committed here before (role_settle). */
#define ROLE_CAPTURE_WAIT_MS 10000

static bool role_no_capture(void *ud)
{
    return !pst_capture_running(ud);
}

/* Before a follower becomes the master: its capture classifies every
 * commit made here so far first. A commit that is not the cluster's (a
 * released db_sync writer of a former master, a writer that slipped past
 * a step-down) is kept as divergence with the data marked not loaded, and
 * role_run then reads that verdict instead of a stale "loaded". Bounded;
 * without a capture thread there is nothing to wait for. */
static void role_settle(role_req *q, PGconn *c)
{
    pst_store *st = q->j.st;
    char e[200], txt[32];
    uint64_t lsn;
    if (!pst_capture_running(st)) return;
    if (pst_capture_wal_now(c, &lsn, e, sizeof(e)) != 0) {
        snprintf(q->warn, sizeof(q->warn), "becoming master without waiting"
                 " for the capture (reading the WAL position: %.200s)", e);
        return;
    }
    int rc = pst_capture_wait(st, lsn, ROLE_CAPTURE_WAIT_MS, role_no_capture,
                              st);
    if (rc) {
        pst_pgo_lsn_str(lsn, txt, sizeof(txt));
        snprintf(q->warn, sizeof(q->warn), "becoming master before the"
                 " capture classified what committed here up to WAL %s (%s):"
                 " a change committed here while this node was not the"
                 " master may still be found and kept as divergence",
                 txt, rc == -ETIMEDOUT ? "it did not get there in 10 s"
                                       : "it is not running");
    }
}

static void role_run(pst_job *j, PGconn *c)
{
    role_req *q = (role_req *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    int rc;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    PGresult *r;
    char slot[64];
    if ((rc = pst_slot_name(c, slot, sizeof(slot), err, el))) goto out;
    /* into a cluster: the slot exists before the role is committed, so
     * nothing written under the new role escapes the capture (a slot
     * missing while already in a cluster is the repair's business: a gap) */
    if (q->in_cluster) {
        if ((rc = pst_q1(c, "SELECT role FROM pmgcm.state", 0, NULL, &r, err,
                         el)))
            goto out;
        bool was_none = strcmp(PQgetvalue(r, 0, 0), "none") == 0;
        bool was_master0 = strcmp(PQgetvalue(r, 0, 0), "master") == 0;
        PQclear(r);
        if (was_none && (rc = pst_slot_create(j->st->conninfo, slot, err, el)))
            goto out;
        if (q->master && !was_none && !was_master0) role_settle(q, c);
    }
    if ((rc = pst_exec(c, "BEGIN", err, el))) goto out;
    if ((rc = pst_q1(c, "SELECT epoch, seq, recv_seq, role, loaded, cluster FROM"
                    " pmgcm.state FOR UPDATE", 0, NULL, &r, err, el)))
        goto out;
    uint64_t epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    uint64_t seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    uint64_t recv = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    bool was_master = strcmp(PQgetvalue(r, 0, 3), "master") == 0;
    bool was_in = strcmp(PQgetvalue(r, 0, 3), "none") != 0;
    q->loaded = PQgetvalue(r, 0, 4)[0] == 't';
    /* the row is ours: a "not loaded" with a later generation commits
     * after this transaction */
    q->gen0 = pst_unload_gen(j->st);
    bool other_cluster = q->cluster[0] &&
                         strcmp(PQgetvalue(r, 0, 5), q->cluster) != 0;
    PQclear(r);
    char eb[24], sb[24], cb[16];
    if (other_cluster) {
        const char *pc[1] = {q->cluster};
        if ((rc = pst_q1(c, "UPDATE pmgcm.state SET cluster = $1", 1, pc, NULL,
                     err, el)))
            goto out;
        if (q->in_cluster && !q->master) {
            /* data of another cluster (or none): start over */
            if ((rc = pst_exec(c,
                               "DELETE FROM pmgcm.log; DELETE FROM"
                               " pmgcm.epochs; UPDATE pmgcm.state SET"
                               " loaded = false, epoch = 0, seq = 0,"
                               " recv_seq = 0",
                               err, el)))
                goto out;
            q->loaded = false;
            epoch = seq = recv = 0;
            q->reset = true;
        }
    }
    if (q->mark_loaded) {
        rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = true", err, el);
        if (rc) goto out;
        q->loaded = true;
    }
    if (!q->in_cluster) {
        /* out of a cluster, writes go through uncaptured: the data is no
         * longer the cluster's, and a later join takes a snapshot */
        rc = pst_exec(c,
                      "UPDATE pmgcm.state SET loaded = (loaded AND"
                      " role = 'none'), role = 'none', master = '',"
                      " capture_lsn = NULL, master_lsn = NULL",
                      err, el);
        if (rc == 0) {
            PGresult *r2 = PQexec(c, "SELECT loaded FROM pmgcm.state");
            if (PQresultStatus(r2) == PGRES_TUPLES_OK && PQntuples(r2) == 1)
                q->loaded = PQgetvalue(r2, 0, 0)[0] == 't';
            PQclear(r2);
        }
    } else if (!q->master) {
        /* what commits from now on is not numbered here: the capture keeps
         * it in pmgcm.divergence (capture.c) */
        snprintf(cb, sizeof(cb), "%u", q->cid);
        const char *p1[2] = {q->master_name, cb};
        rc = pst_q1(c, "UPDATE pmgcm.state SET role = 'replica', master = $1,"
                   " cid = $2::int", 2, p1, NULL, err, el);
    } else {
        snprintf(cb, sizeof(cb), "%u", q->cid);
        /* A node of this cluster whose data is not loaded becomes master
         * under a new term (promote --accept-data-loss; or its capture
         * kept divergence, so its tables hold rows no log has): its
         * tables are the cluster's data from now on. Its log goes, the
         * new term's entry too: a node at or behind this one's position
         * finds nothing to stream from and takes a snapshot (serve.c:
         * NEED_SNAPSHOT); one ahead of it is told it DIVERGED (what it
         * holds past this position is lost to the cluster, and kept). */
        bool adopt = q->adopted = was_in && !q->loaded && !other_cluster &&
                                  q->epoch > epoch;
        if (q->epoch > epoch) {
            /* a new term: drop a received but incomplete batch, then an
             * epoch entry */
            snprintf(sb, sizeof(sb), "%llu", (unsigned long long)seq);
            const char *p1[1] = {sb};
            if ((rc = pst_q1(c, adopt ? "DELETE FROM pmgcm.log"
                                      : "DELETE FROM pmgcm.log WHERE seq >"
                                        " $1::bigint",
                             adopt ? 0 : 1, p1, NULL, err, el)))
                goto out;
            (void)recv;
            snprintf(eb, sizeof(eb), "%llu", (unsigned long long)q->epoch);
            snprintf(sb, sizeof(sb), "%llu", (unsigned long long)(seq + 1));
            const char *p3[3] = {eb, sb, cb};
            if ((!adopt &&
                 (rc = pst_q1(c,
                         "INSERT INTO pmgcm.log (seq, epoch, op, ts, last,"
                         " origin) VALUES ($2::bigint, $1::bigint, 'E',"
                         " clock_timestamp(), true, $3::int)",
                         3, p3, NULL, err, el))) ||
                (rc = pst_q1(c,
                         "INSERT INTO pmgcm.epochs VALUES ($1::bigint,"
                         " $2::bigint, $3::int) ON CONFLICT (epoch) DO UPDATE"
                         " SET start_seq = EXCLUDED.start_seq, master_cid ="
                         " EXCLUDED.master_cid",
                         3, p3, NULL, err, el)) ||
                (rc = pst_q1(c,
                         "UPDATE pmgcm.state SET epoch = $1::bigint, seq ="
                         " $2::bigint, recv_seq = $2::bigint, ts ="
                         " clock_timestamp()",
                         2, p3, NULL, err, el)))
                goto out;
            epoch = q->epoch;
            seq = seq + 1;
        }
        /* loaded: it created the cluster (or a new one), or it was
         * loaded, or it adopted its data above. Otherwise (the same term
         * again with data not loaded) it stays not loaded: its snapshots
         * are refused rather than spreading rows no log holds. */
        bool mark = !was_in || q->loaded || adopt || other_cluster;
        const char *p1[3] = {q->master_name, cb, mark ? "true" : "false"};
        rc = pst_q1(c, "UPDATE pmgcm.state SET role = 'master', master = $1,"
                   " cid = $2::int, loaded = $3::bool", 3, p1, NULL, err, el);
        /* the term begins here: transactions that commit after this point
         * are numbered; earlier ones (while not master) are not */
        if (rc == 0 && !was_master)
            rc = pst_exec(c, "UPDATE pmgcm.state SET master_lsn ="
                             " pg_current_wal_insert_lsn()", err, el);
        q->loaded = mark;
    }
    if (rc) goto out;
    q->pos.epoch = epoch;
    q->pos.seq = seq;
    /* the write checks of the new role (waits for writers in flight on
     * the tables, holds new ones until the commit) */
    if ((rc = pst_checks_try(c, q->in_cluster && q->master,
                             &q->checks_pending, err, el)))
        goto out;
    /* the fence last, right before the commit (it is not transactional):
     * writers whose snapshot predates this change read it as it is now */
    if ((rc = pst_exec(c,
                       !q->in_cluster ? "SELECT setval('pmgcm.fence', 2)"
                       : q->master    ? "SELECT setval('pmgcm.fence', 1)"
                                      : "SELECT setval('pmgcm.fence', 0)",
                       err, el)))
        goto out;
    if ((rc = pst_exec(c, "COMMIT", err, el))) goto out;
    /* out of the cluster: the slot would only hold WAL back */
    if (!q->in_cluster && was_in) {
        char e2[256];
        if (pst_slot_drop(c, slot, e2, sizeof(e2)) != 0)
            snprintf(q->warn, sizeof(q->warn), "dropping slot %.60s: %.250s", slot,
                     e2);
    }
out:
    j->rc = rc;
}

static void role_next(pst_store *st);

static void role_done(pst_job *j)
{
    role_req *q = (role_req *)j;
    pst_store *st = j->st;
    st->role_busy = false;
    st->roles_head = q->next_req;
    if (!st->roles_head) st->roles_tail = NULL;
    if (!st->closing) {
        if (j->rc) {
            pst_set_error(st, "setting the role: %s", j->err);
        } else {
            pst_info *i = &st->info;
            i->master = q->in_cluster && q->master;
            /* unless the capture kept divergence after this job read
             * the state (its result may reach the loop first) */
            pst_loaded_read(st, q->loaded, q->gen0);
            if (q->adopted)
                pst_log(st, 1, "store: this node became master with data"
                        " that was not loaded (promote --accept-data-loss, or"
                        " changes committed here while it was not the master):"
                        " its tables are the cluster's data from now on; its"
                        " log was emptied and term %llu begins at change %llu,"
                        " so every node resyncs from it by a snapshot (what a"
                        " node held past that is kept in pmgcm.divergence and"
                        " backups)",
                        (unsigned long long)q->pos.epoch,
                        (unsigned long long)q->pos.seq);
            if (q->in_cluster && q->master && !q->loaded)
                pst_log(st, 0, "store: this node is master but its data is"
                        " not loaded (changes committed here while it was not"
                        " the master are kept in pmgcm.divergence): it serves"
                        " no snapshot; promote a node that is in sync");
            if (q->reset) {
                i->pos = q->pos;
                i->recv_seq = q->pos.seq;
                i->head = q->pos;
                i->pos_ts_us = i->head_ts_us = 0;
            }
            if (q->in_cluster && q->master) {
                i->pos = q->pos;
                i->recv_seq = q->pos.seq;
                i->head = q->pos;
                i->state = PST_IN_SYNC;
            } else if (!q->in_cluster) {
                i->state = PST_IDLE;
            } else if (i->state == PST_IDLE || i->state == PST_IN_SYNC) {
                i->state = PST_CATCHING_UP;
            }
            if (q->warn[0]) pst_log(st, 1, "store: %s", q->warn);
            if (q->checks_pending) {
                pst_log(st, 1, "store: the write checks for the new role could"
                        " not lock the tables in time (writers hold them);"
                        " trying again in the background (meanwhile the"
                        " capture keeps what commits in pmgcm.divergence)");
                st->checks_pending = true;
                pst_checks_retry(st);
            }
            pst_changed(st);
            pst_capture_numbering(st, i->master && st->want_master);
            pst_capture_poke(st);
            pst_sync_update(st);
            pst_sync_apply(st);
            pst_sessions_head(st);
        }
    }
    if (q->done) q->done(q->ud, j->rc);
    free(q);
    if (!st->closing) role_next(st);
}

static void role_next(pst_store *st)
{
    if (st->role_busy || !st->roles_head || st->closing) return;
    if (!st->info.ready) return; /* retried from the tick via set_role */
    st->role_busy = true;
    role_req *q = st->roles_head;
    q->j.run = role_run;
    q->j.done = role_done;
    pst_submit(st, &q->j);
}

/* ---- the order of the loaded verdicts (internal.h) ------------------------------- */

uint64_t pst_unload_bump(pst_store *st)
{
    return __atomic_add_fetch(&st->unload_gen, 1, __ATOMIC_ACQ_REL);
}

uint64_t pst_unload_gen(pst_store *st)
{
    return __atomic_load_n(&st->unload_gen, __ATOMIC_ACQUIRE);
}

bool pst_loaded_read(pst_store *st, bool loaded, uint64_t gen)
{
    if (gen < st->loaded_gen) return false; /* a "not loaded" came after */
    st->loaded_gen = gen;
    st->info.loaded = loaded;
    return true;
}

bool pst_unloaded(pst_store *st, uint64_t gen)
{
    if (gen <= st->loaded_gen) return false; /* a read saw it */
    st->loaded_gen = gen;
    st->info.loaded = false;
    return true;
}

void pst_roles_kick(pst_store *st)
{
    role_next(st);
}

static int role_push(pst_store *st, role_req *q)
{
    q->next_req = NULL;
    if (st->roles_tail) st->roles_tail->next_req = q;
    else st->roles_head = q;
    st->roles_tail = q;
    role_next(st);
    return 0;
}

int pst_set_role(pst_store *st, bool in_cluster, bool master, uint64_t epoch,
                 uint32_t self_cid, const char *master_name,
                 const char *cluster, void (*done)(void *ud, int rc),
                 void *ud)
{
    role_req *q = calloc(1, sizeof(*q));
    if (!q) return -ENOMEM;
    q->in_cluster = in_cluster;
    q->master = master;
    q->epoch = epoch;
    q->cid = self_cid;
    snprintf(q->master_name, sizeof(q->master_name), "%s",
             master_name ? master_name : "");
    snprintf(q->cluster, sizeof(q->cluster), "%s", cluster ? cluster : "");
    q->done = done;
    q->ud = ud;
    st->self_cid = self_cid;
    st->want_master = in_cluster && master;
    if (!st->want_master) {
        st->info.master = false; /* stop numbering now */
        pst_capture_numbering(st, false);
    }
    return role_push(st, q);
}

int pst_mark_loaded(pst_store *st, void (*done)(void *ud, int rc), void *ud)
{
    role_req *q = calloc(1, sizeof(*q));
    if (!q) return -ENOMEM;
    /* keep the current role: repeat the last requested one */
    q->mark_loaded = true;
    q->in_cluster = st->want_master || st->info.state != PST_IDLE;
    q->master = st->want_master;
    q->epoch = st->info.pos.epoch;
    q->cid = st->self_cid;
    q->done = done;
    q->ud = ud;
    return role_push(st, q);
}

void pst_roles_free(pst_store *st)
{
    role_req *q = st->roles_head;
    if (st->role_busy && q) q = q->next_req; /* owned by the job */
    while (q) {
        role_req *n = q->next_req;
        if (q->done) q->done(q->ud, -ECANCELED);
        free(q);
        q = n;
    }
    st->roles_head = st->roles_tail = NULL;
}


/* The one-row state tables are updated at every numbering pass and
 * apply: their dead rows must go long before autovacuum's next round.
 * TRUNCATE false: shrinking the table at the end of a VACUUM takes an
 * ACCESS EXCLUSIVE lock, which the capture's and the apply's next
 * SELECT ... FOR UPDATE of the state row would wait for (up to the 20 ms
 * VACUUM checks for waiters at); the emptied pages are reused anyway. */
static void vacuum_run(pst_job *j, PGconn *c)
{
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    j->rc = pst_exec(c, "VACUUM (SKIP_LOCKED, TRUNCATE false) pmgcm.state,"
                        " pmgcm.opos", j->err, sizeof(j->err));
}

static void vacuum_done(pst_job *j)
{
    pst_store *st = j->st;
    st->vacuum_busy = false;
    if (j->rc && !st->closing)
        pst_log(st, 3, "store: vacuum: %s", j->err);
    free(j);
}

void pst_start_vacuum(pst_store *st)
{
    if (!st->info.ready || st->vacuum_busy || st->closing) return;
    pst_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->run = vacuum_run;
    j->done = vacuum_done;
    st->vacuum_busy = true;
    pst_submit(st, j);
}

typedef struct trim_job {
    pst_job j;
    uint32_t keep_s;
} trim_job;

static void trim_run(pst_job *j, PGconn *c)
{
    trim_job *t = (trim_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char kb[16];
    snprintf(kb, sizeof(kb), "%u", t->keep_s);
    const char *pv[1] = {kb};
    /* keep the newest entry so a caught-up node can always be served.
     * The entries before the first one inside the retention, found in
     * seq order (the primary key): the scan reads only what goes, where a
     * filter on ts (not indexed) read the whole log every TRIM_EVERY_MS
     * on every node. ts follows seq (commit order), so this is what
     * "ts < cutoff" removes; an entry out of order waits a round. */
    j->rc = pst_q1(c,
               "DELETE FROM pmgcm.log WHERE seq < (SELECT least(s.seq,"
               " coalesce((SELECT l.seq FROM pmgcm.log l WHERE l.ts >= now()"
               " - make_interval(secs => $1::int) ORDER BY l.seq LIMIT 1),"
               " s.seq)) FROM pmgcm.state s)",
               1, pv, NULL, j->err, sizeof(j->err));
}

static void trim_done(pst_job *j)
{
    pst_store *st = j->st;
    st->trim_busy = false;
    if (j->rc && !st->closing)
        pst_log(st, 1, "store: trimming the change log: %s", j->err);
    free(j);
}

void pst_start_trim(pst_store *st)
{
    if (!st->info.ready || st->trim_busy || st->closing) return;
    trim_job *t = calloc(1, sizeof(*t));
    if (!t) return;
    t->keep_s = st->retention_s;
    t->j.run = trim_run;
    t->j.done = trim_done;
    st->trim_busy = true;
    pst_submit(st, &t->j);
}
