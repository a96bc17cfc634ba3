/* api_model: typed views of the CRDT entities (api/model.h), the enum
 * validators, the status rollup and incident impact, and the helpers every
 * handler file shares: timestamps in Statuspage's format, API key hashing.
 *
 * Memory: views and their strings are copied into the caller's sp_pool and
 * live as long as it; nothing here keeps a pointer into the document past
 * the call, and nothing is allocated outside the pool except short-lived
 * jansson values (parsing the stored id lists) freed before returning.
 */
#include "internal.h"
#include "model.h"
#include "routes.h"

#include <limits.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sp_alloc.h"

void api_format_time(uint64_t ms, char *out, size_t len) {
  time_t sec = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&sec, &tm);
  snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
}

static int digits(const char **p, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    char c = (*p)[i];
    if (c < '0' || c > '9')
      return -1;
    v = v * 10 + (c - '0');
  }
  *p += n;
  *out = v;
  return 0;
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int api_parse_time(const char *s, uint64_t *ms) {
  const char *p = s;
  int y, mo, d, h = 0, mi = 0, sec = 0, frac = 0;
  if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
    return SP_ERR_PARSE;
  if (mo < 1 || mo > 12 || d < 1 || d > 31)
    return SP_ERR_PARSE;
  int64_t off_min = 0;
  if (*p == 'T' || *p == ' ') {
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi))
      return SP_ERR_PARSE;
    if (*p == ':') {
      p++;
      if (digits(&p, 2, &sec))
        return SP_ERR_PARSE;
      if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9') {
          if (n < 3)
            frac = frac * 10 + (*p - '0');
          n++;
          p++;
        }
        if (n == 0)
          return SP_ERR_PARSE;
        for (; n < 3; n++)
          frac *= 10;
      }
    }
    if (h > 23 || mi > 59 || sec > 60)
      return SP_ERR_PARSE;
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
      if (digits(&p, 2, &oh))
        return SP_ERR_PARSE;
      if (*p == ':')
        p++;
      if (*p && digits(&p, 2, &om))
        return SP_ERR_PARSE;
      if (oh > 23 || om > 59)
        return SP_ERR_PARSE;
      off_min = sign * (oh * 60 + om);
    } else if (*p != '\0') {
      return SP_ERR_PARSE;
    }
  }
  if (*p != '\0')
    return SP_ERR_PARSE;
  int64_t days = days_from_civil(y, mo, d);
  int64_t t = ((days * 24 + h) * 60 + mi - off_min) * 60 + sec;
  if (t < 0)
    return SP_ERR_PARSE;
  *ms = (uint64_t)t * 1000 + (uint64_t)frac;
  return 0;
}

void api_key_hash_hex(const char *key, char out[65]) {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(key, strlen(key), md, &n, EVP_sha256(), NULL);
  static const char hexd[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hexd[md[i] >> 4];
    out[2 * i + 1] = hexd[md[i] & 15];
  }
  out[64] = '\0';
}

/* ---- enums ---- */

static const char *const enum_vals[API_ENUM_COUNT][6] = {
    [API_ENUM_COMPONENT_STATUS] = {"operational", "degraded_performance", "partial_outage",
                                   "major_outage", "under_maintenance", NULL},
    [API_ENUM_INCIDENT_STATUS] = {"investigating", "identified", "monitoring", "resolved",
                                  "postmortem", NULL},
    [API_ENUM_MAINT_STATUS] = {"scheduled", "in_progress", "verifying", "completed", NULL},
    [API_ENUM_IMPACT] = {"none", "minor", "major", "critical", "maintenance", NULL},
    [API_ENUM_SUBSCRIBER_MODE] = {"email", "sms", "webhook", NULL},
    [API_ENUM_INCIDENT_KIND] = {"realtime", "scheduled", "historical", NULL},
};

static const char *const enum_lists[API_ENUM_COUNT] = {
    [API_ENUM_COMPONENT_STATUS] =
        "operational, degraded_performance, partial_outage, major_outage, under_maintenance",
    [API_ENUM_INCIDENT_STATUS] = "investigating, identified, monitoring, resolved, postmortem",
    [API_ENUM_MAINT_STATUS] = "scheduled, in_progress, verifying, completed",
    [API_ENUM_IMPACT] = "none, minor, major, critical, maintenance",
    [API_ENUM_SUBSCRIBER_MODE] = "email, sms, webhook",
    [API_ENUM_INCIDENT_KIND] = "realtime, scheduled, historical",
};

int api_enum_ok(api_enum kind, const char *v) {
  if (v == NULL || (unsigned)kind >= API_ENUM_COUNT)
    return 0;
  for (const char *const *p = enum_vals[kind]; *p; p++)
    if (strcmp(*p, v) == 0)
      return 1;
  return 0;
}

const char *api_enum_values(api_enum kind) {
  return (unsigned)kind < API_ENUM_COUNT ? enum_lists[kind] : "";
}

/* Indexed by severity (see api_status_severity). */
static const char *const sev_names[5] = {"operational", "under_maintenance",
                                         "degraded_performance", "partial_outage",
                                         "major_outage"};

