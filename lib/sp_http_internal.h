/* sp_http_internal: the structs and functions shared by sp_http.c (sockets,
 * timers, server lifecycle) and sp_http_conn.c (the sans-I/O protocol
 * engine: parsing, dispatch, responses).  Not for use outside lib/sp_http*.
 *
 * Ownership: the server owns its connections (list `conns`) and a free list
 * of request objects.  A connection owns its parsing request and its queue
 * of parsed requests; the queue head is the one a handler is working on.
 * When a connection closes, a request in a handler is detached (conn =
 * NULL) and from then on owned by the handler until it answers; it never
 * points back to the server, so it may outlive it.
 */
#ifndef SP_HTTP_INTERNAL_H
#define SP_HTTP_INTERNAL_H

#include "sp_http.h"
#include "sp_list.h"

#include <http_parser.h>
#include <stdint.h>
#include <time.h>

#define SP_CONTAINER_OF(ptr, type, field)                                      \
  ((type *)((char *)(ptr)-offsetof(type, field)))

/* Intrusive doubly-linked list; an unlinked node has prev == NULL. */
typedef sp_list sp_http_link;

enum sp_http_req_state {
  REQ_PARSING,   /* being received */
  REQ_QUEUED,    /* complete, waiting for the requests before it */
  REQ_ACTIVE,    /* in its handler */
  REQ_STREAMING, /* head sent, body being streamed */
};

typedef struct sp_http_hdr {
  uint32_t name_off, name_len, val_off, val_len; /* offsets into req->head */
} sp_http_hdr;

#define SP_HTTP_POOL_INLINE 512

struct sp_http_req {
  sp_http_conn *conn; /* NULL once the client is gone */
  sp_http_req *next;  /* connection queue or server free list */
  enum sp_http_req_state state;
  const sp_http_route *route;
  uint8_t method;
  uint8_t http_minor;
  uint8_t last_cb; /* which parser data callback ran last (CB_*) */
  unsigned keep_alive : 1;
  unsigned chunked_out : 1; /* streaming with chunked encoding */
  unsigned no_body : 1;     /* HEAD, or a status without body */
  int status;
  uint64_t start_ns;

  sp_buf head; /* target, header names and values, each NUL-terminated;
                  frozen once the headers are complete */
  uint32_t url_off, url_len;
  sp_iov target, path, query; /* into head, set when headers complete */
  unsigned nhdrs;
  sp_http_hdr hdrs[SP_HTTP_MAX_HEADERS];
  sp_buf body;

  unsigned nparams;
  struct {
    sp_iov name;       /* into the route pattern */
    const char *value; /* decoded, in pool */
  } params[SP_HTTP_MAX_PARAMS];

  sp_http_abort_cb abort_cb;
  void *abort_arg;
  sp_pool pool;
  max_align_t pool_inline[SP_HTTP_POOL_INLINE / sizeof(max_align_t)];
};

enum sp_http_deadline {
  DL_NONE,
  DL_IDLE,   /* keep-alive idle: close */
  DL_HEADER, /* headers incomplete: 408 */
  DL_BODY,   /* body stalled: 408 */
  DL_OUTPUT, /* client not reading: close */
  DL_LINGER, /* draining after an error: close */
};

struct sp_http_conn {
  sp_http_server *srv;
  uv_tcp_t tcp; /* unused in memory mode */
  uv_timer_t timer;
  uv_write_t wreq;
  uv_shutdown_t sreq;
  sp_http_link link;  /* srv->conns */
  sp_http_link dirty; /* srv->dirty: has output to flush */
  http_parser parser;

  sp_http_req *parsing;      /* request being received */
  sp_http_req *qhead, *qtail; /* complete requests, answered in order */
  unsigned nqueued;           /* in the queue, including an active head */
  size_t queued_bytes;        /* held by queued (not active) requests */

  sp_buf in;   /* unparsed input kept while parsing is paused */
  size_t in_off; /* bytes of `in` already parsed */
  sp_buf out;  /* output not yet handed to the socket */
  sp_buf wbuf; /* output in flight with uv_write */
  size_t head_raw; /* raw bytes of the current request head so far */

