/* api/model.h: typed views of the CRDT entities of statusd-api, the enum
 * validators, the status rollup and the Statuspage v1 JSON shapes.
 *
 * The state is an EAV crdt_doc (see api/DESIGN.md for the entity types and
 * their stored text formats).  A view is a small struct filled from it with
 * every stored value decoded once: strings NUL-terminated (NULL for a NULL
 * or absent field), booleans as 0/1, positions as int, timestamps also as
 * Unix ms.  The views and every string in them are COPIED into a caller's
 * sp_pool (the request pool, or a render pool): they stay valid until that
 * pool is reset, even if the document changes meanwhile.  Functions that
 * fill views return 0, SP_ERR_NOENT (no such live entity) or SP_ERR_NOMEM
 * (the pool's limit or malloc; the output is then undefined).
 *
 * Component groups: a group is a `component_group` entity; membership is
 * the child component's `group_id` field (a component whose group_id names
 * no live group is shown at the top level with group_id null).  The group's
 * own `components` field is kept in step by the writers but is not read
 * for display.  Positions are recomputed on every read: siblings (the top
 * level = ungrouped components and groups; or a group's children) are
 * ordered by their stored `position`, then created_at, then id, and shown
 * as 1..n, so concurrent edits never show duplicate or missing positions.
 *
 * Incidents and maintenances are both `incident` entities; kind "scheduled"
 * marks a maintenance.  Their updates (`incident_update`, grow-only) are
 * attached newest first (display_at, then created_at, then id, descending).
 */
#ifndef API_MODEL_H
#define API_MODEL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"
#include "sp_pool.h"

/* ---- enums -------------------------------------------------------------------- */

typedef enum api_enum {
  API_ENUM_COMPONENT_STATUS, /* operational degraded_performance partial_outage
                                major_outage under_maintenance */
  API_ENUM_INCIDENT_STATUS,  /* investigating identified monitoring resolved postmortem */
  API_ENUM_MAINT_STATUS,     /* scheduled in_progress verifying completed */
  API_ENUM_IMPACT,           /* none minor major critical maintenance */
  API_ENUM_SUBSCRIBER_MODE,  /* email sms webhook */
  API_ENUM_INCIDENT_KIND,    /* realtime scheduled historical */
  API_ENUM_COUNT
} api_enum;

/* 1 when `v` (may be NULL: 0) is one of the values of `kind`, else 0. */
int api_enum_ok(api_enum kind, const char *v);
/* The values of `kind` as "a, b, c" for error messages (static string; ""
 * for an unknown kind). */
const char *api_enum_values(api_enum kind);

/* Severity of a component status, worst highest: operational 0,
 * under_maintenance 1, degraded_performance 2, partial_outage 3,
 * major_outage 4; -1 for NULL or an unknown value. */
int api_status_severity(const char *status);
/* The component status of a severity (0..4), or NULL. */
const char *api_status_of_severity(int sev);

/* ---- views ------------------------------------------------------------------------ */

typedef struct api_page_v {
  const char *id;
  const char *name, *url, *time_zone, *domain, *subdomain, *page_description, *headline,
      *support_url, *created_at, *updated_at;
  int allow_page_subscribers, allow_incident_subscribers, allow_email_subscribers,
      allow_sms_subscribers, allow_webhook_subscribers, allow_rss_atom_feeds;
} api_page_v;

/* A component or (group == 1) a component group. */
typedef struct api_component_v {
  const char *id, *page_id;
  int group;
  const char *name, *description;
  /* Components: the stored status (a NULL or unknown stored value, e.g. the
   * "" the v1 API accepts, reads as "operational").  Groups: the worst
   * status of the children ("operational" without children). */
  const char *status;
  int position;           /* 1-based display position within the parent */
  int stored_position;    /* the stored field (0 when absent) */
  int showcase, only_show_if_degraded; /* components; 0 on groups */
  const char *start_date, *automation_email; /* components; NULL on groups */
  const char *group_id;   /* the live parent group, or NULL */
  const char *created_at, *updated_at;
  const char **children;  /* groups: child ids in display order */
  size_t nchildren;
} api_component_v;

