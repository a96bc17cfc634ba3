/* sp_http: the HTTP/1.1 server core shared by every process (libuv +
 * http-parser).
 *
 * A server owns a listening socket, its connections and their requests; it
 * routes each request through a const table {method, pattern, handler}
 * (sp_http_route.h) and calls the handler on the loop thread.  The handler
 * answers exactly once, at once or later (after a database query), with one
 * of the sp_http_respond* functions or a stream (sp_http_stream_*).
 *
 * Request lifetime: a request handle is valid from the handler call until
 * the handler answers it.  If the client goes away first, the handle stays
 * valid (the connection no longer points to it); the optional abort callback
 * tells the handler, and its eventual answer is dropped: the respond/stream
 * functions then return SP_ERR_CLOSED and free the request.  Everything a
 * request accessor returns lives as long as the request.
 *
 * Protocol: keep-alive; pipelining (requests are parsed ahead, at most
 * max_pipeline of them or max_pipeline_bytes of queued data, and answered
 * strictly in order, one handler at a time per connection); HTTP/1.0 closes
 * after the response unless it asked for keep-alive; a request without Host
 * is accepted.  Limits (sp_http_config) give JSON errors {"message": "..."}:
 * request line + headers over max_header_bytes -> 431 (a URL alone over it
 * -> 414), more than SP_HTTP_MAX_HEADERS headers -> 431, a body over
 * max_body_bytes -> 413 (at once for Content-Length, as soon as a chunked
 * body passes it), malformed -> 400, headers not complete header_timeout_ms
 * after the request's first byte -> 408, HTTP/2+ version -> 505.  The
 * connection closes after every protocol error (write the error, shut down
 * the write side, drain input briefly, close).  An idle keep-alive
 * connection is closed after idle_timeout_ms.  Beyond max_connections a new
 * connection is accepted and closed at once.  A client that closes or
 * resets at any point (gdnsd's health checker reads 13 bytes and resets) is
 * a normal event: sp_http_server_new sets SIGPIPE to SIG_IGN for the
 * process, so writes to a dead socket return EPIPE instead of killing it.
 *
 * Output: responses are built whole (status line, cached Date, headers,
 * body) into the connection's output buffer; every connection with output
 * is flushed once per loop iteration (uv_prepare, before the loop sleeps)
 * with uv_try_write, and only the remainder goes through uv_write.  Reads
 * land in one server-wide buffer (the loop is single-threaded and libuv
 * calls read_cb right after alloc_cb), so an idle connection holds no input
 * buffer; bytes are copied into the request as they are parsed.
 *
 * Streaming (server-sent events): sp_http_stream_begin writes the head with
 * no Content-Length; the body is chunked for HTTP/1.1 clients and
 * close-delimited for HTTP/1.0 ones (also for text/event-stream: chunked is
 * what browsers' EventSource and proxies expect).  sp_http_stream_queued
 * reports bytes not yet written so the caller can drop slow clients; the
 * abort callback reports a client that went away.
 *
 * Everything runs on the loop thread; nothing here is thread-safe.
 * Functions return 0 or a negative sp_err code (sp_err.h).
 */
#ifndef SP_HTTP_H
#define SP_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "sp_buf.h"
#include "sp_http_route.h"
#include "sp_pool.h"

#define SP_HTTP_MAX_HEADERS 100

typedef struct sp_http_server sp_http_server;
typedef struct sp_http_conn sp_http_conn;

/* Called once per finished request: `method` ("GET"; NULL when the request
 * line never parsed), `route` (the matched pattern or NULL), the status
 * sent (499 when the client went away before the answer), and the time from
 * the request's first byte to its answer.  Strings are static or live in
 * the route table. */
typedef void (*sp_http_done_hook)(void *arg, const char *method,
                                  const char *route, int status,
                                  uint64_t duration_ns);

typedef struct sp_http_config {
  size_t max_header_bytes;    /* request line + headers; 16 KiB */
  size_t max_body_bytes;      /* 1 MiB */
  uint64_t header_timeout_ms; /* first byte -> headers complete; 10 s */
  uint64_t idle_timeout_ms;   /* keep-alive idle, stalled body/output; 60 s */
  uint64_t linger_timeout_ms; /* draining input before close; 2 s */
  uint64_t shutdown_timeout_ms; /* graceful shutdown deadline; 10 s */
  size_t max_connections;       /* 10000 */
  unsigned max_pipeline;        /* parsed-ahead requests per conn; 16 */
  size_t max_pipeline_bytes;    /* bytes held by them; 1 MiB */
  size_t out_high_water;  /* no new request starts above this; 256 KiB */
  size_t max_output_bytes; /* hard cap of queued output per conn; 64 MiB */
  int backlog;             /* listen(2) backlog; 511 */
  sp_http_done_hook on_done; /* optional per-request hook (metrics) */
  void *on_done_arg;
} sp_http_config;

/* One response header; both strings are copied into the output at once. */
typedef struct sp_http_header {
  const char *name;
  const char *value;
} sp_http_header;

/* Called with the server after shutdown completed (see shutdown). */
typedef void (*sp_http_shutdown_cb)(sp_http_server *srv, void *arg);

