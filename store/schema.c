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
    int ncols;     /* columns */
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
        t[i].ncols = atoi(PQgetvalue(r, i, 7));
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

/* An identifier, always quoted ("a""b"); NULL when out of memory. */
static char *quote_id(const char *s)
{
    size_t n = strlen(s), k = 0;
    char *o = malloc(2 * n + 3);
    if (!o) return NULL;
    o[k++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') o[k++] = '"';
        o[k++] = s[i];
    }
    o[k++] = '"';
    o[k] = 0;
    return o;
}

/* pmgcm.apply(a, b): applies log entries a..b in order, with static SQL
 * per table (plans cached for the session); columns win over variables
 * (a table may have a column named a), the function's own names start
 * with pmgcm_. Upsert for I and U (a changed
 * key deletes the old row first), delete for D. Idempotent: replaying a
 * change over a snapshot that already holds it is harmless.
 *
 * An UPDATE decoded from the WAL leaves out columns whose value is an
 * unchanged out-of-line (TOAST) value: then the new row is the row as it
 * is here (by the old key when the key changed) with the new values on
 * top (jsonb_populate_record with that row as its base). Only the key
 * arrives with a DELETE (REPLICA IDENTITY DEFAULT): that is all it needs.
 *
 * pmgcm.oapply(o, a, b): the same for origin o's entries; a 'T' there
 * (a lost slot republishing its rows, schema.c gap_resync) deletes every
 * row of that origin in the table. */
