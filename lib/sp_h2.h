/* sp_h2: HTTP/2 over mutual TLS 1.3 on libuv (nghttp2 + sp_tls), client and
 * server, for the replication transport: one long-lived connection per
 * peer region, requests (protobuf delta batches) POSTed on concurrent
 * streams, responses (acknowledgements) read back.
 *
 * Layering: bytes read from a socket go through sp_tls (memory BIOs) into
 * nghttp2_session_mem_recv; nghttp2_session_mem_send output goes through
 * sp_tls into the connection's output buffer, which is written with
 * uv_try_write / uv_write once per loop iteration (uv_prepare, before the
 * loop sleeps).  The glue only moves bytes; a server connection can also
 * run without a socket (sp_h2_conn_mem_*) for tests and fuzzing.
 *
 * Server: accepts TLS connections with ALPN "h2" whose client certificate
 * chains to the cluster CA (and, if the sp_tls_ctx has an allowed set,
 * names an allowed region); calls on_request once per complete request
 * with method, path, headers, the whole body and the authenticated peer
 * name.  The handler answers exactly once, at once or later, with
 * sp_h2_respond or sp_h2_stream_reset.  Limits (sp_h2_config): a body over
 * max_body_bytes gets 413 (at the HEADERS when content-length says so,
 * else as soon as the data passes it) and the stream is reset while the
 * connection carries on; header lists over max_header_list_bytes or with
 * more than SP_H2_MAX_HEADERS fields get 431; streams beyond
 * max_concurrent_streams (advertised in SETTINGS) are refused by nghttp2.
 * A malformed frame or flood ends the connection with GOAWAY and a log
 * line; other connections are unaffected.
 *
 * Client: sp_h2_client_new starts connecting to an IP literal and port;
 * on_state reports SP_H2_CONNECTED once the TLS handshake verified the
 * server and its SETTINGS arrived (proof that it accepted our certificate
 * too), and SP_H2_DISCONNECTED exactly once when the connection is over,
 * with the reason.  Requests may be issued at once (they wait for the
 * handshake); each gets exactly one response callback: a response, or an
 * error.  Reconnecting is the caller's job: close the client and make a
 * new one.
 *
 * Liveness: each side sends PING every ping_interval_ms and drops the
 * connection (SP_ERR_TIMEDOUT) when the ACK has not come ping_timeout_ms
 * later; the handshake (TLS + first SETTINGS) must finish within
 * handshake_timeout_ms.
 *
 * Closing: graceful.  sp_h2_server_close stops accepting and sends GOAWAY
 * on every connection: requests already received are still answered,
 * later ones are refused (the client sees SP_ERR_AGAIN), and what is left
 * after shutdown_timeout_ms is dropped.  sp_h2_client_close lets requests
 * in flight finish (up to shutdown_timeout_ms), then sends GOAWAY and TLS
 * close_notify.  Every connection ends with a half-close and a short
 * linger, so our last frames and alerts reach the peer.
 *
 * Errors (in callbacks and logs): SP_ERR_ACCES a certificate was refused
 * (either side; the reason says which and why), SP_ERR_PROTO a TLS or
 * HTTP/2 protocol failure, SP_ERR_TIMEDOUT handshake or PING timeout,
 * SP_ERR_CONNRESET the peer went away or reset the stream, SP_ERR_CLOSED
 * the peer closed gracefully, SP_ERR_AGAIN a request refused unprocessed
 * (GOAWAY or REFUSED_STREAM: safe to retry), SP_ERR_TOOBIG a response over
 * the limits, SP_ERR_CANCELED dropped by our own close, -errno from
 * connect.
 *
 * sp_h2_server_new (with a loop) and sp_h2_client_new set SIGPIPE to
 * SIG_IGN for the whole process, so a write to a peer that went away
 * returns EPIPE instead of killing it.
 *
 * Memory: every buffer filled from the network has a cap from the config.
 * nghttp2 allocates through sp_alloc.  Everything runs on the loop
 * thread; nothing here is thread-safe.  Functions return 0 or a negative
 * sp_err code (sp_err.h).
 */
#ifndef SP_H2_H
#define SP_H2_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "sp_buf.h"
#include "sp_tls.h"

#define SP_H2_MAX_HEADERS 64 /* regular (non-pseudo) header fields */

typedef struct sp_h2_server sp_h2_server;
typedef struct sp_h2_client sp_h2_client;
typedef struct sp_h2_stream sp_h2_stream; /* a request on the server */
typedef struct sp_h2_conn sp_h2_conn;

typedef struct sp_h2_config {
  size_t max_body_bytes;           /* request (server) or response (client)
                                      body; 8 MiB */
  uint32_t max_concurrent_streams; /* advertised in SETTINGS; 100 */
  uint32_t max_header_list_bytes;  /* names + values + 32 each; 16 KiB */
  uint32_t stream_window_bytes;    /* initial flow-control window; 1 MiB */
  uint64_t handshake_timeout_ms;   /* connect/accept -> SETTINGS; 10 s */
  uint64_t ping_interval_ms;       /* 0 = no PINGs; 10 s */
  uint64_t ping_timeout_ms;        /* 5 s */
  uint64_t shutdown_timeout_ms;    /* graceful close deadline; 10 s */
  uint64_t linger_ms;              /* after our half-close; 1 s */
  size_t max_connections;          /* server; 1000 */
} sp_h2_config;

