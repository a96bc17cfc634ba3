/* statusctl against real processes, and sp_apply_remote against a real
 * PostgreSQL.
 *
 * Group "statusctl": a copy of config/topology.local.json in a temporary
 * directory, with its own state_dir and every port moved up by 20000 (so a
 * running `make run` is never touched; the region addresses stay
 * 127.0.0.11-13), driven through the statusctl binary beside the test's
 * build directory, in order: usage errors; up from nothing (three regions
 * ready, endpoints complete, the demo page readable through the public API
 * of every region, verify converged, status all up); up again is a no-op;
 * a port taken by a stranger is named; down stops every process; up again
 * restarts with the data kept (no duplicate page); verify detects a region
 * that diverged; down --purge refuses outside var/ without --force and then
 * removes the state.  The test process is a child subreaper, so the
 * daemons statusctl leaves behind become its children and are reaped here
 * (nothing else on this machine reaps orphans).  The group teardown runs
 * `down --purge --force` and SIGKILLs whatever a PID file still names.
 *
 * Group "apply_remote": sp_apply_remote (lib/sql/0003_apply_remote.sql) on
 * a fixture PostgreSQL: idempotence, gaps and out-of-order batches, LWW
 * through sp_merge_change, the local clock, malformed input, and a region
 * seeded from another's log ending with the same rows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "deploy_harness.h"
#include "sp_fixture.h"
#include "store_fixture.h"

#define PORT_SHIFT 20000
#define NREGIONS DH_NREGIONS

/* The test's one environment (test-only state). */
static struct {
  dh_deploy d; /* temp dir, topology copy, ports, API key, page, statusctl's extra env */
  int replicad_built;
} g;

/* ---- helpers ---------------------------------------------------------------- */

/* statusctl with args (NULL-terminated, after the --topology option unless
 * topo is NULL); the test fails when it cannot run, times out or prints a
 * sanitizer report. */
typedef dh_out run_out;
#define run_topo(r, topo, ...) dh_expect_ran(r, dh_run(&g.d, r, topo, __VA_ARGS__))
#define run(r, ...) run_topo(r, g.d.topo, __VA_ARGS__, (const char *)NULL)

static void api_url(int region, const char *path, char *out, size_t len) {
  if (snprintf(out, len, "http://%s:%d%s", dh_addrs[region], g.d.api_port, path) >= (int)len)
    fail_msg("URL too long: %s", path);
}

/* GET url until it answers 200 (up to ms); returns the parsed JSON body. */
static json_t *get_json(const char *url, const char *key, long ms) {
  long long end = dh_now_ms() + ms;
  for (;;) {
    char *b;
    long st = dh_http("GET", url, key, NULL, &b);
    if (st == 200) {
      json_t *j = json_loads(b, 0, NULL);
      if (j == NULL)
        fail_msg("GET %s: not JSON: %.300s", url, b);
      free(b);
      return j;
    }
    if (dh_now_ms() >= end)
      fail_msg("GET %s: status %ld: %.300s", url, st, b);
    free(b);
    dh_sleep_ms(100);
  }
}

/* Every process a PID file names: collected so a test can check they all
 * end. */
static size_t collect_pids(pid_t out[], size_t cap) {
  size_t n = 0;
  for (int r = 0; r < NREGIONS; r++)
    for (size_t p = 0; p < DH_NPROCS; p++) {
      pid_t pid = dh_pidfile(&g.d, dh_regions[r], dh_procs[p]);
      if (pid > 0 && n < cap)
        out[n++] = pid;
    }
  return n;
}

/* ---- group setup ------------------------------------------------------------- */

static int setup(void **state) {
  (void)state;
  if (dh_deploy_init(&g.d, "sp-statusctl", PORT_SHIFT) != 0)
    return -1;
  g.d.check_sanitizer = 1;
  /* build/tests/ops/test_statusctl -> build/statusctl, or $SP_STATUSCTL */
  const char *env = getenv("SP_STATUSCTL");
  if (env && *env)
    snprintf(g.d.statusctl, sizeof g.d.statusctl, "%s", env);
  if (access(g.d.statusctl, X_OK) != 0) {
    fprintf(stderr, "%s is not built (make)\n", g.d.statusctl);
    return -1;
  }
  char replicad[PATH_MAX + 32];
  snprintf(replicad, sizeof replicad, "%s", g.d.statusctl);
  snprintf(strrchr(replicad, '/'), 24, "/statusd-replicad");
  g.replicad_built = access(replicad, X_OK) == 0;
  return dh_deploy_prepare(&g.d) == 0 ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  dh_deploy_teardown(&g.d);
  return 0;
}

/* ---- the statusctl tests, in order ------------------------------------------------ */

