/* sp_h2: HTTP/2 over mutual TLS on libuv -- the connection engine (TLS ->
 * nghttp2 -> callbacks, and back), the socket glue, the server and the
 * client (see sp_h2.h for behaviour).
 *
 * Ownership: a server owns its connections (list srv->conns); a client
 * embeds its one connection.  A connection owns its sp_tls session, its
 * nghttp2 session, its buffers and its stream objects (list c->streams):
 * server streams (sp_h2_stream) while they are received and after they
 * are answered, client requests (h2_req) until their callback ran.  A
 * server stream in a handler belongs to the handler; when the connection
 * or the stream goes first it is detached (conn = NULL) and freed by its
 * answer.  nghttp2 holds only stream_user_data pointers to these objects;
 * once a connection has ended (c->ended) no nghttp2 call is made on it but
 * nghttp2_session_del, and every nghttp2 callback returns at once, so those
 * pointers are never used after the objects are freed.
 *
 * Teardown: conn_end() is the one place a connection ends (error or
 * graceful): it fails or detaches every stream, reports the client state,
 * queues TLS close_notify, then lingers: flush, shutdown(2) the write side,
 * read and discard until EOF or linger_ms, close the handles.  Memory is
 * freed only in the last close callback.  conn_end may run inside an
 * nghttp2 callback or a user callback; it never frees the connection.
 */
#include "sp_h2.h"
#include "sp_list.h"

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_log.h"

#include <arpa/inet.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONTAINER_OF(ptr, type, field)                                         \
  ((type *)((char *)(ptr)-offsetof(type, field)))

#define READ_BUF_SIZE (64 * 1024)
#define TLS_CHUNK (16 * 1024)          /* plaintext per TLS write: a record */
#define OUT_HIGH_WATER (256 * 1024)    /* stop pulling from nghttp2 above */
#define OUT_MAX ((size_t)64 << 20)     /* hard cap of queued ciphertext */
#define CONN_WINDOW (16 * 1024 * 1024) /* connection-level receive window */
#define REASON_LEN 256

/* ---- small pieces ---------------------------------------------------------- */

typedef sp_list h2_link;

/* Header fields of one message: "name\0value\0" pairs in one capped buffer,
 * indexed once complete. */
typedef struct hfields {
  sp_buf buf;
  uint32_t off[SP_H2_MAX_HEADERS];
  unsigned n;
  size_t bytes; /* RFC 9113 accounting: name + value + 32 per field */
  int over;     /* a limit was passed: the rest was dropped */
  sp_h2_header view[SP_H2_MAX_HEADERS];
} hfields;

static void hf_init(hfields *h, size_t max_bytes) {
  sp_buf_init(&h->buf, max_bytes + 1024);
  h->n = 0;
  h->bytes = 0;
  h->over = 0;
}

static void hf_reset(hfields *h) {
  sp_buf_reset(&h->buf);
  h->n = 0;
  h->bytes = 0;
  h->over = 0;
}

/* Counts a field against `max`; 1 while within it. */
static int hf_account(hfields *h, size_t nlen, size_t vlen, size_t max) {
  h->bytes += nlen + vlen + 32;
  if (h->bytes > max)
    h->over = 1;
  return !h->over;
}

/* Stores a string; its offset in *off.  0, or SP_ERR_NOMEM / SP_ERR_TOOBIG. */
static int hf_put(hfields *h, const uint8_t *s, size_t len, uint32_t *off) {
  *off = (uint32_t)h->buf.len;
  int rc = sp_buf_add(&h->buf, s, len);
  if (rc == 0)
    rc = sp_buf_add(&h->buf, "", 1);
  return rc;
}

/* A regular field; 0 or SP_ERR_NOMEM (limits only set h->over). */
static int hf_add(hfields *h, const uint8_t *name, size_t nlen,
                  const uint8_t *value, size_t vlen) {
  if (h->over)
    return 0;
  if (h->n == SP_H2_MAX_HEADERS) {
    h->over = 1;
    return 0;
  }
  uint32_t off, voff;
  int rc = hf_put(h, name, nlen, &off);
  if (rc == 0)
    rc = hf_put(h, value, vlen, &voff);
  if (rc == SP_ERR_TOOBIG) {
    h->over = 1;
    return 0;
  }
  if (rc)
    return rc;
  h->off[h->n++] = off;
  return 0;
}

/* Builds the view once no more fields will be added (the buffer no
 * longer moves). */
static void hf_finish(hfields *h) {
  for (unsigned i = 0; i < h->n; i++) {
    const char *name = h->buf.base + h->off[i];
    h->view[i].name = name;
    h->view[i].value = name + strlen(name) + 1;
  }
}

static const char *hf_get(const hfields *h, const char *name) {
  for (unsigned i = 0; i < h->n; i++)
    if (strcmp(h->view[i].name, name) == 0)
      return h->view[i].value;
  return NULL;
}

/* ---- types ----------------------------------------------------------------- */

enum st_state {
  ST_RECV,    /* request being received; the connection's */
  ST_HANDLER, /* in the handler; the handler's */
  ST_DONE,    /* answered or refused; the connection's until closed */
};

#define NO_OFF UINT32_MAX

struct sp_h2_stream {
  sp_h2_conn *conn; /* NULL once detached */
  h2_link link;     /* conn->streams */
  int32_t id;
  enum st_state state;
  int req_ended; /* END_STREAM received */
  int rst_after;  /* refused early: RST_STREAM once the answer is out */
  uint32_t off_method, off_path, off_authority; /* into hf.buf */
  hfields hf;
  sp_buf body;
  sp_buf resp; /* response body being sent */
  size_t resp_off;
  char peer[256];
  sp_h2_abort_cb abort_cb;
  void *abort_arg;
};

typedef struct h2_req {
  sp_h2_conn *conn;
  h2_link link;
  int32_t id;
  sp_h2_response_cb cb;
  void *arg;
  char *body; /* request body copy */
  size_t len, off;
  hfields hf; /* response fields */
  int status;
  int err;      /* a local reason to fail it (response over the limits) */
  int final;    /* a final (>= 200) status arrived */
  int complete; /* END_STREAM received */
  sp_buf rbody;
} h2_req;

struct sp_h2_conn {
  sp_h2_server *srv; /* server side, or NULL */
  sp_h2_client *cli; /* client side, or NULL */
  uv_loop_t *loop;   /* NULL: memory connection */
  const sp_h2_config *cfg;
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_prepare_t flusher;
  uv_write_t wreq;
  uv_shutdown_t sreq;
  uv_connect_t creq;
  h2_link link;    /* srv->conns */
  h2_link streams; /* sp_h2_stream (server) or h2_req (client) */
  size_t nstreams;
  sp_tls *tls;
  nghttp2_session *ng;
  sp_buf out;   /* ciphertext not yet handed to the socket */
  sp_buf wbuf;  /* ciphertext in flight with uv_write */
  sp_buf plain; /* nghttp2 output not yet encrypted */
  char addr[64];
  char h2_reason[REASON_LEN]; /* nghttp2's last error message */
  char end_reason[REASON_LEN];
  int end_err;
  int pending_err; /* connect failed synchronously: report from the loop */
  uint32_t goaway_err_sent;
  uint32_t goaway_recv_code;
  uint64_t hs_deadline, shutdown_deadline, linger_deadline;
  uint64_t ping_due, ping_sent, ping_sent_hr;
  uint64_t pings_acked, last_rtt_us;
  unsigned connected : 1; /* TCP up */
  unsigned tls_done : 1;
  unsigned established : 1; /* peer's SETTINGS received */
  unsigned goaway_recv : 1;
  unsigned closing : 1; /* our graceful close under way */
  unsigned goaway_queued : 1;
  unsigned ended : 1;
  unsigned lingering : 1;
  unsigned writing : 1;
  unsigned eof : 1;
  unsigned shutdown_sent : 1;
  unsigned ping_outstanding : 1;
  unsigned in_ng : 1; /* inside nghttp2 mem_recv/mem_send */
  unsigned pump_again : 1;
  unsigned flush_scheduled : 1;
  unsigned tcp_closed : 1; /* client: the socket's close callback ran */
  unsigned handles_closing : 1;
  unsigned nclose;
};

struct sp_h2_server {
  uv_loop_t *loop;
  sp_tls_ctx *tls;
  sp_h2_config cfg;
  sp_h2_request_cb on_request;
  void *arg;
  nghttp2_session_callbacks *cbs;
  uv_tcp_t listener;
  int listening;
  int port;
  int closing;
  unsigned nhandles;
  h2_link conns;
  size_t nconns;
  char *rbuf;
  sp_h2_server_done_cb done;
  void *done_arg;
};

