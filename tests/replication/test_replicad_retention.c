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
 * large entity was split over chunks, and the regions converge; relayed
 * snapshot: eu-west gets a write by snapshot from us-east, us-east's
 * replicad stops, and ap-south (held with SIGSTOP meanwhile) gets the write
 * by a snapshot from eu-west; finally every replicad log is free of
 * sanitizer reports.
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
  pid_t paused[NREGIONS]; /* replicads held with SIGSTOP, resumed by teardown */
} g;

static int setup(void **state) {
  (void)state;
  return dh_deploy_setup(&g.d, "sp-replicad-retention", PORT_SHIFT);
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < NREGIONS; i++)
    if (g.paused[i] > 0)
      kill(g.paused[i], SIGCONT); /* so that it can stop */
  dh_deploy_teardown(&g.d);
  return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

/* A per-peer series name for peer ap-south. */
static const char *away(const char *family) {
  static char s[128];
  snprintf(s, sizeof s, "%s{peer=\"%s\"}", family, dh_regions[AWAY]);
  return s;
}

/* The snapshot chunks us-east and eu-west have sent ap-south. */
static long long chunks_sent_away(void) {
  return dh_repl_metric(&g.d, 0, away("sp_repl_snapshot_chunks_sent_total")) +
         dh_repl_metric(&g.d, 1, away("sp_repl_snapshot_chunks_sent_total"));
}

/* Marks where every replicad log ends now (log_has looks after it). */
static void mark_logs(void) {
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128];
    struct stat st;
    dh_log_path(&g.d, i, "statusd-replicad", path, sizeof path);
    g.off[i] = stat(path, &st) == 0 ? (long)st.st_size : 0;
  }
}

/* Begins an episode: marks the logs and stops ap-south's replicad.
 * Returns chunks_sent_away() from before. */
static long long send_away(void) {
  long long chunks = chunks_sent_away();
  mark_logs();
  dh_stop(&g.d, AWAY, "statusd-replicad");
  return chunks;
}

/* 1 when region's replicad logged, since send_away, a line holding a and b. */
static int log_has(int region, const char *a, const char *b) {
  return dh_log_has(&g.d, region, g.off[region], a, b, NULL);
}

/* Waits until `region` trimmed rows of `origin` that `peer` (whose
 * replicad is stopped or held) lacks: the floor is above the peer's own
 * sp_vclock, and hence above its persisted ack too.  The persisted ack
 * alone is not enough: acks are persisted asynchronously and may lag what
 * the peer had, and a floor between the two would let the peer catch up
 * from the log (relayed by the other region) instead of by snapshot. */
static void wait_trimmed_past(int region, int origin, int peer) {
  char q[512];
  snprintf(q, sizeof q, "SELECT coalesce(max(seq), 0) FROM sp_vclock WHERE origin = %d", origin);
  long long has = dh_sql_int(&g.d, peer, q);
  snprintf(q, sizeof q,
           "SELECT count(*) FROM sp_log_floor f LEFT JOIN sp_peer_ack a "
           "ON a.peer = %d AND a.origin = f.origin "
           "WHERE f.origin = %d AND f.seq > coalesce(a.seq, 0) AND f.seq > %lld",
           peer, origin, has);
  dh_wait_sql(&g.d, region, q, 1, 10000);
}

/* Both senders warned and count ap-south as given up on; not the others. */
static void expect_given_up(void) {
  for (int i = 0; i < 2; i++) {
    long long end = dh_now_ms() + 3000;
    while (!log_has(i, "\"giving up on a peer", "\"peer\":\"ap-south\"") && dh_now_ms() < end)
      dh_sleep_ms(100);
    if (!log_has(i, "\"giving up on a peer", "\"peer\":\"ap-south\""))
      fail_msg("%s did not warn that it gave up on ap-south", dh_regions[i]);
    assert_true(dh_repl_metric(&g.d, i, away("sp_repl_peer_given_up_total")) >= 1);
    assert_int_equal(dh_repl_metric(&g.d, i, away("sp_repl_peer_given_up")), 1);
    char other[128];
    snprintf(other, sizeof other, "sp_repl_peer_given_up{peer=\"%s\"}", dh_regions[1 - i]);
    assert_int_equal(dh_repl_metric(&g.d, i, other), 0);
  }
}

/* After ap-south is back: its give-up gauge returns to 0 in both. */
static void expect_back(void) {
  for (int i = 0; i < 2; i++) {
    long long end = dh_now_ms() + 5000;
    while (dh_repl_metric(&g.d, i, away("sp_repl_peer_given_up")) != 0 && dh_now_ms() < end)
      dh_sleep_ms(200);
    assert_int_equal(dh_repl_metric(&g.d, i, away("sp_repl_peer_given_up")), 0);
    assert_true(log_has(i, "\"peer given up on is back", "\"peer\":\"ap-south\""));
  }
}

/* ---- tests, in order -------------------------------------------------------------- */

/* Runs the replicad with extra arguments and environment: it must exit 2
 * saying `want`. */
