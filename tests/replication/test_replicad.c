/* statusd-replicad against real processes: a three-region deployment made by
 * statusctl (a copy of config/topology.local.json in a temporary directory,
 * every port moved up by 21000 so neither `make run` nor test_statusctl
 * (+20000) is touched), written to through each region's management API.
 *
 * In order: bad command lines and topology files are refused with a
 * message; writes in every region (conflicting field writes to one
 * component from three regions, a delete racing an update) converge, as
 * `statusctl verify` and the public API of every region show; applied
 * changes are published on the region's Redis changes channel; /metrics
 * carries per-peer lag and counters and statusctl status reads the lag; a
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
#include "sp_err.h"
#include "sp_h2.h"
#include "sp_tls.h"

#define PORT_SHIFT 21000
#define RUN_TIMEOUT_MS 120000
#define NREGIONS 3
#define CONVERGE_MS 10000

static const char *const g_regions[NREGIONS] = {"us-east", "eu-west", "ap-south"};
static const char *const g_addrs[NREGIONS] = {"127.0.0.11", "127.0.0.12", "127.0.0.13"};
static const char *const g_procs[] = {"postgres", "redis", "statusd-api", "statusd-replicad"};
#define NPROCS (sizeof g_procs / sizeof g_procs[0])

static struct {
  char dir[PATH_MAX];
  char topo[PATH_MAX + 32];
  char state[PATH_MAX + 32];
  char statusctl[PATH_MAX];
  char replicad[PATH_MAX + 32];
  int api_port, repl_port, redis_port;
  char key[128];
  char page[64];
  int up;
} g;

/* ---- helpers (process running and HTTP/1.1 as in tests/ops) -------------- */

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

typedef struct run_out {
  int status;
  char out[65536];
  char err[65536];
} run_out;

