/* sp_pg: non-blocking libpq connection pool on libuv (see sp_pg.h).
 *
 * Structure: a pool owns an array of connections and a FIFO of requests
 * waiting for one.  A connection owns its PGconn, a uv_poll_t on the libpq
 * socket and a uv_timer_t (connect timeout, query timeout or reconnect
 * backoff, depending on its state).  A transaction (sp_pg_tx, heap) owns
 * its BEGIN and COMMIT/ROLLBACK requests (embedded, so ending a transaction
 * never allocates) and a FIFO of statements waiting for its pinned
 * connection.  Query requests are one heap block each: header, parameter
 * pointer array, SQL and values copied behind it.
 *
 * Re-entrancy rule: before any user callback runs, every structure is put
 * into a consistent state and the requests to complete are detached onto a
 * local list; after callbacks, code re-reads state (the callback may have
 * queued work or closed the pool).  Memory is freed only in uv_close
 * callbacks (pool, connections) or after the callback that ends it
 * (requests, transactions), so nothing is freed under a caller's feet.
 *
 * The poll handle is tied to one socket: libpq may switch sockets while
 * connecting and always does on reconnect, so the handle is closed and
 * initialised again on the new fd once its close callback has run.
 */
#include "sp_pg.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_log.h"

#define CONTAINER_OF(ptr, type, field)                                         \
  ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

#define MAX_PARAMS 65535 /* the protocol's limit */
#define MAX_SIZE 1000
#define FLAP_MS 1000 /* a connection lost sooner than this backs off */

typedef enum req_kind { REQ_QUERY, REQ_BEGIN, REQ_END } req_kind;

typedef struct pg_req pg_req;
struct pg_req {
  pg_req *next;
  req_kind kind;
  int status;         /* set when the request is put on a completion list */
  int embedded;       /* part of an sp_pg_tx: not freed on its own */
  const char *sql;
  int nparams;
  const char *const *values;
  sp_pg_cb cb;        /* REQ_QUERY and REQ_END */
  void *arg;
  sp_pg_tx *tx;       /* owning transaction, or NULL */
  uint64_t deadline;  /* uv_now() ms; 0 = none */
};

typedef struct req_list {
  pg_req *head, *tail;
  int len;
} req_list;

typedef enum conn_state {
  C_DOWN,       /* no PGconn; the timer runs the next attempt */
  C_CONNECTING, /* PQconnectPoll in progress; the timer is the deadline */
  C_READY,      /* connected; cur != NULL while a statement runs */
  C_CLOSING,    /* lost; waiting for the poll handle's close callback */
} conn_state;

typedef enum poll_state { P_NONE, P_ACTIVE, P_CLOSING } poll_state;

typedef struct pg_conn {
  sp_pg_pool *pool;
  int index;
  PGconn *pg;
  uv_poll_t poll;
  uv_timer_t timer;
  conn_state state;
  poll_state pstate;
  int poll_fd;
  int want;              /* uv events to watch once the poll handle is up */
  pg_req *cur;           /* the statement in flight */
  PGresult *res;         /* its result so far (first error wins) */
  sp_pg_tx *tx;          /* transaction pinning this connection */
  unsigned backoff_ms;   /* 0 after a success */
  uint64_t up_since;     /* uv_now() when it became ready */
  unsigned next_delay_ms;
} pg_conn;

struct sp_pg_tx {
  sp_pg_pool *pool;
  pg_conn *conn;    /* pinned connection; NULL before BEGIN or once lost */
  req_list q;       /* statements not yet sent */
  pg_req begin;
  pg_req end;
  sp_pg_tx_cb begin_cb;
  int dead;         /* the connection was lost: nothing more can run */
  int ending;       /* commit/rollback requested */
  sp_pg_tx *prev, *next; /* the pool's list of live transactions */
};

struct sp_pg_pool {
  uv_loop_t *loop;
  char *conninfo;
  int size;
  int max_waiting;
  unsigned query_timeout_ms;
  unsigned connect_timeout_ms;
  unsigned backoff_min_ms;
  unsigned backoff_max_ms;
  pg_conn *conns;
  req_list queue;
  uv_timer_t qtimer;    /* expires queued requests at their deadline */
  sp_pg_tx *txs;
  int up;
  int down;
  int closing;
  int dispatching;
  int open_handles;
  uint64_t rng;
  uint64_t connects, disconnects, queries, failures;
  void (*close_done)(void *arg);
  void *close_arg;
};

static void conn_connect(pg_conn *c);
static int conn_watch(pg_conn *c, int events);
static void pool_dispatch(sp_pg_pool *pool);
static void conn_pump(pg_conn *c);

/* ---- request lists ---------------------------------------------------------*/

static void list_push(req_list *l, pg_req *r) {
  r->next = NULL;
  if (l->tail)
    l->tail->next = r;
  else
    l->head = r;
  l->tail = r;
  l->len++;
}

