/* statusd-replicad's maximum log retention and snapshot chunk bound against
 * real processes: a three-region deployment made by statusctl (ports moved
 * up by 30500, clear of the other suites), SP_REPL_LOG_RETENTION_MS=0, and,
 * once up and converged, every replicad restarted with
 * SP_REPL_MAX_LOG_RETENTION_MS=1500.
 *
 * In order: bad --max-log-retention-ms values (and the environment
 * variable, and a maximum below the retention) are refused naming the
 * option; giving up: with ap-south's replicad stopped (SIGTERM), writes in
 * us-east and eu-west are trimmed from both their logs past ap-south's
 * acknowledged vector within the maximum retention (sp_log_floor above
 * sp_peer_ack), both warn that they gave up on ap-south and say so in
 * /metrics; restarted, ap-south catches up by snapshot ("serving a
 * snapshot", snapshot chunk metrics), every write is there, `statusctl
 * verify` says converged, the give-up gauge returns to 0 and deltas flow
 * again; chunk bound: a second time away, us-east writes 40 components
 * with 50-60 KB descriptions and one entity of 1.5 MB (three 500 KB
 * fields) through sp_write; ap-south gets them all by snapshot, every
 * chunk body is at most 1 MiB (sp_repl_snapshot_chunk_max_bytes), the
 * large entity was split over chunks, and the regions converge; finally
 * every replicad log is free of sanitizer reports.
 *
 * The test process is a child subreaper (deploy_harness) so the daemons
 * are reaped here.  Test-only state lives in the one struct `g`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "deploy_harness.h"

#define PORT_SHIFT 30500
#define NREGIONS DH_NREGIONS
#define CONVERGE_MS 15000
#define MAX_RETENTION "1500"
#define CHUNK_BOUND 1048576 /* REPL_DEFAULT_MAX_BYTES: the batch bound */
#define AWAY 2              /* ap-south */

static struct {
  dh_deploy d;
  int up;
  long off[NREGIONS]; /* replicad log sizes when the current episode began */
} g;

typedef dh_out run_out;
#define run(r, ...) dh_expect_ran(r, dh_run(&g.d, r, g.d.topo, __VA_ARGS__))

static int setup(void **state) {
  (void)state;
  if (dh_deploy_init(&g.d, "sp-replicad-retention", PORT_SHIFT) != 0)
    return -1;
  if (access(g.d.statusctl, X_OK) != 0 || access(g.d.replicad, X_OK) != 0) {
    fprintf(stderr, "%s or %s is not built (make)\n", g.d.statusctl, g.d.replicad);
    return -1;
  }
  return dh_deploy_prepare(&g.d) == 0 ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  dh_deploy_down(&g.d);
  dh_kill_leftovers(&g.d);
  dh_deploy_release(&g.d);
  return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

/* The value of metric line `name` in region's /metrics (read with the
 * region's own certificate); -1 if absent. */
static long long metric(int region, const char *name) {
  char ca[PATH_MAX + 64], cert[PATH_MAX + 64], key[PATH_MAX + 64];
  snprintf(ca, sizeof ca, "%s/var/tls/ca.pem", g.d.dir);
  snprintf(cert, sizeof cert, "%s/var/tls/%s.pem", g.d.dir, dh_regions[region]);
  snprintf(key, sizeof key, "%s/var/tls/%s.key", g.d.dir, dh_regions[region]);
  dh_probe *p = malloc(sizeof *p);
  assert_non_null(p);
  dh_probe_open(p, &g.d, region, ca, cert, key);
  assert_int_equal(dh_probe_request(p, "GET", "/metrics", NULL, 0), 200);
  char pat[256];
  snprintf(pat, sizeof pat, "\n%s ", name);
  const char *at = strstr(p->body, pat);
  long long v = at ? atoll(at + strlen(pat)) : -1;
  dh_probe_close(p);
  free(p);
  return v;
}

/* A per-peer series name for peer ap-south. */
static const char *away(const char *family) {
  static char s[128];
  snprintf(s, sizeof s, "%s{peer=\"%s\"}", family, dh_regions[AWAY]);
  return s;
}

static PGconn *db(int region) {
  char ci[512];
  snprintf(ci, sizeof ci, "host=%s port=%d dbname=%s user=%s connect_timeout=5", dh_addrs[region],
           g.d.pg_port, g.d.pg_db, g.d.pg_user);
  PGconn *c = PQconnectdb(ci);
  if (PQstatus(c) != CONNECTION_OK)
    fail_msg("connect %s: %s", dh_regions[region], PQerrorMessage(c));
  return c;
}

/* The single bigint query q returns in region (NULL reads as -1). */
static long long sql_int(int region, const char *q) {
  PGconn *c = db(region);
  PGresult *res = PQexec(c, q);
  if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
    fail_msg("%s in %s: %s", q, dh_regions[region], PQerrorMessage(c));
  long long v = PQgetisnull(res, 0, 0) ? -1 : atoll(PQgetvalue(res, 0, 0));
  PQclear(res);
  PQfinish(c);
  return v;
}

static void wait_sql(int region, const char *q, long long want, long ms) {
  long long end = dh_now_ms() + ms, got;
  while ((got = sql_int(region, q)) != want && dh_now_ms() < end)
    dh_sleep_ms(100);
  if (got != want)
    fail_msg("%s in %s: %lld, wanted %lld", q, dh_regions[region], got, want);
}

static void log_path(int region, char *out, size_t len) {
  snprintf(out, len, "%s/%s/log/statusd-replicad.log", g.d.state, dh_regions[region]);
}

/* Marks where every replicad log ends now. */
static void mark_logs(void) {
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128];
    struct stat st;
    log_path(i, path, sizeof path);
    g.off[i] = stat(path, &st) == 0 ? (long)st.st_size : 0;
  }
}

