/* Tests for sp_h2: HTTP/2 over mutual TLS on a real libuv loop (loopback
 * sockets) and, for byte-exact protocol abuse, through a socketless server
 * connection driven by a test-side nghttp2 client over sp_tls.
 *
 * Shown here: concurrent round trips (0 B, 1 KiB, 1 MiB bodies, order
 * independent); refusals at the handshake (client certificate from another
 * CA, server with the wrong name, client without a certificate) with the
 * server's log line, while the listener keeps serving; body and header
 * limits (413 / 431) with the connection carrying on; the concurrent
 * stream limit; stream reset by the handler; the peer closing mid-stream
 * (each side), with exactly one callback; garbage instead of TLS; graceful
 * close with requests in flight; PING liveness and its timeout; handshake
 * timeout; connect refused; malformed frames -> GOAWAY; argument checks;
 * allocation failures.  Every loop test ends with uv_loop_close == 0.
 *
 * Certificates (a cluster CA, us-east, eu-west, a foreign CA and an eu-west
 * certificate it signed) are issued at start into a temporary directory.
 * Debugging: H2_TEST_FILTER=<test name pattern> runs some tests only;
 * H2_TEST_STDERR=1 shows the log (debug level) instead of capturing it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_h2.h"
#include "sp_log.h"
#include "sp_tls.h"

static char dir[64];

static const char *path(const char *name) {
  static char bufs[8][400];
  static int i;
  char *b = bufs[i++ % 8];
  snprintf(b, 400, "%s/%s", dir, name);
  return b;
}

static void issue(const char *file, const char *name, const char *issuer,
                  int is_ca) {
  char ic[400], ik[400], c[400], k[400], err[256] = "";
  snprintf(c, sizeof c, "%s/%s.crt", dir, file);
  snprintf(k, sizeof k, "%s/%s.key", dir, file);
  if (issuer) {
    snprintf(ic, sizeof ic, "%s/%s.crt", dir, issuer);
    snprintf(ik, sizeof ik, "%s/%s.key", dir, issuer);
  }
  sp_tls_cert_spec spec = {name, 1, is_ca, -60, 86400, issuer ? ic : NULL,
                           issuer ? ik : NULL};
  int rc = sp_tls_issue(&spec, c, k, err, sizeof err);
  if (rc)
    fprintf(stderr, "issue %s: %s\n", file, err);
  assert_int_equal(rc, 0);
}

static int group_setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/sp_h2_test.XXXXXX");
  if (mkdtemp(dir) == NULL)
    return -1;
  issue("ca", "cluster CA", NULL, 1);
  issue("us-east", "us-east", "ca", 0);
  issue("eu-west", "eu-west", "ca", 0);
  issue("foreign-ca", "foreign CA", NULL, 1);
  issue("foreign", "eu-west", "foreign-ca", 0);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  DIR *d = opendir(dir);
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      unlink(path(e->d_name));
  if (d)
    closedir(d);
  rmdir(dir);
  return 0;
}

static sp_tls_ctx *server_ctx(void) {
  sp_tls_ctx *ctx = NULL;
  assert_int_equal(sp_tls_ctx_new_server(path("ca.crt"), path("us-east.crt"),
                                         path("us-east.key"), "h2", NULL, 0,
                                         &ctx),
                   0);
  return ctx;
}

/* who: "eu-west", "foreign", or NULL (no certificate) */
static sp_tls_ctx *client_ctx(const char *who) {
  char c[400], k[400];
  if (who) {
    snprintf(c, sizeof c, "%s/%s.crt", dir, who);
    snprintf(k, sizeof k, "%s/%s.key", dir, who);
  }
  sp_tls_ctx *ctx = NULL;
  assert_int_equal(sp_tls_ctx_new_client(path("ca.crt"), who ? c : NULL,
                                         who ? k : NULL, "h2", NULL, 0, &ctx),
                   0);
  return ctx;
}

/* ---- the loop environment ---------------------------------------------------- */

enum { MODE_ECHO, MODE_HOLD, MODE_RESET };

typedef struct env {
  uv_loop_t loop;
  uv_timer_t tick; /* bounds every uv_run(ONCE) */
  sp_tls_ctx *sctx, *cctx;
  sp_h2_config scfg, ccfg;
  sp_h2_server *srv;
  int port;
  int srv_done;
  int logfd;
  int mode;
  sp_h2_stream *held[16];
  int nheld, answered, max_held, requests, aborts;
  char authority[64];
} env;

static void on_tick(uv_timer_t *t) { (void)t; }

static void env_init(env *e) {
  memset(e, 0, sizeof *e);
  assert_int_equal(uv_loop_init(&e->loop), 0);
  uv_timer_init(&e->loop, &e->tick);
  uv_timer_start(&e->tick, on_tick, 5, 5);
  uv_unref((uv_handle_t *)&e->tick);
  e->sctx = server_ctx();
  e->cctx = client_ctx("eu-west");
  sp_h2_config_init(&e->scfg);
  sp_h2_config_init(&e->ccfg);
  e->logfd = open(path("log"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  assert_true(e->logfd >= 0);
  if (getenv("H2_TEST_STDERR") == NULL) /* debugging: see the log live */
    sp_log_set_fd(e->logfd);
  else
    sp_log_set_level(SP_LOG_DEBUG);
}

static int log_has(env *e, const char *needle) {
  static char buf[1 << 16];
  ssize_t n = pread(e->logfd, buf, sizeof buf - 1, 0);
  buf[n > 0 ? n : 0] = '\0';
  return strstr(buf, needle) != NULL;
}

#define RUN_UNTIL(e, cond, ms)                                                 \
  do {                                                                         \
    uv_update_time(&(e)->loop);                                                \
    uint64_t end_ = uv_now(&(e)->loop) + (ms);                                 \
    while (!(cond) && uv_now(&(e)->loop) < end_)                               \
      uv_run(&(e)->loop, UV_RUN_ONCE);                                         \
    assert_true(cond);                                                         \
  } while (0)

/* Runs the loop for `ms` whatever happens (to show something does NOT). */
static void run_for(env *e, uint64_t ms) {
  uv_update_time(&e->loop);
  uint64_t end = uv_now(&e->loop) + ms;
  while (uv_now(&e->loop) < end)
    uv_run(&e->loop, UV_RUN_ONCE);
}

static void on_abort(sp_h2_stream *st, void *arg) {
  (void)st;
  ((env *)arg)->aborts++;
}

static void echo(sp_h2_stream *st) {
  sp_iov body = sp_h2_stream_body(st);
  sp_h2_header h[] = {{"x-path", sp_h2_stream_path(st)},
                      {"x-peer", sp_h2_stream_peer(st)},
                      {"x-method", sp_h2_stream_method(st)}};
  assert_int_equal(sp_h2_respond(st, 200, h, 3, body.base, body.len), 0);
}

static void on_request(sp_h2_stream *st, void *arg) {
  env *e = arg;
  e->requests++;
  snprintf(e->authority, sizeof e->authority, "%s",
           sp_h2_stream_authority(st));
  if (e->mode == MODE_ECHO) {
    echo(st);
  } else if (e->mode == MODE_RESET) {
    assert_int_equal(sp_h2_stream_reset(st), 0);
  } else {
    assert_true(e->nheld < 16);
    sp_h2_stream_on_abort(st, on_abort, e);
    e->held[e->nheld++] = st;
    if (e->nheld - e->answered > e->max_held)
      e->max_held = e->nheld - e->answered; /* unanswered at once */
  }
}

static void env_start(env *e) {
  assert_int_equal(
      sp_h2_server_new(&e->loop, e->sctx, &e->scfg, on_request, e, &e->srv),
      0);
  assert_int_equal(sp_h2_server_listen(e->srv, "127.0.0.1", 0), 0);
  e->port = sp_h2_server_port(e->srv);
  assert_true(e->port > 0);
}

static void on_srv_done(sp_h2_server *srv, void *arg) {
  (void)srv;
  ((env *)arg)->srv_done++;
}

static void env_finish(env *e) {
  if (e->srv && !e->srv_done) {
    int rc = sp_h2_server_close(e->srv, on_srv_done, e);
    assert_true(rc == 0 || rc == SP_ERR_BUSY);
    RUN_UNTIL(e, e->srv_done == 1, 5000);
  }
  uv_close((uv_handle_t *)&e->tick, NULL);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&e->loop), 0);
  sp_tls_ctx_free(e->sctx);
  sp_tls_ctx_free(e->cctx);
  sp_log_set_fd(2);
  close(e->logfd);
}

