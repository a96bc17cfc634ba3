/* Tests for sp_migrate against a real PostgreSQL: ordering, idempotence,
 * late additions, edited files, failing SQL, concurrent runners, and every
 * kind of bad directory.  Static migration sets live in
 * tests/lib/migrations-*; sets that a test mutates are written to a temp dir.
 * Each test uses its own database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libgen.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sp_err.h"
#include "sp_fixture.h"
#include "sp_migrate.h"

static sp_fixture_pg g_pg;
static char g_srcdir[1024]; /* tests/lib */

/* ---- helpers ---------------------------------------------------------------*/

/* A fresh database; its conninfo in `ci`. */
static void new_db(const char *name, char *ci, size_t n) {
  char sql[128];
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  assert_int_equal(sp_fixture_pg_psql(&g_pg, sql), 0);
  snprintf(ci, n, "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=5",
           g_pg.port, name, g_pg.user);
}

/* First column of the first row of `sql`, or "<none>"/"<error>". */
static void q1(const char *ci, const char *sql, char *out, size_t n) {
  PGconn *c = PQconnectdb(ci);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    snprintf(out, n, "<error>");
  else if (PQntuples(r) == 0)
    snprintf(out, n, "<none>");
  else
    snprintf(out, n, "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
  PQfinish(c);
}

static int q1_int(const char *ci, const char *sql) {
  char v[64];
  q1(ci, sql, v, sizeof v);
  return atoi(v);
}

static int table_exists(const char *ci, const char *table) {
  char sql[256], v[64];
  snprintf(sql, sizeof sql, "SELECT to_regclass('%s') IS NOT NULL", table);
  q1(ci, sql, v, sizeof v);
  return strcmp(v, "t") == 0;
}

static void src(const char *sub, char *out, size_t n) {
  snprintf(out, n, "%s/%s", g_srcdir, sub);
}

static void tmpdir(char *out, size_t n) {
  const char *base = getenv("SP_TEST_TMPDIR");
  snprintf(out, n, "%s/sp-migrate.XXXXXX", base && *base ? base : "/tmp");
  assert_non_null(mkdtemp(out));
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
}

static void rm_dir(const char *dir) {
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* ---- tests -----------------------------------------------------------------*/

static void test_applies_in_order_then_noop(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX], err[512];
  new_db("m_order", ci, sizeof ci);
  src("migrations-ok", dir, sizeof dir);
  sp_migrate_report rep;
  int rc = sp_migrate_run(ci, dir, &rep, err, sizeof err);
  if (rc != 0)
    fail_msg("%s", err);
  assert_int_equal(rep.files, 3); /* README, notes.txt, dotfile ignored */
  assert_int_equal(rep.applied, 3);
  assert_int_equal(rep.skipped, 0);
  assert_int_equal(rep.version, 10);
  assert_string_equal(err, "");
  /* 00010 (needs both tables) ran after 0002 */
  assert_int_equal(q1_int(ci, "SELECT count(*) FROM m_components"), 1);
  assert_int_equal(q1_int(ci, "SELECT count(*) FROM schema_migrations"), 3);
  char v[128];
  q1(ci, "SELECT string_agg(version || ':' || name, ',' ORDER BY version) "
         "FROM schema_migrations",
     v, sizeof v);
  assert_string_equal(v, "1:0001_pages.sql,2:0002_components.sql,"
                         "10:00010_seed.sql");
  assert_int_equal(
      q1_int(ci, "SELECT min(length(sha256)) FROM schema_migrations"), 64);
  char at[64];
  q1(ci, "SELECT max(applied_at) FROM schema_migrations", at, sizeof at);

  /* a second run changes nothing */
  rc = sp_migrate_run(ci, dir, &rep, err, sizeof err);
  assert_int_equal(rc, 0);
  assert_int_equal(rep.applied, 0);
  assert_int_equal(rep.skipped, 3);
  assert_int_equal(rep.version, 10);
  q1(ci, "SELECT max(applied_at) FROM schema_migrations", v, sizeof v);
  assert_string_equal(v, at);
  assert_int_equal(q1_int(ci, "SELECT count(*) FROM m_components"), 1);
  /* report and error buffer are optional */
  assert_int_equal(sp_migrate_run(ci, dir, NULL, NULL, 0), 0);
}

static void test_new_file_added_later(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX], err[512];
  new_db("m_later", ci, sizeof ci);
  tmpdir(dir, sizeof dir);
  write_file(dir, "0005_first.sql", "CREATE TABLE l_first(x int);\n");
  sp_migrate_report rep;
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err), 0);
  assert_int_equal(rep.applied, 1);
  write_file(dir, "0006_second.sql", "CREATE TABLE l_second(x int);\n");
  /* merged late with a lower version: applied too */
  write_file(dir, "0003_late.sql", "CREATE TABLE l_late(x int);\n");
  int rc = sp_migrate_run(ci, dir, &rep, err, sizeof err);
  if (rc != 0)
    fail_msg("%s", err);
  assert_int_equal(rep.files, 3);
  assert_int_equal(rep.applied, 2);
  assert_int_equal(rep.skipped, 1);
  assert_int_equal(rep.version, 6);
  assert_true(table_exists(ci, "l_second"));
  assert_true(table_exists(ci, "l_late"));
  rm_dir(dir);
}

