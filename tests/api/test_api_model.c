/* Tests for api_model and api_v1json: enum validation, the typed views
 * built from an in-memory crdt_doc (display order, positions, groups,
 * incident filters and update order), the status rollup table of reference
 * §1.6, incident impact, the v1 JSON shapes (key order, explicit nulls) and
 * the views' allocation-failure paths.  No database. */
#include "api_testdoc.h"

#include <stdlib.h>

#include "model.h"
#include "sp_alloc.h"

#define POOL_MAX (64u << 20)

typedef struct fx {
  td t;
  sp_pool pool;
} fx;

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  td_init(&f->t);
  td_scenario(&f->t);
  sp_pool_init(&f->pool, NULL, 0, POOL_MAX);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  sp_pool_release(&f->pool);
  crdt_doc_free(f->t.doc);
  free(f);
  return 0;
}

/* The keys of `o` are exactly `keys` (NULL-terminated), in that order. */
static void assert_keys(json_t *o, const char *const *keys) {
  assert_true(json_is_object(o));
  size_t i = 0;
  for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it), i++) {
    assert_non_null(keys[i]);
    assert_string_equal(json_object_iter_key(it), keys[i]);
  }
  assert_null(keys[i]);
}

/* ---- enums ---- */

static void test_enums(void **state) {
  (void)state;
  assert_true(api_enum_ok(API_ENUM_COMPONENT_STATUS, "operational"));
  assert_true(api_enum_ok(API_ENUM_COMPONENT_STATUS, "under_maintenance"));
  assert_false(api_enum_ok(API_ENUM_COMPONENT_STATUS, "Operational"));
  assert_false(api_enum_ok(API_ENUM_COMPONENT_STATUS, ""));
  assert_false(api_enum_ok(API_ENUM_COMPONENT_STATUS, NULL));
  assert_true(api_enum_ok(API_ENUM_INCIDENT_STATUS, "postmortem"));
  assert_false(api_enum_ok(API_ENUM_INCIDENT_STATUS, "scheduled"));
  assert_true(api_enum_ok(API_ENUM_MAINT_STATUS, "verifying"));
  assert_false(api_enum_ok(API_ENUM_MAINT_STATUS, "resolved"));
  assert_true(api_enum_ok(API_ENUM_IMPACT, "maintenance"));
  assert_false(api_enum_ok(API_ENUM_IMPACT, "severe"));
  assert_true(api_enum_ok(API_ENUM_SUBSCRIBER_MODE, "webhook"));
  assert_false(api_enum_ok(API_ENUM_SUBSCRIBER_MODE, "slack"));
  assert_true(api_enum_ok(API_ENUM_INCIDENT_KIND, "historical"));
  assert_false(api_enum_ok(API_ENUM_COUNT, "operational"));
  assert_false(api_enum_ok((api_enum)-1, "operational"));
  assert_string_equal(api_enum_values(API_ENUM_SUBSCRIBER_MODE), "email, sms, webhook");
  assert_string_equal(api_enum_values(API_ENUM_COUNT), "");
  assert_int_equal(api_status_severity("operational"), 0);
  assert_int_equal(api_status_severity("under_maintenance"), 1);
  assert_int_equal(api_status_severity("degraded_performance"), 2);
  assert_int_equal(api_status_severity("partial_outage"), 3);
  assert_int_equal(api_status_severity("major_outage"), 4);
  assert_int_equal(api_status_severity("major"), -1);
  assert_int_equal(api_status_severity(NULL), -1);
  assert_string_equal(api_status_of_severity(4), "major_outage");
  assert_null(api_status_of_severity(5));
}

/* ---- rollup (reference §1.6) ---- */

static void check_rollup(const char *const *st, size_t n, const char *ind, const char *desc) {
  api_rollup r = api_rollup_statuses(st, n);
  assert_string_equal(r.indicator, ind);
  assert_string_equal(r.description, desc);
}

