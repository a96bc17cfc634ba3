/* ops_up: `statusctl up`, the local deployment from the topology.
 *
 * In order, each step skipping what is already there (so a second `up` is
 * a no-op and an `up` after `down` restarts with the data kept):
 *   1. checks: loopback addresses only, the programs exist, the user;
 *   2. directories; the cluster CA and region certificates (ops_tls);
 *   3. the state file: the admin key is generated and recorded first;
 *   4. per region PostgreSQL (initdb on first run, the topology's role and
 *      database), then Redis, then statusd-api and, when it is built,
 *      statusd-replicad: a process whose PID file names a live process of
 *      the right program is left alone; a port taken by anything else is
 *      an error naming region, process and port;
 *   5. wait until every statusd-api answers /ready with 200;
 *   6. the admin key in the first region (statusd-api create-admin-key
 *      --key), the demo page through its management API (ops_demo);
 *   7. seed the other regions once from the first (ops_pg_seed): until
 *      statusd-replicad exists this one-off copy is how they get the key
 *      and the demo page; it is not replication;
 *   8. wait until the demo page reads in every region; print endpoints.
 * A step that fails prints what failed and the tail of its log, and `up`
 * exits 1, leaving what runs running for inspection (`statusctl down`).
 */
#include "ops.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sp_err.h"

#define TAIL_LINES 30
#define KEY_WAIT_MS 15000
#define READABLE_WAIT_MS 15000

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "statusctl: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return OPS_EXIT_FAIL;
}

/* Reports that process k of region r failed, with its log's tail. */
static int proc_failed(const sp_topo_region *r, ops_proc_kind k, const char *what) {
  char log[PATH_MAX + 64];
  ops_proc_logfile(r, k, log, sizeof log);
  fprintf(stderr, "statusctl: %s: %s %s\n", r->name, ops_proc_name(k), what);
  ops_log_tail(stderr, log, TAIL_LINES);
  return OPS_EXIT_FAIL;
}

static int is_loopback(const char *host) {
  struct in_addr a4;
  struct in6_addr a6;
  if (strcmp(host, "localhost") == 0)
    return 1;
  if (inet_pton(AF_INET, host, &a4) == 1)
    return (ntohl(a4.s_addr) >> 24) == 127;
  return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* statusctl runs the deployment of ONE machine; PostgreSQL is set up with
 * trust authentication, which is only acceptable on loopback. */
static int check_topology(const sp_topo *t) {
  for (size_t i = 0; i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    const char *bad = !is_loopback(r->address)          ? r->address
                      : !is_loopback(r->postgres.host) ? r->postgres.host
                      : !is_loopback(r->redis.host)    ? r->redis.host
                                                       : NULL;
    if (bad) {
      fprintf(stderr,
              "statusctl: %s: region %s uses %s, which is not a loopback address: statusctl "
              "up runs the local deployment on one machine only\n",
              t->display_name, r->name, bad);
      return -1;
    }
  }
  return 0;
}

/* 0 when k can start on address:port, else a message and -1. */
static int port_ok(const sp_topo_region *r, ops_proc_kind k, const char *address, uint16_t port) {
  int rc = ops_port_free(address, port);
  if (rc == 0)
    return 0;
  if (rc == SP_ERR_BUSY)
    fprintf(stderr,
            "statusctl: %s: %s: %s:%u is already in use by another process (none that "
            "statusctl started for this state directory); stop it or change the port in "
            "the topology\n",
            r->name, ops_proc_name(k), address, (unsigned)port);
  else
    fprintf(stderr, "statusctl: %s: %s: cannot bind %s:%u: %s\n", r->name, ops_proc_name(k),
            address, (unsigned)port, sp_strerror(rc));
  return -1;
}

/* PostgreSQL and Redis run as the unprivileged user and must reach their
 * data under the state dir.  A checkout in a private directory (root's
 * home, a mktemp -d dir) would stop them, so every ancestor that others
 * cannot search gets the search bit (o+x: pass through, not list), and we
 * say so.  0 or OPS_EXIT_FAIL (reported). */
static int make_reachable(const ops_ctx *c, const char *dir) {
  if (!c->user.drop)
    return 0;
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s", dir);
  for (;;) {
    char *slash = strrchr(path, '/');
    if (slash == NULL)
      return 0;
    if (slash == path)
      slash[1] = '\0'; /* "/" itself */
    else
      *slash = '\0';
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && !(st.st_mode & S_IXOTH) &&
        st.st_uid != c->user.uid) {
      if (chmod(path, (st.st_mode & 07777) | S_IXOTH) != 0) {
        fprintf(stderr, "statusctl: %s: cannot make it searchable for user %s (%s); PostgreSQL "
                        "runs as %s and must reach its data below it\n",
                path, c->user.name, strerror(errno), c->user.name);
        return OPS_EXIT_FAIL;
      }
      printf("made %s searchable by others (o+x) so %s can reach the data below it\n", path,
             c->user.name);
    }
    if (strcmp(path, "/") == 0)
      return 0;
  }
}