/* ---- client records ------------------------------------------------------------ */

typedef struct crec {
  env *e;
  sp_h2_client *cli;
  int ups, downs, down_err, done;
  char reason[256];
} crec;

static void on_state(sp_h2_client *cli, sp_h2_state st, int err,
                     const char *reason, void *arg) {
  crec *r = arg;
  assert_ptr_equal(cli, r->cli);
  if (st == SP_H2_CONNECTED) {
    assert_int_equal(err, 0);
    r->ups++;
  } else {
    r->downs++;
    r->down_err = err;
    snprintf(r->reason, sizeof r->reason, "%s", reason);
  }
}

static void client_open(env *e, crec *r, sp_tls_ctx *ctx, const char *expect) {
  memset(r, 0, sizeof *r);
  r->e = e;
  assert_int_equal(sp_h2_client_new(&e->loop, ctx, &e->ccfg, "127.0.0.1",
                                    e->port, expect, on_state, r, &r->cli),
                   0);
}

static void on_client_done(sp_h2_client *cli, void *arg) {
  crec *r = arg;
  assert_ptr_equal(cli, r->cli);
  r->done++;
}

static void client_close(crec *r) {
  assert_int_equal(sp_h2_client_close(r->cli, on_client_done, r), 0);
  assert_int_equal(sp_h2_client_close(r->cli, on_client_done, r),
                   SP_ERR_BUSY);
  RUN_UNTIL(r->e, r->done == 1, 5000);
  assert_int_equal(r->downs, 1);
}

typedef struct rrec {
  int calls, err, status;
  sp_buf body;
  char path[64], peer[64], method[16];
} rrec;

static void on_response(sp_h2_client *cli, int err, const sp_h2_response *res,
                        void *arg) {
  (void)cli;
  rrec *r = arg;
  r->calls++;
  r->err = err;
  if (err) {
    assert_null(res);
    return;
  }
  r->status = res->status;
  sp_buf_init(&r->body, SP_BUF_UNLIMITED);
  assert_int_equal(sp_buf_add(&r->body, res->body.base, res->body.len), 0);
  for (size_t i = 0; i < res->nhdrs; i++) {
    if (strcmp(res->hdrs[i].name, "x-path") == 0)
      snprintf(r->path, sizeof r->path, "%s", res->hdrs[i].value);
    if (strcmp(res->hdrs[i].name, "x-peer") == 0)
      snprintf(r->peer, sizeof r->peer, "%s", res->hdrs[i].value);
    if (strcmp(res->hdrs[i].name, "x-method") == 0)
      snprintf(r->method, sizeof r->method, "%s", res->hdrs[i].value);
  }
}

static void rrec_release(rrec *r, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (r[i].calls && !r[i].err)
      sp_buf_release(&r[i].body);
}

static int post(crec *c, const char *p, const void *body, size_t len,
                rrec *r) {
  return sp_h2_client_request(c->cli, "POST", p, NULL, 0, body, len,
                              on_response, r);
}

/* ---- round trips ----------------------------------------------------------------- */

static void test_concurrent_round_trip(void **state) {
  (void)state;
  env e;
  env_init(&e);
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");

  /* issued before the connection is up: they wait for the handshake */
  static char big[1 << 20];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (char)(i * 31 + 7);
  char kib[1024];
  memset(kib, 'k', sizeof kib);
  rrec r[4] = {0};
  assert_int_equal(post(&c, "/empty", NULL, 0, &r[0]), 0);
  assert_int_equal(post(&c, "/kib", kib, sizeof kib, &r[1]), 0);
  assert_int_equal(post(&c, "/mib", big, sizeof big, &r[2]), 0);
  sp_h2_header h[] = {{"x-tag", "t1"}};
  assert_int_equal(sp_h2_client_request(c.cli, "GET", "/get?q=1", h, 1, NULL,
                                        0, on_response, &r[3]),
                   0);
  sp_h2_client_info info;
  sp_h2_client_info_get(c.cli, &info);
  assert_int_equal(info.in_flight, 4);
  assert_int_equal(info.connected, 0);

  RUN_UNTIL(&e, r[0].calls && r[1].calls && r[2].calls && r[3].calls, 10000);
  assert_int_equal(c.ups, 1);
  const char *paths[] = {"/empty", "/kib", "/mib", "/get?q=1"};
  size_t lens[] = {0, sizeof kib, sizeof big, 0};
  const void *bodies[] = {"", kib, big, ""};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].err, 0);
    assert_int_equal(r[i].status, 200);
    assert_string_equal(r[i].path, paths[i]);
    assert_string_equal(r[i].peer, "eu-west"); /* the client's region */
    assert_int_equal(r[i].body.len, lens[i]);
    assert_memory_equal(r[i].body.base, bodies[i], lens[i]);
  }
  assert_string_equal(r[3].method, "GET");
  assert_string_equal(e.authority, "us-east");
  assert_int_equal(e.requests, 4);
  sp_h2_client_info_get(c.cli, &info);
  assert_int_equal(info.in_flight, 0);
  assert_int_equal(info.connected, 1);
  rrec_release(r, 4);

  client_close(&c);
  assert_int_equal(c.down_err, 0); /* our own close */
  env_finish(&e);
}

