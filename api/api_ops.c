/* api_ops: the operational endpoints of statusd-api and its metrics.
 *
 *   GET /health   the process is alive (always 200 while it runs)
 *   GET /ready    can it serve?  200, or 503 naming what is degraded:
 *                 {"status":"degraded","checks":{"postgres":"down",...}}
 *   GET /metrics  Prometheus text format
 *   GET /_internal/digest  the region's state digest (crdt/), whole and per
 *                 page: {"digest":"<hex>","pages":{"<page>":"<hex>"},"vector":{...},
 *                 "entities":N,"tombstones":N,"collected":N}
 *                 for `statusctl verify` to prove regions converged;
 *                 ?page=ID: that page's entities, {"page":ID,"digest":"<hex>"|null,
 *                 "entities":[{"type","id","cl","digest"}],"vector":{...}}, for
 *                 verify to tell a tombstone one region still holds from a
 *                 real difference
 *   POST /_test/clock {"advance_ms": N} | {"offset_ms": N}
 *                 moves this process's clock (only with --test-clock: the
 *                 maintenance auto-transition tests use it)
 *
 * Metrics: requests by route and status, latency histograms, cache state,
 * database pool use, rate-limited requests (counted by api_auth.c through
 * api_metrics_rate_limited).  Request series are looked up once per
 * (method, route, status) and cached in a small table, so the per-request
 * cost is a short scan and two adds.
 */
#include "internal.h"
#include "render.h"
#include "routes.h"

#include <stdio.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_log.h"

#define SERIES_CACHE 128

typedef struct series_entry {
  const char *method; /* static strings from sp_http */
  const char *route;
  int status;
  sp_counter *count;
  sp_histogram *latency;
} series_entry;

/* Metric handles of the process (one per process, like g_api). */
static struct {
  sp_metrics_family *requests, *latency, *rate_limited_f, *pool, *cache_f, *writes_f;
  sp_counter *rate_limited;
  sp_metrics_family *hits_f;
  sp_counter *hits[API_DOC_COUNT + 1]; /* by document kind; last = 304s */
  sp_metrics_family *collected_f;
  sp_counter *collected; /* tombstones collected from the cache's document */
  series_entry cache[SERIES_CACHE];
  size_t ncache;
  uv_timer_t maint;
  int maint_started;
} g_ops;

static double pool_stat(void *arg, int which, sp_pg_pool *p) {
  (void)arg;
  sp_pg_stats st;
  sp_pg_pool_stats(p, &st);
  switch (which) {
  case 0: return (double)st.up;
  case 1: return (double)st.busy;
  default: return (double)st.waiting;
  }
}
static double w_up(void *a) { return pool_stat(a, 0, ((api_server *)a)->pg_write); }
static double w_busy(void *a) { return pool_stat(a, 1, ((api_server *)a)->pg_write); }
static double w_wait(void *a) { return pool_stat(a, 2, ((api_server *)a)->pg_write); }
static double r_up(void *a) { return pool_stat(a, 0, ((api_server *)a)->pg_read); }
static double r_busy(void *a) { return pool_stat(a, 1, ((api_server *)a)->pg_read); }
static double r_wait(void *a) { return pool_stat(a, 2, ((api_server *)a)->pg_read); }
static double cache_stale(void *a) { return api_cache_is_stale(a) ? 1 : 0; }
static double cache_entities(void *a) {
  return (double)crdt_doc_entity_count(((api_server *)a)->doc);
}