static void list_push_front(req_list *l, pg_req *r) {
  r->next = l->head;
  l->head = r;
  if (!l->tail)
    l->tail = r;
  l->len++;
}

static pg_req *list_pop(req_list *l) {
  pg_req *r = l->head;
  if (r) {
    l->head = r->next;
    if (!l->head)
      l->tail = NULL;
    r->next = NULL;
    l->len--;
  }
  return r;
}

/* Move every request of `from` to the end of `to`, marked with `status`. */
static void list_move_all(req_list *to, req_list *from, int status) {
  pg_req *r;
  while ((r = list_pop(from)) != NULL) {
    r->status = status;
    list_push(to, r);
  }
}

static void tx_free(sp_pg_tx *tx) {
  sp_pg_pool *pool = tx->pool;
  if (tx->prev)
    tx->prev->next = tx->next;
  else
    pool->txs = tx->next;
  if (tx->next)
    tx->next->prev = tx->prev;
  sp_free(tx);
}

/* Deliver one request's completion and release it (and its transaction
 * when the request ends one).  `r` is invalid afterwards. */
static void req_finish(sp_pg_pool *pool, pg_req *r, int status,
                       const PGresult *res) {
  if (status != 0)
    pool->failures++;
  sp_pg_tx *tx = r->tx;
  switch (r->kind) {
  case REQ_QUERY:
    r->cb(status, res, r->arg);
    if (!r->embedded)
      sp_free(r);
    break;
  case REQ_BEGIN:
    if (status == 0) {
      tx->begin_cb(0, tx, r->arg);
    } else {
      tx->begin_cb(status, NULL, r->arg);
      tx_free(tx);
    }
    break;
  case REQ_END:
    r->cb(status, res, r->arg);
    tx_free(tx);
    break;
  }
}

static void run_list(sp_pg_pool *pool, req_list *l) {
  pg_req *r;
  while ((r = list_pop(l)) != NULL)
    req_finish(pool, r, r->status, NULL);
}

/* A query request with its SQL and values copied into the same block. */
static int req_new(const char *sql, int nparams, const char *const *values,
                   sp_pg_cb cb, void *arg, pg_req **out) {
  size_t sql_len = strlen(sql) + 1;
  size_t size = sizeof(pg_req) + (size_t)nparams * sizeof(char *) + sql_len;
  for (int i = 0; i < nparams; i++)
    if (values[i])
      size += strlen(values[i]) + 1;
  pg_req *r = sp_malloc(size);
  if (!r)
    return SP_ERR_NOMEM;
  memset(r, 0, sizeof *r);
  const char **vals = (const char **)(void *)(r + 1);
  char *p = (char *)(vals + nparams);
  memcpy(p, sql, sql_len);
  r->sql = p;
  p += sql_len;
  for (int i = 0; i < nparams; i++) {
    if (values[i]) {
      size_t n = strlen(values[i]) + 1;
      memcpy(p, values[i], n);
      vals[i] = p;
      p += n;
    } else {
      vals[i] = NULL;
    }
  }
  r->kind = REQ_QUERY;
  r->nparams = nparams;
  r->values = nparams ? vals : NULL;
  r->cb = cb;
  r->arg = arg;
  *out = r;
  return 0;
}

/* ---- helpers ---------------------------------------------------------------*/

static uint64_t rng_next(sp_pg_pool *pool) {
  /* xorshift64: jitter only needs to decorrelate reconnecting clients. */
  uint64_t x = pool->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  pool->rng = x;
  return x;
}

/* libpq messages end in "\n"; log lines should not. */
static void clean_msg(const char *in, char *out, size_t n) {
  snprintf(out, n, "%s", in && in[0] ? in : "unknown error");
  size_t len = strlen(out);
  while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == ' '))
    out[--len] = '\0';
  for (char *p = out; *p; p++)
    if (*p == '\n')
      *p = ' ';
}

static void on_notice(void *arg, const char *message) {
  pg_conn *c = arg;
  char msg[512];
  clean_msg(message, msg, sizeof msg);
  sp_log_debug("postgres notice", "{s:s, s:i}", "notice", msg, "conn",
               c->index);
}

static const char *field_or_empty(const PGresult *res, int field) {
  const char *s = res ? PQresultErrorField(res, field) : NULL;
  return s ? s : "";
}

const char *sp_pg_sqlstate(const PGresult *res) {
  return field_or_empty(res, PG_DIAG_SQLSTATE);
}

const char *sp_pg_error_message(const PGresult *res) {
  return field_or_empty(res, PG_DIAG_MESSAGE_PRIMARY);
}

