/* api_durable: opt-in durable writes of the management API.
 *
 * A write sent with `X-Durable: true` (or `1`) is committed in this region
 * as usual, but its answer is held until another region has applied it, so
 * losing this whole region loses none of the writes it answered as
 * durable.  "Applied" is what the peer acknowledged to our replication
 * daemon: statusd-replicad stores each peer's acknowledged vector in
 * sp_peer_ack (lib/sql/0005_repl_repair.sql) and, once that row is
 * committed, publishes {"peer": NAME, "origin": N, "seq": S} on the Redis
 * channel sp:<cluster>:<region>:acks.  A held answer is released when some
 * peer's acknowledged sequence for this region's origin reaches the write's
 * last sequence number (this region's change-log sequence is that origin's
 * component of the vector clock, and a peer's vector is contiguous, so S
 * covers every change of ours up to S).
 *
 * Signals: the Redis message is the fast path; while anything waits,
 * sp_peer_ack is also read every POLL_MS (Redis down, a message missed), so
 * a lost message costs at most that much latency, never a wrong answer.
 * The last acknowledged sequence seen per peer is remembered, so a write
 * whose ack raced ahead of its own answer is released at once.
 *
 * Outcomes (X-Durable response header): `confirmed` (the normal 2xx answer,
 * plus X-Durable-Region naming the first peer that covered it), `timeout`
 * (504 after the process's durable timeout: the write IS committed here and
 * the body carries the normal answer under "result"), `aborted` (503: the
 * process is shutting down; also committed).  A client that disconnects is
 * simply dropped.  A region without peers cannot confirm anything: such a
 * request is refused with 409 before it writes (api_durable_admit).
 *
 * Nothing here blocks the loop: a waiter is a list entry; one poll timer
 * runs only while the list is non-empty, one deadline timer is armed for
 * the oldest waiter (all waiters share one timeout, so the list is in
 * deadline order).  SIGTERM/SIGINT (a second watcher beside the HTTP
 * server's) answers every waiter at once so shutdown is not held up.
 *
 * Memory: the process's durable state is the static `g_dur` (like
 * api_write.c's queue).  A waiter owns its request handle (until answered),
 * a copy of the answer's headers and body, and is freed when answered.
 */
#include "internal.h"

#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sp_alloc.h"
#include "sp_log.h"

#define POLL_MS 100
#define MAX_WAITING 4096  /* durable answers held at once (admission refuses more) */
#define MAX_HDRS 8        /* headers of the held answer we keep */
#define ACK_MSG_MAX 1024  /* a longer message on the acks channel is not ours */

typedef struct waiter {
  struct waiter *prev, *next;
  sp_http_req *req;
  int status;
  uint64_t seq;                /* this region's sequence that must be covered */
  uint64_t start_ms, deadline_ms; /* uv_now */
  size_t nh;
  sp_http_header h[MAX_HDRS];  /* strings owned (sp_strdup) */
  char *body;                  /* owned; NULL when the answer has none */
  size_t len;
  char id[72];                 /* the resource's id, for the 504 body */
} waiter;

enum { OUT_CONFIRMED, OUT_TIMEOUT, OUT_ABORTED, OUT_GONE, OUT_COUNT };

static struct {
  api_server *s;
  int started, stopping, subscribed, polling, signals;
  waiter *head, *tail;
  size_t n;
  uv_timer_t poll, deadline;
  uv_signal_t sigterm, sigint;
  /* last acknowledged sequence of our origin, per peer region index */
  uint64_t acked[CRDT_MAX_REGIONS];
  int known[CRDT_MAX_REGIONS];
  sp_counter *outcome[OUT_COUNT];
  sp_histogram *wait;
} g_dur;

/* ---- header and admission ------------------------------------------------------ */

static int is_write_method(const char *m) {
  return m && strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0 && strcmp(m, "OPTIONS") != 0;
}

