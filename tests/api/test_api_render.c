/* Tests for api_render: the pre-rendered Statuspage v2 documents (top-level
 * keys and their order, object key order, explicit nulls, list contents,
 * order and caps), the rollup they carry, the HTML page (escaping, status
 * colours, sections), ETags (change exactly when the bytes do), documents
 * dropped with their page, domain lookup, and render allocation failures
 * (old documents kept).  In-memory crdt_doc, no database. */
#include "api_testdoc.h"

#include <ctype.h>
#include <stdlib.h>

#include "render.h"
#include "sp_alloc.h"
#include "sp_log.h"

typedef struct fx {
  td t;
  api_server s;
} fx;

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  td_init(&f->t);
  td_scenario(&f->t);
  f->s.doc = f->t.doc;
  assert_int_equal(api_render_all(&f->s), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  api_render_free(&f->s);
  crdt_doc_free(f->t.doc);
  free(f);
  return 0;
}

static json_t *get_json(fx *f, const char *page, api_doc_kind k) {
  api_doc *d = api_render_get(&f->s, page, k);
  assert_non_null(d);
  json_error_t err;
  json_t *j = json_loadb(d->body, d->len, 0, &err);
  if (j == NULL)
    fail_msg("document %d is not JSON: %s", (int)k, err.text);
  api_doc_unref(d);
  return j;
}

static void assert_keys(json_t *o, const char *const *keys) {
  assert_true(json_is_object(o));
  size_t i = 0;
  for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it), i++) {
    if (keys[i] == NULL)
      fail_msg("unexpected key %s", json_object_iter_key(it));
    assert_string_equal(json_object_iter_key(it), keys[i]);
  }
  if (keys[i])
    fail_msg("missing key %s", keys[i]);
}

static void assert_id_list(json_t *arr, const char *const *ids, size_t n) {
  assert_true(json_is_array(arr));
  assert_int_equal(json_array_size(arr), n);
  for (size_t i = 0; i < n; i++)
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, i), "id")), ids[i]);
}
#define IDS(arr, ...)                                                                              \
  do {                                                                                             \
    const char *const want_[] = {__VA_ARGS__};                                                     \
    assert_id_list(arr, want_, sizeof want_ / sizeof want_[0]);                                    \
  } while (0)

static const char *const page_keys[] = {"id", "name", "url", "time_zone", "updated_at", NULL};
static const char *const comp_keys[] = {"id", "name", "status", "created_at", "updated_at",
                                        "position", "description", "showcase", "start_date",
                                        "group_id", "page_id", "group", "only_show_if_degraded",
                                        NULL};
static const char *const group_keys[] = {"id", "name", "status", "created_at", "updated_at",
                                         "position", "description", "showcase", "start_date",
                                         "group_id", "page_id", "group",
                                         "only_show_if_degraded", "components", NULL};
static const char *const inc_keys[] = {"id", "name", "status", "created_at", "updated_at",
                                       "monitoring_at", "resolved_at", "impact", "shortlink",
                                       "started_at", "page_id", "incident_updates", "components",
                                       "reminder_intervals", NULL};
static const char *const maint_keys[] = {"id", "name", "status", "created_at", "updated_at",
                                         "monitoring_at", "resolved_at", "impact", "shortlink",
                                         "started_at", "page_id", "incident_updates",
                                         "components", "scheduled_for", "scheduled_until", NULL};
static const char *const upd_keys[] = {"id", "status", "body", "incident_id", "created_at",
                                       "updated_at", "display_at", "affected_components",
                                       "deliver_notifications", "custom_tweet", "tweet_id", NULL};

