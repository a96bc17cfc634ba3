/* Tests for sp_topo: the shipped local topology, the good and bad files under
 * tests/lib/topology-cases/ (each bad-NAME.json has a bad-NAME.err holding
 * the expected sp_err name and the exact message), file-level failures
 * (missing, oversized, not a regular file), and an allocation-failure sweep
 * with jansson's allocations routed through sp_alloc.
 *
 * Data files are found relative to the repository root, located by walking
 * up from the test binary (it lives in <root>/<build dir>/tests/lib/).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_topo.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Sized well under PATH_MAX so "<dir>/<file>" always fits the locals. */
static char g_root[1024];  /* repository root */
static char g_cases[1100]; /* <root>/tests/lib/topology-cases */
static char g_tmp[1100];   /* scratch dir, removed at the end */

static int find_root(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0)
    return -1;
  exe[n] = '\0';
  for (char *slash = strrchr(exe, '/'); slash; slash = strrchr(exe, '/')) {
    *slash = '\0';
    char probe[PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/tests/lib/topology-cases", exe);
    char abs[PATH_MAX];
    if (access(probe, R_OK) == 0 && realpath(exe, abs) && strlen(abs) < sizeof g_root) {
      memcpy(g_root, abs, strlen(abs) + 1); /* length checked above */
      snprintf(g_cases, sizeof g_cases, "%s/tests/lib/topology-cases", g_root);
      return 0;
    }
  }
  return -1;
}

