/* api_manage: the management API v1 (Statuspage shapes, reference §2): the
 * request plumbing every handler shares, the write helpers it shares with
 * api_maint.c, the route table, and the page and API-key endpoints.
 * Components and groups, incidents, and subscribers have their own files
 * (api_manage_*.c), the write lanes too (api_lane.c); manage.h says how a
 * request flows and who owns what.
 *
 *   GET  /v1/pages                          pages the key can see
 *   POST /v1/pages                          org key: {"page": {...}} -> 201
 *   GET|PATCH|PUT /v1/pages/{page_id}
 *   POST   /v1/pages/{page_id}/api_keys      org key: a page key, shown once
 *   DELETE /v1/pages/{page_id}/api_keys/{id} org key: revokes it
 *
 * Every path also answers with a ".json" suffix.  Custom domains are
 * unique: each is claimed by a `domain` entity under the organisation page
 * whose id is the SHA-256 of the lowercase domain, created in the same
 * transaction as the page change, so two writers racing for one domain get
 * one 201 and one 409 even across processes.
 */
#include "manage.h"

#include <ctype.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "form.h"
#include "routes.h"
#include "sp_alloc.h"
#include "sp_log.h"

#define T_DOMAIN "domain"
#define VIEW_POOL_MAX (256u << 20)
#define RETRY_DB_DOWN "5"

/* ---- shared write helpers ------------------------------------------------------------- */

void api_new_id(api_server *s, char out[CRDT_ID_LEN + 1]) {
  crdt_idgen_next(&s->ids, api_now_ms(s), out);
}

json_t *api_outbox_row(const char *event, const char *page, const char *kind, json_t *payload) {
  if (payload == NULL)
    return NULL;
  return json_pack("{s:s,s:s,s:s,s:o}", "event", event, "page", page, "kind", kind, "payload",
                   payload);
}

const char *api_doc_str(api_server *s, sp_pool *pool, const char *page, const char *type,
                        const char *id, const char *field) {
  const uint8_t *v;
  size_t len;
  crdt_stamp st;
  if (crdt_doc_field(s->doc, page, type, id, field, &v, &len, &st) || v == NULL)
    return NULL;
  return sp_pool_strndup(pool, (const char *)v, len);
}

int api_component_set_status(api_server *s, const char *page, const char *comp,
                             const char *new_status, const char *now, json_t *ops,
                             json_t *affected, json_t *outbox) {
  sp_pool pool;
  char first[1024];
  sp_pool_init(&pool, first, sizeof first, 1u << 20);
  int rc = SP_ERR_NOMEM;
  const char *old = api_doc_str(s, &pool, page, API_T_COMPONENT, comp, "status");
  const char *name = api_doc_str(s, &pool, page, API_T_COMPONENT, comp, "name");
  const char *gid = api_doc_str(s, &pool, page, API_T_COMPONENT, comp, "group_id");
  const char *created = api_doc_str(s, &pool, page, API_T_COMPONENT, comp, "created_at");
  if (old == NULL)
    old = "operational";
  if (name == NULL)
    name = "";
  char shown[1200];
  const char *gname = gid && crdt_doc_alive(s->doc, page, API_T_GROUP, gid)
                          ? api_doc_str(s, &pool, page, API_T_GROUP, gid, "name")
                          : NULL;
  if (gname)
    snprintf(shown, sizeof shown, "%s - %s", gname, name);
  else
    snprintf(shown, sizeof shown, "%s", name);
  int changed = strcmp(old, new_status) != 0;
  if (changed) {
    api_op_set(ops, page, API_T_COMPONENT, comp, "status", new_status);
    api_op_set(ops, page, API_T_COMPONENT, comp, "updated_at", now);
  }
  if (affected &&
      json_array_append_new(affected, json_pack("{s:s,s:s,s:s,s:s}", "code", comp, "name", shown,
                                                "old_status", old, "new_status", new_status)))
    goto out;
  if (changed && outbox) {
    char uid[CRDT_ID_LEN + 1];
    api_new_id(s, uid);
    json_t *payload = json_pack(
        "{s:{s:s,s:s,s:s,s:s,s:s},s:{s:s?,s:s,s:s,s:s}}", "component_update", "created_at", now,
        "new_status", new_status, "old_status", old, "id", uid, "component_id", comp, "component",
        "created_at", created, "id", comp, "name", name, "status", new_status);
    json_t *row = api_outbox_row(uid, page, "component_update", payload);
    if (row == NULL || json_array_append_new(outbox, row))
      goto out;
  }
  rc = 0;
out:
  sp_pool_release(&pool);
  return rc;
}

void mg_op_set_json(json_t *ops, const char *page, const char *type, const char *id,
                    const char *field, json_t *v) {
  char *text = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  api_op_set(ops, page, type, id, field, text);
  free(text);
}

/* ---- answering ---------------------------------------------------------------------------- */

