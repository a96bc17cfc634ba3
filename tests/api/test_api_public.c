/* Tests for api_public: the public read API and HTML page over the HTTP
 * core's in-memory connections (sp_http_conn_mem_*), with documents
 * rendered from an in-memory crdt_doc: page selection by Host and by
 * /pages/{id}, every v2 path, 404s (unknown page: JSON; unknown path:
 * empty), the caching and CORS headers, ETag / If-None-Match (304), HEAD,
 * CORS preflight, deleted pages, and hostile Host headers and paths.
 * No database: X-Cache-Status is "stale" here (no cache is running); the
 * fresh case needs a live cache and is covered by test_api_public_e2e. */
#include "api_testdoc.h"

#include <stdlib.h>
#include <strings.h>

#include "render.h"
#include "routes.h"

typedef struct fx {
  td t;
  api_server s;
  sp_http_server *srv;
} fx;

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  td_init(&f->t);
  td_scenario(&f->t);
  f->s.doc = f->t.doc;
  assert_int_equal(api_render_all(&f->s), 0);
  assert_int_equal(
      sp_http_server_new(NULL, NULL, api_public_routes, api_public_nroutes, &f->s, &f->srv), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  sp_http_server_free(f->srv);
  api_render_free(&f->s);
  crdt_doc_free(f->t.doc);
  free(f);
  return 0;
}

typedef struct resp {
  int status;
  char head[16384];
  char *body;
  size_t len;
} resp;

/* Sends one raw request on a fresh connection and parses the answer. */
static void rq(fx *f, const char *raw, resp *r) {
  sp_http_conn *c;
  memset(r, 0, sizeof *r);
  assert_int_equal(sp_http_conn_mem_new(f->srv, &c), 0);
  assert_int_equal(sp_http_conn_mem_feed(c, raw, strlen(raw)), 0);
  sp_iov o = sp_http_conn_mem_output(c);
  assert_true(o.len > 12);
  assert_int_equal(memcmp(o.base, "HTTP/1.1 ", 9), 0);
  r->status = atoi(o.base + 9);
  const char *end = memmem(o.base, o.len, "\r\n\r\n", 4);
  assert_non_null(end);
  size_t hl = (size_t)(end - o.base) + 2; /* keep the last CRLF for lookups */
  assert_true(hl < sizeof r->head);
  memcpy(r->head, o.base, hl);
  r->head[hl] = '\0';
  r->len = o.len - (size_t)(end + 4 - o.base);
  r->body = malloc(r->len + 1);
  memcpy(r->body, end + 4, r->len);
  r->body[r->len] = '\0';
  sp_http_conn_mem_free(c);
}

static void resp_free(resp *r) { free(r->body); }

/* The value of header `name` (case-insensitive) or NULL; static buffer. */
static const char *hdr(const resp *r, const char *name) {
  static char out[1024];
  size_t n = strlen(name);
  for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
      const char *v = line + n + 1;
      while (*v == ' ')
        v++;
      size_t len = strcspn(v, "\r");
      assert_true(len < sizeof out);
      memcpy(out, v, len);
      out[len] = '\0';
      return out;
    }
  }
  return NULL;
}

static void get(fx *f, const char *path, const char *host, const char *extra, resp *r) {
  char raw[8192];
  snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\n%s%s%s%s\r\n", path, host ? "Host: " : "",
           host ? host : "", host ? "\r\n" : "", extra ? extra : "");
  rq(f, raw, r);
}

static void assert_doc(fx *f, const resp *r, const char *page, api_doc_kind k) {
  api_doc *d = api_render_get(&f->s, page, k);
  assert_non_null(d);
  assert_int_equal(r->status, 200);
  assert_int_equal(r->len, d->len);
  assert_memory_equal(r->body, d->body, d->len);
  assert_string_equal(hdr(r, "ETag"), d->etag);
  api_doc_unref(d);
}

