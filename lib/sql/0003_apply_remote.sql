-- Applying another region's changes: sp_apply_remote.
--
-- The one entry point for changes that did not originate in this region:
-- the replication daemon calls it for every received batch, and
-- `statusctl up` calls it once to seed the regions of a fresh local
-- deployment from us-east's change log.  A change keeps its ORIGINAL
-- (origin, seq) and stamp, so the change log here is the same log the
-- origin wrote, and relaying it on to a third region is copying rows.
--
--   p_changes: [{"k": 1|2, "p": page, "t": type, "i": id,
--                "f": field (k = 1), "v": text or null (k = 1),
--                "cl": life, "hlc": stamp, "region": stamp region,
--                "origin": origin region, "seq": origin sequence}, ...]
--              (the shape of sp_change_log rows; order does not matter)
--   p_local:   this region's id, or NULL.  When given, the region's clock
--              observes the highest stamp applied (so a local write made
--              after seeing a remote change is stamped after it), and
--              changes whose origin is this region are skipped: a region's
--              own changes enter its log only through its own writes.
-- Returns the number of changes applied (new to this region).
--
-- Rules, all in the caller's one transaction:
--   * seq <= sp_vclock[origin]: already applied, skipped;
--   * otherwise the row goes into sp_change_log (ON CONFLICT DO NOTHING:
--     a change already received beyond a gap is not applied twice) and is
--     merged with sp_merge_change (crdt/'s rules, idempotent anyway);
--   * sp_vclock[origin] then advances only over the contiguous run of
--     sequence numbers present in the log, so a gap (a change still
--     missing) holds the vector back until the change arrives; the vector
--     then moves over the rows that were received beyond the gap.
-- Applying the same batch twice therefore changes nothing and returns 0.
--
-- Locking (deadlock-free against sp_write): each origin's sp_vclock row is
-- locked (FOR UPDATE, origins in ascending order) before its changes are
-- examined, so two appliers of one origin run one after the other; the
-- local clock row is locked last.  sp_write locks the clock row and then
-- only its own origin's sp_vclock row, which is never locked here when
-- p_local is given.
--
-- Errors: SQLSTATE 22023 (p_changes not an array, or a change missing a
-- key or with a wrong type, message naming the index and key); nothing is
-- applied then.

-- Moves sp_vclock[p_origin] from p_from over the contiguous run of sequence
-- numbers present in the change log (p_from + 1, p_from + 2, ...).  The
-- caller holds the sp_vclock row lock.  Returns the new value.
CREATE FUNCTION sp_apply_remote_advance(p_origin smallint, p_from bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  nv bigint;
BEGIN
  -- Rows above p_from in seq order: the n-th is contiguous exactly when its
  -- seq is p_from + n; after the first hole none is.
  SELECT coalesce(max(seq), p_from) INTO nv
    FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS n
            FROM sp_change_log WHERE origin = p_origin AND seq > p_from) AS above
   WHERE seq = p_from + n;
  IF nv > p_from THEN
    UPDATE sp_vclock SET seq = nv WHERE origin = p_origin;
  END IF;
  RETURN nv;
END $$;

-- sp_apply_remote: as described at the top of this file.
CREATE FUNCTION sp_apply_remote(p_changes jsonb, p_local smallint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  c jsonb;
  idx integer := 0;
  key text;
  k smallint;
  o smallint;
  cur smallint := NULL;
  vs bigint;
  s bigint;
  inserted integer;
  applied integer := 0;
  max_hlc bigint := 0;
BEGIN
  IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'array' THEN
    RAISE EXCEPTION 'sp_apply_remote: changes must be a JSON array' USING ERRCODE = '22023';
  END IF;
  -- Validate everything first: a malformed change refuses the whole batch
  -- with a message naming it, instead of a cast error halfway through.
  FOR c IN SELECT value FROM jsonb_array_elements(p_changes) LOOP
    IF jsonb_typeof(c) <> 'object' THEN
      RAISE EXCEPTION 'sp_apply_remote: change %: not an object', idx USING ERRCODE = '22023';
    END IF;
    FOREACH key IN ARRAY ARRAY['k', 'cl', 'hlc', 'region', 'origin', 'seq'] LOOP
      -- CASE, not OR: the cast must only see numbers
      IF (CASE WHEN jsonb_typeof(c->key) IS DISTINCT FROM 'number' THEN true
               ELSE (c->>key)::numeric NOT BETWEEN 0 AND 9223372036854775807
                    OR (c->>key)::numeric <> trunc((c->>key)::numeric) END) THEN
        RAISE EXCEPTION 'sp_apply_remote: change %: "%" must be a non-negative integer', idx, key
          USING ERRCODE = '22023';
      END IF;
    END LOOP;
    FOREACH key IN ARRAY ARRAY['p', 't', 'i'] LOOP
      IF jsonb_typeof(c->key) IS DISTINCT FROM 'string' OR (c->>key) = '' THEN
        RAISE EXCEPTION 'sp_apply_remote: change %: "%" must be a non-empty string', idx, key
          USING ERRCODE = '22023';
      END IF;
    END LOOP;
    IF (c->>'k') NOT IN ('1', '2') THEN
      RAISE EXCEPTION 'sp_apply_remote: change %: "k" must be 1 (field) or 2 (existence)', idx
        USING ERRCODE = '22023';
    END IF;
    IF (c->>'cl')::bigint NOT BETWEEN 1 AND 2147483647 OR (c->>'seq')::bigint < 1
       OR (c->>'origin')::bigint > 32767 OR (c->>'region')::bigint > 32767 THEN
      RAISE EXCEPTION 'sp_apply_remote: change %: cl, seq, origin or region out of range', idx
        USING ERRCODE = '22023';
    END IF;
    IF (c->>'k') = '1' AND (jsonb_typeof(c->'f') IS DISTINCT FROM 'string' OR (c->>'f') = '') THEN
      RAISE EXCEPTION 'sp_apply_remote: change %: a field change needs "f"', idx
        USING ERRCODE = '22023';
    END IF;
    IF (c->>'k') = '1' AND coalesce(jsonb_typeof(c->'v'), 'null') NOT IN ('string', 'null') THEN
      RAISE EXCEPTION 'sp_apply_remote: change %: "v" must be a string or null', idx
        USING ERRCODE = '22023';
    END IF;
    idx := idx + 1;
  END LOOP;

  FOR c IN SELECT value FROM jsonb_array_elements(p_changes)
           ORDER BY (value->>'origin')::smallint, (value->>'seq')::bigint LOOP
    o := (c->>'origin')::smallint;
    IF o = p_local THEN
      CONTINUE;
    END IF;
    IF cur IS DISTINCT FROM o THEN
      IF cur IS NOT NULL THEN
        PERFORM sp_apply_remote_advance(cur, vs);
      END IF;
      cur := o;
      INSERT INTO sp_vclock (origin, seq) VALUES (o, 0) ON CONFLICT DO NOTHING;
      SELECT seq INTO vs FROM sp_vclock WHERE origin = o FOR UPDATE;
    END IF;
    s := (c->>'seq')::bigint;
    IF s <= vs THEN
      CONTINUE;
    END IF;
    k := (c->>'k')::smallint;
    INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, field, value, cl, hlc, region)
    VALUES (o, s, k, c->>'p', c->>'t', c->>'i',
            CASE WHEN k = 1 THEN c->>'f' END, CASE WHEN k = 1 THEN c->>'v' END,
            (c->>'cl')::integer, (c->>'hlc')::bigint, (c->>'region')::smallint)
    ON CONFLICT (origin, seq) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted = 0 THEN
      CONTINUE;
    END IF;
    PERFORM sp_merge_change(k, c->>'p', c->>'t', c->>'i',
                            CASE WHEN k = 1 THEN c->>'f' END, CASE WHEN k = 1 THEN c->>'v' END,
                            (c->>'cl')::integer, (c->>'hlc')::bigint,
                            (c->>'region')::smallint, o, s);
    applied := applied + 1;
    max_hlc := greatest(max_hlc, (c->>'hlc')::bigint);
  END LOOP;
  IF cur IS NOT NULL THEN
    PERFORM sp_apply_remote_advance(cur, vs);
  END IF;

  IF p_local IS NOT NULL AND applied > 0 THEN
    INSERT INTO sp_region_clock (region) VALUES (p_local) ON CONFLICT DO NOTHING;
    UPDATE sp_region_clock SET hlc = max_hlc WHERE region = p_local AND hlc < max_hlc;
  END IF;
  RETURN applied;
END $$;