static void test_usage_errors(void **state) {
  (void)state;
  run_out *r = malloc(sizeof *r);
  run_topo(r, NULL, (const char *)NULL);
  dh_expect(r, 2, "no command");
  assert_non_null(strstr(r->err, "usage:"));
  run(r, "launch");
  dh_expect(r, 2, "unknown command");
  assert_non_null(strstr(r->err, "unknown command 'launch'"));
  run(r, "status", "--purge");
  dh_expect(r, 2, "flag of another command");
  assert_non_null(strstr(r->err, "--purge"));
  run(r, "up", "--bogus");
  dh_expect(r, 2, "unknown flag");
  assert_non_null(strstr(r->err, "unknown flag '--bogus'"));
  run(r, "down", "--force");
  dh_expect(r, 2, "--force without --purge");
  run(r, "status", "extra");
  dh_expect(r, 2, "extra argument");
  assert_non_null(strstr(r->err, "'extra'"));
  /* a bad topology: the loader's message, field path included */
  char bad[PATH_MAX + 32];
  snprintf(bad, sizeof bad, "%s/bad.json", g.d.dir);
  json_t *t = json_load_file(g.d.topo, 0, NULL);
  assert_non_null(t);
  json_object_set_new(json_object_get(json_array_get(json_object_get(t, "regions"), 0), "api"),
                      "port", json_integer(70000));
  assert_int_equal(json_dump_file(t, bad, 0), 0);
  json_decref(t);
  run_topo(r, bad, "up", (const char *)NULL);
  dh_expect(r, 2, "bad topology");
  assert_non_null(strstr(r->err, "regions[0].api.port"));
  run_topo(r, "/nonexistent/topology.json", "status", (const char *)NULL);
  dh_expect(r, 2, "missing topology");
  assert_non_null(strstr(r->err, "/nonexistent/topology.json"));
  /* statusd-api create-admin-key --key checks the key before anything */
  char api[PATH_MAX + 32];
  snprintf(api, sizeof api, "%s", g.d.statusctl);
  snprintf(strrchr(api, '/'), 20, "/statusd-api");
  static const char *const bad_keys[] = {"short", "has space in it 0123456789",
                                         "quote'quote'quote'quote'", NULL};
  for (int i = 0; bad_keys[i]; i++) {
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' --topology '%s' --region us-east create-admin-key --key \"%s\" "
             "2>&1 | grep -q 'expected 20-100 characters'", api, g.d.topo, bad_keys[i]);
    if (system(cmd) != 0)
      fail_msg("statusd-api accepted or misreported --key '%s'", bad_keys[i]);
  }
  char cmd[3 * PATH_MAX];
  snprintf(cmd, sizeof cmd, "'%s' --topology '%s' --region us-east --key %s serve >/dev/null 2>&1",
           api, g.d.topo, "abcdefghijklmnopqrstuvwxyz");
  int st = system(cmd);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
  /* nothing was started by any of it */
  struct stat sb;
  assert_int_equal(stat(g.d.state, &sb), -1);
  free(r);
}

static void check_demo_page(int region) {
  char url[256], path[128];
  snprintf(path, sizeof path, "/pages/%s/api/v2/summary.json", g.d.page);
  api_url(region, path, url, sizeof url);
  json_t *s = get_json(url, NULL, 5000);
  assert_string_equal(json_string_value(json_object_get(json_object_get(s, "page"), "name")),
                      "Acme Cloud (demo)");
  json_t *comps = json_object_get(s, "components");
  size_t i, groups = 0, members = 0;
  json_t *c;
  json_array_foreach(comps, i, c) {
    if (json_is_true(json_object_get(c, "group"))) {
      groups++;
      assert_string_equal(json_string_value(json_object_get(c, "name")), "Core services");
    } else if (json_is_string(json_object_get(c, "group_id"))) {
      members++;
    }
  }
  assert_int_equal(json_array_size(comps), 5); /* 4 components + the group */
  assert_int_equal(groups, 1);
  assert_int_equal(members, 2);
  json_t *incs = json_object_get(s, "incidents"); /* unresolved ones */
  assert_int_equal(json_array_size(incs), 1);
  json_t *inc = json_array_get(incs, 0);
  assert_string_equal(json_string_value(json_object_get(inc, "status")), "identified");
  assert_int_equal(json_array_size(json_object_get(inc, "incident_updates")), 2);
  json_decref(s);
}

