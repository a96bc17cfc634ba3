/* statusd-replicad against real processes: a three-region deployment made by
 * statusctl (a copy of config/topology.local.json in a temporary directory,
 * every port moved up by 21000 so neither `make run` nor test_statusctl
 * (+20000) is touched), written to through each region's management API.
 *
 * In order: bad command lines and topology files are refused with a
 * message; writes in every region (conflicting field writes to one
 * component from three regions, a delete racing an update, then a burst
 * in all three regions at once) converge within 1 s of the last write, as
 * `statusctl verify` and the public API of every region show; applied
 * changes are published on the region's Redis changes channel; /metrics
 * passes `promtool check metrics` and its per-peer lag, last contact,
 * bytes, counters and batch-size histograms are present and agree with
 * each other, and statusctl status reads the lag; a
 * client with a certificate from another CA is refused at the TLS
 * handshake, one with a cluster certificate for a region that is not a
 * peer gets 403; a malformed protobuf body gets 400 and the same
 * connection then still answers; a replicad stopped with SIGTERM exits 0,
 * the other regions keep replicating meanwhile, and once restarted it
 * catches up with what it missed; finally every replicad log is free of
 * sanitizer reports and shows each start ending in a graceful stop.
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

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
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

#include "crdt.h"
#include "deploy_harness.h"
#include "sp_err.h"
#include "sp_fixture.h"
#include "sp_h2.h"
#include "sp_tls.h"

#define PORT_SHIFT 21000
#define NREGIONS DH_NREGIONS
#define CONVERGE_MS 10000

static struct {
  dh_deploy d; /* temp dir, topology copy, ports, API key and page */
  int up;
} g;

/* statusctl --topology <copy> args... (NULL-terminated); the test fails
 * when it cannot run or times out. */
typedef dh_out run_out;
#define run(r, ...) dh_expect_ran(r, dh_run(&g.d, r, g.d.topo, __VA_ARGS__))

/* ---- setup ------------------------------------------------------------------ */

static int setup(void **state) {
  (void)state;
  return dh_deploy_setup(&g.d, "sp-replicad", PORT_SHIFT);
}

static int teardown(void **state) {
  (void)state;
  dh_deploy_teardown(&g.d);
  return 0;
}

/* ---- tests, in order -------------------------------------------------------- */

/* Bad command lines and files end with a clear message and status 2. */
static void test_bad_arguments(void **state) {
  (void)state;
  char out[8192], args[PATH_MAX + 128];
  assert_int_equal(dh_replicad_cmd(&g.d, "", "", out, sizeof out), 2);
  assert_non_null(strstr(out, "usage: statusd-replicad --topology FILE --region NAME"));
  assert_int_equal(dh_replicad_cmd(&g.d, "", "--bogus", out, sizeof out), 2);
  snprintf(args, sizeof args, "--topology '%s' --region mars", g.d.topo);
  assert_int_equal(dh_replicad_cmd(&g.d, "", args, out, sizeof out), 2);
  assert_non_null(strstr(out, "no region called mars"));
  snprintf(args, sizeof args, "--topology '%s/nope.json' --region us-east", g.d.dir);
  assert_int_equal(dh_replicad_cmd(&g.d, "", args, out, sizeof out), 2);
  assert_non_null(strstr(out, "nope.json"));
  char bad[PATH_MAX + 32];
  snprintf(bad, sizeof bad, "%s/bad.json", g.d.dir);
  FILE *f = fopen(bad, "w");
  assert_non_null(f);
  fputs("{\"version\": 1, \"cluster\": ", f);
  fclose(f);
  snprintf(args, sizeof args, "--topology '%s' --region us-east", bad);
  assert_int_equal(dh_replicad_cmd(&g.d, "", args, out, sizeof out), 2);
  assert_non_null(strstr(out, "invalid JSON"));
}

static void test_up(void **state) {
  (void)state;
  dh_up(&g.d);
  for (int i = 0; i < NREGIONS; i++)
    assert_true(dh_alive(dh_pidfile(&g.d, dh_regions[i], "statusd-replicad")));
  g.up = 1;
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
}

/* In a child process: 20 new components and 10 updates of component `id`
 * in `region`, each answered 2xx; 0 when all were. */