static void expect_refused(const char *env, const char *args, const char *want) {
  char all[PATH_MAX + 256], out[4096];
  snprintf(all, sizeof all, "--topology '%s' --region us-east %s", g.d.topo, args);
  int st = dh_replicad_cmd(&g.d, env, all, out, sizeof out);
  assert_true(st >= 0);
  if (st != 2 || strstr(out, want) == NULL)
    fail_msg("%s %s: exit %d, output \"%s\" (wanted \"%s\")", env, args, st, out, want);
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
  dh_up(&g.d);
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
  /* converged, so nothing is unacknowledged: restart every replicad with
   * the short maximum (statusctl up starts the stopped ones with our
   * environment) */
  assert_int_equal(setenv("SP_REPL_MAX_LOG_RETENTION_MS", MAX_RETENTION, 1), 0);
  for (int i = 0; i < NREGIONS; i++)
    dh_stop(&g.d, i, "statusd-replicad");
  dh_ctl_ok(&g.d, "up", "up with the short maximum retention");
  dh_wait_converged(&g.d, "after the restart", CONVERGE_MS);
  g.up = 1;
}

/* A region away past the maximum retention is given up on, and catches up
 * by snapshot when it returns. */
static void test_give_up_and_snapshot(void **state) {
  (void)state;
  assert_true(g.up);
  long long chunks0 = send_away();
  char a[64], b[64];
  dh_new_component(&g.d, 0, "away: us-east", "partial_outage", a, sizeof a);
  dh_new_component(&g.d, 1, "away: eu-west", "major_outage", b, sizeof b);
  dh_wait_public(&g.d, 1, a, "partial_outage", 5000);
  dh_wait_public(&g.d, 0, b, "major_outage", 5000);
  /* both logs lose rows of both origins that ap-south never acknowledged */
  for (int i = 0; i < 2; i++)
    for (int o = 0; o < 2; o++)
      wait_trimmed_past(i, o, AWAY);
  expect_given_up();
  dh_expect_public(&g.d, AWAY, a, ""); /* not there: only a snapshot can bring it */

  dh_ctl_ok(&g.d, "up", "ap-south back");
  dh_wait_public(&g.d, AWAY, a, "partial_outage", CONVERGE_MS);
  dh_wait_public(&g.d, AWAY, b, "major_outage", CONVERGE_MS);
  dh_wait_converged(&g.d, "after the snapshot", CONVERGE_MS);
  assert_true(log_has(0, "\"serving a snapshot\"", "\"peer\":\"ap-south\"") ||
              log_has(1, "\"serving a snapshot\"", "\"peer\":\"ap-south\""));
  assert_true(chunks_sent_away() > chunks0);
  assert_true(
      dh_repl_metric(&g.d, AWAY, "sp_repl_snapshot_chunks_applied_total{peer=\"us-east\"}") > 0 ||
      dh_repl_metric(&g.d, AWAY, "sp_repl_snapshot_chunks_applied_total{peer=\"eu-west\"}") > 0);
  /* ap-south adopted the senders' vectors */
  for (int o = 0; o < 2; o++) {
    char q[128];
    snprintf(q, sizeof q, "SELECT seq FROM sp_vclock WHERE origin = %d", o);
    dh_wait_sql(&g.d, AWAY, q, dh_sql_int(&g.d, o, q), 5000);
  }
  expect_back();
  /* and deltas flow again, both ways */
  char c[64], d[64];
  dh_new_component(&g.d, AWAY, "back: ap-south", "operational", c, sizeof c);
  dh_new_component(&g.d, 0, "back: us-east", "degraded_performance", d, sizeof d);
  dh_wait_public(&g.d, 0, c, "operational", 5000);
  dh_wait_public(&g.d, AWAY, d, "degraded_performance", 5000);
  dh_wait_converged(&g.d, "after new writes", CONVERGE_MS);
}

/* Writes, in us-east through sp_write, 40 components of 50-60 KB and one
 * entity of three 500 KB fields on page "big-page". */