static void finish(mg_ctx *c, int status, const char *body, size_t len, const char *retry,
                   int challenge) {
  api_server *s = c->s;
  char lim[16], rem[16], reset[32];
  sp_http_header h[6];
  size_t nh = 0;
  if (body)
    h[nh++] = (sp_http_header){"Content-Type", "application/json; charset=utf-8"};
  if (c->rated) {
    snprintf(lim, sizeof lim, "%u", c->rate.limit);
    snprintf(rem, sizeof rem, "%u", c->rate.remaining);
    snprintf(reset, sizeof reset, "%llu",
             (unsigned long long)(api_now_ms(s) / 1000 + c->rate.reset_s));
    h[nh++] = (sp_http_header){"X-RateLimit-Limit", lim};
    h[nh++] = (sp_http_header){"X-RateLimit-Remaining", rem};
    h[nh++] = (sp_http_header){"X-RateLimit-Reset", reset};
  }
  if (retry)
    h[nh++] = (sp_http_header){"Retry-After", retry};
  if (challenge)
    h[nh++] = (sp_http_header){"WWW-Authenticate", "OAuth realm=\"statusd-api\""};
  if (c->durable && status >= 200 && status < 300) /* the write committed: wait for a peer */
    api_durable_hold(s, c->req, status, h, nh, body, body ? len : 0, c->durable_seq,
                     c->new_id[0] ? c->new_id : c->id2[0] ? c->id2 : c->id);
  else
    sp_http_respond(c->req, status, h, nh, body, body ? len : 0);
  c->req = NULL;
  json_decref(c->body);
  json_decref(c->keep);
  sp_pool_release(&c->pool);
  api_bulkhead_leave(api_auth_bulkhead());
  if (c->in_lane)
    api_lane_leave(&c->job); /* may run the next write of the lane */
  sp_free(c);
}

void mg_append(json_t **arr, json_t *o) {
  if (*arr == NULL || o == NULL) {
    json_decref(o);
    json_decref(*arr);
    *arr = NULL;
  } else if (json_array_append_new(*arr, o) != 0) { /* o already released */
    json_decref(*arr);
    *arr = NULL;
  }
}

void mg_reply(mg_ctx *c, int status, json_t *v) {
  char *text = v ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(v);
  if (text == NULL) {
    mg_error(c, 500, NULL, "out of memory");
    return;
  }
  finish(c, status, text, strlen(text), NULL, 0);
  free(text);
}

void mg_reply_empty(mg_ctx *c, int status) { finish(c, status, NULL, 0, NULL, 0); }

static void error_v(mg_ctx *c, int status, const char *field, const char *retry,
                    const char *fmt, va_list ap) {
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  json_t *o = json_object();
  json_object_set_new(o, "message", json_string(msg));
  if (field)
    json_object_set_new(o, "field", json_string(field));
  char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  static const char oom[] = "{\"message\":\"out of memory\"}";
  finish(c, status, text ? text : oom, text ? strlen(text) : sizeof oom - 1, retry,
         status == 401);
  free(text);
}

void mg_error(mg_ctx *c, int status, const char *field, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_v(c, status, field, NULL, fmt, ap);
  va_end(ap);
}

static void error_retry(mg_ctx *c, int status, const char *retry, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void error_retry(mg_ctx *c, int status, const char *retry, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_v(c, status, NULL, retry, fmt, ap);
  va_end(ap);
}

int mg_bad(mg_ctx *c, int status, const char *field, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
  va_end(ap);
  c->err_status = status;
  snprintf(c->err_field, sizeof c->err_field, "%s", field ? field : "");
  return -1;
}

void mg_fail(mg_ctx *c) {
  if (c->err_status == 0)
    mg_bad(c, 500, NULL, "internal error");
  mg_error(c, c->err_status, c->err_field[0] ? c->err_field : NULL, "%s", c->err_msg);
}

const char *mg_now(mg_ctx *c, char buf[40]) {
  api_format_time(api_now_ms(c->s), buf, 40);
  return buf;
}

/* ---- writing -------------------------------------------------------------------------------- */

static void on_write(api_server *s, const api_write_result *r, void *arg) {
  mg_ctx *c = arg;
  (void)s;
  switch (r->status) {
  case 0:
    if (r->seq > c->durable_seq)
      c->durable_seq = r->seq;
    c->done(c);
    return;
  case SP_ERR_NOENT:
    if (r->message && strstr(r->message, "not deleted"))
      mg_error(c, 409, NULL, "conflicting write: %s", r->message);
    else
      mg_error(c, 404, NULL, "%s (changed by a concurrent write)",
               r->message ? r->message : "not found");
    return;
  case SP_ERR_EXIST:
    mg_error(c, 409, NULL, "conflicting write: %s", r->message ? r->message : "already exists");
    return;
  case SP_ERR_DB_DOWN:
    error_retry(c, 503, RETRY_DB_DOWN, "database unavailable; retry later");
    return;
  case SP_ERR_BUSY:
    error_retry(c, 503, "1", "too many writes queued; retry later");
    return;
  default:
    sp_log_error("write failed", "{s:s,s:s}", "error", sp_strerror(r->status), "message",
                 r->message ? r->message : "");
    mg_error(c, 500, NULL, "the write failed: %s", sp_strerror(r->status));
    return;
  }
}

void mg_write(mg_ctx *c, json_t *ops, json_t *outbox, mg_fn done) {
  c->done = done;
  if (ops == NULL) {
    json_decref(outbox);
    mg_error(c, 500, NULL, "out of memory");
    return;
  }
  int rc = api_write(c->s, ops, outbox, on_write, c);
  if (rc == 0)
    return;
  if (rc == SP_ERR_DB_DOWN || rc == SP_ERR_CLOSED)
    error_retry(c, 503, RETRY_DB_DOWN, "database unavailable; retry later");
  else if (rc == SP_ERR_BUSY)
    error_retry(c, 503, "1", "too many writes queued; retry later");
  else
    mg_error(c, 500, NULL, "the write could not start: %s", sp_strerror(rc));
}

/* ---- starting a request ------------------------------------------------------------------ */

static void strip_json(char *s) {
  size_t n = strlen(s);
  if (n > 5 && strcmp(s + n - 5, ".json") == 0)
    s[n - 5] = '\0';
}

/* Copies route parameter `name` into out (64 bytes max, printable, no '/');
 * 1 ok, 0 absent, -1 unusable (out is then ""). */
static int param(mg_ctx *c, const char *name, char out[65]) {
  out[0] = '\0';
  const char *v = sp_http_req_param(c->req, name);
  if (v == NULL)
    return 0;
  size_t n = strlen(v);
  if (n == 0 || n > 69)
    return -1;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)v[i] <= 32 || v[i] == 127 || v[i] == '/')
      return -1;
  char tmp[70];
  memcpy(tmp, v, n + 1);
  strip_json(tmp);
  if (tmp[0] == '\0' || strlen(tmp) > 64)
    return -1;
  memcpy(out, tmp, strlen(tmp) + 1);
  return 1;
}

