/* api/internal.h: what the files of statusd-api share.
 *
 * One process = one `api_server` (the single documented per-process struct,
 * set up in main): the loop, the HTTP server, two PostgreSQL pools
 * (bulkheads: public reads never touch the database; management writes and
 * the cache's catch-up reads have separate pools), the Redis client, the
 * metrics registry and the cache.
 *
 * The cache is the region's whole replicated state as a crdt_doc, plus the
 * vector of changes it has merged, plus per-page pre-rendered documents.
 * It is filled from PostgreSQL at start, and kept fresh by (1) merging the
 * changes of this process's own writes right after commit, (2) merging the
 * deltas other processes publish on Redis, and (3) a catch-up poll of
 * sp_change_log beyond the merged vector (covers a Redis outage and changes
 * applied by the replication daemon).  Reads never wait on PostgreSQL.
 *
 * Files: api_cache.c (cache, loader, catch-up, change events),
 * api_write.c (the write path: intents -> sp_write -> merge -> publish),
 * api_model.c (typed views of entities, field schema and validation),
 * api_durable.c (X-Durable: answers held until another region applied
 * the write), api_render.c (Statuspage JSON shapes, rollup, pre-rendered
 * documents),
 * api_public.c (public read API and HTML page), api_manage.c (management
 * API v1), api_auth.c (API keys, rate limits), api_ops.c (/health, /ready,
 * /metrics, maintenance auto-transition), main.c.
 */
#ifndef API_INTERNAL_H
#define API_INTERNAL_H

#include <stdint.h>
#include <uv.h>

#include "crdt.h"
#include "sp_http.h"
#include "sp_metrics.h"
#include "sp_pg.h"
#include "sp_redis.h"
#include "sp_topo.h"

/* Entity types stored in the CRDT document.  Pages are entities of type
 * "page" whose page id is their own id.  Organisation-wide objects (API
 * keys) live under the reserved page id API_ORG_PAGE. */
#define API_T_PAGE "page"
#define API_T_COMPONENT "component"
#define API_T_GROUP "component_group"
#define API_T_INCIDENT "incident" /* incidents and scheduled maintenances */
#define API_T_UPDATE "incident_update" /* grow-only */
#define API_T_SUBSCRIBER "subscriber"
#define API_T_KEY "api_key"
#define API_ORG_PAGE "_org"

typedef struct api_server api_server;

/* ---- cache (api_cache.c) -------------------------------------------------- */

/* A rendered document: body bytes and its weak ETag, refcounted so a
 * response can keep it while the cache replaces it. */
typedef struct api_doc {
  int refs;
  char etag[48]; /* W/"<hex>" */
  size_t len;
  char body[];
} api_doc;

void api_doc_unref(api_doc *d);

typedef struct api_cache api_cache;

/* A new, empty document with the declarations every copy of the state
 * needs (incident updates grow-only and indexed by incident).  The caller
 * frees it (crdt_doc_free).  0 or SP_ERR_NOMEM. */
int api_cache_doc_new(crdt_doc **out);
/* Loads the whole state from PostgreSQL into s->doc (made by
 * api_cache_doc_new), and the types whose tombstones are never collected
 * (sp_gc_keep).  Blocking libpq: start-up only.  0 or SP_ERR_*; err gets a
 * message. */
int api_cache_load(api_server *s, const char *conninfo, char *err, size_t errlen);
/* Merges changes (already committed) into the document, records them in the
 * merged vector and schedules re-rendering of the pages they touch. */
int api_cache_merge(api_server *s, const crdt_delta *d);
/* Starts the Redis subscription and the catch-up poll. */
int api_cache_start(api_server *s);
/* Stops the poll and the subscription and closes the cache's handles (their
 * close callbacks run on the loop); api_cache_free afterwards. */
void api_cache_stop(api_server *s);
void api_cache_free(api_server *s);
/* The vector of changes merged so far (borrowed). */
const crdt_vclock *api_cache_merged(const api_server *s);
/* Renders `page` now if changes to it are waiting for the render timer
 * (NULL: every waiting page).  Readers call it before taking a document. */
void api_cache_render_pending(api_server *s, const char *page);
/* 1 when the cache may be behind PostgreSQL (database or catch-up failing). */
int api_cache_is_stale(const api_server *s);
/* Tombstones collected from the document since start (crdt_doc_gc). */
uint64_t api_cache_collected(const api_server *s);

