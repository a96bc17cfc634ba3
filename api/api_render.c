/* api_render: the pre-rendered public documents of every page (render.h):
 * the eight Statuspage v2 JSON documents (reference §1.1 to §1.6) and the
 * HTML status page, each with a weak ETag computed from its bytes.
 *
 * State: s->render (struct api_render, owned here) holds one page_docs per
 * live page and two open-addressing hash tables over them, by page id and
 * by custom domain, rebuilt only when the set of pages or a domain changes.
 * A page_docs owns its id and domain strings and one reference to each of
 * its documents.  Documents are refcounted (api_doc): a reader takes a
 * reference with api_render_get, so re-rendering can replace a document
 * while a response still holds the old one.
 *
 * Rendering runs when the cache says a page changed (api_render_page) and
 * never on the read path.  Views come from api/model.h into a pool that
 * lives for one render; each shared object (page, components, status, each
 * incident) is built once with jansson (insertion order = the reference's
 * key order), serialised compact as Statuspage does, and the documents are
 * assembled from those texts.  Nothing
 * rendered depends on the current time, so a page's documents, and their
 * ETags, change exactly when its data does.
 */
#include "render.h"
#include "routes.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "model.h"
#include "sp_alloc.h"
#include "sp_buf.h"
#include "sp_log.h"

#define DOC_MAX ((size_t)256 << 20) /* one rendered document */
#define POOL_MAX ((size_t)1 << 30)  /* views of one render */
#define HISTORY_CAP 50              /* incidents.json, scheduled-maintenances.json */

typedef struct page_docs {
  char *id;
  char *domain; /* lowercase custom domain, or NULL */
  api_doc *docs[API_DOC_COUNT];
} page_docs;

struct api_render {
  page_docs **pages; /* unordered */
  size_t n, cap;
  page_docs **by_id, **by_domain; /* nslots each, NULL = empty */
  size_t nslots;                  /* power of two >= 2n */
  int tables_stale; /* a rebuild failed: the tables may miss pages */
};

/* ---- documents ---- */

void api_doc_unref(api_doc *d) {
  if (d && --d->refs == 0)
    sp_free(d);
}

/* A document holding a copy of body[0..len) and its ETag (one reference). */
static api_doc *doc_new(const char *body, size_t len) {
  api_doc *d = sp_malloc(sizeof *d + len + 1);
  if (d == NULL)
    return NULL;
  d->refs = 1;
  d->len = len;
  memcpy(d->body, body, len);
  d->body[len] = '\0';
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_Digest(body, len, md, &mdlen, EVP_sha256(), NULL);
  static const char hexd[] = "0123456789abcdef";
  char *p = d->etag;
  memcpy(p, "W/\"", 3);
  p += 3;
  for (int i = 0; i < 16; i++) { /* 128 bits of the digest are plenty */
    *p++ = hexd[md[i] >> 4];
    *p++ = hexd[md[i] & 15];
  }
  *p++ = '"';
  *p = '\0';
  return d;
}

/* ---- hash tables ---- */

static uint64_t hash_lower(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) {
    h ^= (unsigned char)tolower((unsigned char)*s);
    h *= 1099511628211ull;
  }
  return h;
}

static int rebuild_tables(struct api_render *r) {
  size_t want = 16;
  while (want < r->n * 2)
    want *= 2;
  page_docs **ids = sp_calloc(want, sizeof *ids);
  page_docs **doms = sp_calloc(want, sizeof *doms);
  if (ids == NULL || doms == NULL) {
    sp_free(ids);
    sp_free(doms);
    return SP_ERR_NOMEM;
  }
  for (size_t i = 0; i < r->n; i++) {
    page_docs *pd = r->pages[i];
    size_t k = hash_lower(pd->id) & (want - 1);
    while (ids[k])
      k = (k + 1) & (want - 1);
    ids[k] = pd;
    if (pd->domain == NULL)
      continue;
    k = hash_lower(pd->domain) & (want - 1);
    while (doms[k]) {
      if (strcmp(doms[k]->domain, pd->domain) == 0)
        break; /* a duplicate domain (concurrent writes): the first page keeps it */
      k = (k + 1) & (want - 1);
    }
    if (doms[k] == NULL)
      doms[k] = pd;
  }
  sp_free(r->by_id);
  sp_free(r->by_domain);
  r->by_id = ids;
  r->by_domain = doms;
  r->nslots = want;
  r->tables_stale = 0;
  return 0;
}

/* Page ids are case-sensitive: the hash folds case only so one function
 * serves both tables. */
static page_docs *find_page(const struct api_render *r, const char *id) {
  if (r == NULL || r->nslots == 0)
    return NULL;
  size_t k = hash_lower(id) & (r->nslots - 1);
  for (page_docs *pd; (pd = r->by_id[k]); k = (k + 1) & (r->nslots - 1))
    if (strcmp(pd->id, id) == 0)
      return pd;
  return NULL;
}