/* Called when the client goes away before `req` was answered (or while it
 * streams).  `req` is still valid and must still be answered. */
typedef void (*sp_http_abort_cb)(sp_http_req *req, void *arg);

/* Fills `cfg` with the defaults above. */
void sp_http_config_init(sp_http_config *cfg);

/* ---- server ------------------------------------------------------------ */

/* Creates a server on `loop` with `cfg` (copied; NULL = defaults) and the
 * route table `routes[0..nroutes)` (not copied: it must outlive the server;
 * normally a static const array).  `app` is passed to every handler.
 * Sets SIGPIPE to SIG_IGN for the whole process.  With loop == NULL the
 * server has no sockets and is only usable through the sp_http_conn_mem_*
 * functions below (tests, fuzzing).
 * Returns 0 and *out; SP_ERR_CONFIG for a bad route or limit; SP_ERR_NOMEM.
 * A server with a loop must be shut down (sp_http_server_shutdown) and
 * freed from or after its done callback; one without can be freed at once. */
int sp_http_server_new(uv_loop_t *loop, const sp_http_config *cfg,
                       const sp_http_route *routes, size_t nroutes, void *app,
                       sp_http_server **out);

/* Binds `addr` (an IPv4 or IPv6 literal: "127.0.0.1", "::1", "0.0.0.0")
 * and `port` (0 = any free port, see sp_http_server_port) with SO_REUSEADDR
 * and SO_REUSEPORT, so several processes can share the port, and starts
 * accepting.  An IPv6 address listens on IPv6 only (IPV6_V6ONLY), so "::"
 * and "0.0.0.0" can be served by two servers on one port.  One listener
 * per server.  Returns 0; SP_ERR_INVAL for a bad
 * address or a server without loop; SP_ERR_BUSY when already listening or
 * shutting down; a -errno from socket/bind/listen (e.g. -EADDRINUSE). */
int sp_http_server_listen(sp_http_server *srv, const char *addr, int port);

/* The bound port, or 0 when not listening. */
int sp_http_server_port(const sp_http_server *srv);

/* Open connections (including those closing). */
size_t sp_http_server_connections(const sp_http_server *srv);

/* Graceful shutdown: stops accepting, closes idle connections and those
 * with only a partial request at once, lets requests already in a handler
 * finish (their responses carry "Connection: close"; requests pipelined
 * behind them are dropped unanswered), and closes what is left after
 * cfg.shutdown_timeout_ms (their abort callbacks run).  When every
 * connection and server handle is closed, calls done(srv, arg) once, from
 * the loop; free the server from there or later.  Returns 0, or
 * SP_ERR_BUSY when a shutdown is already under way (done not called
 * again), SP_ERR_INVAL without a loop. */
int sp_http_server_shutdown(sp_http_server *srv, sp_http_shutdown_cb done,
                            void *arg);

/* Hooks SIGTERM and SIGINT (uv_signal, not keeping the loop alive) to
 * sp_http_server_shutdown(srv, done, arg).  For the process's main to opt
 * in.  Returns 0, SP_ERR_BUSY when already hooked, or a libuv error. */
int sp_http_server_handle_signals(sp_http_server *srv,
                                  sp_http_shutdown_cb done, void *arg);

/* Frees the server's memory.  Only for a server without loop, or once its
 * shutdown done callback ran (it may be called inside it).  NULL is a
 * no-op.  Requests still held by handlers are detached and stay valid. */
void sp_http_server_free(sp_http_server *srv);

/* ---- request ------------------------------------------------------------ */

const char *sp_http_req_method(const sp_http_req *req); /* "GET" */
/* The raw request target, its path, and its query string (without '?',
 * empty when none); not decoded.  For an absolute-form target
 * ("http://h/p?q") path and query are its parts. */
sp_iov sp_http_req_target(const sp_http_req *req);
sp_iov sp_http_req_path(const sp_http_req *req);
sp_iov sp_http_req_query(const sp_http_req *req);
/* The matched route pattern, or NULL. */
const char *sp_http_req_route(const sp_http_req *req);

/* The first header called `name` (case-insensitive), NUL-terminated, or
 * NULL. */
const char *sp_http_req_header(const sp_http_req *req, const char *name);
size_t sp_http_req_header_count(const sp_http_req *req);
/* Header i (0-based, request order).  0 or SP_ERR_RANGE. */
int sp_http_req_header_at(const sp_http_req *req, size_t i, const char **name,
                          const char **value);

/* The percent-decoded value of path parameter `name` ("page_id" for
 * "{page_id}", "rest" for "*rest"), or NULL when the route has none. */
const char *sp_http_req_param(const sp_http_req *req, const char *name);

/* The first query parameter `name`, '+' and %XX decoded, in *value.
 * Returns 0; SP_ERR_NOENT when absent; SP_ERR_PARSE when its encoding is
 * bad (a stray '%' or %00); SP_ERR_NOMEM.  A parameter without '=' has the
 * value "". */
int sp_http_req_query_param(sp_http_req *req, const char *name,
                            const char **value);

/* The request body (empty when none); NUL-terminated. */
sp_iov sp_http_req_body(const sp_http_req *req);