static char *apply_sql(const tabdef *t, size_t n, bool origin)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f) return NULL;
    if (origin)
        fputs("CREATE OR REPLACE FUNCTION pmgcm.oapply(o int, a bigint,"
              " b bigint) RETURNS bigint LANGUAGE plpgsql AS $pmgcm$\n"
              "#variable_conflict use_column\n"
              "DECLARE pmgcm_c record; pmgcm_n bigint := 0;\n", f);
    else
        fputs("CREATE OR REPLACE FUNCTION pmgcm.apply(a bigint, b bigint)"
              " RETURNS bigint LANGUAGE plpgsql AS $pmgcm$\n"
              "#variable_conflict use_column\n"
              "DECLARE pmgcm_c record; pmgcm_n bigint := 0;\n", f);
    for (size_t i = 0; i < n; i++)
        if ((t[i].ocol != NULL) == origin)
            fprintf(f, "  pmgcm_b%zu %s%%ROWTYPE;\n", i, t[i].q);
    if (origin)
        fputs("BEGIN\n"
              "  FOR pmgcm_c IN SELECT l.seq, l.op, l.tbl, l.old, l.new,"
              " 0::bigint AS epoch, l.origin FROM pmgcm.olog l WHERE l.origin"
              " = $1 AND l.seq BETWEEN $2 AND $3 ORDER BY l.seq LOOP\n", f);
    else {
        /* a batch of inserts into one table (statistics, the common case
         * under load): one statement instead of one per row (from 8
         * entries: below, the check and its subtransaction cost more than
         * the rows row by row). Two inserts of
         * one key in the batch (impossible in one history without a
         * delete between) would make ON CONFLICT DO UPDATE fail with a
         * cardinality violation: then row by row after all. */
        fputs("  pmgcm_t1 text; pmgcm_t2 text; pmgcm_all boolean;"
              " pmgcm_k bigint;\n"
              "BEGIN\n"
              "  IF $2 - $1 >= 7 THEN\n"
              "  SELECT min(l.tbl), max(l.tbl), bool_and(l.op = 'I'), count(*)"
              " INTO pmgcm_t1, pmgcm_t2, pmgcm_all, pmgcm_k FROM pmgcm.log l"
              " WHERE l.seq BETWEEN $1 AND $2 AND l.op <> 'E';\n"
              "  END IF;\n"
              "  IF pmgcm_all AND pmgcm_t1 = pmgcm_t2 THEN\n"
              "    BEGIN\n"
              "      CASE pmgcm_t1\n"
              "      WHEN '' THEN NULL;\n", f);
        for (size_t i = 0; i < n; i++) {
            if (t[i].ocol != NULL) continue;
            fprintf(f,
                    "      WHEN %s THEN\n"
                    "        INSERT INTO %s SELECT pmgcm_r.* FROM pmgcm.log"
                    " pmgcm_l, jsonb_populate_record(NULL::%s, pmgcm_l.new)"
                    " pmgcm_r WHERE pmgcm_l.seq BETWEEN $1 AND $2 AND"
                    " pmgcm_l.op = 'I' ORDER BY pmgcm_l.seq ON CONFLICT (%s)"
                    " DO %s%s;\n",
                    t[i].lit, t[i].q, t[i].q, t[i].pk,
                    t[i].set[0] ? "UPDATE SET " : "NOTHING", t[i].set);
        }
        fputs("      ELSE RAISE EXCEPTION 'pmgcm: a change for %, which is"
              " not replicated here', pmgcm_t1;\n"
              "      END CASE;\n"
              "      INSERT INTO pmgcm.epochs SELECT l.epoch, l.seq, l.origin"
              " FROM pmgcm.log l WHERE l.seq BETWEEN $1 AND $2 AND l.op ="
              " 'E' ON CONFLICT (epoch) DO NOTHING;\n"
              "      RETURN pmgcm_k;\n"
              "    EXCEPTION WHEN cardinality_violation THEN NULL;\n"
              "    END;\n"
              "  END IF;\n"
              "  FOR pmgcm_c IN SELECT * FROM pmgcm.log l WHERE l.seq BETWEEN $1"
              " AND $2 ORDER BY l.seq LOOP\n", f);
    }
    fputs("    IF pmgcm_c.op = 'E' THEN\n"
          "      INSERT INTO pmgcm.epochs VALUES (pmgcm_c.epoch, pmgcm_c.seq, pmgcm_c.origin)"
          " ON CONFLICT (epoch) DO NOTHING;\n"
          "      CONTINUE;\n"
          "    END IF;\n"
          "    pmgcm_n := pmgcm_n + 1;\n"
          /* the table is looked up among the local ones: its name from
           * the network is compared, never executed */
          "    CASE pmgcm_c.tbl\n"
          "    WHEN '' THEN NULL;\n", f);
    for (size_t i = 0; i < n; i++) {
        if ((t[i].ocol != NULL) != origin) continue;
        if (!origin) {
            fprintf(f,
                    "    WHEN %s THEN\n"
                    "      IF pmgcm_c.op = 'T' THEN TRUNCATE %s; CONTINUE; END IF;\n",
                    t[i].lit, t[i].q);
        } else {
            char *qc = quote_id(t[i].ocol);
            if (!qc) {
                fclose(f);
                free(out);
                return NULL;
            }
            fprintf(f,
                    "    WHEN %s THEN\n"
                    "      IF pmgcm_c.op = 'T' THEN DELETE FROM %s WHERE %s::text ="
                    " pmgcm_c.origin::text; CONTINUE; END IF;\n",
                    t[i].lit, t[i].q, qc);
            free(qc);
        }
        fprintf(f,
                "      IF pmgcm_c.op = 'U' AND (SELECT count(*) FROM"
                " jsonb_object_keys(pmgcm_c.new)) < %d THEN\n"
                "        pmgcm_b%zu := NULL;\n"
                "        SELECT t.* INTO pmgcm_b%zu FROM %s t,"
                " jsonb_populate_record(NULL::%s, coalesce(pmgcm_c.old, pmgcm_c.new)) r"
                " WHERE %s;\n"
                "      ELSE\n"
                "        pmgcm_b%zu := NULL;\n"
                "      END IF;\n"
                "      IF pmgcm_c.op = 'D' OR (pmgcm_c.op = 'U' AND pmgcm_c.old IS NOT NULL AND"
                " (%s)) THEN\n"
                "        DELETE FROM %s t USING jsonb_populate_record(NULL::%s,"
                " pmgcm_c.old) r WHERE %s;\n"
                "      END IF;\n"
                "      IF pmgcm_c.op <> 'D' THEN\n"
                "        INSERT INTO %s SELECT * FROM jsonb_populate_record("
                "pmgcm_b%zu, pmgcm_c.new) ON CONFLICT (%s) DO %s%s;\n"
                "      END IF;\n",
                t[i].ncols, i, i, t[i].q, t[i].q, t[i].cond, i,
                t[i].changed, t[i].q, t[i].q, t[i].cond, t[i].q, i, t[i].pk,
                t[i].set[0] ? "UPDATE SET " : "NOTHING", t[i].set);
    }
    fputs("    ELSE RAISE EXCEPTION 'pmgcm: a change for %, which is not"
          " replicated here', pmgcm_c.tbl;\n"
          "    END CASE;\n"
          "  END LOOP;\n"
          "  RETURN pmgcm_n;\n"
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

/* ---- what logical decoding needs of the server ------------------------------------ */

/* wal_level = logical, and room for our walsender and slot. */
static int server_check(PGconn *c, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT current_setting('wal_level'),"
                            " current_setting('max_wal_senders')::int,"
                            " current_setting('max_replication_slots')::int,"
                            " (SELECT rolsuper FROM pg_roles WHERE rolname ="
                            " current_user)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    int rc = 0;
    const char *wl = PQgetvalue(r, 0, 0);
    if (strcmp(wl, "logical") != 0) {
        snprintf(err, el, "wal_level is '%s': pmgcm captures changes through"
                 " logical decoding and needs wal_level = logical (set it in"
                 " postgresql.conf or with ALTER SYSTEM SET wal_level ="
                 " logical, then restart PostgreSQL)", wl);
        rc = PST_EDB;
    } else if (atoi(PQgetvalue(r, 0, 1)) < 1 || atoi(PQgetvalue(r, 0, 2)) < 1) {
        snprintf(err, el, "max_wal_senders is %s and max_replication_slots"
                 " %s: pmgcm needs at least 1 of each (the default 10 is"
                 " fine), then restart PostgreSQL", PQgetvalue(r, 0, 1),
                 PQgetvalue(r, 0, 2));
        rc = PST_EDB;
    } else if (PQgetvalue(r, 0, 3)[0] != 't') {
        snprintf(err, el, "the role of db_conninfo is not a superuser: pmgcm"
                 " needs one (replication slot and origins, apply without"
                 " triggers)");
        rc = PST_EDB;
    }
    PQclear(r);
    return rc;
}

/* The publication holds exactly the replicated set. */
static int publication_set(PGconn *c, const tabdef *t, size_t n, char *err,
                           size_t el)
{
    char *sql = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&sql, &len);
    if (!f) return -ENOMEM;
    if (n == 0) {
        /* no tables: whatever it holds goes */
        fputs("DO $d$ DECLARE r record; BEGIN FOR r IN SELECT"
              " format('%I.%I', schemaname, tablename) AS q FROM"
              " pg_publication_tables WHERE pubname = 'pmgcm' LOOP EXECUTE"
              " 'ALTER PUBLICATION pmgcm DROP TABLE ' || r.q; END LOOP; END"
              " $d$", f);
    } else {
        fputs("ALTER PUBLICATION pmgcm SET TABLE ", f);
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%s%s", i ? ", " : "", t[i].q);
    }
    if (fclose(f) != 0) {
        free(sql);
        return -ENOMEM;
    }
    int rc = pst_exec(c, sql, err, el);
    free(sql);
    return rc;
}