static void test_summary_shape(void **state) {
  fx *f = *state;
  json_t *j = get_json(f, "pg1", API_DOC_SUMMARY);
  static const char *const top[] = {"page", "components", "incidents", "scheduled_maintenances",
                                    "status", NULL};
  assert_keys(j, top);
  json_t *page = json_object_get(j, "page");
  assert_keys(page, page_keys);
  assert_string_equal(json_string_value(json_object_get(page, "id")), "pg1");
  assert_string_equal(json_string_value(json_object_get(page, "name")), "Acme");
  assert_string_equal(json_string_value(json_object_get(page, "url")), "https://status.acme.test");
  assert_string_equal(json_string_value(json_object_get(page, "time_zone")), "Etc/UTC");
  /* the last change anywhere on the page: update u3c at 11:30 */
  assert_string_equal(json_string_value(json_object_get(page, "updated_at")),
                      "2026-01-02T11:30:00.000Z");

  json_t *comps = json_object_get(j, "components");
  IDS(comps, "c_api", "grp", "c_db", "c_cache", "c_web", "c_mx", "c_xss");
  const int pos[] = {1, 2, 1, 2, 3, 4, 5};
  for (size_t i = 0; i < 7; i++) {
    json_t *c = json_array_get(comps, i);
    assert_keys(c, i == 1 ? group_keys : comp_keys);
    assert_int_equal(json_integer_value(json_object_get(c, "position")), pos[i]);
    assert_string_equal(json_string_value(json_object_get(c, "page_id")), "pg1");
  }
  json_t *api = json_array_get(comps, 0);
  assert_true(json_is_null(json_object_get(api, "description")));
  assert_true(json_is_null(json_object_get(api, "group_id")));
  assert_true(json_is_false(json_object_get(api, "group")));
  assert_true(json_is_true(json_object_get(api, "showcase")));
  assert_string_equal(json_string_value(json_object_get(api, "start_date")), "2026-01-01");
  json_t *grp = json_array_get(comps, 1);
  assert_true(json_is_true(json_object_get(grp, "group")));
  assert_string_equal(json_string_value(json_object_get(grp, "status")), "major_outage");
  assert_true(json_is_null(json_object_get(grp, "start_date")));
  assert_true(json_is_null(json_object_get(grp, "group_id")));
  json_t *ch = json_object_get(grp, "components");
  assert_int_equal(json_array_size(ch), 2);
  assert_string_equal(json_string_value(json_array_get(ch, 0)), "c_db");
  assert_string_equal(json_string_value(json_array_get(ch, 1)), "c_cache");
  assert_string_equal(json_string_value(json_object_get(json_array_get(comps, 2), "group_id")),
                      "grp");
  const char *st[] = {"operational", "major_outage", "major_outage", "degraded_performance",
                      "partial_outage", "under_maintenance", "operational"};
  for (size_t i = 0; i < 7; i++)
    assert_string_equal(json_string_value(json_object_get(json_array_get(comps, i), "status")),
                        st[i]);

  IDS(json_object_get(j, "incidents"), "inc3", "inc1");
  IDS(json_object_get(j, "scheduled_maintenances"), "m1", "m2", "m3");
  json_t *status = json_object_get(j, "status");
  static const char *const skeys[] = {"indicator", "description", NULL};
  assert_keys(status, skeys);
  assert_string_equal(json_string_value(json_object_get(status, "indicator")), "major");
  assert_string_equal(json_string_value(json_object_get(status, "description")),
                      "Partial System Outage");
  json_decref(j);
}