/* ---- handshake refusals ------------------------------------------------------------ */

static void refused_case(const char *who, const char *expect,
                         const char *client_reason, const char *log_needle) {
  env e;
  env_init(&e);
  env_start(&e);
  sp_tls_ctx *ctx = client_ctx(who); /* who NULL: no certificate */
  crec c;
  client_open(&e, &c, ctx, expect);
  rrec r = {0};
  assert_int_equal(post(&c, "/x", "a", 1, &r), 0);
  RUN_UNTIL(&e, c.downs == 1 && r.calls == 1, 5000);
  assert_int_equal(c.ups, 0);
  assert_int_equal(c.down_err, SP_ERR_ACCES);
  assert_non_null(strstr(c.reason, client_reason));
  assert_int_equal(r.err, SP_ERR_ACCES);
  assert_int_equal(e.requests, 0);
  RUN_UNTIL(&e, log_has(&e, log_needle), 2000);
  assert_true(log_has(&e, "h2 handshake failed"));

  /* the listener keeps serving others */
  crec ok;
  client_open(&e, &ok, e.cctx, "us-east");
  rrec r2 = {0};
  assert_int_equal(post(&ok, "/after", "b", 1, &r2), 0);
  RUN_UNTIL(&e, r2.calls == 1, 5000);
  assert_int_equal(r2.err, 0);
  assert_int_equal(r2.status, 200);
  rrec_release(&r2, 1);
  client_close(&ok);
  client_close(&c); /* after the disconnect: nothing more reported */
  assert_int_equal(c.downs, 1);
  env_finish(&e);
  sp_tls_ctx_free(ctx);
}

static void test_client_cert_from_other_ca_refused(void **state) {
  (void)state;
  refused_case("foreign", "us-east", "refused our certificate",
               "unable to get local issuer certificate");
}

static void test_server_with_wrong_name_refused(void **state) {
  (void)state;
  /* the client expects ap-south; the server is us-east */
  refused_case("eu-west", "ap-south", "its name is not \"ap-south\"",
               "h2 handshake failed");
}

static void test_client_without_cert_refused(void **state) {
  (void)state;
  refused_case(NULL, "us-east", "refused our certificate",
               "the peer sent none");
}

/* ---- limits ------------------------------------------------------------------------ */

static void test_body_over_limit_413_connection_carries_on(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.scfg.max_body_bytes = 64 * 1024;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  static char body[100 * 1024];
  memset(body, 'b', sizeof body);
  rrec r[3] = {0};
  assert_int_equal(post(&c, "/big", body, sizeof body, &r[0]), 0);
  assert_int_equal(post(&c, "/small", body, 1000, &r[1]), 0);
  RUN_UNTIL(&e, r[0].calls && r[1].calls, 5000);
  assert_int_equal(r[0].err, 0);
  assert_int_equal(r[0].status, 413);
  assert_int_equal(r[1].err, 0);
  assert_int_equal(r[1].status, 200);
  assert_int_equal(r[1].body.len, 1000);
  assert_true(log_has(&e, "h2 request refused"));
  /* exactly at the limit is fine, and the connection is still the same */
  assert_int_equal(post(&c, "/edge", body, 64 * 1024, &r[2]), 0);
  RUN_UNTIL(&e, r[2].calls, 5000);
  assert_int_equal(r[2].status, 200);
  assert_int_equal(r[2].body.len, 64 * 1024);
  assert_int_equal(c.ups, 1);
  assert_int_equal(c.downs, 0);
  assert_int_equal(e.requests, 2);
  rrec_release(r, 3);
  client_close(&c);
  env_finish(&e);
}

static void test_header_list_over_limit_431(void **state) {
  (void)state;
  env e;
  env_init(&e);
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  static char v[20000];
  memset(v, 'v', sizeof v - 1);
  sp_h2_header h[] = {{"x-big", v}};
  rrec r[2] = {0};
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/h", h, 1, "x", 1,
                                        on_response, &r[0]),
                   0);
  RUN_UNTIL(&e, r[0].calls, 5000);
  assert_int_equal(r[0].status, 431);
  /* too many fields is the same */
  sp_h2_header many[SP_H2_MAX_HEADERS];
  char names[SP_H2_MAX_HEADERS][16];
  for (int i = 0; i < SP_H2_MAX_HEADERS; i++) {
    snprintf(names[i], sizeof names[i], "x-%d", i);
    many[i] = (sp_h2_header){names[i], "1"};
  }
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/h", many,
                                        SP_H2_MAX_HEADERS, "x", 1,
                                        on_response, &r[1]),
                   0);
  RUN_UNTIL(&e, r[1].calls, 5000);
  assert_int_equal(r[1].status, 431); /* 64 + content-length > 64 */
  assert_int_equal(e.requests, 0);
  assert_int_equal(c.downs, 0);
  rrec_release(r, 2);
  client_close(&c);
  env_finish(&e);
}

static void test_response_over_client_limit(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.ccfg.max_body_bytes = 1024;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  char body[2048];
  memset(body, 'r', sizeof body);
  rrec r[2] = {0};
  assert_int_equal(post(&c, "/big", body, sizeof body, &r[0]), 0);
  RUN_UNTIL(&e, r[0].calls, 5000);
  assert_int_equal(r[0].err, SP_ERR_TOOBIG);
  assert_int_equal(post(&c, "/ok", body, 512, &r[1]), 0);
  RUN_UNTIL(&e, r[1].calls, 5000);
  assert_int_equal(r[1].err, 0);
  assert_int_equal(r[1].body.len, 512);
  assert_int_equal(c.downs, 0);
  rrec_release(r, 2);
  client_close(&c);
  env_finish(&e);
}