/* Map a finished statement's result to a status. */
static int result_status(const PGresult *res, int conn_bad) {
  if (!res)
    return conn_bad ? SP_ERR_DB_DOWN : SP_ERR_INTERNAL;
  switch (PQresultStatus(res)) {
  case PGRES_COMMAND_OK:
  case PGRES_TUPLES_OK:
  case PGRES_EMPTY_QUERY:
    return 0; /* an answer that arrived counts even if the socket died */
  default:
    break;
  }
  /* FATAL/PANIC end the session (shutdown, pg_terminate_backend); the
   * socket may not have reported EOF yet. */
  const char *sev = field_or_empty(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (conn_bad || strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)
    return SP_ERR_DB_DOWN;
  return SP_ERR_DB;
}

static pg_conn *idle_conn(sp_pg_pool *pool) {
  for (int i = 0; i < pool->size; i++) {
    pg_conn *c = &pool->conns[i];
    if (c->state == C_READY && !c->cur && !c->tx)
      return c;
  }
  return NULL;
}

/* Keep the queue timer pointing at the oldest queued request's deadline. */
static void on_qtimer(uv_timer_t *t);

static void queue_arm(sp_pg_pool *pool) {
  if (pool->closing)
    return;
  pg_req *h = pool->queue.head;
  if (!h || !h->deadline) {
    uv_timer_stop(&pool->qtimer);
    return;
  }
  uint64_t now = uv_now(pool->loop);
  uv_timer_start(&pool->qtimer, on_qtimer,
                 h->deadline > now ? h->deadline - now : 0, 0);
}

static void on_qtimer(uv_timer_t *t) {
  sp_pg_pool *pool = CONTAINER_OF(t, sp_pg_pool, qtimer);
  req_list expired = {0};
  uint64_t now = uv_now(pool->loop);
  while (pool->queue.head && pool->queue.head->deadline &&
         pool->queue.head->deadline <= now) {
    pg_req *r = list_pop(&pool->queue);
    r->status = SP_ERR_TIMEDOUT;
    list_push(&expired, r);
  }
  queue_arm(pool);
  run_list(pool, &expired);
}

/* ---- connection lifecycle ------------------------------------------------*/

static void on_conn_timer(uv_timer_t *t);
static void on_poll_close(uv_handle_t *h);
static void conn_fail_now(pg_conn *c, int attempt_failed, int cur_status);

static void log_conn(sp_log_level lvl, const char *msg, const pg_conn *c,
                     const char *detail) {
  char d[512];
  clean_msg(detail, d, sizeof d);
  sp_log(lvl, msg, "{s:i, s:s}", "conn", c->index, "error", d);
}

/* Grow the connection's backoff (doubling from min to max) and pick the
 * next delay with equal jitter: uniform in [backoff/2, backoff], so clients
 * that failed together do not retry together. */
static void conn_backoff(pg_conn *c) {
  sp_pg_pool *pool = c->pool;
  if (c->backoff_ms == 0)
    c->backoff_ms = pool->backoff_min_ms;
  else if (c->backoff_ms < pool->backoff_max_ms / 2)
    c->backoff_ms *= 2;
  else
    c->backoff_ms = pool->backoff_max_ms;
  unsigned half = c->backoff_ms / 2;
  c->next_delay_ms =
      c->backoff_ms - half + (unsigned)(rng_next(pool) % (half + 1));
}

/* Tear the connection down after a failure.  `attempt_failed` is 1 when a
 * connection attempt failed (grow the backoff; maybe mark the pool down),
 * 0 when an open connection was lost (reconnect at once).  The statement in
 * flight completes with `cur_status`, a pinned transaction dies, and when
 * the pool is down its queue fails too: all of these are appended to
 * `done` for the caller to run once state is consistent. */
static void conn_down(pg_conn *c, int attempt_failed, int cur_status,
                      req_list *done) {
  sp_pg_pool *pool = c->pool;
  int was_up = c->state == C_READY;
  if (c->pstate == P_ACTIVE) {
    /* Stop before PQfinish closes the fd (libuv requires that order). */
    uv_poll_stop(&c->poll);
    c->pstate = P_CLOSING;
    uv_close((uv_handle_t *)&c->poll, on_poll_close);
  }
  if (c->pg) {
    PQfinish(c->pg);
    c->pg = NULL;
  }
  if (c->res) {
    PQclear(c->res);
    c->res = NULL;
  }
  uv_timer_stop(&c->timer);
  if (c->cur) {
    c->cur->status = cur_status;
    list_push(done, c->cur);
    c->cur = NULL;
  }
  if (c->tx) {
    sp_pg_tx *tx = c->tx;
    tx->dead = 1;
    tx->conn = NULL;
    c->tx = NULL;
    list_move_all(done, &tx->q, SP_ERR_DB_DOWN);
  }
  if (was_up) {
    pool->up--;
    pool->disconnects++;
    if (uv_now(pool->loop) - c->up_since >= FLAP_MS) {
      c->backoff_ms = 0;
      c->next_delay_ms = 0; /* a long-lived connection: retry at once */
    } else {
      conn_backoff(c); /* dropped right after connecting: don't spin */
    }
  } else if (attempt_failed) {
    conn_backoff(c);
    if (pool->up == 0 && !pool->down) {
      pool->down = 1;
      sp_log_warn("postgres down: failing queries fast", NULL);
    }
  }
  if (pool->down && pool->up == 0) {
    list_move_all(done, &pool->queue, SP_ERR_DB_DOWN);
    queue_arm(pool);
  }
  c->state = c->pstate == P_CLOSING ? C_CLOSING : C_DOWN;
  if (c->state == C_DOWN && !pool->closing)
    uv_timer_start(&c->timer, on_conn_timer, c->next_delay_ms, 0);
}

static void pool_maybe_finish(sp_pg_pool *pool) {
  if (!pool->closing || pool->open_handles > 0)
    return;
  while (pool->txs)
    tx_free(pool->txs);
  void (*done)(void *) = pool->close_done;
  void *arg = pool->close_arg;
  sp_free(pool->conns);
  sp_free(pool->conninfo);
  sp_free(pool);
  if (done)
    done(arg);
}

static void on_poll_close(uv_handle_t *h) {
  pg_conn *c = CONTAINER_OF(h, pg_conn, poll);
  sp_pg_pool *pool = c->pool;
  c->pstate = P_NONE;
  pool->open_handles--;
  if (pool->closing) {
    pool_maybe_finish(pool);
    return;
  }
  if (c->state == C_CLOSING) {
    c->state = C_DOWN;
    uv_timer_start(&c->timer, on_conn_timer, c->next_delay_ms, 0);
  } else if (c->state == C_CONNECTING && c->pg) {
    /* libpq moved to another socket */
    if (conn_watch(c, c->want) != 0)
      conn_fail_now(c, 1, SP_ERR_DB_DOWN);
  }
}

static void on_timer_close(uv_handle_t *h) {
  pg_conn *c = CONTAINER_OF(h, pg_conn, timer);
  c->pool->open_handles--;
  pool_maybe_finish(c->pool);
}

static void on_qtimer_close(uv_handle_t *h) {
  sp_pg_pool *pool = CONTAINER_OF(h, sp_pg_pool, qtimer);
  pool->open_handles--;
  pool_maybe_finish(pool);
}

static void conn_fail_now(pg_conn *c, int attempt_failed, int cur_status) {
  req_list done = {0};
  conn_down(c, attempt_failed, cur_status, &done);
  run_list(c->pool, &done);
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watch the libpq socket for `events` (re-creating the poll handle when
 * libpq changed sockets).  0, or SP_ERR_IO with state untouched: the caller
 * tears the connection down. */
static int conn_watch(pg_conn *c, int events) {
  sp_pg_pool *pool = c->pool;
  int fd = PQsocket(c->pg);
  c->want = events;
  if (c->pstate == P_CLOSING)
    return 0; /* on_poll_close continues */
  if (c->pstate == P_ACTIVE && c->poll_fd != fd) {
    uv_poll_stop(&c->poll);
    c->pstate = P_CLOSING;
    uv_close((uv_handle_t *)&c->poll, on_poll_close);
    return 0;
  }
  int rc = 0;
  if (c->pstate == P_NONE) {
    rc = fd < 0 ? UV_EBADF : uv_poll_init(pool->loop, &c->poll, fd);
    if (rc == 0) {
      pool->open_handles++;
      c->pstate = P_ACTIVE;
      c->poll_fd = fd;
    }
  }
  if (rc == 0)
    rc = uv_poll_start(&c->poll, events, on_poll);
  if (rc != 0) {
    log_conn(SP_LOG_WARN, "postgres poll failed", c, uv_strerror(rc));
    return SP_ERR_IO;
  }
  return 0;
}

static void conn_connected(pg_conn *c) {
  sp_pg_pool *pool = c->pool;
  if (PQsetnonblocking(c->pg, 1) != 0) {
    log_conn(SP_LOG_WARN, "postgres setnonblocking failed", c,
             PQerrorMessage(c->pg));
    conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    return;
  }
  uv_timer_stop(&c->timer);
  c->state = C_READY;
  c->up_since = uv_now(pool->loop);
  pool->up++;
  pool->connects++;
  if (pool->down) {
    pool->down = 0;
    sp_log_info("postgres reachable again", "{s:i}", "conn", c->index);
    /* The server is back: retry the others now instead of after their
     * backoff. */
    for (int i = 0; i < pool->size; i++) {
      pg_conn *o = &pool->conns[i];
      if (o->state == C_DOWN) {
        o->backoff_ms = 0;
        uv_timer_start(&o->timer, on_conn_timer, 0, 0);
      }
    }
  }
  if (conn_watch(c, UV_READABLE) != 0) {
    conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    return;
  }
  conn_pump(c);
}

static void conn_connect_step(pg_conn *c) {
  /* PQconnectPoll may close the socket and open another (same number, or
   * not): libuv must not be watching the old one when that happens. */
  if (c->pstate == P_ACTIVE)
    uv_poll_stop(&c->poll);
  switch (PQconnectPoll(c->pg)) {
  case PGRES_POLLING_OK:
    conn_connected(c);
    break;
  case PGRES_POLLING_READING:
    if (conn_watch(c, UV_READABLE) != 0)
      conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    break;
  case PGRES_POLLING_WRITING:
    if (conn_watch(c, UV_WRITABLE) != 0)
      conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    break;
  default: /* PGRES_POLLING_FAILED */
    log_conn(c->pool->down ? SP_LOG_DEBUG : SP_LOG_WARN,
             "postgres connect failed", c, PQerrorMessage(c->pg));
    conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    break;
  }
}

static void conn_connect(pg_conn *c) {
  sp_pg_pool *pool = c->pool;
  c->pg = PQconnectStart(pool->conninfo);
  if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
    log_conn(pool->down ? SP_LOG_DEBUG : SP_LOG_WARN, "postgres connect failed",
             c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
    conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    return;
  }
  PQsetNoticeProcessor(c->pg, on_notice, c);
  c->state = C_CONNECTING;
  uv_timer_start(&c->timer, on_conn_timer, pool->connect_timeout_ms, 0);
  /* libpq's documented first step: wait for writability. */
  if (conn_watch(c, UV_WRITABLE) != 0)
    conn_fail_now(c, 1, SP_ERR_DB_DOWN);
}

static void on_conn_timer(uv_timer_t *t) {
  pg_conn *c = CONTAINER_OF(t, pg_conn, timer);
  switch (c->state) {
  case C_DOWN:
    conn_connect(c);
    break;
  case C_CONNECTING:
    log_conn(c->pool->down ? SP_LOG_DEBUG : SP_LOG_WARN,
             "postgres connect failed", c, "connect timeout");
    conn_fail_now(c, 1, SP_ERR_DB_DOWN);
    break;
  case C_READY:
    if (c->cur) {
      /* No non-blocking cancel in libpq 15: closing the connection makes
       * the server abort the statement (and roll back its transaction). */
      log_conn(SP_LOG_WARN, "postgres query timed out; reconnecting", c,
               c->cur->sql);
      conn_fail_now(c, 0, SP_ERR_TIMEDOUT);
    }
    break;
  case C_CLOSING:
    break;
  }
}

/* ---- running statements ----------------------------------------------------*/

/* Flush libpq's output; watch for writability while some remains.
 * 0, or SP_ERR_DB_DOWN when the connection failed (state untouched:
 * the caller tears down). */
static int conn_flush(pg_conn *c) {
  int rc = PQflush(c->pg);
  if (rc < 0 ||
      conn_watch(c, rc == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE) != 0)
    return SP_ERR_DB_DOWN;
  return 0;
}

/* Send `r` on the ready, idle connection `c`.  Returns 0 (r is in flight)
 * or SP_ERR_DB_DOWN: the connection is torn down and `r` was NOT executed
 * (without the final Sync message the server runs nothing) and is still the
 * caller's. */
static int conn_send(pg_conn *c, pg_req *r) {
  sp_pg_pool *pool = c->pool;
  c->cur = r;
  int ok = PQsendQueryParams(c->pg, r->sql, r->nparams, NULL, r->values, NULL,
                             NULL, 0);
  if (ok && conn_flush(c) == 0) {
    pool->queries++;
    if (r->deadline) {
      uint64_t now = uv_now(pool->loop);
      uv_timer_start(&c->timer, on_conn_timer,
                     r->deadline > now ? r->deadline - now : 0, 0);
    }
    return 0;
  }
  log_conn(SP_LOG_WARN, "postgres send failed", c, PQerrorMessage(c->pg));
  c->cur = NULL;
  conn_fail_now(c, 0, SP_ERR_DB_DOWN);
  return SP_ERR_DB_DOWN;
}

static void tx_pump(sp_pg_tx *tx) {
  pg_conn *c = tx->conn;
  if (!c || c->cur || c->state != C_READY || !tx->q.head)
    return;
  sp_pg_pool *pool = tx->pool;
  pg_req *r = list_pop(&tx->q);
  r->deadline =
      pool->query_timeout_ms ? uv_now(pool->loop) + pool->query_timeout_ms : 0;
  if (conn_send(c, r) != 0)
    req_finish(pool, r, SP_ERR_DB_DOWN, NULL);
}

static void conn_pump(pg_conn *c) {
  if (c->pool->closing || c->state != C_READY || c->cur)
    return;
  if (c->tx)
    tx_pump(c->tx);
  else
    pool_dispatch(c->pool);
}

static void pool_dispatch(sp_pg_pool *pool) {
  if (pool->dispatching)
    return; /* the outer loop picks up what a callback queued */
  pool->dispatching = 1;
  req_list expired = {0};
  while (!pool->closing && pool->queue.head) {
    pg_conn *c = idle_conn(pool);
    if (!c)
      break;
    pg_req *r = list_pop(&pool->queue);
    if (r->deadline && r->deadline <= uv_now(pool->loop)) {
      r->status = SP_ERR_TIMEDOUT; /* no point sending it now */
      list_push(&expired, r);
      continue;
    }
    if (conn_send(c, r) != 0)
      list_push_front(&pool->queue, r); /* not executed: try another */
  }
  pool->dispatching = 0;
  queue_arm(pool);
  run_list(pool, &expired);
}

/* The statement in flight on `c` has all its results. */
static void conn_complete(pg_conn *c) {
  sp_pg_pool *pool = c->pool;
  pg_req *r = c->cur;
  PGresult *res = c->res;
  c->cur = NULL;
  c->res = NULL;
  uv_timer_stop(&c->timer);
  int bad = PQstatus(c->pg) == CONNECTION_BAD;
  int status = result_status(res, bad);
  if (bad && r->kind == REQ_BEGIN)
    status = SP_ERR_DB_DOWN; /* a transaction without its connection */
  req_list done = {0};
  sp_pg_tx *tx = r->tx;
  if (r->kind == REQ_END) {
    if (status == 0 && strcmp(r->sql, "COMMIT") == 0 &&
        strcmp(PQcmdStatus(res), "ROLLBACK") == 0)
      status = SP_ERR_DB; /* COMMIT of an aborted transaction */
    if (c->tx == tx)
      c->tx = NULL;
    tx->conn = NULL;
  }
  if (bad || status == SP_ERR_DB_DOWN)
    conn_down(c, 0, SP_ERR_DB_DOWN, &done);
  else if (r->kind == REQ_BEGIN && status == 0) {
    tx->conn = c;
    c->tx = tx;
  }
  req_finish(pool, r, status, res);
  PQclear(res);
  run_list(pool, &done);
  conn_pump(c);
}

static void conn_read(pg_conn *c) {
  if (!PQconsumeInput(c->pg)) {
    log_conn(c->cur ? SP_LOG_WARN : SP_LOG_INFO, "postgres connection lost", c,
             PQerrorMessage(c->pg));
    conn_fail_now(c, 0, SP_ERR_DB_DOWN);
    return;
  }
  PGnotify *n;
  while ((n = PQnotifies(c->pg)) != NULL)
    PQfreemem(n);
  if (!c->cur) {
    if (PQstatus(c->pg) == CONNECTION_BAD)
      conn_fail_now(c, 0, SP_ERR_DB_DOWN);
    return;
  }
  while (!PQisBusy(c->pg)) {
    PGresult *r = PQgetResult(c->pg);
    if (!r) {
      conn_complete(c);
      return;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      PQclear(r);
      log_conn(SP_LOG_WARN, "postgres COPY is not supported", c, c->cur->sql);
      conn_fail_now(c, 0, SP_ERR_PROTO);
      return;
    }
    int is_err = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
    if (!c->res ||
        (is_err && PQresultStatus(c->res) != PGRES_FATAL_ERROR &&
         PQresultStatus(c->res) != PGRES_BAD_RESPONSE)) {
      PQclear(c->res);
      c->res = r;
    } else {
      PQclear(r);
    }
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  pg_conn *c = CONTAINER_OF(h, pg_conn, poll);
  if (c->state == C_CONNECTING) {
    conn_connect_step(c);
    return;
  }
  if (c->state != C_READY)
    return;
  /* On a poll error let libpq find out what is wrong with the socket. */
  if (status < 0)
    events = UV_READABLE | UV_WRITABLE;
  if (events & UV_WRITABLE) {
    if (conn_flush(c) != 0) {
      log_conn(SP_LOG_WARN, "postgres connection lost", c,
               PQerrorMessage(c->pg));
      conn_fail_now(c, 0, SP_ERR_DB_DOWN);
      return;
    }
  }
  if (events & UV_READABLE)
    conn_read(c);
}

/* ---- public API ------------------------------------------------------------*/

static unsigned conninfo_timeout_ms(const char *conninfo, int *bad) {
  char *err = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
  if (!opts) {
    char msg[512];
    clean_msg(err ? err : "out of memory", msg, sizeof msg);
    sp_log_error("invalid postgres conninfo", "{s:s}", "error", msg);
    PQfreemem(err);
    *bad = 1;
    return 0;
  }
  unsigned ms = 0;
  for (PQconninfoOption *o = opts; o->keyword; o++)
    if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && o->val[0]) {
      long s = strtol(o->val, NULL, 10);
      if (s > 0 && s < 86400)
        ms = (unsigned)(s < 2 ? 2 : s) * 1000; /* libpq's own minimum */
    }
  PQconninfoFree(opts);
  return ms;
}

int sp_pg_pool_new(uv_loop_t *loop, const sp_pg_opts *opts, sp_pg_pool **out) {
  if (!loop || !opts || !opts->conninfo || !out || opts->size < 0 ||
      opts->size > MAX_SIZE || opts->max_waiting < 0)
    return SP_ERR_INVAL;
  unsigned bmin = opts->reconnect_min_ms ? opts->reconnect_min_ms : 100;
  unsigned bmax = opts->reconnect_max_ms ? opts->reconnect_max_ms : 10000;
  if (bmin > bmax)
    return SP_ERR_INVAL;
  int bad = 0;
  unsigned cto = conninfo_timeout_ms(opts->conninfo, &bad);
  if (bad)
    return SP_ERR_CONFIG;
  int rc = SP_ERR_NOMEM;
  sp_pg_pool *pool = sp_calloc(1, sizeof *pool);
  if (!pool)
    goto fail_pool;
  pool->conninfo = sp_strdup(opts->conninfo);
  if (!pool->conninfo)
    goto fail_conninfo;
  pool->size = opts->size ? opts->size : 4;
  pool->conns = sp_calloc((size_t)pool->size, sizeof *pool->conns);
  if (!pool->conns)
    goto fail_conns;
  pool->loop = loop;
  pool->max_waiting = opts->max_waiting ? opts->max_waiting : 1024;
  pool->query_timeout_ms = opts->query_timeout_ms;
  pool->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms
                             : cto                    ? cto
                                                      : 5000;
  pool->backoff_min_ms = bmin;
  pool->backoff_max_ms = bmax;
  pool->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)pool) | 1;
  /* uv_timer_init cannot fail on Unix (it only links the handle), so no
   * handle needs unwinding after this point. */
  uv_timer_init(loop, &pool->qtimer);
  pool->open_handles++;
  for (int i = 0; i < pool->size; i++) {
    pg_conn *c = &pool->conns[i];
    c->pool = pool;
    c->index = i;
    c->state = C_DOWN;
    uv_timer_init(loop, &c->timer);
    pool->open_handles++;
    /* Connect from the loop, not inside this call. */
    uv_timer_start(&c->timer, on_conn_timer, 0, 0);
  }
  *out = pool;
  return 0;

fail_conns:
  sp_free(pool->conninfo);
fail_conninfo:
  sp_free(pool);
fail_pool:
  return rc;
}