static int media_is(const char *ct, const char *type) {
  size_t n = strlen(type);
  if (strncasecmp(ct, type, n))
    return 0;
  return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

/* Parses the body into c->body.  0, or -1 after answering. */
static int parse_body(mg_ctx *c) {
  sp_iov b = sp_http_req_body(c->req);
  const char *ct = sp_http_req_header(c->req, "Content-Type");
  if (b.len == 0 && (ct == NULL || ct[0] == '\0' ||
                     media_is(ct, "application/x-www-form-urlencoded"))) {
    c->body = json_object();
    c->form = ct != NULL;
    return c->body ? 0 : (mg_error(c, 500, NULL, "out of memory"), -1);
  }
  if (ct && media_is(ct, "application/json")) {
    char err[256];
    json_t *v;
    if (sp_http_req_json(c->req, &v, err, sizeof err)) {
      mg_error(c, 400, NULL, "%s", err);
      return -1;
    }
    if (!json_is_object(v)) {
      json_decref(v);
      mg_error(c, 400, NULL, "the request body must be a JSON object");
      return -1;
    }
    c->body = v;
    return 0;
  }
  if (ct && media_is(ct, "application/x-www-form-urlencoded")) {
    char err[256], field[96];
    json_t *v;
    int rc = api_form_parse(b.base, b.len, &v, err, sizeof err, field, sizeof field);
    if (rc == SP_ERR_NOMEM) {
      mg_error(c, 500, NULL, "out of memory");
      return -1;
    }
    if (rc) {
      mg_error(c, 400, field[0] ? field : NULL, "%s", err);
      return -1;
    }
    c->body = v;
    c->form = 1;
    return 0;
  }
  mg_error(c, 415, NULL,
           "unsupported Content-Type%s%s: send application/json or "
           "application/x-www-form-urlencoded",
           ct ? " " : "", ct ? ct : " (none given)");
  return -1;
}

mg_ctx *mg_begin(sp_http_req *req, void *app, int flags) {
  api_server *s = app;
  if (api_bulkhead_enter(api_auth_bulkhead())) {
    static const char msg[] = "{\"message\":\"too many management requests in flight; retry later\"}";
    sp_http_header h[] = {{"Content-Type", "application/json; charset=utf-8"},
                          {"Retry-After", "1"}};
    sp_http_respond(req, 503, h, 2, msg, sizeof msg - 1);
    return NULL;
  }
  mg_ctx *c = sp_calloc(1, sizeof *c);
  if (c == NULL) {
    api_bulkhead_leave(api_auth_bulkhead());
    sp_http_respond_error(req, 500, "out of memory", NULL);
    return NULL;
  }
  c->s = s;
  c->req = req;
  sp_pool_init(&c->pool, NULL, 0, VIEW_POOL_MAX);
  const char *why = NULL;
  if (api_auth_request(s, req, &c->key, &why)) {
    mg_error(c, 401, NULL, "%s", why);
    return NULL;
  }
  api_auth_rate(s, c->key.hash, &c->rate);
  c->rated = 1;
  if (!c->rate.allowed) {
    char retry[16];
    snprintf(retry, sizeof retry, "%u", c->rate.retry_after_s);
    error_retry(c, 429, retry, "rate limit exceeded (%u requests burst); retry in %u s",
                c->rate.limit, c->rate.retry_after_s);
    return NULL;
  }
  if ((flags & MG_ORG) && !c->key.org) {
    mg_error(c, 403, NULL, "this needs an organisation API key");
    return NULL;
  }
  int durable = api_durable_requested(req);
  if (durable < 0) {
    mg_error(c, 400, "X-Durable", "X-Durable must be \"true\" or \"1\" (or left out)");
    return NULL;
  }
  if (durable) {
    char reason[320];
    int refuse = api_durable_admit(s, reason, sizeof reason);
    if (refuse) {
      if (refuse == 503)
        error_retry(c, 503, "1", "%s", reason);
      else
        mg_error(c, refuse, "X-Durable", "%s", reason);
      return NULL;
    }
    c->durable = 1;
  }
  int pr = param(c, "page_id", c->page);
  if (param(c, "id", c->id) < 0)
    c->id[0] = '\0';
  if (param(c, "update_id", c->id2) < 0)
    c->id2[0] = '\0';
  if (flags & MG_PAGE) {
    if (pr <= 0 || !api_auth_page_ok(&c->key, c->page)) {
      if (!c->key.org)
        mg_error(c, 403, "page_id", "this API key may not access page %s", c->page);
      else
        mg_error(c, 404, "page_id", "page not found");
      return NULL;
    }
    if (!crdt_doc_alive(s->doc, c->page, API_T_PAGE, c->page)) {
      mg_error(c, 404, "page_id", "page %s not found", c->page);
      return NULL;
    }
  }
  if ((flags & MG_BODY) && parse_body(c))
    return NULL;
  return c;
}

static void lane_run(api_lane_job *j) {
  mg_ctx *c = (mg_ctx *)((char *)j - offsetof(mg_ctx, job));
  c->in_lane = 1;
  c->run(c);
}

void mg_lane(mg_ctx *c, const char *page, const char *what, mg_fn run) {
  c->run = run;
  snprintf(c->lane_key, sizeof c->lane_key, "%s/%s", page, what);
  if (api_lane_enter(&c->job, c->lane_key, lane_run))
    mg_error(c, 500, NULL, "out of memory");
}

/* ---- body fields ------------------------------------------------------------------------------ */

static size_t utf8_chars(const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (((unsigned char)s[i] & 0xC0) != 0x80)
      k++;
  return k;
}

json_t *mg_wrapper(mg_ctx *c, const char *name, int required, int *err) {
  *err = 0;
  json_t *o = c->body ? json_object_get(c->body, name) : NULL;
  if (o == NULL) {
    if (required)
      *err = mg_bad(c, 422, name, "%s is required (send {\"%s\": {...}})", name, name);
    return NULL;
  }
  if (!json_is_object(o)) {
    *err = mg_bad(c, 422, name, "%s must be an object", name);
    return NULL;
  }
  return o;
}

int mg_get_str(mg_ctx *c, json_t *o, const char *name, size_t max, int flags, const char **out) {
  json_t *v = o ? json_object_get(o, name) : NULL;
  *out = NULL;
  if (v == NULL) {
    if (flags & MG_REQ)
      return mg_bad(c, 422, name, "%s is required", name);
    return 0;
  }
  if (json_is_null(v)) {
    if (flags & MG_NULL)
      return 1;
    return mg_bad(c, 422, name, "%s must not be null", name);
  }
  if (!json_is_string(v))
    return mg_bad(c, 422, name, "%s must be a string", name);
  const char *sv = json_string_value(v);
  size_t n = json_string_length(v);
  if (strlen(sv) != n)
    return mg_bad(c, 422, name, "%s must not contain NUL characters", name);
  if (n == 0 && c->form && (flags & MG_NULL))
    return 1;
  if (n == 0 && (flags & (MG_NONEMPTY | MG_REQ)))
    return mg_bad(c, 422, name, "%s must not be empty", name);
  if (utf8_chars(sv, n) > max)
    return mg_bad(c, 422, name, "%s is longer than %zu characters", name, max);
  *out = sv;
  return 1;
}

int mg_get_bool(mg_ctx *c, json_t *o, const char *name, int *out) {
  json_t *v = o ? json_object_get(o, name) : NULL;
  if (v == NULL)
    return 0;
  if (json_is_boolean(v)) {
    *out = json_is_true(v);
    return 1;
  }
  if (c->form && json_is_string(v)) {
    const char *s = json_string_value(v);
    if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0) {
      *out = 1;
      return 1;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0) {
      *out = 0;
      return 1;
    }
  }
  return mg_bad(c, 422, name, "%s must be a boolean (true or false)", name);
}