static void test_rollup_table(void **state) {
  (void)state;
#define R(ind, desc, ...)                                                                          \
  do {                                                                                             \
    const char *const st[] = {__VA_ARGS__};                                                        \
    check_rollup(st, sizeof st / sizeof st[0], ind, desc);                                         \
  } while (0)
  /* N = 0 */
  check_rollup(NULL, 0, "none", "All Systems Operational");
  /* N = 1: the documented single-component table */
  R("none", "All Systems Operational", "operational");
  R("maintenance", "Service Under Maintenance", "under_maintenance");
  R("minor", "Partially Degraded Service", "degraded_performance");
  R("major", "Partial System Outage", "partial_outage");
  R("critical", "Major System Outage", "major_outage");
  /* N >= 2, each worst status with ALL true and ALL false */
  R("critical", "Major System Outage", "major_outage", "major_outage", "major_outage");
  R("major", "Partial System Outage", "major_outage", "operational");
  R("major", "Partial System Outage", "degraded_performance", "major_outage", "partial_outage");
  R("major", "Partial System Outage", "partial_outage", "partial_outage");
  R("minor", "Minor Service Outage", "partial_outage", "operational");
  R("minor", "Minor Service Outage", "degraded_performance", "partial_outage");
  R("minor", "Degraded System Service", "degraded_performance", "degraded_performance");
  R("minor", "Partially Degraded Service", "operational", "degraded_performance");
  R("minor", "Partially Degraded Service", "under_maintenance", "degraded_performance");
  R("maintenance", "Service Under Maintenance", "under_maintenance", "under_maintenance");
  R("maintenance", "Service Under Maintenance", "operational", "under_maintenance");
  R("none", "All Systems Operational", "operational", "operational", "operational");
  /* unknown values count as operational */
  R("none", "All Systems Operational", "bogus");
  R("minor", "Partially Degraded Service", "", "degraded_performance", "degraded_performance");
#undef R
}

static void test_rollup_ignores_groups(void **state) {
  fx *f = *state;
  api_component_v c[3];
  memset(c, 0, sizeof c);
  c[0].group = 1;
  c[0].status = "major_outage";
  c[1].status = "operational";
  c[2].status = "operational";
  api_rollup r = api_rollup_components(c, 3);
  assert_string_equal(r.indicator, "none");
  /* one degraded component among two: not ALL (the group row is not counted) */
  c[2].status = "degraded_performance";
  r = api_rollup_components(c, 3);
  assert_string_equal(r.description, "Partially Degraded Service");
  /* only groups: N = 0 */
  r = api_rollup_components(c, 1);
  assert_string_equal(r.indicator, "none");

  /* the scenario page: major_outage among others -> major / Partial System Outage */
  assert_int_equal(api_page_rollup(f->t.doc, "pg1", &r), 0);
  assert_string_equal(r.indicator, "major");
  assert_string_equal(r.description, "Partial System Outage");
  api_component_v *all;
  size_t n;
  assert_int_equal(api_components_list(f->t.doc, &f->pool, "pg1", &all, &n), 0);
  api_rollup r2 = api_rollup_components(all, n);
  assert_string_equal(r2.indicator, r.indicator);
  assert_string_equal(r2.description, r.description);
  /* an unknown page has no components */
  assert_int_equal(api_page_rollup(f->t.doc, "nope", &r), 0);
  assert_string_equal(r.indicator, "none");
  /* every component down -> critical; the page-level scan sees deletes */
  const char *ids[] = {"c_api", "c_db", "c_cache", "c_web", "c_mx", "c_xss"};
  for (size_t i = 0; i < 6; i++)
    td_set(&f->t, "pg1", API_T_COMPONENT, ids[i], "status", "major_outage");
  assert_int_equal(api_page_rollup(f->t.doc, "pg1", &r), 0);
  assert_string_equal(r.indicator, "critical");
  td_del(&f->t, "pg1", API_T_COMPONENT, "c_web");
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_api", "status", "operational");
  assert_int_equal(api_page_rollup(f->t.doc, "pg1", &r), 0);
  assert_string_equal(r.indicator, "major");
}

/* ---- impact ---- */

