/* sp_tls: TLS 1.3 with mutual certificate authentication between regions
 * (OpenSSL), sans-I/O.
 *
 * A context (sp_tls_ctx) holds what every connection of one role shares:
 * the cluster CA that peer certificates must chain to, our own certificate
 * and key, the one ALPN protocol both sides must agree on ("h2"), and, for
 * a server, the optional set of peer names it accepts.  A session (sp_tls)
 * is one connection's TLS state on two OpenSSL memory BIOs: the caller
 * feeds ciphertext read from the socket (sp_tls_feed), drives the
 * handshake, reads and writes plaintext, and takes the ciphertext to send
 * (sp_tls_take_output).  Nothing here touches a socket or a loop.
 *
 * Peer checks (both roles): TLS 1.3 only; the peer must present a
 * certificate (a server requires one from clients) that chains to the
 * cluster CA and is within its validity period; its name -- a DNS
 * subjectAltName, or the subject CN when it has no DNS SAN; no wildcards --
 * must equal the name the client expects (sp_tls_new) or, on a server with
 * an allowed set (sp_tls_ctx_allow_peer), one of those names.  A refused
 * peer fails the handshake with SP_ERR_ACCES and a reason (sp_tls_reason)
 * such as "peer certificate refused: unable to get local issuer
 * certificate"; OpenSSL sends the peer the matching alert.
 *
 * sp_tls_issue makes EC P-256 certificates (a CA, or a region certificate
 * signed by it) for statusctl's first run and for tests.
 *
 * Ownership: a context is owned by its creator (sp_tls_ctx_free); sessions
 * keep their own OpenSSL reference, so the context may be freed while
 * sessions made from it live.  Strings returned by a session live as long
 * as it.  OpenSSL allocates through its own allocator, not sp_alloc.
 * Functions return 0 or a negative sp_err code (sp_err.h).
 */
#ifndef SP_TLS_H
#define SP_TLS_H

#include <stddef.h>

#include "sp_buf.h"

typedef struct sp_tls_ctx sp_tls_ctx;
typedef struct sp_tls sp_tls;

/* ---- contexts ------------------------------------------------------------ */

/* A server context: requires every client to present a certificate that
 * chains to the CA in `ca_file` (PEM; every certificate in it is trusted);
 * presents `cert_file` (PEM chain, leaf first) with `key_file` (PEM).
 * `alpn` ("h2") is the one protocol accepted; a client that does not offer
 * it is refused.  NULL = no ALPN.  On failure a reason naming the file is
 * written to err (may be NULL).
 * Returns 0 and *out; SP_ERR_INVAL (a NULL file, alpn longer than 255);
 * SP_ERR_CONFIG (a file unreadable or not PEM, key not matching the
 * certificate); SP_ERR_NOMEM. */
int sp_tls_ctx_new_server(const char *ca_file, const char *cert_file,
                          const char *key_file, const char *alpn, char *err,
                          size_t errsz, sp_tls_ctx **out);

/* A client context: verifies servers against `ca_file` and presents
 * `cert_file`/`key_file`.  Both may be NULL (a client without a
 * certificate: every sp_tls server refuses it; for tests).  `alpn` is
 * offered and required of the server.  Returns as sp_tls_ctx_new_server. */
int sp_tls_ctx_new_client(const char *ca_file, const char *cert_file,
                          const char *key_file, const char *alpn, char *err,
                          size_t errsz, sp_tls_ctx **out);

/* Server contexts: adds `name` (copied) to the set of client names
 * accepted.  While the set is empty any client with a valid certificate is
 * accepted (the caller can still refuse by sp_tls_peer_name).  Affects
 * sessions made afterwards.  Returns 0; SP_ERR_INVAL (client context, NULL
 * or empty name); SP_ERR_NOMEM. */
int sp_tls_ctx_allow_peer(sp_tls_ctx *ctx, const char *name);

/* 1 for a server context, 0 for a client one. */
int sp_tls_ctx_is_server(const sp_tls_ctx *ctx);

/* NULL is a no-op. */
void sp_tls_ctx_free(sp_tls_ctx *ctx);

/* ---- sessions ------------------------------------------------------------ */

