/*
 * backup.c - nothing is destroyed silently: before a snapshot replaces
 * tables whose data is not a prefix of the snapshot's lineage, the rows it
 * replaces are kept in a backup schema, recorded in pmgcm.backups; admin
 * notes (promote --accept-data-loss) go there too. The registry shows in
 * status (kept counts) until an admin clears it (pmgcm backups).
 *
 *   pmgcm.backups (id, created, kind, schema_name, reason, tables, rows)
 *     kind 'resync': schema_name holds one table per replicated table,
 *       named after it ("public.mail"), with the rows this node held that
 *       the snapshot does not hold identically (rows it dropped or
 *       replaced); tables and rows count them.
 *     kind 'promote': a note (schema_name NULL): what a forced promote
 *       said the cluster loses.
 */
#define _GNU_SOURCE
#include "store/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- lineage ---------------------------------------------------------------- */

bool pst_lineage_prefix(bool loaded, pst_pos pos, const pst_pos *epochs,
                        size_t n, pst_pos head)
{
    if (!loaded) return false;
    if (pos.epoch == 0 && pos.seq == 0) return true; /* nothing applied */
    if (pos.seq > head.seq) return false; /* changes the source lacks */
    /* the term that holds seq pos.seq in the snapshot's lineage: the
     * latest one started at or before it */
    bool found = false;
    uint64_t e = 0, start = 0;
    for (size_t i = 0; i < n; i++)
        if (epochs[i].seq <= pos.seq &&
            (!found || epochs[i].seq > start ||
             (epochs[i].seq == start && epochs[i].epoch > e))) {
            found = true;
            e = epochs[i].epoch;
            start = epochs[i].seq;
        }
    return found && e == pos.epoch;
}

/* ---- the backup of a resync (snapshot thread, inside the load's
 * transaction) ------------------------------------------------------------------ */

/* "CREATE TABLE schema."public.mail" AS ..." names: both quoted here;
 * the source is a local name (already an identifier). */
static char *bk_table(PGconn *c, const char *schema, const char *tbl)
{
    char *s = PQescapeIdentifier(c, schema, strlen(schema));
    char *t = PQescapeIdentifier(c, tbl, strlen(tbl));
    char *out = NULL;
    if (s && t && asprintf(&out, "%s.%s", s, t) < 0) out = NULL;
    PQfreemem(s);
    PQfreemem(t);
    return out;
}