static void test_incident_shapes(void **state) {
  fx *f = *state;
  json_t *j = get_json(f, "pg1", API_DOC_INCIDENTS);
  json_t *list = json_object_get(j, "incidents");
  IDS(list, "inc3", "inc1", "inc2");
  for (size_t i = 0; i < 3; i++) {
    json_t *x = json_array_get(list, i);
    assert_keys(x, inc_keys);
    json_t *ups = json_object_get(x, "incident_updates");
    for (size_t k = 0; k < json_array_size(ups); k++)
      assert_keys(json_array_get(ups, k), upd_keys);
    assert_true(json_is_null(json_object_get(x, "reminder_intervals")));
    assert_string_equal(json_string_value(json_object_get(x, "page_id")), "pg1");
  }
  json_t *inc3 = json_array_get(list, 0);
  assert_string_equal(json_string_value(json_object_get(inc3, "impact")), "critical");
  assert_string_equal(json_string_value(json_object_get(inc3, "monitoring_at")),
                      "2026-01-02T11:30:00.000Z");
  assert_true(json_is_null(json_object_get(inc3, "resolved_at")));
  IDS(json_object_get(inc3, "incident_updates"), "u3c", "u3b", "u3a");
  assert_int_equal(json_array_size(json_object_get(inc3, "components")), 0);
  json_t *u = json_array_get(json_object_get(inc3, "incident_updates"), 0);
  assert_true(json_is_null(json_object_get(u, "affected_components")));
  assert_true(json_is_null(json_object_get(u, "custom_tweet")));
  assert_true(json_is_null(json_object_get(u, "tweet_id")));
  assert_true(json_is_true(json_object_get(u, "deliver_notifications")));
  assert_string_equal(json_string_value(json_object_get(u, "incident_id")), "inc3");
  assert_string_equal(json_string_value(json_object_get(u, "display_at")),
                      "2026-01-02T11:30:00.000Z");

  json_t *inc1 = json_array_get(list, 1);
  assert_string_equal(json_string_value(json_object_get(inc1, "impact")), "critical");
  assert_string_equal(json_string_value(json_object_get(inc1, "shortlink")),
                      "https://status.acme.test/incidents/inc1");
  assert_string_equal(json_string_value(json_object_get(inc1, "started_at")),
                      "2026-01-02T10:00:00.000Z");
  json_t *ic = json_object_get(inc1, "components");
  IDS(ic, "c_db");
  assert_keys(json_array_get(ic, 0), comp_keys); /* no `components` key in an incident */
  assert_string_equal(json_string_value(json_object_get(json_array_get(ic, 0), "status")),
                      "major_outage");
  json_t *ac = json_object_get(json_array_get(json_object_get(inc1, "incident_updates"), 0),
                               "affected_components");
  assert_int_equal(json_array_size(ac), 1);
  static const char *const ac_keys[] = {"code", "name", "old_status", "new_status", NULL};
  assert_keys(json_array_get(ac, 0), ac_keys);

  json_t *inc2 = json_array_get(list, 2);
  assert_string_equal(json_string_value(json_object_get(inc2, "status")), "resolved");
  assert_string_equal(json_string_value(json_object_get(inc2, "impact")), "minor");
  assert_string_equal(json_string_value(json_object_get(inc2, "resolved_at")),
                      "2026-01-02T09:30:00.000Z");
  IDS(json_object_get(inc2, "incident_updates"), "u2b", "u2a");
  json_decref(j);

  j = get_json(f, "pg1", API_DOC_MAINTENANCES);
  static const char *const top[] = {"page", "scheduled_maintenances", NULL};
  assert_keys(j, top);
  list = json_object_get(j, "scheduled_maintenances");
  IDS(list, "m1", "m2", "m3", "m4");
  for (size_t i = 0; i < 4; i++) {
    json_t *m = json_array_get(list, i);
    assert_keys(m, maint_keys);
    assert_string_equal(json_string_value(json_object_get(m, "impact")), "maintenance");
    assert_string_equal(json_string_value(json_object_get(m, "scheduled_for")),
                        "2026-02-01T00:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(m, "scheduled_until")),
                        "2026-02-01T02:00:00.000Z");
  }
  IDS(json_object_get(json_array_get(list, 0), "components"), "c_mx");
  IDS(json_object_get(json_array_get(list, 0), "incident_updates"), "um1");
  json_decref(j);
}

static void test_every_document(void **state) {
  fx *f = *state;
  static const char *const top_status[] = {"page", "status", NULL};
  static const char *const top_comps[] = {"page", "components", NULL};
  static const char *const top_inc[] = {"page", "incidents", NULL};
  static const char *const top_maint[] = {"page", "scheduled_maintenances", NULL};
  json_t *j = get_json(f, "pg1", API_DOC_STATUS);
  assert_keys(j, top_status);
  assert_keys(json_object_get(j, "page"), page_keys);
  json_decref(j);
  j = get_json(f, "pg1", API_DOC_COMPONENTS);
  assert_keys(j, top_comps);
  IDS(json_object_get(j, "components"), "c_api", "grp", "c_db", "c_cache", "c_web", "c_mx",
      "c_xss");
  json_decref(j);
  j = get_json(f, "pg1", API_DOC_UNRESOLVED);
  assert_keys(j, top_inc);
  IDS(json_object_get(j, "incidents"), "inc3", "inc1");
  json_decref(j);
  j = get_json(f, "pg1", API_DOC_MAINT_UPCOMING);
  assert_keys(j, top_maint);
  IDS(json_object_get(j, "scheduled_maintenances"), "m1");
  json_decref(j);
  j = get_json(f, "pg1", API_DOC_MAINT_ACTIVE);
  assert_keys(j, top_maint);
  IDS(json_object_get(j, "scheduled_maintenances"), "m2", "m3");
  json_decref(j);
  /* the documents are compact JSON, as Statuspage serves them */
  api_doc *d = api_render_get(&f->s, "pg1", API_DOC_STATUS);
  assert_non_null(d);
  assert_null(strstr(d->body, ": "));
  assert_null(strchr(d->body, '\n'));
  assert_int_equal(d->len, strlen(d->body));
  api_doc_unref(d);
  assert_null(api_render_get(&f->s, "pg1", API_DOC_COUNT));
  assert_null(api_render_get(&f->s, "nope", API_DOC_SUMMARY));
}

