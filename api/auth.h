/* api/auth.h: who may use the management API, how often, and how many
 * management requests run at once (api_auth.c).
 *
 * Keys.  An API key is a random string shown once at creation; the store
 * keeps only an `api_key` entity under the organisation page (API_ORG_PAGE)
 * whose id is the key's lowercase hex SHA-256, with fields scope ("org":
 * every page, may create pages and page keys; "page": only `page_id`),
 * name, created_at, revoked_at.  A request presents its key as
 * "Authorization: OAuth <key>" (Statuspage's form; "Bearer <key>" is also
 * taken) or as the query parameter api_key.
 *
 * Rate limit.  One token bucket per key (default 10 requests/s, bursts of
 * 100; statusd-api --rate-limit RPS:BURST).  Every management request of a
 * key takes a token; without one it is refused with 429.  The bucket
 * refills on the process's monotonic clock plus the test clock's offset,
 * so tests can move time instead of sleeping.
 *
 * Bulkhead.  At most max_inflight management requests (default 256) are
 * between their start and their answer at any time (queued behind a write
 * included); beyond that a request is refused with 503 at once, so a flood
 * of writes cannot pile up without bound, and public reads (which never
 * touch the database) are unaffected.
 *
 * The process's limiter and bulkhead are module state of api_auth.c (like
 * api_ops.c's metric handles), configured once from main before serving.
 * The pieces (bucket, limiter table, bulkhead) are plain values so the unit
 * tests drive them with explicit times.
 */
#ifndef API_AUTH_H
#define API_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

#define API_KEY_MAX_LEN 200 /* longer presented keys are refused unhashed */
#define API_RATE_DEFAULT_RPS 10.0
#define API_RATE_DEFAULT_BURST 100.0
#define API_MANAGE_MAX_INFLIGHT 256

/* ---- keys ------------------------------------------------------------------- */

typedef struct api_auth_key {
  char hash[65];    /* hex SHA-256 of the key: the api_key entity id */
  int org;          /* 1: organisation scope */
  char page_id[65]; /* page scope: the page ("" for org keys) */
} api_auth_key;

/* Looks up the key `key[0..len)` in `doc`.  Returns 0 and *out; or
 * SP_ERR_ACCES with *why (static text) for an empty, over-long, unknown or
 * revoked key, or one whose stored scope is unusable. */
int api_auth_lookup(crdt_doc *doc, const char *key, size_t len, api_auth_key *out,
                    const char **why);

/* Finds and looks up the key a request presents (header first, then
 * ?api_key=).  0 and *out, or SP_ERR_ACCES with *why (static text: "missing
 * API key", "unsupported Authorization scheme", "invalid or revoked API
 * key", ...). */
int api_auth_request(api_server *s, sp_http_req *req, api_auth_key *out, const char **why);

/* 1 when the key may act on page `page_id`, else 0. */
int api_auth_page_ok(const api_auth_key *k, const char *page_id);

/* ---- token bucket ----------------------------------------------------------------- */

/* The outcome of taking a token, with what the X-RateLimit-* headers say. */
typedef struct api_rate {
  int allowed;            /* 1: go ahead; 0: refuse with 429 */
  unsigned limit;         /* the bucket size (burst) */
  unsigned remaining;     /* whole tokens left after this request */
  unsigned reset_s;       /* seconds until the bucket is full again */
  unsigned retry_after_s; /* refused: seconds until a token is there (>= 1) */
} api_rate;

typedef struct api_bucket {
  double tokens;
  uint64_t last_ms;
} api_bucket;

/* A full bucket at now_ms. */
void api_bucket_init(api_bucket *b, double burst, uint64_t now_ms);
/* Refills for the time since the last call (a clock that went back counts
 * as no time) and takes one token if there is one; fills *out. */
void api_bucket_take(api_bucket *b, double rps, double burst, uint64_t now_ms, api_rate *out);

/* Buckets by key hash.  At most max_keys buckets are kept; when full,
 * buckets that have refilled completely are dropped (they carry no
 * information). */
typedef struct api_ratelimit api_ratelimit;

/* rps > 0, burst >= 1.  0 and *out (api_ratelimit_free), SP_ERR_INVAL,
 * SP_ERR_NOMEM. */
int api_ratelimit_new(double rps, double burst, size_t max_keys, api_ratelimit **out);
void api_ratelimit_free(api_ratelimit *rl); /* NULL is a no-op */
/* Takes a token from key_hash's bucket (a new key starts full).  0, or
 * SP_ERR_NOMEM / SP_ERR_BUSY (no room for a new bucket even after dropping
 * full ones): then *out allows the request (a limiter that cannot remember
 * must not lock every key out) and the caller may log it. */
int api_ratelimit_take(api_ratelimit *rl, const char *key_hash, uint64_t now_ms, api_rate *out);
size_t api_ratelimit_count(const api_ratelimit *rl);

/* ---- bulkhead ------------------------------------------------------------------------ */

typedef struct api_bulkhead {
  unsigned max;      /* budget; 0 refuses everything */
  unsigned inflight; /* requests admitted and not yet answered */
  uint64_t refused;  /* requests refused, ever */
} api_bulkhead;

/* 0 (admitted: call api_bulkhead_leave once when answered) or SP_ERR_BUSY. */
int api_bulkhead_enter(api_bulkhead *b);
void api_bulkhead_leave(api_bulkhead *b);

/* ---- the process's settings and instances --------------------------------------------- */

/* Parses "RPS:BURST" (e.g. "10:100", "0.5:5"; rps > 0, 1 <= burst <= 1e6).
 * 0, or SP_ERR_PARSE. */
int api_auth_parse_rate(const char *spec, double *rps, double *burst);
/* Sets the process's rate limit and bulkhead budget (before serving; the
 * limiter is created at first use).  0 keeps a default. */
void api_auth_configure(double rps, double burst, unsigned max_inflight);
/* Takes a token for key_hash from the process's limiter (counts refusals
 * with api_metrics_rate_limited). */
void api_auth_rate(api_server *s, const char *key_hash, api_rate *out);
/* The process's management bulkhead (never NULL). */
api_bulkhead *api_auth_bulkhead(void);

#endif
