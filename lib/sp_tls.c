/* sp_tls: OpenSSL contexts and memory-BIO sessions for mutual TLS 1.3
 * between regions, and certificate issuing (see sp_tls.h).
 *
 * Ownership: a context owns its SSL_CTX and copies of the allowed peer
 * names; a session owns its SSL (which holds a reference to the SSL_CTX and
 * owns both memory BIOs) and its strings.  OpenSSL's error queue is
 * per-thread: every entry point clears it before calling OpenSSL and reads
 * it right after, so a stale error never becomes another call's reason.
 */
#include "sp_tls.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define NAME_MAX_LEN 255

struct sp_tls_ctx {
  SSL_CTX *ssl;
  int server;
  unsigned char alpn[256]; /* wire format: length byte + name */
  size_t alpn_len;         /* 0 = no ALPN */
  char **allowed;
  size_t nallowed;
};

struct sp_tls {
  SSL *ssl;
  BIO *rbio, *wbio; /* owned by ssl */
  int server;
  int established;
  int failed; /* 0, or the error every later call returns */
  int alpn_required;
  unsigned char alpn[256];
  size_t alpn_len;
  char alpn_got[256];
  char *expected; /* client: the name the server must have */
  char peer[NAME_MAX_LEN + 1];
  char reason[320];
};

/* ---- errors ---------------------------------------------------------------- */

static void put_err(char *err, size_t errsz, const char *fmt, const char *a,
                    const char *b) {
  if (err && errsz)
    snprintf(err, errsz, fmt, a ? a : "", b ? b : "");
}

/* The most specific OpenSSL reason queued, then clears the queue. */
static const char *ossl_reason(void) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return r ? r : "unknown OpenSSL error";
}

/* ---- contexts -------------------------------------------------------------- */

static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  (void)ssl;
  sp_tls_ctx *ctx = arg;
  unsigned char *sel;
  unsigned char sellen;
  if (SSL_select_next_proto(&sel, &sellen, ctx->alpn,
                            (unsigned)ctx->alpn_len, in,
                            inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol */
  *out = sel;
  *outlen = sellen;
  return SSL_TLSEXT_ERR_OK;
}

static int ctx_new(int server, const char *ca_file, const char *cert_file,
                   const char *key_file, const char *alpn, char *err,
                   size_t errsz, sp_tls_ctx **out) {
  if (ca_file == NULL || (cert_file == NULL) != (key_file == NULL) ||
      (server && cert_file == NULL) || (alpn && strlen(alpn) > 255) ||
      (alpn && alpn[0] == '\0')) {
    put_err(err, errsz, "%s%sinvalid TLS arguments", NULL, NULL);
    return SP_ERR_INVAL;
  }
  int rc = SP_ERR_NOMEM;
  sp_tls_ctx *ctx = sp_calloc(1, sizeof *ctx);
  if (ctx == NULL)
    goto fail_alloc;
  ctx->server = server;
  if (alpn) {
    size_t n = strlen(alpn);
    ctx->alpn[0] = (unsigned char)n;
    memcpy(ctx->alpn + 1, alpn, n);
    ctx->alpn_len = n + 1;
  }
  ERR_clear_error();
  ctx->ssl = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx->ssl == NULL)
    goto fail_ssl;
  SSL_CTX *s = ctx->ssl;
  rc = SP_ERR_CONFIG;
  /* only TLS 1.3: no downgrade to anything older */
  if (!SSL_CTX_set_min_proto_version(s, TLS1_3_VERSION) ||
      !SSL_CTX_set_max_proto_version(s, TLS1_3_VERSION)) {
    put_err(err, errsz, "cannot restrict to TLS 1.3: %s%s", ossl_reason(),
            NULL);
    goto fail_setup;
  }
  SSL_CTX_set_options(s, SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
  /* one long-lived connection per peer: resumption buys nothing */
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(s, 0);
  if (!SSL_CTX_load_verify_file(s, ca_file)) {
    put_err(err, errsz, "cannot load CA file \"%s\": %s", ca_file,
            ossl_reason());
    goto fail_setup;
  }
  if (cert_file) {
    if (!SSL_CTX_use_certificate_chain_file(s, cert_file)) {
      put_err(err, errsz, "cannot load certificate \"%s\": %s", cert_file,
              ossl_reason());
      goto fail_setup;
    }
    if (!SSL_CTX_use_PrivateKey_file(s, key_file, SSL_FILETYPE_PEM)) {
      int mismatch = ERR_GET_REASON(ERR_peek_last_error()) ==
                     X509_R_KEY_VALUES_MISMATCH;
      put_err(err, errsz,
              mismatch ? "key \"%s\" does not match the certificate (%s)"
                       : "cannot load key \"%s\": %s",
              key_file, ossl_reason());
      goto fail_setup;
    }
    if (!SSL_CTX_check_private_key(s)) {
      put_err(err, errsz, "key \"%s\" does not match the certificate: %s",
              key_file, ossl_reason());
      goto fail_setup;
    }
  }
  if (server) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca_file);
    if (names) /* tells clients which CA we want; optional */
      SSL_CTX_set_client_CA_list(s, names);
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       NULL);
    if (ctx->alpn_len)
      SSL_CTX_set_alpn_select_cb(s, alpn_select, ctx);
  } else {
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
    if (ctx->alpn_len &&
        SSL_CTX_set_alpn_protos(s, ctx->alpn, (unsigned)ctx->alpn_len)) {
      put_err(err, errsz, "cannot set ALPN: %s%s", ossl_reason(), NULL);
      goto fail_setup;
    }
  }
  ERR_clear_error();
  *out = ctx;
  return 0;

