/* Tests for api_auth (api/auth.h): the token bucket, the per-key limiter
 * table and the bulkhead as units with explicit times; key lookup against
 * an in-memory document; then, against a real statusd-api + PostgreSQL:
 * 401 for missing/invalid/revoked keys, page keys (created once, scoped,
 * 403 elsewhere, revocable), and the per-key rate limit (429 with
 * Retry-After and X-RateLimit-* headers, recovery after refill, refusals
 * counted in /metrics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "manage_itest.h"
#include "routes.h"
#include "sp_err.h"

/* ---- units --------------------------------------------------------------------------------- */

static void test_bucket(void **state) {
  (void)state;
  api_bucket b;
  api_rate r;
  api_bucket_init(&b, 5, 1000);
  for (unsigned i = 0; i < 5; i++) {
    api_bucket_take(&b, 2, 5, 1000, &r);
    assert_int_equal(r.allowed, 1);
    assert_int_equal(r.limit, 5);
    assert_int_equal(r.remaining, 4 - i);
  }
  api_bucket_take(&b, 2, 5, 1000, &r);
  assert_int_equal(r.allowed, 0);
  assert_int_equal(r.remaining, 0);
  assert_int_equal(r.retry_after_s, 1); /* 2 tokens/s: one in 0.5 s, rounded up */
  assert_int_equal(r.reset_s, 3);       /* 5 tokens at 2/s */
  api_bucket_take(&b, 2, 5, 1499, &r);  /* 0.998 tokens: not yet */
  assert_int_equal(r.allowed, 0);
  api_bucket_take(&b, 2, 5, 1500, &r);
  assert_int_equal(r.allowed, 1);
  /* a clock that goes back refills nothing and does not underflow */
  api_bucket_take(&b, 2, 5, 100, &r);
  assert_int_equal(r.allowed, 0);
  api_bucket_take(&b, 2, 5, 600, &r); /* +1 token since 100 */
  assert_int_equal(r.allowed, 1);
  /* a long pause refills to the burst, not beyond */
  api_bucket_take(&b, 2, 5, 1000000, &r);
  assert_int_equal(r.allowed, 1);
  assert_int_equal(r.remaining, 4);
  /* slow rates: retry-after rounds up to whole seconds */
  api_bucket_init(&b, 1, 0);
  api_bucket_take(&b, 0.25, 1, 0, &r);
  api_bucket_take(&b, 0.25, 1, 0, &r);
  assert_int_equal(r.allowed, 0);
  assert_int_equal(r.retry_after_s, 4);
}

static void test_ratelimit_table(void **state) {
  (void)state;
  api_ratelimit *rl;
  api_rate r;
  assert_int_equal(api_ratelimit_new(0, 5, 2, &rl), SP_ERR_INVAL);
  assert_int_equal(api_ratelimit_new(1, 0.5, 2, &rl), SP_ERR_INVAL);
  assert_int_equal(api_ratelimit_new(1, 2, 2, &rl), 0);
  /* keys have separate buckets */
  for (int i = 0; i < 2; i++) {
    assert_int_equal(api_ratelimit_take(rl, "aaaa", 0, &r), 0);
    assert_int_equal(r.allowed, 1);
  }
  assert_int_equal(api_ratelimit_take(rl, "aaaa", 0, &r), 0);
  assert_int_equal(r.allowed, 0);
  assert_int_equal(api_ratelimit_take(rl, "bbbb", 0, &r), 0);
  assert_int_equal(r.allowed, 1);
  assert_int_equal(api_ratelimit_count(rl), 2);
  /* full table, no bucket refilled: a new key passes unremembered */
  assert_int_equal(api_ratelimit_take(rl, "cccc", 0, &r), SP_ERR_BUSY);
  assert_int_equal(r.allowed, 1);
  assert_int_equal(api_ratelimit_count(rl), 2);
  /* "aaaa" still limited: the refusal above did not reset it */
  assert_int_equal(api_ratelimit_take(rl, "aaaa", 0, &r), 0);
  assert_int_equal(r.allowed, 0);
  /* later every bucket is full again: they are dropped to make room */
  assert_int_equal(api_ratelimit_take(rl, "cccc", 10000, &r), 0);
  assert_int_equal(r.allowed, 1);
  assert_int_equal(api_ratelimit_count(rl), 1);
  api_ratelimit_free(rl);
  api_ratelimit_free(NULL);
}