static void test_changed_checksum_rejected(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX], err[512];
  new_db("m_sum", ci, sizeof ci);
  tmpdir(dir, sizeof dir);
  write_file(dir, "0001_base.sql", "CREATE TABLE s_base(x int);\n");
  assert_int_equal(sp_migrate_run(ci, dir, NULL, err, sizeof err), 0);
  /* edit the applied file (even a comment counts) and add a new one */
  write_file(dir, "0001_base.sql",
             "CREATE TABLE s_base(x int); -- tweaked\n");
  write_file(dir, "0002_next.sql", "CREATE TABLE s_next(x int);\n");
  sp_migrate_report rep;
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                   SP_ERR_CONFLICT);
  assert_non_null(strstr(err, "0001_base.sql"));
  assert_non_null(strstr(err, "changed"));
  assert_int_equal(rep.applied, 0);
  /* nothing new was applied and the old row is untouched */
  assert_false(table_exists(ci, "s_next"));
  assert_int_equal(q1_int(ci, "SELECT count(*) FROM schema_migrations"), 1);
  rm_dir(dir);
}

static void test_bad_sql_rolls_back_and_names_file(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX], err[512];
  new_db("m_bad", ci, sizeof ci);
  src("migrations-bad", dir, sizeof dir);
  sp_migrate_report rep;
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err), SP_ERR_DB);
  assert_non_null(strstr(err, "0002_broken.sql"));
  assert_non_null(strstr(err, "b_missing")); /* PostgreSQL's message */
  assert_non_null(strstr(err, "line 3"));
  assert_non_null(strstr(err, "42P01"));
  assert_null(strchr(err, '\n'));
  assert_int_equal(rep.applied, 1);
  assert_true(table_exists(ci, "b_ok"));
  assert_false(table_exists(ci, "b_half")); /* rolled back completely */
  assert_false(table_exists(ci, "b_never"));
  char v[64];
  q1(ci, "SELECT string_agg(version::text, ',') FROM schema_migrations", v,
     sizeof v);
  assert_string_equal(v, "1");
  /* running again fails the same way and still leaves nothing behind */
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err), SP_ERR_DB);
  assert_int_equal(rep.skipped, 1);
  assert_false(table_exists(ci, "b_half"));
}

static void test_transaction_control_in_file_reported(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX], err[512];
  new_db("m_txctl", ci, sizeof ci);
  tmpdir(dir, sizeof dir);
  write_file(dir, "0001_commits.sql", "CREATE TABLE t_c(x int);\nCOMMIT;\n");
  assert_int_equal(sp_migrate_run(ci, dir, NULL, err, sizeof err), SP_ERR_DB);
  assert_non_null(strstr(err, "0001_commits.sql"));
  assert_non_null(strstr(err, "transaction"));
  assert_int_equal(q1_int(ci, "SELECT count(*) FROM schema_migrations"), 0);
  rm_dir(dir);
}

static void test_parallel_runners_apply_once(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX];
  new_db("m_par", ci, sizeof ci);
  src("migrations-parallel", dir, sizeof dir);
  enum { N = 3 };
  pid_t kids[N];
  int fds[N][2];
  for (int i = 0; i < N; i++) {
    assert_int_equal(pipe(fds[i]), 0);
    kids[i] = fork();
    assert_true(kids[i] >= 0);
    if (kids[i] == 0) {
      sp_migrate_report rep;
      char err[512];
      int out[2];
      out[0] = sp_migrate_run(ci, dir, &rep, err, sizeof err);
      out[1] = rep.applied;
      if (out[0] != 0)
        fprintf(stderr, "runner %d: %s\n", i, err);
      _exit(write(fds[i][1], out, sizeof out) == (ssize_t)sizeof out ? 0 : 1);
    }
    close(fds[i][1]);
  }
  int total = 0;
  for (int i = 0; i < N; i++) {
    int out[2] = {-1, -1}, st;
    assert_int_equal(read(fds[i][0], out, sizeof out), (ssize_t)sizeof out);
    close(fds[i][0]);
    assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(out[0], 0);
    total += out[1];
  }
  assert_int_equal(total, 2); /* each migration applied by exactly one */
  char v[64];
  q1(ci, "SELECT string_agg(x::text, ',' ORDER BY x) FROM par_t", v, sizeof v);
  assert_string_equal(v, "1,2");
}

