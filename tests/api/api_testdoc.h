/* api_testdoc: builds statusd-api state in an in-memory crdt_doc for the
 * unit tests of the typed views, the renderer and the public API (no
 * database).  Each write is one merged change with a fresh stamp, as the
 * cache would merge committed writes.
 *
 * td_scenario() fills page "pg1" with every kind of object the public
 * documents show; the expected orders are spelled out beside each object.
 * The doc is owned by the caller (crdt_doc_free).  Header-only: every
 * function is static inline so each test binary takes what it uses. */
#ifndef API_TESTDOC_H
#define API_TESTDOC_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "crdt.h"
#include "model.h" /* and, through it, api/internal.h */

typedef struct td {
  crdt_doc *doc;
  uint64_t hlc, seq;
} td;

static inline void td_init(td *t) {
  memset(t, 0, sizeof *t);
  assert_int_equal(crdt_doc_new(NULL, &t->doc), 0);
  assert_int_equal(crdt_doc_grow_only(t->doc, API_T_UPDATE), 0);
  t->hlc = CRDT_HLC_MAKE(1700000000000ull, 0);
}

static inline void td_exist(td *t, const char *page, const char *type, const char *id,
                            uint32_t cl) {
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_EXIST;
  c.page = page;
  c.type = type;
  c.id = id;
  c.cl = cl;
  c.stamp.hlc = ++t->hlc;
  c.seq = ++t->seq;
  assert_int_equal(crdt_doc_merge(t->doc, &c), 1);
}

static inline void td_new(td *t, const char *page, const char *type, const char *id) {
  td_exist(t, page, type, id, 1);
}

static inline void td_del(td *t, const char *page, const char *type, const char *id) {
  td_exist(t, page, type, id, 2);
}

/* value NULL = SQL NULL */
static inline void td_set(td *t, const char *page, const char *type, const char *id,
                          const char *field, const char *value) {
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_FIELD;
  c.page = page;
  c.type = type;
  c.id = id;
  c.field = field;
  c.value = (const uint8_t *)value;
  c.value_len = value ? strlen(value) : 0;
  c.value_null = value == NULL;
  c.cl = 1;
  c.stamp.hlc = ++t->hlc;
  c.seq = ++t->seq;
  assert_true(crdt_doc_merge(t->doc, &c) >= 0);
}

static inline void td_page(td *t, const char *id, const char *name, const char *domain) {
  td_new(t, id, API_T_PAGE, id);
  td_set(t, id, API_T_PAGE, id, "name", name);
  td_set(t, id, API_T_PAGE, id, "domain", domain);
  td_set(t, id, API_T_PAGE, id, "time_zone", "Etc/UTC");
  td_set(t, id, API_T_PAGE, id, "created_at", "2026-01-01T00:00:00.000Z");
  td_set(t, id, API_T_PAGE, id, "updated_at", "2026-01-01T00:00:00.000Z");
}

static inline void td_component(td *t, const char *page, const char *id, const char *name,
                                const char *status, const char *position, const char *group_id) {
  td_new(t, page, API_T_COMPONENT, id);
  td_set(t, page, API_T_COMPONENT, id, "name", name);
  td_set(t, page, API_T_COMPONENT, id, "status", status);
  td_set(t, page, API_T_COMPONENT, id, "position", position);
  td_set(t, page, API_T_COMPONENT, id, "group_id", group_id);
  td_set(t, page, API_T_COMPONENT, id, "showcase", "true");
  td_set(t, page, API_T_COMPONENT, id, "only_show_if_degraded", "false");
  td_set(t, page, API_T_COMPONENT, id, "start_date", "2026-01-01");
  td_set(t, page, API_T_COMPONENT, id, "created_at", "2026-01-01T00:00:01.000Z");
  td_set(t, page, API_T_COMPONENT, id, "updated_at", "2026-01-01T00:00:01.000Z");
}

static inline void td_group(td *t, const char *page, const char *id, const char *name,
                            const char *position, const char *components) {
  td_new(t, page, API_T_GROUP, id);
  td_set(t, page, API_T_GROUP, id, "name", name);
  td_set(t, page, API_T_GROUP, id, "position", position);
  td_set(t, page, API_T_GROUP, id, "components", components);
  td_set(t, page, API_T_GROUP, id, "created_at", "2026-01-01T00:00:01.000Z");
  td_set(t, page, API_T_GROUP, id, "updated_at", "2026-01-01T00:00:01.000Z");
}

/* created: "HH:MM" on 2026-01-02 */
static inline void td_incident(td *t, const char *page, const char *id, const char *kind,
                               const char *status, const char *created, const char *components) {
  char ts[40];
  snprintf(ts, sizeof ts, "2026-01-02T%s:00.000Z", created);
  td_new(t, page, API_T_INCIDENT, id);
  td_set(t, page, API_T_INCIDENT, id, "name", id);
  td_set(t, page, API_T_INCIDENT, id, "kind", kind);
  td_set(t, page, API_T_INCIDENT, id, "status", status);
  td_set(t, page, API_T_INCIDENT, id, "created_at", ts);
  td_set(t, page, API_T_INCIDENT, id, "updated_at", ts);
  td_set(t, page, API_T_INCIDENT, id, "started_at", ts);
  td_set(t, page, API_T_INCIDENT, id, "components", components);
  if (strcmp(kind, "scheduled") == 0) {
    td_set(t, page, API_T_INCIDENT, id, "scheduled_for", "2026-02-01T00:00:00.000Z");
    td_set(t, page, API_T_INCIDENT, id, "scheduled_until", "2026-02-01T02:00:00.000Z");
  }
}