/* Runs statusctl --topology T args... (NULL-terminated), capturing output. */
static void run(run_out *r, ...) {
  char *argv[16];
  int n = 0;
  argv[n++] = g.statusctl;
  argv[n++] = "--topology";
  argv[n++] = g.topo;
  va_list ap;
  va_start(ap, r);
  const char *a;
  while ((a = va_arg(ap, const char *)) != NULL && n < 15)
    argv[n++] = (char *)a;
  va_end(ap);
  argv[n] = NULL;
  memset(r, 0, sizeof *r);
  r->status = -1;
  int po[2], pe[2];
  assert_int_equal(pipe2(po, O_CLOEXEC), 0);
  assert_int_equal(pipe2(pe, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(po[1], 1);
    dup2(pe[1], 2);
    execv(argv[0], argv);
    _exit(127);
  }
  close(po[1]);
  close(pe[1]);
  size_t len[2] = {0, 0};
  struct pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
  long long end = now_ms() + RUN_TIMEOUT_MS;
  int open_fds = 2;
  while (open_fds > 0 && now_ms() < end) {
    if (poll(fds, 2, 500) < 0 && errno != EINTR)
      break;
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      char *buf = i == 0 ? r->out : r->err;
      char tmp[4096];
      ssize_t got = read(fds[i].fd, tmp, sizeof tmp);
      if (got <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        open_fds--;
        continue;
      }
      size_t room = sizeof r->out - 1 - len[i];
      size_t take = (size_t)got < room ? (size_t)got : room;
      memcpy(buf + len[i], tmp, take);
      len[i] += take;
    }
  }
  for (int i = 0; i < 2; i++)
    if (fds[i].fd >= 0)
      close(fds[i].fd);
  int st;
  if (open_fds > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    fail_msg("statusctl %s timed out; stderr:\n%s", argv[3], r->err);
  }
  waitpid(pid, &st, 0);
  r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void expect(const run_out *r, int status, const char *what) {
  if (r->status != status)
    fail_msg("%s: exit %d, wanted %d\nstdout:\n%s\nstderr:\n%s", what, r->status, status, r->out,
             r->err);
}

static pid_t pidfile(const char *region, const char *proc) {
  char path[PATH_MAX + 128];
  snprintf(path, sizeof path, "%s/%s/run/%s.pid", g.state, region, proc);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  long v = 0;
  if (fscanf(f, "%ld", &v) != 1)
    v = 0;
  fclose(f);
  return (pid_t)v;
}

static int alive(pid_t pid) {
  int st;
  if (pid <= 0 || waitpid(pid, &st, WNOHANG) == pid || kill(pid, 0) != 0)
    return 0;
  return 1;
}

typedef struct body {
  char *p;
  size_t n;
} body;

static size_t on_body(char *d, size_t s, size_t n, void *arg) {
  body *b = arg;
  size_t len = s * n;
  if (b->n + len > (8u << 20))
    return 0;
  char *np = realloc(b->p, b->n + len + 1);
  if (np == NULL)
    return 0;
  b->p = np;
  memcpy(b->p + b->n, d, len);
  b->n += len;
  b->p[b->n] = '\0';
  return len;
}

/* One HTTP/1.1 request to region `region`'s API; the status (0: no answer);
 * *out (may be NULL) gets the body (free()). */
static long http(int region, const char *method, const char *path, const char *json, char **out) {
  char url[512];
  snprintf(url, sizeof url, "http://%s:%d%s", g_addrs[region], g.api_port, path);
  CURL *h = curl_easy_init();
  assert_non_null(h);
  struct curl_slist *hdrs = NULL;
  char auth[256];
  snprintf(auth, sizeof auth, "Authorization: OAuth %s", g.key);
  hdrs = curl_slist_append(hdrs, auth);
  if (json)
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  body b = {NULL, 0};
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
  if (json)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
  long status = 0;
  if (curl_easy_perform(h) == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  if (out)
    *out = b.p ? b.p : strdup("");
  else
    free(b.p);
  return status;
}

/* A write through the management API that must succeed; returns the JSON
 * answer (json_decref) or NULL for an empty one. */
static json_t *write_ok(int region, const char *method, const char *path, const char *json) {
  char *b;
  long st = http(region, method, path, json, &b);
  if (st < 200 || st > 299)
    fail_msg("%s %s in %s: %ld %s", method, path, g_regions[region], st, b);
  json_t *j = json_loads(b, 0, NULL);
  free(b);
  return j;
}

/* The status of component `id` in the public summary of `region`: "" when
 * the component is not there, NULL when the summary cannot be read. */
static char *public_status(int region, const char *id) {
  char path[256], *b;
  snprintf(path, sizeof path, "/pages/%s/api/v2/summary.json", g.page);
  if (http(region, "GET", path, NULL, &b) != 200) {
    free(b);
    return NULL;
  }
  json_t *s = json_loads(b, 0, NULL);
  free(b);
  char *out = strdup("");
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(s, "components"), i, c) {
    if (strcmp(json_string_value(json_object_get(c, "id")), id) == 0) {
      free(out);
      out = strdup(json_string_value(json_object_get(c, "status")));
    }
  }
  json_decref(s);
  return out;
}

/* Waits up to ms for component `id` to read `want` ("" = absent) publicly
 * in `region`. */
static void wait_public(int region, const char *id, const char *want, long ms) {
  long long end = now_ms() + ms;
  char *got = NULL;
  for (;;) {
    free(got);
    got = public_status(region, id);
    if (got && strcmp(got, want) == 0)
      break;
    if (now_ms() >= end)
      fail_msg("component %s in %s: status \"%s\", wanted \"%s\"", id, g_regions[region],
               got ? got : "(no summary)", want);
    sleep_ms(100);
  }
  free(got);
}

static void wait_converged(const char *what) {
  run_out *r = malloc(sizeof *r);
  long long end = now_ms() + CONVERGE_MS;
  do {
    run(r, "verify", (const char *)NULL);
    if (r->status == 0)
      break;
    sleep_ms(200);
  } while (now_ms() < end);
  if (r->status != 0)
    fail_msg("%s: not converged within %d ms:\n%s%s", what, CONVERGE_MS, r->out, r->err);
  assert_non_null(strstr(r->out, "converged: 3 regions"));
  free(r);
}

static void kill_leftovers(void) {
  for (int r = 0; r < NREGIONS; r++)
    for (size_t p = 0; p < NPROCS; p++) {
      pid_t pid = pidfile(g_regions[r], g_procs[p]);
      if (alive(pid)) {
        kill(pid, SIGKILL);
        for (int t = 0; t < 100 && alive(pid); t++)
          sleep_ms(20);
      }
    }
}

/* ---- an sp_h2 client in the test (the certificate checks) --------------- */

typedef struct h2_probe {
  uv_loop_t loop;
  uv_timer_t timer;
  sp_tls_ctx *tls;
  sp_h2_client *cli;
  int state_err, connected, disconnected, responses, status, err, closed;
  char body[65536];
} h2_probe;

static void probe_state(sp_h2_client *cli, sp_h2_state st, int err, const char *reason, void *arg) {
  (void)cli;
  (void)reason;
  h2_probe *p = arg;
  if (st == SP_H2_CONNECTED)
    p->connected = 1;
  else {
    p->disconnected = 1;
    p->state_err = err;
  }
}

static void probe_response(sp_h2_client *cli, int err, const sp_h2_response *res, void *arg) {
  (void)cli;
  h2_probe *p = arg;
  p->responses++;
  p->err = err;
  p->status = res ? res->status : 0;
  snprintf(p->body, sizeof p->body, "%s", res ? res->body.base : "");
}

static void probe_timer(uv_timer_t *t) { (void)t; }

static void probe_done(sp_h2_client *cli, void *arg) {
  (void)cli;
  ((h2_probe *)arg)->closed = 1;
}

/* Runs the loop until *flag or ms pass. */
static void probe_wait(h2_probe *p, const int *flag, long ms) {
  long long end = now_ms() + ms;
  while (!*flag && now_ms() < end) {
    uv_timer_start(&p->timer, probe_timer, 50, 0);
    uv_run(&p->loop, UV_RUN_ONCE);
  }
}

/* Connects to region 0's replication port as `name` with cert/key signed by
 * ca (PEM files). */
static void probe_open(h2_probe *p, const char *ca, const char *cert, const char *key) {
  memset(p, 0, sizeof *p);
  assert_int_equal(uv_loop_init(&p->loop), 0);
  assert_int_equal(uv_timer_init(&p->loop, &p->timer), 0);
  char err[512];
  int rc = sp_tls_ctx_new_client(ca, cert, key, "h2", err, sizeof err, &p->tls);
  if (rc)
    fail_msg("client tls: %s", err);
  assert_int_equal(sp_h2_client_new(&p->loop, p->tls, NULL, g_addrs[0], g.repl_port, "us-east",
                                    probe_state, p, &p->cli),
                   0);
}

static int probe_request(h2_probe *p, const char *method, const char *path, const void *b,
                         size_t n) {
  int before = p->responses;
  sp_h2_header h = {"content-type", "application/x-protobuf"};
  assert_int_equal(sp_h2_client_request(p->cli, method, path, &h, 1, b, n, probe_response, p), 0);
  long long end = now_ms() + 5000;
  while (p->responses == before && now_ms() < end) {
    uv_timer_start(&p->timer, probe_timer, 50, 0);
    uv_run(&p->loop, UV_RUN_ONCE);
  }
  assert_int_equal(p->responses, before + 1);
  return p->err ? p->err : p->status;
}

static void probe_close(h2_probe *p) {
  sp_h2_client_close(p->cli, probe_done, p);
  probe_wait(p, &p->closed, 15000);
  assert_true(p->closed);
  uv_close((uv_handle_t *)&p->timer, NULL);
  uv_run(&p->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&p->loop), 0);
  sp_tls_ctx_free(p->tls);
}

