/* api/routes.h: the route tables of statusd-api and the helpers the
 * handlers share.  Each handler file exports its const table; api_routes()
 * joins them once at start-up into the one table the HTTP server takes. */
#ifndef API_ROUTES_H
#define API_ROUTES_H

#include "internal.h"

extern const sp_http_route api_public_routes[]; /* api_public.c */
extern const size_t api_public_nroutes;
extern const sp_http_route api_manage_routes[]; /* api_manage.c */
extern const size_t api_manage_nroutes;
extern const sp_http_route api_ops_routes[];    /* api_ops.c */
extern const size_t api_ops_nroutes;

/* The joined table (static storage, lives for the process).  0 or NOMEM. */
int api_routes(const sp_http_route **out, size_t *n);

/* ---- api_ops.c -------------------------------------------------------------- */
int api_metrics_init(api_server *s);
void api_metrics_request(api_server *s, const char *method, const char *route, int status,
                         uint64_t duration_ns);
/* Counts one public read served from the cache (kind: api_doc_kind; the
 * render module calls it); not_modified for a 304. */
void api_metrics_cache_hit(int kind, int not_modified);
/* Counts one request refused by the rate limit (api_auth.c calls it). */
void api_metrics_rate_limited(api_server *s);
/* Counts n tombstones collected from the cache's document (api_cache.c). */
void api_metrics_tombstones_collected(api_server *s, uint64_t n);
/* Starts the maintenance auto-transition timer; api_ops_stop closes it. */
int api_ops_start(api_server *s);
void api_ops_stop(api_server *s);

/* ---- api_maint.c ------------------------------------------------------------- */
/* Moves scheduled maintenances along by time (scheduled -> in_progress at
 * scheduled_for, -> completed at scheduled_until) when their auto flags are
 * set, through api_write like any other change.  Called every second and
 * after the test clock moves. */
void api_maint_tick(api_server *s);

/* ---- api_model.c (shared helpers) -------------------------------------------- */
/* "2026-11-23T06:00:00.000Z" for a Unix time in ms.  out >= 32 bytes. */
void api_format_time(uint64_t ms, char *out, size_t len);
/* Parses an ISO-8601 timestamp (with Z or an offset, optional fraction) into
 * Unix ms.  0 or SP_ERR_PARSE. */
int api_parse_time(const char *s, uint64_t *ms);
/* Lowercase hex SHA-256 of an API key (the api_key entity's id).  out: 65. */
void api_key_hash_hex(const char *key, char out[65]);

#endif