/* 1 when region's replicad logged, since mark_logs, a line holding a and b. */
static int log_has(int region, const char *a, const char *b) {
  char path[PATH_MAX + 128], line[16384];
  log_path(region, path, sizeof path);
  FILE *f = fopen(path, "r");
  int found = 0;
  if (f && fseek(f, g.off[region], SEEK_SET) == 0)
    while (!found && fgets(line, sizeof line, f))
      found = strstr(line, a) && strstr(line, b);
  if (f)
    fclose(f);
  return found;
}

/* SIGTERMs region's replicad (PID file) and waits for a clean exit. */
static void stop_replicad(int region) {
  pid_t pid = dh_pidfile(&g.d, dh_regions[region], "statusd-replicad");
  assert_true(dh_alive(pid));
  assert_int_equal(kill(pid, SIGTERM), 0);
  int st = 0;
  pid_t w = 0;
  long long end = dh_now_ms() + 15000;
  while ((w = waitpid(pid, &st, WNOHANG)) == 0 && dh_now_ms() < end)
    dh_sleep_ms(20);
  assert_int_equal(w, pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

static void up_again(const char *what) {
  run_out *r = malloc(sizeof *r);
  assert_non_null(r);
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, what);
  free(r);
}

static void new_component(int region, const char *name, const char *status, char *id,
                          size_t len) {
  char path[256], js[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.d.page);
  snprintf(js, sizeof js, "{\"component\":{\"name\":\"%s\",\"status\":\"%s\"}}", name, status);
  json_t *a = dh_write_ok(&g.d, region, "POST", path, js);
  snprintf(id, len, "%s", json_string_value(json_object_get(a, "id")));
  json_decref(a);
}

/* Waits until `region` trimmed rows of `origin` that ap-south had not
 * acknowledged: its floor is above ap-south's persisted ack. */
static void wait_trimmed_past_away(int region, int origin) {
  char q[512];
  snprintf(q, sizeof q,
           "SELECT count(*) FROM sp_log_floor f LEFT JOIN sp_peer_ack a "
           "ON a.peer = %d AND a.origin = f.origin "
           "WHERE f.origin = %d AND f.seq > coalesce(a.seq, 0)",
           AWAY, origin);
  wait_sql(region, q, 1, 10000);
}

/* Both senders warned and count ap-south as given up on; not the others. */
static void expect_given_up(void) {
  for (int i = 0; i < 2; i++) {
    long long end = dh_now_ms() + 3000;
    while (!log_has(i, "\"giving up on a peer", "\"peer\":\"ap-south\"") && dh_now_ms() < end)
      dh_sleep_ms(100);
    if (!log_has(i, "\"giving up on a peer", "\"peer\":\"ap-south\""))
      fail_msg("%s did not warn that it gave up on ap-south", dh_regions[i]);
    assert_true(metric(i, away("sp_repl_peer_given_up_total")) >= 1);
    assert_int_equal(metric(i, away("sp_repl_peer_given_up")), 1);
    char other[128];
    snprintf(other, sizeof other, "sp_repl_peer_given_up{peer=\"%s\"}", dh_regions[1 - i]);
    assert_int_equal(metric(i, other), 0);
  }
}

/* After ap-south is back: its give-up gauge returns to 0 in both. */
static void expect_back(void) {
  for (int i = 0; i < 2; i++) {
    long long end = dh_now_ms() + 5000;
    while (metric(i, away("sp_repl_peer_given_up")) != 0 && dh_now_ms() < end)
      dh_sleep_ms(200);
    assert_int_equal(metric(i, away("sp_repl_peer_given_up")), 0);
    assert_true(log_has(i, "\"peer given up on is back", "\"peer\":\"ap-south\""));
  }
}

/* ---- tests, in order -------------------------------------------------------------- */

/* Runs the replicad with extra arguments and environment: it must exit 2
 * saying `want`. */
static void expect_refused(const char *env, const char *args, const char *want) {
  char cmd[PATH_MAX * 3], out[4096];
  snprintf(cmd, sizeof cmd, "%s timeout 20 '%s' --topology '%s' --region us-east %s 2>&1", env,
           g.d.replicad, g.d.topo, args);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  int st = pclose(f);
  assert_true(WIFEXITED(st));
  if (WEXITSTATUS(st) != 2 || strstr(out, want) == NULL)
    fail_msg("%s %s: exit %d, output \"%s\" (wanted \"%s\")", env, args, WEXITSTATUS(st), out,
             want);
}

static void test_bad_max_retention(void **state) {
  (void)state;
  static const char *const bad[] = {"abc", "-1", "12x", "999999999999999999999", " 5"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char args[128], want[128];
    snprintf(args, sizeof args, "--max-log-retention-ms '%s'", bad[i]);
    snprintf(want, sizeof want, "bad max log retention \"%s\" (--max-log-retention-ms)", bad[i]);
    expect_refused("", args, want);
  }
  expect_refused("SP_REPL_MAX_LOG_RETENTION_MS=soon", "",
                 "bad max log retention \"soon\" (SP_REPL_MAX_LOG_RETENTION_MS)");
  expect_refused("", "--log-retention-ms 5000 --max-log-retention-ms 1000",
                 "bad max log retention 1000 (--max-log-retention-ms): must be >= the log "
                 "retention, 5000 (--log-retention-ms)");
  expect_refused("SP_REPL_LOG_RETENTION_MS=7200000", "--max-log-retention-ms 3600000",
                 "must be >= the log retention, 7200000 (SP_REPL_LOG_RETENTION_MS)");
  expect_refused("", "--log-retention-ms x1", "bad log retention \"x1\" (--log-retention-ms)");
}

static void test_up(void **state) {
  (void)state;
  assert_int_equal(setenv("SP_REPL_LOG_RETENTION_MS", "0", 1), 0);
  assert_int_equal(unsetenv("SP_REPL_MAX_LOG_RETENTION_MS"), 0);
  run_out *r = malloc(sizeof *r);
  assert_non_null(r);
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, "up");
  run(r, "endpoints", "--json", (const char *)NULL);
  dh_expect(r, 0, "endpoints");
  json_t *e = json_loads(r->out, 0, NULL);
  assert_non_null(e);
  snprintf(g.d.key, sizeof g.d.key, "%s", json_string_value(json_object_get(e, "admin_key")));
  snprintf(g.d.page, sizeof g.d.page, "%s", json_string_value(json_object_get(e, "demo_page_id")));
  json_decref(e);
  free(r);
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
  /* converged, so nothing is unacknowledged: restart every replicad with
   * the short maximum (statusctl up starts the stopped ones with our
   * environment) */
  assert_int_equal(setenv("SP_REPL_MAX_LOG_RETENTION_MS", MAX_RETENTION, 1), 0);
  for (int i = 0; i < NREGIONS; i++)
    stop_replicad(i);
  up_again("up with the short maximum retention");
  dh_wait_converged(&g.d, "after the restart", CONVERGE_MS);
  g.up = 1;
}

