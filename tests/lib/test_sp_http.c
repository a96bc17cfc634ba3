/* Tests for sp_http: the HTTP/1.1 server core, over real sockets to
 * 127.0.0.1 (the server's loop runs in a second thread, the test drives it
 * with blocking clients; see tests/tools/http_test_client.h), plus the
 * sans-I/O engine fed byte by byte.  Every loop test ends with
 * uv_loop_close() == 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>

#include "../tools/http_test_client.h"
#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_http.h"

/* ---- the application under test -------------------------------------- */

typedef struct app {
  uv_loop_t *loop;
  atomic_int aborts;        /* abort callbacks of /hold */
  atomic_int held_ready;    /* /hold is in its handler */
  atomic_int late_rc;       /* answer to /hold after the client left */
  atomic_int slow_started;  /* /slow2 is in its handler */
  atomic_int stream_aborts; /* abort callbacks of /events */
  atomic_int stream_end_rc;
  atomic_long flood_queued; /* what /flood saw when it dropped the client */
  atomic_int badhdr_rc;
  sp_http_req *held; /* loop thread only */
  /* memory-mode holds */
  sp_http_req *mem_held[64];
  int nmem_held;
  /* completion hook */
  pthread_mutex_t mu;
  int hooks;
  char hook_method[16];
  char hook_route[96];
  int hook_status;
  uint64_t hook_ns;
} app;

#define CONTAINER_OF(ptr, type, field)                                         \
  ((type *)((char *)(ptr)-offsetof(type, field)))

typedef struct deferred {
  uv_timer_t timer;
  sp_http_req *req;
  app *app;
  int n;
} deferred;

static void deferred_closed(uv_handle_t *h) { free(h->data); }

static void deferred_close(deferred *d) {
  d->timer.data = d;
  uv_close((uv_handle_t *)&d->timer, deferred_closed);
}

static deferred *defer(app *a, sp_http_req *req, uint64_t ms,
                       uint64_t repeat, uv_timer_cb cb) {
  deferred *d = calloc(1, sizeof *d);
  d->req = req;
  d->app = a;
  uv_timer_init(a->loop, &d->timer);
  uv_timer_start(&d->timer, cb, ms, repeat);
  return d;
}

#define JSON(req, status, lit) sp_http_respond_json(req, status, lit, sizeof lit - 1)

static void h_hello(sp_http_req *req, void *ud) {
  (void)ud;
  JSON(req, 200, "{\"hello\":\"world\"}");
}

static void h_ready(sp_http_req *req, void *ud) {
  (void)ud;
  JSON(req, 200, "{\"ready\":true}");
}

static void h_echo(sp_http_req *req, void *ud) {
  (void)ud;
  const char *ct = sp_http_req_header(req, "content-type");
  sp_http_header h[] = {{"Content-Type", ct ? ct : "application/octet-stream"}};
  sp_iov b = sp_http_req_body(req);
  sp_http_respond(req, 200, h, 1, b.base, b.len);
}

static void respond_pack(sp_http_req *req, int status, json_t *j) {
  char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  sp_http_respond_json(req, status, s, strlen(s));
  free(s);
  json_decref(j);
}

static void h_incident(sp_http_req *req, void *ud) {
  (void)ud;
  respond_pack(req, 200,
               json_pack("{s:s, s:s}", "page", sp_http_req_param(req, "page_id"),
                         "incident", sp_http_req_param(req, "incident_id")));
}

static void h_put_incident(sp_http_req *req, void *ud) {
  (void)ud;
  sp_http_respond(req, 204, NULL, 0, NULL, 0);
}

static void h_rest(sp_http_req *req, void *ud) {
  (void)ud;
  respond_pack(req, 200,
               json_pack("{s:s, s:s}", "page", sp_http_req_param(req, "page_id"),
                         "rest", sp_http_req_param(req, "rest")));
}

static void h_query(sp_http_req *req, void *ud) {
  (void)ud;
  const char *q = NULL;
  int rc = sp_http_req_query_param(req, "q", &q);
  sp_iov raw = sp_http_req_query(req);
  respond_pack(req, 200,
               json_pack("{s:i, s:s?, s:s%}", "rc", rc, "q", rc ? NULL : q,
                         "raw", raw.base, raw.len));
}

static void h_headers(sp_http_req *req, void *ud) {
  (void)ud;
  const char *v = sp_http_req_header(req, "X-Test");
  respond_pack(req, 200, json_pack("{s:s?, s:i}", "x_test", v, "count",
                                   (int)sp_http_req_header_count(req)));
}

static void slow_fire(uv_timer_t *t) {
  deferred *d = CONTAINER_OF(t, deferred, timer);
  JSON(d->req, 200, "{\"slow\":true}");
  deferred_close(d);
}

static void h_slow(sp_http_req *req, void *ud) {
  defer(ud, req, 100, 0, slow_fire);
}

static void h_slow2(sp_http_req *req, void *ud) {
  app *a = ud;
  a->slow_started = 1;
  defer(ud, req, 1000, 0, slow_fire);
}

static void hold_abort(sp_http_req *req, void *arg) {
  (void)req;
  app *a = arg;
  a->aborts++;
}

static void h_hold(sp_http_req *req, void *ud) {
  app *a = ud;
  a->held = req;
  sp_http_req_on_abort(req, hold_abort, a);
  a->held_ready = 1;
}

static void answer_held(hc_harness *h, void *arg) {
  (void)h;
  app *a = arg;
  if (a->held)
    a->late_rc = JSON(a->held, 200, "{\"late\":true}");
  a->held = NULL;
}

static void stream_tick(uv_timer_t *t) {
  deferred *d = CONTAINER_OF(t, deferred, timer);
  char line[32];
  int n = snprintf(line, sizeof line, "data: %d\n\n", d->n);
  sp_http_stream_write(d->req, line, (size_t)n);
  if (++d->n == 3) {
    sp_http_stream_end(d->req);
    uv_timer_stop(t);
    deferred_close(d);
  }
}

