/* api_manage_components: components and component groups of the
 * management API (reference §2.4, §2.5).
 *
 *   GET|POST /v1/pages/{page_id}/components            page/per_page (<= 100)
 *   GET|PATCH|PUT|DELETE …/components/{id}              DELETE -> 204
 *   GET|POST /v1/pages/{page_id}/component-groups
 *   GET|PATCH|PUT|DELETE …/component-groups/{id}        DELETE -> 200 + object
 *
 * Membership: a component's `group_id` is the truth (model.h); the group's
 * `components` list and every sibling `position` are rewritten in the same
 * transaction by the membership plan below, which simulates the page's
 * groups in memory, applies the request's moves, and emits the intents.  A
 * group may not be empty: the move that takes out its last child deletes
 * it (Statuspage does the same).  All writes of a page's components and
 * groups share one lane, so each plan starts from the previous write's
 * result.
 */
#include "manage.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"

#define LANE "components"

/* ---- the membership plan -------------------------------------------------------------- */

typedef struct m_item {
  const char *id, *created_at;
  const char *group; /* parent group id (components) or NULL */
  int is_group;
  int pos;           /* stored position */
  int moved;         /* group_id/position to write */
  int gone;          /* deleted by this request */
  int touched;       /* groups: children list to rewrite */
  int fresh;         /* created by this request */
} m_item;

typedef struct memb {
  mg_ctx *c;
  m_item *v;
  size_t n, cap;
} memb;

static m_item *m_find(memb *m, const char *id, int is_group) {
  for (size_t i = 0; i < m->n; i++)
    if (m->v[i].is_group == is_group && strcmp(m->v[i].id, id) == 0)
      return &m->v[i];
  return NULL;
}

static m_item *m_push(memb *m) {
  if (m->n == m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 16;
    m_item *nv = sp_pool_alloc(&m->c->pool, ncap * sizeof *nv);
    if (nv == NULL)
      return NULL;
    if (m->n)
      memcpy(nv, m->v, m->n * sizeof *nv);
    m->v = nv;
    m->cap = ncap;
  }
  m_item *it = &m->v[m->n++];
  memset(it, 0, sizeof *it);
  return it;
}

/* 0, or -1 (500 recorded). */
static int m_load(memb *m, mg_ctx *c) {
  memset(m, 0, sizeof *m);
  m->c = c;
  api_component_v *all;
  size_t n;
  if (api_components_list(c->s->doc, &c->pool, c->page, &all, &n))
    return mg_bad(c, 500, NULL, "out of memory");
  for (size_t i = 0; i < n; i++) {
    m_item *it = m_push(m);
    if (it == NULL)
      return mg_bad(c, 500, NULL, "out of memory");
    it->id = all[i].id;
    it->created_at = all[i].created_at;
    it->is_group = all[i].group;
    it->group = all[i].group ? NULL : all[i].group_id;
    it->pos = all[i].stored_position;
  }
  return 0;
}

static int m_next_pos(memb *m, const char *group) {
  int max = 0;
  for (size_t i = 0; i < m->n; i++) {
    m_item *it = &m->v[i];
    if (it->gone || (it->is_group && group))
      continue;
    int sibling = group ? it->group && strcmp(it->group, group) == 0 : it->is_group || !it->group;
    if (sibling && it->pos > max)
      max = it->pos;
  }
  return max + 1;
}

static void m_touch(memb *m, const char *group) {
  if (group == NULL)
    return;
  m_item *g = m_find(m, group, 1);
  if (g)
    g->touched = 1;
}

/* Moves component `it` into `group` (NULL: the top level) at `pos` (<= 0:
 * after its new siblings). */
static void m_move(memb *m, m_item *it, const char *group, int pos) {
  m_touch(m, it->group);
  it->group = group;
  it->pos = pos > 0 ? pos : m_next_pos(m, group);
  it->moved = 1;
  m_touch(m, group);
}

