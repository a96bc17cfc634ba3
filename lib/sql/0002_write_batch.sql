-- Group commit for local writes.
--
-- sp_write holds the region's clock row until its commit, so a region's
-- writes commit one at a time: throughput was one write per commit latency.
-- sp_write_batch applies many independent writes (each a list of intents, as
-- for sp_write) in ONE transaction under one hold of the clock row: each
-- write runs in its own subtransaction, so a write whose precondition fails
-- is rolled back alone and reported, and the others commit together.  Each
-- write gets its own stamp (strictly increasing) and dense sequence numbers.
--
-- sp_write_one is the shared body: it applies one write's intents with a
-- given stamp starting after sequence number p_seq, and returns the changes
-- and the last sequence number used.  It does not touch the clock row.

CREATE FUNCTION sp_write_one(p_region smallint, p_stamp bigint, p_seq bigint, p_ops jsonb,
                             p_outbox jsonb, OUT changes jsonb, OUT last_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
  s bigint := p_seq;
  op jsonb;
  kind text;
  ecl integer;
  ncl integer;
  out jsonb := '[]'::jsonb;
BEGIN
  IF p_ops IS NULL OR jsonb_typeof(p_ops) <> 'array' THEN
    RAISE EXCEPTION 'ops must be an array' USING ERRCODE = '22023';
  END IF;
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
                              ecl, p_stamp, p_region, p_region, s);
      INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
      VALUES (p_region, s, 1, op->>'p', op->>'t', op->>'i', op->>'f', op->>'v', ecl, p_stamp, p_region);
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
                            ncl, p_stamp, p_region, p_region, s);
    INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
    VALUES (p_region, s, 2, op->>'p', op->>'t', op->>'i', NULL, NULL, ncl, p_stamp, p_region);
    out := out || jsonb_build_object('k', 2, 'p', op->>'p', 't', op->>'t', 'i', op->>'i',
                                     'cl', ncl, 'seq', s);
  END LOOP;
  IF p_outbox IS NOT NULL AND jsonb_typeof(p_outbox) = 'array' THEN
    INSERT INTO sp_outbox (event_id, page_id, kind, payload)
    SELECT o->>'event', o->>'page', o->>'kind', o->'payload'
      FROM jsonb_array_elements(p_outbox) AS o;
  END IF;
  changes := out;
  last_seq := s;
END $$;

-- One write (as before), now through sp_write_one.
CREATE OR REPLACE FUNCTION sp_write(p_region smallint, p_wall_ms bigint, p_ops jsonb, p_outbox jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  clk record;
  stamp bigint;
  r record;
BEGIN
  INSERT INTO sp_region_clock (region) VALUES (p_region) ON CONFLICT DO NOTHING;
  SELECT hlc, seq INTO clk FROM sp_region_clock WHERE region = p_region FOR UPDATE;
  stamp := greatest(clk.hlc + 1, p_wall_ms << 16);
  SELECT * INTO r FROM sp_write_one(p_region, stamp, clk.seq, p_ops, p_outbox);
  UPDATE sp_region_clock SET hlc = stamp, seq = r.last_seq WHERE region = p_region;
  INSERT INTO sp_vclock (origin, seq) VALUES (p_region, r.last_seq)
    ON CONFLICT (origin) DO UPDATE SET seq = EXCLUDED.seq;
  RETURN jsonb_build_object('hlc', stamp, 'region', p_region, 'changes', r.changes);
END $$;

-- Many writes in one transaction.  p_writes: [{"ops": [...], "outbox": [...]}].
-- Returns one result per write, in order:
--   {"ok": true, "hlc": stamp, "changes": [...]}  or
--   {"ok": false, "code": SQLSTATE, "message": text}
CREATE FUNCTION sp_write_batch(p_region smallint, p_wall_ms bigint, p_writes jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  clk record;
  stamp bigint;
  s bigint;
  w jsonb;
  r record;
  results jsonb := '[]'::jsonb;
  code text;
  msg text;
BEGIN
  INSERT INTO sp_region_clock (region) VALUES (p_region) ON CONFLICT DO NOTHING;
  SELECT hlc, seq INTO clk FROM sp_region_clock WHERE region = p_region FOR UPDATE;
  stamp := greatest(clk.hlc, (p_wall_ms << 16) - 1);
  s := clk.seq;
  FOR w IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
    BEGIN
      -- plpgsql variables are not rolled back with a failed subtransaction,
      -- so the stamp and sequence only advance after a write succeeded
      SELECT * INTO r FROM sp_write_one(p_region, stamp + 1, s, w->'ops', w->'outbox');
      stamp := stamp + 1;
      s := r.last_seq;
      results := results || jsonb_build_object('ok', true, 'hlc', stamp, 'changes', r.changes);
    EXCEPTION WHEN OTHERS THEN
      GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
      results := results || jsonb_build_object('ok', false, 'code', code, 'message', msg);
    END;
  END LOOP;
  IF s > clk.seq OR stamp > clk.hlc THEN
    UPDATE sp_region_clock SET hlc = stamp, seq = s WHERE region = p_region;
    INSERT INTO sp_vclock (origin, seq) VALUES (p_region, s)
      ON CONFLICT (origin) DO UPDATE SET seq = EXCLUDED.seq;
  END IF;
  RETURN results;
END $$;