/* display: "HH:MM" on 2026-01-02 */
static inline void td_update(td *t, const char *page, const char *id, const char *incident,
                             const char *status, const char *display, const char *body,
                             const char *affected) {
  char ts[40];
  snprintf(ts, sizeof ts, "2026-01-02T%s:00.000Z", display);
  td_new(t, page, API_T_UPDATE, id);
  td_set(t, page, API_T_UPDATE, id, "incident_id", incident);
  td_set(t, page, API_T_UPDATE, id, "status", status);
  td_set(t, page, API_T_UPDATE, id, "body", body);
  td_set(t, page, API_T_UPDATE, id, "display_at", ts);
  td_set(t, page, API_T_UPDATE, id, "created_at", ts);
  td_set(t, page, API_T_UPDATE, id, "updated_at", ts);
  td_set(t, page, API_T_UPDATE, id, "affected_components", affected);
  td_set(t, page, API_T_UPDATE, id, "deliver_notifications", "true");
}

/* Page pg1 ("Acme", domain status.acme.test):
 * components in display order:  c_api (1, operational), grp (2, group
 * "Backend" of c_db (1, major_outage) and c_cache (2, degraded)), c_web (3,
 * partial_outage), c_mx (4, under_maintenance), c_xss (5, named <script>).
 * Incidents (newest first): inc3 monitoring 11:00 (impact_override
 * critical), inc1 investigating 10:00 (affects c_db -> major_outage),
 * inc2 resolved 09:00 (had c_cache -> degraded: impact minor).
 * Maintenances (newest first): m1 scheduled 08:00, m2 in_progress 07:00,
 * m3 verifying 06:00, m4 completed 05:00. */
static inline void td_scenario(td *t) {
  td_page(t, "pg1", "Acme", "status.acme.test");
  td_set(t, "pg1", API_T_PAGE, "pg1", "url", "https://status.acme.test");
  /* stored positions out of entity order on purpose */
  td_component(t, "pg1", "c_web", "Web", "partial_outage", "3", NULL);
  td_component(t, "pg1", "c_api", "API", "operational", "1", NULL);
  td_group(t, "pg1", "grp", "Backend", "2", "[\"c_db\",\"c_cache\"]");
  td_component(t, "pg1", "c_db", "DB", "major_outage", "1", "grp");
  td_component(t, "pg1", "c_cache", "Cache", "degraded_performance", "2", "grp");
  td_component(t, "pg1", "c_mx", "Mail", "under_maintenance", "4", NULL);
  td_component(t, "pg1", "c_xss", "<script>alert('x')</script>", "operational", "5", NULL);

  td_incident(t, "pg1", "inc1", "realtime", "investigating", "10:00", "[\"c_db\"]");
  td_update(t, "pg1", "u1a", "inc1", "investigating", "10:00", "Looking into it",
            "[{\"code\":\"c_db\",\"name\":\"Backend - DB\",\"old_status\":\"operational\","
            "\"new_status\":\"major_outage\"}]");
  td_incident(t, "pg1", "inc2", "realtime", "resolved", "09:00", "[\"c_cache\"]");
  td_set(t, "pg1", API_T_INCIDENT, "inc2", "resolved_at", "2026-01-02T09:30:00.000Z");
  td_update(t, "pg1", "u2b", "inc2", "resolved", "09:30", "Fixed", NULL);
  td_update(t, "pg1", "u2a", "inc2", "investigating", "09:00", "Slow cache",
            "[{\"code\":\"c_cache\",\"name\":\"Backend - Cache\",\"old_status\":\"operational\","
            "\"new_status\":\"degraded_performance\"}]");
  td_incident(t, "pg1", "inc3", "realtime", "monitoring", "11:00", NULL);
  td_set(t, "pg1", API_T_INCIDENT, "inc3", "impact_override", "critical");
  td_set(t, "pg1", API_T_INCIDENT, "inc3", "monitoring_at", "2026-01-02T11:30:00.000Z");
  td_update(t, "pg1", "u3a", "inc3", "investigating", "11:00", "first", NULL);
  td_update(t, "pg1", "u3c", "inc3", "monitoring", "11:30", "third", NULL);
  td_update(t, "pg1", "u3b", "inc3", "identified", "11:15", "second", NULL);

  td_incident(t, "pg1", "m1", "scheduled", "scheduled", "08:00", "[\"c_mx\"]");
  td_incident(t, "pg1", "m2", "scheduled", "in_progress", "07:00", NULL);
  td_incident(t, "pg1", "m3", "scheduled", "verifying", "06:00", NULL);
  td_incident(t, "pg1", "m4", "scheduled", "completed", "05:00", NULL);
  td_update(t, "pg1", "um1", "m1", "scheduled", "08:00", "Planned work", NULL);
}

#endif
