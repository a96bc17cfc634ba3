/* Tests for sp_metrics: exact text for a small registry, escaping, histogram
 * bucket math, number formatting, name validation, stable series pointers,
 * caps, an allocation-failure sweep, and a registry with every type and
 * awkward label values run through `promtool check metrics` (a declared
 * dependency: the test fails, not skips, without it).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sp_alloc.h"
#include "sp_buf.h"
#include "sp_err.h"
#include "sp_fixture.h"
#include "sp_metrics.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static double read_double(void *arg) { return *(double *)arg; }

static void test_render_exact(void **state) {
  (void)state;
  sp_metrics *m;
  assert_int_equal(sp_metrics_new(&m), 0);
  static const char *const req_labels[] = {"method", "code"};
  static const char *const state_label[] = {"state"};
  static const char *const route_label[] = {"route"};
  static const double bounds[] = {0.125, 1, 10};
  sp_metrics_family *req, *restarts, *conns, *pool, *lat, *unused;
  assert_int_equal(sp_metrics_add_counter(m, "sp_requests_total", "Requests handled.",
                                          req_labels, 2, &req), 0);
  assert_int_equal(sp_metrics_add_counter(m, "sp_restarts_total", "Process restarts.", NULL, 0,
                                          &restarts), 0);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_connections", "Open connections.", NULL, 0,
                                        &conns), 0);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_pool_connections", "Pool connections by state.",
                                        state_label, 1, &pool), 0);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_latency_seconds", "Request latency.",
                                            route_label, 1, bounds, 3, &lat), 0);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_unused", "Never used.", state_label, 1, &unused),
                   0);

  /* created out of order: rendered sorted by label values */
  sp_counter *c;
  assert_int_equal(sp_metrics_counter(req, (const char *[]){"POST", "201"}, &c), 0);
  sp_counter_add(c, 2);
  assert_int_equal(sp_metrics_counter(req, (const char *[]){"GET", "200"}, &c), 0);
  sp_counter_add(c, 5);
  assert_int_equal(sp_metrics_counter(req, (const char *[]){"GET", "404"}, &c), 0);
  sp_counter_add(c, 1);
  sp_gauge *g;
  assert_int_equal(sp_metrics_gauge(conns, NULL, &g), 0);
  sp_gauge_set(g, 42);
  sp_gauge_add(g, -2.5);
  double idle = 3;
  assert_int_equal(sp_metrics_gauge_fn(pool, (const char *[]){"idle"}, read_double, &idle), 0);
  assert_int_equal(sp_metrics_gauge(pool, (const char *[]){"busy"}, &g), 0);
  sp_gauge_set(g, 7);
  sp_histogram *h;
  assert_int_equal(sp_metrics_histogram(lat, (const char *[]){"/a"}, &h), 0);
  sp_histogram_observe(h, 0.0625);
  sp_histogram_observe(h, 0.125);
  sp_histogram_observe(h, 0.5);
  sp_histogram_observe(h, 20);

  static const char want[] =
      "# HELP sp_requests_total Requests handled.\n"
      "# TYPE sp_requests_total counter\n"
      "sp_requests_total{method=\"GET\",code=\"200\"} 5\n"
      "sp_requests_total{method=\"GET\",code=\"404\"} 1\n"
      "sp_requests_total{method=\"POST\",code=\"201\"} 2\n"
      "# HELP sp_restarts_total Process restarts.\n"
      "# TYPE sp_restarts_total counter\n"
      "sp_restarts_total 0\n"
      "# HELP sp_connections Open connections.\n"
      "# TYPE sp_connections gauge\n"
      "sp_connections 39.5\n"
      "# HELP sp_pool_connections Pool connections by state.\n"
      "# TYPE sp_pool_connections gauge\n"
      "sp_pool_connections{state=\"busy\"} 7\n"
      "sp_pool_connections{state=\"idle\"} 3\n"
      "# HELP sp_latency_seconds Request latency.\n"
      "# TYPE sp_latency_seconds histogram\n"
      "sp_latency_seconds_bucket{route=\"/a\",le=\"0.125\"} 2\n"
      "sp_latency_seconds_bucket{route=\"/a\",le=\"1\"} 3\n"
      "sp_latency_seconds_bucket{route=\"/a\",le=\"10\"} 3\n"
      "sp_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 4\n"
      "sp_latency_seconds_sum{route=\"/a\"} 20.6875\n"
      "sp_latency_seconds_count{route=\"/a\"} 4\n";
  sp_buf out;
  sp_buf_init(&out, SP_BUF_UNLIMITED);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  assert_string_equal(out.base, want);

  /* the callback runs at render time; unbinding returns to the stored value */
  idle = 11;
  sp_buf_reset(&out);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  assert_non_null(strstr(out.base, "sp_pool_connections{state=\"idle\"} 11\n"));
  assert_int_equal(sp_metrics_gauge_fn(pool, (const char *[]){"idle"}, NULL, NULL), 0);
  sp_buf_reset(&out);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  assert_non_null(strstr(out.base, "sp_pool_connections{state=\"idle\"} 0\n"));
  sp_buf_release(&out);
  assert_string_equal(SP_METRICS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
  sp_metrics_free(m);
}

