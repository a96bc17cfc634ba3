/* Tests for sp_pg against a real PostgreSQL from the fixture: parameterised
 * queries, SQL errors, queueing and back-pressure, transactions, server
 * down/up, a backend killed mid-transaction, timeouts, close with work
 * pending, bad arguments.  Every test ends with its loop closing clean. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_fixture.h"
#include "sp_log.h"
#include "sp_pg.h"

static sp_fixture_pg g_pg;

/* ---- harness ---------------------------------------------------------------*/

typedef struct cap {
  int done;
  int status;
  int ntuples;
  int isnull;
  char val[256];
  char sqlstate[8];
  char msg[256];
  char cmd[32];
} cap;

static void cap_cb(int status, const PGresult *res, void *arg) {
  cap *c = arg;
  c->done++;
  c->status = status;
  if (res && status == 0) {
    c->ntuples = PQntuples(res);
    snprintf(c->cmd, sizeof c->cmd, "%s", PQcmdStatus((PGresult *)res));
    if (c->ntuples > 0 && PQnfields(res) > 0) {
      c->isnull = PQgetisnull(res, 0, 0);
      snprintf(c->val, sizeof c->val, "%s", PQgetvalue(res, 0, 0));
    }
  }
  snprintf(c->sqlstate, sizeof c->sqlstate, "%s", sp_pg_sqlstate(res));
  snprintf(c->msg, sizeof c->msg, "%s", sp_pg_error_message(res));
}

typedef struct txcap {
  int done;
  int status;
  sp_pg_tx *tx;
} txcap;

static void txcap_cb(int status, sp_pg_tx *tx, void *arg) {
  txcap *t = arg;
  t->done++;
  t->status = status;
  t->tx = tx;
}

static void wake_cb(uv_timer_t *t) { (void)t; }