static void page_docs_free(page_docs *pd) {
  for (int i = 0; i < API_DOC_COUNT; i++)
    api_doc_unref(pd->docs[i]);
  sp_free(pd->id);
  sp_free(pd->domain);
  sp_free(pd);
}

static struct api_render *render_state(api_server *s) {
  if (s->render == NULL)
    s->render = sp_calloc(1, sizeof *s->render);
  return s->render;
}

/* ---- v2 JSON shapes ---- */

static int put(json_t *o, const char *k, json_t *v) { return json_object_set_new(o, k, v) != 0; }

static json_t *fail(json_t *o) {
  json_decref(o);
  return NULL;
}

/* §1.2 */
static json_t *v2_page(const api_page_v *p, const char *url, const char *updated_at) {
  json_t *o = json_object();
  int bad = o == NULL;
  bad |= put(o, "id", api_json_str(p->id));
  bad |= put(o, "name", api_json_str(p->name ? p->name : ""));
  bad |= put(o, "url", api_json_str(url));
  bad |= put(o, "time_zone", api_json_str(p->time_zone ? p->time_zone : "Etc/UTC"));
  bad |= put(o, "updated_at", api_json_str(updated_at));
  return bad ? fail(o) : o;
}

/* §1.3; `components` only on group rows, and only when listing components
 * (an incident's affected components never carry it). */
static json_t *v2_component(const api_component_v *c, int with_children) {
  json_t *o = json_object();
  int bad = o == NULL;
  bad |= put(o, "id", api_json_str(c->id));
  bad |= put(o, "name", api_json_str(c->name ? c->name : ""));
  bad |= put(o, "status", api_json_str(c->status));
  bad |= put(o, "created_at", api_json_str(c->created_at));
  bad |= put(o, "updated_at", api_json_str(c->updated_at ? c->updated_at : c->created_at));
  bad |= put(o, "position", json_integer(c->position));
  bad |= put(o, "description", api_json_str(c->description));
  bad |= put(o, "showcase", json_boolean(c->showcase));
  bad |= put(o, "start_date", api_json_str(c->group ? NULL : c->start_date));
  bad |= put(o, "group_id", api_json_str(c->group_id));
  bad |= put(o, "page_id", api_json_str(c->page_id));
  bad |= put(o, "group", json_boolean(c->group));
  bad |= put(o, "only_show_if_degraded", json_boolean(c->only_show_if_degraded));
  if (c->group && with_children) {
    json_t *ids = json_array();
    bad |= ids == NULL;
    for (size_t i = 0; ids && i < c->nchildren; i++)
      bad |= json_array_append_new(ids, api_json_str(c->children[i])) != 0;
    bad |= put(o, "components", ids);
  }
  return bad ? fail(o) : o;
}

/* §1.5 */
static json_t *v2_update(const api_update_v *u) {
  json_t *o = json_object();
  int bad = o == NULL;
  bad |= put(o, "id", api_json_str(u->id));
  bad |= put(o, "status", api_json_str(u->status));
  bad |= put(o, "body", api_json_str(u->body ? u->body : ""));
  bad |= put(o, "incident_id", api_json_str(u->incident_id));
  bad |= put(o, "created_at", api_json_str(u->created_at));
  bad |= put(o, "updated_at", api_json_str(u->updated_at ? u->updated_at : u->created_at));
  bad |= put(o, "display_at", api_json_str(u->display_at ? u->display_at : u->created_at));
  json_t *ac = api_json_parsed(u->affected_components, json_null());
  if (ac && !json_is_array(ac)) { /* only a list (or null) is a valid value */
    json_decref(ac);
    ac = json_null();
  }
  bad |= put(o, "affected_components", ac);
  bad |= put(o, "deliver_notifications", json_boolean(u->deliver_notifications));
  bad |= put(o, "custom_tweet", api_json_str(u->custom_tweet));
  bad |= put(o, "tweet_id", api_json_str(u->tweet_id));
  return bad ? fail(o) : o;
}

/* §1.4: incidents end with reminder_intervals; maintenances instead end
 * with scheduled_for and scheduled_until. */