static void write_large_entities(void) {
  PGconn *c = dh_db(&g.d, 0);
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
  long long chunks0 = send_away();
  write_large_entities();
  long long want = dh_sql_int(&g.d, 0, BIG_STATE);
  assert_int_equal(want / 1000000000, 83); /* 40 * 2 + 3 fields */
  assert_true(want % 1000000000 > 3600000); /* 3.7 MB */
  dh_wait_sql(&g.d, 1, BIG_STATE, want, CONVERGE_MS);
  wait_trimmed_past(0, 0, AWAY);
  wait_trimmed_past(1, 0, AWAY);
  expect_given_up();
  assert_int_equal(
      dh_sql_int(&g.d, AWAY, "SELECT count(*) FROM sp_field WHERE page_id = 'big-page'"), 0);

  dh_ctl_ok(&g.d, "up", "ap-south back again");
  dh_wait_sql(&g.d, AWAY, BIG_STATE, want, 30000);
  dh_wait_converged(&g.d, "after the large snapshot", CONVERGE_MS);
  long long served = 0, split = 0;
  for (int i = 0; i < 2; i++) {
    long long mx = dh_repl_metric(&g.d, i, away("sp_repl_snapshot_chunk_max_bytes"));
    assert_true(mx >= 0);
    if (mx > CHUNK_BOUND)
      fail_msg("%s sent ap-south a snapshot chunk of %lld bytes (bound %d)", dh_regions[i], mx,
               CHUNK_BOUND);
    served += mx > 0;
    split += dh_repl_metric(&g.d, i, away("sp_repl_snapshot_entities_split_total"));
    assert_int_equal(dh_repl_metric(&g.d, i, away("sp_repl_snapshot_rows_skipped_total")), 0);
  }
  assert_true(served >= 1);
  assert_true(split >= 1); /* the 1.5 MB entity went over several chunks */
  /* 3.7 MB in chunks of at most 1 MiB: at least four chunks from a sender */
  assert_true(chunks_sent_away() >= chunks0 + 4);
  assert_true(log_has(0, "\"snapshot entity larger than a chunk", "\"id\":\"huge\"") ||
              log_has(1, "\"snapshot entity larger than a chunk", "\"id\":\"huge\""));
  expect_back();
}

/* Holds region's replicad with SIGSTOP (teardown resumes it): `statusctl
 * up` sees it running and leaves it be, and, unlike a stopped one, its
 * sessions are where they were when it resumes. */
static void hold(int region) {
  g.paused[region] = dh_pidfile(&g.d, dh_regions[region], "statusd-replicad");
  assert_true(g.paused[region] > 0);
  assert_int_equal(kill(g.paused[region], SIGSTOP), 0);
}

static void resume(int region) {
  assert_int_equal(kill(g.paused[region], SIGCONT), 0);
  g.paused[region] = 0;
}

/* What a snapshot brought reaches a third region from the region that
 * received it.  us-east's replicad is stopped first (so that no session of
 * it to the others is open), eu-west's and ap-south's are held, and
 * us-east writes; us-east's replicad is started alone, cannot complete a
 * handshake with either, and trims the write past both within the maximum
 * retention.  eu-west resumes and gets the write by snapshot, which raises
 * its log floor for us-east's rows; then us-east's replicad stops and
 * ap-south resumes.  Only eu-west has the write now, and not as log rows:
 * it must serve ap-south a snapshot. */
static void test_snapshot_relayed_by_receiver(void **state) {
  (void)state;
  assert_true(g.up);
  const char *from_origin = "sp_repl_snapshot_chunks_applied_total{peer=\"us-east\"}";
  long long applied0 = dh_repl_metric(&g.d, 1, from_origin);
  mark_logs();
  dh_stop(&g.d, 0, "statusd-replicad");
  hold(1);
  hold(AWAY);
  char a[64];
  dh_new_component(&g.d, 0, "relayed: us-east", "under_maintenance", a, sizeof a);
  dh_ctl_ok(&g.d, "up", "us-east's replicad alone");
  wait_trimmed_past(0, 0, 1);
  wait_trimmed_past(0, 0, AWAY);
  dh_expect_public(&g.d, 1, a, "");

  resume(1);
  dh_wait_public(&g.d, 1, a, "under_maintenance", CONVERGE_MS);
  assert_true(log_has(0, "\"serving a snapshot\"", "\"peer\":\"eu-west\""));
  assert_true(dh_repl_metric(&g.d, 1, from_origin) > applied0);
  /* eu-west's floor for us-east's rows rose above ap-south's ack */
  wait_trimmed_past(1, 0, AWAY);

  dh_stop(&g.d, 0, "statusd-replicad");
  dh_expect_public(&g.d, AWAY, a, "");
  resume(AWAY);
  dh_wait_public(&g.d, AWAY, a, "under_maintenance", CONVERGE_MS);
  assert_true(log_has(1, "\"serving a snapshot\"", "\"peer\":\"ap-south\""));

  dh_ctl_ok(&g.d, "up", "us-east back");
  dh_wait_converged(&g.d, "after the relayed snapshot", CONVERGE_MS);
  for (int i = 0; i < 2; i++) {
    long long end = dh_now_ms() + 5000;
    while (dh_repl_metric(&g.d, i, away("sp_repl_peer_given_up")) != 0 && dh_now_ms() < end)
      dh_sleep_ms(200);
    assert_int_equal(dh_repl_metric(&g.d, i, away("sp_repl_peer_given_up")), 0);
  }
}

/* Every replicad log (after a graceful stop) is free of sanitizer reports. */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  dh_ctl_ok(&g.d, "down", "down");
  dh_expect_replicad_logs_clean(&g.d, 2);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_max_retention),    cmocka_unit_test(test_up),
      cmocka_unit_test(test_give_up_and_snapshot), cmocka_unit_test(test_snapshot_chunk_bound),
      cmocka_unit_test(test_snapshot_relayed_by_receiver), cmocka_unit_test(test_stop_logs_clean),
  };
  return cmocka_run_group_tests_name("replicad_retention", tests, setup, teardown);
}
