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

#include "sp_h2.h"
#include "sp_tls.h"

#define PORT_SHIFT 24000
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
  pid_t manual; /* a replicad started by the test itself */
  int api_port, repl_port, redis_port, pg_port;
  char pg_db[64], pg_user[64];
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
  if (r->status != status) {
    /* cmocka cuts long messages: the whole output goes to stderr first */
    fprintf(stderr, "%s: stdout:\n%s\nstderr:\n%s\n", what, r->out, r->err);
    fail_msg("%s: exit %d, wanted %d\nstdout:\n%s\nstderr:\n%s", what, r->status, status, r->out,
             r->err);
  }
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
      json_t *pg = json_object_get(r, "postgres");
      g.pg_port = (int)json_integer_value(json_object_get(pg, "port"));
      snprintf(g.pg_db, sizeof g.pg_db, "%s", json_string_value(json_object_get(pg, "dbname")));
      snprintf(g.pg_user, sizeof g.pg_user, "%s", json_string_value(json_object_get(pg, "user")));
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
  snprintf(g.dir, sizeof g.dir, "%s/sp-replicad-repair.XXXXXX", base && *base ? base : "/tmp");
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
  if (g.manual > 0 && alive(g.manual)) {
    kill(g.manual, SIGKILL);
    waitpid(g.manual, NULL, 0);
  }
  kill_leftovers();
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g.dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g.dir);
  curl_global_cleanup();
  return 0;
}

/* ---- an sp_h2 client in the test (reading /metrics) ----------------------- */

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

/* Connects to region `region`'s replication port with cert/key signed by ca
 * (PEM files). */
