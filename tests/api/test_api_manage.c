/* Integration tests of the management API v1 (api_manage*.c) against a real
 * statusd-api + PostgreSQL (tests/fixture/api_harness.h): every endpoint's
 * shape and status codes, the incident lifecycle, every bad-input class
 * (with the field named and nothing half-written), form-encoded bodies,
 * outbox rows written with the change, two concurrent writers on one
 * incident, and 503 while PostgreSQL is down.
 *
 * The process runs with a rate limit far above what the tests send
 * (test_api_auth covers the limit itself). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manage.h"
#include "manage_itest.h"
#include "sp_err.h"

static api_harness g_h;

static int setup(void **state) {
  (void)state;
  setenv("SP_RATE_LIMIT", "100000:100000", 1);
  int rc = api_harness_start(&g_h);
  unsetenv("SP_RATE_LIMIT");
  return rc ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  api_harness_stop(&g_h);
  return 0;
}

static json_t *admin(const char *method, const char *path, const char *body, int want) {
  return mt_admin(&g_h, method, path, body, want);
}

static void bad(const char *method, const char *path, const char *body, int want,
                const char *field) {
  mt_expect_error(&g_h, g_h.admin_key, method, path, body ? MT_JSON : NULL, body, want, field);
}

/* Outbox rows of a page by kind, read from PostgreSQL. */
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

static char *repeat(char ch, size_t n) {
  char *s = malloc(n + 1);
  memset(s, ch, n);
  s[n] = '\0';
  return s;
}

/* ---- pages ------------------------------------------------------------------------------------- */

static void test_pages(void **state) {
  (void)state;
  json_t *p = admin("POST", "/v1/pages",
                    "{\"page\":{\"name\":\"Acme\",\"domain\":\"Status.Acme.TEST\","
                    "\"url\":\"https://status.acme.test\",\"time_zone\":\"Europe/Paris\","
                    "\"allow_sms_subscribers\":false,\"headline\":\"hi\"}}",
                    201);
  char id[64], path[128];
  snprintf(id, sizeof id, "%s", mt_str(p, "id"));
  assert_int_equal(strlen(id), 12);
  assert_string_equal(mt_str(p, "name"), "Acme");
  assert_string_equal(mt_str(p, "domain"), "status.acme.test"); /* lowercased */
  assert_string_equal(mt_str(p, "url"), "https://status.acme.test");
  assert_string_equal(mt_str(p, "time_zone"), "Europe/Paris");
  assert_string_equal(mt_str(p, "headline"), "hi");
  assert_true(json_is_false(json_object_get(p, "allow_sms_subscribers")));
  assert_true(json_is_true(json_object_get(p, "allow_email_subscribers")));
  assert_true(json_is_null(json_object_get(p, "support_url")));
  assert_non_null(mt_str(p, "created_at"));
  json_decref(p);
  /* GET, with and without .json */
  snprintf(path, sizeof path, "/v1/pages/%s.json", id);
  p = admin("GET", path, NULL, 200);
  assert_string_equal(mt_str(p, "id"), id);
  json_decref(p);
  snprintf(path, sizeof path, "/v1/pages/%s", id);
  p = admin("PATCH", path, "{\"page\":{\"name\":\"Acme Inc\",\"headline\":null}}", 200);
  assert_string_equal(mt_str(p, "name"), "Acme Inc");
  assert_true(json_is_null(json_object_get(p, "headline")));
  assert_string_equal(mt_str(p, "domain"), "status.acme.test"); /* untouched */
  json_decref(p);
  p = admin("PUT", path, "{\"page\":{\"support_url\":\"https://help.acme.test\"}}", 200);
  assert_string_equal(mt_str(p, "support_url"), "https://help.acme.test");
  assert_string_equal(mt_str(p, "name"), "Acme Inc");
  json_decref(p);
  /* the list shows it */
  json_t *list = admin("GET", "/v1/pages", NULL, 200);
  int found = 0;
  for (size_t i = 0; i < json_array_size(list); i++)
    found += !strcmp(mt_str(json_array_get(list, i), "id"), id);
  assert_int_equal(found, 1);
  json_decref(list);
  /* custom domains are unique (case-insensitively); the page itself may
   * send its own domain again */
  bad("POST", "/v1/pages", "{\"page\":{\"name\":\"B\",\"domain\":\"status.acme.test\"}}", 409,
      "domain");
  char other[64], opath[128];
  mt_new_page(&g_h, "Other", other);
  snprintf(opath, sizeof opath, "/v1/pages/%s", other);
  bad("PATCH", opath, "{\"page\":{\"domain\":\"STATUS.acme.test\"}}", 409, "domain");
  json_decref(admin("PATCH", path, "{\"page\":{\"domain\":\"status.acme.test\"}}", 200));
  /* once released the domain can be taken */
  json_decref(admin("PATCH", path, "{\"page\":{\"domain\":\"new.acme.test\"}}", 200));
  p = admin("PATCH", opath, "{\"page\":{\"domain\":\"status.acme.test\"}}", 200);
  assert_string_equal(mt_str(p, "domain"), "status.acme.test");
  json_decref(p);
  /* a client-chosen id; creating it twice conflicts */
  p = admin("POST", "/v1/pages", "{\"page\":{\"id\":\"mypage01\",\"name\":\"Mine\"}}", 201);
  assert_string_equal(mt_str(p, "id"), "mypage01");
  json_decref(p);
  bad("POST", "/v1/pages", "{\"page\":{\"id\":\"mypage01\",\"name\":\"Again\"}}", 409, "id");
  bad("POST", "/v1/pages", "{\"page\":{\"id\":\"Bad Id!\",\"name\":\"x\"}}", 422, "id");
  /* bad input */
  char *long_name = repeat('n', 256), body[1024];
  snprintf(body, sizeof body, "{\"page\":{\"name\":\"%s\"}}", long_name);
  bad("POST", "/v1/pages", body, 422, "name");
  free(long_name);
  bad("POST", "/v1/pages", "{\"page\":{}}", 422, "name");
  bad("POST", "/v1/pages", "{\"page\":{\"name\":\"\"}}", 422, "name");
  bad("POST", "/v1/pages", "{\"page\":{\"name\":5}}", 422, "name");
  bad("POST", "/v1/pages", "{\"name\":\"x\"}", 422, "page");
  bad("POST", "/v1/pages", "{\"page\":[1]}", 422, "page");
  bad("POST", "/v1/pages", "{\"page\":{\"name\":\"x\",\"domain\":\"bad domain\"}}", 422, "domain");
  bad("POST", "/v1/pages", "{\"page\":{\"name\":\"x\",\"url\":\"ftp://x\"}}", 422, "url");
  bad("POST", "/v1/pages", "{\"page\":{\"name\":\"x\",\"time_zone\":\"../etc/passwd\"}}", 422,
      "time_zone");
  bad("POST", "/v1/pages", "{\"page\":{\"name\":\"x\",\"allow_email_subscribers\":\"yes\"}}", 422,
      "allow_email_subscribers");
  bad("GET", "/v1/pages/nosuchpage", NULL, 404, "page_id");
  bad("PATCH", "/v1/pages/nosuchpage", "{\"page\":{\"name\":\"x\"}}", 404, "page_id");
}