static void test_incident_impact(void **state) {
  fx *f = *state;
  api_incident_v x;
  assert_int_equal(api_incident_get(f->t.doc, &f->pool, "pg1", "inc1", &x), 0);
  assert_string_equal(api_incident_impact(&x), "critical"); /* c_db -> major_outage */
  assert_int_equal(api_incident_get(f->t.doc, &f->pool, "pg1", "inc2", &x), 0);
  /* resolved, its components operational again: keeps the impact it had */
  assert_string_equal(api_incident_impact(&x), "minor");
  assert_int_equal(api_incident_get(f->t.doc, &f->pool, "pg1", "inc3", &x), 0);
  assert_string_equal(api_incident_impact(&x), "critical"); /* impact_override */
  assert_int_equal(api_incident_get(f->t.doc, &f->pool, "pg1", "m1", &x), 0);
  assert_string_equal(api_incident_impact(&x), "maintenance");

  /* built by hand: each status's impact, stored impact as a floor, bad override ignored */
  api_update_v u;
  memset(&u, 0, sizeof u);
  memset(&x, 0, sizeof x);
  x.updates = &u;
  x.nupdates = 1;
  assert_string_equal(api_incident_impact(&x), "none");
  static const char *const map[][2] = {{"major_outage", "critical"},
                                       {"partial_outage", "major"},
                                       {"degraded_performance", "minor"},
                                       {"under_maintenance", "none"},
                                       {"operational", "none"}};
  char buf[200];
  for (size_t i = 0; i < 5; i++) {
    snprintf(
        buf, sizeof buf,
        "[{\"code\":\"a\",\"name\":\"A\",\"old_status\":\"operational\",\"new_status\":\"%s\"}]",
        map[i][0]);
    u.affected_components = buf;
    assert_string_equal(api_incident_impact(&x), map[i][1]);
    assert_string_equal(api_impact_of_status(map[i][0]), map[i][1]);
  }
  x.impact = "major";
  assert_string_equal(api_incident_impact(&x), "major");
  u.affected_components = "not json";
  assert_string_equal(api_incident_impact(&x), "major");
  x.impact_override = "bogus";
  assert_string_equal(api_incident_impact(&x), "major");
  x.impact_override = "none";
  assert_string_equal(api_incident_impact(&x), "none");
}

/* ---- views ---- */

static void test_components_display_order(void **state) {
  fx *f = *state;
  api_component_v *c;
  size_t n;
  assert_int_equal(api_components_list(f->t.doc, &f->pool, "pg1", &c, &n), 0);
  assert_int_equal(n, 7);
  const char *ids[] = {"c_api", "grp", "c_db", "c_cache", "c_web", "c_mx", "c_xss"};
  const int pos[] = {1, 2, 1, 2, 3, 4, 5};
  for (size_t i = 0; i < n; i++) {
    assert_string_equal(c[i].id, ids[i]);
    assert_int_equal(c[i].position, pos[i]);
    assert_string_equal(c[i].page_id, "pg1");
  }
  assert_true(c[1].group);
  assert_string_equal(c[1].name, "Backend");
  assert_string_equal(c[1].status, "major_outage"); /* worst child */
  assert_int_equal(c[1].nchildren, 2);
  assert_string_equal(c[1].children[0], "c_db");
  assert_string_equal(c[1].children[1], "c_cache");
  assert_null(c[1].group_id);
  assert_null(c[1].start_date);
  assert_string_equal(c[2].group_id, "grp");
  assert_null(c[0].group_id);
  assert_null(c[0].description);
  assert_true(c[0].showcase);
  assert_string_equal(c[0].start_date, "2026-01-01");
  assert_string_equal(c[0].created_at, "2026-01-01T00:00:01.000Z");

  api_component_v one;
  assert_int_equal(api_component_get(f->t.doc, &f->pool, "pg1", "c_cache", 0, &one), 0);
  assert_int_equal(one.position, 2);
  assert_int_equal(api_component_get(f->t.doc, &f->pool, "pg1", "grp", 1, &one), 0);
  assert_int_equal(one.nchildren, 2);
  assert_int_equal(api_component_get(f->t.doc, &f->pool, "pg1", "grp", 0, &one), SP_ERR_NOENT);
  assert_int_equal(api_component_get(f->t.doc, &f->pool, "pg1", "zzz", 0, &one), SP_ERR_NOENT);

  /* an unknown page lists nothing */
  assert_int_equal(api_components_list(f->t.doc, &f->pool, "nope", &c, &n), 0);
  assert_int_equal(n, 0);
}

