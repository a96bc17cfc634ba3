/* api_write: the write path of the management API.
 *
 * A handler describes a write as intents (create / delete / set / require on
 * entities, see sp_write_one in lib/sql/0002_write_batch.sql) and hands them
 * here.  Every write is atomic: its intents and outbox rows commit together
 * or not at all.
 *
 * Group commit: the region's writers share one clock row in PostgreSQL,
 * held until commit, so one write per transaction would cap a region at one
 * write per commit latency.  Instead writes queue here while a transaction
 * is in flight and go out together as the next one (sp_write_batch, at most
 * BATCH_MAX writes), each in its own subtransaction: a write whose
 * precondition fails is rolled back and reported alone.
 *
 * After the commit the batch's changes are merged into the cache (so every
 * writer reads its own write at once) and published on the region's Redis
 * channel for the other API processes; then each handler's callback runs.
 */
#include "internal.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_log.h"

json_t *api_ops_new(void) { return json_array(); }

static void add_op(json_t *ops, const char *op, const char *page, const char *type,
                   const char *id) {
  json_array_append_new(ops, json_pack("{s:s,s:s,s:s,s:s}", "op", op, "p", page, "t", type, "i", id));
}

void api_op_create(json_t *ops, const char *page, const char *type, const char *id) {
  add_op(ops, "create", page, type, id);
}
void api_op_delete(json_t *ops, const char *page, const char *type, const char *id) {
  add_op(ops, "delete", page, type, id);
}
void api_op_require(json_t *ops, const char *page, const char *type, const char *id) {
  add_op(ops, "require", page, type, id);
}
void api_op_set(json_t *ops, const char *page, const char *type, const char *id,
                const char *field, const char *value) {
  json_array_append_new(ops, json_pack("{s:s,s:s,s:s,s:s,s:s,s:o}", "op", "set", "p", page, "t",
                                       type, "i", id, "f", field, "v",
                                       value ? json_string(value) : json_null()));
}

/* A queued write: its intents and outbox rows as JSON text (jansson's
 * allocation), and whom to tell. */
typedef struct write_req {
  struct write_req *next;
  char *ops_json;
  char *outbox_json; /* NULL = none */
  api_write_cb cb;
  void *arg;
} write_req;

#define BATCH_MAX 256 /* writes per transaction */

/* The process's write queue (one per process, like g_api): writes wait here
 * while a batch is in flight and go out together as the next batch. */
static struct {
  write_req *head, *tail;
  size_t queued;
  int in_flight;
} g_wq;

typedef struct batch {
  api_server *s;
  write_req *reqs; /* in order */
  size_t n;
} batch;

static void req_free(write_req *w) {
  free(w->ops_json); /* jansson's allocator */
  free(w->outbox_json);
  sp_free(w);
}

/* Adds one committed write's changes (from its result object) to d. */
static int result_changes(api_server *s, json_t *res, crdt_delta *d, crdt_hlc *hlc_out) {
  json_int_t hlc = 0;
  json_t *changes = NULL;
  if (json_unpack(res, "{s:I,s:o}", "hlc", &hlc, "changes", &changes) || !json_is_array(changes))
    return SP_ERR_PARSE;
  *hlc_out = (crdt_hlc)hlc;
  size_t i;
  json_t *c;
  json_array_foreach(changes, i, c) {
    crdt_change ch;
    memset(&ch, 0, sizeof ch);
    json_int_t k = 0, cl = 0, seq = 0;
    json_t *v = NULL;
    const char *f = NULL;
    if (json_unpack(c, "{s:I,s:s,s:s,s:s,s:I,s:I,s?s,s?o}", "k", &k, "p", &ch.page, "t", &ch.type,
                    "i", &ch.id, "cl", &cl, "seq", &seq, "f", &f, "v", &v))
      return SP_ERR_PARSE;
    ch.kind = k == 2 ? CRDT_EXIST : CRDT_FIELD;
    ch.field = f;
    if (ch.kind == CRDT_FIELD) {
      ch.value_null = v == NULL || json_is_null(v);
      if (!ch.value_null) {
        ch.value = (const uint8_t *)json_string_value(v);
        ch.value_len = json_string_length(v);
      }
    }
    ch.cl = (uint32_t)cl;
    ch.stamp.hlc = (crdt_hlc)hlc;
    ch.stamp.region = (crdt_region)s->region_id;
    ch.origin = (crdt_region)s->region_id;
    ch.seq = (uint64_t)seq;
    int rc = crdt_delta_add(d, &ch);
    if (rc)
      return rc;
  }
  return 0;
}

