/* http_test_client: a small blocking HTTP/1.1 client and a loop-thread
 * harness for the sp_http tests (test_sp_http, test_sp_http_load).
 *
 * Client: real sockets to 127.0.0.1 with 5 s send/receive timeouts, and
 * responses parsed with http_parser in response mode (so chunked,
 * close-delimited and pipelined responses are decoded by the same code
 * every client uses).  A hc_conn owns its socket and read buffer; a hc_resp
 * owns its copied headers and body (hc_resp_free).
 *
 * Harness: the server's loop runs in a second thread; the test thread drives
 * it with client sockets and runs code on the loop with hc_on_loop (through
 * a uv_async, waiting for it to finish).  hc_harness_stop shuts the server
 * down gracefully, joins the thread and returns uv_loop_close's result.
 * Functions are static and marked unused so each test uses what it needs.
 */
#ifndef HTTP_TEST_CLIENT_H
#define HTTP_TEST_CLIENT_H

#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "sp_http.h"

#define HC_FN static __attribute__((unused))
#define HC_MAX_HEADERS 64

typedef struct hc_conn {
  int fd;
  char buf[65536];
  size_t len;  /* bytes in buf */
  int eof;     /* the server closed (or reset) */
} hc_conn;

typedef struct hc_resp {
  int status;
  int nh;
  char *hname[HC_MAX_HEADERS], *hval[HC_MAX_HEADERS];
  char *body;
  size_t body_len, body_cap;
  int chunks; /* body callbacks seen (one per chunk for chunked bodies) */
  int complete;
  int keep_alive;
  int last_was_value;
} hc_resp;

/* rcvbuf > 0 fixes the receive buffer before connecting (no autotuning:
 * this kernel grows it to 32 MiB), so a client that does not read really
 * stalls the server. */
HC_FN int hc_connect_buf(const char *ip, int port, int rcvbuf) {
  int v6 = strchr(ip, ':') != NULL;
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  if (rcvbuf > 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc;
  if (v6) {
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, ip, &a.sin6_addr);
    rc = connect(fd, (struct sockaddr *)&a, sizeof a);
  } else {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    rc = connect(fd, (struct sockaddr *)&a, sizeof a);
  }
  if (rc) {
    close(fd);
    return -1;
  }
  return fd;
}

HC_FN int hc_connect_to(const char *ip, int port) {
  return hc_connect_buf(ip, port, 0);
}

HC_FN int hc_open_rcvbuf(hc_conn *c, int port, int rcvbuf) {
  memset(c, 0, sizeof *c);
  c->fd = hc_connect_buf("127.0.0.1", port, rcvbuf);
  return c->fd < 0 ? -1 : 0;
}

HC_FN int hc_open(hc_conn *c, int port) {
  memset(c, 0, sizeof *c);
  c->fd = hc_connect_to("127.0.0.1", port);
  return c->fd < 0 ? -1 : 0;
}

HC_FN void hc_close(hc_conn *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
}

/* Close with SO_LINGER 0: the peer sees a reset. */
HC_FN void hc_reset(hc_conn *c) {
  struct linger lg = {1, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  hc_close(c);
}

HC_FN int hc_sendn(hc_conn *c, const void *data, size_t n) {
  const char *p = data;
  while (n) {
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

HC_FN int hc_send(hc_conn *c, const char *s) { return hc_sendn(c, s, strlen(s)); }

/* Reads more bytes into c->buf; 1 read, 0 EOF/reset, -1 timeout/error. */
HC_FN int hc_fill(hc_conn *c) {
  if (c->len == sizeof c->buf)
    return -1;
  for (;;) {
    ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (r > 0) {
      c->len += (size_t)r;
      return 1;
    }
    if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE))) {
      c->eof = 1;
      return 0;
    }
    if (errno == EINTR)
      continue;
    return -1;
  }
}

static int hc__on_status(http_parser *p, const char *at, size_t n) {
  (void)at;
  (void)n;
  hc_resp *r = p->data;
  r->status = (int)p->status_code;
  return 0;
}

static char *hc__append(char *s, const char *at, size_t n) {
  size_t old = s ? strlen(s) : 0;
  char *d = realloc(s, old + n + 1);
  if (d == NULL)
    return s;
  memcpy(d + old, at, n);
  d[old + n] = '\0';
  return d;
}

static int hc__on_hfield(http_parser *p, const char *at, size_t n) {
  hc_resp *r = p->data;
  if (r->nh == 0 || r->last_was_value) {
    if (r->nh == HC_MAX_HEADERS)
      return 0;
    r->nh++;
    r->last_was_value = 0;
  }
  r->hname[r->nh - 1] = hc__append(r->hname[r->nh - 1], at, n);
  return 0;
}

static int hc__on_hvalue(http_parser *p, const char *at, size_t n) {
  hc_resp *r = p->data;
  if (r->nh == 0)
    return 0;
  r->last_was_value = 1;
  r->hval[r->nh - 1] = hc__append(r->hval[r->nh - 1], at, n);
  if (r->hval[r->nh - 1] == NULL)
    r->hval[r->nh - 1] = hc__append(NULL, "", 0);
  return 0;
}

static int hc__on_headers_complete(http_parser *p) {
  hc_resp *r = p->data;
  r->status = (int)p->status_code;
  for (int i = 0; i < r->nh; i++)
    if (r->hval[i] == NULL)
      r->hval[i] = hc__append(NULL, "", 0);
  return r->keep_alive == -2 ? 1 : 0; /* -2 marks a HEAD request */
}

