/* End-to-end test of the public read API (Statuspage v2 shapes) against a
 * real statusd-api, PostgreSQL and Redis (api_harness).
 *
 * The group setup builds one page through the management API: a component
 * group "Backend" holding API and Database, a top-level Web component,
 * three incidents (one identified with a component outage, one resolved,
 * one investigating without components) and three maintenances (upcoming,
 * in progress, completed), plus a second, empty page.  Each test then reads
 * the public endpoints over HTTP and checks what reference §1 says: key
 * order, explicit nulls, filtering and ordering of every list, the status
 * rollup, page selection by Host header and by /pages/{id} prefix, 404s,
 * ETag/304, Cache-Control and CORS, and that a write shows on the next read.
 * The tests run in order; only the last one writes.  The first test checks
 * the harness's own client on bad servers (silent, garbage, refused).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api_itest.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sp_err.h"

typedef struct world {
  api_harness h;
  char page[32], page_b[32];
  char grp[32], api[32], db[32], web[32];
  char inc1[32], inc2[32], inc3[32]; /* identified+outage, resolved, investigating */
  char m_up[32], m_active[32], m_done[32];
} world;

static world W;

#define DOMAIN_A "status.e2e.test"
#define DOMAIN_B "status-b.e2e.test"

static void path_of(char *out, size_t n, const char *page, const char *doc) {
  snprintf(out, n, "/pages/%s/api/v2/%s", page, doc);
}

/* GET /pages/{page}/api/v2/{doc}: 200 and its JSON. */
static json_t *get_doc(const char *page, const char *doc) {
  char path[256];
  path_of(path, sizeof path, page, doc);
  return it_public(&W.h, path, NULL, 200, NULL);
}

static int setup(void **state) {
  (void)state;
  memset(&W, 0, sizeof W);
  if (api_harness_start(&W.h))
    return -1;
  api_harness *h = &W.h;
  it_create_page(h, "E2E Status", DOMAIN_A, W.page);
  it_create_page(h, "Empty Page", DOMAIN_B, W.page_b);

  it_create_component(h, W.page, "\"name\":\"API\",\"status\":\"operational\","
                                  "\"description\":\"Public REST API\"", W.api);
  it_create_component(h, W.page, "\"name\":\"Database\",\"status\":\"operational\"", W.db);
  it_create_component(h, W.page, "\"name\":\"Web\",\"status\":\"operational\"", W.web);
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/component-groups", W.page);
  json_t *g = it_admin(h, 201, "POST", path,
                       "{\"description\":\"Servers\",\"component_group\":{\"name\":\"Backend\","
                       "\"components\":[\"%s\",\"%s\"]}}",
                       W.api, W.db);
  it_str(g, "id", W.grp, sizeof W.grp);
  json_decref(g);

  /* creation order = created_at order; the lists are newest first */
  char body[1024];
  snprintf(body, sizeof body,
           "\"name\":\"Elevated API errors\",\"status\":\"investigating\","
           "\"body\":\"We are investigating errors\",\"components\":{\"%s\":\"partial_outage\"},"
           "\"component_ids\":[\"%s\"]",
           W.api, W.api);
  it_create_incident(h, W.page, body, W.inc1);
  it_sleep_ms(5);
  it_create_incident(h, W.page,
                     "\"name\":\"Login failures\",\"status\":\"investigating\","
                     "\"body\":\"Looking into it\"",
                     W.inc2);
  it_sleep_ms(5);
  it_create_incident(h, W.page,
                     "\"name\":\"Slow pages\",\"status\":\"investigating\","
                     "\"body\":\"Pages load slowly\"",
                     W.inc3);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", W.page, W.inc1);
  json_decref(it_admin(h, 200, "PATCH", path,
                       "{\"incident\":{\"status\":\"identified\",\"body\":\"Found the cause\"}}"));
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", W.page, W.inc2);
  json_decref(it_admin(h, 200, "PATCH", path,
                       "{\"incident\":{\"status\":\"resolved\",\"body\":\"Fixed\"}}"));

  char f1[40], u1[40], f2[40], u2[40], f3[40], u3[40];
  it_time(86400, f1);
  it_time(86400 + 7200, u1);
  it_time(-3600, f2);
  it_time(3600, u2);
  it_time(-3 * 3600, f3);
  it_time(-2 * 3600, u3);
  it_sleep_ms(5);
  snprintf(body, sizeof body,
           "\"name\":\"Database upgrade\",\"status\":\"scheduled\",\"body\":\"We will upgrade\","
           "\"scheduled_for\":\"%s\",\"scheduled_until\":\"%s\"",
           f1, u1);
  it_create_incident(h, W.page, body, W.m_up);
  it_sleep_ms(5);
  snprintf(body, sizeof body,
           "\"name\":\"Network work\",\"status\":\"in_progress\",\"body\":\"Under way\","
           "\"scheduled_for\":\"%s\",\"scheduled_until\":\"%s\"",
           f2, u2);
  it_create_incident(h, W.page, body, W.m_active);
  it_sleep_ms(5);
  snprintf(body, sizeof body,
           "\"name\":\"Old maintenance\",\"status\":\"completed\",\"body\":\"Done\","
           "\"scheduled_for\":\"%s\",\"scheduled_until\":\"%s\"",
           f3, u3);
  it_create_incident(h, W.page, body, W.m_done);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  api_harness_stop(&W.h);
  return 0;
}

