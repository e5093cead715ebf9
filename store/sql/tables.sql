-- tables.sql - the replicated set with its columns and keys (schema.c).
-- $1: db_schemas (comma list), $2: db_exclude (comma list of schema.table,
-- plain or quoted). One row per table with a primary key in those schemas,
-- minus the exclusions, ordered by name:
--   1 q        the table as a quoted identifier, format('%I.%I')
--   2 cols     "col type, ..." in column order
--   3 pk       "a,b" the primary key columns
--   4 cond     "t.a = r.a AND ..." (target t, record r)
--   5 set      "b = EXCLUDED.b, ..." the non-key columns ('' when none)
--   6 changed  the key differs between pmgcm_c.old and pmgcm_c.new
--   7 lit      q as an SQL literal
--   8 ncols    the number of columns
WITH s AS (SELECT btrim(x) AS n FROM unnest(string_to_array($1, ',')) x
           WHERE btrim(x) <> ''),
     e AS (SELECT btrim(x) AS n FROM unnest(string_to_array($2, ',')) x
           WHERE btrim(x) <> ''),
     t AS (SELECT c.oid, n.nspname, c.relname,
                  format('%I.%I', n.nspname, c.relname) AS q
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND n.nspname IN (SELECT n FROM s)
              AND NOT c.relispartition
              AND EXISTS (SELECT 1 FROM pg_constraint k
                           WHERE k.conrelid = c.oid AND k.contype = 'p')
              AND format('%s.%s', n.nspname, c.relname) NOT IN (SELECT n FROM e)
              AND format('%I.%I', n.nspname, c.relname) NOT IN (SELECT n FROM e))
SELECT t.q,
       (SELECT string_agg(format('%I %s', a.attname,
                                 format_type(a.atttypid, a.atttypmod)),
                          ', ' ORDER BY a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped),
       (SELECT string_agg(format('%I', a.attname), ','
                          ORDER BY array_position(k.conkey, a.attnum))
          FROM pg_constraint k
          JOIN pg_attribute a ON a.attrelid = k.conrelid
                             AND a.attnum = ANY (k.conkey)
         WHERE k.conrelid = t.oid AND k.contype = 'p'),
       (SELECT string_agg(format('t.%1$I = r.%1$I', a.attname), ' AND ')
          FROM pg_constraint k
          JOIN pg_attribute a ON a.attrelid = k.conrelid
                             AND a.attnum = ANY (k.conkey)
         WHERE k.conrelid = t.oid AND k.contype = 'p'),
       (SELECT string_agg(format('%1$I = EXCLUDED.%1$I', a.attname), ', '
                          ORDER BY a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                            WHERE k.conrelid = t.oid AND k.contype = 'p'
                              AND a.attnum = ANY (k.conkey))),
       (SELECT string_agg(format('(pmgcm_c.old->%1$L) IS DISTINCT FROM (pmgcm_c.new->%1$L)',
                                 a.attname), ' OR ')
          FROM pg_constraint k
          JOIN pg_attribute a ON a.attrelid = k.conrelid
                             AND a.attnum = ANY (k.conkey)
         WHERE k.conrelid = t.oid AND k.contype = 'p'),
       quote_literal(t.q),
       (SELECT count(*) FROM pg_attribute a
         WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped)
  FROM t
 ORDER BY t.q