/* Run the loop until *flag >= target or `ms` pass; 1 if reached. */
static int run_until(uv_loop_t *loop, const int *flag, int target,
                     unsigned ms) {
  uv_timer_t wake;
  uv_timer_init(loop, &wake);
  uv_timer_start(&wake, wake_cb, 10, 10); /* keeps UV_RUN_ONCE returning */
  uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000u;
  while (*flag < target && uv_hrtime() < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&wake, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  return *flag >= target;
}

static void run_for(uv_loop_t *loop, unsigned ms) {
  int never = 0;
  run_until(loop, &never, 1, ms);
}

static void closed_cb(void *arg) { (*(int *)arg)++; }

typedef struct tctx {
  uv_loop_t loop;
  sp_pg_pool *pool;
} tctx;

static void open_pool(tctx *t, sp_pg_opts *o) {
  assert_int_equal(uv_loop_init(&t->loop), 0);
  if (!o->conninfo)
    o->conninfo = g_pg.conninfo;
  assert_int_equal(sp_pg_pool_new(&t->loop, o, &t->pool), 0);
}

static void wait_up(tctx *t) {
  for (int i = 0; i < 500 && !sp_pg_pool_is_up(t->pool); i++)
    run_for(&t->loop, 10);
  assert_true(sp_pg_pool_is_up(t->pool));
}

static void close_pool(tctx *t) {
  int closed = 0;
  assert_int_equal(sp_pg_pool_close(t->pool, closed_cb, &closed), 0);
  assert_int_equal(sp_pg_pool_close(t->pool, closed_cb, &closed),
                   SP_ERR_CLOSED);
  assert_true(run_until(&t->loop, &closed, 1, 10000));
  assert_int_equal(closed, 1);
  assert_int_equal(uv_run(&t->loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&t->loop), 0);
}

/* A query whose result the test waits for. */
static void query_sync(tctx *t, const char *sql, int n,
                       const char *const *vals, cap *c) {
  memset(c, 0, sizeof *c);
  assert_int_equal(sp_pg_query(t->pool, sql, n, vals, cap_cb, c), 0);
  assert_true(run_until(&t->loop, &c->done, 1, 10000));
  assert_int_equal(c->done, 1);
}

static int count_rows(tctx *t, const char *name) {
  cap c;
  const char *v[] = {name};
  query_sync(t, "SELECT count(*) FROM items WHERE name = $1", 1, v, &c);
  assert_int_equal(c.status, 0);
  return atoi(c.val);
}

/* ---- tests -----------------------------------------------------------------*/

static void test_query_with_params(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {0};
  open_pool(&t, &o);
  cap c;
  const char *v1[] = {"41", NULL, "O'Reilly"};
  query_sync(&t, "SELECT $1::int + 1, $2::text IS NULL, $3::text", 3, v1, &c);
  assert_int_equal(c.status, 0);
  assert_int_equal(c.ntuples, 1);
  assert_string_equal(c.val, "42");

  /* NULL parameter arrives as SQL NULL */
  const char *v2[] = {NULL};
  query_sync(&t, "SELECT $1::text", 1, v2, &c);
  assert_int_equal(c.status, 0);
  assert_int_equal(c.isnull, 1);

  /* an injection attempt is stored and read back as a plain literal */
  const char *evil = "x'); DROP TABLE items; --";
  const char *v3[] = {evil};
  query_sync(&t, "INSERT INTO items(name) VALUES ($1)", 1, v3, &c);
  assert_int_equal(c.status, 0);
  assert_string_equal(c.cmd, "INSERT 0 1");
  query_sync(&t, "SELECT name FROM items WHERE name = $1", 1, v3, &c);
  assert_int_equal(c.status, 0);
  assert_int_equal(c.ntuples, 1);
  assert_string_equal(c.val, evil);
  query_sync(&t, "DELETE FROM items WHERE name = $1", 1, v3, &c);
  assert_int_equal(c.status, 0);

  /* a statement with no parameters and no rows */
  query_sync(&t, "SELECT 1 WHERE false", 0, NULL, &c);
  assert_int_equal(c.status, 0);
  assert_int_equal(c.ntuples, 0);
  close_pool(&t);
}

static void test_sql_error_reports_sqlstate(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {0};
  open_pool(&t, &o);
  cap c;
  query_sync(&t, "SELECT * FROM no_such_table", 0, NULL, &c);
  assert_int_equal(c.status, SP_ERR_DB);
  assert_string_equal(c.sqlstate, "42P01");
  assert_non_null(strstr(c.msg, "no_such_table"));

  const char *bad[] = {"not a number"};
  query_sync(&t, "SELECT $1::int", 1, bad, &c);
  assert_int_equal(c.status, SP_ERR_DB);
  assert_string_equal(c.sqlstate, "22P02");

  const char *dup[] = {"dup-key"};
  query_sync(&t, "INSERT INTO items(name) VALUES ($1)", 1, dup, &c);
  assert_int_equal(c.status, 0);
  query_sync(&t, "INSERT INTO items(name) VALUES ($1)", 1, dup, &c);
  assert_int_equal(c.status, SP_ERR_DB);
  assert_string_equal(c.sqlstate, "23505");

  /* two statements cannot be smuggled into one parameterised call */
  query_sync(&t, "SELECT 1; SELECT 2", 0, NULL, &c);
  assert_int_equal(c.status, SP_ERR_DB);
  assert_string_equal(c.sqlstate, "42601");

  /* the connection is fine afterwards */
  query_sync(&t, "SELECT 'ok'", 0, NULL, &c);
  assert_int_equal(c.status, 0);
  assert_string_equal(c.val, "ok");
  sp_pg_stats st;
  sp_pg_pool_stats(t.pool, &st);
  assert_true(st.failures >= 4);
  close_pool(&t);
}

#define NCONC 60

static void test_many_queries_through_small_pool(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 2, .max_waiting = NCONC};
  open_pool(&t, &o);
  wait_up(&t);
  static cap caps[NCONC];
  char vals[NCONC][16];
  int done = 0;
  memset(caps, 0, sizeof caps);
  for (int i = 0; i < NCONC; i++) {
    snprintf(vals[i], sizeof vals[i], "%d", i);
    const char *v[] = {vals[i]};
    assert_int_equal(sp_pg_query(t.pool,
                                 "SELECT $1::int * 2, pg_backend_pid(), "
                                 "pg_sleep(0.002)",
                                 1, v, cap_cb, &caps[i]),
                     0);
  }
  sp_pg_stats st;
  sp_pg_pool_stats(t.pool, &st);
  assert_int_equal(st.size, 2);
  assert_true(st.busy <= 2);
  assert_true(st.waiting >= NCONC - 2);
  for (int tries = 0; tries < 1000 && done < NCONC; tries++) {
    run_for(&t.loop, 10);
    done = 0;
    for (int i = 0; i < NCONC; i++)
      done += caps[i].done;
  }
  assert_int_equal(done, NCONC);
  for (int i = 0; i < NCONC; i++) {
    assert_int_equal(caps[i].status, 0);
    assert_int_equal(atoi(caps[i].val), 2 * i);
  }
  sp_pg_pool_stats(t.pool, &st);
  assert_int_equal(st.waiting, 0);
  assert_int_equal(st.busy, 0);
  assert_true(st.queries >= NCONC);
  close_pool(&t);
}

