/* Tests for sp_tls: contexts, certificate issuing, and in-memory TLS 1.3
 * handshakes between a client and a server session (bytes shuttled by the
 * test, no sockets): mutual authentication, peer-name checks (SAN, CN,
 * allowed set), refusals with their reasons (another CA, wrong name, no
 * client certificate, expired, self-signed, ALPN, TLS 1.2, garbage), data
 * both ways and close_notify.
 *
 * The group setup issues a cluster CA, region certificates and a foreign CA
 * into a temporary directory with sp_tls_issue (EC P-256, fast). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "sp_alloc.h"
#include "sp_err.h"
#include "sp_tls.h"

static char dir[64];

static const char *path(const char *name) {
  static char bufs[8][400];
  static int i;
  char *b = bufs[i++ % 8];
  snprintf(b, 400, "%s/%s", dir, name);
  return b;
}

/* name.crt / name.key signed by `issuer` (a prefix with .crt/.key), or
 * self-signed when issuer is NULL. */
static void issue(const char *file, const char *name, const char *issuer,
                  int is_ca, int san, long nb, long na) {
  char ic[128], ik[128], c[128], k[128], err[256] = "";
  snprintf(c, sizeof c, "%s/%s.crt", dir, file);
  snprintf(k, sizeof k, "%s/%s.key", dir, file);
  if (issuer) {
    snprintf(ic, sizeof ic, "%s/%s.crt", dir, issuer);
    snprintf(ik, sizeof ik, "%s/%s.key", dir, issuer);
  }
  sp_tls_cert_spec spec = {name, san, is_ca, nb, na, issuer ? ic : NULL,
                           issuer ? ik : NULL};
  int rc = sp_tls_issue(&spec, c, k, err, sizeof err);
  if (rc)
    fprintf(stderr, "issue %s: %s\n", file, err);
  assert_int_equal(rc, 0);
}

static int group_setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/sp_tls_test.XXXXXX");
  if (mkdtemp(dir) == NULL)
    return -1;
  long year = 365L * 86400;
  issue("ca", "statuspage cluster CA", NULL, 1, 0, -60, 10 * year);
  issue("us-east", "us-east", "ca", 0, 1, -60, year);
  issue("eu-west", "eu-west", "ca", 0, 1, -60, year);
  issue("cn-only", "ap-south", "ca", 0, 0, -60, year);
  issue("expired", "eu-west", "ca", 0, 1, -2 * year, -year);
  issue("selfsigned", "eu-west", NULL, 0, 1, -60, year);
  issue("foreign-ca", "someone else's CA", NULL, 1, 0, -60, year);
  issue("foreign", "eu-west", "foreign-ca", 0, 1, -60, year);
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

/* ---- helpers ---------------------------------------------------------------- */

static sp_tls_ctx *server_ctx(const char *who) {
  char c[128], k[128];
  snprintf(c, sizeof c, "%s/%s.crt", dir, who);
  snprintf(k, sizeof k, "%s/%s.key", dir, who);
  sp_tls_ctx *ctx = NULL;
  assert_int_equal(
      sp_tls_ctx_new_server(path("ca.crt"), c, k, "h2", NULL, 0, &ctx), 0);
  return ctx;
}

static sp_tls_ctx *client_ctx(const char *who, const char *alpn) {
  char c[128], k[128];
  if (who) {
    snprintf(c, sizeof c, "%s/%s.crt", dir, who);
    snprintf(k, sizeof k, "%s/%s.key", dir, who);
  }
  sp_tls_ctx *ctx = NULL;
  assert_int_equal(sp_tls_ctx_new_client(path("ca.crt"), who ? c : NULL,
                                         who ? k : NULL, alpn, NULL, 0, &ctx),
                   0);
  return ctx;
}

/* Moves a's output into b; 1 when something moved. */
static int move(sp_tls *a, sp_tls *b) {
  sp_buf tmp;
  sp_buf_init(&tmp, SP_BUF_UNLIMITED);
  assert_int_equal(sp_tls_take_output(a, &tmp), 0);
  int moved = tmp.len > 0;
  if (moved)
    assert_int_equal(sp_tls_feed(b, tmp.base, tmp.len), 0);
  sp_buf_release(&tmp);
  return moved;
}