static int cmp_children(const void *a, const void *b) {
  const m_item *x = *(const m_item *const *)a, *y = *(const m_item *const *)b;
  int px = x->pos > 0 ? x->pos : INT_MAX, py = y->pos > 0 ? y->pos : INT_MAX;
  if (px != py)
    return px < py ? -1 : 1;
  int t = strcmp(x->created_at ? x->created_at : "", y->created_at ? y->created_at : "");
  return t ? t : strcmp(x->id, y->id);
}

/* Emits the intents of the plan (after any create of the request). */
static int m_ops(memb *m, json_t *ops, const char *now) {
  mg_ctx *c = m->c;
  const char *page = c->page;
  for (size_t i = 0; i < m->n; i++) {
    m_item *it = &m->v[i];
    if (it->is_group || it->gone || !it->moved)
      continue;
    char pos[16];
    snprintf(pos, sizeof pos, "%d", it->pos);
    api_op_set(ops, page, API_T_COMPONENT, it->id, "group_id", it->group);
    api_op_set(ops, page, API_T_COMPONENT, it->id, "position", pos);
    if (!it->fresh)
      api_op_set(ops, page, API_T_COMPONENT, it->id, "updated_at", now);
  }
  m_item **kids = sp_pool_alloc(&c->pool, (m->n ? m->n : 1) * sizeof *kids);
  if (kids == NULL)
    return mg_bad(c, 500, NULL, "out of memory");
  for (size_t i = 0; i < m->n; i++) {
    m_item *g = &m->v[i];
    if (!g->is_group || g->gone || !g->touched)
      continue;
    size_t nk = 0;
    for (size_t j = 0; j < m->n; j++)
      if (!m->v[j].is_group && !m->v[j].gone && m->v[j].group && !strcmp(m->v[j].group, g->id))
        kids[nk++] = &m->v[j];
    if (nk == 0) {
      /* a group may not be empty: its last child left */
      if (!g->fresh)
        api_op_delete(ops, page, API_T_GROUP, g->id);
      g->gone = 1;
      continue;
    }
    qsort(kids, nk, sizeof *kids, cmp_children);
    json_t *a = json_array();
    for (size_t j = 0; a && j < nk; j++)
      json_array_append_new(a, json_string(kids[j]->id));
    mg_op_set_json(ops, page, API_T_GROUP, g->id, "components", a);
    json_decref(a);
    if (!g->fresh)
      api_op_set(ops, page, API_T_GROUP, g->id, "updated_at", now);
  }
  return 0;
}

/* ---- shared bits ---------------------------------------------------------------------------- */

/* page / per_page query parameters: -1 (422 recorded) when bad. */
static int paging(mg_ctx *c, long *page, long *per_page) {
  if (mg_query_int(c, "page", 1, 1, LONG_MAX / 1000, 0, page) < 0 ||
      mg_query_int(c, "per_page", 100, 1, 100, 1, per_page) < 0)
    return -1;
  return 0;
}

static int date_ok(const char *d) {
  uint64_t ms;
  return strlen(d) == 10 && api_parse_time(d, &ms) == 0;
}

static json_t *component_json(mg_ctx *c, const char *id, int group) {
  api_component_v v;
  if (api_component_get(c->s->doc, &c->pool, c->page, id, group, &v))
    return NULL;
  return group ? api_json_group_v1(&v) : api_json_component_v1(&v);
}

static void component_done(mg_ctx *c) {
  json_t *o = component_json(c, c->new_id, 0);
  if (o == NULL)
    return mg_error(c, 404, "id", "component %s not found (deleted meanwhile)", c->new_id);
  mg_reply(c, c->ok_status, o);
}

static void group_done(mg_ctx *c) {
  json_t *o = component_json(c, c->new_id, 1);
  if (o == NULL)
    return mg_error(c, 404, "id", "component group %s not found (deleted meanwhile)",
                    c->new_id);
  mg_reply(c, c->ok_status, o);
}

static void keep_done(mg_ctx *c) {
  if (c->ok_status == 204)
    return mg_reply_empty(c, 204);
  json_t *o = c->keep;
  c->keep = NULL;
  mg_reply(c, c->ok_status, o);
}

/* ---- components ------------------------------------------------------------------------------- */