fail_setup:
  SSL_CTX_free(ctx->ssl);
fail_ssl:
  sp_free(ctx);
fail_alloc:
  if (rc == SP_ERR_NOMEM)
    put_err(err, errsz, "%s%sout of memory", NULL, NULL);
  ERR_clear_error();
  return rc;
}

int sp_tls_ctx_new_server(const char *ca_file, const char *cert_file,
                          const char *key_file, const char *alpn, char *err,
                          size_t errsz, sp_tls_ctx **out) {
  return ctx_new(1, ca_file, cert_file, key_file, alpn, err, errsz, out);
}

int sp_tls_ctx_new_client(const char *ca_file, const char *cert_file,
                          const char *key_file, const char *alpn, char *err,
                          size_t errsz, sp_tls_ctx **out) {
  return ctx_new(0, ca_file, cert_file, key_file, alpn, err, errsz, out);
}

int sp_tls_ctx_allow_peer(sp_tls_ctx *ctx, const char *name) {
  if (!ctx->server || name == NULL || name[0] == '\0' ||
      strlen(name) > NAME_MAX_LEN)
    return SP_ERR_INVAL;
  char **n = sp_realloc(ctx->allowed, (ctx->nallowed + 1) * sizeof *n);
  if (n == NULL)
    return SP_ERR_NOMEM;
  ctx->allowed = n;
  n[ctx->nallowed] = sp_strdup(name);
  if (n[ctx->nallowed] == NULL)
    return SP_ERR_NOMEM;
  ctx->nallowed++;
  return 0;
}

int sp_tls_ctx_is_server(const sp_tls_ctx *ctx) { return ctx->server; }

void sp_tls_ctx_free(sp_tls_ctx *ctx) {
  if (ctx == NULL)
    return;
  SSL_CTX_free(ctx->ssl);
  for (size_t i = 0; i < ctx->nallowed; i++)
    sp_free(ctx->allowed[i]);
  sp_free(ctx->allowed);
  sp_free(ctx);
}

/* ---- sessions -------------------------------------------------------------- */