/* ---- setup ------------------------------------------------------------------ */

static int write_topology(void) {
  const char *src = getenv("SP_SRCDIR");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/config/topology.local.json", src && *src ? src : ".");
  json_error_t e;
  json_t *t = json_load_file(path, 0, &e);
  if (t == NULL) {
    fprintf(stderr, "cannot read %s: %s\n", path, e.text);
    return -1;
  }
  char v[PATH_MAX + 64];
  snprintf(v, sizeof v, "%s/var", g.dir);
  json_object_set_new(t, "state_dir", json_string(v));
  json_t *tls = json_object_get(t, "tls");
  snprintf(v, sizeof v, "%s/var/tls/ca.pem", g.dir);
  json_object_set_new(tls, "ca_cert", json_string(v));
  snprintf(v, sizeof v, "%s/var/tls/ca.key", g.dir);
  json_object_set_new(tls, "ca_key", json_string(v));
  size_t i;
  json_t *r;
  json_array_foreach(json_object_get(t, "regions"), i, r) {
    static const char *const svc[] = {"api", "sse", "notify", "replication", "postgres", "redis"};
    for (size_t k = 0; k < sizeof svc / sizeof svc[0]; k++) {
      json_t *o = json_object_get(r, svc[k]);
      json_object_set_new(
          o, "port", json_integer(json_integer_value(json_object_get(o, "port")) + PORT_SHIFT));
    }
    const char *name = json_string_value(json_object_get(r, "name"));
    json_t *rt = json_object_get(r, "tls");
    snprintf(v, sizeof v, "%s/var/tls/%s.pem", g.dir, name);
    json_object_set_new(rt, "cert", json_string(v));
    snprintf(v, sizeof v, "%s/var/tls/%s.key", g.dir, name);
    json_object_set_new(rt, "key", json_string(v));
    if (i == 0) {
      g.api_port = (int)json_integer_value(json_object_get(json_object_get(r, "api"), "port"));
      g.repl_port =
          (int)json_integer_value(json_object_get(json_object_get(r, "replication"), "port"));
      g.redis_port = (int)json_integer_value(json_object_get(json_object_get(r, "redis"), "port"));
    }
  }
  int rc = json_dump_file(t, g.topo, JSON_INDENT(2));
  json_decref(t);
  chmod(g.topo, 0644);
  return rc;
}

