/* api_manage_incidents: incidents, scheduled maintenances and their updates
 * in the management API (reference §2.6).
 *
 *   GET  /v1/pages/{page_id}/incidents        q, limit (<= 100), page
 *   GET  …/incidents/{unresolved,upcoming,scheduled,active_maintenance}
 *                                             page, per_page (<= 100)
 *   POST …/incidents                          {"incident": {...}} -> 201
 *   GET|PATCH|PUT|DELETE …/incidents/{id}     DELETE -> 200 + object
 *   PATCH|PUT …/incidents/{id}/incident_updates/{update_id}
 *
 * Kinds: "realtime" (investigating…resolved), "scheduled" (a maintenance:
 * scheduled…completed, given scheduled_for/until or a maintenance status)
 * and "historical" (backfilled: true).  A create always writes the first
 * incident_update; a PATCH carrying status, body or components writes a new
 * one.  `components` ({id: status}) changes component statuses and is
 * recorded, with the old statuses, in that update's affected_components;
 * `component_ids` lists affected components without changing them.
 * deliver_notifications (default true) adds an outbox row (kind "incident"
 * or "maintenance", payload: api_incident_event) and one component_update
 * row per component whose status changed, in the same transaction.
 *
 * Writes to one incident share the lane "<page>/incident/<id>", so
 * concurrent PATCHes apply one after the other, each to the state the
 * previous one left: both updates are kept and the final status is the
 * last writer's.
 */
#include "manage.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"

#define BODY_MAX 25000
#define METADATA_MAX 25000

static const char *const flag_names[] = {
    "scheduled_remind_prior",
    "scheduled_auto_in_progress",
    "scheduled_auto_completed",
    "auto_transition_to_maintenance_state",
    "auto_transition_to_operational_state",
    "auto_transition_deliver_notifications_at_start",
    "auto_transition_deliver_notifications_at_end",
};
#define NFLAGS (sizeof flag_names / sizeof flag_names[0])
enum { F_REMIND, F_AUTO_IN_PROGRESS, F_AUTO_COMPLETED };

/* The fields of {"incident": {...}} after checking. */
typedef struct inc_in {
  const char *name, *status, *impact_override, *body, *reminder;
  int has_impact_override, has_reminder, has_body;
  json_t *components;    /* {id: status} or NULL (borrowed from the body) */
  json_t *component_ids; /* [id] or NULL */
  int deliver, has_deliver;
  char sched_for[40], sched_until[40];
  uint64_t for_ms, until_ms;
  int has_for, has_until;
  int flags[NFLAGS], has_flag[NFLAGS];
  json_t *metadata; /* object or NULL */
  int has_metadata;
  int backfilled, has_backfilled;
  const char *backfill_date;
} inc_in;

static int is_maint_status(const char *s) { return api_enum_ok(API_ENUM_MAINT_STATUS, s); }

static int reminder_ok(const char *s) {
  size_t n = strlen(s), i = 0;
  if (n == 0)
    return 0;
  if (s[0] != '[') {
    for (; i < n; i++)
      if (s[i] < '0' || s[i] > '9')
        return 0;
    return 1;
  }
  if (s[n - 1] != ']')
    return 0;
  int need_digit = 0;
  for (i = 1; i + 1 < n; i++) {
    char ch = s[i];
    if (ch >= '0' && ch <= '9')
      need_digit = 0;
    else if (ch == ',' && i > 1 && !need_digit)
      need_digit = 1;
    else if (ch != ' ')
      return 0;
  }
  return !need_digit;
}