/* ---- components and groups ------------------------------------------------------------------------ */

static void test_components(void **state) {
  (void)state;
  char page[64], path[256], cpath[256];
  mt_new_page(&g_h, "Components", page);
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  json_t *c = admin("POST", path,
                    "{\"component\":{\"name\":\"API\",\"description\":\"the API\","
                    "\"start_date\":\"2026-01-02\",\"showcase\":false}}",
                    201);
  char id[64];
  snprintf(id, sizeof id, "%s", mt_str(c, "id"));
  assert_string_equal(mt_str(c, "page_id"), page);
  assert_true(json_is_null(json_object_get(c, "group_id")));
  assert_true(json_is_false(json_object_get(c, "group")));
  assert_string_equal(mt_str(c, "name"), "API");
  assert_string_equal(mt_str(c, "description"), "the API");
  assert_string_equal(mt_str(c, "status"), "operational");
  assert_string_equal(mt_str(c, "start_date"), "2026-01-02");
  assert_true(json_is_false(json_object_get(c, "showcase")));
  assert_true(json_is_false(json_object_get(c, "only_show_if_degraded")));
  assert_int_equal(json_integer_value(json_object_get(c, "position")), 1);
  json_decref(c);
  char b[64], d[64];
  mt_new_component(&g_h, page, "Web", b);
  mt_new_component(&g_h, page, "DB", d);
  /* list: in position order, paginated */
  json_t *list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 3);
  assert_string_equal(mt_str(json_array_get(list, 0), "id"), id);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 2), "position")), 3);
  json_decref(list);
  char q[320];
  snprintf(q, sizeof q, "%s.json?per_page=2&page=2", path);
  list = admin("GET", q, NULL, 200);
  assert_int_equal(json_array_size(list), 1);
  assert_string_equal(mt_str(json_array_get(list, 0), "id"), d);
  json_decref(list);
  snprintf(q, sizeof q, "%s?per_page=5000", path); /* clamped to 100 */
  list = admin("GET", q, NULL, 200);
  assert_int_equal(json_array_size(list), 3);
  json_decref(list);
  snprintf(q, sizeof q, "%s?page=0", path);
  bad("GET", q, NULL, 422, "page");
  snprintf(q, sizeof q, "%s?per_page=ten", path);
  bad("GET", q, NULL, 422, "per_page");
  /* GET one; PATCH; a status change writes one component_update outbox row */
  snprintf(cpath, sizeof cpath, "%.190s/%.64s", path, id);
  c = admin("GET", cpath, NULL, 200);
  assert_string_equal(mt_str(c, "name"), "API");
  json_decref(c);
  c = admin("PATCH", cpath, "{\"component\":{\"name\":\"Public API\",\"description\":null}}", 200);
  assert_string_equal(mt_str(c, "name"), "Public API");
  assert_true(json_is_null(json_object_get(c, "description")));
  json_decref(c);
  assert_int_equal(outbox_count(page, "component_update"), 0);
  c = admin("PUT", cpath, "{\"component\":{\"status\":\"partial_outage\"}}", 200);
  assert_string_equal(mt_str(c, "status"), "partial_outage");
  assert_string_equal(mt_str(c, "name"), "Public API");
  json_decref(c);
  assert_int_equal(outbox_count(page, "component_update"), 1);
  c = admin("PATCH", cpath, "{\"component\":{\"status\":\"\"}}", 200); /* "" = unchanged */
  assert_string_equal(mt_str(c, "status"), "partial_outage");
  json_decref(c);
  assert_int_equal(outbox_count(page, "component_update"), 1);
  /* bad input, each naming its field; nothing changes */
  bad("PATCH", cpath, "{\"component\":{\"status\":\"broken\"}}", 422, "status");
  bad("PATCH", cpath, "{\"component\":{\"status\":\"operational\",\"showcase\":\"true\"}}", 422,
      "showcase");
  bad("PATCH", cpath, "{\"component\":{\"name\":\"\"}}", 422, "name");
  bad("PATCH", cpath, "{\"component\":{\"group_id\":\"nosuchgroup\"}}", 404, "group_id");
  bad("PATCH", cpath, "{\"component\":{\"start_date\":\"2026-13-01\"}}", 422, "start_date");
  char *desc = repeat('d', 1001), body[1200];
  snprintf(body, sizeof body, "{\"component\":{\"description\":\"%s\"}}", desc);
  bad("PATCH", cpath, body, 422, "description");
  free(desc);
  bad("POST", path, "{\"component\":{\"description\":\"x\"}}", 422, "name");
  /* a client-chosen id, then the same id again */
  json_decref(admin("POST", path, "{\"component\":{\"name\":\"x\",\"id\":\"00abc\"}}", 201));
  bad("POST", path, "{\"component\":{\"name\":\"y\",\"id\":\"00abc\"}}", 409, "id");
  c = admin("GET", cpath, NULL, 200);
  assert_string_equal(mt_str(c, "status"), "partial_outage");
  assert_string_equal(mt_str(c, "name"), "Public API");
  json_decref(c);
  /* DELETE: 204 with no body, then 404 */
  api_response r;
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "DELETE", cpath, NULL, NULL, &r), 204);
  assert_int_equal(r.body_len, 0);
  api_response_free(&r);
  bad("GET", cpath, NULL, 404, "id");
  bad("DELETE", cpath, NULL, 404, "id");
  bad("PATCH", cpath, "{\"component\":{\"name\":\"x\"}}", 404, "id");
}