static json_t *v2_incident(const api_incident_v *x, const char *page_url) {
  json_t *o = json_object();
  int bad = o == NULL;
  bad |= put(o, "id", api_json_str(x->id));
  bad |= put(o, "name", api_json_str(x->name ? x->name : ""));
  bad |= put(o, "status", api_json_str(x->status));
  bad |= put(o, "created_at", api_json_str(x->created_at));
  bad |= put(o, "updated_at", api_json_str(x->updated_at ? x->updated_at : x->created_at));
  bad |= put(o, "monitoring_at", api_json_str(x->monitoring_at));
  bad |= put(o, "resolved_at", api_json_str(x->resolved_at));
  bad |= put(o, "impact", api_json_str(api_incident_impact(x)));
  if (x->shortlink || page_url == NULL) {
    bad |= put(o, "shortlink", api_json_str(x->shortlink));
  } else {
    /* the service has no link shortener: the incident's own page */
    size_t len = strlen(page_url) + strlen(x->id) + 12;
    char *link = sp_malloc(len);
    if (link)
      snprintf(link, len, "%s/incidents/%s", page_url, x->id);
    bad |= put(o, "shortlink", link ? api_json_str(link) : NULL);
    sp_free(link);
  }
  bad |= put(o, "started_at", api_json_str(x->started_at ? x->started_at : x->created_at));
  bad |= put(o, "page_id", api_json_str(x->page_id));
  json_t *ups = json_array();
  bad |= ups == NULL;
  for (size_t i = 0; ups && i < x->nupdates; i++)
    bad |= json_array_append_new(ups, v2_update(&x->updates[i])) != 0;
  bad |= put(o, "incident_updates", ups);
  json_t *comps = json_array();
  bad |= comps == NULL;
  for (size_t i = 0; comps && i < x->ncomponents; i++)
    bad |= json_array_append_new(comps, v2_component(&x->components[i], 0)) != 0;
  bad |= put(o, "components", comps);
  if (x->maintenance) {
    bad |= put(o, "scheduled_for", api_json_str(x->scheduled_for));
    bad |= put(o, "scheduled_until", api_json_str(x->scheduled_until));
  } else {
    bad |= put(o, "reminder_intervals", api_json_str(x->reminder_intervals));
  }
  return bad ? fail(o) : o;
}

static json_t *v2_status(api_rollup r) {
  json_t *o = json_object();
  int bad = o == NULL;
  bad |= put(o, "indicator", json_string(r.indicator));
  bad |= put(o, "description", json_string(r.description));
  return bad ? fail(o) : o;
}

/* ---- the model of one page, loaded once per render ---- */

enum { L_UNRESOLVED, L_INCIDENTS, L_MAINT, L_UPCOMING, L_ACTIVE, L_OPEN, L_COUNT };

typedef struct page_model {
  api_page_v page;
  const char *url; /* the page's public URL or NULL */
  char updated_at[32];
  api_component_v *comps;
  size_t ncomps;
  api_rollup rollup;
  api_incident_v *inc; /* every incident some list shows, newest first */
  size_t ninc;
  api_incident_list lists[L_COUNT]; /* indices into inc */
} page_model;

#define LIST_AT(m, l, i) (&(m)->inc[(m)->lists[l].idx[i]])

static void note_time(uint64_t *max, const char *ts) {
  uint64_t ms;
  if (ts && api_parse_time(ts, &ms) == 0 && ms > *max)
    *max = ms;
}

static int load_model(api_server *s, sp_pool *pool, const char *page, page_model *m) {
  static const api_incident_list lists[L_COUNT] = {
      [L_UNRESOLVED] = {API_INC_UNRESOLVED, 0, NULL, 0},
      [L_INCIDENTS] = {API_INC_INCIDENTS, HISTORY_CAP, NULL, 0},
      [L_MAINT] = {API_INC_MAINTENANCES, HISTORY_CAP, NULL, 0},
      [L_UPCOMING] = {API_INC_MAINT_UPCOMING, 0, NULL, 0},
      [L_ACTIVE] = {API_INC_MAINT_ACTIVE, 0, NULL, 0},
      [L_OPEN] = {API_INC_MAINT_OPEN, 0, NULL, 0},
  };
  memset(m, 0, sizeof *m);
  memcpy(m->lists, lists, sizeof lists);
  int rc = api_page_get(s->doc, pool, page, &m->page);
  if (rc)
    return rc;
  if ((rc = api_components_list(s->doc, pool, page, &m->comps, &m->ncomps)) ||
      (rc = api_incidents_lists(s->doc, pool, page, m->lists, L_COUNT, &m->inc, &m->ninc)))
    return rc;
  m->rollup = api_rollup_components(m->comps, m->ncomps);
  if (m->page.url) {
    m->url = m->page.url;
  } else if (m->page.domain) {
    size_t len = strlen(m->page.domain) + 9;
    char *u = sp_pool_alloc(pool, len);
    if (u == NULL)
      return SP_ERR_NOMEM;
    snprintf(u, len, "https://%s", m->page.domain);
    m->url = u;
  }
  /* page.updated_at is the last change anywhere on the page */
  uint64_t last = 0;
  note_time(&last, m->page.updated_at ? m->page.updated_at : m->page.created_at);
  for (size_t i = 0; i < m->ncomps; i++)
    note_time(&last, m->comps[i].updated_at);
  for (size_t i = 0; i < m->ninc; i++) {
    note_time(&last, m->inc[i].updated_at);
    for (size_t k = 0; k < m->inc[i].nupdates; k++)
      note_time(&last, m->inc[i].updates[k].updated_at);
  }
  api_format_time(last, m->updated_at, sizeof m->updated_at);
  return 0;
}

/* ---- JSON documents ---- */

/* The JSON texts the documents share, each built and serialised once per
 * render; the documents are assembled from them byte by byte, so an
 * incident shown in three documents is serialised once. */
typedef struct text {
  char *s; /* sp_malloc'd */
  size_t len;
} text;

