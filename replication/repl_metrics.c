/* repl_metrics: statusd-replicad's metric families on lib/sp_metrics (see
 * repl_metrics.h for the model: totals mirrored at render time, histograms
 * observed as things happen).
 *
 * The families, in the order they render:
 *   per peer (label peer):
 *     sp_repl_lag_seconds                    gauge: age of our oldest change the peer lacks
 *     sp_repl_connected                      gauge: 1 while our session to it is established
 *     sp_repl_last_contact_timestamp_seconds gauge: unix time of its last message
 *     sp_repl_relay_origins                  gauge: third-region origins relayed to it
 *     sp_repl_peer_clock_offset_seconds      gauge: its wall clock minus ours (last ack)
 *     sp_repl_peer_given_up                  gauge: 1 while given up on (max log retention)
 *     sp_repl_snapshot_chunk_max_bytes       gauge: largest snapshot chunk body sent to it
 *     sp_repl_*_total                        counters: table peer_counters below
 *     sp_repl_sent_batch_changes             histogram: changes per new batch sent
 *     sp_repl_applied_batch_changes          histogram: changes per apply transaction
 *     sp_repl_apply_duration_seconds         histogram: time of one apply transaction
 *   process-wide:
 *     sp_repl_log_floor{origin}              gauge: highest trimmed seq of that origin
 *     sp_repl_*_total                        counters: table global_counters below
 * Memory: everything hangs off the repl_metrics (sp_malloc); see the header.
 */
#include "repl_metrics.h"

#include <stddef.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_err.h"

/* Mirrored counters: name, help, and where the total sits in the sample. */
typedef struct counter_def {
  const char *name, *help;
  size_t off; /* of a uint64_t */
} counter_def;

#define PEER(field) offsetof(repl_metrics_peer, field)
static const counter_def peer_counters[] = {
    {"sp_repl_changes_sent_total", "Changes sent to the peer in new batches (resends not counted)",
     PEER(out.changes_sent)},
    {"sp_repl_batches_sent_total", "New batches sent to the peer", PEER(out.batches_sent)},
    {"sp_repl_batches_resent_total", "Batches sent to the peer again after an ack timeout",
     PEER(out.batches_resent)},
    {"sp_repl_bytes_sent_total",
     "Bytes of the request bodies (handshakes, batches, snapshot chunks) posted to the peer",
     PEER(sent_bytes)},
    {"sp_repl_bytes_received_total", "Bytes of the request bodies the peer posted to us",
     PEER(received_bytes)},
    {"sp_repl_changes_applied_total", "Changes from the peer applied to the local store",
     PEER(applied)},
    {"sp_repl_batches_received_total", "Batches received from the peer",
     PEER(in.batches_received)},
    {"sp_repl_skew_rejects_total",
     "Batches from the peer refused for a change stamped too far in the future (alert on any)",
     PEER(in.skew_rejects)},
    {"sp_repl_skew_rejected_by_peer_total", "Our batches the peer refused for clock skew",
     PEER(out.skew_rejected_by_peer)},
    {"sp_repl_reconnects_total", "Connections opened to the peer, the first one included",
     PEER(reconnects)},
    {"sp_repl_relayed_changes_total",
     "Changes of a third region's origin sent to the peer (the repair path)", PEER(relayed)},
    {"sp_repl_relay_switches_total", "Times relaying an origin to the peer was switched on",
     PEER(relay_switches)},
    {"sp_repl_snapshots_served_total", "Snapshots started for the peer",
     PEER(out.snapshots_started)},
    {"sp_repl_snapshot_chunks_sent_total", "Snapshot chunks sent to the peer",
     PEER(out.snapshot_chunks_sent)},
    {"sp_repl_snapshot_chunks_applied_total", "Snapshot chunks from the peer accepted to merge",
     PEER(in.snapshot_chunks_received)},
    {"sp_repl_peer_given_up_total",
     "Times change-log rows the peer had not acknowledged were trimmed past the maximum log "
     "retention (it catches up by snapshot)",
     PEER(give_ups)},
    {"sp_repl_snapshot_entities_split_total",
     "Entities larger than a snapshot chunk sent to the peer split over several chunks",
     PEER(snapshot_splits)},
    {"sp_repl_snapshot_rows_skipped_total",
     "Snapshot rows left out for the peer because they break crdt/'s limits (alert on any)",
     PEER(snapshot_rows_skipped)},
};
#undef PEER
#define NPC (sizeof peer_counters / sizeof peer_counters[0])

#define GLOBAL(field) offsetof(repl_metrics_global, field)
static const counter_def global_counters[] = {
    {"sp_repl_trimmed_rows_total",
     "Change-log rows deleted once every peer acknowledged them or past the maximum retention",
     GLOBAL(trimmed_rows)},
    {"sp_repl_trim_runs_total", "Change-log trimming runs", GLOBAL(trim_runs)},
    {"sp_repl_bad_requests_total", "Undecodable or unexpected handshakes and batches from peers",
     GLOBAL(bad_requests)},
    {"sp_repl_refused_peers_total",
     "Requests refused because the client certificate names no peer", GLOBAL(refused_peers)},
    {"sp_repl_published_total", "Applied deltas published on the region's Redis changes channel",
     GLOBAL(published)},
    {"sp_repl_tombstones_collected_total",
     "Tombstones deleted from the store once stable in every region",
     GLOBAL(tombstones_collected)},
    {"sp_repl_local_events_total",
     "Change events of this region's writes that moved the senders before the next poll",
     GLOBAL(local_events)},
};
#undef GLOBAL
#define NGC (sizeof global_counters / sizeof global_counters[0])