static void test_concurrent_stream_limit(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.scfg.max_concurrent_streams = 2;
  e.mode = MODE_HOLD;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  /* after CONNECTED the client knows the limit and queues the rest */
  RUN_UNTIL(&e, c.ups == 1, 5000);
  rrec r[5] = {0};
  for (int i = 0; i < 5; i++)
    assert_int_equal(post(&c, "/q", "x", 1, &r[i]), 0);
  RUN_UNTIL(&e, e.nheld == 2, 5000);
  run_for(&e, 50);
  assert_int_equal(e.nheld, 2); /* no third stream was admitted */
  while (e.answered < 5) {
    RUN_UNTIL(&e, e.nheld > e.answered, 5000);
    echo(e.held[e.answered++]);
  }
  RUN_UNTIL(&e, r[0].calls + r[1].calls + r[2].calls + r[3].calls +
                        r[4].calls ==
                    5,
            5000);
  for (int i = 0; i < 5; i++)
    assert_int_equal(r[i].err, 0);
  assert_int_equal(e.nheld, 5);
  assert_int_equal(e.max_held, 2); /* ... never more than 2 at once */
  rrec_release(r, 5);
  client_close(&c);
  env_finish(&e);
}

/* ---- resets and peers going away ---------------------------------------------------- */

static void test_handler_reset_then_connection_carries_on(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.mode = MODE_RESET;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r[2] = {0};
  assert_int_equal(post(&c, "/r", "x", 1, &r[0]), 0);
  RUN_UNTIL(&e, r[0].calls, 5000);
  run_for(&e, 20);
  assert_int_equal(r[0].calls, 1);
  assert_int_equal(r[0].err, SP_ERR_AGAIN); /* refused: safe to retry */
  e.mode = MODE_ECHO;
  assert_int_equal(post(&c, "/r2", "y", 1, &r[1]), 0);
  RUN_UNTIL(&e, r[1].calls, 5000);
  assert_int_equal(r[1].err, 0);
  assert_int_equal(c.downs, 0);
  rrec_release(r, 2);
  client_close(&c);
  env_finish(&e);
}

static void test_server_drops_connection_mid_stream(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.mode = MODE_HOLD;
  e.scfg.shutdown_timeout_ms = 50;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r = {0};
  assert_int_equal(post(&c, "/held", "x", 1, &r), 0);
  RUN_UNTIL(&e, e.nheld == 1, 5000);
  /* graceful close cannot finish: the handler never answers in time */
  assert_int_equal(sp_h2_server_close(e.srv, on_srv_done, &e), 0);
  assert_int_equal(sp_h2_server_close(e.srv, on_srv_done, &e), SP_ERR_BUSY);
  RUN_UNTIL(&e, r.calls == 1 && c.downs == 1 && e.srv_done == 1, 5000);
  run_for(&e, 20);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.err, SP_ERR_CONNRESET);
  assert_int_equal(c.downs, 1);
  assert_int_equal(c.down_err, SP_ERR_CONNRESET);
  assert_int_equal(e.aborts, 1);
  /* the detached stream still takes its (dropped) answer */
  assert_int_equal(sp_h2_respond(e.held[0], 200, NULL, 0, "late", 4),
                   SP_ERR_CLOSED);
  client_close(&c);
  env_finish(&e);
}

static void test_client_closes_mid_stream(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.mode = MODE_HOLD;
  e.ccfg.shutdown_timeout_ms = 50;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r = {0};
  assert_int_equal(post(&c, "/held", "x", 1, &r), 0);
  RUN_UNTIL(&e, e.nheld == 1, 5000);
  assert_int_equal(sp_h2_client_close(c.cli, on_client_done, &c), 0);
  assert_int_equal(post(&c, "/late", "x", 1, &r), SP_ERR_CLOSED);
  RUN_UNTIL(&e, c.done == 1 && e.aborts == 1, 5000);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.err, SP_ERR_CANCELED);
  assert_int_equal(c.downs, 1);
  assert_int_equal(c.down_err, 0);
  assert_int_equal(sp_h2_respond(e.held[0], 200, NULL, 0, NULL, 0),
                   SP_ERR_CLOSED);
  env_finish(&e);
}

static void test_graceful_close_with_streams_in_flight(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.mode = MODE_HOLD;
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r[4] = {0};
  for (int i = 0; i < 3; i++)
    assert_int_equal(post(&c, "/inflight", "x", 1, &r[i]), 0);
  RUN_UNTIL(&e, e.nheld == 3, 5000);
  assert_int_equal(sp_h2_server_close(e.srv, on_srv_done, &e), 0);
  /* sent before the client saw GOAWAY: refused, retryable */
  assert_int_equal(post(&c, "/late", "x", 1, &r[3]), 0);
  RUN_UNTIL(&e, r[3].calls == 1, 5000);
  assert_int_equal(r[3].err, SP_ERR_AGAIN);
  rrec more = {0};
  assert_int_equal(post(&c, "/later", "x", 1, &more), SP_ERR_CLOSED);
  /* the requests already received are still answered */
  for (int i = 0; i < e.nheld; i++) {
    int rc = sp_h2_respond(e.held[i], 200, NULL, 0, "done", 4);
    assert_true(i < 3 ? rc == 0 : rc == SP_ERR_CLOSED);
  }
  RUN_UNTIL(&e, c.downs == 1 && e.srv_done == 1, 5000);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].err, 0);
    assert_memory_equal(r[i].body.base, "done", 4);
  }
  assert_int_equal(c.down_err, SP_ERR_CLOSED);
  assert_non_null(strstr(c.reason, "GOAWAY"));
  assert_int_equal(e.aborts, e.nheld - 3);
  rrec_release(r, 4);
  client_close(&c);
  env_finish(&e);
}

/* ---- a raw TCP peer ------------------------------------------------------------------ */

enum { RAW_MUTE, RAW_TLS_SILENT, RAW_TLS_CLOSE_ON_DATA };

typedef struct raw_srv {
  uv_tcp_t listener, conn;
  int port, accepted, mode, closed, tls_done;
  sp_tls_ctx *ctx;
  sp_tls *tls;
  char rbuf[65536];
} raw_srv;

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)s;
  raw_srv *r = h->data;
  b->base = r->rbuf;
  b->len = sizeof r->rbuf;
}

static void raw_closed(uv_handle_t *h) { ((raw_srv *)h->data)->closed++; }