typedef struct api_update_v {
  const char *id, *incident_id, *status, *body, *display_at, *created_at, *updated_at;
  const char *affected_components; /* JSON text (array) or NULL */
  const char *custom_tweet, *tweet_id;
  int deliver_notifications;
  uint64_t display_ms, created_ms; /* 0 when absent or unparsable */
} api_update_v;

typedef struct api_incident_v {
  const char *id, *page_id, *name, *status, *impact, *impact_override, *kind, *shortlink;
  const char *created_at, *updated_at, *started_at, *monitoring_at, *resolved_at;
  const char *scheduled_for, *scheduled_until, *scheduled_reminded_at;
  const char *reminder_intervals, *metadata; /* text / JSON text, or NULL */
  const char *backfill_date, *postmortem_body, *postmortem_published_at;
  int scheduled_remind_prior, scheduled_auto_in_progress, scheduled_auto_completed,
      auto_transition_to_maintenance_state, auto_transition_to_operational_state,
      auto_transition_deliver_notifications_at_start,
      auto_transition_deliver_notifications_at_end, backfilled;
  int maintenance;        /* kind == "scheduled" */
  uint64_t created_ms;
  api_update_v *updates;  /* newest first */
  size_t nupdates;
  /* The affected components (the incident's `components` id list) that
   * still exist, in that order, with their current state. */
  api_component_v *components;
  size_t ncomponents;
} api_incident_v;

typedef struct api_subscriber_v {
  const char *id, *page_id, *mode, *email, *endpoint, *phone_number, *phone_country;
  const char *components; /* JSON text (array of ids) or NULL = all */
  const char *incident_id, *quarantined_at, *purge_at, *unsubscribed_at, *created_at;
  int skip_confirmation_notification;
} api_subscriber_v;

/* Which incidents a list holds. */
typedef enum api_incident_filter {
  API_INC_ALL = 0,        /* incidents and maintenances */
  API_INC_INCIDENTS,      /* kind != scheduled, any status */
  API_INC_UNRESOLVED,     /* kind != scheduled; investigating/identified/monitoring */
  API_INC_MAINTENANCES,   /* kind == scheduled, any status */
  API_INC_MAINT_UPCOMING, /* maintenances: scheduled */
  API_INC_MAINT_ACTIVE,   /* maintenances: in_progress/verifying */
  API_INC_MAINT_OPEN      /* maintenances: scheduled/in_progress/verifying */
} api_incident_filter;

/* The page `page_id` (a live `page` entity).  0, NOENT, NOMEM. */
int api_page_get(crdt_doc *doc, sp_pool *pool, const char *page_id, api_page_v *out);
/* Every live page, sorted by id (the organisation page is not one).
 * *out is a pool array.  0 or NOMEM. */
int api_pages_list(crdt_doc *doc, sp_pool *pool, api_page_v **out, size_t *n);

/* Every live component and group of a page in display order: top-level
 * entries by position, each group followed by its children.  *out is a pool
 * array (n may be 0).  0 or NOMEM (an unknown page is an empty list). */
int api_components_list(crdt_doc *doc, sp_pool *pool, const char *page, api_component_v **out,
                        size_t *n);
/* One component (group = 0) or group (group = 1), with its computed
 * position and (groups) children.  0, NOENT, NOMEM. */
int api_component_get(crdt_doc *doc, sp_pool *pool, const char *page, const char *id, int group,
                      api_component_v *out);

/* The incidents of a page matching `filter`, newest first (created_at, then
 * id), at most `limit` of them (0 = all), each with its updates and
 * components.  0 or NOMEM. */
int api_incidents_list(crdt_doc *doc, sp_pool *pool, const char *page, api_incident_filter filter,
                       size_t limit, api_incident_v **out, size_t *n);
