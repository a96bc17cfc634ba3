/* Two statusd-api processes sharing one port (SO_REUSEPORT), against real
 * PostgreSQL and Redis (api_harness).
 *
 * Which process answers a connection is decided by the kernel, so the test
 * finds out instead of guessing: once a connection is accepted, the server
 * side's socket inode (/proc/net/tcp) is looked up in each child's fd table
 * (/proc/<pid>/fd).  That lets a test write through one process and read
 * through the other, deterministically.
 *
 * Shown: a write through either process is visible through the other
 * within 1 s (Redis change events); with Redis down it still arrives within
 * 3 s (the catch-up poll of the change log); SIGTERM while requests are in
 * their handlers (held on a row lock taken by the test) lets them finish
 * with their answers, closes idle connections, hands new connections to the
 * other process, and exits 0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api_itest.h"

static struct {
  api_harness h;
  char page[32], comp[32], inc[32];
} S;

/* ---- which process holds a connection ------------------------------------------ */

/* The inode of the socket on 127.0.0.1:port whose peer is 127.0.0.1:peer
 * (peer 0: the listening socket of `port` at index `nth`), 0 when not found
 * or not yet accepted. */
static unsigned long tcp_inode(int port, int peer, int nth) {
  FILE *f = fopen("/proc/net/tcp", "r");
  if (f == NULL)
    return 0;
  char line[512];
  unsigned long found = 0;
  int seen = 0;
  if (fgets(line, sizeof line, f) == NULL) { /* header */
    fclose(f);
    return 0;
  }
  while (fgets(line, sizeof line, f)) {
    unsigned lport, rport, st;
    unsigned long inode;
    if (sscanf(line, " %*d: %*x:%x %*x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &lport, &rport,
               &st, &inode) != 4)
      continue;
    if ((int)lport != port)
      continue;
    /* TIME_WAIT leftovers of an earlier connection with the same ports
     * have inode 0: skip them */
    if (peer == 0 ? st == 0x0A && seen++ == nth
                  : (int)rport == peer && st != 0x0A && inode != 0) {
      found = inode;
      break;
    }
  }
  fclose(f);
  return found;
}

/* 1 when process `pid` has socket `inode` open. */
static int pid_has_socket(pid_t pid, unsigned long inode) {
  char dir[64], want[64];
  snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
  snprintf(want, sizeof want, "socket:[%lu]", inode);
  DIR *d = opendir(dir);
  if (d == NULL)
    return 0;
  int has = 0;
  struct dirent *e;
  while (!has && (e = readdir(d)) != NULL) {
    char p[320], target[64];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    ssize_t n = readlink(p, target, sizeof target - 1);
    if (n > 0) {
      target[n] = '\0';
      has = strcmp(target, want) == 0;
    }
  }
  closedir(d);
  return has;
}

static int local_port(int fd) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &len))
    return -1;
  return ntohs(a.sin_port);
}

/* Index in h->pids of the process that accepted client socket fd (waits up
 * to 2 s for the accept), or -1. */
static int conn_owner(int fd) {
  int lp = local_port(fd);
  long long end = it_now_ms() + 2000;
  do {
    unsigned long inode = tcp_inode(S.h.port, lp, 0);
    if (inode)
      for (int i = 0; i < API_HARNESS_MAX_PROCS; i++)
        if (S.h.pids[i] > 0 && pid_has_socket(S.h.pids[i], inode))
          return i;
    it_sleep_ms(2);
  } while (it_now_ms() < end);
  return -1;
}

/* 1 while process i still has a listening socket on the API port. */
static int proc_listening(int i) {
  for (int nth = 0; nth < 16; nth++) {
    unsigned long inode = tcp_inode(S.h.port, 0, nth);
    if (inode == 0)
      return 0;
    if (pid_has_socket(S.h.pids[i], inode))
      return 1;
  }
  return 0;
}

/* ---- a raw client whose connection the test holds -------------------------------- */

static int raw_connect(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)S.h.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
    fail_msg("connect: %s", strerror(errno));
  return fd;
}

/* A connection accepted by process `want` (-1: any; *owner says which). */
static int connect_to(int want, int *owner) {
  for (int tries = 0; tries < 400; tries++) {
    int fd = raw_connect();
    int o = conn_owner(fd);
    if (o >= 0 && (want < 0 || o == want)) {
      if (owner)
        *owner = o;
      return fd;
    }
    close(fd);
  }
  fail_msg("no connection landed on process %d in 400 tries", want);
  return -1;
}