/* 1 "true"/"1" (case-insensitive, surrounding blanks ignored), 0 otherwise. */
static int value_ok(const char *v) {
  while (*v == ' ' || *v == '\t')
    v++;
  size_t n = strlen(v);
  while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
    n--;
  return (n == 4 && strncasecmp(v, "true", 4) == 0) || (n == 1 && v[0] == '1');
}

int api_durable_requested(const sp_http_req *req) {
  if (!is_write_method(sp_http_req_method(req)))
    return 0; /* reads ignore the header */
  int durable = 0;
  size_t n = sp_http_req_header_count(req);
  for (size_t i = 0; i < n; i++) {
    const char *name, *value;
    if (sp_http_req_header_at(req, i, &name, &value) || strcasecmp(name, "X-Durable") != 0)
      continue;
    if (!value_ok(value))
      return -1;
    durable = 1;
  }
  return durable;
}

int api_durable_admit(api_server *s, char *why, size_t len) {
  if (s->region->npeers == 0) {
    snprintf(why, len,
             "X-Durable: true needs another region to confirm the write, and region %s has no "
             "peers in the topology; nothing was written",
             s->region->name);
    return 409;
  }
  if (g_dur.stopping || !g_dur.started) {
    snprintf(why, len, "the server is shutting down; nothing was written, retry later");
    return 503;
  }
  if (g_dur.n >= MAX_WAITING) {
    snprintf(why, len, "too many durable writes waiting for confirmation (%d); nothing was "
             "written, retry later", MAX_WAITING);
    return 503;
  }
  return 0;
}

/* ---- answering ------------------------------------------------------------------- */

static void unlink_waiter(waiter *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    g_dur.head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    g_dur.tail = w->prev;
  w->prev = w->next = NULL;
  g_dur.n--;
  if (g_dur.n == 0 && g_dur.started) {
    uv_timer_stop(&g_dur.poll);
    uv_timer_stop(&g_dur.deadline);
  }
}

static void waiter_free(waiter *w) {
  for (size_t i = 0; i < w->nh; i++) {
    sp_free((char *)w->h[i].name);
    sp_free((char *)w->h[i].value);
  }
  sp_free(w->body);
  sp_free(w);
}

static void count(int outcome) {
  if (g_dur.outcome[outcome])
    sp_counter_add(g_dur.outcome[outcome], 1);
}

/* The normal answer with X-Durable: confirmed and the confirming region. */
static void answer_confirmed(waiter *w, const char *region) {
  api_server *s = g_dur.s;
  sp_http_header h[MAX_HDRS + 2];
  size_t nh = 0;
  for (size_t i = 0; i < w->nh; i++)
    h[nh++] = w->h[i];
  h[nh++] = (sp_http_header){"X-Durable", "confirmed"};
  h[nh++] = (sp_http_header){"X-Durable-Region", region};
  count(OUT_CONFIRMED);
  if (g_dur.wait && s)
    sp_histogram_observe(g_dur.wait, (double)(uv_now(s->loop) - w->start_ms) / 1000.0);
  sp_http_respond(w->req, w->status, h, nh, w->body, w->len);
  w->req = NULL;
}

/* 504 (timeout) or 503 (shutdown): committed here, not confirmed elsewhere.
 * The body names the problem and carries the normal answer, so a client
 * can tell the write exists and must not simply be sent again. */