static int burst(int region, const char *id) {
  char path[256], json[256], *body;
  for (int k = 0; k < 30; k++) {
    if (k % 3 == 2) {
      snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.d.page, id);
      snprintf(json, sizeof json, "{\"component\":{\"description\":\"%s %d\"}}",
               dh_regions[region], k);
    } else {
      snprintf(path, sizeof path, "/v1/pages/%s/components", g.d.page);
      snprintf(json, sizeof json, "{\"component\":{\"name\":\"burst %s %d\"}}",
               dh_regions[region], k);
    }
    long code = dh_http_region(&g.d, region, k % 3 == 2 ? "PATCH" : "POST", path, json, &body);
    free(body);
    if (code < 200 || code > 299)
      return 1;
  }
  return 0;
}

static void test_writes_converge(void **state) {
  (void)state;
  assert_true(g.up);
  char path[256], id_a[64], id_b[64];
  /* a component made in us-east shows through the public API elsewhere */
  dh_new_component(&g.d, 0, "replicated", "operational", id_a, sizeof id_a);
  dh_wait_public(&g.d, 1, id_a, "operational", 5000);
  dh_wait_public(&g.d, 2, id_a, "operational", 5000);

  /* one made in ap-south, for the delete-versus-update race */
  dh_new_component(&g.d, 2, "doomed", "operational", id_b, sizeof id_b);
  dh_wait_public(&g.d, 0, id_b, "operational", 5000);
  dh_wait_public(&g.d, 1, id_b, "operational", 5000);

  /* conflicting writes to one component's fields from all three regions,
   * and a delete in us-east racing an update in eu-west */
  static const char *const st[NREGIONS] = {"major_outage", "degraded_performance",
                                           "partial_outage"};
  for (int i = 0; i < NREGIONS; i++) {
    char json[256];
    snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.d.page, id_a);
    snprintf(json, sizeof json, "{\"component\":{\"status\":\"%s\",\"description\":\"from %s\"}}",
             st[i], dh_regions[i]);
    json_decref(dh_write_ok(&g.d, i, "PATCH", path, json));
  }
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.d.page, id_b);
  json_decref(dh_write_ok(&g.d, 0, "DELETE", path, NULL));
  char *ignored;
  long code = dh_http_region(&g.d, 1, "PATCH", path,
                             "{\"component\":{\"status\":\"under_maintenance\"}}", &ignored);
  free(ignored);
  assert_true(code == 200 || code == 404); /* 404 if the delete got there first */
  /* then a bounded burst in all three regions at once (one process each):
   * new components, and conflicting updates of id_a's fields */
  pid_t kids[NREGIONS];
  for (int i = 0; i < NREGIONS; i++) {
    kids[i] = fork();
    assert_true(kids[i] >= 0);
    if (kids[i] == 0)
      _exit(burst(i, id_a));
  }
  for (int i = 0; i < NREGIONS; i++) {
    int wst;
    assert_int_equal(waitpid(kids[i], &wst, 0), kids[i]);
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
      fail_msg("the burst in %s failed (status %d)", dh_regions[i], wst);
  }

  /* the issue's promise: `statusctl verify` says converged within 1 s of
   * the last write's answer (each verify run included) */
  long took = dh_wait_converged_since(&g.d, "after conflicting writes", dh_now_ms(), CONVERGE_MS);
  fprintf(stderr, "converged %ld ms after the last write\n", took);
  if (took > 1000)
    fail_msg("converged only %ld ms after the writes stopped (promised: 1000 ms)", took);
  /* every region now answers the same for both components */
  char *first_a = dh_public_status(&g.d, 0, id_a), *first_b = dh_public_status(&g.d, 0, id_b);
  assert_non_null(first_a);
  assert_non_null(first_b);
  assert_string_not_equal(first_a, ""); /* nobody deleted it */
  int known = 0;
  for (int i = 0; i < NREGIONS; i++)
    known |= strcmp(first_a, st[i]) == 0;
  assert_true(known);
  for (int i = 1; i < NREGIONS; i++) {
    char *sa = dh_public_status(&g.d, i, id_a), *sb = dh_public_status(&g.d, i, id_b);
    assert_non_null(sa);
    assert_non_null(sb);
    assert_string_equal(sa, first_a);
    assert_string_equal(sb, first_b);
    free(sa);
    free(sb);
  }
  free(first_a);
  free(first_b);
}