static void test_components_orphans_and_bad_values(void **state) {
  fx *f = *state;
  /* the group goes away: its children show at the top level, group_id null;
   * a NULL or unknown status reads operational; duplicate positions are
   * renumbered 1..n (ties by created_at, then id) */
  td_del(&f->t, "pg1", API_T_GROUP, "grp");
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_db", "status", NULL);
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_cache", "status", "on_fire");
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_mx", "position", "garbage");
  api_component_v *c;
  size_t n;
  assert_int_equal(api_components_list(f->t.doc, &f->pool, "pg1", &c, &n), 0);
  assert_int_equal(n, 6);
  /* stored positions: c_api 1, c_db 1, c_cache 2, c_web 3, c_xss 5, c_mx none (last) */
  const char *ids[] = {"c_api", "c_db", "c_cache", "c_web", "c_xss", "c_mx"};
  for (size_t i = 0; i < n; i++) {
    assert_string_equal(c[i].id, ids[i]);
    assert_int_equal(c[i].position, (int)i + 1);
    assert_null(c[i].group_id);
    assert_false(c[i].group);
  }
  assert_string_equal(c[1].status, "operational");
  assert_string_equal(c[2].status, "operational");
}

static void assert_ids(const api_incident_v *x, size_t n, const char *const *ids, size_t want) {
  assert_int_equal(n, want);
  for (size_t i = 0; i < n; i++)
    assert_string_equal(x[i].id, ids[i]);
}

static void test_incident_filters_and_order(void **state) {
  fx *f = *state;
  api_incident_v *x;
  size_t n;
  crdt_doc *d = f->t.doc;
#define L(filter, limit, ...)                                                                      \
  do {                                                                                             \
    const char *const want[] = {__VA_ARGS__};                                                      \
    assert_int_equal(api_incidents_list(d, &f->pool, "pg1", filter, limit, &x, &n), 0);           \
    assert_ids(x, n, want, sizeof want / sizeof want[0]);                                          \
  } while (0)
  L(API_INC_ALL, 0, "inc3", "inc1", "inc2", "m1", "m2", "m3", "m4");
  L(API_INC_INCIDENTS, 0, "inc3", "inc1", "inc2");
  L(API_INC_UNRESOLVED, 0, "inc3", "inc1");
  L(API_INC_MAINTENANCES, 0, "m1", "m2", "m3", "m4");
  L(API_INC_MAINT_UPCOMING, 0, "m1");
  L(API_INC_MAINT_ACTIVE, 0, "m2", "m3");
  L(API_INC_MAINT_OPEN, 0, "m1", "m2", "m3");
  L(API_INC_ALL, 2, "inc3", "inc1");
#undef L
  /* updates newest first by display_at, whatever the insertion order */
  api_incident_v one;
  assert_int_equal(api_incident_get(d, &f->pool, "pg1", "inc3", &one), 0);
  assert_int_equal(one.nupdates, 3);
  assert_string_equal(one.updates[0].id, "u3c");
  assert_string_equal(one.updates[1].id, "u3b");
  assert_string_equal(one.updates[2].id, "u3a");
  assert_string_equal(one.updates[0].incident_id, "inc3");
  assert_string_equal(one.updates[0].body, "third");
  assert_true(one.updates[0].deliver_notifications);
  assert_null(one.updates[0].affected_components);
  assert_int_equal(one.ncomponents, 0);
  assert_string_equal(one.monitoring_at, "2026-01-02T11:30:00.000Z");
  assert_false(one.maintenance);
  /* affected components resolved to their current state */
  assert_int_equal(api_incident_get(d, &f->pool, "pg1", "inc1", &one), 0);
  assert_int_equal(one.ncomponents, 1);
  assert_string_equal(one.components[0].id, "c_db");
  assert_string_equal(one.components[0].status, "major_outage");
  assert_string_equal(one.components[0].group_id, "grp");
  assert_int_equal(api_incident_get(d, &f->pool, "pg1", "m1", &one), 0);
  assert_true(one.maintenance);
  assert_string_equal(one.scheduled_for, "2026-02-01T00:00:00.000Z");
  /* a deleted component drops out of an incident; a deleted incident is gone */
  td_del(&f->t, "pg1", API_T_COMPONENT, "c_db");
  assert_int_equal(api_incident_get(d, &f->pool, "pg1", "inc1", &one), 0);
  assert_int_equal(one.ncomponents, 0);
  td_del(&f->t, "pg1", API_T_INCIDENT, "inc1");
  assert_int_equal(api_incident_get(d, &f->pool, "pg1", "inc1", &one), SP_ERR_NOENT);
  assert_int_equal(api_incidents_list(d, &f->pool, "pg1", API_INC_UNRESOLVED, 0, &x, &n), 0);
  assert_int_equal(n, 1);
  /* a malformed component list is treated as empty */
  td_set(&f->t, "pg1", API_T_INCIDENT, "inc2", "components", "{not json");
  assert_int_equal(api_incident_get(d, &f->pool, "pg1", "inc2", &one), 0);
  assert_int_equal(one.ncomponents, 0);
  assert_int_equal(api_incident_get(d, &f->pool, "nope", "inc2", &one), SP_ERR_NOENT);
}

