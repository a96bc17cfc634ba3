-- The replicated store: every region's state as CRDT registers (see
-- crdt/DESIGN.md), the change log the replication daemon ships, the
-- region's hybrid logical clock, and the notification outbox.
--
-- An entity is (page_id, type, id) with a causal length `cl` (odd = alive);
-- each field is an LWW register carrying the life (`cl`) it was written in
-- and its stamp (hlc, region) plus the (origin, seq) of the change.  Writes
-- go through sp_write (local) and sp_merge_change (local and remote), which
-- apply exactly crdt/'s merge rules, so PostgreSQL and the in-memory
-- crdt_doc agree on every winner.

CREATE TABLE sp_region_clock (
  region smallint PRIMARY KEY,
  hlc    bigint NOT NULL DEFAULT 0,  -- highest stamp issued or observed
  seq    bigint NOT NULL DEFAULT 0   -- last local sequence number issued
);

-- Highest contiguous sequence applied from each origin (own writes included).
CREATE TABLE sp_vclock (
  origin smallint PRIMARY KEY,
  seq    bigint NOT NULL DEFAULT 0
);

CREATE TABLE sp_entity (
  page_id text     NOT NULL,
  type    text     NOT NULL,
  id      text     NOT NULL,
  cl      integer  NOT NULL CHECK (cl > 0),
  hlc     bigint   NOT NULL,
  region  smallint NOT NULL,
  origin  smallint NOT NULL,
  seq     bigint   NOT NULL,
  PRIMARY KEY (page_id, type, id)
);

CREATE TABLE sp_field (
  page_id text     NOT NULL,
  type    text     NOT NULL,
  id      text     NOT NULL,
  field   text     NOT NULL,
  value   text,
  cl      integer  NOT NULL CHECK (cl > 0),
  hlc     bigint   NOT NULL,
  region  smallint NOT NULL,
  origin  smallint NOT NULL,
  seq     bigint   NOT NULL,
  PRIMARY KEY (page_id, type, id, field)
);

-- One row per field-level change, local or applied from a peer, with its
-- original (origin, seq): what replication ships and relays.
CREATE TABLE sp_change_log (
  origin    smallint NOT NULL,
  seq       bigint   NOT NULL,
  kind      smallint NOT NULL CHECK (kind IN (1, 2)),  -- 1 field, 2 existence
  page_id   text     NOT NULL,
  type      text     NOT NULL,
  id        text     NOT NULL,
  field     text,
  value     text,
  cl        integer  NOT NULL,
  hlc       bigint   NOT NULL,
  region    smallint NOT NULL,
  logged_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (origin, seq)
);

-- Notifications caused by a change, written in the change's transaction.
CREATE TABLE sp_outbox (
  id         bigserial PRIMARY KEY,
  event_id   text NOT NULL,           -- idempotency key base
  page_id    text NOT NULL,
  kind       text NOT NULL,           -- incident, component_update, maintenance
  payload    jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  claimed_at timestamptz,
  done_at    timestamptz
);
CREATE INDEX sp_outbox_pending ON sp_outbox (id) WHERE done_at IS NULL;

