/* api_public: the public read API (Statuspage v2 paths) and the HTML status
 * page, answered from the documents api_render.c pre-rendered.
 *
 * A page is chosen by the Host header (a page's custom `domain`, port
 * stripped, case-insensitive) for the bare paths (/, /api/v2/...), or by
 * the prefix /pages/{page_id} (/pages/{id}, /pages/{id}/api/v2/...).  The
 * read path is: find the page (hash table), take a reference to its
 * document, compare If-None-Match with the document's ETag, respond (one
 * copy of the body into the connection's output), drop the reference.  No
 * JSON is built and PostgreSQL is never consulted.
 *
 * Errors: an unknown page is 404 {"message": "page not found"}; an unknown
 * path under a known page's /api/v2/ is 404 with an empty body, as
 * Statuspage answers (reference §1.7).  Every answer carries the CORS
 * headers so browser clients on other origins can read errors too.
 *
 * Nothing here owns memory beyond a request: documents are borrowed with a
 * reference for the duration of the respond call.
 */
#include "render.h"
#include "routes.h"

#include <string.h>

#define CACHE_CONTROL                                                                              \
  "max-age=10, public, s-maxage=10, stale-while-revalidate=20, stale-if-error=3600"
#define JSON_TYPE "application/json; charset=utf-8"
#define HTML_TYPE "text/html; charset=utf-8"
#define MAX_HOST 256

static const char not_found[] = "{\"message\":\"page not found\"}";

/* The public documents by their path below /api/v2/. */
static const struct {
  const char *path;
  api_doc_kind kind;
} v2_paths[] = {
    {"summary.json", API_DOC_SUMMARY},
    {"status.json", API_DOC_STATUS},
    {"components.json", API_DOC_COMPONENTS},
    {"incidents.json", API_DOC_INCIDENTS},
    {"incidents/unresolved.json", API_DOC_UNRESOLVED},
    {"scheduled-maintenances.json", API_DOC_MAINTENANCES},
    {"scheduled-maintenances/upcoming.json", API_DOC_MAINT_UPCOMING},
    {"scheduled-maintenances/active.json", API_DOC_MAINT_ACTIVE},
};

static int v2_kind(const char *rest) {
  for (size_t i = 0; rest && i < sizeof v2_paths / sizeof v2_paths[0]; i++)
    if (strcmp(rest, v2_paths[i].path) == 0)
      return (int)v2_paths[i].kind;
  return -1;
}

/* 1 when If-None-Match (a list of entity tags, or "*") matches `etag`
 * under the weak comparison (RFC 9110 §13.1.2: W/ prefixes ignored). */
static int etag_match(const char *inm, const char *etag) {
  const char *want = strncmp(etag, "W/", 2) == 0 ? etag + 2 : etag;
  size_t wl = strlen(want);
  const char *p = inm;
  while (*p) {
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if (*p == '\0')
      break;
    if (*p == '*')
      return 1;
    if (strncmp(p, "W/", 2) == 0)
      p += 2;
    if (*p != '"') { /* not an entity tag: skip to the next list item */
      while (*p && *p != ',')
        p++;
      continue;
    }
    const char *q = strchr(p + 1, '"');
    if (q == NULL)
      return 0;
    if ((size_t)(q + 1 - p) == wl && memcmp(p, want, wl) == 0)
      return 1;
    p = q + 1;
  }
  return 0;
}

static const char *cache_status(api_server *s) {
  return api_cache_is_stale(s) ? "stale" : "fresh";
}

static void respond_not_found(sp_http_req *req, api_server *s, int page_known) {
  const sp_http_header h[] = {
      {"Content-Type", JSON_TYPE},
      {"Access-Control-Allow-Origin", "*"},
      {"Access-Control-Expose-Headers", "ETag"},
      {"X-Cache-Status", cache_status(s)},
  };
  if (page_known) /* Statuspage: empty body, no Content-Type */
    sp_http_respond(req, 404, h + 1, 3, NULL, 0);
  else
    sp_http_respond(req, 404, h, 4, not_found, sizeof not_found - 1);
}