/* ---- the harness client on bad servers ------------------------------------------ */

static int listen_any(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 8), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static void test_client_bad_servers(void **state) {
  (void)state;
  api_harness fake;
  memset(&fake, 0, sizeof fake);
  api_response r;
  /* bad arguments */
  assert_int_equal(api_request(&fake, "GET", "/", NULL, NULL, &r), SP_ERR_INVAL);
  assert_int_equal(r.status, 0);

  /* a server that accepts and never answers: the 5 s deadline, no hang */
  int lfd = listen_any(&fake.port);
  long long t0 = it_now_ms();
  assert_int_equal(api_request(&fake, "GET", "/x", NULL, NULL, &r), SP_ERR_TIMEDOUT);
  long long took = it_now_ms() - t0;
  assert_true(took >= 4500 && took < 8000);
  assert_int_equal(r.status, 0);
  assert_null(r.body);

  static const char garbage[] = "HELLO THERE\r\n\r\n";
  static const char truncated[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  /* a server that answers garbage and closes (a fresh listener: the
   * silent one's backlog still holds the abandoned connection) */
  close(lfd);
  lfd = listen_any(&fake.port);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int c = accept(lfd, NULL, NULL);
    char buf[4096];
    if (c >= 0 && recv(c, buf, sizeof buf, 0) >= 0)
      (void)!write(c, garbage, sizeof garbage - 1);
    _exit(0);
  }
  assert_int_equal(api_request(&fake, "GET", "/x", NULL, NULL, &r), SP_ERR_PROTO);
  waitpid(pid, NULL, 0);

  /* a truncated body (Content-Length promises more than is sent) */
  close(lfd);
  lfd = listen_any(&fake.port);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int c = accept(lfd, NULL, NULL);
    char buf[4096];
    if (c >= 0 && recv(c, buf, sizeof buf, 0) >= 0)
      (void)!write(c, truncated, sizeof truncated - 1);
    _exit(0);
  }
  assert_int_equal(api_request(&fake, "GET", "/x", NULL, NULL, &r), SP_ERR_PROTO);
  waitpid(pid, NULL, 0);
  close(lfd);

  /* nobody listening */
  assert_int_equal(api_request(&fake, "GET", "/x", NULL, NULL, &r), SP_ERR_CONNREFUSED);

  /* header lookup on a real answer: case-insensitive, absent is NULL */
  assert_int_equal(api_request(&W.h, "GET", "/health", NULL, NULL, &r), 0);
  char v[64];
  assert_non_null(api_response_header(&r, "content-TYPE", v, sizeof v));
  assert_null(api_response_header(&r, "X-No-Such-Header", v, sizeof v));
  api_response_free(&r);
  api_response_free(&r); /* twice is harmless */
}

/* ---- shapes ------------------------------------------------------------------ */

static const char *const PAGE_KEYS[] = {"id", "name", "url", "time_zone", "updated_at", NULL};
static const char *const COMPONENT_KEYS[] = {
    "id",         "name",     "status", "created_at", "updated_at",
    "position",   "description", "showcase", "start_date", "group_id",
    "page_id",    "group",    "only_show_if_degraded", NULL};