static void test_groups(void **state) {
  (void)state;
  char page[64], a[64], b[64], path[256], gpath[256], cpath[256], body[512];
  mt_new_page(&g_h, "Groups", page);
  mt_new_component(&g_h, page, "A", a);
  mt_new_component(&g_h, page, "B", b);
  snprintf(path, sizeof path, "/v1/pages/%s/component-groups", page);
  snprintf(body, sizeof body,
           "{\"description\":\"Core\",\"component_group\":{\"name\":\"Core\",\"components\":[\"%s\","
           "\"%s\"]}}",
           a, b);
  json_t *g = admin("POST", path, body, 201);
  char gid[64];
  snprintf(gid, sizeof gid, "%s", mt_str(g, "id"));
  assert_string_equal(mt_str(g, "name"), "Core");
  assert_string_equal(mt_str(g, "description"), "Core");
  assert_string_equal(mt_str(g, "page_id"), page);
  json_t *kids = json_object_get(g, "components");
  assert_int_equal(json_array_size(kids), 2);
  assert_string_equal(json_string_value(json_array_get(kids, 0)), a);
  json_decref(g);
  snprintf(cpath, sizeof cpath, "/v1/pages/%s/components/%s", page, a);
  json_t *c = admin("GET", cpath, NULL, 200);
  assert_string_equal(mt_str(c, "group_id"), gid);
  json_decref(c);
  /* the components list shows the group row */
  char lpath[256];
  snprintf(lpath, sizeof lpath, "/v1/pages/%s/components", page);
  json_t *list = admin("GET", lpath, NULL, 200);
  int groups = 0;
  for (size_t i = 0; i < json_array_size(list); i++)
    groups += json_is_true(json_object_get(json_array_get(list, i), "group"));
  assert_int_equal(groups, 1);
  json_decref(list);
  list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 1);
  json_decref(list);
  /* bad groups */
  bad("POST", path, "{\"component_group\":{\"name\":\"x\",\"components\":[\"nosuch\"]}}", 404,
      "components");
  bad("POST", path, "{\"component_group\":{\"name\":\"x\",\"components\":[]}}", 422,
      "components");
  bad("POST", path, "{\"component_group\":{\"name\":\"x\"}}", 422, "components");
  snprintf(body, sizeof body, "{\"component_group\":{\"components\":[\"%s\"]}}", a);
  bad("POST", path, body, 422, "name");
  snprintf(body, sizeof body, "{\"component_group\":{\"name\":\"x\",\"components\":[\"%s\",\"%s\"]}}",
           a, a);
  bad("POST", path, body, 422, "components");
  bad("POST", path, "{\"component_group\":{\"name\":\"x\",\"components\":\"abc\"}}", 422,
      "components");
  /* PATCH: description inside the wrapper; membership replaced */
  snprintf(gpath, sizeof gpath, "%.190s/%.64s", path, gid);
  snprintf(body, sizeof body,
           "{\"component_group\":{\"name\":\"Core 2\",\"description\":\"inside\","
           "\"components\":[\"%s\"]}}",
           b);
  g = admin("PATCH", gpath, body, 200);
  assert_string_equal(mt_str(g, "name"), "Core 2");
  assert_string_equal(mt_str(g, "description"), "inside");
  assert_int_equal(json_array_size(json_object_get(g, "components")), 1);
  json_decref(g);
  c = admin("GET", cpath, NULL, 200);
  assert_true(json_is_null(json_object_get(c, "group_id")));
  json_decref(c);
  /* a component joins through its own group_id; "null" takes it out */
  bad("PATCH", cpath, "{\"component\":{\"group_id\":\"", 400, NULL);
  snprintf(body, sizeof body, "{\"component\":{\"group_id\":\"%s\"}}", gid);
  c = admin("PATCH", cpath, body, 200);
  assert_string_equal(mt_str(c, "group_id"), gid);
  json_decref(c);
  g = admin("GET", gpath, NULL, 200);
  assert_int_equal(json_array_size(json_object_get(g, "components")), 2);
  json_decref(g);
  c = admin("PATCH", cpath, "{\"component\":{\"group_id\":\"null\"}}", 200);
  assert_true(json_is_null(json_object_get(c, "group_id")));
  json_decref(c);
  /* DELETE: 200 with the object; children leave the group */
  g = admin("DELETE", gpath, NULL, 200);
  assert_string_equal(mt_str(g, "id"), gid);
  assert_int_equal(json_array_size(json_object_get(g, "components")), 1);
  json_decref(g);
  bad("GET", gpath, NULL, 404, "id");
  snprintf(cpath, sizeof cpath, "/v1/pages/%s/components/%s", page, b);
  c = admin("GET", cpath, NULL, 200);
  assert_true(json_is_null(json_object_get(c, "group_id")));
  json_decref(c);
  /* a group whose last child leaves is deleted (a group may not be empty) */
  snprintf(body, sizeof body, "{\"component_group\":{\"name\":\"Solo\",\"components\":[\"%s\"]}}",
           b);
  g = admin("POST", path, body, 201);
  snprintf(gpath, sizeof gpath, "%.190s/%.64s", path, mt_str(g, "id"));
  json_decref(g);
  api_response r;
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "DELETE", cpath, NULL, NULL, &r), 204);
  api_response_free(&r);
  bad("GET", gpath, NULL, 404, "id");
}

/* ---- incidents --------------------------------------------------------------------------------------- */

static json_t *upd(json_t *inc, size_t i) {
  return json_array_get(json_object_get(inc, "incident_updates"), i);
}