static void check_certificates(void) {
  char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/tls/ca.pem", g.d.state);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  X509 *ca = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  assert_non_null(ca);
  EVP_PKEY *capub = X509_get_pubkey(ca);
  for (int r = 0; r < NREGIONS; r++) {
    snprintf(path, sizeof path, "%s/tls/%s.pem", g.d.state, dh_regions[r]);
    f = fopen(path, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    assert_int_equal(X509_verify(x, capub), 1);
    assert_int_equal(X509_check_host(x, dh_regions[r], 0, 0, NULL), 1);
    X509_free(x);
    struct stat sb;
    snprintf(path, sizeof path, "%s/tls/%s.key", g.d.state, dh_regions[r]);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
  }
  struct stat sb;
  snprintf(path, sizeof path, "%s/tls/ca.key", g.d.state);
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  EVP_PKEY_free(capub);
  X509_free(ca);
}

static void test_up_from_nothing(void **state) {
  (void)state;
  run_out *r = malloc(sizeof *r);
  run(r, "up");
  dh_expect(r, 0, "up");
  assert_non_null(strstr(r->out, "created the demo page"));
  assert_non_null(strstr(r->out, "eu-west: seeded"));
  assert_non_null(strstr(r->out, "ap-south: seeded"));
  /* endpoints --json: complete and right */
  run(r, "endpoints", "--json");
  dh_expect(r, 0, "endpoints --json");
  json_t *e = json_loads(r->out, 0, NULL);
  assert_non_null(e);
  json_t *regions = json_object_get(e, "regions");
  assert_int_equal(json_array_size(regions), NREGIONS);
  for (int i = 0; i < NREGIONS; i++) {
    json_t *x = json_array_get(regions, (size_t)i);
    char want[256];
    assert_string_equal(json_string_value(json_object_get(x, "name")), dh_regions[i]);
    api_url(i, "", want, sizeof want);
    assert_string_equal(json_string_value(json_object_get(x, "api")), want);
    api_url(i, "/ready", want, sizeof want);
    assert_string_equal(json_string_value(json_object_get(x, "ready")), want);
    api_url(i, "/metrics", want, sizeof want);
    assert_string_equal(json_string_value(json_object_get(x, "metrics")), want);
    snprintf(want, sizeof want, "https://%s:%d", dh_addrs[i], 8443 + PORT_SHIFT);
    assert_string_equal(json_string_value(json_object_get(x, "replication")), want);
  }
  const char *key = json_string_value(json_object_get(e, "admin_key"));
  const char *page = json_string_value(json_object_get(e, "demo_page_id"));
  assert_non_null(key);
  assert_non_null(page);
  snprintf(g.d.key, sizeof g.d.key, "%s", key);
  snprintf(g.d.page, sizeof g.d.page, "%s", page);
  json_decref(e);
  char path[sizeof g.d.state + 32];
  snprintf(path, sizeof path, "%s/statusctl.json", g.d.state);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_mode & 0777, 0600);
  check_certificates();

  /* every region: ready, the demo page through the public API, the admin
   * key through the management API (seeded, not created there) */
  for (int i = 0; i < NREGIONS; i++) {
    char url[256];
    api_url(i, "/ready", url, sizeof url);
    assert_int_equal(dh_http("GET", url, NULL, NULL, NULL), 200);
    check_demo_page(i);
    api_url(i, "/v1/pages", url, sizeof url);
    json_t *pages = get_json(url, g.d.key, 5000);
    assert_int_equal(json_array_size(pages), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(pages, 0), "id")),
                        g.d.page);
    json_decref(pages);
    /* a wrong key is refused: the check above means something */
    assert_int_equal(dh_http("GET", url, "sp_wrongwrongwrongwrongwrong", NULL, NULL), 401);
  }

  /* verify: converged */
  run(r, "verify");
  dh_expect(r, 0, "verify");
  assert_non_null(strstr(r->out, "converged"));

  /* status: everything up */
  run(r, "status", "--json");
  dh_expect(r, 0, "status --json");
  json_t *s = json_loads(r->out, 0, NULL);
  assert_non_null(s);
  assert_true(json_is_true(json_object_get(s, "healthy")));
  for (int i = 0; i < NREGIONS; i++) {
    json_t *x = json_array_get(json_object_get(s, "regions"), (size_t)i);
    assert_string_equal(json_string_value(json_object_get(x, "name")), dh_regions[i]);
    assert_true(json_is_true(json_object_get(x, "ready")));
    json_t *procs = json_object_get(x, "processes");
    for (size_t p = 0; p < DH_NPROCS; p++) {
      json_t *pr = json_object_get(procs, dh_procs[p]);
      const char *st = json_string_value(json_object_get(pr, "state"));
      if (p == 3 && !g.replicad_built) {
        assert_string_equal(st, "not built");
        continue;
      }
      assert_string_equal(st, "up");
      pid_t pid = (pid_t)json_integer_value(json_object_get(pr, "pid"));
      assert_int_equal(pid, dh_pidfile(&g.d, dh_regions[i], dh_procs[p]));
      assert_true(dh_alive(pid));
    }
    if (!g.replicad_built)
      assert_string_equal(json_string_value(json_object_get(x, "replication")),
                          "n/a (replicad not built)");
  }
  json_decref(s);
  run(r, "status");
  dh_expect(r, 0, "status");
  assert_non_null(strstr(r->out, "ap-south"));
  free(r);
}

static void test_up_again_is_a_noop(void **state) {
  (void)state;
  pid_t before[32], after[32];
  size_t n = collect_pids(before, 32);
  assert_true(n >= 9);
  run_out *r = malloc(sizeof *r);
  run(r, "up");
  dh_expect(r, 0, "second up");
  assert_null(strstr(r->out, "started"));
  assert_null(strstr(r->out, "created"));
  assert_null(strstr(r->out, "changes from"));
  assert_non_null(strstr(r->out, "already running"));
  assert_int_equal(collect_pids(after, 32), n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(after[i], before[i]);
    assert_true(dh_alive(after[i]));
  }
  free(r);
}

static void test_down_stops_everything(void **state) {
  (void)state;
  pid_t pids[32];
  size_t n = collect_pids(pids, 32);
  assert_true(n >= 9);
  run_out *r = malloc(sizeof *r);
  run(r, "down");
  dh_expect(r, 0, "down");
  for (size_t i = 0; i < n; i++)
    if (dh_alive(pids[i]))
      fail_msg("pid %ld still alive after down", (long)pids[i]);
  /* nothing listens any more, and status says so */
  char url[256];
  api_url(0, "/health", url, sizeof url);
  assert_int_equal(dh_http("GET", url, NULL, NULL, NULL), 0);
  run(r, "status");
  dh_expect(r, 1, "status when down");
  run(r, "down");
  dh_expect(r, 0, "down again");
  assert_non_null(strstr(r->out, "nothing was running"));
  free(r);
}

static void test_port_in_use_is_named(void **state) {
  (void)state;
  /* a stranger listens on eu-west's API port */
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  /* the API that listened here before may have left TIME_WAIT behind */
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)g.d.api_port);
  inet_pton(AF_INET, dh_addrs[1], &a.sin_addr);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 4), 0);
  run_out *r = malloc(sizeof *r);
  run(r, "up");
  close(fd);
  dh_expect(r, 1, "up with a taken port");
  char want[128];
  snprintf(want, sizeof want, "eu-west: statusd-api: %s:%d is already in use", dh_addrs[1],
           g.d.api_port);
  if (strstr(r->err, want) == NULL)
    fail_msg("stderr does not say '%s':\n%s", want, r->err);
  /* what did start is stopped again */
  run(r, "down");
  dh_expect(r, 0, "down after the failed up");
  free(r);
}

/* A service that does not come up: up fails naming it, with its log. */
static void test_failing_service_is_reported(void **state) {
  (void)state;
  char sql[sizeof g.d.dir + 32], file[sizeof g.d.dir + 64], env[sizeof g.d.dir + 48];
  snprintf(sql, sizeof sql, "%s/badsql", g.d.dir);
  assert_int_equal(mkdir(sql, 0755), 0);
  snprintf(file, sizeof file, "%s/9999_broken.sql", sql);
  FILE *f = fopen(file, "w");
  assert_non_null(f);
  fputs("CREATE TABLE broken (;\n", f);
  fclose(f);
  chmod(file, 0644);
  /* statusd-api reads its migrations from $SP_SQL_DIR */
  snprintf(env, sizeof env, "SP_SQL_DIR=%s", sql);
  g.d.child_env = env;
  run_out *r = malloc(sizeof *r);
  run(r, "up");
  g.d.child_env = NULL;
  dh_expect(r, 1, "up with a statusd-api that cannot migrate");
  if (strstr(r->err, "statusd-api exited while starting") == NULL ||
      strstr(r->err, "statusd-api.log") == NULL || strstr(r->err, "9999_broken.sql") == NULL)
    fail_msg("stderr does not name the process and show its log:\n%s", r->err);
  run(r, "down");
  dh_expect(r, 0, "down after the failed up");
  free(r);
}