/* An install of the trigger route (pmgcm.capture exists)? */
static int upgrading(PGconn *c, bool *up, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT to_regclass('pmgcm.capture') IS NOT NULL"
                            " OR to_regclass('pmgcm.ocapture') IS NOT NULL");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    *up = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return 0;
}

/* In a cluster the node's slot must exist. A slot that has to be made
 * (gone) or re-made (lost to max_slot_wal_keep_size) means the changes
 * since the last one captured were never decoded: *gap, unless this is
 * the upgrade from the trigger route (which captured them). */
static int slot_ensure(PGconn *c, pst_store *st, bool upgrade, bool *gap,
                       char *err, size_t el)
{
    *gap = false;
    PGresult *r = PQexec(c, "SELECT role FROM pmgcm.state");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    bool none = strcmp(PQgetvalue(r, 0, 0), "none") == 0;
    PQclear(r);
    if (none) return 0;
    char slot[64];
    bool exists, lost;
    int rc;
    if ((rc = pst_slot_name(c, slot, sizeof(slot), err, el)) ||
        (rc = pst_slot_info(c, slot, &exists, &lost, err, el)))
        return rc;
    if (exists && !lost) return 0;
    if (lost) {
        pst_log(st, 0, "store: replication slot %s was invalidated"
                " (max_slot_wal_keep_size): changes since the last one"
                " captured were never decoded; re-making it and resyncing",
                slot);
        if ((rc = pst_slot_drop(c, slot, err, el))) return rc;
    } else if (!upgrade) {
        pst_log(st, 0, "store: replication slot %s is missing (dropped?):"
                " changes since the last one captured were never decoded;"
                " making it again and resyncing", slot);
    }
    if ((rc = pst_slot_create(st->conninfo, slot, err, el))) return rc;
    *gap = !upgrade;
    return 0;
}

/* The upgrade from the trigger route, in the setup's transaction: writers
 * are held off (SHARE locks on every replicated table), what the old
 * triggers captured is numbered (master) or kept as divergence (any other
 * node), the old triggers and queues go, and capture_lsn marks where
 * decoding takes over: everything committed before it was in the queues,
 * nothing after it is. */