typedef struct page_text {
  text page, comps, status;
  text *inc; /* one per m->inc */
  size_t ninc;
} page_text;

static void page_text_release(page_text *t) {
  sp_free(t->page.s);
  sp_free(t->comps.s);
  sp_free(t->status.s);
  for (size_t i = 0; t->inc && i < t->ninc; i++)
    sp_free(t->inc[i].s);
  sp_free(t->inc);
}

typedef struct dumpctx {
  sp_buf *b;
} dumpctx;

static int dump_cb(const char *buf, size_t size, void *data) {
  return sp_buf_add(((dumpctx *)data)->b, buf, size) ? -1 : 0;
}

/* Serialises v (consumed; NULL = a failed build) compactly into *out. */
static int dump(json_t *v, sp_buf *b, text *out) {
  int rc = SP_ERR_NOMEM;
  sp_buf_reset(b);
  dumpctx ctx = {b};
  if (v && json_dump_callback(v, dump_cb, &ctx, JSON_COMPACT | JSON_ENCODE_ANY) == 0 &&
      (out->s = sp_buf_detach(b, &out->len)) != NULL)
    rc = 0;
  json_decref(v);
  return rc;
}

static json_t *comps_json(const page_model *m) {
  json_t *a = json_array();
  int bad = a == NULL;
  for (size_t i = 0; a && i < m->ncomps; i++)
    bad |= json_array_append_new(a, v2_component(&m->comps[i], 1)) != 0;
  return bad ? fail(a) : a;
}

static int page_text_build(const page_model *m, page_text *t, sp_buf *b) {
  memset(t, 0, sizeof *t);
  int rc = dump(v2_page(&m->page, m->url, m->updated_at), b, &t->page);
  if (rc == 0)
    rc = dump(v2_status(m->rollup), b, &t->status);
  if (rc == 0)
    rc = dump(comps_json(m), b, &t->comps);
  if (rc == 0 && m->ninc) {
    if ((t->inc = sp_calloc(m->ninc, sizeof *t->inc)) == NULL)
      rc = SP_ERR_NOMEM;
    else
      t->ninc = m->ninc;
    for (size_t i = 0; rc == 0 && i < m->ninc; i++)
      rc = dump(v2_incident(&m->inc[i], m->url), b, &t->inc[i]);
  }
  if (rc)
    page_text_release(t);
  return rc;
}

static void add_text(sp_buf *b, int *bad, const text *t) {
  *bad |= sp_buf_add(b, t->s, t->len) != 0;
}

static void add_list(sp_buf *b, int *bad, const page_text *t, const api_incident_list *l) {
  *bad |= sp_buf_add(b, "[", 1) != 0;
  for (size_t i = 0; i < l->n; i++) {
    if (i)
      *bad |= sp_buf_add(b, ",", 1) != 0;
    add_text(b, bad, &t->inc[l->idx[i]]);
  }
  *bad |= sp_buf_add(b, "]", 1) != 0;
}

/* Assembles the JSON document `kind` (top-level keys in the reference's
 * order) into a new api_doc. */
static api_doc *json_doc(const page_model *m, const page_text *t, api_doc_kind kind, sp_buf *b) {
  int bad = 0;
  const api_incident_list *list = NULL;
  const char *key = NULL;
  sp_buf_reset(b);
  bad |= sp_buf_adds(b, "{\"page\":") != 0;
  add_text(b, &bad, &t->page);
  switch (kind) {
  case API_DOC_SUMMARY:
    bad |= sp_buf_adds(b, ",\"components\":") != 0;
    add_text(b, &bad, &t->comps);
    bad |= sp_buf_adds(b, ",\"incidents\":") != 0;
    add_list(b, &bad, t, &m->lists[L_UNRESOLVED]);
    bad |= sp_buf_adds(b, ",\"scheduled_maintenances\":") != 0;
    add_list(b, &bad, t, &m->lists[L_OPEN]);
    /* fall through */
  case API_DOC_STATUS:
    bad |= sp_buf_adds(b, ",\"status\":") != 0;
    add_text(b, &bad, &t->status);
    break;
  case API_DOC_COMPONENTS:
    bad |= sp_buf_adds(b, ",\"components\":") != 0;
    add_text(b, &bad, &t->comps);
    break;
  case API_DOC_INCIDENTS:
    key = "incidents";
    list = &m->lists[L_INCIDENTS];
    break;
  case API_DOC_UNRESOLVED:
    key = "incidents";
    list = &m->lists[L_UNRESOLVED];
    break;
  case API_DOC_MAINTENANCES:
    key = "scheduled_maintenances";
    list = &m->lists[L_MAINT];
    break;
  case API_DOC_MAINT_UPCOMING:
    key = "scheduled_maintenances";
    list = &m->lists[L_UPCOMING];
    break;
  case API_DOC_MAINT_ACTIVE:
    key = "scheduled_maintenances";
    list = &m->lists[L_ACTIVE];
    break;
  default:
    bad = 1;
  }
  if (list) {
    bad |= sp_buf_addf(b, ",\"%s\":", key) != 0;
    add_list(b, &bad, t, list);
  }
  bad |= sp_buf_add(b, "}", 1) != 0;
  return bad ? NULL : doc_new(b->base, b->len);
}

