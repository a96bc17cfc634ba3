/* statusd-replicad: the replication daemon of one region.
 *
 *   statusd-replicad --topology FILE --region NAME
 *
 * Glue only: the protocol is replication/repl.h (sans-I/O), the transport
 * lib/sp_h2 (HTTP/2 over mutual TLS), the store lib/sql (sp_change_log,
 * sp_vclock, sp_apply_remote).  Per peer region there are two repl_sessions:
 * `out`, the dialer side of our own sp_h2 client connection, which POSTs
 * /repl/v1/handshake and /repl/v1/batch with our change-log rows; and `in`,
 * the acceptor side for the requests the peer POSTs to our sp_h2 server.
 * The peer of a server request is the name its client certificate
 * authenticated; unknown names get 403.
 *
 * Everything runs on one libuv loop.  A tick timer (20 ms) polls sp_vclock
 * (our applied vector) every sync interval less a tick, notifies the
 * out-sessions, drives each peer's sender, and reconnects dead peers with
 * exponential backoff and jitter; statusd-api's change events wake the
 * senders at once when the region is quiet (on_local_changes).
 * Received batches are applied one at a time (applies of one region must be
 * serialised: two peers may relay the same change), each as one
 * statement, `sp_apply_remote_vector($1::jsonb, $2::smallint)`
 * (lib/sql/0007: sp_apply_remote, then the vector read in the same
 * transaction), and the ack carries that vector.
 *
 * After an apply commits, the applied changes are published as one crdt
 * delta (binary encoding) on the region's Redis channel
 * sp:<cluster>:<region>:changes, so statusd-api merges them at once instead
 * of at its next change-log poll; best effort, like statusd-api's own.
 *
 * Also served on the same h2 server: GET /health, /ready and /metrics.
 * Metrics live in replication/repl_metrics.c on the shared registry: the
 * tallies here (peer fields, the sessions' repl_stats, the `g` counters)
 * are mirrored into it per request by on_metrics, and the per-batch
 * histograms are fed where batches are sent (send_batch) and applied
 * (on_applied).  Per-peer lag (sp_repl_lag_seconds) is the age of the
 * oldest local change the peer has not acknowledged, read from
 * sp_change_log every LAG_MS (update_lag).
 *
 * Repair paths (lib/sql/0005_repl_repair.sql):
 *   - relay: rows of a third region's origin go to a peer that has been
 *     behind us for it for RELAY_LAG_MS, or at once while that origin's
 *     daemon is unreachable from here; off again once the peer caught up.
 *     What a peer has is learnt from its acks and from the sender vector
 *     of its own batches (learn_peer_vector);
 *   - acks: each peer's acknowledged vector is upserted into sp_peer_ack
 *     when it changes (and, once committed, {"peer","origin","seq"} for our
 *     own origin is published on sp:<cluster>:<region>:acks, which releases
 *     statusd-api's durable writes); every TRIM_MS sp_trim_log deletes the
 *     change-log rows every peer acknowledged and that are older than the retention
 *     (--log-retention-ms or SP_REPL_LOG_RETENTION_MS, default 1 h), and
 *     raises sp_log_floor.  A peer whose send cursor is below the floor
 *     makes the source answer SP_ERR_RANGE, which puts the session in
 *     snapshot mode;
 *   - giving up: so that a region that never comes back cannot make the
 *     log grow forever, the same call (sp_trim_log_max, lib/sql/0009) also
 *     deletes rows logged longer ago than the maximum retention
 *     (--max-log-retention-ms or SP_REPL_MAX_LOG_RETENTION_MS, default
 *     24 h, >= the retention) whatever the acks say, once the daemon has
 *     run for GIVE_UP_GRACE_MS (its persisted acks may be stale at start).
 *     A peer that had not acknowledged them is "given up on": a warning,
 *     sp_repl_peer_given_up{,_total}; it catches up by snapshot and is back
 *     once it acknowledges the floor (check_given_up);
 *   - snapshots: in snapshot mode the chunks are read from sp_entity and
 *     sp_field (whole entities after the cursor, at most SNAP_ENTITIES and
 *     SNAP_MAX_BYTES; an entity larger than that is split at its fields;
 *     see "sending a snapshot") and POSTed to /repl/v1/snapshot; received
 *     chunks are merged with
 *     sp_apply_snapshot (crdt/'s rules, no change-log rows), which on the
 *     last chunk adopts the vector as a pointwise max and raises the floor
 *     (rows we have applied already are skipped, lib/sql/0008);
 *   - tombstones: every TRIM_MS sp_gc_tombstones_local (lib/sql/0008)
 *     deletes the tombstones that are stable (crdt/DESIGN.md): every region
 *     acknowledged the delete and every write made before seeing it.
 * A field whose entity row is missing (never the case for rows written
 * through sp_write) is not carried by a snapshot.
 *
 * Memory: one process struct `g` (the documented per-process global) owns
 * the peers, sessions, pool, server and clients; freed after the loop ends.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "crdt.h"
#include "internal.h"
#include "repl.h"
#include "repl_metrics.h"
#include "sp_alloc.h"
#include "sp_buf.h"
#include "sp_err.h"
#include "sp_h2.h"
#include "sp_log.h"
#include "sp_pg.h"
#include "sp_redis.h"
#include "sp_tls.h"
#include "sp_topo.h"

#define TICK_MS 20
#define EVENT_GAP_MS 15 /* a commit this long after the previous one finds the region quiet */
#define LAG_MS 500
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_CHANGES 1000
#define WINDOW 2
#define LOAD_LIMIT "3000" /* >= WINDOW * MAX_CHANGES + one batch */
#define RELAY_LAG_MS 500     /* a peer this far behind us for an origin gets it relayed */
#define SNAP_ENTITIES 100 /* per chunk at most, with all their fields */
#define SNAP_ENTITIES_S "100"
/* per chunk: the changes' encoded bytes, leaving room for the envelope
 * (two cursors, a vector) so a body stays within the batch bound */
#define SNAP_MAX_BYTES (REPL_DEFAULT_MAX_BYTES - 8192)
#define SNAP_MAX_BYTES_S "1040384"
#define TRIM_MS 1000         /* how often the change log is trimmed */
#define RETENTION_MS 3600000 /* default floor: rows younger than this stay */
#define MAX_RETENTION_MS 86400000 /* default: older rows go even if a peer lacks them */
#define GIVE_UP_GRACE_MS 10000    /* after start, before any peer is given up on */
#define CT_PROTO "application/x-protobuf"

typedef struct peer {
  const sp_topo_region *r;
  repl_config cfg; /* for replacing `in` on a new handshake */
  repl_session *out, *in;
  sp_h2_client *cli;
  int connected, dead, loading, requests, snap_logged;
  crdt_vclock snap_vector; /* read before the chunk's rows */
  uint64_t snap_chunks;
  uint64_t backoff_ms, next_attempt_ms;
  crdt_delta *rows; /* loaded change-log rows (the repl_source) */
  size_t pos;
  /* metrics (repl_metrics mirrors these) */
  uint64_t reconnects, applied, sent_bytes, received_bytes, last_contact_ms, lag_ms;
  int lag_query;
  repl_stats in_done; /* stats of the `in` sessions replaced so far */
  /* relay: since when the peer is behind us for each origin (0: not) */
  uint64_t behind_since[CRDT_MAX_REGIONS];
  uint64_t relay_mask;     /* origins other than ours relayed to it now */
  uint64_t relayed, relay_switches;
  /* the acked vector as last written to sp_peer_ack */
  crdt_vclock persisted;
  int have_persisted, persisting;
  /* max retention: rows it had not acknowledged were trimmed (until it
   * acknowledges the floor again, after a snapshot) */
  int given_up;
  uint64_t give_ups;
  /* snapshot chunks sent to it: largest body; entities split over chunks;
   * rows left out because no peer would decode them */
  uint64_t snap_max_bytes, snap_split, snap_skipped;
} peer;

typedef struct apply_job apply_job;
struct apply_job {
  apply_job *next;
  sp_h2_stream *st;
  peer *p;
  repl_msg m;
  repl_apply a;
  uint64_t apply_ns; /* uv_hrtime() when the apply query went out */
  crdt_vclock ack;   /* the peer's acked vector persisted with the apply */
  int with_ack;
};

static struct {
  uv_loop_t loop;
  uv_timer_t tick;
  uv_signal_t sigterm, sigint;
  sp_topo *topo;
  const sp_topo_region *self;
  crdt_region id;
  sp_tls_ctx *tls_srv, *tls_cli;
  sp_h2_server *srv;
  sp_pg_pool *pg;
  sp_redis *redis;
  char channel[2 * REPL_MAX_ID + 16];
  char acks_channel[2 * REPL_MAX_ID + 16]; /* persisted acks, for durable writes */
  peer *peers;
  size_t npeers;
  crdt_vclock applied; /* last read from sp_vclock */
  int polling, have_vector, stopping;
  uint64_t last_poll_ms, last_lag_ms;
  apply_job *jobs, **jobs_tail;
  int applying;
  uint64_t applied_total, batches_in, bad_requests, refused_peers, published;
  uint64_t local_events; /* change events of our origin that moved the senders */
  uint64_t last_event_ms; /* when the last change event of our origin came */
  uint64_t poll_ms;       /* sp_vclock poll period (see on_local_changes) */
  /* trimming: sp_log_floor as last read, retention, counters */
  crdt_vclock floor;
  int have_floor, trimming;
  uint64_t retention_ms, last_trim_ms, trimmed_rows, trim_runs;
  uint64_t max_retention_ms, started_ms;
  uint64_t snapshot_chunks_in;
  /* tombstone collection (lib/sql/0008), on the trimming period */
  int collecting;
  uint64_t last_gc_ms, tombstones_collected;
  repl_metrics *metrics;
} g;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static peer *peer_by_name(const char *name) {
  for (size_t i = 0; name && i < g.npeers; i++)
    if (strcmp(g.peers[i].r->name, name) == 0)
      return &g.peers[i];
  return NULL;
}