static int make_dirs(const ops_ctx *c, char *err, size_t errlen) {
  const sp_topo *t = c->topo;
  int rc = ops_mkdir(t->state_dir, 0755, NULL, err, errlen);
  if (rc == 0 && make_reachable(c, t->state_dir)) {
    snprintf(err, errlen, "%s is not reachable by user %s", t->state_dir, c->user.name);
    return SP_ERR_ACCES;
  }
  for (size_t i = 0; rc == 0 && i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    char run[PATH_MAX + 8];
    snprintf(run, sizeof run, "%s/run", r->state_dir);
    if ((rc = ops_mkdir(r->state_dir, 0755, NULL, err, errlen)) ||
        (rc = ops_mkdir(run, 0755, NULL, err, errlen)) ||
        (rc = ops_mkdir(r->log_dir, 0755, NULL, err, errlen)) ||
        (rc = ops_mkdir(r->redis_dir, 0700, &c->user, err, errlen)))
      break;
    /* pg_dir is made by ops_pg_init, which knows whether initdb must run */
  }
  return rc;
}

/* Waits until check(r) holds for every region whose process of kind k was
 * started (pids[i] > 0) or was running; a started process that dies fails
 * at once.  0 or OPS_EXIT_FAIL (reported). */
static int wait_all(const ops_ctx *c, ops_proc_kind k, const pid_t pids[],
                    int (*check)(const sp_topo_region *), unsigned timeout_ms, const char *what) {
  const sp_topo *t = c->topo;
  int done[SP_TOPO_MAX_REGIONS] = {0};
  size_t left = t->nregions;
  long long end = ops_now_ms() + timeout_ms;
  for (;;) {
    for (size_t i = 0; i < t->nregions; i++) {
      if (done[i])
        continue;
      const sp_topo_region *r = &t->regions[i];
      if (check(r)) {
        done[i] = 1;
        left--;
        continue;
      }
      if (pids[i] > 0 && !ops_pid_alive(pids[i]))
        return proc_failed(r, k, "exited while starting");
    }
    if (left == 0)
      return 0;
    if (ops_now_ms() >= end) {
      for (size_t i = 0; i < t->nregions; i++)
        if (!done[i]) {
          char msg[128];
          snprintf(msg, sizeof msg, "is not %s after %u s", what, timeout_ms / 1000);
          return proc_failed(&t->regions[i], k, msg);
        }
    }
    ops_sleep_ms(100);
  }
}

static int api_ready(const sp_topo_region *r) {
  char url[256], err[256];
  ops_api_base(r, url, sizeof url);
  strncat(url, "/ready", sizeof url - strlen(url) - 1);
  sp_buf b;
  sp_buf_init(&b, 65536);
  long status;
  int rc = ops_http("GET", url, NULL, NULL, NULL, 2000, &status, &b, err, sizeof err);
  sp_buf_release(&b);
  return rc == 0 && status == 200;
}

/* Starts process k in every region where it is not running.  pids[i]
 * receives the new PID, 0 when it was running already.  0 or
 * OPS_EXIT_FAIL (reported). */
static int start_all(ops_ctx *c, ops_proc_kind k, pid_t pids[]) {
  const sp_topo *t = c->topo;
  char err[1024];
  for (size_t i = 0; i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    pids[i] = 0;
    pid_t running = ops_proc_pid(r, k);
    if (running > 0) {
      printf("%s: %s already running (pid %ld)\n", r->name, ops_proc_name(k), (long)running);
      continue;
    }
    int rc = 0;
    pid_t pid = 0;
    if (k == OPS_POSTGRES) {
      if (port_ok(r, k, r->postgres.host, r->postgres.port))
        return OPS_EXIT_FAIL;
      int made = ops_pg_init(c, r, err, sizeof err);
      if (made < 0) {
        fprintf(stderr, "statusctl: %s: postgres: %s\n", r->name, err);
        char log[PATH_MAX + 32];
        snprintf(log, sizeof log, "%s/initdb.log", r->log_dir);
        ops_log_tail(stderr, log, TAIL_LINES);
        return OPS_EXIT_FAIL;
      }
      if (made)
        printf("%s: postgres: initialised a cluster in %s\n", r->name, r->pg_dir);
      ops_pg_argv pa;
      ops_pg_argv_init(c, r, &pa);
      rc = ops_proc_start(c, r, k, r->pg_dir, pa.argv, &pid);
    } else if (k == OPS_REDIS) {
      if (port_ok(r, k, r->redis.host, r->redis.port))
        return OPS_EXIT_FAIL;
      ops_redis_argv ra;
      ops_redis_argv_init(c, r, &ra);
      rc = ops_proc_start(c, r, k, r->redis_dir, ra.argv, &pid);
    } else {
      uint16_t port = k == OPS_API ? r->api.port : r->replication.port;
      if (port_ok(r, k, r->address, port))
        return OPS_EXIT_FAIL;
      char prog[PATH_MAX];
      ops_proc_program(c, k, prog, sizeof prog);
      char *const argv[] = {prog, "--topology", (char *)t->path, "--region", (char *)r->name,
                            NULL};
      rc = ops_proc_start(c, r, k, r->state_dir, argv, &pid);
    }
    if (rc) {
      fprintf(stderr, "statusctl: %s: cannot start %s: %s\n", r->name, ops_proc_name(k),
              sp_strerror(rc));
      return OPS_EXIT_FAIL;
    }
    pids[i] = pid;
    printf("%s: %s started (pid %ld)\n", r->name, ops_proc_name(k), (long)pid);
  }
  return 0;
}