static const char *const GROUP_KEYS[] = {
    "id",         "name",     "status", "created_at", "updated_at",
    "position",   "description", "showcase", "start_date", "group_id",
    "page_id",    "group",    "only_show_if_degraded", "components", NULL};
static const char *const INCIDENT_KEYS[] = {
    "id",        "name",     "status",     "created_at", "updated_at", "monitoring_at",
    "resolved_at", "impact", "shortlink",  "started_at", "page_id",    "incident_updates",
    "components", "reminder_intervals", NULL};
static const char *const UPDATE_KEYS[] = {
    "id",         "status",     "body",       "incident_id", "created_at", "updated_at",
    "display_at", "affected_components", "deliver_notifications", "custom_tweet", "tweet_id",
    NULL};

static void check_page(const json_t *p, const char *id, const char *name) {
  it_keys(p, PAGE_KEYS, "page");
  assert_true(it_str_eq(p, "id", id));
  assert_true(it_str_eq(p, "name", name));
  assert_true(json_is_string(json_object_get(p, "updated_at")));
}

static void check_update(const json_t *u, const char *incident) {
  it_keys(u, UPDATE_KEYS, "incident update");
  assert_true(it_str_eq(u, "incident_id", incident));
  assert_true(json_is_boolean(json_object_get(u, "deliver_notifications")));
  assert_true(json_is_null(json_object_get(u, "custom_tweet")));
  assert_true(json_is_null(json_object_get(u, "tweet_id")));
  assert_true(json_is_string(json_object_get(u, "display_at")));
}

/* Maintenances: the incident keys except reminder_intervals (which the
 * reference ties to incidents), then scheduled_for and scheduled_until last. */
static void check_maintenance(const json_t *m) {
  const char *k;
  json_t *v;
  size_t i = 0, n = json_object_size(m);
  json_object_foreach((json_t *)m, k, v) {
    (void)v;
    if (i < 13 && strcmp(k, INCIDENT_KEYS[i]) != 0)
      fail_msg("maintenance key %zu is \"%s\", expected \"%s\"", i, k, INCIDENT_KEYS[i]);
    if (i == n - 2)
      assert_string_equal(k, "scheduled_for");
    if (i == n - 1)
      assert_string_equal(k, "scheduled_until");
    i++;
  }
  assert_true(n == 15 || n == 16);
  assert_true(it_str_eq(m, "impact", "maintenance"));
  assert_true(json_is_string(json_object_get(m, "scheduled_for")));
  assert_true(json_is_string(json_object_get(m, "scheduled_until")));
}