-- Merges one change with crdt/'s rules; true when it altered the state.
-- Field order: (cl, hlc, region, non-null, value bytes, origin, seq);
-- existence order: (cl, hlc, region, origin, seq).  A field from a life the
-- entity has left is ignored; a rising cl drops the older lives' fields.
CREATE FUNCTION sp_merge_change(p_kind smallint, p_page text, p_type text, p_id text,
                                p_field text, p_value text, p_cl integer, p_hlc bigint,
                                p_region smallint, p_origin smallint, p_seq bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  ecl integer;
  done boolean := false;
BEGIN
  IF p_kind = 1 THEN
    SELECT cl INTO ecl FROM sp_entity WHERE page_id = p_page AND type = p_type AND id = p_id;
    IF p_cl < coalesce(ecl, 0) THEN
      RETURN false;
    END IF;
    INSERT INTO sp_field AS f (page_id, type, id, field, value, cl, hlc, region, origin, seq)
    VALUES (p_page, p_type, p_id, p_field, p_value, p_cl, p_hlc, p_region, p_origin, p_seq)
    ON CONFLICT (page_id, type, id, field) DO UPDATE
      SET value = EXCLUDED.value, cl = EXCLUDED.cl, hlc = EXCLUDED.hlc,
          region = EXCLUDED.region, origin = EXCLUDED.origin, seq = EXCLUDED.seq
      WHERE (f.cl, f.hlc, f.region, f.value IS NOT NULL,
             convert_to(coalesce(f.value, ''), 'UTF8'), f.origin, f.seq)
          < (EXCLUDED.cl, EXCLUDED.hlc, EXCLUDED.region, EXCLUDED.value IS NOT NULL,
             convert_to(coalesce(EXCLUDED.value, ''), 'UTF8'), EXCLUDED.origin, EXCLUDED.seq)
    RETURNING true INTO done;
    RETURN coalesce(done, false);
  END IF;
  INSERT INTO sp_entity AS e (page_id, type, id, cl, hlc, region, origin, seq)
  VALUES (p_page, p_type, p_id, p_cl, p_hlc, p_region, p_origin, p_seq)
  ON CONFLICT (page_id, type, id) DO UPDATE
    SET cl = EXCLUDED.cl, hlc = EXCLUDED.hlc, region = EXCLUDED.region,
        origin = EXCLUDED.origin, seq = EXCLUDED.seq
    WHERE (e.cl, e.hlc, e.region, e.origin, e.seq)
        < (EXCLUDED.cl, EXCLUDED.hlc, EXCLUDED.region, EXCLUDED.origin, EXCLUDED.seq)
  RETURNING true INTO done;
  IF coalesce(done, false) THEN
    DELETE FROM sp_field
     WHERE page_id = p_page AND type = p_type AND id = p_id AND cl < p_cl;
    RETURN true;
  END IF;
  RETURN false;
END $$;

-- A local write: one transaction of intents, stamped with one HLC stamp from
-- the region's clock row (which serialises the region's writers, so local
-- sequence numbers are dense and in commit order).
--   p_ops: [{"op": "create"|"delete"|"recreate"|"set"|"require",
--            "p": page, "t": type, "i": id, "f": field, "v": value-or-null}]
--   create   the entity must not exist; sets cl 1
--   delete   the entity must be alive; cl + 1
--   recreate the entity must be deleted; cl + 1
--   set      the entity must be alive (or created earlier in p_ops); writes
--            the field in its current life
--   require  the entity must be alive (a precondition only)
--   p_outbox: [{"event": id, "page": page, "kind": kind, "payload": {...}}]
-- Returns {"hlc": stamp, "region": r, "changes": [{"k","p","t","i","f","v","cl","seq"}]}.
-- Errors: SQLSTATE P0002 (entity missing or deleted: "not found: type id"),
-- 23505 (create of an existing entity), 22023 (malformed op).
CREATE FUNCTION sp_write(p_region smallint, p_wall_ms bigint, p_ops jsonb, p_outbox jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  clk record;
  stamp bigint;
  s bigint;
  op jsonb;
  kind text;
  ecl integer;
  ncl integer;
  out jsonb := '[]'::jsonb;
BEGIN
  INSERT INTO sp_region_clock (region) VALUES (p_region) ON CONFLICT DO NOTHING;
  SELECT hlc, seq INTO clk FROM sp_region_clock WHERE region = p_region FOR UPDATE;
  stamp := greatest(clk.hlc + 1, p_wall_ms << 16);
  s := clk.seq;
  FOR op IN SELECT value FROM jsonb_array_elements(p_ops) LOOP
    kind := op->>'op';
    IF (op->>'p') IS NULL OR (op->>'t') IS NULL OR (op->>'i') IS NULL THEN
      RAISE EXCEPTION 'malformed op %', op USING ERRCODE = '22023';
    END IF;
    SELECT cl INTO ecl FROM sp_entity WHERE page_id = op->>'p' AND type = op->>'t' AND id = op->>'i';
    ecl := coalesce(ecl, 0);
    IF kind = 'require' THEN
      IF ecl % 2 = 0 THEN
        RAISE EXCEPTION 'not found: % %', op->>'t', op->>'i' USING ERRCODE = 'P0002';
      END IF;
      CONTINUE;
    ELSIF kind = 'set' THEN
      IF ecl % 2 = 0 OR (op->>'f') IS NULL THEN
        RAISE EXCEPTION 'not found: % %', op->>'t', op->>'i' USING ERRCODE = 'P0002';
      END IF;
      s := s + 1;
      PERFORM sp_merge_change(1::smallint, op->>'p', op->>'t', op->>'i', op->>'f', op->>'v',
                              ecl, stamp, p_region, p_region, s);
      INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
      VALUES (p_region, s, 1, op->>'p', op->>'t', op->>'i', op->>'f', op->>'v', ecl, stamp, p_region);
      out := out || jsonb_build_object('k', 1, 'p', op->>'p', 't', op->>'t', 'i', op->>'i',
                                       'f', op->>'f', 'v', op->'v', 'cl', ecl, 'seq', s);
      CONTINUE;
    ELSIF kind = 'create' THEN
      IF ecl <> 0 THEN
        RAISE EXCEPTION 'exists: % %', op->>'t', op->>'i' USING ERRCODE = '23505';
      END IF;
      ncl := 1;
    ELSIF kind = 'delete' THEN
      IF ecl % 2 = 0 THEN
        RAISE EXCEPTION 'not found: % %', op->>'t', op->>'i' USING ERRCODE = 'P0002';
      END IF;
      ncl := ecl + 1;
    ELSIF kind = 'recreate' THEN
      IF ecl = 0 OR ecl % 2 = 1 THEN
        RAISE EXCEPTION 'not deleted: % %', op->>'t', op->>'i' USING ERRCODE = 'P0002';
      END IF;
      ncl := ecl + 1;
    ELSE
      RAISE EXCEPTION 'unknown op %', kind USING ERRCODE = '22023';
    END IF;
    s := s + 1;
    PERFORM sp_merge_change(2::smallint, op->>'p', op->>'t', op->>'i', NULL, NULL,
                            ncl, stamp, p_region, p_region, s);
    INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
    VALUES (p_region, s, 2, op->>'p', op->>'t', op->>'i', NULL, NULL, ncl, stamp, p_region);
    out := out || jsonb_build_object('k', 2, 'p', op->>'p', 't', op->>'t', 'i', op->>'i',
                                     'cl', ncl, 'seq', s);
  END LOOP;
  UPDATE sp_region_clock SET hlc = stamp, seq = s WHERE region = p_region;
  INSERT INTO sp_vclock (origin, seq) VALUES (p_region, s)
    ON CONFLICT (origin) DO UPDATE SET seq = EXCLUDED.seq;
  IF p_outbox IS NOT NULL AND jsonb_typeof(p_outbox) = 'array' THEN
    INSERT INTO sp_outbox (event_id, page_id, kind, payload)
    SELECT o->>'event', o->>'page', o->>'kind', o->'payload'
      FROM jsonb_array_elements(p_outbox) AS o;
  END IF;
  RETURN jsonb_build_object('hlc', stamp, 'region', p_region, 'changes', out);
END $$;
