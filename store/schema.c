/*
 * schema.c - the pmgcm schema in the database, the replicated set, the
 * generated apply functions; setup and the periodic re-read of the table
 * definitions.
 */
#define _GNU_SOURCE
#include "store/internal.h"
#include <mbedtls/sha256.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- schema ------------------------------------------------------------------------- */


static void digest16(const char *text, char out[17])
{
    unsigned char h[32];
    mbedtls_sha256_ret((const unsigned char *)text, strlen(text), h, 0);
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", h[i]);
}

typedef struct tabdef {
    char *q, *cols, *pk, *cond;
    char *ocol;    /* per-origin table: its origin column, else NULL */
    char *set;     /* "a = EXCLUDED.a, ..." (non-key columns), "" if none */
    char *changed; /* key changed between c.old and c.new */
    char *lit;     /* q as an SQL literal */
} tabdef;

static int load_tables(PGconn *c, pst_store *st, tabdef **out, size_t *n,
                       char *err, size_t errlen)
{
    const char *pv[2] = {st->schemas, st->exclude};
    PGresult *r = PQexecParams(c, pst_sql_tables, 2, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, errlen);
        PQclear(r);
        return PST_EDB;
    }
    int rows = PQntuples(r);
    tabdef *t = calloc(rows ? (size_t)rows : 1, sizeof(*t));
    if (!t) {
        PQclear(r);
        return -ENOMEM;
    }
    for (int i = 0; i < rows; i++) {
        t[i].q = strdup(PQgetvalue(r, i, 0));
        t[i].cols = strdup(PQgetvalue(r, i, 1));
        t[i].pk = strdup(PQgetvalue(r, i, 2));
        t[i].cond = strdup(PQgetvalue(r, i, 3));
        t[i].set = strdup(PQgetvalue(r, i, 4)); /* "" when NULL */
        t[i].changed = strdup(PQgetvalue(r, i, 5));
        t[i].lit = strdup(PQgetvalue(r, i, 6));
    }
    PQclear(r);
    *out = t;
    *n = (size_t)rows;
    return 0;
}

static void free_tables(tabdef *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(t[i].q);
        free(t[i].cols);
        free(t[i].pk);
        free(t[i].cond);
        free(t[i].set);
        free(t[i].changed);
        free(t[i].lit);
        free(t[i].ocol);
    }
    free(t);
}

static char *tables_text(const tabdef *t, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(t[i].q) + strlen(t[i].cols) + strlen(t[i].pk) + 16;
    char *s = malloc(len), *p = s;
    if (!s) return NULL;
    *p = 0;
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s(%s) pk(%s)\n", t[i].q, t[i].cols, t[i].pk);
    return s;
}

/* pmgcm.apply(a, b): applies log entries a..b in order, with static SQL
 * per table (plans cached for the session). Upsert for I and U (a changed
 * key deletes the old row first), delete for D. Idempotent: replaying a
 * change over a snapshot that already holds it is harmless. */