struct sp_h2_client {
  sp_h2_conn conn;
  sp_tls_ctx *tls;
  sp_h2_config cfg;
  nghttp2_session_callbacks *cbs;
  char *peer_name;
  sp_h2_state_cb on_state;
  void *arg;
  int closing;
  int reported_up, reported_down;
  sp_h2_client_done_cb done;
  void *done_arg;
  char rbuf[READ_BUF_SIZE];
};

static void conn_end(sp_h2_conn *c, int err, const char *reason);
static void conn_pump(sp_h2_conn *c);
static void conn_schedule(sp_h2_conn *c);
static void conn_arm_timer(sp_h2_conn *c);
static void conn_close_handles(sp_h2_conn *c);
static void flush(sp_h2_conn *c);
static void submit_rst(sp_h2_conn *c, int32_t id, uint32_t code);

/* ---- config ---------------------------------------------------------------- */

void sp_h2_config_init(sp_h2_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->max_body_bytes = 8u << 20;
  cfg->max_concurrent_streams = 100;
  cfg->max_header_list_bytes = 16 * 1024;
  cfg->stream_window_bytes = 1u << 20;
  cfg->handshake_timeout_ms = 10000;
  cfg->ping_interval_ms = 10000;
  cfg->ping_timeout_ms = 5000;
  cfg->shutdown_timeout_ms = 10000;
  cfg->linger_ms = 1000;
  cfg->max_connections = 1000;
}

static int check_config(const sp_h2_config *c) {
  if (c->max_body_bytes == 0 || c->max_body_bytes > ((size_t)1 << 40) ||
      c->max_concurrent_streams == 0 ||
      c->max_concurrent_streams > (1u << 20) ||
      c->max_header_list_bytes < 1024 ||
      c->max_header_list_bytes > (1u << 24) ||
      c->stream_window_bytes < 65535 ||
      c->stream_window_bytes > NGHTTP2_MAX_WINDOW_SIZE ||
      c->handshake_timeout_ms == 0 || c->ping_timeout_ms == 0 ||
      c->shutdown_timeout_ms == 0 || c->linger_ms == 0 ||
      c->max_connections == 0)
    return SP_ERR_CONFIG;
  return 0;
}

/* ---- nghttp2 allocator: everything through sp_alloc -------------------------- */

static void *ng_malloc(size_t n, void *u) {
  (void)u;
  return sp_malloc(n);
}
static void ng_free(void *p, void *u) {
  (void)u;
  sp_free(p);
}
static void *ng_calloc(size_t k, size_t n, void *u) {
  (void)u;
  return sp_calloc(k, n);
}
static void *ng_realloc(void *p, size_t n, void *u) {
  (void)u;
  return sp_realloc(p, n);
}

/* ---- streams --------------------------------------------------------------- */

static void stream_free(sp_h2_stream *st) {
  sp_buf_release(&st->hf.buf);
  sp_buf_release(&st->body);
  sp_buf_release(&st->resp);
  sp_free(st);
}

static void req_free(h2_req *r) {
  sp_free(r->body);
  sp_buf_release(&r->hf.buf);
  sp_buf_release(&r->rbody);
  sp_free(r);
}

/* Takes a server stream off its connection. */
static void stream_unlink(sp_h2_stream *st) {
  if (st->link.prev) {
    sp_list_del(&st->link);
    st->conn->nstreams--;
  }
}

/* The handler no longer answers into a live stream: detach and tell it. */
static void stream_detach(sp_h2_stream *st) {
  stream_unlink(st);
  st->conn = NULL;
  if (st->abort_cb)
    st->abort_cb(st, st->abort_arg);
}

static void req_unlink(h2_req *r) {
  if (r->link.prev) {
    sp_list_del(&r->link);
    r->conn->nstreams--;
  }
}

/* Runs a request's callback once and frees it. */
static void req_finish(h2_req *r, int err) {
  sp_h2_client *cli = r->conn->cli;
  req_unlink(r);
  if (err) {
    r->cb(cli, err, NULL, r->arg);
  } else {
    hf_finish(&r->hf);
    sp_h2_response res = {r->status, r->hf.view, r->hf.n,
                          {r->rbody.base, r->rbody.len}};
    r->cb(cli, 0, &res, r->arg);
  }
  req_free(r);
}

/* ---- logging --------------------------------------------------------------- */

static const char *role(const sp_h2_conn *c) {
  return c->srv ? "server" : "client";
}

static const char *peer_label(const sp_h2_conn *c) {
  if (c->tls && sp_tls_peer_name(c->tls))
    return sp_tls_peer_name(c->tls);
  if (c->cli)
    return c->cli->peer_name;
  return "";
}

/* ---- client state ---------------------------------------------------------- */

static void client_report(sp_h2_client *cli, sp_h2_state state, int err,
                          const char *reason) {
  if (state == SP_H2_CONNECTED) {
    if (cli->reported_up || cli->reported_down)
      return;
    cli->reported_up = 1;
  } else {
    if (cli->reported_down)
      return;
    cli->reported_down = 1;
    if (cli->closing)
      err = 0; /* our own close: whatever happened meanwhile */
  }
  cli->on_state(cli, state, err, reason, cli->arg);
}

/* ---- the one ending -------------------------------------------------------- */

static void conn_end(sp_h2_conn *c, int err, const char *reason) {
  if (c->ended)
    return;
  c->ended = 1;
  c->end_err = err;
  snprintf(c->end_reason, sizeof c->end_reason, "%s", reason);
  reason = c->end_reason;
  if (!c->established && err && err != SP_ERR_CANCELED)
    sp_log_warn("h2 handshake failed", "{s:s, s:s, s:s, s:s, s:s}", "role",
                role(c), "addr", c->addr, "peer", peer_label(c), "error",
                sp_err_name(err), "reason", reason);
  else if (err == SP_ERR_PROTO || err == SP_ERR_ACCES ||
           err == SP_ERR_TIMEDOUT || err == SP_ERR_NOMEM)
    sp_log_warn("h2 connection failed", "{s:s, s:s, s:s, s:s, s:s}", "role",
                role(c), "addr", c->addr, "peer", peer_label(c), "error",
                sp_err_name(err), "reason", reason);
  else
    sp_log_debug("h2 connection closed", "{s:s, s:s, s:s, s:s}", "role",
                 role(c), "addr", c->addr, "peer", peer_label(c), "reason",
                 reason);

  /* streams: requests fail once; handlers' streams are detached */
  int req_err = err == 0 ? SP_ERR_CANCELED
                         : err == SP_ERR_CLOSED ? SP_ERR_CONNRESET : err;
  while (!sp_list_empty(&c->streams)) {
    h2_link *l = c->streams.next;
    if (c->cli) {
      req_finish(CONTAINER_OF(l, h2_req, link), req_err);
    } else {
      sp_h2_stream *st = CONTAINER_OF(l, sp_h2_stream, link);
      if (st->state == ST_HANDLER) {
        stream_detach(st);
      } else {
        stream_unlink(st);
        stream_free(st);
      }
    }
  }
  if (c->tls) {
    if (sp_tls_established(c->tls))
      (void)sp_tls_close_notify(c->tls);
    (void)sp_tls_take_output(c->tls, &c->out);
  }
  if (c->cli)
    client_report(c->cli, SP_H2_DISCONNECTED, err, reason);
  if (c->loop == NULL)
    return;
  if (!c->connected) {
    conn_close_handles(c); /* cancels a connect under way */
    return;
  }
  /* flush, half-close, drain until EOF or the deadline (after_drain) */
  c->lingering = 1;
  c->linger_deadline = uv_now(c->loop) + c->cfg->linger_ms;
  conn_arm_timer(c);
  flush(c);
}

/* Both sides are done with the session: end it with the right reason. */
static void check_done(sp_h2_conn *c) {
  if (c->ended || !c->tls_done || nghttp2_session_want_read(c->ng) ||
      nghttp2_session_want_write(c->ng))
    return;
  char why[2 * REASON_LEN];
  if (c->goaway_err_sent) {
    snprintf(why, sizeof why, "HTTP/2 protocol error: %s",
             c->h2_reason[0] ? c->h2_reason
                             : nghttp2_http2_strerror(c->goaway_err_sent));
    conn_end(c, SP_ERR_PROTO, why);
  } else if (c->goaway_recv && c->goaway_recv_code != NGHTTP2_NO_ERROR) {
    snprintf(why, sizeof why, "the peer ended the connection: %s",
             nghttp2_http2_strerror(c->goaway_recv_code));
    conn_end(c, SP_ERR_PROTO, why);
  } else if (c->closing) {
    conn_end(c, 0, "closed");
  } else if (c->goaway_recv) {
    conn_end(c, SP_ERR_CLOSED, "the peer closed the connection (GOAWAY)");
  } else {
    conn_end(c, SP_ERR_PROTO, "the HTTP/2 session ended");
  }
}