/* Runs both handshakes until neither makes progress; then lets each read
 * once (a TLS 1.3 client learns of its refusal by an alert after its own
 * handshake finished).  *crc / *src get the final codes. */
static void handshake(sp_tls *cli, sp_tls *srv, int *crc, int *src) {
  *crc = *src = SP_ERR_AGAIN;
  for (int i = 0; i < 20; i++) {
    if (*crc == SP_ERR_AGAIN)
      *crc = sp_tls_handshake(cli);
    int m = move(cli, srv);
    if (*src == SP_ERR_AGAIN)
      *src = sp_tls_handshake(srv);
    m |= move(srv, cli);
    if (!m)
      break;
  }
  char buf[64];
  size_t n;
  if (*crc == 0) {
    int r = sp_tls_read(cli, buf, sizeof buf, &n);
    if (r != SP_ERR_AGAIN)
      *crc = r;
  }
  if (*src == 0) {
    int r = sp_tls_read(srv, buf, sizeof buf, &n);
    if (r != SP_ERR_AGAIN)
      *src = r;
  }
}

typedef struct pair {
  sp_tls_ctx *cctx, *sctx;
  sp_tls *cli, *srv;
  int crc, src;
} pair;

static void pair_run(pair *p, const char *client_cert, const char *server_cert,
                     const char *expect) {
  p->sctx = server_ctx(server_cert);
  p->cctx = client_ctx(client_cert, "h2");
  assert_int_equal(sp_tls_new(p->cctx, expect, &p->cli), 0);
  assert_int_equal(sp_tls_new(p->sctx, NULL, &p->srv), 0);
  handshake(p->cli, p->srv, &p->crc, &p->src);
}

static void pair_free(pair *p) {
  sp_tls_free(p->cli);
  sp_tls_free(p->srv);
  sp_tls_ctx_free(p->cctx);
  sp_tls_ctx_free(p->sctx);
}

/* ---- tests ------------------------------------------------------------------- */

static void test_mutual_handshake_and_data(void **state) {
  (void)state;
  pair p;
  pair_run(&p, "eu-west", "us-east", "us-east");
  assert_int_equal(p.crc, 0);
  assert_int_equal(p.src, 0);
  assert_true(sp_tls_established(p.cli));
  assert_true(sp_tls_established(p.srv));
  assert_string_equal(sp_tls_peer_name(p.srv), "eu-west");
  assert_string_equal(sp_tls_peer_name(p.cli), "us-east");
  assert_string_equal(sp_tls_alpn(p.cli), "h2");
  assert_string_equal(sp_tls_alpn(p.srv), "h2");
  assert_string_equal(sp_tls_reason(p.cli), "");

  /* 100 KiB client -> server, several records */
  static char big[100 * 1024];
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (char)(i * 7);
  assert_int_equal(sp_tls_write(p.cli, big, sizeof big), 0);
  assert_true(sp_tls_output_len(p.cli) > sizeof big);
  move(p.cli, p.srv);
  static char got[sizeof big];
  size_t have = 0, n;
  while (sp_tls_read(p.srv, got + have, sizeof got - have, &n) == 0)
    have += n;
  assert_int_equal(have, sizeof big);
  assert_memory_equal(got, big, sizeof big);

  assert_int_equal(sp_tls_write(p.srv, "pong", 4), 0);
  move(p.srv, p.cli);
  char small[8];
  assert_int_equal(sp_tls_read(p.cli, small, sizeof small, &n), 0);
  assert_int_equal(n, 4);
  assert_memory_equal(small, "pong", 4);
  assert_int_equal(sp_tls_read(p.cli, small, sizeof small, &n), SP_ERR_AGAIN);

  /* goodbye: the peer reads CLOSED, we cannot write any more */
  assert_int_equal(sp_tls_close_notify(p.cli), 0);
  move(p.cli, p.srv);
  assert_int_equal(sp_tls_read(p.srv, small, sizeof small, &n), SP_ERR_CLOSED);
  assert_int_equal(sp_tls_write(p.cli, "x", 1), SP_ERR_NOTCONN);
  pair_free(&p);
}

