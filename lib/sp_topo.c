/* sp_topo: topology file loader and validator (see sp_topo.h for the format).
 *
 * The JSON tree is jansson's and lives only during sp_topo_parse; everything
 * kept (structs, strings, peer arrays, the sp_topo itself) is carved from one
 * arena of sp_malloc'd chunks that sp_topo_free releases in one walk, so a
 * half-built topology on an error path is freed the same way as a full one.
 * Validation stops at the first error; the field path of the value being
 * checked is kept in ctx.path so every message can name it.
 */
#include "sp_topo.h"

#include "sp_alloc.h"
#include "sp_err.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_NAME 63       /* region/cluster names: fits a DNS label */
#define MAX_HOST 253      /* DNS name */
#define MAX_PG_IDENT 63   /* PostgreSQL NAMEDATALEN - 1 */
#define MAX_PATH_IN 4095  /* a path as written in the file */
#define DEFAULT_STATE_DIR "/var/lib/statuspage"

/* --- arena ------------------------------------------------------------------ */

typedef struct arena_chunk {
  struct arena_chunk *next;
  size_t used, cap;
  max_align_t data[];
} arena_chunk;

#define ARENA_CHUNK 4096

static void arena_free(arena_chunk *c) {
  while (c) {
    arena_chunk *next = c->next;
    sp_free(c);
    c = next;
  }
}

/* Zeroed, max_align_t-aligned memory from the arena, or NULL. */
static void *arena_alloc(arena_chunk **head, size_t n) {
  size_t a = alignof(max_align_t);
  if (n > SIZE_MAX / 2)
    return NULL;
  n = (n + a - 1) & ~(a - 1);
  arena_chunk *c = *head;
  if (c == NULL || c->cap - c->used < n) {
    size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
    c = sp_malloc(sizeof *c + cap);
    if (c == NULL)
      return NULL;
    c->next = *head;
    c->used = 0;
    c->cap = cap;
    *head = c;
  }
  void *p = (char *)c->data + c->used;
  c->used += n;
  memset(p, 0, n);
  return p;
}

/* --- validation context ------------------------------------------------------ */

/* Messages echo bytes from the file (values, jansson's "near '...'"
 * context, the path itself) and may be cut anywhere: keep them one line of
 * printable ASCII so they log and print safely. */
static void printable(char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
      *s = '?';
}

typedef struct ctx {
  const char *name; /* display name, prefixes every message */
  char *err;
  size_t errlen;
  const char *base_dir;
  arena_chunk *arena;
  char path[256]; /* field path of the value being checked */
  size_t plen;
} ctx;