static void test_queue_overflow_is_busy(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 1, .max_waiting = 3};
  open_pool(&t, &o);
  wait_up(&t);
  cap c[5];
  memset(c, 0, sizeof c);
  for (int i = 0; i < 4; i++)
    assert_int_equal(
        sp_pg_query(t.pool, "SELECT pg_sleep(0.05)", 0, NULL, cap_cb, &c[i]),
        0);
  assert_int_equal(sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &c[4]),
                   SP_ERR_BUSY);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), SP_ERR_BUSY);
  assert_true(run_until(&t.loop, &c[3].done, 1, 10000));
  for (int i = 0; i < 4; i++) {
    assert_int_equal(c[i].done, 1);
    assert_int_equal(c[i].status, 0);
  }
  assert_int_equal(c[4].done, 0); /* refused calls never call back */
  assert_int_equal(tc.done, 0);
  close_pool(&t);
}

static void test_tx_commit_visible_rollback_invisible(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 2};
  open_pool(&t, &o);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  assert_int_equal(tc.status, 0);
  assert_non_null(tc.tx);

  /* two statements queued without waiting, then the commit */
  cap a = {0}, b = {0}, cm = {0};
  const char *v1[] = {"tx-commit-1"}, *v2[] = {"tx-commit-2"};
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v1, cap_cb, &a),
                   0);
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v2, cap_cb, &b),
                   0);
  assert_true(run_until(&t.loop, &b.done, 1, 10000));
  assert_int_equal(a.status, 0);
  assert_int_equal(b.status, 0);
  /* not visible from another connection before commit */
  assert_int_equal(count_rows(&t, "tx-commit-1"), 0);
  sp_pg_stats st;
  sp_pg_pool_stats(t.pool, &st);
  assert_int_equal(st.busy, 1); /* pinned by the transaction */
  assert_int_equal(sp_pg_tx_commit(tc.tx, cap_cb, &cm), 0);
  assert_true(run_until(&t.loop, &cm.done, 1, 10000));
  assert_int_equal(cm.status, 0);
  assert_int_equal(count_rows(&t, "tx-commit-1"), 1);
  assert_int_equal(count_rows(&t, "tx-commit-2"), 1);

  /* rollback */
  memset(&tc, 0, sizeof tc);
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  assert_int_equal(tc.status, 0);
  cap ins = {0}, rb = {0};
  const char *v3[] = {"tx-rolled-back"};
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v3, cap_cb, &ins),
                   0);
  /* rollback queued behind the insert, before its answer */
  assert_int_equal(sp_pg_tx_rollback(tc.tx, cap_cb, &rb), 0);
  assert_true(run_until(&t.loop, &rb.done, 1, 10000));
  assert_int_equal(ins.status, 0);
  assert_int_equal(rb.status, 0);
  assert_int_equal(count_rows(&t, "tx-rolled-back"), 0);
  sp_pg_pool_stats(t.pool, &st);
  assert_int_equal(st.busy, 0);
  close_pool(&t);
}

