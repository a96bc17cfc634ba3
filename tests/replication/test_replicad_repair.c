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
 * The helpers the replication suites share are in deploy_harness; the test
 * process is a child subreaper so the daemons are reaped here.  Test-only
 * state lives in the one struct `g`.
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

/* ---- setup ------------------------------------------------------------------ */

static int setup(void **state) {
  (void)state;
  return dh_deploy_setup(&g.d, "sp-replicad-repair", PORT_SHIFT);
}

static int teardown(void **state) {
  (void)state;
  if (g.manual > 0 && dh_alive(g.manual)) {
    kill(g.manual, SIGKILL);
    waitpid(g.manual, NULL, 0);
  }
  dh_deploy_teardown(&g.d);
  return 0;
}

/* ---- helpers for this file ---------------------------------------------------- */

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

/* ---- tests, in order -------------------------------------------------------- */

static void test_bad_retention(void **state) {
  (void)state;
  char args[PATH_MAX + 128], out[4096];
  static const char *const bad[] = {"abc", "-1", "12x", "999999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    snprintf(args, sizeof args, "--topology '%s' --region us-east --log-retention-ms '%s'",
             g.d.topo, bad[i]);
    assert_int_equal(dh_replicad_cmd(&g.d, "", args, out, sizeof out), 2);
    assert_non_null(strstr(out, "bad log retention"));
  }
}

static void test_up(void **state) {
  (void)state;
  /* inherited by the daemons statusctl starts */
  assert_int_equal(setenv("SP_REPL_LOG_RETENTION_MS", "0", 1), 0);
  dh_up(&g.d);
  g.up = 1;
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
}

/* A write whose origin died after it reached eu-west only reaches ap-south
 * through eu-west. */
static void test_relay(void **state) {
  (void)state;
  assert_true(g.up);
  dh_stop(&g.d, 2, "statusd-replicad"); /* ap-south: us-east's fan-out cannot finish */
  char id[64];
  dh_new_component(&g.d, 0, "relayed", "under_maintenance", id, sizeof id);
  dh_wait_public(&g.d, 1, id, "under_maintenance", 5000);
  dh_stop(&g.d, 0, "statusd-replicad"); /* the origin is gone before reaching ap-south */
  dh_expect_public(&g.d, 2, id, "");    /* not there yet: only relaying can bring it */
  g.manual = start_replicad(2);
  dh_wait_public(&g.d, 2, id, "under_maintenance", 10000);
  assert_true(
      dh_log_has(&g.d, 1, 0, "\"relay on\"", "\"peer\":\"ap-south\"", "\"origin\":\"us-east\""));
  dh_stop_pid(g.manual);
  g.manual = 0;
  dh_ctl_ok(&g.d, "up", "up again"); /* us-east and ap-south again */
  dh_wait_converged(&g.d, "after relay", CONVERGE_MS);
}