/* Fills v from a result of `SELECT origin, seq FROM sp_vclock`. */
static void vector_from(const PGresult *res, crdt_vclock *v) {
  crdt_vclock_init(v);
  for (int i = 0; i < PQntuples(res); i++) {
    long o = atol(PQgetvalue(res, i, 0));
    if (o >= 0 && o < CRDT_MAX_REGIONS)
      v->seq[o] = strtoull(PQgetvalue(res, i, 1), NULL, 10);
  }
}

/* Raises v pointwise to the (origin, seq) rows of res, read from column
 * `col` on (a NULL origin is skipped).  sp_vclock never goes back, so a
 * poll answered after an apply's own answer cannot lower g.applied. */
static void vector_raise(const PGresult *res, int col, crdt_vclock *v) {
  for (int i = 0; i < PQntuples(res); i++) {
    if (PQgetisnull(res, i, col))
      continue;
    long o = atol(PQgetvalue(res, i, col));
    uint64_t s = strtoull(PQgetvalue(res, i, col + 1), NULL, 10);
    if (o >= 0 && o < CRDT_MAX_REGIONS && s > v->seq[o])
      v->seq[o] = s;
  }
}

/* ---- sending: the repl_source over loaded rows ------------------------- */

static int src_rewind(void *arg, const crdt_vclock *after, uint64_t origins) {
  peer *p = arg;
  size_t n = crdt_delta_count(p->rows);
  p->pos = 0;
  /* rows at or below an origin's floor were trimmed: only a snapshot has them */
  for (int o = 0; o < CRDT_MAX_REGIONS; o++)
    if ((origins >> o & 1) && after->seq[o] < g.floor.seq[o])
      return SP_ERR_RANGE;
  while (p->pos < n) {
    const crdt_change *c = crdt_delta_get(p->rows, p->pos);
    if ((origins >> c->origin & 1) && c->seq > after->seq[c->origin])
      break;
    p->pos++;
  }
  return 0;
}

static int src_next(void *arg, crdt_change *out) {
  peer *p = arg;
  const crdt_change *c = crdt_delta_get(p->rows, p->pos);
  if (c == NULL)
    return 0;
  *out = *c;
  p->pos++;
  if (c->origin != g.id)
    p->relayed++;
  return 1;
}

static void peer_pump(peer *p);
static void vector_arrays(const crdt_vclock *v, char *origins, size_t olen, char *seqs,
                          size_t slen);
static void snapshot_read(peer *p);

static void peer_fail(peer *p, const char *why) {
  if (!p->dead)
    sp_log_warn("peer connection dropped", "{s:s,s:s}", "peer", p->r->name, "reason", why);
  p->dead = 1;
}

/* Decodes a response body into m; 0 or a negative code (logged). */
static int response_msg(peer *p, int err, const sp_h2_response *res, repl_msg *m) {
  if (err) {
    peer_fail(p, sp_strerror(err));
    return err;
  }
  if (res->status != 200) {
    sp_log_warn("peer answered with an error", "{s:s,s:i,s:s}", "peer", p->r->name, "status",
                res->status, "body", res->body.base);
    if (res->status == 409)
      peer_fail(p, "peer has no session for us: handshake again"); /* reconnects */
    return SP_ERR_PROTO;
  }
  int rc = repl_msg_decode((const uint8_t *)res->body.base, res->body.len, m);
  if (rc)
    sp_log_warn("undecodable response", "{s:s,s:s}", "peer", p->r->name, "error", sp_strerror(rc));
  p->last_contact_ms = now_ms();
  return rc;
}

static void on_hello_reply(sp_h2_client *cli, int err, const sp_h2_response *res, void *arg) {
  peer *p = arg;
  p->requests--;
  if (cli != p->cli)
    return;
  repl_msg m;
  if (response_msg(p, err, res, &m)) {
    peer_fail(p, "handshake failed");
    return;
  }
  int rc = repl_session_on_handshake_reply(p->out, &m);
  repl_msg_release(&m);
  if (rc) {
    peer_fail(p, repl_session_reason(p->out));
    return;
  }
  p->backoff_ms = 0;
  sp_log_info("peer established", "{s:s,s:i}", "peer", p->r->name, "version",
              (int)repl_session_version(p->out));
  peer_pump(p);
}

static void on_ack(sp_h2_client *cli, int err, const sp_h2_response *res, void *arg) {
  peer *p = arg;
  p->requests--;
  if (cli != p->cli)
    return;
  repl_msg m;
  if (response_msg(p, err, res, &m))
    return; /* the batch times out and is re-sent, or the connection died */
  int rc = repl_session_on_ack(p->out, &m, now_ms());
  if (rc == 0 && m.u.ack.status != REPL_OK)
    sp_log_info("ack", "{s:s,s:s,s:s}", "peer", p->r->name, "status",
                repl_status_name(m.u.ack.status), "reason", m.u.ack.reason);
  repl_msg_release(&m);
  if (rc == SP_ERR_PROTO)
    peer_fail(p, repl_session_reason(p->out));
  else
    peer_pump(p);
}

static int post(peer *p, const char *path, const sp_buf *body, sp_h2_response_cb cb) {
  sp_h2_header h = {"content-type", CT_PROTO};
  int rc = sp_h2_client_request(p->cli, "POST", path, &h, 1, body->base, body->len, cb, p);
  if (rc) {
    peer_fail(p, sp_strerror(rc));
    return rc;
  }
  p->requests++;
  p->sent_bytes += body->len;
  return 0;
}

static void send_batch(peer *p) {
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  repl_source src = {src_rewind, src_next, p};
  repl_stats before, after;
  repl_session_stats(p->out, &before);
  int rc = repl_session_send(p->out, &src, now_ms(), &out);
  repl_session_stats(p->out, &after);
  if (after.batches_sent > before.batches_sent) /* a new batch, not a resend */
    repl_metrics_batch_sent(g.metrics, (size_t)(p - g.peers),
                            after.changes_sent - before.changes_sent);
  if (rc == 0)
    post(p, "/repl/v1/batch", &out, on_ack);
  else if (rc != SP_ERR_AGAIN)
    sp_log_error("cannot build a batch", "{s:s,s:s}", "peer", p->r->name, "error", sp_strerror(rc));
  sp_buf_release(&out);
}

static void on_rows(int status, const PGresult *res, void *arg) {
  peer *p = arg;
  p->loading = 0;
  if (status) {
    sp_log_warn("cannot read the change log", "{s:s,s:s}", "error", sp_strerror(status), "db",
                sp_pg_error_message(res));
    return;
  }
  crdt_delta_clear(p->rows);
  for (int i = 0; i < PQntuples(res); i++) {
    crdt_change c = {0};
    c.origin = (crdt_region)atoi(PQgetvalue(res, i, 0));
    c.seq = strtoull(PQgetvalue(res, i, 1), NULL, 10);
    c.kind = atoi(PQgetvalue(res, i, 2)) == 1 ? CRDT_FIELD : CRDT_EXIST;
    c.page = PQgetvalue(res, i, 3);
    c.type = PQgetvalue(res, i, 4);
    c.id = PQgetvalue(res, i, 5);
    if (c.kind == CRDT_FIELD) {
      c.field = PQgetvalue(res, i, 6);
      c.value_null = PQgetisnull(res, i, 7);
      c.value = c.value_null ? NULL : (const uint8_t *)PQgetvalue(res, i, 7);
      c.value_len = c.value_null ? 0 : (size_t)PQgetlength(res, i, 7);
    }
    c.cl = (uint32_t)strtoul(PQgetvalue(res, i, 8), NULL, 10);
    c.stamp.hlc = strtoull(PQgetvalue(res, i, 9), NULL, 10);
    c.stamp.region = (crdt_region)atoi(PQgetvalue(res, i, 10));
    int rc = crdt_delta_add(p->rows, &c);
    if (rc) {
      sp_log_error("change-log row refused", "{s:i,s:I,s:s}", "origin", c.origin, "seq",
                   (json_int_t)c.seq, "error", sp_strerror(rc));
      break; /* the rows before it still go; the session stops at the end */
    }
  }
  if (p->cli && !p->dead && repl_session_state(p->out) == REPL_STATE_ESTABLISHED)
    send_batch(p);
}

/* ---- sending a snapshot ------------------------------------------------------
 * A chunk is whole entities (key order) with all their fields, read after
 * the vector it carries (so the vector covers no change the rows lack): at
 * most SNAP_ENTITIES of them and SNAP_MAX_BYTES of encoded changes, so a
 * body stays within the batch bound and far from REPL_MAX_MESSAGE and the
 * HTTP/2 body limit whatever the fields hold.  An entity larger than that
 * on its own is split at its fields over as many chunks as it needs (every
 * change fits: values are at most CRDT_MAX_VALUE), so no entity can wedge
 * the snapshot; a row no peer would decode (a name or value over crdt/'s
 * limits, written around sp_write) is left out with an error and a metric.
 * The cursor is where the chunk ended: after a whole entity its key,
 * "page\0type\0id" (names hold no NUL), inside a split one
 * "page\0type\0id\0field" (the last field sent; "" after the entity row).
 * The receiver only compares cursors as bytes. */

_Static_assert(SNAP_MAX_BYTES == 1040384, "SNAP_MAX_BYTES_S must spell SNAP_MAX_BYTES");

/* Row i of the chunk query (k, page, type, id, field, value, cl, hlc,
 * region, origin, seq, complete) as a change borrowing from res. */
static void snap_change(const PGresult *res, int i, crdt_change *c) {
  memset(c, 0, sizeof *c);
  c->kind = atoi(PQgetvalue(res, i, 0)) == 1 ? CRDT_FIELD : CRDT_EXIST;
  c->page = PQgetvalue(res, i, 1);
  c->type = PQgetvalue(res, i, 2);
  c->id = PQgetvalue(res, i, 3);
  if (c->kind == CRDT_FIELD) {
    c->field = PQgetvalue(res, i, 4);
    c->value_null = PQgetisnull(res, i, 5);
    c->value = c->value_null ? NULL : (const uint8_t *)PQgetvalue(res, i, 5);
    c->value_len = c->value_null ? 0 : (size_t)PQgetlength(res, i, 5);
  }
  c->cl = (uint32_t)strtoul(PQgetvalue(res, i, 6), NULL, 10);
  c->stamp.hlc = strtoull(PQgetvalue(res, i, 7), NULL, 10);
  c->stamp.region = (crdt_region)atoi(PQgetvalue(res, i, 8));
  c->origin = (crdt_region)atoi(PQgetvalue(res, i, 9));
  c->seq = strtoull(PQgetvalue(res, i, 10), NULL, 10);
}

