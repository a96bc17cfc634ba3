/* ops_tls: the cluster CA and the per-region certificates the replication
 * daemons authenticate each other with (mutual TLS), made with OpenSSL's C
 * API on the first `up`.
 *
 * CA: EC P-256 key, self-signed, CA:TRUE pathlen:0, ten years.  Region:
 * EC P-256 key, CN and DNS subjectAltName = the region's name (what a peer
 * checks), IP subjectAltName = its address, serverAuth + clientAuth (each
 * daemon is both), signed by the CA, 825 days.  A region certificate that
 * does not verify against the current CA (the CA was made again) is made
 * again too.  Files are written atomically; keys are 0600.
 *
 * Every OpenSSL object is freed before returning.
 */
#include "ops.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sp_err.h"

#define CA_DAYS 3650
#define REGION_DAYS 825

static void ssl_err(char *err, size_t errlen, const char *what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e)
    ERR_error_string_n(e, buf, sizeof buf);
  snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
  ERR_clear_error();
}

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value) {
  X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
  if (ext == NULL)
    return -1;
  int ok = X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  return ok ? 0 : -1;
}

/* A certificate for `key` named `cn`, signed by (issuer, issuer_key), or
 * self-signed when issuer is NULL (the CA).  NULL on failure. */
static X509 *make_cert(const sp_topo *t, EVP_PKEY *key, const char *cn, const char *address,
                       X509 *issuer, EVP_PKEY *issuer_key) {
  X509 *x = X509_new();
  BIGNUM *serial = BN_new();
  if (x == NULL || serial == NULL)
    goto fail;
  if (!X509_set_version(x, 2) || !BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
      !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)))
    goto fail;
  /* an hour back: a peer whose clock is a little behind accepts it */
  if (!X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
      !X509_gmtime_adj(X509_getm_notAfter(x), 86400L * (issuer ? REGION_DAYS : CA_DAYS)))
    goto fail;
  if (!X509_set_pubkey(x, key))
    goto fail;
  char org[128];
  snprintf(org, sizeof org, "statuspage cluster %s", t->cluster);
  X509_NAME *name = X509_get_subject_name(x);
  if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)org, -1, -1,
                                  0) ||
      !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0))
    goto fail;
  if (!X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name))
    goto fail;
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
  if (issuer == NULL) {
    if (add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
        add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign") ||
        add_ext(x, &v3, NID_subject_key_identifier, "hash"))
      goto fail;
  } else {
    char san[256];
    snprintf(san, sizeof san, "DNS:%s,IP:%s", cn, address);
    if (add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
        add_ext(x, &v3, NID_key_usage, "critical,digitalSignature") ||
        add_ext(x, &v3, NID_ext_key_usage, "serverAuth,clientAuth") ||
        add_ext(x, &v3, NID_subject_alt_name, san) ||
        add_ext(x, &v3, NID_subject_key_identifier, "hash") ||
        add_ext(x, &v3, NID_authority_key_identifier, "keyid:always"))
      goto fail;
  }
  if (!X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()))
    goto fail;
  BN_free(serial);
  return x;
fail:
  BN_free(serial);
  X509_free(x);
  return NULL;
}

/* PEM of a key (private) or certificate into `path` with `mode`, chowned
 * to owner when given.  0 or negative (err). */
static int write_pem(const char *path, EVP_PKEY *key, X509 *cert, mode_t mode,
                     const ops_user *owner, char *err, size_t errlen) {
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL) {
    ssl_err(err, errlen, "BIO_new");
    return SP_ERR_NOMEM;
  }
  int ok = key ? PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL)
               : PEM_write_bio_X509(b, cert);
  if (!ok) {
    BIO_free(b);
    ssl_err(err, errlen, path);
    return SP_ERR_INTERNAL;
  }
  char *data;
  long len = BIO_get_mem_data(b, &data);
  int rc = ops_write_file(path, data, (size_t)len, mode);
  BIO_free(b);
  if (rc) {
    snprintf(err, errlen, "writing %s: %s", path, sp_strerror(rc));
    return rc;
  }
  if (owner && owner->drop && chown(path, owner->uid, owner->gid) != 0) {
    rc = -errno;
    snprintf(err, errlen, "chown %s: %s", path, sp_strerror(rc));
    return rc;
  }
  return 0;
}