static int sev_of_bytes(const char *v, size_t len) {
  for (int i = 0; i < 5; i++)
    if (strlen(sev_names[i]) == len && memcmp(sev_names[i], v, len) == 0)
      return i;
  return -1;
}

int api_status_severity(const char *status) {
  return status ? sev_of_bytes(status, strlen(status)) : -1;
}

const char *api_status_of_severity(int sev) {
  return sev >= 0 && sev < 5 ? sev_names[sev] : NULL;
}

/* ---- reading fields ---- */

/* One entity being read into a view.  nomem latches the first pool failure
 * so the fill functions can read every field and check once. */
typedef struct rd {
  crdt_doc *doc;
  sp_pool *pool;
  const char *page, *type, *id;
  int nomem;
  /* the entity, looked up at the first read: one hash lookup per entity
   * instead of one per field (renders read a dozen fields of each) */
  const crdt_entity *e;
  int looked_up;
} rd;

static int rd_raw(rd *r, const char *field, const char **v, size_t *len) {
  const uint8_t *val;
  crdt_stamp st;
  if (!r->looked_up) {
    r->e = crdt_doc_entity(r->doc, r->page, r->type, r->id);
    r->looked_up = 1;
  }
  if (crdt_entity_field(r->e, field, &val, len, &st) != 0 || val == NULL)
    return 0;
  *v = (const char *)val;
  return 1;
}

static const char *rd_dup(rd *r, const char *s) {
  char *c = sp_pool_strndup(r->pool, s, strlen(s));
  if (c == NULL)
    r->nomem = 1;
  return c;
}

static const char *rd_str(rd *r, const char *field) {
  const char *v;
  size_t len;
  if (!rd_raw(r, field, &v, &len))
    return NULL;
  char *c = sp_pool_strndup(r->pool, v, len);
  if (c == NULL)
    r->nomem = 1;
  return c;
}

static int rd_bool(rd *r, const char *field) {
  const char *v;
  size_t len;
  return rd_raw(r, field, &v, &len) && len == 4 && memcmp(v, "true", 4) == 0;
}

static int rd_int(rd *r, const char *field) {
  const char *v;
  size_t len;
  char buf[24];
  if (!rd_raw(r, field, &v, &len) || len == 0 || len >= sizeof buf)
    return 0;
  memcpy(buf, v, len);
  buf[len] = '\0';
  char *end;
  long n = strtol(buf, &end, 10);
  if (*end != '\0' || n < INT_MIN || n > INT_MAX)
    return 0;
  return (int)n;
}

static uint64_t ts_ms(const char *ts) {
  uint64_t ms;
  return ts && api_parse_time(ts, &ms) == 0 ? ms : 0;
}

/* The live ids of one type of a page, as a pool array (two passes: count,
 * then copy, so the array is allocated once). */
typedef struct idcol {
  sp_pool *pool;
  const char **ids;
  size_t n, cap;
  int nomem;
} idcol;

static void on_entity(const char *type, const char *id, uint32_t cl, void *arg) {
  idcol *c = arg;
  (void)type;
  if (!(cl & 1u))
    return;
  if (c->ids == NULL) {
    c->n++;
    return;
  }
  if (c->n >= c->cap)
    return;
  char *d = sp_pool_strndup(c->pool, id, strlen(id));
  if (d == NULL) {
    c->nomem = 1;
    return;
  }
  c->ids[c->n++] = d;
}

static int alive_ids(crdt_doc *doc, sp_pool *pool, const char *page, const char *type,
                     const char ***out, size_t *n) {
  idcol c = {pool, NULL, 0, 0, 0};
  *out = NULL;
  *n = 0;
  int rc = crdt_doc_page_entities(doc, page, type, on_entity, &c);
  if (rc == SP_ERR_NOENT)
    return 0;
  if (rc)
    return rc;
  if (c.n == 0)
    return 0;
  c.cap = c.n;
  c.n = 0;
  c.ids = sp_pool_alloc(pool, c.cap * sizeof *c.ids);
  if (c.ids == NULL)
    return SP_ERR_NOMEM;
  rc = crdt_doc_page_entities(doc, page, type, on_entity, &c);
  if (rc)
    return rc;
  if (c.nomem)
    return SP_ERR_NOMEM;
  *out = c.ids;
  *n = c.n;
  return 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* qsort, minus the undefined behaviour of a NULL base for empty arrays */
static void sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
  if (n > 1)
    qsort(base, n, size, cmp);
}

/* ---- pages ---- */

