/* Replication under failure, against real processes: a three-region
 * deployment made by statusctl (a copy of config/topology.local.json in a
 * temporary directory, every port moved up by 23000 so neither `make run`,
 * test_statusctl (+20000) nor test_replicad (+21000) is touched).
 *
 * Three writer threads, one per region, write through the management API
 * of their region (a field of the region's own component, a field of one
 * component every region writes, and new components), each bounded in
 * count and time, and record every write: value, region, wall time sent
 * and answered, and whether it was acknowledged (2xx).  In order:
 *   - eu-west's statusd-replicad is killed with SIGKILL while the writers
 *     run, `statusctl up` restarts it, the writers stop;
 *   - ap-south's replicad is stopped with SIGTERM for 30 s while the
 *     writers run (a write made meanwhile is shown missing there), then
 *     restarted;
 *   after each, `statusctl verify` must say converged within CONVERGE_MS and
 *   every region's public summary must hold every acknowledged write: the
 *   own-component field holds the writer's last acknowledged value (or a
 *   later unacknowledged one, which may have committed), every acknowledged
 *   new component is there, and the shared field holds a value some writer
 *   wrote that no acknowledged write begun LWW_MARGIN_MS after it was
 *   answered superseded (one machine clock: the hybrid clocks follow it);
 *   - a client with ap-south's certificate sends us-east a Handshake whose
 *     min_protocol_version is above what the daemon speaks: it is refused
 *     with a reason naming the versions, logged, the same HTTP/2 connection
 *     then still answers, and replication between all regions carries on;
 *   - finally the replicad logs are free of sanitizer reports.
 *
 * The test process is a child subreaper so the daemons statusctl starts are
 * reaped here; teardown runs `down --purge --force` and SIGKILLs whatever
 * a PID file still names.  Test-only state lives in the one struct `g`
 * (the writer records included: each writer thread owns its own record
 * array until it is joined).
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
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "repl.h"
#include "sp_buf.h"
#include "sp_err.h"
#include "sp_h2.h"
#include "sp_tls.h"

#define PORT_SHIFT 23000
#define RUN_TIMEOUT_MS 120000
#define NREGIONS 3
#define CONVERGE_MS 15000
#define MAX_WRITES 3000    /* per writer and round */
#define WRITE_GAP_MS 150   /* between one writer's writes: statusd-api allows a
                              key 10 requests/s (burst 100), per process */
#define WRITERS_MAX_MS 90000
#define LWW_MARGIN_MS 50   /* clock granularity and HLC ties between regions */
#define CHECK_MS 10000     /* for the public summaries to show a converged state */

typedef enum wkind { W_OWN, W_SHARED, W_CREATE } wkind;

/* One write as the writer saw it. */
typedef struct wrec {
  wkind kind;
  int acked;        /* the API answered 2xx */
  long long t0, t1; /* wall ms: sent, answered */
  char value[64];   /* description written (OWN, SHARED) or name (CREATE) */
  char id[64];      /* CREATE: the new component's id */
} wrec;

typedef struct writer {
  uv_thread_t thread;
  int region;
  int n;
  wrec rec[MAX_WRITES];
} writer;

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
  /* the writers of the current round */
  atomic_int stop;
  int writing; /* threads started and not joined */
  long long deadline;
  int round;
  char own[NREGIONS][64]; /* each region's own component */
  char shared[64];        /* the component every region writes */
  writer w[NREGIONS];
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
 * *out (may be NULL) gets the body (free()).  Thread-safe (curl is
 * initialised globally in setup). */