/* A session of `ctx`'s role.  A client must give the name it expects in the
 * server's certificate (`peer_name`, copied); a server passes NULL.  A
 * client's first handshake call produces the ClientHello.
 * Returns 0 and *out; SP_ERR_INVAL (missing or extra peer_name);
 * SP_ERR_NOMEM. */
int sp_tls_new(sp_tls_ctx *ctx, const char *peer_name, sp_tls **out);

/* Hands ciphertext received from the peer to the session (copied).
 * 0; SP_ERR_NOMEM. */
int sp_tls_feed(sp_tls *t, const void *data, size_t len);

/* Advances the handshake with the input fed so far.  Returns 0 once the
 * handshake is complete (and on every later call); SP_ERR_AGAIN when it
 * needs more input (take the output first: it may have some); SP_ERR_ACCES
 * when a certificate was refused, by us or (alert) by the peer;
 * SP_ERR_PROTO for any other failure (not TLS, no common version or ALPN).
 * After a failure the output may hold an alert for the peer, and every
 * later call returns the same error. */
int sp_tls_handshake(sp_tls *t);

/* 1 once the handshake completed. */
int sp_tls_established(const sp_tls *t);

/* Decrypts up to `cap` bytes of application data into buf.  Returns 0 with
 * *n > 0; SP_ERR_AGAIN when no complete record is buffered; SP_ERR_CLOSED
 * when the peer sent close_notify; SP_ERR_ACCES / SP_ERR_PROTO as for the
 * handshake (a TLS 1.3 server may refuse our certificate only after our
 * side of the handshake finished: the alert arrives here);
 * SP_ERR_NOTCONN before the handshake completed. */
int sp_tls_read(sp_tls *t, void *buf, size_t cap, size_t *n);

/* Encrypts all `len` bytes of application data into the output.
 * 0; SP_ERR_NOTCONN before the handshake completed or after a failure or
 * close_notify; SP_ERR_NOMEM. */
int sp_tls_write(sp_tls *t, const void *data, size_t len);

/* Queues close_notify (the TLS goodbye).  0, or SP_ERR_NOTCONN when the
 * session never completed its handshake or failed. */
int sp_tls_close_notify(sp_tls *t);

/* Ciphertext waiting to be sent. */
size_t sp_tls_output_len(const sp_tls *t);

/* Appends all pending ciphertext to `out` and removes it from the session.
 * 0; SP_ERR_TOOBIG (out's cap; nothing taken); SP_ERR_NOMEM. */
int sp_tls_take_output(sp_tls *t, sp_buf *out);

/* The authenticated peer name once established: for a client the expected
 * name; for a server the allowed name that matched, or (no allowed set)
 * the certificate's first DNS SAN, else its CN.  NULL before. */
const char *sp_tls_peer_name(const sp_tls *t);

/* The negotiated ALPN protocol or NULL. */
const char *sp_tls_alpn(const sp_tls *t);

/* Why the session failed ("" when it has not). */
const char *sp_tls_reason(const sp_tls *t);

/* NULL is a no-op. */
void sp_tls_free(sp_tls *t);

/* ---- issuing certificates ------------------------------------------------ */

typedef struct sp_tls_cert_spec {
  const char *name;        /* subject CN, and the DNS SAN when san != 0 */
  int san;                 /* add subjectAltName DNS:<name> */
  int is_ca;               /* basicConstraints CA:TRUE, keyCertSign */
  long not_before_s;       /* validity start, seconds from now (e.g. -60) */
  long not_after_s;        /* validity end, seconds from now (< 0: expired) */
  const char *issuer_cert; /* PEM files of the signing CA; both NULL: */
  const char *issuer_key;  /*   self-signed */
} sp_tls_cert_spec;

/* Makes a fresh EC P-256 key and a certificate as `spec` says; writes the
 * certificate (PEM) to cert_out and the key (PEM, mode 0600) to key_out,
 * replacing them.  Leaf certificates carry extendedKeyUsage serverAuth and
 * clientAuth (a region is both).  On failure a reason goes to err.
 * Returns 0; SP_ERR_INVAL (no name; only one issuer file); SP_ERR_CONFIG
 * (issuer files unreadable or not matching); SP_ERR_IO (cannot write);
 * SP_ERR_INTERNAL (OpenSSL failed). */
int sp_tls_issue(const sp_tls_cert_spec *spec, const char *cert_out,
                 const char *key_out, char *err, size_t errsz);

#endif