/* A region away past the maximum retention is given up on, and catches up
 * by snapshot when it returns. */
static void test_give_up_and_snapshot(void **state) {
  (void)state;
  assert_true(g.up);
  long long chunks0 = metric(0, away("sp_repl_snapshot_chunks_sent_total")) +
                      metric(1, away("sp_repl_snapshot_chunks_sent_total"));
  mark_logs();
  stop_replicad(AWAY);
  char a[64], b[64];
  new_component(0, "away: us-east", "partial_outage", a, sizeof a);
  new_component(1, "away: eu-west", "major_outage", b, sizeof b);
  dh_wait_public(&g.d, 1, a, "partial_outage", 5000);
  dh_wait_public(&g.d, 0, b, "major_outage", 5000);
  /* both logs lose rows of both origins that ap-south never acknowledged */
  for (int i = 0; i < 2; i++)
    for (int o = 0; o < 2; o++)
      wait_trimmed_past_away(i, o);
  expect_given_up();
  char *s = dh_public_status(&g.d, AWAY, a);
  assert_non_null(s);
  assert_string_equal(s, ""); /* not there: only a snapshot can bring it */
  free(s);

  up_again("ap-south back");
  dh_wait_public(&g.d, AWAY, a, "partial_outage", CONVERGE_MS);
  dh_wait_public(&g.d, AWAY, b, "major_outage", CONVERGE_MS);
  dh_wait_converged(&g.d, "after the snapshot", CONVERGE_MS);
  assert_true(log_has(0, "\"serving a snapshot\"", "\"peer\":\"ap-south\"") ||
              log_has(1, "\"serving a snapshot\"", "\"peer\":\"ap-south\""));
  assert_true(metric(0, away("sp_repl_snapshot_chunks_sent_total")) +
                  metric(1, away("sp_repl_snapshot_chunks_sent_total")) >
              chunks0);
  assert_true(metric(AWAY, "sp_repl_snapshot_chunks_applied_total{peer=\"us-east\"}") > 0 ||
              metric(AWAY, "sp_repl_snapshot_chunks_applied_total{peer=\"eu-west\"}") > 0);
  /* ap-south adopted the senders' vectors */
  for (int o = 0; o < 2; o++) {
    char q[128];
    snprintf(q, sizeof q, "SELECT seq FROM sp_vclock WHERE origin = %d", o);
    wait_sql(AWAY, q, sql_int(o, q), 5000);
  }
  expect_back();
  /* and deltas flow again, both ways */
  char c[64], d[64];
  new_component(AWAY, "back: ap-south", "operational", c, sizeof c);
  new_component(0, "back: us-east", "degraded_performance", d, sizeof d);
  dh_wait_public(&g.d, 0, c, "operational", 5000);
  dh_wait_public(&g.d, AWAY, d, "degraded_performance", 5000);
  dh_wait_converged(&g.d, "after new writes", CONVERGE_MS);
}