static int snap_same_entity(const PGresult *res, int i, int j) {
  for (int col = 1; col <= 3; col++)
    if (strcmp(PQgetvalue(res, i, col), PQgetvalue(res, j, col)) != 0)
      return 0;
  return 1;
}

/* The cursor after row i into out[REPL_MAX_CURSOR]: the entity's key when
 * i is its last row (the query returns whole entities), else the key and
 * the field.  0, or SP_ERR_TOOBIG for a key too long to be a cursor. */
static int snap_cursor(const PGresult *res, int i, uint8_t *out, size_t *len) {
  int whole = i + 1 == PQntuples(res) || !snap_same_entity(res, i, i + 1);
  size_t n = 0;
  for (int col = 1; col <= (whole ? 3 : 4); col++) {
    const char *v = col == 4 && PQgetisnull(res, i, 4) ? "" : PQgetvalue(res, i, col);
    size_t l = strlen(v);
    if (n + (col > 1) + l > REPL_MAX_CURSOR)
      return SP_ERR_TOOBIG;
    if (col > 1)
      out[n++] = '\0';
    memcpy(out + n, v, l);
    n += l;
  }
  *len = n;
  return 0;
}

static void on_snap_rows(int status, const PGresult *res, void *arg) {
  peer *p = arg;
  p->loading = 0;
  if (status) {
    sp_log_warn("cannot read the snapshot", "{s:s,s:s}", "error", sp_strerror(status), "db",
                sp_pg_error_message(res));
    return;
  }
  if (p->cli == NULL || p->dead || repl_session_state(p->out) != REPL_STATE_ESTABLISHED)
    return;
  crdt_delta_clear(p->rows);
  int n = PQntuples(res), entities = 0, rows = 0, cut = 0, rc = 0;
  /* the query stopped for no bound: nothing after its last entity */
  int complete = n == 0 || PQgetvalue(res, 0, 11)[0] == 't';
  size_t bytes = 0;
  uint8_t next[REPL_MAX_CURSOR];
  size_t next_len = 0;
  for (int i = 0; rc == 0 && i < n; i++) {
    crdt_change c;
    snap_change(res, i, &c);
    size_t size = repl_msg_change_size(&c);
    if (c.kind == CRDT_EXIST) {
      size_t esize = size;
      for (int j = i + 1; j < n && atoi(PQgetvalue(res, j, 0)) == 1 && snap_same_entity(res, i, j);
           j++) {
        crdt_change f;
        snap_change(res, j, &f);
        esize += repl_msg_change_size(&f);
      }
      if (esize <= SNAP_MAX_BYTES && rows > 0 && bytes + esize > SNAP_MAX_BYTES) {
        cut = 1; /* whole in the next chunk */
        break;
      }
      if (esize > SNAP_MAX_BYTES) {
        p->snap_split++;
        sp_log_warn("snapshot entity larger than a chunk: split over several",
                    "{s:s,s:s,s:s,s:s,s:I}", "peer", p->r->name, "page", c.page, "type", c.type,
                    "id", c.id, "bytes", (json_int_t)esize);
      }
      entities++;
    }
    if (rows > 0 && bytes + size > SNAP_MAX_BYTES) {
      cut = 1; /* inside a split entity */
      break;
    }
    int arc = crdt_delta_add(p->rows, &c);
    if (arc == SP_ERR_NOMEM) {
      rc = arc;
      break;
    }
    if (arc) {
      p->snap_skipped++;
      sp_log_error("snapshot row left out: no peer would decode it", "{s:s,s:s,s:s,s:s,s:s,s:s}",
                   "peer", p->r->name, "page", c.page, "type", c.type, "id", c.id, "field",
                   c.field ? c.field : "", "error", sp_strerror(arc));
    } else {
      bytes += size;
      rows++;
    }
    rc = snap_cursor(res, i, next, &next_len);
  }
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  int last = complete && !cut;
  if (rc == 0)
    rc = repl_session_snapshot_chunk(p->out, p->rows, next, next_len, last, &p->snap_vector,
                                     now_ms(), &out);
  if (rc == 0) {
    if (post(p, "/repl/v1/snapshot", &out, on_ack) == 0) {
      p->snap_chunks++;
      if (out.len > p->snap_max_bytes)
        p->snap_max_bytes = out.len;
      sp_log_info("snapshot chunk sent", "{s:s,s:i,s:i,s:I,s:b,s:I}", "peer", p->r->name,
                  "entities", entities, "changes", rows, "bytes", (json_int_t)out.len, "last",
                  last, "chunks", (json_int_t)p->snap_chunks);
    }
  } else if (rc != SP_ERR_AGAIN) {
    sp_log_error("cannot build a snapshot chunk", "{s:s,s:s}", "peer", p->r->name, "error",
                 sp_strerror(rc));
    peer_fail(p, "snapshot chunk");
  }
  sp_buf_release(&out);
}

/* The chunk query.  $1..$3: the cursor's key ("" sorts before every key);
 * $4: its field, or NULL after a whole entity.  Rows: the rest of a split
 * entity's fields (c), then whole entities (k) taken from the next
 * SNAP_ENTITIES while the bytes before them, estimated from the column
 * lengths (no detoasting), stay under SNAP_MAX_BYTES, so a chunk of large
 * entities does not load a hundred of them; on_snap_rows cuts exactly.
 * `complete`: no entity after these. */
#define SNAP_ROW_BYTES(t) \
  "octet_length(" t "page_id) + octet_length(" t "type) + octet_length(" t "id) + 48"
static const char snap_query[] =
    "WITH c AS (SELECT 1 AS k, page_id, type, id, field, value, cl, hlc, region, origin, seq "
    "FROM sp_field WHERE $4::text IS NOT NULL AND (page_id, type, id) = ($1, $2, $3) "
    "AND field > $4), "
    "e AS (SELECT page_id, type, id, cl, hlc, region, origin, seq FROM sp_entity "
    "WHERE (page_id, type, id) > ($1, $2, $3) "
    "ORDER BY page_id, type, id LIMIT " SNAP_ENTITIES_S "), "
    "s AS (SELECT e.*, " SNAP_ROW_BYTES("e.") " + coalesce((SELECT sum(" SNAP_ROW_BYTES("f.")
    " + octet_length(f.field) + coalesce(octet_length(f.value), 0)) FROM sp_field f "
    "WHERE (f.page_id, f.type, f.id) = (e.page_id, e.type, e.id)), 0) AS bytes FROM e), "
    "w AS (SELECT s.*, sum(bytes) OVER (ORDER BY page_id, type, id) - bytes + "
    "(SELECT coalesce(sum(" SNAP_ROW_BYTES("") " + octet_length(field) + "
    "coalesce(octet_length(value), 0)), 0) FROM c) AS before FROM s), "
    "k AS (SELECT * FROM w WHERE before < " SNAP_MAX_BYTES_S "), "
    "r AS (SELECT * FROM c UNION ALL "
    "SELECT 2, page_id, type, id, NULL, NULL, cl, hlc, region, origin, seq FROM k UNION ALL "
    "SELECT 1, f.page_id, f.type, f.id, f.field, f.value, f.cl, f.hlc, f.region, f.origin, f.seq "
    "FROM sp_field f JOIN k USING (page_id, type, id)) "
    "SELECT r.*, (SELECT count(*) FROM k) = (SELECT count(*) FROM e) AND "
    "(SELECT count(*) FROM e) < " SNAP_ENTITIES_S " AS complete "
    "FROM r ORDER BY 2, 3, 4, 1 DESC, 5";
#undef SNAP_ROW_BYTES

static void on_snap_vector(int status, const PGresult *res, void *arg) {
  peer *p = arg;
  const uint8_t *cur;
  size_t len;
  if (status || p->cli == NULL || p->dead ||
      repl_session_snapshot_cursor(p->out, &cur, &len) != 0) {
    p->loading = 0;
    return;
  }
  vector_from(res, &p->snap_vector);
  /* "page\0type\0id[\0field]" -> four parameters (the field NULL when
   * absent); "" sorts before every key */
  char key[4][REPL_MAX_CURSOR + 1] = {"", "", "", ""};
  size_t part = 0, n = 0;
  for (size_t i = 0; i < len && part < 4; i++) {
    if (cur[i] == '\0') {
      key[part++][n] = '\0';
      n = 0;
    } else {
      key[part][n++] = (char)cur[i];
    }
  }
  if (part < 4)
    key[part][n] = '\0';
  const char *vals[] = {key[0], key[1], key[2], part >= 3 ? key[3] : NULL};
  if (sp_pg_query(g.pg, snap_query, 4, vals, on_snap_rows, p))
    p->loading = 0;
}

/* In snapshot mode: reads our vector, then the next chunk's rows. */
static void snapshot_read(peer *p) {
  const uint8_t *cur;
  size_t len;
  if (repl_session_snapshot_cursor(p->out, &cur, &len) != 0)
    return; /* a chunk is in flight */
  if (len == 0 && !p->snap_logged) {
    p->snap_logged = 1;
    sp_log_info("serving a snapshot", "{s:s}", "peer", p->r->name);
  }
  if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_vclock", 0, NULL, on_snap_vector, p) == 0)
    p->loading = 1;
}