/* One header field; both strings NUL-terminated. */
typedef struct sp_h2_header {
  const char *name;
  const char *value;
} sp_h2_header;

/* Fills `cfg` with the defaults above. */
void sp_h2_config_init(sp_h2_config *cfg);

/* ---- server ---------------------------------------------------------------- */

/* Called once per complete request; `st` is the handler's until it answers
 * it (see sp_h2_respond).  Runs on the loop, inside the connection's input
 * processing: answering at once is fine. */
typedef void (*sp_h2_request_cb)(sp_h2_stream *st, void *arg);
/* Called with the server once a close completed; the server is freed right
 * after it returns. */
typedef void (*sp_h2_server_done_cb)(sp_h2_server *srv, void *arg);
/* Called when the peer reset the stream or the connection ended before the
 * handler answered.  `st` is still valid and must still be answered (which
 * then returns SP_ERR_CLOSED and frees it). */
typedef void (*sp_h2_abort_cb)(sp_h2_stream *st, void *arg);

/* Creates a server on `loop` using `tls` (a server context with ALPN "h2";
 * not copied: it must outlive the server) and `cfg` (copied; NULL =
 * defaults); `on_request(st, arg)` gets every request.  loop == NULL makes
 * a socketless server for sp_h2_conn_mem_* (tests, fuzzing).
 * Returns 0 and *out; SP_ERR_INVAL (client context, no callback);
 * SP_ERR_CONFIG (a limit of 0 or out of range); SP_ERR_NOMEM.  A server
 * with a loop ends with sp_h2_server_close, one without with
 * sp_h2_server_free. */
int sp_h2_server_new(uv_loop_t *loop, sp_tls_ctx *tls, const sp_h2_config *cfg,
                     sp_h2_request_cb on_request, void *arg,
                     sp_h2_server **out);

/* Binds `addr` (an IPv4 or IPv6 literal) and `port` (0 = any free port)
 * and starts accepting.  Returns 0; SP_ERR_INVAL (bad address, no loop);
 * SP_ERR_BUSY (already listening or closing); a -errno from bind/listen. */
int sp_h2_server_listen(sp_h2_server *srv, const char *addr, int port);

/* The bound port, or 0. */
int sp_h2_server_port(const sp_h2_server *srv);

/* Open connections (including those closing). */
size_t sp_h2_server_connections(const sp_h2_server *srv);

/* Graceful close (see the top): when every connection and handle is
 * closed, calls done(srv, arg) (may be NULL) from the loop and frees the
 * server.  Streams still held by handlers are detached and stay valid.
 * Returns 0; SP_ERR_BUSY when already closing (done not called again);
 * SP_ERR_INVAL without a loop. */
int sp_h2_server_close(sp_h2_server *srv, sp_h2_server_done_cb done,
                       void *arg);

/* Frees a server made without a loop (its memory connections must have
 * been freed).  NULL is a no-op. */
void sp_h2_server_free(sp_h2_server *srv);

/* ---- server streams ------------------------------------------------------ */

/* Every string and view below lives as long as `st`. */
const char *sp_h2_stream_method(const sp_h2_stream *st); /* "POST" */
const char *sp_h2_stream_path(const sp_h2_stream *st);   /* "/v1/deltas" */
const char *sp_h2_stream_authority(const sp_h2_stream *st); /* or "" */
/* The authenticated name of the client (its region). */
const char *sp_h2_stream_peer(const sp_h2_stream *st);
/* The first header called `name` (lowercase, as HTTP/2 sends them) or
 * NULL. */
const char *sp_h2_stream_header(const sp_h2_stream *st, const char *name);
/* The regular header fields in arrival order. */
const sp_h2_header *sp_h2_stream_headers(const sp_h2_stream *st, size_t *n);
/* The whole request body (empty when none); NUL-terminated. */
sp_iov sp_h2_stream_body(const sp_h2_stream *st);
/* Registers the abort callback (replacing any earlier one); NULL clears. */
void sp_h2_stream_on_abort(sp_h2_stream *st, sp_h2_abort_cb cb, void *arg);

/* Answers the request and consumes `st`: whatever it returns, `st` must
 * not be used again.  status 200..599; `hdrs[0..nhdrs)` extra fields with
 * lowercase names (pseudo-headers, content-length and connection-specific
 * fields are SP_ERR_INVAL); body (copied, may be NULL when len 0).
 * Returns 0; SP_ERR_CLOSED when the client or connection is gone;
 * SP_ERR_INVAL (bad status or header: the stream is reset instead);
 * SP_ERR_NOMEM (the stream is reset). */
int sp_h2_respond(sp_h2_stream *st, int status, const sp_h2_header *hdrs,
                  size_t nhdrs, const void *body, size_t len);

/* Refuses the request with RST_STREAM REFUSED_STREAM (the client sees
 * SP_ERR_AGAIN: not processed) and consumes `st`.  0 or SP_ERR_CLOSED. */
