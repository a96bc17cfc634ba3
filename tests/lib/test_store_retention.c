/* sp_trim_log_max (lib/sql/0009_max_retention.sql) on a real PostgreSQL:
 * rows every peer acknowledged go as with sp_trim_log (given_up NULL);
 * rows logged before the maximum retention go even when a peer has not
 * acknowledged them, and exactly those peers are named (a peer with no ack
 * row counts as having nothing); the cut is contiguous from the bottom
 * (a row logged out of order above a young row stays), never passes the
 * region's own applied vector (rows beyond a gap stay), raises
 * sp_log_floor, and does nothing when nothing expired or the maximum is
 * NULL; a maximum below the retention is refused (22023).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_fixture.h"

static PGconn *g_db;

static int setup(void **state) {
  if (sf_setup(state))
    return -1;
  g_db = PQconnectdb(sf_conninfo());
  return PQstatus(g_db) == CONNECTION_OK ? 0 : -1;
}

static int teardown(void **state) {
  PQfinish(g_db);
  return sf_teardown(state);
}

/* The rows of a sp_trim_log_max call as "origin:floor:deleted:given_up;"
 * (given_up "-" when NULL), in the order returned. */
static void trim(const char *peers, const char *ret, const char *max, char *out, size_t len) {
  char q[256];
  snprintf(q, sizeof q,
           "SELECT origin, floor, deleted, given_up FROM sp_trim_log_max('%s', %s, %s)", peers,
           ret, max);
  PGresult *r = PQexec(g_db, q);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    fail_msg("%s: %s", q, PQerrorMessage(g_db));
  size_t n = 0;
  out[0] = '\0';
  for (int i = 0; i < PQntuples(r); i++)
    n += (size_t)snprintf(out + n, len - n, "%s:%s:%s:%s;", PQgetvalue(r, i, 0),
                          PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                          PQgetisnull(r, i, 3) ? "-" : PQgetvalue(r, i, 3));
  PQclear(r);
}

/* Logs row (origin, seq) as written `age_ms` ago. */
static void log_row(int origin, int seq, int age_ms) {
  char q[512];
  snprintf(q, sizeof q,
           "INSERT INTO sp_change_log (origin, seq, kind, page_id, type, id, cl, hlc, region, "
           "logged_at) VALUES (%d, %d, 2, 'p', 'component', 'c%d-%d', 1, %d, %d, "
           "now() - %d * interval '1 millisecond')",
           origin, seq, origin, seq, seq, origin, age_ms);
  sf_exec(g_db, q);
}

static void reset(void) {
  sf_exec(g_db, "TRUNCATE sp_change_log, sp_vclock, sp_peer_ack, sp_log_floor");
}

static void test_cut_past_acks(void **state) {
  (void)state;
  reset();
  /* origin 0: 1..6 old, 7 young, 8 old (logged out of order), 9..10 young */
  for (int s = 1; s <= 10; s++)
    log_row(0, s, s <= 6 || s == 8 ? 60000 : 0);
  sf_exec(g_db, "INSERT INTO sp_vclock VALUES (0, 10)");
  /* peer 1 has everything, peer 2 up to 3, peer 3 never answered */
  sf_exec(g_db, "INSERT INTO sp_peer_ack VALUES (1, 0, 10), (2, 0, 3)");
  char out[512];
  trim("{1,2}", "0", "NULL", out, sizeof out);
  assert_string_equal(out, "0:3:3:-;"); /* the acked rows only */
  trim("{1,2}", "0", "30000", out, sizeof out);
  assert_string_equal(out, "0:6:3:{2};"); /* 4..6: peer 2 given up on */
  assert_int_equal(sf_int(g_db,
                          "SELECT (string_agg(seq::text, ',' ORDER BY seq) = '7,8,9,10')::int "
                          "FROM sp_change_log"),
                   1);
  assert_int_equal(sf_int(g_db, "SELECT seq FROM sp_log_floor WHERE origin = 0"), 6);
  /* nothing more expires: no row, floor unchanged */
  trim("{1,2}", "0", "30000", out, sizeof out);
  assert_string_equal(out, "");
  /* a peer without ack rows is named too; the young row 7 bounds the cut */
  sf_exec(g_db, "UPDATE sp_change_log SET logged_at = now() - interval '1 minute' WHERE seq = 7");
  sf_exec(g_db, "INSERT INTO sp_peer_ack VALUES (3, 1, 0)");
  trim("{1,2,3}", "0", "30000", out, sizeof out);
  assert_string_equal(out, "0:8:2:{2,3};");
  assert_int_equal(sf_int(g_db, "SELECT min(seq) FROM sp_change_log"), 9);
}

static void test_gap_and_refusal(void **state) {
  (void)state;
  reset();
  /* origin 1 applied up to 2; 5 arrived beyond a gap: it stays */
  log_row(1, 1, 60000);
  log_row(1, 2, 60000);
  log_row(1, 5, 60000);
  sf_exec(g_db, "INSERT INTO sp_vclock VALUES (1, 2)");
  char out[512];
  trim("{2}", "0", "1000", out, sizeof out);
  assert_string_equal(out, "1:2:2:{2};");
  assert_int_equal(sf_int(g_db, "SELECT count(*) FROM sp_change_log WHERE seq = 5"), 1);
  /* a maximum below the retention is refused */
  PGresult *r = PQexec(g_db, "SELECT * FROM sp_trim_log_max('{2}', 5000, 1000)");
  assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
  assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22023");
  PQclear(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cut_past_acks),
      cmocka_unit_test(test_gap_and_refusal),
  };
  return cmocka_run_group_tests_name("store_retention", tests, setup, teardown);
}