int pst_backup_begin(PGconn *c, const pst_tableset *ts, uint32_t self_cid,
                     const char *why, char *schema, size_t schemalen,
                     char *err, size_t el)
{
    const char *pv[1] = {why};
    schema[0] = 0;
    PGresult *r = PQexecParams(
        c,
        "INSERT INTO pmgcm.backups (id, kind, reason, schema_name)"
        " SELECT i, 'resync', $1, format('pmgcm_backup_%s_%s',"
        " to_char(now(), 'YYYYMMDD_HH24MISS'), i) FROM (SELECT"
        " nextval(pg_get_serial_sequence('pmgcm.backups', 'id')) AS i) s"
        " RETURNING schema_name",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        if (!err[0]) snprintf(err, el, "recording a backup failed");
        PQclear(r);
        return PST_EDB;
    }
    snprintf(schema, schemalen, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    char *qs = PQescapeIdentifier(c, schema, strlen(schema));
    char *sql = NULL;
    int rc = qs && asprintf(&sql, "CREATE SCHEMA %s", qs) >= 0 ? 0 : -ENOMEM;
    PQfreemem(qs);
    if (rc == 0) rc = pst_exec(c, sql, err, el);
    free(sql);
    if (rc) return rc;
    /* the origin column of per-origin tables: only other origins' rows
     * are replaced there */
    PGresult *ro = pst_otables(c, err, el);
    if (!ro) return PST_EDB;
    for (size_t i = 0; rc == 0 && i < ts->n; i++) {
        const char *col = pst_otable_col(ro, ts->t[i].name);
        char others[PST_OTHERS_LEN];
        if ((rc = pst_others_where(others, sizeof(others), col, self_cid)))
            break;
        char *bt = bk_table(c, schema, ts->t[i].name);
        sql = NULL;
        if (!bt || asprintf(&sql, "CREATE TABLE %s AS SELECT * FROM %s%s",
                            bt, ts->t[i].name, others) < 0)
            rc = -ENOMEM;
        else
            rc = pst_exec(c, sql, err, el);
        free(sql);
        free(bt);
    }
    PQclear(ro);
    return rc;
}

int pst_backup_end(PGconn *c, const pst_tableset *ts, const char *schema,
                   uint64_t *rows, uint32_t *tables, char *err, size_t el)
{
    int rc = 0;
    *rows = 0;
    *tables = 0;
    for (size_t i = 0; rc == 0 && i < ts->n; i++) {
        char *bt = bk_table(c, schema, ts->t[i].name), *sql = NULL;
        /* what the snapshot holds identically was not lost */
        /* whole rows by ROW(alias.*): a column may be named like an
         * alias */
        if (!bt || asprintf(&sql, "DELETE FROM %s b USING %s x WHERE"
                                  " ROW(b.*)::text = ROW(x.*)::text", bt,
                            ts->t[i].name) < 0) {
            free(bt);
            rc = -ENOMEM;
            break;
        }
        rc = pst_exec(c, sql, err, el);
        free(sql);
        sql = NULL;
        if (rc == 0 && asprintf(&sql, "SELECT count(*) FROM %s", bt) < 0)
            rc = -ENOMEM;
        if (rc == 0) {
            PGresult *r = PQexec(c, sql);
            if (PQresultStatus(r) != PGRES_TUPLES_OK) {
                pst_pgerr(c, r, err, el);
                rc = PST_EDB;
            } else {
                uint64_t n = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
                *rows += n;
                if (n) (*tables)++;
                free(sql);
                sql = NULL;
                if (n == 0 && asprintf(&sql, "DROP TABLE %s", bt) >= 0)
                    rc = pst_exec(c, sql, err, el);
            }
            PQclear(r);
        }
        free(sql);
        free(bt);
    }
    if (rc) return rc;
    char tb[16], rb[24];
    snprintf(tb, sizeof(tb), "%u", *tables);
    snprintf(rb, sizeof(rb), "%llu", (unsigned long long)*rows);
    const char *pv[3] = {schema, tb, rb};
    if (*rows == 0) {
        /* nothing was lost: no backup */
        char *qs = PQescapeIdentifier(c, schema, strlen(schema)), *sql = NULL;
        if (!qs || asprintf(&sql, "DROP SCHEMA %s", qs) < 0) rc = -ENOMEM;
        else rc = pst_exec(c, sql, err, el);
        free(sql);
        PQfreemem(qs);
        if (rc) return rc;
        PGresult *r = PQexecParams(c, "DELETE FROM pmgcm.backups WHERE"
                                      " schema_name = $1", 1, NULL, pv, NULL,
                                   NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
        }
        PQclear(r);
        return rc;
    }
    PGresult *r = PQexecParams(c, "UPDATE pmgcm.backups SET tables = $2::int,"
                                  " rows = $3::bigint WHERE schema_name = $1",
                               3, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
    }
    PQclear(r);
    return rc;
}

/* ---- kept counts (loop side, refreshed every few seconds and after
 * every change) ------------------------------------------------------------------- */

typedef struct kept_job {
    pst_job j;
    uint32_t backups;
    uint64_t rows, divergence;
} kept_job;

static void kept_run(pst_job *j, PGconn *c)
{
    kept_job *k = (kept_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    PGresult *r = PQexec(c, "SELECT (SELECT count(*) FROM pmgcm.backups),"
                            " (SELECT coalesce(sum(rows), 0) FROM"
                            " pmgcm.backups), (SELECT count(*) FROM"
                            " pmgcm.divergence)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        j->rc = PST_EDB;
    } else {
        k->backups = (uint32_t)strtoul(PQgetvalue(r, 0, 0), NULL, 10);
        k->rows = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
        k->divergence = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    }
    PQclear(r);
}

static void kept_done(pst_job *j)
{
    kept_job *k = (kept_job *)j;
    pst_store *st = j->st;
    st->kept_busy = false;
    if (!st->closing && j->rc == 0) {
        pst_info *i = &st->info;
        if (i->kept_backups != k->backups || i->kept_rows != k->rows ||
            i->kept_divergence != k->divergence) {
            i->kept_backups = k->backups;
            i->kept_rows = k->rows;
            i->kept_divergence = k->divergence;
            pst_changed(st);
        }
    }
    bool again = st->kept_again;
    st->kept_again = false;
    free(k);
    if (again && !st->closing) pst_start_kept(st);
}

void pst_start_kept(pst_store *st)
{
    if (!st->info.ready || st->closing) return;
    if (st->kept_busy) {
        st->kept_again = true;
        return;
    }
    kept_job *k = calloc(1, sizeof(*k));
    if (!k) return;
    k->j.run = kept_run;
    k->j.done = kept_done;
    st->kept_busy = true;
    pst_submit(st, &k->j);
}

/* ---- notes ------------------------------------------------------------------------ */

typedef struct note_job {
    pst_job j;
    char kind[32];
    char *text;
} note_job;

static void note_run(pst_job *j, PGconn *c)
{
    note_job *n = (note_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    const char *pv[2] = {n->kind, n->text};
    PGresult *r = PQexecParams(c, "INSERT INTO pmgcm.backups (kind, reason)"
                                  " VALUES ($1, $2)", 2, NULL, pv, NULL,
                               NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        j->rc = PST_EDB;
    }
    PQclear(r);
}

static void note_done(pst_job *j)
{
    note_job *n = (note_job *)j;
    pst_store *st = j->st;
    if (!st->closing) {
        if (j->rc)
            pst_log(st, 0, "store: could not record the %s note (%s): %s",
                    n->kind, j->err, n->text);
        pst_start_kept(st);
    }
    free(n->text);
    free(n);
}

int pst_note(pst_store *st, const char *kind, const char *text)
{
    if (!st || !kind || !text) return -EINVAL;
    note_job *n = calloc(1, sizeof(*n));
    if (!n) return -ENOMEM;
    snprintf(n->kind, sizeof(n->kind), "%s", kind);
    n->text = strndup(text, 2000);
    if (!n->text) {
        free(n);
        return -ENOMEM;
    }
    n->j.run = note_run;
    n->j.done = note_done;
    pst_submit(st, &n->j);
    return 0;
}

/* ---- pmgcm backups: list, clear ----------------------------------------------------- */

typedef struct bk_job {
    pst_job j;
    char what[32];      /* "" list, "divergence", or an id */
    pst_backups_fn done;
    void *ud;
    char *out;          /* list: JSON members; clear: a sentence */
} bk_job;

static void bk_list(bk_job *b, PGconn *c)
{
    pst_job *j = &b->j;
    /* PostgreSQL writes the whole object (json_build_object, json_agg);
     * the daemon reads it back with jansson: no JSON glued by hand */
    PGresult *r = PQexec(c, "SELECT json_build_object('backups',"
                            " coalesce(json_agg(json_build_object("
                            "'id', id, 'created', to_char(created,"
                            " 'YYYY-MM-DD HH24:MI:SS TZ'), 'kind', kind,"
                            " 'schema', schema_name, 'tables', tables,"
                            " 'rows', rows, 'reason', reason) ORDER BY id),"
                            " '[]'), 'divergence', (SELECT count(*) FROM"
                            " pmgcm.divergence)) FROM pmgcm.backups");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        j->rc = PST_EDB;
    } else if ((b->out = strdup(PQgetvalue(r, 0, 0))) == NULL) {
        j->rc = -ENOMEM;
    }
    PQclear(r);
}

static void bk_clear(bk_job *b, PGconn *c)
{
    pst_job *j = &b->j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    int rc;
    if ((rc = pst_exec(c, "BEGIN", err, el))) goto out;
    if (strcmp(b->what, "divergence") == 0) {
        PGresult *r = PQexec(c, "DELETE FROM pmgcm.divergence");
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
        } else if (asprintf(&b->out, "cleared %s divergence record(s)",
                            PQcmdTuples(r)) < 0) {
            b->out = NULL;
            rc = -ENOMEM;
        }
        PQclear(r);
    } else {
        const char *pv[1] = {b->what};
        PGresult *r = PQexecParams(c, "DELETE FROM pmgcm.backups WHERE id ="
                                      " $1::bigint RETURNING schema_name,"
                                      " kind, rows", 1, NULL, pv, NULL, NULL,
                                   0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            pst_pgerr(c, r, err, el);
            rc = PST_EDB;
        } else if (PQntuples(r) != 1) {
            snprintf(err, el, "no backup with id %s on this node (pmgcm"
                     " backups lists them)", b->what);
            rc = -ENOENT;
        } else {
            char *sql = NULL;
            if (!PQgetisnull(r, 0, 0)) {
                const char *sn = PQgetvalue(r, 0, 0);
                char *qs = PQescapeIdentifier(c, sn, strlen(sn));
                if (!qs || asprintf(&sql, "DROP SCHEMA IF EXISTS %s CASCADE",
                                    qs) < 0) {
                    sql = NULL;
                    rc = -ENOMEM;
                }
                PQfreemem(qs);
                if (rc == 0) rc = pst_exec(c, sql, err, el);
                free(sql);
            }
            if (rc == 0 &&
                asprintf(&b->out, "cleared backup %s (%s%s%s, %s rows)",
                         b->what, PQgetvalue(r, 0, 1),
                         PQgetisnull(r, 0, 0) ? "" : ", schema ",
                         PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0),
                         PQgetvalue(r, 0, 2)) < 0) {
                b->out = NULL;
                rc = -ENOMEM;
            }
        }
        PQclear(r);
    }
    if (rc == 0) rc = pst_exec(c, "COMMIT", err, el);
out:
    j->rc = rc;
}