static int fill_page(crdt_doc *doc, sp_pool *pool, const char *id, api_page_v *p) {
  if (crdt_doc_alive(doc, id, API_T_PAGE, id) != 1)
    return SP_ERR_NOENT;
  rd r = {doc, pool, id, API_T_PAGE, id, 0, NULL, 0};
  memset(p, 0, sizeof *p);
  p->id = rd_dup(&r, id);
  p->name = rd_str(&r, "name");
  p->url = rd_str(&r, "url");
  p->time_zone = rd_str(&r, "time_zone");
  p->domain = rd_str(&r, "domain");
  p->subdomain = rd_str(&r, "subdomain");
  p->page_description = rd_str(&r, "page_description");
  p->headline = rd_str(&r, "headline");
  p->support_url = rd_str(&r, "support_url");
  p->created_at = rd_str(&r, "created_at");
  p->updated_at = rd_str(&r, "updated_at");
  p->allow_page_subscribers = rd_bool(&r, "allow_page_subscribers");
  p->allow_incident_subscribers = rd_bool(&r, "allow_incident_subscribers");
  p->allow_email_subscribers = rd_bool(&r, "allow_email_subscribers");
  p->allow_sms_subscribers = rd_bool(&r, "allow_sms_subscribers");
  p->allow_webhook_subscribers = rd_bool(&r, "allow_webhook_subscribers");
  p->allow_rss_atom_feeds = rd_bool(&r, "allow_rss_atom_feeds");
  return r.nomem ? SP_ERR_NOMEM : 0;
}

int api_page_get(crdt_doc *doc, sp_pool *pool, const char *page_id, api_page_v *out) {
  return fill_page(doc, pool, page_id, out);
}

typedef struct pagecol {
  crdt_doc *doc;
  sp_pool *pool;
  const char **ids;
  size_t n, cap;
  int nomem;
} pagecol;

static void on_page(const char *page, void *arg) {
  pagecol *c = arg;
  if (crdt_doc_alive(c->doc, page, API_T_PAGE, page) != 1)
    return;
  if (c->ids == NULL) {
    c->n++;
    return;
  }
  if (c->n >= c->cap)
    return;
  char *d = sp_pool_strndup(c->pool, page, strlen(page));
  if (d == NULL)
    c->nomem = 1;
  else
    c->ids[c->n++] = d;
}

int api_pages_list(crdt_doc *doc, sp_pool *pool, api_page_v **out, size_t *n) {
  pagecol c = {doc, pool, NULL, 0, 0, 0};
  *out = NULL;
  *n = 0;
  int rc = crdt_doc_pages(doc, on_page, &c);
  if (rc)
    return rc;
  if (c.n == 0)
    return 0;
  c.cap = c.n;
  c.n = 0;
  c.ids = sp_pool_alloc(pool, c.cap * sizeof *c.ids);
  if (c.ids == NULL)
    return SP_ERR_NOMEM;
  if ((rc = crdt_doc_pages(doc, on_page, &c)))
    return rc;
  if (c.nomem)
    return SP_ERR_NOMEM;
  api_page_v *v = sp_pool_alloc(pool, c.n * sizeof *v);
  if (v == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < c.n; i++)
    if ((rc = fill_page(doc, pool, c.ids[i], &v[i])))
      return rc;
  *out = v;
  *n = c.n;
  return 0;
}

/* ---- components ---- */

typedef struct citem {
  api_component_v v;
  int parent; /* index of the parent group in the items, or -1 */
  uint64_t created_ms;
} citem;

static void fill_component(rd *r, api_component_v *c, int group) {
  memset(c, 0, sizeof *c);
  c->id = rd_dup(r, r->id);
  c->page_id = rd_dup(r, r->page);
  c->group = group;
  c->name = rd_str(r, "name");
  c->description = rd_str(r, "description");
  c->stored_position = rd_int(r, "position");
  c->created_at = rd_str(r, "created_at");
  c->updated_at = rd_str(r, "updated_at");
  if (group) {
    c->status = sev_names[0];
    return;
  }
  const char *v;
  size_t len;
  int sev = rd_raw(r, "status", &v, &len) ? sev_of_bytes(v, len) : -1;
  /* a NULL or unknown stored status (the v1 API accepts "") reads as
   * operational, so every consumer sees one of the five values */
  c->status = sev_names[sev < 0 ? 0 : sev];
  c->showcase = rd_bool(r, "showcase");
  c->only_show_if_degraded = rd_bool(r, "only_show_if_degraded");
  c->start_date = rd_str(r, "start_date");
  c->automation_email = rd_str(r, "automation_email");
  c->group_id = rd_str(r, "group_id");
}

static int cmp_citem(const void *a, const void *b) {
  const citem *x = *(const citem *const *)a, *y = *(const citem *const *)b;
  int px = x->v.stored_position > 0 ? x->v.stored_position : INT_MAX;
  int py = y->v.stored_position > 0 ? y->v.stored_position : INT_MAX;
  if (px != py)
    return px < py ? -1 : 1;
  if (x->created_ms != y->created_ms)
    return x->created_ms < y->created_ms ? -1 : 1;
  return strcmp(x->v.id, y->v.id);
}