static void test_tx_error_needs_rollback(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 1};
  open_pool(&t, &o);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  assert_int_equal(tc.status, 0);
  cap ins = {0}, bad = {0}, after = {0}, cm = {0};
  const char *v[] = {"tx-failed"};
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v, cap_cb, &ins),
                   0);
  assert_int_equal(
      sp_pg_tx_query(tc.tx, "SELECT * FROM nope", 0, NULL, cap_cb, &bad), 0);
  assert_int_equal(sp_pg_tx_query(tc.tx, "SELECT 1", 0, NULL, cap_cb, &after),
                   0);
  assert_true(run_until(&t.loop, &after.done, 1, 10000));
  assert_int_equal(ins.status, 0);
  assert_int_equal(bad.status, SP_ERR_DB);
  assert_string_equal(bad.sqlstate, "42P01");
  assert_int_equal(after.status, SP_ERR_DB);
  assert_string_equal(after.sqlstate, "25P02"); /* in failed transaction */
  /* commit of a failed transaction is reported as a failure */
  assert_int_equal(sp_pg_tx_commit(tc.tx, cap_cb, &cm), 0);
  assert_true(run_until(&t.loop, &cm.done, 1, 10000));
  assert_int_equal(cm.status, SP_ERR_DB);
  assert_int_equal(count_rows(&t, "tx-failed"), 0);

  /* the same (only) connection serves a new transaction normally */
  memset(&tc, 0, sizeof tc);
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  cap e = {0}, rb = {0};
  assert_int_equal(
      sp_pg_tx_query(tc.tx, "SELECT 1/0", 0, NULL, cap_cb, &e), 0);
  assert_true(run_until(&t.loop, &e.done, 1, 10000));
  assert_int_equal(e.status, SP_ERR_DB);
  assert_string_equal(e.sqlstate, "22012");
  assert_int_equal(sp_pg_tx_rollback(tc.tx, cap_cb, &rb), 0);
  assert_int_equal(sp_pg_tx_rollback(tc.tx, cap_cb, &rb), SP_ERR_INVAL);
  assert_true(run_until(&t.loop, &rb.done, 1, 10000));
  assert_int_equal(rb.status, 0);
  cap ok;
  query_sync(&t, "SELECT 'fine'", 0, NULL, &ok);
  assert_int_equal(ok.status, 0);
  close_pool(&t);
}

static void tick_cb(uv_timer_t *h) { (*(int *)h->data)++; }

/* Either the call refused with `expect`, or it was accepted and the
 * callback must report it. */
static void expect_failure(tctx *t, int rc, cap *c, int expect) {
  if (rc != 0) {
    assert_int_equal(rc, expect);
    return;
  }
  assert_true(run_until(&t->loop, &c->done, 1, 10000));
  assert_int_equal(c->status, expect);
}

static void test_db_down_then_back(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 2, .reconnect_min_ms = 20, .reconnect_max_ms = 200};
  open_pool(&t, &o);
  int ticks = 0;
  uv_timer_t ticker;
  uv_timer_init(&t.loop, &ticker);
  ticker.data = &ticks;
  uv_timer_start(&ticker, tick_cb, 10, 10);
  cap c;
  query_sync(&t, "SELECT 1", 0, NULL, &c);
  assert_int_equal(c.status, 0);
  sp_pg_stats before;
  for (int i = 0; i < 500; i++) { /* both connections open */
    sp_pg_pool_stats(t.pool, &before);
    if (before.up == 2)
      break;
    run_for(&t.loop, 10);
  }
  assert_int_equal(before.up, 2);

  assert_int_equal(sp_fixture_pg_halt(&g_pg), 0);
  /* The pool has not noticed yet: the query goes out on a dead socket. */
  memset(&c, 0, sizeof c);
  uint64_t t0 = uv_hrtime();
  expect_failure(&t, sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &c), &c,
                 SP_ERR_DB_DOWN);
  /* Soon it knows, and refuses at once. */
  for (int i = 0; i < 500; i++) {
    sp_pg_stats st;
    sp_pg_pool_stats(t.pool, &st);
    if (st.down)
      break;
    run_for(&t.loop, 10);
  }
  assert_false(sp_pg_pool_is_up(t.pool));
  memset(&c, 0, sizeof c);
  assert_int_equal(sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &c),
                   SP_ERR_DB_DOWN);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), SP_ERR_DB_DOWN);
  /* well under the connect timeout: nothing waited for a timeout */
  assert_true((uv_hrtime() - t0) / 1000000u < 4000);

  /* a pool created while the server is down fails its queued queries */
  tctx t2;
  sp_pg_opts o2 = {.size = 1};
  open_pool(&t2, &o2);
  cap q2 = {0};
  expect_failure(&t2, sp_pg_query(t2.pool, "SELECT 1", 0, NULL, cap_cb, &q2),
                 &q2, SP_ERR_DB_DOWN);
  close_pool(&t2);

  /* the loop keeps running while the database is down */
  int ticks_before = ticks;
  run_for(&t.loop, 300);
  assert_true(ticks - ticks_before >= 5);

  assert_int_equal(sp_fixture_pg_resume(&g_pg), 0);
  wait_up(&t);
  query_sync(&t, "SELECT 'back'", 0, NULL, &c);
  assert_int_equal(c.status, 0);
  assert_string_equal(c.val, "back");
  sp_pg_stats after;
  sp_pg_pool_stats(t.pool, &after);
  assert_int_equal(after.down, 0);
  assert_true(after.disconnects >= before.disconnects + 2);
  assert_true(after.connects > before.connects);
  uv_close((uv_handle_t *)&ticker, NULL);
  close_pool(&t);
}