static int setup(void **state) {
  (void)state;
  const char *base = getenv("SP_TEST_TMPDIR");
  snprintf(g.dir, sizeof g.dir, "%s/sp-replicad.XXXXXX", base && *base ? base : "/tmp");
  if (mkdtemp(g.dir) == NULL || chmod(g.dir, 0755) != 0) {
    perror("mkdtemp");
    return -1;
  }
  snprintf(g.topo, sizeof g.topo, "%s/topology.json", g.dir);
  snprintf(g.state, sizeof g.state, "%s/var", g.dir);
  /* build/tests/replication/test_replicad -> build/statusctl */
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0)
    return -1;
  exe[n] = '\0';
  char *d = dirname(dirname(dirname(exe)));
  snprintf(g.statusctl, sizeof g.statusctl, "%s/statusctl", d);
  snprintf(g.replicad, sizeof g.replicad, "%s/statusd-replicad", d);
  if (access(g.statusctl, X_OK) != 0 || access(g.replicad, X_OK) != 0) {
    fprintf(stderr, "%s or %s is not built (make)\n", g.statusctl, g.replicad);
    return -1;
  }
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
    return -1;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  return write_topology();
}

static int teardown(void **state) {
  (void)state;
  run_out *r = malloc(sizeof *r);
  if (r) {
    run(r, "down", "--purge", "--force", (const char *)NULL);
    free(r);
  }
  kill_leftovers();
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g.dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g.dir);
  curl_global_cleanup();
  return 0;
}

/* ---- tests, in order -------------------------------------------------------- */

/* Runs statusd-replicad with `args` (shell words); its exit status, and
 * stdout+stderr in out. */