static int upgrade_drain(PGconn *c, const tabdef *t, size_t n, char *err,
                         size_t el)
{
    int rc = 0;
    if (n) {
        char *sql = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&sql, &len);
        if (!f) return -ENOMEM;
        fputs("LOCK TABLE ", f);
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%s%s", i ? ", " : "", t[i].q);
        fputs(" IN SHARE MODE", f);
        if (fclose(f) != 0) {
            free(sql);
            return -ENOMEM;
        }
        rc = pst_exec(c, sql, err, el);
        free(sql);
        if (rc) return rc;
    }
    PGresult *r = PQexec(c, "SELECT role, cid FROM pmgcm.state FOR UPDATE");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    char role[16];
    snprintf(role, sizeof(role), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (strcmp(role, "master") == 0) {
        rc = pst_exec(
            c,
            "DO $d$ BEGIN IF to_regclass('pmgcm.capture') IS NOT NULL THEN"
            " WITH c AS (DELETE FROM pmgcm.capture RETURNING *),"
            " s AS (SELECT epoch, seq, cid FROM pmgcm.state),"
            " n AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS rn,"
            "  count(*) OVER () AS cnt FROM c),"
            " i AS (INSERT INTO pmgcm.log (seq, epoch, op, tbl, old, new, ts,"
            "  last, origin) SELECT s.seq + n.rn, s.epoch, n.op, n.tbl, n.old,"
            "  n.new, clock_timestamp(), n.rn = n.cnt, s.cid FROM n, s"
            "  RETURNING 1)"
            " UPDATE pmgcm.state SET seq = seq + (SELECT count(*) FROM i),"
            "  recv_seq = seq + (SELECT count(*) FROM i), ts ="
            "  clock_timestamp(); END IF; END $d$",
            err, el);
    } else if (strcmp(role, "none") != 0) {
        rc = pst_exec(
            c,
            "DO $d$ BEGIN IF to_regclass('pmgcm.capture') IS NOT NULL THEN"
            " WITH c AS (DELETE FROM pmgcm.capture RETURNING *)"
            " INSERT INTO pmgcm.divergence (reason, epoch, op, tbl, old, new,"
            " ts) SELECT 'committed while this node was master, never"
            " numbered (found at the upgrade to logical decoding)', (SELECT"
            " epoch FROM pmgcm.state), op, tbl, old, new, now() FROM c ORDER"
            " BY id; IF FOUND THEN UPDATE pmgcm.state SET loaded = false;"
            " END IF; END IF; END $d$",
            err, el);
    }
    if (rc == 0 && strcmp(role, "none") != 0)
        rc = pst_exec(
            c,
            "DO $d$ BEGIN IF to_regclass('pmgcm.ocapture') IS NOT NULL THEN"
            " INSERT INTO pmgcm.opos (origin) SELECT cid FROM pmgcm.state"
            "  WHERE cid <> 0 ON CONFLICT DO NOTHING;"
            " WITH c AS (DELETE FROM pmgcm.ocapture RETURNING *),"
            " s AS (SELECT o.seq, o.origin FROM pmgcm.opos o JOIN pmgcm.state"
            "  t ON t.cid = o.origin),"
            " n AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS rn,"
            "  count(*) OVER () AS cnt FROM c),"
            " i AS (INSERT INTO pmgcm.olog (origin, seq, op, tbl, old, new, ts,"
            "  last) SELECT s.origin, s.seq + n.rn, n.op, n.tbl, n.old, n.new,"
            "  clock_timestamp(), n.rn = n.cnt FROM n, s RETURNING 1)"
            " UPDATE pmgcm.opos o SET seq = o.seq + (SELECT count(*) FROM i),"
            "  recv_seq = o.seq + (SELECT count(*) FROM i), ts ="
            "  clock_timestamp() FROM pmgcm.state t WHERE o.origin = t.cid;"
            " END IF; END $d$",
            err, el);
    if (rc) return rc;
    /* the old triggers, functions and queues */
    r = PQexec(c, "SELECT format('DROP TRIGGER %I ON %s', t.tgname,"
                  " t.tgrelid::regclass) FROM pg_trigger t WHERE t.tgname IN"
                  " ('pmgcm_capture', 'pmgcm_capture_truncate',"
                  " 'pmgcm_notify', 'pmgcm_ocapture', 'pmgcm_ocapture_truncate',"
                  " 'pmgcm_onotify')");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    for (int i = 0; rc == 0 && i < PQntuples(r); i++)
        rc = pst_exec(c, PQgetvalue(r, i, 0), err, el);
    PQclear(r);
    if (rc == 0)
        rc = pst_exec(c,
                      "DROP FUNCTION IF EXISTS pmgcm.capture();"
                      "DROP FUNCTION IF EXISTS pmgcm.ocapture();"
                      "DROP FUNCTION IF EXISTS pmgcm.notify();"
                      "DROP TABLE IF EXISTS pmgcm.capture, pmgcm.ocapture;"
                      "UPDATE pmgcm.state SET capture_lsn ="
                      " pg_current_wal_insert_lsn(), master_lsn = CASE WHEN"
                      " role = 'master' THEN '0/0'::pg_lsn ELSE master_lsn"
                      " END",
                      err, el);
    return rc;
}

/* The slot was made again: what happened since the last capture was not
 * decoded. Nothing may be lost silently, so: a master restarts its log
 * (every follower's position falls outside it: each takes a snapshot,
 * which holds those changes); any other node takes a snapshot itself
 * (its data is marked not loaded; what the snapshot replaces is kept);
 * this node's own per-origin rows are published again in full (a 'T'
 * per table, then every row, so the other nodes replace them). */
