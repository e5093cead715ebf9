/*
 * jobs.c - the store's database work: schema setup and the replicated set,
 * numbering captured changes (master), roles, log retention.
 * run() functions execute on worker threads; done() on the loop.
 */
#define _GNU_SOURCE
#include "store/internal.h"

#include <errno.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- schema ------------------------------------------------------------------------- */

static const char SETUP_SQL[] =
    "CREATE SCHEMA IF NOT EXISTS pmgcm;"
    "CREATE TABLE IF NOT EXISTS pmgcm.state ("
    " one boolean PRIMARY KEY DEFAULT true CHECK (one),"
    " role text NOT NULL DEFAULT 'none', master text NOT NULL DEFAULT '',"
    " epoch bigint NOT NULL DEFAULT 0, seq bigint NOT NULL DEFAULT 0,"
    " recv_seq bigint NOT NULL DEFAULT 0, ts timestamptz,"
    " loaded boolean NOT NULL DEFAULT false,"
    " snapshots bigint NOT NULL DEFAULT 0, cid int NOT NULL DEFAULT 0,"
    " cluster text NOT NULL DEFAULT '');"
    "INSERT INTO pmgcm.state(one) VALUES (true) ON CONFLICT DO NOTHING;"
    "CREATE TABLE IF NOT EXISTS pmgcm.capture (id bigserial PRIMARY KEY,"
    " tbl text NOT NULL, op \"char\" NOT NULL, old jsonb, new jsonb);"
    /* the role outside MVCC: a sequence's value is read as it is now, not
     * as of a transaction's snapshot (1 master, 0 another node of a
     * cluster, 2 outside a cluster); set with every role change */
    "CREATE SEQUENCE IF NOT EXISTS pmgcm.fence MINVALUE 0 MAXVALUE 2"
    " START 0;"
    "CREATE TABLE IF NOT EXISTS pmgcm.log (seq bigint PRIMARY KEY,"
    " epoch bigint NOT NULL, op \"char\" NOT NULL, tbl text, old jsonb,"
    " new jsonb, ts timestamptz NOT NULL, last boolean NOT NULL,"
    " origin int NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS pmgcm.epochs (epoch bigint PRIMARY KEY,"
    " start_seq bigint NOT NULL, master_cid int NOT NULL);"
    "CREATE TABLE IF NOT EXISTS pmgcm.divergence (id bigserial PRIMARY KEY,"
    " recorded timestamptz NOT NULL DEFAULT now(), reason text NOT NULL,"
    " epoch bigint, seq bigint, op \"char\", tbl text, old jsonb, new jsonb,"
    " ts timestamptz);"
    "CREATE TABLE IF NOT EXISTS pmgcm.backups (id bigserial PRIMARY KEY,"
    " created timestamptz NOT NULL DEFAULT now(), kind text NOT NULL,"
    " schema_name text UNIQUE, reason text NOT NULL,"
    " tables int NOT NULL DEFAULT 0, rows bigint NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS pmgcm.tables (tbl text PRIMARY KEY,"
    " del_sql text NOT NULL, ins_sql text NOT NULL);"
    /* per-origin tables: every node's own rows, to every node */
    "CREATE TABLE IF NOT EXISTS pmgcm.otables (tbl text PRIMARY KEY,"
    " col text NOT NULL);"
    "CREATE TABLE IF NOT EXISTS pmgcm.ocapture (id bigserial PRIMARY KEY,"
    " tbl text NOT NULL, op \"char\" NOT NULL, old jsonb, new jsonb);"
    "CREATE TABLE IF NOT EXISTS pmgcm.olog (origin int NOT NULL,"
    " seq bigint NOT NULL, op \"char\" NOT NULL, tbl text, old jsonb,"
    " new jsonb, ts timestamptz NOT NULL, last boolean NOT NULL,"
    " PRIMARY KEY (origin, seq));"
    "CREATE TABLE IF NOT EXISTS pmgcm.opos (origin int PRIMARY KEY,"
    " seq bigint NOT NULL DEFAULT 0, recv_seq bigint NOT NULL DEFAULT 0,"
    " ts timestamptz);"
    "CREATE OR REPLACE FUNCTION pmgcm.ocapture() RETURNS trigger"
    " LANGUAGE plpgsql AS $f$\n"
    "DECLARE me int; r text; t text; v text; col text := TG_ARGV[0];\n"
    "BEGIN\n"
    "  SELECT cid, role INTO me, r FROM pmgcm.state;\n"
    "  IF r = 'none' OR r IS NULL OR me = 0 THEN RETURN NULL; END IF;\n"
    "  t := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);\n"
    "  IF TG_LEVEL = 'STATEMENT' THEN\n"
    "    IF TG_OP = 'TRUNCATE' THEN RAISE EXCEPTION 'pmgcm: % holds every"
    " node''s rows: delete this node''s own rows (% = %) instead of"
    " TRUNCATE', t, col, me USING ERRCODE = '42501'; END IF;\n"
    "    PERFORM pg_notify('pmgcm_capture', '');\n"
    "    RETURN NULL;\n"
    "  END IF;\n"
    "  IF TG_OP <> 'INSERT' THEN v := to_jsonb(OLD) ->> col;\n"
    "    IF v IS DISTINCT FROM me::text THEN RAISE EXCEPTION 'pmgcm: this"
    " % row belongs to the node with cid % (column %); this node (cid %)"
    " writes only its own rows', t, v, col, me USING ERRCODE = '42501';"
    " END IF; END IF;\n"
    "  IF TG_OP <> 'DELETE' THEN v := to_jsonb(NEW) ->> col;\n"
    "    IF v IS DISTINCT FROM me::text THEN RAISE EXCEPTION 'pmgcm: this"
    " % row belongs to the node with cid % (column %); this node (cid %)"
    " writes only its own rows', t, v, col, me USING ERRCODE = '42501';"
    " END IF; END IF;\n"
    "  IF TG_OP = 'INSERT' THEN\n"
    "    INSERT INTO pmgcm.ocapture(tbl, op, new) VALUES (t, 'I', to_jsonb(NEW));\n"
    "  ELSIF TG_OP = 'UPDATE' THEN\n"
    "    INSERT INTO pmgcm.ocapture(tbl, op, old, new)"
    " VALUES (t, 'U', to_jsonb(OLD), to_jsonb(NEW));\n"
    "  ELSE\n"
    "    INSERT INTO pmgcm.ocapture(tbl, op, old) VALUES (t, 'D', to_jsonb(OLD));\n"
    "  END IF;\n"
    "  RETURN NULL;\n"
    "END $f$;"
    /* the trigger on every replicated table */
    "CREATE OR REPLACE FUNCTION pmgcm.capture() RETURNS trigger"
    " LANGUAGE plpgsql AS $f$\n"
    "DECLARE r text; m text; t text; f bigint;\n"
    "BEGIN\n"
    /* a role change waits for writers in flight and holds new ones back
     * (jobs.c role_run), so no capture row slips past it */
    "  PERFORM pg_advisory_xact_lock_shared(7947002);\n"
    "  SELECT role, master INTO r, m FROM pmgcm.state;\n"
    /* pmgcm.state as of this transaction's snapshot may predate a role
     * change (REPEATABLE READ, SERIALIZABLE): the fence says what the
     * role is now, and both must say master */
    "  SELECT last_value INTO f FROM pmgcm.fence;\n"
    "  IF (r = 'none' OR r IS NULL) AND f = 2 THEN RETURN NULL; END IF;\n"
    "  t := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);\n"
    "  IF r IS DISTINCT FROM 'master' OR f <> 1 THEN\n"
    "    IF r = 'master' OR f = 1 THEN\n"
    "      RAISE EXCEPTION 'pmgcm: % is replicated and this node''s role"
    " changed during this transaction (it began before a promote or a"
    " step-down): retry it, on the master', t USING ERRCODE = '25006';\n"
    "    END IF;\n"
    "    RAISE EXCEPTION 'pmgcm: % is replicated and this node is not the "
    "master: write on the master (%)', t, m USING ERRCODE = '25006';\n"
    "  END IF;\n"
    "  IF TG_LEVEL = 'STATEMENT' THEN\n"
    "    INSERT INTO pmgcm.capture(tbl, op) VALUES (t, 'T');\n"
    "  ELSIF TG_OP = 'INSERT' THEN\n"
    "    INSERT INTO pmgcm.capture(tbl, op, new) VALUES (t, 'I', to_jsonb(NEW));\n"
    "  ELSIF TG_OP = 'UPDATE' THEN\n"
    "    INSERT INTO pmgcm.capture(tbl, op, old, new)"
    " VALUES (t, 'U', to_jsonb(OLD), to_jsonb(NEW));\n"
    "  ELSE\n"
    "    INSERT INTO pmgcm.capture(tbl, op, old) VALUES (t, 'D', to_jsonb(OLD));\n"
    "  END IF;\n"
    "  IF TG_LEVEL = 'STATEMENT' THEN PERFORM pg_notify('pmgcm_capture', '');"
    " END IF;\n"
    "  RETURN NULL;\n"
    "END $f$;"
    /* once per statement: wake the daemon at commit */
    "CREATE OR REPLACE FUNCTION pmgcm.notify() RETURNS trigger"
    " LANGUAGE plpgsql AS $f$\n"
    "BEGIN\n"
    "  IF (SELECT role FROM pmgcm.state) = 'master' THEN"
    " PERFORM pg_notify('pmgcm_capture', ''); END IF;\n"
    "  RETURN NULL;\n"
    "END $f$;";