MG_HANDLER(mg_components_list) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  long page, per;
  if (paging(c, &page, &per))
    return mg_fail(c);
  api_component_v *all;
  size_t n;
  if (api_components_list(c->s->doc, &c->pool, c->page, &all, &n))
    return mg_error(c, 500, NULL, "out of memory");
  json_t *a = json_array();
  size_t from = (size_t)(page - 1) * (size_t)per;
  for (size_t i = from; a && i < n && i < from + (size_t)per; i++) {
    mg_append(&a, api_json_component_v1(&all[i]));
  }
  mg_reply(c, 200, a);
}

MG_HANDLER(mg_component_get) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  json_t *o = c->id[0] ? component_json(c, c->id, 0) : NULL;
  if (o == NULL)
    return mg_error(c, 404, "id", "component %s not found", c->id);
  mg_reply(c, 200, o);
}

/* Reads and checks {"component": {...}}; writes the plain fields into ops.
 * Returns 0 or -1 (recorded).  *status_out: the new status or NULL;
 * *group_set: 1 when group_id was given, with *group (NULL = none). */
static int component_fields(mg_ctx *c, json_t *o, const char *id, int create, json_t *ops,
                            const char **status_out, int *group_set, const char **group) {
  const char *name, *desc, *status, *gid, *start;
  int showcase = 1, osid = 0;
  int r_show, r_osid;
  if (mg_get_str(c, o, "name", 255, create ? MG_REQ : MG_NONEMPTY, &name) < 0 ||
      mg_get_str(c, o, "description", 1000, MG_NULL, &desc) < 0 ||
      mg_get_str(c, o, "status", 64, 0, &status) < 0 ||
      mg_get_str(c, o, "group_id", 64, MG_NULL, &gid) < 0 ||
      mg_get_str(c, o, "start_date", 10, MG_NULL, &start) < 0 ||
      (r_show = mg_get_bool(c, o, "showcase", &showcase)) < 0 ||
      (r_osid = mg_get_bool(c, o, "only_show_if_degraded", &osid)) < 0)
    return -1;
  /* the v1 API accepts "" for status: no change (operational on create) */
  if (status && status[0] == '\0')
    status = create ? "operational" : NULL;
  if (status && !api_enum_ok(API_ENUM_COMPONENT_STATUS, status))
    return mg_bad(c, 422, "status", "status must be one of: %s (got \"%.64s\")",
                  api_enum_values(API_ENUM_COMPONENT_STATUS), status);
  if (start && !date_ok(start))
    return mg_bad(c, 422, "start_date", "start_date must be a date YYYY-MM-DD");
  *group_set = o && json_object_get(o, "group_id") != NULL;
  if (gid && (strcmp(gid, "null") == 0 || gid[0] == '\0'))
    gid = NULL; /* Statuspage: the string "null" takes a component out of its group */
  if (gid && !crdt_doc_alive(c->s->doc, c->page, API_T_GROUP, gid))
    return mg_bad(c, 404, "group_id", "component group %s not found", gid);
  *group = gid;
  *status_out = status;
  const char *page = c->page;
  if (create || name)
    api_op_set(ops, page, API_T_COMPONENT, id, "name", name);
  if (create || (o && json_object_get(o, "description")))
    api_op_set(ops, page, API_T_COMPONENT, id, "description", desc);
  if (create)
    api_op_set(ops, page, API_T_COMPONENT, id, "status", status ? status : "operational");
  if (create || (o && json_object_get(o, "start_date")))
    api_op_set(ops, page, API_T_COMPONENT, id, "start_date", start);
  if (create || r_show)
    api_op_set(ops, page, API_T_COMPONENT, id, "showcase", mg_bool_str(showcase));
  if (create || r_osid)
    api_op_set(ops, page, API_T_COMPONENT, id, "only_show_if_degraded", mg_bool_str(osid));
  return 0;
}