static void probe_open(h2_probe *p, int region, const char *ca, const char *cert,
                       const char *key) {
  memset(p, 0, sizeof *p);
  assert_int_equal(uv_loop_init(&p->loop), 0);
  assert_int_equal(uv_timer_init(&p->loop, &p->timer), 0);
  char err[512];
  int rc = sp_tls_ctx_new_client(ca, cert, key, "h2", err, sizeof err, &p->tls);
  if (rc)
    fail_msg("client tls: %s", err);
  assert_int_equal(sp_h2_client_new(&p->loop, p->tls, NULL, g_addrs[region], g.repl_port,
                                    g_regions[region],
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

/* The value of metric line `name` (e.g. `sp_repl_x_total{peer="y"}`) in
 * region's /metrics, read with the region's own certificate; -1 if absent. */
static long long metric(int region, const char *name) {
  char ca[PATH_MAX + 64], cert[PATH_MAX + 64], key[PATH_MAX + 64];
  snprintf(ca, sizeof ca, "%s/var/tls/ca.pem", g.dir);
  snprintf(cert, sizeof cert, "%s/var/tls/%s.pem", g.dir, g_regions[region]);
  snprintf(key, sizeof key, "%s/var/tls/%s.key", g.dir, g_regions[region]);
  h2_probe *p = malloc(sizeof *p);
  assert_non_null(p);
  probe_open(p, region, ca, cert, key);
  assert_int_equal(probe_request(p, "GET", "/metrics", NULL, 0), 200);
  char pat[256];
  snprintf(pat, sizeof pat, "\n%s ", name);
  const char *at = strstr(p->body, pat);
  long long v = at ? atoll(at + strlen(pat)) : -1;
  probe_close(p);
  free(p);
  return v;
}

/* ---- helpers for this file ---------------------------------------------------- */

/* One query in region `region`'s database; the result (PQclear) or a test
 * failure. */
static PGresult *sql(int region, const char *q) {
  char ci[512];
  snprintf(ci, sizeof ci, "host=%s port=%d dbname=%s user=%s connect_timeout=5", g_addrs[region],
           g.pg_port, g.pg_db, g.pg_user);
  PGconn *db = PQconnectdb(ci);
  if (PQstatus(db) != CONNECTION_OK)
    fail_msg("connect %s: %s", g_regions[region], PQerrorMessage(db));
  PGresult *res = PQexec(db, q);
  if (PQresultStatus(res) != PGRES_TUPLES_OK)
    fail_msg("%s in %s: %s", q, g_regions[region], PQerrorMessage(db));
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
  long long end = now_ms() + ms, got;
  while ((got = sql_int(region, q)) != want && now_ms() < end)
    sleep_ms(100);
  if (got != want)
    fail_msg("%s in %s: %lld, wanted %lld", q, g_regions[region], got, want);
}

/* SIGTERMs the replicad with PID pid and waits for a clean exit. */
static void stop_pid(pid_t pid) {
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
}

static void stop_replicad(int region) { stop_pid(pidfile(g_regions[region], "statusd-replicad")); }

/* Starts region's replicad from the test (statusctl up would also start the
 * others that are down), logging to <dir>/<region>-manual.log. */
static pid_t start_replicad(int region) {
  char log[PATH_MAX + 64];
  snprintf(log, sizeof log, "%s/%s-manual.log", g.dir, g_regions[region]);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(g.replicad, g.replicad, "--topology", g.topo, "--region", g_regions[region],
          (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* 1 when the log of region's statusctl-started replicad has a line holding
 * all of a, b and c. */
static int log_has(int region, const char *a, const char *b, const char *c) {
  char path[PATH_MAX + 128], line[8192];
  snprintf(path, sizeof path, "%s/%s/log/statusd-replicad.log", g.state, g_regions[region]);
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
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
  snprintf(js, sizeof js, "{\"component\":{\"name\":\"%s\",\"status\":\"%s\"}}", name, status);
  json_t *a = write_ok(region, "POST", path, js);
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
             "--log-retention-ms '%s' 2>&1", g.replicad, g.topo, bad[i]);
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
  expect(r, 0, "up");
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

/* A write whose origin died after it reached eu-west only reaches ap-south
 * through eu-west. */
static void test_relay(void **state) {
  (void)state;
  assert_true(g.up);
  stop_replicad(2); /* ap-south: us-east's fan-out cannot finish */
  char id[64];
  new_component(0, "relayed", "under_maintenance", id, sizeof id);
  wait_public(1, id, "under_maintenance", 5000);
  stop_replicad(0); /* the origin is gone before reaching ap-south */
  char *s = public_status(2, id);
  assert_non_null(s);
  assert_string_equal(s, ""); /* not there yet: only relaying can bring it */
  free(s);
  g.manual = start_replicad(2);
  wait_public(2, id, "under_maintenance", 10000);
  assert_true(log_has(1, "\"relay on\"", "\"peer\":\"ap-south\"", "\"origin\":\"us-east\""));
  stop_pid(g.manual);
  g.manual = 0;
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL); /* us-east and ap-south again */
  expect(r, 0, "up again");
  free(r);
  wait_converged("after relay");
}

/* Acks are persisted per peer and the logs are trimmed under them only. */
static void test_acks_and_trim(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  new_component(0, "trim me", "operational", id, sizeof id);
  for (int i = 1; i < NREGIONS; i++)
    wait_public(i, id, "operational", 5000);
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
  wait_public(1, id, "degraded_performance", 5000);
  long long seq = sql_int(0, "SELECT seq FROM sp_vclock WHERE origin = 0");
  assert_true(seq > 0);
  sleep_ms(2500); /* two trim periods */
  char q[256];
  snprintf(q, sizeof q, "SELECT count(*) FROM sp_change_log WHERE origin = 0 AND seq = %lld", seq);
  assert_int_equal(sql_int(0, q), 1);
  assert_int_equal(sql_int(1, q), 1);
  /* ap-south back: it gets the change, acks it, and the logs empty out */
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  expect(r, 0, "up again");
  free(r);
  wait_public(2, id, "degraded_performance", 8000);
  for (int i = 0; i < NREGIONS; i++)
    wait_sql(i, "SELECT count(*) FROM sp_change_log", 0, 5000);
  assert_true(log_has(0, "\"change log trimmed\"", "\"origin\":0", "\"rows\""));
  wait_converged("after trimming");
}

/* A region that needs rows the others no longer have catches up by
 * snapshot.  Retention 0 trims only what every peer acknowledged, so the
 * test stands in for "past retention" by recording, with ap-south stopped,
 * that ap-south acknowledged everything (as an operator giving up on a peer
 * would): the daemons then trim rows ap-south never got. */
static void test_snapshot_resync(void **state) {
  (void)state;
  assert_true(g.up);
  stop_replicad(2);
  char a[64], b[64];
  new_component(0, "snap from us-east", "partial_outage", a, sizeof a);
  new_component(1, "snap from eu-west", "major_outage", b, sizeof b);
  wait_public(1, a, "partial_outage", 5000);
  wait_public(0, b, "major_outage", 5000);
  for (int i = 0; i < 2; i++) {
    PQclear(sql(i, "UPDATE sp_peer_ack AS a SET seq = v.seq FROM sp_vclock v "
                   "WHERE a.peer = 2 AND a.origin = v.origin RETURNING a.seq"));
    wait_sql(i, "SELECT count(*) FROM sp_change_log WHERE origin IN (0, 1)", 0, 5000);
  }
  char *s = public_status(2, a);
  assert_non_null(s);
  assert_string_equal(s, "");
  free(s);
  run_out *r = malloc(sizeof *r);
  run(r, "up", (const char *)NULL);
  expect(r, 0, "up again");
  free(r);
  wait_converged("after snapshot");
  wait_public(2, a, "partial_outage", 8000);
  wait_public(2, b, "major_outage", 8000);
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
  wait_public(0, a, "operational", 5000);
  new_component(0, "after snapshot 2", "degraded_performance", b, sizeof b);
  wait_public(2, b, "degraded_performance", 5000);
  wait_converged("after the snapshot, new writes");
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
    assert_int_equal(stopping, listening);
  }
  /* and the one the test started itself */
  char path[PATH_MAX + 64], line[8192];
  snprintf(path, sizeof path, "%s/ap-south-manual.log", g.dir);
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