static const sp_http_header sse_headers[] = {
    {"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}};

static void h_stream(sp_http_req *req, void *ud) {
  if (sp_http_stream_begin(req, 200, sse_headers, 2) == 0)
    defer(ud, req, 20, 20, stream_tick);
}

static void events_abort(sp_http_req *req, void *arg) {
  deferred *d = arg;
  d->app->stream_aborts++;
  uv_timer_stop(&d->timer);
  deferred_close(d);
  d->app->stream_end_rc = sp_http_stream_end(req);
}

static void events_tick(uv_timer_t *t) {
  deferred *d = CONTAINER_OF(t, deferred, timer);
  sp_http_stream_write(d->req, "data: tick\n\n", 12);
}

static void h_events(sp_http_req *req, void *ud) {
  if (sp_http_stream_begin(req, 200, sse_headers, 2))
    return;
  deferred *d = defer(ud, req, 10, 10, events_tick);
  sp_http_req_on_abort(req, events_abort, d);
}

static void flood_abort(sp_http_req *req, void *arg) {
  deferred *d = arg;
  uv_timer_stop(&d->timer);
  deferred_close(d);
  sp_http_stream_end(req);
}

static void flood_tick(uv_timer_t *t) {
  deferred *d = CONTAINER_OF(t, deferred, timer);
  static char chunk[65536];
  memset(chunk, 'f', sizeof chunk);
  for (int i = 0; i < 8; i++)
    sp_http_stream_write(d->req, chunk, sizeof chunk);
  size_t q = sp_http_stream_queued(d->req);
  if (q > 1024 * 1024) { /* a slow reader: drop it */
    d->app->flood_queued = (long)q;
    uv_timer_stop(t);
    deferred_close(d);
    sp_http_stream_abort(d->req);
  }
}

static void h_flood(sp_http_req *req, void *ud) {
  if (sp_http_stream_begin(req, 200, sse_headers, 2))
    return;
  deferred *d = defer(ud, req, 1, 5, flood_tick);
  sp_http_req_on_abort(req, flood_abort, d);
}

static void h_big(sp_http_req *req, void *ud) {
  (void)ud;
  static char big[1024 * 1024];
  memset(big, 'b', sizeof big);
  sp_http_header h[] = {{"Content-Type", "text/plain"}};
  sp_http_respond(req, 200, h, 1, big, sizeof big);
}

static void h_json(sp_http_req *req, void *ud) {
  (void)ud;
  json_t *j;
  char err[200];
  if (sp_http_req_json(req, &j, err, sizeof err)) {
    sp_http_respond_error(req, 400, err, NULL);
    return;
  }
  const char *name = json_string_value(json_object_get(j, "name"));
  if (name == NULL)
    sp_http_respond_error(req, 422, "name is required", "name");
  else
    respond_pack(req, 201, json_pack("{s:s}", "name", name));
  json_decref(j);
}

static void h_badheader(sp_http_req *req, void *ud) {
  app *a = ud;
  sp_http_header h[] = {{"X-Bad", "a\r\nInjected: yes"}};
  a->badhdr_rc = sp_http_respond(req, 200, h, 1, "x", 1);
}

static void h_mem_hold(sp_http_req *req, void *ud) {
  app *a = ud;
  a->mem_held[a->nmem_held++] = req;
}

static const sp_http_route routes[] = {
    {"GET", "/hello", h_hello},
    {"GET", "/ready", h_ready},
    {"POST", "/echo", h_echo},
    {"GET", "/v1/pages/{page_id}/incidents/{incident_id}", h_incident},
    {"PUT", "/v1/pages/{page_id}/incidents/{incident_id}", h_put_incident},
    {"GET", "/pages/{page_id}/*rest", h_rest},
    {"GET", "/query", h_query},
    {"GET", "/headers", h_headers},
    {"GET", "/slow", h_slow},
    {"GET", "/slow2", h_slow2},
    {"GET", "/hold", h_hold},
    {"GET", "/stream", h_stream},
    {"GET", "/events", h_events},
    {"GET", "/flood", h_flood},
    {"GET", "/big", h_big},
    {"POST", "/json", h_json},
    {"GET", "/badheader", h_badheader},
    {"GET", "/mem-hold", h_mem_hold},
};
#define NROUTES (sizeof routes / sizeof routes[0])

static void on_done_hook(void *arg, const char *method, const char *route,
                         int status, uint64_t ns) {
  app *a = arg;
  pthread_mutex_lock(&a->mu);
  a->hooks++;
  snprintf(a->hook_method, sizeof a->hook_method, "%s", method ? method : "");
  snprintf(a->hook_route, sizeof a->hook_route, "%s", route ? route : "");
  a->hook_status = status;
  a->hook_ns = ns;
  pthread_mutex_unlock(&a->mu);
}

/* ---- fixtures ------------------------------------------------------------ */

typedef struct fx {
  app app;
  hc_harness h;
} fx;

static fx *fx_start(const sp_http_config *cfg_in) {
  fx *f = calloc(1, sizeof *f);
  pthread_mutex_init(&f->app.mu, NULL);
  f->app.loop = &f->h.loop;
  sp_http_config cfg;
  if (cfg_in)
    cfg = *cfg_in;
  else
    sp_http_config_init(&cfg);
  cfg.on_done = on_done_hook;
  cfg.on_done_arg = &f->app;
  assert_int_equal(hc_harness_start(&f->h, &cfg, routes, NROUTES, &f->app), 0);
  assert_true(f->h.port > 0);
  return f;
}

static void fx_stop(fx *f) {
  assert_int_equal(hc_harness_stop(&f->h), 0);
  pthread_mutex_destroy(&f->app.mu);
  free(f);
}

static int setup(void **state) {
  *state = fx_start(NULL);
  return 0;
}

static int teardown(void **state) {
  fx_stop(*state);
  return 0;
}

static void get_conns(hc_harness *h, void *arg) {
  *(size_t *)arg = h->srv ? sp_http_server_connections(h->srv) : 0;
}

static size_t conns(fx *f) {
  size_t n;
  hc_on_loop(&f->h, get_conns, &n);
  return n;
}

/* Polls until *flag reaches want (5 s at most). */
static int wait_flag(atomic_int *flag, int want) {
  for (int i = 0; i < 500; i++) {
    if (*flag >= want)
      return 1;
    usleep(10000);
  }
  return 0;
}

static int wait_conns(fx *f, size_t want) {
  for (int i = 0; i < 500; i++) {
    if (conns(f) == want)
      return 1;
    usleep(10000);
  }
  return 0;
}

/* One request on a fresh connection; returns the response. */
static void request(fx *f, const char *raw, hc_resp *r, int is_head) {
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, raw), 0);
  assert_int_equal(hc_read(&c, r, is_head), 0);
  hc_close(&c);
}

static void assert_json_error(const hc_resp *r, int status,
                              const char *message_part) {
  assert_int_equal(r->status, status);
  assert_string_equal(hc_header(r, "Content-Type"), "application/json");
  json_error_t je;
  json_t *j = json_loadb(r->body, r->body_len, 0, &je);
  assert_non_null(j);
  const char *m = json_string_value(json_object_get(j, "message"));
  assert_non_null(m);
  if (message_part && strstr(m, message_part) == NULL)
    fail_msg("message \"%s\" lacks \"%s\"", m, message_part);
  json_decref(j);
}

/* ---- tests ------------------------------------------------------------- */