static X509 *read_cert(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return NULL;
  X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  return x;
}

static EVP_PKEY *read_key(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return NULL;
  EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  return k;
}

/* mkdir -p of the directory holding `file`. */
static int parent_dir(const char *file, char *err, size_t errlen) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", file);
  char *slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir)
    return 0;
  *slash = '\0';
  return ops_mkdir(dir, 0755, NULL, err, errlen);
}

/* 1 when the region's certificate and key exist, the certificate is
 * signed by `ca_key` and belongs to the key. */
static int region_ok(const sp_topo_region *r, EVP_PKEY *ca_key) {
  X509 *x = read_cert(r->tls_cert);
  EVP_PKEY *k = read_key(r->tls_key);
  int ok = x && k && X509_verify(x, ca_key) == 1 && X509_check_private_key(x, k) == 1;
  X509_free(x);
  EVP_PKEY_free(k);
  ERR_clear_error();
  return ok;
}

int ops_tls_ensure(const ops_ctx *c, FILE *log, char *err, size_t errlen) {
  const sp_topo *t = c->topo;
  if (t->tls_ca_cert == NULL)
    return 0;
  int rc = 0;
  X509 *ca = read_cert(t->tls_ca_cert);
  EVP_PKEY *ca_key = t->tls_ca_key ? read_key(t->tls_ca_key) : NULL;
  ERR_clear_error();
  if (ca == NULL || ca_key == NULL || X509_check_private_key(ca, ca_key) != 1) {
    if (ca && t->tls_ca_key == NULL) {
      /* a CA made elsewhere: we can only use the region files as they are */
      goto regions;
    }
    if (t->tls_ca_key == NULL) {
      snprintf(err, errlen, "%s: tls.ca_key is not set, so no CA can be made for %s",
               t->display_name, t->tls_ca_cert);
      rc = SP_ERR_CONFIG;
      goto out;
    }
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    ca = NULL;
    ca_key = EVP_EC_gen("P-256");
    if (ca_key == NULL || (ca = make_cert(t, ca_key, "statuspage cluster CA", NULL, NULL, NULL)) ==
                              NULL) {
      ssl_err(err, errlen, "making the cluster CA");
      rc = SP_ERR_INTERNAL;
      goto out;
    }
    if ((rc = parent_dir(t->tls_ca_key, err, errlen)) ||
        (rc = parent_dir(t->tls_ca_cert, err, errlen)) ||
        (rc = write_pem(t->tls_ca_key, ca_key, NULL, 0600, NULL, err, errlen)) ||
        (rc = write_pem(t->tls_ca_cert, NULL, ca, 0644, NULL, err, errlen)))
      goto out;
    fprintf(log, "tls: made the cluster CA %s\n", t->tls_ca_cert);
  }
regions:
  for (size_t i = 0; i < t->nregions; i++) {
    const sp_topo_region *r = &t->regions[i];
    if (ca_key == NULL) {
      if (access(r->tls_cert, R_OK) != 0 || access(r->tls_key, R_OK) != 0) {
        snprintf(err, errlen, "%s: region %s has no certificate (%s) and tls.ca_key is not set",
                 t->display_name, r->name, r->tls_cert);
        rc = SP_ERR_CONFIG;
        goto out;
      }
      continue;
    }
    if (region_ok(r, ca_key))
      continue;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = k ? make_cert(t, k, r->name, r->address, ca, ca_key) : NULL;
    if (x == NULL) {
      ssl_err(err, errlen, "making a region certificate");
      rc = SP_ERR_INTERNAL;
    } else if ((rc = parent_dir(r->tls_key, err, errlen)) == 0 &&
               (rc = parent_dir(r->tls_cert, err, errlen)) == 0 &&
               (rc = write_pem(r->tls_key, k, NULL, 0600, &c->user, err, errlen)) == 0 &&
               (rc = write_pem(r->tls_cert, NULL, x, 0644, NULL, err, errlen)) == 0) {
      fprintf(log, "tls: made the certificate of %s (%s)\n", r->name, r->tls_cert);
    }
    X509_free(x);
    EVP_PKEY_free(k);
    if (rc)
      goto out;
  }
out:
  X509_free(ca);
  EVP_PKEY_free(ca_key);
  return rc;
}
