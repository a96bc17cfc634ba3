/* sp_http: the server and its socket glue.  Listening (SO_REUSEPORT),
 * accepting, reading into the shared buffer, flushing output once per loop
 * iteration, per-connection deadlines, the one connection teardown, graceful
 * shutdown and the signal hook.  The protocol itself is in sp_http_conn.c.
 *
 * Ownership: the server owns its connections; a connection's memory is
 * freed only in the close callback of the last of its two uv handles (tcp,
 * timer).  The server's own handles (listener, flusher, shutdown timer,
 * signals) are closed by shutdown, which calls `done` when all are closed.
 *
 * Deadlines are lazy: each connection has one uv_timer, re-armed only when
 * a deadline moves earlier than the time it is armed for; when it fires
 * early the deadline is recomputed and the timer re-armed.  So a busy
 * keep-alive connection does not touch the timer heap per request.
 */
#include "sp_http_internal.h"

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_log.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_SIZE (64 * 1024)
#define KEEP_OUT_BYTES (64 * 1024) /* larger output buffers are freed */

void sp_http_config_init(sp_http_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->max_header_bytes = 16 * 1024;
  cfg->max_body_bytes = 1024 * 1024;
  cfg->header_timeout_ms = 10000;
  cfg->idle_timeout_ms = 60000;
  cfg->linger_timeout_ms = 2000;
  cfg->shutdown_timeout_ms = 10000;
  cfg->max_connections = 10000;
  cfg->max_pipeline = 16;
  cfg->max_pipeline_bytes = 1024 * 1024;
  cfg->out_high_water = 256 * 1024;
  cfg->max_output_bytes = 64 * 1024 * 1024;
  cfg->backlog = 511;
}

uint64_t sp_http_now_ms(const sp_http_server *srv) {
  return srv->loop ? uv_now(srv->loop) : 0;
}

sp_iov sp_http_date_line(sp_http_server *srv) {
  static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed",
                                  "Thu", "Fri", "Sat"};
  static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr",
                                     "May", "Jun", "Jul", "Aug",
                                     "Sep", "Oct", "Nov", "Dec"};
  /* the loop clock moves once per iteration: look at the wall clock at
   * most that often */
  uint64_t loop_ms = sp_http_now_ms(srv);
  if (srv->date_len && srv->loop && loop_ms == srv->date_loop_ms)
    return (sp_iov){srv->date, srv->date_len};
  srv->date_loop_ms = loop_ms;
  time_t now = time(NULL);
  if (srv->date_len == 0 || now != srv->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    int n = snprintf(srv->date, sizeof srv->date,
                     "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                     days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
                     tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    srv->date_len = n > 0 && (size_t)n < sizeof srv->date ? (size_t)n : 0;
    srv->date_sec = now;
  }
  return (sp_iov){srv->date, srv->date_len};
}

/* ---- connection I/O ------------------------------------------------------ */

static void on_conn_closed(uv_handle_t *h);
static void flush(sp_http_conn *c);
static void maybe_finish_shutdown(sp_http_server *srv);
static void accept_one(sp_http_server *srv);