static void bk_run(pst_job *j, PGconn *c)
{
    bk_job *b = (bk_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    if (b->what[0]) bk_clear(b, c);
    else bk_list(b, c);
}

static void bk_done(pst_job *j)
{
    bk_job *b = (bk_job *)j;
    pst_store *st = j->st;
    if (!st->closing && j->rc == 0 && b->what[0]) {
        pst_log(st, 2, "store: %s", b->out);
        pst_start_kept(st);
    }
    if (b->done)
        b->done(b->ud, j->rc, j->rc ? (j->err[0] ? j->err : pst_strerror(j->rc))
                                    : b->out);
    free(b->out);
    free(b);
}

int pst_backups(pst_store *st, const char *clear, pst_backups_fn done,
                void *ud)
{
    if (!st || !done) return -EINVAL;
    if (clear) {
        /* an id (digits, bounded) or "divergence": nothing else */
        size_t n = strlen(clear);
        bool digits = n > 0 && n <= 18 && strspn(clear, "0123456789") == n;
        if (!digits && strcmp(clear, "divergence") != 0) return -EINVAL;
    }
    if (!st->info.ready) return -EAGAIN;
    bk_job *b = calloc(1, sizeof(*b));
    if (!b) return -ENOMEM;
    snprintf(b->what, sizeof(b->what), "%s", clear ? clear : "");
    b->done = done;
    b->ud = ud;
    b->j.run = bk_run;
    b->j.done = bk_done;
    pst_submit(st, &b->j);
    return 0;
}