/* ---- output ---------------------------------------------------------------- */

/* Encrypts the plaintext collected from nghttp2 into c->out. */
static int seal_plain(sp_h2_conn *c) {
  if (c->plain.len == 0)
    return 0;
  int rc = sp_tls_write(c->tls, c->plain.base, c->plain.len);
  sp_buf_reset(&c->plain);
  if (rc == 0)
    rc = sp_tls_take_output(c->tls, &c->out);
  return rc;
}

/* Moves what nghttp2 has to say through TLS into c->out, up to the high
 * water mark, and writes; repeats while the socket takes everything at
 * once (otherwise on_write pumps again once it drained). */
static void conn_pump(sp_h2_conn *c) {
  if (c->in_ng) {
    c->pump_again = 1;
    return;
  }
  if (c->ended || !c->tls_done) {
    flush(c);
    return;
  }
  for (;;) {
    size_t produced = 0;
    int rc = 0;
    c->pump_again = 0;
    c->in_ng = 1;
    while (!c->ended && c->out.len + c->plain.len < OUT_HIGH_WATER) {
      const uint8_t *data;
      ssize_t n = nghttp2_session_mem_send(c->ng, &data);
      if (n < 0) {
        rc = n == NGHTTP2_ERR_NOMEM ? SP_ERR_NOMEM : SP_ERR_INTERNAL;
        snprintf(c->h2_reason, sizeof c->h2_reason, "nghttp2: %s",
                 nghttp2_strerror((int)n));
        break;
      }
      if (n == 0)
        break;
      produced += (size_t)n;
      rc = sp_buf_add(&c->plain, data, (size_t)n);
      if (rc == 0 && c->plain.len >= TLS_CHUNK)
        rc = seal_plain(c);
      if (rc)
        break;
    }
    c->in_ng = 0;
    if (rc == 0 && !c->ended)
      rc = seal_plain(c);
    if (c->ended)
      break;
    if (rc) {
      conn_end(c, rc,
               c->h2_reason[0] ? c->h2_reason : "cannot queue output");
      break;
    }
    flush(c);
    if (c->ended || (!c->pump_again &&
                     (produced == 0 || c->loop == NULL || c->writing ||
                      c->out.len)))
      break;
  }
  flush(c);
  if (!c->ended)
    check_done(c);
}

static void on_flusher(uv_prepare_t *p) {
  sp_h2_conn *c = CONTAINER_OF(p, sp_h2_conn, flusher);
  uv_prepare_stop(p);
  c->flush_scheduled = 0;
  conn_pump(c);
}

/* Output is due: write before the loop sleeps (a memory connection pumps at
 * once, unless inside nghttp2). */
static void conn_schedule(sp_h2_conn *c) {
  if (c->loop == NULL) {
    conn_pump(c);
    return;
  }
  if (c->flush_scheduled || c->handles_closing)
    return;
  c->flush_scheduled = 1;
  uv_prepare_start(&c->flusher, on_flusher);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  sp_h2_conn *c = CONTAINER_OF(req, sp_h2_conn, sreq);
  if (status < 0 && !c->handles_closing)
    conn_close_handles(c);
  /* else: wait for the peer's EOF or the linger deadline */
}

/* After the last byte was handed to the socket. */
static void after_drain(sp_h2_conn *c) {
  if (!c->lingering || c->shutdown_sent || c->handles_closing)
    return;
  c->shutdown_sent = 1;
  if (c->eof ||
      uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
    conn_close_handles(c);
}

static void on_write(uv_write_t *w, int status) {
  sp_h2_conn *c = CONTAINER_OF(w, sp_h2_conn, wreq);
  c->writing = 0;
  sp_buf_reset(&c->wbuf);
  if (c->handles_closing)
    return;
  if (status < 0) {
    c->eof = 1;
    conn_end(c, SP_ERR_CONNRESET, "write failed: the peer went away");
    conn_close_handles(c);
    return;
  }
  if (c->ended)
    flush(c);
  else
    conn_pump(c); /* nghttp2 may hold more than the high water let out */
}

static void flush(sp_h2_conn *c) {
  if (c->loop == NULL || !c->connected || c->writing || c->handles_closing)
    return;
  if (c->out.len == 0) {
    after_drain(c);
    return;
  }
  uv_buf_t b = uv_buf_init(c->out.base, (unsigned)c->out.len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n == UV_EAGAIN)
    n = 0;
  if (n < 0) {
    c->eof = 1;
    conn_end(c, SP_ERR_CONNRESET, "write failed: the peer went away");
    conn_close_handles(c);
    return;
  }
  if ((size_t)n == c->out.len) {
    sp_buf_reset(&c->out);
    after_drain(c);
    return;
  }
  /* the rest goes with uv_write from wbuf; new output collects in out */
  sp_buf tmp = c->wbuf;
  c->wbuf = c->out;
  c->out = tmp;
  b = uv_buf_init(c->wbuf.base + n, (unsigned)(c->wbuf.len - (size_t)n));
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    c->eof = 1;
    conn_end(c, SP_ERR_CONNRESET, "write failed");
    conn_close_handles(c);
    return;
  }
  c->writing = 1;
}

/* ---- input ----------------------------------------------------------------- */

/* The peer closed (EOF or close_notify): after its GOAWAY with nothing in
 * flight that is a graceful close, otherwise a loss. */
static void conn_peer_closed(sp_h2_conn *c, const char *reason) {
  if (c->goaway_recv && c->nstreams == 0)
    conn_end(c, SP_ERR_CLOSED, "the peer closed the connection (GOAWAY)");
  else
    conn_end(c, SP_ERR_CONNRESET, reason);
}

/* Ciphertext from the peer: TLS, then HTTP/2, then output. */
static void conn_input(sp_h2_conn *c, const char *data, size_t len) {
  if (c->ended)
    return; /* lingering: discard */
  int rc = sp_tls_feed(c->tls, data, len);
  if (rc) {
    conn_end(c, rc, "out of memory");
    return;
  }
  if (!c->tls_done) {
    rc = sp_tls_handshake(c->tls);
    if (sp_tls_take_output(c->tls, &c->out) != 0) {
      conn_end(c, SP_ERR_NOMEM, "cannot queue TLS output");
      return;
    }
    if (rc == SP_ERR_AGAIN) {
      flush(c);
      return;
    }
    if (rc) {
      conn_end(c, rc, sp_tls_reason(c->tls));
      return;
    }
    c->tls_done = 1;
    sp_log_debug("tls established", "{s:s, s:s, s:s}", "role", role(c),
                 "addr", c->addr, "peer", sp_tls_peer_name(c->tls));
  }
  char plain[TLS_CHUNK];
  for (;;) {
    size_t n;
    rc = sp_tls_read(c->tls, plain, sizeof plain, &n);
    if (rc == SP_ERR_AGAIN)
      break;
    if (rc == SP_ERR_CLOSED) {
      conn_peer_closed(c, "the peer closed TLS (close_notify)");
      return;
    }
    if (rc) {
      conn_end(c, rc, sp_tls_reason(c->tls));
      return;
    }
    c->in_ng = 1;
    ssize_t r = nghttp2_session_mem_recv(c->ng, (const uint8_t *)plain, n);
    c->in_ng = 0;
    if (c->ended)
      return;
    if (r < 0) {
      char why[2 * REASON_LEN];
      snprintf(why, sizeof why, "HTTP/2 protocol error: %s%s%s",
               nghttp2_strerror((int)r), c->h2_reason[0] ? ": " : "",
               c->h2_reason);
      uint32_t code = r == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                               : NGHTTP2_PROTOCOL_ERROR;
      if (r != NGHTTP2_ERR_NOMEM &&
          nghttp2_session_terminate_session(c->ng, code) == 0)
        conn_pump(c); /* the GOAWAY */
      conn_end(c, r == NGHTTP2_ERR_NOMEM ? SP_ERR_NOMEM : SP_ERR_PROTO, why);
      return;
    }
  }
  conn_pump(c);
}

/* ---- nghttp2 callbacks: both roles ----------------------------------------- */

static void established(sp_h2_conn *c) {
  if (c->established)
    return;
  c->established = 1;
  if (c->loop && c->cfg->ping_interval_ms)
    c->ping_due = uv_now(c->loop) + c->cfg->ping_interval_ms;
  conn_arm_timer(c);
  if (c->cli)
    client_report(c->cli, SP_H2_CONNECTED, 0, "connected");
}