static void test_bulkhead(void **state) {
  (void)state;
  api_bulkhead b = {2, 0, 0};
  assert_int_equal(api_bulkhead_enter(&b), 0);
  assert_int_equal(api_bulkhead_enter(&b), 0);
  assert_int_equal(api_bulkhead_enter(&b), SP_ERR_BUSY);
  assert_int_equal(b.refused, 1);
  assert_int_equal(b.inflight, 2);
  api_bulkhead_leave(&b);
  assert_int_equal(api_bulkhead_enter(&b), 0);
  api_bulkhead_leave(&b);
  api_bulkhead_leave(&b);
  api_bulkhead_leave(&b); /* one too many: stays at 0 */
  assert_int_equal(b.inflight, 0);
  api_bulkhead zero = {0, 0, 0};
  assert_int_equal(api_bulkhead_enter(&zero), SP_ERR_BUSY);
  /* the process's bulkhead has the documented default budget */
  assert_int_equal(api_auth_bulkhead()->max, API_MANAGE_MAX_INFLIGHT);
}

static void test_parse_rate(void **state) {
  (void)state;
  double r, b;
  assert_int_equal(api_auth_parse_rate("10:100", &r, &b), 0);
  assert_true(r == 10 && b == 100);
  assert_int_equal(api_auth_parse_rate("0.5:5", &r, &b), 0);
  assert_true(r == 0.5 && b == 5);
  const char *bad[] = {"", "10", "10:", ":5", "0:5", "-1:5", "10:0", "x:y", "10:100x", "1e9:5",
                       "nan:5", NULL};
  for (int i = 0; bad[i]; i++)
    if (api_auth_parse_rate(bad[i], &r, &b) != SP_ERR_PARSE)
      fail_msg("'%s' accepted", bad[i]);
  assert_int_equal(api_auth_parse_rate(NULL, &r, &b), SP_ERR_PARSE);
}

static uint64_t g_seq;

static void doc_put(crdt_doc *d, const char *id, const char *field, const char *value) {
  crdt_change ch;
  memset(&ch, 0, sizeof ch);
  ch.kind = field ? CRDT_FIELD : CRDT_EXIST;
  ch.page = API_ORG_PAGE;
  ch.type = API_T_KEY;
  ch.id = id;
  ch.field = field;
  ch.value = (const uint8_t *)value;
  ch.value_len = value ? strlen(value) : 0;
  ch.value_null = value == NULL;
  ch.cl = 1;
  ch.stamp.hlc = ++g_seq << 16;
  ch.origin = 0;
  ch.seq = g_seq;
  assert_true(crdt_doc_merge(d, &ch) >= 0);
}

static void add_key(crdt_doc *d, const char *key, const char *scope, const char *page,
                    const char *revoked) {
  char h[65];
  api_key_hash_hex(key, h);
  doc_put(d, h, NULL, NULL);
  doc_put(d, h, "scope", scope);
  if (page)
    doc_put(d, h, "page_id", page);
  if (revoked)
    doc_put(d, h, "revoked_at", revoked);
}

static void test_lookup(void **state) {
  (void)state;
  crdt_doc *d;
  assert_int_equal(crdt_doc_new(NULL, &d), 0);
  add_key(d, "sp_org", "org", NULL, NULL);
  add_key(d, "sp_page", "page", "p1", NULL);
  add_key(d, "sp_gone", "page", "p1", "2026-01-01T00:00:00.000Z");
  add_key(d, "sp_odd", "superuser", NULL, NULL);
  add_key(d, "sp_nopage", "page", NULL, NULL);
  api_auth_key k;
  const char *why = NULL;
  assert_int_equal(api_auth_lookup(d, "sp_org", 6, &k, &why), 0);
  assert_int_equal(k.org, 1);
  char want[65];
  api_key_hash_hex("sp_org", want);
  assert_string_equal(k.hash, want);
  assert_true(api_auth_page_ok(&k, "anything"));
  assert_int_equal(api_auth_lookup(d, "sp_page", 7, &k, &why), 0);
  assert_int_equal(k.org, 0);
  assert_string_equal(k.page_id, "p1");
  assert_true(api_auth_page_ok(&k, "p1"));
  assert_false(api_auth_page_ok(&k, "p2"));
  assert_false(api_auth_page_ok(&k, NULL));
  /* a prefix of a key is a different key */
  assert_int_equal(api_auth_lookup(d, "sp_page", 6, &k, &why), SP_ERR_ACCES);
  const char *refused[] = {"sp_gone", "sp_odd", "sp_nopage", "nope", NULL};
  for (int i = 0; refused[i]; i++) {
    why = NULL;
    assert_int_equal(api_auth_lookup(d, refused[i], strlen(refused[i]), &k, &why), SP_ERR_ACCES);
    assert_non_null(why);
  }
  assert_int_equal(api_auth_lookup(d, "", 0, &k, &why), SP_ERR_ACCES);
  assert_non_null(strstr(why, "missing"));
  char big[API_KEY_MAX_LEN + 2];
  memset(big, 'k', sizeof big);
  assert_int_equal(api_auth_lookup(d, big, sizeof big, &k, &why), SP_ERR_ACCES);
  assert_int_equal(api_auth_lookup(d, "sp_\0org", 7, &k, &why), SP_ERR_ACCES);
  crdt_doc_free(d);
}

