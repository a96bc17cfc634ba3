/* api_maint: scheduled maintenances moved along by time.
 *
 * A maintenance (an `incident` of kind "scheduled") with
 * scheduled_auto_in_progress goes scheduled -> in_progress at scheduled_for;
 * with scheduled_auto_completed it goes in_progress/verifying -> completed
 * at scheduled_until (straight from scheduled when it never went in
 * progress automatically).  Each transition is one write, like a PATCH:
 * the status, a new incident_update with Statuspage's wording (delivered
 * when auto_transition_deliver_notifications_at_start/_at_end is set), the
 * affected components moved to under_maintenance at the start
 * (auto_transition_to_maintenance_state) and back to operational at the end
 * (auto_transition_to_operational_state), recorded with their old statuses.
 *
 * api_maint_tick scans the cache (never the database) every second and
 * whenever the test clock moves.  Due transitions become jobs: at most one
 * per maintenance in flight (the `inflight` list), queued on the
 * maintenance's write lane ("<page>/incident/<id>", shared with the
 * management PATCHes), and re-checked against the cache when their turn
 * comes, so a maintenance changed or completed meanwhile is left alone and
 * a transition is never written twice.  A failed write (database down) is
 * simply retried by a later tick.  After a successful one the tick runs
 * again at once, so a maintenance whose window already passed goes
 * scheduled -> in_progress -> completed without waiting a second.
 *
 * Memory: jobs are sp_malloc'd and freed when their write completes (or
 * they find nothing to do); the in-flight list is module state.
 */
#include "manage.h"
#include "routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_log.h"

#define MAX_JOBS 64
#define BODY_START "Scheduled maintenance is currently in progress. We will provide updates as necessary."
#define BODY_END "The scheduled maintenance has been completed."

typedef struct maint_job {
  api_lane_job lane; /* first: recovered by container-of below */
  struct maint_job *next;
  api_server *s;
  char page[CRDT_MAX_NAME + 1];
  char id[CRDT_MAX_NAME + 1];
} maint_job;

static struct {
  maint_job *inflight;
  size_t n;
} g_maint;

/* ---- reading a maintenance -------------------------------------------------------------- */

typedef struct m_view {
  char status[32];
  uint64_t for_ms, until_ms;
  int has_for, has_until;
  int auto_in, auto_done, to_maint, to_oper, notify_start, notify_end;
} m_view;

static int get(api_server *s, const char *page, const char *id, const char *field, char *out,
               size_t outlen) {
  const uint8_t *v;
  size_t len;
  crdt_stamp st;
  if (crdt_doc_field(s->doc, page, API_T_INCIDENT, id, field, &v, &len, &st) || v == NULL ||
      len >= outlen)
    return 0;
  memcpy(out, v, len);
  out[len] = '\0';
  return 1;
}

static int flag(api_server *s, const char *page, const char *id, const char *field) {
  char b[8];
  return get(s, page, id, field, b, sizeof b) && strcmp(b, "true") == 0;
}

/* 1 and *v when (page, id) is a live maintenance. */
static int read_maint(api_server *s, const char *page, const char *id, m_view *v) {
  char kind[16], t[64];
  if (crdt_doc_alive(s->doc, page, API_T_INCIDENT, id) != 1 ||
      !get(s, page, id, "kind", kind, sizeof kind) || strcmp(kind, "scheduled") ||
      !get(s, page, id, "status", v->status, sizeof v->status))
    return 0;
  v->has_for = get(s, page, id, "scheduled_for", t, sizeof t) && api_parse_time(t, &v->for_ms) == 0;
  v->has_until =
      get(s, page, id, "scheduled_until", t, sizeof t) && api_parse_time(t, &v->until_ms) == 0;
  v->auto_in = flag(s, page, id, "scheduled_auto_in_progress");
  v->auto_done = flag(s, page, id, "scheduled_auto_completed");
  v->to_maint = flag(s, page, id, "auto_transition_to_maintenance_state");
  v->to_oper = flag(s, page, id, "auto_transition_to_operational_state");
  v->notify_start = flag(s, page, id, "auto_transition_deliver_notifications_at_start");
  v->notify_end = flag(s, page, id, "auto_transition_deliver_notifications_at_end");
  return 1;
}

/* The status a maintenance must move to now, or NULL. */
static const char *due(const m_view *v, uint64_t now) {
  int scheduled = strcmp(v->status, "scheduled") == 0;
  int running = !strcmp(v->status, "in_progress") || !strcmp(v->status, "verifying");
  if (scheduled && v->auto_in && v->has_for && now >= v->for_ms)
    return "in_progress";
  if ((running || (scheduled && !v->auto_in)) && v->auto_done && v->has_until &&
      now >= v->until_ms)
    return "completed";
  return NULL;
}