static void test_escaping(void **state) {
  (void)state;
  sp_metrics *m;
  assert_int_equal(sp_metrics_new(&m), 0);
  sp_metrics_family *f;
  assert_int_equal(sp_metrics_add_gauge(m, "sp_escape", "A \"quoted\" \\ help\nline two.",
                                        (const char *[]){"v"}, 1, &f), 0);
  sp_gauge *g;
  assert_int_equal(sp_metrics_gauge(f, (const char *[]){"back\\slash \"q\" new\nline"}, &g), 0);
  sp_gauge_set(g, 1);
  assert_int_equal(sp_metrics_gauge(f, (const char *[]){""}, &g), 0);
  assert_int_equal(sp_metrics_gauge(f, (const char *[]){"caf\xc3\xa9 \\"}, &g), 0);
  sp_buf out;
  sp_buf_init(&out, SP_BUF_UNLIMITED);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  assert_string_equal(out.base,
                      "# HELP sp_escape A \"quoted\" \\\\ help\\nline two.\n"
                      "# TYPE sp_escape gauge\n"
                      "sp_escape{v=\"\"} 0\n"
                      "sp_escape{v=\"back\\\\slash \\\"q\\\" new\\nline\"} 1\n"
                      "sp_escape{v=\"caf\xc3\xa9 \\\\\"} 0\n");
  sp_buf_release(&out);
  sp_metrics_free(m);
}