/* ---- against a real statusd-api ----------------------------------------------------------------- */

#define RATE_BURST 20

static api_harness g_h;

static int setup(void **state) {
  (void)state;
  setenv("SP_RATE_LIMIT", "5:20", 1);
  g_h.test_clock = 1;
  int rc = api_harness_start(&g_h);
  unsetenv("SP_RATE_LIMIT");
  return rc ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  api_harness_stop(&g_h);
  return 0;
}

/* An admin call that waits out the admin key's own bucket (the test clock
 * moves instead of sleeping). */
static json_t *admin(const char *method, const char *path, const char *body, int want) {
  for (int i = 0; i < 5; i++) {
    api_response r;
    int st = mt_req(&g_h, g_h.admin_key, method, path, body ? MT_JSON : NULL, body, &r);
    if (st == 429) {
      api_response_free(&r);
      mt_advance(&g_h, 5000);
      continue;
    }
    if (st != want)
      fail_msg("%s %s: %d, want %d: %.400s", method, path, st, want, r.body ? r.body : "");
    json_t *j = r.body_len ? mt_parse(&r) : NULL;
    api_response_free(&r);
    return j;
  }
  fail_msg("admin key kept being rate-limited");
  return NULL;
}

static void new_page(char out[64]) {
  json_t *p = admin("POST", "/v1/pages", "{\"page\":{\"name\":\"auth test\"}}", 201);
  snprintf(out, 64, "%s", mt_str(p, "id"));
  json_decref(p);
}

/* A page key for page (its secret into key, its id into id). */
static void new_page_key(const char *page, char key[128], char id[80]) {
  char path[128];
  snprintf(path, sizeof path, "/v1/pages/%s/api_keys", page);
  json_t *k = admin("POST", path, "{\"api_key\":{\"name\":\"ci\"}}", 201);
  assert_string_equal(mt_str(k, "scope"), "page");
  assert_string_equal(mt_str(k, "page_id"), page);
  assert_string_equal(mt_str(k, "name"), "ci");
  assert_non_null(mt_str(k, "created_at"));
  assert_true(json_is_null(json_object_get(k, "revoked_at")));
  assert_int_equal(strlen(mt_str(k, "id")), 64);
  assert_int_equal(strncmp(mt_str(k, "key"), "sp_", 3), 0);
  snprintf(key, 128, "%s", mt_str(k, "key"));
  snprintf(id, 80, "%s", mt_str(k, "id"));
  json_decref(k);
}