/* Drives one peer: connect, handshake, batches. */
static void peer_pump(peer *p) {
  uint64_t now = now_ms();
  if (g.stopping || p->cli == NULL || p->dead || !p->connected || !g.have_vector ||
      !g.have_floor)
    return;
  repl_state st = repl_session_state(p->out);
  if (st == REPL_STATE_FAILED) {
    peer_fail(p, repl_session_reason(p->out));
    return;
  }
  if (st == REPL_STATE_NEW) {
    sp_buf out;
    sp_buf_init(&out, REPL_MAX_MESSAGE);
    if (repl_session_hello(p->out, &g.applied, &out) == 0)
      post(p, "/repl/v1/handshake", &out, on_hello_reply);
    sp_buf_release(&out);
    return;
  }
  if (st != REPL_STATE_ESTABLISHED || p->loading)
    return;
  if (!repl_session_in_snapshot(p->out))
    p->snap_logged = 0;
  repl_want w = repl_session_want_send(p->out, now);
  if (w == REPL_WANT_RESEND) {
    send_batch(p); /* same bytes: no rows needed */
  } else if (w == REPL_WANT_BATCH) {
    /* our origin and every relayed one, each after what the peer acked */
    char origins[8 * CRDT_MAX_REGIONS + 4], after[24 * CRDT_MAX_REGIONS + 4];
    size_t no = 0, na = 0;
    const crdt_vclock *acked = repl_session_acked(p->out);
    uint64_t mask = p->relay_mask | (uint64_t)1 << g.id;
    for (int o = 0; o < CRDT_MAX_REGIONS; o++)
      if (mask >> o & 1) {
        no += (size_t)snprintf(origins + no, sizeof origins - no, "%s%d", no ? "," : "{", o);
        na += (size_t)snprintf(after + na, sizeof after - na, "%s%" PRIu64, na ? "," : "{",
                               acked->seq[o]);
      }
    snprintf(origins + no, sizeof origins - no, "}");
    snprintf(after + na, sizeof after - na, "}");
    const char *vals[] = {origins, after};
    int rc = sp_pg_query(g.pg,
                         "SELECT l.origin, l.seq, kind, page_id, type, id, field, value, cl, hlc, "
                         "region FROM sp_change_log l "
                         "JOIN unnest($1::smallint[], $2::bigint[]) AS a(o, s) "
                         "ON l.origin = a.o AND l.seq > a.s "
                         "ORDER BY l.origin, l.seq LIMIT " LOAD_LIMIT,
                         2, vals, on_rows, p);
    if (rc == 0)
      p->loading = 1;
  } else if (w == REPL_WANT_SNAPSHOT) {
    snapshot_read(p);
  }
}

static void on_client_state(sp_h2_client *cli, sp_h2_state state, int err, const char *reason,
                            void *arg) {
  peer *p = arg;
  if (cli != p->cli)
    return;
  if (state == SP_H2_CONNECTED) {
    p->connected = 1;
    p->last_contact_ms = now_ms();
    peer_pump(p);
  } else {
    p->connected = 0;
    if (!g.stopping)
      peer_fail(p, err ? reason : "closed");
  }
}

/* Closes a dead peer's client and schedules the next attempt; opens a new
 * client when the time has come. */
static void peer_connect(peer *p, uint64_t now) {
  if (p->cli && p->dead) {
    sp_h2_client_close(p->cli, NULL, NULL);
    p->cli = NULL;
    p->connected = 0;
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (p->backoff_ms > BACKOFF_MAX_MS)
      p->backoff_ms = BACKOFF_MAX_MS;
    /* jitter: 50..150% so regions restarted together do not dial in step */
    p->next_attempt_ms = now + p->backoff_ms / 2 + (uint64_t)rand() % (p->backoff_ms + 1);
  }
  if (p->cli || now < p->next_attempt_ms)
    return;
  p->dead = 0;
  repl_session_reset(p->out);
  int rc = sp_h2_client_new(&g.loop, g.tls_cli, NULL, p->r->address, p->r->replication.port,
                            p->r->name, on_client_state, p, &p->cli);
  if (rc) {
    sp_log_error("cannot create a client", "{s:s,s:s}", "peer", p->r->name, "error",
                 sp_strerror(rc));
    p->cli = NULL;
    p->next_attempt_ms = now + BACKOFF_MAX_MS;
    return;
  }
  p->reconnects++;
}

/* ---- receiving --------------------------------------------------------- */

static void respond_text(sp_h2_stream *st, int status, const char *text) {
  sp_h2_header h = {"content-type", "text/plain"};
  sp_h2_respond(st, status, &h, 1, text, strlen(text));
}

static void respond_buf(sp_h2_stream *st, const sp_buf *b) {
  sp_h2_header h = {"content-type", CT_PROTO};
  sp_h2_respond(st, 200, &h, 1, b->base, b->len);
}

static void job_free(apply_job *j) {
  repl_apply_release(&j->a);
  repl_msg_release(&j->m);
  sp_free(j);
}

static void run_jobs(void);

static void job_ack(apply_job *j, const crdt_vclock *now_vector) {
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  int rc = repl_session_ack(j->p->in, &j->a, now_vector, now_ms(), &out);
  if (rc)
    respond_text(j->st, 500, sp_strerror(rc));
  else
    respond_buf(j->st, &out);
  sp_buf_release(&out);
  j->p->last_contact_ms = now_ms();
  g.jobs = j->next;
  if (g.jobs == NULL)
    g.jobs_tail = &g.jobs;
  job_free(j);
  g.applying = 0;
  run_jobs();
}

static void job_fail(apply_job *j, int status, const char *why) {
  respond_text(j->st, status, why);
  g.jobs = j->next;
  if (g.jobs == NULL)
    g.jobs_tail = &g.jobs;
  job_free(j);
  g.applying = 0;
  run_jobs();
}

/* Tells statusd-api that p's acknowledged vector v is committed in
 * sp_peer_ack, which releases the durable writes it covers
 * (api/api_durable.c); best effort: the API also re-reads sp_peer_ack while
 * writes wait. */
static void publish_ack(const peer *p, const crdt_vclock *v) {
  char msg[2 * REPL_MAX_ID + 64];
  int n = snprintf(msg, sizeof msg, "{\"peer\":\"%s\",\"origin\":%d,\"seq\":%" PRIu64 "}",
                   p->r->name, (int)g.id, v->seq[g.id]);
  if (g.redis && !g.stopping && n > 0 && (size_t)n < sizeof msg)
    sp_redis_publish(g.redis, g.acks_channel, msg, (size_t)n, NULL, NULL);
}

/* Publishes the changes of a committed apply (see the top). */
static void publish(const repl_apply *a) {
  crdt_delta *d;
  if (g.redis == NULL || crdt_delta_new(repl_crdt_allocator(), &d))
    return;
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < a->count; i++)
    rc = crdt_delta_add(d, a->changes[i]);
  uint8_t *enc;
  size_t len;
  if (rc == 0 && crdt_delta_encode(d, &enc, &len) == 0) {
    if (sp_redis_publish(g.redis, g.channel, enc, len, NULL, NULL) == 0)
      g.published++;
    crdt_free_bytes(repl_crdt_allocator(), enc);
  }
  crdt_delta_free(d);
}

static void on_applied(int status, const PGresult *res, void *arg) {
  apply_job *j = arg;
  if (status) {
    sp_log_error("apply failed", "{s:s,s:s,s:s}", "peer", j->p->r->name, "error",
                 sp_strerror(status), "db", sp_pg_error_message(res));
    job_fail(j, 503, "apply failed");
    return;
  }
  /* sp_apply_*_vector: (applied, origin, seq) rows, the vector as committed */
  long n = PQntuples(res) > 0 ? atol(PQgetvalue(res, 0, 0)) : 0;
  vector_raise(res, 1, &g.applied);
  g.have_vector = 1;
  j->p->applied += (uint64_t)n;
  repl_metrics_applied(g.metrics, (size_t)(j->p - g.peers), (uint64_t)n,
                       (double)(uv_hrtime() - j->apply_ns) / 1e9);
  g.applied_total += (uint64_t)n;
  if (n > 0)
    publish(&j->a);
  /* the peer's acks went in with the data; a persist of its own still in
   * flight will set `persisted` itself (the next tick re-persists if the
   * two disagree) */
  if (j->with_ack && !j->p->persisting) {
    j->p->persisted = j->ack;
    j->p->have_persisted = 1;
    publish_ack(j->p, &j->ack);
  }
  job_ack(j, &g.applied);
}

/* The changes as sp_apply_remote's JSON; NULL on failure. */
static char *changes_json(const repl_apply *a) {
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < a->count; i++) {
    const crdt_change *c = a->changes[i];
    json_t *o = json_pack("{s:i,s:s,s:s,s:s,s:I,s:I,s:i,s:i,s:I}", "k", (int)c->kind, "p", c->page,
                          "t", c->type, "i", c->id, "cl", (json_int_t)c->cl, "hlc",
                          (json_int_t)c->stamp.hlc, "region", (int)c->stamp.region, "origin",
                          (int)c->origin, "seq", (json_int_t)c->seq);
    if (o && c->kind == CRDT_FIELD) {
      json_object_set_new(o, "f", json_string(c->field));
      json_object_set_new(
          o, "v", c->value_null ? json_null() : json_stringn((const char *)c->value, c->value_len));
      if (json_object_get(o, "v") == NULL || json_object_get(o, "f") == NULL) {
        json_decref(o);
        o = NULL;
      }
    }
    if (o == NULL || json_array_append_new(arr, o)) {
      json_decref(arr);
      return NULL;
    }
  }
  char *s = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
  json_decref(arr);
  return s;
}

