/* statusd-api through a PostgreSQL outage (api_harness: real statusd-api,
 * PostgreSQL and Redis).
 *
 * The tests run in order as one story: data is written and acknowledged;
 * PostgreSQL is halted (sp_fixture_pg_halt, data kept); public reads keep
 * answering 200 with the very same bytes and get marked
 * `X-Cache-Status: stale`, /ready answers 503 naming postgres, writes
 * answer 503 with a JSON message at once instead of hanging; PostgreSQL
 * comes back: /ready is 200 again, the stale mark goes, writes succeed, and
 * nothing acknowledged before the outage is lost while nothing a refused
 * write carried was left behind -- checked through the API, through a fresh
 * process that loads everything from PostgreSQL, and in the tables.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>

#include "api_itest.h"

#define ACKED_UPDATES 10 /* incident updates acknowledged just before the halt */

static struct {
  api_harness h;
  char page[32], comp1[32], comp2[32], inc[32];
  api_response before; /* summary.json just before the halt */
  char etag[128];
  size_t updates; /* incident updates acknowledged */
} S;

static void summary_path(char *out, size_t n) {
  snprintf(out, n, "/pages/%s/api/v2/summary.json", S.page);
}

static size_t count_list(const char *what) {
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/%s", S.page, what);
  json_t *a = it_admin(&S.h, 200, "GET", path, NULL);
  assert_true(json_is_array(a));
  size_t n = json_array_size(a);
  json_decref(a);
  return n;
}

static size_t count_updates(void) {
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", S.page, S.inc);
  json_t *i = it_admin(&S.h, 200, "GET", path, NULL);
  size_t n = json_array_size(json_object_get(i, "incident_updates"));
  json_decref(i);
  return n;
}

/* One value from the database (blocking libpq, test side): the count a
 * query returns. */
static long db_count(const char *sql) {
  PGconn *db = PQconnectdb(S.h.pg.conninfo);
  if (PQstatus(db) != CONNECTION_OK)
    fail_msg("connecting to the fixture: %s", PQerrorMessage(db));
  PGresult *res = PQexec(db, sql);
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(db));
  long n = atol(PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(db);
  return n;
}

static int setup(void **state) {
  (void)state;
  memset(&S, 0, sizeof S);
  if (api_harness_start(&S.h))
    return -1;
  it_create_page(&S.h, "Outage Page", "status.outage.test", S.page);
  it_create_component(&S.h, S.page, "\"name\":\"API\",\"status\":\"operational\"", S.comp1);
  it_create_component(&S.h, S.page, "\"name\":\"Web\",\"status\":\"degraded_performance\"",
                      S.comp2);
  it_create_incident(&S.h, S.page,
                     "\"name\":\"Slow API\",\"status\":\"investigating\",\"body\":\"Looking\"",
                     S.inc);
  S.updates = 1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  api_response_free(&S.before);
  api_harness_stop(&S.h);
  return 0;
}

static void test_before_outage(void **state) {
  (void)state;
  assert_true(it_wait_ready(&S.h, 200, 10000));
  /* writes acknowledged right before the halt must all survive it */
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", S.page, S.inc);
  for (int i = 0; i < ACKED_UPDATES; i++) {
    json_decref(it_admin(&S.h, 200, "PATCH", path,
                         "{\"incident\":{\"status\":\"identified\",\"body\":\"update %d\"}}", i));
    S.updates++;
  }
  assert_int_equal(count_updates(), S.updates);
  char sp[256];
  summary_path(sp, sizeof sp);
  json_decref(it_public(&S.h, sp, NULL, 200, &S.before));
  assert_non_null(api_response_header(&S.before, "ETag", S.etag, sizeof S.etag));
  char v[64];
  if (api_response_header(&S.before, "X-Cache-Status", v, sizeof v))
    assert_string_not_equal(v, "stale");
}

