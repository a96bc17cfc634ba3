/* api_auth: API keys, the per-key rate limit and the management bulkhead
 * (see auth.h for the rules).
 *
 * Key lookup: the presented key is hashed (SHA-256) and the api_key entity
 * with that id is read from the cache's document.  The document's index
 * compares hashes, never the secret itself, so its timing can only tell an
 * attacker about SHA-256 of what they sent, which does not help them find
 * a valid key; the rate-limit table below compares hashes with
 * CRYPTO_memcmp all the same.
 *
 * Memory: an api_ratelimit owns its buckets (sp_malloc); the process's
 * limiter is created on first use and lives for the process (g_auth, the
 * module's documented state, like api_ops.c's g_ops).
 */
#include "auth.h"
#include "routes.h"

#include <math.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sp_alloc.h"
#include "sp_log.h"

/* ---- keys ------------------------------------------------------------------- */

/* The field as a NUL-terminated copy in out (truncated to outlen-1), or
 * NULL when absent or NULL. */
static const char *field(crdt_doc *doc, const char *id, const char *name, char *out,
                         size_t outlen) {
  const uint8_t *v;
  size_t len;
  crdt_stamp st;
  if (crdt_doc_field(doc, API_ORG_PAGE, API_T_KEY, id, name, &v, &len, &st) || v == NULL)
    return NULL;
  if (len >= outlen)
    len = outlen - 1;
  memcpy(out, v, len);
  out[len] = '\0';
  return out;
}

int api_auth_lookup(crdt_doc *doc, const char *key, size_t len, api_auth_key *out,
                    const char **why) {
  static const char bad[] = "invalid or revoked API key";
  if (len == 0) {
    *why = "missing API key";
    return SP_ERR_ACCES;
  }
  if (len > API_KEY_MAX_LEN || memchr(key, '\0', len)) {
    *why = bad;
    return SP_ERR_ACCES;
  }
  char copy[API_KEY_MAX_LEN + 1];
  memcpy(copy, key, len);
  copy[len] = '\0';
  memset(out, 0, sizeof *out);
  api_key_hash_hex(copy, out->hash);
  OPENSSL_cleanse(copy, sizeof copy);
  char scope[16], page[80], revoked[64];
  if (!crdt_doc_alive(doc, API_ORG_PAGE, API_T_KEY, out->hash) ||
      field(doc, out->hash, "revoked_at", revoked, sizeof revoked) ||
      !field(doc, out->hash, "scope", scope, sizeof scope)) {
    *why = bad;
    return SP_ERR_ACCES;
  }
  if (strcmp(scope, "org") == 0) {
    out->org = 1;
    return 0;
  }
  if (strcmp(scope, "page") == 0 && field(doc, out->hash, "page_id", page, sizeof page) &&
      page[0] && strlen(page) < sizeof out->page_id) {
    memcpy(out->page_id, page, strlen(page) + 1);
    return 0;
  }
  *why = bad;
  return SP_ERR_ACCES;
}

int api_auth_request(api_server *s, sp_http_req *req, api_auth_key *out, const char **why) {
  const char *h = sp_http_req_header(req, "Authorization");
  if (h) {
    while (*h == ' ' || *h == '\t')
      h++;
    size_t sl = strcspn(h, " \t");
    if (!((sl == 5 && strncasecmp(h, "OAuth", 5) == 0) ||
          (sl == 6 && strncasecmp(h, "Bearer", 6) == 0))) {
      *why = "unsupported Authorization scheme (use: Authorization: OAuth <key>)";
      return SP_ERR_ACCES;
    }
    h += sl;
    while (*h == ' ' || *h == '\t')
      h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
      n--;
    return api_auth_lookup(s->doc, h, n, out, why);
  }
  const char *q = NULL;
  int rc = sp_http_req_query_param(req, "api_key", &q);
  if (rc == SP_ERR_NOENT) {
    *why = "missing API key (send Authorization: OAuth <key>)";
    return SP_ERR_ACCES;
  }
  if (rc) {
    *why = "malformed api_key query parameter";
    return SP_ERR_ACCES;
  }
  return api_auth_lookup(s->doc, q, strlen(q), out, why);
}