/* Decides what of j is new against g.applied and applies that. */
static void start_apply(apply_job *j) {
  int chunk = j->m.type == REPL_MSG_SNAPSHOT_CHUNK;
  int rc = chunk ? repl_session_on_snapshot_chunk(j->p->in, &j->m, &g.applied, now_ms(), &j->a)
                 : repl_session_on_batch(j->p->in, &j->m, &g.applied, now_ms(), &j->a);
  if (rc) {
    job_fail(j, rc == SP_ERR_AGAIN ? 409 : 400,
             rc == SP_ERR_AGAIN ? "no handshake" : "not a batch");
    return;
  }
  if (j->a.status == REPL_SKEW_REJECT)
    sp_log_warn("batch refused: clock skew", "{s:s,s:s}", "peer", j->p->r->name, "reason",
                j->a.reason);
  /* the last chunk of a snapshot carries the vector to adopt, even empty */
  int adopt = chunk && j->a.status == REPL_OK && j->a.last;
  if (j->a.count == 0 && !adopt) {
    job_ack(j, NULL);
    return;
  }
  char *json = changes_json(&j->a);
  if (json == NULL) {
    job_fail(j, 400, "changes not representable as JSON");
    return;
  }
  char local[8], vec[32 * CRDT_MAX_REGIONS + 4];
  snprintf(local, sizeof local, "%d", (int)g.id);
  size_t nv = 0;
  for (int o = 0; adopt && o < CRDT_MAX_REGIONS; o++)
    if (j->a.applied.seq[o])
      nv += (size_t)snprintf(vec + nv, sizeof vec - nv, "%s\"%d\":%" PRIu64, nv ? "," : "{", o,
                             j->a.applied.seq[o]);
  snprintf(vec + nv, sizeof vec - nv, "%s}", nv ? "" : "{");
  const char *vals[] = {json, local, adopt ? vec : NULL};
  j->apply_ns = uv_hrtime();
  if (chunk) {
    g.snapshot_chunks_in++;
    if (adopt)
      sp_log_info("snapshot adopted", "{s:s,s:s}", "peer", j->p->r->name, "vector", vec);
    rc = sp_pg_query(g.pg,
                     "SELECT applied, origin, seq "
                     "FROM sp_apply_snapshot_vector($1::jsonb, $2::smallint, $3::jsonb)",
                     3, vals, on_applied, j);
  } else {
    /* the peer's acknowledged vector rides along when it changed */
    char peer_id[8], origins[8 * CRDT_MAX_REGIONS + 4], seqs[24 * CRDT_MAX_REGIONS + 4];
    const crdt_vclock *acked = repl_session_acked(j->p->out);
    j->with_ack = repl_session_state(j->p->out) == REPL_STATE_ESTABLISHED &&
                  !(j->p->have_persisted && memcmp(acked, &j->p->persisted, sizeof *acked) == 0);
    if (j->with_ack) {
      j->ack = *acked;
      snprintf(peer_id, sizeof peer_id, "%d", (int)j->p->r->index);
      vector_arrays(&j->ack, origins, sizeof origins, seqs, sizeof seqs);
    }
    const char *avals[] = {json, local, j->with_ack ? peer_id : NULL,
                           j->with_ack ? origins : NULL, j->with_ack ? seqs : NULL};
    rc = sp_pg_query(g.pg,
                     "SELECT applied, origin, seq FROM sp_apply_remote_vector($1::jsonb, "
                     "$2::smallint, $3::smallint, $4::smallint[], $5::bigint[])",
                     5, avals, on_applied, j);
  }
  free(json);
  if (rc)
    job_fail(j, 503, "database unavailable");
}

static void on_vector_before(int status, const PGresult *res, void *arg) {
  apply_job *j = arg;
  if (status) {
    job_fail(j, 503, "cannot read the vector");
    return;
  }
  vector_raise(res, 0, &g.applied);
  g.have_vector = 1;
  start_apply(j);
}

/* Applies are serialised (see the top).  Only this process moves other
 * origins' entries of sp_vclock, and every apply returns the vector it
 * committed, so g.applied is current for them and the vector is read first
 * only before the first apply. */
static void run_jobs(void) {
  if (g.applying || g.jobs == NULL)
    return;
  apply_job *j = g.jobs;
  g.applying = 1;
  if (g.have_vector)
    start_apply(j);
  else if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_vclock", 0, NULL, on_vector_before, j))
    job_fail(j, 503, "database unavailable");
}

static void on_batch_request(sp_h2_stream *st, peer *p, const sp_iov body) {
  apply_job *j = sp_calloc(1, sizeof *j);
  if (j == NULL) {
    respond_text(st, 503, "out of memory");
    return;
  }
  int rc = repl_msg_decode((const uint8_t *)body.base, body.len, &j->m);
  /* a snapshot chunk re-sent on timeout goes out as the same bytes through
   * the batch path, so either path takes either message */
  if (rc || (j->m.type != REPL_MSG_BATCH && j->m.type != REPL_MSG_SNAPSHOT_CHUNK)) {
    g.bad_requests++;
    sp_log_warn("bad batch", "{s:s,s:s}", "peer", p->r->name, "error",
                rc ? sp_strerror(rc) : "not a batch");
    respond_text(st, rc == SP_ERR_TOOBIG ? 413 : 400, rc ? sp_strerror(rc) : "not a batch");
    if (rc == 0)
      repl_msg_release(&j->m);
    sp_free(j);
    return;
  }
  g.batches_in++;
  j->st = st;
  j->p = p;
  *g.jobs_tail = j;
  g.jobs_tail = &j->next;
  run_jobs();
}

static void on_handshake_request(sp_h2_stream *st, peer *p, const sp_iov body) {
  repl_msg m;
  int rc = repl_msg_decode((const uint8_t *)body.base, body.len, &m);
  if (rc || m.type != REPL_MSG_HANDSHAKE) {
    g.bad_requests++;
    sp_log_warn("bad handshake", "{s:s,s:s}", "peer", p->r->name, "error",
                rc ? sp_strerror(rc) : "not a handshake");
    respond_text(st, rc == SP_ERR_TOOBIG ? 413 : 400, rc ? sp_strerror(rc) : "not a handshake");
    if (rc == 0)
      repl_msg_release(&m);
    return;
  }
  if (!g.have_vector) {
    repl_msg_release(&m);
    respond_text(st, 503, "not ready");
    return;
  }
  /* A new handshake is a new connection, negotiated on a fresh session: a
   * refused one (a stale or misconfigured client presenting this peer's
   * certificate) must not break the session the peer's live connection
   * uses.  Only an accepted handshake replaces it. */
  repl_session *fresh;
  if ((rc = repl_session_new(&p->cfg, &fresh))) {
    repl_msg_release(&m);
    respond_text(st, 500, sp_strerror(rc));
    return;
  }
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  rc = repl_session_on_handshake(fresh, &m, &g.applied, &out);
  repl_msg_release(&m);
  if (rc == 0 || rc == SP_ERR_PROTO) {
    if (rc)
      sp_log_warn("handshake refused", "{s:s,s:s}", "peer", p->r->name, "reason",
                  repl_session_reason(fresh));
    respond_buf(st, &out);
  } else {
    respond_text(st, 500, sp_strerror(rc));
  }
  sp_buf_release(&out);
  if (rc == 0) {
    repl_stats old;
    repl_session_stats(p->in, &old);
    repl_metrics_stats_add(&p->in_done, &old); /* its totals outlive it */
    repl_session_free(p->in);
    p->in = fresh;
  } else {
    repl_session_free(fresh);
  }
  p->last_contact_ms = now_ms();
}

/* GET /metrics: the daemon's tallies as repl_metrics samples, rendered by
 * the shared registry. */
static void on_metrics(sp_h2_stream *st) {
  repl_metrics_peer *ps = sp_calloc(g.npeers ? g.npeers : 1, sizeof *ps);
  uint64_t floor[CRDT_MAX_REGIONS];
  if (ps == NULL) {
    respond_text(st, 503, "out of memory\n");
    return;
  }
  for (size_t i = 0; i < g.npeers; i++) {
    const peer *p = &g.peers[i];
    repl_metrics_peer *s = &ps[i];
    repl_session_stats(p->out, &s->out);
    s->in = p->in_done;
    repl_stats now_in;
    repl_session_stats(p->in, &now_in);
    repl_metrics_stats_add(&s->in, &now_in);
    s->sent_bytes = p->sent_bytes;
    s->received_bytes = p->received_bytes;
    s->applied = p->applied;
    s->reconnects = p->reconnects;
    s->relayed = p->relayed;
    s->relay_switches = p->relay_switches;
    s->lag_ms = p->lag_ms;
    s->last_contact_ms = p->last_contact_ms;
    s->connected = repl_session_state(p->out) == REPL_STATE_ESTABLISHED;
    s->relay_origins = (unsigned)__builtin_popcountll(p->relay_mask);
    s->give_ups = p->give_ups;
    s->given_up = p->given_up;
    s->snapshot_chunk_max_bytes = p->snap_max_bytes;
    s->snapshot_splits = p->snap_split;
    s->snapshot_rows_skipped = p->snap_skipped;
  }
  for (size_t i = 0; i < g.topo->nregions && i < CRDT_MAX_REGIONS; i++)
    floor[i] = g.floor.seq[g.topo->regions[i].index % CRDT_MAX_REGIONS];
  repl_metrics_global gl = {.floor = floor,
                            .trimmed_rows = g.trimmed_rows,
                            .trim_runs = g.trim_runs,
                            .bad_requests = g.bad_requests,
                            .refused_peers = g.refused_peers,
                            .published = g.published,
                            .tombstones_collected = g.tombstones_collected,
                            .local_events = g.local_events};
  sp_buf b;
  sp_buf_init(&b, 1u << 20);
  if (repl_metrics_render(g.metrics, ps, g.npeers, &gl, &b)) {
    respond_text(st, 500, "cannot render metrics\n");
  } else {
    sp_h2_header h = {"content-type", SP_METRICS_CONTENT_TYPE};
    sp_h2_respond(st, 200, &h, 1, b.base, b.len);
  }
  sp_buf_release(&b);
  sp_free(ps);
}

static void on_request(sp_h2_stream *st, void *arg) {
  (void)arg;
  const char *method = sp_h2_stream_method(st), *path = sp_h2_stream_path(st);
  const char *who = sp_h2_stream_peer(st);
  int self = who && strcmp(who, g.self->name) == 0;
  peer *p = peer_by_name(who);
  if (strcmp(method, "GET") == 0 && (self || p)) {
    if (strcmp(path, "/health") == 0)
      respond_text(st, 200, "ok\n");
    else if (strcmp(path, "/ready") == 0)
      respond_text(st, g.have_vector && sp_pg_pool_is_up(g.pg) ? 200 : 503,
                   g.have_vector && sp_pg_pool_is_up(g.pg) ? "ready\n"
                                                           : "database not reachable\n");
    else if (strcmp(path, "/metrics") == 0)
      on_metrics(st);
    else
      respond_text(st, 404, "not found\n");
    return;
  }
  if (p == NULL) {
    g.refused_peers++;
    sp_log_warn("request from a region that is not a peer", "{s:s,s:s}", "peer", who ? who : "",
                "path", path);
    respond_text(st, 403, "not a peer\n");
    return;
  }
  p->received_bytes += sp_h2_stream_body(st).len;
  if (strcmp(method, "POST") != 0) {
    respond_text(st, 405, "method not allowed\n");
  } else if (strcmp(path, "/repl/v1/handshake") == 0) {
    on_handshake_request(st, p, sp_h2_stream_body(st));
  } else if (strcmp(path, "/repl/v1/batch") == 0 || strcmp(path, "/repl/v1/snapshot") == 0) {
    on_batch_request(st, p, sp_h2_stream_body(st));
  } else {
    respond_text(st, 404, "not found\n");
  }
}