static void raw_send(raw_srv *r) {
  sp_buf out;
  sp_buf_init(&out, SP_BUF_UNLIMITED);
  assert_int_equal(sp_tls_take_output(r->tls, &out), 0);
  if (out.len) {
    uv_buf_t b = uv_buf_init(out.base, (unsigned)out.len);
    assert_int_equal(uv_try_write((uv_stream_t *)&r->conn, &b, 1),
                     (int)out.len);
  }
  sp_buf_release(&out);
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  raw_srv *r = s->data;
  if (n < 0) {
    if (!uv_is_closing((uv_handle_t *)s))
      uv_close((uv_handle_t *)s, raw_closed);
    return;
  }
  if (n == 0 || r->mode == RAW_MUTE || uv_is_closing((uv_handle_t *)s))
    return;
  assert_int_equal(sp_tls_feed(r->tls, b->base, (size_t)n), 0);
  if (!r->tls_done) {
    int rc = sp_tls_handshake(r->tls);
    raw_send(r);
    if (rc)
      return;
    r->tls_done = 1;
    /* an empty SETTINGS frame: enough for the client to call it up */
    static const char settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    assert_int_equal(sp_tls_write(r->tls, settings, sizeof settings), 0);
    raw_send(r);
  }
  char plain[16384];
  size_t got;
  while (sp_tls_read(r->tls, plain, sizeof plain, &got) == 0)
    if (r->mode == RAW_TLS_CLOSE_ON_DATA && !uv_is_closing((uv_handle_t *)s))
      uv_close((uv_handle_t *)s, raw_closed); /* gone mid-stream */
}

static void raw_on_conn(uv_stream_t *l, int status) {
  raw_srv *r = l->data;
  assert_int_equal(status, 0);
  assert_int_equal(r->accepted, 0);
  uv_tcp_init(l->loop, &r->conn);
  r->conn.data = r;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&r->conn), 0);
  r->accepted = 1;
  uv_read_start((uv_stream_t *)&r->conn, raw_alloc, raw_read);
}

static void raw_start(env *e, raw_srv *r, int mode) {
  memset(r, 0, sizeof *r);
  r->mode = mode;
  r->ctx = e->sctx;
  assert_int_equal(sp_tls_new(r->ctx, NULL, &r->tls), 0);
  uv_tcp_init(&e->loop, &r->listener);
  r->listener.data = r;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&r->listener, (struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&r->listener, 8, raw_on_conn), 0);
  struct sockaddr_in b;
  int len = sizeof b;
  uv_tcp_getsockname(&r->listener, (struct sockaddr *)&b, &len);
  r->port = ntohs(b.sin_port);
  e->port = r->port;
}

static void raw_stop(env *e, raw_srv *r) {
  int want = 1;
  uv_close((uv_handle_t *)&r->listener, raw_closed);
  if (r->accepted) {
    want++;
    if (!uv_is_closing((uv_handle_t *)&r->conn))
      uv_close((uv_handle_t *)&r->conn, raw_closed);
  }
  RUN_UNTIL(e, r->closed == want, 2000);
  sp_tls_free(r->tls);
}

static void test_peer_vanishes_mid_stream_one_callback(void **state) {
  (void)state;
  env e;
  env_init(&e);
  raw_srv rs;
  raw_start(&e, &rs, RAW_TLS_CLOSE_ON_DATA);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r[2] = {0};
  assert_int_equal(post(&c, "/a", "x", 1, &r[0]), 0);
  assert_int_equal(post(&c, "/b", "y", 1, &r[1]), 0);
  RUN_UNTIL(&e, c.downs == 1 && r[0].calls && r[1].calls, 5000);
  run_for(&e, 20);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].err, SP_ERR_CONNRESET);
  }
  assert_int_equal(c.downs, 1);
  assert_int_equal(c.down_err, SP_ERR_CONNRESET);
  assert_int_equal(post(&c, "/c", "z", 1, &r[0]), SP_ERR_CLOSED);
  client_close(&c);
  raw_stop(&e, &rs);
  env_finish(&e);
}

static void test_ping_liveness_and_timeout(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.ccfg.ping_interval_ms = 20;
  e.ccfg.ping_timeout_ms = 5000; /* a loaded machine still answers */
  env_start(&e);
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  sp_h2_client_info info = {0};
  RUN_UNTIL(&e, (sp_h2_client_info_get(c.cli, &info), info.pings_acked >= 3),
            5000);
  assert_int_equal(c.downs, 0);
  client_close(&c);

  /* a peer that completes the handshake, then never answers */
  raw_srv rs;
  raw_start(&e, &rs, RAW_TLS_SILENT);
  e.ccfg.ping_timeout_ms = 80;
  crec s;
  client_open(&e, &s, e.cctx, "us-east");
  RUN_UNTIL(&e, s.downs == 1, 5000);
  assert_int_equal(s.ups, 1);
  assert_int_equal(s.down_err, SP_ERR_TIMEDOUT);
  assert_non_null(strstr(s.reason, "PING"));
  assert_true(log_has(&e, "h2 connection failed"));
  client_close(&s);
  raw_stop(&e, &rs);
  env_finish(&e);
}

static void test_handshake_timeout_and_connect_refused(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.ccfg.handshake_timeout_ms = 100;
  raw_srv rs;
  raw_start(&e, &rs, RAW_MUTE); /* accepts, never speaks */
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r = {0};
  assert_int_equal(post(&c, "/x", "x", 1, &r), 0);
  RUN_UNTIL(&e, c.downs == 1, 5000);
  assert_int_equal(c.down_err, SP_ERR_TIMEDOUT);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.err, SP_ERR_TIMEDOUT);
  client_close(&c);
  raw_stop(&e, &rs);

  /* a bound socket that does not listen refuses connections */
  uv_tcp_t hole;
  uv_tcp_init(&e.loop, &hole);
  struct sockaddr_in a, b;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&hole, (struct sockaddr *)&a, 0), 0);
  int len = sizeof b;
  uv_tcp_getsockname(&hole, (struct sockaddr *)&b, &len);
  e.port = ntohs(b.sin_port);
  client_open(&e, &c, e.cctx, "us-east");
  RUN_UNTIL(&e, c.downs == 1, 5000);
  assert_int_equal(c.down_err, UV_ECONNREFUSED);
  assert_non_null(strstr(c.reason, "connect"));
  client_close(&c);
  uv_close((uv_handle_t *)&hole, NULL);
  env_finish(&e);
}

/* ---- garbage instead of TLS ------------------------------------------------------------ */

typedef struct junk_cli {
  uv_tcp_t tcp;
  uv_connect_t creq;
  int eof, closed;
  char rbuf[4096];
} junk_cli;

static void junk_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  (void)s;
  junk_cli *j = h->data;
  b->base = j->rbuf;
  b->len = sizeof j->rbuf;
}

static void junk_closed(uv_handle_t *h) { ((junk_cli *)h->data)->closed = 1; }

static void junk_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  junk_cli *j = s->data;
  if (n < 0) {
    j->eof = 1;
    uv_close((uv_handle_t *)s, junk_closed);
  }
}