int sp_tls_new(sp_tls_ctx *ctx, const char *peer_name, sp_tls **out) {
  if (ctx->server != (peer_name == NULL) ||
      (peer_name && (peer_name[0] == '\0' ||
                     strlen(peer_name) > NAME_MAX_LEN)))
    return SP_ERR_INVAL;
  sp_tls *t = sp_calloc(1, sizeof *t);
  if (t == NULL)
    return SP_ERR_NOMEM;
  t->server = ctx->server;
  t->alpn_required = ctx->alpn_len > 0;
  memcpy(t->alpn, ctx->alpn, ctx->alpn_len);
  t->alpn_len = ctx->alpn_len;
  if (peer_name && (t->expected = sp_strdup(peer_name)) == NULL)
    goto fail_name;
  ERR_clear_error();
  t->ssl = SSL_new(ctx->ssl);
  if (t->ssl == NULL)
    goto fail_ssl;
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->rbio == NULL || t->wbio == NULL)
    goto fail_bio;
  /* an empty input BIO means "wait for more", not end of stream */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio); /* ssl owns both from here */
  X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
  X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_WILDCARDS);
  if (t->server) {
    for (size_t i = 0; i < ctx->nallowed; i++)
      if (!SSL_add1_host(t->ssl, ctx->allowed[i]))
        goto fail_host;
    SSL_set_accept_state(t->ssl);
  } else {
    if (!SSL_set1_host(t->ssl, peer_name))
      goto fail_host;
    SSL_set_connect_state(t->ssl);
  }
  ERR_clear_error();
  *out = t;
  return 0;

fail_bio:
  BIO_free(t->rbio);
  BIO_free(t->wbio);
fail_host:
  SSL_free(t->ssl);
fail_ssl:
  sp_free(t->expected);
fail_name:
  sp_free(t);
  ERR_clear_error();
  return SP_ERR_NOMEM;
}

void sp_tls_free(sp_tls *t) {
  if (t == NULL)
    return;
  SSL_free(t->ssl);
  sp_free(t->expected);
  sp_free(t);
}