static void set_err(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(ctx *c, const char *fmt, ...) {
  if (c->errlen == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err, c->errlen, fmt, ap);
  va_end(ap);
  printable(c->err);
}

/* Formats "<name>: <path>: <message>" and returns SP_ERR_CONFIG. */
static int fail(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(ctx *c, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (c->plen)
    set_err(c, "%s: %s: %s", c->name, c->path, msg);
  else
    set_err(c, "%s: %s", c->name, msg);
  return SP_ERR_CONFIG;
}

static int fail_nomem(ctx *c) {
  set_err(c, "%s: out of memory", c->name);
  return SP_ERR_NOMEM;
}

/* Appends to the path; returns the old length for path_pop.  Keys can come
 * from the file (unknown fields), so anything but printable ASCII becomes
 * '?' and long keys are cut: messages stay one readable line. */
static size_t path_push_key(ctx *c, const char *key) {
  size_t old = c->plen, room = sizeof c->path - 1;
  if (c->plen && c->plen < room)
    c->path[c->plen++] = '.';
  for (size_t i = 0; key[i] && i < 64 && c->plen < room; i++) {
    unsigned char ch = (unsigned char)key[i];
    c->path[c->plen++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
  }
  c->path[c->plen] = '\0';
  return old;
}

static size_t path_push_index(ctx *c, size_t i) {
  size_t old = c->plen;
  int n = snprintf(c->path + c->plen, sizeof c->path - c->plen, "[%zu]", i);
  if (n > 0)
    c->plen += (size_t)n < sizeof c->path - c->plen ? (size_t)n : sizeof c->path - 1 - c->plen;
  return old;
}

static void path_pop(ctx *c, size_t old) {
  c->plen = old;
  c->path[old] = '\0';
}

/* fail() with `key` appended to the path. */
static int fail_key(ctx *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_key(ctx *c, const char *key, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t old = path_push_key(c, key);
  fail(c, "%s", msg);
  path_pop(c, old);
  return SP_ERR_CONFIG;
}

static char *arena_strdup(ctx *c, const char *s) {
  size_t n = strlen(s);
  char *d = arena_alloc(&c->arena, n + 1);
  if (d)
    memcpy(d, s, n + 1);
  return d;
}

/* --- field readers --------------------------------------------------------- */

/* Every key of `obj` must be in the NULL-terminated `allowed` list. */
static int check_keys(ctx *c, json_t *obj, const char *const *allowed) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    int known = 0;
    for (size_t i = 0; allowed[i]; i++)
      if (strcmp(key, allowed[i]) == 0)
        known = 1;
    if (!known)
      return fail_key(c, key, "unknown field");
  }
  return 0;
}

/* Integer member in [lo, hi]; `def` when absent and not required. */
static int get_int(ctx *c, json_t *obj, const char *key, int required, long long lo,
                   long long hi, long long def, long long *out) {
  json_t *v = json_object_get(obj, key);
  if (v == NULL) {
    if (required)
      return fail_key(c, key, "required");
    *out = def;
    return 0;
  }
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
    return fail_key(c, key, "expected integer %lld-%lld", lo, hi);
  *out = json_integer_value(v);
  return 0;
}

static int get_port(ctx *c, json_t *obj, const char *key, uint16_t *out) {
  long long v;
  int rc = get_int(c, obj, key, 1, 1, 65535, 0, &v);
  if (rc == 0)
    *out = (uint16_t)v;
  return rc;
}

/* String member of 1..maxlen bytes; *out points into the JSON tree (NULL when
 * absent and not required). */
static int get_str(ctx *c, json_t *obj, const char *key, int required, size_t maxlen,
                   const char **out) {
  json_t *v = json_object_get(obj, key);
  *out = NULL;
  if (v == NULL)
    return required ? fail_key(c, key, "required") : 0;
  if (!json_is_string(v))
    return fail_key(c, key, "expected string");
  if (json_string_length(v) == 0 || json_string_length(v) > maxlen)
    return fail_key(c, key, "expected string of 1-%zu bytes", maxlen);
  *out = json_string_value(v);
  return 0;
}

/* Object member; *out NULL when absent and not required. */
static int get_obj(ctx *c, json_t *obj, const char *key, int required, json_t **out) {
  json_t *v = json_object_get(obj, key);
  *out = NULL;
  if (v == NULL)
    return required ? fail_key(c, key, "required") : 0;
  if (!json_is_object(v))
    return fail_key(c, key, "expected object");
  *out = v;
  return 0;
}

static int valid_name(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > MAX_NAME)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || (ch == '-' && i > 0);
    if (!ok)
      return 0;
  }
  return 1;
}

static int get_name(ctx *c, json_t *obj, const char *key, const char **out) {
  int rc = get_str(c, obj, key, 1, 1024, out);
  if (rc)
    return rc;
  if (!valid_name(*out))
    return fail_key(c, key, "invalid name \"%.64s\" (expected [a-z0-9][a-z0-9-]{0,62})",
                    *out);
  return 0;
}

/* Canonical text of an IPv4/IPv6 literal into buf; the family, or 0. */
static int parse_ip(const char *s, char *buf, size_t buflen) {
  unsigned char a[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, s, a) == 1)
    return inet_ntop(AF_INET, a, buf, (socklen_t)buflen) ? AF_INET : 0;
  if (inet_pton(AF_INET6, s, a) == 1)
    return inet_ntop(AF_INET6, a, buf, (socklen_t)buflen) ? AF_INET6 : 0;
  return 0;
}

/* DNS name: dot-separated labels of letters, digits and '-' (not at either
 * end), <= 253 bytes; an all-digit last label is refused because it is a
 * mistyped IPv4 address far more often than a real name. */