/* The highest change-log sequence number of one committed write (what a
 * durable write waits for other regions to acknowledge); 0 when none. */
static uint64_t last_seq(json_t *res) {
  uint64_t max = 0;
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(res, "changes"), i, c) {
    json_int_t seq = json_integer_value(json_object_get(c, "seq"));
    if (seq > 0 && (uint64_t)seq > max)
      max = (uint64_t)seq;
  }
  return max;
}

static int map_sqlstate(const char *state) {
  if (strcmp(state, "P0002") == 0)
    return SP_ERR_NOENT;
  if (strcmp(state, "23505") == 0)
    return SP_ERR_EXIST;
  return SP_ERR_DB;
}

static void flush(api_server *s);

static void on_batch(int status, const PGresult *res, void *arg) {
  batch *b = arg;
  api_server *s = b->s;
  g_wq.in_flight = 0;
  json_t *results = NULL;
  const char *fail_msg = NULL;
  int fail = 0;
  if (status == SP_ERR_DB) {
    fail = map_sqlstate(sp_pg_sqlstate(res));
    fail_msg = sp_pg_error_message(res);
  } else if (status != 0) {
    fail = status == SP_ERR_TIMEDOUT || status == SP_ERR_CANCELED ? SP_ERR_DB_DOWN : status;
    fail_msg = sp_strerror(status);
  } else {
    json_error_t jerr;
    results = json_loads(PQgetvalue(res, 0, 0), 0, &jerr);
    if (!json_is_array(results) || json_array_size(results) != b->n) {
      sp_log_error("unreadable sp_write_batch result", NULL);
      fail = SP_ERR_DB;
      fail_msg = "unreadable result from the database";
    }
  }
  /* Merge every committed write into the cache and publish them as one
   * delta before any handler answers, so each writer reads its write. */
  crdt_delta *d = NULL;
  if (!fail && crdt_delta_new(NULL, &d) == 0) {
    for (size_t i = 0; i < b->n; i++) {
      json_t *r = json_array_get(results, i);
      crdt_hlc hlc;
      if (json_is_true(json_object_get(r, "ok")) && result_changes(s, r, d, &hlc))
        sp_log_error("unreadable write result", NULL);
    }
    api_cache_merge(s, d);
    uint8_t *enc;
    size_t len;
    if (s->redis && crdt_delta_count(d) && crdt_delta_encode(d, &enc, &len) == 0) {
      /* best effort: other processes also catch up from the change log */
      sp_redis_publish(s->redis, s->changes_channel, enc, len, NULL, NULL);
      crdt_free_bytes(NULL, enc);
    }
    crdt_delta_free(d);
  }
  write_req *w = b->reqs;
  for (size_t i = 0; w; i++) {
    write_req *next = w->next;
    api_write_result r = {0, NULL, 0, 0};
    if (fail) {
      r.status = fail;
      r.message = fail_msg;
    } else {
      json_t *one = json_array_get(results, i);
      if (json_is_true(json_object_get(one, "ok"))) {
        json_int_t hlc = 0;
        json_unpack(one, "{s:I}", "hlc", &hlc);
        r.hlc = (crdt_hlc)hlc;
        r.seq = last_seq(one);
      } else {
        const char *code = json_string_value(json_object_get(one, "code"));
        r.status = map_sqlstate(code ? code : "");
        r.message = json_string_value(json_object_get(one, "message"));
      }
    }
    w->cb(s, &r, w->arg);
    req_free(w);
    w = next;
  }
  json_decref(results);
  sp_free(b);
  flush(s);
}