static int on_error(nghttp2_session *s, int code, const char *msg, size_t len,
                    void *ud) {
  (void)s;
  (void)code;
  sp_h2_conn *c = ud;
  snprintf(c->h2_reason, sizeof c->h2_reason, "%.*s", (int)len, msg);
  return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f,
                         void *ud) {
  (void)s;
  sp_h2_conn *c = ud;
  if (c->ended)
    return 0;
  if (c->srv && f->hd.type == NGHTTP2_HEADERS &&
      (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    sp_h2_stream *st =
        nghttp2_session_get_stream_user_data(c->ng, f->hd.stream_id);
    if (st && st->rst_after && !st->req_ended) {
      st->rst_after = 0;
      submit_rst(c, st->id, NGHTTP2_NO_ERROR);
    }
  }
  if (f->hd.type == NGHTTP2_GOAWAY &&
      f->goaway.error_code != NGHTTP2_NO_ERROR) {
    c->goaway_err_sent = f->goaway.error_code;
    sp_log_warn("h2 protocol error, sending GOAWAY",
                "{s:s, s:s, s:s, s:s, s:s}", "role", role(c), "addr", c->addr,
                "peer", peer_label(c), "code",
                nghttp2_http2_strerror(f->goaway.error_code), "reason",
                c->h2_reason);
  }
  return 0;
}

static void ping_acked(sp_h2_conn *c) {
  if (!c->ping_outstanding)
    return;
  c->ping_outstanding = 0;
  c->pings_acked++;
  if (c->loop) {
    c->last_rtt_us = (uv_hrtime() - c->ping_sent_hr) / 1000;
    c->ping_due = uv_now(c->loop) + c->cfg->ping_interval_ms;
    conn_arm_timer(c);
  }
}

/* Queues RST_STREAM.  When even that cannot be queued (out of memory) the
 * stream would hang: the connection ends instead.  May end `c`. */
static void submit_rst(sp_h2_conn *c, int32_t id, uint32_t code) {
  if (nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, id, code) != 0) {
    conn_end(c, SP_ERR_NOMEM, "out of memory queueing RST_STREAM");
    return;
  }
  conn_schedule(c);
}

/* ---- nghttp2 callbacks: server --------------------------------------------- */

