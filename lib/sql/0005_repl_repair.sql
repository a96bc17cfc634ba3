-- Replication repair state: what each peer acknowledged, and change-log
-- trimming.
--
-- statusd-replicad writes a peer's acknowledged vector (the Ack it last
-- received from it, or the vector of its handshake, which replaces it: a
-- peer restored from a backup has gone back) into sp_peer_ack, one row per
-- (peer, origin) for every region of the topology, zeros included, so "no
-- row" always means "never heard from that peer" and blocks trimming.
--
-- sp_trim_log deletes the change-log rows every peer has acknowledged and
-- records in sp_log_floor how far each origin's log has been cut: a peer
-- that needs rows at or below the floor must be served a snapshot, since
-- the rows are gone.  Nothing above this region's own applied vector is
-- deleted (rows received beyond a gap are what sp_apply_remote_advance
-- walks over once the gap fills).
CREATE TABLE sp_peer_ack (
  peer   smallint NOT NULL,
  origin smallint NOT NULL,
  seq    bigint   NOT NULL CHECK (seq >= 0),
  PRIMARY KEY (peer, origin)
);

CREATE TABLE sp_log_floor (
  origin smallint PRIMARY KEY,
  seq    bigint   NOT NULL CHECK (seq >= 0)
);

-- p_peers: every peer region id of this region (trimming needs an ack row
--   from each of them for an origin, else nothing of that origin goes);
-- p_retention_ms: rows logged more recently than this are kept anyway.
-- Returns one row per origin that lost rows: the new floor and the count.
CREATE FUNCTION sp_trim_log(p_peers smallint[], p_retention_ms bigint)
RETURNS TABLE (origin smallint, floor bigint, deleted bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
  IF p_peers IS NULL OR cardinality(p_peers) = 0 OR p_retention_ms IS NULL
     OR p_retention_ms < 0 THEN
    RAISE EXCEPTION 'sp_trim_log: peers must be a non-empty array, retention >= 0'
      USING ERRCODE = '22023';
  END IF;
  RETURN QUERY
  WITH m AS (
    SELECT a.origin, least(min(a.seq), max(v.seq)) AS seq
      FROM sp_peer_ack a JOIN sp_vclock v ON v.origin = a.origin
     WHERE a.peer = ANY (p_peers)
     GROUP BY a.origin
    HAVING count(DISTINCT a.peer) = cardinality(p_peers)
  ), d AS (
    DELETE FROM sp_change_log l USING m
     WHERE l.origin = m.origin AND l.seq <= m.seq
       AND l.logged_at < now() - p_retention_ms * interval '1 millisecond'
    RETURNING l.origin, l.seq
  ), f AS (
    INSERT INTO sp_log_floor AS fl (origin, seq)
    SELECT d.origin, max(d.seq) FROM d GROUP BY d.origin
    ON CONFLICT ON CONSTRAINT sp_log_floor_pkey
      DO UPDATE SET seq = greatest(fl.seq, EXCLUDED.seq)
    RETURNING fl.origin, fl.seq
  )
  SELECT f.origin, f.seq, (SELECT count(*) FROM d WHERE d.origin = f.origin)
    FROM f;
END $$;

-- sp_apply_snapshot: merges one snapshot chunk (state rows from a peer's
-- sp_entity/sp_field, as changes in sp_apply_remote's JSON shape) with
-- crdt/'s rules through sp_merge_change.  They are state, not log rows: they
-- do not enter sp_change_log.  p_vector (a JSON object {"origin": seq}, or
-- NULL) is given with the last chunk: sp_vclock becomes the pointwise max of
-- itself and it (our own origin excepted: only our own writes move it), and
-- since the rows between the old and the new vector are not in our log,
-- sp_log_floor rises with it, so we never offer a peer rows we lack.
-- The changes come from the daemon's decoder, which has checked them.
-- Returns the number of changes that changed the state.
CREATE FUNCTION sp_apply_snapshot(p_changes jsonb, p_local smallint, p_vector jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  c jsonb;
  k smallint;
  o smallint;
  vs bigint;
  cur bigint;
  applied integer := 0;
  max_hlc bigint := 0;
BEGIN
  IF p_changes IS NULL OR jsonb_typeof(p_changes) <> 'array' THEN
    RAISE EXCEPTION 'sp_apply_snapshot: changes must be a JSON array' USING ERRCODE = '22023';
  END IF;
  IF p_vector IS NOT NULL AND jsonb_typeof(p_vector) <> 'object' THEN
    RAISE EXCEPTION 'sp_apply_snapshot: vector must be a JSON object' USING ERRCODE = '22023';
  END IF;
  FOR c IN SELECT value FROM jsonb_array_elements(p_changes) LOOP
    k := (c->>'k')::smallint;
    IF sp_merge_change(k, c->>'p', c->>'t', c->>'i',
                       CASE WHEN k = 1 THEN c->>'f' END, CASE WHEN k = 1 THEN c->>'v' END,
                       (c->>'cl')::integer, (c->>'hlc')::bigint, (c->>'region')::smallint,
                       (c->>'origin')::smallint, (c->>'seq')::bigint) THEN
      applied := applied + 1;
    END IF;
    max_hlc := greatest(max_hlc, (c->>'hlc')::bigint);
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
  IF p_local IS NOT NULL AND max_hlc > 0 THEN
    INSERT INTO sp_region_clock (region) VALUES (p_local) ON CONFLICT DO NOTHING;
    UPDATE sp_region_clock SET hlc = max_hlc WHERE region = p_local AND hlc < max_hlc;
  END IF;
  RETURN applied;
END $$;
