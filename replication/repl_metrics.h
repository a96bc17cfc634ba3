/* repl_metrics: the Prometheus metrics of statusd-replicad, on the shared
 * registry (lib/sp_metrics.h), for its GET /metrics.
 *
 * The daemon keeps its tallies as plain fields next to the state they
 * describe (per peer: bytes, reconnects, relays, the sessions' repl_stats;
 * process-wide: trimming, refused requests).  Those are mirrored into the
 * registry at render time from a repl_metrics_peer per peer and one
 * repl_metrics_global, so the hot paths stay plain increments and a new
 * counter is one table row here.  What cannot be mirrored from a total is
 * observed when it happens: the histograms of changes per batch (sent and
 * applied) and of apply transaction time.
 *
 * Every per-peer family carries the label peer="<region>"; the log floor
 * carries origin="<region>".  Names and units follow Prometheus (counters
 * end in _total, times in seconds), so `promtool check metrics` finds
 * nothing to say.  The full list is the table in repl_metrics.c.
 *
 * Memory: a repl_metrics owns its registry and copies the names it is given;
 * the samples passed to repl_metrics_render are borrowed for the call.
 * Not thread-safe: it belongs to the daemon's loop thread.
 */
#ifndef REPL_METRICS_H
#define REPL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "repl.h"
#include "sp_buf.h"
#include "sp_metrics.h"

typedef struct repl_metrics repl_metrics;

/* One peer as the daemon sees it when /metrics is asked for.  Counters are
 * totals since the process started; one lower than the last rendered value
 * is taken as its source restarting from 0. */
typedef struct repl_metrics_peer {
  repl_stats out; /* our session sending to the peer */
  repl_stats in;  /* the peer's sessions sending to us, summed (repl_metrics_stats_add) */
  uint64_t sent_bytes;     /* request bodies we posted to it */
  uint64_t received_bytes; /* request bodies it posted to us */
  uint64_t applied;        /* changes applied from it (== the applied histogram's sum) */
  uint64_t reconnects, relayed, relay_switches;
  uint64_t lag_ms;          /* age of our oldest change it has not acknowledged */
  uint64_t last_contact_ms; /* unix ms of its last message, 0: never */
  int connected;            /* our session to it is established */
  unsigned relay_origins;   /* third-region origins relayed to it now */
  /* max log retention: times rows it had not acknowledged were trimmed,
   * and whether it is given up on now (until it acknowledges the floor) */
  uint64_t give_ups;
  int given_up;
  /* snapshots served to it: largest chunk body, entities split over
   * chunks, rows left out (over crdt/'s limits) */
  uint64_t snapshot_chunk_max_bytes, snapshot_splits, snapshot_rows_skipped;
} repl_metrics_peer;

/* Process-wide values.  `floor` has one entry per origin given to
 * repl_metrics_new, in that order. */
typedef struct repl_metrics_global {
  const uint64_t *floor;
  uint64_t trimmed_rows, trim_runs, bad_requests, refused_peers, published;
  uint64_t tombstones_collected; /* sp_gc_tombstones_local, lib/sql/0008 */
  uint64_t local_events;         /* this region's change events on Redis */
} repl_metrics_global;

/* Registers every family and the series of each peer and origin (names
 * copied).  0, SP_ERR_INVAL (a name the registry refuses) or
 * SP_ERR_NOMEM; *out is then NULL. */
int repl_metrics_new(const char *const *peers, size_t npeers, const char *const *origins,
                     size_t norigins, repl_metrics **out);
void repl_metrics_free(repl_metrics *m); /* NULL is a no-op */

/* A new batch of `changes` went to peer number `peer` (resends are not new
 * batches).  An index out of range is ignored. */
void repl_metrics_batch_sent(repl_metrics *m, size_t peer, uint64_t changes);
/* An apply transaction of changes from `peer` committed `changes` changes
 * in `seconds`. */
void repl_metrics_applied(repl_metrics *m, size_t peer, uint64_t changes, double seconds);

/* Adds the counters of `s` into `acc` (for a session about to be replaced,
 * so its totals outlive it). */
void repl_metrics_stats_add(repl_stats *acc, const repl_stats *s);

/* Mirrors `peers` (npeers entries, in repl_metrics_new's order) and `gl`
 * into the registry, then appends the text exposition to `out`.  0,
 * SP_ERR_INVAL (npeers differs), SP_ERR_TOOBIG or SP_ERR_NOMEM (out then
 * holds a partial rendering to discard). */
int repl_metrics_render(repl_metrics *m, const repl_metrics_peer *peers, size_t npeers,
                        const repl_metrics_global *gl, sp_buf *out);

#endif