/* Sends up to BATCH_MAX queued writes as one transaction.  0 (they are in
 * flight), or an error with the queue left as it was. */
static int send_batch(api_server *s) {
  batch *b = sp_malloc(sizeof *b);
  if (b == NULL)
    return SP_ERR_NOMEM;
  sp_buf body;
  sp_buf_init(&body, SP_BUF_UNLIMITED);
  write_req *w = g_wq.head, *last = NULL;
  size_t n = 0;
  int rc = sp_buf_add(&body, "[", 1);
  for (; w && n < BATCH_MAX && !rc; w = w->next, n++) {
    rc = sp_buf_addf(&body, "%s{\"ops\":%s,\"outbox\":%s}", n ? "," : "", w->ops_json,
                     w->outbox_json ? w->outbox_json : "null");
    last = w;
  }
  if (!rc)
    rc = sp_buf_add(&body, "]", 1);
  if (!rc) {
    char region[16], wall[32];
    snprintf(region, sizeof region, "%d", s->region_id);
    snprintf(wall, sizeof wall, "%llu", (unsigned long long)api_now_ms(s));
    const char *params[3] = {region, wall, body.base};
    b->s = s;
    b->reqs = g_wq.head;
    b->n = n;
    rc = sp_pg_query(s->pg_write, "SELECT sp_write_batch($1::smallint, $2::bigint, $3::jsonb)", 3,
                     params, on_batch, b);
  }
  sp_buf_release(&body);
  if (rc) {
    sp_free(b);
    return rc;
  }
  g_wq.in_flight = 1;
  g_wq.head = w;
  if (g_wq.head == NULL)
    g_wq.tail = NULL;
  g_wq.queued -= n;
  last->next = NULL;
  return 0;
}

/* After a batch: send the next one.  Writes that cannot be sent (database
 * down, pool full) are failed through their callbacks; this runs from a
 * database callback, never inside a handler's api_write call. */
static void flush(api_server *s) {
  while (!g_wq.in_flight && g_wq.head) {
    int rc = send_batch(s);
    if (rc == 0)
      return;
    int st = rc == SP_ERR_NOMEM || rc == SP_ERR_BUSY ? rc : SP_ERR_DB_DOWN;
    write_req *x = g_wq.head;
    g_wq.head = g_wq.tail = NULL;
    g_wq.queued = 0;
    while (x) {
      write_req *next = x->next;
      api_write_result r = {st, sp_strerror(st), 0, 0};
      x->cb(s, &r, x->arg);
      req_free(x);
      x = next;
    }
  }
}

int api_write(api_server *s, json_t *ops, json_t *outbox, api_write_cb cb, void *arg) {
  write_req *w = sp_calloc(1, sizeof *w);
  if (w) {
    w->ops_json = json_dumps(ops, JSON_COMPACT);
    w->outbox_json = outbox ? json_dumps(outbox, JSON_COMPACT) : NULL;
  }
  json_decref(ops);
  json_decref(outbox);
  if (w == NULL || w->ops_json == NULL || (outbox && w->outbox_json == NULL)) {
    if (w)
      req_free(w);
    return SP_ERR_NOMEM;
  }
  w->cb = cb;
  w->arg = arg;
  if (g_wq.tail)
    g_wq.tail->next = w;
  else
    g_wq.head = w;
  g_wq.tail = w;
  g_wq.queued++;
  if (g_wq.in_flight)
    return 0; /* goes out with the next batch */
  /* Idle: the queue held nothing else (flush empties it), send now. */
  int rc = send_batch(s);
  if (rc) {
    g_wq.head = g_wq.tail = NULL;
    g_wq.queued = 0;
    req_free(w);
    return rc;
  }
  return 0;
}

uint64_t api_now_ms(const api_server *s) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  return (uint64_t)((int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000 + s->clock_offset_ms);
}
