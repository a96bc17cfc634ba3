/* Integration tests of the maintenance auto-transition (api_maint.c)
 * against a real statusd-api + PostgreSQL, driven by the test clock
 * (POST /_test/clock): scheduled -> in_progress at scheduled_for and ->
 * completed at scheduled_until with their updates, component statuses and
 * notifications; nothing moves without the flags or before its time; a
 * window passed in one jump goes through both steps; a maintenance changed
 * by hand is left alone; transitions are written once, even across a
 * PostgreSQL outage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "manage_itest.h"

#define MIN (60LL * 1000)

static api_harness g_h;

static int setup(void **state) {
  (void)state;
  setenv("SP_RATE_LIMIT", "100000:100000", 1);
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

/* The server's "now" in ms: wall time plus its test-clock offset. */
static long long server_now(void) {
  api_response r;
  assert_int_equal(mt_req(&g_h, NULL, "POST", "/_test/clock", MT_JSON, "{\"advance_ms\":0}", &r),
                   200);
  json_t *j = mt_parse(&r);
  long long off = json_integer_value(json_object_get(j, "offset_ms"));
  json_decref(j);
  api_response_free(&r);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000 + off;
}

static void iso(long long ms, char out[40]) {
  time_t sec = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  strftime(out, 40, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

/* A maintenance from now+start_min to now+end_min over `comps` with the
 * given flags JSON (e.g. "\"scheduled_auto_in_progress\":true"); its
 * incident path into ipath. */
static void new_maintenance(const char *page, const char *comps, long start_min, long end_min,
                            const char *flags, char ipath[256]) {
  char f[40], u[40], path[128], body[2048];
  long long now = server_now();
  iso(now + start_min * MIN, f);
  iso(now + end_min * MIN, u);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  snprintf(body, sizeof body,
           "{\"incident\":{\"name\":\"DB upgrade\",\"status\":\"scheduled\","
           "\"scheduled_for\":\"%s\",\"scheduled_until\":\"%s\",\"component_ids\":[%s]%s%s}}",
           f, u, comps, flags[0] ? "," : "", flags);
  json_t *m = mt_admin(&g_h, "POST", path, body, 201);
  assert_string_equal(mt_str(m, "status"), "scheduled");
  assert_string_equal(mt_str(m, "impact"), "maintenance");
  snprintf(ipath, 256, "%s/%s", path, mt_str(m, "id"));
  json_decref(m);
}

/* GETs the incident until its status is `want` (up to timeout_ms); returns
 * it (the last answer when the status never came). */
static json_t *wait_status(const char *ipath, const char *want, long timeout_ms) {
  long long end = mt_now_ms() + timeout_ms;
  for (;;) {
    json_t *m = mt_admin(&g_h, "GET", ipath, NULL, 200);
    if (strcmp(mt_str(m, "status"), want) == 0 || mt_now_ms() >= end)
      return m;
    json_decref(m);
    mt_sleep_ms(50);
  }
}

static size_t nupdates(json_t *m) { return json_array_size(json_object_get(m, "incident_updates")); }

static json_t *upd(json_t *m, size_t i) {
  return json_array_get(json_object_get(m, "incident_updates"), i);
}

static const char *component_status(const char *page, const char *id) {
  static char st[64];
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", page, id);
  json_t *c = mt_admin(&g_h, "GET", path, NULL, 200);
  snprintf(st, sizeof st, "%s", mt_str(c, "status"));
  json_decref(c);
  return st;
}

static int outbox_count(const char *page, const char *kind) {
  PGconn *db = PQconnectdb(g_h.pg.conninfo);
  assert_int_equal(PQstatus(db), CONNECTION_OK);
  const char *params[2] = {page, kind};
  PGresult *res =
      PQexecParams(db, "SELECT count(*) FROM sp_outbox WHERE page_id = $1 AND kind = $2", 2,
                   NULL, params, NULL, NULL, 0);
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  int n = atoi(PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(db);
  return n;
}

#define ALL_FLAGS                                                                               \
  "\"scheduled_auto_in_progress\":true,\"scheduled_auto_completed\":true,"                      \
  "\"auto_transition_to_maintenance_state\":true,\"auto_transition_to_operational_state\":true," \
  "\"auto_transition_deliver_notifications_at_start\":true,"                                    \
  "\"auto_transition_deliver_notifications_at_end\":false"

static void test_full_cycle(void **state) {
  (void)state;
  char page[64], c1[64], c2[64], comps[200], ipath[256];
  mt_new_page(&g_h, "Maint", page);
  mt_new_component(&g_h, page, "Database", c1);
  mt_new_component(&g_h, page, "API", c2);
  snprintf(comps, sizeof comps, "\"%s\",\"%s\"", c1, c2);
  new_maintenance(page, comps, 60, 120, ALL_FLAGS, ipath);
  assert_int_equal(outbox_count(page, "maintenance"), 1); /* the announcement */
  /* not yet */
  mt_advance(&g_h, 30 * MIN);
  mt_sleep_ms(1200); /* at least one timer tick too */
  json_t *m = mt_admin(&g_h, "GET", ipath, NULL, 200);
  assert_string_equal(mt_str(m, "status"), "scheduled");
  assert_int_equal(nupdates(m), 1);
  json_decref(m);
  assert_string_equal(component_status(page, c1), "operational");
  /* scheduled_for passes: in progress, components under maintenance */
  mt_advance(&g_h, 31 * MIN);
  m = wait_status(ipath, "in_progress", 5000);
  assert_string_equal(mt_str(m, "status"), "in_progress");
  assert_int_equal(nupdates(m), 2);
  json_t *u = upd(m, 0);
  assert_string_equal(mt_str(u, "status"), "in_progress");
  assert_non_null(strstr(mt_str(u, "body"), "in progress"));
  assert_true(json_is_true(json_object_get(u, "deliver_notifications")));
  json_t *ac = json_object_get(u, "affected_components");
  assert_int_equal(json_array_size(ac), 2);
  assert_string_equal(mt_str(json_array_get(ac, 0), "old_status"), "operational");
  assert_string_equal(mt_str(json_array_get(ac, 0), "new_status"), "under_maintenance");
  assert_true(json_is_null(json_object_get(m, "resolved_at")));
  json_decref(m);
  assert_string_equal(component_status(page, c1), "under_maintenance");
  assert_string_equal(component_status(page, c2), "under_maintenance");
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/active_maintenance", page);
  json_t *list = mt_admin(&g_h, "GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 1);
  json_decref(list);
  assert_int_equal(outbox_count(page, "maintenance"), 2);
  assert_int_equal(outbox_count(page, "component_update"), 2);
  /* scheduled_until passes: completed, components operational, quietly */
  mt_advance(&g_h, 61 * MIN);
  m = wait_status(ipath, "completed", 5000);
  assert_string_equal(mt_str(m, "status"), "completed");
  assert_non_null(mt_str(m, "resolved_at"));
  assert_int_equal(nupdates(m), 3);
  u = upd(m, 0);
  assert_string_equal(mt_str(u, "status"), "completed");
  assert_true(json_is_false(json_object_get(u, "deliver_notifications")));
  ac = json_object_get(u, "affected_components");
  assert_string_equal(mt_str(json_array_get(ac, 1), "old_status"), "under_maintenance");
  assert_string_equal(mt_str(json_array_get(ac, 1), "new_status"), "operational");
  json_decref(m);
  assert_string_equal(component_status(page, c1), "operational");
  assert_int_equal(outbox_count(page, "maintenance"), 2);
  assert_int_equal(outbox_count(page, "component_update"), 2);
  /* written once: later ticks change nothing */
  mt_advance(&g_h, 60 * MIN);
  mt_sleep_ms(1200);
  m = mt_admin(&g_h, "GET", ipath, NULL, 200);
  assert_int_equal(nupdates(m), 3);
  json_decref(m);
}

static void test_flags_off_and_manual_changes(void **state) {
  (void)state;
  char page[64], c1[64], comps[100], quiet[256], manual[256], keep[256];
  mt_new_page(&g_h, "Manual", page);
  mt_new_component(&g_h, page, "Core", c1);
  snprintf(comps, sizeof comps, "\"%s\"", c1);
  /* no auto flags: time alone moves nothing */
  new_maintenance(page, comps, 10, 20, "", quiet);
  /* auto flags, but completed by hand before it starts */
  new_maintenance(page, comps, 10, 20, ALL_FLAGS, manual);
  json_decref(mt_admin(&g_h, "PATCH", manual, "{\"incident\":{\"status\":\"completed\"}}", 200));
  /* auto flags without the component switch: status moves, components stay */
  new_maintenance(page, comps, 10, 20, "\"scheduled_auto_in_progress\":true", keep);
  mt_advance(&g_h, 15 * MIN);
  json_t *m = wait_status(keep, "in_progress", 5000);
  assert_string_equal(mt_str(m, "status"), "in_progress");
  assert_true(json_is_false(json_object_get(upd(m, 0), "deliver_notifications")));
  json_decref(m);
  assert_string_equal(component_status(page, c1), "operational");
  mt_advance(&g_h, 30 * MIN);
  mt_sleep_ms(1200);
  m = mt_admin(&g_h, "GET", quiet, NULL, 200);
  assert_string_equal(mt_str(m, "status"), "scheduled");
  assert_int_equal(nupdates(m), 1);
  json_decref(m);
  m = mt_admin(&g_h, "GET", manual, NULL, 200);
  assert_string_equal(mt_str(m, "status"), "completed");
  assert_int_equal(nupdates(m), 2); /* created + the manual PATCH */
  json_decref(m);
  /* without scheduled_auto_completed it stays in progress */
  m = mt_admin(&g_h, "GET", keep, NULL, 200);
  assert_string_equal(mt_str(m, "status"), "in_progress");
  assert_int_equal(nupdates(m), 2);
  json_decref(m);
}

static void test_window_passed_at_once(void **state) {
  (void)state;
  char page[64], c1[64], comps[100], both[256], end_only[256];
  mt_new_page(&g_h, "Jump", page);
  mt_new_component(&g_h, page, "Core", c1);
  snprintf(comps, sizeof comps, "\"%s\"", c1);
  new_maintenance(page, comps, 5, 10, ALL_FLAGS, both);
  new_maintenance(page, comps, 5, 10,
                  "\"scheduled_auto_completed\":true,\"auto_transition_to_operational_state\":true",
                  end_only);
  /* between start and end: only the first one starts */
  mt_advance(&g_h, 6 * MIN);
  json_t *m = wait_status(both, "in_progress", 5000);
  assert_string_equal(mt_str(m, "status"), "in_progress");
  json_decref(m);
  mt_sleep_ms(300);
  m = mt_admin(&g_h, "GET", end_only, NULL, 200);
  assert_string_equal(mt_str(m, "status"), "scheduled");
  json_decref(m);
  /* a fresh one whose whole window passes in one jump goes through both steps */
  char jump[256];
  new_maintenance(page, comps, 5, 10, ALL_FLAGS, jump);
  mt_advance(&g_h, 20 * MIN);
  m = wait_status(jump, "completed", 5000);
  assert_string_equal(mt_str(m, "status"), "completed");
  assert_int_equal(nupdates(m), 3);
  assert_string_equal(mt_str(upd(m, 0), "status"), "completed");
  assert_string_equal(mt_str(upd(m, 1), "status"), "in_progress");
  json_decref(m);
  m = wait_status(end_only, "completed", 5000);
  assert_string_equal(mt_str(m, "status"), "completed");
  assert_int_equal(nupdates(m), 2); /* scheduled -> completed directly */
  json_decref(m);
  m = wait_status(both, "completed", 5000);
  assert_int_equal(nupdates(m), 3);
  json_decref(m);
  assert_string_equal(component_status(page, c1), "operational");
}

static void test_transition_survives_database_outage(void **state) {
  (void)state;
  char page[64], c1[64], comps[100], ipath[256];
  mt_new_page(&g_h, "Outage", page);
  mt_new_component(&g_h, page, "Core", c1);
  snprintf(comps, sizeof comps, "\"%s\"", c1);
  new_maintenance(page, comps, 5, 600, ALL_FLAGS, ipath);
  assert_int_equal(sp_fixture_pg_halt(&g_h.pg), 0);
  mt_advance(&g_h, 6 * MIN); /* due while the database is down */
  mt_sleep_ms(1500);
  json_t *m = mt_admin(&g_h, "GET", ipath, NULL, 200); /* reads still work */
  assert_string_equal(mt_str(m, "status"), "scheduled");
  json_decref(m);
  assert_int_equal(sp_fixture_pg_resume(&g_h.pg), 0);
  m = wait_status(ipath, "in_progress", 30000);
  assert_string_equal(mt_str(m, "status"), "in_progress");
  json_decref(m);
  mt_sleep_ms(1500); /* more ticks: still exactly one transition */
  m = mt_admin(&g_h, "GET", ipath, NULL, 200);
  assert_int_equal(nupdates(m), 2);
  json_decref(m);
  assert_string_equal(component_status(page, c1), "under_maintenance");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_full_cycle),
      cmocka_unit_test(test_flags_off_and_manual_changes),
      cmocka_unit_test(test_window_passed_at_once),
      cmocka_unit_test(test_transition_survives_database_outage),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