static void reject(sp_h2_stream *st, int status, const char *why) {
  sp_h2_conn *c = st->conn;
  sp_log_info("h2 request refused", "{s:s, s:s, s:i, s:s}", "addr", c->addr,
              "peer", peer_label(c), "status", status, "reason", why);
  st->state = ST_DONE;
  sp_buf_release(&st->body);
  char sbuf[8];
  snprintf(sbuf, sizeof sbuf, "%d", status);
  nghttp2_nv nv[] = {
      {(uint8_t *)":status", (uint8_t *)sbuf, 7, strlen(sbuf),
       NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"content-length", (uint8_t *)"0", 14, 1,
       NGHTTP2_NV_FLAG_NONE},
  };
  if (nghttp2_submit_response(c->ng, st->id, nv, 2, NULL) != 0) {
    submit_rst(c, st->id, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  /* a complete answer before the request is: the rest of it is stopped
   * with RST_STREAM NO_ERROR (RFC 9113 8.1), but only after the answer
   * went out -- nghttp2 drops a response queued behind a reset */
  st->rst_after = !st->req_ended;
  conn_schedule(c);
}

static int srv_begin_headers(sp_h2_conn *c, const nghttp2_frame *f) {
  if (f->hd.type != NGHTTP2_HEADERS ||
      f->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  sp_h2_stream *st = sp_calloc(1, sizeof *st);
  if (st == NULL)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
  st->conn = c;
  st->id = f->hd.stream_id;
  st->off_method = st->off_path = st->off_authority = NO_OFF;
  hf_init(&st->hf, c->cfg->max_header_list_bytes);
  sp_buf_init(&st->body, c->cfg->max_body_bytes);
  sp_buf_init(&st->resp, SP_BUF_UNLIMITED);
  sp_list_add(&c->streams, &st->link);
  c->nstreams++;
  nghttp2_session_set_stream_user_data(c->ng, st->id, st);
  return 0;
}

static int srv_header(sp_h2_conn *c, const nghttp2_frame *f,
                      const uint8_t *name, size_t nlen, const uint8_t *value,
                      size_t vlen) {
  sp_h2_stream *st =
      nghttp2_session_get_stream_user_data(c->ng, f->hd.stream_id);
  if (st == NULL || st->state != ST_RECV)
    return 0;
  if (!hf_account(&st->hf, nlen, vlen, c->cfg->max_header_list_bytes))
    return 0;
  if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0; /* trailers: counted, not kept */
  int rc = 0;
  if (nlen && name[0] == ':') {
    /* nghttp2 already checked which pseudo-headers may appear */
    uint32_t *off = nlen == 7 && memcmp(name, ":method", 7) == 0
                        ? &st->off_method
                    : nlen == 5 && memcmp(name, ":path", 5) == 0
                        ? &st->off_path
                    : nlen == 10 && memcmp(name, ":authority", 10) == 0
                        ? &st->off_authority
                        : NULL;
    if (off)
      rc = hf_put(&st->hf, value, vlen, off);
    if (rc == SP_ERR_TOOBIG) {
      st->hf.over = 1;
      rc = 0;
    }
  } else {
    rc = hf_add(&st->hf, name, nlen, value, vlen);
  }
  return rc ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static void request_complete(sp_h2_conn *c, sp_h2_stream *st) {
  st->req_ended = 1;
  if (st->state != ST_RECV)
    return;
  if (st->hf.over) {
    reject(st, 431, "header list over the limit");
    return;
  }
  hf_finish(&st->hf);
  snprintf(st->peer, sizeof st->peer, "%s", sp_tls_peer_name(c->tls));
  st->state = ST_HANDLER;
  sp_h2_server *srv = c->srv;
  srv->on_request(st, srv->arg); /* st is the handler's from here */
}

static int srv_frame_recv(sp_h2_conn *c, const nghttp2_frame *f) {
  sp_h2_stream *st = NULL;
  if (f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA)
    st = nghttp2_session_get_stream_user_data(c->ng, f->hd.stream_id);
  if (st == NULL)
    return 0;
  if (f->hd.type == NGHTTP2_HEADERS && st->state == ST_RECV &&
      f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    if (st->hf.over) {
      st->req_ended = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
      reject(st, 431, "header list over the limit");
      return 0;
    }
    hf_finish(&st->hf);
    const char *cl = hf_get(&st->hf, "content-length");
    if (cl) {
      char *end;
      unsigned long long v = strtoull(cl, &end, 10);
      if (*end == '\0' && v > c->cfg->max_body_bytes) {
        st->req_ended = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
        reject(st, 413, "content-length over max_body_bytes");
        return 0;
      }
    }
  }
  if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
    request_complete(c, st);
  return 0;
}

static int srv_data(sp_h2_conn *c, int32_t id, const uint8_t *data,
                    size_t len) {
  sp_h2_stream *st = nghttp2_session_get_stream_user_data(c->ng, id);
  if (st == NULL || st->state != ST_RECV)
    return 0;
  int rc = sp_buf_add(&st->body, data, len);
  if (rc == SP_ERR_TOOBIG)
    reject(st, 413, "body over max_body_bytes");
  else if (rc)
    reject(st, 503, "out of memory for the body");
  return 0;
}

static void srv_stream_close(sp_h2_conn *c, int32_t id) {
  sp_h2_stream *st = nghttp2_session_get_stream_user_data(c->ng, id);
  if (st == NULL)
    return;
  nghttp2_session_set_stream_user_data(c->ng, id, NULL);
  if (st->state == ST_HANDLER) {
    stream_detach(st); /* reset by the peer before the answer */
  } else {
    stream_unlink(st);
    stream_free(st);
  }
}

static ssize_t srv_read_body(nghttp2_session *s, int32_t id, uint8_t *buf,
                             size_t len, uint32_t *flags,
                             nghttp2_data_source *src, void *ud) {
  (void)s;
  (void)id;
  sp_h2_conn *c = ud;
  if (c->ended)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  sp_h2_stream *st = src->ptr;
  size_t left = st->resp.len - st->resp_off;
  size_t n = left < len ? left : len;
  memcpy(buf, st->resp.base + st->resp_off, n);
  st->resp_off += n;
  if (st->resp_off == st->resp.len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* ---- nghttp2 callbacks: client --------------------------------------------- */

static int cli_begin_headers(sp_h2_conn *c, const nghttp2_frame *f) {
  h2_req *r = nghttp2_session_get_stream_user_data(c->ng, f->hd.stream_id);
  if (r == NULL || f->hd.type != NGHTTP2_HEADERS)
    return 0;
  if (!r->final) { /* a 1xx before: the final response starts over */
    hf_reset(&r->hf);
    r->status = 0;
  }
  return 0;
}

static void req_fail_local(sp_h2_conn *c, h2_req *r, int err) {
  if (r->err)
    return;
  r->err = err;
  submit_rst(c, r->id, NGHTTP2_CANCEL);
}

static int cli_header(sp_h2_conn *c, const nghttp2_frame *f,
                      const uint8_t *name, size_t nlen, const uint8_t *value,
                      size_t vlen) {
  h2_req *r = nghttp2_session_get_stream_user_data(c->ng, f->hd.stream_id);
  if (r == NULL || r->err)
    return 0;
  if (!hf_account(&r->hf, nlen, vlen, c->cfg->max_header_list_bytes)) {
    req_fail_local(c, r, SP_ERR_TOOBIG);
    return 0;
  }
  if (r->final)
    return 0; /* trailers after the final response: counted, not kept */
  if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
    int st = 0;
    for (size_t i = 0; i < vlen && i < 3; i++)
      st = st * 10 + (value[i] - '0');
    r->status = st; /* nghttp2 checked it is three digits */
    return 0;
  }
  if (nlen && name[0] == ':')
    return 0;
  if (hf_add(&r->hf, name, nlen, value, vlen))
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (r->hf.over)
    req_fail_local(c, r, SP_ERR_TOOBIG);
  return 0;
}

static int cli_frame_recv(sp_h2_conn *c, const nghttp2_frame *f) {
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
    return 0;
  h2_req *r = nghttp2_session_get_stream_user_data(c->ng, f->hd.stream_id);
  if (r == NULL)
    return 0;
  if (f->hd.type == NGHTTP2_HEADERS && r->status >= 200)
    r->final = 1;
  if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
    r->complete = 1;
  return 0;
}

static int cli_data(sp_h2_conn *c, int32_t id, const uint8_t *data,
                    size_t len) {
  h2_req *r = nghttp2_session_get_stream_user_data(c->ng, id);
  if (r == NULL || r->err)
    return 0;
  int rc = sp_buf_add(&r->rbody, data, len);
  if (rc)
    req_fail_local(c, r, rc);
  return 0;
}

static void client_goaway_if_idle(sp_h2_conn *c);

static void cli_stream_close(sp_h2_conn *c, int32_t id, uint32_t code) {
  h2_req *r = nghttp2_session_get_stream_user_data(c->ng, id);
  if (r == NULL)
    return;
  nghttp2_session_set_stream_user_data(c->ng, id, NULL);
  int err = r->err;
  if (err == 0 && !(r->complete && r->final)) {
    err = code == NGHTTP2_REFUSED_STREAM ? SP_ERR_AGAIN : SP_ERR_CONNRESET;
    sp_log_debug("h2 stream reset", "{s:s, s:i, s:s}", "peer",
                 peer_label(c), "stream", id, "code",
                 nghttp2_http2_strerror(code));
  }
  req_finish(r, err);
  client_goaway_if_idle(c);
}

static ssize_t cli_read_body(nghttp2_session *s, int32_t id, uint8_t *buf,
                             size_t len, uint32_t *flags,
                             nghttp2_data_source *src, void *ud) {
  (void)s;
  (void)id;
  sp_h2_conn *c = ud;
  if (c->ended)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  h2_req *r = src->ptr;
  size_t left = r->len - r->off;
  size_t n = left < len ? left : len;
  memcpy(buf, r->body + r->off, n);
  r->off += n;
  if (r->off == r->len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* ---- nghttp2 callbacks: dispatch by role ----------------------------------- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f,
                            void *ud) {
  (void)s;
  sp_h2_conn *c = ud;
  if (c->ended)
    return 0;
  return c->srv ? srv_begin_headers(c, f) : cli_begin_headers(c, f);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f,
                     const uint8_t *name, size_t nlen, const uint8_t *value,
                     size_t vlen, uint8_t flags, void *ud) {
  (void)s;
  (void)flags;
  sp_h2_conn *c = ud;
  if (c->ended)
    return 0;
  return c->srv ? srv_header(c, f, name, nlen, value, vlen)
                : cli_header(c, f, name, nlen, value, vlen);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f,
                         void *ud) {
  (void)s;
  sp_h2_conn *c = ud;
  if (c->ended)
    return 0;
  switch (f->hd.type) {
  case NGHTTP2_SETTINGS:
    if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
      established(c);
    return 0;
  case NGHTTP2_PING:
    if (f->hd.flags & NGHTTP2_FLAG_ACK)
      ping_acked(c);
    return 0;
  case NGHTTP2_GOAWAY:
    c->goaway_recv = 1;
    c->goaway_recv_code = f->goaway.error_code;
    if (f->goaway.error_code != NGHTTP2_NO_ERROR)
      sp_log_warn("h2 peer sent GOAWAY", "{s:s, s:s, s:s, s:s}", "role",
                  role(c), "addr", c->addr, "peer", peer_label(c), "code",
                  nghttp2_http2_strerror(f->goaway.error_code));
    return 0;
  default:
    return c->srv ? srv_frame_recv(c, f) : cli_frame_recv(c, f);
  }
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id,
                   const uint8_t *data, size_t len, void *ud) {
  (void)s;
  (void)flags;
  sp_h2_conn *c = ud;
  if (c->ended)
    return 0;
  return c->srv ? srv_data(c, id, data, len) : cli_data(c, id, data, len);
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code,
                           void *ud) {
  (void)s;
  sp_h2_conn *c = ud;
  if (c->ended)
    return 0;
  if (c->srv)
    srv_stream_close(c, id);
  else
    cli_stream_close(c, id, code);
  return 0;
}

static int make_callbacks(nghttp2_session_callbacks **out) {
  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs))
    return SP_ERR_NOMEM;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs,
                                                          on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs,
                                                         on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
  *out = cbs;
  return 0;
}

/* ---- connection setup and teardown ----------------------------------------- */

/* The engine of a zeroed connection: buffers, TLS session, nghttp2
 * session with our SETTINGS queued.  0, SP_ERR_NOMEM or SP_ERR_INVAL. */
static int conn_engine_init(sp_h2_conn *c, const sp_h2_config *cfg,
                            sp_tls_ctx *tls, const char *peer_name,
                            nghttp2_session_callbacks *cbs) {
  c->cfg = cfg;
  sp_list_init(&c->streams);
  sp_buf_init(&c->out, OUT_MAX);
  sp_buf_init(&c->wbuf, OUT_MAX);
  sp_buf_init(&c->plain, OUT_HIGH_WATER + 2 * TLS_CHUNK);
  int rc = sp_tls_new(tls, peer_name, &c->tls);
  if (rc)
    goto fail_tls;
  nghttp2_mem mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};
  nghttp2_option *opt;
  rc = SP_ERR_NOMEM;
  if (nghttp2_option_new(&opt))
    goto fail_opt;
  /* a peer's SETTINGS beyond this many entries is a flood */
  nghttp2_option_set_max_settings(opt, 32);
  int nrc = c->srv ? nghttp2_session_server_new3(&c->ng, cbs, c, opt, &mem)
                   : nghttp2_session_client_new3(&c->ng, cbs, c, opt, &mem);
  nghttp2_option_del(opt);
  if (nrc)
    goto fail_opt;
  nghttp2_settings_entry iv[4] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->stream_window_bytes},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->max_header_list_bytes},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv,
                              c->srv ? 3 : 4) ||
      nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0,
                                            CONN_WINDOW))
    goto fail_session;
  return 0;

fail_session:
  nghttp2_session_del(c->ng);
  c->ng = NULL;
fail_opt:
  sp_tls_free(c->tls);
  c->tls = NULL;
fail_tls:
  return rc;
}

static void conn_engine_release(sp_h2_conn *c) {
  nghttp2_session_del(c->ng);
  c->ng = NULL;
  sp_tls_free(c->tls);
  c->tls = NULL;
  sp_buf_release(&c->out);
  sp_buf_release(&c->wbuf);
  sp_buf_release(&c->plain);
}

static void on_timer(uv_timer_t *t);

