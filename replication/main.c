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
 * (our applied vector), notifies the out-sessions, drives each peer's
 * sender, and reconnects dead peers with exponential backoff and jitter.
 * Received batches are applied one at a time (applies of one region must be
 * serialised: two peers may relay the same change), each as one
 * `SELECT sp_apply_remote($1::jsonb, $2::smallint)` (one transaction), then
 * the ack carries the vector re-read after the commit.
 *
 * After an apply commits, the applied changes are published as one crdt
 * delta (binary encoding) on the region's Redis channel
 * sp:<cluster>:<region>:changes, so statusd-api merges them at once instead
 * of at its next change-log poll; best effort, like statusd-api's own.
 *
 * Also served on the same h2 server: GET /health, /ready and /metrics
 * (Prometheus text; per-peer lag in ms = age of the oldest local change the
 * peer has not acknowledged).
 *
 * Not done: snapshots (a peer needing rows we no longer have); the log is
 * never trimmed, so the engine never asks for one in this deployment.
 *
 * Memory: one process struct `g` (the documented per-process global) owns
 * the peers, sessions, pool, server and clients; freed after the loop ends.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "crdt.h"
#include "internal.h"
#include "repl.h"
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
#define POLL_MS 40
#define LAG_MS 500
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_CHANGES 1000
#define WINDOW 2
#define LOAD_LIMIT "3000" /* >= WINDOW * MAX_CHANGES + one batch */
#define CT_PROTO "application/x-protobuf"

typedef struct peer {
  const sp_topo_region *r;
  repl_session *out, *in;
  sp_h2_client *cli;
  int connected, dead, loading, requests, snapshot_logged;
  uint64_t backoff_ms, next_attempt_ms;
  crdt_delta *rows; /* loaded change-log rows (the repl_source) */
  size_t pos;
  /* metrics */
  uint64_t reconnects, applied, sent_bytes, last_contact_ms, lag_ms;
  int lag_query;
} peer;