static void raw_send(int fd, const char *method, const char *path, int admin,
                     const char *body) {
  char req[4096];
  int n = snprintf(req, sizeof req,
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s"
                   "Content-Length: %zu\r\n\r\n%s",
                   method, path, admin ? "Authorization: OAuth " : "", admin ? S.h.admin_key : "",
                   admin ? "\r\nContent-Type: application/json\r\n" : "", body ? strlen(body) : 0,
                   body ? body : "");
  assert_true(n > 0 && (size_t)n < sizeof req);
  assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
}

/* Reads a "Connection: close" response to EOF (5 s limit) into r. */
static void raw_recv(int fd, api_response *r) {
  memset(r, 0, sizeof *r);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap + 1);
  assert_non_null(buf);
  long long end = it_now_ms() + 5000;
  for (;;) {
    if (len == cap) {
      cap *= 2;
      buf = realloc(buf, cap + 1);
      assert_non_null(buf);
    }
    ssize_t got = recv(fd, buf + len, cap - len, 0);
    if (got > 0) {
      len += (size_t)got;
      continue;
    }
    if (got < 0 && errno == EINTR && it_now_ms() < end)
      continue;
    break;
  }
  buf[len] = '\0';
  char *eoh = strstr(buf, "\r\n\r\n");
  if (eoh == NULL || strncmp(buf, "HTTP/1.1 ", 9) != 0)
    fail_msg("no complete response (%zu bytes): %.200s", len, buf);
  r->status = atoi(buf + 9);
  char *first = strstr(buf, "\r\n");
  r->headers = strndup(first + 2, (size_t)(eoh + 2 - (first + 2)));
  r->body_len = len - (size_t)(eoh + 4 - buf);
  r->body = malloc(r->body_len + 1);
  assert_non_null(r->body);
  memcpy(r->body, eoh + 4, r->body_len);
  r->body[r->body_len] = '\0';
  free(buf);
}

/* One request on a connection accepted by process `want`. */
static void request_via(int want, const char *method, const char *path, int admin,
                        const char *body, api_response *r) {
  int fd = connect_to(want, NULL);
  raw_send(fd, method, path, admin, body);
  raw_recv(fd, r);
  close(fd);
}

/* A management call through process `via` that must answer `expect`
 * (429 retried); returns the parsed answer.  The tests write through one
 * chosen process when they go on to use what they wrote at once: another
 * process learns of it a few ms later (Redis), or up to a catch-up poll
 * later. */
static json_t *admin_via(int via, int expect, const char *method, const char *path,
                         const char *body) {
  api_response r;
  for (int tries = 0;; tries++) {
    request_via(via, method, path, 1, body, &r);
    if (r.status != 429 || tries > 20)
      break;
    api_response_free(&r);
    it_sleep_ms(200);
  }
  if (r.status != expect)
    fail_msg("%s %s via %d: expected %d, got %d: %s", method, path, via, expect, r.status,
             r.body);
  json_t *j = r.body_len ? it_json(&r) : NULL;
  api_response_free(&r);
  return j;
}

/* Creates something through process `via` and copies its id. */
static void create_via(int via, const char *path, const char *body, char out[32]) {
  json_t *j = admin_via(via, 201, "POST", path, body);
  it_str(j, "id", out, 32);
  json_decref(j);
}

/* ---- setup ---------------------------------------------------------------------- */

static int setup(void **state) {
  (void)state;
  memset(&S, 0, sizeof S);
  if (api_harness_start(&S.h))
    return -1;
  if (api_harness_spawn(&S.h) != 1) {
    api_harness_stop(&S.h);
    return -1;
  }
  char path[256];
  create_via(0, "/v1/pages",
             "{\"page\":{\"name\":\"Procs Page\",\"domain\":\"status.procs.test\"}}", S.page);
  snprintf(path, sizeof path, "/v1/pages/%s/components", S.page);
  create_via(0, path, "{\"component\":{\"name\":\"API\",\"status\":\"operational\"}}",
             S.comp);
  snprintf(path, sizeof path, "/v1/pages/%s/incidents", S.page);
  create_via(0, path,
             "{\"incident\":{\"name\":\"Drain test\",\"status\":\"investigating\","
             "\"body\":\"first\"}}",
             S.inc);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  api_harness_stop(&S.h);
  return 0;
}