static int gap_resync(PGconn *c, pst_store *st, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT role, cid FROM pmgcm.state FOR UPDATE");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    bool master = strcmp(PQgetvalue(r, 0, 0), "master") == 0;
    char cid[16];
    snprintf(cid, sizeof(cid), "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    int rc = pst_exec(c,
                      master ? "DELETE FROM pmgcm.log; UPDATE pmgcm.state SET"
                               " seq = seq + 1, recv_seq = seq + 1,"
                               " capture_lsn = NULL"
                             : "UPDATE pmgcm.state SET loaded = false,"
                               " capture_lsn = NULL",
                      err, el);
    if (rc == 0 && !master) pst_unload_bump(st); /* the row is ours */
    if (rc || strcmp(cid, "0") == 0) goto out;
    r = PQexec(c, "SELECT tbl, quote_ident(col) FROM pmgcm.otables ORDER BY"
                  " tbl");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    const char *pc[1] = {cid};
    rc = pst_q1(c, "INSERT INTO pmgcm.opos (origin) VALUES ($1::int) ON"
                   " CONFLICT DO NOTHING", 1, pc, NULL, err, el);
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *pv[2] = {cid, PQgetvalue(r, i, 0)};
        char *sql = NULL;
        rc = pst_q1(c,
                    "WITH s AS (SELECT seq FROM pmgcm.opos WHERE origin ="
                    " $1::int) INSERT INTO pmgcm.olog (origin, seq, op, tbl, ts,"
                    " last) SELECT $1::int, s.seq + 1, 'T', $2, now(), false"
                    " FROM s; UPDATE pmgcm.opos SET seq = seq + 1, recv_seq ="
                    " seq + 1 WHERE origin = $1::int",
                    2, pv, NULL, err, el);
        /* the table and column are local names (pmgcm.otables) */
        if (rc == 0 &&
            asprintf(&sql,
                     "WITH s AS (SELECT seq FROM pmgcm.opos WHERE origin ="
                     " $1::int), r AS (SELECT to_jsonb(x.*) AS j, row_number()"
                     " OVER () AS rn FROM %s x WHERE x.%s::text = $1),"
                     " i AS (INSERT INTO pmgcm.olog (origin, seq, op, tbl, new,"
                     " ts, last) SELECT $1::int, s.seq + r.rn, 'I', $2, r.j,"
                     " now(), false FROM r, s RETURNING seq)"
                     " UPDATE pmgcm.opos SET seq = (SELECT coalesce(max(seq),"
                     " (SELECT seq FROM s)) FROM i), recv_seq = (SELECT"
                     " coalesce(max(seq), (SELECT seq FROM s)) FROM i) WHERE"
                     " origin = $1::int",
                     PQgetvalue(r, i, 0), PQgetvalue(r, i, 1)) < 0)
            rc = -ENOMEM;
        else if (rc == 0)
            rc = pst_q1(c, sql, 2, pv, NULL, err, el);
        free(sql);
    }
    PQclear(r);
    if (rc == 0)
        rc = pst_q1(c, "UPDATE pmgcm.olog SET last = true WHERE origin ="
                       " $1::int AND seq = (SELECT seq FROM pmgcm.opos WHERE"
                       " origin = $1::int)", 1, pc, NULL, err, el);
out:
    if (rc == 0)
        pst_log(st, 1, "store: RESYNC after a lost slot: %s", master
                ? "the change log restarts (followers take a snapshot)"
                : "this node takes a snapshot (what it replaces is kept)");
    return rc;
}

/* Refusing writes. On a node that is not the master, a statement check
 * on every replicated table (pmgcm.check: the fence); the master carries
 * none, so its commits pay nothing for it (a role change adds or drops
 * them in its transaction: CREATE/DROP TRIGGER wait for the writers in
 * flight and hold new ones until the commit). Per-origin tables carry a
 * row check everywhere. Only where missing or extra (they lock the
 * table). Names from pmgcm.tables / pmgcm.otables (local). */
int pst_checks_set(PGconn *c, bool master, char *err, size_t el)
{
    PGresult *r = PQexec(c,
                         "SELECT t.tbl, o.col, (SELECT coalesce(array_agg("
                         "g.tgname::text ORDER BY g.tgname)::text, '') FROM"
                         " pg_trigger g WHERE g.tgrelid = t.tbl::regclass AND"
                         " g.tgname LIKE 'pmgcm%') FROM pmgcm.tables t LEFT"
                         " JOIN pmgcm.otables o ON o.tbl = t.tbl ORDER BY t.tbl");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    int rc = 0;
    for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
        const char *q = PQgetvalue(r, i, 0), *have = PQgetvalue(r, i, 2);
        bool origin = !PQgetisnull(r, i, 1);
        const char *want = origin ? "{pmgcm_ocheck,pmgcm_ocheck_truncate}"
                           : master ? ""
                                    : "{pmgcm_check}";
        if (strcmp(have, want) == 0) continue;
        char *sql = NULL;
        int ar;
        if (origin) {
            const char *col = PQgetvalue(r, i, 1);
            char *lit = PQescapeLiteral(c, col, strlen(col));
            ar = lit ? asprintf(&sql,
                          "DROP TRIGGER IF EXISTS pmgcm_check ON %s;"
                          "CREATE OR REPLACE TRIGGER pmgcm_ocheck AFTER INSERT"
                          " OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE"
                          " FUNCTION pmgcm.ocheck(%s);"
                          "CREATE OR REPLACE TRIGGER pmgcm_ocheck_truncate"
                          " BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE"
                          " FUNCTION pmgcm.ocheck(%s)",
                          q, q, lit, q, lit)
                     : -1;
            if (lit) PQfreemem(lit);
        } else if (master) {
            ar = asprintf(&sql,
                          "DROP TRIGGER IF EXISTS pmgcm_ocheck ON %s;"
                          "DROP TRIGGER IF EXISTS pmgcm_ocheck_truncate ON %s;"
                          "DROP TRIGGER IF EXISTS pmgcm_check ON %s",
                          q, q, q);
        } else {
            ar = asprintf(&sql,
                          "DROP TRIGGER IF EXISTS pmgcm_ocheck ON %s;"
                          "DROP TRIGGER IF EXISTS pmgcm_ocheck_truncate ON %s;"
                          "CREATE OR REPLACE TRIGGER pmgcm_check BEFORE INSERT"
                          " OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH"
                          " STATEMENT EXECUTE FUNCTION pmgcm.check()",
                          q, q, q);
        }
        if (ar < 0) {
            rc = -ENOMEM;
            break;
        }
        rc = pst_exec(c, sql, err, el);
        free(sql);
    }
    PQclear(r);
    return rc;
}