int sp_tls_feed(sp_tls *t, const void *data, size_t len) {
  const char *p = data;
  while (len) {
    int n = len > INT_MAX ? INT_MAX : (int)len;
    int w = BIO_write(t->rbio, p, n);
    if (w <= 0) {
      ERR_clear_error();
      return SP_ERR_NOMEM;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

static int is_cert_reason(int r) {
  switch (r) {
  case SSL_R_CERTIFICATE_VERIFY_FAILED:
  case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
  case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
  case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
  case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
  case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
  case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
  case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    return 1;
  default:
    return 0;
  }
}

/* Records why the session failed after an OpenSSL call returned `ret`;
 * returns the sp_err code (or SP_ERR_AGAIN / SP_ERR_CLOSED when it did not
 * fail). */
static int ssl_outcome(sp_tls *t, int ret) {
  int e = SSL_get_error(t->ssl, ret);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    ERR_clear_error();
    return SP_ERR_AGAIN;
  }
  if (e == SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error();
    return SP_ERR_CLOSED;
  }
  long vr = SSL_get_verify_result(t->ssl);
  unsigned long le = ERR_peek_last_error();
  int reason = ERR_GET_REASON(le);
  const char *rs = le ? ERR_reason_error_string(le) : NULL;
  int rc = SP_ERR_PROTO;
  if (vr != X509_V_OK) {
    rc = SP_ERR_ACCES;
    if (vr == X509_V_ERR_HOSTNAME_MISMATCH && !t->server)
      snprintf(t->reason, sizeof t->reason,
               "peer certificate refused: its name is not \"%s\"",
               t->expected);
    else if (vr == X509_V_ERR_HOSTNAME_MISMATCH)
      snprintf(t->reason, sizeof t->reason,
               "peer certificate refused: its name is not an allowed peer");
    else
      snprintf(t->reason, sizeof t->reason, "peer certificate refused: %s",
               X509_verify_cert_error_string(vr));
  } else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    rc = SP_ERR_ACCES;
    snprintf(t->reason, sizeof t->reason,
             "peer certificate refused: the peer sent none");
  } else if (is_cert_reason(reason)) {
    rc = SP_ERR_ACCES;
    snprintf(t->reason, sizeof t->reason,
             "the peer refused our certificate (%s)", rs ? rs : "alert");
  } else if (e == SSL_ERROR_SYSCALL && le == 0) {
    snprintf(t->reason, sizeof t->reason, "TLS failure: unexpected end");
  } else {
    snprintf(t->reason, sizeof t->reason, "TLS failure: %s",
             rs ? rs : "unknown OpenSSL error");
  }
  ERR_clear_error();
  t->failed = rc;
  return rc;
}

/* Copies a certificate name into dst (NAME_MAX_LEN + 1 bytes): 1 when it
 * is 1..NAME_MAX_LEN printable ASCII characters, which is what a region name
 * is; 0 otherwise (dst empty). */
static int copy_name(char *dst, const unsigned char *src, int len) {
  dst[0] = '\0';
  if (src == NULL || len <= 0 || len > NAME_MAX_LEN)
    return 0;
  for (int i = 0; i < len; i++)
    if (src[i] <= 0x20 || src[i] >= 0x7f)
      return 0;
  memcpy(dst, src, (size_t)len);
  dst[len] = '\0';
  return 1;
}

/* After OpenSSL finished: ALPN and the peer name. */
static int finish_handshake(sp_tls *t) {
  const unsigned char *a = NULL;
  unsigned alen = 0;
  SSL_get0_alpn_selected(t->ssl, &a, &alen);
  if (a && alen) {
    memcpy(t->alpn_got, a, alen);
    t->alpn_got[alen] = '\0';
  }
  if (t->alpn_required && (alen != t->alpn_len - 1 ||
                           memcmp(a, t->alpn + 1, alen) != 0)) {
    snprintf(t->reason, sizeof t->reason,
             "TLS failure: the peer did not negotiate ALPN \"%.*s\"",
             (int)(t->alpn_len - 1), (const char *)t->alpn + 1);
    t->failed = SP_ERR_PROTO;
    return SP_ERR_PROTO;
  }
  if (!t->server) {
    snprintf(t->peer, sizeof t->peer, "%s", t->expected);
    t->established = 1;
    return 0;
  }
  /* the verified name when an allowed set was matched, else the
   * certificate's own name */
  const char *matched = SSL_get0_peername(t->ssl);
  int ok = 0;
  if (matched) {
    ok = copy_name(t->peer, (const unsigned char *)matched,
                   (int)strlen(matched));
  } else {
    X509 *pc = SSL_get0_peer_certificate(t->ssl);
    GENERAL_NAMES *gens =
        pc ? X509_get_ext_d2i(pc, NID_subject_alt_name, NULL, NULL) : NULL;
    const ASN1_STRING *dns = NULL;
    for (int i = 0; gens && dns == NULL && i < sk_GENERAL_NAME_num(gens); i++) {
      const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
      if (g->type == GEN_DNS)
        dns = g->d.dNSName;
    }
    if (dns) {
      ok = copy_name(t->peer, ASN1_STRING_get0_data(dns),
                     ASN1_STRING_length(dns));
    } else if (pc) {
      X509_NAME *sn = X509_get_subject_name(pc);
      int idx = X509_NAME_get_index_by_NID(sn, NID_commonName, -1);
      X509_NAME_ENTRY *ne = idx >= 0 ? X509_NAME_get_entry(sn, idx) : NULL;
      ASN1_STRING *d = ne ? X509_NAME_ENTRY_get_data(ne) : NULL;
      if (d)
        ok = copy_name(t->peer, ASN1_STRING_get0_data(d),
                       ASN1_STRING_length(d));
    }
    GENERAL_NAMES_free(gens);
  }
  if (!ok) {
    t->peer[0] = '\0';
    snprintf(t->reason, sizeof t->reason,
             "peer certificate refused: it carries no usable name");
    t->failed = SP_ERR_ACCES;
    return SP_ERR_ACCES;
  }
  t->established = 1;
  return 0;
}

int sp_tls_handshake(sp_tls *t) {
  if (t->failed)
    return t->failed;
  if (t->established)
    return 0;
  ERR_clear_error();
  int ret = SSL_do_handshake(t->ssl);
  if (ret != 1)
    return ssl_outcome(t, ret);
  ERR_clear_error();
  return finish_handshake(t);
}

int sp_tls_established(const sp_tls *t) {
  return t->established && !t->failed;
}

int sp_tls_read(sp_tls *t, void *buf, size_t cap, size_t *n) {
  *n = 0;
  if (t->failed)
    return t->failed;
  if (!t->established)
    return SP_ERR_NOTCONN;
  if (cap == 0)
    return SP_ERR_INVAL;
  ERR_clear_error();
  size_t got = 0;
  int ret = SSL_read_ex(t->ssl, buf, cap, &got);
  if (ret == 1) {
    *n = got;
    return 0;
  }
  return ssl_outcome(t, ret);
}

int sp_tls_write(sp_tls *t, const void *data, size_t len) {
  if (t->failed || !t->established ||
      (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
    return SP_ERR_NOTCONN;
  const char *p = data;
  while (len) {
    size_t w = 0;
    ERR_clear_error();
    /* a memory BIO takes everything: only memory can fail here */
    if (SSL_write_ex(t->ssl, p, len, &w) != 1) {
      int rc = ssl_outcome(t, 0);
      return rc == SP_ERR_AGAIN ? SP_ERR_NOMEM : rc;
    }
    p += w;
    len -= w;
  }
  return 0;
}

int sp_tls_close_notify(sp_tls *t) {
  if (t->failed || !t->established)
    return SP_ERR_NOTCONN;
  ERR_clear_error();
  (void)SSL_shutdown(t->ssl); /* 0: sent, the peer's not yet seen: fine */
  ERR_clear_error();
  return 0;
}

size_t sp_tls_output_len(const sp_tls *t) {
  return (size_t)BIO_ctrl_pending(t->wbio);
}

int sp_tls_take_output(sp_tls *t, sp_buf *out) {
  char *p = NULL;
  long n = BIO_get_mem_data(t->wbio, &p);
  if (n <= 0)
    return 0;
  int rc = sp_buf_add(out, p, (size_t)n);
  if (rc)
    return rc;
  (void)BIO_reset(t->wbio);
  return 0;
}

const char *sp_tls_peer_name(const sp_tls *t) {
  return t->established && !t->failed ? t->peer : NULL;
}

const char *sp_tls_alpn(const sp_tls *t) {
  return t->alpn_got[0] ? t->alpn_got : NULL;
}

const char *sp_tls_reason(const sp_tls *t) { return t->reason; }

/* ---- issuing --------------------------------------------------------------- */

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value) {
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
  if (ext == NULL)
    return -1;
  int ok = X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  return ok ? 0 : -1;
}

static int write_pem(const char *path, int mode, X509 *x, EVP_PKEY *k) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0)
    return -1;
  if (k)
    (void)fchmod(fd, (mode_t)mode); /* an existing file keeps its mode */
  FILE *f = fdopen(fd, "w");
  if (f == NULL) {
    close(fd);
    return -1;
  }
  int ok = x ? PEM_write_X509(f, x)
             : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  if (fclose(f) != 0)
    ok = 0;
  return ok ? 0 : -1;
}