static void test_histogram_bucket_math(void **state) {
  (void)state;
  sp_metrics *m;
  assert_int_equal(sp_metrics_new(&m), 0);
  sp_metrics_family *f;
  static const double b[] = {-1, 0, 0.5, 2};
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, b, 4, &f), 0);
  sp_histogram *h;
  assert_int_equal(sp_metrics_histogram(f, NULL, &h), 0);
  /* le is inclusive: a value equal to a bound counts in that bucket */
  static const double obs[] = {-5, -1, -0.5, 0, 0.5, 0.75, 2, 2.0001, 1e300};
  for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
    sp_histogram_observe(h, obs[i]);
  assert_int_equal(sp_histogram_bucket_count(h, 0), 2); /* -5, -1 */
  assert_int_equal(sp_histogram_bucket_count(h, 1), 4); /* + -0.5, 0 */
  assert_int_equal(sp_histogram_bucket_count(h, 2), 5); /* + 0.5 */
  assert_int_equal(sp_histogram_bucket_count(h, 3), 7); /* + 0.75, 2 */
  assert_int_equal(sp_histogram_bucket_count(h, 4), 9); /* +Inf */
  assert_int_equal(sp_histogram_count(h), 9);
  sp_buf out;
  sp_buf_init(&out, SP_BUF_UNLIMITED);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  assert_non_null(strstr(out.base, "sp_h_bucket{le=\"-1\"} 2\n"
                                   "sp_h_bucket{le=\"0\"} 4\n"
                                   "sp_h_bucket{le=\"0.5\"} 5\n"
                                   "sp_h_bucket{le=\"2\"} 7\n"
                                   "sp_h_bucket{le=\"+Inf\"} 9\n"
                                   "sp_h_sum 1e+300\n"
                                   "sp_h_count 9\n"));
  /* NaN lands only in +Inf and poisons the sum, as in client_golang */
  sp_histogram_observe(h, NAN);
  assert_int_equal(sp_histogram_bucket_count(h, 3), 7);
  assert_int_equal(sp_histogram_count(h), 10);
  assert_true(isnan(sp_histogram_sum(h)));

  /* default buckets */
  sp_metrics_family *d;
  assert_int_equal(sp_metrics_add_histogram(m, "sp_d_seconds", "d.", NULL, 0, NULL, 0, &d), 0);
  assert_int_equal(sp_metrics_histogram(d, NULL, &h), 0);
  sp_histogram_observe(h, 0.003);
  assert_int_equal(sp_histogram_bucket_count(h, 2), 0); /* le 0.0025 */
  assert_int_equal(sp_histogram_bucket_count(h, 3), 1); /* le 0.005 */
  assert_int_equal(sp_histogram_bucket_count(h, sp_metrics_latency_buckets_len - 1), 1);
  sp_buf_reset(&out);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  assert_non_null(strstr(out.base, "sp_d_seconds_bucket{le=\"0.0005\"} 0\n"));
  assert_non_null(strstr(out.base, "sp_d_seconds_bucket{le=\"10\"} 1\n"));
  assert_non_null(strstr(out.base, "sp_d_seconds_sum 0.003\n"));
  sp_buf_release(&out);
  sp_metrics_free(m);
}