/* ---- the HTML page ---- */

static void h_raw(sp_buf *b, int *bad, const char *s) { *bad |= sp_buf_adds(b, s) != 0; }

/* Text with &, <, >, " and ' escaped; with `lines`, newlines become <br>. */
static void h_text(sp_buf *b, int *bad, const char *s, int lines) {
  if (s == NULL)
    return;
  const char *run = s;
  for (; *s; s++) {
    const char *rep = NULL;
    switch (*s) {
    case '&': rep = "&amp;"; break;
    case '<': rep = "&lt;"; break;
    case '>': rep = "&gt;"; break;
    case '"': rep = "&quot;"; break;
    case '\'': rep = "&#39;"; break;
    case '\n': rep = lines ? "<br>\n" : "\n"; break;
    case '\r': rep = ""; break;
    default: continue;
    }
    *bad |= sp_buf_add(b, run, (size_t)(s - run)) != 0;
    *bad |= sp_buf_adds(b, rep) != 0;
    run = s + 1;
  }
  *bad |= sp_buf_add(b, run, (size_t)(s - run)) != 0;
}

/* "Nov 23, 2026 06:00 UTC" for a stored timestamp (escaped raw text when
 * it does not parse). */
static void h_time(sp_buf *b, int *bad, const char *ts) {
  uint64_t ms;
  if (ts == NULL)
    return;
  if (api_parse_time(ts, &ms) != 0) {
    h_text(b, bad, ts, 0);
    return;
  }
  time_t sec = (time_t)(ms / 1000);
  struct tm tm;
  char out[64];
  gmtime_r(&sec, &tm);
  strftime(out, sizeof out, "%b %d, %Y %H:%M UTC", &tm);
  h_raw(b, bad, "<time datetime=\"");
  h_text(b, bad, ts, 0);
  h_raw(b, bad, "\">");
  h_raw(b, bad, out);
  h_raw(b, bad, "</time>");
}

static const char *label(const char *v) {
  static const char *const map[][2] = {
      {"operational", "Operational"},
      {"degraded_performance", "Degraded Performance"},
      {"partial_outage", "Partial Outage"},
      {"major_outage", "Major Outage"},
      {"under_maintenance", "Under Maintenance"},
      {"investigating", "Investigating"},
      {"identified", "Identified"},
      {"monitoring", "Monitoring"},
      {"resolved", "Resolved"},
      {"postmortem", "Postmortem"},
      {"scheduled", "Scheduled"},
      {"in_progress", "In progress"},
      {"verifying", "Verifying"},
      {"completed", "Completed"},
  };
  for (size_t i = 0; v && i < sizeof map / sizeof map[0]; i++)
    if (strcmp(map[i][0], v) == 0)
      return map[i][1];
  return v;
}

static const char css[] =
    "*{box-sizing:border-box}"
    "body{margin:0;font:16px/1.5 -apple-system,BlinkMacSystemFont,\"Segoe UI\",Helvetica,Arial,"
    "sans-serif;color:#333;background:#f6f7f8}"
    ".wrap{max-width:820px;margin:0 auto;padding:32px 16px}"
    "header h1{margin:0 0 4px;font-size:28px}"
    ".headline{margin:0 0 16px;color:#666}"
    ".banner{margin:16px 0 32px;padding:16px 20px;border-radius:6px;color:#fff;font-size:20px;"
    "font-weight:600}"
    ".ind-none{background:#2fcc66}.ind-minor{background:#f1c40f}.ind-major{background:#e67e22}"
    ".ind-critical{background:#e74c3c}.ind-maintenance{background:#3498db}"
    "section{margin:0 0 32px}"
    "h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid #ddd}"
    "article{background:#fff;border:1px solid #e3e3e3;border-left-width:6px;border-radius:6px;"
    "padding:12px 16px;margin:0 0 12px}"
    "article h3{margin:0 0 8px;font-size:17px}"
    ".impact-none{border-left-color:#333}.impact-minor{border-left-color:#f1c40f}"
    ".impact-major{border-left-color:#e67e22}.impact-critical{border-left-color:#e74c3c}"
    ".impact-maintenance{border-left-color:#3498db}"
    ".window{margin:0 0 8px;color:#666;font-size:14px}"
    "ol.updates{list-style:none;margin:0;padding:0}"
    "ol.updates li{margin:0 0 8px}"
    "ol.updates time,.comp time{display:block;color:#888;font-size:13px}"
    "ul.comps{list-style:none;margin:0;padding:0;background:#fff;border:1px solid #e3e3e3;"
    "border-radius:6px}"
    "ul.comps li{padding:12px 16px;border-top:1px solid #eee}"
    "ul.comps li:first-child{border-top:0}"
    "ul.comps ul.comps{border:0;margin:8px 0 0;background:transparent}"
    "ul.comps ul.comps li{padding:8px 0 8px 16px}"
    ".row{display:flex;justify-content:space-between;gap:16px}"
    ".name{font-weight:600}.desc{display:block;color:#777;font-size:13px;font-weight:400}"
    ".st{white-space:nowrap;font-size:14px}"
    ".st-operational{color:#2fcc66}.st-degraded_performance{color:#c9a100}"
    ".st-partial_outage{color:#e67e22}.st-major_outage{color:#e74c3c}"
    ".st-under_maintenance{color:#3498db}"
    "footer{color:#888;font-size:13px}footer a{color:#888}";