int api_components_list(crdt_doc *doc, sp_pool *pool, const char *page, api_component_v **out,
                        size_t *n) {
  const char **cids, **gids;
  size_t nc, ng;
  int rc;
  *out = NULL;
  *n = 0;
  if ((rc = alive_ids(doc, pool, page, API_T_COMPONENT, &cids, &nc)) ||
      (rc = alive_ids(doc, pool, page, API_T_GROUP, &gids, &ng)))
    return rc;
  size_t total = nc + ng;
  if (total == 0)
    return 0;
  /* group ids sorted for bsearch; the items keep this order for groups */
  sort(gids, ng, sizeof *gids, cmp_str);
  citem *items = sp_pool_alloc(pool, total * sizeof *items);
  citem **ord = sp_pool_alloc(pool, total * sizeof *ord);
  api_component_v *res = sp_pool_alloc(pool, total * sizeof *res);
  if (items == NULL || ord == NULL || res == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < total; i++) {
    int group = i < ng;
    rd r = {doc, pool, page, group ? API_T_GROUP : API_T_COMPONENT, group ? gids[i] : cids[i - ng],
            0, NULL, 0};
    fill_component(&r, &items[i].v, group);
    if (r.nomem)
      return SP_ERR_NOMEM;
    items[i].created_ms = ts_ms(items[i].v.created_at);
    items[i].parent = -1;
    if (!group && items[i].v.group_id) {
      const char **g =
          ng ? bsearch(&items[i].v.group_id, gids, ng, sizeof *gids, cmp_str) : NULL;
      if (g)
        items[i].parent = (int)(g - gids);
      else
        items[i].v.group_id = NULL; /* its group is gone: shown at the top level */
    }
    ord[i] = &items[i];
  }
  sort(ord, total, sizeof *ord, cmp_citem);
  size_t k = 0;
  int top = 0;
  for (size_t i = 0; i < total; i++) {
    if (ord[i]->parent != -1)
      continue;
    size_t at = k++;
    res[at] = ord[i]->v;
    res[at].position = ++top;
    if (!ord[i]->v.group)
      continue;
    int gi = (int)(ord[i] - items);
    size_t nch = 0;
    for (size_t j = 0; j < total; j++)
      nch += ord[j]->parent == gi;
    if (nch == 0)
      continue;
    const char **ch = sp_pool_alloc(pool, nch * sizeof *ch);
    if (ch == NULL)
      return SP_ERR_NOMEM;
    int worst = 0, pos = 0;
    for (size_t j = 0; j < total; j++) {
      if (ord[j]->parent != gi)
        continue;
      res[k] = ord[j]->v;
      res[k].position = ++pos;
      ch[pos - 1] = res[k].id;
      int sev = api_status_severity(res[k].status);
      if (sev > worst)
        worst = sev;
      k++;
    }
    res[at].children = ch;
    res[at].nchildren = nch;
    res[at].status = sev_names[worst];
  }
  *out = res;
  *n = k;
  return 0;
}

int api_component_get(crdt_doc *doc, sp_pool *pool, const char *page, const char *id, int group,
                      api_component_v *out) {
  if (crdt_doc_alive(doc, page, group ? API_T_GROUP : API_T_COMPONENT, id) != 1)
    return SP_ERR_NOENT;
  api_component_v *all;
  size_t n;
  int rc = api_components_list(doc, pool, page, &all, &n);
  if (rc)
    return rc;
  for (size_t i = 0; i < n; i++) {
    if (all[i].group == !!group && strcmp(all[i].id, id) == 0) {
      *out = all[i];
      return 0;
    }
  }
  return SP_ERR_NOENT;
}

/* ---- incidents ---- */

static void fill_incident(rd *r, api_incident_v *x) {
  memset(x, 0, sizeof *x);
  x->id = rd_dup(r, r->id);
  x->page_id = rd_dup(r, r->page);
  x->name = rd_str(r, "name");
  x->status = rd_str(r, "status");
  x->impact = rd_str(r, "impact");
  x->impact_override = rd_str(r, "impact_override");
  x->kind = rd_str(r, "kind");
  x->shortlink = rd_str(r, "shortlink");
  x->created_at = rd_str(r, "created_at");
  x->updated_at = rd_str(r, "updated_at");
  x->started_at = rd_str(r, "started_at");
  x->monitoring_at = rd_str(r, "monitoring_at");
  x->resolved_at = rd_str(r, "resolved_at");
  x->scheduled_for = rd_str(r, "scheduled_for");
  x->scheduled_until = rd_str(r, "scheduled_until");
  x->scheduled_reminded_at = rd_str(r, "scheduled_reminded_at");
  x->reminder_intervals = rd_str(r, "reminder_intervals");
  x->metadata = rd_str(r, "metadata");
  x->backfill_date = rd_str(r, "backfill_date");
  x->postmortem_body = rd_str(r, "postmortem_body");
  x->postmortem_published_at = rd_str(r, "postmortem_published_at");
  x->scheduled_remind_prior = rd_bool(r, "scheduled_remind_prior");
  x->scheduled_auto_in_progress = rd_bool(r, "scheduled_auto_in_progress");
  x->scheduled_auto_completed = rd_bool(r, "scheduled_auto_completed");
  x->auto_transition_to_maintenance_state = rd_bool(r, "auto_transition_to_maintenance_state");
  x->auto_transition_to_operational_state = rd_bool(r, "auto_transition_to_operational_state");
  x->auto_transition_deliver_notifications_at_start =
      rd_bool(r, "auto_transition_deliver_notifications_at_start");
  x->auto_transition_deliver_notifications_at_end =
      rd_bool(r, "auto_transition_deliver_notifications_at_end");
  x->backfilled = rd_bool(r, "backfilled");
  x->maintenance = x->kind != NULL && strcmp(x->kind, "scheduled") == 0;
  x->created_ms = ts_ms(x->created_at);
}

