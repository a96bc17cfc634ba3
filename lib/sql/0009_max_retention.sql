-- Maximum log retention: giving up on a peer that stays away too long.
--
-- sp_trim_log (0005) deletes only change-log rows every peer acknowledged,
-- so one region that never comes back would make every other region's log
-- grow forever.  sp_trim_log_max runs sp_trim_log and then, per origin,
-- also deletes the rows logged longer ago than a maximum retention even
-- though some peer has not acknowledged them.  Nothing is lost: the entity
-- state stays in sp_entity/sp_field, and sp_log_floor rises over the cut,
-- so statusd-replicad serves such a peer a snapshot when it comes back
-- (its send cursor is below the floor).  The function names the peers that
-- had not acknowledged what it cut ("given up on"), for the daemon's
-- warning and metric.
--
-- The cut is contiguous from the bottom of the log: per origin it is the
-- row before the first one logged after the cut-off time, so a row logged
-- out of seq order is kept (never a hole under rows still there).  It never
-- passes this region's own applied vector (rows beyond a gap stay, as in
-- sp_trim_log), and it moves at most MAX_CUT seqs per origin and call so one
-- call after a long outage stays a short transaction (the daemon calls
-- again every second).

-- p_peers, p_retention_ms: as sp_trim_log;
-- p_max_retention_ms: rows logged more than this long ago go whatever the
--   acks say; NULL turns the maximum off (sp_trim_log alone); must be >=
--   p_retention_ms.
-- Returns one row per origin and pass that lost rows: the new floor, the
-- count, and given_up: NULL for rows every peer had acknowledged (the
-- sp_trim_log pass), else the peers (ids, ascending) whose acknowledged seq
-- for that origin was below the cut (no ack row counts as 0).
CREATE FUNCTION sp_trim_log_max(p_peers smallint[], p_retention_ms bigint,
                                p_max_retention_ms bigint)
RETURNS TABLE (origin smallint, floor bigint, deleted bigint, given_up smallint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  max_cut CONSTANT bigint := 100000;
  cutoff timestamptz;
  o smallint;
  v bigint;
  first_seq bigint;
  keep_seq bigint;
  cut bigint;
  n bigint;
BEGIN
  IF p_max_retention_ms IS NOT NULL AND
     (p_max_retention_ms < 0 OR p_max_retention_ms < p_retention_ms) THEN
    RAISE EXCEPTION 'sp_trim_log_max: max retention must be >= retention (% < %)',
      p_max_retention_ms, p_retention_ms USING ERRCODE = '22023';
  END IF;
  RETURN QUERY SELECT t.origin, t.floor, t.deleted, NULL::smallint[]
                 FROM sp_trim_log(p_peers, p_retention_ms) t;
  IF p_max_retention_ms IS NULL THEN
    RETURN;
  END IF;
  cutoff := now() - p_max_retention_ms * interval '1 millisecond';
  FOR o, v IN SELECT vc.origin, vc.seq FROM sp_vclock vc WHERE vc.seq > 0 ORDER BY 1 LOOP
    -- cheap when nothing expired: only the oldest row is looked at
    SELECT l.seq INTO first_seq FROM sp_change_log l
     WHERE l.origin = o ORDER BY l.seq LIMIT 1;
    CONTINUE WHEN first_seq IS NULL OR first_seq > v OR NOT EXISTS (
      SELECT 1 FROM sp_change_log l WHERE l.origin = o AND l.seq = first_seq
                                     AND l.logged_at < cutoff);
    -- the first row not expired bounds the cut; the scan walks only over
    -- rows about to be deleted, at most max_cut of them
    cut := least(v, first_seq + max_cut - 1);
    SELECT l.seq INTO keep_seq FROM sp_change_log l
     WHERE l.origin = o AND l.seq <= cut AND l.logged_at >= cutoff
     ORDER BY l.seq LIMIT 1;
    cut := coalesce(keep_seq - 1, cut);
    CONTINUE WHEN cut < first_seq;
    given_up := ARRAY(SELECT pp FROM unnest(p_peers) AS pp
                       WHERE NOT EXISTS (SELECT 1 FROM sp_peer_ack a
                                          WHERE a.peer = pp AND a.origin = o AND a.seq >= cut)
                       ORDER BY 1);
    DELETE FROM sp_change_log l WHERE l.origin = o AND l.seq <= cut;
    GET DIAGNOSTICS n = ROW_COUNT;
    CONTINUE WHEN n = 0;
    INSERT INTO sp_log_floor AS fl (origin, seq) VALUES (o, cut)
    ON CONFLICT ON CONSTRAINT sp_log_floor_pkey
      DO UPDATE SET seq = greatest(fl.seq, EXCLUDED.seq)
    RETURNING fl.seq INTO floor;
    origin := o;
    deleted := n;
    RETURN NEXT;
  END LOOP;
END $$;