static void test_incident_lifecycle(void **state) {
  (void)state;
  char page[64], comp[64], path[256], ipath[256], body[1024];
  mt_new_page(&g_h, "Lifecycle", page);
  mt_new_component(&g_h, page, "Database", comp);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  snprintf(body, sizeof body,
           "{\"incident\":{\"name\":\"DB down\",\"status\":\"investigating\","
           "\"body\":\"We are looking into it\",\"components\":{\"%s\":\"major_outage\"},"
           "\"component_ids\":[\"%s\"],\"metadata\":{\"jira\":{\"issue\":\"OPS-1\"}}}}",
           comp, comp);
  json_t *inc = admin("POST", path, body, 201);
  char id[64];
  snprintf(id, sizeof id, "%s", mt_str(inc, "id"));
  assert_string_equal(mt_str(inc, "name"), "DB down");
  assert_string_equal(mt_str(inc, "status"), "investigating");
  assert_string_equal(mt_str(inc, "impact"), "critical");
  assert_true(json_is_null(json_object_get(inc, "monitoring_at")));
  assert_true(json_is_null(json_object_get(inc, "resolved_at")));
  assert_non_null(mt_str(inc, "created_at"));
  assert_non_null(mt_str(inc, "started_at"));
  assert_non_null(mt_str(inc, "shortlink"));
  assert_string_equal(
      mt_str(json_object_get(json_object_get(inc, "metadata"), "jira"), "issue"), "OPS-1");
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), 1);
  json_t *u = upd(inc, 0);
  assert_string_equal(mt_str(u, "status"), "investigating");
  assert_string_equal(mt_str(u, "body"), "We are looking into it");
  assert_string_equal(mt_str(u, "incident_id"), id);
  assert_true(json_is_true(json_object_get(u, "deliver_notifications")));
  json_t *ac = json_array_get(json_object_get(u, "affected_components"), 0);
  assert_string_equal(mt_str(ac, "code"), comp);
  assert_string_equal(mt_str(ac, "name"), "Database");
  assert_string_equal(mt_str(ac, "old_status"), "operational");
  assert_string_equal(mt_str(ac, "new_status"), "major_outage");
  json_t *ic = json_array_get(json_object_get(inc, "components"), 0);
  assert_string_equal(mt_str(ic, "id"), comp);
  assert_string_equal(mt_str(ic, "status"), "major_outage");
  char first_update[64];
  snprintf(first_update, sizeof first_update, "%s", mt_str(u, "id"));
  json_decref(inc);
  /* the component moved, and the notifications were queued with the write */
  char cpath[256];
  snprintf(cpath, sizeof cpath, "/v1/pages/%s/components/%s", page, comp);
  json_t *c = admin("GET", cpath, NULL, 200);
  assert_string_equal(mt_str(c, "status"), "major_outage");
  json_decref(c);
  assert_int_equal(outbox_count(page, "incident"), 1);
  assert_int_equal(outbox_count(page, "component_update"), 1);
  /* identified */
  snprintf(ipath, sizeof ipath, "%.190s/%.64s", path, id);
  inc = admin("PATCH", ipath, "{\"incident\":{\"status\":\"identified\",\"body\":\"Found it\"}}",
              200);
  assert_string_equal(mt_str(inc, "status"), "identified");
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), 2);
  assert_string_equal(mt_str(upd(inc, 0), "status"), "identified");
  assert_string_equal(mt_str(upd(inc, 0), "body"), "Found it");
  assert_true(json_is_null(json_object_get(upd(inc, 0), "affected_components")));
  json_decref(inc);
  /* monitoring, components back to operational; no notifications */
  snprintf(body, sizeof body,
           "{\"incident\":{\"status\":\"monitoring\",\"body\":\"Fixed, watching\","
           "\"components\":{\"%s\":\"operational\"},\"deliver_notifications\":false}}",
           comp);
  inc = admin("PATCH", ipath, body, 200);
  assert_string_equal(mt_str(inc, "status"), "monitoring");
  assert_non_null(mt_str(inc, "monitoring_at"));
  assert_true(json_is_null(json_object_get(inc, "resolved_at")));
  ac = json_array_get(json_object_get(upd(inc, 0), "affected_components"), 0);
  assert_string_equal(mt_str(ac, "old_status"), "major_outage");
  assert_string_equal(mt_str(ac, "new_status"), "operational");
  assert_true(json_is_false(json_object_get(upd(inc, 0), "deliver_notifications")));
  json_decref(inc);
  assert_int_equal(outbox_count(page, "incident"), 2);
  assert_int_equal(outbox_count(page, "component_update"), 1);
  /* resolved */
  inc = admin("PUT", ipath, "{\"incident\":{\"status\":\"resolved\",\"body\":\"All good\"}}", 200);
  assert_string_equal(mt_str(inc, "status"), "resolved");
  assert_non_null(mt_str(inc, "resolved_at"));
  assert_non_null(mt_str(inc, "monitoring_at"));
  /* the impact it had stays */
  assert_string_equal(mt_str(inc, "impact"), "critical");
  const char *want[] = {"resolved", "monitoring", "identified", "investigating"};
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), 4);
  for (size_t i = 0; i < 4; i++)
    assert_string_equal(mt_str(upd(inc, i), "status"), want[i]);
  json_decref(inc);
  /* lists */
  json_t *list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 1);
  json_decref(list);
  snprintf(body, sizeof body, "%s/unresolved", path);
  list = admin("GET", body, NULL, 200);
  assert_int_equal(json_array_size(list), 0);
  json_decref(list);
  /* edit an existing update */
  char upath[384];
  snprintf(upath, sizeof upath, "%s/incident_updates/%s", ipath, first_update);
  u = admin("PATCH", upath,
            "{\"incident_update\":{\"body\":\"Investigating the primary\","
            "\"display_at\":\"2020-01-01T00:00:00Z\"}}",
            200);
  assert_string_equal(mt_str(u, "id"), first_update);
  assert_string_equal(mt_str(u, "body"), "Investigating the primary");
  assert_string_equal(mt_str(u, "display_at"), "2020-01-01T00:00:00.000Z");
  json_decref(u);
  snprintf(upath, sizeof upath, "%s/incident_updates/nosuchupdate", ipath);
  bad("PATCH", upath, "{\"incident_update\":{\"body\":\"x\"}}", 404, "update_id");
  snprintf(upath, sizeof upath, "%s/incident_updates/%s", ipath, first_update);
  bad("PATCH", upath, "{\"incident_update\":{\"display_at\":\"soon\"}}", 422, "display_at");
  bad("PATCH", upath, "{\"body\":\"x\"}", 422, "incident_update");
  /* reopen clears resolved_at */
  inc = admin("PATCH", ipath, "{\"incident\":{\"status\":\"investigating\"}}", 200);
  assert_true(json_is_null(json_object_get(inc, "resolved_at")));
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), 5);
  json_decref(inc);
  /* DELETE: 200 with the object, then 404 */
  inc = admin("DELETE", ipath, NULL, 200);
  assert_string_equal(mt_str(inc, "id"), id);
  json_decref(inc);
  bad("GET", ipath, NULL, 404, "id");
  bad("PATCH", ipath, "{\"incident\":{\"status\":\"resolved\"}}", 404, "id");
  bad("DELETE", ipath, NULL, 404, "id");
}

