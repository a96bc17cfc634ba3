/* api_itest: small helpers the statusd-api integration tests share
 * (test_api_public_e2e, test_api_outage, test_api_procs): management calls
 * that parse their JSON answer and assert the status, rate-limit retries,
 * waiting for a condition with a deadline, timestamps, key-order checks.
 *
 * Everything is static (one copy per test binary) and asserts with cmocka,
 * so include it after <cmocka.h>.  JSON values returned are owned by the
 * caller (json_decref).
 */
#ifndef API_ITEST_H
#define API_ITEST_H

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api_harness.h"

#define IT_FN static __attribute__((unused))

IT_FN long long it_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

IT_FN void it_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1) {
  }
}

/* "2026-11-23T06:00:00.000Z" for now + offset_s (wall clock, as the server's
 * without a test clock). */
IT_FN void it_time(long offset_s, char out[40]) {
  time_t t = time(NULL) + offset_s;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 40, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

/* The body of r parsed as JSON (fails the test when it is not JSON). */
IT_FN json_t *it_json(const api_response *r) {
  json_error_t e;
  json_t *j = json_loadb(r->body, r->body_len, 0, &e);
  if (j == NULL)
    fail_msg("response (status %d) is not JSON: %s: %.300s", r->status, e.text, r->body);
  return j;
}

/* One request with the admin key, retried while the answer is 429 (the
 * per-key token bucket; the tests are bursty), up to ~5 s.  Returns the
 * status; *r is filled (free it). */
IT_FN int it_admin_raw(const api_harness *h, const char *method, const char *path,
                       const char *body, api_response *r) {
  long long end = it_now_ms() + 5000;
  for (;;) {
    int rc = api_admin(h, method, path, body, r);
    if (rc != 0)
      fail_msg("%s %s: request failed: %d", method, path, rc);
    if (r->status != 429 || it_now_ms() > end)
      return r->status;
    char ra[32];
    long wait = 200;
    if (api_response_header(r, "Retry-After", ra, sizeof ra))
      wait = atol(ra) > 0 ? atol(ra) * 1000 : 200;
    if (wait > 1000)
      wait = 1000;
    api_response_free(r);
    it_sleep_ms(wait);
  }
}

/* A management call that must answer `expect`; returns the parsed body
 * (NULL for an empty body).  The body text is printf-style. */
IT_FN json_t *it_admin(const api_harness *h, int expect, const char *method, const char *path,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
IT_FN json_t *it_admin(const api_harness *h, int expect, const char *method, const char *path,
                       const char *fmt, ...) {
  char *body = NULL;
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&body, fmt, ap) < 0)
      body = NULL;
    va_end(ap);
    assert_non_null(body);
  }
  api_response r;
  int st = it_admin_raw(h, method, path, body, &r);
  if (st != expect)
    fail_msg("%s %s %s: expected %d, got %d: %.500s", method, path, body ? body : "", expect,
             st, r.body);
  free(body);
  json_t *j = r.body_len ? it_json(&r) : NULL;
  api_response_free(&r);
  return j;
}

/* Copies string member `key` of obj into out (fails when absent). */
IT_FN void it_str(const json_t *obj, const char *key, char *out, size_t n) {
  const char *v = json_string_value(json_object_get(obj, key));
  if (v == NULL)
    fail_msg("no string \"%s\" in %s", key, json_dumps(obj, JSON_COMPACT));
  snprintf(out, n, "%s", v);
}

/* Creates a page and returns its id in out (12 chars + NUL). */
IT_FN void it_create_page(const api_harness *h, const char *name, const char *domain,
                          char out[32]) {
  json_t *p = it_admin(h, 201, "POST", "/v1/pages",
                       "{\"page\":{\"name\":\"%s\",\"domain\":\"%s\",\"url\":\"https://%s\","
                       "\"time_zone\":\"Etc/UTC\"}}",
                       name, domain, domain);
  it_str(p, "id", out, 32);
  json_decref(p);
}

/* Creates a component and returns its id. */
IT_FN void it_create_component(const api_harness *h, const char *page, const char *json_fields,
                               char out[32]) {
  char path[128];
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  json_t *c = it_admin(h, 201, "POST", path, "{\"component\":{%s}}", json_fields);
  it_str(c, "id", out, 32);
  json_decref(c);
}

/* Creates an incident (or maintenance) and returns its id. */
IT_FN void it_create_incident(const api_harness *h, const char *page, const char *json_fields,
                              char out[32]) {
  char path[128];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  json_t *c = it_admin(h, 201, "POST", path, "{\"incident\":{%s}}", json_fields);
  it_str(c, "id", out, 32);
  json_decref(c);
}

/* GET of a public document: status must be `expect`; returns the parsed
 * body (NULL for 304). */
IT_FN json_t *it_public(const api_harness *h, const char *path, const char *headers, int expect,
                        api_response *keep) {
  api_response r;
  int rc = api_request(h, "GET", path, headers, NULL, &r);
  if (rc != 0)
    fail_msg("GET %s: request failed: %d", path, rc);
  if (r.status != expect)
    fail_msg("GET %s: expected %d, got %d: %.300s", path, expect, r.status, r.body);
  json_t *j = r.body_len ? it_json(&r) : NULL;
  if (keep)
    *keep = r;
  else
    api_response_free(&r);
  return j;
}

/* Asserts that obj's keys are exactly `keys` (NULL-terminated), in order. */
IT_FN void it_keys(const json_t *obj, const char *const *keys, const char *what) {
  assert_true(json_is_object(obj));
  size_t i = 0;
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)obj, k, v) {
    (void)v;
    if (keys[i] == NULL)
      fail_msg("%s: unexpected extra key \"%s\"", what, k);
    if (strcmp(k, keys[i]) != 0)
      fail_msg("%s: key %zu is \"%s\", expected \"%s\"", what, i, k, keys[i]);
    i++;
  }
  if (keys[i] != NULL)
    fail_msg("%s: missing key \"%s\"", what, keys[i]);
}

/* The element of array `arr` whose "id" is `id`, or NULL. */
IT_FN json_t *it_find(const json_t *arr, const char *id) {
  size_t i;
  json_t *e;
  json_array_foreach((json_t *)arr, i, e) {
    const char *v = json_string_value(json_object_get(e, "id"));
    if (v && strcmp(v, id) == 0)
      return e;
  }
  return NULL;
}

IT_FN int it_str_eq(const json_t *obj, const char *key, const char *want) {
  const char *v = json_string_value(json_object_get(obj, key));
  return v && strcmp(v, want) == 0;
}

/* Polls GET /ready until it answers `status` (deadline ms).  1 when it did. */
IT_FN int it_wait_ready(const api_harness *h, int status, long ms) {
  long long end = it_now_ms() + ms;
  do {
    api_response r;
    if (api_request(h, "GET", "/ready", NULL, NULL, &r) == 0) {
      int st = r.status;
      api_response_free(&r);
      if (st == status)
        return 1;
    }
    it_sleep_ms(50);
  } while (it_now_ms() < end);
  return 0;
}

#endif
