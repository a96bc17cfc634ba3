/* Unit tests for api_form (api/form.h): Rails-style form bodies into JSON,
 * every malformed-input class with the key it names, the limits, and the
 * allocation-failure path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "form.h"
#include "sp_alloc.h"
#include "sp_err.h"

/* Parses s and compares the result with the JSON text `want`. */
static void expect_json(const char *s, const char *want) {
  json_t *got = NULL;
  char err[256], field[96];
  int rc = api_form_parse(s, strlen(s), &got, err, sizeof err, field, sizeof field);
  if (rc)
    fail_msg("parse of '%s' failed: %d %s", s, rc, err);
  json_t *w = json_loads(want, 0, NULL);
  assert_non_null(w);
  if (!json_equal(got, w)) {
    char *t = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
    fail_msg("'%s' gave %s, want %s", s, t, want);
  }
  json_decref(got);
  json_decref(w);
}

/* Parses s expecting error rc naming `key` (NULL: not checked). */
static void expect_error(const char *s, size_t len, int want_rc, const char *key,
                         const char *msg_part) {
  json_t *got = (json_t *)0x1;
  char err[256], field[96];
  int rc = api_form_parse(s, len, &got, err, sizeof err, field, sizeof field);
  if (rc != want_rc)
    fail_msg("'%.*s': got %d (%s), want %d", (int)len, s, rc, rc ? err : "ok", want_rc);
  assert_ptr_equal(got, (json_t *)0x1); /* untouched on error */
  assert_true(err[0] != '\0');
  if (key)
    assert_string_equal(field, key);
  if (msg_part && strstr(err, msg_part) == NULL)
    fail_msg("message '%s' lacks '%s'", err, msg_part);
}

static void test_statuspage_incident_form(void **state) {
  (void)state;
  expect_json("incident[name]=DB+down&incident[status]=investigating"
              "&incident[components][8kbf7d35c070]=major_outage"
              "&incident[component_ids][]=8kbf7d35c070&incident[component_ids][]=abc"
              "&incident[deliver_notifications]=false",
              "{\"incident\":{\"name\":\"DB down\",\"status\":\"investigating\","
              "\"components\":{\"8kbf7d35c070\":\"major_outage\"},"
              "\"component_ids\":[\"8kbf7d35c070\",\"abc\"],\"deliver_notifications\":\"false\"}}");
}

static void test_decoding(void **state) {
  (void)state;
  /* encoded brackets, UTF-8, '+', '=' and '&' inside values */
  expect_json("incident%5Bname%5D=Caf%C3%A9+down&b=x%3Dy%26z", "{\"incident\":{\"name\":\"Café down\"},\"b\":\"x=y&z\"}");
  expect_json("a=%2B1", "{\"a\":\"+1\"}");
  expect_json("a=b=c", "{\"a\":\"b=c\"}");
}

static void test_shapes(void **state) {
  (void)state;
  expect_json("", "{}");
  expect_json("&&a=1&&", "{\"a\":\"1\"}");
  expect_json("flag", "{\"flag\":\"\"}");
  expect_json("a=", "{\"a\":\"\"}");
  expect_json("a=1&a=2", "{\"a\":\"2\"}");          /* last wins */
  expect_json("x[ids][]=", "{\"x\":{\"ids\":[]}}");  /* the empty list */
  expect_json("x[ids][]=&x[ids][]=a", "{\"x\":{\"ids\":[\"a\"]}}");
  expect_json("m[a][b][c]=1&m[a][d]=2", "{\"m\":{\"a\":{\"b\":{\"c\":\"1\"},\"d\":\"2\"}}}");
  expect_json("a[b]=1&a[b]=2", "{\"a\":{\"b\":\"2\"}}");
}

static void test_not_nul_terminated(void **state) {
  (void)state;
  const char buf[] = "a=1&b=2GARBAGE";
  json_t *got;
  assert_int_equal(api_form_parse(buf, 7, &got, NULL, 0, NULL, 0), 0);
  assert_string_equal(json_string_value(json_object_get(got, "b")), "2");
  assert_int_equal(json_object_size(got), 2);
  json_decref(got);
}

static void test_errors_name_the_key(void **state) {
  (void)state;
  const char *s;
  s = "good=1&bad%zz=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "bad%zz", "percent");
  s = "a=%4";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "percent");
  s = "a=%";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "percent");
  s = "a=x%00y";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "percent");
  s = "a[b=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[b", "unclosed");
  s = "a[b]c=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[b]c", "after");
  s = "a[][b]=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[][b]", "last");
  s = "a[b[c]]=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[b[c]]", "inside");
  s = "[a]=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "[a]", "empty");
  s = "=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, NULL, "empty");
  s = "a=1&a[b]=2";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[b]", "both");
  s = "a[b]=2&a=1";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "both");
  s = "a[]=1&a[x]=2";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[x]", "both");
  s = "a=1&a[]=2";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a[]", "both");
  s = "a=%FF%FE";
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "UTF-8");
  s = "a=%C0%AF"; /* overlong '/' */
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "UTF-8");
  s = "a=%ED%A0%80"; /* a surrogate */
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "UTF-8");
  s = "a=%E2%82"; /* truncated sequence */
  expect_error(s, strlen(s), SP_ERR_PARSE, "a", "UTF-8");
}

static void test_limits(void **state) {
  (void)state;
  /* 8 segments deep is fine, 9 is not */
  expect_json("a[b][c][d][e][f][g][h]=1",
              "{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":{\"f\":{\"g\":{\"h\":\"1\"}}}}}}}}");
  const char *deep = "a[b][c][d][e][f][g][h][i]=1";
  expect_error(deep, strlen(deep), SP_ERR_TOOBIG, NULL, "nested");
  /* API_FORM_MAX_PAIRS pairs parse; one more does not */
  size_t cap = (API_FORM_MAX_PAIRS + 1) * 8 + 16;
  char *big = malloc(cap);
  assert_non_null(big);
  size_t len = 0;
  for (int i = 0; i < API_FORM_MAX_PAIRS; i++)
    len += (size_t)snprintf(big + len, cap - len, "%sk%d=1", i ? "&" : "", i % 100);
  json_t *got;
  assert_int_equal(api_form_parse(big, len, &got, NULL, 0, NULL, 0), 0);
  assert_int_equal(json_object_size(got), 100);
  json_decref(got);
  len += (size_t)snprintf(big + len, cap - len, "&x=1");
  expect_error(big, len, SP_ERR_TOOBIG, NULL, "pairs");
  free(big);
}

static void test_allocation_failure(void **state) {
  (void)state;
  const char *s = "incident[name]=x&incident[component_ids][]=a";
  for (long k = 0; k < 4; k++) {
    sp_alloc_fail_after(k);
    json_t *got = NULL;
    int rc = api_form_parse(s, strlen(s), &got, NULL, 0, NULL, 0);
    sp_alloc_fail_after(-1);
    if (rc == 0) {
      assert_non_null(json_object_get(got, "incident"));
      json_decref(got);
    } else {
      assert_int_equal(rc, SP_ERR_NOMEM);
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_statuspage_incident_form),
      cmocka_unit_test(test_decoding),
      cmocka_unit_test(test_shapes),
      cmocka_unit_test(test_not_nul_terminated),
      cmocka_unit_test(test_errors_name_the_key),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_allocation_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
