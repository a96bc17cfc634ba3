/* Tombstone collection on a real local three-region deployment
 * (tests/fixture/deploy_harness; ports moved up by 29000, which no other
 * suite uses): statusd-replicad collects stable tombstones from its
 * region's PostgreSQL (lib/sql/0008_tombstone_gc.sql), statusd-api from its
 * in-memory document (api/api_cache.c), both by the rule of crdt/DESIGN.md.
 *
 * In order:
 *   - a component deleted in one region disappears from every region's
 *     public API, then its tombstone goes from all three PostgreSQLs
 *     (sp_entity, no barrier row left) and from all three statusd-api
 *     documents (/_internal/digest?page=), and both daemons count it in
 *     their metrics; verify reports converged; late duplicates of its old
 *     changes on the Redis change channels do not bring it back;
 *   - with ap-south's replication daemon stopped, a delete made in us-east
 *     is kept as a tombstone everywhere (polled for several collection
 *     periods), and ap-south still shows the component; once the daemon is
 *     back, ap-south applies the delete and every region collects it;
 *   - deletes racing updates of the same components in other regions:
 *     every region converges (statusctl verify), the components stay
 *     deleted after collection (public API, management API 404, no field
 *     rows and no entity left behind in PostgreSQL or the documents), and
 *     an update sent after collection is refused with 404;
 *   - while a region still holds a tombstone the others have collected
 *     (its API paused across the delete, its database stopped after
 *     applying it), statusctl verify reports converged and names the
 *     tombstone count; with everything back it is collected there too;
 *   - an API process that missed a delete (paused, its Redis down) while
 *     the delete was collected and trimmed from its region's log reloads
 *     the state and drops the component;
 *   - after `statusctl down` no log holds a sanitizer report.
 * Test-only state lives in the one struct `g`; the test process is a child
 * subreaper (dh_deploy_prepare), so the daemons are reaped here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "crdt.h"
#include "deploy_harness.h"

#define PORT_SHIFT 29000
#define NREGIONS DH_NREGIONS
#define CONVERGE_MS 10000
#define GC_WAIT_MS 10000 /* acks round trip + a 1 s collection period, with room */

static struct {
  dh_deploy d;
  int up;
  pid_t paused; /* a process the test stopped with SIGSTOP, resumed in teardown */
} g;

typedef dh_out run_out;
#define run(r, ...) dh_expect_ran(r, dh_run(&g.d, r, g.d.topo, __VA_ARGS__))

static int setup(void **state) {
  (void)state;
  if (dh_deploy_setup(&g.d, "sp-tombstone-gc", PORT_SHIFT) != 0)
    return -1;
  g.d.check_sanitizer = 1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (g.paused > 0)
    kill(g.paused, SIGCONT);
  dh_deploy_teardown(&g.d);
  return 0;
}

/* ---- helpers ---------------------------------------------------------------- */

/* The first row of query q in region's database as numbers (n columns). */
static void sql_nums(int region, const char *q, long long *out, int n) {
  PGresult *res = dh_sql(&g.d, region, q);
  if (PQntuples(res) < 1 || PQnfields(res) != n)
    fail_msg("%s in %s: %d rows of %d columns, wanted %d columns", q, dh_regions[region],
             PQntuples(res), PQnfields(res), n);
  for (int i = 0; i < n; i++)
    out[i] = atoll(PQgetvalue(res, 0, i));
  PQclear(res);
}

/* The create of component id and its "name" field as us-east's store has
 * them (cl 1): what a late duplicate of those changes would carry. */
typedef struct old_changes {
  long long exist[4], name[4]; /* hlc, region, origin, seq */
  char name_value[128];
} old_changes;

