/* Tests for repl_metrics (statusd-replicad's metric families) without a
 * daemon: totals are mirrored exactly and a total that went backwards
 * (its source restarted) is counted from 0 instead of lowering the counter;
 * gauges carry the units the names promise (seconds, unix seconds);
 * histograms observe what the daemon reports; session stats sum across
 * replaced sessions; a wrong peer count is refused; the rendering passes
 * `promtool check metrics` (a declared dependency: the test fails without
 * it); and an allocation-failure sweep over construction leaks nothing.
 * The same families on a live three-region deployment are checked by
 * test_replicad.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "repl_metrics.h"
#include "sp_alloc.h"
#include "sp_buf.h"
#include "sp_err.h"
#include "sp_fixture.h"

static const char *const peers[] = {"eu-west", "ap-south"};
static const char *const origins[] = {"us-east", "eu-west", "ap-south"};

/* The value of `series` (as rendered, labels included) in text; NAN when
 * absent. */
static double sample(const char *text, const char *series) {
  char pat[256];
  snprintf(pat, sizeof pat, "\n%s ", series);
  const char *at = strstr(text, pat);
  return at ? strtod(at + strlen(pat), NULL) : NAN;
}

static void render(repl_metrics *m, const repl_metrics_peer *ps, const repl_metrics_global *gl,
                   sp_buf *out) {
  sp_buf_reset(out);
  assert_int_equal(repl_metrics_render(m, ps, 2, gl, out), 0);
  assert_int_equal(sp_buf_add(out, "", 1), 0); /* NUL for strstr */
}

static void test_mirror_and_units(void **state) {
  (void)state;
  repl_metrics *m;
  assert_int_equal(repl_metrics_new(peers, 2, origins, 3, &m), 0);
  repl_metrics_peer ps[2];
  memset(ps, 0, sizeof ps);
  uint64_t floor[3] = {0, 7, 0};
  repl_metrics_global gl = {.floor = floor, .trimmed_rows = 5};
  sp_buf b;
  sp_buf_init(&b, SP_BUF_UNLIMITED);

  /* before anything happened: every series is there, at 0 */
  render(m, ps, &gl, &b);
  assert_true(sample(b.base, "sp_repl_changes_sent_total{peer=\"eu-west\"}") == 0);
  assert_true(sample(b.base, "sp_repl_applied_batch_changes_count{peer=\"ap-south\"}") == 0);
  assert_true(sample(b.base, "sp_repl_log_floor{origin=\"eu-west\"}") == 7);
  assert_true(sample(b.base, "sp_repl_trimmed_rows_total") == 5);

  ps[0].out.changes_sent = 120;
  ps[0].out.batches_sent = 3;
  ps[0].sent_bytes = 4096;
  ps[0].applied = 42;
  ps[0].lag_ms = 1500;
  ps[0].last_contact_ms = 1700000000123ull;
  ps[0].connected = 1;
  ps[0].out.peer_clock_offset_ms = -250;
  ps[1].in.skew_rejects = 2;
  gl.trimmed_rows = 9;
  repl_metrics_batch_sent(m, 0, 100);
  repl_metrics_batch_sent(m, 0, 20);
  repl_metrics_batch_sent(m, 9, 20); /* no such peer: ignored */
  repl_metrics_applied(m, 0, 40, 0.002);
  repl_metrics_applied(m, 0, 2, 0.004);
  render(m, ps, &gl, &b);
  assert_true(sample(b.base, "sp_repl_changes_sent_total{peer=\"eu-west\"}") == 120);
  assert_true(sample(b.base, "sp_repl_bytes_sent_total{peer=\"eu-west\"}") == 4096);
  assert_true(sample(b.base, "sp_repl_skew_rejects_total{peer=\"ap-south\"}") == 2);
  assert_true(sample(b.base, "sp_repl_lag_seconds{peer=\"eu-west\"}") == 1.5);
  assert_true(sample(b.base, "sp_repl_last_contact_timestamp_seconds{peer=\"eu-west\"}") ==
              1700000000.123);
  assert_true(sample(b.base, "sp_repl_connected{peer=\"eu-west\"}") == 1);
  assert_true(sample(b.base, "sp_repl_connected{peer=\"ap-south\"}") == 0);
  assert_true(sample(b.base, "sp_repl_peer_clock_offset_seconds{peer=\"eu-west\"}") == -0.25);
  assert_true(sample(b.base, "sp_repl_trimmed_rows_total") == 9);
  /* histograms: what was observed, bucketed on the batch-size bounds */
  assert_true(sample(b.base, "sp_repl_sent_batch_changes_count{peer=\"eu-west\"}") == 2);
  assert_true(sample(b.base, "sp_repl_sent_batch_changes_sum{peer=\"eu-west\"}") == 120);
  assert_true(sample(b.base, "sp_repl_sent_batch_changes_bucket{peer=\"eu-west\",le=\"20\"}") ==
              1);
  assert_true(sample(b.base, "sp_repl_sent_batch_changes_bucket{peer=\"eu-west\",le=\"100\"}") ==
              2);
  assert_true(sample(b.base, "sp_repl_applied_batch_changes_sum{peer=\"eu-west\"}") ==
              sample(b.base, "sp_repl_changes_applied_total{peer=\"eu-west\"}"));
  assert_true(sample(b.base, "sp_repl_apply_duration_seconds_count{peer=\"eu-west\"}") == 2);
  assert_true(fabs(sample(b.base, "sp_repl_apply_duration_seconds_sum{peer=\"eu-west\"}") -
                   0.006) < 1e-12);

  /* rendering again without change changes nothing; a source that went
   * back (restarted from 0, then counted 5) adds its 5 */
  render(m, ps, &gl, &b);
  assert_true(sample(b.base, "sp_repl_changes_sent_total{peer=\"eu-west\"}") == 120);
  ps[0].out.changes_sent = 5;
  render(m, ps, &gl, &b);
  assert_true(sample(b.base, "sp_repl_changes_sent_total{peer=\"eu-west\"}") == 125);
  ps[0].out.changes_sent = 6;
  render(m, ps, &gl, &b);
  assert_true(sample(b.base, "sp_repl_changes_sent_total{peer=\"eu-west\"}") == 126);

  /* a wrong number of samples is refused, not read past */
  sp_buf_reset(&b);
  assert_int_equal(repl_metrics_render(m, ps, 1, &gl, &b), SP_ERR_INVAL);
  sp_buf_release(&b);
  repl_metrics_free(m);
  repl_metrics_free(NULL);
}