static void test_simple_get(void **state) {
  fx *f = *state;
  hc_resp r;
  request(f, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", &r, 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(hc_header(&r, "Content-Type"), "application/json");
  assert_string_equal(hc_header(&r, "Content-Length"), "17");
  assert_non_null(hc_header(&r, "Date"));
  assert_true(strstr(hc_header(&r, "Date"), "GMT") != NULL);
  assert_null(hc_header(&r, "Connection"));
  assert_string_equal(r.body, "{\"hello\":\"world\"}");
  assert_true(r.keep_alive);
  hc_resp_free(&r);
}

static void test_keep_alive(void **state) {
  fx *f = *state;
  assert_true(wait_conns(f, 0));
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(hc_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    hc_resp r;
    assert_int_equal(hc_read(&c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"hello\":\"world\"}");
    hc_resp_free(&r);
  }
  assert_int_equal(conns(f), 1); /* all five on one connection */
  hc_close(&c);
  assert_true(wait_conns(f, 0));
}

static void test_pipelined_in_order(void **state) {
  fx *f = *state;
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  /* the first is answered 100 ms later, the others at once: order holds */
  assert_int_equal(hc_send(&c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                               "GET /v1/pages/p/incidents/i HTTP/1.1\r\n\r\n"),
                   0);
  const char *want[] = {"{\"slow\":true}", "{\"hello\":\"world\"}",
                        "{\"incident\":\"i\",\"page\":\"p\"}"};
  for (int i = 0; i < 3; i++) {
    hc_resp r;
    assert_int_equal(hc_read(&c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, want[i]);
    hc_resp_free(&r);
  }
  hc_close(&c);
}

static void test_deep_pipeline_over_socket(void **state) {
  fx *f = *state;
  /* 100 requests in one write: more than the parse-ahead bound (16), so
   * parsing pauses and resumes while the answers go out in order */
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  char *all = malloc(100 * 64);
  size_t n = 0;
  for (int i = 0; i < 100; i++)
    n += (size_t)sprintf(all + n, "GET /query?q=%d HTTP/1.1\r\n\r\n", i);
  assert_int_equal(hc_sendn(&c, all, n), 0);
  free(all);
  for (int i = 0; i < 100; i++) {
    hc_resp r;
    char want[64];
    snprintf(want, sizeof want, "{\"q\":\"%d\",\"raw\":\"q=%d\",\"rc\":0}", i, i);
    assert_int_equal(hc_read(&c, &r, 0), 0);
    assert_string_equal(r.body, want);
    hc_resp_free(&r);
  }
  hc_close(&c);
}

static void test_output_stall_closes(void **state) {
  (void)state;
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.idle_timeout_ms = 300;
  fx *f = fx_start(&cfg);
  hc_conn c;
  assert_int_equal(hc_open_rcvbuf(&c, f->h.port, 65536), 0);
  /* 20 x 1 MiB answers asked for, none read: the server stops starting
   * new requests above its high-water mark and gives up on a client that
   * does not read for idle_timeout_ms */
  for (int i = 0; i < 20; i++)
    assert_int_equal(hc_send(&c, "GET /big HTTP/1.1\r\n\r\n"), 0);
  assert_true(wait_conns(f, 1)); /* accepted... */
  assert_true(wait_conns(f, 0)); /* ...and given up on */
  size_t total = 0;
  char b[65536];
  ssize_t r;
  while ((r = recv(c.fd, b, sizeof b, 0)) > 0)
    total += (size_t)r;
  assert_true(r == 0 || errno == ECONNRESET);
  if (total >= 20u * 1024 * 1024)
    fail_msg("received %zu bytes", total);
  hc_close(&c);
  fx_stop(f);
}

static void test_http10_without_host(void **state) {
  fx *f = *state;
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /ready HTTP/1.0\r\n\r\n"), 0);
  hc_resp r;
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"ready\":true}");
  assert_string_equal(hc_header(&r, "Connection"), "close");
  assert_false(r.keep_alive);
  hc_resp_free(&r);
  assert_true(hc_wait_eof(&c, 3000));
  hc_close(&c);

  /* HTTP/1.0 that asks for keep-alive keeps the connection */
  assert_int_equal(hc_open(&c, f->h.port), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(
        hc_send(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_int_equal(hc_read(&c, &r, 0), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(hc_header(&r, "Connection"), "keep-alive");
    hc_resp_free(&r);
  }
  hc_close(&c);
}

static void test_post_bodies(void **state) {
  fx *f = *state;
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 10\r\n\r\nhello body"),
                   0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello body");
  assert_string_equal(hc_header(&r, "Content-Type"), "text/plain");
  hc_resp_free(&r);

  /* chunked, sent in pieces */
  assert_int_equal(hc_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n5\r\nhel"),
                   0);
  usleep(20000);
  assert_int_equal(hc_send(&c, "lo\r\n6\r\n world\r\n0\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "hello world");
  hc_resp_free(&r);

  /* Expect: 100-continue gets an interim response before the body */
  assert_int_equal(hc_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\n"
                               "Expect: 100-continue\r\n"
                               "Content-Length: 3\r\n\r\n"),
                   0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 100);
  hc_resp_free(&r);
  assert_int_equal(hc_send(&c, "abc"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "abc");
  hc_resp_free(&r);
  hc_close(&c);
}

static void test_404_405(void **state) {
  fx *f = *state;
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /nope HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 404, "not found");
  hc_resp_free(&r);
  assert_int_equal(
      hc_send(&c, "DELETE /v1/pages/a/incidents/b HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 405, "method not allowed");
  assert_string_equal(hc_header(&r, "Allow"), "GET, HEAD, PUT");
  hc_resp_free(&r);
  /* neither is a protocol error: the connection goes on */
  assert_int_equal(hc_send(&c, "PUT /v1/pages/a/incidents/b HTTP/1.1\r\n"
                               "Content-Length: 0\r\n\r\n"),
                   0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 204);
  assert_null(hc_header(&r, "Content-Length"));
  hc_resp_free(&r);
  hc_close(&c);
}

static void test_head(void **state) {
  fx *f = *state;
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 1), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(hc_header(&r, "Content-Length"), "17");
  assert_int_equal(r.body_len, 0);
  hc_resp_free(&r);
  /* no body bytes were sent: the next response parses cleanly */
  assert_int_equal(hc_send(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_string_equal(r.body, "{\"hello\":\"world\"}");
  hc_resp_free(&r);
  hc_close(&c);
}

static void test_path_and_query_params(void **state) {
  fx *f = *state;
  hc_resp r;
  request(f, "GET /v1/pages/p%201/incidents/i%2F2 HTTP/1.1\r\n\r\n", &r, 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"incident\":\"i/2\",\"page\":\"p 1\"}");
  hc_resp_free(&r);

  request(f, "GET /pages/abc/api/v2/summary.json HTTP/1.1\r\n\r\n", &r, 0);
  assert_string_equal(r.body,
                      "{\"page\":\"abc\",\"rest\":\"api/v2/summary.json\"}");
  hc_resp_free(&r);
  request(f, "GET /pages/abc/ HTTP/1.1\r\n\r\n", &r, 0);
  assert_string_equal(r.body, "{\"page\":\"abc\",\"rest\":\"\"}");
  hc_resp_free(&r);
  request(f, "GET /pages/abc HTTP/1.1\r\n\r\n", &r, 0);
  assert_int_equal(r.status, 404);
  hc_resp_free(&r);
  request(f, "GET /v1/pages/%zz/incidents/1 HTTP/1.1\r\n\r\n", &r, 0);
  assert_json_error(&r, 400, "percent-encoding");
  hc_resp_free(&r);

  request(f, "GET /query?a=1&q=hello+world%21&b HTTP/1.1\r\n\r\n", &r, 0);
  assert_string_equal(
      r.body, "{\"q\":\"hello world!\",\"raw\":\"a=1&q=hello+world%21&b\",\"rc\":0}");
  hc_resp_free(&r);
  request(f, "GET /query?x=1 HTTP/1.1\r\n\r\n", &r, 0);
  char want[96];
  snprintf(want, sizeof want, "{\"q\":null,\"raw\":\"x=1\",\"rc\":%d}",
           SP_ERR_NOENT);
  assert_string_equal(r.body, want);
  hc_resp_free(&r);
  request(f, "GET /query?%71=%zz HTTP/1.1\r\n\r\n", &r, 0);
  snprintf(want, sizeof want, "{\"q\":null,\"raw\":\"%%71=%%zz\",\"rc\":%d}",
           SP_ERR_PARSE);
  assert_string_equal(r.body, want);
  hc_resp_free(&r);
  request(f, "GET /query?q HTTP/1.1\r\n\r\n", &r, 0);
  assert_string_equal(r.body, "{\"q\":\"\",\"raw\":\"q\",\"rc\":0}");
  hc_resp_free(&r);
  request(f, "GET /query HTTP/1.1\r\n\r\n", &r, 0);
  snprintf(want, sizeof want, "{\"q\":null,\"raw\":\"\",\"rc\":%d}",
           SP_ERR_NOENT);
  assert_string_equal(r.body, want);
  hc_resp_free(&r);
  /* absolute-form target */
  request(f, "GET http://example.com/query?q=abs HTTP/1.1\r\n\r\n", &r, 0);
  assert_string_equal(r.body, "{\"q\":\"abs\",\"raw\":\"q=abs\",\"rc\":0}");
  hc_resp_free(&r);
}

static void test_headers_case_insensitive(void **state) {
  fx *f = *state;
  hc_resp r;
  request(f, "GET /headers HTTP/1.1\r\nHost: t\r\nx-tEsT: v 1\r\nX-Empty:\r\n\r\n",
          &r, 0);
  assert_string_equal(r.body, "{\"count\":3,\"x_test\":\"v 1\"}");
  hc_resp_free(&r);
}

static void test_malformed_is_400(void **state) {
  fx *f = *state;
  const char *bad[] = {
      "GARBAGE\r\n\r\n",
      "GET /hello HTTP/1.1\r\nBad Header\r\n\r\n",
      "GET /hello HTTP/x.1\r\n\r\n",
      "GET /hello HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
      "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    hc_conn c;
    hc_resp r;
    assert_int_equal(hc_open(&c, f->h.port), 0);
    assert_int_equal(hc_send(&c, bad[i]), 0);
    assert_int_equal(hc_read(&c, &r, 0), 0);
    assert_json_error(&r, 400, NULL);
    assert_string_equal(hc_header(&r, "Connection"), "close");
    hc_resp_free(&r);
    assert_true(hc_wait_eof(&c, 3000));
    hc_close(&c);
  }
  /* a good request before a bad one is still answered, first */
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(
      hc_send(&c, "GET /slow HTTP/1.1\r\n\r\nBROKEN\x01 / HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_null(hc_header(&r, "Connection"));
  hc_resp_free(&r);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 400, NULL);
  hc_resp_free(&r);
  hc_close(&c);
  /* HTTP/2 preface-like version */
  request(f, "GET /hello HTTP/2.0\r\n\r\n", &r, 0);
  assert_json_error(&r, 505, "version");
  hc_resp_free(&r);
}

static char *big_header_request(size_t head_size) {
  /* "GET /hello HTTP/1.1\r\nX: " + value + "\r\n\r\n" == head_size */
  const char *pre = "GET /hello HTTP/1.1\r\nX: ";
  size_t fixed = strlen(pre) + 4;
  char *s = malloc(head_size + 1);
  strcpy(s, pre);
  memset(s + strlen(pre), 'v', head_size - fixed);
  strcpy(s + head_size - 4, "\r\n\r\n");
  return s;
}

static void test_header_limit_431(void **state) {
  fx *f = *state;
  hc_resp r;
  char *ok = big_header_request(16 * 1024);
  request(f, ok, &r, 0);
  assert_int_equal(r.status, 200); /* exactly at the limit */
  hc_resp_free(&r);
  free(ok);
  char *big = big_header_request(16 * 1024 + 1);
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, big), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 431, "too large");
  assert_string_equal(hc_header(&r, "Connection"), "close");
  hc_resp_free(&r);
  assert_true(hc_wait_eof(&c, 3000));
  hc_close(&c);
  free(big);
  /* an endless header section is cut at the limit, not buffered */
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /hello HTTP/1.1\r\n"), 0);
  char line[1024];
  memset(line, 'h', sizeof line);
  memcpy(line, "X-Pad: ", 7);
  memcpy(line + sizeof line - 2, "\r\n", 2);
  for (int i = 0; i < 40; i++)
    if (hc_sendn(&c, line, sizeof line))
      break; /* the server may already have closed */
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 431, NULL);
  hc_resp_free(&r);
  hc_close(&c);
  /* a target alone over the limit */
  char *url = malloc(20000);
  strcpy(url, "GET /");
  memset(url + 5, 'u', 17000);
  strcpy(url + 17005, " HTTP/1.1\r\n\r\n");
  request(f, url, &r, 0);
  assert_json_error(&r, 414, NULL);
  hc_resp_free(&r);
  free(url);
  /* too many header fields */
  char *many = malloc(200 * 8 + 64);
  strcpy(many, "GET /hello HTTP/1.1\r\n");
  for (int i = 0; i < 101; i++)
    strcat(many, "A: b\r\n");
  strcat(many, "\r\n");
  request(f, many, &r, 0);
  assert_json_error(&r, 431, "too many");
  hc_resp_free(&r);
  free(many);
}

static void test_body_limit_413(void **state) {
  fx *f = *state;
  hc_resp r;
  /* declared too big: refused before any body byte */
  request(f, "POST /echo HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", &r, 0);
  assert_json_error(&r, 413, "too large");
  assert_string_equal(hc_header(&r, "Connection"), "close");
  hc_resp_free(&r);
  /* exactly the limit is fine */
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  char *body = malloc(1024 * 1024);
  memset(body, 'x', 1024 * 1024);
  assert_int_equal(hc_send(&c, "POST /echo HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n"), 0);
  assert_int_equal(hc_sendn(&c, body, 1024 * 1024), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body_len, 1024 * 1024);
  hc_resp_free(&r);
  hc_close(&c);
  /* chunked growing past it */
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
  for (int i = 0; i < 18; i++) { /* 18 x 64 KiB > 1 MiB */
    if (hc_send(&c, "10000\r\n") || hc_sendn(&c, body, 65536) ||
        hc_send(&c, "\r\n"))
      break;
  }
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 413, "too large");
  hc_resp_free(&r);
  hc_close(&c);
  free(body);
}

static void test_header_timeout_408(void **state) {
  (void)state;
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.header_timeout_ms = 200;
  fx *f = fx_start(&cfg);
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_json_error(&r, 408, "timed out");
  assert_string_equal(hc_header(&r, "Connection"), "close");
  hc_resp_free(&r);
  assert_true(hc_wait_eof(&c, 3000));
  hc_close(&c);
  /* trickling bytes does not extend it: the clock starts at the first byte */
  assert_int_equal(hc_open(&c, f->h.port), 0);
  const char *slow = "GET /hello HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
  int got408 = 0;
  for (size_t i = 0; slow[i] && !got408; i++) {
    if (hc_sendn(&c, &slow[i], 1))
      break;
    struct pollfd p = {c.fd, POLLIN, 0};
    if (poll(&p, 1, 40) > 0)
      got408 = 1;
  }
  assert_true(got408);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 408);
  hc_resp_free(&r);
  hc_close(&c);
  fx_stop(f);
}

static void test_idle_timeout(void **state) {
  (void)state;
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.idle_timeout_ms = 200;
  fx *f = fx_start(&cfg);
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /hello HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  hc_resp_free(&r);
  assert_true(hc_wait_eof(&c, 3000)); /* closed silently */
  hc_close(&c);
  /* a connection that never sends is closed too */
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_true(hc_wait_eof(&c, 3000));
  hc_close(&c);
  assert_true(wait_conns(f, 0));
  fx_stop(f);
}

static void test_early_close_and_reset(void **state) {
  fx *f = *state;
  /* gdnsd's checker: request, read 13 bytes, reset */
  for (int i = 0; i < 20; i++) {
    hc_conn c;
    assert_int_equal(hc_open(&c, f->h.port), 0);
    assert_int_equal(hc_send(&c, i % 2 ? "GET /ready HTTP/1.0\r\n\r\n"
                                       : "GET /big HTTP/1.0\r\n\r\n"),
                     0);
    char b[13];
    size_t got = 0;
    while (got < sizeof b) {
      ssize_t n = recv(c.fd, b + got, sizeof b - got, 0);
      assert_true(n > 0);
      got += (size_t)n;
    }
    assert_memory_equal(b, "HTTP/1.1 200 ", 13);
    hc_reset(&c);
  }
  /* closing mid-request and before any byte */
  for (int i = 0; i < 10; i++) {
    hc_conn c;
    assert_int_equal(hc_open(&c, f->h.port), 0);
    if (i % 2)
      hc_send(&c, "GET /hel");
    hc_reset(&c);
  }
  hc_resp r;
  request(f, "GET /hello HTTP/1.1\r\n\r\n", &r, 0);
  assert_int_equal(r.status, 200);
  hc_resp_free(&r);
  assert_true(wait_conns(f, 0));
}

static void test_async_answer_after_client_left(void **state) {
  fx *f = *state;
  f->app.aborts = 0;
  f->app.held_ready = 0;
  f->app.late_rc = 1;
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /hold HTTP/1.1\r\n\r\n"), 0);
  assert_true(wait_flag(&f->app.held_ready, 1));
  hc_close(&c);
  assert_true(wait_flag(&f->app.aborts, 1));
  assert_true(wait_conns(f, 0)); /* the connection is gone, the request not */
  pthread_mutex_lock(&f->app.mu);
  assert_int_equal(f->app.hook_status, 499);
  assert_string_equal(f->app.hook_route, "/hold");
  pthread_mutex_unlock(&f->app.mu);
  hc_on_loop(&f->h, answer_held, &f->app);
  assert_int_equal(f->app.late_rc, SP_ERR_CLOSED);
  assert_int_equal(f->app.aborts, 1);
}

static void test_streaming(void **state) {
  fx *f = *state;
  hc_conn c;
  hc_resp r;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /stream HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(hc_header(&r, "Transfer-Encoding"), "chunked");
  assert_string_equal(hc_header(&r, "Content-Type"), "text/event-stream");
  assert_null(hc_header(&r, "Content-Length"));
  assert_string_equal(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
  assert_true(r.chunks >= 3);
  hc_resp_free(&r);
  /* the stream ended cleanly: the connection goes on */
  assert_int_equal(hc_send(&c, "GET /hello HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_int_equal(r.status, 200);
  hc_resp_free(&r);
  hc_close(&c);
  /* HTTP/1.0: close-delimited */
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /stream HTTP/1.0\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c, &r, 0), 0);
  assert_null(hc_header(&r, "Transfer-Encoding"));
  assert_string_equal(hc_header(&r, "Connection"), "close");
  assert_string_equal(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
  hc_resp_free(&r);
  hc_close(&c);
}

static void test_stream_client_goes_away(void **state) {
  fx *f = *state;
  f->app.stream_aborts = 0;
  f->app.stream_end_rc = 1;
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /events HTTP/1.1\r\n\r\n"), 0);
  while (strstr(c.buf, "data: tick") == NULL)
    assert_int_equal(hc_fill(&c), 1);
  hc_close(&c);
  assert_true(wait_flag(&f->app.stream_aborts, 1));
  assert_int_equal(f->app.stream_end_rc, SP_ERR_CLOSED);
  assert_true(wait_conns(f, 0));
}

static void test_stream_slow_client_dropped(void **state) {
  fx *f = *state;
  f->app.flood_queued = 0;
  hc_conn c;
  assert_int_equal(hc_open_rcvbuf(&c, f->h.port, 65536), 0);
  assert_int_equal(hc_send(&c, "GET /flood HTTP/1.1\r\n\r\n"), 0);
  /* do not read: the handler sees its output queue grow and drops us */
  for (int i = 0; i < 500 && f->app.flood_queued == 0; i++)
    usleep(10000);
  assert_true(f->app.flood_queued > 1024 * 1024);
  assert_true(wait_conns(f, 0));
  /* what the kernel already had arrives, then the end */
  char b[65536];
  ssize_t n;
  while ((n = recv(c.fd, b, sizeof b, 0)) > 0)
    ;
  assert_true(n == 0 || errno == ECONNRESET);
  hc_close(&c);
}

static void do_shutdown_done(sp_http_server *srv, void *arg) {
  hc_harness *h = arg;
  h->done_called = 1;
  sp_http_server_free(srv);
  h->srv = NULL;
}

static void do_shutdown(hc_harness *h, void *arg) {
  *(int *)arg = sp_http_server_shutdown(h->srv, do_shutdown_done, h);
}

static void test_graceful_shutdown(void **state) {
  (void)state;
  fx *f = fx_start(NULL);
  hc_conn busy, idle;
  hc_resp r;
  assert_int_equal(hc_open(&idle, f->h.port), 0);
  assert_int_equal(hc_send(&idle, "GET /hello HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&idle, &r, 0), 0);
  hc_resp_free(&r);
  assert_int_equal(hc_open(&busy, f->h.port), 0);
  assert_int_equal(hc_send(&busy, "GET /slow2 HTTP/1.1\r\n\r\n"
                                  "GET /hello HTTP/1.1\r\n\r\n"),
                   0);
  assert_true(wait_flag(&f->app.slow_started, 1));
  int rc = -1;
  hc_on_loop(&f->h, do_shutdown, &rc);
  assert_int_equal(rc, 0);
  /* the idle connection closes at once, long before /slow2 answers */
  assert_true(hc_wait_eof(&idle, 700));
  hc_close(&idle);
  assert_int_equal(hc_connect_to("127.0.0.1", f->h.port), -1);
  /* the in-flight request finishes, with Connection: close */
  assert_int_equal(hc_read(&busy, &r, 0), 0);
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "{\"slow\":true}");
  assert_string_equal(hc_header(&r, "Connection"), "close");
  hc_resp_free(&r);
  /* the pipelined request behind it is not answered */
  assert_true(hc_wait_eof(&busy, 3000));
  hc_close(&busy);
  for (int i = 0; i < 500 && !f->h.done_called; i++)
    usleep(10000);
  assert_true(f->h.done_called);
  fx_stop(f); /* asserts uv_loop_close == 0 */
}

static void test_shutdown_deadline(void **state) {
  (void)state;
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.shutdown_timeout_ms = 200;
  fx *f = fx_start(&cfg);
  hc_conn c;
  assert_int_equal(hc_open(&c, f->h.port), 0);
  assert_int_equal(hc_send(&c, "GET /hold HTTP/1.1\r\n\r\n"), 0);
  assert_true(wait_flag(&f->app.held_ready, 1));
  int rc = -1;
  hc_on_loop(&f->h, do_shutdown, &rc);
  assert_int_equal(rc, 0);
  assert_true(hc_wait_eof(&c, 3000)); /* cut at the deadline */
  hc_close(&c);
  assert_true(wait_flag(&f->app.aborts, 1));
  for (int i = 0; i < 500 && !f->h.done_called; i++)
    usleep(10000);
  assert_true(f->h.done_called);
  /* the handler answers after the server is gone: dropped safely */
  hc_on_loop(&f->h, answer_held, &f->app);
  assert_int_equal(f->app.late_rc, SP_ERR_CLOSED);
  fx_stop(f);
}

static void sig_done(sp_http_server *srv, void *arg) {
  do_shutdown_done(srv, arg);
}

static void hook_signals(hc_harness *h, void *arg) {
  *(int *)arg = sp_http_server_handle_signals(h->srv, sig_done, h);
}

static void test_signal_shutdown(void **state) {
  (void)state;
  fx *f = fx_start(NULL);
  int rc = -1;
  hc_on_loop(&f->h, hook_signals, &rc);
  assert_int_equal(rc, 0);
  hc_on_loop(&f->h, hook_signals, &rc);
  assert_int_equal(rc, SP_ERR_BUSY);
  kill(getpid(), SIGTERM);
  for (int i = 0; i < 500 && !f->h.done_called; i++)
    usleep(10000);
  assert_true(f->h.done_called);
  fx_stop(f);
}

static void srv_done(sp_http_server *srv, void *arg) {
  (*(int *)arg)++;
  sp_http_server_free(srv);
}

static void test_reuseport_and_addresses(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sp_http_server *a, *b, *v6;
  assert_int_equal(sp_http_server_new(&loop, NULL, routes, NROUTES, NULL, &a), 0);
  assert_int_equal(sp_http_server_new(&loop, NULL, routes, NROUTES, NULL, &b), 0);
  assert_int_equal(sp_http_server_new(&loop, NULL, routes, NROUTES, NULL, &v6), 0);
  assert_int_equal(sp_http_server_listen(a, "127.0.0.1", 0), 0);
  int port = sp_http_server_port(a);
  assert_true(port > 0);
  assert_int_equal(sp_http_server_listen(b, "127.0.0.1", port), 0);
  assert_int_equal(sp_http_server_port(b), port);
  assert_int_equal(sp_http_server_listen(b, "127.0.0.1", port), SP_ERR_BUSY);
  /* a socket without SO_REUSEPORT cannot take the port */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  assert_int_not_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(errno, EADDRINUSE);
  close(fd);
  assert_int_equal(sp_http_server_listen(v6, "not-an-address", 0), SP_ERR_INVAL);
  int rc6 = sp_http_server_listen(v6, "::1", 0);
  assert_true(rc6 == 0 || rc6 == -EADDRNOTAVAIL || rc6 == -EAFNOSUPPORT);
  if (rc6 == 0)
    assert_true(sp_http_server_port(v6) > 0);
  int done = 0;
  assert_int_equal(sp_http_server_shutdown(a, srv_done, &done), 0);
  assert_int_equal(sp_http_server_shutdown(b, srv_done, &done), 0);
  assert_int_equal(sp_http_server_shutdown(v6, srv_done, &done), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(done, 3);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_two_servers_serve_one_port(void **state) {
  (void)state;
  /* both processes' worth of servers, here two loops in two threads */
  fx *f1 = fx_start(NULL);
  fx *f2 = calloc(1, sizeof *f2);
  pthread_mutex_init(&f2->app.mu, NULL);
  f2->app.loop = &f2->h.loop;
  hc_harness *h = &f2->h;
  memset(h, 0, sizeof *h);
  assert_int_equal(uv_loop_init(&h->loop), 0);
  sem_init(&h->cmd_done, 0, 0);
  uv_async_init(&h->loop, &h->wake, hc__on_wake);
  h->wake.data = h;
  assert_int_equal(sp_http_server_new(&h->loop, NULL, routes, NROUTES,
                                       &f2->app, &h->srv), 0);
  assert_int_equal(sp_http_server_listen(h->srv, "127.0.0.1", f1->h.port), 0);
  h->port = f1->h.port;
  assert_int_equal(pthread_create(&h->thread, NULL, hc__thread, h), 0);
  for (int i = 0; i < 40; i++) {
    hc_resp r;
    request(f1, "GET /hello HTTP/1.0\r\n\r\n", &r, 0);
    assert_int_equal(r.status, 200);
    hc_resp_free(&r);
  }
  fx_stop(f2);
  fx_stop(f1);
}

static void test_connection_cap(void **state) {
  (void)state;
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.max_connections = 2;
  fx *f = fx_start(&cfg);
  hc_conn c[3];
  hc_resp r;
  for (int i = 0; i < 2; i++) {
    assert_int_equal(hc_open(&c[i], f->h.port), 0);
    assert_int_equal(hc_send(&c[i], "GET /hello HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(hc_read(&c[i], &r, 0), 0);
    hc_resp_free(&r);
  }
  assert_int_equal(hc_open(&c[2], f->h.port), 0); /* the kernel accepts... */
  assert_true(hc_wait_eof(&c[2], 3000));           /* ...and we close it */
  hc_close(&c[2]);
  hc_close(&c[0]);
  assert_true(wait_conns(f, 1));
  assert_int_equal(hc_open(&c[2], f->h.port), 0);
  assert_int_equal(hc_send(&c[2], "GET /hello HTTP/1.1\r\n\r\n"), 0);
  assert_int_equal(hc_read(&c[2], &r, 0), 0);
  assert_int_equal(r.status, 200);
  hc_resp_free(&r);
  hc_close(&c[1]);
  hc_close(&c[2]);
  fx_stop(f);
}

static void test_completion_hook(void **state) {
  fx *f = *state;
  hc_resp r;
  pthread_mutex_lock(&f->app.mu);
  int before = f->app.hooks;
  pthread_mutex_unlock(&f->app.mu);
  request(f, "GET /v1/pages/a/incidents/b HTTP/1.1\r\n\r\n", &r, 0);
  hc_resp_free(&r);
  pthread_mutex_lock(&f->app.mu);
  assert_int_equal(f->app.hooks, before + 1);
  assert_string_equal(f->app.hook_method, "GET");
  assert_string_equal(f->app.hook_route,
                      "/v1/pages/{page_id}/incidents/{incident_id}");
  assert_int_equal(f->app.hook_status, 200);
  assert_true(f->app.hook_ns > 0);
  pthread_mutex_unlock(&f->app.mu);
  request(f, "POST /nowhere HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r, 0);
  hc_resp_free(&r);
  pthread_mutex_lock(&f->app.mu);
  assert_string_equal(f->app.hook_method, "POST");
  assert_string_equal(f->app.hook_route, "");
  assert_int_equal(f->app.hook_status, 404);
  pthread_mutex_unlock(&f->app.mu);
  request(f, "BAD\r\n\r\n", &r, 0);
  hc_resp_free(&r);
  pthread_mutex_lock(&f->app.mu);
  assert_int_equal(f->app.hook_status, 400);
  pthread_mutex_unlock(&f->app.mu);
}

static void test_json_body_and_errors(void **state) {
  fx *f = *state;
  hc_resp r;
  request(f, "POST /json HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"name\":\"inc\"}",
          &r, 0);
  assert_int_equal(r.status, 201);
  assert_string_equal(r.body, "{\"name\":\"inc\"}");
  hc_resp_free(&r);
  request(f, "POST /json HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"name\":", &r, 0);
  assert_json_error(&r, 400, "malformed JSON at line 1");
  hc_resp_free(&r);
  request(f, "POST /json HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r, 0);
  assert_json_error(&r, 400, "empty");
  hc_resp_free(&r);
  request(f, "POST /json HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"x\": 1}\n", &r, 0);
  assert_json_error(&r, 422, "name is required");
  assert_string_equal(r.body,
                      "{\"message\": \"name is required\", \"field\": \"name\"}");
  hc_resp_free(&r);
}

static void test_bad_response_header_gives_500(void **state) {
  fx *f = *state;
  hc_resp r;
  request(f, "GET /badheader HTTP/1.1\r\n\r\n", &r, 0);
  assert_json_error(&r, 500, "internal");
  assert_null(hc_header(&r, "Injected"));
  hc_resp_free(&r);
  assert_int_equal(f->app.badhdr_rc, SP_ERR_INVAL);
}

/* ---- sans-I/O engine -------------------------------------------------- */

static sp_http_server *mem_server(app *a, const sp_http_config *cfg) {
  sp_http_server *s;
  assert_int_equal(sp_http_server_new(NULL, cfg, routes, NROUTES, a, &s), 0);
  return s;
}

/* Output with Date lines removed (they may differ by a second). */
static char *drain_no_date(sp_http_conn *c) {
  sp_iov o = sp_http_conn_mem_output(c);
  char *s = malloc(o.len + 1);
  size_t n = 0;
  for (size_t i = 0; i < o.len;) {
    const char *eol = memchr(o.base + i, '\n', o.len - i);
    size_t len = eol ? (size_t)(eol - (o.base + i)) + 1 : o.len - i;
    if (!(len >= 6 && memcmp(o.base + i, "Date: ", 6) == 0)) {
      memcpy(s + n, o.base + i, len);
      n += len;
    }
    i += len;
  }
  s[n] = '\0';
  sp_http_conn_mem_consume(c, o.len);
  return s;
}

static const char pipeline[] =
    "GET /v1/pages/p1/incidents/i1?x=y HTTP/1.1\r\nHost: h\r\nX-Test: a\r\n\r\n"
    "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: t/p\r\n"
    "\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n"
    "HEAD /hello HTTP/1.1\r\n\r\n"
    "GET /headers HTTP/1.1\r\nx-test: split\r\n\r\n";

static void test_engine_split_input(void **state) {
  (void)state;
  app a;
  memset(&a, 0, sizeof a);
  sp_http_server *s = mem_server(&a, NULL);
  sp_http_conn *c;
  assert_int_equal(sp_http_conn_mem_new(s, &c), 0);
  assert_int_equal(sp_http_conn_mem_feed(c, pipeline, sizeof pipeline - 1), 0);
  char *whole = drain_no_date(c);
  assert_non_null(strstr(whole, "{\"incident\":\"i1\",\"page\":\"p1\"}"));
  assert_non_null(strstr(whole, "\r\n\r\nabcde"));
  assert_non_null(strstr(whole, "{\"count\":1,\"x_test\":\"split\"}"));
  sp_http_conn_mem_free(c);
  /* byte by byte, then every two-piece split: same bytes out */
  assert_int_equal(sp_http_conn_mem_new(s, &c), 0);
  for (size_t i = 0; i < sizeof pipeline - 1; i++)
    assert_int_equal(sp_http_conn_mem_feed(c, &pipeline[i], 1), 0);
  char *bytewise = drain_no_date(c);
  assert_string_equal(bytewise, whole);
  free(bytewise);
  sp_http_conn_mem_free(c);
  for (size_t cut = 1; cut < sizeof pipeline - 1; cut++) {
    assert_int_equal(sp_http_conn_mem_new(s, &c), 0);
    sp_http_conn_mem_feed(c, pipeline, cut);
    sp_http_conn_mem_feed(c, pipeline + cut, sizeof pipeline - 1 - cut);
    char *two = drain_no_date(c);
    assert_string_equal(two, whole);
    free(two);
    sp_http_conn_mem_free(c);
  }
  free(whole);
  sp_http_server_free(s);
}

static void test_engine_pipeline_is_bounded(void **state) {
  (void)state;
  app a;
  memset(&a, 0, sizeof a);
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.max_pipeline = 4;
  sp_http_server *s = mem_server(&a, &cfg);
  sp_http_conn *c;
  assert_int_equal(sp_http_conn_mem_new(s, &c), 0);
  char in[2000] = "";
  for (int i = 0; i < 20; i++)
    strcat(in, "GET /mem-hold HTTP/1.1\r\n\r\n");
  assert_int_equal(sp_http_conn_mem_feed(c, in, strlen(in)), 0);
  sp_http_conn_info info;
  sp_http_conn_mem_info(c, &info);
  assert_int_equal(a.nmem_held, 1); /* one handler at a time */
  assert_int_equal(info.pending, 4); /* parsed ahead up to the bound */
  assert_true(info.buffered > 0);   /* the rest waits unparsed */
  for (int i = 0; i < 20; i++) {
    assert_int_equal(a.nmem_held, i + 1);
    char body[16];
    int n = snprintf(body, sizeof body, "%d", i);
    sp_http_respond_json(a.mem_held[i], 200, body, (size_t)n);
  }
  sp_http_conn_mem_info(c, &info);
  assert_int_equal(info.pending, 0);
  assert_int_equal(info.buffered, 0);
  /* the 20 answers, in order */
  sp_iov o = sp_http_conn_mem_output(c);
  const char *p = o.base;
  for (int i = 0; i < 20; i++) {
    char want[32];
    snprintf(want, sizeof want, "\r\n\r\n%d", i);
    p = strstr(p, want);
    assert_non_null(p);
    p += strlen(want);
  }
  sp_http_conn_mem_free(c);
  sp_http_server_free(s);
}

static void test_engine_client_gone_with_pending(void **state) {
  (void)state;
  app a;
  memset(&a, 0, sizeof a);
  sp_http_server *s = mem_server(&a, NULL);
  sp_http_conn *c;
  assert_int_equal(sp_http_conn_mem_new(s, &c), 0);
  const char *in = "GET /mem-hold HTTP/1.1\r\n\r\nGET /mem-hold HTTP/1.1\r\n\r\n";
  assert_int_equal(sp_http_conn_mem_feed(c, in, strlen(in)), 0);
  assert_int_equal(a.nmem_held, 1);
  sp_http_conn_mem_free(c); /* the client left; the handler still holds */
  sp_http_server_free(s);   /* even the server is gone */
  assert_int_equal(sp_http_respond_json(a.mem_held[0], 200, "{}", 2),
                   SP_ERR_CLOSED);
}

static void test_engine_limits(void **state) {
  (void)state;
  app a;
  memset(&a, 0, sizeof a);
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.max_body_bytes = 10;
  sp_http_server *s = mem_server(&a, &cfg);
  struct {
    const char *in;
    const char *status;
  } cases[] = {
      {"POST /echo HTTP/1.1\r\nContent-Length: 11\r\n\r\n", "HTTP/1.1 413 "},
      {"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789",
       "HTTP/1.1 200 "},
      {"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
       "6\r\n012345\r\n5\r\n67890\r\n0\r\n\r\n",
       "HTTP/1.1 413 "},
      {"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
       "HTTP/1.1 400 "},
      {"\r\n\r\nGET /hello HTTP/1.1\r\n\r\n", "HTTP/1.1 200 "},
      {"GET /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
       "Content-Length: 3\r\n\r\n",
       "HTTP/1.1 400 "},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    sp_http_conn *c;
    assert_int_equal(sp_http_conn_mem_new(s, &c), 0);
    assert_int_equal(sp_http_conn_mem_feed(c, cases[i].in, strlen(cases[i].in)), 0);
    sp_iov o = sp_http_conn_mem_output(c);
    if (o.len < 13 || memcmp(o.base, cases[i].status, 13) != 0)
      fail_msg("case %zu: got \"%.*s\"", i, (int)(o.len < 40 ? o.len : 40), o.base);
    sp_http_conn_mem_free(c);
  }
  sp_http_server_free(s);
}

static void test_engine_alloc_failures(void **state) {
  (void)state;
  /* every allocation of server, connection and requests failing in turn */
  const char *in = "GET /v1/pages/p%20/incidents/i HTTP/1.1\r\nA: b\r\n\r\n"
                   "POST /json HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
                   "GET /query?q=a+b HTTP/1.1\r\n\r\n";
  int clean = 0;
  for (long k = 0; k < 200 && !clean; k++) {
    app a;
    memset(&a, 0, sizeof a);
    sp_alloc_fail_after(k);
    sp_http_server *s = NULL;
    sp_http_conn *c = NULL;
    int rc = sp_http_server_new(NULL, NULL, routes, NROUTES, &a, &s);
    if (rc == 0)
      rc = sp_http_conn_mem_new(s, &c);
    if (rc == 0)
      rc = sp_http_conn_mem_feed(c, in, strlen(in));
    if (rc) {
      assert_int_equal(rc, SP_ERR_NOMEM);
    } else {
      sp_iov o = sp_http_conn_mem_output(c);
      /* every request is answered, or the connection gave up cleanly */
      sp_http_conn_info info;
      sp_http_conn_mem_info(c, &info);
      assert_true(o.len > 0 || info.closed || info.closing);
      clean = memmem(o.base, o.len, "HTTP/1.1 422 ", 13) != NULL &&
              memmem(o.base, o.len, "a b", 3) != NULL;
    }
    sp_alloc_fail_after(-1);
    sp_http_conn_mem_free(c);
    sp_http_server_free(s);
  }
  assert_true(clean); /* the sweep reached the all-succeed case */
}

static void test_route_table_errors(void **state) {
  (void)state;
  sp_http_route bad[][1] = {
      {{"FETCH", "/x", h_hello}},
      {{"GET", "x", h_hello}},
      {{"GET", "/a/{}", h_hello}},
      {{"GET", "/a/*rest/b", h_hello}},
      {{"GET", "/a/{id}/{id}", h_hello}},
      {{"GET", "/a/{id", h_hello}},
      {{"GET", "/a", NULL}},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    sp_http_server *s = NULL;
    assert_int_equal(sp_http_server_new(NULL, NULL, bad[i], 1, NULL, &s),
                     SP_ERR_CONFIG);
    assert_null(s);
  }
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.max_pipeline = 0;
  sp_http_server *s = NULL;
  assert_int_equal(sp_http_server_new(NULL, &cfg, routes, NROUTES, NULL, &s),
                   SP_ERR_CONFIG);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_simple_get, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deep_pipeline_over_socket, setup, teardown),
      cmocka_unit_test(test_output_stall_closes),
      cmocka_unit_test_setup_teardown(test_http10_without_host, setup, teardown),
      cmocka_unit_test_setup_teardown(test_post_bodies, setup, teardown),
      cmocka_unit_test_setup_teardown(test_404_405, setup, teardown),
      cmocka_unit_test_setup_teardown(test_head, setup, teardown),
      cmocka_unit_test_setup_teardown(test_path_and_query_params, setup, teardown),
      cmocka_unit_test_setup_teardown(test_headers_case_insensitive, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_is_400, setup, teardown),
      cmocka_unit_test_setup_teardown(test_header_limit_431, setup, teardown),
      cmocka_unit_test_setup_teardown(test_body_limit_413, setup, teardown),
      cmocka_unit_test(test_header_timeout_408),
      cmocka_unit_test(test_idle_timeout),
      cmocka_unit_test_setup_teardown(test_early_close_and_reset, setup, teardown),
      cmocka_unit_test_setup_teardown(test_async_answer_after_client_left, setup, teardown),
      cmocka_unit_test_setup_teardown(test_streaming, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_client_goes_away, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_slow_client_dropped, setup, teardown),
      cmocka_unit_test(test_graceful_shutdown),
      cmocka_unit_test(test_shutdown_deadline),
      cmocka_unit_test(test_signal_shutdown),
      cmocka_unit_test(test_reuseport_and_addresses),
      cmocka_unit_test(test_two_servers_serve_one_port),
      cmocka_unit_test(test_connection_cap),
      cmocka_unit_test_setup_teardown(test_completion_hook, setup, teardown),
      cmocka_unit_test_setup_teardown(test_json_body_and_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_response_header_gives_500, setup, teardown),
      cmocka_unit_test(test_engine_split_input),
      cmocka_unit_test(test_engine_pipeline_is_bounded),
      cmocka_unit_test(test_engine_client_gone_with_pending),
      cmocka_unit_test(test_engine_limits),
      cmocka_unit_test(test_engine_alloc_failures),
      cmocka_unit_test(test_route_table_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