void sp_http_conn_close(sp_http_conn *c) {
  if (c->closed)
    return;
  c->closed = 1;
  sp_list_del(&c->dirty);
  sp_list_del(&c->link);
  /* abort callbacks may run here; c stays valid until the close callbacks */
  sp_http_conn_drop_requests(c);
  if (c->mem)
    return;
  c->nclose = 2;
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_conn_closed(uv_handle_t *h) {
  sp_http_conn *c = h->type == UV_TCP
                        ? SP_CONTAINER_OF((uv_tcp_t *)h, sp_http_conn, tcp)
                        : SP_CONTAINER_OF((uv_timer_t *)h, sp_http_conn, timer);
  if (--c->nclose)
    return;
  sp_http_server *srv = c->srv;
  sp_http_conn_engine_release(c);
  sp_free(c);
  srv->nconns--;
  if (srv->accept_pending && !srv->shutting_down)
    accept_one(srv);
  maybe_finish_shutdown(srv);
}

/* Which deadline applies now, and when. */
static void compute_deadline(sp_http_conn *c) {
  const sp_http_config *cfg = &c->srv->cfg;
  enum sp_http_deadline kind;
  uint64_t at;
  if (c->lingering) {
    kind = DL_LINGER;
    at = c->linger_ms + cfg->linger_timeout_ms;
  } else if (c->qhead && c->qhead->state != REQ_QUEUED) {
    kind = DL_NONE; /* a handler or a stream owns the pace */
    at = 0;
  } else if (c->writing || c->out.len || c->close_after_write || c->qhead) {
    /* output pending, or requests held back until the client reads it */
    kind = DL_OUTPUT;
    at = c->activity_ms + cfg->idle_timeout_ms;
  } else if (c->parsing && !c->in_body) {
    kind = DL_HEADER;
    at = c->head_start_ms + cfg->header_timeout_ms;
  } else if (c->parsing) {
    kind = DL_BODY;
    at = c->activity_ms + cfg->idle_timeout_ms;
  } else {
    kind = DL_IDLE;
    at = c->activity_ms + cfg->idle_timeout_ms;
  }
  c->deadline_kind = kind;
  c->deadline_ms = at;
}

static void on_timer(uv_timer_t *t);

static void arm_timer(sp_http_conn *c) {
  if (c->deadline_kind == DL_NONE)
    return;
  if (c->timer_due_ms && c->deadline_ms >= c->timer_due_ms)
    return; /* fires earlier anyway; on_timer re-arms */
  uint64_t now = uv_now(c->srv->loop);
  uint64_t delay = c->deadline_ms > now ? c->deadline_ms - now : 0;
  uv_timer_start(&c->timer, on_timer, delay, 0);
  c->timer_due_ms = now + delay;
  if (c->timer_due_ms == 0)
    c->timer_due_ms = 1;
}

static void expire(sp_http_conn *c) {
  switch (c->deadline_kind) {
  case DL_HEADER:
    sp_http_conn_fail(c, 408, "timed out reading request headers");
    break;
  case DL_BODY:
    sp_http_conn_fail(c, 408, "timed out reading request body");
    break;
  default:
    sp_http_conn_close(c);
    break;
  }
}

static void on_timer(uv_timer_t *t) {
  sp_http_conn *c = SP_CONTAINER_OF(t, sp_http_conn, timer);
  c->timer_due_ms = 0;
  if (c->closed)
    return;
  compute_deadline(c);
  if (c->deadline_kind != DL_NONE && uv_now(c->srv->loop) >= c->deadline_ms) {
    expire(c);
    return;
  }
  arm_timer(c);
}

static void on_shutdown_done(uv_shutdown_t *req, int status) {
  sp_http_conn *c = SP_CONTAINER_OF(req, sp_http_conn, sreq);
  if (c->closed)
    return;
  if (status < 0 || c->eof) {
    sp_http_conn_close(c);
    return;
  }
  /* drain what the client still sends, so our close does not turn into a
   * reset that destroys the response before the client reads it */
  c->lingering = 1;
  c->stop_parsing = 1;
  c->linger_ms = uv_now(c->srv->loop);
  sp_http_conn_io_update(c);
}

static void begin_close(sp_http_conn *c) {
  c->shutdown_sent = 1;
  if (c->eof) {
    sp_http_conn_close(c);
    return;
  }
  if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown_done))
    sp_http_conn_close(c);
}

static void mem_update(sp_http_conn *c) {
  if (c->close_after_write && c->out.len == 0)
    sp_http_conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  sp_http_conn *c = SP_CONTAINER_OF((uv_tcp_t *)h, sp_http_conn, tcp);
  buf->base = c->srv->rbuf;
  buf->len = c->srv->rbuf_size;
}