/* Several lists of the same page in one pass (the renderer's case): every
 * incident is read once, and the full view, updates and components only
 * for those some list includes.  Each lists[i] names its filter and limit
 * (0 = all); on return lists[i].idx[0..n) are indices into *all (a pool
 * array, newest first, each included incident once).  0 or NOMEM. */
typedef struct api_incident_list {
  api_incident_filter filter; /* in */
  size_t limit;               /* in */
  size_t *idx;                /* out (pool) */
  size_t n;                   /* out */
} api_incident_list;
int api_incidents_lists(crdt_doc *doc, sp_pool *pool, const char *page, api_incident_list *lists,
                        size_t nlists, api_incident_v **all, size_t *nall);
/* One incident or maintenance with its updates and components.  0, NOENT,
 * NOMEM. */
int api_incident_get(crdt_doc *doc, sp_pool *pool, const char *page, const char *id,
                     api_incident_v *out);

/* The subscribers of a page (unsubscribed ones included: check
 * unsubscribed_at), oldest first (created_at, then id).  0 or NOMEM. */
int api_subscribers_list(crdt_doc *doc, sp_pool *pool, const char *page, api_subscriber_v **out,
                         size_t *n);
int api_subscriber_get(crdt_doc *doc, sp_pool *pool, const char *page, const char *id,
                       api_subscriber_v *out);

/* ---- rollup and impact (reference §1.6) --------------------------------------------- */

typedef struct api_rollup {
  const char *indicator;   /* none minor major critical maintenance (static) */
  const char *description; /* static */
} api_rollup;

/* The page status from component statuses (unknown values count as
 * operational).  n may be 0. */
api_rollup api_rollup_statuses(const char *const *statuses, size_t n);
/* The same over views, skipping group rows. */
api_rollup api_rollup_components(const api_component_v *c, size_t n);
/* The rollup of a page in the document.  0 or NOMEM. */
int api_page_rollup(crdt_doc *doc, const char *page, api_rollup *out);

/* The impact shown for an incident: impact_override when set (and valid);
 * "maintenance" for a maintenance; otherwise the worst of (a) the stored
 * `impact` and (b) the impact of the worst new_status any of its updates
 * gave an affected component (major_outage critical, partial_outage major,
 * degraded_performance minor, else none), so a resolved incident keeps the
 * impact it had.  Returns a static string or one of the view's. */
const char *api_incident_impact(const api_incident_v *inc);
/* The impact of one component status (static; "none" for others). */
const char *api_impact_of_status(const char *status);

/* ---- Statuspage v1 JSON shapes (api_v1json.c) ---------------------------------------
 * Each returns a new json_t the caller owns (json_decref), keys in the
 * reference's order with explicit nulls, or NULL on out of memory. */

/* A JSON string of `s`, or JSON null for NULL.  Invalid UTF-8 (the store
 * holds bytes) is repaired with U+FFFD so a render never fails on it.  New
 * reference; NULL only on out of memory. */
json_t *api_json_str(const char *s);
/* A JSON value parsed from stored JSON text (lists, metadata), or `dflt`
 * (a new reference is taken) when s is NULL or not valid JSON.  New
 * reference; NULL on out of memory. */
json_t *api_json_parsed(const char *s, json_t *dflt);
json_t *api_json_page_v1(const api_page_v *p);
json_t *api_json_component_v1(const api_component_v *c);  /* §2.4 */
json_t *api_json_group_v1(const api_component_v *g);      /* §2.5 */
json_t *api_json_incident_update(const api_update_v *u);  /* §1.5 + twitter fields */
/* §2.6, with incident_updates (newest first) and components (v1 objects);
 * `impact` is api_incident_impact(), `metadata` the stored object or {}. */
json_t *api_json_incident_v1(const api_incident_v *inc);
/* §2.7; `components` is the stored id list, or null when the subscriber
 * follows every component (the stored NULL). */
json_t *api_json_subscriber(const api_subscriber_v *sub);

#endif