/* A change applied in eu-west is published on eu-west's Redis changes
 * channel as a crdt delta (statusd-api's fast path); the write is made in
 * us-east, so only eu-west's replicad can have published it. */
static int has_change_of(const char *msg, size_t len, void *arg) {
  const char *id = arg;
  int seen = 0;
  crdt_delta *d;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  assert_int_equal(crdt_delta_decode(d, (const uint8_t *)msg, len), 0);
  for (size_t i = 0; i < crdt_delta_count(d); i++)
    seen |= strcmp(crdt_delta_get(d, i)->id, id) == 0 && crdt_delta_get(d, i)->origin == 0;
  crdt_delta_free(d);
  return seen;
}

static void test_applied_changes_published(void **state) {
  (void)state;
  assert_true(g.up);
  redisContext *rc = dh_subscribe(&g.d, 1, "changes");
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.d.page);
  json_t *a = dh_write_ok(&g.d, 0, "POST", path,
                       "{\"component\":{\"name\":\"published\",\"status\":\"operational\"}}");
  const char *id = json_string_value(json_object_get(a, "id"));
  assert_non_null(id);
  int seen = dh_wait_message(rc, 5000, has_change_of, (void *)id);
  redisFree(rc);
  if (!seen)
    fail_msg("no delta with component %s published on eu-west's channel", id);
  json_decref(a);
}

/* The value of `name`{peer="<peer>"} (suffix: "" or a histogram's "_sum",
 * "_count") in a Prometheus text body; NAN when the series is missing. */
static double peer_sample(const char *body, const char *name, const char *suffix,
                          const char *peer) {
  char pat[256];
  snprintf(pat, sizeof pat, "\n%s%s{peer=\"%s\"} ", name, suffix, peer);
  const char *at = strstr(body, pat);
  return at ? strtod(at + strlen(pat), NULL) : NAN;
}

/* cmocka: `promtool check metrics` (a declared dependency) exits 0 and
 * reports nothing for `body`; otherwise the test fails with its report. */
static void expect_promtool_clean(const char *body, size_t len) {
  char report[4096];
  int st = sp_fixture_promtool(body, len, report, sizeof report);
  if (st != 0 || report[0]) {
    /* cmocka cuts long messages: the input goes to stderr first */
    fprintf(stderr, "--- /metrics input ---\n%.*s\n", (int)len, body);
    fail_msg("promtool check metrics: exit %d (127: not installed), report:\n%s", st, report);
  }
}

/* us-east's /metrics after the writes above: valid Prometheus text with
 * the issue's per-peer set, and numbers that agree with each other (every
 * change applied is in the applied-batch histogram, every new batch sent
 * in the sent one); then statusctl status reads the lag from it. */