static void record_old(const char *id, const char *name, old_changes *o) {
  char q[512];
  snprintf(q, sizeof q,
           "SELECT hlc, region, origin, seq FROM sp_entity WHERE type = 'component' AND id = '%s'"
           " AND cl = 1",
           id);
  sql_nums(0, q, o->exist, 4);
  snprintf(q, sizeof q,
           "SELECT hlc, region, origin, seq FROM sp_field WHERE type = 'component' AND id = '%s'"
           " AND field = 'name' AND cl = 1",
           id);
  sql_nums(0, q, o->name, 4);
  snprintf(o->name_value, sizeof o->name_value, "%s", name);
}

/* Publishes the old changes again on region's Redis change channel, as a
 * late duplicate of a change event would arrive. */
static void publish_old(int region, const char *id, const old_changes *o) {
  crdt_delta *d;
  assert_int_equal(crdt_delta_new(NULL, &d), 0);
  crdt_change c;
  memset(&c, 0, sizeof c);
  c.kind = CRDT_EXIST;
  c.page = g.d.page;
  c.type = "component";
  c.id = id;
  c.cl = 1;
  c.stamp.hlc = (crdt_hlc)o->exist[0];
  c.stamp.region = (crdt_region)o->exist[1];
  c.origin = (crdt_region)o->exist[2];
  c.seq = (uint64_t)o->exist[3];
  assert_int_equal(crdt_delta_add(d, &c), 0);
  c.kind = CRDT_FIELD;
  c.field = "name";
  c.value = (const uint8_t *)o->name_value;
  c.value_len = strlen(o->name_value);
  c.stamp.hlc = (crdt_hlc)o->name[0];
  c.stamp.region = (crdt_region)o->name[1];
  c.origin = (crdt_region)o->name[2];
  c.seq = (uint64_t)o->name[3];
  assert_int_equal(crdt_delta_add(d, &c), 0);
  uint8_t *bytes;
  size_t len;
  assert_int_equal(crdt_delta_encode(d, &bytes, &len), 0);
  crdt_delta_free(d);
  redisContext *rc = redisConnect(dh_addrs[region], g.d.redis_port);
  assert_true(rc != NULL && rc->err == 0);
  char channel[128];
  snprintf(channel, sizeof channel, "sp:local:%s:changes", dh_regions[region]);
  redisReply *rep = redisCommand(rc, "PUBLISH %s %b", channel, bytes, len);
  assert_non_null(rep);
  assert_int_equal(rep->type, REDIS_REPLY_INTEGER);
  assert_true(rep->integer >= 1); /* statusd-api is subscribed */
  freeReplyObject(rep);
  redisFree(rc);
  crdt_free_bytes(NULL, bytes);
}

/* Waits up to ms until region's statusd-api is subscribed to its change
 * channel (after its Redis restarted, the API resubscribes with backoff). */
static void wait_subscribed(int region, long ms) {
  char channel[128];
  snprintf(channel, sizeof channel, "sp:local:%s:changes", dh_regions[region]);
  long long end = dh_now_ms() + ms, n = 0;
  do {
    redisContext *rc = redisConnect(dh_addrs[region], g.d.redis_port);
    if (rc && rc->err == 0) {
      redisReply *rep = redisCommand(rc, "PUBSUB NUMSUB %s", channel);
      if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
          rep->element[1]->type == REDIS_REPLY_INTEGER)
        n = rep->element[1]->integer;
      if (rep)
        freeReplyObject(rep);
    }
    if (rc)
      redisFree(rc);
    if (n < 1)
      dh_sleep_ms(50);
  } while (n < 1 && dh_now_ms() < end);
  if (n < 1)
    fail_msg("statusd-api of %s not subscribed to %s within %ld ms", dh_regions[region], channel,
             ms);
}

/* sp_entity's causal length of component id in region (0: no row). */
static long long store_cl(int region, const char *id) {
  char q[512];
  snprintf(q, sizeof q,
           "SELECT coalesce(max(cl), 0) FROM sp_entity WHERE type = 'component' AND id = '%s'", id);
  return dh_sql_int(&g.d, region, q);
}

/* The causal length of component id in region's statusd-api document, from
 * /_internal/digest?page= (0: not in the document). */
