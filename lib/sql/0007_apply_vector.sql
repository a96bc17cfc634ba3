-- Applies that answer with the vector.  statusd-replicad acknowledges a
-- batch with the applied vector as committed; it used to read sp_vclock in
-- a query of its own after every apply (and another before it), three round
-- trips and three statements per received batch.  These wrappers apply and
-- return the vector in one statement: one row per sp_vclock row, each
-- carrying the apply's count (one row with a NULL origin when the vector is
-- empty).  Read in the same transaction, right after the apply, so the
-- vector includes everything the apply moved.

CREATE FUNCTION sp_apply_remote_vector(p_changes jsonb, p_local smallint)
RETURNS TABLE (applied integer, origin smallint, seq bigint) LANGUAGE plpgsql AS $$
DECLARE
  n integer;
BEGIN
  n := sp_apply_remote(p_changes, p_local);
  RETURN QUERY SELECT n, v.origin, v.seq FROM (VALUES (1)) AS one LEFT JOIN sp_vclock AS v ON true;
END $$;

CREATE FUNCTION sp_apply_snapshot_vector(p_changes jsonb, p_local smallint, p_vector jsonb)
RETURNS TABLE (applied integer, origin smallint, seq bigint) LANGUAGE plpgsql AS $$
DECLARE
  n integer;
BEGIN
  n := sp_apply_snapshot(p_changes, p_local, p_vector);
  RETURN QUERY SELECT n, v.origin, v.seq FROM (VALUES (1)) AS one LEFT JOIN sp_vclock AS v ON true;
END $$;