static void junk_connected(uv_connect_t *req, int status) {
  junk_cli *j = req->data;
  assert_int_equal(status, 0);
  static char msg[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  uv_buf_t b = uv_buf_init(msg, sizeof msg - 1);
  assert_int_equal(uv_try_write((uv_stream_t *)&j->tcp, &b, 1),
                   (int)sizeof msg - 1);
  uv_read_start((uv_stream_t *)&j->tcp, junk_alloc, junk_read);
}

static void test_garbage_instead_of_tls(void **state) {
  (void)state;
  env e;
  env_init(&e);
  env_start(&e);
  /* a good client is up first and must not notice */
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  RUN_UNTIL(&e, c.ups == 1, 5000);

  junk_cli j = {0};
  uv_tcp_init(&e.loop, &j.tcp);
  j.tcp.data = &j;
  j.creq.data = &j;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", e.port, &a);
  assert_int_equal(
      uv_tcp_connect(&j.creq, &j.tcp, (struct sockaddr *)&a, junk_connected),
      0);
  RUN_UNTIL(&e, j.closed, 5000); /* the server hung up on it */
  RUN_UNTIL(&e, log_has(&e, "h2 handshake failed"), 2000);
  assert_true(log_has(&e, "TLS failure"));

  rrec r = {0};
  assert_int_equal(post(&c, "/still", "ok", 2, &r), 0);
  RUN_UNTIL(&e, r.calls, 5000);
  assert_int_equal(r.err, 0);
  assert_int_equal(c.downs, 0);
  rrec_release(&r, 1);
  /* and a newcomer is served too */
  crec n;
  client_open(&e, &n, e.cctx, "us-east");
  rrec r2 = {0};
  assert_int_equal(post(&n, "/new", "ok", 2, &r2), 0);
  RUN_UNTIL(&e, r2.calls, 5000);
  assert_int_equal(r2.status, 200);
  rrec_release(&r2, 1);
  client_close(&n);
  client_close(&c);
  env_finish(&e);
}

static void test_connections_over_the_cap_refused(void **state) {
  (void)state;
  env e;
  env_init(&e);
  e.scfg.max_connections = 1;
  env_start(&e);
  crec a, b;
  client_open(&e, &a, e.cctx, "us-east");
  RUN_UNTIL(&e, a.ups == 1, 5000);
  assert_int_equal(sp_h2_server_connections(e.srv), 1);
  client_open(&e, &b, e.cctx, "us-east");
  RUN_UNTIL(&e, b.downs == 1, 5000);
  assert_int_equal(b.ups, 0);
  assert_int_equal(b.down_err, SP_ERR_CONNRESET);
  assert_true(log_has(&e, "h2 connection refused"));
  client_close(&b);
  /* the first one is untouched; once it is gone there is room again */
  rrec r = {0};
  assert_int_equal(post(&a, "/x", "x", 1, &r), 0);
  RUN_UNTIL(&e, r.calls == 1, 5000);
  assert_int_equal(r.status, 200);
  rrec_release(&r, 1);
  client_close(&a);
  RUN_UNTIL(&e, sp_h2_server_connections(e.srv) == 0, 5000);
  client_open(&e, &b, e.cctx, "us-east");
  RUN_UNTIL(&e, b.ups == 1, 5000);
  client_close(&b);
  env_finish(&e);
}

/* ---- argument checks ------------------------------------------------------------------- */

static void test_argument_checks(void **state) {
  (void)state;
  env e;
  env_init(&e);
  sp_h2_server *srv;
  sp_h2_client *cli;
  /* server with a client context; bad limits */
  assert_int_equal(sp_h2_server_new(&e.loop, e.cctx, NULL, on_request, &e,
                                    &srv),
                   SP_ERR_INVAL);
  e.scfg.max_body_bytes = 0;
  assert_int_equal(sp_h2_server_new(&e.loop, e.sctx, &e.scfg, on_request, &e,
                                    &srv),
                   SP_ERR_CONFIG);
  e.scfg.max_body_bytes = 1024;
  env_start(&e);
  assert_int_equal(sp_h2_server_listen(e.srv, "127.0.0.1", 0), SP_ERR_BUSY);
  assert_int_equal(sp_h2_client_new(&e.loop, e.cctx, NULL, "localhost",
                                    e.port, "us-east", on_state, NULL, &cli),
                   SP_ERR_INVAL); /* no DNS */
  assert_int_equal(sp_h2_client_new(&e.loop, e.sctx, NULL, "127.0.0.1",
                                    e.port, "us-east", on_state, NULL, &cli),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_new(&e.loop, e.cctx, NULL, "127.0.0.1", 0,
                                    "us-east", on_state, NULL, &cli),
                   SP_ERR_INVAL);

  e.mode = MODE_HOLD;
  crec c;
  client_open(&e, &c, e.cctx, "us-east");
  rrec r = {0};
  sp_h2_header upper[] = {{"X-Upper", "1"}};
  sp_h2_header conn[] = {{"connection", "close"}};
  sp_h2_header crlf[] = {{"x-a", "b\r\nc"}};
  sp_h2_header pseudo[] = {{":path", "/"}};
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/", upper, 1, NULL, 0,
                                        on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/", conn, 1, NULL, 0,
                                        on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/", crlf, 1, NULL, 0,
                                        on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/", pseudo, 1, NULL,
                                        0, on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_request(c.cli, NULL, "/", NULL, 0, NULL, 0,
                                        on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "", NULL, 0, NULL, 0,
                                        on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(sp_h2_client_request(c.cli, "POST", "/", NULL, 0, NULL, 5,
                                        on_response, &r),
                   SP_ERR_INVAL);
  assert_int_equal(r.calls, 0); /* an error return never calls back */

  /* a bad answer resets the stream instead */
  assert_int_equal(post(&c, "/bad", NULL, 0, &r), 0);
  RUN_UNTIL(&e, e.nheld == 1, 5000);
  assert_int_equal(sp_h2_respond(e.held[0], 99, NULL, 0, NULL, 0),
                   SP_ERR_INVAL);
  RUN_UNTIL(&e, r.calls == 1, 5000);
  assert_int_equal(r.err, SP_ERR_CONNRESET);
  rrec r2 = {0};
  assert_int_equal(post(&c, "/bad2", NULL, 0, &r2), 0);
  RUN_UNTIL(&e, e.nheld == 2, 5000);
  assert_int_equal(sp_h2_respond(e.held[1], 200, upper, 1, NULL, 0),
                   SP_ERR_INVAL);
  RUN_UNTIL(&e, r2.calls == 1, 5000);
  assert_int_equal(r2.err, SP_ERR_CONNRESET);
  assert_int_equal(c.downs, 0);
  client_close(&c);
  env_finish(&e);
}

/* ---- socketless: a test-side nghttp2 client over sp_tls -------------------------------- */

typedef struct memh {
  sp_tls_ctx *sctx, *cctx;
  sp_h2_server *srv;
  sp_h2_conn *conn;
  sp_tls *tls;
  nghttp2_session *ng; /* NULL: TLS only, no HTTP/2 client */
  long budget;         /* >= 0: sp_alloc successes left to the server */
  int requests;
  int status[16]; /* by stream id / 2 */
  int closed[16];
  int goaway;
  uint32_t goaway_code;
  const char *body;
  size_t body_len, body_off;
} memh;

static int mh_header(nghttp2_session *s, const nghttp2_frame *f,
                     const uint8_t *n, size_t nl, const uint8_t *v, size_t vl,
                     uint8_t fl, void *ud) {
  (void)s;
  (void)fl;
  (void)vl;
  memh *m = ud;
  if (nl == 7 && memcmp(n, ":status", 7) == 0 && f->hd.stream_id < 32)
    m->status[f->hd.stream_id / 2] = atoi((const char *)v); /* NUL-ended */
  return 0;
}

static int mh_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  (void)s;
  memh *m = ud;
  if (f->hd.type == NGHTTP2_GOAWAY) {
    m->goaway = 1;
    m->goaway_code = f->goaway.error_code;
  }
  return 0;
}

static int mh_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
  (void)s;
  (void)code;
  memh *m = ud;
  if (id < 32)
    m->closed[id / 2] = 1;
  return 0;
}

