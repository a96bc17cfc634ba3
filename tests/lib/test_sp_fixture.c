/* Tests for the integration-test fixture itself: a PostgreSQL and a Redis
 * server come up, answer, can be halted and resumed on the same port with the
 * same data, and teardown leaves neither a directory nor a process behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sp_err.h"
#include "sp_fixture.h"

static int dir_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int tcp_connects(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((unsigned short)port);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  close(fd);
  return ok;
}

/* A value read back with a blocking libpq connection (test code only). */
static void query_one(const char *conninfo, const char *sql, char *out,
                      size_t n) {
  PGconn *c = PQconnectdb(conninfo);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  PGresult *r = PQexec(c, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  snprintf(out, n, "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
  PQfinish(c);
}

static void test_free_port(void **state) {
  (void)state;
  int p = sp_fixture_free_port();
  assert_true(p > 0 && p < 65536);
  assert_false(tcp_connects(p));
}

static void test_pg_lifecycle(void **state) {
  (void)state;
  sp_fixture_pg pg;
  assert_int_equal(sp_fixture_pg_start(&pg), 0);
  assert_true(pg.pid > 0);
  assert_true(pg.port > 0);
  assert_true(dir_exists(pg.dir));
  assert_non_null(strstr(pg.conninfo, "host=127.0.0.1"));

  /* psql works, and a failing statement is reported */
  assert_int_equal(sp_fixture_pg_psql(&pg, "CREATE TABLE t(v int); "
                                           "INSERT INTO t VALUES (42)"),
                   0);
  assert_int_not_equal(sp_fixture_pg_psql(&pg, "SELECT * FROM no_such_table"),
                       0);
  char v[64];
  query_one(pg.conninfo, "SELECT v FROM t", v, sizeof v);
  assert_string_equal(v, "42");
  /* the fast settings are in force */
  query_one(pg.conninfo, "SHOW fsync", v, sizeof v);
  assert_string_equal(v, "off");

  /* halt: nothing answers on the port any more */
  pid_t old = pg.pid;
  int port = pg.port;
  assert_int_equal(sp_fixture_pg_halt(&pg), 0);
  assert_int_equal(pg.pid, 0);
  assert_int_equal(kill(old, 0), -1);
  assert_int_equal(PQping(pg.conninfo), PQPING_NO_RESPONSE);
  assert_int_not_equal(sp_fixture_pg_psql(&pg, "SELECT 1"), 0);
  assert_int_equal(sp_fixture_pg_halt(&pg), SP_ERR_INVAL);

  /* resume: same port, same data */
  assert_int_equal(sp_fixture_pg_resume(&pg), 0);
  assert_true(pg.pid > 0);
  assert_int_equal(pg.port, port);
  query_one(pg.conninfo, "SELECT v FROM t", v, sizeof v);
  assert_string_equal(v, "42");

  char dir[sizeof pg.dir];
  snprintf(dir, sizeof dir, "%s", pg.dir);
  pid_t pid = pg.pid;
  sp_fixture_pg_stop(&pg);
  assert_false(dir_exists(dir));
  assert_int_equal(kill(pid, 0), -1);
  assert_int_equal(errno, ESRCH);
  assert_false(tcp_connects(port));
  sp_fixture_pg_stop(&pg); /* a second stop is harmless */
}

static void test_redis_lifecycle(void **state) {
  (void)state;
  sp_fixture_redis r;
  assert_int_equal(sp_fixture_redis_start(&r), 0);
  assert_true(r.pid > 0);
  assert_true(tcp_connects(r.port));
  assert_string_equal(r.host, "127.0.0.1");

  int port = r.port;
  pid_t old = r.pid;
  assert_int_equal(sp_fixture_redis_halt(&r), 0);
  assert_int_equal(kill(old, 0), -1);
  assert_false(tcp_connects(port));
  assert_int_equal(sp_fixture_redis_resume(&r), 0);
  assert_int_equal(r.port, port);
  assert_true(tcp_connects(port));

  char dir[sizeof r.dir];
  snprintf(dir, sizeof dir, "%s", r.dir);
  pid_t pid = r.pid;
  sp_fixture_redis_stop(&r);
  assert_false(dir_exists(dir));
  assert_int_equal(kill(pid, 0), -1);
  assert_false(tcp_connects(port));
}

static void test_two_servers_at_once(void **state) {
  (void)state;
  sp_fixture_pg a, b;
  assert_int_equal(sp_fixture_pg_start(&a), 0);
  assert_int_equal(sp_fixture_pg_start(&b), 0);
  assert_int_not_equal(a.port, b.port);
  assert_string_not_equal(a.dir, b.dir);
  assert_int_equal(sp_fixture_pg_psql(&a, "CREATE TABLE only_in_a(x int)"), 0);
  assert_int_not_equal(sp_fixture_pg_psql(&b, "SELECT * FROM only_in_a"), 0);
  sp_fixture_pg_stop(&b);
  sp_fixture_pg_stop(&a);
}

static void test_bad_use_is_refused(void **state) {
  (void)state;
  sp_fixture_pg pg;
  memset(&pg, 0, sizeof pg);
  assert_int_equal(sp_fixture_pg_halt(&pg), SP_ERR_INVAL);
  assert_int_equal(sp_fixture_pg_resume(&pg), SP_ERR_INVAL);
  assert_int_equal(sp_fixture_pg_psql(&pg, "SELECT 1"), SP_ERR_INVAL);
  sp_fixture_pg_stop(&pg);
  sp_fixture_redis r;
  memset(&r, 0, sizeof r);
  assert_int_equal(sp_fixture_redis_halt(&r), SP_ERR_INVAL);
  assert_int_equal(sp_fixture_redis_resume(&r), SP_ERR_INVAL);
  sp_fixture_redis_stop(&r);
}

/* What a child test process reports about the servers it started. */
typedef struct child_report {
  int rc;
  pid_t pg_pid, redis_pid;
  char pg_dir[PATH_MAX], redis_dir[PATH_MAX];
} child_report;

/* Fork a process that starts both servers and reports them over a pipe;
 * then it either returns from main normally (`crash` 0: the atexit hook
 * must clean up) or waits to be SIGKILLed (`crash` 1: the death signal must
 * take the servers down). */
static pid_t start_child(int crash, child_report *rep) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    sp_fixture_pg pg;
    sp_fixture_redis r;
    child_report c = {0};
    c.rc = sp_fixture_pg_start(&pg);
    if (c.rc == 0)
      c.rc = sp_fixture_redis_start(&r);
    if (c.rc == 0) {
      c.pg_pid = pg.pid;
      c.redis_pid = r.pid;
      snprintf(c.pg_dir, sizeof c.pg_dir, "%s", pg.dir);
      snprintf(c.redis_dir, sizeof c.redis_dir, "%s", r.dir);
    }
    if (write(fds[1], &c, sizeof c) != (ssize_t)sizeof c)
      _exit(3);
    close(fds[1]);
    if (crash)
      for (int i = 0; i < 600; i++)
        sleep(1); /* bounded: the parent kills us long before */
    exit(0);      /* no _stop: the atexit hook has to do it */
  }
  close(fds[1]);
  assert_int_equal(read(fds[0], rep, sizeof *rep), (ssize_t)sizeof *rep);
  close(fds[0]);
  assert_int_equal(rep->rc, 0);
  assert_true(rep->pg_pid > 0 && rep->redis_pid > 0);
  return pid;
}