static void test_up_after_down_keeps_data(void **state) {
  (void)state;
  run_out *r = malloc(sizeof *r);
  run(r, "up");
  dh_expect(r, 0, "up after down");
  assert_non_null(strstr(r->out, "statusd-api started"));
  assert_null(strstr(r->out, "initialised"));
  assert_null(strstr(r->out, "created"));
  run(r, "endpoints", "--json");
  dh_expect(r, 0, "endpoints");
  json_t *e = json_loads(r->out, 0, NULL);
  assert_non_null(e);
  assert_string_equal(json_string_value(json_object_get(e, "admin_key")), g.d.key);
  assert_string_equal(json_string_value(json_object_get(e, "demo_page_id")), g.d.page);
  json_decref(e);
  for (int i = 0; i < NREGIONS; i++) {
    check_demo_page(i);
    char url[256];
    api_url(i, "/v1/pages", url, sizeof url);
    json_t *pages = get_json(url, g.d.key, 5000);
    assert_int_equal(json_array_size(pages), 1); /* not duplicated */
    json_decref(pages);
  }
  free(r);
}

static void test_verify_names_a_diverged_page(void **state) {
  (void)state;
  char url[256], path[256];
  run_out *r = malloc(sizeof *r);
  run(r, "verify");
  dh_expect(r, 0, "verify before the change");
  /* a write in ap-south only: nothing replicates it (no replicad) */
  snprintf(path, sizeof path, "/v1/pages/%s/components/%scdn", g.d.page, g.d.page);
  api_url(2, path, url, sizeof url);
  char *b;
  long st = dh_http("PATCH", url, g.d.key, "{\"component\":{\"status\":\"major_outage\"}}", &b);
  if (st != 200)
    fail_msg("PATCH %s: %ld %s", url, st, b);
  free(b);
  if (g.replicad_built) {
    free(r);
    return; /* a running replicad would converge the regions again */
  }
  long long end = dh_now_ms() + 5000;
  do {
    run(r, "verify");
  } while (r->status == 0 && dh_now_ms() < end);
  dh_expect(r, 1, "verify after a write in one region");
  assert_non_null(strstr(r->out, "NOT converged"));
  assert_non_null(strstr(r->out, g.d.page));
  assert_non_null(strstr(r->out, "ap-south="));
  run(r, "verify", "--json");
  dh_expect(r, 1, "verify --json");
  json_t *v = json_loads(r->out, 0, NULL);
  assert_non_null(v);
  assert_true(json_is_false(json_object_get(v, "converged")));
  json_t *pages = json_object_get(v, "differing_pages");
  assert_int_equal(json_object_size(pages), 1);
  json_t *per = json_object_get(pages, g.d.page);
  assert_non_null(per);
  const char *us = json_string_value(json_object_get(per, "us-east"));
  const char *eu = json_string_value(json_object_get(per, "eu-west"));
  const char *ap = json_string_value(json_object_get(per, "ap-south"));
  assert_non_null(us);
  assert_non_null(ap);
  assert_string_equal(us, eu);
  assert_string_not_equal(us, ap);
  json_decref(v);
  free(r);
}

static void test_purge(void **state) {
  (void)state;
  pid_t pids[32];
  size_t n = collect_pids(pids, 32);
  assert_true(n >= 9);
  run_out *r = malloc(sizeof *r);
  /* the state dir is not the repository's var/: refused, nothing stopped */
  run(r, "down", "--purge");
  dh_expect(r, 2, "purge outside var/");
  assert_non_null(strstr(r->err, "--force"));
  for (size_t i = 0; i < n; i++)
    assert_true(dh_alive(pids[i]));
  struct stat sb;
  assert_int_equal(stat(g.d.state, &sb), 0);
  /* something statusctl did not make in the state dir: refused even with
   * --force */
  char stray[sizeof g.d.state + 32];
  snprintf(stray, sizeof stray, "%s/notes.txt", g.d.state);
  FILE *f = fopen(stray, "w");
  assert_non_null(f);
  fclose(f);
  run(r, "down", "--purge", "--force");
  dh_expect(r, 2, "purge of a dir with a stranger's file");
  assert_non_null(strstr(r->err, "notes.txt"));
  unlink(stray);
  run(r, "down", "--purge", "--force");
  dh_expect(r, 0, "down --purge --force");
  for (size_t i = 0; i < n; i++)
    if (dh_alive(pids[i]))
      fail_msg("pid %ld still alive after down --purge", (long)pids[i]);
  assert_int_equal(stat(g.d.state, &sb), -1);
  assert_int_equal(errno, ENOENT);
  run(r, "endpoints", "--json");
  dh_expect(r, 0, "endpoints after purge");
  json_t *e = json_loads(r->out, 0, NULL);
  assert_non_null(e);
  assert_true(json_is_null(json_object_get(e, "admin_key")));
  json_decref(e);
  free(r);
}

/* ---- sp_apply_remote ---------------------------------------------------------------- */

static sp_fixture_pg g_pg;

static int pg_setup(void **state) {
  (void)state;
  if (sp_fixture_pg_start(&g_pg))
    return -1;
  static const char *const dbs[] = {"ra", "rb"};
  char sql[128];
  for (int i = 0; i < 2; i++) {
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", dbs[i]);
    if (sp_fixture_pg_psql(&g_pg, sql))
      return -1;
  }
  char ci[1200];
  for (int i = 0; i < 2; i++) {
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=%s user=%s", g_pg.port, dbs[i],
             g_pg.user);
    if (sf_migrate(ci))
      return -1;
  }
  return 0;
}