static void test_incident_lists(void **state) {
  (void)state;
  char page[64], path[256], q[512];
  mt_new_page(&g_h, "Lists", page);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  json_decref(admin("POST", path,
                    "{\"incident\":{\"name\":\"Database outage\",\"body\":\"replica lag\"}}", 201));
  json_decref(admin("POST", path, "{\"incident\":{\"name\":\"API slow\",\"status\":\"monitoring\"}}",
                    201));
  json_decref(admin("POST", path,
                    "{\"incident\":{\"name\":\"Upgrade\",\"scheduled_for\":\"2099-01-01T00:00:00Z\","
                    "\"scheduled_until\":\"2099-01-01T02:00:00Z\",\"body\":\"planned\"}}",
                    201));
  struct {
    const char *query;
    size_t n;
  } cases[] = {
      {"", 3},           {"?q=database", 1},  {"?q=LAG", 1},  {"?q=api+slow", 1},
      {"?q=nothing", 0}, {"?limit=1", 1},     {"?limit=2&page=2", 1},
      {"?limit=1000", 3}, {"/unresolved", 2}, {"/upcoming", 1}, {"/scheduled", 1},
      {"/active_maintenance", 0}, {"/unresolved.json?per_page=1", 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(q, sizeof q, "%s%s", path, cases[i].query);
    json_t *list = admin("GET", q, NULL, 200);
    if (json_array_size(list) != cases[i].n)
      fail_msg("GET %s: %zu items, want %zu", q, json_array_size(list), cases[i].n);
    json_decref(list);
  }
  /* newest first */
  json_t *list = admin("GET", path, NULL, 200);
  assert_string_equal(mt_str(json_array_get(list, 0), "name"), "Upgrade");
  assert_string_equal(mt_str(json_array_get(list, 2), "name"), "Database outage");
  json_t *m = json_array_get(list, 0);
  assert_string_equal(mt_str(m, "status"), "scheduled");
  assert_string_equal(mt_str(m, "impact"), "maintenance");
  assert_string_equal(mt_str(m, "scheduled_for"), "2099-01-01T00:00:00.000Z");
  json_decref(list);
  snprintf(q, sizeof q, "%s?limit=abc", path);
  bad("GET", q, NULL, 422, "limit");
  snprintf(q, sizeof q, "%s?page=0", path);
  bad("GET", q, NULL, 422, "page");
  snprintf(q, sizeof q, "%s?q=%%zz", path);
  bad("GET", q, NULL, 400, "q");
}

static void test_incident_bad_input(void **state) {
  (void)state;
  char page[64], comp[64], path[256], ipath[256], body[2048];
  mt_new_page(&g_h, "Bad input", page);
  mt_new_component(&g_h, page, "Core", comp);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  json_t *inc = admin("POST", path, "{\"incident\":{\"name\":\"Existing\"}}", 201);
  snprintf(ipath, sizeof ipath, "%.190s/%.64s", path, mt_str(inc, "id"));
  json_decref(inc);
  /* malformed JSON, wrong or missing content type */
  bad("POST", path, "{\"incident\":{\"name\":", 400, NULL);
  bad("POST", path, "[1,2]", 400, NULL);
  mt_expect_error(&g_h, g_h.admin_key, "POST", path, "text/plain", "name=x", 415, NULL);
  mt_expect_error(&g_h, g_h.admin_key, "POST", path, NULL, "{\"incident\":{}}", 415, NULL);
  /* missing, wrong types, enums, sizes */
  bad("POST", path, "{\"name\":\"x\"}", 422, "incident");
  bad("POST", path, "{\"incident\":{}}", 422, "name");
  bad("POST", path, "{\"incident\":{\"name\":null}}", 422, "name");
  bad("POST", path, "{\"incident\":{\"name\":[\"x\"]}}", 422, "name");
  char *s = repeat('n', 256);
  snprintf(body, sizeof body, "{\"incident\":{\"name\":\"%s\"}}", s);
  free(s);
  bad("POST", path, body, 422, "name");
  /* 255 characters (multi-byte) are fine: the limit counts characters */
  char name[1024] = "";
  for (int i = 0; i < 255; i++)
    strcat(name, "\xc3\xa9");
  snprintf(body, sizeof body, "{\"incident\":{\"name\":\"%s\"}}", name);
  json_decref(admin("POST", path, body, 201));
  s = repeat('b', 25001);
  char *big = malloc(25100);
  snprintf(big, 25100, "{\"incident\":{\"name\":\"x\",\"body\":\"%s\"}}", s);
  bad("POST", path, big, 422, "body");
  free(s);
  free(big);
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"status\":\"fixed\"}}", 422, "status");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"impact_override\":\"huge\"}}", 422,
      "impact_override");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"components\":[\"a\"]}}", 422, "components");
  snprintf(body, sizeof body,
           "{\"incident\":{\"name\":\"x\",\"components\":{\"%s\":\"melted\"}}}", comp);
  bad("POST", path, body, 422, "components");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"components\":{\"nosuch\":\"major_outage\"}}}",
      404, "components");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"component_ids\":[\"nosuch\"]}}", 404,
      "component_ids");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"component_ids\":[1]}}", 422,
      "component_ids");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"deliver_notifications\":\"yes\"}}", 422,
      "deliver_notifications");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"metadata\":{\"a\":1}}}", 422, "metadata");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"metadata\":[]}}", 422, "metadata");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"reminder_intervals\":\"[1,,2]\"}}", 422,
      "reminder_intervals");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"scheduled_for\":\"tomorrow\"}}", 422,
      "scheduled_for");
  bad("POST", path,
      "{\"incident\":{\"name\":\"x\",\"scheduled_for\":\"2099-01-02T00:00:00Z\","
      "\"scheduled_until\":\"2099-01-01T00:00:00Z\"}}",
      422, "scheduled_until");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"status\":\"in_progress\"}}", 422,
      "scheduled_for");
  bad("POST", path,
      "{\"incident\":{\"name\":\"x\",\"scheduled_for\":\"2099-01-01T00:00:00Z\","
      "\"scheduled_until\":\"2099-01-01T01:00:00Z\",\"status\":\"identified\"}}",
      422, "status");
  bad("POST", path, "{\"incident\":{\"name\":\"x\",\"id\":\"UPPER\"}}", 422, "id");
  /* a PATCH: wrong status kind for a realtime incident, unknown ids */
  bad("PATCH", ipath, "{\"incident\":{\"status\":\"completed\"}}", 422, "status");
  bad("PATCH", ipath, "{\"incident\":{\"scheduled_for\":\"2099-01-01T00:00:00Z\"}}", 422,
      "scheduled_for");
  bad("PATCH", ipath, "{\"incident\":{\"components\":{\"nosuch\":\"operational\"}}}", 404,
      "components");
  snprintf(body, sizeof body, "%s/nosuchincident", path);
  bad("PATCH", body, "{\"incident\":{\"status\":\"resolved\"}}", 404, "id");
  /* create of an existing id */
  json_decref(admin("POST", path, "{\"incident\":{\"id\":\"fixedid1\",\"name\":\"a\"}}", 201));
  bad("POST", path, "{\"incident\":{\"id\":\"fixedid1\",\"name\":\"b\"}}", 409, "id");
  /* nothing half-written: the incidents and the component are as before */
  json_t *list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 3);
  json_decref(list);
  inc = admin("GET", ipath, NULL, 200);
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), 1);
  assert_string_equal(mt_str(inc, "status"), "investigating");
  json_decref(inc);
  snprintf(body, sizeof body, "/v1/pages/%s/components/%s", page, comp);
  json_t *c = admin("GET", body, NULL, 200);
  assert_string_equal(mt_str(c, "status"), "operational");
  json_decref(c);
  assert_int_equal(outbox_count(page, "component_update"), 0);
}