typedef struct apply_job apply_job;
struct apply_job {
  apply_job *next;
  sp_h2_stream *st;
  peer *p;
  repl_msg m;
  repl_apply a;
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
  peer *peers;
  size_t npeers;
  crdt_vclock applied; /* last read from sp_vclock */
  int polling, have_vector, stopping;
  uint64_t last_poll_ms, last_lag_ms;
  apply_job *jobs, **jobs_tail;
  int applying;
  uint64_t applied_total, batches_in, bad_requests, refused_peers, published;
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

/* ---- sending: the repl_source over loaded rows ------------------------- */

static int src_rewind(void *arg, const crdt_vclock *after, uint64_t origins) {
  peer *p = arg;
  size_t n = crdt_delta_count(p->rows);
  p->pos = 0;
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
  return 1;
}

static void peer_pump(peer *p);

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
  int rc = repl_session_send(p->out, &src, now_ms(), &out);
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

/* Drives one peer: connect, handshake, batches. */
static void peer_pump(peer *p) {
  uint64_t now = now_ms();
  if (g.stopping || p->cli == NULL || p->dead || !p->connected || !g.have_vector)
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
  repl_want w = repl_session_want_send(p->out, now);
  if (w == REPL_WANT_RESEND) {
    send_batch(p); /* same bytes: no rows needed */
  } else if (w == REPL_WANT_BATCH) {
    char origin[8], after[24];
    snprintf(origin, sizeof origin, "%d", (int)g.id);
    snprintf(after, sizeof after, "%" PRIu64, repl_session_acked(p->out)->seq[g.id]);
    const char *vals[] = {origin, after};
    int rc = sp_pg_query(g.pg,
                         "SELECT origin, seq, kind, page_id, type, id, field, value, cl, hlc, "
                         "region FROM sp_change_log WHERE origin = $1 AND seq > $2 "
                         "ORDER BY origin, seq LIMIT " LOAD_LIMIT,
                         2, vals, on_rows, p);
    if (rc == 0)
      p->loading = 1;
  } else if (w == REPL_WANT_SNAPSHOT) {
    if (!p->snapshot_logged++)
      sp_log_error("peer needs a snapshot, which this daemon does not send yet", "{s:s}", "peer",
                   p->r->name);
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

static void on_vector_after(int status, const PGresult *res, void *arg) {
  apply_job *j = arg;
  if (status) {
    job_fail(j, 503, "cannot read the vector");
    return;
  }
  vector_from(res, &g.applied);
  g.have_vector = 1;
  job_ack(j, &g.applied);
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
  long n = atol(PQgetvalue(res, 0, 0));
  j->p->applied += (uint64_t)n;
  g.applied_total += (uint64_t)n;
  if (n > 0)
    publish(&j->a);
  if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_vclock", 0, NULL, on_vector_after, j))
    job_fail(j, 503, "database unavailable");
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

static void on_vector_before(int status, const PGresult *res, void *arg) {
  apply_job *j = arg;
  if (status) {
    job_fail(j, 503, "cannot read the vector");
    return;
  }
  vector_from(res, &g.applied);
  g.have_vector = 1;
  int rc = repl_session_on_batch(j->p->in, &j->m, &g.applied, now_ms(), &j->a);
  if (rc) {
    job_fail(j, rc == SP_ERR_AGAIN ? 409 : 400,
             rc == SP_ERR_AGAIN ? "no handshake" : "not a batch");
    return;
  }
  if (j->a.status == REPL_SKEW_REJECT)
    sp_log_warn("batch refused: clock skew", "{s:s,s:s}", "peer", j->p->r->name, "reason",
                j->a.reason);
  if (j->a.count == 0) {
    job_ack(j, NULL);
    return;
  }
  char *json = changes_json(&j->a);
  if (json == NULL) {
    job_fail(j, 400, "changes not representable as JSON");
    return;
  }
  char local[8];
  snprintf(local, sizeof local, "%d", (int)g.id);
  const char *vals[] = {json, local};
  rc = sp_pg_query(g.pg, "SELECT sp_apply_remote($1::jsonb, $2::smallint)", 2, vals, on_applied, j);
  free(json);
  if (rc)
    job_fail(j, 503, "database unavailable");
}

static void run_jobs(void) {
  if (g.applying || g.jobs == NULL)
    return;
  apply_job *j = g.jobs;
  g.applying = 1;
  if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_vclock", 0, NULL, on_vector_before, j))
    job_fail(j, 503, "database unavailable");
}

static void on_batch_request(sp_h2_stream *st, peer *p, const sp_iov body) {
  apply_job *j = sp_calloc(1, sizeof *j);
  if (j == NULL) {
    respond_text(st, 503, "out of memory");
    return;
  }
  int rc = repl_msg_decode((const uint8_t *)body.base, body.len, &j->m);
  if (rc || j->m.type != REPL_MSG_BATCH) {
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
  repl_session_reset(p->in); /* a new handshake is a new connection */
  sp_buf out;
  sp_buf_init(&out, REPL_MAX_MESSAGE);
  rc = repl_session_on_handshake(p->in, &m, &g.applied, &out);
  repl_msg_release(&m);
  if (rc == 0 || rc == SP_ERR_PROTO) {
    if (rc)
      sp_log_warn("handshake refused", "{s:s,s:s}", "peer", p->r->name, "reason",
                  repl_session_reason(p->in));
    respond_buf(st, &out);
  } else {
    respond_text(st, 500, sp_strerror(rc));
  }
  sp_buf_release(&out);
  p->last_contact_ms = now_ms();
}

static void metrics_line(sp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metrics_line(sp_buf *b, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n > 0)
    sp_buf_add(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void on_metrics(sp_h2_stream *st) {
  sp_buf b;
  sp_buf_init(&b, 1u << 20);
  metrics_line(&b, "# TYPE sp_repl_lag_ms gauge\n");
  for (size_t i = 0; i < g.npeers; i++)
    metrics_line(&b, "sp_repl_lag_ms{peer=\"%s\"} %" PRIu64 "\n", g.peers[i].r->name,
                 g.peers[i].lag_ms);
  metrics_line(&b, "# TYPE sp_repl_connected gauge\n");
  for (size_t i = 0; i < g.npeers; i++)
    metrics_line(&b, "sp_repl_connected{peer=\"%s\"} %d\n", g.peers[i].r->name,
                 repl_session_state(g.peers[i].out) == REPL_STATE_ESTABLISHED);
  static const char *const names[] = {"changes_sent", "batches_sent",    "batches_resent",
                                      "bytes_sent",   "changes_applied", "batches_received",
                                      "skew_rejects", "reconnects",      "last_contact_ms"};
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
    metrics_line(&b, "# TYPE sp_repl_%s %s\n", names[k], k == 8 ? "gauge" : "counter");
    for (size_t i = 0; i < g.npeers; i++) {
      peer *p = &g.peers[i];
      repl_stats so, si;
      repl_session_stats(p->out, &so);
      repl_session_stats(p->in, &si);
      uint64_t v[] = {so.changes_sent, so.batches_sent, so.batches_resent,
                      p->sent_bytes,   p->applied,      si.batches_received,
                      si.skew_rejects, p->reconnects,   p->last_contact_ms};
      metrics_line(&b, "sp_repl_%s%s{peer=\"%s\"} %" PRIu64 "\n", names[k], k < 8 ? "_total" : "",
                   p->r->name, v[k]);
    }
  }
  metrics_line(&b,
               "# TYPE sp_repl_bad_requests_total counter\nsp_repl_bad_requests_total %" PRIu64
               "\n# TYPE sp_repl_refused_peers_total counter\nsp_repl_refused_peers_total %" PRIu64
               "\n# TYPE sp_repl_published_total counter\nsp_repl_published_total %" PRIu64 "\n",
               g.bad_requests, g.refused_peers, g.published);
  sp_h2_header h = {"content-type", "text/plain; version=0.0.4"};
  sp_h2_respond(st, 200, &h, 1, b.base, b.len);
  sp_buf_release(&b);
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
  if (strcmp(method, "POST") != 0) {
    respond_text(st, 405, "method not allowed\n");
  } else if (strcmp(path, "/repl/v1/handshake") == 0) {
    on_handshake_request(st, p, sp_h2_stream_body(st));
  } else if (strcmp(path, "/repl/v1/batch") == 0) {
    on_batch_request(st, p, sp_h2_stream_body(st));
  } else {
    respond_text(st, 404, "not found\n");
  }
}

/* ---- the tick: poll the vector, lag, drive peers ------------------------ */

static void on_poll(int status, const PGresult *res, void *arg) {
  (void)arg;
  g.polling = 0;
  if (status)
    return;
  vector_from(res, &g.applied);
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

static void on_tick(uv_timer_t *t) {
  (void)t;
  uint64_t now = now_ms();
  if (!g.polling && now - g.last_poll_ms >= POLL_MS) {
    g.last_poll_ms = now;
    if (sp_pg_query(g.pg, "SELECT origin, seq FROM sp_vclock", 0, NULL, on_poll, NULL) == 0)
      g.polling = 1;
  }
  int lag = now - g.last_lag_ms >= LAG_MS;
  if (lag)
    g.last_lag_ms = now;
  for (size_t i = 0; i < g.npeers; i++) {
    peer *p = &g.peers[i];
    peer_connect(p, now);
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
  fprintf(stderr, "usage: statusd-replicad --topology FILE --region NAME\n");
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
    int rc;
    if ((rc = repl_session_new(&cfg, &p->out)) || (rc = repl_session_new(&cfg, &p->in)) ||
        (rc = crdt_delta_new(repl_crdt_allocator(), &p->rows)))
      return rc;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *topo_path = NULL, *region = NULL;
  static const struct option opts[] = {{"topology", required_argument, NULL, 't'},
                                       {"region", required_argument, NULL, 'r'},
                                       {NULL, 0, NULL, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (ch == 't')
      topo_path = optarg;
    else if (ch == 'r')
      region = optarg;
    else {
      usage();
      return 2;
    }
  }
  if (topo_path == NULL || region == NULL || optind != argc) {
    usage();
    return 2;
  }
  char err[1024];
  if (sp_topo_load(topo_path, &g.topo, err, sizeof err)) {
    fprintf(stderr, "statusd-replicad: %s\n", err);
    return 2;
  }
  g.self = sp_topo_region_find(g.topo, region);
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
  if ((e = setup_peers())) {
    sp_log_error("sessions", "{s:s}", "error", sp_strerror(e));
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
fail_loop:
  if (uv_loop_close(&g.loop))
    sp_log_error("loop not closed clean", NULL);
fail_tls:
  sp_tls_ctx_free(g.tls_cli);
  sp_tls_ctx_free(g.tls_srv);
  sp_topo_free(g.topo);
  return rc;
}