/* The replicated set with its columns and keys, canonical text: one line
 * per table "schema.table(col type, ...) pk(a,b)". */
static const char TABLES_SQL[] =
    "WITH s AS (SELECT btrim(x) AS n FROM unnest(string_to_array($1, ',')) x"
    "  WHERE btrim(x) <> ''),"
    " e AS (SELECT btrim(x) AS n FROM unnest(string_to_array($2, ',')) x"
    "  WHERE btrim(x) <> ''),"
    " t AS (SELECT c.oid, n.nspname, c.relname,"
    "   format('%I.%I', n.nspname, c.relname) AS q"
    "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  WHERE c.relkind IN ('r', 'p') AND n.nspname IN (SELECT n FROM s)"
    "   AND NOT c.relispartition"
    "   AND EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid"
    "    AND k.contype = 'p')"
    "   AND format('%s.%s', n.nspname, c.relname) NOT IN (SELECT n FROM e)"
    "   AND format('%I.%I', n.nspname, c.relname) NOT IN (SELECT n FROM e))"
    " SELECT t.q,"
    "  (SELECT string_agg(format('%I %s', a.attname,"
    "     format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)"
    "    FROM pg_attribute a WHERE a.attrelid = t.oid AND a.attnum > 0"
    "     AND NOT a.attisdropped),"
    "  (SELECT string_agg(format('%I', a.attname), ',' ORDER BY"
    "     array_position(k.conkey, a.attnum))"
    "    FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid"
    "     AND a.attnum = ANY (k.conkey)"
    "    WHERE k.conrelid = t.oid AND k.contype = 'p'),"
    "  (SELECT string_agg(format('t.%1$I = r.%1$I', a.attname), ' AND ')"
    "    FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid"
    "     AND a.attnum = ANY (k.conkey)"
    "    WHERE k.conrelid = t.oid AND k.contype = 'p'),"
    "  (SELECT string_agg(format('%1$I = EXCLUDED.%1$I', a.attname), ', '"
    "     ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = t.oid"
    "     AND a.attnum > 0 AND NOT a.attisdropped AND NOT EXISTS (SELECT 1"
    "      FROM pg_constraint k WHERE k.conrelid = t.oid AND k.contype = 'p'"
    "      AND a.attnum = ANY (k.conkey))),"
    "  (SELECT string_agg(format('(c.old->%1$L) IS DISTINCT FROM"
    " (c.new->%1$L)', a.attname), ' OR ')"
    "    FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid"
    "     AND a.attnum = ANY (k.conkey)"
    "    WHERE k.conrelid = t.oid AND k.contype = 'p'),"
    "  quote_literal(t.q)"
    " FROM t ORDER BY t.q";