static long http(int region, const char *method, const char *path, const char *json, char **out) {
  char url[512];
  snprintf(url, sizeof url, "http://%s:%d%s", g_addrs[region], g.api_port, path);
  CURL *h = curl_easy_init();
  if (h == NULL) /* no cmocka assert: the writer threads call this too */
    return 0;
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
  size_t body_len;
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
  /* bytes, not a string: the handshake reply is protobuf */
  p->body_len = 0;
  if (res && res->body.len < sizeof p->body) {
    memcpy(p->body, res->body.base, res->body.len);
    p->body_len = res->body.len;
  }
  p->body[p->body_len] = '\0';
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

/* Connects to region `to`'s replication port with cert/key signed by ca
 * (PEM files). */
static void probe_open(h2_probe *p, int to, const char *ca, const char *cert, const char *key) {
  memset(p, 0, sizeof *p);
  assert_int_equal(uv_loop_init(&p->loop), 0);
  assert_int_equal(uv_timer_init(&p->loop, &p->timer), 0);
  char err[512];
  int rc = sp_tls_ctx_new_client(ca, cert, key, "h2", err, sizeof err, &p->tls);
  if (rc)
    fail_msg("client tls: %s", err);
  assert_int_equal(sp_h2_client_new(&p->loop, p->tls, NULL, g_addrs[to], g.repl_port, g_regions[to],
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
  snprintf(g.dir, sizeof g.dir, "%s/sp-replchaos.XXXXXX", base && *base ? base : "/tmp");
  if (mkdtemp(g.dir) == NULL || chmod(g.dir, 0755) != 0) {
    perror("mkdtemp");
    return -1;
  }
  snprintf(g.topo, sizeof g.topo, "%s/topology.json", g.dir);
  snprintf(g.state, sizeof g.state, "%s/var", g.dir);
  /* build/tests/replication/test_repl_chaos -> build/statusctl */
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

static void writers_stop(void);

static int teardown(void **state) {
  (void)state;
  writers_stop();
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

/* ---- the writers ------------------------------------------------------------ */

static long long wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Runs in its own thread: no cmocka asserts here, everything is recorded
 * and judged by the main thread after the join. */
static void writer_main(void *arg) {
  writer *w = arg;
  for (int k = 0; k < MAX_WRITES && !atomic_load(&g.stop) && now_ms() < g.deadline; k++) {
    wrec *r = &w->rec[w->n];
    char path[256], json[256];
    const char *method = "PATCH";
    memset(r, 0, sizeof *r);
    if (k % 5 == 4) {
      r->kind = W_CREATE;
      method = "POST";
      snprintf(r->value, sizeof r->value, "chaos %d %s %d", g.round, g_regions[w->region], k);
      snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
      snprintf(json, sizeof json, "{\"component\":{\"name\":\"%s\"}}", r->value);
    } else {
      r->kind = k % 5 == 2 ? W_SHARED : W_OWN;
      snprintf(r->value, sizeof r->value, "%s round %d write %d", g_regions[w->region], g.round, k);
      snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.page,
               r->kind == W_SHARED ? g.shared : g.own[w->region]);
      snprintf(json, sizeof json, "{\"component\":{\"description\":\"%s\"}}", r->value);
    }
    char *b = NULL;
    r->t0 = wall_ms();
    long st = http(w->region, method, path, json, &b);
    r->t1 = wall_ms();
    r->acked = st >= 200 && st <= 299;
    if (st == 429) /* refused, so not written: wait out the bucket */
      sleep_ms(1000);
    if (r->acked && r->kind == W_CREATE) {
      json_t *j = json_loads(b, 0, NULL);
      const char *id = json_string_value(json_object_get(j, "id"));
      snprintf(r->id, sizeof r->id, "%s", id ? id : "");
      json_decref(j);
    }
    free(b);
    w->n++;
    sleep_ms(WRITE_GAP_MS);
  }
}

static void create_component(int region, const char *name, char *id, size_t len) {
  char path[256], json[256];
  snprintf(path, sizeof path, "/v1/pages/%s/components", g.page);
  snprintf(json, sizeof json, "{\"component\":{\"name\":\"%s\",\"status\":\"operational\"}}", name);
  json_t *a = write_ok(region, "POST", path, json);
  const char *s = json_string_value(json_object_get(a, "id"));
  assert_non_null(s);
  snprintf(id, len, "%s", s);
  json_decref(a);
}

static void writers_start(int round) {
  char name[64];
  g.round = round;
  for (int r = 0; r < NREGIONS; r++) {
    snprintf(name, sizeof name, "own %s %d", g_regions[r], round);
    create_component(r, name, g.own[r], sizeof g.own[r]);
  }
  snprintf(name, sizeof name, "shared %d", round);
  create_component(0, name, g.shared, sizeof g.shared);
  /* the others PATCH it: it must be there first */
  wait_public(1, g.shared, "operational", 5000);
  wait_public(2, g.shared, "operational", 5000);
  atomic_store(&g.stop, 0);
  g.deadline = now_ms() + WRITERS_MAX_MS;
  for (int r = 0; r < NREGIONS; r++) {
    g.w[r].region = r;
    g.w[r].n = 0;
    assert_int_equal(uv_thread_create(&g.w[r].thread, writer_main, &g.w[r]), 0);
  }
  g.writing = 1;
}

/* Also from teardown, after a failed test left them running. */
static void writers_stop(void) {
  if (!g.writing)
    return;
  atomic_store(&g.stop, 1);
  for (int r = 0; r < NREGIONS; r++)
    uv_thread_join(&g.w[r].thread);
  g.writing = 0;
}

/* Every writer had writes acknowledged that it began within [from, to]
 * (wall ms): writes did flow in every region during the outage. */
static void assert_writes_during(long long from, long long to) {
  for (int r = 0; r < NREGIONS; r++) {
    int n = 0;
    for (int i = 0; i < g.w[r].n; i++)
      n += g.w[r].rec[i].acked && g.w[r].rec[i].t0 >= from && g.w[r].rec[i].t0 <= to;
    if (n < 3)
      fail_msg("%s: only %d writes acknowledged during the outage", g_regions[r], n);
  }
}

/* ---- checking the writes against a region's public summary ---------------- */

/* Region `region`'s components as {id: component}, or NULL. */
static json_t *components_of(int region) {
  char path[256], *b;
  snprintf(path, sizeof path, "/pages/%s/api/v2/summary.json", g.page);
  long st = http(region, "GET", path, NULL, &b);
  json_t *s = st == 200 ? json_loads(b, 0, NULL) : NULL;
  free(b);
  if (s == NULL)
    return NULL;
  json_t *out = json_object();
  size_t i;
  json_t *c;
  json_array_foreach(json_object_get(s, "components"), i, c) {
    const char *id = json_string_value(json_object_get(c, "id"));
    if (id)
      json_object_set(out, id, c);
  }
  json_decref(s);
  return out;
}

static const char *field(json_t *comps, const char *id, const char *name) {
  const char *v = json_string_value(json_object_get(json_object_get(comps, id), name));
  return v ? v : "(absent)";
}

/* Checks one region against the writers' records; 0, or -1 with why. */
static int check_region(int region, char *why, size_t len) {
  json_t *comps = components_of(region);
  if (comps == NULL) {
    snprintf(why, len, "%s: no summary", g_regions[region]);
    return -1;
  }
  int bad = 0;
  for (int r = 0; r < NREGIONS && !bad; r++) {
    const writer *w = &g.w[r];
    /* own component: the last acknowledged value, or a later write whose
     * answer was lost (it may have committed) */
    int last = -1;
    for (int i = 0; i < w->n; i++)
      if (w->rec[i].kind == W_OWN && w->rec[i].acked)
        last = i;
    const char *d = field(comps, g.own[r], "description");
    int ok = last < 0;
    for (int i = last < 0 ? 0 : last; i < w->n && !ok; i++)
      ok = w->rec[i].kind == W_OWN && strcmp(w->rec[i].value, d) == 0;
    if (!ok) {
      snprintf(why, len, "%s: %s's component %s reads \"%s\", last acknowledged \"%s\"",
               g_regions[region], g_regions[r], g.own[r], d, w->rec[last].value);
      bad = 1;
    }
    /* every acknowledged new component */
    for (int i = 0; i < w->n && !bad; i++) {
      const wrec *x = &w->rec[i];
      if (x->kind != W_CREATE || !x->acked)
        continue;
      if (strcmp(field(comps, x->id, "name"), x->value) != 0) {
        snprintf(why, len, "%s: component %s (\"%s\", acknowledged by %s) reads name \"%s\"",
                 g_regions[region], x->id, x->value, g_regions[r], field(comps, x->id, "name"));
        bad = 1;
      }
    }
  }
  /* the shared field: a value somebody wrote, not superseded by an
   * acknowledged write begun clearly after it was answered */
  const char *d = field(comps, g.shared, "description");
  const wrec *win = NULL;
  for (int r = 0; r < NREGIONS && !win; r++)
    for (int i = 0; i < g.w[r].n && !win; i++)
      if (g.w[r].rec[i].kind == W_SHARED && strcmp(g.w[r].rec[i].value, d) == 0)
        win = &g.w[r].rec[i];
  if (!bad && win == NULL) {
    snprintf(why, len, "%s: shared component %s reads \"%s\", which nobody wrote",
             g_regions[region], g.shared, d);
    bad = 1;
  }
  for (int r = 0; r < NREGIONS && !bad; r++)
    for (int i = 0; i < g.w[r].n && !bad; i++) {
      const wrec *x = &g.w[r].rec[i];
      if (x->kind == W_SHARED && x->acked && x->t0 > win->t1 + LWW_MARGIN_MS) {
        snprintf(why, len,
                 "%s: shared component %s reads \"%s\" (answered at %lld) but \"%s\" was "
                 "acknowledged later (sent at %lld)",
                 g_regions[region], g.shared, d, win->t1, x->value, x->t0);
        bad = 1;
      }
    }
  json_decref(comps);
  return bad ? -1 : 0;
}

/* Every region shows every acknowledged write (within CHECK_MS: the public
 * summaries are served from the API's caches). */
static void check_writes(const char *what) {
  char why[1024] = "";
  long long end = now_ms() + CHECK_MS;
  int acked = 0, total = 0;
  for (int r = 0; r < NREGIONS; r++)
    for (int i = 0; i < g.w[r].n; i++) {
      acked += g.w[r].rec[i].acked;
      total++;
    }
  assert_true(acked > 0);
  for (;;) {
    int bad = 0;
    for (int i = 0; i < NREGIONS && !bad; i++)
      bad = check_region(i, why, sizeof why) != 0;
    if (!bad)
      break;
    if (now_ms() >= end)
      fail_msg("%s (%d of %d writes acknowledged): %s", what, acked, total, why);
    sleep_ms(200);
  }
  print_message("%s: %d of %d writes acknowledged, all present in %d regions\n", what, acked,
                total, NREGIONS);
}

/* Waits for pid (a child: we are its subreaper) to exit; its wait status. */
static int reap(pid_t pid, long ms) {
  int st = 0;
  long long end = now_ms() + ms;
  pid_t w;
  while ((w = waitpid(pid, &st, WNOHANG)) == 0 && now_ms() < end)
    sleep_ms(20);
  if (w != pid)
    fail_msg("pid %d did not exit within %ld ms", (int)pid, ms);
  return st;
}

static void restart(const char *what) {
  run_out *r = malloc(sizeof *r);
  assert_non_null(r);
  run(r, "up", (const char *)NULL);
  expect(r, 0, what);
  free(r);
}

/* ---- tests, in order -------------------------------------------------------- */

static void test_up(void **state) {
  (void)state;
  run_out *r = malloc(sizeof *r);
  assert_non_null(r);
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

static void test_kill9_under_writes(void **state) {
  (void)state;
  assert_true(g.up);
  writers_start(1);
  sleep_ms(1000);
  pid_t pid = pidfile("eu-west", "statusd-replicad");
  assert_true(alive(pid));
  long long killed = wall_ms();
  assert_int_equal(kill(pid, SIGKILL), 0);
  int st = reap(pid, 5000);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  sleep_ms(1500);
  long long restarted = wall_ms();
  restart("up after kill -9");
  pid_t again = pidfile("eu-west", "statusd-replicad");
  assert_true(alive(again));
  assert_int_not_equal(again, pid);
  sleep_ms(1500); /* writes keep flowing into the restarted daemon */
  writers_stop();
  assert_writes_during(killed, restarted);
  wait_converged("after kill -9 and restart");
  check_writes("after kill -9 and restart");
}

static void test_stopped_30s_under_writes(void **state) {
  (void)state;
  assert_true(g.up);
  writers_start(2);
  sleep_ms(500);
  pid_t pid = pidfile("ap-south", "statusd-replicad");
  assert_true(alive(pid));
  long long stopped = wall_ms();
  assert_int_equal(kill(pid, SIGTERM), 0);
  int st = reap(pid, 15000);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  /* ap-south really misses what happens meanwhile, eu-west does not */
  char id[64];
  create_component(0, "made while ap-south is down", id, sizeof id);
  wait_public(1, id, "operational", 5000);
  sleep_ms(500);
  char *s = public_status(2, id);
  assert_non_null(s);
  assert_string_equal(s, "");
  free(s);
  long long left = stopped + 30000 - wall_ms();
  if (left > 0)
    sleep_ms((long)left);
  long long restarted = wall_ms();
  restart("up after 30 s down");
  assert_true(alive(pidfile("ap-south", "statusd-replicad")));
  sleep_ms(1000);
  writers_stop();
  assert_writes_during(stopped, restarted);
  wait_converged("after 30 s down");
  wait_public(2, id, "operational", 5000);
  check_writes("after 30 s down");
}

/* A Handshake for versions above ours, from ap-south (its real certificate)
 * to us-east. */
static void test_wrong_protocol_version(void **state) {
  (void)state;
  assert_true(g.up);
  char ca[PATH_MAX + 64], cert[PATH_MAX + 64], key[PATH_MAX + 64];
  snprintf(ca, sizeof ca, "%s/var/tls/ca.pem", g.dir);
  snprintf(cert, sizeof cert, "%s/var/tls/ap-south.pem", g.dir);
  snprintf(key, sizeof key, "%s/var/tls/ap-south.key", g.dir);
  repl_msg m;
  memset(&m, 0, sizeof m);
  m.type = REPL_MSG_HANDSHAKE;
  m.version = REPL_PROTOCOL_VERSION + 1;
  snprintf(m.u.hs.cluster_id, sizeof m.u.hs.cluster_id, "local");
  snprintf(m.u.hs.region_name, sizeof m.u.hs.region_name, "ap-south");
  m.u.hs.region_id = 2;
  m.u.hs.min_protocol_version = REPL_PROTOCOL_VERSION + 1;
  m.u.hs.protocol_version = REPL_PROTOCOL_VERSION + 2;
  sp_buf b;
  sp_buf_init(&b, REPL_MAX_MESSAGE);
  assert_int_equal(repl_msg_encode(&m, &b), 0);
  char versions[64];
  snprintf(versions, sizeof versions, "%d..%d", REPL_PROTOCOL_VERSION + 1,
           REPL_PROTOCOL_VERSION + 2);

  h2_probe *p = malloc(sizeof *p);
  assert_non_null(p);
  probe_open(p, 0, ca, cert, key);
  int st = probe_request(p, "POST", "/repl/v1/handshake", b.base, b.len);
  sp_buf_release(&b);
  if (st == 200) {
    /* refused in protocol: a HandshakeReply with accepted false */
    repl_msg r;
    assert_int_equal(repl_msg_decode((const uint8_t *)p->body, p->body_len, &r), 0);
    assert_int_equal(r.type, REPL_MSG_HANDSHAKE_REPLY);
    assert_false(r.u.reply.accepted);
    assert_int_equal(r.u.reply.protocol_version, 0);
    if (strstr(r.u.reply.reason, versions) == NULL)
      fail_msg("refusal does not name the versions %s: \"%s\"", versions, r.u.reply.reason);
    repl_msg_release(&r);
  } else {
    /* or refused in HTTP: a client error whose body names the versions */
    if (st < 400 || st > 499 || strstr(p->body, versions) == NULL)
      fail_msg("wrong version: status %d, body \"%s\"", st, p->body);
  }
  /* the same connection still answers */
  assert_int_equal(probe_request(p, "GET", "/metrics", NULL, 0), 200);
  assert_false(p->disconnected);
  probe_close(p);
  free(p);

  /* and logged */
  char path[PATH_MAX + 128], line[8192];
  snprintf(path, sizeof path, "%s/us-east/log/statusd-replicad.log", g.state);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  int logged = 0;
  while (fgets(line, sizeof line, f))
    logged |= strstr(line, "ap-south") != NULL && strstr(line, versions) != NULL;
  fclose(f);
  if (!logged)
    fail_msg("%s has no line naming ap-south and the versions %s", path, versions);

  /* replication between every pair carries on, ap-south <-> us-east too */
  char ids[NREGIONS][64];
  for (int r = 0; r < NREGIONS; r++) {
    char name[64];
    snprintf(name, sizeof name, "after bad version from %s", g_regions[r]);
    create_component(r, name, ids[r], sizeof ids[r]);
  }
  for (int r = 0; r < NREGIONS; r++)
    for (int to = 0; to < NREGIONS; to++)
      wait_public(to, ids[r], "operational", 8000);
  wait_converged("after a wrong protocol version");
}

/* Every replicad log is free of sanitizer reports and crashes (a graceful
 * stop: LeakSanitizer reports at exit). */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  run_out *r = malloc(sizeof *r);
  assert_non_null(r);
  run(r, "down", (const char *)NULL);
  expect(r, 0, "down");
  free(r);
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128], line[8192];
    snprintf(path, sizeof path, "%s/%s/log/statusd-replicad.log", g.state, g_regions[i]);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int listening = 0;
    while (fgets(line, sizeof line, f)) {
      if (strstr(line, "Sanitizer") || strstr(line, "runtime error:"))
        fail_msg("%s: %s", path, line);
      listening += strstr(line, "\"msg\":\"listening\"") != NULL;
    }
    fclose(f);
    /* eu-west and ap-south were started twice */
    assert_int_equal(listening, i == 0 ? 1 : 2);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_up),
      cmocka_unit_test(test_kill9_under_writes),
      cmocka_unit_test(test_stopped_30s_under_writes),
      cmocka_unit_test(test_wrong_protocol_version),
      cmocka_unit_test(test_stop_logs_clean),
  };
  return cmocka_run_group_tests_name("repl_chaos", tests, setup, teardown);
}