static long long doc_cl(int region, const char *id) {
  char path[512], *b = NULL;
  snprintf(path, sizeof path, "/_internal/digest?page=%s", g.d.page);
  long st = dh_http_region(&g.d, region, "GET", path, NULL, &b);
  if (st != 200)
    fail_msg("GET %s in %s: %ld %s", path, dh_regions[region], st, b ? b : "");
  json_t *o = json_loads(b, 0, NULL);
  free(b);
  assert_non_null(o);
  long long cl = 0;
  size_t i;
  json_t *e;
  json_array_foreach(json_object_get(o, "entities"), i, e) {
    if (strcmp(json_string_value(json_object_get(e, "type")), "component") == 0 &&
        strcmp(json_string_value(json_object_get(e, "id")), id) == 0)
      cl = json_integer_value(json_object_get(e, "cl"));
  }
  json_decref(o);
  return cl;
}

/* A number from region's /_internal/digest document. */
static long long digest_num(int region, const char *key) {
  char *b = NULL;
  assert_int_equal(dh_http_region(&g.d, region, "GET", "/_internal/digest", NULL, &b), 200);
  json_t *o = json_loads(b, 0, NULL);
  free(b);
  assert_non_null(o);
  long long v = json_integer_value(json_object_get(o, key));
  json_decref(o);
  return v;
}

/* Waits until component id's tombstone is gone from region's store and
 * document (both read 0). */
static void wait_collected(int region, const char *id, long ms) {
  long long end = dh_now_ms() + ms, s, d;
  while (((s = store_cl(region, id)) != 0 || (d = doc_cl(region, id)) != 0) &&
         dh_now_ms() < end)
    dh_sleep_ms(100);
  s = store_cl(region, id);
  d = doc_cl(region, id);
  if (s != 0 || d != 0)
    fail_msg("component %s in %s: not collected within %ld ms (store cl %lld, document cl %lld)",
             id, dh_regions[region], ms, s, d);
}

/* A new component, operational and public in every region. */
static void new_component(int region, const char *name, char *id, size_t len) {
  dh_new_component(&g.d, region, name, "operational", id, len);
  for (int i = 0; i < NREGIONS; i++)
    dh_wait_public(&g.d, i, id, "operational", 5000);
}

static long component_req(int region, const char *method, const char *id, const char *json) {
  char path[512], *b = NULL;
  snprintf(path, sizeof path, "/v1/pages/%s/components/%s", g.d.page, id);
  long st = dh_http_region(&g.d, region, method, path, json, &b);
  free(b);
  return st;
}

/* ---- tests, in order -------------------------------------------------------- */

static void test_up(void **state) {
  (void)state;
  /* inherited by the daemons statusctl starts: trim the change log as soon
   * as every peer has acknowledged (test_reload_after_collection) */
  assert_int_equal(setenv("SP_REPL_LOG_RETENTION_MS", "0", 1), 0);
  dh_up(&g.d);
  g.up = 1;
  dh_wait_converged(&g.d, "after up", CONVERGE_MS);
}

/* Deleted in eu-west: gone publicly everywhere, then collected in every
 * store and document. */