int sp_h2_stream_reset(sp_h2_stream *st);

/* ---- client ---------------------------------------------------------------- */

typedef enum sp_h2_state {
  SP_H2_CONNECTED = 1,
  SP_H2_DISCONNECTED = 2,
} sp_h2_state;

/* `err` is 0 with CONNECTED, and for DISCONNECTED the reason: 0 when our
 * own sp_h2_client_close ended it, else an error code from the top;
 * `reason` is a message (static or valid during the call). */
typedef void (*sp_h2_state_cb)(sp_h2_client *cli, sp_h2_state state, int err,
                               const char *reason, void *arg);

typedef struct sp_h2_response {
  int status;
  const sp_h2_header *hdrs; /* regular fields, arrival order */
  size_t nhdrs;
  sp_iov body; /* NUL-terminated */
} sp_h2_response;

/* Exactly once per accepted request: err 0 and the response (valid during
 * the call only), or an error code and res == NULL. */
typedef void (*sp_h2_response_cb)(sp_h2_client *cli, int err,
                                  const sp_h2_response *res, void *arg);
typedef void (*sp_h2_client_done_cb)(sp_h2_client *cli, void *arg);

/* Creates a client and starts connecting to `host` (an IPv4/IPv6 literal:
 * no DNS) and `port` with `tls` (a client context; must outlive the
 * client), expecting the server's certificate to name `peer_name` (the
 * region; copied, also sent as :authority).  on_state(cli, ...) reports
 * the connection (never from inside this call).
 * Returns 0 and *out; SP_ERR_INVAL (bad host or port, server context, no
 * callback, no peer name); SP_ERR_CONFIG (bad cfg); SP_ERR_NOMEM.  Connect
 * failures, even immediate ones, come through on_state.  Every client ends
 * with sp_h2_client_close (also after DISCONNECTED: it owns handles). */
int sp_h2_client_new(uv_loop_t *loop, sp_tls_ctx *tls, const sp_h2_config *cfg,
                     const char *host, int port, const char *peer_name,
                     sp_h2_state_cb on_state, void *arg, sp_h2_client **out);

/* Sends a request: `method` and `path` (non-empty, copied), extra header
 * fields as in sp_h2_respond, body copied (content-length added).
 * on_response(cli, err, res, cb_arg) is called exactly once, never from
 * inside this call.  Until CONNECTED the client does not know the server's
 * stream limit (nghttp2 assumes 100): requests past the real limit sent
 * that early are refused with SP_ERR_AGAIN; after CONNECTED extra
 * requests wait for a free stream.  Returns 0; SP_ERR_INVAL (bad argument or header);
 * SP_ERR_CLOSED (closing, or the connection is over: reconnect);
 * SP_ERR_NOMEM. */
int sp_h2_client_request(sp_h2_client *cli, const char *method,
                         const char *path, const sp_h2_header *hdrs,
                         size_t nhdrs, const void *body, size_t len,
                         sp_h2_response_cb on_response, void *cb_arg);

typedef struct sp_h2_client_info {
  int connected;         /* CONNECTED reported and not yet DISCONNECTED */
  size_t in_flight;      /* requests whose callback has not run */
  uint64_t pings_acked;  /* PING round trips completed */
  uint64_t last_rtt_us;  /* of the last one */
  size_t output_bytes;   /* ciphertext not yet written to the socket */
} sp_h2_client_info;

void sp_h2_client_info_get(const sp_h2_client *cli, sp_h2_client_info *info);

/* Graceful close (see the top).  on_state reports DISCONNECTED (err 0) if
 * it had not yet; requests that cannot finish get SP_ERR_CANCELED.  Once
 * every handle is closed calls done(cli, arg) (may be NULL) from the loop
 * and frees the client.  Returns 0 or SP_ERR_BUSY (already closing). */
int sp_h2_client_close(sp_h2_client *cli, sp_h2_client_done_cb done,
                       void *arg);

/* ---- socketless server connections (tests, fuzzing) ---------------------
 * A connection of a server made with loop == NULL: the peer's TLS bytes in
 * with _feed, our TLS bytes out with _output/_consume.  Requests reach
 * on_request inside _feed.  No timers run. */

/* 0 and *out; SP_ERR_INVAL when the server has a loop; SP_ERR_NOMEM. */
int sp_h2_conn_mem_new(sp_h2_server *srv, sp_h2_conn **out);
/* 0; SP_ERR_CLOSED once the connection has ended (nothing taken). */
int sp_h2_conn_mem_feed(sp_h2_conn *c, const void *data, size_t len);
/* Output not yet consumed; valid until the next call on `c`. */
sp_iov sp_h2_conn_mem_output(const sp_h2_conn *c);
void sp_h2_conn_mem_consume(sp_h2_conn *c, size_t n);
/* 0 while open; once ended 1, with the error and reason when non-NULL. */
int sp_h2_conn_mem_ended(const sp_h2_conn *c, int *err, const char **reason);
/* Ends (as a peer reset) if needed and frees.  NULL is a no-op. */
void sp_h2_conn_mem_free(sp_h2_conn *c);

#endif