static int group_setup(void **state) {
  (void)state;
  if (find_root() != 0) {
    fprintf(stderr, "test_sp_topo: cannot find the repository root from the binary\n");
    return -1;
  }
  const char *base = getenv("SP_TEST_TMPDIR");
  if (base && strlen(base) > 1000)
    base = NULL;
  snprintf(g_tmp, sizeof g_tmp, "%s/sp_topo.XXXXXX", base && *base ? base : "/tmp");
  return mkdtemp(g_tmp) ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  char cmd[PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
  return system(cmd) == 0 ? 0 : -1;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  char *buf = malloc(SP_TOPO_MAX_FILE_BYTES + 1);
  assert_non_null(buf);
  size_t n = fread(buf, 1, SP_TOPO_MAX_FILE_BYTES, f);
  fclose(f);
  buf[n] = '\0';
  *len = n;
  return buf;
}

static void test_shipped_local_topology(void **state) {
  (void)state;
  char path[PATH_MAX + 64], want[PATH_MAX + 64], err[512];
  snprintf(path, sizeof path, "%s/config/topology.local.json", g_root);
  sp_topo *t = NULL;
  int rc = sp_topo_load(path, &t, err, sizeof err);
  if (rc)
    fail_msg("%s", err);
  assert_non_null(t);
  assert_string_equal(t->cluster, "local");
  assert_string_equal(t->path, path);
  snprintf(want, sizeof want, "%s/var", g_root);
  assert_string_equal(t->state_dir, want);
  snprintf(want, sizeof want, "%s/var/tls/ca.pem", g_root);
  assert_string_equal(t->tls_ca_cert, want);
  assert_int_equal(t->log_level, SP_LOG_INFO);
  assert_int_equal(t->sync_interval_ms, 100);
  assert_int_equal(t->http.max_body_bytes, 1048576);
  assert_int_equal(t->nregions, 3);

  static const char *const names[] = {"us-east", "eu-west", "ap-south"};
  static const char *const addrs[] = {"127.0.0.11", "127.0.0.12", "127.0.0.13"};
  for (size_t i = 0; i < 3; i++) {
    const sp_topo_region *r = sp_topo_region_find(t, names[i]);
    assert_ptr_equal(r, &t->regions[i]);
    assert_int_equal(r->index, i);
    assert_string_equal(r->address, addrs[i]);
    assert_int_equal(r->family, AF_INET);
    assert_int_equal(r->api.port, 8080);
    assert_int_equal(r->api.processes, 1);
    assert_int_equal(r->sse.port, 8081);
    assert_int_equal(r->notify.port, 8082);
    assert_int_equal(r->replication.port, 8443);
    assert_string_equal(r->postgres.host, addrs[i]);
    assert_int_equal(r->postgres.port, 15432);
    assert_string_equal(r->postgres.dbname, "statuspage");
    assert_int_equal(r->redis.port, 16379);
    snprintf(want, sizeof want, "%s/var/%s/pg", g_root, names[i]);
    assert_string_equal(r->pg_dir, want);
    snprintf(want, sizeof want, "%s/var/%s/log", g_root, names[i]);
    assert_string_equal(r->log_dir, want);
    snprintf(want, sizeof want, "%s/var/tls/%s.key", g_root, names[i]);
    assert_string_equal(r->tls_key, want);
    /* every region peers with exactly the two others */
    assert_int_equal(r->npeers, 2);
    for (size_t j = 0; j < r->npeers; j++) {
      assert_ptr_not_equal(r->peers[j], r);
      assert_ptr_equal(r->peers[j], sp_topo_region_find(t, r->peers[j]->name));
    }
    assert_ptr_not_equal(r->peers[0], r->peers[1]);
  }
  assert_null(sp_topo_region_find(t, "us-west"));
  sp_topo_free(t);
}

/* Every bad-*.json must fail with exactly the code and message in its .err;
 * all mismatches are printed before the test fails. */
static void test_bad_case_table(void **state) {
  (void)state;
  char old_cwd[PATH_MAX];
  assert_non_null(getcwd(old_cwd, sizeof old_cwd));
  assert_int_equal(chdir(g_cases), 0); /* messages name the file as given */
  glob_t g;
  assert_int_equal(glob("bad-*.json", 0, NULL, &g), 0);
  int failures = 0;
  for (size_t i = 0; i < g.gl_pathc; i++) {
    const char *file = g.gl_pathv[i];
    char errfile[PATH_MAX], want_code[64], want_msg[1024], err[1024];
    snprintf(errfile, sizeof errfile, "%.*s.err", (int)(strlen(file) - 5), file);
    FILE *f = fopen(errfile, "r");
    if (f == NULL) {
      print_error("%s: missing %s\n", file, errfile);
      failures++;
      continue;
    }
    int ok = fgets(want_code, sizeof want_code, f) && fgets(want_msg, sizeof want_msg, f);
    fclose(f);
    assert_true(ok);
    want_code[strcspn(want_code, "\n")] = '\0';
    want_msg[strcspn(want_msg, "\n")] = '\0';
    sp_topo *t = (sp_topo *)&t; /* must be reset to NULL on failure */
    int rc = sp_topo_load(file, &t, err, sizeof err);
    if (strcmp(sp_err_name(rc), want_code) != 0 || strcmp(err, want_msg) != 0 || t != NULL) {
      print_error("%s:\n  want %s: %s\n  got  %s: %s\n", file, want_code, want_msg,
                  sp_err_name(rc), err);
      failures++;
    }
    if (rc == 0)
      sp_topo_free(t);
  }
  size_t n = g.gl_pathc;
  globfree(&g);
  assert_int_equal(chdir(old_cwd), 0);
  assert_int_equal(failures, 0);
  assert_true(n >= 60); /* the table did not silently shrink */
}

static void test_good_minimal_defaults(void **state) {
  (void)state;
  char path[PATH_MAX + 64], err[512];
  snprintf(path, sizeof path, "%s/good-minimal.json", g_cases);
  sp_topo *t;
  int rc = sp_topo_load(path, &t, err, sizeof err);
  if (rc)
    fail_msg("%s", err);
  assert_string_equal(t->state_dir, "/var/lib/statuspage");
  assert_int_equal(t->log_level, SP_LOG_INFO);
  assert_string_equal(t->log_level_name, "info");
  assert_int_equal(t->sync_interval_ms, 100);
  assert_int_equal(t->max_clock_skew_ms, 500);
  assert_int_equal(t->http.max_header_bytes, 16384);
  assert_int_equal(t->http.max_body_bytes, 1048576);
  assert_int_equal(t->http.header_timeout_ms, 10000);
  assert_int_equal(t->http.idle_timeout_ms, 60000);
  assert_int_equal(t->http.max_connections, 10000);
  assert_null(t->tls_ca_cert);
  assert_null(t->tls_ca_key);
  assert_int_equal(t->nregions, 1);
  const sp_topo_region *r = &t->regions[0];
  assert_int_equal(r->api.processes, 1);
  assert_int_equal(r->sse.processes, 1);
  assert_int_equal(r->notify.processes, 1);
  assert_null(r->tls_cert);
  assert_null(r->tls_key);
  assert_int_equal(r->npeers, 0);
  assert_string_equal(r->postgres.host, "db.internal.example"); /* DNS names lowercased */
  assert_string_equal(r->state_dir, "/var/lib/statuspage/only");
  assert_string_equal(r->redis_dir, "/var/lib/statuspage/only/redis");
  sp_topo_free(t);
}

static void test_good_ipv6_tls_paths_peers(void **state) {
  (void)state;
  char path[PATH_MAX + 64], want[PATH_MAX + 64], err[512];
  snprintf(path, sizeof path, "%s/good-ipv6-tls.json", g_cases);
  sp_topo *t;
  int rc = sp_topo_load(path, &t, err, sizeof err);
  if (rc)
    fail_msg("%s", err);
  /* "./state/x/../data//" relative to the file's directory, normalised */
  snprintf(want, sizeof want, "%s/state/data", g_cases);
  assert_string_equal(t->state_dir, want);
  assert_string_equal(t->base_dir, g_cases);
  assert_int_equal(t->log_level, SP_LOG_DEBUG);
  assert_int_equal(t->sync_interval_ms, 60000);
  assert_int_equal(t->max_clock_skew_ms, 1);
  assert_int_equal(t->http.max_header_bytes, 1024);
  assert_int_equal(t->http.max_body_bytes, 1);
  assert_int_equal(t->http.header_timeout_ms, 10000); /* unset fields keep defaults */
  assert_int_equal(t->http.max_connections, 1000000);
  assert_string_equal(t->tls_ca_cert, "/etc/statuspage/ca.pem");
  assert_null(t->tls_ca_key); /* optional: only the certificate minter has it */

  const sp_topo_region *a = sp_topo_region_find(t, "a");
  const sp_topo_region *b = sp_topo_region_find(t, "b");
  const sp_topo_region *c3 = sp_topo_region_find(t, "c3");
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c3);
  assert_string_equal(a->address, "::1"); /* canonical form */
  assert_int_equal(a->family, AF_INET6);
  assert_int_equal(a->api.processes, 64);
  assert_int_equal(a->sse.processes, 3);
  snprintf(want, sizeof want, "%s/certs/a.pem", g_cases);
  assert_string_equal(a->tls_cert, want);
  /* "../keys/a.key" from tests/lib/topology-cases is tests/lib/keys/a.key */
  snprintf(want, sizeof want, "%s/tests/lib/keys/a.key", g_root);
  assert_string_equal(a->tls_key, want);
  assert_string_equal(c3->tls_key, "/c.key");
  assert_int_equal(c3->api.port, 1);
  assert_int_equal(c3->sse.port, 65535);
  assert_string_equal(c3->postgres.host, "pg-c3.example.net");
  /* peers: absent = all others in file order; [] = none; listed = as listed */
  assert_int_equal(a->npeers, 2);
  assert_ptr_equal(a->peers[0], b);
  assert_ptr_equal(a->peers[1], c3);
  assert_int_equal(b->npeers, 0);
  assert_int_equal(c3->npeers, 1);
  assert_ptr_equal(c3->peers[0], a);
  sp_topo_free(t);
}