/* Parses the body as JSON into *out (the caller owns it: json_decref).
 * Returns 0; SP_ERR_PARSE with a message in err (e.g. "malformed JSON at
 * line 1, column 9: ..." or "request body is empty"); err may be NULL. */
int sp_http_req_json(const sp_http_req *req, json_t **out, char *err,
                     size_t errsz);

/* Memory that lives as long as the request. */
sp_pool *sp_http_req_pool(sp_http_req *req);

/* Registers the abort callback (replacing any earlier one); NULL clears. */
void sp_http_req_on_abort(sp_http_req *req, sp_http_abort_cb cb, void *arg);

/* ---- answering ------------------------------------------------------------
 * Every function here consumes the request: whatever it returns, `req` must
 * not be used again (except the stream functions until stream_end).  On an
 * error other than SP_ERR_CLOSED the client gets a 500 JSON error instead
 * (or, if even that cannot be queued, the connection closes).
 * The server writes Date, Content-Length / Transfer-Encoding and Connection
 * itself; passing one of them in `hdrs` is SP_ERR_INVAL.  Header names and
 * values must not contain CR, LF or NUL (SP_ERR_INVAL).  HEAD requests get
 * the headers (with the body's Content-Length) and no body; 1xx/204/304
 * never carry a body.
 * Returns 0; SP_ERR_CLOSED (client gone; request freed); SP_ERR_INVAL;
 * SP_ERR_TOOBIG (over max_output_bytes); SP_ERR_NOMEM. */
int sp_http_respond(sp_http_req *req, int status, const sp_http_header *hdrs,
                    size_t nhdrs, const void *body, size_t len);

/* Content-Type: application/json. */
int sp_http_respond_json(sp_http_req *req, int status, const char *json,
                         size_t len);

/* {"message": "<message>", "field": "<field>"} (field only when non-NULL),
 * JSON-escaped, Content-Type: application/json. */
int sp_http_respond_error(sp_http_req *req, int status, const char *message,
                          const char *field);

/* Starts a streamed response: writes the head now, the body follows with
 * stream_write and ends with stream_end (which consumes the request).
 * Returns as sp_http_respond (on error the request is consumed). */
int sp_http_stream_begin(sp_http_req *req, int status,
                         const sp_http_header *hdrs, size_t nhdrs);
/* Queues `len` bytes of body (len 0 is a no-op).  0; SP_ERR_CLOSED when the
 * client is gone (the request stays valid until stream_end);
 * SP_ERR_TOOBIG when the output cap would be passed (nothing queued);
 * SP_ERR_INVAL when `req` is not streaming; SP_ERR_NOMEM. */
int sp_http_stream_write(sp_http_req *req, const void *data, size_t len);
/* Bytes of this connection's output not yet written to the socket (0 when
 * the client is gone). */
size_t sp_http_stream_queued(const sp_http_req *req);
/* Drops the client (a slow reader): closes the connection at once,
 * discarding its queued output, and consumes the request (its abort
 * callback is not called).  Works on any request a handler holds.
 * 0, or SP_ERR_CLOSED when the client was already gone. */
int sp_http_stream_abort(sp_http_req *req);
/* Ends the stream and consumes the request.  0, SP_ERR_CLOSED, SP_ERR_INVAL
 * (not streaming; the request is not consumed then). */
int sp_http_stream_end(sp_http_req *req);

/* ---- sans-I/O connections (tests, fuzzing) --------------------------------
 * A connection of a server made with loop == NULL: bytes in with _feed,
 * response bytes out with _output/_consume.  Handlers run inside _feed (or
 * inside a later answer, for async handlers) exactly as on a socket. */

typedef struct sp_http_conn_info {
  size_t pending;   /* requests parsed and not yet answered */
  size_t buffered;  /* input bytes held unparsed (pipeline full) */
  size_t output;    /* output bytes not yet consumed */
  int closing;      /* no more requests will be read */
  int closed;       /* the connection is finished */
} sp_http_conn_info;

/* 0 and *out; SP_ERR_INVAL when the server has a loop; SP_ERR_NOMEM. */
int sp_http_conn_mem_new(sp_http_server *srv, sp_http_conn **out);
/* Feeds bytes from the client.  0; SP_ERR_AGAIN when the input would pass
 * the connection's buffer while it is paused (nothing taken); SP_ERR_CLOSED
 * once the connection is finished. */
int sp_http_conn_mem_feed(sp_http_conn *c, const void *data, size_t len);
/* Output not yet consumed; valid until the next call on `c`. */
sp_iov sp_http_conn_mem_output(const sp_http_conn *c);
/* Marks n output bytes as written (the client read them). */
void sp_http_conn_mem_consume(sp_http_conn *c, size_t n);
/* The client closed: as a socket EOF/reset (aborts a pending handler). */
void sp_http_conn_mem_close(sp_http_conn *c);
void sp_http_conn_mem_info(const sp_http_conn *c, sp_http_conn_info *info);
/* Closes (if needed) and frees.  NULL is a no-op. */
void sp_http_conn_mem_free(sp_http_conn *c);

#endif
