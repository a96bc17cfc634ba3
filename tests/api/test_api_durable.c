/* Durable writes (X-Durable: true) of statusd-api against real PostgreSQL
 * and Redis (api_harness), without a replication daemon: the test plays
 * the peer region itself, by publishing ack messages on the region's Redis
 * acks channel and by writing sp_peer_ack rows, exactly what
 * statusd-replicad does once a peer acknowledged.
 *
 * Shown, in order:
 *   - with the harness's one-region topology a durable write is refused
 *     with 409 naming X-Durable before anything is written; a bad header
 *     value is 400 naming X-Durable; reads ignore the header; a bad
 *     --durable-timeout-ms stops the process at start with status 2;
 *   - the region gets a peer ("ghost", never running): a durable write is
 *     held; an ack below its sequence, for another origin, from the region
 *     itself or malformed does not release it; the ack that covers it does
 *     (201, X-Durable: confirmed, X-Durable-Region: ghost);
 *   - with no Redis message at all, a row in sp_peer_ack releases it (the
 *     ~100 ms fallback poll);
 *   - without any ack: 504, X-Durable: timeout, the body says committed and
 *     carries the normal answer, and the incident is readable;
 *   - a client that disconnects while held is dropped and counted;
 *   - SIGTERM answers a held write at once (503, X-Durable: aborted) and the
 *     process exits 0, its log free of sanitizer reports.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api_itest.h"

#define TIMEOUT_MS 2500 /* the durable timeout of the two-region process */

static struct {
  api_harness h;
  int proc;       /* index of the running API process */
  char page[32];
} S;

/* ---- helpers ------------------------------------------------------------------- */

/* One admin request with extra header lines (besides auth and JSON type). */
static void request(const char *method, const char *path, const char *durable, const char *body,
                    api_response *r) {
  char hdrs[512];
  snprintf(hdrs, sizeof hdrs, "Authorization: OAuth %s\r\n%s%s%s%s", S.h.admin_key,
           body ? "Content-Type: application/json\r\n" : "", durable ? "X-Durable: " : "",
           durable ? durable : "", durable ? "\r\n" : "");
  if (api_request(&S.h, method, path, hdrs, body, r) != 0)
    fail_msg("%s %s: no answer", method, path);
}

/* A durable request made on its own thread (the main thread plays the peer). */
typedef struct bg_req {
  pthread_t t;
  char path[128];
  char body[256];
  api_response r;
  long long ms; /* how long the answer took */
  int rc;
} bg_req;

static void *bg_run(void *arg) {
  bg_req *b = arg;
  char hdrs[512];
  snprintf(hdrs, sizeof hdrs,
           "Authorization: OAuth %s\r\nContent-Type: application/json\r\nX-Durable: true\r\n",
           S.h.admin_key);
  long long t0 = it_now_ms();
  b->rc = api_request(&S.h, "POST", b->path, hdrs, b->body, &b->r);
  b->ms = it_now_ms() - t0;
  return NULL;
}

static void bg_incident(bg_req *b, const char *name) {
  memset(b, 0, sizeof *b);
  snprintf(b->path, sizeof b->path, "/v1/pages/%s/incidents", S.page);
  snprintf(b->body, sizeof b->body, "{\"incident\":{\"name\":\"%s\",\"status\":\"investigating\"}}",
           name);
  assert_int_equal(pthread_create(&b->t, NULL, bg_run, b), 0);
}

static void bg_join(bg_req *b) {
  pthread_join(b->t, NULL);
  if (b->rc != 0)
    fail_msg("durable request failed: %d", b->rc);
}

/* A sample of /metrics: the value of the line starting with `series `. */
static double metric(const char *series) {
  api_response r;
  assert_int_equal(api_request(&S.h, "GET", "/metrics", NULL, NULL, &r), 0);
  assert_int_equal(r.status, 200);
  char want[256];
  snprintf(want, sizeof want, "\n%s ", series);
  const char *p = strstr(r.body, want);
  double v = p ? atof(p + strlen(want)) : -1;
  api_response_free(&r);
  return v;
}

/* Waits (up to ms) until `series` reads `want`. */
static void wait_metric(const char *series, double want, long ms) {
  long long end = it_now_ms() + ms;
  double v = -1;
  while ((v = metric(series)) != want && it_now_ms() < end)
    it_sleep_ms(10);
  if (v != want)
    fail_msg("%s is %g after %ld ms, expected %g", series, v, ms, want);
}

