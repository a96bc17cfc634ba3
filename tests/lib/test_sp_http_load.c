/* Load test for sp_http: 16 keep-alive connections x 625 requests = 10,000
 * requests over real sockets, written by 16 client threads, mixing plain
 * GETs, POSTs whose body is echoed back, and pipelined batches of five.
 * Every response's status and body is checked; the server's completion hook
 * must have seen every request; zero errors allowed.  Under
 * SANITIZER=address,undefined this doubles as the leak check of a busy
 * server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>

#include "../tools/http_test_client.h"
#include "sp_http.h"

#define CONNS 16
#define PER_CONN 625
#define BATCH 5

typedef struct load {
  atomic_long hooks;
  atomic_long hook_non200;
  atomic_long checked;
  atomic_long errors;
  int port;
} load;

static void h_hello(sp_http_req *req, void *ud) {
  (void)ud;
  sp_http_respond_json(req, 200, "{\"hello\":\"world\"}", 17);
}

static void h_echo(sp_http_req *req, void *ud) {
  (void)ud;
  sp_iov b = sp_http_req_body(req);
  sp_http_header h[] = {{"Content-Type", "text/plain"}};
  sp_http_respond(req, 200, h, 1, b.base, b.len);
}

static void h_item(sp_http_req *req, void *ud) {
  (void)ud;
  const char *n = NULL;
  char body[128];
  int len = snprintf(body, sizeof body, "{\"id\":\"%s\",\"n\":\"%s\"}",
                     sp_http_req_param(req, "id"),
                     sp_http_req_query_param(req, "n", &n) ? "?" : n);
  sp_http_respond_json(req, 200, body, (size_t)len);
}

static const sp_http_route routes[] = {
    {"GET", "/hello", h_hello},
    {"POST", "/echo", h_echo},
    {"GET", "/items/{id}", h_item},
};

static void on_done(void *arg, const char *method, const char *route,
                    int status, uint64_t ns) {
  (void)method;
  (void)route;
  (void)ns;
  load *l = arg;
  l->hooks++;
  if (status != 200)
    l->hook_non200++;
}

typedef struct client {
  load *l;
  int id;
} client;

static int check(hc_conn *c, const char *want_body) {
  hc_resp r;
  if (hc_read(c, &r, 0))
    return -1;
  int ok = r.status == 200 && r.body && strcmp(r.body, want_body) == 0;
  hc_resp_free(&r);
  return ok ? 0 : -1;
}

static void *client_main(void *arg) {
  client *cl = arg;
  load *l = cl->l;
  hc_conn *c = malloc(sizeof *c);
  if (hc_open(c, l->port)) {
    l->errors += PER_CONN;
    free(c);
    return NULL;
  }
  int done = 0;
  while (done < PER_CONN) {
    int kind = done % 3;
    if (kind == 0 && done + BATCH <= PER_CONN) {
      /* a pipelined batch in one write */
      char req[BATCH * 96];
      size_t n = 0;
      for (int i = 0; i < BATCH; i++)
        n += (size_t)snprintf(req + n, sizeof req - n,
                              "GET /items/c%d?n=%d HTTP/1.1\r\nHost: t\r\n\r\n",
                              cl->id, done + i);
      if (hc_sendn(c, req, n)) {
        l->errors += PER_CONN - done;
        break;
      }
      for (int i = 0; i < BATCH; i++) {
        char want[64];
        snprintf(want, sizeof want, "{\"id\":\"c%d\",\"n\":\"%d\"}", cl->id,
                 done + i);
        if (check(c, want))
          l->errors++;
        l->checked++;
      }
      done += BATCH;
    } else if (kind == 1) {
      char body[64], req[160];
      int bl = snprintf(body, sizeof body, "client %d request %d", cl->id, done);
      int n = snprintf(req, sizeof req,
                       "POST /echo HTTP/1.1\r\nHost: t\r\n"
                       "Content-Length: %d\r\n\r\n%s",
                       bl, body);
      if (hc_sendn(c, req, (size_t)n) || check(c, body))
        l->errors++;
      l->checked++;
      done++;
    } else {
      if (hc_send(c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n") ||
          check(c, "{\"hello\":\"world\"}"))
        l->errors++;
      l->checked++;
      done++;
    }
  }
  hc_close(c);
  free(c);
  return NULL;
}

static void test_ten_thousand_keep_alive_requests(void **state) {
  (void)state;
  load l;
  memset(&l, 0, sizeof l);
  sp_http_config cfg;
  sp_http_config_init(&cfg);
  cfg.on_done = on_done;
  cfg.on_done_arg = &l;
  hc_harness h;
  assert_int_equal(hc_harness_start(&h, &cfg, routes, 3, &l), 0);
  l.port = h.port;
  pthread_t th[CONNS];
  client cl[CONNS];
  for (int i = 0; i < CONNS; i++) {
    cl[i] = (client){&l, i};
    assert_int_equal(pthread_create(&th[i], NULL, client_main, &cl[i]), 0);
  }
  for (int i = 0; i < CONNS; i++)
    pthread_join(th[i], NULL);
  assert_int_equal(l.errors, 0);
  assert_int_equal(l.checked, CONNS * PER_CONN);
  assert_int_equal(hc_harness_stop(&h), 0);
  assert_int_equal(l.hooks, CONNS * PER_CONN);
  assert_int_equal(l.hook_non200, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ten_thousand_keep_alive_requests),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
