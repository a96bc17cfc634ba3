/* api_manage_subscribers: page subscribers in the management API
 * (reference §2.7).
 *
 *   POST /v1/pages/{page_id}/subscribers          {"subscriber": {...}} -> 201
 *   GET  …/subscribers                            q, type, state, limit, page (0-based)
 *   GET|PATCH|DELETE …/subscribers/{id}           PATCH {"component_ids": [...]};
 *                                                 DELETE -> 200, unsubscribes
 *   POST …/subscribers/unsubscribe                {"subscribers": [ids] | "all"} -> 201
 *
 * The channel follows from the fields given: endpoint + email -> webhook,
 * phone_number (+ phone_country, default "us") -> sms, email -> email.
 * Unsubscribing keeps the entity with unsubscribed_at set (the notifier
 * and audits still see it); such a subscriber is "not found" here.  No
 * confirmation flow exists yet, so no subscriber is ever "unconfirmed".
 * Subscriber writes of a page share one lane.
 */
#include "manage.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LANE "subscribers"

static int email_ok(const char *e) {
  const char *at = strchr(e, '@');
  if (at == NULL || at == e || at[1] == '\0' || strchr(at + 1, '@'))
    return 0;
  for (const char *p = e; *p; p++)
    if ((unsigned char)*p <= ' ' || *p == 127)
      return 0;
  return 1;
}

static int phone_ok(const char *p) {
  int digits = 0;
  for (; *p; p++) {
    if (isdigit((unsigned char)*p))
      digits++;
    else if (!strchr("+-(). ", *p))
      return 0;
  }
  return digits >= 4 && digits <= 20;
}

/* A live subscriber of the page that has not unsubscribed. */
static int subscribed(mg_ctx *c, const char *id) {
  return id[0] && crdt_doc_alive(c->s->doc, c->page, API_T_SUBSCRIBER, id) &&
         api_doc_str(c->s, &c->pool, c->page, API_T_SUBSCRIBER, id, "unsubscribed_at") == NULL;
}

static json_t *subscriber_json(mg_ctx *c, const char *id) {
  api_subscriber_v v;
  if (api_subscriber_get(c->s->doc, &c->pool, c->page, id, &v))
    return NULL;
  return api_json_subscriber(&v);
}

static void subscriber_done(mg_ctx *c) {
  json_t *o = subscriber_json(c, c->new_id);
  if (o == NULL)
    return mg_error(c, 404, "id", "subscriber %s not found (deleted meanwhile)", c->new_id);
  mg_reply(c, c->ok_status, o);
}

static void keep_done(mg_ctx *c) {
  json_t *o = c->keep;
  c->keep = NULL;
  mg_reply(c, c->ok_status, o);
}

/* component_ids: a non-empty list of the page's components.  Returns the
 * JSON text to store via *out (NULL = all components), -1 on error. */
static int component_list(mg_ctx *c, json_t *ids) {
  if (ids == NULL)
    return 0;
  if (json_array_size(ids) == 0)
    return mg_bad(c, 422, "component_ids",
                  "component_ids must list at least one component (leave it out for all)");
  size_t i;
  json_t *e;
  json_array_foreach(ids, i, e) {
    if (!crdt_doc_alive(c->s->doc, c->page, API_T_COMPONENT, json_string_value(e)))
      return mg_bad(c, 404, "component_ids", "component %s not found on page %s",
                    json_string_value(e), c->page);
  }
  return 0;
}

/* ---- create -------------------------------------------------------------------------------- */