static char *apply_sql(const tabdef *t, size_t n, bool origin)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f) return NULL;
    if (origin)
        fputs("CREATE OR REPLACE FUNCTION pmgcm.oapply(o int, a bigint,"
              " b bigint) RETURNS bigint LANGUAGE plpgsql AS $pmgcm$\n"
              "DECLARE c record; n bigint := 0;\n"
              "BEGIN\n"
              "  FOR c IN SELECT l.seq, l.op, l.tbl, l.old, l.new,"
              " 0::bigint AS epoch, l.origin FROM pmgcm.olog l WHERE l.origin = o AND l.seq BETWEEN a AND"
              " b ORDER BY l.seq LOOP\n", f);
    else
        fputs("CREATE OR REPLACE FUNCTION pmgcm.apply(a bigint, b bigint)"
              " RETURNS bigint LANGUAGE plpgsql AS $pmgcm$\n"
              "DECLARE c record; n bigint := 0;\n"
              "BEGIN\n"
              "  FOR c IN SELECT * FROM pmgcm.log l WHERE l.seq BETWEEN a AND"
              " b ORDER BY l.seq LOOP\n", f);
    fputs("    IF c.op = 'E' THEN\n"
          "      INSERT INTO pmgcm.epochs VALUES (c.epoch, c.seq, c.origin)"
          " ON CONFLICT (epoch) DO NOTHING;\n"
          "      CONTINUE;\n"
          "    END IF;\n"
          "    n := n + 1;\n"
          /* the table is looked up among the local ones: its name from
           * the network is compared, never executed */
          "    CASE c.tbl\n"
          "    WHEN '' THEN NULL;\n", f);
    for (size_t i = 0; i < n; i++) {
        if ((t[i].ocol != NULL) != origin) continue;
        if (!origin)
            fprintf(f,
                    "    WHEN %s THEN\n"
                    "      IF c.op = 'T' THEN TRUNCATE %s; CONTINUE; END IF;\n",
                    t[i].lit, t[i].q);
        else
            fprintf(f, "    WHEN %s THEN\n", t[i].lit);
        fprintf(f,
                "      IF c.op = 'D' OR (c.op = 'U' AND (%s)) THEN\n"
                "        DELETE FROM %s t USING jsonb_populate_record(NULL::%s,"
                " c.old) r WHERE %s;\n"
                "      END IF;\n"
                "      IF c.op <> 'D' THEN\n"
                "        INSERT INTO %s SELECT * FROM jsonb_populate_record("
                "NULL::%s, c.new) ON CONFLICT (%s) DO %s%s;\n"
                "      END IF;\n",
                t[i].changed, t[i].q, t[i].q, t[i].cond, t[i].q,
                t[i].q, t[i].pk, t[i].set[0] ? "UPDATE SET " : "NOTHING",
                t[i].set);
    }
    fputs("    ELSE RAISE EXCEPTION 'pmgcm: a change for %, which is not"
          " replicated here', c.tbl;\n"
          "    END CASE;\n"
          "  END LOOP;\n"
          "  RETURN n;\n"
          "END $pmgcm$;", f);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

int pst_schema_text(PGconn *c, pst_store *st, char **out, char *err,
                    size_t errlen)
{
    tabdef *t;
    size_t n;
    int rc = load_tables(c, st, &t, &n, err, errlen);
    if (rc) return rc;
    *out = tables_text(t, n);
    free_tables(t, n);
    return *out ? 0 : -ENOMEM;
}