static void on_eof(sp_http_conn *c) {
  c->eof = 1;
  if (c->qhead && c->qhead->state != REQ_QUEUED) {
    /* the client left while its request is in a handler */
    sp_http_conn_close(c);
    return;
  }
  if (c->out.len || c->writing) {
    /* answers already made still go out (a client may half-close) */
    sp_http_conn_drop_queued(c);
    c->close_after_write = 1;
    sp_http_conn_io_update(c);
    return;
  }
  sp_http_conn_close(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  sp_http_conn *c = SP_CONTAINER_OF((uv_tcp_t *)s, sp_http_conn, tcp);
  if (c->closed)
    return;
  if (nread > 0) {
    size_t n = (size_t)nread;
    c->activity_ms = uv_now(c->srv->loop);
    if (c->stop_parsing || c->lingering)
      return; /* discarding */
    if (c->feed_paused || c->in.len) {
      if (sp_buf_add(&c->in, buf->base, n))
        sp_http_conn_close(c);
      return;
    }
    size_t got = sp_http_conn_feed(c, buf->base, n);
    if (!c->closed && got < n && !c->stop_parsing &&
        sp_buf_add(&c->in, buf->base + got, n - got)) {
      sp_http_conn_close(c);
      return;
    }
    sp_http_conn_run(c);
    return;
  }
  if (nread == 0)
    return;
  if (nread == UV_EOF && !c->lingering) {
    on_eof(c);
    return;
  }
  sp_http_conn_close(c); /* reset, or the end of a lingering close */
}

void sp_http_conn_io_update(sp_http_conn *c) {
  if (c->closed)
    return;
  if (c->mem) {
    mem_update(c);
    return;
  }
  sp_http_server *srv = c->srv;
  if (c->out.len && !c->writing && c->dirty.prev == NULL)
    sp_list_add(&srv->dirty, &c->dirty);
  if (c->close_after_write && !c->shutdown_sent && !c->out.len &&
      !c->writing) {
    begin_close(c);
    if (c->closed)
      return;
  }
  int want = !c->feed_paused && !c->eof;
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
      sp_http_conn_close(c);
      return;
    }
    c->reading = 1;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  compute_deadline(c);
  arm_timer(c);
}

static void after_drain(sp_http_conn *c) {
  /* a request held back by the high-water mark may start now */
  sp_http_conn_run(c);
}

static void on_write(uv_write_t *w, int status) {
  sp_http_conn *c = SP_CONTAINER_OF(w, sp_http_conn, wreq);
  c->writing = 0;
  if (c->closed)
    return;
  if (status < 0) {
    sp_http_conn_close(c);
    return;
  }
  if (c->wbuf.len > KEEP_OUT_BYTES)
    sp_buf_release(&c->wbuf);
  else
    sp_buf_reset(&c->wbuf);
  c->activity_ms = uv_now(c->srv->loop);
  if (c->out.len)
    flush(c);
  else
    after_drain(c);
}

static void flush(sp_http_conn *c) {
  if (c->closed || c->writing)
    return;
  if (c->out.len == 0) {
    after_drain(c);
    return;
  }
  uv_buf_t b = uv_buf_init(c->out.base, (unsigned)c->out.len);
  int n = c->out.len > UINT32_MAX ? UV_EAGAIN
                                  : uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
  if (n == UV_EAGAIN)
    n = 0;
  if (n < 0) {
    sp_http_conn_close(c);
    return;
  }
  if (n > 0)
    c->activity_ms = uv_now(c->srv->loop);
  if ((size_t)n == c->out.len) {
    if (c->out.len > KEEP_OUT_BYTES)
      sp_buf_release(&c->out);
    else
      sp_buf_reset(&c->out);
    after_drain(c);
    return;
  }
  /* the rest goes with uv_write from wbuf; new output collects in out */
  sp_buf tmp = c->wbuf;
  c->wbuf = c->out;
  c->out = tmp;
  b = uv_buf_init(c->wbuf.base + n, (unsigned)(c->wbuf.len - (size_t)n));
  if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write)) {
    sp_http_conn_close(c);
    return;
  }
  c->writing = 1;
  sp_http_conn_io_update(c);
}

/* Before the loop sleeps: write what this iteration produced. */
static void on_prepare(uv_prepare_t *h) {
  sp_http_server *srv = SP_CONTAINER_OF(h, sp_http_server, flusher);
  while (srv->dirty.next != &srv->dirty) {
    sp_http_link *l = srv->dirty.next;
    sp_list_del(l);
    flush(SP_CONTAINER_OF(l, sp_http_conn, dirty));
  }
}

/* ---- accepting ---------------------------------------------------------- */

static void on_reject_closed(uv_handle_t *h) { sp_free(h); }