static void test_empty_page(void **state) {
  fx *f = *state;
  td_page(&f->t, "pg0", "Empty", NULL);
  api_render_page(&f->s, "pg0");
  json_t *j = get_json(f, "pg0", API_DOC_SUMMARY);
  /* nothing matches: empty arrays, never null */
  assert_int_equal(json_array_size(json_object_get(j, "components")), 0);
  assert_true(json_is_array(json_object_get(j, "incidents")));
  assert_int_equal(json_array_size(json_object_get(j, "incidents")), 0);
  assert_true(json_is_array(json_object_get(j, "scheduled_maintenances")));
  json_t *status = json_object_get(j, "status");
  assert_string_equal(json_string_value(json_object_get(status, "indicator")), "none");
  assert_string_equal(json_string_value(json_object_get(status, "description")),
                      "All Systems Operational");
  /* no url and no domain: url is null; updated_at falls back to the page's */
  json_t *page = json_object_get(j, "page");
  assert_true(json_is_null(json_object_get(page, "url")));
  assert_string_equal(json_string_value(json_object_get(page, "updated_at")),
                      "2026-01-01T00:00:00.000Z");
  json_decref(j);
  /* a page with a domain and no url gets https://domain */
  td_set(&f->t, "pg0", API_T_PAGE, "pg0", "domain", "Empty.Example");
  api_render_page(&f->s, "pg0");
  j = get_json(f, "pg0", API_DOC_STATUS);
  assert_string_equal(json_string_value(json_object_get(json_object_get(j, "page"), "url")),
                      "https://Empty.Example");
  json_decref(j);
}

static void test_history_caps(void **state) {
  fx *f = *state;
  td_page(&f->t, "pg2", "Busy", NULL);
  char id[32], hm[24];
  for (int i = 0; i < 60; i++) {
    snprintf(id, sizeof id, "i%02d", i);
    snprintf(hm, sizeof hm, "%02d:%02d", i / 60, i % 60);
    td_incident(&f->t, "pg2", id, "realtime", "investigating", hm, NULL);
    snprintf(id, sizeof id, "m%02d", i);
    td_incident(&f->t, "pg2", id, "scheduled", i % 2 ? "completed" : "scheduled", hm, NULL);
  }
  api_render_page(&f->s, "pg2");
  json_t *j = get_json(f, "pg2", API_DOC_INCIDENTS);
  json_t *l = json_object_get(j, "incidents");
  assert_int_equal(json_array_size(l), 50);
  assert_string_equal(json_string_value(json_object_get(json_array_get(l, 0), "id")), "i59");
  assert_string_equal(json_string_value(json_object_get(json_array_get(l, 49), "id")), "i10");
  json_decref(j);
  j = get_json(f, "pg2", API_DOC_MAINTENANCES);
  l = json_object_get(j, "scheduled_maintenances");
  assert_int_equal(json_array_size(l), 50);
  assert_string_equal(json_string_value(json_object_get(json_array_get(l, 0), "id")), "m59");
  json_decref(j);
  /* the unresolved and summary lists are not history: no cap */
  j = get_json(f, "pg2", API_DOC_UNRESOLVED);
  assert_int_equal(json_array_size(json_object_get(j, "incidents")), 60);
  json_decref(j);
  j = get_json(f, "pg2", API_DOC_SUMMARY);
  assert_int_equal(json_array_size(json_object_get(j, "incidents")), 60);
  assert_int_equal(json_array_size(json_object_get(j, "scheduled_maintenances")), 30);
  json_decref(j);
}

static char *html_of(fx *f, const char *page) {
  api_doc *d = api_render_get(&f->s, page, API_DOC_HTML);
  assert_non_null(d);
  char *s = strdup(d->body);
  api_doc_unref(d);
  return s;
}