static void test_several_lists_in_one_pass(void **state) {
  fx *f = *state;
  api_incident_list l[3] = {{API_INC_UNRESOLVED, 0, NULL, 0},
                            {API_INC_MAINT_ACTIVE, 1, NULL, 0},
                            {API_INC_INCIDENTS, 2, NULL, 0}};
  api_incident_v *all;
  size_t n;
  assert_int_equal(api_incidents_lists(f->t.doc, &f->pool, "pg1", l, 3, &all, &n), 0);
  /* the union, newest first, each once: inc3 inc1 (unresolved, and the first
   * two incidents) and m2 (first active maintenance) */
  const char *const want[] = {"inc3", "inc1", "m2"};
  assert_ids(all, n, want, 3);
  assert_int_equal(l[0].n, 2);
  assert_string_equal(all[l[0].idx[0]].id, "inc3");
  assert_string_equal(all[l[0].idx[1]].id, "inc1");
  assert_int_equal(l[1].n, 1);
  assert_string_equal(all[l[1].idx[0]].id, "m2");
  assert_int_equal(l[2].n, 2);
  /* lists showing the same incident share its one view */
  assert_int_equal(l[2].idx[0], l[0].idx[0]);
  assert_int_equal(l[2].idx[1], l[0].idx[1]);
  /* the full views: updates attached */
  assert_int_equal(all[l[0].idx[0]].nupdates, 3);
  assert_string_equal(all[l[1].idx[0]].scheduled_until, "2026-02-01T02:00:00.000Z");
  /* nothing matches: empty lists, no union */
  api_incident_list none = {API_INC_UNRESOLVED, 0, NULL, 0};
  assert_int_equal(api_incidents_lists(f->t.doc, &f->pool, "nope", &none, 1, &all, &n), 0);
  assert_int_equal(n, 0);
  assert_int_equal(none.n, 0);
}