static void test_client_cert_from_another_ca_refused(void **state) {
  (void)state;
  pair p;
  pair_run(&p, "foreign", "us-east", "us-east");
  assert_int_equal(p.src, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.srv), "peer certificate refused"));
  assert_non_null(
      strstr(sp_tls_reason(p.srv), "unable to get local issuer certificate"));
  /* the client hears of it by the server's alert */
  assert_int_equal(p.crc, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.cli), "refused our certificate"));
  assert_null(sp_tls_peer_name(p.srv));
  /* failures stick */
  assert_int_equal(sp_tls_handshake(p.srv), SP_ERR_ACCES);
  assert_int_equal(sp_tls_write(p.srv, "x", 1), SP_ERR_NOTCONN);
  pair_free(&p);
}

static void test_server_with_wrong_name_refused(void **state) {
  (void)state;
  pair p;
  pair_run(&p, "eu-west", "us-east", "ap-south");
  assert_int_equal(p.crc, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.cli), "its name is not \"ap-south\""));
  assert_int_not_equal(p.src, 0); /* the server got our alert */
  assert_null(sp_tls_peer_name(p.cli));
  pair_free(&p);
}

static void test_client_without_cert_refused(void **state) {
  (void)state;
  pair p;
  pair_run(&p, NULL, "us-east", "us-east");
  assert_int_equal(p.src, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.srv), "sent none"));
  assert_int_equal(p.crc, SP_ERR_ACCES);
  pair_free(&p);
}

static void test_expired_and_self_signed_refused(void **state) {
  (void)state;
  pair p;
  pair_run(&p, "expired", "us-east", "us-east");
  assert_int_equal(p.src, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.srv), "expired"));
  pair_free(&p);

  pair_run(&p, "eu-west", "selfsigned", "eu-west");
  assert_int_equal(p.crc, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.cli), "self"));
  pair_free(&p);
}

static void test_cn_only_certificate_names_peer(void **state) {
  (void)state;
  /* "cn-only" carries no SAN: its CN "ap-south" is its name */
  pair p;
  pair_run(&p, "cn-only", "us-east", "us-east");
  assert_int_equal(p.src, 0);
  assert_string_equal(sp_tls_peer_name(p.srv), "ap-south");
  pair_free(&p);
  pair_run(&p, "eu-west", "cn-only", "ap-south");
  assert_int_equal(p.crc, 0);
  pair_free(&p);
}

static void test_server_allowed_set(void **state) {
  (void)state;
  pair p = {0};
  p.sctx = server_ctx("us-east");
  p.cctx = client_ctx("eu-west", "h2");
  assert_int_equal(sp_tls_ctx_allow_peer(p.cctx, "x"), SP_ERR_INVAL);
  assert_int_equal(sp_tls_ctx_allow_peer(p.sctx, ""), SP_ERR_INVAL);
  assert_int_equal(sp_tls_ctx_allow_peer(p.sctx, "ap-south"), 0);
  assert_int_equal(sp_tls_new(p.cctx, "us-east", &p.cli), 0);
  assert_int_equal(sp_tls_new(p.sctx, NULL, &p.srv), 0);
  handshake(p.cli, p.srv, &p.crc, &p.src);
  assert_int_equal(p.src, SP_ERR_ACCES);
  assert_non_null(strstr(sp_tls_reason(p.srv), "not an allowed peer"));
  sp_tls_free(p.cli);
  sp_tls_free(p.srv);

  /* once allowed, the matched name is the peer name */
  assert_int_equal(sp_tls_ctx_allow_peer(p.sctx, "eu-west"), 0);
  assert_int_equal(sp_tls_new(p.cctx, "us-east", &p.cli), 0);
  assert_int_equal(sp_tls_new(p.sctx, NULL, &p.srv), 0);
  handshake(p.cli, p.srv, &p.crc, &p.src);
  assert_int_equal(p.src, 0);
  assert_int_equal(p.crc, 0);
  assert_string_equal(sp_tls_peer_name(p.srv), "eu-west");
  pair_free(&p);
}