static int pg_teardown(void **state) {
  (void)state;
  sp_fixture_pg_stop(&g_pg);
  return 0;
}

static PGconn *db(const char *name) {
  char ci[1200];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=%s user=%s", g_pg.port, name, g_pg.user);
  PGconn *c = PQconnectdb(ci);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  return c;
}

static long q(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", sql, PQerrorMessage(c));
  long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)
               ? atol(PQgetvalue(r, 0, 0))
               : -1;
  PQclear(r);
  return v;
}

/* sp_apply_remote(json, local) -> applied; fails the test on error. */
static long apply(PGconn *c, const char *json, const char *local) {
  const char *p[2] = {json, local};
  PGresult *r = PQexecParams(c, "SELECT sp_apply_remote($1::jsonb, $2::smallint)", 2, NULL, p,
                             NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    fail_msg("sp_apply_remote(%s): %s", json, PQerrorMessage(c));
  long v = atol(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* sp_apply_remote expected to fail with SQLSTATE 22023 and a message
 * holding `needle`. */
static void apply_bad(PGconn *c, const char *json, const char *needle) {
  const char *p[1] = {json};
  PGresult *r = PQexecParams(c, "SELECT sp_apply_remote($1::jsonb)", 1, NULL, p, NULL, NULL, 0);
  assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
  assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22023");
  if (strstr(PQerrorMessage(c), needle) == NULL)
    fail_msg("error for %s does not name '%s': %s", json, needle, PQerrorMessage(c));
  PQclear(r);
}

/* A field change of `origin` for entity (pg, component, c1). */
static void change_of(char *out, size_t len, int origin, long seq, long hlc, const char *value) {
  snprintf(out, len,
           "{\"k\":1,\"p\":\"pg\",\"t\":\"component\",\"i\":\"c1\",\"f\":\"name\",\"v\":\"%s\","
           "\"cl\":1,\"hlc\":%ld,\"region\":%d,\"origin\":%d,\"seq\":%ld}",
           value, hlc, origin, origin, seq);
}

static void change(char *out, size_t len, long seq, long hlc, const char *value) {
  change_of(out, len, 1, seq, hlc, value);
}

/* sp_apply_remote_vector for change `seq` (origin 1) into region 2 with
 * peer 1's acknowledged vector {origin 1, origin 2} = `seqs`. */
static PGresult *apply_with_acks(PGconn *c, long seq, long hlc, const char *seqs) {
  char one[512], batch[1024];
  change(one, sizeof one, seq, hlc, "acked");
  snprintf(batch, sizeof batch, "[%s]", one);
  const char *p[5] = {batch, "2", "1", "{1,2}", seqs};
  return PQexecParams(c, "SELECT applied FROM sp_apply_remote_vector($1::jsonb, $2::smallint, "
                         "$3::smallint, $4::smallint[], $5::bigint[])",
                      5, NULL, p, NULL, NULL, 0);
}

static void test_apply_idempotent_and_gaps(void **state) {
  (void)state;
  PGconn *c = db("rb");
  q(c, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_region_clock, sp_vclock");
  char c1[512], c2[512], c3[512], c4[512], c5[512], c6[512], batch[4096];
  /* the entity exists (seq 1), then its name is set three times */
  snprintf(c1, sizeof c1,
           "{\"k\":2,\"p\":\"pg\",\"t\":\"component\",\"i\":\"c1\",\"cl\":1,\"hlc\":100,"
           "\"region\":1,\"origin\":1,\"seq\":1}");
  change(c2, sizeof c2, 2, 101, "two");
  change(c3, sizeof c3, 3, 102, "three");
  change(c4, sizeof c4, 4, 103, "four");
  change(c5, sizeof c5, 5, 104, "five");
  change(c6, sizeof c6, 6, 99, "older stamp");
  snprintf(batch, sizeof batch, "[%s,%s,%s]", c1, c2, c3);
  assert_int_equal(apply(c, batch, "2"), 3);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 3);
  /* twice: nothing changes */
  assert_int_equal(apply(c, batch, "2"), 0);
  assert_int_equal(q(c, "SELECT count(*) FROM sp_change_log"), 3);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 3);
  assert_int_equal(q(c, "SELECT count(*) FROM sp_field WHERE value = 'three'"), 1);
  /* a gap: 5 and 6 arrive before 4; the vector waits at 3 */
  snprintf(batch, sizeof batch, "[%s,%s]", c6, c5);
  assert_int_equal(apply(c, batch, "2"), 2);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 3);
  assert_int_equal(q(c, "SELECT count(*) FROM sp_change_log WHERE seq IN (5, 6)"), 2);
  assert_int_equal(apply(c, batch, "2"), 0); /* received beyond the gap: not again */
  /* the hole is filled: the vector moves over everything present */
  snprintf(batch, sizeof batch, "[%s]", c4);
  assert_int_equal(apply(c, batch, "2"), 1);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 6);
  /* LWW: the highest stamp (five, hlc 104) won, whatever the order */
  PGresult *res = PQexec(c, "SELECT value FROM sp_field WHERE id = 'c1' AND field = 'name'");
  assert_int_equal(PQntuples(res), 1);
  assert_string_equal(PQgetvalue(res, 0, 0), "five");
  PQclear(res);
  /* duplicates within one batch count once; out of order within a batch */
  char c7[512], c8[512], c9[512];
  change(c7, sizeof c7, 7, 200, "seven");
  change(c8, sizeof c8, 8, 201, "eight");
  change(c9, sizeof c9, 9, 202, "nine");
  snprintf(batch, sizeof batch, "[%s,%s,%s,%s]", c9, c7, c8, c7);
  assert_int_equal(apply(c, batch, "2"), 3);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 9);
  /* the local clock observed the highest stamp applied */
  assert_int_equal(q(c, "SELECT hlc FROM sp_region_clock WHERE region = 2"), 202);
  /* a change whose origin is the local region is never applied from
   * outside */
  char own[512];
  snprintf(own, sizeof own,
           "[{\"k\":2,\"p\":\"pg\",\"t\":\"component\",\"i\":\"c2\",\"cl\":1,\"hlc\":300,"
           "\"region\":2,\"origin\":2,\"seq\":1}]");
  assert_int_equal(apply(c, own, "2"), 0);
  assert_int_equal(q(c, "SELECT count(*) FROM sp_entity WHERE id = 'c2'"), 0);
  /* sp_apply_remote_vector (lib/sql/0007): the count on every row, and
   * the vector as committed, in one statement */
  char ten[512], vbatch[1024];
  change(ten, sizeof ten, 10, 210, "ten");
  snprintf(vbatch, sizeof vbatch, "[%s]", ten);
  const char *pv[2] = {vbatch, "2"};
  PGresult *vr = PQexecParams(c,
                              "SELECT applied, origin, seq FROM sp_apply_remote_vector($1::jsonb, "
                              "$2::smallint) ORDER BY origin",
                              2, NULL, pv, NULL, NULL, 0);
  assert_int_equal(PQresultStatus(vr), PGRES_TUPLES_OK);
  assert_int_equal(PQntuples(vr), 1);
  assert_string_equal(PQgetvalue(vr, 0, 0), "1");
  assert_string_equal(PQgetvalue(vr, 0, 1), "1");
  assert_string_equal(PQgetvalue(vr, 0, 2), "10");
  PQclear(vr);
  vr = PQexecParams(c, "SELECT applied, origin, seq FROM sp_apply_remote_vector($1::jsonb, "
                       "$2::smallint)", 2, NULL, pv, NULL, NULL, 0);
  assert_int_equal(PQresultStatus(vr), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(vr, 0, 0), "0"); /* again: nothing new */
  PQclear(vr);
  /* with the peer's acknowledged vector: upserted in the same statement
   * (and transaction) as the applied data; a mismatched vector refuses
   * the whole call */
  vr = apply_with_acks(c, 11, 211, "{5,7}");
  assert_int_equal(PQresultStatus(vr), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(vr, 0, 0), "1");
  PQclear(vr);
  assert_int_equal(q(c, "SELECT seq FROM sp_peer_ack WHERE peer = 1 AND origin = 2"), 7);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 11);
  vr = apply_with_acks(c, 12, 212, "{9}");
  assert_int_equal(PQresultStatus(vr), PGRES_FATAL_ERROR);
  PQclear(vr);
  assert_int_equal(q(c, "SELECT seq FROM sp_vclock WHERE origin = 1"), 11); /* nothing applied */
  assert_int_equal(q(c, "SELECT seq FROM sp_peer_ack WHERE peer = 1 AND origin = 2"), 7);
  /* without p_local the same change is applied */
  const char *p[1] = {own};
  res = PQexecParams(c, "SELECT sp_apply_remote($1::jsonb)", 1, NULL, p, NULL, NULL, 0);
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(res, 0, 0), "1");
  PQclear(res);
  PQfinish(c);
}