int pst_checks_try(PGconn *c, bool master, bool *pending, char *err,
                   size_t el)
{
    *pending = false;
    int rc = pst_exec(c, "SAVEPOINT pmgcm_checks; SET LOCAL lock_timeout ="
                         " '2s'", err, el);
    if (rc) return rc;
    char e2[256];
    if (pst_checks_set(c, master, e2, sizeof(e2)) == 0)
        return pst_exec(c, "RELEASE SAVEPOINT pmgcm_checks", err, el);
    *pending = true;
    return pst_exec(c, "ROLLBACK TO SAVEPOINT pmgcm_checks", err, el);
}

/* ---- write checks still to add or drop (a role change or setup that could
 * not take the tables' locks in time) --------------------------------------------- */

static void checks_run(pst_job *j, PGconn *c)
{
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    PGresult *r = NULL;
    int rc = pst_exec(c, "BEGIN; SET LOCAL lock_timeout = '5s'", j->err,
                      sizeof(j->err));
    if (rc == 0)
        rc = pst_q1(c, "SELECT role = 'master' FROM pmgcm.state", 0, NULL, &r,
                    j->err, sizeof(j->err));
    if (rc == 0) {
        bool master = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        rc = pst_checks_set(c, master, j->err, sizeof(j->err));
    }
    if (rc == 0) rc = pst_exec(c, "COMMIT", j->err, sizeof(j->err));
    j->rc = rc;
}

static void checks_done(pst_job *j)
{
    pst_store *st = j->st;
    st->checks_busy = false;
    if (!st->closing) {
        if (j->rc == 0) {
            if (st->checks_pending)
                pst_log(st, 2, "store: the write checks follow the role now");
            st->checks_pending = false;
        } else {
            pst_log(st, 3, "store: write checks: %s (trying again)", j->err);
        }
    }
    free(j);
}

void pst_checks_retry(pst_store *st)
{
    if (!st->checks_pending || st->checks_busy || st->closing ||
        !st->info.ready)
        return;
    pst_job *j = calloc(1, sizeof(*j));
    if (!j) return;
    j->run = checks_run;
    j->done = checks_done;
    st->checks_busy = true;
    pst_submit(st, j);
}

/* ---- schema versions -------------------------------------------------------------- */

/* The migrations, in order: migrations[i] takes the schema from version
 * migrations[i].version - 1 to .version. Each is idempotent (a failed
 * setup runs it again) and runs after setup.sql in the setup's
 * transaction. */
static const struct {
    int version;
    const char *what;
    const char *sql;
} migrations[] = {
    {2, "the schema carries its version (pmgcm.schema)", pst_sql_migrate_2},
};

int pst_schema_version(PGconn *c, int *out, char *err, size_t el)
{
    PGresult *r = PQexec(c, "SELECT to_regclass('pmgcm.state') IS NOT NULL,"
                            " to_regclass('pmgcm.schema') IS NOT NULL");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    bool state = PQgetvalue(r, 0, 0)[0] == 't';
    bool versioned = PQgetvalue(r, 0, 1)[0] == 't';
    PQclear(r);
    /* no pmgcm.state: a fresh database; no pmgcm.schema: an install from
     * before versioning (version 1) */
    *out = !state ? 0 : 1;
    if (!versioned) return 0;
    r = PQexec(c, "SELECT version FROM pmgcm.schema");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        return PST_EDB;
    }
    if (PQntuples(r) == 1) {
        long v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        *out = v < 0 ? 0 : v > 1000000 ? 1000000 : (int)v;
    }
    PQclear(r);
    return 0;
}

/* After setup.sql (which brings any install to version 1): the
 * migrations above from, then the version row. */