static void components_create_run(mg_ctx *c) {
  int err;
  json_t *o = mg_wrapper(c, "component", 1, &err);
  if (err)
    return mg_fail(c);
  const char *id;
  if (mg_get_str(c, o, "id", 32, MG_NONEMPTY, &id) < 0)
    return mg_fail(c);
  if (id) {
    uint32_t cl = 0;
    if (!mg_id_ok(id))
      return mg_error(c, 422, "id", "id must be 1 to 32 characters a-z, 0-9");
    if (crdt_doc_cl(c->s->doc, c->page, API_T_COMPONENT, id, &cl) == 0 && cl > 0)
      return mg_error(c, 409, "id", "component %s already exists", id);
    snprintf(c->new_id, sizeof c->new_id, "%s", id);
  } else {
    api_new_id(c->s, c->new_id);
  }
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  api_op_create(ops, c->page, API_T_COMPONENT, c->new_id);
  const char *status, *group;
  int group_set;
  memb m;
  if (component_fields(c, o, c->new_id, 1, ops, &status, &group_set, &group) ||
      m_load(&m, c))
    goto fail;
  m_item *it = m_push(&m);
  if (it == NULL) {
    mg_bad(c, 500, NULL, "out of memory");
    goto fail;
  }
  it->id = c->new_id;
  it->created_at = now;
  it->fresh = 1;
  m_move(&m, it, group, 0);
  if (m_ops(&m, ops, now))
    goto fail;
  api_op_set(ops, c->page, API_T_COMPONENT, c->new_id, "created_at", now);
  api_op_set(ops, c->page, API_T_COMPONENT, c->new_id, "updated_at", now);
  c->ok_status = 201;
  return mg_write(c, ops, NULL, component_done);
fail:
  json_decref(ops);
  mg_fail(c);
}

MG_HANDLER(mg_components_create) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, components_create_run);
}

static void component_update_run(mg_ctx *c) {
  if (!c->id[0] || !crdt_doc_alive(c->s->doc, c->page, API_T_COMPONENT, c->id))
    return mg_error(c, 404, "id", "component %s not found", c->id);
  int err;
  json_t *o = mg_wrapper(c, "component", 1, &err);
  if (err)
    return mg_fail(c);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new(), *outbox = json_array();
  const char *status, *group;
  int group_set;
  memb m;
  if (component_fields(c, o, c->id, 0, ops, &status, &group_set, &group))
    goto fail;
  if (group_set) {
    if (m_load(&m, c))
      goto fail;
    m_item *it = m_find(&m, c->id, 0);
    if (it && !((it->group == NULL && group == NULL) ||
                (it->group && group && strcmp(it->group, group) == 0))) {
      m_move(&m, it, group, 0);
      if (m_ops(&m, ops, now))
        goto fail;
    }
  }
  if (status && api_component_set_status(c->s, c->page, c->id, status, now, ops, NULL, outbox)) {
    mg_bad(c, 500, NULL, "out of memory");
    goto fail;
  }
  api_op_set(ops, c->page, API_T_COMPONENT, c->id, "updated_at", now);
  snprintf(c->new_id, sizeof c->new_id, "%s", c->id);
  c->ok_status = 200;
  if (json_array_size(outbox) == 0) {
    json_decref(outbox);
    outbox = NULL;
  }
  return mg_write(c, ops, outbox, component_done);
fail:
  json_decref(ops);
  json_decref(outbox);
  mg_fail(c);
}

MG_HANDLER(mg_component_update) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, component_update_run);
}

static void component_delete_run(mg_ctx *c) {
  if (!c->id[0] || !crdt_doc_alive(c->s->doc, c->page, API_T_COMPONENT, c->id))
    return mg_error(c, 404, "id", "component %s not found", c->id);
  char now[40];
  mg_now(c, now);
  memb m;
  if (m_load(&m, c))
    return mg_fail(c);
  json_t *ops = api_ops_new();
  api_op_delete(ops, c->page, API_T_COMPONENT, c->id);
  m_item *it = m_find(&m, c->id, 0);
  if (it) {
    it->gone = 1;
    m_touch(&m, it->group);
  }
  if (m_ops(&m, ops, now)) {
    json_decref(ops);
    return mg_fail(c);
  }
  c->ok_status = 204;
  mg_write(c, ops, NULL, keep_done);
}