int sp_pg_pool_close(sp_pg_pool *pool, void (*done)(void *arg), void *arg) {
  if (!pool)
    return SP_ERR_INVAL;
  if (pool->closing)
    return SP_ERR_CLOSED;
  pool->closing = 1;
  pool->close_done = done;
  pool->close_arg = arg;
  req_list canceled = {0};
  list_move_all(&canceled, &pool->queue, SP_ERR_CANCELED);
  uv_close((uv_handle_t *)&pool->qtimer, on_qtimer_close);
  for (int i = 0; i < pool->size; i++) {
    pg_conn *c = &pool->conns[i];
    if (c->cur) {
      c->cur->status = SP_ERR_CANCELED;
      list_push(&canceled, c->cur);
      c->cur = NULL;
    }
    if (c->res) {
      PQclear(c->res);
      c->res = NULL;
    }
    if (c->tx) {
      c->tx->dead = 1;
      c->tx->conn = NULL;
      list_move_all(&canceled, &c->tx->q, SP_ERR_CANCELED);
      c->tx = NULL;
    }
    if (c->pstate == P_ACTIVE) {
      uv_poll_stop(&c->poll);
      c->pstate = P_CLOSING;
      uv_close((uv_handle_t *)&c->poll, on_poll_close);
    }
    if (c->pg) {
      PQfinish(c->pg);
      c->pg = NULL;
    }
    if (c->state == C_READY)
      pool->up--;
    c->state = C_DOWN;
    uv_close((uv_handle_t *)&c->timer, on_timer_close);
  }
  run_list(pool, &canceled);
  return 0;
}