/* ---- form-encoded bodies ------------------------------------------------------------------------------- */

static void test_form_bodies(void **state) {
  (void)state;
  char page[64], comp[64], comp2[64], path[256], body[1024];
  mt_new_page(&g_h, "Forms", page);
  mt_new_component(&g_h, page, "Core", comp);
  mt_new_component(&g_h, page, "Edge", comp2);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  snprintf(body, sizeof body,
           "incident[name]=Edge+is+slow&incident[status]=identified"
           "&incident[body]=Caf%%C3%%A9+on+fire&incident[components][%s]=degraded_performance"
           "&incident[component_ids][]=%s&incident[component_ids][]=%s"
           "&incident[deliver_notifications]=false&incident[impact_override]=",
           comp, comp, comp2);
  api_response r;
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "POST", path, MT_FORM, body, &r), 201);
  json_t *inc = mt_parse(&r);
  api_response_free(&r);
  assert_string_equal(mt_str(inc, "name"), "Edge is slow");
  assert_string_equal(mt_str(inc, "status"), "identified");
  assert_string_equal(mt_str(upd(inc, 0), "body"), "Caf\xc3\xa9 on fire");
  assert_true(json_is_false(json_object_get(upd(inc, 0), "deliver_notifications")));
  assert_true(json_is_null(json_object_get(inc, "impact_override"))); /* "" = null */
  assert_int_equal(json_array_size(json_object_get(inc, "components")), 2);
  assert_int_equal(json_array_size(json_object_get(upd(inc, 0), "affected_components")), 2);
  json_decref(inc);
  assert_int_equal(outbox_count(page, "incident"), 0);
  /* a component as a form, booleans as strings */
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "POST", path, MT_FORM,
                          "component[name]=Form+made&component[showcase]=false"
                          "&component[only_show_if_degraded]=1",
                          &r),
                   201);
  json_t *c = mt_parse(&r);
  api_response_free(&r);
  assert_string_equal(mt_str(c, "name"), "Form made");
  assert_true(json_is_false(json_object_get(c, "showcase")));
  assert_true(json_is_true(json_object_get(c, "only_show_if_degraded")));
  json_decref(c);
  /* errors in forms name the key or field */
  mt_expect_error(&g_h, g_h.admin_key, "POST", path, MT_FORM, "component[name=x", 400,
                  "component[name");
  mt_expect_error(&g_h, g_h.admin_key, "POST", path, MT_FORM,
                  "component[name]=x&component[showcase]=maybe", 422, "showcase");
  mt_expect_error(&g_h, g_h.admin_key, "POST", path, MT_FORM, "component[name]=%zz", 400, NULL);
  mt_expect_error(&g_h, g_h.admin_key, "POST", path, MT_FORM, "component[description]=x", 422,
                  "name");
}

/* ---- subscribers ------------------------------------------------------------------------------------------ */