/* This region's (origin 0) last change-log sequence number. */
static unsigned long long own_seq(void) {
  PGconn *db = PQconnectdb(S.h.pg.conninfo);
  assert_int_equal(PQstatus(db), CONNECTION_OK);
  PGresult *res = PQexec(db, "SELECT seq FROM sp_vclock WHERE origin = 0");
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  assert_int_equal(PQntuples(res), 1);
  unsigned long long v = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
  PQclear(res);
  PQfinish(db);
  return v;
}

static void sql(const char *q) {
  PGconn *db = PQconnectdb(S.h.pg.conninfo);
  assert_int_equal(PQstatus(db), CONNECTION_OK);
  PGresult *res = PQexec(db, q);
  if (PQresultStatus(res) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", q, PQerrorMessage(db));
  PQclear(res);
  PQfinish(db);
}

static void publish(const char *msg) {
  struct timeval tv = {5, 0};
  redisContext *rc = redisConnectWithTimeout(S.h.redis.host, S.h.redis.port, tv);
  assert_non_null(rc);
  assert_int_equal(rc->err, 0);
  redisReply *rep = redisCommand(rc, "PUBLISH sp:test:test:acks %s", msg);
  assert_non_null(rep);
  assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
  assert_int_equal(rep->integer, 1); /* the API process is subscribed */
  freeReplyObject(rep);
  redisFree(rc);
}

static void expect_header(const api_response *r, const char *name, const char *want) {
  char v[128];
  if (api_response_header(r, name, v, sizeof v) == NULL)
    fail_msg("no %s header (status %d): %.300s", name, r->status, r->body);
  assert_string_equal(v, want);
}

/* Every API log of the harness is free of sanitizer reports. */
static void logs_clean(void) {
  for (int i = 0; i < API_HARNESS_MAX_PROCS; i++) {
    char path[1200];
    snprintf(path, sizeof path, "%s/api-%d.log", S.h.dir, i);
    FILE *f = fopen(path, "r");
    if (f == NULL)
      continue;
    char line[8192];
    while (fgets(line, sizeof line, f))
      if (strstr(line, "Sanitizer") || strstr(line, "runtime error:"))
        fail_msg("%s: %s", path, line);
    fclose(f);
  }
}

/* Replaces the running process by one whose topology gives the region a
 * peer, "ghost" (same ports on 127.0.0.2; never started), with the durable
 * timeout `timeout_ms` (through $SP_DURABLE_TIMEOUT_MS). */
static void restart_with_peer(const char *timeout_ms) {
  assert_int_equal(api_harness_stop_proc(&S.h, S.proc), 0);
  logs_clean(); /* before the slot's log is reused */
  json_error_t e;
  json_t *t = json_load_file(S.h.topology, 0, &e);
  assert_non_null(t);
  json_t *regions = json_object_get(t, "regions");
  if (json_array_size(regions) == 1) {
    json_t *ghost = json_deep_copy(json_array_get(regions, 0));
    json_object_set_new(ghost, "name", json_string("ghost"));
    json_object_set_new(ghost, "address", json_string("127.0.0.2"));
    json_object_set_new(json_object_get(ghost, "postgres"), "host", json_string("127.0.0.2"));
    json_object_set_new(json_object_get(ghost, "redis"), "host", json_string("127.0.0.2"));
    json_array_append_new(regions, ghost);
    assert_int_equal(json_dump_file(t, S.h.topology, JSON_INDENT(2)), 0);
  }
  json_decref(t);
  setenv("SP_DURABLE_TIMEOUT_MS", timeout_ms, 1);
  S.proc = api_harness_spawn(&S.h);
  unsetenv("SP_DURABLE_TIMEOUT_MS");
  assert_true(S.proc >= 0);
}

/* ---- setup ---------------------------------------------------------------------- */

static int setup(void **state) {
  (void)state;
  memset(&S, 0, sizeof S);
  if (api_harness_start(&S.h))
    return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  api_harness_stop(&S.h);
  return 0;
}

/* ---- tests, in order ------------------------------------------------------------- */

static void test_one_region_refused(void **state) {
  (void)state;
  it_create_page(&S.h, "Durable", "status.durable.test", S.page);
  char path[128];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", S.page);
  api_response r;
  /* nobody could ever confirm it: 409 before writing */
  request("POST", path, "true", "{\"incident\":{\"name\":\"never written\"}}", &r);
  assert_int_equal(r.status, 409);
  json_t *j = it_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "field")), "X-Durable");
  assert_non_null(strstr(json_string_value(json_object_get(j, "message")), "no peers"));
  json_decref(j);
  api_response_free(&r);
  request("GET", path, NULL, NULL, &r);
  assert_int_equal(r.status, 200);
  assert_null(strstr(r.body, "never written"));
  api_response_free(&r);

  /* anything but true / 1 is a client error naming the header */
  static const char *const bad[] = {"yes", "false", "0", "truee", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    request("POST", path, bad[i], "{\"incident\":{\"name\":\"bad header\"}}", &r);
    if (r.status != 400)
      fail_msg("X-Durable: \"%s\": expected 400, got %d: %s", bad[i], r.status, r.body);
    j = it_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "field")), "X-Durable");
    assert_non_null(strstr(json_string_value(json_object_get(j, "message")), "X-Durable"));
    json_decref(j);
    api_response_free(&r);
  }
  /* reads ignore it */
  request("GET", path, "banana", NULL, &r);
  assert_int_equal(r.status, 200);
  assert_null(strstr(r.body, "bad header"));
  api_response_free(&r);
}