static int valid_dns_name(const char *s) {
  size_t n = strlen(s), label = 0;
  int last_all_digits = 1;
  if (n == 0 || n > MAX_HOST)
    return 0;
  for (size_t i = 0; i <= n; i++) {
    char ch = s[i];
    if (ch == '.' || ch == '\0') {
      if (label == 0 || label > 63 || s[i - 1] == '-')
        return 0;
      if (ch == '\0')
        return !last_all_digits;
      label = 0;
      last_all_digits = 1;
      continue;
    }
    int alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
    int digit = ch >= '0' && ch <= '9';
    if (!alpha && !digit && !(ch == '-' && label > 0))
      return 0;
    if (!digit)
      last_all_digits = 0;
    label++;
  }
  return 0;
}

/* Host member (IP literal, stored canonical; or DNS name, stored lowercase). */
static int get_host(ctx *c, json_t *obj, const char *key, const char **out) {
  const char *s;
  int rc = get_str(c, obj, key, 1, 1024, &s);
  if (rc)
    return rc;
  char ip[INET6_ADDRSTRLEN];
  char *d;
  if (parse_ip(s, ip, sizeof ip)) {
    d = arena_strdup(c, ip);
  } else if (valid_dns_name(s)) {
    d = arena_strdup(c, s);
    for (char *p = d; p && *p; p++)
      if (*p >= 'A' && *p <= 'Z')
        *p = (char)(*p + 32);
  } else {
    return fail_key(c, key, "invalid host \"%.64s\" (expected an IP address or DNS name)",
                    s);
  }
  if (d == NULL)
    return fail_nomem(c);
  *out = d;
  return 0;
}

/* Absolute, lexically normalised form of `rel` (relative to base_dir). */
static int resolve_path(ctx *c, const char *key, const char *rel, const char **out) {
  char joined[2 * PATH_MAX + 2], norm[2 * PATH_MAX + 2];
  if (rel[0] == '/')
    snprintf(joined, sizeof joined, "%s", rel);
  else
    snprintf(joined, sizeof joined, "%s/%s", c->base_dir, rel);
  size_t n = 0;
  const char *p = joined;
  while (*p) {
    while (*p == '/')
      p++;
    const char *start = p;
    while (*p && *p != '/')
      p++;
    size_t len = (size_t)(p - start);
    if (len == 0 || (len == 1 && start[0] == '.'))
      continue;
    if (len == 2 && start[0] == '.' && start[1] == '.') {
      while (n > 0 && norm[--n] != '/')
        ; /* drop the last component; ".." at the root stays at the root */
      continue;
    }
    norm[n++] = '/';
    memcpy(norm + n, start, len);
    n += len;
  }
  if (n == 0)
    norm[n++] = '/';
  norm[n] = '\0';
  if (n >= PATH_MAX)
    return fail_key(c, key, "path too long (over %d bytes once resolved)", PATH_MAX - 1);
  if ((*out = arena_strdup(c, norm)) == NULL)
    return fail_nomem(c);
  return 0;
}

static int get_path(ctx *c, json_t *obj, const char *key, int required, const char **out) {
  const char *s;
  int rc = get_str(c, obj, key, required, MAX_PATH_IN, &s);
  if (rc || s == NULL) {
    *out = NULL;
    return rc;
  }
  return resolve_path(c, key, s, out);
}

static const char *arena_join(ctx *c, const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *d = arena_alloc(&c->arena, a + b + 2);
  if (d == NULL)
    return NULL;
  memcpy(d, dir, a);
  size_t n = a;
  if (n == 0 || d[n - 1] != '/')
    d[n++] = '/';
  memcpy(d + n, name, b + 1);
  return d;
}

/* --- sections --------------------------------------------------------------- */

static int parse_service(ctx *c, json_t *region, const char *key, int with_processes,
                         sp_topo_service *out) {
  static const char *const keys_proc[] = {"port", "processes", NULL};
  static const char *const keys_port[] = {"port", NULL};
  json_t *o;
  int rc = get_obj(c, region, key, 1, &o);
  if (rc)
    return rc;
  size_t old = path_push_key(c, key);
  long long procs = 1;
  if ((rc = check_keys(c, o, with_processes ? keys_proc : keys_port)) == 0 &&
      (rc = get_port(c, o, "port", &out->port)) == 0 && with_processes)
    rc = get_int(c, o, "processes", 0, 1, SP_TOPO_MAX_PROCESSES, 1, &procs);
  out->processes = (unsigned)procs;
  path_pop(c, old);
  return rc;
}