static void conn_arm_timer(sp_h2_conn *c) {
  if (c->loop == NULL || c->handles_closing)
    return;
  uint64_t due = UINT64_MAX;
  if (c->lingering) {
    due = c->linger_deadline;
  } else if (!c->ended) {
    if (!c->established)
      due = c->hs_deadline;
    if (c->closing && c->shutdown_deadline < due)
      due = c->shutdown_deadline;
    if (c->established && c->cfg->ping_interval_ms) {
      uint64_t p = c->ping_outstanding
                       ? c->ping_sent + c->cfg->ping_timeout_ms
                       : c->ping_due;
      if (p < due)
        due = p;
    }
  }
  if (due == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t now = uv_now(c->loop);
  uv_timer_start(&c->timer, on_timer, due > now ? due - now : 0, 0);
}

static void on_timer(uv_timer_t *t) {
  sp_h2_conn *c = CONTAINER_OF(t, sp_h2_conn, timer);
  uint64_t now = uv_now(c->loop);
  if (c->pending_err) {
    int err = c->pending_err;
    c->pending_err = 0;
    char why[2 * REASON_LEN];
    snprintf(why, sizeof why, "cannot connect: %s", uv_strerror(err));
    conn_end(c, err, why);
    return;
  }
  if (c->lingering) {
    if (now >= c->linger_deadline)
      conn_close_handles(c);
    else
      conn_arm_timer(c);
    return;
  }
  if (c->ended)
    return;
  if (!c->established && now >= c->hs_deadline) {
    conn_end(c, SP_ERR_TIMEDOUT,
             c->tls_done ? "timed out waiting for the peer's HTTP/2 SETTINGS"
                         : "TLS handshake timed out");
    return;
  }
  if (c->closing && now >= c->shutdown_deadline) {
    conn_end(c, c->cli ? 0 : SP_ERR_CANCELED, "graceful close timed out");
    return;
  }
  if (c->established && c->cfg->ping_interval_ms) {
    if (c->ping_outstanding &&
        now >= c->ping_sent + c->cfg->ping_timeout_ms) {
      conn_end(c, SP_ERR_TIMEDOUT, "the peer did not answer PING in time");
      return;
    }
    if (!c->ping_outstanding && now >= c->ping_due) {
      if (nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL) == 0) {
        c->ping_outstanding = 1;
        c->ping_sent = now;
        c->ping_sent_hr = uv_hrtime();
        conn_schedule(c);
      } else {
        c->ping_due = now + c->cfg->ping_interval_ms;
      }
    }
  }
  conn_arm_timer(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  sp_h2_conn *c = CONTAINER_OF((uv_tcp_t *)h, sp_h2_conn, tcp);
  buf->base = c->srv ? c->srv->rbuf : c->cli->rbuf;
  buf->len = READ_BUF_SIZE;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  sp_h2_conn *c = CONTAINER_OF((uv_tcp_t *)s, sp_h2_conn, tcp);
  if (c->handles_closing)
    return;
  if (nread > 0) {
    conn_input(c, buf->base, (size_t)nread);
    return;
  }
  if (nread == 0)
    return;
  c->eof = 1;
  if (c->lingering) {
    conn_close_handles(c);
    return;
  }
  if (nread == UV_EOF)
    conn_peer_closed(c, c->tls_done ? "the peer closed the connection"
                                    : "the peer closed the connection during "
                                      "the TLS handshake");
  else
    conn_end(c, SP_ERR_CONNRESET, uv_strerror((int)nread));
  /* conn_end's flush closes once the output is out (c->eof) */
}

static void conn_set_addr(sp_h2_conn *c) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[48] = "?";
  int port = 0;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
  }
  snprintf(c->addr, sizeof c->addr, "%s:%d", ip, port);
}

/* ---- server ---------------------------------------------------------------- */

static void server_maybe_done(sp_h2_server *srv) {
  if (!srv->closing || srv->nconns || srv->nhandles)
    return;
  if (srv->done)
    srv->done(srv, srv->done_arg);
  nghttp2_session_callbacks_del(srv->cbs);
  sp_free(srv->rbuf);
  sp_free(srv);
}

static void on_server_conn_closed(uv_handle_t *h) {
  sp_h2_conn *c = h->data;
  if (--c->nclose)
    return;
  sp_h2_server *srv = c->srv;
  conn_engine_release(c);
  sp_list_del(&c->link);
  srv->nconns--;
  sp_free(c);
  server_maybe_done(srv);
}

static void on_client_handle_closed(uv_handle_t *h);

/* Closes the connection's handles (all of a server connection's; a
 * client's socket only: its timer and flusher go with the client). */
static void conn_close_handles(sp_h2_conn *c) {
  if (c->loop == NULL)
    return;
  if (c->srv) {
    if (c->handles_closing)
      return;
    c->handles_closing = 1;
    c->nclose = 3;
    c->tcp.data = c->timer.data = c->flusher.data = c;
    uv_close((uv_handle_t *)&c->tcp, on_server_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_server_conn_closed);
    uv_close((uv_handle_t *)&c->flusher, on_server_conn_closed);
    return;
  }
  if (c->handles_closing)
    return;
  c->handles_closing = 1;
  uv_timer_stop(&c->timer);
  c->tcp.data = c->cli;
  uv_close((uv_handle_t *)&c->tcp, on_client_handle_closed);
}

static void reject_closed(uv_handle_t *h) { sp_free(h); }

static void on_connection(uv_stream_t *ls, int status) {
  sp_h2_server *srv = CONTAINER_OF((uv_tcp_t *)ls, sp_h2_server, listener);
  if (status < 0) {
    sp_log_warn("h2 accept failed", "{s:s}", "error", uv_strerror(status));
    return;
  }
  sp_h2_conn *c = NULL;
  if (!srv->closing && srv->nconns < srv->cfg.max_connections)
    c = sp_calloc(1, sizeof *c);
  if (c) {
    c->srv = srv;
    if (conn_engine_init(c, &srv->cfg, srv->tls, NULL, srv->cbs)) {
      sp_free(c);
      c = NULL;
    }
  }
  if (c == NULL) {
    /* over the cap or out of memory: take it and close it at once */
    uv_tcp_t *t = sp_malloc(sizeof *t);
    if (t == NULL)
      return; /* stays in the backlog */
    uv_tcp_init(srv->loop, t);
    if (uv_accept(ls, (uv_stream_t *)t) == 0)
      sp_log_warn("h2 connection refused", "{s:s}", "reason",
                  srv->closing ? "closing" : "max_connections or memory");
    uv_close((uv_handle_t *)t, reject_closed);
    return;
  }
  c->loop = srv->loop;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  uv_prepare_init(srv->loop, &c->flusher);
  sp_list_add(&srv->conns, &c->link);
  srv->nconns++;
  if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
    c->ended = 1;
    conn_close_handles(c);
    return;
  }
  c->connected = 1;
  uv_tcp_nodelay(&c->tcp, 1);
  conn_set_addr(c);
  c->hs_deadline = uv_now(srv->loop) + srv->cfg.handshake_timeout_ms;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    conn_end(c, SP_ERR_IO, "cannot read");
    return;
  }
  conn_arm_timer(c);
}

int sp_h2_server_new(uv_loop_t *loop, sp_tls_ctx *tls, const sp_h2_config *cfg,
                     sp_h2_request_cb on_request, void *arg,
                     sp_h2_server **out) {
  sp_h2_config def;
  if (cfg == NULL) {
    sp_h2_config_init(&def);
    cfg = &def;
  }
  if (tls == NULL || !sp_tls_ctx_is_server(tls) || on_request == NULL)
    return SP_ERR_INVAL;
  int rc = check_config(cfg);
  if (rc)
    return rc;
  if (loop) /* a peer that resets must cost an EPIPE, not the process */
    signal(SIGPIPE, SIG_IGN);
  rc = SP_ERR_NOMEM;
  sp_h2_server *srv = sp_calloc(1, sizeof *srv);
  if (srv == NULL)
    goto fail_alloc;
  srv->loop = loop;
  srv->tls = tls;
  srv->cfg = *cfg;
  srv->on_request = on_request;
  srv->arg = arg;
  sp_list_init(&srv->conns);
  if (make_callbacks(&srv->cbs))
    goto fail_cbs;
  if (loop) {
    srv->rbuf = sp_malloc(READ_BUF_SIZE);
    if (srv->rbuf == NULL)
      goto fail_rbuf;
    /* the listener exists from here, so close always has a handle to
     * finish on */
    uv_tcp_init(loop, &srv->listener);
    srv->nhandles = 1;
  }
  *out = srv;
  return 0;

fail_rbuf:
  nghttp2_session_callbacks_del(srv->cbs);
fail_cbs:
  sp_free(srv);
fail_alloc:
  return rc;
}

int sp_h2_server_listen(sp_h2_server *srv, const char *addr, int port) {
  if (srv->loop == NULL || addr == NULL || port < 0 || port > 65535)
    return SP_ERR_INVAL;
  if (srv->listening || srv->closing)
    return SP_ERR_BUSY;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) != 0)
    return SP_ERR_INVAL;
  int rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
  if (rc)
    return rc;
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen) ==
      0)
    srv->port = ntohs(bound.ss_family == AF_INET
                          ? ((struct sockaddr_in *)&bound)->sin_port
                          : ((struct sockaddr_in6 *)&bound)->sin6_port);
  srv->listening = 1;
  return 0;
}