static void test_alpn_mismatch_refused(void **state) {
  (void)state;
  pair p = {0};
  p.sctx = server_ctx("us-east");
  p.cctx = client_ctx("eu-west", "http/1.1");
  assert_int_equal(sp_tls_new(p.cctx, "us-east", &p.cli), 0);
  assert_int_equal(sp_tls_new(p.sctx, NULL, &p.srv), 0);
  handshake(p.cli, p.srv, &p.crc, &p.src);
  assert_int_equal(p.src, SP_ERR_PROTO);
  assert_int_equal(p.crc, SP_ERR_PROTO);
  assert_non_null(strstr(sp_tls_reason(p.srv), "application protocol"));
  pair_free(&p);
}

/* A plain OpenSSL client capped at TLS 1.2 over memory BIOs. */
static void test_tls12_client_refused(void **state) {
  (void)state;
  sp_tls_ctx *sctx = server_ctx("us-east");
  sp_tls *srv;
  assert_int_equal(sp_tls_new(sctx, NULL, &srv), 0);
  SSL_CTX *octx = SSL_CTX_new(TLS_client_method());
  assert_non_null(octx);
  SSL_CTX_set_max_proto_version(octx, TLS1_2_VERSION);
  SSL *ssl = SSL_new(octx);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, rb, wb);
  SSL_set_connect_state(ssl);
  int rc = SP_ERR_AGAIN;
  for (int i = 0; i < 10 && rc == SP_ERR_AGAIN; i++) {
    (void)SSL_do_handshake(ssl);
    char *p;
    long n = BIO_get_mem_data(wb, &p);
    if (n > 0) {
      sp_tls_feed(srv, p, (size_t)n);
      (void)BIO_reset(wb);
    }
    rc = sp_tls_handshake(srv);
  }
  assert_int_equal(rc, SP_ERR_PROTO);
  assert_non_null(strstr(sp_tls_reason(srv), "TLS failure"));
  SSL_free(ssl);
  SSL_CTX_free(octx);
  sp_tls_free(srv);
  sp_tls_ctx_free(sctx);
}

static void test_garbage_is_a_protocol_error(void **state) {
  (void)state;
  sp_tls_ctx *sctx = server_ctx("us-east");
  sp_tls *srv;
  assert_int_equal(sp_tls_new(sctx, NULL, &srv), 0);
  const char *junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  assert_int_equal(sp_tls_feed(srv, junk, strlen(junk)), 0);
  assert_int_equal(sp_tls_handshake(srv), SP_ERR_PROTO);
  assert_true(strlen(sp_tls_reason(srv)) > 0);
  char buf[8];
  size_t n;
  assert_int_equal(sp_tls_read(srv, buf, sizeof buf, &n), SP_ERR_PROTO);
  sp_tls_free(srv);
  /* reading before the handshake is NOTCONN */
  assert_int_equal(sp_tls_new(sctx, NULL, &srv), 0);
  assert_int_equal(sp_tls_read(srv, buf, sizeof buf, &n), SP_ERR_NOTCONN);
  assert_int_equal(sp_tls_write(srv, "x", 1), SP_ERR_NOTCONN);
  sp_tls_free(srv);
  sp_tls_ctx_free(sctx);
}