static void test_summary_shape(void **state) {
  (void)state;
  json_t *s = get_doc(W.page, "summary.json");
  static const char *const top[] = {"page", "components", "incidents", "scheduled_maintenances",
                                    "status", NULL};
  it_keys(s, top, "summary");
  check_page(json_object_get(s, "page"), W.page, "E2E Status");

  /* components: every one, the group as a row with its children's ids */
  json_t *comps = json_object_get(s, "components");
  assert_int_equal(json_array_size(comps), 4);
  json_t *grp = it_find(comps, W.grp), *api = it_find(comps, W.api), *db = it_find(comps, W.db),
         *web = it_find(comps, W.web);
  assert_non_null(grp);
  assert_non_null(api);
  assert_non_null(db);
  assert_non_null(web);
  it_keys(grp, GROUP_KEYS, "group row");
  it_keys(api, COMPONENT_KEYS, "component");
  it_keys(web, COMPONENT_KEYS, "component");
  assert_true(json_is_true(json_object_get(grp, "group")));
  assert_true(json_is_false(json_object_get(api, "group")));
  json_t *children = json_object_get(grp, "components");
  assert_int_equal(json_array_size(children), 2);
  assert_string_equal(json_string_value(json_array_get(children, 0)), W.api);
  assert_string_equal(json_string_value(json_array_get(children, 1)), W.db);
  assert_true(json_is_null(json_object_get(grp, "group_id")));
  assert_true(json_is_null(json_object_get(grp, "start_date")));
  assert_true(it_str_eq(api, "group_id", W.grp));
  assert_true(it_str_eq(db, "group_id", W.grp));
  assert_true(json_is_null(json_object_get(web, "group_id")));
  assert_int_equal(json_integer_value(json_object_get(api, "position")), 1);
  assert_int_equal(json_integer_value(json_object_get(db, "position")), 2);
  assert_true(it_str_eq(api, "description", "Public REST API"));
  assert_true(json_is_null(json_object_get(db, "description")));
  assert_true(it_str_eq(api, "status", "partial_outage"));
  assert_true(it_str_eq(db, "status", "operational"));
  assert_true(it_str_eq(api, "page_id", W.page));
  assert_true(json_is_boolean(json_object_get(api, "showcase")));
  assert_true(json_is_boolean(json_object_get(api, "only_show_if_degraded")));

  /* incidents: unresolved only, newest first */
  json_t *incs = json_object_get(s, "incidents");
  assert_int_equal(json_array_size(incs), 2);
  json_t *i3 = json_array_get(incs, 0), *i1 = json_array_get(incs, 1);
  assert_true(it_str_eq(i3, "id", W.inc3));
  assert_true(it_str_eq(i1, "id", W.inc1));
  it_keys(i1, INCIDENT_KEYS, "incident");
  it_keys(i3, INCIDENT_KEYS, "incident");
  assert_true(it_str_eq(i1, "status", "identified"));
  assert_true(it_str_eq(i1, "impact", "major")); /* worst affected: partial_outage */
  assert_true(json_is_null(json_object_get(i1, "monitoring_at")));
  assert_true(json_is_null(json_object_get(i1, "resolved_at")));
  assert_true(json_is_null(json_object_get(i1, "reminder_intervals")));
  assert_true(json_is_string(json_object_get(i1, "shortlink")));
  assert_true(json_is_string(json_object_get(i1, "started_at")));
  assert_true(it_str_eq(i1, "page_id", W.page));
  /* updates newest first; the first one recorded the component change */
  json_t *ups = json_object_get(i1, "incident_updates");
  assert_int_equal(json_array_size(ups), 2);
  json_t *u_new = json_array_get(ups, 0), *u_old = json_array_get(ups, 1);
  check_update(u_new, W.inc1);
  check_update(u_old, W.inc1);
  assert_true(it_str_eq(u_new, "status", "identified"));
  assert_true(it_str_eq(u_new, "body", "Found the cause"));
  assert_true(json_is_null(json_object_get(u_new, "affected_components")));
  assert_true(it_str_eq(u_old, "status", "investigating"));
  json_t *aff = json_object_get(u_old, "affected_components");
  assert_int_equal(json_array_size(aff), 1);
  json_t *a0 = json_array_get(aff, 0);
  static const char *const AFF_KEYS[] = {"code", "name", "old_status", "new_status", NULL};
  it_keys(a0, AFF_KEYS, "affected component");
  assert_true(it_str_eq(a0, "code", W.api));
  assert_true(it_str_eq(a0, "name", "Backend - API"));
  assert_true(it_str_eq(a0, "old_status", "operational"));
  assert_true(it_str_eq(a0, "new_status", "partial_outage"));
  /* affected components as full objects with their current status */
  json_t *ic = json_object_get(i1, "components");
  assert_int_equal(json_array_size(ic), 1);
  it_keys(json_array_get(ic, 0), COMPONENT_KEYS, "incident component");
  assert_true(it_str_eq(json_array_get(ic, 0), "status", "partial_outage"));
  /* an incident without components: [] and a null affected_components */
  assert_true(json_is_array(json_object_get(i3, "components")));
  assert_int_equal(json_array_size(json_object_get(i3, "components")), 0);
  json_t *u3 = json_array_get(json_object_get(i3, "incident_updates"), 0);
  assert_true(json_is_null(json_object_get(u3, "affected_components")));

  /* maintenances: scheduled / in_progress / verifying, newest first */
  json_t *ms = json_object_get(s, "scheduled_maintenances");
  assert_int_equal(json_array_size(ms), 2);
  assert_true(it_str_eq(json_array_get(ms, 0), "id", W.m_active));
  assert_true(it_str_eq(json_array_get(ms, 1), "id", W.m_up));
  check_maintenance(json_array_get(ms, 0));
  check_maintenance(json_array_get(ms, 1));
  assert_true(it_str_eq(json_array_get(ms, 0), "status", "in_progress"));
  assert_true(it_str_eq(json_array_get(ms, 1), "status", "scheduled"));

  /* rollup: API partial_outage, the others operational; incidents do not
   * move it (reference §1.6) */
  json_t *st = json_object_get(s, "status");
  static const char *const ST_KEYS[] = {"indicator", "description", NULL};
  it_keys(st, ST_KEYS, "status");
  assert_true(it_str_eq(st, "indicator", "minor"));
  assert_true(it_str_eq(st, "description", "Minor Service Outage"));
  json_decref(s);
}

