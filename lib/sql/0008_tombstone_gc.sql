-- Tombstone collection at causal stability: crdt_doc_gc's rule in SQL.
--
-- A tombstone is an sp_entity row with an even causal length and no
-- sp_field rows (a delete drops its life's fields; a field of a coming
-- re-create makes it not a pure tombstone).  It may be deleted only once no
-- change that could still touch it exists anywhere (crdt/DESIGN.md,
-- "Tombstone collection at causal stability"):
--   1. every region has acknowledged the delete; the first time that is
--      seen, the tombstone records a barrier B[r] = acks[r][r], each
--      region's own sequence number at that point (every write region r
--      made before it saw the delete is at or below B[r]);
--   2. every region has acknowledged every region's writes up to B.
-- The barrier lives in sp_tombstone_barrier, next to the existence register
-- it was recorded for: when the register moves on (a re-create, a newer
-- delete, a concurrent delete that wins) the row no longer matches and is
-- replaced, as crdt/ resets it in merge_exist.  A different number of
-- regions restarts it too.
--
-- Types listed in sp_gc_keep are never collected: their ids are chosen,
-- not generated (a page id, a domain claim keyed by the domain, an API key
-- keyed by its hash), so the same id may be created again, and a create
-- (cl 1) made after one region collected the tombstone would lose to the
-- tombstone (cl 2) in a region that has not collected it yet.  statusd-api
-- reads this table and declares the same types on its crdt_doc
-- (crdt_doc_gc_keep), so both copies of a region's state collect the same
-- tombstones.
--
-- A region that collected a tombstone must never merge an old change of it
-- again.  sp_apply_remote already skips every change at or below sp_vclock;
-- sp_apply_snapshot (0005, 0006) merged snapshot rows whatever their
-- (origin, seq), so a chunk read by a peer before it applied a delete, and applied
-- here after the tombstone was collected, would bring the entity back.  It
-- is replaced below with one that skips rows this region has applied
-- already (at or below its sp_vclock for their origin): merging those is a
-- no-op anyway, unless their entity was collected.
--
-- Lock order: sp_gc_tombstones_local takes the region's clock row before
-- it deletes entity rows, as sp_write, sp_apply_remote and
-- sp_apply_snapshot do (0006), so a collection never deadlocks with an
-- apply that re-creates tombstones it is deleting.  It is short (an index
-- of tombstones only) and runs once a second.
--
-- statusd-replicad runs sp_gc_tombstones_local on its trim timer.
-- tests/lib/test_store_gc.c checks sp_gc_tombstones against crdt_doc_gc.

CREATE TABLE sp_gc_keep (
  type text PRIMARY KEY
);
INSERT INTO sp_gc_keep (type) VALUES ('page'), ('domain'), ('api_key');

CREATE TABLE sp_tombstone_barrier (
  page_id text     NOT NULL,
  type    text     NOT NULL,
  id      text     NOT NULL,
  -- the existence register the barrier was recorded for
  cl      integer  NOT NULL,
  hlc     bigint   NOT NULL,
  region  smallint NOT NULL,
  origin  smallint NOT NULL,
  seq     bigint   NOT NULL,
  barrier bigint[] NOT NULL,  -- barrier[r + 1] = B[r], one entry per region
  PRIMARY KEY (page_id, type, id)
);

-- The scan runs every second: only tombstones, not the whole table.
CREATE INDEX sp_entity_tombstones ON sp_entity (page_id, type, id) WHERE cl % 2 = 0;