/* Writes, in us-east through sp_write, 40 components of 50-60 KB and one
 * entity of three 500 KB fields on page "big-page". */
static void write_large_entities(void) {
  PGconn *c = db(0);
  for (int i = 0; i <= 40; i++) {
    char q[1024];
    if (i < 40)
      snprintf(q, sizeof q,
               "SELECT sp_write(0::smallint, (extract(epoch FROM clock_timestamp()) * 1000)"
               "::bigint, jsonb_build_array("
               "jsonb_build_object('op', 'create', 'p', 'big-page', 't', 'component', "
               "'i', 'big-%02d'), "
               "jsonb_build_object('op', 'set', 'p', 'big-page', 't', 'component', "
               "'i', 'big-%02d', 'f', 'name', 'v', 'large %d'), "
               "jsonb_build_object('op', 'set', 'p', 'big-page', 't', 'component', "
               "'i', 'big-%02d', 'f', 'description', 'v', "
               "left(repeat(md5('%d'), 2000), %d))), NULL)",
               i, i, i, i, i, 50000 + 250 * i);
    else
      snprintf(q, sizeof q,
               "SELECT sp_write(0::smallint, (extract(epoch FROM clock_timestamp()) * 1000)"
               "::bigint, jsonb_build_array("
               "jsonb_build_object('op', 'create', 'p', 'big-page', 't', 'component', "
               "'i', 'huge'), "
               "jsonb_build_object('op', 'set', 'p', 'big-page', 't', 'component', "
               "'i', 'huge', 'f', 'description', 'v', repeat(md5('a'), 15625)), "
               "jsonb_build_object('op', 'set', 'p', 'big-page', 't', 'component', "
               "'i', 'huge', 'f', 'blob_b', 'v', repeat(md5('b'), 15625)), "
               "jsonb_build_object('op', 'set', 'p', 'big-page', 't', 'component', "
               "'i', 'huge', 'f', 'blob_c', 'v', repeat(md5('c'), 15625))), NULL)");
    PGresult *res = PQexec(c, q);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
      fail_msg("%s: %s", q, PQerrorMessage(c));
    PQclear(res);
  }
  PQfinish(c);
}