static void test_backend_killed_mid_transaction(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 2};
  open_pool(&t, &o);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  assert_int_equal(tc.status, 0);
  cap ins = {0}, pid = {0};
  const char *v[] = {"killed-tx"};
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v, cap_cb, &ins),
                   0);
  assert_int_equal(sp_pg_tx_query(tc.tx, "SELECT pg_backend_pid()", 0, NULL,
                                  cap_cb, &pid),
                   0);
  assert_true(run_until(&t.loop, &pid.done, 1, 10000));
  assert_int_equal(ins.status, 0);
  assert_int_equal(pid.status, 0);

  char sql[sizeof pid.val + 64];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid.val);
  assert_int_equal(sp_fixture_pg_psql(&g_pg, sql), 0);

  /* the next statement fails, whether or not the pool noticed yet */
  cap next = {0};
  int rc = sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ('x')", 0,
                          NULL, cap_cb, &next);
  expect_failure(&t, rc, &next, SP_ERR_DB_DOWN);
  /* and so does everything after it, commit included */
  cap more = {0};
  assert_int_equal(
      sp_pg_tx_query(tc.tx, "SELECT 1", 0, NULL, cap_cb, &more),
      SP_ERR_DB_DOWN);
  cap cm = {0};
  assert_int_equal(sp_pg_tx_commit(tc.tx, cap_cb, &cm), SP_ERR_DB_DOWN);
  run_for(&t.loop, 50);
  assert_int_equal(cm.done, 0);
  assert_int_equal(more.done, 0);
  /* nothing of it was committed; the pool reconnects and works */
  assert_int_equal(count_rows(&t, "killed-tx"), 0);

  /* Again, but let the pool notice the loss before the next call: then the
   * calls refuse at once and rollback frees the dead transaction. */
  memset(&tc, 0, sizeof tc);
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  memset(&pid, 0, sizeof pid);
  assert_int_equal(sp_pg_tx_query(tc.tx, "SELECT pg_backend_pid()", 0, NULL,
                                  cap_cb, &pid),
                   0);
  assert_true(run_until(&t.loop, &pid.done, 1, 10000));
  sp_pg_stats st;
  sp_pg_pool_stats(t.pool, &st);
  uint64_t lost = st.disconnects;
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid.val);
  assert_int_equal(sp_fixture_pg_psql(&g_pg, sql), 0);
  for (int i = 0; i < 500 && st.disconnects == lost; i++) {
    run_for(&t.loop, 10);
    sp_pg_pool_stats(t.pool, &st);
  }
  assert_int_equal(st.disconnects, lost + 1);
  cap refused = {0}, rb = {0};
  assert_int_equal(
      sp_pg_tx_query(tc.tx, "SELECT 1", 0, NULL, cap_cb, &refused),
      SP_ERR_DB_DOWN);
  assert_int_equal(sp_pg_tx_rollback(tc.tx, cap_cb, &rb), SP_ERR_DB_DOWN);
  run_for(&t.loop, 20);
  assert_int_equal(refused.done + rb.done, 0);
  close_pool(&t);
}

static void test_killed_during_commit_queue(void **state) {
  (void)state;
  /* Statements and the commit queued, then the backend dies while the
   * first one runs: every queued callback reports DB_DOWN, once. */
  tctx t;
  sp_pg_opts o = {.size = 2};
  open_pool(&t, &o);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t.loop, &tc.done, 1, 10000));
  cap pid = {0};
  assert_int_equal(sp_pg_tx_query(tc.tx, "SELECT pg_backend_pid()", 0, NULL,
                                  cap_cb, &pid),
                   0);
  assert_true(run_until(&t.loop, &pid.done, 1, 10000));
  cap slow = {0}, ins = {0}, cm = {0};
  const char *v[] = {"killed-while-queued"};
  assert_int_equal(
      sp_pg_tx_query(tc.tx, "SELECT pg_sleep(5)", 0, NULL, cap_cb, &slow), 0);
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v, cap_cb, &ins),
                   0);
  assert_int_equal(sp_pg_tx_commit(tc.tx, cap_cb, &cm), 0);
  run_for(&t.loop, 50);
  char sql[sizeof pid.val + 64];
  snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid.val);
  assert_int_equal(sp_fixture_pg_psql(&g_pg, sql), 0);
  assert_true(run_until(&t.loop, &cm.done, 1, 10000));
  assert_int_equal(slow.status, SP_ERR_DB_DOWN);
  assert_int_equal(ins.status, SP_ERR_DB_DOWN);
  assert_int_equal(cm.status, SP_ERR_DB_DOWN);
  assert_int_equal(slow.done + ins.done + cm.done, 3);
  assert_int_equal(count_rows(&t, "killed-while-queued"), 0);
  close_pool(&t);
}