static void subscribers_create_run(mg_ctx *c) {
  int err;
  json_t *o = mg_wrapper(c, "subscriber", 1, &err);
  if (err)
    return mg_fail(c);
  const char *email, *endpoint, *phone, *country;
  int skip = 0;
  json_t *ids;
  if (mg_get_str(c, o, "email", 1000, MG_NULL, &email) < 0 ||
      mg_get_str(c, o, "endpoint", 1000, MG_NULL, &endpoint) < 0 ||
      mg_get_str(c, o, "phone_number", 64, MG_NULL, &phone) < 0 ||
      mg_get_str(c, o, "phone_country", 2, MG_NULL, &country) < 0 ||
      mg_get_bool(c, o, "skip_confirmation_notification", &skip) < 0 ||
      mg_get_ids(c, o, "component_ids", &ids) < 0 || component_list(c, ids) < 0)
    return mg_fail(c);
  if (email && email[0] == '\0')
    email = NULL;
  if (endpoint && endpoint[0] == '\0')
    endpoint = NULL;
  if (phone && phone[0] == '\0')
    phone = NULL;
  const char *mode;
  if (endpoint) {
    mode = "webhook";
    if (strncmp(endpoint, "https://", 8) && strncmp(endpoint, "http://", 7))
      return mg_error(c, 422, "endpoint", "endpoint must be an http:// or https:// URL");
    if (strstr(endpoint, "hooks.slack.com"))
      return mg_error(c, 422, "endpoint", "Slack URLs are not accepted as webhook endpoints");
    if (email == NULL)
      return mg_error(c, 422, "email",
                      "email is required with endpoint (it is told when deliveries fail)");
  } else if (phone) {
    mode = "sms";
    if (!phone_ok(phone))
      return mg_error(c, 422, "phone_number", "phone_number must hold 4 to 20 digits");
  } else if (email) {
    mode = "email";
  } else {
    return mg_error(c, 422, "email", "email, phone_number or endpoint is required");
  }
  if (email && !email_ok(email))
    return mg_error(c, 422, "email", "email must be an address like name@example.com");
  char cc[3] = "us";
  if (country) {
    if (strlen(country) != 2 || !isalpha((unsigned char)country[0]) ||
        !isalpha((unsigned char)country[1]))
      return mg_error(c, 422, "phone_country", "phone_country must be a 2-letter country code");
    cc[0] = (char)tolower((unsigned char)country[0]);
    cc[1] = (char)tolower((unsigned char)country[1]);
  }
  api_new_id(c->s, c->new_id);
  char now[40];
  mg_now(c, now);
  const char *page = c->page, *id = c->new_id;
  json_t *ops = api_ops_new();
  api_op_create(ops, page, API_T_SUBSCRIBER, id);
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "mode", mode);
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "email", email);
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "endpoint", endpoint);
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "phone_number", phone);
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "phone_country", phone ? cc : NULL);
  mg_op_set_json(ops, page, API_T_SUBSCRIBER, id, "components", ids);
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "skip_confirmation_notification",
             mg_bool_str(skip));
  api_op_set(ops, page, API_T_SUBSCRIBER, id, "created_at", now);
  c->ok_status = 201;
  mg_write(c, ops, NULL, subscriber_done);
}

MG_HANDLER(mg_subscribers_create) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, subscribers_create_run);
}

/* ---- reads --------------------------------------------------------------------------------- */

MG_HANDLER(mg_subscriber_get) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  json_t *o = subscribed(c, c->id) ? subscriber_json(c, c->id) : NULL;
  if (o == NULL)
    return mg_error(c, 404, "id", "subscriber %s not found", c->id);
  mg_reply(c, 200, o);
}

static int in_set(const char *v, const char *const *set) {
  for (; *set; set++)
    if (strcmp(v, *set) == 0)
      return 1;
  return 0;
}

static int q_match(const api_subscriber_v *x, const char *q) {
  return (x->email && strcasestr(x->email, q)) || (x->phone_number && strcasestr(x->phone_number, q)) ||
         (x->endpoint && strcasestr(x->endpoint, q));
}

MG_HANDLER(mg_subscribers_list) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  static const char *const types[] = {"email", "sms",   "webhook", "slack",
                                      "teams", "integration_partner", NULL};
  static const char *const states[] = {"active", "unconfirmed", "quarantined", "all", NULL};
  static const char *const fields[] = {"primary", "created_at", "quarantined_at", "relevance",
                                       NULL};
  static const char *const dirs[] = {"asc", "desc", NULL};
  const char *q, *type, *state, *sort_field, *dir;
  long limit, page;
  if (mg_query_str(c, "q", &q) < 0 || mg_query_str(c, "type", &type) < 0 ||
      mg_query_str(c, "state", &state) < 0 || mg_query_str(c, "sort_field", &sort_field) < 0 ||
      mg_query_str(c, "sort_direction", &dir) < 0 ||
      mg_query_int(c, "limit", 100, 1, 100, 1, &limit) < 0 ||
      mg_query_int(c, "page", 0, 0, LONG_MAX / 1000, 0, &page) < 0)
    return mg_fail(c);
  if (type && !in_set(type, types))
    return mg_error(c, 422, "type", "type must be one of: email, sms, webhook, slack, teams, "
                                    "integration_partner");
  if (state && !in_set(state, states))
    return mg_error(c, 422, "state", "state must be one of: active, unconfirmed, quarantined, all");
  if (sort_field && !in_set(sort_field, fields))
    return mg_error(c, 422, "sort_field",
                    "sort_field must be one of: primary, created_at, quarantined_at, relevance");
  if (dir && !in_set(dir, dirs))
    return mg_error(c, 422, "sort_direction", "sort_direction must be asc or desc");
  if (state == NULL)
    state = "active";
  api_subscriber_v *v;
  size_t n;
  if (api_subscribers_list(c->s->doc, &c->pool, c->page, &v, &n))
    return mg_error(c, 500, NULL, "out of memory");
  int desc = dir && strcmp(dir, "desc") == 0;
  json_t *a = json_array();
  size_t from = (size_t)page * (size_t)limit, k = 0;
  for (size_t j = 0; a && j < n && json_array_size(a) < (size_t)limit; j++) {
    const api_subscriber_v *x = &v[desc ? n - 1 - j : j];
    if (x->unsubscribed_at)
      continue;
    if (type && (x->mode == NULL || strcmp(type, x->mode)))
      continue;
    if (!strcmp(state, "unconfirmed") || (!strcmp(state, "active") && x->quarantined_at) ||
        (!strcmp(state, "quarantined") && !x->quarantined_at))
      continue;
    if (q && q[0] && !q_match(x, q))
      continue;
    if (k++ < from)
      continue;
    mg_append(&a, api_json_subscriber(x));
  }
  mg_reply(c, 200, a);
}