int api_metrics_init(api_server *s) {
  sp_metrics *m = s->metrics;
  static const char *req_labels[] = {"method", "route", "code"};
  static const char *lat_labels[] = {"route"};
  static const char *pool_labels[] = {"pool", "state"};
  static const char *cache_labels[] = {"what"};
  int rc = sp_metrics_add_counter(m, "statusd_api_http_requests_total",
                                  "HTTP requests answered, by method, route and status code",
                                  req_labels, 3, &g_ops.requests);
  if (!rc)
    rc = sp_metrics_add_histogram(m, "statusd_api_http_request_duration_seconds",
                                  "Time from a request's first byte to its answer, by route",
                                  lat_labels, 1, NULL, 0, &g_ops.latency);
  if (!rc)
    rc = sp_metrics_add_counter(m, "statusd_api_rate_limited_total",
                                "Management requests refused by the per-key rate limit", NULL,
                                0, &g_ops.rate_limited_f);
  if (!rc)
    rc = sp_metrics_counter(g_ops.rate_limited_f, NULL, &g_ops.rate_limited);
  if (!rc)
    rc = sp_metrics_add_gauge(m, "statusd_api_db_pool_connections",
                              "PostgreSQL pool connections: up, busy, and queries waiting",
                              pool_labels, 2, &g_ops.pool);
  struct {
    const char *pool, *state;
    sp_gauge_fn fn;
  } pools[] = {{"write", "up", w_up},   {"write", "busy", w_busy}, {"write", "waiting", w_wait},
               {"read", "up", r_up},    {"read", "busy", r_busy},  {"read", "waiting", r_wait}};
  for (size_t i = 0; !rc && i < sizeof pools / sizeof pools[0]; i++) {
    const char *v[] = {pools[i].pool, pools[i].state};
    rc = sp_metrics_gauge_fn(g_ops.pool, v, pools[i].fn, s);
  }
  if (!rc)
    rc = sp_metrics_add_gauge(m, "statusd_api_cache", "Cache state: stale (0/1) and entities",
                              cache_labels, 1, &g_ops.cache_f);
  if (!rc) {
    const char *v[] = {"stale"};
    rc = sp_metrics_gauge_fn(g_ops.cache_f, v, cache_stale, s);
  }
  if (!rc) {
    const char *v[] = {"entities"};
    rc = sp_metrics_gauge_fn(g_ops.cache_f, v, cache_entities, s);
  }
  static const char *hit_labels[] = {"document"};
  if (!rc)
    rc = sp_metrics_add_counter(m, "statusd_api_cache_hits_total",
                                "Public reads answered from the pre-rendered cache, by document",
                                hit_labels, 1, &g_ops.hits_f);
  static const char *docs[API_DOC_COUNT + 1] = {
      "summary", "status", "components", "incidents", "incidents_unresolved", "maintenances",
      "maintenances_upcoming", "maintenances_active", "html", "not_modified"};
  for (int i = 0; !rc && i <= API_DOC_COUNT; i++) {
    const char *v[] = {docs[i]};
    rc = sp_metrics_counter(g_ops.hits_f, v, &g_ops.hits[i]);
  }
  if (!rc)
    rc = sp_metrics_add_counter(m, "statusd_api_tombstones_collected_total",
                                "Tombstones dropped from the cache's document once stable in "
                                "every region",
                                NULL, 0, &g_ops.collected_f);
  if (!rc)
    rc = sp_metrics_counter(g_ops.collected_f, NULL, &g_ops.collected);
  if (rc)
    sp_log_error("cannot register metrics", "{s:s}", "error", sp_strerror(rc));
  return rc;
}

void api_metrics_tombstones_collected(api_server *s, uint64_t n) {
  (void)s;
  if (g_ops.collected)
    sp_counter_add(g_ops.collected, n);
}

void api_metrics_cache_hit(int kind, int not_modified) {
  if (kind < 0 || kind >= API_DOC_COUNT || g_ops.hits[kind] == NULL)
    return;
  sp_counter_add(g_ops.hits[not_modified ? API_DOC_COUNT : kind], 1);
}

void api_metrics_rate_limited(api_server *s) {
  (void)s;
  if (g_ops.rate_limited)
    sp_counter_add(g_ops.rate_limited, 1);
}

void api_metrics_request(api_server *s, const char *method, const char *route, int status,
                         uint64_t duration_ns) {
  (void)s;
  if (g_ops.requests == NULL)
    return;
  if (method == NULL)
    method = "INVALID";
  if (route == NULL)
    route = "unmatched";
  series_entry *e = NULL;
  for (size_t i = 0; i < g_ops.ncache; i++) {
    series_entry *c = &g_ops.cache[i];
    if (c->status == status && c->route == route && strcmp(c->method, method) == 0) {
      e = c;
      break;
    }
  }
  if (e == NULL) {
    char code[8];
    snprintf(code, sizeof code, "%d", status);
    const char *rv[] = {method, route, code};
    const char *lv[] = {route};
    sp_counter *cnt;
    sp_histogram *lat;
    if (sp_metrics_counter(g_ops.requests, rv, &cnt) ||
        sp_metrics_histogram(g_ops.latency, lv, &lat))
      return;
    if (g_ops.ncache < SERIES_CACHE) {
      e = &g_ops.cache[g_ops.ncache++];
      e->method = method;
      e->route = route;
      e->status = status;
      e->count = cnt;
      e->latency = lat;
    } else {
      sp_counter_add(cnt, 1);
      sp_histogram_observe(lat, (double)duration_ns / 1e9);
      return;
    }
  }
  sp_counter_add(e->count, 1);
  sp_histogram_observe(e->latency, (double)duration_ns / 1e9);
}

/* ---- handlers ------------------------------------------------------------------ */

static void h_health(sp_http_req *req, void *app) {
  (void)app;
  static const char body[] = "{\"status\":\"ok\"}";
  sp_http_respond_json(req, 200, body, sizeof body - 1);
}