static void test_query_timeout(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 1, .query_timeout_ms = 300};
  open_pool(&t, &o);
  wait_up(&t);
  cap slow = {0}, queued = {0};
  assert_int_equal(
      sp_pg_query(t.pool, "SELECT pg_sleep(3)", 0, NULL, cap_cb, &slow), 0);
  /* queued behind it: its deadline counts from now, so it expires too */
  assert_int_equal(sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &queued),
                   0);
  assert_true(run_until(&t.loop, &queued.done, 1, 10000));
  assert_int_equal(slow.status, SP_ERR_TIMEDOUT);
  assert_int_equal(queued.status, SP_ERR_TIMEDOUT);
  /* the pool replaced the connection and works */
  wait_up(&t);
  cap c;
  query_sync(&t, "SELECT 2", 0, NULL, &c);
  assert_int_equal(c.status, 0);
  close_pool(&t);
}

static void test_close_with_pending_work(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 1};
  open_pool(&t, &o);
  wait_up(&t);
  cap q[4];
  memset(q, 0, sizeof q);
  for (int i = 0; i < 4; i++)
    assert_int_equal(
        sp_pg_query(t.pool, "SELECT pg_sleep(2)", 0, NULL, cap_cb, &q[i]), 0);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(t.pool, txcap_cb, &tc), 0);
  run_for(&t.loop, 20);
  int closed = 0;
  assert_int_equal(sp_pg_pool_close(t.pool, closed_cb, &closed), 0);
  /* callbacks ran within close; new work is refused */
  for (int i = 0; i < 4; i++) {
    assert_int_equal(q[i].done, 1);
    assert_int_equal(q[i].status, SP_ERR_CANCELED);
  }
  assert_int_equal(tc.done, 1);
  assert_int_equal(tc.status, SP_ERR_CANCELED);
  assert_null(tc.tx);
  cap late = {0};
  assert_int_equal(sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &late),
                   SP_ERR_CLOSED);
  assert_true(run_until(&t.loop, &closed, 1, 10000));
  assert_int_equal(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&t.loop), 0);

  /* closing before the first connection is even up */
  tctx t2;
  sp_pg_opts o2 = {.size = 3};
  open_pool(&t2, &o2);
  cap early = {0};
  assert_int_equal(sp_pg_query(t2.pool, "SELECT 1", 0, NULL, cap_cb, &early),
                   0);
  close_pool(&t2);
  assert_int_equal(early.status, SP_ERR_CANCELED);

  /* an open transaction the caller still holds is freed by close (ASan
   * checks), and its connection rolls back */
  tctx t3;
  sp_pg_opts o3 = {.size = 1};
  open_pool(&t3, &o3);
  memset(&tc, 0, sizeof tc);
  assert_int_equal(sp_pg_tx_begin(t3.pool, txcap_cb, &tc), 0);
  assert_true(run_until(&t3.loop, &tc.done, 1, 10000));
  cap ins = {0};
  const char *v[] = {"open-at-close"};
  assert_int_equal(sp_pg_tx_query(tc.tx, "INSERT INTO items(name) VALUES ($1)",
                                  1, v, cap_cb, &ins),
                   0);
  assert_true(run_until(&t3.loop, &ins.done, 1, 10000));
  close_pool(&t3);
  tctx t4;
  sp_pg_opts o4 = {0};
  open_pool(&t4, &o4);
  assert_int_equal(count_rows(&t4, "open-at-close"), 0);
  close_pool(&t4);
}

/* Callbacks that issue more work and finally close the pool. */
typedef struct chain {
  tctx *t;
  int step;
  int closed;
  cap last;
} chain;