static int parse_postgres(ctx *c, json_t *region, sp_topo_postgres *out) {
  static const char *const keys[] = {"host", "port", "dbname", "user", NULL};
  json_t *o;
  const char *s;
  int rc = get_obj(c, region, "postgres", 1, &o);
  if (rc)
    return rc;
  size_t old = path_push_key(c, "postgres");
  if ((rc = check_keys(c, o, keys)) || (rc = get_host(c, o, "host", &out->host)) ||
      (rc = get_port(c, o, "port", &out->port)))
    goto out;
  if ((rc = get_str(c, o, "dbname", 1, MAX_PG_IDENT, &s)))
    goto out;
  if ((out->dbname = arena_strdup(c, s)) == NULL) {
    rc = fail_nomem(c);
    goto out;
  }
  if ((rc = get_str(c, o, "user", 1, MAX_PG_IDENT, &s)))
    goto out;
  if ((out->user = arena_strdup(c, s)) == NULL)
    rc = fail_nomem(c);
out:
  path_pop(c, old);
  return rc;
}

static int parse_redis(ctx *c, json_t *region, sp_topo_redis *out) {
  static const char *const keys[] = {"host", "port", NULL};
  json_t *o;
  int rc = get_obj(c, region, "redis", 1, &o);
  if (rc)
    return rc;
  size_t old = path_push_key(c, "redis");
  if ((rc = check_keys(c, o, keys)) == 0 && (rc = get_host(c, o, "host", &out->host)) == 0)
    rc = get_port(c, o, "port", &out->port);
  path_pop(c, old);
  return rc;
}

static int parse_http(ctx *c, json_t *root, sp_topo_http *out) {
  static const char *const keys[] = {"max_header_bytes", "max_body_bytes", "header_timeout_ms",
                                     "idle_timeout_ms", "max_connections", NULL};
  json_t *o;
  long long v[5];
  int rc = get_obj(c, root, "http", 0, &o);
  if (rc)
    return rc;
  /* An absent block (o == NULL) reads as an empty one: jansson's getters
   * and iterators treat NULL as an object without members. */
  size_t old = path_push_key(c, "http");
  if ((rc = check_keys(c, o, keys)) == 0 &&
      (rc = get_int(c, o, "max_header_bytes", 0, 1024, 1048576, 16384, &v[0])) == 0 &&
      (rc = get_int(c, o, "max_body_bytes", 0, 1, 1073741824, 1048576, &v[1])) == 0 &&
      (rc = get_int(c, o, "header_timeout_ms", 0, 1, 3600000, 10000, &v[2])) == 0 &&
      (rc = get_int(c, o, "idle_timeout_ms", 0, 1, 3600000, 60000, &v[3])) == 0 &&
      (rc = get_int(c, o, "max_connections", 0, 1, 1000000, 10000, &v[4])) == 0) {
    out->max_header_bytes = (size_t)v[0];
    out->max_body_bytes = (size_t)v[1];
    out->header_timeout_ms = (unsigned)v[2];
    out->idle_timeout_ms = (unsigned)v[3];
    out->max_connections = (unsigned)v[4];
  }
  path_pop(c, old);
  return rc;
}