static int replicad(const char *args, char *out, size_t len) {
  char cmd[PATH_MAX * 2];
  snprintf(cmd, sizeof cmd, "timeout 20 '%s' %s 2>&1", g.replicad, args);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  size_t n = fread(out, 1, len - 1, f);
  out[n] = '\0';
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Bad command lines and files end with a clear message and status 2. */
static void test_bad_arguments(void **state) {
  (void)state;
  char out[8192], args[PATH_MAX + 128];
  assert_int_equal(replicad("", out, sizeof out), 2);
  assert_non_null(strstr(out, "usage: statusd-replicad --topology FILE --region NAME"));
  assert_int_equal(replicad("--bogus", out, sizeof out), 2);
  snprintf(args, sizeof args, "--topology '%s' --region mars", g.topo);
  assert_int_equal(replicad(args, out, sizeof out), 2);
  assert_non_null(strstr(out, "no region called mars"));
  snprintf(args, sizeof args, "--topology '%s/nope.json' --region us-east", g.dir);
  assert_int_equal(replicad(args, out, sizeof out), 2);
  assert_non_null(strstr(out, "nope.json"));
  char bad[PATH_MAX + 32];
  snprintf(bad, sizeof bad, "%s/bad.json", g.dir);
  FILE *f = fopen(bad, "w");
  assert_non_null(f);
  fputs("{\"version\": 1, \"cluster\": ", f);
  fclose(f);
  snprintf(args, sizeof args, "--topology '%s' --region us-east", bad);
  assert_int_equal(replicad(args, out, sizeof out), 2);
  assert_non_null(strstr(out, "invalid JSON"));
}

static void test_up(void **state) {
  (void)state;
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  expect(r, 0, "up");
  for (int i = 0; i < NREGIONS; i++)
    assert_true(alive(pidfile(g_regions[i], "statusd-replicad")));
  run(r, "endpoints", "--json", (const char *)NULL);
  expect(r, 0, "endpoints");
  json_t *e = json_loads(r->out, 0, NULL);
  assert_non_null(e);
  snprintf(g.key, sizeof g.key, "%s", json_string_value(json_object_get(e, "admin_key")));
  snprintf(g.page, sizeof g.page, "%s", json_string_value(json_object_get(e, "demo_page_id")));
  json_decref(e);
  g.up = 1;
  wait_converged("after up");
  free(r);
}

static void test_writes_converge(void **state) {
  (void)state;
  assert_true(g.up);
  char path[256], id_a[64], id_b[64];
  /* a component made in us-east shows through the public API elsewhere */
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
  json_t *a = write_ok(0, "POST", path,
                       "{\"component\":{\"name\":\"replicated\",\"status\":\"operational\"}}");
  snprintf(id_a, sizeof id_a, "%s", json_string_value(json_object_get(a, "id")));
  json_decref(a);
  wait_public(1, id_a, "operational", 5000);
  wait_public(2, id_a, "operational", 5000);

  /* one made in ap-south, for the delete-versus-update race */
  json_t *b =
      write_ok(2, "POST", path, "{\"component\":{\"name\":\"doomed\",\"status\":\"operational\"}}");
  snprintf(id_b, sizeof id_b, "%s", json_string_value(json_object_get(b, "id")));
  json_decref(b);
  wait_public(0, id_b, "operational", 5000);
  wait_public(1, id_b, "operational", 5000);

  /* conflicting writes to one component's fields from all three regions,
   * and a delete in us-east racing an update in eu-west */
  static const char *const st[NREGIONS] = {"major_outage", "degraded_performance",
                                           "partial_outage"};
  for (int i = 0; i < NREGIONS; i++) {
    char json[256];
    snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.page, id_a);
    snprintf(json, sizeof json, "{\"component\":{\"status\":\"%s\",\"description\":\"from %s\"}}",
             st[i], g_regions[i]);
    json_decref(write_ok(i, "PATCH", path, json));
  }
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.page, id_b);
  json_decref(write_ok(0, "DELETE", path, NULL));
  char *ignored;
  long code =
      http(1, "PATCH", path, "{\"component\":{\"status\":\"under_maintenance\"}}", &ignored);
  free(ignored);
  assert_true(code == 200 || code == 404); /* 404 if the delete got there first */
  /* a bounded burst from every region: many rows per batch */
  for (int k = 0; k < 60; k++) {
    char json[256];
    snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
    snprintf(json, sizeof json, "{\"component\":{\"name\":\"burst %d\"}}", k);
    json_decref(write_ok(k % NREGIONS, "POST", path, json));
  }

  wait_converged("after conflicting writes");
  /* every region now answers the same for both components */
  char *first_a = public_status(0, id_a), *first_b = public_status(0, id_b);
  assert_non_null(first_a);
  assert_non_null(first_b);
  assert_string_not_equal(first_a, ""); /* nobody deleted it */
  int known = 0;
  for (int i = 0; i < NREGIONS; i++)
    known |= strcmp(first_a, st[i]) == 0;
  assert_true(known);
  for (int i = 1; i < NREGIONS; i++) {
    char *sa = public_status(i, id_a), *sb = public_status(i, id_b);
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
static void test_applied_changes_published(void **state) {
  (void)state;
  assert_true(g.up);
  struct timeval tv = {5, 0};
  redisContext *rc = redisConnectWithTimeout(g_addrs[1], g.redis_port, tv);
  assert_non_null(rc);
  assert_int_equal(rc->err, 0);
  redisSetTimeout(rc, tv);
  redisReply *rep = redisCommand(rc, "SUBSCRIBE sp:local:eu-west:changes");
  assert_non_null(rep);
  freeReplyObject(rep);
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
  json_t *a = write_ok(0, "POST", path,
                       "{\"component\":{\"name\":\"published\",\"status\":\"operational\"}}");
  const char *id = json_string_value(json_object_get(a, "id"));
  int seen = 0;
  long long end = now_ms() + 5000;
  while (!seen && now_ms() < end) {
    void *r = NULL;
    if (redisGetReply(rc, &r) != REDIS_OK)
      break;
    rep = r;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
        rep->element[2]->type == REDIS_REPLY_STRING) {
      crdt_delta *d;
      assert_int_equal(crdt_delta_new(NULL, &d), 0);
      assert_int_equal(
          crdt_delta_decode(d, (const uint8_t *)rep->element[2]->str, rep->element[2]->len), 0);
      for (size_t i = 0; i < crdt_delta_count(d); i++)
        seen |= strcmp(crdt_delta_get(d, i)->id, id) == 0 && crdt_delta_get(d, i)->origin == 0;
      crdt_delta_free(d);
    }
    freeReplyObject(rep);
  }
  redisFree(rc);
  if (!seen)
    fail_msg("no delta with component %s published on eu-west's channel", id);
  json_decref(a);
}

