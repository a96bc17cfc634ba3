/* manage_itest: helpers shared by the management-API integration tests
 * (test_api_manage, test_api_auth, test_api_maint): requests with a given
 * key and content type, JSON answers checked against an expected status
 * (the failure message shows the body), and small JSON accessors.
 *
 * Everything is static (one copy per test binary) and asserts with cmocka:
 * include it after <cmocka.h>.  Returned json_t values belong to the caller
 * (json_decref); strings returned by mt_str are borrowed from their JSON.
 */
#ifndef MANAGE_ITEST_H
#define MANAGE_ITEST_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api_harness.h"

#define MT_FN static __attribute__((unused))
#define MT_JSON "application/json"
#define MT_FORM "application/x-www-form-urlencoded"

MT_FN void mt_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1) {
  }
}

MT_FN long long mt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One request; key NULL = no Authorization; ctype NULL = none.  Returns the
 * status (0 when the request failed); *r must be freed. */
MT_FN int mt_req(const api_harness *h, const char *key, const char *method, const char *path,
                 const char *ctype, const char *body, api_response *r) {
  char hdr[512] = "";
  size_t n = 0;
  if (key)
    n += (size_t)snprintf(hdr + n, sizeof hdr - n, "Authorization: OAuth %s\r\n", key);
  if (ctype)
    n += (size_t)snprintf(hdr + n, sizeof hdr - n, "Content-Type: %s\r\n", ctype);
  if (api_request(h, method, path, hdr, body, r))
    return 0;
  return r->status;
}

MT_FN json_t *mt_parse(const api_response *r) {
  json_error_t e;
  json_t *j = json_loadb(r->body, r->body_len, 0, &e);
  if (j == NULL)
    fail_msg("answer (status %d) is not JSON: %s: %.300s", r->status, e.text, r->body);
  return j;
}

/* A JSON request with `key` expecting status `want`; returns the parsed
 * answer (NULL for an empty body). */
MT_FN json_t *mt_call(const api_harness *h, const char *key, const char *method, const char *path,
                      const char *body, int want) {
  api_response r;
  int st = mt_req(h, key, method, path, body ? MT_JSON : NULL, body, &r);
  if (st != want)
    fail_msg("%s %s: status %d, want %d: %.600s", method, path, st, want, r.body ? r.body : "");
  json_t *j = r.body_len ? mt_parse(&r) : NULL;
  api_response_free(&r);
  return j;
}

/* The same with the admin key. */
MT_FN json_t *mt_admin(const api_harness *h, const char *method, const char *path,
                       const char *body, int want) {
  return mt_call(h, h->admin_key, method, path, body, want);
}

/* Expects an error answer: status, {"message": ...} and, when field is not
 * NULL, "field": field. */
MT_FN void mt_expect_error(const api_harness *h, const char *key, const char *method,
                           const char *path, const char *ctype, const char *body, int want,
                           const char *field) {
  api_response r;
  int st = mt_req(h, key, method, path, ctype, body, &r);
  if (st != want)
    fail_msg("%s %s %.200s: status %d, want %d: %.400s", method, path, body ? body : "", st, want,
             r.body ? r.body : "");
  json_t *j = mt_parse(&r);
  const char *msg = json_string_value(json_object_get(j, "message"));
  if (msg == NULL || msg[0] == '\0')
    fail_msg("%s %s: no message in %.300s", method, path, r.body);
  if (field) {
    const char *f = json_string_value(json_object_get(j, "field"));
    if (f == NULL || strcmp(f, field))
      fail_msg("%s %s %.200s: field %s, want %s (%.300s)", method, path, body ? body : "",
               f ? f : "(none)", field, r.body);
  }
  json_decref(j);
  api_response_free(&r);
}

MT_FN const char *mt_str(json_t *o, const char *key) {
  return json_string_value(json_object_get(o, key));
}

/* Creates a page (admin key) and copies its id into out. */
MT_FN void mt_new_page(const api_harness *h, const char *name, char out[64]) {
  char body[512];
  snprintf(body, sizeof body, "{\"page\":{\"name\":\"%s\"}}", name);
  json_t *p = mt_admin(h, "POST", "/v1/pages", body, 201);
  snprintf(out, 64, "%s", mt_str(p, "id"));
  json_decref(p);
}

/* Creates a component on page and copies its id into out. */
MT_FN void mt_new_component(const api_harness *h, const char *page, const char *name,
                            char out[64]) {
  char path[256], body[512];
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  snprintf(body, sizeof body, "{\"component\":{\"name\":\"%s\"}}", name);
  json_t *c = mt_admin(h, "POST", path, body, 201);
  snprintf(out, 64, "%s", mt_str(c, "id"));
  json_decref(c);
}

/* Moves the server's test clock by ms. */
MT_FN void mt_advance(const api_harness *h, long long ms) {
  char body[64];
  snprintf(body, sizeof body, "{\"advance_ms\":%lld}", ms);
  api_response r;
  int st = mt_req(h, NULL, "POST", "/_test/clock", MT_JSON, body, &r);
  if (st != 200)
    fail_msg("POST /_test/clock: %d %.200s", st, r.body ? r.body : "");
  api_response_free(&r);
}

#endif