/* Pass 1 of a region: everything but peers, which need every name first. */
static int parse_region(ctx *c, json_t *r, sp_topo_region *regs, size_t i,
                        const char *state_dir, int have_tls, json_t **peers_json) {
  static const char *const keys[] = {"name",     "address", "api",   "sse", "notify",
                                     "replication", "postgres", "redis", "tls", "peers",
                                     NULL};
  static const char *const tls_keys[] = {"cert", "key", NULL};
  sp_topo_region *reg = &regs[i];
  const char *s;
  int rc;
  if (!json_is_object(r))
    return fail(c, "expected object");
  if ((rc = check_keys(c, r, keys)) || (rc = get_name(c, r, "name", &s)))
    return rc;
  for (size_t k = 0; k < i; k++)
    if (strcmp(regs[k].name, s) == 0)
      return fail_key(c, "name", "duplicate region name \"%s\" (also regions[%zu].name)", s,
                      k);
  reg->index = i;
  if ((reg->name = arena_strdup(c, s)) == NULL)
    return fail_nomem(c);

  if ((rc = get_str(c, r, "address", 1, 1024, &s)))
    return rc;
  char ip[INET6_ADDRSTRLEN];
  reg->family = parse_ip(s, ip, sizeof ip);
  if (reg->family == 0)
    return fail_key(c, "address", "invalid IP address \"%.64s\"", s);
  if (strcmp(ip, "0.0.0.0") == 0 || strcmp(ip, "::") == 0)
    return fail_key(c, "address",
                    "\"%s\" is the wildcard address; peers need a unicast address to dial", s);
  if ((reg->address = arena_strdup(c, ip)) == NULL)
    return fail_nomem(c);

  if ((rc = parse_service(c, r, "api", 1, &reg->api)) ||
      (rc = parse_service(c, r, "sse", 1, &reg->sse)) ||
      (rc = parse_service(c, r, "notify", 0, &reg->notify)) ||
      (rc = parse_service(c, r, "replication", 0, &reg->replication)) ||
      (rc = parse_postgres(c, r, &reg->postgres)) || (rc = parse_redis(c, r, &reg->redis)))
    return rc;

  json_t *tls;
  if ((rc = get_obj(c, r, "tls", 0, &tls)))
    return rc;
  if (tls && !have_tls)
    return fail_key(c, "tls", "not allowed without the top-level tls block (ca_cert)");
  if (!tls && have_tls)
    return fail_key(c, "tls", "required (the top-level tls block is set)");
  if (tls) {
    size_t old = path_push_key(c, "tls");
    if ((rc = check_keys(c, tls, tls_keys)) == 0 &&
        (rc = get_path(c, tls, "cert", 1, &reg->tls_cert)) == 0)
      rc = get_path(c, tls, "key", 1, &reg->tls_key);
    path_pop(c, old);
    if (rc)
      return rc;
  }

  json_t *p = json_object_get(r, "peers");
  if (p && !json_is_array(p))
    return fail_key(c, "peers", "expected array of region names");
  *peers_json = p;

  if ((reg->state_dir = arena_join(c, state_dir, reg->name)) == NULL ||
      (reg->pg_dir = arena_join(c, reg->state_dir, "pg")) == NULL ||
      (reg->redis_dir = arena_join(c, reg->state_dir, "redis")) == NULL ||
      (reg->log_dir = arena_join(c, reg->state_dir, "log")) == NULL)
    return fail_nomem(c);
  return 0;
}

/* Pass 2: peers by name, into pointers at the sibling regions. */
static int parse_peers(ctx *c, sp_topo_region *regs, size_t nregions, size_t i, json_t *p) {
  sp_topo_region *reg = &regs[i];
  size_t n = p ? json_array_size(p) : nregions - 1;
  if (n > nregions) /* some entry must be a duplicate or unknown; found below */
    n = nregions;
  const sp_topo_region **peers = arena_alloc(&c->arena, (n ? n : 1) * sizeof *peers);
  if (peers == NULL)
    return fail_nomem(c);
  size_t np = 0;
  if (p == NULL) {
    for (size_t k = 0; k < nregions; k++)
      if (k != i)
        peers[np++] = &regs[k];
  } else {
    size_t old = path_push_key(c, "peers");
    for (size_t j = 0; j < json_array_size(p); j++) {
      json_t *v = json_array_get(p, j);
      size_t old2 = path_push_index(c, j);
      const sp_topo_region *found = NULL;
      int rc = 0;
      if (!json_is_string(v)) {
        rc = fail(c, "expected region name");
      } else {
        const char *s = json_string_value(v);
        for (size_t k = 0; k < nregions; k++)
          if (strcmp(regs[k].name, s) == 0)
            found = &regs[k];
        if (found == NULL)
          rc = fail(c, "unknown region \"%.64s\"", s);
        else if (found == reg)
          rc = fail(c, "a region cannot be its own peer");
        for (size_t k = 0; rc == 0 && k < np; k++)
          if (peers[k] == found)
            rc = fail(c, "duplicate peer \"%s\"", s);
      }
      path_pop(c, old2);
      if (rc) {
        path_pop(c, old);
        return rc;
      }
      peers[np++] = found;
    }
    path_pop(c, old);
  }
  reg->peers = peers;
  reg->npeers = np;
  return 0;
}