static void test_metrics_and_lag(void **state) {
  (void)state;
  assert_true(g.up);
  char dir[PATH_MAX + 64], cert[PATH_MAX + 96], key[PATH_MAX + 96], ca[PATH_MAX + 96];
  snprintf(dir, sizeof dir, "%s/var/tls", g.dir);
  snprintf(ca, sizeof ca, "%s/ca.pem", dir);
  snprintf(cert, sizeof cert, "%s/eu-west.pem", dir);
  snprintf(key, sizeof key, "%s/eu-west.key", dir);
  h2_probe *p = malloc(sizeof *p);
  probe_open(p, ca, cert, key);
  assert_int_equal(probe_request(p, "GET", "/metrics", NULL, 0), 200);
  assert_non_null(strstr(p->body, "sp_repl_lag_ms{peer=\"eu-west\"}"));
  assert_non_null(strstr(p->body, "sp_repl_lag_ms{peer=\"ap-south\"}"));
  assert_null(strstr(p->body, "peer=\"us-east\"")); /* not its own peer */
  /* us-east sent the demo page and the writes above */
  const char *sent = strstr(p->body, "sp_repl_changes_sent_total{peer=\"eu-west\"} ");
  assert_non_null(sent);
  assert_true(atol(sent + strlen("sp_repl_changes_sent_total{peer=\"eu-west\"} ")) > 0);
  assert_int_equal(probe_request(p, "GET", "/ready", NULL, 0), 200);
  assert_int_equal(probe_request(p, "GET", "/health", NULL, 0), 200);
  probe_close(p);
  free(p);

  run_out *r = malloc(sizeof *r);
  run(r, "status", "--json", (const char *)NULL);
  expect(r, 0, "status");
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
  snprintf(ca, sizeof ca, "%s/other-ca.pem", g.dir);
  snprintf(key, sizeof key, "%s/other-ca.key", g.dir);
  sp_tls_cert_spec spec = {"other-ca", 0, 1, -60, 3600, NULL, NULL};
  if (sp_tls_issue(&spec, ca, key, err, sizeof err))
    fail_msg("issue: %s", err);
  char lcert[PATH_MAX + 64], lkey[PATH_MAX + 64];
  snprintf(lcert, sizeof lcert, "%s/fake-eu-west.pem", g.dir);
  snprintf(lkey, sizeof lkey, "%s/fake-eu-west.key", g.dir);
  sp_tls_cert_spec leaf = {"eu-west", 1, 0, -60, 3600, ca, key};
  if (sp_tls_issue(&leaf, lcert, lkey, err, sizeof err))
    fail_msg("issue: %s", err);
  /* trusting the real CA (so the failure is ours being refused) */
  snprintf(cca, sizeof cca, "%s/var/tls/ca.pem", g.dir);
  h2_probe *p = malloc(sizeof *p);
  probe_open(p, cca, lcert, lkey);
  int rc = probe_request(p, "GET", "/metrics", NULL, 0);
  assert_int_not_equal(rc, 200);
  assert_true(rc < 0);
  probe_wait(p, &p->disconnected, 5000);
  assert_true(p->disconnected);
  assert_false(p->connected && p->state_err == 0);
  probe_close(p);

  /* a cluster certificate for a region that is not a peer: TLS is fine,
   * replication is refused */
  snprintf(ccakey, sizeof ccakey, "%s/var/tls/ca.key", g.dir);
  snprintf(cert, sizeof cert, "%s/mallory.pem", g.dir);
  snprintf(key, sizeof key, "%s/mallory.key", g.dir);
  sp_tls_cert_spec m = {"mallory", 1, 0, -60, 3600, cca, ccakey};
  if (sp_tls_issue(&m, cert, key, err, sizeof err))
    fail_msg("issue: %s", err);
  probe_open(p, cca, cert, key);
  assert_int_equal(probe_request(p, "POST", "/repl/v1/handshake", "x", 1), 403);
  assert_int_equal(probe_request(p, "GET", "/metrics", NULL, 0), 403);
  probe_close(p);
  free(p);
}