static void test_number_format(void **state) {
  (void)state;
  static const struct {
    double v;
    const char *want;
  } cases[] = {
      {0, "0"},
      {-0.0, "0"},
      {1, "1"},
      {-17, "-17"},
      {123456789012345, "123456789012345"},
      {9007199254740993.0, "9007199254740992"},
      {1e20, "1e+20"},
      {0.1, "0.1"},
      {1.5, "1.5"},
      {1e-5, "1e-05"},
      {1.0 / 3, "0.3333333333333333"},
      {NAN, "NaN"},
      {INFINITY, "+Inf"},
      {-INFINITY, "-Inf"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    sp_buf b;
    sp_buf_init(&b, 64);
    assert_int_equal(sp_metrics_format_value(&b, cases[i].v), 0);
    assert_string_equal(b.base, cases[i].want);
    if (isfinite(cases[i].v))
      assert_true(strtod(b.base, NULL) == cases[i].v); /* reads back exactly */
    sp_buf_release(&b);
  }
}

static void test_invalid_registrations(void **state) {
  (void)state;
  sp_metrics *m;
  assert_int_equal(sp_metrics_new(&m), 0);
  sp_metrics_family *f = (sp_metrics_family *)&f;
  static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "caf\xc3\xa9", "a{b}"};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
    assert_int_equal(sp_metrics_add_counter(m, bad_names[i], "h.", NULL, 0, &f), SP_ERR_INVAL);
    assert_null(f);
  }
  assert_int_equal(sp_metrics_add_counter(m, NULL, "h.", NULL, 0, &f), SP_ERR_INVAL);
  static const char *const bad_labels[] = {"__reserved", "1a", "a:b", "", "a-b"};
  for (size_t i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++)
    assert_int_equal(sp_metrics_add_gauge(m, "sp_g", "h.", &bad_labels[i], 1, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g", "h.", (const char *[]){"a", "a"}, 2, &f),
                   SP_ERR_INVAL);
  static const char *const nine[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g", "h.", nine, 9, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g", "h.", nine, 8, &f), 0);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g2", NULL, NULL, 0, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g2", "", NULL, 0, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g2", "bad \xff utf8", NULL, 0, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_g2", "h.", NULL, 1, &f), SP_ERR_INVAL);
  /* "le" only clashes in histograms; colons are fine in metric names */
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", (const char *[]){"le"}, 1, NULL, 0,
                                            &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_gauge(m, "sp:rule_le", "h.", (const char *[]){"le"}, 1, &f),
                   0);
  /* buckets: increasing, finite, 1..64 */
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, (double[]){1, 1}, 2, &f),
                   SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, (double[]){2, 1}, 2, &f),
                   SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, (double[]){1, NAN}, 2, &f),
                   SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0,
                                            (double[]){1, INFINITY}, 2, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, (double[]){1}, 0, &f),
                   SP_ERR_INVAL);
  double many[SP_METRICS_MAX_BUCKETS + 1];
  for (size_t i = 0; i <= SP_METRICS_MAX_BUCKETS; i++)
    many[i] = (double)i;
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, many,
                                            SP_METRICS_MAX_BUCKETS + 1, &f), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_h", "h.", NULL, 0, many,
                                            SP_METRICS_MAX_BUCKETS, &f), 0);
  /* duplicate names, including the ones a histogram exposes */
  assert_int_equal(sp_metrics_add_counter(m, "sp_g", "h.", NULL, 0, &f), SP_ERR_EXIST);
  assert_int_equal(sp_metrics_add_counter(m, "sp_h", "h.", NULL, 0, &f), SP_ERR_EXIST);
  assert_int_equal(sp_metrics_add_counter(m, "sp_h_count", "h.", NULL, 0, &f), SP_ERR_EXIST);
  assert_int_equal(sp_metrics_add_gauge(m, "sp_h_bucket", "h.", NULL, 0, &f), SP_ERR_EXIST);
  assert_int_equal(sp_metrics_add_counter(m, "sp_x_sum", "h.", NULL, 0, &f), 0);
  assert_int_equal(sp_metrics_add_histogram(m, "sp_x", "h.", NULL, 0, NULL, 0, &f), SP_ERR_EXIST);

  /* series: wrong type, missing or invalid values */
  sp_metrics_family *lab;
  assert_int_equal(sp_metrics_add_counter(m, "sp_lab_total", "h.", (const char *[]){"a"}, 1,
                                          &lab), 0);
  sp_gauge *g = (sp_gauge *)&g;
  sp_counter *c;
  assert_int_equal(sp_metrics_gauge(lab, (const char *[]){"x"}, &g), SP_ERR_INVAL);
  assert_null(g);
  assert_int_equal(sp_metrics_counter(lab, NULL, &c), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_counter(lab, (const char *[]){NULL}, &c), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_counter(lab, (const char *[]){"\xc0\xaf"}, &c), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_counter(lab, (const char *[]){"\xed\xa0\x80"}, &c), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_counter(lab, (const char *[]){"\xf4\x90\x80\x80"}, &c),
                   SP_ERR_INVAL);
  assert_int_equal(sp_metrics_counter(lab, (const char *[]){"\xe2\x82"}, &c), SP_ERR_INVAL);
  assert_int_equal(sp_metrics_counter(lab, (const char *[]){"\xf0\x9f\x98\x80 ok"}, &c), 0);
  sp_metrics_free(m);
}

/* Cached pointers survive thousands of later insertions (which move the
 * sorted index, never the series), and the per-family cap holds. */
static void test_series_pointers_stable_and_capped(void **state) {
  (void)state;
  sp_metrics *m;
  assert_int_equal(sp_metrics_new(&m), 0);
  sp_metrics_family *f;
  assert_int_equal(sp_metrics_add_counter(m, "sp_t_total", "t.", (const char *[]){"k"}, 1, &f),
                   0);
  enum { N = SP_METRICS_MAX_SERIES };
  static sp_counter *ptrs[N];
  char key[32];
  for (int i = 0; i < N; i++) {
    snprintf(key, sizeof key, "%d", (i * 7919) % N); /* not in sorted order */
    assert_int_equal(sp_metrics_counter(f, (const char *[]){key}, &ptrs[i]), 0);
    sp_counter_add(ptrs[i], (double)i);
  }
  for (int i = 0; i < N; i++) {
    sp_counter *again;
    snprintf(key, sizeof key, "%d", (i * 7919) % N);
    assert_int_equal(sp_metrics_counter(f, (const char *[]){key}, &again), 0);
    assert_ptr_equal(again, ptrs[i]);
    assert_true(sp_counter_value(again) == (double)i);
  }
  sp_counter *c;
  assert_int_equal(sp_metrics_counter(f, (const char *[]){"one more"}, &c), SP_ERR_TOOBIG);
  /* counters never decrease */
  sp_counter_add(ptrs[1], -5);
  sp_counter_add(ptrs[1], NAN);
  assert_true(sp_counter_value(ptrs[1]) == 1);
  sp_metrics_free(m);
}