static void test_bad_directories(void **state) {
  (void)state;
  /* All of these fail before connecting: a dead server proves it. */
  const char *ci = "host=127.0.0.1 port=1 dbname=x connect_timeout=2";
  char dir[PATH_MAX], err[512];
  sp_migrate_report rep;

  src("migrations-dup", dir, sizeof dir);
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                   SP_ERR_EXIST);
  assert_non_null(strstr(err, "0001_a.sql"));
  assert_non_null(strstr(err, "00001_b.sql"));

  src("migrations-malformed", dir, sizeof dir);
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                   SP_ERR_PARSE);
  assert_non_null(strstr(err, "12_short.sql"));

  src("migrations-does-not-exist", dir, sizeof dir);
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                   SP_ERR_NOENT);
  assert_non_null(strstr(err, "migrations-does-not-exist"));

  /* more malformed names, one at a time */
  static const char *const bad[] = {
      "0001-dash.sql", "0001_.sql",      "abcd_x.sql",   "0001_sp ace.sql",
      "0001x.sql",     "1234567890_big.sql", "0001_x.sql.sql", NULL};
  for (int i = 0; bad[i]; i++) {
    tmpdir(dir, sizeof dir);
    write_file(dir, bad[i], "SELECT 1;\n");
    assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                     SP_ERR_PARSE);
    assert_non_null(strstr(err, bad[i]));
    rm_dir(dir);
  }
  /* ignored names: wrong suffix, dotfile, directory named like a file */
  tmpdir(dir, sizeof dir);
  write_file(dir, "0001_x.SQL", "garbage");
  write_file(dir, "0001_x.sql~", "garbage");
  write_file(dir, ".#0001_x.sql", "garbage");
  char sub[PATH_MAX + 32];
  snprintf(sub, sizeof sub, "%s/0002_dir.sql", dir);
  assert_int_equal(mkdir(sub, 0755), 0);
  /* nothing to apply, but it still connects: the dead server says so */
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                   SP_ERR_DB_DOWN);
  assert_int_equal(rep.files, 0);
  assert_non_null(strstr(err, "connect"));
  /* a NUL byte inside a file */
  write_file(dir, "0003_nul.sql", "SELECT 1;");
  {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/0003_nul.sql", dir);
    FILE *f = fopen(path, "ab");
    assert_non_null(f);
    fputc('\0', f);
    fclose(f);
  }
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err),
                   SP_ERR_PARSE);
  assert_non_null(strstr(err, "0003_nul.sql"));
  rm_dir(dir);

  assert_int_equal(sp_migrate_run(NULL, dir, &rep, err, sizeof err),
                   SP_ERR_INVAL);
  assert_int_equal(sp_migrate_run(ci, NULL, NULL, NULL, 0), SP_ERR_INVAL);
}

static void test_empty_dir_creates_table(void **state) {
  (void)state;
  char ci[512], dir[PATH_MAX], err[512];
  new_db("m_empty", ci, sizeof ci);
  tmpdir(dir, sizeof dir);
  sp_migrate_report rep;
  assert_int_equal(sp_migrate_run(ci, dir, &rep, err, sizeof err), 0);
  assert_int_equal(rep.files, 0);
  assert_int_equal(rep.version, 0);
  assert_true(table_exists(ci, "schema_migrations"));
  rm_dir(dir);
}

static int group_setup(void **state) {
  (void)state;
  const char *env = getenv("SP_SRCDIR");
  if (env && *env) {
    snprintf(g_srcdir, sizeof g_srcdir, "%s/tests/lib", env);
  } else {
    /* __FILE__ is relative to the repository root, where make runs. */
    char f[PATH_MAX];
    snprintf(f, sizeof f, "%s", __FILE__);
    snprintf(g_srcdir, sizeof g_srcdir, "%s", dirname(f));
  }
  char probe[PATH_MAX + 32];
  snprintf(probe, sizeof probe, "%s/migrations-ok", g_srcdir);
  struct stat st;
  if (stat(probe, &st) != 0) {
    fprintf(stderr, "test data %s not found: run from the repository root "
                    "or set SP_SRCDIR\n", probe);
    return -1;
  }
  return sp_fixture_pg_start(&g_pg);
}

static int group_teardown(void **state) {
  (void)state;
  sp_fixture_pg_stop(&g_pg);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_applies_in_order_then_noop),
      cmocka_unit_test(test_new_file_added_later),
      cmocka_unit_test(test_changed_checksum_rejected),
      cmocka_unit_test(test_bad_sql_rolls_back_and_names_file),
      cmocka_unit_test(test_transaction_control_in_file_reported),
      cmocka_unit_test(test_parallel_runners_apply_once),
      cmocka_unit_test(test_bad_directories),
      cmocka_unit_test(test_empty_dir_creates_table),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