static void test_stats_add(void **state) {
  (void)state;
  repl_stats acc, a, c;
  memset(&acc, 0, sizeof acc);
  memset(&a, 0, sizeof a);
  memset(&c, 0, sizeof c);
  a.batches_received = 3;
  a.skew_rejects = 1;
  a.snapshot_chunks_received = 4;
  a.peer_clock_offset_ms = 10;
  c.batches_received = 2;
  c.peer_clock_offset_ms = -5;
  repl_metrics_stats_add(&acc, &a);
  repl_metrics_stats_add(&acc, &c);
  assert_int_equal(acc.batches_received, 5);
  assert_int_equal(acc.skew_rejects, 1);
  assert_int_equal(acc.snapshot_chunks_received, 4);
  assert_int_equal(acc.peer_clock_offset_ms, -5); /* the latest reading, not a sum */
}

/* `promtool check metrics` on a rendering with every family populated
 * finds nothing (lint included: units, _total suffixes). */
static void test_promtool_clean(void **state) {
  (void)state;
  repl_metrics *m;
  assert_int_equal(repl_metrics_new(peers, 2, origins, 3, &m), 0);
  repl_metrics_peer ps[2];
  memset(ps, 0, sizeof ps);
  ps[1].lag_ms = 20;
  ps[1].applied = 3;
  repl_metrics_applied(m, 1, 3, 0.01);
  repl_metrics_batch_sent(m, 1, 1000);
  uint64_t floor[3] = {1, 2, 3};
  repl_metrics_global gl = {.floor = floor, .published = 1};
  sp_buf b;
  sp_buf_init(&b, SP_BUF_UNLIMITED);
  render(m, ps, &gl, &b);
  char report[4096];
  int st = sp_fixture_promtool(b.base, strlen(b.base), report, sizeof report);
  if (st != 0 || report[0])
    fail_msg("promtool exit %d (127: not installed; it is a declared dependency):\n%s\n--- "
             "input ---\n%s",
             st, report, b.base);
  sp_buf_release(&b);
  repl_metrics_free(m);
}

static void test_alloc_failure_sweep(void **state) {
  (void)state;
  int rc = SP_ERR_NOMEM;
  for (long n = 0; rc == SP_ERR_NOMEM && n < 100000; n++) {
    repl_metrics *m = NULL;
    sp_alloc_fail_after(n);
    rc = repl_metrics_new(peers, 2, origins, 3, &m);
    sp_alloc_fail_after(-1);
    if (rc == SP_ERR_NOMEM)
      assert_null(m);
    else
      assert_int_equal(rc, 0);
    repl_metrics_free(m);
  }
  assert_int_equal(rc, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mirror_and_units),
      cmocka_unit_test(test_stats_add),
      cmocka_unit_test(test_promtool_clean),
      cmocka_unit_test(test_alloc_failure_sweep),
  };
  return cmocka_run_group_tests_name("repl_metrics", tests, NULL, NULL);
}