static void test_render_respects_buffer_cap(void **state) {
  (void)state;
  sp_metrics *m;
  assert_int_equal(sp_metrics_new(&m), 0);
  sp_metrics_family *f;
  assert_int_equal(sp_metrics_add_histogram(m, "sp_r_seconds", "r.", NULL, 0, NULL, 0, &f), 0);
  sp_buf out;
  sp_buf_init(&out, 100);
  assert_int_equal(sp_metrics_render(m, &out), SP_ERR_TOOBIG);
  assert_true(out.len <= 100);
  sp_buf_release(&out);
  sp_metrics_free(m);
}

/* Builds a registry with every kind of family, labelled and not; returns 0
 * or the first error (used by the sweep and the promtool check). */
static double pool_idle(void *arg) { return (double)*(int *)arg; }

static int build_full(sp_metrics **out, int *idle) {
  sp_metrics *m;
  sp_metrics_family *f;
  sp_counter *c;
  sp_gauge *g;
  sp_histogram *h;
  int rc;
  static const char *const awkward[] = {
      "back\\slash", "say \"hi\"", "two\nlines", "",
      "\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb8" "d" "\xc3\xa9 \xe2\x9c\x93", /* unicode, check mark */
      "{}=,# HELP", "trailing\\"};
  *out = NULL;
  if ((rc = sp_metrics_new(&m)))
    return rc;
  if ((rc = sp_metrics_add_counter(m, "sp_http_requests_total",
                                   "HTTP requests \"served\", by route.\nSecond line \\ here.",
                                   (const char *[]){"method", "route", "code"}, 3, &f)))
    goto fail;
  for (size_t i = 0; i < sizeof awkward / sizeof awkward[0]; i++) {
    if ((rc = sp_metrics_counter(f, (const char *[]){"GET", awkward[i], "200"}, &c)))
      goto fail;
    sp_counter_add(c, (double)(i + 1) * 1.5);
  }
  if ((rc = sp_metrics_add_counter(m, "sp_process_restarts_total", "Restarts.", NULL, 0, &f)))
    goto fail;
  if ((rc = sp_metrics_add_gauge(m, "sp_db_pool_connections", "Pool connections by state.",
                                 (const char *[]){"state"}, 1, &f)) ||
      (rc = sp_metrics_gauge_fn(f, (const char *[]){"idle"}, pool_idle, idle)) ||
      (rc = sp_metrics_gauge(f, (const char *[]){"busy"}, &g)))
    goto fail;
  sp_gauge_set(g, 4);
  if ((rc = sp_metrics_add_gauge(m, "sp_replication_lag_seconds", "Lag per peer.",
                                 (const char *[]){"peer"}, 1, &f)))
    goto fail;
  static const double lag[] = {0.125, NAN, INFINITY, -INFINITY, 1e-9, 12345678.9};
  static const char *const peers[] = {"a", "b", "c", "d", "e", "f"};
  for (size_t i = 0; i < 6; i++) {
    if ((rc = sp_metrics_gauge(f, (const char *[]){peers[i]}, &g)))
      goto fail;
    sp_gauge_set(g, lag[i]);
  }
  if ((rc = sp_metrics_add_gauge(m, "sp_sse_clients", "Connected SSE clients.", NULL, 0, &f)) ||
      (rc = sp_metrics_gauge(f, NULL, &g)))
    goto fail;
  sp_gauge_set(g, 20000);
  if ((rc = sp_metrics_add_histogram(m, "sp_http_request_duration_seconds", "Latency.",
                                     (const char *[]){"route"}, 1, NULL, 0, &f)))
    goto fail;
  for (size_t i = 0; i < sizeof awkward / sizeof awkward[0]; i++) {
    if ((rc = sp_metrics_histogram(f, (const char *[]){awkward[i]}, &h)))
      goto fail;
    for (int k = 0; k < 20; k++)
      sp_histogram_observe(h, 0.0001 * (double)(k * k * (int)(i + 1)));
  }
  if ((rc = sp_metrics_add_histogram(m, "sp_http_response_size_bytes", "Body sizes.", NULL, 0,
                                     (const double[]){100, 1000, 1e4, 1e5, 1e6}, 5, &f)) ||
      (rc = sp_metrics_histogram(f, NULL, &h)))
    goto fail;
  sp_histogram_observe(h, 512);
  sp_histogram_observe(h, 2e6);
  *out = m;
  return 0;
fail:
  sp_metrics_free(m);
  return rc;
}