/* ---- update, delete, unsubscribe -------------------------------------------------------------- */

static void subscriber_update_run(mg_ctx *c) {
  if (!subscribed(c, c->id))
    return mg_error(c, 404, "id", "subscriber %s not found", c->id);
  int err;
  json_t *o = mg_wrapper(c, "subscriber", 0, &err);
  if (err)
    return mg_fail(c);
  json_t *ids;
  if (mg_get_ids(c, o ? o : c->body, "component_ids", &ids) < 0 || component_list(c, ids) < 0)
    return mg_fail(c);
  json_t *ops = api_ops_new();
  /* leaving component_ids out means every component (Statuspage) */
  mg_op_set_json(ops, c->page, API_T_SUBSCRIBER, c->id, "components", ids);
  snprintf(c->new_id, sizeof c->new_id, "%s", c->id);
  c->ok_status = 200;
  mg_write(c, ops, NULL, subscriber_done);
}

MG_HANDLER(mg_subscriber_update) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, subscriber_update_run);
}

static void subscriber_delete_run(mg_ctx *c) {
  if (!subscribed(c, c->id))
    return mg_error(c, 404, "id", "subscriber %s not found", c->id);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  api_op_set(ops, c->page, API_T_SUBSCRIBER, c->id, "unsubscribed_at", now);
  snprintf(c->new_id, sizeof c->new_id, "%s", c->id);
  c->ok_status = 200;
  mg_write(c, ops, NULL, subscriber_done);
}

MG_HANDLER(mg_subscriber_delete) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c)
    mg_lane(c, c->page, LANE, subscriber_delete_run);
}

static void unsubscribe_run(mg_ctx *c) {
  json_t *sel = c->body ? json_object_get(c->body, "subscribers") : NULL;
  const char *type, *state;
  if (mg_get_str(c, c->body, "type", 64, MG_NULL, &type) < 0 ||
      mg_get_str(c, c->body, "state", 64, MG_NULL, &state) < 0)
    return mg_fail(c);
  if (sel == NULL)
    return mg_error(c, 422, "subscribers",
                    "subscribers is required: a list of subscriber ids or \"all\"");
  int all = json_is_string(sel) && strcmp(json_string_value(sel), "all") == 0;
  if (!all) {
    json_t *ids;
    if (mg_get_ids(c, c->body, "subscribers", &ids) < 0)
      return mg_fail(c);
    sel = ids;
    if (json_array_size(sel) == 0)
      return mg_error(c, 422, "subscribers", "subscribers must list at least one id, or be \"all\"");
    size_t i;
    json_t *e;
    json_array_foreach(sel, i, e) {
      if (!subscribed(c, json_string_value(e)))
        return mg_error(c, 404, "subscribers", "subscriber %s not found", json_string_value(e));
    }
  }
  api_subscriber_v *v;
  size_t n;
  if (api_subscribers_list(c->s->doc, &c->pool, c->page, &v, &n))
    return mg_error(c, 500, NULL, "out of memory");
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new(), *out = json_array();
  for (size_t i = 0; i < n; i++) {
    api_subscriber_v *x = &v[i];
    if (x->unsubscribed_at)
      continue;
    if (all) {
      if (type && (x->mode == NULL || strcmp(type, x->mode)))
        continue;
      if (state && ((!strcmp(state, "active") && x->quarantined_at) ||
                    (!strcmp(state, "quarantined") && !x->quarantined_at) ||
                    !strcmp(state, "unconfirmed")))
        continue;
    } else {
      int listed = 0;
      size_t k;
      json_t *e;
      json_array_foreach(sel, k, e) listed |= strcmp(json_string_value(e), x->id) == 0;
      if (!listed)
        continue;
    }
    api_op_set(ops, c->page, API_T_SUBSCRIBER, x->id, "unsubscribed_at", now);
    x->unsubscribed_at = now;
    json_array_append_new(out, api_json_subscriber(x));
  }
  c->keep = out;
  c->ok_status = 201;
  if (json_array_size(ops) == 0) {
    json_decref(ops);
    return keep_done(c);
  }
  mg_write(c, ops, NULL, keep_done);
}

MG_HANDLER(mg_subscribers_unsubscribe) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, unsubscribe_run);
}