int mg_get_enum(mg_ctx *c, json_t *o, const char *name, api_enum kind, int flags,
                const char **out) {
  int r = mg_get_str(c, o, name, 64, flags, out);
  if (r <= 0 || *out == NULL)
    return r;
  if (!api_enum_ok(kind, *out))
    return mg_bad(c, 422, name, "%s must be one of: %s (got \"%.64s\")", name,
                  api_enum_values(kind), *out);
  return 1;
}

int mg_get_time(mg_ctx *c, json_t *o, const char *name, int flags, char out[40], uint64_t *ms) {
  const char *s;
  int r = mg_get_str(c, o, name, 64, flags, &s);
  out[0] = '\0';
  if (r <= 0 || s == NULL)
    return r;
  if (api_parse_time(s, ms))
    return mg_bad(c, 422, name, "%s must be an ISO-8601 timestamp (got \"%.64s\")", name, s);
  api_format_time(*ms, out, 40);
  return 1;
}

int mg_get_ids(mg_ctx *c, json_t *o, const char *name, json_t **out) {
  json_t *v = o ? json_object_get(o, name) : NULL;
  *out = NULL;
  if (v == NULL)
    return 0;
  if (c->form && json_is_string(v)) {
    /* "x[ids]=a" instead of "x[ids][]=a": one id */
    json_t *a = json_pack("[O]", v);
    if (a == NULL || json_object_set_new(o, name, a))
      return mg_bad(c, 500, NULL, "out of memory");
    v = a;
  }
  if (!json_is_array(v))
    return mg_bad(c, 422, name, "%s must be a list of ids", name);
  size_t i;
  json_t *e;
  json_array_foreach(v, i, e) {
    if (!json_is_string(e) || json_string_length(e) == 0 || json_string_length(e) > 64 ||
        strlen(json_string_value(e)) != json_string_length(e))
      return mg_bad(c, 422, name, "%s[%zu] must be an id (a non-empty string)", name, i);
  }
  *out = v;
  return 1;
}

