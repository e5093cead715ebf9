-- setup.sql - the store's own schema pmgcm (schema.c runs it at every
-- setup, in one transaction under an advisory lock; every statement is
-- idempotent).

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

CREATE TABLE IF NOT EXISTS pmgcm.capture (
    id bigserial PRIMARY KEY,
    tbl text NOT NULL,
    op "char" NOT NULL,
    old jsonb,
    new jsonb);

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

CREATE TABLE IF NOT EXISTS pmgcm.ocapture (
    id bigserial PRIMARY KEY,
    tbl text NOT NULL,
    op "char" NOT NULL,
    old jsonb,
    new jsonb);

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

CREATE TABLE IF NOT EXISTS pmgcm.opos (
    origin int PRIMARY KEY,
    seq bigint NOT NULL DEFAULT 0,
    recv_seq bigint NOT NULL DEFAULT 0,
    ts timestamptz);

CREATE OR REPLACE FUNCTION pmgcm.ocapture() RETURNS trigger
LANGUAGE plpgsql AS $f$
DECLARE me int; r text; t text; v text; col text := TG_ARGV[0];
BEGIN
  SELECT cid, role INTO me, r FROM pmgcm.state;
  IF r = 'none' OR r IS NULL OR me = 0 THEN RETURN NULL; END IF;
  t := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
  IF TG_LEVEL = 'STATEMENT' THEN
    IF TG_OP = 'TRUNCATE' THEN
      RAISE EXCEPTION 'pmgcm: % holds every node''s rows: delete this node''s own rows (% = %) instead of TRUNCATE', t, col, me USING ERRCODE = '42501';
    END IF;
    PERFORM pg_notify('pmgcm_capture', '');
    RETURN NULL;
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
  IF TG_OP = 'INSERT' THEN
    INSERT INTO pmgcm.ocapture(tbl, op, new) VALUES (t, 'I', to_jsonb(NEW));
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO pmgcm.ocapture(tbl, op, old, new) VALUES (t, 'U', to_jsonb(OLD), to_jsonb(NEW));
  ELSE
    INSERT INTO pmgcm.ocapture(tbl, op, old) VALUES (t, 'D', to_jsonb(OLD));
  END IF;
  RETURN NULL;
END $f$;

-- the trigger on every replicated table
CREATE OR REPLACE FUNCTION pmgcm.capture() RETURNS trigger
LANGUAGE plpgsql AS $f$
DECLARE r text; m text; t text; f bigint;
BEGIN
  -- a role change waits for writers in flight and holds new ones back
  -- (role.c role_run), so no capture row slips past it
  PERFORM pg_advisory_xact_lock_shared(7947002);
  SELECT role, master INTO r, m FROM pmgcm.state;
  -- pmgcm.state as of this transaction's snapshot may predate a role
  -- change (REPEATABLE READ, SERIALIZABLE): the fence says what the role
  -- is now, and both must say master
  SELECT last_value INTO f FROM pmgcm.fence;
  IF (r = 'none' OR r IS NULL) AND f = 2 THEN RETURN NULL; END IF;
  t := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
  IF r IS DISTINCT FROM 'master' OR f <> 1 THEN
    IF r = 'master' OR f = 1 THEN
      RAISE EXCEPTION 'pmgcm: % is replicated and this node''s role changed during this transaction (it began before a promote or a step-down): retry it, on the master', t USING ERRCODE = '25006';
    END IF;
    RAISE EXCEPTION 'pmgcm: % is replicated and this node is not the master: write on the master (%)', t, m USING ERRCODE = '25006';
  END IF;
  IF TG_LEVEL = 'STATEMENT' THEN
    INSERT INTO pmgcm.capture(tbl, op) VALUES (t, 'T');
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO pmgcm.capture(tbl, op, new) VALUES (t, 'I', to_jsonb(NEW));
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO pmgcm.capture(tbl, op, old, new) VALUES (t, 'U', to_jsonb(OLD), to_jsonb(NEW));
  ELSE
    INSERT INTO pmgcm.capture(tbl, op, old) VALUES (t, 'D', to_jsonb(OLD));
  END IF;
  IF TG_LEVEL = 'STATEMENT' THEN PERFORM pg_notify('pmgcm_capture', ''); END IF;
  RETURN NULL;
END $f$;

-- once per statement: wake the daemon at commit
CREATE OR REPLACE FUNCTION pmgcm.notify() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
  IF (SELECT role FROM pmgcm.state) = 'master' THEN
    PERFORM pg_notify('pmgcm_capture', '');
  END IF;
  RETURN NULL;
END $f$;