static void test_missing_file(void **state) {
  (void)state;
  char err[512];
  sp_topo *t = (sp_topo *)&t;
  char path[PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/does-not-exist.json", g_tmp);
  assert_int_equal(sp_topo_load(path, &t, err, sizeof err), SP_ERR_NOENT);
  assert_null(t);
  char want[PATH_MAX + 128];
  snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
  assert_string_equal(err, want);
}

static void write_file(const char *path, const char *head, size_t pad, const char *tail) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fputs(head, f);
  for (size_t i = 0; i < pad; i++)
    fputc(' ', f);
  fputs(tail, f);
  assert_int_equal(fclose(f), 0);
}

/* A file of exactly 1 MiB loads; one byte more is refused without parsing. */
static void test_oversized_file(void **state) {
  (void)state;
  char shipped[PATH_MAX + 64], path[PATH_MAX + 64], err[512], want[PATH_MAX + 128];
  snprintf(shipped, sizeof shipped, "%s/config/topology.local.json", g_root);
  size_t len;
  char *json = slurp(shipped, &len);
  snprintf(path, sizeof path, "%s/big.json", g_tmp);
  write_file(path, json, SP_TOPO_MAX_FILE_BYTES - len, "");
  sp_topo *t;
  int rc = sp_topo_load(path, &t, err, sizeof err);
  if (rc)
    fail_msg("%s", err);
  sp_topo_free(t);

  write_file(path, json, SP_TOPO_MAX_FILE_BYTES - len + 1, "");
  assert_int_equal(sp_topo_load(path, &t, err, sizeof err), SP_ERR_TOOBIG);
  assert_null(t);
  snprintf(want, sizeof want, "%s: file is too large (over 1048576 bytes)", path);
  assert_string_equal(err, want);

  /* the in-memory entry point enforces the same limit */
  char *big = calloc(1, SP_TOPO_MAX_FILE_BYTES + 2);
  assert_non_null(big);
  memcpy(big, json, len);
  memset(big + len, ' ', SP_TOPO_MAX_FILE_BYTES + 1 - len);
  assert_int_equal(sp_topo_parse(big, SP_TOPO_MAX_FILE_BYTES + 1, "mem", "/", &t, err,
                                 sizeof err),
                   SP_ERR_TOOBIG);
  assert_string_equal(err, "mem: file is too large (over 1048576 bytes)");
  free(big);
  free(json);
}