static void fill_update(rd *r, api_update_v *u) {
  memset(u, 0, sizeof *u);
  u->id = rd_dup(r, r->id);
  u->incident_id = rd_str(r, "incident_id");
  u->status = rd_str(r, "status");
  u->body = rd_str(r, "body");
  u->display_at = rd_str(r, "display_at");
  u->created_at = rd_str(r, "created_at");
  u->updated_at = rd_str(r, "updated_at");
  u->affected_components = rd_str(r, "affected_components");
  u->custom_tweet = rd_str(r, "custom_tweet");
  u->tweet_id = rd_str(r, "tweet_id");
  u->deliver_notifications = rd_bool(r, "deliver_notifications");
  u->created_ms = ts_ms(u->created_at);
  u->display_ms = u->display_at ? ts_ms(u->display_at) : u->created_ms;
}

static int status_in(const char *s, const char *const *set) {
  if (s == NULL)
    return 0;
  for (; *set; set++)
    if (strcmp(s, *set) == 0)
      return 1;
  return 0;
}

static int filter_ok(const api_incident_v *x, api_incident_filter f) {
  static const char *const open_inc[] = {"investigating", "identified", "monitoring", NULL};
  static const char *const upcoming[] = {"scheduled", NULL};
  static const char *const active[] = {"in_progress", "verifying", NULL};
  static const char *const open_m[] = {"scheduled", "in_progress", "verifying", NULL};
  switch (f) {
  case API_INC_ALL:
    return 1;
  case API_INC_INCIDENTS:
    return !x->maintenance;
  case API_INC_UNRESOLVED:
    return !x->maintenance && status_in(x->status, open_inc);
  case API_INC_MAINTENANCES:
    return x->maintenance;
  case API_INC_MAINT_UPCOMING:
    return x->maintenance && status_in(x->status, upcoming);
  case API_INC_MAINT_ACTIVE:
    return x->maintenance && status_in(x->status, active);
  case API_INC_MAINT_OPEN:
    return x->maintenance && status_in(x->status, open_m);
  }
  return 0;
}

static int cmp_incident(const void *a, const void *b) {
  const api_incident_v *x = a, *y = b;
  if (x->created_ms != y->created_ms)
    return x->created_ms > y->created_ms ? -1 : 1;
  return -strcmp(x->id, y->id);
}

static int cmp_update(const void *a, const void *b) {
  const api_update_v *x = a, *y = b;
  if (x->display_ms != y->display_ms)
    return x->display_ms > y->display_ms ? -1 : 1;
  if (x->created_ms != y->created_ms)
    return x->created_ms > y->created_ms ? -1 : 1;
  return -strcmp(x->id, y->id);
}

static int cmp_incident_ptr_id(const void *a, const void *b) {
  const api_incident_v *x = *(api_incident_v *const *)a, *y = *(api_incident_v *const *)b;
  return strcmp(x->id, y->id);
}

static int cmp_key_incident(const void *key, const void *elt) {
  return strcmp(key, (*(api_incident_v *const *)elt)->id);
}

/* Attaches every update of the listed incidents (one pass over the page's
 * updates to count, one to fill). */
static int attach_updates(crdt_doc *doc, sp_pool *pool, const char *page, api_incident_v *inc,
                          size_t n) {
  /* Fast path: statusd-api's document indexes updates by incident_id, so
   * only the updates of the listed incidents are read (a page's history of
   * updates only grows).  Documents without the index take the scan below. */
  if (n == 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    idcol c = {pool, NULL, 0, 0, 0};
    const uint8_t *key = (const uint8_t *)inc[i].id;
    int rc = crdt_doc_index_find(doc, page, API_T_UPDATE, "incident_id", key, strlen(inc[i].id),
                                 on_entity, &c);
    if (rc == SP_ERR_INVAL)
      goto scan; /* not indexed (checked on the first incident) */
    if (rc)
      return rc;
    if (c.n == 0)
      continue;
    c.cap = c.n;
    c.n = 0;
    c.ids = sp_pool_alloc(pool, c.cap * sizeof *c.ids);
    inc[i].updates = sp_pool_alloc(pool, c.cap * sizeof *inc[i].updates);
    if (c.ids == NULL || inc[i].updates == NULL)
      return SP_ERR_NOMEM;
    crdt_doc_index_find(doc, page, API_T_UPDATE, "incident_id", key, strlen(inc[i].id), on_entity,
                        &c);
    if (c.nomem)
      return SP_ERR_NOMEM;
    inc[i].nupdates = 0;
    for (size_t k = 0; k < c.n; k++) {
      rd r = {doc, pool, page, API_T_UPDATE, c.ids[k], 0, NULL, 0};
      fill_update(&r, &inc[i].updates[inc[i].nupdates++]);
      if (r.nomem)
        return SP_ERR_NOMEM;
    }
    sort(inc[i].updates, inc[i].nupdates, sizeof *inc[i].updates, cmp_update);
  }
  return 0;
scan:;
  const char **uids;
  size_t nu;
  int rc = alive_ids(doc, pool, page, API_T_UPDATE, &uids, &nu);
  if (rc || nu == 0)
    return rc;
  api_incident_v **byid = sp_pool_alloc(pool, n * sizeof *byid);
  int *target = sp_pool_alloc(pool, nu * sizeof *target);
  if (byid == NULL || target == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < n; i++)
    byid[i] = &inc[i];
  sort(byid, n, sizeof *byid, cmp_incident_ptr_id);
  for (size_t i = 0; i < nu; i++) {
    rd r = {doc, pool, page, API_T_UPDATE, uids[i], 0, NULL, 0};
    const char *v;
    size_t len;
    char key[CRDT_MAX_NAME + 1];
    target[i] = -1;
    if (!rd_raw(&r, "incident_id", &v, &len) || len >= sizeof key)
      continue;
    memcpy(key, v, len);
    key[len] = '\0';
    api_incident_v **hit = bsearch(key, byid, n, sizeof *byid, cmp_key_incident);
    if (hit == NULL)
      continue;
    target[i] = (int)(*hit - inc);
    (*hit)->nupdates++;
  }
  for (size_t i = 0; i < n; i++) {
    if (inc[i].nupdates == 0)
      continue;
    inc[i].updates = sp_pool_alloc(pool, inc[i].nupdates * sizeof *inc[i].updates);
    if (inc[i].updates == NULL)
      return SP_ERR_NOMEM;
    inc[i].nupdates = 0;
  }
  for (size_t i = 0; i < nu; i++) {
    if (target[i] < 0)
      continue;
    api_incident_v *x = &inc[target[i]];
    rd r = {doc, pool, page, API_T_UPDATE, uids[i], 0, NULL, 0};
    fill_update(&r, &x->updates[x->nupdates++]);
    if (r.nomem)
      return SP_ERR_NOMEM;
  }
  for (size_t i = 0; i < n; i++)
    sort(inc[i].updates, inc[i].nupdates, sizeof *inc[i].updates, cmp_update);
  return 0;
}