int sp_pg_query(sp_pg_pool *pool, const char *sql, int nparams,
                const char *const *values, sp_pg_cb cb, void *arg) {
  if (!pool || !sql || !cb || nparams < 0 || nparams > MAX_PARAMS ||
      (nparams > 0 && !values))
    return SP_ERR_INVAL;
  if (pool->closing)
    return SP_ERR_CLOSED;
  if (pool->down)
    return SP_ERR_DB_DOWN;
  if (!idle_conn(pool) && pool->queue.len >= pool->max_waiting)
    return SP_ERR_BUSY;
  pg_req *r;
  int rc = req_new(sql, nparams, values, cb, arg, &r);
  if (rc != 0)
    return rc;
  if (pool->query_timeout_ms)
    r->deadline = uv_now(pool->loop) + pool->query_timeout_ms;
  list_push(&pool->queue, r);
  pool_dispatch(pool);
  return 0;
}

int sp_pg_tx_begin(sp_pg_pool *pool, sp_pg_tx_cb cb, void *arg) {
  if (!pool || !cb)
    return SP_ERR_INVAL;
  if (pool->closing)
    return SP_ERR_CLOSED;
  if (pool->down)
    return SP_ERR_DB_DOWN;
  if (!idle_conn(pool) && pool->queue.len >= pool->max_waiting)
    return SP_ERR_BUSY;
  sp_pg_tx *tx = sp_calloc(1, sizeof *tx);
  if (!tx)
    return SP_ERR_NOMEM;
  tx->pool = pool;
  tx->begin_cb = cb;
  tx->begin.kind = REQ_BEGIN;
  tx->begin.embedded = 1;
  tx->begin.sql = "BEGIN";
  tx->begin.arg = arg;
  tx->begin.tx = tx;
  if (pool->query_timeout_ms)
    tx->begin.deadline = uv_now(pool->loop) + pool->query_timeout_ms;
  tx->next = pool->txs;
  if (pool->txs)
    pool->txs->prev = tx;
  pool->txs = tx;
  list_push(&pool->queue, &tx->begin);
  pool_dispatch(pool);
  return 0;
}

