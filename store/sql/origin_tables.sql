-- origin_tables.sql - db_origin_tables resolved (schema.c). $1: the
-- setting, "schema.table:column, ...". One row per entry:
--   1 the table as written, 2 the column, 3 the table exists,
--   4 the table as a quoted identifier, 5 the column exists,
--   6 the column is part of the primary key
WITH o AS (SELECT btrim(split_part(x, ':', 1)) AS n,
                  btrim(split_part(x, ':', 2)) AS c
             FROM unnest(string_to_array($1, ',')) x WHERE btrim(x) <> '')
SELECT o.n, o.c, to_regclass(o.n) IS NOT NULL,
       (SELECT format('%I.%I', s.nspname, k.relname)
          FROM pg_class k JOIN pg_namespace s ON s.oid = k.relnamespace
         WHERE k.oid = to_regclass(o.n)),
       EXISTS (SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = to_regclass(o.n) AND a.attname = o.c
                  AND NOT a.attisdropped),
       EXISTS (SELECT 1 FROM pg_constraint k
                 JOIN pg_attribute a ON a.attrelid = k.conrelid
                                    AND a.attnum = ANY (k.conkey)
                WHERE k.conrelid = to_regclass(o.n) AND k.contype = 'p'
                  AND a.attname = o.c)
  FROM o