static void test_bad_timeout_option(void **state) {
  (void)state;
  char exe[PATH_MAX], cmd[PATH_MAX * 3], out[2048];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  assert_true(n > 0);
  exe[n] = '\0';
  char *slash = strrchr(exe, '/'); /* build/tests/api/test_x -> build/statusd-api */
  for (int up = 0; up < 3 && slash; up++) {
    *slash = '\0';
    slash = strrchr(exe, '/');
  }
  static const char *const bad[] = {"0", "abc", "-5", "600001"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(cmd, sizeof cmd,
             "timeout 20 '%s/statusd-api' --topology '%s' --region test --durable-timeout-ms '%s' "
             "serve 2>&1",
             exe, S.h.topology, bad[i]);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t k = fread(out, 1, sizeof out - 1, f);
    out[k] = '\0';
    int st = pclose(f);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    assert_non_null(strstr(out, "--durable-timeout-ms"));
  }
}

static void test_confirmed_by_redis_ack(void **state) {
  (void)state;
  char ms[16];
  snprintf(ms, sizeof ms, "%d", TIMEOUT_MS);
  restart_with_peer(ms);
  bg_req *b = malloc(sizeof *b);
  bg_incident(b, "held");
  wait_metric("statusd_api_durable_waiting", 1, TIMEOUT_MS - 500);
  unsigned long long seq = own_seq();
  assert_true(seq > 0);
  char msg[256];
  /* none of these covers it */
  snprintf(msg, sizeof msg, "{\"peer\":\"ghost\",\"origin\":0,\"seq\":%llu}", seq - 1);
  publish(msg);
  snprintf(msg, sizeof msg, "{\"peer\":\"ghost\",\"origin\":1,\"seq\":%llu}", seq + 100);
  publish(msg);
  snprintf(msg, sizeof msg, "{\"peer\":\"test\",\"origin\":0,\"seq\":%llu}", seq + 100);
  publish(msg); /* the region itself is no witness */
  snprintf(msg, sizeof msg, "{\"peer\":\"nowhere\",\"origin\":0,\"seq\":%llu}", seq + 100);
  publish(msg);
  publish("{not json");
  it_sleep_ms(200); /* a release would answer within a few ms */
  assert_int_equal(metric("statusd_api_durable_waiting"), 1);
  snprintf(msg, sizeof msg, "{\"peer\":\"ghost\",\"origin\":0,\"seq\":%llu}", seq);
  publish(msg);
  bg_join(b);
  assert_int_equal(b->r.status, 201);
  expect_header(&b->r, "X-Durable", "confirmed");
  expect_header(&b->r, "X-Durable-Region", "ghost");
  json_t *j = it_json(&b->r);
  assert_string_equal(json_string_value(json_object_get(j, "name")), "held");
  json_decref(j);
  assert_true(b->ms < TIMEOUT_MS);
  api_response_free(&b->r);
  free(b);
  assert_int_equal(metric("statusd_api_durable_writes_total{outcome=\"confirmed\"}"), 1);
  assert_int_equal(metric("statusd_api_durable_wait_seconds_count"), 1);
}

static void test_confirmed_by_poll(void **state) {
  (void)state;
  bg_req *b = malloc(sizeof *b);
  bg_incident(b, "polled");
  wait_metric("statusd_api_durable_waiting", 1, TIMEOUT_MS - 500);
  char q[256];
  snprintf(q, sizeof q,
           "INSERT INTO sp_peer_ack (peer, origin, seq) VALUES (1, 0, %llu) "
           "ON CONFLICT (peer, origin) DO UPDATE SET seq = EXCLUDED.seq",
           own_seq());
  sql(q); /* no Redis message: only the poll can see it */
  bg_join(b);
  assert_int_equal(b->r.status, 201);
  expect_header(&b->r, "X-Durable", "confirmed");
  expect_header(&b->r, "X-Durable-Region", "ghost");
  assert_true(b->ms < TIMEOUT_MS);
  api_response_free(&b->r);
  free(b);
  assert_int_equal(metric("statusd_api_durable_writes_total{outcome=\"confirmed\"}"), 2);
}