static void test_status_and_components_match_summary(void **state) {
  (void)state;
  json_t *s = get_doc(W.page, "summary.json");
  json_t *st = get_doc(W.page, "status.json");
  static const char *const st_top[] = {"page", "status", NULL};
  it_keys(st, st_top, "status.json");
  assert_true(json_equal(json_object_get(st, "status"), json_object_get(s, "status")));
  assert_true(json_equal(json_object_get(st, "page"), json_object_get(s, "page")));
  json_t *c = get_doc(W.page, "components.json");
  static const char *const c_top[] = {"page", "components", NULL};
  it_keys(c, c_top, "components.json");
  assert_true(json_equal(json_object_get(c, "components"), json_object_get(s, "components")));
  json_decref(s);
  json_decref(st);
  json_decref(c);
}

static void test_incident_lists(void **state) {
  (void)state;
  static const char *const top[] = {"page", "incidents", NULL};
  json_t *all = get_doc(W.page, "incidents.json");
  it_keys(all, top, "incidents.json");
  json_t *a = json_object_get(all, "incidents");
  /* incidents only (no maintenances), every state, newest first */
  assert_int_equal(json_array_size(a), 3);
  assert_true(it_str_eq(json_array_get(a, 0), "id", W.inc3));
  assert_true(it_str_eq(json_array_get(a, 1), "id", W.inc2));
  assert_true(it_str_eq(json_array_get(a, 2), "id", W.inc1));
  json_t *i2 = json_array_get(a, 1);
  it_keys(i2, INCIDENT_KEYS, "resolved incident");
  assert_true(it_str_eq(i2, "status", "resolved"));
  assert_true(json_is_string(json_object_get(i2, "resolved_at")));
  assert_true(json_is_null(json_object_get(i2, "monitoring_at")));
  assert_true(it_str_eq(i2, "impact", "none"));
  json_t *ups = json_object_get(i2, "incident_updates");
  assert_int_equal(json_array_size(ups), 2);
  assert_true(it_str_eq(json_array_get(ups, 0), "status", "resolved"));
  assert_true(it_str_eq(json_array_get(ups, 1), "status", "investigating"));

  json_t *un = get_doc(W.page, "incidents/unresolved.json");
  it_keys(un, top, "unresolved.json");
  json_t *s = get_doc(W.page, "summary.json");
  assert_true(json_equal(json_object_get(un, "incidents"), json_object_get(s, "incidents")));
  json_decref(all);
  json_decref(un);
  json_decref(s);
}

static void test_maintenance_lists(void **state) {
  (void)state;
  static const char *const top[] = {"page", "scheduled_maintenances", NULL};
  json_t *all = get_doc(W.page, "scheduled-maintenances.json");
  it_keys(all, top, "scheduled-maintenances.json");
  json_t *a = json_object_get(all, "scheduled_maintenances");
  assert_int_equal(json_array_size(a), 3);
  assert_true(it_str_eq(json_array_get(a, 0), "id", W.m_done));
  assert_true(it_str_eq(json_array_get(a, 1), "id", W.m_active));
  assert_true(it_str_eq(json_array_get(a, 2), "id", W.m_up));
  for (size_t i = 0; i < 3; i++)
    check_maintenance(json_array_get(a, i));
  assert_true(it_str_eq(json_array_get(a, 0), "status", "completed"));
  assert_true(json_is_string(json_object_get(json_array_get(a, 0), "resolved_at")));

  json_t *up = get_doc(W.page, "scheduled-maintenances/upcoming.json");
  it_keys(up, top, "upcoming.json");
  json_t *u = json_object_get(up, "scheduled_maintenances");
  assert_int_equal(json_array_size(u), 1);
  assert_true(it_str_eq(json_array_get(u, 0), "id", W.m_up));

  json_t *ac = get_doc(W.page, "scheduled-maintenances/active.json");
  it_keys(ac, top, "active.json");
  json_t *v = json_object_get(ac, "scheduled_maintenances");
  assert_int_equal(json_array_size(v), 1);
  assert_true(it_str_eq(json_array_get(v, 0), "id", W.m_active));
  json_decref(all);
  json_decref(up);
  json_decref(ac);
}