/* ---- write path (api_write.c) -------------------------------------------- */

/* A write is a list of intents (see sp_write in lib/sql/0001_store.sql)
 * built with these helpers into a JSON array the caller owns. */
json_t *api_ops_new(void);
void api_op_create(json_t *ops, const char *page, const char *type, const char *id);
void api_op_delete(json_t *ops, const char *page, const char *type, const char *id);
void api_op_require(json_t *ops, const char *page, const char *type, const char *id);
/* value NULL = SQL NULL */
void api_op_set(json_t *ops, const char *page, const char *type, const char *id,
                const char *field, const char *value);

/* Outcome of a write, passed to the completion callback.  status: 0, or
 * SP_ERR_NOENT (an entity was missing or deleted), SP_ERR_EXIST (create of
 * an existing id), SP_ERR_DB_DOWN (database unavailable), SP_ERR_BUSY
 * (write queue full), SP_ERR_DB (other SQL error; message in `message`). */
typedef struct api_write_result {
  int status;
  const char *message; /* borrowed for the call */
  crdt_hlc hlc;        /* the write's stamp */
  uint64_t seq;        /* its last change-log sequence number (this region's
                          origin); 0 when it changed nothing */
} api_write_result;
typedef void (*api_write_cb)(api_server *s, const api_write_result *r, void *arg);

/* Runs `ops` (and `outbox`, may be NULL) as one transaction.  Takes ownership
 * of both JSON values.  On success the changes are merged into the cache and
 * published before cb runs, so a read right after sees the write.  Returns 0
 * (cb will run exactly once) or an error (cb never runs). */
int api_write(api_server *s, json_t *ops, json_t *outbox, api_write_cb cb, void *arg);

/* ---- durable writes (api_durable.c) ---------------------------------------- */

/* For a write method (not GET/HEAD/OPTIONS): 1 when the request carries
 * X-Durable: true (or 1), 0 when it has no X-Durable header, -1 when one has
 * any other value (answer 400).  Reads: always 0. */
int api_durable_requested(const sp_http_req *req);
/* Before writing: 0 when a durable write can be accepted now, else the
 * HTTP status to refuse it with (409: the region has no peers; 503: too
 * many waiting, or shutting down) and the reason in why. */
int api_durable_admit(api_server *s, char *why, size_t len);
/* Holds the 2xx answer of a committed durable write (status, headers and
 * body are copied) until a peer region acknowledged this region's sequence
 * `seq` (0: the highest one merged so far), or the durable timeout passes
 * (504), or the process stops (503).  `id` (may be NULL) names the
 * resource in those error bodies.  Consumes req in every case. */
void api_durable_hold(api_server *s, sp_http_req *req, int status, const sp_http_header *h,
                      size_t nh, const char *body, size_t len, uint64_t seq, const char *id);
/* Subscribes to the acks channel, registers the metrics, hooks SIGTERM and
 * SIGINT (answering waiters at once); after api_cache_start.  0 or SP_ERR_*. */
int api_durable_start(api_server *s);
/* Answers what still waits and closes the handles (from the shutdown). */
void api_durable_stop(api_server *s);

/* ---- the process ------------------------------------------------------------ */

struct api_server {
  uv_loop_t *loop;
  const sp_topo *topo;
  const sp_topo_region *region;
  int region_id;           /* index of the region in the topology */
  sp_http_server *http;
  sp_pg_pool *pg_write;    /* management writes */
  sp_pg_pool *pg_read;     /* cache catch-up reads */
  sp_redis *redis;
  sp_metrics *metrics;
  crdt_doc *doc;           /* the cache's state (owned by api_cache.c) */
  api_cache *cache;
  struct api_render *render; /* pre-rendered documents (api_render.c) */
  crdt_idgen ids;
  int64_t clock_offset_ms; /* test clock: added to wall time (--test-clock) */
  int test_clock;          /* 1 when the test clock endpoint is enabled */
  char changes_channel[128]; /* Redis channel of this region's change events */
  char acks_channel[128];    /* Redis channel of peers' persisted acks (api_durable.c) */
  uint64_t durable_timeout_ms; /* how long a durable write waits (--durable-timeout-ms) */
};

/* Wall time in ms, with the test clock's offset. */
uint64_t api_now_ms(const api_server *s);

#endif