static void test_subscribers(void **state) {
  (void)state;
  char page[64], comp[64], path[256], spath[256], body[512];
  mt_new_page(&g_h, "Subscribers", page);
  mt_new_component(&g_h, page, "Core", comp);
  snprintf(path, sizeof path, "/v1/pages/%s/subscribers", page);
  json_t *s = admin("POST", path, "{\"subscriber\":{\"email\":\"ops@example.com\"}}", 201);
  char e_id[64];
  snprintf(e_id, sizeof e_id, "%s", mt_str(s, "id"));
  assert_string_equal(mt_str(s, "mode"), "email");
  assert_string_equal(mt_str(s, "email"), "ops@example.com");
  assert_true(json_is_null(json_object_get(s, "components")));
  assert_true(json_is_null(json_object_get(s, "quarantined_at")));
  json_decref(s);
  snprintf(body, sizeof body,
           "{\"subscriber\":{\"phone_number\":\"+1 555 0100\",\"component_ids\":[\"%s\"]}}", comp);
  s = admin("POST", path, body, 201);
  char sms_id[64];
  snprintf(sms_id, sizeof sms_id, "%s", mt_str(s, "id"));
  assert_string_equal(mt_str(s, "mode"), "sms");
  assert_string_equal(mt_str(s, "phone_country"), "us");
  assert_string_equal(json_string_value(json_array_get(json_object_get(s, "components"), 0)), comp);
  json_decref(s);
  s = admin("POST", path,
            "{\"subscriber\":{\"endpoint\":\"https://hooks.example.com/x\",\"email\":\"dev@example.com\"}}",
            201);
  assert_string_equal(mt_str(s, "mode"), "webhook");
  char wh_id[64];
  snprintf(wh_id, sizeof wh_id, "%s", mt_str(s, "id"));
  json_decref(s);
  /* bad subscribers */
  bad("POST", path, "{\"subscriber\":{\"endpoint\":\"https://x.example.com\"}}", 422, "email");
  bad("POST", path, "{\"subscriber\":{}}", 422, "email");
  bad("POST", path, "{\"subscriber\":{\"email\":\"not-an-address\"}}", 422, "email");
  bad("POST", path, "{\"subscriber\":{\"phone_number\":\"call me\"}}", 422, "phone_number");
  bad("POST", path, "{\"subscriber\":{\"phone_number\":\"5550100\",\"phone_country\":\"usa\"}}",
      422, "phone_country");
  bad("POST", path, "{\"subscriber\":{\"endpoint\":\"ftp://x\",\"email\":\"a@b.c\"}}", 422,
      "endpoint");
  bad("POST", path,
      "{\"subscriber\":{\"endpoint\":\"https://hooks.slack.com/x\",\"email\":\"a@b.c\"}}", 422,
      "endpoint");
  bad("POST", path, "{\"subscriber\":{\"email\":\"a@b.c\",\"component_ids\":[\"nosuch\"]}}", 404,
      "component_ids");
  bad("POST", path, "{\"subscriber\":{\"email\":\"a@b.c\",\"component_ids\":[]}}", 422,
      "component_ids");
  /* lists: type, q, 0-based page */
  char q[384];
  struct {
    const char *query;
    size_t n;
  } cases[] = {{"", 3},          {"?type=sms", 1},         {"?q=EXAMPLE.com", 2},
               {"?limit=2", 2},  {"?limit=2&page=1", 1},   {"?state=all", 3},
               {"?state=quarantined", 0}, {"?state=unconfirmed", 0}, {"?type=slack", 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(q, sizeof q, "%s%s", path, cases[i].query);
    json_t *list = admin("GET", q, NULL, 200);
    if (json_array_size(list) != cases[i].n)
      fail_msg("GET %s: %zu, want %zu", q, json_array_size(list), cases[i].n);
    json_decref(list);
  }
  snprintf(q, sizeof q, "%s?state=gone", path);
  bad("GET", q, NULL, 422, "state");
  snprintf(q, sizeof q, "%s?type=pigeon", path);
  bad("GET", q, NULL, 422, "type");
  snprintf(q, sizeof q, "%s?page=-1", path);
  bad("GET", q, NULL, 422, "page");
  /* GET, PATCH component_ids (out = all components) */
  snprintf(spath, sizeof spath, "%.190s/%.64s", path, e_id);
  s = admin("GET", spath, NULL, 200);
  assert_string_equal(mt_str(s, "id"), e_id);
  json_decref(s);
  snprintf(body, sizeof body, "{\"component_ids\":[\"%s\"]}", comp);
  s = admin("PATCH", spath, body, 200);
  assert_int_equal(json_array_size(json_object_get(s, "components")), 1);
  json_decref(s);
  s = admin("PATCH", spath, "{}", 200);
  assert_true(json_is_null(json_object_get(s, "components")));
  json_decref(s);
  bad("PATCH", spath, "{\"component_ids\":[\"nosuch\"]}", 404, "component_ids");
  /* DELETE: 200 with the subscriber; then gone from lists and lookups */
  s = admin("DELETE", spath, NULL, 200);
  assert_string_equal(mt_str(s, "id"), e_id);
  json_decref(s);
  bad("GET", spath, NULL, 404, "id");
  bad("DELETE", spath, NULL, 404, "id");
  json_t *list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 2);
  json_decref(list);
  /* bulk unsubscribe: unknown ids refuse the whole request */
  snprintf(q, sizeof q, "%s/unsubscribe", path);
  snprintf(body, sizeof body, "{\"subscribers\":[\"%s\",\"nosuch\"]}", sms_id);
  bad("POST", q, body, 404, "subscribers");
  bad("POST", q, "{}", 422, "subscribers");
  bad("POST", q, "{\"subscribers\":\"some\"}", 422, "subscribers");
  snprintf(body, sizeof body, "{\"subscribers\":[\"%s\"]}", sms_id);
  list = admin("POST", q, body, 201);
  assert_int_equal(json_array_size(list), 1);
  json_decref(list);
  list = admin("POST", q, "{\"subscribers\":\"all\"}", 201);
  assert_int_equal(json_array_size(list), 1);
  assert_string_equal(mt_str(json_array_get(list, 0), "id"), wh_id);
  json_decref(list);
  list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 0);
  json_decref(list);
}

/* ---- two writers on one incident ------------------------------------------------------------------------ */

#define WRITES 12

typedef struct writer {
  const char *path;
  int who;
  int ok;
  char comps[WRITES][64]; /* one component per write, marked affected by it */
} writer;

static void *write_loop(void *arg) {
  writer *w = arg;
  static const char *const statuses[] = {"identified", "monitoring", "investigating"};
  for (int i = 0; i < WRITES; i++) {
    char body[256];
    snprintf(body, sizeof body,
             "{\"incident\":{\"status\":\"%s\",\"body\":\"writer %d update %d\","
             "\"components\":{\"%s\":\"degraded_performance\"}}}",
             statuses[(i + w->who) % 3], w->who, i, w->comps[i]);
    api_response r;
    int st = mt_req(&g_h, g_h.admin_key, "PATCH", w->path, MT_JSON, body, &r);
    api_response_free(&r);
    w->ok += st == 200;
  }
  return NULL;
}

static void test_concurrent_writers(void **state) {
  (void)state;
  char page[64], path[256], ipath[256];
  mt_new_page(&g_h, "Concurrent", page);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  json_t *inc = admin("POST", path, "{\"incident\":{\"name\":\"Race\",\"body\":\"start\"}}", 201);
  snprintf(ipath, sizeof ipath, "%.190s/%.64s", path, mt_str(inc, "id"));
  json_decref(inc);
  static writer w[2];
  for (int k = 0; k < 2; k++) {
    w[k].path = ipath;
    w[k].who = k;
    w[k].ok = 0;
    for (int i = 0; i < WRITES; i++)
      mt_new_component(&g_h, page, "c", w[k].comps[i]);
  }
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&t[i], NULL, write_loop, &w[i]), 0);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  assert_int_equal(w[0].ok, WRITES);
  assert_int_equal(w[1].ok, WRITES);
  inc = admin("GET", ipath, NULL, 200);
  json_t *ups = json_object_get(inc, "incident_updates");
  assert_int_equal(json_array_size(ups), 1 + 2 * WRITES);
  /* every update is there exactly once */
  for (int who = 0; who < 2; who++)
    for (int i = 0; i < WRITES; i++) {
      char want[64];
      snprintf(want, sizeof want, "writer %d update %d", who, i);
      int seen = 0;
      for (size_t k = 0; k < json_array_size(ups); k++)
        seen += !strcmp(mt_str(json_array_get(ups, k), "body"), want);
      if (seen != 1)
        fail_msg("'%s' seen %d times", want, seen);
    }
  /* no write was computed from a stale state: each one's component is in
   * the incident's affected list (a lost update would drop some) */
  assert_int_equal(json_array_size(json_object_get(inc, "components")), 2 * WRITES);
  /* consistent: the incident's status is its newest update's, and each
   * writer's own updates appear in the order it sent them */
  assert_string_equal(mt_str(inc, "status"), mt_str(json_array_get(ups, 0), "status"));
  for (int who = 0; who < 2; who++) {
    int last = WRITES;
    for (size_t k = 0; k < json_array_size(ups); k++) {
      int ww, n;
      if (sscanf(mt_str(json_array_get(ups, k), "body"), "writer %d update %d", &ww, &n) == 2 &&
          ww == who) {
        assert_true(n < last);
        last = n;
      }
    }
  }
  json_decref(inc);
}