static void chain_cb(int status, const PGresult *res, void *arg) {
  chain *ch = arg;
  assert_int_equal(status, 0);
  assert_int_equal(atoi(PQgetvalue(res, 0, 0)), ch->step);
  ch->step++;
  if (ch->step < 20) {
    char v[16];
    snprintf(v, sizeof v, "%d", ch->step);
    const char *vals[] = {v};
    assert_int_equal(
        sp_pg_query(ch->t->pool, "SELECT $1::int", 1, vals, chain_cb, ch), 0);
  } else {
    /* queue one more, then close from inside the callback */
    assert_int_equal(
        sp_pg_query(ch->t->pool, "SELECT 0", 0, NULL, cap_cb, &ch->last), 0);
    assert_int_equal(sp_pg_pool_close(ch->t->pool, closed_cb, &ch->closed), 0);
  }
}

static void test_reentrant_callbacks(void **state) {
  (void)state;
  tctx t;
  sp_pg_opts o = {.size = 1};
  open_pool(&t, &o);
  chain ch = {.t = &t};
  const char *v[] = {"0"};
  assert_int_equal(sp_pg_query(t.pool, "SELECT $1::int", 1, v, chain_cb, &ch),
                   0);
  assert_true(run_until(&t.loop, &ch.closed, 1, 10000));
  assert_int_equal(ch.step, 20);
  assert_int_equal(ch.last.done, 1);
  assert_int_equal(ch.last.status, SP_ERR_CANCELED);
  assert_int_equal(uv_run(&t.loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&t.loop), 0);
}

static void test_unreachable_server_fails_fast(void **state) {
  (void)state;
  int port = sp_fixture_free_port();
  assert_true(port > 0);
  char ci[256];
  snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=x connect_timeout=5",
           port);
  tctx t;
  sp_pg_opts o = {.conninfo = ci, .size = 2};
  open_pool(&t, &o);
  cap c = {0};
  uint64_t t0 = uv_hrtime();
  expect_failure(&t, sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &c), &c,
                 SP_ERR_DB_DOWN);
  assert_true((uv_hrtime() - t0) / 1000000u < 4000);
  assert_int_equal(sp_pg_query(t.pool, "SELECT 1", 0, NULL, cap_cb, &c),
                   SP_ERR_DB_DOWN);
  close_pool(&t);
}