static void answer_unconfirmed(waiter *w, int status, const char *tag, const char *why) {
  api_server *s = g_dur.s;
  json_t *result = w->body && w->len ? json_loadb(w->body, w->len, 0, NULL) : NULL;
  const char *id = w->id[0] ? w->id : NULL;
  if (json_is_object(result) && json_is_string(json_object_get(result, "id")))
    id = json_string_value(json_object_get(result, "id"));
  char msg[512];
  snprintf(msg, sizeof msg,
           "%s; the write IS committed in region %s (it replicates once a peer is reachable): "
           "do not send it again blindly, read it back instead",
           why, s->region->name);
  json_t *o = json_pack("{s:s,s:s,s:b,s:s,s:i,s:s?,s:o}", "message", msg, "field", "X-Durable",
                        "committed", 1, "region", s->region->name, "status", w->status, "id", id,
                        "result", result ? result : json_null());
  char *text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  sp_http_header h[MAX_HDRS + 2];
  size_t nh = 0;
  for (size_t i = 0; i < w->nh; i++)
    if (strcasecmp(w->h[i].name, "Content-Type") != 0)
      h[nh++] = w->h[i];
  h[nh++] = (sp_http_header){"Content-Type", "application/json; charset=utf-8"};
  h[nh++] = (sp_http_header){"X-Durable", tag};
  static const char oom[] = "{\"message\":\"durable write not confirmed (committed in this "
                            "region)\",\"field\":\"X-Durable\",\"committed\":true}";
  sp_http_respond(w->req, status, h, nh, text ? text : oom, text ? strlen(text) : sizeof oom - 1);
  w->req = NULL;
  free(text); /* jansson's allocator */
}

static void answer_timeout(waiter *w) {
  char why[160];
  snprintf(why, sizeof why, "durable write not confirmed: no other region acknowledged it within "
           "%llu ms", (unsigned long long)g_dur.s->durable_timeout_ms);
  count(OUT_TIMEOUT);
  answer_unconfirmed(w, 504, "timeout", why);
}

static void answer_aborted(waiter *w) {
  count(OUT_ABORTED);
  answer_unconfirmed(w, 503, "aborted",
                     "durable write not confirmed: the server is shutting down");
}

static void on_abort(sp_http_req *req, void *arg) {
  waiter *w = arg;
  unlink_waiter(w);
  count(OUT_GONE);
  sp_http_respond(req, w->status, NULL, 0, NULL, 0); /* dropped: frees the request */
  w->req = NULL;
  waiter_free(w);
}

/* Releases every waiter that peer `peer` (region index) covers with `seq`. */
static void acked(size_t peer, uint64_t seq) {
  api_server *s = g_dur.s;
  if (s == NULL || peer >= s->topo->nregions || peer >= CRDT_MAX_REGIONS ||
      (int)peer == s->region_id)
    return;
  g_dur.acked[peer] = seq; /* replaced, not maxed: a restored peer goes back */
  g_dur.known[peer] = 1;
  const char *name = s->topo->regions[peer].name;
  waiter *w = g_dur.head;
  while (w) {
    waiter *next = w->next;
    if (w->seq <= seq) {
      unlink_waiter(w);
      answer_confirmed(w, name);
      waiter_free(w);
    }
    w = next;
  }
}

/* ---- signals: Redis, the poll, the deadline, SIGTERM ----------------------------- */

static void on_ack_message(const char *channel, const char *data, size_t len, void *arg) {
  (void)channel;
  api_server *s = arg;
  if (len > ACK_MSG_MAX)
    return;
  json_t *m = json_loadb(data, len, 0, NULL);
  const char *peer = NULL;
  json_int_t origin = -1, seq = -1;
  if (m && json_unpack(m, "{s:s,s:I,s:I}", "peer", &peer, "origin", &origin, "seq", &seq) == 0 &&
      origin == s->region_id && seq >= 0) {
    const sp_topo_region *r = sp_topo_region_find(s->topo, peer);
    if (r)
      acked(r->index, (uint64_t)seq);
  } else if (m == NULL || origin == -1) {
    sp_log_warn("ignored a malformed ack message", "{s:i}", "bytes", (int)len);
  }
  json_decref(m);
}

static void on_acks_read(int status, const PGresult *res, void *arg) {
  (void)arg;
  g_dur.polling = 0;
  if (g_dur.stopping || status != 0)
    return; /* the next tick tries again */
  for (int i = 0; i < PQntuples(res); i++) {
    long peer = atol(PQgetvalue(res, i, 0));
    if (peer >= 0)
      acked((size_t)peer, strtoull(PQgetvalue(res, i, 1), NULL, 10));
  }
}