static const char *const STATUSES[] = {"degraded_performance", "partial_outage", "major_outage",
                                       "under_maintenance", "operational"};

/* The component's status as process `via` serves it (components.json). */
static int status_is(int via, const char *want) {
  char path[256];
  snprintf(path, sizeof path, "/pages/%s/api/v2/components.json", S.page);
  api_response r;
  request_via(via, "GET", path, 0, NULL, &r);
  assert_int_equal(r.status, 200);
  json_t *j = it_json(&r);
  int ok = it_str_eq(it_find(json_object_get(j, "components"), S.comp), "status", want);
  json_decref(j);
  api_response_free(&r);
  return ok;
}

/* PATCHes the component through process `via`; returns when acknowledged. */
static void set_status_via(int via, const char *status) {
  char path[256], body[128];
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", S.page, S.comp);
  snprintf(body, sizeof body, "{\"component\":{\"status\":\"%s\"}}", status);
  api_response r;
  for (int tries = 0;; tries++) {
    request_via(via, "PATCH", path, 1, body, &r);
    if (r.status != 429 || tries > 20)
      break;
    api_response_free(&r);
    it_sleep_ms(200);
  }
  if (r.status != 200)
    fail_msg("PATCH via %d: %d %s", via, r.status, r.body);
  api_response_free(&r);
}

/* Milliseconds until process `via` shows `status` (fails after limit_ms). */
static long long wait_visible(int via, const char *status, long limit_ms) {
  long long t0 = it_now_ms();
  while (!status_is(via, status)) {
    if (it_now_ms() - t0 > limit_ms)
      fail_msg("process %d did not show %s within %ld ms", via, status, limit_ms);
    it_sleep_ms(20);
  }
  return it_now_ms() - t0;
}

static void test_write_visible_through_other_process(void **state) {
  (void)state;
  for (int round = 0; round < 4; round++) {
    int writer = round % 2, reader = 1 - writer;
    const char *st = STATUSES[round];
    set_status_via(writer, st);
    long long ms = wait_visible(reader, st, 1000);
    print_message("write via %d visible via %d after %lld ms\n", writer, reader, ms);
  }
  /* many new connections, landing on either process: all see the write */
  int seen[2] = {0, 0};
  for (int i = 0; i < 40; i++) {
    int owner;
    int fd = connect_to(-1, &owner);
    char path[256];
    snprintf(path, sizeof path, "/pages/%s/api/v2/components.json", S.page);
    raw_send(fd, "GET", path, 0, NULL);
    api_response r;
    raw_recv(fd, &r);
    close(fd);
    assert_int_equal(r.status, 200);
    json_t *j = it_json(&r);
    assert_true(it_str_eq(it_find(json_object_get(j, "components"), S.comp), "status",
                          STATUSES[3]));
    json_decref(j);
    api_response_free(&r);
    seen[owner]++;
  }
  print_message("40 connections: %d to process 0, %d to process 1\n", seen[0], seen[1]);
  assert_true(seen[0] > 0 && seen[1] > 0);
}

/* Subscribers of a Redis channel (PUBSUB NUMSUB, raw RESP), -1 on error. */
static int redis_subscribers(const char *channel) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)S.h.redis.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  char cmd[256], buf[512];
  int n = snprintf(cmd, sizeof cmd, "PUBSUB NUMSUB %s\r\n", channel);
  int count = -1;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      send(fd, cmd, (size_t)n, MSG_NOSIGNAL) == n) {
    /* *2 $len channel :count -- read until the integer line arrived */
    size_t len = 0;
    while (len < sizeof buf - 1) {
      ssize_t r = recv(fd, buf + len, sizeof buf - 1 - len, 0);
      if (r <= 0)
        break;
      len += (size_t)r;
      buf[len] = '\0';
      char *colon = strchr(buf, ':');
      while (colon && colon[-1] != '\n')
        colon = strchr(colon + 1, ':');
      if (colon && strstr(colon, "\r\n")) {
        count = atoi(colon + 1);
        break;
      }
    }
  }
  close(fd);
  return count;
}

