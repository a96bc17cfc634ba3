/* libFuzzer target for the HTTP/2 server engine (sp_h2, socketless): the
 * input is what a client sends after the connection preface, byte for
 * byte, inside a real TLS 1.3 session (a test-side sp_tls client encrypts
 * it; the server connection decrypts it and feeds nghttp2).  It goes in
 * pieces whose sizes come from the input length, and the server's output
 * is drained (and decrypted) between pieces, so flow control and output
 * backpressure move.  Handlers answer at once (echo), refuse
 * (sp_h2_stream_reset), or hold a stream and answer it after the
 * connection ended (the detached path).  Small limits make 413/431
 * reachable.  Checked: no crash, no leak (ASan), and an ended connection
 * refuses more input with SP_ERR_CLOSED.
 *
 * Certificates are issued once per process into a temporary directory.
 * Seeds: tests/fuzz/corpus/h2/ (SETTINGS + a request, a request with a
 * body, PING/WINDOW_UPDATE, a malformed frame).
 */
#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_h2.h"
#include "sp_log.h"
#include "sp_tls.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static sp_tls_ctx *sctx, *cctx;
static char dir[64];

static void cleanup(void) {
  static const char *const files[] = {"ca.crt", "ca.key", "s.crt",
                                      "s.key",  "c.crt",  "c.key"};
  char p[128];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, files[i]);
    unlink(p);
  }
  rmdir(dir);
  sp_tls_ctx_free(sctx);
  sp_tls_ctx_free(cctx);
}

static void setup(void) {
  snprintf(dir, sizeof dir, "/tmp/fuzz_h2.XXXXXX");
  if (mkdtemp(dir) == NULL)
    abort();
  char ca[128], cak[128], s[128], sk[128], c[128], ck[128];
  snprintf(ca, sizeof ca, "%s/ca.crt", dir);
  snprintf(cak, sizeof cak, "%s/ca.key", dir);
  snprintf(s, sizeof s, "%s/s.crt", dir);
  snprintf(sk, sizeof sk, "%s/s.key", dir);
  snprintf(c, sizeof c, "%s/c.crt", dir);
  snprintf(ck, sizeof ck, "%s/c.key", dir);
  sp_tls_cert_spec spec = {"ca", 0, 1, -60, 86400, NULL, NULL};
  if (sp_tls_issue(&spec, ca, cak, NULL, 0))
    abort();
  spec = (sp_tls_cert_spec){"us-east", 1, 0, -60, 86400, ca, cak};
  if (sp_tls_issue(&spec, s, sk, NULL, 0))
    abort();
  spec.name = "eu-west";
  if (sp_tls_issue(&spec, c, ck, NULL, 0))
    abort();
  if (sp_tls_ctx_new_server(ca, s, sk, "h2", NULL, 0, &sctx) ||
      sp_tls_ctx_new_client(ca, c, ck, "h2", NULL, 0, &cctx))
    abort();
  atexit(cleanup);
  sp_log_set_level(SP_LOG_ERROR);
}

typedef struct fuzz_app {
  sp_h2_stream *held;
  unsigned n;
} fuzz_app;

static void on_request(sp_h2_stream *st, void *arg) {
  fuzz_app *a = arg;
  switch (a->n++ % 3) {
  case 0: {
    sp_iov b = sp_h2_stream_body(st);
    sp_h2_header h[] = {{"x-path", sp_h2_stream_path(st)}};
    (void)sp_h2_respond(st, 200, h, 1, b.base, b.len);
    break;
  }
  case 1:
    (void)sp_h2_stream_reset(st);
    break;
  default:
    if (a->held == NULL)
      a->held = st;
    else
      (void)sp_h2_respond(st, 204, NULL, 0, NULL, 0);
  }
}

/* Server output -> client; the plaintext is read and dropped. */
static void drain(sp_h2_conn *conn, sp_tls *cli) {
  for (int i = 0; i < 64; i++) {
    sp_iov out = sp_h2_conn_mem_output(conn);
    if (out.len == 0)
      return;
    sp_tls_feed(cli, out.base, out.len);
    sp_h2_conn_mem_consume(conn, out.len);
    (void)sp_tls_handshake(cli);
    char plain[16384];
    size_t n;
    while (sp_tls_established(cli) &&
           sp_tls_read(cli, plain, sizeof plain, &n) == 0)
      ;
  }
}

/* Client TLS output -> server. */
static int push(sp_tls *cli, sp_h2_conn *conn) {
  sp_buf b;
  sp_buf_init(&b, SP_BUF_UNLIMITED);
  int rc = sp_tls_take_output(cli, &b);
  if (rc == 0 && b.len)
    rc = sp_h2_conn_mem_feed(conn, b.base, b.len);
  sp_buf_release(&b);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (sctx == NULL)
    setup();
  sp_h2_config cfg;
  sp_h2_config_init(&cfg);
  cfg.max_body_bytes = 4096;
  cfg.max_header_list_bytes = 2048;
  cfg.max_concurrent_streams = 8;
  cfg.stream_window_bytes = 65535;
  fuzz_app app = {0};
  sp_h2_server *srv;
  sp_h2_conn *conn;
  sp_tls *cli;
  if (sp_h2_server_new(NULL, sctx, &cfg, on_request, &app, &srv))
    abort();
  if (sp_h2_conn_mem_new(srv, &conn) || sp_tls_new(cctx, "us-east", &cli))
    abort();
  for (int i = 0; i < 8 && !sp_tls_established(cli); i++) {
    (void)sp_tls_handshake(cli);
    push(cli, conn);
    drain(conn, cli);
  }
  if (!sp_tls_established(cli))
    abort(); /* the handshake itself is not what is fuzzed */
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  sp_tls_write(cli, preface, sizeof preface - 1);
  size_t step = 1 + size % 97;
  for (size_t off = 0; off < size; off += step) {
    size_t n = size - off < step ? size - off : step;
    if (sp_tls_write(cli, data + off, n) != 0)
      break;
    int rc = push(cli, conn);
    if (rc == SP_ERR_CLOSED)
      break;
    if (rc != 0)
      abort();
    drain(conn, cli);
  }
  if (sp_h2_conn_mem_ended(conn, NULL, NULL) &&
      sp_h2_conn_mem_feed(conn, "x", 1) != SP_ERR_CLOSED)
    abort();
  sp_h2_conn_mem_free(conn);
  if (app.held && sp_h2_respond(app.held, 200, NULL, 0, "x", 1) !=
                      SP_ERR_CLOSED)
    abort(); /* the connection is gone: the answer must be refused */
  sp_h2_server_free(srv);
  sp_tls_free(cli);
  return 0;
}