static void test_empty_page(void **state) {
  (void)state;
  json_t *s = get_doc(W.page_b, "summary.json");
  check_page(json_object_get(s, "page"), W.page_b, "Empty Page");
  /* empty lists are [], never null */
  assert_true(json_is_array(json_object_get(s, "components")));
  assert_int_equal(json_array_size(json_object_get(s, "components")), 0);
  assert_int_equal(json_array_size(json_object_get(s, "incidents")), 0);
  assert_true(json_is_array(json_object_get(s, "scheduled_maintenances")));
  assert_int_equal(json_array_size(json_object_get(s, "scheduled_maintenances")), 0);
  json_t *st = json_object_get(s, "status");
  assert_true(it_str_eq(st, "indicator", "none"));
  assert_true(it_str_eq(st, "description", "All Systems Operational"));
  json_decref(s);
}

/* ---- page selection and errors ------------------------------------------------ */

static void test_host_header_selects_page(void **state) {
  (void)state;
  api_response by_path, by_host, by_host_port, b;
  char path[256];
  path_of(path, sizeof path, W.page, "summary.json");
  json_decref(it_public(&W.h, path, NULL, 200, &by_path));
  json_decref(it_public(&W.h, "/api/v2/summary.json", "Host: " DOMAIN_A "\r\n", 200, &by_host));
  json_decref(
      it_public(&W.h, "/api/v2/summary.json", "Host: " DOMAIN_A ":8080\r\n", 200, &by_host_port));
  /* the same page, so the very same pre-rendered bytes */
  assert_int_equal(by_host.body_len, by_path.body_len);
  assert_memory_equal(by_host.body, by_path.body, by_path.body_len);
  assert_int_equal(by_host_port.body_len, by_path.body_len);
  assert_memory_equal(by_host_port.body, by_path.body, by_path.body_len);
  /* another domain, another page */
  json_t *jb = it_public(&W.h, "/api/v2/status.json", "Host: " DOMAIN_B "\r\n", 200, &b);
  assert_true(it_str_eq(json_object_get(jb, "page"), "id", W.page_b));
  json_decref(jb);
  api_response_free(&by_path);
  api_response_free(&by_host);
  api_response_free(&by_host_port);
  api_response_free(&b);
}

static void expect_json_404(const char *path, const char *headers) {
  api_response r;
  assert_int_equal(api_request(&W.h, "GET", path, headers, NULL, &r), 0);
  if (r.status != 404)
    fail_msg("GET %s: expected 404, got %d", path, r.status);
  char ct[128];
  assert_non_null(api_response_header(&r, "Content-Type", ct, sizeof ct));
  assert_non_null(strstr(ct, "application/json"));
  json_t *j = it_json(&r);
  assert_true(json_is_string(json_object_get(j, "message")));
  json_decref(j);
  api_response_free(&r);
}

static void test_unknown_page_is_404_json(void **state) {
  (void)state;
  expect_json_404("/pages/zzzzzzzzzzzz/api/v2/summary.json", NULL);
  expect_json_404("/pages/zzzzzzzzzzzz/api/v2/status.json", NULL);
  expect_json_404("/api/v2/summary.json", "Host: nobody.example.com\r\n");
  /* an unknown document under a known page is a 404 too */
  char path[256];
  path_of(path, sizeof path, W.page, "nothing-here.json");
  api_response r;
  assert_int_equal(api_request(&W.h, "GET", path, NULL, NULL, &r), 0);
  assert_int_equal(r.status, 404);
  api_response_free(&r);
}

/* ---- HTTP caching and CORS ---------------------------------------------------- */