static const struct {
  const char *path;
  api_doc_kind kind;
} paths[] = {
    {"summary.json", API_DOC_SUMMARY},
    {"status.json", API_DOC_STATUS},
    {"components.json", API_DOC_COMPONENTS},
    {"incidents.json", API_DOC_INCIDENTS},
    {"incidents/unresolved.json", API_DOC_UNRESOLVED},
    {"scheduled-maintenances.json", API_DOC_MAINTENANCES},
    {"scheduled-maintenances/upcoming.json", API_DOC_MAINT_UPCOMING},
    {"scheduled-maintenances/active.json", API_DOC_MAINT_ACTIVE},
};
#define NPATHS (sizeof paths / sizeof paths[0])

static void test_every_path_by_prefix_and_host(void **state) {
  fx *f = *state;
  char path[256];
  resp r;
  for (size_t i = 0; i < NPATHS; i++) {
    snprintf(path, sizeof path, "/pages/pg1/api/v2/%s", paths[i].path);
    get(f, path, "unrelated.example", NULL, &r);
    assert_doc(f, &r, "pg1", paths[i].kind);
    assert_string_equal(hdr(&r, "Content-Type"), "application/json; charset=utf-8");
    resp_free(&r);
    snprintf(path, sizeof path, "/api/v2/%s", paths[i].path);
    get(f, path, "status.acme.test", NULL, &r);
    assert_doc(f, &r, "pg1", paths[i].kind);
    resp_free(&r);
  }
  /* Host: port stripped, case folded, a trailing dot ignored */
  const char *hosts[] = {"status.acme.test:8080", "STATUS.Acme.TEST", "status.acme.test.",
                         "status.acme.test.:443"};
  for (size_t i = 0; i < 4; i++) {
    get(f, "/api/v2/summary.json", hosts[i], NULL, &r);
    assert_doc(f, &r, "pg1", API_DOC_SUMMARY);
    resp_free(&r);
  }
}

static void test_html_routes(void **state) {
  fx *f = *state;
  resp r;
  const char *cases[][2] = {{"/", "status.acme.test"}, {"/pages/pg1", NULL}, {"/pages/pg1/", NULL}};
  for (size_t i = 0; i < 3; i++) {
    get(f, cases[i][0], cases[i][1], NULL, &r);
    assert_doc(f, &r, "pg1", API_DOC_HTML);
    assert_string_equal(hdr(&r, "Content-Type"), "text/html; charset=utf-8");
    assert_non_null(strstr(r.body, "<h1>Acme</h1>"));
    resp_free(&r);
  }
  get(f, "/", "nobody.example", NULL, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
}

static void test_not_found(void **state) {
  fx *f = *state;
  resp r;
  /* unknown page: JSON error, by prefix and by host (and without Host) */
  const char *cases[][2] = {{"/pages/nope/api/v2/summary.json", NULL},
                            {"/pages/nope", NULL},
                            {"/api/v2/summary.json", "other.example"},
                            {"/api/v2/summary.json", NULL},
                            {"/pages/nope/api/v2/bogus", NULL}};
  for (size_t i = 0; i < 5; i++) {
    get(f, cases[i][0], cases[i][1], NULL, &r);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.body, "{\"message\":\"page not found\"}");
    assert_string_equal(hdr(&r, "Content-Type"), "application/json; charset=utf-8");
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "*");
    resp_free(&r);
  }
  /* unknown path under a known page: 404, empty body, no Content-Type */
  const char *bad[][2] = {{"/pages/pg1/api/v2/bogus.json", NULL},
                          {"/pages/pg1/api/v2/", NULL},
                          {"/pages/pg1/api/v2/incidents/../summary.json", NULL},
                          {"/pages/pg1/api/v3/summary.json", NULL},
                          {"/pages/pg1/whatever", NULL},
                          {"/api/v2/summary", "status.acme.test"},
                          {"/api/v2/SUMMARY.JSON", "status.acme.test"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    get(f, bad[i][0], bad[i][1], NULL, &r);
    assert_int_equal(r.status, 404);
    assert_int_equal(r.len, 0);
    assert_null(hdr(&r, "Content-Type"));
    assert_string_equal(hdr(&r, "Content-Length"), "0");
    resp_free(&r);
  }
}