static void h_ready(sp_http_req *req, void *app) {
  api_server *s = app;
  int pg = sp_pg_pool_is_up(s->pg_write);
  int redis = s->redis && sp_redis_is_connected(s->redis);
  int stale = api_cache_is_stale(s);
  int ready = pg && !stale;
  json_t *o = json_pack("{s:s,s:s,s:{s:s,s:s,s:s}}", "status", ready ? "ready" : "degraded",
                        "region", s->region->name, "checks", "postgres", pg ? "ok" : "down",
                        "redis", redis ? "ok" : "down", "cache", stale ? "stale" : "fresh");
  char *body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  if (body == NULL) {
    sp_http_respond_error(req, 500, "out of memory", NULL);
    return;
  }
  sp_http_respond_json(req, ready ? 200 : 503, body, strlen(body));
  free(body);
}

static void h_metrics(sp_http_req *req, void *app) {
  api_server *s = app;
  sp_buf b;
  sp_buf_init(&b, 16u << 20);
  if (sp_metrics_render(s->metrics, &b)) {
    sp_buf_release(&b);
    sp_http_respond_error(req, 500, "cannot render metrics", NULL);
    return;
  }
  sp_http_header h[] = {{"Content-Type", SP_METRICS_CONTENT_TYPE}};
  sp_http_respond(req, 200, h, 1, b.base, b.len);
  sp_buf_release(&b);
}

static void h_test_clock(sp_http_req *req, void *app) {
  api_server *s = app;
  if (!s->test_clock) {
    sp_http_respond_error(req, 404, "not found", NULL);
    return;
  }
  json_t *body;
  char err[256];
  if (sp_http_req_json(req, &body, err, sizeof err)) {
    sp_http_respond_error(req, 400, err, NULL);
    return;
  }
  json_t *adv = json_object_get(body, "advance_ms"), *off = json_object_get(body, "offset_ms");
  if (adv && json_is_integer(adv)) {
    s->clock_offset_ms += json_integer_value(adv);
  } else if (off && json_is_integer(off)) {
    s->clock_offset_ms = json_integer_value(off);
  } else {
    json_decref(body);
    sp_http_respond_error(req, 400, "expected an integer advance_ms or offset_ms", "advance_ms");
    return;
  }
  json_decref(body);
  api_maint_tick(s); /* let time-driven transitions happen now */
  char out[64];
  int n = snprintf(out, sizeof out, "{\"offset_ms\":%lld}", (long long)s->clock_offset_ms);
  sp_http_respond_json(req, 200, out, (size_t)n);
}

static void hex(const uint8_t *d, size_t n, char *out) {
  static const char h[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = h[d[i] >> 4];
    out[2 * i + 1] = h[d[i] & 15];
  }
  out[2 * n] = '\0';
}

static void on_page_digest(const char *page, const uint8_t dg[CRDT_DIGEST_LEN], void *arg) {
  char x[2 * CRDT_DIGEST_LEN + 1];
  hex(dg, CRDT_DIGEST_LEN, x);
  json_object_set_new(arg, page, json_string(x));
}

static void on_count_tombstone(const char *type, const char *id, uint32_t cl, void *arg) {
  (void)type;
  (void)id;
  if (cl && cl % 2 == 0)
    ++*(size_t *)arg;
}

static void on_page_tombstones(const char *page, void *arg) {
  api_server *s = ((void **)arg)[0];
  crdt_doc_page_entities(s->doc, page, NULL, on_count_tombstone, ((void **)arg)[1]);
}

static void on_entity_digest(const char *type, const char *id,
                             const uint8_t dg[CRDT_DIGEST_LEN], void *arg) {
  char x[2 * CRDT_DIGEST_LEN + 1];
  hex(dg, CRDT_DIGEST_LEN, x);
  json_array_append_new(arg, json_pack("{s:s,s:s,s:s}", "type", type, "id", id, "digest", x));
}

static json_t *vector_json(api_server *s) {
  json_t *vec = json_object();
  const crdt_vclock *v = api_cache_merged(s);
  for (int i = 0; i < CRDT_MAX_REGIONS; i++) {
    if (v->seq[i]) {
      char k[16];
      snprintf(k, sizeof k, "%d", i);
      json_object_set_new(vec, k, json_integer((json_int_t)v->seq[i]));
    }
  }
  return vec;
}

static void respond_json_value(sp_http_req *req, json_t *o) {
  char *body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(o);
  if (body == NULL) {
    sp_http_respond_error(req, 500, "out of memory", NULL);
    return;
  }
  sp_http_respond_json(req, 200, body, strlen(body));
  free(body);
}