static void test_headers_etag_304(void **state) {
  (void)state;
  char path[256], v[256], etag[128];
  path_of(path, sizeof path, W.page, "summary.json");
  api_response r;
  json_decref(it_public(&W.h, path, "Origin: https://elsewhere.example\r\n", 200, &r));
  assert_non_null(api_response_header(&r, "Content-Type", v, sizeof v));
  assert_non_null(strstr(v, "application/json"));
  assert_non_null(api_response_header(&r, "Cache-Control", v, sizeof v));
  assert_string_equal(v, "max-age=10, public, s-maxage=10, stale-while-revalidate=20, "
                         "stale-if-error=3600");
  assert_non_null(api_response_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
  assert_string_equal(v, "*");
  assert_non_null(api_response_header(&r, "Access-Control-Expose-Headers", v, sizeof v));
  assert_non_null(strcasestr(v, "etag"));
  assert_non_null(api_response_header(&r, "ETag", etag, sizeof etag));
  assert_memory_equal(etag, "W/\"", 3);
  /* fresh data is not marked stale */
  if (api_response_header(&r, "X-Cache-Status", v, sizeof v))
    assert_string_not_equal(v, "stale");
  api_response_free(&r);

  /* the same tag: 304 without a body, still with the tag and CORS */
  char hdr[256];
  snprintf(hdr, sizeof hdr, "If-None-Match: %s\r\n", etag);
  assert_null(it_public(&W.h, path, hdr, 304, &r));
  assert_int_equal(r.body_len, 0);
  assert_non_null(api_response_header(&r, "ETag", v, sizeof v));
  assert_string_equal(v, etag);
  api_response_free(&r);

  /* another tag: the full document */
  json_decref(it_public(&W.h, path, "If-None-Match: W/\"0000\"\r\n", 200, &r));
  assert_true(r.body_len > 0);
  api_response_free(&r);

  /* another document of the same page has its own tag */
  char path2[256], etag2[128];
  path_of(path2, sizeof path2, W.page, "status.json");
  json_decref(it_public(&W.h, path2, NULL, 200, &r));
  assert_non_null(api_response_header(&r, "ETag", etag2, sizeof etag2));
  assert_string_not_equal(etag, etag2);
  api_response_free(&r);

  /* a browser preflight from another origin is allowed */
  assert_int_equal(api_request(&W.h, "OPTIONS", path,
                               "Origin: https://elsewhere.example\r\n"
                               "Access-Control-Request-Method: GET\r\n",
                               NULL, &r),
                   0);
  assert_true(r.status == 200 || r.status == 204);
  assert_non_null(api_response_header(&r, "Access-Control-Allow-Origin", v, sizeof v));
  assert_string_equal(v, "*");
  api_response_free(&r);
}

/* ---- writes show on the next read ----------------------------------------------- */

static void test_write_visible_on_next_read(void **state) {
  (void)state;
  char path[256], etag[128], v[128];
  path_of(path, sizeof path, W.page, "summary.json");
  api_response r;
  json_decref(it_public(&W.h, path, NULL, 200, &r));
  assert_non_null(api_response_header(&r, "ETag", etag, sizeof etag));
  api_response_free(&r);

  char mpath[256];
  snprintf(mpath, sizeof mpath, "/v1/pages/%s/components/%s", W.page, W.api);
  json_decref(it_admin(&W.h, 200, "PATCH", mpath, "{\"component\":{\"status\":\"major_outage\"}}"));

  /* the very next read: new status, new rollup, new tag (no 304) */
  char hdr[256];
  snprintf(hdr, sizeof hdr, "If-None-Match: %s\r\n", etag);
  json_t *s = it_public(&W.h, path, hdr, 200, &r);
  assert_non_null(api_response_header(&r, "ETag", v, sizeof v));
  assert_string_not_equal(v, etag);
  api_response_free(&r);
  assert_true(it_str_eq(it_find(json_object_get(s, "components"), W.api), "status",
                        "major_outage"));
  json_t *st = json_object_get(s, "status");
  assert_true(it_str_eq(st, "indicator", "major"));
  assert_true(it_str_eq(st, "description", "Partial System Outage"));
  /* the incident shows its component's current status */
  json_t *i1 = it_find(json_object_get(s, "incidents"), W.inc1);
  assert_true(it_str_eq(json_array_get(json_object_get(i1, "components"), 0), "status",
                        "major_outage"));
  json_decref(s);

  /* the other documents follow too */
  json_t *c = get_doc(W.page, "components.json");
  assert_true(it_str_eq(it_find(json_object_get(c, "components"), W.api), "status",
                        "major_outage"));
  json_decref(c);

  /* a new incident is in unresolved.json at once */
  char id[32];
  it_create_incident(&W.h, W.page, "\"name\":\"Fresh\",\"status\":\"investigating\"", id);
  json_t *un = get_doc(W.page, "incidents/unresolved.json");
  assert_true(it_str_eq(json_array_get(json_object_get(un, "incidents"), 0), "id", id));
  json_decref(un);
  /* and resolving it removes it at once */
  snprintf(mpath, sizeof mpath, "/v1/pages/%s/incidents/%s", W.page, id);
  json_decref(it_admin(&W.h, 200, "PATCH", mpath, "{\"incident\":{\"status\":\"resolved\"}}"));
  un = get_doc(W.page, "incidents/unresolved.json");
  assert_null(it_find(json_object_get(un, "incidents"), id));
  json_decref(un);

  /* the empty page was not touched */
  json_t *b = get_doc(W.page_b, "summary.json");
  assert_int_equal(json_array_size(json_object_get(b, "components")), 0);
  json_decref(b);
}

/* /metrics is valid Prometheus text (promtool, a declared dependency, finds
 * no problem) and counts cache hits; /_internal/digest is well-formed,
 * stable while nothing changes, and moves with a write. */
static void test_metrics_and_digest(void **state) {
  (void)state;
  char path[256];
  path_of(path, sizeof path, W.page, "summary.json");
  json_decref(it_public(&W.h, path, NULL, 200, NULL));
  api_response r;
  assert_int_equal(api_request(&W.h, "GET", "/metrics", NULL, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "statusd_api_cache_hits_total{document=\"summary\"}"));
  assert_non_null(strstr(r.body, "statusd_api_http_requests_total{"));
  assert_non_null(strstr(r.body, "statusd_api_db_pool_connections{pool=\"write\",state=\"up\"}"));
  char file[1200];
  snprintf(file, sizeof file, "%s/metrics.txt", W.h.dir);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fwrite(r.body, 1, r.body_len, f);
  fclose(f);
  api_response_free(&r);
  char cmd[2600];
  snprintf(cmd, sizeof cmd, "promtool check metrics < %s > %s.out 2>&1", file, file);
  int rc = system(cmd);
  if (rc != 0) {
    snprintf(cmd, sizeof cmd, "cat %s.out >&2", file);
    (void)system(cmd);
    fail_msg("promtool check metrics failed (%d)", rc);
  }

  assert_int_equal(api_request(&W.h, "GET", "/_internal/digest", NULL, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  json_t *d1 = it_json(&r);
  api_response_free(&r);
  const char *root1 = json_string_value(json_object_get(d1, "digest"));
  assert_non_null(root1);
  assert_int_equal(strlen(root1), 64);
  assert_non_null(json_object_get(json_object_get(d1, "pages"), W.page));
  assert_int_equal(api_request(&W.h, "GET", "/_internal/digest", NULL, NULL, &r), 0);
  json_t *d2 = it_json(&r);
  api_response_free(&r);
  assert_string_equal(json_string_value(json_object_get(d2, "digest")), root1);
  char mpath[256];
  snprintf(mpath, sizeof mpath, "/v1/pages/%s/components/%s", W.page, W.db);
  json_decref(it_admin(&W.h, 200, "PATCH", mpath, "{\"component\":{\"description\":\"moved\"}}"));
  assert_int_equal(api_request(&W.h, "GET", "/_internal/digest", NULL, NULL, &r), 0);
  json_t *d3 = it_json(&r);
  api_response_free(&r);
  assert_string_not_equal(json_string_value(json_object_get(d3, "digest")), root1);
  /* only the written page's digest moved */
  assert_string_not_equal(
      json_string_value(json_object_get(json_object_get(d3, "pages"), W.page)),
      json_string_value(json_object_get(json_object_get(d1, "pages"), W.page)));
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(d3, "pages"), W.page_b)),
      json_string_value(json_object_get(json_object_get(d1, "pages"), W.page_b)));
  json_decref(d1);
  json_decref(d2);
  json_decref(d3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_client_bad_servers),
      cmocka_unit_test(test_summary_shape),
      cmocka_unit_test(test_status_and_components_match_summary),
      cmocka_unit_test(test_incident_lists),
      cmocka_unit_test(test_maintenance_lists),
      cmocka_unit_test(test_empty_page),
      cmocka_unit_test(test_host_header_selects_page),
      cmocka_unit_test(test_unknown_page_is_404_json),
      cmocka_unit_test(test_headers_etag_304),
      cmocka_unit_test(test_write_visible_on_next_read),
      cmocka_unit_test(test_metrics_and_digest),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
