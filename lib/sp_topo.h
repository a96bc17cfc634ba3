/* sp_topo: the deployment topology, loaded from one JSON file.
 *
 * Every process and the operator CLI read the same file through this loader,
 * which validates all of it and reports the first problem as
 *   "<file>: <field path>: <what is wrong>"   e.g.
 *   "topology.json: regions[1].api.port: expected integer 1-65535"
 * (JSON syntax errors as "<file>:<line>:<column>: invalid JSON: ..."), one
 * line of printable ASCII (other bytes echoed from the file become '?').
 * Unknown keys are errors, so a typo never silently falls back to a default.
 *
 * Format (config/topology.local.json is the local three-region deployment):
 *   version            required, must be 1
 *   cluster            required, name: [a-z0-9][a-z0-9-]{0,62}
 *   state_dir          default "/var/lib/statuspage" (the service user's home)
 *   log_level          "debug" | "info" | "warn" | "error", default "info"
 *   sync_interval_ms   1-60000, default 100 (replication tick)
 *   max_clock_skew_ms  1-3600000, default 500 (HLC writes further ahead refused)
 *   http {             optional block; each field optional:
 *     max_header_bytes   1024-1048576, default 16384
 *     max_body_bytes     1-1073741824, default 1048576
 *     header_timeout_ms  1-3600000, default 10000
 *     idle_timeout_ms    1-3600000, default 60000
 *     max_connections    1-1000000, default 10000 }
 *   tls { ca_cert (required), ca_key (optional: only the host that mints
 *         certificates needs it) }   absent = no TLS configured
 *   regions            required array of 1-16 region objects:
 *     name             required, name syntax as cluster, unique
 *     address          required IPv4/IPv6 literal (not the wildcard); the
 *                      region's processes listen on it and peers dial it
 *     api  { port (required), processes 1-64 (default 1) }
 *     sse  { port (required), processes 1-64 (default 1) }
 *     notify { port }, replication { port }            required
 *     postgres { host, port, dbname, user }            all required
 *     redis { host, port }                             all required
 *     tls { cert, key }  required in every region when the top-level tls
 *                        block is present, forbidden when it is absent
 *     peers            region names to replicate with: known, not itself,
 *                      no duplicates; absent = every other region
 * Ports are integers 1-65535 and no two listeners (the four services of every
 * region plus every postgres and redis host:port) may share an address:port.
 * Hosts are IP literals or DNS names.  Relative paths (state_dir, tls files)
 * are resolved against the topology file's directory and stored absolute and
 * lexically normalised ("." and ".." removed).  Files over 1 MiB are refused.
 *
 * Memory: an sp_topo owns every struct and string reachable from it (one
 * arena, allocated with sp_alloc); all of it is read-only for callers and
 * lives until sp_topo_free.  Loading allocates JSON values through jansson's
 * allocator (json_set_alloc_funcs decides which) and frees them before
 * returning.  No global state.
 */
#ifndef SP_TOPO_H
#define SP_TOPO_H

#include "sp_log.h"

#include <stddef.h>
#include <stdint.h>

#define SP_TOPO_MAX_FILE_BYTES (1024 * 1024)
#define SP_TOPO_MAX_REGIONS 16
#define SP_TOPO_MAX_PROCESSES 64

/* A service listening on the region's address. */
typedef struct sp_topo_service {
  uint16_t port;
  unsigned processes; /* api and sse: 1-64 sharing the port; others: 1 */
} sp_topo_service;

typedef struct sp_topo_postgres {
  const char *host; /* IP literal (canonical form) or DNS name */
  uint16_t port;
  const char *dbname;
  const char *user;
} sp_topo_postgres;

typedef struct sp_topo_redis {
  const char *host;
  uint16_t port;
} sp_topo_redis;

typedef struct sp_topo_http {
  size_t max_header_bytes;
  size_t max_body_bytes;
  unsigned header_timeout_ms;
  unsigned idle_timeout_ms;
  unsigned max_connections;
} sp_topo_http;

typedef struct sp_topo_region sp_topo_region;
struct sp_topo_region {
  const char *name;
  size_t index;        /* position in sp_topo.regions */
  const char *address; /* canonical text form (inet_ntop) */
  int family;          /* AF_INET or AF_INET6 */
  sp_topo_service api, sse, notify, replication;
  sp_topo_postgres postgres;
  sp_topo_redis redis;
  const char *tls_cert; /* absolute; NULL when TLS is not configured */
  const char *tls_key;  /* absolute; NULL when TLS is not configured */
  /* Derived, absolute: state_dir = <topo state_dir>/<name>, and inside it
   * pg/ (PostgreSQL data), redis/ and log/. */
  const char *state_dir;
  const char *pg_dir;
  const char *redis_dir;
  const char *log_dir;
  const sp_topo_region *const *peers; /* into the same sp_topo's regions */
  size_t npeers;
};

typedef struct sp_topo {
  const char *display_name; /* as given: the path passed to sp_topo_load */
  const char *path;         /* absolute file path; NULL from sp_topo_parse */
  const char *base_dir;     /* absolute dir relative paths were resolved in */
  int version;
  const char *cluster;
  const char *state_dir; /* absolute */
  const char *log_level_name;
  sp_log_level log_level;
  unsigned sync_interval_ms;
  unsigned max_clock_skew_ms;
  sp_topo_http http;
  const char *tls_ca_cert; /* absolute; NULL when TLS is not configured */
  const char *tls_ca_key;  /* absolute; NULL when absent */
  const sp_topo_region *regions;
  size_t nregions;
  void *arena_; /* private */
} sp_topo;

/* Read and validate the topology file at `path`.  On success *out is a new
 * sp_topo the caller frees with sp_topo_free.  On failure *out is NULL and,
 * when errlen > 0, `err` holds a one-line message naming the file (as given
 * in `path`) and the field.
 * Returns 0; SP_ERR_CONFIG (invalid content, including non-JSON, an empty
 * file, and a path that is not a regular file); SP_ERR_TOOBIG (file over
 * SP_TOPO_MAX_FILE_BYTES); a -errno from open/read/realpath (SP_ERR_NOENT,
 * SP_ERR_ACCES, ...); SP_ERR_NOMEM; SP_ERR_INVAL for NULL path/out. */
int sp_topo_load(const char *path, sp_topo **out, char *err, size_t errlen);

/* Validate `len` bytes of JSON (need not be NUL-terminated; for tests and
 * fuzzing).  `display_name` prefixes error messages (NULL = "topology");
 * `base_dir` is the absolute directory relative paths are resolved in
 * (NULL = the current directory).  Returns as sp_topo_load: 0,
 * SP_ERR_CONFIG, SP_ERR_TOOBIG, SP_ERR_NOMEM, or SP_ERR_INVAL (NULL json
 * with len > 0, NULL out, relative base_dir). */
int sp_topo_parse(const char *json, size_t len, const char *display_name,
                  const char *base_dir, sp_topo **out, char *err, size_t errlen);

/* Free everything the topology owns.  NULL is a no-op. */
void sp_topo_free(sp_topo *topo);

/* The region called `name`, or NULL.  The pointer lives as long as `topo`. */
const sp_topo_region *sp_topo_region_find(const sp_topo *topo, const char *name);

#endif