static void test_apply_refuses_malformed(void **state) {
  (void)state;
  PGconn *c = db("rb");
  long before = q(c, "SELECT count(*) FROM sp_change_log");
  apply_bad(c, "{\"k\":1}", "array");
  apply_bad(c, "[1]", "not an object");
  /* one bad change refuses the batch, good ones before it included */
  char good[512], batch[2048];
  change(good, sizeof good, 100, 500, "x");
  snprintf(batch, sizeof batch,
           "[%s,{\"k\":1,\"p\":\"pg\",\"t\":\"component\",\"i\":\"c1\",\"f\":\"name\",\"v\":\"x\","
           "\"cl\":1,\"hlc\":5,\"region\":1,\"origin\":1}]",
           good);
  apply_bad(c, batch, "\"seq\"");
  apply_bad(c,
            "[{\"k\":3,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"cl\":1,\"hlc\":5,\"region\":1,"
            "\"origin\":1,\"seq\":1}]",
            "\"k\"");
  apply_bad(c,
            "[{\"k\":1,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"cl\":1,\"hlc\":5,\"region\":1,"
            "\"origin\":1,\"seq\":1}]",
            "\"f\"");
  apply_bad(c,
            "[{\"k\":1,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"f\":\"a\",\"v\":7,\"cl\":1,"
            "\"hlc\":5,\"region\":1,\"origin\":1,\"seq\":1}]",
            "\"v\"");
  apply_bad(c,
            "[{\"k\":2,\"p\":\"\",\"t\":\"x\",\"i\":\"y\",\"cl\":1,\"hlc\":5,\"region\":1,"
            "\"origin\":1,\"seq\":1}]",
            "\"p\"");
  apply_bad(c,
            "[{\"k\":2,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"cl\":1,\"hlc\":\"5\",\"region\":1,"
            "\"origin\":1,\"seq\":1}]",
            "\"hlc\"");
  apply_bad(c,
            "[{\"k\":2,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"cl\":1,\"hlc\":-5,\"region\":1,"
            "\"origin\":1,\"seq\":1}]",
            "\"hlc\"");
  apply_bad(c,
            "[{\"k\":2,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"cl\":0,\"hlc\":5,\"region\":1,"
            "\"origin\":1,\"seq\":1}]",
            "out of range");
  apply_bad(c,
            "[{\"k\":2,\"p\":\"pg\",\"t\":\"x\",\"i\":\"y\",\"cl\":1,\"hlc\":5,\"region\":1,"
            "\"origin\":99999,\"seq\":1}]",
            "out of range");
  assert_int_equal(q(c, "SELECT count(*) FROM sp_change_log"), before);
  assert_int_equal(apply(c, "[]", "2"), 0);
  PQfinish(c);
}

