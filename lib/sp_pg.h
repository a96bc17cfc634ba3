/* sp_pg: a small PostgreSQL connection pool for a libuv event loop.
 *
 * libpq runs in non-blocking mode, driven by one uv_poll_t and one
 * uv_timer_t per connection: nothing here blocks the loop (PQconnectStart/
 * PQconnectPoll to connect, PQsendQueryParams + PQconsumeInput/PQgetResult
 * to query, PQflush when the socket is writable).  One caveat: libpq resolves
 * host names synchronously inside PQconnectStart, so give `host` as a numeric
 * address (or `hostaddr`) in loop processes.
 *
 * Model
 * - `size` connections, each running one statement at a time.  Queries are
 *   parameterised only (text parameters, $1..$n; a NULL value is SQL NULL),
 *   so values never become SQL text.  A query that finds no idle connection
 *   waits in a bounded FIFO (`max_waiting`); beyond it the call fails at once
 *   with SP_ERR_BUSY.
 * - A transaction pins one connection from BEGIN until COMMIT/ROLLBACK.  Its
 *   statements run in the order they were issued (they may be issued without
 *   waiting for the previous one's callback).
 * - Connections that drop (server restart, pg_terminate_backend, network) are
 *   reopened with exponential backoff and jitter.  While no connection
 *   is up and the last connection attempt failed, the pool is "down": new
 *   calls return SP_ERR_DB_DOWN immediately and queued queries fail with it,
 *   so an API can answer 503 at once.  When the server is back the pool
 *   reconnects by itself.
 * - A query timeout (optional) counts from submission, queue time included.
 *   A statement that overruns has its connection closed (PostgreSQL aborts
 *   it and rolls back its transaction) and the connection is reopened.
 *
 * Callbacks
 * Every call that returns 0 calls its callback exactly once, later, from the
 * loop; a call that returns an error never calls it.  Callbacks may call any
 * sp_pg function, including sp_pg_pool_close.  Status values:
 *   0                success; `res` is the result (PGRES_TUPLES_OK/COMMAND_OK)
 *   SP_ERR_DB        the server rejected the statement; `res` is the error
 *                    result: sp_pg_sqlstate(res), sp_pg_error_message(res)
 *   SP_ERR_DB_DOWN   no connection, or it was lost before the answer came;
 *                    `res` is the server's error when it sent one, else NULL.
 *                    For a statement outside a transaction the outcome is
 *                    unknown if the connection died after sending it.
 *   SP_ERR_TIMEDOUT  query_timeout_ms passed; `res` NULL
 *   SP_ERR_CANCELED  the pool was closed first; `res` NULL
 *   SP_ERR_PROTO     the statement started COPY, which is not supported
 * `res` is borrowed: valid only during the callback (PQclear is ours).
 *
 * Memory: the pool copies the conninfo and every query's SQL and parameter
 * values at the call, so the caller's strings need not outlive the call.
 * All pool memory is freed after sp_pg_pool_close's `done` callback runs.
 * The loop thread is the only thread that may call these functions.
 */
#ifndef SP_PG_H
#define SP_PG_H

#include <libpq-fe.h>
#include <stdint.h>
#include <uv.h>

typedef struct sp_pg_pool sp_pg_pool;
typedef struct sp_pg_tx sp_pg_tx;

/* Pool settings.  Zero means "default" for every field. */
typedef struct sp_pg_opts {
  const char *conninfo;          /* libpq keyword/value string; required */
  int size;                      /* connections; default 4, max 1000 */
  int max_waiting;               /* queued queries; default 1024 */
  unsigned query_timeout_ms;     /* 0 = no timeout */
  unsigned connect_timeout_ms;   /* default: conninfo's connect_timeout,
                                    else 5000 */
  unsigned reconnect_min_ms;     /* first retry delay; default 100 */
  unsigned reconnect_max_ms;     /* backoff cap; default 10000 */
} sp_pg_opts;

typedef struct sp_pg_stats {
  int size;              /* connections configured */
  int up;                /* connections open and ready */
  int busy;              /* running a statement or pinned by a transaction */
  int waiting;           /* queries queued for a connection */
  int down;              /* 1 while the pool fails fast with SP_ERR_DB_DOWN */
  uint64_t connects;     /* successful connection attempts, ever */
  uint64_t disconnects;  /* open connections lost, ever */
  uint64_t queries;      /* statements sent to the server, ever */
  uint64_t failures;     /* callbacks with a non-zero status, ever */
} sp_pg_stats;