static void digest16(const char *text, char out[17])
{
    unsigned char h[32];
    mbedtls_sha256_ret((const unsigned char *)text, strlen(text), h, 0);
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", h[i]);
}

/* db_origin_tables resolved: (quoted table, column), or an error naming
 * what is wrong. */
static const char ORIGIN_SQL[] =
    "WITH o AS (SELECT btrim(split_part(x, ':', 1)) AS n,"
    "  btrim(split_part(x, ':', 2)) AS c"
    "  FROM unnest(string_to_array($1, ',')) x WHERE btrim(x) <> '')"
    " SELECT o.n, o.c, to_regclass(o.n) IS NOT NULL,"
    "  (SELECT format('%I.%I', s.nspname, k.relname) FROM pg_class k"
    "   JOIN pg_namespace s ON s.oid = k.relnamespace"
    "   WHERE k.oid = to_regclass(o.n)),"
    "  EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid ="
    "   to_regclass(o.n) AND a.attname = o.c AND NOT a.attisdropped),"
    "  EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_attribute a ON"
    "   a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)"
    "   WHERE k.conrelid = to_regclass(o.n) AND k.contype = 'p'"
    "   AND a.attname = o.c)"
    " FROM o";

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
    PGresult *r = PQexecParams(c, TABLES_SQL, 2, NULL, pv, NULL, NULL, 0);
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
        (rc = pst_exec(c, SETUP_SQL, err, errlen)))
        return rc;
    tabdef *t;
    size_t n;
    if ((rc = load_tables(c, st, &t, &n, err, errlen))) return rc;
    /* per-origin tables: must exist, be replicated, and have the origin
     * column in their primary key */
    {
        const char *pv[1] = {st->origin_tables};
        PGresult *r = PQexecParams(c, ORIGIN_SQL, 1, NULL, pv, NULL, NULL, 0);
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

/* ---- numbering captured changes (master) --------------------------------------- */

typedef struct capture_job {
    pst_job j;
    uint32_t cid;
    uint64_t n;
    pst_pos pos;
    int64_t ts_us;
} capture_job;

static void capture_run(pst_job *j, PGconn *c)
{
    capture_job *cj = (capture_job *)j;
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char cid[16];
    snprintf(cid, sizeof(cid), "%u", cj->cid);
    const char *pv[1] = {cid};
    int rc = pst_exec(c, "BEGIN", j->err, sizeof(j->err));
    if (rc) goto out;
    PGresult *r = PQexec(c, "SELECT epoch, seq, role FROM pmgcm.state FOR UPDATE");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    bool master = strcmp(PQgetvalue(r, 0, 2), "master") == 0;
    cj->pos.epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    cj->pos.seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    if (!master) { /* stepped down meanwhile: leave the rows alone */
        rc = pst_exec(c, "ROLLBACK", j->err, sizeof(j->err));
        goto out;
    }
    r = PQexecParams(
        c,
        "WITH c AS (DELETE FROM pmgcm.capture RETURNING *),"
        " s AS (SELECT epoch, seq FROM pmgcm.state),"
        " n AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS rn,"
        "  count(*) OVER () AS cnt FROM c)"
        " INSERT INTO pmgcm.log (seq, epoch, op, tbl, old, new, ts, last, origin)"
        " SELECT s.seq + n.rn, s.epoch, n.op, n.tbl, n.old, n.new,"
        "  clock_timestamp(), n.rn = n.cnt, $1::int FROM n, s",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    cj->n = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    if (cj->n == 0) {
        rc = pst_exec(c, "ROLLBACK", j->err, sizeof(j->err));
        goto out;
    }
    {
        char nb[24];
        snprintf(nb, sizeof(nb), "%llu", (unsigned long long)cj->n);
        const char *p2[1] = {nb};
        r = PQexecParams(c,
                         "UPDATE pmgcm.state SET seq = seq + $1::bigint,"
                         " recv_seq = seq + $1::bigint, ts = clock_timestamp()"
                         " RETURNING (extract(epoch FROM ts) * 1000000)::bigint",
                         1, NULL, p2, NULL, NULL, 0);
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, j->err, sizeof(j->err));
        PQclear(r);
        rc = PST_EDB;
        goto out;
    }
    cj->ts_us = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    cj->pos.seq += cj->n;
    rc = pst_exec(c, "COMMIT", j->err, sizeof(j->err));
out:
    j->rc = rc;
}

static void capture_done(pst_job *j)
{
    capture_job *cj = (capture_job *)j;
    pst_store *st = j->st;
    st->capture_busy = false;
    if (st->closing) {
        free(cj);
        return;
    }
    if (j->rc) {
        pst_set_error(st, "numbering changes: %s", j->err);
    } else if (cj->n > 0) {
        pst_info *i = &st->info;
        i->pos = cj->pos;
        i->recv_seq = cj->pos.seq;
        i->head = cj->pos;
        i->pos_ts_us = i->head_ts_us = cj->ts_us;
        i->captured_total += cj->n;
        if (i->error[0]) pst_set_error(st, "%s", "");
        pst_sessions_head(st);
        pst_changed(st);
    }
    bool again = st->capture_again;
    free(cj);
    st->capture_again = false;
    if (again) pst_start_capture(st);
}

void pst_start_capture(pst_store *st)
{
    if (!st->info.ready || !st->info.master || st->closing) return;
    if (st->capture_busy) {
        st->capture_again = true;
        return;
    }
    capture_job *cj = calloc(1, sizeof(*cj));
    if (!cj) return;
    cj->cid = st->self_cid;
    cj->j.run = capture_run;
    cj->j.done = capture_done;
    st->capture_busy = true;
    st->capture_again = false;
    pst_submit(st, &cj->j);
}

/* ---- numbering this node's own origin changes (every node) ------------------ */

typedef struct ocap_job {
    pst_job j;
    uint32_t cid;
    uint64_t n, seq;
    int64_t ts_us;
} ocap_job;

static void ocap_run(pst_job *j, PGconn *c)
{
    ocap_job *oj = (ocap_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    char cid[16];
    snprintf(cid, sizeof(cid), "%u", oj->cid);
    const char *pv[1] = {cid};
    int rc = pst_exec(c, "BEGIN", err, el);
    PGresult *r = NULL;
    if (rc) goto out;
    r = PQexecParams(c, "INSERT INTO pmgcm.opos (origin) VALUES ($1::int)"
                        " ON CONFLICT DO NOTHING", 1, NULL, pv, NULL, NULL, 0);
    PQclear(r);
    r = PQexecParams(c, "SELECT seq FROM pmgcm.opos WHERE origin = $1::int"
                        " FOR UPDATE", 1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    oj->seq = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    r = PQexecParams(
        c,
        "WITH c AS (DELETE FROM pmgcm.ocapture RETURNING *),"
        " s AS (SELECT seq FROM pmgcm.opos WHERE origin = $1::int),"
        " n AS (SELECT c.*, row_number() OVER (ORDER BY c.id) AS rn,"
        "  count(*) OVER () AS cnt FROM c)"
        " INSERT INTO pmgcm.olog (origin, seq, op, tbl, old, new, ts, last)"
        " SELECT $1::int, s.seq + n.rn, n.op, n.tbl, n.old, n.new,"
        "  clock_timestamp(), n.rn = n.cnt FROM n, s",
        1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    oj->n = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    r = NULL;
    if (oj->n == 0) {
        rc = pst_exec(c, "ROLLBACK", err, el);
        goto out;
    }
    char nb[24];
    snprintf(nb, sizeof(nb), "%llu", (unsigned long long)oj->n);
    const char *p2[2] = {cid, nb};
    r = PQexecParams(c,
                     "UPDATE pmgcm.opos SET seq = seq + $2::bigint, recv_seq ="
                     " seq + $2::bigint, ts = clock_timestamp() WHERE origin ="
                     " $1::int RETURNING (extract(epoch FROM ts) *"
                     " 1000000)::bigint",
                     2, NULL, p2, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        rc = PST_EDB;
        goto out;
    }
    oj->ts_us = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    oj->seq += oj->n;
    rc = pst_exec(c, "COMMIT", err, el);
out:
    PQclear(r);
    j->rc = rc;
}

static void ocap_done(pst_job *j)
{
    ocap_job *oj = (ocap_job *)j;
    pst_store *st = j->st;
    st->ocapture_busy = false;
    if (!st->closing) {
        if (j->rc) {
            pst_set_error(st, "numbering this node's own rows: %s", j->err);
        } else if (oj->n > 0) {
            pst_origin *o = pst_opos(st, oj->cid, true);
            if (o) {
                o->seq = o->recv_seq = oj->seq;
                o->ts_us = oj->ts_us;
            }
            pst_sessions_head(st);
            pst_changed(st);
        }
    }
    bool again = st->ocapture_again;
    free(oj);
    st->ocapture_again = false;
    if (again && !st->closing) pst_start_ocapture(st);
}

void pst_start_ocapture(pst_store *st)
{
    if (!st->info.ready || st->closing || !st->info.n_origin_tables ||
        st->self_cid == 0 || st->info.state == PST_IDLE)
        return;
    if (st->ocapture_busy) {
        st->ocapture_again = true;
        return;
    }
    ocap_job *oj = calloc(1, sizeof(*oj));
    if (!oj) return;
    oj->cid = st->self_cid;
    oj->j.run = ocap_run;
    oj->j.done = ocap_done;
    st->ocapture_busy = true;
    st->ocapture_again = false;
    pst_submit(st, &oj->j);
}

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
    PGresult *r = PQexec(c, "SELECT tbl, quote_ident(col) FROM pmgcm.otables");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
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
    uint64_t moved;
    bool loaded;
    bool reset;
} role_req;

static int q1(PGconn *c, const char *sql, int n, const char *const *pv,
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
    if ((rc = pst_exec(c, "BEGIN", err, el))) goto out;
    PGresult *r;
    /* writers in flight finish first; new ones wait for the new role */
    if ((rc = pst_exec(c, "SELECT pg_advisory_xact_lock(7947002)", err, el)))
        goto out;
    if ((rc = q1(c, "SELECT epoch, seq, recv_seq, role, loaded, cluster FROM"
                    " pmgcm.state FOR UPDATE", 0, NULL, &r, err, el)))
        goto out;
    uint64_t epoch = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    uint64_t seq = strtoull(PQgetvalue(r, 0, 1), NULL, 10);
    uint64_t recv = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    q->loaded = PQgetvalue(r, 0, 4)[0] == 't';
    bool other_cluster = q->cluster[0] &&
                         strcmp(PQgetvalue(r, 0, 5), q->cluster) != 0;
    PQclear(r);
    char eb[24], sb[24], cb[16];
    if (other_cluster) {
        const char *pc[1] = {q->cluster};
        if ((rc = q1(c, "UPDATE pmgcm.state SET cluster = $1", 1, pc, NULL,
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
                      " role = 'none'), role = 'none', master = ''",
                      err, el);
        if (rc == 0) {
            PGresult *r2 = PQexec(c, "SELECT loaded FROM pmgcm.state");
            if (PQresultStatus(r2) == PGRES_TUPLES_OK && PQntuples(r2) == 1)
                q->loaded = PQgetvalue(r2, 0, 0)[0] == 't';
            PQclear(r2);
        }
    } else if (!q->master) {
        /* rows committed while we were master and never numbered: the
         * cluster will never get them */
        snprintf(eb, sizeof(eb), "%llu", (unsigned long long)epoch);
        const char *pv[1] = {eb};
        if ((rc = q1(c,
                     "WITH c AS (DELETE FROM pmgcm.capture RETURNING *)"
                     " INSERT INTO pmgcm.divergence (reason, epoch, op, tbl,"
                     " old, new, ts) SELECT 'committed while this node was"
                     " master (epoch ' || $1::text || '), never sent: the cluster"
                     " moved on', $1::bigint, op, tbl, old, new, now()"
                     " FROM c ORDER BY id",
                     1, pv, &r, err, el)))
            goto out;
        q->moved = strtoull(PQcmdTuples(r), NULL, 10);
        PQclear(r);
        if (q->moved > 0) {
            /* the tables hold those changes: only a snapshot repairs them */
            if ((rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = false",
                               err, el)))
                goto out;
            q->loaded = false;
        }
        snprintf(cb, sizeof(cb), "%u", q->cid);
        const char *p1[2] = {q->master_name, cb};
        rc = q1(c, "UPDATE pmgcm.state SET role = 'replica', master = $1,"
                   " cid = $2::int", 2, p1, NULL, err, el);
    } else {
        snprintf(cb, sizeof(cb), "%u", q->cid);
        if (q->epoch > epoch) {
            /* a new term: drop a received but incomplete batch, then an
             * epoch entry */
            snprintf(sb, sizeof(sb), "%llu", (unsigned long long)seq);
            const char *p1[1] = {sb};
            if ((rc = q1(c, "DELETE FROM pmgcm.log WHERE seq > $1::bigint", 1,
                         p1, NULL, err, el)))
                goto out;
            (void)recv;
            snprintf(eb, sizeof(eb), "%llu", (unsigned long long)q->epoch);
            snprintf(sb, sizeof(sb), "%llu", (unsigned long long)(seq + 1));
            const char *p3[3] = {eb, sb, cb};
            if ((rc = q1(c,
                         "INSERT INTO pmgcm.log (seq, epoch, op, ts, last,"
                         " origin) VALUES ($2::bigint, $1::bigint, 'E',"
                         " clock_timestamp(), true, $3::int)",
                         3, p3, NULL, err, el)) ||
                (rc = q1(c,
                         "INSERT INTO pmgcm.epochs VALUES ($1::bigint,"
                         " $2::bigint, $3::int) ON CONFLICT (epoch) DO UPDATE"
                         " SET start_seq = EXCLUDED.start_seq, master_cid ="
                         " EXCLUDED.master_cid",
                         3, p3, NULL, err, el)) ||
                (rc = q1(c,
                         "UPDATE pmgcm.state SET epoch = $1::bigint, seq ="
                         " $2::bigint, recv_seq = $2::bigint, ts ="
                         " clock_timestamp()",
                         2, p3, NULL, err, el)))
                goto out;
            epoch = q->epoch;
            seq = seq + 1;
        }
        const char *p1[2] = {q->master_name, cb};
        rc = q1(c, "UPDATE pmgcm.state SET role = 'master', master = $1,"
                   " cid = $2::int, loaded = true", 2, p1, NULL, err, el);
        q->loaded = true;
    }
    if (rc) goto out;
    q->pos.epoch = epoch;
    q->pos.seq = seq;
    /* the fence last, right before the commit (it is not transactional):
     * writers whose snapshot predates this change read it as it is now */
    if ((rc = pst_exec(c,
                       !q->in_cluster ? "SELECT setval('pmgcm.fence', 2)"
                       : q->master    ? "SELECT setval('pmgcm.fence', 1)"
                                      : "SELECT setval('pmgcm.fence', 0)",
                       err, el)))
        goto out;
    rc = pst_exec(c, "COMMIT", err, el);
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
            i->loaded = q->loaded;
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
            if (q->moved) {
                i->divergent_total += q->moved;
                pst_log(st, 1,
                        "store: DIVERGED: %llu change(s) committed here while"
                        " this node was master were never sent; kept in"
                        " pmgcm.divergence; resyncing with a snapshot",
                        (unsigned long long)q->moved);
                pst_start_kept(st);
            }
            pst_changed(st);
            if (i->master) pst_start_capture(st);
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
    if (!st->want_master) st->info.master = false; /* stop numbering now */
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

/* ---- the capture sweep (every node but the master) ------------------------------ */

/* A non-master must hold no captured, unsent change. The fence in the
 * capture trigger refuses such writes; this is the net behind it: any
 * capture row found on a node that is not master goes to divergence (with
 * the reason), and the data is marked not loaded, so a snapshot replaces
 * the tables (keeping what it replaces: see snapshots) and the node is
 * not A meanwhile. */
typedef struct sweep_job {
    pst_job j;
    uint64_t moved;
} sweep_job;

static void sweep_run(pst_job *j, PGconn *c)
{
    sweep_job *sj = (sweep_job *)j;
    char *err = j->err;
    size_t el = sizeof(j->err);
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    PGresult *r = PQexec(c, "SELECT EXISTS (SELECT 1 FROM pmgcm.capture)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pst_pgerr(c, r, err, el);
        PQclear(r);
        j->rc = PST_EDB;
        return;
    }
    bool any = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    if (!any) return;
    int rc;
    if ((rc = pst_exec(c, "BEGIN", err, el)) ||
        (rc = pst_exec(c, "SELECT pg_advisory_xact_lock(7947002)", err, el)) ||
        (rc = q1(c, "SELECT role FROM pmgcm.state FOR UPDATE", 0, NULL, &r,
                 err, el)))
        goto out;
    bool master = strcmp(PQgetvalue(r, 0, 0), "master") == 0;
    PQclear(r);
    if (master) { /* promoted meanwhile: the rows are its to number */
        rc = pst_exec(c, "ROLLBACK", err, el);
        goto out;
    }
    if ((rc = q1(c,
                 "WITH c AS (DELETE FROM pmgcm.capture RETURNING *)"
                 " INSERT INTO pmgcm.divergence (reason, epoch, op, tbl, old,"
                 " new, ts) SELECT 'committed here after this node had"
                 " stopped being master (its transaction began before the"
                 " step-down), never sent', (SELECT epoch FROM pmgcm.state),"
                 " op, tbl, old, new, now() FROM c ORDER BY id",
                 0, NULL, &r, err, el)))
        goto out;
    sj->moved = strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    if (sj->moved &&
        (rc = pst_exec(c, "UPDATE pmgcm.state SET loaded = false", err, el)))
        goto out;
    rc = pst_exec(c, "COMMIT", err, el);
out:
    j->rc = rc;
}

static void sweep_done(pst_job *j)
{
    sweep_job *sj = (sweep_job *)j;
    pst_store *st = j->st;
    st->sweep_busy = false;
    if (!st->closing) {
        if (j->rc) {
            pst_log(st, 3, "store: capture sweep: %s", j->err);
        } else if (sj->moved) {
            pst_info *i = &st->info;
            i->loaded = false;
            i->divergent_total += sj->moved;
            if (i->state == PST_IN_SYNC) i->state = PST_CATCHING_UP;
            pst_log(st, 1,
                    "store: DIVERGED: %llu change(s) committed here after"
                    " this node had stopped being master were never sent;"
                    " kept in pmgcm.divergence; resyncing with a snapshot",
                    (unsigned long long)sj->moved);
            pst_start_kept(st);
            pst_changed(st);
        }
    }
    free(sj);
}

void pst_start_sweep(pst_store *st)
{
    if (!st->info.ready || st->sweep_busy || st->closing || st->want_master ||
        st->info.master || st->info.state == PST_IDLE || st->role_busy)
        return;
    sweep_job *sj = calloc(1, sizeof(*sj));
    if (!sj) return;
    sj->j.run = sweep_run;
    sj->j.done = sweep_done;
    st->sweep_busy = true;
    pst_submit(st, &sj->j);
}

/* ---- retention ---------------------------------------------------------------------- */

typedef struct trim_job {
    pst_job j;
    uint32_t keep_s;
} trim_job;

/* The queue tables and the one-row state tables are updated at every
 * commit: their dead rows must go long before autovacuum's next round
 * (every capture, numbering pass and apply reads them). */
static void vacuum_run(pst_job *j, PGconn *c)
{
    if (!c) {
        j->rc = PST_EDB;
        return;
    }
    j->rc = pst_exec(c,
                     "VACUUM (SKIP_LOCKED) pmgcm.capture, pmgcm.ocapture,"
                     " pmgcm.state, pmgcm.opos",
                     j->err, sizeof(j->err));
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
    /* keep the newest entry so a caught-up node can always be served */
    j->rc = q1(c,
               "DELETE FROM pmgcm.log WHERE ts < now() - make_interval(secs =>"
               " $1::int) AND seq < (SELECT seq FROM pmgcm.state)",
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