/* Two appliers of one origin run one after the other (the second sees
 * what the first committed and applies only the rest), and an applier
 * waiting behind a local write's clock row finishes once it commits. */
static void test_apply_concurrent(void **state) {
  (void)state;
  PGconn *a = db("rb"), *b = db("rb");
  q(a, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_region_clock, sp_vclock");
  char ch[6][512], batch[4096];
  for (int i = 1; i <= 5; i++)
    change_of(ch[i], sizeof ch[i], 3, i, 1000 + i, "v");
  q(a, "BEGIN");
  snprintf(batch, sizeof batch, "[%s,%s,%s]", ch[1], ch[2], ch[3]);
  assert_int_equal(apply(a, batch, "2"), 3);
  snprintf(batch, sizeof batch, "[%s,%s,%s,%s]", ch[2], ch[3], ch[4], ch[5]);
  const char *p[2] = {batch, "2"};
  assert_int_equal(PQsendQueryParams(b, "SELECT sp_apply_remote($1::jsonb, $2::smallint)", 2, NULL,
                                     p, NULL, NULL, 0),
                   1);
  dh_sleep_ms(300);
  assert_int_equal(PQconsumeInput(b), 1);
  assert_int_equal(PQisBusy(b), 1); /* waiting for a's lock on origin 3 */
  q(a, "COMMIT");
  PGresult *res = PQgetResult(b);
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  assert_string_equal(PQgetvalue(res, 0, 0), "2"); /* 4 and 5 only */
  PQclear(res);
  while ((res = PQgetResult(b)) != NULL)
    PQclear(res);
  assert_int_equal(q(a, "SELECT seq FROM sp_vclock WHERE origin = 3"), 5);
  assert_int_equal(q(a, "SELECT count(*) FROM sp_change_log WHERE origin = 3"), 5);

  /* a local write of region 2 holds its clock row; an applier with
   * p_local = 2 waits for it at the end and then completes */
  q(a, "BEGIN");
  q(a, "SELECT sp_write(2::smallint, 1::bigint, '[{\"op\":\"create\",\"p\":\"pg\","
       "\"t\":\"component\",\"i\":\"local1\"}]'::jsonb, NULL)");
  char six[512];
  change_of(six, sizeof six, 3, 6, 1u << 30, "six");
  snprintf(batch, sizeof batch, "[%s]", six);
  const char *p2[2] = {batch, "2"};
  assert_int_equal(PQsendQueryParams(b, "SELECT sp_apply_remote($1::jsonb, $2::smallint)", 2, NULL,
                                     p2, NULL, NULL, 0),
                   1);
  dh_sleep_ms(300);
  assert_int_equal(PQconsumeInput(b), 1);
  assert_int_equal(PQisBusy(b), 1); /* waiting for the clock row */
  q(a, "COMMIT");
  res = PQgetResult(b);
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("apply behind a local write: %s", PQerrorMessage(b));
  assert_string_equal(PQgetvalue(res, 0, 0), "1");
  PQclear(res);
  while ((res = PQgetResult(b)) != NULL)
    PQclear(res);
  assert_int_equal(q(a, "SELECT hlc FROM sp_region_clock WHERE region = 2"), 1L << 30);

  /* no deadlock between an apply and a local write to the same fields: the
   * local write holds the clock row and field fx; the apply (fa, then fx)
   * must not take fa before the clock row, or the local write's next
   * statement (fa) waits for the apply that waits for it */
  q(a, "SELECT sp_write(2::smallint, 2::bigint, '[{\"op\":\"create\",\"p\":\"pg\","
       "\"t\":\"component\",\"i\":\"local2\"}]'::jsonb, NULL)");
  q(a, "BEGIN");
  q(a, "SELECT sp_write(2::smallint, 3::bigint, '[{\"op\":\"set\",\"p\":\"pg\","
       "\"t\":\"component\",\"i\":\"local2\",\"f\":\"fx\",\"v\":\"a\"}]'::jsonb, NULL)");
  const char *p3[2] = {"[{\"k\":1,\"p\":\"pg\",\"t\":\"component\",\"i\":\"local2\",\"f\":\"fa\","
                       "\"v\":\"r\",\"cl\":1,\"hlc\":5,\"region\":3,\"origin\":3,\"seq\":7},"
                       "{\"k\":1,\"p\":\"pg\",\"t\":\"component\",\"i\":\"local2\",\"f\":\"fx\","
                       "\"v\":\"r\",\"cl\":1,\"hlc\":5,\"region\":3,\"origin\":3,\"seq\":8}]",
                       "2"};
  assert_int_equal(PQsendQueryParams(b, "SELECT sp_apply_remote($1::jsonb, $2::smallint)", 2, NULL,
                                     p3, NULL, NULL, 0),
                   1);
  dh_sleep_ms(300);
  assert_int_equal(PQconsumeInput(b), 1);
  assert_int_equal(PQisBusy(b), 1); /* waiting for the clock row */
  res = PQexec(a, "SELECT sp_write(2::smallint, 4::bigint, '[{\"op\":\"set\",\"p\":\"pg\","
                  "\"t\":\"component\",\"i\":\"local2\",\"f\":\"fa\",\"v\":\"b\"}]'::jsonb, NULL)");
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("local write beside an apply: %s", PQerrorMessage(a));
  PQclear(res);
  q(a, "COMMIT");
  res = PQgetResult(b);
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("apply beside a local write: %s", PQerrorMessage(b));
  assert_string_equal(PQgetvalue(res, 0, 0), "2");
  PQclear(res);
  while ((res = PQgetResult(b)) != NULL)
    PQclear(res);
  PQfinish(a);
  PQfinish(b);
}

/* Region A writes with sp_write; its log copied to region B by
 * sp_apply_remote in small batches, in reverse order, twice, leaves B with
 * the same rows as A. */
static void test_seeded_region_matches_origin(void **state) {
  (void)state;
  PGconn *a = db("ra"), *b = db("rb");
  q(a, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_region_clock, sp_vclock");
  q(b, "TRUNCATE sp_entity, sp_field, sp_change_log, sp_region_clock, sp_vclock");
  for (int i = 0; i < 30; i++) {
    char sql[1024];
    const char *op = i == 0 ? "create" : (i % 7 == 3 ? "delete" : (i % 7 == 4 ? "recreate" : "set"));
    if (strcmp(op, "set") == 0)
      snprintf(sql, sizeof sql,
               "SELECT sp_write(0::smallint, %d::bigint, '[{\"op\":\"set\",\"p\":\"pg\","
               "\"t\":\"component\",\"i\":\"e1\",\"f\":\"f%d\",\"v\":\"v%d\"}]'::jsonb, NULL)",
               1000 + i, i % 4, i);
    else
      snprintf(sql, sizeof sql,
               "SELECT sp_write(0::smallint, %d::bigint, '[{\"op\":\"%s\",\"p\":\"pg\","
               "\"t\":\"component\",\"i\":\"e1\"}]'::jsonb, NULL)",
               1000 + i, op);
    q(a, sql);
  }
  /* the log in batches of 7, newest batch first */
  PGresult *res = PQexec(
      a, "SELECT (row_number() OVER (ORDER BY seq) - 1) / 7 AS batch, jsonb_build_object('k', "
         "kind, 'p', page_id, 't', type, 'i', id, 'f', field, 'v', value, 'cl', cl, 'hlc', hlc, "
         "'region', region, 'origin', origin, 'seq', seq)::text FROM sp_change_log ORDER BY seq");
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  int rows = PQntuples(res);
  assert_true(rows >= 30);
  int nb = atoi(PQgetvalue(res, rows - 1, 0)) + 1;
  long applied = 0;
  for (int round = 0; round < 2; round++) {
    for (int bi = nb - 1; bi >= 0; bi--) {
      char batch[16384] = "[";
      for (int i = 0; i < rows; i++)
        if (atoi(PQgetvalue(res, i, 0)) == bi) {
          if (batch[1])
            strncat(batch, ",", sizeof batch - strlen(batch) - 1);
          strncat(batch, PQgetvalue(res, i, 1), sizeof batch - strlen(batch) - 1);
        }
      strncat(batch, "]", sizeof batch - strlen(batch) - 1);
      long n = apply(b, batch, "1");
      applied += n;
      if (round == 1)
        assert_int_equal(n, 0);
      else if (bi > 0) /* everything after the first batch waits for it */
        assert_int_equal(q(b, "SELECT coalesce(max(seq), 0) FROM sp_vclock WHERE origin = 0"), 0);
    }
  }
  PQclear(res);
  assert_int_equal(applied, rows);
  assert_int_equal(q(b, "SELECT seq FROM sp_vclock WHERE origin = 0"),
                   q(a, "SELECT seq FROM sp_vclock WHERE origin = 0"));
  static const char *const same[] = {
      "SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', page_id, type, id, cl, hlc, region,"
      " origin, seq), ',' ORDER BY page_id, type, id)) FROM sp_entity",
      "SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', page_id, type, id, field, "
      "value, cl, hlc, region, origin, seq), ',' ORDER BY page_id, type, id, field)) FROM sp_field",
      "SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', origin, seq, kind, page_id,"
      " type, id, field, value, cl, hlc, region), ',' ORDER BY origin, seq)) FROM sp_change_log",
  };
  for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
    PGresult *ra = PQexec(a, same[i]), *rb = PQexec(b, same[i]);
    assert_int_equal(PQresultStatus(ra), PGRES_TUPLES_OK);
    assert_int_equal(PQresultStatus(rb), PGRES_TUPLES_OK);
    assert_false(PQgetisnull(ra, 0, 0));
    assert_string_equal(PQgetvalue(ra, 0, 0), PQgetvalue(rb, 0, 0));
    PQclear(ra);
    PQclear(rb);
  }
  /* and B's next local write is stamped after everything it applied */
  q(b, "SELECT sp_write(1::smallint, 1::bigint, '[{\"op\":\"set\",\"p\":\"pg\",\"t\":\"component\","
       "\"i\":\"e1\",\"f\":\"f0\",\"v\":\"from b\"}]'::jsonb, NULL)");
  assert_true(q(b, "SELECT count(*) FROM sp_field WHERE field = 'f0' AND value = 'from b'") == 1);
  PQfinish(a);
  PQfinish(b);
}

int main(void) {
  const struct CMUnitTest sql_tests[] = {
      cmocka_unit_test(test_apply_idempotent_and_gaps),
      cmocka_unit_test(test_apply_refuses_malformed),
      cmocka_unit_test(test_apply_concurrent),
      cmocka_unit_test(test_seeded_region_matches_origin),
  };
  const struct CMUnitTest ctl_tests[] = {
      cmocka_unit_test(test_usage_errors),
      cmocka_unit_test(test_up_from_nothing),
      cmocka_unit_test(test_up_again_is_a_noop),
      cmocka_unit_test(test_down_stops_everything),
      cmocka_unit_test(test_port_in_use_is_named),
      cmocka_unit_test(test_failing_service_is_reported),
      cmocka_unit_test(test_up_after_down_keeps_data),
      cmocka_unit_test(test_verify_names_a_diverged_page),
      cmocka_unit_test(test_purge),
  };
  int rc = cmocka_run_group_tests_name("apply_remote", sql_tests, pg_setup, pg_teardown);
  rc += cmocka_run_group_tests_name("statusctl", ctl_tests, setup, teardown);
  return rc;
}