static void test_metrics_and_lag(void **state) {
  (void)state;
  assert_true(g.up);
  dh_probe *p = malloc(sizeof *p);
  dh_probe_open_as(p, &g.d, 0, 1); /* as eu-west */
  assert_int_equal(dh_probe_request(p, "GET", "/metrics", NULL, 0), 200);
  assert_true(p->body_len > 0); /* 0 also when it outgrew the probe's 64 KiB */
  expect_promtool_clean(p->body, p->body_len);
  assert_null(strstr(p->body, "peer=\"us-east\"")); /* not its own peer */
  double applied_all = 0, applied_batches = 0, now = (double)time(NULL);
  for (int i = 1; i < NREGIONS; i++) {
    const char *peer = dh_regions[i];
    double lag = peer_sample(p->body, "sp_repl_lag_seconds", "", peer);
    if (!isfinite(lag) || lag < 0 || lag > 60)
      fail_msg("lag to %s: %g s", peer, lag);
    assert_true(peer_sample(p->body, "sp_repl_connected", "", peer) == 1);
    double contact = peer_sample(p->body, "sp_repl_last_contact_timestamp_seconds", "", peer);
    if (!(contact > now - 60 && contact < now + 5))
      fail_msg("last contact with %s at %.3f, now %.0f", peer, contact, now);
    assert_true(peer_sample(p->body, "sp_repl_bytes_sent_total", "", peer) > 0);
    assert_true(peer_sample(p->body, "sp_repl_bytes_received_total", "", peer) > 0);
    /* us-east sent its writes above to both peers, in batches the sent
     * histogram saw one by one */
    double sent = peer_sample(p->body, "sp_repl_changes_sent_total", "", peer);
    assert_true(sent > 0);
    assert_true(peer_sample(p->body, "sp_repl_sent_batch_changes", "_sum", peer) == sent);
    assert_true(peer_sample(p->body, "sp_repl_sent_batch_changes", "_count", peer) ==
                peer_sample(p->body, "sp_repl_batches_sent_total", "", peer));
    /* applied: the histogram's sum is the counter, one observation (and
     * one timed transaction) per apply */
    double applied = peer_sample(p->body, "sp_repl_changes_applied_total", "", peer);
    double hsum = peer_sample(p->body, "sp_repl_applied_batch_changes", "_sum", peer);
    double hcount = peer_sample(p->body, "sp_repl_applied_batch_changes", "_count", peer);
    if (!(hsum == applied && applied >= 0 && hcount >= 0))
      fail_msg("from %s: applied %g, histogram sum %g count %g", peer, applied, hsum, hcount);
    assert_true(peer_sample(p->body, "sp_repl_apply_duration_seconds", "_count", peer) == hcount);
    assert_true(peer_sample(p->body, "sp_repl_skew_rejects_total", "", peer) == 0);
    applied_all += applied;
    applied_batches += hcount;
  }
  /* every region wrote above (and one peer's changes may have come relayed
   * through the other, so only the total must be > 0) */
  assert_true(applied_all > 0);
  assert_true(applied_batches > 0);
  assert_non_null(strstr(p->body, "\nsp_repl_log_floor{origin=\"us-east\"} "));
  assert_int_equal(dh_probe_request(p, "GET", "/ready", NULL, 0), 200);
  assert_int_equal(dh_probe_request(p, "GET", "/health", NULL, 0), 200);
  dh_probe_close(p);
  free(p);

  run_out *r = malloc(sizeof *r);
  run(r, "status", "--json", (const char *)NULL);
  dh_expect(r, 0, "status");
  json_t *s = json_loads(r->out, 0, NULL);
  assert_non_null(s);
  json_t *regions = json_is_array(s) ? s : json_object_get(s, "regions");
  json_t *lag = json_object_get(json_array_get(regions, 0), "replication_lag_ms");
  if (!json_is_object(lag))
    fail_msg("status --json has no lag object:\n%s", r->out);
  assert_true(json_is_number(json_object_get(lag, "eu-west")));
  assert_true(json_is_number(json_object_get(lag, "ap-south")));
  json_decref(s);
  free(r);
}

static void test_foreign_certificates_refused(void **state) {
  (void)state;
  assert_true(g.up);
  char ca[PATH_MAX + 64], cert[PATH_MAX + 64], key[PATH_MAX + 64], err[512];
  char cca[PATH_MAX + 64], ccakey[PATH_MAX + 64];
  /* a CA nobody in the cluster trusts, and an "eu-west" signed by it */
  snprintf(ca, sizeof ca, "%s/other-ca.pem", g.d.dir);
  snprintf(key, sizeof key, "%s/other-ca.key", g.d.dir);
  sp_tls_cert_spec spec = {"other-ca", 0, 1, -60, 3600, NULL, NULL};
  if (sp_tls_issue(&spec, ca, key, err, sizeof err))
    fail_msg("issue: %s", err);
  char lcert[PATH_MAX + 64], lkey[PATH_MAX + 64];
  snprintf(lcert, sizeof lcert, "%s/fake-eu-west.pem", g.d.dir);
  snprintf(lkey, sizeof lkey, "%s/fake-eu-west.key", g.d.dir);
  sp_tls_cert_spec leaf = {"eu-west", 1, 0, -60, 3600, ca, key};
  if (sp_tls_issue(&leaf, lcert, lkey, err, sizeof err))
    fail_msg("issue: %s", err);
  /* trusting the real CA (so the failure is ours being refused) */
  snprintf(cca, sizeof cca, "%s/var/tls/ca.pem", g.d.dir);
  dh_probe *p = malloc(sizeof *p);
  dh_probe_open(p, &g.d, 0, cca, lcert, lkey);
  int rc = dh_probe_request(p, "GET", "/metrics", NULL, 0);
  assert_int_not_equal(rc, 200);
  assert_true(rc < 0);
  dh_probe_wait(p, &p->disconnected, 5000);
  assert_true(p->disconnected);
  assert_false(p->connected && p->state_err == 0);
  dh_probe_close(p);

  /* a cluster certificate for a region that is not a peer: TLS is fine,
   * replication is refused */
  snprintf(ccakey, sizeof ccakey, "%s/var/tls/ca.key", g.d.dir);
  snprintf(cert, sizeof cert, "%s/mallory.pem", g.d.dir);
  snprintf(key, sizeof key, "%s/mallory.key", g.d.dir);
  sp_tls_cert_spec m = {"mallory", 1, 0, -60, 3600, cca, ccakey};
  if (sp_tls_issue(&m, cert, key, err, sizeof err))
    fail_msg("issue: %s", err);
  dh_probe_open(p, &g.d, 0, cca, cert, key);
  assert_int_equal(dh_probe_request(p, "POST", "/repl/v1/handshake", "x", 1), 403);
  assert_int_equal(dh_probe_request(p, "GET", "/metrics", NULL, 0), 403);
  dh_probe_close(p);
  free(p);
}