static void test_bad_arguments(void **state) {
  (void)state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sp_pg_pool *p = NULL;
  sp_pg_opts o = {.conninfo = g_pg.conninfo};
  assert_int_equal(sp_pg_pool_new(NULL, &o, &p), SP_ERR_INVAL);
  assert_int_equal(sp_pg_pool_new(&loop, NULL, &p), SP_ERR_INVAL);
  sp_pg_opts bad = {0};
  assert_int_equal(sp_pg_pool_new(&loop, &bad, &p), SP_ERR_INVAL);
  bad = (sp_pg_opts){.conninfo = g_pg.conninfo, .size = -1};
  assert_int_equal(sp_pg_pool_new(&loop, &bad, &p), SP_ERR_INVAL);
  bad = (sp_pg_opts){.conninfo = g_pg.conninfo,
                     .reconnect_min_ms = 500,
                     .reconnect_max_ms = 100};
  assert_int_equal(sp_pg_pool_new(&loop, &bad, &p), SP_ERR_INVAL);
  bad = (sp_pg_opts){.conninfo = "no_such_keyword=1"};
  assert_int_equal(sp_pg_pool_new(&loop, &bad, &p), SP_ERR_CONFIG);
  bad = (sp_pg_opts){.conninfo = "host='unterminated"};
  assert_int_equal(sp_pg_pool_new(&loop, &bad, &p), SP_ERR_CONFIG);
  assert_null(p);
  assert_int_equal(sp_pg_pool_close(NULL, NULL, NULL), SP_ERR_INVAL);

  assert_int_equal(sp_pg_pool_new(&loop, &o, &p), 0);
  cap c = {0};
  const char *v[] = {"1"};
  assert_int_equal(sp_pg_query(p, NULL, 0, NULL, cap_cb, &c), SP_ERR_INVAL);
  assert_int_equal(sp_pg_query(p, "SELECT 1", 0, NULL, NULL, &c), SP_ERR_INVAL);
  assert_int_equal(sp_pg_query(p, "SELECT $1", -1, v, cap_cb, &c),
                   SP_ERR_INVAL);
  assert_int_equal(sp_pg_query(p, "SELECT $1", 1, NULL, cap_cb, &c),
                   SP_ERR_INVAL);
  assert_int_equal(sp_pg_query(p, "SELECT $1", 70000, v, cap_cb, &c),
                   SP_ERR_INVAL);
  assert_int_equal(sp_pg_query(NULL, "SELECT 1", 0, NULL, cap_cb, &c),
                   SP_ERR_INVAL);
  assert_int_equal(sp_pg_tx_begin(p, NULL, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_pg_tx_query(NULL, "SELECT 1", 0, NULL, cap_cb, &c),
                   SP_ERR_INVAL);
  assert_int_equal(sp_pg_tx_commit(NULL, cap_cb, &c), SP_ERR_INVAL);
  assert_int_equal(sp_pg_tx_rollback(NULL, cap_cb, &c), SP_ERR_INVAL);

  /* a parameter count the statement does not match is a SQL error */
  assert_int_equal(sp_pg_query(p, "SELECT $1::int, $2::int", 1, v, cap_cb, &c),
                   0);
  assert_true(run_until(&loop, &c.done, 1, 10000));
  assert_int_equal(c.status, SP_ERR_DB);
  assert_string_equal(c.sqlstate, "08P01");
  assert_int_equal(c.done, 1);
  int closed = 0;
  assert_int_equal(sp_pg_pool_close(p, closed_cb, &closed), 0);
  assert_true(run_until(&loop, &closed, 1, 10000));
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_allocation_failures(void **state) {
  (void)state;
  /* Every allocation of pool creation and of a query can fail cleanly. */
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  sp_pg_opts o = {.conninfo = g_pg.conninfo, .size = 1};
  for (long k = 0; k < 3; k++) {
    sp_pg_pool *p = NULL;
    sp_alloc_fail_after(k);
    int rc = sp_pg_pool_new(&loop, &o, &p);
    sp_alloc_fail_after(-1);
    assert_int_equal(rc, SP_ERR_NOMEM);
    assert_null(p);
  }
  sp_pg_pool *p = NULL;
  assert_int_equal(sp_pg_pool_new(&loop, &o, &p), 0);
  cap c = {0};
  sp_alloc_fail_after(0);
  assert_int_equal(sp_pg_query(p, "SELECT 1", 0, NULL, cap_cb, &c),
                   SP_ERR_NOMEM);
  txcap tc = {0};
  assert_int_equal(sp_pg_tx_begin(p, txcap_cb, &tc), SP_ERR_NOMEM);
  sp_alloc_fail_after(-1);
  /* the pool still works */
  assert_int_equal(sp_pg_query(p, "SELECT 1", 0, NULL, cap_cb, &c), 0);
  assert_true(run_until(&loop, &c.done, 1, 10000));
  assert_int_equal(c.status, 0);
  assert_int_equal(tc.done, 0);
  int closed = 0;
  assert_int_equal(sp_pg_pool_close(p, closed_cb, &closed), 0);
  assert_true(run_until(&loop, &closed, 1, 10000));
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static int group_setup(void **state) {
  (void)state;
  if (sp_fixture_pg_start(&g_pg) != 0)
    return -1;
  return sp_fixture_pg_psql(&g_pg, "CREATE TABLE items(id serial PRIMARY KEY, "
                                   "name text UNIQUE NOT NULL)");
}

static int group_teardown(void **state) {
  (void)state;
  sp_fixture_pg_stop(&g_pg);
  return 0;
}

int main(void) {
  if (!getenv("SP_LOG_LEVEL"))
    sp_log_set_level(SP_LOG_ERROR); /* expected warnings are noise here */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_query_with_params),
      cmocka_unit_test(test_sql_error_reports_sqlstate),
      cmocka_unit_test(test_many_queries_through_small_pool),
      cmocka_unit_test(test_queue_overflow_is_busy),
      cmocka_unit_test(test_tx_commit_visible_rollback_invisible),
      cmocka_unit_test(test_tx_error_needs_rollback),
      cmocka_unit_test(test_db_down_then_back),
      cmocka_unit_test(test_backend_killed_mid_transaction),
      cmocka_unit_test(test_killed_during_commit_queue),
      cmocka_unit_test(test_query_timeout),
      cmocka_unit_test(test_close_with_pending_work),
      cmocka_unit_test(test_reentrant_callbacks),
      cmocka_unit_test(test_unreachable_server_fails_fast),
      cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_allocation_failures),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