static void mh_request(sp_h2_stream *st, void *arg) {
  memh *m = arg;
  m->requests++;
  sp_iov b = sp_h2_stream_body(st);
  int rc = sp_h2_respond(st, 200, NULL, 0, b.base, b.len);
  assert_true(rc == 0 || (m->budget >= 0 && rc == SP_ERR_NOMEM));
}

static ssize_t mh_read(nghttp2_session *s, int32_t id, uint8_t *buf,
                       size_t len, uint32_t *flags, nghttp2_data_source *src,
                       void *ud) {
  (void)s;
  (void)id;
  (void)src;
  memh *m = ud;
  size_t n = m->body_len - m->body_off;
  if (n > len)
    n = len;
  memcpy(buf, m->body + m->body_off, n);
  m->body_off += n;
  if (m->body_off == m->body_len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* The server's share of the allocation budget: armed only around calls
 * into it, so the test's own allocations never fail. */
static void arm(memh *m) {
  if (m->budget >= 0)
    sp_alloc_fail_after(m->budget);
}
static void disarm(memh *m) {
  if (m->budget < 0)
    return;
  long used = sp_alloc_count();
  m->budget = used >= m->budget ? 0 : m->budget - used;
  sp_alloc_fail_after(-1);
}

/* Our TLS output -> the server. */
static int mh_push(memh *m) {
  sp_buf tmp;
  sp_buf_init(&tmp, SP_BUF_UNLIMITED);
  assert_int_equal(sp_tls_take_output(m->tls, &tmp), 0);
  int moved = 0;
  if (tmp.len) {
    arm(m);
    moved = sp_h2_conn_mem_feed(m->conn, tmp.base, tmp.len) == 0;
    disarm(m);
  }
  sp_buf_release(&tmp);
  return moved;
}

/* Moves bytes both ways until nothing moves. */
static void mh_shuttle(memh *m) {
  for (int round = 0; round < 1000; round++) {
    if (!sp_tls_established(m->tls)) {
      (void)sp_tls_handshake(m->tls);
    } else if (m->ng) {
      const uint8_t *d;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(m->ng, &d)) > 0)
        assert_int_equal(sp_tls_write(m->tls, d, (size_t)n), 0);
    }
    int moved = mh_push(m);
    sp_iov out = sp_h2_conn_mem_output(m->conn);
    if (out.len) {
      assert_int_equal(sp_tls_feed(m->tls, out.base, out.len), 0);
      arm(m);
      sp_h2_conn_mem_consume(m->conn, out.len);
      disarm(m);
      moved = 1;
    }
    if (m->ng && (sp_tls_established(m->tls) ||
                  sp_tls_handshake(m->tls) == 0)) {
      char plain[16384];
      size_t got;
      while (sp_tls_read(m->tls, plain, sizeof plain, &got) == 0)
        assert_true(nghttp2_session_mem_recv(m->ng, (uint8_t *)plain, got) >=
                    0);
    }
    if (!moved)
      return;
  }
  fail_msg("no quiescence");
}

/* A socketless server connection and a TLS (+ HTTP/2 when with_h2) client
 * talking to it; returns with the TLS handshake done unless the server
 * failed (allocation sweep). */
static void mh_open(memh *m, size_t max_body, int with_h2, long budget) {
  memset(m, 0, sizeof *m);
  m->budget = -1;
  m->sctx = server_ctx();
  sp_h2_config cfg;
  sp_h2_config_init(&cfg);
  cfg.max_body_bytes = max_body;
  assert_int_equal(sp_h2_server_new(NULL, m->sctx, &cfg, mh_request, m,
                                    &m->srv),
                   0);
  assert_int_equal(sp_h2_server_close(m->srv, NULL, NULL), SP_ERR_INVAL);
  assert_int_equal(sp_h2_conn_mem_new(m->srv, &m->conn), 0);
  m->cctx = client_ctx("eu-west");
  assert_int_equal(sp_tls_new(m->cctx, "us-east", &m->tls), 0);
  if (with_h2) {
    nghttp2_session_callbacks *cbs;
    assert_int_equal(nghttp2_session_callbacks_new(&cbs), 0);
    nghttp2_session_callbacks_set_on_header_callback(cbs, mh_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, mh_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, mh_close);
    assert_int_equal(nghttp2_session_client_new(&m->ng, cbs, m), 0);
    nghttp2_session_callbacks_del(cbs);
    assert_int_equal(
        nghttp2_submit_settings(m->ng, NGHTTP2_FLAG_NONE, NULL, 0), 0);
  }
  m->budget = budget;
  mh_shuttle(m);
  if (budget < 0)
    assert_true(sp_tls_established(m->tls));
}

static void mh_close_all(memh *m) {
  sp_h2_conn_mem_free(m->conn);
  sp_h2_server_free(m->srv);
  nghttp2_session_del(m->ng);
  sp_tls_free(m->tls);
  sp_tls_ctx_free(m->cctx);
  sp_tls_ctx_free(m->sctx);
}