/* ---- the tick: poll the vector, lag, drive peers ------------------------ */

/* A change event on the region's channel.  statusd-api publishes every
 * write's changes after its commit; this region's sequence numbers are
 * dense and issued in commit order (the clock row serialises the writers),
 * so a published change of our origin with seq s means every change up to
 * s is committed.  When the region is quiet (the previous event came
 * EVENT_GAP_MS or more before) the senders are told at once, so a write
 * leaves without waiting for the next sp_vclock poll ("sent as soon as they
 * commit when the peer is idle").  Under a stream of writes they are not:
 * new rows are learnt from the poll (g.poll_ms: the sync interval less a
 * tick, so no change waits longer than the sync interval), and the rows of
 * many commits go as one batch.  Waking the senders on every commit made about
 * one batch, hence one apply transaction and one WAL flush in each peer,
 * per commit: three regions on two cores then took ~450 writes/s of 1,000
 * offered instead of ~900 (bench/repl.sh); waking them when nothing was
 * sent for 20 ms still gave ~510.  Events of other origins (our own
 * applies' publications) are ignored. */
static void on_local_changes(const char *channel, const char *data, size_t len, void *arg) {
  (void)channel;
  (void)arg;
  crdt_delta *d;
  if (!g.have_vector || g.stopping || crdt_delta_new(repl_crdt_allocator(), &d))
    return;
  uint64_t top = 0;
  if (crdt_delta_decode(d, (const uint8_t *)data, len) == 0)
    for (size_t i = 0; i < crdt_delta_count(d); i++) {
      const crdt_change *c = crdt_delta_get(d, i);
      if (c->origin == g.id && c->seq > top)
        top = c->seq;
    }
  crdt_delta_free(d);
  if (top <= g.applied.seq[g.id])
    return;
  g.applied.seq[g.id] = top;
  uint64_t now = now_ms(), prev = g.last_event_ms;
  g.last_event_ms = now;
  if (now - prev < EVENT_GAP_MS)
    return;
  g.local_events++;
  for (size_t i = 0; i < g.npeers; i++) {
    repl_session_notify(g.peers[i].out, &g.applied);
    peer_pump(&g.peers[i]);
  }
}

static void on_poll(int status, const PGresult *res, void *arg) {
  (void)arg;
  g.polling = 0;
  if (status)
    return;
  vector_raise(res, 0, &g.applied);
  g.have_vector = 1;
  for (size_t i = 0; i < g.npeers; i++)
    repl_session_notify(g.peers[i].out, &g.applied);
}