/* Reads the incident body.  -1 (recorded) on a bad field. */
static int inc_parse(mg_ctx *c, json_t *o, inc_in *in) {
  memset(in, 0, sizeof *in);
  in->deliver = 1;
  if (mg_get_str(c, o, "name", 255, MG_NONEMPTY, &in->name) < 0 ||
      mg_get_str(c, o, "status", 64, MG_NONEMPTY, &in->status) < 0 ||
      (in->has_body = mg_get_str(c, o, "body", BODY_MAX, 0, &in->body)) < 0 ||
      (in->has_impact_override =
           mg_get_enum(c, o, "impact_override", API_ENUM_IMPACT, MG_NULL, &in->impact_override)) <
          0 ||
      (in->has_reminder = mg_get_str(c, o, "reminder_intervals", 1000, MG_NULL, &in->reminder)) <
          0 ||
      mg_get_ids(c, o, "component_ids", &in->component_ids) < 0 ||
      (in->has_deliver = mg_get_bool(c, o, "deliver_notifications", &in->deliver)) < 0 ||
      (in->has_for = mg_get_time(c, o, "scheduled_for", 0, in->sched_for, &in->for_ms)) < 0 ||
      (in->has_until = mg_get_time(c, o, "scheduled_until", 0, in->sched_until, &in->until_ms)) <
          0 ||
      (in->has_backfilled = mg_get_bool(c, o, "backfilled", &in->backfilled)) < 0 ||
      mg_get_str(c, o, "backfill_date", 64, MG_NULL, &in->backfill_date) < 0)
    return -1;
  if (in->reminder && !reminder_ok(in->reminder))
    return mg_bad(c, 422, "reminder_intervals",
                  "reminder_intervals must be null, \"N\" or a list such as \"[3,6,12,24]\"");
  for (size_t i = 0; i < NFLAGS; i++)
    if ((in->has_flag[i] = mg_get_bool(c, o, flag_names[i], &in->flags[i])) < 0)
      return -1;
  int all;
  int r = mg_get_bool(c, o, "scheduled_auto_transition", &all);
  if (r < 0)
    return -1;
  if (r == 1) {
    /* the older flag: both transitions, unless given one by one */
    for (int f = F_AUTO_IN_PROGRESS; f <= F_AUTO_COMPLETED; f++)
      if (!in->has_flag[f]) {
        in->has_flag[f] = 1;
        in->flags[f] = all;
      }
  }
  json_t *comps = o ? json_object_get(o, "components") : NULL;
  if (comps) {
    if (!json_is_object(comps))
      return mg_bad(c, 422, "components",
                    "components must be an object mapping component ids to statuses");
    const char *k;
    json_t *v;
    json_object_foreach(comps, k, v) {
      if (!json_is_string(v))
        return mg_bad(c, 422, "components", "components.%.64s must be a status string", k);
      const char *st = json_string_value(v);
      if (st[0] && !api_enum_ok(API_ENUM_COMPONENT_STATUS, st))
        return mg_bad(c, 422, "components", "components.%.64s must be one of: %s (got \"%.64s\")",
                      k, api_enum_values(API_ENUM_COMPONENT_STATUS), st);
      if (strlen(k) > 64 || !crdt_doc_alive(c->s->doc, c->page, API_T_COMPONENT, k))
        return mg_bad(c, 404, "components", "component %.64s not found", k);
    }
    in->components = comps;
  }
  if (in->component_ids) {
    size_t i;
    json_t *e;
    json_array_foreach(in->component_ids, i, e) {
      if (!crdt_doc_alive(c->s->doc, c->page, API_T_COMPONENT, json_string_value(e)))
        return mg_bad(c, 404, "component_ids", "component %s not found", json_string_value(e));
    }
  }
  json_t *md = o ? json_object_get(o, "metadata") : NULL;
  if (md && !json_is_null(md)) {
    if (!json_is_object(md))
      return mg_bad(c, 422, "metadata", "metadata must be an object of objects");
    const char *k;
    json_t *v;
    json_object_foreach(md, k, v) {
      if (!json_is_object(v))
        return mg_bad(c, 422, "metadata", "metadata.%.64s must be an object", k);
    }
    char *text = json_dumps(md, JSON_COMPACT);
    size_t len = text ? strlen(text) : 0;
    free(text);
    if (len > METADATA_MAX)
      return mg_bad(c, 422, "metadata", "metadata is larger than %d bytes", METADATA_MAX);
  }
  in->metadata = md && !json_is_null(md) ? md : NULL;
  in->has_metadata = md != NULL;
  return 0;
}

/* The affected id list: `base` (may be NULL) plus the components map's keys,
 * without duplicates.  New reference. */