/* A CSS class suffix: only the known enum values are used as classes. */
static const char *cls(api_enum kind, const char *v, const char *dflt) {
  return api_enum_ok(kind, v) ? v : dflt;
}

static void h_updates(sp_buf *b, int *bad, const api_incident_v *x) {
  if (x->nupdates == 0)
    return;
  h_raw(b, bad, "<ol class=\"updates\">");
  for (size_t i = 0; i < x->nupdates; i++) {
    const api_update_v *u = &x->updates[i];
    h_raw(b, bad, "<li><strong>");
    h_text(b, bad, label(u->status), 0);
    h_raw(b, bad, "</strong> &ndash; ");
    h_text(b, bad, u->body, 1);
    h_time(b, bad, u->display_at ? u->display_at : u->created_at);
    h_raw(b, bad, "</li>");
  }
  h_raw(b, bad, "</ol>");
}

static void h_incident(sp_buf *b, int *bad, const api_incident_v *x) {
  h_raw(b, bad, "<article class=\"impact-");
  h_raw(b, bad, cls(API_ENUM_IMPACT, api_incident_impact(x), "none"));
  h_raw(b, bad, "\"><h3>");
  h_text(b, bad, x->name, 0);
  h_raw(b, bad, "</h3>");
  if (x->maintenance && (x->scheduled_for || x->scheduled_until)) {
    h_raw(b, bad, "<p class=\"window\">");
    h_text(b, bad, label(x->status), 0);
    h_raw(b, bad, ": ");
    h_time(b, bad, x->scheduled_for);
    h_raw(b, bad, " to ");
    h_time(b, bad, x->scheduled_until);
    h_raw(b, bad, "</p>");
  }
  h_updates(b, bad, x);
  h_raw(b, bad, "</article>");
}

static void h_component(sp_buf *b, int *bad, const api_component_v *c) {
  h_raw(b, bad, "<div class=\"row\"><span class=\"name\">");
  h_text(b, bad, c->name, 0);
  if (c->description) {
    h_raw(b, bad, "<span class=\"desc\">");
    h_text(b, bad, c->description, 0);
    h_raw(b, bad, "</span>");
  }
  h_raw(b, bad, "</span><span class=\"st st-");
  h_raw(b, bad, cls(API_ENUM_COMPONENT_STATUS, c->status, "operational"));
  h_raw(b, bad, "\">");
  h_text(b, bad, label(c->status), 0);
  h_raw(b, bad, "</span></div>");
}

/* Statuspage hides an only_show_if_degraded component while it is fine. */
static int hidden(const api_component_v *c) {
  return !c->group && c->only_show_if_degraded && api_status_severity(c->status) <= 0;
}

