-- setup.sql - the store's own schema pmgcm (schema.c runs it at every
-- setup, in one transaction under an advisory lock; every statement is
-- idempotent). Changes are captured through logical decoding (capture.c):
-- no trigger copies rows. The triggers below only refuse writes.

CREATE SCHEMA IF NOT EXISTS pmgcm;

-- one row: this node's role, the master's name, position, snapshots loaded
CREATE TABLE IF NOT EXISTS pmgcm.state (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    role text NOT NULL DEFAULT 'none',
    master text NOT NULL DEFAULT '',
    epoch bigint NOT NULL DEFAULT 0,
    seq bigint NOT NULL DEFAULT 0,
    recv_seq bigint NOT NULL DEFAULT 0,
    ts timestamptz,
    loaded boolean NOT NULL DEFAULT false,
    snapshots bigint NOT NULL DEFAULT 0,
    cid int NOT NULL DEFAULT 0,
    cluster text NOT NULL DEFAULT '');
INSERT INTO pmgcm.state(one) VALUES (true) ON CONFLICT DO NOTHING;
-- capture_lsn: the end of the last transaction the capture numbered (a
-- transaction the slot sends again after a restart and that committed
-- before it is skipped); master_lsn: where this node's term as master
-- began (what commits before it is not numbered: the step-down fence)
-- (ALTER TABLE only when missing: it locks pmgcm.state exclusively, and a
-- writer waiting for db_sync's acknowledgement may hold a read lock on it)
DO $d$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pmgcm.state'::regclass
                 AND attname = 'capture_lsn' AND NOT attisdropped) THEN
    ALTER TABLE pmgcm.state ADD COLUMN capture_lsn pg_lsn;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pmgcm.state'::regclass
                 AND attname = 'master_lsn' AND NOT attisdropped) THEN
    ALTER TABLE pmgcm.state ADD COLUMN master_lsn pg_lsn;
  END IF;
END $d$;

-- the role outside MVCC: a sequence's value is read as it is now, not as
-- of a transaction's snapshot (1 master, 0 another node of a cluster, 2
-- outside a cluster); set with every role change
CREATE SEQUENCE IF NOT EXISTS pmgcm.fence MINVALUE 0 MAXVALUE 2 START 0;

-- the ordered change log: (epoch, seq) positions
CREATE TABLE IF NOT EXISTS pmgcm.log (
    seq bigint PRIMARY KEY,
    epoch bigint NOT NULL,
    op "char" NOT NULL,
    tbl text,
    old jsonb,
    new jsonb,
    ts timestamptz NOT NULL,
    last boolean NOT NULL,
    origin int NOT NULL DEFAULT 0);

-- xid: the source transaction of a change this node's capture numbered
-- (its 32 low bits; NULL for what arrived from elsewhere). A snapshot
-- taken while that transaction is not visible yet (it waits for db_sync's
-- acknowledgement, or is a moment from it) must not claim to hold it.
DO $d$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pmgcm.log'::regclass
                 AND attname = 'xid' AND NOT attisdropped) THEN
    ALTER TABLE pmgcm.log ADD COLUMN xid bigint;
  END IF;
END $d$;
CREATE INDEX IF NOT EXISTS log_xid ON pmgcm.log (xid) WHERE xid IS NOT NULL;

CREATE TABLE IF NOT EXISTS pmgcm.epochs (
    epoch bigint PRIMARY KEY,
    start_seq bigint NOT NULL,
    master_cid int NOT NULL);

CREATE TABLE IF NOT EXISTS pmgcm.divergence (
    id bigserial PRIMARY KEY,
    recorded timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL,
    epoch bigint,
    seq bigint,
    op "char",
    tbl text,
    old jsonb,
    new jsonb,
    ts timestamptz);

CREATE TABLE IF NOT EXISTS pmgcm.backups (
    id bigserial PRIMARY KEY,
    created timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    schema_name text UNIQUE,
    reason text NOT NULL,
    tables int NOT NULL DEFAULT 0,
    rows bigint NOT NULL DEFAULT 0);

CREATE TABLE IF NOT EXISTS pmgcm.tables (
    tbl text PRIMARY KEY,
    del_sql text NOT NULL,
    ins_sql text NOT NULL);