static void test_reads_survive_halt_and_turn_stale(void **state) {
  (void)state;
  assert_int_equal(sp_fixture_pg_halt(&S.h.pg), 0);
  long long halted = it_now_ms();
  char sp[256], v[64];
  summary_path(sp, sizeof sp);
  int stale = 0, reads = 0;
  /* every read answers 200 with the same bytes, and within a few seconds
   * they say they may be behind */
  while (it_now_ms() - halted < 6000) { /* the cache allows itself 3 s */
    api_response r;
    json_decref(it_public(&S.h, sp, NULL, 200, &r));
    reads++;
    assert_int_equal(r.body_len, S.before.body_len);
    assert_memory_equal(r.body, S.before.body, r.body_len);
    stale = api_response_header(&r, "X-Cache-Status", v, sizeof v) && strcmp(v, "stale") == 0;
    api_response_free(&r);
    if (stale)
      break;
    it_sleep_ms(100);
  }
  print_message("stale after %lld ms (%d reads)\n", it_now_ms() - halted, reads);
  assert_true(stale);
  /* and they keep coming: conditional requests too */
  char hdr[200];
  snprintf(hdr, sizeof hdr, "If-None-Match: %s\r\n", S.etag);
  for (int i = 0; i < 20; i++) {
    api_response r;
    json_decref(it_public(&S.h, sp, NULL, 200, &r));
    assert_memory_equal(r.body, S.before.body, S.before.body_len);
    assert_non_null(api_response_header(&r, "X-Cache-Status", v, sizeof v));
    assert_string_equal(v, "stale");
    api_response_free(&r);
    assert_null(it_public(&S.h, sp, hdr, 304, NULL));
  }
  char other[256];
  snprintf(other, sizeof other, "/pages/%s/api/v2/incidents.json", S.page);
  json_decref(it_public(&S.h, other, NULL, 200, NULL));
}