MG_HANDLER(mg_component_delete) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c)
    mg_lane(c, c->page, LANE, component_delete_run);
}

/* ---- component groups -------------------------------------------------------------------------- */

MG_HANDLER(mg_groups_list) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  long page, per;
  if (paging(c, &page, &per))
    return mg_fail(c);
  api_component_v *all;
  size_t n;
  if (api_components_list(c->s->doc, &c->pool, c->page, &all, &n))
    return mg_error(c, 500, NULL, "out of memory");
  json_t *a = json_array();
  size_t from = (size_t)(page - 1) * (size_t)per, k = 0;
  for (size_t i = 0; a && i < n; i++) {
    if (!all[i].group)
      continue;
    if (k++ < from || json_array_size(a) >= (size_t)per)
      continue;
    mg_append(&a, api_json_group_v1(&all[i]));
  }
  mg_reply(c, 200, a);
}

MG_HANDLER(mg_group_get) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c == NULL)
    return;
  json_t *o = c->id[0] ? component_json(c, c->id, 1) : NULL;
  if (o == NULL)
    return mg_error(c, 404, "id", "component group %s not found", c->id);
  mg_reply(c, 200, o);
}

/* The group body: {"component_group": {name, components, description?},
 * "description"?}.  *ids: the checked component list or NULL (absent). */
static int group_fields(mg_ctx *c, int create, const char **name, const char **desc,
                        int *desc_set, json_t **ids) {
  int err;
  json_t *o = mg_wrapper(c, "component_group", 1, &err);
  if (err)
    return -1;
  *desc = NULL;
  if (mg_get_str(c, o, "name", 255, create ? MG_REQ : MG_NONEMPTY, name) < 0 ||
      mg_get_ids(c, o, "components", ids) < 0)
    return -1;
  /* description: at the top level (the spec) or inside (real clients) */
  int r = mg_get_str(c, o, "description", 1000, MG_NULL, desc);
  if (r < 0)
    return -1;
  if (r == 0 && (r = mg_get_str(c, c->body, "description", 1000, MG_NULL, desc)) < 0)
    return -1;
  *desc_set = r;
  if (*ids == NULL && create)
    return mg_bad(c, 422, "components", "components is required (a list of component ids)");
  if (*ids && json_array_size(*ids) == 0)
    return mg_bad(c, 422, "components", "a component group may not be empty");
  size_t i, j;
  json_t *e;
  json_array_foreach(*ids, i, e) {
    const char *id = json_string_value(e);
    if (!crdt_doc_alive(c->s->doc, c->page, API_T_COMPONENT, id))
      return mg_bad(c, 404, "components", "component %s not found", id);
    for (j = 0; j < i; j++)
      if (strcmp(json_string_value(json_array_get(*ids, j)), id) == 0)
        return mg_bad(c, 422, "components", "component %s is listed twice", id);
  }
  return 0;
}

/* Makes `ids` (in order) the children of group g. */
static int group_members(memb *m, m_item *g, json_t *ids) {
  for (size_t i = 0; i < m->n; i++) {
    m_item *it = &m->v[i];
    if (it->is_group || it->gone || !it->group || strcmp(it->group, g->id))
      continue;
    int keep = 0;
    size_t k;
    json_t *e;
    json_array_foreach(ids, k, e) keep |= strcmp(json_string_value(e), it->id) == 0;
    if (!keep)
      m_move(m, it, NULL, 0);
  }
  size_t k;
  json_t *e;
  json_array_foreach(ids, k, e) {
    m_item *it = m_find(m, json_string_value(e), 0);
    if (it == NULL)
      return mg_bad(m->c, 404, "components", "component %s not found", json_string_value(e));
    m_move(m, it, g->id, (int)k + 1);
  }
  g->touched = 1;
  return 0;
}