enum { G_LAG, G_CONNECTED, G_CONTACT, G_RELAY_ORIGINS, G_CLOCK_OFFSET, G_GIVEN_UP, G_CHUNK_MAX,
       NPG };
static const struct {
  const char *name, *help;
} peer_gauges[NPG] = {
    {"sp_repl_lag_seconds",
     "Age of the oldest local change the peer has not acknowledged (0: none pending)"},
    {"sp_repl_connected", "1 while our replication session to the peer is established"},
    {"sp_repl_last_contact_timestamp_seconds",
     "Unix time of the last message from the peer (0: never)"},
    {"sp_repl_relay_origins", "Third-region origins relayed to the peer now"},
    {"sp_repl_peer_clock_offset_seconds",
     "The peer's wall clock minus ours, estimated from its last ack"},
    {"sp_repl_peer_given_up",
     "1 while rows the peer had not acknowledged are trimmed (maximum log retention), until it "
     "has caught up by snapshot"},
    {"sp_repl_snapshot_chunk_max_bytes", "Largest snapshot chunk body sent to the peer"},
};

/* Batch sizes: one change up to MAX_CHANGES (1000) per batch. */
static const double batch_buckets[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};
#define NBATCH (sizeof batch_buckets / sizeof batch_buckets[0])

typedef struct peer_series {
  sp_counter *c[NPC];
  uint64_t last[NPC]; /* the totals last mirrored into c */
  sp_gauge *g[NPG];
  sp_histogram *sent, *applied, *apply_time;
} peer_series;

struct repl_metrics {
  sp_metrics *reg;
  peer_series *peers;
  size_t npeers;
  sp_gauge **floor;
  size_t norigins;
  sp_counter *gc[NGC];
  uint64_t glast[NGC];
};

static const char *const peer_label[] = {"peer"};
static const char *const origin_label[] = {"origin"};

/* Registers each kind of family and gets one series per peer.  0 or the
 * registry's error. */
static int add_peer_families(repl_metrics *m, const char *const *peers) {
  sp_metrics_family *f;
  int rc = 0;
  for (size_t k = 0; rc == 0 && k < NPG; k++) {
    rc = sp_metrics_add_gauge(m->reg, peer_gauges[k].name, peer_gauges[k].help, peer_label, 1, &f);
    for (size_t i = 0; rc == 0 && i < m->npeers; i++)
      rc = sp_metrics_gauge(f, &peers[i], &m->peers[i].g[k]);
  }
  for (size_t k = 0; rc == 0 && k < NPC; k++) {
    rc = sp_metrics_add_counter(m->reg, peer_counters[k].name, peer_counters[k].help, peer_label,
                                1, &f);
    for (size_t i = 0; rc == 0 && i < m->npeers; i++)
      rc = sp_metrics_counter(f, &peers[i], &m->peers[i].c[k]);
  }
  if (rc == 0)
    rc = sp_metrics_add_histogram(m->reg, "sp_repl_sent_batch_changes",
                                  "Changes per new batch sent to the peer", peer_label, 1,
                                  batch_buckets, NBATCH, &f);
  for (size_t i = 0; rc == 0 && i < m->npeers; i++)
    rc = sp_metrics_histogram(f, &peers[i], &m->peers[i].sent);
  if (rc == 0)
    rc = sp_metrics_add_histogram(m->reg, "sp_repl_applied_batch_changes",
                                  "Changes applied per apply transaction of the peer's batches "
                                  "and snapshot chunks",
                                  peer_label, 1, batch_buckets, NBATCH, &f);
  for (size_t i = 0; rc == 0 && i < m->npeers; i++)
    rc = sp_metrics_histogram(f, &peers[i], &m->peers[i].applied);
  if (rc == 0)
    rc = sp_metrics_add_histogram(m->reg, "sp_repl_apply_duration_seconds",
                                  "Time of one apply transaction of the peer's changes",
                                  peer_label, 1, NULL, 0, &f);
  for (size_t i = 0; rc == 0 && i < m->npeers; i++)
    rc = sp_metrics_histogram(f, &peers[i], &m->peers[i].apply_time);
  return rc;
}