/* ---- jobs ----------------------------------------------------------------------------------- */

static void job_end(maint_job *j, int ok) {
  api_server *s = j->s;
  for (maint_job **pp = &g_maint.inflight; *pp; pp = &(*pp)->next) {
    if (*pp == j) {
      *pp = j->next;
      g_maint.n--;
      break;
    }
  }
  api_lane_leave(&j->lane);
  sp_free(j);
  if (ok)
    api_maint_tick(s); /* the next transition may be due already */
}

static void on_written(api_server *s, const api_write_result *r, void *arg) {
  maint_job *j = arg;
  if (r->status == 0)
    sp_log_info("maintenance moved by time", "{s:s,s:s}", "page", j->page, "incident", j->id);
  else
    sp_log_warn("maintenance transition failed; retried on a later tick", "{s:s,s:s,s:s}",
                "page", j->page, "incident", j->id, "error", sp_strerror(r->status));
  (void)s;
  job_end(j, r->status == 0);
}

/* Builds and starts the transition's write.  0, or an error (nothing
 * written). */
static int transition(maint_job *j, const m_view *v, const char *to) {
  api_server *s = j->s;
  const char *page = j->page, *id = j->id;
  int start = strcmp(to, "in_progress") == 0;
  int notify = start ? v->notify_start : v->notify_end;
  const char *comp_status = start ? (v->to_maint ? "under_maintenance" : NULL)
                                  : (v->to_oper ? "operational" : NULL);
  char now[40], uid[CRDT_ID_LEN + 1], name[512] = "";
  api_format_time(api_now_ms(s), now, sizeof now);
  get(s, page, id, "name", name, sizeof name);
  json_t *ops = api_ops_new(), *outbox = json_array(), *affected = json_array();
  json_t *ids = NULL;
  const uint8_t *raw;
  size_t rawlen;
  crdt_stamp st;
  if (crdt_doc_field(s->doc, page, API_T_INCIDENT, id, "components", &raw, &rawlen, &st) == 0 &&
      raw)
    ids = json_loadb((const char *)raw, rawlen, 0, NULL);
  if (!json_is_array(ids)) {
    json_decref(ids);
    ids = json_array();
  }
  int rc = SP_ERR_NOMEM;
  if (ops == NULL || outbox == NULL || affected == NULL || ids == NULL)
    goto out;
  api_op_require(ops, page, API_T_INCIDENT, id);
  api_op_set(ops, page, API_T_INCIDENT, id, "status", to);
  api_op_set(ops, page, API_T_INCIDENT, id, "updated_at", now);
  if (!start)
    api_op_set(ops, page, API_T_INCIDENT, id, "resolved_at", now);
  size_t i;
  json_t *e;
  json_array_foreach(ids, i, e) {
    const char *cid = json_string_value(e);
    if (cid == NULL || !crdt_doc_alive(s->doc, page, API_T_COMPONENT, cid))
      continue;
    char cur[32] = "operational";
    const uint8_t *cv;
    size_t cl;
    if (crdt_doc_field(s->doc, page, API_T_COMPONENT, cid, "status", &cv, &cl, &st) == 0 && cv &&
        cl > 0 && cl < sizeof cur) {
      memcpy(cur, cv, cl);
      cur[cl] = '\0';
    }
    if (api_component_set_status(s, page, cid, comp_status ? comp_status : cur, now, ops,
                                 affected, notify ? outbox : NULL))
      goto out;
  }
  api_new_id(s, uid);
  api_op_create(ops, page, API_T_UPDATE, uid);
  api_op_set(ops, page, API_T_UPDATE, uid, "incident_id", id);
  api_op_set(ops, page, API_T_UPDATE, uid, "status", to);
  api_op_set(ops, page, API_T_UPDATE, uid, "body", start ? BODY_START : BODY_END);
  api_op_set(ops, page, API_T_UPDATE, uid, "display_at", now);
  mg_op_set_json(ops, page, API_T_UPDATE, uid, "affected_components",
                 json_array_size(affected) ? affected : NULL);
  api_op_set(ops, page, API_T_UPDATE, uid, "deliver_notifications", mg_bool_str(notify));
  api_op_set(ops, page, API_T_UPDATE, uid, "created_at", now);
  api_op_set(ops, page, API_T_UPDATE, uid, "updated_at", now);
  if (notify) {
    json_t *row = api_outbox_row(uid, page, "maintenance",
                                 api_incident_event(page, id, uid, name, to, "scheduled",
                                                    start ? BODY_START : BODY_END, ids));
    if (row == NULL || json_array_append_new(outbox, row))
      goto out;
  }
  if (json_array_size(outbox) == 0) {
    json_decref(outbox);
    outbox = NULL;
  }
  rc = api_write(s, ops, outbox, on_written, j);
  ops = outbox = NULL; /* taken by api_write whatever it returned */
out:
  json_decref(ops);
  json_decref(outbox);
  json_decref(affected);
  json_decref(ids);
  return rc;
}