static void test_html_page(void **state) {
  fx *f = *state;
  td_set(&f->t, "pg1", API_T_PAGE, "pg1", "name", "Acme & \"Co\"");
  td_set(&f->t, "pg1", API_T_UPDATE, "u1a", "body", "line one\n<b>bold</b> & more");
  td_component(&f->t, "pg1", "c_quiet", "QuietThing", "operational", "6", NULL);
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_quiet", "only_show_if_degraded", "true");
  api_render_page(&f->s, "pg1");
  char *h = html_of(f, "pg1");
  assert_int_equal(strncmp(h, "<!DOCTYPE html>", 15), 0);
  /* the component named <script> is text, never markup */
  assert_null(strstr(h, "<script"));
  assert_non_null(strstr(h, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
  assert_non_null(strstr(h, "<title>Acme &amp; &quot;Co&quot; Status</title>"));
  assert_non_null(strstr(h, "line one<br>\n&lt;b&gt;bold&lt;/b&gt; &amp; more"));
  assert_null(strstr(h, "<b>bold"));
  /* banner: major -> the orange class, with the rollup text */
  assert_non_null(strstr(h, "<div class=\"banner ind-major\">Partial System Outage</div>"));
  assert_non_null(strstr(h, ".ind-major{background:#e67e22}"));
  assert_non_null(strstr(h, ".ind-none{background:#2fcc66}"));
  assert_non_null(strstr(h, ".ind-critical{background:#e74c3c}"));
  assert_non_null(strstr(h, ".ind-minor{background:#f1c40f}"));
  assert_non_null(strstr(h, ".ind-maintenance{background:#3498db}"));
  /* sections: active incidents (not the resolved one), maintenances, components */
  char *inc = strstr(h, "<h2>Active incidents</h2>");
  char *active = strstr(h, "<h2>Maintenance in progress</h2>");
  char *comps = strstr(h, "<h2>Components</h2>");
  char *upcoming = strstr(h, "<h2>Scheduled maintenance</h2>");
  assert_true(inc && active && comps && upcoming);
  assert_true(inc < active && active < comps && comps < upcoming);
  assert_non_null(strstr(h, "<h3>inc3</h3>"));
  assert_non_null(strstr(h, "<h3>inc1</h3>"));
  assert_null(strstr(h, "<h3>inc2</h3>"));
  assert_null(strstr(h, "<h3>m4</h3>"));
  assert_non_null(strstr(h, "Planned work"));
  assert_non_null(strstr(h, "<time datetime=\"2026-01-02T11:30:00.000Z\">Jan 02, 2026 11:30 UTC"));
  /* the group with its children nested, statuses labelled */
  char *g = strstr(h, "<li class=\"group\">");
  assert_non_null(g);
  char *db = strstr(g, ">DB<");
  char *web = strstr(h, ">Web<");
  assert_true(db && web && db < web);
  assert_non_null(strstr(h, "<span class=\"st st-major_outage\">Major Outage</span>"));
  assert_non_null(strstr(h, "<span class=\"st st-under_maintenance\">Under Maintenance</span>"));
  /* only_show_if_degraded and operational: hidden; degraded: shown */
  assert_null(strstr(h, "QuietThing"));
  free(h);
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_quiet", "status", "partial_outage");
  api_render_page(&f->s, "pg1");
  h = html_of(f, "pg1");
  assert_non_null(strstr(h, "QuietThing"));
  free(h);
  /* every component fine: the green banner */
  const char *ids[] = {"c_db", "c_cache", "c_web", "c_mx", "c_quiet"};
  for (size_t i = 0; i < 5; i++)
    td_set(&f->t, "pg1", API_T_COMPONENT, ids[i], "status", "operational");
  api_render_page(&f->s, "pg1");
  h = html_of(f, "pg1");
  assert_non_null(strstr(h, "<div class=\"banner ind-none\">All Systems Operational</div>"));
  free(h);
}

static int etag_ok(const char *e) {
  if (strncmp(e, "W/\"", 3) != 0 || strlen(e) != 36 || e[35] != '"')
    return 0;
  for (int i = 3; i < 35; i++)
    if (!isxdigit((unsigned char)e[i]) || isupper((unsigned char)e[i]))
      return 0;
  return 1;
}

static void snapshot(fx *f, const char *page, char tags[API_DOC_COUNT][48]) {
  for (int k = 0; k < API_DOC_COUNT; k++) {
    api_doc *d = api_render_get(&f->s, page, (api_doc_kind)k);
    assert_non_null(d);
    assert_true(etag_ok(d->etag));
    strcpy(tags[k], d->etag);
    api_doc_unref(d);
  }
}

static void test_etags(void **state) {
  fx *f = *state;
  char a[API_DOC_COUNT][48], b[API_DOC_COUNT][48];
  snapshot(f, "pg1", a);
  /* every document differs from every other */
  for (int i = 0; i < API_DOC_COUNT; i++)
    for (int k = i + 1; k < API_DOC_COUNT; k++)
      assert_string_not_equal(a[i], a[k]);
  /* re-rendering unchanged data keeps every ETag and the very same bytes */
  api_doc *held = api_render_get(&f->s, "pg1", API_DOC_SUMMARY);
  api_render_page(&f->s, "pg1");
  snapshot(f, "pg1", b);
  for (int k = 0; k < API_DOC_COUNT; k++)
    assert_string_equal(a[k], b[k]);
  api_doc *again = api_render_get(&f->s, "pg1", API_DOC_SUMMARY);
  assert_ptr_equal(held, again);
  api_doc_unref(again);

  /* a component status change: the documents showing components change;
   * the incident and maintenance lists (no such component) do not, nor
   * does status.json, whose rollup stays major / Partial System Outage */
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_web", "status", "operational");
  api_render_page(&f->s, "pg1");
  snapshot(f, "pg1", b);
  assert_string_not_equal(a[API_DOC_SUMMARY], b[API_DOC_SUMMARY]);
  assert_string_equal(a[API_DOC_STATUS], b[API_DOC_STATUS]);
  assert_string_not_equal(a[API_DOC_COMPONENTS], b[API_DOC_COMPONENTS]);
  assert_string_not_equal(a[API_DOC_HTML], b[API_DOC_HTML]);
  assert_string_equal(a[API_DOC_INCIDENTS], b[API_DOC_INCIDENTS]);
  assert_string_equal(a[API_DOC_MAINTENANCES], b[API_DOC_MAINTENANCES]);
  /* the reference taken before the change still holds the old bytes */
  assert_string_equal(held->etag, a[API_DOC_SUMMARY]);
  assert_non_null(strstr(held->body, "\"partial_outage\""));
  api_doc_unref(held);

  /* a change of the rollup changes status.json */
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_db", "status", "operational");
  api_render_page(&f->s, "pg1");
  snapshot(f, "pg1", b);
  assert_string_not_equal(a[API_DOC_STATUS], b[API_DOC_STATUS]);
  json_t *j = get_json(f, "pg1", API_DOC_STATUS);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(j, "status"), "description")),
      "Partially Degraded Service");
  json_decref(j);

  /* a completed maintenance's name: only the full maintenance list changes */
  memcpy(a, b, sizeof a);
  td_set(&f->t, "pg1", API_T_INCIDENT, "m4", "name", "Old work, renamed");
  api_render_page(&f->s, "pg1");
  snapshot(f, "pg1", b);
  for (int k = 0; k < API_DOC_COUNT; k++) {
    if (k == API_DOC_MAINTENANCES)
      assert_string_not_equal(a[k], b[k]);
    else
      assert_string_equal(a[k], b[k]);
  }
}