static int add_global_families(repl_metrics *m, const char *const *origins) {
  sp_metrics_family *f;
  int rc = sp_metrics_add_gauge(m->reg, "sp_repl_log_floor",
                                "Highest sequence of the origin trimmed from the change log "
                                "(older rows reach a peer only by snapshot)",
                                origin_label, 1, &f);
  for (size_t i = 0; rc == 0 && i < m->norigins; i++)
    rc = sp_metrics_gauge(f, &origins[i], &m->floor[i]);
  for (size_t k = 0; rc == 0 && k < NGC; k++) {
    rc = sp_metrics_add_counter(m->reg, global_counters[k].name, global_counters[k].help, NULL, 0,
                                &f);
    if (rc == 0)
      rc = sp_metrics_counter(f, NULL, &m->gc[k]);
  }
  return rc;
}

int repl_metrics_new(const char *const *peers, size_t npeers, const char *const *origins,
                     size_t norigins, repl_metrics **out) {
  *out = NULL;
  repl_metrics *m = sp_calloc(1, sizeof *m);
  if (m == NULL)
    return SP_ERR_NOMEM;
  m->npeers = npeers;
  m->norigins = norigins;
  m->peers = sp_calloc(npeers ? npeers : 1, sizeof *m->peers);
  m->floor = sp_calloc(norigins ? norigins : 1, sizeof *m->floor);
  int rc = m->peers && m->floor ? sp_metrics_new(&m->reg) : SP_ERR_NOMEM;
  if (rc == 0)
    rc = add_peer_families(m, peers);
  if (rc == 0)
    rc = add_global_families(m, origins);
  if (rc) {
    repl_metrics_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

void repl_metrics_free(repl_metrics *m) {
  if (m == NULL)
    return;
  sp_metrics_free(m->reg);
  sp_free(m->peers);
  sp_free(m->floor);
  sp_free(m);
}

void repl_metrics_batch_sent(repl_metrics *m, size_t peer, uint64_t changes) {
  if (m && peer < m->npeers)
    sp_histogram_observe(m->peers[peer].sent, (double)changes);
}

void repl_metrics_applied(repl_metrics *m, size_t peer, uint64_t changes, double seconds) {
  if (m == NULL || peer >= m->npeers)
    return;
  sp_histogram_observe(m->peers[peer].applied, (double)changes);
  sp_histogram_observe(m->peers[peer].apply_time, seconds);
}

void repl_metrics_stats_add(repl_stats *acc, const repl_stats *s) {
  acc->batches_sent += s->batches_sent;
  acc->batches_resent += s->batches_resent;
  acc->changes_sent += s->changes_sent;
  acc->bytes_sent += s->bytes_sent;
  acc->acks_received += s->acks_received;
  acc->gaps_received += s->gaps_received;
  acc->skew_rejected_by_peer += s->skew_rejected_by_peer;
  acc->snapshots_started += s->snapshots_started;
  acc->snapshot_chunks_sent += s->snapshot_chunks_sent;
  acc->peer_clock_offset_ms = s->peer_clock_offset_ms; /* a reading, not a total */
  acc->batches_received += s->batches_received;
  acc->changes_to_apply += s->changes_to_apply;
  acc->duplicates += s->duplicates;
  acc->gaps += s->gaps;
  acc->skew_rejects += s->skew_rejects;
  acc->malformed += s->malformed;
  acc->snapshot_chunks_received += s->snapshot_chunks_received;
}

/* Moves counter c up to the source total `now` (a lower total: the source
 * restarted from 0, so all of it is new). */
static void mirror(sp_counter *c, uint64_t *last, uint64_t now) {
  sp_counter_add(c, (double)(now >= *last ? now - *last : now));
  *last = now;
}

static uint64_t at(const void *sample, size_t off) {
  uint64_t v;
  memcpy(&v, (const char *)sample + off, sizeof v);
  return v;
}

int repl_metrics_render(repl_metrics *m, const repl_metrics_peer *peers, size_t npeers,
                        const repl_metrics_global *gl, sp_buf *out) {
  if (npeers != m->npeers)
    return SP_ERR_INVAL;
  for (size_t i = 0; i < npeers; i++) {
    peer_series *s = &m->peers[i];
    const repl_metrics_peer *p = &peers[i];
    for (size_t k = 0; k < NPC; k++)
      mirror(s->c[k], &s->last[k], at(p, peer_counters[k].off));
    sp_gauge_set(s->g[G_LAG], (double)p->lag_ms / 1000.0);
    sp_gauge_set(s->g[G_CONNECTED], p->connected ? 1 : 0);
    sp_gauge_set(s->g[G_CONTACT], (double)p->last_contact_ms / 1000.0);
    sp_gauge_set(s->g[G_RELAY_ORIGINS], (double)p->relay_origins);
    sp_gauge_set(s->g[G_CLOCK_OFFSET], (double)p->out.peer_clock_offset_ms / 1000.0);
    sp_gauge_set(s->g[G_GIVEN_UP], p->given_up ? 1 : 0);
    sp_gauge_set(s->g[G_CHUNK_MAX], (double)p->snapshot_chunk_max_bytes);
  }
  for (size_t i = 0; gl->floor && i < m->norigins; i++)
    sp_gauge_set(m->floor[i], (double)gl->floor[i]);
  for (size_t k = 0; k < NGC; k++)
    mirror(m->gc[k], &m->glast[k], at(gl, global_counters[k].off));
  return sp_metrics_render(m->reg, out);
}
