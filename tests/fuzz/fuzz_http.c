/* libFuzzer target for the HTTP/1.1 engine (sp_http_conn, sans-I/O): the
 * input is the byte stream of one client connection, fed in pieces of
 * varying size (derived from the input length, so the seeds stay plain
 * HTTP).  Small limits make the 400/413/414/431 paths reachable.  Routes
 * answer synchronously, stream, or hold the request and answer after more
 * input or after the connection is gone (the detached-request path).
 * Invariant checked: the output is a sequence of responses starting with
 * "HTTP/1.1 ", and nothing leaks (ASan).
 *
 * Build (see the reply/Makefile rule):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib \
 *     tests/fuzz/fuzz_http.c lib/sp_http.c lib/sp_http_conn.c \
 *     lib/sp_http_route.c lib/sp_pool.c lib/sp_buf.c lib/sp_alloc.c \
 *     lib/sp_err.c lib/sp_log.c $(pkg-config --cflags --libs libuv jansson) \
 *     -lhttp_parser -o /tmp/fuzz_http
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sp_err.h"
#include "sp_http.h"

typedef struct fapp {
  sp_http_req *held[8];
  int nheld;
} fapp;

static void h_hello(sp_http_req *req, void *ud) {
  (void)ud;
  sp_http_respond_json(req, 200, "{\"hello\":\"world\"}", 17);
}

static void h_echo(sp_http_req *req, void *ud) {
  (void)ud;
  sp_iov b = sp_http_req_body(req);
  const char *ct = sp_http_req_header(req, "content-type");
  sp_http_header h[] = {{"Content-Type", ct && !strpbrk(ct, "\r\n") ? ct : "x/y"}};
  sp_http_respond(req, 200, h, 1, b.base, b.len);
}

static void h_json(sp_http_req *req, void *ud) {
  (void)ud;
  json_t *j;
  char err[128];
  if (sp_http_req_json(req, &j, err, sizeof err)) {
    sp_http_respond_error(req, 400, err, NULL);
    return;
  }
  json_decref(j);
  sp_http_respond_error(req, 422, "name is required", "name");
}

static void h_params(sp_http_req *req, void *ud) {
  (void)ud;
  const char *q = NULL;
  int rc = sp_http_req_query_param(req, "q", &q);
  const char *p = sp_http_req_param(req, "page_id");
  const char *r = sp_http_req_param(req, "rest");
  size_t n = (p ? strlen(p) : 0) + (r ? strlen(r) : 0) + (rc ? 0 : strlen(q));
  const char *name, *value;
  for (size_t i = 0; sp_http_req_header_at(req, i, &name, &value) == 0; i++)
    n += strlen(name) + strlen(value);
  sp_http_respond(req, n % 2 ? 200 : 204, NULL, 0, "x", 1);
}

static void h_stream(sp_http_req *req, void *ud) {
  (void)ud;
  static const sp_http_header h[] = {{"Content-Type", "text/event-stream"}};
  if (sp_http_stream_begin(req, 200, h, 1))
    return;
  sp_http_stream_write(req, "data: 1\n\n", 9);
  sp_http_stream_queued(req);
  sp_http_stream_end(req);
}

static void h_hold(sp_http_req *req, void *ud) {
  fapp *a = ud;
  if (a->nheld == 8) {
    sp_http_respond_error(req, 503, "busy", NULL);
    return;
  }
  a->held[a->nheld++] = req;
}

static const sp_http_route routes[] = {
    {"GET", "/hello", h_hello},
    {"POST", "/echo", h_echo},
    {"POST", "/json", h_json},
    {"GET", "/query", h_params},
    {"GET", "/v1/pages/{page_id}/incidents/{incident_id}", h_params},
    {"GET", "/pages/{page_id}/*rest", h_params},
    {"GET", "/stream", h_stream},
    {"GET", "/hold", h_hold},
    {"PUT", "/hold", h_hold},
};

static void answer_held(fapp *a, int keep) {
  while (a->nheld > keep) {
    sp_http_req *r = a->held[0];
    memmove(a->held, a->held + 1, (size_t)(a->nheld - 1) * sizeof a->held[0]);
    a->nheld--;
    sp_http_respond_json(r, 200, "{}", 2);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fapp a;
  memset(&a, 0, sizeof a);
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.max_header_bytes = 512;
  cfg.max_body_bytes = 256;
  cfg.max_pipeline = 3;
  cfg.max_pipeline_bytes = 1024;
  sp_http_server *srv;
  if (sp_http_server_new(NULL, &cfg, routes, sizeof routes / sizeof routes[0],
                         &a, &srv))
    abort();
  sp_http_conn *c;
  if (sp_http_conn_mem_new(srv, &c))
    abort();
  size_t total_out = 0, off = 0;
  int stuck = 0;
  unsigned k = (unsigned)size;
  while (off < size) {
    k = k * 1103515245u + 12345u;
    size_t step = 1 + (k >> 16) % 97;
    if (step > size - off)
      step = size - off;
    int rc = sp_http_conn_mem_feed(c, data + off, step);
    if (rc == 0)
      off += step;
    else if (rc != SP_ERR_AGAIN || ++stuck > 1000)
      break; /* closed; or input that can never be taken */
    /* answer held requests now and then, as a database reply would */
    if ((k >> 8) % 3 == 0 || rc == SP_ERR_AGAIN)
      answer_held(&a, 0);
    sp_iov o = sp_http_conn_mem_output(c);
    if (total_out == 0 && o.len >= 9 && memcmp(o.base, "HTTP/1.1 ", 9) != 0)
      abort();
    /* a slow reader: take part of the output */
    size_t take = (k >> 4) % 2 ? o.len : o.len / 2;
    total_out += take;
    sp_http_conn_mem_consume(c, take);
  }
  /* some answers come after the client left, even after the server died */
  answer_held(&a, (int)(size % 3));
  sp_http_conn_mem_free(c);
  sp_http_server_free(srv);
  answer_held(&a, 0);
  return 0;
}