/* Acks are persisted per peer and the logs are trimmed under them only. */
static void test_acks_and_trim(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  dh_new_component(&g.d, 0, "trim me", "operational", id, sizeof id);
  for (int i = 1; i < NREGIONS; i++)
    dh_wait_public(&g.d, i, id, "operational", 5000);
  /* every region: an ack row per (peer, origin), both peers at its vector;
   * then (retention 0) an empty change log and floors at the vector */
  for (int i = 0; i < NREGIONS; i++) {
    dh_wait_sql(&g.d, i, "SELECT count(*) FROM sp_peer_ack", 2 * NREGIONS, 5000);
    dh_wait_sql(&g.d, i,
                "SELECT count(*) FROM sp_peer_ack a JOIN sp_vclock v USING (origin) "
                "WHERE a.seq < v.seq",
                0, 5000);
    dh_wait_sql(&g.d, i, "SELECT count(*) FROM sp_change_log", 0, 5000);
    assert_int_equal(dh_sql_int(&g.d, i,
                                "SELECT count(*) FROM sp_vclock v LEFT JOIN sp_log_floor f "
                                "USING (origin) WHERE v.seq > 0 AND f.seq IS DISTINCT FROM v.seq"),
                     0);
  }
  /* a change ap-south has not acknowledged stays in every log */
  dh_stop(&g.d, 2, "statusd-replicad");
  dh_new_component(&g.d, 0, "kept for ap-south", "degraded_performance", id, sizeof id);
  dh_wait_public(&g.d, 1, id, "degraded_performance", 5000);
  long long seq = dh_sql_int(&g.d, 0, "SELECT seq FROM sp_vclock WHERE origin = 0");
  assert_true(seq > 0);
  dh_sleep_ms(2500); /* two trim periods */
  char q[256];
  snprintf(q, sizeof q, "SELECT count(*) FROM sp_change_log WHERE origin = 0 AND seq = %lld", seq);
  assert_int_equal(dh_sql_int(&g.d, 0, q), 1);
  assert_int_equal(dh_sql_int(&g.d, 1, q), 1);
  /* ap-south back: it gets the change, acks it, and the logs empty out */
  dh_ctl_ok(&g.d, "up", "up again");
  dh_wait_public(&g.d, 2, id, "degraded_performance", 8000);
  for (int i = 0; i < NREGIONS; i++)
    dh_wait_sql(&g.d, i, "SELECT count(*) FROM sp_change_log", 0, 5000);
  assert_true(dh_log_has(&g.d, 0, 0, "\"change log trimmed\"", "\"origin\":0", "\"rows\""));
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
  dh_stop(&g.d, 2, "statusd-replicad");
  char a[64], b[64];
  dh_new_component(&g.d, 0, "snap from us-east", "partial_outage", a, sizeof a);
  dh_new_component(&g.d, 1, "snap from eu-west", "major_outage", b, sizeof b);
  dh_wait_public(&g.d, 1, a, "partial_outage", 5000);
  dh_wait_public(&g.d, 0, b, "major_outage", 5000);
  for (int i = 0; i < 2; i++) {
    PQclear(dh_sql(&g.d, i,
                   "UPDATE sp_peer_ack AS a SET seq = v.seq FROM sp_vclock v "
                   "WHERE a.peer = 2 AND a.origin = v.origin RETURNING a.seq"));
    dh_wait_sql(&g.d, i, "SELECT count(*) FROM sp_change_log WHERE origin IN (0, 1)", 0, 5000);
  }
  dh_expect_public(&g.d, 2, a, "");
  dh_ctl_ok(&g.d, "up", "up again");
  dh_wait_converged(&g.d, "after snapshot", CONVERGE_MS);
  dh_wait_public(&g.d, 2, a, "partial_outage", 8000);
  dh_wait_public(&g.d, 2, b, "major_outage", 8000);
  /* ap-south adopted the vectors, and its floor says it lacks those rows */
  for (int o = 0; o < 2; o++) {
    char q[256];
    snprintf(q, sizeof q, "SELECT seq FROM sp_vclock WHERE origin = %d", o);
    long long want = dh_sql_int(&g.d, o, q);
    dh_wait_sql(&g.d, 2, q, want, 5000);
  }
  assert_true(dh_sql_int(&g.d, 2, "SELECT count(*) FROM sp_log_floor WHERE origin IN (0, 1)") >= 1);
  assert_true(dh_log_has(&g.d, 0, 0, "\"serving a snapshot\"", "\"peer\":\"ap-south\"", NULL) ||
              dh_log_has(&g.d, 1, 0, "\"serving a snapshot\"", "\"peer\":\"ap-south\"", NULL));
  /* and deltas flow again afterwards, both ways */
  dh_new_component(&g.d, 2, "after snapshot", "operational", a, sizeof a);
  dh_wait_public(&g.d, 0, a, "operational", 5000);
  dh_new_component(&g.d, 0, "after snapshot 2", "degraded_performance", b, sizeof b);
  dh_wait_public(&g.d, 2, b, "degraded_performance", 5000);
  dh_wait_converged(&g.d, "after the snapshot, new writes", CONVERGE_MS);
  /* the metrics say what happened */
  assert_true(dh_repl_metric(&g.d, 1, "sp_repl_relayed_changes_total{peer=\"ap-south\"}") > 0);
  assert_true(dh_repl_metric(&g.d, 1, "sp_repl_relay_switches_total{peer=\"ap-south\"}") > 0);
  assert_true(dh_repl_metric(&g.d, 1, "sp_repl_trimmed_rows_total") > 0);
  assert_true(dh_repl_metric(&g.d, 0, "sp_repl_snapshot_chunks_sent_total{peer=\"ap-south\"}") >
                  0 ||
              dh_repl_metric(&g.d, 1, "sp_repl_snapshot_chunks_sent_total{peer=\"ap-south\"}") > 0);
  assert_true(
      dh_repl_metric(&g.d, 2, "sp_repl_snapshot_chunks_applied_total{peer=\"us-east\"}") > 0 ||
      dh_repl_metric(&g.d, 2, "sp_repl_snapshot_chunks_applied_total{peer=\"eu-west\"}") > 0);
  assert_true(dh_repl_metric(&g.d, 2, "sp_repl_reconnects_total{peer=\"us-east\"}") >= 1);
  assert_true(dh_repl_metric(&g.d, 2, "sp_repl_log_floor{origin=\"us-east\"}") > 0);
}

/* Every replicad log (after a graceful stop) is free of sanitizer reports. */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  dh_ctl_ok(&g.d, "down", "down");
  dh_expect_replicad_logs_clean(&g.d, 1);
  /* and the one the test started itself */
  char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/ap-south-manual.log", g.d.dir);
  dh_expect_log_clean(path, NULL, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_retention), cmocka_unit_test(test_up),
      cmocka_unit_test(test_relay),         cmocka_unit_test(test_acks_and_trim),
      cmocka_unit_test(test_snapshot_resync), cmocka_unit_test(test_stop_logs_clean),
  };
  return cmocka_run_group_tests_name("replicad_repair", tests, setup, teardown);
}
