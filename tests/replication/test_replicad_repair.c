/* statusd-replicad's repair paths against real processes: a three-region
 * deployment made by statusctl as in test_replicad.c (ports moved up by
 * 24000 so neither that test (+21000), test_statusctl (+20000) nor `make
 * run` is touched), with SP_REPL_LOG_RETENTION_MS=0 so the change log is
 * trimmed as soon as every peer has acknowledged.
 *
 * In order: a bad retention is refused; relay: a write that reached only
 * eu-west before us-east's daemon stopped (ap-south's was stopped first)
 * reaches ap-south through eu-west, which logs that it switched relaying
 * on; acks: every region persists each peer's acknowledged vector in
 * sp_peer_ack; trimming: with every peer up the logs empty out and
 * sp_log_floor follows, while a change a stopped peer has not acknowledged
 * stays in every log until that peer is back, and then goes; snapshot:
 * a region whose missing rows were trimmed catches up by snapshot, adopts
 * the vectors, and deltas flow again; /metrics counts relayed changes,
 * relay switches, trimmed rows, snapshot chunks sent and applied, reconnects
 * and the log floor.
 *
 * Helpers (process running, HTTP, convergence) are copied from
 * test_replicad.c; the test process is a child subreaper so the daemons
 * are reaped here.  Test-only state lives in the one struct `g`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "deploy_harness.h"
#include "sp_h2.h"
#include "sp_tls.h"

#define PORT_SHIFT 24000
#define NREGIONS DH_NREGIONS
#define CONVERGE_MS 10000

static struct {
  dh_deploy d;  /* temp dir, topology copy, ports, database, API key and page */
  pid_t manual; /* a replicad started by the test itself */
  int up;
} g;

/* statusctl --topology <copy> args... (NULL-terminated); the test fails
 * when it cannot run or times out. */
typedef dh_out run_out;
#define run(r, ...) dh_expect_ran(r, dh_run(&g.d, r, g.d.topo, __VA_ARGS__))

/* ---- setup ------------------------------------------------------------------ */

static int setup(void **state) {
  (void)state;
  if (dh_deploy_init(&g.d, "sp-replicad-repair", PORT_SHIFT) != 0)
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
  if (g.manual > 0 && dh_alive(g.manual)) {
    kill(g.manual, SIGKILL);
    waitpid(g.manual, NULL, 0);
  }
  dh_kill_leftovers(&g.d);
  dh_deploy_release(&g.d);
  return 0;
}



/* The value of metric line `name` (e.g. `sp_repl_x_total{peer="y"}`) in
 * region's /metrics, read with the region's own certificate; -1 if absent. */
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

/* ---- helpers for this file ---------------------------------------------------- */

/* One query in region `region`'s database; the result (PQclear) or a test
 * failure. */
static PGresult *sql(int region, const char *q) {
  char ci[512];
  snprintf(ci, sizeof ci, "host=%s port=%d dbname=%s user=%s connect_timeout=5", dh_addrs[region],
           g.d.pg_port, g.d.pg_db, g.d.pg_user);
  PGconn *db = PQconnectdb(ci);
  if (PQstatus(db) != CONNECTION_OK)
    fail_msg("connect %s: %s", dh_regions[region], PQerrorMessage(db));
  PGresult *res = PQexec(db, q);
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("%s in %s: %s", q, dh_regions[region], PQerrorMessage(db));
  PQfinish(db);
  return res;
}

/* The single bigint a query returns (NULL reads as -1). */
static long long sql_int(int region, const char *q) {
  PGresult *res = sql(region, q);
  assert_int_equal(PQntuples(res), 1);
  long long v = PQgetisnull(res, 0, 0) ? -1 : atoll(PQgetvalue(res, 0, 0));
  PQclear(res);
  return v;
}

/* Waits up to ms for query q in region to return want. */
static void wait_sql(int region, const char *q, long long want, long ms) {
  long long end = dh_now_ms() + ms, got;
  while ((got = sql_int(region, q)) != want && dh_now_ms() < end)
    dh_sleep_ms(100);
  if (got != want)
    fail_msg("%s in %s: %lld, wanted %lld", q, dh_regions[region], got, want);
}