static void on_poll(uv_timer_t *t) {
  (void)t;
  api_server *s = g_dur.s;
  if (g_dur.polling || g_dur.n == 0 || g_dur.stopping)
    return;
  char origin[16];
  snprintf(origin, sizeof origin, "%d", s->region_id);
  const char *params[1] = {origin};
  if (sp_pg_query(s->pg_read, "SELECT peer, seq FROM sp_peer_ack WHERE origin = $1::smallint", 1,
                  params, on_acks_read, NULL) == 0)
    g_dur.polling = 1;
}

static void on_deadline(uv_timer_t *t);

static void rearm(void) {
  if (g_dur.head == NULL)
    return;
  uint64_t now = uv_now(g_dur.s->loop);
  uint64_t d = g_dur.head->deadline_ms;
  uv_timer_start(&g_dur.deadline, on_deadline, d > now ? d - now : 0, 0);
}

static void on_deadline(uv_timer_t *t) {
  (void)t;
  uint64_t now = uv_now(g_dur.s->loop);
  while (g_dur.head && g_dur.head->deadline_ms <= now) {
    waiter *w = g_dur.head;
    unlink_waiter(w);
    answer_timeout(w);
    waiter_free(w);
  }
  rearm();
}

/* Answers every waiter 503 (shutting down). */
static void drain(void) {
  while (g_dur.head) {
    waiter *w = g_dur.head;
    unlink_waiter(w);
    answer_aborted(w);
    waiter_free(w);
  }
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (g_dur.stopping)
    return;
  g_dur.stopping = 1;
  if (g_dur.n)
    sp_log_info("answering durable writes still waiting", "{s:i,s:i}", "signal", signum,
                "waiting", (int)g_dur.n);
  drain();
}

/* ---- holding ----------------------------------------------------------------------- */

void api_durable_hold(api_server *s, sp_http_req *req, int status, const sp_http_header *h,
                      size_t nh, const char *body, size_t len, uint64_t seq, const char *id) {
  waiter *w = sp_calloc(1, sizeof *w);
  int oom = w == NULL || nh > MAX_HDRS;
  if (!oom) {
    w->req = req;
    w->status = status;
    w->seq = seq ? seq : api_cache_merged(s)->seq[s->region_id];
    snprintf(w->id, sizeof w->id, "%s", id ? id : "");
    for (size_t i = 0; i < nh && !oom; i++) {
      w->h[i].name = sp_strdup(h[i].name);
      w->h[i].value = sp_strdup(h[i].value);
      w->nh = i + 1;
      oom = w->h[i].name == NULL || w->h[i].value == NULL;
    }
    if (!oom && body && len) {
      w->body = sp_malloc(len);
      oom = w->body == NULL;
      if (!oom) {
        memcpy(w->body, body, len);
        w->len = len;
      }
    }
  }
  if (oom) {
    if (w)
      waiter_free(w);
    static const char msg[] = "{\"message\":\"out of memory while waiting for a durable "
                              "confirmation; the write IS committed in this region\","
                              "\"field\":\"X-Durable\",\"committed\":true}";
    sp_http_header eh[] = {{"Content-Type", "application/json; charset=utf-8"},
                           {"X-Durable", "timeout"}};
    sp_http_respond(req, 504, eh, 2, msg, sizeof msg - 1);
    return;
  }
  uint64_t now = uv_now(s->loop);
  w->start_ms = now;
  w->deadline_ms = now + s->durable_timeout_ms;
  if (g_dur.stopping || !g_dur.started) {
    answer_aborted(w);
    waiter_free(w);
    return;
  }
  /* an ack already seen (it may race ahead of the answer) */
  for (size_t p = 0; p < s->topo->nregions && p < CRDT_MAX_REGIONS; p++) {
    if ((int)p != s->region_id && g_dur.known[p] && g_dur.acked[p] >= w->seq) {
      answer_confirmed(w, s->topo->regions[p].name);
      waiter_free(w);
      return;
    }
  }
  w->prev = g_dur.tail;
  if (g_dur.tail)
    g_dur.tail->next = w;
  else
    g_dur.head = w;
  g_dur.tail = w;
  g_dur.n++;
  sp_http_req_on_abort(req, on_abort, w);
  if (g_dur.n == 1) {
    uv_timer_start(&g_dur.poll, on_poll, POLL_MS, POLL_MS);
    rearm();
  }
}