static void test_catch_up_without_redis(void **state) {
  (void)state;
  assert_int_equal(sp_fixture_redis_halt(&S.h.redis), 0);
  /* writes do not need Redis; the other process learns from the change log */
  set_status_via(0, "partial_outage");
  long long ms = wait_visible(1, "partial_outage", 3000);
  print_message("without Redis: visible after %lld ms\n", ms);
  set_status_via(1, "degraded_performance");
  ms = wait_visible(0, "degraded_performance", 3000);
  print_message("without Redis (other way): visible after %lld ms\n", ms);
  /* Redis back: both processes subscribe again (they reconnect with a
   * backoff) and changes flow through it again */
  assert_int_equal(sp_fixture_redis_resume(&S.h.redis), 0);
  long long t0 = it_now_ms();
  int subs = 0;
  while ((subs = redis_subscribers("sp:test:test:changes")) < 2 && it_now_ms() - t0 < 15000)
    it_sleep_ms(50);
  print_message("both subscribed again %lld ms after Redis came back\n", it_now_ms() - t0);
  assert_int_equal(subs, 2);
  set_status_via(0, "operational");
  wait_visible(1, "operational", 1000);
  set_status_via(1, "major_outage");
  wait_visible(0, "major_outage", 1000);
}

/* A process that missed changes the replication daemon has since trimmed
 * from the change log (sp_log_floor above what it merged) reloads the state
 * instead of waiting forever for rows that are gone.  Process 1 is paused
 * (SIGSTOP) with Redis down, so it can only learn of the write through its
 * catch-up poll after the log was trimmed as the daemon trims it. */
static void test_catch_up_after_log_trim(void **state) {
  (void)state;
  assert_int_equal(sp_fixture_redis_halt(&S.h.redis), 0);
  set_status_via(0, "operational");
  wait_visible(1, "operational", 3000);
  assert_int_equal(kill(S.h.pids[1], SIGSTOP), 0);
  set_status_via(0, "under_maintenance");
  PGconn *db = PQconnectdb(S.h.pg.conninfo);
  assert_int_equal(PQstatus(db), CONNECTION_OK);
  PGresult *r = PQexec(db, "INSERT INTO sp_log_floor (origin, seq) "
                           "SELECT origin, seq FROM sp_vclock "
                           "ON CONFLICT (origin) DO UPDATE SET seq = EXCLUDED.seq; "
                           "DELETE FROM sp_change_log");
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("trimming the log: %s", PQerrorMessage(db));
  PQclear(r);
  PQfinish(db);
  assert_int_equal(kill(S.h.pids[1], SIGCONT), 0);
  long long ms = wait_visible(1, "under_maintenance", 5000);
  print_message("after a trimmed log: visible after %lld ms\n", ms);
  /* and it keeps following ordinary changes afterwards */
  set_status_via(0, "degraded_performance");
  wait_visible(1, "degraded_performance", 3000);
  assert_int_equal(sp_fixture_redis_resume(&S.h.redis), 0);
}

/* Count of sp_write calls waiting for a lock in PostgreSQL. */
static int waiting_writes(PGconn *db) {
  PGresult *res = PQexec(db, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                             "'Lock' AND query LIKE '%sp_write%'");
  int n = PQresultStatus(res) == PGRES_TUPLES_OK ? atoi(PQgetvalue(res, 0, 0)) : -1;
  PQclear(res);
  return n;
}

static int proc_exited(pid_t pid, int *st) {
  return waitpid(pid, st, WNOHANG) == pid;
}

#define IN_FLIGHT 4 /* the write pool's size: all of them reach PostgreSQL */