-- p_acks: a two-dimensional array, one row per region (region ids 0..n-1,
--   row r + 1 is region r), one column per origin (column o + 1 is origin
--   o), at least n columns: region r's acknowledged vector, i.e. what it
--   has durably applied, its own writes included.  Tombstones whose delete
--   came from an origin beyond the columns are not collected.
-- Returns the number of tombstones deleted.  Errors: SQLSTATE 22023 for a
-- malformed p_acks (message names the problem).
CREATE FUNCTION sp_gc_tombstones(p_acks bigint[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  m integer;
  mn bigint[];  -- mn[o + 1]: the lowest ack of origin o over all regions
  bar bigint[]; -- bar[r + 1]: acks[r][r]
  collected integer;
BEGIN
  IF p_acks IS NULL OR array_ndims(p_acks) IS DISTINCT FROM 2 THEN
    RAISE EXCEPTION 'sp_gc_tombstones: acks must be a two-dimensional array (regions x origins)'
      USING ERRCODE = '22023';
  END IF;
  n := array_length(p_acks, 1);
  m := array_length(p_acks, 2);
  IF array_lower(p_acks, 1) <> 1 OR array_lower(p_acks, 2) <> 1 THEN
    RAISE EXCEPTION 'sp_gc_tombstones: acks must be indexed from 1' USING ERRCODE = '22023';
  END IF;
  IF n > 64 OR m > 64 OR m < n THEN
    RAISE EXCEPTION 'sp_gc_tombstones: acks is %x%: at most 64 regions, and a column for each',
      n, m USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(p_acks) AS a WHERE a IS NULL OR a < 0) THEN
    RAISE EXCEPTION 'sp_gc_tombstones: acks must be non-negative, not NULL'
      USING ERRCODE = '22023';
  END IF;
  SELECT array_agg(x.v ORDER BY x.o) INTO mn
    FROM (SELECT o, min(p_acks[i][o]) AS v
            FROM generate_series(1, m) AS o, generate_series(1, n) AS i GROUP BY o) AS x;
  SELECT array_agg(p_acks[r][r] ORDER BY r) INTO bar FROM generate_series(1, n) AS r;

  -- 1. barriers that no longer hold: the register moved on, the entity is
  --    gone, the number of regions changed, or the type is kept
  DELETE FROM sp_tombstone_barrier AS b
   WHERE cardinality(b.barrier) <> n
      OR EXISTS (SELECT 1 FROM sp_gc_keep AS k WHERE k.type = b.type)
      OR NOT EXISTS (SELECT 1 FROM sp_entity AS e
                      WHERE e.page_id = b.page_id AND e.type = b.type AND e.id = b.id
                        AND (e.cl, e.hlc, e.region, e.origin, e.seq)
                          = (b.cl, b.hlc, b.region, b.origin, b.seq));

  -- 2. a barrier for every pure tombstone that every region has acknowledged
  INSERT INTO sp_tombstone_barrier (page_id, type, id, cl, hlc, region, origin, seq, barrier)
  SELECT e.page_id, e.type, e.id, e.cl, e.hlc, e.region, e.origin, e.seq, bar
    FROM sp_entity AS e
   WHERE e.cl % 2 = 0
     AND e.origin < m AND mn[e.origin + 1] >= e.seq
     AND NOT EXISTS (SELECT 1 FROM sp_gc_keep AS k WHERE k.type = e.type)
     AND NOT EXISTS (SELECT 1 FROM sp_field AS f
                      WHERE f.page_id = e.page_id AND f.type = e.type AND f.id = e.id)
     AND NOT EXISTS (SELECT 1 FROM sp_tombstone_barrier AS b
                      WHERE b.page_id = e.page_id AND b.type = e.type AND b.id = e.id)
  ON CONFLICT DO NOTHING;

  -- 3. collect the tombstones whose barrier every region has passed.  The
  --    register is compared again: a concurrent re-create updates the row,
  --    and the DELETE re-checks the updated row and leaves it.
  WITH gone AS (
    DELETE FROM sp_entity AS e USING sp_tombstone_barrier AS b
     WHERE b.page_id = e.page_id AND b.type = e.type AND b.id = e.id
       AND e.cl % 2 = 0
       AND (e.cl, e.hlc, e.region, e.origin, e.seq) = (b.cl, b.hlc, b.region, b.origin, b.seq)
       AND NOT EXISTS (SELECT 1 FROM sp_field AS f
                        WHERE f.page_id = e.page_id AND f.type = e.type AND f.id = e.id)
       AND NOT EXISTS (SELECT 1 FROM generate_series(1, n) AS r WHERE mn[r] < b.barrier[r])
    RETURNING e.page_id, e.type, e.id
  ), unbar AS (
    DELETE FROM sp_tombstone_barrier AS b USING gone AS g
     WHERE b.page_id = g.page_id AND b.type = g.type AND b.id = g.id
  )
  SELECT count(*) INTO collected FROM gone;
  RETURN collected;
END $$;

-- The acknowledged vectors of this region's store: row p_local + 1 is its
-- own sp_vclock, every other row r + 1 (r in 0..p_nregions-1) the
-- sp_peer_ack rows of peer r.  Origins 0..p_nregions-1.  A peer with no
-- ack rows has a row of zeros, which covers no delete: nothing is collected
-- until every peer has been heard from.  Then sp_gc_tombstones, holding
-- the region's clock row (lock order, see the top).  Errors: 22023 for a
-- region id outside 0..p_nregions-1.
CREATE FUNCTION sp_gc_tombstones_local(p_local smallint, p_nregions integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  acks bigint[];
BEGIN
  IF p_local IS NULL OR p_nregions IS NULL OR p_nregions < 1 OR p_nregions > 64
     OR p_local < 0 OR p_local >= p_nregions THEN
    RAISE EXCEPTION 'sp_gc_tombstones_local: region % of % regions', p_local, p_nregions
      USING ERRCODE = '22023';
  END IF;
  INSERT INTO sp_region_clock (region) VALUES (p_local) ON CONFLICT DO NOTHING;
  PERFORM 1 FROM sp_region_clock WHERE region = p_local FOR UPDATE;
  SELECT array_agg(row_acks ORDER BY r) INTO acks
    FROM (SELECT r, ARRAY(
                   SELECT coalesce(CASE WHEN r = p_local
                                        THEN (SELECT v.seq FROM sp_vclock AS v WHERE v.origin = o)
                                        ELSE (SELECT a.seq FROM sp_peer_ack AS a
                                               WHERE a.peer = r AND a.origin = o) END, 0)
                     FROM generate_series(0, p_nregions - 1) AS o ORDER BY o) AS row_acks
            FROM generate_series(0, p_nregions - 1) AS r) AS x;
  RETURN sp_gc_tombstones(acks);
END $$;

-- sp_apply_snapshot as 0006 left it (the region's clock row first, as
-- sp_write takes it), skipping snapshot rows this region has already
-- applied (see the top of this file).  Same signature, result and errors.
CREATE OR REPLACE FUNCTION sp_apply_snapshot(p_changes jsonb, p_local smallint, p_vector jsonb)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  c jsonb;
  k smallint;
  o smallint;
  vs bigint;
  cur bigint;
  have jsonb;
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
  SELECT coalesce(jsonb_object_agg(v.origin::text, v.seq), '{}'::jsonb) INTO have
    FROM sp_vclock AS v;
  FOR c IN SELECT value FROM jsonb_array_elements(p_changes) LOOP
    CONTINUE WHEN (c->>'seq')::bigint <= coalesce((have->>(c->>'origin'))::bigint, 0);
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