static void test_timeout(void **state) {
  (void)state;
  char path[128];
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", S.page);
  api_response r;
  long long t0 = it_now_ms();
  request("POST", path, "1", "{\"incident\":{\"name\":\"unconfirmed\"}}", &r);
  long long took = it_now_ms() - t0;
  assert_int_equal(r.status, 504);
  assert_true(took >= TIMEOUT_MS - 50);
  assert_true(took < TIMEOUT_MS + 1500);
  expect_header(&r, "X-Durable", "timeout");
  json_t *j = it_json(&r);
  assert_true(json_is_true(json_object_get(j, "committed")));
  assert_string_equal(json_string_value(json_object_get(j, "field")), "X-Durable");
  assert_string_equal(json_string_value(json_object_get(j, "region")), "test");
  assert_int_equal(json_integer_value(json_object_get(j, "status")), 201);
  assert_non_null(strstr(json_string_value(json_object_get(j, "message")), "committed"));
  json_t *res = json_object_get(j, "result");
  assert_string_equal(json_string_value(json_object_get(res, "name")), "unconfirmed");
  const char *id = json_string_value(json_object_get(j, "id"));
  assert_non_null(id);
  assert_string_equal(id, json_string_value(json_object_get(res, "id")));
  /* it is there: committed in this region */
  char one[192];
  snprintf(one, sizeof one, "%s/%s", path, id);
  api_response g;
  request("GET", one, NULL, NULL, &g);
  assert_int_equal(g.status, 200);
  api_response_free(&g);
  json_decref(j);
  api_response_free(&r);
  assert_int_equal(metric("statusd_api_durable_writes_total{outcome=\"timeout\"}"), 1);
  assert_int_equal(metric("statusd_api_durable_waiting"), 0);
}

static void test_client_gone(void **state) {
  (void)state;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)S.h.port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  char body[128], req[1024];
  int bl = snprintf(body, sizeof body, "{\"incident\":{\"name\":\"abandoned\"}}");
  int n = snprintf(req, sizeof req,
                   "POST /v1/pages/%s/incidents HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: OAuth %s\r\nContent-Type: application/json\r\n"
                   "X-Durable: true\r\nContent-Length: %d\r\n\r\n%s",
                   S.page, S.h.admin_key, bl, body);
  assert_int_equal(write(fd, req, (size_t)n), n);
  wait_metric("statusd_api_durable_waiting", 1, TIMEOUT_MS - 500);
  close(fd);
  /* dropped well before the timeout would have answered it */
  wait_metric("statusd_api_durable_writes_total{outcome=\"disconnected\"}", 1, TIMEOUT_MS - 500);
  assert_int_equal(metric("statusd_api_durable_waiting"), 0);
  assert_int_equal(metric("statusd_api_durable_writes_total{outcome=\"timeout\"}"), 1);
}

static void test_sigterm_drains(void **state) {
  (void)state;
  restart_with_peer("20000");
  bg_req *b = malloc(sizeof *b);
  bg_incident(b, "draining");
  wait_metric("statusd_api_durable_waiting", 1, 5000);
  long long t0 = it_now_ms();
  int st = api_harness_stop_proc(&S.h, S.proc);
  long long took = it_now_ms() - t0;
  bg_join(b);
  assert_int_equal(st, 0);
  assert_true(took < 5000); /* not held for the 20 s durable timeout */
  assert_true(b->ms < 5000);
  assert_int_equal(b->r.status, 503);
  expect_header(&b->r, "X-Durable", "aborted");
  json_t *j = it_json(&b->r);
  assert_true(json_is_true(json_object_get(j, "committed")));
  assert_string_equal(json_string_value(json_object_get(json_object_get(j, "result"), "name")),
                      "draining");
  json_decref(j);
  api_response_free(&b->r);
  free(b);
  logs_clean();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_region_refused),    cmocka_unit_test(test_bad_timeout_option),
      cmocka_unit_test(test_confirmed_by_redis_ack), cmocka_unit_test(test_confirmed_by_poll),
      cmocka_unit_test(test_timeout),               cmocka_unit_test(test_client_gone),
      cmocka_unit_test(test_sigterm_drains),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
