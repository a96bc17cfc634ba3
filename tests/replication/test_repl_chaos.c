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
#include "deploy_harness.h"
#include "sp_err.h"
#include "sp_h2.h"
#include "sp_tls.h"

#define PORT_SHIFT 23000
#define NREGIONS DH_NREGIONS
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

static struct {
  dh_deploy d; /* temp dir, topology copy, ports, API key and page */
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

/* ---- setup ------------------------------------------------------------------ */

static int setup(void **state) {
  (void)state;
  return dh_deploy_setup(&g.d, "sp-replchaos", PORT_SHIFT);
}

static void writers_stop(void);

static int teardown(void **state) {
  (void)state;
  writers_stop();
  dh_deploy_teardown(&g.d);
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
  for (int k = 0; k < MAX_WRITES && !atomic_load(&g.stop) && dh_now_ms() < g.deadline; k++) {
    wrec *r = &w->rec[w->n];
    char path[256], json[256];
    const char *method = "PATCH";
    memset(r, 0, sizeof *r);
    if (k % 5 == 4) {
      r->kind = W_CREATE;
      method = "POST";
      snprintf(r->value, sizeof r->value, "chaos %d %s %d", g.round, dh_regions[w->region], k);
      snprintf(path, sizeof path, "/v1/pages/%s/components", g.d.page);
      snprintf(json, sizeof json, "{\"component\":{\"name\":\"%s\"}}", r->value);
    } else {
      r->kind = k % 5 == 2 ? W_SHARED : W_OWN;
      snprintf(r->value, sizeof r->value, "%s round %d write %d", dh_regions[w->region], g.round,
               k);
      snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.d.page,
               r->kind == W_SHARED ? g.shared : g.own[w->region]);
      snprintf(json, sizeof json, "{\"component\":{\"description\":\"%s\"}}", r->value);
    }
    char *b = NULL;
    r->t0 = wall_ms();
    long st = dh_http_region(&g.d, w->region, method, path, json, &b);
    r->t1 = wall_ms();
    r->acked = st >= 200 && st <= 299;
    if (st == 429) /* refused, so not written: wait out the bucket */
      dh_sleep_ms(1000);
    if (r->acked && r->kind == W_CREATE) {
      json_t *j = json_loads(b, 0, NULL);
      const char *id = json_string_value(json_object_get(j, "id"));
      snprintf(r->id, sizeof r->id, "%s", id ? id : "");
      json_decref(j);
    }
    free(b);
    w->n++;
    dh_sleep_ms(WRITE_GAP_MS);
  }
}

static void writers_start(int round) {
  char name[64];
  g.round = round;
  for (int r = 0; r < NREGIONS; r++) {
    snprintf(name, sizeof name, "own %s %d", dh_regions[r], round);
    dh_new_component(&g.d, r, name, "operational", g.own[r], sizeof g.own[r]);
  }
  snprintf(name, sizeof name, "shared %d", round);
  dh_new_component(&g.d, 0, name, "operational", g.shared, sizeof g.shared);
  /* the others PATCH it: it must be there first */
  dh_wait_public(&g.d, 1, g.shared, "operational", 5000);
  dh_wait_public(&g.d, 2, g.shared, "operational", 5000);
  atomic_store(&g.stop, 0);
  g.deadline = dh_now_ms() + WRITERS_MAX_MS;
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
      fail_msg("%s: only %d writes acknowledged during the outage", dh_regions[r], n);
  }
}

/* ---- checking the writes against a region's public summary ---------------- */

/* Region `region`'s components as {id: component}, or NULL. */
static json_t *components_of(int region) {
  char path[256], *b;
  snprintf(path, sizeof path, "/pages/%s/api/v2/summary.json", g.d.page);
  long st = dh_http_region(&g.d, region, "GET", path, NULL, &b);
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
    snprintf(why, len, "%s: no summary", dh_regions[region]);
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
               dh_regions[region], dh_regions[r], g.own[r], d, w->rec[last].value);
      bad = 1;
    }
    /* every acknowledged new component */
    for (int i = 0; i < w->n && !bad; i++) {
      const wrec *x = &w->rec[i];
      if (x->kind != W_CREATE || !x->acked)
        continue;
      if (strcmp(field(comps, x->id, "name"), x->value) != 0) {
        snprintf(why, len, "%s: component %s (\"%s\", acknowledged by %s) reads name \"%s\"",
                 dh_regions[region], x->id, x->value, dh_regions[r], field(comps, x->id, "name"));
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
             dh_regions[region], g.shared, d);
    bad = 1;
  }
  for (int r = 0; r < NREGIONS && !bad; r++)
    for (int i = 0; i < g.w[r].n && !bad; i++) {
      const wrec *x = &g.w[r].rec[i];
      if (x->kind == W_SHARED && x->acked && x->t0 > win->t1 + LWW_MARGIN_MS) {
        snprintf(why, len,
                 "%s: shared component %s reads \"%s\" (answered at %lld) but \"%s\" was "
                 "acknowledged later (sent at %lld)",
                 dh_regions[region], g.shared, d, win->t1, x->value, x->t0);
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
  long long end = dh_now_ms() + CHECK_MS;
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
    if (dh_now_ms() >= end)
      fail_msg("%s (%d of %d writes acknowledged): %s", what, acked, total, why);
    dh_sleep_ms(200);
  }
  print_message("%s: %d of %d writes acknowledged, all present in %d regions\n", what, acked,
                total, NREGIONS);
}