static json_t *affected_ids(json_t *base, json_t *map) {
  json_t *a = json_array();
  size_t i, j;
  json_t *e;
  json_array_foreach(base, i, e) {
    int dup = 0;
    for (j = 0; j < json_array_size(a); j++)
      dup |= json_equal(json_array_get(a, j), e);
    if (!dup)
      json_array_append(a, e);
  }
  const char *k;
  json_t *v;
  json_object_foreach(map, k, v) {
    int dup = 0;
    for (j = 0; j < json_array_size(a); j++)
      dup |= strcmp(json_string_value(json_array_get(a, j)), k) == 0;
    if (!dup)
      json_array_append_new(a, json_string(k));
  }
  return a;
}

json_t *api_incident_event(const char *page, const char *inc_id, const char *upd_id,
                           const char *name, const char *status, const char *kind,
                           const char *body, json_t *component_ids) {
  return json_pack("{s:{s:s,s:s?,s:s,s:s,s:s},s:{s:s,s:s,s:s},s:O?}", "incident", "id", inc_id,
                   "name", name, "status", status, "kind", kind, "page_id", page,
                   "incident_update", "id", upd_id, "status", status, "body", body ? body : "",
                   "component_ids", component_ids);
}

/* The changes to components and the new update, shared by create and
 * PATCH.  ids: the incident's affected list after the write. */
static int write_update(mg_ctx *c, const inc_in *in, const char *inc_id, const char *name,
                        const char *status, const char *kind, json_t *ids, const char *now,
                        json_t *ops, json_t *outbox) {
  api_server *s = c->s;
  json_t *affected = json_array();
  const char *k;
  json_t *v;
  json_object_foreach(in->components, k, v) {
    const char *st = json_string_value(v);
    if (st[0] == '\0') {
      const char *cur = api_doc_str(s, &c->pool, c->page, API_T_COMPONENT, k, "status");
      st = cur ? cur : "operational";
    }
    if (api_component_set_status(s, c->page, k, st, now, ops, affected,
                                 in->deliver ? outbox : NULL))
      goto oom;
  }
  size_t i;
  json_t *e;
  json_array_foreach(in->component_ids, i, e) {
    const char *id = json_string_value(e);
    if (in->components && json_object_get(in->components, id))
      continue;
    const char *cur = api_doc_str(s, &c->pool, c->page, API_T_COMPONENT, id, "status");
    if (api_component_set_status(s, c->page, id, cur ? cur : "operational", now, ops, affected,
                                 NULL))
      goto oom;
  }
  char uid[CRDT_ID_LEN + 1];
  api_new_id(s, uid);
  api_op_create(ops, c->page, API_T_UPDATE, uid);
  api_op_set(ops, c->page, API_T_UPDATE, uid, "incident_id", inc_id);
  api_op_set(ops, c->page, API_T_UPDATE, uid, "status", status);
  api_op_set(ops, c->page, API_T_UPDATE, uid, "body", in->body ? in->body : "");
  api_op_set(ops, c->page, API_T_UPDATE, uid, "display_at", now);
  mg_op_set_json(ops, c->page, API_T_UPDATE, uid, "affected_components",
                 json_array_size(affected) ? affected : NULL);
  api_op_set(ops, c->page, API_T_UPDATE, uid, "deliver_notifications", mg_bool_str(in->deliver));
  api_op_set(ops, c->page, API_T_UPDATE, uid, "created_at", now);
  api_op_set(ops, c->page, API_T_UPDATE, uid, "updated_at", now);
  json_decref(affected);
  affected = NULL;
  if (in->deliver) {
    json_t *row = api_outbox_row(
        uid, c->page, strcmp(kind, "scheduled") == 0 ? "maintenance" : "incident",
        api_incident_event(c->page, inc_id, uid, name, status, kind, in->body, ids));
    if (row == NULL || json_array_append_new(outbox, row))
      goto oom;
  }
  return 0;
oom:
  json_decref(affected);
  return mg_bad(c, 500, NULL, "out of memory");
}