static void test_malformed_body(void **state) {
  (void)state;
  assert_true(g.up);
  char ca[PATH_MAX + 64], cert[PATH_MAX + 64], key[PATH_MAX + 64];
  snprintf(ca, sizeof ca, "%s/var/tls/ca.pem", g.dir);
  snprintf(cert, sizeof cert, "%s/var/tls/ap-south.pem", g.dir);
  snprintf(key, sizeof key, "%s/var/tls/ap-south.key", g.dir);
  h2_probe *p = malloc(sizeof *p);
  probe_open(p, ca, cert, key);
  static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34, 0x00, 0x99};
  assert_int_equal(probe_request(p, "POST", "/repl/v1/batch", junk, sizeof junk), 400);
  assert_int_equal(probe_request(p, "POST", "/repl/v1/handshake", junk, sizeof junk), 400);
  assert_int_equal(probe_request(p, "POST", "/repl/v1/batch", "", 0), 400);
  assert_int_equal(probe_request(p, "POST", "/repl/v1/nothing", junk, sizeof junk), 404);
  /* the same connection still works */
  assert_int_equal(probe_request(p, "GET", "/metrics", NULL, 0), 200);
  const char *bad = strstr(p->body, "\nsp_repl_bad_requests_total ");
  assert_non_null(bad);
  assert_true(atol(bad + strlen("\nsp_repl_bad_requests_total ")) >= 3);
  probe_close(p);
  free(p);
  /* and replication carries on: a write in us-east still reaches ap-south */
  char path[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
  json_t *a = write_ok(0, "POST", path,
                       "{\"component\":{\"name\":\"after junk\",\"status\":\"major_outage\"}}");
  char id[64];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(a, "id")));
  json_decref(a);
  wait_public(2, id, "major_outage", 5000);
}

static void test_sigterm_and_catch_up(void **state) {
  (void)state;
  assert_true(g.up);
  pid_t pid = pidfile("us-east", "statusd-replicad");
  assert_true(alive(pid));
  assert_int_equal(kill(pid, SIGTERM), 0);
  int st = 0;
  long long end = now_ms() + 15000;
  pid_t w = 0;
  while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now_ms() < end)
    sleep_ms(20);
  assert_int_equal(w, pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  /* a dead peer blocks no one: eu-west -> ap-south still flows */
  char path[256], id[64];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
  json_t *a = write_ok(1, "POST", path,
                       "{\"component\":{\"name\":\"while down\",\"status\":\"partial_outage\"}}");
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(a, "id")));
  json_decref(a);
  wait_public(2, id, "partial_outage", 5000);
  sleep_ms(300);
  char *s = public_status(0, id); /* us-east's own replicad is down */
  assert_non_null(s);
  assert_string_equal(s, "");
  free(s);
  /* restarted, it catches up */
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  expect(r, 0, "up again");
  free(r);
  wait_public(0, id, "partial_outage", 8000);
  wait_converged("after restart");
}

/* Every replicad log (after a graceful stop: LeakSanitizer reports at exit)
 * is free of sanitizer reports and crashes. */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  run_out *r = malloc(sizeof *r);
  run(r, "down", (const char *)NULL);
  expect(r, 0, "down");
  free(r);
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/%s/log/statusd-replicad.log", g.state, g_regions[i]);
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
    assert_int_equal(stopping, listening); /* every start ended gracefully */
  }
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
