/* ops_http: the blocking HTTP client statusctl talks to the services with
 * (readiness, the management API, digests, metrics): libcurl's easy
 * interface, one connection per request, a timeout on every request, no
 * proxy (every URL is a loopback address of the deployment, and a proxy
 * from the environment would only get in the way).
 *
 * The response body goes into the caller's sp_buf; its cap bounds what a
 * misbehaving server can make statusctl hold.  curl_global_init is main's.
 */
#include "ops.h"

#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "sp_err.h"

static size_t on_body(char *data, size_t size, size_t n, void *arg) {
  sp_buf *b = arg;
  size_t len = size * n;
  /* a short count makes libcurl fail the transfer (CURLE_WRITE_ERROR) */
  return sp_buf_add(b, data, len) == 0 ? len : 0;
}

int ops_http(const char *method, const char *url, const char *key, const char *body,
             const ops_http_tls *tls, long timeout_ms, long *status, sp_buf *resp, char *err,
             size_t errlen) {
  *status = 0;
  CURL *h = curl_easy_init();
  if (h == NULL) {
    snprintf(err, errlen, "%s %s: cannot create a libcurl handle", method, url);
    return SP_ERR_NOMEM;
  }
  struct curl_slist *hdrs = NULL;
  char auth[256];
  if (key) {
    snprintf(auth, sizeof auth, "Authorization: OAuth %s", key);
    hdrs = curl_slist_append(hdrs, auth);
  }
  if (body)
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
  /* libcurl would send "Expect: 100-continue" for larger bodies and wait */
  hdrs = curl_slist_append(hdrs, "Expect:");
  char cerr[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_PROXY, "");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 2000 ? timeout_ms : 2000L);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
  if (body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  } else if (strcmp(method, "GET") == 0) {
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  }
  if (tls) {
    if (tls->ca)
      curl_easy_setopt(h, CURLOPT_CAINFO, tls->ca);
    if (tls->cert)
      curl_easy_setopt(h, CURLOPT_SSLCERT, tls->cert);
    if (tls->key)
      curl_easy_setopt(h, CURLOPT_SSLKEY, tls->key);
  }
  CURLcode rc = curl_easy_perform(h);
  int ret = 0;
  if (rc != CURLE_OK) {
    snprintf(err, errlen, "%s %s: %s", method, url, cerr[0] ? cerr : curl_easy_strerror(rc));
    ret = rc == CURLE_OPERATION_TIMEDOUT     ? SP_ERR_TIMEDOUT
          : rc == CURLE_COULDNT_CONNECT      ? SP_ERR_CONNREFUSED
          : rc == CURLE_WRITE_ERROR          ? SP_ERR_TOOBIG
          : rc == CURLE_OUT_OF_MEMORY        ? SP_ERR_NOMEM
                                             : SP_ERR_IO;
  } else {
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
  }
  curl_slist_free_all(hdrs);
  curl_easy_cleanup(h);
  return ret;
}

static void base(const char *scheme, const sp_topo_region *r, uint16_t port, char *out,
                 size_t len) {
  if (strchr(r->address, ':'))
    snprintf(out, len, "%s://[%s]:%u", scheme, r->address, (unsigned)port);
  else
    snprintf(out, len, "%s://%s:%u", scheme, r->address, (unsigned)port);
}

void ops_api_base(const sp_topo_region *r, char *out, size_t len) {
  base("http", r, r->api.port, out, len);
}

void ops_replication_base(const sp_topo_region *r, char *out, size_t len) {
  base("https", r, r->replication.port, out, len);
}