static void test_pages_and_subscribers(void **state) {
  fx *f = *state;
  td_page(&f->t, "pg0", "Zero", NULL);
  td_new(&f->t, API_ORG_PAGE, API_T_KEY, "abc"); /* the org page is not a page */
  td_page(&f->t, "pgx", "Gone", NULL);
  td_del(&f->t, "pgx", API_T_PAGE, "pgx");
  api_page_v *p;
  size_t n;
  assert_int_equal(api_pages_list(f->t.doc, &f->pool, &p, &n), 0);
  assert_int_equal(n, 2);
  assert_string_equal(p[0].id, "pg0");
  assert_string_equal(p[1].id, "pg1");
  assert_string_equal(p[1].name, "Acme");
  assert_string_equal(p[1].domain, "status.acme.test");
  assert_null(p[0].domain);
  api_page_v one;
  assert_int_equal(api_page_get(f->t.doc, &f->pool, "pgx", &one), SP_ERR_NOENT);
  assert_int_equal(api_page_get(f->t.doc, &f->pool, API_ORG_PAGE, &one), SP_ERR_NOENT);

  td_new(&f->t, "pg1", API_T_SUBSCRIBER, "s2");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s2", "mode", "sms");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s2", "created_at", "2026-01-01T00:00:00.000Z");
  td_new(&f->t, "pg1", API_T_SUBSCRIBER, "s1");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s1", "mode", "email");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s1", "email", "a@b.test");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s1", "components", "[\"c_api\"]");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s1", "skip_confirmation_notification", "true");
  td_set(&f->t, "pg1", API_T_SUBSCRIBER, "s1", "created_at", "2026-01-03T00:00:00.000Z");
  api_subscriber_v *s;
  assert_int_equal(api_subscribers_list(f->t.doc, &f->pool, "pg1", &s, &n), 0);
  assert_int_equal(n, 2);
  assert_string_equal(s[0].id, "s2"); /* oldest first */
  assert_string_equal(s[1].email, "a@b.test");
  assert_true(s[1].skip_confirmation_notification);
  assert_false(s[0].skip_confirmation_notification);
  api_subscriber_v sv;
  assert_int_equal(api_subscriber_get(f->t.doc, &f->pool, "pg1", "s1", &sv), 0);
  assert_string_equal(sv.components, "[\"c_api\"]");
  assert_int_equal(api_subscriber_get(f->t.doc, &f->pool, "pg1", "s9", &sv), SP_ERR_NOENT);

  json_t *j = api_json_subscriber(&sv);
  static const char *const keys[] = {"id", "mode", "email", "endpoint", "phone_number",
                                     "phone_country", "display_phone_number",
                                     "obfuscated_channel_name", "workspace_name",
                                     "skip_confirmation_notification", "quarantined_at",
                                     "purge_at", "components", "page_access_user_id",
                                     "created_at", NULL};
  assert_keys(j, keys);
  assert_true(json_is_null(json_object_get(j, "endpoint")));
  assert_true(json_is_true(json_object_get(j, "skip_confirmation_notification")));
  assert_string_equal(json_string_value(json_array_get(json_object_get(j, "components"), 0)),
                      "c_api");
  json_decref(j);
  assert_int_equal(api_subscriber_get(f->t.doc, &f->pool, "pg1", "s2", &sv), 0);
  j = api_json_subscriber(&sv);
  assert_true(json_is_null(json_object_get(j, "components"))); /* NULL = all components */
  json_decref(j);

  j = api_json_page_v1(&p[1]);
  assert_string_equal(json_string_value(json_object_get(j, "id")), "pg1");
  assert_string_equal(json_string_value(json_object_get(j, "domain")), "status.acme.test");
  assert_true(json_is_null(json_object_get(j, "headline")));
  assert_true(json_is_false(json_object_get(j, "allow_sms_subscribers")));
  assert_string_equal(json_string_value(json_object_get(j, "time_zone")), "Etc/UTC");
  void *it = json_object_iter(j);
  assert_string_equal(json_object_iter_key(it), "id");
  assert_string_equal(json_object_iter_key(json_object_iter_next(j, it)), "created_at");
  json_decref(j);
}

/* ---- v1 shapes ---- */