-- per-origin tables: every node's own rows, to every node
CREATE TABLE IF NOT EXISTS pmgcm.otables (
    tbl text PRIMARY KEY,
    col text NOT NULL);

CREATE TABLE IF NOT EXISTS pmgcm.olog (
    origin int NOT NULL,
    seq bigint NOT NULL,
    op "char" NOT NULL,
    tbl text,
    old jsonb,
    new jsonb,
    ts timestamptz NOT NULL,
    last boolean NOT NULL,
    PRIMARY KEY (origin, seq));

DO $d$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pmgcm.olog'::regclass
                 AND attname = 'xid' AND NOT attisdropped) THEN
    ALTER TABLE pmgcm.olog ADD COLUMN xid bigint;
  END IF;
END $d$;
CREATE INDEX IF NOT EXISTS olog_xid ON pmgcm.olog (xid) WHERE xid IS NOT NULL;

CREATE TABLE IF NOT EXISTS pmgcm.opos (
    origin int PRIMARY KEY,
    seq bigint NOT NULL DEFAULT 0,
    recv_seq bigint NOT NULL DEFAULT 0,
    ts timestamptz);

-- Writes to a replicated table on a node that is not the master are
-- refused, once per statement (BEFORE ... FOR EACH STATEMENT): the fence,
-- read as it is now, not as of the transaction's snapshot. What still
-- commits after a step-down (a transaction whose statements all ran
-- before it) is caught by the capture and kept in pmgcm.divergence.
CREATE OR REPLACE FUNCTION pmgcm.check() RETURNS trigger
LANGUAGE plpgsql AS $f$
DECLARE f bigint; r text; m text;
BEGIN
  SELECT last_value INTO f FROM pmgcm.fence;
  IF f <> 0 THEN RETURN NULL; END IF; -- 1 master, 2 outside a cluster
  SELECT role, master INTO r, m FROM pmgcm.state;
  IF r = 'master' THEN
    RAISE EXCEPTION 'pmgcm: %.% is replicated and this node''s role changed during this transaction (it began before a promote or a step-down): retry it, on the master', quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME) USING ERRCODE = '25006';
  END IF;
  RAISE EXCEPTION 'pmgcm: %.% is replicated and this node is not the master: write on the master (%) (a restored copy of this database outside its cluster: pmgcm detach)', quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME), m USING ERRCODE = '25006';
END $f$;

-- per-origin tables: a node writes only rows carrying its own cid (a row
-- check), never TRUNCATE (the table holds every node's rows)
CREATE OR REPLACE FUNCTION pmgcm.ocheck() RETURNS trigger
LANGUAGE plpgsql AS $f$
DECLARE me int; r text; t text; v text; col text := TG_ARGV[0];
BEGIN
  SELECT cid, role INTO me, r FROM pmgcm.state;
  IF r = 'none' OR r IS NULL OR me = 0 THEN RETURN NULL; END IF;
  t := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
  IF TG_LEVEL = 'STATEMENT' THEN
    RAISE EXCEPTION 'pmgcm: % holds every node''s rows: delete this node''s own rows (% = %) instead of TRUNCATE', t, col, me USING ERRCODE = '42501';
  END IF;
  IF TG_OP <> 'INSERT' THEN
    v := to_jsonb(OLD) ->> col;
    IF v IS DISTINCT FROM me::text THEN
      RAISE EXCEPTION 'pmgcm: this % row belongs to the node with cid % (column %); this node (cid %) writes only its own rows', t, v, col, me USING ERRCODE = '42501';
    END IF;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    v := to_jsonb(NEW) ->> col;
    IF v IS DISTINCT FROM me::text THEN
      RAISE EXCEPTION 'pmgcm: this % row belongs to the node with cid % (column %); this node (cid %) writes only its own rows', t, v, col, me USING ERRCODE = '42501';
    END IF;
  END IF;
  RETURN NULL;
END $f$;

-- the publication the capture streams: the replicated set and the
-- per-origin tables (schema.c sets its tables)
DO $d$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'pmgcm') THEN
    CREATE PUBLICATION pmgcm;
  END IF;
END $d$;