/* A query's or statement's completion; see "Callbacks" above. */
typedef void (*sp_pg_cb)(int status, const PGresult *res, void *arg);
/* BEGIN's completion: on 0, `tx` is open and owned by the caller until it
 * is passed to sp_pg_tx_commit/sp_pg_tx_rollback; on error `tx` is NULL. */
typedef void (*sp_pg_tx_cb)(int status, sp_pg_tx *tx, void *arg);

/* Create a pool on `loop` and start connecting (asynchronously; this call
 * does no I/O).  The conninfo is checked with PQconninfoParse.
 * Returns 0 and *out, SP_ERR_INVAL (NULL argument or out-of-range field),
 * SP_ERR_CONFIG (unparsable conninfo), SP_ERR_NOMEM. */
int sp_pg_pool_new(uv_loop_t *loop, const sp_pg_opts *opts, sp_pg_pool **out);

/* Start closing: every queued or running query and transaction statement
 * fails with SP_ERR_CANCELED (a running one may still have been executed),
 * open transactions roll back server-side, connections and handles close.
 * Those callbacks run inside this call, before it returns.
 * `done(arg)` (may be NULL) runs from the loop once all memory is freed;
 * until then other calls return SP_ERR_CLOSED.  Transactions the caller
 * still holds are freed too.  0, SP_ERR_INVAL, SP_ERR_CLOSED (twice). */
int sp_pg_pool_close(sp_pg_pool *pool, void (*done)(void *arg), void *arg);

/* Run `sql` with `nparams` text parameters (values[i] NULL = SQL NULL).
 * Returns 0 (cb will be called), SP_ERR_INVAL (NULL pool/sql/cb, nparams
 * outside 0..65535, values NULL with nparams > 0), SP_ERR_CLOSED,
 * SP_ERR_DB_DOWN (pool down), SP_ERR_BUSY (queue full), SP_ERR_NOMEM. */
int sp_pg_query(sp_pg_pool *pool, const char *sql, int nparams,
                const char *const *values, sp_pg_cb cb, void *arg);

/* Take a connection and run BEGIN on it; cb receives the transaction.
 * Returns 0, SP_ERR_INVAL, SP_ERR_CLOSED, SP_ERR_DB_DOWN, SP_ERR_BUSY,
 * SP_ERR_NOMEM (same meaning as sp_pg_query). */
int sp_pg_tx_begin(sp_pg_pool *pool, sp_pg_tx_cb cb, void *arg);

/* Queue a statement in `tx`.  A statement that fails leaves the transaction
 * aborted (later statements fail with SP_ERR_DB, SQLSTATE 25P02) until it is
 * rolled back.  Returns 0, SP_ERR_INVAL (bad argument, or commit/rollback
 * already called), SP_ERR_DB_DOWN (the connection was lost: the transaction
 * is gone; call sp_pg_tx_rollback to free it), SP_ERR_BUSY (more than
 * max_waiting statements queued), SP_ERR_CLOSED, SP_ERR_NOMEM. */
int sp_pg_tx_query(sp_pg_tx *tx, const char *sql, int nparams,
                   const char *const *values, sp_pg_cb cb, void *arg);

/* End `tx` after its queued statements and give its connection back.
 * Commit reports SP_ERR_DB when the transaction had failed (PostgreSQL
 * rolled it back instead) and SP_ERR_DB_DOWN when the connection died
 * (nothing of it was committed).  `tx` is consumed in every case except
 * SP_ERR_INVAL: on 0 it is freed after cb returns; on SP_ERR_DB_DOWN or
 * SP_ERR_CLOSED it is freed before the call returns and cb is not called.
 * Returns 0, SP_ERR_INVAL (NULL tx/cb, or already ending), SP_ERR_DB_DOWN,
 * SP_ERR_CLOSED. */
int sp_pg_tx_commit(sp_pg_tx *tx, sp_pg_cb cb, void *arg);
int sp_pg_tx_rollback(sp_pg_tx *tx, sp_pg_cb cb, void *arg);

/* Current counters (for /metrics and /ready). */
void sp_pg_pool_stats(const sp_pg_pool *pool, sp_pg_stats *out);
/* 1 when at least one connection is open and ready, else 0. */
int sp_pg_pool_is_up(const sp_pg_pool *pool);

/* The SQLSTATE ("23505") / primary message of an error result, or "" when
 * `res` is NULL or not an error.  Strings live as long as `res`. */
const char *sp_pg_sqlstate(const PGresult *res);
const char *sp_pg_error_message(const PGresult *res);

#endif