/* No two listeners on one host:port, across all regions. */
typedef struct endpoint {
  const char *host;
  unsigned port;
  size_t region;
  const char *field;
} endpoint;

static int check_endpoints(ctx *c, const sp_topo_region *regs, size_t nregions) {
  endpoint ep[SP_TOPO_MAX_REGIONS * 6];
  size_t n = 0;
  for (size_t i = 0; i < nregions; i++) {
    const sp_topo_region *r = &regs[i];
    ep[n++] = (endpoint){r->address, r->api.port, i, "api.port"};
    ep[n++] = (endpoint){r->address, r->sse.port, i, "sse.port"};
    ep[n++] = (endpoint){r->address, r->notify.port, i, "notify.port"};
    ep[n++] = (endpoint){r->address, r->replication.port, i, "replication.port"};
    ep[n++] = (endpoint){r->postgres.host, r->postgres.port, i, "postgres.port"};
    ep[n++] = (endpoint){r->redis.host, r->redis.port, i, "redis.port"};
  }
  for (size_t j = 1; j < n; j++) {
    for (size_t k = 0; k < j; k++) {
      if (ep[j].port != ep[k].port || strcmp(ep[j].host, ep[k].host) != 0)
        continue;
      int v6 = strchr(ep[j].host, ':') != NULL;
      snprintf(c->path, sizeof c->path, "regions[%zu].%s", ep[j].region, ep[j].field);
      c->plen = strlen(c->path);
      fail(c, "%s%s%s:%u is also used by regions[%zu].%s", v6 ? "[" : "", ep[j].host,
           v6 ? "]" : "", ep[j].port, ep[k].region, ep[k].field);
      path_pop(c, 0);
      return SP_ERR_CONFIG;
    }
  }
  return 0;
}

static int parse_root(ctx *c, json_t *root, sp_topo *t) {
  static const char *const keys[] = {"version",   "cluster",          "state_dir",
                                     "log_level", "sync_interval_ms", "max_clock_skew_ms",
                                     "http",      "tls",              "regions",
                                     NULL};
  static const char *const tls_keys[] = {"ca_cert", "ca_key", NULL};
  const char *s;
  long long v;
  int rc;
  if (!json_is_object(root))
    return fail(c, "expected a JSON object at the top level");
  /* The version first: a newer file's unknown fields are not the news. */
  json_t *ver = json_object_get(root, "version");
  if (ver == NULL)
    return fail_key(c, "version", "required");
  if (!json_is_integer(ver))
    return fail_key(c, "version", "expected integer 1");
  if (json_integer_value(ver) != 1)
    return fail_key(c, "version", "unsupported version %lld (this build reads version 1)",
                    (long long)json_integer_value(ver));
  t->version = 1;
  if ((rc = check_keys(c, root, keys)) || (rc = get_name(c, root, "cluster", &s)))
    return rc;
  if ((t->cluster = arena_strdup(c, s)) == NULL)
    return fail_nomem(c);

  if ((rc = get_path(c, root, "state_dir", 0, &t->state_dir)))
    return rc;
  if (t->state_dir == NULL && (t->state_dir = arena_strdup(c, DEFAULT_STATE_DIR)) == NULL)
    return fail_nomem(c);

  static const char *const levels[] = {"debug", "info", "warn", "error"};
  json_t *lv = json_object_get(root, "log_level");
  t->log_level = SP_LOG_INFO;
  if (lv) {
    int found = -1;
    for (int i = 0; i < 4 && json_is_string(lv); i++)
      if (strcmp(json_string_value(lv), levels[i]) == 0)
        found = i;
    if (found < 0)
      return fail_key(c, "log_level", "expected one of \"debug\", \"info\", \"warn\", \"error\"");
    t->log_level = (sp_log_level)found;
  }
  t->log_level_name = levels[t->log_level];

  if ((rc = get_int(c, root, "sync_interval_ms", 0, 1, 60000, 100, &v)))
    return rc;
  t->sync_interval_ms = (unsigned)v;
  if ((rc = get_int(c, root, "max_clock_skew_ms", 0, 1, 3600000, 500, &v)))
    return rc;
  t->max_clock_skew_ms = (unsigned)v;
  if ((rc = parse_http(c, root, &t->http)))
    return rc;

  json_t *tls;
  if ((rc = get_obj(c, root, "tls", 0, &tls)))
    return rc;
  if (tls) {
    size_t old = path_push_key(c, "tls");
    if ((rc = check_keys(c, tls, tls_keys)) == 0 &&
        (rc = get_path(c, tls, "ca_cert", 1, &t->tls_ca_cert)) == 0)
      rc = get_path(c, tls, "ca_key", 0, &t->tls_ca_key);
    path_pop(c, old);
    if (rc)
      return rc;
  }

  json_t *regions = json_object_get(root, "regions");
  if (regions == NULL)
    return fail_key(c, "regions", "required");
  size_t n = json_is_array(regions) ? json_array_size(regions) : 0;
  if (n < 1 || n > SP_TOPO_MAX_REGIONS) {
    if (json_is_array(regions))
      return fail_key(c, "regions", "expected array of 1-%d regions (got %zu)",
                      SP_TOPO_MAX_REGIONS, n);
    return fail_key(c, "regions", "expected array of 1-%d regions", SP_TOPO_MAX_REGIONS);
  }
  sp_topo_region *regs = arena_alloc(&c->arena, n * sizeof *regs);
  if (regs == NULL)
    return fail_nomem(c);
  json_t *peers_json[SP_TOPO_MAX_REGIONS];
  size_t old = path_push_key(c, "regions");
  for (size_t i = 0; i < n && rc == 0; i++) {
    size_t old2 = path_push_index(c, i);
    rc = parse_region(c, json_array_get(regions, i), regs, i, t->state_dir,
                      t->tls_ca_cert != NULL, &peers_json[i]);
    path_pop(c, old2);
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    size_t old2 = path_push_index(c, i);
    rc = parse_peers(c, regs, n, i, peers_json[i]);
    path_pop(c, old2);
  }
  path_pop(c, old);
  if (rc)
    return rc;
  if ((rc = check_endpoints(c, regs, n)))
    return rc;
  t->regions = regs;
  t->nregions = n;
  return 0;
}