int pst_db_setup(PGconn *c, pst_store *st, char *err, size_t errlen,
                 char **schema_text, pst_info *info, pst_origin *opos,
                 size_t *n_opos, pst_tableset **tables)
{
    int rc = pst_exec(c, "BEGIN", err, errlen);
    if (rc) return rc;
    /* one setup at a time across daemons sharing a database */
    if ((rc = pst_exec(c, "SELECT pg_advisory_xact_lock(7947001)", err,
                       errlen)) ||
        (rc = pst_exec(c, pst_sql_setup, err, errlen)))
        return rc;
    tabdef *t;
    size_t n;
    if ((rc = load_tables(c, st, &t, &n, err, errlen))) return rc;
    /* per-origin tables: must exist, be replicated, and have the origin
     * column in their primary key */
    {
        const char *pv[1] = {st->origin_tables};
        PGresult *r = PQexecParams(c, pst_sql_origin_tables, 1, NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            pst_pgerr(c, r, err, errlen);
            PQclear(r);
            free_tables(t, n);
            return PST_EDB;
        }
        rc = pst_exec(c, "DELETE FROM pmgcm.otables", err, errlen);
        for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
            const char *name = PQgetvalue(r, i, 0), *col = PQgetvalue(r, i, 1);
            const char *q = PQgetvalue(r, i, 3);
            size_t k = 0;
            if (PQgetvalue(r, i, 2)[0] != 't')
                snprintf(err, errlen, "db_origin_tables: no table %s", name);
            else if (!*col)
                snprintf(err, errlen, "db_origin_tables: %s needs "
                         "\":column\" (the origin column)", name);
            else if (PQgetvalue(r, i, 4)[0] != 't')
                snprintf(err, errlen, "db_origin_tables: %s has no column %s",
                         name, col);
            else if (PQgetvalue(r, i, 5)[0] != 't')
                snprintf(err, errlen, "db_origin_tables: %s: column %s must "
                         "be part of the primary key", name, col);
            else {
                for (k = 0; k < n && strcmp(t[k].q, q) != 0; k++) {}
                if (k == n)
                    snprintf(err, errlen, "db_origin_tables: %s is not "
                             "replicated (schemas, exclusions, primary key)",
                             name);
            }
            if (k == n || PQgetvalue(r, i, 2)[0] != 't') {
                rc = -EINVAL;
                break;
            }
            free(t[k].ocol);
            t[k].ocol = strdup(col);
            const char *p2[2] = {q, col};
            PGresult *r2 = PQexecParams(c, "INSERT INTO pmgcm.otables VALUES"
                                           " ($1, $2)", 2, NULL, p2, NULL,
                                        NULL, 0);
            if (PQresultStatus(r2) != PGRES_COMMAND_OK) {
                pst_pgerr(c, r2, err, errlen);
                rc = PST_EDB;
            }
            PQclear(r2);
        }
        PQclear(r);
        if (rc) {
            free_tables(t, n);
            return rc;
        }
    }
    rc = pst_exec(c, "DELETE FROM pmgcm.tables", err, errlen);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char *sql = NULL;
        char *trg = NULL;
        if (asprintf(&sql,
                     "INSERT INTO pmgcm.tables VALUES ($1,"
                     " format('DELETE FROM %%s t USING jsonb_populate_record("
                     "NULL::%%s, $1) r WHERE %%s', $1::text, $1::text, $2::text),"
                     " format('INSERT INTO %%s SELECT * FROM "
                     "jsonb_populate_record(NULL::%%s, $1)', $1::text,"
                     " $1::text))") < 0 ||
            asprintf(&trg,
                     "CREATE OR REPLACE TRIGGER pmgcm_capture AFTER INSERT OR"
                     " UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION"
                     " pmgcm.capture();"
                     "CREATE OR REPLACE TRIGGER pmgcm_capture_truncate AFTER"
                     " TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION"
                     " pmgcm.capture();"
                     "CREATE OR REPLACE TRIGGER pmgcm_notify AFTER INSERT OR"
                     " UPDATE OR DELETE ON %s FOR EACH STATEMENT EXECUTE"
                     " FUNCTION pmgcm.notify();",
                     t[i].q, t[i].q, t[i].q) < 0) {
            free(sql);
            rc = -ENOMEM;
            break;
        }
        if (t[i].ocol) {
            /* a per-origin table: its own triggers instead */
            free(trg);
            trg = NULL;
            char *lit = PQescapeLiteral(c, t[i].ocol, strlen(t[i].ocol));
            if (!lit ||
                asprintf(&trg,
                         "DROP TRIGGER IF EXISTS pmgcm_capture ON %s;"
                         "DROP TRIGGER IF EXISTS pmgcm_capture_truncate ON %s;"
                         "DROP TRIGGER IF EXISTS pmgcm_notify ON %s;"
                         "CREATE OR REPLACE TRIGGER pmgcm_ocapture AFTER INSERT"
                         " OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE"
                         " FUNCTION pmgcm.ocapture(%s);"
                         "CREATE OR REPLACE TRIGGER pmgcm_ocapture_truncate"
                         " BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE"
                         " FUNCTION pmgcm.ocapture(%s);"
                         "CREATE OR REPLACE TRIGGER pmgcm_onotify AFTER INSERT"
                         " OR UPDATE OR DELETE ON %s FOR EACH STATEMENT"
                         " EXECUTE FUNCTION pmgcm.ocapture(%s);",
                         t[i].q, t[i].q, t[i].q, t[i].q, lit, t[i].q, lit,
                         t[i].q, lit) < 0) {
                PQfreemem(lit);
                free(sql);
                rc = -ENOMEM;
                break;
            }
            PQfreemem(lit);
        } else {
            /* no longer per-origin (config changed): drop those triggers */
            char *drop = NULL;
            if (asprintf(&drop,
                         "DROP TRIGGER IF EXISTS pmgcm_ocapture ON %s;"
                         "DROP TRIGGER IF EXISTS pmgcm_ocapture_truncate ON %s;"
                         "DROP TRIGGER IF EXISTS pmgcm_onotify ON %s;",
                         t[i].q, t[i].q, t[i].q) < 0) {
                free(sql);
                free(trg);
                rc = -ENOMEM;
                break;
            }
            rc = pst_exec(c, drop, err, errlen);
            free(drop);
        }
        const char *pv[2] = {t[i].q, t[i].cond};
        PGresult *r = PQexecParams(c, sql, 2, NULL, pv, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            pst_pgerr(c, r, err, errlen);
            rc = PST_EDB;
        }
        PQclear(r);
        if (rc == 0) rc = pst_exec(c, trg, err, errlen);
        free(sql);
        free(trg);
    }
    for (int o = 0; o < 2 && rc == 0; o++) {
        char *fn = apply_sql(t, n, o == 1);
        rc = fn ? pst_exec(c, fn, err, errlen) : -ENOMEM;
        free(fn);
    }
    if (rc == 0) {
        *tables = pst_tableset_new();
        for (size_t i = 0; *tables && rc == 0 && i < n; i++)
            rc = pst_tableset_add(*tables, t[i].q, t[i].ocol != NULL);
        if (!*tables) rc = -ENOMEM;
    }
    if (rc == 0) {
        *schema_text = tables_text(t, n);
        if (!*schema_text) rc = -ENOMEM;
        else digest16(*schema_text, info->schema_digest);
        info->n_tables = n;
        info->n_origin_tables = 0;
        for (size_t i = 0; i < n; i++) info->n_origin_tables += t[i].ocol != NULL;
    }
    free_tables(t, n);
    if (rc) return rc;
    PGresult *r = PQexec(c,
                         "SELECT epoch, seq, recv_seq, loaded, snapshots,"
                         " coalesce((extract(epoch FROM ts) * 1000000)::bigint,"
                         " 0) FROM pmgcm.state");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, errlen);
        PQclear(r);
        return PST_EDB;
    }
    info->pos.epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    info->pos.seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    info->recv_seq = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    info->loaded = PQgetvalue(r, 0, 3)[0] == 't';
    info->snapshots = strtoull(PQgetvalue(r, 0, 4), NULL, 10);
    info->pos_ts_us = strtoll(PQgetvalue(r, 0, 5), NULL, 10);
    PQclear(r);

    r = PQexec(c, "SELECT origin, seq, recv_seq, coalesce((extract(epoch FROM"
                  " ts) * 1000000)::bigint, 0) FROM pmgcm.opos ORDER BY origin");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, errlen);
        PQclear(r);
        return PST_EDB;
    }
    *n_opos = 0;
    for (int i = 0; i < PQntuples(r) && *n_opos < PST_ORIGINS_MAX; i++) {
        pst_origin *o = &opos[(*n_opos)++];
        o->origin = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        o->seq = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        o->recv_seq = strtoull(PQgetvalue(r, i, 2), NULL, 10);
        o->ts_us = strtoll(PQgetvalue(r, i, 3), NULL, 10);
    }
    PQclear(r);
    if ((rc = pst_exec(c, "COMMIT", err, errlen))) return rc;
    /* the fence follows pmgcm.state (a role change that failed between
     * its setval and its commit, an older install): in a transaction of
     * its own that takes the role lock exclusively, like a role change
     * (never while holding the tables' locks: a writer holding the role
     * lock may wait for those) */
    return pst_exec(c, "BEGIN; SELECT pg_advisory_xact_lock(7947002);"
                       "SELECT setval('pmgcm.fence', CASE role WHEN"
                       " 'master' THEN 1 WHEN 'none' THEN 2 ELSE 0 END)"
                       " FROM pmgcm.state; COMMIT",
                    err, errlen);
}