static void test_malformed_body(void **state) {
  (void)state;
  assert_true(g.up);
  dh_probe *p = malloc(sizeof *p);
  dh_probe_open_as(p, &g.d, 0, 2); /* as ap-south */
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34, 0x00, 0x99};
  assert_int_equal(dh_probe_request(p, "POST", "/repl/v1/batch", junk, sizeof junk), 400);
  assert_int_equal(dh_probe_request(p, "POST", "/repl/v1/handshake", junk, sizeof junk), 400);
  assert_int_equal(dh_probe_request(p, "POST", "/repl/v1/batch", "", 0), 400);
  assert_int_equal(dh_probe_request(p, "POST", "/repl/v1/nothing", junk, sizeof junk), 404);
  /* the same connection still works */
  assert_int_equal(dh_probe_request(p, "GET", "/metrics", NULL, 0), 200);
  const char *bad = strstr(p->body, "\nsp_repl_bad_requests_total ");
  assert_non_null(bad);
  assert_true(atol(bad + strlen("\nsp_repl_bad_requests_total ")) >= 3);
  dh_probe_close(p);
  free(p);
  /* and replication carries on: a write in us-east still reaches ap-south */
  char id[64];
  dh_new_component(&g.d, 0, "after junk", "major_outage", id, sizeof id);
  dh_wait_public(&g.d, 2, id, "major_outage", 5000);
}

static void test_sigterm_and_catch_up(void **state) {
  (void)state;
  assert_true(g.up);
  dh_stop(&g.d, 0, "statusd-replicad");
  /* a dead peer blocks no one: eu-west -> ap-south still flows */
  char id[64];
  dh_new_component(&g.d, 1, "while down", "partial_outage", id, sizeof id);
  dh_wait_public(&g.d, 2, id, "partial_outage", 5000);
  dh_sleep_ms(300);
  dh_expect_public(&g.d, 0, id, ""); /* us-east's own replicad is down */
  /* restarted, it catches up */
  dh_ctl_ok(&g.d, "up", "up again");
  dh_wait_public(&g.d, 0, id, "partial_outage", 8000);
  dh_wait_converged(&g.d, "after restart", CONVERGE_MS);
}

/* Every replicad log (after a graceful stop: LeakSanitizer reports at exit)
 * is free of sanitizer reports and crashes. */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  dh_ctl_ok(&g.d, "down", "down");
  dh_expect_replicad_logs_clean(&g.d, 1); /* every start ended gracefully */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_arguments),   cmocka_unit_test(test_up),
      cmocka_unit_test(test_writes_converge), cmocka_unit_test(test_applied_changes_published),
      cmocka_unit_test(test_metrics_and_lag), cmocka_unit_test(test_foreign_certificates_refused),
      cmocka_unit_test(test_malformed_body),  cmocka_unit_test(test_sigterm_and_catch_up),
      cmocka_unit_test(test_stop_logs_clean),
  };
  return cmocka_run_group_tests_name("replicad", tests, setup, teardown);
}