/* ---- start and stop ---------------------------------------------------------------- */

static double waiting(void *arg) {
  (void)arg;
  return (double)g_dur.n;
}

static int metrics_init(api_server *s) {
  static const char *out_labels[] = {"outcome"};
  static const char *names[OUT_COUNT] = {"confirmed", "timeout", "aborted", "disconnected"};
  sp_metrics_family *f, *wf, *gf;
  int rc = sp_metrics_add_counter(s->metrics, "statusd_api_durable_writes_total",
                                  "Durable writes (X-Durable) by outcome: confirmed by another "
                                  "region, timed out, aborted by shutdown, client disconnected",
                                  out_labels, 1, &f);
  for (int i = 0; !rc && i < OUT_COUNT; i++) {
    const char *v[] = {names[i]};
    rc = sp_metrics_counter(f, v, &g_dur.outcome[i]);
  }
  if (!rc)
    rc = sp_metrics_add_histogram(s->metrics, "statusd_api_durable_wait_seconds",
                                  "Time from a durable write's commit to another region's "
                                  "confirmation (confirmed writes only)",
                                  NULL, 0, NULL, 0, &wf);
  if (!rc)
    rc = sp_metrics_histogram(wf, NULL, &g_dur.wait);
  if (!rc)
    rc = sp_metrics_add_gauge(s->metrics, "statusd_api_durable_waiting",
                              "Durable write answers held, waiting for another region", NULL, 0,
                              &gf);
  if (!rc)
    rc = sp_metrics_gauge_fn(gf, NULL, waiting, NULL);
  return rc;
}

int api_durable_start(api_server *s) {
  g_dur.s = s;
  int rc = metrics_init(s);
  if (rc) {
    sp_log_error("cannot register the durable-write metrics", "{s:s}", "error", sp_strerror(rc));
    return rc;
  }
  snprintf(s->acks_channel, sizeof s->acks_channel, "sp:%s:%s:acks", s->topo->cluster,
           s->region->name);
  uv_timer_init(s->loop, &g_dur.poll);
  uv_timer_init(s->loop, &g_dur.deadline);
  uv_signal_init(s->loop, &g_dur.sigterm);
  uv_signal_init(s->loop, &g_dur.sigint);
  g_dur.started = 1;
  if (uv_signal_start(&g_dur.sigterm, on_signal, SIGTERM) == 0 &&
      uv_signal_start(&g_dur.sigint, on_signal, SIGINT) == 0)
    g_dur.signals = 1;
  /* none of these may keep the loop alive: the HTTP server's shutdown ends it */
  uv_unref((uv_handle_t *)&g_dur.sigterm);
  uv_unref((uv_handle_t *)&g_dur.sigint);
  if (s->redis && s->region->npeers) {
    rc = sp_redis_subscribe(s->redis, s->acks_channel, on_ack_message, s);
    if (rc) {
      sp_log_error("cannot subscribe to the acks channel", "{s:s}", "error", sp_strerror(rc));
      return rc;
    }
    g_dur.subscribed = 1;
  }
  return 0;
}

void api_durable_stop(api_server *s) {
  if (!g_dur.started)
    return;
  g_dur.stopping = 1;
  drain();
  if (g_dur.subscribed && s->redis)
    sp_redis_unsubscribe(s->redis, s->acks_channel);
  g_dur.subscribed = 0;
  uv_close((uv_handle_t *)&g_dur.poll, NULL);
  uv_close((uv_handle_t *)&g_dur.deadline, NULL);
  uv_close((uv_handle_t *)&g_dur.sigterm, NULL);
  uv_close((uv_handle_t *)&g_dur.sigint, NULL);
  g_dur.started = 0;
}