static void test_delete_collected_everywhere(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  new_component(0, "collect me", id, sizeof id);
  for (int i = 0; i < NREGIONS; i++)
    assert_int_equal(store_cl(i, id), 1);
  old_changes old;
  record_old(id, "collect me", &old);
  assert_int_equal(component_req(1, "DELETE", id, NULL), 204);
  for (int i = 0; i < NREGIONS; i++)
    dh_wait_public(&g.d, i, id, "", 5000);
  for (int i = 0; i < NREGIONS; i++)
    wait_collected(i, id, GC_WAIT_MS);
  for (int i = 0; i < NREGIONS; i++) {
    char q[512];
    snprintf(q, sizeof q, "SELECT count(*) FROM sp_tombstone_barrier WHERE id = '%s'", id);
    assert_int_equal(dh_sql_int(&g.d, i, q), 0);
    snprintf(q, sizeof q, "SELECT count(*) FROM sp_field WHERE id = '%s'", id);
    assert_int_equal(dh_sql_int(&g.d, i, q), 0);
    assert_true(dh_repl_metric(&g.d, i, "sp_repl_tombstones_collected_total") >= 1);
    assert_true(dh_api_metric(&g.d, i, "statusd_api_tombstones_collected_total") >= 1);
    assert_true(digest_num(i, "collected") >= 1);
  }
  dh_wait_converged(&g.d, "after collecting", CONVERGE_MS);
  /* a late duplicate of the create and of a field (a delayed change event)
   * must not bring the component back in any document: the cache skips
   * changes it has merged already.  A write replicated from eu-west after
   * them reaches every document through the same channel (or the poll). */
  for (int i = 0; i < NREGIONS; i++)
    publish_old(i, id, &old);
  char later[64];
  new_component(1, "after the duplicates", later, sizeof later);
  for (int i = 0; i < NREGIONS; i++) {
    assert_int_equal(doc_cl(i, id), 0);
    dh_expect_public(&g.d, i, id, "");
  }
  dh_wait_converged(&g.d, "after the late duplicates", CONVERGE_MS);
}

/* With ap-south's daemon stopped nobody collects a delete; once it is back
 * everybody does. */
static void test_held_while_a_region_is_away(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  new_component(0, "held", id, sizeof id);
  dh_stop(&g.d, 2, "statusd-replicad");
  assert_int_equal(component_req(0, "DELETE", id, NULL), 204);
  dh_wait_public(&g.d, 0, id, "", 5000);
  dh_wait_public(&g.d, 1, id, "", 5000);
  /* several collection periods: the tombstone stays in us-east and eu-west
   * (store and document), without a barrier (ap-south has not acknowledged
   * the delete), and ap-south still has the component */
  char q[512];
  snprintf(q, sizeof q, "SELECT count(*) FROM sp_tombstone_barrier WHERE id = '%s'", id);
  long long end = dh_now_ms() + 3500;
  do {
    for (int i = 0; i < 2; i++) {
      assert_int_equal(store_cl(i, id), 2);
      assert_int_equal(doc_cl(i, id), 2);
      assert_int_equal(dh_sql_int(&g.d, i, q), 0);
    }
    assert_int_equal(store_cl(2, id), 1);
    dh_sleep_ms(250);
  } while (dh_now_ms() < end);
  dh_expect_public(&g.d, 2, id, "operational");
  /* the tombstone ap-south lacks is not forgiven by verify: ap-south has
   * not seen the delete (the component is alive there) */
  run_out *r = malloc(sizeof *r);
  run(r, "verify", (const char *)NULL);
  dh_expect(r, 1, "verify while ap-south lacks the delete");
  /* back: ap-south applies the delete and everyone collects it */
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, "up again");
  free(r);
  dh_wait_public(&g.d, 2, id, "", 8000);
  for (int i = 0; i < NREGIONS; i++)
    wait_collected(i, id, GC_WAIT_MS);
  dh_wait_converged(&g.d, "after ap-south came back", CONVERGE_MS);
}

/* Deletes racing updates made in other regions before the delete reached
 * them: converged, deleted for good, and collected. */
