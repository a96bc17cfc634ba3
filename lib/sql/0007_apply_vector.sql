-- Applies that answer with the vector.  statusd-replicad acknowledges a
-- batch with the applied vector as committed; it used to read sp_vclock in
-- a query of its own after every apply (and another before it), three round
-- trips and three statements per received batch.  These wrappers apply and
-- return the vector in one statement: one row per sp_vclock row, each
-- carrying the apply's count (one row with a NULL origin when the vector is
-- empty).  Read in the same transaction, right after the apply, so the
-- vector includes everything the apply moved.

-- With p_peer, the sending peer's acknowledged vector (p_ack_origins,
-- p_ack_seqs: what it has applied of ours, from its acks) is upserted into
-- sp_peer_ack in the same transaction as the applied data, as the issue's
-- protocol asks; statusd-replicad then needs a transaction of its own for
-- acks only when a peer sends it nothing.
CREATE FUNCTION sp_apply_remote_vector(p_changes jsonb, p_local smallint,
                                       p_peer smallint DEFAULT NULL,
                                       p_ack_origins smallint[] DEFAULT NULL,
                                       p_ack_seqs bigint[] DEFAULT NULL)
RETURNS TABLE (applied integer, origin smallint, seq bigint) LANGUAGE plpgsql AS $$
DECLARE
  n integer;
BEGIN
  n := sp_apply_remote(p_changes, p_local);
  IF p_peer IS NOT NULL AND p_ack_origins IS NOT NULL THEN
    IF cardinality(p_ack_origins) <> cardinality(p_ack_seqs) THEN
      RAISE EXCEPTION 'sp_apply_remote_vector: ack origins and seqs differ in length'
        USING ERRCODE = '22023';
    END IF;
    INSERT INTO sp_peer_ack AS a (peer, origin, seq)
    SELECT p_peer, x.o, x.s FROM unnest(p_ack_origins, p_ack_seqs) AS x(o, s) ORDER BY x.o
    ON CONFLICT ON CONSTRAINT sp_peer_ack_pkey DO UPDATE SET seq = EXCLUDED.seq;
  END IF;
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