static void on_lag(int status, const PGresult *res, void *arg) {
  peer *p = arg;
  p->lag_query = 0;
  if (status == 0 && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
    p->lag_ms = (uint64_t)atoll(PQgetvalue(res, 0, 0));
  else if (status == 0)
    p->lag_ms = 0;
}

static void update_lag(peer *p) {
  uint64_t acked = repl_session_acked(p->out)->seq[g.id];
  if (acked >= g.applied.seq[g.id]) {
    p->lag_ms = 0;
    return;
  }
  if (p->lag_query)
    return;
  char origin[8], seq[24];
  snprintf(origin, sizeof origin, "%d", (int)g.id);
  snprintf(seq, sizeof seq, "%" PRIu64, acked);
  const char *vals[] = {origin, seq};
  if (sp_pg_query(g.pg,
                  "SELECT floor(extract(epoch FROM clock_timestamp() - min(logged_at)) * 1000)"
                  "::bigint FROM sp_change_log WHERE origin = $1 AND seq > $2",
                  2, vals, on_lag, p) == 0)
    p->lag_query = 1;
}

/* What p has applied is learnt on both of its connections: acks on ours
 * (out) and the sender vector of its batches on its own (in); and p has, of
 * its own origin, at least all we have.  The out-session only hears acks,
 * so the rest is handed to it as an Ack for batch 0 (never a real batch
 * id), which the engine takes as "only teaches us the peer's vector"
 * (DESIGN.md, Acks) and which also moves its send cursor past rows p
 * already has.  Without it a region that has nothing to send a peer would
 * keep a stale view of it: pointless relays, and a log never trimmed. */
static void learn_peer_vector(peer *p) {
  if (repl_session_state(p->out) != REPL_STATE_ESTABLISHED || repl_session_in_snapshot(p->out))
    return;
  const crdt_vclock *acked = repl_session_acked(p->out);
  crdt_vclock known = *repl_session_acked(p->in);
  int o = (int)p->r->index;
  if (o >= 0 && o < CRDT_MAX_REGIONS && g.applied.seq[o] > known.seq[o])
    known.seq[o] = g.applied.seq[o];
  int newer = 0;
  for (int r = 0; r < CRDT_MAX_REGIONS && !newer; r++)
    newer = known.seq[r] > acked->seq[r];
  if (!newer)
    return;
  repl_msg m;
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_ACK;
  m.version = repl_session_version(p->out);
  m.u.ack.batch_id = 0;
  m.u.ack.status = REPL_OK;
  m.u.ack.applied = known;
  m.u.ack.wall_ms = now_ms();
  repl_session_on_ack(p->out, &m, now_ms());
}

/* Relay: rows of origin o (not ours, not the peer's) go to peer p while p
 * is behind us for o and either has been for RELAY_LAG_MS or o's own
 * daemon is unreachable from here (its fan-out may never finish).  Off
 * again once p has caught up, so the origin stays the one sender in the
 * healthy case. */
static void update_relay(peer *p, uint64_t now) {
  const crdt_vclock *acked = repl_session_acked(p->out);
  for (size_t i = 0; i < g.npeers; i++) {
    peer *q = &g.peers[i];
    int o = (int)q->r->index;
    if (q == p || o == g.id || o < 0 || o >= CRDT_MAX_REGIONS)
      continue;
    uint64_t bit = (uint64_t)1 << o;
    int on = (p->relay_mask & bit) != 0;
    if (g.applied.seq[o] <= acked->seq[o]) {
      p->behind_since[o] = 0;
      if (on && repl_session_set_relay(p->out, (crdt_region)o, 0) == 0) {
        p->relay_mask &= ~bit;
        sp_log_info("relay off", "{s:s,s:s}", "peer", p->r->name, "origin", q->r->name);
      }
      continue;
    }
    if (p->behind_since[o] == 0)
      p->behind_since[o] = now;
    int origin_down = repl_session_state(q->out) != REPL_STATE_ESTABLISHED;
    if (!on && (origin_down || now - p->behind_since[o] >= RELAY_LAG_MS) &&
        repl_session_set_relay(p->out, (crdt_region)o, 1) == 0) {
      p->relay_mask |= bit;
      p->relay_switches++;
      sp_log_info("relay on", "{s:s,s:s,s:I,s:I,s:b}", "peer", p->r->name, "origin", q->r->name,
                  "peer_has", (json_int_t)acked->seq[o], "we_have", (json_int_t)g.applied.seq[o],
                  "origin_down", origin_down);
    }
  }
}

/* ---- persisted acks and trimming ------------------------------------------ */

/* Writes "{a,b,...}" for the vector entries of every topology region. */
static void vector_arrays(const crdt_vclock *v, char *origins, size_t olen, char *seqs,
                          size_t slen) {
  size_t no = 0, ns = 0;
  for (size_t i = 0; i < g.topo->nregions; i++) {
    int o = (int)g.topo->regions[i].index;
    if (o < 0 || o >= CRDT_MAX_REGIONS)
      continue;
    no += (size_t)snprintf(origins + no, olen - no, "%s%d", no ? "," : "{", o);
    ns += (size_t)snprintf(seqs + ns, slen - ns, "%s%" PRIu64, ns ? "," : "{", v->seq[o]);
  }
  snprintf(origins + no, olen - no, "%s}", no ? "" : "{");
  snprintf(seqs + ns, slen - ns, "%s}", ns ? "" : "{");
}

typedef struct ack_write {
  peer *p;
  crdt_vclock v;
} ack_write;

static void on_ack_persisted(int status, const PGresult *res, void *arg) {
  ack_write *w = arg;
  w->p->persisting = 0;
  if (status)
    sp_log_warn("cannot persist a peer's acks", "{s:s,s:s,s:s}", "peer", w->p->r->name, "error",
                sp_strerror(status), "db", sp_pg_error_message(res));
  else {
    w->p->persisted = w->v;
    w->p->have_persisted = 1;
    publish_ack(w->p, &w->v);
  }
  sp_free(w);
}

/* Upserts p's acknowledged vector into sp_peer_ack when it changed.  The
 * value is replaced, not maxed: after a handshake the peer's real vector
 * may be lower (restored from a backup) and trimming must follow it. */
static void persist_acks(peer *p) {
  const crdt_vclock *acked = repl_session_acked(p->out);
  if (p->persisting || repl_session_state(p->out) != REPL_STATE_ESTABLISHED ||
      (p->have_persisted && memcmp(acked, &p->persisted, sizeof *acked) == 0))
    return;
  ack_write *w = sp_malloc(sizeof *w);
  if (w == NULL)
    return;
  w->p = p;
  w->v = *acked;
  char peer_id[8], origins[8 * CRDT_MAX_REGIONS + 4], seqs[24 * CRDT_MAX_REGIONS + 4];
  snprintf(peer_id, sizeof peer_id, "%d", (int)p->r->index);
  vector_arrays(&w->v, origins, sizeof origins, seqs, sizeof seqs);
  const char *vals[] = {peer_id, origins, seqs};
  if (sp_pg_query(g.pg,
                  /* without waiting for the WAL flush: an ack lost in a crash
                   * only trims less until the peer's next ack; the disk's
                   * flushes are for the applied data */
                  "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)) "
                  "INSERT INTO sp_peer_ack (peer, origin, seq) "
                  "SELECT $1::smallint, o, s FROM async, "
                  "unnest($2::smallint[], $3::bigint[]) AS a(o, s) "
                  "ON CONFLICT (peer, origin) DO UPDATE SET seq = EXCLUDED.seq",
                  3, vals, on_ack_persisted, w) == 0)
    p->persisting = 1;
  else
    sp_free(w);
}

static void on_floor(int status, const PGresult *res, void *arg) {
  (void)arg;
  g.trimming = 0;
  if (status) {
    sp_log_warn("cannot read the log floor", "{s:s,s:s}", "error", sp_strerror(status), "db",
                sp_pg_error_message(res));
    return;
  }
  crdt_vclock old = g.floor;
  vector_from(res, &g.floor);
  int had = g.have_floor;
  g.have_floor = 1;
  /* A snapshot we adopted raised the floor over rows that never were in
   * our log: a peer that lacks them and that we had nothing more to send
   * must be asked again, or it would wait for a write that may not come. */
  int rose = 0;
  for (int o = 0; had && o < CRDT_MAX_REGIONS; o++)
    rose |= g.floor.seq[o] > old.seq[o];
  for (size_t i = 0; rose && i < g.npeers; i++) {
    repl_session_floor_rose(g.peers[i].out);
    peer_pump(&g.peers[i]);
  }
}

/* Max retention cut rows of `origin` up to `floor` that the peers in
 * `ids` (a PostgreSQL smallint[] as text, "{1,2}") had not acknowledged:
 * they will need a snapshot.  Warned once per peer until it is back. */
static void give_up(const char *ids, long origin, uint64_t floor) {
  for (const char *s = ids; s && *s;) {
    char *end;
    long id = strtol(s + 1, &end, 10);
    if (end == s + 1)
      break; /* "{}" */
    s = end;
    for (size_t i = 0; i < g.npeers; i++) {
      peer *p = &g.peers[i];
      if ((long)p->r->index != id || p->given_up)
        continue;
      p->given_up = 1;
      p->give_ups++;
      sp_log_warn("giving up on a peer: trimmed changes it has not acknowledged; it will need "
                  "a snapshot",
                  "{s:s,s:i,s:I,s:I}", "peer", p->r->name, "origin", (int)origin, "floor",
                  (json_int_t)floor, "max_retention_ms", (json_int_t)g.max_retention_ms);
    }
    if (*s != ',')
      break;
  }
}

/* A peer given up on is back once it acknowledged every floor (after the
 * snapshot it was served). */
static void check_given_up(peer *p) {
  if (!p->given_up || repl_session_state(p->out) != REPL_STATE_ESTABLISHED ||
      repl_session_in_snapshot(p->out))
    return;
  const crdt_vclock *acked = repl_session_acked(p->out);
  for (int o = 0; o < CRDT_MAX_REGIONS; o++)
    if (acked->seq[o] < g.floor.seq[o])
      return;
  p->given_up = 0;
  sp_log_info("peer given up on is back: it acknowledged the log floor", "{s:s}", "peer",
              p->r->name);
}

static void on_trimmed(int status, const PGresult *res, void *arg) {
  (void)arg;
  if (status) {
    g.trimming = 0;
    sp_log_warn("cannot trim the change log", "{s:s,s:s}", "error", sp_strerror(status), "db",
                sp_pg_error_message(res));
    return;
  }
  g.trim_runs++;
  for (int i = 0; i < PQntuples(res); i++) {
    long o = atol(PQgetvalue(res, i, 0));
    uint64_t fl = strtoull(PQgetvalue(res, i, 1), NULL, 10);
    uint64_t n = strtoull(PQgetvalue(res, i, 2), NULL, 10);
    g.trimmed_rows += n;
    if (o >= 0 && o < CRDT_MAX_REGIONS && fl > g.floor.seq[o])
      g.floor.seq[o] = fl;
    int past_acks = !PQgetisnull(res, i, 3);
    sp_log_info("change log trimmed", "{s:i,s:I,s:I,s:b}", "origin", (int)o, "floor",
                (json_int_t)fl, "rows", (json_int_t)n, "past_acks", past_acks);
    if (past_acks && o >= 0 && o < CRDT_MAX_REGIONS)
      give_up(PQgetvalue(res, i, 3), o, fl);
  }
  /* re-read the floor too: an adopted snapshot raises it (sp_apply_snapshot) */
  if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_log_floor", 0, NULL, on_floor, NULL))
    g.trimming = 0;
}

/* Reads the floor once (at start), then trims every TRIM_MS.  The floor is
 * read before any batch is built (peer_pump waits for it) so a restarted
 * daemon never offers rows it no longer has. */
static void trim(uint64_t now) {
  if (g.trimming)
    return;
  if (!g.have_floor) {
    if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_log_floor", 0, NULL, on_floor, NULL) == 0)
      g.trimming = 1;
    return;
  }
  if (g.npeers == 0 || now - g.last_trim_ms < TRIM_MS)
    return;
  g.last_trim_ms = now;
  char peers[8 * CRDT_MAX_REGIONS + 4], ret[24];
  size_t n = 0;
  for (size_t i = 0; i < g.npeers; i++)
    n += (size_t)snprintf(peers + n, sizeof peers - n, "%s%d", n ? "," : "{",
                          (int)g.peers[i].r->index);
  snprintf(peers + n, sizeof peers - n, "}");
  snprintf(ret, sizeof ret, "%" PRIu64, g.retention_ms);
  /* max retention (lib/sql/0009) only once the peers have had time to
   * reconnect and tell us where they are: our acks may be stale at start */
  char max_ret[24];
  snprintf(max_ret, sizeof max_ret, "%" PRIu64, g.max_retention_ms);
  uint64_t grace = g.max_retention_ms < GIVE_UP_GRACE_MS ? g.max_retention_ms : GIVE_UP_GRACE_MS;
  const char *vals[] = {peers, ret, now - g.started_ms >= grace ? max_ret : NULL};
  if (sp_pg_query(g.pg,
                  "SELECT origin, floor, deleted, given_up "
                  "FROM sp_trim_log_max($1::smallint[], $2::bigint, $3::bigint)",
                  3, vals, on_trimmed, NULL) == 0)
    g.trimming = 1;
}

static void on_collected(int status, const PGresult *res, void *arg) {
  (void)arg;
  g.collecting = 0;
  if (status) {
    if (!g.stopping)
      sp_log_warn("cannot collect tombstones", "{s:s,s:s}", "error", sp_strerror(status),
                  "db", sp_pg_error_message(res));
    return;
  }
  uint64_t n = PQntuples(res) == 1 ? strtoull(PQgetvalue(res, 0, 0), NULL, 10) : 0;
  g.tombstones_collected += n;
  if (n)
    sp_log_info("tombstones collected", "{s:I}", "count", (json_int_t)n);
}

/* Every TRIM_MS, deletes the tombstones every region has acknowledged
 * together with the writes made before each saw the delete
 * (sp_gc_tombstones_local: our sp_vclock and the peers' sp_peer_ack; a
 * peer never heard from holds everything).  Region ids are topology
 * indexes, so the regions are 0..nregions-1. */
static void collect_tombstones(uint64_t now) {
  if (g.collecting || g.npeers == 0 || now - g.last_gc_ms < TRIM_MS)
    return;
  g.last_gc_ms = now;
  char local[8], nregions[8];
  snprintf(local, sizeof local, "%d", (int)g.id);
  snprintf(nregions, sizeof nregions, "%zu", g.topo->nregions);
  const char *vals[] = {local, nregions};
  if (sp_pg_query(g.pg, "SELECT sp_gc_tombstones_local($1::smallint, $2::integer)", 2, vals,
                  on_collected, NULL) == 0)
    g.collecting = 1;
}

static void on_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = now_ms();
  if (!g.polling && now - g.last_poll_ms >= g.poll_ms) {
    g.last_poll_ms = now;
    if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_vclock", 0, NULL, on_poll, NULL) == 0)
      g.polling = 1;
  }
  if (g.have_vector)
    trim(now);
  if (g.have_vector)
    collect_tombstones(now);
  int lag = now - g.last_lag_ms >= LAG_MS;
  if (lag)
    g.last_lag_ms = now;
  for (size_t i = 0; i < g.npeers; i++) {
    peer *p = &g.peers[i];
    peer_connect(p, now);
    if (g.have_vector) {
      learn_peer_vector(p);
      update_relay(p, now);
      check_given_up(p);
    }
    persist_acks(p);
    peer_pump(p);
    if (lag && g.have_vector)
      update_lag(p);
  }
}

/* ---- start and stop ------------------------------------------------------ */

static void on_closed(uv_handle_t *h) { (void)h; }

static void on_signal(uv_signal_t *s, int sig) {
  (void)s;
  if (g.stopping)
    return;
  sp_log_info("stopping", "{s:i}", "signal", sig);
  g.stopping = 1;
  uv_close((uv_handle_t *)&g.tick, on_closed);
  uv_close((uv_handle_t *)&g.sigterm, on_closed);
  uv_close((uv_handle_t *)&g.sigint, on_closed);
  for (size_t i = 0; i < g.npeers; i++)
    if (g.peers[i].cli) {
      sp_h2_client_close(g.peers[i].cli, NULL, NULL);
      g.peers[i].cli = NULL;
    }
  if (g.srv)
    sp_h2_server_close(g.srv, NULL, NULL);
  g.srv = NULL;
  /* after the server: answered requests may still be applying */
  sp_pg_pool_close(g.pg, NULL, NULL);
  sp_redis_close(g.redis, NULL, NULL);
}

static void usage(void) {
  fprintf(stderr,
          "usage: statusd-replicad --topology FILE --region NAME [--log-retention-ms MS]\n"
          "                        [--max-log-retention-ms MS]\n"
          "  --log-retention-ms: acknowledged change-log rows are kept this long\n"
          "    (default 3600000; also SP_REPL_LOG_RETENTION_MS)\n"
          "  --max-log-retention-ms: older rows are trimmed even when a peer has not\n"
          "    acknowledged them; that peer catches up by snapshot (default 86400000 or\n"
          "    the log retention if higher; must be >= it; also\n"
          "    SP_REPL_MAX_LOG_RETENTION_MS)\n");
}