int sp_h2_server_port(const sp_h2_server *srv) {
  return srv->listening ? srv->port : 0;
}

size_t sp_h2_server_connections(const sp_h2_server *srv) {
  return srv->nconns;
}

/* GOAWAY now: streams already begun finish, the connection ends after. */
static void conn_begin_close(sp_h2_conn *c) {
  if (c->ended || c->closing)
    return;
  if (!c->established) {
    conn_end(c, SP_ERR_CANCELED, "closing before the handshake finished");
    return;
  }
  c->closing = 1;
  c->goaway_queued = 1;
  if (nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE,
                            nghttp2_session_get_last_proc_stream_id(c->ng),
                            NGHTTP2_NO_ERROR, NULL, 0) != 0) {
    conn_end(c, SP_ERR_NOMEM, "cannot queue GOAWAY");
    return;
  }
  if (c->loop) {
    c->shutdown_deadline = uv_now(c->loop) + c->cfg->shutdown_timeout_ms;
    conn_arm_timer(c);
  }
  conn_schedule(c);
}

static void on_listener_closed(uv_handle_t *h) {
  sp_h2_server *srv = CONTAINER_OF((uv_tcp_t *)h, sp_h2_server, listener);
  srv->nhandles--;
  server_maybe_done(srv);
}

int sp_h2_server_close(sp_h2_server *srv, sp_h2_server_done_cb done,
                       void *arg) {
  if (srv->loop == NULL)
    return SP_ERR_INVAL;
  if (srv->closing)
    return SP_ERR_BUSY;
  srv->closing = 1;
  srv->done = done;
  srv->done_arg = arg;
  for (h2_link *l = srv->conns.next; l != &srv->conns; l = l->next)
    conn_begin_close(CONTAINER_OF(l, sp_h2_conn, link));
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
  return 0;
}

void sp_h2_server_free(sp_h2_server *srv) {
  if (srv == NULL)
    return;
  nghttp2_session_callbacks_del(srv->cbs);
  sp_free(srv->rbuf);
  sp_free(srv);
}

/* ---- server streams -------------------------------------------------------- */

static const char *hf_str(const sp_h2_stream *st, uint32_t off) {
  return off == NO_OFF ? "" : st->hf.buf.base + off;
}

const char *sp_h2_stream_method(const sp_h2_stream *st) {
  return hf_str(st, st->off_method);
}
const char *sp_h2_stream_path(const sp_h2_stream *st) {
  return hf_str(st, st->off_path);
}
const char *sp_h2_stream_authority(const sp_h2_stream *st) {
  return hf_str(st, st->off_authority);
}
const char *sp_h2_stream_peer(const sp_h2_stream *st) { return st->peer; }
const char *sp_h2_stream_header(const sp_h2_stream *st, const char *name) {
  return hf_get(&st->hf, name);
}
const sp_h2_header *sp_h2_stream_headers(const sp_h2_stream *st, size_t *n) {
  *n = st->hf.n;
  return st->hf.view;
}
sp_iov sp_h2_stream_body(const sp_h2_stream *st) {
  return (sp_iov){st->body.base, st->body.len};
}
void sp_h2_stream_on_abort(sp_h2_stream *st, sp_h2_abort_cb cb, void *arg) {
  st->abort_cb = cb;
  st->abort_arg = arg;
}

/* A header field we may send: a lowercase token name that is not a
 * pseudo-header, not one we set, not connection-specific; a clean value. */
static int header_ok(const sp_h2_header *h) {
  static const char *const banned[] = {
      "content-length", "connection", "keep-alive", "proxy-connection",
      "transfer-encoding", "upgrade", "te", "host"};
  if (h->name == NULL || h->value == NULL || h->name[0] == '\0' ||
      h->name[0] == ':')
    return 0;
  size_t nlen = strlen(h->name);
  if (!nghttp2_check_header_name((const uint8_t *)h->name, nlen) ||
      !nghttp2_check_header_value((const uint8_t *)h->value,
                                  strlen(h->value)))
    return 0;
  for (size_t i = 0; i < nlen; i++)
    if (h->name[i] >= 'A' && h->name[i] <= 'Z')
      return 0;
  for (size_t i = 0; i < sizeof banned / sizeof banned[0]; i++)
    if (strcmp(h->name, banned[i]) == 0)
      return 0;
  return 1;
}

static nghttp2_nv mknv(const char *name, const char *value) {
  return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name),
                      strlen(value), NGHTTP2_NV_FLAG_NONE};
}

/* Resets a stream we will not answer normally; consumes it. */
static int stream_reset(sp_h2_stream *st, uint32_t code) {
  sp_h2_conn *c = st->conn;
  if (c == NULL || c->ended) {
    stream_free(st);
    return SP_ERR_CLOSED;
  }
  st->state = ST_DONE;
  submit_rst(c, st->id, code);
  return 0;
}

int sp_h2_respond(sp_h2_stream *st, int status, const sp_h2_header *hdrs,
                  size_t nhdrs, const void *body, size_t len) {
  sp_h2_conn *c = st->conn;
  if (c == NULL) { /* detached: the client or connection went first */
    stream_free(st);
    return SP_ERR_CLOSED;
  }
  int bad = status < 200 || status > 599 || nhdrs > SP_H2_MAX_HEADERS ||
            (hdrs == NULL && nhdrs) || (body == NULL && len);
  for (size_t i = 0; !bad && i < nhdrs; i++)
    bad = !header_ok(&hdrs[i]);
  if (bad) {
    stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    return SP_ERR_INVAL;
  }
  /* copy first: the body may be the request's own (an echo) */
  if (len && sp_buf_add(&st->resp, body, len)) {
    stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    return SP_ERR_NOMEM;
  }
  sp_buf_release(&st->body);
  char sbuf[8], lbuf[24];
  snprintf(sbuf, sizeof sbuf, "%d", status);
  snprintf(lbuf, sizeof lbuf, "%zu", len);
  nghttp2_nv nv[SP_H2_MAX_HEADERS + 2];
  size_t n = 0;
  nv[n++] = mknv(":status", sbuf);
  nv[n++] = mknv("content-length", lbuf);
  for (size_t i = 0; i < nhdrs; i++)
    nv[n++] = mknv(hdrs[i].name, hdrs[i].value);
  nghttp2_data_provider prd = {.source.ptr = st, .read_callback =
                                                     srv_read_body};
  st->state = ST_DONE;
  /* nghttp2 copies the fields */
  int rc = nghttp2_submit_response(c->ng, st->id, nv, n, len ? &prd : NULL);
  if (rc) {
    submit_rst(c, st->id, NGHTTP2_INTERNAL_ERROR);
    return rc == NGHTTP2_ERR_NOMEM ? SP_ERR_NOMEM : SP_ERR_CLOSED;
  }
  conn_schedule(c);
  return 0;
}

int sp_h2_stream_reset(sp_h2_stream *st) {
  if (st->conn && st->state != ST_HANDLER)
    return SP_ERR_CLOSED;
  return stream_reset(st, NGHTTP2_REFUSED_STREAM);
}

/* ---- memory connections ---------------------------------------------------- */

int sp_h2_conn_mem_new(sp_h2_server *srv, sp_h2_conn **out) {
  if (srv->loop)
    return SP_ERR_INVAL;
  sp_h2_conn *c = sp_calloc(1, sizeof *c);
  if (c == NULL)
    return SP_ERR_NOMEM;
  c->srv = srv;
  int rc = conn_engine_init(c, &srv->cfg, srv->tls, NULL, srv->cbs);
  if (rc) {
    sp_free(c);
    return rc;
  }
  snprintf(c->addr, sizeof c->addr, "memory");
  c->connected = 1;
  sp_list_add(&srv->conns, &c->link);
  srv->nconns++;
  *out = c;
  return 0;
}

int sp_h2_conn_mem_feed(sp_h2_conn *c, const void *data, size_t len) {
  if (c->ended)
    return SP_ERR_CLOSED;
  conn_input(c, data, len);
  return 0;
}

sp_iov sp_h2_conn_mem_output(const sp_h2_conn *c) {
  return (sp_iov){c->out.base, c->out.len};
}

void sp_h2_conn_mem_consume(sp_h2_conn *c, size_t n) {
  sp_buf_consume(&c->out, n < c->out.len ? n : c->out.len);
  if (!c->ended)
    conn_pump(c); /* more may wait above the high water mark */
}

int sp_h2_conn_mem_ended(const sp_h2_conn *c, int *err, const char **reason) {
  if (!c->ended)
    return 0;
  if (err)
    *err = c->end_err;
  if (reason)
    *reason = c->end_reason;
  return 1;
}

