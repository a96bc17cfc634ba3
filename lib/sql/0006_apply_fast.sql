-- Faster remote applies: sp_apply_remote, set-based.
--
-- The first version (0003) walked a batch change by change in plpgsql:
-- about fifteen JSON extractions and casts to validate each change, then
-- three statements per change (change-log insert, entity lookup, upsert).
-- A catch-up of a few thousand changes spent most of its time there, and a
-- burst of updates to one hot field (a flapping component) rewrote that
-- one row once per change.  This version does the same work in a handful
-- of statements per batch:
--   1. validation in one query, the first offending change named exactly as
--      before (the messages are part of the interface: tests check them);
--   2. the region's clock row locked first (as sp_write does; 0003 took it
--      last, after the entity and field rows, which could deadlock with a
--      local write to the same fields), then the origins' sp_vclock rows
--      created and locked in ascending order, their values read;
--   3. one INSERT ... ON CONFLICT DO NOTHING RETURNING puts the new rows
--      (seq above the origin's vector, origin not local) into the change
--      log; what it returns is what is applied;
--   4. existence changes: the greatest per entity by crdt/'s existence
--      order, one upsert guarded by that order; entities whose life rose
--      lose the older lives' fields;
--   5. field changes: the greatest per field by crdt/'s field order among
--      those whose life is not older than the entity's (as step 4 left
--      it), one upsert guarded by that order;
--   6. each origin's vector over the contiguous run now present.
-- Merging only the greatest change per register is the same as merging
-- every change in turn: the merge is a join (a max under a total order),
-- and a field change of an older life than its entity's is dropped either
-- way (before: ignored; after: removed by the delete of step 4).  Same
-- signature, result and errors as 0003 (tests/ops/test_statusctl.c checks
-- them; tests/lib/test_store_sql.c checks random batches against crdt/).