int api_auth_page_ok(const api_auth_key *k, const char *page_id) {
  if (k->org)
    return 1;
  return page_id && strcmp(k->page_id, page_id) == 0;
}

/* ---- token bucket ----------------------------------------------------------------- */

void api_bucket_init(api_bucket *b, double burst, uint64_t now_ms) {
  b->tokens = burst;
  b->last_ms = now_ms;
}

void api_bucket_take(api_bucket *b, double rps, double burst, uint64_t now_ms, api_rate *out) {
  if (now_ms > b->last_ms) {
    b->tokens += (double)(now_ms - b->last_ms) * rps / 1000.0;
    if (b->tokens > burst)
      b->tokens = burst;
  }
  b->last_ms = now_ms; /* a clock that went back: no refill, start again from here */
  out->limit = (unsigned)burst;
  if (b->tokens >= 1.0) {
    b->tokens -= 1.0;
    out->allowed = 1;
    out->retry_after_s = 0;
  } else {
    out->allowed = 0;
    double wait = ceil((1.0 - b->tokens) / rps);
    out->retry_after_s = wait < 1 ? 1 : (unsigned)wait;
  }
  out->remaining = (unsigned)floor(b->tokens);
  out->reset_s = (unsigned)ceil((burst - b->tokens) / rps);
}

typedef struct rl_entry {
  struct rl_entry *next;
  char hash[65];
  api_bucket b;
} rl_entry;

struct api_ratelimit {
  double rps, burst;
  size_t max_keys, count, nslots;
  rl_entry **slots;
};

int api_ratelimit_new(double rps, double burst, size_t max_keys, api_ratelimit **out) {
  if (!(rps > 0) || !(burst >= 1) || max_keys == 0)
    return SP_ERR_INVAL;
  api_ratelimit *rl = sp_calloc(1, sizeof *rl);
  if (rl == NULL)
    return SP_ERR_NOMEM;
  rl->nslots = 1024;
  rl->slots = sp_calloc(rl->nslots, sizeof *rl->slots);
  if (rl->slots == NULL) {
    sp_free(rl);
    return SP_ERR_NOMEM;
  }
  rl->rps = rps;
  rl->burst = burst;
  rl->max_keys = max_keys;
  *out = rl;
  return 0;
}

void api_ratelimit_free(api_ratelimit *rl) {
  if (rl == NULL)
    return;
  for (size_t i = 0; i < rl->nslots; i++) {
    rl_entry *e = rl->slots[i];
    while (e) {
      rl_entry *n = e->next;
      sp_free(e);
      e = n;
    }
  }
  sp_free(rl->slots);
  sp_free(rl);
}

size_t api_ratelimit_count(const api_ratelimit *rl) { return rl->count; }