static void accept_one(sp_http_server *srv) {
  uv_stream_t *ls = (uv_stream_t *)&srv->listener;
  srv->accept_pending = 0;
  if (srv->shutting_down || srv->nconns >= srv->cfg.max_connections) {
    /* over the cap: take it and close it, so the client learns at once */
    uv_tcp_t *t = sp_malloc(sizeof *t);
    if (t == NULL) {
      srv->accept_pending = 1; /* left in libuv until a connection closes */
      return;
    }
    uv_tcp_init(srv->loop, t);
    (void)uv_accept(ls, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, on_reject_closed);
    return;
  }
  sp_http_conn *c = sp_calloc(1, sizeof *c);
  if (c == NULL) {
    srv->accept_pending = 1;
    return;
  }
  sp_http_conn_engine_init(c, srv);
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  sp_list_add(&srv->conns, &c->link);
  srv->nconns++;
  c->activity_ms = uv_now(srv->loop);
  if (uv_accept(ls, (uv_stream_t *)&c->tcp)) {
    sp_http_conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  sp_http_conn_io_update(c);
}

static void on_connection(uv_stream_t *ls, int status) {
  sp_http_server *srv = SP_CONTAINER_OF((uv_tcp_t *)ls, sp_http_server,
                                        listener);
  if (status < 0) {
    sp_log_warn("http accept failed", "{s:s}", "error", uv_strerror(status));
    return;
  }
  accept_one(srv);
}

/* ---- server lifecycle ------------------------------------------------------ */

static int check_config(const sp_http_config *c) {
  if (c->max_header_bytes < 256 || c->max_header_bytes > (1u << 24) ||
      c->max_body_bytes > ((size_t)1 << 40) || c->header_timeout_ms == 0 ||
      c->idle_timeout_ms == 0 || c->linger_timeout_ms == 0 ||
      c->shutdown_timeout_ms == 0 || c->max_connections == 0 ||
      c->max_pipeline == 0 || c->max_output_bytes < 65536 ||
      c->out_high_water > c->max_output_bytes || c->backlog <= 0)
    return SP_ERR_CONFIG;
  return 0;
}

int sp_http_server_new(uv_loop_t *loop, const sp_http_config *cfg,
                       const sp_http_route *routes, size_t nroutes, void *app,
                       sp_http_server **out) {
  sp_http_config def;
  if (cfg == NULL) {
    sp_http_config_init(&def);
    cfg = &def;
  }
  int rc = check_config(cfg);
  if (rc)
    return rc;
  /* a peer that resets must cost us an EPIPE, not the process */
  signal(SIGPIPE, SIG_IGN);

  sp_http_server *srv = sp_calloc(1, sizeof *srv);
  if (srv == NULL)
    return SP_ERR_NOMEM;
  srv->loop = loop;
  srv->cfg = *cfg;
  srv->app = app;
  sp_list_init(&srv->conns);
  sp_list_init(&srv->dirty);
  rc = sp_http_route_table_new(routes, nroutes, &srv->routes);
  if (rc)
    goto fail_routes;
  srv->rbuf_size = READ_BUF_SIZE;
  if (loop) {
    srv->rbuf = sp_malloc(srv->rbuf_size);
    if (srv->rbuf == NULL) {
      rc = SP_ERR_NOMEM;
      goto fail_rbuf;
    }
    uv_prepare_init(loop, &srv->flusher);
    uv_prepare_start(&srv->flusher, on_prepare);
    uv_unref((uv_handle_t *)&srv->flusher);
    uv_timer_init(loop, &srv->shutdown_timer);
    srv->nhandles = 2;
  }
  *out = srv;
  return 0;

fail_rbuf:
  sp_http_route_table_free(srv->routes);
fail_routes:
  sp_free(srv);
  return rc;
}

static void on_server_handle_closed(uv_handle_t *h) {
  sp_http_server *srv = h->data;
  if (--srv->nhandles == 0 && srv->handles_closing && srv->done)
    srv->done(srv, srv->done_arg);
}

static void close_server_handle(sp_http_server *srv, uv_handle_t *h) {
  h->data = srv;
  uv_close(h, on_server_handle_closed);
}

int sp_http_server_listen(sp_http_server *srv, const char *addr, int port) {
  if (srv->loop == NULL || addr == NULL || port < 0 || port > 65535)
    return SP_ERR_INVAL;
  if (srv->listening || srv->shutting_down)
    return SP_ERR_BUSY;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  int af;
  socklen_t alen;
  if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) == 0) {
    af = AF_INET;
    alen = sizeof(struct sockaddr_in);
  } else if (uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) == 0) {
    af = AF_INET6;
    alen = sizeof(struct sockaddr_in6);
  } else {
    return SP_ERR_INVAL;
  }
  /* libuv 1.44 has no UV_TCP_REUSEPORT: make the socket ourselves */
  int fd = socket(af, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1, rc;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
      (af == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one)) ||
      bind(fd, (struct sockaddr *)&ss, alen)) {
    rc = -errno;
    goto fail_fd;
  }
  uv_tcp_init(srv->loop, &srv->listener);
  srv->nhandles++;
  srv->listening = 1;
  srv->listener_open = 1;
  rc = uv_tcp_open(&srv->listener, fd);
  if (rc)
    goto fail_handle_fd;
  rc = uv_listen((uv_stream_t *)&srv->listener, srv->cfg.backlog,
                 on_connection);
  if (rc)
    goto fail_handle;
  struct sockaddr_storage bound;
  int blen = sizeof bound;
  if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &blen) ==
      0)
    srv->port = ntohs(af == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                    : ((struct sockaddr_in6 *)&bound)->sin6_port);
  return 0;