static int schema_migrate(PGconn *c, pst_store *st, int from, char *err,
                          size_t el)
{
    int rc = 0, v = from < 1 ? 1 : from;
    for (size_t i = 0; i < sizeof(migrations) / sizeof(migrations[0]); i++) {
        if (migrations[i].version <= v) continue;
        if ((rc = pst_exec(c, migrations[i].sql, err, el))) {
            char e2[200];
            snprintf(e2, sizeof(e2), "%s", err);
            snprintf(err, el, "schema migration to version %d (%s): %s",
                     migrations[i].version, migrations[i].what, e2);
            return rc;
        }
        v = migrations[i].version;
    }
    char vb[16];
    snprintf(vb, sizeof(vb), "%d", PST_SCHEMA_VERSION);
    const char *pv[2] = {vb, pmm_build_version};
    rc = pst_q1(c,
                "INSERT INTO pmgcm.schema (one, version, build) VALUES (true,"
                " $1::int, $2) ON CONFLICT (one) DO UPDATE SET version ="
                " EXCLUDED.version, build = EXCLUDED.build, migrated = CASE"
                " WHEN pmgcm.schema.version = EXCLUDED.version THEN"
                " pmgcm.schema.migrated ELSE now() END WHERE"
                " (pmgcm.schema.version, pmgcm.schema.build) IS DISTINCT FROM"
                " (EXCLUDED.version, EXCLUDED.build)",
                2, pv, NULL, err, el);
    if (rc == 0 && from >= 1 && from < PST_SCHEMA_VERSION && st)
        pst_log(st, 2, "store: pmgcm schema migrated from version %d to %d",
                from, PST_SCHEMA_VERSION);
    return rc;
}