/* Every region's statusd-api answers `path` with 200; with `same`, each with
 * the body the first region answers.  A page just copied to the other
 * regions is served by their APIs as their caches learn the copy (and as
 * replication delivers the writes that made it, batch by batch), so a
 * region can answer 200 with part of the page for a moment: `up` must not
 * print URLs that show half a demo page. */
static int readable_everywhere(const sp_topo *t, const char *path, unsigned timeout_ms, int same,
                               const sp_topo_region **bad) {
  long long end = ops_now_ms() + timeout_ms;
  sp_buf first;
  sp_buf_init(&first, 4u << 20);
  int ok = 1;
  for (size_t i = 0; ok && i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    char url[512], err[256];
    ops_api_base(r, url, sizeof url);
    strncat(url, path, sizeof url - strlen(url) - 1);
    for (;;) {
      sp_buf b;
      sp_buf_init(&b, 4u << 20);
      long status;
      int rc = ops_http("GET", url, NULL, NULL, NULL, 2000, &status, &b, err, sizeof err);
      int good = rc == 0 && status == 200;
      if (good && same && i == 0)
        good = sp_buf_add(&first, b.base, b.len) == 0;
      else if (good && same)
        good = b.len == first.len && memcmp(b.base, first.base, b.len) == 0;
      sp_buf_release(&b);
      if (good)
        break;
      if (ops_now_ms() >= end) {
        *bad = r;
        ok = 0;
        break;
      }
      ops_sleep_ms(50);
    }
  }
  sp_buf_release(&first);
  return ok;
}

/* 1 when `key` is accepted by the management API of r, 0 when refused
 * (401), negative when r did not answer. */
static int key_works(const sp_topo_region *r, const char *key) {
  char url[256], err[256];
  ops_api_base(r, url, sizeof url);
  strncat(url, "/v1/pages", sizeof url - strlen(url) - 1);
  sp_buf b;
  sp_buf_init(&b, 16u << 20);
  long status;
  int rc = ops_http("GET", url, key, NULL, NULL, 5000, &status, &b, err, sizeof err);
  sp_buf_release(&b);
  if (rc)
    return rc;
  return status == 200 ? 1 : 0;
}

/* The admin key in the first region: created with the recorded value when
 * the API does not know it.  0 or OPS_EXIT_FAIL. */
static int ensure_key(ops_ctx *c, ops_state *st, int *created) {
  const sp_topo_region *r = &c->topo->regions[0];
  *created = 0;
  int works = key_works(r, st->admin_key);
  if (works == 1)
    return 0;
  char prog[PATH_MAX], log[PATH_MAX + 64];
  ops_proc_program(c, OPS_API, prog, sizeof prog);
  ops_proc_logfile(r, OPS_API, log, sizeof log);
  char *const argv[] = {prog,        "--topology", (char *)c->topo->path, "--region",
                        (char *)r->name, "create-admin-key", "--name", "statusctl",
                        "--key",     st->admin_key, NULL};
  int rc = ops_run(c, 0, log, 0, argv, 60000); /* as the caller, like statusd-api */
  if (rc != 0) {
    char msg[128];
    snprintf(msg, sizeof msg, "create-admin-key failed (%s %d)", rc < 0 ? "error" : "exit", rc);
    return proc_failed(r, OPS_API, msg);
  }
  /* the running API learns the key from its catch-up poll */
  long long end = ops_now_ms() + KEY_WAIT_MS;
  while ((works = key_works(r, st->admin_key)) != 1) {
    if (ops_now_ms() >= end)
      return proc_failed(r, OPS_API, "does not accept the new admin key");
    ops_sleep_ms(100);
  }
  *created = 1;
  printf("%s: created the admin key\n", r->name);
  return 0;
}