static int32_t mh_post(memh *m, const char *p, const char *body, size_t len,
                       int with_length) {
  char lbuf[24];
  snprintf(lbuf, sizeof lbuf, "%zu", len);
  nghttp2_nv nv[] = {
      {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, 0},
      {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
      {(uint8_t *)":authority", (uint8_t *)"us-east", 10, 7, 0},
      {(uint8_t *)":path", (uint8_t *)p, 5, strlen(p), 0},
      {(uint8_t *)"content-length", (uint8_t *)lbuf, 14, strlen(lbuf), 0},
  };
  m->body = body;
  m->body_len = len;
  m->body_off = 0;
  nghttp2_data_provider prd = {.source.ptr = m, .read_callback = mh_read};
  int32_t id =
      nghttp2_submit_request(m->ng, NULL, nv, with_length ? 5 : 4, &prd, NULL);
  assert_true(id > 0);
  return id;
}

static void test_streaming_body_over_limit_sans_io(void **state) {
  (void)state;
  int logfd = open(path("memlog"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  sp_log_set_fd(logfd);
  memh m;
  mh_open(&m, 16 * 1024, 1, -1);
  /* no content-length: the limit trips while the data arrives */
  static char big[100 * 1024];
  memset(big, 'z', sizeof big);
  int32_t a = mh_post(&m, "/big", big, sizeof big, 0);
  mh_shuttle(&m);
  assert_int_equal(m.status[a / 2], 413);
  assert_true(m.closed[a / 2]);
  assert_int_equal(m.requests, 0);
  int32_t b = mh_post(&m, "/small", "hello", 5, 1);
  mh_shuttle(&m);
  assert_int_equal(m.status[b / 2], 200);
  assert_int_equal(m.requests, 1);
  assert_int_equal(sp_h2_conn_mem_ended(m.conn, NULL, NULL), 0);
  mh_close_all(&m);
  sp_log_set_fd(2);
  close(logfd);
}

static void test_malformed_frame_goaway_sans_io(void **state) {
  (void)state;
  int logfd = open(path("memlog"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  sp_log_set_fd(logfd);
  memh m;
  mh_open(&m, 1024, 1, -1);
  /* a SETTINGS frame whose length is not a multiple of 6 */
  static const char bad[] = {0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5};
  assert_int_equal(sp_tls_write(m.tls, bad, sizeof bad), 0);
  mh_shuttle(&m);
  assert_int_equal(m.goaway, 1);
  assert_int_equal(m.goaway_code, NGHTTP2_FRAME_SIZE_ERROR);
  int err = 0;
  const char *why = NULL;
  assert_int_equal(sp_h2_conn_mem_ended(m.conn, &err, &why), 1);
  assert_int_equal(err, SP_ERR_PROTO);
  assert_non_null(strstr(why, "protocol error"));
  assert_int_equal(sp_h2_conn_mem_feed(m.conn, "x", 1), SP_ERR_CLOSED);
  mh_close_all(&m);

  /* not HTTP/2 at all inside TLS */
  mh_open(&m, 1024, 0, -1);
  const char *junk = "GET / HTTP/1.1\r\nHost: us-east\r\n\r\n";
  assert_int_equal(sp_tls_write(m.tls, junk, strlen(junk)), 0);
  mh_push(&m);
  assert_int_equal(sp_h2_conn_mem_ended(m.conn, &err, &why), 1);
  assert_int_equal(err, SP_ERR_PROTO);
  mh_close_all(&m);

  char buf[8192];
  ssize_t n = pread(logfd, buf, sizeof buf - 1, 0);
  buf[n > 0 ? n : 0] = '\0';
  assert_non_null(strstr(buf, "sending GOAWAY"));
  assert_non_null(strstr(buf, "h2 connection failed"));
  sp_log_set_fd(2);
  close(logfd);
}

/* Every sp_alloc failure (ours and nghttp2's) in setup and in a request's
 * exchange is a clean error: no crash, no leak (ASan). */
static void test_allocation_failures_sans_io(void **state) {
  (void)state;
  sp_log_set_level(SP_LOG_ERROR);
  sp_tls_ctx *sctx = server_ctx();
  int built = 0;
  for (long k = 0; k < 200 && !built; k++) {
    sp_h2_server *srv = NULL;
    sp_h2_conn *conn = NULL;
    sp_alloc_fail_after(k);
    int rc = sp_h2_server_new(NULL, sctx, NULL, mh_request, NULL, &srv);
    if (rc == 0)
      rc = sp_h2_conn_mem_new(srv, &conn);
    sp_alloc_fail_after(-1);
    assert_true(rc == 0 || rc == SP_ERR_NOMEM);
    built = rc == 0;
    sp_h2_conn_mem_free(conn);
    sp_h2_server_free(srv);
  }
  assert_true(built);
  sp_tls_ctx_free(sctx);

  int answered = 0;
  for (long k = 0; k < 400 && !answered; k++) {
    memh m;
    mh_open(&m, 1024, 1, k);
    if (sp_tls_established(m.tls)) {
      int32_t id = mh_post(&m, "/a", "abc", 3, 1);
      mh_shuttle(&m);
      answered = m.status[id / 2] == 200;
      if (!answered) /* the server ended or reset: it said so */
        assert_true(sp_h2_conn_mem_ended(m.conn, NULL, NULL) ||
                    m.closed[id / 2]);
    }
    m.budget = -1;
    mh_close_all(&m);
  }
  assert_true(answered);
  sp_log_set_level(SP_LOG_INFO);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrent_round_trip),
      cmocka_unit_test(test_client_cert_from_other_ca_refused),
      cmocka_unit_test(test_server_with_wrong_name_refused),
      cmocka_unit_test(test_client_without_cert_refused),
      cmocka_unit_test(test_body_over_limit_413_connection_carries_on),
      cmocka_unit_test(test_header_list_over_limit_431),
      cmocka_unit_test(test_response_over_client_limit),
      cmocka_unit_test(test_concurrent_stream_limit),
      cmocka_unit_test(test_handler_reset_then_connection_carries_on),
      cmocka_unit_test(test_server_drops_connection_mid_stream),
      cmocka_unit_test(test_client_closes_mid_stream),
      cmocka_unit_test(test_graceful_close_with_streams_in_flight),
      cmocka_unit_test(test_peer_vanishes_mid_stream_one_callback),
      cmocka_unit_test(test_ping_liveness_and_timeout),
      cmocka_unit_test(test_handshake_timeout_and_connect_refused),
      cmocka_unit_test(test_garbage_instead_of_tls),
      cmocka_unit_test(test_connections_over_the_cap_refused),
      cmocka_unit_test(test_argument_checks),
      cmocka_unit_test(test_streaming_body_over_limit_sans_io),
      cmocka_unit_test(test_malformed_frame_goaway_sans_io),
      cmocka_unit_test(test_allocation_failures_sans_io),
  };
  if (getenv("H2_TEST_FILTER"))
    cmocka_set_test_filter(getenv("H2_TEST_FILTER"));
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