static void test_missing_and_invalid_keys(void **state) {
  (void)state;
  api_response r;
  char page[64], path[128], hv[256];
  new_page(page);
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  /* no key: 401 JSON with a challenge and no rate-limit headers */
  assert_int_equal(mt_req(&g_h, NULL, "GET", path, NULL, NULL, &r), 401);
  assert_non_null(strstr(r.body, "\"message\""));
  assert_non_null(api_response_header(&r, "WWW-Authenticate", hv, sizeof hv));
  assert_null(api_response_header(&r, "X-RateLimit-Limit", hv, sizeof hv));
  api_response_free(&r);
  mt_expect_error(&g_h, "sp_not_a_key", "GET", path, NULL, NULL, 401, NULL);
  mt_expect_error(&g_h, "", "GET", "/v1/pages", NULL, NULL, 401, NULL);
  /* another scheme, and an absurdly long key */
  assert_int_equal(api_request(&g_h, "GET", path, "Authorization: Basic dXNlcjpwdw==\r\n", NULL, &r),
                   0);
  assert_int_equal(r.status, 401);
  assert_non_null(strstr(r.body, "scheme"));
  api_response_free(&r);
  char big[600] = "Authorization: OAuth ";
  memset(big + strlen(big), 'x', 500);
  big[521] = '\0';
  strcat(big, "\r\n");
  assert_int_equal(api_request(&g_h, "GET", path, big, NULL, &r), 0);
  assert_int_equal(r.status, 401);
  api_response_free(&r);
  /* ?api_key= works as well as the header */
  char q[512];
  snprintf(q, sizeof q, "%s?api_key=wrong", path);
  mt_expect_error(&g_h, NULL, "GET", q, NULL, NULL, 401, NULL);
  snprintf(q, sizeof q, "%s?api_key=%s", path, g_h.admin_key);
  assert_int_equal(mt_req(&g_h, NULL, "GET", q, NULL, NULL, &r), 200);
  assert_string_equal(r.body, "[]");
  api_response_free(&r);
  /* "Bearer" is taken too */
  snprintf(hv, sizeof hv, "Authorization: Bearer %s\r\n", g_h.admin_key);
  assert_int_equal(api_request(&g_h, "GET", path, hv, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  api_response_free(&r);
}

static void test_page_keys_are_scoped(void **state) {
  (void)state;
  char a[64], b[64], key[128], kid[80], path[256];
  new_page(a);
  new_page(b);
  new_page_key(a, key, kid);
  /* its own page: read and write */
  snprintf(path, sizeof path, "/v1/pages/%s", a);
  json_t *p = mt_call(&g_h, key, "GET", path, NULL, 200);
  assert_string_equal(mt_str(p, "id"), a);
  json_decref(p);
  snprintf(path, sizeof path, "/v1/pages/%s/components", a);
  json_decref(mt_call(&g_h, key, "POST", path, "{\"component\":{\"name\":\"api\"}}", 201));
  /* GET /v1/pages lists only its page; the org key sees both */
  json_t *list = mt_call(&g_h, key, "GET", "/v1/pages", NULL, 200);
  assert_int_equal(json_array_size(list), 1);
  assert_string_equal(mt_str(json_array_get(list, 0), "id"), a);
  json_decref(list);
  list = admin("GET", "/v1/pages.json", NULL, 200);
  int seen = 0;
  for (size_t i = 0; i < json_array_size(list); i++)
    seen += !strcmp(mt_str(json_array_get(list, i), "id"), a) +
            !strcmp(mt_str(json_array_get(list, i), "id"), b);
  assert_int_equal(seen, 2);
  json_decref(list);
  /* another page: 403, and nothing is written */
  snprintf(path, sizeof path, "/v1/pages/%s", b);
  mt_expect_error(&g_h, key, "GET", path, NULL, NULL, 403, "page_id");
  snprintf(path, sizeof path, "/v1/pages/%s/components", b);
  mt_expect_error(&g_h, key, "POST", path, MT_JSON, "{\"component\":{\"name\":\"x\"}}", 403,
                  "page_id");
  json_t *comps = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(comps), 0);
  json_decref(comps);
  /* a page that does not exist: 403 for the page key (it may not know),
   * 404 for the org key */
  mt_expect_error(&g_h, key, "GET", "/v1/pages/nosuchpage/components", NULL, NULL, 403, NULL);
  mt_expect_error(&g_h, g_h.admin_key, "GET", "/v1/pages/nosuchpage/components", NULL, NULL, 404,
                  "page_id");
  /* organisation-only actions */
  mt_expect_error(&g_h, key, "POST", "/v1/pages", MT_JSON, "{\"page\":{\"name\":\"x\"}}", 403,
                  NULL);
  snprintf(path, sizeof path, "/v1/pages/%s/api_keys", a);
  mt_expect_error(&g_h, key, "POST", path, MT_JSON, "{}", 403, NULL);
}

static void test_revoked_key(void **state) {
  (void)state;
  char a[64], b[64], key[128], kid[80], path[256];
  new_page(a);
  new_page(b);
  new_page_key(a, key, kid);
  snprintf(path, sizeof path, "/v1/pages/%s/components", a);
  json_decref(mt_call(&g_h, key, "GET", path, NULL, 200));
  /* through the wrong page: not found, key still valid */
  char del[256];
  snprintf(del, sizeof del, "/v1/pages/%s/api_keys/%s", b, kid);
  mt_expect_error(&g_h, g_h.admin_key, "DELETE", del, NULL, NULL, 404, "id");
  json_decref(mt_call(&g_h, key, "GET", path, NULL, 200));
  snprintf(del, sizeof del, "/v1/pages/%s/api_keys/%s", a, kid);
  mt_expect_error(&g_h, key, "DELETE", del, NULL, NULL, 403, NULL); /* not by itself */
  json_t *k = admin("DELETE", del, NULL, 200);
  assert_string_equal(mt_str(k, "id"), kid);
  assert_null(json_object_get(k, "key")); /* the secret is never shown again */
  assert_non_null(mt_str(k, "revoked_at"));
  json_decref(k);
  mt_expect_error(&g_h, key, "GET", path, NULL, NULL, 401, NULL);
  mt_expect_error(&g_h, g_h.admin_key, "DELETE", del, NULL, NULL, 404, "id");
}

static unsigned header_u(const api_response *r, const char *name) {
  char v[64];
  if (api_response_header(r, name, v, sizeof v) == NULL)
    fail_msg("no %s header (status %d)", name, r->status);
  return (unsigned)strtoul(v, NULL, 10);
}

static double metric(const char *name) {
  api_response r;
  assert_int_equal(mt_req(&g_h, NULL, "GET", "/metrics", NULL, NULL, &r), 200);
  const char *p = strstr(r.body, name);
  while (p && p > r.body && p[-1] != '\n')
    p = strstr(p + 1, name);
  double v = p ? strtod(p + strlen(name), NULL) : -1;
  api_response_free(&r);
  return v;
}

static void test_rate_limit(void **state) {
  (void)state;
  char page[64], key[128], kid[80], path[256];
  new_page(page);
  new_page_key(page, key, kid); /* a fresh key: a full bucket of its own */
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  double before = metric("statusd_api_rate_limited_total");
  assert_true(before >= 0);
  int allowed = 0, last_remaining = RATE_BURST;
  api_response r;
  int st = 0;
  for (int i = 0; i < 3 * RATE_BURST; i++) {
    st = mt_req(&g_h, key, "GET", path, NULL, NULL, &r);
    assert_int_equal(header_u(&r, "X-RateLimit-Limit"), RATE_BURST);
    assert_true(header_u(&r, "X-RateLimit-Reset") > 1700000000u); /* a Unix time */
    if (st != 200)
      break;
    unsigned rem = header_u(&r, "X-RateLimit-Remaining");
    assert_true((int)rem < last_remaining + 2); /* goes down (refill may add one) */
    last_remaining = (int)rem;
    allowed++;
    api_response_free(&r);
  }
  assert_int_equal(st, 429);
  /* the burst, plus what refilled at 5/s while the loop ran */
  assert_true(allowed >= RATE_BURST && allowed <= RATE_BURST + 10);
  assert_true(header_u(&r, "Retry-After") >= 1);
  assert_int_equal(header_u(&r, "X-RateLimit-Remaining"), 0);
  json_t *e = mt_parse(&r);
  assert_non_null(strstr(mt_str(e, "message"), "rate limit"));
  json_decref(e);
  api_response_free(&r);
  /* writes are refused too, and nothing is written */
  mt_expect_error(&g_h, key, "POST", path, MT_JSON, "{\"component\":{\"name\":\"x\"}}", 429, NULL);
  /* other keys are not affected */
  json_t *c = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(c), 0);
  json_decref(c);
  assert_true(metric("statusd_api_rate_limited_total") >= before + 2);
  /* after the refill the key works again (the test clock moves 2 s) */
  mt_advance(&g_h, 2000);
  assert_int_equal(mt_req(&g_h, key, "GET", path, NULL, NULL, &r), 200);
  assert_true(header_u(&r, "X-RateLimit-Remaining") >= 8);
  api_response_free(&r);
}

int main(void) {
  const struct CMUnitTest units[] = {
      cmocka_unit_test(test_bucket),       cmocka_unit_test(test_ratelimit_table),
      cmocka_unit_test(test_bulkhead),     cmocka_unit_test(test_parse_rate),
      cmocka_unit_test(test_lookup),
  };
  const struct CMUnitTest live[] = {
      cmocka_unit_test(test_missing_and_invalid_keys),
      cmocka_unit_test(test_page_keys_are_scoped),
      cmocka_unit_test(test_revoked_key),
      cmocka_unit_test(test_rate_limit),
  };
  int failed = cmocka_run_group_tests_name("units", units, NULL, NULL);
  failed += cmocka_run_group_tests_name("statusd-api", live, setup, teardown);
  return failed;
}
