/* api_bench_env: a throwaway statusd-api environment for bench/api.sh.
 *
 *   api_bench_env [--bench-page] [EXTRA STATUSD-API ARGS...]
 *
 * Starts PostgreSQL, Redis and one statusd-api through api_harness (the
 * binary is $SP_STATUSD_API or found beside the build directory, as for the
 * tests).  With extra arguments (e.g. --rate-limit 100000:100000) the
 * harness's process is replaced by one started with them.  --bench-page
 * then creates the read benchmark's page through the management API: 20
 * components (two groups of 5 among them), 3 open incidents with two
 * updates each, one of its components in partial_outage.  Then prints one
 * line
 *   port=<api port> key=<admin key> pid=<statusd-api pid> dir=<temp dir>
 *   [page=<bench page id>]
 * and waits until SIGTERM/SIGINT (or, when stdin is a pipe, until it reaches
 * end of file: the caller went away), then
 * stops everything it started (the servers also die with it: PDEATHSIG).
 * Exit status 0, or 1 when the environment could not be started.
 */
#include <errno.h>
#include <fcntl.h>
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

#include <jansson.h>

#include "api_harness.h"
#include "sp_err.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The statusd-api the harness used: $SP_STATUSD_API or <build>/statusd-api
 * where this tool is <build>/tests/tools/api_bench_env. */
static int api_path(char *out, size_t n) {
  const char *env = getenv("SP_STATUSD_API");
  if (env && *env) {
    snprintf(out, n, "%s", env);
    return 0;
  }
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0)
    return -1;
  exe[len] = '\0';
  char *p = strstr(exe, "/tests/tools/");
  if (p == NULL)
    return -1;
  *p = '\0';
  int w = snprintf(out, n, "%s/statusd-api", exe);
  return w > 0 && (size_t)w < n ? 0 : -1;
}

/* Starts statusd-api serve with the extra args; waits for /health. */
static pid_t start_custom(api_harness *h, int argc, char **argv) {
  char exe[PATH_MAX], log[1200];
  if (api_path(exe, sizeof exe))
    return -1;
  snprintf(log, sizeof log, "%s/bench-api.log", h->dir);
  char **av = calloc((size_t)argc + 8, sizeof *av);
  if (av == NULL)
    return -1;
  int k = 0;
  av[k++] = exe;
  av[k++] = "--topology";
  av[k++] = h->topology;
  av[k++] = "--region";
  av[k++] = "test";
  for (int i = 0; i < argc; i++)
    av[k++] = argv[i];
  av[k++] = "serve";
  av[k] = NULL;
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = getpid();
  pid_t pid = fd >= 0 && nul >= 0 ? fork() : -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(125);
    dup2(nul, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    execv(exe, av);
    _exit(127);
  }
  free(av);
  if (fd >= 0)
    close(fd);
  if (nul >= 0)
    close(nul);
  if (pid < 0)
    return -1;
  for (int i = 0; i < 300; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      fprintf(stderr, "api_bench_env: statusd-api exited during start-up; see %s\n", log);
      return -1;
    }
    api_response r;
    if (api_request(h, "GET", "/health", NULL, NULL, &r) == 0) {
      int ok = r.status == 200;
      api_response_free(&r);
      if (ok)
        return pid;
    }
    sleep_ms(50);
  }
  fprintf(stderr, "api_bench_env: statusd-api did not come up; see %s\n", log);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

/* A management call that must answer `expect`; the answer's "id" goes to
 * id (may be NULL).  0 or -1 (printed). */
static int admin_call(const api_harness *h, const char *method, const char *path,
                      const char *body, int expect, char *id, size_t idlen) {
  api_response r;
  if (api_admin(h, method, path, body, &r)) {
    fprintf(stderr, "api_bench_env: %s %s: request failed\n", method, path);
    return -1;
  }
  int rc = r.status == expect ? 0 : -1;
  if (rc)
    fprintf(stderr, "api_bench_env: %s %s: %d %s\n", method, path, r.status, r.body);
  if (rc == 0 && id) {
    json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
    const char *v = json_string_value(json_object_get(j, "id"));
    if (v)
      snprintf(id, idlen, "%s", v);
    else
      rc = -1;
    json_decref(j);
  }
  api_response_free(&r);
  return rc;
}