/* Waits for pid (a child: we are its subreaper) to exit; its wait status. */
static int reap(pid_t pid, long ms) {
  int st = 0;
  long long end = dh_now_ms() + ms;
  pid_t w;
  while ((w = waitpid(pid, &st, WNOHANG)) == 0 && dh_now_ms() < end)
    dh_sleep_ms(20);
  if (w != pid)
    fail_msg("pid %d did not exit within %ld ms", (int)pid, ms);
  return st;
}

/* ---- tests, in order -------------------------------------------------------- */

static void test_up(void **state) {
  (void)state;
  dh_up(&g.d);
  for (int i = 0; i < NREGIONS; i++)
    assert_true(dh_alive(dh_pidfile(&g.d, dh_regions[i], "statusd-replicad")));
  g.up = 1;
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
}

static void test_kill9_under_writes(void **state) {
  (void)state;
  assert_true(g.up);
  writers_start(1);
  dh_sleep_ms(1000);
  pid_t pid = dh_pidfile(&g.d, "eu-west", "statusd-replicad");
  assert_true(dh_alive(pid));
  long long killed = wall_ms();
  assert_int_equal(kill(pid, SIGKILL), 0);
  int st = reap(pid, 5000);
  assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  dh_sleep_ms(1500);
  long long restarted = wall_ms();
  dh_ctl_ok(&g.d, "up", "up after kill -9");
  pid_t again = dh_pidfile(&g.d, "eu-west", "statusd-replicad");
  assert_true(dh_alive(again));
  assert_int_not_equal(again, pid);
  dh_sleep_ms(1500); /* writes keep flowing into the restarted daemon */
  writers_stop();
  assert_writes_during(killed, restarted);
  dh_wait_converged(&g.d, "after kill -9 and restart", CONVERGE_MS);
  check_writes("after kill -9 and restart");
}

static void test_stopped_30s_under_writes(void **state) {
  (void)state;
  assert_true(g.up);
  writers_start(2);
  dh_sleep_ms(500);
  long long stopped = wall_ms();
  dh_stop(&g.d, 2, "statusd-replicad");
  /* ap-south really misses what happens meanwhile, eu-west does not */
  char id[64];
  dh_new_component(&g.d, 0, "made while ap-south is down", "operational", id, sizeof id);
  dh_wait_public(&g.d, 1, id, "operational", 5000);
  dh_sleep_ms(500);
  dh_expect_public(&g.d, 2, id, "");
  long long left = stopped + 30000 - wall_ms();
  if (left > 0)
    dh_sleep_ms((long)left);
  long long restarted = wall_ms();
  dh_ctl_ok(&g.d, "up", "up after 30 s down");
  assert_true(dh_alive(dh_pidfile(&g.d, "ap-south", "statusd-replicad")));
  dh_sleep_ms(1000);
  writers_stop();
  assert_writes_during(stopped, restarted);
  dh_wait_converged(&g.d, "after 30 s down", CONVERGE_MS);
  dh_wait_public(&g.d, 2, id, "operational", 5000);
  check_writes("after 30 s down");
}

/* A Handshake for versions above ours, from ap-south (its real certificate)
 * to us-east. */
static void test_wrong_protocol_version(void **state) {
  (void)state;
  assert_true(g.up);
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

  dh_probe *p = malloc(sizeof *p);
  assert_non_null(p);
  dh_probe_open_as(p, &g.d, 0, 2); /* as ap-south */
  int st = dh_probe_request(p, "POST", "/repl/v1/handshake", b.base, b.len);
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
  assert_int_equal(dh_probe_request(p, "GET", "/metrics", NULL, 0), 200);
  assert_false(p->disconnected);
  dh_probe_close(p);
  free(p);

  /* and logged */
  if (!dh_log_has(&g.d, 0, 0, "ap-south", versions, NULL))
    fail_msg("us-east's replicad log has no line naming ap-south and the versions %s", versions);

  /* replication between every pair carries on, ap-south <-> us-east too */
  char ids[NREGIONS][64];
  for (int r = 0; r < NREGIONS; r++) {
    char name[64];
    snprintf(name, sizeof name, "after bad version from %s", dh_regions[r]);
    dh_new_component(&g.d, r, name, "operational", ids[r], sizeof ids[r]);
  }
  for (int r = 0; r < NREGIONS; r++)
    for (int to = 0; to < NREGIONS; to++)
      dh_wait_public(&g.d, to, ids[r], "operational", 8000);
  dh_wait_converged(&g.d, "after a wrong protocol version", CONVERGE_MS);
}

/* Every replicad log is free of sanitizer reports and crashes (a graceful
 * stop: LeakSanitizer reports at exit). */
static void test_stop_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  dh_ctl_ok(&g.d, "down", "down");
  for (int i = 0; i < NREGIONS; i++) {
    char path[PATH_MAX + 128];
    int listening = 0;
    dh_log_path(&g.d, i, "statusd-replicad", path, sizeof path);
    dh_expect_log_clean(path, &listening, NULL);
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