static api_doc *html_doc(const page_model *m, sp_buf *b) {
  int bad = 0;
  sp_buf_reset(b);
  h_raw(b, &bad, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                 "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                 "<title>");
  h_text(b, &bad, m->page.name, 0);
  h_raw(b, &bad, " Status</title><style>");
  h_raw(b, &bad, css);
  h_raw(b, &bad, "</style></head>\n<body><div class=\"wrap\"><header><h1>");
  h_text(b, &bad, m->page.name, 0);
  h_raw(b, &bad, "</h1>");
  if (m->page.headline) {
    h_raw(b, &bad, "<p class=\"headline\">");
    h_text(b, &bad, m->page.headline, 0);
    h_raw(b, &bad, "</p>");
  }
  h_raw(b, &bad, "</header>\n<div class=\"banner ind-");
  h_raw(b, &bad, m->rollup.indicator);
  h_raw(b, &bad, "\">");
  h_text(b, &bad, m->rollup.description, 0);
  h_raw(b, &bad, "</div>\n");

  if (m->lists[L_UNRESOLVED].n) {
    h_raw(b, &bad, "<section class=\"incidents\"><h2>Active incidents</h2>");
    for (size_t i = 0; i < m->lists[L_UNRESOLVED].n; i++)
      h_incident(b, &bad, LIST_AT(m, L_UNRESOLVED, i));
    h_raw(b, &bad, "</section>\n");
  }
  if (m->lists[L_ACTIVE].n) {
    h_raw(b, &bad, "<section class=\"maintenance active\"><h2>Maintenance in progress</h2>");
    for (size_t i = 0; i < m->lists[L_ACTIVE].n; i++)
      h_incident(b, &bad, LIST_AT(m, L_ACTIVE, i));
    h_raw(b, &bad, "</section>\n");
  }

  h_raw(b, &bad, "<section class=\"components\"><h2>Components</h2><ul class=\"comps\">");
  size_t i = 0;
  while (i < m->ncomps) {
    const api_component_v *c = &m->comps[i++];
    if (hidden(c))
      continue;
    h_raw(b, &bad, c->group ? "<li class=\"group\">" : "<li class=\"comp\">");
    h_component(b, &bad, c);
    if (c->group && c->nchildren) {
      h_raw(b, &bad, "<ul class=\"comps\">");
      /* the children follow their group in display order */
      for (size_t k = 0; k < c->nchildren && i < m->ncomps; k++) {
        const api_component_v *ch = &m->comps[i++];
        if (hidden(ch))
          continue;
        h_raw(b, &bad, "<li class=\"comp\">");
        h_component(b, &bad, ch);
        h_raw(b, &bad, "</li>");
      }
      h_raw(b, &bad, "</ul>");
    }
    h_raw(b, &bad, "</li>");
  }
  if (m->ncomps == 0)
    h_raw(b, &bad, "<li>No components.</li>");
  h_raw(b, &bad, "</ul></section>\n");

  if (m->lists[L_UPCOMING].n) {
    h_raw(b, &bad, "<section class=\"maintenance upcoming\"><h2>Scheduled maintenance</h2>");
    /* soonest first reads best; the list is newest-created first */
    for (size_t k = m->lists[L_UPCOMING].n; k-- > 0;)
      h_incident(b, &bad, LIST_AT(m, L_UPCOMING, k));
    h_raw(b, &bad, "</section>\n");
  }
  h_raw(b, &bad, "<footer><p>Last updated ");
  h_time(b, &bad, m->updated_at);
  h_raw(b, &bad, ". <a href=\"/pages/");
  h_text(b, &bad, m->page.id, 0);
  h_raw(b, &bad, "/api/v2/summary.json\">JSON API</a></p></footer></div></body></html>\n");
  return bad ? NULL : doc_new(b->base, b->len);
}

/* ---- rendering a page ---- */

static void drop_page(struct api_render *r, const char *page) {
  for (size_t i = 0; i < r->n; i++) {
    if (strcmp(r->pages[i]->id, page) != 0)
      continue;
    page_docs_free(r->pages[i]);
    r->pages[i] = r->pages[--r->n];
    if (rebuild_tables(r) != 0) {
      /* the tables must not point at the freed entry: empty them; lookups
       * fail (404) until the next render rebuilds them */
      if (r->nslots) {
        memset(r->by_id, 0, r->nslots * sizeof *r->by_id);
        memset(r->by_domain, 0, r->nslots * sizeof *r->by_domain);
      }
      r->tables_stale = 1;
    }
    return;
  }
}

/* Renders every document of `page` into out[]; 0, NOENT (no live page) or
 * NOMEM (nothing in out). */
static int render_docs(api_server *s, const char *page, api_doc *out[API_DOC_COUNT],
                       char **domain) {
  sp_pool pool;
  sp_pool_init(&pool, NULL, 0, POOL_MAX);
  sp_buf b;
  sp_buf_init(&b, DOC_MAX);
  page_model m;
  page_text t;
  int rc = load_model(s, &pool, page, &m);
  memset(out, 0, API_DOC_COUNT * sizeof *out);
  *domain = NULL;
  if (rc == 0 && (rc = page_text_build(&m, &t, &b)) == 0) {
    for (int k = 0; k < API_DOC_HTML && rc == 0; k++)
      if ((out[k] = json_doc(&m, &t, (api_doc_kind)k, &b)) == NULL)
        rc = SP_ERR_NOMEM;
    page_text_release(&t);
    if (rc == 0 && (out[API_DOC_HTML] = html_doc(&m, &b)) == NULL)
      rc = SP_ERR_NOMEM;
    if (rc == 0 && m.page.domain && m.page.domain[0]) {
      if ((*domain = sp_strdup(m.page.domain)) == NULL)
        rc = SP_ERR_NOMEM;
      else
        for (char *p = *domain; *p; p++)
          *p = (char)tolower((unsigned char)*p);
    }
    if (rc) {
      for (int k = 0; k < API_DOC_COUNT; k++)
        api_doc_unref(out[k]);
      memset(out, 0, API_DOC_COUNT * sizeof *out);
    }
  }
  sp_buf_release(&b);
  sp_pool_release(&pool);
  return rc;
}

static int same_str(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static int render_one(api_server *s, const char *page) {
  struct api_render *r = render_state(s);
  if (r == NULL)
    return SP_ERR_NOMEM;
  api_doc *docs[API_DOC_COUNT];
  char *domain;
  int rc = render_docs(s, page, docs, &domain);
  if (rc == SP_ERR_NOENT) {
    drop_page(r, page);
    return 0;
  }
  if (rc)
    return rc;
  /* the list, not the table: after a failed rebuild the table may miss
   * a listed page, which must not be added twice */
  page_docs *pd = NULL;
  for (size_t i = 0; i < r->n && pd == NULL; i++)
    if (strcmp(r->pages[i]->id, page) == 0)
      pd = r->pages[i];
  int rebuild = r->tables_stale;
  if (pd == NULL) {
    if (r->n == r->cap) {
      size_t ncap = r->cap ? r->cap * 2 : 16;
      page_docs **np = sp_realloc(r->pages, ncap * sizeof *np);
      if (np == NULL)
        goto fail_docs;
      r->pages = np;
      r->cap = ncap;
    }
    if ((pd = sp_calloc(1, sizeof *pd)) == NULL)
      goto fail_docs;
    if ((pd->id = sp_strdup(page)) == NULL) {
      sp_free(pd);
      goto fail_docs;
    }
    r->pages[r->n++] = pd;
    rebuild = 1;
  }
  if (!same_str(pd->domain, domain)) {
    sp_free(pd->domain);
    pd->domain = domain;
    domain = NULL;
    rebuild = 1;
  }
  sp_free(domain);
  for (int k = 0; k < API_DOC_COUNT; k++) {
    api_doc *old = pd->docs[k];
    if (old && old->len == docs[k]->len && strcmp(old->etag, docs[k]->etag) == 0 &&
        memcmp(old->body, docs[k]->body, old->len) == 0) {
      api_doc_unref(docs[k]); /* unchanged: readers keep the same bytes */
      continue;
    }
    pd->docs[k] = docs[k];
    api_doc_unref(old);
  }
  if (rebuild && rebuild_tables(r) != 0) {
    /* the old tables stay valid (they never point at freed entries) but
     * may miss this page: the next render retries */
    r->tables_stale = 1;
    return SP_ERR_NOMEM;
  }
  return 0;

fail_docs:
  for (int k = 0; k < API_DOC_COUNT; k++)
    api_doc_unref(docs[k]);
  sp_free(domain);
  return SP_ERR_NOMEM;
}

void api_render_page(api_server *s, const char *page) {
  int rc = render_one(s, page);
  if (rc)
    sp_log_warn("rendering a page failed; its previous documents stay", "{s:s,s:s}", "page",
                page, "error", sp_strerror(rc));
}

typedef struct pagelist {
  char **ids;
  size_t n, cap;
  int nomem;
} pagelist;

static void on_page(const char *page, void *arg) {
  pagelist *l = arg;
  if (l->nomem)
    return;
  if (l->n == l->cap) {
    size_t ncap = l->cap ? l->cap * 2 : 16;
    char **ni = sp_realloc(l->ids, ncap * sizeof *ni);
    if (ni == NULL) {
      l->nomem = 1;
      return;
    }
    l->ids = ni;
    l->cap = ncap;
  }
  if ((l->ids[l->n] = sp_strdup(page)) == NULL)
    l->nomem = 1;
  else
    l->n++;
}

int api_render_all(api_server *s) {
  pagelist l = {NULL, 0, 0, 0};
  int rc = crdt_doc_pages(s->doc, on_page, &l);
  if (rc == 0 && l.nomem)
    rc = SP_ERR_NOMEM;
  for (size_t i = 0; i < l.n; i++) {
    /* the organisation page and other non-pages simply are not rendered */
    if (rc == 0 && crdt_doc_alive(s->doc, l.ids[i], API_T_PAGE, l.ids[i]) == 1)
      rc = render_one(s, l.ids[i]);
    sp_free(l.ids[i]);
  }
  sp_free(l.ids);
  return rc;
}

api_doc *api_render_get(api_server *s, const char *page, api_doc_kind kind) {
  if ((unsigned)kind >= API_DOC_COUNT || page == NULL)
    return NULL;
  api_cache_render_pending(s, page); /* changes waiting for the render timer */
  page_docs *pd = find_page(s->render, page);
  if (pd == NULL || pd->docs[kind] == NULL)
    return NULL;
  pd->docs[kind]->refs++;
  return pd->docs[kind];
}

static const char *page_for_domain(api_server *s, const char *host) {
  const struct api_render *r = s->render;
  if (r == NULL || r->nslots == 0 || host == NULL || host[0] == '\0')
    return NULL;
  size_t k = hash_lower(host) & (r->nslots - 1);
  for (page_docs *pd; (pd = r->by_domain[k]); k = (k + 1) & (r->nslots - 1))
    if (pd->domain && strcasecmp(pd->domain, host) == 0)
      return pd->id;
  return NULL;
}

const char *api_render_page_for_domain(api_server *s, const char *host) {
  const char *id = page_for_domain(s, host);
  if (id == NULL && host && host[0]) {
    /* a page or domain written a moment ago may still wait for rendering */
    api_cache_render_pending(s, NULL);
    id = page_for_domain(s, host);
  }
  return id;
}

void api_render_free(api_server *s) {
  struct api_render *r = s->render;
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->n; i++)
    page_docs_free(r->pages[i]);
  sp_free(r->pages);
  sp_free(r->by_id);
  sp_free(r->by_domain);
  sp_free(r);
  s->render = NULL;
}