static void test_v1_shapes(void **state) {
  fx *f = *state;
  api_component_v c;
  assert_int_equal(api_component_get(f->t.doc, &f->pool, "pg1", "c_db", 0, &c), 0);
  json_t *j = api_json_component_v1(&c);
  static const char *const ckeys[] = {"id", "page_id", "group_id", "created_at", "updated_at",
                                      "group", "name", "description", "position", "status",
                                      "showcase", "only_show_if_degraded", "automation_email",
                                      "start_date", NULL};
  assert_keys(j, ckeys);
  assert_string_equal(json_string_value(json_object_get(j, "group_id")), "grp");
  assert_true(json_is_null(json_object_get(j, "description")));
  assert_int_equal(json_integer_value(json_object_get(j, "position")), 1);
  assert_true(json_is_false(json_object_get(j, "group")));
  json_decref(j);

  assert_int_equal(api_component_get(f->t.doc, &f->pool, "pg1", "grp", 1, &c), 0);
  j = api_json_group_v1(&c);
  static const char *const gkeys[] = {"id", "page_id", "name", "description", "components",
                                      "position", "created_at", "updated_at", NULL};
  assert_keys(j, gkeys);
  json_t *ch = json_object_get(j, "components");
  assert_int_equal(json_array_size(ch), 2);
  assert_string_equal(json_string_value(json_array_get(ch, 0)), "c_db");
  assert_int_equal(json_integer_value(json_object_get(j, "position")), 2);
  json_decref(j);

  api_incident_v x;
  assert_int_equal(api_incident_get(f->t.doc, &f->pool, "pg1", "inc1", &x), 0);
  j = api_json_incident_v1(&x);
  static const char *const ikeys[] = {
      "id", "name", "status", "impact", "impact_override", "created_at", "updated_at",
      "started_at", "monitoring_at", "resolved_at", "shortlink", "page_id", "components",
      "incident_updates", "metadata", "postmortem_body", "postmortem_body_last_updated_at",
      "postmortem_ignored", "postmortem_notified_subscribers", "postmortem_notified_twitter",
      "postmortem_published_at", "scheduled_for", "scheduled_until", "scheduled_remind_prior",
      "scheduled_reminded_at", "scheduled_auto_in_progress", "scheduled_auto_completed",
      "auto_transition_to_maintenance_state", "auto_transition_to_operational_state",
      "auto_transition_deliver_notifications_at_start",
      "auto_transition_deliver_notifications_at_end", "reminder_intervals", NULL};
  assert_keys(j, ikeys);
  assert_string_equal(json_string_value(json_object_get(j, "impact")), "critical");
  assert_true(json_is_null(json_object_get(j, "impact_override")));
  assert_true(json_is_null(json_object_get(j, "resolved_at")));
  assert_true(json_is_object(json_object_get(j, "metadata")));
  json_t *comps = json_object_get(j, "components");
  assert_int_equal(json_array_size(comps), 1);
  assert_keys(json_array_get(comps, 0), ckeys);
  json_t *ups = json_object_get(j, "incident_updates");
  assert_int_equal(json_array_size(ups), 1);
  static const char *const ukeys[] = {"id", "status", "body", "incident_id", "created_at",
                                      "updated_at", "display_at", "affected_components",
                                      "deliver_notifications", "custom_tweet", "tweet_id",
                                      "twitter_updated_at", "wants_twitter_update", NULL};
  json_t *u = json_array_get(ups, 0);
  assert_keys(u, ukeys);
  json_t *ac = json_array_get(json_object_get(u, "affected_components"), 0);
  assert_string_equal(json_string_value(json_object_get(ac, "name")), "Backend - DB");
  assert_string_equal(json_string_value(json_object_get(ac, "new_status")), "major_outage");
  json_decref(j);

  /* metadata is parsed; updates without affected components give null */
  td_set(&f->t, "pg1", API_T_INCIDENT, "inc3", "metadata", "{\"jira\":{\"key\":\"OPS-1\"}}");
  assert_int_equal(api_incident_get(f->t.doc, &f->pool, "pg1", "inc3", &x), 0);
  j = api_json_incident_v1(&x);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json_object_get(j, "metadata"), "jira"),
                                        "key")),
      "OPS-1");
  ups = json_object_get(j, "incident_updates");
  assert_int_equal(json_array_size(ups), 3);
  assert_string_equal(json_string_value(json_object_get(json_array_get(ups, 0), "id")), "u3c");
  assert_true(json_is_null(json_object_get(json_array_get(ups, 0), "affected_components")));
  assert_string_equal(json_string_value(json_object_get(j, "impact_override")), "critical");
  json_decref(j);
}