int mg_query_str(mg_ctx *c, const char *name, const char **out) {
  *out = NULL;
  int rc = sp_http_req_query_param(c->req, name, out);
  if (rc == SP_ERR_NOENT) {
    *out = NULL;
    return 0;
  }
  if (rc)
    return mg_bad(c, rc == SP_ERR_NOMEM ? 500 : 400, name, "malformed query parameter %s",
                  name);
  return 1;
}

int mg_query_int(mg_ctx *c, const char *name, long def, long min, long max, int clamp,
                 long *out) {
  const char *s;
  int r = mg_query_str(c, name, &s);
  if (r < 0)
    return r;
  if (r == 0 || s[0] == '\0') {
    *out = def;
    return 0;
  }
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*end != '\0' || end == s)
    return mg_bad(c, 422, name, "%s must be an integer", name);
  if (v > max && clamp)
    v = max;
  if (v < min || v > max)
    return mg_bad(c, 422, name, "%s must be between %ld and %ld", name, min, max);
  *out = (long)v;
  return 1;
}

int mg_id_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 32)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
      return 0;
  return 1;
}

/* ---- pages -------------------------------------------------------------------------------------- */

static json_t *page_json(mg_ctx *c, const char *id) {
  api_page_v p;
  if (api_page_get(c->s->doc, &c->pool, id, &p))
    return NULL;
  return api_json_page_v1(&p);
}

MG_HANDLER(mg_pages_list) {
  mg_ctx *c = mg_begin(req, app, 0);
  if (c == NULL)
    return;
  api_page_v *pages;
  size_t n;
  if (api_pages_list(c->s->doc, &c->pool, &pages, &n)) {
    mg_error(c, 500, NULL, "out of memory");
    return;
  }
  json_t *a = json_array();
  for (size_t i = 0; a && i < n; i++) {
    if (!api_auth_page_ok(&c->key, pages[i].id))
      continue;
    mg_append(&a, api_json_page_v1(&pages[i]));
  }
  mg_reply(c, 200, a);
}

MG_HANDLER(mg_page_get) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  json_t *o = page_json(c, c->page);
  if (o == NULL)
    mg_error(c, 404, "page_id", "page %s not found", c->page);
  else
    mg_reply(c, 200, o);
}

/* Lowercases and checks a custom domain: letters, digits, '-' and '.'. */
static int domain_ok(char *d) {
  size_t n = strlen(d);
  if (n == 0 || n > 253 || d[0] == '.' || d[0] == '-' || d[n - 1] == '.')
    return 0;
  for (size_t i = 0; i < n; i++) {
    d[i] = (char)tolower((unsigned char)d[i]);
    if (!(isalnum((unsigned char)d[i]) || d[i] == '-' || d[i] == '.'))
      return 0;
    if (d[i] == '.' && i > 0 && d[i - 1] == '.')
      return 0;
  }
  return 1;
}

static int url_ok(const char *u) {
  return strncmp(u, "https://", 8) == 0 || strncmp(u, "http://", 7) == 0;
}

static int tz_ok(const char *tz) {
  if (tz[0] == '\0' || tz[0] == '/' || strstr(tz, ".."))
    return 0;
  for (const char *p = tz; *p; p++)
    if (!(isalnum((unsigned char)*p) || strchr("/_+-", *p)))
      return 0;
  return 1;
}

static void domain_claim_id(const char *domain, char out[65]) { api_key_hash_hex(domain, out); }

static void op_raw(json_t *ops, const char *op, const char *page, const char *type,
                   const char *id) {
  json_array_append_new(ops, json_pack("{s:s,s:s,s:s,s:s}", "op", op, "p", page, "t", type, "i", id));
}

