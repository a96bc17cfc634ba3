/* Durable writes (X-Durable: true) across a real three-region deployment
 * made by statusctl (a copy of config/topology.local.json in a temporary
 * directory, every port moved up by 27000 so neither `make run`,
 * test_statusctl (+20000), test_replicad (+21000), test_repl_chaos
 * (+23000) nor test_replicad_repair (+24000) is touched).  Every
 * statusd-api runs with a 2 s durable timeout ($SP_DURABLE_TIMEOUT_MS in
 * statusctl's environment, which the daemons inherit).
 *
 * In order: a bad X-Durable value is a 400 naming the header; a durable
 * incident created in us-east answers 201 with X-Durable: confirmed, and
 * the region named by X-Durable-Region already serves it at that moment;
 * us-east's replicad publishes the acks it persisted on us-east's Redis
 * acks channel, covering a write just made;
 * with the replication daemons of eu-west and ap-south stopped (SIGTERM), a
 * durable write answers 504 + X-Durable: timeout after the timeout, its
 * body saying it is committed, while a plain write made meanwhile answers at
 * once, and once the daemons are back the 504'd write reaches every region;
 * finally a confirmed durable write survives the loss of its region: every
 * us-east process (PostgreSQL included) is killed with SIGKILL and the
 * write is in eu-west and ap-south; the surviving regions then stop with
 * logs free of sanitizer reports.
 *
 * The test process is a child subreaper so the daemons statusctl starts are
 * reaped here; teardown runs `down --purge --force` and SIGKILLs whatever
 * a PID file still names.  Test-only state lives in the one struct `g`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "deploy_harness.h"
#include "sp_err.h"

#define PORT_SHIFT 27000
#define NREGIONS DH_NREGIONS
#define CONVERGE_MS 10000
#define DURABLE_TIMEOUT_MS 2000
#define DURABLE_ENV "SP_DURABLE_TIMEOUT_MS=2000"

static struct {
  dh_deploy d; /* temp dir, topology copy, ports, API key and page */
  int up;
} g;

/* ---- HTTP with request and response headers ----------------------------------- */

typedef struct resp {
  long status;        /* 0: no answer */
  char *body;         /* malloc()ed, NUL-terminated */
  char durable[64];   /* X-Durable response header ("" when absent) */
  char region[64];    /* X-Durable-Region */
  long long ms;       /* time to the answer */
} resp;

/* Copies a header's value (trimmed) when the line is `name: value`. */
static void take_header(const char *line, size_t n, const char *name, char *out, size_t outlen) {
  size_t k = strlen(name);
  if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':')
    return;
  const char *v = line + k + 1;
  const char *end = line + n;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
    end--;
  snprintf(out, outlen, "%.*s", (int)(end - v), v);
}

static void on_header(const char *line, size_t n, void *arg) {
  resp *r = arg;
  take_header(line, n, "X-Durable", r->durable, sizeof r->durable);
  take_header(line, n, "X-Durable-Region", r->region, sizeof r->region);
}

/* One management request to `region` (thread-safe; no cmocka checks).
 * durable: the X-Durable value to send, or NULL. */
static void http(int region, const char *method, const char *path, const char *json,
                 const char *durable, resp *r) {
  memset(r, 0, sizeof *r);
  char url[512], dur[128];
  snprintf(url, sizeof url, "http://%s:%d%s", dh_addrs[region], g.d.api_port, path);
  snprintf(dur, sizeof dur, "X-Durable: %s", durable ? durable : "");
  dh_http_opts o = {durable ? dur : NULL, 15000, on_header, r};
  long long t0 = dh_now_ms();
  r->status = dh_http_with(method, url, g.d.key, json, &o, &r->body);
  r->ms = dh_now_ms() - t0;
}

static json_t *body_json(const resp *r) {
  json_t *j = json_loads(r->body, 0, NULL);
  if (j == NULL)
    fail_msg("answer %ld is not JSON: %.300s", r->status, r->body);
  return j;
}

static int region_index(const char *name) {
  for (int i = 0; i < NREGIONS; i++)
    if (strcmp(dh_regions[i], name) == 0)
      return i;
  return -1;
}

/* The status of GET /v1/pages/<page>/incidents/<id> in `region`. */
static long incident_status(int region, const char *id) {
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", g.d.page, id);
  resp r;
  http(region, "GET", path, NULL, NULL, &r);
  free(r.body);
  return r.status;
}