static void test_sigterm_finishes_in_flight_requests(void **state) {
  (void)state;
  /* One incident on each of IN_FLIGHT pages: writes to one page wait for
   * each other inside the process (its write lanes), writes to different
   * pages all reach PostgreSQL, where the test can see them waiting. */
  char pages[IN_FLIGHT][32], incs[IN_FLIGHT][32], paths[IN_FLIGHT][256];
  for (int i = 0; i < IN_FLIGHT; i++) {
    char body[256], path[256];
    snprintf(body, sizeof body,
             "{\"page\":{\"name\":\"Drain\",\"domain\":\"drain-%d.procs.test\"}}", i);
    create_via(0, "/v1/pages", body, pages[i]);
    snprintf(path, sizeof path, "/v1/pages/%s/incidents", pages[i]);
    create_via(0, path, "{\"incident\":{\"name\":\"Drain\",\"status\":\"investigating\"}}",
               incs[i]);
    snprintf(paths[i], sizeof paths[i], "/v1/pages/%s/incidents/%s", pages[i], incs[i]);
  }

  /* Hold the region's clock row: every sp_write waits behind it, so the
   * requests below stay in their handlers until the test lets go. */
  PGconn *lock = PQconnectdb(S.h.pg.conninfo);
  assert_int_equal(PQstatus(lock), CONNECTION_OK);
  PGconn *watch = PQconnectdb(S.h.pg.conninfo);
  assert_int_equal(PQstatus(watch), CONNECTION_OK);
  PQclear(PQexec(lock, "BEGIN"));
  PGresult *res = PQexec(lock, "SELECT * FROM sp_region_clock FOR UPDATE");
  assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
  PQclear(res);

  int fds[IN_FLIGHT];
  for (int i = 0; i < IN_FLIGHT; i++) {
    fds[i] = connect_to(0, NULL);
    char body[128];
    snprintf(body, sizeof body,
             "{\"incident\":{\"status\":\"identified\",\"body\":\"in flight %d\"}}", i);
    raw_send(fds[i], "PATCH", paths[i], 1, body);
  }
  /* Writes are group-committed: the first waits in PostgreSQL behind the
   * lock, the others queue in the process for the next batch. */
  long long end = it_now_ms() + 5000;
  while (waiting_writes(watch) < 1 && it_now_ms() < end)
    it_sleep_ms(10);
  assert_int_equal(waiting_writes(watch), 1);
  it_sleep_ms(300); /* the other requests reach their handlers */
  int idle = connect_to(0, NULL); /* connected, no request: closed at once */

  pid_t pid = S.h.pids[0];
  assert_int_equal(kill(pid, SIGTERM), 0);
  end = it_now_ms() + 5000;
  while (proc_listening(0) && it_now_ms() < end)
    it_sleep_ms(10);
  assert_false(proc_listening(0));
  int st;
  assert_false(proc_exited(pid, &st)); /* waiting for its in-flight requests */

  /* the idle connection is closed, new ones go to the other process */
  struct pollfd p = {idle, POLLIN, 0};
  assert_int_equal(poll(&p, 1, 3000), 1);
  char c;
  assert_true(recv(idle, &c, 1, 0) <= 0);
  close(idle);
  for (int i = 0; i < 10; i++) {
    api_response r;
    char sp[256];
    snprintf(sp, sizeof sp, "/pages/%s/api/v2/summary.json", S.page);
    assert_int_equal(api_request(&S.h, "GET", sp, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    api_response_free(&r);
  }
  assert_false(proc_exited(pid, &st));

  /* let the writes through: every in-flight request gets its answer */
  PQclear(PQexec(lock, "COMMIT"));
  PQfinish(lock);
  PQfinish(watch);
  for (int i = 0; i < IN_FLIGHT; i++) {
    api_response r;
    raw_recv(fds[i], &r);
    close(fds[i]);
    if (r.status != 200)
      fail_msg("in-flight request %d: %d %s", i, r.status, r.body);
    char v[64];
    assert_non_null(api_response_header(&r, "Connection", v, sizeof v));
    assert_string_equal(v, "close");
    api_response_free(&r);
  }
  /* and the process exits cleanly */
  end = it_now_ms() + 10000;
  int exited = 0;
  while (!(exited = proc_exited(pid, &st)) && it_now_ms() < end)
    it_sleep_ms(10);
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  S.h.pids[0] = 0;
  assert_true(exited);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);

  /* the survivor has all of them (its copy catches up within 3 s) */
  for (int i = 0; i < IN_FLIGHT; i++) {
    char want[64];
    snprintf(want, sizeof want, "in flight %d", i);
    long long until = it_now_ms() + 3000;
    int ok = 0;
    while (!ok && it_now_ms() < until) {
      api_response r;
      assert_int_equal(api_admin(&S.h, "GET", paths[i], NULL, &r), 0);
      if (r.status == 200) {
        json_t *inc = it_json(&r);
        json_t *u0 = json_array_get(json_object_get(inc, "incident_updates"), 0);
        ok = it_str_eq(u0, "status", "identified") && it_str_eq(u0, "body", want);
        json_decref(inc);
      } else if (r.status != 404) {
        fail_msg("GET %s: %d %s", paths[i], r.status, r.body);
      }
      api_response_free(&r);
      if (!ok)
        it_sleep_ms(50);
    }
    if (!ok)
      fail_msg("the surviving process lacks in-flight update %d", i);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_write_visible_through_other_process),
      cmocka_unit_test(test_catch_up_without_redis),
      cmocka_unit_test(test_catch_up_after_log_trim),
      cmocka_unit_test(test_sigterm_finishes_in_flight_requests),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
