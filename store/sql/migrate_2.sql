-- migrate_2.sql - schema version 2: the pmgcm schema carries its version
-- (schema.c runs the migrations above the database's version in order,
-- after setup.sql, in the setup's transaction; version 1 is every
-- install from before versioning: setup.sql as it was then).
CREATE TABLE IF NOT EXISTS pmgcm.schema (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version int NOT NULL,
    build text NOT NULL DEFAULT '',
    migrated timestamptz NOT NULL DEFAULT now());