static void test_delete_update_race(void **state) {
  (void)state;
  assert_true(g.up);
  enum { N = 4 };
  char ids[N][64];
  for (int k = 0; k < N; k++) {
    char name[32];
    snprintf(name, sizeof name, "race %d", k);
    new_component(k % NREGIONS, name, ids[k], sizeof ids[k]);
  }
  for (int k = 0; k < N; k++) {
    int del = k % NREGIONS, up1 = (k + 1) % NREGIONS, up2 = (k + 2) % NREGIONS;
    /* the updates first (their regions still see the component alive),
     * the delete right after: replication has had no time in between */
    assert_int_equal(component_req(up1, "PATCH", ids[k],
                                   "{\"component\":{\"status\":\"major_outage\"}}"),
                     200);
    assert_int_equal(component_req(up2, "PATCH", ids[k],
                                   "{\"component\":{\"description\":\"racing\"}}"),
                     200);
    assert_int_equal(component_req(del, "DELETE", ids[k], NULL), 204);
  }
  dh_wait_converged(&g.d, "after the races", CONVERGE_MS);
  for (int k = 0; k < N; k++)
    for (int i = 0; i < NREGIONS; i++)
      dh_wait_public(&g.d, i, ids[k], "", 5000);
  for (int k = 0; k < N; k++)
    for (int i = 0; i < NREGIONS; i++)
      wait_collected(i, ids[k], GC_WAIT_MS);
  /* still deleted, with nothing left behind, and an update now is a 404 */
  for (int k = 0; k < N; k++) {
    char q[512];
    snprintf(q, sizeof q, "SELECT count(*) FROM sp_field WHERE id = '%s'", ids[k]);
    for (int i = 0; i < NREGIONS; i++) {
      assert_int_equal(dh_sql_int(&g.d, i, q), 0);
      assert_int_equal(component_req(i, "GET", ids[k], NULL), 404);
      assert_int_equal(component_req(i, "PATCH", ids[k],
                                     "{\"component\":{\"status\":\"operational\"}}"),
                       404);
    }
  }
  dh_wait_converged(&g.d, "after collecting the raced deletes", CONVERGE_MS);
  for (int k = 0; k < N; k++)
    for (int i = 0; i < NREGIONS; i++) {
      assert_int_equal(store_cl(i, ids[k]), 0);
      assert_int_equal(doc_cl(i, ids[k]), 0);
      dh_expect_public(&g.d, i, ids[k], "");
    }
}

/* An API process that missed a delete which was then collected, and
 * trimmed from the change log, reloads the state and does not keep the
 * component.  ap-south's API is paused and its Redis stopped before the
 * delete, so the API can only learn of it by its poll, after the delete is
 * collected and trimmed in ap-south's store. */
static void test_reload_after_collection(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  new_component(0, "missed", id, sizeof id);
  g.paused = dh_pidfile(&g.d, dh_regions[2], "statusd-api");
  assert_true(g.paused > 0);
  assert_int_equal(kill(g.paused, SIGSTOP), 0);
  pid_t redis = dh_pidfile(&g.d, dh_regions[2], "redis");
  assert_true(redis > 0);
  assert_int_equal(kill(redis, SIGKILL), 0);
  dh_wait_gone(redis, 5000);
  assert_int_equal(component_req(0, "DELETE", id, NULL), 204);
  /* collected in ap-south's store, and the log there trimmed past it */
  long long end = dh_now_ms() + GC_WAIT_MS;
  while (store_cl(2, id) != 0 && dh_now_ms() < end)
    dh_sleep_ms(100);
  assert_int_equal(store_cl(2, id), 0);
  char q[512];
  snprintf(q, sizeof q,
           "SELECT count(*) FROM sp_change_log WHERE type = 'component' AND id = '%s'", id);
  dh_wait_sql(&g.d, 2, q, 0, GC_WAIT_MS);
  assert_int_equal(kill(g.paused, SIGCONT), 0);
  g.paused = 0;
  dh_wait_public(&g.d, 2, id, "", 8000);
  assert_int_equal(doc_cl(2, id), 0);
  dh_ctl_ok(&g.d, "up", "up again"); /* Redis again */
  wait_subscribed(2, 15000);
  dh_wait_converged(&g.d, "after the reload", CONVERGE_MS);
}

/* A tombstone some regions still hold while another collected it is not a
 * divergence.  ap-south's API is paused (SIGSTOP) across the delete, and
 * ap-south's PostgreSQL stopped once it has applied the delete: resumed,
 * the API merges the delete from its Redis change events but cannot poll,
 * so it cannot collect, while us-east (ap-south acknowledged its delete
 * before its database stopped) does. */