/* Queue `r` on the transaction and send it if the connection is idle.
 * On failure `r` is not consumed. */
static int tx_submit(sp_pg_tx *tx, pg_req *r) {
  pg_conn *c = tx->conn;
  list_push(&tx->q, r);
  if (c->cur || tx->q.head != r)
    return 0;
  sp_pg_pool *pool = tx->pool;
  list_pop(&tx->q);
  r->deadline =
      pool->query_timeout_ms ? uv_now(pool->loop) + pool->query_timeout_ms : 0;
  return conn_send(c, r);
}

int sp_pg_tx_query(sp_pg_tx *tx, const char *sql, int nparams,
                   const char *const *values, sp_pg_cb cb, void *arg) {
  if (!tx || !sql || !cb || nparams < 0 || nparams > MAX_PARAMS ||
      (nparams > 0 && !values) || tx->ending)
    return SP_ERR_INVAL;
  if (tx->pool->closing)
    return SP_ERR_CLOSED;
  if (tx->dead || !tx->conn)
    return SP_ERR_DB_DOWN;
  if (tx->q.len >= tx->pool->max_waiting)
    return SP_ERR_BUSY;
  pg_req *r;
  int rc = req_new(sql, nparams, values, cb, arg, &r);
  if (rc != 0)
    return rc;
  r->tx = tx;
  rc = tx_submit(tx, r);
  if (rc != 0)
    sp_free(r);
  return rc;
}