int sp_tls_issue(const sp_tls_cert_spec *spec, const char *cert_out,
                 const char *key_out, char *err, size_t errsz) {
  if (spec == NULL || spec->name == NULL || spec->name[0] == '\0' ||
      strlen(spec->name) > NAME_MAX_LEN || cert_out == NULL ||
      key_out == NULL ||
      (spec->issuer_cert == NULL) != (spec->issuer_key == NULL)) {
    put_err(err, errsz, "%s%sinvalid certificate spec", NULL, NULL);
    return SP_ERR_INVAL;
  }
  int rc = SP_ERR_INTERNAL;
  X509 *icert = NULL, *x = NULL;
  EVP_PKEY *ikey = NULL, *key = NULL;
  ERR_clear_error();
  if (spec->issuer_cert) {
    FILE *f = fopen(spec->issuer_cert, "r");
    if (f) {
      icert = PEM_read_X509(f, NULL, NULL, NULL);
      fclose(f);
    }
    f = fopen(spec->issuer_key, "r");
    if (f) {
      ikey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
      fclose(f);
    }
    if (icert == NULL || ikey == NULL ||
        X509_check_private_key(icert, ikey) != 1) {
      put_err(err, errsz, "cannot use issuer \"%s\" / \"%s\"",
              spec->issuer_cert, spec->issuer_key);
      rc = SP_ERR_CONFIG;
      goto fail_issuer;
    }
  }
  key = EVP_EC_gen("P-256");
  x = X509_new();
  if (key == NULL || x == NULL)
    goto fail_make;
  unsigned char sb[16];
  if (RAND_bytes(sb, sizeof sb) != 1)
    goto fail_make;
  sb[0] &= 0x7f; /* a positive serial */
  BIGNUM *bn = BN_bin2bn(sb, sizeof sb, NULL);
  int serial_ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_NAME *subj = X509_get_subject_name(x);
  if (!serial_ok || !X509_set_version(x, 2) ||
      !X509_gmtime_adj(X509_getm_notBefore(x), spec->not_before_s) ||
      !X509_gmtime_adj(X509_getm_notAfter(x), spec->not_after_s) ||
      !X509_set_pubkey(x, key) ||
      !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8,
                                  (const unsigned char *)spec->name, -1, -1,
                                  0) ||
      !X509_set_issuer_name(x, icert ? X509_get_subject_name(icert) : subj))
    goto fail_make;
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, icert ? icert : x, x, NULL, NULL, 0);
  char san[NAME_MAX_LEN + 8];
  snprintf(san, sizeof san, "DNS:%s", spec->name);
  if (add_ext(x, &v3, NID_basic_constraints,
              spec->is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE") ||
      add_ext(x, &v3, NID_key_usage,
              spec->is_ca ? "critical,keyCertSign,cRLSign"
                          : "critical,digitalSignature") ||
      add_ext(x, &v3, NID_subject_key_identifier, "hash") ||
      add_ext(x, &v3, NID_authority_key_identifier, "keyid:always") ||
      (!spec->is_ca &&
       add_ext(x, &v3, NID_ext_key_usage, "serverAuth,clientAuth")) ||
      (spec->san && add_ext(x, &v3, NID_subject_alt_name, san)))
    goto fail_make;
  if (!X509_sign(x, ikey ? ikey : key, EVP_sha256()))
    goto fail_make;
  if (write_pem(key_out, 0600, NULL, key) ||
      write_pem(cert_out, 0644, x, NULL)) {
    put_err(err, errsz, "cannot write \"%s\" / \"%s\"", cert_out, key_out);
    rc = SP_ERR_IO;
    goto fail_write;
  }
  rc = 0;
  goto done;

fail_make:
  put_err(err, errsz, "cannot make certificate: %s%s", ossl_reason(), NULL);
fail_write:
fail_issuer:
done:
  X509_free(x);
  EVP_PKEY_free(key);
  X509_free(icert);
  EVP_PKEY_free(ikey);
  ERR_clear_error();
  return rc;
}