static void test_domains_and_deleted_pages(void **state) {
  fx *f = *state;
  assert_string_equal(api_render_page_for_domain(&f->s, "status.acme.test"), "pg1");
  assert_string_equal(api_render_page_for_domain(&f->s, "STATUS.Acme.Test"), "pg1");
  assert_null(api_render_page_for_domain(&f->s, "other.test"));
  assert_null(api_render_page_for_domain(&f->s, ""));
  assert_null(api_render_page_for_domain(&f->s, NULL));
  /* many pages: the tables grow and every page stays reachable */
  char id[16], dom[32];
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "p%02d", i);
    snprintf(dom, sizeof dom, "s%02d.example", i);
    td_page(&f->t, id, id, dom);
    api_render_page(&f->s, id);
  }
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "p%02d", i);
    snprintf(dom, sizeof dom, "s%02d.example", i);
    assert_string_equal(api_render_page_for_domain(&f->s, dom), id);
    api_doc *d = api_render_get(&f->s, id, API_DOC_STATUS);
    assert_non_null(d);
    api_doc_unref(d);
  }
  /* a domain moves */
  td_set(&f->t, "pg1", API_T_PAGE, "pg1", "domain", "new.acme.test");
  api_render_page(&f->s, "pg1");
  assert_null(api_render_page_for_domain(&f->s, "status.acme.test"));
  assert_string_equal(api_render_page_for_domain(&f->s, "new.acme.test"), "pg1");
  /* the page is deleted: its documents and domain go (a held reference survives) */
  api_doc *held = api_render_get(&f->s, "pg1", API_DOC_SUMMARY);
  td_del(&f->t, "pg1", API_T_PAGE, "pg1");
  api_render_page(&f->s, "pg1");
  for (int k = 0; k < API_DOC_COUNT; k++)
    assert_null(api_render_get(&f->s, "pg1", (api_doc_kind)k));
  assert_null(api_render_page_for_domain(&f->s, "new.acme.test"));
  assert_non_null(strstr(held->body, "\"Acme\""));
  api_doc_unref(held);
  /* rendering an unknown page is a no-op */
  api_render_page(&f->s, "never");
  assert_null(api_render_get(&f->s, "never", API_DOC_SUMMARY));
  assert_string_equal(api_render_page_for_domain(&f->s, "s07.example"), "p07");
}