int ops_up(ops_ctx *c) {
  const sp_topo *t = c->topo;
  char err[1024] = "";
  if (check_topology(t))
    return OPS_EXIT_USAGE;
  char prog[PATH_MAX];
  for (ops_proc_kind k = OPS_POSTGRES; k <= OPS_API; k++)
    if (ops_proc_program(c, k, prog, sizeof prog))
      return fail("%s not found%s", prog,
                  k == OPS_API ? ": build it first (make)" : ": install it (make deps)");
  int have_replicad = ops_proc_program(c, OPS_REPLICAD, prog, sizeof prog) == 0;

  if (make_dirs(c, err, sizeof err) || ops_lock(t, err, sizeof err) ||
      ops_tls_ensure(c, stdout, err, sizeof err))
    return fail("%s", err);
  ops_state st;
  if (ops_state_load(t, &st, err, sizeof err))
    return fail("%s", err);
  if (st.admin_key[0] == '\0') {
    if (ops_state_new_key(st.admin_key, sizeof st.admin_key) ||
        ops_state_save(t, &st, err, sizeof err))
      return fail("cannot record a new admin key: %s", err);
  }

  pid_t pids[SP_TOPO_MAX_REGIONS];
  int rc;
  if ((rc = start_all(c, OPS_POSTGRES, pids)) ||
      (rc = wait_all(c, OPS_POSTGRES, pids, ops_pg_ping, OPS_PG_START_MS, "accepting connections")))
    return rc;
  for (size_t i = 0; i < t->nregions; i++)
    if (ops_pg_bootstrap(&t->regions[i], err, sizeof err))
      return fail("%s: creating the database: %s", t->regions[i].name, err);
  if ((rc = start_all(c, OPS_REDIS, pids)) ||
      (rc = wait_all(c, OPS_REDIS, pids, ops_redis_ping, 10000, "answering PING")))
    return rc;
  if ((rc = start_all(c, OPS_API, pids)))
    return rc;
  pid_t rpids[SP_TOPO_MAX_REGIONS];
  if (have_replicad && (rc = start_all(c, OPS_REPLICAD, rpids)))
    return rc;
  if ((rc = wait_all(c, OPS_API, pids, api_ready, OPS_READY_MS, "ready (GET /ready)")))
    return rc;
  for (size_t i = 0; have_replicad && i < t->nregions; i++)
    if (rpids[i] > 0 && !ops_pid_alive(rpids[i]))
      return proc_failed(&t->regions[i], OPS_REPLICAD, "exited while starting");

  int key_created;
  if ((rc = ensure_key(c, &st, &key_created)))
    return rc;
  if (key_created && st.seeded) {
    st.seeded = 0; /* the other regions must learn the key again */
    if (ops_state_save(t, &st, err, sizeof err))
      return fail("%s", err);
  }
  if (st.demo_page_id[0] == '\0') {
    if (ops_state_new_id(st.demo_page_id, sizeof st.demo_page_id) ||
        ops_state_save(t, &st, err, sizeof err))
      return fail("cannot record the demo page id: %s", err);
  }
  if (!st.demo_done) {
    if (ops_demo_create(&t->regions[0], st.admin_key, st.demo_page_id, err, sizeof err))
      return fail("%s: creating the demo page: %s", t->regions[0].name, err);
    st.demo_done = 1;
    st.seeded = 0;
    if (ops_state_save(t, &st, err, sizeof err))
      return fail("%s", err);
    printf("%s: created the demo page %s\n", t->regions[0].name, st.demo_page_id);
  }
  int copied = !st.seeded;
  if (!st.seeded) {
    for (size_t i = 1; i < t->nregions; i++) {
      long n;
      if (ops_pg_seed(&t->regions[0], &t->regions[i], &n, err, sizeof err))
        return fail("seeding %s: %s", t->regions[i].name, err);
      printf("%s: seeded %ld changes from %s (a one-off copy, not replication)\n",
             t->regions[i].name, n, t->regions[0].name);
    }
    st.seeded = 1;
    if (ops_state_save(t, &st, err, sizeof err))
      return fail("%s", err);
  }
  char path[128];
  snprintf(path, sizeof path, "/pages/%s/api/v2/summary.json", st.demo_page_id);
  const sp_topo_region *bad = NULL;
  if (!readable_everywhere(t, path, READABLE_WAIT_MS, copied, &bad))
    return proc_failed(bad, OPS_API,
                       copied ? "does not serve the demo page as copied from the first region"
                              : "does not serve the demo page");
  if (!have_replicad)
    printf("statusd-replicad: not built (%s/statusd-replicad): the regions do not replicate; "
           "they were seeded once from %s\n",
           c->bin_dir, t->regions[0].name);
  printf("\n");
  unsigned flags = c->flags;
  c->flags = 0;
  rc = ops_endpoints(c);
  c->flags = flags;
  return rc;
}
