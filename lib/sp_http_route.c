/* sp_http_route: compiles route patterns into segment arrays and matches raw
 * request paths against them.  The table owns one allocation holding the
 * compiled routes and their segments; segment text points into the caller's
 * pattern strings. */
#include "sp_http_route.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <http_parser.h>
#include <string.h>

enum seg_kind { SEG_LIT, SEG_PARAM, SEG_REST };

typedef struct seg {
  enum seg_kind kind;
  sp_iov text; /* literal text, or the parameter name */
} seg;

typedef struct croute {
  const sp_http_route *route;
  int method;
  size_t first, nsegs; /* slice of the table's segment array */
} croute;

struct sp_http_route_table {
  size_t n;
  croute *routes;
  seg *segs;
};

int sp_http_route_method_id(const char *name) {
  if (name == NULL)
    return -1;
  for (int i = 0; i < 64; i++) {
    const char *s = http_method_str((enum http_method)i);
    if (strcmp(s, "<unknown>") == 0)
      break;
    if (strcmp(s, name) == 0)
      return i;
  }
  return -1;
}

/* Number of segments of a pattern (it starts with '/'). */
static size_t count_segs(const char *p) {
  size_t n = 0;
  for (; *p; p++)
    n += *p == '/';
  return n;
}

static int compile_one(const sp_http_route *r, seg *out, size_t *nout) {
  const char *p = r->pattern;
  size_t n = 0, nparams = 0;
  if (p == NULL || p[0] != '/' || r->handler == NULL)
    return SP_ERR_CONFIG;
  while (*p == '/') {
    const char *s = p + 1;
    const char *e = strchr(s, '/');
    if (e == NULL)
      e = s + strlen(s);
    size_t len = (size_t)(e - s);
    seg *g = &out[n];
    if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
      g->kind = SEG_PARAM;
      g->text = (sp_iov){s + 1, len - 2};
    } else if (len >= 2 && s[0] == '*') {
      if (*e != '\0')
        return SP_ERR_CONFIG; /* wildcard must be last */
      g->kind = SEG_REST;
      g->text = (sp_iov){s + 1, len - 1};
    } else {
      if (memchr(s, '{', len) || memchr(s, '}', len) || memchr(s, '*', len))
        return SP_ERR_CONFIG;
      g->kind = SEG_LIT;
      g->text = (sp_iov){s, len};
    }
    if (g->kind != SEG_LIT) {
      if (g->text.len == 0 || memchr(g->text.base, '{', g->text.len) ||
          memchr(g->text.base, '}', g->text.len) ||
          ++nparams > SP_HTTP_MAX_PARAMS)
        return SP_ERR_CONFIG;
      for (size_t i = 0; i < n; i++)
        if (out[i].kind != SEG_LIT && out[i].text.len == g->text.len &&
            memcmp(out[i].text.base, g->text.base, g->text.len) == 0)
          return SP_ERR_CONFIG;
    }
    n++;
    p = e;
  }
  *nout = n;
  return 0;
}

int sp_http_route_table_new(const sp_http_route *routes, size_t n,
                            sp_http_route_table **out) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (routes[i].pattern == NULL)
      return SP_ERR_CONFIG;
    total += count_segs(routes[i].pattern);
  }
  sp_http_route_table *t = sp_calloc(1, sizeof *t + n * sizeof(croute) +
                                            total * sizeof(seg));
  if (t == NULL)
    return SP_ERR_NOMEM;
  t->n = n;
  t->routes = (croute *)(t + 1);
  t->segs = (seg *)(t->routes + n);
  size_t used = 0;
  for (size_t i = 0; i < n; i++) {
    croute *c = &t->routes[i];
    c->route = &routes[i];
    c->method = sp_http_route_method_id(routes[i].method);
    c->first = used;
    if (c->method < 0 || compile_one(&routes[i], &t->segs[used], &c->nsegs)) {
      sp_free(t);
      return SP_ERR_CONFIG;
    }
    used += c->nsegs;
  }
  *out = t;
  return 0;
}

void sp_http_route_table_free(sp_http_route_table *t) { sp_free(t); }

/* Matches the path against one route's segments; fills m when m != NULL. */
static int match_path(const sp_http_route_table *t, const croute *c,
                      sp_iov path, sp_http_route_match *m) {
  const char *p = path.base, *end = path.base + path.len;
  unsigned np = 0;
  for (size_t i = 0; i < c->nsegs; i++) {
    const seg *g = &t->segs[c->first + i];
    if (p >= end || *p != '/')
      return 0;
    p++;
    if (g->kind == SEG_REST) {
      if (m) {
        m->params[np].name = g->text;
        m->params[np].value = (sp_iov){p, (size_t)(end - p)};
        np++;
      }
      p = end;
      break;
    }
    const char *q = memchr(p, '/', (size_t)(end - p));
    if (q == NULL)
      q = end;
    size_t len = (size_t)(q - p);
    if (g->kind == SEG_LIT) {
      if (len != g->text.len || memcmp(p, g->text.base, len) != 0)
        return 0;
    } else {
      if (len == 0)
        return 0;
      if (m) {
        m->params[np].name = g->text;
        m->params[np].value = (sp_iov){p, len};
        np++;
      }
    }
    p = q;
  }
  if (p != end)
    return 0;
  if (m)
    m->nparams = np;
  return 1;
}

int sp_http_route_find(const sp_http_route_table *t, int method, sp_iov path,
                       sp_http_route_match *m, uint64_t *allow) {
  *allow = 0;
  /* exact method first, so a HEAD route wins over a GET route */
  for (int pass = 0; pass < 2; pass++) {
    int want = pass == 0 ? method : HTTP_GET;
    if (pass == 1 && method != HTTP_HEAD)
      break;
    for (size_t i = 0; i < t->n; i++) {
      const croute *c = &t->routes[i];
      if (c->method == want && match_path(t, c, path, m)) {
        m->route = c->route;
        return 0;
      }
    }
  }
  uint64_t mask = 0;
  for (size_t i = 0; i < t->n; i++) {
    const croute *c = &t->routes[i];
    if (c->method < 64 && match_path(t, c, path, NULL))
      mask |= (uint64_t)1 << c->method;
  }
  if (mask & ((uint64_t)1 << HTTP_GET))
    mask |= (uint64_t)1 << HTTP_HEAD;
  *allow = mask;
  return SP_ERR_NOENT;
}