static void set_flags(mg_ctx *c, const inc_in *in, const char *id, json_t *ops, int create) {
  for (size_t i = 0; i < NFLAGS; i++)
    if (create || in->has_flag[i])
      api_op_set(ops, c->page, API_T_INCIDENT, id, flag_names[i], mg_bool_str(in->flags[i]));
}

static json_t *incident_json(mg_ctx *c, const char *id) {
  api_incident_v v;
  if (api_incident_get(c->s->doc, &c->pool, c->page, id, &v))
    return NULL;
  return api_json_incident_v1(&v);
}

static void incident_done(mg_ctx *c) {
  json_t *o = incident_json(c, c->new_id);
  if (o == NULL)
    return mg_error(c, 404, "id", "incident %s not found (deleted meanwhile)", c->new_id);
  mg_reply(c, c->ok_status, o);
}

static void outbox_or_null(json_t **outbox) {
  if (*outbox && json_array_size(*outbox) == 0) {
    json_decref(*outbox);
    *outbox = NULL;
  }
}

/* ---- create --------------------------------------------------------------------------------- */

static void incidents_create_run(mg_ctx *c) {
  api_server *s = c->s;
  int err;
  json_t *o = mg_wrapper(c, "incident", 1, &err);
  if (err)
    return mg_fail(c);
  inc_in in;
  if (inc_parse(c, o, &in))
    return mg_fail(c);
  if (in.name == NULL)
    return mg_error(c, 422, "name", "name is required");
  const char *kind, *status = in.status;
  if (in.has_backfilled && in.backfilled) {
    kind = "historical";
    if (in.components)
      return mg_error(c, 422, "components", "a backfilled incident may not change components");
    if (status && !api_enum_ok(API_ENUM_INCIDENT_STATUS, status))
      return mg_error(c, 422, "status", "status must be one of: %s",
                      api_enum_values(API_ENUM_INCIDENT_STATUS));
    status = "resolved";
  } else if (in.has_for || (status && is_maint_status(status))) {
    kind = "scheduled";
    if (status == NULL)
      status = "scheduled";
    if (!is_maint_status(status))
      return mg_error(c, 422, "status", "a scheduled maintenance's status must be one of: %s",
                      api_enum_values(API_ENUM_MAINT_STATUS));
    if (!in.has_for)
      return mg_error(c, 422, "scheduled_for", "scheduled_for is required for a maintenance");
    if (!in.has_until)
      return mg_error(c, 422, "scheduled_until",
                      "scheduled_until is required for a maintenance");
    if (in.until_ms <= in.for_ms)
      return mg_error(c, 422, "scheduled_until", "scheduled_until must be after scheduled_for");
  } else {
    kind = "realtime";
    if (status == NULL)
      status = "investigating";
    if (!api_enum_ok(API_ENUM_INCIDENT_STATUS, status))
      return mg_error(c, 422, "status", "status must be one of: %s (got \"%.64s\")",
                      api_enum_values(API_ENUM_INCIDENT_STATUS), status);
    if (in.has_until)
      return mg_error(c, 422, "scheduled_until",
                      "scheduled_until needs scheduled_for (a maintenance)");
  }
  const char *id;
  if (mg_get_str(c, o, "id", 32, MG_NONEMPTY, &id) < 0)
    return mg_fail(c);
  if (id) {
    uint32_t cl = 0;
    if (!mg_id_ok(id))
      return mg_error(c, 422, "id", "id must be 1 to 32 characters a-z, 0-9");
    if (crdt_doc_cl(s->doc, c->page, API_T_INCIDENT, id, &cl) == 0 && cl > 0)
      return mg_error(c, 409, "id", "incident %s already exists", id);
    snprintf(c->new_id, sizeof c->new_id, "%s", id);
  } else {
    api_new_id(s, c->new_id);
  }
  char now[40];
  mg_now(c, now);
  const char *nid = c->new_id, *page = c->page;
  json_t *ops = api_ops_new(), *outbox = json_array();
  json_t *ids = affected_ids(in.component_ids, in.components);
  api_op_create(ops, page, API_T_INCIDENT, nid);
  api_op_set(ops, page, API_T_INCIDENT, nid, "name", in.name);
  api_op_set(ops, page, API_T_INCIDENT, nid, "status", status);
  api_op_set(ops, page, API_T_INCIDENT, nid, "kind", kind);
  api_op_set(ops, page, API_T_INCIDENT, nid, "impact",
             strcmp(kind, "scheduled") == 0 ? "maintenance" : "none");
  api_op_set(ops, page, API_T_INCIDENT, nid, "impact_override", in.impact_override);
  const char *url = api_doc_str(s, &c->pool, page, API_T_PAGE, page, "url");
  const char *domain = api_doc_str(s, &c->pool, page, API_T_PAGE, page, "domain");
  char shortlink[1400];
  if (url)
    snprintf(shortlink, sizeof shortlink, "%s/incidents/%s", url, nid);
  else if (domain)
    snprintf(shortlink, sizeof shortlink, "https://%s/incidents/%s", domain, nid);
  else
    snprintf(shortlink, sizeof shortlink, "/pages/%s/incidents/%s", page, nid);
  api_op_set(ops, page, API_T_INCIDENT, nid, "shortlink", shortlink);
  api_op_set(ops, page, API_T_INCIDENT, nid, "created_at", now);
  api_op_set(ops, page, API_T_INCIDENT, nid, "updated_at", now);
  api_op_set(ops, page, API_T_INCIDENT, nid, "started_at", now);
  int monitoring = !strcmp(status, "monitoring") || !strcmp(status, "verifying");
  int resolved =
      !strcmp(status, "resolved") || !strcmp(status, "completed") || !strcmp(status, "postmortem");
  api_op_set(ops, page, API_T_INCIDENT, nid, "monitoring_at", monitoring ? now : NULL);
  api_op_set(ops, page, API_T_INCIDENT, nid, "resolved_at", resolved ? now : NULL);
  api_op_set(ops, page, API_T_INCIDENT, nid, "scheduled_for", in.has_for ? in.sched_for : NULL);
  api_op_set(ops, page, API_T_INCIDENT, nid, "scheduled_until",
             in.has_until ? in.sched_until : NULL);
  set_flags(c, &in, nid, ops, 1);
  api_op_set(ops, page, API_T_INCIDENT, nid, "reminder_intervals", in.reminder);
  mg_op_set_json(ops, page, API_T_INCIDENT, nid, "metadata", in.metadata);
  mg_op_set_json(ops, page, API_T_INCIDENT, nid, "components", ids);
  api_op_set(ops, page, API_T_INCIDENT, nid, "backfilled", mg_bool_str(in.backfilled));
  api_op_set(ops, page, API_T_INCIDENT, nid, "backfill_date", in.backfill_date);
  if (write_update(c, &in, nid, in.name, status, kind, ids, now, ops, outbox)) {
    json_decref(ids);
    json_decref(ops);
    json_decref(outbox);
    return mg_fail(c);
  }
  json_decref(ids);
  outbox_or_null(&outbox);
  c->ok_status = 201;
  mg_write(c, ops, outbox, incident_done);
}