static void test_json_str(void **state) {
  (void)state;
  json_t *v = api_json_str(NULL);
  assert_true(json_is_null(v));
  v = api_json_str("caf\xc3\xa9");
  assert_string_equal(json_string_value(v), "caf\xc3\xa9");
  json_decref(v);
  /* invalid UTF-8 (a lone continuation byte, an overlong form, a surrogate,
   * a truncated sequence) is repaired, never dropped */
  v = api_json_str("a\x80" "b\xc0\xaf" "c\xed\xa0\x80" "d\xe2\x82");
  assert_non_null(v);
  const char *s = json_string_value(v);
  assert_non_null(strstr(s, "a\xef\xbf\xbd" "b"));
  assert_non_null(strstr(s, "d\xef\xbf\xbd"));
  assert_null(strchr(s, '\x80'));
  json_decref(v);
  json_t *d = json_object();
  v = api_json_parsed("[1,2]", d);
  assert_int_equal(json_array_size(v), 2);
  json_decref(v);
  v = api_json_parsed("{oops", d);
  assert_ptr_equal(v, d);
  json_decref(v);
  v = api_json_parsed(NULL, d);
  assert_ptr_equal(v, d);
  json_decref(v);
  json_decref(d);
}

/* Every allocation of the views fails in turn: the result is 0 or
 * SP_ERR_NOMEM, never a crash or a leak (checked by the sanitizer build). */
static void test_allocation_failures(void **state) {
  fx *f = *state;
  int finished = 0;
  for (long k = 0; k < 10000 && !finished; k++) {
    sp_pool pool;
    sp_pool_init(&pool, NULL, 0, POOL_MAX);
    sp_alloc_fail_after(k);
    api_component_v *c;
    api_incident_v *x;
    api_page_v *p;
    api_subscriber_v *s;
    size_t n;
    int rc1 = api_components_list(f->t.doc, &pool, "pg1", &c, &n);
    int rc2 = api_incidents_list(f->t.doc, &pool, "pg1", API_INC_ALL, 0, &x, &n);
    int rc3 = api_pages_list(f->t.doc, &pool, &p, &n);
    int rc4 = api_subscribers_list(f->t.doc, &pool, "pg1", &s, &n);
    sp_alloc_fail_after(-1);
    assert_true(rc1 == 0 || rc1 == SP_ERR_NOMEM);
    assert_true(rc2 == 0 || rc2 == SP_ERR_NOMEM);
    assert_true(rc3 == 0 || rc3 == SP_ERR_NOMEM);
    assert_true(rc4 == 0 || rc4 == SP_ERR_NOMEM);
    finished = rc1 == 0 && rc2 == 0 && rc3 == 0 && rc4 == 0;
    sp_pool_release(&pool);
  }
  assert_true(finished);
  /* a pool limit is the same failure */
  sp_pool tiny;
  sp_pool_init(&tiny, NULL, 0, 16);
  api_incident_v *x;
  size_t n;
  assert_int_equal(api_incidents_list(f->t.doc, &tiny, "pg1", API_INC_ALL, 0, &x, &n),
                   SP_ERR_NOMEM);
  sp_pool_release(&tiny);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_enums),
      cmocka_unit_test(test_rollup_table),
      cmocka_unit_test_setup_teardown(test_rollup_ignores_groups, setup, teardown),
      cmocka_unit_test_setup_teardown(test_incident_impact, setup, teardown),
      cmocka_unit_test_setup_teardown(test_components_display_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_components_orphans_and_bad_values, setup, teardown),
      cmocka_unit_test_setup_teardown(test_incident_filters_and_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_several_lists_in_one_pass, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pages_and_subscribers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_v1_shapes, setup, teardown),
      cmocka_unit_test(test_json_str),
      cmocka_unit_test_setup_teardown(test_allocation_failures, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