static void test_ready_names_postgres(void **state) {
  (void)state;
  assert_true(it_wait_ready(&S.h, 503, 5000));
  api_response r;
  assert_int_equal(api_request(&S.h, "GET", "/ready", NULL, NULL, &r), 0);
  assert_int_equal(r.status, 503);
  json_t *j = it_json(&r);
  assert_true(it_str_eq(json_object_get(j, "checks"), "postgres", "down"));
  assert_true(it_str_eq(j, "status", "degraded"));
  json_decref(j);
  api_response_free(&r);
  /* the process itself is alive */
  assert_int_equal(api_request(&S.h, "GET", "/health", NULL, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  api_response_free(&r);
}

/* A write that must be refused with 503 and a JSON message, promptly. */
static void expect_503(const char *method, const char *path, const char *body) {
  long long t0 = it_now_ms();
  api_response r;
  int st = it_admin_raw(&S.h, method, path, body, &r);
  long long took = it_now_ms() - t0;
  if (st != 503)
    fail_msg("%s %s during the outage: expected 503, got %d: %s", method, path, st, r.body);
  print_message("%s %s -> 503 in %lld ms\n", method, path, took);
  /* the client gives up at 5 s; a refusal must come well before */
  assert_true(took < 4000);
  char ct[128];
  assert_non_null(api_response_header(&r, "Content-Type", ct, sizeof ct));
  assert_non_null(strstr(ct, "application/json"));
  json_t *j = it_json(&r);
  const char *msg = json_string_value(json_object_get(j, "message"));
  assert_non_null(msg);
  if (strcasestr(msg, "database") == NULL && strcasestr(msg, "unavailable") == NULL)
    fail_msg("503 message does not say what is wrong: %s", msg);
  json_decref(j);
  api_response_free(&r);
}

static void test_writes_answer_503_quickly(void **state) {
  (void)state;
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", S.page);
  expect_503("POST", path, "{\"component\":{\"name\":\"Never written\",\"status\":\"operational\"}}");
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", S.page, S.inc);
  expect_503("PATCH", path, "{\"incident\":{\"status\":\"monitoring\",\"body\":\"Never written\"}}");
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", S.page);
  expect_503("POST", path, "{\"incident\":{\"name\":\"Never written\",\"status\":\"investigating\"}}");
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", S.page, S.comp1);
  expect_503("PATCH", path, "{\"component\":{\"status\":\"major_outage\"}}");
  /* a burst of them does not pile up into a hang either */
  for (int i = 0; i < 5; i++)
    expect_503("PATCH", path, "{\"component\":{\"status\":\"major_outage\"}}");
  /* refused writes changed nothing that readers see */
  char sp[256];
  summary_path(sp, sizeof sp);
  api_response r;
  json_decref(it_public(&S.h, sp, NULL, 200, &r));
  assert_int_equal(r.body_len, S.before.body_len);
  assert_memory_equal(r.body, S.before.body, r.body_len);
  api_response_free(&r);
}

static void test_resume_recovers_and_nothing_lost(void **state) {
  (void)state;
  assert_int_equal(sp_fixture_pg_resume(&S.h.pg), 0);
  long long resumed = it_now_ms();
  assert_true(it_wait_ready(&S.h, 200, 15000));
  print_message("ready again %lld ms after the restart\n", it_now_ms() - resumed);
  /* the stale mark goes away; the bytes are the ones acknowledged before */
  char sp[256], v[64];
  summary_path(sp, sizeof sp);
  int stale = 1;
  long long end = it_now_ms() + 5000;
  while (stale && it_now_ms() < end) {
    api_response r;
    json_decref(it_public(&S.h, sp, NULL, 200, &r));
    assert_int_equal(r.body_len, S.before.body_len);
    assert_memory_equal(r.body, S.before.body, r.body_len);
    stale = api_response_header(&r, "X-Cache-Status", v, sizeof v) && strcmp(v, "stale") == 0;
    api_response_free(&r);
    if (stale)
      it_sleep_ms(100);
  }
  assert_false(stale);
  /* counted through the API: everything acknowledged, nothing refused */
  assert_int_equal(count_list("components"), 2);
  assert_int_equal(count_list("incidents"), 1);
  assert_int_equal(count_updates(), S.updates);

  /* writes work again */
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", S.page, S.comp1);
  json_decref(it_admin(&S.h, 200, "PATCH", path, "{\"component\":{\"status\":\"major_outage\"}}"));
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", S.page, S.inc);
  json_decref(it_admin(&S.h, 200, "PATCH", path,
                       "{\"incident\":{\"status\":\"monitoring\",\"body\":\"after the outage\"}}"));
  S.updates++;
  json_t *s = it_public(&S.h, sp, NULL, 200, NULL);
  assert_true(it_str_eq(it_find(json_object_get(s, "components"), S.comp1), "status",
                        "major_outage"));
  json_t *inc = it_find(json_object_get(s, "incidents"), S.inc);
  assert_true(it_str_eq(inc, "status", "monitoring"));
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), S.updates);
  json_decref(s);
}

/* The same state is in PostgreSQL, not only in the first process's memory:
 * a fresh process loads it and serves the same documents; the tables hold
 * every acknowledged update and nothing of the refused writes. */
static void test_durable_in_database(void **state) {
  (void)state;
  char sp[256];
  summary_path(sp, sizeof sp);
  json_t *old = it_public(&S.h, sp, NULL, 200, NULL);
  int i = api_harness_spawn(&S.h);
  assert_true(i > 0);
  assert_int_equal(api_harness_stop_proc(&S.h, 0), 0); /* graceful exit */
  json_t *fresh = it_public(&S.h, sp, NULL, 200, NULL);
  assert_true(json_equal(old, fresh));
  json_decref(old);
  json_decref(fresh);

  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM sp_entity WHERE page_id = '%s' AND type = 'incident_update'",
           S.page);
  assert_int_equal(db_count(sql), (long)S.updates);
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM sp_entity WHERE page_id = '%s' AND type = 'component'", S.page);
  assert_int_equal(db_count(sql), 2);
  assert_int_equal(db_count("SELECT count(*) FROM sp_field WHERE value = 'Never written'"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_before_outage),
      cmocka_unit_test(test_reads_survive_halt_and_turn_stale),
      cmocka_unit_test(test_ready_names_postgres),
      cmocka_unit_test(test_writes_answer_503_quickly),
      cmocka_unit_test(test_resume_recovers_and_nothing_lost),
      cmocka_unit_test(test_durable_in_database),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