/* Directories and FIFOs are refused, and a FIFO without a writer must not
 * block the loader (cmocka's runner would hang here if it did). */
static void test_not_regular_files(void **state) {
  (void)state;
  char err[512], path[PATH_MAX + 64], want[PATH_MAX + 128];
  sp_topo *t;
  assert_int_equal(sp_topo_load(g_tmp, &t, err, sizeof err), SP_ERR_CONFIG);
  snprintf(want, sizeof want, "%s: not a regular file", g_tmp);
  assert_string_equal(err, want);
  snprintf(path, sizeof path, "%s/fifo.json", g_tmp);
  assert_int_equal(mkfifo(path, 0600), 0);
  assert_int_equal(sp_topo_load(path, &t, err, sizeof err), SP_ERR_CONFIG);
  snprintf(want, sizeof want, "%s: not a regular file", path);
  assert_string_equal(err, want);
  assert_null(t);
}

static const char minimal[] =
    "{\"version\":1,\"cluster\":\"c\",\"state_dir\":\"s\",\"regions\":[{\"name\":\"r\","
    "\"address\":\"127.0.0.1\",\"api\":{\"port\":1},\"sse\":{\"port\":2},"
    "\"notify\":{\"port\":3},\"replication\":{\"port\":4},"
    "\"postgres\":{\"host\":\"127.0.0.1\",\"port\":5,\"dbname\":\"d\",\"user\":\"u\"},"
    "\"redis\":{\"host\":\"127.0.0.1\",\"port\":6}}]}";

static void test_parse_entry_point(void **state) {
  (void)state;
  char err[256];
  sp_topo *t;
  /* not NUL-terminated: only `len` bytes are read */
  char buf[sizeof minimal + 8];
  memcpy(buf, minimal, sizeof minimal - 1);
  memcpy(buf + sizeof minimal - 1, "garbage!", 8);
  assert_int_equal(sp_topo_parse(buf, sizeof minimal - 1, "inline", "/base", &t, err, sizeof err),
                   0);
  assert_string_equal(t->display_name, "inline");
  assert_null(t->path);
  assert_string_equal(t->state_dir, "/base/s");
  sp_topo_free(t);

  /* NULL base_dir = the current directory */
  char cwd[PATH_MAX], want[PATH_MAX + 8];
  assert_non_null(getcwd(cwd, sizeof cwd));
  assert_int_equal(sp_topo_parse(minimal, sizeof minimal - 1, NULL, NULL, &t, err, sizeof err), 0);
  snprintf(want, sizeof want, "%s/s", strcmp(cwd, "/") ? cwd : "");
  assert_string_equal(t->state_dir, want);
  sp_topo_free(t);

  /* argument errors */
  assert_int_equal(sp_topo_parse(minimal, sizeof minimal - 1, "x", "relative", &t, err, sizeof err),
                   SP_ERR_INVAL);
  assert_null(t);
  assert_string_equal(err, "x: invalid argument");
  assert_int_equal(sp_topo_parse(NULL, 5, "x", "/", &t, err, sizeof err), SP_ERR_INVAL);
  assert_int_equal(sp_topo_parse(minimal, sizeof minimal - 1, "x", "/", NULL, err, sizeof err),
                   SP_ERR_INVAL);
  assert_int_equal(sp_topo_load(NULL, &t, err, sizeof err), SP_ERR_INVAL);
  assert_int_equal(sp_topo_parse(NULL, 0, NULL, "/", &t, err, sizeof err), SP_ERR_CONFIG);
  assert_string_equal(err, "topology: file is empty");

  /* a short error buffer truncates; no buffer at all is allowed */
  char small[12];
  assert_int_equal(sp_topo_parse("{}", 2, "short", "/", &t, small, sizeof small), SP_ERR_CONFIG);
  assert_string_equal(small, "short: vers");
  assert_int_equal(sp_topo_parse("{}", 2, "short", "/", &t, NULL, 0), SP_ERR_CONFIG);

  /* unknown keys are shown printable and cut, so messages stay one line */
  static const char weird[] = "{\"version\":1,\"bad\\nkey\\u00e9\":1}";
  assert_int_equal(sp_topo_parse(weird, sizeof weird - 1, "w", "/", &t, err, sizeof err),
                   SP_ERR_CONFIG);
  assert_string_equal(err, "w: bad?key??: unknown field");

  sp_topo_free(NULL);
  assert_null(sp_topo_region_find(NULL, "x"));
}