/* Fail each allocation in turn, through building and rendering: every
 * failure is SP_ERR_NOMEM and nothing leaks (ASan checks). */
static void test_allocation_failure_sweep(void **state) {
  (void)state;
  int idle = 2;
  sp_metrics *m;
  sp_buf out;
  sp_alloc_count_reset();
  assert_int_equal(build_full(&m, &idle), 0);
  sp_buf_init(&out, SP_BUF_UNLIMITED);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  long total = sp_alloc_count();
  sp_buf_release(&out);
  sp_metrics_free(m);
  assert_true(total > 20);
  for (long k = 0; k < total; k++) {
    sp_alloc_fail_after(k);
    int rc = build_full(&m, &idle);
    if (rc == 0) {
      sp_buf_init(&out, SP_BUF_UNLIMITED);
      rc = sp_metrics_render(m, &out);
      sp_buf_release(&out);
      sp_metrics_free(m);
    }
    sp_alloc_fail_after(-1);
    assert_int_equal(rc, SP_ERR_NOMEM);
  }
}

static void test_promtool_accepts_full_registry(void **state) {
  (void)state;
  int idle = 3;
  sp_metrics *m;
  assert_int_equal(build_full(&m, &idle), 0);
  sp_buf out;
  sp_buf_init(&out, SP_BUF_UNLIMITED);
  assert_int_equal(sp_metrics_render(m, &out), 0);
  char report[4096];
  int status = sp_fixture_promtool(out.base, strlen(out.base), report, sizeof report);
  if (status != 0 || report[0] != '\0')
    fail_msg("promtool exit %d (127: not installed; it is a declared dependency):\n%s\n"
             "--- input ---\n%s",
             status, report, out.base);
  /* the escapes really are in the text promtool accepted */
  assert_non_null(strstr(out.base, "route=\"two\\nlines\""));
  assert_non_null(strstr(out.base, "route=\"say \\\"hi\\\"\""));
  assert_non_null(strstr(out.base, "sp_replication_lag_seconds{peer=\"b\"} NaN\n"));
  sp_buf_release(&out);
  sp_metrics_free(m);

  /* and promtool does complain about a broken exposition, so the empty
   * report above means something */
  static const char bad[] = "# TYPE sp_bad counter\nsp_bad{a=\"x} 1\n";
  status = sp_fixture_promtool(bad, strlen(bad), report, sizeof report);
  assert_int_not_equal(status, 0);
  assert_true(report[0] != '\0');
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_render_exact),
      cmocka_unit_test(test_escaping),
      cmocka_unit_test(test_histogram_bucket_math),
      cmocka_unit_test(test_number_format),
      cmocka_unit_test(test_invalid_registrations),
      cmocka_unit_test(test_series_pointers_stable_and_capped),
      cmocka_unit_test(test_render_respects_buffer_cap),
      cmocka_unit_test(test_allocation_failure_sweep),
      cmocka_unit_test(test_promtool_accepts_full_registry),
  };
  return cmocka_run_group_tests_name("sp_metrics", tests, NULL, NULL);
}