/* ---- routing, and PostgreSQL down ----------------------------------------------------------------------------- */

static void test_routes(void **state) {
  (void)state;
  api_response r;
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "DELETE", "/v1/pages", NULL, NULL, &r), 405);
  api_response_free(&r);
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "GET", "/v1/nothing", NULL, NULL, &r), 404);
  api_response_free(&r);
  /* parameters that cannot be ids are simply not found */
  char page[64], path[512];
  mt_new_page(&g_h, "Routes", page);
  snprintf(path, sizeof path, "/v1/pages/%s/components/a%%20b", page);
  bad("GET", path, NULL, 404, "id");
  char *longid = repeat('a', 300);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", page, longid);
  free(longid);
  bad("GET", path, NULL, 404, "id");
  /* every management answer carries the rate-limit headers */
  char hv[64];
  snprintf(path, sizeof path, "/v1/pages/%s/components.json", page);
  assert_int_equal(mt_req(&g_h, g_h.admin_key, "GET", path, NULL, NULL, &r), 200);
  assert_non_null(api_response_header(&r, "X-RateLimit-Limit", hv, sizeof hv));
  assert_non_null(api_response_header(&r, "X-RateLimit-Remaining", hv, sizeof hv));
  assert_non_null(api_response_header(&r, "X-RateLimit-Reset", hv, sizeof hv));
  assert_non_null(api_response_header(&r, "Content-Type", hv, sizeof hv));
  assert_non_null(strstr(hv, "application/json"));
  api_response_free(&r);
}

static void test_database_down(void **state) {
  (void)state;
  char page[64], comp[64], path[256], cpath[256];
  mt_new_page(&g_h, "Outage", page);
  mt_new_component(&g_h, page, "Core", comp);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
  snprintf(cpath, sizeof cpath, "/v1/pages/%s/components/%s", page, comp);
  assert_int_equal(sp_fixture_pg_halt(&g_h.pg), 0);
  /* writes: 503 with Retry-After, at once or after the pool notices */
  api_response r;
  char body[256], hv[32];
  snprintf(body, sizeof body,
           "{\"incident\":{\"name\":\"during outage\",\"components\":{\"%s\":\"major_outage\"}}}",
           comp);
  int st = 0;
  for (int i = 0; i < 3 && st != 503; i++) {
    st = mt_req(&g_h, g_h.admin_key, "POST", path, MT_JSON, body, &r);
    if (st != 503)
      api_response_free(&r);
  }
  assert_int_equal(st, 503);
  assert_non_null(strstr(r.body, "database unavailable; retry later"));
  assert_non_null(api_response_header(&r, "Retry-After", hv, sizeof hv));
  api_response_free(&r);
  /* reads still answer from memory */
  json_t *c = admin("GET", cpath, NULL, 200);
  assert_string_equal(mt_str(c, "status"), "operational");
  json_decref(c);
  assert_int_equal(sp_fixture_pg_resume(&g_h.pg), 0);
  /* back: writes succeed (the pool reconnects by itself) */
  long long end = mt_now_ms() + 20000;
  do {
    st = mt_req(&g_h, g_h.admin_key, "POST", path, MT_JSON, body, &r);
    api_response_free(&r);
    if (st != 201)
      mt_sleep_ms(200);
  } while (st != 201 && mt_now_ms() < end);
  assert_int_equal(st, 201);
  /* nothing half-written: exactly the one incident, component moved once */
  json_t *list = admin("GET", path, NULL, 200);
  assert_int_equal(json_array_size(list), 1);
  json_decref(list);
  c = admin("GET", cpath, NULL, 200);
  assert_string_equal(mt_str(c, "status"), "major_outage");
  json_decref(c);
  assert_int_equal(outbox_count(page, "incident"), 1);
  assert_int_equal(outbox_count(page, "component_update"), 1);
}

/* ---- lanes (unit) ------------------------------------------------------------------------ */

typedef struct lane_probe {
  api_lane_job job;
  int runs;
} lane_probe;

static void probe_run(api_lane_job *j) { ((lane_probe *)j)->runs++; }

static void test_lanes(void **state) {
  (void)state;
  lane_probe a = {0}, b = {0}, c = {0}, d = {0};
  assert_int_equal(api_lane_enter(&a.job, "p/incident/1", probe_run), 0);
  assert_int_equal(a.runs, 1); /* a free lane runs at once */
  assert_int_equal(api_lane_enter(&b.job, "p/incident/1", probe_run), 0);
  assert_int_equal(api_lane_enter(&d.job, "p/incident/1", probe_run), 0);
  assert_int_equal(b.runs, 0); /* queued behind a */
  assert_int_equal(api_lane_enter(&c.job, "p/incident/2", probe_run), 0);
  assert_int_equal(c.runs, 1); /* another key does not wait */
  assert_int_equal(api_lane_pending(), 4);
  api_lane_leave(&b.job); /* not running: refused, nothing moves */
  assert_int_equal(api_lane_pending(), 4);
  api_lane_leave(&a.job);
  assert_int_equal(b.runs, 1);
  assert_int_equal(d.runs, 0); /* in order */
  api_lane_leave(&b.job);
  assert_int_equal(d.runs, 1);
  api_lane_leave(&d.job);
  api_lane_leave(&c.job);
  assert_int_equal(api_lane_pending(), 0);
  /* the lane is gone: the key runs at once again */
  assert_int_equal(api_lane_enter(&a.job, "p/incident/1", probe_run), 0);
  assert_int_equal(a.runs, 2);
  api_lane_leave(&a.job);
  char key[API_LANE_KEY_MAX + 1];
  memset(key, 'k', sizeof key - 1);
  key[sizeof key - 1] = '\0';
  assert_int_equal(api_lane_enter(&a.job, key, probe_run), SP_ERR_INVAL);
  assert_int_equal(a.runs, 2);
}

int main(void) {
  const struct CMUnitTest units[] = {
      cmocka_unit_test(test_lanes),
  };
  if (cmocka_run_group_tests_name("lanes", units, NULL, NULL))
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pages),
      cmocka_unit_test(test_components),
      cmocka_unit_test(test_groups),
      cmocka_unit_test(test_incident_lifecycle),
      cmocka_unit_test(test_incident_lists),
      cmocka_unit_test(test_incident_bad_input),
      cmocka_unit_test(test_form_bodies),
      cmocka_unit_test(test_subscribers),
      cmocka_unit_test(test_concurrent_writers),
      cmocka_unit_test(test_routes),
      cmocka_unit_test(test_database_down),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
