-- Faster local writes.  One incident update is about a dozen intents, and
-- sp_write_one spent about four statements on each (look up the entity's
-- causal length, look it up again inside sp_merge_change, upsert, append to
-- the change log), all in the one backend that holds the region's clock row.
-- This version looks an entity up once for a run of intents on it, upserts a
-- field knowing its life already (inline: plpgsql caches its plan, while a SQL
-- function called from plpgsql is planned on every call), and appends each
-- write's change-log rows with one INSERT.  Same signature, same semantics (tests/lib/test_store_sql.c
-- and the API tests check them).

CREATE OR REPLACE FUNCTION sp_write_one(p_region smallint, p_stamp bigint, p_seq bigint,
                                        p_ops jsonb, p_outbox jsonb, OUT changes jsonb,
                                        OUT last_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
  s bigint := p_seq;
  op jsonb;
  kind text;
  ecl integer;
  ncl integer;
  cur_p text;
  cur_t text;
  cur_i text;
  out jsonb[] := '{}';
BEGIN
  IF p_ops IS NULL OR jsonb_typeof(p_ops) <> 'array' THEN
    RAISE EXCEPTION 'ops must be an array' USING ERRCODE = '22023';
  END IF;
  FOR op IN SELECT value FROM jsonb_array_elements(p_ops) LOOP
    kind := op->>'op';
    IF (op->>'p') IS NULL OR (op->>'t') IS NULL OR (op->>'i') IS NULL THEN
      RAISE EXCEPTION 'malformed op %', op USING ERRCODE = '22023';
    END IF;
    -- the entity's causal length, looked up once per run of intents on it
    -- (this function's own creates/deletes keep ecl current)
    IF cur_i IS DISTINCT FROM op->>'i' OR cur_t IS DISTINCT FROM op->>'t'
       OR cur_p IS DISTINCT FROM op->>'p' THEN
      cur_p := op->>'p';
      cur_t := op->>'t';
      cur_i := op->>'i';
      SELECT cl INTO ecl FROM sp_entity WHERE page_id = cur_p AND type = cur_t AND id = cur_i;
      ecl := coalesce(ecl, 0);
    END IF;
    IF kind = 'require' THEN
      IF ecl % 2 = 0 THEN
        RAISE EXCEPTION 'not found: % %', cur_t, cur_i USING ERRCODE = 'P0002';
      END IF;
      CONTINUE;
    ELSIF kind = 'set' THEN
      IF ecl % 2 = 0 OR (op->>'f') IS NULL THEN
        RAISE EXCEPTION 'not found: % %', cur_t, cur_i USING ERRCODE = 'P0002';
      END IF;
      s := s + 1;
      -- the field's life is the entity's current one (checked above); the
      -- guard is sp_merge_change's order.  Inline, so plpgsql caches the plan.
      INSERT INTO sp_field AS f (page_id, type, id, field, value, cl, hlc, region, origin, seq)
      VALUES (cur_p, cur_t, cur_i, op->>'f', op->>'v', ecl, p_stamp, p_region, p_region, s)
      ON CONFLICT (page_id, type, id, field) DO UPDATE
        SET value = EXCLUDED.value, cl = EXCLUDED.cl, hlc = EXCLUDED.hlc,
            region = EXCLUDED.region, origin = EXCLUDED.origin, seq = EXCLUDED.seq
        WHERE (f.cl, f.hlc, f.region, f.value IS NOT NULL,
               convert_to(coalesce(f.value, ''), 'UTF8'), f.origin, f.seq)
            < (EXCLUDED.cl, EXCLUDED.hlc, EXCLUDED.region, EXCLUDED.value IS NOT NULL,
               convert_to(coalesce(EXCLUDED.value, ''), 'UTF8'), EXCLUDED.origin, EXCLUDED.seq);
      out := out || jsonb_build_object('k', 1, 'p', cur_p, 't', cur_t, 'i', cur_i,
                                       'f', op->>'f', 'v', op->'v', 'cl', ecl, 'seq', s);
      CONTINUE;
    ELSIF kind = 'create' THEN
      IF ecl <> 0 THEN
        RAISE EXCEPTION 'exists: % %', cur_t, cur_i USING ERRCODE = '23505';
      END IF;
      ncl := 1;
    ELSIF kind = 'delete' THEN
      IF ecl % 2 = 0 THEN
        RAISE EXCEPTION 'not found: % %', cur_t, cur_i USING ERRCODE = 'P0002';
      END IF;
      ncl := ecl + 1;
    ELSIF kind = 'recreate' THEN
      IF ecl = 0 OR ecl % 2 = 1 THEN
        RAISE EXCEPTION 'not deleted: % %', cur_t, cur_i USING ERRCODE = 'P0002';
      END IF;
      ncl := ecl + 1;
    ELSE
      RAISE EXCEPTION 'unknown op %', kind USING ERRCODE = '22023';
    END IF;
    s := s + 1;
    PERFORM sp_merge_change(2::smallint, cur_p, cur_t, cur_i, NULL, NULL,
                            ncl, p_stamp, p_region, p_region, s);
    ecl := ncl;
    out := out || jsonb_build_object('k', 2, 'p', cur_p, 't', cur_t, 'i', cur_i,
                                     'cl', ncl, 'seq', s);
  END LOOP;
  -- the write's change-log rows in one statement
  INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
  SELECT p_region, (c->>'seq')::bigint, (c->>'k')::smallint, c->>'p', c->>'t', c->>'i',
         c->>'f', c->>'v', (c->>'cl')::integer, p_stamp, p_region
    FROM unnest(out) AS c;
  IF p_outbox IS NOT NULL AND jsonb_typeof(p_outbox) = 'array' THEN
    INSERT INTO sp_outbox (event_id, page_id, kind, payload)
    SELECT o->>'event', o->>'page', o->>'kind', o->'payload'
      FROM jsonb_array_elements(p_outbox) AS o;
  END IF;
  changes := to_jsonb(out);
  last_seq := s;
END $$;