MG_HANDLER(mg_incidents_create) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c == NULL)
    return;
  /* no lane: nothing else can write an incident that does not exist yet
   * (a client-chosen id taken twice fails the second create with 409) */
  incidents_create_run(c);
}

/* ---- update ----------------------------------------------------------------------------------- */

/* The stored fields a PATCH decides from (read one by one: a full view
 * would gather every update of the page). */
typedef struct inc_cur {
  const char *kind, *status, *name, *resolved_at, *scheduled_for, *scheduled_until;
} inc_cur;

static int inc_current(mg_ctx *c, const char *id, inc_cur *x) {
  api_server *s = c->s;
  if (!id[0] || crdt_doc_alive(s->doc, c->page, API_T_INCIDENT, id) != 1)
    return -1;
  x->kind = api_doc_str(s, &c->pool, c->page, API_T_INCIDENT, id, "kind");
  x->status = api_doc_str(s, &c->pool, c->page, API_T_INCIDENT, id, "status");
  x->name = api_doc_str(s, &c->pool, c->page, API_T_INCIDENT, id, "name");
  x->resolved_at = api_doc_str(s, &c->pool, c->page, API_T_INCIDENT, id, "resolved_at");
  x->scheduled_for = api_doc_str(s, &c->pool, c->page, API_T_INCIDENT, id, "scheduled_for");
  x->scheduled_until = api_doc_str(s, &c->pool, c->page, API_T_INCIDENT, id, "scheduled_until");
  if (x->status == NULL)
    x->status = "investigating";
  return 0;
}