/* Resolves every incident's stored `components` id list against the
 * page's current components. */
static int attach_components(crdt_doc *doc, sp_pool *pool, const char *page, api_incident_v *inc,
                             size_t n) {
  api_component_v *all = NULL;
  size_t nall = 0;
  int loaded = 0;
  for (size_t i = 0; i < n; i++) {
    rd r = {doc, pool, page, API_T_INCIDENT, inc[i].id, 0, NULL, 0};
    const char *v;
    size_t len;
    if (!rd_raw(&r, "components", &v, &len))
      continue;
    json_t *ids = json_loadb(v, len, 0, NULL);
    if (!json_is_array(ids) || json_array_size(ids) == 0) {
      json_decref(ids); /* malformed lists are treated as empty */
      continue;
    }
    if (!loaded) {
      int rc = api_components_list(doc, pool, page, &all, &nall);
      if (rc) {
        json_decref(ids);
        return rc;
      }
      loaded = 1;
    }
    size_t cap = json_array_size(ids);
    inc[i].components = sp_pool_alloc(pool, cap * sizeof *inc[i].components);
    if (inc[i].components == NULL) {
      json_decref(ids);
      return SP_ERR_NOMEM;
    }
    size_t k;
    json_t *idv;
    json_array_foreach(ids, k, idv) {
      const char *cid = json_string_value(idv);
      if (cid == NULL)
        continue;
      for (size_t j = 0; j < nall; j++) {
        if (!all[j].group && strcmp(all[j].id, cid) == 0) {
          int dup = 0;
          for (size_t d = 0; d < inc[i].ncomponents; d++)
            dup |= strcmp(inc[i].components[d].id, cid) == 0;
          if (!dup)
            inc[i].components[inc[i].ncomponents++] = all[j];
          break;
        }
      }
    }
    json_decref(ids);
  }
  return 0;
}

/* What filtering and ordering need, read for every incident of the page
 * (the full view is read only for those some list includes). */
static void fill_incident_light(rd *r, api_incident_v *x) {
  memset(x, 0, sizeof *x);
  x->id = rd_dup(r, r->id);
  x->kind = rd_str(r, "kind");
  x->status = rd_str(r, "status");
  x->created_at = rd_str(r, "created_at");
  x->maintenance = x->kind != NULL && strcmp(x->kind, "scheduled") == 0;
  x->created_ms = ts_ms(x->created_at);
}