static void job_run(api_lane_job *lj) {
  maint_job *j = (maint_job *)((char *)lj - offsetof(maint_job, lane));
  m_view v;
  const char *to = read_maint(j->s, j->page, j->id, &v) ? due(&v, api_now_ms(j->s)) : NULL;
  if (to == NULL) {
    job_end(j, 0); /* changed meanwhile (a PATCH, or another process did it) */
    return;
  }
  int rc = transition(j, &v, to);
  if (rc) {
    sp_log_warn("maintenance transition not started; retried on a later tick", "{s:s,s:s,s:s}",
                "page", j->page, "incident", j->id, "error", sp_strerror(rc));
    job_end(j, 0);
  }
}

static int inflight(const char *page, const char *id) {
  for (maint_job *j = g_maint.inflight; j; j = j->next)
    if (strcmp(j->page, page) == 0 && strcmp(j->id, id) == 0)
      return 1;
  return 0;
}

/* ---- the scan ------------------------------------------------------------------------------ */

typedef struct due_item {
  char page[CRDT_MAX_NAME + 1], id[CRDT_MAX_NAME + 1];
} due_item;

typedef struct scan {
  api_server *s;
  uint64_t now;
  const char *page;
  char (*pages)[CRDT_MAX_NAME + 1];
  size_t npages, cap;
  due_item items[MAX_JOBS];
  size_t nitems;
  int nomem;
} scan;

static void on_page(const char *page, void *arg) {
  scan *sc = arg;
  if (strcmp(page, API_ORG_PAGE) == 0 || strlen(page) > CRDT_MAX_NAME)
    return;
  if (sc->npages == sc->cap) {
    size_t ncap = sc->cap ? sc->cap * 2 : 16;
    void *np = sp_realloc(sc->pages, ncap * sizeof *sc->pages);
    if (np == NULL) {
      sc->nomem = 1;
      return;
    }
    sc->pages = np;
    sc->cap = ncap;
  }
  snprintf(sc->pages[sc->npages++], CRDT_MAX_NAME + 1, "%s", page);
}

static void on_incident(const char *type, const char *id, uint32_t cl, void *arg) {
  scan *sc = arg;
  (void)type;
  if (!(cl & 1u) || sc->nitems + g_maint.n >= MAX_JOBS || strlen(id) > CRDT_MAX_NAME)
    return;
  m_view v;
  if (!read_maint(sc->s, sc->page, id, &v) || due(&v, sc->now) == NULL ||
      inflight(sc->page, id))
    return;
  due_item *it = &sc->items[sc->nitems++];
  snprintf(it->page, sizeof it->page, "%s", sc->page);
  snprintf(it->id, sizeof it->id, "%s", id);
}

void api_maint_tick(api_server *s) {
  if (s == NULL || s->doc == NULL || s->pg_write == NULL || g_maint.n >= MAX_JOBS)
    return;
  scan *sc = sp_calloc(1, sizeof *sc);
  if (sc == NULL)
    return;
  sc->s = s;
  sc->now = api_now_ms(s);
  crdt_doc_pages(s->doc, on_page, sc);
  for (size_t i = 0; i < sc->npages && sc->nitems + g_maint.n < MAX_JOBS; i++) {
    sc->page = sc->pages[i];
    crdt_doc_page_entities(s->doc, sc->page, API_T_INCIDENT, on_incident, sc);
  }
  /* start the jobs after the scan: a job may read the document at once */
  for (size_t i = 0; i < sc->nitems; i++) {
    maint_job *j = sp_calloc(1, sizeof *j);
    if (j == NULL)
      break;
    j->s = s;
    memcpy(j->page, sc->items[i].page, sizeof j->page);
    memcpy(j->id, sc->items[i].id, sizeof j->id);
    j->next = g_maint.inflight;
    g_maint.inflight = j;
    g_maint.n++;
    char key[API_LANE_KEY_MAX];
    snprintf(key, sizeof key, "%s/incident/%s", j->page, j->id);
    if (api_lane_enter(&j->lane, key, job_run)) {
      g_maint.inflight = j->next;
      g_maint.n--;
      sp_free(j);
    }
  }
  sp_free(sc->pages);
  sp_free(sc);
}