void sp_h2_conn_mem_free(sp_h2_conn *c) {
  if (c == NULL)
    return;
  conn_end(c, SP_ERR_CONNRESET, "closed");
  sp_list_del(&c->link);
  c->srv->nconns--;
  conn_engine_release(c);
  sp_free(c);
}

/* ---- client ---------------------------------------------------------------- */

static void client_free(sp_h2_client *cli) {
  sp_h2_client_done_cb done = cli->done;
  void *arg = cli->done_arg;
  if (done)
    done(cli, arg);
  conn_engine_release(&cli->conn);
  nghttp2_session_callbacks_del(cli->cbs);
  sp_free(cli->peer_name);
  sp_free(cli);
}

static void on_client_handle_closed(uv_handle_t *h) {
  sp_h2_client *cli = h->data;
  sp_h2_conn *c = &cli->conn;
  if (h == (uv_handle_t *)&c->tcp) {
    c->tcp_closed = 1;
    if (!cli->closing)
      return;
    c->nclose = 2;
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->flusher, on_client_handle_closed);
    return;
  }
  if (--c->nclose == 0)
    client_free(cli);
}

static void on_connect(uv_connect_t *req, int status) {
  sp_h2_conn *c = CONTAINER_OF(req, sp_h2_conn, creq);
  if (status == UV_ECANCELED || c->ended)
    return;
  if (status < 0) {
    char why[2 * REASON_LEN];
    snprintf(why, sizeof why, "cannot connect: %s", uv_strerror(status));
    conn_end(c, status, why);
    return;
  }
  c->connected = 1;
  uv_tcp_nodelay(&c->tcp, 1);
  conn_set_addr(c);
  int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (rc) {
    conn_end(c, rc, "cannot read");
    return;
  }
  rc = sp_tls_handshake(c->tls); /* the ClientHello */
  if (sp_tls_take_output(c->tls, &c->out) != 0) {
    conn_end(c, SP_ERR_NOMEM, "cannot queue TLS output");
    return;
  }
  if (rc != SP_ERR_AGAIN && rc != 0) {
    conn_end(c, rc, sp_tls_reason(c->tls));
    return;
  }
  flush(c);
}

int sp_h2_client_new(uv_loop_t *loop, sp_tls_ctx *tls, const sp_h2_config *cfg,
                     const char *host, int port, const char *peer_name,
                     sp_h2_state_cb on_state, void *arg, sp_h2_client **out) {
  sp_h2_config def;
  if (cfg == NULL) {
    sp_h2_config_init(&def);
    cfg = &def;
  }
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (loop == NULL || tls == NULL || sp_tls_ctx_is_server(tls) ||
      on_state == NULL || host == NULL || peer_name == NULL ||
      peer_name[0] == '\0' || port <= 0 || port > 65535 ||
      (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
       uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0))
    return SP_ERR_INVAL;
  int rc = check_config(cfg);
  if (rc)
    return rc;
  signal(SIGPIPE, SIG_IGN); /* as the server */
  rc = SP_ERR_NOMEM;
  sp_h2_client *cli = sp_calloc(1, sizeof *cli);
  if (cli == NULL)
    goto fail_alloc;
  cli->tls = tls;
  cli->cfg = *cfg;
  cli->on_state = on_state;
  cli->arg = arg;
  cli->peer_name = sp_strdup(peer_name);
  if (cli->peer_name == NULL)
    goto fail_name;
  if (make_callbacks(&cli->cbs))
    goto fail_cbs;
  sp_h2_conn *c = &cli->conn;
  c->cli = cli;
  rc = conn_engine_init(c, &cli->cfg, tls, peer_name, cli->cbs);
  if (rc)
    goto fail_engine;
  c->loop = loop;
  snprintf(c->addr, sizeof c->addr, "%s:%d", host, port);
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  uv_prepare_init(loop, &c->flusher);
  c->timer.data = c->flusher.data = cli;
  c->hs_deadline = uv_now(loop) + cfg->handshake_timeout_ms;
  rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&ss, on_connect);
  if (rc) {
    /* reported from the loop, as every other connect failure */
    c->pending_err = rc;
    uv_timer_start(&c->timer, on_timer, 0, 0);
  } else {
    conn_arm_timer(c);
  }
  *out = cli;
  return 0;

fail_engine:
  nghttp2_session_callbacks_del(cli->cbs);
fail_cbs:
  sp_free(cli->peer_name);
fail_name:
  sp_free(cli);
fail_alloc:
  return rc;
}

int sp_h2_client_request(sp_h2_client *cli, const char *method,
                         const char *path, const sp_h2_header *hdrs,
                         size_t nhdrs, const void *body, size_t len,
                         sp_h2_response_cb on_response, void *cb_arg) {
  sp_h2_conn *c = &cli->conn;
  if (method == NULL || method[0] == '\0' || path == NULL ||
      path[0] == '\0' || on_response == NULL || nhdrs > SP_H2_MAX_HEADERS ||
      (hdrs == NULL && nhdrs) || (body == NULL && len))
    return SP_ERR_INVAL;
  for (size_t i = 0; i < nhdrs; i++)
    if (!header_ok(&hdrs[i]))
      return SP_ERR_INVAL;
  if (!nghttp2_check_method((const uint8_t *)method, strlen(method)) ||
      !nghttp2_check_path((const uint8_t *)path, strlen(path)))
    return SP_ERR_INVAL;
  if (c->ended || cli->closing || c->closing || c->goaway_recv)
    return SP_ERR_CLOSED;
  h2_req *r = sp_calloc(1, sizeof *r);
  if (r == NULL)
    return SP_ERR_NOMEM;
  r->conn = c;
  r->cb = on_response;
  r->arg = cb_arg;
  hf_init(&r->hf, cli->cfg.max_header_list_bytes);
  sp_buf_init(&r->rbody, cli->cfg.max_body_bytes);
  if (len) {
    r->body = sp_malloc(len);
    if (r->body == NULL) {
      req_free(r);
      return SP_ERR_NOMEM;
    }
    memcpy(r->body, body, len);
    r->len = len;
  }
  char lbuf[24];
  snprintf(lbuf, sizeof lbuf, "%zu", len);
  nghttp2_nv nv[SP_H2_MAX_HEADERS + 5];
  size_t n = 0;
  nv[n++] = mknv(":method", method);
  nv[n++] = mknv(":scheme", "https");
  nv[n++] = mknv(":authority", cli->peer_name);
  nv[n++] = mknv(":path", path);
  if (len)
    nv[n++] = mknv("content-length", lbuf);
  for (size_t i = 0; i < nhdrs; i++)
    nv[n++] = mknv(hdrs[i].name, hdrs[i].value);
  nghttp2_data_provider prd = {.source.ptr = r, .read_callback =
                                                    cli_read_body};
  int32_t id = nghttp2_submit_request(c->ng, NULL, nv, n, len ? &prd : NULL,
                                      r);
  if (id < 0) {
    req_free(r);
    return id == NGHTTP2_ERR_NOMEM ? SP_ERR_NOMEM : SP_ERR_CLOSED;
  }
  r->id = id;
  sp_list_add(&c->streams, &r->link);
  c->nstreams++;
  if (c->tls_done)
    conn_schedule(c);
  return 0;
}

/* The client's graceful close proceeds once nothing is in flight. */
static void client_goaway_if_idle(sp_h2_conn *c) {
  if (!c->closing || c->goaway_queued || c->nstreams || c->ended)
    return;
  c->goaway_queued = 1;
  if (nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR,
                            NULL, 0) != 0) {
    conn_end(c, 0, "closed");
    return;
  }
  conn_schedule(c);
}

void sp_h2_client_info_get(const sp_h2_client *cli, sp_h2_client_info *info) {
  const sp_h2_conn *c = &cli->conn;
  info->connected = cli->reported_up && !cli->reported_down;
  info->in_flight = c->nstreams;
  info->pings_acked = c->pings_acked;
  info->last_rtt_us = c->last_rtt_us;
  info->output_bytes = c->out.len + c->wbuf.len;
}

int sp_h2_client_close(sp_h2_client *cli, sp_h2_client_done_cb done,
                       void *arg) {
  if (cli->closing)
    return SP_ERR_BUSY;
  cli->closing = 1;
  cli->done = done;
  cli->done_arg = arg;
  sp_h2_conn *c = &cli->conn;
  if (!c->ended) {
    if (!c->established) {
      conn_end(c, 0, "closed before the connection was up");
    } else {
      c->closing = 1;
      c->shutdown_deadline = uv_now(c->loop) + cli->cfg.shutdown_timeout_ms;
      conn_arm_timer(c);
      client_goaway_if_idle(c);
    }
  }
  if (c->tcp_closed) {
    /* the socket is already gone: close the rest now */
    c->nclose = 2;
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->flusher, on_client_handle_closed);
  }
  return 0;
}