static int bench_page(const api_harness *h, char page[64]) {
  static const char *const statuses[] = {"operational", "operational", "operational",
                                         "degraded_performance", "operational"};
  char path[256], body[1024], comps[20][64];
  if (admin_call(h, "POST", "/v1/pages",
                 "{\"page\":{\"name\":\"Bench Status\",\"domain\":\"bench.status.test\","
                 "\"url\":\"https://bench.status.test\"}}",
                 201, page, 64))
    return -1;
  snprintf(path, sizeof path, "/v1/pages/%s/components", page);
  for (int i = 0; i < 20; i++) {
    snprintf(body, sizeof body,
             "{\"component\":{\"name\":\"Service %d\",\"status\":\"%s\","
             "\"description\":\"Component number %d of the bench page\"}}",
             i + 1, statuses[i % 5], i + 1);
    if (admin_call(h, "POST", path, body, 201, comps[i], sizeof comps[i]))
      return -1;
  }
  snprintf(path, sizeof path, "/v1/pages/%s/component-groups", page);
  for (int g = 0; g < 2; g++) {
    snprintf(body, sizeof body,
             "{\"component_group\":{\"name\":\"Group %d\",\"components\":[\"%s\",\"%s\","
             "\"%s\",\"%s\",\"%s\"]},\"description\":\"Group %d\"}",
             g, comps[g * 5], comps[g * 5 + 1], comps[g * 5 + 2], comps[g * 5 + 3],
             comps[g * 5 + 4], g);
    if (admin_call(h, "POST", path, body, 201, NULL, 0))
      return -1;
  }
  for (int i = 1; i <= 3; i++) {
    char inc[64];
    snprintf(path, sizeof path, "/v1/pages/%s/incidents", page);
    snprintf(body, sizeof body,
             "{\"incident\":{\"name\":\"Open incident %d\",\"status\":\"investigating\","
             "\"body\":\"We are investigating issue %d.\",\"components\":{\"%s\":"
             "\"partial_outage\"},\"component_ids\":[\"%s\"]}}",
             i, i, comps[i], comps[i]);
    if (admin_call(h, "POST", path, body, 201, inc, sizeof inc))
      return -1;
    snprintf(path, sizeof path, "/v1/pages/%s/incidents/%s", page, inc);
    snprintf(body, sizeof body,
             "{\"incident\":{\"status\":\"identified\",\"body\":\"The cause of issue %d "
             "is known; a fix is being deployed.\"}}",
             i);
    if (admin_call(h, "PATCH", path, body, 200, NULL, 0))
      return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  int want_page = argc > 1 && strcmp(argv[1], "--bench-page") == 0;
  if (want_page) {
    argv++;
    argc--;
  }
  api_harness h;
  memset(&h, 0, sizeof h);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (api_harness_start(&h)) {
    fprintf(stderr, "api_bench_env: cannot start the environment\n");
    return 1;
  }
  pid_t custom = 0;
  if (argc > 1) {
    api_harness_stop_proc(&h, 0);
    custom = start_custom(&h, argc - 1, argv + 1);
    if (custom < 0) {
      api_harness_stop(&h);
      return 1;
    }
  }
  char page[64] = "";
  int failed = want_page && bench_page(&h, page) != 0;
  if (failed) {
    fprintf(stderr, "api_bench_env: cannot create the bench page\n");
    g_stop = 1;
  } else {
    printf("port=%d key=%s pid=%d dir=%s%s%s\n", h.port, h.admin_key,
           (int)(custom ? custom : h.pids[0]), h.dir, page[0] ? " page=" : "", page);
    fflush(stdout);
  }
  /* until a signal or the end of a piped stdin (the caller's end closing) */
  struct stat in;
  int watch_stdin = fstat(0, &in) == 0 && S_ISFIFO(in.st_mode);
  while (!g_stop) {
    struct pollfd p = {watch_stdin ? 0 : -1, POLLIN, 0};
    int r = poll(&p, 1, 200);
    if (r > 0) {
      char buf[256];
      ssize_t n = read(0, buf, sizeof buf);
      if (n <= 0)
        break;
    }
    if (r < 0 && errno != EINTR)
      break;
  }
  if (custom > 0) {
    kill(custom, SIGTERM);
    int gone = 0;
    for (int i = 0; i < 200 && !(gone = waitpid(custom, NULL, WNOHANG) == custom); i++)
      sleep_ms(50);
    if (!gone) {
      kill(custom, SIGKILL);
      waitpid(custom, NULL, 0);
    }
  }
  api_harness_stop(&h);
  return failed ? 1 : 0;
}