/* Adds the intents that move page `page` from domain `old` (may be NULL)
 * to `domain` (lowercased, may be NULL).  -1 (409 recorded) when another
 * page holds it. */
static int claim_domain(mg_ctx *c, json_t *ops, const char *page, const char *old,
                        const char *domain) {
  api_server *s = c->s;
  if (old && domain && strcasecmp(old, domain) == 0)
    return 0;
  if (domain) {
    /* pages written before claims existed, or by another path: ask the
     * pages themselves too */
    api_page_v *pages;
    size_t n;
    if (api_pages_list(s->doc, &c->pool, &pages, &n))
      return mg_bad(c, 500, NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
      if (strcmp(pages[i].id, page) && pages[i].domain && strcasecmp(pages[i].domain, domain) == 0)
        return mg_bad(c, 409, "domain", "domain %s is already used by another page", domain);
    char cid[65];
    domain_claim_id(domain, cid);
    uint32_t cl = 0;
    if (crdt_doc_cl(s->doc, API_ORG_PAGE, T_DOMAIN, cid, &cl))
      cl = 0;
    if (cl % 2 == 1) {
      const char *holder = api_doc_str(s, &c->pool, API_ORG_PAGE, T_DOMAIN, cid, "page_id");
      if (holder == NULL || strcmp(holder, page))
        return mg_bad(c, 409, "domain", "domain %s is already used by another page", domain);
    } else {
      op_raw(ops, cl == 0 ? "create" : "recreate", API_ORG_PAGE, T_DOMAIN, cid);
      api_op_set(ops, API_ORG_PAGE, T_DOMAIN, cid, "page_id", page);
      api_op_set(ops, API_ORG_PAGE, T_DOMAIN, cid, "domain", domain);
    }
  }
  if (old && old[0]) {
    char lower[256], oid[65];
    snprintf(lower, sizeof lower, "%s", old);
    for (char *p = lower; *p; p++)
      *p = (char)tolower((unsigned char)*p);
    domain_claim_id(lower, oid);
    const char *holder = api_doc_str(s, &c->pool, API_ORG_PAGE, T_DOMAIN, oid, "page_id");
    if (crdt_doc_alive(s->doc, API_ORG_PAGE, T_DOMAIN, oid) && holder && !strcmp(holder, page))
      api_op_delete(ops, API_ORG_PAGE, T_DOMAIN, oid);
  }
  return 0;
}

static const char *const page_bools[] = {
    "allow_page_subscribers", "allow_incident_subscribers", "allow_email_subscribers",
    "allow_sms_subscribers",  "allow_webhook_subscribers",  "allow_rss_atom_feeds"};

/* Validates {"page": {...}} into ops for page `id`.  create: name required,
 * defaults for the rest.  0 or -1 (error recorded). */
static int page_fields(mg_ctx *c, json_t *o, const char *id, int create, json_t *ops,
                       const char *now) {
  const char *name, *domain, *subdomain, *url, *tz, *desc, *headline, *support;
  if (mg_get_str(c, o, "name", 255, create ? MG_REQ : MG_NONEMPTY, &name) < 0 ||
      mg_get_str(c, o, "domain", 255, MG_NULL, &domain) < 0 ||
      mg_get_str(c, o, "subdomain", 255, MG_NULL, &subdomain) < 0 ||
      mg_get_str(c, o, "url", 1000, MG_NULL, &url) < 0 ||
      mg_get_str(c, o, "time_zone", 64, MG_NONEMPTY, &tz) < 0 ||
      mg_get_str(c, o, "page_description", 1000, MG_NULL, &desc) < 0 ||
      mg_get_str(c, o, "headline", 1000, MG_NULL, &headline) < 0 ||
      mg_get_str(c, o, "support_url", 1000, MG_NULL, &support) < 0)
    return -1;
  int has_domain = o && json_object_get(o, "domain") != NULL;
  char dom[256] = "";
  if (domain) {
    snprintf(dom, sizeof dom, "%s", domain);
    if (!domain_ok(dom))
      return mg_bad(c, 422, "domain", "domain must be a host name (letters, digits, '-', '.')");
  }
  if (subdomain) {
    for (const char *p = subdomain; *p; p++)
      if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-'))
        return mg_bad(c, 422, "subdomain", "subdomain may hold only a-z, 0-9 and '-'");
  }
  if (url && !url_ok(url))
    return mg_bad(c, 422, "url", "url must start with http:// or https://");
  if (support && !url_ok(support))
    return mg_bad(c, 422, "support_url", "support_url must start with http:// or https://");
  if (tz && !tz_ok(tz))
    return mg_bad(c, 422, "time_zone", "time_zone must be an IANA zone name such as Etc/UTC");
  int bools[6], has_bool[6];
  for (int i = 0; i < 6; i++) {
    bools[i] = 1;
    int r = mg_get_bool(c, o, page_bools[i], &bools[i]);
    if (r < 0)
      return -1;
    has_bool[i] = r;
  }
  if (has_domain) {
    const char *old =
        create ? NULL : api_doc_str(c->s, &c->pool, id, API_T_PAGE, id, "domain");
    if (claim_domain(c, ops, id, old, domain ? dom : NULL))
      return -1;
  }
  if (create || name)
    api_op_set(ops, id, API_T_PAGE, id, "name", name);
  if (has_domain)
    api_op_set(ops, id, API_T_PAGE, id, "domain", domain ? dom : NULL);
  if (create || (o && json_object_get(o, "subdomain")))
    api_op_set(ops, id, API_T_PAGE, id, "subdomain", subdomain);
  if (create || (o && json_object_get(o, "url")))
    api_op_set(ops, id, API_T_PAGE, id, "url", url);
  if (create || tz)
    api_op_set(ops, id, API_T_PAGE, id, "time_zone", tz ? tz : "Etc/UTC");
  if (create || (o && json_object_get(o, "page_description")))
    api_op_set(ops, id, API_T_PAGE, id, "page_description", desc);
  if (create || (o && json_object_get(o, "headline")))
    api_op_set(ops, id, API_T_PAGE, id, "headline", headline);
  if (create || (o && json_object_get(o, "support_url")))
    api_op_set(ops, id, API_T_PAGE, id, "support_url", support);
  for (int i = 0; i < 6; i++)
    if (create || has_bool[i])
      api_op_set(ops, id, API_T_PAGE, id, page_bools[i], mg_bool_str(bools[i]));
  if (create)
    api_op_set(ops, id, API_T_PAGE, id, "created_at", now);
  api_op_set(ops, id, API_T_PAGE, id, "updated_at", now);
  return 0;
}

static void page_done(mg_ctx *c) {
  json_t *o = page_json(c, c->new_id[0] ? c->new_id : c->page);
  if (o == NULL)
    mg_error(c, 404, "page_id", "page not found (deleted meanwhile)");
  else
    mg_reply(c, c->ok_status, o);
}

static void pages_create_run(mg_ctx *c) {
  int err;
  json_t *o = mg_wrapper(c, "page", 1, &err);
  if (err)
    return mg_fail(c);
  const char *id;
  if (mg_get_str(c, o, "id", 32, MG_NONEMPTY, &id) < 0)
    return mg_fail(c);
  if (id) {
    if (!mg_id_ok(id))
      return mg_error(c, 422, "id", "id must be 1 to 32 characters a-z, 0-9");
    uint32_t cl = 0;
    if (crdt_doc_cl(c->s->doc, id, API_T_PAGE, id, &cl) == 0 && cl > 0)
      return mg_error(c, 409, "id", "page %s already exists", id);
    snprintf(c->new_id, sizeof c->new_id, "%s", id);
  } else {
    api_new_id(c->s, c->new_id);
  }
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  api_op_create(ops, c->new_id, API_T_PAGE, c->new_id);
  if (page_fields(c, o, c->new_id, 1, ops, now)) {
    json_decref(ops);
    return mg_fail(c);
  }
  c->ok_status = 201;
  mg_write(c, ops, NULL, page_done);
}

MG_HANDLER(mg_pages_create) {
  mg_ctx *c = mg_begin(req, app, MG_ORG | MG_BODY);
  if (c == NULL)
    return;
  /* page creates and updates share one lane: a domain check sees the
   * previous write's claim */
  mg_lane(c, API_ORG_PAGE, "pages", pages_create_run);
}

static void page_update_run(mg_ctx *c) {
  int err;
  json_t *o = mg_wrapper(c, "page", 1, &err);
  if (err)
    return mg_fail(c);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  if (page_fields(c, o, c->page, 0, ops, now)) {
    json_decref(ops);
    return mg_fail(c);
  }
  c->ok_status = 200;
  mg_write(c, ops, NULL, page_done);
}

MG_HANDLER(mg_page_update) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c == NULL)
    return;
  /* domain claims are organisation-wide: same lane as page creates */
  mg_lane(c, API_ORG_PAGE, "pages", page_update_run);
}