static void test_response_headers(void **state) {
  fx *f = *state;
  resp r;
  get(f, "/pages/pg1/api/v2/summary.json", NULL, NULL, &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(hdr(&r, "Cache-Control"),
                      "max-age=10, public, s-maxage=10, stale-while-revalidate=20, "
                      "stale-if-error=3600");
  assert_string_equal(hdr(&r, "Vary"), "Accept, Accept-Encoding");
  assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "*");
  assert_string_equal(hdr(&r, "Access-Control-Expose-Headers"), "ETag");
  assert_string_equal(hdr(&r, "X-Cache-Status"), "stale"); /* no cache runs here */
  const char *etag = hdr(&r, "ETag");
  assert_int_equal(strncmp(etag, "W/\"", 3), 0);
  char len[32];
  snprintf(len, sizeof len, "%zu", r.len);
  assert_string_equal(hdr(&r, "Content-Length"), len);
  resp_free(&r);
}

static void test_conditional_get(void **state) {
  fx *f = *state;
  resp r;
  get(f, "/pages/pg1/api/v2/summary.json", NULL, NULL, &r);
  char etag[64], strong[64], line[256];
  snprintf(etag, sizeof etag, "%s", hdr(&r, "ETag"));
  snprintf(strong, sizeof strong, "%s", etag + 2); /* "hex": weak comparison matches it */
  resp_free(&r);

  const char *matching[] = {etag, strong, "*", NULL};
  char list[200];
  snprintf(list, sizeof list, "\"nope\", W/\"other\" ,%s", etag);
  matching[3] = list;
  for (size_t i = 0; i < 4; i++) {
    snprintf(line, sizeof line, "If-None-Match: %s\r\n", matching[i]);
    get(f, "/pages/pg1/api/v2/summary.json", NULL, line, &r);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.len, 0);
    assert_string_equal(hdr(&r, "ETag"), etag);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "*");
    assert_non_null(hdr(&r, "Cache-Control"));
    resp_free(&r);
  }
  const char *other[] = {"W/\"0000\"", "garbage", "\"unterminated", ",,, ,", "W/"};
  for (size_t i = 0; i < 5; i++) {
    snprintf(line, sizeof line, "If-None-Match: %s\r\n", other[i]);
    get(f, "/pages/pg1/api/v2/summary.json", NULL, line, &r);
    assert_int_equal(r.status, 200);
    assert_true(r.len > 0);
    resp_free(&r);
  }
  /* the ETag of another document does not match this one */
  api_doc *st = api_render_get(&f->s, "pg1", API_DOC_STATUS);
  snprintf(line, sizeof line, "If-None-Match: %s\r\n", st->etag);
  api_doc_unref(st);
  get(f, "/pages/pg1/api/v2/summary.json", NULL, line, &r);
  assert_int_equal(r.status, 200);
  resp_free(&r);
  /* after a change the old tag no longer matches; the body shows the write */
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_api", "name", "API v2");
  api_render_page(&f->s, "pg1");
  snprintf(line, sizeof line, "If-None-Match: %s\r\n", etag);
  get(f, "/api/v2/summary.json", "status.acme.test", line, &r);
  assert_int_equal(r.status, 200);
  assert_string_not_equal(hdr(&r, "ETag"), etag);
  assert_non_null(strstr(r.body, "\"API v2\""));
  resp_free(&r);
}