static void incident_update_run(mg_ctx *c) {
  api_server *s = c->s;
  const char *page = c->page, *id = c->id;
  inc_cur cur;
  if (inc_current(c, id, &cur))
    return mg_error(c, 404, "id", "incident %s not found", id);
  int err;
  json_t *o = mg_wrapper(c, "incident", 1, &err);
  if (err)
    return mg_fail(c);
  inc_in in;
  if (inc_parse(c, o, &in))
    return mg_fail(c);
  const char *kind = cur.kind ? cur.kind : "realtime";
  int maint = strcmp(kind, "scheduled") == 0;
  if (in.status) {
    if (maint && !is_maint_status(in.status))
      return mg_error(c, 422, "status", "a scheduled maintenance's status must be one of: %s",
                      api_enum_values(API_ENUM_MAINT_STATUS));
    if (!maint && !api_enum_ok(API_ENUM_INCIDENT_STATUS, in.status))
      return mg_error(c, 422, "status", "status must be one of: %s (got \"%.64s\")",
                      api_enum_values(API_ENUM_INCIDENT_STATUS), in.status);
  }
  if (!maint && (in.has_for || in.has_until))
    return mg_error(c, 422, in.has_for ? "scheduled_for" : "scheduled_until",
                    "scheduled_for and scheduled_until apply to scheduled maintenances only");
  if (maint) {
    uint64_t f = in.has_for ? in.for_ms : 0, u = in.has_until ? in.until_ms : 0;
    if (!in.has_for && cur.scheduled_for)
      api_parse_time(cur.scheduled_for, &f);
    if (!in.has_until && cur.scheduled_until)
      api_parse_time(cur.scheduled_until, &u);
    if ((in.has_for || in.has_until) && u <= f)
      return mg_error(c, 422, "scheduled_until", "scheduled_until must be after scheduled_for");
  }
  if (in.has_backfilled)
    return mg_error(c, 422, "backfilled", "backfilled can only be set when creating");
  const char *status = in.status ? in.status : cur.status;
  const char *name = in.name ? in.name : cur.name;
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new(), *outbox = json_array();
  api_op_require(ops, page, API_T_INCIDENT, id);
  if (in.name)
    api_op_set(ops, page, API_T_INCIDENT, id, "name", in.name);
  if (in.status && (cur.status == NULL || strcmp(in.status, cur.status))) {
    api_op_set(ops, page, API_T_INCIDENT, id, "status", in.status);
    int monitoring = !strcmp(status, "monitoring") || !strcmp(status, "verifying");
    int resolved = !strcmp(status, "resolved") || !strcmp(status, "completed") ||
                   !strcmp(status, "postmortem");
    if (monitoring)
      api_op_set(ops, page, API_T_INCIDENT, id, "monitoring_at", now);
    if (resolved && cur.resolved_at == NULL)
      api_op_set(ops, page, API_T_INCIDENT, id, "resolved_at", now);
    if (!resolved && cur.resolved_at)
      api_op_set(ops, page, API_T_INCIDENT, id, "resolved_at", NULL); /* reopened */
  }
  if (in.has_impact_override)
    api_op_set(ops, page, API_T_INCIDENT, id, "impact_override", in.impact_override);
  if (in.has_for)
    api_op_set(ops, page, API_T_INCIDENT, id, "scheduled_for", in.sched_for);
  if (in.has_until)
    api_op_set(ops, page, API_T_INCIDENT, id, "scheduled_until", in.sched_until);
  set_flags(c, &in, id, ops, 0);
  if (in.has_reminder)
    api_op_set(ops, page, API_T_INCIDENT, id, "reminder_intervals", in.reminder);
  if (in.has_metadata)
    mg_op_set_json(ops, page, API_T_INCIDENT, id, "metadata", in.metadata);
  json_t *ids;
  if (in.component_ids) {
    ids = affected_ids(in.component_ids, in.components);
  } else {
    const char *stored = api_doc_str(s, &c->pool, page, API_T_INCIDENT, id, "components");
    json_t *base = stored ? json_loads(stored, 0, NULL) : NULL;
    ids = affected_ids(json_is_array(base) ? base : NULL, in.components);
    json_decref(base);
  }
  if (in.component_ids || in.components)
    mg_op_set_json(ops, page, API_T_INCIDENT, id, "components", ids);
  api_op_set(ops, page, API_T_INCIDENT, id, "updated_at", now);
  if ((in.status || in.has_body || in.components) &&
      write_update(c, &in, id, name, status, kind, ids, now, ops, outbox)) {
    json_decref(ids);
    json_decref(ops);
    json_decref(outbox);
    return mg_fail(c);
  }
  json_decref(ids);
  outbox_or_null(&outbox);
  snprintf(c->new_id, sizeof c->new_id, "%s", id);
  c->ok_status = 200;
  mg_write(c, ops, outbox, incident_done);
}