static int parse_or_load(int via_file, const char *path, const char *json, size_t len,
                         sp_topo **t, char *err, size_t errlen) {
  return via_file ? sp_topo_load(path, t, err, errlen)
                  : sp_topo_parse(json, len, "mem", "/", t, err, errlen);
}

/* Fail each of sp_topo's own allocations in turn (the read buffer and the
 * arena; jansson on plain malloc): every attempt must end in SP_ERR_NOMEM
 * with a message, *out NULL, nothing leaked (ASan checks). */
static void test_allocation_failure_sweep(void **state) {
  (void)state;
  char path[PATH_MAX + 64], err[512];
  snprintf(path, sizeof path, "%s/config/topology.local.json", g_root);
  size_t len;
  char *json = slurp(path, &len);
  for (int via_file = 0; via_file < 2; via_file++) {
    sp_topo *t;
    sp_alloc_count_reset();
    assert_int_equal(parse_or_load(via_file, path, json, len, &t, err, sizeof err), 0);
    long total = sp_alloc_count();
    sp_topo_free(t);
    assert_true(total >= 1 + via_file); /* the arena (+ the read buffer) */
    for (long k = 0; k < total; k++) {
      sp_alloc_fail_after(k);
      int rc = parse_or_load(via_file, path, json, len, &t, err, sizeof err);
      sp_alloc_fail_after(-1);
      if (rc != SP_ERR_NOMEM)
        fail_msg("allocation %ld of %ld (%s): rc %s, err \"%s\"", k, total,
                 via_file ? "load" : "parse", sp_err_name(rc), err);
      assert_null(t);
      assert_non_null(strstr(err, "out of memory"));
    }
  }
  free(json);
}

/* The same with jansson's allocations routed through sp_alloc.  jansson
 * reports some of its own failures as syntax errors (a failed string copy
 * becomes "invalid token"), so here any failure code is accepted: the point
 * is no crash, no leak, no topology, and always a message. */
static void test_allocation_failure_sweep_with_jansson(void **state) {
  (void)state;
  char path[PATH_MAX + 64], err[512];
  snprintf(path, sizeof path, "%s/config/topology.local.json", g_root);
  size_t len;
  char *json = slurp(path, &len);
  json_set_alloc_funcs(sp_malloc, sp_free);
  sp_topo *t;
  sp_alloc_count_reset();
  assert_int_equal(parse_or_load(0, path, json, len, &t, err, sizeof err), 0);
  long total = sp_alloc_count();
  sp_topo_free(t);
  assert_true(total > 50); /* jansson's tree is in the count */
  long nomem = 0;
  for (long k = 0; k < total; k++) {
    sp_alloc_fail_after(k);
    int rc = parse_or_load(0, path, json, len, &t, err, sizeof err);
    sp_alloc_fail_after(-1);
    assert_true(rc == SP_ERR_NOMEM || rc == SP_ERR_CONFIG);
    assert_null(t);
    assert_true(strlen(err) > 5);
    nomem += rc == SP_ERR_NOMEM;
  }
  assert_true(nomem > total / 2);
  json_set_alloc_funcs(malloc, free);
  free(json);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shipped_local_topology),
      cmocka_unit_test(test_bad_case_table),
      cmocka_unit_test(test_good_minimal_defaults),
      cmocka_unit_test(test_good_ipv6_tls_paths_peers),
      cmocka_unit_test(test_missing_file),
      cmocka_unit_test(test_oversized_file),
      cmocka_unit_test(test_not_regular_files),
      cmocka_unit_test(test_parse_entry_point),
      cmocka_unit_test(test_allocation_failure_sweep),
      cmocka_unit_test(test_allocation_failure_sweep_with_jansson),
  };
  return cmocka_run_group_tests_name("sp_topo", tests, group_setup, group_teardown);
}