/* SIGTERMs the replicad with PID pid and waits for a clean exit. */
static void stop_pid(pid_t pid) {
  assert_true(dh_alive(pid));
  assert_int_equal(kill(pid, SIGTERM), 0);
  int st = 0;
  long long end = dh_now_ms() + 15000;
  pid_t w = 0;
  while ((w = waitpid(pid, &st, WNOHANG)) == 0 && dh_now_ms() < end)
    dh_sleep_ms(20);
  assert_int_equal(w, pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

static void stop_replicad(int region) {
  stop_pid(dh_pidfile(&g.d, dh_regions[region], "statusd-replicad"));
}

/* Starts region's replicad from the test (statusctl up would also start the
 * others that are down), logging to <dir>/<region>-manual.log. */
static pid_t start_replicad(int region) {
  char log[PATH_MAX + 64];
  snprintf(log, sizeof log, "%s/%s-manual.log", g.d.dir, dh_regions[region]);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(g.d.replicad, g.d.replicad, "--topology", g.d.topo, "--region", dh_regions[region],
          (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* 1 when the log of region's statusctl-started replicad has a line holding
 * all of a, b and c. */
static int log_has(int region, const char *a, const char *b, const char *c) {
  char path[PATH_MAX + 128], line[8192];
  snprintf(path, sizeof path, "%s/%s/log/statusd-replicad.log", g.d.state, dh_regions[region]);
  FILE *f = fopen(path, "r");
  int found = 0;
  while (f && !found && fgets(line, sizeof line, f))
    found = strstr(line, a) && strstr(line, b) && strstr(line, c);
  if (f)
    fclose(f);
  return found;
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

/* ---- tests, in order -------------------------------------------------------- */

static void test_bad_retention(void **state) {
  (void)state;
  char cmd[PATH_MAX * 3], out[4096];
  static const char *const bad[] = {"abc", "-1", "12x", "999999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(cmd, sizeof cmd, "timeout 20 '%s' --topology '%s' --region us-east "
             "--log-retention-ms '%s' 2>&1", g.d.replicad, g.d.topo, bad[i]);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 2);
    assert_non_null(strstr(out, "bad log retention"));
  }
}

static void test_up(void **state) {
  (void)state;
  /* inherited by the daemons statusctl starts */
  assert_int_equal(setenv("SP_REPL_LOG_RETENTION_MS", "0", 1), 0);
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, "up");
  run(r, "endpoints", "--json", (const char *)NULL);
  dh_expect(r, 0, "endpoints");
  json_t *e = json_loads(r->out, 0, NULL);
  assert_non_null(e);
  snprintf(g.d.key, sizeof g.d.key, "%s", json_string_value(json_object_get(e, "admin_key")));
  snprintf(g.d.page, sizeof g.d.page, "%s", json_string_value(json_object_get(e, "demo_page_id")));
  json_decref(e);
  g.up = 1;
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
  free(r);
}

/* A write whose origin died after it reached eu-west only reaches ap-south
 * through eu-west. */
static void test_relay(void **state) {
  (void)state;
  assert_true(g.up);
  stop_replicad(2); /* ap-south: us-east's fan-out cannot finish */
  char id[64];
  new_component(0, "relayed", "under_maintenance", id, sizeof id);
  dh_wait_public(&g.d, 1, id, "under_maintenance", 5000);
  stop_replicad(0); /* the origin is gone before reaching ap-south */
  char *s = dh_public_status(&g.d, 2, id);
  assert_non_null(s);
  assert_string_equal(s, ""); /* not there yet: only relaying can bring it */
  free(s);
  g.manual = start_replicad(2);
  dh_wait_public(&g.d, 2, id, "under_maintenance", 10000);
  assert_true(log_has(1, "\"relay on\"", "\"peer\":\"ap-south\"", "\"origin\":\"us-east\""));
  stop_pid(g.manual);
  g.manual = 0;
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL); /* us-east and ap-south again */
  dh_expect(r, 0, "up again");
  free(r);
  dh_wait_converged(&g.d, "after relay", CONVERGE_MS);
}

/* Acks are persisted per peer and the logs are trimmed under them only. */
static void test_acks_and_trim(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  new_component(0, "trim me", "operational", id, sizeof id);
  for (int i = 1; i < NREGIONS; i++)
    dh_wait_public(&g.d, i, id, "operational", 5000);
  /* every region: an ack row per (peer, origin), both peers at its vector;
   * then (retention 0) an empty change log and floors at the vector */
  for (int i = 0; i < NREGIONS; i++) {
    wait_sql(i, "SELECT count(*) FROM sp_peer_ack", 2 * NREGIONS, 5000);
    wait_sql(i,
             "SELECT count(*) FROM sp_peer_ack a JOIN sp_vclock v USING (origin) "
             "WHERE a.seq < v.seq",
             0, 5000);
    wait_sql(i, "SELECT count(*) FROM sp_change_log", 0, 5000);
    assert_int_equal(sql_int(i, "SELECT count(*) FROM sp_vclock v LEFT JOIN sp_log_floor f "
                                "USING (origin) WHERE v.seq > 0 AND f.seq IS DISTINCT FROM v.seq"),
                     0);
  }
  /* a change ap-south has not acknowledged stays in every log */
  stop_replicad(2);
  new_component(0, "kept for ap-south", "degraded_performance", id, sizeof id);
  dh_wait_public(&g.d, 1, id, "degraded_performance", 5000);
  long long seq = sql_int(0, "SELECT seq FROM sp_vclock WHERE origin = 0");
  assert_true(seq > 0);
  dh_sleep_ms(2500); /* two trim periods */
  char q[256];
  snprintf(q, sizeof q, "SELECT count(*) FROM sp_change_log WHERE origin = 0 AND seq = %lld", seq);
  assert_int_equal(sql_int(0, q), 1);
  assert_int_equal(sql_int(1, q), 1);
  /* ap-south back: it gets the change, acks it, and the logs empty out */
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, "up again");
  free(r);
  dh_wait_public(&g.d, 2, id, "degraded_performance", 8000);
  for (int i = 0; i < NREGIONS; i++)
    wait_sql(i, "SELECT count(*) FROM sp_change_log", 0, 5000);
  assert_true(log_has(0, "\"change log trimmed\"", "\"origin\":0", "\"rows\""));
  dh_wait_converged(&g.d, "after trimming", CONVERGE_MS);
}

/* A region that needs rows the others no longer have catches up by
 * snapshot.  Retention 0 trims only what every peer acknowledged, so the
 * test stands in for "past retention" by recording, with ap-south stopped,
 * that ap-south acknowledged everything (as an operator giving up on a peer
 * would): the daemons then trim rows ap-south never got.  The daemons
 * giving up by themselves (--max-log-retention-ms) is
 * test_replicad_retention.c. */
static void test_snapshot_resync(void **state) {
  (void)state;
  assert_true(g.up);
  stop_replicad(2);
  char a[64], b[64];
  new_component(0, "snap from us-east", "partial_outage", a, sizeof a);
  new_component(1, "snap from eu-west", "major_outage", b, sizeof b);
  dh_wait_public(&g.d, 1, a, "partial_outage", 5000);
  dh_wait_public(&g.d, 0, b, "major_outage", 5000);
  for (int i = 0; i < 2; i++) {
    PQclear(sql(i, "UPDATE sp_peer_ack AS a SET seq = v.seq FROM sp_vclock v "
                   "WHERE a.peer = 2 AND a.origin = v.origin RETURNING a.seq"));
    wait_sql(i, "SELECT count(*) FROM sp_change_log WHERE origin IN (0, 1)", 0, 5000);
  }
  char *s = dh_public_status(&g.d, 2, a);
  assert_non_null(s);
  assert_string_equal(s, "");
  free(s);
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, "up again");
  free(r);
  dh_wait_converged(&g.d, "after snapshot", CONVERGE_MS);
  dh_wait_public(&g.d, 2, a, "partial_outage", 8000);
  dh_wait_public(&g.d, 2, b, "major_outage", 8000);
  /* ap-south adopted the vectors, and its floor says it lacks those rows */
  for (int o = 0; o < 2; o++) {
    char q[256];
    snprintf(q, sizeof q, "SELECT seq FROM sp_vclock WHERE origin = %d", o);
    long long want = sql_int(o, q);
    wait_sql(2, q, want, 5000);
  }
  assert_true(sql_int(2, "SELECT count(*) FROM sp_log_floor WHERE origin IN (0, 1)") >= 1);
  assert_true(log_has(0, "\"serving a snapshot\"", "\"peer\":\"ap-south\"", "") ||
              log_has(1, "\"serving a snapshot\"", "\"peer\":\"ap-south\"", ""));
  /* and deltas flow again afterwards, both ways */
  new_component(2, "after snapshot", "operational", a, sizeof a);
  dh_wait_public(&g.d, 0, a, "operational", 5000);
  new_component(0, "after snapshot 2", "degraded_performance", b, sizeof b);
  dh_wait_public(&g.d, 2, b, "degraded_performance", 5000);
  dh_wait_converged(&g.d, "after the snapshot, new writes", CONVERGE_MS);
  /* the metrics say what happened */
  assert_true(metric(1, "sp_repl_relayed_changes_total{peer=\"ap-south\"}") > 0);
  assert_true(metric(1, "sp_repl_relay_switches_total{peer=\"ap-south\"}") > 0);
  assert_true(metric(1, "sp_repl_trimmed_rows_total") > 0);
  assert_true(metric(0, "sp_repl_snapshot_chunks_sent_total{peer=\"ap-south\"}") > 0 ||
              metric(1, "sp_repl_snapshot_chunks_sent_total{peer=\"ap-south\"}") > 0);
  assert_true(metric(2, "sp_repl_snapshot_chunks_applied_total{peer=\"us-east\"}") > 0 ||
              metric(2, "sp_repl_snapshot_chunks_applied_total{peer=\"eu-west\"}") > 0);
  assert_true(metric(2, "sp_repl_reconnects_total{peer=\"us-east\"}") >= 1);
  assert_true(metric(2, "sp_repl_log_floor{origin=\"us-east\"}") > 0);
}