static void incident_lane(mg_ctx *c, mg_fn run) {
  char what[96];
  snprintf(what, sizeof what, "incident/%s", c->id);
  mg_lane(c, c->page, what, run);
}

MG_HANDLER(mg_incident_update) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    incident_lane(c, incident_update_run);
}

/* ---- delete ----------------------------------------------------------------------------------- */

static void keep_done(mg_ctx *c) {
  json_t *o = c->keep;
  c->keep = NULL;
  mg_reply(c, 200, o);
}

static void incident_delete_run(mg_ctx *c) {
  json_t *o = c->id[0] ? incident_json(c, c->id) : NULL;
  if (o == NULL)
    return mg_error(c, 404, "id", "incident %s not found", c->id);
  c->keep = o;
  json_t *ops = api_ops_new();
  api_op_delete(ops, c->page, API_T_INCIDENT, c->id);
  mg_write(c, ops, NULL, keep_done);
}

MG_HANDLER(mg_incident_delete) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c)
    incident_lane(c, incident_delete_run);
}

/* ---- incident_updates/{update_id} ---------------------------------------------------------------- */

static void update_done(mg_ctx *c) {
  api_incident_v v;
  if (api_incident_get(c->s->doc, &c->pool, c->page, c->id, &v) == 0)
    for (size_t i = 0; i < v.nupdates; i++)
      if (strcmp(v.updates[i].id, c->id2) == 0)
        return mg_reply(c, 200, api_json_incident_update(&v.updates[i]));
  mg_error(c, 404, "update_id", "incident update %s not found (deleted meanwhile)", c->id2);
}

static void update_edit_run(mg_ctx *c) {
  api_server *s = c->s;
  if (!c->id[0] || !crdt_doc_alive(s->doc, c->page, API_T_INCIDENT, c->id))
    return mg_error(c, 404, "id", "incident %s not found", c->id);
  const char *owner =
      c->id2[0] ? api_doc_str(s, &c->pool, c->page, API_T_UPDATE, c->id2, "incident_id") : NULL;
  if (owner == NULL || strcmp(owner, c->id) ||
      !crdt_doc_alive(s->doc, c->page, API_T_UPDATE, c->id2))
    return mg_error(c, 404, "update_id", "incident update %s not found on incident %s", c->id2,
                    c->id);
  int err;
  json_t *o = mg_wrapper(c, "incident_update", 1, &err);
  if (err)
    return mg_fail(c);
  const char *body;
  char display[40];
  uint64_t dms;
  int deliver, wants, rb, rd, rdel;
  if ((rb = mg_get_str(c, o, "body", BODY_MAX, 0, &body)) < 0 ||
      (rd = mg_get_time(c, o, "display_at", 0, display, &dms)) < 0 ||
      (rdel = mg_get_bool(c, o, "deliver_notifications", &deliver)) < 0 ||
      mg_get_bool(c, o, "wants_twitter_update", &wants) < 0)
    return mg_fail(c);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  api_op_require(ops, c->page, API_T_INCIDENT, c->id);
  if (rb)
    api_op_set(ops, c->page, API_T_UPDATE, c->id2, "body", body);
  if (rd)
    api_op_set(ops, c->page, API_T_UPDATE, c->id2, "display_at", display);
  if (rdel)
    api_op_set(ops, c->page, API_T_UPDATE, c->id2, "deliver_notifications", mg_bool_str(deliver));
  api_op_set(ops, c->page, API_T_UPDATE, c->id2, "updated_at", now);
  mg_write(c, ops, NULL, update_done);
}