static void test_context_errors_name_the_file(void **state) {
  (void)state;
  sp_tls_ctx *ctx = NULL;
  char err[256];
  assert_int_equal(sp_tls_ctx_new_server(path("nope.crt"), path("us-east.crt"),
                                         path("us-east.key"), "h2", err,
                                         sizeof err, &ctx),
                   SP_ERR_CONFIG);
  assert_non_null(strstr(err, "nope.crt"));
  assert_int_equal(sp_tls_ctx_new_server(path("ca.crt"), path("us-east.crt"),
                                         path("eu-west.key"), "h2", err,
                                         sizeof err, &ctx),
                   SP_ERR_CONFIG);
  assert_non_null(strstr(err, "does not match"));
  assert_int_equal(sp_tls_ctx_new_server(path("ca.crt"), path("us-east.key"),
                                         path("us-east.key"), "h2", err,
                                         sizeof err, &ctx),
                   SP_ERR_CONFIG);
  assert_non_null(strstr(err, "cannot load certificate"));
  /* a server needs a certificate; cert without key is invalid */
  assert_int_equal(sp_tls_ctx_new_server(path("ca.crt"), NULL, NULL, "h2",
                                         err, sizeof err, &ctx),
                   SP_ERR_INVAL);
  assert_int_equal(sp_tls_ctx_new_client(path("ca.crt"), path("eu-west.crt"),
                                         NULL, "h2", err, sizeof err, &ctx),
                   SP_ERR_INVAL);
  assert_int_equal(sp_tls_ctx_new_client(NULL, NULL, NULL, "h2", err,
                                         sizeof err, &ctx),
                   SP_ERR_INVAL);
  /* sessions: a client must name its peer, a server must not */
  ctx = client_ctx("eu-west", "h2");
  sp_tls *t;
  assert_int_equal(sp_tls_new(ctx, NULL, &t), SP_ERR_INVAL);
  assert_int_equal(sp_tls_new(ctx, "", &t), SP_ERR_INVAL);
  sp_tls_ctx_free(ctx);
  ctx = server_ctx("us-east");
  assert_int_equal(sp_tls_new(ctx, "x", &t), SP_ERR_INVAL);
  sp_tls_ctx_free(ctx);
  sp_tls_ctx_free(NULL);
  sp_tls_free(NULL);
}

static void test_issue_errors(void **state) {
  (void)state;
  char err[256];
  sp_tls_cert_spec spec = {"x", 1, 0, 0, 60, path("ca.crt"), NULL};
  assert_int_equal(sp_tls_issue(&spec, path("x.crt"), path("x.key"), err,
                                sizeof err),
                   SP_ERR_INVAL);
  spec.issuer_key = path("us-east.key"); /* not the CA's key */
  assert_int_equal(sp_tls_issue(&spec, path("x.crt"), path("x.key"), err,
                                sizeof err),
                   SP_ERR_CONFIG);
  assert_non_null(strstr(err, "issuer"));
  spec.issuer_key = path("ca.key");
  assert_int_equal(sp_tls_issue(&spec, "/nonexistent/dir/x.crt",
                                "/nonexistent/dir/x.key", err, sizeof err),
                   SP_ERR_IO);
}

/* Every sp_alloc failure in context and session setup is a clean
 * SP_ERR_NOMEM (OpenSSL's own allocations are not swept). */
static void test_allocation_failures(void **state) {
  (void)state;
  for (long k = 0; k < 20; k++) {
    sp_tls_ctx *ctx = NULL;
    sp_tls *t = NULL;
    sp_alloc_fail_after(k);
    int rc = sp_tls_ctx_new_server(path("ca.crt"), path("us-east.crt"),
                                   path("us-east.key"), "h2", NULL, 0, &ctx);
    if (rc == 0) {
      rc = sp_tls_ctx_allow_peer(ctx, "eu-west");
      if (rc == 0)
        rc = sp_tls_new(ctx, NULL, &t);
    }
    sp_alloc_fail_after(-1);
    assert_true(rc == 0 || rc == SP_ERR_NOMEM);
    sp_tls_free(t);
    sp_tls_ctx_free(ctx);
    if (rc == 0)
      break;
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mutual_handshake_and_data),
      cmocka_unit_test(test_client_cert_from_another_ca_refused),
      cmocka_unit_test(test_server_with_wrong_name_refused),
      cmocka_unit_test(test_client_without_cert_refused),
      cmocka_unit_test(test_expired_and_self_signed_refused),
      cmocka_unit_test(test_cn_only_certificate_names_peer),
      cmocka_unit_test(test_server_allowed_set),
      cmocka_unit_test(test_alpn_mismatch_refused),
      cmocka_unit_test(test_tls12_client_refused),
      cmocka_unit_test(test_garbage_is_a_protocol_error),
      cmocka_unit_test(test_context_errors_name_the_file),
      cmocka_unit_test(test_issue_errors),
      cmocka_unit_test(test_allocation_failures),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