/* Every replicad log (after a graceful stop) is free of sanitizer reports. */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  run_out *r = malloc(sizeof *r);
  run(r, "down", (const char *)NULL);
  dh_expect(r, 0, "down");
  free(r);
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/%s/log/statusd-replicad.log", g.d.state, dh_regions[i]);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[8192];
    int listening = 0, stopping = 0;
    while (fgets(line, sizeof line, f)) {
      if (strstr(line, "Sanitizer") || strstr(line, "runtime error:"))
        fail_msg("%s: %s", path, line);
      listening += strstr(line, "\"msg\":\"listening\"") != NULL;
      stopping += strstr(line, "\"msg\":\"stopping\"") != NULL;
    }
    fclose(f);
    assert_true(listening >= 1);
    assert_int_equal(stopping, listening);
  }
  /* and the one the test started itself */
  char path[PATH_MAX + 64], line[8192];
  snprintf(path, sizeof path, "%s/ap-south-manual.log", g.d.dir);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  while (fgets(line, sizeof line, f))
    if (strstr(line, "Sanitizer") || strstr(line, "runtime error:"))
      fail_msg("%s: %s", path, line);
  fclose(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_retention), cmocka_unit_test(test_up),
      cmocka_unit_test(test_relay),         cmocka_unit_test(test_acks_and_trim),
      cmocka_unit_test(test_snapshot_resync), cmocka_unit_test(test_stop_logs_clean),
  };
  return cmocka_run_group_tests_name("replicad_repair", tests, setup, teardown);
}