fail_handle_fd:
  close(fd);
fail_handle:
  /* the handle is spent (closing); the server cannot listen again */
  srv->listener_open = 0;
  close_server_handle(srv, (uv_handle_t *)&srv->listener);
  return rc;
fail_fd:
  close(fd);
  return rc;
}

int sp_http_server_port(const sp_http_server *srv) {
  return srv->listener_open ? srv->port : 0;
}

size_t sp_http_server_connections(const sp_http_server *srv) {
  return srv->nconns;
}

static void maybe_finish_shutdown(sp_http_server *srv) {
  if (!srv->shutting_down || srv->nconns || srv->handles_closing)
    return;
  srv->handles_closing = 1;
  close_server_handle(srv, (uv_handle_t *)&srv->flusher);
  close_server_handle(srv, (uv_handle_t *)&srv->shutdown_timer);
}

static void on_shutdown_deadline(uv_timer_t *t) {
  sp_http_server *srv = SP_CONTAINER_OF(t, sp_http_server, shutdown_timer);
  while (srv->conns.next != &srv->conns)
    sp_http_conn_close(SP_CONTAINER_OF(srv->conns.next, sp_http_conn, link));
}

int sp_http_server_shutdown(sp_http_server *srv, sp_http_shutdown_cb done,
                            void *arg) {
  if (srv->loop == NULL)
    return SP_ERR_INVAL;
  if (srv->shutting_down)
    return SP_ERR_BUSY;
  srv->shutting_down = 1;
  srv->done = done;
  srv->done_arg = arg;
  if (srv->listener_open) {
    srv->listener_open = 0;
    close_server_handle(srv, (uv_handle_t *)&srv->listener);
  }
  if (srv->signals) {
    srv->signals = 0;
    close_server_handle(srv, (uv_handle_t *)&srv->sigterm);
    close_server_handle(srv, (uv_handle_t *)&srv->sigint);
  }
  uv_timer_start(&srv->shutdown_timer, on_shutdown_deadline,
                 srv->cfg.shutdown_timeout_ms, 0);
  /* Move every connection to a private list and take them one by one, so
   * abort callbacks that close other connections cannot break the walk. */
  sp_http_link todo;
  sp_list_init(&todo);
  if (srv->conns.next != &srv->conns) {
    todo.next = srv->conns.next;
    todo.prev = srv->conns.prev;
    todo.next->prev = &todo;
    todo.prev->next = &todo;
    sp_list_init(&srv->conns);
  }
  while (todo.next != &todo) {
    sp_http_link *l = todo.next;
    sp_list_del(l);
    sp_list_add(&srv->conns, l);
    sp_http_conn *c = SP_CONTAINER_OF(l, sp_http_conn, link);
    int in_handler = c->qhead && c->qhead->state != REQ_QUEUED;
    if (in_handler) {
      sp_http_conn_drop_queued(c); /* its answer will say close */
      sp_http_conn_io_update(c);
    } else if (c->out.len || c->writing || c->close_after_write) {
      sp_http_conn_drop_queued(c); /* answers made still go out */
      c->close_after_write = 1;
      sp_http_conn_io_update(c);
    } else {
      sp_http_conn_close(c);
    }
  }
  maybe_finish_shutdown(srv);
  return 0;
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  sp_http_server *srv = h->data;
  sp_log_info("http shutdown on signal", "{s:i}", "signal", signum);
  (void)sp_http_server_shutdown(srv, srv->sig_done, srv->sig_arg);
}