static void test_head_and_methods(void **state) {
  fx *f = *state;
  resp r;
  rq(f, "HEAD /pages/pg1/api/v2/status.json HTTP/1.1\r\nHost: x\r\n\r\n", &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.len, 0);
  api_doc *d = api_render_get(&f->s, "pg1", API_DOC_STATUS);
  char len[32];
  snprintf(len, sizeof len, "%zu", d->len);
  assert_string_equal(hdr(&r, "Content-Length"), len);
  assert_string_equal(hdr(&r, "ETag"), d->etag);
  api_doc_unref(d);
  resp_free(&r);
  rq(f, "POST /pages/pg1/api/v2/status.json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &r);
  assert_int_equal(r.status, 405);
  resp_free(&r);
  rq(f, "DELETE /api/v2/summary.json HTTP/1.1\r\nHost: status.acme.test\r\n\r\n", &r);
  assert_int_equal(r.status, 405);
  resp_free(&r);
}

static void test_preflight(void **state) {
  fx *f = *state;
  resp r;
  rq(f,
     "OPTIONS /pages/pg1/api/v2/summary.json HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
     "Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: if-none-match\r\n\r\n",
     &r);
  assert_int_equal(r.status, 204);
  assert_int_equal(r.len, 0);
  assert_string_equal(hdr(&r, "Access-Control-Allow-Origin"), "*");
  assert_string_equal(hdr(&r, "Access-Control-Allow-Methods"), "GET, HEAD, OPTIONS");
  assert_string_equal(hdr(&r, "Access-Control-Allow-Headers"), "if-none-match");
  assert_non_null(hdr(&r, "Access-Control-Max-Age"));
  resp_free(&r);
  const char *more[] = {"/api/v2/status.json", "/", "/pages/pg1"};
  char raw[256];
  for (size_t i = 0; i < 3; i++) {
    snprintf(raw, sizeof raw, "OPTIONS %s HTTP/1.1\r\nHost: status.acme.test\r\n\r\n", more[i]);
    rq(f, raw, &r);
    assert_int_equal(r.status, 204);
    assert_string_equal(hdr(&r, "Access-Control-Allow-Methods"), "GET, HEAD, OPTIONS");
    assert_non_null(hdr(&r, "Access-Control-Allow-Headers"));
    resp_free(&r);
  }
}

static void test_deleted_page(void **state) {
  fx *f = *state;
  resp r;
  td_del(&f->t, "pg1", API_T_PAGE, "pg1");
  api_render_page(&f->s, "pg1");
  get(f, "/pages/pg1/api/v2/summary.json", NULL, NULL, &r);
  assert_int_equal(r.status, 404);
  assert_string_equal(r.body, "{\"message\":\"page not found\"}");
  resp_free(&r);
  get(f, "/api/v2/summary.json", "status.acme.test", NULL, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
  get(f, "/pages/pg1", NULL, NULL, &r);
  assert_int_equal(r.status, 404);
  resp_free(&r);
}

static void test_hostile_input(void **state) {
  fx *f = *state;
  resp r;
  char host[2048];
  memset(host, 'a', sizeof host - 1);
  host[sizeof host - 1] = '\0';
  const char *hosts[] = {host, "[::1]:8080", "[status.acme.test]", ":8080", ".", "[", "a:b:c"};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
    get(f, "/api/v2/summary.json", hosts[i], NULL, &r);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.body, "{\"message\":\"page not found\"}");
    resp_free(&r);
  }
  /* page ids are percent-decoded path parameters: encoded forms find the
   * page, junk does not */
  get(f, "/pages/pg%31/api/v2/status.json", NULL, NULL, &r);
  assert_doc(f, &r, "pg1", API_DOC_STATUS);
  resp_free(&r);
  const char *junk[] = {"/pages/%00/api/v2/status.json", "/pages/%ZZ/api/v2/status.json",
                        "/pages/pg1%2Fapi/v2/status.json",
                        "/pages/..%2F..%2Fetc/api/v2/status.json"};
  for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
    get(f, junk[i], NULL, NULL, &r);
    assert_true(r.status == 404 || r.status == 400);
    resp_free(&r);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_every_path_by_prefix_and_host, setup, teardown),
      cmocka_unit_test_setup_teardown(test_html_routes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
      cmocka_unit_test_setup_teardown(test_response_headers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_conditional_get, setup, teardown),
      cmocka_unit_test_setup_teardown(test_head_and_methods, setup, teardown),
      cmocka_unit_test_setup_teardown(test_preflight, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deleted_page, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hostile_input, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