/* --- entry points -------------------------------------------------------------- */

static int parse_internal(const char *json, size_t len, const char *display_name,
                          const char *base_dir, const char *abs_path, sp_topo **out,
                          char *err, size_t errlen) {
  ctx c = {.name = display_name ? display_name : "topology",
           .err = err,
           .errlen = errlen,
           .base_dir = base_dir};
  char cwd[PATH_MAX];
  if (errlen)
    err[0] = '\0';
  if (len > SP_TOPO_MAX_FILE_BYTES) {
    set_err(&c, "%s: file is too large (over %d bytes)", c.name, SP_TOPO_MAX_FILE_BYTES);
    return SP_ERR_TOOBIG;
  }
  if (len == 0) {
    set_err(&c, "%s: file is empty", c.name);
    return SP_ERR_CONFIG;
  }
  if (c.base_dir == NULL) {
    if (getcwd(cwd, sizeof cwd) == NULL) {
      int e = -errno;
      set_err(&c, "%s: cannot get the current directory: %s", c.name, sp_strerror(e));
      return e;
    }
    c.base_dir = cwd;
  }

  json_error_t jerr;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) {
    /* jansson leaves the text empty when its first allocation fails */
    if (json_error_code(&jerr) == json_error_out_of_memory || jerr.text[0] == '\0')
      return fail_nomem(&c);
    if (jerr.line > 0)
      set_err(&c, "%s:%d:%d: invalid JSON: %s", c.name, jerr.line, jerr.column, jerr.text);
    else
      set_err(&c, "%s: invalid JSON: %s", c.name, jerr.text);
    return SP_ERR_CONFIG;
  }

  int rc;
  sp_topo *t = arena_alloc(&c.arena, sizeof *t);
  if (t == NULL) {
    rc = fail_nomem(&c);
    goto fail_topo;
  }
  if ((t->display_name = arena_strdup(&c, c.name)) == NULL ||
      (t->base_dir = arena_strdup(&c, c.base_dir)) == NULL ||
      (abs_path && (t->path = arena_strdup(&c, abs_path)) == NULL)) {
    rc = fail_nomem(&c);
    goto fail_topo;
  }
  if ((rc = parse_root(&c, root, t)))
    goto fail_topo;
  json_decref(root);
  t->arena_ = c.arena;
  *out = t;
  return 0;