int api_incidents_lists(crdt_doc *doc, sp_pool *pool, const char *page, api_incident_list *lists,
                        size_t nlists, api_incident_v **all, size_t *nall) {
  const char **ids;
  size_t nids;
  *all = NULL;
  *nall = 0;
  for (size_t l = 0; l < nlists; l++) {
    lists[l].idx = NULL;
    lists[l].n = 0;
  }
  int rc = alive_ids(doc, pool, page, API_T_INCIDENT, &ids, &nids);
  if (rc || nids == 0)
    return rc;
  api_incident_v *light = sp_pool_alloc(pool, nids * sizeof *light);
  size_t *slot = sp_pool_alloc(pool, nids * sizeof *slot); /* light -> all, or SIZE_MAX */
  if (light == NULL || slot == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < nids; i++) {
    rd r = {doc, pool, page, API_T_INCIDENT, ids[i], 0, NULL, 0};
    fill_incident_light(&r, &light[i]);
    if (r.nomem)
      return SP_ERR_NOMEM;
    slot[i] = SIZE_MAX;
  }
  sort(light, nids, sizeof *light, cmp_incident);
  /* each list: indices into `light` for now */
  size_t picked = 0;
  for (size_t l = 0; l < nlists; l++) {
    size_t cnt = 0;
    for (size_t i = 0; i < nids && (!lists[l].limit || cnt < lists[l].limit); i++)
      cnt += filter_ok(&light[i], lists[l].filter);
    if (cnt == 0)
      continue;
    if ((lists[l].idx = sp_pool_alloc(pool, cnt * sizeof *lists[l].idx)) == NULL)
      return SP_ERR_NOMEM;
    for (size_t i = 0; i < nids && lists[l].n < cnt; i++) {
      if (!filter_ok(&light[i], lists[l].filter))
        continue;
      lists[l].idx[lists[l].n++] = i;
      if (slot[i] == SIZE_MAX)
        slot[i] = picked++;
    }
  }
  if (picked == 0)
    return 0;
  /* the union, still newest first (slots were handed out in list order,
   * so renumber them in `light` order) */
  api_incident_v *inc = sp_pool_alloc(pool, picked * sizeof *inc);
  if (inc == NULL)
    return SP_ERR_NOMEM;
  size_t k = 0;
  for (size_t i = 0; i < nids; i++) {
    if (slot[i] == SIZE_MAX)
      continue;
    slot[i] = k;
    rd r = {doc, pool, page, API_T_INCIDENT, light[i].id, 0, NULL, 0};
    fill_incident(&r, &inc[k++]);
    if (r.nomem)
      return SP_ERR_NOMEM;
  }
  for (size_t l = 0; l < nlists; l++)
    for (size_t i = 0; i < lists[l].n; i++)
      lists[l].idx[i] = slot[lists[l].idx[i]];
  if ((rc = attach_updates(doc, pool, page, inc, picked)) ||
      (rc = attach_components(doc, pool, page, inc, picked)))
    return rc;
  *all = inc;
  *nall = picked;
  return 0;
}

int api_incidents_list(crdt_doc *doc, sp_pool *pool, const char *page, api_incident_filter filter,
                       size_t limit, api_incident_v **out, size_t *n) {
  /* with one list the union is the list, in its order */
  api_incident_list one = {filter, limit, NULL, 0};
  return api_incidents_lists(doc, pool, page, &one, 1, out, n);
}

int api_incident_get(crdt_doc *doc, sp_pool *pool, const char *page, const char *id,
                     api_incident_v *out) {
  if (crdt_doc_alive(doc, page, API_T_INCIDENT, id) != 1)
    return SP_ERR_NOENT;
  rd r = {doc, pool, page, API_T_INCIDENT, id, 0, NULL, 0};
  fill_incident(&r, out);
  if (r.nomem)
    return SP_ERR_NOMEM;
  int rc = attach_updates(doc, pool, page, out, 1);
  return rc ? rc : attach_components(doc, pool, page, out, 1);
}

/* ---- subscribers ---- */

static void fill_subscriber(rd *r, api_subscriber_v *x) {
  memset(x, 0, sizeof *x);
  x->id = rd_dup(r, r->id);
  x->page_id = rd_dup(r, r->page);
  x->mode = rd_str(r, "mode");
  x->email = rd_str(r, "email");
  x->endpoint = rd_str(r, "endpoint");
  x->phone_number = rd_str(r, "phone_number");
  x->phone_country = rd_str(r, "phone_country");
  x->components = rd_str(r, "components");
  x->incident_id = rd_str(r, "incident_id");
  x->quarantined_at = rd_str(r, "quarantined_at");
  x->purge_at = rd_str(r, "purge_at");
  x->unsubscribed_at = rd_str(r, "unsubscribed_at");
  x->created_at = rd_str(r, "created_at");
  x->skip_confirmation_notification = rd_bool(r, "skip_confirmation_notification");
}

static int cmp_subscriber(const void *a, const void *b) {
  const api_subscriber_v *x = a, *y = b;
  uint64_t tx = ts_ms(x->created_at), ty = ts_ms(y->created_at);
  if (tx != ty)
    return tx < ty ? -1 : 1;
  return strcmp(x->id, y->id);
}

int api_subscribers_list(crdt_doc *doc, sp_pool *pool, const char *page, api_subscriber_v **out,
                         size_t *n) {
  const char **ids;
  size_t nids;
  *out = NULL;
  *n = 0;
  int rc = alive_ids(doc, pool, page, API_T_SUBSCRIBER, &ids, &nids);
  if (rc || nids == 0)
    return rc;
  api_subscriber_v *v = sp_pool_alloc(pool, nids * sizeof *v);
  if (v == NULL)
    return SP_ERR_NOMEM;
  for (size_t i = 0; i < nids; i++) {
    rd r = {doc, pool, page, API_T_SUBSCRIBER, ids[i], 0, NULL, 0};
    fill_subscriber(&r, &v[i]);
    if (r.nomem)
      return SP_ERR_NOMEM;
  }
  sort(v, nids, sizeof *v, cmp_subscriber);
  *out = v;
  *n = nids;
  return 0;
}