/* Waits up to ms for incident `id` to be served by `region`. */
static void wait_incident(int region, const char *id, long ms) {
  long long end = dh_now_ms() + ms;
  long st = 0;
  while ((st = incident_status(region, id)) != 200 && dh_now_ms() < end)
    dh_sleep_ms(50);
  if (st != 200)
    fail_msg("incident %s not served in %s after %ld ms (last status %ld)", id,
             dh_regions[region], ms, st);
}

static void incidents_path(char *out, size_t n) {
  snprintf(out, n, "/v1/pages/%s/incidents", g.d.page);
}

/* A durable incident created in us-east: it must answer 201 with X-Durable:
 * confirmed.  Its id into id[64]; the answer in *r (free(r->body)). */
static void durable_incident(const char *json, resp *r, char id[64]) {
  char path[128];
  incidents_path(path, sizeof path);
  http(0, "POST", path, json, "true", r);
  if (r->status != 201 || strcmp(r->durable, "confirmed") != 0)
    fail_msg("durable write: %ld, X-Durable \"%s\": %s", r->status, r->durable, r->body);
  json_t *j = body_json(r);
  snprintf(id, 64, "%s", json_string_value(json_object_get(j, "id")));
  json_decref(j);
}

/* ---- setup ------------------------------------------------------------------------ */

static int setup(void **state) {
  (void)state;
  if (dh_deploy_setup(&g.d, "sp-durable", PORT_SHIFT) != 0)
    return -1;
  g.d.child_env = DURABLE_ENV;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  dh_deploy_teardown(&g.d);
  return 0;
}

/* ---- tests, in order -------------------------------------------------------------- */

static void test_up(void **state) {
  (void)state;
  dh_up(&g.d);
  g.up = 1;
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
}

static void test_bad_header(void **state) {
  (void)state;
  assert_true(g.up);
  char path[128];
  incidents_path(path, sizeof path);
  resp r;
  http(0, "POST", path, "{\"incident\":{\"name\":\"bad header\"}}", "yes please", &r);
  assert_int_equal(r.status, 400);
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "field")), "X-Durable");
  assert_non_null(strstr(json_string_value(json_object_get(j, "message")), "X-Durable"));
  json_decref(j);
  free(r.body);
}

static void test_confirmed_and_readable(void **state) {
  (void)state;
  assert_true(g.up);
  resp r;
  char id[64];
  durable_incident("{\"incident\":{\"name\":\"durable one\",\"status\":\"investigating\"}}", &r,
                   id);
  int at = region_index(r.region);
  if (at <= 0) /* a peer, never us-east itself */
    fail_msg("X-Durable-Region \"%s\"", r.region);
  /* at the moment of the answer: no waiting */
  assert_int_equal(incident_status(at, id), 200);
  printf("# durable write confirmed by %s in %lld ms\n", r.region, r.ms);
  free(r.body);
  /* "1" is accepted too */
  char path[128];
  incidents_path(path, sizeof path);
  http(0, "POST", path, "{\"incident\":{\"name\":\"durable two\"}}", "1", &r);
  assert_int_equal(r.status, 201);
  assert_string_equal(r.durable, "confirmed");
  free(r.body);
}

/* us-east's replicad publishes the acks it persisted on the region's acks
 * channel (what statusd-api listens to): {"peer","origin","seq"} for
 * us-east's own origin, covering a write just made there. */
static int covers_seq(const char *msg, size_t len, void *arg) {
  json_t *m = json_loadb(msg, len, 0, NULL);
  const char *peer = json_string_value(json_object_get(m, "peer"));
  int seen = peer && region_index(peer) > 0 &&
             json_integer_value(json_object_get(m, "origin")) == 0 &&
             json_integer_value(json_object_get(m, "seq")) >= *(json_int_t *)arg;
  json_decref(m);
  return seen;
}

static void test_acks_published(void **state) {
  (void)state;
  assert_true(g.up);
  redisContext *rc = dh_subscribe(&g.d, 0, "acks");
  char path[128];
  incidents_path(path, sizeof path);
  resp w;
  http(0, "POST", path, "{\"incident\":{\"name\":\"acked\"}}", NULL, &w);
  assert_int_equal(w.status, 201);
  free(w.body);
  /* the write's sequence: us-east's own entry of its vector, read after it */
  char *dig;
  assert_int_equal(dh_http_region(&g.d, 0, "GET", "/_internal/digest", NULL, &dig), 200);
  json_t *dj = json_loads(dig, 0, NULL);
  free(dig);
  json_int_t seq = json_integer_value(json_object_get(json_object_get(dj, "vector"), "0"));
  json_decref(dj);
  assert_true(seq > 0);
  int seen = dh_wait_message(rc, 5000, covers_seq, &seq);
  redisFree(rc);
  if (!seen)
    fail_msg("no ack covering us-east's sequence %lld on sp:local:us-east:acks",
             (long long)seq);
}