/* A retention option: milliseconds, 0..10 years.  0, or -1 after printing
 * which option (or environment variable) `src` was bad. */
static int parse_ms(const char *what, const char *src, const char *text, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || *end || !(*text >= '0' && *text <= '9') || v > 10ull * 365 * 24 * 3600 * 1000) {
    fprintf(stderr, "statusd-replicad: bad %s \"%s\" (%s): milliseconds, 0..10 years\n", what,
            text, src);
    return -1;
  }
  *out = v;
  return 0;
}

static int setup_peers(void) {
  g.npeers = g.self->npeers;
  g.peers = sp_calloc(g.npeers ? g.npeers : 1, sizeof *g.peers);
  if (g.peers == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < g.npeers; i++) {
    peer *p = &g.peers[i];
    p->r = g.self->peers[i];
    repl_config cfg = {.cluster_id = g.topo->cluster,
                       .region_name = g.self->name,
                       .region_id = g.id,
                       .peer_name = p->r->name,
                       .peer_id = (crdt_region)p->r->index,
                       .max_changes = MAX_CHANGES,
                       .window = WINDOW,
                       .sync_interval_ms = g.topo->sync_interval_ms,
                       .max_skew_ms = g.topo->max_clock_skew_ms};
    p->cfg = cfg;
    int rc;
    if ((rc = repl_session_new(&cfg, &p->out)) || (rc = repl_session_new(&cfg, &p->in)) ||
        (rc = crdt_delta_new(repl_crdt_allocator(), &p->rows)))
      return rc;
  }
  return 0;
}

/* The registry, with a series for every peer and every topology region. */
static int metrics_init(void) {
  const char *peers[SP_TOPO_MAX_REGIONS], *origins[SP_TOPO_MAX_REGIONS];
  size_t np = 0, no = 0;
  for (size_t i = 0; i < g.npeers && np < SP_TOPO_MAX_REGIONS; i++)
    peers[np++] = g.peers[i].r->name;
  for (size_t i = 0; i < g.topo->nregions && no < SP_TOPO_MAX_REGIONS; i++)
    origins[no++] = g.topo->regions[i].name;
  if (np != g.npeers)
    return SP_ERR_INVAL;
  return repl_metrics_new(peers, np, origins, no, &g.metrics);
}

int main(int argc, char **argv) {
  const char *topo_path = NULL, *region = NULL;
  static const struct option opts[] = {{"topology", required_argument, NULL, 't'},
                                       {"region", required_argument, NULL, 'r'},
                                       {"log-retention-ms", required_argument, NULL, 'k'},
                                       {"max-log-retention-ms", required_argument, NULL, 'm'},
                                       {NULL, 0, NULL, 0}};
  /* statusctl starts the daemon with a fixed command line, so the
   * environment can set the retentions too (tests use 0) */
  const char *retention = getenv("SP_REPL_LOG_RETENTION_MS");
  const char *max_retention = getenv("SP_REPL_MAX_LOG_RETENTION_MS");
  const char *ret_src = "SP_REPL_LOG_RETENTION_MS", *max_src = "SP_REPL_MAX_LOG_RETENTION_MS";
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (ch == 't')
      topo_path = optarg;
    else if (ch == 'r')
      region = optarg;
    else if (ch == 'k')
      retention = optarg, ret_src = "--log-retention-ms";
    else if (ch == 'm')
      max_retention = optarg, max_src = "--max-log-retention-ms";
    else {
      usage();
      return 2;
    }
  }
  if (topo_path == NULL || region == NULL || optind != argc) {
    usage();
    return 2;
  }
  g.retention_ms = RETENTION_MS;
  if (retention && *retention &&
      parse_ms("log retention", ret_src, retention, &g.retention_ms))
    return 2;
  /* unset, the maximum never undercuts a longer retention asked for */
  g.max_retention_ms = g.retention_ms > MAX_RETENTION_MS ? g.retention_ms : MAX_RETENTION_MS;
  if (max_retention && *max_retention) {
    if (parse_ms("max log retention", max_src, max_retention, &g.max_retention_ms))
      return 2;
    if (g.max_retention_ms < g.retention_ms) {
      fprintf(stderr,
              "statusd-replicad: bad max log retention %" PRIu64 " (%s): must be >= the log "
              "retention, %" PRIu64 " (%s)\n",
              g.max_retention_ms, max_src, g.retention_ms,
              retention && *retention ? ret_src : "the default");
      return 2;
    }
  }
  char err[1024];
  if (sp_topo_load(topo_path, &g.topo, err, sizeof err)) {
    fprintf(stderr, "statusd-replicad: %s\n", err);
    return 2;
  }
  g.self = sp_topo_region_find(g.topo, region);
  g.poll_ms = g.topo->sync_interval_ms > 2 * TICK_MS ? g.topo->sync_interval_ms - TICK_MS : TICK_MS;
  if (g.self == NULL) {
    fprintf(stderr, "statusd-replicad: %s: no region called %s\n", topo_path, region);
    sp_topo_free(g.topo);
    return 2;
  }
  if (g.topo->tls_ca_cert == NULL) {
    fprintf(stderr, "statusd-replicad: %s: replication needs the tls block\n", topo_path);
    sp_topo_free(g.topo);
    return 2;
  }
  sp_log_init("statusd-replicad", g.self->name, g.topo->log_level_name);
  g.id = (crdt_region)g.self->index;
  g.jobs_tail = &g.jobs;
  g.started_ms = now_ms();
  srand((unsigned)(now_ms() ^ (uint64_t)getpid()));
  int rc = 1;
  if (sp_tls_ctx_new_server(g.topo->tls_ca_cert, g.self->tls_cert, g.self->tls_key, "h2", err,
                            sizeof err, &g.tls_srv) ||
      sp_tls_ctx_new_client(g.topo->tls_ca_cert, g.self->tls_cert, g.self->tls_key, "h2", err,
                            sizeof err, &g.tls_cli)) {
    sp_log_error("tls configuration", "{s:s}", "error", err);
    goto fail_tls;
  }
  if (uv_loop_init(&g.loop))
    goto fail_tls;
  char ci[1024];
  snprintf(ci, sizeof ci,
           "host=%s port=%d dbname=%s user=%s connect_timeout=5 application_name=statusd-replicad",
           g.self->postgres.host, g.self->postgres.port, g.self->postgres.dbname,
           g.self->postgres.user);
  sp_pg_opts po = {.conninfo = ci, .size = 3};
  int e;
  if ((e = sp_pg_pool_new(&g.loop, &po, &g.pg))) {
    sp_log_error("database pool", "{s:s}", "error", sp_strerror(e));
    goto fail_loop;
  }
  sp_redis_opts ro = {.host = g.self->redis.host, .port = g.self->redis.port};
  if ((e = sp_redis_new(&g.loop, &ro, &g.redis))) {
    sp_log_error("redis client", "{s:s}", "error", sp_strerror(e));
    goto fail_srv;
  }
  snprintf(g.channel, sizeof g.channel, "sp:%s:%s:changes", g.topo->cluster, g.self->name);
  snprintf(g.acks_channel, sizeof g.acks_channel, "sp:%s:%s:acks", g.topo->cluster,
           g.self->name);
  if ((e = sp_redis_subscribe(g.redis, g.channel, on_local_changes, NULL))) {
    sp_log_error("cannot subscribe to the change events", "{s:s}", "error", sp_strerror(e));
    goto fail_srv;
  }
  if ((e = setup_peers())) {
    sp_log_error("sessions", "{s:s}", "error", sp_strerror(e));
    goto fail_srv;
  }
  if ((e = metrics_init())) {
    sp_log_error("cannot register metrics", "{s:s}", "error", sp_strerror(e));
    goto fail_srv;
  }
  if ((e = sp_h2_server_new(&g.loop, g.tls_srv, NULL, on_request, NULL, &g.srv)) ||
      (e = sp_h2_server_listen(g.srv, g.self->address, g.self->replication.port))) {
    sp_log_error("cannot listen", "{s:s,s:i,s:s}", "address", g.self->address, "port",
                 g.self->replication.port, "error", sp_strerror(e));
    goto fail_srv;
  }
  uv_timer_init(&g.loop, &g.tick);
  uv_timer_start(&g.tick, on_tick, 0, TICK_MS);
  uv_signal_init(&g.loop, &g.sigterm);
  uv_signal_start(&g.sigterm, on_signal, SIGTERM);
  uv_signal_init(&g.loop, &g.sigint);
  uv_signal_start(&g.sigint, on_signal, SIGINT);
  sp_log_info("listening", "{s:s,s:i,s:i}", "address", g.self->address, "port",
              g.self->replication.port, "peers", (int)g.npeers);
  uv_run(&g.loop, UV_RUN_DEFAULT);
  rc = 0;
  goto fail_peers; /* everything else closed itself on the loop */
fail_srv:
  if (g.srv)
    sp_h2_server_close(g.srv, NULL, NULL);
  sp_pg_pool_close(g.pg, NULL, NULL);
  if (g.redis)
    sp_redis_close(g.redis, NULL, NULL);
  uv_run(&g.loop, UV_RUN_DEFAULT);
fail_peers:
  while (g.jobs) { /* not reachable once the pool closed; kept for safety */
    apply_job *j = g.jobs;
    g.jobs = j->next;
    respond_text(j->st, 503, "stopping\n");
    job_free(j);
  }
  for (size_t i = 0; g.peers && i < g.npeers; i++) {
    repl_session_free(g.peers[i].out);
    repl_session_free(g.peers[i].in);
    crdt_delta_free(g.peers[i].rows);
  }
  sp_free(g.peers);
  repl_metrics_free(g.metrics);
fail_loop:
  if (uv_loop_close(&g.loop))
    sp_log_error("loop not closed clean", NULL);
fail_tls:
  sp_tls_ctx_free(g.tls_cli);
  sp_tls_ctx_free(g.tls_srv);
  sp_topo_free(g.topo);
  return rc;
}
