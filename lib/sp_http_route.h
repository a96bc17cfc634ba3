/* sp_http_route: the HTTP routing table, compiled once and matched per
 * request.  Pure functions, no I/O.
 *
 * A route is a const table entry {method, pattern, handler}.  A pattern is
 * a path of '/'-separated segments; a segment is literal text, a named
 * parameter "{name}" (matches one non-empty segment), or, as the last
 * segment only, a wildcard "*name" that matches the rest of the path after
 * the preceding '/' (possibly empty, may contain '/').  Examples:
 *   "/v1/pages/{page_id}/incidents/{incident_id}"
 *   "/pages/{page_id}/" "*rest"  (one pattern; split here only because C
 *                       comments cannot hold slash-star) matches
 *                       "/pages/p1/" and "/pages/p1/a/b" but not "/pages/p1"
 * Literal segments are compared byte for byte with the raw (undecoded)
 * path; parameter values are returned raw, the caller decodes them.
 * Routes are tried in table order; the first match wins.  HEAD requests fall
 * back to GET routes.
 *
 * Ownership: the compiled table points into the caller's route array and
 * pattern strings, which must outlive it (they are normally static const).
 */
#ifndef SP_HTTP_ROUTE_H
#define SP_HTTP_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "sp_buf.h"

#define SP_HTTP_MAX_PARAMS 16

typedef struct sp_http_req sp_http_req;

/* A request handler: `app` is the pointer given to sp_http_server_new.
 * The handler owns the duty to answer `req` exactly once (see sp_http.h). */
typedef void (*sp_http_handler)(sp_http_req *req, void *app);

typedef struct sp_http_route {
  const char *method;  /* "GET", "POST", ... (http_parser's method names) */
  const char *pattern; /* see above */
  sp_http_handler handler;
} sp_http_route;

typedef struct sp_http_route_table sp_http_route_table;

typedef struct sp_http_route_match {
  const sp_http_route *route;
  unsigned nparams;
  struct {
    sp_iov name;  /* points into the pattern */
    sp_iov value; /* points into the path given to find */
  } params[SP_HTTP_MAX_PARAMS];
} sp_http_route_match;

/* Compiles `routes[0..n)`.  Returns 0 and *out (free with
 * sp_http_route_table_free), SP_ERR_CONFIG for an unknown method, a pattern
 * that does not start with '/', an unterminated or empty "{}", a parameter
 * name used twice, a wildcard that is not last, or more than
 * SP_HTTP_MAX_PARAMS parameters; SP_ERR_NOMEM. */
int sp_http_route_table_new(const sp_http_route *routes, size_t n,
                            sp_http_route_table **out);
void sp_http_route_table_free(sp_http_route_table *t);

/* Finds the route for `method` (an http_parser enum http_method value) and
 * the raw request path.  Returns 0 with *m filled, or SP_ERR_NOENT with
 * *allow set to the mask (1 << method) of the methods that do have a route
 * for this path (HEAD added when GET is there): 0 means "404", non-zero
 * means "405 with this Allow list". */
int sp_http_route_find(const sp_http_route_table *t, int method, sp_iov path,
                       sp_http_route_match *m, uint64_t *allow);

/* Method name -> enum http_method value, or -1. */
int sp_http_route_method_id(const char *name);

#endif