-- Names the first malformed change of p_changes (SQLSTATE 22023, the
-- messages of 0003); returns quietly when there is none.  Only called for a
-- batch that failed sp_apply_remote's cheap checks, so it can be thorough.
CREATE FUNCTION sp_apply_remote_check(p_changes jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  bad_idx bigint;
  bad_msg text;
BEGIN
  IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'array' THEN
    RAISE EXCEPTION 'sp_apply_remote: changes must be a JSON array' USING ERRCODE = '22023';
  END IF;
  SELECT e.n - 1, chk.msg INTO bad_idx, bad_msg
    FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS e(c, n),
    LATERAL (SELECT CASE
      WHEN jsonb_typeof(e.c) <> 'object' THEN 'not an object'
      ELSE (SELECT format('"%s" must be a non-negative integer', key)
              FROM unnest(ARRAY['k', 'cl', 'hlc', 'region', 'origin', 'seq']) WITH ORDINALITY AS u(key, o)
             WHERE CASE WHEN jsonb_typeof(e.c->key) IS DISTINCT FROM 'number' THEN true
                        ELSE (e.c->>key)::numeric NOT BETWEEN 0 AND 9223372036854775807
                             OR (e.c->>key)::numeric <> trunc((e.c->>key)::numeric) END
             ORDER BY o LIMIT 1)
    END AS msg) AS num,
    LATERAL (SELECT coalesce(num.msg,
      (SELECT format('"%s" must be a non-empty string', key)
         FROM unnest(ARRAY['p', 't', 'i']) WITH ORDINALITY AS u(key, o)
        WHERE jsonb_typeof(e.c->key) IS DISTINCT FROM 'string' OR (e.c->>key) = ''
        ORDER BY o LIMIT 1),
      CASE
        WHEN (e.c->>'k') NOT IN ('1', '2') THEN '"k" must be 1 (field) or 2 (existence)'
        WHEN (e.c->>'cl')::numeric NOT BETWEEN 1 AND 2147483647 OR (e.c->>'seq')::numeric < 1
             OR (e.c->>'origin')::numeric > 32767 OR (e.c->>'region')::numeric > 32767
          THEN 'cl, seq, origin or region out of range'
        WHEN (e.c->>'k') = '1' AND (jsonb_typeof(e.c->'f') IS DISTINCT FROM 'string' OR (e.c->>'f') = '')
          THEN 'a field change needs "f"'
        WHEN (e.c->>'k') = '1' AND coalesce(jsonb_typeof(e.c->'v'), 'null') NOT IN ('string', 'null')
          THEN '"v" must be a string or null'
      END) AS msg) AS chk
   WHERE chk.msg IS NOT NULL
   ORDER BY e.n LIMIT 1;
  IF bad_msg IS NOT NULL THEN
    RAISE EXCEPTION 'sp_apply_remote: change %: %', bad_idx, bad_msg USING ERRCODE = '22023';
  END IF;

END $$;

CREATE OR REPLACE FUNCTION sp_apply_remote(p_changes jsonb, p_local smallint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_in sp_change_log[];
  v_origins smallint[];
  v_from bigint[];
  v_rows sp_change_log[];
  v_applied integer;
  v_max_hlc bigint;
BEGIN
  IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'array' THEN
    PERFORM sp_apply_remote_check(p_changes);
  END IF;

  -- 1. validation and parsing.  A well-formed batch passes one cheap test
  --    of the JSON types per change and is parsed once into rows; anything
  --    else (a wrong type, a number that is not an integer of the column's
  --    range, a value out of range) goes to sp_apply_remote_check, which
  --    names the first offending change.
  IF EXISTS (
       SELECT 1 FROM jsonb_array_elements(p_changes) AS e(c)
        WHERE NOT coalesce(
                jsonb_typeof(e.c) = 'object'
                AND jsonb_typeof(e.c->'k') = 'number' AND jsonb_typeof(e.c->'cl') = 'number'
                AND jsonb_typeof(e.c->'hlc') = 'number' AND jsonb_typeof(e.c->'region') = 'number'
                AND jsonb_typeof(e.c->'origin') = 'number' AND jsonb_typeof(e.c->'seq') = 'number'
                AND (e.c->>'p') <> '' AND (e.c->>'t') <> '' AND (e.c->>'i') <> ''
                AND jsonb_typeof(e.c->'p') = 'string' AND jsonb_typeof(e.c->'t') = 'string'
                AND jsonb_typeof(e.c->'i') = 'string'
                AND CASE e.c->>'k'
                      WHEN '2' THEN true
                      WHEN '1' THEN (e.c->>'f') <> '' AND jsonb_typeof(e.c->'f') = 'string'
                                    AND coalesce(jsonb_typeof(e.c->'v'), 'null') IN ('string', 'null')
                      ELSE false END,
                false)) THEN
    PERFORM sp_apply_remote_check(p_changes);
  END IF;
  BEGIN
    SELECT array_agg(ROW(x.origin, x.seq, x.k, x.p, x.t, x.i,
                         CASE WHEN x.k = 1 THEN x.f END, CASE WHEN x.k = 1 THEN x.v END,
                         x.cl, x.hlc, x.region, now())::sp_change_log)
      INTO v_in
      FROM jsonb_to_recordset(p_changes)
           AS x(k smallint, p text, t text, i text, f text, v text, cl integer, hlc bigint,
                region smallint, origin smallint, seq bigint);
  EXCEPTION WHEN data_exception THEN
    PERFORM sp_apply_remote_check(p_changes);
    -- the checker found nothing it names (e.g. 1.0 for an integer)
    RAISE EXCEPTION 'sp_apply_remote: %', SQLERRM USING ERRCODE = '22023';
  END;
  IF EXISTS (SELECT 1 FROM unnest(v_in) AS r
              WHERE r.cl < 1 OR r.seq < 1 OR r.hlc < 0 OR r.region < 0 OR r.origin < 0) THEN
    PERFORM sp_apply_remote_check(p_changes);
  END IF;

  -- 2. the local clock row first, then the origins' vector rows in
  --    ascending order: sp_write locks the clock row before any entity or
  --    field row, so an apply that upserted rows first and took the clock
  --    row last could deadlock with a local write to the same fields.  The
  --    clock observes the highest stamp of the batch (rows applied before
  --    were observed then; observing again changes nothing).
  IF p_local IS NOT NULL THEN
    SELECT max(r.hlc) INTO v_max_hlc FROM unnest(v_in) AS r WHERE r.origin <> p_local;
    IF v_max_hlc IS NOT NULL THEN
      INSERT INTO sp_region_clock (region) VALUES (p_local) ON CONFLICT DO NOTHING;
      UPDATE sp_region_clock SET hlc = greatest(hlc, v_max_hlc) WHERE region = p_local;
    END IF;
  END IF;
  SELECT array_agg(DISTINCT r.origin ORDER BY r.origin) INTO v_origins
    FROM unnest(v_in) AS r
   WHERE r.origin IS DISTINCT FROM p_local;
  IF v_origins IS NULL THEN
    RETURN 0;
  END IF;
  INSERT INTO sp_vclock (origin, seq) SELECT o, 0 FROM unnest(v_origins) AS o ORDER BY o
    ON CONFLICT DO NOTHING;
  SELECT array_agg(seq ORDER BY origin) INTO v_from
    FROM (SELECT origin, seq FROM sp_vclock WHERE origin = ANY (v_origins)
           ORDER BY origin FOR UPDATE) AS locked;

  -- 3. the new rows into the change log; the ones inserted are applied
  WITH ins AS (
    INSERT INTO sp_change_log AS l (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
    SELECT x.origin, x.seq, x.kind, x.page_id, x.type, x.id, x.field, x.value, x.cl, x.hlc,
           x.region
      FROM unnest(v_in) AS x
      JOIN unnest(v_origins, v_from) AS vf(origin, seq) ON vf.origin = x.origin
     WHERE x.seq > vf.seq
     ORDER BY x.origin, x.seq
    ON CONFLICT (origin, seq) DO NOTHING
    RETURNING l.*)
  SELECT array_agg(ins::sp_change_log), count(*) INTO v_rows, v_applied
    FROM ins;

  IF v_applied > 0 THEN
    -- 4. existence: the greatest change per entity, then the older lives'
    --    fields of the entities whose life rose
    WITH w AS (
      SELECT DISTINCT ON (r.page_id, r.type, r.id) r.*
        FROM unnest(v_rows) AS r
       WHERE r.kind = 2
       ORDER BY r.page_id, r.type, r.id, r.cl DESC, r.hlc DESC, r.region DESC, r.origin DESC,
                r.seq DESC),
    up AS (
      INSERT INTO sp_entity AS e (page_id, type, id, cl, hlc, region, origin, seq)
      SELECT w.page_id, w.type, w.id, w.cl, w.hlc, w.region, w.origin, w.seq FROM w
      ON CONFLICT (page_id, type, id) DO UPDATE
        SET cl = EXCLUDED.cl, hlc = EXCLUDED.hlc, region = EXCLUDED.region,
            origin = EXCLUDED.origin, seq = EXCLUDED.seq
        WHERE (e.cl, e.hlc, e.region, e.origin, e.seq)
            < (EXCLUDED.cl, EXCLUDED.hlc, EXCLUDED.region, EXCLUDED.origin, EXCLUDED.seq)
      RETURNING e.page_id, e.type, e.id, e.cl)
    DELETE FROM sp_field AS f USING up
     WHERE f.page_id = up.page_id AND f.type = up.type AND f.id = up.id AND f.cl < up.cl;

    -- 5. fields: the greatest change per field of a life still current
    INSERT INTO sp_field AS f (page_id, type, id, field, value, cl, hlc, region, origin, seq)
    SELECT DISTINCT ON (r.page_id, r.type, r.id, r.field)
           r.page_id, r.type, r.id, r.field, r.value, r.cl, r.hlc, r.region, r.origin, r.seq
      FROM unnest(v_rows) AS r
      LEFT JOIN sp_entity AS e ON e.page_id = r.page_id AND e.type = r.type AND e.id = r.id
     WHERE r.kind = 1 AND r.cl >= coalesce(e.cl, 0)
     ORDER BY r.page_id, r.type, r.id, r.field, r.cl DESC, r.hlc DESC, r.region DESC,
              (r.value IS NOT NULL) DESC, convert_to(coalesce(r.value, ''), 'UTF8') DESC,
              r.origin DESC, r.seq DESC
    ON CONFLICT (page_id, type, id, field) DO UPDATE
      SET value = EXCLUDED.value, cl = EXCLUDED.cl, hlc = EXCLUDED.hlc,
          region = EXCLUDED.region, origin = EXCLUDED.origin, seq = EXCLUDED.seq
      WHERE (f.cl, f.hlc, f.region, f.value IS NOT NULL,
             convert_to(coalesce(f.value, ''), 'UTF8'), f.origin, f.seq)
          < (EXCLUDED.cl, EXCLUDED.hlc, EXCLUDED.region, EXCLUDED.value IS NOT NULL,
             convert_to(coalesce(EXCLUDED.value, ''), 'UTF8'), EXCLUDED.origin, EXCLUDED.seq);
  END IF;

  -- 6. each origin's vector over the contiguous run present in the log
  --    (rows received beyond a gap earlier count once the gap is filled)
  UPDATE sp_vclock AS v SET seq = nv.seq
    FROM (SELECT vf.origin,
                 (SELECT coalesce(max(a.seq), vf.seq)
                    FROM (SELECT l.seq, row_number() OVER (ORDER BY l.seq) AS n
                            FROM sp_change_log AS l
                           WHERE l.origin = vf.origin AND l.seq > vf.seq) AS a
                   WHERE a.seq = vf.seq + a.n) AS seq
            FROM unnest(v_origins, v_from) AS vf(origin, seq)) AS nv
   WHERE v.origin = nv.origin AND nv.seq > v.seq;

  RETURN coalesce(v_applied, 0);
END $$;

-- sp_apply_snapshot (0005) with the same lock order: the region's clock row
-- before any entity or field row, as sp_write takes them.  Otherwise as in
-- 0005.
CREATE OR REPLACE FUNCTION sp_apply_snapshot(p_changes jsonb, p_local smallint, p_vector jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  c jsonb;
  k smallint;
  o smallint;
  vs bigint;
  cur bigint;
  applied integer := 0;
  max_hlc bigint;
BEGIN
  IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'array' THEN
    RAISE EXCEPTION 'sp_apply_snapshot: changes must be a JSON array' USING ERRCODE = '22023';
  END IF;
  IF p_vector IS NOT NULL AND jsonb_typeof(p_vector) <> 'object' THEN
    RAISE EXCEPTION 'sp_apply_snapshot: vector must be a JSON object' USING ERRCODE = '22023';
  END IF;
  IF p_local IS NOT NULL THEN
    SELECT max((e.value->>'hlc')::bigint) INTO max_hlc FROM jsonb_array_elements(p_changes) AS e;
    IF max_hlc IS NOT NULL THEN
      INSERT INTO sp_region_clock (region) VALUES (p_local) ON CONFLICT DO NOTHING;
      UPDATE sp_region_clock SET hlc = greatest(hlc, max_hlc) WHERE region = p_local;
    END IF;
  END IF;
  FOR c IN SELECT value FROM jsonb_array_elements(p_changes) LOOP
    k := (c->>'k')::smallint;
    IF sp_merge_change(k, c->>'p', c->>'t', c->>'i',
                       CASE WHEN k = 1 THEN c->>'f' END, CASE WHEN k = 1 THEN c->>'v' END,
                       (c->>'cl')::integer, (c->>'hlc')::bigint, (c->>'region')::smallint,
                       (c->>'origin')::smallint, (c->>'seq')::bigint) THEN
      applied := applied + 1;
    END IF;
  END LOOP;
  IF p_vector IS NOT NULL THEN
    FOR o, vs IN SELECT key::smallint, value::bigint FROM jsonb_each_text(p_vector)
                 ORDER BY 1 LOOP
      IF o = p_local THEN
        CONTINUE;
      END IF;
      INSERT INTO sp_vclock (origin, seq) VALUES (o, 0) ON CONFLICT DO NOTHING;
      SELECT seq INTO cur FROM sp_vclock WHERE origin = o FOR UPDATE;
      IF vs > cur THEN
        UPDATE sp_vclock SET seq = vs WHERE origin = o;
        INSERT INTO sp_log_floor AS fl (origin, seq) VALUES (o, vs)
        ON CONFLICT ON CONSTRAINT sp_log_floor_pkey
          DO UPDATE SET seq = greatest(fl.seq, EXCLUDED.seq);
      END IF;
    END LOOP;
  END IF;
  RETURN applied;
END $$;