static int hc__on_body(http_parser *p, const char *at, size_t n) {
  hc_resp *r = p->data;
  if (r->body_len + n + 1 > r->body_cap) {
    size_t cap = r->body_cap ? r->body_cap : 256;
    while (cap < r->body_len + n + 1)
      cap *= 2;
    char *b = realloc(r->body, cap);
    if (b == NULL)
      return -1;
    r->body = b;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, at, n);
  r->body_len += n;
  r->body[r->body_len] = '\0';
  r->chunks++;
  return 0;
}

static int hc__on_complete(http_parser *p) {
  hc_resp *r = p->data;
  r->complete = 1;
  r->keep_alive = http_should_keep_alive(p);
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings hc__settings = {
    .on_status = hc__on_status,
    .on_header_field = hc__on_hfield,
    .on_header_value = hc__on_hvalue,
    .on_headers_complete = hc__on_headers_complete,
    .on_body = hc__on_body,
    .on_message_complete = hc__on_complete,
};

HC_FN void hc_resp_free(hc_resp *r) {
  for (int i = 0; i < r->nh; i++) {
    free(r->hname[i]);
    free(r->hval[i]);
  }
  free(r->body);
  memset(r, 0, sizeof *r);
}

/* Reads one response (is_head: the request was HEAD, no body follows).
 * 0 when complete; -1 on timeout, error, or EOF before the end. */
HC_FN int hc_read(hc_conn *c, hc_resp *r, int is_head) {
  memset(r, 0, sizeof *r);
  r->keep_alive = is_head ? -2 : 0;
  http_parser p;
  http_parser_init(&p, HTTP_RESPONSE);
  p.data = r;
  for (;;) {
    if (c->len) {
      size_t got = http_parser_execute(&p, &hc__settings, c->buf, c->len);
      memmove(c->buf, c->buf + got, c->len - got);
      c->len -= got;
      if (r->complete)
        return 0;
      if (HTTP_PARSER_ERRNO(&p) != HPE_OK)
        return -1;
    }
    int f = hc_fill(c);
    if (f < 0)
      return -1;
    if (f == 0) {
      /* close-delimited body ends here */
      http_parser_execute(&p, &hc__settings, NULL, 0);
      return r->complete ? 0 : -1;
    }
  }
}

HC_FN const char *hc_header(const hc_resp *r, const char *name) {
  for (int i = 0; i < r->nh; i++)
    if (r->hname[i] && strcasecmp(r->hname[i], name) == 0)
      return r->hval[i];
  return NULL;
}

/* 1 when the server closes (EOF or reset) within ms with no more bytes;
 * 0 when bytes arrive or the time passes. */
HC_FN int hc_wait_eof(hc_conn *c, int ms) {
  struct pollfd pfd = {c->fd, POLLIN, 0};
  int rc = poll(&pfd, 1, ms);
  if (rc <= 0)
    return 0;
  char b[256];
  ssize_t r = recv(c->fd, b, sizeof b, MSG_DONTWAIT);
  return r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE));
}

HC_FN uint64_t hc_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- loop-thread harness ------------------------------------------------ */

typedef struct hc_harness hc_harness;
typedef void (*hc_loop_fn)(hc_harness *h, void *arg);

struct hc_harness {
  uv_loop_t loop;
  uv_async_t wake;
  pthread_t thread;
  sem_t cmd_done;
  hc_loop_fn cmd;
  void *cmd_arg;
  sp_http_server *srv;
  int port;
  int done_called; /* shutdown done callback ran */
};

static void hc__on_wake(uv_async_t *a) {
  hc_harness *h = a->data;
  hc_loop_fn fn = h->cmd;
  h->cmd = NULL;
  if (fn) {
    fn(h, h->cmd_arg);
    sem_post(&h->cmd_done);
  }
}

static void *hc__thread(void *arg) {
  hc_harness *h = arg;
  uv_run(&h->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* Runs fn(h, arg) on the loop thread and waits for it. */
HC_FN void hc_on_loop(hc_harness *h, hc_loop_fn fn, void *arg) {
  h->cmd = fn;
  h->cmd_arg = arg;
  uv_async_send(&h->wake);
  while (sem_wait(&h->cmd_done) && errno == EINTR)
    ;
}

/* Creates the server (cfg NULL = defaults), listens on 127.0.0.1:0 and
 * starts the loop thread.  0 or a negative code. */
HC_FN int hc_harness_start(hc_harness *h, const sp_http_config *cfg,
                           const sp_http_route *routes, size_t n, void *app) {
  memset(h, 0, sizeof *h);
  int rc = uv_loop_init(&h->loop);
  if (rc)
    return rc;
  sem_init(&h->cmd_done, 0, 0);
  uv_async_init(&h->loop, &h->wake, hc__on_wake);
  h->wake.data = h;
  rc = sp_http_server_new(&h->loop, cfg, routes, n, app, &h->srv);
  if (rc)
    return rc;
  rc = sp_http_server_listen(h->srv, "127.0.0.1", 0);
  if (rc)
    return rc;
  h->port = sp_http_server_port(h->srv);
  return pthread_create(&h->thread, NULL, hc__thread, h) ? -1 : 0;
}

static void hc__done(sp_http_server *srv, void *arg) {
  hc_harness *h = arg;
  h->done_called = 1;
  sp_http_server_free(srv);
  h->srv = NULL;
}

static void hc__stop(hc_harness *h, void *arg) {
  (void)arg;
  if (h->srv)
    sp_http_server_shutdown(h->srv, hc__done, h);
  uv_close((uv_handle_t *)&h->wake, NULL);
}

/* Graceful shutdown, join, close the loop: returns uv_loop_close's code. */
HC_FN int hc_harness_stop(hc_harness *h) {
  hc_on_loop(h, hc__stop, NULL);
  pthread_join(h->thread, NULL);
  sem_destroy(&h->cmd_done);
  return uv_loop_close(&h->loop);
}

#endif