static void test_render_allocation_failures(void **state) {
  fx *f = *state;
  char a[API_DOC_COUNT][48], b[API_DOC_COUNT][48];
  snapshot(f, "pg1", a);
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_api", "status", "major_outage");
  sp_log_set_level(SP_LOG_ERROR); /* each failed render logs a warning */
  int done = 0;
  for (long k = 0; k < 20000 && !done; k++) {
    sp_alloc_fail_after(k);
    api_render_page(&f->s, "pg1");
    sp_alloc_fail_after(-1);
    snapshot(f, "pg1", b);
    /* either all old documents stay (failure) or the new summary is there */
    done = strcmp(a[API_DOC_SUMMARY], b[API_DOC_SUMMARY]) != 0;
    if (!done)
      for (int i = 0; i < API_DOC_COUNT; i++)
        assert_string_equal(a[i], b[i]);
  }
  assert_true(done);
  json_t *j = get_json(f, "pg1", API_DOC_STATUS);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(j, "status"), "indicator")), "major");
  json_decref(j);
  /* a new page whose first render fails is simply not there yet */
  td_page(&f->t, "pgn", "New", "new.example");
  sp_alloc_fail_after(0);
  api_render_page(&f->s, "pgn");
  sp_alloc_fail_after(-1);
  assert_null(api_render_get(&f->s, "pgn", API_DOC_SUMMARY));
  api_render_page(&f->s, "pgn");
  assert_string_equal(api_render_page_for_domain(&f->s, "new.example"), "pgn");
  sp_log_set_level(SP_LOG_INFO);
}

static void test_invalid_utf8_still_renders(void **state) {
  fx *f = *state;
  td_set(&f->t, "pg1", API_T_COMPONENT, "c_api", "name", "bad \xff name");
  api_render_page(&f->s, "pg1");
  json_t *j = get_json(f, "pg1", API_DOC_COMPONENTS);
  const char *name = json_string_value(
      json_object_get(json_array_get(json_object_get(j, "components"), 0), "name"));
  assert_string_equal(name, "bad \xef\xbf\xbd name");
  json_decref(j);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_summary_shape, setup, teardown),
      cmocka_unit_test_setup_teardown(test_incident_shapes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_every_document, setup, teardown),
      cmocka_unit_test_setup_teardown(test_empty_page, setup, teardown),
      cmocka_unit_test_setup_teardown(test_history_caps, setup, teardown),
      cmocka_unit_test_setup_teardown(test_html_page, setup, teardown),
      cmocka_unit_test_setup_teardown(test_etags, setup, teardown),
      cmocka_unit_test_setup_teardown(test_domains_and_deleted_pages, setup, teardown),
      cmocka_unit_test_setup_teardown(test_render_allocation_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(test_invalid_utf8_still_renders, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