static int tx_end(sp_pg_tx *tx, const char *sql, sp_pg_cb cb, void *arg) {
  if (!tx || !cb || tx->ending)
    return SP_ERR_INVAL;
  if (tx->pool->closing) {
    tx_free(tx);
    return SP_ERR_CLOSED;
  }
  if (tx->dead || !tx->conn) {
    tx_free(tx);
    return SP_ERR_DB_DOWN;
  }
  tx->ending = 1;
  tx->end.kind = REQ_END;
  tx->end.embedded = 1;
  tx->end.sql = sql;
  tx->end.cb = cb;
  tx->end.arg = arg;
  tx->end.tx = tx;
  int rc = tx_submit(tx, &tx->end);
  if (rc != 0)
    tx_free(tx); /* the connection died: the server rolled it back */
  return rc;
}

int sp_pg_tx_commit(sp_pg_tx *tx, sp_pg_cb cb, void *arg) {
  return tx_end(tx, "COMMIT", cb, arg);
}

int sp_pg_tx_rollback(sp_pg_tx *tx, sp_pg_cb cb, void *arg) {
  return tx_end(tx, "ROLLBACK", cb, arg);
}

void sp_pg_pool_stats(const sp_pg_pool *pool, sp_pg_stats *out) {
  memset(out, 0, sizeof *out);
  out->size = pool->size;
  out->up = pool->up;
  out->waiting = pool->queue.len;
  out->down = pool->down;
  out->connects = pool->connects;
  out->disconnects = pool->disconnects;
  out->queries = pool->queries;
  out->failures = pool->failures;
  for (int i = 0; i < pool->size; i++) {
    const pg_conn *c = &pool->conns[i];
    if (c->state == C_READY && (c->cur || c->tx))
      out->busy++;
  }
}

int sp_pg_pool_is_up(const sp_pg_pool *pool) { return pool->up > 0; }