/* ---- setup -------------------------------------------------------------------------- */

typedef struct setup_job {
    pst_job j;
    bool check_only;  /* compare the definitions, set up only if changed */
    bool changed;     /* check_only found a difference and set up again */
    char *old_text;   /* check_only: the definitions in use (a copy) */
    char *schema_text;
    pst_info info;
    pst_origin opos[PST_ORIGINS_MAX];
    size_t n_opos;
    pst_tableset *tables;
} setup_job;

static void setup_run(pst_job *j, PGconn *c)
{
    setup_job *s = (setup_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    if (s->check_only) {
        /* cheap: the definitions as they are now; the full setup (triggers,
         * apply functions) only when they changed */
        j->rc = pst_schema_text(c, j->st, &s->schema_text, j->err,
                                sizeof(j->err));
        if (j->rc || !s->schema_text || !s->old_text ||
            strcmp(s->schema_text, s->old_text) == 0)
            return;
        free(s->schema_text);
        s->schema_text = NULL;
        s->changed = true;
    }
    j->rc = pst_db_setup(c, j->st, j->err, sizeof(j->err), &s->schema_text,
                         &s->info, s->opos, &s->n_opos, &s->tables);
}

void pst_listen_start(pst_store *st);

static void setup_done(pst_job *j)
{
    setup_job *s = (setup_job *)j;
    pst_store *st = j->st;
    st->setup_busy = false;
    free(s->old_text);
    if (st->closing) {
        free(s->schema_text);
        pst_tableset_free(s->tables);
        free(s);
        return;
    }
    if (j->rc == 0 && s->tables) {
        /* the replicated set the definitions describe */
        pst_tableset_free(st->tables);
        st->tables = s->tables;
        s->tables = NULL;
    }
    pst_tableset_free(s->tables);
    s->tables = NULL;
    if (s->check_only) {
        /* a ready store re-read its definitions: keep positions and state */
        if (j->rc == 0 && s->changed) {
            free(st->schema_text);
            st->schema_text = s->schema_text;
            s->schema_text = NULL;
            st->info.n_tables = s->info.n_tables;
            st->info.n_origin_tables = s->info.n_origin_tables;
            memcpy(st->info.schema_digest, s->info.schema_digest,
                   sizeof(st->info.schema_digest));
            pst_log(st, 2, "store: table definitions changed: %zu replicated"
                    " tables now, schema %s", st->info.n_tables,
                    st->info.schema_digest);
            pst_changed(st);
        } else if (j->rc) {
            pst_log(st, 1, "store: re-reading table definitions: %s", j->err);
        }
        free(s->schema_text);
        free(s);
        return;
    }
    if (j->rc != 0) {
        pst_set_error(st, "database: %s", j->err);
        st->info.state = PST_CONNECTING;
        free(s->schema_text);
        free(s);
        pst_changed(st);
        return;
    }
    free(st->schema_text);
    st->schema_text = s->schema_text;
    pst_info *i = &st->info;
    i->ready = true;
    i->pos = s->info.pos;
    i->recv_seq = s->info.recv_seq;
    i->pos_ts_us = s->info.pos_ts_us;
    i->loaded = s->info.loaded;
    i->snapshots = s->info.snapshots;
    i->n_tables = s->info.n_tables;
    i->n_origin_tables = s->info.n_origin_tables;
    memcpy(st->opos, s->opos, sizeof(st->opos));
    st->n_opos = s->n_opos;
    memcpy(i->schema_digest, s->info.schema_digest, sizeof(i->schema_digest));
    if (pst_pos_cmp(i->head, i->pos) < 0) {
        i->head = i->pos;
        i->head_ts_us = i->pos_ts_us;
    }
    if (i->state == PST_CONNECTING || i->state == PST_OFF)
        i->state = PST_IDLE;
    pst_set_error(st, "%s", "");
    pst_log(st, 2,
            "store: database ready: %zu replicated tables, position %llu/%llu,"
            " schema %s", i->n_tables, (unsigned long long)i->pos.epoch,
            (unsigned long long)i->pos.seq, i->schema_digest);
    free(s);
    pst_listen_start(st);
    pst_start_kept(st);
    pst_changed(st);
    pst_roles_kick(st);
    pst_sessions_head(st);
}

/* Every few seconds: did the table definitions change (a new table, a
 * column)? Then triggers and apply functions follow, and joins and
 * snapshots compare the new definitions. */
void pst_setup_check(pst_store *st)
{
    if (st->setup_busy || !st->info.ready || st->closing || !st->schema_text)
        return;
    setup_job *s = calloc(1, sizeof(*s));
    if (!s) return;
    s->check_only = true;
    s->old_text = strdup(st->schema_text);
    if (!s->old_text) {
        free(s);
        return;
    }
    st->setup_busy = true;
    s->j.run = setup_run;
    s->j.done = setup_done;
    pst_submit(st, &s->j);
}

void pst_setup_start(pst_store *st)
{
    if (st->setup_busy || st->info.ready || st->closing) return;
    setup_job *s = calloc(1, sizeof(*s));
    if (!s) return;
    st->setup_busy = true;
    s->j.run = setup_run;
    s->j.done = setup_done;
    pst_submit(st, &s->j);
}

const char *pst_schema(const pst_store *st)
{
    return st->info.ready ? st->schema_text : NULL;
}

const char *pst_schema_diff(const char *a, const char *b, char *buf,
                            size_t len)
{
    /* the first line that differs, from either side */
    while (*a && *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a);
        size_t lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || memcmp(a, b, la) != 0) {
            snprintf(buf, len, "master has \"%.*s\", this node has \"%.*s\"",
                     (int)(lb > 300 ? 300 : lb), b, (int)(la > 300 ? 300 : la),
                     a);
            return buf;
        }
        a += la + (ea ? 1 : 0);
        b += lb + (eb ? 1 : 0);
    }
    if (*a)
        snprintf(buf, len, "this node has a table the master lacks: \"%.*s\"",
                 (int)strcspn(a, "\n"), a);
    else if (*b)
        snprintf(buf, len, "the master has a table this node lacks: \"%.*s\"",
                 (int)strcspn(b, "\n"), b);
    else
        snprintf(buf, len, "identical");
    return buf;
}