MG_HANDLER(mg_update_edit) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    incident_lane(c, update_edit_run);
}

/* ---- reads ----------------------------------------------------------------------------------------- */

MG_HANDLER(mg_incident_get) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  json_t *o = c->id[0] ? incident_json(c, c->id) : NULL;
  if (o == NULL)
    return mg_error(c, 404, "id", "incident %s not found", c->id);
  mg_reply(c, 200, o);
}

/* 1 when every whitespace-separated term of q occurs (case-insensitively)
 * in the name or in one of the update bodies. */
static int matches(const api_incident_v *x, const char *q) {
  char term[256];
  const char *p = q;
  while (*p) {
    while (*p == ' ' || *p == '\t')
      p++;
    size_t n = strcspn(p, " \t");
    if (n == 0)
      break;
    if (n >= sizeof term)
      n = sizeof term - 1;
    memcpy(term, p, n);
    term[n] = '\0';
    p += strcspn(p, " \t");
    int hit = x->name && strcasestr(x->name, term);
    for (size_t i = 0; !hit && i < x->nupdates; i++)
      hit = x->updates[i].body && strcasestr(x->updates[i].body, term);
    if (!hit)
      return 0;
  }
  return 1;
}

static void list(mg_ctx *c, api_incident_filter filter, const char *q, long page, long per) {
  api_incident_v *v;
  size_t n;
  if (api_incidents_list(c->s->doc, &c->pool, c->page, filter, 0, &v, &n))
    return mg_error(c, 500, NULL, "out of memory");
  json_t *a = json_array();
  size_t from = (size_t)(page - 1) * (size_t)per, k = 0;
  for (size_t i = 0; a && i < n && json_array_size(a) < (size_t)per; i++) {
    if (q && q[0] && !matches(&v[i], q))
      continue;
    if (k++ < from)
      continue;
    mg_append(&a, api_json_incident_v1(&v[i]));
  }
  mg_reply(c, 200, a);
}

MG_HANDLER(mg_incidents_list) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  const char *q;
  long limit, page;
  if (mg_query_str(c, "q", &q) < 0 || mg_query_int(c, "limit", 100, 1, 100, 1, &limit) < 0 ||
      mg_query_int(c, "page", 1, 1, LONG_MAX / 1000, 0, &page) < 0)
    return mg_fail(c);
  if (q && strlen(q) > 1000)
    return mg_error(c, 422, "q", "q is longer than 1000 characters");
  list(c, API_INC_ALL, q, page, limit);
}

static void filtered(sp_http_req *req, void *app, api_incident_filter f) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  long page, per;
  if (mg_query_int(c, "page", 1, 1, LONG_MAX / 1000, 0, &page) < 0 ||
      mg_query_int(c, "per_page", 100, 1, 100, 1, &per) < 0)
    return mg_fail(c);
  list(c, f, NULL, page, per);
}

MG_HANDLER(mg_incidents_unresolved) { filtered(req, app, API_INC_UNRESOLVED); }
MG_HANDLER(mg_incidents_upcoming) { filtered(req, app, API_INC_MAINT_UPCOMING); }
MG_HANDLER(mg_incidents_scheduled) { filtered(req, app, API_INC_MAINTENANCES); }
MG_HANDLER(mg_incidents_active) { filtered(req, app, API_INC_MAINT_ACTIVE); }