/* ---- API keys ------------------------------------------------------------------------------------- */

static json_t *key_json(mg_ctx *c, const char *hash, const char *secret) {
  api_server *s = c->s;
  const char *f[] = {"scope", "page_id", "name", "created_at", "revoked_at"};
  const char *v[5];
  for (int i = 0; i < 5; i++)
    v[i] = api_doc_str(s, &c->pool, API_ORG_PAGE, API_T_KEY, hash, f[i]);
  json_t *o = json_object();
  if (secret)
    json_object_set_new(o, "key", json_string(secret));
  json_object_set_new(o, "id", json_string(hash));
  for (int i = 0; i < 5; i++)
    json_object_set_new(o, f[i], v[i] ? json_string(v[i]) : json_null());
  return o;
}

static void key_done(mg_ctx *c) {
  json_t *o = key_json(c, c->new_id, c->secret[0] ? c->secret : NULL);
  OPENSSL_cleanse(c->secret, sizeof c->secret);
  mg_reply(c, c->ok_status, o);
}

MG_HANDLER(mg_keys_create) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_ORG | MG_BODY);
  if (c == NULL)
    return;
  int err;
  json_t *o = mg_wrapper(c, "api_key", 0, &err);
  const char *name = NULL;
  if (err || mg_get_str(c, o, "name", 255, MG_NULL, &name) < 0)
    return mg_fail(c);
  uint8_t raw[24];
  if (RAND_bytes(raw, sizeof raw) != 1)
    return mg_error(c, 500, NULL, "no randomness for a key");
  static const char hexd[] = "0123456789abcdef";
  memcpy(c->secret, "sp_", 3);
  for (size_t i = 0; i < sizeof raw; i++) {
    c->secret[3 + 2 * i] = hexd[raw[i] >> 4];
    c->secret[4 + 2 * i] = hexd[raw[i] & 15];
  }
  c->secret[3 + 2 * sizeof raw] = '\0';
  OPENSSL_cleanse(raw, sizeof raw);
  api_key_hash_hex(c->secret, c->new_id);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  api_op_require(ops, c->page, API_T_PAGE, c->page);
  api_op_create(ops, API_ORG_PAGE, API_T_KEY, c->new_id);
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, c->new_id, "scope", "page");
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, c->new_id, "page_id", c->page);
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, c->new_id, "name", name ? name : "page key");
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, c->new_id, "created_at", now);
  c->ok_status = 201;
  mg_write(c, ops, NULL, key_done);
}