/* ?page=ID: the page's entities with their causal length and digest. */
static void h_digest_page(sp_http_req *req, api_server *s, const char *page) {
  uint8_t dg[CRDT_DIGEST_LEN];
  char x[2 * CRDT_DIGEST_LEN + 1];
  json_t *ents = json_array();
  int rc = crdt_doc_page_digest(s->doc, page, dg);
  if (rc == 0)
    rc = crdt_doc_entity_digests(s->doc, page, on_entity_digest, ents);
  if (rc && rc != SP_ERR_NOENT) {
    json_decref(ents);
    sp_http_respond_error(req, 500, sp_strerror(rc), NULL);
    return;
  }
  size_t i;
  json_t *e;
  json_array_foreach(ents, i, e) {
    uint32_t cl = 0;
    if (crdt_doc_cl(s->doc, page, json_string_value(json_object_get(e, "type")),
                    json_string_value(json_object_get(e, "id")), &cl))
      cl = 0;
    json_object_set_new(e, "cl", json_integer(cl));
  }
  if (rc == 0)
    hex(dg, CRDT_DIGEST_LEN, x);
  respond_json_value(req, json_pack("{s:s,s:s,s:o,s:o,s:o}", "region", s->region->name, "page",
                                    page, "digest", rc == 0 ? json_string(x) : json_null(),
                                    "entities", ents, "vector", vector_json(s)));
}

static void h_digest(sp_http_req *req, void *app) {
  api_server *s = app;
  const char *page = NULL;
  int q = sp_http_req_query_param(req, "page", &page);
  if (q == SP_ERR_PARSE || (q == 0 && page[0] == '\0')) {
    sp_http_respond_error(req, 400, "page must be a page id", "page");
    return;
  }
  if (q == SP_ERR_NOMEM) {
    sp_http_respond_error(req, 500, "out of memory", NULL);
    return;
  }
  if (q == 0) {
    h_digest_page(req, s, page);
    return;
  }
  uint8_t root[CRDT_DIGEST_LEN];
  char x[2 * CRDT_DIGEST_LEN + 1];
  json_t *pages = json_object();
  int rc = crdt_doc_digest(s->doc, root);
  if (rc == 0)
    rc = crdt_doc_page_digests(s->doc, on_page_digest, pages);
  size_t tombstones = 0;
  void *tctx[2] = {s, &tombstones};
  if (rc == 0)
    rc = crdt_doc_pages(s->doc, on_page_tombstones, tctx);
  if (rc) {
    json_decref(pages);
    sp_http_respond_error(req, 500, sp_strerror(rc), NULL);
    return;
  }
  hex(root, CRDT_DIGEST_LEN, x);
  respond_json_value(req, json_pack("{s:s,s:s,s:I,s:I,s:I,s:o,s:o}", "region", s->region->name,
                                    "digest", x, "entities",
                                    (json_int_t)crdt_doc_entity_count(s->doc), "tombstones",
                                    (json_int_t)tombstones, "collected",
                                    (json_int_t)api_cache_collected(s), "pages", pages, "vector",
                                    vector_json(s)));
}

const sp_http_route api_ops_routes[] = {
    {"GET", "/_internal/digest", h_digest},
    {"GET", "/health", h_health},
    {"GET", "/ready", h_ready},
    {"GET", "/metrics", h_metrics},
    {"POST", "/_test/clock", h_test_clock},
};
const size_t api_ops_nroutes = sizeof api_ops_routes / sizeof api_ops_routes[0];

int api_routes(const sp_http_route **out, size_t *n) {
  static sp_http_route *all;
  static size_t nall;
  if (all == NULL) {
    nall = api_ops_nroutes + api_manage_nroutes + api_public_nroutes;
    all = sp_malloc(nall * sizeof *all);
    if (all == NULL)
      return SP_ERR_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < api_ops_nroutes; i++)
      all[k++] = api_ops_routes[i];
    for (size_t i = 0; i < api_manage_nroutes; i++)
      all[k++] = api_manage_routes[i];
    for (size_t i = 0; i < api_public_nroutes; i++)
      all[k++] = api_public_routes[i];
  }
  *out = all;
  *n = nall;
  return 0;
}

/* ---- maintenance auto-transition timer ----------------------------------------- */

static void on_maint_timer(uv_timer_t *t) { api_maint_tick(t->data); }

int api_ops_start(api_server *s) {
  uv_timer_init(s->loop, &g_ops.maint);
  g_ops.maint.data = s;
  uv_timer_start(&g_ops.maint, on_maint_timer, 1000, 1000);
  uv_unref((uv_handle_t *)&g_ops.maint);
  g_ops.maint_started = 1;
  return 0;
}

void api_ops_stop(api_server *s) {
  (void)s;
  if (g_ops.maint_started) {
    uv_close((uv_handle_t *)&g_ops.maint, NULL);
    g_ops.maint_started = 0;
  }
}