#define BIG_STATE                                                                               \
  "SELECT count(*) * 1000000000 + sum(octet_length(coalesce(value, ''))) FROM sp_field "      \
  "WHERE page_id = 'big-page'"

/* Snapshot chunks stay within the batch bound whatever the entities hold. */
static void test_snapshot_chunk_bound(void **state) {
  (void)state;
  assert_true(g.up);
  long long chunks0 = metric(0, away("sp_repl_snapshot_chunks_sent_total")) +
                      metric(1, away("sp_repl_snapshot_chunks_sent_total"));
  mark_logs();
  stop_replicad(AWAY);
  write_large_entities();
  long long want = sql_int(0, BIG_STATE);
  assert_int_equal(want / 1000000000, 83); /* 40 * 2 + 3 fields */
  assert_true(want % 1000000000 > 3600000); /* 3.7 MB */
  wait_sql(1, BIG_STATE, want, CONVERGE_MS);
  wait_trimmed_past_away(0, 0);
  wait_trimmed_past_away(1, 0);
  expect_given_up();
  assert_int_equal(sql_int(AWAY, "SELECT count(*) FROM sp_field WHERE page_id = 'big-page'"), 0);

  up_again("ap-south back again");
  wait_sql(AWAY, BIG_STATE, want, 30000);
  dh_wait_converged(&g.d, "after the large snapshot", CONVERGE_MS);
  long long served = 0, split = 0;
  for (int i = 0; i < 2; i++) {
    long long mx = metric(i, away("sp_repl_snapshot_chunk_max_bytes"));
    assert_true(mx >= 0);
    if (mx > CHUNK_BOUND)
      fail_msg("%s sent ap-south a snapshot chunk of %lld bytes (bound %d)", dh_regions[i], mx,
               CHUNK_BOUND);
    served += mx > 0;
    split += metric(i, away("sp_repl_snapshot_entities_split_total"));
    assert_int_equal(metric(i, away("sp_repl_snapshot_rows_skipped_total")), 0);
  }
  assert_true(served >= 1);
  assert_true(split >= 1); /* the 1.5 MB entity went over several chunks */
  /* 3.7 MB in chunks of at most 1 MiB: at least four chunks from a sender */
  assert_true(metric(0, away("sp_repl_snapshot_chunks_sent_total")) +
                  metric(1, away("sp_repl_snapshot_chunks_sent_total")) >=
              chunks0 + 4);
  assert_true(log_has(0, "\"snapshot entity larger than a chunk", "\"id\":\"huge\"") ||
              log_has(1, "\"snapshot entity larger than a chunk", "\"id\":\"huge\""));
  expect_back();
}

/* Every replicad log (after a graceful stop) is free of sanitizer reports. */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  run_out *r = malloc(sizeof *r);
  assert_non_null(r);
  run(r, "down", (const char *)NULL);
  dh_expect(r, 0, "down");
  free(r);
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128], line[16384];
    log_path(i, path, sizeof path);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int listening = 0, stopping = 0;
    while (fgets(line, sizeof line, f)) {
      if (strstr(line, "Sanitizer") || strstr(line, "runtime error:"))
        fail_msg("%s: %s", path, line);
      listening += strstr(line, "\"msg\":\"listening\"") != NULL;
      stopping += strstr(line, "\"msg\":\"stopping\"") != NULL;
    }
    fclose(f);
    assert_true(listening >= 2);
    assert_int_equal(stopping, listening);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_max_retention),    cmocka_unit_test(test_up),
      cmocka_unit_test(test_give_up_and_snapshot), cmocka_unit_test(test_snapshot_chunk_bound),
      cmocka_unit_test(test_stop_logs_clean),
  };
  return cmocka_run_group_tests_name("replicad_retention", tests, setup, teardown);
}