static void groups_create_run(mg_ctx *c) {
  const char *name, *desc;
  int desc_set;
  json_t *ids;
  if (group_fields(c, 1, &name, &desc, &desc_set, &ids))
    return mg_fail(c);
  api_new_id(c->s, c->new_id);
  char now[40], pos[16];
  mg_now(c, now);
  memb m;
  if (m_load(&m, c))
    return mg_fail(c);
  json_t *ops = api_ops_new();
  m_item *g = m_push(&m);
  if (g == NULL) {
    json_decref(ops);
    return mg_error(c, 500, NULL, "out of memory");
  }
  g->id = c->new_id;
  g->created_at = now;
  g->is_group = 1;
  g->fresh = 1;
  g->pos = m_next_pos(&m, NULL);
  snprintf(pos, sizeof pos, "%d", g->pos);
  api_op_create(ops, c->page, API_T_GROUP, c->new_id);
  api_op_set(ops, c->page, API_T_GROUP, c->new_id, "name", name);
  api_op_set(ops, c->page, API_T_GROUP, c->new_id, "description", desc);
  api_op_set(ops, c->page, API_T_GROUP, c->new_id, "position", pos);
  api_op_set(ops, c->page, API_T_GROUP, c->new_id, "created_at", now);
  api_op_set(ops, c->page, API_T_GROUP, c->new_id, "updated_at", now);
  if (group_members(&m, g, ids) || m_ops(&m, ops, now)) {
    json_decref(ops);
    return mg_fail(c);
  }
  c->ok_status = 201;
  mg_write(c, ops, NULL, group_done);
}

MG_HANDLER(mg_groups_create) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, groups_create_run);
}

static void group_update_run(mg_ctx *c) {
  if (!c->id[0] || !crdt_doc_alive(c->s->doc, c->page, API_T_GROUP, c->id))
    return mg_error(c, 404, "id", "component group %s not found", c->id);
  const char *name, *desc;
  int desc_set;
  json_t *ids;
  if (group_fields(c, 0, &name, &desc, &desc_set, &ids))
    return mg_fail(c);
  char now[40];
  mg_now(c, now);
  json_t *ops = api_ops_new();
  if (name)
    api_op_set(ops, c->page, API_T_GROUP, c->id, "name", name);
  if (desc_set)
    api_op_set(ops, c->page, API_T_GROUP, c->id, "description", desc);
  api_op_set(ops, c->page, API_T_GROUP, c->id, "updated_at", now);
  if (ids) {
    memb m;
    m_item *g;
    if (m_load(&m, c) || (g = m_find(&m, c->id, 1)) == NULL || group_members(&m, g, ids) ||
        m_ops(&m, ops, now)) {
      json_decref(ops);
      if (c->err_status == 0)
        mg_bad(c, 404, "id", "component group %s not found", c->id);
      return mg_fail(c);
    }
  }
  snprintf(c->new_id, sizeof c->new_id, "%s", c->id);
  c->ok_status = 200;
  mg_write(c, ops, NULL, group_done);
}

MG_HANDLER(mg_group_update) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE | MG_BODY);
  if (c)
    mg_lane(c, c->page, LANE, group_update_run);
}

static void group_delete_run(mg_ctx *c) {
  json_t *o = c->id[0] ? component_json(c, c->id, 1) : NULL;
  if (o == NULL)
    return mg_error(c, 404, "id", "component group %s not found", c->id);
  c->keep = o;
  char now[40];
  mg_now(c, now);
  memb m;
  if (m_load(&m, c))
    return mg_fail(c);
  m_item *g = m_find(&m, c->id, 1);
  json_t *ops = api_ops_new();
  if (g) {
    g->gone = 1;
    /* its children move to the top level, after what is there */
    for (size_t i = 0; i < m.n; i++)
      if (!m.v[i].is_group && m.v[i].group && strcmp(m.v[i].group, c->id) == 0)
        m_move(&m, &m.v[i], NULL, 0);
  }
  if (m_ops(&m, ops, now)) {
    json_decref(ops);
    return mg_fail(c);
  }
  api_op_delete(ops, c->page, API_T_GROUP, c->id);
  c->ok_status = 200;
  mg_write(c, ops, NULL, keep_done);
}

MG_HANDLER(mg_group_delete) {
  mg_ctx *c = mg_begin(req, app, MG_PAGE);
  if (c)
    mg_lane(c, c->page, LANE, group_delete_run);
}