typedef struct bg {
  pthread_t t;
  char path[128];
  resp r;
  atomic_int done;
} bg;

static void *bg_durable(void *arg) {
  bg *b = arg;
  http(0, "POST", b->path, "{\"incident\":{\"name\":\"while peers are down\"}}", "true", &b->r);
  atomic_store(&b->done, 1);
  return NULL;
}

static void test_timeout_when_peers_stopped(void **state) {
  (void)state;
  assert_true(g.up);
  dh_stop(&g.d, 1, "statusd-replicad");
  dh_stop(&g.d, 2, "statusd-replicad");
  bg *b = calloc(1, sizeof *b);
  incidents_path(b->path, sizeof b->path);
  assert_int_equal(pthread_create(&b->t, NULL, bg_durable, b), 0);
  /* a plain write meanwhile is not held up by the waiting one */
  dh_sleep_ms(200);
  resp plain;
  http(0, "POST", b->path, "{\"incident\":{\"name\":\"plain\"}}", NULL, &plain);
  assert_int_equal(plain.status, 201);
  assert_string_equal(plain.durable, "");
  assert_true(plain.ms < 1000);
  assert_false(atomic_load(&b->done));
  free(plain.body);
  pthread_join(b->t, NULL);
  resp *r = &b->r;
  if (r->status != 504)
    fail_msg("expected 504, got %ld (X-Durable \"%s\"): %s", r->status, r->durable, r->body);
  assert_string_equal(r->durable, "timeout");
  assert_true(r->ms >= DURABLE_TIMEOUT_MS - 50);
  assert_true(r->ms < DURABLE_TIMEOUT_MS + 2000);
  json_t *j = body_json(r);
  assert_true(json_is_true(json_object_get(j, "committed")));
  assert_non_null(strstr(json_string_value(json_object_get(j, "message")), "committed"));
  char id[64];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
  assert_string_equal(json_string_value(json_object_get(json_object_get(j, "result"), "id")),
                      id);
  json_decref(j);
  free(r->body);
  free(b);
  assert_int_equal(incident_status(0, id), 200); /* committed here */
  /* the daemons back: the write reaches everyone */
  dh_ctl_ok(&g.d, "up", "up again");
  wait_incident(1, id, CONVERGE_MS);
  wait_incident(2, id, CONVERGE_MS);
}

/* SIGKILL to a process and its process group (statusctl starts every
 * daemon in its own session, so PostgreSQL's backends go with it). */
static void kill9(const char *region, const char *proc) {
  pid_t pid = dh_pidfile(&g.d, region, proc);
  if (!dh_alive(pid))
    fail_msg("%s of %s is not running", proc, region);
  kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  dh_wait_gone(pid, 5000);
}

static void test_region_lost(void **state) {
  (void)state;
  assert_true(g.up);
  resp r;
  char id[64];
  durable_incident("{\"incident\":{\"name\":\"survives\",\"status\":\"identified\"}}", &r, id);
  free(r.body);
  /* us-east is gone: every process, its database too */
  for (size_t p = 0; p < DH_NPROCS; p++)
    kill9("us-east", dh_procs[p]);
  assert_int_equal(incident_status(0, id), 0); /* nobody answers there */
  wait_incident(1, id, CONVERGE_MS);
  wait_incident(2, id, CONVERGE_MS);
}

/* The surviving regions stop gracefully and their statusd-api and
 * statusd-replicad logs (LeakSanitizer reports at exit) are free of
 * sanitizer reports. */
static void test_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  dh_ctl_ok(&g.d, "down", "down with us-east already dead");
  for (int i = 1; i < NREGIONS; i++)
    dh_expect_region_logs_clean(&g.d, i);
  g.up = 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_up),
      cmocka_unit_test(test_bad_header),
      cmocka_unit_test(test_confirmed_and_readable),
      cmocka_unit_test(test_acks_published),
      cmocka_unit_test(test_timeout_when_peers_stopped),
      cmocka_unit_test(test_region_lost),
      cmocka_unit_test(test_logs_clean),
  };
  return cmocka_run_group_tests_name("durable", tests, setup, teardown);
}