static void test_verify_forgives_uncollected_tombstone(void **state) {
  (void)state;
  assert_true(g.up);
  char id[64];
  new_component(0, "forgiven", id, sizeof id);
  wait_subscribed(2, 15000); /* the delete must reach the paused API by Redis */
  long long published = dh_repl_metric(&g.d, 2, "sp_repl_published_total");
  g.paused = dh_pidfile(&g.d, dh_regions[2], "statusd-api");
  assert_true(g.paused > 0);
  assert_int_equal(kill(g.paused, SIGSTOP), 0);
  assert_int_equal(component_req(0, "DELETE", id, NULL), 204);
  long long end = dh_now_ms() + 5000;
  while (store_cl(2, id) != 2 && dh_now_ms() < end)
    dh_sleep_ms(50);
  assert_int_equal(store_cl(2, id), 2);
  /* and ap-south's daemon has published it on Redis (best effort there) */
  end = dh_now_ms() + 5000;
  while (dh_repl_metric(&g.d, 2, "sp_repl_published_total") <= published && dh_now_ms() < end)
    dh_sleep_ms(50);
  assert_true(dh_repl_metric(&g.d, 2, "sp_repl_published_total") > published);
  pid_t pg = dh_pidfile(&g.d, dh_regions[2], "postgres");
  assert_true(pg > 0);
  assert_int_equal(kill(pg, SIGINT), 0); /* fast shutdown */
  dh_wait_gone(pg, 15000);
  assert_int_equal(kill(g.paused, SIGCONT), 0);
  g.paused = 0;
  end = dh_now_ms() + 5000;
  while (doc_cl(2, id) != 2 && dh_now_ms() < end)
    dh_sleep_ms(50);
  assert_int_equal(doc_cl(2, id), 2);
  /* us-east has every region's ack of its delete and collects it; eu-west
   * may not (it learns what ap-south has from ap-south, which is stuck) */
  wait_collected(0, id, GC_WAIT_MS);
  assert_true(digest_num(2, "tombstones") >= 1);
  assert_int_equal(doc_cl(2, id), 2); /* still held: it cannot collect */
  run_out *r = malloc(sizeof *r);
  run(r, "verify", (const char *)NULL);
  dh_expect(r, 0, "verify with a tombstone not collected everywhere");
  assert_non_null(strstr(r->out, "converged: 3 regions"));
  assert_non_null(strstr(r->out, "1 tombstones not yet collected"));
  run(r, "verify", "--json", (const char *)NULL);
  dh_expect(r, 0, "verify --json");
  json_t *v = json_loads(r->out, 0, NULL);
  assert_non_null(v);
  assert_true(json_is_true(json_object_get(v, "converged")));
  assert_int_equal(json_integer_value(json_object_get(v, "uncollected_tombstones")), 1);
  json_decref(v);
  /* everything back: ap-south collects too, and the digests are equal */
  run(r, "up", (const char *)NULL);
  dh_expect(r, 0, "up again");
  free(r);
  for (int i = 0; i < NREGIONS; i++)
    wait_collected(i, id, GC_WAIT_MS);
  dh_wait_converged(&g.d, "after ap-south collected too", CONVERGE_MS);
}

/* After `statusctl down`, no daemon log holds a sanitizer report. */
static void test_down_logs_clean(void **state) {
  (void)state;
  assert_true(g.up);
  dh_ctl_ok(&g.d, "down", "down");
  for (int i = 0; i < NREGIONS; i++)
    dh_expect_region_logs_clean(&g.d, i);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_up),
      cmocka_unit_test(test_delete_collected_everywhere),
      cmocka_unit_test(test_held_while_a_region_is_away),
      cmocka_unit_test(test_delete_update_race),
      cmocka_unit_test(test_verify_forgives_uncollected_tombstone),
      cmocka_unit_test(test_reload_after_collection),
      cmocka_unit_test(test_down_logs_clean),
  };
  return cmocka_run_group_tests_name("tombstone_gc", tests, setup, teardown);
}