MG_HANDLER(mg_key_revoke) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_ORG);
  if (c == NULL)
    return;
  const char *kp = c->id[0] ? api_doc_str(c->s, &c->pool, API_ORG_PAGE, API_T_KEY, c->id,
                                          "page_id")
                            : NULL;
  if (!c->id[0] || !crdt_doc_alive(c->s->doc, API_ORG_PAGE, API_T_KEY, c->id) || kp == NULL ||
      strcmp(kp, c->page) ||
      api_doc_str(c->s, &c->pool, API_ORG_PAGE, API_T_KEY, c->id, "revoked_at"))
    return mg_error(c, 404, "id", "API key %s not found on page %s", c->id, c->page);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  api_op_set(ops, API_ORG_PAGE, API_T_KEY, c->id, "revoked_at", now);
  snprintf(c->new_id, sizeof c->new_id, "%s", c->id);
  c->ok_status = 200;
  mg_write(c, ops, NULL, key_done);
}

/* ---- routes ---------------------------------------------------------------------------------------- */

#define P "/v1/pages/{page_id}"
#define BOTH(m, path, h) {m, path, h}, {m, path ".json", h}

const sp_http_route api_manage_routes[] = {
    BOTH("GET", "/v1/pages", mg_pages_list),
    BOTH("POST", "/v1/pages", mg_pages_create),
    {"GET", P, mg_page_get},
    {"PATCH", P, mg_page_update},
    {"PUT", P, mg_page_update},
    BOTH("POST", P "/api_keys", mg_keys_create),
    {"DELETE", P "/api_keys/{id}", mg_key_revoke},

    BOTH("GET", P "/components", mg_components_list),
    BOTH("POST", P "/components", mg_components_create),
    {"GET", P "/components/{id}", mg_component_get},
    {"PATCH", P "/components/{id}", mg_component_update},
    {"PUT", P "/components/{id}", mg_component_update},
    {"DELETE", P "/components/{id}", mg_component_delete},

    BOTH("GET", P "/component-groups", mg_groups_list),
    BOTH("POST", P "/component-groups", mg_groups_create),
    {"GET", P "/component-groups/{id}", mg_group_get},
    {"PATCH", P "/component-groups/{id}", mg_group_update},
    {"PUT", P "/component-groups/{id}", mg_group_update},
    {"DELETE", P "/component-groups/{id}", mg_group_delete},

    BOTH("GET", P "/incidents", mg_incidents_list),
    BOTH("POST", P "/incidents", mg_incidents_create),
    BOTH("GET", P "/incidents/unresolved", mg_incidents_unresolved),
    BOTH("GET", P "/incidents/upcoming", mg_incidents_upcoming),
    BOTH("GET", P "/incidents/scheduled", mg_incidents_scheduled),
    BOTH("GET", P "/incidents/active_maintenance", mg_incidents_active),
    {"GET", P "/incidents/{id}", mg_incident_get},
    {"PATCH", P "/incidents/{id}", mg_incident_update},
    {"PUT", P "/incidents/{id}", mg_incident_update},
    {"DELETE", P "/incidents/{id}", mg_incident_delete},
    {"PATCH", P "/incidents/{id}/incident_updates/{update_id}", mg_update_edit},
    {"PUT", P "/incidents/{id}/incident_updates/{update_id}", mg_update_edit},

    BOTH("GET", P "/subscribers", mg_subscribers_list),
    BOTH("POST", P "/subscribers", mg_subscribers_create),
    BOTH("POST", P "/subscribers/unsubscribe", mg_subscribers_unsubscribe),
    {"GET", P "/subscribers/{id}", mg_subscriber_get},
    {"PATCH", P "/subscribers/{id}", mg_subscriber_update},
    {"DELETE", P "/subscribers/{id}", mg_subscriber_delete},
};
const size_t api_manage_nroutes = sizeof api_manage_routes / sizeof api_manage_routes[0];