int sp_http_server_handle_signals(sp_http_server *srv,
                                  sp_http_shutdown_cb done, void *arg) {
  if (srv->loop == NULL)
    return SP_ERR_INVAL;
  if (srv->signals || srv->shutting_down)
    return SP_ERR_BUSY;
  srv->sig_done = done;
  srv->sig_arg = arg;
  int rc = uv_signal_init(srv->loop, &srv->sigterm);
  if (rc)
    return rc;
  rc = uv_signal_init(srv->loop, &srv->sigint);
  if (rc)
    goto fail_sigint;
  srv->nhandles += 2;
  srv->signals = 1;
  srv->sigterm.data = srv;
  srv->sigint.data = srv;
  rc = uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
  if (rc == 0)
    rc = uv_signal_start(&srv->sigint, on_signal, SIGINT);
  if (rc) {
    srv->signals = 0;
    close_server_handle(srv, (uv_handle_t *)&srv->sigterm);
    close_server_handle(srv, (uv_handle_t *)&srv->sigint);
    return rc;
  }
  uv_unref((uv_handle_t *)&srv->sigterm);
  uv_unref((uv_handle_t *)&srv->sigint);
  return 0;

fail_sigint:
  srv->nhandles++;
  close_server_handle(srv, (uv_handle_t *)&srv->sigterm);
  return rc;
}

void sp_http_server_free(sp_http_server *srv) {
  if (srv == NULL)
    return;
  sp_http_req_pool_drain(srv);
  sp_http_route_table_free(srv->routes);
  sp_free(srv->rbuf);
  sp_free(srv);
}

/* ---- memory connections ------------------------------------------------- */

int sp_http_conn_mem_new(sp_http_server *srv, sp_http_conn **out) {
  if (srv->loop)
    return SP_ERR_INVAL;
  sp_http_conn *c = sp_calloc(1, sizeof *c);
  if (c == NULL)
    return SP_ERR_NOMEM;
  c->mem = 1;
  sp_http_conn_engine_init(c, srv);
  sp_list_add(&srv->conns, &c->link);
  srv->nconns++;
  *out = c;
  return 0;
}

int sp_http_conn_mem_feed(sp_http_conn *c, const void *data, size_t len) {
  if (c->closed)
    return SP_ERR_CLOSED;
  if (c->stop_parsing || len == 0)
    return 0;
  /* everything goes through `in`, so a full pipeline never splits a feed */
  int rc = sp_buf_add(&c->in, data, len);
  if (rc == SP_ERR_TOOBIG)
    return SP_ERR_AGAIN;
  if (rc)
    return rc;
  c->feed_paused = 1;
  sp_http_conn_run(c);
  return 0;
}

sp_iov sp_http_conn_mem_output(const sp_http_conn *c) {
  return (sp_iov){c->out.base, c->out.len};
}

void sp_http_conn_mem_consume(sp_http_conn *c, size_t n) {
  sp_buf_consume(&c->out, n);
  if (!c->closed)
    sp_http_conn_run(c);
}

void sp_http_conn_mem_close(sp_http_conn *c) { sp_http_conn_close(c); }

void sp_http_conn_mem_info(const sp_http_conn *c, sp_http_conn_info *info) {
  info->pending = c->nqueued + (c->parsing ? 1 : 0);
  info->buffered = c->in.len - c->in_off;
  info->output = c->out.len;
  info->closing = c->stop_parsing || c->close_after_write;
  info->closed = c->closed;
}

void sp_http_conn_mem_free(sp_http_conn *c) {
  if (c == NULL)
    return;
  sp_http_conn_close(c);
  c->srv->nconns--;
  sp_http_conn_engine_release(c);
  sp_free(c);
}