int api_subscriber_get(crdt_doc *doc, sp_pool *pool, const char *page, const char *id,
                       api_subscriber_v *out) {
  if (crdt_doc_alive(doc, page, API_T_SUBSCRIBER, id) != 1)
    return SP_ERR_NOENT;
  rd r = {doc, pool, page, API_T_SUBSCRIBER, id, 0, NULL, 0};
  fill_subscriber(&r, out);
  return r.nomem ? SP_ERR_NOMEM : 0;
}

/* ---- rollup and impact ---- */

/* Reference §1.6: n components, w the worst severity, all = every one has
 * status w. */
static api_rollup rollup_core(size_t n, int w, int all) {
  static const api_rollup none = {"none", "All Systems Operational"};
  if (n == 0)
    return none;
  switch (w) {
  case 4:
    return all ? (api_rollup){"critical", "Major System Outage"}
               : (api_rollup){"major", "Partial System Outage"};
  case 3:
    return all ? (api_rollup){"major", "Partial System Outage"}
               : (api_rollup){"minor", "Minor Service Outage"};
  case 2:
    /* one component: the documented single-component text */
    return all && n >= 2 ? (api_rollup){"minor", "Degraded System Service"}
                         : (api_rollup){"minor", "Partially Degraded Service"};
  case 1:
    return (api_rollup){"maintenance", "Service Under Maintenance"};
  default:
    return none;
  }
}

api_rollup api_rollup_statuses(const char *const *statuses, size_t n) {
  int w = 0, all = 1;
  for (size_t i = 0; i < n; i++) {
    int s = api_status_severity(statuses[i]);
    if (s > w)
      w = s;
  }
  for (size_t i = 0; i < n; i++) {
    int s = api_status_severity(statuses[i]);
    all &= (s < 0 ? 0 : s) == w;
  }
  return rollup_core(n, w, all);
}

api_rollup api_rollup_components(const api_component_v *c, size_t n) {
  int w = 0, all = 1;
  size_t cnt = 0;
  for (size_t i = 0; i < n; i++) {
    int s = c[i].group ? -1 : api_status_severity(c[i].status);
    if (!c[i].group && s > w)
      w = s;
  }
  for (size_t i = 0; i < n; i++) {
    if (c[i].group)
      continue;
    int s = api_status_severity(c[i].status);
    all &= (s < 0 ? 0 : s) == w;
    cnt++;
  }
  return rollup_core(cnt, w, all);
}

typedef struct sevscan {
  crdt_doc *doc;
  const char *page;
  size_t n;
  int w, pass, all;
} sevscan;

static void on_sev(const char *type, const char *id, uint32_t cl, void *arg) {
  sevscan *sc = arg;
  const uint8_t *v;
  size_t len;
  crdt_stamp st;
  if (!(cl & 1u))
    return;
  int s = 0;
  if (crdt_doc_field(sc->doc, sc->page, type, id, "status", &v, &len, &st) == 0 && v)
    s = sev_of_bytes((const char *)v, len);
  if (s < 0)
    s = 0;
  if (sc->pass == 0) {
    sc->n++;
    if (s > sc->w)
      sc->w = s;
  } else {
    sc->all &= s == sc->w;
  }
}

int api_page_rollup(crdt_doc *doc, const char *page, api_rollup *out) {
  sevscan sc = {doc, page, 0, 0, 0, 1};
  int rc = crdt_doc_page_entities(doc, page, API_T_COMPONENT, on_sev, &sc);
  if (rc == 0) {
    sc.pass = 1;
    rc = crdt_doc_page_entities(doc, page, API_T_COMPONENT, on_sev, &sc);
  }
  if (rc && rc != SP_ERR_NOENT)
    return rc;
  *out = rollup_core(sc.n, sc.w, sc.all);
  return 0;
}

static const char *const impact_names[4] = {"none", "minor", "major", "critical"};

static int impact_rank(const char *impact) {
  for (int i = 0; i < 4; i++)
    if (impact && strcmp(impact, impact_names[i]) == 0)
      return i;
  return 0;
}

/* severity 4 major_outage -> critical, 3 -> major, 2 -> minor, else none */
static int impact_rank_of_sev(int sev) { return sev >= 2 ? sev - 1 : 0; }

const char *api_impact_of_status(const char *status) {
  return impact_names[impact_rank_of_sev(api_status_severity(status))];
}

const char *api_incident_impact(const api_incident_v *inc) {
  if (api_enum_ok(API_ENUM_IMPACT, inc->impact_override))
    return inc->impact_override;
  if (inc->maintenance)
    return "maintenance";
  int best = impact_rank(inc->impact);
  for (size_t i = 0; i < inc->nupdates && best < 3; i++) {
    const char *ac = inc->updates[i].affected_components;
    if (ac == NULL)
      continue;
    json_t *arr = json_loads(ac, 0, NULL);
    size_t k;
    json_t *item;
    json_array_foreach(arr, k, item) {
      int r = impact_rank_of_sev(
          api_status_severity(json_string_value(json_object_get(item, "new_status"))));
      if (r > best)
        best = r;
    }
    json_decref(arr);
  }
  return impact_names[best];
}