fail_topo:
  arena_free(c.arena);
  json_decref(root);
  return rc;
}

int sp_topo_parse(const char *json, size_t len, const char *display_name,
                  const char *base_dir, sp_topo **out, char *err, size_t errlen) {
  if (out)
    *out = NULL;
  if (out == NULL || (json == NULL && len > 0) || (base_dir && base_dir[0] != '/')) {
    if (errlen)
      snprintf(err, errlen, "%s: invalid argument",
               display_name ? display_name : "topology");
    return SP_ERR_INVAL;
  }
  return parse_internal(json ? json : "", len, display_name, base_dir, NULL, out, err,
                        errlen);
}

/* Reads at most max + 1 bytes so an oversized file is noticed without
 * reading it all; the caller frees *buf with sp_free. */
static int read_file(int fd, size_t max, char **buf, size_t *len) {
  char *b = sp_malloc(max + 1);
  if (b == NULL)
    return SP_ERR_NOMEM;
  size_t n = 0;
  while (n < max + 1) {
    ssize_t r = read(fd, b + n, max + 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int e = -errno;
      sp_free(b);
      return e;
    }
    if (r == 0)
      break;
    n += (size_t)r;
  }
  *buf = b;
  *len = n;
  return 0;
}

static int load(const char *path, sp_topo **out, char *err, size_t errlen) {
  if (out)
    *out = NULL;
  if (errlen)
    err[0] = '\0';
  if (path == NULL || out == NULL) {
    if (errlen)
      snprintf(err, errlen, "topology: invalid argument");
    return SP_ERR_INVAL;
  }
  /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused
   * below as not a regular file. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = -errno;
    if (errlen)
      snprintf(err, errlen, "%s: cannot open: %s", path, strerror(-e));
    return e;
  }
  int rc;
  struct stat st;
  if (fstat(fd, &st) != 0) {
    rc = -errno;
    if (errlen)
      snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(-rc));
    goto fail_fd;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = SP_ERR_CONFIG;
    if (errlen)
      snprintf(err, errlen, "%s: not a regular file", path);
    goto fail_fd;
  }
  if (st.st_size > SP_TOPO_MAX_FILE_BYTES) {
    rc = SP_ERR_TOOBIG;
    if (errlen)
      snprintf(err, errlen, "%s: file is too large (over %d bytes)", path,
               SP_TOPO_MAX_FILE_BYTES);
    goto fail_fd;
  }

  /* The base directory: the file's own directory, made absolute. */
  char dir[PATH_MAX], absdir[PATH_MAX], abspath[2 * PATH_MAX];
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  if (slash == NULL)
    snprintf(dir, sizeof dir, ".");
  else if (slash == path)
    snprintf(dir, sizeof dir, "/");
  else
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (realpath(dir, absdir) == NULL) {
    rc = -errno;
    if (errlen)
      snprintf(err, errlen, "%s: cannot resolve directory: %s", path, strerror(-rc));
    goto fail_fd;
  }
  snprintf(abspath, sizeof abspath, "%s%s%s", absdir, strcmp(absdir, "/") ? "/" : "", base);

  char *buf = NULL;
  size_t len = 0;
  if ((rc = read_file(fd, SP_TOPO_MAX_FILE_BYTES, &buf, &len))) {
    if (errlen)
      snprintf(err, errlen, "%s: cannot read: %s", path, sp_strerror(rc));
    goto fail_fd;
  }
  close(fd);
  rc = parse_internal(buf, len, path, absdir, abspath, out, err, errlen);
  sp_free(buf);
  return rc;

fail_fd:
  close(fd);
  return rc;
}

int sp_topo_load(const char *path, sp_topo **out, char *err, size_t errlen) {
  int rc = load(path, out, err, errlen);
  if (rc && errlen)
    printable(err);
  return rc;
}

void sp_topo_free(sp_topo *topo) {
  if (topo)
    arena_free(topo->arena_);
}

const sp_topo_region *sp_topo_region_find(const sp_topo *topo, const char *name) {
  if (topo == NULL || name == NULL)
    return NULL;
  for (size_t i = 0; i < topo->nregions; i++)
    if (strcmp(topo->regions[i].name, name) == 0)
      return &topo->regions[i];
  return NULL;
}