  uint64_t head_start_ms; /* loop time of the current request's first byte */
  uint64_t activity_ms;   /* loop time of the last read or write progress */
  uint64_t linger_ms;     /* when lingering started */
  uint64_t deadline_ms;   /* 0 = none */
  uint64_t timer_due_ms;  /* when the armed timer fires; 0 = not armed */
  enum sp_http_deadline deadline_kind;

  int cb_status;           /* error raised inside a parser callback */
  const char *cb_msg;
  int error_status;        /* error response owed after the queue */
  const char *error_msg;
  const char *error_method;
  uint64_t error_start_ns;

  unsigned in_body : 1;     /* parser between headers and message end */
  unsigned msg_done : 1;    /* a message completed in the last execute */
  unsigned stop_parsing : 1; /* no more requests: discard input */
  unsigned feed_paused : 1; /* pipeline full: input kept in `in` */
  unsigned reading : 1;
  unsigned writing : 1;
  unsigned close_after_write : 1; /* close once output is written */
  unsigned shutdown_sent : 1;
  unsigned lingering : 1;
  unsigned eof : 1;
  unsigned closed : 1;
  unsigned running : 1; /* inside conn_run */
  unsigned rerun : 1;
  unsigned mem : 1; /* no socket */
  unsigned nclose;  /* uv handles still closing */
};

struct sp_http_server {
  uv_loop_t *loop; /* NULL: memory-only server */
  sp_http_config cfg;
  sp_http_route_table *routes;
  void *app;

  uv_tcp_t listener;
  uv_prepare_t flusher; /* flushes dirty connections before the loop sleeps */
  uv_timer_t shutdown_timer;
  uv_signal_t sigterm, sigint;
  unsigned listening : 1;
  unsigned listener_open : 1;
  unsigned signals : 1;
  unsigned shutting_down : 1;
  unsigned handles_closing : 1;
  unsigned accept_pending : 1; /* a connection waits in uv_accept */
  unsigned nhandles; /* server handles not yet closed */
  int port;
  sp_http_shutdown_cb done;
  void *done_arg;
  sp_http_shutdown_cb sig_done;
  void *sig_arg;

  sp_http_link conns, dirty;
  size_t nconns;
  sp_http_req *free_reqs;
  size_t nfree;

  char *rbuf; /* shared read buffer */
  size_t rbuf_size;

  char date[48]; /* "Date: ...\r\n" */
  size_t date_len;
  time_t date_sec;
  uint64_t date_loop_ms; /* loop time of the last check */
};

/* ---- sp_http_conn.c: the engine ---------------------------------------- */

/* Sets up the engine state of a zeroed connection. */
void sp_http_conn_engine_init(sp_http_conn *c, sp_http_server *srv);
/* Frees the engine's buffers (after the connection closed). */
void sp_http_conn_engine_release(sp_http_conn *c);
/* Parses up to len bytes; returns how many were taken (the rest must be
 * kept and fed again once c->feed_paused clears). */
size_t sp_http_conn_feed(sp_http_conn *c, const char *data, size_t len);
/* Dispatches queued requests, resumes paused parsing, writes an owed error;
 * then sp_http_conn_io_update. Re-entrant calls only mark a rerun. */
void sp_http_conn_run(sp_http_conn *c);
/* A protocol error: drop the request being parsed, answer `status` with
 * {"message": msg} after the queued requests, then close. */
void sp_http_conn_fail(sp_http_conn *c, int status, const char *msg);
/* Detaches or frees every request (abort callbacks run, hook gets 499). */
void sp_http_conn_drop_requests(sp_http_conn *c);
/* Drops requests not yet in a handler (shutdown, EOF). */
void sp_http_conn_drop_queued(sp_http_conn *c);
/* Output bytes not yet written. */
size_t sp_http_conn_queued_output(const sp_http_conn *c);
/* Frees every pooled request of the server. */
void sp_http_req_pool_drain(sp_http_server *srv);

/* ---- sp_http.c: I/O glue called by the engine ----------------------------- */

/* After the engine changed state: schedule a flush, start/stop reading,
 * recompute the connection's deadline. */
void sp_http_conn_io_update(sp_http_conn *c);
/* The one teardown: closes the connection now (requests detached). */
void sp_http_conn_close(sp_http_conn *c);
/* Loop time in ms (0 without a loop). */
uint64_t sp_http_now_ms(const sp_http_server *srv);
/* The cached "Date: ...\r\n" line. */
sp_iov sp_http_date_line(sp_http_server *srv);

#endif