int pst_db_setup(PGconn *c, pst_store *st, char *err, size_t errlen,
                 char **schema_text, pst_info *info, uint64_t *loaded_gen,
                 pst_origin *opos, size_t *n_opos, pst_tableset **tables,
                 bool *checks_pending)
{
    *checks_pending = false;
    int rc = server_check(c, err, errlen);
    if (rc) return rc;
    if ((rc = pst_exec(c, "BEGIN", err, errlen))) return rc;
    /* one setup at a time across daemons sharing a database */
    int from = 0;
    if ((rc = pst_exec(c, "SELECT pg_advisory_xact_lock(7947001)", err,
                       errlen)) ||
        (rc = pst_schema_version(c, &from, err, errlen)))
        return rc;
    if (from > PST_SCHEMA_VERSION) {
        char e2[64];
        pst_exec(c, "ROLLBACK", e2, sizeof(e2));
        snprintf(err, errlen, "the database's pmgcm schema is version %d, "
                 "newer than this build knows (%d, pmgclusterd %s): a newer "
                 "pmgclusterd ran on it; run that build (or a newer one) "
                 "again, or restore a backup taken before it (README "
                 "\"Backup and restore\")", from, PST_SCHEMA_VERSION,
                 pmm_build_version);
        return -EPROTONOSUPPORT;
    }
    if ((rc = pst_exec(c, pst_sql_setup, err, errlen)) ||
        (rc = schema_migrate(c, st, from, err, errlen)))
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
        const char *pv[2] = {t[i].q, t[i].cond};
        rc = pst_q1(c,
                    "INSERT INTO pmgcm.tables VALUES ($1,"
                    " format('DELETE FROM %s t USING jsonb_populate_record("
                    "NULL::%s, $1) r WHERE %s', $1::text, $1::text, $2::text),"
                    " format('INSERT INTO %s SELECT * FROM "
                    "jsonb_populate_record(NULL::%s, $1)', $1::text,"
                    " $1::text))",
                    2, pv, NULL, err, errlen);
    }
    for (int o = 0; o < 2 && rc == 0; o++) {
        char *fn = apply_sql(t, n, o == 1);
        rc = fn ? pst_exec(c, fn, err, errlen) : -ENOMEM;
        free(fn);
    }
    /* the publication the capture streams: exactly the replicated set
     * (local names from pg_class, never from the network) */
    if (rc == 0) rc = publication_set(c, t, n, err, errlen);
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
    if (rc == 0) rc = pst_exec(c, "COMMIT", err, errlen);
    /* the slot (in a cluster), then the triggers: an install of the
     * trigger route is upgraded in place */
    bool upgrade = false, gap = false;
    if (rc == 0) rc = upgrading(c, &upgrade, err, errlen);
    if (rc == 0) rc = slot_ensure(c, st, upgrade, &gap, err, errlen);
    if (rc == 0) rc = pst_exec(c, "BEGIN; SELECT pg_advisory_xact_lock(7947001)",
                               err, errlen);
    if (rc == 0 && upgrade) rc = upgrade_drain(c, t, n, err, errlen);
    if (rc == 0 && gap) rc = gap_resync(c, st, err, errlen);
    if (rc == 0) {
        /* the checks follow the role (a master carries none) */
        PGresult *rr = PQexec(c, "SELECT role = 'master' FROM pmgcm.state");
        bool master = PQresultStatus(rr) == PGRES_TUPLES_OK &&
                      PQntuples(rr) == 1 && PQgetvalue(rr, 0, 0)[0] == 't';
        PQclear(rr);
        rc = pst_checks_try(c, master, checks_pending, err, errlen);
    }
    if (rc == 0) rc = pst_exec(c, "COMMIT", err, errlen);
    free_tables(t, n);
    if (rc) return rc;
    if (upgrade)
        pst_log(st, 1, "store: upgraded in place from the trigger route:"
                " changes are now captured through logical decoding (slot"
                " and publication pmgcm); data and positions kept");
    /* the row shared: a "not loaded" being committed is in, a later one
     * has a later generation (pst_loaded_read) */
    if ((rc = pst_exec(c, "BEGIN", err, errlen))) return rc;
    PGresult *r = PQexec(c,
                         "SELECT epoch, seq, recv_seq, loaded, snapshots,"
                         " coalesce((extract(epoch FROM ts) * 1000000)::bigint,"
                         " 0) FROM pmgcm.state FOR SHARE");
    *loaded_gen = pst_unload_gen(st);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 ||
        (rc = pst_exec(c, "COMMIT", err, errlen)) != 0) {
        if (!rc) pst_pgerr(c, r, err, errlen);
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return PST_EDB;
    }
    info->pos.epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    info->pos.seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    info->recv_seq = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    info->loaded = PQgetvalue(r, 0, 3)[0] == 't';
    info->snapshots = strtoull(PQgetvalue(r, 0, 4), NULL, 10);
    info->pos_ts_us = strtoll(PQgetvalue(r, 0, 5), NULL, 10);
    info->slot_repairs = gap ? 1 : 0;
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
    /* the fence follows pmgcm.state (a role change that failed between
     * its setval and its commit, an older install) */
    return pst_exec(c, "SELECT setval('pmgcm.fence', CASE role WHEN"
                       " 'master' THEN 1 WHEN 'none' THEN 2 ELSE 0 END)"
                       " FROM pmgcm.state",
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
    uint64_t loaded_gen; /* pst_unload_gen as info.loaded was read */
    pst_origin opos[PST_ORIGINS_MAX];
    size_t n_opos;
    pst_tableset *tables;
    bool checks_pending;
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
                         &s->info, &s->loaded_gen, s->opos, &s->n_opos,
                         &s->tables, &s->checks_pending);
}

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
    if (j->rc == 0 && s->checks_pending) st->checks_pending = true;
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
            pst_capture_poke(st);
            pst_changed(st);
        } else if (j->rc) {
            pst_log(st, 1, "store: re-reading table definitions: %s", j->err);
        }
        free(s->schema_text);
        free(s);
        return;
    }
    if (j->rc == -EPROTONOSUPPORT) {
        /* the schema is newer than this build: never retried */
        st->info.fatal = true;
        pst_log(st, 0, "store: %s", j->err);
        pst_set_error(st, "%s", j->err);
        st->info.state = PST_ERROR;
        free(s->schema_text);
        free(s);
        pst_changed(st);
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
    pst_loaded_read(st, s->info.loaded, s->loaded_gen);
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
    if (s->info.slot_repairs) i->slot_repairs += s->info.slot_repairs;
    free(s);
    pst_capture_run(st);
    pst_capture_poke(st);
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
    if (st->setup_busy || st->info.ready || st->closing || st->info.fatal)
        return;
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

/* ---- a lost slot ------------------------------------------------------------------ */

typedef struct repair_job {
    pst_job j;
    bool gap;
} repair_job;

static void repair_run(pst_job *j, PGconn *c)
{
    repair_job *rj = (repair_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    int rc = slot_ensure(c, j->st, false, &rj->gap, err, el);
    if (rc == 0 && rj->gap &&
        (rc = pst_exec(c, "BEGIN; SELECT pg_advisory_xact_lock(7947001)", err,
                       el)) == 0 &&
        (rc = gap_resync(c, j->st, err, el)) == 0)
        rc = pst_exec(c, "COMMIT", err, el);
    j->rc = rc;
}

static void repair_done(pst_job *j)
{
    repair_job *rj = (repair_job *)j;
    pst_store *st = j->st;
    st->repair_busy = false;
    if (!st->closing) {
        if (j->rc) {
            pst_set_error(st, "re-making the replication slot: %s", j->err);
        } else if (rj->gap) {
            st->info.slot_repairs++;
            /* positions and loaded changed: read them as the setup does */
            st->info.ready = false;
            pst_setup_start(st);
        }
        pst_capture_poke(st);
        pst_changed(st);
    }
    free(rj);
}

void pst_slot_repair(pst_store *st)
{
    if (st->repair_busy || st->closing || !st->info.ready) return;
    repair_job *rj = calloc(1, sizeof(*rj));
    if (!rj) return;
    rj->j.run = repair_run;
    rj->j.done = repair_done;
    st->repair_busy = true;
    pst_submit(st, &rj->j);
}