static size_t slot_of(const api_ratelimit *rl, const char *hash) {
  /* FNV-1a: the hashes are uniform already, any mixing will do */
  uint64_t h = 1469598103934665603ull;
  for (const char *p = hash; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ull;
  return (size_t)(h % rl->nslots);
}

/* Drops buckets that are full at now_ms (a new bucket would be the same). */
static void sweep(api_ratelimit *rl, uint64_t now_ms) {
  for (size_t i = 0; i < rl->nslots; i++) {
    rl_entry **pp = &rl->slots[i];
    while (*pp) {
      rl_entry *e = *pp;
      double t = e->b.tokens;
      if (now_ms > e->b.last_ms)
        t += (double)(now_ms - e->b.last_ms) * rl->rps / 1000.0;
      if (t >= rl->burst) {
        *pp = e->next;
        sp_free(e);
        rl->count--;
      } else {
        pp = &e->next;
      }
    }
  }
}

int api_ratelimit_take(api_ratelimit *rl, const char *key_hash, uint64_t now_ms, api_rate *out) {
  size_t hl = strlen(key_hash);
  if (hl > 64)
    hl = 64;
  char h[65];
  memset(h, 0, sizeof h);
  memcpy(h, key_hash, hl);
  size_t i = slot_of(rl, h);
  for (rl_entry *e = rl->slots[i]; e; e = e->next) {
    if (CRYPTO_memcmp(e->hash, h, sizeof h) == 0) {
      api_bucket_take(&e->b, rl->rps, rl->burst, now_ms, out);
      return 0;
    }
  }
  int rc = 0;
  if (rl->count >= rl->max_keys) {
    sweep(rl, now_ms);
    if (rl->count >= rl->max_keys)
      rc = SP_ERR_BUSY;
  }
  rl_entry *e = rc ? NULL : sp_malloc(sizeof *e);
  if (e == NULL) {
    api_bucket tmp;
    api_bucket_init(&tmp, rl->burst, now_ms);
    api_bucket_take(&tmp, rl->rps, rl->burst, now_ms, out);
    return rc ? rc : SP_ERR_NOMEM;
  }
  memcpy(e->hash, h, sizeof h);
  api_bucket_init(&e->b, rl->burst, now_ms);
  e->next = rl->slots[i];
  rl->slots[i] = e;
  rl->count++;
  api_bucket_take(&e->b, rl->rps, rl->burst, now_ms, out);
  return 0;
}

/* ---- bulkhead ------------------------------------------------------------------------ */

int api_bulkhead_enter(api_bulkhead *b) {
  if (b->inflight >= b->max) {
    b->refused++;
    return SP_ERR_BUSY;
  }
  b->inflight++;
  return 0;
}

void api_bulkhead_leave(api_bulkhead *b) {
  if (b->inflight > 0)
    b->inflight--;
}

/* ---- the process's settings and instances --------------------------------------------- */

#define RATE_MAX_KEYS 100000

static struct {
  double rps, burst;
  api_ratelimit *rl;
  api_bulkhead bulkhead;
  int configured;
} g_auth;

static void defaults(void) {
  if (g_auth.configured)
    return;
  g_auth.configured = 1;
  g_auth.rps = API_RATE_DEFAULT_RPS;
  g_auth.burst = API_RATE_DEFAULT_BURST;
  g_auth.bulkhead.max = API_MANAGE_MAX_INFLIGHT;
}

int api_auth_parse_rate(const char *spec, double *rps, double *burst) {
  if (spec == NULL)
    return SP_ERR_PARSE;
  char *end;
  double r = strtod(spec, &end);
  if (end == spec || *end != ':')
    return SP_ERR_PARSE;
  const char *b = end + 1;
  double bu = strtod(b, &end);
  if (end == b || *end != '\0')
    return SP_ERR_PARSE;
  if (!(r > 0) || !(r <= 1e6) || !(bu >= 1) || !(bu <= 1e6))
    return SP_ERR_PARSE;
  *rps = r;
  *burst = bu;
  return 0;
}

void api_auth_configure(double rps, double burst, unsigned max_inflight) {
  defaults();
  if (rps > 0)
    g_auth.rps = rps;
  if (burst >= 1)
    g_auth.burst = burst;
  if (max_inflight)
    g_auth.bulkhead.max = max_inflight;
}

void api_auth_rate(api_server *s, const char *key_hash, api_rate *out) {
  defaults();
  if (g_auth.rl == NULL && api_ratelimit_new(g_auth.rps, g_auth.burst, RATE_MAX_KEYS, &g_auth.rl))
    g_auth.rl = NULL;
  int64_t t = (int64_t)(uv_hrtime() / 1000000u) + s->clock_offset_ms;
  uint64_t now = t > 0 ? (uint64_t)t : 0;
  if (g_auth.rl == NULL) {
    api_bucket tmp;
    api_bucket_init(&tmp, g_auth.burst, now);
    api_bucket_take(&tmp, g_auth.rps, g_auth.burst, now, out);
  } else if (api_ratelimit_take(g_auth.rl, key_hash, now, out)) {
    sp_log_warn("rate limiter full: request let through unlimited", NULL);
  }
  if (!out->allowed)
    api_metrics_rate_limited(s);
}

api_bulkhead *api_auth_bulkhead(void) {
  defaults();
  return &g_auth.bulkhead;
}