static void serve_doc(sp_http_req *req, api_server *s, const char *page, int kind) {
  api_doc *d = page && kind >= 0 ? api_render_get(s, page, (api_doc_kind)kind) : NULL;
  if (d == NULL) {
    api_doc *any = page ? api_render_get(s, page, API_DOC_STATUS) : NULL;
    respond_not_found(req, s, any != NULL);
    api_doc_unref(any);
    return;
  }
  const sp_http_header h[] = {
      {"Content-Type", kind == API_DOC_HTML ? HTML_TYPE : JSON_TYPE},
      {"ETag", d->etag},
      {"Cache-Control", CACHE_CONTROL},
      {"Vary", "Accept, Accept-Encoding"},
      {"Access-Control-Allow-Origin", "*"},
      {"Access-Control-Expose-Headers", "ETag"},
      {"X-Cache-Status", cache_status(s)},
      {"X-Content-Type-Options", "nosniff"},
  };
  const char *inm = sp_http_req_header(req, "If-None-Match");
  int not_modified = inm && etag_match(inm, d->etag);
  api_metrics_cache_hit(kind, not_modified);
  if (not_modified)
    sp_http_respond(req, 304, h + 1, 7, NULL, 0);
  else
    sp_http_respond(req, 200, h, 8, d->body, d->len);
  api_doc_unref(d);
}

/* The page whose custom domain the Host header names, or NULL. */
static const char *page_for_host(sp_http_req *req, api_server *s) {
  const char *host = sp_http_req_header(req, "Host");
  char buf[MAX_HOST];
  size_t n;
  if (host == NULL)
    return NULL;
  if (host[0] == '[') { /* an IPv6 literal keeps its brackets */
    const char *e = strchr(host, ']');
    n = e ? (size_t)(e + 1 - host) : strlen(host);
  } else {
    n = strcspn(host, ":");
  }
  if (n > 0 && host[n - 1] == '.') /* "status.example.com." is the same name */
    n--;
  if (n == 0 || n >= sizeof buf)
    return NULL;
  memcpy(buf, host, n);
  buf[n] = '\0';
  return api_render_page_for_domain(s, buf);
}

/* GET / (by Host) */
static void h_root(sp_http_req *req, void *app) {
  api_server *s = app;
  serve_doc(req, s, page_for_host(req, s), API_DOC_HTML);
}

/* GET /api/v2/... (by Host) */
static void h_v2_host(sp_http_req *req, void *app) {
  api_server *s = app;
  serve_doc(req, s, page_for_host(req, s), v2_kind(sp_http_req_param(req, "rest")));
}

/* GET /pages/{page_id} */
static void h_page_html(sp_http_req *req, void *app) {
  serve_doc(req, app, sp_http_req_param(req, "page_id"), API_DOC_HTML);
}

/* GET /pages/{page_id}/... : "" is the HTML page, api/v2/... the documents */
static void h_page_rest(sp_http_req *req, void *app) {
  const char *rest = sp_http_req_param(req, "rest");
  int kind = -1;
  if (rest == NULL || rest[0] == '\0')
    kind = API_DOC_HTML;
  else if (strncmp(rest, "api/v2/", 7) == 0)
    kind = v2_kind(rest + 7);
  serve_doc(req, app, sp_http_req_param(req, "page_id"), kind);
}

/* CORS preflight for every public path: the answer does not depend on the
 * page, so none is looked up. */
static void h_preflight(sp_http_req *req, void *app) {
  (void)app;
  const char *want = sp_http_req_header(req, "Access-Control-Request-Headers");
  const sp_http_header h[] = {
      {"Access-Control-Allow-Origin", "*"},
      {"Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"},
      {"Access-Control-Max-Age", "86400"},
      {"Allow", "GET, HEAD, OPTIONS"},
      {"Access-Control-Allow-Headers",
       want && want[0] ? want : "Accept, If-None-Match, Cache-Control"},
  };
  sp_http_respond(req, 204, h, 5, NULL, 0);
}

const sp_http_route api_public_routes[] = {
    {"GET", "/", h_root},
    {"GET", "/api/v2/*rest", h_v2_host},
    {"GET", "/pages/{page_id}", h_page_html},
    {"GET", "/pages/{page_id}/*rest", h_page_rest},
    {"OPTIONS", "/", h_preflight},
    {"OPTIONS", "/api/v2/*rest", h_preflight},
    {"OPTIONS", "/pages/{page_id}", h_preflight},
    {"OPTIONS", "/pages/{page_id}/*rest", h_preflight},
};
const size_t api_public_nroutes = sizeof api_public_routes / sizeof api_public_routes[0];