/* The servers are grandchildren here, so we cannot reap them: poll until
 * they are gone (or zombies re-parented to init, which reaps them). */
static int gone_within(pid_t pid, int ms) {
  for (int i = 0; i < ms / 20; i++) {
    if (kill(pid, 0) == -1 && errno == ESRCH)
      return 1;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void test_atexit_hook_cleans_up(void **state) {
  (void)state;
  child_report rep;
  pid_t child = start_child(0, &rep);
  int st;
  assert_int_equal(waitpid(child, &st, 0), child);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  assert_true(gone_within(rep.pg_pid, 15000));
  assert_true(gone_within(rep.redis_pid, 15000));
  assert_false(dir_exists(rep.pg_dir));
  assert_false(dir_exists(rep.redis_dir));
}

static void test_killed_test_takes_servers_along(void **state) {
  (void)state;
  child_report rep;
  pid_t child = start_child(1, &rep);
  assert_int_equal(kill(child, 0), 0);
  assert_int_equal(kill(rep.pg_pid, 0), 0);
  assert_int_equal(kill(child, SIGKILL), 0);
  int st;
  assert_int_equal(waitpid(child, &st, 0), child);
  assert_true(gone_within(rep.pg_pid, 15000));
  assert_true(gone_within(rep.redis_pid, 15000));
  /* Nothing ran to remove the directories; the test runner removes
   * $SP_TEST_TMPDIR.  Do it here so a bare run leaves nothing either. */
  char cmd[2 * PATH_MAX + 32];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", rep.pg_dir, rep.redis_dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_free_port),
      cmocka_unit_test(test_pg_lifecycle),
      cmocka_unit_test(test_redis_lifecycle),
      cmocka_unit_test(test_two_servers_at_once),
      cmocka_unit_test(test_bad_use_is_refused),
      cmocka_unit_test(test_atexit_hook_cleans_up),
      cmocka_unit_test(test_killed_test_takes_servers_along),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
